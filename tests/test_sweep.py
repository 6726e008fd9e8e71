"""``graphprune sweep``: the grid, its outputs, Pareto marks, resume, --jobs, --pick."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import onnx
import onnxruntime as ort
import pytest

import graphprune.progress
import graphprune.prune
from graphprune.cli import main
from graphprune.config import load_config
from graphprune.errors import NothingPruned, PlanError
from graphprune.options import PruneOptions
from graphprune.sweep.pick import pick
from graphprune.sweep.state import STATE

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "models" / "digits" / "digits_cnn.onnx"
CALIB = ROOT / "models" / "digits" / "digits_calib.npz"
TEST = ROOT / "models" / "digits" / "digits_test.npz"
GRID = ["--ratio", "0.1,0.25", "--criterion", "l2,l1"]
DATA = ["--calib", str(CALIB), "--eval", str(TEST), "--bench-time", "0.05"]
MEASURED = ("params", "params_kept", "macs", "macs_kept", "bytes", "parity", "quality")
MEASURED += ("accuracy_before", "accuracy_after", "mean_cosine", "latency_ms", "speedup")


def run(out, *args, model=DIGITS) -> tuple[int, str, str]:
    """The sweep through the CLI."""
    so, se = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(so), contextlib.redirect_stderr(se):
        code = main(["sweep", str(model), "--out", str(out), *args])
    return code, so.getvalue(), se.getvalue()


def results(out) -> dict:
    return json.loads((Path(out) / "results.json").read_text())


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """One 2x2 sweep with a pick, shared (tests that change it work on a copy)."""
    out = tmp_path_factory.mktemp("sweep") / "s"
    code, stdout, stderr = run(out, *GRID, *DATA, "--pick", "quality>=0.9")
    assert code == 0, stderr
    return out, stdout


def _copy(base_dir, tmp_path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(base_dir, dst)
    state = (dst / STATE).read_text().replace(str(base_dir), str(dst))
    (dst / STATE).write_text(state)  # the rows name their models by path
    return dst


def test_grid_writes_results_with_measured_rows(base):
    out, stdout = base
    for name in ("results.csv", "results.json", "sweep.png", "sweep.svg", "pick.onnx"):
        assert (out / name).is_file(), name
    rep = results(out)
    rows = rep["rows"]
    assert [r["id"] for r in rows][0] == "original"
    assert len(rows) == 5 and all(r["status"] == "ok" for r in rows)
    grid = {(r["options"]["ratio"], r["options"]["criterion"]) for r in rows[1:]}
    assert grid == {(0.1, "l2"), (0.1, "l1"), (0.25, "l2"), (0.25, "l1")}
    assert rep["options"]["axes"] == {"ratio": [0.1, 0.25], "criterion": ["l2", "l1"]}
    orig = rows[0]
    assert orig["quality"] == 1.0 and orig["macs_kept"] == 1.0 and orig["latency_ms"] > 0
    for r in rows[1:]:
        for f in MEASURED:
            assert r[f] is not None, (r["id"], f)
        assert r["params"] < orig["params"] and 0 < r["macs_kept"] < 1
        assert r["quality"] == pytest.approx(r["accuracy_after"] / r["accuracy_before"], 1e-5)
        assert r["prune_s"] > 0 and r["parity"] == "exact"
        assert Path(r["model"]).is_file()
        ort.InferenceSession(r["model"], providers=["CPUExecutionProvider"])
    with (out / "results.csv").open() as f:
        table = list(csv.DictReader(f))
    assert [t["id"] for t in table] == [r["id"] for r in rows]
    assert {"ratio", "criterion", "latency_ms", "pareto_latency", "pareto_macs"} <= set(table[0])
    assert all(float(t["latency_ms"]) > 0 for t in table)
    assert "4 configurations: 4 run, 0 reused, 0 failed" in stdout
    assert stdout.splitlines()[0].split()[:3] == ["id", "ratio", "criterion"]


@pytest.mark.parametrize("cost", ["latency_ms", "macs_kept"])
def test_pareto_marks_are_the_non_dominated_rows(base, cost):
    rows = results(base[0])["rows"]
    mark = {"latency_ms": "pareto_latency", "macs_kept": "pareto_macs"}[cost]

    def dominated(r):
        return any(
            o[cost] <= r[cost]
            and o["quality"] >= r["quality"]
            and (o[cost] < r[cost] or o["quality"] > r["quality"])
            for o in rows
        )

    for r in rows:
        assert r[mark] is (not dominated(r)), (r["id"], r[cost], r["quality"])
    ids = results(base[0])["pareto"]["latency" if cost == "latency_ms" else "macs"]
    assert ids == [r["id"] for r in rows if r[mark]] and ids


def test_plot_is_a_real_png_and_svg(base):
    import matplotlib.image as mpimg

    img = mpimg.imread(base[0] / "sweep.png")
    h, w = img.shape[:2]
    assert w > 800 and h > 300 and img.shape[2] in (3, 4)
    assert img.std() > 0.01  # not blank
    root = ET.parse(base[0] / "sweep.svg").getroot()
    assert root.tag.endswith("svg")
    assert "digits_cnn.onnx" in (base[0] / "sweep.svg").read_text()


def test_plot_draws_named_series_as_lines():
    """A benchmark's curves (rows with a "series") are one labelled line each, in order of
    x, on both panels, and the latency axis takes the caller's label."""
    from graphprune.plot import render

    rows = [{"id": "original", "status": "ok", "quality": 1.0, "latency_ms": 1.0, "macs_kept": 1.0}]
    for k, (series, q, lat) in enumerate(
        [("a", 0.9, 0.8), ("a", 0.6, 0.4), ("b", 0.7, 0.5), ("a", 0.8, 0.6)]
    ):
        rows.append(
            {"id": f"p{k}", "status": "ok", "series": series, "quality": q,
             "latency_ms": lat, "macs_kept": lat}
        )  # fmt: skip
    fig = render(rows, "curve", latency_label="latency (fraction)")
    try:
        for ax in fig.axes:
            lines = {ln.get_label(): ln for ln in ax.get_lines()}
            assert set(lines) == {"a", "b"}
            assert list(lines["a"].get_xdata()) == [0.4, 0.6, 0.8]
            assert list(lines["a"].get_ydata()) == [0.6, 0.8, 0.9]
        assert fig.axes[0].get_xlabel() == "latency (fraction)"
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)


def test_rerun_reuses_every_row(base, tmp_path, monkeypatch):
    out = _copy(base[0], tmp_path)

    def boom(*a, **k):
        raise AssertionError("prune_model called on a finished configuration")

    monkeypatch.setattr(graphprune.prune, "prune_model", boom)
    code, stdout, stderr = run(out, *GRID, *DATA)
    assert code == 0, stderr
    assert "0 run, 4 reused" in stdout
    before = {r["id"]: r for r in results(base[0])["rows"]}
    for r in results(out)["rows"]:
        for f in ("options", "params", "macs", "quality"):
            assert r[f] == before[r["id"]][f]


def test_half_finished_state_resumes_only_the_missing(base, tmp_path, monkeypatch):
    out = _copy(base[0], tmp_path)
    lines = (out / STATE).read_text().splitlines()
    (out / STATE).write_text("\n".join(lines[:2]) + "\n" + lines[2][:40])  # torn line
    calls = []
    real = graphprune.prune.prune_model

    def counting(model, options=None, plan=None):
        calls.append((options.ratio, options.criterion))
        return real(model, options, plan)

    monkeypatch.setattr(graphprune.prune, "prune_model", counting)
    code, stdout, stderr = run(out, *GRID, *DATA)
    assert code == 0, stderr
    assert "2 run, 2 reused" in stdout
    assert len(calls) == 2
    rows = results(out)["rows"]
    assert len(rows) == 5 and all(r["status"] == "ok" for r in rows)
    assert len([ln for ln in (out / STATE).read_text().splitlines() if ln]) == 5


def test_jobs_2_gives_the_same_rows(base, tmp_path, monkeypatch):
    def in_parent(*a, **k):  # spawned workers import the real one
        raise AssertionError("--jobs 2 pruned in the parent process")

    monkeypatch.setattr(graphprune.prune, "prune_model", in_parent)
    code, stdout, stderr = run(tmp_path / "j2", *GRID, *DATA, "--jobs", "2")
    assert code == 0, stderr
    one = {r["id"]: r for r in results(base[0])["rows"]}
    two = {r["id"]: r for r in results(tmp_path / "j2")["rows"]}
    assert one.keys() == two.keys()
    for cid, r in two.items():
        for f in ("options", "params", "macs", "macs_kept", "quality", "parity"):
            assert r[f] == one[cid][f], (cid, f)


def test_pick_writes_a_loadable_model_and_a_config_that_reproduces_it(base):
    out, stdout = base
    rep = results(out)
    rows = {r["id"]: r for r in rep["rows"]}
    chosen = rows[rep["pick"]]
    meeting = [r for r in rep["rows"][1:] if r["quality"] >= 0.9]
    assert chosen["quality"] >= 0.9
    assert chosen["latency_ms"] == min(r["latency_ms"] for r in meeting)
    assert (out / "pick.onnx").read_bytes() == Path(chosen["model"]).read_bytes()
    ort.InferenceSession(str(out / "pick.onnx"), providers=["CPUExecutionProvider"])
    settings = load_config(out / "pick.toml")
    assert settings == {
        "ratio": chosen["options"]["ratio"],
        "criterion": chosen["options"]["criterion"],
        "calib": str(CALIB.resolve()),
        "eval": str(TEST.resolve()),
    }
    again = graphprune.prune.prune_model(str(DIGITS), PruneOptions(**settings))
    assert again.after["params"] == chosen["params"]
    assert onnx.load(str(out / "pick.onnx")).graph.node
    assert f"pick (quality>=0.9): {chosen['id']}" in stdout


def _row(cid, latency, quality, macs=0.5):
    return {
        "id": cid,
        "status": "ok",
        "latency_ms": latency,
        "quality": quality,
        "macs_kept": macs,
        "params_kept": macs,
        "speedup": 1.0 / latency,
    }


def test_pick_rules():
    rows = [
        _row("original", 1.0, 1.0, 1.0),
        _row("fast_bad", 0.2, 0.5, 0.2),
        _row("slow_good", 0.8, 0.99, 0.8),
        _row("mid_good", 0.5, 0.95, 0.6),
        {"id": "broken", "status": "failed", "exit_code": 4},
    ]
    assert pick(rows, "quality>=0.9")["id"] == "mid_good"  # the fastest meeting it
    assert pick(rows, "quality >= 0.98")["id"] == "slow_good"
    assert pick(rows, "latency<=0.6")["id"] == "mid_good"  # the best quality
    assert pick(rows, "speedup>=1.5")["id"] == "mid_good"
    assert pick(rows, "macs<=0.3")["id"] == "fast_bad"
    with pytest.raises(NothingPruned, match="best quality reached is 0.99 [(]slow_good") as e:
        pick(rows, "quality>=0.995")
    assert e.value.option == "--pick" and e.value.exit_code == 8
    with pytest.raises(NothingPruned, match="best latency reached is 0.2 "):
        pick(rows, "latency<=0.1")


def test_impossible_pick_is_nothing_pruned(base, tmp_path):
    out = _copy(base[0], tmp_path)
    (out / "pick.onnx").unlink()
    (out / "pick.toml").unlink()
    code, _, stderr = run(out, *GRID, *DATA, "--pick", "speedup>=1000")
    assert code == 8
    assert "no configuration meets speedup>=1000: the best speedup reached is" in stderr
    assert len(stderr.strip().splitlines()) == 1
    assert not (out / "pick.onnx").exists() and not (out / "pick.toml").exists()


def test_a_failing_configuration_is_a_failed_row(tmp_path, monkeypatch):
    real = graphprune.prune.prune_model

    def failing(model, options=None, plan=None):
        if options.ratio == 0.25:
            raise PlanError("no plan\nat all")
        return real(model, options, plan)

    monkeypatch.setattr(graphprune.prune, "prune_model", failing)
    bars, stages = [], []
    monkeypatch.setattr(graphprune.progress, "BAR_LISTENERS", [lambda *a: bars.append(a)])
    monkeypatch.setattr(graphprune.progress, "LISTENERS", [stages.append])
    code, stdout, stderr = run(
        tmp_path / "f", "--ratio", "0.1,0.25", "--eval", str(TEST), "--bench-time", "0.05"
    )
    assert code == 0, stderr
    rows = {r["options"].get("ratio"): r for r in results(tmp_path / "f")["rows"][1:]}
    assert rows[0.25]["status"] == "failed" and rows[0.25]["exit_code"] == 4
    assert rows[0.25]["error"] == "no plan at all"
    assert rows[0.1]["status"] == "ok" and rows[0.1]["latency_ms"] > 0
    assert "1 failed" in stdout and "failed (exit 4)" in stdout
    assert "  failed: exit 4: no plan at all" in stdout
    sweep_bars = [b for b in bars if b[0] == "sweep"]
    assert sweep_bars == [("sweep", 0, 2), ("sweep", 1, 2), ("sweep", 2, 2)]
    assert {b[0] for b in bars} == {"sweep", "latency"}  # an in-process prune's are muted
    assert stages == []


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--ratio", "0.2,1.5"], "--ratio must be in [0, 1)"),
        (["--ratio", "0.2,,0.4"], "empty value"),
        (["--ratio", "0.2,0.20"], "twice"),
        (["--criterion", "l2,nope"], "--criterion must be one of"),
        (["--reconstruct", "none,lsq"], "needs calibration data"),
        (["--quantize", "dynamic"], "sweep does not take --quantize"),
        (["--pick", "size<3"], "--pick takes"),
        (["--jobs", "0"], "--jobs must be >= 1"),
        (["--pick", "quality>=0.5", "--pick-output", str(DIGITS)], "refusing to overwrite"),
        (["--pick", "quality>=0.5"], "--pick quality needs --eval data"),
        (["--threads", "0"], "--threads must be >= 1"),
    ],
)
def test_bad_grid_is_a_usage_error(tmp_path, args, needle):
    code, stdout, stderr = run(tmp_path / "bad", *args)
    assert code == 2, stderr
    assert needle in stderr and len(stderr.strip().splitlines()) == 1
    assert not (tmp_path / "bad").exists()


def test_out_that_is_a_file_or_another_models_sweep_is_refused(base, tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    code, _, stderr = run(f, "--ratio", "0.1")
    assert code == 2 and "is a file" in stderr
    assert f.read_text() == "x"
    other = tmp_path / "other.onnx"
    m = onnx.load(str(DIGITS))
    m.doc_string = "another model"
    onnx.save(m, str(other))
    out = _copy(base[0], tmp_path)
    listing = sorted(p.name for p in out.rglob("*"))
    code, _, stderr = run(out, *GRID, *DATA, model=other)
    assert code == 2 and "another model" in stderr
    code, _, stderr = run(out, *GRID, "--eval", str(TEST))  # other shared options
    assert code == 2 and "other options" in stderr
    assert sorted(p.name for p in out.rglob("*")) == listing
    stray = tmp_path / "stray"
    stray.mkdir()
    (stray / "notes.txt").write_text("mine")
    code, _, stderr = run(stray, "--ratio", "0.1")
    assert code == 2 and "not a sweep directory" in stderr


def test_a_reconstruction_axis_takes_the_calibration_data(tmp_path):
    """Each axis value is checked with the data given: lsq needs --calib, and has it."""
    out = tmp_path / "sw"
    code, _, err = run(out, "--ratio", "0.25", "--reconstruct", "none,lsq", *DATA)
    assert code == 0, err
    rows = [r for r in results(out)["rows"] if r["id"] != "original"]
    assert sorted(r["options"]["reconstruct"] for r in rows) == ["lsq", "none"]
    assert all(r["status"] == "ok" for r in rows)
