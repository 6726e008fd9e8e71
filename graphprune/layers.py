"""The per-layer rows of a plan, for the summary table and the report: computed from the
analysis before the rewrite changes the graph it describes."""

from __future__ import annotations

import numpy as np

from .analysis.groups import Analysis
from .cost import CostModel
from .plan import Plan


def layer_rows(analysis: Analysis, plan: Plan) -> list[dict]:
    """Per pruned group (a layer's units and everything coupled to them): units before and
    after, the share of the original MACs that scales with the group, and the share its
    removal takes off (each alone, from the cost model)."""
    cost = CostModel(analysis)
    none = np.zeros(0, int)
    full = cost.cost(none, "macs") or 1.0
    by_key = {g.key: g for g in analysis.groups}
    rows = []
    for gp in plan.groups:
        g = by_key.get(gp.key)
        share = removed = 0.0
        if g is not None:
            share = (full - cost.cost(g.unit_labels, "macs")) / full
            valid = [u for u in gp.remove if 0 <= u < g.units]  # a bad replayed plan: exit 4 later
            removed = (full - cost.cost(g.unit_labels[valid], "macs")) / full
        rows.append(
            {
                "key": gp.key,
                "kind": gp.kind,
                "units_before": gp.units,
                "units_after": gp.units - len(gp.remove),
                "macs_share": round(share, 4),
                "macs_removed": round(removed, 4),
                "removed": "block dropped" if gp.drop else f"{len(gp.remove)} {gp.kind}s",
                "approximate": gp.approximate,
            }
        )
    return rows
