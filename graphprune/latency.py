"""A latency model measured in ONNX Runtime on this machine (``--target-speedup``,
``--target-latency``) and the channel multiple its kernels run fastest at
(``--round-to auto``).

Design (chosen by measuring): the model is pruned *uniformly* to a few widths (every free
group keeps 100/75/50/25% of its units, through the real removal → refold → slice → export
passes), each width is run in ORT (the session options ``graphprune.bench`` times with:
full graph optimisations, ``threads`` intra-op threads, sequential) with ORT's own profiler
on, interleaved round by round with an unprofiled session of the same width for the wall
time. ORT fuses and re-lays out the graph (Conv+BN+ReLU → one NCHWc Conv named after the
ReLU's output), so each profiled kernel is mapped back to an *anchor* node of the original
graph: the node of that name, or the producer of that tensor, walked back to the nearest
node with MAC terms when the kernel is a fused one. Each anchor's time is a curve of one
feature of a candidate, on the same terms as ``CostModel``:

- ``macs``: the anchor's MACs kept (its terms priced by the kept fractions of their dims);
- ``act``: the elements of its output kept (pooling, reshapes, an unfused elementwise op);
- ``rest``: the kernels no node accounts for (layout reorders) and the session overhead
  (the unprofiled wall time less every anchor's kernel time), by the whole model's MACs kept.

A curve is piecewise linear through its measured points, made monotone (pool adjacent
violators), from the least-squares intercept at a feature just above 0 (a fixed per-kernel
overhead) to the value at 1; a feature of exactly 0 (the node is gone) costs nothing. The
predicted latency of a candidate is the sum of the curves, so it is monotone in every
group's width, and at the uniform widths measured it reproduces the measured wall time.
Timing a node alone as a one-node model was rejected: it loses the fusions and layouts ORT
applies to the whole graph, which are much of what a pruned width changes.

Cost: four exports and about 7–25 profiled rounds of them (a few seconds for the zoo's
ResNet-50 at 1 thread); the result is cached as JSON (``cache_dir()``) under the sha256 of
the model's bytes, the input shapes, the thread count, the CPU model (/proc/cpuinfo), the
onnxruntime version, ``VERSION`` and the sampling (round-to, min-keep, exclude, gqa), so a
second prune of the same model is instant and gives the same plan.

``--round-to auto``: the most expensive Conv (group 1) or constant-weight MatMul/Gemm of the
model is timed alone (a one-node model, as ORT fuses nothing around it) with its in and out
channels both set to each width ``w-32 .. w``; each width's time (the minimum over rounds)
over a least-squares trend ``a + b·w²`` gives a residual, and the chosen multiple is the
smallest of 1, 2, 4, 8, 16, 32 whose widths' mean residual is within 3% of the best
multiple's (MLAS's packed and NCHWc kernels make multiples of their block faster than the
trend; with no such effect every multiple ties and 1 wins). Cached like the latency model.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from .bench import timing_session
from .progress import advance, stage

log = logging.getLogger("graphprune")

VERSION = 1  # bump when what is measured or how it is fitted changes
SAMPLE_KEEPS = (1.0, 0.75, 0.5, 0.25)
ROUND_TO_CHOICES = (1, 2, 4, 8, 16, 32)
ROUND_TO_TOLERANCE = 0.03

#: ORT kernels that do a MAC node's work (fused: named after a later node's output)
_MAC_KERNELS = {
    "Conv",
    "FusedConv",
    "NchwcConv",
    "ConvTranspose",
    "Gemm",
    "FusedGemm",
    "MatMul",
    "FusedMatMul",
    "Attention",
    "MultiHeadAttention",
    "LSTM",
    "GRU",
    "RNN",
}


# -- cache --------------------------------------------------------------------------------
def cache_dir() -> Path:
    """``$GRAPHPRUNE_CACHE/latency``, else ``~/.cache/graphprune/latency``."""
    root = os.environ.get("GRAPHPRUNE_CACHE")
    base = Path(root) if root else Path.home() / ".cache" / "graphprune"
    return base / "latency"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def model_key(model: onnx.ModelProto, shapes: dict, threads: int) -> dict:
    """What a measurement depends on (the cache key's fields)."""
    digest = hashlib.sha256(model.SerializeToString(deterministic=True)).hexdigest()
    return {
        "model_sha256": digest,
        "input_shapes": {n: list(map(int, s)) for n, s in sorted(shapes.items())},
        "threads": int(threads),
        "cpu": cpu_name(),
        "onnxruntime": ort.__version__,
        "graphprune_latency": VERSION,
    }


def _key_hash(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]


def _load(path: Path, key: dict) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("key") != key:
        return None
    return data


def _save(path: Path, data: dict) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except OSError as e:  # a read-only home: measured again next time
        log.warning("latency cache not written (%s)", e)


# -- sessions and timing ------------------------------------------------------------------
def _feed(model: onnx.ModelProto, sess, shapes: dict, seed: int = 0) -> dict:
    from .validate import random_feed

    return random_feed(model, sess, shapes, np.random.default_rng(seed))


def _kernel_times(profile: str) -> dict[str, tuple[str, float]]:
    """Kernel name -> (op, median ms over the profiled runs)."""
    events = json.loads(Path(profile).read_text())
    durations: dict[str, list[float]] = {}
    ops: dict[str, str] = {}
    for e in events:
        name = e.get("name", "")
        if e.get("cat") == "Node" and name.endswith("_kernel_time"):
            durations.setdefault(name[: -len("_kernel_time")], []).append(e["dur"] / 1e3)
            ops[name[: -len("_kernel_time")]] = e.get("args", {}).get("op_name", "")
    return {k: (ops[k], float(np.median(v))) for k, v in durations.items()}


def measure_samples(models: list[onnx.ModelProto], shapes: dict, threads: int):
    """Per model: the kernel times (profiled) and the median wall time (unprofiled), run
    interleaved round by round. Returns ``[(wall_ms, {kernel: (op, ms)}), ...]``."""
    out = []
    with tempfile.TemporaryDirectory(prefix="graphprune-latency-") as tmp:
        plain = [timing_session(m, threads) for m in models]
        profiled = [timing_session(m, threads, tmp) for m in models]
        feeds = [_feed(m, s, shapes) for m, s in zip(models, plain, strict=True)]
        for s, p, f in zip(plain, profiled, feeds, strict=True):
            for _ in range(2):
                s.run(None, f)
                p.run(None, f)
        walls: list[list[float]] = [[] for _ in models]
        start, rounds = time.perf_counter(), 0
        min_rounds, max_rounds, max_s = 7, 25, 4.0
        while rounds < min_rounds or (
            rounds < max_rounds and time.perf_counter() - start < max_s
        ):
            for i, (s, p, f) in enumerate(zip(plain, profiled, feeds, strict=True)):
                t0 = time.perf_counter()
                s.run(None, f)
                walls[i].append((time.perf_counter() - t0) * 1e3)
                p.run(None, f)
            rounds += 1
            advance("latency model", min(rounds, min_rounds), min_rounds)
        for w, p in zip(walls, profiled, strict=True):
            out.append((float(np.median(w)), _kernel_times(p.end_profiling())))
    return out


# -- the model ----------------------------------------------------------------------------
def _pav(y: np.ndarray) -> np.ndarray:
    """Pool adjacent violators: the closest non-decreasing sequence (least squares)."""
    blocks = [[float(v), 1] for v in y]
    i = 0
    while i < len(blocks) - 1:
        if blocks[i][0] > blocks[i + 1][0]:
            a, b = blocks[i], blocks[i + 1]
            blocks[i] = [(a[0] * a[1] + b[0] * b[1]) / (a[1] + b[1]), a[1] + b[1]]
            del blocks[i + 1]
            i = max(i - 1, 0)
        else:
            i += 1
    return np.concatenate([[v] * n for v, n in blocks]) if blocks else np.zeros(0)


@dataclass
class Curve:
    """One anchor's time (ms) as a function of its feature (a kept fraction in [0, 1])."""

    anchor: str  # the anchor node's first output ("" for the rest)
    kind: str  # "macs" | "act" | "rest"
    points: list[list[float]]  # [[feature, ms], ...], as measured
    xs: np.ndarray = field(init=False, repr=False)
    ys: np.ndarray = field(init=False, repr=False)

    def __post_init__(self):
        by_f: dict[float, list[float]] = {}
        for f, t in self.points:  # equal features (a node nothing prunes): their mean
            by_f.setdefault(round(float(f), 9), []).append(float(t))
        xs = sorted(by_f)
        ys = [float(np.mean(by_f[f])) for f in xs]
        x, y = np.array(xs), _pav(np.array(ys))
        if self.kind != "rest" and len(x) and x[0] > 0:
            if len(x) > 1:  # the fixed part: the straight-line fit's intercept
                slope, icept = np.polyfit(x, y, 1)
                icept = float(np.clip(icept, 0.0, y[0]))
            else:
                icept = float(y[0])
            x, y = np.concatenate([[1e-9], x]), np.concatenate([[icept], y])
        self.xs, self.ys = x, y

    def at(self, f: float) -> float:
        if self.kind != "rest" and f <= 0:
            return 0.0
        return float(np.interp(f, self.xs, self.ys))

    def to_dict(self) -> dict:
        return {"anchor": self.anchor, "kind": self.kind, "points": self.points}


@dataclass
class LatencyModel:
    curves: list[Curve]
    threads: int
    samples: list[dict]  # per uniform width: keep, wall_ms, kernels
    key: dict

    def to_dict(self) -> dict:
        return {
            "key": self.key,
            "threads": self.threads,
            "samples": self.samples,
            "curves": [c.to_dict() for c in self.curves],
        }

    @classmethod
    def from_dict(cls, data: dict) -> LatencyModel:
        curves = [Curve(c["anchor"], c["kind"], c["points"]) for c in data["curves"]]
        return cls(curves, int(data["threads"]), data["samples"], data["key"])

    def bind(self, analysis, cost=None) -> BoundLatency:
        return BoundLatency(self, analysis, cost)


class Features:
    """Each anchor's feature of a candidate, from the kept fractions of the space's dims."""

    def __init__(self, analysis, cost=None):
        from .cost import CostModel

        self.analysis = analysis
        self.cost = cost or CostModel(analysis)
        self.total = sum(c for c, _ in self.cost.macs_terms) or 1.0
        self.act_dims: dict[str, list[int]] = {}
        self.producer: dict[str, object] = {}
        self.by_name: dict[str, object] = {}
        for node in analysis.graph.nodes:
            if node.name:
                self.by_name[node.name] = node
            for t in node.outputs:
                self.producer[t.name] = node

    def anchor(self, kernel: str, op: str) -> tuple[str, str]:
        """(anchor, kind) of a profiled kernel."""
        node = self.by_name.get(kernel)
        if node is None:
            stem = kernel[: -len("_nchwc")] if kernel.endswith("_nchwc") else kernel
            node = self.producer.get(stem)
        if node is None or not node.outputs:
            return "", "rest"
        if op in _MAC_KERNELS:
            seen = 0
            while node.outputs[0].name not in self.cost.node_terms and seen < 8:
                prev = next(
                    (self.producer[t.name] for t in node.inputs if t.name in self.producer),
                    None,
                )
                if prev is None:
                    break
                node, seen = prev, seen + 1
        name = node.outputs[0].name
        return name, "macs" if name in self.cost.node_terms else "act"

    def dims_of(self, tensor: str) -> list[int]:
        dims = self.act_dims.get(tensor)
        if dims is None:
            dims = []
            index = self.analysis.space.index
            for axis in range(8):
                d = index.get(("act", tensor, axis))
                if d is not None:
                    dims.append(d.id)
            self.act_dims[tensor] = dims
        return dims

    def value(self, anchor: str, kind: str, kept: np.ndarray) -> float:
        if kind == "macs" and anchor in self.cost.node_terms:
            terms = self.cost.node_terms[anchor]
            full = sum(c for c, _ in terms)
            return sum(c * float(np.prod(kept[d])) for c, d in terms) / full if full else 1.0
        if kind == "act" and anchor in self.producer:
            return float(np.prod(kept[self.dims_of(anchor)]))
        return self.global_value(kept)

    def global_value(self, kept: np.ndarray) -> float:
        return sum(c * float(np.prod(kept[d])) for c, d in self.cost.macs_terms) / self.total


class BoundLatency:
    """A latency model on one analysis: ``predict(kept)`` in ms."""

    def __init__(self, model: LatencyModel, analysis, cost=None):
        self.model = model
        self.features = Features(analysis, cost)
        self.threads = model.threads
        self.full = self.predict(np.ones(len(analysis.space.dims)))

    def predict(self, kept: np.ndarray) -> float:
        g = None  # the whole model's MACs kept, for the rest (and an anchor not found)
        total = 0.0
        for c in self.model.curves:
            if c.kind == "rest" or c.anchor not in self.features.producer:
                g = self.features.global_value(kept) if g is None else g
                total += c.at(g)
            else:
                total += c.at(self.features.value(c.anchor, c.kind, kept))
        return max(total, 1e-6)

    def predict_labels(self, labels_removed: np.ndarray) -> float:
        return self.predict(self.features.cost.kept_fractions(labels_removed))


def _fit(features: Features, keeps: list[float], kept_per_sample: list[np.ndarray], measured):
    """Curves from the measured samples: each anchor's kernel time at each sample (0 where
    it ran inside another kernel there), and the rest (wall time less every anchor)."""
    sums: list[dict[tuple[str, str], float]] = []
    for _, kernels in measured:
        per: dict[tuple[str, str], float] = {}
        for kernel, (op, ms) in sorted(kernels.items()):
            key = features.anchor(kernel, op)
            if key[1] != "rest":
                per[key] = per.get(key, 0.0) + ms
        sums.append(per)
    anchors = sorted({k for per in sums for k in per})
    curves = []
    for key in anchors:
        pts = [
            [round(features.value(*key, kept), 9), round(per.get(key, 0.0), 6)]
            for kept, per in zip(kept_per_sample, sums, strict=True)
        ]
        curves.append(Curve(key[0], key[1], pts))
    rest = [
        [round(features.global_value(kept), 9), round(wall - sum(per.values()), 6)]
        for kept, per, (wall, _) in zip(kept_per_sample, sums, measured, strict=True)
    ]
    curves.append(Curve("", "rest", rest))
    samples = [
        {
            "keep": keep,
            "wall_ms": round(wall, 6),
            "kernel_ms": round(sum(ms for _, ms in kernels.values()), 6),
        }
        for keep, (wall, kernels) in zip(keeps, measured, strict=True)
    ]
    return curves, samples


def _uniform_models(model, analysis, allocator, keeps, opset: int):
    """The model pruned uniformly to each keep (free groups only), exported, and the kept
    fractions of every dim of ``analysis`` at each."""
    from graphprune.passes.base import PassContext, PassManager
    from graphprune.passes.export import Export
    from graphprune.passes.refold_counts import RefoldCounts
    from graphprune.passes.removal import ComputeRemoval
    from graphprune.passes.slice_constants import SliceConstants

    from .allocate import n_remove
    from .analysis.groups import analyze
    from .graph import import_graph
    from .plan import GroupPlan, Plan

    o = allocator.opts
    models, kept = [], []
    for i, keep in enumerate(keeps):
        counts = {
            g.id: n_remove(g.units, 1.0 - keep, o.round_to, o.min_keep) for g in allocator.free
        }
        counts = {k: v for k, v in counts.items() if v}
        removed = allocator.removed(counts)
        plan = Plan(criterion=o.criterion, gqa=o.gqa)
        for gid, units in removed.items():
            g = analysis.groups[gid]
            plan.groups.append(GroupPlan(g.key, g.kind, g.units, [int(u) for u in units]))
        labels = [analysis.groups[gid].unit_labels[u] for gid, u in removed.items()]
        flat = np.concatenate(labels) if labels else np.zeros(0, int)
        kept.append(allocator.cost_model().kept_fractions(flat))
        graph = import_graph(model, inferred=True)
        fresh = analyze(graph, opset, tuple(o.exclude), o.gqa)
        ctx = PassContext(
            analysis=fresh, original=model, options=o, plan=plan, keep_value_info=False
        )
        PassManager([ComputeRemoval(), RefoldCounts(), SliceConstants(), Export()]).run(
            graph, ctx
        )
        models.append(ctx.pruned)
        advance("latency model", i + 1, len(keeps))
    return models, kept


def latency_model(model, analysis, allocator, shapes: dict, threads: int, opset: int):
    """The latency model of ``model`` (cached, else measured), bound to ``analysis``."""
    o = allocator.opts
    key = model_key(model, shapes, threads)
    key["sampling"] = {
        "keeps": list(SAMPLE_KEEPS),
        "round_to": int(o.round_to),
        "min_keep": int(o.min_keep),
        "exclude": list(o.exclude),
        "gqa": o.gqa,
    }
    path = cache_dir() / f"{_key_hash(key)}.latency.json"
    data = _load(path, key)
    if data is None:
        stage("latency model")
        t0 = time.perf_counter()
        features = Features(analysis, allocator.cost_model())
        models, kept = _uniform_models(model, analysis, allocator, list(SAMPLE_KEEPS), opset)
        measured = measure_samples(models, shapes, threads)
        curves, samples = _fit(features, list(SAMPLE_KEEPS), kept, measured)
        data = LatencyModel(curves, threads, samples, key).to_dict()
        _save(path, data)
        log.info(
            "latency model measured in %.1f s (%d curves), cached at %s",
            time.perf_counter() - t0,
            len(curves),
            path,
        )
    else:
        log.info("latency model from the cache: %s", path)
    # the same numbers whether measured now or read back: the plan does not depend on it
    data = json.loads(json.dumps(data))
    return LatencyModel.from_dict(data).bind(analysis, allocator.cost_model())


# -- round-to auto ------------------------------------------------------------------------
def _heaviest(model: onnx.ModelProto, shapes: dict):
    """The most expensive Conv (group 1) or constant-weight MatMul/Gemm at ``shapes``:
    (op, attrs, input shape, weight shape, macs) or None."""
    from .graph import infer_shapes
    from .shapes import with_shapes

    copy = infer_shapes(with_shapes(model, shapes))
    dims = {}
    for vi in list(copy.graph.value_info) + list(copy.graph.input) + list(copy.graph.output):
        d = vi.type.tensor_type.shape.dim
        if d and all(x.HasField("dim_value") for x in d):
            dims[vi.name] = [x.dim_value for x in d]
    for t in model.graph.initializer:
        dims[t.name] = list(t.dims)
    best = None
    for n in model.graph.node:
        if n.op_type not in ("Conv", "MatMul", "Gemm") or len(n.input) < 2:
            continue
        x, w, y = dims.get(n.input[0]), dims.get(n.input[1]), dims.get(n.output[0])
        if x is None or w is None or y is None:
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        if n.op_type == "Conv":
            if attrs.get("group", 1) != 1 or len(w) != 4 or len(x) != 4:
                continue
            macs = int(np.prod(y)) * int(np.prod(w[1:]))
        else:
            if len(w) != 2 or attrs.get("transA", 0) or attrs.get("transB", 0):
                continue
            macs = int(np.prod(x)) * w[1]
        if best is None or macs > best[-1]:
            best = (n.op_type, attrs, x, w, macs)
    return best


def _probe_model(op: str, attrs: dict, x: list, w: list, width: int) -> tuple:
    """One-node model of ``op`` with in and out channels ``width``; (model, feed)."""
    rng = np.random.default_rng(0)
    h = onnx.helper
    if op == "Conv":
        xs, ws = [x[0], width, *x[2:]], [width, width, *w[2:]]
        kw = {k: v for k, v in attrs.items() if k in ("kernel_shape", "pads", "strides",
                                                      "dilations", "auto_pad")}
        node = h.make_node("Conv", ["x", "w"], ["y"], **kw)
    else:
        xs, ws = [*x[:-1], width], [width, width]
        node = h.make_node("MatMul", ["x", "w"], ["y"])
    weight = onnx.numpy_helper.from_array(rng.standard_normal(ws).astype(np.float32), "w")
    graph = h.make_graph(
        [node],
        "probe",
        [h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, xs)],
        [h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
        [weight],
    )
    m = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])
    m.ir_version = 8
    return m, {"x": rng.standard_normal(xs).astype(np.float32)}


def measure_widths(op, attrs, x, w, widths: list[int], threads: int) -> list[float]:
    """Minimum ms over interleaved rounds, per width."""
    sessions, feeds = [], []
    for v in widths:
        m, f = _probe_model(op, attrs, x, w, v)
        sessions.append(timing_session(m, threads))
        feeds.append(f)
    for s, f in zip(sessions, feeds, strict=True):
        s.run(None, f)
    best = [float("inf")] * len(widths)
    rounds = 7
    for r in range(rounds):
        for i, (s, f) in enumerate(zip(sessions, feeds, strict=True)):
            t0 = time.perf_counter()
            s.run(None, f)
            best[i] = min(best[i], (time.perf_counter() - t0) * 1e3)
        advance("round-to auto", r + 1, rounds)
    return best


def choose_multiple(widths: list[int], ms: list[float]) -> int:
    """The smallest multiple whose widths run within 3% of the best multiple's, relative to
    a least-squares trend ``a + b·w²`` (see the module docstring)."""
    v = np.asarray(widths, dtype=np.float64)
    t = np.asarray(ms, dtype=np.float64)
    b, a = np.polyfit(v**2, t, 1)
    trend = np.maximum(a + b * v**2, 1e-9)
    resid = t / trend
    score = {}
    for m in ROUND_TO_CHOICES:
        sel = [r for w, r in zip(widths, resid, strict=True) if w % m == 0]
        if sel and m <= max(widths):
            score[m] = float(np.mean(sel))
    best = min(score.values())
    return next(m for m in sorted(score) if score[m] <= best + ROUND_TO_TOLERANCE)


def resolve_round_to(model: onnx.ModelProto, shapes: dict, threads: int) -> int:
    """``--round-to auto``: the channel multiple ORT's kernels run fastest at here."""
    key = model_key(model, shapes, threads)
    path = cache_dir() / f"{_key_hash(key)}.round_to.json"
    data = _load(path, key)
    if data is not None and data.get("round_to") in ROUND_TO_CHOICES:
        log.info("--round-to auto: %d (cached)", data["round_to"])
        return int(data["round_to"])
    stage("round-to auto")
    heavy = _heaviest(model, shapes)
    record = {"key": key, "round_to": 1, "op": None, "widths": [], "ms": []}
    if heavy is not None:
        op, attrs, x, w, _ = heavy
        top = int(w[0] if op == "Conv" else w[1])
        widths = list(range(max(1, top - 32), top + 1))
        if len(widths) >= 8:
            ms = measure_widths(op, attrs, x, w, widths, threads)
            record.update(
                round_to=choose_multiple(widths, ms),
                op=op,
                widths=widths,
                ms=[round(t, 6) for t in ms],
            )
    _save(path, record)
    log.info("--round-to auto: %d (measured on %s)", record["round_to"], record["op"])
    return int(record["round_to"])
