"""Calibration at scale: the reconstruction's Gram rows are captured after the plan, only
for the consumers it refits and only the rows the fit reads, in chunks of layers streamed
one at a time; the memory all of it needs is estimated first, and a run that would not fit
fails before any work with exit 10."""

from pathlib import Path

import numpy as np
import onnx
import pytest
from test_calibration import _feeds, _linear_chain, _mlp

import graphprune.calibration as cal
from graphprune.cli import main
from graphprune.errors import ResourceError
from graphprune.plan import GroupPlan, Plan
from graphprune.prune import PruneOptions, analyze_model, prune_model
from pruning_checks import run

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "models" / "digits" / "digits_cnn.onnx"
CALIB = ROOT / "models" / "digits" / "digits_calib.npz"


def _chain_plan():
    h1, h2 = analyze_model(_linear_chain()).prunable
    return Plan(
        [GroupPlan(h1.key, h1.kind, h1.units, [1, 2, 5, 6]), GroupPlan(h2.key, h2.kind, 8, [0])]
    )


def _spy(monkeypatch):
    """Record every ``capture`` call: its targets and what ``gram`` asked of them."""
    calls = []
    real = cal.capture

    def spy(model, feeds, targets, gram=False):
        acts = real(model, feeds, targets, gram)
        calls.append((sorted(set(targets)), gram, acts))
        return acts

    monkeypatch.setattr(cal, "capture", spy)
    return calls


def test_lsq_grams_are_streamed_one_chunk_at_a_time_with_only_the_kept_rows(monkeypatch):
    model, feeds = _linear_chain(), _feeds(n=256, batch=64)
    opts = PruneOptions(ratio=0.0, calib=feeds, reconstruct="lsq")
    whole = prune_model(model, opts, plan=_chain_plan())
    monkeypatch.setattr(cal, "CHUNK_BUDGET", 1)  # every consumer a chunk of its own
    calls = _spy(monkeypatch)
    streamed = prune_model(model, opts, plan=_chain_plan())
    # a replayed plan and a data-free criterion: nothing before the plan, then one pass per
    # refitted input (h1, then h2, in layer order), each holding just its kept rows
    assert [targets for targets, _, _ in calls] == [[("h1", 1)], [("h2", 1)]]
    for (targets, gram, acts), kept in zip(calls, ([0, 3, 4, 7], list(range(1, 8))), strict=True):
        assert list(gram[targets[0]]) == kept
        g = acts.get(*targets[0]).gram
        assert g.shape == (len(kept), 8) and g.dtype == cal.GRAM_DTYPE
    feed = {"x": np.random.default_rng(9).standard_normal((64, 16)).astype(np.float32)}
    assert np.array_equal(run(whole.model, feed)[0], run(streamed.model, feed)[0])


def test_criterion_statistics_carry_no_gram_unless_the_criterion_reads_one(monkeypatch):
    calls = _spy(monkeypatch)
    prune_model(
        _mlp(), PruneOptions(ratio=0.25, criterion="wanda", calib=_feeds(), reconstruct="lsq")
    )
    (first, *rest) = calls
    assert first[1] is False and first[2].get("r", 1).gram is None  # wanda: moments only
    assert [targets for targets, _, _ in rest] == [[("r", 1)]]  # lsq: after the plan
    calls.clear()
    prune_model(_mlp(), PruneOptions(ratio=0.25, criterion="obs", calib=_feeds()))
    ((_, gram, acts),) = calls  # obs: its full float64 Gram, before the plan
    assert gram is True and acts.get("r", 1).gram.shape == (8, 8)
    assert acts.get("r", 1).gram.dtype == np.float64


def test_lsq_reads_the_criterions_whole_grams_instead_of_capturing_rows(monkeypatch):
    """obs holds every input's float64 Gram matrix: lsq fits from it (no second pass), and
    the model is the one the captured float32 rows give, to float32 rounding."""
    from graphprune.passes import reconstruct

    model, feeds = _mlp(), _feeds()
    opts = PruneOptions(ratio=0.25, criterion="obs", calib=feeds, reconstruct="lsq")
    calls = _spy(monkeypatch)
    reused = prune_model(model, opts)
    assert len(calls) == 1 and calls[0][1] is True  # obs's pass, nothing after the plan
    from graphprune.passes import reconstructions

    real = reconstruct.lsq_updates
    monkeypatch.setattr(
        reconstructions, "lsq_updates", lambda *a, **k: real(*a, **{**k, "acts": None})
    )
    calls.clear()
    captured = prune_model(model, opts)
    assert len(calls) == 2  # obs's pass, then lsq's rows
    assert captured.plan == reused.plan
    assert reused.parity.mask_check == "exact" and reused.parity.status == "approximate"
    feed = {"x": np.random.default_rng(9).standard_normal((64, 16)).astype(np.float32)}
    a, b = run(reused.model, feed)[0], run(captured.model, feed)[0]
    assert not np.array_equal(a, run(model, feed)[0])
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_a_streamed_criterion_pass_gives_the_same_statistics(monkeypatch):
    model, feeds = _linear_chain(), _feeds()
    opts = PruneOptions(ratio=0.25, criterion="flap", calib=feeds)
    whole = prune_model(model, opts)
    monkeypatch.setattr(cal, "CHUNK_BUDGET", 1)
    calls = _spy(monkeypatch)
    chunked = prune_model(model, opts)
    assert len(calls) == 2  # h1 and h2 probed in passes of their own
    assert chunked.plan.to_json() == whole.plan.to_json()


def test_progress_runs_once_over_every_chunk(monkeypatch):
    import graphprune.progress as progress

    seen = []
    monkeypatch.setattr(progress, "BAR_LISTENERS", [lambda *a: seen.append(a)])
    monkeypatch.setattr(cal, "CHUNK_BUDGET", 1)
    opts = PruneOptions(ratio=0.0, calib=_feeds(n=256, batch=64), reconstruct="lsq")
    prune_model(_linear_chain(), opts, plan=_chain_plan())
    bars = [(done, total) for step, done, total in seen if step == "calibration"]
    assert bars == [(k, 8) for k in range(1, 9)]  # 2 chunks x 4 batches, one bar


def test_memory_estimate_counts_probes_statistics_and_gram_rows():
    model = _mlp()
    analysis = analyze_model(model)
    feeds = _feeds(n=64, batch=16)  # r: 16 positions x 8 channels per batch, float32
    opts = PruneOptions(ratio=0.25, criterion="obs", calib=feeds, reconstruct="lsq")
    est = cal.memory_estimate(model, analysis, opts, feeds)
    assert est["probe"] == 16 * 8 * 4
    assert est["statistics"] == 8 * 8 * 8 + 3 * 8 * 8  # obs: float64 Gram and moments
    assert est["gram_chunk"] == 6 * 8 * np.dtype(cal.GRAM_DTYPE).itemsize  # 6 of 8 kept
    assert est["peak"] >= max(v for k, v in est.items() if k != "peak")
    free = cal.memory_estimate(model, analysis, PruneOptions(ratio=0.25), [])
    assert free["peak"] == 0


def test_symbolic_dims_are_sized_from_the_batch():
    model = _linear_chain()
    onnx.shape_inference.infer_shapes(model)
    from graphprune.graph import infer_shapes

    infer_shapes(model)
    shapes = cal.tensor_shapes(model, {"x": np.zeros((5, 16), np.float32)}, ["h1", "h2"])
    assert shapes == {"h1": ((5, 8), 4), "h2": ((5, 8), 4)}


def test_calibration_that_would_not_fit_is_exit_10_before_any_work(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(cal, "available_memory", lambda: 1000)
    calls = _spy(monkeypatch)
    out = tmp_path / "o.onnx"
    args = ["prune", str(DIGITS), "-o", str(out), "--criterion", "wanda", "--calib", str(CALIB)]
    code = main([*args, "--reconstruct", "lsq", "--json", str(tmp_path / "r.json")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 10 and len(err) == 1
    assert "calibration needs about" in err[0] and "1.0 KB is available" in err[0]
    assert "--exclude" in err[0] and "smaller calibration batch" in err[0]
    assert not calls and not list(tmp_path.iterdir())  # no ORT pass ran, nothing written
    with pytest.raises(ResourceError):
        cal.check_memory({"peak": 2000, "probe": 2000}, available=1000)


def test_available_memory_is_positive_and_at_most_meminfo():
    meminfo = Path("/proc/meminfo").read_text()
    avail = int(next(ln for ln in meminfo.splitlines() if ln.startswith("MemAvailable")).split()[1])
    got = cal.available_memory()
    assert 0 < got <= avail * 1024 * 1.05  # the machine's memory moves between the two reads
