"""graphprune as a build step: bench, --bench, --config, --dry-run, the summary's detail
levels, progress, and byte-identical output across processes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from graphprune import progress
from graphprune.bench import measure, timing_feed
from graphprune.cli import main
from graphprune.config import dump_toml, load_config
from graphprune.errors import UsageError
from graphprune.options import PruneOptions
from graphprune.prune import prune_model

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "models" / "digits" / "digits_cnn.onnx"
CALIB = ROOT / "models" / "digits" / "digits_calib.npz"


def _params(path) -> int:
    return sum(int(np.prod(t.dims)) for t in onnx.load(str(path)).graph.initializer)


# -- bench ------------------------------------------------------------------------------------
def test_bench_times_every_model_at_every_thread_count(tmp_path, capsys):
    small = tmp_path / "small.onnx"
    assert main(["prune", str(DIGITS), "-o", str(small), "--ratio", "0.5", "-q"]) == 0
    report = tmp_path / "bench.json"
    args = ["bench", str(DIGITS), str(small), "--threads", "1,2", "--min-time", "0.2"]
    assert main([*args, "--json", str(report)]) == 0
    rows = json.loads(report.read_text())["rows"]
    assert [(r["model"], r["threads"]) for r in rows] == [
        (str(DIGITS), 1),
        (str(small), 1),
        (str(DIGITS), 2),
        (str(small), 2),
    ]
    for r in rows:
        assert r["runs"] >= 20 and 0 < r["median_ms"] <= r["p90_ms"]
    first, pruned = rows[0], rows[1]
    assert first["speedup"] == 1.0 and first["ideal"] == 1.0
    # the ideal is the MAC ratio: digits at ratio 0.5 keeps about a quarter of its MACs
    assert pruned["ideal"] == pytest.approx(first["macs"] / pruned["macs"], rel=1e-3)
    assert 3.5 < pruned["ideal"] < 4.5
    assert pruned["fraction_of_ideal"] == pytest.approx(
        pruned["speedup"] / pruned["ideal"], abs=1e-3
    )
    out = capsys.readouterr().out
    assert "median ms" in out and "of ideal" in out


def test_measure_interleaves_calls(monkeypatch):
    """One call of each model per round: the order of runs alternates."""
    model = onnx.load(str(DIGITS))
    calls = []
    real = ort.InferenceSession.run

    def spy(self, *a, **k):
        calls.append(id(self))
        return real(self, *a, **k)

    monkeypatch.setattr(ort.InferenceSession, "run", spy)
    feed = timing_feed(model)
    calls.clear()
    measure([model, model], feed, threads=(1,), warmup=0, min_runs=5, min_time_s=0)
    assert len(calls) == 10
    assert all(calls[i] != calls[i + 1] for i in range(0, 10, 2))
    assert calls[0::2] == [calls[0]] * 5 and calls[1::2] == [calls[1]] * 5


@pytest.mark.parametrize(
    "args, code, needle",
    [
        (["bench", "missing.onnx"], 3, "missing.onnx"),
        (["bench", str(DIGITS), "--threads", "0"], 2, "--threads must be >= 1"),
        (["bench", str(DIGITS), "--min-time", "-1"], 2, "--min-time"),
        (["bench", str(DIGITS), "--input-shape", "x=1x1x8x8"], 2, "no input named x"),
    ],
)
def test_bench_bad_input_is_one_line(args, code, needle, capsys):
    assert main(args) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0]


def test_prune_bench_adds_original_and_pruned_timings(tmp_path):
    out, report = tmp_path / "p.onnx", tmp_path / "r.json"
    args = ["prune", str(DIGITS), "-o", str(out), "--ratio", "0.5", "--bench", "--threads", "1"]
    assert main([*args, "--json", str(report)]) == 0
    bench = json.loads(report.read_text())["bench"]
    assert [r["model"] for r in bench["rows"]] == ["original", "pruned"]
    assert bench["rows"][1]["ideal"] > 3.5
    assert "target_speedup" not in bench  # no latency target asked


# -- config -----------------------------------------------------------------------------------
def test_config_gives_options_and_flags_override_it(tmp_path):
    cfg = tmp_path / "prune.toml"
    out = tmp_path / "p.onnx"
    cfg.write_text(f'ratio = 0.75\nno-parity = true\noutput = "{out}"\n[prune]\nmin-keep = 2\n')
    report = tmp_path / "r.json"
    assert main(["prune", str(DIGITS), "--config", str(cfg), "--json", str(report)]) == 0
    opts = json.loads(report.read_text())["options"]
    assert opts["ratio"] == 0.75 and opts["parity"] is False and opts["min_keep"] == 2
    small = _params(out)
    # the flag wins over the file
    out2 = tmp_path / "p2.onnx"
    flags = ["-o", str(out2), "--ratio", "0.25"]
    assert main(["prune", str(DIGITS), "--config", str(cfg), *flags]) == 0
    assert _params(out2) > small


@pytest.mark.parametrize(
    "text, needle",
    [
        ("ratio = 0.5\nbogus = 1\n", "unknown option 'bogus'"),
        ("ratio = \n", "not valid TOML"),
        ("ratio = 2.0\n", "--ratio must be in [0, 1)"),
        ("[sweep]\nratio = 0.5\n", "unknown table [sweep]"),
        ('no-parity = "yes"\n', "no-parity takes true or false"),
    ],
)
def test_a_bad_config_is_exit_2_and_writes_nothing(tmp_path, capsys, text, needle):
    cfg = tmp_path / "c.toml"
    cfg.write_text(text)
    out = tmp_path / "o.onnx"
    assert main(["prune", str(DIGITS), "-o", str(out), "--config", str(cfg)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0]
    assert not out.exists()


def test_dump_toml_reads_back_the_same_options(tmp_path):
    given = {
        "ratio": 0.3,
        "ratios": {"head": 0.5},
        "criterion": "wanda",
        "exclude": ["conv1*", 'odd "name"'],
        "parity": False,
        "round_to": 8,
        "calib": str(CALIB),
    }
    path = tmp_path / "c.toml"
    path.write_text(dump_toml(given, comment="picked by a sweep"))
    assert load_config(path) == given
    assert PruneOptions(**load_config(path)) == PruneOptions(**given)


# -- dry run and the summary ------------------------------------------------------------------
def test_dry_run_writes_no_model_and_predicts_what_the_prune_does(tmp_path, capsys):
    out, report = tmp_path / "p.onnx", tmp_path / "dry.json"
    flags = ["--ratio", "0.5"]
    assert main(["prune", str(DIGITS), "--dry-run", *flags, "--json", str(report)]) == 0
    printed = capsys.readouterr().out
    assert "would prune" in printed and "predicted" in printed and "units" in printed
    assert list(tmp_path.iterdir()) == [report]
    dry = json.loads(report.read_text())
    assert dry["dry_run"] is True and dry["parity"]["status"] == "skipped"
    real_json = ["--json", str(tmp_path / "r.json")]
    assert main(["prune", str(DIGITS), "-o", str(out), *flags, *real_json]) == 0
    real = json.loads((tmp_path / "r.json").read_text())
    assert dry["params"]["after"] == real["params"]["after"]
    assert dry["macs"]["after"] == pytest.approx(real["macs"]["after"], rel=0.02)
    assert dry["groups"]["pruned_detail"] == real["groups"]["pruned_detail"]


def test_summary_detail_levels(tmp_path, capsys):
    out = tmp_path / "p.onnx"
    base = ["prune", str(DIGITS), "-o", str(out), "--ratio", "0.5"]
    assert main([*base, "-q"]) == 0
    quiet = capsys.readouterr().out.strip().splitlines()
    assert len(quiet) == 1 and "parity exact" in quiet[0] and "MACs -74" in quiet[0]
    assert main(base) == 0
    normal = capsys.readouterr().out
    assert "layer (group)" in normal and "32->16" in normal and "passes:" not in normal
    assert main([*base, "-v"]) == 0
    verbose = capsys.readouterr().out
    assert "passes:" in verbose and "analyze" in verbose


def test_layer_rows_give_units_and_macs_shares(tmp_path):
    result = prune_model(DIGITS, PruneOptions(ratio=0.5))
    rows = {r["key"]: r for r in result.layers}
    first = rows["/features/features.0/features.0.0/Conv_output_0[1]"]
    assert (first["units_before"], first["units_after"]) == (32, 16)
    # conv0's channels feed conv1 (most of the MACs) and conv0 itself
    assert 0.45 < first["macs_share"] < 0.55
    assert first["macs_removed"] == pytest.approx(first["macs_share"] / 2, abs=0.01)
    assert all(0 <= r["macs_removed"] <= r["macs_share"] <= 1 for r in rows.values())


def test_long_steps_report_progress():
    seen = []
    progress.BAR_LISTENERS.append(lambda step, done, total: seen.append((step, done, total)))
    try:
        prune_model(
            DIGITS,
            PruneOptions(ratio=0.5, criterion="knockout", reconstruct="lsq-seq", calib=str(CALIB)),
        )
    finally:
        progress.BAR_LISTENERS.pop()
    steps = {s for s, _, _ in seen}
    assert {"calibration", "knockout", "reconstruction"} <= steps
    for step in steps:
        mine = [(d, t) for s, d, t in seen if s == step]
        assert mine[-1][0] == mine[-1][1]  # every bar finishes


# -- byte-identical output --------------------------------------------------------------------
def _prune_in_a_fresh_process(tmp_path, name, hash_seed, *flags) -> bytes:
    out = tmp_path / name
    env = {**os.environ, "PYTHONHASHSEED": str(hash_seed)}
    code = "import sys; from graphprune.cli import main; sys.exit(main(sys.argv[1:]))"
    subprocess.run(
        [sys.executable, "-c", code, "prune", str(DIGITS), "-o", str(out), "-q", *flags],
        check=True,
        env=env,
        cwd=ROOT,
        capture_output=True,
    )
    return out.read_bytes()


def test_the_same_options_give_byte_identical_output_across_processes(tmp_path):
    flags = ("--criterion", "random", "--seed", "7", "--ratio", "0.4")
    a = _prune_in_a_fresh_process(tmp_path, "a.onnx", 1, *flags)
    b = _prune_in_a_fresh_process(tmp_path, "b.onnx", 2, *flags)
    assert a == b
    other_seed = ("--criterion", "random", "--seed", "8", "--ratio", "0.4")
    c = _prune_in_a_fresh_process(tmp_path, "c.onnx", 1, *other_seed)
    assert c != a  # the seed does choose the units


def test_the_same_calibrated_prune_is_byte_identical(tmp_path):
    flags = ("--criterion", "wanda", "--reconstruct", "lsq", "--calib", str(CALIB))
    a = _prune_in_a_fresh_process(tmp_path, "a.onnx", 3, *flags)
    b = _prune_in_a_fresh_process(tmp_path, "b.onnx", 4, *flags)
    assert a == b


def test_dry_run_needs_no_output_but_a_real_run_does(tmp_path, capsys):
    assert main(["prune", str(DIGITS), "--ratio", "0.5"]) == 2
    assert "-o/--output" in capsys.readouterr().err
    with pytest.raises(UsageError):
        PruneOptions(quantize="static")  # needs --calib


# -- the quality floor ------------------------------------------------------------------------
TEST = ROOT / "models" / "digits" / "digits_test.npz"


def test_a_model_below_the_quality_floor_is_exit_9_and_not_written(tmp_path, capsys):
    out, report = tmp_path / "p.onnx", tmp_path / "r.json"
    args = ["prune", str(DIGITS), "-o", str(out), "--ratio", "0.5", "--eval", str(TEST)]
    assert main([*args, "--min-quality", "0.95", "--json", str(report)]) == 9
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "below --min-quality 0.95" in err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]
    rep = json.loads(report.read_text())
    assert rep["status"] == "below_quality_floor" and rep["exit_code"] == 9
    assert rep["quality"]["metric"] == "accuracy after/before"
    assert rep["quality"]["value"] < 0.95 and rep["quality"]["floor"] == 0.95


def test_a_model_above_the_floor_is_written_with_its_quality(tmp_path):
    out, report = tmp_path / "p.onnx", tmp_path / "r.json"
    args = ["prune", str(DIGITS), "-o", str(out), "--ratio", "0.5", "--eval", str(TEST)]
    refit = ["--criterion", "obs", "--reconstruct", "lsq-seq", "--calib", str(CALIB)]
    assert main([*args, *refit, "--min-quality", "0.95", "--json", str(report)]) == 0
    q = json.loads(report.read_text())["quality"]
    assert q["value"] >= 0.95 and q["after"] == pytest.approx(q["value"] * q["before"])
    assert out.is_file()


def test_the_floor_needs_held_out_data(capsys):
    assert main(["prune", str(DIGITS), "-o", "x.onnx", "--min-quality", "0.9"]) == 2
    assert "needs held-out data (--eval)" in capsys.readouterr().err


# -- runtime stages through the CLI, and the README's CI example --------------------------------
def test_stages_go_to_the_output_and_beside_it(tmp_path):
    out, report = tmp_path / "d.onnx", tmp_path / "r.json"
    args = ["prune", str(DIGITS), "-o", str(out), "--ratio", "0.5", "--threads", "1"]
    stages = ["--optimize", "--quantize", "dynamic", "--emit", "ort"]
    assert main([*args, *stages, "--eval", str(TEST), "--json", str(report)]) == 0
    rep = json.loads(report.read_text())
    assert [s["name"] for s in rep["stages"]] == ["optimized", "quantized", "ort"]
    shipped = onnx.load(str(out))
    assert {n.op_type for n in shipped.graph.node} & {"DynamicQuantizeLinear", "MatMulInteger",
                                                       "ConvInteger", "QLinearMatMul"}
    assert rep["bytes"]["after"] == out.stat().st_size
    assert rep["output_ort"] == str(tmp_path / "d.ort")
    sess = ort.InferenceSession(str(tmp_path / "d.ort"), providers=["CPUExecutionProvider"])
    x = np.load(TEST)["input"][:8]
    ref = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"input": x})
    np.testing.assert_allclose(sess.run(None, {"input": x})[0], ref[0], rtol=1e-5, atol=1e-5)
    timed = {r["model"] for r in rep["bench"]["rows"]}
    assert timed == {"original", "pruned", "optimized", "quantized"}
    pruned_accuracy = rep["accuracy"]["after"]
    for s in rep["stages"][:2]:  # int8 weights cost the pruned model little accuracy
        assert s["latency_ms"] > 0 and abs(s["accuracy"] - pruned_accuracy) < 0.03
    assert rep["quality"]["metric"] == "accuracy after/before"


def test_the_readme_ci_example_runs_as_written(tmp_path, monkeypatch):
    readme = (ROOT / "README.md").read_text()
    toml = readme.split("with `prune.toml`:\n\n```toml\n", 1)[1].split("```", 1)[0]
    command = readme.split("graphprune prune models/digits/digits_cnn.onnx -o dist/digits.onnx", 1)
    flags = command[1].split("\n      - uses", 1)[0].replace("\\\n", " ").split()
    (tmp_path / "prune.toml").write_text(toml)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").symlink_to(ROOT / "models")
    code = main(["prune", "models/digits/digits_cnn.onnx", "-o", "dist/digits.onnx", *flags])
    assert code == 0
    rep = json.loads((tmp_path / "dist" / "report.json").read_text())
    assert rep["parity"]["mask_check"] == "exact" and rep["quality"]["value"] >= 0.98
    assert (tmp_path / "dist" / "digits.ort").is_file()
    # and the floor does fail the build when the model is not good enough
    toml_l2 = toml.replace('criterion = "obs"', 'criterion = "l2"').replace(
        'reconstruct = "lsq-seq"', 'reconstruct = "none"'
    )
    (tmp_path / "prune.toml").write_text(toml_l2)
    code = main(["prune", "models/digits/digits_cnn.onnx", "-o", "dist/other.onnx", *flags])
    assert code == 9 and not (tmp_path / "dist" / "other.onnx").exists()


def test_a_speedup_target_is_reported_against_the_measured_speedup(tmp_path, monkeypatch):
    monkeypatch.setenv("GRAPHPRUNE_CACHE", str(tmp_path / "cache"))
    out, report = tmp_path / "p.onnx", tmp_path / "r.json"
    args = ["prune", str(DIGITS), "-o", str(out), "--target-speedup", "1.5", "--bench"]
    assert main([*args, "--threads", "1", "--json", str(report)]) == 0
    rep = json.loads(report.read_text())
    budget, bench = rep["budget"], rep["bench"]
    assert budget["what"] == "latency" and isinstance(budget["round_to"], int)
    assert bench["target_speedup"] == 1.5 and bench["target_threads"] == 1
    assert bench["predicted_speedup"] == budget["predicted_speedup"]
    pruned = next(r for r in bench["rows"] if r["model"] == "pruned")
    assert bench["reached_speedup"] == pruned["speedup"]
    assert list((tmp_path / "cache" / "latency").glob("*.json"))  # measured once, cached


def test_bench_times_an_ort_file_beside_its_onnx(tmp_path, capsys):
    out = tmp_path / "d.onnx"
    assert main(["prune", str(DIGITS), "-o", str(out), "--emit", "ort", "-q"]) == 0
    report = tmp_path / "b.json"
    args = ["bench", str(DIGITS), str(out), str(tmp_path / "d.ort"), "--threads", "1"]
    assert main([*args, "--min-time", "0.1", "--json", str(report)]) == 0
    rows = json.loads(report.read_text())["rows"]
    assert [r["model"] for r in rows][2].endswith("d.ort") and rows[2]["macs"] is None
    assert main(["bench", str(tmp_path / "d.ort")]) == 2  # the baseline must be .onnx
