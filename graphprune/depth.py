"""Depth: whole attention / MLP sub-blocks that can be dropped by rewiring the residual.

A *block* is a head or neuron group whose contraction (the output projection) writes into a
residual ``Add``, directly or through bias Adds and Reshapes. Dropping it removes every
unit; the residual Add then takes the constant the path adds when the projection computes
zeros (its biases), so the residual carries ``x + bias``: exactly the original with the
block's units masked. The dead block goes with cleanup.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from .analysis.context import tensor_shape
from .analysis.groups import Analysis, Group
from .analysis.shape_values import symbolic_shape
from .errors import NothingPruned, UsageError
from .importance import group_contractions


@dataclass
class Block:
    index: int
    kind: str  # "attention" | "mlp"
    group: Group
    score: float  # weight-based: norm of what it writes to the residual; or 1 − cos (calib)
    outputs: list  # contraction nodes whose outputs become zeros when dropped


def residual_path(node: gs.Node):
    """For a projection ``node`` (MatMul/Gemm), the residual ``Add`` it writes into, the
    tensor entering that Add, and what the path adds when the projection computes zeros
    (Gemm's bias, bias Adds) as a vector over the last axis: ``(add, tensor, vector)``,
    or None. The path may pass through bias Adds and Reshapes that keep the last axis
    (GPT-2's 2-D Gemm)."""
    out = node.outputs[0]
    width = (tensor_shape(out) or [None])[-1]
    if width is None or node.op not in ("MatMul", "Gemm"):
        return None
    vector = np.zeros(width, dtype=np.float64)
    if node.op == "Gemm" and len(node.inputs) > 2 and node.inputs[2].name:
        c = node.inputs[2]
        if not isinstance(c, gs.Constant) or c.values.size not in (1, width):
            return None
        vector += float(node.attrs.get("beta", 1.0)) * np.broadcast_to(
            c.values.reshape(-1), (width,)
        )
    cur = out
    while True:
        consumers = list(cur.outputs)
        if len(consumers) != 1:
            return None
        nxt = consumers[0]
        other = [x for x in nxt.inputs if x is not cur]
        if nxt.op == "Reshape" and (tensor_shape(nxt.outputs[0]) or [None])[-1] == width:
            cur = nxt.outputs[0]
        elif nxt.op == "Add" and len(other) == 1 and isinstance(other[0], gs.Constant):
            bias = other[0].values
            if bias.size not in (1, width) or bias.ndim > len(tensor_shape(cur) or ()):
                return None
            vector += np.broadcast_to(bias.reshape(-1), (width,))
            cur = nxt.outputs[0]
        elif nxt.op == "Add" and len(other) == 1:
            same = symbolic_shape(other[0]) == symbolic_shape(cur) is not None
            return (nxt, cur, vector) if same else None
        else:
            return None


def find_blocks(analysis: Analysis) -> list[Block]:
    blocks = []
    for g in analysis.prunable:
        if g.kind not in ("head", "neuron"):
            continue
        points = group_contractions(g, analysis)
        if not points or not all(residual_path(c.node) for c in points):
            continue
        score = 0.0
        for c in points:
            w = c.node.inputs[c.slot]
            if isinstance(w, gs.Constant):
                score += float(np.sum(np.square(w.values, dtype=np.float64)))
        kind = "attention" if g.kind == "head" else "mlp"
        blocks.append(Block(len(blocks), kind, g, float(np.sqrt(score)), [c.node for c in points]))
    return blocks


def choose_blocks(blocks: list[Block], n: int = 0, indices=()) -> list[Block]:
    """The ``n`` lowest-scored blocks, or the blocks named by ``indices``."""
    if indices:
        by_index = {b.index: b for b in blocks}
        return [by_index[i] for i in indices]
    return sorted(blocks, key=lambda b: b.score)[:n]


def calibrate_blocks(blocks: list[Block], model, feeds) -> None:
    """Minitron's depth importance: 1 − cos(block input, block output) on calibration data,
    at the residual Add each block writes into (how much the block changes the stream)."""
    from .calibration import mean_cosines

    pairs = []
    for b in blocks:
        add, tensor, _ = residual_path(b.outputs[0])
        stream = next(x for x in add.inputs if x is not tensor)
        pairs.append((stream.name, add.outputs[0].name))
    for b, cos in zip(blocks, mean_cosines(model, feeds, pairs), strict=True):
        b.score = 1.0 - cos


def select_blocks(analysis: Analysis, opts, model=None, feeds=()) -> list[Block]:
    """The blocks ``--drop-layers`` / ``--drop-layers-list`` (``opts``) drop; with
    calibration feeds, ``--drop-layers`` ranks them by the Minitron score."""
    if not (opts.drop_layers or opts.drop_list):
        return []
    blocks = find_blocks(analysis)
    if feeds and model is not None and blocks and not opts.drop_list:  # else unused
        calibrate_blocks(blocks, model, feeds)
    bad = [i for i in opts.drop_list if not 0 <= i < len(blocks)]
    if bad:
        raise UsageError(
            f"--drop-layers-list: no block {bad[0]} (this model has "
            f"{len(blocks)} droppable blocks; see `graphprune analyze`)"
        )
    if not blocks:
        flag = "--drop-layers" if opts.drop_layers else "--drop-layers-list"
        raise NothingPruned(
            f"{flag} matches nothing: this model has no droppable blocks (a residual "
            "sub-block whose removal leaves a valid graph; see `graphprune analyze`)",
            flag,
        )
    if opts.drop_layers > len(blocks):
        raise UsageError(
            f"--drop-layers {opts.drop_layers}: this model has only {len(blocks)} droppable blocks"
        )
    return choose_blocks(blocks, opts.drop_layers, opts.drop_list)
