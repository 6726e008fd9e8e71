"""Prune every foreign model with the CLI and print one row each:

    python -m models.check_foreign [NAME ...] [--ratio 0.3] [--timeout 600] [--keep DIR]

Each model is fetched (``models/foreign.py``), then pruned by
``python -m graphprune.cli prune MODEL -o OUT --ratio R --json REPORT`` in a subprocess,
with the manifest's ``--input-shape`` hint when the CLI has that flag. A row shows the exit
code, the seconds, MACs before -> after with the reduction, the params reduction, the
parity status, the verdict of tests/test_foreign.py's oracle (less its checker and ONNX
Runtime load; plus: the weights the file holds, subgraphs included, must not grow) and
the last stderr line of a failed run. Exits 1 when any verdict is FAIL.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from models import foreign

ROOT = Path(__file__).resolve().parents[1]
VENV_PYTHON = ROOT / ".venv" / "bin" / "python"
TIMEOUT_S = 600
REFUSALS = {3, 7, 8}  # the input does not load / needs real inputs / nothing to prune


def python() -> str:
    return str(VENV_PYTHON) if VENV_PYTHON.exists() else sys.executable


def metrics(report: dict) -> dict[str, float | None]:
    """MACs and params before/after from a JSON report. Both layouts are read:
    ``{"macs": {"before", "after"}, "params": {...}}`` and
    ``{"before": {"macs", "params"}, "after": {...}}``."""
    out: dict[str, float | None] = {}
    for key in ("macs", "params"):
        for when in ("before", "after"):
            value = None
            if isinstance(report.get(key), dict):
                value = report[key].get(when)
            elif isinstance(report.get(when), dict):
                value = report[when].get(key)
            out[f"{key}_{when}"] = value
    return out


def parity_status(report: dict) -> str | None:
    parity = report.get("parity")
    return parity.get("status") if isinstance(parity, dict) else parity


def _graph_weights(graph) -> int:
    """Elements of the initializers and Constant tensors of ``graph`` and of every
    subgraph in it (the report's params may count only the main graph)."""
    total = sum(int(np.prod(t.dims)) for t in graph.initializer)
    for node in graph.node:
        for attr in node.attribute:
            if node.op_type == "Constant" and attr.type == onnx.AttributeProto.TENSOR:
                total += int(np.prod(attr.t.dims))
            subgraphs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else attr.graphs
            total += sum(_graph_weights(g) for g in subgraphs)
    return total


def weights(path: Path) -> int:
    """Weight elements a model file really holds, subgraphs included."""
    return _graph_weights(onnx.load(str(path)).graph)


@dataclass
class Run:
    name: str
    rc: int | None  # None: not run (fetch failed) or timed out
    seconds: float
    stdout: str
    stderr: str
    report: dict | None
    output_exists: bool
    note: str = ""
    weights: tuple[int, int] | None = None  # (input, output), subgraphs included

    @property
    def last_stderr(self) -> str:
        lines = [ln.strip() for ln in self.stderr.splitlines() if ln.strip()]
        return lines[-1] if lines else ""


def run_one(
    name: str,
    workdir: Path,
    ratio: float = 0.3,
    timeout: float = TIMEOUT_S,
    help_text: str | None = None,
    python_exe: str | None = None,
) -> Run:
    """Fetch ``name`` and prune it with the CLI into ``workdir``. Raises
    ``foreign.DownloadError`` when the model cannot be downloaded."""
    exe = python_exe or python()
    entry = foreign.entry(name)
    model = foreign.fetch(name)
    out, report = workdir / f"{name}.pruned.onnx", workdir / f"{name}.json"
    if help_text is None:
        help_text = foreign.prune_help(exe)
    cmd = foreign.prune_command(entry, model, out, report, ratio, help_text, exe)
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
        rc, stdout, stderr, note = proc.returncode, proc.stdout, proc.stderr, ""
    except subprocess.TimeoutExpired as e:
        rc, note = None, f"timed out after {timeout:.0f} s"
        stdout = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        stderr = e.stderr.decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
    seconds = time.perf_counter() - start
    rep = None
    if report.exists():
        try:
            rep = json.loads(report.read_text())
        except ValueError:
            note = note or "report is not JSON"
    w = (weights(model), weights(out)) if rc == 0 and out.exists() else None
    return Run(name, rc, seconds, stdout, stderr, rep, out.exists(), note, w)


def verdict(r: Run) -> str:
    """The cheap half of tests/test_foreign.py's oracle (no checker, no ORT load):
    "pruned", "refused" (clean), "skip" (not downloaded), or "FAIL ..."."""
    if r.note.startswith("fetch"):
        return "skip"
    if r.rc is None:
        return "FAIL timeout"
    if "Traceback" in r.stderr:
        return "FAIL traceback"
    if r.rc in REFUSALS:
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        if len(lines) != 1 or not lines[0].startswith("graphprune: error:"):
            return f"FAIL refusal with {len(lines)} stderr lines"
        return "FAIL output left" if r.output_exists else "refused"
    if r.rc != 0:
        return f"FAIL rc {r.rc}"
    if not r.output_exists or not r.report:
        return "FAIL no output" if not r.output_exists else "FAIL no report"
    if parity_status(r.report) not in ("exact", "approximate"):
        return f"FAIL parity {parity_status(r.report)}"
    m = metrics(r.report)
    if any(v is not None and v < 0 for v in m.values()):
        return "FAIL negative count"
    fewer = any(
        None not in (m[f"{k}_before"], m[f"{k}_after"]) and m[f"{k}_after"] < m[f"{k}_before"]
        for k in ("macs", "params")
    )
    if not fewer:
        return "FAIL nothing smaller"
    if r.weights and r.weights[1] > r.weights[0]:
        return f"FAIL weights grew {r.weights[0]}->{r.weights[1]} (subgraphs)"
    return "pruned"


def _si(n: float | None) -> str:
    if n is None:
        return "?"
    sign, n = ("-" if n < 0 else ""), abs(n)
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{sign}{n / scale:.3g}{unit}"
    return f"{sign}{n:.0f}"


def _reduction(before, after) -> str:
    if not before or after is None:
        return "?"
    return f"{100 * (before - after) / before:.1f}%"


def row(r: Run) -> str:
    m = metrics(r.report or {})
    macs = f"{_si(m['macs_before'])}->{_si(m['macs_after'])}" if r.report else "-"
    red = _reduction(m["macs_before"], m["macs_after"]) if r.report else "-"
    pred = _reduction(m["params_before"], m["params_after"]) if r.report else "-"
    parity = (parity_status(r.report) if r.report else None) or "-"
    rc = "-" if r.rc is None else str(r.rc)
    tail = r.note or ("" if r.rc == 0 else r.last_stderr)
    if len(tail) > 160:
        tail = tail[:157] + "..."
    cells = (r.name, rc, f"{r.seconds:.1f}", macs, red, pred, parity, verdict(r), tail)
    return "| " + " | ".join(cells) + " |"


HEADER = (
    "| model | rc | s | MACs before->after | MACs red. | params red. | parity | verdict | note |\n"
    "|---|---|---|---|---|---|---|---|---|"
)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("names", nargs="*", help="models to run (default: the whole manifest)")
    p.add_argument("--ratio", type=float, default=0.3)
    p.add_argument("--timeout", type=float, default=TIMEOUT_S)
    p.add_argument("--keep", metavar="DIR", help="write outputs and reports here")
    args = p.parse_args(argv)
    names = args.names or foreign.names()
    for n in names:
        foreign.entry(n)  # unknown names fail before anything runs
    help_text = foreign.prune_help(python())
    shapes = "--input-shape" in help_text
    print(
        f"graphprune prune --ratio {args.ratio}; --input-shape {'passed' if shapes else 'absent'}"
    )
    print(HEADER, flush=True)
    counts: dict[str, int] = {}
    verdicts: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(args.keep) if args.keep else Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        for name in names:
            try:
                r = run_one(name, workdir, args.ratio, args.timeout, help_text)
            except foreign.FetchError as e:
                r = Run(name, None, 0.0, "", "", None, False, f"fetch failed: {e}")
            key = "fetch" if r.note.startswith("fetch") else str(r.rc)
            counts[key] = counts.get(key, 0) + 1
            v = verdict(r).split()[0]
            verdicts[v] = verdicts.get(v, 0) + 1
            print(row(r), flush=True)
    print("exit codes: " + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())))
    print("verdicts: " + ", ".join(f"{k}: {v}" for k, v in sorted(verdicts.items())))
    return 1 if verdicts.get("FAIL") else 0


if __name__ == "__main__":
    sys.exit(main())
