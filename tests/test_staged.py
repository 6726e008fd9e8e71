"""Staged runs (``graphprune.staged``): each wave of a layer-by-layer refit runs only the part
of the model its changes touch, from values earlier runs held, and gets what a run from the
inputs gets."""

import numpy as np
import onnx
from onnx import numpy_helper

from graphprune.calibration import ProbeRun
from graphprune.staged import StagedRuns
from graphs import G

WIDTH, LAYERS = 6, 4


def _chain():
    """x -> LAYERS residual MLPs: y_i = y_{i-1} + relu(y_{i-1} @ w1_i) @ w2_i."""
    g = G(seed=5)
    y = g.input("x", ["N", WIDTH])
    for i in range(LAYERS):
        h = g.op("Relu", [g.op("MatMul", [y, g.w(f"w1_{i}", WIDTH, 12)], f"z{i}")], f"h{i}")
        y = g.op("Add", [y, g.op("MatMul", [h, g.w(f"w2_{i}", 12, WIDTH)], f"o{i}")], f"y{i}")
    return g.model([y])


def _feeds():
    rng = np.random.default_rng(0)
    return [{"x": rng.standard_normal((n, WIDTH)).astype(np.float32)} for n in (5, 9, 7)]


def _waves():
    """Wave i changes layer i's two MatMuls and reads layer i's input."""
    changes = [{f"z{i}", f"o{i}"} for i in range(LAYERS)]
    targets = [["x" if i == 0 else f"y{i - 1}"] for i in range(LAYERS)]
    return changes, targets


def _scale(model, name, by):
    for t in model.graph.initializer:
        if t.name == name:
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) * by, name))


def _run_all(runs, model, feeds, names):
    out = [runs.values(k) for k in range(len(feeds))]
    runs.finish()
    return [{n: v[n] for n in names} for v in out]


def test_each_wave_sees_every_earlier_change_and_runs_only_what_it_needs():
    model, feeds = _chain(), _feeds()
    changes, targets = _waves()
    staged = StagedRuns(feeds, changes, targets)
    sizes = []
    for i, names in enumerate(targets):
        run = staged.begin(model, i, names)
        got = _run_all(run, model, feeds, names)
        want = _run_all(ProbeRun(model, feeds, names), model, feeds, names)
        for a, b in zip(got, want, strict=True):
            assert np.array_equal(a[names[0]], b[names[0]])
        sizes.append(run.node_count)
        _scale(model, f"w2_{i}", 1.5)  # this wave's change, applied after its run
    # from the held input of the previous layer: one layer of 4 nodes per wave, not i + 1
    assert sizes == [0, 4, 4, 4]
    assert set(staged.held[0]) == set()  # nothing is held past the last wave


def test_a_change_left_out_of_the_waves_is_never_read_stale_when_staging_is_off():
    model, feeds = _chain(), _feeds()
    changes, targets = _waves()
    staged = StagedRuns(feeds, changes, targets, budget=0)  # nothing may be held
    for i, names in enumerate(targets):
        run = staged.begin(model, i, names)
        got = _run_all(run, model, feeds, names)
        want = _run_all(ProbeRun(model, feeds, names), model, feeds, names)
        assert all(np.array_equal(a[names[0]], b[names[0]]) for a, b in zip(got, want, strict=True))
        assert run.node_count == 4 * i  # from the inputs every time
        _scale(model, f"w1_{i}", 0.5)
    assert not staged.enabled


def test_a_change_the_graph_does_not_name_turns_staging_off():
    model, feeds = _chain(), _feeds()
    changes, targets = _waves()
    changes[2] = {"no_such_tensor"}
    staged = StagedRuns(feeds, changes, targets)
    run = staged.begin(model, 0, targets[0])
    _run_all(run, model, feeds, targets[0])
    assert not staged.enabled
    names = targets[3]
    got = _run_all(staged.begin(model, 3, names), model, feeds, names)
    want = _run_all(ProbeRun(model, feeds, names), model, feeds, names)
    assert all(np.array_equal(a["y2"], b["y2"]) for a, b in zip(got, want, strict=True))


def test_a_shared_weight_taints_every_reader():
    """Layer 0 reads layer 2's w1: wave 2's change to it changes layer 0 too, so nothing
    computed from layer 0 may be held past wave 2."""
    model = _chain()
    for n in model.graph.node:
        if n.output[0] == "z0":
            n.input[1] = "w1_2"
    model.graph.initializer.remove(next(t for t in model.graph.initializer if t.name == "w1_0"))
    onnx.checker.check_model(model)
    feeds = _feeds()
    changes, targets = _waves()
    staged = StagedRuns(feeds, changes, targets)
    for i, names in enumerate(targets):
        got = _run_all(staged.begin(model, i, names), model, feeds, names)
        want = _run_all(ProbeRun(model, feeds, names), model, feeds, names)
        assert all(np.array_equal(a[names[0]], b[names[0]]) for a, b in zip(got, want, strict=True))
        _scale(model, f"w1_{i}", 0.5)


def test_lsq_seq_and_block_give_the_same_model_staged_or_not(monkeypatch):
    """The digits CNN (lsq-seq: five waves) and a residual MLP (block): the same weights
    whether each wave starts from held values or from the inputs."""
    from pathlib import Path

    from test_block_reconstruct import _feeds, _residual_mlp

    import graphprune.staged as staged_mod
    from graphprune.prune import PruneOptions, prune_model

    digits = Path(__file__).resolve().parents[1] / "models" / "digits"
    calib = dict(np.load(digits / "digits_calib.npz"))["input"]
    cases = [
        (
            str(digits / "digits_cnn.onnx"),
            PruneOptions(ratio=0.3, criterion="l2", reconstruct="lsq-seq",
                         calib=[{"input": calib[i : i + 16]} for i in range(0, 64, 16)]),
        ),
        (_residual_mlp(), PruneOptions(ratio=0.5, criterion="l2", reconstruct="block",
                                       calib=_feeds(n=1024))),
    ]  # fmt: skip
    for model, opts in cases:
        results = []
        for budget in (1 << 30, 0):
            monkeypatch.setattr(staged_mod, "chunk_budget", lambda b=budget: b)
            res = prune_model(model, opts)
            results.append([numpy_helper.to_array(t) for t in res.model.graph.initializer])
        assert len(results[0]) == len(results[1])  # (names carry a run counter)
        assert all(np.array_equal(a, b) for a, b in zip(*results, strict=True))
