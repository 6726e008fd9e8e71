"""Loading, normalising and saving models; the in-memory IR is onnx-graphsurgeon's Graph."""

from __future__ import annotations

import logging
import os
import re
import tempfile
import threading
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from . import weights
from .errors import ModelLoadError, RewriteError

log = logging.getLogger(__name__)

_TWO_GB = 2**31 - 1


def load_model(path: str | os.PathLike) -> onnx.ModelProto:
    """Read an ONNX file. Weights in external data stay on disk: they are memory-mapped
    when read (``graphprune.weights``); small external tensors are read in."""
    p = Path(path)
    if p.is_dir():
        raise ModelLoadError(f"{p}: is a directory, not an ONNX file")
    if not p.is_file():
        raise ModelLoadError(f"{p}: no such file")
    try:
        model = onnx.load(str(p), load_external_data=False)
    except Exception as e:  # protobuf raises a zoo of types
        raise ModelLoadError(f"{p}: not a readable ONNX model ({type(e).__name__}: {e})") from e
    if not model.graph.node:
        raise ModelLoadError(f"{p}: the model has no nodes")
    weights.open_external(model, p.parent)
    return model


_SKELETON_KEEP = 4096  # initializers up to this many elements keep their data


def _skeleton(model: onnx.ModelProto, large_as_inputs: bool = False) -> onnx.ModelProto:
    """The model without the data of its large initializers: shape inference needs dims and
    small shape constants only, and serialising 100 MB of weights twice costs ~0.5 s.

    ``large_as_inputs`` (for ORT's symbolic inference) declares them as graph inputs of their
    shape instead: symbolic inference reads the value of every initializer an Add, Mul, Sub,
    Div, Where ... takes (to propagate shape arithmetic) and fails on one without data (a
    folded position-embedding constant ``[1, S, D]``), while a graph input is a tensor whose
    value is simply unknown."""
    from .ort_shapes import _has_data

    g = model.graph
    sk = onnx.ModelProto(ir_version=model.ir_version, opset_import=model.opset_import)
    sk.functions.extend(model.functions)
    sg = sk.graph
    sg.node.extend(g.node)
    sg.input.extend(g.input)
    sg.output.extend(g.output)
    sg.value_info.extend(g.value_info)
    declared = {vi.name for vi in g.input}
    for init in g.initializer:
        small = int(np.prod(init.dims)) <= _SKELETON_KEEP
        if weights.is_external(init) and not large_as_inputs:
            sg.initializer.append(init)  # on disk: no data to serialise, and runnable
        elif small and (not large_as_inputs or _has_data(init)):
            sg.initializer.append(init)
        elif large_as_inputs:
            if init.name not in declared:
                sg.input.append(
                    onnx.helper.make_tensor_value_info(init.name, init.data_type, init.dims)
                )
        else:
            sg.initializer.append(
                onnx.TensorProto(name=init.name, data_type=init.data_type, dims=init.dims)
            )
    return sk


def infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Static shape inference with data propagation (so Shape→Reshape chains get shapes).
    Where it leaves a tensor unsized (``view(B, S, -1, H)`` with symbolic B, S) or the graph
    has ONNX Runtime contrib ops, ORT's symbolic shape inference runs too; where a tensor is
    still unsized after both (an op symbolic inference does not know or fails on), the
    shapes come from running the model in ONNX Runtime (``graphprune.ort_shapes``: symbolic
    input dims stay symbolic). Each tensor keeps whichever result knows most of its dims,
    the earlier on a tie. Fills ``model.graph.value_info`` in place and returns ``model``."""
    skeleton = _skeleton(model)
    found: dict[str, onnx.ValueInfoProto] = {}
    try:
        onnx_result = onnx.shape_inference.infer_shapes(skeleton, data_prop=True)
        found = {vi.name: vi for vi in onnx_result.graph.value_info}
    except Exception as e:
        log.warning("onnx shape inference failed (%s)", e)
    io = {vi.name for vi in list(model.graph.input) + list(model.graph.output)}
    if _incomplete(model, found):
        # declared I/O shapes are the contract; never override them
        ran = False
        if static_inputs(model) and _unsized(model, found):
            # every size is known: one ORT run gives them all exactly, where symbolic
            # inference would invent dims (counted as 1) for what data propagation missed
            from .ort_shapes import ort_shapes

            more = ort_shapes(model)
            _merge(found, more, io)
            ran = bool(more)
        if not ran or _unsized(model, found):
            _merge(found, _symbolic_infer(_skeleton(model, large_as_inputs=True)), io)
        unsized = _unsized(model, found)
        if unsized and not ran:
            from .ort_shapes import ort_shapes

            log.info(
                "%d tensors unsized by shape inference (%s ...); reading shapes from an "
                "ONNX Runtime run",
                len(unsized),
                unsized[0],
            )
            _merge(found, ort_shapes(model), io)
    if found:
        del model.graph.value_info[:]
        model.graph.value_info.extend(found.values())
    return model


def all_graphs(graph: onnx.GraphProto):
    """``graph`` and every If/Loop/Scan body inside it, outermost first."""
    yield graph
    for n in graph.node:
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                yield from all_graphs(a.g)
            elif a.type == onnx.AttributeProto.GRAPHS:
                for g in a.graphs:
                    yield from all_graphs(g)


def static_inputs(model: onnx.ModelProto) -> bool:
    """Every fed input (initializers excluded) declares a fixed size for every dim."""
    inits = {t.name for t in model.graph.initializer}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        t = vi.type.tensor_type
        if not t.HasField("shape") or not all(d.HasField("dim_value") for d in t.shape.dim):
            return False
    return True


def _merge(found: dict, more: dict, io: set) -> None:
    for name, vi in more.items():
        if name in io:
            continue
        if name not in found or _known_dims(vi) > _known_dims(found[name]):
            found[name] = vi


def _known_dims(vi: onnx.ValueInfoProto) -> int:
    t = vi.type.tensor_type
    if not t.HasField("shape"):
        return -1
    # onnx names dims it could not determine "unk__N": those are not known
    return sum(
        d.HasField("dim_value") or (d.HasField("dim_param") and not d.dim_param.startswith("unk__"))
        for d in t.shape.dim
    )


def _unsized(model: onnx.ModelProto, found: dict) -> list[str]:
    """Node outputs (graph outputs aside) whose rank or some dim is unknown."""
    outputs = {vi.name for vi in model.graph.output}
    out = []
    for n in model.graph.node:
        for name in n.output:
            if not name or name in outputs:
                continue
            vi = found.get(name)
            if (
                vi is None
                or not vi.type.tensor_type.HasField("shape")
                or _known_dims(vi) < len(vi.type.tensor_type.shape.dim)
            ):
                out.append(name)
    return out


def _incomplete(model: onnx.ModelProto, found: dict) -> bool:
    """Contrib ops, or a node output whose rank or some dim inference could not tell."""
    if any(n.domain not in ("", "ai.onnx") for n in model.graph.node):
        return True
    return bool(_unsized(model, found))


_CWD_LOCK = threading.Lock()


def _symbolic_infer(model: onnx.ModelProto) -> dict[str, onnx.ValueInfoProto]:
    """ORT's symbolic shape inference: every tensor it sized, also when it stops early. Its
    public entry point raises on the first tensor it cannot size ("Incomplete symbolic shape
    inference") and so loses every shape it did find; this drives the same steps and keeps
    them. It may write scratch files into the working directory, so it runs inside a
    temporary one."""
    try:
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference
    except ImportError as e:
        log.warning("ORT symbolic shape inference unavailable (%s)", e)
        return {}
    with _CWD_LOCK, tempfile.TemporaryDirectory(prefix="graphprune-") as tmp:
        cwd = os.getcwd()
        os.chdir(tmp)
        try:
            return _symbolic_steps(SymbolicShapeInference, model)
        finally:
            os.chdir(cwd)


def _symbolic_steps(engine_class, model: onnx.ModelProto) -> dict[str, onnx.ValueInfoProto]:
    names = {o for n in model.graph.node for o in n.output if o}
    try:
        engine = engine_class(2**31 - 1, True, False, 0)  # int_max, auto_merge, guess, verbose
        engine._preprocess(model)
        run = engine.run_
    except Exception as e:  # the internals moved: the public entry point, all or nothing
        log.debug("ORT symbolic shape inference internals unavailable (%s)", e)
        try:
            result = engine_class.infer_shapes(model, auto_merge=True)
        except Exception as e:  # missing sympy, or an op it does not know
            log.warning("ORT symbolic shape inference failed (%s); using onnx's", e)
            return {}
        return {vi.name: vi for vi in result.graph.value_info} if result is not None else {}
    complete = False
    try:
        while run:
            complete = engine._infer_impl()
            run = engine.run_
    except Exception as e:  # an op it fails on; keep what it sized before
        log.info("ORT symbolic shape inference stopped (%s: %s)", type(e).__name__, e)
    if not complete:
        log.info("ORT symbolic shape inference sized only part of the graph")
    known = getattr(engine, "known_vi_", {})
    return {
        name: vi
        for name, vi in known.items()
        if name in names and vi.type.tensor_type.HasField("shape")
    }


def import_graph(model: onnx.ModelProto, inferred: bool = False) -> gs.Graph:
    """Shape-infer (unless already done), import into graphsurgeon, fold Constant nodes."""
    graph = gs.import_onnx(model if inferred else infer_shapes(model))
    weights.map_constants(graph)
    fold_constant_nodes(graph)
    return graph


def fold_constant_nodes(graph: gs.Graph) -> None:
    """Replace ``Constant`` nodes, and ``Identity`` of a constant (how the TorchScript
    exporter shares deduplicated initializers), by graphsurgeon constants so rules see
    their values. Constants are per use in the analysis, so sharing one costs nothing."""
    for node in list(graph.nodes):
        if len(node.outputs) != 1 or node.outputs[0] in graph.outputs:
            continue
        if node.op == "Identity" and isinstance(node.inputs[0], gs.Constant):
            const = node.inputs[0]
        elif node.op == "Constant":
            arr = _constant_value(node)
            if arr is None:
                continue
            const = gs.Constant(node.outputs[0].name, arr)
        else:
            continue
        out = node.outputs[0]
        for consumer in list(out.outputs):
            for i, t in enumerate(consumer.inputs):
                if t is out:
                    consumer.inputs[i] = const
        node.outputs.clear()
    graph.cleanup(remove_unused_graph_inputs=False)


def _constant_value(node: gs.Node) -> np.ndarray | None:
    value = node.attrs.get("value")
    if isinstance(value, gs.Constant):
        return np.asarray(value.values)
    for key, dtype in (
        ("value_float", np.float32),
        ("value_int", np.int64),
        ("value_floats", np.float32),
        ("value_ints", np.int64),
    ):
        if key in node.attrs:
            return np.array(node.attrs[key], dtype=dtype)
    return None


def export_model(graph: gs.Graph, template: onnx.ModelProto | None = None) -> onnx.ModelProto:
    """Export the graph with stale intermediate shapes cleared and re-inferred."""
    io = {id(t) for t in graph.inputs} | {id(t) for t in graph.outputs}
    for t in graph.tensors().values():
        if isinstance(t, gs.Variable) and id(t) not in io:
            t.shape = None
    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    weights.prepare_export(graph)
    model = gs.export_onnx(graph, do_type_check=False)
    if template is not None:
        model.ir_version = template.ir_version
        del model.opset_import[:]
        model.opset_import.extend(template.opset_import)
        model.producer_name = template.producer_name or "graphprune"
        del model.metadata_props[:]
        model.metadata_props.extend(template.metadata_props)
    del model.graph.value_info[:]
    return infer_shapes(model)


_UNKNOWN_OP = re.compile(r"No Op registered for (\S+) with domain_version")


def check_model(model: onnx.ModelProto, original: onnx.ModelProto | None = None) -> None:
    """``onnx.checker`` with full shape checking; raise RewriteError on failure.

    ONNX Runtime registers some of its own ops in the default domain (the optimizer's
    ``SimplifiedLayerNormalization``), which the checker does not know. When that is the
    only complaint and ``original`` already used that op, the model is held to the input's
    standard: the check passes with a warning, and loading in ONNX Runtime (parity) decides.
    """
    if model.ByteSize() >= _TWO_GB:
        return
    try:
        checker(model, full_check=True)
    except Exception as e:
        unknown = _UNKNOWN_OP.search(str(e))
        in_input = (
            original is not None
            and unknown is not None
            and any(n.op_type == unknown.group(1) for n in original.graph.node)
        )
        if not in_input:
            raise RewriteError(f"pruned model fails onnx.checker: {e}") from e
        log.warning(
            "onnx.checker does not know op %s (an ONNX Runtime op the input already "
            "used); relying on ONNX Runtime to validate",
            unknown.group(1),
        )


def checker(model: onnx.ModelProto, full_check: bool = False) -> None:
    """``onnx.checker`` on ``model``. One whose weights are on disk is checked as a file
    whose external tensors all name one empty file: the checker only asks that the file
    be there and be a plain file with one link (the scratch's links to the input's data
    have two), and in memory it would look for them in the working directory."""
    if not weights.is_mapped(model):
        onnx.checker.check_model(model, full_check=full_check)
        return
    with tempfile.TemporaryDirectory(prefix="graphprune-check-") as tmp:
        (Path(tmp) / "weights.data").touch()
        path = str(Path(tmp) / "model.onnx")
        onnx.save_model(weights.relocated(model, "weights.data"), path)
        onnx.checker.check_model(path, full_check=full_check)


def save_model_atomic(model: onnx.ModelProto, path: str | os.PathLike) -> int:
    """Write ``model`` to ``path`` (and its external data beside it) via temporary files
    renamed into place; return the bytes of the ``.onnx`` file."""
    from .outputs import Outputs

    out = Outputs()
    out.add_model(path, model)
    out.commit()
    return Path(path).stat().st_size
