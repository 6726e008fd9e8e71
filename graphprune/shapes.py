"""Input shapes: the concrete size of every graph input that MACs are counted at and parity
feeds random inputs of.

The analysis itself keeps symbolic dims symbolic, so the pruned model accepts every size the
original did; only the numbers that need a size (MACs, parity's random inputs) use these.
Each symbolic dim takes its value from, in order: ``--input-shape``, the calibration or
evaluation data, or a probe that runs the original model in ONNX Runtime at a ladder of
sizes and keeps the first that runs (a stride-32 detector does not run at 8x8). When nothing
runs, the user is told which input and dim needs a value.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field

import numpy as np
import onnx

from .errors import CalibrationError, UsageError

log = logging.getLogger(__name__)

#: sizes tried for a symbolic non-batch dim, smallest first (by the kind of input)
_LADDERS = {
    "image": (224, 256, 320, 384, 448, 512, 640, 64, 96, 128, 160, 192, 32),
    "tokens": (16, 8, 32, 64, 128),
    "other": (16, 8, 32, 64, 128, 256, 512, 1024, 1600, 2048, 4096),
}

_SHAPE = re.compile(r"^\d+(?:[x,]\d+)*$")


def parse_input_shapes(flag: str, value) -> dict[str | None, tuple[int, ...]]:
    """``NAME=1x3x320x320`` (repeatable; a bare shape when the model has one input), a list
    of those, or the API's dict ``{name: shape}``; ``None`` keys the bare form."""
    if value is None:
        return {}
    if isinstance(value, dict):
        items = list(value.items())
    else:
        items = []
        for spec in [value] if isinstance(value, str) else list(value):
            if not isinstance(spec, str):
                raise UsageError(f"{flag} takes NAME=DxDx..., got {spec!r}")
            name, sep, dims = spec.strip().rpartition("=")
            items.append((name if sep else None, dims))
    out: dict[str | None, tuple[int, ...]] = {}
    for name, dims in items:
        if name == "":
            raise UsageError(f"{flag}: empty input name in {name}={dims}")
        if isinstance(dims, str):
            text = dims.strip().lower()
            if not _SHAPE.match(text):
                raise UsageError(
                    f"{flag} takes NAME=DxDx... with positive integer dims, got {dims!r}"
                )
            shape = tuple(int(d) for d in re.split("[x,]", text))
        else:
            try:
                shape = tuple(int(d) for d in dims)
            except (TypeError, ValueError):
                raise UsageError(f"{flag}: {name}: dims must be integers, got {dims!r}") from None
        if not shape or any(d <= 0 for d in shape):
            raise UsageError(f"{flag}: {name or 'shape'} dims must be positive, got {dims!r}")
        key = None if name is None else str(name)
        if key in out:
            raise UsageError(f"{flag} gives {'the bare shape' if key is None else key} twice")
        out[key] = shape
    if None in out and len(out) > 1:
        raise UsageError(f"{flag}: a bare shape is only for a model with one input; name it")
    return out


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """The inputs a caller feeds (initializers that are also inputs excluded)."""
    inits = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def _declared(vi: onnx.ValueInfoProto) -> list[int | str | None] | None:
    """Declared dims: ints, dim_param names, or None; None when the rank is unknown."""
    t = vi.type.tensor_type
    if not t.HasField("shape"):
        return None
    out = []
    for d in t.shape.dim:
        if d.HasField("dim_value") and d.dim_value > 0:
            out.append(int(d.dim_value))
        else:
            out.append(d.dim_param or None)
    return out


@dataclass
class InputShapes:
    """Concrete shapes per input and where each came from (given/data/probed/static)."""

    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    source: dict[str, str] = field(default_factory=dict)
    #: inputs whose first dim is symbolic (parity also tries another batch size)
    dynamic_batch: set[str] = field(default_factory=set)

    @property
    def symbolic(self) -> bool:
        return any(s != "static" for s in self.source.values())

    def to_dict(self) -> dict:
        return {n: {"shape": list(s), "from": self.source[n]} for n, s in self.shapes.items()}

    def text(self) -> str:
        return ", ".join(f"{n} {_dims_text(s)}" for n, s in self.shapes.items())


def _dims_text(shape) -> str:
    return "x".join(map(str, shape)) if len(shape) else "scalar"


def _kind(vi: onnx.ValueInfoProto, rank: int) -> str:
    elem = vi.type.tensor_type.elem_type
    if elem in (onnx.TensorProto.INT64, onnx.TensorProto.INT32):
        return "tokens"
    return "image" if rank == 4 else "other"


def resolve(
    model: onnx.ModelProto,
    given: dict[str | None, tuple[int, ...]] | None = None,
    data: dict[str, np.ndarray] | None = None,
    runs=None,
    error_at=None,
) -> InputShapes:
    """Concrete shapes for every input of ``model``. ``data`` maps input names to one
    batch of calibration or evaluation data; ``runs(shapes) -> bool`` says whether the
    original model runs at those input sizes (the probe; None: no probing, defaults are
    taken), and ``error_at(shapes)`` why not (given sizes the model rejects are refused)."""
    inputs = graph_inputs(model)
    names = [i.name for i in inputs]
    given = dict(given or {})
    if None in given:
        if len(inputs) != 1:
            raise UsageError(
                f"--input-shape: the model has {len(inputs)} inputs ({', '.join(names)}); "
                "name each one as NAME=DxD..."
            )
        given = {names[0]: given.pop(None)}
    unknown = sorted(set(given) - set(names))
    if unknown:
        raise UsageError(
            f"--input-shape: no input named {', '.join(unknown)}; inputs: {', '.join(names)}"
        )
    out = InputShapes()
    pending: list[tuple[onnx.ValueInfoProto, list]] = []
    for vi in inputs:
        dims = _declared(vi)
        if vi.name in given:
            shape = given[vi.name]
            _check_against(vi.name, shape, dims, "--input-shape")
            out.shapes[vi.name], out.source[vi.name] = shape, "given"
        elif data is not None and vi.name in data:
            shape = tuple(int(s) for s in np.shape(data[vi.name]))
            _check_against(vi.name, shape, dims, "the data")
            if dims and not isinstance(dims[0], int):
                shape = (1, *shape[1:])  # per-sample MACs; the data's batch is its own
            out.shapes[vi.name], out.source[vi.name] = shape, "data"
        elif dims is not None and all(isinstance(d, int) for d in dims):
            out.shapes[vi.name], out.source[vi.name] = tuple(dims), "static"
        else:
            pending.append((vi, dims))
        if dims and not isinstance(dims[0], int):
            out.dynamic_batch.add(vi.name)
    if pending:
        _probe(out, pending, runs)
    elif error_at is not None and "given" in out.source.values():
        err = error_at(out.shapes)
        if err is not None:
            valued = [
                vi.name
                for vi in inputs
                if out.source[vi.name] != "data" and len(out.shapes[vi.name]) == 0
            ]
            if valued:  # a sample rate, a threshold: a random value may be what fails
                raise CalibrationError(
                    f"the model does not run on random values at {out.text()} ({err}); "
                    f"{', '.join(valued)} may need real values: give inputs with --calib"
                )
            raise UsageError(f"--input-shape: the model does not run at {out.text()}: {err}")
    return out


def _check_against(name: str, shape: tuple[int, ...], dims, where: str) -> None:
    if dims is None:
        return
    if len(shape) != len(dims):
        raise UsageError(
            f"{where}: input {name} has rank {len(dims)}, got shape {'x'.join(map(str, shape))}"
        )
    for k, (s, d) in enumerate(zip(shape, dims, strict=True)):
        if isinstance(d, int) and s != d:
            raise UsageError(f"{where}: input {name} dim {k} is fixed at {d}, got {s}")


def _fill(dims, batch: int, value: int, known: dict) -> tuple[int, ...]:
    if dims is None:
        raise UsageError("rank unknown")  # handled by the caller
    out = []
    for k, d in enumerate(dims):
        if isinstance(d, int):
            out.append(d)
        elif d is not None and d in known:
            out.append(known[d])  # a dim name already fixed elsewhere keeps its value
        else:
            out.append(batch if k == 0 else value)
    return tuple(out)


def _probe(out: InputShapes, pending, runs) -> None:
    """Pick values for the symbolic dims of ``pending`` inputs: batch 1, and for the other
    dims the first size of the ladder at which the original model runs."""
    known: dict[str, int] = {}
    for vi, dims in pending:
        if dims is None:
            raise UsageError(
                f"input {vi.name} has no declared shape; give it with --input-shape "
                f"{vi.name}=DxD..."
            )
    kinds = {_kind(vi, len(dims)) for vi, dims in pending}
    kind = "image" if "image" in kinds else "tokens" if kinds == {"tokens"} else "other"
    only_batch = all(isinstance(d, int) for _, dims in pending for d in dims[1:])
    ladder = (1,) if only_batch else _LADDERS[kind]

    # a dim named like a batch (or like some input's leading dim) is a batch: 1
    batch_names = {dims[0] for _, dims in pending if dims and isinstance(dims[0], str)}
    for _, dims in pending:
        for d in dims:
            if isinstance(d, str) and ("batch" in d.lower() or d in batch_names):
                known[d] = 1

    def shapes_at(value: int) -> dict[str, tuple[int, ...]]:
        return {vi.name: _fill(dims, 1, value, known) for vi, dims in pending}

    chosen = None
    if runs is None:
        chosen = shapes_at(ladder[0])
    else:
        for value in ladder:
            candidate = shapes_at(value)
            feed_shapes = {**out.shapes, **candidate}
            if runs(feed_shapes):
                chosen = candidate
                break
    if chosen is None:
        vi, dims = next((vi, d) for vi, d in pending if any(not isinstance(x, int) for x in d))
        k = next(i for i, x in enumerate(dims) if not isinstance(x, int) and i > 0)
        label = f" ({dims[k]})" if dims[k] else ""
        raise UsageError(
            f"input {vi.name} dim {k}{label} is symbolic and the model runs at none of the "
            f"sizes {min(ladder)}..{max(ladder)}; give it with --input-shape {vi.name}=DxD..."
        )
    for name, shape in chosen.items():
        out.shapes[name], out.source[name] = shape, "probed"
    log.info("input shapes picked by probing: %s", out.text())


def with_shapes(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]]) -> onnx.ModelProto:
    """A weightless copy of ``model`` (large initializers keep only their dims) whose inputs
    have ``shapes``, for shape inference at those sizes (MAC counting)."""
    from .graph import _skeleton as skeleton

    copy = skeleton(model)
    for vi in copy.graph.input:
        shape = shapes.get(vi.name)
        if shape is None:
            continue
        t = vi.type.tensor_type
        del t.shape.dim[:]
        for s in shape:
            t.shape.dim.add().dim_value = int(s)
    del copy.graph.value_info[:]  # inferred afresh at these sizes
    # outputs with symbolic dims lose their shape, so inference sizes them (macs_at)
    for vi in copy.graph.output:
        t = vi.type.tensor_type
        if t.HasField("shape") and not all(d.HasField("dim_value") for d in t.shape.dim):
            t.ClearField("shape")
    return copy


def macs_at(model: onnx.ModelProto, shapes: InputShapes) -> int:
    """MACs of one run of ``model`` with its inputs at ``shapes``."""
    from .graph import infer_shapes
    from .metrics import count_macs

    copy = infer_shapes(with_shapes(model, shapes.shapes))
    # a graph output declared without a shape gets the inferred one, so the node that
    # makes it is counted at its size too
    bare = [o for o in copy.graph.output if not o.type.tensor_type.HasField("shape")]
    if bare:
        known = {vi.name for vi in copy.graph.value_info}
        inferred = onnx.shape_inference.infer_shapes(copy).graph.output
        copy.graph.value_info.extend(
            o for o in inferred if o.name not in known and o.type.tensor_type.HasField("shape")
        )
    return count_macs(copy)
