"""The price of a plan, computed, not measured: MACs and parameters as sums of terms, each
its original cost times the product of the kept fractions of the dims it scales with.

A MAC term comes from the op rule of its node (``OpRule.macs``), the same count the report
gives; a parameter term is one floating-point constant and the axes of it that are pruned.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from .analysis.context import tensor_shape
from .analysis.groups import Analysis


class CostModel:
    """MACs and parameters of a set of removed units, as products of kept fractions."""

    def __init__(self, analysis: Analysis):
        self.analysis = analysis
        space = analysis.space
        self.sizes = np.array([d.size for d in space.dims], dtype=np.float64)
        self.bases = np.array([d.base for d in space.dims], dtype=np.int64)
        self.macs_terms: list[tuple[float, list[int]]] = []
        contracted = {id(c.node): c.act for c in analysis.contractions if c.act is not None}
        for node in analysis.graph.nodes:
            if node.op not in ("Conv", "Gemm", "MatMul") or not node.outputs:
                continue
            out = node.outputs[0]
            shape = tensor_shape(out)
            if shape is None:
                continue
            act = contracted.get(id(node))
            if node.op == "Conv":  # out elements x (Cin/group) x kernel
                w = node.inputs[1]
                if not isinstance(w, gs.Constant):
                    continue
                k = float(np.prod(w.values.shape[1:]))
            else:  # out elements x K
                k = float(act.size) if act is not None else 0.0
            dims = [
                space.index[("act", out.name, ax)].id
                for ax in range(len(shape))
                if ("act", out.name, ax) in space.index
            ]
            if act is not None:
                dims.append(act.id)  # group == 1: the contracted channels scale it too
            known = float(np.prod([s if s is not None else 1 for s in shape]))
            self.macs_terms.append((known * k, dims))
        by_tensor: dict[str, tuple[float, list[int]]] = {}
        for d in space.dims:
            t = d.node.inputs[d.slot] if d.kind == "const" else None
            if isinstance(t, gs.Constant) and t.values.dtype.kind == "f":
                size, dims = by_tensor.get(t.name, (float(t.values.size), []))
                if all(space.dims[x].axis != d.axis for x in dims):
                    dims.append(d.id)
                by_tensor[t.name] = (size, dims)
        self.param_terms = list(by_tensor.values())

    def kept_fractions(self, labels_removed: np.ndarray) -> np.ndarray:
        """Per dim of the analysis' space, the fraction of its indices kept."""
        mask = np.isin(self.analysis.labels, labels_removed).astype(np.float64)
        removed = np.add.reduceat(mask, self.bases) if len(mask) else np.zeros(0)
        return (self.sizes - removed) / self.sizes

    def cost(self, labels_removed: np.ndarray, what: str) -> float:
        """``what`` ("macs" or "params") left once the units ``labels_removed`` are gone."""
        kept = self.kept_fractions(labels_removed)
        terms = self.macs_terms if what == "macs" else self.param_terms
        return float(sum(c * np.prod(kept[dims]) for c, dims in terms))
