"""Input sizes: given, from data, or probed on the original; they drive MACs and parity,
while the pruned model keeps the symbolic dims of the original."""

import json

import numpy as np
import onnx
import pytest
from test_analysis import conv

from graphprune.cli import main
from graphprune.errors import UsageError
from graphprune.prune import PruneOptions, prune_model
from graphprune.shapes import parse_input_shapes
from graphs import G
from pruning_checks import assert_structure, assert_valid


def _stride64(h="H", w="W") -> onnx.ModelProto:
    """A detector-like graph: three stride-4 convs, then x64 upsampling added back onto the
    stem, so it runs only where H and W are multiples of 64 (not at 8x8, nor at 224)."""
    g = G(seed=1)
    x = g.input("x", ["N", 3, h, w])
    stem = g.op("Relu", [conv(g, x, "stem", 3, 8)], "stem.relu")
    y = stem
    for k in range(3):
        y = g.op("Relu", [conv(g, y, f"down{k}", 8, 8, k=1, strides=[4, 4])], f"r{k}")
    scales = g.const("scales", [1.0, 1.0, 64.0, 64.0], np.float32)
    up = g.op("Resize", [y, "", scales], "up", mode="nearest")
    s = g.op("Add", [stem, up], "sum")
    return g.model([conv(g, s, "head", 8, 4)])


def test_parse_forms():
    assert parse_input_shapes("f", "1x3x8x8") == {None: (1, 3, 8, 8)}
    assert parse_input_shapes("f", ["x=1,3,8,8", "m=2x5"]) == {"x": (1, 3, 8, 8), "m": (2, 5)}
    assert parse_input_shapes("f", {"x": [1, 3]}) == {"x": (1, 3)}
    for bad in ("x=1x0", "x=", "x=1xa", "=1x2", "x=-1x2"):
        with pytest.raises(UsageError, match="f"):
            parse_input_shapes("f", bad)
    with pytest.raises(UsageError, match="twice"):
        parse_input_shapes("f", ["x=1", "x=2"])


def test_probe_finds_a_size_the_graph_runs_at_and_macs_are_counted_there():
    model = _stride64()
    result = prune_model(model, PruneOptions(ratio=0.5))
    assert result.shapes.shapes == {"x": (1, 3, 256, 256)}  # 224 is no multiple of 64
    assert result.shapes.source == {"x": "probed"}
    assert result.parity.status == "exact" and assert_structure(result) > 0
    assert_valid(result.model, model)
    # the pruned model still takes every size: its input keeps the symbolic dims
    dims = [d.dim_param for d in result.model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["N", "", "H", "W"][:1] + [""] + ["H", "W"]
    given = prune_model(model, PruneOptions(ratio=0.5, input_shape=["x=1x3x128x128"]))
    assert given.shapes.source == {"x": "given"}
    assert given.before["macs"] * 4 == result.before["macs"]  # all MACs scale with H x W
    assert given.after["macs"] * 4 == result.after["macs"]
    assert given.plan.input_shapes == {"x": [1, 3, 128, 128]}


def test_shapes_from_the_data_take_batch_one(tmp_path):
    np.savez(
        tmp_path / "c.npz",
        x=np.random.default_rng(0).standard_normal((5, 3, 64, 64)).astype(np.float32),
    )
    result = prune_model(
        _stride64(), PruneOptions(ratio=0.5, criterion="wanda", calib=str(tmp_path / "c.npz"))
    )
    assert result.shapes.shapes == {"x": (1, 3, 64, 64)} and result.shapes.source == {"x": "data"}
    assert result.parity.status == "exact"


def test_a_size_the_model_rejects_is_exit_2_naming_it(tmp_path, capsys):
    path = tmp_path / "m.onnx"
    onnx.save(_stride64(), path)
    out = tmp_path / "o.onnx"
    assert main(["prune", str(path), "-o", str(out), "--input-shape", "1x3x100x100"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not run at x 1x3x100x100" in err[0]
    assert not out.exists()


def test_no_size_runs_is_exit_2_naming_input_and_dim(tmp_path, capsys):
    g = G()
    x = g.input("x", [1, 3, "H", "W"])
    flat = g.op("Reshape", [x, g.const("shape", [1, 3 * 77 * 77])], "flat")
    h = g.op("Relu", [g.op("MatMul", [flat, g.w("w1", 3 * 77 * 77, 8)], "fc1")], "h")
    model = g.model([g.op("MatMul", [h, g.w("w2", 8, 2)], "fc2")])
    with pytest.raises(UsageError, match=r"input x dim 2 \(H\) is symbolic.*--input-shape x="):
        prune_model(model, PruneOptions(ratio=0.5))
    result = prune_model(model, PruneOptions(ratio=0.5, input_shape="1x3x77x77"))
    assert result.parity.status == "exact" and result.plan.groups


@pytest.mark.parametrize(
    "given,needle",
    [
        (["y=1x3x64x64"], "no input named y; inputs: x"),
        (["x=1x3x64"], "input x has rank 4"),
        (["x=1x4x64x64"], "input x dim 1 is fixed at 3, got 4"),
    ],
)
def test_input_shape_is_checked_against_the_model(given, needle):
    with pytest.raises(UsageError, match=needle):
        prune_model(_stride64(), PruneOptions(input_shape=given))


def test_bare_shape_needs_a_one_input_model():
    g = G()
    a, b = g.input("a", ["N", 4]), g.input("b", ["N", 4])
    h = g.op("Relu", [g.op("MatMul", [g.op("Add", [a, b], "s"), g.w("w1", 4, 8)], "fc1")], "h")
    model = g.model([g.op("MatMul", [h, g.w("w2", 8, 2)], "fc2")])
    with pytest.raises(UsageError, match="2 inputs"):
        prune_model(model, PruneOptions(input_shape="2x4"))
    result = prune_model(model, PruneOptions(input_shape=["a=3x4", "b=3x4"]))
    assert result.shapes.shapes == {"a": (3, 4), "b": (3, 4)}


def test_report_states_the_shapes(tmp_path, capsys):
    path = tmp_path / "m.onnx"
    onnx.save(_stride64(), path)
    rep = tmp_path / "r.json"
    assert main(["prune", str(path), "-o", str(tmp_path / "o.onnx"), "--json", str(rep)]) == 0
    assert json.loads(rep.read_text())["input_shapes"] == {
        "x": {"shape": [1, 3, 256, 256], "from": "probed"}
    }
    assert "MACs counted at x 1x3x256x256 (probed)" in capsys.readouterr().out
