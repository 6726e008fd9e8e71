"""Registry of op rules: one class per op family, keyed by ``(domain, op_type)``.

A rule's ``link`` declares how the dims of a node's inputs and outputs are linked (and which
are contracted, for parity masking); its ``refold`` rewrites the counts the node encodes
(attributes, shape constants) once the plan is known. Axes of activations a rule leaves
untouched are frozen by the analysis, so a rule only has to say what it understands.
"""

from __future__ import annotations

import onnx_graphsurgeon as gs

RULES: dict[tuple[str, str], OpRule] = {}


class OpRule:
    ops: tuple[str, ...] = ()
    domain: str = ""

    def link(self, node: gs.Node, ctx) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def refold(self, node: gs.Node, rc) -> None:
        """Rewrite counts encoded by ``node``; most ops encode none."""


def register(cls: type[OpRule]) -> type[OpRule]:
    inst = cls()
    for op in cls.ops:
        RULES[(cls.domain, op)] = inst
    return cls


def rule_for(node: gs.Node) -> OpRule | None:
    domain = node.domain or ""
    if domain == "ai.onnx":
        domain = ""
    return RULES.get((domain, node.op))
