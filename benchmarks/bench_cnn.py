"""Benchmark: CPU latency of a pruned CNN vs its original, and the cost of pruning itself.

1. The ResNet-style zoo model pruned at ``--ratio`` (default 0.5). ONNX Runtime CPU latency of
   the original and the pruned model is measured *interleaved* in one run: the two models
   alternate call by call, so machine noise hits both alike. This is done at 1 thread and at
   all cores, and the median speedup is printed beside the ideal (the MACs ratio).
2. End-to-end pruning time of a 25M-parameter ResNet-50-class model: load, analyze, plan,
   rewrite and save, with parity excluded. The target is under 2 s.

Run: ``python benchmarks/bench_cnn.py [--size 224] [--iters 200] [--ratio 0.5]``
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from exporters.torch_export import export_torch  # noqa: E402
from graphprune.graph import save_model_atomic  # noqa: E402
from graphprune.prune import PruneOptions, prune_model  # noqa: E402
from models.zoo import ZOO, build  # noqa: E402


def interleaved_latency(a: bytes, b: bytes, feed: dict, iters: int, threads: int):
    """Median seconds per call of models ``a`` and ``b``, alternating calls."""
    sessions = []
    for blob in (a, b):
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        sessions.append(ort.InferenceSession(blob, opts, providers=["CPUExecutionProvider"]))
    for s in sessions:  # warm-up
        for _ in range(10):
            s.run(None, feed)
    times = ([], [])
    for i in range(iters):
        order = (0, 1) if i % 2 == 0 else (1, 0)
        for k in order:
            t = time.perf_counter()
            sessions[k].run(None, feed)
            times[k].append(time.perf_counter() - t)
    return float(np.median(times[0])), float(np.median(times[1]))


def bench_latency(name: str, size: int, ratio: float, iters: int, round_to: int = 1) -> None:
    import torch

    entry = ZOO[name]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{name}-{size}.onnx"
        x = torch.randn(1, 3, size, size)
        export_torch(entry.make_module(), (x,), path, exporter="torchscript")
        result = prune_model(str(path), PruneOptions(ratio=ratio, round_to=round_to))
        original = path.read_bytes()
    pruned = result.model.SerializeToString()
    ideal = result.before["macs"] / result.after["macs"]
    feed = {"input": x.numpy()}
    print(
        f"zoo model {name!r}, input 1x3x{size}x{size}, ratio {ratio}, round-to {round_to}: "
        f"parity {result.parity.status}, MACs {result.before['macs']:,} -> "
        f"{result.after['macs']:,}, params {result.before['params']:,} -> "
        f"{result.after['params']:,}"
    )
    for threads in (1, os.cpu_count() or 1):
        t0, t1 = interleaved_latency(original, pruned, feed, iters, threads)
        speedup = t0 / t1
        print(
            f"  threads={threads}: original {t0 * 1e3:.3f} ms, pruned {t1 * 1e3:.3f} ms, "
            f"speedup {speedup:.2f}x, ideal {ideal:.2f}x, achieved/ideal "
            f"{speedup / ideal:.2f}"
        )


def bench_prune_time(ratio: float, repeats: int = 3) -> None:
    path = build("resnet50", "torchscript")
    times = []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(repeats):
            t = time.perf_counter()
            result = prune_model(str(path), PruneOptions(ratio=ratio, parity=False))
            save_model_atomic(result.model, Path(tmp) / "r50.onnx")
            times.append(time.perf_counter() - t)
    print(
        f"ResNet-50-class ({result.before['params']:,} params) end-to-end prune at "
        f"{ratio} (load, analyze, plan, rewrite, save; parity excluded): "
        f"best {min(times):.2f} s, runs {', '.join(f'{x:.2f}' for x in times)} "
        f"(target < 2 s) -> {'OK' if min(times) < 2 else 'SLOW'}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=224, help="input height/width")
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument(
        "--models",
        default="resnet,resnet50",
        help="comma-separated zoo models for the latency part",
    )
    ap.add_argument("--round-to", type=int, default=1, help="keep a multiple of N units")
    ap.add_argument("--skip-prune-time", action="store_true")
    args = ap.parse_args()
    for name in args.models.split(","):
        bench_latency(name, args.size, args.ratio, args.iters, args.round_to)
    if not args.skip_prune_time:
        bench_prune_time(args.ratio)


if __name__ == "__main__":
    main()
