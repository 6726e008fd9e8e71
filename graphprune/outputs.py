"""All outputs of a run or none: each is written to a temporary file beside its target, and
only when every one is written are they renamed into place. A failure removes every
temporary file, and the error names the path the user gave, not the hidden temporary one."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import onnx

from . import weights
from .errors import UsageError

_TWO_GB = 2**31 - 1


class Outputs:
    """Stage files with ``add``, then ``commit`` them together (or ``discard``)."""

    def __init__(self):
        self._staged: list[tuple[str, Path, Path]] = []  # (user path, temp, target)
        self._extra: list[Path] = []  # files written in place (external data)
        self._dirs: list[Path] = []  # directories created for the outputs

    def add(self, path: str | os.PathLike, write: Callable[[Path], None]) -> None:
        target = Path(path)
        try:
            if target.is_dir():
                raise IsADirectoryError(21, "is a directory", str(path))
            missing = [d for d in (target.parent, *target.parent.parents) if not d.exists()]
            first = (target.parent, *target.parent.parents)[len(missing)]
            if not first.is_dir():
                raise NotADirectoryError(20, f"{first} is not a directory", str(path))
            target.parent.mkdir(parents=True, exist_ok=True)
            self._dirs += reversed(missing)  # outermost first; discard removes them in reverse
            fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
            os.close(fd)
        except OSError as e:
            self.discard()
            raise UsageError(f"cannot write {path}: {e.strerror or e}") from e
        self._staged.append((str(path), Path(tmp), target))
        try:
            write(Path(tmp))
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 is not what a user expects
        except OSError as e:
            self.discard()
            raise UsageError(f"cannot write {path}: {e.strerror or e}") from e
        except BaseException:
            self.discard()
            raise

    def add_model(self, path, model: onnx.ModelProto) -> None:
        target = Path(path)
        if weights.is_mapped(model):  # its weights stream into a staged .data beside it
            data = target.with_name(target.name + ".data")
            self.add(data, lambda tmp: None)
            staged = self._staged[-1][1]
            self.add(path, lambda tmp: weights.write_external(model, tmp, staged, data.name))
            return

        def write(tmp: Path) -> None:
            if model.ByteSize() >= _TWO_GB:
                data = target.with_name(target.name + ".data")
                self._extra.append(data)
                onnx.save_model(model, str(tmp), save_as_external_data=True, location=data.name)
            else:
                onnx.save_model(model, str(tmp))

        self.add(path, write)

    def add_json(self, path, data) -> None:
        self.add(path, lambda tmp: tmp.write_text(json.dumps(data, indent=1, default=float)))

    def add_text(self, path, text: str) -> None:
        self.add(path, lambda tmp: tmp.write_text(text))

    def size(self, path) -> int:
        """Bytes staged for ``path`` (before commit), with a model's staged ``.data``."""
        sizes = {user: tmp.stat().st_size for user, tmp, _ in self._staged}
        if str(path) not in sizes:
            raise KeyError(path)
        data = Path(path).with_name(Path(path).name + ".data")
        return sizes[str(path)] + sizes.get(str(data), 0)

    def commit(self) -> None:
        for user, tmp, target in self._staged:
            try:
                os.replace(tmp, target)
            except OSError as e:
                self.discard()
                raise UsageError(f"cannot write {user}: {e.strerror or e}") from e
        self._staged.clear()
        self._extra.clear()
        self._dirs.clear()

    def discard(self) -> None:
        for _, tmp, _ in self._staged:
            tmp.unlink(missing_ok=True)
        for extra in self._extra:
            extra.unlink(missing_ok=True)
        for d in reversed(self._dirs):
            with contextlib.suppress(OSError):  # not empty: not only ours
                d.rmdir()
        self._staged.clear()
        self._extra.clear()
        self._dirs.clear()


def same_file(a, b) -> bool:
    """Whether paths ``a`` and ``b`` name one file (``b`` need not exist yet)."""
    pa, pb = Path(a), Path(b)
    if pb.exists():
        try:
            return os.path.samefile(pa, pb)
        except OSError:
            return False
    return pa.resolve() == pb.resolve()
