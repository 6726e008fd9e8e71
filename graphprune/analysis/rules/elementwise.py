"""Elementwise ops: unary activations map every axis to itself; n-ary ops broadcast."""

from __future__ import annotations

import numpy as np

from ..context import Unsupported
from .registry import OpRule, register

UNARY_OPS = (
    "Relu",
    "LeakyRelu",
    "Sigmoid",
    "HardSigmoid",
    "HardSwish",
    "Tanh",
    "Erf",
    "Gelu",
    "Softplus",
    "Softsign",
    "Mish",
    "Exp",
    "Log",
    "Sqrt",
    "Abs",
    "Neg",
    "Reciprocal",
    "Elu",
    "Selu",
    "Celu",
    "ThresholdedRelu",
    "Sin",
    "Cos",
    "Floor",
    "Ceil",
    "Round",
    "Sign",
    "Not",
    "Identity",
    "Cast",
    "IsNaN",
    "IsInf",
    "Shrink",
)


def link_all_axes(ctx, in_slot: int = 0, out_slot: int = 0) -> None:
    """Identity on every axis between one input and one output of the same shape."""
    shape = ctx.in_shape(in_slot)
    if shape is None:
        raise Unsupported("rank unknown")
    for ax in range(len(shape)):
        ctx.identity(ctx.in_dim(in_slot, ax), ctx.out_dim(out_slot, ax))


def link_broadcast(ctx, in_slots, out_slot: int = 0) -> None:
    """Numpy broadcasting: an input axis of the output's size is that output axis; size 1 is
    a broadcast (kept whole); activations of equal size are thereby coupled (residuals)."""
    out_shape = ctx.out_shape(out_slot)
    if out_shape is None:
        raise Unsupported("output rank unknown")
    for i in in_slots:
        shape = ctx.in_shape(i)
        if shape is None:
            raise Unsupported("input rank unknown")
        off = len(out_shape) - len(shape)
        for ax, size in enumerate(shape):
            if size == 1 and out_shape[ax + off] != 1:  # broadcast axis: stays size 1
                if ctx.value(i) is None:
                    ctx.touch(ctx.in_dim(i, ax))
                continue
            ctx.identity(ctx.in_dim(i, ax), ctx.out_dim(out_slot, ax + off))


@register
class Unary(OpRule):
    ops = UNARY_OPS

    def link(self, node, ctx):
        link_all_axes(ctx)


@register
class Dropout(OpRule):
    ops = ("Dropout",)

    def link(self, node, ctx):
        link_all_axes(ctx)
        if ctx.out(1) is not None:
            link_all_axes(ctx, 0, 1)


@register
class ScalarOperands(OpRule):
    """Ops whose extra inputs must be scalars (Clip bounds); otherwise unary."""

    ops = ("Clip",)

    def link(self, node, ctx):
        for i in range(1, len(node.inputs)):
            shape = ctx.in_shape(i)
            if ctx.inp(i) is not None and shape is not None and int(np.prod(shape)) != 1:
                raise Unsupported("non-scalar bound")
        link_all_axes(ctx)


@register
class Broadcast(OpRule):
    ops = (
        "Add",
        "Sub",
        "Mul",
        "Div",
        "Pow",
        "Max",
        "Min",
        "Sum",
        "Mean",
        "PRelu",
        "Where",
        "And",
        "Or",
        "Xor",
        "Equal",
        "Greater",
        "Less",
        "GreaterOrEqual",
        "LessOrEqual",
        "Mod",
        "BitwiseAnd",
        "BitwiseOr",
    )

    def link(self, node, ctx):
        link_broadcast(ctx, [i for i in range(len(node.inputs)) if ctx.inp(i) is not None])
