"""Reading measurements (chapter 7.3): how fast does a cost grow with the sequence length?

If a layer's time follows a power law ``t = a n^p``, then ``log t = p log n + log a``: a straight line on a
log-log plot whose slope ``p`` is the growth exponent, about 1 for a linear layer (FLASH) and about 2 for a
quadratic one (softmax attention, FLASH-Quad) once ``n`` is large enough for the ``n^2`` term to dominate.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from effx_lab._validate import describe

__all__ = ["scaling_exponent"]


def _positive_vector(name: str, values: Any) -> np.ndarray:
    """``values`` (a list, tuple or 1-D NumPy array of positive finite reals) as a float64 array."""
    if not isinstance(values, (list, tuple, np.ndarray)):
        raise TypeError(f"{name} must be a list, tuple or 1-D NumPy array of positive numbers, got {describe(values)}")
    try:
        arr = np.asarray(values)
    except (TypeError, ValueError) as exc:  # ragged nested lists
        raise ValueError(f"{name} must be a flat sequence of numbers, got {describe(values)}") from exc
    if arr.dtype.kind not in "iuf":
        raise TypeError(
            f"{name} must hold real numbers (ints or floats), got dtype {arr.dtype} from {describe(values)}"
        )
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one value per measurement), got shape {arr.shape}")
    arr = arr.astype(np.float64)
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} must contain only finite values (no NaN/inf), got {describe(values)}")
    if (arr <= 0).any():
        bad = float(arr[arr <= 0][0])
        raise ValueError(f"{name} must be > 0 (its logarithm is taken), got {bad:g}")
    return arr


def scaling_exponent(lengths: Any, times: Any) -> float:
    """Slope ``p`` of the least-squares line through the points ``(log n_i, log t_i)``.

    ``lengths`` (the ``n_i``) and ``times`` (the ``t_i``): lists, tuples or 1-D arrays of positive numbers,
    one per measurement, at least two points and at least two different lengths. Returns a float:

    ``p = sum_i (x_i - mean x)(y_i - mean y) / sum_i (x_i - mean x)^2`` with ``x = log n``, ``y = log t``,

    the same as ``np.polyfit(np.log(lengths), np.log(times), 1)[0]``. The base of the logarithm cancels, and
    so does the unit of time (a constant factor only shifts the line). Exact on a power law ``t = a n^p``;
    on noisy timings every point counts, unlike the slope between the first and last point.
    """
    n = _positive_vector("lengths", lengths)
    t = _positive_vector("times", times)
    if n.shape != t.shape:
        raise ValueError(
            f"lengths and times must have the same length (one time per length), got {n.size} and {t.size}"
        )
    if n.size < 2:
        raise ValueError(f"a slope needs at least 2 measurements, got {n.size}")
    x, y = np.log(n), np.log(t)
    dx = x - x.mean()
    var = float(dx @ dx)
    if var == 0.0:
        raise ValueError(f"lengths must hold at least two different values to fit a slope, got {n.tolist()}")
    return float(dx @ (y - y.mean()) / var)
