"""graphprune.emit: --optimize / --quantize / --emit ort stages, each loaded, run and compared
with the pruned float model; fusions of the optimized original kept or a RewriteError."""

import contextlib
import json
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from graphprune import emit
from graphprune.emit import Stage, build_stages, fused_ops, is_transformer
from graphprune.errors import RewriteError, UsageError
from graphprune.options import PruneOptions
from graphprune.prune import prune_model

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "models" / "digits" / "digits_cnn.onnx"
DIGITS_CALIB = ROOT / "models" / "digits" / "digits_calib.npz"
DIGITS_TEST = ROOT / "models" / "digits" / "digits_test.npz"

# Measured (onnxruntime 1.32): digits dynamic 0.99997, static 0.99998; bert (heads 0.5,
# mlp 0.5) dynamic 0.99988, static 0.99977. The bounds leave ~10x that gap to 1.
DIGITS_COSINE = 0.9995
BERT_COSINE = 0.998


def _batches(path, size, n):
    with np.load(path) as data:
        x = data["input"].astype(np.float32)
    return [{"input": x[i : i + size]} for i in range(0, min(len(x), size * n), size)]


@pytest.fixture(scope="module")
def digits():
    original = onnx.load(str(DIGITS))
    pruned = prune_model(str(DIGITS), PruneOptions(ratio=0.5)).model
    return original, pruned, _batches(DIGITS_CALIB, 16, 4), _batches(DIGITS_TEST, 32, 4)


@pytest.fixture(scope="module")
def bert():
    pytest.importorskip("transformers")
    from models.transformer_zoo import build, example_feeds

    path = build("bert", "torchscript")
    original = onnx.load(str(path))
    pruned = prune_model(str(path), PruneOptions(heads=0.5, mlp=0.5)).model
    return original, pruned, [example_feeds("bert")]


def _outputs(src, feeds):
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if isinstance(src, onnx.ModelProto):
        src = src.SerializeToString()
    sess = ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])
    return [sess.run(None, f) for f in feeds]


def _check_ort_matches(stages, feeds):
    """The .ort loads and gives the last ONNX stage's outputs (float tolerance)."""
    onnx_stage = [s for s in stages if s.model is not None][-1]
    ort_stage = stages[-1]
    assert ort_stage.name == "ort" and ort_stage.suffix == ".ort"
    assert ort_stage.model is None and ort_stage.data[4:8] == b"ORTM"  # flatbuffer identifier
    assert ort_stage.bytes == len(ort_stage.data)
    want, got = _outputs(onnx_stage.model, feeds), _outputs(ort_stage.data, feeds)
    for a, b in zip(want, got, strict=True):
        for x, y in zip(a, b, strict=True):
            np.testing.assert_allclose(y, x, rtol=1e-5, atol=1e-5)


def test_nothing_asked_is_empty(digits):
    original, pruned, _, check = digits
    assert build_stages(pruned, original, optimize=False, check_feeds=check) == []


def test_static_without_calibration_is_usage_error(digits):
    original, pruned, _, check = digits
    with pytest.raises(UsageError, match=r"--quantize static needs calibration data \(--calib\)"):
        build_stages(pruned, original, optimize=False, quantize="static", check_feeds=check)


def test_digits_optimize_dynamic_ort(digits):
    original, pruned, _, check = digits
    stages = build_stages(pruned, original, optimize=True, quantize="dynamic", emit="ort",
                          check_feeds=check)  # fmt: skip
    assert [s.name for s in stages] == ["optimized", "quantized", "ort"]
    opt, quant, _ = stages
    assert not is_transformer(original)
    assert "extended" in opt.note
    assert opt.fusions.get("FusedConv", 0) >= 1  # Conv+Relu fused by ORT's EXTENDED level
    assert len(opt.model.graph.node) < len(pruned.graph.node)
    assert opt.quality["mean_cosine"] > 1 - 1e-6 and opt.quality["max_abs_diff"] < 1e-4
    assert opt.quality["samples"] == sum(len(f["input"]) for f in check)
    ops = {n.op_type for n in quant.model.graph.node}
    assert ops & {"ConvInteger", "MatMulInteger", "DynamicQuantizeLinear"}
    assert quant.bytes < pruned.ByteSize() / 2  # int8 weights
    assert quant.quality["mean_cosine"] > DIGITS_COSINE
    _check_ort_matches(stages, check)
    json.dumps([s.to_dict() for s in stages])  # JSON-able, no model bytes
    assert "model" not in stages[0].to_dict() and "data" not in stages[2].to_dict()


def test_digits_static_qdq_per_channel(digits):
    original, pruned, calib, check = digits
    (quant,) = build_stages(pruned, original, optimize=False, quantize="static",
                            calib_feeds=calib, check_feeds=check)  # fmt: skip
    assert "QDQ" in quant.note and "per-channel" in quant.note
    ops = Counter(n.op_type for n in quant.model.graph.node)
    assert ops["QuantizeLinear"] > 0 and ops["DequantizeLinear"] > 0
    # per-channel: some weight's DequantizeLinear has a vector scale
    inits = {i.name: i for i in quant.model.graph.initializer}
    scales = [inits[n.input[1]] for n in quant.model.graph.node
              if n.op_type == "DequantizeLinear" and n.input[1] in inits]  # fmt: skip
    assert any(len(s.dims) == 1 and s.dims[0] > 1 for s in scales)
    assert quant.quality["mean_cosine"] > DIGITS_COSINE


def test_bert_optimized_keeps_every_fusion(bert):
    original, pruned, feeds = bert
    before = (original.SerializeToString(), pruned.SerializeToString())
    (opt,) = build_stages(pruned, original, optimize=True, check_feeds=feeds)
    assert (original.SerializeToString(), pruned.SerializeToString()) == before  # untouched
    assert opt.note == "transformer optimizer (bert)"
    # the original optimized the same way, independently of build_stages
    with tempfile.TemporaryDirectory() as tmp:
        ref, _ = emit._optimize(original, tmp, "ref", True, "bert")
    want = fused_ops(ref, original)
    assert want.get("Attention") == 2 and want.get("SkipLayerNormalization") == 4
    assert opt.fusions == want
    assert len(opt.model.graph.node) <= len(ref.graph.node)
    heads = [a.i for n in opt.model.graph.node if n.op_type == "Attention"
             for a in n.attribute if a.name == "num_heads"]  # fmt: skip
    assert heads == [2, 2]  # 4 heads pruned to 2 in each layer
    assert opt.quality["mean_cosine"] > 1 - 1e-6 and opt.quality["max_abs_diff"] < 1e-4


def test_head_counts_pinned_per_layer(bert):
    _, pruned, _ = bert
    _, pinned = emit.pin_head_counts(pruned)
    assert pinned == [2, 2, 2, 2, 2, 2]  # Q, K, V of each of the two layers
    assert emit.pin_head_counts(pruned)[0] is not pruned  # a copy: the input is untouched
    assert all(not i.name.endswith("__graphprune_heads") for i in pruned.graph.initializer)


@pytest.mark.parametrize("how", ["dynamic", "static"])
def test_bert_quantized_and_ort(bert, how):
    original, pruned, feeds = bert
    stages = build_stages(pruned, original, optimize=True, quantize=how, emit="ort",
                          calib_feeds=feeds, check_feeds=feeds)  # fmt: skip
    opt, quant, _ = stages
    assert quant.bytes < opt.bytes
    assert quant.quality["mean_cosine"] > BERT_COSINE
    assert np.isfinite(quant.quality["max_abs_diff"])
    _check_ort_matches(stages, feeds)


def test_lost_fusion_is_rewrite_error(bert, monkeypatch):
    """The pruned model optimized without its head counts pinned (as the optimizer sees a
    torch export) loses both Attention fusions the original gets."""
    original, pruned, feeds = bert
    real = emit.pin_head_counts

    def pin_original_only(model):
        return real(model) if model is original else (model, [])

    monkeypatch.setattr(emit, "pin_head_counts", pin_original_only)
    with pytest.raises(RewriteError) as e:
        build_stages(pruned, original, optimize=True, check_feeds=feeds)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("stage optimized:")
    assert "Attention 2->0" in msg


def test_stage_that_cannot_load_names_it(digits, monkeypatch):
    original, pruned, _, check = digits

    def broken(model, tmp):
        return Stage("ort", None, b"not an ort file", ".ort", 15)

    monkeypatch.setattr(emit, "_ort_stage", broken)
    with pytest.raises(RewriteError, match=r"^stage ort: ONNX Runtime cannot load it") as e:
        build_stages(pruned, original, optimize=False, emit="ort", check_feeds=check)
    assert "\n" not in str(e.value)


def test_no_files_left_behind(digits, tmp_path, monkeypatch):
    original, pruned, calib, check = digits
    (tmp_path / "tmp").mkdir()
    (tmp_path / "cwd").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    monkeypatch.chdir(tmp_path / "cwd")
    stages = build_stages(pruned, original, optimize=True, quantize="static", emit="ort",
                          calib_feeds=calib, check_feeds=check)  # fmt: skip
    assert len(stages) == 3
    assert sorted(tmp_path.rglob("*")) == [tmp_path / "cwd", tmp_path / "tmp"]


def test_symbolic_shape_leftovers_stay_in_tmp(digits, tmp_path, monkeypatch):
    """quant_pre_process on ORT's FusedConv graph: symbolic shape inference cannot size it
    and saves sym_shape_infer_temp.onnx (+ .data) into the working directory."""
    original, pruned, calib, check = digits
    (opt,) = build_stages(pruned, original, optimize=True, check_feeds=check)
    monkeypatch.chdir(tmp_path)
    with tempfile.TemporaryDirectory() as tmp, contextlib.suppress(Exception):
        emit._quantized_stage(opt.model, "static", calib, tmp)
    assert list(tmp_path.iterdir()) == []


def test_tools_are_quiet(bert, capfd, caplog):
    """The optimizer warns ("Input hidden size ... is not same") and prints; the quantizer
    logs: none of it reaches stdout/stderr or a log record above DEBUG."""
    original, pruned, feeds = bert
    with caplog.at_level("INFO"):
        build_stages(pruned, original, optimize=True, quantize="static", emit="ort",
                     calib_feeds=feeds, check_feeds=feeds)  # fmt: skip
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    assert all(r.name.startswith("graphprune") for r in caplog.records)


@pytest.mark.parametrize("global_rank", [False, True])
def test_dynamic_bert_keeps_attention(global_rank):
    """Dynamic-shape export (the Q shape is a Concat) and, with --global, layers pruned to
    different head counts: each layer's Attention is still fused, with its own count."""
    pytest.importorskip("transformers")
    from models.transformer_zoo import build, example_feeds

    path = build("bert", "torchscript", dynamic=True)
    original = onnx.load(str(path))
    opts = PruneOptions(heads=0.5, mlp=0.5, global_rank=global_rank)
    pruned = prune_model(str(path), opts).model
    feed = example_feeds("bert")
    short = {k: v[:1, :8] for k, v in feed.items()}  # another batch and sequence length
    (opt,) = build_stages(pruned, original, optimize=True, check_feeds=[feed, short])
    assert opt.fusions["Attention"] == 2 and opt.fusions["EmbedLayerNormalization"] == 1
    heads = [a.i for n in opt.model.graph.node if n.op_type == "Attention"
             for a in n.attribute if a.name == "num_heads"]  # fmt: skip
    assert sum(heads) == 4 and all(h >= 1 for h in heads)
    assert heads == ([1, 3] if global_rank else [2, 2])  # global ranking: uneven layers
    assert opt.quality["samples"] == 3 and opt.quality["max_abs_diff"] < 1e-4
