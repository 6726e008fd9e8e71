"""Benchmark: how far can *any* reconstruction from calibration data take MiniLM at 50%/50%?

``bench_quality.py`` measures graphprune's criteria and closed-form reconstructions. This
script asks what is possible at all with the same calibration text, by spending far more
compute than a post-training pruner should, in PyTorch:

* ``lsq``: one-shot least squares of each output projection (attention out, MLP down) on
  its kept inputs: the closed form graphprune's ``--reconstruct lsq`` solves;
* ``block``: layer-by-layer distillation. Each layer in turn gets the pruned model's own
  input and is trained (Adam, every kept weight: Q, K, V, O, both LayerNorms, both MLP
  matrices) to reproduce the original layer's output on the calibration tokens;
* ``e2e``: end-to-end distillation, i.e. fine-tuning every kept weight of the whole pruned
  model to reproduce the original sentence embeddings of the calibration text.

The units removed are the same in every row: FLAP scores (activation variance times the
squared norm of the output-projection column), 6 of 12 heads and 768 of 1536 neurons per
layer. Pruning is done by masking, which computes exactly the function of the sliced
model. Calibration and evaluation text, embeddings and metrics are those of
``bench_quality.py``: the eval sentences are never trained on.

Run: ``python benchmarks/bench_quality_ceiling.py [--calib-sentences N] [--epochs E]``
(default: every calibration sentence, 8 epochs for each trained row; needs torch and
transformers, ~15 min on 2 cores).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_quality as bq  # noqa: E402

HEADS, HEAD_DIM, WIDTH, NEURONS = 12, 32, 384, 1536
EPS = 1e-12


def layer_params(layer) -> dict:
    a = layer.attention
    mods = {
        "q": a.self.query,
        "k": a.self.key,
        "v": a.self.value,
        "o": a.output.dense,
        "ln1": a.output.LayerNorm,
        "up": layer.intermediate.dense,
        "down": layer.output.dense,
        "ln2": layer.output.LayerNorm,
    }
    out = {}
    for name, m in mods.items():
        out[name + ".w"] = m.weight.detach().clone()
        out[name + ".b"] = m.bias.detach().clone()
    return out


def layer_forward(p: dict, h, mask_add, head_keep=None, neuron_keep=None, keep=None):
    """One BERT layer; ``head_keep``/``neuron_keep`` are 0/1 masks (pruned = masked)."""
    b, n, _ = h.shape

    def split(x):
        return x.view(b, n, HEADS, HEAD_DIM).transpose(1, 2)

    q = split(F.linear(h, p["q.w"], p["q.b"]))
    k = split(F.linear(h, p["k.w"], p["k.b"]))
    v = split(F.linear(h, p["v.w"], p["v.b"]))
    probs = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(HEAD_DIM) + mask_add, -1)
    ctx = (probs @ v).transpose(1, 2).reshape(b, n, WIDTH)
    if head_keep is not None:
        ctx = ctx * head_keep
    h1 = F.layer_norm(F.linear(ctx, p["o.w"], p["o.b"]) + h, (WIDTH,), p["ln1.w"], p["ln1.b"], EPS)
    inner = F.gelu(F.linear(h1, p["up.w"], p["up.b"]))
    if neuron_keep is not None:
        inner = inner * neuron_keep
    h2 = F.layer_norm(
        F.linear(inner, p["down.w"], p["down.b"]) + h1, (WIDTH,), p["ln2.w"], p["ln2.b"], EPS
    )
    if keep is not None:
        keep.update(ctx=ctx, inner=inner)
    return h2


class Model:
    def __init__(self, bert, feeds):
        self.bert = bert
        self.feeds = feeds
        self.masks = [
            ((1.0 - torch.tensor(f["attention_mask"])[:, None, None, :].float()) * -1e9)
            for f in feeds
        ]
        self.tokens = [torch.tensor(f["attention_mask"]).float()[..., None] for f in feeds]
        with torch.no_grad():
            self.inputs = [
                bert.embeddings(
                    input_ids=torch.tensor(f["input_ids"]),
                    token_type_ids=torch.zeros_like(torch.tensor(f["input_ids"])),
                )
                for f in feeds
            ]

    def embed(self, params, units, i, upto=None):
        h = self.inputs[i]
        for layer, p in enumerate(params[:upto]):
            h = layer_forward(p, h, self.masks[i], *units[layer])
        if upto is not None:
            return h
        m = self.tokens[i]
        return F.normalize((h * m).sum(1) / m.sum(1), dim=-1)

    def embed_all(self, params, units):
        with torch.no_grad():
            return torch.cat([self.embed(params, units, i) for i in range(len(self.feeds))])


def flap_units(params, cal: Model):
    """Per layer (head mask over the 384 context channels, neuron mask over 1536)."""
    units = []
    with torch.no_grad():
        hs = list(cal.inputs)
        for p in params:
            ctx, inner = [], []
            for i, h in enumerate(hs):
                kept = {}
                hs[i] = layer_forward(p, h, cal.masks[i], keep=kept)
                real = cal.tokens[i][..., 0].bool()
                ctx.append(kept["ctx"][real])
                inner.append(kept["inner"][real])
            ctx, inner = torch.cat(ctx), torch.cat(inner)
            head_score = (ctx.var(0) * (p["o.w"] ** 2).sum(0)).view(HEADS, HEAD_DIM).sum(1)
            neuron_score = inner.var(0) * (p["down.w"] ** 2).sum(0)
            heads = torch.zeros(HEADS)
            heads[head_score.argsort(descending=True)[: HEADS // 2]] = 1
            neurons = torch.zeros(NEURONS)
            neurons[neuron_score.argsort(descending=True)[: NEURONS // 2]] = 1
            units.append((heads.repeat_interleave(HEAD_DIM), neurons, ctx, inner))
    return units


def refit(x, y, keep, damping=0.01):
    """Least squares of y on the kept columns of x (+ bias), ridge-damped like graphprune."""
    xk = torch.cat([x[:, keep.bool()], torch.ones(len(x), 1)], 1).double()
    gram = xk.T @ xk
    gram += damping * gram.diag().mean() * torch.eye(len(gram), dtype=gram.dtype)
    sol = torch.linalg.solve(gram, xk.T @ y.double()).float()
    w = torch.zeros(y.shape[1], len(keep))
    w[:, keep.bool()] = sol[:-1].T
    return w, sol[-1]


def train(params, loss_of, steps, epochs, lr):
    ps = [{k: v.clone().requires_grad_(True) for k, v in p.items()} for p in params]
    opt = torch.optim.Adam([v for p in ps for v in p.values()], lr=lr)
    for _ in range(epochs):
        for i in range(steps):
            loss = loss_of(ps, i)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return [{k: v.detach() for k, v in p.items()} for p in ps]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calib-sentences", type=int, default=0, metavar="N", help="0: all")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-4, help="block-wise Adam step")
    ap.add_argument("--e2e-lr", type=float, default=5e-5)
    args = ap.parse_args()
    from transformers import AutoTokenizer, BertModel

    torch.manual_seed(0)
    t0 = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(bq.minilm_dir())
    bert = BertModel.from_pretrained(bq.minilm_dir()).eval()
    seen: set = set()
    cal_text = bq.sentences(bq.calib_texts(), seen)
    if args.calib_sentences:
        cal_text = bq.spread(cal_text, args.calib_sentences)
    ev_text = bq.spread(bq.sentences(bq.eval_texts(), seen), 200)
    cal = Model(bert, bq.encode(tokenizer, cal_text, by_length=True))
    ev = Model(bert, bq.encode(tokenizer, ev_text))
    print(f"calibration {len(cal_text)} sentences, evaluation {len(ev_text)} sentences")
    original = [layer_params(layer) for layer in bert.encoder.layer]
    full = [(None, None)] * len(original)
    ref = ev.embed_all(original, full)
    ref_nn = bq.nearest(ref.numpy())

    def report(name, params, units):
        emb = ev.embed_all(params, units).numpy()
        cos = float((emb * ref.numpy()).sum(1).mean())
        nn = float((bq.nearest(emb) == ref_nn).mean())
        print(f"{name:<44}{cos:>9.4f}{nn:>9.3f}{time.perf_counter() - t0:>9.0f}", flush=True)

    print(f"{'FLAP selection, 50% heads + 50% neurons':<44}{'mean cos':>9}{'NN':>9}{'t s':>9}")
    found = flap_units(original, cal)
    units = [(h, n) for h, n, _, _ in found]
    report("none (masked)", original, units)

    lsq = []
    for p, (heads, neurons, ctx, inner) in zip(original, found, strict=True):
        q = dict(p)
        q["o.w"], q["o.b"] = refit(ctx, F.linear(ctx, p["o.w"], p["o.b"]), heads)
        q["down.w"], q["down.b"] = refit(inner, F.linear(inner, p["down.w"], p["down.b"]), neurons)
        lsq.append(q)
    report("lsq (one-shot closed form)", lsq, units)

    # layer by layer: the pruned model's input, the original layer's output
    with torch.no_grad():
        target = [list(cal.inputs)]
        for p in original:
            target.append([layer_forward(p, h, cal.masks[i]) for i, h in enumerate(target[-1])])
    block = [dict(p) for p in lsq]
    current = list(cal.inputs)
    for layer in range(len(block)):

        def layer_loss(ps, i, layer=layer, current=current):
            out = layer_forward(ps[0], current[i], cal.masks[i], *units[layer])
            m = cal.tokens[i]
            return (((out - target[layer + 1][i]) ** 2) * m).sum() / m.sum()

        block[layer] = train([block[layer]], layer_loss, len(current), args.epochs, args.lr)[0]
        with torch.no_grad():
            current = [
                layer_forward(block[layer], h, cal.masks[i], *units[layer])
                for i, h in enumerate(current)
            ]
    report(f"block-wise distillation ({args.epochs} epochs)", block, units)

    with torch.no_grad():
        cal_ref = [cal.embed(original, full, i) for i in range(len(cal.feeds))]

    def e2e_loss(ps, i):
        return 1 - (cal.embed(ps, units, i) * cal_ref[i]).sum(-1).mean()

    e2e = train(lsq, e2e_loss, len(cal.feeds), args.epochs, args.e2e_lr)
    report(f"end-to-end distillation ({args.epochs} epochs)", e2e, units)
    print(f"target: mean cos >= {bq.TARGET_COS}, NN >= {bq.TARGET_NN}")


if __name__ == "__main__":
    main()
