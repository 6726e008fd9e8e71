"""The scale benchmark's LLaMA-shaped generator (models/llama_scale.py): weights streamed to
external data at aligned offsets, and a model graphprune reads as LLaMA (a head group of KV
heads and a SwiGLU neuron group per layer) and prunes with exact parity, fp32 and fp16."""

import json

import numpy as np
import onnx
import pytest

from graphprune.prune import analyze_model
from models.llama_scale import ALIGN, CONFIGS, ExternalWriter, build, build_at, write_calib
from pruning_checks import prune_and_check, run

TINY = CONFIGS["tiny"]


@pytest.fixture(scope="module", params=["fp32", "fp16"])
def tiny(request, tmp_path_factory):
    """The tiny config with every tensor of 4 KiB or more in external data."""
    path = tmp_path_factory.mktemp(f"scale-{request.param}") / "model.onnx"
    return build_at(path, TINY, request.param, external_min=4096), request.param


def _weight_shapes(model: onnx.ModelProto) -> dict[str, tuple]:
    return {
        t.name: tuple(t.dims)
        for t in model.graph.initializer
        if t.name.startswith("model.layers.0.") and t.name.endswith(".weight")
    }


def test_weights_are_external_and_the_model_runs(tiny):
    path, dtype = tiny
    bare = onnx.load(str(path), load_external_data=False)
    external = [t for t in bare.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    assert {t.name for t in external} >= {"model.embed_tokens.weight", "lm_head.weight"}
    assert all(e.value == "model.onnx.data" for t in external for e in t.external_data[:1])
    onnx.checker.check_model(str(path), full_check=True)
    ids = np.arange(10, dtype=np.int64).reshape(2, 5)
    (logits,) = run(onnx.load(str(path)), {"input_ids": ids})
    assert logits.shape == (2, 5, TINY.vocab) and logits.dtype == np.dtype(
        dtype.replace("fp", "float")
    )
    assert np.isfinite(logits).all() and np.abs(logits).max() > 0
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["params"] == TINY.params()
    assert meta["weight_bytes"] == TINY.params() * (4 if dtype == "fp32" else 2)


def test_analysis_finds_gqa_heads_and_swiglu_neurons(tiny):
    analysis = analyze_model(onnx.load(str(tiny[0])))
    kinds = sorted((g.kind, g.units, g.unit_width) for g in analysis.prunable)
    group = (TINY.heads // TINY.kv_heads) * TINY.head_dim  # a KV head with its query heads
    heads = [("head", TINY.kv_heads, group)] * TINY.layers
    assert kinds == heads + [("neuron", TINY.intermediate, 1)] * TINY.layers
    mlp = next(g for g in analysis.prunable if g.kind == "neuron")
    assert len({d.tensor for d in mlp.carriers()}) == 3  # gate, up, down


def test_prune_heads_and_mlp_with_exact_parity(tiny):
    result = prune_and_check(str(tiny[0]), 0.0, heads=0.5, mlp=0.5)
    h, hd, kv = TINY.hidden, TINY.head_dim, TINY.kv_heads // 2
    q, ff = kv * (TINY.heads // TINY.kv_heads) * hd, TINY.intermediate // 2
    p = "model.layers.0."
    assert _weight_shapes(result.model) == {
        p + "input_layernorm.weight": (h,),
        p + "self_attn.q_proj.weight": (h, q),
        p + "self_attn.k_proj.weight": (h, kv * hd),
        p + "self_attn.v_proj.weight": (h, kv * hd),
        p + "self_attn.o_proj.weight": (q, h),
        p + "post_attention_layernorm.weight": (h,),
        p + "mlp.gate_proj.weight": (h, ff),
        p + "mlp.up_proj.weight": (h, ff),
        p + "mlp.down_proj.weight": (ff, h),
    }


def test_big_tensors_start_at_aligned_offsets(tmp_path):
    with ExternalWriter(tmp_path / "w.data") as w:
        small = w.tensor("small", np.ones(7, np.float32))
        big = [w.tensor(f"big{i}", np.full((1 << 18) + i, i, np.float32)) for i in range(3)]
    assert small.data_location == onnx.TensorProto.DEFAULT and small.raw_data
    data = (tmp_path / "w.data").read_bytes()
    for i, t in enumerate(big):
        ext = {e.key: e.value for e in t.external_data}
        offset, length = int(ext["offset"]), int(ext["length"])
        assert offset % ALIGN == 0 and length == ((1 << 18) + i) * 4
        assert (np.frombuffer(data[offset : offset + length], np.float32) == i).all()


def test_build_caches_and_rebuilds_on_a_changed_config(tmp_path):
    path = build("tiny", "fp16", cache_dir=tmp_path)
    assert path == tmp_path / "scale" / "tiny-fp16" / "model.onnx"
    stamp = path.stat().st_mtime_ns
    assert build("tiny", "fp16", cache_dir=tmp_path) == path and path.stat().st_mtime_ns == stamp
    meta = json.loads(path.with_suffix(".json").read_text())
    path.with_suffix(".json").write_text(json.dumps({**meta, "hash": "stale"}))
    assert build("tiny", "fp16", cache_dir=tmp_path) == path
    assert json.loads(path.with_suffix(".json").read_text())["hash"] == meta["hash"]


def test_calibration_ids(tmp_path):
    calib = np.load(write_calib(tmp_path / "c.npz", TINY.vocab, samples=3, seq=16))
    ids = calib["input_ids"]
    assert ids.shape == (3, 16) and ids.dtype == np.int64 and ids.max() < TINY.vocab
