"""The sweep directory: its identity, the resumable state file, atomic writes."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

from ..errors import UsageError
from ..options import OPTIONS
from .grid import Grid, is_axis

STATE = "state.jsonl"


META = "sweep-meta.json"


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
