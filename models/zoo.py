"""Small torch models, one structural pattern each, exported to ONNX on demand.

``build(name, exporter)`` exports a model once into ``models/_cache`` and returns the
path. Every module is seeded, in eval mode, and has non-trivial BatchNorm statistics.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .cache import CACHE_DIR, cached  # noqa: F401  (CACHE_DIR re-exported)

SEED = 0


# --------------------------------------------------------------------------- blocks


def conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    """Conv (no bias) followed by BatchNorm."""
    conv = nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False)
    return nn.Sequential(conv, nn.BatchNorm2d(cout))


def conv_bn_relu(cin: int, cout: int, k: int = 3, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(*conv_bn(cin, cout, k, stride), nn.ReLU())


class BasicBlock(nn.Module):
    """ResNet basic block; a 1x1 conv+bn shortcut when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.body = nn.Sequential(conv_bn_relu(cin, cout, 3, stride), conv_bn(cout, cout))
        self.down = None
        if stride != 1 or cin != cout:
            self.down = conv_bn(cin, cout, 1, stride)

    def forward(self, x):
        skip = x if self.down is None else self.down(x)
        return F.relu(self.body(x) + skip)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (optionally grouped), 1x1 expand, residual add."""

    def __init__(self, cin: int, mid: int, cout: int, stride: int = 1, groups: int = 1):
        super().__init__()
        self.body = nn.Sequential(
            conv_bn_relu(cin, mid, 1),
            nn.Sequential(*conv_bn(mid, mid, 3, stride, groups), nn.ReLU()),
            conv_bn(mid, cout, 1),
        )
        self.down = None
        if stride != 1 or cin != cout:
            self.down = conv_bn(cin, cout, 1, stride)

    def forward(self, x):
        skip = x if self.down is None else self.down(x)
        return F.relu(self.body(x) + skip)


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand, 3x3 depthwise, 1x1 linear project."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        self.body = nn.Sequential(
            *conv_bn(cin, hidden, 1),
            nn.ReLU6(),
            *conv_bn(hidden, hidden, 3, stride, groups=hidden),
            nn.ReLU6(),
            *conv_bn(hidden, cout, 1),
        )
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        y = self.body(x)
        return x + y if self.residual else y


class DenseLayer(nn.Module):
    """Pre-activation BN-ReLU-Conv3x3 whose output is concatenated to its input."""

    def __init__(self, cin: int, growth: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.BatchNorm2d(cin), nn.ReLU(), nn.Conv2d(cin, growth, 3, padding=1, bias=False)
        )

    def forward(self, x):
        return torch.cat([x, self.body(x)], dim=1)


class SqueezeExcite(nn.Module):
    """Global pool, 1x1 reduce, ReLU, 1x1 expand, Sigmoid, scale the input."""

    def __init__(self, channels: int, reduced: int):
        super().__init__()
        self.reduce = nn.Conv2d(channels, reduced, 1)
        self.expand = nn.Conv2d(reduced, channels, 1)

    def forward(self, x):
        s = F.adaptive_avg_pool2d(x, 1)
        s = torch.sigmoid(self.expand(F.relu(self.reduce(s))))
        return x * s


class SEBlock(nn.Module):
    """Two convs, squeeze-and-excitation, then the residual add."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(conv_bn_relu(channels, channels), conv_bn(channels, channels))
        self.se = SqueezeExcite(channels, channels // 4)

    def forward(self, x):
        return F.relu(x + self.se(self.body(x)))


class InceptionBlock(nn.Module):
    """Four parallel branches concatenated on channels."""

    def __init__(self, cin: int, c1: int, c3: tuple[int, int], c5: tuple[int, int], cp: int):
        super().__init__()
        self.b1 = conv_bn_relu(cin, c1, 1)
        self.b3 = nn.Sequential(conv_bn_relu(cin, c3[0], 1), conv_bn_relu(c3[0], c3[1], 3))
        self.b5 = nn.Sequential(
            conv_bn_relu(cin, c5[0], 1),
            conv_bn_relu(c5[0], c5[1], 3),
            conv_bn_relu(c5[1], c5[1], 3),
        )
        self.bp = nn.Sequential(nn.MaxPool2d(3, 1, 1), conv_bn_relu(cin, cp, 1))

    def forward(self, x):
        return torch.cat([self.b1(x), self.b3(x), self.b5(x), self.bp(x)], dim=1)


def classifier(cin: int, classes: int = 10) -> nn.Sequential:
    """Global average pool, flatten, Linear."""
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, classes))


# --------------------------------------------------------------------------- models


def resnet() -> nn.Module:
    return nn.Sequential(
        conv_bn_relu(3, 16),
        nn.MaxPool2d(2),
        BasicBlock(16, 16),
        BasicBlock(16, 32, stride=2),
        BasicBlock(32, 32),
        classifier(32),
    )


def mobilenetv2() -> nn.Module:
    return nn.Sequential(
        *conv_bn(3, 16, 3, 2),
        nn.ReLU6(),
        InvertedResidual(16, 16, 1, expand=1),
        InvertedResidual(16, 24, 2, expand=4),
        InvertedResidual(24, 24, 1, expand=4),
        *conv_bn(24, 64, 1),
        nn.ReLU6(),
        classifier(64),
    )


def densenet() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1, bias=False),
        DenseLayer(16, 8),
        DenseLayer(24, 8),
        DenseLayer(32, 8),
        nn.BatchNorm2d(40),
        nn.ReLU(),
        nn.Conv2d(40, 20, 1, bias=False),
        nn.AvgPool2d(2),
        DenseLayer(20, 8),
        nn.BatchNorm2d(28),
        nn.ReLU(),
        classifier(28),
    )


def se() -> nn.Module:
    return nn.Sequential(
        conv_bn_relu(3, 16, 3, 2),
        SEBlock(16),
        SEBlock(16),
        classifier(16),
    )


def inception() -> nn.Module:
    return nn.Sequential(
        conv_bn_relu(3, 16),
        nn.MaxPool2d(2),
        InceptionBlock(16, 8, (8, 12), (4, 4), 4),  # -> 28 channels
        InceptionBlock(28, 8, (12, 16), (4, 8), 8),  # -> 40 channels
        classifier(40),
    )


class UNet(nn.Module):
    """Two-level encoder/decoder with concatenated skips and nearest upsampling."""

    def __init__(self, cin: int = 3, classes: int = 2, w: int = 8):
        super().__init__()

        def double(a: int, b: int) -> nn.Sequential:
            return nn.Sequential(conv_bn_relu(a, b), conv_bn_relu(b, b))

        self.enc1, self.enc2, self.mid = double(cin, w), double(w, 2 * w), double(2 * w, 4 * w)
        self.pool = nn.MaxPool2d(2)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.dec2, self.dec1 = double(4 * w + 2 * w, 2 * w), double(2 * w + w, w)
        self.head = nn.Conv2d(w, classes, 1)

    def forward(self, x):
        e1 = self.enc1(x)
        e2 = self.enc2(self.pool(e1))
        m = self.mid(self.pool(e2))
        d2 = self.dec2(torch.cat([self.up(m), e2], dim=1))
        d1 = self.dec1(torch.cat([self.up(d2), e1], dim=1))
        return self.head(d1)


class VGG(nn.Module):
    """conv-bn-relu stacks with max pools, flatten of a (32, 4, 4) map, MLP head."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            conv_bn_relu(3, 16),
            conv_bn_relu(16, 16),
            nn.MaxPool2d(2),
            conv_bn_relu(16, 32),
            nn.MaxPool2d(2),
            conv_bn_relu(32, 32),
            nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(
            nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Dropout(0.5), nn.Linear(64, 10)
        )

    def forward(self, x):
        return self.head(torch.flatten(self.features(x), 1))


def mlp() -> nn.Module:
    return nn.Sequential(
        nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.GELU(), nn.Linear(64, 10)
    )


def resnext() -> nn.Module:
    return nn.Sequential(
        conv_bn_relu(3, 32, 3, 2),
        Bottleneck(32, 32, 64, groups=4),
        Bottleneck(64, 32, 64, groups=4),
        classifier(64),
    )


def resnet50() -> nn.Module:
    """ResNet-50 layout: bottlenecks [3, 4, 6, 3], widths 64..2048, 1000 classes."""
    layers: list[nn.Module] = [conv_bn_relu(3, 64, 7, 2), nn.MaxPool2d(3, 2, 1)]
    cin = 64
    for i, blocks in enumerate([3, 4, 6, 3]):
        mid = 64 * 2**i
        for j in range(blocks):
            stride = 2 if i > 0 and j == 0 else 1
            layers.append(Bottleneck(cin, mid, 4 * mid, stride))
            cin = 4 * mid
    layers.append(classifier(cin, 1000))
    return nn.Sequential(*layers)


# ShuffleNetV2 (Ma et al. 2018): each unit halves its channels into two branches and
# interleaves them again with a channel shuffle.


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """(N, g*k, H, W) -> view (N, g, k, H, W) -> swap g, k -> (N, k*g, H, W), written as
    torchvision writes it (sizes read from ``x.size()``)."""
    n, c, h, w = x.size()
    x = x.view(n, groups, c // groups, h, w)
    x = torch.transpose(x, 1, 2).contiguous()
    return x.view(n, -1, h, w)


class ShuffleUnit(nn.Module):
    """Stride 2: both branches see the whole input (depthwise-strided left branch, 1x1 /
    depthwise / 1x1 right branch), concatenated. Stride 1: ``chunk(2)``, the right half
    goes through the branch, the left passes. Then the channel shuffle."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        half = cout // 2
        self.stride = stride
        if stride > 1:
            self.left = nn.Sequential(
                *conv_bn(cin, cin, 3, stride, groups=cin), *conv_bn(cin, half, 1), nn.ReLU()
            )
        right_in = cin if stride > 1 else half
        self.right = nn.Sequential(
            *conv_bn(right_in, half, 1),
            nn.ReLU(),
            *conv_bn(half, half, 3, stride, groups=half),
            *conv_bn(half, half, 1),
            nn.ReLU(),
        )

    def forward(self, x):
        if self.stride == 1:
            a, b = x.chunk(2, dim=1)
            y = torch.cat((a, self.right(b)), dim=1)
        else:
            y = torch.cat((self.left(x), self.right(x)), dim=1)
        return channel_shuffle(y, 2)


class ShuffleNet(nn.Module):
    """Stem conv + max pool, three stages of (one stride-2 unit, ``repeat`` stride-1 units),
    a 1x1 conv head, global mean, Linear."""

    def __init__(self, widths=(48, 96, 192), repeat: int = 1, stem: int = 24, head: int = 256):
        super().__init__()
        self.stem = nn.Sequential(conv_bn_relu(3, stem), nn.MaxPool2d(3, 2, 1))
        units, cin = [], stem
        for w in widths:
            units.append(ShuffleUnit(cin, w, 2))
            units += [ShuffleUnit(w, w, 1) for _ in range(repeat)]
            cin = w
        self.stages = nn.Sequential(*units)
        self.head = conv_bn_relu(cin, head, 1)
        self.fc = nn.Linear(head, 10)

    def forward(self, x):
        x = self.head(self.stages(self.stem(x)))
        return self.fc(x.mean([2, 3]))


# Swin Transformer (Liu et al. 2021): attention inside non-overlapping windows, shifted by
# half a window every other block (torch.roll + a mask), patch merging between stages.


def _window_mask(h: int, w: int, win: int, shift: int, like: torch.Tensor) -> torch.Tensor:
    """(windows, win*win, win*win) additive mask: -100 between tokens that the roll brought
    together from different regions of the image. Computed in forward, as torchvision does."""
    region = like.new_zeros((h, w))
    cuts = ((0, h - win), (h - win, h - shift), (h - shift, h))
    cuts_w = ((0, w - win), (w - win, w - shift), (w - shift, w))
    label = 0
    for r0, r1 in cuts:
        for c0, c1 in cuts_w:
            region[r0:r1, c0:c1] = label
            label += 1
    region = region.view(h // win, win, w // win, win).permute(0, 2, 1, 3)
    region = region.reshape(-1, win * win)
    diff = region.unsqueeze(1) - region.unsqueeze(2)
    return diff.masked_fill(diff != 0, -100.0).masked_fill(diff == 0, 0.0)


class WindowAttention(nn.Module):
    """Multi-head self-attention in (shifted) windows of an (N, H, W, C) map, with a learned
    relative position bias gathered from a table by a fixed index buffer."""

    def __init__(self, dim: int, heads: int, win: int, shift: int):
        super().__init__()
        self.heads, self.win, self.shift = heads, win, shift
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.bias_table = nn.Parameter(0.02 * torch.randn((2 * win - 1) ** 2, heads))
        ys, xs = torch.meshgrid(torch.arange(win), torch.arange(win), indexing="ij")
        pos = torch.stack([ys.flatten(), xs.flatten()])  # (2, win*win)
        rel = (pos[:, :, None] - pos[:, None, :]).permute(1, 2, 0) + (win - 1)
        self.register_buffer("bias_index", (rel[..., 0] * (2 * win - 1) + rel[..., 1]).flatten())

    def forward(self, x):
        n, h0, w0, c = x.shape
        win, heads = self.win, self.heads
        x = F.pad(x, (0, 0, 0, (win - w0 % win) % win, 0, (win - h0 % win) % win))
        _, h, w, _ = x.shape
        shift = self.shift if win < h and win < w else 0
        if shift:
            x = torch.roll(x, shifts=(-shift, -shift), dims=(1, 2))
        windows = (h // win) * (w // win)
        t = x.view(n, h // win, win, w // win, win, c).permute(0, 1, 3, 2, 4, 5)
        t = t.reshape(n * windows, win * win, c)
        qkv = self.qkv(t).reshape(t.size(0), t.size(1), 3, heads, c // heads)
        qkv = qkv.permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q * (c // heads) ** -0.5).matmul(k.transpose(-2, -1))
        tokens = win * win
        bias = self.bias_table[self.bias_index].view(tokens, tokens, -1)
        attn = attn + bias.permute(2, 0, 1).contiguous().unsqueeze(0)
        if shift:
            mask = _window_mask(h, w, win, shift, x)
            attn = attn.view(t.size(0) // windows, windows, heads, t.size(1), t.size(1))
            attn = attn + mask.unsqueeze(1).unsqueeze(0)
            attn = attn.view(-1, heads, t.size(1), t.size(1))
        out = attn.softmax(dim=-1).matmul(v).transpose(1, 2).reshape(t.size(0), t.size(1), c)
        out = self.proj(out)
        out = out.view(n, h // win, w // win, win, win, c).permute(0, 1, 3, 2, 4, 5)
        out = out.reshape(n, h, w, c)
        if shift:
            out = torch.roll(out, shifts=(shift, shift), dims=(1, 2))
        return out[:, :h0, :w0, :].contiguous()


class SwinBlock(nn.Module):
    """Pre-norm window attention and MLP, each with a residual add."""

    def __init__(self, dim: int, heads: int, win: int, shift: int, mlp: int = 2):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, heads, win, shift)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp * dim), nn.GELU(), nn.Linear(mlp * dim, dim))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchMerging(nn.Module):
    """(N, H, W, C) -> (N, H/2, W/2, 2C): the four pixels of each 2x2 cell concatenated,
    LayerNorm, Linear 4C -> 2C."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduce = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x):
        h, w = x.shape[-3:-1]
        x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
        cells = [x[..., i::2, j::2, :] for j in (0, 1) for i in (0, 1)]
        return self.reduce(self.norm(torch.cat(cells, -1)))


class Swin(nn.Module):
    """Patch embedding (strided conv, NHWC, LayerNorm), stages of Swin blocks (shift 0 and
    win/2 alternating) with patch merging between them, LayerNorm, mean pool, Linear."""

    def __init__(self, dim=16, depths=(2, 2), heads=(2, 4), win: int = 4, patch: int = 2):
        super().__init__()
        self.embed = nn.Conv2d(3, dim, patch, patch)
        self.embed_norm = nn.LayerNorm(dim)
        layers: list[nn.Module] = []
        for s, (depth, nh) in enumerate(zip(depths, heads, strict=True)):
            if s:
                layers.append(PatchMerging(dim))
                dim *= 2
            layers += [SwinBlock(dim, nh, win, (b % 2) * (win // 2)) for b in range(depth)]
        self.stages = nn.Sequential(*layers)
        self.norm = nn.LayerNorm(dim)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(dim, 10)

    def forward(self, x):
        x = self.embed_norm(self.embed(x).permute(0, 2, 3, 1))
        x = self.norm(self.stages(x)).permute(0, 3, 1, 2)
        return self.head(torch.flatten(self.pool(x), 1))


# --------------------------------------------------------------------------- registry


def _seeded(factory: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
    """Wrap ``factory``: fixed-seed init, random BatchNorm statistics, eval mode."""

    def make() -> nn.Module:
        with torch.random.fork_rng():
            torch.manual_seed(SEED)
            module = factory()
            for m in module.modules():
                if isinstance(m, nn.BatchNorm2d):
                    n = m.num_features
                    m.running_mean.copy_(0.1 * torch.randn(n))
                    m.running_var.copy_(0.5 + torch.rand(n))
                    nn.init.uniform_(m.weight, 0.5, 1.5)
                    nn.init.normal_(m.bias, 0.0, 0.1)
        return module.eval()

    return make


def _randn(*shape: int) -> Callable[[], tuple[torch.Tensor, ...]]:
    def example() -> tuple[torch.Tensor, ...]:
        gen = torch.Generator().manual_seed(SEED + 1)
        return (torch.randn(*shape, generator=gen),)

    return example


@dataclass(frozen=True)
class ZooEntry:
    """A model factory, its example inputs, and the ONNX graph input/output names."""

    make_module: Callable[[], nn.Module]
    example_inputs: Callable[[], tuple[torch.Tensor, ...]]
    input_names: tuple[str, ...] = ("input",)
    output_names: tuple[str, ...] = ("output",)


_IMAGE = _randn(1, 3, 32, 32)

ZOO: dict[str, ZooEntry] = {
    "resnet": ZooEntry(_seeded(resnet), _IMAGE),
    "mobilenetv2": ZooEntry(_seeded(mobilenetv2), _IMAGE),
    "densenet": ZooEntry(_seeded(densenet), _IMAGE),
    "se": ZooEntry(_seeded(se), _IMAGE),
    "inception": ZooEntry(_seeded(inception), _IMAGE),
    "unet": ZooEntry(_seeded(UNet), _IMAGE),
    "vgg": ZooEntry(_seeded(VGG), _IMAGE),
    "mlp": ZooEntry(_seeded(mlp), _randn(4, 64)),
    "resnext": ZooEntry(_seeded(resnext), _IMAGE),
    "resnet50": ZooEntry(_seeded(resnet50), _randn(1, 3, 224, 224)),
    "shufflenet": ZooEntry(_seeded(ShuffleNet), _IMAGE),
    "swin": ZooEntry(_seeded(Swin), _IMAGE),
}

SMALL_ZOO: list[str] = [name for name in ZOO if name not in ("resnet50", "swin")]
"""The models ``tests/test_zoo.py`` holds to "nothing inside is frozen". Not ``swin``: its
residual width is normalised (LayerNorm) and its fused qkv's heads stay, by design; it has
its own tests (``tests/test_shuffle_swin.py``)."""

SKLEARN_MLP = "sklearn_mlp"
"""Extra name accepted by ``build``: a scikit-learn MLP (not a torch ``ZOO`` entry)."""


# --------------------------------------------------------------------------- building


def build_sklearn_mlp(path: str | os.PathLike) -> Path:
    """Train an MLPClassifier on the digits data and convert it with skl2onnx.

    Graph input ``input`` is float32 ``[None, 64]``; outputs are ``label`` (int64)
    and ``probabilities`` (float32, ``[None, 10]``), no ZipMap.
    """
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.datasets import load_digits
    from sklearn.neural_network import MLPClassifier

    x, y = load_digits(return_X_y=True)
    clf = MLPClassifier(hidden_layer_sizes=(32, 16), max_iter=300, random_state=0)
    clf.fit(x.astype("float32"), y)
    onx = to_onnx(
        clf,
        initial_types=[("input", FloatTensorType([None, 64]))],
        options={id(clf): {"zipmap": False}},
        target_opset={"": 18, "ai.onnx.ml": 3},
    )
    path = Path(path)
    path.write_bytes(onx.SerializeToString())
    return path


def build(
    name: str, exporter: str = "torchscript", cache_dir: str | os.PathLike | None = None
) -> Path:
    """Return the path of ``{name}-{exporter}.onnx`` in the cache, exporting it if absent.

    ``name`` is a ``ZOO`` key or ``"sklearn_mlp"`` (which ignores ``exporter`` and is
    cached as ``sklearn_mlp-sklearn.onnx``). Files are written to a temporary name and
    moved into place, so concurrent callers never read a partial file.
    """
    if name != SKLEARN_MLP and name not in ZOO:
        raise KeyError(f"unknown zoo model {name!r}; choose from {sorted(ZOO)} or {SKLEARN_MLP!r}")
    if exporter not in ("torchscript", "dynamo"):
        raise ValueError(f"exporter must be 'torchscript' or 'dynamo', got {exporter!r}")
    tag = "sklearn" if name == SKLEARN_MLP else exporter

    def write(tmp: str) -> None:
        if name == SKLEARN_MLP:
            build_sklearn_mlp(tmp)
            return
        from graphprune.exporters import export_torch

        entry = ZOO[name]
        export_torch(
            entry.make_module(),
            entry.example_inputs(),
            tmp,
            exporter=exporter,
            input_names=entry.input_names,
            output_names=entry.output_names,
        )

    return cached(f"{name}-{tag}.onnx", write, cache_dir)
