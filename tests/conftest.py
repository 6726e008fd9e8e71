import sys
from pathlib import Path

import onnx
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # so that ``import models.zoo`` works
    sys.path.insert(0, str(ROOT))


@pytest.fixture(scope="module")
def zoo_model():
    """``get(name, exporter)``: a torch-zoo model, exported once per test module."""
    from models.zoo import build

    cache = {}

    def get(name, exporter):
        if (name, exporter) not in cache:
            cache[name, exporter] = onnx.load(str(build(name, exporter)))
        return cache[name, exporter]

    return get
