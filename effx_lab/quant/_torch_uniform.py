"""Uniform quantization in PyTorch, vectorised (chapter 2, section 02.1).

Part of the PyTorch face :mod:`effx_lab.quant.torch_ops`, which re-exports every name of
``__all__``; the topic modules (``_torch_outliers``, ``_torch_gptq``, ``_torch_hawq``)
import their primitives from here.

Same names and signatures as :mod:`effx_lab.quant.reference` (torch tensors in, torch tensors out), and the
same :class:`~effx_lab.quant.reference.QParams` dataclass, here holding tensors. What differs, and why:

* min/max per slice are single ``torch.aminmax`` reductions over a *view*: per channel over every dimension
  but ``axis``, per group over the inner dimension of ``x.view(..., n_groups, group_size, ...)``. No
  ``moveaxis`` copy as in the reference.
* group parameters are never repeated in memory (the reference's ``np.repeat``): ``x`` is viewed as
  ``(..., n_groups, group_size, ...)`` and ``scale`` gets a size-1 dimension after ``n_groups``, so the
  elementwise formula broadcasts.
* the arithmetic is the same IEEE sequence as the reference (``x / scale``, ``torch.round`` = half to even,
  ``+ zero_point``, clamp; ``(q - zero_point) * scale``), so on the same input the integers agree exactly.

float16/bfloat16 input is upcast to float32 for the arithmetic (bfloat16 cannot even hold ``x / scale`` to
the nearest integer above 256); float64 stays float64. Everything runs on the device of ``x`` (CPU or CUDA).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from effx_lab._validate import describe

from ._np_uniform import (
    GRANULARITIES,
    MAX_NDIM,
    QParams,
    _check_config,
    _check_matches,
    _check_q,
    _error_stats,
    qparams_shape,
    qrange,
)

__all__ = [
    "GRANULARITIES",
    "QParams",
    "compute_qparams",
    "dequantize",
    "expand_qparams",
    "fake_quantize",
    "qparams_shape",
    "qrange",
    "quant_error",
    "quantize",
]


# --------------------------------------------------------------------------- validation helpers
def _check_tensor_x(name: str, x: Any) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch tensor, got {describe(x)}")
    if not 1 <= x.ndim <= MAX_NDIM:
        raise ValueError(f"{name} must have 1 to {MAX_NDIM} dimensions, got shape {tuple(x.shape)}")
    if not x.dtype.is_floating_point:
        raise TypeError(f"{name} must have a float dtype, got {x.dtype}")
    if x.numel() == 0:
        raise ValueError(f"{name} must not be empty, got shape {tuple(x.shape)}")
    lo, hi = torch.aminmax(x)  # NaN propagates into the extremes: one reduction instead of a full isfinite pass
    if not bool(torch.isfinite(lo) & torch.isfinite(hi)):
        raise ValueError(f"{name} must contain only finite values (no NaN/inf)")
    return x


def _check_qparams_torch(qparams: Any) -> QParams:
    if not isinstance(qparams, QParams):
        raise TypeError(f"qparams must be a QParams (from compute_qparams), got {describe(qparams)}")
    if not isinstance(qparams.scale, torch.Tensor) or not isinstance(qparams.zero_point, torch.Tensor):
        raise TypeError(f"qparams must hold torch tensors for effx_lab.quant.torch_ops, got {describe(qparams.scale)}")
    return qparams


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _grouped_shape(shape: tuple[int, ...], axis: int, group_size: int) -> tuple[int, ...]:
    """``shape`` with ``shape[axis]`` split into ``(n_groups, group_size)``."""
    return shape[:axis] + (shape[axis] // group_size, group_size) + shape[axis + 1 :]


# --------------------------------------------------------------------------- quantization parameters
def _slice_min_max(
    x: torch.Tensor, granularity: str, axis: int, group_size: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    if granularity == "tensor":
        lo, hi = torch.aminmax(x)
        keep = (1,) * x.ndim
        return lo.reshape(keep), hi.reshape(keep)
    if granularity == "channel":
        dims = tuple(d for d in range(x.ndim) if d != axis)
        if not dims:  # 1-D: every element is its own channel (an empty dim tuple would reduce everything)
            return x, x
        # torch.aminmax reduces one dimension only; amin/amax take several
        return torch.amin(x, dim=dims, keepdim=True), torch.amax(x, dim=dims, keepdim=True)
    lo, hi = torch.aminmax(x.reshape(_grouped_shape(tuple(x.shape), axis, group_size)), dim=axis + 1)
    return lo, hi


def compute_qparams(
    x: torch.Tensor,
    bits: int = 8,
    symmetric: bool = True,
    granularity: str = "tensor",
    axis: int = -1,
    group_size: int | None = None,
) -> QParams:
    """Min/max calibration of each slice of ``x``; same contract as
    :func:`effx_lab.quant.reference.compute_qparams` (``scale`` float32, or float64 for float64 input;
    ``zero_point`` int32; both on ``x``'s device)."""
    x = _check_tensor_x("x", x)
    bits, symmetric, granularity, axis, group_size = _check_config(
        tuple(x.shape), bits, symmetric, granularity, axis, group_size
    )
    scale, zero_point = _scale_zero_point(x, bits, symmetric, granularity, axis, group_size)
    if not bool(torch.isfinite(scale).all()):  # not reachable for finite x (see _fit_grid)
        raise ValueError(f"x cannot be quantized: its range gives a non-finite scale in {scale.dtype}")
    return QParams(scale, zero_point, bits, symmetric, granularity, axis, group_size)


def _scale_zero_point(
    x: torch.Tensor, bits: int, symmetric: bool, granularity: str, axis: int, group_size: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``(scale, zero_point)`` of :func:`compute_qparams` for a finite ``x`` and a validated configuration,
    reading nothing back (the simulated quantized layers call it on every activation: a value check, or
    building a validated :class:`QParams`, would be a device sync there)."""
    qmin, qmax = qrange(bits, symmetric)
    xc = x.to(_compute_dtype(x.dtype))
    lo, hi = _slice_min_max(xc, granularity, axis, group_size)
    lo, hi = lo.clamp(max=0), hi.clamp(min=0)
    if symmetric:
        scale = torch.maximum(-lo, hi) / qmax
    else:
        n = float(qmax - qmin)
        scale = (hi - lo) / n
        # hi - lo overflows (inf) for ranges wider than the dtype's max: there hi / n - lo / n in float64
        wide = (hi.to(torch.float64) / n - lo.to(torch.float64) / n).to(scale.dtype)
        scale = torch.where(torch.isfinite(scale), scale, wide)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    if symmetric:
        zero_point = torch.zeros(scale.shape, dtype=torch.int32, device=x.device)
    else:
        zero_point = torch.round(qmin - lo / scale).clamp(qmin, qmax).to(torch.int32)
    return _fit_grid(scale, zero_point, qmin, qmax, torch.finfo(x.dtype).max), zero_point


def _fit_grid(scale: torch.Tensor, zero_point: torch.Tensor, qmin: int, qmax: int, limit: float) -> torch.Tensor:
    """``scale`` lowered where the grid's end points would pass ``limit`` (x's dtype's largest value); the
    same rule as :func:`effx_lab.quant._np_uniform._fit_grid`, which explains it. Ordinary scales are unchanged."""
    span = torch.maximum(zero_point - qmin, qmax - zero_point).to(torch.float64)
    cap = (limit / span).to(scale.dtype)
    over = cap * span.to(scale.dtype) > limit  # the rounded cap may still overshoot by an ulp
    cap = torch.where(over, torch.nextafter(cap, torch.zeros_like(cap)), cap)
    return torch.minimum(scale, cap)


def _broadcast_view(qparams: QParams, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(t', scale', zero_point')`` that broadcast elementwise; for groups ``t'`` is ``t`` viewed as
    ``(..., n_groups, group_size, ...)`` and the parameters get a size-1 dimension after ``n_groups``."""
    return _broadcast(t, qparams.scale, qparams.zero_point, qparams.granularity, qparams.axis, qparams.group_size)


def _broadcast(t: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, granularity: str, axis: int,
               group_size: int | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if granularity != "group":
        return t, scale, zero_point
    shape = _grouped_shape(tuple(t.shape), axis, group_size)
    return t.reshape(shape), scale.unsqueeze(axis + 1), zero_point.unsqueeze(axis + 1)


def expand_qparams(qparams: QParams, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """``scale`` and ``zero_point`` made broadcastable to a tensor of ``shape`` (per group: each entry
    repeated ``group_size`` times along ``axis`` with ``repeat_interleave``; :func:`quantize` itself uses a
    view instead). Same contract as :func:`effx_lab.quant.reference.expand_qparams`."""
    qparams = _check_qparams_torch(qparams)
    _check_matches("shape", tuple(shape), qparams)
    if qparams.granularity != "group":
        return qparams.scale, qparams.zero_point
    rep, a = qparams.group_size, qparams.axis
    return qparams.scale.repeat_interleave(rep, dim=a), qparams.zero_point.repeat_interleave(rep, dim=a)


# --------------------------------------------------------------------------- quantize / dequantize
def quantize(x: torch.Tensor, qparams: QParams) -> torch.Tensor:
    """``q = clamp(round(x / scale) + zero_point, qmin, qmax)``, round half to even; ``torch.int8`` for a
    symmetric scheme, ``torch.uint8`` for an affine one, with the shape of ``x``."""
    x = _check_tensor_x("x", x)
    qparams = _check_qparams_torch(qparams)
    _check_matches("x", tuple(x.shape), qparams)
    xv, scale, zero_point = _broadcast_view(qparams, x.to(qparams.scale.dtype))
    q = (torch.round(xv / scale) + zero_point).clamp(qparams.qmin, qparams.qmax)
    return q.to(torch.int8 if qparams.symmetric else torch.uint8).reshape(x.shape)


def _symmetric_unchecked(
    x: torch.Tensor, bits: int, granularity: str, axis: int, group_size: int | None, fake: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric quantization of a finite ``x`` with a validated configuration, reading nothing back:
    ``(codes int8, scale)``, or with ``fake`` ``(x_hat in x's dtype, scale)``. The arithmetic of
    :func:`compute_qparams`, :func:`quantize` and :func:`dequantize` (the same numbers), for the simulated
    quantized layers, which quantize an activation on every call."""
    scale, zero_point = _scale_zero_point(x, bits, True, granularity, axis, group_size)
    qmin, qmax = qrange(bits, True)
    xv, sv, _ = _broadcast(x.to(scale.dtype), scale, zero_point, granularity, axis, group_size)
    q = torch.round(xv / sv).clamp(qmin, qmax)
    if fake:
        return (q * sv).to(x.dtype).reshape(x.shape), scale
    return q.to(torch.int8).reshape(x.shape), scale


def _check_dtype_torch(dtype: Any, default: torch.dtype) -> torch.dtype:
    if dtype is None:
        return default
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a torch float dtype or None, got {describe(dtype)}")
    return dtype


def dequantize(q: torch.Tensor, qparams: QParams, dtype: Any = None) -> torch.Tensor:
    """``x_hat = (q - zero_point) * scale`` as ``dtype`` (default: ``qparams.scale.dtype``); same contract
    as :func:`effx_lab.quant.reference.dequantize`."""
    qparams = _check_qparams_torch(qparams)
    if not isinstance(q, torch.Tensor):
        raise TypeError(f"q must be a torch tensor, got {describe(q)}")
    if q.dtype.is_floating_point or q.dtype.is_complex or q.dtype == torch.bool:
        raise TypeError(f"q must have an integer dtype, got {q.dtype}")
    _check_q(q, qparams, allow_torch=True)
    dtype = _check_dtype_torch(dtype, qparams.scale.dtype)
    qv, scale, zero_point = _broadcast_view(qparams, q)
    centred = qv.to(torch.int32) - zero_point
    return (centred.to(scale.dtype) * scale).to(dtype).reshape(q.shape)


def fake_quantize(
    x: torch.Tensor,
    bits: int = 8,
    symmetric: bool = True,
    granularity: str = "tensor",
    axis: int = -1,
    group_size: int | None = None,
) -> torch.Tensor:
    """Quantize-dequantize ``x`` with parameters calibrated on ``x``; same shape, dtype and device as ``x``.
    (Not differentiable in a useful way: ``round`` has zero gradient; QAT adds a straight-through estimator.)"""
    qparams = compute_qparams(x, bits, symmetric, granularity, axis, group_size)
    return dequantize(quantize(x, qparams), qparams, dtype=x.dtype)


# --------------------------------------------------------------------------- error metrics
def quant_error(x: torch.Tensor, x_hat: torch.Tensor) -> dict:
    """``mse``, ``max_abs``, ``sqnr_db``, ``rel_fro`` of ``x_hat`` against ``x`` as plain Python floats,
    computed in float64; same contract as :func:`effx_lab.quant.reference.quant_error`."""
    x = _check_tensor_x("x", x)
    if not isinstance(x_hat, torch.Tensor):
        raise TypeError(f"x_hat must be a torch tensor, got {describe(x_hat)}")
    if not x_hat.dtype.is_floating_point:
        raise TypeError(f"x_hat must have a float dtype, got {x_hat.dtype}")
    if x_hat.shape != x.shape:
        raise ValueError(f"x_hat must have the shape of x {tuple(x.shape)}, got {tuple(x_hat.shape)}")
    if not bool(torch.isfinite(x_hat).all()):
        raise ValueError("x_hat must contain only finite values (no NaN/inf)")
    x64 = x.to(torch.float64)
    err = x64 - x_hat.to(device=x.device, dtype=torch.float64)
    sums = torch.stack([(x64 * x64).sum(), (err * err).sum(), err.abs().max()]).tolist()
    return _error_stats(math.prod(x.shape), sums[0], sums[1], sums[2])
