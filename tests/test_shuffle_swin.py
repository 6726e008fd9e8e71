"""ShuffleNetV2 and Swin patterns as the TorchScript exporter writes them: ``chunk`` as
Slices with bounds computed at run time, the channel shuffle (Reshape → Transpose →
Reshape), ``F.pad`` with computed pads, and shape arithmetic deep enough that evaluating it
must not walk the network behind it. Both torch exporters of the zoo's ``shufflenet`` and
``swin`` prune with the structure changed, a valid model and exact parity."""

import time
from collections import Counter

import onnx
import pytest

from graphprune.prune import analyze_model
from graphs import G
from pruning_checks import prune_and_check

IO_REASONS = {"graph input", "graph output"}


def conv(g, x, w, cin, cout, k=1, group=1):
    ins = [x, g.w(f"{w}.w", cout, cin // group, k, k), g.w(f"{w}.b", cout)]
    return g.op("Conv", ins, w, pads=[k // 2] * 4, group=group)


def _chunk(g, x, name):
    """TorchScript's ``x.chunk(2, dim=1)``: bounds from ``(C + 1) // 2`` read at run time."""
    shape = g.op("Shape", [x], f"{name}.shape")
    c = g.op("Gather", [shape, g.const(f"{name}.i", [1])], f"{name}.c")
    c1 = g.op("Add", [c, g.const(f"{name}.one", [1])], f"{name}.c_plus_1")
    half = g.op("Div", [c1, g.const(f"{name}.two", [2])], f"{name}.half")
    end0 = g.op("Mul", [half, g.const(f"{name}.k1", [1])], f"{name}.end0")
    end1 = g.op("Mul", [half, g.const(f"{name}.k2", [2])], f"{name}.end1")
    ax = g.const(f"{name}.ax", [1])
    a = g.op("Slice", [x, g.const(f"{name}.zero", [0]), end0, ax], f"{name}.a")
    return a, g.op("Slice", [x, end0, end1, ax], f"{name}.b")


def _constant_slice_bounds(model):
    inits = {t.name for t in model.graph.initializer}
    slices = [n for n in model.graph.node if n.op_type == "Slice"]
    return all(n.input[1] in inits and n.input[2] in inits for n in slices)


def test_chunk_with_run_time_bounds_prunes_both_halves():
    """The halves map by offset into the input (the bounds evaluate statically), the read
    size is not frozen, and the pruned bounds are written as constants (before: the halves'
    consumers were pruned while the run-time bounds kept cutting the full width)."""
    g = G()
    x = g.input("x", [1, 3, 8, 8])
    c = g.op("Relu", [conv(g, x, "c1", 3, 16, k=3)], "r")
    a, b = _chunk(g, c, "chunk")
    m = g.model([conv(g, a, "ya", 8, 4), conv(g, b, "yb", 8, 4)])
    analysis = analyze_model(m)
    assert [gr.units for gr in analysis.prunable] == [8, 8]  # the two halves, as for Split
    r = prune_and_check(m, 0.5, criterion="random", seed=3)
    assert _constant_slice_bounds(r.model)


def test_slice_bounds_reading_another_pruned_size_become_constants():
    """Slice(a, 0, Shape(b)[1] // 2) with a's width kept and b's pruned: the bound must keep
    its old value, not follow b's new width at run time."""
    g = G()
    x = g.input("x", [1, 3, 8, 8])
    a = conv(g, x, "a", 3, 16, k=3)
    b = g.op("Relu", [conv(g, x, "bc", 3, 16, k=3)], "b")
    width = g.op("Gather", [g.op("Shape", [b], "shb"), g.const("one", [1])], "width", axis=0)
    end = g.op("Div", [width, g.const("two", [2])], "end")
    s = g.op("Slice", [a, g.const("zero", [0]), end, g.const("ax", [1])], "s")
    m = g.model([conv(g, s, "ys", 8, 4), conv(g, b, "yb", 16, 4)])
    r = prune_and_check(m, 0.5, exclude=("a",))
    (gp,) = r.plan.groups
    assert gp.units == 16 and len(gp.remove) == 8  # b's width
    assert _constant_slice_bounds(r.model)


def test_symbolic_slice_bounds_stay_frozen():
    """``x[:, :seq_len]`` with a symbolic bound keeps reading it at run time: the sliced
    axis is frozen, and nothing else is disturbed."""
    g = G()
    x = g.input("x", ["N", 16])
    seq = g.op("Gather", [g.op("Shape", [x], "shx"), g.const("zero_i", [0])], "seq", axis=0)
    h = g.op("Relu", [g.op("MatMul", [x, g.w("w1", 16, 32)], "h0")], "h")
    s = g.op("Slice", [h, g.const("zero", [0]), seq, g.const("ax", [0])], "s")
    m = g.model([g.op("MatMul", [s, g.w("w2", 32, 4)], "y")])
    analysis = analyze_model(m)
    assert [gr.units for gr in analysis.prunable] == [32]
    prune_and_check(m, 0.5)


def _shuffle(g, x, name, groups, k, hw):
    v = g.op("Reshape", [x, g.const(f"{name}.t1", [1, groups, k, hw, hw])], f"{name}.v")
    t = g.op("Transpose", [v], f"{name}.t", perm=[0, 2, 1, 3, 4])
    return g.op("Reshape", [t, g.const(f"{name}.t2", [1, -1, hw, hw])], f"{name}.out")


def test_channel_shuffle_units_are_one_index_of_every_group():
    """Concat(left, right) → view(1, 2, k) → transpose → view(1, 2k): channel i*k + j ends
    at j*2 + i. A unit is index j of every group (left j and right j together); the group
    axis stays whole and the first Reshape's k is re-folded."""
    g = G()
    x = g.input("x", [1, 3, 4, 4])
    left = g.op("Relu", [conv(g, x, "l", 3, 8, k=3)], "lr")
    right = g.op("Relu", [conv(g, x, "r", 3, 8, k=3)], "rr")
    cat = g.op("Concat", [left, right], "cat", axis=1)
    m = g.model([conv(g, _shuffle(g, cat, "sh", 2, 8, 4), "y", 16, 4)])
    analysis = analyze_model(m)
    (gr,) = analysis.prunable
    assert gr.units == 8 and not [f for f in analysis.frozen if set(f.frozen_reasons) - IO_REASONS]
    r = prune_and_check(m, 0.5)
    shapes = {n.output[0]: n for n in r.model.graph.node if n.op_type == "Reshape"}
    target = next(t for t in r.model.graph.initializer if t.name == shapes["sh.v"].input[1])
    assert onnx.numpy_helper.to_array(target).tolist() == [1, 2, 4, 4, 4]


def test_stride_one_shuffle_unit_with_run_time_chunk():
    """ShuffleNetV2's stride-1 unit as TorchScript exports it: chunk (run-time Slices), the
    right half through convs, concat, shuffle; then a second unit."""
    g = G()
    x = g.input("x", [1, 3, 4, 4])
    y = g.op("Relu", [conv(g, x, "stem", 3, 16, k=3)], "stem.r")
    for u in range(2):
        a, b = _chunk(g, y, f"u{u}")
        b = g.op("Relu", [conv(g, b, f"u{u}.c1", 8, 8)], f"u{u}.r1")
        b = conv(g, b, f"u{u}.dw", 8, 8, k=3, group=8)
        b = g.op("Relu", [conv(g, b, f"u{u}.c2", 8, 8)], f"u{u}.r2")
        y = _shuffle(g, g.op("Concat", [a, b], f"u{u}.cat", axis=1), f"u{u}.sh", 2, 8, 4)
    m = g.model([conv(g, y, "head", 16, 4)])
    analysis = analyze_model(m)
    assert not [f for f in analysis.frozen if set(f.frozen_reasons) - IO_REASONS]
    r = prune_and_check(m, 0.5)
    assert _constant_slice_bounds(r.model)


def test_run_time_pads_are_evaluated():
    """TorchScript's F.pad: pads = Concat → Reshape(-1, 2) → Slice(::-1) → Transpose →
    Reshape(-1) of ``(w - h % w) % w`` terms. The unpadded channel axis passes through."""
    g = G()
    x = g.input("x", [1, 3, 6, 6])
    c = g.op("Relu", [conv(g, x, "c1", 3, 16, k=3)], "r")
    size, win = g.const("size", 6), g.const("win", 4)
    rem = g.op("Mod", [g.op("Sub", [win, g.op("Mod", [size, win], "m0")], "d"), win], "rem")
    extra = g.op("Unsqueeze", [rem, g.const("ax0", [0])], "extra")
    zero = g.const("z", [0])
    parts = [zero, extra, zero, extra, g.const("z4", [0, 0, 0, 0])]
    flat = g.op("Concat", parts, "flat", axis=0)  # (begin, end) per axis, last axis first
    pairs = g.op("Reshape", [flat, g.const("pairs_t", [-1, 2])], "pairs")
    bounds = [g.const("st", [-1]), g.const("en", [-(2**63) + 1]), g.const("sax", [0])]
    rev = g.op("Slice", [pairs, *bounds, g.const("step", [-1])], "rev")
    tr = g.op("Transpose", [rev], "tr", perm=[1, 0])
    pads = g.op("Reshape", [tr, g.const("flat_t", [-1])], "pads")
    p = g.op("Pad", [c, pads], "p", mode="constant")
    m = g.model([conv(g, p, "y", 16, 4, k=3)])
    # sized as the exporter would: onnx's data propagation stops at Mod, and ORT's symbolic
    # inference names the padded dims (see test_swin_exporters_count_the_same_macs)
    m.graph.value_info.append(onnx.helper.make_tensor_value_info("p", 1, [1, 16, 8, 8]))
    m = onnx.shape_inference.infer_shapes(m)
    analysis = analyze_model(m)
    assert [gr.units for gr in analysis.prunable] == [16]
    r = prune_and_check(m, 0.5)
    (out,) = [o for o in r.model.graph.output]
    assert [d.dim_value for d in out.type.tensor_type.shape.dim] == [1, 4, 8, 8]


def test_shape_arithmetic_does_not_walk_the_network():
    """A Reshape target read from the end of a long residual chain (every Add reads its
    input twice): evaluating it reads the shape, never the 2^depth paths behind it."""
    g = G()
    x = g.input("x", [2, 16])
    h = g.op("MatMul", [x, g.w("w0", 16, 16)], "h0")
    for i in range(40):
        h = g.op("Add", [h, g.op("Relu", [h], f"r{i}")], f"h{i + 1}")
    n = g.op("Gather", [g.op("Shape", [h], "shp"), g.const("zero", [0])], "n", axis=0)
    tgt = g.op("Concat", [n, g.const("m1", [-1])], "tgt", axis=0)
    m = g.model([g.op("MatMul", [g.op("Reshape", [h, tgt], "flat"), g.w("w1", 16, 4)], "y")])
    start = time.perf_counter()
    analyze_model(m)
    assert time.perf_counter() - start < 5.0


# --------------------------------------------------------------------------- the zoo

torch = pytest.importorskip("torch")


@pytest.mark.slow
@pytest.mark.parametrize("ratio", [0.3, 0.5])
@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_shufflenet_prunes_exactly(zoo_model, exporter, ratio):
    """Every channel group inside the network is prunable (stem, branches, the shuffled
    stage widths), and both exporters find the same groups."""
    model = zoo_model("shufflenet", exporter)
    result = prune_and_check(model, ratio)
    for g in result.analysis.frozen:
        assert set(g.frozen_reasons) <= IO_REASONS, (g.key, g.frozen_reasons)
    units = sorted(g.units for g in result.analysis.prunable)
    assert units == [12, 12, 24, 24, 24, 24, 24, 48, 48, 48, 48, 96, 96, 256]
    assert result.after["macs"] < (1 - 0.8 * ratio) * result.before["macs"]
    assert _constant_slice_bounds(result.model)


@pytest.mark.slow
@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_swin_prunes_exactly(zoo_model, exporter):
    """Shifted windows (roll, mask), relative position bias, patch merging: the MLP neurons
    prune exactly; the residual width is normalised and the fused qkv's heads stay."""
    model = zoo_model("swin", exporter)
    result = prune_and_check(model, 0.3)
    neurons = Counter(g.units for g in result.analysis.prunable if g.kind == "neuron")
    assert neurons >= Counter([32, 32, 64, 64])  # the four MLPs


@pytest.mark.slow
def test_swin_exporters_count_the_same_macs(zoo_model):
    ts = prune_and_check(zoo_model("swin", "torchscript"), 0.3)
    dy = prune_and_check(zoo_model("swin", "dynamo"), 0.3)
    assert ts.before["macs"] == dy.before["macs"]
