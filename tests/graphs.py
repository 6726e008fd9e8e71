"""Tiny inline graphs for unit tests (onnx.helper), random weights with a fixed seed."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


class G:
    """Build a graph node by node: ``g.w("w1", 16, 3, 3, 3)``, ``g.op("Conv", ...)``."""

    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.nodes, self.inits, self.inputs = [], [], []

    def input(self, name, shape, dtype=TensorProto.FLOAT):
        self.inputs.append(helper.make_tensor_value_info(name, dtype, shape))
        return name

    def w(self, name, *shape, positive=False, values=None):
        arr = values if values is not None else self.rng.standard_normal(shape)
        arr = np.abs(arr) + 0.5 if positive else arr
        self.inits.append(numpy_helper.from_array(np.asarray(arr, dtype=np.float32), name))
        return name

    def const(self, name, values, dtype=np.int64):
        self.inits.append(numpy_helper.from_array(np.asarray(values, dtype=dtype), name))
        return name

    def op(self, op_type, inputs, output, **attrs):
        self.nodes.append(helper.make_node(op_type, inputs, [output], name=output, **attrs))
        return output

    def model(self, outputs, opset=17) -> onnx.ModelProto:
        outs = [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs]
        graph = helper.make_graph(self.nodes, "g", self.inputs, outs, self.inits)
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        m.ir_version = 8
        return onnx.shape_inference.infer_shapes(m)


def attr(node: onnx.NodeProto, name: str):
    """The value of ``node``'s attribute ``name``."""
    return next(helper.get_attribute_value(a) for a in node.attribute if a.name == name)


def nodes_of(model: onnx.ModelProto, op_type: str) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if n.op_type == op_type]


def weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Initializer name -> array."""
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
