"""Parity: the exported model against the masked original, through ONNX Runtime. Exact for a
plain removal; after a reconstruction (which changes the function on purpose) the deviation
is measured and the earlier exact check is kept as ``mask_check``."""

from __future__ import annotations

from graphprune.errors import RewriteError
from graphprune.validate import ParityResult, check_input, compare, session

from .base import Pass, PassContext, PassResult


class Parity(Pass):
    name = "parity"
    requires = ("pruned",)

    def __init__(self, after_reconstruction: bool = False):
        self.after_reconstruction = after_reconstruction

    def run(self, graph, ctx: PassContext) -> PassResult:
        if ctx.reference is None:
            try:
                session(ctx.pruned)  # it must at least load
            except RewriteError:
                check_input(ctx.original)  # the input's fault (exit 3) if it fails too
                raise
            ctx.parity = ParityResult("skipped")
            return PassResult(False, "skipped; the model loads in ONNX Runtime")
        if self.after_reconstruction and not ctx.reconstructed:
            return PassResult(False, "skipped: nothing was reconstructed; the verdict stands")
        checked = None
        if self.after_reconstruction and ctx.parity is not None:
            if ctx.parity.status == "failed":
                return PassResult(False, "skipped: the plain removal failed parity")
            checked = ctx.parity.status
        approximate = checked is not None or any(gp.approximate for gp in ctx.plan.groups)
        ctx.parity = compare(
            ctx.reference,
            ctx.pruned,
            feeds=ctx.parity_feeds,
            seed=ctx.options.seed,
            approximate=approximate,
            shapes=ctx.shapes,
        )
        ctx.parity.mask_check = checked
        p = ctx.parity
        return PassResult(False, f"{p.status} (max rel diff {p.max_rel_diff:.2e})")
