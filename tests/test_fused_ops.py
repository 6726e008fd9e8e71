"""ONNX Runtime fused attention ops (``com.microsoft``) pruned exactly.

* MultiHeadAttention: a tiny BERT fused by ``onnxruntime.transformers`` with
  ``use_multi_head_attention``. The Q/K/V weights live in the MatMuls feeding the op and its
  ``bias`` is ``[bq | bk | bv]``; pruning heads slices all of them and re-folds ``num_heads``.
* Attention fed the raw 2-D attention mask (``AttentionMaskFormat.AttentionMask``).
* GroupQueryAttention, hand-built (the optimizer never emits it): separate and packed Q/K/V.
  A unit is one KV head with its ``num_heads / kv_num_heads`` query heads (query head h
  reads KV head ``h // (N / kvN)``), and both head counts are re-folded.

Each test makes the three checks of ``pruning_checks.prune_and_check`` (checker + ORT load,
exact parity against the masked original, planned sizes) plus op-specific ones. Parity is
what holds the layouts: with the rules' re-fold disabled (stale ``num_heads``) or GQA's
query heads mapped to KV heads interleaved (``h % kvN``), parity fails (max error 0.26 on
the BERT here, above 10 on the GQA graph).
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from graphprune.graph import infer_shapes
from graphprune.prune import analyze_model
from graphs import attr as _attr
from graphs import nodes_of as _nodes
from graphs import weights as _weights
from pruning_checks import prune_and_check, refused_as_nothing_pruned, run

HEADS_AND_MLP = {"head": 0.5, "neuron": 0.5}


@pytest.fixture(autouse=True)
def _in_tmp_path(tmp_path, monkeypatch):
    """ORT's symbolic shape inference saves ``sym_shape_infer_temp.onnx`` (and UUID-named
    external ``.data`` files) into the working directory when it cannot size every tensor,
    as with GroupQueryAttention's present outputs: keep that out of the checkout."""
    monkeypatch.chdir(tmp_path)


def _units(analysis, kind: str) -> list[int]:
    return [g.units for g in analysis.prunable if g.kind == kind]


# --------------------------------------------------------------------------------------------
# BERT fused by the ORT transformer optimizer


def _fused_bert(**fusion_options) -> onnx.ModelProto:
    """The zoo's tiny BERT (2 layers, hidden 64, 4 heads, MLP 128; TorchScript export with
    dynamic batch and sequence) fused with ``fusion_options`` set on ``FusionOptions``."""
    pytest.importorskip("transformers")
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    from models.transformer_zoo import build

    logging.getLogger("onnxruntime.transformers").setLevel(logging.ERROR)
    options = FusionOptions("bert")
    for key, value in fusion_options.items():
        setattr(options, key, value)
    path = build("bert", "torchscript", True)
    fused = optimize_model(
        str(path), model_type="bert", num_heads=4, hidden_size=64, optimization_options=options
    )
    return fused.model


def _check_bert_analysis(model: onnx.ModelProto) -> None:
    analysis = analyze_model(model)
    assert _units(analysis, "head") == [4, 4]
    assert _units(analysis, "neuron") == [128, 128]


@pytest.mark.slow
def test_multi_head_attention_bert():
    model = _fused_bert(use_multi_head_attention=True)
    assert len(_nodes(model, "MultiHeadAttention")) == 2
    assert not _nodes(model, "Attention")
    _check_bert_analysis(model)

    result = prune_and_check(model, 0.0, ratios=HEADS_AND_MLP)
    pruned, weights = result.model, _weights(result.model)
    producer = {o: n for n in pruned.graph.node for o in n.output}
    mha = _nodes(pruned, "MultiHeadAttention")
    assert [_attr(n, "num_heads") for n in mha] == [2, 2]
    for node in mha:
        for slot in range(3):  # query / key / value projections: 2 heads x 16 columns
            matmul = producer[node.input[slot]]
            assert matmul.op_type == "MatMul"
            assert weights[matmul.input[1]].shape == (64, 32)
        assert weights[node.input[3]].shape == (96,)  # [bq | bk | bv], 32 each
        (out_proj,) = [n for n in pruned.graph.node if node.output[0] in n.input]
        assert out_proj.op_type == "MatMul"
        assert weights[out_proj.input[1]].shape == (32, 64)
    for gelu in _nodes(pruned, "BiasGelu"):
        assert weights[gelu.input[1]].shape == (64,)


@pytest.mark.slow
def test_attention_with_raw_2d_mask_bert():
    from onnxruntime.transformers.fusion_options import AttentionMaskFormat

    model = _fused_bert(attention_mask_format=AttentionMaskFormat.AttentionMask)
    attention = _nodes(model, "Attention")
    assert len(attention) == 2
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    ranks = {
        vi.name: len(vi.type.tensor_type.shape.dim) for vi in infer_shapes(copy).graph.value_info
    }
    assert [ranks[n.input[3]] for n in attention] == [2, 2]  # [B, T] mask, not mask_index
    _check_bert_analysis(model)

    result = prune_and_check(model, 0.0, ratios=HEADS_AND_MLP)
    weights = _weights(result.model)
    attention = _nodes(result.model, "Attention")
    assert [_attr(n, "num_heads") for n in attention] == [2, 2]
    assert [weights[n.input[1]].shape for n in attention] == [(64, 96)] * 2
    assert [weights[n.input[2]].shape for n in attention] == [(96,)] * 2


# --------------------------------------------------------------------------------------------
# GroupQueryAttention, hand-built: x -> Q/K/V MatMuls -> GQA -> out-projection MatMul

B, S, C = 2, 8, 64  # batch, sequence, model width
N, KV, H = 8, 2, 16  # query heads, KV heads, head size
REP = N // KV  # query heads per KV head
F32 = TensorProto.FLOAT


def _gqa_model(
    packed: bool,
    present: bool = False,
    cache: tuple[int, int] | None = None,
    batch: int = B,
) -> onnx.ModelProto:
    """``x -> MatMul(s) -> GroupQueryAttention -> MatMul(Wo) -> y``, checked and run once.

    ``present``: the op also writes present_key/present_value, unused. ``cache=(past,
    capacity)``: past_key/past_value graph inputs ``[batch, KV, capacity, H]`` holding
    ``past`` tokens, present graph outputs (ORT sizes them ``max(capacity, past + S)``).
    ``seqlens_k`` (total length - 1 per row) and ``total_sequence_length`` are constants:
    as graph inputs, parity would feed them random values that ORT rejects.
    """
    rng = np.random.default_rng(0)
    past, capacity = cache or (0, 0)
    inits: list[onnx.TensorProto] = []

    def const(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(value, name))
        return name

    def matmul(x: str, w: str, rows: int, cols: int, std: float, y: str) -> onnx.NodeProto:
        const(w, (rng.standard_normal((rows, cols)) * std).astype(np.float32))
        return helper.make_node("MatMul", [x, w], [y])

    if packed:  # one MatMul, columns [Q (N*H) | K (KV*H) | V (KV*H)]
        nodes = [matmul("x", "Wqkv", C, (N + 2 * KV) * H, 0.5, "qkv")]
        qkv = ["qkv", "", ""]
    else:
        widths = {"q": N * H, "k": KV * H, "v": KV * H}
        nodes = [matmul("x", "W" + t, C, width, 0.5, t) for t, width in widths.items()]
        qkv = list(widths)
    kv_in = ["past_key", "past_value"] if cache else ["", ""]
    seqlens = const("seqlens_k", np.full(batch, past + S - 1, np.int32))
    total = const("total_sequence_length", np.array(past + S, np.int32))
    outputs = ["attn", "present_key", "present_value"] if present or cache else ["attn"]
    attrs = {"domain": "com.microsoft", "num_heads": N, "kv_num_heads": KV}
    gqa = helper.make_node("GroupQueryAttention", [*qkv, *kv_in, seqlens, total], outputs, **attrs)
    nodes += [gqa, matmul("attn", "Wo", N * H, C, 0.1, "y")]

    inputs = [helper.make_tensor_value_info("x", F32, [batch, S, C])]
    outs = [helper.make_tensor_value_info("y", F32, [batch, S, C])]
    if cache:
        shape = [batch, KV, capacity, H]
        inputs += [helper.make_tensor_value_info(t, F32, shape) for t in kv_in]
        shape = [batch, KV, max(capacity, past + S), H]
        outs += [helper.make_tensor_value_info(t, F32, shape) for t in outputs[1:]]
    graph = helper.make_graph(nodes, "gqa", inputs, outs, inits)
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    model = helper.make_model(graph, opset_imports=opsets)
    onnx.checker.check_model(model, full_check=True)
    got = run(model, {i.name: np.ones(_dims(i), np.float32) for i in inputs})
    assert [y.shape for y in got] == [tuple(_dims(o)) for o in outs]
    return model


def _dims(vi: onnx.ValueInfoProto) -> list[int]:
    return [d.dim_value for d in vi.type.tensor_type.shape.dim]


def _cols(group: int, width: int) -> slice:
    return slice(group * width, (group + 1) * width)


def _head_counts(model: onnx.ModelProto) -> tuple[int, int]:
    (gqa,) = _nodes(model, "GroupQueryAttention")
    return _attr(gqa, "kv_num_heads"), _attr(gqa, "num_heads")


@pytest.mark.parametrize("packed", [False, True], ids=["separate", "packed"])
def test_group_query_attention(packed):
    model = _gqa_model(packed)
    assert _units(analyze_model(model), "head") == [KV]

    result = prune_and_check(model, 0.0, ratios={"head": 0.5})
    assert _head_counts(result.model) == (KV // 2, N // 2)

    before, after = _weights(model), _weights(result.model)
    if packed:
        q, k, v = np.split(before["Wqkv"], [N * H, (N + KV) * H], axis=1)
        assert after["Wqkv"].shape == (C, (N + 2 * KV) * H // 2)
        q_new, k_new, v_new = np.split(after["Wqkv"], [N * H // 2, (N + KV) * H // 2], axis=1)
    else:
        q, k, v = before["Wq"], before["Wk"], before["Wv"]
        q_new, k_new, v_new = after["Wq"], after["Wk"], after["Wv"]
    assert (q_new.shape, k_new.shape, v_new.shape) == ((C, N * H // 2), (C, H), (C, H))
    assert after["Wo"].shape == (N * H // 2, C)
    # The kept KV head g comes with query heads g*REP .. g*REP+REP-1 and their Wo rows.
    (g,) = [g for g in range(KV) if np.array_equal(k[:, _cols(g, H)], k_new)]
    np.testing.assert_array_equal(v_new, v[:, _cols(g, H)])
    np.testing.assert_array_equal(q_new, q[:, _cols(g, REP * H)])
    np.testing.assert_array_equal(after["Wo"], before["Wo"][_cols(g, REP * H)])


def test_group_query_attention_with_unused_present_outputs():
    """Unused present_key/present_value and no past: ORT's symbolic shape inference sizes
    present only from past_key, so their shapes come from the ONNX Runtime run
    (``graphprune.ort_shapes``): [B, kv_num_heads, T, H], linked to the KV heads."""
    model = _gqa_model(packed=True, present=True)
    assert _units(analyze_model(model), "head") == [KV]
    result = prune_and_check(model, 0.0, ratios={"head": 0.5})
    assert _head_counts(result.model) == (KV // 2, N // 2)


def _check_cache_frozen(model: onnx.ModelProto) -> None:
    """The KV cache at the graph boundary carries kv_num_heads (the layout is the caller's):
    the heads stay and the model is left as it was, declared shapes included."""
    heads = [g for g in analyze_model(model).groups if g.kind == "head"]
    assert [g.units for g in heads] == [KV]
    assert {"graph input", "graph output"} <= set(heads[0].frozen_reasons)
    refused_as_nothing_pruned(model, 0.0, match="--heads 0.5 matches nothing", ratios={"head": 0.5})


def test_group_query_attention_shared_buffer_cache_is_frozen():
    # ORT CPU: a multi-token step on top of a past needs batch 1
    _check_cache_frozen(_gqa_model(packed=True, cache=(4, 16), batch=1))


# present longer than past: ORT's symbolic inference copies past_key's shape onto present;
# declared graph I/O shapes must win (graphprune.graph.infer_shapes never overrides them)
def test_group_query_attention_growing_cache_is_frozen():
    _check_cache_frozen(_gqa_model(packed=True, cache=(4, 4), batch=1))


# --------------------------------------------------------------------------------------------
# Shapes where ORT's symbolic inference cannot give them: shapes from an ONNX Runtime run

MS = "com.microsoft"


def _init(name: str, arr: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(arr), name)


def _fused_matmul_mlp(derived: bool = False) -> onnx.ModelProto:
    """``SkipLayerNorm(x, BiasGelu(FusedMatMul(x, W1, transB) + b1) @ W2)`` on x [batch,
    seq, 16], an MLP of 32 neurons. FusedMatMul (ORT's level-2 optimizer emits it) is an op
    ORT's symbolic shape inference does not know: it stops there, and onnx's knows none of
    the contrib ops. ``derived`` adds tensors whose dims are functions of the input symbols
    (a flatten, a concat and a pad of the hidden activation)."""
    rng = np.random.default_rng(0)
    f32 = np.float32
    inits = [
        _init("w1", rng.standard_normal((32, 16)).astype(f32)),
        _init("b1", rng.standard_normal(32).astype(f32)),
        _init("w2", rng.standard_normal((32, 16)).astype(f32)),
        _init("gamma", rng.uniform(0.5, 1.5, 16).astype(f32)),
        _init("beta", rng.standard_normal(16).astype(f32)),
        _init("bias", rng.standard_normal(16).astype(f32)),
    ]
    nodes = [
        helper.make_node("FusedMatMul", ["x", "w1"], ["h"], domain=MS, transB=1, alpha=0.5),
        helper.make_node("BiasGelu", ["h", "b1"], ["g"], domain=MS),
        helper.make_node("MatMul", ["g", "w2"], ["o"]),
        helper.make_node(
            "SkipLayerNormalization", ["o", "x", "gamma", "beta", "bias"], ["y"], domain=MS
        ),
    ]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq", 16])]
    if derived:
        inits += [
            _init("flat", np.array([-1, 32], np.int64)),
            _init("pads", np.array([0, 0, 0, 0, 1, 0], np.int64)),
        ]
        nodes += [
            helper.make_node("Reshape", ["g", "flat"], ["g_flat"]),
            helper.make_node("Concat", ["g", "g"], ["g_twice"], axis=1),
            helper.make_node("Pad", ["g", "pads"], ["g_padded"]),
            helper.make_node("ReduceSum", ["g_flat"], ["s_flat"], keepdims=0),
            helper.make_node("ReduceSum", ["g_twice"], ["s_twice"], keepdims=0),
            helper.make_node("ReduceSum", ["g_padded"], ["s_padded"], keepdims=0),
        ]
        outputs += [
            helper.make_tensor_value_info(n, TensorProto.FLOAT, [])
            for n in ("s_flat", "s_twice", "s_padded")
        ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", 16])
    graph = helper.make_graph(nodes, "fused_matmul_mlp", [x], outputs, inits)
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid(MS, 1)]
    return helper.make_model(graph, opset_imports=opsets)


def _value_dims(model: onnx.ModelProto) -> dict[str, list]:
    return {
        vi.name: [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]
        for vi in model.graph.value_info
    }


def test_shapes_from_an_ort_run_keep_symbolic_dims():
    from graphprune.graph import _skeleton, _symbolic_infer

    model = _fused_matmul_mlp(derived=True)
    symbolic = _symbolic_infer(_skeleton(model, large_as_inputs=True))
    assert "h" not in symbolic and "g" not in symbolic  # symbolic inference cannot type them
    dims = _value_dims(infer_shapes(model))
    assert dims["h"] == dims["g"] == ["batch", "seq", 32]
    assert dims["o"] == ["batch", "seq", 16]
    assert dims["g_flat"] == ["batch*seq", 32]
    assert dims["g_twice"] == ["batch", "2*seq", 32]
    assert dims["g_padded"] == ["batch", "seq + 1", 32]


def test_pruning_through_ops_symbolic_inference_cannot_type():
    model = _fused_matmul_mlp()
    assert _units(analyze_model(model), "neuron") == [32]
    result = prune_and_check(model, 0.0, ratios={"neuron": 0.5})
    weights = _weights(result.model)
    assert weights["w1"].shape == (16, 16) and weights["b1"].shape == (16,)
    assert weights["w2"].shape == (16, 16)
    assert result.after["macs"] == result.before["macs"] // 2
    x = next(vi for vi in result.model.graph.input if vi.name == "x")
    assert [d.dim_param or d.dim_value for d in x.type.tensor_type.shape.dim] == [
        "batch",
        "seq",
        16,
    ]


def test_symbolic_inference_sizes_ops_on_large_constants(monkeypatch):
    """A constant over the skeleton's size (a folded position embedding here) keeps only its
    dims for shape inference; ORT's symbolic inference reads the value of every constant an
    Add takes, and used to fail on it, leaving SkipLayerNormalization unsized. It now sees
    a tensor of unknown value, and sizes the graph without running it."""
    import graphprune.ort_shapes

    def no_run(model):
        raise AssertionError("symbolic inference should have sized every tensor")

    monkeypatch.setattr(graphprune.ort_shapes, "ort_shapes", no_run)
    rng = np.random.default_rng(0)
    f32 = np.float32
    inits = [
        _init("pos", rng.standard_normal((1, 80, 64)).astype(f32)),  # 5120 elements
        _init("gamma", rng.uniform(0.5, 1.5, 64).astype(f32)),
        _init("beta", rng.standard_normal(64).astype(f32)),
    ]
    nodes = [
        helper.make_node("Add", ["x", "pos"], ["e"]),
        helper.make_node("SkipLayerNormalization", ["e", "x", "gamma", "beta"], ["n"], domain=MS),
        helper.make_node("Relu", ["n"], ["y"]),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 80, 64])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 80, 64])
    graph = helper.make_graph(nodes, "large_constant", [x], [y], inits)
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid(MS, 1)]
    model = helper.make_model(graph, opset_imports=opsets)
    assert _value_dims(infer_shapes(model))["n"] == ["batch", 80, 64]
