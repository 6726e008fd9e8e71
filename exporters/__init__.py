"""Helpers that turn framework models into ONNX files (need the ``export`` extra)."""

from .torch_export import export_torch

__all__ = ["export_torch"]
