"""Shapes read from an ONNX Runtime run: the fallback when static and symbolic shape
inference leave tensors unsized (an op ORT's symbolic inference does not know, or one it
fails on).

A copy of the model lists every node output as a graph output and runs in ONNX Runtime,
graph optimisations off (so every tensor exists), on small random inputs. The declared
symbolic input dims are learnt from the runs: one run with every symbol at a base size, then
one per symbol with only that symbol changed. A dim that no run changes is static; one that
changes is written in the input symbols it scales with: ``batch``, ``2*sequence``,
``batch*sequence`` (the product form the analysis reads), ``sequence + 1``, or, when it
fits none of those, a name of its own shared by every dim that moved the same way.
"""

from __future__ import annotations

import logging
from fractions import Fraction

import numpy as np
import onnx
from onnx import helper, numpy_helper

log = logging.getLogger(__name__)

_TWO_GB = 2**31 - 1
#: base sizes tried for a symbolic non-batch dim, by the kind of input (first that runs)
_BASES = {
    "tokens": (8, 16, 32, 64, 128),
    "image": (64, 32, 96, 128, 224, 256, 320, 384, 512),
    "other": (8, 16, 32, 64, 128, 256),
}
_BATCH = ((2, 3), (1, 2))  # (base, changed) for a symbolic first axis
_MAX_POWER = 3


def _has_data(t: onnx.TensorProto) -> bool:
    return bool(
        t.raw_data
        or t.float_data
        or t.int32_data
        or t.int64_data
        or t.double_data
        or t.uint64_data
        or t.string_data
        or t.data_location == onnx.TensorProto.EXTERNAL
        or int(np.prod(t.dims)) == 0
    )


def _runnable_copy(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with every top-level node output as a graph output; initializers without
    data (a weightless skeleton's) get zeros, enough to run for shapes."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    g = copy.graph
    for i, init in enumerate(g.initializer):
        if not _has_data(init):
            dtype = helper.tensor_dtype_to_np_dtype(init.data_type)
            zeros = numpy_helper.from_array(np.zeros(tuple(init.dims), dtype=dtype), init.name)
            g.initializer[i].CopyFrom(zeros)
    del g.value_info[:]  # nothing to contradict what the run finds
    have = {o.name for o in g.output}
    for node in g.node:
        for name in node.output:
            if name and name not in have:
                have.add(name)
                g.output.add().name = name
    return copy


def _feed_array(vi: onnx.ValueInfoProto, shape: tuple[int, ...], rng) -> np.ndarray | None:
    elem = vi.type.tensor_type.elem_type
    try:
        dtype = helper.tensor_dtype_to_np_dtype(elem)
    except (KeyError, TypeError, ValueError):
        return None
    if dtype == np.bool_:
        return np.ones(shape, dtype=bool)
    if np.issubdtype(dtype, np.floating):
        return rng.standard_normal(shape).astype(dtype)
    if np.issubdtype(dtype, np.integer):
        # ids, positions and token types of 0 index every table; a mask of ones keeps
        # every position
        fill = 1 if "mask" in vi.name.lower() else 0
        return np.full(shape, fill, dtype=dtype)
    return None


class _Inputs:
    """The graph inputs and their symbolic dims: ``key -> (display name, kind, first axis)``.
    A named dim is keyed by its name; an unnamed one by its axis (so that the unnamed
    sequence axes of ``input_ids`` and ``attention_mask`` get one size)."""

    def __init__(self, model: onnx.ModelProto):
        inits = {t.name for t in model.graph.initializer}
        self.inputs = [vi for vi in model.graph.input if vi.name not in inits]
        self.dims: dict[str, list] = {}
        self.symbols: dict[str, tuple[str, str, bool]] = {}
        for vi in self.inputs:
            t = vi.type.tensor_type
            if not vi.type.HasField("tensor_type") or not t.HasField("shape"):
                raise ValueError(f"input {vi.name} has no declared shape")
            dims = []
            rank = len(t.shape.dim)
            elem = t.elem_type
            kind = (
                "tokens"
                if elem in (onnx.TensorProto.INT64, onnx.TensorProto.INT32)
                else "image"
                if rank == 4
                else "other"
            )
            for ax, d in enumerate(t.shape.dim):
                if d.HasField("dim_value") and d.dim_value > 0:
                    dims.append(int(d.dim_value))
                    continue
                key = d.dim_param if d.dim_param else f"#axis{ax}"
                name = d.dim_param or f"{vi.name}_dim{ax}"
                if key not in self.symbols:
                    self.symbols[key] = (name, kind, ax == 0)
                dims.append(key)
            self.dims[vi.name] = dims

    def shapes(self, sizes: dict[str, int]) -> dict[str, tuple[int, ...]]:
        return {
            n: tuple(d if isinstance(d, int) else sizes[d] for d in dims)
            for n, dims in self.dims.items()
        }


class _Runner:
    def __init__(self, model: onnx.ModelProto, inputs: _Inputs):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        so.log_severity_level = 4  # a failed try is expected, not an error to print
        so.intra_op_num_threads = 1
        so.inter_op_num_threads = 1
        from . import weights

        src = weights.session_source(_runnable_copy(model), so)
        self.sess = ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])
        self.names = [o.name for o in self.sess.get_outputs()]
        self.inputs = inputs
        self.vis = {vi.name: vi for vi in inputs.inputs}
        self.run_options = ort.RunOptions()
        self.run_options.log_severity_level = 4

    def run(self, sizes: dict[str, int]) -> dict[str, np.ndarray] | None:
        rng = np.random.default_rng(0)
        feed = {}
        for name, shape in self.inputs.shapes(sizes).items():
            arr = _feed_array(self.vis[name], shape, rng)
            if arr is None:
                return None
            feed[name] = arr
        try:
            values = self.sess.run(None, feed, self.run_options)
        except Exception as e:  # the model does not run at these sizes
            log.debug("shape run at %s failed: %s", sizes, e)
            return None
        return {n: v for n, v in zip(self.names, values, strict=True) if isinstance(v, np.ndarray)}


def _dim_name(v0: int, moved: dict[str, int], base: dict, alt: dict, names: dict) -> int | str:
    """A dim that is ``v0`` at the base sizes and ``moved[k]`` when only symbol ``k`` took
    its changed size, written in the input symbols."""
    if not moved:
        return v0
    factors: list[str] = []
    scale = Fraction(v0)
    for k, vk in moved.items():
        ratio = Fraction(vk, v0) if v0 else None
        step = Fraction(alt[k], base[k])
        power = next((p for p in range(1, _MAX_POWER + 1) if ratio == step**p), None)
        if power is None:
            break
        factors += [names[k]] * power
        scale /= base[k] ** power
    else:
        if scale.denominator == 1 and scale > 0:
            c = int(scale)
            return "*".join(sorted(factors + ([str(c)] if c != 1 else [])))
    if len(moved) == 1:
        ((k, vk),) = moved.items()
        if vk - v0 == alt[k] - base[k]:  # the symbol plus a constant
            off = v0 - base[k]
            return names[k] if off == 0 else f"{names[k]} {'+' if off > 0 else '-'} {abs(off)}"
    parts = [f"{names[k]}={base[k]}:{v0},{alt[k]}:{vk}" for k, vk in sorted(moved.items())]
    return "ort(" + ";".join(parts) + ")"


def _choose_base(runner: _Runner, inputs: _Inputs):
    """Base sizes at which the model runs, and that run's outputs."""
    batch = [k for k, (_, _, first) in inputs.symbols.items() if first]
    others = [k for k in inputs.symbols if k not in batch]
    kinds = {inputs.symbols[k][1] for k in others}
    kind = "image" if "image" in kinds else "tokens" if kinds == {"tokens"} else "other"
    tried = []
    for b, _ in _BATCH:
        for s in _BASES[kind] if others else (None,):
            sizes = {k: b for k in batch} | {k: s for k in others}
            if sizes in tried:
                continue
            tried.append(sizes)
            out = runner.run(sizes)
            if out is not None:
                return sizes, out
    return None, None


def ort_shapes(model: onnx.ModelProto) -> dict[str, onnx.ValueInfoProto]:
    """Shapes of the top-level node outputs (graph outputs excluded) from ONNX Runtime runs,
    symbolic input dims kept symbolic; ``{}`` when the model does not run."""
    if model.ByteSize() >= _TWO_GB:
        log.warning("shapes from an ONNX Runtime run: the model is over 2 GB; skipped")
        return {}
    try:
        inputs = _Inputs(model)
        runner = _Runner(model, inputs)
    except Exception as e:
        log.warning("shapes from an ONNX Runtime run: cannot run the model (%s)", e)
        return {}
    base, first = _choose_base(runner, inputs)
    if base is None:
        log.warning("shapes from an ONNX Runtime run: the model runs at no size tried")
        return {}
    alt: dict[str, int] = {}
    moved_runs: dict[str, dict[str, np.ndarray]] = {}
    merged: set[str] = set()  # symbols that only change together with an earlier one
    for k, (name, _, is_batch) in inputs.symbols.items():
        if k in merged:
            continue
        b = base[k]
        tries = [v for bb, v in _BATCH if bb == b] if is_batch else [b * 3 // 2, 2 * b]
        # alone, else with the symbols of its base size not yet varied (two names for one
        # length, e.g. the ids' and the mask's sequence)
        peers = [
            j
            for j, (_, _, jb) in inputs.symbols.items()
            if j != k and jb == is_batch and base[j] == b and j not in alt and j not in merged
        ]
        done = False
        for group in ([k], [k, *peers]) if peers else ([k],):
            for v in tries:
                out = runner.run({**base, **dict.fromkeys(group, v)})
                if out is not None:
                    alt[k], moved_runs[k] = v, out
                    merged.update(group[1:])
                    done = True
                    break
            if done:
                break
        if not done:  # runs at one size only: the dims it drives are that size
            log.info("shapes from an ONNX Runtime run: %s runs only at %d", name, b)
    names = {k: s[0] for k, s in inputs.symbols.items()}
    skip = {vi.name for vi in list(model.graph.output) + list(model.graph.input)}
    found: dict[str, onnx.ValueInfoProto] = {}
    for name, arr in first.items():
        if name in skip:
            continue
        dims = []
        for ax, v0 in enumerate(arr.shape):
            moved = {}
            for k, out in moved_runs.items():
                other = out.get(name)
                if other is None or other.ndim != arr.ndim:
                    moved = None
                    break
                if other.shape[ax] != v0:
                    moved[k] = int(other.shape[ax])
            dims.append(
                f"unk__ort_{name}_{ax}"
                if moved is None
                else _dim_name(int(v0), moved, base, alt, names)
            )
        try:
            elem = helper.np_dtype_to_tensor_dtype(arr.dtype)
        except (KeyError, TypeError, ValueError):
            continue
        found[name] = helper.make_tensor_value_info(name, elem, dims)
    return found
