"""LLaMA-shaped decoder ONNX models at scale (0.1 B to 1 B parameters), built with
onnx.helper and numpy: token embedding, decoder layers (RMSNorm, GQA attention with RoPE and
repeat_kv, SwiGLU MLP), final RMSNorm, LM head. Random weights.

The graph is written the way the torch exporters write LLaMA code (RMSNorm spelled out,
``view`` targets computed from ``Shape``, repeat_kv as Unsqueeze/Expand/Reshape), so it
tests what graphprune must recognise with no help. Weights are streamed to external data,
one tensor at a time, and never all held at once.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from models.cache import CACHE_DIR

OPSET = 18
SEED = 0
#: bump when the graph the generator writes changes, so cached files are rebuilt
GENERATOR_VERSION = 1
#: tensors at least this big go to external data, at offsets aligned for memory-mapping
EXTERNAL_MIN = 1 << 20
ALIGN = 65536
DTYPES = {"fp32": (np.float32, TensorProto.FLOAT), "fp16": (np.float16, TensorProto.FLOAT16)}


@dataclass(frozen=True)
class LlamaConfig:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    rope_theta: float = 10000.0
    eps: float = 1e-5

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    def params(self) -> int:
        """Parameter count: embedding, untied LM head, layers, final norm."""
        h, kv = self.hidden, self.kv_heads * self.head_dim
        per_layer = 2 * h * h + 2 * h * kv + 3 * h * self.intermediate + 2 * h
        return 2 * self.vocab * h + self.layers * per_layer + h


CONFIGS = {
    "tiny": LlamaConfig(hidden=64, layers=2, heads=4, kv_heads=2, intermediate=128, vocab=256),
    "0.1b": LlamaConfig(hidden=768, layers=6, heads=12, kv_heads=4, intermediate=3072, vocab=32000),
    "0.5b": LlamaConfig(
        hidden=1536, layers=12, heads=24, kv_heads=8, intermediate=6144, vocab=32000
    ),
    "1b": LlamaConfig(hidden=2048, layers=16, heads=32, kv_heads=8, intermediate=8192, vocab=32000),
}


def config_hash(config: LlamaConfig, dtype: str) -> str:
    key = json.dumps({**asdict(config), "dtype": dtype, "version": GENERATOR_VERSION, "seed": SEED})
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def build(size: str, dtype: str = "fp32", cache_dir=None) -> Path:
    """The cached model for a named config (``CONFIGS``), generated when missing or stale:
    ``<cache_dir>/scale/<size>-<dtype>/model.onnx`` with ``model.onnx.data`` beside it."""
    config = CONFIGS[size]
    root = Path(cache_dir) if cache_dir is not None else CACHE_DIR
    target = root / "scale" / f"{size}-{dtype}"
    if _stamp(target) == config_hash(config, dtype):
        return target / "model.onnx"
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{size}-{dtype}-", dir=target.parent))
    try:
        build_at(tmp / "model.onnx", config, dtype)
        os.chmod(tmp, 0o755)  # mkdtemp's 0700
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return target / "model.onnx"


def _stamp(target: Path) -> str | None:
    try:
        meta = json.loads((target / "model.json").read_text())
    except (OSError, ValueError):
        return None
    return meta.get("hash") if (target / "model.onnx").exists() else None


def build_at(
    path, config: LlamaConfig, dtype: str = "fp32", external_min: int = EXTERNAL_MIN
) -> Path:
    """Write the model to ``path``, its weights to ``<path>.data`` (tensors of
    ``external_min`` bytes or more) and its config, hash and weight bytes to ``<stem>.json``."""
    path = Path(path)
    np_dtype, onnx_dtype = DTYPES[dtype]
    with ExternalWriter(path.parent / f"{path.name}.data", external_min) as weights:
        graph = _Builder(config, onnx_dtype, np_dtype, weights).graph()
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="graphprune-llama-scale",
    )
    model.ir_version = 8
    path.write_bytes(model.SerializeToString())  # onnx.save would touch the external data
    meta = {"hash": config_hash(config, dtype), "config": asdict(config), "dtype": dtype}
    meta["params"] = config.params()
    meta["weight_bytes"] = weights.total
    path.with_suffix(".json").write_text(json.dumps(meta, indent=1))
    return path


def weight_bytes(path) -> int:
    """The bytes of every weight (float initializer) of a model written by ``build_at``; the
    few int64 shape constants are left out."""
    meta = json.loads(Path(path).with_suffix(".json").read_text())
    return int(meta["weight_bytes"])


def write_calib(path, vocab: int, samples: int = 8, seq: int = 128, seed: int = 0) -> Path:
    """A calibration .npz of random token ids (``input_ids``, int64 [samples, seq])."""
    ids = np.random.default_rng(seed).integers(0, vocab, size=(samples, seq), dtype=np.int64)
    np.savez(path, input_ids=ids)
    return Path(path)


class ExternalWriter:
    """Appends tensors to one external-data file as they are made. Small tensors stay inline;
    big ones start at a multiple of ``ALIGN`` so ONNX Runtime can memory-map them."""

    def __init__(self, path: Path, external_min: int = EXTERNAL_MIN):
        self.path, self.external_min = Path(path), external_min
        self.offset = 0
        self.total = 0  # all initializer bytes, inline ones included

    def __enter__(self):
        self.file = open(self.path, "wb")  # noqa: SIM115 (closed in __exit__)
        return self

    def __exit__(self, *exc):
        self.file.close()

    def tensor(self, name: str, array: np.ndarray) -> TensorProto:
        array = np.ascontiguousarray(array)
        self.total += array.nbytes
        if array.nbytes < self.external_min:
            return onnx.numpy_helper.from_array(array, name)
        pad = -self.offset % ALIGN if array.nbytes >= EXTERNAL_MIN else 0
        self.file.write(b"\0" * pad)
        self.offset += pad
        self.file.write(memoryview(array).cast("B"))
        t = TensorProto(name=name, dims=array.shape)
        t.data_type = helper.np_dtype_to_tensor_dtype(array.dtype)
        t.data_location = TensorProto.EXTERNAL
        for key, value in (
            ("location", self.path.name),
            ("offset", str(self.offset)),
            ("length", str(array.nbytes)),
        ):
            t.external_data.add(key=key, value=value)
        self.offset += array.nbytes
        return t


class _Builder:
    """Nodes and initializers of the decoder, named the way the torch exporter names them."""

    def __init__(self, config: LlamaConfig, onnx_dtype: int, np_dtype, weights: ExternalWriter):
        self.c, self.dt, self.np_dt, self.w = config, onnx_dtype, np_dtype, weights
        self.nodes, self.inits = [], []
        self.count = 0

    # -- helpers ------------------------------------------------------------------------
    def op(self, op_type: str, inputs, name: str | None = None, **attrs) -> str:
        self.count += 1
        out = name or f"/{op_type}_{self.count}_output_0"
        self.nodes.append(
            helper.make_node(op_type, list(inputs), [out], f"/{op_type}_{self.count}", **attrs)
        )
        return out

    def const(self, name: str, value, dtype=np.int64) -> str:
        self.inits.append(onnx.numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def weight(self, name: str, shape, std: float = 0.02, mean: float = 0.0) -> str:
        """A random normal weight, deterministic per name, written out at once."""
        seed = int.from_bytes(hashlib.sha256(f"{SEED}:{name}".encode()).digest()[:8], "little")
        rng = np.random.default_rng(seed)
        array = rng.standard_normal(shape, dtype=np.float32)
        array *= std
        array += mean
        self.inits.append(self.w.tensor(name, array.astype(self.np_dt, copy=False)))
        return name

    # -- graph --------------------------------------------------------------------------
    def graph(self) -> onnx.GraphProto:
        c = self.c
        self._shared_constants()
        x = self.op("Gather", ["model.embed_tokens.weight", "input_ids"])
        self.weight("model.embed_tokens.weight", (c.vocab, c.hidden))
        cos, sin, mask = self._rope_and_mask()
        for i in range(c.layers):
            x = self._layer(i, x, cos, sin, mask)
        y = self._rmsnorm("model.norm", x)
        logits = self.op(
            "MatMul", [y, self.weight("lm_head.weight", (c.hidden, c.vocab))], "logits"
        )
        ids = helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"])
        out = helper.make_tensor_value_info(logits, self.dt, ["batch", "seq", c.vocab])
        return helper.make_graph(self.nodes, "llama_scale", [ids], [out], self.inits)

    def _shared_constants(self) -> None:
        c, dt = self.c, self.np_dt
        self.const("c_two", 2.0, dt)
        self.const("c_eps", c.eps, dt)
        self.const("c_scale", 1.0 / np.sqrt(c.head_dim), dt)
        self.const("c_axis_last", [-1])
        for k in (0, 1, 2):
            self.const(f"c_i{k}", [k])
        self.const("c_zero", 0)
        self.const("c_one", 1)
        self.const("c_half", [c.head_dim // 2])
        self.const("c_end", [np.iinfo(np.int64).max])
        for name, v in (("c_heads", c.heads), ("c_kv", c.kv_heads), ("c_hd", c.head_dim)):
            self.const(name, [v])
        self.const("c_rep", [c.heads // c.kv_heads])
        self.const("c_minus1", [-1])

    def _rope_and_mask(self) -> tuple[str, str, str]:
        """cos/sin [seq, head_dim] and the causal mask [seq, seq], computed from the length."""
        c = self.c
        shape = self.op("Shape", ["input_ids"])
        t = self.op("Gather", [shape, "c_one"])  # scalar seq
        pos = self.op("Range", ["c_zero", t, "c_one"])
        posf = self.op("Cast", [self.op("Unsqueeze", [pos, "c_i1"])], to=TensorProto.FLOAT)
        inv = 1.0 / c.rope_theta ** (np.arange(0, c.head_dim, 2, dtype=np.float32) / c.head_dim)
        self.const("rope.inv_freq", inv[None, :], np.float32)
        ang = self.op("Mul", [posf, "rope.inv_freq"])
        ang = self.op("Concat", [ang, ang], axis=-1)
        cos = self.op("Cast", [self.op("Cos", [ang])], to=self.dt)
        sin = self.op("Cast", [self.op("Sin", [ang])], to=self.dt)
        later = self.op(
            "Greater", [self.op("Unsqueeze", [pos, "c_i0"]), self.op("Unsqueeze", [pos, "c_i1"])]
        )
        self.const("c_mask_min", np.finfo(self.np_dt).min, self.np_dt)
        self.const("c_mask_zero", 0.0, self.np_dt)
        mask = self.op("Where", [later, "c_mask_min", "c_mask_zero"])
        return cos, sin, mask

    def _rmsnorm(self, prefix: str, x: str) -> str:
        """w * (x / sqrt(mean(x^2) + eps)), spelled out as LLaMA code exports."""
        ms = self.op("ReduceMean", [self.op("Pow", [x, "c_two"]), "c_axis_last"], keepdims=1)
        r = self.op("Reciprocal", [self.op("Sqrt", [self.op("Add", [ms, "c_eps"])])])
        w = self.weight(f"{prefix}.weight", (self.c.hidden,), mean=1.0)
        return self.op("Mul", [w, self.op("Mul", [x, r])])

    def _layer(self, i: int, x: str, cos: str, sin: str, mask: str) -> str:
        p = f"model.layers.{i}"
        x = self.op(
            "Add", [x, self._attention(p, self._rmsnorm(f"{p}.input_layernorm", x), cos, sin, mask)]
        )
        return self.op("Add", [x, self._mlp(p, self._rmsnorm(f"{p}.post_attention_layernorm", x))])

    def _linear(self, name: str, x: str, n_in: int, n_out: int) -> str:
        return self.op("MatMul", [x, self.weight(f"{name}.weight", (n_in, n_out))])

    def _attention(self, p: str, y: str, cos: str, sin: str, mask: str) -> str:
        c = self.c
        hd, kv_dim = c.head_dim, c.kv_heads * c.head_dim
        shape = self.op("Shape", [y])
        b = self.op("Unsqueeze", [self.op("Gather", [shape, "c_zero"]), "c_i0"])
        t = self.op("Unsqueeze", [self.op("Gather", [shape, "c_one"]), "c_i0"])
        # q: view(b, t, -1, head_dim) with a folded target; k, v: view(b, t, kv, head_dim)
        self.const(f"{p}.q_view", [0, 0, -1, hd])
        q = self.op(
            "Reshape", [self._linear(f"{p}.self_attn.q_proj", y, c.hidden, c.hidden), f"{p}.q_view"]
        )
        kv_view = self.op("Concat", [b, t, "c_kv", "c_hd"], axis=0)
        k = self.op(
            "Reshape", [self._linear(f"{p}.self_attn.k_proj", y, c.hidden, kv_dim), kv_view]
        )
        v = self.op(
            "Reshape", [self._linear(f"{p}.self_attn.v_proj", y, c.hidden, kv_dim), kv_view]
        )
        q, k, v = (self.op("Transpose", [z], perm=[0, 2, 1, 3]) for z in (q, k, v))
        q, k = self._rope(q, cos, sin), self._rope(k, cos, sin)
        k, v = self._repeat_kv(k, b, t), self._repeat_kv(v, b, t)
        scores = self.op("MatMul", [q, self.op("Transpose", [k], perm=[0, 1, 3, 2])])
        scores = self.op("Add", [self.op("Mul", [scores, "c_scale"]), mask])
        ctx = self.op("MatMul", [self.op("Softmax", [scores], axis=-1), v])
        ctx = self.op("Transpose", [ctx], perm=[0, 2, 1, 3])
        ctx = self.op("Reshape", [ctx, self.op("Concat", [b, t, "c_minus1"], axis=0)])
        return self._linear(f"{p}.self_attn.o_proj", ctx, c.hidden, c.hidden)

    def _rope(self, x: str, cos: str, sin: str) -> str:
        """x * cos + rotate_half(x) * sin, rotate_half = cat(-x[..., h:], x[..., :h])."""
        hi = self.op("Slice", [x, "c_half", "c_end", "c_axis_last"])
        lo = self.op("Slice", [x, "c_i0", "c_half", "c_axis_last"])
        rot = self.op("Concat", [self.op("Neg", [hi]), lo], axis=-1)
        return self.op("Add", [self.op("Mul", [x, cos]), self.op("Mul", [rot, sin])])

    def _repeat_kv(self, x: str, b: str, t: str) -> str:
        """[b, kv, t, hd] -> [b, kv, rep, t, hd] (Unsqueeze, Expand) -> [b, heads, t, hd]."""
        grow = self.op("Concat", [b, "c_kv", "c_rep", t, "c_hd"], axis=0)
        x = self.op("Expand", [self.op("Unsqueeze", [x, "c_i2"]), grow])
        return self.op("Reshape", [x, self.op("Concat", [b, "c_heads", t, "c_hd"], axis=0)])

    def _mlp(self, p: str, y: str) -> str:
        c = self.c
        gate = self._linear(f"{p}.mlp.gate_proj", y, c.hidden, c.intermediate)
        up = self._linear(f"{p}.mlp.up_proj", y, c.hidden, c.intermediate)
        act = self.op("Mul", [gate, self.op("Sigmoid", [gate])])  # SiLU
        return self._linear(
            f"{p}.mlp.down_proj", self.op("Mul", [act, up]), c.intermediate, c.hidden
        )
