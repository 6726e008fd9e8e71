"""Knockout importance ("Are Sixteen Heads Really Better than One?", gradient-free): mask
one unit, run the calibration data, and measure how much the model's outputs move.

One ONNX Runtime run per unit is affordable for groups of up to ``MAX_UNITS`` units
(attention heads, small layers). Larger groups (thousands of MLP neurons) are scored by
the change each removal causes at the consumer's output instead, ``E[X_j²]·‖W_j‖²``: the
same knockout, measured one layer down, exact and free from the calibration statistics."""

from __future__ import annotations

import logging

import numpy as np
import onnx

from .analysis.groups import Analysis, Group
from .validate import session

log = logging.getLogger(__name__)

MAX_UNITS = 64


def model_outputs(model: onnx.ModelProto, feeds: list[dict]) -> list[list[np.ndarray]]:
    sess = session(model)
    return [sess.run(None, f) for f in feeds]


def knockout_scores(
    group: Group, analysis: Analysis, feeds: list[dict], baseline: list[list[np.ndarray]]
) -> np.ndarray:
    """Mean squared change of every output, per unit masked (relative to output energy)."""
    from graphprune.passes.mask_units import masked_reference
    from graphprune.passes.removal import Removal

    energy = (
        sum(
            float(np.mean(np.square(o, dtype=np.float64)))
            for outs in baseline
            for o in outs
            if np.issubdtype(o.dtype, np.floating)
        )
        or 1.0
    )
    scores = np.zeros(group.units)
    for u in range(group.units):
        masked = masked_reference(Removal(analysis, group.unit_labels[u : u + 1]))
        change = 0.0
        for outs, new in zip(baseline, model_outputs(masked, feeds), strict=True):
            for a, b in zip(outs, new, strict=True):
                if np.issubdtype(a.dtype, np.floating):
                    change += float(np.mean(np.square(a - b, dtype=np.float64)))
        scores[u] = change / energy
    log.info("knockout: %s scored by %d masked runs", group.key, group.units)
    return scores
