"""The element space: every removable index of every dim is one element.

A *dim* is one axis seen by the analysis: an activation axis ``(tensor, axis)``, one use of a
constant ``(node, input slot, axis)`` (per use, so constants shared by unrelated nodes are
cloned instead of coupling them), or a *virtual* dim a rule invents (the groups of a grouped
conv). Each dim of size ``n`` owns ``n`` consecutive element ids. Op rules *link* elements
(index i of one dim is the same unit as index j of another); connected components of that
relation are the units, and units touching the same set of dims form a group.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(eq=False)
class Dim:
    id: int
    kind: str  # "act" | "const" | "virtual"
    tensor: str  # tensor name ("" for virtual)
    axis: int
    size: int
    base: int  # first element id
    node: object | None = None  # consuming node, for const uses and virtual dims
    slot: int = -1  # input slot of ``node`` for const uses

    def label(self) -> str:
        if self.kind == "virtual":
            return f"<{self.tensor}>"
        return f"{self.tensor}[{self.axis}]"


@dataclass
class ElementSpace:
    dims: list[Dim] = field(default_factory=list)
    index: dict[tuple, Dim] = field(default_factory=dict)
    n: int = 0
    _edges_a: list[np.ndarray] = field(default_factory=list)
    _edges_b: list[np.ndarray] = field(default_factory=list)
    frozen_elems: list[np.ndarray] = field(default_factory=list)
    frozen_codes: list[int] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    _reason_ids: dict[str, int] = field(default_factory=dict)
    #: reasons that only say "pruning this changes the function" (normalised widths)
    approximate: set[str] = field(default_factory=set)
    #: dim id -> tags a rule attached ("head": units are blocks split off by a Reshape)
    tags: dict[int, set[str]] = field(default_factory=dict)

    def dim(
        self,
        key: tuple,
        kind: str,
        tensor: str,
        axis: int,
        size: int | None,
        node=None,
        slot: int = -1,
    ) -> Dim:
        d = self.index.get(key)
        if d is not None:
            return d
        known = size is not None and size > 0
        d = Dim(len(self.dims), kind, tensor, axis, size if known else 1, self.n, node, slot)
        self.dims.append(d)
        self.index[key] = d
        self.n += d.size
        if not known:
            self.freeze(d, "size unknown (dynamic or symbolic axis)")
        return d

    def link(self, a: Dim, ia, b: Dim, ib) -> None:
        ia = np.asarray(ia, dtype=np.int64)
        ib = np.asarray(ib, dtype=np.int64)
        self._edges_a.append(a.base + ia)
        self._edges_b.append(b.base + ib)

    def tag(self, d: Dim, tag: str) -> None:
        self.tags.setdefault(d.id, set()).add(tag)

    def freeze(self, d: Dim, reason: str, idx=None) -> None:
        code = self._reason_ids.setdefault(reason, len(self.reasons))
        if code == len(self.reasons):
            self.reasons.append(reason)
        elems = d.base + (np.arange(d.size) if idx is None else np.asarray(idx, dtype=np.int64))
        self.frozen_elems.append(elems)
        self.frozen_codes.append(code)

    def elem_dim(self) -> np.ndarray:
        """Dim id of every element."""
        return np.repeat(np.arange(len(self.dims)), [d.size for d in self.dims])

    def components(self) -> np.ndarray:
        """Component label (smallest element id of the component) for every element."""
        lab = np.arange(self.n)
        if not self._edges_a:
            return lab
        a = np.concatenate(self._edges_a)
        b = np.concatenate(self._edges_b)
        while True:
            la, lb = lab[a], lab[b]
            differ = la != lb
            if not differ.any():
                return lab
            la, lb = la[differ], lb[differ]
            lo, hi = np.minimum(la, lb), np.maximum(la, lb)
            np.minimum.at(lab, hi, lo)
            while True:  # pointer jumping until every element points at a root
                nxt = lab[lab]
                if np.array_equal(nxt, lab):
                    break
                lab = nxt

    def frozen_reason_codes(self) -> tuple[np.ndarray, np.ndarray]:
        """(element ids, reason code) for every freeze mark."""
        if not self.frozen_elems:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        elems = np.concatenate(self.frozen_elems)
        codes = np.repeat(self.frozen_codes, [len(e) for e in self.frozen_elems])
        return elems, codes
