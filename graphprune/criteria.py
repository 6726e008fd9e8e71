"""Criteria: how the units of a group are scored. One registered class per criterion, each
with its one-line help, whether it needs calibration data, and which statistics it reads, so
a run captures only what its criterion (and its reconstruction) use.

Statistics (``needs``): ``moments`` (per-channel mean, mean square, mean |x| of each
consumer's input), ``gram`` (the channel Gram matrix of it), ``outputs`` (the original
model's outputs on the calibration data, for knockout).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from .analysis.groups import Analysis, Group
from .calibration import Activations
from .importance import (
    DAMPING,
    activation_scores,
    carrier_scores,
    obs_scores,
    scored_groups,
    slice_norms,
)
from .knockout import MAX_UNITS, knockout_scores
from .progress import advance

log = logging.getLogger(__name__)


@dataclass
class ScoreInputs:
    """What a criterion may read besides the weights."""

    acts: Activations | None = None
    knockout: tuple | None = None  # (calibration feeds, original outputs on them)
    damping: float = DAMPING
    rng: np.random.Generator | None = None


class Criterion:
    name = ""
    help = ""
    data = "none"  # "none": weights only; "optional": uses --calib if given; "required"
    needs: frozenset[str] = frozenset()

    def wants_data(self, has_calib: bool) -> bool:
        return self.data == "required" or (self.data == "optional" and has_calib)

    def score(self, group: Group, analysis: Analysis, inputs: ScoreInputs) -> np.ndarray:
        raise NotImplementedError  # pragma: no cover - interface


CRITERIA: dict[str, Criterion] = {}


def register(cls: type[Criterion]) -> type[Criterion]:
    CRITERIA[cls.name] = cls()
    return cls


def _sum_or_l2(parts, group: Group, analysis: Analysis) -> np.ndarray:
    if parts:
        return np.sum(parts, axis=0)
    log.info("group %s has no measured consumer; scoring it by L2", group.key)
    return _norm_score(group, analysis, 2)


def _norm_score(group: Group, analysis: Analysis, p: int) -> np.ndarray:
    parts = carrier_scores(group, analysis, p)
    return np.sum(parts, axis=0) if parts else np.zeros(group.units)


class _NormCriterion(Criterion):
    p = 2

    def score(self, group, analysis, inputs):
        return _norm_score(group, analysis, self.p)


@register
class L1(_NormCriterion):
    name = "l1"
    help = "L1 norm of the weight slices each unit owns, mean-normalised per layer"
    p = 1


@register
class L2(_NormCriterion):
    name = "l2"
    help = "L2 norm of the weight slices each unit owns, mean-normalised per layer"


@register
class Random(Criterion):
    name = "random"
    help = "random scores (--seed): the baseline every criterion must beat"

    def score(self, group, analysis, inputs):
        return inputs.rng.random(group.units)


class _ActivationCriterion(Criterion):
    """Scored at each consumer from its weight slice and the input's moments."""

    data = "required"
    needs = frozenset({"moments"})

    @staticmethod
    def measure(w: np.ndarray, axis: int, st) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError

    def score(self, group, analysis, inputs):
        parts = activation_scores(group, analysis, self.measure, inputs.acts)
        return _sum_or_l2(parts, group, analysis)


@register
class Activation(_ActivationCriterion):
    name = "activation"
    help = "mean |X| of the unit on the calibration data (Minitron)"

    @staticmethod
    def measure(w, axis, st):
        return st.mean_abs


@register
class Wanda(_ActivationCriterion):
    name = "wanda"
    help = "sum of |W| x ||X||2 over the consumer's slice (Wanda)"

    @staticmethod
    def measure(w, axis, st):
        return slice_norms(w, axis, 1) * np.sqrt(st.squares)


@register
class Flap(_ActivationCriterion):
    name = "flap"
    help = "Var(X) x ||W||2^2: the fluctuation the unit feeds its consumer (FLAP)"

    @staticmethod
    def measure(w, axis, st):
        return slice_norms(w, axis, 2) ** 2 * st.variance


@register
class Knockout(_ActivationCriterion):
    name = "knockout"
    help = (
        "each unit masked and the change of the model's outputs measured (groups up to "
        f"{MAX_UNITS} units; larger ones: E[X^2] x ||W||^2 at the consumer)"
    )
    needs = frozenset({"moments", "outputs"})

    @staticmethod
    def measure(w, axis, st):  # the change removing j causes at the consumer's output
        return slice_norms(w, axis, 2) ** 2 * st.mean_square

    def score(self, group, analysis, inputs):
        if inputs.knockout is not None and group.units <= MAX_UNITS:
            return knockout_scores(group, analysis, *inputs.knockout)
        return super().score(group, analysis, inputs)


@register
class Obs(Criterion):
    name = "obs"
    help = (
        "structured OBS: tr(W_U^T ([H^-1]_UU)^-1 W_U), H = E[x x^T] of the consumer's input "
        "with --damping (H = I without --calib)"
    )
    data = "optional"
    needs = frozenset({"moments", "gram"})

    def score(self, group, analysis, inputs):
        parts = obs_scores(group, analysis, inputs.acts, inputs.damping)
        return np.sum(parts, axis=0) if parts else _norm_score(group, analysis, 2)


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
    inputs = ScoreInputs(acts, knockout, damping, np.random.default_rng(seed))
    rule = CRITERIA[criterion]
    groups = scored_groups(analysis, width)
    out = {}
    for k, g in enumerate(groups):
        out[g.id] = rule.score(g, analysis, inputs)
        if rule.name == "knockout":  # one ORT run per unit: long enough to show
            advance("knockout", k + 1, len(groups))
    return out
