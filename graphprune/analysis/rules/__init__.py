"""Op rules; importing this package registers every rule."""

from . import concat_split, conv, elementwise, layout, linear, norm, pool, shape_ops  # noqa: F401
from .registry import RULES, OpRule, register, rule_for

__all__ = ["RULES", "OpRule", "register", "rule_for"]
