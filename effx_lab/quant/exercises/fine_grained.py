"""Checkers for the exercises of notebook 02.4 (fine-grained quantization: Q-BERT, PEG, ZeroQuant).

Each ``check_<name>(student_fn)`` runs the student's function against the course's reference on fixed edge
cases and seeded random draws, prints a plain-words verdict and returns the
:class:`effx_lab.check.CheckResult`. When a wrong answer equals a classic mistake the verdict ends with a
``hint:`` line naming it. What the student writes:

* ``group_error_ratio(x, n_groups) -> float``: a prediction, from the ranges alone, of how much one scale per
  group of rows lowers the quantization error of ``x [rows, cols]`` against one scale for the whole tensor.
  The rows are cut into ``n_groups`` blocks of ``rows // n_groups`` *consecutive* rows (Q-BERT's heads of an
  attention projection, Shen et al. 2020; with ``n_groups = rows``, ZeroQuant's one scale per token, Yao et
  al. 2022). Under the uniform-noise model (rounding error spread evenly over ``[-s/2, s/2]``, so a mean
  square of ``s^2 / 12`` for a step ``s`` set by the group's ``m_g = max |x|``), the ratio of the relative
  Frobenius errors is ``sqrt(mean_g m_g^2) / max_g m_g``, whatever the bit width. The notebook then measures
  the real ratio at 8 and 4 bits. Compared with ``rtol=1e-5`` (one case is float32).
* ``peg_order(calib, n_groups) -> perm``: PEG's range-based permutation (Bondarenko et al. 2021) from
  calibration activations ``calib [tokens, D]``: the range ``max - min`` of every dimension over the tokens,
  then the dimensions sorted by range, as integer indices ``[D]``; PEG's group ``g`` is
  ``perm[g * D / n_groups : (g + 1) * D / n_groups]``. Only the *groups* matter to the quantizer, so the
  checker compares the partition of the dimensions into groups: ascending or descending order, and any order
  inside a group, are all accepted. As :func:`effx_lab.quant.reference.peg_permutation` of the ranges.
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
    "check_group_error_ratio",
    "check_peg_order",
]


# =========================================================================== group_error_ratio (Q-BERT, ZeroQuant)
def _group_peaks(x: Any, n_groups: int, *, layout: str = "blocks", peak: str = "absmax") -> np.ndarray:
    """``max |x|`` of each group of rows: consecutive blocks (right), or every ``n_groups``-th row
    (``layout="strided"``), or each row alone (``"rows"``); ``peak="max"`` forgets the absolute value."""
    a = np.asarray(x, dtype=np.float64)
    if layout == "blocks":
        groups = a.reshape(n_groups, -1)
    elif layout == "strided":
        groups = a.reshape(a.shape[0] // n_groups, n_groups, -1).transpose(1, 0, 2).reshape(n_groups, -1)
    else:
        groups = a
    return np.abs(groups).max(axis=1) if peak == "absmax" else groups.max(axis=1)


@named("group_error_ratio")
def _group_error_ratio_reference(x, n_groups):
    m = _group_peaks(x, n_groups)  # each group's step is proportional to its max |x|
    return float(np.sqrt(np.mean(m**2)) / np.max(m))


def _ratio_of(peaks: Callable[..., np.ndarray], combine: str = "rms") -> Callable:
    def wrong(x, n_groups):
        m = peaks(x, n_groups)
        top = np.max(np.abs(np.asarray(x, dtype=np.float64)))
        if combine == "mean":
            return float(np.mean(m) / top)
        if combine == "squared":
            return float(np.mean(m**2) / top**2)
        if combine == "inverted":
            return float(top / np.sqrt(np.mean(m**2)))
        return float(np.sqrt(np.mean(m**2)) / np.max(m))

    return wrong


_RATIO_MISTAKES = [
    Mistake(
        _ratio_of(_group_peaks, "mean"),
        "average the squares: each group's mean-square error is s_g^2 / 12, so the ratio of the errors is "
        "sqrt(mean_g m_g^2) / max_g m_g (a root mean square of the group maxima), not mean_g m_g / max.",
    ),
    Mistake(
        _ratio_of(_group_peaks, "squared"),
        "that is the ratio of the mean SQUARED errors; take its square root to compare the (relative "
        "Frobenius) errors themselves: sqrt(mean_g m_g^2) / max_g m_g.",
    ),
    Mistake(
        _ratio_of(_group_peaks, "inverted"),
        "per group over per tensor: the finer scales give the smaller error, so the ratio is at most 1 "
        "(sqrt(mean_g m_g^2) / max_g m_g), not its inverse.",
    ),
    Mistake(
        _ratio_of(lambda x, n: _group_peaks(x, n, layout="strided")),
        "a group is a block of CONSECUTIVE rows (head h owns rows h*d .. (h+1)*d - 1): x.reshape(n_groups, -1), "
        "not every n_groups-th row.",
    ),
    Mistake(
        lambda x, n_groups: None if n_groups == np.shape(x)[0] else _ratio_of(
            lambda a, n: _group_peaks(a, n, layout="rows"))(x, n_groups),
        "one maximum per GROUP of rows (x.reshape(n_groups, -1)), not per row: per row is per channel, a finer "
        "granularity than the heads.",
    ),
    Mistake(
        _ratio_of(lambda x, n: _group_peaks(x, n, peak="max")),
        "a symmetric scale is set by the largest MAGNITUDE, max |x| of the group (np.abs first): a group whose "
        "extreme value is negative needs it too.",
    ),
    Mistake(
        lambda x, n_groups: float(np.sqrt(np.mean(np.asarray(x, dtype=np.float64) ** 2))
                                  / np.abs(np.asarray(x, dtype=np.float64)).max()),
        "the error follows the STEP of each group's grid, set by the group's max |x|: use the group maxima, "
        "sqrt(mean_g m_g^2) / max_g m_g, not the values of x themselves.",
    ),
]


def _ratio_cases(rng: np.random.Generator) -> list[Case]:
    def heads(n_heads: int, rows: int, cols: int, spread: float = 2.5) -> np.ndarray:
        """A projection whose heads have different scales (the largest about ``spread`` x the smallest)."""
        scales = np.repeat(rng.uniform(1.0, spread, size=n_heads), rows // n_heads)[:, None]
        return rng.normal(0.0, 0.05, size=(rows, cols)) * scales

    negative = heads(4, 16, 8)
    negative[5, 3] = -2.0  # head 1's extreme value is negative (and the tensor's too)
    tokens = rng.normal(0.0, 1.0, size=(20, 12)) * rng.uniform(0.1, 3.0, size=(20, 1))
    tokens[:, 4] *= 30.0  # an outlier feature large in every token
    square = rng.normal(0.0, 1.0, size=(6, 6)) * np.array([[0.1], [0.1], [0.1], [5.0], [5.0], [5.0]])
    outlier = heads(8, 32, 16, spread=1.0)
    outlier[13, 2] = 3.0  # one weight 60 standard deviations out, in head 3
    cases = [
        Case("MiniLM-like: a [384, 384] projection, 12 heads of 32 rows", (heads(12, 384, 384), 12)),
        Case("4 heads of 4 rows", (heads(4, 16, 8), 4)),
        Case("one group: the whole tensor, ratio 1", (heads(3, 9, 5), 1)),
        Case("one group per row: per channel / per token", (heads(5, 10, 7), 10)),
        Case("tokens of very different size, one outlier feature: per token", (tokens, 20)),
        Case("a negative extreme: max |x| of a head is negative", (negative, 4)),
        Case("2 heads of 3 rows, very different scales", (square, 2)),
        Case("equal heads: all groups have the same max, ratio 1", (np.tile(heads(1, 4, 6), (3, 1)), 3)),
        Case("one outlier weight: only its head's step grows", (outlier, 8)),
        Case("float32: input", (heads(6, 24, 10).astype(np.float32), 6)),
    ]
    for i in range(3):
        n_groups = int(rng.choice([2, 3, 4, 6, 12]))
        rows = n_groups * int(rng.integers(1, 6))
        cols = int(rng.integers(1, 30))
        cases.append(Case(f"random draw {i + 1}: [{rows}, {cols}] in {n_groups} groups",
                          (heads(n_groups, rows, cols, spread=float(rng.uniform(1.2, 10.0))), n_groups)))
    return cases


@checker(reference=_group_error_ratio_reference)
def check_group_error_ratio(student_fn: Any) -> CheckResult:
    """Check ``group_error_ratio(x, n_groups) -> float``: ``sqrt(mean_g m_g^2) / max_g m_g`` (rtol 1e-5)."""
    return check_with_hints(
        student_fn, _group_error_ratio_reference, _ratio_cases, _RATIO_MISTAKES,
        name="group_error_ratio", rtol=1e-5, atol=0.0,
    )  # fmt: skip


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


def _cases_for_tests() -> dict[str, tuple[Callable, Callable[[np.random.Generator], list[Case]], list[Mistake]]]:
    """The reference, case generator and mistakes of each exercise (for the tests: hints reachable)."""
    return {
        "group_error_ratio": (_group_error_ratio_reference, _ratio_cases, _RATIO_MISTAKES),
        "peg_order": (_peg_order_reference, _peg_cases, _PEG_MISTAKES),
    }
