"""FLAP-style bias compensation: a removed unit j fed its consumer ``W[:, j] * X_j``; on
average that is ``W[:, j] * E[X_j]``, so that mean is folded into the consumer's bias
(added where the consumer has none). Deltas are computed from the original weights before
slicing; the bias entries of output channels pruned themselves are then dropped."""

from __future__ import annotations

import itertools

import numpy as np
import onnx_graphsurgeon as gs

from graphprune.calibration import Activations

from .base import PassResult
from .removal import Removal

_fresh = itertools.count()


def _output_axis(node: gs.Node) -> int | None:
    if node.op == "Conv":
        return 1
    if node.op in ("Gemm", "MatMul"):
        return -1
    return None


def bias_deltas(removal: Removal, acts: Activations) -> list[tuple[gs.Node, np.ndarray]]:
    """``(consumer, delta over its original output channels)`` for every contraction that
    loses units and has measured inputs. Must run before constants are sliced."""
    out = []
    for c in removal.analysis.contractions:
        removed = removal.of_dim(c.dim)
        w = c.node.inputs[c.slot]
        if (
            not len(removed)
            or c.act is None
            or _output_axis(c.node) is None
            or not isinstance(w, gs.Constant)
            or len(removed) == c.dim.size
        ):
            continue
        st = acts.get(c.act.tensor, c.act.axis)
        if st is None:
            continue
        weights = np.take(np.asarray(w.values, dtype=np.float64), removed, axis=c.axis)
        mean = st.mean[removed]
        if c.node.op == "Conv":  # (O, I, k...): sum over the removed inputs and the kernel
            delta = weights.sum(axis=tuple(range(2, weights.ndim))) @ mean
        elif c.node.op == "Gemm":
            trans_b = int(c.node.attrs.get("transB", 0))
            delta = weights @ mean if trans_b else mean @ weights
            delta = delta * float(c.node.attrs.get("alpha", 1.0))
        else:  # MatMul with the weight as B: (K, N)
            if c.slot != 1 or weights.ndim != 2:
                continue
            delta = mean @ weights
        out.append((c.node, delta))
    return out


class ReconstructBias:
    name = "reconstruct-bias"

    def run(self, removal: Removal, deltas) -> PassResult:
        graph = removal.analysis.graph
        done = 0
        for node, delta in deltas:
            y = node.outputs[0]
            axis = _output_axis(node)
            kept = np.delete(delta, removal.removed(y, axis % len(removal.old_shape(y))))
            if node.op in ("Conv", "Gemm"):
                slot = 2
                has = len(node.inputs) > 2 and isinstance(node.inputs[2], gs.Constant)
                if len(node.inputs) > 2 and node.inputs[2].name and not has:
                    continue  # a bias computed at run time: leave it
                if node.op == "Gemm":
                    kept = kept / float(node.attrs.get("beta", 1.0)) if has else kept
                    if not has:
                        node.attrs["beta"] = 1.0
                old = np.asarray(node.inputs[2].values, np.float64).reshape(-1) if has else 0.0
                dtype = node.inputs[0].dtype or np.float32
                value = (old + kept).astype(dtype)  # old: one per channel, or a scalar
                const = gs.Constant(f"{node.name or node.op}_bias_fix{next(_fresh)}", value)
                while len(node.inputs) <= slot:
                    node.inputs.append(gs.Variable.empty())
                node.inputs[slot] = const
            else:  # MatMul: it now writes a new tensor, and ``y = that + delta``
                inner = gs.Variable(f"{y.name}_before_bias_fix{next(_fresh)}", dtype=y.dtype)
                const = gs.Constant(
                    f"{y.name}_bias_delta{next(_fresh)}", kept.astype(y.dtype or np.float32)
                )
                node.outputs[0] = inner
                graph.nodes.append(gs.Node("Add", inputs=[inner, const], outputs=[y]))
            done += 1
        return PassResult(self.name, done > 0, f"{done} biases compensated")
