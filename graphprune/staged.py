"""Runs of a model that is rebuilt wave by wave, each reusing what earlier runs computed.

The layer-by-layer refits (``lsq-seq``, ``block``) run the model pruned so far before each
wave of consumers is refitted. Run from its inputs every time, the model's first layer is
computed once per wave, the last once: for L layers about L/2 full passes over the data.
Here a run keeps, per calibration batch, the values of the tensors that no later wave
changes (upstream of every node a later wave modifies) where a later run's walk back from
its targets stops. The next run starts from those values, so each layer runs about once.

The waves are known up front: for each, the names of the tensors its modified nodes write
(``changes``) and the names it captures (``targets``). A value is kept only while it
cannot change; held values past ``budget`` bytes are dropped, and runs start from the
inputs again.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx

from .calibration import _probe_session, chunk_budget, needed_nodes, node_reads, producers
from .errors import CalibrationError

log = logging.getLogger(__name__)


def _downstream(graph, seeds: set[str]) -> set[str] | None:
    """Names computed from ``seeds`` (included), or from any weight a node writing a seed
    reads (a shared weight changes every reader); None where a seed is not in the graph."""
    producer = producers(graph)
    if any(s not in producer for s in seeds):
        return None
    inits = {t.name for t in graph.initializer}
    changed = {i for s in seeds for i in graph.node[producer[s]].input if i in inits}
    tainted = set(seeds)
    for n in graph.node:  # graph order is topological
        if any(i in tainted or i in changed for i in node_reads(n)):
            tainted.update(o for o in n.output if o)
    return tainted


class StagedRuns:
    """Per-batch values of one model's tensors, over the waves of a layer-by-layer refit."""

    def __init__(
        self,
        feeds: list[dict],
        changes: list[set[str]],
        targets: list[list[str]],
        budget: int | None = None,
    ):
        self.feeds, self.changes, self.targets = feeds, changes, targets
        self.budget = chunk_budget() if budget is None else budget
        self.held: list[dict[str, np.ndarray]] = [{} for _ in feeds]
        self.enabled = True

    def begin(self, model: onnx.ModelProto, wave: int, names: list[str]) -> StagedRun:
        """The run of ``model``, the model of wave ``wave`` (every earlier wave's change
        applied, none of its own), that gives ``names`` on each feed; call its
        ``values(k)`` for every feed ``k`` in order, then ``finish()``."""
        graph = model.graph
        producer = producers(graph)
        held = set(self.held[0]) if self.enabled and self.held else set()
        nodes, starts = needed_nodes(graph, names, held, producer)
        keep = self._to_keep(graph, producer, wave, nodes, held)
        outputs = sorted((set(names) | keep) - held)
        dtypes = {n: self.held[0][n].dtype for n in starts}
        sess = _probe_session(model, outputs, dtypes) if outputs else None
        log.debug("staged run of wave %d: %d of %d nodes", wave, len(nodes), len(graph.node))
        return StagedRun(self, sess, outputs, names, keep, len(nodes))

    def _to_keep(self, graph, producer, wave, nodes, held) -> set[str]:
        """Values computed by this run or held from earlier ones that no later change
        touches, where a later run's walk back from its targets stops."""
        if not self.enabled or wave + 1 >= len(self.targets):
            return set()
        tainted = _downstream(graph, set().union(*self.changes[wave:]))
        if tainted is None:
            self.enabled = False
            return set()
        computed = {o for k in nodes for o in graph.node[k].output if o} | held
        later = [n for t in self.targets[wave + 1 :] for n in t]
        return needed_nodes(graph, later, computed - tainted, producer)[1]


class StagedRun:
    """One model's run over the feeds, keeping what later runs start from."""

    def __init__(self, runs: StagedRuns, sess, outputs, names, keep: set[str], node_count: int):
        self.runs, self.sess, self.outputs, self.names, self.keep = runs, sess, outputs, names, keep
        self.inputs = [i.name for i in sess.get_inputs()] if sess is not None else []
        self.new_held: list[dict] = []
        self.node_count = node_count  # nodes this run computes

    def __len__(self) -> int:
        return len(self.runs.feeds)

    def values(self, k: int) -> dict[str, np.ndarray]:
        """``{name: value}`` on feed ``k`` (feeds in order)."""
        old, feed, got = self.runs.held[k], self.runs.feeds[k], {}
        if self.sess is not None:
            given = {n: old[n] if n in old else feed[n] for n in self.inputs}
            try:
                got = dict(zip(self.outputs, self.sess.run(self.outputs, given), strict=True))
            except Exception as e:
                raise CalibrationError(
                    f"calibration batch {k}: the model cannot run it ({e})"
                ) from e
        self.new_held.append({n: got[n] if n in got else old[n] for n in self.keep})
        return {n: got[n] if n in got else old[n] for n in self.names}

    def finish(self) -> None:
        """Hold this run's kept values for the next run (none past the budget)."""
        runs = self.runs
        size = sum(v.nbytes for h in self.new_held for v in h.values())
        if size > runs.budget:
            log.info("staged runs: held values (%d bytes) over the budget; runs start over", size)
            runs.enabled = False
        runs.held = self.new_held if runs.enabled else [{} for _ in runs.feeds]
