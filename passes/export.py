"""Export the rewritten graph: dead nodes removed, shapes inferred afresh, ``onnx.checker``
passed, params/MACs counted. An input that came without intermediate shape annotations goes
out without them: ONNX Runtime fuses differently when they are present (Add + LayerNorm ->
SkipLayerNormalization, slower on some CPUs)."""

from __future__ import annotations

import onnx

from graphprune.graph import all_graphs, check_model, export_model
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
        hoisted = hoist_subgraph_initializers(out)
        _rename_ort_fusion_names(out)
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
        moved = f", {hoisted} subgraph weights kept in the main graph" if hoisted else ""
        return PassResult(False, f"{len(out.graph.node)} nodes, checker passed{moved}")


#: names ONNX Runtime's MatMulAddFusion gives the shape constants it adds at load time,
#: without checking that no initializer holds them already ("Attempt to replace the
#: existing tensor"); a model fused by ORT's optimizer already has them, and a pruned one
#: can offer the fusion a new MatMul + Add
_ORT_FUSION_NAMES = ("gemm_input_shape", "gemm_output_shape")


def _rename_ort_fusion_names(model: onnx.ModelProto) -> None:
    g = model.graph
    taken = {t.name for t in g.initializer} | {o for n in g.node for o in n.output}
    renamed = {}
    for t in g.initializer:
        if t.name in _ORT_FUSION_NAMES:
            new = f"{t.name}_kept"
            while new in taken:
                new += "_"
            renamed[t.name], t.name = new, new
            taken.add(new)
    if renamed:
        for n in g.node:
            for i, x in enumerate(n.input):
                if x in renamed:
                    n.input[i] = renamed[x]


def hoist_subgraph_initializers(model: onnx.ModelProto) -> int:
    """graphsurgeon exports an outer constant read inside If/Loop branches as an initializer
    of every branch that reads it, so a weight the input held once would be stored once per
    branch. Move such copies back to the main graph (subgraphs see outer names); a name the
    main graph already uses for something else stays where it is. Returns copies moved."""
    main = model.graph
    inits = {t.name: t for t in main.initializer}
    taken = {v.name for v in main.input} | {o for n in main.node for o in n.output}
    moved = 0
    for g in list(all_graphs(main))[1:]:
        inner = {v.name for v in g.input} | {o for n in g.node for o in n.output}
        keep = []
        for t in g.initializer:
            have = inits.get(t.name)
            if t.name in taken or t.name in inner or (have is not None and have != t):
                keep.append(t)
                continue
            if have is None:
                main.initializer.append(t)
                inits[t.name] = main.initializer[-1]
            moved += 1
        if len(keep) != len(g.initializer):
            del g.initializer[:]
            g.initializer.extend(keep)
    return moved
