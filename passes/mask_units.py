"""Build the parity reference: a copy of the original where every removed unit is masked at
its contraction points (weight slices zeroed; a Mul by a 0/1 mask where the contracted
operand is an activation). Removing a unit is the same function as this.

A weight held on disk (``graphprune.weights``) is not copied to be zeroed: the activation
it is contracted with is masked instead (the same positions of the same sum), so the
reference shares the original's weights and parity costs no second copy of them."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from graphprune import weights

from .base import Pass, PassContext, PassResult
from .removal import Removal


def masked_reference(removal: Removal) -> onnx.ModelProto:
    copy, _ = masked_graph(removal)
    weights.prepare_export(copy, own=False)  # it reads the original weights where they are
    return gs.export_onnx(copy, do_type_check=False)


def _operand(node: gs.Node, act) -> int | None:
    """The input slot of ``node`` that carries the activation ``act`` is contracted on."""
    for i, t in enumerate(node.inputs):
        if isinstance(t, gs.Variable) and t.name == act.tensor:
            return i
    return None


def masked_graph(removal: Removal) -> tuple[gs.Graph, dict[int, gs.Node]]:
    """The masked copy of the graph, and ``id(original node) -> its copy``."""
    graph = removal.analysis.graph
    copy = graph.copy()
    node_map = {id(a): b for a, b in zip(graph.nodes, copy.nodes, strict=True)}
    on_disk = weights.on_disk(graph)
    for k, (node, slot, axis, d, act) in enumerate(removal.analysis.contractions):
        idx = removal.of_dim(d)
        if len(idx) == 0:
            continue
        target = node_map[id(node)]
        src = target.inputs[slot]
        if isinstance(src, gs.Constant) and on_disk and act is not None and act.size == d.size:
            other = _operand(target, act)
            if other is not None:  # mask the activation: the weight stays shared
                slot, axis, src = other, act.axis, target.inputs[other]
        if isinstance(src, gs.Constant):
            vals = np.array(src.values, copy=True)
            index = [slice(None)] * vals.ndim
            index[axis] = idx
            vals[tuple(index)] = 0
            target.inputs[slot] = gs.Constant(f"{src.name}_masked{k}", vals)
        else:
            shape = [1] * len(removal.old_shape(src))
            shape[axis] = d.size
            mask = np.ones(shape, dtype=np.float32)
            mask.reshape(-1)[idx] = 0
            dtype = src.dtype if src.dtype is not None else np.float32
            m_const = gs.Constant(f"{src.name}_unitmask{k}", mask.astype(dtype))
            out = gs.Variable(f"{src.name}_masked{k}", dtype=src.dtype)
            copy.nodes.append(gs.Node("Mul", inputs=[src, m_const], outputs=[out]))
            target.inputs[slot] = out
    copy.cleanup(remove_unused_graph_inputs=False).toposort()
    return copy, node_map


class MaskReference(Pass):
    """Build the parity reference (the original with the removed units masked); the graph
    being pruned is not touched."""

    name = "mask-reference"
    requires = ("removal",)

    def run(self, graph, ctx: PassContext) -> PassResult:
        ctx.reference = masked_reference(ctx.removal)
        points = sum(len(ctx.removal.of_dim(c.dim)) > 0 for c in ctx.analysis.contractions)
        return PassResult(False, f"{points} contraction points masked")
