"""Pass protocol and pass manager.

A pass is a small class with a ``name``, the context facts it ``requires`` (attributes of
``PassContext`` that must be set before it runs) and ``run(graph, ctx) -> PassResult``. The
manager runs a pipeline in order, times each pass, keeps a record of each, and makes every
error raised inside a pass carry the pass name.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import onnx_graphsurgeon as gs

from graphprune.errors import GraphpruneError, PassFailed
from graphprune.progress import stage

log = logging.getLogger(__name__)


@dataclass
class PassResult:
    modified: bool  # the graph changed
    detail: str = ""  # what it did, in a few words


@dataclass
class PassRecord:
    name: str
    seconds: float
    modified: bool
    detail: str

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "seconds": round(self.seconds, 4),
            "modified": self.modified,
            "detail": self.detail,
        }


@dataclass
class PassContext:
    """What passes share: the analysis and the plan going in, and what passes leave for
    later ones (the removal, the masked reference, reconstruction updates, the exported
    model and its counts, the parity verdict)."""

    analysis: object
    original: object  # onnx.ModelProto as loaded (with inferred shapes while passes run)
    options: object  # PruneOptions
    plan: object  # Plan
    acts: object = None  # calibration Activations, when captured
    feeds: list = field(default_factory=list)  # calibration feed dicts
    parity_feeds: list = field(default_factory=list)  # fed to parity besides random inputs
    keep_value_info: bool = True  # the input carried intermediate shapes
    shapes: object = None  # InputShapes: MACs are counted and parity runs at these
    reconstructed: bool = False  # a reconstruct-X pass changed the pruned graph
    removal: object = None
    reference: object = None  # the masked original (parity)
    updates: dict = field(default_factory=dict)  # reconstruction name -> updates
    pruned: object = None  # the exported onnx.ModelProto
    after: dict | None = None  # its params / MACs / bytes
    parity: object = None  # ParityResult
    fit_times: dict = field(default_factory=dict)  # a reconstruction's stage -> seconds


class Pass:
    name = ""
    requires: tuple[str, ...] = ()

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:  # pragma: no cover
        raise NotImplementedError


class PassManager:
    def __init__(self, passes: list[Pass]):
        self.passes = passes
        self.records: list[PassRecord] = []

    def run(self, graph: gs.Graph, ctx: PassContext) -> list[PassRecord]:
        for p in self.passes:
            missing = [r for r in p.requires if getattr(ctx, r, None) is None]
            if missing:
                raise PassFailed(p.name, RuntimeError(f"needs {', '.join(missing)} first"))
            start = time.perf_counter()
            stage(f"pass {p.name}")
            try:
                res = p.run(graph, ctx)
            except GraphpruneError as e:
                e.pass_name = p.name
                e.args = (f"{p.name}: {e}", *e.args[1:])
                raise
            except Exception as e:
                raise PassFailed(p.name, e) from e
            rec = PassRecord(p.name, time.perf_counter() - start, res.modified, res.detail)
            self.records.append(rec)
            log.info("pass %s: %s (%.3f s)", rec.name, rec.detail or "-", rec.seconds)
        return self.records
