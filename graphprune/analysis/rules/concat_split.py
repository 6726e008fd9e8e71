"""Concat, Split and Slice: index i of a part is index ``offset + i`` of the whole."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from ..context import Unsupported
from ..shape_values import dims_read, slice_bounds_foldable, static_value
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


_FULL = 2**31 - 1  # an ``end`` at or past this means "to the end"


def _slice_params(value_of, n_inputs: int, rank: int, shape):
    """``[(axis, range | "full" | None)]`` per sliced axis: the absolute index range, "full"
    for ``0:end`` on an axis of unknown size, None when it cannot be told; or None overall
    when the bounds cannot be evaluated."""
    starts, ends = value_of(1), value_of(2)
    axes = value_of(3) if n_inputs > 3 else None
    steps = value_of(4) if n_inputs > 4 else None
    if (
        starts is None
        or ends is None
        or (n_inputs > 3 and axes is None)
        or (n_inputs > 4 and steps is None)
    ):
        return None
    starts, ends = np.ravel(starts), np.ravel(ends)
    axes = np.arange(len(starts)) if axes is None else np.ravel(axes).astype(np.int64) % rank
    steps = np.ones(len(starts), np.int64) if steps is None else np.ravel(steps)
    out = []
    for ax, st, en, step in zip(axes, starts, ends, steps, strict=True):
        if shape[ax] is not None:
            out.append((int(ax), range(*slice(int(st), int(en), int(step)).indices(shape[ax]))))
        elif int(st) == 0 and int(en) >= _FULL and int(step) == 1:
            out.append((int(ax), "full"))
        else:
            out.append((int(ax), None))
    return out


@register
class Slice(OpRule):
    """Axes not sliced pass through; a sliced axis with step 1 maps by offset, its bounds
    re-folded. Bounds computed at run time from sizes that Shape reads (TorchScript's
    ``chunk``: ``Shape → Gather → Add → Div → Mul``) map the same way when they evaluate
    statically to plain numbers (``shape_values.slice_bounds_foldable``): the refold writes
    them as constants whenever the sliced axis or a size they read changes, so they never
    go stale, and the Shape rule lets those sizes change. Other run-time bounds (symbolic:
    ``x[:, :seq_len]``) leave the axes they cut frozen, and the sizes they read too."""

    ops = ("Slice",)

    def link(self, node, ctx):
        try:
            self._link(node, ctx)
        except Unsupported as e:
            if slice_bounds_foldable(node):  # the Shape rule trusted the refold: no refold
                _freeze_bound_reads(ctx, node, str(e))
            raise

    def _link(self, node, ctx):
        x = ctx.in_shape(0)
        if x is None:
            raise Unsupported("rank unknown")
        params = _slice_params(_bound_value(node), len(node.inputs), len(x), x)
        if params is None:
            raise Unsupported("bounds not evaluable")
        run_time = _run_time_bounds(node)
        foldable = not run_time or slice_bounds_foldable(node)
        sliced = dict(params)
        for ax in range(len(x)):
            src, dst = ctx.in_dim(0, ax), ctx.out_dim(0, ax)
            rng = sliced.get(ax, "full")
            if rng == "full":
                ctx.identity(src, dst)
            elif foldable and isinstance(rng, range) and rng.step == 1:
                ctx.offset(src, dst, rng.start)
            else:  # a stride picks every k-th unit, which no refold of the bounds can keep
                why = "run-time bounds" if not foldable else "step != 1 or size unknown"
                ctx.freeze(src, f"sliced axis not mapped ({why})")
                ctx.freeze(dst, f"sliced axis not mapped ({why})")

    def refold(self, node, rc):
        x = rc.old_shape(node.inputs[0])
        value_of = _bound_value(node)
        params = _slice_params(value_of, len(node.inputs), len(x), x)
        run_time = _run_time_bounds(node)
        if params is None or (run_time and not slice_bounds_foldable(node)):
            return  # the axes such bounds cut were left frozen, and the sizes they read
        starts = np.ravel(value_of(1)).astype(np.int64).copy()
        ends = np.ravel(value_of(2)).astype(np.int64).copy()
        changed = False
        for k, (ax, rng) in enumerate(params):
            removed = rc.removed(node.inputs[0], ax)
            if len(removed) == 0 or not isinstance(rng, range):
                continue
            before_start = int(np.sum(removed < rng.start))
            before_stop = int(np.sum(removed < rng.stop))
            starts[k] = rng.start - before_start
            ends[k] = rng.stop - before_stop
            changed = True
        if run_time and not changed:  # a size the bounds read at run time may still change
            reads = [r for i in _bound_slots(node) for r in dims_read(node.inputs[i])]
            changed = any(len(rc.removed(t, ax)) for t, ax in reads)
        if not changed:
            return
        rc.set_input(node, 1, starts)
        rc.set_input(node, 2, ends)
        for i in _bound_slots(node):  # axes / steps computed at run time: their values
            if i > 2 and not isinstance(node.inputs[i], gs.Constant):
                rc.set_input(node, i, np.ravel(value_of(i)).astype(np.int64))


def _bound_slots(node) -> list[int]:
    """The given bound operands of a Slice (starts, ends, axes, steps)."""
    return [i for i in range(1, min(len(node.inputs), 5)) if node.inputs[i].name]


def _run_time_bounds(node) -> bool:
    return any(not isinstance(node.inputs[i], gs.Constant) for i in _bound_slots(node))


def _bound_value(node):
    """``value_of(slot)`` for ``_slice_params``: the static value of a bound operand."""

    def value_of(i):
        t = node.inputs[i] if i < len(node.inputs) else None
        return static_value(t) if t is not None and t.name else None

    return value_of


def _freeze_bound_reads(ctx, node, reason: str) -> None:
    """Foldable run-time bounds of a Slice this rule could not map: no size they read may
    change (the Shape rule let them, counting on the refold)."""
    for i in _bound_slots(node):
        for t, ax in dims_read(node.inputs[i]):
            if t.shape is not None:
                ctx.space.freeze(ctx.tensor_dim(t, ax), f"{node.op}: {reason}")
