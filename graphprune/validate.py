"""Parity through ONNX Runtime (graph optimisations off): the pruned model against the
original with the same units masked, on random inputs and, when given, calibration feeds."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnxruntime as ort

from .errors import RewriteError

log = logging.getLogger(__name__)

REL_TOL = 1e-4  # relative to the largest reference magnitude of each output
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


def session(
    model: onnx.ModelProto | bytes | str, threads: int = 0, optimize: bool = False
) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if optimize
        else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    src = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    try:
        return ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise RewriteError(f"ONNX Runtime cannot load the model: {e}") from e


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


def random_feeds(
    model: onnx.ModelProto, sess: ort.InferenceSession, n: int = 3, seed: int = 0, batch: int = 2
) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    feeds = []
    for _ in range(n):
        feed = {}
        for inp in sess.get_inputs():
            shape = [
                s if isinstance(s, int) and s > 0 else batch if k == 0 else 8
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
        feeds.append(feed)
    return feeds


@dataclass
class ParityResult:
    status: str  # exact | approximate | failed | skipped
    max_abs_diff: float = 0.0
    max_rel_diff: float = 0.0
    per_output: dict[str, dict[str, float]] = field(default_factory=dict)
    n_inputs: int = 0
    #: with reconstruction: the mask-equivalence verdict of the plan before it
    mask_check: str | None = None

    def to_dict(self) -> dict:
        return {
            "status": self.status,
            "max_abs_diff": self.max_abs_diff,
            "max_rel_diff": self.max_rel_diff,
            "per_output": self.per_output,
            "inputs": self.n_inputs,
            "mask_check": self.mask_check,
        }


def compare(
    reference: onnx.ModelProto,
    pruned: onnx.ModelProto,
    feeds: list[dict[str, np.ndarray]] | None = None,
    n_random: int = 3,
    seed: int = 0,
    approximate: bool = False,
) -> ParityResult:
    """Run both models on the same feeds; ``exact`` when every output agrees to REL_TOL.
    With ``approximate`` (a normalised width was pruned, so the function changed on
    purpose) the verdict is ``approximate`` and the differences are the measured deviation;
    only a shape mismatch fails."""
    ref_sess, new_sess = session(reference), session(pruned)
    all_feeds = random_feeds(reference, ref_sess, n_random, seed) + list(feeds or [])
    names = [o.name for o in ref_sess.get_outputs()]
    per: dict[str, dict[str, float]] = {}
    for feed in all_feeds:
        a = ref_sess.run(names, feed)
        b = new_sess.run(names, feed)
        for name, x, y in zip(names, a, b, strict=True):
            x, y = np.asarray(x), np.asarray(y)
            if x.shape != y.shape:
                per[name] = {"max_abs_diff": float("inf"), "max_rel_diff": float("inf")}
                continue
            if x.dtype.kind in "fc":
                diff = float(np.max(np.abs(x - y))) if x.size else 0.0
                scale = float(np.max(np.abs(x))) if x.size else 0.0
                rel = diff / max(scale, 1e-12)
            else:
                diff = float(np.count_nonzero(x != y))
                rel = diff / max(x.size, 1)
            cur = per.setdefault(name, {"max_abs_diff": 0.0, "max_rel_diff": 0.0})
            cur["max_abs_diff"] = max(cur["max_abs_diff"], diff)
            cur["max_rel_diff"] = max(cur["max_rel_diff"], rel)
    max_abs = max((v["max_abs_diff"] for v in per.values()), default=0.0)
    max_rel = max((v["max_rel_diff"] for v in per.values()), default=0.0)
    ok = all(v["max_rel_diff"] <= REL_TOL or v["max_abs_diff"] <= ABS_TOL for v in per.values())
    status = "exact" if ok else "failed"
    if approximate and all(np.isfinite(v["max_abs_diff"]) for v in per.values()):
        status = "approximate"
    if status == "failed":
        log.warning("parity failed: %s", per)
    return ParityResult(status, max_abs, max_rel, per, len(all_feeds))
