"""``graphprune sweep MODEL --out DIR``: a grid of prunes, each measured, with its Pareto front.

Every ``prune`` option of ``OPTIONS`` that takes a number or a choice is a possible grid
axis: given several comma-separated values (``--ratio 0.2,0.4 --criterion l2,wanda``) it
multiplies the grid; given one value it applies to every configuration, like the options
that are never axes (data, ``--input-shape``, ``--exclude``, ``--no-parity``...).

Each configuration is pruned (in ``--jobs`` worker processes, "spawn" context), its model
written to ``DIR/models/<id>.onnx`` and its row (params, MACs, bytes, parity, quality on
``--eval`` data) appended to ``DIR/state.jsonl`` as soon as it finishes, keyed by a hash of
the model's sha256 and the configuration's options: a rerun reuses those. Latency is then
measured in this process, serially and interleaved with the original
(``graphprune.bench.measure``). ``results.csv`` / ``results.json`` hold every row with its
Pareto marks (latency/quality and MACs/quality), ``sweep.png`` / ``sweep.svg`` plot them
(with matplotlib, when it is installed) and ``--pick CONSTRAINT`` writes the best model
that meets a constraint with the config that reproduces it (``pick.toml``).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import io
import itertools
import json
import math
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from . import progress
from .errors import GraphpruneError, NothingPruned, UsageError
from .options import OPTIONS, Option, PruneOptions
from .outputs import same_file

#: options a sweep refuses: what they add is done once, to the pick, with ``prune``
REFUSED = {
    "bench": "latency is always measured by a sweep",
    "optimize": "apply it to the pick with `graphprune prune --config DIR/pick.toml`",
    "quantize": "apply it to the pick with `graphprune prune --config DIR/pick.toml`",
    "emit": "apply it to the pick with `graphprune prune --config DIR/pick.toml`",
    "min_quality": "choose among the configurations with --pick quality>=Q",
}
#: options that are not grid axes though they take a value: paths, lists, the timing threads
_NOT_AXES = {"threads", "drop_list", "plan", "calib", "eval"}
#: the measured fields of a row, in the order CSV lists them (after id, status, the axes)
FIELDS = (
    "params",
    "params_kept",
    "macs",
    "macs_kept",
    "bytes",
    "parity",
    "accuracy_before",
    "accuracy_after",
    "mean_cosine",
    "quality",
    "latency_ms",
    "speedup",
    "prune_s",
    "pareto_latency",
    "pareto_macs",
    "exit_code",
    "error",
    "model",
)
STATE = "state.jsonl"
META = "sweep-meta.json"
#: the constraint metrics of --pick and whether a pick maximises quality among those meeting it
PICK_METRICS = {"quality": False, "macs": False, "params": False, "latency": True, "speedup": True}
ALL_AT_ONCE = 8  # grids up to this size are timed in one interleaved measurement


def is_axis(opt: Option) -> bool:
    """An option a sweep accepts several comma-separated values of."""
    if opt.name in _NOT_AXES or opt.name in REFUSED or opt.action:
        return False
    return bool(opt.choices or opt.metavar)


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


# -- the grid ---------------------------------------------------------------------------------
@dataclass
class Grid:
    fixed: dict  # field -> value, every configuration
    axes: dict  # field -> [values], several
    threads: tuple[int, ...]
    configs: list[dict]  # field -> value (fixed + this configuration's axis values)

    def axis_values(self, config: dict) -> dict:
        return {k: config[k] for k in self.axes}


def _flag(name: str) -> str:
    return next(o.flag for o in OPTIONS if o.name == name)


def _canonical(name: str, given, opts: PruneOptions):
    """The value a configuration records for ``name``: parsed, in a JSON/TOML form."""
    if name in ("calib", "eval", "plan"):
        return str(Path(given).resolve())
    if name == "input_shape":
        return list(given)  # the strings as typed (the parsed form has None keys)
    v = getattr(opts, name)
    if name == "parity":
        return bool(v)
    return list(v) if isinstance(v, tuple) else v


def build_grid(args) -> Grid:
    """The configurations the arguments ask for, each checked by PruneOptions (UsageError
    before any work)."""
    for name, why in REFUSED.items():
        if getattr(args, name, None) not in (None, False):
            raise UsageError(f"sweep does not take {_flag(name)}: {why}")
    fixed: dict = {}
    axes: dict = {}
    data = {k: getattr(args, k) for k in ("calib", "eval") if hasattr(args, k)}
    for opt in OPTIONS:
        if opt.name in REFUSED or opt.name == "threads" or not hasattr(args, opt.name):
            continue
        given = getattr(args, opt.name)
        if is_axis(opt) and isinstance(given, str) and "," in given:
            parts = [x.strip() for x in given.split(",")]
            if any(not x for x in parts):
                raise UsageError(f"{opt.flag}: empty value in {given!r}")
            values = []
            for x in parts:
                # the option's own message when bad (with the data, which some values need)
                o = PruneOptions(**{**data, opt.name: x})
                v = _canonical(opt.name, x, o)
                if v in values:
                    raise UsageError(f"{opt.flag} gives {x!r} twice")
                values.append(v)
            axes[opt.name] = values
        else:
            fixed[opt.name] = given
    fixed_opts = PruneOptions(**fixed)  # the fixed options alone must be valid
    fixed = {k: _canonical(k, v, fixed_opts) for k, v in fixed.items()}
    threads = PruneOptions(threads=getattr(args, "threads", None) or "1").threads
    configs = []
    for combo in itertools.product(*axes.values()):
        config = {**fixed, **dict(zip(axes, combo, strict=True))}
        try:
            PruneOptions(**config)
        except UsageError as e:
            shown = " ".join(f"{_flag(k)} {v}" for k, v in zip(axes, combo, strict=True))
            raise UsageError(f"configuration {shown}: {e}") from e
        configs.append(config)
    return Grid(fixed, axes, threads, configs)


def file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _json(data) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)


def config_key(model_sha: str, config: dict) -> str:
    """The id of a configuration of this model: its options and the model's content."""
    return hashlib.sha256(f"{model_sha}\n{_json(config)}".encode()).hexdigest()[:12]


def sweep_identity(model_sha: str, grid: Grid) -> dict:
    """What a sweep directory belongs to: the model and the options that are not axes (axis
    options, one value or several, only select configurations: a grid may grow)."""
    shared = {
        k: v for k, v in grid.fixed.items() if not is_axis(next(o for o in OPTIONS if o.name == k))
    }
    return {"model_sha256": model_sha, "shared_options": shared}


# -- one configuration (in a worker) ----------------------------------------------------------
def run_config(model_path: str, config: dict, out_path: str) -> dict:
    """Prune ``model_path`` with ``config``, write the model to ``out_path`` (atomically),
    return its row; a GraphpruneError is a failed row, not an exception."""
    from .prune import prune_model

    t0 = time.perf_counter()
    row: dict = {"status": "ok", "exit_code": 0, "error": ""}
    try:
        result = prune_model(model_path, PruneOptions(**config))
        if result.parity.status == "failed":
            raise _ParityFailed(result.parity.max_rel_diff)
        _save_model_atomic(result.model, out_path)
    except _ParityFailed as e:
        return {**row, "status": "failed", "exit_code": 6, "error": str(e), "prune_s": _s(t0)}
    except GraphpruneError as e:
        msg = " ".join(str(e).split())
        return {
            **row,
            "status": "failed",
            "exit_code": e.exit_code,
            "error": msg,
            "prune_s": _s(t0),
        }
    except Exception as e:  # a bug in a pass: the sweep goes on, the row says so
        msg = " ".join(f"internal error: {type(e).__name__}: {e}".split())
        return {**row, "status": "failed", "exit_code": 1, "error": msg, "prune_s": _s(t0)}
    before, after = result.before, result.after
    row.update(
        params=after["params"],
        params_kept=_ratio(after["params"], before["params"]),
        macs=after["macs"],
        macs_kept=_ratio(after["macs"], before["macs"]),
        bytes=Path(out_path).stat().st_size,
        parity=result.parity.status,
        prune_s=_s(t0),
        before={"params": before["params"], "macs": before["macs"], "bytes": before["bytes"]},
    )
    row.update(_quality(result.evaluation))
    return row


class _ParityFailed(Exception):
    def __init__(self, rel):
        super().__init__(f"parity failed (max rel diff {rel:.3e})")


def _s(t0: float) -> float:
    return round(time.perf_counter() - t0, 3)


def _ratio(a, b) -> float | None:
    return round(a / b, 6) if b else None


def _quality(evaluation: dict) -> dict:
    """Quality relative to the original: accuracy after / before with labels, else the
    outputs' mean cosine to the original's."""
    out = {"accuracy_before": None, "accuracy_after": None, "mean_cosine": None, "quality": None}
    if "eval" in evaluation:
        out["mean_cosine"] = round(evaluation["eval"]["mean_cosine"], 6)
        out["quality"] = out["mean_cosine"]
    if "accuracy" in evaluation:
        acc = evaluation["accuracy"]
        out["accuracy_before"] = acc["before"]
        out["accuracy_after"] = acc["after"]
        out["quality"] = round(acc["after"] / acc["before"], 6) if acc["before"] else None
    return out


def _save_model_atomic(model, path: str) -> None:
    import onnx

    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        onnx.save_model(model, tmp)
        _chmod_umask(tmp)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def _muted_progress():
    """An in-process prune's own stages and bars would replace the sweep's bar."""
    saved = progress.LISTENERS[:], progress.BAR_LISTENERS[:]
    progress.LISTENERS.clear()
    progress.BAR_LISTENERS.clear()
    try:
        yield
    finally:
        progress.LISTENERS[:], progress.BAR_LISTENERS[:] = saved


# -- the sweep directory ----------------------------------------------------------------------
def _open_dir(out: Path, identity: dict, model: Path) -> None:
    """Check ``out`` is new, empty, or this sweep's (UsageError otherwise); creates nothing."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file; give a directory")
    if not out.is_dir():
        return
    meta = out / META
    if not meta.is_file():
        if any(out.iterdir()):
            raise UsageError(f"--out {out} is not empty and not a sweep directory; give another")
        return
    try:
        known = json.loads(meta.read_text())
    except (OSError, ValueError) as e:
        raise UsageError(f"--out {out}: unreadable {META} ({e}); give another directory") from e
    if known.get("model_sha256") != identity["model_sha256"]:
        raise UsageError(
            f"--out {out} holds a sweep of another model ({known.get('model', '?')}); give another"
        )
    if known.get("shared_options") != json.loads(_json(identity["shared_options"])):
        raise UsageError(
            f"--out {out} holds a sweep with other options ({_json(known.get('shared_options'))})"
            "; give another directory"
        )


def read_state(out: Path, model_sha: str) -> dict[str, dict]:
    """Finished configurations: id -> row (a torn last line, from a kill, is skipped)."""
    rows: dict[str, dict] = {}
    path = out / STATE
    if not path.is_file():
        return rows
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and rec.get("model_sha256") == model_sha and "row" in rec:
            rows[rec["id"]] = rec["row"]
    return rows


def _record(out: Path, model_sha: str, cid: str, row: dict) -> None:
    line = _json({"id": cid, "model_sha256": model_sha, "row": row})
    path = out / STATE
    torn = False  # a line cut short by a kill: start on a line of our own
    if path.is_file() and path.stat().st_size:
        with open(path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            torn = f.read(1) != b"\n"
    with open(path, "a") as f:
        f.write(("\n" if torn else "") + line + "\n")
        f.flush()
        os.fsync(f.fileno())


# -- latency, Pareto, pick --------------------------------------------------------------------
def _timing_data(model, fixed: dict):
    from .calibration import calibration_feeds
    from .evaluate import load_data

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

    from .bench import measure, timing_feed

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


def pareto(rows: list[dict], cost: str) -> set[str]:
    """Ids of the rows no other row beats on ``cost`` (lower) and quality (higher)."""
    pts = [
        r
        for r in rows
        if r["status"] == "ok" and r.get(cost) is not None and r.get("quality") is not None
    ]
    front = set()
    for r in pts:
        if not any(
            o[cost] <= r[cost]
            and o["quality"] >= r["quality"]
            and (o[cost] < r[cost] or o["quality"] > r["quality"])
            for o in pts
        ):
            front.add(r["id"])
    return front


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


# -- outputs ----------------------------------------------------------------------------------
def _csv_text(rows: list[dict], axes: list[str]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["id", "status", *axes, *FIELDS])
    for r in rows:
        opts = r.get("options", {})
        w.writerow(
            [
                r["id"],
                r["status"],
                *(_cell(opts.get(a)) for a in axes),
                *(_cell(r.get(f)) for f in FIELDS),
            ]
        )
    return buf.getvalue()


def _cell(v) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, list | dict):
        return json.dumps(v)
    return str(v)


def _row_out(r: dict) -> dict:
    """A row with every key, in a stable order."""
    out = {"id": r["id"], "status": r["status"], "options": r.get("options", {})}
    for f in FIELDS:
        out[f] = r.get(f)
    out["latency_by_threads"] = r.get("latency_by", {})
    return out


def format_table(rows: list[dict], axes: list[str]) -> str:
    head = [
        "id",
        *[_flag(a).lstrip("-") for a in axes],
        "params",
        "macs",
        "ms",
        "speedup",
        "quality",
        "front",
        "status",
    ]
    body = []
    for r in rows:
        opts = r.get("options", {})
        front = ("L" if r.get("pareto_latency") else "") + ("M" if r.get("pareto_macs") else "")
        body.append(
            [
                r["id"],
                *(_cell(opts.get(a)) or "-" for a in axes),
                _fmt(r.get("params_kept"), "{:.1%}"),
                _fmt(r.get("macs_kept"), "{:.1%}"),
                _fmt(r.get("latency_ms"), "{:.3f}"),
                _fmt(r.get("speedup"), "{:.2f}x"),
                _fmt(r.get("quality"), "{:.4f}"),
                front or "-",
                r["status"] if r["status"] == "ok" else f"failed (exit {r.get('exit_code')})",
            ]
        )
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body, strict=True)]
    lines = [
        "  ".join(f"{c:<{w}}" for c, w in zip(line, widths, strict=True)).rstrip()
        for line in (head, *body)
    ]
    return "\n".join(lines)


def _fmt(v, spec: str) -> str:
    return "-" if v is None else spec.format(v)


def _original_row(model_path: Path, first_ok: dict | None, eval_given: bool) -> dict:
    import onnx

    row = {
        "id": "original",
        "status": "ok",
        "options": {},
        "exit_code": 0,
        "error": "",
        "params_kept": 1.0,
        "macs_kept": 1.0,
        "parity": "-",
        "model": str(model_path),
        "bytes": model_path.stat().st_size,
        "prune_s": 0.0,
    }
    if first_ok is not None:
        row.update(params=first_ok["before"]["params"], macs=first_ok["before"]["macs"])
        row["accuracy_before"] = first_ok.get("accuracy_before")
        row["accuracy_after"] = first_ok.get("accuracy_before")
        row["mean_cosine"] = 1.0 if first_ok.get("mean_cosine") is not None else None
        row["quality"] = 1.0 if first_ok.get("quality") is not None else None
    else:  # nothing pruned: count it here
        from .graph import infer_shapes
        from .metrics import summarize

        model = onnx.load(str(model_path))
        infer_shapes(model)
        s = summarize(model, with_bytes=False)
        row.update(params=s["params"], macs=s["macs"], quality=1.0 if eval_given else None)
    return row


# -- the command ------------------------------------------------------------------------------
def command(args) -> int:
    t0 = time.perf_counter()
    model_path = Path(args.model)
    out = Path(args.out)
    from .graph import load_model

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

    if jobs == 1 or len(todo) <= 1:
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
            chosen = pick(all_rows, constraint)
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
    from .outputs import Outputs

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


def _pick_toml(settings: dict, row: dict, model_path: Path, constraint: str, path) -> str:
    from .config import dump_toml

    comment = (
        f"graphprune sweep pick ({constraint}): configuration {row['id']} of {model_path.name}\n"
        f"reproduce: graphprune prune {model_path} --config {path} -o OUT.onnx"
    )
    return dump_toml(dict(settings), comment)


class _Plotted:
    def __init__(self, ok: bool, reason: str = ""):
        self.ok, self.reason = ok, reason

    def __bool__(self):
        return self.ok


def _add_plot(outs, out: Path, rows: list[dict], title: str) -> _Plotted:
    if not any(r.get("quality") is not None for r in rows):
        return _Plotted(False, "no quality without --eval")
    try:
        from .plot import render
    except ImportError as e:
        return _Plotted(False, f"{e}; pip install graphprune[plot]")
    try:
        fig = render(rows, title)
    except ImportError as e:
        return _Plotted(False, f"matplotlib is not installed ({e}); pip install graphprune[plot]")
    try:
        outs.add(out / "sweep.png", lambda tmp: fig.savefig(tmp, format="png", dpi=150))
        outs.add(out / "sweep.svg", lambda tmp: fig.savefig(tmp, format="svg"))
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)
    return _Plotted(True)


def _run_parallel(model_path: Path, out: Path, todo, jobs: int, finished) -> None:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    ctx = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(max_workers=min(jobs, len(todo)), mp_context=ctx)
    try:
        futures = {
            pool.submit(run_config, str(model_path), c, str(out / "models" / f"{cid}.onnx")): cid
            for cid, c in todo
        }
        for fut in as_completed(futures):
            cid = futures[fut]
            try:
                row = fut.result()
            except Exception as e:  # the worker died (memory, a crash in ORT)
                msg = " ".join(f"worker failed: {type(e).__name__}: {e}".split())
                row = {"status": "failed", "exit_code": 1, "error": msg}
            finished(cid, row)
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    _chmod_umask(tmp)
    os.replace(tmp, path)


def _chmod_umask(path) -> None:
    """mkstemp's 0600 is not what a user expects of an output."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


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
