"""Shape, Size and Gather. Reading a dim's size freezes that dim (its count would be baked
into whatever is computed from it), unless the size only feeds Reshape / Expand shape
operands: those rules couple the read dim with the axis it sets, so after pruning the
run-time value is still right. ``Shape → Gather(const)`` only reads the gathered axes."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from ..context import Unsupported
from ..shape_values import flows_only_into_shape_operands
from .registry import OpRule, register


def _read_axes(node: gs.Node, rank: int) -> set[int]:
    start = int(node.attrs.get("start", 0)) % max(rank, 1) if rank else 0
    end = node.attrs.get("end")
    end = rank if end is None else (int(end) % rank if int(end) < 0 else min(int(end), rank))
    span = list(range(start, end))
    read: set[int] = set()
    for consumer in node.outputs[0].outputs:
        idx = consumer.inputs[1] if consumer.op == "Gather" and len(consumer.inputs) > 1 else None
        if isinstance(idx, gs.Constant) and int(consumer.attrs.get("axis", 0)) == 0:
            read.update(span[int(i)] for i in np.atleast_1d(idx.values))
        else:
            return set(span)
    return read


@register
class Shape(OpRule):
    ops = ("Shape", "Size")

    def link(self, node, ctx):
        a = ctx.in_shape(0)
        if a is None:
            raise Unsupported("rank unknown")
        read = set(range(len(a))) if node.op == "Size" else _read_axes(node, len(a))
        if node.op == "Shape" and flows_only_into_shape_operands(node.outputs[0]):
            read = set()  # Reshape / Expand couple each read size with its output axis
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
