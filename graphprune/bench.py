"""Latency of models in ONNX Runtime on this machine's CPU, measured so they can be compared.

Models are timed *interleaved*: one call of each in turn, round after round, so a burst of
load from elsewhere on the machine slows every model alike instead of the one that happened
to run then. Every model is warmed up first, each thread count gets its own sessions, and
rounds go on until both ``min_runs`` and ``min_time_s`` are reached. The table gives median
and p90 latency, the speedup against the first model and the ideal speedup from the MAC
ratio, with the fraction of the ideal reached.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from . import weights
from .errors import ModelLoadError, UsageError
from .validate import one_line, quiet_run


def default_threads() -> tuple[int, ...]:
    """1 thread and all cores (just 1 on a one-core machine)."""
    return tuple(dict.fromkeys((1, os.cpu_count() or 1)))


@dataclass
class BenchRow:
    model: str
    threads: int
    median_ms: float
    p90_ms: float
    runs: int
    macs: int | None = None
    speedup: float = 1.0  # the first model's median / this one's, at the same threads
    ideal: float | None = None  # the first model's MACs / this one's
    fraction_of_ideal: float | None = None  # speedup / ideal


@dataclass
class BenchTable:
    rows: list[BenchRow] = field(default_factory=list)
    feed: dict[str, list[int]] = field(default_factory=dict)  # input -> shape timed

    def to_dict(self) -> dict:
        return {"feed": self.feed, "rows": [asdict(r) for r in self.rows]}

    def row(self, model: str, threads: int) -> BenchRow:
        return next(r for r in self.rows if r.model == model and r.threads == threads)


def timing_session(model, threads: int, profile_dir: str | None = None) -> ort.InferenceSession:
    """The session every timing uses (bench, and the latency model's samples): all graph
    optimisations, ``threads`` intra-op threads, sequential; profiled into ``profile_dir``."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    if profile_dir is not None:
        so.enable_profiling = True
        so.profile_file_prefix = os.path.join(profile_dir, "gp")
    data = (  # weights on disk are read from their folder, packed as a deployment would
        weights.session_source(model, so, prepack=True)
        if isinstance(model, onnx.ModelProto)
        else str(model)
    )
    try:
        return ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise ModelLoadError(f"ONNX Runtime cannot load a model to time: {one_line(e)}") from e


def measure(
    models: Sequence[onnx.ModelProto | str | Path],
    feed: dict[str, np.ndarray],
    *,
    names: Sequence[str] | None = None,
    macs: Sequence[int | None] | None = None,
    threads: Sequence[int] = (),
    warmup: int = 3,
    min_runs: int = 20,
    min_time_s: float = 2.0,
    max_runs: int = 2000,
) -> BenchTable:
    """Time every model on ``feed`` (input name -> array; inputs a model lacks are left
    out of its feed), interleaved call by call, at each thread count."""
    if not models:
        raise UsageError("nothing to time")
    names = list(names or [str(m) if not isinstance(m, onnx.ModelProto) else f"model{i}"
                           for i, m in enumerate(models)])
    macs = list(macs) if macs is not None else [None] * len(models)
    table = BenchTable(feed={k: list(np.shape(v)) for k, v in feed.items()})
    run_options = quiet_run()
    for n in threads or default_threads():
        sessions = [timing_session(m, n) for m in models]
        feeds = []
        for s in sessions:
            wanted = {i.name for i in s.get_inputs()}
            feeds.append({k: v for k, v in feed.items() if k in wanted})
        try:
            for s, f in zip(sessions, feeds, strict=True):
                for _ in range(warmup):
                    s.run(None, f, run_options)
        except Exception as e:
            raise UsageError(f"a model does not run on the timing inputs: {one_line(e)}") from e
        times: list[list[float]] = [[] for _ in sessions]
        start = time.perf_counter()
        rounds = 0
        while rounds < max_runs and (
            rounds < min_runs or time.perf_counter() - start < min_time_s
        ):
            for i, (s, f) in enumerate(zip(sessions, feeds, strict=True)):
                t0 = time.perf_counter()
                s.run(None, f, run_options)
                times[i].append((time.perf_counter() - t0) * 1e3)
            rounds += 1
        medians = [float(np.median(t)) for t in times]
        for i, t in enumerate(times):
            row = BenchRow(
                model=names[i],
                threads=n,
                median_ms=round(medians[i], 4),
                p90_ms=round(float(np.percentile(t, 90)), 4),
                runs=len(t),
                macs=macs[i],
                speedup=round(medians[0] / medians[i], 4),
            )
            if macs[0] and macs[i]:
                row.ideal = round(macs[0] / macs[i], 4)
                row.fraction_of_ideal = round(row.speedup / row.ideal, 4)
            table.rows.append(row)
    return table


def format_bench(table: BenchTable) -> str:
    """The table as text: one line per model and thread count."""
    width = max(12, *(len(r.model) for r in table.rows))
    head = (
        f"{'model':<{width}} {'threads':>7} {'median ms':>10} {'p90 ms':>9} {'speedup':>8} "
        f"{'ideal':>7} {'of ideal':>8}"
    )
    lines = [head]
    for r in table.rows:
        ideal = f"{r.ideal:.2f}x" if r.ideal else "-"
        frac = f"{r.fraction_of_ideal * 100:.0f}%" if r.fraction_of_ideal is not None else "-"
        lines.append(
            f"{r.model:<{width}} {r.threads:>7} {r.median_ms:>10.3f} {r.p90_ms:>9.3f} "
            f"{r.speedup:>7.2f}x {ideal:>7} {frac:>8}"
        )
    return "\n".join(lines)


def timing_feed(
    model: onnx.ModelProto,
    given: dict | None = None,
    data: dict[str, np.ndarray] | None = None,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """One feed to time ``model`` on: the first sample of ``data`` (input name -> samples)
    where it has the input, else random values at the ``--input-shape`` sizes, the
    declared ones, or probed sizes (as prune counts MACs)."""
    from .evaluate import fixed_batch
    from .shapes import resolve
    from .validate import random_feed, run_error

    sess = timing_session(model, 1)
    rng = np.random.default_rng(seed)
    sample = {}
    for k, v in (data or {}).items():
        v = np.asarray(v)
        sample[k] = v if v.ndim == 0 else v[: fixed_batch(model) or 1]

    def error_at(shapes) -> str | None:
        return run_error(sess, random_feed(model, sess, shapes, rng, sample))

    shapes = resolve(model, given, sample or None, lambda s: error_at(s) is None, error_at)
    return random_feed(model, sess, dict(shapes.shapes), rng, sample)


def bench_pruned(original, result, opts, stages=()) -> dict:
    """``prune --bench``: the original and the pruned model (and each later stage's model:
    optimised, quantized) timed interleaved at the shapes the prune used; with a latency
    target, how close the measured speedup came to it."""
    from .graph import load_model

    base = original if isinstance(original, onnx.ModelProto) else load_model(original)
    data = result.sample
    shapes = dict(result.shapes.shapes) if result.shapes is not None else None
    feed = timing_feed(base, shapes, data, opts.seed)
    models, names = [base, result.model], ["original", "pruned"]
    macs = [result.before["macs"], result.after["macs"]]
    for st in stages:  # a fused or quantized graph does the pruned model's arithmetic
        if st.model is not None:
            models.append(st.model)
            names.append(st.name)
            macs.append(result.after["macs"])
    table = measure(models, feed, names=names, macs=macs, threads=opts.threads)
    out = table.to_dict()
    budget = result.plan.budget or {}
    if budget.get("what") in ("latency", "latency_ms"):
        threads = int(budget.get("threads", opts.threads[0] if opts.threads else 1))
        row = next((r for r in table.rows if r.model == "pruned" and r.threads == threads), None)
        if row is None:
            row = measure(models[:2], feed, names=names[:2], threads=(threads,)).row(
                "pruned", threads
            )
        base_row = next(r for r in table.rows if r.model == "original")
        target = (
            opts.target_speedup
            if opts.target_speedup is not None
            else base_row.median_ms / opts.target_latency
        )
        out.update(
            target_speedup=round(float(target), 4),
            target_threads=threads,
            reached_speedup=row.speedup,
            predicted_speedup=budget.get("predicted_speedup"),
        )
    return out
