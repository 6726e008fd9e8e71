"""Every zoo model, from both torch exporters (and skl2onnx), prunes at 0.3 and 0.5 with the
structure changed as planned, a valid model, and exact parity with the masked original."""

import onnx
import pytest

from graphprune.prune import analyze_model
from pruning_checks import prune_and_check

torch = pytest.importorskip("torch")
from models.zoo import SKLEARN_MLP, SMALL_ZOO, build  # noqa: E402

IO_REASONS = {"graph input", "graph output"}


@pytest.fixture(scope="module")
def zoo_model():
    cache = {}

    def get(name, exporter):
        if (name, exporter) not in cache:
            cache[name, exporter] = onnx.load(str(build(name, exporter)))
        return cache[name, exporter]

    return get


@pytest.mark.slow
@pytest.mark.parametrize("ratio", [0.3, 0.5])
@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
@pytest.mark.parametrize("name", SMALL_ZOO)
def test_zoo_prunes_exactly(zoo_model, name, exporter, ratio):
    model = zoo_model(name, exporter)
    result = prune_and_check(model, ratio)
    # nothing inside the network is frozen: only the groups touching inputs/outputs
    for g in result.analysis.frozen:
        assert set(g.frozen_reasons) <= IO_REASONS, (g.key, g.frozen_reasons)
    assert len(result.plan.groups) == len(result.analysis.prunable) >= 2


@pytest.mark.slow
@pytest.mark.parametrize("name", SMALL_ZOO)
def test_both_exporters_find_the_same_structure(zoo_model, name):
    a = analyze_model(zoo_model(name, "torchscript"))
    b = analyze_model(zoo_model(name, "dynamo"))
    assert sorted(g.units for g in a.prunable) == sorted(g.units for g in b.prunable)


@pytest.mark.slow
@pytest.mark.parametrize("ratio", [0.3, 0.5])
def test_sklearn_mlp_prunes_exactly(ratio):
    model = onnx.load(str(build(SKLEARN_MLP)))
    result = prune_and_check(model, ratio)
    assert sorted(gp.units for gp in result.plan.groups) == [16, 32]
