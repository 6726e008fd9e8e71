"""QDQ quantization: QuantizeLinear / DequantizeLinear around float tensors.

The data passes through elementwise, so every axis of the input is that axis of the output;
a per-channel scale and zero point (1-D, along ``axis``) are the channels of that axis and
are sliced with them; a per-tensor (scalar) scale is shared by every unit and stays whole.
Blocked quantization (opset 21 ``block_size``) is not mapped: its dims freeze. Integer-only
graphs (QLinearConv, MatMulInteger, ...) have no rule, so they freeze and the run is refused
as already quantized (``graphprune.outcome``).
"""

from __future__ import annotations

from ..context import Unsupported
from .elementwise import link_all_axes
from .registry import OpRule, register


@register
class QuantDequant(OpRule):
    ops = ("QuantizeLinear", "DequantizeLinear")
    weight_slots = (0,)  # DequantizeLinear's integer data is the weight

    def link(self, node, ctx):
        if ctx.attr("block_size", 0):
            raise Unsupported("blocked quantization")
        link_all_axes(ctx)
        shape = ctx.in_shape(0)
        axis = ctx.attr("axis", 1) % max(len(shape), 1)
        for slot in (1, 2):  # scale, zero point
            param = ctx.in_shape(slot)
            if param is None or len(param) == 0 or param == (1,):
                continue  # per tensor: shared by every unit
            if len(param) != 1 or param[0] != shape[axis]:
                raise Unsupported(f"quantization parameter of shape {param}")
            ctx.identity(ctx.in_dim(slot, 0), ctx.in_dim(0, axis))
