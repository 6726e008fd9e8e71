"""``--reconstruct block``: MLP blocks (producer, elementwise activation, consumer) found in
the graph and refined as a whole by gradient steps on calibration tokens."""

import math

import numpy as np
import pytest
from onnx import numpy_helper

from graphprune.calibration import ProbeRun, capture_rows
from graphprune.plan import GroupPlan, Plan
from graphprune.prune import PruneOptions, analyze_model, prune_model
from graphs import G
from pruning_checks import assert_structure, assert_valid, run

WIDTH, HIDDEN = 8, 32


def _gelu(g, z, name):
    """GELU as the TorchScript exporter writes it: z * 0.5 * (1 + erf(z / √2))."""
    s = g.op(
        "Div", [z, g.const(f"{name}_sqrt2", np.float32(math.sqrt(2)), np.float32)], f"{name}_d"
    )
    e = g.op("Erf", [s], f"{name}_e")
    one = g.op("Add", [e, g.const(f"{name}_one", np.float32(1), np.float32)], f"{name}_a")
    m = g.op("Mul", [z, one], f"{name}_m")
    return g.op("Mul", [m, g.const(f"{name}_half", np.float32(0.5), np.float32)], name)


def _residual_mlp(gated=None):
    """x(8) -> MatMul(8->32) + b1 -> GELU -> MatMul(32->8) + b2 -> + x. ``gated``: "gelu"
    (GeGLU) or "silu" (SwiGLU, as z * Sigmoid(z)): the activation times a second
    producer's output, ``up = x @ Wu``."""
    g = G(seed=3)
    x = g.input("x", ["N", WIDTH])
    z = g.op("Add", [g.op("MatMul", [x, g.w("w1", WIDTH, HIDDEN)], "xw1"), g.w("b1", HIDDEN)], "z")
    silu = gated == "silu"
    h = g.op("Mul", [z, g.op("Sigmoid", [z], "sig")], "h") if silu else _gelu(g, z, "h")
    if gated:
        h = g.op("Mul", [h, g.op("MatMul", [x, g.w("wu", WIDTH, HIDDEN)], "up")], "gated")
    o = g.op("Add", [g.op("MatMul", [h, g.w("w2", HIDDEN, WIDTH)], "hw2"), g.w("b2", WIDTH)], "o")
    return g.model([g.op("Add", [o, x], "y")])


def _feeds(n=4096, batch=256, seed=0):
    x = np.random.default_rng(seed).standard_normal((n, WIDTH)).astype(np.float32)
    return [{"x": x[s : s + batch]} for s in range(0, n, batch)]


def _block(model):
    from graphprune.passes.reconstruct_block import find_block
    from graphprune.passes.removal import Removal

    analysis = analyze_model(model)
    (group,) = analysis.prunable
    removal = Removal(analysis, group.unit_labels[::2])
    (c,) = [c for c in analysis.contractions if len(removal.of_dim(c.dim))]
    return find_block(c, removal)


def test_finds_the_mlp_block_and_its_residual():
    block = _block(_residual_mlp())
    assert block.producers[0].node.name and block.producers[0].z.name == "z"
    assert block.h.name == "h" and block.x.name == "x"
    assert sorted(n.op for n in block.region) == ["Add", "Div", "Erf", "Mul", "Mul"]
    assert block.residual == "x"
    (p,) = block.producers
    assert p.bias.shape == (HIDDEN,) and p.w.shape == (WIDTH, HIDDEN)  # b1, one per neuron


@pytest.mark.parametrize("gate", ["gelu", "silu"])
def test_a_gated_mlp_is_a_block_of_two_producers(gate):
    block = _block(_residual_mlp(gated=gate))
    assert [p.z.name for p in block.producers] == ["z", "up"]
    assert block.h.name == "gated" and block.residual == "x"
    assert {p.node.inputs[0].name for p in block.producers} == {"x"}


def test_branches_reading_different_inputs_are_not_a_block():
    g = G(seed=3)
    x = g.input("x", ["N", WIDTH])
    x2 = g.op("Relu", [x], "x2")
    z = g.op("MatMul", [x, g.w("w1", WIDTH, HIDDEN)], "z")
    up = g.op("MatMul", [x2, g.w("wu", WIDTH, HIDDEN)], "up")
    h = g.op("Mul", [g.op("Sigmoid", [z], "s"), up], "h")
    model = g.model([g.op("Add", [g.op("MatMul", [h, g.w("w2", HIDDEN, WIDTH)], "o"), x], "y")])
    assert _block(model) is None


def test_refine_follows_the_gradient():
    """A tanh MLP that lost half its neurons: Adam steps on W1, b1, W2, b2 cut the held-out
    error; with no epochs the parameters are untouched."""
    from graphprune.passes.reconstruct_block import refine

    rng = np.random.default_rng(0)
    x = rng.standard_normal((4000, 16)).astype(np.float32)
    w1 = (rng.standard_normal((16, 32)) / 4).astype(np.float32)
    w2 = (rng.standard_normal((32, 8)) / 6).astype(np.float32)
    target = np.tanh(x @ w1) @ w2

    def f(zs):
        (z,) = zs
        return np.tanh(z), [1 - np.tanh(z) ** 2]

    def start():
        return [
            w1[:, :16].copy(),
            np.zeros(16, np.float32),
            w2[:16].copy(),
            np.zeros(8, np.float32),
        ]

    params = start()
    before, after = refine(x, target, params, f, epochs=8, step=0.04)
    assert after < 0.2 * before
    assert not np.array_equal(params[0], w1[:, :16])
    params = start()
    assert refine(x, target, params, f, epochs=0, step=0.04) == (before, before)
    assert all(np.array_equal(p, q) for p, q in zip(params, start(), strict=True))


def test_capture_rows_keeps_aligned_positions_within_the_limit():
    model = _residual_mlp()
    feeds = _feeds(n=1000, batch=100)
    runs = (ProbeRun(model, feeds, ["x", "z"]), ProbeRun(model, feeds, ["x"]))
    cur, orig = capture_rows(runs, limit=120)
    x = np.concatenate([f["x"] for f in feeds])
    assert 120 <= len(cur["x"]) <= 240 and len(cur["z"]) == len(cur["x"]) == len(orig["x"])
    stride = len(x) // len(cur["x"])
    assert np.array_equal(cur["x"], x[::stride]) and np.array_equal(orig["x"], x[::stride])


@pytest.mark.parametrize(
    "gated, narrowed",
    [(None, 7), ("gelu", 9), ("silu", 6)],  # xw1, z, the activation's tensors, h (, up, gated)
)
def test_block_refit_beats_lsq_on_unseen_data(gated, narrowed):
    """Plain, GeGLU and SwiGLU blocks: every producer moves, and the block's output error on
    unseen inputs is below 0.8 x lsq's."""
    model = _residual_mlp(gated)
    (group,) = analyze_model(model).prunable
    plan = Plan([GroupPlan(group.key, group.kind, group.units, list(range(0, HIDDEN, 2)))])
    feed = _feeds(n=2048, batch=2048, seed=7)[0]  # not calibration data
    original = run(model, feed)[0]

    def fit(mode):
        result = prune_model(
            model, PruneOptions(ratio=0.0, calib=_feeds(), reconstruct=mode), plan=plan
        )
        assert result.parity.mask_check == "exact"  # checked before the refit
        assert result.parity.status == "approximate"
        assert_valid(result.model, model)
        assert assert_structure(result) == narrowed
        inits = {t.name: numpy_helper.to_array(t) for t in result.model.graph.initializer}
        graph = result.model.graph
        producers = [
            inits[n.input[1]] for n in graph.node if n.op_type == "MatMul" and n.input[0] == "x"
        ]
        return float(np.mean((run(result.model, feed)[0] - original) ** 2)), producers

    (lsq, w_lsq), (block, w_block) = fit("lsq"), fit("block")
    assert len(w_lsq) == len(w_block) == (2 if gated else 1)
    for a, b in zip(w_lsq, w_block, strict=True):  # lsq leaves the producers as they are
        assert a.shape == b.shape == (WIDTH, HIDDEN // 2) and not np.allclose(a, b)
    assert block < 0.8 * lsq


@pytest.mark.parametrize("trans_b", [0, 1])
def test_gemm_blocks_in_either_layout(trans_b):
    """Gemm producer and consumer (beta ≠ 1, weights stored either way round): the refit
    lands in the right layout and bias, and beats lsq on unseen data."""
    g = G(seed=3)
    x = g.input("x", ["N", WIDTH])
    w1 = g.w("w1", *((HIDDEN, WIDTH) if trans_b else (WIDTH, HIDDEN)))
    w2 = g.w("w2", *((WIDTH, HIDDEN) if trans_b else (HIDDEN, WIDTH)))
    z = g.op("Gemm", [x, w1, g.w("b1", HIDDEN)], "z", transB=trans_b, beta=0.5)
    o = g.op("Gemm", [_gelu(g, z, "h"), w2, g.w("b2", WIDTH)], "o", transB=trans_b, beta=2.0)
    model = g.model([g.op("Add", [o, x], "y")])
    (group,) = analyze_model(model).prunable
    plan = Plan([GroupPlan(group.key, group.kind, group.units, list(range(0, HIDDEN, 2)))])
    feed = _feeds(n=2048, batch=2048, seed=7)[0]
    original = run(model, feed)[0]
    errors = {}
    for mode in ("lsq", "block"):
        result = prune_model(
            model, PruneOptions(ratio=0.0, calib=_feeds(), reconstruct=mode), plan=plan
        )
        assert result.parity.mask_check == "exact"
        assert_valid(result.model, model)
        assert assert_structure(result) == 6  # z, the four GELU tensors, h
        errors[mode] = float(np.mean((run(result.model, feed)[0] - original) ** 2))
    assert errors["block"] < 0.8 * errors["lsq"]  # 0.60 and 0.49 measured
