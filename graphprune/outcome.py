"""No silent no-op: a run that would remove nothing, or an option that matched nothing, is
refused (``NothingPruned``, exit 8) with the option and the reason, before any output."""

from __future__ import annotations

from collections import Counter

import onnx

from .analysis.groups import Analysis
from .errors import NothingPruned
from .options import KIND_FLAGS, PruneOptions
from .plan import Plan

#: ops of an already-quantized graph: its weights are integers, nothing can be sliced
QUANTIZED_OPS = {
    "QLinearConv",
    "QLinearMatMul",
    "MatMulInteger",
    "ConvInteger",
    "QGemm",
    "QAttention",
    "QLinearAdd",
    "QLinearMul",
    "DynamicQuantizeMatMul",
    "MatMulIntegerToFloat",
    "MatMulNBits",
    "QOrderedMatMul",
}


def quantized_ops(model: onnx.ModelProto) -> Counter:
    return Counter(n.op_type for n in model.graph.node if n.op_type in QUANTIZED_OPS)


def _flag(kind: str) -> str:
    """The CLI flag of a group kind's ratio (the API's ``ratios`` key otherwise)."""
    return next((f"--{f}" for f, k in KIND_FLAGS.items() if k == kind), f"ratios[{kind!r}]")


def _frozen_summary(groups) -> str:
    reasons = Counter(r for g in groups for r in g.frozen_reasons)
    top = "; ".join(f"{r} (x{c})" if c > 1 else r for r, c in reasons.most_common(2))
    return f"frozen: {top}" if top else ""


def _kinds_text(analysis: Analysis) -> str:
    kinds = Counter(g.kind for g in analysis.prunable)
    return ", ".join(f"{c} {k}" for k, c in sorted(kinds.items())) or "none"


def check_options_match(analysis: Analysis, opts: PruneOptions, model: onnx.ModelProto) -> None:
    """Each per-kind ratio names a kind this model has prunable groups of."""
    for kind, ratio in opts.ratios.items():
        if not ratio:
            continue
        flag = _flag(kind)
        groups = [g for g in analysis.groups if g.kind == kind]
        if any(not g.frozen for g in groups):
            continue
        if groups:
            why = f"its {len(groups)} {kind} group(s) are all {_frozen_summary(groups)}"
        else:
            why = f"the model has no {kind} groups (prunable groups: {_kinds_text(analysis)})"
        raise NothingPruned(f"{flag} {ratio:g} matches nothing: {why}", flag)
    if opts.hidden and not any(g.width_only for g in analysis.groups):
        raise NothingPruned(
            f"--hidden {opts.hidden:g} matches nothing: no group is frozen only by a "
            "normalisation width",
            "--hidden",
        )


def check_plan_removes(
    plan: Plan, analysis: Analysis, opts: PruneOptions, model: onnx.ModelProto
) -> None:
    """The plan removes something, and something of every kind given its own ratio."""
    removed = Counter()
    for gp in plan.groups:
        removed[gp.kind] += len(gp.remove)
    for kind, ratio in opts.ratios.items():
        if ratio and not removed[kind] and opts.plan is None:
            why = _rounds_to_zero(analysis, kind, ratio)
            flag = _flag(kind)
            raise NothingPruned(f"{flag} {ratio:g} removes no {kind} unit: {why}", flag)
    if sum(removed.values()):
        return
    raise NothingPruned(f"nothing removed: {_why_nothing(analysis, opts, model)}")


def _rounds_to_zero(analysis: Analysis, kind: str | None, ratio: float) -> str:
    groups = [g for g in analysis.prunable if kind is None or g.kind == kind]
    if not groups:
        return "no group is prunable"
    largest = max(g.units for g in groups)
    what = f"{kind} groups" if kind else "prunable groups"
    return (
        f"{ratio:g} of at most {largest} units per group rounds to 0 in every one of the "
        f"{len(groups)} {what} (or --min-keep/--round-to keep them); give at least "
        f"{1 / largest:.3g}"
    )


def _why_nothing(analysis: Analysis, opts: PruneOptions, model: onnx.ModelProto) -> str:
    q = quantized_ops(model)
    if q:
        ops = ", ".join(f"{op} x{c}" for op, c in q.most_common(3))
        return (
            f"the model is already quantized ({ops}); structured pruning slices float "
            "weights, so prune the float model before quantizing it"
        )
    if not analysis.groups:
        return "the model has no prunable structure (no coupled group of units was found)"
    if not analysis.prunable:
        return f"all {len(analysis.groups)} groups are {_frozen_summary(analysis.groups)}"
    if opts.plan is not None:
        return "the plan removes no unit"
    if opts.budget is not None:
        what, frac = opts.budget
        if what == "latency":
            flag, frac = "--target-speedup", 1 / frac
        else:
            flag = "--target-latency" if what == "latency_ms" else f"--target-{what}"
        return f"{flag} {frac:g} is met without removing a unit"
    if opts.base_ratio == 0 and not opts.ratios and not opts.drop_layers and not opts.drop_list:
        return "no ratio, target or depth option asks for a removal (--ratio is 0)"
    return f"--ratio {_rounds_to_zero(analysis, None, opts.base_ratio)}"
