"""Depth: whole attention / MLP sub-blocks that can be dropped by rewiring the residual.

A *block* is a head or neuron group whose contraction (the output projection) writes into a
residual ``Add`` — directly or through bias Adds. Dropping it removes every unit; the
projection's output becomes a broadcastable zero, so the residual carries ``x + bias``,
which is exactly the original with the block's units masked. Dead nodes then go.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from .analysis.context import tensor_shape
from .analysis.groups import Analysis, Group


@dataclass
class Block:
    index: int
    kind: str  # "attention" | "mlp"
    group: Group
    score: float  # weight-based: Frobenius norm of what the block writes to the residual
    outputs: list  # contraction nodes whose outputs become zeros when dropped


def _writes_to_residual(t: gs.Variable) -> bool:
    """``t`` reaches an Add with an activation of its own shape via bias Adds only."""
    shape = tensor_shape(t)
    cur = t
    while True:
        consumers = list(cur.outputs)
        if len(consumers) != 1 or consumers[0].op != "Add":
            return False
        add = consumers[0]
        other = [x for x in add.inputs if x is not cur]
        if len(other) != 1:
            return False
        if isinstance(other[0], gs.Constant):
            cur = add.outputs[0]
            continue
        return shape is not None and tensor_shape(other[0]) == shape


def find_blocks(analysis: Analysis) -> list[Block]:
    blocks = []
    for g in analysis.prunable:
        if g.kind not in ("head", "neuron"):
            continue
        dims = {d.id for d in g.dims}
        points = [(n, slot, d) for n, slot, _, d in analysis.contractions if d.id in dims]
        if not points or not all(_writes_to_residual(n.outputs[0]) for n, _, _ in points):
            continue
        score = 0.0
        for n, slot, _ in points:
            w = n.inputs[slot]
            if isinstance(w, gs.Constant):
                score += float(np.sum(np.square(w.values, dtype=np.float64)))
        kind = "attention" if g.kind == "head" else "mlp"
        blocks.append(Block(len(blocks), kind, g, float(np.sqrt(score)), [p[0] for p in points]))
    return blocks


def choose_blocks(blocks: list[Block], n: int = 0, indices=()) -> list[Block]:
    """The ``n`` lowest-scored blocks, or the blocks named by ``indices``."""
    if indices:
        by_index = {b.index: b for b in blocks}
        return [by_index[i] for i in indices]
    return sorted(blocks, key=lambda b: b.score)[:n]
