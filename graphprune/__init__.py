"""graphprune: structured pruning of ONNX graphs with a parity proof."""

from .errors import GraphpruneError
from .plan import Plan
from .prune import PruneOptions, PruneResult, analyze_model, prune_model

__all__ = ["GraphpruneError", "Plan", "PruneOptions", "PruneResult", "analyze_model", "prune_model"]
__version__ = "0.1.0"
