"""The standard-domain (ai.onnx) transformer ops of opset 23: ``Attention``,
``RMSNormalization`` and ``RotaryEmbedding``, as the dynamo exporter emits them for
``scaled_dot_product_attention``, ``nn.RMSNorm`` and ``torch.onnx.ops.rotary_embedding``.

Attention takes Q, K, V either 4-D ``[B, heads, S, head_size]`` (the head count is the
shape's) or 3-D ``[B, S, heads*head_size]`` (head-major columns, the counts are the
``q_num_heads`` / ``kv_num_heads`` attributes, re-folded). Query head h reads KV head
``h // (q_num_heads / kv_num_heads)``. The unit is one KV head with its query heads (one head
without GQA); with ``--gqa query`` it is one query slot in every KV group, and the KV heads
are kept. The heads axis of every state that carries it (Y, past/present key and value,
qk_matmul_output, a per-head mask) follows. Key positions (the softmax axis) and the key
head size (contracted by QKᵀ, and the default scale reads it) are frozen; the value head
size is elementwise and passes V to Y.

RMSNormalization is LayerNormalization without the bias: its normalised width is the
residual stream, pruned only with ``--hidden`` (approximate). RotaryEmbedding rotates
pairs inside each head, so heads are its units and the dims inside a head stay whole; a
3-D input's ``num_heads`` is re-folded.
"""

from __future__ import annotations

import numpy as np

from ..context import Unsupported
from .norm import LayerNorm
from .registry import MacTerm, OpRule, register

KV_KEPT = "KV heads kept (--gqa query)"
KEY_POSITIONS = "key positions (softmax axis)"
KEY_HEAD_SIZE = "key head size (QKᵀ contracts it, the scale reads it)"
PACKED_HEAD_SIZE = "head size (packed inside the heads of 3-D Q/K/V)"
ROTARY_PAIRS = "rotary pairs within a head (only whole heads are pruned)"


def _heads_of(ctx, d, units, width: int, unit_of) -> None:
    """Element i of ``d`` belongs to head ``i // width``, which is unit ``unit_of(head)`` of
    the virtual dim ``units`` (``width`` 1: a heads axis; head_size: head-major columns)."""
    i = np.arange(d.size)
    ctx.space.link(d, i, units, unit_of(i // width))


def _same(ctx, a, b) -> None:
    """Identity where the sizes agree (batch, sequence); otherwise both are only touched
    (a broadcast, or a size the op handles itself)."""
    if a.size == b.size:
        ctx.identity(a, b)
    else:
        ctx.touch(a, b)


def _size_present(node, rank: int, nkv: int, hs: int, hv: int) -> None:
    """Shape inference leaves present_key/present_value unsized when there is no past:
    they are ``[B, kvN, past + kv_sequence, head_size]`` by the op's definition."""
    for o, src, past, size in ((1, 1, 4, hs), (2, 2, 5, hv)):
        if o >= len(node.outputs) or node.outputs[o].name == "" or node.outputs[o].shape:
            continue
        kv = node.inputs[src].shape
        seq = kv[2 if rank == 4 else 1]
        if past < len(node.inputs) and node.inputs[past].name:
            p = node.inputs[past].shape
            given = p is not None and isinstance(p[2], int) and isinstance(seq, int)
            seq = p[2] + seq if given else None
        node.outputs[o].shape = [kv[0], nkv, seq, size]


def _virtual_new_size(node, rc, tag: str) -> tuple[int, int]:
    d = rc.removal.analysis.space.index[("virtual", id(node), tag)]
    return d.size, d.size - len(rc.removal.of_dim(d))


@register
class Attention(OpRule):
    """ai.onnx Attention (opset 23 on: 24 adds ``nonpad_kv_seqlen``, 25 sliding windows)."""

    ops = ("Attention",)

    def link(self, node, ctx):
        rank, nq, nkv, hs, hv = self._layout(node, ctx)
        rep = nq // nkv
        query_mode = ctx.options.get("gqa") == "query" and rep > 1
        if query_mode:  # unit r: query head g*rep + r of every KV group g; KV heads kept
            units = ctx.virtual("heads", rep)
            kv_units = ctx.virtual("kv_heads", nkv)
            ctx.tag(kv_units, "head")
            ctx.freeze(kv_units, KV_KEPT)

            def q_unit(h):
                return h % rep

        else:  # unit g: KV head g and query heads g*rep .. g*rep + rep - 1
            units = kv_units = ctx.virtual("heads", nkv)

            def q_unit(h):
                return h // rep

        ctx.tag(units, "head")

        def kv_unit(g):
            return g

        four = rank == 4
        head_ax, seq_ax = (1, 2) if four else (2, 1)
        _heads_of(ctx, ctx.in_dim(0, head_ax), units, 1 if four else hs, q_unit)
        _heads_of(ctx, ctx.in_dim(1, head_ax), kv_units, 1 if four else hs, kv_unit)
        _heads_of(ctx, ctx.in_dim(2, head_ax), kv_units, 1 if four else hv, kv_unit)
        _heads_of(ctx, ctx.out_dim(0, head_ax), units, 1 if four else hv, q_unit)
        batch, q_seq = ctx.in_dim(0, 0), ctx.in_dim(0, seq_ax)
        for d in (ctx.in_dim(1, 0), ctx.in_dim(2, 0), ctx.out_dim(0, 0)):
            _same(ctx, d, batch)
        _same(ctx, ctx.out_dim(0, seq_ax), q_seq)
        key_pos = [ctx.in_dim(1, seq_ax), ctx.in_dim(2, seq_ax)]
        key_size = [ctx.in_dim(0, 3), ctx.in_dim(1, 3)] if four else []
        value_size = [ctx.in_dim(2, 3), ctx.out_dim(0, 3)] if four else []

        # past_key/past_value (inputs 4, 5), present_key/present_value (outputs 1, 2):
        # [B, kvN, T, head_size]
        for is_input, slot, is_key in ((1, 4, 1), (1, 5, 0), (0, 1, 1), (0, 2, 0)):
            if (ctx.inp(slot) if is_input else ctx.out(slot)) is None:
                continue
            dim = ctx.in_dim if is_input else ctx.out_dim
            _same(ctx, dim(slot, 0), batch)
            _heads_of(ctx, dim(slot, 1), kv_units, 1, kv_unit)
            key_pos.append(dim(slot, 2))
            if not four:  # the head size lives inside the packed columns of Q/K/V
                ctx.freeze(dim(slot, 3), PACKED_HEAD_SIZE)
            else:
                (key_size if is_key else value_size).append(dim(slot, 3))
        if ctx.out(3) is not None:  # qk_matmul_output [B, qN, Sq, T]
            _same(ctx, ctx.out_dim(3, 0), batch)
            _heads_of(ctx, ctx.out_dim(3, 1), units, 1, q_unit)
            _same(ctx, ctx.out_dim(3, 2), q_seq)
            key_pos.append(ctx.out_dim(3, 3))
        if ctx.inp(3) is not None:
            self._link_mask(ctx, nq, units, q_unit, batch, q_seq, key_pos)
        if ctx.inp(6) is not None:  # nonpad_kv_seqlen [B] (opset 24)
            _same(ctx, ctx.in_dim(6, 0), batch)

        for group, reason in ((key_pos, KEY_POSITIONS), (key_size, KEY_HEAD_SIZE)):
            for d in group:
                _same(ctx, d, group[0])
                ctx.freeze(d, reason)
        for d in value_size:  # Y[..., j] reads V[..., j] only: elementwise
            _same(ctx, d, value_size[0])
        if ctx.attr("is_causal", 0) or ctx.inp(6) is not None:
            ctx.freeze(q_seq, "the causal frontier reads the query length")
        ctx.notes[id(node)] = {"query_mode": query_mode, "nq": nq, "nkv": nkv}

    @staticmethod
    def _layout(node, ctx) -> tuple[int, int, int, int, int]:
        """(rank, query heads, KV heads, head size, value head size), once every input and
        output the rule maps has a rank it understands."""
        q, k, v = (ctx.in_shape(i) for i in range(3))
        if q is None or k is None or v is None:
            raise Unsupported("rank of Q/K/V unknown")
        rank = len(q)
        if rank not in (3, 4) or len(k) != rank or len(v) != rank:
            raise Unsupported("Q/K/V are not all 3-D or all 4-D")
        aq, akv = int(ctx.attr("q_num_heads", 0) or 0), int(ctx.attr("kv_num_heads", 0) or 0)
        if rank == 4:
            nq, nkv, hs, hv = q[1], k[1], q[3], v[3]
            if None in (nq, nkv, hs, hv) or v[1] != nkv or k[3] != hs:
                raise Unsupported("head counts or head sizes unknown")
            if (aq and aq != nq) or (akv and akv != nkv):
                raise Unsupported("q_num_heads/kv_num_heads disagree with the 4-D shapes")
        else:
            if aq <= 0 or akv <= 0:
                raise Unsupported("3-D Q/K/V without q_num_heads/kv_num_heads")
            wq, wk, wv = q[2], k[2], v[2]
            if None in (wq, wk, wv) or wq % aq or wk % akv or wv % akv or wq // aq != wk // akv:
                raise Unsupported("hidden sizes do not split into heads")
            nq, nkv, hs, hv = aq, akv, wq // aq, wv // akv
        if nq % nkv:
            raise Unsupported(f"q_num_heads {nq} not a multiple of kv_num_heads {nkv}")
        y = ctx.out_shape(0)
        if y is None or len(y) != rank:
            raise Unsupported("rank of Y unknown")
        _size_present(node, rank, nkv, hs, hv)
        states = [(ctx.in_shape(i), nkv) for i in (4, 5) if ctx.inp(i) is not None]
        states += [(ctx.out_shape(o), nkv) for o in (1, 2) if ctx.out(o) is not None]
        states += [(ctx.out_shape(3), nq)] if ctx.out(3) is not None else []
        if any(shape is None or len(shape) != 4 or shape[1] != n for shape, n in states):
            raise Unsupported("past/present/qk_matmul_output not [B, heads, T, size]")
        mask = ctx.in_shape(3)
        if ctx.inp(3) is not None and (mask is None or not 1 <= len(mask) <= 4):
            raise Unsupported("rank of attn_mask unknown")
        return rank, nq, nkv, hs, hv

    @staticmethod
    def _link_mask(ctx, nq, units, q_unit, batch, q_seq, key_pos) -> None:
        """attn_mask broadcasts (right-aligned) to [B, qN, Sq, T]: a per-head axis follows
        the query heads; a constant mask only carries that axis."""
        shape = ctx.in_shape(3)
        const = ctx.value(3) is not None
        for ax, size in enumerate(shape):
            role = ax + 4 - len(shape)  # 0 batch, 1 heads, 2 query positions, 3 keys
            if role == 1 and size == nq:
                _heads_of(ctx, ctx.in_dim(3, ax), units, 1, q_unit)
            elif const:
                continue
            elif role == 0:
                _same(ctx, ctx.in_dim(3, ax), batch)
            elif role == 2:
                _same(ctx, ctx.in_dim(3, ax), q_seq)
            elif role == 3:
                key_pos.append(ctx.in_dim(3, ax))
            else:  # a broadcast heads axis
                ctx.touch(ctx.in_dim(3, ax))

    def refold(self, node, rc):
        note = rc.removal.analysis.notes.get(id(node))
        if note is None:
            return
        old, new = _virtual_new_size(node, rc, "heads")
        if new == old:
            return
        nq, nkv = note["nq"], note["nkv"]
        if note["query_mode"]:
            counts = {"q_num_heads": nkv * new, "kv_num_heads": nkv}
        else:
            counts = {"q_num_heads": nq // nkv * new, "kv_num_heads": new}
        for name, value in counts.items():
            if node.attrs.get(name):  # 4-D inputs carry their counts in the shapes
                node.attrs[name] = value

    def macs(self, node):
        """QKᵀ and PV: ``B x qN x Sq x T`` scores, each a dot product over head_size, each
        weighing a value row of v_head_size; both scale with the query heads kept."""
        q, k, v = (node.in_shape(i) for i in range(3))
        if q is None or k is None or v is None or len(q) not in (3, 4):
            return []

        def n(x):
            return int(x) if x else 1

        if len(q) == 4:
            b, nq, sq, hs = (n(s) for s in q)
            skv, hv = n(k[2]), n(v[3])
            heads = ("in", 0, 1)
            qk_refs, pv_refs = (heads, ("in", 0, 3)), (heads, ("in", 2, 3))
        else:
            nq, nkv = n(node.attr("q_num_heads")), n(node.attr("kv_num_heads"))
            b, sq, hs = n(q[0]), n(q[1]), max(n(q[2]) // nq, 1)
            skv, hv = n(k[1]), max(n(v[2]) // nkv, 1)
            qk_refs = pv_refs = (("in", 0, 2),)
        past = node.in_shape(4) if node.has_input(4) else None
        total = skv + (n(past[2]) if past is not None and len(past) == 4 else 0)
        scores = float(b * nq * sq * total)
        return [MacTerm(scores * hs, qk_refs), MacTerm(scores * hv, pv_refs)]


@register
class RMSNormalization(LayerNorm):
    """LayerNormalization without bias (opset 23): axes from ``axis`` on are normalised,
    linked to ``scale`` and frozen as approximate (``--hidden``)."""

    ops = ("RMSNormalization",)


@register
class RotaryEmbedding(OpRule):
    """ai.onnx RotaryEmbedding (opset 23): X is ``[B, heads, S, head_size]`` or
    ``[B, S, heads*head_size]`` with the ``num_heads`` attribute. Heads are independent;
    the rotation pairs entries inside a head, so a head is the unit and head_size stays."""

    ops = ("RotaryEmbedding",)

    def link(self, node, ctx):
        x = ctx.in_shape(0)
        if x is None or len(x) not in (3, 4):
            raise Unsupported("X is not 3-D or 4-D")
        n = int(ctx.attr("num_heads", 0) or 0)
        if len(x) == 3 and (n <= 0 or x[2] is None or x[2] % n):
            raise Unsupported("3-D input without a num_heads that splits it")
        positions = ctx.inp(3) is not None
        caches = [ctx.in_shape(slot) for slot in (1, 2)]
        if any(c is None for c in caches) or (positions and len(ctx.in_shape(3) or ()) != 2):
            raise Unsupported("rank of the cos/sin caches or position_ids unknown")
        seq_ax = 2 if len(x) == 4 else 1
        if len(x) == 4:
            for ax in range(3):
                ctx.identity(ctx.in_dim(0, ax), ctx.out_dim(0, ax))
            head_size = ctx.in_dim(0, 3)
            ctx.identity(head_size, ctx.out_dim(0, 3))
            ctx.freeze(head_size, ROTARY_PAIRS)
        else:
            heads = ctx.virtual("heads", n)
            ctx.tag(heads, "head")
            for ax in range(2):
                ctx.identity(ctx.in_dim(0, ax), ctx.out_dim(0, ax))
            for d in (ctx.in_dim(0, 2), ctx.out_dim(0, 2)):
                _heads_of(ctx, d, heads, x[2] // n, lambda h: h)
        batch, seq = ctx.in_dim(0, 0), ctx.in_dim(0, seq_ax)
        for slot, shape in zip((1, 2), caches, strict=True):
            # [max_position, rd/2] with position_ids, else [B, S, rd/2]
            if ctx.value(slot) is not None:
                continue
            if not positions and len(shape) == 3:
                _same(ctx, ctx.in_dim(slot, 0), batch)
                _same(ctx, ctx.in_dim(slot, 1), seq)
            else:
                ctx.touch(*(ctx.in_dim(slot, ax) for ax in range(len(shape) - 1)))
            ctx.freeze(ctx.in_dim(slot, len(shape) - 1), ROTARY_PAIRS)
        if positions and ctx.value(3) is None:
            _same(ctx, ctx.in_dim(3, 0), batch)
            _same(ctx, ctx.in_dim(3, 1), seq)

    def refold(self, node, rc):
        n = int(node.attrs.get("num_heads", 0) or 0)
        if not n:
            return
        x = node.inputs[0]
        if len(rc.old_shape(x)) == 3:
            old, new = _virtual_new_size(node, rc, "heads")
        else:
            old, new = rc.old_shape(x)[1], rc.new_size(x, 1)
        if new != old:
            node.attrs["num_heads"] = new
