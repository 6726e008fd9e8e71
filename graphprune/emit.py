"""Emit what the runtime loads, each stage verified: ``--optimize``, ``--quantize``, ``--emit ort``.

After a prune, ``build_stages`` turns the pruned float model into the stages the user asked
for, in order: ``optimized`` (ONNX Runtime's transformer optimizer for transformer graphs,
ORT's offline graph optimisations otherwise), ``quantized`` (onnxruntime.quantization, on
the previous stage) and ``ort`` (the ORT-format file of the last ONNX stage). Every stage is
loaded in ONNX Runtime, run on the check feeds (outputs must be finite) and compared with the
pruned float model on the same feeds (mean cosine per sample, max abs diff). A stage that
fails is a ``RewriteError`` naming it, on one line.

The optimized pruned model must keep every fusion the original gets when optimized the same
way (a pruned model that loses its fused Attention would ship slower than it should): the
original is optimized too, and fewer of any fused op type is a ``RewriteError``.

Work happens in a temporary directory (the ORT tools want paths); nothing is left behind.
ORT's and the optimizer's own logging and prints are silenced: the library logs through
``logging.getLogger("graphprune")`` only.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from .errors import RewriteError, UsageError
from .validate import one_line

log = logging.getLogger(__name__)

__all__ = ["Stage", "build_stages", "fused_ops", "is_transformer", "pick_model_type"]

QUANTIZE = ("none", "dynamic", "static")
EMIT = ("onnx", "ort")

#: ``--optimize`` on a non-transformer graph: ORT's EXTENDED level. BASIC only folds and
#: removes (its output is plain ONNX, but no Conv+Add+Relu or MatMul+Add fusion: on the digits
#: CNN it fuses nothing); ALL adds layout transforms (NCHWc) chosen for this machine's CPU,
#: which ORT documents as not portable across hardware. EXTENDED's fused ops (FusedConv,
#: FusedMatMul, ... in com.microsoft) are hardware-independent and load in any ORT build with
#: the contrib ops (the default builds and the mobile package).
OFFLINE_LEVEL = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
#: the .ort conversion itself adds no fusion (the ONNX stage before it already has them):
#: BASIC keeps the saved graph numerically the same as the stage it converts
ORT_LEVEL = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC

_DEFAULT_DOMAINS = ("", "ai.onnx")
_NORMS = {
    "LayerNormalization", "SkipLayerNormalization", "EmbedLayerNormalization",
    "SimplifiedLayerNormalization", "SkipSimplifiedLayerNormalization", "RMSNormalization",
}  # fmt: skip
_ATTENTION = {"Attention", "MultiHeadAttention", "GroupQueryAttention"}


@dataclass
class Stage:
    """One emitted artefact: an ONNX model (``model``) or the .ort file's bytes (``data``)."""

    name: str  # "optimized" | "quantized" | "ort"
    model: onnx.ModelProto | None
    data: bytes | None
    suffix: str  # ".onnx" or ".ort"
    bytes: int
    fusions: dict[str, int] = field(default_factory=dict)
    quality: dict = field(default_factory=dict)
    note: str = ""

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "suffix": self.suffix,
            "bytes": self.bytes,
            "fusions": dict(sorted(self.fusions.items())),
            "quality": dict(self.quality),
            "note": self.note,
        }


# --------------------------------------------------------------------------- detection


def is_transformer(model: onnx.ModelProto) -> bool:
    """A graph the transformer optimizer is for: a Softmax fed by a MatMul whose output
    feeds a MatMul (scaled dot-product attention written out), an attention contrib op, or a
    layer norm (fused or written out as ReduceMean-Sub-Pow-...) next to MatMuls."""
    nodes = model.graph.node
    ops = Counter(n.op_type for n in nodes)
    if ops.keys() & _ATTENTION:
        return True
    producer = {o: n for n in nodes for o in n.output}
    consumers: dict[str, list] = {}
    for n in nodes:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    for n in nodes:
        if n.op_type != "Softmax":
            continue
        if _ancestor_op(n, producer, "MatMul", 4) and any(
            c.op_type == "MatMul" for c in _descendants(n, consumers, 3)
        ):
            return True
    has_norm = bool(ops.keys() & _NORMS) or (ops["ReduceMean"] >= 2 and ops["Pow"] >= 1)
    return has_norm and ops["MatMul"] >= 2


def _ancestor_op(node, producer, op: str, depth: int) -> bool:
    frontier = [node]
    for _ in range(depth):
        nxt = [producer[i] for n in frontier for i in n.input if i in producer]
        if any(n.op_type == op for n in nxt):
            return True
        frontier = nxt
    return False


def _descendants(node, consumers, depth: int) -> Iterator:
    frontier = [node]
    for _ in range(depth):
        frontier = [c for n in frontier for o in n.output for c in consumers.get(o, [])]
        yield from frontier


def pick_model_type(model: onnx.ModelProto) -> str:
    """``gpt2`` for a decoder (a causal mask: Trilu, or an input named like a KV cache),
    ``bert`` otherwise. The bert fusions (Attention from the per-layer Q Reshape, Skip/Embed
    LayerNorm, BiasGelu) also serve encoder-style ViT and DistilBERT graphs."""
    names = [i.name.lower() for i in model.graph.input]
    if any("past" in n for n in names) or any(n.op_type == "Trilu" for n in model.graph.node):
        return "gpt2"
    return "bert"


def _const_values(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    values = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            values[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    return values


def pin_head_counts(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[int]]:
    """A copy of ``model`` whose attention Reshapes state their head count.

    The optimizer reads each layer's head count from the Q Reshape's shape constant
    ``[.., .., num_heads, head_size]`` (with ``num_heads=0`` it trusts nothing else) and
    skips the layer when that entry is -1, which is how torch exports it. So for every
    Reshape to 4-D whose shape is a constant ``[a, b, -1, head_size]``, the -1 becomes the
    input's last dim / head_size (from shape inference): the same reshape, spelled out. Each
    layer gets its own count, so layers pruned to different head counts fuse as well.
    Dynamic-shape exports build that shape with a Concat ``(batch, seq, [-1], [head_size])``
    (read by the optimizer the same way): its ``[-1]`` is pinned likewise.
    Returns the copy and the counts pinned."""
    m = onnx.shape_inference.infer_shapes(model)
    last_dim = {}
    for vi in [*m.graph.value_info, *m.graph.input, *m.graph.output]:
        dims = vi.type.tensor_type.shape.dim
        if dims and dims[-1].HasField("dim_value"):
            last_dim[vi.name] = dims[-1].dim_value
    consts = _const_values(m)
    producer = {o: n for n in m.graph.node for o in n.output}
    readers = Counter(i for n in m.graph.node for i in n.input)
    pinned = []
    for n in m.graph.node:
        if n.op_type != "Reshape" or len(n.input) < 2:
            continue
        width = last_dim.get(n.input[0])
        shape = consts.get(n.input[1])
        if shape is not None:  # a constant shape [a, b, -1, head_size]
            if shape.shape != (4,) or shape[2] != -1 or not _divides(shape[3], width):
                continue
            new = shape.astype(np.int64).copy()
            new[2] = width // int(shape[3])
            name = f"{n.output[0]}__graphprune_heads"
            m.graph.initializer.append(numpy_helper.from_array(new, name))
            n.input[1] = name  # a new initializer: a shared shape Constant is left as it was
            pinned.append(int(new[2]))
            continue
        cat = producer.get(n.input[1])  # dynamic shapes: Concat(batch, seq, [-1], [head_size])
        if cat is None or cat.op_type != "Concat" or len(cat.input) != 4:
            continue
        heads, size = consts.get(cat.input[2]), consts.get(cat.input[3])
        if readers[n.input[1]] != 1 or heads is None or size is None:
            continue
        if heads.size != 1 or size.size != 1 or heads.item() != -1:
            continue
        if not _divides(size.item(), width):
            continue
        name = f"{n.output[0]}__graphprune_heads"
        value = np.array([width // int(size.item())], dtype=heads.dtype)
        m.graph.initializer.append(numpy_helper.from_array(value, name))
        cat.input[2] = name
        pinned.append(int(value[0]))
    del m.graph.value_info[:]  # the optimizer runs its own inference
    m.graph.value_info.extend(model.graph.value_info)
    return m, pinned


def _divides(head_size, width) -> bool:
    return bool(width) and int(head_size) > 0 and width % int(head_size) == 0


def fused_ops(optimized: onnx.ModelProto, before: onnx.ModelProto) -> dict[str, int]:
    """Op type -> count for every op of ``optimized`` that is a fusion: in a non-default
    domain, or of a type ``before`` (the graph the optimizer was given) does not have."""
    had = {n.op_type for n in before.graph.node}
    counts = Counter(
        n.op_type
        for n in optimized.graph.node
        if n.domain not in _DEFAULT_DOMAINS or n.op_type not in had
    )
    return dict(counts)


# --------------------------------------------------------------------------- quiet tools


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the ORT tools: their loggers (they warn through ``onnxruntime.*``), their
    ``print`` calls, and ORT's C++ log."""
    loggers = [logging.getLogger(n) for n in ("onnxruntime", "onnx", "root")]
    loggers += [
        logging.getLogger(n)
        for n in list(logging.root.manager.loggerDict)
        if n.startswith(("onnxruntime", "fusion_", "onnx_model", "optimizer", "quant"))
    ]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL + 1)
    sink = io.StringIO()
    try:
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            yield
    finally:
        for lg, lv in zip(loggers, levels, strict=True):
            lg.setLevel(lv)
        if sink.getvalue().strip():
            log.debug("ORT tools said: %s", " ".join(sink.getvalue().split())[:500])


@contextlib.contextmanager
def _in_dir(path: str) -> Iterator[None]:
    """Run with ``path`` as the working directory: ORT's symbolic shape inference (inside
    ``quant_pre_process``) saves ``sym_shape_infer_temp.onnx`` and a UUID-named ``.data``
    file into the working directory when it cannot size every tensor."""
    cwd = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(cwd)


def _session_options(level) -> ort.SessionOptions:
    so = ort.SessionOptions()
    so.graph_optimization_level = level
    so.log_severity_level = 3
    return so


def _with_opsets(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with an opset import for every domain its nodes use (the optimizer's
    in-memory model may lack ``com.microsoft``, which the checker and quantizer need)."""
    have = {o.domain for o in model.opset_import}
    for domain in sorted({n.domain for n in model.graph.node} - have - {"ai.onnx"}):
        model.opset_import.append(onnx.helper.make_opsetid(domain, 1))
    return model


def _save(model: onnx.ModelProto, path: str) -> str:
    onnx.save(model, path)
    return path


# --------------------------------------------------------------------------- stages


def _optimize(model: onnx.ModelProto, tmp: str, tag: str, transformer: bool, model_type: str):
    """(optimized model, note) by the transformer optimizer or ORT's offline optimisations."""
    if transformer:
        from onnxruntime.transformers.optimizer import optimize_model

        pinned, _ = pin_head_counts(model)
        src = _save(pinned, os.path.join(tmp, f"{tag}-in.onnx"))
        with _quiet(), _in_dir(tmp):
            # opt_level 0: the Python fusions only, no ORT pass (whose output would depend
            # on this machine's CPU); num_heads/hidden_size 0: read per layer from the graph
            opt = optimize_model(
                src, model_type=model_type, num_heads=0, hidden_size=0, opt_level=0
            )
        return _with_opsets(opt.model), f"transformer optimizer ({model_type})"
    src = _save(model, os.path.join(tmp, f"{tag}-in.onnx"))
    dst = os.path.join(tmp, f"{tag}-opt.onnx")
    so = _session_options(OFFLINE_LEVEL)
    so.optimized_model_filepath = dst
    with _quiet():
        ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])
    return onnx.load(dst), "ORT offline optimisations (extended)"


def _optimized_stage(pruned, original, tmp: str) -> Stage:
    transformer = is_transformer(original)
    model_type = pick_model_type(original) if transformer else ""
    try:
        ref, _ = _optimize(original, tmp, "original", transformer, model_type)
    except Exception as e:
        raise RewriteError(f"stage optimized: cannot optimize the original: {one_line(e)}") from e
    try:
        out, note = _optimize(pruned, tmp, "pruned", transformer, model_type)
    except Exception as e:
        raise RewriteError(f"stage optimized: the optimizer failed: {one_line(e)}") from e
    want = fused_ops(ref, original)
    got = fused_ops(out, pruned)
    lost = {k: (v, got.get(k, 0)) for k, v in sorted(want.items()) if got.get(k, 0) < v}
    if lost:
        what = ", ".join(f"{k} {a}->{b}" for k, (a, b) in lost.items())
        raise RewriteError(
            f"stage optimized: the pruned model loses fusions the original gets: {what}"
        )
    log.info("optimized (%s): fusions %s", note, got)
    return Stage("optimized", out, None, ".onnx", out.ByteSize(), got, {}, note)


def _reader(feeds: Sequence[dict]):
    """A CalibrationDataReader over a list of feed dicts (the class is made here, so that
    importing this module does not import onnxruntime.quantization)."""
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._it = iter(feeds)

        def get_next(self):
            return next(self._it, None)

        def rewind(self):
            self._it = iter(feeds)

    return Reader()


def _quantized_stage(model: onnx.ModelProto, how: str, calib: Sequence[dict], tmp: str) -> Stage:
    """``dynamic``: ``quantize_dynamic`` with int8 weights, per-tensor (the activations are
    quantized at run time per tensor, so per-channel weights buy little there and ORT's
    integer MatMul/Conv kernels take per-tensor scales everywhere). ``static``: QDQ (the
    format ORT recommends: the graph stays readable ONNX and every EP can fuse it), int8
    activations and weights (S8S8, ORT's first recommendation on CPU), MinMax calibration over
    the calibration feeds, per-channel weights when the graph has Conv (channel ranges of conv
    filters differ by orders of magnitude, per-tensor scales would zero the small ones).
    ``quant_pre_process`` (symbolic shape inference and ORT's basic optimisations) runs first
    when it can; a graph it cannot handle (a contrib op it does not know) is quantized as is."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static

    src = _save(model, os.path.join(tmp, "q-in.onnx"))
    dst = os.path.join(tmp, "q-out.onnx")
    has_conv = any(n.op_type == "Conv" for n in model.graph.node)
    # ONNX shape inference gives no type to outputs of contrib ops (FusedConv, Attention):
    # the pruned model is float, so that is their type
    extra = {"DefaultTensorType": onnx.TensorProto.FLOAT}
    with _quiet(), _in_dir(tmp):
        if how == "dynamic":
            quantize_dynamic(
                src, dst, weight_type=QuantType.QInt8, per_channel=False, extra_options=extra
            )
            note = "dynamic, int8 weights, per-tensor"
        else:
            pre = os.path.join(tmp, "q-pre.onnx")
            try:
                from onnxruntime.quantization.shape_inference import quant_pre_process

                quant_pre_process(src, pre, skip_symbolic_shape=False)
                src, prep = pre, ", pre-processed"
            except Exception as e:
                log.debug("quant_pre_process skipped: %s", one_line(e))
                prep = ""
            quantize_static(
                src,
                dst,
                _reader(list(calib)),
                quant_format=QuantFormat.QDQ,
                activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8,
                per_channel=has_conv,
                extra_options=extra,
            )
            note = f"QDQ static, {'per-channel' if has_conv else 'per-tensor'}{prep}"
    out = onnx.load(dst)
    return Stage("quantized", out, None, ".onnx", out.ByteSize(), {}, {}, note)


def _ort_stage(model: onnx.ModelProto, tmp: str) -> Stage:
    src = _save(model, os.path.join(tmp, "ort-in.onnx"))
    dst = os.path.join(tmp, "model.ort")
    so = _session_options(ORT_LEVEL)
    so.optimized_model_filepath = dst
    so.add_session_config_entry("session.save_model_format", "ORT")
    with _quiet():
        ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])
    with open(dst, "rb") as f:
        data = f.read()
    return Stage("ort", None, data, ".ort", len(data), {}, {}, "ORT format (basic level)")


# --------------------------------------------------------------------------- verification


def _run(src, feeds: Sequence[dict], stage: str) -> list[list[np.ndarray]]:
    """Outputs of ``src`` (a model, bytes or path) on every feed; a load or run failure is a
    RewriteError naming ``stage``."""
    so = _session_options(ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    if isinstance(src, onnx.ModelProto):
        src = src.SerializeToString()
    try:
        sess = ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise RewriteError(f"stage {stage}: ONNX Runtime cannot load it: {one_line(e)}") from e
    names = {i.name for i in sess.get_inputs()}
    outs = []
    for k, feed in enumerate(feeds):
        try:
            outs.append(sess.run(None, {n: v for n, v in feed.items() if n in names}))
        except Exception as e:
            raise RewriteError(f"stage {stage}: run {k} fails: {one_line(e)}") from e
    return outs


def quality(ref: list[list[np.ndarray]], got: list[list[np.ndarray]], stage: str) -> dict:
    """Mean cosine (each sample, i.e. each row of the first axis, of each float output,
    flattened) and max abs diff of ``got`` against ``ref``; a non-finite output is a
    RewriteError."""
    cosines, worst, samples = [], 0.0, 0
    for r_outs, g_outs in zip(ref, got, strict=True):
        for j, (r, g) in enumerate(zip(r_outs, g_outs, strict=True)):
            r, g = np.asarray(r), np.asarray(g)
            if not np.issubdtype(r.dtype, np.floating):
                continue
            if not np.isfinite(g).all():
                raise RewriteError(f"stage {stage}: output {j} is not finite")
            if r.shape != g.shape:
                raise RewriteError(f"stage {stage}: output {j} shape {g.shape} != {r.shape}")
            r64, g64 = r.astype(np.float64), g.astype(np.float64)
            worst = max(worst, float(np.abs(r64 - g64).max(initial=0.0)))
            rows = r64.reshape(len(r64), -1) if r64.ndim else r64.reshape(1, 1)
            grows = g64.reshape(rows.shape)
            for a, b in zip(rows, grows, strict=True):
                na, nb = np.linalg.norm(a), np.linalg.norm(b)
                cosines.append(1.0 if na == nb == 0 else float(a @ b / (na * nb or 1.0)))
            if j == 0:
                samples += len(rows)
    mean = float(np.mean(cosines)) if cosines else 1.0
    return {"mean_cosine": mean, "max_abs_diff": worst, "samples": samples}


# --------------------------------------------------------------------------- driver


def build_stages(
    pruned: onnx.ModelProto,
    original: onnx.ModelProto,
    *,
    optimize: bool,
    quantize: str = "none",
    emit: str = "onnx",
    calib_feeds: Sequence[dict] = (),
    check_feeds: Sequence[dict] = (),
) -> list[Stage]:
    """The stages asked for, in order (optimized, quantized, ort), each verified against the
    pruned float model on ``check_feeds`` (random feeds when none are given). Empty when
    nothing is asked."""
    if quantize not in QUANTIZE:
        raise UsageError(f"--quantize must be one of {', '.join(QUANTIZE)}, not {quantize!r}")
    if emit not in EMIT:
        raise UsageError(f"--emit must be one of {', '.join(EMIT)}, not {emit!r}")
    if quantize == "static" and not calib_feeds:
        raise UsageError("--quantize static needs calibration data (--calib)")
    if not optimize and quantize == "none" and emit == "onnx":
        return []
    feeds = list(check_feeds) or _random_feeds(pruned)
    ref = _run(pruned, feeds, "pruned")
    stages: list[Stage] = []
    last = pruned
    with tempfile.TemporaryDirectory(prefix="graphprune-emit-") as tmp:
        if optimize:
            stage = _optimized_stage(pruned, original, tmp)
            stages.append(stage)
            last = stage.model
        if quantize != "none":
            # ORT's offline fusions (FusedConv, FusedGemm, ...) are opaque to the quantizer:
            # it leaves them float (dynamic: nothing quantized) or fails on them (static).
            # The pruned graph is quantized instead; ORT fuses the quantized ops at load.
            src = pruned if stages and not stages[-1].note.startswith("transformer") else last
            try:
                stage = _quantized_stage(src, quantize, calib_feeds, tmp)
                if src is not last:
                    stage.note += " (of the pruned graph: ORT's fused ops do not quantize)"
            except Exception as e:
                raise RewriteError(f"stage quantized: quantization failed: {one_line(e)}") from e
            stages.append(stage)
            last = stage.model
        if emit == "ort":
            try:
                stage = _ort_stage(last, tmp)
            except Exception as e:
                raise RewriteError(f"stage ort: conversion failed: {one_line(e)}") from e
            stages.append(stage)
        for stage in stages:
            src = stage.model if stage.model is not None else stage.data
            stage.quality = quality(ref, _run(src, feeds, stage.name), stage.name)
            log.info("stage %s: %d bytes, %s", stage.name, stage.bytes, stage.quality)
    return stages


def _random_feeds(model: onnx.ModelProto, n: int = 2) -> list[dict]:
    from .validate import random_feed, session

    sess = session(model, what="the pruned model")
    rng = np.random.default_rng(0)
    return [random_feed(model, sess, {}, rng) for _ in range(n)]
