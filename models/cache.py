"""The export cache shared by the zoos: build a file once, atomically."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

CACHE_DIR = Path(__file__).resolve().parent / "_cache"


def cached(filename: str, write: Callable[[str], object], cache_dir=None) -> Path:
    """Return ``cache_dir/filename``, calling ``write(tmp_path)`` first if it is absent.
    The file is written under a temporary name and moved into place, so concurrent callers
    (pytest-xdist workers) never read a partial file."""
    cache = Path(cache_dir) if cache_dir is not None else CACHE_DIR
    cache.mkdir(parents=True, exist_ok=True)
    target = cache / filename
    if target.exists():
        return target
    fd, tmp = tempfile.mkstemp(prefix=f".{target.stem}-", suffix=target.suffix, dir=cache)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return target
