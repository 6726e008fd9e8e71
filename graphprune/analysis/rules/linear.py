"""Gemm and MatMul: the contracted axis K couples the input features with the weight rows.

MACs: every output element sums K products, so the count is output elements x K, scaling
with every output axis and with the contracted axis of input 0.
"""

from __future__ import annotations

from ..context import Unsupported
from .elementwise import link_broadcast
from .registry import MacTerm, NodeView, OpRule, register


def _contraction_macs(node: NodeView, k_axis: int) -> list[MacTerm]:
    """Output elements x K, K being axis ``k_axis`` of input 0."""
    y = node.out_shape(0)
    if y is None or node.in_shape(0) is None:
        return []
    refs = tuple(("out", 0, ax) for ax in range(len(y))) + (("in", 0, k_axis),)
    return [MacTerm(float(node.out_numel(0) * node.in_size(0, k_axis)), refs)]


@register
class Gemm(OpRule):
    ops = ("Gemm",)
    unit_kind = "neuron"

    def link(self, node, ctx):
        ta, tb = int(ctx.attr("transA", 0)), int(ctx.attr("transB", 0))
        a_m, a_k = (1, 0) if ta else (0, 1)
        b_k, b_n = (1, 0) if tb else (0, 1)
        ctx.identity(ctx.in_dim(0, a_m), ctx.out_dim(0, 0))
        bk, ak = ctx.in_dim(1, b_k), ctx.in_dim(0, a_k)
        ctx.identity(ak, bk)
        ctx.contract(1, bk, ak)
        ctx.identity(ctx.in_dim(1, b_n), ctx.out_dim(0, 1))
        if ctx.inp(2) is not None:
            link_broadcast(ctx, [2])

    def macs(self, node):
        return _contraction_macs(node, 0 if int(node.attr("transA", 0)) else 1)


def link_matmul(ctx, op: str, trans_a: bool = False, trans_b: bool = False) -> None:
    """``op(A) @ op(B)`` with batch broadcasting, op swapping the last two axes of an
    operand where ``trans_a`` / ``trans_b`` say (MatMul: neither; FusedMatMul: its attrs)."""
    a, b, y = ctx.in_shape(0), ctx.in_shape(1), ctx.out_shape(0)
    if a is None or b is None or y is None:
        raise Unsupported("rank unknown")
    if len(a) < 2 or len(b) < 2 or len(y) < 2:
        raise Unsupported(f"1-D {op} operand")
    ra, rb = len(a), len(b)
    a_m, a_k = (ra - 1, ra - 2) if trans_a else (ra - 2, ra - 1)
    b_k, b_n = (rb - 1, rb - 2) if trans_b else (rb - 2, rb - 1)
    bk, ak = ctx.in_dim(1, b_k), ctx.in_dim(0, a_k)
    ctx.identity(ak, bk)
    ctx.contract(1, bk, ak)
    ctx.identity(ctx.in_dim(0, a_m), ctx.out_dim(0, len(y) - 2))
    ctx.identity(ctx.in_dim(1, b_n), ctx.out_dim(0, len(y) - 1))
    for i, shape in ((0, a), (1, b)):  # leading batch axes broadcast
        off = len(y) - len(shape)
        for ax in range(len(shape) - 2):
            if shape[ax] == 1 and y[ax + off] != 1:
                continue
            ctx.identity(ctx.in_dim(i, ax), ctx.out_dim(0, ax + off))


@register
class MatMul(OpRule):
    ops = ("MatMul",)
    unit_kind = "neuron"

    def link(self, node, ctx):
        link_matmul(ctx, "MatMul")

    def macs(self, node):
        a = node.in_shape(0)
        return [] if a is None or not a else _contraction_macs(node, len(a) - 1)
