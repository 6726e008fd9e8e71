"""MLP blocks refitted as a whole (``--reconstruct block``): one-shot lsq, then gradient steps.

``lsq`` refits only the consumer of the removed neurons: a linear problem with a closed
form. In an MLP block (a linear producer, an elementwise activation, the consumer) the
producer's kept neurons can move too, so that together they stand in for the removed ones;
that problem is non-linear. Here every consumer first gets its one-shot ``lsq`` refit; then,
layer by layer in graph order, each MLP block's producer (kept columns and bias) and
consumer (kept rows and bias) are refined by Adam steps on calibration tokens:

* input: the producer's input as the model pruned so far computes it (earlier blocks
  refined, every refit applied);
* target: the original consumer output, plus the drift of the residual stream the block
  adds into where it has one (``y + r − r̃``), so that the sum entering the next
  normalisation is the original's;
* the activation is run by ONNX Runtime on the graph's own nodes and its derivative is a
  central difference, so any elementwise activation (GELU as erf or tanh, SiLU, ReLU...)
  works without a numpy copy of it;
* a tenth of the tokens is held out, and the parameters with the lowest held-out error
  are kept, the lsq fit among them: the refinement never makes a block fit worse on tokens
  it was not trained on.

Starting from one-shot lsq rather than lsq-seq is measured: on MiniLM lsq-seq's kept
weights are attenuated by its noisy inputs (see the README), and the block refinement
started from them stayed below one-shot lsq.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import helper, numpy_helper

from graphprune.analysis.context import tensor_shape
from graphprune.calibration import capture_rows, session
from graphprune.depth import residual_path

from .reconstruct import Update, full_delta
from .removal import Removal

log = logging.getLogger(__name__)

#: ops whose output element depends only on the same element of each input
ELEMENTWISE = {
    "Add", "Sub", "Mul", "Div", "Pow", "Erf", "Tanh", "Sigmoid", "Relu", "LeakyRelu", "Elu",
    "Selu", "Gelu", "FastGelu", "Softplus", "HardSigmoid", "HardSwish", "Neg", "Exp", "Sqrt",
    "Abs", "Clip", "Mish", "Identity",
}  # fmt: skip
ROWS = 65536  # calibration tokens kept per block (spread over every batch)
EPOCHS, BATCH, STEP = 16, 512, 2e-4


@dataclass
class MlpBlock:
    """``h = f(x @ W1 + b1)`` feeding the consumer (``h @ W2``)."""

    producer: gs.Node  # MatMul or Gemm with a constant 2-D weight
    w1: np.ndarray  # as (in, out)
    bias: np.ndarray  # b1: the producer's own bias plus any bias Add, zeros if none
    z: gs.Tensor  # x @ W1 + b1
    region: list[gs.Node]  # the elementwise nodes z -> h
    h: gs.Tensor
    w2: np.ndarray  # the consumer's weight as (in, out)
    own_bias: np.ndarray  # what the consumer itself adds (a Gemm's C), zeros if nothing
    residual: str | None  # the residual stream the consumer's output is added to


def _linear(node: gs.Node):
    """``(W as (in, out), bias)`` of a MatMul or a Gemm (alpha 1, A not transposed) with a
    constant 2-D weight, or None."""
    w = node.inputs[1] if len(node.inputs) > 1 else None
    if not isinstance(w, gs.Constant) or w.values.ndim != 2:
        return None
    values = np.asarray(w.values, np.float64)
    if node.op == "MatMul" and len(node.inputs) == 2:
        return values, np.zeros(values.shape[1])
    if node.op != "Gemm" or float(node.attrs.get("alpha", 1.0)) != 1.0 or node.attrs.get("transA"):
        return None
    values = values.T if node.attrs.get("transB") else values
    bias = np.zeros(values.shape[1])
    if len(node.inputs) > 2 and node.inputs[2].name:
        c = node.inputs[2]
        if not isinstance(c, gs.Constant) or c.values.size not in (1, values.shape[1]):
            return None
        bias += float(node.attrs.get("beta", 1.0)) * np.asarray(c.values, np.float64).reshape(-1)
    return values, bias


def _in_axis(node: gs.Node) -> int:
    """The contracted axis of the node's weight (input 1)."""
    return 1 if node.op == "Gemm" and node.attrs.get("transB") else 0


def _producer(t: gs.Tensor):
    """``(node, W1 as (in, out), b1)`` if ``t`` is ``x @ W1 + b1`` with constants."""
    if not t.inputs:
        return None
    node, extra = t.inputs[0], 0.0
    if node.op == "Add":
        consts = [i for i in node.inputs if isinstance(i, gs.Constant)]
        others = [i for i in node.inputs if not isinstance(i, gs.Constant)]
        if len(consts) != 1 or len(others) != 1 or not others[0].inputs:
            return None
        if (
            len(others[0].outputs) != 1
            or consts[0].values.ndim > 1
            and consts[0].values.shape[:-1] != (1,) * (consts[0].values.ndim - 1)
        ):
            return None
        extra, node = np.asarray(consts[0].values, np.float64).reshape(-1), others[0].inputs[0]
    lin = _linear(node)
    if lin is None or np.size(extra) not in (1, lin[0].shape[1]):
        return None
    return node, lin[0], lin[1] + extra


def find_block(c, removal: Removal) -> MlpBlock | None:
    """The MLP block around contraction ``c`` (a MatMul or Gemm consumer), or None."""
    node = c.node
    consumer = _linear(node)
    if consumer is None or c.slot != 1 or c.axis != _in_axis(node):
        return None
    h = node.inputs[0]
    region: list[gs.Node] = []
    z = None
    todo, seen = [h], set()
    while todo:
        t = todo.pop()
        if t.name in seen:
            continue
        seen.add(t.name)
        found = _producer(t)
        if found is not None and t is not h:
            if z is not None and z is not t:
                return None  # two producers (e.g. a gated MLP): not handled here
            z = t
            continue
        if (
            not t.inputs
            or t.inputs[0].op not in ELEMENTWISE
            or (t.inputs[0].domain or "") not in ("", "com.microsoft")
        ):
            return None
        n = t.inputs[0]
        for i in n.inputs:
            if isinstance(i, gs.Constant):
                if i.values.size != 1:
                    return None
            elif i.name:
                todo.append(i)
        region.append(n)
    if z is None or not region:
        return None
    inside = {id(n) for n in region}
    outputs = {t.name for t in removal.analysis.graph.outputs}
    for n in region:  # nothing inside leaks out, except h into the consumer
        for o in n.outputs:
            users = [u for u in o.outputs if id(u) not in inside]
            if (
                o.name in outputs
                or any(u is not node for u in users if o is h)
                or (users and o is not h)
            ):
                return None
    if z.name in outputs or any(id(u) not in inside for u in z.outputs):
        return None
    producer, w1, bias = _producer(z)
    width = w1.shape[1]
    removed = removal.of_dim(c.dim)
    if (
        not np.array_equal(removal.removed(z, len(tensor_shape(z) or (0,)) - 1), removed)
        or width != c.dim.size
    ):
        return None
    path = residual_path(node)
    residual = None
    if path is not None:
        add, cur, _ = path
        residual = next(i.name for i in add.inputs if i is not cur)
    order = {id(n): k for k, n in enumerate(removal.analysis.graph.nodes)}
    region.sort(key=lambda n: order[id(n)])
    return MlpBlock(producer, w1, bias, z, region, h, *consumer, residual)


def _activation(block: MlpBlock, opset: list, dtype) -> callable:
    """``f(z) -> (h, dh/dz)`` on rows of the block's kept neurons, run by ONNX Runtime."""
    inits, seen = [], set()
    for n in block.region:
        for i in n.inputs:
            if isinstance(i, gs.Constant) and i.name not in seen:
                seen.add(i.name)
                inits.append(numpy_helper.from_array(np.asarray(i.values), i.name))
    nodes = [
        helper.make_node(
            n.op,
            [i.name for i in n.inputs],
            [o.name for o in n.outputs],
            domain=n.domain or "",
            **n.attrs,
        )
        for n in block.region
    ]
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    graph = helper.make_graph(
        nodes,
        "activation",
        [helper.make_tensor_value_info(block.z.name, elem, ["n", "m"])],
        [helper.make_tensor_value_info(block.h.name, elem, ["n", "m"])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=opset)
    sess = session(model)

    def f(z: np.ndarray):
        eps = (1e-3 * (1.0 + np.abs(z))).astype(z.dtype)
        both = np.concatenate([z, z + eps, z - eps]).astype(dtype)
        out = sess.run(None, {block.z.name: both})[0].astype(np.float32)
        n = len(z)
        return out[:n], (out[n : 2 * n] - out[2 * n :]) / (2 * eps)

    return f


class _Adam:
    def __init__(self, params: list[np.ndarray], step: float):
        self.params, self.step, self.t = params, step, 0
        self.m = [np.zeros_like(p) for p in params]
        self.v = [np.zeros_like(p) for p in params]

    def update(self, grads: list[np.ndarray]) -> None:
        self.t += 1
        b1, b2 = 0.9, 0.999
        for p, g, m, v in zip(self.params, grads, self.m, self.v, strict=True):
            m *= b1
            m += (1 - b1) * g
            v *= b2
            v += (1 - b2) * g * g
            p -= self.step * (m / (1 - b1**self.t)) / (np.sqrt(v / (1 - b2**self.t)) + 1e-8)


def refine(x, target, params, f, epochs: int, step: float, batch: int = BATCH, seed: int = 0):
    """Adam on ``[W1, b1, W2, b2]`` (float32, in place) so that ``f(x W1 + b1) W2 + b2``
    matches ``target``; returns (held-out MSE before, after). The held-out tenth of the
    rows picks the epoch whose parameters are kept (epoch 0: unchanged)."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(x))
    held = order[: max(len(x) // 10, 1)]
    train = order[len(held) :]

    def held_error() -> float:
        w1, b1, w2, b2 = params
        h, _ = f(x[held] @ w1 + b1)
        return float(np.mean(np.sum((h @ w2 + b2 - target[held]) ** 2, axis=1)))

    best = held_error()
    first, kept = best, [p.copy() for p in params]
    adam = _Adam(params, step)
    for _ in range(epochs):
        rng.shuffle(train)
        for s in range(0, len(train), batch):
            rows = train[s : s + batch]
            xb = x[rows]
            w1, b1, w2, b2 = params
            h, dh = f(xb @ w1 + b1)
            g = (2.0 / len(rows)) * (h @ w2 + b2 - target[rows])
            gz = (g @ w2.T) * dh
            adam.update([xb.T @ gz, gz.sum(0), h.T @ g, g.sum(0)])
        err = held_error()
        if err < best:
            best, kept = err, [p.copy() for p in params]
    for p, k in zip(params, kept, strict=True):
        p[...] = k
    return first, best


def block_updates(
    blocks: list[tuple],
    removal: Removal,
    current: onnx.ModelProto,
    original: onnx.ModelProto,
    feeds: list[dict],
    earlier: list[Update],
) -> list[Update]:
    """Refine each ``(contraction, block, lsq update of the contraction)`` of one wave;
    the updates of the consumer (replacing lsq's) and of the producer. ``earlier``: the
    updates already made, a producer's own refit (as the consumer of an earlier layer's
    removed units) among them: refinement starts from it."""
    cur_names, orig_names = [], []
    for c, b, _up in blocks:
        extra = [b.residual] if b.residual else []
        cur_names += [b.producer.inputs[0].name, *extra]
        orig_names += [c.node.outputs[0].name, *extra]
    cur, orig = capture_rows(
        current, original, feeds, (sorted(set(cur_names)), sorted(set(orig_names))), ROWS
    )
    opset = list(original.opset_import)
    out = []
    for c, b, up in blocks:
        kept = np.setdiff1d(np.arange(c.dim.size), removal.of_dim(c.dim))
        x_name = b.producer.inputs[0].name
        x_in = b.producer.inputs[0]
        gone = removal.removed(x_in, len(tensor_shape(x_in) or (0,)) - 1)
        rows = np.setdiff1d(np.arange(b.w1.shape[0]), gone)
        w1_now, b1_now = b.w1.copy(), b.bias.copy()
        axis = _in_axis(b.producer)
        for e in earlier:
            if e.node is b.producer:
                delta = full_delta(e, removal) if e.weight is not None else 0.0
                w1_now += delta.T if axis and e.weight is not None else delta
                b1_now += e.bias
        w2 = b.w2[kept]
        if up.weight is not None:
            w2 = w2 + np.moveaxis(up.weight, c.axis, 0)
        params = [
            w1_now[rows][:, kept].astype(np.float32),
            b1_now[kept].astype(np.float32),
            w2.astype(np.float32),
            up.bias.astype(np.float32),
        ]
        target = orig[c.node.outputs[0].name] - b.own_bias.astype(np.float32)
        if b.residual:
            target = target + orig[b.residual] - cur[b.residual]
        dtype = b.z.dtype or np.float32
        x = np.ascontiguousarray(cur[x_name][:, rows])
        before, after = refine(x, target, params, _activation(b, opset, dtype), EPOCHS, STEP)
        log.info("block: %s held-out error %.4g -> %.4g", c.node.name, before, after)
        w1, b1, w2_new, b2 = (p.astype(np.float64) for p in params)
        d1 = np.zeros((len(rows), c.dim.size))
        d1[:, kept] = w1 - w1_now[rows][:, kept]
        db1 = np.zeros(c.dim.size)
        db1[kept] = b1 - b1_now[kept]
        out.append(Update(b.producer, 1, axis, db1, d1.T if axis else d1))
        out.append(Update(c.node, c.slot, c.axis, b2, np.moveaxis(w2_new - b.w2[kept], 0, c.axis)))
    return out
