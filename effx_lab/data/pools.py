"""Data pools every chapter shares: byte-token windows of the corpus and sentence pools.

One place for the data a model is trained, calibrated and evaluated on, so that every
chapter (quantization, pruning, sparsity, ...) reads the same tokens and sentences, and
its numbers can be compared across chapters:

* :func:`token_splits`: the tokenised train/validation splits;
  :func:`calibration_tokens` (a slice of the *training* split, drawn with a seed) and
  :func:`eval_tokens` (the start of the held-out *validation* split) for TinyLM;
  :func:`check_token_stream`, one check for a stream handed to a model.
* :func:`calibration_sentences` / :func:`eval_sentences`: English sentences for MiniLM,
  from paragraphs of CPython's help text split once into two disjoint pools, and
  :func:`tokenize_sentences` (MiniLM's WordPiece, loaded once).

Everything is deterministic for a given Python (the help text ships with it) and
offline.
"""
from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

import numpy as np

from effx_lab._validate import check_array, check_int

from .corpus import ByteTokenizer, load_corpus_splits

__all__ = [
    "calibration_sentences",
    "calibration_tokens",
    "check_token_stream",
    "eval_sentences",
    "eval_tokens",
    "token_splits",
    "tokenize_sentences",
]


# ----------------------------------------------------------------------- token streams
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
    name: str,
    tokens: Any,
    *,
    min_len: int,
    vocab_size: int | None = None,
    allow_torch: bool = False,
) -> Any:
    """Check a 1-D stream of integer token ids: at least ``min_len`` long and, when
    ``vocab_size`` is given, inside ``[0, vocab_size)``. Returns it unchanged (a NumPy
    array, or a tensor if ``allow_torch``); raises ``TypeError``/``ValueError`` naming
    ``name``."""
    check_array(name, tokens, ndim=1, dtype_kind="iu", allow_torch=allow_torch)
    if tokens.shape[0] < min_len:
        raise ValueError(
            f"{name} must hold at least {min_len} tokens, got {tokens.shape[0]}"
        )
    if vocab_size is not None and tokens.shape[0]:
        lo, hi = int(tokens.min()), int(tokens.max())
        if lo < 0 or hi >= vocab_size:
            raise ValueError(
                f"{name} must lie in [0, {vocab_size - 1}] (the model's vocabulary), "
                f"got values in [{lo}, {hi}]"
            )
    return tokens


def calibration_tokens(n_tokens: int = 8192, seed: int = 0) -> np.ndarray:
    """A contiguous slice of ``n_tokens`` byte tokens (int64, a copy) of the *training*
    split, starting at an offset drawn with ``seed``: calibration data TinyLM has seen
    in training, as in the papers' setups."""
    train = _token_splits(10)[0]
    n_tokens = check_int("n_tokens", n_tokens, min_value=1, max_value=train.shape[0])
    seed = check_int("seed", seed, min_value=0)
    start = int(np.random.default_rng(seed).integers(0, train.shape[0] - n_tokens + 1))
    return train[start : start + n_tokens].copy()


def eval_tokens(n_tokens: int | None = None) -> np.ndarray:
    """The first ``n_tokens`` byte tokens (int64, a copy; ``None``: all, about 11k) of
    the held-out *validation* split, which neither training nor
    :func:`calibration_tokens` ever sees."""
    val = _token_splits(10)[1]
    if n_tokens is not None:
        n_tokens = check_int("n_tokens", n_tokens, min_value=1, max_value=val.shape[0])
    return val[:n_tokens].copy()


# ---------------------------------------------------------------------- sentence pools
_HEADER = re.compile(r"[*=\-~^]{3,}")
_MIN_WORDS, _MAX_WORDS = 8, 40
# every 3rd sentence of the pool is reserved for calibration, the others for evaluation
_CALIB_EVERY = 3


@lru_cache(maxsize=1)
def _sentence_pools() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Prose paragraphs of CPython's help text (sorted topics, paragraphs in order): not
    indented (code), not a title (a line of ``***``), 8 to 40 words (most fit 64
    WordPiece tokens), each kept once; the i-th (0-based) goes to the calibration pool
    when ``i % 3 == 0``, else to the evaluation pool."""
    from pydoc_data.topics import topics

    pool: list[str] = []
    seen: set[str] = set()
    for key in sorted(topics):
        for para in topics[key].split("\n\n"):
            if not para.strip() or para[0].isspace():
                continue
            lines = para.split("\n")
            if any(_HEADER.fullmatch(line.strip()) for line in lines):
                continue
            text = re.sub(r"\s+", " ", " ".join(line.strip() for line in lines)).strip()
            if not _MIN_WORDS <= len(text.split()) <= _MAX_WORDS or text in seen:
                continue
            seen.add(text)
            pool.append(text)
    calib = tuple(s for i, s in enumerate(pool) if i % _CALIB_EVERY == 0)
    evals = tuple(s for i, s in enumerate(pool) if i % _CALIB_EVERY != 0)
    return calib, evals


def _sample(pool: tuple[str, ...], n: Any, seed: Any, what: str) -> list[str]:
    n = check_int("n", n, min_value=1)
    seed = check_int("seed", seed, min_value=0)
    if n > len(pool):
        raise ValueError(
            f"n must be <= {len(pool)} (the {what} pool's size on this Python), got {n}"
        )
    idx = np.random.default_rng(seed).permutation(len(pool))[:n]
    return [pool[i] for i in idx]


def calibration_sentences(n: int = 64, seed: int = 0) -> list[str]:
    """``n`` English sentences for calibration, drawn (``seed``) from the calibration
    pool of CPython's help text; never overlaps :func:`eval_sentences` whatever the
    seeds. Deterministic for a given Python."""
    return _sample(_sentence_pools()[0], n, seed, "calibration")


def eval_sentences(n: int = 256, seed: int = 1) -> list[str]:
    """``n`` English sentences for evaluation, drawn (``seed``) from the evaluation pool
    (disjoint from the calibration pool)."""
    return _sample(_sentence_pools()[1], n, seed, "evaluation")


@lru_cache(maxsize=1)
def _tokenizer():
    from effx_lab.models import MiniLMTokenizer

    return MiniLMTokenizer()


def tokenize_sentences(
    sentences: list[str], max_length: int = 64
) -> tuple[np.ndarray, np.ndarray]:
    """MiniLM's WordPiece ``(ids, mask)`` (int64 ``[n, T]``, padded to the longest,
    truncated to ``max_length``) with a tokenizer loaded once. ``sentences`` is a
    non-empty list of str."""
    return _tokenizer()(sentences, max_length=max_length)
