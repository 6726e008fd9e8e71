"""Pass protocol: one small class per rewrite, ``run(...) -> PassResult``."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class PassResult:
    name: str
    modified: bool
    detail: str = ""
