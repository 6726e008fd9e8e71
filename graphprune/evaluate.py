"""Evaluation data: an ``.npz`` with one array per graph input (first axis = samples) and an
optional ``labels`` array; accuracy is argmax of the first output against the labels."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import onnx

from .errors import CalibrationError
from .validate import session


def load_npz(path, model: onnx.ModelProto) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    p = Path(path)
    if p.is_dir():
        raise CalibrationError(f"{p}: is a directory, not an .npz file")
    if not p.is_file():
        raise CalibrationError(f"{p}: no such file")
    if not zipfile.is_zipfile(p):
        raise CalibrationError(f"{p}: not an .npz file (numpy's zip of arrays, np.savez)")
    try:
        with np.load(p, allow_pickle=False) as data:  # never unpickle a user's file
            arrays = {k: data[k] for k in data.files}
    except Exception as e:  # zipfile, pickle refusal, truncation: all "not readable"
        msg = " ".join(str(e).split())
        raise CalibrationError(f"{p}: cannot read as .npz ({msg})") from e
    return check_arrays(arrays, model, str(p))


def load_data(source, model: onnx.ModelProto) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """Evaluation data from a path (.npz) or a dict of arrays (input name -> array, first
    axis = samples, optional ``labels``)."""
    if isinstance(source, dict):
        return check_arrays({k: np.asarray(v) for k, v in source.items()}, model, "data")
    return load_npz(source, model)


def check_arrays(arrays: dict, model: onnx.ModelProto, p: str):
    """One array per graph input with the same number of samples, of the input's dtype, rank
    and fixed dims, all finite; and optional labels of the same length. Checked before any
    work, so bad data never reaches ONNX Runtime (or a reconstruction)."""
    init_names = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in init_names]
    missing = [i.name for i in inputs if i.name not in arrays]
    if missing:
        raise CalibrationError(
            f"{p}: no array for graph input(s) {missing}; file has {sorted(arrays)}"
        )
    feeds = {i.name: arrays[i.name] for i in inputs}
    for vi in inputs:
        feeds[vi.name] = _check_input_array(p, vi, feeds[vi.name])
    counts = {len(a) for a in feeds.values() if np.ndim(a) > 0} or {1}  # scalars: per run
    if len(counts) != 1 or 0 in counts:
        raise CalibrationError(
            f"{p}: inputs need the same, non-zero number of samples (got {sorted(counts)})"
        )
    labels = arrays.get("labels")
    if labels is not None:
        labels = np.asarray(labels)
        if labels.ndim == 0 or len(labels) != next(iter(counts)):
            raise CalibrationError(f"{p}: 'labels' length differs from the inputs")
        if labels.dtype.kind not in "iubf":
            raise CalibrationError(f"{p}: 'labels' must be class numbers, got {labels.dtype}")
    return feeds, labels


def _check_input_array(p: str, vi: onnx.ValueInfoProto, a) -> np.ndarray:
    """The array, checked against the input (a float array for a float input of another
    precision, or an integer one for another integer width, is cast; other kinds refused)."""
    a = np.asarray(a)
    name = vi.name
    if a.dtype == object:
        raise CalibrationError(f"{p}: {name} is an object array; give numeric arrays")
    t = vi.type.tensor_type
    want = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type) if t.elem_type else None
    if want is not None and a.dtype != want:
        same_kind = a.dtype.kind == np.dtype(want).kind and a.dtype.kind in "fiu"
        if not same_kind and not (a.dtype.kind in "iu" and np.dtype(want).kind in "iu"):
            raise CalibrationError(f"{p}: {name} is {a.dtype}, the model takes {np.dtype(want)}")
        a = a.astype(want)
    scalar_input = t.HasField("shape") and len(t.shape.dim) == 0
    if (a.ndim == 0 and not scalar_input) or a.size == 0:
        raise CalibrationError(f"{p}: {name} is empty (shape {a.shape})")
    if scalar_input and a.ndim != 0:
        raise CalibrationError(
            f"{p}: {name} is a scalar input (one value for every run), got shape {a.shape}"
        )
    if t.HasField("shape") and not scalar_input:
        dims = t.shape.dim
        if a.ndim != len(dims):
            raise CalibrationError(
                f"{p}: {name} has rank {a.ndim} (shape {a.shape}), the model takes rank "
                f"{len(dims)} (first axis = samples)"
            )
        for k, d in enumerate(dims):
            if k > 0 and d.HasField("dim_value") and d.dim_value > 0 and a.shape[k] != d.dim_value:
                raise CalibrationError(
                    f"{p}: {name} has shape {a.shape}, the model fixes dim {k} at {d.dim_value}"
                )
    if a.dtype.kind in "fc" and not np.isfinite(a).all():
        bad = int(np.count_nonzero(~np.isfinite(a)))
        raise CalibrationError(f"{p}: {name} holds {bad} NaN/Inf values")
    return a


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
    n = max((len(v) for v in feeds.values() if np.ndim(v) > 0), default=1)
    for s in range(0, n, size):
        # a scalar input (a sample rate, a threshold) is the same for every batch
        chunk = {k: v[s : s + size] if np.ndim(v) > 0 else v for k, v in feeds.items()}
        if not exact or min(len(v) for v in chunk.values() if np.ndim(v) > 0) == size:
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
