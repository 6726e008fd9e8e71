"""Normalisations. Per-channel ones (Batch/Instance) keep channels independent; GroupNorm
makes a whole group one unit; LayerNorm's normalised axes are not mapped (frozen here)."""

from __future__ import annotations

from ..context import Unsupported
from .elementwise import link_all_axes
from .registry import OpRule, register


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
    """Axes before ``axis`` are independent rows; normalised axes are left unmapped."""

    ops = ("LayerNormalization",)

    def link(self, node, ctx):
        shape = ctx.in_shape(0)
        if shape is None:
            raise Unsupported("rank unknown")
        axis = int(ctx.attr("axis", -1)) % len(shape)
        for ax in range(axis):
            ctx.identity(ctx.in_dim(0, ax), ctx.out_dim(0, ax))
        for ax in range(axis, len(shape)):
            ctx.freeze(ctx.in_dim(0, ax), "normalised axis (width pruning is approximate)")
