"""The Scaling Transformer's sparse layers (Jaszczur et al. 2021), PyTorch face (04.4).

The same functions as :mod:`._np_layers` (read its docstring for the method, the
parameter layout and the convolution's padding), on tensors and differentiable:
``sparse_ffn(..., mode="train")`` is the straight-through Gumbel-softmax, whose forward
value is exactly the hard one-hot mask (``hard + (soft - soft.detach())``: the added
term is exactly zero) and whose gradient reaches the controller through ``soft =
softmax((logits + gumbel) / tau)``. ``mode="infer"`` gathers the chosen columns of
``w1`` and rows of ``w2`` per token; :mod:`effx_lab.nm.layers` holds the single-token
decode path that stores them unit-major for contiguous reads.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn.functional as F

from effx_lab._validate import check_choice
from effx_lab.attention.shapes import tensor_params

from ._np_layers import (
    ACTIVATIONS,
    FFN_KEYS,
    check_controller,
    check_conv_args,
    check_ffn_params,
    check_multiplicative,
    check_qkv_args,
    check_sparse_ffn_args,
    check_x,
)

__all__ = [
    "active_units",
    "causal_module_conv",
    "controller_logits",
    "dense_ffn",
    "multiplicative_layer",
    "sparse_ffn",
    "sparse_qkv",
]


def _act(h: torch.Tensor, activation: str) -> torch.Tensor:
    if activation == "relu":
        return torch.relu(h)
    return F.gelu(h, approximate="tanh")


def controller_logits(
    x: torch.Tensor, params: Mapping[str, Any], block: int
) -> torch.Tensor:
    """The controller's scores ``(x @ c1) @ c2`` reshaped ``(..., d_ff // block,
    block)``: row ``j`` scores the units ``j * block .. (j + 1) * block - 1``."""
    d, d_ff, block = check_controller(x, params, block, allow_torch=True)
    t = tensor_params(params, ("c1", "c2"), x)
    logits = (x @ t["c1"]) @ t["c2"]
    return logits.unflatten(-1, (d_ff // block, block))


def active_units(
    x: torch.Tensor, params: Mapping[str, Any], block: int
) -> torch.Tensor:
    """The unit each block uses at inference, as indices into ``d_ff``: ``argmax`` of
    :func:`controller_logits` per block (ties: the first) plus ``block * j``; int64
    ``(..., d_ff // block)``, increasing along the last axis."""
    logits = controller_logits(x, params, block)
    block = logits.shape[-1]
    offsets = block * torch.arange(logits.shape[-2], device=x.device)
    return logits.argmax(dim=-1) + offsets


def dense_ffn(
    x: torch.Tensor, params: Mapping[str, Any], *, activation: str = "relu"
) -> torch.Tensor:
    """The dense FFN ``act(x @ w1 + b1) @ w2 + b2`` (every unit), the baseline."""
    d = check_x(x, allow_torch=True)
    check_ffn_params(params, d, None, allow_torch=True)
    activation = check_choice("activation", activation, ACTIVATIONS)
    t = tensor_params(params, FFN_KEYS, x)
    h = _act(F.linear(x, t["w1"].t(), t["b1"]), activation)
    return F.linear(h, t["w2"].t(), t["b2"])


def sparse_ffn(
    x: torch.Tensor,
    params: Mapping[str, Any],
    block: int,
    *,
    mode: str = "infer",
    gumbel: torch.Tensor | None = None,
    tau: float = 1.0,
    activation: str = "relu",
) -> torch.Tensor:
    """The Scaling Transformer's sparse FFN: one unit per block of ``block`` units.

    ``mode="train"``: dense compute with the straight-through Gumbel-softmax mask
    (forward: the one-hot of ``argmax(logits + gumbel)``; backward: the gradient of
    ``softmax((logits + gumbel) / tau)``); ``gumbel=None`` is zero noise.
    ``mode="infer"``: ``argmax(logits)`` per block, reading only the chosen columns of
    ``w1`` / entries of ``b1`` / rows of ``w2``.
    """
    d, d_ff, block, mode, tau, activation = check_sparse_ffn_args(
        x, params, block, mode, gumbel, tau, activation, allow_torch=True
    )
    t = tensor_params(params, FFN_KEYS, x)
    w1, b1, w2, b2 = (t[k] for k in FFN_KEYS)
    if mode == "train":
        logits = controller_logits(x, params, block)
        if gumbel is not None:
            if gumbel.device != x.device:
                raise ValueError(
                    f"gumbel must be on the device of x ({x.device}), "
                    f"got {gumbel.device}"
                )
            logits = logits + gumbel.to(logits.dtype)
        soft = torch.softmax(logits / tau, dim=-1)
        hard = F.one_hot(logits.argmax(dim=-1), block).to(soft.dtype)
        mask = hard + (soft - soft.detach())  # value: exactly hard; gradient: soft's
        h = _act(F.linear(x, w1.t(), b1), activation) * mask.flatten(-2)
        return F.linear(h, w2.t(), b2)
    units = active_units(x, params, block)  # (..., k), k = d_ff // block
    w1_cols = w1.t()[units]  # (..., k, d): only the chosen columns of w1
    h = _act((w1_cols @ x.unsqueeze(-1)).squeeze(-1) + b1[units], activation)
    return (h.unsqueeze(-2) @ w2[units]).squeeze(-2) + b2


def multiplicative_layer(
    x: torch.Tensor, params: Mapping[str, Any], n_modules: int
) -> torch.Tensor:
    """``y[..., s, m] = sum_i x[..., i] mul_d[s, i] mul_e[i, m] + mul_b[s * M + m]``:
    ``(..., S, M)`` from ``x (..., d)``."""
    d = check_x(x, allow_torch=True)
    s, m = check_multiplicative(d, params, n_modules, allow_torch=True)
    t = tensor_params(params, ("mul_d", "mul_e", "mul_b"), x)
    y = (x.unsqueeze(-2) * t["mul_d"]) @ t["mul_e"]  # (..., S, M)
    return y + t["mul_b"].view(s, m)


def causal_module_conv(
    y: torch.Tensor, w: torch.Tensor, b: torch.Tensor
) -> torch.Tensor:
    """The 2-D convolution over (length, modules) of ``y (..., n, S, M)``: causal along
    length (``kl - 1`` zero rows before the first token), "same" along the modules;
    ``(..., n, S, M_out)`` (see :func:`effx_lab.nm.reference.causal_module_conv`)."""
    m, m_out, kl, ks = check_conv_args(y, w, b, allow_torch=True)
    for name, t in (("w", w), ("b", b)):
        if t.device != y.device:
            raise ValueError(
                f"{name} must be on the device of y ({y.device}), got {t.device}"
            )
    half = (ks - 1) // 2
    lead = y.shape[:-3]
    img = y.reshape(-1, *y.shape[-3:]).permute(0, 3, 1, 2)  # (B, M, n, S)
    img = F.pad(img, (half, half, kl - 1, 0))
    out = F.conv2d(img, w.to(y.dtype), b.to(y.dtype))  # (B, M_out, n, S)
    return out.permute(0, 2, 3, 1).reshape(*lead, *out.shape[2:], m_out)


def sparse_qkv(
    x: torch.Tensor, params: Mapping[str, Any], n_modules: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The sparse QKV layer: one multiplicative layer shared by Q, K and V, then one
    causal 2-D convolution each; ``x (..., n, d)`` -> ``(q, k, v)``, each ``(..., n,
    d)`` with module ``s`` in features ``s * M .. (s + 1) * M - 1``."""
    check_qkv_args(x, params, n_modules, allow_torch=True)
    y = multiplicative_layer(x, params, n_modules)  # (..., n, S, M)
    t = tensor_params(params, [f"conv_{p}{c}" for c in "qkv" for p in "wb"], x)
    return tuple(  # type: ignore[return-value]
        causal_module_conv(y, t[f"conv_w{c}"], t[f"conv_b{c}"]).reshape(x.shape)
        for c in "qkv"
    )

