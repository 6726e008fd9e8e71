"""The peak memory a prune is expected to need, said before the rewrite (``--dry-run``
prints it, the report carries it): the weights the process holds, what calibration holds
(``calibration.memory_estimate``) and the fixed cost of the libraries.

The figures for weights are measured (``benchmarks/bench_scale.py``), not derived: a model
whose weights are on disk (``graphprune.weights``) holds only the tensor being sliced, and
ONNX Runtime's fp32 copy of one half-precision weight as it runs; one held in memory holds
its weights in the proto, in numpy and in the sessions that parity and the load check
build (4x the weight bytes without parity, 6x with it, on the 0.1 B LLaMA-shaped model)."""

from __future__ import annotations

import numpy as np
import onnx

from . import weights

#: Python, onnx, ONNX Runtime and graphsurgeon with a model loaded: 0.25-0.3 GB measured
RUNTIME_BYTES = 300 << 20
#: peak memory / weight bytes of a model held in memory (no parity, parity), measured
IN_MEMORY_FACTOR = {False: 4.0, True: 6.0}


def tensor_bytes(t: onnx.TensorProto) -> int:
    return int(np.prod(t.dims)) * weights.np_dtype(t.data_type).itemsize


def run_estimate(model: onnx.ModelProto, parity: bool, calibration: dict) -> dict:
    """Bytes: ``weights`` (their total), ``held`` (what the process holds of them),
    ``calibration`` (its peak), ``runtime`` and ``peak`` (the sum)."""
    sizes = [tensor_bytes(t) for t in model.graph.initializer]
    total = sum(sizes)
    if weights.is_mapped(model):
        half = {onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}
        largest = max(
            (tensor_bytes(t) * (2 if t.data_type in half else 1) for t in model.graph.initializer),
            default=0,
        )
        inline = sum(s for t, s in zip(model.graph.initializer, sizes, strict=True)
                     if not weights.is_external(t))
        held = largest + 2 * inline  # the proto's inline tensors, and their numpy copies
    else:
        held = int(total * IN_MEMORY_FACTOR[parity])
    cal = int(calibration.get("peak", 0))
    return {
        "weights": total,
        "on_disk": weights.is_mapped(model),
        "held": held,
        "calibration": cal,
        "runtime": RUNTIME_BYTES,
        "peak": held + cal + RUNTIME_BYTES,
    }
