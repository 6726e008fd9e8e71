"""Command line: ``graphprune analyze`` and ``graphprune prune``.

Exit codes: 0 ok; 1 internal error (a bug: please file it); 2 bad usage; 3 the input model
cannot be used (unreadable, fails onnx.checker, or ONNX Runtime cannot load it); 4 bad plan;
5 invalid rewrite; 6 parity failed; 7 bad calibration / evaluation data; 8 nothing pruned
(an option matched nothing, or nothing would be removed); 9 the --min-quality floor is not
met. A failed run writes nothing (exits 8 and 9 write only the --json report, which says
why).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

import onnx

from . import progress, sweep
from .bench import format_bench, measure, timing_feed
from .build import check_quality, finish, ort_bytes
from .config import load_config
from .errors import GraphpruneError, NothingPruned, ParityError, QualityError, UsageError
from .evaluate import load_data
from .graph import load_model
from .options import GQA_MODES, OPTIONS, PruneOptions, epilog
from .outputs import Outputs, same_file
from .prune import analyze_model, prune_model
from .report import build_report, format_analysis, format_summary, group_rows
from .shapes import InputShapes, macs_at
from .text import save_npz_atomic, tokenize_file

log = logging.getLogger("graphprune")

GQA_OPTION = next(o for o in OPTIONS if o.name == "gqa")


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2
        raise UsageError(message)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="graphprune", description="Structured pruning of ONNX models.")
    p.add_argument("-v", "--verbose", action="count", default=0, help="log more (-vv: debug)")
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=_Parser)

    a = sub.add_parser("analyze", help="list coupled groups and why frozen ones are frozen")
    a.add_argument("model")
    a.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="PATTERN",
        help="node or tensor name (glob) to keep untouched; repeatable",
    )
    a.add_argument("--json", metavar="PATH", help="write the groups as JSON")
    a.add_argument("--gqa", choices=tuple(GQA_MODES), default="kv", help=GQA_OPTION.help)
    a.add_argument("--all-reasons", action="store_true", help="print every freeze reason")

    c = sub.add_parser("calib-from-text", help="tokenize a text file into calibration .npz")
    c.add_argument("text", help="text file, one sample per line")
    c.add_argument(
        "--tokenizer",
        required=True,
        metavar="DIR",
        help="Hugging Face tokenizer directory (offline)",
    )
    c.add_argument("-o", "--output", required=True, help=".npz to write")
    c.add_argument("--max-length", type=int, default=128, help="pad/truncate to N tokens")
    c.add_argument(
        "--pad-to-longest",
        action="store_true",
        help="pad to the longest line (at most --max-length) instead of --max-length: fewer "
        "padding positions in the statistics, for models with a dynamic sequence length",
    )

    r = sub.add_parser(
        "prune",
        help="prune a model and prove parity",
        argument_default=argparse.SUPPRESS,  # defaults live in PruneOptions only
        epilog=epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    r.add_argument("model")
    r.add_argument("-o", "--output", help="pruned model path (never the input)")
    r.add_argument(
        "--config",
        metavar="FILE.toml",
        help="read options from a TOML file (keys as the flags are spelled); flags override it",
    )
    r.add_argument(
        "--dry-run",
        action="store_true",
        help="make the plan and print it with the params and MACs it predicts; write no model",
    )
    r.add_argument("-q", "--quiet", action="store_true", help="print one summary line")
    r.add_argument(
        "-v", "--verbose", action="count", help="print every layer and the passes' times"
    )
    for opt in OPTIONS:
        kw = {"dest": opt.name, "help": opt.help}
        if opt.action:
            kw["action"] = opt.action
        if opt.choices:  # checked by PruneOptions, so the API and the CLI say the same
            kw["metavar"] = "{" + ",".join(opt.choices) + "}"
        elif opt.metavar and opt.action not in ("store_true", "store_false"):
            kw["metavar"] = opt.metavar
        r.add_argument(opt.flag, **kw)
    r.add_argument("--save-plan", metavar="PATH", help="write the plan as JSON")
    r.add_argument("--json", metavar="PATH", help="write the report as JSON")

    sweep.add_parser(sub)

    b = sub.add_parser(
        "bench",
        help="time models in ONNX Runtime on this CPU, interleaved, against the first one",
    )
    b.add_argument("models", nargs="+", metavar="MODEL", help="the first is the baseline")
    b.add_argument(
        "--input-shape",
        action="append",
        metavar="NAME=DxD",
        help="the size of an input with symbolic dims (repeatable; default: from --data, "
        "else probed, as prune does)",
    )
    b.add_argument("--data", metavar="NPZ", help="time on the first sample of this data")
    b.add_argument("--threads", metavar="N,M", help="thread counts (default 1 and all cores)")
    b.add_argument("--warmup", type=int, default=3, metavar="N", help="warm-up runs per model")
    b.add_argument("--min-runs", type=int, default=20, metavar="N", help="timed runs at least")
    b.add_argument(
        "--min-time", type=float, default=2.0, metavar="S", help="seconds per thread count"
    )
    b.add_argument("--json", metavar="PATH", help="write the table as JSON")
    return p


def _write_json(path: str, data) -> None:
    out = Outputs()
    out.add_json(path, data)
    out.commit()


def cmd_analyze(args) -> int:
    analysis = analyze_model(args.model, args.exclude, args.gqa)
    print(format_analysis(analysis, verbose=args.all_reasons))
    if args.json:
        _write_json(args.json, {"model": args.model, "groups": group_rows(analysis)})
    return 0


def cmd_calib_from_text(args) -> int:
    if same_file(args.text, args.output):
        raise UsageError("output path is the input text; refusing to overwrite it")
    arrays = tokenize_file(args.text, args.tokenizer, args.max_length, args.pad_to_longest)
    out = Outputs()
    out.add(args.output, lambda tmp: save_npz_atomic(arrays, tmp))
    out.commit()
    shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in arrays.items())
    print(f"wrote {args.output}: {shapes}")
    return 0


class _Bars:
    """tqdm bars on stderr for the library's long steps (one at a time), and the stage line
    between them; only on a terminal."""

    def __init__(self):
        self.bar = None
        self.step = ""

    def stage(self, name: str) -> None:
        self.close()
        print(f"\r\033[Kgraphprune: {name}...", end="", file=sys.stderr, flush=True)

    def advance(self, step: str, done: int, total: int) -> None:
        from tqdm import tqdm

        if self.bar is None or step != self.step:
            self.close()
            print("\r\033[K", end="", file=sys.stderr, flush=True)
            self.bar = tqdm(total=total, desc=step, unit="", leave=False, file=sys.stderr)
            self.step = step
        self.bar.total = total
        self.bar.n = done
        self.bar.refresh()
        if done >= total:
            self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def clear(self) -> None:
        self.close()
        print("\r\033[K", end="", file=sys.stderr, flush=True)


_BARS = _Bars()


def _show_progress() -> None:
    if sys.stderr.isatty() and _BARS.stage not in progress.LISTENERS:
        progress.LISTENERS.append(_BARS.stage)
        progress.BAR_LISTENERS.append(_BARS.advance)


def _clear_stage() -> None:
    if _BARS.stage in progress.LISTENERS:
        _BARS.clear()


def _with_config(args) -> dict:
    """The options: the --config file's, overridden by the flags given; the file may also
    give the outputs and the CLI's switches, which land on ``args``."""
    settings = load_config(args.config) if getattr(args, "config", None) else {}
    defaults = {"output": None, "json": None, "save_plan": None, "dry_run": False, "quiet": False}
    for key, default in defaults.items():
        if getattr(args, key, None) in (None, False):
            setattr(args, key, settings.pop(key, default))
        settings.pop(key, None)
    if not hasattr(args, "verbose") or args.verbose is None:
        args.verbose = 0
    given = {o.name: getattr(args, o.name) for o in OPTIONS if hasattr(args, o.name)}
    return {**settings, **given}


def prune_options(args) -> PruneOptions:
    """The --config file and the flags given, as the user typed them, handed to
    PruneOptions to parse and check."""
    return PruneOptions(**_with_config(args))


def cmd_prune(args) -> int:
    opts = prune_options(args)
    if not args.output and not args.dry_run:
        raise UsageError("the following arguments are required: -o/--output (or --dry-run)")
    if args.output and same_file(args.model, args.output):
        raise UsageError("output path is the input model; refusing to overwrite it")
    for flag, path in (("--json", args.json), ("--save-plan", args.save_plan)):
        if path and (
            same_file(args.model, path) or (args.output and same_file(args.output, path))
        ):
            raise UsageError(f"{flag} path is the input or the output model; give another")
    if args.output and opts.emit == "ort" and same_file(args.model, ort_path(args.output)):
        raise UsageError("the .ort output would overwrite the input model; give another -o")
    if not Path(args.model).is_file():
        load_model(args.model)  # raises the one-line reason (missing, a directory)
    detail = 0 if args.quiet else 1 + min(args.verbose, 1)
    _show_progress()
    if args.dry_run:
        return _dry_run(args, opts, detail)
    try:
        result = prune_model(args.model, opts)
    except NothingPruned as e:
        if args.json:  # the report says so too; no model is written
            out = Outputs()
            out.add_json(args.json, _refusal_report(args, opts, e))
            out.commit()
        raise
    if result.parity.status == "failed":
        raise ParityError(
            f"parity failed (max rel diff {result.parity.max_rel_diff:.3e}); nothing written"
        )
    final, stages, extra = finish(args.model, result, opts)
    progress.stage("write")
    started = time.perf_counter()
    out = Outputs()
    out.add_model(args.output, result.model if final is None else final)
    result.timings["write"] = time.perf_counter() - started
    result.after["bytes"] = out.size(args.output)
    ort_data = ort_bytes(stages)
    if ort_data is not None:
        out.add(ort_path(args.output), lambda tmp: Path(tmp).write_bytes(ort_data))
    if args.save_plan:
        out.add_text(args.save_plan, result.plan.to_json())
    rep = build_report(result, input_path=args.model, output_path=args.output, options=opts)
    rep.update(extra)
    if ort_data is not None:
        rep["output_ort"] = ort_path(args.output)
    try:
        check_quality(rep, opts)
    except QualityError:
        out.discard()
        if args.json:  # the build step's log says why; no model is written
            _write_json(args.json, {**rep, "status": "below_quality_floor", "exit_code": 9})
        raise
    if args.json:
        out.add_json(args.json, rep)
    out.commit()  # every output, or none
    _clear_stage()
    print(format_summary(rep, detail))
    return 0


def ort_path(output: str) -> str:
    """``OUT.onnx`` -> ``OUT.ort``, beside it."""
    p = Path(output)
    return str(p.with_suffix(".ort") if p.suffix == ".onnx" else p.with_name(p.name + ".ort"))


def _dry_run(args, opts: PruneOptions, detail: int) -> int:
    """The plan and what it predicts; only the --json report and --save-plan, if asked,
    are written."""
    result = prune_model(args.model, opts, dry_run=True)
    rep = build_report(result, input_path=args.model, options=opts, extra={"dry_run": True})
    out = Outputs()
    if args.save_plan:
        out.add_text(args.save_plan, result.plan.to_json())
    if args.json:
        out.add_json(args.json, rep)
    out.commit()
    _clear_stage()
    print(format_summary(rep, detail))
    return 0


def cmd_sweep(args) -> int:
    _show_progress()
    try:
        return sweep.command(args)
    finally:
        _clear_stage()


def cmd_bench(args) -> int:
    threads = PruneOptions(threads=args.threads).threads if args.threads else ()
    for flag, n in (("--warmup", args.warmup), ("--min-runs", args.min_runs)):
        if n < 0:
            raise UsageError(f"{flag} must be >= 0, got {n}")
    if not 0 <= args.min_time < 3600:
        raise UsageError(f"--min-time must be in [0, 3600), got {args.min_time:g}")
    if Path(args.models[0]).suffix == ".ort":
        raise UsageError("the first model is the baseline and must be .onnx (its inputs are read)")
    # an .ort file (ORT's own format) is timed as it is; its MACs are not counted
    models = [m if Path(m).suffix == ".ort" and Path(m).is_file() else load_model(m)
              for m in args.models]
    first = models[0]
    data = load_data(args.data, first)[0] if args.data else None
    shapes = PruneOptions(input_shape=args.input_shape).input_shape if args.input_shape else None
    feed = timing_feed(first, shapes, data)
    at = InputShapes(shapes={k: v.shape for k, v in feed.items()})
    macs = [macs_at(m, at) if isinstance(m, onnx.ModelProto) else None for m in models]
    table = measure(
        models,
        feed,
        names=args.models,
        macs=macs,
        threads=threads,
        warmup=args.warmup,
        min_runs=max(args.min_runs, 1),
        min_time_s=args.min_time,
    )
    if args.json:
        _write_json(args.json, {"models": args.models, **table.to_dict()})
    print(format_bench(table))
    return 0


def _refusal_report(args, opts, error: NothingPruned) -> dict:
    return {
        "status": "nothing_pruned",
        "exit_code": error.exit_code,
        "error": str(error),
        "option": error.option,
        "input": args.model,
        "output": "",
        "options": opts.summary(),
    }


def main(argv=None) -> int:
    try:
        args = _parser().parse_args(argv)
        level = [logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)]
        logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
        if not args.verbose:  # ORT's symbolic shape inference warns about what it guessed
            logging.getLogger("onnxruntime").setLevel(logging.ERROR)
        commands = {
            "analyze": cmd_analyze,
            "prune": cmd_prune,
            "bench": cmd_bench,
            "sweep": cmd_sweep,
            "calib-from-text": cmd_calib_from_text,
        }
        return commands[args.cmd](args)
    except GraphpruneError as e:
        _clear_stage()
        if e.exit_code == 1 and os.environ.get("GRAPHPRUNE_DEBUG"):
            raise
        msg = " ".join(str(e).split())
        if e.exit_code == 1:
            msg += " (a bug in graphprune: please file it with the model or GRAPHPRUNE_DEBUG=1)"
        print(f"graphprune: error: {msg}", file=sys.stderr)
        return e.exit_code
    except BrokenPipeError:  # stdout closed early (``| head``): not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except KeyboardInterrupt:
        print("graphprune: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a bug: still one line, but say so
        msg = " ".join(f"{type(e).__name__}: {e}".split())
        print(
            f"graphprune: error: internal error: {msg} (a bug in graphprune: please file it "
            "with the model or GRAPHPRUNE_DEBUG=1)",
            file=sys.stderr,
        )
        if os.environ.get("GRAPHPRUNE_DEBUG"):
            raise
        return 1


if __name__ == "__main__":
    sys.exit(main())
