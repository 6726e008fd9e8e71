"""Reports: the JSON document of a prune (stable keys, for build steps) and its text form."""

from __future__ import annotations

from collections import Counter

from .analysis.groups import Analysis
from .depth import find_blocks
from .prune import PruneResult


def frozen_reasons(analysis: Analysis) -> dict[str, int]:
    """Reason → number of frozen groups it applies to."""
    c: Counter = Counter()
    for g in analysis.frozen:
        c.update(set(g.frozen_reasons))
    return dict(c.most_common())


def group_rows(analysis: Analysis) -> list[dict]:
    rows = []
    for g in analysis.groups:
        weights = sorted({d.tensor for d in g.carriers()})
        rows.append(
            {
                "id": g.id,
                "key": g.key,
                "kind": g.kind,
                "units": g.units,
                "unit_width": g.unit_width,
                "members": len(g.dims),
                "weights": weights,
                "frozen": g.frozen,
                "reasons": sorted(set(g.frozen_reasons)),
            }
        )
    return rows


def build_report(
    result: PruneResult,
    *,
    input_path: str = "",
    output_path: str = "",
    options=None,
    extra: dict | None = None,
) -> dict:
    """The JSON report of ``result``; ``options`` is the PruneOptions it ran with."""
    a = result.analysis
    if options is not None and not isinstance(options, dict):
        options = {**options.summary(), "calibration_batches": result.calibration_batches}
    pruned_keys = {gp.key: gp for gp in result.plan.groups}
    rep = {
        "input": input_path,
        "output": output_path,
        "options": options or {},
        "params": {"before": result.before["params"], "after": result.after["params"]},
        "macs": {"before": result.before["macs"], "after": result.after["macs"]},
        "bytes": {"before": result.before["bytes"], "after": result.after["bytes"]},
        "input_shapes": result.shapes.to_dict() if result.shapes is not None else {},
        "memory_estimate": dict(result.memory),
        # a target's record: what was asked, predicted (latency) and resolved (round_to)
        "budget": dict(result.plan.budget or {}),
        "parity": result.parity.to_dict(),
        "groups": {
            "total": len(a.groups),
            "pruned": len(pruned_keys),
            "frozen": len(a.frozen),
            "frozen_reasons": frozen_reasons(a),
            "dropped_blocks": [gp.key for gp in result.plan.groups if gp.drop],
            "pruned_detail": result.layers,
        },
        "time_s": round(sum(result.timings.values()), 4),
        "timings_s": {k: round(v, 4) for k, v in result.timings.items()},
        "passes": [r.to_dict() for r in result.passes],
    }
    rep.update(result.evaluation)
    rep.update(extra or {})
    return rep


def _pct(before: float, after: float) -> str:
    return f"{(after - before) / before * 100:+.1f}%" if before else "n/a"


def _short(text: str, width: int) -> str:
    return text if len(text) <= width else "..." + text[-(width - 3) :]


def format_layers(rows: list[dict], limit: int | None = 12) -> str:
    """The per-layer table: the ``limit`` groups with the largest MACs share (all: None)."""
    shown = sorted(rows, key=lambda r: -r["macs_share"])
    shown = shown if limit is None else shown[:limit]
    width = min(56, max([5, *(len(r["key"]) for r in shown)]))
    lines = [
        f"  {'layer (group)':<{width}} {'kind':<8} {'units':>11} {'MACs share':>10} "
        f"{'removed':>8}  what"
    ]
    for r in shown:
        units = f"{r['units_before']}->{r['units_after']}"
        what = r["removed"] + (" (approx.)" if r.get("approximate") else "")
        lines.append(
            f"  {_short(r['key'], width):<{width}} {r['kind']:<8} {units:>11} "
            f"{r['macs_share'] * 100:>9.1f}% {r['macs_removed'] * 100:>7.1f}%  {what}"
        )
    if len(shown) < len(rows):
        lines.append(f"  ... {len(rows) - len(shown)} more groups (-v lists all)")
    return "\n".join(lines)


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB"


def format_summary(rep: dict, detail: int = 1) -> str:
    """The text summary: ``detail`` 0 is one line, 1 the summary with the largest layers,
    2 every layer and the passes' times."""
    g = rep["groups"]
    verb = "would prune" if rep.get("dry_run") else "pruned"
    if detail <= 0:
        p = rep["parity"]["status"]
        return (
            f"{verb} {rep['input']} -> {rep['output'] or '(not written)'}: params "
            f"{_pct(rep['params']['before'], rep['params']['after'])}, MACs "
            f"{_pct(rep['macs']['before'], rep['macs']['after'])}, parity {p}"
        )
    lines = [
        f"{verb} {rep['input']} -> {rep['output'] or '(not written)'}",
        f"  groups    {g['total']} total, {g['pruned']} pruned, {g['frozen']} frozen",
    ]
    for key in ("params", "macs", "bytes"):
        b, a = rep[key]["before"], rep[key]["after"]
        if a is None:
            continue
        note = ", predicted" if rep.get("dry_run") else ""
        lines.append(f"  {key:<9} {b:,} -> {a:,}  ({_pct(b, a)}{note})")
    shapes = rep.get("input_shapes") or {}
    if any(v["from"] != "static" for v in shapes.values()):
        at = ", ".join(
            f"{n} {'x'.join(map(str, v['shape'])) or 'scalar'} ({v['from']})"
            for n, v in shapes.items()
        )
        lines.append(f"            MACs counted at {at}")
    mem = rep.get("memory_estimate") or {}
    if rep.get("dry_run") and mem:
        where = "on disk" if mem["on_disk"] else "in memory"
        lines.append(
            f"  memory    {_gb(mem['peak'])} estimated peak: weights {_gb(mem['weights'])} "
            f"({where}, {_gb(mem['held'])} held), calibration {_gb(mem['calibration'])}, "
            f"runtime {_gb(mem['runtime'])}"
        )
    p = rep["parity"]
    if p["status"] == "skipped":
        lines.append("  parity    skipped")
    else:
        lines.append(
            f"  parity    {p['status']} (max abs diff {p['max_abs_diff']:.2e}, "
            f"max rel diff {p['max_rel_diff']:.2e}, {p['inputs']} inputs)"
        )
        if p.get("note"):
            lines.append(f"            {p['note']}")
        if p.get("mask_check"):  # reconstructed: the plain removal was checked first
            lines.append(
                f"            before reconstruction: {p['mask_check']} vs the masked original"
            )
    if "eval" in rep:
        ev = rep["eval"]
        lines.append(
            f"  held-out  mean cosine {ev['mean_cosine']:.4f}, max abs diff "
            f"{ev['max_abs_diff']:.3e}, mean abs diff {ev['mean_abs_diff']:.3e} "
            f"({ev['samples']} samples of {ev['data']})"
        )
    if "accuracy" in rep:
        acc = rep["accuracy"]
        lines.append(
            f"  accuracy  {acc['before']:.4f} -> {acc['after']:.4f}  "
            f"({acc['samples']} samples of {acc['data']})"
        )
    if "stages" in rep:
        for st in rep["stages"]:
            q = st.get("quality") or {}
            parts = [f"{st['bytes']:,} bytes"]
            if "mean_cosine" in q:
                parts.append(f"cosine {q['mean_cosine']:.4f} to the pruned")
            if "accuracy" in st:
                parts.append(f"accuracy {st['accuracy']:.4f}")
            if "latency_ms" in st:
                parts.append(f"{st['latency_ms']:.3f} ms ({st['speedup']:.2f}x)")
            lines.append(f"  {st['name']:<9} {', '.join(parts)}  [{st.get('note', '')}]")
    if "bench" in rep:
        from .bench import BenchRow, BenchTable, format_bench

        table = BenchTable(rows=[BenchRow(**r) for r in rep["bench"]["rows"]])
        lines.append("  latency   ONNX Runtime, CPU, interleaved:")
        lines += ["    " + line for line in format_bench(table).splitlines()]
        target = rep["bench"].get("target_speedup")
        if target:
            b = rep["bench"]
            lines.append(
                f"            requested speedup {target:.2f}x, measured "
                f"{b['reached_speedup']:.2f}x at {b['target_threads']} thread(s)"
            )
    lines.append(f"  time      {rep['time_s']:.2f} s")
    if g.get("pruned_detail"):
        lines += ["", format_layers(g["pruned_detail"], None if detail >= 2 else 12)]
    if detail >= 2:
        lines += ["", "  passes:"]
        lines += [f"    {k:<12} {v:.3f} s" for k, v in rep["timings_s"].items()]
    return "\n".join(lines)


def format_analysis(analysis: Analysis, verbose: bool = False) -> str:
    rows = group_rows(analysis)
    lines = [
        f"{len(rows)} groups: {len(analysis.prunable)} prunable, {len(analysis.frozen)} frozen",
        "",
    ]
    lines.append(f"{'id':>4}  {'kind':<8} {'units':>9}  {'status':<8} group (anchor) / reason")
    for r in rows:
        status = "frozen" if r["frozen"] else "prunable"
        if analysis.groups[r["id"]].width_only:
            status = "width"  # prunable with --hidden (approximate)
        units = f"{r['units']}" + (f"x{r['unit_width']}" if r["unit_width"] > 1 else "")
        w = ", ".join(r["weights"][:4]) + (" ..." if len(r["weights"]) > 4 else "")
        lines.append(
            f"{r['id']:>4}  {r['kind']:<8} {units:>9}  {status:<8} {r['key']}"
            f"  [{r['members']} dims; weights: {w}]"
        )
        for reason in r["reasons"][: None if verbose else 3]:
            lines.append(f"{'':>33}- {reason}")
    blocks = find_blocks(analysis)
    if blocks:
        lines += [
            "",
            "droppable sub-blocks (--drop-layers N drops the lowest scores; "
            "score = norm of what the block writes to the residual):",
        ]
        lines += [
            f"  {b.index:>4}  {b.kind:<9} score {b.score:10.4f}  group {b.group.key}"
            for b in blocks
        ]
    reasons = frozen_reasons(analysis)
    if reasons:
        lines += ["", "frozen groups by reason:"]
        lines += [f"  {n:>4}  {reason}" for reason, n in reasons.items()]
    return "\n".join(lines)
