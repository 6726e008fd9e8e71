"""The pruning pipeline as one call: load → analyze → (calibrate) → score → plan → passes
(rewrite, export, validate) → evaluate. ``PruneOptions`` (graphprune.options) decides every
step; ``build_pipeline`` assembles the passes from it and the ``PassManager`` runs them."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from graphprune.passes.base import Pass, PassContext, PassManager, PassRecord
from graphprune.passes.drop_blocks import DropBlocks
from graphprune.passes.export import Export
from graphprune.passes.mask_units import MaskReference
from graphprune.passes.parity import Parity
from graphprune.passes.reconstructions import (
    RECONSTRUCTIONS,
    ApplyReconstruction,
    FitReconstruction,
)
from graphprune.passes.refold_counts import RefoldCounts
from graphprune.passes.removal import ComputeRemoval
from graphprune.passes.slice_constants import SliceConstants

from . import sensitivity, weights
from .allocate import Allocator
from .analysis.groups import Analysis, analyze
from .calibration import (
    calibration_feeds,
    check_memory,
    criterion_statistics,
    memory_estimate,
)
from .cost import CostModel
from .criteria import CRITERIA, score_groups
from .depth import select_blocks
from .errors import PlanError, UsageError
from .evaluate import accuracy, load_data, output_deviation, run_outputs
from .graph import import_graph, infer_shapes, load_model, static_inputs
from .knockout import model_outputs
from .layers import layer_rows
from .memory import run_estimate
from .metrics import summarize
from .options import PruneOptions
from .outcome import check_options_match, check_plan_removes
from .plan import Plan
from .progress import stage
from .shapes import InputShapes, macs_at, resolve
from .validate import ParityResult, check_input, random_feed, run_error

__all__ = ["PruneOptions", "PruneResult", "analyze_model", "build_pipeline", "prune_model"]


@dataclass
class PruneResult:
    model: onnx.ModelProto
    plan: Plan
    analysis: Analysis
    parity: ParityResult
    before: dict
    after: dict
    timings: dict
    passes: list[PassRecord] = field(default_factory=list)
    evaluation: dict = field(default_factory=dict)  # "eval" / "accuracy" with --eval
    calibration_batches: int = 0
    shapes: InputShapes | None = None  # the input sizes MACs and parity used
    layers: list[dict] = field(default_factory=list)  # graphprune.layers.layer_rows
    #: the calibration batches (static quantization calibrates on them again)
    feeds: list = field(default_factory=list)
    #: the run's estimated peak memory in bytes, by part (graphprune.memory.run_estimate)
    memory: dict = field(default_factory=dict)

    @property
    def sample(self) -> dict | None:
        """The first calibration batch (what ``--bench`` times on)."""
        return self.feeds[0] if self.feeds else None


def opset_of(model: onnx.ModelProto) -> int:
    for op in model.opset_import:
        if op.domain in ("", "ai.onnx"):
            return int(op.version)
    return 1


def analyze_model(model: onnx.ModelProto | str | Path, exclude=(), gqa: str = "kv") -> Analysis:
    if not isinstance(model, onnx.ModelProto):
        model = load_model(model)
    o = PruneOptions(gqa=gqa, exclude=exclude)  # the same checks and forms as prune
    return analyze(import_graph(model), opset_of(model), o.exclude, o.gqa)


def build_pipeline(opts: PruneOptions) -> list[Pass]:
    """The passes a prune with ``opts`` runs, in order."""
    recon = RECONSTRUCTIONS[opts.reconstruct]
    passes: list[Pass] = [ComputeRemoval()]
    if opts.parity:
        passes.append(MaskReference())
    if recon.name != "none":
        passes.append(FitReconstruction(recon))
    passes += [RefoldCounts(), SliceConstants(), DropBlocks(), Export(), Parity()]
    if recon.name != "none":
        passes += [
            ApplyReconstruction(recon),
            Export(after_reconstruction=True),
            Parity(after_reconstruction=True),
        ]
    return passes


def prune_model(
    model: onnx.ModelProto | str | Path,
    options: PruneOptions | None = None,
    plan: Plan | str | Path | None = None,
    dry_run: bool = False,
) -> PruneResult:
    """Prune ``model`` (a path or a ModelProto) as ``options`` say: by a new plan, or by
    ``plan`` (a Plan or a saved plan's path; the same as ``options.plan``) replayed. With
    ``dry_run`` it stops once the plan is made: ``result.model`` is None and ``after``
    holds the params and MACs the plan predicts (``after["predicted"]`` is True)."""
    opts = options or PruneOptions()
    if plan is not None:
        opts = PruneOptions(**{**vars(opts), "plan": plan})
    from . import cluster  # --ray: join or start Ray (calibration is sharded); else off

    cluster.use(opts.ray)
    t = {"start": time.perf_counter()}
    stage("load")
    file_bytes = None
    if not isinstance(model, onnx.ModelProto):
        file_bytes = Path(model).stat().st_size if Path(model).is_file() else None
        model = load_model(model)
        if file_bytes is not None:  # and the weights beside it
            file_bytes += weights.external_bytes(model)
    given_plan = opts.plan
    if isinstance(given_plan, str | Path):
        given_plan = Plan.load(given_plan)
    feeds = calibration_feeds(opts.calib, model) if opts.calib is not None else []
    eval_data = load_data(opts.eval, model) if opts.eval is not None else None
    stage("input check")
    shapes = input_shapes(model, opts, given_plan, feeds, eval_data)
    t["load"] = time.perf_counter()
    given_value_info = list(model.graph.value_info)
    stage("shape inference")
    infer_shapes(model)  # fills value_info in place (restored below)
    try:
        before = summarize(model, with_bytes=file_bytes is None)
        if shapes.symbolic:
            before["macs"] = macs_at(model, shapes)
        if file_bytes is not None:  # measuring a freshly parsed 100 MB proto costs ~0.2 s
            before["bytes"] = file_bytes
        stage("analysis")
        graph = import_graph(model, inferred=True)
        gqa = given_plan.gqa if given_plan is not None else opts.gqa
        analysis = analyze(graph, opset_of(model), tuple(opts.exclude), gqa)
        if given_plan is None:
            check_options_match(analysis, opts, model)
        t["analyze"] = time.perf_counter()
        stage("calibration")
        memory = _memory_check(model, analysis, opts, feeds)
        acts = criterion_statistics(model, analysis, opts, feeds)
        t["calibrate"] = time.perf_counter()
        stage("planning")
        if given_plan is None:
            given_plan = _new_plan(model, analysis, opts, acts, feeds, shapes)
        check_plan_removes(given_plan, analysis, opts, model)
        given_plan.gqa = gqa
        given_plan.input_shapes = {n: list(s) for n, s in shapes.shapes.items()}
        layers = layer_rows(analysis, given_plan)
        t["plan"] = time.perf_counter()
        if dry_run:
            keys = list(t)
            return PruneResult(
                None,
                given_plan,
                analysis,
                ParityResult("skipped"),
                before,
                predicted_after(analysis, given_plan, before),
                {k: t[k] - t[p] for p, k in zip(keys, keys[1:], strict=False)},
                calibration_batches=len(feeds),
                shapes=shapes,
                layers=layers,
                feeds=feeds,
                memory=memory,
            )
        parity_feeds = opts.parity_feeds if opts.parity_feeds is not None else feeds[:4]
        ctx = PassContext(
            analysis=analysis,
            original=model,
            options=opts,
            plan=given_plan,
            acts=acts,
            feeds=feeds,
            parity_feeds=parity_feeds,
            keep_value_info=bool(given_value_info),
            shapes=shapes,
        )
        records = PassManager(build_pipeline(opts)).run(graph, ctx)
        t["passes"] = time.perf_counter()
    finally:
        del model.graph.value_info[:]
        model.graph.value_info.extend(given_value_info)
    stage("evaluation")
    evaluation = _evaluate(model, ctx.pruned, eval_data, opts.eval) if eval_data else {}
    t["evaluate"] = time.perf_counter()
    keys = list(t)
    timings = {k: t[k] - t[p] for p, k in zip(keys, keys[1:], strict=False)}
    return PruneResult(
        ctx.pruned,
        given_plan,
        analysis,
        ctx.parity,
        before,
        ctx.after,
        timings,
        records,
        evaluation,
        len(feeds),
        shapes,
        layers,
        feeds,
        memory,
    )


def predicted_after(analysis: Analysis, plan: Plan, before: dict) -> dict:
    """Params and MACs the plan leaves, from the cost model (what ``--dry-run`` shows):
    what the removed units' terms cost is taken off the measured totals."""
    cost = CostModel(analysis)
    by_key = {g.key: g for g in analysis.groups}
    labels = [by_key[gp.key].unit_labels[gp.remove] for gp in plan.groups if gp.key in by_key]
    removed = np.concatenate(labels) if labels else np.zeros(0, int)
    out = {"predicted": True, "bytes": None}
    full, left = cost.cost(np.zeros(0, int), "params"), cost.cost(removed, "params")
    out["params"] = int(round(before["params"] - (full - left)))
    full, left = cost.cost(np.zeros(0, int), "macs"), cost.cost(removed, "macs")
    # the cost model's MACs may be at other input sizes than the measured total: its ratio
    out["macs"] = int(round(before["macs"] * left / full)) if full else before["macs"]
    return out


def input_shapes(model, opts: PruneOptions, plan: Plan | None, feeds, eval_data) -> InputShapes:
    """The input model checked (it loads in ONNX Runtime, exit 3 if not) and the size of
    every input: given, from a replayed plan, from the data, or probed on the original."""
    data = feeds[0] if feeds else (eval_data[0] if eval_data else None)
    given = opts.input_shape or (plan is not None and plan.input_shapes)
    probe = given or not static_inputs(model)
    sess = check_input(model, load=opts.parity or bool(probe))

    scalars = {k: v for k, v in (data or {}).items() if np.ndim(v) == 0}

    def error_at(shape_map) -> str | None:
        rng = np.random.default_rng(opts.seed)
        return run_error(sess, random_feed(model, sess, shape_map, rng, scalars))

    def at(given):
        return resolve(model, given, data, lambda shapes: error_at(shapes) is None, error_at)

    if opts.input_shape or plan is None or not plan.input_shapes:
        return at(opts.input_shape)
    try:  # the sizes a replayed plan was made at
        return at({n: tuple(s) for n, s in plan.input_shapes.items()})
    except UsageError as e:
        raise PlanError(f"the plan was made for another model's inputs ({e})") from e


def _memory_check(model, analysis: Analysis, opts: PruneOptions, feeds: list) -> dict:
    """The run's estimated peak memory (``graphprune.memory``); what calibration will need
    is checked against what the machine has first (``ResourceError``, exit 10, before any
    calibration pass). lsq's Gram rows are captured after the plan, streamed
    (``passes.reconstruct.lsq_updates``)."""
    calibration = memory_estimate(model, analysis, opts, feeds)
    check_memory(calibration)
    return run_estimate(model, opts.parity, calibration)


def _new_plan(model, analysis: Analysis, opts: PruneOptions, acts, feeds, shapes=None) -> Plan:
    knockout = None
    if "outputs" in CRITERIA[opts.criterion].needs and feeds:
        knockout = (feeds, model_outputs(model, feeds))
    scores = score_groups(
        analysis, opts.criterion, opts.seed, acts, knockout, opts.damping, opts.hidden > 0
    )
    drop = select_blocks(analysis, opts, model, feeds)
    opts, latency, auto = _latency_setup(model, analysis, opts, feeds, shapes)
    allocator = Allocator(analysis, scores, opts, [b.group for b in drop], latency)
    if opts.allocate == "sensitivity":
        stage("sensitivity")
        allocator.use_sensitivity(sensitivity.measure(model, allocator, feeds))
    plan = allocator.plan()
    if auto:  # --round-to auto: the multiple it resolved to
        plan.budget["round_to"] = opts.round_to
    return plan


def _latency_setup(model, analysis: Analysis, opts: PruneOptions, feeds, shapes):
    """``--round-to auto`` resolved (measured, cached: ``graphprune.latency``) into the
    options the allocator reads, and for a latency target the latency model, made when the
    allocator first prices a candidate. Returns (options, latency, whether round-to was
    auto)."""
    budget = opts.budget
    wants_latency = budget is not None and budget[0] in ("latency", "latency_ms")
    if opts.round_to != "auto" and not wants_latency:
        return opts, None, False
    from dataclasses import replace

    from . import latency as lat

    if shapes is None:  # the sizes prune resolved (asked again only when not handed over)
        shapes = input_shapes(model, opts, None, feeds, None)
    sizes = dict(shapes.shapes)
    threads = opts.threads[0] if opts.threads else 1
    auto = opts.round_to == "auto"
    if auto:
        opts = replace(opts, round_to=lat.resolve_round_to(model, sizes, threads))
    if not wants_latency:
        return opts, None, auto

    def make(allocator):
        return lat.latency_model(model, analysis, allocator, sizes, threads, opset_of(model))

    return opts, make, auto


def _evaluate(original, pruned, data, source) -> dict:
    """Each model runs once on the held-out data: output deviation, and accuracy with
    labels."""
    arrays, labels = data
    name = str(source) if not isinstance(source, dict) else "arrays"
    before_out, after_out = run_outputs(original, arrays), run_outputs(pruned, arrays)
    out = {"eval": {"data": name, **output_deviation(before_out, after_out)}}
    if labels is not None:
        out["accuracy"] = {
            "data": name,
            "samples": len(before_out),
            "before": accuracy(before_out, labels),
            "after": accuracy(after_out, labels),
        }
    return out
