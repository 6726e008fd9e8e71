"""Pareto marks: the rows no other row beats on a cost and quality."""

from __future__ import annotations


def pareto(rows: list[dict], cost: str) -> set[str]:
    """Ids of the rows no other row beats on ``cost`` (lower) and quality (higher)."""
    pts = [
        r
        for r in rows
        if r["status"] == "ok" and r.get(cost) is not None and r.get("quality") is not None
    ]
    front = set()
    for r in pts:
        if not any(
            o[cost] <= r[cost]
            and o["quality"] >= r["quality"]
            and (o[cost] < r[cost] or o["quality"] > r["quality"])
            for o in pts
        ):
            front.add(r["id"])
    return front
