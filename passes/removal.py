"""What a plan removes, seen per dim: the shared input of every rewrite pass."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from graphprune.analysis.context import tensor_shape
from graphprune.analysis.groups import Analysis
from graphprune.analysis.space import Dim
from graphprune.plan import removed_labels

from .base import Pass, PassContext, PassResult


class Removal:
    def __init__(self, analysis: Analysis, labels_removed: np.ndarray):
        self.analysis = analysis
        self.mask = np.isin(analysis.labels, labels_removed)
        self._old_shapes: dict[str, tuple] = {}
        for name, t in analysis.graph.tensors().items():
            shape = tensor_shape(t)
            if shape is not None:
                self._old_shapes[name] = shape

    def of_dim(self, d: Dim) -> np.ndarray:
        return np.flatnonzero(self.mask[d.base : d.base + d.size])

    def removed(self, t: gs.Tensor, axis: int) -> np.ndarray:
        d = self.analysis.space.index.get(("act", t.name, axis))
        return np.zeros(0, np.int64) if d is None else self.of_dim(d)

    def old_shape(self, t: gs.Tensor) -> tuple:
        return self._old_shapes[t.name]

    def new_size(self, t: gs.Tensor, axis: int) -> int:
        axis %= len(self.old_shape(t))
        return int(self.old_shape(t)[axis]) - len(self.removed(t, axis))

    def dims_touched(self) -> list[Dim]:
        """Dims that lose at least one index."""
        return [d for d in self.analysis.space.dims if self.mask[d.base : d.base + d.size].any()]


class ComputeRemoval(Pass):
    """What the plan removes, per dim: validated against the analysis, read by every
    rewrite pass after it."""

    name = "removal"

    def run(self, graph, ctx: PassContext) -> PassResult:
        ctx.removal = Removal(ctx.analysis, removed_labels(ctx.plan, ctx.analysis))
        units = sum(len(gp.remove) for gp in ctx.plan.groups)
        return PassResult(False, f"{units} units of {len(ctx.plan.groups)} groups")
