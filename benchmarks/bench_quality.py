"""Benchmark: output quality of pruned models for every criterion x reconstruction setting.

1. The real sentence-transformers all-MiniLM-L6-v2 (dynamic-shape TorchScript export from
   ``models.transformer_zoo``) with 50% of the attention heads and 50% of the MLP neurons
   removed in every layer. Calibration text: sentences from the docstrings of a fixed list
   of Python standard-library modules, batched by length and padded to the longest in each
   batch (padding to 128 would make pad positions ~85% of the statistics). Evaluation text
   (never used for calibration): sentences from scikit-learn's bundled dataset
   descriptions (``sklearn/datasets/descr``), topped up with numpy docstrings.
   Embeddings are mean-pooled ``last_hidden_state`` over real tokens, computed with ONNX
   Runtime. Per setting: mean cosine between each pruned and original eval embedding, and
   nearest-neighbour agreement (the nearest other eval sentence by cosine is the same in
   both spaces). The best criterion is then also run with ``--global`` (half of all heads
   and neurons, not half per layer). ``l2 + none`` is the baseline; the issue's target for
   the best setting is mean cosine >= 0.92 and NN agreement >= 0.75. How far any
   reconstruction from the same calibration text can go (layer-wise and end-to-end
   distillation in PyTorch) is measured by ``bench_quality_ceiling.py``.
2. The shipped digits CNN pruned to 50% of the MACs: test accuracy of the original, of the
   baseline and of the best MiniLM criterion with every reconstruction (chosen on MiniLM,
   not on the digits test set).

Run: ``python benchmarks/bench_quality.py [--quick] [--calib-sentences N]`` (default 256
calibration and 200 eval sentences; ``--quick``: 32 and 64, and only l2/flap/obs).
``--only CRIT:REC[:global]`` (repeatable) runs just those MiniLM settings, and prints the
time of each stage and pass of each; ``--no-digits`` / ``--no-minilm`` skip a part.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import re
import sys
import time
from importlib import resources
from pathlib import Path

import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from graphprune.exporters.hf_export import minilm_dir  # noqa: E402
from graphprune.prune import PruneOptions, prune_model  # noqa: E402
from models.transformer_zoo import build  # noqa: E402

SEQ, BATCH = 128, 16
CRITERIA = ("l1", "l2", "random", "activation", "wanda", "flap", "knockout", "obs")
QUICK_CRITERIA = ("l2", "flap", "obs")
RECONSTRUCT = ("none", "bias", "lsq", "lsq-seq", "block")
BASELINE = ("l2", "none")
TARGET_COS, TARGET_NN = 0.92, 0.75
_MODULES = (
    "argparse json textwrap collections logging email http.client unittest asyncio pathlib "
    "shutil subprocess typing dataclasses decimal fractions statistics csv sqlite3 zipfile "
    "tarfile gzip pickle copy heapq bisect functools itertools contextlib threading "
    "multiprocessing socket ssl urllib.parse xml.etree.ElementTree html.parser datetime "
    "calendar random hashlib hmac secrets uuid string re difflib pprint enum abc numbers "
    "operator inspect traceback warnings weakref gc os sys time"
)
CALIB_MODULES = _MODULES.split()


def sentences(texts, seen: set) -> list[str]:
    """Split texts into cleaned sentences of 6-60 words, deduplicated across calls."""
    out = []
    for text in texts:
        text = re.sub(r"[`*|]+|:\w+:|\.\. \w+::.*|={3,}|-{3,}|>>>.*", " ", text or "")
        for s in re.split(r"(?<=[.!?])\s+", re.sub(r"\s+", " ", text)):
            s = s.strip()
            if 6 <= len(s.split()) <= 60 and s not in seen and re.search(r"[a-z]{3}", s):
                seen.add(s)
                out.append(s)
    return out


def spread(items: list, n: int) -> list:
    """``n`` items evenly strided over ``items`` (deterministic, covers every source)."""
    return [items[i * len(items) // n] for i in range(min(n, len(items)))]


def calib_texts() -> list[str]:
    texts = []
    for name in CALIB_MODULES:
        mod = importlib.import_module(name)
        texts.append(mod.__doc__)
        for attr in sorted(getattr(mod, "__all__", None) or dir(mod)):
            obj = getattr(mod, attr, None)
            if not attr.startswith("_") and (inspect.isfunction(obj) or inspect.isclass(obj)):
                texts.append(inspect.getdoc(obj))
    return texts


def eval_texts() -> list[str]:
    descr = resources.files("sklearn.datasets") / "descr"
    texts = [
        f.read_text()
        for f in sorted(descr.iterdir(), key=lambda f: f.name)
        if f.name.endswith(".rst")
    ]
    import numpy

    texts += [
        inspect.getdoc(getattr(numpy, n))
        for n in ("mean", "dot", "linspace", "where", "concatenate", "histogram", "fft")
    ]
    return texts


def encode(tokenizer, sents: list[str], by_length: bool = False) -> list[dict]:
    """Feed dicts of BATCH sentences padded to SEQ, or (``by_length``) sorted by length and
    padded to the longest of each batch, so that few positions are padding."""
    if by_length:
        sents = sorted(sents, key=lambda s: len(tokenizer(s)["input_ids"]))
    feeds = []
    for i in range(0, len(sents), BATCH):
        enc = tokenizer(
            sents[i : i + BATCH],
            padding="longest" if by_length else "max_length",
            max_length=SEQ,
            truncation=True,
            return_tensors="np",
        )
        feeds.append({k: enc[k].astype(np.int64) for k in ("input_ids", "attention_mask")})
    return feeds


def embed(model_bytes: bytes, feeds: list[dict]) -> np.ndarray:
    sess = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    out = []
    for feed in feeds:
        hidden = sess.run(None, feed)[0]  # last_hidden_state (b, seq, 384)
        mask = feed["attention_mask"][..., None].astype(np.float32)
        out.append((hidden * mask).sum(1) / mask.sum(1))
    emb = np.concatenate(out)
    return emb / np.linalg.norm(emb, axis=1, keepdims=True)


def nearest(emb: np.ndarray) -> np.ndarray:
    sim = emb @ emb.T
    np.fill_diagonal(sim, -np.inf)
    return sim.argmax(1)


def accuracy(model, data) -> float:
    blob = model if isinstance(model, bytes) else model.SerializeToString()
    sess = ort.InferenceSession(blob, providers=["CPUExecutionProvider"])
    logits = sess.run(None, {"input": data["input"]})[0]
    return float((logits.argmax(1) == data["labels"]).mean())


def parse_only(specs: list[str]) -> list[tuple[str, str, bool]]:
    """``CRIT:REC[:global]`` strings as (criterion, reconstruct, global) settings."""
    out = []
    for spec in specs:
        parts = spec.split(":")
        if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] != "global"):
            raise SystemExit(f"--only {spec}: expected CRIT:REC or CRIT:REC:global")
        out.append((parts[0], parts[1], len(parts) == 3))
    return out


def stage_times(res) -> str:
    """A run's stages, and its passes of at least half a second, with their seconds."""
    parts = [f"{k} {v:.1f}" for k, v in res.timings.items()]
    parts += [
        f"{r.name} {r.seconds:.1f}" + (f" [{r.detail}]" if r.name.startswith("fit-") else "")
        for r in res.passes
        if r.seconds >= 0.5
    ]
    return "    stages (s): " + ", ".join(parts)


def run_minilm(quick: bool, n_cal: int, only: list | None = None) -> tuple:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(minilm_dir())
    n_cal, n_eval = (32, 64) if quick else (n_cal, 200)
    seen: set = set()
    cal = spread(sentences(calib_texts(), seen), n_cal)
    ev = spread(sentences(eval_texts(), seen), n_eval)  # `seen` keeps calib text out of eval
    print(
        f"calibration: {len(cal)} sentences from docstrings of {len(CALIB_MODULES)} stdlib modules"
    )
    print(
        f"evaluation:  {len(ev)} sentences from sklearn/datasets/descr/*.rst (+ numpy docstrings)"
    )
    cal_feeds, ev_feeds = encode(tokenizer, cal, by_length=True), encode(tokenizer, ev)
    path = build("minilm", "torchscript", True)
    ref = embed(path.read_bytes(), ev_feeds)
    ref_nn = nearest(ref)

    print(f"\nMiniLM, 50% heads + 50% MLP neurons ({len(ev)} eval sentences)")
    print(
        f"{'criterion':<16}{'reconstruct':<12}{'mean cos':>9}{'NN agree':>9}{'MACs':>7}"
        f"{'parity':>13}{'mask':>7}{'time s':>8}"
    )
    rows = {}

    def setting(crit: str, rec: str, global_rank: bool = False) -> None:
        t0 = time.perf_counter()
        try:
            opts = PruneOptions(
                ratio=0.0,
                ratios={"head": 0.5, "neuron": 0.5},
                criterion=crit,
                reconstruct=rec,
                calib=cal_feeds,
                global_rank=global_rank,
                parity=True,
            )
            res = prune_model(str(path), opts)
            emb = embed(res.model.SerializeToString(), ev_feeds)
            cos = float((emb * ref).sum(1).mean())
            nn = float((nearest(emb) == ref_nn).mean())
            macs = res.after["macs"] / res.before["macs"]
            mask = res.parity.mask_check if res.parity.mask_check is not None else "-"
            rows[crit, rec, global_rank] = (cos, nn)
            times = stage_times(res) if only else ""
            line = f"{cos:>9.4f}{nn:>9.3f}{macs:>7.2f}{res.parity.status:>13}{str(mask):>7}"
        except Exception as e:  # report every failing combination
            line = f"  ERROR {type(e).__name__}: {str(e).splitlines()[0][:140]}"
            times = ""
        tag = "  <- baseline" if (crit, rec) == BASELINE and not global_rank else ""
        dt = time.perf_counter() - t0
        name = f"{crit}{' --global' if global_rank else ''}"
        print(
            f"{name:<16}{rec:<12}{line}{dt:>8.1f}{tag}"
            if "ERROR" not in line
            else f"{name:<16}{rec:<12}{line} ({dt:.1f}s){tag}",
            flush=True,
        )
        if times:
            print(times, flush=True)

    if only:
        for crit, rec, global_rank in only:
            setting(crit, rec, global_rank)
        best = max(rows, key=lambda k: rows[k]) if rows else None
        return (best[:2], rows[best]) if best else (None, None)
    for crit in QUICK_CRITERIA if quick else CRITERIA:
        for rec in RECONSTRUCT:
            setting(crit, rec)
    if not rows:
        return None, None
    top = max(rows, key=lambda k: rows[k])[0]
    print(f"{top} with --global (half of all heads / neurons, not half per layer):")
    for rec in ("lsq", "block"):
        setting(top, rec, global_rank=True)
    best = max(rows, key=lambda k: rows[k])
    cos, nn = rows[best]
    ok = cos >= TARGET_COS and nn >= TARGET_NN
    label = f"{best[0]} + {best[1]}{' --global' if best[2] else ''}"
    print(
        f"best (by mean cos, then NN): {label}: cos {cos:.4f}, NN {nn:.3f}; "
        f"target cos >= {TARGET_COS}, NN >= {TARGET_NN}: {'REACHED' if ok else 'NOT reached'}"
    )
    b = rows.get((*BASELINE, False))
    if b is not None:
        print(f"baseline {BASELINE[0]} + {BASELINE[1]}: cos {b[0]:.4f}, NN {b[1]:.3f}")
    return best[:2], rows[best]


def run_digits(best) -> None:
    d = ROOT / "models" / "digits"
    path = d / "digits_cnn.onnx"
    test, calib = dict(np.load(d / "digits_test.npz")), dict(np.load(d / "digits_calib.npz"))
    cal_feeds = [{"input": calib["input"][i : i + 64]} for i in range(0, len(calib["input"]), 64)]
    print(
        f"\ndigits CNN, target 50% of MACs ({len(test['labels'])} test images, "
        f"{len(calib['input'])} calibration images)"
    )
    print(f"original: accuracy {accuracy(path.read_bytes(), test):.4f}")
    crit = best[0] if best else "flap"  # the best MiniLM criterion, with every reconstruction
    settings = [BASELINE] + [(crit, rec) for rec in RECONSTRUCT if (crit, rec) != BASELINE]
    for crit, rec in settings:
        t0 = time.perf_counter()
        try:
            res = prune_model(
                str(path),
                PruneOptions(target_macs=0.5, criterion=crit, reconstruct=rec, calib=cal_feeds),
            )
            macs = res.after["macs"] / res.before["macs"]
            line = f"accuracy {accuracy(res.model, test):.4f}, MACs kept {macs:.3f}"
        except Exception as e:
            line = f"ERROR {type(e).__name__}: {str(e).splitlines()[0][:140]}"
        print(f"{crit} + {rec}: {line} ({time.perf_counter() - t0:.1f}s)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer sentences and criteria")
    ap.add_argument("--calib-sentences", type=int, default=256, metavar="N")
    ap.add_argument(
        "--only", action="append", default=[], metavar="CRIT:REC[:global]",
        help="run only these MiniLM settings (repeatable), with the time of each stage",
    )  # fmt: skip
    ap.add_argument("--no-digits", action="store_true", help="skip the digits CNN")
    ap.add_argument("--no-minilm", action="store_true", help="skip MiniLM")
    args = ap.parse_args()
    only = parse_only(args.only)
    t0 = time.perf_counter()
    best = None
    if not args.no_minilm:
        best, _ = run_minilm(args.quick, args.calib_sentences, only)
    if not args.no_digits:
        run_digits(best)
    print(f"\ntotal {time.perf_counter() - t0:.1f}s")


if __name__ == "__main__":
    main()
