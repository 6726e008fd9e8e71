"""Train a small CNN on scikit-learn's bundled ``digits`` dataset and export it to ONNX.

This is the real model used by the README demo: ``graphprune`` prunes it and reports
test accuracy before and after. Everything is deterministic (fixed split, fixed seeds,
deterministic single-threaded torch kernels), so re-running reproduces the same artifacts.

Produces, in ``--out-dir`` (default: the directory of this script, ``models/digits``):

* ``digits_cnn.onnx``   -- self-contained ONNX model (opset 17). Graph input ``input``
  (float32, ``[batch, 1, 8, 8]``, pixels scaled to [0, 1]), graph output ``logits``
  (float32, ``[batch, 10]``). BatchNorm is folded into the convolutions on export.
* ``digits_test.npz``   -- held-out evaluation set in graphprune's format: one array per
  graph input name (``input``, float32 ``(N, 1, 8, 8)``) plus ``labels`` (int64 ``(N,)``).
* ``digits_calib.npz``  -- 64 *training* images under key ``input`` for calibration.

Architecture::

    conv3x3(1->32)-BN-ReLU -> conv3x3(32->64)-BN-ReLU -> MaxPool2          (8x8 -> 4x4)
    -> residual block: x + BN(conv3x3(64->64)(ReLU(BN(conv3x3(64->64)(x))))) -> ReLU
    -> GlobalAvgPool -> Flatten -> Linear(64->64)-ReLU -> Linear(64->10)

Re-run (CPU only, a few seconds on 2 cores; needs the ``export`` extra)::

    python models/digits/train_digits_cnn.py [--out-dir models/digits]

All files are written atomically (temp file in the output directory + ``os.replace``).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

SEED = 0
EPOCHS = 30
BATCH_SIZE = 32
LR = 3e-3
N_CALIB = 64


def conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()
    )


class ResidualBlock(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            conv_bn_relu(ch, ch),
            nn.Conv2d(ch, ch, 3, padding=1, bias=False),
            nn.BatchNorm2d(ch),
        )
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(x + self.body(x))


class DigitsCNN(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            conv_bn_relu(1, 32),
            conv_bn_relu(32, 64),
            nn.MaxPool2d(2),
            ResidualBlock(64),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def load_data() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    y = digits.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.25, random_state=SEED, stratify=y)
    return x_tr, x_te, y_tr, y_te


def train(x_tr: np.ndarray, y_tr: np.ndarray) -> DigitsCNN:
    # One thread + deterministic kernels: bit-identical weights regardless of core count
    # (the intra-op thread count changes float reduction order and hence the result).
    torch.set_num_threads(1)
    torch.manual_seed(SEED)
    torch.use_deterministic_algorithms(True)
    model = DigitsCNN()
    opt = torch.optim.Adam(model.parameters(), lr=LR, weight_decay=1e-4)
    steps_per_epoch = -(-len(x_tr) // BATCH_SIZE)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=LR, epochs=EPOCHS, steps_per_epoch=steps_per_epoch
    )
    loss_fn = nn.CrossEntropyLoss()
    xt, yt = torch.from_numpy(x_tr), torch.from_numpy(y_tr)
    gen = torch.Generator().manual_seed(SEED)
    model.train()
    for epoch in range(EPOCHS):
        perm = torch.randperm(len(xt), generator=gen)
        total = 0.0
        for i in range(0, len(xt), BATCH_SIZE):
            idx = perm[i : i + BATCH_SIZE]
            opt.zero_grad()
            loss = loss_fn(model(xt[idx]), yt[idx])
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        if (epoch + 1) % 10 == 0:
            print(f"epoch {epoch + 1:3d}/{EPOCHS}  train loss {total / len(xt):.4f}")
    return model.eval()


def atomic_target(path: Path, suffix: str) -> Path:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    os.chmod(tmp, 0o644)  # mkstemp creates 0600; the artifacts are ordinary repo files
    return Path(tmp)


def save_npz_atomic(path: Path, **arrays: np.ndarray) -> None:
    tmp = atomic_target(path, ".tmp")
    try:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def export_onnx_atomic(model: nn.Module, path: Path) -> None:
    tmp = atomic_target(path, ".onnx")
    try:
        with warnings.catch_warnings():
            # dynamo=False is deliberate (classic exporter, BN folded into Conv); silence
            # its deprecation note so the demo output stays clean.
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(
                model,
                (torch.zeros(1, 1, 8, 8),),
                str(tmp),
                dynamo=False,
                opset_version=17,
                do_constant_folding=True,
                input_names=["input"],
                output_names=["logits"],
                dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            )
        proto = onnx.load(str(tmp))  # loading also proves there is no external data
        onnx.checker.check_model(proto, full_check=True)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parent)
    args = parser.parse_args()
    out_dir: Path = args.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)

    x_tr, x_te, y_tr, y_te = load_data()
    print(f"train {x_tr.shape}, test {x_te.shape}")

    t0 = time.perf_counter()
    model = train(x_tr, y_tr)
    print(f"training time: {time.perf_counter() - t0:.1f}s")

    with torch.no_grad():
        torch_logits = model(torch.from_numpy(x_te)).numpy()
    torch_acc = float((torch_logits.argmax(1) == y_te).mean())
    print(f"torch test accuracy: {torch_acc:.4f}")

    onnx_path = out_dir / "digits_cnn.onnx"
    export_onnx_atomic(model, onnx_path)
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    (ort_logits,) = sess.run(["logits"], {"input": x_te})
    ort_acc = float((ort_logits.argmax(1) == y_te).mean())
    max_diff = float(np.abs(ort_logits - torch_logits).max())
    print(f"onnxruntime test accuracy: {ort_acc:.4f}  (max |logit diff| vs torch {max_diff:.2e})")
    if ort_acc != torch_acc or not np.array_equal(ort_logits.argmax(1), torch_logits.argmax(1)):
        raise SystemExit("ONNX predictions differ from torch predictions")

    save_npz_atomic(out_dir / "digits_test.npz", input=x_te, labels=y_te)
    save_npz_atomic(out_dir / "digits_calib.npz", input=x_tr[:N_CALIB])

    for name in ("digits_cnn.onnx", "digits_test.npz", "digits_calib.npz"):
        print(f"wrote {out_dir / name} ({(out_dir / name).stat().st_size:,} bytes)")


if __name__ == "__main__":
    main()
