"""Attention in PyTorch, vectorised (chapters 6 and 7): the same names and signatures as
:mod:`effx_lab.attention.reference` (torch tensors in, torch tensors out).

What differs from the NumPy reference, and why:

* **softmax attention** stays the textbook baseline on purpose: one ``matmul`` for the ``(..., n, m)``
  scores (with ``scale`` applied to ``Q`` first: ``n d`` multiplies instead of ``n m``), ``masked_fill(-inf)``
  above the diagonal (in place on the fresh product), ``torch.softmax``, one ``matmul`` with ``V``. It does
  *not* call :func:`torch.nn.functional.scaled_dot_product_attention`: the benchmarks compare the
  materialised ``n x n`` form against SDPA's fused kernels separately.
* **multi-head attention** projects ``Q, K, V`` with one GEMM against the concatenated ``[W_q | W_k | W_v]``
  and splits the heads with one reshape + permute (no loop over heads); every bias is fused into its GEMM
  (``F.linear`` on the transposed ``(in, out)`` weight, a view, not a copy).
* **the Transformer layer** uses ``F.layer_norm`` (eps ``1e-5``, biased variance, as
  :func:`effx_lab.models.reference.layer_norm`) and ``F.gelu(approximate="tanh")`` (the same formula as
  :func:`effx_lab.models.reference.gelu_tanh`).
* **causal linear attention** never builds the reference's ``(..., n, d, e)`` stack of prefix states.
  It works by chunks of ``c = 64`` tokens: inside a chunk the masked quadratic form
  ``tril(Q_g K_g^T) V_g`` (``c x c``), across chunks the states ``K_h^T V_h`` summed over the previous chunks
  with an *exclusive* cumulative sum, read out with ``Q_g S_g``. That is exactly the reference's sum
  ``q_i sum_{j <= i} k_j^T v_j``, split into ``j`` in an earlier chunk and ``j`` in the same chunk; memory
  is ``O(n c + (n / c) d e)`` instead of ``O(n d e)``. The normaliser is split the same way.
  A length that is not a multiple of 64 is padded with zero keys and values (which add nothing) and cropped.
* :func:`feature_map` ``"elu1"`` is written ``where(x > 0, x + 1, exp(min(x, 0)))`` like the reference
  rather than ``F.elu(x) + 1``, which rounds ``exp(x) - 1 + 1`` to exactly zero for very negative ``x``.

Validation: every array argument must be a ``torch.Tensor`` (a NumPy array raises ``TypeError``); ``q, k, v``
must share one dtype and device. Parameter dicts (from :func:`effx_lab.attention.params.to_torch`) are
cast to the dtype of ``x`` (a no-op when they already match, differentiable otherwise), so the output
always has the dtype of ``x`` (float32, float64 or bfloat16) and lives on its device (CPU or CUDA).
:func:`causal_mask` keeps the reference's signature and returns a CPU tensor (``.to(device)`` it).

The checks and parameter shapes are those of :mod:`.shapes`, which the NumPy face uses
too. One name has no NumPy twin: :func:`transformer_layer_with_core`, the layer with
another attention core (such as PyTorch's fused SDPA).
"""
from __future__ import annotations

import math
from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F

from effx_lab._validate import (
    check_alloc,
    check_bool,
    check_choice,
    check_float,
    check_int,
    describe,
)

from .shapes import (
    FEATURE_MAPS,
    check_causal_lengths,
    check_heads,
    check_layer_dict,
    check_linear_args,
    check_params,
    check_qkv,
    check_x,
    linear,
    mha_param_shapes,
    require_tensor,
    same_kind,
    tensor_params,
    tril,
)

__all__ = [
    "softmax_attention",
    "multi_head_attention",
    "transformer_layer",
    "feature_map",
    "linear_attention",
    "linear_attention_quadratic",
    "causal_mask",
    "transformer_layer_with_core",
]

LINEAR_CHUNK = 64  # tokens per chunk of the causal linear attention


def causal_mask(n: int, m: int | None = None) -> torch.Tensor:
    """Boolean ``(n, m)`` mask (CPU), True where query ``i`` may see key ``j`` (``j <= i``)."""
    n = check_int("n", n, min_value=1)
    m = n if m is None else check_int("m", m, min_value=1)
    check_alloc(f"causal_mask(n={n}, m={m})", n * m)  # one byte per bool
    return tril(n, m, torch.device("cpu"))


# ----------------------------------------------------------------------------------------------------------
# softmax attention and the Transformer layer
# ----------------------------------------------------------------------------------------------------------
def _check_tensors_qkv(q: Any, k: Any, v: Any) -> None:
    for name, a in (("q", q), ("k", k), ("v", v)):
        require_tensor(name, a)
    check_qkv(q, k, v, allow_torch=True)
    same_kind(q=q, k=k, v=v)


def _softmax_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, scale: float) -> torch.Tensor:
    # scale q (n d multiplies) rather than the (n, m) scores; mask the fresh product in place (autograd-safe:
    # matmul's backward reads its inputs, not its output). Two fewer passes over the n x m matrix.
    scores = torch.matmul(q * scale, k.transpose(-1, -2))
    if causal:
        scores.masked_fill_(~tril(q.shape[-2], k.shape[-2], q.device), float("-inf"))
    return torch.matmul(torch.softmax(scores, dim=-1), v)


def softmax_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False, scale: float | None = None
) -> torch.Tensor:
    """``softmax(q k^T * scale) v`` with ``scale = 1 / sqrt(d)`` by default; ``(..., n, d) -> (..., n, e)``.

    Builds the full ``(..., n, m)`` score matrix (the quadratic baseline, Vaswani et al. 2017 eq. 1).
    """
    _check_tensors_qkv(q, k, v)
    causal = check_bool("causal", causal)
    check_causal_lengths(q, k, causal)
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    else:
        scale = check_float("scale", scale, min_value=0.0, min_inclusive=False)
    return _softmax_attention(q, k, v, causal, scale)


def _mha(
    x: torch.Tensor, p: Mapping[str, torch.Tensor], n_heads: int, causal: bool, core: Callable[..., Any] | None = None
) -> torch.Tensor:
    """Multi-head attention on validated inputs: one fused QKV GEMM, one reshape into heads.

    ``core(q, k, v, causal, scale)`` is the attention of the heads; the default is the textbook
    :func:`_softmax_attention` (see :func:`transformer_layer_with_core`).
    """
    n, d = x.shape[-2], x.shape[-1]
    dh = d // n_heads
    w = torch.cat((p["wq"], p["wk"], p["wv"]), dim=1)  # (d, 3d)
    b = torch.cat((p["bq"], p["bk"], p["bv"]))
    qkv = linear(x, w, b).unflatten(-1, (3, n_heads, dh))  # (..., n, 3, h, dh)
    q, k, v = qkv.movedim(-3, 0).transpose(-2, -3).unbind(0)  # each (..., h, n, dh)
    o = (core or _softmax_attention)(q, k, v, causal, 1.0 / math.sqrt(dh))  # (..., h, n, dh)
    o = o.transpose(-2, -3).reshape(*x.shape[:-2], n, d)
    return linear(o, p["wo"], p["bo"])


def multi_head_attention(
    x: torch.Tensor, params: Mapping[str, torch.Tensor], n_heads: int, causal: bool = False
) -> torch.Tensor:
    """Multi-head self-attention ``concat_h(softmax(Q_h K_h^T / sqrt(d_h)) V_h) W^O`` (no residual, no norm).

    ``params`` holds ``wq, bq, wk, bk, wv, bv, wo, bo`` (weights stored ``(in, out)``: ``y = x @ w + b``).
    """
    require_tensor("x", x)
    check_x(x, allow_torch=True)
    d = x.shape[-1]
    n_heads = check_heads(d, n_heads)
    shapes = mha_param_shapes(d)
    check_params(params, shapes, allow_torch=True)
    causal = check_bool("causal", causal)
    return _mha(x, tensor_params(params, shapes, x), n_heads, causal)


def transformer_layer(
    x: torch.Tensor, params: Mapping[str, torch.Tensor], n_heads: int, causal: bool = False
) -> torch.Tensor:
    """One pre-LayerNorm Transformer layer: ``h = x + MHA(LN1(x))``, ``out = h + FFN(LN2(h))``.

    The FFN is ``gelu(h W1 + b1) W2 + b2`` (GELU, tanh form). Extra keys: ``ln1_g, ln1_b, ln2_g, ln2_b,
    w1, b1, w2, b2``.
    """
    return transformer_layer_with_core(x, params, n_heads, causal)


def transformer_layer_with_core(
    x: torch.Tensor,
    params: Mapping[str, torch.Tensor],
    n_heads: int,
    causal: bool = False,
    core: Callable[..., torch.Tensor] | None = None,
) -> torch.Tensor:
    """:func:`transformer_layer` with a choice of attention core (torch only).

    ``core(q, k, v, causal, scale)`` gets the heads ``(..., h, n, d_h)`` and returns
    ``(..., h, n, d_h)``; ``None`` is the textbook softmax attention of
    :func:`transformer_layer`. The validation, projections, norms and FFN are the same:
    ``effx_lab.flash.bench`` passes PyTorch's fused SDPA to measure the strongest
    quadratic baseline on the very same layer.
    """
    if core is not None and not callable(core):
        raise TypeError(
            "core must be None or a callable core(q, k, v, causal, scale), "
            f"got {describe(core)}"
        )
    require_tensor("x", x)
    check_x(x, allow_torch=True)
    check_layer_dict(params, "w1", "the Transformer layer's keys (see mha_param_shapes)")
    d = x.shape[-1]
    shapes = mha_param_shapes(d, params["w1"].shape[-1])
    check_params(params, shapes, allow_torch=True)
    n_heads = check_heads(d, n_heads)
    causal = check_bool("causal", causal)
    p = tensor_params(params, shapes, x)
    h = x + _mha(F.layer_norm(x, (d,), p["ln1_g"], p["ln1_b"], eps=1e-5), p, n_heads, causal, core)
    f = F.layer_norm(h, (d,), p["ln2_g"], p["ln2_b"], eps=1e-5)
    return h + linear(F.gelu(linear(f, p["w1"], p["b1"]), approximate="tanh"), p["w2"], p["b2"])


# ----------------------------------------------------------------------------------------------------------
# linear attention
# ----------------------------------------------------------------------------------------------------------
def feature_map(x: torch.Tensor, kind: str = "elu1") -> torch.Tensor:
    """The kernel feature map ``phi`` of linear attention, applied elementwise.

    ``"elu1"``: ``elu(x) + 1`` (Katharopoulos et al. 2020); ``"relu"``: ``max(x, 0)``; ``"identity"``: a copy
    of ``x``.
    """
    require_tensor("x", x)
    if not x.dtype.is_floating_point:
        raise TypeError(f"x must have a float dtype, got {x.dtype}")
    check_choice("kind", kind, FEATURE_MAPS)
    if kind == "elu1":
        return torch.where(x > 0, x + 1.0, torch.exp(torch.clamp(x, max=0.0)))
    if kind == "relu":
        return torch.relu(x)
    return x.clone()


def _causal_linear(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, normalize: bool, eps: float) -> torch.Tensor:
    """Chunked causal linear attention: intra-chunk masked quadratic part + exclusive prefix of chunk states."""
    n = q.shape[-2]
    c = min(LINEAR_CHUNK, n)
    pad = (-n) % c
    if pad:  # zero keys and values: they add nothing to any state or normaliser; padded queries are cropped
        q, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v))
    g = (n + pad) // c
    qc, kc, vc = (t.unflatten(-2, (g, c)) for t in (q, k, v))  # (..., G, c, w)
    a = torch.matmul(qc, kc.transpose(-1, -2)).masked_fill_(~tril(c, c, q.device), 0.0)  # (..., G, c, c)
    k_prev, v_prev = kc[..., :-1, :, :], vc[..., :-1, :, :]  # the last chunk's state is never read
    kv = torch.matmul(k_prev.transpose(-1, -2), v_prev)  # (..., G-1, d, e): K_h^T V_h
    states = F.pad(torch.cumsum(kv, dim=-3), (0, 0, 0, 0, 1, 0))  # exclusive prefix (..., G, d, e): h < g
    out = torch.matmul(a, vc) + torch.matmul(qc, states)
    if normalize:
        z = F.pad(torch.cumsum(k_prev.sum(dim=-2), dim=-2), (0, 0, 1, 0))  # (..., G, d): sum of k_j over h < g
        den = a.sum(dim=-1, keepdim=True) + torch.matmul(qc, z.unsqueeze(-1))
        out = out / (den + eps)
    return out.flatten(-3, -2)[..., :n, :]


def linear_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False, normalize: bool = True, eps: float = 1e-6
) -> torch.Tensor:
    """Linear attention with already feature-mapped ``q = phi(Q)`` and ``k = phi(K)``, keys first.

    Non-causal: ``out = q (k^T v) / (q (k^T 1) + eps)``. Causal: ``out_i = q_i S_i / (q_i . z_i + eps)`` with
    ``S_i = sum_{j<=i} k_j^T v_j`` and ``z_i = sum_{j<=i} k_j``, computed by chunks of 64 tokens (see the
    module docstring). ``normalize=False`` skips the division.
    """
    _check_tensors_qkv(q, k, v)
    causal, normalize, eps = check_linear_args(q, k, v, causal, normalize, eps, allow_torch=True)
    if causal:
        return _causal_linear(q, k, v, normalize, eps)
    out = torch.matmul(q, torch.matmul(k.transpose(-1, -2), v))
    if normalize:
        out = out / (torch.matmul(q, k.sum(dim=-2).unsqueeze(-1)) + eps)
    return out


def linear_attention_quadratic(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False, normalize: bool = True, eps: float = 1e-6
) -> torch.Tensor:
    """The same numbers as :func:`linear_attention`, computed queries first: ``((q k^T) * mask) v``."""
    _check_tensors_qkv(q, k, v)
    causal, normalize, eps = check_linear_args(q, k, v, causal, normalize, eps, allow_torch=True)
    a = torch.matmul(q, k.transpose(-1, -2))
    if causal:
        a.masked_fill_(~tril(q.shape[-2], k.shape[-2], q.device), 0.0)
    out = torch.matmul(a, v)
    if normalize:
        out = out / (a.sum(dim=-1, keepdim=True) + eps)
    return out
