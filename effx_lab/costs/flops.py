"""FLOP and byte accounting for Transformer inference: prefill vs decode (chapter 1, section 01.2).

Conventions (the same everywhere in the course):

* A matrix product ``A[m, k] @ B[k, n]`` costs ``2 * m * n * k`` FLOPs: one multiply and one add per
  term of every dot product (a fused multiply-add counts as 2).
* Its ideal memory traffic reads each operand once and writes the output once:
  ``(m*k + k*n + m*n) * bytes_per_elem`` bytes. Real kernels move more (tiles re-read from DRAM when
  they do not fit in cache), never less, so this is a lower bound on bytes and an upper bound on
  arithmetic intensity.
* Arithmetic intensity = FLOPs / bytes. On the roofline (Williams, Waterman and Patterson 2009) a kernel
  takes at least ``max(flops / peak_flops, bytes / peak_bandwidth)`` seconds.
* Only matrix products are counted in the model-level functions: softmax, norms, activations, residual
  adds and the embedding lookup are a few FLOPs per element, negligible next to the matmuls.
* All counts are exact Python ``int`` (no overflow at any model size); intensities and times are floats.

Why decode is memory-bound: generating one token per sequence multiplies every weight matrix by a
``[batch, d]`` activation, so each weight (2 bytes in bf16) is used for ``2 * batch`` FLOPs, an
intensity of about ``batch`` FLOPs/byte, far below the hundreds an accelerator needs to be compute-bound.
Prefill processes the whole prompt at once, ``batch * prompt_len`` rows, and reaches hundreds.
"""
from __future__ import annotations

import numbers
from fractions import Fraction
from typing import Any

from effx_lab._validate import check_bool, check_float, check_int, describe

from .memory import ModelShape, _bytes_per_elem, _ceil_bytes, _check_shape, kv_cache_bytes

__all__ = [
    "matmul_flops",
    "matmul_bytes",
    "matmul_flops_bytes",
    "arithmetic_intensity",
    "roofline_time",
    "layer_flops_breakdown",
    "forward_flops",
    "prefill_flops",
    "decode_flops",
    "prefill_bytes",
    "decode_bytes",
    "prefill_intensity",
    "decode_intensity",
]


def _dims(m: int, n: int, k: int) -> tuple[int, int, int]:
    return (
        check_int("m", m, min_value=1),
        check_int("n", n, min_value=1),
        check_int("k", k, min_value=1),
    )


def matmul_flops(m: int, n: int, k: int) -> int:
    """FLOPs of ``A[m, k] @ B[k, n]``: ``2 * m * n * k`` (a multiply-add counts as 2 FLOPs)."""
    m, n, k = _dims(m, n, k)
    return 2 * m * n * k


def matmul_bytes(m: int, n: int, k: int, bytes_per_elem: float = 2) -> int:
    """Ideal bytes moved by ``A[m, k] @ B[k, n]``: read A and B once, write C once.

    ``(m*k + k*n + m*n) * bytes_per_elem``, rounded up to a whole byte for sub-byte formats.
    """
    m, n, k = _dims(m, n, k)
    per = _bytes_per_elem("bytes_per_elem", bytes_per_elem)
    return _ceil_bytes(m * k + k * n + m * n, per)


def matmul_flops_bytes(m: int, n: int, k: int, bytes_per_elem: float = 2) -> tuple[int, int]:
    """``(matmul_flops(m, n, k), matmul_bytes(m, n, k, bytes_per_elem))``: reference for exercise 01.2."""
    return matmul_flops(m, n, k), matmul_bytes(m, n, k, bytes_per_elem)


def arithmetic_intensity(m: int, n: int, k: int, bytes_per_elem: float = 2) -> float:
    """FLOPs per byte of ``A[m, k] @ B[k, n]`` with ideal traffic.

    For a square GEMM (``m = n = k``) in fp32 this is ``2n^3 / (12 n^2) = n / 6``; for a GEMV
    (``n = 1``) it is about ``2 / bytes_per_elem``: one multiply-add per weight read.
    """
    return matmul_flops(m, n, k) / matmul_bytes(m, n, k, bytes_per_elem)


def roofline_time(flops: float, bytes_moved: float, peak_flops: float, peak_bandwidth: float) -> float:
    """Lower bound on the run time of a kernel: ``max(flops / peak_flops, bytes_moved / peak_bandwidth)``.

    Compute and memory traffic overlap on modern hardware, so the slower of the two sets the time
    (the roofline model, Williams et al. 2009), not their sum.
    """
    flops = check_float("flops", flops, min_value=0)
    bytes_moved = check_float("bytes_moved", bytes_moved, min_value=0)
    peak_flops = check_float("peak_flops", peak_flops, min_value=0, min_inclusive=False)
    peak_bandwidth = check_float("peak_bandwidth", peak_bandwidth, min_value=0, min_inclusive=False)
    return max(flops / peak_flops, bytes_moved / peak_bandwidth)


def _layer_terms(shape: ModelShape, n_tokens: int, n_pairs: int) -> dict[str, int]:
    """Matmul FLOPs of one layer for ``n_tokens`` new tokens and ``n_pairs`` (query, key) pairs."""
    d, dh = shape.d_model, shape.head_dim
    q_width = shape.n_heads * dh
    kv_width = shape.n_kv_heads * dh
    terms = {
        "q_proj": 2 * n_tokens * d * q_width,
        "k_proj": 2 * n_tokens * d * kv_width,
        "v_proj": 2 * n_tokens * d * kv_width,
        # every query head scores every visible key: a dot product of length head_dim per pair and head
        "attn_scores": 2 * n_pairs * shape.n_heads * dh,
        # the softmax weights times V: same count
        "attn_values": 2 * n_pairs * shape.n_heads * dh,
        "o_proj": 2 * n_tokens * q_width * d,
    }
    if shape.gated_mlp:
        terms["mlp_gate"] = 2 * n_tokens * d * shape.d_ff
    terms["mlp_up"] = 2 * n_tokens * d * shape.d_ff
    terms["mlp_down"] = 2 * n_tokens * shape.d_ff * d
    return terms


def layer_flops_breakdown(shape: ModelShape | str, n_tokens: int, context_len: int) -> dict[str, int]:
    """Per-matrix FLOPs of one layer plus the output head, for one sequence (see :func:`forward_flops`).

    Keys: ``q_proj, k_proj, v_proj, attn_scores, attn_values, o_proj, [mlp_gate,] mlp_up, mlp_down``
    (one layer each) and ``lm_head`` (once per forward pass).
    """
    shape = _check_shape(shape)
    n_tokens = check_int("n_tokens", n_tokens, min_value=1)
    context_len = check_int("context_len", context_len, min_value=1)
    terms = _layer_terms(shape, n_tokens, n_tokens * context_len)
    terms["lm_head"] = 2 * n_tokens * shape.d_model * shape.vocab_size
    return terms


def _forward(shape: ModelShape, n_tokens: int, n_pairs: int) -> int:
    per_layer = sum(_layer_terms(shape, n_tokens, n_pairs).values())
    lm_head = 2 * n_tokens * shape.d_model * shape.vocab_size
    return shape.n_layers * per_layer + lm_head


def forward_flops(shape: ModelShape | str, n_tokens: int, context_len: int) -> int:
    """Matmul FLOPs of one forward pass of ONE sequence: ``n_tokens`` new tokens, each attending to
    ``context_len`` tokens.

    Per layer: the projections ``2 * n_tokens * d_model * width`` for W_q (width ``n_heads * head_dim``),
    W_k and W_v (width ``n_kv_heads * head_dim``) and W_o; attention scores ``Q K^T`` and the weighted sum
    ``softmax(.) V``, each ``2 * n_tokens * context_len * n_heads * head_dim``; the MLP, 2 (or 3 when
    gated) matrices of ``2 * n_tokens * d_model * d_ff``. Plus the output head
    ``2 * n_tokens * d_model * vocab_size`` (logits for every new token). Roughly
    ``2 * n_tokens * params + 4 * n_layers * n_tokens * context_len * n_heads * head_dim``
    (Kaplan et al. 2020, "Scaling Laws", Table 1).
    """
    shape = _check_shape(shape)
    n_tokens = check_int("n_tokens", n_tokens, min_value=1)
    context_len = check_int("context_len", context_len, min_value=1)
    return _forward(shape, n_tokens, n_tokens * context_len)


def prefill_flops(shape: ModelShape | str, batch_size: int, prompt_len: int, *, causal: bool = False) -> int:
    """FLOPs of processing ``batch_size`` prompts of ``prompt_len`` tokens in one forward pass.

    With ``causal=False`` (the default) every prompt token is charged the full ``prompt_len`` keys, as a
    dense kernel that computes the whole score matrix and then masks it does. With ``causal=True`` token
    ``i`` is charged only the ``i + 1`` keys it can see (``prompt_len * (prompt_len + 1) / 2`` pairs),
    what a kernel that skips masked blocks (FlashAttention) approaches.
    """
    shape = _check_shape(shape)
    batch_size = check_int("batch_size", batch_size, min_value=1)
    prompt_len = check_int("prompt_len", prompt_len, min_value=1)
    causal = check_bool("causal", causal)
    n_pairs = prompt_len * (prompt_len + 1) // 2 if causal else prompt_len * prompt_len
    return batch_size * _forward(shape, prompt_len, n_pairs)


def decode_flops(shape: ModelShape | str, batch_size: int, context_len: int) -> int:
    """FLOPs of one decode step: one new token per sequence, attending to ``context_len`` tokens
    (the cache including the new token's own key/value). ``batch_size * forward_flops(shape, 1, context_len)``."""
    shape = _check_shape(shape)
    batch_size = check_int("batch_size", batch_size, min_value=1)
    context_len = check_int("context_len", context_len, min_value=1)
    return batch_size * _forward(shape, 1, context_len)


def _resolve(name: str, value: Any) -> Fraction:
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return _bytes_per_elem(name, value)
    raise TypeError(f"{name} must be a number of bytes per element (e.g. 2, 1, 0.5), got {describe(value)}")


def _weights_plus_kv(
    shape: ModelShape | str, batch_size: int, tokens_name: str, tokens: int, weight_bytes: float, kv_bytes: float
) -> int:
    """Every weight once plus the KV cache of ``batch_size x tokens`` positions (read or written once)."""
    shape = _check_shape(shape)
    batch_size = check_int("batch_size", batch_size, min_value=1)
    tokens = check_int(tokens_name, tokens, min_value=1)
    w = _ceil_bytes(shape.params(), _resolve("weight_bytes", weight_bytes))
    kv = kv_cache_bytes(shape.n_layers, shape.n_kv_heads, shape.head_dim, tokens, batch_size, kv_bytes)
    return w + kv


def decode_bytes(
    shape: ModelShape | str,
    batch_size: int,
    context_len: int,
    weight_bytes: float = 2,
    kv_bytes: float = 2,
) -> int:
    """Bytes read by one decode step: every weight once plus the whole KV cache once.

    ``weight_bytes`` is bytes per parameter, ``kv_bytes`` bytes per cached element. Activations
    (``batch x d_model`` vectors) are negligible and ignored. Every weight is charged, including the
    embedding table: with tied embeddings it is the output head; untied, the input table is only
    gathered a row per token, so this slightly overcounts (by ``vocab * d_model`` weights).
    """
    return _weights_plus_kv(shape, batch_size, "context_len", context_len, weight_bytes, kv_bytes)


def prefill_bytes(
    shape: ModelShape | str,
    batch_size: int,
    prompt_len: int,
    weight_bytes: float = 2,
    kv_bytes: float = 2,
) -> int:
    """Bytes moved by prefill: every weight read once plus the KV cache of the prompts written once."""
    return _weights_plus_kv(shape, batch_size, "prompt_len", prompt_len, weight_bytes, kv_bytes)


def decode_intensity(
    shape: ModelShape | str,
    batch_size: int,
    context_len: int,
    weight_bytes: float = 2,
    kv_bytes: float = 2,
) -> float:
    """FLOPs per byte of one decode step: about ``batch_size`` with 2-byte weights and a small cache."""
    return decode_flops(shape, batch_size, context_len) / decode_bytes(
        shape, batch_size, context_len, weight_bytes, kv_bytes
    )


def prefill_intensity(
    shape: ModelShape | str,
    batch_size: int,
    prompt_len: int,
    weight_bytes: float = 2,
    kv_bytes: float = 2,
) -> float:
    """FLOPs per byte of prefill: about ``batch_size * prompt_len`` with 2-byte weights (hundreds+)."""
    return prefill_flops(shape, batch_size, prompt_len) / prefill_bytes(
        shape, batch_size, prompt_len, weight_bytes, kv_bytes
    )
