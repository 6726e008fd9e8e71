"""What an op rule sees while linking one node: tensors, shapes, constants, linking verbs."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import onnx_graphsurgeon as gs

from .space import Dim, ElementSpace


class Contraction(NamedTuple):
    node: gs.Node
    slot: int  # the input summed over
    axis: int
    dim: Dim
    act: Dim | None  # the activation dim it is multiplied with, if any


class Unsupported(Exception):  # noqa: N818 - a verdict, not a failure
    """Raised by a rule that cannot map this node; every dim it touches is then frozen."""


def tensor_shape(t: gs.Tensor) -> tuple[int | None, ...] | None:
    """Static shape with ``None`` for symbolic / unknown axes; ``None`` if the rank is unknown."""
    if isinstance(t, gs.Constant):
        return tuple(int(s) for s in t.values.shape)
    if t.shape is None:
        return None
    return tuple(s if isinstance(s, int) and s >= 0 else None for s in t.shape)


class LinkContext:
    """Verbs for rules: ``identity``, ``block``, ``offset``, ``contract``, ``freeze``, ``touch``."""

    def __init__(self, space: ElementSpace, opset: int, options: dict | None = None):
        self.space = space
        self.opset = opset
        self.options = options or {}  # analysis choices, e.g. {"gqa": "query"}
        self.node: gs.Node | None = None
        self.touched: set[int] = set()
        #: consumer-side contraction points: masked for parity, measured for importance
        self.contractions: list[Contraction] = []
        #: id(node) -> what its rule decided and its refold must honour (e.g. shape entries
        #: that follow their dims at run time)
        self.notes: dict[int, dict] = {}

    # -- tensors --------------------------------------------------------------------------
    def inp(self, i: int) -> gs.Tensor | None:
        ins = self.node.inputs
        if i >= len(ins) or ins[i].name == "":
            return None
        return ins[i]

    def out(self, i: int) -> gs.Tensor | None:
        outs = self.node.outputs
        if i >= len(outs) or outs[i].name == "":
            return None
        return outs[i]

    def value(self, i: int) -> np.ndarray | None:
        """Constant value of input ``i`` (None when it is computed at run time)."""
        t = self.inp(i)
        return t.values if isinstance(t, gs.Constant) else None

    def in_shape(self, i: int):
        t = self.inp(i)
        return None if t is None else tensor_shape(t)

    def out_shape(self, i: int):
        t = self.out(i)
        return None if t is None else tensor_shape(t)

    def attr(self, name: str, default=None):
        return self.node.attrs.get(name, default)

    def axes_operand(self, rank: int, slot: int = 1) -> list[int] | None:
        """Sorted ``axes`` from the attribute (old opsets) or constant input ``slot`` (new
        ones), normalised to ``rank``; None when absent. Raises Unsupported if dynamic."""
        axes = self.attr("axes")
        if axes is None and self.inp(slot) is not None:
            axes = self.value(slot)
            if axes is None:
                raise Unsupported("axes computed at run time")
        return None if axes is None else sorted(int(a) % rank for a in np.ravel(axes))

    # -- dims -----------------------------------------------------------------------------
    def _dim(self, t: gs.Tensor, axis: int, slot: int) -> Dim:
        shape = tensor_shape(t)
        if shape is None:
            raise Unsupported(f"rank of {t.name!r} unknown")
        if axis < 0:
            axis += len(shape)
        if not 0 <= axis < len(shape):
            raise Unsupported(f"axis {axis} out of range for {t.name!r}")
        if isinstance(t, gs.Constant) and slot >= 0:
            key = ("const", id(self.node), slot, axis)
            d = self.space.dim(key, "const", t.name, axis, shape[axis], self.node, slot)
        else:
            d = self.space.dim(("act", t.name, axis), "act", t.name, axis, shape[axis])
        self.touched.add(d.id)
        return d

    def in_dim(self, i: int, axis: int) -> Dim:
        return self._dim(self.node.inputs[i], axis, i)

    def out_dim(self, i: int, axis: int) -> Dim:
        return self._dim(self.node.outputs[i], axis, -1)

    def tensor_dim(self, t: gs.Tensor, axis: int) -> Dim:
        """A dim of any activation (not necessarily this node's), e.g. one a Shape read."""
        shape = tensor_shape(t)
        if shape is None:
            raise Unsupported(f"rank of {t.name!r} unknown")
        return self.space.dim(("act", t.name, axis), "act", t.name, axis, shape[axis])

    def virtual(self, tag: str, size: int) -> Dim:
        key = ("virtual", id(self.node), tag)
        name = f"{self.node.name or self.node.op}:{tag}"
        return self.space.dim(key, "virtual", name, 0, size, self.node)

    # -- verbs ----------------------------------------------------------------------------
    def touch(self, *dims: Dim) -> None:
        for d in dims:
            self.touched.add(d.id)

    def freeze(self, d: Dim, reason: str) -> None:
        self.touched.add(d.id)
        self.space.freeze(d, f"{self.node.op}: {reason}")

    def approximate(self, d: Dim, reason: str) -> None:
        """Freeze ``d`` with a reason that width pruning (approximate parity) may lift."""
        self.space.approximate.add(f"{self.node.op}: {reason}")
        self.freeze(d, reason)

    def tag(self, d: Dim, tag: str) -> None:
        self.space.tag(d, tag)

    def identity(self, a: Dim, b: Dim) -> None:
        """Index i of ``a`` is index i of ``b``."""
        if a.size != b.size:
            self.freeze(a, f"size mismatch {a.size} vs {b.size}")
            self.freeze(b, f"size mismatch {a.size} vs {b.size}")
            return
        idx = np.arange(a.size)
        self.space.link(a, idx, b, idx)

    def block(self, fine: Dim, coarse: Dim, block: int) -> None:
        """Index j of ``fine`` belongs to unit ``j // block`` of ``coarse`` (Flatten, heads)."""
        if fine.size != coarse.size * block:
            raise Unsupported(f"block size mismatch {fine.size} != {coarse.size}x{block}")
        j = np.arange(fine.size)
        self.space.link(fine, j, coarse, j // block)

    def offset(self, whole: Dim, part: Dim, start: int, step: int = 1) -> None:
        """Index i of ``part`` is index ``start + i*step`` of ``whole`` (Concat, Split, Slice)."""
        i = np.arange(part.size)
        self.space.link(whole, start + i * step, part, i)

    def contract(self, slot: int, d: Dim, act: Dim | None = None) -> None:
        """Input ``slot`` is summed over ``d`` here: the masking point for parity. ``act``
        is the activation dim multiplied against it (where calibration statistics live)."""
        self.contractions.append(Contraction(self.node, slot, d.axis, d, act))
