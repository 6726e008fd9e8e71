"""Drop whole sub-blocks: a projection (MatMul/Gemm) whose contracted axis lost every index
computes zeros, so its output is replaced by a broadcastable zero constant and the residual
Add carries ``x + bias``; constant Adds are folded and the dead block is left to cleanup.
Only groups that ``graphprune.depth.find_blocks`` accepted can lose every unit."""

from __future__ import annotations

import itertools

import numpy as np
import onnx_graphsurgeon as gs

from .base import PassResult
from .removal import Removal

_fresh = itertools.count()


def _replace(t: gs.Variable, const: gs.Constant) -> list[gs.Node]:
    consumers = list(t.outputs)
    for node in consumers:
        for i, x in enumerate(node.inputs):
            if x is t:
                node.inputs[i] = const
    t.inputs.clear()
    return consumers


class DropBlocks:
    name = "drop-blocks"

    def run(self, removal: Removal) -> PassResult:
        dropped = 0
        for node, _slot, _axis, d in removal.analysis.contractions:
            if node.op not in ("MatMul", "Gemm") or len(removal.of_dim(d)) < d.size:
                continue
            out = node.outputs[0]
            rank = len(removal.old_shape(out))
            n = removal.new_size(out, -1)
            zeros = np.zeros([1] * (rank - 1) + [n], dtype=out.dtype or np.float32)
            pending = _replace(out, gs.Constant(f"{out.name}_dropped{next(_fresh)}", zeros))
            node.outputs.clear()
            dropped += 1
            while pending:  # fold Add(const, const) left behind (zeros + bias)
                add = pending.pop()
                if add.op == "Add" and all(isinstance(x, gs.Constant) for x in add.inputs):
                    value = add.inputs[0].values + add.inputs[1].values
                    res = add.outputs[0]
                    pending += _replace(
                        res,
                        gs.Constant(f"{res.name}_folded{next(_fresh)}", value.astype(zeros.dtype)),
                    )
                    add.outputs.clear()
        return PassResult(self.name, dropped > 0, f"{dropped} sub-blocks dropped")
