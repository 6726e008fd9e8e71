"""Export a torch module to a single self-contained ONNX file.

torch is imported lazily so that graphprune itself never needs it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

_NOISY_LOGGERS = ("torch.onnx", "torch.export", "torch._dynamo", "torch.fx", "onnxscript")


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the warnings and log chatter of both torch exporters."""
    loggers = [logging.getLogger(name) for name in _NOISY_LOGGERS]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels, strict=True):
                lg.setLevel(level)


def _names(given: Sequence[str] | None, prefix: str, count: int) -> list[str]:
    if given is not None:
        return list(given)
    return [prefix] if count == 1 else [f"{prefix}{i}" for i in range(count)]


def export_torch(
    module,
    example_inputs: tuple,
    path: str | os.PathLike,
    exporter: str = "torchscript",
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    dynamic_batch: bool = False,
    opset: int = 18,
    dynamic_axes: dict[str, dict[int, str]] | None = None,
) -> str:
    """Export ``module`` (in eval mode, without grad) to ``path`` and return the path.

    ``exporter`` is ``"torchscript"`` (``torch.onnx.export(dynamo=False)``, constant
    folding on) or ``"dynamo"`` (``torch.export`` based). Either way the result is one
    .onnx file with the weights inlined, checked with ``onnx.checker.check_model``.
    Input names default to ``input`` (``input0, input1, ...`` for several inputs);
    output names default to ``output`` likewise. ``dynamic_batch`` makes axis 0 of
    every input and output symbolic (``batch``). ``dynamic_axes`` maps input/output
    names to ``{axis: symbol}`` for further symbolic axes (torchscript's format); with
    the dynamo exporter only input axes are declared, and every axis they make symbolic
    is renamed to its symbol in the file.
    """
    try:
        import torch
    except ImportError as exc:
        raise RuntimeError(
            "torch is needed to export; install with pip install torch==2.13.0"
        ) from exc
    import onnx

    if exporter not in ("torchscript", "dynamo"):
        raise ValueError(f"exporter must be 'torchscript' or 'dynamo', got {exporter!r}")
    example_inputs = tuple(example_inputs)
    module.eval()
    with torch.no_grad():
        n_out = len(_as_tuple(module(*example_inputs)))
    in_names = _names(input_names, "input", len(example_inputs))
    out_names = _names(output_names, "output", n_out)
    path = os.fspath(path)
    Path(path).parent.mkdir(parents=True, exist_ok=True)

    axes: dict[str, dict[int, str]] = {}
    if dynamic_batch:
        axes = {name: {0: "batch"} for name in in_names + out_names}
    for name, extra in (dynamic_axes or {}).items():
        axes[name] = {**axes.get(name, {}), **extra}

    with _quiet(), torch.no_grad():
        if exporter == "torchscript":
            torch.onnx.export(
                module,
                example_inputs,
                path,
                dynamo=False,
                input_names=in_names,
                output_names=out_names,
                opset_version=opset,
                do_constant_folding=True,
                dynamic_axes=axes or None,
            )
            model = onnx.load(path)
        else:
            dynamic_shapes = None
            if axes:
                dyn = torch.export.Dim.DYNAMIC
                dynamic_shapes = tuple(
                    {axis: dyn for axis in axes.get(name, {})} or None for name in in_names
                )
            program = torch.onnx.export(
                module,
                example_inputs,
                None,
                dynamo=True,
                input_names=in_names,
                output_names=out_names,
                opset_version=opset,
                dynamic_shapes=dynamic_shapes,
                verbose=False,
            )
            renames = {}
            for value in program.model.graph.inputs:
                for axis, symbol in axes.get(value.name, {}).items():
                    dim = value.shape[axis]
                    if not isinstance(dim, int):
                        renames.setdefault(dim, symbol)
            if renames:
                program.rename_axes(renames)
            model = program.model_proto
            onnx.save_model(model, path, save_as_external_data=False)
    onnx.checker.check_model(model)
    return path


def _as_tuple(out) -> tuple:
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)
