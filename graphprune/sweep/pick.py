"""``--pick CONSTRAINT``: parsing it, choosing the row, the pick.toml that reproduces it."""

from __future__ import annotations

import math
import re
from pathlib import Path

from ..errors import NothingPruned, UsageError

#: the constraint metrics of --pick and whether a pick maximises quality among those meeting it
PICK_METRICS = {"quality": False, "macs": False, "params": False, "latency": True, "speedup": True}


_CONSTRAINT = re.compile(r"^\s*([a-z]+)\s*(>=|<=|>|<)\s*([-+0-9.eE]+)\s*$")


def parse_constraint(text: str) -> tuple[str, str, float]:
    m = _CONSTRAINT.match(text or "")
    if not m or m.group(1) not in PICK_METRICS:
        raise UsageError(
            f"--pick takes METRIC>=V or METRIC<=V with METRIC one of "
            f"{', '.join(PICK_METRICS)}, got {text!r}"
        )
    try:
        value = float(m.group(3))
    except ValueError:
        raise UsageError(f"--pick: {m.group(3)!r} is not a number") from None
    if not math.isfinite(value):
        raise UsageError(f"--pick: {m.group(3)!r} is not a finite number")
    return m.group(1), m.group(2), value


def _column(metric: str) -> str:
    return {"latency": "latency_ms", "macs": "macs_kept", "params": "params_kept"}.get(
        metric, metric
    )


def _meets(v, op: str, bound: float) -> bool:
    return {">=": v >= bound, "<=": v <= bound, ">": v > bound, "<": v < bound}[op]


def pick(rows: list[dict], constraint: str) -> dict:
    """The best pruned row meeting ``constraint`` (NothingPruned when none does)."""
    metric, op, bound = parse_constraint(constraint)
    col = _column(metric)
    cands = [r for r in rows[1:] if r["status"] == "ok" and r.get(col) is not None]
    if metric == "quality" and not cands and any(r["status"] == "ok" for r in rows[1:]):
        raise UsageError("--pick quality needs --eval data")
    meeting = [r for r in cands if _meets(r[col], op, bound)]
    if not meeting:
        if not cands:
            raise NothingPruned(
                f"no configuration meets {constraint}: none was pruned", option="--pick"
            )
        best = (max if op in (">=", ">") else min)(cands, key=lambda r: r[col])
        raise NothingPruned(
            f"no configuration meets {constraint}: the best {metric} reached is "
            f"{best[col]:.4g} ({best['id']})",
            option="--pick",
        )
    inf = float("inf")
    if PICK_METRICS[metric]:  # a speed constraint: the highest quality, then the fastest
        return max(
            meeting, key=lambda r: (_num(r.get("quality"), -inf), -_num(r.get("latency_ms"), inf))
        )
    return min(
        meeting, key=lambda r: (_num(r.get("latency_ms"), inf), -_num(r.get("quality"), -inf))
    )


def _num(v, default: float) -> float:
    return default if v is None else float(v)


def _pick_toml(settings: dict, row: dict, model_path: Path, constraint: str, path) -> str:
    from ..config import dump_toml

    comment = (
        f"graphprune sweep pick ({constraint}): configuration {row['id']} of {model_path.name}\n"
        f"reproduce: graphprune prune {model_path} --config {path} -o OUT.onnx"
    )
    return dump_toml(dict(settings), comment)
