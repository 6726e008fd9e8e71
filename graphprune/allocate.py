"""Allocation: how many units each group loses, and which.

Every strategy works on one representation: the units of each group ordered once by score
(lowest first), and a candidate that says how many of them each group loses. A candidate is
priced by ``CostModel`` (``graphprune.cost``) straight from the labels it removes, and only
the chosen one becomes a ``Plan``. The strategies:

- uniform: ``ratios[kind]`` (or ``ratio``) of every group, rounded (``--round-to``,
  ``--min-keep``);
- kind-global (``--global`` without a target): each kind loses its ratio of *all* its units,
  where the group-normalised scores are lowest;
- a budget (``--target-macs`` / ``--target-params``): bisection on a scale of the uniform
  ratios, or on one threshold over every unit's group-normalised score (``--global``), then
  unit-by-unit refinement where the bisection is too coarse, to within 2%;
- a latency budget (``--target-speedup`` / ``--target-latency``): the same search, each
  candidate priced by the latency model measured in ONNX Runtime (``graphprune.latency``),
  to within 2% of the predicted latency;
- sensitivity (``--allocate sensitivity``): the ranked strategies above, over the loss per
  MAC (or parameter) each unit's removal measurably causes (``graphprune.sensitivity``)
  instead of over normalised scores.

The ``--hidden`` width and dropped blocks (depth) are fixed parts of every candidate.
"""

from __future__ import annotations

import math

import numpy as np

from .analysis.groups import Analysis, Group
from .cost import CostModel
from .errors import PlanError
from .plan import GroupPlan, Plan

TOLERANCE = 0.02

Counts = dict[int, int]  # group id -> units removed (its lowest-scored ones)


def n_remove(units: int, ratio: float, round_to: int = 1, min_keep: int = 1) -> int:
    """Units to remove from a group of ``units`` at ``ratio``: the kept count is rounded
    to a multiple of ``round_to`` (when the group is at least that large) and ≥ min_keep."""
    keep = units - math.floor(ratio * units + 1e-9)
    if round_to > 1 and units >= round_to:
        keep = max(round_to, int(round(keep / round_to)) * round_to)
    keep = min(units, max(keep, min_keep, 1))
    return units - keep


def _finite_max(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(finite.max()) if len(finite) else 0.0


class Allocator:
    def __init__(
        self,
        analysis: Analysis,
        scores: dict[int, np.ndarray],
        options,
        drop: list[Group] | None = None,
        latency=None,
    ):
        self.analysis = analysis
        #: a ``graphprune.latency.BoundLatency`` (what "latency" budgets are priced by), or
        #: a callable that makes one from this allocator, called when first priced
        self.latency = latency
        self.opts = options
        self.order = {gid: np.argsort(s, kind="stable") for gid, s in scores.items()}
        self.normalised = {gid: s / s.mean() if s.mean() > 0 else s for gid, s in scores.items()}
        self.prunable = list(analysis.prunable)
        self.fixed: Counts = {}  # the width and the dropped blocks
        self.dropped = {g.id for g in drop or ()}
        for g in analysis.groups:
            if g.id in self.dropped:
                self.fixed[g.id] = g.units
            elif g.width_only and options.hidden > 0:
                self.fixed[g.id] = n_remove(
                    g.units, options.hidden, options.round_to, options.min_keep
                )
        self.free = [g for g in self.prunable if g.id not in self.fixed]
        self._cost: CostModel | None = None
        #: the upper end of a ranked threshold's bisection (normalised scores average 1)
        self.top = 10.0
        #: group id -> [(units removed, measured loss), ...] (``use_sensitivity``)
        self.sensitivity: dict[int, list] = {}

    def use_sensitivity(self, curves: dict[int, list]) -> None:
        """Rank units by the measured loss of removing them per unit of what the budget
        counts (``graphprune.sensitivity``) instead of by normalised score; the order
        within each group stays the score order."""
        from .sensitivity import rates

        budget = self.opts.budget
        what = None if budget is None else ("params" if budget[0] == "params" else "macs")
        full = self.price({}, what) if what else 0.0
        for g in self.free:
            cost = full - self.price({g.id: 1}, what) if what else 1.0
            per_rank = rates(curves[g.id], g.units, cost)
            by_unit = np.empty(g.units)
            by_unit[self.order[g.id]] = per_rank
            self.normalised[g.id] = by_unit
        if self.free:
            self.top = 1.0 + max(_finite_max(self.normalised[g.id]) for g in self.free)
        self.sensitivity = curves

    # -- strategies -----------------------------------------------------------------------
    def plan(self) -> Plan:
        o = self.opts
        if o.budget is not None:
            return self.to_plan(self.for_budget(*o.budget))
        if o.ranked:
            return self.to_plan(self.kind_global(o.base_ratio, o.ratios))
        return self.to_plan(self.uniform(o.base_ratio, o.ratios))

    def uniform(self, ratio: float, ratios: dict[str, float]) -> Counts:
        counts = dict(self.fixed)
        for g in self.free:
            r = ratios.get(g.kind, ratio)
            counts[g.id] = n_remove(g.units, r, self.opts.round_to, self.opts.min_keep)
        return counts

    def threshold(self, t: float, groups: list[Group]) -> Counts:
        """Remove from ``groups`` the units whose group-normalised score is below ``t``;
        each keeps ≥ min_keep and, when that large, a multiple of round_to (rounded up, so
        nothing above the threshold goes)."""
        counts = {}
        round_to, min_keep = self.opts.round_to, self.opts.min_keep
        for g in groups:
            keep = g.units - int(np.sum(self.normalised[g.id] < t))
            if round_to > 1 and g.units >= round_to:
                keep = min(g.units, -(-keep // round_to) * round_to)
            counts[g.id] = max(0, g.units - max(keep, min_keep, 1))
        return counts

    def kind_global(self, ratio: float, ratios: dict[str, float]) -> Counts:
        counts = dict(self.fixed)
        for kind in sorted({g.kind for g in self.free}):
            r = ratios.get(kind, ratio)
            own = [g for g in self.free if g.kind == kind]
            if r <= 0:
                continue
            goal = r * sum(g.units for g in own)
            lo = 0.0
            hi = 1.0 + max(_finite_max(self.normalised[g.id]) for g in own)
            best, best_err = {}, goal
            for _ in range(60):  # the threshold whose removal count is nearest the goal
                mid = (lo + hi) / 2
                trial = self.threshold(mid, own)
                removed = sum(trial.values())
                if abs(removed - goal) < best_err:
                    best, best_err = trial, abs(removed - goal)
                if removed == round(goal):
                    break
                lo, hi = (mid, hi) if removed < goal else (lo, mid)
            counts.update(best)
        return counts

    def for_budget(self, what: str, target: float) -> Counts:
        """Bisect a scale until the candidate keeps ``target`` of the ``what`` ("macs",
        "params", "latency": the predicted latency) within 2%: uniformly the scale
        multiplies ``ratio`` and every per-kind ratio (so their proportions hold); with
        ``--global`` it is one threshold over every unit's group-normalised score.
        "latency_ms" is a latency in milliseconds, a fraction of the predicted full one."""
        o = self.opts
        asked = (what, target)
        if what == "latency_ms":
            what, target = "latency", target / self.price({}, "latency")
        full = self.price({}, what)
        if full <= 0:
            raise PlanError(f"the model has no {what} that pruning can reduce")
        top = max([o.base_ratio, *o.ratios.values(), 1e-9])

        def make(x: float) -> Counts:
            if o.ranked:
                return {**self.fixed, **self.threshold(x, self.free)}
            scaled = {k: min(v * x, 0.999) for k, v in o.ratios.items()}
            return self.uniform(min(o.base_ratio * x, 0.999), scaled)

        if what == "latency" and target >= 1:  # met as it is (outcome says so: exit 8)
            return make(0.0)
        lo, hi = 0.0, (self.top if o.ranked else 1.0 / top)
        best = make(lo)
        best_err = abs(self.price(best, what) / full - target)
        above = best  # the least-pruned candidate seen that still keeps more than the target
        for _ in range(50):
            mid = (lo + hi) / 2
            trial = make(mid)
            kept = self.price(trial, what) / full
            if abs(kept - target) < best_err:
                best, best_err = trial, abs(kept - target)
            if abs(kept - target) <= TOLERANCE * target:
                return trial
            if kept > target:
                above, lo = trial, mid
            else:
                hi = mid
        if best_err > TOLERANCE * target:  # too coarse: step one unit at a time from above
            goal, floor = target * (1 + TOLERANCE) * full, target * (1 - TOLERANCE) * full
            best = self.refine(above, what, goal, floor)
            best_err = abs(self.price(best, what) / full - target)
        if best_err > TOLERANCE * target:
            reached = self.price(best, what) / full
            raise PlanError(self._unreached(asked, reached, full))
        return best

    def _unreached(self, asked: tuple[str, float], reached: float, full: float) -> str:
        what, target = asked
        limits = "frozen groups, --min-keep or --round-to limit it"
        if what == "latency":
            return (
                f"--target-speedup {1 / target:.3g}: the closest plan is predicted "
                f"{1 / reached:.2f}x faster ({reached * full:.3g} of {full:.3g} ms in ONNX "
                f"Runtime here; {limits}, and the time no pruning removes)"
            )
        if what == "latency_ms":
            return (
                f"--target-latency {target:g}: the closest plan is predicted to run in "
                f"{reached * full:.3g} ms (from {full:.3g} ms; {limits}, and the time no "
                "pruning removes)"
            )
        return f"{what} target {target}: the closest plan keeps {reached:.3f} ({limits})"

    def refine(self, start: Counts, what: str, goal: float, floor: float) -> Counts:
        """From a candidate above ``goal``, remove one unit at a time: the lowest-scored
        (group-normalised) next unit whose removal does not fall below ``floor``; stop at
        ``goal``, when no unit fits, or after 256 steps. Fixed groups stay as they are."""
        current = dict(start)
        min_keep = max(self.opts.min_keep, 1)
        for _ in range(256):
            if self.price(current, what) <= goal:
                return current
            candidates = []  # the next unit of every group, by score
            for g in self.free:
                k = current.get(g.id, 0)
                rate = self.normalised[g.id][self.order[g.id][k]] if k < g.units else np.inf
                if g.units - k > min_keep and np.isfinite(rate):
                    candidates.append((rate, g.id))
            for _, gid in sorted(candidates):
                trial = {**current, gid: current.get(gid, 0) + 1}
                if self.price(trial, what) >= floor:
                    current = trial
                    break
            else:
                return current
        return current

    # -- pricing and the plan -------------------------------------------------------------
    def removed(self, counts: Counts) -> dict[int, np.ndarray]:
        """Unit positions each group loses (sorted)."""
        out = {}
        for gid, k in counts.items():
            if k > 0:
                units = self.order[gid][:k] if gid in self.order else np.arange(k)
                out[gid] = np.sort(units)
        return out

    def cost_model(self) -> CostModel:
        if self._cost is None:
            self._cost = CostModel(self.analysis)
        return self._cost

    def latency_model(self):
        if callable(self.latency):
            self.latency = self.latency(self)
        if self.latency is None:
            raise PlanError("a latency target needs a latency model (graphprune.latency)")
        return self.latency

    def price(self, counts: Counts, what: str) -> float:
        """``what`` the candidate keeps: MACs, params, or predicted milliseconds ("latency",
        "latency_ms", from the latency model)."""
        groups = self.analysis.groups
        labels = [groups[gid].unit_labels[u] for gid, u in self.removed(counts).items()]
        flat = np.concatenate(labels) if labels else np.zeros(0, int)
        if what in ("latency", "latency_ms"):
            return self.latency_model().predict_labels(flat)
        return self.cost_model().cost(flat, what)

    def latency_record(self, counts: Counts) -> dict:
        """What the latency model predicts for ``counts`` (the plan's budget record)."""
        model = self.latency_model()
        base, predicted = self.price({}, "latency"), self.price(counts, "latency")
        out = {
            "base_ms": round(base, 4),
            "predicted_ms": round(predicted, 4),
            "predicted_speedup": round(base / predicted, 4),
            "threads": int(model.threads),
        }
        what, amount = self.opts.budget
        if what == "latency_ms":
            out["keep"], out["target_ms"] = round(amount / base, 6), amount
        return out

    def to_plan(self, counts: Counts) -> Plan:
        o = self.opts
        plan = Plan(criterion=o.criterion, ratio=o.base_ratio, ratios=dict(o.ratios), gqa=o.gqa)
        if self.sensitivity:
            groups = self.analysis.groups
            plan.sensitivity = {
                groups[gid].key: [[int(k), round(float(v), 8)] for k, v in points]
                for gid, points in self.sensitivity.items()
            }
        if o.budget is not None:
            plan.budget = {"what": o.budget[0], "keep": o.budget[1]}
            if o.budget[0] in ("latency", "latency_ms"):
                plan.budget.update(self.latency_record(counts))
        removed = self.removed(counts)
        for g in self.analysis.groups:
            if g.id not in removed:
                continue
            plan.groups.append(
                GroupPlan(
                    g.key,
                    g.kind,
                    g.units,
                    [int(u) for u in removed[g.id]],
                    approximate=g.width_only and g.id not in self.dropped,
                    drop=g.id in self.dropped,
                )
            )
        return plan
