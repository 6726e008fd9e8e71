"""Sensitivity allocation (``--allocate sensitivity``, after Minitron and OWL): how much each
group may lose is chosen from what removing its units measurably costs, not from scores
alone.

For every free group, its lowest-scored units are removed at a few widths
(``FRACTIONS`` of the group), that group alone, and the calibration samples are run
through ONNX Runtime: the loss is the mean squared change of the model's outputs, centred
per output feature, relative to their variance (knockout's measure, less the shift every
sample shares, which the bias refits repair). A single session serves every
measurement: the model's contraction points are multiplied by masks fed as inputs
(``passes.mask_units.switchable_masks``).

Each group's loss curve (0 at width 0, then the measured points) gives every unit a
rate: the marginal loss of removing it, per unit of what the budget counts (MACs or
parameters; per unit when ratios are asked), made non-decreasing down the group's score
order; past the widest width measured a group loses nothing more. The allocator then
treats the rates as scores: one threshold over all of them (a budget) or per kind
(ratios), which removes units where the loss per MAC is lowest. Losses are assumed to add
across groups, as in the papers."""

from __future__ import annotations

import logging

import numpy as np
import onnx

from .allocate import n_remove
from .passes.mask_units import mask_feeds, switchable_masks
from .progress import advance
from .validate import session

log = logging.getLogger(__name__)

#: the widths each group is measured at, as fractions of its units removed
FRACTIONS = (0.25, 0.5, 0.75, 0.9)
#: calibration samples the measurements run on (whole batches, spread over the data)
SAMPLES = 64


def sample_feeds(feeds: list[dict], samples: int = SAMPLES) -> list[dict]:
    """Whole batches holding at least ``samples`` samples, evenly strided over ``feeds``
    (calibration text sorted by length would bias the first few)."""
    if not feeds:
        return []
    size = max(1, len(next(iter(feeds[0].values()))))
    n = min(len(feeds), max(1, -(-samples // size)))
    return [feeds[i * len(feeds) // n] for i in range(n)]


def _change(base: list[list[np.ndarray]], new: list[list[np.ndarray]]) -> float:
    """Σ over float outputs of the mean squared change, centred per output feature (the
    last axis) over every sample of every batch: a shift all samples share is what a bias
    refit repairs."""
    sums: dict[int, list] = {}  # output index -> [Σ d per feature, Σ d², rows]
    for outs, news in zip(base, new, strict=True):
        for i, (a, b) in enumerate(zip(outs, news, strict=True)):
            if np.issubdtype(a.dtype, np.floating):
                d = np.subtract(a, b, dtype=np.float64)
                d = d.reshape(-1, d.shape[-1]) if d.ndim else d.reshape(1, 1)
                acc = sums.setdefault(i, [0.0, 0.0, 0])
                acc[0] = acc[0] + d.sum(0)
                acc[1] += float(np.square(d).sum())
                acc[2] += d.shape[0]
    total = 0.0
    for first, second, rows in sums.values():
        width = np.size(first)
        total += (second - float(np.square(first).sum()) / rows) / (rows * width)
    return total


def measure(model: onnx.ModelProto, allocator, feeds: list[dict]) -> dict[int, list]:
    """Group id -> [(units removed, loss), ...] for every free group of ``allocator``
    (``graphprune.allocate.Allocator``: its groups, score order and rounding)."""
    analysis, opts = allocator.analysis, allocator.opts
    free = allocator.free
    if not free:
        return {}
    every = np.concatenate([g.unit_labels for g in free])
    touched = np.isin(analysis.labels, every)
    dims = [d for d in analysis.space.dims if touched[d.base : d.base + d.size].any()]
    masked, sites = switchable_masks(analysis, dims)
    sess = session(masked)
    feeds = sample_feeds(feeds)
    ones = mask_feeds(analysis, sites, np.zeros(0, every.dtype))

    def run(masks: dict) -> list[list[np.ndarray]]:
        return [sess.run(None, {**f, **masks}) for f in feeds]

    base = run(ones)
    energy = _change(base, [[np.zeros_like(o) for o in outs] for outs in base]) or 1.0
    curves: dict[int, list] = {}
    total = len(free) * len(FRACTIONS)
    for i, g in enumerate(free):
        points = [(0, 0.0)]
        for j, f in enumerate(FRACTIONS):
            k = n_remove(g.units, f, opts.round_to, opts.min_keep)
            if k > points[-1][0]:
                labels = g.unit_labels[allocator.order[g.id][:k]]
                points.append((k, _change(base, run(mask_feeds(analysis, sites, labels))) / energy))
            advance("sensitivity", i * len(FRACTIONS) + j + 1, total)
        curves[g.id] = points
    log.info(
        "sensitivity: %d groups x %d widths measured on %d batches",
        len(free),
        len(FRACTIONS),
        len(feeds),
    )
    return curves


def rates(curve: list, units: int, unit_cost: float) -> np.ndarray:
    """Per rank down the group's score order (rank 0 goes first): the marginal loss of
    removing that unit, per unit of cost, non-decreasing; infinite past the widest width
    measured (a loss curve says nothing about cutting a layer to nothing). Between measured
    widths the marginal is interpolated; a tiny rise with the rank keeps ranks apart, so a
    threshold can stop at any of them."""
    ks = np.array([k for k, _ in curve], dtype=np.float64)
    losses = np.array([loss for _, loss in curve], dtype=np.float64)
    ranks = np.arange(units, dtype=np.float64)
    if len(ks) < 2:
        return np.full(units, np.inf)
    slopes = np.maximum.accumulate(np.maximum(np.diff(losses) / np.diff(ks), 0.0))
    mids = (ks[:-1] + ks[1:]) / 2
    slope = np.interp(ranks + 0.5, mids, slopes)
    scale = max(float(slope.max()), 1e-12)
    slope = (slope + scale * 1e-6 * (ranks + 1) / units) / max(unit_cost, 1e-12)
    slope[ranks >= ks[-1]] = np.inf
    return slope
