"""A sweep's outputs: the text table, results.csv / results.json rows, the plot."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from .grid import _flag

#: the measured fields of a row, in the order CSV lists them (after id, status, the axes)
FIELDS = (
    "params",
    "params_kept",
    "macs",
    "macs_kept",
    "bytes",
    "parity",
    "accuracy_before",
    "accuracy_after",
    "mean_cosine",
    "quality",
    "latency_ms",
    "speedup",
    "prune_s",
    "pareto_latency",
    "pareto_macs",
    "exit_code",
    "error",
    "model",
)


def _csv_text(rows: list[dict], axes: list[str]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["id", "status", *axes, *FIELDS])
    for r in rows:
        opts = r.get("options", {})
        w.writerow(
            [
                r["id"],
                r["status"],
                *(_cell(opts.get(a)) for a in axes),
                *(_cell(r.get(f)) for f in FIELDS),
            ]
        )
    return buf.getvalue()


def _cell(v) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, list | dict):
        return json.dumps(v)
    return str(v)


def _row_out(r: dict) -> dict:
    """A row with every key, in a stable order."""
    out = {"id": r["id"], "status": r["status"], "options": r.get("options", {})}
    for f in FIELDS:
        out[f] = r.get(f)
    out["latency_by_threads"] = r.get("latency_by", {})
    return out


def format_table(rows: list[dict], axes: list[str]) -> str:
    head = [
        "id",
        *[_flag(a).lstrip("-") for a in axes],
        "params",
        "macs",
        "ms",
        "speedup",
        "quality",
        "front",
        "status",
    ]
    body = []
    for r in rows:
        opts = r.get("options", {})
        front = ("L" if r.get("pareto_latency") else "") + ("M" if r.get("pareto_macs") else "")
        body.append(
            [
                r["id"],
                *(_cell(opts.get(a)) or "-" for a in axes),
                _fmt(r.get("params_kept"), "{:.1%}"),
                _fmt(r.get("macs_kept"), "{:.1%}"),
                _fmt(r.get("latency_ms"), "{:.3f}"),
                _fmt(r.get("speedup"), "{:.2f}x"),
                _fmt(r.get("quality"), "{:.4f}"),
                front or "-",
                r["status"] if r["status"] == "ok" else f"failed (exit {r.get('exit_code')})",
            ]
        )
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body, strict=True)]
    lines = [
        "  ".join(f"{c:<{w}}" for c, w in zip(line, widths, strict=True)).rstrip()
        for line in (head, *body)
    ]
    return "\n".join(lines)


def _fmt(v, spec: str) -> str:
    return "-" if v is None else spec.format(v)


def _original_row(model_path: Path, first_ok: dict | None, eval_given: bool) -> dict:
    import onnx

    row = {
        "id": "original",
        "status": "ok",
        "options": {},
        "exit_code": 0,
        "error": "",
        "params_kept": 1.0,
        "macs_kept": 1.0,
        "parity": "-",
        "model": str(model_path),
        "bytes": model_path.stat().st_size,
        "prune_s": 0.0,
    }
    if first_ok is not None:
        row.update(params=first_ok["before"]["params"], macs=first_ok["before"]["macs"])
        row["accuracy_before"] = first_ok.get("accuracy_before")
        row["accuracy_after"] = first_ok.get("accuracy_before")
        row["mean_cosine"] = 1.0 if first_ok.get("mean_cosine") is not None else None
        row["quality"] = 1.0 if first_ok.get("quality") is not None else None
    else:  # nothing pruned: count it here
        from ..graph import infer_shapes
        from ..metrics import summarize

        model = onnx.load(str(model_path))
        infer_shapes(model)
        s = summarize(model, with_bytes=False)
        row.update(params=s["params"], macs=s["macs"], quality=1.0 if eval_given else None)
    return row


class _Plotted:
    def __init__(self, ok: bool, reason: str = ""):
        self.ok, self.reason = ok, reason

    def __bool__(self):
        return self.ok


def _add_plot(outs, out: Path, rows: list[dict], title: str) -> _Plotted:
    if not any(r.get("quality") is not None for r in rows):
        return _Plotted(False, "no quality without --eval")
    try:
        from ..plot import render
    except ImportError as e:
        return _Plotted(False, f"{e}; pip install graphprune[plot]")
    try:
        fig = render(rows, title)
    except ImportError as e:
        return _Plotted(False, f"matplotlib is not installed ({e}); pip install graphprune[plot]")
    try:
        outs.add(out / "sweep.png", lambda tmp: fig.savefig(tmp, format="png", dpi=150))
        outs.add(out / "sweep.svg", lambda tmp: fig.savefig(tmp, format="svg"))
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)
    return _Plotted(True)
