"""Weights on disk (graphprune.weights): a model with external data is pruned with every
weight memory-mapped, the pruned weights spilled as they are made, the parity reference
sharing the original's weights, and the output streamed into an aligned ``.data`` file.
The result is the same model, bit for bit, as pruning the model held in memory."""

import hashlib

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from graphprune import weights
from graphprune.graph import load_model, save_model_atomic
from graphprune.passes.mask_units import masked_reference
from graphprune.passes.removal import Removal
from graphprune.plan import removed_labels
from graphprune.prune import PruneOptions, prune_model
from pruning_checks import assert_structure

pytest.importorskip("transformers")
from models.transformer_zoo import build  # noqa: E402

OPTS = PruneOptions(ratios={"head": 0.5, "neuron": 0.5})


@pytest.fixture
def small_weights_mapped(monkeypatch):
    """The zoo's llama has small weights: map (and spill) everything over 1 KiB."""
    monkeypatch.setattr(weights, "INLINE_BYTES", 1024)
    monkeypatch.setattr(weights, "SPILL_BYTES", 1024)


@pytest.fixture(scope="module")
def llama_external(tmp_path_factory):
    """The zoo's llama saved with its weights in external data."""
    model = onnx.load(build("llama", "torchscript", True))
    path = tmp_path_factory.mktemp("ext") / "llama.onnx"
    onnx.save_model(
        model, str(path), save_as_external_data=True, location="llama.data", size_threshold=1024
    )
    return path


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _run(path, feed):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, feed)


def test_mapped_prune_is_the_in_memory_prune(llama_external, small_weights_mapped, tmp_path):
    data = llama_external.with_name("llama.data")
    before = _digest(data)
    mapped = prune_model(llama_external, OPTS)
    assert weights.is_mapped(mapped.model)
    # structure as planned, parity exact against the masked original
    assert assert_structure(mapped) > 0
    assert mapped.parity.status == "exact"
    # nothing large is held in the proto: every weight is on disk
    held = [t.name for t in mapped.model.graph.initializer if len(t.raw_data) >= 1024]
    assert held == []
    out = tmp_path / "pruned.onnx"
    save_model_atomic(mapped.model, out)
    saved = onnx.load(str(out), load_external_data=False)
    offsets = [
        int(e.value) for t in saved.graph.initializer for e in t.external_data if e.key == "offset"
    ]
    assert offsets and all(o % weights.ALIGN == 0 for o in offsets)
    onnx.checker.check_model(str(out), full_check=True)

    inline = prune_model(onnx.load(str(llama_external)), OPTS)
    assert mapped.plan.to_json() == inline.plan.to_json()
    full = onnx.load(str(out))
    got = {t.name: onnx.numpy_helper.to_array(t) for t in full.graph.initializer}
    want = {t.name: onnx.numpy_helper.to_array(t) for t in inline.model.graph.initializer}
    assert got.keys() == want.keys()
    for name, value in want.items():
        assert got[name].dtype == value.dtype and np.array_equal(got[name], value), name
    feed = {
        "input_ids": np.arange(8, dtype=np.int64)[None] % 50,
        "attention_mask": np.ones((1, 8), dtype=np.int64),
    }
    ref = ort.InferenceSession(inline.model.SerializeToString(), providers=["CPUExecutionProvider"])
    for a, b in zip(_run(out, feed), ref.run(None, feed), strict=True):
        assert np.array_equal(a, b)
    assert _digest(data) == before  # the input's weights were never written


def test_reference_shares_the_original_weights(llama_external, small_weights_mapped):
    """Removed units are masked on activations, so the masked reference names the input's
    weights where they are and holds no zeroed copy of any of them."""
    model = load_model(llama_external)
    result = prune_model(model, OPTS, dry_run=True)
    from graphprune.analysis.groups import analyze
    from graphprune.graph import import_graph, infer_shapes

    infer_shapes(model)
    analysis = analyze(import_graph(model, inferred=True), 18, (), "kv")
    removal = Removal(analysis, removed_labels(result.plan, analysis))
    ref = masked_reference(removal)
    large = [t for t in ref.graph.initializer if int(np.prod(t.dims)) * 4 >= 1024]
    assert large and all(weights.is_external(t) for t in large)
    data = str(llama_external.with_name("llama.data").resolve())
    assert {weights._info(t)["location"] for t in large} == {data}
    masks = [n for n in ref.graph.node if n.op_type == "Mul" and "_masked" in n.output[0]]
    assert masks  # the activations carry the masks


def test_missing_external_data_is_a_load_error(tmp_path):
    model = onnx.load(build("llama", "torchscript", True))
    path = tmp_path / "m.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, location="m.data")
    (tmp_path / "m.data").unlink()
    from graphprune.errors import ModelLoadError

    with pytest.raises(ModelLoadError, match="missing"):
        load_model(path)


def test_dry_run_estimates_the_peak_memory(llama_external, small_weights_mapped, tmp_path, capsys):
    """``--dry-run`` says what a run would hold: for weights on disk, far less than the
    weights (only the largest tensor in flight); held in memory, several times them."""
    import json

    from graphprune.cli import main

    report = tmp_path / "r.json"
    assert (
        main(["prune", str(llama_external), "--dry-run", "--heads", "0.5", "--json", str(report)])
        == 0
    )
    assert "estimated peak" in capsys.readouterr().out
    mem = json.loads(report.read_text())["memory_estimate"]
    assert mem["on_disk"] and mem["held"] < mem["weights"]
    assert mem["peak"] == mem["held"] + mem["calibration"] + mem["runtime"]
    inline = prune_model(onnx.load(str(llama_external)), OPTS, dry_run=True).memory
    assert not inline["on_disk"] and inline["held"] > 3 * inline["weights"]
