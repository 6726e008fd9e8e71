"""Slice initializers along every axis that loses indices. A constant whose uses end with
different slices (or that a subgraph reads) is cloned per distinct slice pattern."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import onnx_graphsurgeon as gs

from graphprune import weights

from .base import Pass, PassContext, PassResult
from .removal import Removal


def _sliced(values: np.ndarray, cuts: tuple) -> np.ndarray:
    out = values
    for axis, idx in cuts:
        out = np.delete(out, np.asarray(idx, dtype=np.int64), axis=axis)
    return np.ascontiguousarray(out)


class SliceConstants(Pass):
    name = "slice-constants"
    requires = ("removal",)

    def run(self, graph, ctx: PassContext) -> PassResult:
        removal: Removal = ctx.removal
        # (node id, slot) -> ((axis, removed idx tuple), ...)
        per_use: dict[tuple, dict[int, tuple]] = defaultdict(dict)
        uses: dict[tuple, tuple] = {}
        for d in removal.dims_touched():
            if d.kind != "const":
                continue
            key = (id(d.node), d.slot)
            per_use[key][d.axis] = tuple(removal.of_dim(d).tolist())
            uses[key] = (d.node, d.slot)
        if not per_use:
            return PassResult(False)
        by_const: dict[str, list[tuple]] = defaultdict(list)
        for key, (node, slot) in uses.items():
            by_const[node.inputs[slot].name].append(key)
        n_sliced = 0
        for keys in by_const.values():
            node0, slot0 = uses[keys[0]]
            const = node0.inputs[slot0]
            patterns = {k: tuple(sorted(per_use[k].items())) for k in keys}
            all_consumers = [
                (n, i) for n in const.outputs for i, t in enumerate(n.inputs) if t is const
            ]
            shared_elsewhere = len(all_consumers) > len(keys) or len(set(patterns.values())) > 1
            cache: dict[tuple, gs.Constant] = {}
            for k in keys:
                node, slot = uses[k]
                cuts = patterns[k]
                if cuts not in cache:
                    arr = weights.keep(graph, _sliced(const.values, cuts), const.name)
                    if shared_elsewhere or const.name in removal.analysis.implicit:
                        cache[cuts] = gs.Constant(f"{const.name}_pruned{len(cache)}", arr)
                    else:
                        const.values = arr
                        cache[cuts] = const
                    n_sliced += 1
                node.inputs[slot] = cache[cuts]
        return PassResult(True, f"{n_sliced} initializers sliced")
