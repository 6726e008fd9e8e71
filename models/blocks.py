"""Hand-written transformer pieces for tests and benchmarks: a plain pre-norm block, a tiny
LM around it, and a LLaMA-style block (GQA via expand/reshape repeat_kv, RoPE via
rotate_half, SwiGLU, RMSNorm written out). Written the way model code is, so the exported
graphs have the patterns graphprune must recognise with no help."""

import torch
from torch import nn


class Block(nn.Module):
    """Pre-norm transformer block written the plain way (view/transpose/matmul/softmax)."""

    def __init__(self, d=32, heads=4, ff=64):
        super().__init__()
        self.h, self.dh = heads, d // heads
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.f1, self.f2 = nn.Linear(d, ff), nn.Linear(ff, d)

    def forward(self, x):
        b, s, d = x.shape
        y = self.ln1(x)
        q, k, v = (
            p(y).view(b, s, self.h, self.dh).transpose(1, 2) for p in (self.q, self.k, self.v)
        )
        att = ((q @ k.transpose(-1, -2)) / self.dh**0.5).softmax(-1)
        x = x + self.o((att @ v).transpose(1, 2).reshape(b, s, d))
        return x + self.f2(nn.functional.gelu(self.f1(self.ln2(x))))


class TinyLM(nn.Module):
    """Token embedding -> blocks -> final LayerNorm -> LM head: the width is internal."""

    def __init__(self, vocab=50, d=32):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.blocks = nn.Sequential(Block(d), Block(d))
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab)

    def forward(self, ids):
        return self.head(self.norm(self.blocks(self.emb(ids))))


class RMSNorm(nn.Module):
    """RMSNorm written out (Pow, ReduceMean, Add, Sqrt/Reciprocal, Mul) as LLaMA code does."""

    def __init__(self, d):
        super().__init__()
        self.w = nn.Parameter(torch.rand(d) + 0.5)

    def forward(self, x):
        return self.w * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)


def rotate_half(x):
    """RoPE's half rotation on head_dim: Slice, Neg, Concat in the graph."""
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


class GQABlock(nn.Module):
    """LLaMA-style block: GQA (``hq`` query heads share ``hkv`` KV heads through repeat_kv's
    expand + reshape), RoPE, causal mask, SwiGLU MLP."""

    def __init__(self, d=64, hq=8, hkv=2, ff=96):
        super().__init__()
        self.hq, self.hkv, self.dh = hq, hkv, d // hq
        self.q = nn.Linear(d, hq * self.dh, bias=False)
        self.k = nn.Linear(d, hkv * self.dh, bias=False)
        self.v = nn.Linear(d, hkv * self.dh, bias=False)
        self.o = nn.Linear(hq * self.dh, d, bias=False)
        self.n1, self.n2 = RMSNorm(d), RMSNorm(d)
        self.gate = nn.Linear(d, ff, bias=False)
        self.up = nn.Linear(d, ff, bias=False)
        self.down = nn.Linear(ff, d, bias=False)

    def forward(self, x, cos, sin):
        b, t, d = x.shape
        y = self.n1(x)
        q = self.q(y).view(b, t, self.hq, self.dh).transpose(1, 2)
        k = self.k(y).view(b, t, self.hkv, self.dh).transpose(1, 2)
        v = self.v(y).view(b, t, self.hkv, self.dh).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        rep = self.hq // self.hkv
        k = k[:, :, None].expand(b, self.hkv, rep, t, self.dh).reshape(b, self.hq, t, self.dh)
        v = v[:, :, None].expand(b, self.hkv, rep, t, self.dh).reshape(b, self.hq, t, self.dh)
        att = (q @ k.transpose(-1, -2)) / self.dh**0.5
        mask = torch.triu(torch.full((t, t), float("-inf")), 1)
        att = (att + mask).softmax(-1)
        x = x + self.o((att @ v).transpose(1, 2).reshape(b, t, -1))
        y = self.n2(x)
        return x + self.down(nn.functional.silu(self.gate(y)) * self.up(y))


class TinyLlama(nn.Module):
    """Embedding, GQA blocks sharing one RoPE table, final RMSNorm, LM head."""

    def __init__(self, vocab=50, d=64, n=2):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.blocks = nn.ModuleList(GQABlock(d) for _ in range(n))
        self.norm = RMSNorm(d)
        self.head = nn.Linear(d, vocab, bias=False)
        self.dh = 8

    def forward(self, ids):
        t = ids.shape[1]
        pos = torch.arange(t, dtype=torch.float32)[:, None]
        inv = 1.0 / (10000 ** (torch.arange(0, self.dh, 2, dtype=torch.float32) / self.dh))
        ang = torch.cat([pos * inv, pos * inv], -1)
        cos, sin = ang.cos()[None, None], ang.sin()[None, None]
        x = self.emb(ids)
        for blk in self.blocks:
            x = blk(x, cos, sin)
        return self.head(self.norm(x))
