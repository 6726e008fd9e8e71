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
from .calibration import calibration_feeds
from .errors import GraphpruneError, ParityError, UsageError
from .evaluate import accuracy, load_npz, output_deviation, run_outputs
from .graph import load_model, save_model_atomic
from .importance import CRITERIA
from .plan import Plan
from .prune import RECONSTRUCTIONS, PruneOptions, analyze_model, check_ratio, prune_model
from .report import build_report, format_analysis, format_summary, group_rows
from .text import save_npz_atomic, tokenize_file

log = logging.getLogger("graphprune")

GQA_HELP = (
    "GQA unit: 'kv' removes whole KV groups with their query heads; 'query' removes "
    "query heads evenly inside every KV group (KV heads kept)"
)

#: CLI flag -> group kind it sets a ratio for
KIND_FLAGS = {"heads": "head", "mlp": "neuron", "channels": "channel"}


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
    a.add_argument("--gqa", choices=("kv", "query"), default="kv", help=GQA_HELP)
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

    r = sub.add_parser("prune", help="prune a model and prove parity")
    r.add_argument("model")
    r.add_argument("-o", "--output", required=True, help="pruned model path (never the input)")
    r.add_argument(
        "--ratio",
        type=float,
        help="fraction of units removed from every prunable group whose kind has no ratio of "
        "its own (default 0.5, or 0 when --heads/--mlp/--channels is given)",
    )
    for flag, kind in KIND_FLAGS.items():
        r.add_argument(
            f"--{flag}",
            type=float,
            metavar="R",
            help=f"fraction of units removed from every {kind} group",
        )
    r.add_argument(
        "--hidden",
        type=float,
        default=0.0,
        metavar="R",
        help="Minitron-style width: fraction of units removed from groups frozen only by a "
        "normalisation (LayerNorm/RMSNorm widths); parity is then approximate",
    )
    r.add_argument(
        "--drop-layers",
        type=int,
        default=0,
        metavar="N",
        help="depth: drop the N lowest-scored attention/MLP sub-blocks",
    )
    r.add_argument(
        "--drop-layers-list",
        metavar="I,J",
        default="",
        help="depth: drop exactly these blocks (indices from `analyze`)",
    )
    r.add_argument("--gqa", choices=("kv", "query"), default="kv", help=GQA_HELP)
    r.add_argument(
        "--reconstruct",
        choices=RECONSTRUCTIONS,
        default="none",
        help="bias: fold the removed units' mean contribution into the consumers' biases "
        "(FLAP); lsq: least-squares refit of the consumers' kept weights and bias; lsq-seq: "
        "the same refit layer by layer, each layer fitted on the already pruned earlier "
        "ones; block: lsq-seq, then each MLP block (producer, activation, consumer) refined "
        "as a whole by gradient steps. All need --calib; parity is then approximate",
    )
    r.add_argument(
        "--damping",
        type=float,
        default=0.01,
        metavar="D",
        help="ridge for lsq and obs, relative to the mean diagonal (default 0.01)",
    )
    r.add_argument(
        "--target-macs",
        type=float,
        metavar="F",
        help="keep the fraction F of the MACs (within 2%%); scales --ratio and the "
        "per-kind ratios together",
    )
    r.add_argument(
        "--target-params",
        type=float,
        metavar="F",
        help="keep the fraction F of the parameters (within 2%%)",
    )
    r.add_argument(
        "--global",
        dest="global_rank",
        action="store_true",
        help="rank units across groups (group-normalised scores) instead of a uniform "
        "ratio per group: each kind loses its ratio of all its units, wherever they score "
        "lowest; with a target, one threshold over every unit",
    )
    r.add_argument("--criterion", choices=CRITERIA, default="l2")
    r.add_argument(
        "--round-to", type=int, default=1, metavar="N", help="keep a multiple of N units per group"
    )
    r.add_argument(
        "--min-keep", type=int, default=1, metavar="N", help="keep at least N units per group"
    )
    r.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="PATTERN",
        help="node or tensor name (glob) to keep untouched; repeatable",
    )
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--save-plan", metavar="PATH", help="write the plan as JSON")
    r.add_argument("--plan", metavar="PATH", help="replay a saved plan instead of planning")
    r.add_argument("--json", metavar="PATH", help="write the report as JSON")
    r.add_argument(
        "--eval",
        metavar="NPZ",
        help="evaluation data (.npz: one array per input, optional 'labels')",
    )
    r.add_argument(
        "--calib",
        metavar="NPZ|DIR",
        help="calibration inputs (.npz or a directory of them): statistics for the "
        "data-driven criteria and --reconstruct, --drop-layers ranking; also fed to parity",
    )
    r.add_argument("--no-parity", action="store_true", help="skip the parity proof")
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


def cmd_prune(args) -> int:
    if _same_file(args.model, args.output):
        raise UsageError("output path is the input model; refusing to overwrite it")
    ratios = {}
    for flag, kind in KIND_FLAGS.items():
        value = getattr(args, flag)
        if value is not None:
            check_ratio(f"--{flag}", value)
            ratios[kind] = value
    check_ratio("--hidden", args.hidden)
    try:
        drop_list = tuple(int(x) for x in args.drop_layers_list.split(",") if x.strip())
    except ValueError as e:
        raise UsageError(f"--drop-layers-list takes indices like 3,5: {e}") from e
    if args.drop_layers < 0:
        raise UsageError("--drop-layers must be >= 0")
    depth_only = bool(args.drop_layers or drop_list)
    if args.ratio is None:
        args.ratio = 0.0 if (ratios or args.hidden or depth_only) else 0.5
    check_ratio("--ratio", args.ratio)
    if args.round_to < 1 or args.min_keep < 1:
        raise UsageError("--round-to and --min-keep must be >= 1")
    model = load_model(args.model) if (args.calib or args.eval) else None
    if model is None and not Path(args.model).is_file():
        load_model(args.model)  # raises the one-line "no such file"
    plan = Plan.load(args.plan) if args.plan else None
    feeds = []
    calib = []
    if sys.stderr.isatty() and _progress_bar not in calibration.PROGRESS:
        calibration.PROGRESS.append(_progress_bar)
    if args.calib:
        calib = calibration_feeds(args.calib, model)
        feeds = calib[:4]
    opts = PruneOptions(
        ratio=args.ratio,
        ratios=ratios,
        hidden=args.hidden,
        drop_layers=args.drop_layers,
        drop_list=drop_list,
        gqa=args.gqa,
        criterion=args.criterion,
        round_to=args.round_to,
        min_keep=args.min_keep,
        exclude=tuple(args.exclude),
        seed=args.seed,
        parity=not args.no_parity,
        parity_feeds=feeds,
        calib=calib,
        reconstruct=args.reconstruct,
        damping=args.damping,
        target_macs=args.target_macs,
        target_params=args.target_params,
        global_rank=args.global_rank,
    )
    result = prune_model(args.model, opts, plan=plan)
    extra = {}
    if args.eval:  # each model runs once on the held-out data
        data, labels = load_npz(args.eval, model)
        before_out, after_out = run_outputs(model, data), run_outputs(result.model, data)
        extra["eval"] = {"data": args.eval, **output_deviation(before_out, after_out)}
        if labels is not None:
            extra["accuracy"] = {
                "data": args.eval,
                "samples": len(before_out),
                "before": accuracy(before_out, labels),
                "after": accuracy(after_out, labels),
            }
    failed = result.parity.status == "failed"
    out = "" if failed else args.output
    options = {
        "ratio": args.ratio,
        "ratios": ratios,
        "hidden": args.hidden,
        "drop_layers": args.drop_layers,
        "drop_layers_list": list(drop_list),
        "criterion": args.criterion,
        "reconstruct": args.reconstruct,
        "target_macs": args.target_macs,
        "target_params": args.target_params,
        "global": args.global_rank,
        "calibration_batches": len(calib),
        "round_to": args.round_to,
        "min_keep": args.min_keep,
        "exclude": args.exclude,
        "plan": args.plan or None,
    }
    if not failed:
        try:
            result.after["bytes"] = save_model_atomic(result.model, args.output)
            if args.save_plan:
                result.plan.save(args.save_plan)
        except OSError as e:
            raise UsageError(f"cannot write {e.filename or args.output}: {e.strerror}") from e
    rep = build_report(result, input_path=args.model, output_path=out, options=options, extra=extra)
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
