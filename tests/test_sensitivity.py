"""--allocate sensitivity: each group's loss is measured at a few widths in one ONNX Runtime
session with switchable masks, and units go where the measured loss per MAC is lowest."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from graphprune.errors import UsageError
from graphprune.passes.mask_units import mask_feeds, masked_reference, switchable_masks
from graphprune.passes.removal import Removal
from graphprune.prune import PruneOptions, analyze_model, prune_model
from pruning_checks import prune_and_check

WIDTH, HIDDEN = 8, 32
CPU = ["CPUExecutionProvider"]


def two_branches(quiet: float = 0.01, seed: int = 0) -> onnx.ModelProto:
    """y = relu(x A1) A2 * quiet + relu(x B1) B2: two MLP neuron groups whose weights look
    alike, but whose removal moves the output by very different amounts."""
    rng = np.random.default_rng(seed)
    inits, nodes = [], []
    for name, scale in (("a", quiet), ("b", 1.0)):
        w1 = rng.standard_normal((WIDTH, HIDDEN)).astype(np.float32)
        w2 = rng.standard_normal((HIDDEN, WIDTH)).astype(np.float32)
        inits += [numpy_helper.from_array(w1, f"{name}1"), numpy_helper.from_array(w2, f"{name}2")]
        inits.append(numpy_helper.from_array(np.float32(scale).reshape(()), f"{name}_s"))
        nodes += [
            helper.make_node("MatMul", ["x", f"{name}1"], [f"{name}_h"]),
            helper.make_node("Relu", [f"{name}_h"], [f"{name}_r"]),
            helper.make_node("MatMul", [f"{name}_r", f"{name}2"], [f"{name}_o"]),
            helper.make_node("Mul", [f"{name}_o", f"{name}_s"], [f"{name}_y"]),
        ]
    nodes.append(helper.make_node("Add", ["a_y", "b_y"], ["y"]))
    graph = helper.make_graph(
        nodes,
        "two_branches",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", WIDTH])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", WIDTH])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def calib(n: int = 64, seed: int = 1) -> dict:
    return {"x": np.random.default_rng(seed).standard_normal((n, WIDTH)).astype(np.float32)}


def branch_removed(result) -> dict[str, float]:
    """Fraction of each branch's neurons the plan removes, by the branch's weight name."""
    out = {"a": 0.0, "b": 0.0}
    for gp in result.plan.groups:
        out[branch(gp.key)] = len(gp.remove) / gp.units
    return out


def branch(key: str) -> str:
    return key[0]  # a_h[1] or b_h[1]


def test_switchable_masks_match_the_masked_reference():
    model = two_branches()
    analysis = analyze_model(model)
    dims = analysis.space.dims
    masked, sites = switchable_masks(analysis, dims)
    assert sites and all(s.name in {i.name for i in masked.graph.input} for s in sites)
    rng = np.random.default_rng(3)
    labels = np.concatenate(
        [g.unit_labels[rng.choice(g.units, 10, False)] for g in analysis.prunable]
    )
    x = calib(16)
    sess = ort.InferenceSession(masked.SerializeToString(), providers=CPU)
    ref = masked_reference(Removal(analysis, labels))
    want = ort.InferenceSession(ref.SerializeToString(), providers=CPU)
    got = sess.run(None, {**x, **mask_feeds(analysis, sites, labels)})[0]
    np.testing.assert_allclose(got, want.run(None, x)[0], rtol=1e-5, atol=1e-5)
    none = sess.run(None, {**x, **mask_feeds(analysis, sites, labels[:0])})[0]
    orig = ort.InferenceSession(model.SerializeToString(), providers=CPU)
    np.testing.assert_allclose(none, orig.run(None, x)[0], rtol=1e-6, atol=1e-6)
    assert not np.allclose(got, none)  # the masks do remove something


@pytest.mark.parametrize("budget", [{"target_macs": 0.6}, {"ratios": {"neuron": 0.5}}])
def test_sensitivity_cuts_the_quiet_branch_first(budget):
    model = two_branches()
    kw = {"criterion": "l2", "calib": calib(), **budget}
    ratio = 0.0 if "ratios" in budget else 0.5
    sens = prune_and_check(model, ratio, allocate="sensitivity", **kw)
    ranked = prune_and_check(model, ratio, allocate="global", **kw)
    got, scores_only = branch_removed(sens), branch_removed(ranked)
    assert got["a"] >= 0.7 and got["b"] <= 0.3, got  # the quiet branch goes first
    assert abs(scores_only["a"] - scores_only["b"]) < 0.3, scores_only  # scores see no difference
    if "target_macs" in budget:
        kept = sens.after["macs"] / sens.before["macs"]
        assert abs(kept - 0.6) <= 0.02 * 0.6, kept
    else:  # the kind's ratio of all its units, shared out by loss
        assert sum(len(g.remove) for g in sens.plan.groups) == HIDDEN
    curves = sens.plan.sensitivity
    assert len(curves) == 2
    for points in curves.values():  # measured at 4 widths; losses grow with the width
        assert [k for k, _ in points] == [0, 8, 16, 24, 28]
        losses = [v for _, v in points]
        assert losses[0] == 0 and all(b > a for a, b in zip(losses, losses[1:], strict=False))
    quiet = next(v for k, v in curves.items() if branch(k) == "a")
    assert quiet[-1][1] < 1e-2


def test_sensitivity_beats_scores_on_the_output():
    """At the same MACs, the sensitivity plan moves the output less than score ranking."""
    model = two_branches()
    x = calib(128, seed=7)
    orig = ort.InferenceSession(model.SerializeToString(), providers=CPU)
    ref = orig.run(None, x)[0]
    errors = {}
    for how in ("uniform", "global", "sensitivity"):
        res = prune_model(model, PruneOptions(target_macs=0.5, calib=calib(), allocate=how))
        sess = ort.InferenceSession(res.model.SerializeToString(), providers=CPU)
        errors[how] = float(np.mean((sess.run(None, x)[0] - ref) ** 2) / np.mean(ref**2))
    assert errors["sensitivity"] < 0.5 * min(errors["uniform"], errors["global"]), errors


def test_sensitivity_needs_calibration_and_not_global():
    with pytest.raises(UsageError, match="--allocate sensitivity needs calibration"):
        PruneOptions(allocate="sensitivity")
    with pytest.raises(UsageError, match="give one of them"):
        PruneOptions(allocate="sensitivity", global_rank=True, calib=calib())
    with pytest.raises(UsageError, match="--allocate"):
        PruneOptions(allocate="sometimes", calib=calib())
    assert PruneOptions(global_rank=True).allocate == "global"
    assert PruneOptions(allocate="global").global_rank is True


def test_losses_are_centred_over_all_batches_not_within_one():
    """Batches of one sample (a fixed batch-1 model) still measure a loss: the shift
    shared by all samples is taken over every batch, not inside each."""
    x = calib(64)["x"]
    feeds = [{"x": row[None]} for row in x]
    res = prune_and_check(
        two_branches(), 0.0, ratios={"neuron": 0.5}, calib=feeds, allocate="sensitivity"
    )
    for points in res.plan.sensitivity.values():
        losses = [v for _, v in points]
        assert all(b > a for a, b in zip(losses, losses[1:], strict=False)), points
    assert branch_removed(res)["a"] >= 0.7
