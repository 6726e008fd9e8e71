"""Parity through ONNX Runtime (graph optimisations off): the pruned model against the
original with the same units masked, on random inputs and, when given, calibration feeds."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnxruntime as ort

from . import weights
from .errors import CalibrationError, ModelLoadError, RewriteError
from .graph import checker

log = logging.getLogger(__name__)
ort.set_default_logger_severity(3)  # ORT's own stderr lines would break the one-line rule

REL_TOL = 1e-4  # relative to the largest reference magnitude of each output
#: at half precision the bound is two ulps of the output's type (fp16: 1.95e-3), since
#: summing the kept terms alone rounds differently from summing them with masked zeros
ULPS = 2
ABS_TOL = 1e-5

_NP_TYPES = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(bool)": np.bool_,
    "tensor(uint8)": np.uint8,
    "tensor(int8)": np.int8,
}


def one_line(e: Exception) -> str:
    """ONNX Runtime's multi-line error text as one line."""
    return " ".join(str(e).split())


def session(
    model: onnx.ModelProto | bytes | str,
    threads: int = 0,
    optimize: bool = False,
    error: type[Exception] = RewriteError,
    what: str = "the model",
) -> ort.InferenceSession:
    """An ONNX Runtime CPU session; a model it cannot load raises ``error`` (our rewrite's
    fault by default; ``ModelLoadError`` when ``model`` is the user's input)."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if optimize
        else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    # weights on disk are read mapped, not copied
    src = weights.session_source(model, opts) if isinstance(model, onnx.ModelProto) else model
    try:
        return ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise error(f"ONNX Runtime cannot load {what}: {one_line(e)}") from e


def check_input(model: onnx.ModelProto, load: bool = True) -> ort.InferenceSession | None:
    """The user's model must pass ``onnx.checker`` and load in ONNX Runtime: otherwise no
    output of ours could be proven against it (exit 3, not a rewrite error). An op the
    checker does not know but ONNX Runtime runs (its own ops in the default domain) passes.
    Returns the session (for the input-size probe). With ``load`` False (no parity, no
    probe: the ORT check costs a session of the whole model) only the checker runs, and the
    pruned model's own load decides later (``passes/parity.py`` tells the two apart)."""
    checker_error = None
    if model.ByteSize() < 2**31 - 1:
        try:
            checker(model)
        except Exception as e:  # the checker raises ValidationError and friends
            checker_error = one_line(e)[:300]
    if not load and checker_error is None:
        return None
    sess = session(model, error=ModelLoadError, what="the input model")
    if checker_error is not None and "No Op registered" not in checker_error:
        raise ModelLoadError(f"the input model fails onnx.checker: {checker_error}")
    return sess


def _index_bound(model: onnx.ModelProto, name: str) -> int:
    """Upper bound for an integer input used as Gather indices (embedding rows)."""
    inits = {t.name: t for t in model.graph.initializer}
    for n in model.graph.node:
        if (
            n.op_type == "Gather"
            and len(n.input) > 1
            and n.input[1] == name
            and n.input[0] in inits
        ):
            return int(inits[n.input[0]].dims[0])
    return 2


def random_feed(
    model: onnx.ModelProto,
    sess: ort.InferenceSession,
    shapes: dict[str, tuple[int, ...]],
    rng: np.random.Generator,
    values: dict[str, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """One random feed at ``shapes`` (inputs absent from it: declared dims, 1 for the
    batch and 8 for other symbolic dims); ``values`` are taken as they are (a scalar input
    such as a sample rate, from the data)."""
    feed = dict(values or {})
    for inp in sess.get_inputs():
        if inp.name in feed:
            continue
        shape = shapes.get(inp.name)
        if shape is None:
            shape = [
                s if isinstance(s, int) and s > 0 else 1 if k == 0 else 8
                for k, s in enumerate(inp.shape)
            ]
        dtype = _NP_TYPES.get(inp.type)
        if dtype is None:
            raise RewriteError(f"input {inp.name!r}: unsupported type {inp.type}")
        if np.issubdtype(dtype, np.floating):
            feed[inp.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype is np.bool_:
            feed[inp.name] = rng.random(shape) < 0.5
        else:
            hi = _index_bound(model, inp.name)
            feed[inp.name] = rng.integers(0, hi, size=shape).astype(dtype)
    return feed


def random_feeds(
    model: onnx.ModelProto,
    sess: ort.InferenceSession,
    n: int = 3,
    seed: int = 0,
    shapes=None,
    values: dict[str, np.ndarray] | None = None,
) -> list[dict[str, np.ndarray]]:
    """``n`` random feeds at ``shapes`` (an ``InputShapes``); the last one doubles the
    batch of inputs whose batch dim is symbolic, so batch independence is checked too."""
    rng = np.random.default_rng(seed)
    at = dict(shapes.shapes) if shapes is not None else {}
    dynamic = shapes.dynamic_batch if shapes is not None else set()
    feeds = [random_feed(model, sess, at, rng, values) for _ in range(max(n - 1, 0))]
    if n > 0:
        last = {k: (2 * s[0], *s[1:]) if k in dynamic else s for k, s in at.items()}
        if not at:  # no shapes known: the old defaults (batch 2, symbolic dims 8)
            last = {
                i.name: tuple(
                    s if isinstance(s, int) and s > 0 else 2 if k == 0 else 8
                    for k, s in enumerate(i.shape)
                )
                for i in sess.get_inputs()
            }
        feeds.append(random_feed(model, sess, last, rng, values))
    return feeds


def quiet_run() -> ort.RunOptions:
    """Run options that keep ORT's kernel errors off stderr (they are raised to us)."""
    ro = ort.RunOptions()
    ro.log_severity_level = 4
    return ro


def run_error(sess: ort.InferenceSession, feed: dict[str, np.ndarray]) -> str | None:
    """Why ``sess`` does not run on ``feed`` (one line), or None when it runs (the
    input-size probe)."""
    try:
        sess.run(None, feed, quiet_run())
    except Exception as e:  # ORT raises its own types for a bad size
        log.debug("probe run failed: %s", one_line(e))
        return one_line(e)
    return None


@dataclass
class ParityResult:
    status: str  # exact | approximate | failed | skipped
    max_abs_diff: float = 0.0
    max_rel_diff: float = 0.0
    per_output: dict[str, dict[str, float]] = field(default_factory=dict)
    n_inputs: int = 0
    #: with reconstruction: the mask-equivalence verdict of the plan before it
    mask_check: str | None = None
    #: how the models were compared when not as they are (QDQ: the float path)
    note: str | None = None

    def to_dict(self) -> dict:
        return {
            "status": self.status,
            "max_abs_diff": self.max_abs_diff,
            "max_rel_diff": self.max_rel_diff,
            "per_output": self.per_output,
            "inputs": self.n_inputs,
            "mask_check": self.mask_check,
            "note": self.note,
        }


def compare(
    reference: onnx.ModelProto,
    pruned: onnx.ModelProto,
    feeds: list[dict[str, np.ndarray]] | None = None,
    n_random: int = 3,
    seed: int = 0,
    approximate: bool = False,
    shapes=None,
) -> ParityResult:
    """Run both models on the same feeds; ``exact`` when every output agrees to REL_TOL.
    With ``approximate`` (a normalised width was pruned, so the function changed on
    purpose) the verdict is ``approximate`` and the differences are the measured deviation;
    only a shape mismatch or a non-finite value fails. A random feed the reference itself
    cannot run (a size the original rejects) is skipped; one that only the pruned model
    cannot run is a RewriteError."""
    note = None
    if quantized_activations(reference):
        reference, pruned = float_path(reference), float_path(pruned)
        note = "float path: activation QuantizeLinear/DequantizeLinear pairs bypassed"
    ref_sess, new_sess = session(reference), session(pruned)
    scalars = {k: v for k, v in (feeds or [{}])[0].items() if np.ndim(v) == 0}
    all_feeds = random_feeds(reference, ref_sess, n_random, seed, shapes, scalars)
    all_feeds += list(feeds or [])
    names = [o.name for o in ref_sess.get_outputs()]
    per: dict[str, dict[str, float]] = {}
    used = 0
    for k, feed in enumerate(all_feeds):
        try:
            a = ref_sess.run(names, feed, quiet_run())
        except Exception as e:
            if k >= n_random:  # the user's own data must run on the reference
                raise RewriteError(
                    f"the masked reference fails on given data: {one_line(e)}"
                ) from e
            log.info("parity: random feed %d skipped, the reference rejects it: %s", k, e)
            continue
        if k < n_random and not all(_finite(np.asarray(x)) for x in a):
            log.info("parity: random feed %d skipped, the reference gives NaN/Inf on it", k)
            continue
        try:
            b = new_sess.run(names, feed, quiet_run())
        except Exception as e:
            raise RewriteError(
                f"the pruned model fails in ONNX Runtime where the original runs: {one_line(e)}"
            ) from e
        used += 1
        for name, x, y in zip(names, a, b, strict=True):
            x, y = np.asarray(x), np.asarray(y)
            if x.shape != y.shape or not (_finite(x) and _finite(y)):
                per[name] = {"max_abs_diff": float("inf"), "max_rel_diff": float("inf")}
                continue
            if x.dtype.kind in "fc":
                diff = float(np.max(np.abs(x - y))) if x.size else 0.0
                scale = float(np.max(np.abs(x))) if x.size else 0.0
                rel = diff / max(scale, 1e-12)
            else:
                diff = float(np.count_nonzero(x != y))
                rel = diff / max(x.size, 1)
            cur = per.setdefault(
                name, {"max_abs_diff": 0.0, "max_rel_diff": 0.0, "rel_tol": _rel_tol(x.dtype)}
            )
            cur["max_abs_diff"] = max(cur["max_abs_diff"], diff)
            cur["max_rel_diff"] = max(cur["max_rel_diff"], rel)
    max_abs = max((v["max_abs_diff"] for v in per.values()), default=0.0)
    max_rel = max((v["max_rel_diff"] for v in per.values()), default=0.0)
    ok = all(
        v["max_rel_diff"] <= v.get("rel_tol", REL_TOL) or v["max_abs_diff"] <= ABS_TOL
        for v in per.values()
    )
    status = "exact" if ok else "failed"
    if approximate and all(np.isfinite(v["max_abs_diff"]) for v in per.values()):
        status = "approximate"
    if status == "failed":
        log.warning("parity failed: %s", per)
    if not used:
        raise CalibrationError(
            "the model gives no finite output on random inputs, so parity needs real ones: "
            "give them with --calib (or --input-shape if a size is wrong)"
        )
    return ParityResult(status, max_abs, max_rel, per, used, note=note)


def quantized_activations(model: onnx.ModelProto) -> bool:
    """Whether ``model`` quantizes activations (QuantizeLinear of a computed tensor)."""
    inits = {t.name for t in model.graph.initializer}
    return any(n.op_type == "QuantizeLinear" and n.input[0] not in inits for n in model.graph.node)


def float_path(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` whose activation QuantizeLinear -> DequantizeLinear pairs pass the
    float through. Rounding an activation to its quantization step turns a last-bit
    difference of summation order (fewer terms summed, not the same terms plus zeros) into
    a whole step, which later layers amplify; without the rounding, the pruned and the
    masked model must agree to float precision, which is what parity proves. Weight
    DequantizeLinear nodes stay: the pruned integer weights are what is checked."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    inits = {t.name for t in copy.graph.initializer}
    quantized = {
        n.output[0]: n.input[0]
        for n in copy.graph.node
        if n.op_type == "QuantizeLinear" and n.input[0] not in inits
    }
    for n in copy.graph.node:
        if n.op_type == "DequantizeLinear" and n.input[0] in quantized:
            source = quantized[n.input[0]]
            n.op_type = "Identity"
            del n.input[:]
            n.input.append(source)
            del n.attribute[:]
    return copy


def _rel_tol(dtype: np.dtype) -> float:
    if np.dtype(dtype).kind != "f":
        return REL_TOL
    return max(REL_TOL, ULPS * float(np.finfo(dtype).eps))


def _finite(x: np.ndarray) -> bool:
    return x.dtype.kind not in "fc" or bool(np.isfinite(x).all())
