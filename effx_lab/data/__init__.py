"""Data for the course, all available offline.

* :mod:`effx_lab.data.corpus`: CPython's own help text (``pydoc_data.topics``) as a
  small real English corpus, a deterministic train/validation split by document, a
  byte-level tokenizer and random next-token batches.
* :mod:`effx_lab.data.pools`: the data every chapter shares: the tokenised splits,
  calibration and evaluation token streams for TinyLM (:func:`calibration_tokens`,
  :func:`eval_tokens`), disjoint calibration and evaluation sentences for MiniLM
  (:func:`calibration_sentences`, :func:`eval_sentences`, :func:`tokenize_sentences`)
  and one check for a token stream.
* :mod:`effx_lab.data.mqar`: the Multi-Query Associative Recall task of Zoology (Arora
  et al. 2023), the synthetic test of in-context recall used to compare attention with
  its efficient replacements.
"""
from __future__ import annotations

from .corpus import (
    ByteTokenizer,
    corpus_stats,
    get_batch,
    load_corpus,
    load_corpus_splits,
)
from .mqar import IGNORE_INDEX, MQARBatch, mqar, mqar_accuracy
from .pools import (
    calibration_sentences,
    calibration_tokens,
    check_token_stream,
    eval_sentences,
    eval_tokens,
    token_splits,
    tokenize_sentences,
)

__all__ = [
    "ByteTokenizer",
    "IGNORE_INDEX",
    "MQARBatch",
    "calibration_sentences",
    "calibration_tokens",
    "check_token_stream",
    "corpus_stats",
    "eval_sentences",
    "eval_tokens",
    "get_batch",
    "load_corpus",
    "load_corpus_splits",
    "mqar",
    "mqar_accuracy",
    "token_splits",
    "tokenize_sentences",
]
