"""Shape, Size and Gather. Reading a dim's size freezes that dim (its count would be baked
into whatever is computed from it), unless the size only feeds Reshape / Expand shape
operands: those rules couple the read dim with the axis it sets, so after pruning the
run-time value is still right. ``Shape → Gather(const)`` and ``Shape → Slice(const)`` only
read the axes they pick."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from ..context import Unsupported
from ..shape_values import SHAPE_MATH, flows_only_into_shape_operands, slice_bounds_foldable
from .registry import OpRule, register


def _span(node: gs.Node, rank: int) -> list[int]:
    """The axes whose sizes a Shape node outputs (its ``start``/``end`` attributes)."""
    return list(range(rank))[slice(node.attrs.get("start", 0), node.attrs.get("end", rank))]


def _picked(node: gs.Node, span: list[int]) -> list[int] | None:
    """The entries of a shape vector (``span``) that a ``Gather(const)`` or a constant
    ``Slice`` along axis 0 passes on (``x.shape[-1]``: TorchScript's attention scale reads
    the head size so); None for any other consumer."""
    if node.op == "Gather" and len(node.inputs) > 1 and isinstance(node.inputs[1], gs.Constant):
        if int(node.attrs.get("axis", 0)) == 0:
            return [span[int(i)] for i in np.ravel(node.inputs[1].values)]
        return None
    if node.op != "Slice":
        return None
    if "starts" in node.attrs:  # opset < 10
        bounds = [node.attrs["starts"], node.attrs["ends"], node.attrs.get("axes", [0]), [1]]
    else:
        given = [node.inputs[i] if i < len(node.inputs) else None for i in range(1, 5)]
        if any(t is not None and t.name and not isinstance(t, gs.Constant) for t in given):
            return None
        defaults = ([0], [1])  # axes, steps
        bounds = [np.ravel(t.values).tolist() for t in given[:2]]
        for t, default in zip(given[2:], defaults, strict=True):
            bounds.append(np.ravel(t.values).tolist() if t is not None and t.name else default)
    starts, ends, axes, steps = bounds
    if len(starts) != 1 or [int(a) for a in axes] not in ([0], [-1]) or list(steps) != [1]:
        return None
    return span[slice(int(starts[0]), int(ends[0]))]


def unsafe_axes(t: gs.Tensor, span: list[int], depth: int = 0) -> set[int]:
    """Axes (entries ``span`` of the shape vector ``t``) whose size reaches anything but
    Reshape / Expand shape operands; ``Gather(const)`` and constant ``Slice`` narrow to the
    entries they pick."""
    unsafe: set[int] = set()
    for node in t.outputs:
        slots = [i for i, x in enumerate(node.inputs) if x is t]
        picked = _picked(node, span) if slots == [0] and depth < 16 else None
        if picked is not None:
            unsafe |= unsafe_axes(node.outputs[0], picked, depth + 1)
        elif not flows_only_into_shape_operands_from(node, slots):
            unsafe |= set(span)
    return unsafe


def flows_only_into_shape_operands_from(node: gs.Node, slots: list[int]) -> bool:
    """The value entering ``node`` at ``slots`` ends only in Reshape / Expand shapes."""
    if node.op in ("Reshape", "Expand") and slots == [1]:
        return True
    if node.op == "Shape":
        return True
    if node.op == "Slice" and 0 not in slots and slice_bounds_foldable(node):
        return True  # bounds the Slice rule re-folds as constants
    return node.op in SHAPE_MATH and all(flows_only_into_shape_operands(o) for o in node.outputs)


@register
class Shape(OpRule):
    ops = ("Shape", "Size")

    def link(self, node, ctx):
        a = ctx.in_shape(0)
        if a is None:
            raise Unsupported("rank unknown")
        if node.op == "Size":
            read = set(range(len(a)))
        else:  # sizes feeding only Reshape / Expand shapes are followed, refolded or coupled
            read = unsafe_axes(node.outputs[0], _span(node, len(a)))
        for ax in range(len(a)):
            d = ctx.in_dim(0, ax)
            if ax in read:
                ctx.freeze(d, "size read at run time")
        ctx.touch(*(ctx.out_dim(0, ax) for ax in range(len(ctx.out_shape(0) or ()))))


@register
class Gather(OpRule):
    """``out = data[..., indices, ...]``: the gathered axis is not mapped; every other data
    axis and every index axis passes through (embedding tables: the width axis)."""

    ops = ("Gather",)

    def link(self, node, ctx):
        a, q, b = ctx.in_shape(0), ctx.in_shape(1), ctx.out_shape(0)
        if a is None or q is None or b is None:
            raise Unsupported("rank unknown")
        axis = int(ctx.attr("axis", 0)) % len(a)
        for ax in range(axis):
            ctx.identity(ctx.in_dim(0, ax), ctx.out_dim(0, ax))
        for k in range(len(q)):
            ctx.identity(ctx.in_dim(1, k), ctx.out_dim(0, axis + k))
        for ax in range(axis + 1, len(a)):
            ctx.identity(ctx.in_dim(0, ax), ctx.out_dim(0, ax - 1 + len(q)))
