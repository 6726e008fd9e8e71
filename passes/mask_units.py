"""Build the parity reference: a copy of the original where every removed unit is masked at
its contraction points (weight slices zeroed; a Mul by a 0/1 mask where the contracted
operand is an activation). Removing a unit is the same function as this.

A weight held on disk (``graphprune.weights``) is not copied to be zeroed: the activation
it is contracted with is masked instead (the same positions of the same sum), so the
reference shares the original's weights and parity costs no second copy of them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from graphprune import weights
from graphprune.analysis.context import tensor_shape
from graphprune.analysis.groups import Analysis
from graphprune.analysis.space import Dim
from graphprune.errors import PlanError

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
    copy, node_map = _copy(graph)
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
            shape = _mask_shape(len(removal.old_shape(src)), axis, d.size)
            mask = np.ones(shape, dtype=_dtype(src))
            mask.reshape(-1)[idx] = 0
            _multiply(copy, target, slot, gs.Constant(f"{src.name}_unitmask{k}", mask), k)
    copy.cleanup(remove_unused_graph_inputs=False).toposort()
    return copy, node_map


def _copy(graph: gs.Graph) -> tuple[gs.Graph, dict[int, gs.Node]]:
    """A copy of ``graph`` and ``id(original node) -> its copy``."""
    copy = graph.copy()
    return copy, {id(a): b for a, b in zip(graph.nodes, copy.nodes, strict=True)}


def _mask_shape(rank: int, axis: int, size: int) -> list[int]:
    shape = [1] * rank
    shape[axis] = size
    return shape


def _dtype(t: gs.Tensor):
    if isinstance(t, gs.Constant):
        return t.values.dtype
    return t.dtype if t.dtype is not None else np.float32


def _multiply(graph: gs.Graph, node: gs.Node, slot: int, mask: gs.Tensor, k: int) -> None:
    """``node`` reads its input ``slot`` times ``mask`` (broadcast) instead."""
    src = node.inputs[slot]
    out = gs.Variable(f"{src.name}_masked{k}", dtype=_dtype(src))
    graph.nodes.append(gs.Node("Mul", inputs=[src, mask], outputs=[out]))
    node.inputs[slot] = out


@dataclass
class MaskSite:
    """One contraction point of a switchable-mask model: the graph input that multiplies
    it, and its shape (the dim's size on its axis, 1 elsewhere)."""

    name: str
    dim: Dim
    shape: tuple[int, ...]
    dtype: np.dtype


def switchable_masks(analysis: Analysis, dims) -> tuple[onnx.ModelProto, list[MaskSite]]:
    """A copy of the model in which every contraction point of ``dims`` is multiplied by
    a mask fed as a graph input, so that one ONNX Runtime session runs the model with any
    units of those dims removed (``mask_feeds``). Weights are multiplied too, not copied."""
    copy, node_map = _copy(analysis.graph)
    wanted = {id(d) for d in dims}
    sites = []
    for k, (node, slot, axis, d, _) in enumerate(analysis.contractions):
        if id(d) not in wanted:
            continue
        src = node.inputs[slot]  # the original's: its shape is known
        shape = tensor_shape(src)
        if shape is None:
            raise PlanError(f"{src.name}: rank unknown, its units cannot be masked")
        site = MaskSite(
            f"__unit_mask{k}", d, tuple(_mask_shape(len(shape), axis, d.size)), _dtype(src)
        )
        sites.append(site)
        mask = gs.Variable(site.name, dtype=site.dtype, shape=list(site.shape))
        _multiply(copy, node_map[id(node)], slot, mask, k)
        copy.inputs.append(mask)
    copy.cleanup(remove_unused_graph_inputs=False).toposort()
    weights.prepare_export(copy, own=False)
    return gs.export_onnx(copy, do_type_check=False), sites


def mask_feeds(analysis: Analysis, sites: list[MaskSite], labels_removed) -> dict:
    """The mask inputs of ``switchable_masks``'s model that remove ``labels_removed``."""
    gone = np.isin(analysis.labels, labels_removed)
    out = {}
    for s in sites:
        keep = ~gone[s.dim.base : s.dim.base + s.dim.size]
        out[s.name] = keep.astype(s.dtype).reshape(s.shape)
    return out


class MaskReference(Pass):
    """Build the parity reference (the original with the removed units masked); the graph
    being pruned is not touched."""

    name = "mask-reference"
    requires = ("removal",)

    def run(self, graph, ctx: PassContext) -> PassResult:
        ctx.reference = masked_reference(ctx.removal)
        points = sum(len(ctx.removal.of_dim(c.dim)) > 0 for c in ctx.analysis.contractions)
        return PassResult(False, f"{points} contraction points masked")
