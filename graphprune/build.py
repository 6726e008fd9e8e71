"""After the prune, what a build step ships: the runtime stages (``graphprune.emit``) made
from the pruned model, each with its size, its quality and, timed together with the
original and the pruned model, its latency.

The last ONNX stage is what ``-o`` receives; the ``.ort`` stage goes beside it.
"""

from __future__ import annotations

import logging

import onnx

from .bench import bench_pruned
from .errors import QualityError
from .evaluate import accuracy, load_data, model_batches, output_deviation, run_outputs
from .graph import load_model
from .options import PruneOptions
from .progress import stage

log = logging.getLogger(__name__)


def wants_stages(opts: PruneOptions) -> bool:
    return opts.optimize or opts.quantize != "none" or opts.emit == "ort"




def finish(original_path, result, opts: PruneOptions) -> tuple[onnx.ModelProto, list, dict]:
    """The model ``-o`` receives, the stages (graphprune.emit.Stage) and the report's
    additions: ``stages`` (size, quality, accuracy with labelled --eval) and, with
    ``--bench`` or any stage, ``bench`` (every ONNX stage timed with the original and the
    pruned model)."""
    extra: dict = {}
    stages: list = []
    final = result.model
    original = None
    if wants_stages(opts):
        from .emit import build_stages

        original = load_model(original_path)
        labelled = load_data(opts.eval, original) if opts.eval is not None else None
        # each stage's outputs are compared on the held-out data, else on calibration
        check = model_batches(original, labelled[0])[:4] if labelled else result.feeds[:4]
        stage("runtime stages")
        stages = build_stages(
            result.model,
            original,
            optimize=opts.optimize,
            quantize=opts.quantize,
            emit=opts.emit,
            calib_feeds=result.feeds,
            check_feeds=check,
        )
        rows = []
        for st in stages:
            row = st.to_dict()
            if labelled is not None and labelled[1] is not None and st.model is not None:
                arrays, labels = labelled
                row["accuracy"] = accuracy(run_outputs(st.model, arrays), labels)
            rows.append(row)
        extra["stages"] = rows
        onnx_stages = [st for st in stages if st.model is not None]
        if onnx_stages:
            final = onnx_stages[-1].model
            if labelled is not None:  # the shipped model against the original, as prune does
                extra["shipped_eval"] = _evaluate(original, final, labelled)
    if opts.bench or stages:
        stage("timing")
        extra["bench"] = bench_pruned(
            original if original is not None else original_path, result, opts, stages
        )
        if stages:  # each stage's row of the table, on the stage itself
            first = _first(extra)
            by_name = {r["model"]: r for r in extra["bench"]["rows"] if r["threads"] == first}
            for row in extra.get("stages", []):
                timed = by_name.get(row["name"])
                if timed is not None:
                    row["latency_ms"] = timed["median_ms"]
                    row["speedup"] = timed["speedup"]
    return final, stages, extra


def _first(extra: dict) -> int:
    rows = extra["bench"]["rows"]
    return rows[0]["threads"] if rows else 1


def ort_bytes(stages) -> bytes | None:
    """The ``.ort`` file, if a stage made one."""
    return next((st.data for st in stages if st.data is not None), None)


def _evaluate(original, final, data) -> dict:
    arrays, labels = data
    before, after = run_outputs(original, arrays), run_outputs(final, arrays)
    out = {"eval": output_deviation(before, after)}
    if labels is not None:
        out["accuracy"] = {"before": accuracy(before, labels), "after": accuracy(after, labels)}
    return out


def shipped_quality(rep: dict) -> dict | None:
    """The quality of the model ``-o`` receives, as ``--min-quality`` reads it: accuracy
    after / before with labels, else the mean cosine of the outputs to the original's."""
    ev = rep.get("shipped_eval") or {k: rep[k] for k in ("eval", "accuracy") if k in rep}
    if "accuracy" in ev:
        acc = ev["accuracy"]
        value = acc["after"] / acc["before"] if acc["before"] else 0.0
        return {"metric": "accuracy after/before", "value": value, **acc}
    if "eval" in ev:
        return {"metric": "mean cosine to the original", "value": ev["eval"]["mean_cosine"]}
    return None


def check_quality(rep: dict, opts: PruneOptions) -> None:
    """Exit 9 when the shipped model is below ``--min-quality``."""
    q = shipped_quality(rep)
    if q is not None:
        rep["quality"] = {**q, "floor": opts.min_quality}
    if opts.min_quality is None or q is None:
        return
    if q["value"] < opts.min_quality:
        raise QualityError(
            f"quality {q['value']:.4f} ({q['metric']}) is below --min-quality "
            f"{opts.min_quality:g}; no model written",
            rep["quality"],
        )
