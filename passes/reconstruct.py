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


def full_delta(up: Update, removal: Removal) -> np.ndarray:
    """``up.weight`` scattered into the weight's original shape (zeros on removed rows)."""
    size = up.node.inputs[up.slot].values.shape[up.axis]
    d = removal.analysis.space.index.get(("const", id(up.node), up.slot, up.axis))
    kept = np.arange(size) if d is None else np.setdiff1d(np.arange(size), removal.of_dim(d))
    delta = np.zeros(up.node.inputs[up.slot].values.shape)
    np.moveaxis(delta, up.axis, 0)[kept] = np.moveaxis(up.weight, up.axis, 0)
    return delta


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


def refittable(c, removal: Removal) -> bool:
    """A contraction that loses some (not all) inputs, through a constant weight we can refit."""
    removed = removal.of_dim(c.dim)
    w = c.node.inputs[c.slot]
    return (
        0 < len(removed) < c.dim.size
        and c.act is not None
        and _weight_output_axis(c.node) is not None
        and isinstance(w, gs.Constant)
        and not (c.node.op == "MatMul" and (c.slot != 1 or w.values.ndim != 2))
    )


def regression(sigma_kk, sigma_kx, mean_k, mean_x, kept, damping: float):
    """``X ≈ Aᵀ X̃_K + c``: every original input channel regressed (affine, ridge) on the kept
    channels the pruned model provides. The ridge pulls A toward "each kept channel stands
    for itself", so where X̃ = X a kept channel maps exactly to itself (A = I on K) whatever
    the damping, and only the removed channels are estimated."""
    k, n = sigma_kx.shape
    lam = damping * max(float(np.mean(np.diag(sigma_kk))), 1e-12)
    prior = np.zeros((k, n))
    prior[np.arange(k), kept] = 1.0
    a = np.linalg.solve(sigma_kk + lam * np.eye(k), sigma_kx + lam * prior)
    return a, mean_x - a.T @ mean_k


def make_update(c, kept: np.ndarray, a: np.ndarray | None, shift: np.ndarray) -> Update:
    """The consumer fed ``Aᵀ X̃_K + shift`` in place of X: its kept weight rows become
    ``A W`` (``a is None``: unchanged) and ``shift · W`` joins its bias."""
    w_out = _weight_output_axis(c.node)
    moved = np.moveaxis(np.asarray(c.node.inputs[c.slot].values, dtype=np.float64), c.axis, 0)
    flat = moved.reshape(len(moved), -1)
    weight = None
    if a is not None:
        delta = (a @ flat - flat[kept]).reshape((len(kept), *moved.shape[1:]))
        weight = np.moveaxis(delta, 0, c.axis)
    rest = (shift @ flat).reshape(moved.shape[1:])  # over the weight's other axes
    out_in_rest = w_out - (1 if c.axis < w_out else 0)
    bias = rest.sum(axis=tuple(ax for ax in range(rest.ndim) if ax != out_in_rest))
    if c.node.op == "Gemm":  # alpha scales W and so the weight delta alike; not the bias
        bias = bias * float(c.node.attrs.get("alpha", 1.0))
    return Update(c.node, c.slot, c.axis, bias, weight)


def plan_updates(
    removal: Removal, acts: Activations, regress: bool, damping: float = DAMPING
) -> list[Update]:
    """One update per refittable contraction with statistics, all from the original model:
    with ``regress`` (lsq) the removed inputs are regressed on the kept ones, else (bias)
    each is replaced by its mean."""
    out = []
    for c in removal.analysis.contractions:
        if not refittable(c, removal):
            continue
        st = acts.get(c.act.tensor, c.act.axis)
        if st is None or (regress and st.gram is None):
            continue
        removed = removal.of_dim(c.dim)
        kept = np.setdiff1d(np.arange(c.dim.size), removed)
        if regress:
            cov = st.covariance
            a, shift = regression(
                cov[kept][:, kept], cov[kept], st.mean[kept], st.mean, kept, damping
            )
        else:  # bias: a removed channel is replaced by its mean
            a, shift = None, np.where(np.isin(np.arange(c.dim.size), removed), st.mean, 0.0)
        out.append(make_update(c, kept, a, shift))
    return out


def add_to_weight(node: gs.Node, slot: int, delta: np.ndarray) -> None:
    """Add ``delta`` (the weight's current shape) to ``node``'s constant input ``slot``."""
    w = node.inputs[slot]
    value = (np.asarray(w.values, dtype=np.float64) + delta).astype(w.values.dtype)
    node.inputs[slot] = gs.Constant(f"{w.name}_lsq{next(_fresh)}", value)


def add_to_outputs(graph: gs.Graph, node: gs.Node, delta: np.ndarray) -> bool:
    """Add ``delta`` (one value per output channel) to what ``node`` computes: into the bias
    of a Conv/Gemm (one is added where there is none), behind a MatMul as an ``Add``. False
    where the bias is computed at run time: that is left alone."""
    y = node.outputs[0]
    if node.op in ("Conv", "Gemm"):
        has = len(node.inputs) > 2 and isinstance(node.inputs[2], gs.Constant)
        if len(node.inputs) > 2 and node.inputs[2].name and not has:
            return False
        if node.op == "Gemm":
            delta = delta / float(node.attrs.get("beta", 1.0)) if has else delta
            if not has:
                node.attrs["beta"] = 1.0
        old = np.asarray(node.inputs[2].values, np.float64).reshape(-1) if has else 0.0
        dtype = node.inputs[0].dtype or np.float32
        value = (old + delta).astype(dtype)  # old: one per channel, or a scalar
        const = gs.Constant(f"{node.name or node.op}_bias_fix{next(_fresh)}", value)
        while len(node.inputs) <= 2:
            node.inputs.append(gs.Variable.empty())
        node.inputs[2] = const
    else:  # MatMul: it now writes a new tensor, and ``y = that + delta``
        inner = gs.Variable(f"{y.name}_before_bias_fix{next(_fresh)}", dtype=y.dtype)
        const = gs.Constant(
            f"{y.name}_bias_delta{next(_fresh)}", delta.astype(y.dtype or np.float32)
        )
        node.outputs[0] = inner
        graph.nodes.append(gs.Node("Add", inputs=[inner, const], outputs=[y]))
    return True


def apply_updates(removal: Removal, updates: list[Update]) -> int:
    """Apply ``updates`` to the pruned graph (deltas over original sizes are sliced first);
    return how many consumers changed."""
    graph = removal.analysis.graph
    done = 0
    for up in updates:
        node = up.node
        if up.weight is not None:
            add_to_weight(node, up.slot, _sliced_weight(removal, up))
        y = node.outputs[0]
        axis = _output_axis(node) % len(removal.old_shape(y))
        done += add_to_outputs(graph, node, np.delete(up.bias, removal.removed(y, axis)))
    return done


def _sliced_weight(removal: Removal, up: Update) -> np.ndarray:
    """The lsq delta of the kept rows, with the weight's other pruned axes sliced too."""
    delta = up.weight
    for ax in range(delta.ndim):
        d = removal.analysis.space.index.get(("const", id(up.node), up.slot, ax))
        if ax != up.axis and d is not None:
            delta = np.delete(delta, removal.of_dim(d), axis=ax)
    return delta
