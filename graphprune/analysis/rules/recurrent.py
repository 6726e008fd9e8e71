"""Recurrent layers: LSTM, GRU and RNN. A unit is one hidden unit h of the layer.

ONNX stacks the gates gate-major along the rows of the weights: ``W [dirs, G*H, I]`` and
``R [dirs, G*H, H]`` hold gate k's row for unit h at ``k*H + h``, with G = 4 for LSTM
(gates i, o, f, c), 3 for GRU (z, r, h) and 1 for RNN; ``B [dirs, 2*G*H]`` is ``[Wb | Rb]``,
so 2G blocks; LSTM peepholes ``P [dirs, 3*H]`` are 3 blocks (i, o, f). Removing unit h
removes those rows from every gate, R's column h (the unit's own recurrent input), the
hidden axis of ``initial_h`` / ``initial_c`` and of the outputs ``Y`` / ``Y_h`` / ``Y_c``,
and re-folds ``hidden_size``. Both directions of a bidirectional layer share the index h
(one hidden axis of Y), so one unit is the same h in the forward and the backward pass;
the directions themselves are kept.

The input features X[..., I] are contracted against W's axis 2, like a Gemm's K. A unit's
value reaches the kept units only through R's column h (GRU's reset gate multiplies R's
product or the state entering it, elementwise per unit, with either ``linear_before_reset``),
so R's hidden-input axis is the parity masking point, with no activation to measure.
``layout=1`` (batch-major) is mapped too, although ONNX Runtime cannot run it. Frozen: the
directions axis, and the whole node when X/W/R shapes are unknown or the weights do not
match ``hidden_size`` and ``direction``.

A bidirectional Y flattened for the next layer (Transpose to [S, B, dirs, H], Reshape to
[S, B, dirs*H]) puts unit h at d*H + h for both directions d: the unit is the inner factor
of that merge, not the leading one (``is_direction_axis`` tells a layout rule so).
"""

from __future__ import annotations

from typing import NamedTuple

from ..context import Unsupported
from .registry import MacTerm, OpRule, register, structural_axis

GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
PEEPHOLES = 3  # LSTM: i, o, f
DIRECTIONS = {"forward": 1, "reverse": 1, "bidirectional": 2}
X, W, R, B, SEQ_LENS, INITIAL_H, INITIAL_C, P = range(8)  # input slots (C, P: LSTM only)


class Layout(NamedTuple):
    """Axes of sequence and batch in X, of directions and batch in Y and in the states
    (initial_h, initial_c, Y_h, Y_c). Y's sequence axis is X's; hidden is always last."""

    seq: int  # X and Y
    batch: int  # X
    y_dirs: int
    y_batch: int
    state_dirs: int
    state_batch: int


LAYOUTS = {
    0: Layout(seq=0, batch=1, y_dirs=1, y_batch=2, state_dirs=0, state_batch=1),
    1: Layout(seq=1, batch=0, y_dirs=2, y_batch=0, state_dirs=1, state_batch=0),
}


def _layout(attr) -> Layout:
    layout = LAYOUTS.get(int(attr))
    if layout is None:
        raise Unsupported(f"layout={attr} is not defined")
    return layout


def _directions(ctx) -> int:
    direction = ctx.attr("direction", "forward")
    if isinstance(direction, bytes):
        direction = direction.decode()
    if direction not in DIRECTIONS:
        raise Unsupported(f"direction {direction!r}")
    return DIRECTIONS[direction]


def _hidden_size(ctx, gates: int) -> int:
    """``hidden_size``, checked against the weight shapes (all must be static)."""
    x, w, r = ctx.in_shape(X), ctx.in_shape(W), ctx.in_shape(R)
    if any(s is None or len(s) != 3 for s in (x, w, r)) or None in w or None in r:
        raise Unsupported("shapes of X, W or R unknown")
    h = int(ctx.attr("hidden_size", r[2]))
    dirs = _directions(ctx)
    if w[:2] != (dirs, gates * h) or r != (dirs, gates * h, h):
        raise Unsupported(f"W {w} / R {r} do not match hidden_size={h} and {dirs} direction(s)")
    return h


def _gate_blocks(ctx, slot: int, hidden, blocks: int) -> None:
    """Axis 1 of input ``slot`` is ``blocks`` gate blocks of H, each indexed by unit h."""
    if ctx.inp(slot) is None:
        return
    d = ctx.in_dim(slot, 1)
    if d.size != blocks * hidden.size:
        raise Unsupported(f"input {slot} has {d.size} rows, not {blocks}x{hidden.size}")
    for k in range(blocks):
        ctx.offset(d, hidden, k * hidden.size)


def _link_weights(ctx, node, hidden, gates: int) -> None:
    _gate_blocks(ctx, W, hidden, gates)
    _gate_blocks(ctx, R, hidden, gates)
    _gate_blocks(ctx, B, hidden, 2 * gates)
    if node.op == "LSTM":
        _gate_blocks(ctx, P, hidden, PEEPHOLES)
    r_in = ctx.in_dim(R, 2)
    ctx.identity(r_in, hidden)
    ctx.contract(R, r_in)  # the only path from unit h to the other units
    x_in, w_in = ctx.in_dim(X, 2), ctx.in_dim(W, 2)
    ctx.identity(x_in, w_in)
    ctx.contract(W, w_in, x_in)


def _link_state(ctx, dims, hidden, batch, axes: tuple[int, int, int]) -> None:
    """A state or output (``dims(axis)`` gives its dims) with ``axes`` = (directions,
    batch, hidden). Directions are kept; a constant's batch axis is no unit of anything."""
    dirs_axis, batch_axis, hidden_axis = axes
    ctx.identity(dims(hidden_axis), hidden)
    ctx.freeze(dims(dirs_axis), "directions are not pruned")
    b = dims(batch_axis)
    if b.kind == "act":
        ctx.identity(b, batch)


def _link_states(ctx, node, lay: Layout, hidden) -> None:
    seq, batch = ctx.in_dim(X, lay.seq), ctx.in_dim(X, lay.batch)
    if ctx.inp(SEQ_LENS) is not None and ctx.value(SEQ_LENS) is None:
        ctx.identity(ctx.in_dim(SEQ_LENS, 0), batch)
    state = (lay.state_dirs, lay.state_batch, 2)
    lstm = node.op == "LSTM"
    for slot in (INITIAL_H, INITIAL_C) if lstm else (INITIAL_H,):
        if ctx.inp(slot) is not None:
            _link_state(ctx, lambda ax, s=slot: ctx.in_dim(s, ax), hidden, batch, state)
    if ctx.out(0) is not None:
        y_axes = (lay.y_dirs, lay.y_batch, 3)
        _link_state(ctx, lambda ax: ctx.out_dim(0, ax), hidden, batch, y_axes)
        ctx.identity(seq, ctx.out_dim(0, lay.seq))
    for o in (1, 2) if lstm else (1,):
        if ctx.out(o) is not None:
            _link_state(ctx, lambda ax, o=o: ctx.out_dim(o, ax), hidden, batch, state)


@structural_axis
def is_direction_axis(t, axis: int, depth: int = 8) -> bool:
    """Axis ``axis`` of activation ``t`` is, through Transposes, the directions axis of a
    recurrent node's Y."""
    for _ in range(depth):
        node = t.inputs[0] if t.inputs else None
        if node is None or node.op != "Transpose" or not node.attrs.get("perm"):
            break
        axis, t = int(node.attrs["perm"][axis]), node.inputs[0]
    node = t.inputs[0] if t.inputs else None
    if node is None or node.op not in GATES or not node.outputs or node.outputs[0] is not t:
        return False
    lay = LAYOUTS.get(int(node.attrs.get("layout", 0)))
    return lay is not None and axis == lay.y_dirs


def _hidden_dim(node, rc):
    return rc.removal.analysis.space.index[("virtual", id(node), "hidden")]


@register
class Recurrent(OpRule):
    ops = tuple(GATES)
    unit_kind = "recurrent"

    def link(self, node, ctx):
        gates = GATES[node.op]
        lay = _layout(ctx.attr("layout", 0))
        hidden = ctx.virtual("hidden", _hidden_size(ctx, gates))
        _link_weights(ctx, node, hidden, gates)
        _link_states(ctx, node, lay, hidden)

    def refold(self, node, rc):
        d = _hidden_dim(node, rc)
        removed = len(rc.removal.of_dim(d))
        if removed:
            node.attrs["hidden_size"] = d.size - removed

    def macs(self, node):
        """Per step and batch row, the input projection (every gate row of W times the
        input) and the recurrence (every gate row of R times the previous state)."""
        x, w, r = node.in_shape(X), node.in_shape(W), node.in_shape(R)
        if any(s is None or len(s) != 3 for s in (x, w, r)):
            return []
        lay = LAYOUTS.get(int(node.attr("layout", 0)), LAYOUTS[0])
        steps = node.in_size(X, lay.seq) * node.in_size(X, lay.batch)
        return [
            MacTerm(steps * node.in_numel(W), (("in", W, 1), ("in", W, 2))),
            MacTerm(steps * node.in_numel(R), (("in", R, 1), ("in", R, 2))),
        ]
