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
    #: the budget the plan was made for, {"what": "macs"|"params", "keep": F} (then ``ratio``
    #: and ``ratios`` are the asked ones before scaling; the groups are what it came to);
    #: a latency budget ("latency" | "latency_ms") adds what the latency model predicted:
    #: base_ms, predicted_ms, predicted_speedup, threads (and target_ms); ``--round-to
    #: auto`` adds "round_to", the multiple it resolved to
    budget: dict = field(default_factory=dict)
    #: ``--allocate sensitivity``: group key -> [[units removed, measured loss], ...], the
    #: loss being the outputs' change with that group alone cut (``graphprune.sensitivity``)
    sensitivity: dict = field(default_factory=dict)
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
        except (OSError, ValueError) as e:
            raise PlanError(f"{path}: not a graphprune plan ({e})") from e
        return cls.from_dict(data, str(path))

    @classmethod
    def from_dict(cls, data, where: str = "plan") -> Plan:
        """A plan from its JSON form, every field type-checked (a plan file is user input)."""

        def bad(why: str) -> PlanError:
            return PlanError(f"{where}: not a graphprune plan ({why})")

        if not isinstance(data, dict) or not isinstance(data.get("groups"), list):
            raise bad("expected an object with a 'groups' list")
        if data.get("version", PLAN_VERSION) != PLAN_VERSION:
            raise bad(f"version {data.get('version')!r}; this graphprune reads {PLAN_VERSION}")
        groups = []
        for g in data["groups"]:
            if not isinstance(g, dict):
                raise bad("a group is not an object")
            try:
                gp = GroupPlan(**g)
            except TypeError as e:
                raise bad(str(e)) from None
            ok = (
                isinstance(gp.key, str)
                and isinstance(gp.kind, str)
                and _is_int(gp.units)
                and isinstance(gp.remove, list)
                and all(_is_int(u) for u in gp.remove)
                and isinstance(gp.approximate, bool)
                and isinstance(gp.drop, bool)
            )
            if not ok:
                raise bad(f"group {g.get('key')!r} has a field of the wrong type")
            groups.append(gp)
        rest = {k: v for k, v in data.items() if k != "groups"}
        try:
            plan = cls(groups=groups, **rest)
        except TypeError as e:
            raise bad(str(e)) from None
        shapes = plan.input_shapes
        if not isinstance(shapes, dict) or not all(
            isinstance(s, list) and all(_is_int(d) and d > 0 for d in s) for s in shapes.values()
        ):
            raise bad("input_shapes must map input names to lists of positive integers")
        return plan


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


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
