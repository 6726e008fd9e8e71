"""Small hand-built ONNX models, one op family each.

Most models are ``Conv(8->16) -> OP -> Conv(16->8)`` on a ``(1, 8, 8, 8)`` input named
``input``, so the 16 channels of the middle tensor flow through the op under test; the
output is named ``output``. Weights are seeded float32 initializers. Everything is
opset 18 / IR 8 except ``groupnorm`` (opset 21 / IR 10, see its docstring).
``MUST_FREEZE`` lists the models whose middle channels may not be pruned.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 18
IR_VERSION = 8
IMAGE = (1, 8, 8, 8)


class _Graph:
    """Tiny graph builder: named nodes, seeded weights, shapes filled by inference."""

    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.value_info: list[onnx.ValueInfoProto] = []

    def const(self, value, dtype=np.float32) -> str:
        name = f"k{len(self.inits)}"
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def weight(self, *shape: int, fan_in: int | None = None) -> str:
        """Random N(0, 1/fan_in) tensor; ``fan_in`` defaults to prod(shape[1:])."""
        fan_in = fan_in or int(np.prod(shape[1:])) or 1
        return self.const(self.rng.standard_normal(shape) / np.sqrt(fan_in))

    def op(self, op_type: str, *inputs: str, n_out: int = 1, **attrs):
        """Append a node; return its output name (a list when ``n_out > 1``)."""
        idx = len(self.nodes)
        outs = [
            f"{op_type.lower()}{idx}_{i}" if n_out > 1 else f"{op_type.lower()}{idx}"
            for i in range(n_out)
        ]
        self.nodes.append(
            helper.make_node(op_type, list(inputs), outs, f"{op_type}_{idx}", **attrs)
        )
        return outs if n_out > 1 else outs[0]

    def annotate(self, name: str, shape: Sequence[int]) -> str:
        """Declare a float tensor's shape where onnx shape inference cannot."""
        self.value_info.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, shape))
        return name

    def conv(self, x: str, cin: int, cout: int, k: int = 3) -> str:
        return self.op(
            "Conv",
            x,
            self.weight(cout, cin, k, k),
            self.weight(cout, fan_in=cin),
            pads=[k // 2] * 4,
        )

    def model(
        self,
        output: str,
        input_shape: Sequence[int] = IMAGE,
        opset: int = OPSET,
        ir_version: int = IR_VERSION,
    ) -> onnx.ModelProto:
        """Finish the graph: rename ``output``, infer its shape, check the model."""
        for node in self.nodes:
            node.output[:] = ["output" if o == output else o for o in node.output]
        x = helper.make_tensor_value_info("input", TensorProto.FLOAT, list(input_shape))
        y = helper.make_tensor_value_info("output", TensorProto.FLOAT, None)
        graph = helper.make_graph(
            self.nodes, "handbuilt", [x], [y], self.inits, value_info=self.value_info
        )
        model = helper.make_model(
            graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=ir_version
        )
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
        (out_info,) = [v for v in inferred.graph.output if v.name == "output"]
        model.graph.output[0].CopyFrom(out_info)
        onnx.checker.check_model(model, full_check=True)
        return model


def _sandwich(middle: Callable[[_Graph, str], str], **model_kw) -> onnx.ModelProto:
    """``Conv(8->16) -> middle -> Conv(16->8)`` on a (1, 8, 8, 8) input."""
    g = _Graph()
    h = middle(g, g.conv("input", 8, 16))
    return g.model(g.conv(h, 16, 8), **model_kw)


def _unary(op_type: str, **attrs) -> Callable[[], onnx.ModelProto]:
    def build() -> onnx.ModelProto:
        return _sandwich(lambda g, h: g.op(op_type, h, **attrs))

    build.__doc__ = f"Conv -> {op_type} -> Conv."
    return build


def _binary(op_type: str) -> Callable[[], onnx.ModelProto]:
    def build() -> onnx.ModelProto:
        g = _Graph()
        h = g.op(op_type, g.conv("input", 8, 16), g.conv("input", 8, 16))
        return g.model(g.conv(h, 16, 8))

    build.__doc__ = f"Two Conv(8->16) branches -> {op_type} -> Conv."
    return build


# --------------------------------------------------------------------------- producers


def convtranspose() -> onnx.ModelProto:
    """ConvTranspose(8->16, k2 s2) -> Relu -> Conv(16->8); output (1, 8, 16, 16)."""
    g = _Graph()
    h = g.op(
        "ConvTranspose",
        "input",
        g.weight(8, 16, 2, 2, fan_in=8),
        g.weight(16, fan_in=8),
        kernel_shape=[2, 2],
        strides=[2, 2],
    )
    return g.model(g.conv(g.op("Relu", h), 16, 8))


def gemm() -> onnx.ModelProto:
    """MLP on (4, 16): Gemm(transB=1, alpha=0.5, beta=2) -> Relu -> Gemm(transB=1)."""
    g = _Graph()
    h = g.op(
        "Gemm", "input", g.weight(32, 16), g.weight(32, fan_in=16), transB=1, alpha=0.5, beta=2.0
    )
    h = g.op("Relu", h)
    y = g.op("Gemm", h, g.weight(8, 32), g.weight(8, fan_in=32), transB=1, alpha=1.5, beta=0.5)
    return g.model(y, input_shape=(4, 16))


def gemm_transa() -> onnx.ModelProto:
    """MLP on (4, 16) with the hidden tensor transposed to (32, 4).

    ``Gemm(A=W1 (32, 16), B=input, transB=1, C=(32, 1))`` puts the 32 hidden units on
    axis 0; ``Relu``; ``Gemm(A=hidden, transA=1, B=W2 (32, 8), C=(8,))`` -> (4, 8).
    """
    g = _Graph()
    h = g.op(
        "Gemm", g.weight(32, 16), "input", g.weight(32, 1, fan_in=16), transB=1, alpha=0.5, beta=2.0
    )
    h = g.op("Relu", h)
    y = g.op(
        "Gemm", h, g.weight(32, 8, fan_in=32), g.weight(8, fan_in=32), transA=1, alpha=1.5, beta=0.5
    )
    return g.model(y, input_shape=(4, 16))


def matmul() -> onnx.ModelProto:
    """(2, 5, 16) -> MatMul W(16, 32) -> Add b(32) -> Relu -> MatMul W(32, 8)."""
    g = _Graph()
    h = g.op("MatMul", "input", g.weight(16, 32, fan_in=16))
    h = g.op("Relu", g.op("Add", h, g.weight(32, fan_in=16)))
    return g.model(g.op("MatMul", h, g.weight(32, 8, fan_in=32)), input_shape=(2, 5, 16))


# --------------------------------------------------------------------------- normalization


def instancenorm() -> onnx.ModelProto:
    """Conv -> InstanceNormalization(scale, B of shape (16,)) -> Conv."""
    return _sandwich(
        lambda g, h: g.op(
            "InstanceNormalization",
            h,
            g.const(1 + 0.1 * g.rng.standard_normal(16)),
            g.weight(16, fan_in=100),
            epsilon=1e-5,
        )
    )


def groupnorm() -> onnx.ModelProto:
    """Conv -> GroupNormalization(num_groups=4, per-channel scale/bias (16,)) -> Conv.

    Opset 21 / IR 10: the opset-18 GroupNormalization (per-group scale) is deprecated and
    the onnx checker rejects it. ``stash_type=1`` (float32) is the default, set explicitly.
    onnx 1.23 shape inference does not see through this op, so its output carries a
    ``value_info`` entry (1, 16, 8, 8).
    """

    def middle(g: _Graph, h: str) -> str:
        scale = g.const(1 + 0.1 * g.rng.standard_normal(16))
        y = g.op(
            "GroupNormalization",
            h,
            scale,
            g.weight(16, fan_in=100),
            num_groups=4,
            epsilon=1e-5,
            stash_type=1,
        )
        return g.annotate(y, (1, 16, 8, 8))

    return _sandwich(middle, opset=21, ir_version=10)


# --------------------------------------------------------------------------- elementwise


def prelu() -> onnx.ModelProto:
    """Conv -> PRelu(slope of shape (16, 1, 1)) -> Conv."""
    return _sandwich(lambda g, h: g.op("PRelu", h, g.const(g.rng.uniform(0.05, 0.3, (16, 1, 1)))))


def sqrt() -> onnx.ModelProto:
    """Conv -> Relu -> Add 1 -> Sqrt -> Conv."""
    return _sandwich(lambda g, h: g.op("Sqrt", g.op("Add", g.op("Relu", h), g.const(1.0))))


def pow_() -> onnx.ModelProto:
    """Conv -> Pow(x, 2.0) -> Conv."""
    return _sandwich(lambda g, h: g.op("Pow", h, g.const(2.0)))


def clip() -> onnx.ModelProto:
    """Conv -> Clip(min=-0.5, max=0.5 as scalar inputs) -> Conv."""
    return _sandwich(lambda g, h: g.op("Clip", h, g.const(-0.5), g.const(0.5)))


def div() -> onnx.ModelProto:
    """Conv -> Div by a positive per-channel constant (16, 1, 1) -> Conv."""
    return _sandwich(lambda g, h: g.op("Div", h, g.const(g.rng.uniform(0.5, 2.0, (16, 1, 1)))))


def add_scalar() -> onnx.ModelProto:
    """Conv -> Add 0.5 (scalar) -> Conv."""
    return _sandwich(lambda g, h: g.op("Add", h, g.const(0.5)))


# --------------------------------------------------------------------------- shape ops


def pad() -> onnx.ModelProto:
    """Conv -> Pad(constant 0, one pixel on each spatial side) -> Conv; (1, 8, 10, 10)."""
    return _sandwich(
        lambda g, h: g.op(
            "Pad", h, g.const([0, 0, 1, 1, 0, 0, 1, 1], np.int64), g.const(0.0), mode="constant"
        )
    )


def resize() -> onnx.ModelProto:
    """Conv -> Resize(nearest, scales [1, 1, 2, 2]) -> Conv; output (1, 8, 16, 16)."""
    return _sandwich(lambda g, h: g.op("Resize", h, "", g.const([1, 1, 2, 2]), mode="nearest"))


def split_concat() -> onnx.ModelProto:
    """Conv -> Split [8, 8] on channels -> Conv(8->8) each -> Concat -> Conv."""

    def middle(g: _Graph, h: str) -> str:
        a, b = g.op("Split", h, g.const([8, 8], np.int64), n_out=2, axis=1)
        return g.op("Concat", g.conv(a, 8, 8), g.conv(b, 8, 8), axis=1)

    return _sandwich(middle)


def slice_() -> onnx.ModelProto:
    """Conv(8->16) -> Slice channels [0:12] -> Conv(12->8)."""
    g = _Graph()
    h = g.conv("input", 8, 16)
    h = g.op("Slice", h, g.const([0], np.int64), g.const([12], np.int64), g.const([1], np.int64))
    return g.model(g.conv(h, 12, 8))


def squeeze_unsqueeze() -> onnx.ModelProto:
    """Conv -> GlobalAveragePool -> Squeeze [2, 3] -> Relu -> Unsqueeze [2, 3] -> Conv 1x1."""
    g = _Graph()
    h = g.op("GlobalAveragePool", g.conv("input", 8, 16))
    h = g.op("Squeeze", h, g.const([2, 3], np.int64))
    h = g.op("Unsqueeze", g.op("Relu", h), g.const([2, 3], np.int64))
    return g.model(g.conv(h, 16, 8, k=1))


def transpose_matmul() -> onnx.ModelProto:
    """Conv -> Transpose NCHW->NHWC -> MatMul W(16, 8); output (1, 8, 8, 8) in NHWC."""
    g = _Graph()
    h = g.op("Transpose", g.conv("input", 8, 16), perm=[0, 2, 3, 1])
    return g.model(g.op("MatMul", h, g.weight(16, 8, fan_in=16)))


def reducemean() -> onnx.ModelProto:
    """Conv -> ReduceMean(axes [2, 3], keepdims=1) -> Conv 1x1; output (1, 8, 1, 1)."""
    g = _Graph()
    h = g.op("ReduceMean", g.conv("input", 8, 16), g.const([2, 3], np.int64), keepdims=1)
    return g.model(g.conv(h, 16, 8, k=1))


def globalmaxpool() -> onnx.ModelProto:
    """Conv -> GlobalMaxPool -> Conv 1x1; output (1, 8, 1, 1)."""
    g = _Graph()
    return g.model(g.conv(g.op("GlobalMaxPool", g.conv("input", 8, 16)), 16, 8, k=1))


def _pooled_head(flatten: Callable[[_Graph, str], str]) -> onnx.ModelProto:
    """Conv -> AveragePool to (1, 16, 2, 2) -> ``flatten`` to (1, 64) -> Gemm(64->8)."""
    g = _Graph()
    h = g.op("AveragePool", g.conv("input", 8, 16), kernel_shape=[4, 4], strides=[4, 4])
    h = flatten(g, h)
    return g.model(g.op("Gemm", h, g.weight(8, 64), g.weight(8, fan_in=64), transB=1))


def flatten_gemm() -> onnx.ModelProto:
    """(1, 16, 2, 2) -> Flatten(axis=1) -> Gemm."""
    return _pooled_head(lambda g, h: g.op("Flatten", h, axis=1))


def reshape_gemm() -> onnx.ModelProto:
    """(1, 16, 2, 2) -> Reshape to the constant shape [1, 64] -> Gemm."""
    return _pooled_head(lambda g, h: g.op("Reshape", h, g.const([1, 64], np.int64)))


def dynamic_flatten() -> onnx.ModelProto:
    """TorchScript-style ``x.view(x.size(0), -1)``:
    Shape -> Gather(0) -> Unsqueeze -> Concat([N, -1]) -> Reshape -> Gemm."""

    def flatten(g: _Graph, h: str) -> str:
        n = g.op("Gather", g.op("Shape", h), g.const(0, np.int64), axis=0)
        n = g.op("Unsqueeze", n, g.const([0], np.int64))
        shape = g.op("Concat", n, g.const([-1], np.int64), axis=0)
        return g.op("Reshape", h, shape)

    return _pooled_head(flatten)


# --------------------------------------------------------------------------- must freeze


def freeze_hardmax() -> onnx.ModelProto:
    """Conv -> Hardmax(axis=1) -> Conv: the op mixes channels, so nothing may be pruned."""
    return _sandwich(lambda g, h: g.op("Hardmax", h, axis=1))


def freeze_softmax_channel() -> onnx.ModelProto:
    """Conv -> Softmax(axis=1) -> Conv: normalizes across channels, so must freeze."""
    return _sandwich(lambda g, h: g.op("Softmax", h, axis=1))


HANDBUILT: dict[str, Callable[[], onnx.ModelProto]] = {
    "convtranspose": convtranspose,
    "gemm": gemm,
    "gemm_transa": gemm_transa,
    "matmul": matmul,
    "instancenorm": instancenorm,
    "groupnorm": groupnorm,
    "prelu": prelu,
    "leakyrelu": _unary("LeakyRelu", alpha=0.1),
    "hardsigmoid": _unary("HardSigmoid", alpha=0.2, beta=0.5),
    "hardswish": _unary("HardSwish"),
    "tanh": _unary("Tanh"),
    "erf": _unary("Erf"),
    "softplus": _unary("Softplus"),
    "mish": _unary("Mish"),
    "exp": _unary("Exp"),
    "sqrt": sqrt,
    "pow": pow_,
    "clip": clip,
    "sigmoid": _unary("Sigmoid"),
    "max": _binary("Max"),
    "min": _binary("Min"),
    "sub": _binary("Sub"),
    "div": div,
    "add_scalar": add_scalar,
    "pad": pad,
    "resize": resize,
    "split_concat": split_concat,
    "slice": slice_,
    "squeeze_unsqueeze": squeeze_unsqueeze,
    "transpose_matmul": transpose_matmul,
    "reducemean": reducemean,
    "globalmaxpool": globalmaxpool,
    "averagepool": _unary("AveragePool", kernel_shape=[2, 2], strides=[2, 2]),
    "dropout": _unary("Dropout"),
    "cast": _unary("Cast", to=TensorProto.FLOAT),
    "identity": _unary("Identity"),
    "softmax_spatial": _unary("Softmax", axis=-1),
    "flatten_gemm": flatten_gemm,
    "reshape_gemm": reshape_gemm,
    "dynamic_flatten": dynamic_flatten,
    "freeze_hardmax": freeze_hardmax,
    "freeze_softmax_channel": freeze_softmax_channel,
}

MUST_FREEZE: frozenset[str] = frozenset({"freeze_hardmax", "freeze_softmax_channel"})
