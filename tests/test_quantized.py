"""Quantized and half-precision models: QDQ graphs prune with their per-channel scales and
zero points sliced with the channels; fp16 weights stay fp16; integer-only graphs
(QLinear*, ConvInteger/MatMulInteger) are refused with the advice to prune first."""

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, numpy_helper

from graphprune.cli import main
from graphprune.prune import PruneOptions, prune_model
from pruning_checks import assert_structure, assert_valid

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "models" / "digits" / "digits_cnn.onnx"
CALIB = ROOT / "models" / "digits" / "digits_calib.npz"


class _Reader:
    """onnxruntime.quantization's calibration reader over the digits calibration set."""

    def __init__(self):
        with np.load(CALIB) as d:
            x = d["input"]
        self.batches = iter({"input": x[i : i + 16]} for i in range(0, 64, 16))

    def get_next(self):
        return next(self.batches, None)


@pytest.fixture(scope="module")
def quantized(tmp_path_factory):
    """The digits CNN quantized by ONNX Runtime's quantizer in four forms."""
    from onnxruntime.quantization import QuantFormat, quantize_dynamic, quantize_static

    d = tmp_path_factory.mktemp("q")
    out = {}
    for name, kw in {
        "qdq_per_channel": {"quant_format": QuantFormat.QDQ, "per_channel": True},
        "qdq_per_tensor": {"quant_format": QuantFormat.QDQ, "per_channel": False},
        "qoperator": {"quant_format": QuantFormat.QOperator},
    }.items():
        quantize_static(str(DIGITS), str(d / f"{name}.onnx"), _Reader(), **kw)
        out[name] = d / f"{name}.onnx"
    quantize_dynamic(str(DIGITS), str(d / "dynamic.onnx"))
    out["dynamic"] = d / "dynamic.onnx"
    return out


def _dq_params(model: onnx.ModelProto) -> dict[str, tuple]:
    """DequantizeLinear data shape -> scale shape, for the weights."""
    inits = {t.name: t for t in model.graph.initializer}
    out = {}
    for n in model.graph.node:
        if n.op_type == "DequantizeLinear" and n.input[0] in inits:
            data, scale = inits[n.input[0]], inits[n.input[1]]
            out[n.input[0]] = (tuple(data.dims), tuple(scale.dims), data.data_type)
    return out


@pytest.mark.parametrize("form", ["qdq_per_channel", "qdq_per_tensor"])
def test_qdq_prunes_with_its_scales_sliced(quantized, form):
    model = onnx.load(str(quantized[form]))
    result = prune_model(model, PruneOptions(ratio=0.5))
    assert result.parity.status == "exact"
    assert "float path" in result.parity.note  # activations are quantized too
    assert assert_structure(result) > 0
    assert_valid(result.model, model)
    assert result.after["macs"] < 0.5 * result.before["macs"]
    before, after = _dq_params(model), _dq_params(result.model)
    assert before.keys() == after.keys()
    shrunk = 0
    for name, (dims, scale, dtype) in after.items():
        assert dtype == before[name][2]  # int8 stays int8, int32 biases stay int32
        if form == "qdq_per_channel" and len(scale) == 1 and scale[0] > 1:
            assert scale[0] == dims[0]  # the per-channel scale follows its channels
        shrunk += dims != before[name][0]
    assert shrunk >= 4


@pytest.mark.parametrize("form,ops", [("qoperator", "QLinearConv"), ("dynamic", "ConvInteger")])
def test_integer_graphs_are_refused_with_advice(quantized, form, ops, tmp_path, capsys):
    out = tmp_path / "o.onnx"
    assert main(["prune", str(quantized[form]), "-o", str(out)]) == 8
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and ops in err[0] and "prune the float model before quantizing" in err[0]
    assert not out.exists()


def test_fp16_weights_stay_fp16(tmp_path):
    model = onnx.load(str(DIGITS))
    for i, t in enumerate(model.graph.initializer):
        a = numpy_helper.to_array(t)
        if a.dtype == np.float32:
            model.graph.initializer[i].CopyFrom(
                numpy_helper.from_array(a.astype(np.float16), t.name)
            )
    for vi in list(model.graph.input) + list(model.graph.output):
        vi.type.tensor_type.elem_type = TensorProto.FLOAT16
    del model.graph.value_info[:]
    # calibration data in float32 is cast to the model's precision
    result = prune_model(model, PruneOptions(ratio=0.5, criterion="wanda", calib=str(CALIB)))
    assert result.parity.status == "exact" and assert_structure(result) > 0
    assert_valid(result.model, model)
    floats = {
        t.data_type for t in result.model.graph.initializer if t.data_type != TensorProto.INT64
    }
    assert floats == {TensorProto.FLOAT16}
    assert result.after["params"] < 0.3 * result.before["params"]
