"""Latency-aware allocation (graphprune.latency): the measured model is cached, monotone,
reaches its target in prediction, and --round-to auto resolves to a measured multiple.
No wall-clock assertions: only what the latency model predicts is checked."""

from __future__ import annotations

import numpy as np
import pytest

from graphprune import latency
from graphprune.errors import PlanError
from graphprune.prune import PruneOptions, prune_model
from tests.pruning_checks import assert_structure, assert_valid


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GRAPHPRUNE_CACHE", str(tmp_path))
    return tmp_path


def _check(result, model):
    assert_valid(result.model, model)
    assert result.parity.status == "exact", result.parity.per_output
    assert assert_structure(result) > 0


def test_speedup_target_reached_in_prediction(zoo_model):
    model = zoo_model("resnet", "torchscript")
    result = prune_model(model, PruneOptions(target_speedup=2, round_to=1))
    b = result.plan.budget
    assert b["what"] == "latency" and b["threads"] == 1
    assert b["predicted_ms"] == pytest.approx(b["base_ms"] / 2, rel=0.021)
    assert b["predicted_speedup"] == pytest.approx(2, rel=0.021)
    _check(result, model)


def test_cache_hit_is_not_measured_again_and_plan_is_the_same(zoo_model, cache, monkeypatch):
    model = zoo_model("resnet", "torchscript")
    first = prune_model(model, PruneOptions(target_speedup=1.5, global_rank=True, round_to=1))
    assert list((cache / "latency").glob("*.latency.json"))

    def fail(*a, **k):
        raise AssertionError("measured again despite the cache")

    monkeypatch.setattr(latency, "measure_samples", fail)
    second = prune_model(model, PruneOptions(target_speedup=1.5, global_rank=True, round_to=1))
    assert second.plan.to_json() == first.plan.to_json()


def test_predictions_monotone_in_width(zoo_model):
    model = zoo_model("mobilenetv2", "torchscript")
    preds = []
    for s in (1.1, 1.25, 1.4):
        b = prune_model(model, PruneOptions(target_speedup=s, round_to=1), dry_run=True).plan.budget
        preds.append(b["predicted_ms"])
    assert preds[0] > preds[1] > preds[2]


def test_curve_is_monotone_and_zero_when_gone():
    c = latency.Curve("t", "macs", [[1.0, 3.0], [0.5, 2.5], [0.25, 2.6], [0.0625, 1.0]])
    xs = np.linspace(0.001, 1, 50)
    ys = [c.at(x) for x in xs]
    assert all(b >= a - 1e-12 for a, b in zip(ys, ys[1:], strict=False))
    assert c.at(0.0) == 0.0


def test_unreachable_target_is_a_plan_error(zoo_model):
    model = zoo_model("resnet", "torchscript")
    with pytest.raises(PlanError, match="target-speedup 50"):
        prune_model(model, PruneOptions(target_speedup=50))


def test_round_to_auto_resolves_to_a_multiple(zoo_model):
    model = zoo_model("resnet", "torchscript")
    result = prune_model(model, PruneOptions(ratio=0.4, round_to="auto"))
    k = result.plan.budget["round_to"]
    assert k in latency.ROUND_TO_CHOICES
    for gp in result.plan.groups:
        if gp.units >= k:
            assert (gp.units - len(gp.remove)) % k == 0
    _check(result, model)


def test_choose_multiple_finds_the_block():
    widths = list(range(32, 65))
    # a kernel 30% slower off multiples of 8; smooth otherwise
    ms = [w * w * (1.0 if w % 8 == 0 else 1.3) for w in widths]
    assert latency.choose_multiple(widths, ms) == 8
    assert latency.choose_multiple(widths, [w * w for w in widths]) == 1


def test_a_latency_target_rounds_widths_automatically_by_default():
    assert PruneOptions(target_speedup=2).round_to == "auto"
    assert PruneOptions(target_latency=3).round_to == "auto"
    assert PruneOptions(target_macs=0.5).round_to == 1
    assert PruneOptions(target_speedup=2, round_to=1).round_to == 1  # given wins
