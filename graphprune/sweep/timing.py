"""Latency of every row, timed serially and interleaved with the original."""

from __future__ import annotations

from pathlib import Path

from .. import progress
from ..options import PruneOptions
from .grid import Grid

ALL_AT_ONCE = 8  # grids up to this size are timed in one interleaved measurement


def _timing_data(model, fixed: dict):
    from ..calibration import calibration_feeds
    from ..evaluate import load_data

    if fixed.get("eval") is not None:
        return load_data(fixed["eval"], model)[0]
    if fixed.get("calib") is not None:
        feeds = calibration_feeds(fixed["calib"], model)
        return feeds[0] if feeds else None
    return None


def measure_latency(model_path: Path, rows: list[dict], grid: Grid, min_time_s: float) -> None:
    """latency_ms / speedup on every ok row (row 0 is the original), timed serially and
    interleaved with the original, at the first thread count (all counts in latency_by)."""
    import onnx

    from ..bench import measure, timing_feed

    model = onnx.load(str(model_path))
    given = PruneOptions(input_shape=grid.fixed.get("input_shape")).input_shape
    feed = timing_feed(model, given or None, _timing_data(model, grid.fixed))
    ok = [r for r in rows[1:] if r["status"] == "ok"]
    batches = [ok] if len(ok) <= ALL_AT_ONCE else [[r] for r in ok]
    original_times: dict[int, list[float]] = {n: [] for n in grid.threads}
    for i, batch in enumerate(batches):
        table = measure(
            [model_path, *[r["model"] for r in batch]],
            feed,
            names=["original", *[r["id"] for r in batch]],
            threads=grid.threads,
            min_time_s=min_time_s,
        )
        for n in grid.threads:
            original_times[n].append(table.row("original", n).median_ms)
            for r in batch:
                br = table.row(r["id"], n)
                r.setdefault("latency_by", {})[str(n)] = br.median_ms
                if n == grid.threads[0]:
                    r["latency_ms"], r["speedup"] = br.median_ms, br.speedup
        progress.advance("latency", i + 1, len(batches))
    orig = rows[0]
    if not ok:  # the original alone
        table = measure(
            [model_path], feed, names=["original"], threads=grid.threads, min_time_s=min_time_s
        )
        for n in grid.threads:
            original_times[n].append(table.row("original", n).median_ms)
    for n in grid.threads:
        ms = round(float(sorted(original_times[n])[len(original_times[n]) // 2]), 4)
        orig.setdefault("latency_by", {})[str(n)] = ms
    orig["latency_ms"], orig["speedup"] = orig["latency_by"][str(grid.threads[0])], 1.0
