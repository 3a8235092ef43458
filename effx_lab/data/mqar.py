"""Multi-Query Associative Recall (MQAR), the synthetic recall task of Zoology.

Reference: Arora, Eyuboglu, Timalsina, Johnson, Poli, Zou, Rudra, Ré (2023), "Zoology: Measuring and
Improving Recall in Efficient Language Models" (arXiv:2312.04927), Section 3 and Appendix; generator
``multiquery_ar`` in the HazyResearch/zoology repository, which this module follows.

The task. Each example opens with ``num_kv_pairs`` key-value pairs ``k_1 v_1 k_2 v_2 ... k_K v_K``
(the *context*, ``2K`` tokens). The rest of the sequence contains the same keys again, once each, in a
random order and at random positions (the *queries*), mixed with noise tokens. At a query position the
model must output the value that was bound to that key in the context: it has to *recall* a token it saw
many steps earlier, which full attention does by looking it up and which fixed-size recurrent states
(linear attention, state-space models) can only do if their state is large enough. Zoology shows that
this gap explains most of the quality gap between attention and gated convolutions on real text.

Generation, exactly as in Zoology (with ``V = vocab_size``, ``K = num_kv_pairs``, ``T = seq_len``):

1. keys are ``K`` *distinct* tokens drawn uniformly from the first half of the vocabulary,
   ``[1, V // 2)`` (token 0 is excluded: Zoology uses it as the filler before noise is added);
   values are ``K`` distinct tokens from the second half, ``[V // 2, V)``. A token therefore tells by
   its range whether it is a key or a value.
2. the context ``k_1 v_1 ... k_K v_K`` fills positions ``0 .. 2K - 1``.
3. the remaining ``T - 2K`` positions are cut into ``space = (T - 2K) // 2`` slots of two tokens. Each
   key gets its own slot ``g`` (distinct slots), drawn from the power law
   ``p(g) ∝ a · (g + 1)^(a - 1)``, ``g = 0 .. space - 1``, with ``a = power_a``: in real text the gap
   between two mentions of the same bigram follows a power law, so early slots (short gaps) are likelier
   for small ``a``; ``a = 1`` is uniform. The key is written at position ``2K + 2g`` (the first token of
   its slot) and the *target* at that same position is its value: the model reads the key and must
   predict the value as the next token.
4. every other position (the second token of each slot, unused slots, and the tail when ``T`` is odd)
   is noise: a token drawn uniformly from the whole vocabulary ``[0, V)`` (Zoology's
   ``random_non_queries=True``; with ``random_non_queries=False`` they stay 0, Zoology's illustration).
   Noise may by chance repeat a key or a value; such positions are not scored.

Targets are ``-100`` (PyTorch's ``ignore_index``) everywhere except at the ``K`` query positions, so
exactly ``K`` positions per example are scored.

Example (``vocab_size=12, num_kv_pairs=2, seq_len=16, random_non_queries=False``)::

    position:  0    1    2    3    4    5    6    7    8    9   10   11   12   13   14   15
    inputs:    2    8    4    7    0    0    4    0    0    0    0    0    2    0    0    0
    targets: -100 -100 -100 -100 -100 -100   7  -100 -100 -100 -100 -100   8  -100 -100 -100

Differences from Zoology's code, none of which changes the distribution: randomness comes from one
``numpy.random.Generator`` seeded with ``seed`` (Zoology seeds NumPy's global state and draws the noise
from PyTorch's unseeded global generator); sampling without replacement is vectorised over examples
(rejection of repeats, or the Gumbel-top-k trick) instead of one ``np.random.choice`` call per example;
odd ``seq_len`` is allowed; ``vocab_size`` need not exceed ``seq_len``. Zoology's ``num_passes``
(repeating the context, from "Just read twice") is not implemented.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._validate import check_array, check_bool, check_float, check_int, describe

__all__ = ["IGNORE_INDEX", "MQARBatch", "mqar", "mqar_accuracy"]

#: target value of positions that are not scored (PyTorch's ``cross_entropy`` ``ignore_index`` default)
IGNORE_INDEX = -100


@dataclass(frozen=True)
class MQARBatch:
    """A batch of MQAR examples.

    Attributes:
        inputs: ``[N, T]`` int64 token ids.
        targets: ``[N, T]`` int64; the value to predict at each query position, ``-100`` elsewhere.
        keys: ``[N, K]`` int64, the keys of each example in context order.
        values: ``[N, K]`` int64, ``values[n, i]`` is bound to ``keys[n, i]``.
        query_positions: ``[N, K]`` int64, the position where ``keys[n, i]`` is queried.
        metadata: the generator's arguments and derived sizes (context_size, key/value ranges, ...).
    """

    inputs: np.ndarray
    targets: np.ndarray
    keys: np.ndarray
    values: np.ndarray
    query_positions: np.ndarray
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def num_examples(self) -> int:
        return int(self.inputs.shape[0])

    @property
    def seq_len(self) -> int:
        return int(self.inputs.shape[1])

    @property
    def scored_mask(self) -> np.ndarray:
        """Boolean ``[N, T]`` mask of the positions that count for loss and accuracy."""
        return self.targets != IGNORE_INDEX

    def to_torch(self):
        """``(inputs, targets)`` as ``torch.int64`` tensors (targets keep ``-100`` for ``ignore_index``)."""
        import torch

        return torch.from_numpy(self.inputs.copy()), torch.from_numpy(self.targets.copy())


def _sample_without_replacement(
    rng: np.random.Generator,
    num_rows: int,
    pool_size: int,
    k: int,
    log_weights: np.ndarray | None = None,
) -> np.ndarray:
    """For each of ``num_rows`` rows, draw ``k`` distinct indices of ``range(pool_size)``.

    Equivalent in distribution to ``rng.choice(pool_size, k, replace=False, p=softmax(log_weights))``
    called once per row (uniform when ``log_weights`` is None), including the order of the draws, but
    vectorised over rows:

    * uniform case with ``k`` small against the pool (``k * (k - 1) <= pool_size``): draw ``k`` indices
      with replacement and redraw the rows that contain a repeat. Conditioning uniform ``k``-tuples on
      being distinct gives exactly the uniform distribution over ordered distinct tuples, and at most
      about half the rows (usually a few percent) need another round.
    * otherwise, the Gumbel-top-k trick (Kool, van Hoof & Welling 2019, "Stochastic Beams and Where to
      Find Them"): add independent Gumbel(0, 1) noise to the log-weights and keep the ``k`` largest in
      decreasing order. Rows are processed in chunks to bound memory.
    """
    out = np.empty((num_rows, k), dtype=np.int64)
    if log_weights is None and k * (k - 1) <= pool_size:
        todo = np.arange(num_rows)
        while todo.size:
            draw = rng.integers(0, pool_size, size=(todo.size, k), dtype=np.int64)
            sorted_draw = np.sort(draw, axis=1)
            repeated = (sorted_draw[:, 1:] == sorted_draw[:, :-1]).any(axis=1)
            out[todo[~repeated]] = draw[~repeated]
            todo = todo[repeated]
        return out
    rows_per_chunk = max(1, (1 << 22) // pool_size)
    for start in range(0, num_rows, rows_per_chunk):
        stop = min(num_rows, start + rows_per_chunk)
        scores = rng.gumbel(size=(stop - start, pool_size))
        if log_weights is not None:
            scores += log_weights[None, :]
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        top_scores = np.take_along_axis(scores, top, axis=1)
        order = np.argsort(-top_scores, axis=1, kind="stable")
        out[start:stop] = np.take_along_axis(top, order, axis=1)
    return out


def mqar(
    num_examples: int,
    seq_len: int,
    num_kv_pairs: int,
    vocab_size: int = 8192,
    *,
    power_a: float = 0.01,
    seed: int = 0,
    random_non_queries: bool = True,
) -> MQARBatch:
    """Generate ``num_examples`` Multi-Query Associative Recall examples (Zoology, Arora et al. 2023).

    See the module docstring for the construction. Requirements: ``seq_len >= 4 * num_kv_pairs`` (the
    context takes ``2K`` positions and the ``K`` queries need ``K`` distinct two-token slots in the rest),
    and ``vocab_size >= 2 * num_kv_pairs + 2`` so that ``K`` distinct keys fit in ``[1, V // 2)`` and
    ``K`` distinct values in ``[V // 2, V)``. ``power_a > 0`` shapes the distribution of query gaps
    (Zoology uses 0.01; 1.0 is uniform). The same arguments always give the same batch.
    """
    num_examples = check_int("num_examples", num_examples, min_value=1)
    num_kv_pairs = check_int("num_kv_pairs", num_kv_pairs, min_value=1)
    seq_len = check_int("seq_len", seq_len, min_value=1)
    vocab_size = check_int("vocab_size", vocab_size, min_value=1)
    power_a = check_float("power_a", power_a, min_value=0.0, min_inclusive=False)
    seed = check_int("seed", seed, min_value=0)
    random_non_queries = check_bool("random_non_queries", random_non_queries)
    if seq_len < 4 * num_kv_pairs:
        raise ValueError(
            f"seq_len must be >= 4 * num_kv_pairs = {4 * num_kv_pairs} (2 tokens per pair in the context and "
            f"a distinct 2-token slot per query), got seq_len={seq_len}"
        )
    if vocab_size < 2 * num_kv_pairs + 2:
        raise ValueError(
            f"vocab_size must be >= 2 * num_kv_pairs + 2 = {2 * num_kv_pairs + 2} so that {num_kv_pairs} distinct "
            f"keys fit in [1, vocab_size // 2) and distinct values in [vocab_size // 2, vocab_size), "
            f"got vocab_size={vocab_size}"
        )

    rng = np.random.default_rng(seed)
    n, k, t, v = num_examples, num_kv_pairs, seq_len, vocab_size
    half = v // 2
    context_size = 2 * k

    # 1. distinct keys in [1, V/2) and distinct values in [V/2, V) for every example
    keys = 1 + _sample_without_replacement(rng, n, half - 1, k)
    values = half + _sample_without_replacement(rng, n, v - half, k)

    # 3. one distinct slot per key, slot g drawn with probability proportional to a * (g + 1)^(a - 1)
    space = (t - context_size) // 2
    log_p = (power_a - 1.0) * np.log(np.arange(1, space + 1, dtype=np.float64))
    slots = _sample_without_replacement(rng, n, space, k, log_weights=log_p)
    query_positions = context_size + 2 * slots

    # 4. noise everywhere (uniform over the whole vocabulary), or Zoology's 0 filler
    if random_non_queries:
        inputs = rng.integers(0, v, size=(n, t), dtype=np.int64)
    else:
        inputs = np.zeros((n, t), dtype=np.int64)
    # 2. the context k_1 v_1 ... k_K v_K, then the queries overwrite their positions
    inputs[:, 0:context_size:2] = keys
    inputs[:, 1:context_size:2] = values
    np.put_along_axis(inputs, query_positions, keys, axis=1)

    targets = np.full((n, t), IGNORE_INDEX, dtype=np.int64)
    np.put_along_axis(targets, query_positions, values, axis=1)

    metadata = {
        "task": "mqar",
        "num_examples": n,
        "seq_len": t,
        "num_kv_pairs": k,
        "vocab_size": v,
        "power_a": power_a,
        "seed": seed,
        "random_non_queries": random_non_queries,
        "context_size": context_size,
        "num_query_slots": space,
        "key_range": (1, half),
        "value_range": (half, v),
    }
    return MQARBatch(
        inputs=inputs,
        targets=targets,
        keys=keys,
        values=values,
        query_positions=query_positions,
        metadata=metadata,
    )


def _to_numpy(name: str, value: Any) -> np.ndarray:
    check_array(name, value, allow_torch=True)
    if not isinstance(value, np.ndarray):
        value = value.detach().cpu().numpy()
    return value


def mqar_accuracy(predictions: Any, targets: Any) -> float:
    """Fraction of scored positions (``targets != -100``) where the prediction equals the target.

    ``predictions`` is either predicted token ids with the shape of ``targets`` (``[N, T]``), or logits
    of shape ``[N, T, V]`` whose argmax over the last axis is taken. NumPy arrays and torch tensors are
    accepted. Zoology reports this accuracy on held-out examples; unscored positions (context and noise)
    never count, so chance level is about ``1 / (V / 2)``.
    """
    targets = _to_numpy("targets", targets)
    predictions = _to_numpy("predictions", predictions)
    check_array("targets", targets, ndim=2, dtype_kind="iu")
    if predictions.ndim == targets.ndim + 1 and predictions.shape[:-1] == targets.shape:
        check_array("predictions", predictions, dtype_kind="fiu")
        predictions = predictions.argmax(axis=-1)
    elif predictions.shape == targets.shape:
        check_array("predictions", predictions, dtype_kind="iu")
    else:
        raise ValueError(
            f"predictions must have the shape of targets {tuple(targets.shape)} (token ids) or "
            f"{tuple(targets.shape) + ('V',)} (logits), got {describe(predictions)}"
        )
    scored = targets != IGNORE_INDEX
    n_scored = int(scored.sum())
    if n_scored == 0:
        raise ValueError(f"targets must contain at least one scored position (a value other than {IGNORE_INDEX})")
    return float((predictions[scored] == targets[scored]).mean())
