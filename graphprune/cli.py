"""Command line: ``graphprune analyze`` and ``graphprune prune``.

Exit codes: 0 ok; 1 unexpected internal error; 2 bad usage; 3 unreadable model; 4 bad plan;
5 invalid rewrite; 6 parity failed; 7 bad calibration / evaluation data.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from . import calibration
from .errors import GraphpruneError, ParityError, UsageError
from .graph import load_model, save_model_atomic
from .options import GQA_MODES, OPTIONS, PruneOptions, epilog
from .prune import analyze_model, prune_model
from .report import build_report, format_analysis, format_summary, group_rows
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
    r.add_argument("-o", "--output", required=True, help="pruned model path (never the input)")
    for opt in OPTIONS:
        kw = {"dest": opt.name, "help": opt.help}
        if opt.action:
            kw["action"] = opt.action
        if opt.choices:  # checked by PruneOptions, so the API and the CLI say the same
            kw["metavar"] = "{" + ",".join(opt.choices) + "}"
        elif opt.metavar and opt.action not in ("store_true", "store_false"):
            kw["metavar"] = opt.metavar
        r.add_argument(opt.flag, **kw)
    r.add_argument("--save-plan", metavar="PATH", default=None, help="write the plan as JSON")
    r.add_argument("--json", metavar="PATH", default=None, help="write the report as JSON")
    return p


def _same_file(a: str, b: str) -> bool:
    pa, pb = Path(a), Path(b)
    if pb.exists():
        try:
            return os.path.samefile(pa, pb)
        except OSError:
            return False
    return pa.resolve() == pb.resolve()


def _write_json(path: str, data) -> None:
    tmp = Path(path).with_name(Path(path).name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=float))
    os.replace(tmp, path)


def cmd_analyze(args) -> int:
    analysis = analyze_model(args.model, args.exclude, args.gqa)
    print(format_analysis(analysis, verbose=args.all_reasons))
    if args.json:
        _write_json(args.json, {"model": args.model, "groups": group_rows(analysis)})
    return 0


def cmd_calib_from_text(args) -> int:
    if _same_file(args.text, args.output):
        raise UsageError("output path is the input text; refusing to overwrite it")
    arrays = tokenize_file(args.text, args.tokenizer, args.max_length, args.pad_to_longest)
    try:
        save_npz_atomic(arrays, args.output)
    except OSError as e:
        raise UsageError(f"cannot write {args.output}: {e.strerror}") from e
    shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in arrays.items())
    print(f"wrote {args.output}: {shapes}")
    return 0


def _progress_bar(done: int, total: int) -> None:
    width = 30
    filled = width * done // max(total, 1)
    end = "\n" if done >= total else ""
    print(
        f"\rcalibration [{'#' * filled}{'.' * (width - filled)}] {done}/{total}",
        end=end,
        file=sys.stderr,
        flush=True,
    )


def prune_options(args) -> PruneOptions:
    """The flags given, as the user typed them, handed to PruneOptions to parse and check."""
    return PruneOptions(**{o.name: getattr(args, o.name) for o in OPTIONS if hasattr(args, o.name)})


def cmd_prune(args) -> int:
    if _same_file(args.model, args.output):
        raise UsageError("output path is the input model; refusing to overwrite it")
    opts = prune_options(args)
    if not Path(args.model).is_file():
        load_model(args.model)  # raises the one-line "no such file"
    if sys.stderr.isatty() and _progress_bar not in calibration.PROGRESS:
        calibration.PROGRESS.append(_progress_bar)
    result = prune_model(args.model, opts)
    failed = result.parity.status == "failed"
    out = "" if failed else args.output
    if not failed:
        try:
            result.after["bytes"] = save_model_atomic(result.model, args.output)
            if args.save_plan:
                result.plan.save(args.save_plan)
        except OSError as e:
            raise UsageError(f"cannot write {e.filename or args.output}: {e.strerror}") from e
    rep = build_report(result, input_path=args.model, output_path=out, options=opts)
    if args.json:
        try:
            _write_json(args.json, rep)
        except OSError as e:
            raise UsageError(f"cannot write {args.json}: {e.strerror}") from e
    print(format_summary(rep))
    if failed:
        raise ParityError(
            f"parity failed (max rel diff {result.parity.max_rel_diff:.3e}); model not written"
        )
    return 0


def main(argv=None) -> int:
    try:
        args = _parser().parse_args(argv)
        level = [logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)]
        logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
        commands = {
            "analyze": cmd_analyze,
            "prune": cmd_prune,
            "calib-from-text": cmd_calib_from_text,
        }
        return commands[args.cmd](args)
    except GraphpruneError as e:
        if e.exit_code == 1 and os.environ.get("GRAPHPRUNE_DEBUG"):
            raise
        print(f"graphprune: error: {e}", file=sys.stderr)
        return e.exit_code
    except BrokenPipeError:  # stdout closed early (``| head``): not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except KeyboardInterrupt:
        print("graphprune: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a bug: still one line, but say so
        print(f"graphprune: internal error: {type(e).__name__}: {e}", file=sys.stderr)
        if os.environ.get("GRAPHPRUNE_DEBUG"):
            raise
        return 1


if __name__ == "__main__":
    sys.exit(main())
