"""Every zoo model, from both torch exporters (and skl2onnx), prunes at 0.3 and 0.5 with the
structure changed as planned, a valid model, and exact parity with the masked original."""

import onnx
import pytest

from graphprune.prune import analyze_model
from pruning_checks import prune_and_check

torch = pytest.importorskip("torch")
from models.zoo import SKLEARN_MLP, SMALL_ZOO, build  # noqa: E402

IO_REASONS = {"graph input", "graph output"}


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


@pytest.mark.slow
@pytest.mark.parametrize("name", SMALL_ZOO)
def test_zoo_layerwise_reconstruction(zoo_model, name):
    """lsq-seq on every op family of the zoo (concats, splits, grouped and depthwise convs,
    SE gates, upsampling): the plain removal is mask-exact, the refitted model is valid and
    keeps the planned structure, and its weights really changed (parity approximate)."""
    import numpy as np

    from graphprune.prune import PruneOptions, prune_model
    from pruning_checks import assert_structure, assert_valid

    model = zoo_model(name, "torchscript")
    inp = model.graph.input[0]
    shape = [d.dim_value or 2 for d in inp.type.tensor_type.shape.dim]
    rng = np.random.default_rng(0)
    calib = [{inp.name: rng.standard_normal(shape).astype(np.float32)} for _ in range(4)]
    opts = PruneOptions(ratio=0.5, criterion="flap", reconstruct="lsq-seq", calib=calib)
    result = prune_model(model, opts)
    assert_valid(result.model, model)
    assert assert_structure(result) > 0
    assert result.parity.mask_check == "exact"
    assert result.parity.status == "approximate" and result.parity.max_abs_diff > 0
