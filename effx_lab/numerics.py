"""Rounding-error bounds: how far a float computation may honestly be from the exact result.

The course proves that its implementations agree in float64. A float32 or 16-bit comparison instead uses a
tolerance *derived* from the computation, never a constant tuned on one machine: float32 results differ
between BLAS kernels, CPU generations (AVX2 / AVX-512), thread counts, Apple silicon and GPUs, and only a bound
that holds for every summation order is portable. The standard model (Higham, *Accuracy and Stability of
Numerical Algorithms*, 2nd ed., sections 2.2 and 3.1): every IEEE ``+ - * /``, ``sqrt`` and conversion rounds
with relative error at most ``u``, the unit roundoff; a dot product of ``K`` terms, summed in any order,
blocked, split across threads or fused (an FMA only removes roundings), is off by at most
``gamma_K * sum_i |a_i b_i|`` with ``gamma_K = K u / (1 - K u)`` (eq. 3.5).

* :func:`unit_roundoff` -- ``u`` of a NumPy or torch float dtype;
* :func:`gamma` -- Higham's ``gamma_K``;
* :func:`abs_matmul` / :func:`matmul_bound` -- the elementwise bound ``gamma_K (|a| @ |b|)`` on a product;
* :func:`assert_within` -- an elementwise check against such a bound, with the worst ratio in its message;
* :func:`relative_error` -- ``||got - want|| / ||want||`` (Frobenius), the error measure the course
  quotes for a quantized layer or model (``squared=True``: its square, a relative MSE).

Transcendental functions (exp, log, tanh, erf, pow) are not correctly rounded and differ between libraries;
their documented errors are at most 4 ulp (:data:`TRANSCENDENTAL_ULPS`).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ._validate import check_bool, check_int, describe

__all__ = [
    "TRANSCENDENTAL_ULPS",
    "abs_matmul",
    "assert_within",
    "gamma",
    "matmul_bound",
    "relative_error",
    "unit_roundoff",
]

#: Worst documented error of the float32 transcendental functions the course meets: glibc 1 ulp, SLEEF u10
#: 1 ulp and u35 3.5 ulp (PyTorch on the CPU), NumPy's AVX-512 float32 log 3.83 ulp.
TRANSCENDENTAL_ULPS = 4


def _is_tensor(a: Any) -> bool:
    return type(a).__module__.startswith("torch") and hasattr(a, "detach")


def unit_roundoff(dtype: Any) -> float:
    """``u`` of a NumPy or torch float dtype: 2**-53 (float64), 2**-24 (float32), 2**-11 (float16), 2**-8
    (bfloat16). One ulp of a value is at most ``2 u`` times its magnitude."""
    if type(dtype).__module__.startswith("torch"):
        import torch

        if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise TypeError(f"dtype must be a float dtype, got {describe(dtype)}")
        return float(torch.finfo(dtype).eps) / 2
    if dtype is None:  # np.dtype(None) would be float64
        raise TypeError("dtype must be a NumPy or torch float dtype, got None")
    try:
        np_dtype = np.dtype(dtype)
    except TypeError as exc:
        raise TypeError(f"dtype must be a NumPy or torch float dtype, got {describe(dtype)}") from exc
    if np_dtype.kind != "f":
        raise TypeError(f"dtype must be a float dtype, got {np_dtype}")
    return float(np.finfo(np_dtype).eps) / 2


def gamma(k: int, u: float) -> float:
    """Higham's ``gamma_k = k u / (1 - k u)``: the relative error bound of a sum or dot product of ``k`` terms
    with unit roundoff ``u`` (requires ``k u < 1/2``, where the bound is meaningful)."""
    k = check_int("k", k, min_value=0)
    if not isinstance(u, (int, float)) or isinstance(u, bool) or not 0 < u < 1:
        raise ValueError(f"u must be a unit roundoff in (0, 1), got {u!r}")
    if not k * u < 0.5:
        raise ValueError(f"k * u must be below 1/2 for gamma_k to bound anything, got k={k}, u={u!r}")
    return k * u / (1 - k * u)


def _abs64(a: Any, name: str, signed: bool = False) -> np.ndarray:
    """``a`` as a float64 NumPy array (its absolute value unless ``signed``)."""
    if _is_tensor(a):
        a = a.detach().cpu().double().numpy()
    try:
        out = np.asarray(a, dtype=np.float64)
        out = out if signed else np.abs(out)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must be a NumPy array or torch tensor of numbers, got {describe(a)}") from exc
    return out


def abs_matmul(a: Any, b: Any) -> np.ndarray:
    """``|a| @ |b|`` in float64 (NumPy arrays or tensors): the sum of the magnitudes of the terms of each dot
    product, the scale every rounding error of ``a @ b`` is measured against."""
    a64, b64 = _abs64(a, "a"), _abs64(b, "b")
    if a64.ndim < 1 or b64.ndim != 2 or a64.shape[-1] != b64.shape[0]:
        raise ValueError(f"a [..., K] and b [K, N] must have matching K, got shapes {a64.shape} and {b64.shape}")
    return a64 @ b64


def matmul_bound(a: Any, b: Any, u: float, k: int | None = None) -> np.ndarray:
    """Elementwise bound on ``|fl(a @ b) - a @ b|`` for any summation order: ``gamma_K (|a| @ |b|)``.

    ``a [..., K]`` and ``b [K, N]`` (NumPy arrays or tensors, bounded in float64); ``K`` defaults to the inner
    dimension (pass ``k = K + r`` to also cover ``r`` more roundings of every term, e.g. of the operands)."""
    m = abs_matmul(a, b)
    return gamma(_abs64(a, "a").shape[-1] if k is None else k, u) * m


def assert_within(got: Any, want: Any, bound: Any, what: str = "") -> None:
    """``|got - want| <= bound`` elementwise (in float64; a NaN fails), else ``AssertionError`` with the number of
    elements over the bound, the worst ratio and the first offending element. NumPy arrays or tensors (on any
    device) for all three."""
    g = np.asarray(got.detach().cpu().double().numpy() if _is_tensor(got) else got, dtype=np.float64)
    w = np.asarray(want.detach().cpu().double().numpy() if _is_tensor(want) else want, dtype=np.float64)
    if g.shape != w.shape:
        raise ValueError(f"{what}: got and want must have one shape, got {g.shape} and {w.shape}")
    err = np.abs(g - w)
    if _is_tensor(bound):
        bound = bound.detach().cpu().double().numpy()
    bound = np.broadcast_to(np.asarray(bound, dtype=np.float64), err.shape)
    bad = ~(err <= bound)
    if bad.any():
        with np.errstate(divide="ignore", invalid="ignore"):
            ratios = np.where(bound > 0, err / bound, np.inf)
        ratio = float(np.nanmax(ratios)) if not np.isnan(ratios).all() else float("nan")
        idx = np.unravel_index(int(np.argmax(bad)), err.shape)
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {err.size} elements exceed the derived float error bound (worst "
            f"|got - want| / bound = {ratio:.3g}; first at {idx}: got {g[idx]!r}, want {w[idx]!r}, "
            f"bound {bound[idx]!r})"
        )


def relative_error(got: Any, want: Any, *, squared: bool = False) -> float:
    """``||got - want||_F / ||want||_F`` in float64, for NumPy arrays or torch tensors of the
    same shape (any device). ``squared=True`` returns the square: the relative mean squared
    error ``sum (got - want)^2 / sum want^2`` (GPTQ's and SmoothQuant's output error).

    ``ValueError`` when the shapes differ or ``want`` is all zeros (the ratio has no meaning).
    """
    squared = check_bool("squared", squared)
    g, w = _abs64(got, "got", signed=True), _abs64(want, "want", signed=True)
    if g.shape != w.shape:
        raise ValueError(f"got and want must have the same shape, got {g.shape} and {w.shape}")
    den = float(np.sum(w * w))
    if den == 0.0:
        raise ValueError("want must not be all zeros (the relative error divides by its norm)")
    ratio = float(np.sum((g - w) ** 2)) / den
    return ratio if squared else float(np.sqrt(ratio))
