"""Conv and ConvTranspose: weights, bias, and the ``group`` attribute (depthwise, ResNeXt).

With ``group == 1`` the input channels are contracted against weight axis 1 (Conv) or 0
(ConvTranspose). With ``group > 1`` (Conv only) a unit is a whole conv group: the input and
output channels of group k are one unit (a virtual dim of size ``group`` ties them), and
``group`` is re-folded to the number of groups kept. Depthwise is the case of one input
channel per group.

MACs: a Conv output element sums ``Cin/group x kernel`` products (weight axis 1 times the
kernel); a ConvTranspose input element feeds ``Cout/group x kernel`` outputs (weight axis 1
there too). With ``group > 1`` weight axis 1 is not a linked dim: removing whole groups
leaves the per-group width as it is.
"""

from __future__ import annotations

import math

from ..context import Unsupported
from .registry import MacTerm, NodeView, OpRule, register


def _conv_macs(node: NodeView, kind: str) -> list[MacTerm]:
    """Elements of the output (``kind="out"``, Conv) or input (``"in"``, ConvTranspose) x
    weight axis 1 x kernel; it scales with every axis of those elements and weight axis 1."""
    w = node.in_shape(1)
    shape = node.out_shape(0) if kind == "out" else node.in_shape(0)
    if w is None or shape is None or len(w) < 2:
        return []
    numel = node.out_numel(0) if kind == "out" else node.in_numel(0)
    kernel = math.prod(s or 1 for s in w[2:])
    refs = tuple((kind, 0, ax) for ax in range(len(shape))) + (("in", 1, 1),)
    return [MacTerm(float(numel * node.in_size(1, 1) * kernel), refs)]


def _link_conv(ctx, w_out_axis: int, w_in_axis: int) -> None:
    x, y = ctx.in_shape(0), ctx.out_shape(0)
    if x is None or y is None or len(x) != len(y):
        raise Unsupported("rank unknown")
    group = int(ctx.attr("group", 1))
    ctx.identity(ctx.in_dim(0, 0), ctx.out_dim(0, 0))
    y_ch = ctx.out_dim(0, 1)
    if group == 1:
        w_in = ctx.in_dim(1, w_in_axis)
        x_ch = ctx.in_dim(0, 1)
        ctx.identity(x_ch, w_in)
        ctx.contract(1, w_in, x_ch)
        ctx.identity(ctx.in_dim(1, w_out_axis), y_ch)
    else:
        x_ch = ctx.in_dim(0, 1)
        if x_ch.size % group or y_ch.size % group:
            raise Unsupported("channels not divisible by group")
        groups = ctx.virtual("groups", group)
        ctx.block(x_ch, groups, x_ch.size // group)
        ctx.block(y_ch, groups, y_ch.size // group)
        ctx.identity(ctx.in_dim(1, 0), y_ch)
    if ctx.inp(2) is not None:
        ctx.identity(ctx.in_dim(2, 0), y_ch)


@register
class Conv(OpRule):
    ops = ("Conv",)
    unit_kind = "channel"

    def link(self, node, ctx):
        _link_conv(ctx, w_out_axis=0, w_in_axis=1)

    def refold(self, node, rc):
        group = int(node.attrs.get("group", 1))
        old_c = rc.old_shape(node.inputs[0])[1]
        new_c = rc.new_size(node.inputs[0], 1)
        if group > 1 and new_c != old_c:
            node.attrs["group"] = group * new_c // old_c

    def macs(self, node):
        return _conv_macs(node, "out")


@register
class ConvTranspose(OpRule):
    ops = ("ConvTranspose",)
    unit_kind = "channel"

    def link(self, node, ctx):
        if int(ctx.attr("group", 1)) > 1:
            raise Unsupported("grouped ConvTranspose is not mapped")
        _link_conv(ctx, w_out_axis=1, w_in_axis=0)

    def macs(self, node):
        return _conv_macs(node, "in")
