"""Plans: which units of which groups to remove. Plain, JSON-serialisable data so a plan can
be saved, inspected, edited and replayed on the same model. Plans are made by
``graphprune.allocate`` and checked against the analysis here (``removed_labels``)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .analysis.groups import Analysis
from .errors import PlanError

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
    #: input sizes MACs and parity were taken at (a replay without --input-shape reuses them)
    input_shapes: dict[str, list[int]] = field(default_factory=dict)
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
