"""LSTM, GRU and RNN: a unit is one hidden unit, removed from every gate of every direction.

Hand-built graphs cover each op, direction and the optional inputs; torch exports cover
what both exporters emit for nn.LSTM / nn.GRU / nn.RNN. Every pruned model is checked for
structure, checker + ONNX Runtime load, and exact parity against the masked original."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper

import graphprune.validate as validate
from graphprune.analysis.rules import NodeView
from graphprune.analysis.rules.recurrent import GATES, Recurrent, is_direction_axis
from graphprune.cost import CostModel
from graphprune.graph import import_graph
from graphprune.plan import removed_labels
from graphprune.prune import PruneOptions, analyze_model, prune_model
from graphs import G
from pruning_checks import assert_structure, prune_and_check, refused_as_nothing_pruned

S, BATCH, IN = 5, 2, 6


def _w(g: G, name: str, *shape: int) -> str:
    return g.w(name, values=0.5 * g.rng.standard_normal(shape))


def recurrent(g: G, op: str, x: str, n_in: int, hidden: int, name: str, outputs=3, **opts):
    """Add one ``op`` layer reading ``x`` ([S, B, n_in], or [B, S, n_in] with layout=1) with
    bias and initial states; ``opts``: direction, peepholes, seq_lens, node attributes.
    Returns the names of Y, Y_h (and Y_c) as far as ``outputs`` asks."""
    direction = opts.pop("direction", "forward")
    dirs, gates = (2 if direction == "bidirectional" else 1), GATES[op]
    peepholes, seq_lens = opts.pop("peepholes", False), opts.pop("seq_lens", None)
    batch_major = opts.get("layout", 0) == 1
    state = [BATCH, dirs, hidden] if batch_major else [dirs, BATCH, hidden]
    ins = [
        x,
        _w(g, f"{name}.W", dirs, gates * hidden, n_in),
        _w(g, f"{name}.R", dirs, gates * hidden, hidden),
        _w(g, f"{name}.B", dirs, 2 * gates * hidden),
        g.const(f"{name}.lens", seq_lens, np.int32) if seq_lens else "",
        _w(g, f"{name}.h0", *state),
    ]
    if op == "LSTM":
        ins += [
            _w(g, f"{name}.c0", *state),
            _w(g, f"{name}.P", dirs, 3 * hidden) if peepholes else "",
        ]
    names = [f"{name}.Y", f"{name}.Y_h", f"{name}.Y_c"][: min(outputs, 3 if op == "LSTM" else 2)]
    g.nodes.append(
        helper.make_node(op, ins, names, name=name, hidden_size=hidden, direction=direction, **opts)
    )
    return names


def head(g: G, t: str, width: int, name: str) -> str:
    """MatMul by a [width, 3] weight (leading axes broadcast)."""
    return g.op("MatMul", [t, _w(g, f"{name}.w", width, 3)], name)


def _attr(model: onnx.ModelProto, name: str, attr: str = "hidden_size"):
    node = next(n for n in model.graph.node if n.name == name)
    return next(helper.get_attribute_value(a) for a in node.attribute if a.name == attr)


def _init_shape(model: onnx.ModelProto, node_name: str, slot: int) -> list[int]:
    node = next(n for n in model.graph.node if n.name == node_name)
    init = next(t for t in model.graph.initializer if t.name == node.input[slot])
    return list(init.dims)


def _hidden_groups(result) -> list[tuple[int, int]]:
    """(units, kept) of every planned group whose dims include a recurrent node's own."""
    analysis = result.analysis
    keys = {
        g.key
        for g in analysis.groups
        if any(d.node is not None and d.node.op in GATES and d.kind == "virtual" for d in g.dims)
    }
    return sorted(
        (gp.units, gp.units - len(gp.remove)) for gp in result.plan.groups if gp.key in keys
    )


# -- one layer -------------------------------------------------------------------------------

VARIANTS = {
    "LSTM": ("LSTM", {}),
    "LSTM-peepholes-lens-clip": (
        "LSTM",
        {"peepholes": True, "seq_lens": [S, S - 2], "clip": 2.0, "input_forget": 1},
    ),
    "GRU": ("GRU", {"linear_before_reset": 0}),
    "GRU-linear-before-reset": ("GRU", {"linear_before_reset": 1}),
    "RNN": ("RNN", {}),
}


def single_layer(op: str, direction: str, hidden: int = 8, **opts) -> onnx.ModelProto:
    """X -> op -> every output -> its own MatMul head (Y: [S, dirs, B, 3])."""
    g = G(seed=1)
    x = g.input("x", [S, BATCH, IN])
    outs = recurrent(g, op, x, IN, hidden, "rnn", direction=direction, **opts)
    heads = [head(g, t, hidden, f"head{k}") for k, t in enumerate(outs)]
    return g.model(heads)


@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_one_layer_prunes_exactly(variant, direction):
    op, opts = VARIANTS[variant]
    model = single_layer(op, direction, **opts)
    result = prune_and_check(model, 0.5)
    assert _hidden_groups(result) == [(8, 4)]
    pruned, dirs, gates = result.model, 2 if direction == "bidirectional" else 1, GATES[op]
    assert _attr(pruned, "rnn") == 4
    assert _init_shape(pruned, "rnn", 1) == [dirs, gates * 4, IN]  # input features: graph input
    assert _init_shape(pruned, "rnn", 2) == [dirs, gates * 4, 4]
    assert _init_shape(pruned, "rnn", 3) == [dirs, 2 * gates * 4]
    assert _init_shape(pruned, "rnn", 5) == [dirs, BATCH, 4]
    if op == "LSTM":
        assert _init_shape(pruned, "rnn", 6) == [dirs, BATCH, 4]
    if opts.get("peepholes"):
        assert _init_shape(pruned, "rnn", 7) == [dirs, 12]
    for g in result.analysis.frozen:  # nothing else is held back but I/O and directions
        assert set(g.frozen_reasons) <= {
            "graph input",
            "graph output",
            f"{op}: directions are not pruned",
        }, g.frozen_reasons


def test_pruned_rows_are_the_gate_rows_of_the_removed_units():
    model = single_layer("LSTM", "bidirectional")
    result = prune_and_check(model, 0.5)
    (gp,) = [gp for gp in result.plan.groups if gp.units == 8]
    kept = [h for h in range(8) if h not in gp.remove]
    w = onnx.numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "rnn.W"))
    r = onnx.numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "rnn.R"))
    rows = [k * 8 + h for k in range(4) for h in kept]  # gate-major: i, o, f, c
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in result.model.graph.initializer}
    node = next(n for n in result.model.graph.node if n.name == "rnn")
    np.testing.assert_array_equal(inits[node.input[1]], w[:, rows])
    np.testing.assert_array_equal(inits[node.input[2]], r[:, rows][:, :, kept])


def test_recurrent_output_as_graph_output_freezes_the_hidden_units():
    g = G()
    x = g.input("x", [S, BATCH, IN])
    y, _ = recurrent(g, "GRU", x, IN, 8, "rnn", outputs=2)
    analysis = analyze_model(g.model([y]))
    (hidden,) = [grp for grp in analysis.groups if grp.units == 8]
    assert hidden.frozen and "graph output" in hidden.frozen_reasons


def test_weights_not_matching_the_attributes_freeze_with_reason():
    g = G()
    x = g.input("x", [S, BATCH, IN])
    (y,) = recurrent(g, "RNN", x, IN, 8, "rnn", outputs=1)
    (direction,) = [a for a in g.nodes[-1].attribute if a.name == "direction"]
    direction.s = b"bidirectional"  # the weights hold one direction
    analysis = analyze_model(g.model([head(g, y, 8, "head")]))
    (hidden,) = [grp for grp in analysis.groups if grp.units == 8]
    assert hidden.frozen_reasons == [
        "RNN: W (1, 8, 6) / R (1, 8, 8) do not match hidden_size=8 and 2 direction(s)"
    ]


# -- stacks ----------------------------------------------------------------------------------


def test_stacked_lstm_prunes_both_layers_and_the_next_input():
    """LSTM -> Squeeze -> LSTM -> Y_h -> Squeeze -> Gemm, as a 2-layer nn.LSTM classifier."""
    g = G(seed=2)
    x = g.input("x", [S, BATCH, IN])
    (y1,) = recurrent(g, "LSTM", x, IN, 8, "l1", outputs=1)
    y1 = g.op("Squeeze", [y1, g.const("ax1", [1])], "l1.seq")
    _, h2 = recurrent(g, "LSTM", y1, 8, 6, "l2", outputs=2)
    h2 = g.op("Squeeze", [h2, g.const("ax0", [0])], "l2.last")
    out = g.op("Gemm", [h2, _w(g, "fc.w", 3, 6), _w(g, "fc.b", 3)], "fc", transB=1)
    result = prune_and_check(g.model([out]), 0.5)
    assert _hidden_groups(result) == [(6, 3), (8, 4)]
    assert [_attr(result.model, n) for n in ("l1", "l2")] == [4, 3]
    assert _init_shape(result.model, "l2", 1) == [1, 12, 4]  # layer 2 reads 4 features


def test_recurrent_groups_have_their_own_kind_and_ratio():
    """A recurrent layer's hidden units are kind "recurrent" (the LSTM's rule says so), so
    ``--recurrent R`` prunes them alone and ``--mlp`` leaves them whole."""
    model = single_layer("LSTM", "forward")
    kinds = {g.kind for g in analyze_model(model).prunable}
    assert "recurrent" in kinds
    result = prune_and_check(model, 0.0, recurrent=0.5)
    assert _hidden_groups(result) == [(8, 4)]
    assert {gp.kind for gp in result.plan.groups} == {"recurrent"}
    refused_as_nothing_pruned(model, None, match="--mlp 0.5 matches nothing", mlp=0.5)


def _bidirectional_stack(junction: str) -> onnx.ModelProto:
    """Bidirectional LSTM -> [S, B, 2H] -> bidirectional GRU -> MatMul head, the junction
    either per-direction Gathers + Concat or torch's Transpose + Reshape."""
    g = G(seed=3)
    x = g.input("x", [S, BATCH, IN])
    (y1,) = recurrent(g, "LSTM", x, IN, 8, "l1", outputs=1, direction="bidirectional")
    if junction == "concat":
        parts = [g.op("Gather", [y1, g.const(f"d{d}", d)], f"l1.dir{d}", axis=1) for d in (0, 1)]
        seq = g.op("Concat", parts, "l1.seq", axis=2)
    else:
        t = g.op("Transpose", [y1], "l1.t", perm=[0, 2, 1, 3])
        seq = g.op("Reshape", [t, g.const("flat", [0, 0, -1])], "l1.seq")
    (y2,) = recurrent(g, "GRU", seq, 16, 6, "l2", outputs=1, direction="bidirectional")
    return g.model([head(g, y2, 6, "head")])


def test_bidirectional_stack_through_gather_concat():
    result = prune_and_check(_bidirectional_stack("concat"), 0.5)
    assert _hidden_groups(result) == [(6, 3), (8, 4)]
    assert _init_shape(result.model, "l2", 1) == [2, 9, 8]  # 2 x 4 kept units of layer 1


def test_bidirectional_stack_through_transpose_reshape():
    result = prune_and_check(_bidirectional_stack("reshape"), 0.5)
    assert _hidden_groups(result) == [(6, 3), (8, 4)]


def test_is_direction_axis_sees_through_transposes():
    graph = import_graph(_bidirectional_stack("reshape"))
    t = graph.tensors()["l1.t"]
    assert [is_direction_axis(t, ax) for ax in range(4)] == [False, False, True, False]
    y = graph.tensors()["l1.Y"]
    assert [is_direction_axis(y, ax) for ax in range(4)] == [False, True, False, False]
    assert not is_direction_axis(graph.tensors()["l1.seq"], 2)


# -- layout=1 (batch-major): ONNX Runtime cannot run it ------------------------------------


class _ReferenceSession:
    """The part of an ONNX Runtime session parity uses, run by onnx's reference evaluator."""

    def __init__(self, model: onnx.ModelProto, *_, **__):
        from onnx.reference import ReferenceEvaluator

        self._eval = ReferenceEvaluator(model)
        self._graph = model.graph

    def _args(self, values):
        return [
            SimpleNamespace(
                name=v.name,
                shape=[d.dim_value or None for d in v.type.tensor_type.shape.dim],
                type="tensor(float)",
            )
            for v in values
        ]

    def get_inputs(self):
        return self._args(self._graph.input)

    def get_outputs(self):
        return self._args(self._graph.output)

    def run(self, names, feed, *_):
        return self._eval.run(names, feed)


@pytest.mark.parametrize("op", sorted(GATES))
def test_batch_major_layout_prunes_exactly(op, monkeypatch):
    g = G(seed=4)
    x = g.input("x", [BATCH, S, IN])
    outs = recurrent(g, op, x, IN, 8, "rnn", direction="bidirectional", layout=1)
    model = g.model([head(g, t, 8, f"head{k}") for k, t in enumerate(outs)])
    with pytest.raises(Exception, match="layout == 1"):
        ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    monkeypatch.setattr(validate, "session", _ReferenceSession)  # what compare() runs
    result = prune_model(model, PruneOptions(ratio=0.5))
    onnx.checker.check_model(result.model, full_check=True)
    assert result.parity.status == "exact", result.parity
    assert result.parity.n_inputs == 3 and len(result.parity.per_output) == len(outs)
    assert assert_structure(result) > 0
    assert _attr(result.model, "rnn") == 4
    assert _init_shape(result.model, "rnn", 5) == [BATCH, 2, 4]


# -- MACs --------------------------------------------------------------------------------


def test_macs_terms_scale_with_hidden_and_input():
    view = NodeView(
        "LSTM",
        {"hidden_size": 8, "direction": "bidirectional"},
        [(S, BATCH, IN), (2, 32, IN), (2, 32, 8)],
        [(S, 2, BATCH, 8)],
    )
    terms = Recurrent().macs(view)
    assert [t.macs for t in terms] == [S * BATCH * 2 * 32 * IN, S * BATCH * 2 * 32 * 8]
    assert [t.scales_with for t in terms] == [
        (("in", 1, 1), ("in", 1, 2)),
        (("in", 2, 1), ("in", 2, 2)),
    ]


@pytest.mark.parametrize("what", ["macs", "params"])
def test_cost_model_prices_the_pruned_stack(what):
    """The plan's cost, predicted from kept fractions, is what the pruned model reports."""
    model = _bidirectional_stack("concat")
    cost = CostModel(analyze_model(model))
    result = prune_and_check(model, 0.5)
    predicted = cost.cost(removed_labels(result.plan, cost.analysis), what)
    assert predicted == pytest.approx(result.after[what], abs=0.5)
    assert cost.cost(np.zeros(0, np.int64), what) == pytest.approx(result.before[what], abs=0.5)


# -- torch exports ---------------------------------------------------------------------------

EXPORTERS = ["torchscript", "dynamo"]


def _torch():
    """torch (the test is skipped without it), seeded: modules are built right after."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    return torch


def _export(module, inputs, tmp_path, exporter) -> onnx.ModelProto:
    from exporters.torch_export import export_torch

    return onnx.load(
        export_torch(module.eval(), inputs, tmp_path / f"{exporter}.onnx", exporter=exporter)
    )


def _ops(model: onnx.ModelProto) -> set[str]:
    return {n.op_type for n in model.graph.node}


def _hidden_sizes(model: onnx.ModelProto) -> list[int]:
    return [
        helper.get_attribute_value(a)
        for n in model.graph.node
        if n.op_type in GATES
        for a in n.attribute
        if a.name == "hidden_size"
    ]


def _tagger(cell: str, layers: int = 1, bidirectional: bool = False):
    nn = _torch().nn

    class Tagger(nn.Module):
        """Token ids [S, B] -> embedding -> recurrent stack -> per-step Linear."""

        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(20, 8)
            self.rnn = getattr(nn, cell)(8, 12, num_layers=layers, bidirectional=bidirectional)
            self.head = nn.Linear(12 * (2 if bidirectional else 1), 5)

        def forward(self, ids):
            y, _ = self.rnn(self.emb(ids))
            return self.head(y)

    return Tagger()


def _ids():
    return (_torch().randint(0, 20, (7, 3)),)


@pytest.mark.slow
@pytest.mark.parametrize("exporter", EXPORTERS)
def test_torch_lstm_tagger(tmp_path, exporter):
    model = _export(_tagger("LSTM"), _ids(), tmp_path, exporter)
    assert "LSTM" in _ops(model)
    result = prune_and_check(model, 0.5)
    assert _hidden_groups(result) == [(12, 6)]
    assert _hidden_sizes(result.model) == [6]


@pytest.mark.slow
@pytest.mark.parametrize("exporter", EXPORTERS)
def test_torch_gru_classifier_reads_the_last_state(tmp_path, exporter):
    """``head(h_n[-1])`` of a 2-layer GRU: h_n concatenates both layers' Y_h, which couples
    their hidden axes into one group (same units removed in both layers)."""
    torch = _torch()
    nn = torch.nn

    class Classifier(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = nn.GRU(6, 10, num_layers=2)
            self.head = nn.Linear(10, 3)

        def forward(self, x):
            _, h = self.rnn(x)
            return self.head(h[-1])

    model = _export(Classifier(), (torch.randn(5, 2, 6),), tmp_path, exporter)
    assert [n.op_type for n in model.graph.node].count("GRU") == 2
    result = prune_and_check(model, 0.5)
    assert _hidden_groups(result) == [(10, 5)]
    assert _hidden_sizes(result.model) == [5, 5]


@pytest.mark.slow
@pytest.mark.parametrize("exporter", EXPORTERS)
def test_torch_crnn_prunes_conv_channels_and_lstm(tmp_path, exporter):
    torch = _torch()
    nn = torch.nn

    class Crnn(nn.Module):
        """Conv features [B, C, H, W] -> sequence over W of C*H features -> LSTM -> Linear."""

        def __init__(self):
            super().__init__()
            self.conv = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
            self.rnn = nn.LSTM(32, 16)
            self.head = nn.Linear(16, 5)

        def forward(self, x):
            y, _ = self.rnn(self.conv(x).permute(3, 0, 1, 2).flatten(2))
            return self.head(y)

    model = _export(Crnn(), (torch.randn(2, 1, 8, 12),), tmp_path, exporter)
    result = prune_and_check(model, 0.5)
    assert sorted((gp.units, gp.units - len(gp.remove)) for gp in result.plan.groups) == [
        (8, 4),  # conv channels
        (16, 8),  # LSTM hidden units
    ]
    assert _hidden_sizes(result.model) == [8]
    lstm = next(n for n in result.model.graph.node if n.op_type == "LSTM")
    w = next(t for t in result.model.graph.initializer if t.name == lstm.input[1])
    assert list(w.dims) == [1, 32, 16]  # 4 channels x 4 rows of features each


@pytest.mark.slow
@pytest.mark.parametrize("exporter", EXPORTERS)
def test_torch_rnn(tmp_path, exporter):
    """torchscript emits the RNN op; dynamo unrolls nn.RNN into MatMul/Add/Tanh per step,
    which the linear rules prune (one group per layer and direction)."""
    model = _export(_tagger("RNN", layers=2), _ids(), tmp_path, exporter)
    result = prune_and_check(model, 0.5)
    if exporter == "torchscript":
        assert [n.op_type for n in model.graph.node].count("RNN") == 2
        assert _hidden_groups(result) == [(12, 6), (12, 6)]
        assert _hidden_sizes(result.model) == [6, 6]
    else:
        assert "RNN" not in _ops(model) and {"MatMul", "Tanh"} <= _ops(model)
        pruned = sorted(gp.units - len(gp.remove) for gp in result.plan.groups if gp.units == 12)
        assert pruned == [6, 6]


@pytest.mark.slow
@pytest.mark.parametrize("exporter", EXPORTERS)
def test_torch_bidirectional_two_layer_lstm(tmp_path, exporter):
    model = _export(_tagger("LSTM", layers=2, bidirectional=True), _ids(), tmp_path, exporter)
    assert {"Transpose", "Reshape"} <= _ops(model)
    result = prune_and_check(model, 0.5)
    assert _hidden_groups(result) == [(12, 6), (12, 6)]


@pytest.mark.parametrize("op", sorted(GATES))
def test_target_macs_sees_the_recurrent_layers(op):
    """--target-macs prices the recurrent terms (they are most of this model's MACs), and
    the pruned model's reported MACs land within 2% of the target."""
    model = single_layer(op, "bidirectional", hidden=64)
    result = prune_and_check(model, 0.5, target_macs=0.5)
    kept = result.after["macs"] / result.before["macs"]
    assert abs(kept - 0.5) <= 0.02 * 0.5, kept
    assert _hidden_groups(result) and _hidden_groups(result)[0][1] < 64
