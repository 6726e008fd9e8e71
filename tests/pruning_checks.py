"""The three checks every pruning test makes: structure changed as planned, the model passes
the checker and loads in ONNX Runtime, and its outputs match the masked original."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from graphprune import weights
from graphprune.errors import NothingPruned
from graphprune.graph import checker, infer_shapes
from graphprune.passes.removal import Removal
from graphprune.plan import removed_labels
from graphprune.prune import PruneOptions, PruneResult, prune_model


def _shapes(model: onnx.ModelProto) -> dict[str, list]:
    """Shapes as shape inference sees them in the pruned file (a copy: the file itself
    carries no annotations unless its input did)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    model = infer_shapes(copy)
    out = {}
    for vi in list(model.graph.value_info) + list(model.graph.output):
        out[vi.name] = _dims(vi)
    for t in model.graph.initializer:
        out[t.name] = list(t.dims)
    return out


def assert_structure(result: PruneResult) -> int:
    """Every activation dim of every pruned group has exactly the planned size, and every
    activation of a dropped sub-block is gone; returns the number of dims checked."""
    analysis = result.analysis
    removal = Removal(analysis, removed_labels(result.plan, analysis))
    shapes = _shapes(result.model)
    present = {t for n in result.model.graph.node for t in list(n.input) + list(n.output)}
    checked = 0
    for d in removal.dims_touched():
        if d.kind == "act" and len(removal.of_dim(d)) == d.size:  # a dropped block
            assert d.tensor not in present, f"{d.tensor} survived its block being dropped"
            checked += 1
            continue
        if d.kind != "act" or d.tensor not in shapes:
            continue
        expect = d.size - len(removal.of_dim(d))
        got = shapes[d.tensor][d.axis]
        if got is None:  # ONNX shape inference could not size it (symbolic Reshape)
            continue
        assert got == expect, f"{d.label()}: size {got}, planned {expect}"
        checked += 1
    return checked


def assert_valid(model: onnx.ModelProto, original: onnx.ModelProto | None = None) -> None:
    """The checker passes (held to the input's standard for ORT's own default-domain ops,
    see graphprune.graph.check_model) and ONNX Runtime loads the model."""
    try:
        checker(model, full_check=True)  # a model with weights on disk: as a file
    except onnx.checker.ValidationError as e:
        op = (
            str(e).split("No Op registered for ")[-1].split()[0]
            if "No Op registered" in str(e)
            else None
        )
        assert original is not None and op is not None, e
        assert any(n.op_type == op for n in original.graph.node), e
        with pytest.raises(onnx.checker.ValidationError):
            onnx.checker.check_model(original, full_check=True)
    _session(model)


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    src = weights.session_source(model, opts)  # weights on disk read from their folder
    return ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])


def prune_and_check(model, ratio: float = 0.5, **kw) -> PruneResult:
    result = prune_model(model, PruneOptions(ratio=ratio, **kw))
    assert_valid(result.model, model if isinstance(model, onnx.ModelProto) else None)
    assert result.parity.status == "exact", result.parity.per_output
    assert result.plan.groups, "nothing was pruned"
    assert assert_structure(result) > 0
    assert result.after["params"] < result.before["params"]
    assert result.after["macs"] < result.before["macs"]
    if isinstance(model, onnx.ModelProto):  # outputs keep every known dim
        before = {o.name: _dims(o) for o in model.graph.output}
        for o in result.model.graph.output:
            after = _dims(o)
            assert len(after) == len(before[o.name])
            assert all(b is None or a == b for a, b in zip(after, before[o.name], strict=True))
    return result


def refused_as_nothing_pruned(model, ratio: float = 0.5, match: str = "", **kw) -> NothingPruned:
    """A prune that would remove nothing is refused (exit 8) with its reason, not run."""
    with pytest.raises(NothingPruned, match=match) as e:
        prune_model(model, PruneOptions(ratio=ratio, **kw))
    return e.value


def _dims(vi) -> list:
    return [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]


def run(model: onnx.ModelProto, feed: dict) -> list[np.ndarray]:
    return _session(model).run(None, feed)
