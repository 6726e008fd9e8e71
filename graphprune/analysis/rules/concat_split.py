"""Concat, Split and Slice: index i of a part is index ``offset + i`` of the whole."""

from __future__ import annotations

import numpy as np

from ..context import Unsupported
from .registry import OpRule, register


def _link_other_axes(ctx, slots_in, slots_out, axis: int, rank: int) -> None:
    for ax in range(rank):
        if ax == axis:
            continue
        ref = ctx.out_dim(slots_out[0], ax) if slots_out else ctx.in_dim(slots_in[0], ax)
        for i in slots_in:
            ctx.identity(ctx.in_dim(i, ax), ref)
        for o in slots_out:
            ctx.identity(ctx.out_dim(o, ax), ref)


@register
class Concat(OpRule):
    ops = ("Concat",)

    def link(self, node, ctx):
        y = ctx.out_shape(0)
        if y is None:
            raise Unsupported("rank unknown")
        axis = int(ctx.attr("axis")) % len(y)
        whole = ctx.out_dim(0, axis)
        start = 0
        slots = [i for i in range(len(node.inputs)) if ctx.inp(i) is not None]
        for i in slots:
            part = ctx.in_dim(i, axis)
            if part.size and ctx.in_shape(i)[axis] is None:
                raise Unsupported("part size unknown")
            ctx.offset(whole, part, start)
            start += part.size
        _link_other_axes(ctx, slots, [0], axis, len(y))


@register
class Split(OpRule):
    ops = ("Split",)

    def link(self, node, ctx):
        x = ctx.in_shape(0)
        if x is None:
            raise Unsupported("rank unknown")
        axis = int(ctx.attr("axis", 0)) % len(x)
        whole = ctx.in_dim(0, axis)
        start = 0
        outs = [o for o in range(len(node.outputs)) if ctx.out(o) is not None]
        for o in outs:
            part = ctx.out_dim(o, axis)
            if ctx.out_shape(o)[axis] is None:
                raise Unsupported("part size unknown")
            ctx.offset(whole, part, start)
            start += part.size
        _link_other_axes(ctx, [0], outs, axis, len(x))

    def refold(self, node, rc):
        axis = int(node.attrs.get("axis", 0)) % len(rc.old_shape(node.inputs[0]))
        old = [rc.old_shape(o)[axis] for o in node.outputs]
        new = [rc.new_size(o, axis) for o in node.outputs]
        if old == new:
            return
        sizes = np.array(new, dtype=np.int64)
        if rc.opset >= 13:
            node.attrs.pop("num_outputs", None)
            rc.set_input(node, 1, sizes)
        else:
            node.attrs["split"] = [int(s) for s in sizes]


def _slice_params(ctx_value, node_inputs_len: int, rank: int, shape):
    """(axes, starts, steps, counts) normalised to absolute values, or None if dynamic."""
    starts, ends = ctx_value(1), ctx_value(2)
    if starts is None or ends is None:
        return None
    axes = ctx_value(3) if node_inputs_len > 3 else None
    steps = ctx_value(4) if node_inputs_len > 4 else None
    if (node_inputs_len > 3 and axes is None) or (node_inputs_len > 4 and steps is None):
        return None
    axes = np.arange(len(starts)) if axes is None else axes.astype(np.int64) % rank
    steps = np.ones(len(starts), np.int64) if steps is None else steps
    out = []
    for ax, s, e, st in zip(axes, starts, ends, steps, strict=True):
        rng = range(*slice(int(s), int(e), int(st)).indices(shape[ax]))
        out.append((int(ax), rng))
    return out


@register
class Slice(OpRule):
    ops = ("Slice",)

    def link(self, node, ctx):
        x = ctx.in_shape(0)
        if x is None or any(s is None for s in x):
            raise Unsupported("input shape unknown")
        params = _slice_params(ctx.value, len(node.inputs), len(x), x)
        if params is None:
            raise Unsupported("bounds computed at run time")
        sliced = dict(params)
        for ax in range(len(x)):
            src = ctx.in_dim(0, ax)
            dst = ctx.out_dim(0, ax)
            if ax not in sliced:
                ctx.identity(src, dst)
            elif sliced[ax].step == 1:
                ctx.offset(src, dst, sliced[ax].start)
            # other steps: left unmapped, so frozen

    def refold(self, node, rc):
        x = rc.old_shape(node.inputs[0])
        params = _slice_params(rc.value_of, len(node.inputs), len(x), x)
        starts = rc.value_of(1).astype(np.int64).copy()
        ends = rc.value_of(2).astype(np.int64).copy()
        changed = False
        for k, (ax, rng) in enumerate(params):
            removed = rc.removed(node.inputs[0], ax)
            if len(removed) == 0:
                continue
            before_start = int(np.sum(removed < rng.start))
            before_stop = int(np.sum(removed < rng.stop))
            starts[k] = rng.start - before_start
            ends[k] = rng.stop - before_stop
            changed = True
        if changed:
            rc.set_input(node, 1, starts)
            rc.set_input(node, 2, ends)
