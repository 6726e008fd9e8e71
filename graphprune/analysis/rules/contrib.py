"""ONNX Runtime contrib ops (``com.microsoft``), as the transformer optimizer emits them.

Fused attention gets a virtual ``heads`` dim. Attention's packed weight is
``[C, Dq | Dk | Dv]`` with each block head-major (column ``off + h*H + j`` is head h), its
bias likewise; the output's width is ``Dv = N*Hv``. Removing heads slices those columns and
re-folds ``num_heads`` (and ``qkv_hidden_sizes`` when present): ORT derives the head size
from ``width / num_heads`` and runs silently wrong if the count is left stale.
GroupQueryAttention's unit is a KV head with its ``N/kvN`` query heads.
Skip/Embed/Simplified LayerNorms only carry the hidden width (approximate, like LayerNorm);
the Bias* / FastGelu family is elementwise with broadcasting. FusedMatMul (ORT's level-2
optimizer: a MatMul with a transposed operand and/or a scale) is MatMul with the last two
axes of an operand swapped where ``transA`` / ``transB`` say.

MACs of fused attention: the projections whose weights are inputs of the node (Attention's
packed ``[C, Dq | Dk | Dv]``: B x S x C x (Dq + Dk + Dv)), plus, per head, the scores QKᵀ
and the context PV, each sequence x total sequence x head size: B x S x T x (Dq + Dv) in
all. T is the query length, or past + new length where a past (or the present) tells it.
MultiHeadAttention and GroupQueryAttention take projected Q/K/V (their MatMuls count the
projections). GQA's scores are those of its ``num_heads`` query heads; T is
``total_sequence_length`` when it is a constant, else present's (or past + new) length.
"""

from __future__ import annotations

import numpy as np

from ..context import Unsupported
from .elementwise import link_all_axes, link_broadcast
from .linear import _contraction_macs, link_matmul
from .norm import APPROXIMATE
from .registry import MacTerm, NodeView, OpRule, register

MS = "com.microsoft"


def _head_blocks(ctx, d, heads, offset: int, width: int, group: int = 1) -> None:
    """Elements ``offset + h*width + j`` of ``d`` belong to unit ``h // group`` of ``heads``."""
    i = np.arange(width * heads.size * group)
    ctx.space.link(d, offset + i, heads, i // width // group)


def _batch_seq(node: NodeView) -> tuple[int, int, tuple]:
    """Batch, sequence length of the query (input 0) and the refs of those two axes."""
    return node.in_size(0, 0), node.in_size(0, 1), (("in", 0, 0), ("in", 0, 1))


def _heads_new_size(node, rc) -> tuple[int, int]:
    d = rc.removal.analysis.space.index[("virtual", id(node), "heads")]
    return d.size, d.size - len(rc.removal.of_dim(d))


@register
class Attention(OpRule):
    domain = MS
    ops = ("Attention",)

    def link(self, node, ctx):
        x, w, y = ctx.in_shape(0), ctx.in_shape(1), ctx.out_shape(0)
        n = int(ctx.attr("num_heads", 0))
        if x is None or w is None or y is None or n <= 0 or ctx.value(1) is None:
            raise Unsupported("shapes or weights unknown")
        if ctx.inp(4) is not None or ctx.out(1) is not None:
            raise Unsupported("past/present state carries the head count")
        sizes = ctx.attr("qkv_hidden_sizes") or [w[1] // 3] * 3
        dq, dk, dv = (int(s) for s in sizes)
        if dq % n or dv % n or dq != dk or dq + dk + dv != w[1]:
            raise Unsupported("packed weight does not split into heads")
        heads = ctx.virtual("heads", n)
        ctx.tag(heads, "head")
        for slot in (1, 2):
            if ctx.inp(slot) is None:
                continue
            d = ctx.in_dim(slot, 1 if slot == 1 else 0)
            _head_blocks(ctx, d, heads, 0, dq // n)
            _head_blocks(ctx, d, heads, dq, dk // n)
            _head_blocks(ctx, d, heads, dq + dk, dv // n)
        w_in = ctx.in_dim(1, 0)
        x = ctx.in_dim(0, 2)
        ctx.identity(x, w_in)
        ctx.contract(1, w_in, x)
        for ax in (0, 1):
            ctx.identity(ctx.in_dim(0, ax), ctx.out_dim(0, ax))
        _head_blocks(ctx, ctx.out_dim(0, 2), heads, 0, dv // n)

    def refold(self, node, rc):
        old, new = _heads_new_size(node, rc)
        if new == old:
            return
        node.attrs["num_heads"] = new
        if node.attrs.get("qkv_hidden_sizes"):
            node.attrs["qkv_hidden_sizes"] = [
                int(s) * new // old for s in node.attrs["qkv_hidden_sizes"]
            ]

    def macs(self, node):
        x, w = node.in_shape(0), node.in_shape(1)
        if x is None or w is None or len(x) != 3 or len(w) != 2:
            return []
        b, s, refs = _batch_seq(node)
        width = node.in_size(1, 1)
        sizes = node.attr("qkv_hidden_sizes") or [width // 3] * 3
        dq, dv = int(sizes[0]), int(sizes[2])
        if node.out_known(1, 3):  # present (2, B, N, T, H)
            t = node.out_size(1, 3)
        elif node.has_input(4):  # past (2, B, N, P, H)
            t = node.in_size(4, 3) + s
        else:
            t = s
        heads = ("virtual", "heads")
        projection = b * s * node.in_size(0, 2) * width
        return [
            MacTerm(float(projection), (*refs, ("in", 0, 2), heads)),
            MacTerm(float(b * s * t * (dq + dv)), (*refs, heads)),
        ]


@register
class MultiHeadAttention(OpRule):
    """Separate 3-D query/key/value (weights live in the MatMuls feeding them); ``bias`` is
    ``[bq | bk | bv]``, each head-major."""

    domain = MS
    ops = ("MultiHeadAttention",)

    def link(self, node, ctx):
        n = int(ctx.attr("num_heads", 0))
        shapes = [ctx.in_shape(i) for i in range(3)]
        if n <= 0 or any(s is None or len(s) != 3 for s in shapes) or ctx.out(1) is not None:
            raise Unsupported("packed, cached or unknown query/key/value")
        if any(ctx.inp(i) is not None for i in range(5, len(node.inputs))):
            raise Unsupported("past/attention-bias inputs carry the head count")
        heads = ctx.virtual("heads", n)
        ctx.tag(heads, "head")
        widths = [s[2] for s in shapes]
        if any(wd is None or wd % n for wd in widths):
            raise Unsupported("width not divisible by num_heads")
        for i, wd in enumerate(widths):
            _head_blocks(ctx, ctx.in_dim(i, 2), heads, 0, wd // n)
            ctx.touch(ctx.in_dim(i, 0), ctx.in_dim(i, 1))
        if ctx.inp(3) is not None:
            bias = ctx.in_dim(3, 0)
            off = 0
            for wd in widths:
                _head_blocks(ctx, bias, heads, off, wd // n)
                off += wd
        for ax in (0, 1):
            ctx.identity(ctx.in_dim(0, ax), ctx.out_dim(0, ax))
        _head_blocks(ctx, ctx.out_dim(0, 2), heads, 0, widths[2] // n)

    def refold(self, node, rc):
        old, new = _heads_new_size(node, rc)
        if new != old:
            node.attrs["num_heads"] = new

    def macs(self, node):
        q = node.in_shape(0)
        if q is None or len(q) not in (3, 5):
            return []
        b, s, refs = _batch_seq(node)
        # query (B, S, D), or packed Q/K/V (B, S, N, 3, H)
        d = node.in_size(0, 2) * (node.in_size(0, 4) if len(q) == 5 else 1)
        dv = node.out_size(0, 2) if node.out_known(0, 2) else d
        k = node.in_shape(1) if node.has_input(1) else None
        if node.out_known(1, 2):  # present_key (B, N, T, H)
            t = node.out_size(1, 2)
        else:  # key (B, L, D), packed K/V (B, L, N, 2, H) or (B, N, L, H); none: packed QKV
            t = s if k is None else node.in_size(1, 2 if len(k) == 4 else 1)
            if node.has_input(6):  # past_key (B, N, P, H)
                t += node.in_size(6, 2)
        return [MacTerm(float(b * s * t * (d + dv)), (*refs, ("virtual", "heads")))]


@register
class GroupQueryAttention(OpRule):
    """Packed or separate Q/K/V; a unit is one KV head with its ``num_heads/kv_num_heads``
    query heads, so the ratio stays whole."""

    domain = MS
    ops = ("GroupQueryAttention",)

    def link(self, node, ctx):
        n, kv = int(ctx.attr("num_heads", 0)), int(ctx.attr("kv_num_heads", 0))
        q = ctx.in_shape(0)
        if n <= 0 or kv <= 0 or n % kv or q is None or len(q) != 3 or q[2] is None:
            raise Unsupported("head counts or query shape unknown")
        rep = n // kv
        groups = ctx.virtual("heads", kv)
        ctx.tag(groups, "head")
        qd = ctx.in_dim(0, 2)
        if ctx.inp(1) is None:  # packed [Q | K | V]
            h = q[2] // (n + 2 * kv)
            _head_blocks(ctx, qd, groups, 0, h, rep)
            _head_blocks(ctx, qd, groups, n * h, h)
            _head_blocks(ctx, qd, groups, (n + kv) * h, h)
        else:
            h = q[2] // n
            _head_blocks(ctx, qd, groups, 0, h, rep)
            for i in (1, 2):
                _head_blocks(ctx, ctx.in_dim(i, 2), groups, 0, h)
                ctx.touch(ctx.in_dim(i, 0), ctx.in_dim(i, 1))
        for slot in (3, 4):  # past key / value (B, kvN, T, H)
            if ctx.inp(slot) is not None:
                ctx.identity(ctx.in_dim(slot, 1), groups)
        for o in (1, 2):
            if ctx.out(o) is not None:
                ctx.identity(ctx.out_dim(o, 1), groups)
        for ax in (0, 1):
            ctx.identity(ctx.in_dim(0, ax), ctx.out_dim(0, ax))
        _head_blocks(ctx, ctx.out_dim(0, 2), groups, 0, h, rep)

    def refold(self, node, rc):
        old, new = _heads_new_size(node, rc)
        if new != old:
            rep = int(node.attrs["num_heads"]) // old
            node.attrs["kv_num_heads"] = new
            node.attrs["num_heads"] = new * rep

    def macs(self, node):
        n, kv = int(node.attr("num_heads", 0)), int(node.attr("kv_num_heads", 0))
        q = node.in_shape(0)
        if n <= 0 or q is None or len(q) != 3:
            return []
        b, s, refs = _batch_seq(node)
        if node.out_known(0, 2):  # output (B, S, N*H)
            width = node.out_size(0, 2)
        else:
            per_head = n if node.has_input(1) else n + 2 * max(kv, 0)
            width = n * (node.in_size(0, 2) // per_head)
        total = node.value(6)
        if total is not None and np.size(total) == 1 and int(np.ravel(total)[0]) > 0:
            t = int(np.ravel(total)[0])
        elif node.out_known(1, 2):  # present_key (B, kvN, T, H)
            t = node.out_size(1, 2)
        elif node.has_input(3):  # past_key (B, kvN, P, H)
            t = node.in_size(3, 2) + s
        else:
            t = s
        # N query heads: S x T x H for the scores and as much for the context; the output
        # width N*H is linked to the query heads whichever unit the analysis chose
        return [MacTerm(float(2 * b * s * t * width), (*refs, ("out", 0, 2)))]


@register
class FusedMatMul(OpRule):
    """``alpha * op(A) @ op(B)``, op transposing the last two axes where ``transA`` /
    ``transB`` is set; the batch-transposing variants are not mapped."""

    domain = MS
    ops = ("FusedMatMul",)
    unit_kind = "neuron"

    def link(self, node, ctx):
        if int(ctx.attr("transBatchA", 0)) or int(ctx.attr("transBatchB", 0)):
            raise Unsupported("batch-transposed operand")
        ta, tb = bool(int(ctx.attr("transA", 0))), bool(int(ctx.attr("transB", 0)))
        link_matmul(ctx, "FusedMatMul", ta, tb)

    def macs(self, node):
        a = node.in_shape(0)
        if a is None or len(a) < 2:
            return []
        return _contraction_macs(node, len(a) - 2 if int(node.attr("transA", 0)) else len(a) - 1)


def _link_norm_params(ctx, param_slots, width_dim) -> None:
    for i in param_slots:
        if ctx.inp(i) is not None:
            ctx.identity(ctx.in_dim(i, 0), width_dim)


@register
class SkipLayerNorm(OpRule):
    """``out = LN(input + skip + bias)``; output 3 is that sum (the next residual)."""

    domain = MS
    ops = ("SkipLayerNormalization", "SkipSimplifiedLayerNormalization")

    def link(self, node, ctx):
        x = ctx.in_shape(0)
        if x is None:
            raise Unsupported("rank unknown")
        link_broadcast(ctx, [0, 1])
        for o in (3,):
            if ctx.out(o) is not None:
                link_all_axes(ctx, 0, o)
        width = ctx.out_dim(0, len(x) - 1)
        params = (2, 3, 4) if node.op == "SkipLayerNormalization" else (2, 3)
        _link_norm_params(ctx, params, width)
        for o in (1, 2):
            if ctx.out(o) is not None:
                ctx.touch(*(ctx.out_dim(o, ax) for ax in range(len(ctx.out_shape(o) or ()))))
        ctx.approximate(width, APPROXIMATE)


@register
class SimplifiedLayerNorm(OpRule):
    """RMSNorm; ORT registers it in the default domain."""

    ops = ("SimplifiedLayerNormalization",)

    def link(self, node, ctx):
        x = ctx.in_shape(0)
        if x is None:
            raise Unsupported("rank unknown")
        if int(ctx.attr("axis", -1)) % len(x) != len(x) - 1:
            raise Unsupported("normalises more than the last axis")
        link_all_axes(ctx)
        width = ctx.out_dim(0, len(x) - 1)
        _link_norm_params(ctx, (1,), width)
        for o in (1,):
            if ctx.out(o) is not None:
                ctx.touch(*(ctx.out_dim(o, ax) for ax in range(len(ctx.out_shape(o) or ()))))
        ctx.approximate(width, APPROXIMATE)


@register
class SimplifiedLayerNormMs(SimplifiedLayerNorm):
    domain = MS


@register
class EmbedLayerNorm(OpRule):
    """Word + position (+ segment) embeddings, then LayerNorm: tables' width is the output's."""

    domain = MS
    ops = ("EmbedLayerNormalization",)

    def link(self, node, ctx):
        y = ctx.out_shape(0)
        ids = ctx.in_shape(0)
        if y is None or ids is None:
            raise Unsupported("rank unknown")
        width = ctx.out_dim(0, 2)
        for ax in (0, 1):
            ctx.identity(ctx.in_dim(0, ax), ctx.out_dim(0, ax))
        for slot in (2, 3, 4):  # word, position, segment tables [rows, D]
            if ctx.inp(slot) is not None:
                ctx.identity(ctx.in_dim(slot, 1), width)
        _link_norm_params(ctx, (5, 6), width)
        if ctx.out(2) is not None:  # embedding_sum
            for ax in range(3):
                ctx.identity(ctx.out_dim(2, ax), ctx.out_dim(0, ax))
        for slot in (1, 7, 8):
            if ctx.inp(slot) is not None:
                ctx.touch(*(ctx.in_dim(slot, ax) for ax in range(len(ctx.in_shape(slot) or ()))))
        if ctx.out(1) is not None:
            ctx.touch(*(ctx.out_dim(1, ax) for ax in range(len(ctx.out_shape(1) or ()))))
        ctx.approximate(width, APPROXIMATE)


@register
class BiasActivations(OpRule):
    """``act(X + bias)`` / ``X + bias + skip``: broadcasting like Add."""

    domain = MS
    ops = ("BiasGelu", "FastGelu", "Gelu", "QuickGelu", "BiasAdd", "FastGeluWithBias")

    def link(self, node, ctx):
        link_broadcast(ctx, [i for i in range(len(node.inputs)) if ctx.inp(i) is not None])


@register
class RotaryEmbedding(OpRule):
    """Rotates each head's first ``rotary_embedding_dim`` entries; heads are independent.
    With a 3-D input the head count is an attribute and is re-folded."""

    domain = MS
    ops = ("RotaryEmbedding",)

    def link(self, node, ctx):
        x = ctx.in_shape(0)
        if x is None or x[-1] is None:
            raise Unsupported("rank unknown")
        n = int(ctx.attr("num_heads", 0))
        if len(x) == 3 and n == 0:
            raise Unsupported("3-D input without num_heads: head size read from the cache")
        link_all_axes(ctx)
        for slot in range(1, len(node.inputs)):
            if ctx.inp(slot) is not None and ctx.value(slot) is None:
                shape = ctx.in_shape(slot) or ()
                ctx.touch(*(ctx.in_dim(slot, ax) for ax in range(len(shape))))

    def refold(self, node, rc):
        n = int(node.attrs.get("num_heads", 0))
        old = rc.old_shape(node.inputs[0])
        if n and len(old) == 3:
            node.attrs["num_heads"] = n * rc.new_size(node.inputs[0], 2) // old[2]
