"""Allocation to a budget: ``--target-macs F`` / ``--target-params F`` keep the fraction F of
the model's MACs / parameters (within 2%), with a uniform ratio over groups or, with
``--global``, one threshold over every unit's group-normalised score.

The cost of a plan is computed, not measured: a Conv / Gemm / MatMul's MACs are
multilinear in the sizes of its output axes and its contracted axis, and a weight's size in
the sizes of its axes, so each is its original cost times the kept fraction of those dims.
"""

from __future__ import annotations

import numpy as np

from .analysis.groups import Analysis
from .cost import CostModel
from .errors import PlanError, UsageError
from .plan import GroupPlan, Plan, make_plan, removed_labels

TOLERANCE = 0.02


def _price(model: CostModel, plan: Plan, what: str) -> float:
    if what == "units":
        total = sum(g.units for g in model.analysis.prunable)
        return float(total - sum(len(gp.remove) for gp in plan.groups))
    return model.cost(removed_labels(plan, model.analysis), what)


def global_plan(
    analysis: Analysis,
    scores: dict[int, np.ndarray],
    threshold: float,
    round_to: int,
    min_keep: int,
    criterion: str,
    skip: frozenset = frozenset(),
) -> Plan:
    """Remove the units whose group-normalised score is below ``threshold``; each group
    keeps at least ``min_keep`` units and, when it is that large, a multiple of
    ``round_to`` (rounded up, so nothing above the threshold goes). Groups whose key is in
    ``skip`` are left out."""
    plan = Plan(criterion=criterion, ratio=0.0)
    for g in analysis.prunable:
        if g.key in skip:
            continue
        s = scores[g.id]
        norm = s / s.mean() if s.mean() > 0 else s
        keep = g.units - int(np.sum(norm < threshold))
        if round_to > 1 and g.units >= round_to:
            keep = min(g.units, -(-keep // round_to) * round_to)
        k = g.units - max(keep, min_keep, 1)
        if k > 0:
            order = np.argsort(norm, kind="stable")[:k]
            plan.groups.append(GroupPlan(g.key, g.kind, g.units, sorted(int(u) for u in order)))
    return plan


def kind_global_plan(
    analysis: Analysis,
    scores,
    ratio: float,
    ratios=None,
    *,
    round_to: int = 1,
    min_keep: int = 1,
    criterion: str = "l2",
    hidden: float = 0.0,
    drop: list | None = None,
) -> Plan:
    """``--global`` without a target: each kind (head, neuron, channel ...) loses its ratio
    of *all* its units, taken where the group-normalised scores are lowest, so layers
    lose different shares. ``hidden`` and ``drop`` are applied as given."""
    ratios = dict(ratios or {})
    fixed = make_plan(analysis, scores, 0.0, round_to, min_keep, criterion, {}, hidden, drop)
    taken = {gp.key for gp in fixed.groups}
    plan = Plan(criterion=criterion, ratio=ratio, ratios=ratios)
    plan.groups = list(fixed.groups)
    free = [g for g in analysis.prunable if g.key not in taken]
    for kind in sorted({g.kind for g in free}):
        r = ratios.get(kind, ratio)
        own = [g for g in free if g.kind == kind]
        if r <= 0:
            continue
        if r >= 1:
            raise UsageError(f"the {kind} ratio must be in [0, 1), got {r}")
        goal = r * sum(g.units for g in own)
        skip = frozenset(g.key for g in analysis.prunable) - {g.key for g in own}
        lo = 0.0
        hi = 1.0 + max(float(np.max(scores[g.id] / max(scores[g.id].mean(), 1e-12))) for g in own)
        best, best_err = Plan(), goal
        for _ in range(60):  # the threshold whose removal count is nearest the goal
            mid = (lo + hi) / 2
            trial = global_plan(analysis, scores, mid, round_to, min_keep, criterion, skip)
            removed = sum(len(gp.remove) for gp in trial.groups)
            if abs(removed - goal) < best_err:
                best, best_err = trial, abs(removed - goal)
            if removed == round(goal):
                break
            lo, hi = (mid, hi) if removed < goal else (lo, mid)
        plan.groups += best.groups
    return plan


def plan_for_target(
    analysis: Analysis,
    scores,
    what: str,
    target: float,
    *,
    global_rank: bool = False,
    ratio: float = 0.5,
    ratios=None,
    round_to: int = 1,
    min_keep: int = 1,
    criterion: str = "l2",
    hidden: float = 0.0,
    drop: list | None = None,
) -> Plan:
    """Bisect a scale until the plan keeps ``target`` of the ``what`` ("macs", "params" or
    "units") within 2%. Uniformly, the scale multiplies ``ratio`` and every per-kind ratio
    (so their proportions hold); with ``global_rank`` it is one threshold over every unit's
    group-normalised score. The ``hidden`` width and the dropped blocks ``drop`` are fixed
    parts of every candidate plan: the budget is met by the other groups around them."""
    if not 0.0 < target <= 1.0:
        raise UsageError(f"the {what} target must be in (0, 1], got {target}")
    model = CostModel(analysis)
    full = _price(model, Plan(), what)
    if full <= 0:
        raise PlanError(f"the model has no {what} that pruning can reduce")
    ratios = dict(ratios or {})
    top = max([ratio, *ratios.values(), 1e-9])
    fixed = make_plan(analysis, scores, 0.0, round_to, min_keep, criterion, {}, hidden, drop)
    skip = frozenset(gp.key for gp in fixed.groups)

    def make(x: float) -> Plan:
        if global_rank:
            plan = global_plan(analysis, scores, x, round_to, min_keep, criterion, skip)
            plan.groups = fixed.groups + plan.groups
            return plan
        scaled = {k: min(v * x, 0.999) for k, v in ratios.items()}
        r = min(ratio * x, 0.999)
        return make_plan(analysis, scores, r, round_to, min_keep, criterion, scaled, hidden, drop)

    lo, hi = 0.0, (10.0 if global_rank else 1.0 / top)
    best, best_err = make(lo), abs(1.0 - target)
    above = best  # the least-pruned plan seen that still keeps more than the target
    for _ in range(50):
        mid = (lo + hi) / 2
        plan = make(mid)
        kept = _price(model, plan, what) / full
        if abs(kept - target) < best_err:
            best, best_err = plan, abs(kept - target)
        if abs(kept - target) <= TOLERANCE * target:
            return plan
        if kept > target:
            above, lo = plan, mid
        else:
            hi = mid
    if best_err > TOLERANCE * target:  # too coarse: step one unit at a time from above
        goal, floor = target * (1 + TOLERANCE) * full, target * (1 - TOLERANCE) * full
        best = _refine(analysis, model, scores, above, what, goal, floor, min_keep, skip)
        best_err = abs(_price(model, best, what) / full - target)
    if best_err > TOLERANCE * target:
        reached = _price(model, best, what) / full
        raise PlanError(
            f"{what} target {target}: the closest plan keeps {reached:.3f} "
            "(frozen groups, --min-keep or --round-to limit it)"
        )
    return best


def _refine(
    analysis: Analysis,
    model: CostModel,
    scores,
    plan: Plan,
    what: str,
    goal: float,
    floor: float,
    min_keep: int,
    skip: frozenset = frozenset(),
) -> Plan:
    """Step one unit at a time from a plan above ``goal`` towards it: remove the
    lowest-scored (group-normalised) unit whose removal does not fall below ``floor``;
    stop when at most ``goal``, when no unit fits, or after 256 steps. The groups in
    ``skip`` (hidden width, dropped blocks) stay as ``plan`` has them."""
    fixed = [gp for gp in plan.groups if gp.key in skip]
    removed = {gp.key: set(gp.remove) for gp in plan.groups if gp.key not in skip}
    prunable = [g for g in analysis.prunable if g.key not in skip]
    by_key = {g.key: g for g in prunable}
    normalised = {g.id: scores[g.id] / max(scores[g.id].mean(), 1e-12) for g in prunable}

    def build() -> Plan:
        out = Plan(criterion=plan.criterion, ratio=plan.ratio, ratios=plan.ratios)
        out.groups.extend(fixed)
        for key, units in removed.items():
            if units:
                g = by_key[key]
                out.groups.append(GroupPlan(key, g.kind, g.units, sorted(units)))
        return out

    current = build()
    for _ in range(256):
        if _price(model, current, what) <= goal:
            return current
        candidates = []  # the next unit of every group, by score
        for g in prunable:
            taken = removed.setdefault(g.key, set())
            if g.units - len(taken) > max(min_keep, 1):
                s = normalised[g.id]
                u = next(int(u) for u in np.argsort(s, kind="stable") if int(u) not in taken)
                candidates.append((s[u], g.key, u))
        for _, key, u in sorted(candidates):
            removed[key].add(u)
            trial = build()
            if _price(model, trial, what) >= floor:
                current = trial
                break
            removed[key].discard(u)
        else:
            return current
    return current
