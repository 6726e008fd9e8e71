"""Weights that stay on disk. A model whose weights live in external data is read without
them: every large weight is a read-only memory map of its file, so reading it costs page
cache (which the kernel can drop), not the process's own memory. What a prune computes
(sliced or refitted weights) is spilled to a scratch file as it is made and mapped back.
ONNX Runtime reads the same files by memory map when their offsets are aligned and weight
prepacking is off (``runtime_model``), so parity needs no second copy of the weights.

In memory, such a model's external tensors name their files by absolute path, so a
ModelProto says where its weights are without any registry. ONNX Runtime and
``onnx.checker`` want paths relative to one folder: ``runtime_model`` gives them that
form. A model ONNX Runtime reads must have all its weights under one folder: the
original's are where the user keeps them (never written, never linked), and a pruned
model's are all in its scratch (the weights it kept unchanged are copied there once, in
the kernel). ``write_external`` streams every weight, tensor by tensor, into the output's
own ``.data`` file at aligned offsets."""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import shutil
import tempfile
import weakref
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.ir.tensor import LazyValues

log = logging.getLogger(__name__)

#: offsets of spilled and written tensors are multiples of this (64 KiB: the page size on
#: Linux divides it, and it is the allocation granularity ONNX Runtime maps by on Windows)
ALIGN = 1 << 16
#: external tensors smaller than this are read into the proto (shape constants, norms)
INLINE_BYTES = 1 << 16
#: computed weights at least this large are spilled in a graph whose weights are on disk
SPILL_BYTES = 1 << 16

_SCRATCHES: list[Scratch] = []
#: id(memory map) -> (weak reference to it, the TensorProto that describes it on disk)
_MAPPED: dict[int, tuple[weakref.ref, onnx.TensorProto]] = {}


class Scratch:
    """A pruned graph's folder of weights: its spill file holds what the prune computed
    and the original weights it kept (copied once each)."""

    def __init__(self):
        self.dir = Path(tempfile.mkdtemp(prefix="graphprune-"))
        self.path = self.dir / "spill.data"
        self.path.touch()
        self._end = 0
        self._copied: dict[tuple, onnx.TensorProto] = {}
        _SCRATCHES.append(self)

    def _append(self, write) -> int:
        start = -(-self._end // ALIGN) * ALIGN
        with open(self.path, "r+b") as f:
            f.seek(start)
            self._end = start + write(f)
        return start

    def spill(self, array: np.ndarray, data_type: int, name: str) -> np.ndarray:
        """Append ``array`` to the spill file and return a read-only map of it there."""
        flat = np.ascontiguousarray(array).reshape(-1).view(np.uint8)
        start = self._append(lambda f: f.write(memoryview(flat)))
        proto = external_tensor(name, data_type, array.shape, self.path, start, flat.nbytes)
        return _map(proto)

    def adopt(self, t: onnx.TensorProto) -> onnx.TensorProto:
        """``t`` (an external tensor elsewhere) as a tensor of this folder: its bytes are
        copied here the first time it is asked for."""
        info = _info(t)
        src, offset, length = info["location"], int(info.get("offset", 0)), int(info["length"])
        if Path(src) == self.path:
            return t
        key = (src, offset, length)
        if key not in self._copied:

            def write(f):
                with open(src, "rb") as fi:
                    _copy_range(fi, f, offset, length)
                return length

            start = self._append(write)
            self._copied[key] = external_tensor(
                t.name, t.data_type, t.dims, self.path, start, length
            )
        out = onnx.TensorProto()
        out.CopyFrom(self._copied[key])
        out.name = t.name
        return out

    def release(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


@atexit.register
def _remove_all() -> None:
    for s in _SCRATCHES:
        s.release()


def _copy_range(fi, fo, offset: int, length: int) -> None:
    """Copy ``length`` bytes at ``offset`` of ``fi`` to ``fo``'s position, in the kernel
    when it can (``copy_file_range``), else in 16 MiB chunks."""
    fo.flush()
    done = 0
    with contextlib.suppress(OSError, AttributeError):
        while done < length:
            n = os.copy_file_range(fi.fileno(), fo.fileno(), length - done, offset + done)
            if n == 0:
                break
            done += n
    fo.seek(0, os.SEEK_END)
    fi.seek(offset + done)
    while done < length:
        chunk = fi.read(min(16 << 20, length - done))
        if not chunk:
            raise OSError(f"{fi.name}: ends before offset {offset + length}")
        fo.write(chunk)
        done += len(chunk)


def external_tensor(name, data_type, shape, location, offset, length) -> onnx.TensorProto:
    t = onnx.TensorProto(name=name, data_type=data_type, dims=[int(d) for d in shape])
    _set_external(t, location, offset, length)
    return t


def _set_external(t: onnx.TensorProto, location, offset, length) -> None:
    t.data_location = onnx.TensorProto.EXTERNAL
    del t.external_data[:]
    for key, value in (("location", location), ("offset", offset), ("length", length)):
        entry = t.external_data.add()
        entry.key, entry.value = key, str(value)


def _info(t: onnx.TensorProto) -> dict[str, str]:
    return {e.key: e.value for e in t.external_data}


def is_external(t: onnx.TensorProto) -> bool:
    return t.data_location == onnx.TensorProto.EXTERNAL


def _on_disk(t: onnx.TensorProto) -> bool:
    """An external tensor this module mapped (its location is absolute)."""
    return is_external(t) and os.path.isabs(_info(t).get("location", ""))


def np_dtype(data_type: int) -> np.dtype:
    return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(data_type))


def _map(t: onnx.TensorProto) -> np.ndarray:
    info = _info(t)
    dtype, shape = np_dtype(t.data_type), tuple(int(d) for d in t.dims)
    if int(np.prod(shape)) == 0:
        arr = np.zeros(shape, dtype)
    else:
        offset = int(info.get("offset", 0))
        arr = np.memmap(info["location"], dtype=dtype, mode="r", offset=offset, shape=shape)
    key = id(arr)
    _MAPPED[key] = (weakref.ref(arr, lambda _, key=key: _MAPPED.pop(key, None)), t)
    return arr


def _proto_of(arr) -> onnx.TensorProto | None:
    entry = _MAPPED.get(id(arr))
    if entry is None or entry[0]() is not arr:
        return None
    return entry[1]


def _external_tensors(model: onnx.ModelProto):
    from .graph import all_graphs

    for g in all_graphs(model.graph):
        for t in g.initializer:
            if is_external(t):
                yield t


def is_mapped(model: onnx.ModelProto) -> bool:
    """Whether ``model``'s weights are on disk (read by ``open_external``)."""
    return any(_on_disk(t) for t in _external_tensors(model))


def folder_of(model: onnx.ModelProto) -> Path | None:
    """The folder all of ``model``'s weights on disk are under (None: it has none)."""
    paths = {_info(t)["location"] for t in _external_tensors(model) if _on_disk(t)}
    if not paths:
        return None
    return Path(os.path.commonpath([os.path.dirname(p) for p in paths]))


def open_external(model: onnx.ModelProto, base: Path) -> None:
    """``model`` was read without its external data: small external tensors are read into
    the proto, and large ones are named by the absolute path of their file."""
    from .errors import ModelLoadError

    for t in _external_tensors(model):
        info = _info(t)
        src = (base / info["location"]).resolve()
        offset, length = int(info.get("offset", 0)), info.get("length")
        nbytes = int(np.prod(t.dims)) * np_dtype(t.data_type).itemsize
        length = int(length) if length is not None else nbytes
        if not src.is_file():
            raise ModelLoadError(f"{t.name}: its external data file {src} is missing")
        if src.stat().st_size < offset + length:
            raise ModelLoadError(f"{t.name}: {src} ends before its data")
        if length < INLINE_BYTES:
            with open(src, "rb") as f:
                f.seek(offset)
                raw = f.read(length)
            del t.external_data[:]
            t.data_location = onnx.TensorProto.DEFAULT
            t.raw_data = raw
            continue
        if offset % 4096:
            log.info(
                "%s: external data at an offset that is not page-aligned (%d); ONNX "
                "Runtime reads it into memory instead of mapping it",
                t.name,
                offset,
            )
        _set_external(t, src, offset, length)


def runtime_model(model: onnx.ModelProto) -> tuple[onnx.ModelProto, Path | None]:
    """``model`` as ONNX Runtime reads it: external tensors named relative to the one
    folder they are under (returned; None and ``model`` itself when it has no weights on
    disk)."""
    folder = folder_of(model)
    if folder is None:
        return model, None
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for t in _external_tensors(out):
        if _on_disk(t):
            for e in t.external_data:
                if e.key == "location":
                    e.value = os.path.relpath(e.value, folder)
    return out, folder


def session_source(model: onnx.ModelProto, opts, prepack: bool = False) -> bytes:
    """The bytes to build an ONNX Runtime session of ``model`` from, with ``opts`` set so
    that a model whose weights are on disk reads them from their folder, mapped. Unless
    ``prepack`` (timing, where a deployment's speed is what counts), weight prepacking and
    the memory arena are then off: MLAS would keep a copy of every MatMul weight in its own
    layout, and the arena would keep every buffer a run ever used."""
    import onnxruntime as ort

    model, folder = runtime_model(model)
    if folder is not None:
        opts.add_session_config_entry(
            "session.model_external_initializers_file_folder_path", str(folder)
        )
        if not prepack:
            opts.add_session_config_entry("session.disable_prepacking", "1")
            # without the arena, what a run allocates goes back when it is freed: the fp32
            # copies ORT's CPU kernels make of fp16 weights, one at a time, not all kept
            opts.enable_cpu_mem_arena = False
            # and in priority order those copies are made as they are used: in the default
            # order the Casts ORT puts on fp16 weights (ready from the start) all run first
            opts.execution_order = ort.ExecutionOrder.PRIORITY_BASED
    return model.SerializeToString()


def relocated(model: onnx.ModelProto, location: str) -> onnx.ModelProto:
    """A copy of ``model`` whose external tensors all name ``location``."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for t in _external_tensors(out):
        for e in t.external_data:
            if e.key == "location":
                e.value = location
    return out


class MappedValues(LazyValues):
    """graphsurgeon's lazy values for a weight on disk: loading maps it (read-only), and
    exporting reuses its TensorProto, so the data is never copied into the proto."""

    def load(self):
        return _map(self.tensor)


def _constants(graph: gs.Graph):
    seen = set()
    for sub in _graphs(graph):
        for t in sub.tensors().values():
            if isinstance(t, gs.Constant) and id(t) not in seen:
                seen.add(id(t))
                yield t


def _graphs(graph: gs.Graph):
    yield graph
    for node in graph.nodes:
        for v in node.attrs.values():
            if isinstance(v, gs.Graph):
                yield from _graphs(v)
            elif isinstance(v, list | tuple):
                for x in v:
                    if isinstance(x, gs.Graph):
                        yield from _graphs(x)


def map_constants(graph: gs.Graph) -> None:
    """After ``gs.import_onnx``: every weight on disk becomes ``MappedValues`` (left as
    is, graphsurgeon would read it into the proto the first time its values are asked)."""
    mapped = False
    for c in _constants(graph):
        v = c._values
        if isinstance(v, LazyValues) and not isinstance(v, MappedValues) and _on_disk(v.tensor):
            c._values = MappedValues(v.tensor)
            mapped = True
    graph._gp_on_disk = mapped  # (read from __dict__: gs.Graph's getattr logs a miss)


def on_disk(graph: gs.Graph) -> bool:
    """Whether some of ``graph``'s weights are on disk (a copy of such a graph is too)."""
    if "_gp_on_disk" not in graph.__dict__:
        graph._gp_on_disk = any(
            isinstance(c._values, MappedValues) or _proto_of(c._values) is not None
            for c in _constants(graph)
        )
    return graph._gp_on_disk


def _scratch(graph: gs.Graph) -> Scratch:
    scratch = graph.__dict__.get("_gp_scratch")
    if scratch is None:
        scratch = graph._gp_scratch = Scratch()
    return scratch


def keep(graph: gs.Graph, values: np.ndarray, name: str) -> np.ndarray:
    """``values`` as a weight of ``graph`` holds it: in a graph whose weights are on disk, a
    large new array is spilled there and mapped back, so pruned weights never pile up in
    memory; otherwise ``values`` itself."""
    if not on_disk(graph) or values.nbytes < SPILL_BYTES or _proto_of(values) is not None:
        return values
    return _scratch(graph).spill(values, onnx.helper.np_dtype_to_tensor_dtype(values.dtype), name)


def prepare_export(graph: gs.Graph, own: bool = True) -> None:
    """Before ``gs.export_onnx``: every mapped weight goes back to being lazy (exported as
    its TensorProto, no copy). With ``own`` (a pruned graph, whose weights must all be in
    one folder for ONNX Runtime), a large computed weight is spilled to the graph's
    scratch and a kept original one is copied there; without it (the parity reference,
    which reads the original's weights where they are) computed ones stay in the proto."""
    if not on_disk(graph):
        return
    for c in _constants(graph):
        v = c._values
        if isinstance(v, MappedValues):
            proto = v.tensor
        elif isinstance(v, np.ndarray):
            proto = _proto_of(v)
            if proto is None and own and v.nbytes >= SPILL_BYTES:
                proto = _proto_of(keep(graph, v, c.name))
        else:
            continue
        if proto is None:
            continue
        t = _scratch(graph).adopt(proto) if own else proto
        copy = onnx.TensorProto()
        copy.CopyFrom(t)
        c._values = MappedValues(copy)


def external_bytes(model: onnx.ModelProto) -> int:
    """Bytes the model's external tensors hold on disk."""
    return sum(int(_info(t).get("length", 0)) for t in _external_tensors(model))


def write_external(
    model: onnx.ModelProto, onnx_path: Path, data_path: Path, data_name: str
) -> None:
    """Write ``model`` (weights on disk) to ``onnx_path`` with its weights streamed into
    ``data_path`` (named ``data_name`` in the proto), tensor by tensor, each at an offset
    aligned to ``ALIGN``."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    with contextlib.ExitStack() as files, open(data_path, "wb") as fo:
        sources: dict[str, object] = {}
        end = 0
        for t in _external_tensors(out):
            info = _info(t)
            location = info["location"]
            if location not in sources:
                sources[location] = files.enter_context(open(location, "rb"))
            start = -(-end // ALIGN) * ALIGN
            if start > end:  # the gap is a hole in the file, not written zeros
                fo.seek(start)
                fo.truncate()
            length = int(info["length"])
            _copy_range(sources[location], fo, int(info.get("offset", 0)), length)
            end = start + length
            _set_external(t, data_name, start, length)
    onnx.save_model(out, str(onnx_path))
