"""Evaluation data: an ``.npz`` with one array per graph input (first axis = samples) and an
optional ``labels`` array; accuracy is argmax of the first output against the labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from .errors import CalibrationError
from .validate import session


def load_npz(path, model: onnx.ModelProto) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    p = Path(path)
    try:
        with np.load(p, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError) as e:
        raise CalibrationError(f"{p}: cannot read as .npz ({e})") from e
    return check_arrays(arrays, model, str(p))


def load_data(source, model: onnx.ModelProto) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """Evaluation data from a path (.npz) or a dict of arrays (input name -> array, first
    axis = samples, optional ``labels``)."""
    if isinstance(source, dict):
        return check_arrays({k: np.asarray(v) for k, v in source.items()}, model, "data")
    return load_npz(source, model)


def check_arrays(arrays: dict, model: onnx.ModelProto, p: str):
    """One array per graph input with the same number of samples, and optional labels."""
    init_names = {t.name for t in model.graph.initializer}
    inputs = [i.name for i in model.graph.input if i.name not in init_names]
    missing = [n for n in inputs if n not in arrays]
    if missing:
        raise CalibrationError(
            f"{p}: no array for graph input(s) {missing}; file has {sorted(arrays)}"
        )
    feeds = {n: arrays[n] for n in inputs}
    counts = {len(a) for a in feeds.values()}
    if len(counts) != 1 or 0 in counts:
        raise CalibrationError(
            f"{p}: inputs need the same, non-zero number of samples (got {sorted(counts)})"
        )
    labels = arrays.get("labels")
    if labels is not None and len(labels) != counts.pop():
        raise CalibrationError(f"{p}: 'labels' length differs from the inputs")
    return feeds, labels


def fixed_batch(model: onnx.ModelProto) -> int | None:
    """The batch size if the first input has a fixed first axis."""
    for inp in model.graph.input:
        dims = inp.type.tensor_type.shape.dim
        if dims and dims[0].HasField("dim_value"):
            return int(dims[0].dim_value)
        return None
    return None


def batches(feeds: dict[str, np.ndarray], size: int, exact: bool):
    """Chunks of ``size`` samples; with ``exact`` (a fixed batch dim) a short tail is dropped."""
    n = len(next(iter(feeds.values())))
    for s in range(0, n, size):
        chunk = {k: v[s : s + size] for k, v in feeds.items()}
        if not exact or len(next(iter(chunk.values()))) == size:
            yield chunk


def model_batches(model: onnx.ModelProto, feeds: dict[str, np.ndarray], size: int = 64):
    """Feeds cut to the model's fixed batch size, or to ``size`` when the batch is dynamic."""
    fixed = fixed_batch(model)
    chunks = list(batches(feeds, fixed or size, exact=fixed is not None))
    if not chunks:
        raise CalibrationError(f"fewer samples than the model's fixed batch size {fixed}")
    return chunks


def run_outputs(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> np.ndarray:
    """First output over all samples (a fixed batch size drops the short tail)."""
    sess = session(model, optimize=True)
    return np.concatenate([sess.run(None, chunk)[0] for chunk in model_batches(model, feeds)])


def accuracy(outputs: np.ndarray, labels: np.ndarray) -> float:
    """Accuracy of argmax of a model's first output (from ``run_outputs``) on ``labels``."""
    pred = outputs.argmax(-1) if outputs.ndim > 1 else outputs
    return float(np.mean(pred == labels[: len(pred)]))


def output_deviation(original: np.ndarray, pruned: np.ndarray) -> dict:
    """How far the pruned model's first output moved on held-out data (both from
    ``run_outputs``): mean cosine per sample (outputs flattened), max and mean abs diff."""
    a, b = original.astype(np.float64), pruned.astype(np.float64)
    a2, b2 = a.reshape(len(a), -1), b.reshape(len(b), -1)
    norms = np.linalg.norm(a2, axis=1) * np.linalg.norm(b2, axis=1)
    cosine = np.sum(a2 * b2, axis=1) / np.maximum(norms, 1e-12)
    diff = np.abs(a - b)
    return {
        "samples": len(a),
        "mean_cosine": float(cosine.mean()),
        "max_abs_diff": float(diff.max()),
        "mean_abs_diff": float(diff.mean()),
    }
