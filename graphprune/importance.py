"""Importance measures (the criteria in ``graphprune.criteria`` are built on them).

Weight-based importance: score every unit of a group by aggregating, over the group's
weight matrices and kernels (producer rows, consumer columns), the norm of the slice that
unit owns. Each carrier's scores are mean-normalised first so no layer dominates.
Vectors (biases, norm scales) are left out: their magnitude says little about a unit's
worth, and weighing them like whole kernels made L2 worse than random on the digits CNN."""

from __future__ import annotations

import logging

import numpy as np
import onnx_graphsurgeon as gs

from .analysis.context import Contraction
from .analysis.groups import Analysis, Group
from .calibration import Activations

log = logging.getLogger(__name__)

DAMPING = 0.01


def unit_index(group: Group, labels: np.ndarray) -> np.ndarray:
    """Map component labels of elements to unit positions in ``group`` (-1 if not in it)."""
    pos = np.searchsorted(group.unit_labels, labels)
    pos = np.clip(pos, 0, len(group.unit_labels) - 1)
    return np.where(group.unit_labels[pos] == labels, pos, -1)


def slice_norms(w: np.ndarray, axis: int, p: int) -> np.ndarray:
    """Lp norm of every index along ``axis`` (over all other axes), without a float64 copy."""
    if p == 1:
        others = tuple(a for a in range(w.ndim) if a != axis)
        return np.abs(w).sum(axis=others, dtype=np.float64)
    letters = "abcdefghijklmnop"[: w.ndim]
    sq = np.einsum(f"{letters},{letters}->{letters[axis]}", w, w, dtype=np.float64)
    return np.sqrt(sq)


def carrier_scores(group: Group, analysis: Analysis, p: int) -> list[np.ndarray]:
    out = []
    for d in group.carriers():
        t = d.node.inputs[d.slot]
        if not isinstance(t, gs.Constant) or t.values.dtype.kind != "f" or t.values.ndim < 2:
            continue
        per_index = slice_norms(np.asarray(t.values), d.axis, p)
        units = unit_index(group, analysis.labels[d.base : d.base + d.size])
        keep = units >= 0
        score = np.bincount(units[keep], weights=per_index[keep], minlength=group.units)
        mean = score.mean()
        out.append(score / mean if mean > 0 else score)
    return out


def group_contractions(group: Group, analysis: Analysis) -> list[Contraction]:
    """Every contraction of one of the group's dims."""
    dims = {d.id for d in group.dims}
    return [c for c in analysis.contractions if c.dim.id in dims]


def contraction_points(group: Group, analysis: Analysis) -> list[Contraction]:
    """Where the group's units are consumed: weight slices contracted against an activation."""
    return [c for c in group_contractions(group, analysis) if c.act is not None]


def scored_groups(analysis: Analysis, width: bool = False) -> list[Group]:
    """The groups a plan can prune: the prunable ones, and with ``width`` (``--hidden``)
    also those frozen only by a normalisation."""
    return [g for g in analysis.groups if not g.frozen or (width and g.width_only)]


def calibration_targets(analysis: Analysis, width: bool = False) -> list[tuple[str, int]]:
    """The activation axes whose statistics the data-driven criteria need."""
    groups = scored_groups(analysis, width)
    return sorted(
        {(c.act.tensor, c.act.axis) for g in groups for c in contraction_points(g, analysis)}
    )


def activation_scores(
    group: Group, analysis: Analysis, measure, acts: Activations
) -> list[np.ndarray]:
    """Per contraction point, a score per unit (mean-normalised): ``measure(w, axis, st)``
    gives one value per input index j of the consumer, from its weight ``w`` contracted on
    ``axis`` and the statistics ``st`` of the activation entering it (see the criteria)."""
    parts = []
    for c in contraction_points(group, analysis):
        st = acts.get(c.act.tensor, c.act.axis)
        w = c.node.inputs[c.slot]
        if st is None or not isinstance(w, gs.Constant):
            continue
        per_index = measure(np.asarray(w.values), c.axis, st)
        units = unit_index(group, analysis.labels[c.dim.base : c.dim.base + c.dim.size])
        keep = units >= 0
        score = np.bincount(units[keep], weights=per_index[keep], minlength=group.units)
        mean = score.mean()
        parts.append(score / mean if mean > 0 else score)
    return parts


def obs_scores(
    group: Group, analysis: Analysis, acts: Activations | None, damping: float = DAMPING
) -> list[np.ndarray]:
    """Structured OBS: removing unit U (indices U of a consumer's input) costs
    ``tr(W_Uᵀ ([H⁻¹]_UU)⁻¹ W_U)`` with H = E[x xᵀ] of that input (damped); data-free, H = I
    and this is the squared L2 norm."""
    parts = []
    for c in group_contractions(group, analysis):
        w = c.node.inputs[c.slot]
        if not isinstance(w, gs.Constant):
            continue
        st = acts.get(c.act.tensor, c.act.axis) if acts is not None and c.act else None
        rows = np.moveaxis(np.asarray(w.values, dtype=np.float64), c.axis, 0)
        rows = rows.reshape(rows.shape[0], -1)
        units = unit_index(group, analysis.labels[c.dim.base : c.dim.base + c.dim.size])
        if st is None or st.gram is None:
            h_inv = np.eye(len(rows))
        else:
            h = st.gram / st.count
            h_inv = np.linalg.inv(h + damping * max(np.mean(np.diag(h)), 1e-12) * np.eye(len(h)))
        score = np.zeros(group.units)
        for u in range(group.units):
            idx = np.flatnonzero(units == u)
            if len(idx) == 0:
                continue
            w_u = rows[idx]
            score[u] = float(np.sum(w_u * np.linalg.solve(h_inv[np.ix_(idx, idx)], w_u)))
        mean = score.mean()
        parts.append(score / mean if mean > 0 else score)
    return parts
