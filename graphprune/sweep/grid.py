"""A sweep's grid: the axes its options give, and every configuration checked."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

from ..errors import UsageError
from ..options import OPTIONS, Option, PruneOptions

#: options a sweep refuses: what they add is done once, to the pick, with ``prune``
REFUSED = {
    "bench": "latency is always measured by a sweep",
    "optimize": "apply it to the pick with `graphprune prune --config DIR/pick.toml`",
    "quantize": "apply it to the pick with `graphprune prune --config DIR/pick.toml`",
    "emit": "apply it to the pick with `graphprune prune --config DIR/pick.toml`",
    "min_quality": "choose among the configurations with --pick quality>=Q",
}


#: options that are not grid axes though they take a value: paths, lists, the timing threads,
#: where the work runs (``ray``)
_NOT_AXES = {"threads", "drop_list", "plan", "calib", "eval", "ray"}
#: options the sweep itself uses, not its configurations (a configuration's id and the
#: sweep's identity do not depend on them, so a sweep resumes with or without them)
_SWEEP_ONLY = {"threads", "ray"}


def is_axis(opt: Option) -> bool:
    """An option a sweep accepts several comma-separated values of."""
    if opt.name in _NOT_AXES or opt.name in REFUSED or opt.action:
        return False
    return bool(opt.choices or opt.metavar)


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
        if opt.name in REFUSED or opt.name in _SWEEP_ONLY or not hasattr(args, opt.name):
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
