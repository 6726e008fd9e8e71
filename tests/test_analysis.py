"""Op-rule and pass behaviour on tiny inline graphs: coupling, offsets, blocks, re-folding."""

import numpy as np
import onnx
import pytest

from graphprune.prune import analyze_model
from graphs import G
from pruning_checks import prune_and_check, refused_as_nothing_pruned


def conv(g, x, w, cin, cout, k=3, group=1, bias=True, **kw):
    ins = [x, g.w(f"{w}.w", cout, cin // group, k, k)]
    if bias:
        ins.append(g.w(f"{w}.b", cout))
    pads = [k // 2] * 4
    return g.op("Conv", ins, w, pads=pads, group=group, **kw)


def group_of(analysis, tensor, axis=1):
    for grp in analysis.groups:
        if any(d.kind == "act" and d.tensor == tensor and d.axis == axis for d in grp.dims):
            return grp
    raise AssertionError(f"no group holds {tensor}[{axis}]")


def test_residual_add_couples_both_branches():
    g = G()
    x = g.input("x", [1, 3, 8, 8])
    a = g.op("Relu", [conv(g, x, "c1", 3, 16)], "r1")
    b = conv(g, a, "c2", 16, 16)
    s = g.op("Add", [a, b], "sum")
    m = g.model([conv(g, s, "c3", 16, 4)])
    an = analyze_model(m)
    grp = group_of(an, "sum")
    assert grp is group_of(an, "c1") and not grp.frozen and grp.units == 16
    weights = {d.tensor for d in grp.carriers()}
    assert {"c1.w", "c2.w", "c3.w"} <= weights
    r = prune_and_check(m, 0.5)
    assert [gp.units - len(gp.remove) for gp in r.plan.groups] == [8]


def test_concat_offsets_make_one_group_per_part():
    g = G()
    x = g.input("x", [1, 3, 8, 8])
    cat = g.op("Concat", [conv(g, x, "a", 3, 6), conv(g, x, "b", 3, 10)], "cat", axis=1)
    m = g.model([conv(g, cat, "c", 16, 4)])
    an = analyze_model(m)
    ga, gb = group_of(an, "a"), group_of(an, "b")
    assert ga is not gb and (ga.units, gb.units) == (6, 10)
    r = prune_and_check(m, 0.5)
    assert sorted(gp.units for gp in r.plan.groups) == [6, 10]


@pytest.mark.parametrize("group,units", [(16, 16), (4, 4)])
def test_grouped_and_depthwise_conv_refold_group(group, units):
    g = G()
    x = g.input("x", [1, 3, 8, 8])
    a = g.op("Relu", [conv(g, x, "c1", 3, 16, k=1)], "r1")
    d = g.op("Relu", [conv(g, a, "dw", 16, 16, group=group)], "r2")
    m = g.model([conv(g, d, "c3", 16, 4, k=1)])
    an = analyze_model(m)
    assert group_of(an, "r1") is group_of(an, "r2")
    assert group_of(an, "r1").units == units
    r = prune_and_check(m, 0.5)
    node = next(n for n in r.model.graph.node if n.name == "dw")
    g_attr = next(a.i for a in node.attribute if a.name == "group")
    assert g_attr == group // 2


def test_flatten_to_gemm_removes_blocks_of_rows():
    g = G()
    x = g.input("x", [1, 3, 4, 4])
    f = g.op(
        "Flatten",
        [g.op("MaxPool", [conv(g, x, "c1", 3, 8)], "p", kernel_shape=[2, 2], strides=[2, 2])],
        "flat",
        axis=1,
    )
    m = g.model([g.op("Gemm", [f, g.w("fc.w", 5, 32), g.w("fc.b", 5)], "y", transB=1)])
    r = prune_and_check(m, 0.5)
    fc = next(t for t in r.model.graph.initializer if t.name.startswith("fc.w"))
    assert list(fc.dims) == [5, 16]


def test_shared_constant_is_cloned_when_uses_differ():
    g = G()
    x = g.input("x", [1, 3, 8, 8])
    g.w("shared_b", 8)
    a = g.op("Conv", [x, g.w("a.w", 8, 3, 3, 3), "shared_b"], "a", pads=[1] * 4)
    b = g.op("Conv", [x, g.w("b.w", 8, 3, 3, 3), "shared_b"], "b", pads=[1] * 4)
    ya = conv(g, a, "ya", 8, 2)
    yb = conv(g, g.op("Relu", [b], "rb"), "yb", 8, 2)
    m = g.model([ya, yb])
    an = analyze_model(m)
    assert group_of(an, "a") is not group_of(an, "b")  # a shared bias does not couple them
    r = prune_and_check(m, 0.5, criterion="random", seed=3)
    biases = [t for t in r.model.graph.initializer if t.name.startswith("shared_b")]
    assert sorted(list(t.dims) for t in biases) == [[4], [4]]


def test_split_sizes_are_refolded():
    g = G()
    x = g.input("x", [1, 3, 8, 8])
    c = conv(g, x, "c1", 3, 16)
    g.nodes.append(
        onnx.helper.make_node(
            "Split", [c, g.const("sizes", [6, 10])], ["s0", "s1"], axis=1, name="split"
        )
    )
    m = g.model([conv(g, "s0", "y0", 6, 2), conv(g, "s1", "y1", 10, 2)])
    r = prune_and_check(m, 0.5)
    split = next(n for n in r.model.graph.node if n.op_type == "Split")
    sizes = next(t for t in r.model.graph.initializer if t.name == split.input[1])
    assert onnx.numpy_helper.to_array(sizes).tolist() == [3, 5]


def test_slice_bounds_are_refolded():
    g = G()
    x = g.input("x", [1, 3, 8, 8])
    c = g.op("Relu", [conv(g, x, "c1", 3, 16)], "r")
    s = g.op("Slice", [c, g.const("st", [4]), g.const("en", [12]), g.const("ax", [1])], "sl")
    m = g.model([conv(g, s, "y", 8, 2), conv(g, c, "y2", 16, 2)])
    r = prune_and_check(m, 0.5, criterion="random", seed=1)
    assert r.parity.status == "exact"


def test_reshape_constant_target_is_refolded():
    g = G()
    x = g.input("x", [1, 3, 4, 4])
    p = g.op("MaxPool", [conv(g, x, "c1", 3, 16)], "p", kernel_shape=[2, 2], strides=[2, 2])
    flat = g.op("Reshape", [p, g.const("target", [1, 64])], "flat")
    m = g.model([g.op("Gemm", [flat, g.w("fc.w", 64, 5)], "y")])
    r = prune_and_check(m, 0.5)
    target = next(n for n in r.model.graph.node if n.op_type == "Reshape").input[1]
    vals = next(t for t in r.model.graph.initializer if t.name == target)
    assert onnx.numpy_helper.to_array(vals).tolist() == [1, 32]


def test_dynamic_flatten_via_shape_gather_concat():
    g = G()
    x = g.input("x", ["N", 3, 4, 4])
    p = g.op("GlobalAveragePool", [conv(g, x, "c1", 3, 16)], "p")
    n = g.op("Gather", [g.op("Shape", [p], "shp"), g.const("zero", 0)], "n", axis=0)
    nu = g.op("Unsqueeze", [n, g.const("ax0", [0])], "nu")
    tgt = g.op("Concat", [nu, g.const("m1", [-1])], "tgt", axis=0)
    flat = g.op("Reshape", [p, tgt], "flat")
    m = g.model([g.op("Gemm", [flat, g.w("fc.w", 5, 16)], "y", transB=1)])
    r = prune_and_check(m, 0.5)
    assert r.plan.groups[0].units == 16


def test_reshape_entry_read_from_another_pruned_tensor_becomes_a_constant():
    """r = Reshape(a, [2, Shape(b)[1]]) with a's width kept (excluded) and b's pruned: the
    entry must not keep reading b's new width at run time."""
    g = G()
    x = g.input("x", [2, 8])
    a = g.op("MatMul", [x, g.w("w1", 8, 16)], "a")
    b = g.op("Relu", [g.op("MatMul", [x, g.w("w2", 8, 16)], "bm")], "b")
    width = g.op("Gather", [g.op("Shape", [b], "shb"), g.const("one", [1])], "width", axis=0)
    r = g.op("Reshape", [a, g.op("Concat", [g.const("two", [2]), width], "tgt", axis=0)], "r")
    y2 = g.op("MatMul", [b, g.w("w3", 16, 4)], "y2")
    m = g.model([g.op("MatMul", [r, g.w("w4", 16, 4)], "y1"), y2])
    r = prune_and_check(m, 0.5, exclude=("a",))
    (gp,) = r.plan.groups
    assert gp.units == 16 and len(gp.remove) == 8  # b's width, not a's


def test_activation_contraction_is_masked_by_mul():
    g = G()
    x = g.input("x", [2, 5, 16])
    q = g.op("MatMul", [x, g.w("wq", 16, 32)], "q")
    k = g.op("MatMul", [x, g.w("wk", 16, 32)], "k")
    s = g.op("MatMul", [q, g.op("Transpose", [k], "kt", perm=[0, 2, 1])], "scores")
    m = g.model([g.op("Softmax", [s], "y", axis=-1)])
    an = analyze_model(m)
    assert group_of(an, "q", 2) is group_of(an, "k", 2)
    r = prune_and_check(m, 0.5)
    assert {tuple(t.dims) for t in r.model.graph.initializer} == {(16, 16)}


def test_gemm_transposes_and_scales():
    g = G()
    x = g.input("x", [16, 4])
    h = g.op("Gemm", [x, g.w("w1", 16, 12), g.w("b1", 12)], "h", transA=1, alpha=0.5, beta=2.0)
    h = g.op("Relu", [h], "hr")
    m = g.model([g.op("Gemm", [h, g.w("w2", 3, 12), g.w("b2", 1, 3)], "y", transB=1)])
    r = prune_and_check(m, 0.5)
    assert r.plan.groups[0].units == 12


def test_unknown_op_and_io_freeze_with_reasons():
    g = G()
    x = g.input("x", [1, 3, 8, 8])
    a = g.op("LpNormalization", [conv(g, x, "c1", 3, 8)], "lp", axis=1)
    m = g.model([conv(g, a, "c2", 8, 4)])
    an = analyze_model(m)
    reasons = {r for grp in an.frozen for r in grp.frozen_reasons}
    assert "no rule for op LpNormalization" in reasons
    assert "graph input" in reasons and "graph output" in reasons
    assert an.prunable == []
    refused_as_nothing_pruned(m, 0.5, match="all 4 groups are frozen: no rule for op LpNorm")


def test_exclude_pattern_freezes_the_matching_layer():
    g = G()
    x = g.input("x", [1, 3, 8, 8])
    a = g.op("Relu", [conv(g, x, "c1", 3, 8)], "r1")
    b = g.op("Relu", [conv(g, a, "c2", 8, 8)], "r2")
    m = g.model([conv(g, b, "c3", 8, 4)])
    an = analyze_model(m, exclude=["c2"])
    assert an.prunable == []
    assert any("excluded by user (c2)" in grp.frozen_reasons for grp in an.frozen)
    r = prune_and_check(m, 0.5, exclude=("c3",))
    assert [gp.units for gp in r.plan.groups] == [8]


def test_units_removed_are_the_lowest_scored():
    g = G()
    x = g.input("x", [1, 3, 8, 8])
    w = np.ones((8, 3, 3, 3), dtype=np.float32)
    w[[1, 6]] *= 0.01  # planted unimportant channels
    a = g.op("Conv", [x, g.w("c1.w", values=w)], "c1", pads=[1] * 4)
    w2 = np.ones((4, 8, 1, 1), dtype=np.float32)
    m = g.model([g.op("Conv", [g.op("Relu", [a], "r"), g.w("c2.w", values=w2)], "y")])
    r = prune_and_check(m, 0.25)
    assert r.plan.groups[0].remove == [1, 6]


def test_subgraph_op_freezes_outer_tensors_it_reads():
    g = G()
    x = g.input("x", [1, 3, 8, 8])
    g.op("Relu", [conv(g, x, "c1", 3, 8)], "r")
    then_out = onnx.helper.make_tensor_value_info("t_out", onnx.TensorProto.FLOAT, None)
    then_g = onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["r"], ["t_out"])], "then", [], [then_out]
    )
    else_g = onnx.helper.make_graph(
        [onnx.helper.make_node("Neg", ["r"], ["t_out"])], "else", [], [then_out]
    )
    cond = g.const("cond", True, dtype=np.bool_)
    g.nodes.append(
        onnx.helper.make_node(
            "If", [cond], ["branch"], then_branch=then_g, else_branch=else_g, name="if"
        )
    )
    m = g.model([conv(g, "branch", "y", 8, 2)])
    an = analyze_model(m)
    grp = group_of(an, "r")
    assert grp.frozen
    assert "used inside a subgraph" in grp.frozen_reasons
