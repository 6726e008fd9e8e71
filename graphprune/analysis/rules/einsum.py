"""Einsum: counted, not mapped.

Its dims are not linked (every axis it touches stays frozen, as for an op without a rule),
but its MACs are counted: a contraction of two or more operands is one multiply-accumulate
per point of the index space, i.e. the product of the sizes of all distinct indices
(letters and the broadcast ``...`` axes). A single operand (transpose, trace, sum) is no
multiplication and counts none.
"""

from __future__ import annotations

import math

from ..context import Unsupported
from .registry import MacTerm, NodeView, OpRule, register


def index_sizes(equation: str, shapes: list) -> dict | None:
    """``{index: (size, (slot, axis))}`` for every distinct index of ``equation``: a letter,
    or ``("...", k)`` for the k-th broadcast axis counted from the right. The size is the
    largest known one (1 where no operand knows it), the ref an axis that has it. None when
    the equation does not fit the shapes."""
    lhs = equation.replace(" ", "").split("->")[0]
    terms = lhs.split(",")
    if len(terms) != len(shapes):
        return None
    found: dict = {}

    def see(index, size, slot: int, axis: int) -> None:
        best = found.get(index)
        if best is None or (size or 1) > best[0]:
            found[index] = (size or 1, (slot, axis))

    for slot, (term, shape) in enumerate(zip(terms, shapes, strict=True)):
        head, ellipsis, tail = term.partition("...")
        if (head + tail) and not (head + tail).isalpha():  # a stray "." or a second "..."
            return None
        if shape is None:  # rank unknown: the letters are there, their sizes are not
            for index in head + tail:
                found.setdefault(index, (1, None))
            continue
        broadcast = len(shape) - len(head) - len(tail)
        if broadcast < 0 or (broadcast and not ellipsis):
            return None
        for axis, index in enumerate(head):
            see(index, shape[axis], slot, axis)
        for j in range(broadcast):
            axis = len(head) + j
            see(("...", broadcast - 1 - j), shape[axis], slot, axis)
        for j, index in enumerate(tail):
            axis = len(head) + broadcast + j
            see(index, shape[axis], slot, axis)
    return found


@register
class Einsum(OpRule):
    ops = ("Einsum",)

    def link(self, node, ctx):
        raise Unsupported("Einsum is not mapped")

    def macs(self, node: NodeView) -> list[MacTerm]:
        equation = node.attr("equation")
        operands = [i for i in range(len(node.in_shapes)) if node.has_input(i)]
        if not isinstance(equation, str) or len(operands) < 2:
            return []
        sizes = index_sizes(equation, [node.in_shape(i) for i in operands])
        if sizes is None:
            return []
        refs = tuple(("in", operands[where[0]], where[1]) for _, where in sizes.values() if where)
        return [MacTerm(float(math.prod(size for size, _ in sizes.values())), refs)]
