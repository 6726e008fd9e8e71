"""Pooling, reductions and softmax: the axes they reduce over are not mapped (frozen);
the other axes pass through unchanged."""

from __future__ import annotations

from ..context import Unsupported
from .registry import OpRule, register


@register
class Pool(OpRule):
    ops = ("MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool")

    def link(self, node, ctx):
        if ctx.out(1) is not None:
            raise Unsupported("MaxPool indices output")
        for ax in (0, 1):
            ctx.identity(ctx.in_dim(0, ax), ctx.out_dim(0, ax))


def _reduced_axes(ctx, rank: int) -> list[int]:
    axes = ctx.axes_operand(rank)
    if not axes:  # absent or empty: all axes, unless noop_with_empty_axes
        return [] if int(ctx.attr("noop_with_empty_axes", 0)) else list(range(rank))
    return axes


SUMS = ("ReduceSum", "ReduceSumSquare", "ReduceL1", "ReduceL2")


@register
class Reduce(OpRule):
    ops = (
        "ReduceMean",
        "ReduceSum",
        "ReduceMax",
        "ReduceMin",
        "ReduceProd",
        "ReduceL1",
        "ReduceL2",
        "ReduceLogSumExp",
        "ReduceSumSquare",
        "ReduceLogSum",
    )

    def link(self, node, ctx):
        shape = ctx.in_shape(0)
        if shape is None:
            raise Unsupported("rank unknown")
        axes = _reduced_axes(ctx, len(shape))
        keep = int(ctx.attr("keepdims", 1))
        out_ax = 0
        for ax in range(len(shape)):
            if ax in axes:
                d = ctx.in_dim(0, ax)
                if node.op in SUMS:  # a sum over zeroed entries is a sum over the kept ones
                    ctx.contract(0, d)
                elif node.op == "ReduceMean":
                    ctx.approximate(d, "mean over the axis (width pruning is approximate)")
                else:
                    ctx.freeze(d, "reduced axis")
                if keep:
                    ctx.touch(ctx.out_dim(0, out_ax))
                    out_ax += 1
                continue
            ctx.identity(ctx.in_dim(0, ax), ctx.out_dim(0, out_ax))
            out_ax += 1


@register
class Softmax(OpRule):
    ops = ("Softmax", "LogSoftmax", "Hardmax")

    def link(self, node, ctx):
        shape = ctx.in_shape(0)
        if shape is None:
            raise Unsupported("rank unknown")
        axis = int(ctx.attr("axis", -1 if ctx.opset >= 13 else 1)) % len(shape)
        # before opset 13 the op flattens every axis from ``axis`` on
        normalised = {axis} if ctx.opset >= 13 else set(range(axis, len(shape)))
        for ax in range(len(shape)):
            if ax not in normalised:
                ctx.identity(ctx.in_dim(0, ax), ctx.out_dim(0, ax))
