"""A real English corpus that is available offline, a byte-level tokenizer, and training batches.

The corpus is the help text that ships inside CPython itself: :mod:`pydoc_data.topics` holds the
language reference pages that ``help("assert")`` prints (79 topics, about 466 kB of English prose and
code on Python 3.11). Every Python installation has it, so every notebook can train and evaluate a small
language model on real text with no download. Its exact content depends on the Python version, which is
why :func:`corpus_stats` records that version next to the sizes.

The tokenizer is the simplest one that covers every string: one token per UTF-8 byte (vocabulary of
256). It never fails on unseen text, at the cost of longer sequences than a subword tokenizer.
"""
from __future__ import annotations

import platform
from typing import Any

import numpy as np

from .._validate import check_array, check_int, describe

__all__ = [
    "ByteTokenizer",
    "corpus_stats",
    "get_batch",
    "load_corpus",
    "load_corpus_splits",
]

#: separator placed between documents when they are joined into one training stream
DOC_SEPARATOR = "\n\n"


def load_corpus() -> list[tuple[str, str]]:
    """Return the offline corpus as ``(topic, text)`` pairs in sorted topic order.

    The documents are CPython's ``pydoc_data.topics.topics`` (the text of ``help(topic)``).
    Sorting makes the order, and hence every split and batch drawn from it, deterministic.
    """
    from pydoc_data.topics import topics

    return [(name, topics[name]) for name in sorted(topics)]


def _split_documents(val_every: int) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    val_every = check_int("val_every", val_every, min_value=2)
    docs = load_corpus()
    if val_every > len(docs):
        raise ValueError(
            f"val_every must be <= the number of documents ({len(docs)}) so that the validation split is "
            f"not empty, got {val_every}"
        )
    train, val = [], []
    for i, doc in enumerate(docs):
        # the val_every-th, 2*val_every-th, ... document (1-based) goes to validation
        (val if (i + 1) % val_every == 0 else train).append(doc)
    return train, val


def load_corpus_splits(val_every: int = 10) -> tuple[str, str]:
    """Split the corpus into ``(train_text, val_text)`` by whole documents.

    In sorted topic order, every ``val_every``-th document (the 10th, 20th, ... for the default) goes to
    validation and the rest to training, so a document never straddles the split and validation text is
    never seen in training. Documents inside a split are joined by a blank line (``"\\n\\n"``).
    The split is deterministic: no randomness is involved.
    """
    train, val = _split_documents(val_every)
    return (
        DOC_SEPARATOR.join(text for _, text in train),
        DOC_SEPARATOR.join(text for _, text in val),
    )


class ByteTokenizer:
    """Byte-level tokenizer: a token is one byte of the UTF-8 encoding (``vocab_size == 256``).

    ``decode(encode(s)) == s`` for every string ``s``. Decoding an arbitrary id sequence (for example a
    model's samples) may cut a multi-byte character in half; those bytes are shown as U+FFFD
    (``errors="replace"``) instead of raising.
    """

    vocab_size: int = 256

    def encode(self, text: str) -> np.ndarray:
        """UTF-8 bytes of ``text`` as a 1-D ``int64`` array of ids in ``[0, 256)``."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {describe(text)}")
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int64)

    def decode(self, ids: Any) -> str:
        """Inverse of :meth:`encode`: ids in ``[0, 256)`` (a 1-D array, tensor or list) back to text."""
        if isinstance(ids, (list, tuple)):
            if not all(isinstance(i, (int, np.integer)) and not isinstance(i, bool) for i in ids):
                raise TypeError(f"ids must be a sequence of ints, got {describe(ids)}")
            ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        else:
            check_array("ids", ids, ndim=1, dtype_kind="iu", allow_torch=True)
            if not isinstance(ids, np.ndarray):
                ids = ids.detach().cpu().numpy()
        if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
            raise ValueError(
                f"ids must lie in [0, {self.vocab_size}), got values from {int(ids.min())} to {int(ids.max())}"
            )
        return ids.astype(np.uint8).tobytes().decode("utf-8", errors="replace")

    def __repr__(self) -> str:
        return f"ByteTokenizer(vocab_size={self.vocab_size})"


def corpus_stats(val_every: int = 10) -> dict[str, Any]:
    """Sizes of the corpus and of its splits (documents, characters, bytes = byte-level tokens).

    Returns a dict with ``n_docs``, ``n_docs_train``, ``n_docs_val``, ``n_chars_train``,
    ``n_chars_val``, ``n_bytes``, ``n_bytes_train``, ``n_bytes_val``, ``n_unique_bytes`` (over the whole
    corpus), ``val_topics`` and ``python_version`` (the corpus ships with Python and changes with it).
    """
    train_docs, val_docs = _split_documents(val_every)
    train_text, val_text = load_corpus_splits(val_every)
    train_bytes = train_text.encode("utf-8")
    val_bytes = val_text.encode("utf-8")
    return {
        "n_docs": len(train_docs) + len(val_docs),
        "n_docs_train": len(train_docs),
        "n_docs_val": len(val_docs),
        "n_chars_train": len(train_text),
        "n_chars_val": len(val_text),
        "n_bytes": len(train_bytes) + len(val_bytes),
        "n_bytes_train": len(train_bytes),
        "n_bytes_val": len(val_bytes),
        "n_unique_bytes": len(set(train_bytes) | set(val_bytes)),
        "val_topics": [name for name, _ in val_docs],
        "python_version": platform.python_version(),
    }


def get_batch(
    tokens: np.ndarray, batch_size: int, seq_len: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``batch_size`` random windows of a token stream for next-token prediction.

    Each row starts at an offset drawn uniformly from ``[0, len(tokens) - seq_len - 1]``;
    ``x[b] = tokens[s : s + seq_len]`` and ``y[b] = tokens[s + 1 : s + seq_len + 1]``, so ``y`` is ``x``
    shifted left by one: position ``t`` of ``y`` is the token the model must predict after reading
    ``x[b, :t + 1]``. Both are ``int64`` arrays of shape ``[batch_size, seq_len]``.
    """
    check_array("tokens", tokens, ndim=1, dtype_kind="iu")
    batch_size = check_int("batch_size", batch_size, min_value=1)
    seq_len = check_int("seq_len", seq_len, min_value=1)
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator (np.random.default_rng(seed)), got {describe(rng)}")
    n = tokens.shape[0]
    if n < seq_len + 1:
        raise ValueError(
            f"tokens must hold at least seq_len + 1 = {seq_len + 1} tokens to form one (x, y) window, "
            f"got {n}"
        )
    starts = rng.integers(0, n - seq_len, size=batch_size)  # high is exclusive: last start n - seq_len - 1
    idx = starts[:, None] + np.arange(seq_len)[None, :]
    x = tokens[idx].astype(np.int64)
    y = tokens[idx + 1].astype(np.int64)
    return x, y
