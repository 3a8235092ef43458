"""Uniform quantization in NumPy, written to be read (chapter 2, section 02.1).

Part of the NumPy face :mod:`effx_lab.quant.reference`, which re-exports every name of
``__all__``; the topic modules (``_np_outliers``, ``_np_gptq``, ``_np_hawq``) import
their primitives from here, never from the face, so that no module imports one that
imports it back.

A real tensor ``x`` is stored as small integers ``q`` plus a few floating-point parameters:

    q     = clip(round(x / scale) + zero_point, qmin, qmax)        (quantize)
    x_hat = (q - zero_point) * scale                               (dequantize)

(Jacob et al. 2018, "Quantization and Training of Neural Networks for Efficient Integer-Arithmetic-Only
Inference", eq. 1; Nagel et al. 2021, "A White Paper on Neural Network Quantization", eqs. 1-3.) ``round`` is
round-half-to-even (``np.round``); ``clip`` saturates values outside the representable range.

Two choices define a scheme:

* **symmetric or affine.** Symmetric: signed integers on the *restricted* range ``[-(2^(b-1) - 1), 2^(b-1) - 1]``
  (int8: -127..127; -128 is left unused so that the grid is symmetric), ``zero_point = 0``,
  ``scale = max|x| / qmax``. Affine (asymmetric): unsigned integers ``[0, 2^b - 1]``,
  ``scale = (max(x, 0) - min(x, 0)) / (qmax - qmin)`` and an integer ``zero_point`` so that the real value 0
  is exactly representable (it is: ``dequantize(zero_point) == 0``); the range is widened to contain 0 first.
* **granularity**, i.e. which elements share one ``(scale, zero_point)``:

  - ``"tensor"``: one pair for the whole tensor; ``scale.shape == (1,) * x.ndim``.
  - ``"channel"``: one pair per index along ``axis`` (e.g. per output row of a weight matrix), reducing over
    every other axis; ``scale.shape`` is ``x.shape`` with every axis but ``axis`` set to 1.
  - ``"group"``: ``x`` is cut along ``axis`` into contiguous groups of ``group_size`` elements, one pair per
    group *and* per index of the other axes (e.g. a ``[out, in]`` weight with ``axis=-1``: one pair per row
    and per block of ``group_size`` input features, as in GPTQ/AWQ "g128"). ``scale.shape`` is ``x.shape``
    with ``x.shape[axis]`` replaced by ``n_groups = x.shape[axis] // group_size``; group ``g`` covers
    positions ``g * group_size .. (g + 1) * group_size - 1`` along ``axis``.

In the first two cases ``scale`` broadcasts against ``x`` directly; for groups it is repeated ``group_size``
times along ``axis`` (:func:`expand_qparams`). A slice whose range is zero (all zeros) gets ``scale = 1``
instead of dividing by zero: its values quantize to ``zero_point`` and dequantize back to exactly 0.

The parameters travel together in the frozen dataclass :class:`QParams`, returned by :func:`compute_qparams`
and accepted by :func:`quantize` and :func:`dequantize`, so the granularity is given once. Arithmetic runs in
float64 for float64 input and in float32 otherwise (float16 input is upcast). The fast version, with the same
names and signatures, is :mod:`effx_lab.quant._torch_uniform` (in :mod:`effx_lab.quant.torch_ops`); :class:`QParams` is shared (it holds NumPy arrays
here and torch tensors there).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from effx_lab._validate import (
    check_array,
    check_bool,
    check_choice,
    check_int,
    describe,
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

GRANULARITIES = ("tensor", "channel", "group")
MAX_NDIM = 8


# --------------------------------------------------------------------------- the integer grid
def qrange(bits: int, symmetric: bool) -> tuple[int, int]:
    """The integer range ``(qmin, qmax)`` of a ``bits``-bit grid.

    Symmetric (signed, restricted): ``(-(2^(b-1) - 1), 2^(b-1) - 1)``, e.g. ``(-127, 127)`` for 8 bits and
    ``(-1, 1)`` for 2 bits. Affine (unsigned): ``(0, 2^b - 1)``, e.g. ``(0, 255)``. ``bits`` is an int in 2..8.
    """
    bits = check_int("bits", bits, min_value=2, max_value=8)
    symmetric = check_bool("symmetric", symmetric)
    if symmetric:
        qmax = 2 ** (bits - 1) - 1
        return -qmax, qmax
    return 0, 2**bits - 1


def _check_config(
    shape: tuple[int, ...],
    bits: Any,
    symmetric: Any,
    granularity: Any,
    axis: Any,
    group_size: Any,
) -> tuple[int, bool, str, int, int | None]:
    """Validate the scheme for a tensor of ``shape``; return it with ``axis`` made non-negative."""
    bits, symmetric, granularity, group_size = _check_scheme(bits, symmetric, granularity, group_size)
    ndim = len(shape)
    axis = check_int("axis", axis)
    if not -ndim <= axis < ndim:
        raise ValueError(f"axis must be in [{-ndim}, {ndim - 1}] for x of shape {tuple(shape)}, got {axis}")
    axis %= ndim
    if granularity == "group" and shape[axis] % group_size:
        raise ValueError(f"group_size={group_size} must divide the length {shape[axis]} of x along axis {axis}")
    return bits, symmetric, granularity, axis, group_size


def _check_scheme(bits: Any, symmetric: Any, granularity: Any, group_size: Any) -> tuple[int, bool, str, int | None]:
    """The shape-independent part of :func:`_check_config`."""
    bits = check_int("bits", bits, min_value=2, max_value=8)
    symmetric = check_bool("symmetric", symmetric)
    if not isinstance(granularity, str):
        raise TypeError(
            f"granularity must be one of {', '.join(map(repr, GRANULARITIES))}; got {describe(granularity)}"
        )
    check_choice("granularity", granularity, GRANULARITIES)
    if granularity == "group":
        if group_size is None:
            raise ValueError('group_size is required when granularity="group", got None')
        group_size = check_int("group_size", group_size, min_value=1)
    elif group_size is not None:
        raise ValueError(
            f'group_size must be None unless granularity="group" (got {granularity!r}), got {group_size!r}'
        )
    return bits, symmetric, granularity, group_size


def qparams_shape(shape: tuple[int, ...], granularity: str, axis: int, group_size: int | None) -> tuple[int, ...]:
    """Shape of ``scale`` / ``zero_point`` for a tensor of ``shape`` under the given granularity (module docstring).

    Raises like :func:`compute_qparams` for a bad ``granularity`` / ``axis`` / ``group_size``.
    """
    if not isinstance(shape, tuple) or not all(isinstance(n, int) and n >= 0 for n in shape):
        raise TypeError(f"shape must be a tuple of non-negative ints, got {describe(shape)}")
    _, _, granularity, axis, group_size = _check_config(shape, 8, True, granularity, axis, group_size)
    if granularity == "tensor":
        return (1,) * len(shape)
    if granularity == "channel":
        return tuple(n if i == axis else 1 for i, n in enumerate(shape))
    return tuple(n // group_size if i == axis else n for i, n in enumerate(shape))


@dataclass(frozen=True, eq=False)
class QParams:
    """Everything needed to quantize and dequantize: the grid, the granularity and the per-slice parameters.

    ``scale`` (float, > 0) and ``zero_point`` (int32, in ``qrange(bits, symmetric)``) have the shape given by
    :func:`qparams_shape` (see the module docstring); they are NumPy arrays for :mod:`.reference` and torch
    tensors for :mod:`.torch_ops`. ``axis`` is stored non-negative; ``group_size`` is set only for
    ``granularity="group"``. Build it with :func:`compute_qparams`; the constructor checks consistency.
    """

    scale: Any
    zero_point: Any
    bits: int
    symmetric: bool
    granularity: str
    axis: int
    group_size: int | None = None

    def __post_init__(self) -> None:
        check_array(
            "scale",
            self.scale,
            ndim=tuple(range(1, MAX_NDIM + 1)),
            dtype_kind="f",
            allow_torch=True,
        )
        check_array("zero_point", self.zero_point, dtype_kind="iu", allow_torch=True)
        if tuple(self.zero_point.shape) != tuple(self.scale.shape):
            raise ValueError(
                f"zero_point must have the shape of scale {tuple(self.scale.shape)}, got {tuple(self.zero_point.shape)}"
            )
        check_int("axis", self.axis, min_value=0, max_value=self.scale.ndim - 1)
        _check_scheme(self.bits, self.symmetric, self.granularity, self.group_size)
        if not bool((self.scale > 0).all()) or not bool((self.scale < math.inf).all()):
            raise ValueError("scale must be finite and > 0 everywhere")
        qmin, qmax = qrange(self.bits, self.symmetric)
        if not bool(((self.zero_point >= qmin) & (self.zero_point <= qmax)).all()):
            raise ValueError(
                f"zero_point must lie in [{qmin}, {qmax}] for bits={self.bits}, symmetric={self.symmetric}"
            )
        if self.symmetric and bool((self.zero_point != 0).any()):
            raise ValueError("zero_point must be 0 for a symmetric scheme")

    @property
    def qmin(self) -> int:
        return qrange(self.bits, self.symmetric)[0]

    @property
    def qmax(self) -> int:
        return qrange(self.bits, self.symmetric)[1]


# --------------------------------------------------------------------------- validation helpers
def _check_x(x: Any) -> np.ndarray:
    check_array("x", x, ndim=tuple(range(1, MAX_NDIM + 1)), dtype_kind="f", finite=True)
    if x.size == 0:
        raise ValueError(f"x must not be empty, got shape {x.shape}")
    return x


def _compute_dtype(dtype: np.dtype) -> type:
    """float64 stays float64; every other float (float16, float32) is computed in float32."""
    return np.float64 if dtype == np.float64 else np.float32


def _check_matches(name: str, shape: tuple[int, ...], qparams: QParams) -> None:
    """``qparams`` must have been computed for a tensor of ``shape`` (same rank, granularity layout)."""
    if len(shape) != qparams.scale.ndim or (
        qparams.granularity == "group" and shape[qparams.axis] % qparams.group_size
    ):
        expected = None
    else:
        expected = qparams_shape(shape, qparams.granularity, qparams.axis, qparams.group_size)
    if expected != tuple(qparams.scale.shape):
        raise ValueError(
            f"{name} of shape {tuple(shape)} does not match qparams (granularity={qparams.granularity!r}, "
            f"axis={qparams.axis}, group_size={qparams.group_size}, scale shape {tuple(qparams.scale.shape)})"
        )


def _check_qparams_numpy(qparams: Any) -> QParams:
    if not isinstance(qparams, QParams):
        raise TypeError(f"qparams must be a QParams (from compute_qparams), got {describe(qparams)}")
    if not isinstance(qparams.scale, np.ndarray):
        raise TypeError(f"qparams must hold NumPy arrays for effx_lab.quant.reference, got {describe(qparams.scale)}")
    return qparams


# --------------------------------------------------------------------------- quantization parameters
def _slice_min_max(x: np.ndarray, granularity: str, axis: int, group_size: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Minimum and maximum of every slice that shares one scale, in the layout of :func:`qparams_shape`."""
    if granularity == "tensor":
        keep = (1,) * x.ndim
        return x.min().reshape(keep), x.max().reshape(keep)
    if granularity == "channel":
        # channels first, everything else flattened: row c holds every element of channel c
        rows = np.moveaxis(x, axis, 0).reshape(x.shape[axis], -1)
        shape = qparams_shape(x.shape, granularity, axis, group_size)
        return rows.min(axis=1).reshape(shape), rows.max(axis=1).reshape(shape)
    # groups: move `axis` last, split it into (n_groups, group_size), reduce the last axis, move back
    last = np.moveaxis(x, axis, -1)
    blocks = last.reshape(last.shape[:-1] + (last.shape[-1] // group_size, group_size))
    return np.moveaxis(blocks.min(axis=-1), -1, axis), np.moveaxis(blocks.max(axis=-1), -1, axis)


def compute_qparams(
    x: np.ndarray,
    bits: int = 8,
    symmetric: bool = True,
    granularity: str = "tensor",
    axis: int = -1,
    group_size: int | None = None,
) -> QParams:
    """Scale and zero point of each slice of ``x`` (min/max calibration), bundled in a :class:`QParams`.

    Symmetric: ``scale = max|x| / qmax``, ``zero_point = 0``. Affine: the range ``[lo, hi] = [min(x, 0),
    max(x, 0)]`` (widened to contain 0), ``scale = (hi - lo) / (qmax - qmin)``,
    ``zero_point = clip(round(qmin - lo / scale), qmin, qmax)``. A slice with ``hi == lo`` (all zeros) gets
    ``scale = 1``. ``x`` is a finite float array of 1 to 8 dimensions; ``granularity``, ``axis`` and
    ``group_size`` are described in the module docstring (``group_size`` must divide ``x.shape[axis]``).

    Values up to the largest of x's dtype work: a range wider than that (``hi - lo`` overflows) gets its scale
    from ``hi / n - lo / n`` in float64, and a scale whose grid would reach past the largest value is lowered
    just enough (:func:`_fit_grid`), so dequantized values stay finite; ordinary scales are unchanged.
    """
    x = _check_x(x)
    bits, symmetric, granularity, axis, group_size = _check_config(
        x.shape, bits, symmetric, granularity, axis, group_size
    )
    qmin, qmax = qrange(bits, symmetric)
    xc = x.astype(_compute_dtype(x.dtype), copy=False)
    lo, hi = _slice_min_max(xc, granularity, axis, group_size)
    lo, hi = np.minimum(lo, 0), np.maximum(hi, 0)
    if symmetric:
        scale = np.maximum(-lo, hi) / qmax
    else:
        with np.errstate(over="ignore"):  # hi - lo overflows for ranges wider than the dtype's max
            scale = (hi - lo) / (qmax - qmin)
        # there, hi / n - lo / n in float64 instead: the scale itself is at most 2 max / 3, it fits
        wide = ~np.isfinite(scale)
        if wide.any():
            n = float(qmax - qmin)
            scale = np.where(wide, (hi.astype(np.float64) / n - lo.astype(np.float64) / n).astype(scale.dtype), scale)
    scale = np.where(scale > 0, scale, np.ones_like(scale))  # all-zero slice: any scale works, take 1
    if symmetric:
        zero_point = np.zeros(scale.shape, dtype=np.int32)
    else:
        zero_point = np.clip(np.round(qmin - lo / scale), qmin, qmax).astype(np.int32)
    scale = _fit_grid(scale, zero_point, qmin, qmax, float(np.finfo(x.dtype).max))
    if not np.isfinite(scale).all():  # not reachable for finite x (see _fit_grid); named for the caller
        raise ValueError(f"x cannot be quantized: its range gives a non-finite scale in {scale.dtype}")
    return QParams(scale, zero_point, bits, symmetric, granularity, axis, group_size)


def _fit_grid(scale: np.ndarray, zero_point: np.ndarray, qmin: int, qmax: int, limit: float) -> np.ndarray:
    """``scale``, lowered where needed so that the grid's end points ``(qmin - z) * s`` and ``(qmax - z) * s``
    do not exceed ``limit``, the largest value of x's dtype (so that dequantizing never overflows).

    Only ranges within a grid step of the dtype's limit are affected: ``max |x| / qmax * qmax`` may round
    above float32's max, and an affine range like ``[-max, max]`` needs the non-integer zero point 127.5 (8
    bits): with ``z = 128`` the grid ``[-128 s, 127 s]`` with ``s = 2 max / 255`` overflows at ``-128 s``. The
    cap ``s = max / 128`` keeps every grid point representable; the value ``max`` then saturates at ``127 s``,
    one step below it. Every other scale is unchanged.
    """
    span = np.maximum(zero_point - qmin, qmax - zero_point).astype(np.float64)  # >= (qmax - qmin) / 2 > 0
    cap = (limit / span).astype(scale.dtype)
    with np.errstate(over="ignore"):
        over = cap * span.astype(scale.dtype) > limit  # the rounded cap may still overshoot by an ulp
    cap = np.where(over, np.nextafter(cap, scale.dtype.type(0)), cap)
    return np.minimum(scale, cap)


def expand_qparams(qparams: QParams, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """``scale`` and ``zero_point`` made broadcastable to a tensor of ``shape``.

    Per tensor and per channel they already are; per group each entry is repeated ``group_size`` times along
    ``axis``, so element ``i`` along ``axis`` uses group ``i // group_size``.
    """
    qparams = _check_qparams_numpy(qparams)
    _check_matches("shape", tuple(shape), qparams)
    if qparams.granularity != "group":
        return qparams.scale, qparams.zero_point
    rep = qparams.group_size
    return np.repeat(qparams.scale, rep, axis=qparams.axis), np.repeat(qparams.zero_point, rep, axis=qparams.axis)


# --------------------------------------------------------------------------- quantize / dequantize
def quantize(x: np.ndarray, qparams: QParams) -> np.ndarray:
    """``q = clip(round(x / scale) + zero_point, qmin, qmax)`` elementwise, round half to even.

    Returns ``int8`` for a symmetric scheme and ``uint8`` for an affine one (every ``bits <= 8`` grid fits),
    with the shape of ``x``. ``qparams`` must come from :func:`compute_qparams` on a tensor of the same shape
    (or any tensor whose shape gives the same ``scale`` layout); values outside the range saturate.
    """
    x = _check_x(x)
    qparams = _check_qparams_numpy(qparams)
    _check_matches("x", x.shape, qparams)
    scale, zero_point = expand_qparams(qparams, x.shape)
    xc = x.astype(scale.dtype, copy=False)
    q = np.clip(np.round(xc / scale) + zero_point, qparams.qmin, qparams.qmax)
    return q.astype(np.int8 if qparams.symmetric else np.uint8)


def _check_q(q: Any, qparams: QParams, allow_torch: bool = False) -> None:
    """``q``: an integer array (tensor if ``allow_torch``) of the layout of ``qparams``, values on the grid."""
    check_array(
        "q",
        q,
        ndim=tuple(range(1, MAX_NDIM + 1)),
        dtype_kind="iu",
        allow_torch=allow_torch,
    )
    _check_matches("q", tuple(q.shape), qparams)
    if math.prod(q.shape):
        lo, hi = int(q.min()), int(q.max())
        if lo < qparams.qmin or hi > qparams.qmax:
            raise ValueError(
                f"q must lie in [{qparams.qmin}, {qparams.qmax}] for bits={qparams.bits}, "
                f"symmetric={qparams.symmetric}; got values in [{lo}, {hi}]"
            )


def _check_dtype_numpy(dtype: Any, default: np.dtype) -> np.dtype:
    if dtype is None:
        return default
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"dtype must be a NumPy float dtype or None, got {describe(dtype)}") from None
    if dt.kind != "f":
        raise TypeError(f"dtype must be a NumPy float dtype or None, got {dt}")
    return dt


def dequantize(q: np.ndarray, qparams: QParams, dtype: Any = None) -> np.ndarray:
    """``x_hat = (q - zero_point) * scale`` elementwise, as ``dtype`` (default: the dtype of ``qparams.scale``,
    i.e. float64 for float64 input and float32 otherwise).

    ``q`` is an integer array of the shape ``qparams`` was computed for, with values in ``[qmin, qmax]``.
    """
    qparams = _check_qparams_numpy(qparams)
    _check_q(q, qparams)
    dtype = _check_dtype_numpy(dtype, qparams.scale.dtype)
    scale, zero_point = expand_qparams(qparams, q.shape)
    centred = q.astype(np.int32) - zero_point  # exact integers, |q - z| <= 255
    return (centred.astype(scale.dtype) * scale).astype(dtype)


def fake_quantize(
    x: np.ndarray,
    bits: int = 8,
    symmetric: bool = True,
    granularity: str = "tensor",
    axis: int = -1,
    group_size: int | None = None,
) -> np.ndarray:
    """Quantize-dequantize ``x`` with parameters calibrated on ``x`` itself; same shape and dtype as ``x``.

    ``dequantize(quantize(x, qp), qp)`` with ``qp = compute_qparams(x, ...)``: the real values the integers
    stand for, used to measure the error a scheme introduces (and, in QAT, as the forward pass).
    """
    qparams = compute_qparams(x, bits, symmetric, granularity, axis, group_size)
    return dequantize(quantize(x, qparams), qparams, dtype=x.dtype)


# --------------------------------------------------------------------------- error metrics
def _error_stats(n: int, sum_sq_x: float, sum_sq_err: float, max_abs: float) -> dict:
    """Shared by the NumPy and torch ``quant_error``: plain floats from the three sums."""
    if sum_sq_err == 0.0:
        sqnr = math.inf
    elif sum_sq_x == 0.0:
        sqnr = -math.inf
    else:
        sqnr = 10.0 * math.log10(sum_sq_x / sum_sq_err)
    if sum_sq_x == 0.0:
        rel = 0.0 if sum_sq_err == 0.0 else math.inf
    else:
        rel = math.sqrt(sum_sq_err / sum_sq_x)
    return {"mse": sum_sq_err / n, "max_abs": max_abs, "sqnr_db": sqnr, "rel_fro": rel}


def quant_error(x: np.ndarray, x_hat: np.ndarray) -> dict:
    """Error of an approximation ``x_hat`` of ``x`` (same shape, finite floats), as plain Python floats.

    ``mse = mean((x - x_hat)^2)``; ``max_abs = max |x - x_hat|``; ``sqnr_db = 10 log10(sum x^2 / sum (x -
    x_hat)^2)`` (signal-to-quantization-noise ratio: ``inf`` when ``x_hat == x``, ``-inf`` when ``x == 0`` but
    ``x_hat`` is not); ``rel_fro = ||x - x_hat||_F / ||x||_F`` (0 when both are 0, ``inf`` when only ``x`` is).
    Computed in float64.
    """
    _check_x(x)
    check_array("x_hat", x_hat, dtype_kind="f", finite=True)
    if x_hat.shape != x.shape:
        raise ValueError(f"x_hat must have the shape of x {x.shape}, got {x_hat.shape}")
    x64, err = x.astype(np.float64), x.astype(np.float64) - x_hat.astype(np.float64)
    return _error_stats(x.size, float(np.sum(x64**2)), float(np.sum(err**2)), float(np.max(np.abs(err))))
