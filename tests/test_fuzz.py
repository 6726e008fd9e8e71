"""Random-graph fuzzing of ``prune_model`` (graphs from tests/fuzz_graphs.py).

The oracle, per seed (ratio 0.25 or 0.5, drawn by the seed): EITHER the prune returns a
model whose parity is "exact", that passes the full checker and runs in ONNX Runtime, whose
pruned dims have the planned sizes, whose outputs keep their shapes, and whose params or
MACs went down if the plan removed any unit; OR it refuses cleanly: a ``GraphpruneError``
that is not a bug class (PassFailed 1, RewriteError 5, ParityError 6) with a one-line
message. Anything else fails, with the seed and the graph's description.

Reproduce one seed: ``pytest tests/test_fuzz.py -p no:xdist -k 'seed-123'`` (the slow set:
add ``-m slow``), or ``check_seed(123)`` from Python.
"""

from __future__ import annotations

import traceback

import numpy as np
import onnx
import pytest
from fuzz_graphs import describe, random_model

from graphprune.errors import GraphpruneError
from graphprune.prune import PruneOptions, prune_model
from pruning_checks import assert_structure, assert_valid, run

FAST_SEEDS = range(40)
SLOW_SEEDS = range(500)
RATIOS = (0.25, 0.5)
BUG_EXIT_CODES = {1, 5, 6}  # PassFailed / internal, RewriteError, ParityError


def ratio_for(seed: int) -> float:
    return float(np.random.default_rng([seed, 11]).choice(RATIOS))


def _dims(vi) -> list:
    return [d.dim_value for d in vi.type.tensor_type.shape.dim]


def check_seed(seed: int) -> str:
    """Run the oracle on one seed; return "pruned", "unchanged" or "refused: <class>".
    Raises AssertionError (seed, ratio, description, cause) on a failure."""
    return check_case(random_model(seed), ratio_for(seed), f"seed {seed}")


def check_case(model: onnx.ModelProto, ratio: float, label: str = "") -> str:
    """The oracle on one model (``check_seed`` without the drawing; minimisers use it)."""
    where = f"{label} ratio {ratio}: {describe(model)}"
    try:
        result = prune_model(model, PruneOptions(ratio=ratio))
    except GraphpruneError as e:
        msg = str(e)
        bad = e.exit_code in BUG_EXIT_CODES or "\n" in msg.strip()
        assert not bad, f"{where}\n{type(e).__name__} (exit {e.exit_code}): {msg}"
        return f"refused: {type(e).__name__}"
    except Exception as e:
        tb = "".join(traceback.format_exception(e)[-6:])
        raise AssertionError(f"{where}\nunexpected {type(e).__name__}: {e}\n{tb}") from e
    try:
        _check_result(model, result)
    except AssertionError as e:
        raise AssertionError(f"{where}\n{e}") from None
    removed = sum(len(gp.remove) for gp in result.plan.groups)
    return "pruned" if removed else "unchanged"


def _check_result(model: onnx.ModelProto, result) -> None:
    assert result.parity.status == "exact", f"parity {result.parity.status}: " + str(
        result.parity.per_output
    )
    assert_valid(result.model, model)
    feed = {
        "input": np.random.default_rng(1)
        .standard_normal(_dims(model.graph.input[0]))
        .astype(np.float32)
    }
    outs = run(result.model, feed)
    want = {o.name: _dims(o) for o in model.graph.output}
    for vi, y in zip(result.model.graph.output, outs, strict=True):
        assert list(y.shape) == want[vi.name], f"output {vi.name}: {y.shape} != {want[vi.name]}"
    removed = sum(len(gp.remove) for gp in result.plan.groups)
    if removed:
        assert assert_structure(result) > 0, "no pruned dim found in the output model"
        b, a = result.before, result.after
        assert a["params"] < b["params"] or a["macs"] < b["macs"], (
            f"plan removed {removed} units, but params {b['params']}->{a['params']}, "
            f"macs {b['macs']}->{a['macs']}"
        )


def _check(seed: int) -> None:
    check_seed(seed)


@pytest.mark.parametrize("seed", FAST_SEEDS, ids=lambda s: f"seed-{s}")
def test_fuzz(seed):
    _check(seed)


@pytest.mark.slow
@pytest.mark.parametrize("seed", SLOW_SEEDS, ids=lambda s: f"seed-{s}")
def test_fuzz_slow(seed):
    _check(seed)
