"""``--ray``: calibration shards and sweep configurations as Ray tasks give what the single
process gives; without the flag Ray is never imported; ``--ray auto`` with no cluster is
exit 10 with one line. One local Ray instance (2 CPUs) serves the module."""

from __future__ import annotations

import contextlib
import io
import json
import operator
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from graphprune import cluster
from graphprune.calibration import capture
from graphprune.cli import main
from graphprune.graph import load_model
from graphprune.importance import calibration_targets
from graphprune.prune import PruneOptions, analyze_model, prune_model
from graphprune.shards import capture_sharded, shard_bounds
from pruning_checks import assert_structure, assert_valid

pytest.importorskip("ray")

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "models" / "digits" / "digits_cnn.onnx"
CALIB = ROOT / "models" / "digits" / "digits_calib.npz"
TEST = ROOT / "models" / "digits" / "digits_test.npz"


def _clean_env() -> dict:
    """The environment of a fresh shell: no Ray address, no test-time settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "PYTEST_"))}
    env["PYTHONPATH"] = str(ROOT)
    return env


def test_ray_auto_without_a_cluster_is_exit_10_in_one_line(tmp_path):
    """First in the module: the local instance the other tests share is not up yet. Where
    some other instance is visible on this machine (another xdist worker's), the subprocess
    is told it sees none, so what is checked is still our refusal, not Ray's search."""
    import ray._private.services as services

    out = tmp_path / "x.onnx"
    argv = ["prune", str(DIGITS), "-o", str(out), "--ray", "auto"]
    blind = ""
    if services.find_gcs_addresses() or services.find_bootstrap_address(None):
        blind = (
            "import ray._private.services as s\n"
            "def none():\n    return frozenset()\n"
            "none.cache_clear = lambda: None\n"  # ray.shutdown clears the search's cache
            "s.find_gcs_addresses = none\n"
            "s.find_bootstrap_address = lambda temp_dir: None\n"
        )
    code = f"{blind}import sys\nfrom graphprune.cli import main\nsys.exit(main({argv!r}))"
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 10, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("graphprune: error: --ray auto: no running Ray cluster")
    assert "ray start --head" in lines[0] and "--ray local" in lines[0]
    assert not out.exists()


def test_without_ray_it_is_never_imported(tmp_path):
    """A prune that captures calibration statistics (the hook's path) and a sweep, in a
    fresh process, leave ``ray`` out of ``sys.modules``."""
    out = tmp_path / "x.onnx"
    prune = ["prune", str(DIGITS), "-o", str(out), "-q", "--criterion", "wanda"]
    prune += ["--reconstruct", "lsq", "--calib", str(CALIB)]
    sweep = ["sweep", str(DIGITS), "--out", str(tmp_path / "s"), "--ratio", "0.2,0.3"]
    sweep += ["--bench-time", "0.01"]
    code = (
        "import sys; from graphprune.cli import main; "
        f"assert main({prune!r}) == 0; assert main({sweep!r}) == 0; "
        "assert 'ray' not in sys.modules, 'ray was imported'"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], env=_clean_env(), capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert out.is_file()


@pytest.fixture(scope="module")
def ray_local():
    """The module's local Ray instance, 2 CPUs (``--ray local`` runs reuse it)."""
    cluster.connect("local", num_cpus=2)
    yield
    cluster.shutdown()


@pytest.fixture(scope="module")
def resnet():
    from models.zoo import build

    return str(build("resnet", "torchscript"))  # a fixed batch of 1: one batch per sample


def test_map_tasks_in_order_on_ray_and_here(ray_local):
    """Results come back in the items' order, as Ray tasks or (not active) here; a task's
    exception is raised as itself."""
    cluster.use("local")
    assert cluster.map_tasks(operator.add, range(6), 10) == list(range(10, 16))
    with pytest.raises(ZeroDivisionError):
        cluster.map_tasks(operator.truediv, [1, 2], 0)
    cluster.use(None)
    assert not cluster.active() and not cluster.in_worker()
    assert cluster.map_tasks(operator.add, range(3), 1) == [1, 2, 3]


def _initializers(model: onnx.ModelProto) -> list[tuple[list, np.ndarray]]:
    """In graph order (the names of refitted weights carry a per-process counter)."""
    return [(list(t.dims), numpy_helper.to_array(t)) for t in model.graph.initializer]


def _calib(samples: int) -> dict:
    rng = np.random.default_rng(0)
    return {"input": rng.standard_normal((samples, 3, 32, 32)).astype(np.float32)}


def test_sharded_prune_is_the_single_process_prune(ray_local, resnet):
    """wanda + lsq on 3 calibration batches: shards [0, 1] and [2], so the partial sums add
    up in the single process's own order; the plan is bit-identical and every weight is
    the same (allclose at rtol 1e-5), and the sharded prune passes the three checks."""
    opts = {"ratio": 0.5, "criterion": "wanda", "reconstruct": "lsq", "calib": _calib(3)}
    single = prune_model(resnet, PruneOptions(**opts))
    assert not cluster.active()
    sharded = prune_model(resnet, PruneOptions(**opts, ray="local"))
    assert cluster.active() and cluster.workers() == 2
    assert sharded.calibration_batches == single.calibration_batches == 3
    assert sharded.plan.to_json() == single.plan.to_json()
    a, b = _initializers(single.model), _initializers(sharded.model)
    assert [d for d, _ in a] == [d for d, _ in b]
    for (_, x), (_, y) in zip(a, b, strict=True):
        assert np.allclose(x, y, rtol=1e-5)
    # the three checks: structure as planned, checker + ORT load, parity vs masked original
    assert sharded.plan.groups and assert_structure(sharded) > 0
    assert_valid(sharded.model, onnx.load(resnet))
    assert sharded.parity.mask_check == "exact"
    assert sharded.parity.status == "approximate"  # the refit changes the function
    assert sharded.after["params"] < sharded.before["params"]


def test_sharded_statistics_are_the_sum_of_the_shards(ray_local, resnet):
    """Over 8 batches (4 + 4: the sums are grouped differently) the moments and the Gram
    matrices (float64, and float32 rows) equal the single pass's to rounding, and a wanda
    plan made from them is bit-identical."""
    model = load_model(resnet)
    feeds = [{"input": x[None]} for x in _calib(8)["input"]]
    targets = calibration_targets(analyze_model(model))
    rows = {t: np.arange(0, 4) for t in targets[:3]}
    cluster.use("local")
    for gram, rtol in ((True, 1e-10), (rows, 1e-5)):
        one = capture(model, feeds, targets, gram)
        cluster.use(None)
        base = capture(model, feeds, targets, gram)
        cluster.use("local")
        assert one.samples == base.samples == 8
        assert list(one.stats) == list(base.stats)
        for key, s in base.stats.items():
            t = one.stats[key]
            assert t.count == s.count
            for f in ("total", "squares", "absolute"):
                assert np.allclose(getattr(t, f), getattr(s, f), rtol=1e-10, atol=1e-12)
            if s.gram is None:
                assert t.gram is None
            else:
                assert t.gram.dtype == s.gram.dtype
                assert np.allclose(t.gram, s.gram, rtol=rtol, atol=rtol * np.abs(s.gram).max())
    direct = capture_sharded(model, feeds, targets)
    assert direct.samples == 8
    assert shard_bounds(8, 2) == [(0, 4), (4, 8)]
    assert shard_bounds(5, 3) == [(0, 2), (2, 4), (4, 5)]
    opts = {"ratio": 0.5, "criterion": "wanda", "calib": _calib(8)}
    single = prune_model(resnet, PruneOptions(**opts))
    sharded = prune_model(resnet, PruneOptions(**opts, ray="local"))
    assert sharded.plan.to_json() == single.plan.to_json()


def _sweep(out, *args) -> tuple[int, str, str]:
    so, se = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(so), contextlib.redirect_stderr(se):
        code = main(["sweep", str(DIGITS), "--out", str(out), *args])
    return code, so.getvalue(), se.getvalue()


def test_sweep_on_ray_gives_the_same_rows(ray_local, tmp_path, capfd):
    grid = ["--ratio", "0.1,0.25", "--criterion", "l2,wanda", "--calib", str(CALIB)]
    grid += ["--eval", str(TEST), "--bench-time", "0.02"]
    code, _, err = _sweep(tmp_path / "plain", *grid)
    assert code == 0, err
    capfd.readouterr()
    code, _, err = _sweep(tmp_path / "ray", *grid, "--ray", "local")
    assert code == 0, err
    assert len(capfd.readouterr().err.strip().splitlines()) <= 1  # Ray says at most a line
    plain, ray = (
        {r["id"]: r for r in json.loads((tmp_path / d / "results.json").read_text())["rows"]}
        for d in ("plain", "ray")
    )
    assert plain.keys() == ray.keys() and len(ray) == 5  # the original and 4 configurations
    for cid, r in ray.items():
        assert r["status"] == "ok", r
        for f in ("options", "params", "params_kept", "macs", "macs_kept", "parity"):
            assert r[f] == plain[cid][f], (cid, f)
        for f in ("quality", "mean_cosine", "accuracy_after"):
            assert r[f] == pytest.approx(plain[cid][f], rel=1e-6, abs=1e-6), (cid, f)
    assert json.loads((tmp_path / "ray" / "results.json").read_text())["options"]["ray"] == (
        "local"
    )
    # resume: the same directory without --ray reuses every configuration
    code, stdout, err = _sweep(tmp_path / "ray", *grid)
    assert code == 0, err
    assert "0 run, 4 reused" in stdout
