"""Calibration data from text: tokenize a text file (one sample per line) with a Hugging Face
tokenizer into an ``.npz`` holding one array per tokenizer output (``input_ids``,
``attention_mask``, ``token_type_ids`` ...), padded to a fixed length (``max_length``, or the
longest line when that is shorter and the model takes any length). Needs the optional
``transformers`` package."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np

from .errors import CalibrationError, UsageError


def tokenize_file(
    text_path, tokenizer_dir, max_length: int = 128, pad_to_longest: bool = False
) -> dict[str, np.ndarray]:
    p = Path(text_path)
    if not p.is_file():
        raise CalibrationError(f"{p}: no such file")
    lines = [ln.strip() for ln in p.read_text(encoding="utf-8", errors="replace").splitlines()]
    lines = [ln for ln in lines if ln]
    if not lines:
        raise CalibrationError(f"{p}: no text (empty lines only)")
    if max_length < 2:
        raise UsageError(f"--max-length must be >= 2, got {max_length}")
    try:
        from transformers import AutoTokenizer
    except ImportError as e:
        raise UsageError("calib-from-text needs transformers (pip install transformers)") from e
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    except Exception as e:  # a path that is not a tokenizer directory
        raise UsageError(f"{tokenizer_dir}: cannot load a tokenizer ({e})") from e
    enc = tokenizer(
        lines,
        padding="longest" if pad_to_longest else "max_length",
        truncation=True,
        max_length=max_length,
        return_tensors="np",
    )
    return {k: np.asarray(v, dtype=np.int64) for k, v in enc.items()}


def save_npz_atomic(arrays: dict[str, np.ndarray], path) -> None:
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    tmp = dest.with_name(f".{dest.name}.tmp")
    tmp.write_bytes(buf.getvalue())
    os.replace(tmp, dest)
