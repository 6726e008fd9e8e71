"""Ops that move axes around: Flatten, Reshape, Squeeze/Unsqueeze, Transpose, Pad, Resize,
Expand. Merging axes (C,H,W) → C·H·W links the merged axis to its *leading* factor as
blocks; the other factors stay unmapped, hence frozen."""

from __future__ import annotations

import contextlib

import numpy as np

from ..context import Unsupported
from ..shape_values import (
    dims_read,
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
from .registry import OpRule, is_structural, register, structural_axis


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
        elif len(jj) == 1 and (rep := _repeat_axis(ctx, a, ii)) is not None:  # GQA repeat_kv
            lead = _lead(a, ii)[0]
            # query head h is copy h % n_rep of KV head h // n_rep: the unit is query slot r
            # in every KV group, and the KV axis stays whole
            out = ctx.out_dim(0, jj[0])
            h = np.arange(out.size)
            ctx.space.link(out, h, ctx.in_dim(0, rep), h % a[rep])
            ctx.tag(out, "head")
            ctx.freeze(ctx.in_dim(0, lead), "KV heads kept (--gqa query)")
        elif len(jj) == 1 and (pair := _structural_merge(ctx, a, ii)):
            lead, inner = pair  # (directions, H) -> D*H: unit h sits at d*H + h for every d
            out, unit = ctx.out_dim(0, jj[0]), ctx.in_dim(0, inner)
            j = np.arange(out.size)
            ctx.space.link(out, j, unit, j % unit.size)
            ctx.touch(ctx.in_dim(0, lead))
        elif len(jj) == 1 and (merge := _lead(a, ii)):  # merge: blocks of the leading axis
            lead, inner = merge
            ctx.block(ctx.out_dim(0, jj[0]), ctx.in_dim(0, lead), inner)
            for k in ii:  # a shuffle's group axis, merged back in: kept whole, not a unit
                if k != lead and is_structural(ctx.node.inputs[0], k):
                    ctx.touch(ctx.in_dim(0, k))
        elif len(ii) == 1 and (pair := _structural_split(ctx, b, jj)):
            groups, inner = pair  # C -> (g, C/g), g structural: unit j sits at i*C/g + j
            x, unit = ctx.in_dim(0, ii[0]), ctx.out_dim(0, inner)
            c = np.arange(x.size)
            ctx.space.link(x, c, unit, c % unit.size)
            ctx.touch(ctx.out_dim(0, groups))
        elif len(ii) == 1 and (split := _lead(b, jj)):  # split: hidden → (heads, head_dim)
            lead, inner = split
            heads = ctx.out_dim(0, lead)
            ctx.block(ctx.in_dim(0, ii[0]), heads, inner)
            if inner > 1:
                ctx.tag(heads, "head")
    return one_to_one


def _structural_merge(ctx, a, ii) -> tuple[int, int] | None:
    """(leading, trailing) axis of a merge of two known axes whose leading one is structural
    (``registry.is_structural``, e.g. a recurrent layer's directions)."""
    known = [k for k in ii if a[k] != 1]
    if len(known) != 2 or any(is_symbol(a[k]) for k in known):
        return None
    return tuple(known) if is_structural(ctx.node.inputs[0], known[0]) else None


def _structural_split(ctx, b, jj) -> tuple[int, int] | None:
    """(leading, trailing) output axis of a split of one axis into two known factors whose
    leading one is structural (a channel shuffle's group axis)."""
    known = [k for k in jj if b[k] != 1]
    if len(known) != 2 or any(is_symbol(b[k]) for k in known):
        return None
    return tuple(known) if is_structural(ctx.node.outputs[0], known[0]) else None


def _known_axes(shape, axes) -> list[int]:
    return [k for k in axes if shape[k] != 1]


def _shuffle_split(node) -> int | None:
    """For the first Reshape of a channel shuffle, the group axis ``p`` of its output:
    ``view(n, g, c/g, h, w)`` splits one axis into (g, c/g) at output axes (p, p+1), every
    consumer is a Transpose that swaps the two (``transpose(1, 2)``), and every consumer of
    those Reshapes the pair (c/g, g) back into one axis. Index ``i*(c/g) + j`` of the input
    lands at ``j*g + i`` of the result: a fixed interleave, exact after pruning only if the
    same indices ``j`` go from every group, so the group axis is structure (kept whole) and
    the units are the ``c/g`` indices."""
    if node is None or node.op != "Reshape" or len(node.outputs) != 1:
        return None
    a, b = symbolic_shape(node.inputs[0]), symbolic_shape(node.outputs[0])
    chunks = match_chunks(a, b) if a is not None and b is not None else None
    if not chunks:
        return None
    splits = [jj for ii, jj in chunks if len(ii) == 1 and len(jj) > 1]
    if len(splits) != 1 or any(len(ii) != len(jj) for ii, jj in chunks if jj is not splits[0]):
        return None
    pair = _known_axes(b, splits[0])
    if len(pair) != 2 or pair[1] != pair[0] + 1 or any(is_symbol(b[k]) for k in pair):
        return None
    p = pair[0]
    out = node.outputs[0]
    if not out.outputs:
        return None
    for t in out.outputs:
        perm = t.attrs.get("perm") if t.op == "Transpose" else None
        if perm is None:
            return None
        perm = [int(k) for k in perm]
        if p + 1 not in perm or perm.index(p + 1) + 1 >= len(perm):
            return None
        q = perm.index(p + 1)
        if perm[q + 1] != p or not _merged_back(t.outputs[0], q):
            return None
    return p


def _merged_back(t, q: int) -> bool:
    """Every consumer of ``t`` is a Reshape that merges axes (q, q+1) into one."""
    a = symbolic_shape(t)
    if a is None or not t.outputs:
        return False
    for r in t.outputs:
        b = symbolic_shape(r.outputs[0]) if r.op == "Reshape" else None
        chunks = match_chunks(a, b) if b is not None else None
        if not chunks or not any(
            len(jj) == 1 and _known_axes(a, ii) == [q, q + 1] for ii, jj in chunks
        ):
            return False
    return True


@structural_axis
def _shuffle_group_axis(t, axis: int) -> bool:
    """The group axis of a channel shuffle (``_shuffle_split``): the split's output axis,
    and the same axis after the Transpose."""
    node = t.inputs[0] if len(t.inputs) == 1 else None
    if node is None:
        return False
    if node.op == "Reshape":
        return _shuffle_split(node) == axis
    if node.op == "Transpose" and len(node.inputs[0].inputs) == 1:
        p = _shuffle_split(node.inputs[0].inputs[0])
        perm = node.attrs.get("perm")
        return p is not None and perm is not None and int(perm[axis]) == p
    return False


def _repeat_axis(ctx, a, ii) -> int | None:
    """With ``--gqa query``: in a merge of (KV heads, n_rep) whose n_rep axis an Expand
    broadcast (repeat_kv), the n_rep axis; otherwise None."""
    if ctx.options.get("gqa") != "query" or len(ii) != 2 or any(is_symbol(a[k]) for k in ii):
        return None
    rep = ii[1]
    src = ctx.node.inputs[0]
    expand = src.inputs[0] if len(src.inputs) == 1 else None
    if expand is None or expand.op != "Expand" or a[rep] <= 1:
        return None
    before = symbolic_shape(expand.inputs[0])
    off = len(a) - len(before) if before is not None else 0
    return rep if before is not None and rep - off >= 0 and before[rep - off] == 1 else None


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
        with _sources_frozen_on_failure(ctx, node):
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
        follow, reads = set(), {}
        for j, v in enumerate(target.tolist()):
            src = _source(sources, j)
            if src is not None and src[1] is node.inputs[0] and one_to_one.get(j) == src[2]:
                follow.add(j)  # reads the very input axis it sets: right at run time
            elif is_symbol(v) or v == -1 or (v == 0 and one_to_one.get(j) == j):
                follow.add(j)
            elif v > 0 and operand_refoldable(node.inputs[1], j):
                if src is not None:  # a static size read from another tensor
                    reads[j] = src[1:]
            elif src is not None:
                ctx.identity(ctx.tensor_dim(src[1], src[2]), ctx.out_dim(0, j))
                follow.add(j)  # reads another dim: coupled with this axis, so equal
            else:
                ctx.freeze(ctx.out_dim(0, j), "size computed at run time")
        ctx.notes[id(node)] = {"follow": follow, "reads": reads}

    def refold(self, node, rc):
        target = static_value(node.inputs[1])
        if target is None:
            return
        out = node.outputs[0]
        note = rc.removal.analysis.notes.get(id(node), {})
        follow, reads = note.get("follow", set()), note.get("reads", {})
        new = {}
        for j, v in enumerate(target.tolist()):
            if j in follow or v <= 0:
                continue
            if rc.new_size(out, j) != v or _read_changes(rc, reads.get(j)):
                new[j] = rc.new_size(out, j)
        refold_operand(rc, node, 1, new)


def _read_changes(rc, read) -> bool:
    """A size the shape operand reads at run time (``(tensor, axis)``) will change, so the
    entry must become a constant even where this node's own size stays."""
    return read is not None and len(rc.removed(*read)) > 0


def _source(sources, j: int):
    """``("dim", tensor, axis)`` if entry ``j`` of a shape operand is a size read by Shape."""
    src = sources[j] if sources is not None and j < len(sources) else None
    return src if src is not None and src[0] == "dim" else None


@contextlib.contextmanager
def _sources_frozen_on_failure(ctx, node):
    """If the rule cannot map the node, no size its shape operand reads may change."""
    try:
        yield
    except Unsupported as e:
        for t, ax in dims_read(node.inputs[1]):
            if t.shape is not None:
                ctx.space.freeze(ctx.tensor_dim(t, ax), f"{ctx.node.op}: {e}")
        raise


def refold_operand(rc, node, slot: int, new: dict[int, int]) -> None:
    """Set entries ``{j: value}`` of the shape operand ``node.inputs[slot]``. A statically
    known operand becomes a constant; one with symbolic entries (batch, sequence) becomes
    ``Concat`` of Slices of the original run-time operand and constants for the new entries,
    so only this node sees the change."""
    if not new:
        return
    t = node.inputs[slot]
    values = np.array(static_value(t), dtype=np.int64).reshape(-1)
    for j, v in new.items():
        values[j] = v
    if not any(is_symbol(int(v)) for v in values):
        rc.set_input(node, slot, values)
        return
    pieces, j = [], 0
    while j < len(values):
        if j in new:
            pieces.append(rc.constant(np.array([new[j]], dtype=np.int64)))
            j += 1
            continue
        end = j
        while end < len(values) and end not in new:
            end += 1
        bounds = [rc.constant(np.array([b], dtype=np.int64)) for b in (j, end, 0)]
        pieces.append(rc.add_node("Slice", [t, *bounds]))
        j = end
    node.inputs[slot] = rc.add_node("Concat", pieces, {"axis": 0})


def operand_refoldable(t, j: int) -> bool:
    """Entry ``j`` of shape operand ``t`` is known statically, so it can be rewritten."""
    v = static_value(t)
    return v is not None and j < v.size and not is_symbol(int(np.ravel(v)[j]))


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
        # run-time pads (TorchScript's F.pad: Concat → Reshape → Slice(::-1) → Transpose)
        # are evaluated; any size they read is frozen by the Shape rule (Pad is no shape
        # operand it follows), so their value cannot change
        pads = ctx.attr("pads") if ctx.opset < 11 else _static_operand(node, 1)
        if pads is None:
            raise Unsupported("pads computed at run time")
        axes = list(range(len(a)))
        if ctx.inp(3) is not None:
            ax_val = _static_operand(node, 3)
            if ax_val is None:
                raise Unsupported("axes computed at run time")
            axes = [int(x) % len(a) for x in ax_val]
        pads = [int(p) for p in np.ravel(pads)]
        n = len(axes)
        padded = {ax for k, ax in enumerate(axes) if pads[k] or pads[k + n]}
        for ax in range(len(a)):
            if ax not in padded:
                ctx.identity(ctx.in_dim(0, ax), ctx.out_dim(0, ax))


def _static_operand(node, slot: int) -> np.ndarray | None:
    """The static value of an integer operand, None if unknown or symbolic."""
    if slot >= len(node.inputs) or not node.inputs[slot].name:
        return None
    v = static_value(node.inputs[slot])
    if v is None or any(is_symbol(int(x)) for x in np.ravel(v)):
        return None
    return v


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
        with _sources_frozen_on_failure(ctx, node):
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
        follow, reads = set(), {}
        for ax, size in enumerate(a):
            if size == 1 and b[ax + off] != 1:  # broadcast: the size is the shape operand's
                ctx.touch(ctx.in_dim(0, ax), ctx.out_dim(0, ax + off))
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
                if src is not None and v > 1 and not is_symbol(v):
                    reads[k] = src[1:]  # a static size read from another tensor
            elif src is not None:
                ctx.identity(ctx.tensor_dim(src[1], src[2]), d)
                follow.add(k)
            else:
                ctx.freeze(d, "size computed at run time")
        ctx.notes[id(node)] = {"follow": follow, "reads": reads}

    def refold(self, node, rc):
        shape = static_value(node.inputs[1])
        out = node.outputs[0]
        off = len(rc.old_shape(out)) - len(shape)
        note = rc.removal.analysis.notes.get(id(node), {})
        follow, reads = note.get("follow", set()), note.get("reads", {})
        new = {
            k: rc.new_size(out, k + off)
            for k, v in enumerate(shape.tolist())
            if k not in follow
            and v > 1
            and not is_symbol(v)
            and (rc.new_size(out, k + off) != v or _read_changes(rc, reads.get(k)))
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
