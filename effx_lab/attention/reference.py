"""Attention in plain NumPy, written to be read: the softmax baseline and linear attention.

* **Softmax attention** (Vaswani et al. 2017, eq. 1): ``softmax(Q K^T / sqrt(d)) V``. It builds the
  ``n x n`` score matrix, so time and memory grow with ``n^2``.
* **Multi-head attention and the Transformer layer**: the baseline every efficient design is measured
  against (pre-LayerNorm, as in GPT-2 and the FLASH paper's "Transformer++" baseline without its
  extras): ``x + MHA(LN(x))`` then ``x + FFN(LN(x))`` with a GELU FFN.
* **Linear attention** (Katharopoulos et al. 2020): replace ``softmax(q.k)`` by a kernel
  ``phi(q).phi(k)``; then ``(phi(Q) phi(K)^T) V = phi(Q) (phi(K)^T V)`` and the bracket can be computed
  first. With ``Q, K, V`` of shape ``(m, d)`` the left order costs ``2 d m^2`` multiply-adds and the right
  order ``2 m d^2``: the order of multiplication decides quadratic or linear in ``m``.
  Causal (autoregressive) attention keeps the linear cost with a prefix sum of ``phi(k_j)^T v_j``.

Shapes: every function takes leading batch dimensions ``(..., n, d)``. :mod:`.torch_ops` exports the
same names with the same signatures for PyTorch tensors; tests check the two agree on random inputs.
Both take the parameter shapes and argument checks from :mod:`.shapes`.
"""

from __future__ import annotations

import math
from typing import Mapping

import numpy as np

from effx_lab._validate import check_alloc, check_array, check_bool, check_choice, check_float, check_int, describe
from effx_lab.models.reference import gelu_tanh, layer_norm, softmax

from .shapes import (
    FEATURE_MAPS,
    check_causal_lengths,
    check_heads,
    check_linear_args,
    check_params,
    check_qkv,
    check_x,
    mha_param_shapes,
)

__all__ = [
    "softmax_attention",
    "multi_head_attention",
    "transformer_layer",
    "feature_map",
    "linear_attention",
    "linear_attention_quadratic",
    "causal_mask",
]


def causal_mask(n: int, m: int | None = None) -> np.ndarray:
    """Boolean ``(n, m)`` mask, True where query ``i`` may see key ``j`` (``j <= i``)."""
    n = check_int("n", n, min_value=1)
    m = n if m is None else check_int("m", m, min_value=1)
    check_alloc(f"causal_mask(n={n}, m={m})", n * m)  # one byte per bool
    return np.tril(np.ones((n, m), dtype=bool))


# ----------------------------------------------------------------------------------------------------------
# softmax attention and the Transformer layer
# ----------------------------------------------------------------------------------------------------------
def softmax_attention(
    q: np.ndarray, k: np.ndarray, v: np.ndarray, causal: bool = False, scale: float | None = None
) -> np.ndarray:
    """``softmax(q k^T * scale) v`` with ``scale = 1 / sqrt(d)`` by default; ``(..., n, d) -> (..., n, e)``.

    Builds the full ``(..., n, m)`` score matrix: this is the quadratic baseline.
    """
    check_qkv(q, k, v)
    causal = check_bool("causal", causal)
    check_causal_lengths(q, k, causal)
    scale = (
        1.0 / math.sqrt(q.shape[-1])
        if scale is None
        else check_float("scale", scale, min_value=0.0, min_inclusive=False)
    )
    scores = (q @ np.swapaxes(k, -1, -2)) * scale
    if causal:
        scores = np.where(causal_mask(q.shape[-2], k.shape[-2]), scores, -np.inf)
    return softmax(scores, axis=-1) @ v


def multi_head_attention(
    x: np.ndarray, params: Mapping[str, np.ndarray], n_heads: int, causal: bool = False
) -> np.ndarray:
    """Multi-head self-attention ``concat_h(softmax(Q_h K_h^T / sqrt(d_h)) V_h) W^O`` (no residual, no norm).

    ``params`` holds ``wq, bq, wk, bk, wv, bv, wo, bo`` (weights stored ``(in, out)``: ``y = x @ w + b``).
    """
    check_x(x)
    d = x.shape[-1]
    n_heads = check_heads(d, n_heads)
    check_params(params, mha_param_shapes(d))
    causal = check_bool("causal", causal)
    n, dh = x.shape[-2], d // n_heads

    def heads(t: np.ndarray) -> np.ndarray:  # (..., n, d) -> (..., h, n, dh)
        return np.swapaxes(t.reshape(*t.shape[:-1], n_heads, dh), -2, -3)

    q = heads(x @ params["wq"] + params["bq"])
    k = heads(x @ params["wk"] + params["bk"])
    v = heads(x @ params["wv"] + params["bv"])
    o = softmax_attention(q, k, v, causal=causal)
    o = np.swapaxes(o, -2, -3).reshape(*x.shape[:-2], n, d)
    return o @ params["wo"] + params["bo"]


def transformer_layer(
    x: np.ndarray, params: Mapping[str, np.ndarray], n_heads: int, causal: bool = False
) -> np.ndarray:
    """One pre-LayerNorm Transformer layer: ``h = x + MHA(LN1(x))``, ``out = h + FFN(LN2(h))``.

    The FFN is ``gelu(h W1 + b1) W2 + b2`` (GELU, tanh form). Extra keys: ``ln1_g, ln1_b, ln2_g, ln2_b,
    w1, b1, w2, b2``.
    """
    check_x(x)
    if not isinstance(params, Mapping):
        raise TypeError(
            f"params must be a dict with the Transformer layer's keys (see mha_param_shapes), got {describe(params)}"
        )
    if "w1" not in params:
        raise ValueError(
            "params is missing 'w1'; expected the Transformer layer's keys (see mha_param_shapes), "
            f"got {sorted(params)}"
        )
    check_array("params['w1']", params["w1"], ndim=2, dtype_kind="f")
    check_params(params, mha_param_shapes(x.shape[-1], params["w1"].shape[-1]))
    h = x + multi_head_attention(layer_norm(x, params["ln1_g"], params["ln1_b"]), params, n_heads, causal)
    f = layer_norm(h, params["ln2_g"], params["ln2_b"])
    return h + gelu_tanh(f @ params["w1"] + params["b1"]) @ params["w2"] + params["b2"]


# ----------------------------------------------------------------------------------------------------------
# linear attention
# ----------------------------------------------------------------------------------------------------------
def feature_map(x: np.ndarray, kind: str = "elu1") -> np.ndarray:
    """The kernel feature map ``phi`` of linear attention, applied elementwise.

    ``"elu1"``: ``elu(x) + 1`` (Katharopoulos et al. 2020; always positive, so the normaliser never
    vanishes); ``"relu"``: ``max(x, 0)``; ``"identity"``: ``x`` (not a valid kernel for normalised
    attention: the denominator can be zero or negative).
    """
    check_array("x", x, dtype_kind="f")
    check_choice("kind", kind, FEATURE_MAPS)
    if kind == "elu1":
        return np.where(x > 0, x + 1.0, np.exp(np.minimum(x, 0.0))).astype(x.dtype, copy=False)
    if kind == "relu":
        return np.maximum(x, 0)
    return x.copy()


def linear_attention(
    q: np.ndarray, k: np.ndarray, v: np.ndarray, causal: bool = False, normalize: bool = True, eps: float = 1e-6
) -> np.ndarray:
    """Linear attention with already feature-mapped ``q = phi(Q)`` and ``k = phi(K)``, keys first.

    Non-causal: ``out = q (k^T v) / (q (k^T 1) + eps)``: one ``(d, e)`` state shared by every query,
    ``2 n d e`` multiply-adds plus the normaliser.

    Causal: query ``i`` sees ``S_i = sum_{j<=i} k_j^T v_j`` and ``z_i = sum_{j<=i} k_j``:
    ``out_i = q_i S_i / (q_i . z_i + eps)``. The reference builds every prefix state with a cumulative sum
    over an ``(n, d, e)`` array: simple, linear in ``n``, but memory hungry (torch_ops works by chunks).

    With ``normalize=False`` the division is skipped (the form FLASH uses, with its own 1/c scaling).
    """
    causal, normalize, eps = check_linear_args(q, k, v, causal, normalize, eps)
    if not causal:
        out = q @ (np.swapaxes(k, -1, -2) @ v)
        if normalize:
            z = k.sum(axis=-2)  # (..., d)
            out = out / ((q @ z[..., None]) + eps)
        return out
    states = np.cumsum(k[..., :, :, None] * v[..., :, None, :], axis=-3)  # (..., n, d, e)
    out = np.einsum("...nd,...nde->...ne", q, states)
    if normalize:
        z = np.cumsum(k, axis=-2)  # (..., n, d)
        out = out / ((q * z).sum(axis=-1, keepdims=True) + eps)
    return out


def linear_attention_quadratic(
    q: np.ndarray, k: np.ndarray, v: np.ndarray, causal: bool = False, normalize: bool = True, eps: float = 1e-6
) -> np.ndarray:
    """The same numbers as :func:`linear_attention`, computed queries first: ``((q k^T) * mask) v``.

    Builds the ``(n, m)`` matrix ``q k^T`` (``2 d n m`` multiply-adds for the two products): the quadratic
    order. Useful as the explicit O(n^2) definition the fast forms are tested against.
    """
    causal, normalize, eps = check_linear_args(q, k, v, causal, normalize, eps)
    a = q @ np.swapaxes(k, -1, -2)
    if causal:
        a = a * causal_mask(q.shape[-2], k.shape[-2])
    out = a @ v
    if normalize:
        out = out / (a.sum(axis=-1, keepdims=True) + eps)
    return out
