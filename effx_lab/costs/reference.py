"""Sequence packing in NumPy, written to be read (chapter 1, section 01.3).

A batch of sentences of different lengths is usually stored right-padded: ``x[B, L, d]`` where
sequence ``b`` owns positions ``0 .. lengths[b] - 1`` and the rest is padding. Every position-wise layer
(the Q/K/V/O projections, the FFN) then spends FLOPs on padding. EffectiveTransformer (ByteDance, 2020;
cited by Weng's survey as a "smart batching" remedy) removes the padding before those layers:

* ``pack``: gather the real tokens into one ``[T, d]`` matrix, ``T = sum(lengths)``;
* run the position-wise layer on ``T`` rows instead of ``B * L``;
* ``unpack``: scatter the rows back to ``[B, L, d]`` (padding filled with ``pad_value``) for the
  layers that need the padded layout (attention, unless it has a variable-length kernel).

Where sequence ``b`` lives in the packed matrix is described by the cumulative offsets
``cu = [0, l_0, l_0 + l_1, ..., T]`` (``cu_seqlens`` in the FlashAttention variable-length API): rows
``cu[b] .. cu[b+1] - 1``.

The fast version, with the same names and signatures, is :mod:`effx_lab.costs.torch_ops`.
"""
from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np

from effx_lab._validate import check_array, check_int, describe

__all__ = [
    "lengths_to_mask",
    "cu_seqlens",
    "pack",
    "unpack",
    "gelu",
    "ffn",
    "padded_ffn",
    "packed_ffn",
    "padding_stats",
]


# --------------------------------------------------------------------------- validation helpers
def _lengths(lengths: Any, max_len: int | None = None) -> np.ndarray:
    """Validate ``lengths`` (1-D non-negative ints, each <= max_len) and return an int64 array."""
    if isinstance(lengths, (list, tuple)):
        if not all(isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)) for v in lengths):
            raise TypeError(f"lengths must contain ints, got {describe(lengths)}")
        lengths = np.asarray(lengths, dtype=np.int64).reshape(len(lengths))
    check_array("lengths", lengths, ndim=1, dtype_kind="iu")
    arr = lengths.astype(np.int64)
    if arr.size and arr.min() < 0:
        raise ValueError(f"lengths must be >= 0, got min {int(arr.min())}")
    if max_len is not None and arr.size and arr.max() > max_len:
        raise ValueError(f"lengths must be <= max_len={max_len}, got max {int(arr.max())}")
    return arr


def _check_cu(cu: Any, n_rows: int | None = None, max_len: int | None = None) -> np.ndarray:
    """Validate cumulative offsets: 1-D ints, cu[0] == 0, non-decreasing, cu[-1] == n_rows, steps <= max_len."""
    check_array("cu", cu, ndim=1, dtype_kind="iu")
    if cu.shape[0] < 1:
        raise ValueError(f"cu must have at least one entry (B + 1 offsets), got shape {tuple(cu.shape)}")
    cu = cu.astype(np.int64)
    if int(cu[0]) != 0:
        raise ValueError(f"cu must start at 0, got cu[0] = {int(cu[0])}")
    steps = np.diff(cu)
    if steps.size and steps.min() < 0:
        raise ValueError(f"cu must be non-decreasing, got a step of {int(steps.min())}")
    if n_rows is not None and int(cu[-1]) != n_rows:
        raise ValueError(f"cu[-1] must equal packed.shape[0] = {n_rows}, got {int(cu[-1])}")
    if max_len is not None and steps.size and steps.max() > max_len:
        raise ValueError(f"cu steps (sequence lengths) must be <= max_len={max_len}, got {int(steps.max())}")
    return cu


def _check_padded(x: Any, lengths: Any) -> tuple[np.ndarray, np.ndarray]:
    check_array("x", x, ndim=tuple(range(2, 8)))
    lens = _lengths(lengths, max_len=x.shape[1])
    if lens.shape[0] != x.shape[0]:
        raise ValueError(
            f"lengths must have one entry per sequence of x (x.shape[0] = {x.shape[0]}), got {lens.shape[0]}"
        )
    return x, lens


def _check_ffn(x: np.ndarray, w1: Any, b1: Any, w2: Any, b2: Any) -> None:
    check_array("x", x, ndim=3, dtype_kind="f")
    _check_ffn_weights(x, w1, b1, w2, b2)


def _check_ffn_weights(x: np.ndarray, w1: Any, b1: Any, w2: Any, b2: Any) -> None:
    """Shapes of the FFN weights against the last axis (d_model) of the already validated input ``x``."""
    d = x.shape[-1]
    for name, arr in (("w1", w1), ("b1", b1), ("w2", w2), ("b2", b2)):
        check_array(name, arr, dtype_kind="f")
    if w1.ndim != 2 or w1.shape[0] != d:
        raise ValueError(f"w1 must have shape [d_model={d}, d_ff], got {tuple(w1.shape)}")
    d_ff = w1.shape[1]
    if b1.shape != (d_ff,):
        raise ValueError(f"b1 must have shape [d_ff={d_ff}], got {tuple(b1.shape)}")
    if w2.shape != (d_ff, d):
        raise ValueError(f"w2 must have shape [d_ff={d_ff}, d_model={d}], got {tuple(w2.shape)}")
    if b2.shape != (d,):
        raise ValueError(f"b2 must have shape [d_model={d}], got {tuple(b2.shape)}")


def _check_pad_value(pad_value: Any, dtype: Any) -> Any:
    """A real number (inf allowed, e.g. -inf for masks); a whole number when the data are integers."""
    if isinstance(pad_value, (bool, np.bool_)) or not isinstance(pad_value, numbers.Real):
        raise TypeError(f"pad_value must be a real number, got {describe(pad_value)}")
    is_int = np.dtype(dtype).kind in "iub" if isinstance(dtype, np.dtype) else not (
        dtype.is_floating_point or dtype.is_complex
    )
    if is_int and not (math.isfinite(float(pad_value)) and float(pad_value) == int(pad_value)):
        raise ValueError(f"pad_value must be a whole number for integer data of dtype {dtype}, got {pad_value!r}")
    return pad_value


# --------------------------------------------------------------------------- packing
def lengths_to_mask(lengths: Any, max_len: int) -> np.ndarray:
    """Boolean ``[B, max_len]`` mask, ``True`` at the real tokens: ``mask[b, t] = t < lengths[b]``."""
    max_len = check_int("max_len", max_len, min_value=0)
    lens = _lengths(lengths, max_len)
    mask = np.zeros((lens.shape[0], max_len), dtype=bool)
    for b, n in enumerate(lens):
        mask[b, :n] = True
    return mask


def cu_seqlens(lengths: Any) -> np.ndarray:
    """Cumulative offsets ``[0, l_0, l_0 + l_1, ..., sum(lengths)]`` as int64 ``[B + 1]``."""
    lens = _lengths(lengths)
    cu = np.zeros(lens.shape[0] + 1, dtype=np.int64)
    for b, n in enumerate(lens):
        cu[b + 1] = cu[b] + n
    return cu


def pack(x: np.ndarray, lengths: Any) -> tuple[np.ndarray, np.ndarray]:
    """Remove right padding: ``x[B, L, ...]`` -> ``(packed[T, ...], cu[B + 1])`` with ``T = sum(lengths)``.

    Row ``cu[b] + t`` of ``packed`` is ``x[b, t]`` for ``t < lengths[b]``; padding positions are dropped.
    """
    x, lens = _check_padded(x, lengths)
    cu = cu_seqlens(lens)
    packed = np.empty((int(cu[-1]),) + x.shape[2:], dtype=x.dtype)
    for b in range(x.shape[0]):
        packed[cu[b]:cu[b + 1]] = x[b, : lens[b]]
    return packed, cu


def unpack(packed: np.ndarray, cu: np.ndarray, max_len: int, pad_value: float = 0) -> np.ndarray:
    """Inverse of :func:`pack`: ``packed[T, ...]`` -> ``[B, max_len, ...]`` with padding set to ``pad_value``."""
    check_array("packed", packed, ndim=tuple(range(1, 7)))
    max_len = check_int("max_len", max_len, min_value=0)
    cu = _check_cu(cu, n_rows=packed.shape[0], max_len=max_len)
    pad_value = _check_pad_value(pad_value, packed.dtype)
    batch = cu.shape[0] - 1
    out = np.full((batch, max_len) + packed.shape[1:], pad_value, dtype=packed.dtype)
    for b in range(batch):
        n = cu[b + 1] - cu[b]
        out[b, :n] = packed[cu[b]:cu[b + 1]]
    return out


# --------------------------------------------------------------------------- FFN on padded vs packed tokens
def gelu(x: np.ndarray) -> np.ndarray:
    """GELU, tanh approximation (Hendrycks & Gimpel 2016, eq. in sec. 2; as in GPT-2 and BERT's original code):
    ``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))``."""
    check_array("x", x, dtype_kind="f")
    c = math.sqrt(2.0 / math.pi)
    return 0.5 * x * (1.0 + np.tanh(c * (x + 0.044715 * x**3)))


def _ffn(h: np.ndarray, w1: np.ndarray, b1: np.ndarray, w2: np.ndarray, b2: np.ndarray) -> np.ndarray:
    return gelu(h @ w1 + b1) @ w2 + b2


def ffn(h: np.ndarray, w1: np.ndarray, b1: np.ndarray, w2: np.ndarray, b2: np.ndarray) -> np.ndarray:
    """Position-wise feed-forward network ``GELU(h W1 + b1) W2 + b2`` on the last axis of ``h``.

    The Transformer's FFN (Vaswani et al. 2017, eq. 2) with GELU in place of ReLU, as in BERT and GPT-2.
    ``h`` may have any leading shape: a padded batch ``[B, L, d_model]`` or packed tokens ``[T, d_model]``
    (each row is transformed on its own, which is why packing does not change the result). Weights:
    ``w1 [d_model, d_ff]``, ``b1 [d_ff]``, ``w2 [d_ff, d_model]``, ``b2 [d_model]``. Costs
    ``2 * 2 * rows * d_model * d_ff`` FLOPs for the two matrix products.
    """
    check_array("h", h, ndim=tuple(range(1, 8)), dtype_kind="f")
    _check_ffn_weights(h, w1, b1, w2, b2)
    return _ffn(h, w1, b1, w2, b2)


def padded_ffn(
    x: np.ndarray, lengths: Any, w1: np.ndarray, b1: np.ndarray, w2: np.ndarray, b2: np.ndarray
) -> np.ndarray:
    """Position-wise FFN ``GELU(x W1 + b1) W2 + b2`` run on all ``B * L`` positions, padding then zeroed.

    This is what a padded batch costs: ``2 * 2 * B * L * d_model * d_ff`` FLOPs whatever the lengths.
    """
    x, lens = _check_padded(x, lengths)
    _check_ffn(x, w1, b1, w2, b2)
    y = _ffn(x, w1, b1, w2, b2)
    return np.where(lengths_to_mask(lens, x.shape[1])[:, :, None], y, np.zeros((), dtype=y.dtype))


def packed_ffn(
    x: np.ndarray, lengths: Any, w1: np.ndarray, b1: np.ndarray, w2: np.ndarray, b2: np.ndarray
) -> np.ndarray:
    """The same FFN on the real tokens only: pack -> FFN on ``T`` rows -> unpack (padding 0).

    Equal to :func:`padded_ffn` (each row of a position-wise layer depends on that row alone) for
    ``2 * 2 * T * d_model * d_ff`` FLOPs, ``T = sum(lengths)``.
    """
    x, lens = _check_padded(x, lengths)
    _check_ffn(x, w1, b1, w2, b2)
    packed, cu = pack(x, lens)
    return unpack(_ffn(packed, w1, b1, w2, b2), cu, x.shape[1], 0)


def padding_stats(lengths: Any, max_len: int, *, d_model: int = 384, d_ff: int = 1536) -> dict:
    """How much of a right-padded batch is padding, and the FFN FLOPs padded vs packed.

    Returns plain Python numbers: ``batch_size``, ``max_len``, ``real_tokens`` (T), ``total_slots``
    (B * L), ``padded_slots``, ``fraction_wasted`` (padded / total), ``ffn_flops_padded`` and
    ``ffn_flops_packed`` for a 2-matrix FFN of ``d_model`` x ``d_ff`` (defaults: MiniLM's 384 x 1536),
    counted as ``2 * 2 * rows * d_model * d_ff``, and ``flops_saved_fraction``.
    """
    max_len = check_int("max_len", max_len, min_value=0)
    lens = _lengths(lengths, max_len)
    return _stats(int(lens.shape[0]), int(lens.sum()), max_len, d_model, d_ff)


def _stats(batch: int, real: int, max_len: int, d_model: Any, d_ff: Any) -> dict:
    """Shared by the NumPy and torch ``padding_stats``."""
    d_model = check_int("d_model", d_model, min_value=1)
    d_ff = check_int("d_ff", d_ff, min_value=1)
    total = batch * max_len
    padded = total - real
    per_row = 2 * 2 * d_model * d_ff
    return {
        "batch_size": batch,
        "max_len": max_len,
        "real_tokens": real,
        "total_slots": total,
        "padded_slots": padded,
        "fraction_wasted": padded / total if total else 0.0,
        "ffn_flops_padded": per_row * total,
        "ffn_flops_packed": per_row * real,
        "flops_saved_fraction": padded / total if total else 0.0,
    }
