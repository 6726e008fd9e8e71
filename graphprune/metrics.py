"""Model size and compute: parameters, bytes, and MACs counted per node by its op rule
(``OpRule.macs``, the count the cost model prices plans with) from static shapes; symbolic,
unknown or non-positive axes count as 1."""

from __future__ import annotations

import logging

import numpy as np
import onnx
from onnx import numpy_helper

from .analysis.rules import NodeView
from .analysis.rules.registry import OpRule, rule_for_op
from .graph import all_graphs
from .weights import external_bytes

log = logging.getLogger(__name__)


def _shape_map(model: onnx.ModelProto) -> dict[str, tuple[int | None, ...]]:
    """Static shape of every tensor the proto sizes: graph inputs, value_info, outputs,
    initializers and Constant nodes (``None`` for unknown axes)."""
    shapes: dict[str, tuple[int | None, ...]] = {}
    g = model.graph
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        t = vi.type.tensor_type
        if t.HasField("shape"):
            shapes[vi.name] = tuple(
                d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
                for d in t.shape.dim
            )
    for init in g.initializer:
        shapes[init.name] = tuple(int(d) for d in init.dims)
    for name, shape, _ in _constant_nodes(model):
        shapes[name] = shape
    return shapes


def _constant_nodes(model: onnx.ModelProto):
    """``(output name, shape, value getter)`` of the graph's Constant nodes that hold a
    tensor or numbers (the getter, so large values are never converted)."""
    for n in model.graph.node:
        if n.op_type != "Constant" or not n.output:
            continue
        for a in n.attribute:
            if a.name == "value":
                yield n.output[0], tuple(int(d) for d in a.t.dims), lambda a=a: _array(a.t)
            elif a.name in ("value_float", "value_int", "value_floats", "value_ints"):
                value = np.asarray(onnx.helper.get_attribute_value(a))
                yield n.output[0], value.shape, lambda v=value: v


def _array(t: onnx.TensorProto) -> np.ndarray | None:
    try:
        return numpy_helper.to_array(t)
    except (ValueError, TypeError, OSError):  # external data not loaded: value unknown
        return None


def _small_values(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Values of the small constants (what ``NodeView.value`` shows a rule)."""
    small = NodeView.SMALL_CONST
    found = [
        (init.name, lambda t=init: _array(t))
        for init in model.graph.initializer
        if int(np.prod(init.dims)) <= small
    ]
    found += [(name, get) for name, shape, get in _constant_nodes(model) if np.prod(shape) <= small]
    values = {}
    for name, get in found:
        value = get()
        if value is not None:
            values[name] = value
    return values


_FLOAT_TYPES = {
    onnx.TensorProto.FLOAT,
    onnx.TensorProto.FLOAT16,
    onnx.TensorProto.DOUBLE,
    onnx.TensorProto.BFLOAT16,
}


def count_params(model: onnx.ModelProto) -> int:
    """Elements of the weights: floating-point initializers and Constant-node tensors, and
    integer ones a rule reads as a weight (QDQ's quantized data), subgraphs included."""
    total = 0
    for g in all_graphs(model.graph):
        int_weights = set()
        for n in g.node:
            rule = rule_for_op(n.domain, n.op_type)
            for slot in rule.weight_slots if rule is not None else ():
                if slot < len(n.input):
                    int_weights.add(n.input[slot])
        tensors = list(g.initializer)
        tensors += [
            a.t for n in g.node if n.op_type == "Constant" for a in n.attribute if a.name == "value"
        ]
        for t in tensors:
            if t.data_type in _FLOAT_TYPES or t.name in int_weights:
                total += int(np.prod(t.dims)) if len(t.dims) else 1
    return total


def count_macs(model: onnx.ModelProto) -> int:
    """Multiply-accumulates of one run: the sum of every node's ``OpRule.macs`` terms, from
    the shapes the proto carries (run shape inference first). Never negative. A node that
    counts MACs but has a tensor of unknown rank counts none; that is logged, since a total
    missing most of its MatMuls looks like a large reduction."""
    shapes = _shape_map(model)
    values = _small_values(model)
    total = 0.0
    unsized = []
    for n in model.graph.node:
        rule = rule_for_op(n.domain, n.op_type)
        if rule is None:
            continue
        view = NodeView.from_proto(n, shapes, values)
        total += sum(term.macs for term in rule.macs(view))
        if type(rule).macs is not OpRule.macs and _rank_unknown(view):
            unsized.append(n.name or n.op_type)
    if unsized:
        log.warning(
            "MACs of %d node(s) not counted: their shapes are unknown (%s%s)",
            len(unsized),
            ", ".join(unsized[:3]),
            " ..." if len(unsized) > 3 else "",
        )
    return max(int(round(total)), 0)


def _rank_unknown(view: NodeView) -> bool:
    ins = [s for i, s in enumerate(view.in_shapes) if view.has_input(i)]
    return any(s is None for s in ins) or any(s is None for s in view.out_shapes[:1])


def model_bytes(model: onnx.ModelProto) -> int:
    """Serialized bytes, with the weights held in external data."""
    return model.ByteSize() + external_bytes(model)


def summarize(model: onnx.ModelProto, with_bytes: bool = True) -> dict:
    """Params, MACs (from the shapes in ``model.graph.value_info``) and serialized bytes."""
    return {
        "params": count_params(model),
        "macs": count_macs(model),
        "bytes": model_bytes(model) if with_bytes else 0,
    }
