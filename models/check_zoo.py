"""Sanity-check the model collections: ``python -m models.check_zoo [--big]``.

Hand-built models must pass the full onnx checker and run in onnxruntime; every zoo
model is exported with both exporters (into a temporary cache) and must match torch.
"""

from __future__ import annotations

import sys
import tempfile
import time

import numpy as np
import onnx
import onnxruntime as ort


def _session(model) -> ort.InferenceSession:
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"])


def check_handbuilt() -> None:
    from models.handbuilt import HANDBUILT

    rng = np.random.default_rng(0)
    for name, make in HANDBUILT.items():
        model = make()
        onnx.checker.check_model(model, full_check=True)
        sess = _session(model)
        (inp,) = sess.get_inputs()
        (out,) = sess.run(None, {inp.name: rng.standard_normal(inp.shape).astype(np.float32)})
        assert np.isfinite(out).all(), name
        print(f"handbuilt {name:24s} opset={model.opset_import[0].version} out={out.shape}")


def check_zoo(names: list[str]) -> None:
    import torch

    from models.zoo import ZOO, build

    with tempfile.TemporaryDirectory() as cache:
        for name in names:
            entry = ZOO[name]
            inputs = entry.example_inputs()
            with torch.no_grad():
                expected = entry.make_module()(*inputs).numpy()
            for exporter in ("torchscript", "dynamo"):
                start = time.perf_counter()
                path = build(name, exporter, cache_dir=cache)
                seconds = time.perf_counter() - start
                sess = _session(path)
                feed = {i.name: x.numpy() for i, x in zip(sess.get_inputs(), inputs, strict=True)}
                got = sess.run(None, feed)[0]
                diff = float(np.abs(got - expected).max())
                assert np.allclose(got, expected, atol=1e-4, rtol=1e-4), (name, exporter, diff)
                print(f"zoo {name:12s} {exporter:11s} export {seconds:6.2f}s max|diff| {diff:.1e}")


if __name__ == "__main__":
    from models.zoo import SMALL_ZOO

    check_handbuilt()
    check_zoo(SMALL_ZOO + (["resnet50"] if "--big" in sys.argv else []))
