"""MAC counts from the op rules (``OpRule.macs``): hand-computed on tiny graphs, the same in
the report (``metrics.count_macs``, from the proto) and the cost model (``CostModel``, from
the analysis' graph), never negative, and the cost model's price of a plan equal to the
report's count of the model that plan prunes to."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from graphprune.analysis.groups import analyze
from graphprune.analysis.rules import NodeView, rule_for
from graphprune.analysis.rules.registry import rule_for_op
from graphprune.cost import CostModel
from graphprune.graph import import_graph, infer_shapes
from graphprune.metrics import count_macs
from graphprune.plan import removed_labels
from graphprune.prune import PruneOptions, opset_of, prune_model
from graphs import G
from models import handbuilt

F32 = TensorProto.FLOAT
MS = "com.microsoft"
NOTHING = np.zeros(0, np.int64)


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def _analysis(model: onnx.ModelProto, **kw):
    """The analysis ``prune_model`` makes (shapes inferred once, kept as given)."""
    m = infer_shapes(_copy(model))
    return analyze(import_graph(m, inferred=True), opset_of(m), **kw)


def _macs(model: onnx.ModelProto, infer: bool = False) -> int:
    """The report's count, checked against the unpruned cost model's."""
    m = infer_shapes(_copy(model)) if infer else model
    report = count_macs(m)
    analysis = analyze(import_graph(_copy(m), inferred=True), opset_of(m))
    assert CostModel(analysis).cost(NOTHING, "macs") == pytest.approx(report, abs=0.5)
    return report


def _contrib_model(nodes, inputs, outputs, inits, value_info=()) -> onnx.ModelProto:
    """A graph with every shape declared (no inference needed for the contrib ops)."""
    graph = helper.make_graph(nodes, "g", inputs, outputs, inits, value_info=list(value_info))
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid(MS, 1)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=8)


def _vi(name, shape):
    return helper.make_tensor_value_info(name, F32, shape)


def _init(name, shape=None, values=None, dtype=np.float32):
    arr = np.zeros(shape, dtype) if values is None else np.asarray(values, dtype)
    return numpy_helper.from_array(arr, name)


# --------------------------------------------------------------------------- Conv family


def test_conv():
    g = G()
    x = g.input("x", [2, 3, 9, 9])  # 3x3 stride 2, no pad: y (2, 6, 4, 4)
    g.op("Conv", [x, g.w("w", 6, 3, 3, 3), g.w("b", 6)], "y", strides=[2, 2])
    assert _macs(g.model(["y"])) == 2 * 6 * 4 * 4 * (3 * 3 * 3)  # 5184


def test_depthwise_conv():
    g = G()
    x = g.input("x", [1, 4, 8, 8])  # y (1, 4, 8, 8), one input channel per output channel
    g.op("Conv", [x, g.w("w", 4, 1, 3, 3)], "y", group=4, pads=[1, 1, 1, 1])
    assert _macs(g.model(["y"])) == 4 * 8 * 8 * (1 * 3 * 3)  # 2304


def test_conv_transpose():
    g = G()
    x = g.input("x", [1, 4, 5, 5])  # (Cin 4) -> Cout 2, k3 s2: y (1, 2, 11, 11)
    g.op("ConvTranspose", [x, g.w("w", 4, 2, 3, 3)], "y", strides=[2, 2])
    g.op("ConvTranspose", [x, g.w("w2", 4, 1, 3, 3)], "y2", strides=[2, 2], group=2)
    # each input element feeds Cout/group x kernel outputs
    assert _macs(g.model(["y", "y2"])) == 4 * 5 * 5 * (2 * 9) + 4 * 5 * 5 * (1 * 9)  # 2700


# --------------------------------------------------------------------------- Gemm, MatMul


@pytest.mark.parametrize("trans_a", [0, 1])
@pytest.mark.parametrize("trans_b", [0, 1])
def test_gemm(trans_a, trans_b):
    g = G()  # A (3, 7) @ B (7, 5), either stored transposed: Y (3, 5), K = 7
    a = g.input("a", [7, 3] if trans_a else [3, 7])
    b = g.w("b", *((5, 7) if trans_b else (7, 5)))
    g.op("Gemm", [a, b, g.w("c", 5)], "y", transA=trans_a, transB=trans_b)
    assert _macs(g.model(["y"])) == 3 * 5 * 7  # 105


def test_batched_matmul():
    g = G()
    a = g.input("a", [2, 3, 4, 5])
    g.op("MatMul", [a, g.w("w", 5, 6)], "y")  # (2, 3, 4, 6) x K 5
    b = g.input("b", [2, 1, 4, 5])
    g.op("MatMul", [b, g.w("w2", 3, 5, 6)], "y2")  # batch broadcast: (2, 3, 4, 6) x K 5
    assert _macs(g.model(["y", "y2"])) == 2 * (2 * 3 * 4 * 6 * 5)  # 1440


# --------------------------------------------------------------------------- contrib attention

B, S, C, N = 2, 8, 16, 4  # batch, sequence, hidden, heads


def _attention(qkv_sizes=None, past: int = 0) -> onnx.ModelProto:
    """x (B, S, C) -> Attention(packed W (C, Dq+Dk+Dv), bias) [-> present] -> y (B, S, Dv)."""
    dq, dk, dv = qkv_sizes or (C, C, C)
    attrs = {"num_heads": N}
    if qkv_sizes:
        attrs["qkv_hidden_sizes"] = list(qkv_sizes)
    ins, outs = ["x", "w", "bias"], ["y"]
    inputs, outputs = [_vi("x", [B, S, C])], [_vi("y", [B, S, dv])]
    if past:
        ins += ["", "past"]
        outs.append("present")
        inputs.append(_vi("past", [2, B, N, past, dq // N]))
        outputs.append(_vi("present", [2, B, N, past + S, dq // N]))
    node = helper.make_node("Attention", ins, outs, domain=MS, **attrs)
    inits = [_init("w", (C, dq + dk + dv)), _init("bias", (dq + dk + dv,))]
    return _contrib_model([node], inputs, outputs, inits)


def test_ms_attention():
    projection = B * S * C * (3 * C)  # 12288
    context = B * S * S * (C + C)  # QK^T and PV, per head S x S x H: 4096
    assert _macs(_attention()) == projection + context  # 16384


def test_ms_attention_qkv_hidden_sizes_and_past():
    # Dv = 8 (head size 2); past of 3 tokens: total sequence 11
    projection = B * S * C * (16 + 16 + 8)  # 10240
    context = B * S * (3 + S) * (16 + 8)  # 4224
    assert _macs(_attention((16, 16, 8), past=3)) == projection + context  # 14464


def _mha(kv_len: int, dv: int, past: int = 0) -> onnx.ModelProto:
    q, k, v = _vi("q", [B, S, C]), _vi("k", [B, kv_len, C]), _vi("v", [B, kv_len, dv])
    ins, outs, inputs = ["q", "k", "v"], ["y"], [q, k, v]
    outputs = [_vi("y", [B, S, dv])]
    if past:  # past_key/past_value (B, N, P, H): slots 6, 7
        ins += ["", "", "", "past_k", "past_v"]
        inputs += [_vi("past_k", [B, N, past, C // N]), _vi("past_v", [B, N, past, dv // N])]
    node = helper.make_node("MultiHeadAttention", ins, outs, domain=MS, num_heads=N)
    return _contrib_model([node], inputs, outputs, [])


def test_multi_head_attention():
    # cross attention: 8 queries over 10 keys, value width 12 (head size 3); no weights
    assert _macs(_mha(kv_len=10, dv=12)) == B * S * 10 * (C + 12)  # 4480
    # with 5 past tokens (present not sized): total sequence 15
    assert _macs(_mha(kv_len=S, dv=C, past=5)) == B * S * (5 + S) * (C + C)  # 6656


def _gqa(packed: bool, n: int = 8, kv: int = 2, h: int = 4, out_known: bool = True, cache=None):
    """GroupQueryAttention alone; ``cache=(capacity, total)``: past_key/value of that
    capacity and a constant total_sequence_length."""
    widths = {"q": n * h, "k": kv * h, "v": kv * h}
    if packed:
        inputs = [_vi("q", [B, S, (n + 2 * kv) * h])]
        qkv = ["q", "", ""]
    else:
        inputs = [_vi(t, [B, S, wd]) for t, wd in widths.items()]
        qkv = list(widths)
    capacity, total = cache or (0, S)
    past = ["", ""]
    if cache:
        past = ["past_k", "past_v"]
        inputs += [_vi(t, [B, kv, capacity, h]) for t in past]
    inits = [
        _init("seqlens_k", values=np.full(B, total - 1), dtype=np.int32),
        _init("total_seq", values=total, dtype=np.int32),
    ]
    node = helper.make_node(
        "GroupQueryAttention",
        [*qkv, *past, "seqlens_k", "total_seq"],
        ["y"],
        domain=MS,
        num_heads=n,
        kv_num_heads=kv,
    )
    outputs = [_vi("y", [B, S, n * h] if out_known else None)]
    return _contrib_model([node], inputs, outputs, inits)


@pytest.mark.parametrize("packed", [False, True], ids=["separate", "packed"])
def test_group_query_attention(packed):
    # 8 query heads of size 4 (2 KV heads): scores and context, S x T x H per query head
    assert _macs(_gqa(packed)) == 2 * B * 8 * S * S * 4  # 8192
    assert _macs(_gqa(packed, out_known=False)) == 8192  # head size from the query width
    # cache of capacity 16 holding 4 tokens: T = total_sequence_length = 12
    assert _macs(_gqa(packed, cache=(16, 12))) == 2 * B * 8 * S * 12 * 4  # 12288


def test_group_query_attention_shapes_from_ort(tmp_path, monkeypatch):
    """The fused-ops test graph (Q/K/V MatMuls -> GQA -> out-projection), sized by ORT's
    symbolic shape inference as ``prune_model`` sizes it."""
    monkeypatch.chdir(tmp_path)
    from test_fused_ops import _gqa_model

    # x (2, 8, 64); 8 query heads, 2 KV heads, head size 16
    q, kv, out = 2 * 8 * 64 * 128, 2 * 2 * 8 * 64 * 32, 2 * 8 * 128 * 64
    gqa = 2 * 2 * 8 * 8 * 8 * 16
    assert _macs(_gqa_model(packed=False), infer=True) == q + kv + gqa + out  # 360448


# --------------------------------------------------------------------------- Einsum


def test_einsum():
    g = G()
    x = g.input("x", [2, 3, 4])
    g.op("Einsum", [x, g.w("w", 2, 4, 5)], "y", equation="bij,bjk->bik")  # 2*3*4*5
    x2 = g.input("x2", [2, 3, 4, 5])
    g.op("Einsum", [x2, g.w("w2", 5, 6)], "y2", equation="...ij, jk -> ...ik")  # 2*3*4*5*6
    g.op("Einsum", [x], "y3", equation="bij->bji")  # one operand: no multiplication
    assert _macs(g.model(["y", "y2", "y3"])) == 120 + 720


def test_einsum_broadcast_and_implicit_output():
    rule = rule_for_op("", "Einsum")
    # "..." of (2, 1) against (5,): broadcast to (2, 5); implicit output
    view = NodeView("Einsum", {"equation": "...ij,...jk"}, [(2, 1, 3, 4), (5, 4, 6)], [None])
    (term,) = rule.macs(view)
    assert term.macs == 2 * 5 * 3 * 4 * 6
    # the refs are the axes that carry each index at its full size
    assert set(term.scales_with) == {
        ("in", 0, 0),
        ("in", 1, 0),
        ("in", 0, 2),
        ("in", 0, 3),
        ("in", 1, 2),
    }
    bad = NodeView("Einsum", {"equation": "ij,jk->ik"}, [(2, 3, 4), (3, 4)], [None])
    assert rule.macs(bad) == []  # the equation does not fit the shapes


def test_einsum_is_counted_but_frozen():
    g = G()
    x = g.input("x", [1, 3, 4, 4])
    h = g.op("Conv", [x, g.w("w", 4, 3, 1, 1)], "h")  # 1x1: 64 positions x 4 x 3
    g.op("Einsum", [h, g.w("p", 5, 4)], "y", equation="bchw,dc->bdhw")  # 1*4*4*4*5
    model = g.model(["y"])
    assert _macs(model) == 4 * 4 * 4 * 3 + 4 * 4 * 4 * 5  # 512
    (group,) = [gr for gr in _analysis(model).groups if gr.anchor.tensor == "h"]
    assert "Einsum: Einsum is not mapped" in group.frozen_reasons


# --------------------------------------------------------------------------- unknown sizes


def test_unknown_and_non_positive_dims_count_as_one():
    """x ("batch", 8) -> MatMul (8, 16) -> h declared (-1, 16) -> MatMul (16, 4) -> y
    declared (0, 4): the -1, 0 and symbolic axes are unknown, i.e. 1 (the count used to
    multiply the -1 in and go negative)."""
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"]),
        helper.make_node("MatMul", ["h", "w2"], ["y"]),
    ]
    model = _contrib_model(
        nodes,
        [_vi("x", ["batch", 8])],
        [_vi("y", [0, 4])],
        [_init("w1", (8, 16)), _init("w2", (16, 4))],
        value_info=[_vi("h", [-1, 16])],
    )
    assert _macs(model) == 16 * 8 + 4 * 16  # 192
    view = NodeView("MatMul", {}, [(-1, 8), (8, 16)], [(0, 16)])
    assert view.in_shapes[0] == (None, 8) and view.out_shapes[0] == (None, 16)
    assert view.out_numel(0) == 16 and view.in_size(0, 0) == 1 and view.in_size(5, 0) == 1


def test_unknown_rank_counts_nothing():
    for op, domain in [("Conv", ""), ("Gemm", ""), ("MatMul", ""), ("Attention", MS)]:
        view = NodeView(op, {"num_heads": 2}, [None, None], [None])
        assert rule_for_op(domain, op).macs(view) == []


# --------------------------------------------------------------------------- cost = report


def _mobilenet_block() -> onnx.ModelProto:
    """Conv(3->8) -> Relu -> depthwise Conv(8, group 8) -> Relu -> Conv 1x1 (8->4)."""
    g = G()
    x = g.input("x", [1, 3, 8, 8])
    h = g.op(
        "Relu", [g.op("Conv", [x, g.w("w1", 8, 3, 3, 3), g.w("b1", 8)], "c1", pads=[1] * 4)], "r1"
    )
    h = g.op("Conv", [h, g.w("dw", 8, 1, 3, 3), g.w("bd", 8)], "dw_out", group=8, pads=[1] * 4)
    h = g.op("Relu", [h], "r2")
    g.op("Conv", [h, g.w("w3", 4, 8, 1, 1)], "y")
    return g.model(["y"])


def _heads_model() -> onnx.ModelProto:
    """x -> Attention (4 heads) -> out-projection MatMul (C, C) -> y."""
    rng = np.random.default_rng(0)
    inits = [
        _init("w", values=rng.standard_normal((C, 3 * C)) * 0.3),
        _init("bias", values=rng.standard_normal(3 * C) * 0.1),
        _init("wo", values=rng.standard_normal((C, C)) * 0.3),
    ]
    nodes = [
        helper.make_node("Attention", ["x", "w", "bias"], ["a"], domain=MS, num_heads=N),
        helper.make_node("MatMul", ["a", "wo"], ["y"]),
    ]
    return _contrib_model(nodes, [_vi("x", [B, S, C])], [_vi("y", [B, S, C])], inits)


def _gqa_heads() -> onnx.ModelProto:
    from test_fused_ops import _gqa_model

    return _gqa_model(packed=True)


CASES = {
    "gemm": (handbuilt.gemm, PruneOptions(ratio=0.5)),
    "gemm_transa": (handbuilt.gemm_transa, PruneOptions(ratio=0.5)),
    "matmul": (handbuilt.matmul, PruneOptions(ratio=0.5)),
    "transpose_matmul": (handbuilt.transpose_matmul, PruneOptions(ratio=0.5)),
    "convtranspose": (handbuilt.convtranspose, PruneOptions(ratio=0.5)),
    "flatten_gemm": (handbuilt.flatten_gemm, PruneOptions(ratio=0.25)),
    "depthwise": (_mobilenet_block, PruneOptions(ratio=0.5)),
    "attention_heads": (_heads_model, PruneOptions(ratio=0.0, ratios={"head": 0.5})),
    "gqa_heads": (_gqa_heads, PruneOptions(ratio=0.0, ratios={"head": 0.5})),
}


@pytest.mark.parametrize("case", list(CASES))
def test_cost_model_prices_the_pruned_model(case, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # ORT's symbolic shape inference may leave files behind
    build, options = CASES[case]
    model = build()
    analysis = _analysis(model)
    cost = CostModel(analysis)
    result = prune_model(_copy(model), options)
    assert result.plan.groups and result.parity.status != "failed"
    assert cost.cost(NOTHING, "macs") == pytest.approx(result.before["macs"], abs=0.5)
    predicted = cost.cost(removed_labels(result.plan, analysis), "macs")
    assert result.after["macs"] < result.before["macs"]
    assert predicted == pytest.approx(result.after["macs"], abs=0.5)


def test_every_node_of_a_graph_is_priced_by_its_rule():
    """The cost model's terms are the rules' terms of the analysis' nodes, in order."""
    model = infer_shapes(_mobilenet_block())
    analysis = _analysis(model)
    terms = [
        t.macs
        for node in analysis.graph.nodes
        if rule_for(node) is not None
        for t in rule_for(node).macs(NodeView.from_gs(node))
    ]
    assert [c for c, _ in CostModel(analysis).macs_terms] == terms
    # conv1 (3->8): out (1, 8, 8, 8) x 27; depthwise: (1, 8, 8, 8) x 9; 1x1: (1, 4, 8, 8) x 8
    assert terms == [512 * 27, 512 * 9, 256 * 8]
