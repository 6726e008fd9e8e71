"""Seeded random CNN-ish ONNX graphs for the pruning fuzzer (tests/test_fuzz.py).

``random_model(seed)`` draws a *recipe* (opset, input shape, a stem conv, 1-7 body blocks,
a head) and builds it. Each block carries its own seed and adapts to the shape it receives,
so a recipe stays buildable when blocks are deleted: ``build_model(recipe)`` is what a
minimiser shrinks. Every model is float32 with static shapes, passes
``onnx.checker.check_model(full_check=True)`` and runs in ONNX Runtime; the generator checks
that itself and redraws (a derived seed) otherwise. ``describe(model)`` is a one-line
summary (opset, input, blocks and their choices, head) for failure messages.

Blocks (NCHW): conv (plain / grouped / depthwise / strided, bias or not), bn, act (Relu,
Sigmoid, SiLU as x*Sigmoid(x)), residual (Add of same-shaped branches), concat (channel
branches), split (equal / unequal, attribute, input or ``num_outputs`` by opset; parts
re-concatenated, possibly in another order), bcast (Add/Mul by a [1,C,1,1] or [C,1,1]
constant), pool (MaxPool / AveragePool), slice_c / slice_s (Slice on channels / spatial
axes), transpose (NHWC and back, with a per-channel Mul or a MatMul in between). Heads:
none, GlobalAveragePool + Flatten/Reshape + Gemm (transB 0/1) or MatMul (+ a hidden layer),
Flatten/Reshape of the whole feature map + Gemm/MatMul, Reshape to [N,C,HW] + Transpose +
MatMul.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

BODY_BLOCKS = (
    "conv",
    "bn",
    "act",
    "residual",
    "concat",
    "split",
    "bcast",
    "pool",
    "slice_c",
    "slice_s",
    "transpose",
    "se",
    "shuffle",
)
HEADS = (
    "none",
    "gap_gemm",
    "gap_matmul",
    "gap_mlp",
    "flatten_gemm",
    "reshape_matmul",
    "tokens_matmul",
)
OPSETS = (17,) * 6 + (13, 13, 20, 20, 11)
MAX_C = 24
INT_MAX = 2**63 - 1


@dataclass
class Recipe:
    seed: int
    opset: int
    input_shape: list[int]
    blocks: list[tuple[str, int]]  # (block kind, block seed); the stem conv is blocks[0]
    head: tuple[str, int]
    extra_output: bool = False  # also output the tensor after the first body block
    notes: list[str] = field(default_factory=list)  # what each block chose (filled by build)

    def to_json(self) -> str:
        d = {k: v for k, v in vars(self).items() if k != "notes"}
        return json.dumps(d)


def draw_recipe(seed: int) -> Recipe:
    rng = np.random.default_rng([seed, 7])
    opset = int(rng.choice(OPSETS))
    shape = [int(rng.integers(1, 3)), int(rng.integers(3, 9)), 0, 0]
    shape[2] = int(rng.integers(8, 17))
    shape[3] = shape[2] if rng.random() < 0.7 else int(rng.integers(8, 17))
    n = int(rng.integers(1, 8))
    blocks = [("conv", int(rng.integers(2**31)))]
    blocks += [(str(rng.choice(BODY_BLOCKS)), int(rng.integers(2**31))) for _ in range(n)]
    head = (str(rng.choice(HEADS)), int(rng.integers(2**31)))
    return Recipe(seed, opset, shape, blocks, head, bool(rng.random() < 0.1))


class _Builder:
    def __init__(self, opset: int, seed: int):
        self.opset = opset
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.count = 0

    def name(self, base: str) -> str:
        self.count += 1
        return f"{base}{self.count}"

    def const(self, value, dtype=np.float32, base="k") -> str:
        n = self.name(base)
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), n))
        return n

    def weight(self, *shape, fan_in=None) -> str:
        fan_in = fan_in or int(np.prod(shape[1:])) or 1
        return self.const(self.rng.standard_normal(shape) / np.sqrt(fan_in), base="w")

    def op(self, op_type, inputs, n_out=1, **attrs):
        outs = [self.name(op_type.lower()) for _ in range(n_out)]
        self.nodes.append(
            helper.make_node(op_type, list(inputs), outs, name=outs[0] + "_n", **attrs)
        )
        return outs if n_out > 1 else outs[0]


class _Block:
    """One block: reads (x, shape), appends nodes, returns (y, shape, note)."""

    def __init__(self, b: _Builder, seed: int):
        self.b = b
        self.rng = np.random.default_rng(seed)
        self.note: list[str] = []

    def choice(self, options):
        return options[int(self.rng.integers(len(options)))]

    # -- pieces -----------------------------------------------------------------------
    def conv(self, x, shape, cout=None, variant=None, k=None, stride=None, bias=None):
        b, rng = self.b, self.rng
        n, cin, h, w = shape
        variant = variant or self.choice(["plain", "plain", "grouped", "depthwise", "strided"])
        group = 1
        if variant == "grouped":
            divs = [g for g in range(2, cin) if cin % g == 0]
            if divs:
                group = self.choice(divs)
            else:
                variant = "plain"
        if variant == "depthwise":
            group = cin
        if cout is None:
            if group > 1:
                mult = [m for m in range(1, 4) if group * m <= MAX_C] or [1]
                cout = group * self.choice(mult)
            else:
                cout = int(rng.integers(4, MAX_C + 1))
        elif cout % group:
            group, variant = 1, "plain"
        k = k or self.choice([1, 3, 3])
        if stride is None:
            stride = 2 if variant == "strided" and min(h, w) >= 6 else 1
        pad = k // 2
        bias = bool(rng.random() < 0.6) if bias is None else bias
        wname = b.weight(cout, cin // group, k, k)
        ins = [x, wname] + ([b.const(rng.standard_normal(cout) * 0.1)] if bias else [])
        attrs = dict(kernel_shape=[k, k], pads=[pad] * 4, strides=[stride, stride])
        if group > 1:
            attrs["group"] = group
        y = b.op("Conv", ins, **attrs)
        ho = (h + 2 * pad - k) // stride + 1
        wo = (w + 2 * pad - k) // stride + 1
        tag = f"conv{cin}->{cout}"
        tag += f"/g{group}" if group > 1 else ""
        tag += f"/k{k}" + (f"/s{stride}" if stride > 1 else "") + ("/b" if bias else "")
        self.note.append(tag)
        return y, [n, cout, ho, wo]

    def bn(self, x, shape):
        b, rng = self.b, self.rng
        c = shape[1]
        ins = [
            x,
            b.const(1 + 0.1 * rng.standard_normal(c)),
            b.const(0.1 * rng.standard_normal(c)),
            b.const(0.1 * rng.standard_normal(c)),
            b.const(0.5 + rng.random(c)),
        ]
        self.note.append("bn")
        return b.op("BatchNormalization", ins, epsilon=1e-5), shape

    def act(self, x, shape, kind=None):
        kind = kind or self.choice(["Relu", "Sigmoid", "SiLU"])
        self.note.append(kind)
        if kind == "SiLU":
            s = self.b.op("Sigmoid", [x])
            return self.b.op("Mul", [x, s]), shape
        return self.b.op(kind, [x]), shape

    # -- blocks -------------------------------------------------------------------------
    def block_conv(self, x, shape):
        y, shape = self.conv(x, shape)
        if self.rng.random() < 0.4:
            y, shape = self.bn(y, shape)
        if self.rng.random() < 0.6:
            y, shape = self.act(y, shape)
        return y, shape

    def block_bn(self, x, shape):
        return self.bn(x, shape)

    def block_act(self, x, shape):
        return self.act(x, shape)

    def _branch(self, x, shape, cout):
        variant = self.choice(["plain", "plain", "grouped", "depthwise"])
        y, s = self.conv(x, shape, cout=cout, variant=variant, stride=1)
        if self.rng.random() < 0.4:
            y, s = self.bn(y, s)
        if self.rng.random() < 0.5:
            y, s = self.act(y, s)
        return y, s

    def block_residual(self, x, shape):
        c = shape[1]
        form = self.choice(["identity", "identity", "two"])
        self.note.append(f"res-{form}[")
        if form == "identity":  # x + f(x)
            y, s = self._branch(x, shape, c)
            if self.rng.random() < 0.5:
                y, s = self._branch(y, s, c)
            other = x
        else:  # f(x) + g(x), any width
            cout = int(self.rng.integers(4, MAX_C + 1))
            y, s = self._branch(x, shape, cout)
            other, _ = self._branch(x, shape, cout)
        self.note.append("]")
        out = self.b.op("Add", [other, y] if self.rng.random() < 0.5 else [y, other])
        return out, s

    def block_concat(self, x, shape):
        nb = int(self.rng.integers(2, 4))
        parts, total = [], 0
        self.note.append("concat[")
        for i in range(nb):
            if i == 0 and self.rng.random() < 0.3:
                parts.append(x)  # the input itself as one branch (DenseNet)
                total += shape[1]
                self.note.append("id")
                continue
            cout = int(self.rng.integers(2, 13))
            y, s = self._branch(x, shape, cout)
            parts.append(y)
            total += s[1]
        self.note.append("]")
        axis = 1 if self.rng.random() < 0.7 else -3
        return self.b.op("Concat", parts, axis=axis), [shape[0], total, shape[2], shape[3]]

    def _split_sizes(self, c):
        k = int(self.rng.integers(2, 4))
        k = min(k, c // 2)
        if self.rng.random() < 0.5 and c % k == 0:
            return [c // k] * k, True
        cuts = sorted(self.rng.choice(np.arange(1, c), size=k - 1, replace=False).tolist())
        sizes = [b - a for a, b in zip([0, *cuts], [*cuts, c], strict=True)]
        return sizes, len(set(sizes)) == 1

    def block_split(self, x, shape):
        b = self.b
        c = shape[1]
        if c < 4:
            return x, shape
        sizes, equal = self._split_sizes(c)
        axis = 1 if self.rng.random() < 0.7 else -3
        form = "attr"
        if b.opset < 13:
            attrs = {"axis": axis}
            if not equal or self.rng.random() < 0.5:
                attrs["split"] = sizes
            else:
                form = "implicit"
            outs = b.op("Split", [x], n_out=len(sizes), **attrs)
        else:
            attrs, ins = {"axis": axis}, [x]
            if equal and self.rng.random() < (0.8 if b.opset >= 18 else 0.5):
                if b.opset >= 18:
                    attrs["num_outputs"] = len(sizes)
                    form = "num_outputs"
                else:
                    form = "implicit"
            else:
                ins.append(b.const(sizes, dtype=np.int64, base="split"))
                form = "input"
            outs = b.op("Split", ins, n_out=len(sizes), **attrs)
        self.note.append(f"split{sizes}/{form}[")
        parts = []
        unused = int(self.rng.integers(len(outs))) if self.rng.random() < 0.15 else -1
        for i, (o, sz) in enumerate(zip(outs, sizes, strict=True)):
            if i == unused:  # an output nothing reads
                self.note.append("unused")
                continue
            s = [shape[0], sz, shape[2], shape[3]]
            r = self.rng.random()
            if r < 0.4:
                y, s = self._branch(o, s, int(self.rng.integers(2, 13)))
            elif r < 0.6:
                y, s = self.act(o, s)
            else:
                y = o
                self.note.append("id")
            parts.append((y, s))
        if self.rng.random() < 0.3:
            self.rng.shuffle(parts)
            self.note.append("shuffled")
        self.note.append("]")
        total = sum(s[1] for _, s in parts)
        y = b.op("Concat", [p for p, _ in parts], axis=1)
        return y, [shape[0], total, shape[2], shape[3]]

    def block_bcast(self, x, shape):
        c = shape[1]
        op = self.choice(["Add", "Mul"])
        form = self.choice(["1C11", "C11"])
        cshape = [1, c, 1, 1] if form == "1C11" else [c, 1, 1]
        vals = self.rng.standard_normal(cshape) * 0.5 + (1.0 if op == "Mul" else 0.0)
        k = self.b.const(vals)
        self.note.append(f"{op}[{form}]")
        ins = [x, k] if self.rng.random() < 0.7 else [k, x]
        return self.b.op(op, ins), shape

    def block_pool(self, x, shape):
        n, c, h, w = shape
        op = self.choice(["MaxPool", "AveragePool"])
        if min(h, w) >= 4 and self.rng.random() < 0.6:
            k, s, p = 2, 2, 0
        else:
            k, s, p = 3, 1, 1
        attrs = dict(kernel_shape=[k, k], strides=[s, s], pads=[p] * 4)
        if op == "AveragePool" and p:
            attrs["count_include_pad"] = int(self.rng.integers(2))
        self.note.append(f"{op}/k{k}s{s}")
        y = self.b.op(op, [x], **attrs)
        return y, [n, c, (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1]

    def _slice(self, x, starts, ends, axes, steps=None):
        b = self.b
        ins = [
            x,
            b.const(starts, np.int64, "starts"),
            b.const(ends, np.int64, "ends"),
            b.const(axes, np.int64, "axes"),
        ]
        if steps is not None:
            ins.append(b.const(steps, np.int64, "steps"))
        return b.op("Slice", ins)

    def block_slice_c(self, x, shape):
        c = shape[1]
        if c < 4:
            return x, shape
        step = 2 if self.rng.random() < 0.15 else 1
        keep = int(self.rng.integers(2, c))  # a proper sub-range of >= 2 channels
        start = int(self.rng.integers(0, c - keep + 1))
        end = start + keep
        out_c = len(range(start, end, step))
        s_val = start - c if self.rng.random() < 0.3 else start
        e_val = INT_MAX if end == c and self.rng.random() < 0.5 else end
        axis = 1 if self.rng.random() < 0.7 else -3
        steps = [step] if step > 1 or self.rng.random() < 0.3 else None
        note = f"slice_c[{s_val}:{'max' if e_val == INT_MAX else e_val}:{step}]"
        if steps is None and self.rng.random() < 0.25:  # no axes input: axes 0, 1
            self.note.append(note + "/no-axes")
            ins = [x, self.b.const([0, s_val], np.int64, "starts")]
            ins.append(self.b.const([INT_MAX, e_val], np.int64, "ends"))
            return self.b.op("Slice", ins), [shape[0], out_c, shape[2], shape[3]]
        self.note.append(note)
        y = self._slice(x, [s_val], [e_val], [axis], steps)
        return y, [shape[0], out_c, shape[2], shape[3]]

    def block_slice_s(self, x, shape):
        axes = self.choice([[2], [3], [2, 3]])
        starts, ends, new = [], [], list(shape)
        for ax in axes:
            size = shape[ax]
            if size < 4:
                return x, shape
            a = int(self.rng.integers(0, 2))
            e = size - int(self.rng.integers(0, 2))
            starts.append(a)
            ends.append(e if e < size or self.rng.random() < 0.5 else INT_MAX)
            new[ax] = e - a
        self.note.append(f"slice_s{axes}")
        return self._slice(x, starts, ends, axes), new

    def block_transpose(self, x, shape):
        b = self.b
        n, c, h, w = shape
        if self.rng.random() < 0.2:  # swap the spatial axes (the channels pass through)
            self.note.append("swap-hw")
            return b.op("Transpose", [x], perm=[0, 1, 3, 2]), [n, c, w, h]
        t = b.op("Transpose", [x], perm=[0, 2, 3, 1])
        form = self.choice(["mul", "matmul", "matmul_bias", "relu"])
        self.note.append(f"nhwc-{form}")
        if form == "mul":
            y, c2 = b.op("Mul", [t, b.const(1 + 0.3 * self.rng.standard_normal(c))]), c
        elif form == "relu":
            y, c2 = b.op("Relu", [t]), c
        else:
            c2 = int(self.rng.integers(4, MAX_C + 1))
            y = b.op("MatMul", [t, b.weight(c, c2, fan_in=c)])
            if form == "matmul_bias":
                y = b.op("Add", [y, b.const(0.1 * self.rng.standard_normal(c2))])
        return b.op("Transpose", [y], perm=[0, 3, 1, 2]), [n, c2, h, w]

    def block_se(self, x, shape):
        b = self.b
        n, c, h, w = shape
        g = b.op("GlobalAveragePool", [x])
        mid = max(2, c // int(self.rng.integers(2, 5)))
        self.note.append(f"se{c}/{mid}")
        y = b.op(
            "Conv",
            [g, b.weight(mid, c, 1, 1), b.const(0.1 * self.rng.standard_normal(mid))],
            kernel_shape=[1, 1],
        )
        y = b.op("Relu", [y])
        y = b.op("Conv", [y, b.weight(c, mid, 1, 1)], kernel_shape=[1, 1])
        gate = b.op("Sigmoid", [y])
        ins = [x, gate] if self.rng.random() < 0.5 else [gate, x]
        return b.op("Mul", ins), shape

    def block_shuffle(self, x, shape):
        b = self.b
        n, c, h, w = shape
        divs = [g for g in range(2, c) if c % g == 0]
        if not divs:
            return x, shape
        g = self.choice(divs)
        self.note.append(f"shuffle/g{g}")
        r = b.op("Reshape", [x, b.const([n, g, c // g, h, w], np.int64, "shape")])
        t = b.op("Transpose", [r], perm=[0, 2, 1, 3, 4])
        back = [n, c, h, w] if self.rng.random() < 0.5 else [n, -1, h, w]
        return b.op("Reshape", [t, b.const(back, np.int64, "shape")]), shape

    # -- heads --------------------------------------------------------------------------
    def _gemm(self, x, f, k):
        b = self.b
        tb = int(self.rng.integers(2))
        wname = b.weight(*((k, f) if tb else (f, k)), fan_in=f)
        ins = [x, wname]
        r = self.rng.random()
        if r < 0.7:  # bias [K], or [1, K]
            cshape = (1, k) if r < 0.2 else (k,)
            ins.append(b.const(0.1 * self.rng.standard_normal(cshape)))
        self.note.append(f"gemm{f}->{k}/tB{tb}" + ("/b" if len(ins) == 3 else ""))
        return b.op("Gemm", ins, transB=tb)

    def _matmul(self, x, f, k):
        b = self.b
        y = b.op("MatMul", [x, b.weight(f, k, fan_in=f)])
        bias = self.rng.random() < 0.6
        if bias:
            y = b.op("Add", [y, b.const(0.1 * self.rng.standard_normal(k))])
        self.note.append(f"matmul{f}->{k}" + ("/b" if bias else ""))
        return y

    def _flat(self, x, n, f):
        b = self.b
        form = self.choice(["flatten", "reshape", "reshape0", "reshape_n"])
        self.note.append(form)
        if form == "flatten":
            return b.op("Flatten", [x], axis=1)
        target = {"reshape": [n, -1], "reshape0": [0, -1], "reshape_n": [n, f]}[form]
        return b.op("Reshape", [x, b.const(target, np.int64, "shape")])

    def head(self, kind, x, shape):
        b = self.b
        n, c, h, w = shape
        k = int(self.rng.integers(3, 11))
        if kind == "none":
            if self.rng.random() < 0.5:  # end on a conv (its output channels are frozen)
                return self.conv(x, shape, variant="plain", stride=1)
            return x, shape
        if kind in ("gap_gemm", "gap_matmul", "gap_mlp"):
            g = b.op("GlobalAveragePool", [x])
            self.note.append("gap")
            f = self._flat(g, n, c)
            if kind == "gap_gemm":
                return self._gemm(f, c, k), [n, k]
            if kind == "gap_matmul":
                return self._matmul(f, c, k), [n, k]
            hid = int(self.rng.integers(4, 17))
            mid = self._gemm(f, c, hid) if self.rng.random() < 0.5 else self._matmul(f, c, hid)
            if self.rng.random() < 0.3:
                mid, _ = self.bn(mid, [n, hid])
            mid, _ = self.act(mid, [n, hid], self.choice(["Relu", "Sigmoid"]))
            out = self._gemm(mid, hid, k) if self.rng.random() < 0.5 else self._matmul(mid, hid, k)
            return out, [n, k]
        if kind in ("flatten_gemm", "reshape_matmul"):
            if h * w > 16:  # keep the feature count small
                x = b.op("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2])
                h, w = h // 2, w // 2
                self.note.append("MaxPool/k2s2")
            f = self._flat(x, n, c * h * w)
            if kind == "flatten_gemm":
                return self._gemm(f, c * h * w, k), [n, k]
            return self._matmul(f, c * h * w, k), [n, k]
        if kind == "tokens_matmul":  # [N,C,H,W] -> [N,C,HW] -> [N,HW,C] @ [C,K]
            r = b.op("Reshape", [x, b.const([n, c, h * w], np.int64, "shape")])
            t = b.op("Transpose", [r], perm=[0, 2, 1])
            self.note.append("tokens")
            return self._matmul(t, c, k), [n, h * w, k]
        raise ValueError(kind)


def build_model(recipe: Recipe) -> onnx.ModelProto:
    """The model a recipe describes (no validity check; see ``random_model``)."""
    b = _Builder(recipe.opset, recipe.seed)
    shape = list(recipe.input_shape)
    x = "input"
    notes, extra = [], None
    for i, (kind, bseed) in enumerate(recipe.blocks):
        blk = _Block(b, bseed)
        x, shape = getattr(blk, f"block_{kind}")(x, shape)
        notes.append(f"{kind}({' '.join(blk.note)})")
        if i == 1 and recipe.extra_output and x != "input":
            extra = (x, list(shape))
    blk = _Block(b, recipe.head[1])
    x, shape = blk.head(recipe.head[0], x, shape)
    notes.append(f"head:{recipe.head[0]}({' '.join(blk.note)})")
    recipe.notes = notes
    outputs = [helper.make_tensor_value_info(x, TensorProto.FLOAT, shape)]
    if extra is not None and extra[0] != x:
        outputs.append(helper.make_tensor_value_info(extra[0], TensorProto.FLOAT, extra[1]))
    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, recipe.input_shape)]
    graph = helper.make_graph(b.nodes, f"fuzz{recipe.seed}", inputs, outputs, b.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", recipe.opset)])
    model.ir_version = 9 if recipe.opset >= 19 else 8
    model.producer_name = "graphprune-fuzz"
    model.doc_string = (
        f"opset {recipe.opset} input {recipe.input_shape}"
        + (" +extra-output" if len(outputs) > 1 else "")
        + " | "
        + " > ".join(notes)
        + " || recipe "
        + recipe.to_json()
    )
    return model


def check_model(model: onnx.ModelProto) -> None:
    """Raise unless the model passes the full checker and runs in ONNX Runtime."""
    onnx.checker.check_model(model, full_check=True)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    feed = {"input": np.random.default_rng(0).standard_normal(shape).astype(np.float32)}
    outs = sess.run(None, feed)
    for o, vi in zip(outs, model.graph.output, strict=True):
        want = [d.dim_value for d in vi.type.tensor_type.shape.dim]
        if list(o.shape) != want or not np.isfinite(o).all():
            raise ValueError(f"output {vi.name}: shape {o.shape}, declared {want}")


def random_model(seed: int) -> onnx.ModelProto:
    """A valid random model for ``seed`` (redrawn from derived seeds if a draw fails)."""
    last = None
    for attempt in range(20):
        recipe = draw_recipe(seed if attempt == 0 else seed * 1000 + 100_000_000 + attempt)
        recipe.seed = seed
        try:
            model = build_model(recipe)
            check_model(model)
            return model
        except Exception as e:  # a draw that does not build: try another
            last = e
    raise RuntimeError(f"seed {seed}: no valid model in 20 draws ({last})")


def recipe_of(model: onnx.ModelProto) -> Recipe:
    """The recipe a model was built from (kept in its doc_string)."""
    d = json.loads(model.doc_string.split("|| recipe ", 1)[1])
    return Recipe(
        d["seed"],
        d["opset"],
        d["input_shape"],
        [tuple(x) for x in d["blocks"]],
        tuple(d["head"]),
        d["extra_output"],
    )


def describe(model: onnx.ModelProto) -> str:
    """One line: opset, input, each block with its choices, the head."""
    text = model.doc_string.split(" || recipe ", 1)[0]
    return text or f"{len(model.graph.node)} nodes"
