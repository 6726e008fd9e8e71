"""Ray, only when a run asks for it (``--ray auto|local``): nothing here imports ``ray`` at
module level, so a run without the flag never loads it.

``connect`` joins a running cluster ("auto") or starts a quiet local instance ("local");
``use`` is what a run calls at its start (connect, or switch the sharding off for this
run). ``map_tasks`` / ``as_completed`` run a top-level function over items as Ray tasks
(serially here when no cluster is active). Inside a task ``in_worker()`` is True and
``active()`` False, so work that a task does is never sharded a second time.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
from collections.abc import Callable, Iterable, Iterator

from .errors import ResourceError, UsageError
from .progress import stage

log = logging.getLogger(__name__)

MODES = ("auto", "local")

_state: dict = {"mode": None, "active": False, "started": False, "remote": None}
_state["exit_hook"] = False  # shutdown registered at exit
_IN_WORKER = False  # set in a Ray worker process by the task wrapper


def _ray():
    try:
        import ray
    except ImportError as e:
        raise UsageError(
            f"--ray needs Ray, which is not installed: pip install 'graphprune[ray]' ({e})"
        ) from None
    return ray


def _quiet_env() -> None:
    """Ray reads this at start: no usage-stats notice, and no reporting home from a machine
    that may be offline (setdefault: a user's own choice wins)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def connect(mode: str, num_cpus: int | None = None) -> None:
    """Join a running cluster (``"auto"``: ``ray start --head`` on some machine, found
    through ``RAY_ADDRESS`` or on this one) or start a local instance (``"local"``: no
    dashboard, quiet, ``num_cpus`` CPUs, default this machine's cores; shut down at exit).
    An instance this process already holds is reused. Afterwards ``active()`` is True.
    No cluster for "auto" is ResourceError (exit 10)."""
    if mode not in MODES:
        raise UsageError(f"--ray must be one of {', '.join(MODES)}, got {mode!r}")
    if _IN_WORKER:
        return
    ray = _ray()
    if not ray.is_initialized():
        stage("ray")
        _quiet_env()
        quiet = {"include_dashboard": False, "logging_level": logging.ERROR}
        quiet["log_to_driver"] = False  # tasks' own output stays in Ray's log files
        if mode == "auto":
            try:
                ray.init(address="auto", **quiet)
            except ConnectionError:
                raise ResourceError(
                    "--ray auto: no running Ray cluster found (nor one named by RAY_ADDRESS); "
                    "start one with `ray start --head`, or use --ray local"
                ) from None
            except (RuntimeError, ValueError) as e:  # found but not joinable (versions, address)
                why = " ".join(str(e).split())[:200]
                raise ResourceError(f"--ray auto: cannot join the Ray cluster ({why})") from None
        else:
            cpus = num_cpus or len(os.sched_getaffinity(0))
            # "local": a new instance even where RAY_ADDRESS or `ray start` names another
            ray.init(address="local", num_cpus=cpus, **quiet)
            if not _state["exit_hook"]:
                atexit.register(shutdown)
            _state.update(started=True, exit_hook=True)
        where = "started locally" if mode == "local" else "joined"
        log.info("ray: %s, %d CPUs", where, cluster_cpus())
    _state.update(mode=mode, active=True)


def use(mode: str | None) -> None:
    """Where a run starts: ``--ray MODE`` connects; no flag keeps this run on its own
    (a Ray instance from an earlier run stays up but is not used)."""
    if mode is None:
        _state["active"] = False
    else:
        connect(mode)


def active() -> bool:
    """This process asked for Ray (and is not itself a Ray worker)."""
    if _IN_WORKER or not _state["active"]:
        return False
    ray = sys.modules.get("ray")
    return ray is not None and ray.is_initialized()


def in_worker() -> bool:
    """This code runs inside a Ray task started by ``map_tasks`` / ``as_completed``."""
    return _IN_WORKER


def cluster_cpus() -> int:
    """The CPUs of the cluster joined (1 when none)."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return 1
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def workers() -> int:
    """How many tasks can run at once: the cluster's CPUs, 1 when not active."""
    return cluster_cpus() if active() else 1


def shutdown() -> None:
    """Stop the local instance this process started (registered at exit)."""
    ray = sys.modules.get("ray")
    if _state["started"] and ray is not None and ray.is_initialized():
        ray.shutdown()
    _state.update(mode=None, active=False, started=False, remote=None)


def _task(fn: Callable, item, *common):
    """What runs in the Ray worker: marks the process as a worker, then ``fn``."""
    global _IN_WORKER
    _IN_WORKER = True
    return fn(item, *common)


def _remote():
    if _state["remote"] is None:
        ray = _ray()
        # no retries: a task that kills its worker (memory) would be run again and again
        _state["remote"] = ray.remote(num_cpus=1, max_retries=0)(_task)
    return _state["remote"]


def as_completed(
    fn: Callable, items: Iterable, *common
) -> Iterator[tuple[int, object, BaseException | None]]:
    """``fn(item, *common)`` for every item, as Ray tasks when active (``common`` is put in
    the object store once), yielding ``(index, result, error)`` as each finishes. ``error``
    is the task's exception, or a ResourceError when its worker died. When not active the
    calls run here, in order, and their exceptions propagate. ``fn`` must be a top-level
    function (pickled by reference: the workers import it)."""
    items = list(items)
    if not active():
        for k, item in enumerate(items):
            yield k, fn(item, *common), None
        return
    ray = _ray()
    remote = _remote()
    shared = [ray.put(c) for c in common]
    refs = {remote.remote(fn, item, *shared): k for k, item in enumerate(items)}
    pending = list(refs)
    try:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for ref in done:
                try:
                    yield refs[ref], ray.get(ref), None
                except ray.exceptions.RayTaskError as e:
                    cause = e.cause if isinstance(e.cause, BaseException) else e
                    yield refs[ref], None, cause
                except ray.exceptions.RayError as e:  # the worker died (memory, a crash)
                    msg = " ".join(str(e).split())[:300]
                    yield refs[ref], None, ResourceError(f"a Ray worker died: {msg}")
    finally:
        for ref in pending:  # interrupted, or the caller stopped early
            ray.cancel(ref, force=True)


def map_tasks(fn: Callable, items: Iterable, *common) -> list:
    """``[fn(item, *common) for item in items]``, as Ray tasks when active; the results
    in the items' order. A task's error is raised here (the first in item order)."""
    items = list(items)
    results: list = [None] * len(items)
    errors: dict[int, BaseException] = {}
    for k, result, error in as_completed(fn, items, *common):
        if error is not None:
            errors[k] = error
        results[k] = result
    if errors:
        error = errors[min(errors)]
        if isinstance(error, Exception):
            raise error
        raise ResourceError(f"a Ray task failed: {error!r}")
    return results
