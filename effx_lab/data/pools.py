"""Data pools every chapter shares: byte-token windows of the corpus and (later) sentence pools.

One place for the tokenised train/validation splits, so that training, calibration and evaluation in
every chapter read the same tokens, and one check for a token stream handed to a model.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np

from effx_lab._validate import check_array, check_int

from .corpus import ByteTokenizer, load_corpus_splits

__all__ = ["check_token_stream", "token_splits"]


@lru_cache(maxsize=4)
def _token_splits(val_every: int) -> tuple[np.ndarray, np.ndarray]:
    tok = ByteTokenizer()
    train_text, val_text = load_corpus_splits(val_every)
    train, val = tok.encode(train_text), tok.encode(val_text)
    train.setflags(write=False)
    val.setflags(write=False)
    return train, val


def token_splits(val_every: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """``(train_tokens, val_tokens)``: the byte-tokenised splits of
    :func:`effx_lab.data.load_corpus_splits` (1-D int64, read-only, cached)."""
    return _token_splits(check_int("val_every", val_every, min_value=2))


def check_token_stream(
    name: str, tokens: Any, *, min_len: int, vocab_size: int | None = None, allow_torch: bool = False
) -> Any:
    """Check a 1-D stream of integer token ids: at least ``min_len`` long and, when ``vocab_size`` is
    given, inside ``[0, vocab_size)``. Returns it unchanged (a NumPy array, or a tensor if
    ``allow_torch``); raises ``TypeError``/``ValueError`` naming ``name``."""
    check_array(name, tokens, ndim=1, dtype_kind="iu", allow_torch=allow_torch)
    if tokens.shape[0] < min_len:
        raise ValueError(f"{name} must hold at least {min_len} tokens, got {tokens.shape[0]}")
    if vocab_size is not None and tokens.shape[0]:
        lo, hi = int(tokens.min()), int(tokens.max())
        if lo < 0 or hi >= vocab_size:
            raise ValueError(
                f"{name} must lie in [0, {vocab_size - 1}] (the model's vocabulary), "
                f"got values in [{lo}, {hi}]"
            )
    return tokens
