"""Layer-by-layer least squares (``--reconstruct lsq-seq``).

One-shot ``lsq`` regresses each consumer's removed inputs on its kept ones as the *original*
model computes them. Here the consumers are refitted in waves, in graph order: before a
wave, the model pruned so far (the masked copy, with every earlier refit applied) and the
original run on the same calibration batches, and each consumer's full original input X
is regressed on the kept inputs X̃_K the pruned model really delivers (``X ≈ Aᵀ X̃_K + c``).
A later layer thus also corrects, as far as a linear map can, the drift the earlier
removals left in its kept inputs. A wave holds consumers none of which feeds another, so
one pass over the data serves it; the result is the same ``Update`` list the one-shot mode
makes, applied by the ``Reconstruct`` pass.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from graphprune.calibration import capture_joint
from graphprune.progress import advance, timed
from graphprune.staged import StagedRuns

from .mask_units import masked_graph
from .reconstruct import (
    Update,
    add_to_outputs,
    add_to_weight,
    full_delta,
    make_update,
    refittable,
    regression,
)
from .reconstruct_block import block_updates, capture_names, find_block
from .removal import Removal

log = logging.getLogger(__name__)


def _downstream(node: gs.Node) -> set[str]:
    """Names of every tensor computed from ``node``'s outputs."""
    seen: set[str] = set()
    todo = list(node.outputs)
    while todo:
        t = todo.pop()
        if t.name in seen:
            continue
        seen.add(t.name)
        for consumer in t.outputs:
            todo.extend(consumer.outputs)
    return seen


def waves(graph: gs.Graph, contractions: list) -> list[list]:
    """Contractions in graph order, cut into runs in which no consumer feeds another."""
    order = {id(n): i for i, n in enumerate(graph.nodes)}
    out: list[list] = []
    reach: set[str] = set()
    for c in sorted(contractions, key=lambda c: order[id(c.node)]):
        if not out or c.act.tensor in reach:
            out.append([])
            reach = set()
        out[-1].append(c)
        reach |= _downstream(c.node)
    return out


def _apply_full_size(copy: gs.Graph, node: gs.Node, up: Update, removal: Removal) -> None:
    """Apply ``up`` to the masked copy's ``node`` (tensors at their original sizes)."""
    if up.weight is not None:
        add_to_weight(node, up.slot, full_delta(up, removal))
    add_to_outputs(copy, node, up.bias)


def layerwise_updates(
    removal: Removal,
    original: onnx.ModelProto,
    feeds: list[dict],
    damping: float,
    start: list[Update] | None = None,
    times: dict | None = None,
) -> list[Update]:
    """lsq-seq's updates. Given ``start`` (one-shot lsq's updates), those are kept for every
    consumer and only the MLP blocks are refined, layer by layer (``--reconstruct block``).
    ``times`` gathers the seconds spent per stage (capture, fit)."""
    times = {} if times is None else times
    given = {id(up.node): up for up in start} if start is not None else None
    contractions = [
        c
        for c in removal.analysis.contractions
        if refittable(c, removal) and (given is None or id(c.node) in given)
    ]
    if not contractions:
        return []
    copy, node_map = masked_graph(removal)
    out: list[Update] = []
    runs = waves(removal.analysis.graph, contractions)
    blocks = [_blocks(wave, removal, given) for wave in runs]
    staged = _staged_runs(runs, blocks, feeds, given is not None)
    for k, wave in enumerate(runs):
        pair = None
        if staged[0].targets[k]:  # the wave captures: the model pruned so far, exported
            current = gs.export_onnx(copy, do_type_check=False)
            models = (current, original)
            pair = tuple(s.begin(m, k, s.targets[k]) for s, m in zip(staged, models, strict=True))
        if given is None:
            fitted = _regressions(wave, removal, damping, pair, times)
            wave_updates = [up for _, up in fitted]
        else:
            found = blocks[k]
            done = {id(c) for c, _, _ in found}
            wave_updates = [given[id(c.node)] for c in wave if id(c) not in done]
            if found:
                wave_updates += block_updates(found, removal, original, out, pair, times)
        for up in wave_updates:
            _apply_full_size(copy, node_map[id(up.node)], up, removal)
        out += wave_updates
        copy.toposort()
        log.info("layer by layer: wave %d/%d, %d consumers", k + 1, len(runs), len(wave))
        advance("reconstruction", k + 1, len(runs))
    return out


def _blocks(wave: list, removal: Removal, given: dict | None) -> list[tuple]:
    """The wave's ``(contraction, MLP block, its lsq update)`` (``--reconstruct block``)."""
    if given is None:
        return []
    found = [(c, find_block(c, removal), given[id(c.node)]) for c in wave]
    return [f for f in found if f[1] is not None]


def _staged_runs(runs: list[list], blocks: list[list], feeds: list[dict], block_mode: bool):
    """The runs of the model pruned so far and of the original, one per wave, each starting
    from what earlier waves computed (``graphprune.staged``)."""
    changes, cur_targets, orig_targets = [], [], []
    for wave, found in zip(runs, blocks, strict=True):
        nodes = [c.node for c in wave] + [p.node for _, b, _ in found for p in b.producers]
        changes.append({n.outputs[0].name for n in nodes})
        if block_mode:  # a wave without blocks captures nothing
            cur, orig = capture_names(found) if found else ([], [])
        else:
            cur = orig = sorted({c.act.tensor for c in wave})
        cur_targets.append(cur)
        orig_targets.append(orig)
    return StagedRuns(feeds, changes, cur_targets), StagedRuns(feeds, changes, orig_targets)


def _regressions(wave, removal, damping, runs, times) -> list[tuple]:
    """lsq-seq: each consumer's original input regressed on the kept inputs ``current``
    delivers (``runs``: the two models' runs giving the consumers' inputs)."""
    kept = {id(c): np.setdiff1d(np.arange(c.dim.size), removal.of_dim(c.dim)) for c in wave}
    rows: dict[tuple[str, int], np.ndarray] = {}
    for c in wave:  # the kept inputs of every consumer reading the target
        t = (c.act.tensor, c.act.axis)
        rows[t] = np.union1d(rows.get(t, kept[id(c)]), kept[id(c)])
    with timed(times, "capture"):
        stats = capture_joint(runs, list(rows), rows)
    fitted = []
    for c in wave:
        st, k = stats[c.act.tensor, c.act.axis], kept[id(c)]
        at = np.searchsorted(st.rows, k)
        cov, cov_xy = st.cov_x[np.ix_(at, at)], st.cov_xy[at]
        a, shift = regression(cov, cov_xy, st.mean_x[at], st.mean_y, k, damping, True)
        fitted.append((c, make_update(c, k, a, shift)))
    return fitted
