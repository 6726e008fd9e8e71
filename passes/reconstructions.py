"""Reconstructions (``--reconstruct``): how the consumers of removed units are refitted.

One registered class per mode, with its one-line help, whether it needs calibration data,
and which shared calibration statistics it reads (``needs``, as in ``graphprune.criteria``).
Each is used by two passes: ``fit-<name>`` computes its updates from the original weights
before anything is sliced (so the plain removal can be checked against the masked original
first), and ``reconstruct-<name>`` applies them to the pruned graph.
"""

from __future__ import annotations

import time

import numpy as np

from graphprune.errors import RewriteError

from .base import Pass, PassContext, PassResult
from .reconstruct import Update, apply_updates, lsq_updates, plan_updates
from .reconstruct_layerwise import layerwise_updates


class Reconstruction:
    name = ""
    help = ""
    #: statistics: "moments" (captured with the criterion's, before the plan), "gram" (its
    #: Gram rows captured after the plan, streamed, for the consumers it refits)
    needs: frozenset[str] = frozenset()
    needs_calibration = True

    def fit(self, ctx: PassContext) -> list[Update]:  # pragma: no cover - interface
        raise NotImplementedError


RECONSTRUCTIONS: dict[str, Reconstruction] = {}


def register(cls: type[Reconstruction]) -> type[Reconstruction]:
    RECONSTRUCTIONS[cls.name] = cls()
    return cls


def _lsq(ctx: PassContext) -> list[Update]:
    """One-shot lsq for the consumers the plan refits: from the criterion's Gram matrices
    where it holds them, its Gram rows captured now otherwise."""
    opts = ctx.options
    return lsq_updates(
        ctx.removal, ctx.original, ctx.feeds, opts.damping, opts.hidden > 0, acts=ctx.acts
    )


@register
class NoReconstruction(Reconstruction):
    name = "none"
    help = "no refit: the pruned model computes exactly the masked original"
    needs_calibration = False

    def fit(self, ctx):
        return []


@register
class Bias(Reconstruction):
    name = "bias"
    help = "fold each removed unit's mean contribution into its consumer's bias (FLAP)"
    needs = frozenset({"moments"})

    def fit(self, ctx):
        return plan_updates(ctx.removal, ctx.acts, False, ctx.options.damping)


@register
class Lsq(Reconstruction):
    name = "lsq"
    help = (
        "least-squares refit of each consumer's kept weights and bias from the original "
        "model's calibration moments, in one pass"
    )
    needs = frozenset({"moments", "gram"})

    def fit(self, ctx):
        return _lsq(ctx)


@register
class LsqSeq(Reconstruction):
    name = "lsq-seq"
    help = (
        "the lsq refit layer by layer in graph order, each layer fitted on the inputs the "
        "already pruned earlier layers deliver (one pass over the data per wave)"
    )
    needs = frozenset()  # captures its own joint statistics, wave by wave

    def fit(self, ctx):
        return layerwise_updates(
            ctx.removal, ctx.original, ctx.feeds, ctx.options.damping, times=ctx.fit_times
        )


@register
class Block(Reconstruction):
    name = "block"
    help = (
        "one-shot lsq, then each MLP block (producers, elementwise activation or gate, "
        "consumer; plain or SwiGLU/GeGLU) refined as a whole by Adam steps on calibration "
        "tokens, layer by layer; other consumers keep the lsq refit"
    )
    needs = frozenset({"moments", "gram"})

    def fit(self, ctx):
        t0 = time.perf_counter()
        start = _lsq(ctx)
        ctx.fit_times["lsq"] = time.perf_counter() - t0
        return layerwise_updates(
            ctx.removal, ctx.original, ctx.feeds, ctx.options.damping, start, ctx.fit_times
        )


class FitReconstruction(Pass):
    """Compute a reconstruction's updates (the graph is not touched yet)."""

    requires = ("removal",)

    def __init__(self, recon: Reconstruction):
        self.recon = recon
        self.name = f"fit-{recon.name}"

    def run(self, graph, ctx: PassContext) -> PassResult:
        updates = self.recon.fit(ctx)
        for up in updates:  # a degenerate fit must never be written
            for what, arr in (("weight", up.weight), ("bias", up.bias)):
                if arr is not None and not np.isfinite(arr).all():
                    raise RewriteError(
                        f"the {self.recon.name} refit of {up.node.name} has non-finite "
                        f"{what} values; nothing written (try a larger --damping)"
                    )
        ctx.updates[self.recon.name] = updates
        times = ", ".join(f"{k} {v:.1f}s" for k, v in ctx.fit_times.items())
        return PassResult(
            False, f"{len(updates)} consumers fitted" + (f" ({times})" if times else "")
        )


class ApplyReconstruction(Pass):
    """Apply the fitted updates to the pruned graph, unless the plain removal failed parity."""

    requires = ("removal", "pruned")

    def __init__(self, recon: Reconstruction):
        self.recon = recon
        self.name = f"reconstruct-{recon.name}"

    def run(self, graph, ctx: PassContext) -> PassResult:
        if ctx.parity is not None and ctx.parity.status == "failed":
            return PassResult(False, "skipped: the plain removal failed parity")
        done = apply_updates(ctx.removal, ctx.updates.get(self.recon.name, []))
        ctx.reconstructed = done > 0
        return PassResult(done > 0, f"{done} consumers reconstructed")
