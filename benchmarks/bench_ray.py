"""Single process against 2 local Ray workers, side by side.

* calibration: ``graphprune.calibration.capture`` of every target of MiniLM (batch 1,
  sequence 128) over 16 random-token batches, with the Gram matrices (what lsq reads),
  once in this process and once sharded over a local Ray instance of 2 CPUs;
* a sweep of ``tests/test_sweep.py``'s size (digits CNN, 2 ratios x 2 criteria, with
  calibration and evaluation data) through the CLI in a fresh process: the default
  (one configuration after the other, in-process), ``--jobs 2`` and ``--ray local``
  (Ray's start-up included).

    python benchmarks/bench_ray.py [--batches N]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DIGITS = ROOT / "models" / "digits"


def bench_calibration(batches: int) -> tuple[float, float, float]:
    from graphprune import cluster
    from graphprune.calibration import capture
    from graphprune.graph import load_model
    from graphprune.importance import calibration_targets
    from graphprune.prune import analyze_model
    from models.transformer_zoo import build

    model = load_model(build("minilm", "torchscript", False))  # static batch 1, sequence 128
    targets = calibration_targets(analyze_model(model))
    rng = np.random.default_rng(0)
    feeds = [
        {
            "input_ids": rng.integers(1000, 20000, (1, 128), dtype=np.int64),
            "attention_mask": np.ones((1, 128), dtype=np.int64),
        }
        for _ in range(batches)
    ]
    t0 = time.perf_counter()
    single = capture(model, feeds, targets, gram=True)
    t_single = time.perf_counter() - t0
    t0 = time.perf_counter()
    cluster.connect("local", num_cpus=2)
    t_start = time.perf_counter() - t0
    capture(model, feeds[:2], targets[:1])  # the workers import graphprune once
    t0 = time.perf_counter()
    sharded = capture(model, feeds, targets, gram=True)
    t_ray = time.perf_counter() - t0
    cluster.shutdown()
    worst = max(
        float(np.max(np.abs(sharded.stats[k].gram - s.gram)) / np.max(np.abs(s.gram)))
        for k, s in single.stats.items()
    )
    print(f"  {len(targets)} targets, largest Gram difference {worst:.1e} of its scale")
    return t_single, t_ray, t_start


def bench_sweep() -> dict[str, float]:
    grid = ["--ratio", "0.1,0.25", "--criterion", "l2,l1", "--bench-time", "0.05"]
    grid += ["--calib", str(DIGITS / "digits_calib.npz")]
    grid += ["--eval", str(DIGITS / "digits_test.npz")]
    runs = {"default": [], "--jobs 2": ["--jobs", "2"], "--ray local": ["--ray", "local"]}
    times = {}
    for name, extra in runs.items():
        with tempfile.TemporaryDirectory() as tmp:
            argv = ["sweep", str(DIGITS / "digits_cnn.onnx"), "--out", f"{tmp}/s", *grid, *extra]
            code = f"import sys; from graphprune.cli import main; sys.exit(main({argv!r}))"
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
            times[name] = time.perf_counter() - t0
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batches", type=int, default=16)
    args = ap.parse_args()
    print(f"calibration capture, MiniLM, {args.batches} batches, Gram matrices:")
    single, ray, start = bench_calibration(args.batches)
    print(f"  single process {single:.2f} s | 2 Ray workers {ray:.2f} s ({single / ray:.2f}x)")
    print(f"  (Ray start-up {start:.1f} s, not included)")
    print("sweep, digits CNN, 4 configurations (fresh process each, start-up included):")
    for name, t in bench_sweep().items():
        print(f"  {name:<12} {t:6.1f} s")


if __name__ == "__main__":
    main()
