"""Calibration data and activation statistics captured through ONNX Runtime.

Sources: an ``.npz`` (one array per graph input, first axis = samples), a directory of
``.npz`` files, or (Python API) any iterable of feed dicts. Models with a fixed batch
dimension are fed in chunks of that size. Statistics are streamed per channel (sum, sum of
squares, sum of absolute values, count), so memory stays bounded by the channel counts.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from .errors import CalibrationError, ResourceError
from .evaluate import check_arrays, load_npz, model_batches
from .progress import advance
from .validate import session

log = logging.getLogger(__name__)

#: precision of the Gram rows a reconstruction reads (``gram`` given as rows), and of each
#: batch's product for a whole Gram (summed in float64); for the rows, measured
#: against float64: the lsq-refitted model's output error on held-out data moves by 1-3e-6
#: (relative; digits CNN, flap/wanda/obs) and MiniLM's mean cosine by < 1e-6, where leaving
#: out one of the 64 digits calibration images moves it by 0.8-0.9%; half the memory. For
#: the whole Gram, MiniLM's obs + block --global at 2,215 sentences is unchanged (0.8405 /
#: 0.655) and calibration takes 31 s instead of 40
GRAM_DTYPE = np.float32
#: bytes one streamed chunk of reconstruction statistics may hold (its Gram rows and one
#: batch of its probed activations); lowered to a quarter of the available memory
CHUNK_BUDGET = 1 << 30


def calibration_feeds(source, model: onnx.ModelProto, batch: int = 16) -> list[dict]:
    """Feed dicts for ``model`` from a path (.npz file or directory of them), a dict of
    arrays (input name -> array, first axis = samples) or an iterable of feed dicts."""
    if isinstance(source, dict):
        arrays, _ = check_arrays({k: np.asarray(v) for k, v in source.items()}, model, "calib")
        return model_batches(model, arrays, size=batch)
    if isinstance(source, str | Path):
        p = Path(source)
        files = sorted(p.glob("*.npz")) if p.is_dir() else [p]
        if not files:
            raise CalibrationError(f"{p}: no .npz files")
        feeds = []
        for f in files:
            arrays, _ = load_npz(f, model)
            feeds += model_batches(model, arrays, size=batch)
        return feeds
    feeds = [dict(f) for f in source] if isinstance(source, Iterable) else []
    if not feeds:
        raise CalibrationError("calibration data holds no samples")
    for k, f in enumerate(feeds):
        check_arrays({n: np.asarray(v) for n, v in f.items()}, model, f"calib feed {k}")
    return feeds


def channels_first(x: np.ndarray, axis: int) -> np.ndarray:
    """``x`` as float64 (channels on ``axis``, positions) = (C, everything else)."""
    return np.moveaxis(np.asarray(x, dtype=np.float64), axis, 0).reshape(x.shape[axis], -1)


def _gram_part(x: np.ndarray, gram: bool | np.ndarray | None) -> np.ndarray | None:
    """This batch's share of the Gram matrix ``gram`` asks for (see ``ChannelStats.gram``)."""
    if gram is None or gram is False:
        return None
    low = x.astype(GRAM_DTYPE, copy=False)
    if gram is True:  # one batch's product at GRAM_DTYPE (twice as fast), summed in float64
        return (low @ low.T).astype(np.float64)
    return low[np.asarray(gram, dtype=np.intp)] @ low.T


@dataclass
class ChannelStats:
    """Streaming per-channel moments of one activation axis."""

    count: int = 0
    total: np.ndarray | None = None
    squares: np.ndarray | None = None
    absolute: np.ndarray | None = None
    #: Σ x xᵀ over samples (channels x channels, float64), if asked; or only some rows of
    #: it, Σ x[rows] xᵀ at ``GRAM_DTYPE``, where ``gram`` gave rows (a refit's kept inputs)
    gram: np.ndarray | None = None

    def add(self, x: np.ndarray, axis: int, gram: bool | np.ndarray = False) -> None:
        self.add_channels(channels_first(x, axis), gram)

    def add_channels(self, x: np.ndarray, gram: bool | np.ndarray = False) -> None:
        """Add ``x`` of shape (channels, positions); ``gram``: True for the whole Gram
        matrix, an index array for just those rows of it."""
        g = _gram_part(x, gram)
        if g is not None and self.gram is None:
            self.gram = g
        elif g is not None:
            self.gram += g  # in place: one Gram-sized temporary, not two
        parts = (x.sum(1), np.einsum("ij,ij->i", x, x), np.abs(x).sum(1))
        if self.total is None:
            self.total, self.squares, self.absolute = parts
        else:
            self.total += parts[0]
            self.squares += parts[1]
            self.absolute += parts[2]
        self.count += x.shape[1]

    @property
    def mean(self) -> np.ndarray:
        return self.total / self.count

    @property
    def mean_square(self) -> np.ndarray:
        return self.squares / self.count

    @property
    def variance(self) -> np.ndarray:
        return np.maximum(self.mean_square - self.mean**2, 0.0)

    @property
    def mean_abs(self) -> np.ndarray:
        return self.absolute / self.count

    @property
    def covariance(self) -> np.ndarray:
        return self.gram / self.count - np.outer(self.mean, self.mean)


@dataclass
class Activations:
    """Statistics per ``(tensor name, axis)``, and how many samples produced them."""

    stats: dict[tuple[str, int], ChannelStats] = field(default_factory=dict)
    samples: int = 0

    def get(self, name: str, axis: int) -> ChannelStats | None:
        return self.stats.get((name, axis))


def _probe_session(model: onnx.ModelProto, names: list[str], starts: dict | None = None):
    """An ORT session (optimisations off) on a copy of ``model`` that outputs just the
    tensors ``names`` and runs only the nodes they need (every graph input stays, so any
    feed of the model fits). ``starts``: tensors (name -> numpy dtype) fed as inputs
    instead of computed; nothing upstream of them runs."""
    probe = _truncated(model, names, starts)
    probe.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names)
    return session(probe)


def _truncated(
    model: onnx.ModelProto, names: list[str], starts: dict | None = None
) -> onnx.ModelProto:
    """A copy of ``model`` with only the nodes and initializers ``names`` depend on (up to
    ``starts``, which become graph inputs) and no graph outputs; the other initializers
    are never copied (a chunk of early layers does not copy the weights of the later
    ones)."""
    starts = starts or {}
    probe = onnx.ModelProto()
    for desc, value in model.ListFields():
        if desc.name != "graph":
            _copy_field(probe, desc, value)
    for desc, value in model.graph.ListFields():
        if desc.name not in ("initializer", "node", "output", "value_info"):
            _copy_field(probe.graph, desc, value)
    probe.graph.value_info.extend(v for v in model.graph.value_info if v.name not in starts)
    for name, dtype in sorted(starts.items()):
        elem = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
        probe.graph.input.append(onnx.helper.make_tensor_value_info(name, elem, None))
    nodes, _ = needed_nodes(model.graph, names, set(starts))
    kept = [model.graph.node[k] for k in sorted(nodes)]
    probe.graph.node.extend(kept)
    used = {i for n in kept for i in node_reads(n)} | set(names)
    used |= {i.name for i in model.graph.input}
    probe.graph.initializer.extend(t for t in model.graph.initializer if t.name in used)
    return probe


def _copy_field(target, desc, value) -> None:
    """Copy one set protobuf field of a message onto ``target``."""
    if hasattr(value, "extend"):  # a repeated field
        getattr(target, desc.name).extend(value)
    elif desc.message_type is not None:
        getattr(target, desc.name).CopyFrom(value)
    else:
        setattr(target, desc.name, value)


def node_reads(node: onnx.NodeProto) -> list[str]:
    """Every name ``node`` reads, outer-scope reads of its subgraphs included."""
    out = list(node.input)
    for attr in node.attribute:
        for sub in [attr.g, *attr.graphs]:
            out.extend(i for n in sub.node for i in n.input)
    return [i for i in out if i]


def producers(graph: onnx.GraphProto) -> dict[str, int]:
    """Tensor name -> index of the node writing it."""
    return {o: k for k, n in enumerate(graph.node) for o in n.output if o}


def needed_nodes(
    graph: onnx.GraphProto, names, stop=frozenset(), producer: dict | None = None
) -> tuple[set[int], set[str]]:
    """Indices of the nodes ``names`` depend on, not looking past the names in ``stop``;
    and the names of ``stop`` reached."""
    producer = producers(graph) if producer is None else producer
    nodes, reached, seen, todo = set(), set(), set(), list(names)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        if name in stop:
            reached.add(name)
            continue
        k = producer.get(name)
        if k is None or k in nodes:
            continue
        nodes.add(k)
        todo.extend(node_reads(graph.node[k]))
    return nodes, reached


#: [chunk, chunks]: where the running capture is in a streamed pass (``capture_chunks``),
#: so that the progress bar runs once over every chunk's batches
_CHUNK = [0, 1]


def _report(done: int, total: int) -> None:
    chunk, chunks = _CHUNK
    advance("calibration", chunk * total + done, chunks * total)


def _gram_of(gram, target) -> bool | np.ndarray | None:
    """What ``capture``'s ``gram`` asks of one target: all of it, some rows, or nothing."""
    return gram if isinstance(gram, bool) else gram.get(target)


def capture(model: onnx.ModelProto, feeds: list[dict], targets, gram: bool = False) -> Activations:
    """Run ``model`` on every feed (ORT, optimisations off so intermediates exist) and stream
    per-channel statistics of each ``(tensor name, axis)`` in ``targets`` (with ``gram``,
    also the channel Gram matrix that least-squares reconstruction needs); one pass serves
    every target. ``gram`` may also map targets to row indices: only those rows of those
    targets' Gram matrices are summed (at ``GRAM_DTYPE``), what a refit reads."""
    from . import cluster  # never imports Ray unless a run asked for it (--ray)

    if len(feeds) >= 2 and cluster.active() and not cluster.in_worker():
        from .shards import capture_sharded  # the batches split over Ray workers

        return capture_sharded(model, feeds, targets, gram)
    targets = sorted(set(targets))
    names = sorted({n for n, _ in targets})
    sess = _probe_session(model, names)
    out = Activations()
    for k, feed in enumerate(feeds):
        try:
            values = dict(zip(names, sess.run(names, feed), strict=True))
        except Exception as e:
            raise CalibrationError(f"calibration batch {k}: the model cannot run it ({e})") from e
        for name, axis in targets:
            st = out.stats.setdefault((name, axis), ChannelStats())
            st.add(values[name], axis, _gram_of(gram, (name, axis)))
        out.samples += len(next(iter(feed.values())))
        log.info("calibration: batch %d/%d", k + 1, len(feeds))
        _report(k + 1, len(feeds))
    return out


@dataclass
class JointStats:
    """Streaming moments of one activation axis seen in two models on the same inputs:
    ``x`` in the model being rebuilt (with its Gram matrix), ``y`` in the original (same
    channel count), and their cross moments. With ``rows`` (the kept inputs, what the
    layer-wise refit reads) only ``Σ x_R x_Rᵀ`` and ``Σ x_R yᵀ`` are held."""

    x: ChannelStats = field(default_factory=ChannelStats)
    sum_y: np.ndarray | None = None
    gram_xy: np.ndarray | None = None  # Σ x yᵀ
    rows: np.ndarray | None = None

    def add(self, x: np.ndarray, y: np.ndarray, axis: int) -> None:
        x, y = channels_first(x, axis), channels_first(y, axis)
        if self.rows is None:
            self.x.add_channels(x, gram=True)
        else:
            self.x.add_channels(x)
            x = x[self.rows]
            g = x @ x.T
            self.x.gram = g if self.x.gram is None else self.x.gram + g
        sum_y, cross = y.sum(1), x @ y.T
        if self.sum_y is None:
            self.sum_y, self.gram_xy = sum_y, cross
        else:
            self.sum_y += sum_y
            self.gram_xy += cross

    @property
    def mean_y(self) -> np.ndarray:
        return self.sum_y / self.x.count

    @property
    def mean_x(self) -> np.ndarray:
        """The mean of ``x`` on the Gram's rows."""
        return self.x.mean if self.rows is None else self.x.mean[self.rows]

    @property
    def cov_x(self) -> np.ndarray:
        return self.x.gram / self.x.count - np.outer(self.mean_x, self.mean_x)

    @property
    def cov_xy(self) -> np.ndarray:
        return self.gram_xy / self.x.count - np.outer(self.mean_x, self.mean_y)


class ProbeRun:
    """A model run from its inputs that gives ``names`` on each feed: ``values(k)`` for
    every feed in order, then ``finish()`` (the interface of ``staged.StagedRun``)."""

    def __init__(self, model: onnx.ModelProto, feeds: list[dict], names: list[str]):
        self.sess, self.feeds, self.names = _probe_session(model, names), feeds, names

    def __len__(self) -> int:
        return len(self.feeds)

    def values(self, k: int) -> dict[str, np.ndarray]:
        try:
            return dict(zip(self.names, self.sess.run(self.names, self.feeds[k]), strict=True))
        except Exception as e:
            raise CalibrationError(f"calibration batch {k}: the model cannot run it ({e})") from e

    def finish(self) -> None:
        pass


def capture_joint(
    runs: tuple, targets, rows: dict | None = None
) -> dict[tuple[str, int], JointStats]:
    """Stream, per ``(tensor name, axis)`` of ``targets``, the moments tying the current
    model's activation to the original's (``JointStats``; ``rows`` maps a target to the
    rows of its Grams to hold). ``runs``: the current model's run and the original's, each
    giving the targets' tensors on every feed (``ProbeRun`` or ``staged.StagedRun``)."""
    targets = sorted(set(targets))
    out: dict[tuple[str, int], JointStats] = {}
    for k in range(len(runs[0])):
        cur, orig = (r.values(k) for r in runs)
        for name, axis in targets:
            st = out.setdefault((name, axis), JointStats(rows=(rows or {}).get((name, axis))))
            st.add(cur[name], orig[name], axis)
    for r in runs:
        r.finish()
    return out


def capture_rows(runs: tuple, limit: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Raw rows (features on the last axis) of what each of ``runs`` (the current model's
    and the original's, ``ProbeRun`` or ``staged.StagedRun``) gives on every feed; the same
    positions in every tensor. At most about ``limit`` rows are kept: when more arrive,
    every other row is dropped and the stride doubles, so the rows stay spread over all
    the batches and memory stays bounded."""
    names = [r.names for r in runs]
    rows: list[dict[str, list[np.ndarray]]] = [{n: [] for n in ns} for ns in names]
    stride, seen, kept = 1, 0, 0  # rows kept: global positions that are multiples of stride
    for k in range(len(runs[0])):
        values = [r.values(k) for r in runs]
        flats = [{n: v.reshape(-1, v.shape[-1]) for n, v in side.items()} for side in values]
        counts = {len(f) for side in flats for f in side.values()}
        if len(counts) != 1:
            raise CalibrationError(f"calibration batch {k}: tensors differ in positions")
        count, first = counts.pop(), (-seen) % stride
        for side, flat in zip(rows, flats, strict=True):
            for n, f in flat.items():
                side[n].append(f[first::stride].astype(np.float32))
        kept += len(range(first, count, stride))
        seen += count
        if kept > 2 * limit:
            for side in rows:
                for n, parts in side.items():
                    side[n] = [np.concatenate(parts)[::2]]
            kept = (kept + 1) // 2
            stride *= 2
    for r in runs:
        r.finish()
    return tuple({n: np.concatenate(p) for n, p in side.items()} for side in rows)


def mean_cosines(model: onnx.ModelProto, feeds: list[dict], pairs) -> list[float]:
    """For each ``(tensor a, tensor b)`` in ``pairs`` (same shape, features on the last
    axis), the mean over positions and samples of cos(a, b)."""
    names = sorted({n for pair in pairs for n in pair})
    sess = _probe_session(model, names)
    sums, counts = np.zeros(len(pairs)), np.zeros(len(pairs))
    for feed in feeds:
        values = dict(zip(names, sess.run(names, feed), strict=True))
        for k, (a, b) in enumerate(pairs):
            x = values[a].reshape(-1, values[a].shape[-1]).astype(np.float64)
            y = values[b].reshape(-1, values[b].shape[-1]).astype(np.float64)
            norms = np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1)
            cos = np.sum(x * y, axis=1) / np.maximum(norms, 1e-12)
            sums[k] += cos.sum()
            counts[k] += len(cos)
    return list(sums / np.maximum(counts, 1))


# --- streamed capture in chunks, and the memory it needs ---------------------------------


@dataclass
class TargetCost:
    """Bytes one calibration target costs: ``probe``, its ORT output per batch (shared by
    the targets of one tensor); ``work``, the temporaries of adding one batch (a float64
    copy and its |x|, the Gram's cast and row copy, one batch's Gram); ``stats``, its
    moments; ``gram``, the Gram matrix (or rows) it holds."""

    probe: int = 0
    work: int = 0
    stats: int = 0
    gram: int = 0


def available_memory() -> int:
    """Bytes this process can still get: MemAvailable, or what the cgroup (v2 or v1) allows
    beyond its current usage where that is lower."""
    out = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                out = int(line.split()[1]) * 1024
    except OSError:
        pass
    for limit, usage in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        (
            "/sys/fs/cgroup/memory/memory.limit_in_bytes",
            "/sys/fs/cgroup/memory/memory.usage_in_bytes",
        ),
    ):
        try:
            free = int(Path(limit).read_text().split()[0]) - int(Path(usage).read_text())
        except (OSError, ValueError):
            continue  # no such cgroup, or "max"
        out = free if out is None else min(out, free)
    return max(out, 0) if out is not None else 1 << 62


def chunk_budget(available: int | None = None) -> int:
    """Bytes one chunk of reconstruction statistics may hold: ``CHUNK_BUDGET``, or a
    quarter of the available memory where that is less."""
    available = available_memory() if available is None else available
    return max(min(CHUNK_BUDGET, available // 4), 1)


def tensor_shapes(model: onnx.ModelProto, feed: dict, names) -> dict[str, tuple]:
    """``(shape, bytes per element)`` of each tensor in ``names`` at the input sizes of
    ``feed``, from the model's (inferred) value_info: symbolic dims are bound by the graph
    inputs' sizes in the feed, and a dim still unknown counts as the largest dim of the
    feed (an upper bound: a CNN's later maps are smaller than its input)."""
    bound: dict[str, int] = {}
    for vi in model.graph.input:
        if vi.name in feed:
            dims = vi.type.tensor_type.shape.dim
            for d, n in zip(dims, np.shape(feed[vi.name]), strict=False):
                if d.dim_param:
                    bound[d.dim_param] = int(n)
    largest = max((int(n) for v in feed.values() for n in np.shape(v)), default=1)
    infos = {
        vi.name: vi for vi in [*model.graph.input, *model.graph.value_info, *model.graph.output]
    }
    out = {}
    for name in names:
        t = infos[name].type.tensor_type if name in infos else None
        dims = list(t.shape.dim) if t is not None and t.HasField("shape") else []
        shape = tuple(
            d.dim_value if d.dim_value > 0 else bound.get(d.dim_param, largest) for d in dims
        )
        try:
            size = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.elem_type)).itemsize
        except (AttributeError, KeyError, TypeError, ValueError):
            size = 4
        out[name] = (shape, size)
    return out


def target_costs(
    model: onnx.ModelProto, feeds: list[dict], targets, gram: bool | dict = False
) -> dict[tuple[str, int], TargetCost]:
    """What each target costs at the largest calibration batch (``gram`` as ``capture``
    takes it: True is a float64 Gram, rows are ``GRAM_DTYPE`` rows); a target whose rank
    is unknown costs nothing."""
    feed = max(feeds, key=lambda f: sum(np.size(v) for v in f.values())) if feeds else {}
    shapes = tensor_shapes(model, feed, {n for n, _ in targets})
    out, probed = {}, set()
    for name, axis in sorted(set(targets)):
        shape, size = shapes[name]
        if not shape or not -len(shape) <= axis < len(shape):
            out[name, axis] = TargetCost()
            continue
        elements, channels = int(np.prod(shape)), int(shape[axis])
        part = _gram_of(gram, (name, axis))
        rows = channels if part is True else 0 if part is None or part is False else len(part)
        item = 8 if part is True else np.dtype(GRAM_DTYPE).itemsize
        low = 0 if part is True or not rows else elements * (item + item * rows // channels)
        out[name, axis] = TargetCost(
            probe=0 if name in probed else elements * size,
            work=16 * elements + low + rows * channels * item,
            stats=24 * channels,
            gram=rows * channels * item,
        )
        probed.add(name)
    return out


def chunks(order: list, costs: dict, budget: int) -> list[list]:
    """``order`` (targets in layer order) cut into consecutive runs whose probed outputs and
    Gram matrices fit ``budget`` (a target larger than it is a run of its own)."""
    out: list[list] = []
    held = 0
    for t in order:
        c = costs[t].probe + costs[t].gram
        if not out or held + c > budget:
            out.append([])
            held = 0
        out[-1].append(t)
        held += c
    return out


def layer_order(model: onnx.ModelProto, targets) -> list:
    """``targets`` in graph order of the tensors' producers (graph inputs first)."""
    at = {o: k for k, n in enumerate(model.graph.node) for o in n.output}
    return sorted(set(targets), key=lambda t: (at.get(t[0], -1), t))


def capture_chunks(model, feeds, plan: list[list], gram: bool | dict = False):
    """``capture`` run once per chunk of ``plan`` (each its own ORT pass over the batches,
    probing just that chunk's tensors): yields ``(chunk, Activations)``, so the caller uses
    a chunk's statistics and drops them before the next is captured."""
    try:
        for k, chunk in enumerate(plan):
            _CHUNK[:] = [k, len(plan)]
            log.info(
                "calibration: chunk %d/%d, %d tensors (%s ... %s)",
                k + 1, len(plan), len(chunk), chunk[0][0], chunk[-1][0],
            )  # fmt: skip
            part = gram if isinstance(gram, bool) else {t: gram[t] for t in chunk if t in gram}
            yield chunk, capture(model, feeds, chunk, part)
    finally:
        _CHUNK[:] = [0, 1]


def merged(parts) -> Activations:
    """The statistics of several chunks (different targets, the same batches) as one."""
    out = Activations()
    for _, acts in parts:
        out.stats.update(acts.stats)
        out.samples = acts.samples
    return out


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"  # pragma: no cover


def check_memory(estimate: dict, available: int | None = None) -> None:
    """``ResourceError`` (exit 10) when ``estimate["peak"]`` exceeds the available memory."""
    available = available_memory() if available is None else available
    if estimate["peak"] <= available:
        return
    parts = ", ".join(f"{k} {fmt_bytes(v)}" for k, v in estimate.items() if k != "peak" and v)
    raise ResourceError(
        f"calibration needs about {fmt_bytes(estimate['peak'])} of memory ({parts}) but "
        f"{fmt_bytes(available)} is available: prune fewer layers (--exclude PATTERN) or "
        "use a smaller calibration batch (fewer samples or shorter sequences per batch)"
    )


def calibration_needs(opts, has_data: bool) -> tuple[set[str], bool]:
    """What the first pass (before the plan) captures: the criterion's statistics, and a
    reconstruction's when it reads no Gram matrix; and whether the reconstruction's Gram
    rows are streamed after the plan (``passes.reconstruct.lsq_updates``)."""
    from graphprune.passes.reconstructions import RECONSTRUCTIONS

    from .criteria import CRITERIA

    recon = set(RECONSTRUCTIONS[opts.reconstruct].needs)
    criterion = CRITERIA[opts.criterion]
    needs = set(criterion.needs) if opts.scoring and criterion.wants_data(has_data) else set()
    streamed = "gram" in recon
    if not streamed:
        needs |= recon
    needs.discard("outputs")  # knockout runs the model itself
    return needs, streamed


def _kept_fraction(opts) -> float:
    """The largest share of a group's units the options can keep (1 with a budget target,
    whose ratios are only known once priced)."""
    ratios = [r for r in [opts.ratio, *opts.ratios.values(), opts.hidden] if r]
    return 1.0 if opts.budget is not None or not ratios else 1.0 - min(ratios)


def memory_estimate(model, analysis, opts, feeds, available: int | None = None) -> dict:
    """Peak bytes calibration will need, before any of it runs, and its parts: ``probe``
    (one batch of the largest chunk's probed activations), ``work`` (the temporaries of
    one target's batch), ``statistics`` (what the criterion holds until the plan: moments,
    and obs's float64 Gram matrices), ``gram_chunk`` (the largest chunk of lsq's Gram rows,
    at ``GRAM_DTYPE``, for the largest kept share the ratios allow), ``fit`` (one refit's
    float64 solve) and ``layerwise`` (one wave of lsq-seq, or block's calibration rows);
    ``peak`` is the most of them held at once. Shapes are those of the largest batch; ORT's
    own buffers and the model's weights are not counted."""
    from .importance import calibration_targets

    out = dict.fromkeys(("probe", "work", "statistics", "gram_chunk", "fit", "layerwise"), 0)
    needs, streamed = calibration_needs(opts, bool(feeds))
    layerwise = opts.reconstruct in ("lsq-seq", "block")
    targets = calibration_targets(analysis, width=opts.hidden > 0) if feeds else []
    if not targets or not (needs or streamed or layerwise):
        return {**out, "peak": 0}
    targets = layer_order(model, targets)
    budget = chunk_budget(available)
    first = _first_pass_parts(model, feeds, targets, "gram" in needs, budget, out) if needs else 0
    second = _refit_parts(model, feeds, targets, opts, budget, out, streamed, layerwise)
    out["peak"] = max(first, out["statistics"] + second)
    return out


def _largest(values) -> int:
    return max(values, default=0)


def _first_pass_parts(model, feeds, targets, gram: bool, budget: int, out: dict) -> int:
    """The criterion's pass: its statistics held for every target, the probes in chunks."""
    costs = target_costs(model, feeds, targets, gram=gram)
    plan = chunks(targets, {t: TargetCost(probe=c.probe) for t, c in costs.items()}, budget)
    out["statistics"] = sum(c.stats + c.gram for c in costs.values())
    out["probe"] = _largest(sum(costs[t].probe for t in ch) for ch in plan)
    out["work"] = _largest(c.work for c in costs.values())
    return out["statistics"] + out["probe"] + out["work"]


def _refit_parts(model, feeds, targets, opts, budget, out, streamed, layerwise) -> int:
    """The reconstruction's calibration after the plan, every consumer assumed refitted
    with the largest kept share (the plan is not known yet)."""
    if not (streamed or layerwise):
        return 0
    feed = max(feeds, key=lambda f: sum(np.size(v) for v in f.values()))
    shapes = tensor_shapes(model, feed, {n for n, _ in targets})
    kept, rows, width = _kept_fraction(opts), {}, {}
    for name, axis in targets:
        shape = shapes[name][0]
        if shape and -len(shape) <= axis < len(shape):
            width[name, axis] = int(shape[axis])
            rows[name, axis] = np.arange(int(np.ceil(kept * shape[axis])))
    costs = target_costs(model, feeds, targets, gram=rows)
    second = 0
    if streamed:
        plan = chunks(targets, costs, budget)
        out["gram_chunk"] = _largest(sum(costs[t].gram for t in ch) for ch in plan)
        probe = _largest(sum(costs[t].probe for t in ch) for ch in plan)
        out["probe"] = max(out["probe"], probe)
        out["work"] = max(out["work"], _largest(c.work for c in costs.values()))
        # cov rows (k x n), Σ_KK, LAPACK's copies of both, and the solution: float64
        out["fit"] = _largest(
            8 * (3 * len(r) * width[t] + 2 * len(r) ** 2) for t, r in rows.items()
        )
        second = out["gram_chunk"] + max(probe + out["work"], out["fit"])
    if opts.reconstruct == "lsq-seq":  # both models' probes, Σ x_K x_Kᵀ and Σ x_K yᵀ
        out["layerwise"] = _largest(
            2 * costs[t].probe + 8 * (len(r) ** 2 + len(r) * width[t]) for t, r in rows.items()
        )
    elif layerwise:  # block: its calibration rows of a block's input, hidden and output
        from graphprune.passes.reconstruct_block import ROWS

        out["layerwise"] = _largest(3 * 4 * ROWS * n for n in width.values())
    return max(second, out["gram_chunk"] + out["layerwise"])


def criterion_statistics(model, analysis, opts, feeds) -> Activations | None:
    """The statistics captured before the plan (``calibration_needs``), for every target
    the criteria cover; in chunks of layers when one batch of every probed activation would
    not fit ``chunk_budget`` (the statistics are the same either way)."""
    from .importance import calibration_targets

    needs, _ = calibration_needs(opts, bool(feeds))
    if not needs or not feeds:
        return None
    targets = layer_order(model, calibration_targets(analysis, width=opts.hidden > 0))
    gram = "gram" in needs
    costs = target_costs(model, feeds, targets, gram)
    probes = {t: TargetCost(probe=c.probe) for t, c in costs.items()}
    return merged(capture_chunks(model, feeds, chunks(targets, probes, chunk_budget()), gram))
