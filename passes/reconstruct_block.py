"""MLP blocks refitted as a whole (``--reconstruct block``): one-shot lsq, then gradient steps.

``lsq`` refits only the consumer of the removed neurons: a linear problem with a closed
form. In an MLP block (linear producers, an elementwise function of their outputs, the
consumer) the producers' kept neurons can move too, so that together they stand in for the
removed ones; that problem is non-linear. A plain MLP has one producer (``f(x W1 + b1)``),
a gated one (SwiGLU, GeGLU: ``a(x Wg + bg) * (x Wu + bu)``) two, read from the same input.
Here every consumer first gets its one-shot ``lsq`` refit; then, layer by layer in graph
order, each MLP block's producers (kept columns and biases) and consumer (kept rows and
bias) are refined by Adam steps on calibration tokens:

* input: the producer's input as the model pruned so far computes it (earlier blocks
  refined, every refit applied);
* target: the original consumer output, plus the drift of the residual stream the block
  adds into where it has one (``y + r − r̃``), so that the sum entering the next
  normalisation is the original's;
* the elementwise part is run by ONNX Runtime on the graph's own nodes and its partial
  derivatives are forward differences, one per producer, so any activation or gate (GELU
  as erf or tanh, SiLU, ReLU, a product of two branches...) works without a numpy copy;
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
from graphprune.progress import timed

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
#: Adam steps of STEP x the RMS of the layer's weight (so any weight scale), decayed to 0
#: over the epochs on a cosine. Measured on MiniLM's blocks (2,215 sentences): 6 epochs
#: reach a lower held-out error than 16 at a constant 2e-4 (0.805 / 0.858 of lsq's error
#: on layers 3 and 6, against 0.811 / 0.864), in 3/8 of the time
EPOCHS, BATCH, STEP = 6, 512, 0.04
MIN_STEPS = 100  # few calibration rows (a CNN's head sees one per image): more epochs


@dataclass
class Producer:
    """``z = x @ W + b``, one input of the block's elementwise part."""

    node: gs.Node  # MatMul or Gemm with a constant 2-D weight
    w: np.ndarray  # as (in, out)
    bias: np.ndarray  # the node's own bias plus any bias Add, zeros if none
    z: gs.Tensor


@dataclass
class MlpBlock:
    """``h = f(z_1, ..., z_k)``, each ``z_i = x @ W_i + b_i``, feeding the consumer
    (``h @ W2``)."""

    producers: list[Producer]  # in graph order, all reading the same x
    region: list[gs.Node]  # the elementwise nodes z_i -> h
    h: gs.Tensor
    w2: np.ndarray  # the consumer's weight as (in, out)
    own_bias: np.ndarray  # what the consumer itself adds (a Gemm's C), zeros if nothing
    residual: str | None  # the residual stream the consumer's output is added to

    @property
    def x(self) -> gs.Tensor:
        """The input every producer reads."""
        return self.producers[0].node.inputs[0]


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
    zs: dict[str, gs.Tensor] = {}
    todo, seen = [h], set()
    while todo:
        t = todo.pop()
        if t.name in seen:
            continue
        seen.add(t.name)
        if t is not h and _producer(t) is not None:
            zs[t.name] = t
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
    if not zs or not region:
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
    order = {id(n): k for k, n in enumerate(removal.analysis.graph.nodes)}
    removed = removal.of_dim(c.dim)
    producers = []
    for z in zs.values():
        if z.name in outputs or any(id(u) not in inside for u in z.outputs):
            return None
        found, w, bias = _producer(z)
        if w.shape[1] != c.dim.size or not np.array_equal(
            removal.removed(z, len(tensor_shape(z) or (0,)) - 1), removed
        ):
            return None
        producers.append(Producer(found, w, bias, z))
    producers.sort(key=lambda p: order[id(p.node)])
    if len({p.node.inputs[0].name for p in producers}) != 1:
        return None  # the branches read different inputs
    path = residual_path(node)
    residual = None
    if path is not None:
        add, cur, _ = path
        residual = next(i.name for i in add.inputs if i is not cur)
    region.sort(key=lambda n: order[id(n)])
    return MlpBlock(producers, region, h, *consumer, residual)


def _activation(block: MlpBlock, opset: list, dtype) -> callable:
    """``f([z_1, ..., z_k]) -> (h, [dh/dz_1, ..., dh/dz_k])`` on rows of the block's kept
    neurons, run by ONNX Runtime (each partial derivative a forward difference: as good a
    gradient as a central one, at k + 1 evaluations instead of 2k + 1)."""
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
    names = [p.z.name for p in block.producers]
    graph = helper.make_graph(
        nodes,
        "activation",
        [helper.make_tensor_value_info(name, elem, ["n", "m"]) for name in names],
        [helper.make_tensor_value_info(block.h.name, elem, ["n", "m"])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=opset)
    sess = session(model)

    def f(zs: list[np.ndarray]):
        eps = [(1e-3 * (1.0 + np.abs(z))).astype(z.dtype) for z in zs]
        feed = {
            name: np.concatenate([z] + [z + e if i == j else z for i in range(len(zs))]).astype(
                dtype, copy=False
            )
            for j, (name, z, e) in enumerate(zip(names, zs, eps, strict=True))
        }
        out = sess.run(None, feed)[0].astype(np.float32, copy=False)
        n = len(zs[0])
        h = out[:n]
        return h, [(out[(i + 1) * n : (i + 2) * n] - h) / e for i, e in enumerate(eps)]

    return f


class _Adam:
    """Adam with a step per parameter (``scales``, times the running ``step``)."""

    def __init__(self, params: list[np.ndarray], step: float, scales: list[float]):
        self.params, self.step, self.scales, self.t = params, step, scales, 0
        self.m = [np.zeros_like(p) for p in params]
        self.v = [np.zeros_like(p) for p in params]

    def update(self, grads: list[np.ndarray]) -> None:
        self.t += 1
        b1, b2 = 0.9, 0.999
        for p, g, m, v, scale in zip(self.params, grads, self.m, self.v, self.scales, strict=True):
            m *= b1
            m += (1 - b1) * g
            v *= b2
            v += (1 - b2) * g * g
            step = self.step * scale
            p -= step * (m / (1 - b1**self.t)) / (np.sqrt(v / (1 - b2**self.t)) + 1e-8)


def refine(x, target, params, f, epochs: int, step: float, batch: int = BATCH, seed: int = 0):
    """Adam on ``[W_1, b_1, ..., W_k, b_k, W2, b2]`` (float32, in place) so that
    ``f([x W_i + b_i]) W2 + b2`` matches ``target``: steps of ``step`` x the RMS of each
    layer's weight (for it and its bias), decayed on a cosine; returns (held-out MSE
    before, after). The held-out tenth of the rows picks the epoch whose parameters are
    kept (epoch 0: unchanged)."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(x))
    held = order[: max(len(x) // 10, 1)]
    train = order[len(held) :]
    k = len(params) // 2 - 1

    def forward(xb):
        return f([xb @ params[2 * i] + params[2 * i + 1] for i in range(k)])

    def held_error() -> float:
        h, _ = forward(x[held])
        w2, b2 = params[-2:]
        return float(np.mean(np.sum((h @ w2 + b2 - target[held]) ** 2, axis=1)))

    best = held_error()
    first, kept = best, [p.copy() for p in params]
    rms = [max(float(np.sqrt(np.mean(params[2 * i] ** 2))), 1e-6) for i in range(k + 1)]
    adam = _Adam(params, step, [r for r in rms for _ in (0, 1)])
    per_epoch = -(-len(train) // batch)
    if epochs:
        epochs = max(epochs, -(-MIN_STEPS // per_epoch))
    steps, done = epochs * per_epoch, 0
    for _ in range(epochs):
        rng.shuffle(train)
        for s in range(0, len(train), batch):
            adam.step = step * 0.5 * (1.0 + np.cos(np.pi * done / steps))
            done += 1
            rows = train[s : s + batch]
            xb = x[rows]
            h, dh = forward(xb)
            w2, b2 = params[-2:]
            g = (2.0 / len(rows)) * (h @ w2 + b2 - target[rows])
            gh = g @ w2.T
            grads = []
            for d in dh:
                gz = gh * d
                grads += [xb.T @ gz, gz.sum(0)]
            adam.update([*grads, h.T @ g, g.sum(0)])
        err = held_error()
        if err < best:
            best, kept = err, [p.copy() for p in params]
    for p, saved in zip(params, kept, strict=True):
        p[...] = saved
    return first, best


def capture_names(blocks: list[tuple]) -> tuple[list[str], list[str]]:
    """What a wave of ``(contraction, block, update)`` reads: in the model pruned so far,
    each producer's input and the residual stream; in the original, each consumer's output
    and the residual stream."""
    cur_names, orig_names = [], []
    for c, b, _up in blocks:
        extra = [b.residual] if b.residual else []
        cur_names += [b.x.name, *extra]
        orig_names += [c.node.outputs[0].name, *extra]
    return sorted(set(cur_names)), sorted(set(orig_names))


def block_updates(
    blocks: list[tuple],
    removal: Removal,
    original: onnx.ModelProto,
    earlier: list[Update],
    runs: tuple,
    times: dict,
) -> list[Update]:
    """Refine each ``(contraction, block, lsq update of the contraction)`` of one wave;
    the updates of the consumer (replacing lsq's) and of the producers. ``earlier``: the
    updates already made, a producer's own refit (as the consumer of an earlier layer's
    removed units) among them: refinement starts from it. ``runs``: the model pruned so
    far's run and the original's, giving ``capture_names(blocks)``. ``times`` gathers the
    seconds of the capture and of the refinement."""
    with timed(times, "capture"):
        cur, orig = capture_rows(runs, ROWS)
    opset = list(original.opset_import)
    out = []
    for c, b, up in blocks:
        kept = np.setdiff1d(np.arange(c.dim.size), removal.of_dim(c.dim))
        x_in = b.x
        gone = removal.removed(x_in, len(tensor_shape(x_in) or (0,)) - 1)
        rows = np.setdiff1d(np.arange(b.producers[0].w.shape[0]), gone)
        starts = [_start(p, earlier, removal) for p in b.producers]
        w2 = b.w2[kept]
        if up.weight is not None:
            w2 = w2 + np.moveaxis(up.weight, c.axis, 0)
        params = [
            *(
                a.astype(np.float32)
                for w_now, b_now in starts
                for a in (w_now[rows][:, kept], b_now[kept])
            ),
            w2.astype(np.float32),
            up.bias.astype(np.float32),
        ]
        target = orig[c.node.outputs[0].name] - b.own_bias.astype(np.float32)
        if b.residual:
            target = target + orig[b.residual] - cur[b.residual]
        x = np.ascontiguousarray(cur[x_in.name][:, rows])
        with timed(times, "refine"):
            f = _activation(b, opset, b.producers[0].z.dtype or np.float32)
            before, after = refine(x, target, params, f, EPOCHS, STEP)
        log.info("block: %s held-out error %.4g -> %.4g", c.node.name, before, after)
        fitted = [p.astype(np.float64) for p in params]
        for i, (p, (w_now, b_now)) in enumerate(zip(b.producers, starts, strict=True)):
            d = np.zeros((len(rows), c.dim.size))
            d[:, kept] = fitted[2 * i] - w_now[rows][:, kept]
            db = np.zeros(c.dim.size)
            db[kept] = fitted[2 * i + 1] - b_now[kept]
            axis = _in_axis(p.node)
            out.append(Update(p.node, 1, axis, db, d.T if axis else d))
        w2_new, b2 = fitted[-2:]
        out.append(Update(c.node, c.slot, c.axis, b2, np.moveaxis(w2_new - b.w2[kept], 0, c.axis)))
    return out


def _start(p: Producer, earlier: list[Update], removal: Removal) -> tuple:
    """A producer's weight (as (in, out)) and bias with its own earlier refit applied (as
    the consumer of an earlier layer's removed units)."""
    w_now, b_now = p.w.copy(), p.bias.copy()
    axis = _in_axis(p.node)
    for e in earlier:
        if e.node is p.node:
            if e.weight is not None:
                delta = full_delta(e, removal)
                w_now += delta.T if axis else delta
            b_now += e.bias
    return w_now, b_now
