"""Reconstruction of the consumers of removed units, from calibration statistics.

``bias`` (FLAP): a removed input j fed its consumer ``W[j] * X_j``; on average that is
``W[j] * E[X_j]``, folded into the consumer's bias (added where it has none).
``lsq``: the removed inputs are regressed on the kept ones (affine, damped):
``X_R ≈ A X_K + c`` with ``A = Σ_RK Σ_KK⁻¹``, ``c = μ_R − A μ_K``; the consumer then computes
``X_K (W_K + Aᵀ W_R) + (b + c W_R)``, the least-squares best it can do without X_R. With
``A = 0`` this is ``bias``. Updates are computed from the original weights before slicing
and applied after it (entries of channels pruned themselves are dropped), so
mask-equivalence can be checked first on the plain pruned model.

lsq's statistics are captured after the plan, for the consumers it refits only, and only
the Gram rows of their kept inputs (Σ_KK and Σ_KR are all the solve reads): in chunks of
layers that fit a memory budget, each captured, fitted and freed before the next
(``lsq_updates``).
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from graphprune.calibration import (
    Activations,
    capture_chunks,
    chunk_budget,
    chunks,
    layer_order,
    target_costs,
)
from graphprune.importance import calibration_targets

from .removal import Removal

log = logging.getLogger(__name__)
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


def regression(sigma_kk, sigma_kx, mean_k, mean_x, kept, damping: float, overwrite=False):
    """``X ≈ Aᵀ X̃_K + c``: every original input channel regressed (affine, ridge) on the kept
    channels the pruned model provides. The ridge pulls A toward "each kept channel stands
    for itself", so where X̃ = X a kept channel maps exactly to itself (A = I on K) whatever
    the damping, and only the removed channels are estimated. ``overwrite``: the inputs are
    temporaries of the caller's, used as the solve's operands (a k x n float64 less)."""
    k = len(kept)
    lam = damping * max(float(np.mean(np.diag(sigma_kk))), 1e-12)
    lhs, rhs = (sigma_kk, sigma_kx) if overwrite else (sigma_kk.copy(), sigma_kx.copy())
    # no k x n prior matrix: the prior is lam on (K, K)
    lhs[np.arange(k), np.arange(k)] += lam
    rhs[np.arange(k), kept] += lam
    a = np.linalg.solve(lhs, rhs)
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
        # held until applied, for every consumer: at the weight's precision, float32 at least
        # (the float64 deltas of a 1 B model's consumers alone were 1.3 GB)
        held = np.result_type(c.node.inputs[c.slot].values.dtype, np.float32)
        weight = np.moveaxis(delta.astype(held, copy=False), 0, c.axis)
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


def _refits(removal: Removal, width: bool) -> dict[tuple[str, int], list]:
    """The contractions lsq refits, by the activation they read: those that lose some of
    their inputs, at the targets the criteria's statistics cover."""
    allowed = set(calibration_targets(removal.analysis, width))
    out: dict[tuple[str, int], list] = {}
    for c in removal.analysis.contractions:
        t = (c.act.tensor, c.act.axis) if c.act is not None else None
        if t in allowed and refittable(c, removal):
            out.setdefault(t, []).append(c)
    return out


def _kept(c, removal: Removal) -> np.ndarray:
    return np.setdiff1d(np.arange(c.dim.size), removal.of_dim(c.dim))


def lsq_fit(c, st, rows: np.ndarray, removal: Removal, damping: float) -> Update:
    """One consumer's lsq update from its input's moments and the Gram rows ``rows`` (its
    kept inputs, or a superset): ``A`` reads only Σ[K, :] (Σ_KK and Σ_KR)."""
    kept = _kept(c, removal)
    cov = st.gram[np.searchsorted(rows, kept)].astype(np.float64) / st.count
    cov -= np.outer(st.mean[kept], st.mean)
    a, shift = regression(cov[:, kept], cov, st.mean[kept], st.mean, kept, damping, True)
    del cov
    return make_update(c, kept, a, shift)


def lsq_updates(
    removal: Removal,
    model,
    feeds: list[dict],
    damping: float = DAMPING,
    width: bool = False,
    budget: int | None = None,
    acts=None,
) -> list[Update]:
    """lsq's updates with the Gram rows streamed: the consumers that lose units are taken
    in layer order in chunks that fit ``budget`` (``calibration.chunk_budget``); each
    chunk's kept rows are captured in one pass over the batches, fitted, and dropped before
    the next chunk is captured. Where ``acts`` (the criterion's statistics, of the same
    model and batches) already hold an input's whole Gram matrix (``obs``), it is read
    instead of captured again."""
    refits = _refits(removal, width)
    if not refits or not feeds:
        return []
    fitted: dict[int, Update] = {}
    for t in list(refits):
        st = acts.get(*t) if acts is not None else None
        if st is not None and st.gram is not None and st.gram.shape == (len(st.mean),) * 2:
            for c in refits.pop(t):
                fitted[id(c)] = lsq_fit(c, st, np.arange(len(st.mean)), removal, damping)
    if fitted:
        log.info("lsq: %d consumers fitted from the criterion's Gram matrices", len(fitted))
    if refits:
        fitted.update(_fit_streamed(refits, removal, model, feeds, damping, budget))
    return [fitted[id(c)] for c in removal.analysis.contractions if id(c) in fitted]


def _fit_streamed(refits, removal, model, feeds, damping, budget) -> dict[int, Update]:
    """lsq fits of ``refits`` from their kept Gram rows, captured a chunk at a time."""
    rows = {
        t: np.unique(np.concatenate([_kept(c, removal) for c in cs])) for t, cs in refits.items()
    }
    order = layer_order(model, refits)
    costs = target_costs(model, feeds, order, gram=rows)
    plan = chunks(order, costs, chunk_budget() if budget is None else budget)
    fitted, done = {}, 0
    for chunk, captured in capture_chunks(model, feeds, plan, gram=rows):
        for t in chunk:
            st = captured.get(*t)
            for c in refits[t]:
                fitted[id(c)] = lsq_fit(c, st, rows[t], removal, damping)
        done += len(chunk)
        log.info("lsq: %d/%d inputs fitted (%d chunks)", done, len(order), len(plan))
        del captured
    return fitted


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
