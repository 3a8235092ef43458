"""Run one test body on a NumPy reference and on its torch_ops twin.

``backends(reference, "effx_lab.<pkg>.torch_ops")`` returns pytest params: the reference module itself, and
(when it imports) the torch module behind :class:`TorchAdapter`, which turns NumPy arguments (and dicts of
them) into torch tensors of the same dtype, calls the function without autograd, and turns tensors back into
NumPy arrays. Errors raised by the torch function pass through unchanged.

Below them, the float error bounds every float32 / 16-bit comparison of the suite derives its tolerance from
(:func:`unit_roundoff`, :func:`gamma`, :func:`matmul_bound`, :func:`network_atol`, ...) and
:func:`assert_within`, an elementwise check against such a bound.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pytest
import torch


def _to_torch(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.array(value, copy=True))  # keeps the dtype (float64 stays float64)
    if isinstance(value, Mapping):
        return {k: _to_torch(v) for k, v in value.items()}
    return value


def _to_numpy(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    if isinstance(value, tuple):
        return tuple(_to_numpy(v) for v in value)
    return value


class TorchAdapter:
    """``adapter.f(*numpy_args)`` calls ``module.f`` with torch tensors and returns NumPy arrays."""

    def __init__(self, module: Any) -> None:
        self.module = module

    def __getattr__(self, name: str) -> Callable[..., Any]:
        fn = getattr(self.module, name)

        def wrapped(*args: Any, **kwargs: Any) -> Any:
            with torch.no_grad():
                out = fn(*(_to_torch(a) for a in args), **{k: _to_torch(v) for k, v in kwargs.items()})
            return _to_numpy(out)

        return wrapped


def backends(reference: Any, torch_module: str) -> list[Any]:
    out = [pytest.param(reference, id="reference")]
    try:
        torch_ops = importlib.import_module(torch_module)
    except ImportError:
        return out
    return out + [pytest.param(TorchAdapter(torch_ops), id="torch_ops")]


# ============================================================================ float32 error bounds
# Agreement between implementations is proved tightly in float64. A float32 (or 16-bit) comparison uses a
# tolerance derived from the method and the precision, never a constant tuned on one machine: float32 results
# differ between BLAS kernels, CPU generations (AVX2 / AVX-512), thread counts, Apple silicon and GPUs, and only
# a bound that holds for every summation order is portable.
#
# The standard model (Higham, "Accuracy and Stability of Numerical Algorithms", 2nd ed., sec. 2.2 and 3.1):
# every IEEE +, -, *, /, sqrt and conversion rounds with relative error <= u (the unit roundoff, half an ulp at
# 1); a dot product of K terms, summed in any order, blocked, split across threads or fused (FMA only removes
# roundings), is off by at most gamma_K * sum_i |a_i b_i| with gamma_K = K u / (1 - K u) (eq. 3.5).
# Transcendental functions (exp, log, tanh, erf, pow) are not correctly rounded and differ between libraries
# (glibc, SLEEF in torch, NumPy's SIMD loops, CUDA): their documented errors are at most 1 ulp (glibc float32,
# SLEEF u10), 3.5 ulp (SLEEF u35) and 3.83 ulp (NumPy's AVX-512 float32 log); TRANSCENDENTAL_ULPS = 4 covers them.
# The general pieces live in the package (effx_lab.numerics), where the notebooks and later chapters can use
# them; the test-only bounds of particular layers follow.
from effx_lab.numerics import TRANSCENDENTAL_ULPS, abs_matmul, assert_within, gamma, matmul_bound, unit_roundoff  # noqa: E402,F401


def _abs64(a: Any) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().double().numpy()
    return np.abs(np.asarray(a, dtype=np.float64))


def gelu_tanh_bound(x: Any, u: float) -> np.ndarray:
    """Bound on ``|fl(gelu(x)) - gelu(x)|`` for ``0.5 x (1 + tanh(c (x + 0.044715 x^3)))`` evaluated with
    unit roundoff ``u`` (any ordering of its operations, NumPy's or PyTorch's): the argument ``a`` meets up to
    ``2 TRANSCENDENTAL_ULPS + 6`` roundings relative to ``A = c (|x| + 0.044715 |x|^3)`` (x^3 may be a pow,
    two constants, three products, a sum), tanh adds its own ulps (|tanh| <= 1, |tanh'| <= 1), and
    ``0.5 x (1 + t)`` three more roundings: ``u |x| ((TRANSCENDENTAL_ULPS + 3) A + TRANSCENDENTAL_ULPS + 4)``."""
    ax = _abs64(x)
    big_a = np.sqrt(2.0 / np.pi) * (ax + 0.044715 * ax**3)
    return u * ax * ((TRANSCENDENTAL_ULPS + 3) * big_a + TRANSCENDENTAL_ULPS + 4)


GELU_LIPSCHITZ = 1.13  # max |gelu'(x)| = 1.1289 (exact and tanh forms): how far an error in x moves gelu(x)


def layer_norm_bound(x: Any, weight: Any, bias: Any, u: float, eps: float = 1e-5) -> np.ndarray:
    """First-order bound on ``|fl(LayerNorm(x)) - LayerNorm(x)|`` over the last axis (``d`` values), for a
    two-pass or Welford mean and variance summed in any order: the mean is off by ``gamma_{d+1} m1`` (``m1`` =
    mean |x|), which shifts every centred value; the variance by ``gamma_{d+2}`` relative plus twice that shift
    over sigma; sqrt, the division, the gain and the bias add a few u: with ``xh`` the normalised value and
    ``s = sqrt(var + eps)``,
    ``|w| ((|xh| + 1) gamma_{d+2} m1 / s + |xh| (gamma_{d+2} / 2 + 5 u)) + u |b|``."""
    x64 = np.asarray(x.detach().cpu().double().numpy() if isinstance(x, torch.Tensor) else x, dtype=np.float64)
    d = x64.shape[-1]
    s = np.sqrt(x64.var(axis=-1, keepdims=True) + eps)
    xh = np.abs(x64 - x64.mean(axis=-1, keepdims=True)) / s
    m1 = np.abs(x64).mean(axis=-1, keepdims=True)
    g = gamma(d + 2, u)
    return _abs64(weight) * ((xh + 1) * g * m1 / s + xh * (g / 2 + 5 * u)) + u * _abs64(bias)


def quantized_linear_bound(x: Any, w: Any, b: Any, x_bits: int, w_bits: int, u: float | None = None) -> np.ndarray:
    """Derived bound on the difference of two computations of the same absmax-quantized linear layer ``x @ w^T
    + b`` (W8A8 simulated or through an exact int8 product), e.g. NumPy vs torch or CPU vs GPU, in the dtype of
    ``x`` (NumPy array or tensor; ``u`` overrides its unit roundoff).

    Both quantize with the same IEEE operations (absmax, ``x / scale``, round half to even): the same codes and
    scales. Only summation differs: the K-term matmul of the dequantized operands (or, for the int8 paths, the
    exact int32 product's epilogue ``acc * s_x * s_w``, 2 roundings), LLM.int8's float outlier part and the bias
    add. Each is within ``gamma_{K+3} M + u |b|`` of the exact result on those operands, with ``M = |x_hat| @
    |w_hat|^T`` and ``|x_hat| <= |x| + step / 2``, ``step <= max|x| / qmax``; so the two are within twice that."""
    if u is None:
        u = unit_roundoff(x.dtype)
    x2 = _abs64(x).reshape(-1, x.shape[-1])
    w2 = _abs64(w)
    x_mag = x2 + x2.max() / (2 * (2 ** (x_bits - 1) - 1))
    w_mag = w2 + w2.max() / (2 * (2 ** (w_bits - 1) - 1))
    bound = gamma(x.shape[-1] + 3, u) * abs_matmul(x_mag, w_mag.T)
    if b is not None:
        bound = bound + u * _abs64(b)
    return 2 * bound.reshape(tuple(x.shape[:-1]) + (w.shape[0],))


def network_atol(k_path: int, ref: Any, u: float) -> float:
    """Absolute tolerance for two float computations of the same network (other BLAS kernels, batch shapes,
    backends), from a first-order error analysis: every reduction on the longest path from the input to ``ref``
    (``k_path`` terms in all, counting each transcendental function's ulps as terms) contributes at most
    ``gamma_K`` relative to the magnitude of its terms; LayerNorm re-normalises between blocks, so to first
    order the relative errors add, on magnitudes of the order of the compared tensor's. Two computations:
    ``2 gamma_{k_path} max(1, max |ref|)``. (An estimate of a worst case, not a measured margin: the rounding
    actually seen is typically ~sqrt(K) u, hundreds of times smaller.)"""
    return 2 * gamma(k_path, u) * max(1.0, float(_abs64(ref).max(initial=0.0)))
