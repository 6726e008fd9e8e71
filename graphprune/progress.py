"""The stage a run is in, for whoever listens: the CLI shows it on a terminal, so a long
step (analysis of a big graph, calibration, a refit) is never silent. The library itself
only calls ``stage``; with no listener it costs nothing."""

from __future__ import annotations

from collections.abc import Callable

LISTENERS: list[Callable[[str], None]] = []


def stage(name: str) -> None:
    for listener in LISTENERS:
        listener(name)
