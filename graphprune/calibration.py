"""Calibration data and activation statistics captured through ONNX Runtime.

Sources: an ``.npz`` (one array per graph input, first axis = samples), a directory of
``.npz`` files, or (Python API) any iterable of feed dicts. Models with a fixed batch
dimension are fed in chunks of that size. Statistics are streamed per channel (sum, sum of
squares, sum of absolute values, count), so memory stays bounded by the channel counts.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from .errors import CalibrationError
from .evaluate import check_arrays, load_npz, model_batches
from .progress import advance
from .validate import session

log = logging.getLogger(__name__)


def calibration_feeds(source, model: onnx.ModelProto, batch: int = 16) -> list[dict]:
    """Feed dicts for ``model`` from a path (.npz file or directory of them), a dict of
    arrays (input name -> array, first axis = samples) or an iterable of feed dicts."""
    if isinstance(source, dict):
        arrays, _ = check_arrays({k: np.asarray(v) for k, v in source.items()}, model, "calib")
        return model_batches(model, arrays, size=batch)
    if isinstance(source, str | Path):
        p = Path(source)
        files = sorted(p.glob("*.npz")) if p.is_dir() else [p]
        if not files:
            raise CalibrationError(f"{p}: no .npz files")
        feeds = []
        for f in files:
            arrays, _ = load_npz(f, model)
            feeds += model_batches(model, arrays, size=batch)
        return feeds
    feeds = [dict(f) for f in source] if isinstance(source, Iterable) else []
    if not feeds:
        raise CalibrationError("calibration data holds no samples")
    for k, f in enumerate(feeds):
        check_arrays({n: np.asarray(v) for n, v in f.items()}, model, f"calib feed {k}")
    return feeds


def channels_first(x: np.ndarray, axis: int) -> np.ndarray:
    """``x`` as float64 (channels on ``axis``, positions) = (C, everything else)."""
    return np.moveaxis(np.asarray(x, dtype=np.float64), axis, 0).reshape(x.shape[axis], -1)


@dataclass
class ChannelStats:
    """Streaming per-channel moments of one activation axis."""

    count: int = 0
    total: np.ndarray | None = None
    squares: np.ndarray | None = None
    absolute: np.ndarray | None = None
    gram: np.ndarray | None = None  # Σ x xᵀ over samples (channels x channels), if asked

    def add(self, x: np.ndarray, axis: int, gram: bool = False) -> None:
        self.add_channels(channels_first(x, axis), gram)

    def add_channels(self, x: np.ndarray, gram: bool = False) -> None:
        """Add ``x`` of shape (channels, positions)."""
        if gram:
            g = x @ x.T
            self.gram = g if self.gram is None else self.gram + g
        parts = (x.sum(1), np.einsum("ij,ij->i", x, x), np.abs(x).sum(1))
        if self.total is None:
            self.total, self.squares, self.absolute = parts
        else:
            self.total += parts[0]
            self.squares += parts[1]
            self.absolute += parts[2]
        self.count += x.shape[1]

    @property
    def mean(self) -> np.ndarray:
        return self.total / self.count

    @property
    def mean_square(self) -> np.ndarray:
        return self.squares / self.count

    @property
    def variance(self) -> np.ndarray:
        return np.maximum(self.mean_square - self.mean**2, 0.0)

    @property
    def mean_abs(self) -> np.ndarray:
        return self.absolute / self.count

    @property
    def covariance(self) -> np.ndarray:
        return self.gram / self.count - np.outer(self.mean, self.mean)


@dataclass
class Activations:
    """Statistics per ``(tensor name, axis)``, and how many samples produced them."""

    stats: dict[tuple[str, int], ChannelStats] = field(default_factory=dict)
    samples: int = 0

    def get(self, name: str, axis: int) -> ChannelStats | None:
        return self.stats.get((name, axis))


def _probe_session(model: onnx.ModelProto, names: list[str]):
    """An ORT session (optimisations off) on a copy of ``model`` that outputs just the
    tensors ``names`` and runs only the nodes they need (every graph input stays, so any
    feed of the model fits)."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    _truncate(probe.graph, names)
    probe.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names)
    return session(probe)


def _truncate(graph: onnx.GraphProto, names: list[str]) -> None:
    """Keep only the nodes (and initializers) that ``names`` depend on; no graph outputs."""
    producer = {o: k for k, n in enumerate(graph.node) for o in n.output}
    needed, todo = set(), list(names)
    while todo:
        k = producer.get(todo.pop())
        if k is None or k in needed:
            continue
        needed.add(k)
        node = graph.node[k]
        todo.extend(node.input)
        for attr in node.attribute:  # outer-scope names read inside subgraphs
            for sub in [attr.g, *attr.graphs]:
                todo.extend(i for n in sub.node for i in n.input)
    kept = [graph.node[k] for k in sorted(needed)]
    used = {i for n in kept for i in n.input} | set(names) | {i.name for i in graph.input}
    inits = [t for t in graph.initializer if t.name in used]
    del graph.node[:], graph.output[:], graph.initializer[:]
    graph.node.extend(kept)
    graph.initializer.extend(inits)


def _report(done: int, total: int) -> None:
    advance("calibration", done, total)


def capture(model: onnx.ModelProto, feeds: list[dict], targets, gram: bool = False) -> Activations:
    """Run ``model`` on every feed (ORT, optimisations off so intermediates exist) and stream
    per-channel statistics of each ``(tensor name, axis)`` in ``targets`` (with ``gram``,
    also the channel Gram matrix that least-squares reconstruction needs); one pass serves
    every target."""
    targets = sorted(set(targets))
    names = sorted({n for n, _ in targets})
    sess = _probe_session(model, names)
    out = Activations()
    for k, feed in enumerate(feeds):
        try:
            values = dict(zip(names, sess.run(names, feed), strict=True))
        except Exception as e:
            raise CalibrationError(f"calibration batch {k}: the model cannot run it ({e})") from e
        for name, axis in targets:
            out.stats.setdefault((name, axis), ChannelStats()).add(values[name], axis, gram)
        out.samples += len(next(iter(feed.values())))
        log.info("calibration: batch %d/%d", k + 1, len(feeds))
        _report(k + 1, len(feeds))
    return out


@dataclass
class JointStats:
    """Streaming moments of one activation axis seen in two models on the same inputs:
    ``x`` in the model being rebuilt (with its Gram matrix), ``y`` in the original (same
    channel count), and their cross moments."""

    x: ChannelStats = field(default_factory=ChannelStats)
    sum_y: np.ndarray | None = None
    gram_xy: np.ndarray | None = None  # Σ x yᵀ

    def add(self, x: np.ndarray, y: np.ndarray, axis: int) -> None:
        x, y = channels_first(x, axis), channels_first(y, axis)
        self.x.add_channels(x, gram=True)
        sum_y, cross = y.sum(1), x @ y.T
        if self.sum_y is None:
            self.sum_y, self.gram_xy = sum_y, cross
        else:
            self.sum_y += sum_y
            self.gram_xy += cross

    @property
    def mean_y(self) -> np.ndarray:
        return self.sum_y / self.x.count

    @property
    def cov_xy(self) -> np.ndarray:
        return self.gram_xy / self.x.count - np.outer(self.x.mean, self.mean_y)


def capture_joint(
    current: onnx.ModelProto, original: onnx.ModelProto, feeds: list[dict], targets
) -> dict[tuple[str, int], JointStats]:
    """Run both models on every feed and stream, per ``(tensor name, axis)`` present in both,
    the moments tying the current model's activation to the original's (``JointStats``)."""
    targets = sorted(set(targets))
    names = sorted({n for n, _ in targets})
    sessions = (_probe_session(current, names), _probe_session(original, names))
    out: dict[tuple[str, int], JointStats] = {}
    for k, feed in enumerate(feeds):
        try:
            cur, orig = (dict(zip(names, s.run(names, feed), strict=True)) for s in sessions)
        except Exception as e:
            raise CalibrationError(f"calibration batch {k}: the model cannot run it ({e})") from e
        for name, axis in targets:
            out.setdefault((name, axis), JointStats()).add(cur[name], orig[name], axis)
    return out


def capture_rows(
    current: onnx.ModelProto,
    original: onnx.ModelProto,
    feeds: list[dict],
    names: tuple[list[str], list[str]],
    limit: int,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Raw rows (features on the last axis) of ``names[0]`` in ``current`` and ``names[1]``
    in ``original``, both run on every feed; the same positions in every tensor. At most
    about ``limit`` rows are kept: when more arrive, every other row is dropped and the
    stride doubles, so the rows stay spread over all the batches and memory stays bounded."""
    sessions = (_probe_session(current, names[0]), _probe_session(original, names[1]))
    rows: list[dict[str, list[np.ndarray]]] = [{n: [] for n in ns} for ns in names]
    stride, seen, kept = 1, 0, 0  # rows kept: global positions that are multiples of stride
    for k, feed in enumerate(feeds):
        try:
            values = [
                dict(zip(ns, s.run(ns, feed), strict=True))
                for s, ns in zip(sessions, names, strict=True)
            ]
        except Exception as e:
            raise CalibrationError(f"calibration batch {k}: the model cannot run it ({e})") from e
        flats = [{n: v.reshape(-1, v.shape[-1]) for n, v in side.items()} for side in values]
        counts = {len(f) for side in flats for f in side.values()}
        if len(counts) != 1:
            raise CalibrationError(f"calibration batch {k}: tensors differ in positions")
        count, first = counts.pop(), (-seen) % stride
        for side, flat in zip(rows, flats, strict=True):
            for n, f in flat.items():
                side[n].append(f[first::stride].astype(np.float32))
        kept += len(range(first, count, stride))
        seen += count
        if kept > 2 * limit:
            for side in rows:
                for n, parts in side.items():
                    side[n] = [np.concatenate(parts)[::2]]
            kept = (kept + 1) // 2
            stride *= 2
    return tuple({n: np.concatenate(p) for n, p in side.items()} for side in rows)


def mean_cosines(model: onnx.ModelProto, feeds: list[dict], pairs) -> list[float]:
    """For each ``(tensor a, tensor b)`` in ``pairs`` (same shape, features on the last
    axis), the mean over positions and samples of cos(a, b)."""
    names = sorted({n for pair in pairs for n in pair})
    sess = _probe_session(model, names)
    sums, counts = np.zeros(len(pairs)), np.zeros(len(pairs))
    for feed in feeds:
        values = dict(zip(names, sess.run(names, feed), strict=True))
        for k, (a, b) in enumerate(pairs):
            x = values[a].reshape(-1, values[a].shape[-1]).astype(np.float64)
            y = values[b].reshape(-1, values[b].shape[-1]).astype(np.float64)
            norms = np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1)
            cos = np.sum(x * y, axis=1) / np.maximum(norms, 1e-12)
            sums[k] += cos.sum()
            counts[k] += len(cos)
    return list(sums / np.maximum(counts, 1))
