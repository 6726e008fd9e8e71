"""Calibration sharded over Ray: the batches are split into contiguous shards, each Ray
task runs ``graphprune.calibration.capture`` on its shard, and the partial statistics are
summed here. ``ChannelStats`` hold streaming sums (count, total, squares, absolute, Gram),
so the sum of the shards' statistics is the statistics of all the batches, up to float
rounding; the shards are summed in shard order, so a run gives the same numbers every time
on a cluster of the same size.

The workers get the model as its serialized proto (put in Ray's object store once). A
proto whose weights stay on disk (``graphprune.weights``) names their files by absolute
path: a worker maps them from there, so no weight is copied; on a real cluster those files
must be on shared storage at the same path.
"""

from __future__ import annotations

import os
from dataclasses import fields, is_dataclass
from pathlib import Path

import numpy as np
import onnx

from . import cluster, weights
from .calibration import Activations, _report, capture


def shard_bounds(batches: int, shards: int) -> list[tuple[int, int]]:
    """``shards`` contiguous ``[start, stop)`` ranges covering ``batches``, sizes differing
    by at most one (the first ones larger)."""
    size, extra = divmod(batches, shards)
    out, start = [], 0
    for k in range(shards):
        stop = start + size + (k < extra)
        out.append((start, stop))
        start = stop
    return out


def capture_sharded(
    model: onnx.ModelProto, feeds: list[dict], targets, gram: bool | dict = False, base_dir=None
) -> Activations:
    """``calibration.capture(model, feeds, targets, gram)`` with the feeds split over the
    cluster's workers (one shard per worker, at least 2, at most one per batch). External
    data that is not mapped by ``graphprune.weights`` is read from ``base_dir`` (default:
    the working directory)."""
    shards = min(len(feeds), max(2, cluster.workers()))
    bounds = shard_bounds(len(feeds), shards)
    items = [feeds[a:b] for a, b in bounds]
    folder = weights.folder_of(model) or base_dir or os.getcwd()
    base = str(Path(folder).resolve())
    parts: list = [None] * shards
    done = 0
    targets = sorted(set(targets))
    payload = model.SerializeToString()
    for k, part, error in cluster.as_completed(_capture_shard, items, payload, base, targets, gram):
        if error is not None:
            raise error
        parts[k] = part
        done += bounds[k][1] - bounds[k][0]
        _report(done, len(feeds))
    return merge(parts)


def _capture_shard(feeds: list[dict], payload: bytes, base: str, targets, gram: bool):
    """One shard, in a Ray worker: the model rebuilt from its bytes (weights on disk are
    named by absolute path; other external data is read from ``base``), captured as is."""
    model = onnx.load_from_string(payload)
    weights.open_external(model, Path(base))
    return capture(model, feeds, targets, gram)


def merge(parts: list[Activations]) -> Activations:
    """The shards' statistics summed, in the order given (the float sums depend on it)."""
    out = Activations()
    for part in parts:
        _add(out, part)
    return out


def _add(into, part):
    """``into`` += ``part`` for the streaming sums of a statistics object: numbers and
    arrays are summed, dicts merged key by key, dataclasses field by field; anything else
    (a flag, a dtype name) must agree. Returns ``into`` (or ``part`` when ``into`` is
    None)."""
    if part is None:
        return into
    if into is None:
        return _own(part)
    if isinstance(into, np.ndarray) or (
        isinstance(into, int | float | np.number) and not isinstance(into, bool)
    ):
        return into + part
    if isinstance(into, dict):
        for key, value in part.items():
            into[key] = _add(into.get(key), value)
        return into
    if is_dataclass(into):
        for f in fields(into):
            setattr(into, f.name, _add(getattr(into, f.name), getattr(part, f.name)))
        return into
    if into != part:
        raise ValueError(f"calibration shards disagree: {into!r} != {part!r}")
    return into


def _own(value):
    """A writable copy where Ray handed back a read-only (zero-copy) array."""
    if isinstance(value, np.ndarray):
        return value if value.flags.writeable else value.copy()
    if isinstance(value, dict):
        return {k: _own(v) for k, v in value.items()}
    if is_dataclass(value) and not isinstance(value, type):
        for f in fields(value):
            setattr(value, f.name, _own(getattr(value, f.name)))
    return value
