"""Evaluation / calibration data files: clear errors, fixed batch dims respected."""

import numpy as np
import onnx
import pytest

from graphprune.errors import CalibrationError
from graphprune.evaluate import accuracy, load_npz, model_batches, run_outputs
from graphs import G


def _model(batch):
    g = G()
    x = g.input("x", [batch, 4])
    return g.model([g.op("Gemm", [x, g.w("w", 4, 3)], "y")])


def test_wrong_input_name_is_a_clear_error(tmp_path):
    np.savez(tmp_path / "d.npz", nope=np.zeros((5, 4), np.float32))
    with pytest.raises(CalibrationError, match="no array for graph input"):
        load_npz(tmp_path / "d.npz", _model("N"))


def test_zero_samples_is_a_clear_error(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.zeros((0, 4), np.float32))
    with pytest.raises(CalibrationError, match="x is empty"):
        load_npz(tmp_path / "d.npz", _model("N"))


def test_labels_length_must_match(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.zeros((5, 4), np.float32), labels=np.zeros(4))
    with pytest.raises(CalibrationError, match="labels"):
        load_npz(tmp_path / "d.npz", _model("N"))


def test_fixed_batch_is_fed_in_chunks_of_that_size():
    feeds = {"x": np.random.default_rng(0).standard_normal((10, 4)).astype(np.float32)}
    chunks = model_batches(_model(4), feeds)
    assert [len(c["x"]) for c in chunks] == [4, 4]  # the short tail cannot be fed
    assert [len(c["x"]) for c in model_batches(_model("N"), feeds, size=4)] == [4, 4, 2]
    with pytest.raises(CalibrationError, match="fixed batch size 16"):
        model_batches(_model(16), feeds)


def test_accuracy_scores_every_sample_of_a_dynamic_batch():
    m = _model("N")
    x = np.random.default_rng(1).standard_normal((130, 4)).astype(np.float32)
    w = onnx.numpy_helper.to_array(m.graph.initializer[0])
    labels = (x @ w).argmax(1)
    out = run_outputs(m, {"x": x})
    assert len(out) == 130 and accuracy(out, labels) == 1.0
