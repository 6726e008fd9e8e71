"""Reconstruction of the consumers of removed units, from calibration statistics.

``bias`` (FLAP): a removed input j fed its consumer ``W[j] * X_j``; on average that is
``W[j] * E[X_j]``, folded into the consumer's bias (added where it has none).
``lsq``: the removed inputs are regressed on the kept ones (affine, damped):
``X_R ≈ A X_K + c`` with ``A = Σ_RK Σ_KK⁻¹``, ``c = μ_R − A μ_K``; the consumer then computes
``X_K (W_K + Aᵀ W_R) + (b + c W_R)``, the least-squares best it can do without X_R. With
``A = 0`` this is ``bias``. Updates are computed from the original weights before slicing
and applied after it (entries of channels pruned themselves are dropped), so
mask-equivalence can be checked first on the plain pruned model.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from graphprune.calibration import Activations

from .base import PassResult
from .removal import Removal

_fresh = itertools.count()
DAMPING = 0.01  # relative to the mean diagonal of Σ_KK


@dataclass
class Update:
    node: gs.Node
    slot: int  # the weight input
    axis: int  # its contracted axis
    bias: np.ndarray  # added to the outputs, over the original output channels
    weight: np.ndarray | None  # added to the kept rows (lsq), other axes at original size


def _weight_output_axis(node: gs.Node) -> int | None:
    """Axis of the weight that indexes output channels."""
    if node.op == "Conv":
        return 0
    if node.op == "Gemm":
        return 0 if int(node.attrs.get("transB", 0)) else 1
    if node.op == "MatMul":
        return 1
    return None


def _output_axis(node: gs.Node) -> int:
    return 1 if node.op == "Conv" else -1


def plan_updates(
    removal: Removal, acts: Activations, mode: str, damping: float = DAMPING
) -> list[Update]:
    """One update per contraction that loses some (not all) inputs and has statistics."""
    out = []
    for c in removal.analysis.contractions:
        removed = removal.of_dim(c.dim)
        w = c.node.inputs[c.slot]
        w_out = _weight_output_axis(c.node)
        if (
            not len(removed)
            or len(removed) == c.dim.size
            or c.act is None
            or w_out is None
            or not isinstance(w, gs.Constant)
            or (c.node.op == "MatMul" and (c.slot != 1 or w.values.ndim != 2))
        ):
            continue
        st = acts.get(c.act.tensor, c.act.axis)
        if st is None or (mode == "lsq" and st.gram is None):
            continue
        moved = np.moveaxis(np.asarray(w.values, dtype=np.float64), c.axis, 0)
        kept = np.setdiff1d(np.arange(c.dim.size), removed)
        w_r = moved[removed].reshape(len(removed), -1)
        shift = st.mean[removed]  # what stands in for X_R: its mean (bias) ...
        weight = None
        if mode == "lsq":  # ... or its regression on X_K
            cov = st.covariance
            s_kk = cov[np.ix_(kept, kept)]
            s_kk = s_kk + damping * max(np.mean(np.diag(s_kk)), 1e-12) * np.eye(len(kept))
            a_t = np.linalg.solve(s_kk, cov[np.ix_(kept, removed)])  # Aᵀ: K x R
            shift = st.mean[removed] - a_t.T @ st.mean[kept]
            delta = (a_t @ w_r).reshape((len(kept), *moved.shape[1:]))
            weight = np.moveaxis(delta, 0, c.axis)
        rest = (shift @ w_r).reshape(moved.shape[1:])  # over the weight's other axes
        out_in_rest = w_out - (1 if c.axis < w_out else 0)
        bias = rest.sum(axis=tuple(a for a in range(rest.ndim) if a != out_in_rest))
        if c.node.op == "Gemm":  # alpha scales W and so the weight delta alike; not the bias
            bias = bias * float(c.node.attrs.get("alpha", 1.0))
        out.append(Update(c.node, c.slot, c.axis, bias, weight))
    return out


class Reconstruct:
    name = "reconstruct"

    def run(self, removal: Removal, updates: list[Update]) -> PassResult:
        graph = removal.analysis.graph
        done = 0
        for up in updates:
            node, delta = up.node, up.bias
            if up.weight is not None:
                self._update_weight(removal, up)
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
        return PassResult(self.name, done > 0, f"{done} consumers reconstructed")

    @staticmethod
    def _update_weight(removal: Removal, up: Update) -> None:
        """Add the lsq delta to the (already sliced) kept rows of the weight."""
        w = up.node.inputs[up.slot]
        delta = up.weight
        for ax in range(delta.ndim):
            d = removal.analysis.space.index.get(("const", id(up.node), up.slot, ax))
            if ax != up.axis and d is not None:
                delta = np.delete(delta, removal.of_dim(d), axis=ax)
        value = (np.asarray(w.values, dtype=np.float64) + delta).astype(w.values.dtype)
        up.node.inputs[up.slot] = gs.Constant(f"{w.name}_lsq{next(_fresh)}", value)
