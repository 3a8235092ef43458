"""Checkers for the exercises of notebook 02.4 (fine-grained quantization: Q-BERT, PEG, ZeroQuant).

Each ``check_<name>(student_fn)`` runs the student's function against the course's reference
(:mod:`effx_lab.quant.reference`) on fixed edge cases and seeded random draws, prints a plain-words verdict and
returns the :class:`effx_lab.check.CheckResult`. When a wrong answer equals a classic mistake the verdict ends
with a ``hint:`` line naming it. What the student writes:

* ``head_quantize(w, n_heads, bits) -> (q, scales)``: Q-BERT's group-wise quantization of an attention
  projection ``w [out, in]`` (Shen et al. 2020): the ``out`` rows are cut into ``n_heads`` blocks of
  ``out // n_heads`` *consecutive* rows (head ``h`` owns rows ``h * d .. (h + 1) * d - 1``, its slice of the
  query/key/value vector), one symmetric absmax scale per block on the restricted range:
  ``scales [n_heads] = max |w[block]| / (2^(b-1) - 1)`` (a block of zeros: scale 1) and
  ``q = clip(round(w / scale of the row's head), -qmax, qmax)``, integers ``[out, in]``. As
  ``compute_qparams(w.reshape(n_heads, -1), bits, True, "channel", axis=0)`` + ``quantize``.
* ``peg_order(calib, n_groups) -> perm``: PEG's range-based permutation (Bondarenko et al. 2021) from
  calibration activations ``calib [tokens, D]``: the range ``max - min`` of every dimension over the tokens,
  then the dimensions sorted by range, as integer indices ``[D]``; PEG's group ``g`` is
  ``perm[g * D / n_groups : (g + 1) * D / n_groups]``. Only the *groups* matter to the quantizer, so the
  checker compares the partition of the dimensions into groups: ascending or descending order, and any order
  inside a group, are all accepted. As :func:`effx_lab.quant.reference.peg_permutation` of the ranges.
* ``tokenwise_quantize(x, bits) -> (q, scales)``: ZeroQuant's token-wise activation quantization (Yao et
  al. 2022) of ``x [tokens, D]``: one symmetric absmax scale per row (token), ``scales [tokens] =
  max_j |x[t, j]| / (2^(b-1) - 1)`` (a row of zeros, e.g. padding: scale 1), ``q = clip(round(x /
  scales[:, None]), -qmax, qmax)``, integers ``[tokens, D]``. As :func:`effx_lab.quant.reference.absmax_quantize`
  along the last axis, and the Triton kernel :func:`effx_lab.quant.kernels.quantize_rows`.

**Rounding ties.** As in 02.1, no case holds a value of ``x / scale`` within ``1e-6`` (``1e-4`` for float32
input) of a half integer (``tests/ch02_quant/test_quant_exercises_fine_grained.py`` verifies it), so rounding half to even
and half away from zero give the same integers, and both are accepted. Integers are compared exactly (a float array of whole numbers
is accepted for ``q``), scales with ``rtol=1e-5``.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from effx_lab.check import (
    Case,
    CheckResult,
    Mistake,
    ReferenceRecorder,
    as_numpy,
    check_function,
    check_with_hints,
    checker,
    is_tensor,
    named,
    report,
)

from .. import reference as R

__all__ = [
    "check_head_quantize",
    "check_peg_order",
    "check_tokenwise_quantize",
]

_RTOL = 1e-5  # scales; integers are always compared exactly
_ATOL = 1e-12


def _qmax(bits: int) -> int:
    return 2 ** (bits - 1) - 1


def _check_with_hints(
    student_fn: Any, reference_fn: Callable, cases: Any, mistakes: list[Mistake], *, name: str
) -> CheckResult:
    """:func:`effx_lab.check.check_with_hints` with this module's tolerances (answers are tuples)."""
    return check_with_hints(student_fn, reference_fn, cases, mistakes, name=name, rtol=_RTOL, atol=_ATOL)


def _symmetric_blocks(blocks: np.ndarray, bits: int, *, peak: str = "absmax", levels: Callable[[int], int] = _qmax,
                      qmin: Callable[[int], int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric quantization of each row of ``blocks [n, m]`` with its own scale; one knob per mistake."""
    m = np.max(np.abs(blocks), axis=1) if peak == "absmax" else np.max(blocks, axis=1)
    scales = m / levels(bits)
    scales = np.where(scales != 0, scales, 1.0)
    top = _qmax(bits)
    bottom = -top if qmin is None else qmin(bits)
    return np.clip(np.round(blocks / scales[:, None]), bottom, top), scales


# =========================================================================== head_quantize (Q-BERT)
@named("head_quantize")
def _head_quantize_reference(w, n_heads, bits):
    blocks = w.reshape(n_heads, -1)  # head h = rows h*d .. (h+1)*d - 1, flattened: one "channel" per head
    qp = R.compute_qparams(blocks, bits, symmetric=True, granularity="channel", axis=0)
    return R.quantize(blocks, qp).reshape(w.shape), qp.scale.reshape(-1)


def _per_head(w, n_heads, bits, *, layout: str = "rows", expand: str = "repeat", **kwargs):
    """Per-head quantization with one knob per classic mistake (defaults: the right answer).

    ``layout="strided"``: head h gets rows h, h + n_heads, h + 2 n_heads, ...; ``layout="columns"``: head h gets
    a block of input columns (all rows); ``expand="tile"``: the right scales, but row r uses scale
    ``r % n_heads`` (np.tile instead of np.repeat).
    """
    a = np.asarray(w, dtype=np.float64)
    out, n_in = a.shape
    d = out // n_heads
    if layout == "rows":
        blocks = a.reshape(n_heads, -1)
    elif layout == "strided":
        blocks = a.reshape(d, n_heads, n_in).transpose(1, 0, 2).reshape(n_heads, -1)
    else:
        if n_in % n_heads:
            return None
        blocks = a.reshape(out, n_heads, n_in // n_heads).transpose(1, 0, 2).reshape(n_heads, -1)
    _, scales = _symmetric_blocks(blocks, bits, **kwargs)
    if layout == "rows":
        row_scale = np.repeat(scales, d) if expand == "repeat" else np.tile(scales, d)
        full = np.broadcast_to(row_scale[:, None], a.shape)
    elif layout == "strided":
        full = np.broadcast_to(np.tile(scales, d)[:, None], a.shape)
    else:
        full = np.broadcast_to(np.repeat(scales, n_in // n_heads)[None, :], a.shape)
    top = _qmax(bits)
    bottom = -top if kwargs.get("qmin") is None else kwargs["qmin"](bits)
    return np.clip(np.round(a / full), bottom, top), scales


def _per_row(w, n_heads, bits):
    q, scales = _symmetric_blocks(np.asarray(w, dtype=np.float64), bits)
    return q, scales


def _per_tensor_repeated(w, n_heads, bits):
    a = np.asarray(w, dtype=np.float64)
    q, scale = _symmetric_blocks(a.reshape(1, -1), bits)
    return q.reshape(a.shape), np.repeat(scale, n_heads)


_HEAD_MISTAKES = [
    Mistake(
        lambda w, n_heads, bits: _per_head(w, n_heads, bits, layout="columns"),
        "a head owns output ROWS of W (its slice of the query, key or value vector: rows h*d .. (h+1)*d - 1 with "
        "d = out // n_heads), not a block of input columns: w.reshape(n_heads, d, in), or simply "
        "w.reshape(n_heads, -1), and reduce everything but the first axis.",
    ),
    Mistake(
        lambda w, n_heads, bits: _per_head(w, n_heads, bits, layout="strided"),
        "a head's rows are CONSECUTIVE: head h owns rows h*d .. (h+1)*d - 1. w.reshape(d, n_heads, in) puts rows "
        "h, h + n_heads, h + 2 n_heads, ... together instead.",
    ),
    Mistake(
        lambda w, n_heads, bits: _per_head(w, n_heads, bits, expand="tile"),
        "the scales are right, but expand them to rows with np.repeat(scales, d) (each head's scale repeated for "
        "its d rows), not np.tile (which cycles through the heads row by row).",
    ),
    Mistake(
        _per_row,
        "that is per-channel quantization (one scale per row). Q-BERT's groups are coarser: one scale per head, "
        "shared by the head's d = out // n_heads rows; scales has shape [n_heads].",
    ),
    Mistake(
        _per_tensor_repeated,
        "every head got the same scale (max over the whole matrix): take the maximum over each head's block of "
        "rows separately.",
    ),
    Mistake(
        lambda w, n_heads, bits: _per_head(w, n_heads, bits, levels=lambda b: 2 ** (b - 1), qmin=lambda b: -(2 ** (b - 1))),
        "the symmetric range is restricted: qmax = 2^(b-1) - 1 (7 for 4 bits), scale = max|block| / qmax, "
        "q in [-qmax, qmax].",
    ),
    Mistake(
        lambda w, n_heads, bits: _per_head(w, n_heads, bits, levels=lambda b: 2 ** (b - 1)),
        "divide by qmax = 2^(b-1) - 1 (7 for 4 bits), not by 2^(b-1).",
    ),
    Mistake(
        lambda w, n_heads, bits: _per_head(w, n_heads, bits, peak="max"),
        "each head's range is its largest magnitude, max |w| over the block (np.abs first), not its max.",
    ),
]


def _head_cases(rng: np.random.Generator) -> list[Case]:
    def normal(*shape: int, scale: float = 0.1) -> np.ndarray:
        return rng.normal(0.0, scale, size=shape)

    def heads_of_different_ranges(n_heads: int, d: int, n_in: int) -> np.ndarray:
        spread = rng.uniform(0.3, 3.0, size=n_heads)  # heads differ in range, as in MiniLM (x2.5 between heads)
        return normal(n_heads, d, n_in) * spread[:, None, None]

    zero_head = normal(12, 8)
    zero_head[4:8] = 0.0  # head 1 of 3 (rows 4..7) is all zeros: scale 1 by convention
    outlier = normal(16, 12, scale=0.05)
    outlier[9, 3] = 1.2  # one large weight in head 2 of 4: only that head's scale grows
    neg_peak = normal(8, 6)
    neg_peak[1, 2] = -2.0  # head 0's largest magnitude is negative
    cases = [
        Case("MiniLM-like: 12 heads of 4 rows, [48, 24], 4 bits",
             (heads_of_different_ranges(12, 4, 24).reshape(48, 24), 12, 4)),
        Case("small: 4 heads of 2 rows, [8, 12], 8 bits", (normal(8, 12), 4, 8)),
        Case("3 bits: 3 heads of 5 rows, [15, 10]", (heads_of_different_ranges(3, 5, 10).reshape(15, 10), 3, 3)),
        Case("2 bits: the grid is {-1, 0, 1}", (normal(6, 9), 2, 2)),
        Case("one head: the whole matrix shares one scale (per tensor)", (normal(6, 5), 1, 4)),
        Case("one row per head: n_heads = out (per channel)", (normal(5, 7), 5, 4)),
        Case("outlier: one large weight in head 2", (outlier, 4, 4)),
        Case("negative peak: head 0's largest magnitude is negative", (neg_peak, 2, 4)),
        Case("a head of zeros: scale 1 by convention", (zero_head, 3, 8)),
        Case("rectangular: [12, 40] (in != out), 6 heads", (normal(12, 40), 6, 4)),
        Case("float32: input", (normal(12, 8).astype(np.float32), 3, 8)),
    ]
    for i in range(3):
        bits = int(rng.choice([3, 4, 5, 8]))
        n_heads = int(rng.choice([2, 3, 4, 6]))
        d = int(rng.integers(1, 5))
        n_in = int(rng.integers(3, 20))
        w = heads_of_different_ranges(n_heads, d, n_in).reshape(n_heads * d, n_in) * float(rng.uniform(0.1, 5.0))
        cases.append(Case(f"random draw {i + 1}: {bits} bits, {n_heads} heads of {d} rows, in = {n_in}",
                          (w, n_heads, bits)))
    return cases


@checker(reference=_head_quantize_reference)
def check_head_quantize(student_fn: Any) -> CheckResult:
    """Check ``head_quantize(w, n_heads, bits) -> (q [out, in], scales [n_heads])`` (Q-BERT's per-head groups)."""
    return _check_with_hints(student_fn, _head_quantize_reference, _head_cases, _HEAD_MISTAKES, name="head_quantize")


# =========================================================================== peg_order (PEG)
@named("peg_order")
def _peg_order_reference(calib, n_groups):
    ranges = calib.max(axis=0) - calib.min(axis=0)  # one range per embedding dimension, over the tokens
    return R.peg_permutation(ranges, n_groups)


def _sorted_by(key: Callable[[np.ndarray], np.ndarray]) -> Callable:
    def order(calib, n_groups):
        return np.argsort(key(np.asarray(calib, dtype=np.float64)), kind="stable")

    return order


_PEG_MISTAKES = [
    Mistake(
        _sorted_by(lambda c: c.max(axis=0)),
        "sort by the range max - min of each dimension (over the tokens, axis 0), not by its max: PEG's groups "
        "are affine (min/max) and a dimension with a large negative tail needs a wide range too.",
    ),
    Mistake(
        _sorted_by(lambda c: np.abs(c).max(axis=0)),
        "sort by the range max - min of each dimension, not by max |x|: PEG quantizes each group with an affine "
        "(min/max) grid, so what a dimension needs is the width of its interval, wherever it lies.",
    ),
    Mistake(
        _sorted_by(lambda c: c.std(axis=0)),
        "sort by the range max - min (what sets an affine scale), not by the standard deviation: a dimension "
        "with rare large values has a small std but a wide range.",
    ),
    Mistake(
        lambda calib, n_groups: np.arange(np.shape(calib)[1]),
        "sort the dimensions by their range (np.argsort of max - min over the tokens): the identity order gives "
        "PEG's contiguous groups, where the outlier dimensions spoil the scale of their neighbours.",
    ),
]


class _GroupCheck(ReferenceRecorder):
    """Reference wrapper + ``compare`` for :func:`check_function` that judge the *partition* into groups.

    ``perm`` is valid when it holds each of ``0..D-1`` once; two permutations are equivalent when they cut the
    dimensions into the same ``n_groups`` sets (ascending vs descending order, order inside a group: free).
    """

    def __init__(self, reference: Callable, mistakes: list[Mistake]):
        super().__init__(reference)
        self._mistakes = mistakes

    @staticmethod
    def _partition(perm: np.ndarray, n_groups: int) -> frozenset[frozenset[int]]:
        size = perm.size // n_groups
        return frozenset(frozenset(perm[g * size : (g + 1) * size].tolist()) for g in range(n_groups))

    @staticmethod
    def _as_perm(value: Any, d: int) -> tuple[np.ndarray | None, str | None]:
        if value is None:
            return None, "your function returned None — did you forget `return`?"
        if isinstance(value, (list, tuple, np.ndarray)) or is_tensor(value):
            arr = as_numpy(value)
        else:
            return None, f"you returned a {type(value).__name__}, expected an array of {d} integer indices"
        if arr.ndim != 1 or arr.shape[0] != d:
            return None, (f"you returned shape {tuple(arr.shape)}, expected ({d},): one index per embedding "
                          "dimension (reduce calib over the tokens, axis 0, before sorting)")
        if arr.dtype.kind == "f":
            if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
                return None, ("you returned floats that are not whole numbers: return the *indices* of the sorted "
                              "dimensions (np.argsort), not the sorted ranges (np.sort)")
            arr = arr.astype(np.int64)
        elif arr.dtype.kind not in "iu":
            return None, f"you returned an array of dtype {arr.dtype}, expected integer indices"
        if not np.array_equal(np.sort(arr), np.arange(d)):
            return None, f"not a permutation: each of the indices 0 .. {d - 1} must appear exactly once"
        return arr.astype(np.int64), None

    def compare(self, got: Any, expected: Any) -> str | None:
        case = self.arguments(expected)
        assert case is not None  # check_function calls the reference just before
        args, kwargs = case
        calib, n_groups = args[0], args[1]
        d = np.shape(calib)[1]
        perm, problem = self._as_perm(got, d)
        if problem is not None:
            return problem
        want = self._partition(np.asarray(expected), n_groups)
        have = self._partition(perm, n_groups)
        if have == want:
            return None
        size = d // n_groups
        groups = [perm[g * size : (g + 1) * size] for g in range(n_groups)]
        wrong = next(g for g in range(n_groups) if frozenset(groups[g].tolist()) not in want)
        shown = ", ".join(str(j) for j in np.sort(groups[wrong])[:8].tolist()) + (", ..." if size > 8 else "")
        message = (f"your group {wrong} (perm[{wrong * size}:{(wrong + 1) * size}], dimensions {{{shown}}}) is not "
                   f"one of PEG's groups: the dimensions sorted by range, cut into {n_groups} blocks of {size}")
        for mistake in self._mistakes:
            try:
                with np.errstate(all="ignore"):
                    wrong_perm = mistake.wrong(*args, **kwargs)
            except Exception:  # noqa: BLE001, S112 (a mistake that cannot run on this case gives no hint)
                continue
            if wrong_perm is None:
                continue
            wrong_part = self._partition(np.asarray(wrong_perm), n_groups)
            if wrong_part != want and wrong_part == have:
                return f"{message}\n   hint: {mistake.hint}"
        return message


def _peg_cases(rng: np.random.Generator) -> list[Case]:
    def activations(tokens: int, d: int, n_outliers: int = 2, *, shift: bool = True) -> np.ndarray:
        """Token activations: dimension j ~ N(mu_j, sigma_j); a few outlier dimensions with large values;
        some dimensions shifted (mostly positive or mostly negative), so max, max|x| and max - min disagree."""
        sigma = rng.uniform(0.2, 1.5, size=d)
        mu = rng.uniform(-2.0, 2.0, size=d) if shift else np.zeros(d)
        x = rng.normal(mu, sigma, size=(tokens, d))
        for j in rng.choice(d, size=n_outliers, replace=False):
            sign = rng.choice([-1.0, 1.0])
            x[rng.choice(tokens, size=max(1, tokens // 4), replace=False), j] += sign * rng.uniform(15.0, 60.0)
        return x

    def gelu_like(tokens: int, d: int) -> np.ndarray:
        """A GELU output: min about -0.17 in every dimension, very different maxima."""
        x = rng.normal(0.0, rng.uniform(0.5, 4.0, size=d), size=(tokens, d))
        return np.maximum(x, -0.17) + 0.01 * rng.normal(size=(tokens, d))

    def rare_spikes(tokens: int, d: int) -> np.ndarray:
        """Half the dimensions spike once (a wide range, a small std), the other half are broad."""
        x = rng.normal(0.0, 1.0, size=(tokens, d)) * np.where(np.arange(d) % 2 == 0, 0.3, 1.2)
        for j in range(0, d, 2):
            x[rng.integers(tokens), j] = rng.uniform(6.0, 12.0)
        return x

    cases = [
        Case("small: 16 tokens, D = 8, 2 groups", (activations(16, 8), 2)),
        Case("MiniLM-like: 40 tokens, D = 24, 6 groups, 2 outlier dimensions", (activations(40, 24), 6)),
        Case("outlier dimensions with negative values: 30 tokens, D = 12, 3 groups",
             (activations(30, 12, n_outliers=3), 3)),
        Case("a GELU output: max differs, min is about -0.17 everywhere, D = 16, 4 groups", (gelu_like(25, 16), 4)),
        Case("rare spikes: a wide range but a small std, D = 12, 3 groups", (rare_spikes(50, 12), 3)),
        Case("one group: every dimension in it", (activations(10, 6), 1)),
        Case("groups of one dimension: n_groups = D", (activations(12, 5), 5)),
        Case("centred data: D = 20, 4 groups", (activations(20, 20, shift=False), 4)),
        Case("two tokens: the range is |difference| of the two", (activations(2, 8), 4)),
        Case("float32: input", (activations(20, 12).astype(np.float32), 4)),
    ]
    for i in range(3):
        n_groups = int(rng.choice([2, 3, 4]))
        d = n_groups * int(rng.integers(2, 6))
        tokens = int(rng.integers(5, 40))
        cases.append(Case(f"random draw {i + 1}: {tokens} tokens, D = {d}, {n_groups} groups",
                          (activations(tokens, d, n_outliers=int(rng.integers(0, 3))), n_groups)))
    return cases


@checker(reference=_peg_order_reference)
def check_peg_order(student_fn: Any) -> CheckResult:
    """Check ``peg_order(calib, n_groups) -> perm [D]`` (PEG's range-based permutation; judged by its groups)."""
    diag = _GroupCheck(_peg_order_reference, _PEG_MISTAKES)
    result = check_function(student_fn, diag.reference, _peg_cases, name="peg_order", compare=diag.compare)
    return report(result)


# =========================================================================== tokenwise_quantize (ZeroQuant)
@named("tokenwise_quantize")
def _tokenwise_quantize_reference(x, bits):
    q, scale = R.absmax_quantize(x, axis=-1, bits=bits)  # reduce along the features: one scale per token
    return q, scale.reshape(-1)


def _tokenwise(x, bits, *, axis: int = 1, keepdims: bool = False, **kwargs):
    """Token-wise quantization with one knob per classic mistake (defaults: the right answer)."""
    a = np.asarray(x, dtype=np.float64)
    blocks = a if axis == 1 else a.T
    q, scales = _symmetric_blocks(blocks, bits, **kwargs)
    q = q if axis == 1 else q.T
    return q, scales[:, None] if keepdims else scales


def _per_tensor_tokens(x, bits):
    a = np.asarray(x, dtype=np.float64)
    q, scale = _symmetric_blocks(a.reshape(1, -1), bits)
    return q.reshape(a.shape), np.repeat(scale, a.shape[0])


_TOKEN_MISTAKES = [
    Mistake(
        lambda x, bits: _tokenwise(x, bits, axis=0),
        "one scale per TOKEN (row of x): reduce over the features, np.abs(x).max(axis=1). Reducing over axis 0 "
        "gives one scale per feature column, which a matmul over the features cannot factor out.",
    ),
    Mistake(
        lambda x, bits: _tokenwise(x, bits, keepdims=True),
        "the integers are right; return scales as a 1-D array of shape [tokens] (one per row), e.g. "
        "scales.reshape(-1), not [tokens, 1].",
    ),
    Mistake(
        _per_tensor_tokens,
        "every token got the same scale (the max over the whole tensor): that is per-tensor quantization. Take the "
        "maximum of each row separately (axis=1).",
    ),
    Mistake(
        lambda x, bits: _tokenwise(x, bits, levels=lambda b: 2 ** (b - 1), qmin=lambda b: -(2 ** (b - 1))),
        "the symmetric range is restricted: qmax = 2^(b-1) - 1 (127 for 8 bits), scale = max|row| / qmax, q in "
        "[-qmax, qmax].",
    ),
    Mistake(
        lambda x, bits: _tokenwise(x, bits, levels=lambda b: 2 ** (b - 1)),
        "divide by qmax = 2^(b-1) - 1 (127 for 8 bits), not by 2^(b-1).",
    ),
    Mistake(
        lambda x, bits: _tokenwise(x, bits, peak="max"),
        "each token's range is its largest magnitude, max |x| over the row (np.abs first), not its max.",
    ),
]


def _token_cases(rng: np.random.Generator) -> list[Case]:
    def normal(*shape: int, scale: float = 1.0) -> np.ndarray:
        return rng.normal(0.0, scale, size=shape)

    varied = normal(6, 10) * rng.uniform(0.05, 20.0, size=(6, 1))  # tokens of very different magnitudes
    padded = normal(5, 8)
    padded[3] = 0.0  # a padding token: a row of zeros gets scale 1 by convention
    column_outlier = normal(12, 8, scale=0.5)
    column_outlier[:, 5] += 30.0  # an outlier feature present in every token (LLM.int8's columns)
    neg_peak = normal(4, 7)
    neg_peak[2, 1] = -9.0
    cases = [
        Case("small: 4 tokens, 6 features, 8 bits", (normal(4, 6), 8)),
        Case("tokens of very different magnitudes: [6, 10], 8 bits", (varied, 8)),
        Case("4 bits: [5, 12]", (normal(5, 12), 4)),
        Case("2 bits: the grid is {-1, 0, 1}", (normal(3, 9), 2)),
        Case("square: [8, 8] (tokens = features)", (normal(8, 8), 4)),
        Case("an outlier feature in every token: [12, 8]", (column_outlier, 8)),
        Case("negative peak: a token whose largest magnitude is negative", (neg_peak, 6)),
        Case("a padding token: a row of zeros gets scale 1", (padded, 8)),
        Case("one token: [1, 16]", (normal(1, 16), 8)),
        Case("one feature: [7, 1]", (normal(7, 1), 8)),
        Case("float32: input", (normal(6, 10, scale=3.0).astype(np.float32), 8)),
    ]
    for i in range(3):
        bits = int(rng.choice([3, 4, 6, 8]))
        shape = (int(rng.integers(2, 12)), int(rng.integers(2, 20)))
        cases.append(Case(f"random draw {i + 1}: {bits} bits, shape {shape}",
                          (normal(*shape, scale=float(rng.uniform(0.01, 10.0))), bits)))
    return cases


@checker(reference=_tokenwise_quantize_reference)
def check_tokenwise_quantize(student_fn: Any) -> CheckResult:
    """Check ``tokenwise_quantize(x, bits) -> (q [tokens, D], scales [tokens])`` (ZeroQuant's activations)."""
    return _check_with_hints(
        student_fn, _tokenwise_quantize_reference, _token_cases, _TOKEN_MISTAKES, name="tokenwise_quantize"
    )


def _cases_for_tests() -> dict[str, tuple[Callable, Callable[[np.random.Generator], list[Case]], list[Mistake]]]:
    """The reference, case generator and mistakes of each exercise (for the tests: ties, hints reachable)."""
    return {
        "head_quantize": (_head_quantize_reference, _head_cases, _HEAD_MISTAKES),
        "peg_order": (_peg_order_reference, _peg_cases, _PEG_MISTAKES),
        "tokenwise_quantize": (_tokenwise_quantize_reference, _token_cases, _TOKEN_MISTAKES),
    }
