"""The standard-domain transformer ops of opset 23 (``Attention``, ``RMSNormalization``,
``RotaryEmbedding``) pruned exactly, hand-built and as the torch exporters emit them.

* Hand-built graphs ``x -> [RMSNormalization] -> Q/K/V MatMuls -> [RotaryEmbedding] ->
  Attention -> out-projection MatMul``, with Q/K/V 3-D (head-major columns, the counts in
  ``q_num_heads`` / ``kv_num_heads``, re-folded) or 4-D (``Reshape`` + ``Transpose``, the
  counts in the shapes), MHA and GQA. A unit is a KV head with its query heads (query head
  h reads KV head ``h // (qN / kvN)``; an interleaved ``h % kvN`` mapping fails parity by
  6.2 here); with ``--gqa query`` it is one query slot of every KV group.
* The dynamo exporter at opset 23 turns ``scaled_dot_product_attention``, ``nn.RMSNorm`` and
  ``torch.onnx.ops.rotary_embedding`` into these ops (and Hugging Face LLaMA's SDPA
  attention and RMSNorm too). The TorchScript exporter only knows opsets up to 20: asked for
  23 it warns, stamps opset 23 on the file and emits opset-20 decompositions; it cannot
  export ``aten::rms_norm``, and the ``torch.onnx.ops`` nodes it writes are invalid.

Each pruning test makes the three checks of ``pruning_checks.prune_and_check`` (checker and
ORT load, exact parity against the masked original, planned sizes).
"""

from __future__ import annotations

import collections

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from graphprune.analysis.rules.registry import NodeView, rule_for_op
from graphprune.prune import PruneOptions, analyze_model, prune_model
from graphs import attr as _attr
from graphs import nodes_of as _nodes
from graphs import weights as _weights
from pruning_checks import (
    assert_structure,
    assert_valid,
    prune_and_check,
    refused_as_nothing_pruned,
    run,
)

F32 = TensorProto.FLOAT
B, S, C = 2, 8, 64  # batch, sequence, model width
HS = 16  # head size
IO = 32  # graph input/output width when the model width C is internal (``rmsnorm``)


@pytest.fixture(autouse=True)
def _in_tmp_path(tmp_path, monkeypatch):
    """ORT's symbolic shape inference may save temporary files into the working directory
    when it cannot size a tensor: keep them out of the checkout."""
    monkeypatch.chdir(tmp_path)


def _heads(analysis, prunable: bool = True) -> list[int]:
    groups = analysis.prunable if prunable else analysis.groups
    return sorted(g.units for g in groups if g.kind == "head")


def _cols(unit: int, width: int) -> slice:
    return slice(unit * width, (unit + 1) * width)


def _kept(before: np.ndarray, after: np.ndarray, width: int) -> list[int]:
    """Which blocks of ``width`` columns of ``before`` survive in ``after``, in order."""
    blocks = range(before.shape[1] // width)
    return [
        next(
            g
            for g in blocks
            if np.array_equal(before[:, _cols(g, width)], after[:, _cols(i, width)])
        )
        for i in range(after.shape[1] // width)
    ]


# --------------------------------------------------------------------------------------------
# hand-built graphs


def _attention_model(
    rank: int = 3,
    nq: int = 8,
    nkv: int = 2,
    hv: int = HS,
    mask: bool = False,
    present: bool = False,
    qk: bool = False,
    cache: int = 0,
    rotary: dict | None = None,
    rmsnorm: bool = False,
    causal: bool = False,
    check: bool = True,
    attrs: dict | None = None,
) -> onnx.ModelProto:
    """``x -> [RMSNorm] -> MatMul(Wq/Wk/Wv) -> [Reshape, Transpose] -> [RoPE on Q, K] ->
    Attention -> [Transpose, Reshape] -> MatMul(Wo) -> y``.

    ``rank``: 3 (head-major columns, the counts as attributes) or 4 (``[B, heads, S, size]``).
    ``hv``: the value head size. ``mask``: a constant float mask ``[1, qN, S, S]``, one per
    query head. ``present`` / ``qk``: the op also writes present_key/value /
    qk_matmul_output, unused. ``cache``: past_key/past_value graph inputs of that length and
    present graph outputs. ``rotary``: RotaryEmbedding attributes (3-D: ``num_heads`` is
    added, with ``position_ids`` and 2-D caches; 4-D: 3-D caches, no position ids).
    """
    rng = np.random.default_rng(0)
    inits: list[onnx.TensorProto] = []
    nodes: list[onnx.NodeProto] = []

    def const(name: str, value: np.ndarray) -> str:
        if all(t.name != name for t in inits):
            inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(op: str, ins: list[str], outs: list[str], **kw) -> str:
        nodes.append(helper.make_node(op, ins, outs, **kw))
        return outs[0]

    x = "x"
    if rmsnorm:  # the width C inside a residual: x (B, S, IO) -> Win -> h ... h + o -> Wout
        win = (rng.standard_normal((IO, C)) * 0.3).astype(np.float32)
        x = stream = node("MatMul", [x, const("Win", win)], ["h"])
        scale = rng.uniform(0.5, 1.5, C).astype(np.float32)
        x = node("RMSNormalization", [x, const("norm_w", scale)], ["xn"], epsilon=1e-5)
    proj = {}
    for t, n, h in (("q", nq, HS), ("k", nkv, HS), ("v", nkv, hv)):
        w = (rng.standard_normal((C, n * h)) * 0.3).astype(np.float32)
        out = node("MatMul", [x, const("W" + t, w)], [t])
        if rank == 4:
            shape = const(f"shape_{t}", np.array([B, S, n, h], np.int64))
            out = node("Reshape", [out, shape], [t + "4"])
            out = node("Transpose", [out], [t + "T"], perm=[0, 2, 1, 3])
        proj[t] = out
    if rotary is not None:
        rd = rotary.get("rotary_embedding_dim", 0) or HS
        ang = np.arange(2 * S)[:, None] / 10000 ** (np.arange(rd // 2) / (rd // 2))
        for t, n in (("q", nq), ("k", nkv)):
            kw = dict(rotary)
            if rank == 3:
                cos = const("cos", np.cos(ang).astype(np.float32))
                sin = const("sin", np.sin(ang).astype(np.float32))
                pos = const("pos", np.tile(np.arange(S) + 3, (B, 1)).astype(np.int64))
                ins, kw["num_heads"] = [proj[t], cos, sin, pos], n
            else:
                cos = np.broadcast_to(np.cos(ang[:S]), (B, S, rd // 2)).astype(np.float32)
                sin = np.broadcast_to(np.sin(ang[:S]), (B, S, rd // 2)).astype(np.float32)
                ins = [proj[t], const("cos", cos), const("sin", sin)]
            proj[t] = node("RotaryEmbedding", ins, [t + "_rot"], **kw)
    ins = [proj["q"], proj["k"], proj["v"], ""]
    if mask:
        ins[3] = const("mask", rng.standard_normal((1, nq, S, S)).astype(np.float32))
    if cache:
        ins += ["past_key", "past_value"]
    outs = ["attn", "", "", "qk" if qk else ""]
    if present or cache:
        outs[1:3] = ["present_key", "present_value"]
    while not ins[-1]:
        ins.pop()
    while not outs[-1]:
        outs.pop()
    kw = {"q_num_heads": nq, "kv_num_heads": nkv} if rank == 3 else {}
    kw.update(attrs or {})
    if causal:
        kw["is_causal"] = 1
    y = node("Attention", ins, outs, **kw)
    if rank == 4:
        y = node("Transpose", [y], ["attnT"], perm=[0, 2, 1, 3])
        y = node("Reshape", [y, const("shape_o", np.array([B, S, nq * hv], np.int64))], ["o"])
    wo = (rng.standard_normal((nq * hv, C)) * 0.1).astype(np.float32)
    y = node("MatMul", [y, const("Wo", wo)], ["y" if not rmsnorm else "o_proj"])
    if rmsnorm:
        wout = (rng.standard_normal((C, IO)) * 0.3).astype(np.float32)
        node("MatMul", [node("Add", [stream, y], ["res"]), const("Wout", wout)], ["y"])

    width = IO if rmsnorm else C
    inputs = [helper.make_tensor_value_info("x", F32, [B, S, width])]
    outputs = [helper.make_tensor_value_info("y", F32, [B, S, width])]
    if cache:
        for name, h in (("key", HS), ("value", hv)):
            inputs.append(helper.make_tensor_value_info("past_" + name, F32, [B, nkv, cache, h]))
            shape = [B, nkv, cache + S, h]
            outputs.append(helper.make_tensor_value_info("present_" + name, F32, shape))
    graph = helper.make_graph(nodes, "attention", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)])
    if check:
        onnx.checker.check_model(model, full_check=True)
        feed = {i.name: np.ones(_dims(i), np.float32) for i in inputs}
        assert [o.shape for o in run(model, feed)] == [tuple(_dims(o)) for o in outputs]
    return model


def _dims(vi: onnx.ValueInfoProto) -> list[int]:
    return [d.dim_value for d in vi.type.tensor_type.shape.dim]


LAYOUTS = [(3, 4, 4), (4, 4, 4), (3, 8, 2), (4, 8, 2)]
LAYOUT_IDS = ["3d-mha", "4d-mha", "3d-gqa", "4d-gqa"]


@pytest.mark.parametrize(("rank", "nq", "nkv"), LAYOUTS, ids=LAYOUT_IDS)
def test_attention_heads(rank, nq, nkv):
    """Half the KV heads go, each with its query heads; 3-D counts are re-folded."""
    model = _attention_model(rank, nq, nkv)
    assert _heads(analyze_model(model)) == [nkv]
    result = prune_and_check(model, 0.0, ratios={"head": 0.5})
    (att,) = _nodes(result.model, "Attention")
    if rank == 3:
        assert (_attr(att, "q_num_heads"), _attr(att, "kv_num_heads")) == (nq // 2, nkv // 2)
    else:
        assert not att.attribute  # 4-D: the counts are the shapes'
    before, after = _weights(model), _weights(result.model)
    rep = nq // nkv
    assert after["Wq"].shape == (C, nq * HS // 2) and after["Wo"].shape == (nq * HS // 2, C)
    assert after["Wk"].shape == after["Wv"].shape == (C, nkv * HS // 2)
    # the kept KV heads come with query heads g*rep .. g*rep + rep - 1 and their Wo rows
    kept = _kept(before["Wk"], after["Wk"], HS)
    assert _kept(before["Wv"], after["Wv"], HS) == kept
    q_cols = np.concatenate([np.arange(g * rep * HS, (g + 1) * rep * HS) for g in kept])
    np.testing.assert_array_equal(after["Wq"], before["Wq"][:, q_cols])
    np.testing.assert_array_equal(after["Wo"], before["Wo"][q_cols])


@pytest.mark.parametrize("rank", [3, 4])
def test_gqa_query_slots(rank):
    """``--gqa query``: a unit is one query slot of every KV group; the KV heads are kept
    (a frozen head group of their own) and only q_num_heads is re-folded."""
    nq, nkv = 8, 2
    model = _attention_model(rank, nq, nkv)
    analysis = analyze_model(model, gqa="query")
    assert _heads(analysis) == [nq // nkv]
    (kv,) = [g for g in analysis.frozen if g.kind == "head"]
    assert kv.units == nkv and "Attention: KV heads kept (--gqa query)" in kv.frozen_reasons
    result = prune_and_check(model, 0.0, ratios={"head": 0.5}, gqa="query")
    before, after = _weights(model), _weights(result.model)
    np.testing.assert_array_equal(after["Wk"], before["Wk"])
    np.testing.assert_array_equal(after["Wv"], before["Wv"])
    assert after["Wq"].shape == (C, nq * HS // 2)
    if rank == 3:
        (att,) = _nodes(result.model, "Attention")
        assert (_attr(att, "q_num_heads"), _attr(att, "kv_num_heads")) == (nq // 2, nkv)
    # every KV group keeps the same query slots
    heads = _kept(before["Wq"], after["Wq"], HS)
    rep = nq // nkv
    assert [h // rep for h in heads] == [0, 0, 1, 1]
    assert [h % rep for h in heads[:2]] == [h % rep for h in heads[2:]]


@pytest.mark.parametrize("rank", [3, 4])
def test_per_head_mask_and_value_head_size(rank):
    """A constant per-head mask ``[1, qN, S, S]`` is sliced with the query heads (parity
    holds only if each kept head keeps its own mask); the value head size (8) differs
    from the key's (16)."""
    model = _attention_model(rank, 8, 2, hv=8, mask=True)
    result = prune_and_check(model, 0.0, ratios={"head": 0.5})
    after = _weights(result.model)
    assert after["mask"].shape == (1, 4, S, S)
    assert after["Wv"].shape == (C, 8) and after["Wo"].shape == (4 * 8, C)


@pytest.mark.parametrize("rank", [3, 4])
def test_unused_present_and_qk_outputs(rank):
    """present_key/value and qk_matmul_output (unused) follow the KV / query heads; shape
    inference leaves present unsized without a past, the rule sizes it from K and V."""
    model = _attention_model(rank, 8, 2, present=True, qk=True)
    assert _heads(analyze_model(model)) == [2]
    result = prune_and_check(model, 0.0, ratios={"head": 0.5})
    (att,) = _nodes(result.model, "Attention")
    assert len(att.output) == 4


@pytest.mark.parametrize("rank", [3, 4])
def test_kv_cache_at_the_graph_boundary(rank):
    """past/present at the graph's inputs and outputs carry the KV heads: KV units stay
    (the declared shapes are the caller's), but query slots (``--gqa query``) can go."""
    model = _attention_model(rank, 8, 2, cache=4)
    (heads,) = [g for g in analyze_model(model).groups if g.kind == "head"]
    assert heads.units == 2 and {"graph input", "graph output"} <= set(heads.frozen_reasons)
    refused_as_nothing_pruned(
        model, 0.0, match="matches nothing.*graph input", ratios={"head": 0.5}
    )
    result = prune_and_check(model, 0.0, ratios={"head": 0.5}, gqa="query")
    for io in ("input", "output"):
        declared = {v.name: _dims(v) for v in getattr(model.graph, io)}
        assert {v.name: _dims(v) for v in getattr(result.model.graph, io)} == declared
    assert _weights(result.model)["Wq"].shape == (C, 4 * HS)


ROTARY = [{}, {"interleaved": 1}, {"rotary_embedding_dim": 8}]


@pytest.mark.parametrize("rotary", ROTARY, ids=["half", "interleaved", "partial"])
@pytest.mark.parametrize("rank", [3, 4])
def test_rotary_rmsnorm_causal(rank, rotary):
    """RoPE rotates pairs inside each head: whole heads go, a 3-D input's ``num_heads`` is
    re-folded. RMSNormalization's width is the residual stream (approximate, frozen)."""
    model = _attention_model(rank, 8, 2, rotary=rotary, rmsnorm=True, causal=True)
    analysis = analyze_model(model)
    assert _heads(analysis) == [2]
    (width,) = [g for g in analysis.groups if g.width_only]
    assert width.kind == "hidden" and width.units == C
    reason = "RMSNormalization: normalised axis (width pruning is approximate)"
    assert width.frozen_reasons == [reason]
    result = prune_and_check(model, 0.0, ratios={"head": 0.5})
    rope = _nodes(result.model, "RotaryEmbedding")
    if rank == 3:
        assert [_attr(n, "num_heads") for n in rope] == [4, 1]
    else:
        assert all(a.name != "num_heads" for n in rope for a in n.attribute)


def test_rmsnorm_hidden_width_is_approximate():
    model = _attention_model(4, 8, 2, rotary={}, rmsnorm=True)
    result = prune_model(model, PruneOptions(ratio=0.0, hidden=0.25))
    assert_valid(result.model, model)
    assert assert_structure(result) > 0
    (gp,) = result.plan.groups
    assert gp.kind == "hidden" and gp.approximate and gp.units - len(gp.remove) == 48
    assert result.parity.status == "approximate" and result.parity.max_abs_diff > 0
    assert _weights(result.model)["norm_w"].shape == (48,)


def test_unmapped_attention_freezes_with_a_reason():
    """3-D Q/K/V without the head counts cannot be split into heads."""
    model = _attention_model(3, 8, 2, check=False, attrs={"q_num_heads": 0, "kv_num_heads": 0})
    analysis = analyze_model(model)
    assert not _heads(analysis)
    reasons = {r for g in analysis.frozen for r in g.frozen_reasons}
    assert "Attention: 3-D Q/K/V without q_num_heads/kv_num_heads" in reasons


def test_attention_macs():
    """QKᵀ and PV: ``B·qN·Sq·T`` scores of head_size and v_head_size products each, T the
    past plus the new keys; both scale with the query heads kept."""
    rule = rule_for_op("", "Attention")
    past = [2, 2, 5, 16]
    four = NodeView(
        "Attention",
        {},
        [[2, 8, 7, 16], [2, 2, 3, 16], [2, 2, 3, 4], None, past, [2, 2, 5, 4]],
        [[2, 8, 7, 4]],
    )
    terms = rule.macs(four)
    assert sum(t.macs for t in terms) == 2 * 8 * 7 * (5 + 3) * (16 + 4)
    assert all(("in", 0, 1) in t.scales_with for t in terms)
    three = NodeView(
        "Attention",
        {"q_num_heads": 8, "kv_num_heads": 2},
        [[2, 7, 128], [2, 3, 32], [2, 3, 8]],
        [[2, 7, 32]],
    )
    terms = rule.macs(three)
    assert sum(t.macs for t in terms) == 2 * 8 * 7 * 3 * (16 + 4)
    assert all(t.scales_with == (("in", 0, 2),) for t in terms)
    norm = rule_for_op("", "RMSNormalization")
    assert norm.macs(NodeView("RMSNormalization", {}, [[2, 7, 64], [64]], [[2, 7, 64]])) == []


# --------------------------------------------------------------------------------------------
# torch exporters


def _std_llama(norm: str = "native", attention: str = "sdpa"):
    """A LLaMA written with the ops opset 23 has: ``nn.RMSNorm`` (or written out), RoPE by
    ``torch.onnx.ops.rotary_embedding``, GQA attention by ``scaled_dot_product_attention``
    (``enable_gqa``) or ``torch.onnx.ops.attention``, causal, SwiGLU; 2 layers, width 64,
    8 query heads sharing 2 KV heads of size 8, MLP 96."""
    import torch
    from torch import nn
    from torch.nn import functional as F  # noqa: N812

    from models.blocks import RMSNorm

    def make_norm(d):
        return nn.RMSNorm(d, eps=1e-6) if norm == "native" else RMSNorm(d)

    class Block(nn.Module):
        def __init__(self, d=64, hq=8, hkv=2, ff=96):
            super().__init__()
            self.hq, self.hkv, self.dh = hq, hkv, d // hq
            self.q = nn.Linear(d, hq * self.dh, bias=False)
            self.k = nn.Linear(d, hkv * self.dh, bias=False)
            self.v = nn.Linear(d, hkv * self.dh, bias=False)
            self.o = nn.Linear(hq * self.dh, d, bias=False)
            self.n1, self.n2 = make_norm(d), make_norm(d)
            self.gate = nn.Linear(d, ff, bias=False)
            self.up = nn.Linear(d, ff, bias=False)
            self.down = nn.Linear(ff, d, bias=False)

        def forward(self, x, cos, sin):
            b, t, _ = x.shape
            y = self.n1(x)
            q = self.q(y).view(b, t, self.hq, self.dh).transpose(1, 2)
            k = self.k(y).view(b, t, self.hkv, self.dh).transpose(1, 2)
            v = self.v(y).view(b, t, self.hkv, self.dh).transpose(1, 2)
            q = torch.onnx.ops.rotary_embedding(q, cos, sin)
            k = torch.onnx.ops.rotary_embedding(k, cos, sin)
            if attention == "sdpa":
                a = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
            else:
                a = torch.onnx.ops.attention(q, k, v, is_causal=True)[0]
            x = x + self.o(a.transpose(1, 2).reshape(b, t, -1))
            y = self.n2(x)
            return x + self.down(F.silu(self.gate(y)) * self.up(y))

    class Llama(nn.Module):
        def __init__(self, vocab=50, d=64, n=2):
            super().__init__()
            self.emb = nn.Embedding(vocab, d)
            self.blocks = nn.ModuleList(Block(d) for _ in range(n))
            self.norm = make_norm(d)
            self.head = nn.Linear(d, vocab, bias=False)
            self.dh = 8

        def forward(self, ids):
            b, t = ids.shape
            pos = torch.arange(t, dtype=torch.float32)[:, None]
            inv = 1.0 / 10000 ** (torch.arange(0, self.dh, 2, dtype=torch.float32) / self.dh)
            ang = (pos * inv)[None].expand(b, t, self.dh // 2)
            cos, sin = ang.cos(), ang.sin()
            x = self.emb(ids)
            for blk in self.blocks:
                x = blk(x, cos, sin)
            return self.head(self.norm(x))

    torch.manual_seed(0)
    model = Llama().eval()
    with torch.no_grad():  # distinct norm weights: equal ones would be one shared initializer
        for p in model.parameters():
            if p.dim() == 1:
                p.uniform_(0.5, 1.5)
    return model


@pytest.fixture(scope="module")
def dynamo_llama(tmp_path_factory):
    torch = pytest.importorskip("torch")
    from exporters.torch_export import export_torch

    ids = torch.randint(0, 50, (2, 12), generator=torch.Generator().manual_seed(0))
    cache = {}

    def get(dynamic: bool = False) -> onnx.ModelProto:
        if dynamic not in cache:
            path = tmp_path_factory.mktemp("llama23") / f"dynamo-{dynamic}.onnx"
            axes = {"input": {1: "sequence"}} if dynamic else None
            export_torch(
                _std_llama(), (ids,), path, exporter="dynamo", opset=23,
                dynamic_batch=dynamic, dynamic_axes=axes,
            )  # fmt: skip
            cache[dynamic] = onnx.load(path)
        return cache[dynamic]

    return get


def _per_layer(model: onnx.ModelProto) -> list[tuple[int, int]]:
    """(query heads, KV heads) of each Attention, read from the Q/K projection widths."""
    weights = _weights(model)
    producer = {o: n for n in model.graph.node for o in n.output}

    def width(t: str) -> int:  # back through RotaryEmbedding / Transpose / Reshape
        while producer[t].op_type != "MatMul":
            t = producer[t].input[0]
        return weights[producer[t].input[1]].shape[1]

    return [(width(n.input[0]) // 8, width(n.input[1]) // 8) for n in _nodes(model, "Attention")]


@pytest.mark.slow
@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
def test_dynamo_llama_heads_and_mlp(dynamo_llama, dynamic):
    model = dynamo_llama(dynamic)
    ops = collections.Counter(n.op_type for n in model.graph.node)
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [23]
    assert (ops["Attention"], ops["RotaryEmbedding"], ops["RMSNormalization"]) == (2, 4, 5)
    assert not ops["Softmax"]
    analysis = analyze_model(model)
    kinds = sorted((g.kind, g.units, g.unit_width) for g in analysis.prunable)
    assert kinds == [("head", 2, 32), ("head", 2, 32), ("neuron", 96, 1), ("neuron", 96, 1)]
    assert _per_layer(model) == [(8, 2), (8, 2)]
    result = prune_and_check(model, 0.0, ratios={"head": 0.5, "neuron": 0.5})
    assert _per_layer(result.model) == [(4, 1), (4, 1)]
    shapes = sorted(tuple(t.dims) for t in result.model.graph.initializer if len(t.dims) == 2)
    assert shapes.count((64, 48)) == 4 and shapes.count((48, 64)) == 2  # SwiGLU 96 -> 48
    assert shapes.count((32, 64)) == 2  # o_proj rows: 4 query heads of 8


@pytest.mark.slow
def test_dynamo_llama_query_slots_width_and_depth(dynamo_llama):
    model = dynamo_llama()
    result = prune_and_check(model, 0.0, ratios={"head": 0.5}, gqa="query")
    assert _per_layer(result.model) == [(4, 2), (4, 2)]
    result = prune_model(model, PruneOptions(ratio=0.0, hidden=0.25))
    assert_valid(result.model, model)
    assert assert_structure(result) > 0
    (gp,) = result.plan.groups
    assert gp.kind == "hidden" and gp.units - len(gp.remove) == 48
    assert result.parity.status == "approximate"
    dropped = prune_and_check(model, 0.0, drop_list=(0,))
    assert len(_nodes(dropped.model, "Attention")) == 1


@pytest.mark.slow
def test_dynamo_hf_llama_sdpa(tmp_path):
    """Hugging Face LLaMA with SDPA attention at opset 23: RMSNormalization and Attention
    (RoPE stays rotate_half, GQA stays repeat_kv before the op)."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    import transformers

    from graphprune.exporters.hf_export import export_hf
    from models import transformer_zoo as zoo

    config = zoo._config("llama")
    config._attn_implementation = "sdpa"
    torch.manual_seed(zoo.SEED)
    hf = transformers.LlamaForCausalLM(config).eval()
    zoo._randomize_vectors(hf)
    feeds = {k: torch.from_numpy(v) for k, v in zoo.example_feeds("llama").items()}
    model = onnx.load(export_hf(hf, feeds, tmp_path / "llama.onnx", "dynamo", opset=23))
    ops = collections.Counter(n.op_type for n in model.graph.node)
    assert ops["Attention"] == 2 and ops["RMSNormalization"] == 5 and not ops["Softmax"]
    assert _heads(analyze_model(model)) == [2, 2]
    result = prune_and_check(model, 0.0, ratios={"head": 0.5, "neuron": 0.5})
    shapes = [tuple(t.dims) for t in result.model.graph.initializer if len(t.dims) == 2]
    assert shapes.count((64, 32)) == 2 and shapes.count((64, 8)) == 4  # q; k, v: 1 KV head


@pytest.mark.slow
@pytest.mark.parametrize("opset", [20, 23])
def test_torchscript_llama_at_its_highest_opsets(tmp_path, opset):
    """TorchScript's highest opset is 20; asked for 23 it still writes the file (stamped 23,
    with a warning) from its opset-20 decompositions: no Attention, RMSNormalization or
    RotaryEmbedding. The written-out LLaMA prunes its KV groups exactly either way."""
    torch = pytest.importorskip("torch")
    from exporters.torch_export import export_torch
    from models.blocks import TinyLlama

    torch.manual_seed(0)
    ids = torch.randint(0, 50, (2, 12))
    path = export_torch(TinyLlama().eval(), (ids,), tmp_path / "m.onnx", opset=opset)
    model = onnx.load(path)
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [opset]
    ops = {n.op_type for n in model.graph.node}
    assert not ops & {"Attention", "RMSNormalization", "RotaryEmbedding"}
    assert "Softmax" in ops
    result = prune_and_check(model, 0.0, ratios={"head": 0.5, "neuron": 0.5})
    assert sum(len(gp.remove) for gp in result.plan.groups if gp.kind == "head") == 2


@pytest.mark.slow
def test_torchscript_cannot_emit_the_opset23_ops(tmp_path):
    """``nn.RMSNorm`` has no TorchScript symbolic at any opset, and the ``torch.onnx.ops``
    Attention / RotaryEmbedding nodes TorchScript writes carry their attributes as extra
    inputs, which the checker rejects."""
    torch = pytest.importorskip("torch")
    from exporters.torch_export import export_torch

    ids = torch.randint(0, 50, (2, 12))
    with pytest.raises(torch.onnx.errors.UnsupportedOperatorError, match="rms_norm"):
        export_torch(_std_llama(), (ids,), tmp_path / "a.onnx", opset=23)
    model = _std_llama(norm="written", attention="ops")
    with pytest.raises(onnx.checker.ValidationError, match="RotaryEmbedding|Attention"):
        export_torch(model, (ids,), tmp_path / "b.onnx", opset=23)
