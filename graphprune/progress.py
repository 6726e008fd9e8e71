"""What a run is doing, for whoever listens: the stage it is in, and how far a long step
(calibration, knockout, reconstruction, a sweep) has got. The CLI shows both on a terminal
(with tqdm), so a long step is never silent. The library only calls ``stage`` and
``advance``; with no listener they cost nothing."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

#: called as ``listener(name)`` when a stage starts
LISTENERS: list[Callable[[str], None]] = []
#: called as ``listener(step, done, total)`` as a long step advances
BAR_LISTENERS: list[Callable[[str, int, int], None]] = []


def stage(name: str) -> None:
    for listener in LISTENERS:
        listener(name)


def advance(step: str, done: int, total: int) -> None:
    """``done`` of ``total`` items of ``step`` ("calibration", "knockout", ...) finished."""
    for listener in BAR_LISTENERS:
        listener(step, done, total)


@contextmanager
def timed(times: dict[str, float], key: str) -> Iterator[None]:
    """Add the seconds the ``with`` body takes to ``times[key]``."""
    start = time.perf_counter()
    try:
        yield
    finally:
        times[key] = times.get(key, 0.0) + time.perf_counter() - start
