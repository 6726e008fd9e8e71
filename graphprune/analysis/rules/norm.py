"""Normalisations. Per-channel ones (Batch/Instance) keep channels independent; GroupNorm
makes a whole group one unit; LayerNorm's normalised axes are not mapped (frozen here)."""

from __future__ import annotations

from ..context import Unsupported
from .elementwise import link_all_axes
from .registry import OpRule, register

APPROXIMATE = "normalised axis (width pruning is approximate)"


@register
class PerChannelNorm(OpRule):
    ops = ("BatchNormalization", "InstanceNormalization")

    def link(self, node, ctx):
        link_all_axes(ctx)
        ch = ctx.out_dim(0, 1)
        for i in range(1, len(node.inputs)):
            if ctx.inp(i) is not None:
                ctx.identity(ctx.in_dim(i, 0), ch)


@register
class GroupNorm(OpRule):
    ops = ("GroupNormalization",)

    def link(self, node, ctx):
        link_all_axes(ctx)
        g = int(ctx.attr("num_groups"))
        ch = ctx.out_dim(0, 1)
        if ch.size % g:
            raise Unsupported("channels not divisible by num_groups")
        groups = ctx.virtual("groups", g)
        ctx.block(ch, groups, ch.size // g)
        for i in (1, 2):
            d = ctx.in_dim(i, 0)
            ctx.identity(d, groups if d.size == g else ch)  # opset 18: per group; 21: per channel

    def refold(self, node, rc):
        old_c = rc.old_shape(node.outputs[0])[1]
        new_c = rc.new_size(node.outputs[0], 1)
        if new_c != old_c:
            node.attrs["num_groups"] = int(node.attrs["num_groups"]) * new_c // old_c


@register
class LayerNorm(OpRule):
    """Axes before ``axis`` are independent rows. The normalised axes are linked to the
    output and to scale/bias, so the residual stream is one group; pruning it changes the
    statistics, so it is frozen unless width pruning (approximate) is asked for."""

    ops = ("LayerNormalization",)

    def link(self, node, ctx):
        shape = ctx.in_shape(0)
        if shape is None:
            raise Unsupported("rank unknown")
        axis = int(ctx.attr("axis", -1)) % len(shape)
        link_all_axes(ctx)
        for ax in range(axis, len(shape)):
            d = ctx.out_dim(0, ax)
            for i in (1, 2):
                p = ctx.in_shape(i)
                if ctx.inp(i) is not None and p is not None:
                    k = ax - (len(shape) - len(p))
                    if k >= 0 and p[k] != 1:
                        ctx.identity(ctx.in_dim(i, k), d)
            ctx.approximate(d, APPROXIMATE)
        for o in (1, 2):  # mean / inv-std-dev outputs (training graphs)
            if ctx.out(o) is not None:
                ctx.touch(*(ctx.out_dim(o, ax) for ax in range(len(ctx.out_shape(o) or ()))))
