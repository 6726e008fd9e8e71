"""Attention heads and MLP neurons found and removed in exported transformer blocks (both
torch exporters, static and dynamic shapes), with no model code or head count given."""

import pytest

from graphprune.prune import analyze_model
from pruning_checks import prune_and_check

torch = pytest.importorskip("torch")
nn = torch.nn

from exporters.torch_export import export_torch  # noqa: E402


class Block(nn.Module):
    """Pre-norm transformer block written the plain way (view/transpose/matmul/softmax)."""

    def __init__(self, d=32, heads=4, ff=64):
        super().__init__()
        self.h, self.dh = heads, d // heads
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.f1, self.f2 = nn.Linear(d, ff), nn.Linear(ff, d)

    def forward(self, x):
        b, s, d = x.shape
        y = self.ln1(x)
        q, k, v = (
            p(y).view(b, s, self.h, self.dh).transpose(1, 2) for p in (self.q, self.k, self.v)
        )
        att = ((q @ k.transpose(-1, -2)) / self.dh**0.5).softmax(-1)
        x = x + self.o((att @ v).transpose(1, 2).reshape(b, s, d))
        return x + self.f2(nn.functional.gelu(self.f1(self.ln2(x))))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(0)
    model = nn.Sequential(Block(), Block()).eval()
    x = torch.randn(2, 8, 32)
    cache = {}

    def get(exporter, dynamic):
        key = (exporter, dynamic)
        if key not in cache:
            path = tmp_path_factory.mktemp("attn") / f"{exporter}-{dynamic}.onnx"
            cache[key] = export_torch(model, (x,), path, exporter=exporter, dynamic_batch=dynamic)
        return cache[key]

    return get


def _heads_per_layer(result):
    return sorted(gp.units - len(gp.remove) for gp in result.plan.groups if gp.kind == "head")


@pytest.mark.slow
@pytest.mark.parametrize("dynamic", [False, True])
@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_heads_and_mlp_found_and_pruned(exported, exporter, dynamic):
    import onnx

    model = onnx.load(exported(exporter, dynamic))
    analysis = analyze_model(model)
    kinds = sorted((g.kind, g.units) for g in analysis.prunable)
    assert kinds == [("head", 4), ("head", 4), ("neuron", 64), ("neuron", 64)]
    (hidden,) = analysis.frozen  # the residual stream: normalised, and the graph's I/O
    assert hidden.units == 32 and any("normalised" in r for r in hidden.frozen_reasons)
    result = prune_and_check(model, 0.0, ratios={"head": 0.5, "neuron": 0.25})
    assert _heads_per_layer(result) == [2, 2]
    mlp = sorted(gp.units - len(gp.remove) for gp in result.plan.groups if gp.kind == "neuron")
    assert mlp == [48, 48]


class TinyLM(nn.Module):
    """Token embedding -> blocks -> final LayerNorm -> LM head: the width is internal."""

    def __init__(self, vocab=50, d=32):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.blocks = nn.Sequential(Block(d), Block(d))
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab)

    def forward(self, ids):
        return self.head(self.norm(self.blocks(self.emb(ids))))


@pytest.mark.slow
@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_hidden_width_is_pruned_approximately(tmp_path, exporter):
    import onnx

    from graphprune.prune import PruneOptions, prune_model
    from pruning_checks import assert_structure, assert_valid

    torch.manual_seed(0)
    ids = torch.randint(0, 50, (2, 8))
    path = export_torch(TinyLM().eval(), (ids,), tmp_path / "lm.onnx", exporter=exporter)
    model = onnx.load(path)
    analysis = analyze_model(model)
    (hidden,) = [g for g in analysis.groups if g.width_only]
    assert hidden.units == 32
    weights = {d.tensor for d in hidden.carriers()}
    assert any("emb" in w for w in weights) and any("ln" in w or "norm" in w for w in weights)
    result = prune_model(model, PruneOptions(ratio=0.0, hidden=0.25))
    assert_valid(result.model)
    assert assert_structure(result) > 0
    (gp,) = result.plan.groups
    assert gp.approximate and gp.units - len(gp.remove) == 24
    assert result.parity.status == "approximate"
    assert 0 < result.parity.max_abs_diff < float("inf")
    assert result.after["params"] < result.before["params"]


@pytest.mark.slow
@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_drop_layers_rewires_the_residual(exported, exporter):
    import onnx

    from graphprune.depth import find_blocks

    model = onnx.load(exported(exporter, True))
    blocks = find_blocks(analyze_model(model))
    assert [b.kind for b in blocks] == ["attention", "mlp", "attention", "mlp"]
    result = prune_and_check(model, 0.0, drop_list=(0, 3))
    dropped = [gp for gp in result.plan.groups if gp.drop]
    assert [gp.key for gp in dropped] == [blocks[0].group.key, blocks[3].group.key]
    ops = [n.op_type for n in result.model.graph.node]
    assert ops.count("Softmax") == 1 and ops.count("Erf") == 1  # one attention, one MLP left
    assert result.after["macs"] < 0.6 * result.before["macs"]


def test_drop_layers_list_out_of_range_is_a_usage_error(tmp_path, exported, capsys):
    from graphprune.cli import main

    out = tmp_path / "x.onnx"
    code = main(
        ["prune", exported("torchscript", False), "-o", str(out), "--drop-layers-list", "9"]
    )
    assert code == 2 and "no block 9" in capsys.readouterr().err and not out.exists()
