"""Model size and compute: parameters, bytes, and MACs counted per op from static shapes
(symbolic axes count as 1)."""

from __future__ import annotations

import numpy as np
import onnx


def _shape_map(model: onnx.ModelProto) -> dict[str, list[int]]:
    shapes = {}
    g = model.graph
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        t = vi.type.tensor_type
        if t.HasField("shape"):
            shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else 1 for d in t.shape.dim]
    for init in g.initializer:
        shapes[init.name] = list(init.dims)
    return shapes


def count_params(model: onnx.ModelProto) -> int:
    """Elements of floating-point initializers and Constant-node tensors (the weights)."""
    total = 0
    float_types = {
        onnx.TensorProto.FLOAT,
        onnx.TensorProto.FLOAT16,
        onnx.TensorProto.DOUBLE,
        onnx.TensorProto.BFLOAT16,
    }
    tensors = list(model.graph.initializer)
    tensors += [
        a.t
        for n in model.graph.node
        if n.op_type == "Constant"
        for a in n.attribute
        if a.name == "value"
    ]
    for t in tensors:
        if t.data_type in float_types:
            total += int(np.prod(t.dims)) if len(t.dims) else 1
    return total


def count_macs(model: onnx.ModelProto) -> int:
    shapes = _shape_map(model)
    total = 0
    for n in model.graph.node:
        total += _node_macs(n, shapes)
    return int(total)


def _attr(node, name, default):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _node_macs(n, shapes) -> int:
    get = shapes.get
    if n.op_type in ("Conv", "ConvTranspose"):
        w, y, x = get(n.input[1]), get(n.output[0]), get(n.input[0])
        if not (w and y and x):
            return 0
        k = int(np.prod(w[2:]))
        # Conv: each output element sums Cin/g * k products; ConvTranspose: each input
        # element feeds Cout/g * k outputs. Either way it is weight axis 1 times the kernel.
        return int(np.prod(y if n.op_type == "Conv" else x)) * w[1] * k
    if n.op_type == "Gemm":
        a, y = get(n.input[0]), get(n.output[0])
        if not (a and y):
            return 0
        k = a[0] if _attr(n, "transA", 0) else a[1]
        return int(np.prod(y)) * k
    if n.op_type == "MatMul":
        a, y = get(n.input[0]), get(n.output[0])
        if not (a and y):
            return 0
        return int(np.prod(y)) * a[-1]
    if n.op_type == "Attention" and len(n.input) > 1:  # com.microsoft fused attention
        x, w = get(n.input[0]), get(n.input[1])
        if not (x and w) or len(x) != 3:
            return 0
        b, s, c = x
        sizes = _attr(n, "qkv_hidden_sizes", None) or [w[1] // 3] * 3
        projection = b * s * c * w[1]
        scores_and_context = b * s * s * (int(sizes[0]) + int(sizes[2]))
        return projection + scores_and_context
    return 0


def model_bytes(model: onnx.ModelProto) -> int:
    return model.ByteSize()


def summarize(model: onnx.ModelProto, with_bytes: bool = True) -> dict:
    """Params, MACs (from the shapes in ``model.graph.value_info``) and serialized bytes."""
    return {
        "params": count_params(model),
        "macs": count_macs(model),
        "bytes": model_bytes(model) if with_bytes else 0,
    }
