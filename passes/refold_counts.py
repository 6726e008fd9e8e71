"""Re-fold every count a node encodes (Conv ``group``, Split sizes, Reshape targets, Slice
bounds, Resize sizes...) by calling its op rule's ``refold``. Runs before constants are
sliced, while the old shapes are still known. New values become new constants owned by the
node, so a shape constant shared with other nodes is never edited for all of them."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from graphprune.analysis.rules import rule_for

from .base import Pass, PassContext, PassResult
from .removal import Removal


class RefoldContext:
    """What ``OpRule.refold`` sees: old shapes, new sizes, removed indices, constants."""

    def __init__(self, removal: Removal):
        self.removal = removal
        self.opset = removal.analysis.opset
        self.node: gs.Node | None = None
        self.changed = 0
        self._taken = set(removal.analysis.graph.tensors())
        self._next = 0

    def _name(self, what: str) -> str:
        """A new tensor name, the same on every run of the same prune (byte-identical
        output), unused in the graph (a model pruned twice), and not ending in a number:
        ONNX Runtime's fusions name what they add by bumping a trailing number, which
        collided with a consecutive ``..._85`` of ours ("Attempt to replace the existing
        tensor")."""
        while True:
            name = f"graphprune_refold{self._next}_{what}"
            self._next += 1
            if name not in self._taken:
                self._taken.add(name)
                return name

    def old_shape(self, t):
        return self.removal.old_shape(t)

    def new_size(self, t, axis: int) -> int:
        return self.removal.new_size(t, axis)

    def removed(self, t, axis: int) -> np.ndarray:
        return self.removal.removed(t, axis)

    def value_of(self, slot: int) -> np.ndarray | None:
        ins = self.node.inputs
        if slot >= len(ins) or not isinstance(ins[slot], gs.Constant):
            return None
        return np.asarray(ins[slot].values)

    def constant(self, values: np.ndarray) -> gs.Constant:
        return gs.Constant(self._name("const"), np.asarray(values))

    def add_node(self, op: str, inputs: list, attrs: dict | None = None) -> gs.Variable:
        """A new int64 shape-computing node (used to rebuild run-time shape operands)."""
        out = gs.Variable(self._name(op), dtype=np.int64)
        node = gs.Node(op, name=out.name, attrs=attrs or {}, inputs=inputs, outputs=[out])
        self.removal.analysis.graph.nodes.append(node)
        self.changed += 1
        return out

    def set_input(self, node: gs.Node, slot: int, values: np.ndarray) -> None:
        base = node.name or node.op
        old = node.inputs[slot] if slot < len(node.inputs) else None
        if isinstance(old, gs.Constant) and len(old.outputs) == 1:
            name = old.name  # owned by this node alone: it keeps its name, only its value changes
        else:
            name = self._name(f"{base}_input{slot}_of")
        const = gs.Constant(name, np.asarray(values))
        while len(node.inputs) <= slot:
            node.inputs.append(gs.Variable.empty())
        node.inputs[slot] = const
        self.changed += 1


class RefoldCounts(Pass):
    name = "refold-counts"
    requires = ("removal",)

    def run(self, graph, ctx: PassContext) -> PassResult:
        removal: Removal = ctx.removal
        rc = RefoldContext(removal)
        for node in list(removal.analysis.graph.nodes):
            rule = rule_for(node)
            if rule is None or id(node) not in removal.analysis.linked:
                continue  # a node its rule could not map has every dim frozen
            rc.node = node
            attrs = dict(node.attrs)
            rule.refold(node, rc)
            rc.changed += node.attrs != attrs
        return PassResult(rc.changed > 0, f"{rc.changed} counts re-folded")
