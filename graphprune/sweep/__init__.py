"""``graphprune sweep MODEL --out DIR``: a grid of prunes, each measured, with its Pareto front.

Every ``prune`` option of ``OPTIONS`` that takes a number or a choice is a possible grid
axis: given several comma-separated values (``--ratio 0.2,0.4 --criterion l2,wanda``) it
multiplies the grid; given one value it applies to every configuration, like the options
that are never axes (data, ``--input-shape``, ``--exclude``, ``--no-parity``...).

Each configuration is pruned (in ``--jobs`` worker processes, "spawn" context, or with
``--ray`` as Ray tasks, ``graphprune.cluster``), its model written to
``DIR/models/<id>.onnx`` and its row (params, MACs, bytes, parity, quality on ``--eval``
data) appended to ``DIR/state.jsonl`` as soon as it finishes, keyed by a hash of the
model's sha256 and the configuration's options: a rerun reuses those. Latency is then
measured in this process, serially and interleaved with the original
(``graphprune.bench.measure``). ``results.csv`` / ``results.json`` hold every row with its
Pareto marks (latency/quality and MACs/quality), ``sweep.png`` / ``sweep.svg`` plot them
(with matplotlib, when it is installed) and ``--pick CONSTRAINT`` writes the best model
that meets a constraint with the config that reproduces it (``pick.toml``).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from pathlib import Path

from .. import progress
from ..errors import NothingPruned, UsageError
from ..options import OPTIONS, PruneOptions
from ..outputs import same_file
from .grid import REFUSED, build_grid, is_axis
from .pareto import pareto
from .pick import _pick_toml, parse_constraint
from .pick import pick as pick_row
from .results import _add_plot, _csv_text, _original_row, _row_out, format_table
from .run import _muted_progress, _run_parallel, _run_ray, run_config
from .state import (
    META,
    _open_dir,
    _record,
    _write_atomic,
    config_key,
    file_sha256,
    read_state,
    sweep_identity,
)
from .timing import measure_latency


def add_parser(subparsers) -> argparse.ArgumentParser:
    """The ``sweep`` sub-command on the CLI's subparsers (its parser class raises
    UsageError on bad arguments)."""
    p = subparsers.add_parser(
        "sweep",
        help="prune a grid of configurations, measure each, mark the Pareto front",
        description="Prune MODEL once per configuration of a grid (options given several "
        "comma-separated values, e.g. --ratio 0.2,0.4 --criterion l2,wanda), measure params, "
        "MACs, latency and quality on --eval data, and mark the Pareto front.",
        argument_default=argparse.SUPPRESS,  # defaults live in PruneOptions only
    )
    p.add_argument("model")
    p.add_argument("--out", required=True, metavar="DIR", help="sweep directory (resumable)")
    p.add_argument(
        "--jobs", default="1", metavar="N", help="configurations pruned in parallel (default 1)"
    )
    p.add_argument(
        "--pick",
        default=None,
        metavar="CONSTRAINT",
        help="write the best model meeting CONSTRAINT: quality>=Q (relative to the original), "
        "macs<=F or params<=F (fraction kept): the fastest; latency<=MS (1 thread) or "
        "speedup>=S: the highest quality",
    )
    p.add_argument(
        "--pick-output", default=None, metavar="PATH", help="the pick (default DIR/pick.onnx)"
    )
    p.add_argument(
        "--bench-time",
        default="1.0",
        metavar="S",
        help="seconds each latency measurement runs at least (default 1)",
    )
    for opt in OPTIONS:
        kw: dict = {"dest": opt.name}
        if opt.name in REFUSED:
            kw["help"] = argparse.SUPPRESS
            kw["action"] = "store_const" if opt.action else "store"
            if opt.action:
                kw["const"] = True
            p.add_argument(opt.flag, **kw)
            continue
        if opt.name == "threads":
            kw["help"] = "intra-op thread counts latency is measured at (default 1)"
        elif opt.name == "ray":
            kw["help"] = (
                "run the configurations as Ray tasks (--jobs is then the cluster's CPUs): auto "
                "joins a running cluster (`ray start --head`), local starts one here; the model, "
                "data and --out must be on storage every node sees"
            )
        elif is_axis(opt):
            kw["help"] = opt.help + " [grid axis: V1,V2,...]"
        else:
            kw["help"] = opt.help
        if opt.action:
            kw["action"] = opt.action
        if opt.choices:
            kw["metavar"] = "{" + ",".join(opt.choices) + "}"
        elif opt.metavar and opt.action not in ("store_true", "store_false"):
            kw["metavar"] = opt.metavar
        p.add_argument(opt.flag, **kw)
    return p


def command(args) -> int:
    t0 = time.perf_counter()
    model_path = Path(args.model)
    out = Path(args.out)
    from ..graph import load_model

    load_model(str(model_path))  # exit 3 with the one-line reason before any work
    jobs = _positive_int("--jobs", getattr(args, "jobs", "1"))
    bench_time = _positive_float("--bench-time", getattr(args, "bench_time", "1.0"))
    constraint = getattr(args, "pick", None)
    if constraint is not None:
        parse_constraint(constraint)
    pick_path = Path(getattr(args, "pick_output", None) or out / "pick.onnx")
    if constraint is not None and same_file(model_path, pick_path):
        raise UsageError("--pick-output is the input model; refusing to overwrite it")
    if out.resolve() == model_path.resolve():
        raise UsageError("--out is the input model; give a directory")
    grid = build_grid(args)
    ray_mode = PruneOptions(ray=getattr(args, "ray", None)).ray  # checked as prune checks it
    if (
        constraint is not None
        and parse_constraint(constraint)[0] == "quality"
        and (grid.fixed.get("eval") is None)
    ):
        raise UsageError("--pick quality needs --eval data")
    model_sha = file_sha256(model_path)
    identity = sweep_identity(model_sha, grid)
    _open_dir(out, identity, model_path)

    ids = [config_key(model_sha, c) for c in grid.configs]
    (out / "models").mkdir(parents=True, exist_ok=True)
    meta = {**identity, "model": str(model_path)}
    _write_atomic(out / META, json.dumps(meta, indent=1, sort_keys=True, default=str) + "\n")
    done = read_state(out, model_sha)
    rows: dict[str, dict] = {}
    for cid in ids:
        row = done.get(cid)
        if row is None or row.get("error", "").startswith("worker failed"):
            continue  # not run, or its worker died: run it (again)
        if row["status"] != "ok" or (out / row.get("model", "")).is_file():
            rows[cid] = row
    reused = len(rows)
    todo = [(cid, c) for cid, c in zip(ids, grid.configs, strict=True) if cid not in rows]
    total = len(ids)
    progress.advance("sweep", reused, total)

    def finished(cid: str, row: dict) -> None:
        row["model"] = f"models/{cid}.onnx" if row["status"] == "ok" else ""  # under DIR
        rows[cid] = row
        _record(out, model_sha, cid, row)
        progress.advance("sweep", len(rows), total)

    if ray_mode is not None and todo:
        from .. import cluster

        cluster.connect(ray_mode)  # exit 10 when --ray auto finds no cluster
        _run_ray(model_path, out, todo, finished)
    elif jobs == 1 or len(todo) <= 1:
        for cid, c in todo:
            with _muted_progress():
                row = run_config(str(model_path), c, str(out / "models" / f"{cid}.onnx"))
            finished(cid, row)
    else:
        _run_parallel(model_path, out, todo, jobs, finished)

    configs = dict(zip(ids, grid.configs, strict=True))
    table_rows = []
    for cid in ids:
        r = {**rows[cid], "id": cid, "options": grid.axis_values(configs[cid])}
        r["model"] = str(out / r["model"]) if r.get("model") else ""
        table_rows.append(r)
    first_ok = next((r for r in table_rows if r["status"] == "ok"), None)
    all_rows = [
        _original_row(model_path, first_ok, grid.fixed.get("eval") is not None),
        *table_rows,
    ]
    measure_latency(model_path, all_rows, grid, bench_time)
    front_l, front_m = pareto(all_rows, "latency_ms"), pareto(all_rows, "macs_kept")
    for r in all_rows:
        r["pareto_latency"] = r["id"] in front_l
        r["pareto_macs"] = r["id"] in front_m

    axes = list(grid.axes)
    chosen, refusal = None, None
    if constraint is not None:
        try:
            chosen = pick_row(all_rows, constraint)
        except NothingPruned as e:  # the results are still written; no pick is
            refusal = e
    results = {
        "model": str(model_path),
        "model_sha256": model_sha,
        "options": {
            "axes": grid.axes,
            "fixed": grid.fixed,
            "threads": list(grid.threads),
            "jobs": jobs,
            "ray": ray_mode,
            "pick": constraint,
        },
        "rows": [_row_out(r) for r in all_rows],
        "pareto": {
            "latency": [r["id"] for r in all_rows if r["pareto_latency"]],
            "macs": [r["id"] for r in all_rows if r["pareto_macs"]],
        },
        "reused": reused,
        "pick": chosen["id"] if chosen else None,
        "time_s": round(time.perf_counter() - t0, 3),
    }
    from ..outputs import Outputs

    outs = Outputs()
    outs.add_text(out / "results.csv", _csv_text(all_rows, axes))
    outs.add_json(out / "results.json", results)
    plotted = _add_plot(outs, out, all_rows, model_path.name)
    if chosen is not None:
        src = chosen["model"]
        outs.add(pick_path, lambda tmp: shutil.copyfile(src, tmp))
        settings = configs[chosen["id"]]
        outs.add_text(
            out / "pick.toml",
            _pick_toml(settings, chosen, model_path, constraint, out / "pick.toml"),
        )
    outs.commit()
    if not plotted:  # a plot of an earlier run would not show these results
        for name in ("sweep.png", "sweep.svg"):
            (out / name).unlink(missing_ok=True)

    print(format_table(all_rows, axes))
    failed = sum(r["status"] != "ok" for r in table_rows)
    errors = dict.fromkeys(
        f"exit {r['exit_code']}: {r['error']}" for r in table_rows if r["status"] != "ok"
    )
    for i, e in enumerate(errors):
        if i == 3:
            print(f"  ... and {len(errors) - 3} other errors (results.json has every one)")
            break
        print(f"  failed: {e}")
    print(
        f"{total} configurations: {len(todo)} run, {reused} reused, {failed} failed; "
        f"results in {out / 'results.csv'}" + ("" if plotted else f" (no plot: {plotted.reason})")
    )
    if refusal is not None:
        raise refusal
    if chosen is not None:
        print(f"pick ({constraint}): {chosen['id']} -> {pick_path}, config {out / 'pick.toml'}")
    return 0


def _positive_int(flag: str, value) -> int:
    try:
        n = int(str(value))
    except ValueError:
        raise UsageError(f"{flag} takes an integer, got {value!r}") from None
    if n < 1:
        raise UsageError(f"{flag} must be >= 1, got {n}")
    return n


def _positive_float(flag: str, value) -> float:
    try:
        x = float(str(value))
    except ValueError:
        raise UsageError(f"{flag} takes a number, got {value!r}") from None
    if not math.isfinite(x) or x < 0:
        raise UsageError(f"{flag} must be a number >= 0, got {value!r}")
    return x
