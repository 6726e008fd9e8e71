"""Registry of op rules: one class per op family, keyed by ``(domain, op_type)``.

A rule owns every fact about its op that the tool needs:
- ``link`` declares how the dims of a node's inputs and outputs are linked (and which are
  contracted, for parity masking and calibration);
- ``refold`` rewrites the counts the node encodes (attributes, shape constants) once the
  plan is known;
- ``macs`` counts its multiply-accumulates, as terms that each scale with the kept fraction
  of some of its dims, so the report, the cost model and ``--target-macs`` use one count.
Axes of activations a rule leaves untouched are frozen by the analysis, so a rule only has
to say what it understands.
"""

from __future__ import annotations

from typing import NamedTuple

import onnx_graphsurgeon as gs

RULES: dict[tuple[str, str], OpRule] = {}

#: A reference to one of a node's dims, as a MAC term names it: ``("in", slot, axis)``,
#: ``("out", slot, axis)`` or ``("virtual", tag)`` (a dim the rule's ``link`` invented).
DimRef = tuple


class MacTerm(NamedTuple):
    """``macs`` multiply-accumulates, proportional to the kept fraction of each dim in
    ``scales_with`` (multilinear: a Conv's cost is output elements x contracted channels)."""

    macs: float
    scales_with: tuple[DimRef, ...] = ()


class NodeView:
    """What ``OpRule.macs`` sees of a node: op, attributes and static shapes, the same for a
    graph-surgeon node (cost model) and an ONNX NodeProto with a shape map (report).
    Shapes have ``None`` for symbolic or unknown axes; ``None`` for an unknown rank."""

    def __init__(
        self,
        op: str,
        attrs: dict,
        in_shapes: list,
        out_shapes: list,
        present: list[bool] | None = None,
        consts: dict | None = None,
    ):
        self.op = op
        self.attrs = attrs
        self.in_shapes = in_shapes  # per input slot; None: rank unknown
        self.out_shapes = out_shapes
        self.present = present if present is not None else [True] * len(in_shapes)
        self._consts = consts or {}

    def attr(self, name: str, default=None):
        return self.attrs.get(name, default)

    def in_shape(self, i: int):
        return self.in_shapes[i] if i < len(self.in_shapes) else None

    def out_shape(self, i: int):
        return self.out_shapes[i] if i < len(self.out_shapes) else None

    def has_input(self, i: int) -> bool:
        """Input ``i`` is given (not absent, not the empty name of an optional input)."""
        return i < len(self.present) and self.present[i]

    def value(self, i: int):
        """Constant value of input ``i`` where known (small constants only), else None."""
        return self._consts.get(i)


class OpRule:
    ops: tuple[str, ...] = ()
    domain: str = ""

    def link(self, node: gs.Node, ctx) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def refold(self, node: gs.Node, rc) -> None:
        """Rewrite counts encoded by ``node``; most ops encode none."""

    def macs(self, node: NodeView) -> list[MacTerm]:
        """Multiply-accumulates of one run of ``node``; most ops count none."""
        return []


def register(cls: type[OpRule]) -> type[OpRule]:
    inst = cls()
    for op in cls.ops:
        RULES[(cls.domain, op)] = inst
    return cls


def _domain(domain: str | None) -> str:
    return "" if domain in (None, "", "ai.onnx") else domain


def rule_for(node: gs.Node) -> OpRule | None:
    return RULES.get((_domain(node.domain), node.op))


def rule_for_op(domain: str | None, op: str) -> OpRule | None:
    return RULES.get((_domain(domain), op))
