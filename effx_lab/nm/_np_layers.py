"""The Scaling Transformer's sparse layers (Jaszczur et al. 2021), NumPy face (04.4).

**Sparse FFN.** The ``d_ff`` units of an FFN are split into ``d_ff / block`` blocks of
``block`` consecutive units (the paper's ``N``); a small **controller** picks one unit
per block, so a token uses ``d_ff / block`` units instead of ``d_ff``::

    logits = x @ c1 @ c2              (..., d_ff)   low rank: c1 (d, r), c2 (r, d_ff)
           -> reshape (..., d_ff // block, block)
    mask   = one_hot(argmax(logits, -1))            one unit per block (inference)
    y      = (act(x @ w1 + b1) * mask) @ w2 + b2

Training cannot differentiate an argmax: it uses the **Gumbel-softmax** with a
straight-through estimator: the forward value is the hard one-hot of ``argmax(logits +
g)`` (``g`` Gumbel noise, passed in as ``gumbel`` so that both faces draw nothing and
agree), the gradient is that of ``softmax((logits + g) / tau)``. This face computes
values only; :mod:`._torch_layers` differentiates.

At inference the controller runs first, so the layer knows which units it needs before
it reads a weight: it gathers only the chosen columns of ``w1`` (and entries of ``b1``)
and rows of ``w2``, ``d_ff / block`` of each, and reads ``block`` times fewer FFN
weights (plus the controller's ``r (d + d_ff)``). ``mode="infer"`` is that path; it
equals ``mode="train"`` with zero noise, and the dense FFN with the other units masked.

Parameters are a dict in the shared LM's layout (weights ``(in, out)``: ``y = x @ w +
b``), the keys of the LM's FFN plus the controller: ``w1 (d, d_ff)``, ``b1 (d_ff,)``,
``w2 (d_ff, d)``, ``b2 (d,)``, ``c1 (d, r)``, ``c2 (r, d_ff)``. The paper's FFN uses
ReLU (the default ``activation="relu"``); ``"gelu"`` (tanh form) is the shared LM's.

**Sparse QKV.** ``d_model`` is split into ``S`` modules of ``M = d_model / S``
features. A **multiplicative layer** lets every module see the whole input with far
fewer weights than a dense layer: ``y[s, m] = sum_i x[i] D[s, i] E[i, m] + b[s, m]``
(``D (S, d)`` scales the input per module, ``E (d, M)`` is shared; ``S d + d M``
weights instead of ``d^2``; it can represent any permutation). Its output ``(..., n, S,
M)`` is an image of height ``n`` (length), width ``S`` and ``M`` channels; one 2-D
convolution per projection (Q, K and V, kernel ``(kl, ks)``, ``M`` channels in and out)
maps it to the projection. As in the authors' code (trax
``MultiplicativeConvCausalAttention`` / ``LocallyConvDense``) the convolution is
**causal along length** (``kl - 1`` zero rows before the first token, none after, so
position ``t`` sees tokens ``t - kl + 1 .. t``) and "same" along the modules (``(ks -
1) / 2`` zero modules each side, ``ks`` odd); the paper uses ``kl = ks = 3``.
Parameters: ``mul_d (S, d)``, ``mul_e (d, M)``, ``mul_b (d,)`` and, for ``c`` in
``q, k, v``, ``conv_w{c} (M, M, kl, ks)`` (PyTorch's ``conv2d`` layout: out, in,
height, width) and ``conv_b{c} (M,)``; the kernel sizes are read from the weights.

The argument checks live here and the torch face imports them, so both faces reject a
bad argument with the same message.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

from effx_lab._validate import check_array, check_choice, check_float, check_int
from effx_lab._validate import describe

__all__ = [
    "active_units",
    "causal_module_conv",
    "controller_logits",
    "dense_ffn",
    "multiplicative_layer",
    "sparse_ffn",
    "sparse_qkv",
]

MODES = ("infer", "train")
ACTIVATIONS = ("relu", "gelu")
FFN_KEYS = ("w1", "b1", "w2", "b2")


# --------------------------------------------------------------------------------------
# checks shared by the two faces (anything with .shape / .ndim / .dtype)
# --------------------------------------------------------------------------------------
def _get(params: Any, key: str, allow_torch: bool) -> Any:
    if not isinstance(params, Mapping):
        raise TypeError(f"params must be a dict of arrays, got {describe(params)}")
    if key not in params:
        raise ValueError(
            f"params is missing {key!r}; got keys {sorted(map(str, params))}"
        )
    return check_array(
        f"params[{key!r}]", params[key], dtype_kind="f", allow_torch=allow_torch
    )


def _shape_is(params: Any, key: str, shape: tuple[int, ...], allow_torch: bool) -> Any:
    value = _get(params, key, allow_torch)
    if tuple(value.shape) != tuple(shape):
        raise ValueError(
            f"params[{key!r}] must have shape {tuple(shape)}, got {tuple(value.shape)}"
        )
    return value


def check_x(x: Any, allow_torch: bool = False, min_ndim: int = 1) -> int:
    """``x (..., d)``: a float array of at least ``min_ndim`` dimensions; returns d."""
    check_array("x", x, dtype_kind="f", allow_torch=allow_torch)
    if x.ndim < min_ndim or x.shape[-1] < 1:
        want = "(..., d)" if min_ndim == 1 else "(..., n, d)"
        raise ValueError(f"x must have shape {want}, got shape {tuple(x.shape)}")
    return int(x.shape[-1])


def check_controller(
    x: Any, params: Any, block: Any, allow_torch: bool = False
) -> tuple[int, int, int]:
    """The controller's arguments: ``x (..., d)``, ``params['c1'] (d, r)``,
    ``params['c2'] (r, d_ff)``, ``block`` a positive int dividing ``d_ff``; returns
    ``(d, d_ff, block)``."""
    d = check_x(x, allow_torch)
    c1 = _get(params, "c1", allow_torch)
    if c1.ndim != 2 or c1.shape[0] != d:
        raise ValueError(
            f"params['c1'] must have shape (d, r) with d = x.shape[-1] = {d}, got "
            f"{tuple(c1.shape)}"
        )
    c2 = _get(params, "c2", allow_torch)
    if c2.ndim != 2 or c2.shape[0] != c1.shape[1]:
        raise ValueError(
            f"params['c2'] must have shape (r, d_ff) with r = {c1.shape[1]} (the "
            f"columns of c1), got {tuple(c2.shape)}"
        )
    d_ff = int(c2.shape[1])
    block = check_int("block", block, min_value=1)
    if d_ff % block:
        raise ValueError(
            f"block must divide d_ff = {d_ff} (one unit chosen per block of "
            f"{block}), got block = {block}"
        )
    return d, d_ff, block


def check_ffn_params(
    params: Any, d: int, d_ff: int | None, allow_torch: bool = False
) -> int:
    """``w1 (d, d_ff)``, ``b1 (d_ff,)``, ``w2 (d_ff, d)``, ``b2 (d,)``; returns d_ff
    (read from ``w1`` when ``d_ff`` is None)."""
    w1 = _get(params, "w1", allow_torch)
    if w1.ndim != 2 or w1.shape[0] != d or (d_ff is not None and w1.shape[1] != d_ff):
        want = f"({d}, {d_ff if d_ff is not None else 'd_ff'})"
        raise ValueError(
            f"params['w1'] must have shape {want} (d = x.shape[-1]"
            f"{'' if d_ff is None else ', d_ff = the controller c2 columns'}), "
            f"got {tuple(w1.shape)}"
        )
    d_ff = int(w1.shape[1])
    _shape_is(params, "b1", (d_ff,), allow_torch)
    _shape_is(params, "w2", (d_ff, d), allow_torch)
    _shape_is(params, "b2", (d,), allow_torch)
    return d_ff


def check_sparse_ffn_args(
    x: Any,
    params: Any,
    block: Any,
    mode: Any,
    gumbel: Any,
    tau: Any,
    activation: Any,
    allow_torch: bool = False,
) -> tuple[int, int, int, str, float, str]:
    """All of :func:`sparse_ffn`'s arguments; returns ``(d, d_ff, block, mode, tau,
    activation)``."""
    d, d_ff, block = check_controller(x, params, block, allow_torch)
    check_ffn_params(params, d, d_ff, allow_torch)
    mode = check_choice("mode", mode, MODES)
    activation = check_choice("activation", activation, ACTIVATIONS)
    tau = check_float("tau", tau, min_value=0.0, min_inclusive=False)
    if gumbel is not None:
        if mode == "infer":
            raise ValueError(
                "gumbel must be None when mode='infer' (inference takes the argmax "
                "without noise); got an array: pass mode='train' to use it"
            )
        check_array("gumbel", gumbel, dtype_kind="f", allow_torch=allow_torch)
        want = (*x.shape[:-1], d_ff // block, block)
        if tuple(gumbel.shape) != want:
            raise ValueError(
                f"gumbel must have the controller logits' shape {want} "
                f"(x.shape[:-1] + (d_ff // block, block)), got {tuple(gumbel.shape)}"
            )
    return d, d_ff, block, mode, tau, activation


def check_qkv_args(
    x: Any, params: Any, n_modules: Any, allow_torch: bool = False
) -> tuple[int, int, int, int, int]:
    """:func:`sparse_qkv`'s arguments; returns ``(d, S, M, kl, ks)``."""
    d = check_x(x, allow_torch, min_ndim=2)
    s, m = check_multiplicative(d, params, n_modules, allow_torch)
    kl = ks = None
    for c in "qkv":
        w = _get(params, f"conv_w{c}", allow_torch)
        if w.ndim != 4 or tuple(w.shape[:2]) != (m, m):
            raise ValueError(
                f"params['conv_w{c}'] must have shape (M, M, kl, ks) with M = d / "
                f"n_modules = {m}, got {tuple(w.shape)}"
            )
        if kl is None:
            kl, ks = int(w.shape[2]), int(w.shape[3])
        elif tuple(w.shape[2:]) != (kl, ks):
            raise ValueError(
                f"params['conv_w{c}'] must have the kernel size of conv_wq "
                f"({kl}, {ks}), got {tuple(w.shape[2:])}"
            )
        _shape_is(params, f"conv_b{c}", (m,), allow_torch)
    check_kernel(kl, ks)
    return d, s, m, kl, ks


def check_multiplicative(
    d: int, params: Any, n_modules: Any, allow_torch: bool = False
) -> tuple[int, int]:
    """``n_modules`` (S) divides ``d``; ``mul_d (S, d)``, ``mul_e (d, M)``, ``mul_b
    (d,)``; returns ``(S, M)``."""
    s = check_int("n_modules", n_modules, min_value=1)
    if d % s:
        raise ValueError(
            f"n_modules must divide d_model = {d} (modules of d_model / n_modules "
            f"features), got n_modules = {s}"
        )
    m = d // s
    _shape_is(params, "mul_d", (s, d), allow_torch)
    _shape_is(params, "mul_e", (d, m), allow_torch)
    _shape_is(params, "mul_b", (d,), allow_torch)
    return s, m


def check_kernel(kl: Any, ks: Any) -> tuple[int, int]:
    """A convolution kernel ``(kl, ks)``: ``kl >= 1`` along length, ``ks`` odd along
    the modules ("same" padding needs a centre)."""
    kl = check_int("kl (the kernel's length, conv weight dim 2)", kl, min_value=1)
    ks = check_int("ks (the kernel's width, conv weight dim 3)", ks, min_value=1)
    if ks % 2 == 0:
        raise ValueError(
            "ks (the kernel's width over the modules, conv weight dim 3) must be odd "
            f"for 'same' padding over the modules, got {ks}"
        )
    return kl, ks


def check_conv_args(
    y: Any, w: Any, b: Any, allow_torch: bool = False
) -> tuple[int, int, int, int]:
    """:func:`causal_module_conv`'s arguments: ``y (..., n, S, M)``, ``w (M_out, M,
    kl, ks)``, ``b (M_out,)``; returns ``(M, M_out, kl, ks)``."""
    check_array("y", y, dtype_kind="f", allow_torch=allow_torch)
    if y.ndim < 3:
        raise ValueError(f"y must have shape (..., n, S, M), got {tuple(y.shape)}")
    check_array("w", w, ndim=4, dtype_kind="f", allow_torch=allow_torch)
    if w.shape[1] != y.shape[-1]:
        raise ValueError(
            f"w must have shape (M_out, M, kl, ks) with M = y.shape[-1] = "
            f"{y.shape[-1]}, got {tuple(w.shape)}"
        )
    check_array("b", b, ndim=1, dtype_kind="f", allow_torch=allow_torch)
    if b.shape[0] != w.shape[0]:
        raise ValueError(f"b must have shape ({w.shape[0]},), got {tuple(b.shape)}")
    kl, ks = check_kernel(w.shape[2], w.shape[3])
    return int(y.shape[-1]), int(w.shape[0]), kl, ks


# --------------------------------------------------------------------------------------
# the sparse FFN
# --------------------------------------------------------------------------------------
def _act(h: np.ndarray, activation: str) -> np.ndarray:
    if activation == "relu":
        return np.maximum(h, 0.0)  # NaN stays NaN
    c = math.sqrt(2.0 / math.pi)
    return 0.5 * h * (1.0 + np.tanh(c * (h + 0.044715 * h**3)))


def controller_logits(
    x: np.ndarray, params: Mapping[str, Any], block: int
) -> np.ndarray:
    """The controller's scores ``(x @ c1) @ c2`` reshaped ``(..., d_ff // block,
    block)``: row ``j`` scores the units ``j * block .. (j + 1) * block - 1``."""
    d, d_ff, block = check_controller(x, params, block)
    logits = (x @ params["c1"]) @ params["c2"]
    return logits.reshape(*x.shape[:-1], d_ff // block, block)


def active_units(x: np.ndarray, params: Mapping[str, Any], block: int) -> np.ndarray:
    """The unit each block uses at inference, as indices into ``d_ff``: ``argmax`` of
    :func:`controller_logits` per block (ties: the first) plus ``block * j``; int64
    ``(..., d_ff // block)``, increasing along the last axis."""
    logits = controller_logits(x, params, block)
    block = logits.shape[-1]
    offsets = block * np.arange(logits.shape[-2], dtype=np.int64)
    return np.argmax(logits, axis=-1).astype(np.int64) + offsets


def dense_ffn(
    x: np.ndarray, params: Mapping[str, Any], *, activation: str = "relu"
) -> np.ndarray:
    """The dense FFN ``act(x @ w1 + b1) @ w2 + b2`` (every unit), the baseline."""
    d = check_x(x)
    check_ffn_params(params, d, None)
    activation = check_choice("activation", activation, ACTIVATIONS)
    h = _act(x @ params["w1"] + params["b1"], activation)
    return h @ params["w2"] + params["b2"]


def sparse_ffn(
    x: np.ndarray,
    params: Mapping[str, Any],
    block: int,
    *,
    mode: str = "infer",
    gumbel: np.ndarray | None = None,
    tau: float = 1.0,
    activation: str = "relu",
) -> np.ndarray:
    """The Scaling Transformer's sparse FFN: one unit per block of ``block`` units.

    ``mode="train"``: the straight-through Gumbel-softmax's forward value, computed
    densely: ``(act(x @ w1 + b1) * hard) @ w2 + b2`` with ``hard`` the one-hot of
    ``argmax(logits + gumbel)`` per block (``gumbel=None``: zero noise; ``tau`` only
    scales the soft probabilities, whose gradient the torch face uses, so it does not
    change this value). ``mode="infer"``: ``argmax(logits)`` per block, then only the
    chosen columns of ``w1`` / entries of ``b1`` / rows of ``w2`` are read.
    """
    d, d_ff, block, mode, tau, activation = check_sparse_ffn_args(
        x, params, block, mode, gumbel, tau, activation
    )
    w1, b1, w2, b2 = (params[k] for k in FFN_KEYS)
    if mode == "train":
        logits = controller_logits(x, params, block)
        if gumbel is not None:
            logits = logits + gumbel
        choice = np.argmax(logits, axis=-1)
        hard = np.eye(block, dtype=logits.dtype)[choice].reshape(*x.shape[:-1], d_ff)
        return (_act(x @ w1 + b1, activation) * hard) @ w2 + b2
    units = active_units(x, params, block)  # (..., k), k = d_ff // block
    w1_cols = w1.T[units]  # (..., k, d): only the chosen columns of w1
    h = _act(np.einsum("...d,...kd->...k", x, w1_cols) + b1[units], activation)
    return np.einsum("...k,...kd->...d", h, w2[units]) + b2


# --------------------------------------------------------------------------------------
# the sparse QKV layer
# --------------------------------------------------------------------------------------
def multiplicative_layer(
    x: np.ndarray, params: Mapping[str, Any], n_modules: int
) -> np.ndarray:
    """``y[..., s, m] = sum_i x[..., i] mul_d[s, i] mul_e[i, m] + mul_b[s * M + m]``:
    ``(..., S, M)`` from ``x (..., d)``."""
    d = check_x(x)
    s, m = check_multiplicative(d, params, n_modules)
    y = (x[..., None, :] * params["mul_d"]) @ params["mul_e"]  # (..., S, M)
    return y + params["mul_b"].reshape(s, m)


def causal_module_conv(y: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The 2-D convolution over (length, modules) of ``y (..., n, S, M)`` (``M``
    channels): ``out[t, s, o] = b[o] + sum_{a, c, i} y[t + a - kl + 1, s + c - (ks -
    1) / 2, i] w[o, i, a, c]``, with zeros outside ``y`` (causal along length, "same"
    along modules); ``(..., n, S, M_out)``."""
    m, m_out, kl, ks = check_conv_args(y, w, b)
    half = (ks - 1) // 2
    n, s = y.shape[-3], y.shape[-2]
    pad = [(0, 0)] * (y.ndim - 3) + [(kl - 1, 0), (half, half), (0, 0)]
    yp = np.pad(y, pad)
    out = np.zeros((*y.shape[:-1], m_out), dtype=np.result_type(y, w))
    for a in range(kl):
        for c in range(ks):
            out += yp[..., a : a + n, c : c + s, :] @ w[:, :, a, c].T
    return out + b


def sparse_qkv(
    x: np.ndarray, params: Mapping[str, Any], n_modules: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The sparse QKV layer: one multiplicative layer shared by Q, K and V, then one
    causal 2-D convolution each; ``x (..., n, d)`` -> ``(q, k, v)``, each ``(..., n,
    d)`` with module ``s`` in features ``s * M .. (s + 1) * M - 1``."""
    check_qkv_args(x, params, n_modules)
    y = multiplicative_layer(x, params, n_modules)  # (..., n, S, M)
    return tuple(  # type: ignore[return-value]
        causal_module_conv(y, params[f"conv_w{c}"], params[f"conv_b{c}"]).reshape(
            x.shape
        )
        for c in "qkv"
    )
