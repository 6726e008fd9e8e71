"""``--config FILE.toml``: every prune option in a file, read with ``tomllib``.

A key is an option's name as ``PruneOptions`` spells it (``target_macs``) or as its flag
does (``target-macs``); ``no-parity = true`` and ``parity = false`` say the same. The
output paths (``output``, ``json``, ``save-plan``) and the CLI's own switches (``dry-run``,
``quiet``) may be given too. Options may sit at the top level or under ``[prune]``. Flags
on the command line override the file. ``dump_toml`` writes such a file back (a sweep's
pick is written out this way).
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import fields
from pathlib import Path

from .errors import UsageError
from .options import OPTIONS, PruneOptions

#: keys that are not PruneOptions fields: the CLI's outputs and switches
CLI_KEYS = ("output", "json", "save_plan", "dry_run", "quiet")


def _keys() -> dict[str, tuple[str, bool]]:
    """Every accepted key -> (the field it sets, whether its value is inverted)."""
    out: dict[str, tuple[str, bool]] = {}
    for o in OPTIONS:
        flag = o.flag.lstrip("-")
        inverted = o.action == "store_false"
        for k in (flag, flag.replace("-", "_")):
            out[k] = (o.name, inverted)
        for k in (o.name, o.name.replace("_", "-")):
            out.setdefault(k, (o.name, False))
    for f in fields(PruneOptions):  # API-only fields a file can hold too (ratios)
        if f.name != "parity_feeds":
            out.setdefault(f.name, (f.name, False))
    for k in CLI_KEYS:
        out[k] = (k, False)
        out[k.replace("_", "-")] = (k, False)
    return out


def load_config(path: str | Path) -> dict:
    """The file's settings as field name -> value (values as TOML typed them; PruneOptions
    parses and checks them). Unknown keys, and a file that is not TOML, are exit 2."""
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"--config {p}: no such file")
    try:
        with p.open("rb") as f:
            doc = tomllib.load(f)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UsageError(f"--config {p}: not valid TOML ({' '.join(str(e).split())})") from e
    table = doc.pop("prune", {})
    if not isinstance(table, dict):
        raise UsageError(f"--config {p}: [prune] must be a table")
    keys = _keys()
    extra = [k for k, v in doc.items() if isinstance(v, dict) and k not in keys]
    if extra:
        raise UsageError(
            f"--config {p}: unknown table [{extra[0]}] (options go at the top or in [prune])"
        )
    settings: dict = {}
    for k, v in {**doc, **table}.items():
        if k not in keys:
            raise UsageError(f"--config {p}: unknown option {k!r}")
        name, inverted = keys[k]
        if inverted:
            if not isinstance(v, bool):
                raise UsageError(f"--config {p}: {k} takes true or false, got {v!r}")
            v = not v
        if name in settings and settings[name] != v:
            raise UsageError(f"--config {p}: {name} is given twice with different values")
        settings[name] = v
    return settings


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            raise UsageError(f"cannot write {v!r} to a TOML config")
        return repr(v)
    if isinstance(v, str | Path):
        s = str(v).replace("\\", "\\\\").replace('"', '\\"')
        return f'"{s}"'
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{_toml_key(k)} = {_toml_value(x)}" for k, x in v.items()) + " }"
    raise UsageError(f"cannot write a {type(v).__name__} to a TOML config")


def _toml_key(k) -> str:
    k = str(k)
    return k if k and all(c.isalnum() or c in "-_" for c in k) else _toml_value(k)


def dump_toml(settings: dict, comment: str = "") -> str:
    """``settings`` (field name -> value; None values are left out) as a config file that
    ``load_config`` reads back to the same values."""
    lines = [f"# {line}" for line in comment.splitlines()] if comment else []
    for k, v in settings.items():
        if v is None or (isinstance(v, dict | list | tuple) and not v):
            continue
        lines.append(f"{_toml_key(k)} = {_toml_value(v)}")
    return "\n".join(lines) + "\n"
