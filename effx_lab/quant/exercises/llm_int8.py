"""Checkers for the exercises of notebook 02.3 (LLM.int8()).

Each ``check_<name>(student_fn)`` runs the student's function against the course's reference
(:mod:`effx_lab.quant.reference`) on fixed edge cases and seeded random draws, prints a plain-words verdict and
returns the :class:`effx_lab.check.CheckResult`. When a wrong answer equals a classic mistake (scales along the
wrong axis, a forgotten epilogue, an int8 accumulator that overflows, ``>=`` instead of ``>``, 2^31 for the
largest int32...) the verdict ends with a ``hint:`` line naming it. What the student writes (Dettmers et al.
2022, Sec. 3):

* ``max_safe_k(bits=8, acc_bits=32, restricted=True) -> int``: the largest inner dimension ``K`` for which a dot
  product of ``K`` pairs of signed ``bits``-bit codes cannot overflow a signed ``acc_bits``-bit accumulator,
  whatever the codes: codes in ``[-qmax, qmax]`` (restricted, ``qmax = 2^(b-1) - 1``) or ``[-2^(b-1), qmax]``,
  the products then bounded by ``qmax^2`` or ``2^(2b-2)`` above and ``-2^(b-1) qmax`` below, the accumulator
  holding ``[-2^(acc-1), 2^(acc-1) - 1]``. A prediction from counts (133144 for int8 and int32); the notebook
  then measures where worst-case int32 sums wrap around on the reader's device. Compared exactly, as an int.
* ``vectorwise_matmul(x, w) -> y``: LLM.int8's vector-wise int8 product of ``x [T, K]`` and ``w [N, K]``:
  8-bit ``q_x`` with one scale per row of ``x`` (token), ``q_w`` with one per row of ``w`` (output channel),
  the exact integer product ``acc = q_x q_w^T`` (int32 accumulation) and the epilogue ``acc * s_x[:, None] *
  s_w[None, :]``; ``y`` float ``[T, N]``. As :func:`effx_lab.quant.reference.vectorwise_linear`.
* ``llm_int8_matmul(x, w, threshold=6.0) -> y``: the mixed-precision decomposition: the columns ``j`` of ``x``
  with any ``|x[t, j]| > threshold`` (strictly) are multiplied in float, ``x[:, O] @ w[:, O].T``, the others
  go through ``vectorwise_matmul``, and the two are added. As :func:`effx_lab.quant.reference.llm_int8_linear`.

The matmul exercises get float64 arrays except one float32 case each, and are compared with ``rtol=1e-4`` and
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
    "check_max_safe_k",
    "check_vectorwise_matmul",
]

_RTOL = 1e-4  # the two matmul exercises (one case is float32)
_ATOL = 1e-5


def _qmax(bits: int) -> int:
    return 2 ** (bits - 1) - 1


def _normal(rng: np.random.Generator, *shape: int, scale: float = 1.0) -> np.ndarray:
    return rng.normal(0.0, scale, size=shape)


def _rows(
    x,
    bits=8,
    *,
    axis: int = 1,
    levels: Callable[[int], int] = _qmax,
    per_tensor: bool = False,
):
    """Absmax quantization with one knob per classic mistake (defaults: the right answer, one scale per row)."""
    a = np.asarray(x, dtype=np.float64)
    top = _qmax(bits)
    m = np.full(a.shape[0], np.abs(a).max()) if per_tensor else np.abs(a).max(axis=axis)
    scale = np.where(m != 0, m / levels(bits), 1.0)
    s = scale[:, None] if axis == 1 else scale[None, :]
    return np.clip(np.round(a / s), -top, top), scale


# =========================================================================== max_safe_k
def _code_range(bits: int, restricted: bool) -> tuple[int, int]:
    """The signed ``bits``-bit codes: ``[-qmax, qmax]`` (restricted) or ``[-2^(b-1), 2^(b-1) - 1]``."""
    top = _qmax(bits)
    return (-top if restricted else -top - 1), top


@named("max_safe_k")
def _max_safe_k_reference(bits=8, acc_bits=32, restricted=True):
    lo, hi = _code_range(bits, restricted)
    largest, most_negative = max(lo * lo, hi * hi), lo * hi  # the extreme products of two codes
    acc_max, acc_min = 2 ** (acc_bits - 1) - 1, -(2 ** (acc_bits - 1))
    # K products of `largest` must stay <= acc_max, K of `most_negative` >= acc_min
    return min(acc_max // largest, acc_min // most_negative)


def _safe_k(bits=8, acc_bits=32, restricted=True, *, product=None, acc_max=None, divide=None):
    """max_safe_k with one knob per classic mistake: the product bound, the accumulator bound, the division."""
    lo, hi = _code_range(bits, restricted)
    p = max(lo * lo, hi * hi) if product is None else product(bits, restricted)
    top = 2 ** (acc_bits - 1) - 1 if acc_max is None else acc_max(acc_bits)
    return top // p if divide is None else divide(top, p)


def _full_range_only(fn: Callable) -> Callable:
    """A mistake that shows only when ``restricted=False`` (where the code -2^(b-1) is allowed)."""

    def wrong(bits=8, acc_bits=32, restricted=True):
        return None if restricted else fn(bits, acc_bits, restricted)

    return wrong


def _safe_k_with(**knobs: Any) -> Callable:
    def wrong(bits=8, acc_bits=32, restricted=True):
        return _safe_k(bits, acc_bits, restricted, **knobs)

    return wrong


_SAFE_K_MISTAKES = [  # the order matters where two give the same number on a case: see _safe_k_cases
    Mistake(
        _safe_k_with(divide=lambda top, p: round(top / p)),
        "round DOWN (floor), not to the nearest integer: K * p must stay <= 2^(acc_bits-1) - 1.",
    ),
    Mistake(
        _safe_k_with(acc_max=lambda a: 2 ** (a - 1)),
        "the largest int32 is 2^31 - 1, not 2^31: K products of p fit when K * p <= 2^(acc_bits-1) - 1.",
    ),
    Mistake(
        _safe_k_with(acc_max=lambda a: 2**a - 1),
        "the accumulator is SIGNED (int32 holds -2^31 .. 2^31 - 1): products of signed codes can be negative, "
        "so only 2^(acc_bits-1) - 1 is available on the positive side, not 2^acc_bits - 1.",
    ),
    Mistake(
        _full_range_only(lambda bits, acc_bits, restricted: _safe_k(bits, acc_bits, True)),
        "with restricted=False the code -2^(b-1) (-128 for int8) is allowed, and (-128) * (-128) = 16384 "
        "is the largest product, larger than 127 * 127.",
    ),
    Mistake(
        _full_range_only(_safe_k_with(product=lambda b, r: 2 ** (b - 1) * _qmax(b))),
        "the largest product is (-128) * (-128) = 16384 (both codes at the bottom of the full range), "
        "not 128 * 127.",
    ),
    Mistake(
        lambda bits=8, acc_bits=32, restricted=True: (
            None if not restricted else _safe_k(bits, acc_bits, True, product=lambda b, r: 2 ** (2 * b - 2))
        ),
        "the restricted range stops at qmax = 2^(b-1) - 1 (127 for int8): the largest product is qmax^2 = "
        "16129, not 128^2.",
    ),
    Mistake(
        _safe_k_with(product=lambda b, r: max(abs(v) for v in _code_range(b, r))),
        "each term of the dot product is a product of TWO codes: bound it by the largest product, "
        "qmax * qmax (127 * 127 for int8), not by one code.",
    ),
    Mistake(
        _safe_k_with(product=lambda b, r: (2**b - 1) ** 2),
        "the codes are signed: int8 holds -127..127 (restricted), so the largest product is 127^2, not "
        "255^2 (that is uint8).",
    ),
    Mistake(
        _safe_k_with(divide=lambda top, p: top / p),
        "K is a whole number of terms: the largest integer K with K * p <= 2^(acc_bits-1) - 1, i.e. "
        "(2**(acc_bits - 1) - 1) // p, an int.",
    ),
    Mistake(
        _safe_k_with(divide=lambda top, p: -(-top // p)),
        "that is the first K that CAN overflow (ceil((2^31 - 1) / p), or one more than the answer): K * p "
        "already exceeds 2^31 - 1. Round DOWN: the largest K that cannot overflow is (2**(acc_bits - 1) - 1) // p.",
    ),
]


def _safe_k_cases(rng: np.random.Generator) -> list[Case]:
    cases = [
        Case("int8 codes, int32 accumulator", (8, 32)),
        # before the full-range int8 case, where 2^31 // 128^2 equals round((2^31 - 1) / 128^2)
        Case("2-bit codes {-1, 0, 1}: every product is at most 1", (2, 32)),
        Case("the defaults: int8 codes, int32 accumulator, restricted", ()),
        Case("int8, int32, full range: -128 is allowed", (8, 32), {"restricted": False}),
        Case("int4 codes, int16 accumulator", (4, 16)),
        Case("int4, int16, full range", (4, 16), {"restricted": False}),
        Case("int8 codes, int16 accumulator: only 2 terms fit", (8, 16)),
        Case("int8 codes, a 14-bit accumulator: not even one product fits", (8, 14)),
        Case("2-bit codes, full range {-2, -1, 0, 1}", (2, 32), {"restricted": False}),
        Case("int16 codes, int32 accumulator", (16, 32)),
        Case("int16 codes, int32, full range", (16, 32), {"restricted": False}),
        Case("int8 codes, int64 accumulator: a very long sum", (8, 64)),
        Case("int8, int64, full range", (8, 64), {"restricted": False}),
    ]
    for i in range(4):
        bits = int(rng.integers(2, 13))
        acc = int(rng.integers(2 * bits + 2, 65))
        restricted = bool(i % 2)
        cases.append(Case(f"random draw {i + 1}: {bits}-bit codes, {acc}-bit accumulator, "
                          f"restricted={restricted}", (bits, acc), {"restricted": restricted}))
    return cases


@checker(reference=_max_safe_k_reference)
def check_max_safe_k(student_fn: Any) -> CheckResult:
    """Check ``max_safe_k(bits=8, acc_bits=32, restricted=True) -> int`` (exact; a NumPy int is fine too)."""
    return check_with_hints(
        student_fn, _max_safe_k_reference, _safe_k_cases, _SAFE_K_MISTAKES,
        name="max_safe_k", rtol=0.0, atol=0.0, exact=True,
    )  # fmt: skip


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
        "max_safe_k": (_max_safe_k_reference, _safe_k_cases, _SAFE_K_MISTAKES),
        "vectorwise_matmul": (_vectorwise_matmul_reference, _matmul_cases, _MATMUL_MISTAKES),
        "llm_int8_matmul": (_llm_int8_matmul_reference, _llm_int8_cases, _LLM_INT8_MISTAKES),
    }
