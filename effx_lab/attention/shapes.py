"""Parameter shapes and argument checks of the attention layers, shared by both faces
and by the chapters built on them (FLASH's layers take the same activations and
parameter dicts).

:mod:`.reference` (NumPy) and :mod:`.torch_ops` (PyTorch) both import from here, so
neither face reaches into the other's private helpers, and a chapter validates like the
shared layers without importing a face's internals. Every check raises
``TypeError``/``ValueError`` naming the argument, the value got and what was expected,
and returns nothing (or the normalised value).

* the layout: :func:`mha_param_shapes` (weights stored ``(in, out)``: ``y = x @ w + b``)
  and :data:`FEATURE_MAPS`;
* checks of anything with ``.shape``/``.ndim`` (NumPy arrays, and torch tensors with
  ``allow_torch=True``): :func:`check_qkv`, :func:`check_causal_lengths`,
  :func:`check_x`, :func:`check_params`, :func:`check_heads`, :func:`check_linear_args`;
* checks of torch tensors only (the torch faces never convert a NumPy array):
  :func:`require_tensor`, :func:`check_tensor`, :func:`check_layer_dict`,
  :func:`same_kind`, :func:`tensor_params`;
* the layout applied in torch: :func:`linear` (``x @ w + b``, one GEMM with the bias
  fused) and :func:`tril` (the causal mask, on a device).
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn.functional as F

from effx_lab._validate import (
    check_array,
    check_bool,
    check_float,
    check_int,
    describe,
    require_tensor,
)

__all__ = [
    "FEATURE_MAPS",
    "check_causal_lengths",
    "check_heads",
    "check_layer_dict",
    "check_linear_args",
    "check_params",
    "check_qkv",
    "check_tensor",
    "check_x",
    "linear",
    "mha_param_shapes",
    "require_tensor",
    "same_kind",
    "tensor_params",
    "tril",
]

FEATURE_MAPS = ("elu1", "relu", "identity")


# --------------------------------------------------------------------------------------
# parameter shapes
# --------------------------------------------------------------------------------------
def mha_param_shapes(
    d_model: int, d_ff: int | None = None
) -> dict[str, tuple[int, ...]]:
    """Shapes of the multi-head attention (and, with ``d_ff``, Transformer layer)
    parameters."""
    d_model = check_int("d_model", d_model, min_value=1)
    if d_ff is not None:
        d_ff = check_int("d_ff", d_ff, min_value=1)
    shapes = {
        "wq": (d_model, d_model), "bq": (d_model,),
        "wk": (d_model, d_model), "bk": (d_model,),
        "wv": (d_model, d_model), "bv": (d_model,),
        "wo": (d_model, d_model), "bo": (d_model,),
    }  # fmt: skip
    if d_ff is not None:
        shapes.update({
            "ln1_g": (d_model,), "ln1_b": (d_model,),
            "ln2_g": (d_model,), "ln2_b": (d_model,),
            "w1": (d_model, d_ff), "b1": (d_ff,),
            "w2": (d_ff, d_model), "b2": (d_model,),
        })  # fmt: skip
    return shapes


# --------------------------------------------------------------------------------------
# checks shared by both faces (anything with .shape/.ndim)
# --------------------------------------------------------------------------------------
def check_qkv(q: Any, k: Any, v: Any, allow_torch: bool = False) -> None:
    """``q (..., n, d)``, ``k (..., m, d)``, ``v (..., m, e)``: float arrays with one
    batch shape."""
    for name, a in (("q", q), ("k", k), ("v", v)):
        check_array(name, a, dtype_kind="f", allow_torch=allow_torch)
        if a.ndim < 2:
            raise ValueError(
                f"{name} must have shape (..., n, d) with at least 2 dimensions, got "
                f"shape {tuple(a.shape)}"
            )
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(
            f"q and k must have the same last dimension d, got q {tuple(q.shape)} and "
            f"k {tuple(k.shape)}"
        )
    if k.shape[-2] != v.shape[-2]:
        raise ValueError(
            f"k and v must have the same length n (axis -2), got k {tuple(k.shape)} "
            f"and v {tuple(v.shape)}"
        )
    if q.shape[:-2] != k.shape[:-2] or k.shape[:-2] != v.shape[:-2]:
        raise ValueError(
            "q, k and v must have the same leading (batch) dimensions, "
            f"got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )


def check_causal_lengths(q: Any, k: Any, causal: bool) -> None:
    """Causal attention needs as many queries as keys."""
    if causal and q.shape[-2] != k.shape[-2]:
        raise ValueError(
            "causal attention needs as many queries as keys, "
            f"got q length {q.shape[-2]} and k length {k.shape[-2]}"
        )


def check_x(x: Any, allow_torch: bool = False) -> None:
    """The activations ``x (..., n, d_model)`` of a layer: a float array of at least 2
    dimensions."""
    check_array("x", x, dtype_kind="f", allow_torch=allow_torch)
    if x.ndim < 2:
        raise ValueError(
            "x must have shape (..., n, d_model) with at least 2 dimensions, got "
            f"shape {tuple(x.shape)}"
        )


def check_params(
    params: Any, shapes: Mapping[str, tuple[int, ...]], allow_torch: bool = False
) -> None:
    """Check that ``params`` is a mapping holding every key of ``shapes`` with exactly
    that shape."""
    if not isinstance(params, Mapping):
        raise TypeError(f"params must be a dict of arrays, got {describe(params)}")
    missing = [k for k in shapes if k not in params]
    if missing:
        raise ValueError(f"params is missing {missing}; expected keys {sorted(shapes)}")
    for key, shape in shapes.items():
        check_array(
            f"params[{key!r}]", params[key], dtype_kind="f", allow_torch=allow_torch
        )
        if tuple(params[key].shape) != tuple(shape):
            raise ValueError(
                f"params[{key!r}] must have shape {tuple(shape)}, got "
                f"{tuple(params[key].shape)}"
            )


def check_heads(d_model: int, n_heads: Any) -> int:
    """``n_heads``: a positive int dividing ``d_model``; returned as an int."""
    n_heads = check_int("n_heads", n_heads, min_value=1)
    if d_model % n_heads:
        raise ValueError(
            f"n_heads must divide d_model = {d_model}, got n_heads = {n_heads}"
        )
    return n_heads


def check_linear_args(
    q: Any,
    k: Any,
    v: Any,
    causal: Any,
    normalize: Any,
    eps: Any,
    allow_torch: bool = False,
) -> tuple[bool, bool, float]:
    """The arguments of linear attention; returns ``(causal, normalize, eps)``
    normalised.
    """
    check_qkv(q, k, v, allow_torch=allow_torch)
    causal = check_bool("causal", causal)
    check_causal_lengths(q, k, causal)
    normalize = check_bool("normalize", normalize)
    eps = check_float("eps", eps, min_value=0.0)
    return causal, normalize, eps


# --------------------------------------------------------------------------------------
# checks of torch tensors (the torch faces of attention and of the chapters built on it)
# --------------------------------------------------------------------------------------
def check_tensor(name: str, value: Any, **kw: Any) -> torch.Tensor:
    """:func:`effx_lab._validate.check_array` for torch tensors only (same
    ``ndim``/``dtype_kind`` options)."""
    return check_array(name, require_tensor(name, value), allow_torch=True, **kw)


def check_layer_dict(params: Any, key: str, what: str) -> None:
    """The reference layers' first check of ``params``: a dict (``TypeError``) holding
    ``key`` (``ValueError``) as a 2-D float tensor; ``what`` ends the messages, as in
    the reference."""
    if not isinstance(params, Mapping):
        raise TypeError(f"params must be a dict with {what}, got {describe(params)}")
    if key not in params:
        raise ValueError(
            f"params is missing {key!r}; expected {what}, got {sorted(params)}"
        )
    check_tensor(f"params[{key!r}]", params[key], ndim=2, dtype_kind="f")


def same_kind(**tensors: torch.Tensor) -> None:
    """All ``tensors`` share one dtype (else ``TypeError``) and one device (else
    ``ValueError``)."""
    names = list(tensors)
    if not names:
        raise ValueError("same_kind needs at least one tensor, got none")
    first = tensors[names[0]]
    for name in names[1:]:
        t = tensors[name]
        if t.dtype != first.dtype:
            raise TypeError(
                f"{name} must have the dtype of {names[0]} ({first.dtype}), got "
                f"{t.dtype}"
            )
        if t.device != first.device:
            raise ValueError(
                f"{name} must be on the device of {names[0]} ({first.device}), got "
                f"{t.device}"
            )


def tensor_params(
    params: Mapping[str, Any], keys: Any, like: torch.Tensor
) -> dict[str, torch.Tensor]:
    """The ``keys`` of ``params`` as tensors in ``like``'s dtype;
    ``TypeError``/``ValueError`` if not tensors or on another device. Call after
    :func:`check_params` (the shapes)."""
    out = {}
    for key in keys:
        value = require_tensor(f"params[{key!r}]", params[key])
        if value.device != like.device:
            raise ValueError(
                f"params[{key!r}] must be on the device of x ({like.device}), got "
                f"{value.device}"
            )
        out[key] = value.to(like.dtype)
    return out


# --------------------------------------------------------------------------------------
# the layout applied in torch
# --------------------------------------------------------------------------------------
def linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """``x @ w + b`` with ``w`` stored ``(in, out)``: one GEMM with the bias fused
    (``F.linear`` on ``w.t()``, a view, not a copy). ``x (..., in)``, ``w (in, out)``,
    ``b (out,)`` or None; shapes are checked, values are not (no read-back)."""
    for name, t in (("x", x), ("w", w)):
        require_tensor(name, t)
    if w.ndim != 2 or x.ndim < 1 or x.shape[-1] != w.shape[0]:
        raise ValueError(
            "w must have shape (in, out) with in = x.shape[-1], "
            f"got x {tuple(x.shape)} and w {tuple(w.shape)}"
        )
    if b is not None and tuple(require_tensor("b", b).shape) != (w.shape[1],):
        raise ValueError(
            f"b must be None or of shape ({w.shape[1]},), got {tuple(b.shape)}"
        )
    return F.linear(x, w.t(), b)


def tril(n: int, m: int, device: Any = None) -> torch.Tensor:
    """Boolean ``(n, m)`` mask on ``device`` (default: CPU), True where query ``i`` may
    see key ``j`` (``j <= i``).

    The torch layers build it where their scores live;
    :func:`effx_lab.attention.torch_ops.causal_mask` is the public face's version (CPU,
    with a memory check)."""
    n = check_int("n", n, min_value=1)
    m = check_int("m", m, min_value=1)
    return torch.ones((n, m), dtype=torch.bool, device=device).tril_()
