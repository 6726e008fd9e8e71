"""The pruning pipeline as one call: load → analyze → score → plan → rewrite → validate."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from graphprune.passes.drop_blocks import DropBlocks
from graphprune.passes.mask_units import masked_reference
from graphprune.passes.reconstruct import Reconstruct, plan_updates
from graphprune.passes.reconstruct_layerwise import layerwise_updates
from graphprune.passes.refold_counts import RefoldCounts
from graphprune.passes.removal import Removal
from graphprune.passes.slice_constants import SliceConstants

from .allocate import kind_global_plan, plan_for_target
from .analysis.groups import Analysis, analyze
from .calibration import capture
from .depth import Block, calibrate_blocks, choose_blocks, find_blocks
from .errors import UsageError
from .graph import check_model, export_model, import_graph, infer_shapes, load_model
from .importance import DATA_CRITERIA, calibration_targets, score_groups
from .knockout import model_outputs
from .metrics import summarize
from .plan import Plan, make_plan, removed_labels
from .validate import ParityResult, compare, session

log = logging.getLogger(__name__)

RECONSTRUCTIONS = ("none", "bias", "lsq", "lsq-seq", "block")


@dataclass
class PruneOptions:
    ratio: float = 0.5
    ratios: dict[str, float] = field(default_factory=dict)  # per group kind
    hidden: float = 0.0  # Minitron width: normalised groups (approximate parity)
    drop_layers: int = 0  # depth: drop this many lowest-scored attention/MLP sub-blocks
    drop_list: tuple[int, ...] = ()  # ... or exactly these blocks (``find_blocks`` indices)
    gqa: str = "kv"  # GQA unit: "kv" (KV head + its query heads) or "query" (a query slot)
    criterion: str = "l2"
    round_to: int = 1
    min_keep: int = 1
    exclude: tuple[str, ...] = ()
    seed: int = 0
    parity: bool = True
    parity_feeds: list = field(default_factory=list)
    calib: list = field(default_factory=list)  # feed dicts for data-driven criteria
    reconstruct: str = "none"  # one of RECONSTRUCTIONS; all but "none" need calib
    damping: float = 0.01  # lsq / obs: ridge on Σ_KK / H, relative to its mean diagonal
    target_macs: float | None = None  # keep this fraction of the MACs (within 2%)
    target_params: float | None = None  # keep this fraction of the parameters
    global_rank: bool = False  # one threshold over all units' group-normalised scores


@dataclass
class PruneResult:
    model: onnx.ModelProto
    plan: Plan
    analysis: Analysis
    parity: ParityResult
    before: dict
    after: dict
    timings: dict


def opset_of(model: onnx.ModelProto) -> int:
    for op in model.opset_import:
        if op.domain in ("", "ai.onnx"):
            return int(op.version)
    return 1


def analyze_model(model: onnx.ModelProto | str | Path, exclude=(), gqa: str = "kv") -> Analysis:
    if not isinstance(model, onnx.ModelProto):
        model = load_model(model)
    return analyze(import_graph(model), opset_of(model), tuple(exclude), gqa)


def prune_model(
    model: onnx.ModelProto | str | Path,
    options: PruneOptions | None = None,
    plan: Plan | None = None,
) -> PruneResult:
    """Prune ``model`` by ``plan`` (replayed) or by a new plan made from ``options``."""
    opts = options or PruneOptions()
    t = {"start": time.perf_counter()}
    file_bytes = None
    if not isinstance(model, onnx.ModelProto):
        file_bytes = Path(model).stat().st_size if Path(model).is_file() else None
        model = load_model(model)
    t["load"] = time.perf_counter()
    opset = opset_of(model)
    given_value_info = list(model.graph.value_info)
    infer_shapes(model)  # fills value_info in place (restored below)
    before = summarize(model, with_bytes=file_bytes is None)
    if file_bytes is not None:  # measuring a freshly parsed 100 MB proto costs ~0.2 s
        before["bytes"] = file_bytes
    graph = import_graph(model, inferred=True)
    gqa = plan.gqa if plan is not None else opts.gqa
    if gqa not in ("kv", "query"):
        raise UsageError(f"--gqa must be 'kv' or 'query', got {gqa!r}")
    analysis = analyze(graph, opset, tuple(opts.exclude), gqa)
    t["analyze"] = time.perf_counter()
    if opts.reconstruct not in RECONSTRUCTIONS:
        raise UsageError(f"--reconstruct must be one of {', '.join(RECONSTRUCTIONS)}")
    acts = _activations(model, analysis, opts, scoring=plan is None)
    if plan is None:
        plan = _new_plan(model, analysis, opts, acts)
    plan.gqa = gqa
    t["plan"] = time.perf_counter()
    removal = Removal(analysis, removed_labels(plan, analysis))
    reference = masked_reference(removal) if opts.parity else None
    if opts.reconstruct == "lsq-seq":
        updates = layerwise_updates(removal, model, opts.calib, opts.damping)
    elif opts.reconstruct == "block":  # one-shot lsq, then MLP blocks refined layer by layer
        start = plan_updates(removal, acts, "lsq", opts.damping)
        updates = layerwise_updates(removal, model, opts.calib, opts.damping, start)
    elif opts.reconstruct != "none":
        updates = plan_updates(removal, acts, opts.reconstruct, opts.damping)
    else:
        updates = []
    t["mask"] = time.perf_counter()
    for p in (RefoldCounts(), SliceConstants(), DropBlocks()):
        res = p.run(removal)
        log.info("pass %s: %s", res.name, res.detail or ("changed" if res.modified else "-"))

    def finish():
        out = export_model(graph, template=model)
        check_model(out, original=model)
        counts = summarize(out)
        if not given_value_info:
            # Same kind of file as the input: ORT fuses differently when intermediate shapes
            # are annotated (Add+LayerNorm -> SkipLayerNormalization, slower on some CPUs),
            # so a file that came without them goes out without them.
            del out.graph.value_info[:]
        return out, counts

    pruned, after = finish()
    t["rewrite"] = time.perf_counter()
    approximate = any(gp.approximate for gp in plan.groups)
    if reference is not None:  # mask-equivalence: the plan before any reconstruction
        parity = compare(
            reference, pruned, feeds=opts.parity_feeds, seed=opts.seed, approximate=approximate
        )
    else:
        session(pruned)  # it must at least load
        parity = ParityResult("skipped")
    if updates and parity.status != "failed":
        res = Reconstruct().run(removal, updates)
        log.info("pass %s: %s", res.name, res.detail)
        pruned, after = finish()
        if reference is not None:  # the function changed on purpose: measure by how much
            checked = parity.status
            parity = compare(
                reference, pruned, feeds=opts.parity_feeds, seed=opts.seed, approximate=True
            )
            parity.mask_check = checked
    del model.graph.value_info[:]
    model.graph.value_info.extend(given_value_info)
    t["parity"] = time.perf_counter()
    keys = list(t)
    timings = {k: t[k] - t[p] for p, k in zip(keys, keys[1:], strict=False)}
    return PruneResult(pruned, plan, analysis, parity, before, after, timings)


def _activations(model, analysis: Analysis, opts: PruneOptions, scoring: bool):
    """Calibration statistics, captured once, when the criterion (if a plan is being made)
    or the reconstruction needs them; obs uses them when given, else runs data-free."""
    required = (scoring and opts.criterion in DATA_CRITERIA) or opts.reconstruct != "none"
    if required and not opts.calib:
        what = (
            f"--criterion {opts.criterion}"
            if scoring and opts.criterion in DATA_CRITERIA
            else f"--reconstruct {opts.reconstruct}"
        )
        raise UsageError(f"{what} needs calibration data (--calib)")
    scoring_data = scoring and (
        opts.criterion in DATA_CRITERIA or (opts.criterion == "obs" and bool(opts.calib))
    )
    if not (scoring_data or opts.reconstruct in ("bias", "lsq", "block")):
        return None  # lsq-seq captures its own statistics, wave by wave
    gram = opts.reconstruct in ("lsq", "block") or opts.criterion == "obs"
    targets = calibration_targets(analysis, width=opts.hidden > 0)
    return capture(model, opts.calib, targets, gram=gram)


def _new_plan(model, analysis: Analysis, opts: PruneOptions, acts) -> Plan:
    knockout = None
    if opts.criterion == "knockout":
        knockout = (opts.calib, model_outputs(model, opts.calib))
    scores = score_groups(
        analysis, opts.criterion, opts.seed, acts, knockout, opts.damping, opts.hidden > 0
    )
    drop = select_blocks(analysis, opts, model)
    budget = _budget(opts)
    if budget is None and opts.global_rank:
        return kind_global_plan(
            analysis,
            scores,
            opts.ratio,
            opts.ratios,
            round_to=opts.round_to,
            min_keep=opts.min_keep,
            criterion=opts.criterion,
            hidden=opts.hidden,
            drop=[b.group for b in drop],
        )
    if budget is None:
        return make_plan(
            analysis,
            scores,
            opts.ratio,
            opts.round_to,
            opts.min_keep,
            opts.criterion,
            opts.ratios,
            opts.hidden,
            [b.group for b in drop],
        )
    return plan_for_target(
        analysis,
        scores,
        *budget,
        global_rank=opts.global_rank,
        ratio=opts.ratio,
        ratios=opts.ratios,
        round_to=opts.round_to,
        min_keep=opts.min_keep,
        criterion=opts.criterion,
        hidden=opts.hidden,
        drop=[b.group for b in drop],
    )


def _budget(opts: PruneOptions) -> tuple[str, float] | None:
    """(what, fraction kept) the plan must reach, if any."""
    if opts.target_macs is not None and opts.target_params is not None:
        raise UsageError("give --target-macs or --target-params, not both")
    if opts.target_macs is not None:
        return "macs", opts.target_macs
    if opts.target_params is not None:
        return "params", opts.target_params
    return None


def select_blocks(analysis: Analysis, opts: PruneOptions, model=None) -> list[Block]:
    if not (opts.drop_layers or opts.drop_list):
        return []
    blocks = find_blocks(analysis)
    if opts.calib and model is not None and blocks and not opts.drop_list:  # else unused
        calibrate_blocks(blocks, model, opts.calib)
    bad = [i for i in opts.drop_list if not 0 <= i < len(blocks)]
    if bad:
        raise UsageError(
            f"--drop-layers-list: no block {bad[0]} (this model has "
            f"{len(blocks)} droppable blocks; see `graphprune analyze`)"
        )
    if opts.drop_layers > len(blocks):
        raise UsageError(
            f"--drop-layers {opts.drop_layers}: this model has only {len(blocks)} droppable blocks"
        )
    return choose_blocks(blocks, opts.drop_layers, opts.drop_list)


def check_ratio(name: str, value: float) -> None:
    if not (0.0 <= value < 1.0) or np.isnan(value):
        raise UsageError(f"{name} must be in [0, 1), got {value}")
