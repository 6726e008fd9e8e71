"""Op rules; importing this package registers every rule."""

from . import (  # noqa: F401
    concat_split,
    contrib,
    conv,
    elementwise,
    layout,
    linear,
    norm,
    pool,
    shape_ops,
)
from .registry import RULES, OpRule, register, rule_for

__all__ = ["RULES", "OpRule", "register", "rule_for"]
