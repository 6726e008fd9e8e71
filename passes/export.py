"""Export the rewritten graph: dead nodes removed, shapes inferred afresh, ``onnx.checker``
passed, params/MACs counted. An input that came without intermediate shape annotations goes
out without them: ONNX Runtime fuses differently when they are present (Add + LayerNorm ->
SkipLayerNormalization, slower on some CPUs)."""

from __future__ import annotations

import onnx

from graphprune.graph import check_model, export_model
from graphprune.metrics import summarize
from graphprune.shapes import macs_at

from .base import Pass, PassContext, PassResult


class Export(Pass):
    name = "export"

    def __init__(self, after_reconstruction: bool = False):
        self.after_reconstruction = after_reconstruction

    def run(self, graph, ctx: PassContext) -> PassResult:
        if self.after_reconstruction and not ctx.reconstructed:
            return PassResult(False, "skipped: nothing was reconstructed")
        out = export_model(graph, template=ctx.original)
        if out.ir_version < 4:  # IR 3 requires every initializer to be a graph input too
            listed = {i.name for i in out.graph.input}
            out.graph.input.extend(
                onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
                for t in out.graph.initializer
                if t.name not in listed
            )
        check_model(out, original=ctx.original)
        ctx.after = summarize(out)
        if ctx.shapes is not None and ctx.shapes.symbolic:
            ctx.after["macs"] = macs_at(out, ctx.shapes)
        if not ctx.keep_value_info:
            del out.graph.value_info[:]
        ctx.pruned = out
        return PassResult(False, f"{len(out.graph.node)} nodes, checker passed")
