"""The course's models.

* **TinyLM**: a tiny GPT-style decoder with a KV cache, written twice with the same weights and names:
  :mod:`effx_lab.models.reference` (NumPy, readable) and :mod:`effx_lab.models.torch_ops` (PyTorch).
  :func:`load_pretrained_tinylm` returns the copy trained on CPython's help text
  (:mod:`effx_lab.models.train` made it).
* **MiniLM**: the real all-MiniLM-L6-v2 sentence encoder, loaded offline (:mod:`effx_lab.models.minilm`),
  with ``minilm_forward`` in both backends.
* **LM**: a small nanoGPT-style language model whose token-mixing and feed-forward sublayers are
  registered by name (:mod:`effx_lab.models.lm`; chapter 7's Transformer, FLASH-Quad and FLASH models are
  configurations of it, and later chapters register their own sublayers).
* **Training and evaluation**: the course's one training loop with hooks, its learning-rate schedule, and
  the mean loss / perplexity of a token stream (:mod:`effx_lab.models.training`).

Typical use::

    from effx_lab.models import TinyLMConfig, load_pretrained_tinylm
    from effx_lab.models import reference, torch_ops
    lm = load_pretrained_tinylm("torch")

Submodules that import torch or read weights are loaded on first use.
"""
from __future__ import annotations

import importlib
from typing import Any

from .config import MiniLMConfig, TinyLMConfig, check_tinylm_params, init_tinylm_params, tinylm_param_shapes

_LAZY = {
    "reference": None,
    "torch_ops": None,
    "minilm": None,
    "train": None,
    "lm": None,
    "training": None,
    "surgery": None,
    "evaluation": None,
    "train_tinylm": "train",
    "perplexity": "training",
    "evaluate": "training",
    "lr_schedule": "training",
    "TrainHistory": "training",
    "LM": "lm",
    "LMSpec": "lm",
    "unigram_perplexity": "train",
    "save_tinylm": "train",
    "load_tinylm": "train",
    "pretrained_tinylm_path": "train",
    "load_pretrained_tinylm": "train",
    "minilm_dir": "minilm",
    "load_minilm": "minilm",
    "MiniLMTokenizer": "minilm",
    "encode": "minilm",
}

__all__ = [
    "TinyLMConfig",
    "MiniLMConfig",
    "init_tinylm_params",
    "tinylm_param_shapes",
    "check_tinylm_params",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module_name = _LAZY[name]
    if module_name is None:
        return importlib.import_module(f"{__name__}.{name}")
    return getattr(importlib.import_module(f"{__name__}.{module_name}"), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
