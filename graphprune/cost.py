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
from .analysis.rules import NodeView, rule_for
from .analysis.space import ElementSpace


def _dim_id(space: ElementSpace, node: gs.Node, ref: tuple) -> int | None:
    """The space dim a MAC term's ref names, or None when the analysis has no such dim (the
    term does not scale with it): ``("in", slot, axis)`` is the per-use dim of a constant
    input or the activation's, ``("out", slot, axis)`` the activation's, ``("virtual",
    tag)`` the dim the rule's ``link`` made with ``ctx.virtual(tag, ...)``."""
    if ref[0] == "virtual":
        key = ("virtual", id(node), ref[1])
    else:
        kind, slot, axis = ref
        tensors = node.inputs if kind == "in" else node.outputs
        if not 0 <= slot < len(tensors) or tensors[slot].name == "":
            return None
        t = tensors[slot]
        shape = tensor_shape(t)
        if shape is None or not -len(shape) <= axis < len(shape):
            return None
        axis %= len(shape)
        if kind == "in" and isinstance(t, gs.Constant):
            key = ("const", id(node), slot, axis)
        else:
            key = ("act", t.name, axis)
    d = space.index.get(key)
    return None if d is None else d.id


class CostModel:
    """MACs and parameters of a set of removed units, as products of kept fractions."""

    def __init__(self, analysis: Analysis):
        self.analysis = analysis
        space = analysis.space
        self.sizes = np.array([d.size for d in space.dims], dtype=np.float64)
        self.bases = np.array([d.base for d in space.dims], dtype=np.int64)
        self.macs_terms: list[tuple[float, list[int]]] = []
        #: the MAC terms of each node, by the name of its first output (graphprune.latency)
        self.node_terms: dict[str, list[tuple[float, list[int]]]] = {}
        for node in analysis.graph.nodes:
            rule = rule_for(node)
            if rule is None:
                continue
            for term in rule.macs(NodeView.from_gs(node)):
                dims = [_dim_id(space, node, ref) for ref in term.scales_with]
                entry = (float(term.macs), [d for d in dims if d is not None])
                self.macs_terms.append(entry)
                if node.outputs:
                    self.node_terms.setdefault(node.outputs[0].name, []).append(entry)
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
