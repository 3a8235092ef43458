"""Checkers for the exercises of notebook 02.3 (LLM.int8()).

Each ``check_<name>(student_fn)`` runs the student's function against the course's reference
(:mod:`effx_lab.quant.reference`) on fixed edge cases and seeded random draws, prints a plain-words verdict and
returns the :class:`effx_lab.check.CheckResult`. When a wrong answer equals a classic mistake (scales along the
wrong axis, a forgotten epilogue, an int8 accumulator that overflows, ``>=`` instead of ``>``...) the verdict
ends with a ``hint:`` line naming it. What the student writes (Dettmers et al. 2022, Sec. 3):

* ``vectorwise_quantize(x, bits=8) -> (q, scale)``: symmetric absmax quantization of a 2-D ``x [M, K]`` with
  one scale per row, ``scale[m] = max_k |x[m, k]| / qmax`` with ``qmax = 2^(b-1) - 1`` (an all-zero row gets
  scale 1), ``q = round(x / scale[:, None])``, integers ``[M, K]`` in ``[-qmax, qmax]``; ``scale`` is ``[M]``
  (``[M, 1]`` is accepted too). As :func:`effx_lab.quant.reference.absmax_quantize` with ``axis=-1``.
* ``vectorwise_matmul(x, w) -> y``: LLM.int8's vector-wise int8 product of ``x [T, K]`` and ``w [N, K]``:
  8-bit ``q_x`` with one scale per row of ``x`` (token), ``q_w`` with one per row of ``w`` (output channel),
  the exact integer product ``acc = q_x q_w^T`` (int32 accumulation) and the epilogue ``acc * s_x[:, None] *
  s_w[None, :]``; ``y`` float ``[T, N]``. As :func:`effx_lab.quant.reference.vectorwise_linear`.
* ``llm_int8_matmul(x, w, threshold=6.0) -> y``: the mixed-precision decomposition: the columns ``j`` of ``x``
  with any ``|x[t, j]| > threshold`` (strictly) are multiplied in float, ``x[:, O] @ w[:, O].T``, the others
  go through ``vectorwise_matmul``, and the two are added. As :func:`effx_lab.quant.reference.llm_int8_linear`.

Inputs are float64 arrays except one float32 case per exercise. Integers are compared exactly (a float array
of whole numbers is accepted for ``q``), scales with ``rtol=1e-5``, products with ``rtol=1e-4`` and
``atol=1e-5`` (the outputs are of order 1; every listed mistake is off by far more). No case puts a value of
``x / scale`` within ``1e-6`` of a rounding tie, so both rounding conventions (half to even, half away from
zero) and float32 or float64 arithmetic give the same integers (``tests/ch02_quant/test_quant_exercises_llm_int8`` checks
it).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from effx_lab.check import Case, CheckResult, Mistake, check_with_hints, checker, named

from .. import reference as R

__all__ = [
    "check_llm_int8_matmul",
    "check_vectorwise_matmul",
    "check_vectorwise_quantize",
]

_SCALE_RTOL = 1e-5  # vectorwise_quantize: scales (integers are always compared exactly)
_SCALE_ATOL = 1e-12
_RTOL = 1e-4  # the two matmul exercises (one case is float32)
_ATOL = 1e-5


def _squeeze_scale(got: Any, expected: Any) -> Any:
    """``(q, scale [M, 1])`` -> ``(q, scale [M])`` when ``[M]`` is expected, else unchanged.

    The ``prepare`` of :func:`effx_lab.check.check_with_hints`: both shapes of the scale
    are accepted.
    """
    if not (isinstance(got, (tuple, list)) and len(got) == 2 and isinstance(expected, tuple) and len(expected) == 2):
        return got
    scale, want = got[1], expected[1]
    shape = getattr(scale, "shape", None)
    if shape is not None and tuple(shape) == (want.shape[0], 1):
        return (got[0], scale.reshape(-1))
    return got


def _qmax(bits: int) -> int:
    return 2 ** (bits - 1) - 1


def _normal(rng: np.random.Generator, *shape: int, scale: float = 1.0) -> np.ndarray:
    return rng.normal(0.0, scale, size=shape)


# =========================================================================== vectorwise_quantize
@named("vectorwise_quantize")
def _vectorwise_quantize_reference(x, bits=8):
    q, scale = R.absmax_quantize(x, axis=-1, bits=bits)  # scale [M, 1]: reduce over the columns of each row
    return q, scale.reshape(-1)


def _rows(
    x,
    bits=8,
    *,
    axis: int = 1,
    levels: Callable[[int], int] = _qmax,
    qmin: Callable[[int], int] | None = None,
    peak: Callable[..., np.ndarray] = lambda a, axis: np.abs(a).max(axis=axis),
    rounding: Callable[[np.ndarray], np.ndarray] = np.round,
    zero_scale: float | None = 1.0,
    per_tensor: bool = False,
):
    """Absmax quantization with one knob per classic mistake (defaults: the right answer, one scale per row)."""
    a = np.asarray(x, dtype=np.float64)
    top = _qmax(bits)
    bottom = -top if qmin is None else qmin(bits)
    m = np.full(a.shape[0], np.abs(a).max()) if per_tensor else peak(a, axis)
    scale = m / levels(bits)
    if zero_scale is not None:
        scale = np.where(m != 0, scale, zero_scale)
    s = scale[:, None] if axis == 1 else scale[None, :]
    with np.errstate(all="ignore"):
        q = np.clip(rounding(a / s), bottom, top)
    return q, scale


def _zero_scale_no_nan(x, bits=8):
    """An all-zero row gets scale 0 and, after ``nan_to_num``, q = 0 (the NaN is hidden, the scale is not)."""
    q, scale = _rows(x, bits, zero_scale=None)
    return np.nan_to_num(q), scale


_QUANTIZE_MISTAKES = [
    Mistake(
        lambda x, bits=8: _rows(x, bits, axis=0),
        "one scale per ROW of x (one per token): reduce over the columns, np.abs(x).max(axis=1). Your scales "
        "are per column (axis=0), one per input feature; such scales sit inside the sum over k of a matmul "
        "and cannot be pulled out of the integer product.",
    ),
    Mistake(
        lambda x, bits=8: _rows(x, bits, per_tensor=True),
        "one scale per row, not one for the whole matrix: each row's largest |value| sets that row's scale, "
        "so a row with small values keeps a fine grid.",
    ),
    Mistake(
        lambda x, bits=8: _rows(x, bits, levels=lambda b: 2 ** (b - 1), qmin=lambda b: -(2 ** (b - 1))),
        "the symmetric grid is restricted: qmax = 2^(b-1) - 1 (127 for 8 bits), scale = max|row| / qmax, and "
        "q lies in [-qmax, qmax]; dividing by 2^(b-1) = 128 wastes a level and breaks the symmetry.",
    ),
    Mistake(
        lambda x, bits=8: _rows(x, bits, levels=lambda b: 2 ** (b - 1)),
        "divide by qmax = 2^(b-1) - 1 (127 for 8 bits), not by 2^(b-1): the largest |value| of each row must "
        "land exactly on qmax.",
    ),
    Mistake(
        lambda x, bits=8: None if bits == 8 else _rows(x, 8),
        "use the bits argument: qmax = 2^(bits-1) - 1 (7 for 4 bits), not always 127.",
    ),
    Mistake(
        lambda x, bits=8: _rows(x, bits, peak=lambda a, axis: a.max(axis=axis)),
        "the scale comes from the largest MAGNITUDE of the row, max|x| (np.abs(x).max(axis=1)): a row whose "
        "extreme value is negative needs it too.",
    ),
    Mistake(
        lambda x, bits=8: _rows(x, bits, rounding=np.trunc),
        "round to the nearest integer (np.round); astype(int) or np.trunc cut towards zero and double the "
        "worst-case error.",
    ),
    Mistake(
        lambda x, bits=8: _rows(x, bits, rounding=np.floor),
        "round to the nearest integer (np.round), not down (np.floor).",
    ),
    Mistake(
        lambda x, bits=8: _rows(x, bits, zero_scale=None),
        "an all-zero row has max|row| = 0: give it scale 1 (np.where(peak > 0, peak / qmax, 1.0)), otherwise "
        "x / scale is 0 / 0 = NaN.",
    ),
    Mistake(
        lambda x, bits=8: _zero_scale_no_nan(x, bits),
        "an all-zero row has max|row| = 0: give it scale 1, not 0 (a scale of 0 cannot be divided by).",
    ),
]


def _quantize_cases(rng: np.random.Generator) -> list[Case]:
    outlier_col = _normal(rng, 6, 10)
    outlier_col[:, 3] = rng.choice([-1.0, 1.0], size=6) * rng.uniform(20.0, 40.0, size=6)  # an outlier feature
    neg_peak = _normal(rng, 4, 7)
    neg_peak[np.arange(4), rng.integers(0, 7, size=4)] = -6.0  # every row's extreme value is negative
    zero_row = _normal(rng, 5, 8)
    zero_row[2] = 0.0
    scaled_rows = _normal(rng, 6, 12) * np.array([[0.01], [0.1], [1.0], [10.0], [100.0], [0.5]])
    cases = [
        Case("defaults: 8 bits, x [4, 16]", (_normal(rng, 4, 16),)),
        Case("rows of very different size: one scale each", (scaled_rows,)),
        Case("an outlier column: every row's scale is set by it", (outlier_col,)),
        Case("negative extremes: max|x| of each row is negative", (neg_peak, 8)),
        Case("4 bits: qmax = 7", (_normal(rng, 5, 9), 4)),
        Case("2 bits: the grid is {-1, 0, 1}", (_normal(rng, 3, 10), 2)),
        Case("square: x [6, 6]", (_normal(rng, 6, 6), 8)),
        Case("one row: x [1, 32]", (_normal(rng, 1, 32),)),
        Case("one column: x [7, 1], every value lands on +-qmax", (_normal(rng, 7, 1),)),
        Case("an all-zero row: scale 1 by convention", (zero_row,)),
        Case("float32: input", (_normal(rng, 5, 12).astype(np.float32),)),
    ]
    for i in range(3):
        bits = int(rng.choice([3, 4, 6, 8]))
        shape = (int(rng.integers(2, 9)), int(rng.integers(2, 40)))
        cases.append(Case(f"random draw {i + 1}: {bits} bits, x {list(shape)}",
                          (_normal(rng, *shape, scale=float(rng.uniform(0.05, 20.0))), bits)))
    return cases


@checker(reference=_vectorwise_quantize_reference)
def check_vectorwise_quantize(student_fn: Any) -> CheckResult:
    """Check ``vectorwise_quantize(x, bits=8) -> (q [M, K], scale [M])`` (one absmax scale per row)."""
    return check_with_hints(
        student_fn,
        _vectorwise_quantize_reference,
        _quantize_cases,
        _QUANTIZE_MISTAKES,
        name="vectorwise_quantize",
        rtol=_SCALE_RTOL,
        atol=_SCALE_ATOL,
        prepare=_squeeze_scale,
    )


# =========================================================================== vectorwise_matmul
@named("vectorwise_matmul")
def _vectorwise_matmul_reference(x, w):
    return R.vectorwise_linear(x, w)


def _int8_product(qx: np.ndarray, qw: np.ndarray, accumulate: Any = np.int32) -> np.ndarray:
    """``qx @ qw.T`` with integer accumulation in ``accumulate`` (int8 wraps around: the overflow mistake)."""
    return (qx.astype(accumulate) @ qw.astype(accumulate).T).astype(np.float64)


def _vw(
    x,
    w,
    *,
    x_axis: int = 1,
    w_axis: int = 1,
    epilogue: str = "both",
    per_tensor: bool = False,
    levels: Callable[[int], int] = _qmax,
    accumulate: Any = np.int32,
    transposed: bool = False,
):
    """Vector-wise int8 product with one knob per classic mistake (defaults: the right answer)."""
    qx, sx = _rows(x, 8, axis=x_axis, per_tensor=per_tensor, levels=levels)
    qw, sw = _rows(w, 8, axis=w_axis, per_tensor=per_tensor, levels=levels)
    if x_axis != 1 or w_axis != 1:  # per-input-feature scales cannot be factored out: dequantize first
        xs = qx * (sx[None, :] if x_axis == 0 else sx[:, None])
        ws = qw * (sw[None, :] if w_axis == 0 else sw[:, None])
        return xs @ ws.T
    acc = _int8_product(qx, qw, accumulate)
    if transposed:
        if acc.shape[0] != acc.shape[1]:
            return None
        return acc * sw[:, None] * sx[None, :]
    if epilogue == "none":
        return acc
    if epilogue == "x":
        return acc * sx[:, None]
    if epilogue == "w":
        return acc * sw[None, :]
    return acc * sx[:, None] * sw[None, :]


_MATMUL_MISTAKES = [
    Mistake(
        lambda x, w: _vw(x, w, epilogue="none"),
        "you returned the raw integer accumulator: the epilogue multiplies it back to real units, "
        "y = acc * s_x[:, None] * s_w[None, :] (one scale per row of x, one per row of w).",
    ),
    Mistake(
        lambda x, w: _vw(x, w, epilogue="x"),
        "the epilogue needs both scales: y = acc * s_x[:, None] * s_w[None, :]; you applied only the scales "
        "of x (one per token).",
    ),
    Mistake(
        lambda x, w: _vw(x, w, epilogue="w"),
        "the epilogue needs both scales: y = acc * s_x[:, None] * s_w[None, :]; you applied only the scales "
        "of w (one per output channel).",
    ),
    Mistake(
        lambda x, w: _vw(x, w, accumulate=np.int8),
        "accumulate in int32, not int8: a sum of K products of up to 127 * 127 overflows int8 (and int16) and "
        "wraps around. Cast q_x and q_w to np.int32 before the matmul.",
    ),
    Mistake(
        lambda x, w: _vw(x, w, accumulate=np.int16),
        "accumulate in int32: a sum of K products of up to 127 * 127 = 16129 overflows int16 and wraps around. "
        "Cast q_x and q_w to np.int32 before the matmul.",
    ),
    Mistake(
        lambda x, w: _vw(x, w, per_tensor=True),
        "vector-wise means one scale per row of x (token) and one per row of w (output channel), not one per "
        "matrix: with per-tensor scales, the largest value of the whole matrix sets everyone's grid.",
    ),
    Mistake(
        lambda x, w: _vw(x, w, x_axis=0),
        "the scales of x go per ROW (token, reduce over axis=1), not per column: a scale per input feature k "
        "sits inside the sum over k and cannot be pulled out of the integer product.",
    ),
    Mistake(
        lambda x, w: _vw(x, w, w_axis=0),
        "the scales of w go per ROW (output channel, w is [N, K]: reduce over axis=1), not per input column: "
        "a scale per input feature k sits inside the sum over k and cannot be pulled out of the integer product.",
    ),
    Mistake(
        lambda x, w: _vw(x, w, x_axis=0, w_axis=0),
        "both sets of scales go per ROW (x: one per token, w: one per output channel; reduce over axis=1): "
        "per-column scales sit inside the sum over k and cannot be pulled out of the integer product.",
    ),
    Mistake(
        lambda x, w: _vw(x, w, transposed=True),
        "the epilogue is acc * s_x[:, None] * s_w[None, :]: rows of acc are tokens (scales of x), columns are "
        "output channels (scales of w). You swapped them.",
    ),
    Mistake(
        lambda x, w: _vw(x, w, levels=lambda b: 2 ** (b - 1)),
        "divide by qmax = 127, not 128: scale = max|row| / 127, so the largest value lands exactly on 127.",
    ),
]


def _matmul_cases(rng: np.random.Generator) -> list[Case]:
    def weight(n: int, k: int) -> np.ndarray:
        return _normal(rng, n, k, scale=1.0 / np.sqrt(k))

    outlier = _normal(rng, 6, 24)
    outlier[:, 5] = rng.choice([-1.0, 1.0], size=6) * rng.uniform(20.0, 60.0, size=6)
    zero_row = _normal(rng, 4, 16)
    zero_row[1] = 0.0
    return [
        Case("small: x [3, 8], w [5, 8]", (_normal(rng, 3, 8), weight(5, 8))),
        Case("tokens of very different size: one scale per token",
             (_normal(rng, 4, 16) * np.array([[0.01], [1.0], [50.0], [0.3]]), weight(6, 16))),
        Case("output channels of very different size: one scale per channel",
             (_normal(rng, 5, 16), weight(4, 16) * np.array([[0.02], [1.0], [8.0], [0.4]]))),
        Case("an outlier feature (column 5 of x, 20 to 60)", (outlier, weight(7, 24))),
        Case("long rows: K = 512 (an int8 or int16 accumulator overflows)",
             (np.abs(_normal(rng, 3, 512)) + 0.5, np.abs(weight(4, 512)) + 0.02)),
        Case("square: T = N = 6", (_normal(rng, 6, 10), weight(6, 10))),
        Case("one token: x [1, 32] (decoding)", (_normal(rng, 1, 32), weight(9, 32))),
        Case("an all-zero token row: scale 1, output 0", (zero_row, weight(3, 16))),
        Case("float32: input", (_normal(rng, 4, 20).astype(np.float32), weight(5, 20).astype(np.float32))),
        Case("random draw: x [7, 48], w [11, 48]", (_normal(rng, 7, 48, scale=3.0), weight(11, 48))),
    ]


@checker(reference=_vectorwise_matmul_reference)
def check_vectorwise_matmul(student_fn: Any) -> CheckResult:
    """Check ``vectorwise_matmul(x, w) -> y [T, N]`` (int8 per row of x and of w, int32 product, epilogue)."""
    return check_with_hints(
        student_fn,
        _vectorwise_matmul_reference,
        _matmul_cases,
        _MATMUL_MISTAKES,
        name="vectorwise_matmul",
        rtol=_RTOL,
        atol=_ATOL,
    )


# =========================================================================== llm_int8_matmul
@named("llm_int8_matmul")
def _llm_int8_matmul_reference(x, w, threshold=6.0):
    return R.llm_int8_linear(x, w, threshold=threshold)


def _decomposed(
    x,
    w,
    threshold=6.0,
    *,
    strict: bool = True,
    signed: bool = False,
    reduce: str = "any",
    float_part: bool = True,
    full_row_scales: bool = False,
    by_rows: bool = False,
):
    """LLM.int8's decomposition with one knob per classic mistake (defaults: the right answer)."""
    a, wf = np.asarray(x, dtype=np.float64), np.asarray(w, dtype=np.float64)
    v = a if signed else np.abs(a)
    big = v > threshold if strict else v >= threshold
    if by_rows:  # tokens with an outlier go through float, the other tokens through int8
        rows = big.any(axis=1)
        y = np.zeros((a.shape[0], wf.shape[0]))
        if rows.any():
            y[rows] = a[rows] @ wf.T
        if (~rows).any():
            y[~rows] = _vw(a[~rows], wf)
        return y
    cols = big.any(axis=0) if reduce == "any" else big.all(axis=0)
    reg = ~cols
    y = np.zeros((a.shape[0], wf.shape[0]))
    if reg.any():
        if full_row_scales:  # the row scales of x measured before the outlier columns are removed
            _, sx = _rows(a, 8)
            qx = np.clip(np.round(a[:, reg] / sx[:, None]), -127, 127)
            qw, sw = _rows(wf[:, reg], 8)
            y = _int8_product(qx, qw) * sx[:, None] * sw[None, :]
        else:
            y = _vw(a[:, reg], wf[:, reg])
    if float_part and cols.any():
        y = y + a[:, cols] @ wf[:, cols].T
    return y


_LLM_INT8_MISTAKES = [
    Mistake(
        lambda x, w, threshold=6.0: _decomposed(x, w, threshold, strict=False),
        "an outlier is STRICTLY larger than the threshold: |x| > threshold (np.abs(x) > threshold), not >=. "
        "A value exactly equal to the threshold stays in int8.",
    ),
    Mistake(
        lambda x, w, threshold=6.0: _decomposed(x, w, threshold, float_part=False),
        "you dropped the outlier columns: they must still be multiplied, in float, and added: "
        "y = x[:, O] @ w[:, O].T + vectorwise_matmul(x[:, ~O], w[:, ~O]).",
    ),
    Mistake(
        lambda x, w, threshold=6.0: None if threshold == 6.0 else _decomposed(x, w, 6.0),
        "use the threshold argument: the outlier columns are those with any |x| > threshold, and threshold is "
        "not always 6.0.",
    ),
    Mistake(
        lambda x, w, threshold=6.0: _decomposed(x, w, threshold, reduce="all"),
        "a column is an outlier column when ANY of its values exceeds the threshold (np.any over the tokens, "
        "axis=0), not only when all of them do.",
    ),
    Mistake(
        lambda x, w, threshold=6.0: _decomposed(x, w, float("inf")),
        "no column went through the float path: the columns holding any |x| > threshold must be taken out of "
        "the int8 product and multiplied in float.",
    ),
    Mistake(
        lambda x, w, threshold=6.0: _decomposed(x, w, threshold, full_row_scales=True),
        "compute the row scales of x AFTER removing the outlier columns: quantize x[:, ~O] on its own, so the "
        "outliers no longer inflate every token's scale (that is the whole point of the decomposition).",
    ),
    Mistake(
        lambda x, w, threshold=6.0: _decomposed(x, w, threshold, signed=True),
        "compare the MAGNITUDE with the threshold, np.abs(x) > threshold: a large negative value is an outlier "
        "too.",
    ),
    Mistake(
        lambda x, w, threshold=6.0: _decomposed(x, w, threshold, by_rows=True),
        "the decomposition splits the COLUMNS of x (input features, shared with the columns of w), not the "
        "rows (tokens): the outliers sit in a few feature dimensions across many tokens.",
    ),
]


def _llm_int8_cases(rng: np.random.Generator) -> list[Case]:
    def weight(n: int, k: int) -> np.ndarray:
        return _normal(rng, n, k, scale=1.0 / np.sqrt(k))

    def activation(t: int, k: int) -> np.ndarray:
        return np.clip(_normal(rng, t, k), -3.5, 3.5)  # regular features stay well below 6

    systematic = activation(8, 32)
    systematic[:, 4] = rng.choice([-1.0, 1.0], size=8) * rng.uniform(15.0, 60.0, size=8)  # every token
    systematic[:, 20] = rng.uniform(8.0, 30.0, size=8)  # every token, positive
    sporadic = activation(6, 16)
    sporadic[2, 9] = 7.5  # one value in one token
    negative = activation(5, 16)
    negative[:, 3] = -rng.uniform(10.0, 40.0, size=5)  # only negative outliers
    negative[1, 11] = 9.0
    ties = activation(6, 12)
    ties[0, 2], ties[3, 7] = 6.0, -6.0  # exactly at the threshold: NOT outliers
    ties[4, 10] = 12.0
    ties_2 = np.clip(_normal(rng, 4, 10, scale=0.5), -2.0, 2.0)
    ties_2[:, 6] = 2.5  # exactly at the threshold 2.5: NOT outliers
    ties_2[1, 1] = -2.5
    ties_2[2, 8] = 4.0  # the one outlier column
    one_token = activation(1, 24)
    one_token[0, [3, 17]] = [40.0, -9.0]
    zero_col = activation(5, 12)
    zero_col[:, 0] = 0.0
    zero_col[:, 8] = 25.0
    f32 = activation(5, 16)
    f32[:, 6] = rng.uniform(10.0, 20.0, size=5)
    return [
        Case("systematic outlier features: columns 4 and 20 in every token", (systematic, weight(6, 32))),
        Case("a sporadic outlier: one value 7.5 in one token", (sporadic, weight(5, 16))),
        Case("negative outliers: column 3 is below -10 in every token", (negative, weight(4, 16))),
        Case("values exactly +-6.0: not outliers (strictly larger only)", (ties, weight(5, 12))),
        Case("threshold 2.5, values exactly +-2.5 and one outlier column", (ties_2, weight(3, 10)),
             {"threshold": 2.5}),
        Case("threshold 1.0: many outlier columns", (activation(6, 20), weight(4, 20)), {"threshold": 1.0}),
        Case("threshold inf: no outlier, the vector-wise product", (systematic, weight(3, 32)),
             {"threshold": float("inf")}),
        Case("threshold 0: every non-zero column in float, the exact product", (zero_col, weight(4, 12)),
             {"threshold": 0.0}),
        Case("threshold 0 without a zero column: the int8 part is empty", (activation(3, 8), weight(2, 8)),
             {"threshold": 0.0}),
        Case("no outlier at all: everything in int8", (activation(4, 16), weight(5, 16))),
        Case("one token (decoding) with two outliers", (one_token, weight(7, 24))),
        Case("an all-zero column and an outlier column", (zero_col, weight(3, 12))),
        Case("float32: input", (f32.astype(np.float32), weight(4, 16).astype(np.float32))),
    ]


@checker(reference=_llm_int8_matmul_reference)
def check_llm_int8_matmul(student_fn: Any) -> CheckResult:
    """Check ``llm_int8_matmul(x, w, threshold=6.0) -> y [T, N]`` (outlier columns in float, the rest int8)."""
    return check_with_hints(
        student_fn,
        _llm_int8_matmul_reference,
        _llm_int8_cases,
        _LLM_INT8_MISTAKES,
        name="llm_int8_matmul",
        rtol=_RTOL,
        atol=_ATOL,
    )


def _cases_for_tests() -> dict[str, tuple[Callable, Callable[[np.random.Generator], list[Case]], list[Mistake]]]:
    """The reference, case generator and mistakes of each exercise (for the tests: ties, reachable hints)."""
    return {
        "vectorwise_quantize": (_vectorwise_quantize_reference, _quantize_cases, _QUANTIZE_MISTAKES),
        "vectorwise_matmul": (_vectorwise_matmul_reference, _matmul_cases, _MATMUL_MISTAKES),
        "llm_int8_matmul": (_llm_int8_matmul_reference, _llm_int8_cases, _LLM_INT8_MISTAKES),
    }
