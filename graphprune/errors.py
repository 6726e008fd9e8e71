"""Typed errors. The library raises these; only the CLI turns them into one line + exit code.

Exit codes: 0 ok; 1 internal error (a bug); 2 bad usage or options; 3 the input model cannot
be used (unreadable, fails onnx.checker, or ONNX Runtime cannot load it); 4 bad plan; 5 our
rewrite is invalid (a bug, never written); 6 parity failed; 7 bad calibration / evaluation
data; 8 nothing pruned (or an option matched nothing); 9 the quality floor
(``--min-quality``) is not met; 10 the resources are not there (the run would need more
memory than the machine has, or the Ray cluster asked for cannot be reached).
"""


class GraphpruneError(Exception):
    """Base class; ``exit_code`` is what the CLI returns for it."""

    exit_code = 2


class UsageError(GraphpruneError):
    """Bad arguments or options (wrong ratio, output equals input...)."""

    exit_code = 2


class ModelLoadError(GraphpruneError):
    """The input file is missing, unreadable or not a valid ONNX model."""

    exit_code = 3


class PlanError(GraphpruneError):
    """A plan cannot be made or replayed on this model."""

    exit_code = 4


class RewriteError(GraphpruneError):
    """The rewrite produced an invalid model (a bug: reported, never written)."""

    exit_code = 5


class ParityError(GraphpruneError):
    """The pruned model does not match the masked original."""

    exit_code = 6


class CalibrationError(GraphpruneError):
    """Calibration / evaluation data is missing, empty or does not fit the model."""

    exit_code = 7


class NothingPruned(GraphpruneError):
    """The run would remove nothing, or an option given matched nothing (``--heads`` on a
    model without heads, a ratio that rounds to zero units): no output is written, since
    shipping the unchanged model as "pruned" would be a silent failure."""

    exit_code = 8

    def __init__(self, message: str, option: str = ""):
        super().__init__(message)
        self.option = option


class QualityError(GraphpruneError):
    """The pruned (or quantized...) model falls below the ``--min-quality`` floor on the
    held-out data: no model is written, so a build step fails instead of shipping it."""

    exit_code = 9

    def __init__(self, message: str, measured: dict):
        super().__init__(message)
        self.measured = measured


class ResourceError(GraphpruneError):
    """The run cannot be done with what is there: its estimated peak memory exceeds what
    the machine has (said before any work is done), or ``--ray auto`` finds no cluster."""

    exit_code = 10


class PassFailed(GraphpruneError):
    """An unexpected error inside a rewrite pass (a bug): reported with the pass name."""

    exit_code = 1

    def __init__(self, pass_name: str, error: Exception):
        super().__init__(f"internal error in pass {pass_name}: {type(error).__name__}: {error}")
        self.pass_name = pass_name
        self.error = error
