"""Plans: which units of which groups to remove. Plain, JSON-serialisable data so a plan can
be saved, inspected, edited and replayed on the same model."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .analysis.groups import Analysis
from .errors import PlanError, UsageError

PLAN_VERSION = 1


@dataclass
class GroupPlan:
    key: str  # anchor dim of the group, e.g. "conv1_out[1]"
    kind: str
    units: int  # units in the group before pruning
    remove: list[int]  # unit positions (ordered as in the anchor dim)
    approximate: bool = False  # a normalised width (``--hidden``): changes the function
    drop: bool = False  # the whole sub-block goes (depth); ``remove`` is every unit


@dataclass
class Plan:
    groups: list[GroupPlan] = field(default_factory=list)
    criterion: str = "l2"
    ratio: float = 0.0
    ratios: dict[str, float] = field(default_factory=dict)  # per group kind, over ``ratio``
    gqa: str = "kv"  # the analysis' GQA unit, so a replay finds the same groups
    version: int = PLAN_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    def save(self, path) -> None:
        Path(path).write_text(self.to_json())

    @classmethod
    def load(cls, path) -> Plan:
        try:
            data = json.loads(Path(path).read_text())
            groups = [GroupPlan(**g) for g in data.pop("groups")]
            return cls(groups=groups, **data)
        except (OSError, ValueError, TypeError, KeyError) as e:
            raise PlanError(f"{path}: not a graphprune plan ({e})") from e


def n_remove(units: int, ratio: float, round_to: int = 1, min_keep: int = 1) -> int:
    """Units to remove from a group of ``units`` at ``ratio``: the kept count is rounded
    to a multiple of ``round_to`` (when the group is at least that large) and ≥ min_keep."""
    keep = units - math.floor(ratio * units + 1e-9)
    if round_to > 1 and units >= round_to:
        keep = max(round_to, int(round(keep / round_to)) * round_to)
    keep = min(units, max(keep, min_keep, 1))
    return units - keep


def make_plan(
    analysis: Analysis,
    scores: dict[int, np.ndarray],
    ratio: float,
    round_to: int = 1,
    min_keep: int = 1,
    criterion: str = "l2",
    ratios: dict[str, float] | None = None,
    hidden: float = 0.0,
    drop: list | None = None,
) -> Plan:
    """Remove the lowest-scored units of every prunable group: ``ratios[kind]`` of a group
    of that kind ("head", "neuron", "channel", ...), ``ratio`` for the other kinds, and
    ``hidden`` of every group frozen only by a normalisation (Minitron width: approximate).
    Groups in ``drop`` (depth: see ``graphprune.depth``) lose every unit."""
    ratios = dict(ratios or {})
    for name, r in [("--ratio", ratio), ("--hidden", hidden), *ratios.items()]:
        if not 0.0 <= r < 1.0:
            raise UsageError(f"{name} ratio must be in [0, 1), got {r}")
    if round_to < 1:
        raise UsageError(f"--round-to must be >= 1, got {round_to}")
    plan = Plan(criterion=criterion, ratio=ratio, ratios=ratios)
    dropped = {g.id for g in drop or ()}
    for g in analysis.groups:
        if g.id in dropped:
            plan.groups.append(GroupPlan(g.key, g.kind, g.units, list(range(g.units)), drop=True))
            continue
        approximate = g.width_only and hidden > 0
        if g.frozen and not approximate:
            continue
        r = hidden if approximate else ratios.get(g.kind, ratio)
        k = n_remove(g.units, r, round_to, min_keep)
        if k == 0:
            continue
        order = np.argsort(scores[g.id], kind="stable")[:k]
        remove = sorted(int(u) for u in order)
        plan.groups.append(GroupPlan(g.key, g.kind, g.units, remove, approximate))
    return plan


def removed_labels(plan: Plan, analysis: Analysis) -> np.ndarray:
    """Component labels of every unit the plan removes (validated against the analysis)."""
    by_key = {g.key: g for g in analysis.groups}
    out = []
    for gp in plan.groups:
        g = by_key.get(gp.key)
        if g is None:
            raise PlanError(f"plan group {gp.key!r} does not exist in this model")
        if g.frozen and not (gp.approximate and g.width_only):
            raise PlanError(f"plan group {gp.key!r} is frozen: {'; '.join(g.frozen_reasons)}")
        if g.units != gp.units:
            raise PlanError(f"plan group {gp.key!r} has {g.units} units here, plan says {gp.units}")
        rem = np.asarray(gp.remove, dtype=np.int64)
        if len(rem) and (rem.min() < 0 or rem.max() >= g.units):
            raise PlanError(f"plan group {gp.key!r}: unit index out of range")
        if len(np.unique(rem)) >= g.units and not gp.drop:
            raise PlanError(f"plan group {gp.key!r} removes every unit")
        out.append(g.unit_labels[rem])
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)
