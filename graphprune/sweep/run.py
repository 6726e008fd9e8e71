"""Pruning one configuration (in a worker process, or in this one)."""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from pathlib import Path

from .. import progress
from ..errors import GraphpruneError
from ..options import PruneOptions
from .state import _chmod_umask


def run_config(model_path: str, config: dict, out_path: str) -> dict:
    """Prune ``model_path`` with ``config``, write the model to ``out_path`` (atomically),
    return its row; a GraphpruneError is a failed row, not an exception."""
    from ..prune import prune_model

    t0 = time.perf_counter()
    row: dict = {"status": "ok", "exit_code": 0, "error": ""}
    try:
        result = prune_model(model_path, PruneOptions(**config))
        if result.parity.status == "failed":
            raise _ParityFailed(result.parity.max_rel_diff)
        _save_model_atomic(result.model, out_path)
    except _ParityFailed as e:
        return {**row, "status": "failed", "exit_code": 6, "error": str(e), "prune_s": _s(t0)}
    except GraphpruneError as e:
        msg = " ".join(str(e).split())
        return {
            **row,
            "status": "failed",
            "exit_code": e.exit_code,
            "error": msg,
            "prune_s": _s(t0),
        }
    except Exception as e:  # a bug in a pass: the sweep goes on, the row says so
        msg = " ".join(f"internal error: {type(e).__name__}: {e}".split())
        return {**row, "status": "failed", "exit_code": 1, "error": msg, "prune_s": _s(t0)}
    before, after = result.before, result.after
    row.update(
        params=after["params"],
        params_kept=_ratio(after["params"], before["params"]),
        macs=after["macs"],
        macs_kept=_ratio(after["macs"], before["macs"]),
        bytes=Path(out_path).stat().st_size,
        parity=result.parity.status,
        prune_s=_s(t0),
        before={"params": before["params"], "macs": before["macs"], "bytes": before["bytes"]},
    )
    row.update(_quality(result.evaluation))
    return row


class _ParityFailed(Exception):
    def __init__(self, rel):
        super().__init__(f"parity failed (max rel diff {rel:.3e})")


def _s(t0: float) -> float:
    return round(time.perf_counter() - t0, 3)


def _ratio(a, b) -> float | None:
    return round(a / b, 6) if b else None


def _quality(evaluation: dict) -> dict:
    """Quality relative to the original: accuracy after / before with labels, else the
    outputs' mean cosine to the original's."""
    out = {"accuracy_before": None, "accuracy_after": None, "mean_cosine": None, "quality": None}
    if "eval" in evaluation:
        out["mean_cosine"] = round(evaluation["eval"]["mean_cosine"], 6)
        out["quality"] = out["mean_cosine"]
    if "accuracy" in evaluation:
        acc = evaluation["accuracy"]
        out["accuracy_before"] = acc["before"]
        out["accuracy_after"] = acc["after"]
        out["quality"] = round(acc["after"] / acc["before"], 6) if acc["before"] else None
    return out


def _save_model_atomic(model, path: str) -> None:
    import onnx

    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        onnx.save_model(model, tmp)
        _chmod_umask(tmp)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def _muted_progress():
    """An in-process prune's own stages and bars would replace the sweep's bar."""
    saved = progress.LISTENERS[:], progress.BAR_LISTENERS[:]
    progress.LISTENERS.clear()
    progress.BAR_LISTENERS.clear()
    try:
        yield
    finally:
        progress.LISTENERS[:], progress.BAR_LISTENERS[:] = saved


def _run_parallel(model_path: Path, out: Path, todo, jobs: int, finished) -> None:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    ctx = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(max_workers=min(jobs, len(todo)), mp_context=ctx)
    try:
        futures = {
            pool.submit(run_config, str(model_path), c, str(out / "models" / f"{cid}.onnx")): cid
            for cid, c in todo
        }
        for fut in as_completed(futures):
            cid = futures[fut]
            try:
                row = fut.result()
            except Exception as e:  # the worker died (memory, a crash in ORT)
                msg = " ".join(f"worker failed: {type(e).__name__}: {e}".split())
                row = {"status": "failed", "exit_code": 1, "error": msg}
            finished(cid, row)
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


def _run_item(item: tuple[dict, str], model_path: str) -> dict:
    """One configuration as a Ray task: ``item`` is (config, output path)."""
    config, out_path = item
    return run_config(model_path, config, out_path)


def _run_ray(model_path: Path, out: Path, todo, finished) -> None:
    """The configurations as Ray tasks (graphprune.cluster), each row recorded as it comes
    back. Paths are absolute: a worker's working directory may be another one, and on a
    cluster the model and ``out`` must be on storage every node sees."""
    from .. import cluster

    model = str(Path(model_path).resolve())
    items = [(c, str((out / "models" / f"{cid}.onnx").resolve())) for cid, c in todo]
    for k, row, error in cluster.as_completed(_run_item, items, model):
        if error is not None:  # the worker died (memory, a crash in ORT)
            msg = " ".join(f"worker failed: {type(error).__name__}: {error}".split())
            row = {"status": "failed", "exit_code": 1, "error": msg}
        finished(todo[k][0], row)
