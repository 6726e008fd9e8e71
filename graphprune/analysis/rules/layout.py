"""Ops that move axes around: Flatten, Reshape, Squeeze/Unsqueeze, Transpose, Pad, Resize,
Expand. Merging axes (C,H,W) → C·H·W links the merged axis to its *leading* factor as
blocks; the other factors stay unmapped, hence frozen."""

from __future__ import annotations

import contextlib

import numpy as np
import onnx_graphsurgeon as gs

from ..context import Unsupported
from ..shape_values import (
    divides,
    entry_sources,
    factors,
    is_symbol,
    product,
    resolve_reshape,
    static_value,
    symbol_name,
    symbolic_shape,
)
from .registry import OpRule, register


def match_chunks(a, b):
    """Split two shapes (ints, or symbolic sentinels) of equal volume into minimal runs of
    equal product; size-1 axes outside a run are skipped. Returns
    ``[(in_axes, out_axes), ...]`` or None when the shapes do not factor."""
    chunks, i, j = [], 0, 0
    while True:
        while i < len(a) and a[i] == 1:
            i += 1
        while j < len(b) and b[j] == 1:
            j += 1
        if i == len(a) or j == len(b):
            return chunks if i == len(a) and j == len(b) else None
        ii, jj, pa, pb = [i], [j], factors(a[i]), factors(b[j])
        i, j = i + 1, j + 1
        while pa != pb:
            if divides(pa, pb) and i < len(a):
                ii.append(i)
                pa = factors(product([a[k] for k in ii]))
                i += 1
            elif divides(pb, pa) and j < len(b):
                jj.append(j)
                pb = factors(product([b[k] for k in jj]))
                j += 1
            else:
                return None
        chunks.append((ii, jj))


def _lead(shape, axes):
    """(leading axis > 1, product of the axes after it) when both are known integers."""
    known = [k for k in axes if shape[k] != 1]
    if not known or any(is_symbol(shape[k]) for k in known):
        return None
    lead = known[0]
    return lead, int(np.prod([shape[k] for k in known[1:]]))


def link_reshape(ctx, a, b) -> dict[int, int]:
    """Link input axes to output axes (shapes with symbolic sentinels); return
    {out_axis: in_axis} for 1:1 matches. Merged or split symbolic axes stay unmapped."""
    chunks = match_chunks(a, b)
    if chunks is None:
        raise Unsupported("shapes do not factor")
    one_to_one = {}
    for ii, jj in chunks:
        if len(ii) == 1 and len(jj) == 1:
            ctx.identity(ctx.in_dim(0, ii[0]), ctx.out_dim(0, jj[0]))
            one_to_one[jj[0]] = ii[0]
        elif len(jj) == 1 and _lead(a, ii):  # merge: blocks of the leading input axis
            lead, inner = _lead(a, ii)
            ctx.block(ctx.out_dim(0, jj[0]), ctx.in_dim(0, lead), inner)
        elif len(ii) == 1 and _lead(b, jj):  # split: e.g. hidden → (heads, head_dim)
            lead, inner = _lead(b, jj)
            heads = ctx.out_dim(0, lead)
            ctx.block(ctx.in_dim(0, ii[0]), heads, inner)
            if inner > 1:
                ctx.tag(heads, "head")
    return one_to_one


def _set_shape(t, shape: list[int]) -> None:
    """Write a resolved shape (sentinels become their names) onto an activation."""
    t.shape = [symbol_name(v) if is_symbol(v) else int(v) for v in shape]


@register
class Flatten(OpRule):
    ops = ("Flatten",)

    def link(self, node, ctx):
        a = symbolic_shape(node.inputs[0])
        if a is None:
            raise Unsupported("input shape unknown")
        axis = int(ctx.attr("axis", 1)) % (len(a) + 1)
        b = [product(a[:axis]), product(a[axis:])]
        _set_shape(node.outputs[0], b)
        link_reshape(ctx, a, b)


@register
class Reshape(OpRule):
    ops = ("Reshape",)

    def link(self, node, ctx):
        sources = entry_sources(node.inputs[1])
        with _sources_frozen_on_failure(ctx, sources):
            self._link(node, ctx, sources)

    def _link(self, node, ctx, sources):
        target = static_value(node.inputs[1])
        if target is None:
            raise Unsupported("target computed at run time and not evaluable")
        a = symbolic_shape(node.inputs[0])
        if a is None:
            raise Unsupported("input shape unknown")
        b = resolve_reshape(a, target.tolist(), bool(ctx.attr("allowzero", 0)))
        if b is None:
            b = symbolic_shape(node.outputs[0])
            if b is None:
                raise Unsupported("output shape unknown")
        _set_shape(node.outputs[0], b)
        one_to_one = link_reshape(ctx, a, b)
        if ctx.value(1) is not None:
            return
        follow = set()
        for j, v in enumerate(target.tolist()):
            src = _source(sources, j)
            if src is not None and src[1] is node.inputs[0] and one_to_one.get(j) == src[2]:
                follow.add(j)  # reads the very input axis it sets: right at run time
            elif is_symbol(v) or v == -1 or (v == 0 and one_to_one.get(j) == j):
                follow.add(j)
            elif v > 0 and operand_refoldable(node.inputs[1], j):
                pass  # a literal or a 1-element piece of a Concat: re-folded
            elif src is not None:
                ctx.identity(ctx.tensor_dim(src[1], src[2]), ctx.out_dim(0, j))
                follow.add(j)  # reads another dim: coupled with this axis, so equal
            else:
                ctx.freeze(ctx.out_dim(0, j), "size computed at run time")
        ctx.notes[id(node)] = {"follow": follow}

    def refold(self, node, rc):
        target = static_value(node.inputs[1])
        if target is None:
            return
        out = node.outputs[0]
        follow = rc.removal.analysis.notes.get(id(node), {}).get("follow", set())
        new = {}
        for j, v in enumerate(target.tolist()):
            if j not in follow and v > 0 and not is_symbol(v) and rc.new_size(out, j) != v:
                new[j] = rc.new_size(out, j)
        refold_operand(rc, node, 1, new)


def _source(sources, j: int):
    """``("dim", tensor, axis)`` if entry ``j`` of a shape operand is a size read by Shape."""
    src = sources[j] if sources is not None and j < len(sources) else None
    return src if src is not None and src[0] == "dim" else None


@contextlib.contextmanager
def _sources_frozen_on_failure(ctx, sources):
    """If the rule cannot map the node, the sizes its shape operand reads must not change."""
    try:
        yield
    except Unsupported as e:
        for src in sources or ():
            if src[0] == "dim" and src[1].shape is not None:
                ctx.space.freeze(ctx.tensor_dim(src[1], src[2]), f"{ctx.node.op}: {e}")
        raise


def refold_operand(rc, node, slot: int, new: dict[int, int]) -> None:
    """Set entries of the shape operand ``node.inputs[slot]``: a constant is replaced by a
    new one; a run-time Concat has the piece holding each entry rewritten (the Concat is
    cloned first if others read it)."""
    if not new:
        return
    t = node.inputs[slot]
    if isinstance(t, gs.Constant) or _fully_static(t):
        values = np.array(static_value(t), dtype=np.int64).reshape(-1)
        for j, v in new.items():
            values[j] = v
        rc.set_input(node, slot, values)
        return
    for j, v in new.items():
        concat = rc.private_producer(node, slot)
        piece_slot, start, piece = _piece_at(concat_pieces(concat.outputs[0]), j)
        values = np.array(static_value(piece), dtype=np.int64).reshape(-1)
        values[j - start] = v
        rc.set_input(concat, piece_slot, values)


def operand_refoldable(t, j: int) -> bool:
    """Entry ``j`` of shape operand ``t`` can be rewritten by ``refold_operand``."""
    return _fully_static(t) or _piece_at(concat_pieces(t), j) is not None


def _fully_static(t) -> bool:
    """A constant, or computed only from constants and static dims (no symbolic batch):
    it can be replaced whole by a constant holding the new values."""
    v = static_value(t)
    return v is not None and not any(is_symbol(int(x)) for x in np.ravel(v))


def concat_pieces(t):
    """``[(slot, start, tensor)]`` of the Concat(axis 0) that produces ``t``, or None."""
    if isinstance(t, gs.Constant) or len(t.inputs) != 1 or t.inputs[0].op != "Concat":
        return None
    pieces, pos = [], 0
    for slot, x in enumerate(t.inputs[0].inputs):
        v = static_value(x)
        if v is None:
            return None
        pieces.append((slot, pos, x))
        pos += int(np.asarray(v).size)
    return pieces


def _piece_at(pieces, j):
    """The piece holding entry ``j`` if it can be rewritten: a constant, or one element."""
    for slot, start, x in pieces or ():
        n = int(np.asarray(static_value(x)).size)
        if start <= j < start + n and (isinstance(x, gs.Constant) or n == 1):
            return slot, start, x
    return None


@register
class Squeeze(OpRule):
    ops = ("Squeeze",)

    def link(self, node, ctx):
        a = ctx.in_shape(0)
        if a is None:
            raise Unsupported("rank unknown")
        axes = ctx.axes_operand(len(a))
        if axes is None:
            axes = [k for k, s in enumerate(a) if s == 1]
        kept = [k for k in range(len(a)) if k not in axes]
        for j, k in enumerate(kept):
            ctx.identity(ctx.in_dim(0, k), ctx.out_dim(0, j))


@register
class Unsqueeze(OpRule):
    ops = ("Unsqueeze",)

    def link(self, node, ctx):
        b = ctx.out_shape(0)
        if b is None:
            raise Unsupported("rank unknown")
        axes = ctx.axes_operand(len(b))
        kept = [j for j in range(len(b)) if j not in axes]
        for k, j in enumerate(kept):
            ctx.identity(ctx.in_dim(0, k), ctx.out_dim(0, j))


@register
class Transpose(OpRule):
    ops = ("Transpose",)

    def link(self, node, ctx):
        a = ctx.in_shape(0)
        if a is None:
            raise Unsupported("rank unknown")
        perm = ctx.attr("perm") or list(range(len(a)))[::-1]
        for j, k in enumerate(perm):
            ctx.identity(ctx.in_dim(0, int(k)), ctx.out_dim(0, j))


@register
class Pad(OpRule):
    ops = ("Pad",)

    def link(self, node, ctx):
        a = ctx.in_shape(0)
        if a is None:
            raise Unsupported("rank unknown")
        pads = ctx.attr("pads") if ctx.opset < 11 else ctx.value(1)
        if pads is None:
            raise Unsupported("pads computed at run time")
        axes = list(range(len(a)))
        if ctx.inp(3) is not None:
            ax_val = ctx.value(3)
            if ax_val is None:
                raise Unsupported("axes computed at run time")
            axes = [int(x) % len(a) for x in ax_val]
        pads = [int(p) for p in pads]
        n = len(axes)
        padded = {ax for k, ax in enumerate(axes) if pads[k] or pads[k + n]}
        for ax in range(len(a)):
            if ax not in padded:
                ctx.identity(ctx.in_dim(0, ax), ctx.out_dim(0, ax))


@register
class Resize(OpRule):
    """Axes whose size is unchanged (batch, channels) pass through; ``sizes`` is re-folded."""

    ops = ("Resize", "Upsample")

    def link(self, node, ctx):
        a, b = ctx.in_shape(0), ctx.out_shape(0)
        if a is None or b is None or len(a) != len(b):
            raise Unsupported("rank unknown")
        if node.op == "Resize" and ctx.inp(3) is not None and ctx.value(3) is None:
            raise Unsupported("sizes computed at run time")
        if node.attrs.get("axes") is not None:
            raise Unsupported("axes attribute")
        for ax in range(len(a)):
            if a[ax] is not None and a[ax] == b[ax]:
                ctx.identity(ctx.in_dim(0, ax), ctx.out_dim(0, ax))

    def refold(self, node, rc):
        if node.op != "Resize" or len(node.inputs) < 4 or rc.value_of(3) is None:
            return
        sizes = rc.value_of(3).astype(np.int64)
        new = np.array([rc.new_size(node.outputs[0], j) for j in range(len(sizes))], np.int64)
        if not np.array_equal(new, sizes):
            rc.set_input(node, 3, new)


@register
class Expand(OpRule):
    """Broadcast to a shape: axes that keep their size pass through; the shape operand (a
    constant or a run-time Concat) is re-folded where a linked axis changes."""

    ops = ("Expand",)

    def link(self, node, ctx):
        sources = entry_sources(node.inputs[1])
        with _sources_frozen_on_failure(ctx, sources):
            self._link(node, ctx, sources)

    def _link(self, node, ctx, sources):
        shape = static_value(node.inputs[1])
        a = symbolic_shape(node.inputs[0])
        if shape is None or a is None:
            raise Unsupported("shape not evaluable")
        b = _broadcast(a, [int(v) for v in shape])
        if b is None:
            raise Unsupported("shapes do not broadcast")
        if ctx.out_shape(0) is None or None in ctx.out_shape(0):
            _set_shape(node.outputs[0], b)
        off = len(b) - len(a)
        k0 = len(b) - len(shape)  # output axis set by entry 0 of the shape operand
        follow = set()
        for ax, size in enumerate(a):
            if size == 1 and b[ax + off] != 1:
                ctx.touch(ctx.in_dim(0, ax))
                continue
            d = ctx.out_dim(0, ax + off)
            ctx.identity(ctx.in_dim(0, ax), d)
            k = ax + off - k0
            if k < 0:
                continue
            v, src = int(shape[k]), _source(sources, k)
            if src is not None and src[1] is node.inputs[0] and src[2] == ax:
                follow.add(k)  # reads the very input axis it keeps
            elif v <= 1 or is_symbol(v) or operand_refoldable(node.inputs[1], k):
                pass
            elif src is not None:
                ctx.identity(ctx.tensor_dim(src[1], src[2]), d)
                follow.add(k)
            else:
                ctx.freeze(d, "size computed at run time")
        ctx.notes[id(node)] = {"follow": follow}

    def refold(self, node, rc):
        shape = static_value(node.inputs[1])
        out = node.outputs[0]
        off = len(rc.old_shape(out)) - len(shape)
        follow = rc.removal.analysis.notes.get(id(node), {}).get("follow", set())
        new = {
            k: rc.new_size(out, k + off)
            for k, v in enumerate(shape.tolist())
            if k not in follow and v > 1 and not is_symbol(v) and rc.new_size(out, k + off) != v
        }
        refold_operand(rc, node, 1, new)


def _broadcast(a: list[int], shape: list[int]) -> list[int] | None:
    """Output of Expand(input of shape ``a``, ``shape``) with symbolic sentinels."""
    rank = max(len(a), len(shape))
    a = [1] * (rank - len(a)) + a
    shape = [1] * (rank - len(shape)) + shape
    out = []
    for x, y in zip(a, shape, strict=True):
        if y == 1 or x == y:
            out.append(x)
        elif x == 1:
            out.append(y)
        else:
            return None
    return out
