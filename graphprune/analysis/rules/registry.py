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

import math
from typing import NamedTuple

import numpy as np
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
    Shapes have ``None`` for symbolic or unknown axes (and for any non-positive size: a
    ``-1`` or ``0`` a file may carry is not a size to multiply by); ``None`` for an unknown
    rank. ``in_size`` / ``out_size`` / ``in_numel`` / ``out_numel`` read an unknown axis as 1,
    so a count is never negative (symbolic axes count as 1)."""

    #: constants up to this many elements are visible through ``value``
    SMALL_CONST = 256

    def __init__(
        self,
        op: str,
        attrs: dict,
        in_shapes: list,
        out_shapes: list,
        present: list[bool] | None = None,
        consts: dict | None = None,
        domain: str = "",
    ):
        self.op = op
        self.domain = domain
        self.attrs = attrs
        self.in_shapes = [_static(s) for s in in_shapes]  # per input slot; None: rank unknown
        self.out_shapes = [_static(s) for s in out_shapes]
        self.present = present if present is not None else [True] * len(in_shapes)
        self._consts = consts or {}

    @classmethod
    def from_gs(cls, node: gs.Node) -> NodeView:
        """View of a graph-surgeon node (shapes as ``analysis.context.tensor_shape`` reads)."""
        from ..context import tensor_shape

        def shape(t):
            return None if t.name == "" else tensor_shape(t)

        consts = {}
        for i, t in enumerate(node.inputs):
            if isinstance(t, gs.Constant) and _numel(t.shape) <= cls.SMALL_CONST:
                consts[i] = np.asarray(t.values)
        return cls(
            node.op,
            dict(node.attrs),
            [shape(t) for t in node.inputs],
            [shape(t) for t in node.outputs],
            [t.name != "" for t in node.inputs],
            consts,
            node.domain or "",
        )

    @classmethod
    def from_proto(cls, node, shapes: dict, values: dict | None = None) -> NodeView:
        """View of an ``onnx.NodeProto``: ``shapes`` maps tensor names to static shapes
        (tuples, ``None`` entries for unknown axes), ``values`` names to small constants."""
        import onnx

        values = values or {}
        attrs = {a.name: _plain(onnx.helper.get_attribute_value(a)) for a in node.attribute}
        ins, outs = list(node.input), list(node.output)
        return cls(
            node.op_type,
            attrs,
            [shapes.get(n) if n else None for n in ins],
            [shapes.get(n) if n else None for n in outs],
            [n != "" for n in ins],
            {i: values[n] for i, n in enumerate(ins) if n in values},
            node.domain or "",
        )

    def attr(self, name: str, default=None):
        return self.attrs.get(name, default)

    def in_shape(self, i: int):
        return self.in_shapes[i] if i < len(self.in_shapes) else None

    def out_shape(self, i: int):
        return self.out_shapes[i] if i < len(self.out_shapes) else None

    def in_size(self, i: int, axis: int) -> int:
        """Size of ``axis`` of input ``i``; 1 where unknown (or the rank is)."""
        return _size(self.in_shape(i), axis)

    def out_size(self, i: int, axis: int) -> int:
        return _size(self.out_shape(i), axis)

    def in_numel(self, i: int) -> int:
        """Elements of input ``i``, unknown axes counted as 1."""
        return math.prod(s or 1 for s in self.in_shape(i) or ())

    def out_numel(self, i: int) -> int:
        return math.prod(s or 1 for s in self.out_shape(i) or ())

    def in_known(self, i: int, axis: int) -> bool:
        """Input ``i`` has a static, positive size at ``axis``."""
        return _known(self.in_shape(i), axis)

    def out_known(self, i: int, axis: int) -> bool:
        return _known(self.out_shape(i), axis)

    def has_input(self, i: int) -> bool:
        """Input ``i`` is given (not absent, not the empty name of an optional input)."""
        return i < len(self.present) and self.present[i]

    def value(self, i: int):
        """Constant value of input ``i`` where known (small constants only), else None."""
        return self._consts.get(i)


def _static(shape) -> tuple[int | None, ...] | None:
    if shape is None:
        return None
    return tuple(int(s) if isinstance(s, (int, np.integer)) and s > 0 else None for s in shape)


def _size(shape, axis: int) -> int:
    if shape is None or not -len(shape) <= axis < len(shape):
        return 1
    return shape[axis] or 1


def _known(shape, axis: int) -> bool:
    return shape is not None and -len(shape) <= axis < len(shape) and bool(shape[axis])


def _numel(shape) -> int:
    return math.prod(int(s) for s in shape) if shape is not None else 0


def _plain(v):
    """An attribute value as graph-surgeon has it: strings decoded."""
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    if isinstance(v, list) and v and isinstance(v[0], bytes):
        return [x.decode("utf-8", "replace") for x in v]
    return v


class OpRule:
    ops: tuple[str, ...] = ()
    domain: str = ""
    #: the kind of a group whose units this op's weights carry ("channel", "neuron", ...);
    #: a group takes the kind of the first such op among its dims (heads are tagged instead)
    unit_kind: str | None = None
    #: input slots whose constant is a weight even when it is not float (the integer data
    #: of DequantizeLinear): a component holding one is a unit
    weight_slots: tuple[int, ...] = ()

    def link(self, node: gs.Node, ctx) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def refold(self, node: gs.Node, rc) -> None:
        """Rewrite counts encoded by ``node``; most ops encode none."""

    def macs(self, node: NodeView) -> list[MacTerm]:
        """Multiply-accumulates of one run of ``node``; most ops count none."""
        return []


#: predicates ``(tensor, axis) -> bool`` that name axes which are structure, never units (a
#: recurrent layer's directions): where a Reshape merges such a leading axis with another,
#: the merged axis keeps the other axis' units (see ``layout.py``). A rule adds its own with
#: ``@structural_axis``, so the Reshape rule needs no knowledge of that op.
STRUCTURAL_AXES: list = []


def structural_axis(fn):
    STRUCTURAL_AXES.append(fn)
    return fn


def is_structural(t: gs.Tensor, axis: int) -> bool:
    return any(fn(t, axis) for fn in STRUCTURAL_AXES)


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
