"""Evaluate small shape-computing subgraphs (Shape → Gather → Concat → Reshape) statically.

Used to read the value a run-time Reshape target will have, given the static shapes that
shape inference found. Returns ``None`` whenever something is not known statically.
"""

from __future__ import annotations

import zlib

import numpy as np
import onnx_graphsurgeon as gs

_MAX_DEPTH = 32
_SYMBOLIC_BASE = -(1 << 40)


def symbol(name: str) -> int:
    """A symbolic dim (``"batch"``) as a negative sentinel that survives Gather/Concat."""
    return _SYMBOLIC_BASE - zlib.crc32(name.encode())


def is_symbol(v: int) -> bool:
    return v <= _SYMBOLIC_BASE


def symbolic_shape(t: gs.Tensor) -> list[int] | None:
    """Shape with symbolic dims as sentinels; None if the rank or any dim is unknown."""
    if isinstance(t, gs.Constant):
        return list(t.values.shape)
    if t.shape is None:
        return None
    out = []
    for s in t.shape:
        if isinstance(s, int) and s >= 0:
            out.append(s)
        elif isinstance(s, str) and s:
            out.append(symbol(s))
        else:
            return None
    return out


def resolve_reshape(in_shape: list[int], target, allowzero: bool = False) -> list[int] | None:
    """Output shape of Reshape(in_shape, target) with symbolic dims carried through; a -1
    may stand for one leftover symbol (``[-1, 8, 32]`` on a ``[batch, 8, 4, 8]`` input)."""
    out = [in_shape[j] if v == 0 and not allowzero else int(v) for j, v in enumerate(target)]
    if out.count(-1) > 1:
        return None
    leftover = sorted(v for v in in_shape if is_symbol(v))
    for v in out:
        if is_symbol(v):
            if v not in leftover:
                return None
            leftover.remove(v)
    known_in = int(np.prod([v for v in in_shape if v >= 0]))
    known_out = int(np.prod([v for v in out if v >= 0]))
    if known_out == 0 or known_in % known_out:
        return None
    factor = known_in // known_out
    if -1 in out:
        if not leftover:
            out[out.index(-1)] = factor
        elif len(leftover) == 1 and factor == 1:
            out[out.index(-1)] = leftover[0]
        else:
            return None
    elif leftover or factor != 1:
        return None
    return out


def static_value(t: gs.Tensor, _depth: int = 0) -> np.ndarray | None:
    if isinstance(t, gs.Constant):
        return np.asarray(t.values)
    if _depth > _MAX_DEPTH or len(t.inputs) != 1:
        return None
    node = t.inputs[0]
    args = [static_value(x, _depth + 1) if x.name else None for x in node.inputs]
    a = node.attrs
    op = node.op
    try:
        if op == "Shape":
            shape = symbolic_shape(node.inputs[0])
            if shape is None:
                return None
            start, end = a.get("start", 0), a.get("end", len(shape))
            return np.array(shape[slice(start, end)], dtype=np.int64)
        if any(v is None for v in args[:1]):
            return None
        if op in ("Identity", "Cast"):
            return args[0] if op == "Identity" else args[0].astype(np.int64)
        if op == "Gather" and args[1] is not None:
            return np.take(args[0], args[1], axis=int(a.get("axis", 0)))
        if op == "Unsqueeze":
            axes = a.get("axes") if "axes" in a else args[1]
            out = args[0]
            for ax in sorted(int(x) % (out.ndim + len(axes)) for x in axes):
                out = np.expand_dims(out, ax)
            return out
        if op == "Squeeze":
            axes = a.get("axes") if "axes" in a else (args[1] if len(args) > 1 else None)
            return np.squeeze(args[0], None if axes is None else tuple(int(x) for x in axes))
        if op == "Concat" and all(v is not None for v in args):
            return np.concatenate(args, axis=int(a["axis"]))
        if op == "Slice" and all(v is not None for v in args):
            starts, ends = args[1], args[2]
            axes = args[3] if len(args) > 3 else np.arange(len(starts))
            steps = args[4] if len(args) > 4 else np.ones(len(starts), np.int64)
            sl = [slice(None)] * args[0].ndim
            for ax, s, e, st in zip(axes, starts, ends, steps, strict=True):
                sl[int(ax)] = slice(int(s), int(e), int(st))
            return args[0][tuple(sl)]
        if op == "ConstantOfShape":
            value = a.get("value")
            fill = value.values.reshape(-1)[0] if isinstance(value, gs.Constant) else 0.0
            return np.full(args[0].astype(np.int64), fill)
        if op == "Equal" and args[1] is not None:
            return np.equal(args[0], args[1])
        if op == "Where" and all(v is not None for v in args):
            return np.where(args[0], args[1], args[2])
        if op in ("Add", "Sub", "Mul", "Div") and args[1] is not None:
            x, y = args[0], args[1]
            if any(is_symbol(v) for v in np.concatenate([x.ravel(), y.ravel()])):
                return None
            if op == "Div":
                return x // y if x.dtype.kind in "iu" else x / y
            return {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply}[op](x, y)
    except (ValueError, IndexError, TypeError, KeyError):
        return None
    return None
