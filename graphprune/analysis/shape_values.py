"""Evaluate small shape-computing subgraphs (Shape → Gather → Concat → Reshape) statically.

Used to read the value a run-time Reshape target will have, given the static shapes that
shape inference found. Returns ``None`` whenever something is not known statically.
"""

from __future__ import annotations

import zlib
from collections import Counter

import numpy as np
import onnx_graphsurgeon as gs

_MAX_DEPTH = 32
_SYMBOLIC_BASE = -(1 << 40)


_NAMES: dict[int, str] = {}


def symbol(name: str) -> int:
    """A symbolic dim (``"batch"``, or a product ``"batch*seq"``) as a negative sentinel
    that survives Gather/Concat; products are canonical (factors sorted)."""
    canon = "*".join(sorted(p.strip() for p in name.split("*")))
    v = _SYMBOLIC_BASE - zlib.crc32(canon.encode())
    _NAMES[v] = canon
    return v


def is_symbol(v: int) -> bool:
    return v <= _SYMBOLIC_BASE


def symbol_name(v: int) -> str:
    return _NAMES[v]


def factors(v: int) -> tuple[int, Counter]:
    """A dim as (known integer factor, multiset of symbol names)."""
    if not is_symbol(v):
        return int(v), Counter()
    known, names = 1, Counter()
    for atom in _NAMES[v].split("*"):
        if atom.isdigit():
            known *= int(atom)
        else:
            names[atom] += 1
    return known, names


def product(dims) -> int:
    """The product of dims, a sentinel if any is symbolic."""
    known, names = 1, Counter()
    for d in dims:
        k, n = factors(d)
        known, names = known * k, names + n
    if not names:
        return known
    if known != 1:
        names[str(known)] += 1  # a symbolic product keeps its constant factor as a name
    return symbol("*".join(sorted(names.elements())))


def divides(a: tuple[int, Counter], b: tuple[int, Counter]) -> bool:
    return b[0] % a[0] == 0 and not (a[1] - b[1])


def symbolic_shape(t: gs.Tensor) -> list[int] | None:
    """Shape with symbolic dims as sentinels; None if the rank or any dim is unknown (onnx
    names the dims it could not infer ``unk__N``: those are unknown)."""
    if isinstance(t, gs.Constant):
        return list(t.values.shape)
    if t.shape is None:
        return None
    out = []
    for s in t.shape:
        if isinstance(s, int) and s >= 0:
            out.append(s)
        elif isinstance(s, str) and s and not s.startswith("unk__"):
            out.append(symbol(s))
        else:
            return None
    return out


def resolve_reshape(in_shape: list[int], target, allowzero: bool = False) -> list[int] | None:
    """Output shape of Reshape(in_shape, target) with symbolic dims carried through; a -1
    may stand for leftover symbols (``[-1, 64]`` on ``[b, s, 64]`` is ``[b*s, 64]``)."""
    out = [in_shape[j] if v == 0 and not allowzero else int(v) for j, v in enumerate(target)]
    if out.count(-1) > 1:
        return None
    known_in, names_in = factors(product(in_shape))
    known_out, names_out = factors(product([v for v in out if v != -1]))
    if names_out - names_in or known_out == 0 or known_in % known_out:
        return None
    rest, factor = names_in - names_out, known_in // known_out
    if -1 in out:
        if not rest:
            out[out.index(-1)] = factor
        elif factor == 1:
            out[out.index(-1)] = symbol("*".join(sorted(rest.elements())))
        else:
            return None
    elif rest or factor != 1:
        return None
    return out


#: ops ``static_value`` evaluates; the inputs of any other producer are never visited
_EVALUATED = frozenset(
    (
        "Shape",
        "Identity",
        "Cast",
        "Gather",
        "Unsqueeze",
        "Squeeze",
        "Concat",
        "Slice",
        "Reshape",
        "ConstantOfShape",
        "Equal",
        "Where",
        "Add",
        "Sub",
        "Mul",
        "Div",
        "Mod",
        "Transpose",
    )
)
#: a ``Reshape`` of a constant is evaluated up to this many elements (shape vectors, pads)
_SMALL = 4096


def static_value(t: gs.Tensor, _depth: int = 0, _memo: dict | None = None) -> np.ndarray | None:
    """The value ``t`` will have at run time, evaluated from constants and the static shapes
    that ``Shape`` reads; None when it is not known statically. Only the producers of the ops
    it evaluates are visited (a ``Shape``'s input is read for its shape, never evaluated),
    and each tensor once per call, so the cost is the size of the shape subgraph, not of
    the network behind it."""
    if isinstance(t, gs.Constant):
        return np.asarray(t.values)
    memo = {} if _memo is None else _memo
    key = id(t)
    if key not in memo:
        memo[key] = None  # a cycle (or a revisit while evaluating) reads as unknown
        memo[key] = _evaluate(t, _depth, memo)
    return memo[key]


def _evaluate(t: gs.Tensor, _depth: int, memo: dict) -> np.ndarray | None:
    if _depth > _MAX_DEPTH or len(t.inputs) != 1:
        return None
    node = t.inputs[0]
    op = node.op
    if op not in _EVALUATED:
        return None
    a = node.attrs
    if op == "Shape":
        shape = symbolic_shape(node.inputs[0])
        if shape is None:
            return None
        start, end = a.get("start", 0), a.get("end", len(shape))
        return np.array(shape[slice(start, end)], dtype=np.int64)
    args = []
    for x in node.inputs:
        v = static_value(x, _depth + 1, memo) if x.name else None
        if v is None and not args:
            return None  # every evaluated op needs its first input
        args.append(v)
    try:
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
        if op == "Reshape" and args[1] is not None and args[0].size <= _SMALL:
            target = [int(v) for v in np.ravel(args[1])]
            if not a.get("allowzero", 0):
                target = [args[0].shape[j] if v == 0 else v for j, v in enumerate(target)]
            return args[0].reshape(target)
        if op == "Transpose":
            perm = a.get("perm")
            return np.transpose(args[0], None if perm is None else [int(k) for k in perm])
        if op == "ConstantOfShape":
            value = a.get("value")
            fill = value.values.reshape(-1)[0] if isinstance(value, gs.Constant) else 0.0
            return np.full(args[0].astype(np.int64), fill)
        if op == "Equal" and args[1] is not None:
            return np.equal(args[0], args[1])
        if op == "Where" and all(v is not None for v in args):
            return np.where(args[0], args[1], args[2])
        if op in ("Add", "Sub", "Mul", "Div", "Mod") and args[1] is not None:
            x, y = args[0], args[1]
            if any(is_symbol(v) for v in np.concatenate([x.ravel(), y.ravel()])):
                return None
            if op == "Div":
                return x // y if x.dtype.kind in "iu" else x / y
            if op == "Mod":  # fmod=0: the sign of the divisor (numpy's), fmod=1: of the dividend
                return np.fmod(x, y) if a.get("fmod", 0) else np.mod(x, y)
            return {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply}[op](x, y)
    except (ValueError, IndexError, TypeError, KeyError):
        return None
    return None


_PASS_THROUGH = (
    "Gather",
    "Slice",
    "Concat",
    "Unsqueeze",
    "Squeeze",
    "Cast",
    "Identity",
    "Reshape",
)  # Reshape of a 1-D shape tensor to [-1]: the same entries


def _flat_reshape(node: gs.Node) -> bool:
    """A Reshape of a 1-D shape vector to ``[-1]`` (or its own length): the same entries."""
    x, v = static_value(node.inputs[0]), static_value(node.outputs[0])
    return x is not None and v is not None and x.ndim <= 1 and v.ndim == 1 and v.size == x.size


def entry_sources(t: gs.Tensor, _depth: int = 0) -> list | None:
    """Where each entry of a 1-D shape tensor comes from: ``("dim", tensor, axis)`` for a
    size read by Shape, ``("const",)`` for a literal; None if anything else computes it."""
    if isinstance(t, gs.Constant):
        return [("const",)] * int(np.asarray(t.values).size)
    if _depth > _MAX_DEPTH or len(t.inputs) != 1:
        return None
    node = t.inputs[0]
    if node.op == "Shape":
        shape = node.inputs[0].shape
        if shape is None:
            return None
        rank = len(shape)
        start, end = node.attrs.get("start", 0), node.attrs.get("end", rank)
        return [("dim", node.inputs[0], ax) for ax in range(rank)[slice(start, end)]]
    if node.op not in _PASS_THROUGH:
        return None
    if node.op == "Reshape" and not _flat_reshape(node):
        return None
    if node.op == "Concat":
        parts = [entry_sources(x, _depth + 1) for x in node.inputs]
        return None if any(p is None for p in parts) else [e for p in parts for e in p]
    src = entry_sources(node.inputs[0], _depth + 1)
    if src is None:
        return None
    if node.op == "Gather":
        idx = static_value(node.inputs[1])
        if idx is None or int(node.attrs.get("axis", 0)) != 0:
            return None
        return [src[int(i)] for i in np.atleast_1d(idx)]
    if node.op == "Slice":  # a 1-D shape vector: only axis 0
        starts, ends = static_value(node.inputs[1]), static_value(node.inputs[2])
        if starts is None or ends is None:
            return None
        steps = static_value(node.inputs[4]) if len(node.inputs) > 4 else None
        step = 1 if steps is None else int(np.ravel(steps)[0])
        return src[slice(int(np.ravel(starts)[0]), int(np.ravel(ends)[0]), step)]
    return src


#: ops a shape vector passes through on its way to a Reshape / Expand shape operand
SHAPE_MATH = (
    *_PASS_THROUGH,
    "Mul",
    "Div",
    "Add",
    "Sub",
    "Equal",
    "Where",
    "ConstantOfShape",
    "Max",
    "Min",
)


def slice_bounds_foldable(node: gs.Node) -> bool:
    """Every bound operand (starts, ends, axes, steps) of a Slice has a static value with no
    symbolic entry, so the Slice rule can write them as constants (and does, whenever the
    sliced axis or a size they read at run time changes)."""
    for i in range(1, min(len(node.inputs), 5)):
        t = node.inputs[i]
        if not t.name:
            continue
        v = static_value(t)
        if v is None or any(is_symbol(int(e)) for e in np.ravel(v)):
            return False
    return True


def flows_only_into_shape_operands(t: gs.Tensor, _depth: int = 0) -> bool:
    """``t`` (a Shape output) reaches nothing but Reshape / Expand shape operands, Slice
    bounds that fold to constants, or the length of a shape vector, through shape arithmetic.
    Those rules follow, re-fold or couple every entry they set, so the size read can never
    go stale."""
    if _depth > _MAX_DEPTH:
        return False
    for node in t.outputs:
        slots = [i for i, x in enumerate(node.inputs) if x is t]
        if node.op in ("Reshape", "Expand") and slots == [1]:
            continue
        if node.op == "Shape":  # the length of a shape vector
            continue
        if node.op == "Slice" and 0 not in slots and slice_bounds_foldable(node):
            continue  # the Slice rule writes such bounds as constants when a size changes
        if node.op not in SHAPE_MATH or (node.op in ("Reshape", "Expand") and slots != [0]):
            return False
        if not all(flows_only_into_shape_operands(o, _depth + 1) for o in node.outputs):
            return False
    return True


def dims_read(t: gs.Tensor, _depth: int = 0, _seen=None) -> list[tuple[gs.Tensor, int]]:
    """Every ``(tensor, axis)`` whose size some Shape in ``t``'s producer chain reads."""
    seen = set() if _seen is None else _seen
    if isinstance(t, gs.Constant) or _depth > _MAX_DEPTH or id(t) in seen or len(t.inputs) != 1:
        return []
    seen.add(id(t))
    node = t.inputs[0]
    if node.op == "Shape":
        x = node.inputs[0]
        return [(x, ax) for ax in range(len(x.shape or ()))]
    out = []
    for x in node.inputs:
        if x.name:
            out += dims_read(x, _depth + 1, seen)
    return out
