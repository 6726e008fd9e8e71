"""Benchmark: graphprune as a build step on real models, through the CLI a user runs.

1. ``prune --bench``: the real all-MiniLM-L6-v2 at ``--heads 0.5 --mlp 0.5`` and a
   ResNet-50 (``models/zoo.py``, 224x224) at ``--ratio 0.5``; original vs pruned timed
   interleaved in ONNX Runtime at 1 thread and at all cores, with the fraction of the ideal
   (MAC-ratio) speedup reached.
2. ``--target-speedup 2`` on both: units allocated with the latency model measured here;
   the requested, predicted and measured speedups.
3. ``graphprune sweep`` on MiniLM: a grid of MAC targets x criteria x reconstructions,
   quality (mean output cosine on held-out text) against latency and MACs, with the Pareto
   front; the plot is copied to ``docs/sweep_minilm.png`` (and ``.svg``).
4. The runtime stages on the digits CNN and MobileNetV2: ``--optimize --quantize static
   --emit ort``, with size, latency and quality after each stage.

MiniLM's calibration text is sentences from Python stdlib docstrings, its held-out text
sentences from scikit-learn's dataset descriptions (as in ``bench_quality.py``), both
padded to 128 tokens, so every model is timed at batch 1 x 128 tokens.

Run: ``python benchmarks/bench_build_step.py [--skip-sweep] [--only bench,target,sweep,stages]``
Everything is written under ``models/_cache/build_step/`` except the plot.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from models.transformer_zoo import build as build_transformer  # noqa: E402
from models.zoo import build as build_zoo  # noqa: E402

WORK = ROOT / "models" / "_cache" / "build_step"
DOCS = ROOT / "docs"
SEQ = 128


def minilm_data(n_calib: int = 128, n_eval: int = 64) -> tuple[Path, Path]:
    """Calibration and held-out .npz of MiniLM inputs, padded to SEQ tokens."""
    calib, held = WORK / "minilm_calib.npz", WORK / "minilm_eval.npz"
    if calib.exists() and held.exists():
        return calib, held
    from bench_quality import calib_texts, eval_texts, sentences, spread
    from transformers import AutoTokenizer

    from graphprune.exporters.hf_export import minilm_dir

    tok = AutoTokenizer.from_pretrained(minilm_dir())
    seen: set = set()
    for path, texts, n in ((calib, calib_texts(), n_calib), (held, eval_texts(), n_eval)):
        sents = spread(sentences(texts, seen), n)
        enc = tok(sents, padding="max_length", max_length=SEQ, truncation=True, return_tensors="np")
        np.savez(path, **{k: enc[k].astype(np.int64) for k in ("input_ids", "attention_mask")})
    return calib, held


def graphprune(*args: str) -> dict | None:
    """Run the CLI (as a user would), print what it prints, return its --json report."""
    report = WORK / f"report-{time.monotonic_ns()}.json"
    cmd = [sys.executable, "-m", "graphprune.cli", *args, "--json", str(report)]
    print("$ graphprune " + " ".join(str(a).replace(str(ROOT) + "/", "") for a in args))
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    print(proc.stdout.rstrip())
    if proc.returncode != 0:
        print(f"  exit {proc.returncode}: {proc.stderr.strip()}")
    print(f"  ({time.perf_counter() - t0:.1f} s)\n")
    return json.loads(report.read_text()) if report.exists() else None


def bench_rows(rep: dict | None) -> None:
    if not rep or "bench" not in rep:
        return
    for r in rep["bench"]["rows"]:
        if r["model"] != "original":
            frac = r["fraction_of_ideal"]
            print(
                f"  {r['model']:<10} {r['threads']} thread(s): speedup {r['speedup']:.2f}x, "
                f"ideal {r['ideal']:.2f}x, {frac * 100:.0f}% of ideal"
            )
    b = rep["bench"]
    if b.get("target_speedup"):
        print(
            f"  target {b['target_speedup']:.2f}x: predicted {b.get('predicted_speedup')}, "
            f"measured {b['reached_speedup']:.2f}x at {b['target_threads']} thread(s)"
        )
    print()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="bench,target,sweep,stages")
    ap.add_argument("--jobs", type=int, default=1, help="sweep worker processes")
    args = ap.parse_args()
    only = set(args.only.split(","))
    WORK.mkdir(parents=True, exist_ok=True)
    minilm = build_transformer("minilm", "torchscript", True)
    resnet50 = build_zoo("resnet50", "torchscript")
    calib, held = minilm_data()
    shape = ["--input-shape", f"input_ids=1x{SEQ}", "--input-shape", f"attention_mask=1x{SEQ}"]

    if "bench" in only:
        print("== prune --bench ==\n")
        rep = graphprune(
            "prune", str(minilm), "-o", str(WORK / "minilm_h50_m50.onnx"),
            "--heads", "0.5", "--mlp", "0.5", "--bench", *shape,
        )
        bench_rows(rep)
        rep = graphprune(
            "prune", str(resnet50), "-o", str(WORK / "resnet50_r50.onnx"), "--ratio", "0.5",
            "--bench",
        )
        bench_rows(rep)

    if "target" in only:
        print("== --target-speedup 2 ==\n")
        rep = graphprune(
            "prune", str(minilm), "-o", str(WORK / "minilm_x2.onnx"), "--target-speedup", "2",
            "--bench", *shape,
        )
        bench_rows(rep)
        rep = graphprune(
            "prune", str(resnet50), "-o", str(WORK / "resnet50_x2.onnx"),
            "--target-speedup", "2", "--bench",
        )
        bench_rows(rep)

    if "sweep" in only:
        print("== sweep (MiniLM) ==\n")
        out = WORK / "sweep_minilm"
        cmd = [
            sys.executable, "-m", "graphprune.cli", "sweep", str(minilm), "--out", str(out),
            "--target-macs", "0.8,0.65,0.5,0.35", "--criterion", "l2,obs",
            "--reconstruct", "none,lsq", "--global", "--calib", str(calib), "--eval", str(held),
            "--no-parity", "--jobs", str(args.jobs), "--pick", "quality>=0.95",
        ]
        print("$ graphprune " + " ".join(cmd[3:]))
        t0 = time.perf_counter()
        subprocess.run(cmd, cwd=ROOT, check=False)
        print(f"  ({time.perf_counter() - t0:.1f} s)\n")
        DOCS.mkdir(exist_ok=True)
        for ext in ("png", "svg"):
            if (out / f"sweep.{ext}").exists():
                shutil.copy(out / f"sweep.{ext}", DOCS / f"sweep_minilm.{ext}")

    if "stages" in only:
        print("== runtime stages ==\n")
        digits = ROOT / "models" / "digits"
        graphprune(
            "prune", str(digits / "digits_cnn.onnx"), "-o", str(WORK / "digits.onnx"),
            "--ratio", "0.5", "--criterion", "obs", "--reconstruct", "lsq-seq",
            "--calib", str(digits / "digits_calib.npz"), "--eval", str(digits / "digits_test.npz"),
            "--optimize", "--quantize", "static", "--emit", "ort", "--threads", "1",
        )
        mobilenet = build_zoo("mobilenetv2", "torchscript")
        graphprune(
            "prune", str(mobilenet), "-o", str(WORK / "mobilenet.onnx"), "--ratio", "0.5",
            "--optimize", "--quantize", "dynamic", "--emit", "ort", "--threads", "1",
        )
        graphprune(
            "prune", str(minilm), "-o", str(WORK / "minilm_opt.onnx"), "--heads", "0.5",
            "--mlp", "0.5", "--optimize", "--quantize", "dynamic", "--emit", "ort",
            "--eval", str(held), "--threads", "1", *shape,
        )


if __name__ == "__main__":
    main()
