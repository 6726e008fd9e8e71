"""Drop whole sub-blocks: a projection (MatMul/Gemm) whose contracted axis lost every index
computes zeros, so the residual Add it writes into takes the constant its path adds instead
(biases, as a broadcastable ``[1, ..., 1, D]`` vector), and the block is left to cleanup.
Only groups that ``graphprune.depth.find_blocks`` accepted can lose every unit."""

from __future__ import annotations

import itertools

import numpy as np
import onnx_graphsurgeon as gs

from graphprune.depth import residual_path

from .base import Pass, PassContext, PassResult
from .removal import Removal

_fresh = itertools.count()


class DropBlocks(Pass):
    name = "drop-blocks"
    requires = ("removal",)

    def run(self, graph, ctx: PassContext) -> PassResult:
        removal: Removal = ctx.removal
        dropped = 0
        for node, _slot, _axis, d, _act in removal.analysis.contractions:
            if len(removal.of_dim(d)) < d.size or not node.outputs:
                continue
            path = residual_path(node)
            if path is None:  # find_blocks only lets blocks with a residual path lose all
                continue
            add, tensor, vector = path
            rank = len(removal.old_shape(tensor))
            dtype = tensor.dtype or np.float32
            value = vector.astype(dtype).reshape([1] * (rank - 1) + [len(vector)])
            const = gs.Constant(f"{tensor.name}_dropped{next(_fresh)}", value)
            for i, x in enumerate(add.inputs):
                if x is tensor:
                    add.inputs[i] = const
            dropped += 1
        return PassResult(dropped > 0, f"{dropped} sub-blocks dropped")
