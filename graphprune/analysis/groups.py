"""Analysis driver: run every op rule, find units (components) and groups (units that touch
the same dims), and record why each frozen group is frozen."""

from __future__ import annotations

import fnmatch
import logging
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from .context import LinkContext, Unsupported, tensor_shape
from .rules import rule_for
from .space import Dim, ElementSpace

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Group:
    """Coupled dims sharing one index space of units; ``unit_labels[u]`` names unit u."""

    id: int
    dims: list[Dim]
    unit_labels: np.ndarray
    kind: str
    frozen_reasons: list[str] = field(default_factory=list)
    key: str = ""  # stable name: anchor dim (+ first index / use), unique in the analysis
    approximate: frozenset[str] = frozenset()  # the analysis' approximate-only reasons

    @property
    def anchor(self) -> Dim:
        return self.dims[0]

    @property
    def units(self) -> int:
        return len(self.unit_labels)

    @property
    def frozen(self) -> bool:
        return bool(self.frozen_reasons)

    @property
    def width_only(self) -> bool:
        """Frozen only because pruning it changes a normalisation (``--hidden`` lifts it)."""
        return self.frozen and all(r in self.approximate for r in self.frozen_reasons)

    @property
    def unit_width(self) -> int:
        """Indices one unit spans in an activation (head_dim for a head group; for GQA the
        query columns of one KV group)."""
        dims = [d for d in self.dims if d.kind == "act"] or self.carriers()
        return max((d.size // self.units for d in dims), default=1)

    def carriers(self) -> list[Dim]:
        return [d for d in self.dims if d.kind == "const"]


@dataclass
class Analysis:
    graph: gs.Graph
    space: ElementSpace
    labels: np.ndarray  # component label per element
    groups: list[Group]
    contractions: list
    opset: int
    implicit: set[str] = field(default_factory=set)  # names read inside subgraphs
    linked: set[int] = field(default_factory=set)  # id() of nodes whose rule mapped them
    notes: dict[int, dict] = field(default_factory=dict)  # per-node decisions for refold

    @property
    def prunable(self) -> list[Group]:
        return [g for g in self.groups if not g.frozen]

    @property
    def frozen(self) -> list[Group]:
        return [g for g in self.groups if g.frozen]

    def group(self, key: str) -> Group:
        for g in self.groups:
            if g.key == key:
                return g
        raise KeyError(key)


def _subgraph_names(node: gs.Node) -> set[str]:
    names: set[str] = set()
    for v in node.attrs.values():
        subs = v if isinstance(v, list) else [v]
        for sub in subs:
            if isinstance(sub, gs.Graph):
                for n in sub.nodes:
                    names.update(t.name for t in n.inputs)
                    names.update(_subgraph_names(n))
    return names


def _has_subgraph(node: gs.Node) -> bool:
    return any(
        isinstance(v, gs.Graph) or (isinstance(v, list) and v and isinstance(v[0], gs.Graph))
        for v in node.attrs.values()
    )


def _freeze_tensor(ctx: LinkContext, t: gs.Tensor, reason: str) -> None:
    shape = tensor_shape(t)
    if shape is None or isinstance(t, gs.Constant):
        return
    for ax in range(len(shape)):
        d = ctx.space.dim(("act", t.name, ax), "act", t.name, ax, shape[ax])
        ctx.space.freeze(d, reason)


def _matches(name: str, patterns) -> str | None:
    for p in patterns:
        if name and (fnmatch.fnmatchcase(name, p) or p == name):
            return p
    return None


def analyze(graph: gs.Graph, opset: int, exclude=(), gqa: str = "kv") -> Analysis:
    """Link every node's dims by its op rule and build the groups. ``gqa`` chooses the GQA
    unit: "kv" (a KV head with its query heads) or "query" (one query slot of every KV
    group, KV heads kept)."""
    space = ElementSpace()
    ctx = LinkContext(space, opset, {"gqa": gqa})
    implicit: set[str] = set()
    linked: set[int] = set()
    for node in graph.nodes:
        ctx.node, ctx.touched = node, set()
        acts = [
            t
            for t in list(node.inputs) + list(node.outputs)
            if t.name and not isinstance(t, gs.Constant)
        ]
        pat = _matches(node.name, exclude)
        if pat is not None:
            for t in acts:
                _freeze_tensor(ctx, t, f"excluded by user ({pat})")
        if _has_subgraph(node):
            implicit |= _subgraph_names(node)
            for t in acts:
                _freeze_tensor(ctx, t, f"{node.op}: op with a subgraph")
            continue
        rule = rule_for(node)
        if rule is None:
            dom = f"{node.domain}." if node.domain else ""
            for t in acts:
                _freeze_tensor(ctx, t, f"no rule for op {dom}{node.op}")
            continue
        try:
            rule.link(node, ctx)
        except Unsupported as e:
            for t in acts:
                _freeze_tensor(ctx, t, f"{node.op}: {e}")
            continue
        linked.add(id(node))
        for t in acts:  # anything the rule did not map is frozen
            shape = tensor_shape(t)
            for ax in range(len(shape or ())):
                d = space.index.get(("act", t.name, ax))
                if d is None or d.id not in ctx.touched:
                    d = d or space.dim(("act", t.name, ax), "act", t.name, ax, shape[ax])
                    space.freeze(d, f"{node.op}: axis not mapped")
    for t in graph.inputs:
        _freeze_tensor(ctx, t, "graph input")
    for t in graph.outputs:
        _freeze_tensor(ctx, t, "graph output")
    for name, t in graph.tensors().items():
        if name in implicit:
            _freeze_tensor(ctx, t, "used inside a subgraph")
        pat = _matches(name, exclude)
        if pat is not None:
            _freeze_tensor(ctx, t, f"excluded by user ({pat})")
            for d in space.dims:  # constant uses are keyed per use
                if d.kind == "const" and d.tensor == name:
                    space.freeze(d, f"excluded by user ({pat})")
    labels = space.components()
    groups = _build_groups(space, labels)
    log.info(
        "analysis: %d dims, %d elements, %d groups (%d frozen)",
        len(space.dims),
        space.n,
        len(groups),
        sum(g.frozen for g in groups),
    )
    return Analysis(
        graph, space, labels, groups, ctx.contractions, opset, implicit, linked, ctx.notes
    )


def _is_weight(d: Dim) -> bool:
    if d.kind != "const":
        return False
    t = d.node.inputs[d.slot]
    if not isinstance(t, gs.Constant):
        return False
    if t.values.dtype.kind == "f":
        return True
    rule = rule_for(d.node)
    return rule is not None and d.slot in rule.weight_slots


def _build_groups(space: ElementSpace, labels: np.ndarray) -> list[Group]:
    """Units = components holding a float constant (a weight); group = same set of dims."""
    edim = space.elem_dim()
    weight_dims = np.array([_is_weight(d) for d in space.dims], dtype=bool)
    if not weight_dims.any():
        return []
    unit_labels = np.unique(labels[weight_dims[edim]])
    in_unit = np.isin(labels, unit_labels)
    ndims = len(space.dims)
    keys = np.unique(labels[in_unit] * ndims + edim[in_unit])  # sorted (label, dim) pairs
    pairs = np.stack([keys // ndims, keys % ndims], axis=1)
    bounds = np.flatnonzero(np.diff(pairs[:, 0])) + 1
    by_signature: dict[tuple, list[int]] = defaultdict(list)
    for chunk in np.split(pairs, bounds):
        by_signature[tuple(chunk[:, 1].tolist())].append(int(chunk[0, 0]))
    groups = []
    approximate = frozenset(space.approximate)
    for sig, labs in sorted(by_signature.items(), key=lambda kv: kv[0]):
        dims = [space.dims[i] for i in sig]
        if all(d.kind == "const" for d in dims):
            continue  # a constant axis linked to no activation: nothing to prune
        kind = "head" if any("head" in space.tags.get(d.id, ()) for d in dims) else _kind(dims)
        groups.append(
            Group(
                len(groups),
                dims,
                np.array(sorted(labs)),
                kind,
                approximate=approximate,
            )
        )
    _assign_keys(groups, labels)
    # frozen reasons
    label_group = np.full(space.n, -1)
    for g in groups:
        label_group[g.unit_labels] = g.id
    elems, codes = space.frozen_reason_codes()
    if len(elems):
        gids = label_group[labels[elems]]
        hit = gids >= 0
        for gid, code in np.unique(np.stack([gids[hit], codes[hit]], 1), axis=0):
            groups[gid].frozen_reasons.append(space.reasons[code])
    for g in groups:  # the residual stream: frozen (also) by a normalisation over its width
        if any(r in space.approximate for r in g.frozen_reasons):
            g.kind = "hidden"
    return groups


def _assign_keys(groups: list[Group], labels: np.ndarray) -> None:
    """Key = the group's first activation dim (its first dim if it has none), with
    ``@index`` of the first unit there when it is not 0 (groups sharing a dim: Split, Concat),
    and ``#n`` in the rare case that this is still ambiguous."""
    seen: dict[str, int] = {}
    for g in groups:
        name = next((d for d in g.dims if d.kind == "act"), g.anchor)
        where = np.flatnonzero(labels[name.base : name.base + name.size] == g.unit_labels[0])
        first = int(where[0]) if len(where) else 0
        key = name.label() + (f"@{first}" if first else "")
        n = seen.get(key, 0)
        seen[key] = n + 1
        g.key = key if n == 0 else f"{key}#{n}"


def _kind(dims: list[Dim]) -> str:
    """The ``unit_kind`` of the first op whose weight the group slices (its rule says)."""
    for d in dims:
        rule = rule_for(d.node) if d.kind == "const" else None
        if rule is None:
            continue
        if rule.unit_kind:
            return rule.unit_kind
        if d.slot in rule.weight_slots:  # quantized data: the kind of the op reading it
            for consumer in d.node.outputs[0].outputs if d.node.outputs else ():
                r = rule_for(consumer)
                if r is not None and r.unit_kind:
                    return r.unit_kind
    return "other"
