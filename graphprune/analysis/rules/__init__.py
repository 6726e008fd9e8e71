"""Op rules, one module per op family. Importing this package imports every module in it,
so teaching graphprune an op is one new file here (plus its tests): nothing else to edit."""

import importlib
import pkgutil

from .registry import RULES, MacTerm, NodeView, OpRule, register, rule_for, rule_for_op

for _info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if _info.name != "registry":
        importlib.import_module(f"{__name__}.{_info.name}")

__all__ = ["RULES", "MacTerm", "NodeView", "OpRule", "register", "rule_for", "rule_for_op"]
