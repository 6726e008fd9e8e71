"""Weight-based importance: score every unit of a group by aggregating, over the group's
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
from .errors import UsageError
from .knockout import MAX_UNITS, knockout_scores

log = logging.getLogger(__name__)

#: weight-only criteria, then those that need calibration statistics
CRITERIA = ("l1", "l2", "random", "activation", "wanda", "flap", "knockout", "obs")
DATA_CRITERIA = ("activation", "wanda", "flap", "knockout")  # obs also runs without data
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
    group: Group, analysis: Analysis, criterion: str, acts: Activations
) -> list[np.ndarray]:
    """Per contraction point, a score per unit (mean-normalised):
    ``activation`` (Minitron): mean |X_j|; ``wanda``: Σ|W_ij| · ‖X_j‖₂;
    ``flap``: Var(X_j) · ‖W_:j‖₂²; ``knockout`` (local): E[X_j²] · ‖W_:j‖₂², the change
    removing j causes at the consumer's output — X_j the activation entering column j."""
    parts = []
    for c in contraction_points(group, analysis):
        st = acts.get(c.act.tensor, c.act.axis)
        w = c.node.inputs[c.slot]
        if st is None or not isinstance(w, gs.Constant):
            continue
        if criterion == "activation":
            per_index = st.mean_abs
        elif criterion == "wanda":
            per_index = slice_norms(np.asarray(w.values), c.axis, 1) * np.sqrt(st.squares)
        elif criterion == "flap":
            per_index = slice_norms(np.asarray(w.values), c.axis, 2) ** 2 * st.variance
        else:  # knockout, measured at the consumer
            per_index = slice_norms(np.asarray(w.values), c.axis, 2) ** 2 * st.mean_square
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


def score_group(
    group: Group,
    analysis: Analysis,
    criterion: str,
    rng: np.random.Generator,
    acts: Activations | None = None,
    knockout: tuple | None = None,
    damping: float = DAMPING,
) -> np.ndarray:
    """``knockout`` = (calibration feeds, the original model's outputs on them); ``damping``
    is OBS's ridge on H, relative to its mean diagonal."""
    if criterion == "random":
        return rng.random(group.units)
    if criterion not in CRITERIA:
        raise UsageError(f"unknown criterion {criterion!r} (choose from {', '.join(CRITERIA)})")
    if criterion == "obs":
        parts = obs_scores(group, analysis, acts, damping)
        if parts:
            return np.sum(parts, axis=0)
    if criterion == "knockout" and knockout is not None and group.units <= MAX_UNITS:
        return knockout_scores(group, analysis, *knockout)
    if criterion in DATA_CRITERIA:
        if acts is None:
            raise UsageError(f"--criterion {criterion} needs calibration data (--calib)")
        parts = activation_scores(group, analysis, criterion, acts)
        if parts:
            return np.sum(parts, axis=0)
        log.info("group %s has no measured consumer; scoring it by L2", group.key)
    parts = carrier_scores(group, analysis, 1 if criterion == "l1" else 2)
    return np.sum(parts, axis=0) if parts else np.zeros(group.units)


def score_groups(
    analysis: Analysis,
    criterion: str = "l2",
    seed: int = 0,
    acts: Activations | None = None,
    knockout: tuple | None = None,
    damping: float = DAMPING,
    width: bool = False,
) -> dict[int, np.ndarray]:
    """Scores of every group ``scored_groups(analysis, width)`` returns."""
    rng = np.random.default_rng(seed)
    groups = scored_groups(analysis, width)
    return {g.id: score_group(g, analysis, criterion, rng, acts, knockout, damping) for g in groups}
