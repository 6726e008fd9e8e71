"""The options of a prune: one object that validates and defaults every one of them.

``PruneOptions`` is what the Python API takes and what the CLI builds: the CLI's ``prune``
flags are generated from ``OPTIONS`` below and handed over as the strings the user typed,
so a value is parsed, checked and defaulted here only, with the same error either way.
Calibration and evaluation data are given as paths (``.npz`` or a directory of them) or as
arrays (a dict of input name -> array, or a list of feed dicts); they are read once the
model is loaded (``graphprune.data``).
"""

from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass, field, fields
from pathlib import Path

from .cluster import MODES as RAY_MODES  # join a running Ray cluster, or start one here
from .criteria import CRITERIA
from .errors import UsageError
from .passes.reconstructions import RECONSTRUCTIONS
from .plan import Plan
from .shapes import parse_input_shapes

#: CLI flag -> group kind it sets a ratio for
KIND_FLAGS = {"heads": "head", "mlp": "neuron", "channels": "channel", "recurrent": "recurrent"}
#: every group kind a rule can give (``OpRule.unit_kind``, heads, or "other")
GROUP_KINDS = (*KIND_FLAGS.values(), "other")
QUANTIZE_MODES = ("none", "dynamic", "static")
#: how units are shared out between groups (``graphprune.allocate``)
ALLOCATIONS = ("uniform", "global", "sensitivity")
EMIT_FORMATS = ("onnx", "ort")
GQA_MODES = {
    "kv": "a unit is one KV head with its query heads (whole KV groups go)",
    "query": "a unit is one query slot in every KV group (KV heads kept, n_rep re-folded)",
}


@dataclass(frozen=True)
class Option:
    """One ``prune`` option: its field, its flag, how it is parsed, its help."""

    name: str  # the PruneOptions field
    flag: str
    help: str
    metavar: str | None = None
    choices: tuple[str, ...] | None = None
    action: str | None = None  # "store_true" / "store_false" / "append" for the CLI


def choices_text(registry, indent: str = "  ", columns: int = 88) -> str:
    """Each registered choice with its help, wrapped (for --help and the README)."""
    width = max(len(n) for n in registry)
    hang = " " * (len(indent) + width + 2)
    return "\n".join(
        textwrap.fill(
            c.help, columns, initial_indent=f"{indent}{n:<{width}}  ", subsequent_indent=hang
        )
        for n, c in registry.items()
    )


#: every ``prune`` option, in the order ``--help`` lists them
OPTIONS: tuple[Option, ...] = (
    Option(
        "ratio",
        "--ratio",
        "fraction of units removed from every prunable group whose kind has no ratio of its "
        "own (default 0.5, or 0 when --heads/--mlp/--channels, --hidden or a depth option is "
        "given)",
        "R",
    ),
    *(
        Option(flag, f"--{flag}", f"fraction of units removed from every {kind} group", "R")
        for flag, kind in KIND_FLAGS.items()
    ),
    Option(
        "hidden",
        "--hidden",
        "Minitron-style width: fraction of units removed from groups frozen only by a "
        "normalisation (LayerNorm/RMSNorm widths); parity is then approximate",
        "R",
    ),
    Option("drop_layers", "--drop-layers", "depth: drop the N lowest-scored sub-blocks", "N"),
    Option(
        "drop_list",
        "--drop-layers-list",
        "depth: drop exactly these blocks (indices from `analyze`)",
        "I,J",
    ),
    Option(
        "gqa",
        "--gqa",
        "GQA unit: " + "; ".join(f"{k}: {v}" for k, v in GQA_MODES.items()),
        choices=tuple(GQA_MODES),
    ),
    Option(
        "criterion",
        "--criterion",
        "how units are scored (default l2; the criteria are listed below)",
        choices=tuple(CRITERIA),
    ),
    Option(
        "reconstruct",
        "--reconstruct",
        "how the consumers of removed units are refitted (default none; listed below); all "
        "but none need --calib, and parity is then approximate",
        choices=tuple(RECONSTRUCTIONS),
    ),
    Option(
        "damping",
        "--damping",
        "ridge for lsq and obs, relative to the mean diagonal (default 0.01)",
        "D",
    ),
    Option(
        "target_macs",
        "--target-macs",
        "keep the fraction F of the MACs (within 2%%); scales --ratio and the per-kind ratios "
        "together",
        "F",
    ),
    Option(
        "target_params",
        "--target-params",
        "keep the fraction F of the parameters (within 2%%)",
        "F",
    ),
    Option(
        "target_speedup",
        "--target-speedup",
        "run S times faster in ONNX Runtime on this machine (S > 1): units are allocated with "
        "a latency model measured here (cached per model and machine), not with MACs",
        "S",
    ),
    Option(
        "target_latency",
        "--target-latency",
        "run in MS milliseconds (1 thread, the input shapes used for MACs); as --target-speedup",
        "MS",
    ),
    Option(
        "global_rank",
        "--global",
        "rank units across groups (group-normalised scores) instead of a uniform ratio per "
        "group: each kind loses its ratio of all its units, wherever they score lowest; with a "
        "target, one threshold over every unit",
        action="store_true",
    ),
    Option(
        "allocate",
        "--allocate",
        "how units are shared out between groups: uniform (the default: each group its "
        "ratio), global (as --global), sensitivity (needs --calib: each group's loss at a few "
        "widths is measured in ONNX Runtime, and units go where the loss per MAC, or per "
        "parameter with --target-params, is lowest)",
        choices=ALLOCATIONS,
    ),
    Option(
        "round_to",
        "--round-to",
        "keep a multiple of N units per group; auto: the multiple ONNX Runtime's kernels run "
        "fastest on this machine (measured; the default with --target-speedup/-latency, "
        "else 1)",
        "N|auto",
    ),
    Option("min_keep", "--min-keep", "keep at least N units per group", "N"),
    Option(
        "exclude",
        "--exclude",
        "node or tensor name (glob) to keep untouched; repeatable",
        "PATTERN",
        action="append",
    ),
    Option("seed", "--seed", "seed of the random criterion and the parity inputs", "N"),
    Option(
        "calib",
        "--calib",
        "calibration inputs (.npz or a directory of them): statistics for the data-driven "
        "criteria, --reconstruct and the --drop-layers ranking; also fed to parity",
        "NPZ|DIR",
    ),
    Option(
        "eval",
        "--eval",
        "evaluation data (.npz: one array per input, optional 'labels'): accuracy or output "
        "deviation before/after",
        "NPZ",
    ),
    Option(
        "min_quality",
        "--min-quality",
        "fail (exit 9, no model written) when the shipped model's quality on --eval falls "
        "below F: accuracy after/before with labels, else mean cosine to the original",
        "F",
    ),
    Option(
        "input_shape",
        "--input-shape",
        "the size of an input with symbolic dims, NAME=1x3x320x320 (repeatable; a bare shape "
        "for a one-input model): MACs are counted and parity is run at it (default: from "
        "--calib/--eval, else probed)",
        "NAME=DxD",
        action="append",
    ),
    Option("plan", "--plan", "replay a saved plan instead of planning", "PATH"),
    Option("parity", "--no-parity", "skip the parity proof", action="store_false"),
    Option(
        "bench",
        "--bench",
        "time the original and the pruned model in ONNX Runtime (interleaved) into the report",
        action="store_true",
    ),
    Option(
        "threads",
        "--threads",
        "intra-op thread counts the timings use (default 1 and all cores)",
        "N,M",
    ),
    Option(
        "optimize",
        "--optimize",
        "also apply ONNX Runtime's optimisations (its transformer optimizer on transformer "
        "graphs, its offline graph optimisations otherwise); the output keeps every fusion the "
        "original gets",
        action="store_true",
    ),
    Option(
        "quantize",
        "--quantize",
        "then quantize with onnxruntime.quantization: dynamic, or static (calibrated on "
        "--calib)",
        choices=QUANTIZE_MODES,
    ),
    Option(
        "emit",
        "--emit",
        "also write ONNX Runtime's .ort format (for ORT Mobile / minimal builds) beside -o",
        choices=EMIT_FORMATS,
    ),
    Option(
        "ray",
        "--ray",
        "spread the work over Ray (pip install 'graphprune[ray]'): auto joins a running "
        "cluster (`ray start --head`), local starts one on this machine; calibration batches "
        "(and a sweep's configurations) run as Ray tasks",
        choices=RAY_MODES,
    ),
)


def _number(flag: str, value, cast=float):
    if isinstance(value, bool):
        raise UsageError(f"{flag} takes a number, got {value!r}")
    try:
        out = cast(value)
    except (TypeError, ValueError, OverflowError):
        raise UsageError(
            f"{flag} takes {'an integer' if cast is int else 'a number'}, got {value!r}"
        ) from None
    if cast is float and not math.isfinite(out):
        raise UsageError(f"{flag} must be finite, got {value!r}")
    if cast is int and isinstance(value, float) and value != out:
        raise UsageError(f"{flag} takes an integer, got {value!r}")
    return out


def _ratio(flag: str, value) -> float:
    r = _number(flag, value)
    if not 0.0 <= r < 1.0:
        raise UsageError(f"{flag} must be in [0, 1), got {r:g}")
    return r


def _fraction(flag: str, value) -> float:
    f = _number(flag, value)
    if not 0.0 < f <= 1.0:
        raise UsageError(f"{flag} must be in (0, 1], got {f:g}")
    return f


def _count(flag: str, value, low: int) -> int:
    n = _number(flag, value, int)
    if n < low:
        raise UsageError(f"{flag} must be >= {low}, got {n}")
    return n


def _choice(flag: str, value, choices) -> str:
    if value not in choices:
        raise UsageError(f"{flag} must be one of {', '.join(choices)}, got {value!r}")
    return value


def _bool(flag: str, value) -> bool:
    """A bool, or its usual spellings (a config file's "false" is not True)."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off"):
        return False
    raise UsageError(f"{flag} takes true or false, got {value!r}")


def _indices(flag: str, value) -> tuple[int, ...]:
    if isinstance(value, str):
        parts = [x.strip() for x in value.split(",") if x.strip()]
    elif isinstance(value, list | tuple | set | frozenset):
        parts = list(value)
    else:
        raise UsageError(f"{flag} takes block indices I,J,..., got {value!r}")
    out = tuple(_count(flag, x, 0) for x in parts)
    if len(set(out)) != len(out):
        raise UsageError(f"{flag} names a block twice: {value!r}")
    return out


def _threads(flag: str, value) -> tuple[int, ...]:
    """Thread counts, "1,2" or a list; () for the default (1 and all cores)."""
    if value is None or value == "" or value == ():
        return ()
    if isinstance(value, int | str):
        value = [x.strip() for x in str(value).split(",") if x.strip()]
    if not isinstance(value, list | tuple):
        raise UsageError(f"{flag} takes thread counts N,M, got {value!r}")
    out = tuple(_count(flag, x, 1) for x in value)
    return tuple(dict.fromkeys(out))


def _data(flag: str, value):
    """A path, a dict of arrays, or a list of feed dicts; None when not given."""
    if value is None or isinstance(value, dict | list | tuple):
        return value
    if isinstance(value, str | Path):
        if not str(value):
            raise UsageError(f"{flag} takes a path, got ''")
        return value
    raise UsageError(f"{flag} takes a path or arrays, got {type(value).__name__}")


@dataclass
class PruneOptions:
    """Everything that decides what a prune does; see ``OPTIONS`` for each one's meaning.
    Construction validates and normalises (numbers given as strings are parsed), so an
    invalid value fails here, before any work, with the same message the CLI prints."""

    ratio: float | None = None  # None: 0.5, or 0 once a kind ratio, hidden or depth is given
    heads: float | None = None
    mlp: float | None = None
    channels: float | None = None
    recurrent: float | None = None
    ratios: dict[str, float] = field(default_factory=dict)  # per group kind (API form)
    hidden: float = 0.0
    drop_layers: int = 0
    drop_list: tuple[int, ...] = ()
    gqa: str = "kv"
    criterion: str = "l2"
    reconstruct: str = "none"
    damping: float = 0.01
    target_macs: float | None = None
    target_params: float | None = None
    target_speedup: float | None = None  # > 1
    target_latency: float | None = None  # ms, 1 thread
    global_rank: bool = False  # the same as allocate="global"
    allocate: str = "uniform"
    #: "auto": measured (graphprune.latency); None: auto with a latency target, else 1
    round_to: int | str | None = None
    min_keep: int = 1
    exclude: tuple[str, ...] = ()
    seed: int = 0
    calib: object = None  # path, dict of arrays or list of feed dicts
    eval: object = None  # path or dict of arrays (optional "labels")
    min_quality: float | None = None  # needs eval
    #: input name (None: the only input) -> shape; CLI strings "NAME=1x3x8x8" are parsed
    input_shape: dict = field(default_factory=dict)
    plan: object = None  # a Plan or the path of a saved one: replayed, no planning
    parity: bool = True
    parity_feeds: list | None = None  # None: the first 4 calibration batches
    bench: bool = False
    threads: tuple[int, ...] = ()  # () : 1 and all cores
    optimize: bool = False
    quantize: str = "none"
    emit: str = "onnx"
    ray: str | None = None  # "auto" | "local": Ray is joined / started where the run starts

    def __post_init__(self):
        if self.ratio is not None:
            self.ratio = _ratio("--ratio", self.ratio)
        ratios = {}
        for kind, r in dict(self.ratios or {}).items():
            if kind not in GROUP_KINDS:
                raise UsageError(
                    f"ratios: no group kind {kind!r}; kinds are {', '.join(GROUP_KINDS)}"
                )
            flag = next((f"--{f}" for f, k in KIND_FLAGS.items() if k == kind), f"ratio {kind}")
            ratios[str(kind)] = _ratio(flag, r)
        for flag, kind in KIND_FLAGS.items():
            value = getattr(self, flag)
            if value is not None:
                value = _ratio(f"--{flag}", value)
                setattr(self, flag, value)
                ratios[kind] = value
        self.ratios = ratios
        self.hidden = _ratio("--hidden", self.hidden)
        self.drop_layers = _count("--drop-layers", self.drop_layers, 0)
        self.drop_list = _indices("--drop-layers-list", self.drop_list)
        if self.drop_layers and self.drop_list:
            raise UsageError("give --drop-layers or --drop-layers-list, not both")
        self.gqa = _choice("--gqa", self.gqa, tuple(GQA_MODES))
        self.criterion = _choice("--criterion", self.criterion, tuple(CRITERIA))
        self.reconstruct = _choice("--reconstruct", self.reconstruct, tuple(RECONSTRUCTIONS))
        self.damping = _number("--damping", self.damping)
        if self.damping < 0:
            raise UsageError(f"--damping must be >= 0, got {self.damping:g}")
        if self.target_macs is not None:
            self.target_macs = _fraction("--target-macs", self.target_macs)
        if self.target_params is not None:
            self.target_params = _fraction("--target-params", self.target_params)
        if self.target_speedup is not None:
            self.target_speedup = _number("--target-speedup", self.target_speedup)
            if self.target_speedup <= 1:
                raise UsageError(f"--target-speedup must be > 1, got {self.target_speedup:g}")
        if self.target_latency is not None:
            self.target_latency = _number("--target-latency", self.target_latency)
            if self.target_latency <= 0:
                raise UsageError(f"--target-latency must be > 0, got {self.target_latency:g}")
        targets = [
            f
            for f, v in (
                ("--target-macs", self.target_macs),
                ("--target-params", self.target_params),
                ("--target-speedup", self.target_speedup),
                ("--target-latency", self.target_latency),
            )
            if v is not None
        ]
        if len(targets) > 1:
            raise UsageError(f"give one of {', '.join(targets)}, not several")
        self.global_rank = _bool("--global", self.global_rank)
        self.allocate = _choice("--allocate", self.allocate or "uniform", ALLOCATIONS)
        if self.global_rank and self.allocate == "sensitivity":
            raise UsageError("--global and --allocate sensitivity: give one of them")
        if self.global_rank or self.allocate == "global":
            self.allocate, self.global_rank = "global", True
        if self.round_to is None:  # latency targets round to what the kernels run fastest
            latency = self.target_speedup is not None or self.target_latency is not None
            self.round_to = "auto" if latency else 1
        if isinstance(self.round_to, str) and self.round_to.strip().lower() == "auto":
            self.round_to = "auto"
        else:
            self.round_to = _count("--round-to", self.round_to, 1)
        self.min_keep = _count("--min-keep", self.min_keep, 1)
        self.exclude = (self.exclude,) if isinstance(self.exclude, str) else tuple(self.exclude)
        self.seed = _count("--seed", self.seed, 0)
        self.calib = _data("--calib", self.calib)
        self.eval = _data("--eval", self.eval)
        if self.min_quality is not None:
            self.min_quality = _fraction("--min-quality", self.min_quality)
            if self.eval is None:
                raise UsageError("--min-quality needs held-out data (--eval)")
        self.input_shape = parse_input_shapes("--input-shape", self.input_shape or None)
        if self.plan is not None and isinstance(self.plan, str | Path) and not str(self.plan):
            raise UsageError("--plan takes a path, got ''")
        if self.plan is not None and not isinstance(self.plan, str | Path | Plan):
            raise UsageError(f"--plan takes a path or a Plan, got {type(self.plan).__name__}")
        self.parity = _bool("--no-parity", self.parity)
        if self.parity_feeds is not None and not (
            isinstance(self.parity_feeds, list | tuple)
            and all(isinstance(f, dict) for f in self.parity_feeds)
        ):
            raise UsageError("parity_feeds takes a list of feed dicts (input name -> array)")
        self.bench = _bool("--bench", self.bench)
        self.threads = _threads("--threads", self.threads)
        self.optimize = _bool("--optimize", self.optimize)
        self.quantize = _choice("--quantize", self.quantize or "none", QUANTIZE_MODES)
        self.emit = _choice("--emit", self.emit or "onnx", EMIT_FORMATS)
        if self.ray is not None:
            self.ray = _choice("--ray", self.ray, RAY_MODES)
        if self.calib is None:
            needs = self.needs_calibration()
            if needs:
                raise UsageError(f"{needs} needs calibration data (--calib)")

    # -- derived --------------------------------------------------------------------------
    @property
    def base_ratio(self) -> float:
        """``ratio`` as given, else its default: 0 once anything more specific is asked."""
        if self.ratio is not None:
            return self.ratio
        specific = self.ratios or self.hidden > 0 or self.drop_layers or self.drop_list
        return 0.0 if specific else 0.5

    @property
    def budget(self) -> tuple[str, float] | None:
        """(what, amount) the plan must reach, if any: ("macs"|"params", fraction kept),
        ("latency", fraction of the measured latency kept) or ("latency_ms", milliseconds)."""
        if self.target_macs is not None:
            return "macs", self.target_macs
        if self.target_params is not None:
            return "params", self.target_params
        if self.target_speedup is not None:
            return "latency", 1.0 / self.target_speedup
        if self.target_latency is not None:
            return "latency_ms", self.target_latency
        return None

    @property
    def ranked(self) -> bool:
        """Units are ranked across groups (``--global`` or by measured sensitivity)."""
        return self.allocate != "uniform"

    @property
    def scoring(self) -> bool:
        """A plan is made here (not replayed), so the criterion runs."""
        return self.plan is None

    def needs_calibration(self) -> str:
        """The option that needs calibration data, as the user wrote it ('' if none)."""
        if self.scoring and CRITERIA[self.criterion].data == "required":
            return f"--criterion {self.criterion}"
        if RECONSTRUCTIONS[self.reconstruct].needs_calibration:
            return f"--reconstruct {self.reconstruct}"
        if self.scoring and self.allocate == "sensitivity":
            return "--allocate sensitivity"
        if self.quantize == "static":
            return "--quantize static"
        return ""

    def summary(self) -> dict:
        """The options as the JSON report records them (data as paths or a count)."""
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name in ("calib", "eval", "plan", "parity_feeds"):
                v = None if v is None else (str(v) if isinstance(v, str | Path) else "arrays")
            elif isinstance(v, tuple):
                v = list(v)
            elif f.name == "input_shape":
                v = {"" if k is None else k: list(s) for k, s in v.items()}
            out[f.name] = v
        out["ratio"] = self.base_ratio
        return out


def epilog() -> str:
    """The registered criteria and reconstructions, as ``prune --help`` ends."""
    return (
        "criteria (--criterion):\n"
        + choices_text(CRITERIA)
        + "\n\nreconstructions (--reconstruct):\n"
        + choices_text(RECONSTRUCTIONS)
    )
