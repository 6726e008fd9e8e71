"""Bad inputs to the CLI: every one is refused with the right exit code and one line on
stderr, leaves nothing behind and does not touch its input.

Each case builds its files in ``tmp_path`` (the working directory of the run) and returns
the argv. The run is in-process (``graphprune.cli.main``) with stdout/stderr captured at
the file-descriptor level, so ONNX Runtime's C++ log lines count too; a logging handler
on stderr and the warnings a fresh process shows are added, as a real process would print
them. Two cases also run as a real process.

Exit codes: 0 ok, 1 internal error (never from here), 2 usage, 3 unusable model, 4 bad
plan, 6 parity, 7 bad data, 8 nothing pruned. Features that must not crash (subgraphs,
old and new opsets, shared weights, an unknown op mid-graph) end in 0 or 8, never 1.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import os
import re
import stat
import subprocess
import sys
import tempfile
import traceback
import warnings
import zlib
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from graphprune.cli import main

F = TensorProto.FLOAT
OUT, REPORT, PLAN = "out.onnx", "report.json", "plan.json"

# --------------------------------------------------------------------------- builders


def _w(name, *shape, seed=0, dtype=np.float32, values=None):
    rng = np.random.default_rng(zlib.crc32(name.encode()) + seed)
    arr = values if values is not None else rng.standard_normal(shape)
    return numpy_helper.from_array(np.asarray(arr, dtype=dtype), name)


def _vi(name, shape, dtype=F):
    return helper.make_tensor_value_info(name, dtype, shape)


def _model(nodes, inputs, outputs, inits=(), opset=17, ir=8, value_info=(), extra_opsets=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits), value_info=value_info)
    opsets = [helper.make_opsetid("", opset), *(helper.make_opsetid(d, v) for d, v in extra_opsets)]
    m = helper.make_model(graph, opset_imports=opsets)
    m.ir_version = ir
    return m


def _conv(x, w, b, y, **kw):
    return helper.make_node("Conv", [x, w, b], [y], name=y, pads=[1, 1, 1, 1], **kw)


def _node(op, ins, out, **kw):
    return helper.make_node(op, ins, [out], name=out, **kw)


def cnn(opset=17, ir=8, mid=None):
    """x[N,3,8,8] -> Conv(8) -> Relu -> [mid] -> Conv(4) -> GAP -> Flatten -> y[N,4].
    One prunable group: the 8 channels between the convs. ``mid(src) -> (nodes, out,
    inits, value_info, extra_opsets)`` inserts nodes after the Relu."""
    nodes = [_conv("x", "w1", "b1", "c1"), _node("Relu", ["c1"], "r1")]
    inits = [_w("w1", 8, 3, 3, 3), _w("b1", 8), _w("w2", 4, 8, 3, 3), _w("b2", 4)]
    vis, extra, src = [], [], "r1"
    if mid is not None:
        more, src, more_inits, vis, extra = mid("r1")
        nodes += more
        inits += more_inits
    nodes += [
        _conv(src, "w2", "b2", "c2"),
        _node("GlobalAveragePool", ["c2"], "p"),
        _node("Flatten", ["p"], "y"),
    ]
    return _model(
        nodes,
        [_vi("x", ["N", 3, 8, 8])],
        [_vi("y", ["N", 4])],
        inits,
        opset=opset,
        ir=ir,
        value_info=vis,
        extra_opsets=extra,
    )


def mlp(inits_as_inputs=False):
    """x[N,16] -> MatMul(32) + b -> Relu -> MatMul(4) -> y: 32 prunable neurons."""
    inits = [_w("W1", 16, 32), _w("B1", 32), _w("W2", 32, 4)]
    nodes = [
        _node("MatMul", ["x", "W1"], "m1"),
        _node("Add", ["m1", "B1"], "a1"),
        _node("Relu", ["a1"], "r1"),
        _node("MatMul", ["r1", "W2"], "y"),
    ]
    inputs = [_vi("x", ["N", 16])]
    if inits_as_inputs:  # the IR < 4 style: every weight is also a graph input
        inputs += [_vi(t.name, list(t.dims)) for t in inits]
    return _model(nodes, inputs, [_vi("y", ["N", 4])], inits)


def tied():
    """One weight used by two MatMuls: x -> MatMul(W) -> Relu -> MatMul(W) -> y."""
    nodes = [_node("MatMul", ["x", "W"], "m1"), _node("Relu", ["m1"], "r1")]
    nodes.append(_node("MatMul", ["r1", "W"], "y"))
    return _model(nodes, [_vi("x", ["N", 16])], [_vi("y", ["N", 16])], [_w("W", 16, 16)])


def single_relu():
    return _model([_node("Relu", ["x"], "y")], [_vi("x", ["N", 8])], [_vi("y", ["N", 8])])


def add_two_inputs():
    return _model(
        [_node("Add", ["a", "b"], "y")],
        [_vi("a", ["N", 8]), _vi("b", ["N", 8])],
        [_vi("y", ["N", 8])],
    )


def custom_mid_deep(custom: bool = True):
    """conv(8) relu conv(8) relu | Frobnicate | conv(8) relu conv(4) GAP Flatten: the
    groups on either side of the unknown op are prunable, the one it touches is not."""
    inits = [_w("w1", 8, 3, 3, 3), _w("b1", 8), _w("w2", 8, 8, 3, 3), _w("b2", 8)]
    inits += [_w("w3", 8, 8, 3, 3), _w("b3", 8), _w("w4", 4, 8, 3, 3), _w("b4", 4)]
    nodes = [
        _conv("x", "w1", "b1", "c1"),
        _node("Relu", ["c1"], "r1"),
        _conv("r1", "w2", "b2", "c2"),
        _node("Relu", ["c2"], "r2"),
        helper.make_node("Frobnicate", ["r2"], ["fz"], name="fz", domain="acme.unknown")
        if custom  # an op of a domain ONNX Runtime does not know
        else helper.make_node("LpNormalization", ["r2"], ["fz"], name="fz", axis=1),
        _conv("fz", "w3", "b3", "c3"),
        _node("Relu", ["c3"], "r3"),
        _conv("r3", "w4", "b4", "c4"),
        _node("GlobalAveragePool", ["c4"], "p"),
        _node("Flatten", ["p"], "y"),
    ]
    return _model(
        nodes,
        [_vi("x", ["N", 3, 8, 8])],
        [_vi("y", ["N", 4])],
        inits,
        value_info=[_vi("fz", ["N", 8, 8, 8])],
        extra_opsets=[("acme.unknown", 1)] if custom else [],
    )


def _no_cpu_kernel_mid(src):
    """Erf on double: valid ONNX, but ONNX Runtime has no CPU kernel for it."""
    nodes = [
        _node("Cast", [src], "d", to=TensorProto.DOUBLE),
        _node("Erf", ["d"], "e"),
        _node("Cast", ["e"], "ef", to=F),
    ]
    return nodes, "ef", [], [], []


def _if_mid(src):
    then_g = helper.make_graph(
        [_node("Identity", [src], "t_out")], "then", [], [_vi("t_out", ["N", 8, 8, 8])]
    )
    else_g = helper.make_graph(
        [_node("Neg", [src], "e_out")], "else", [], [_vi("e_out", ["N", 8, 8, 8])]
    )
    node = helper.make_node(
        "If", ["cond"], ["iff"], name="iff", then_branch=then_g, else_branch=else_g
    )
    cond = numpy_helper.from_array(np.array(True), "cond")
    return [node], "iff", [cond], [], []


def _loop_mid(src):
    body = helper.make_graph(
        [_node("Add", ["v_in", src], "v_out"), _node("Identity", ["c_in"], "c_out")],
        "body",
        [_vi("i", [], TensorProto.INT64), _vi("c_in", [], TensorProto.BOOL), _vi("v_in", None)],
        [_vi("c_out", [], TensorProto.BOOL), _vi("v_out", None)],
    )
    node = helper.make_node("Loop", ["trip", "keep", src], ["lv"], name="lv", body=body)
    inits = [
        numpy_helper.from_array(np.array(2, dtype=np.int64), "trip"),
        numpy_helper.from_array(np.array(True), "keep"),
    ]
    # lv's shape is declared so that plain shape inference completes: without it the tool
    # falls back to ORT's symbolic inference, whose first import (torch, sympy) costs ~7 s
    return [node], "lv", inits, [_vi("lv", ["N", 8, 8, 8])], []


def _u8(name, *shape, values=None):
    rng = np.random.default_rng(len(name) + sum(shape))
    arr = values if values is not None else rng.integers(0, 256, size=shape)
    return numpy_helper.from_array(np.asarray(arr, dtype=np.uint8), name)


def _scalar(name, value, dtype=np.float32):
    return numpy_helper.from_array(np.asarray(value, dtype=dtype), name)


def qlinear_conv():
    """A statically quantized CNN: QuantizeLinear -> QLinearConv x2 -> DequantizeLinear."""
    inits = [
        _scalar("xs", 0.05), _u8("xz", values=128),
        _u8("w1q", 8, 3, 3, 3), _scalar("w1s", 0.01), _u8("w1z", values=128),
        _scalar("hs", 0.1), _u8("hz", values=0),
        numpy_helper.from_array(np.zeros(8, np.int32), "b1q"),
        _u8("w2q", 4, 8, 3, 3), _scalar("w2s", 0.01), _u8("w2z", values=128),
        _scalar("ys", 0.1), _u8("yz", values=128),
        numpy_helper.from_array(np.zeros(4, np.int32), "b2q"),
    ]  # fmt: skip
    nodes = [
        _node("QuantizeLinear", ["x", "xs", "xz"], "xq"),
        helper.make_node(
            "QLinearConv",
            ["xq", "xs", "xz", "w1q", "w1s", "w1z", "hs", "hz", "b1q"],
            ["hq"],
            name="qc1",
            pads=[1, 1, 1, 1],
        ),
        helper.make_node(
            "QLinearConv",
            ["hq", "hs", "hz", "w2q", "w2s", "w2z", "ys", "yz", "b2q"],
            ["yq"],
            name="qc2",
            pads=[1, 1, 1, 1],
        ),
        _node("DequantizeLinear", ["yq", "ys", "yz"], "y"),
    ]
    return _model(nodes, [_vi("x", ["N", 3, 8, 8])], [_vi("y", ["N", 4, 8, 8])], inits)


def _dynamic_quantized(op, w1_shape, w2_shape, in_shape, out_shape, **attrs):
    """ORT's dynamic quantization pattern around ``op`` (MatMulInteger / ConvInteger):
    DynamicQuantizeLinear -> op -> Cast -> Mul(scale) -> Relu, twice."""
    inits = [
        _u8("w1q", *w1_shape), _u8("w1z", values=128), _scalar("w1s", 0.01),
        _u8("w2q", *w2_shape), _u8("w2z", values=128), _scalar("w2s", 0.01),
    ]  # fmt: skip
    nodes = []
    src = "x"
    for i in (1, 2):
        dq = helper.make_node(
            "DynamicQuantizeLinear", [src], [f"q{i}", f"s{i}", f"z{i}"], name=f"dql{i}"
        )
        nodes += [
            dq,
            _node(op, [f"q{i}", f"w{i}q", f"z{i}", f"w{i}z"], f"i{i}", **attrs),
            _node("Cast", [f"i{i}"], f"f{i}", to=F),
            _node("Mul", [f"s{i}", f"w{i}s"], f"sc{i}"),
            _node("Mul", [f"f{i}", f"sc{i}"], f"m{i}"),
        ]
        src = f"m{i}"
        if i == 1:
            nodes.append(_node("Relu", ["m1"], "r1"))
            src = "r1"
    nodes.append(_node("Identity", [src], "y"))
    return _model(nodes, [_vi("x", in_shape)], [_vi("y", out_shape)], inits)


def matmul_integer():
    return _dynamic_quantized("MatMulInteger", (16, 32), (32, 4), ["N", 16], ["N", 4])


def conv_integer():
    return _dynamic_quantized(
        "ConvInteger", (8, 3, 3, 3), (4, 8, 3, 3), ["N", 3, 8, 8], ["N", 4, 8, 8],
        pads=[1, 1, 1, 1],
    )  # fmt: skip


NEWEST = onnx.defs.onnx_opset_version()


def opset7():
    """Opset 7 with IR 3, where every initializer must also be a graph input."""
    m = cnn(opset=7, ir=3)
    m.graph.input.extend(_vi(t.name, list(t.dims)) for t in m.graph.initializer)
    return m


def newest_opset():
    m = cnn(opset=NEWEST)
    m.ir_version = onnx.IR_VERSION
    return m


#: models that are valid (checker and ONNX Runtime accept them): a refusal of one of them
#: is the tool's doing, not the test's
VALID = {
    "cnn": cnn,
    "mlp": mlp,
    "tied": tied,
    "single_relu": single_relu,
    "add_two_inputs": add_two_inputs,
    "qlinear_conv": qlinear_conv,
    "matmul_integer": matmul_integer,
    "conv_integer": conv_integer,
    "if_subgraph": lambda: cnn(mid=_if_mid),
    "loop_subgraph": lambda: cnn(mid=_loop_mid),
    "opset7": opset7,
    "newest_opset": newest_opset,
    "inits_as_inputs": lambda: mlp(inits_as_inputs=True),
}


def _ort_loads(model) -> bool:
    try:
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    except Exception:
        return False
    return True


# ----------------------------------------------------------------------------- files


def save(model, path: Path) -> Path:
    onnx.save_model(model, str(path))
    return path


def cnn_file(d: Path, name="model.onnx", **kw) -> Path:
    return save(cnn(**kw), d / name)


def x_batch(n=4, dtype=np.float32, shape=(3, 8, 8)):
    return np.random.default_rng(1).standard_normal((n, *shape)).astype(dtype)


def npz(d: Path, name: str, allow_pickle=False, **arrays) -> Path:
    p = d / name
    np.savez(p, allow_pickle=allow_pickle, **arrays)
    return p


class Tripwire:
    """Unpickling this writes a marker file: data files must be read without pickle."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def prune(model, *extra, out=OUT):
    """``prune MODEL -o OUT --json --save-plan ...``: every output a prune can write."""
    return ["prune", str(model), "-o", str(out), "--json", REPORT, "--save-plan", PLAN, *extra]


@functools.cache
def plan_json(builder: str) -> str:
    """A plan the tool itself makes for a VALID model (ratio 0.5, no parity)."""
    from graphprune import PruneOptions, prune_model

    res = prune_model(VALID[builder](), PruneOptions(ratio=0.5, parity=False))
    return res.plan.to_json()


def plan_file(d: Path, edit=None, builder="cnn", text=None) -> Path:
    p = d / "given_plan.json"
    if text is None:
        data = json.loads(plan_json(builder))
        if edit:
            edit(data)
        text = json.dumps(data)
    p.write_text(text)
    return p


# ----------------------------------------------------------------------------- cases

CASES: list = []


def case(name: str, code: int, match: str | None = None, *, root_skip=False):
    """Register ``fn(d) -> argv`` as the bad-input case ``name``, expected to exit ``code``
    with an error line matching ``match`` (regex, searched case-insensitively)."""

    def deco(fn):
        marks = []
        if root_skip:
            marks.append(
                pytest.mark.skipif(
                    hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="root ignores file permissions",
                )
            )
        CASES.append(pytest.param(fn, code, match, id=name, marks=marks))
        return fn

    return deco


# -- 2: bad usage and options -----------------------------------------------------------

case("nothing_ratio_zero_alone", 8, r"--ratio is 0")(lambda d: prune(cnn_file(d), "--ratio", "0"))

for _name, _flags in {
    "ratio_one": ["--ratio", "1"],
    "ratio_above_one": ["--ratio", "1.5"],
    "ratio_negative": ["--ratio=-0.2"],
    "ratio_nan": ["--ratio", "nan"],
    "ratio_inf": ["--ratio", "inf"],
    "ratio_not_a_number": ["--ratio", "half"],
    "ratio_empty": ["--ratio", ""],
    "heads_one": ["--heads", "1"],
    "mlp_negative": ["--mlp=-0.5"],
    "channels_nan": ["--channels", "NaN"],
    "hidden_above_one": ["--hidden", "2"],
    "target_macs_zero": ["--target-macs", "0"],
    "target_macs_above_one": ["--target-macs", "1.5"],
    "target_macs_negative": ["--target-macs=-0.5"],
    "target_params_nan": ["--target-params", "nan"],
    "target_params_inf": ["--target-params", "inf"],
    "damping_negative": ["--damping=-1"],
    "round_to_zero": ["--round-to", "0"],
    "min_keep_zero": ["--min-keep", "0"],
    "seed_negative": ["--seed=-1"],
    "drop_layers_fraction": ["--drop-layers", "1.5"],
    "drop_list_repeated": ["--drop-layers-list", "1,1"],
    "criterion_unknown": ["--criterion", "vibes"],
    "reconstruct_needs_calib": ["--reconstruct", "lsq"],
    "input_shape_empty_dims": ["--input-shape", "x="],
    "input_shape_empty_name": ["--input-shape", "=1x3x8x8"],
    "input_shape_letters": ["--input-shape", "x=1x3xHx8"],
    "input_shape_zero_dim": ["--input-shape", "x=1x0x8x8"],
    "input_shape_negative_dim": ["--input-shape", "x=1x-3x8x8"],
    "input_shape_unknown_input": ["--input-shape", "images=1x3x8x8"],
    "input_shape_wrong_rank": ["--input-shape", "x=1x3x8"],
    "input_shape_contradicts_fixed_dims": ["--input-shape", "x=1x5x8x8"],
    "input_shape_given_twice": ["--input-shape", "x=1x3x8x8", "--input-shape", "x=2x3x8x8"],
    "unknown_flag": ["--frobnicate"],
    "ratio_missing_value": ["--ratio"],
}.items():
    case(f"usage_{_name}", 2)(lambda d, _f=_flags: prune(cnn_file(d), *_f))


@case("usage_prune_without_output", 2)
def _(d):
    return ["prune", str(cnn_file(d))]


@case("usage_unknown_subcommand", 2)
def _(d):
    return ["shrink", str(cnn_file(d))]


@case("usage_no_arguments", 2)
def _(d):
    return []


@case("usage_output_is_input", 2, r"input")
def _(d):
    m = cnn_file(d)
    return prune(m, out=m)


@case("usage_output_is_symlink_to_input", 2, r"input")
def _(d):
    m = cnn_file(d)
    (d / "link.onnx").symlink_to(m.name)
    return prune(m, out="link.onnx")


@case("usage_output_is_dot_relative_input", 2, r"input")
def _(d):
    cnn_file(d)
    return prune("model.onnx", out="./model.onnx")


@case("usage_output_is_dotdot_relative_input", 2, r"input")
def _(d):
    cnn_file(d)
    return prune("model.onnx", out=f"../{d.name}/model.onnx")


@case("usage_json_is_input", 2, r"input")
def _(d):
    m = cnn_file(d)
    return ["prune", str(m), "-o", OUT, "--json", str(m)]


@case("usage_save_plan_is_input", 2, r"input")
def _(d):
    m = cnn_file(d)
    return ["prune", str(m), "-o", OUT, "--save-plan", str(m)]


@case("usage_json_is_output", 2)
def _(d):
    return ["prune", str(cnn_file(d)), "-o", OUT, "--json", OUT]


@case("usage_output_in_readonly_dir", 2, r"cannot write .*ro/out\.onnx", root_skip=True)
def _(d):
    ro = d / "ro"
    ro.mkdir()
    ro.chmod(stat.S_IRUSR | stat.S_IXUSR)
    return prune(cnn_file(d), out="ro/out.onnx")


@case("usage_output_parent_is_a_file", 2, r"cannot write .*notadir/out\.onnx")
def _(d):
    (d / "notadir").write_text("a file\n")
    return prune(cnn_file(d), out="notadir/out.onnx")


@case("usage_json_parent_is_a_file", 2, r"cannot write .*notadir/report\.json")
def _(d):
    (d / "notadir").write_text("a file\n")
    return ["prune", str(cnn_file(d)), "-o", OUT, "--json", "notadir/report.json"]


@case("usage_save_plan_parent_is_a_file", 2, r"cannot write .*notadir/plan\.json")
def _(d):
    (d / "notadir").write_text("a file\n")
    return ["prune", str(cnn_file(d)), "-o", OUT, "--save-plan", "notadir/plan.json"]


@case("usage_output_on_unwritable_filesystem", 2, r"cannot write /proc/graphprune-nope/")
def _(d):  # a place even root cannot create a directory in
    return prune(cnn_file(d), out="/proc/graphprune-nope/out.onnx")


# -- 3: the input model cannot be used --------------------------------------------------


@case("model_missing", 3, r"no such file")
def _(d):
    return prune(d / "absent.onnx")


@case("model_is_a_directory", 3, r"is a directory")
def _(d):
    (d / "dir.onnx").mkdir()
    return prune(d / "dir.onnx")


@case("model_empty_file", 3)
def _(d):
    (d / "empty.onnx").write_bytes(b"")
    return prune(d / "empty.onnx")


@case("model_truncated_protobuf", 3)
def _(d):
    data = cnn().SerializeToString()
    (d / "cut.onnx").write_bytes(data[: len(data) // 2])
    return prune(d / "cut.onnx")


@case("model_random_bytes", 3)
def _(d):
    (d / "noise.onnx").write_bytes(np.random.default_rng(7).bytes(4096))
    return prune(d / "noise.onnx")


@case("model_text_file", 3)
def _(d):
    (d / "notes.onnx").write_text("this is not a model\nreally not\n")
    return prune(d / "notes.onnx")


@case("model_without_nodes", 3)
def _(d):
    return prune(save(_model([], [_vi("x", [1])], [_vi("x", [1])]), d / "hollow.onnx"))


def _external(d: Path) -> tuple[Path, Path]:
    m = cnn()
    onnx.save_model(
        m,
        str(d / "ext.onnx"),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="ext.onnx.data",
        size_threshold=0,
    )
    return d / "ext.onnx", d / "ext.onnx.data"


@case("model_external_data_missing", 3)
def _(d):
    m, data = _external(d)
    data.unlink()
    return prune(m)


@case("model_external_data_truncated", 3)
def _(d):
    m, data = _external(d)
    data.write_bytes(data.read_bytes()[:100])
    return prune(m)


@case("model_unknown_custom_domain_op", 3, r"onnx ?runtime|ort|load")
def _(d):
    return prune(save(custom_mid_deep(), d / "custom.onnx"))


@case("model_op_without_cpu_kernel", 3, r"onnx ?runtime|ort|kernel|implementation")
def _(d):
    return prune(cnn_file(d, mid=_no_cpu_kernel_mid))


@case("model_checker_duplicate_output_name", 3, r"checker|duplicate|more than once")
def _(d):
    m = cnn()
    m.graph.node[1].output[0] = "c1"  # Relu now writes c1, which Conv already writes
    m.graph.node[2].input[0] = "c1"
    return prune(save(m, d / "dup.onnx"))


@case("model_checker_undefined_input", 3, r"checker|ghost|not .*defined|topolog")
def _(d):
    m = cnn()
    m.graph.node[2].input[0] = "ghost"  # the second conv reads a tensor nobody makes
    return prune(save(m, d / "ghost.onnx"))


@case("model_ir_version_from_the_future", 3)
def _(d):
    m = cnn()
    m.ir_version = 99
    return prune(save(m, d / "future_ir.onnx"))


@case("model_opset_from_the_future", 3)
def _(d):
    return prune(cnn_file(d, opset=NEWEST + 50))


# -- 3: analyze on unusable models ------------------------------------------------------


@case("analyze_missing", 3, r"no such file")
def _(d):
    return ["analyze", str(d / "absent.onnx"), "--json", REPORT]


@case("analyze_directory", 3, r"is a directory")
def _(d):
    (d / "dir.onnx").mkdir()
    return ["analyze", str(d / "dir.onnx"), "--json", REPORT]


@case("analyze_garbage", 3)
def _(d):
    (d / "noise.onnx").write_bytes(np.random.default_rng(8).bytes(1000))
    return ["analyze", str(d / "noise.onnx"), "--json", REPORT]


@case("analyze_empty_file", 3)
def _(d):
    (d / "empty.onnx").write_bytes(b"")
    return ["analyze", str(d / "empty.onnx"), "--json", REPORT]


@case("analyze_unknown_flag", 2)
def _(d):
    return ["analyze", str(cnn_file(d)), "--frobnicate"]


# -- 4: bad --plan ----------------------------------------------------------------------


@case("plan_missing_file", 4)
def _(d):
    return prune(cnn_file(d), "--plan", "absent_plan.json")


@case("plan_not_json", 4)
def _(d):
    return prune(cnn_file(d), "--plan", str(plan_file(d, text="{groups: oops")))


@case("plan_json_list", 4)
def _(d):
    return prune(cnn_file(d), "--plan", str(plan_file(d, text="[1, 2, 3]")))


@case("plan_json_without_groups", 4)
def _(d):
    return prune(cnn_file(d), "--plan", str(plan_file(d, text='{"criterion": "l2"}')))


@case("plan_of_another_model", 4)
def _(d):
    return prune(cnn_file(d), "--plan", str(plan_file(d, builder="mlp")))


@case("plan_of_another_model_no_input_shapes", 4)
def _(d):  # the same, without the input sizes the plan records: only its groups are wrong
    edit = lambda p: p.update(input_shapes={})  # noqa: E731
    return prune(cnn_file(d), "--plan", str(plan_file(d, edit, builder="mlp")))


@case("plan_of_a_same_shaped_model_with_other_groups", 4)
def _(d):  # a plan for a different CNN that takes the same input: its group keys differ
    def rename(p):
        for g in p["groups"]:
            g["key"] = "renamed_" + g["key"]

    return prune(cnn_file(d), "--plan", str(plan_file(d, rename)))


@case("plan_wrong_version", 4, r"version")
def _(d):
    return prune(cnn_file(d), "--plan", str(plan_file(d, lambda p: p.update(version=999))))


def _all_units(p):
    p["groups"][0]["remove"] = list(range(p["groups"][0]["units"]))


@case("plan_removes_every_unit", 4)
def _(d):
    return prune(cnn_file(d), "--plan", str(plan_file(d, _all_units)))


@case("plan_unit_out_of_range", 4)
def _(d):
    return prune(
        cnn_file(d), "--plan", str(plan_file(d, lambda p: p["groups"][0].update(remove=[99])))
    )


@case("plan_unit_not_an_integer", 4)
def _(d):
    return prune(
        cnn_file(d), "--plan", str(plan_file(d, lambda p: p["groups"][0].update(remove=["a"])))
    )


# -- 7: bad calibration / evaluation data -----------------------------------------------


def calib(d, path):
    return prune(cnn_file(d), "--criterion", "activation", "--calib", str(path))


def evaluate(d, path):
    return prune(cnn_file(d), "--eval", str(path))


@case("calib_missing_file", 7)
def _(d):
    return calib(d, d / "absent.npz")


@case("calib_not_an_npz", 7)
def _(d):
    (d / "calib.npz").write_text("x,y\n1,2\n")
    return calib(d, d / "calib.npz")


@case("calib_plain_npy", 7)
def _(d):
    np.save(d / "calib.npy", x_batch())
    return calib(d, d / "calib.npy")


@case("calib_empty_directory", 7)
def _(d):
    (d / "calib_dir").mkdir()
    return calib(d, d / "calib_dir")


@case("calib_wrong_input_name", 7, r"images|\bx\b")
def _(d):
    return calib(d, npz(d, "calib.npz", images=x_batch()))


@case("calib_wrong_dtype", 7, r"dtype|int64|float")
def _(d):
    return calib(d, npz(d, "calib.npz", x=x_batch(dtype=np.int64)))


@case("calib_string_dtype", 7)
def _(d):
    return calib(d, npz(d, "calib.npz", x=np.full((4, 3, 8, 8), "a")))


@case("calib_wrong_rank", 7, r"shape|rank|dim")
def _(d):
    return calib(d, npz(d, "calib.npz", x=x_batch(shape=(3, 8))))


@case("calib_wrong_fixed_dim", 7, r"shape|dim")
def _(d):
    return calib(d, npz(d, "calib.npz", x=x_batch(shape=(5, 8, 8))))


@case("calib_nan", 7, r"nan")
def _(d):
    x = x_batch()
    x[1, 0, 2, 3] = np.nan
    return calib(d, npz(d, "calib.npz", x=x))


@case("calib_inf", 7, r"inf")
def _(d):
    x = x_batch()
    x[0, 1, 0, 0] = np.inf
    return calib(d, npz(d, "calib.npz", x=x))


@case("calib_empty_array", 7, r"empty|no samples|0 samples")
def _(d):
    return calib(d, npz(d, "calib.npz", x=x_batch(n=0)))


@case("calib_object_array_not_unpickled", 7)
def _(d):
    evil = np.array([Tripwire(str(d / "PWNED"))], dtype=object)
    return calib(d, npz(d, "calib.npz", allow_pickle=True, x=evil))


@case("eval_missing_file", 7)
def _(d):
    return evaluate(d, d / "absent.npz")


@case("eval_wrong_input_name", 7)
def _(d):
    return evaluate(d, npz(d, "eval.npz", pixels=x_batch(), labels=np.arange(4) % 4))


@case("eval_labels_wrong_length", 7, r"label")
def _(d):
    return evaluate(d, npz(d, "eval.npz", x=x_batch(n=4), labels=np.arange(3)))


@case("eval_nan", 7, r"nan")
def _(d):
    x = x_batch()
    x[3] = np.nan
    return evaluate(d, npz(d, "eval.npz", x=x))


@case("eval_object_array_not_unpickled", 7)
def _(d):
    evil = np.array([Tripwire(str(d / "PWNED"))], dtype=object)
    return evaluate(d, npz(d, "eval.npz", allow_pickle=True, x=x_batch(), labels=evil))


# -- 8: nothing pruned ------------------------------------------------------------------


@case("nothing_single_relu", 8)
def _(d):
    return prune(save(single_relu(), d / "relu.onnx"))


@case("nothing_add_of_two_inputs", 8)
def _(d):
    return prune(save(add_two_inputs(), d / "add.onnx"))


@case("nothing_heads_on_a_cnn", 8, r"--heads")
def _(d):
    return prune(cnn_file(d), "--heads", "0.5")


@case("nothing_recurrent_on_a_cnn", 8, r"--recurrent")
def _(d):
    return prune(cnn_file(d), "--recurrent", "0.5")


@case("nothing_drop_layers_on_a_plain_cnn", 8, r"--drop-layers")
def _(d):
    return prune(cnn_file(d), "--drop-layers", "1")


@case("nothing_ratio_rounds_to_zero_units", 8, r"--ratio")
def _(d):
    return prune(cnn_file(d), "--ratio", "0.01")


@case("nothing_pruned_leaves_no_output_directory", 8)
def _(d):  # the tool may create a missing output directory, but not for a refused run
    return prune(cnn_file(d), "--ratio", "0.01", out="new_dir/sub/out.onnx")


@case("nothing_exclude_everything", 8)
def _(d):
    return prune(cnn_file(d), "--exclude", "*")


QUANT = r"prune\b.* before quantiz"


@case("nothing_quantized_qlinearconv", 8, QUANT)
def _(d):
    return prune(save(qlinear_conv(), d / "q.onnx"))


@case("nothing_quantized_matmulinteger", 8, QUANT)
def _(d):
    return prune(save(matmul_integer(), d / "q.onnx"))


@case("nothing_quantized_convinteger", 8, QUANT)
def _(d):
    return prune(save(conv_integer(), d / "q.onnx"))


# ----------------------------------------------------------------------------- harness


#: ONNX Runtime's own telemetry session file, written to $TMPDIR on its first import
ORT_SESSION_FILE = os.path.join(".tmp", ".ses")


def snapshot(root: Path) -> dict[str, str]:
    """Every entry under ``root``: files by content hash, dirs and links by kind."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = "link:" + os.readlink(p)
            elif p.is_dir():
                out[rel] = "dir"
            else:
                out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    out.pop(ORT_SESSION_FILE, None)
    return out


_QUIET = (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning)


def run_cli(argv, capfd) -> tuple[int, str, str]:
    """``main(argv)``; returns (exit code, stdout, stderr) as a fresh process would show
    them: log records on stderr, warnings printed, ORT's C++ log lines (fd 2) included."""
    capfd.readouterr()
    root = logging.getLogger()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.WARNING)
    root.addHandler(handler)
    tb = ""
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("default")
            try:
                code = main([str(a) for a in argv])
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 1
            except BaseException:  # noqa: BLE001 - an escape is a finding
                tb, code = traceback.format_exc(), 1
    finally:
        root.removeHandler(handler)
    out, err = capfd.readouterr()
    for w in caught:
        if not issubclass(w.category, _QUIET):
            err += f"{w.filename}:{w.lineno}: {w.category.__name__}: {w.message}\n"
    return code, out, err + tb


def _verdict(code, err) -> str:
    return f"exit {code}; stderr: {err.strip()!r}"


def assert_refused(d: Path, before: dict, code: int, err: str, out: str, want: int, match):
    said = _verdict(code, err)
    assert "Traceback" not in err + out, said
    assert code == want, said
    lines = err.splitlines()
    assert len(lines) == 1, f"stderr must be one line: {said}"
    assert lines[0].startswith("graphprune: error:"), said
    if match:
        assert re.search(match, lines[0], re.IGNORECASE), (
            f"error line should match {match!r}: {said}"
        )
    after = snapshot(d)
    assert not (d / "PWNED").exists(), f"data file was unpickled: {said}"
    left = sorted(set(after) - set(before))
    if want == 8 and REPORT in left:  # exit 8 writes the --json report only, saying why
        rep = json.loads((d / REPORT).read_text())
        assert rep["status"] == "nothing_pruned" and rep["exit_code"] == 8, rep
        assert rep["error"] in lines[0], (rep["error"], said)
        left.remove(REPORT)
    assert not left, f"left behind {left}: {said}"
    changed = sorted(k for k in before if after.get(k) != before[k])
    assert not changed, f"changed or removed {changed}: {said}"


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """The case's directory, also the cwd and the temp dir, so every stray file is seen."""
    d = tmp_path / "w"
    d.mkdir()
    (d / ".tmp").mkdir()
    monkeypatch.chdir(d)
    monkeypatch.setenv("TMPDIR", str(d / ".tmp"))
    monkeypatch.setattr(tempfile, "tempdir", str(d / ".tmp"))
    yield d
    for p in (d / "ro",):  # let pytest clean up
        if p.exists():
            p.chmod(0o755)


@pytest.mark.parametrize(("make", "want", "match"), CASES)
def test_bad_input_is_refused(make, want, match, workdir, capfd):
    argv = make(workdir)
    before = snapshot(workdir)
    code, out, err = run_cli(argv, capfd)
    assert_refused(workdir, before, code, err, out, want, match)


# -- must not crash: 0 or 8, never 1 ----------------------------------------------------

ROBUST = {
    "if_subgraph": VALID["if_subgraph"],
    "loop_subgraph": VALID["loop_subgraph"],
    "opset7": VALID["opset7"],
    "newest_opset": VALID["newest_opset"],
    "initializers_also_graph_inputs": VALID["inits_as_inputs"],
    "tied_weights_two_matmuls": VALID["tied"],
}


@pytest.mark.parametrize("build", ROBUST.values(), ids=ROBUST.keys())
def test_feature_does_not_crash(build, workdir, capfd):
    m = save(build(), workdir / "model.onnx")
    before = snapshot(workdir)
    code, out, err = run_cli(prune(m), capfd)
    said = _verdict(code, err)
    assert "Traceback" not in err + out and "internal error" not in err, said
    assert code in (0, 8), said
    assert snapshot(workdir)["model.onnx"] == before["model.onnx"], "input changed"
    if code == 8:
        assert_refused(workdir, before, code, err, out, 8, None)
    else:
        assert not err.strip(), f"a success prints nothing on stderr: {said}"
        onnx.checker.check_model(onnx.load(str(workdir / OUT)), full_check=True)
        assert (workdir / REPORT).is_file() and (workdir / PLAN).is_file()


def _params(model) -> int:
    return sum(math.prod(t.dims) for t in model.graph.initializer)


def test_unknown_op_mid_cnn_rest_still_prunes(workdir, capfd):
    """An op graphprune has no rule for (but ONNX Runtime runs) freezes only what it
    touches: the groups on both sides of it still prune, with exact parity. (An op ONNX
    Runtime cannot load is exit 3, a case above, with or without parity.)"""
    m = save(custom_mid_deep(custom=False), workdir / "model.onnx")
    before = snapshot(workdir)
    code, out, err = run_cli(prune(m), capfd)
    assert code == 0 and "Traceback" not in err + out, _verdict(code, err)
    assert snapshot(workdir)["model.onnx"] == before["model.onnx"]
    pruned = onnx.load(str(workdir / OUT))
    dims = {t.name: list(t.dims) for t in pruned.graph.initializer}
    assert dims["w1"][0] < 8 and dims["w3"][0] < 8, dims  # both sides of the op pruned
    assert dims["w2"][0] == 8, dims  # what the unknown op touches is kept
    assert _params(pruned) < _params(custom_mid_deep(custom=False))


# -- as a real process ------------------------------------------------------------------

PROCESS = {
    "process_garbage_model": (lambda d: prune(d / "noise.onnx"), 3),
    "process_unknown_flag": (lambda d: prune(cnn_file(d), "--no-such-flag"), 2),
}


@pytest.mark.parametrize(("make", "want"), PROCESS.values(), ids=PROCESS.keys())
def test_bad_input_as_a_process(make, want, workdir):
    (workdir / "noise.onnx").write_bytes(np.random.default_rng(9).bytes(2048))
    argv = make(workdir)
    before = snapshot(workdir)
    env = {**os.environ, "TMPDIR": str(workdir / ".tmp")}
    env.pop("GRAPHPRUNE_DEBUG", None)
    p = subprocess.run(
        [sys.executable, "-m", "graphprune.cli", *map(str, argv)],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert_refused(workdir, before, p.returncode, p.stderr, p.stdout, want, None)


# -- the builders themselves: valid models, so a refusal is the tool's --------------------


@pytest.mark.parametrize("build", VALID.values(), ids=VALID.keys())
def test_builder_makes_a_valid_model(build):
    m = build()
    onnx.checker.check_model(m, full_check=True)
    assert _ort_loads(m)


def test_control_cases_succeed(workdir, capfd):
    """The good versions of the data and plan the bad cases spoil are accepted."""
    m = cnn_file(workdir)
    good = npz(workdir, "good.npz", x=x_batch(), labels=np.arange(4) % 4)
    calib_only = npz(workdir, "calib_only.npz", x=x_batch())
    plan = plan_file(workdir)
    for extra in (
        ["--criterion", "activation", "--calib", str(calib_only)],
        ["--eval", str(good)],
        ["--plan", str(plan)],
    ):
        code, out, err = run_cli(prune(m, *extra), capfd)
        assert code == 0, f"{extra}: {_verdict(code, err)}"
        for p in (OUT, REPORT, PLAN):
            (workdir / p).unlink()
