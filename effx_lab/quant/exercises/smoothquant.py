"""Checkers for the exercises of notebook 02.6 (SmoothQuant).

Each ``check_<name>(student_fn)`` runs the student's function against the course's NumPy reference
(:mod:`effx_lab.quant.reference`) on fixed edge cases and seeded random draws, prints a plain-words verdict and
returns the :class:`effx_lab.check.CheckResult`. When a wrong answer equals a classic mistake (the weight's
maximum taken over the wrong axis, the two exponents swapped, the factor folded the wrong way round...) the
verdict ends with a ``hint:`` line naming it. What the student writes:

* ``smooth_scales(act_absmax, w, alpha=0.5) -> s``: SmoothQuant's per-input-channel smoothing factors
  (Xiao et al. 2023, Eq. 4), ``s_j = max|X_j|^alpha / max|W_j|^(1 - alpha)``, where ``act_absmax [in]`` holds
  ``max|X_j|`` from calibration and ``max|W_j|`` is the largest magnitude of column ``j`` of ``w [out, in]``
  (over the output rows); both maxima clamped to ``>= 1e-5`` first. As
  :func:`effx_lab.quant.reference.smooth_scales`.
* ``fold_smoothing(ln_weight, ln_bias, s) -> (ln_weight / s, ln_bias / s)``: fold the division by ``s`` into
  the LayerNorm that produces ``X``; ``ln_bias=None`` gives ``(ln_weight / s, None)``. As
  :func:`effx_lab.quant.reference.fold_smoothing`.

* ``choose_alpha(act_absmax, w) -> alpha``: a CHOICE, not a formula. From a layer's
  calibration maxima ``max|X_j|`` and its weight ``w [out, in]``, pick SmoothQuant's
  migration strength for W8A8 with one activation scale per tensor and one weight scale
  per output channel. There is no reference answer to match: the checker *measures*
  each of MiniLM's twelve LayerNorm-fed layers (query, key and value stacked, as they
  share one ``s``; and FC1, in each of the six blocks) at the student's ``alpha`` on
  held-out tokens (:func:`effx_lab.quant.smoothquant.alpha_curves`) and accepts it
  when that layer's relative output error is within ``NEAR_BEST`` (25 %) of its
  smallest error over ``alpha = 0, 0.1, ..., 1``.

Inputs are float64 arrays except one float32 case per exercise; answers are compared with ``rtol=1e-5``
(NumPy or torch answers, any float dtype).
"""
from __future__ import annotations

import hashlib
import numbers
from collections.abc import Callable
from typing import Any

import numpy as np

from effx_lab.check import (
    Case,
    CheckResult,
    Diagnosis,
    Mistake,
    as_numpy,
    check_function,
    check_with_hints,
    checker,
    is_tensor,
    named,
    report,
)

from .. import reference as R
from ..smoothquant import NEAR_BEST, AlphaCurve, alpha_curves

__all__ = [
    "check_choose_alpha",
    "check_fold_smoothing",
    "check_smooth_scales",
]

_RTOL = 1e-5
_ATOL = 1e-12
_EPS = 1e-5  # SmoothQuant clamps both maxima to >= 1e-5 (reference.smooth_scales)


def _check_with_hints(
    student_fn: Any, reference_fn: Callable, cases: Any, mistakes: list[Mistake], *, name: str
) -> CheckResult:
    """:func:`effx_lab.check.check_with_hints` with this module's tolerances.

    Its diagnosis compares tuples such as ``(weight, None)`` element by element, ``None``
    only equal to ``None``.
    """
    return check_with_hints(
        student_fn, reference_fn, cases, mistakes, name=name, rtol=_RTOL, atol=_ATOL
    )


# =========================================================================== smooth_scales
@named("smooth_scales")
def _smooth_scales_reference(act_absmax, w, alpha=0.5):
    return R.smooth_scales(act_absmax, w, alpha)


def _scales(
    act_absmax,
    w,
    alpha=0.5,
    *,
    w_axis: int = 0,
    absolute: bool = True,
    clamp: bool = True,
    form: str = "right",
):
    """``s`` with one knob per classic mistake (defaults: the right answer).

    ``w_axis=1``: the max over the input features of each output row (shape ``[out]``); ``absolute=False``:
    ``w.max`` instead of ``|w|.max``; ``clamp=False``: no ``1e-5`` floor; ``form``: ``"swapped"`` (the
    exponents exchanged), ``"inverse"`` (``1 / s``), ``"product"`` (``a^alpha * w^(1 - alpha)``).
    """
    a = np.asarray(act_absmax, dtype=np.float64)
    wm = np.abs(np.asarray(w, dtype=np.float64)) if absolute else np.asarray(w, dtype=np.float64)
    wm = wm.max(axis=w_axis)
    if clamp:
        a, wm = np.maximum(a, _EPS), np.maximum(wm, _EPS)
    if form == "swapped":
        return a ** (1.0 - alpha) / wm**alpha
    if form == "inverse":
        return wm ** (1.0 - alpha) / a**alpha
    if form == "product":
        return a**alpha * wm ** (1.0 - alpha)
    return a**alpha / wm ** (1.0 - alpha)


_SCALES_MISTAKES = [
    Mistake(
        lambda a, w, alpha=0.5: _scales(a, w, alpha, w_axis=1),
        "max|W_j| belongs to input feature j: it is the largest magnitude in COLUMN j of w [out, in], "
        "np.abs(w).max(axis=0), one value per input feature. axis=1 gives one value per output row.",
    ),
    Mistake(
        lambda a, w, alpha=0.5: None if alpha == 0.5 else _scales(a, w, alpha, form="swapped"),
        "the exponents are swapped: s_j = max|X_j|^alpha / max|W_j|^(1 - alpha). alpha is the migration "
        "strength: alpha = 1 divides the activations by their own max (all difficulty moves to the weights).",
    ),
    Mistake(
        lambda a, w, alpha=0.5: _scales(a, w, alpha, form="inverse"),
        "that is 1 / s: s_j = max|X_j|^alpha / max|W_j|^(1 - alpha) has the ACTIVATION max in the numerator, "
        "so that dividing X by s shrinks its outlier channels.",
    ),
    Mistake(
        lambda a, w, alpha=0.5: _scales(a, w, alpha, form="product"),
        "s is a ratio, not a product: s_j = max|X_j|^alpha / max|W_j|^(1 - alpha).",
    ),
    Mistake(
        lambda a, w, alpha=0.5: _scales(a, w, alpha, absolute=False),
        "take the largest MAGNITUDE of each weight column, np.abs(w).max(axis=0), not w.max(axis=0): a large "
        "negative weight counts too.",
    ),
    Mistake(
        lambda a, w, alpha=0.5: _scales(a, w, alpha, clamp=False),
        "clamp both maxima to at least 1e-5 before the powers (np.maximum(m, 1e-5)): an activation channel "
        "that is always 0 would give s_j = 0 (and X / s a division by zero), a zero weight column s_j = inf.",
    ),
]


def _scales_cases(rng: np.random.Generator) -> list[Case]:
    def acts(n: int, outliers: int = 1, big: float = 60.0) -> np.ndarray:
        a = rng.uniform(0.3, 3.0, size=n)  # max |X_j| of ordinary channels
        a[rng.choice(n, size=outliers, replace=False)] = big * rng.uniform(0.8, 1.2, size=outliers)
        return a

    def weight(out: int, n_in: int, scale: float = 0.05) -> np.ndarray:
        return rng.normal(0.0, scale, size=(out, n_in))

    neg = weight(6, 5)
    neg[2, 3] = -1.5  # column 3's largest magnitude is negative
    zero_act = acts(8)
    zero_act[5] = 0.0  # a channel that is always 0 in calibration
    zero_col = weight(4, 6)
    zero_col[:, 1] = 0.0  # an input feature no output uses
    cases = [
        Case("default alpha = 0.5: w [8, 8], one outlier channel", (acts(8), weight(8, 8))),
        Case("alpha = 0.5: w [5, 8] (out != in)", (acts(8), weight(5, 8)), {"alpha": 0.5}),
        Case("alpha = 0.75: the setting the paper uses for some models", (acts(12), weight(7, 12)), {"alpha": 0.75}),
        Case("alpha = 0.25: most of the difficulty stays on the activations", (acts(10, 2), weight(6, 10)),
             {"alpha": 0.25}),
        Case("alpha = 1: s = max|X_j| (weights ignored)", (acts(6), weight(3, 6)), {"alpha": 1.0}),
        Case("alpha = 0: s = 1 / max|W_j| (activations ignored)", (acts(6), weight(4, 6)), {"alpha": 0.0}),
        Case("square weight [6, 6], alpha = 0.6", (acts(6), weight(6, 6)), {"alpha": 0.6}),
        Case("negative peak: a column's largest magnitude is a negative weight", (acts(5), neg), {"alpha": 0.5}),
        Case("zero activation channel: max|X_j| = 0 is clamped to 1e-5", (zero_act, weight(3, 8)), {"alpha": 0.5}),
        Case("zero weight column: max|W_j| = 0 is clamped to 1e-5", (acts(6), zero_col), {"alpha": 0.4}),
        Case("one input feature: w [5, 1]", (np.array([7.0]), weight(5, 1)), {"alpha": 0.3}),
        Case("float32: inputs", (acts(16).astype(np.float32), weight(8, 16).astype(np.float32)), {"alpha": 0.5}),
    ]
    for i in range(3):
        n_in, out = int(rng.integers(3, 40)), int(rng.integers(2, 30))
        alpha = float(rng.choice([0.2, 0.35, 0.5, 0.65, 0.8, 0.9]))
        cases.append(
            Case(
                f"random draw {i + 1}: w [{out}, {n_in}], alpha = {alpha}",
                (acts(n_in, int(rng.integers(1, 3)), float(rng.uniform(10, 200))),
                 weight(out, n_in, float(rng.uniform(0.01, 0.5)))),
                {"alpha": alpha},
            )
        )
    return cases


@checker(reference=_smooth_scales_reference)
def check_smooth_scales(student_fn: Any) -> CheckResult:
    """Check ``smooth_scales(act_absmax, w, alpha=0.5) -> s [in]`` (SmoothQuant's smoothing factors)."""
    return _check_with_hints(student_fn, _smooth_scales_reference, _scales_cases, _SCALES_MISTAKES,
                             name="smooth_scales")


# =========================================================================== fold_smoothing
@named("fold_smoothing")
def _fold_smoothing_reference(ln_weight, ln_bias, s):
    return R.fold_smoothing(ln_weight, ln_bias, s)


def _fold(ln_weight, ln_bias, s, *, weight: str = "divide", bias: str = "divide"):
    """The fold with one knob per classic mistake: ``"divide"`` (right), ``"multiply"`` or ``"keep"``."""
    def apply(p, how):
        if p is None:
            return None
        p = np.asarray(p, dtype=np.float64)
        s64 = np.asarray(s, dtype=np.float64)
        return {"divide": p / s64, "multiply": p * s64, "keep": p}[how]

    return apply(ln_weight, weight), apply(ln_bias, bias)


_FOLD_MISTAKES = [
    Mistake(
        lambda g, b, s: _fold(g, b, s, weight="multiply", bias="multiply"),
        "the LayerNorm must output X / s, so divide its parameters by s. Multiplying by s is what the WEIGHT "
        "of the next linear layer gets (W * s), so that the product is unchanged.",
    ),
    Mistake(
        lambda g, b, s: None if b is None else _fold(g, b, s, bias="keep"),
        "fold s into the bias too: LayerNorm(x) = norm(x) * ln_weight + ln_bias, so LayerNorm(x) / s = "
        "norm(x) * (ln_weight / s) + ln_bias / s.",
    ),
    Mistake(
        lambda g, b, s: None if b is None else _fold(g, b, s, weight="keep"),
        "fold s into the weight too: LayerNorm(x) / s = norm(x) * (ln_weight / s) + ln_bias / s.",
    ),
    Mistake(
        lambda g, b, s: None if b is None else _fold(g, b, s, bias="multiply"),
        "divide the bias by s as well (not multiply): LayerNorm(x) / s = norm(x) * (ln_weight / s) + "
        "ln_bias / s.",
    ),
]


def _fold_cases(rng: np.random.Generator) -> list[Case]:
    def factors(n: int) -> np.ndarray:
        return np.exp(rng.normal(0.0, 1.0, size=n))  # positive, spread over a few orders of magnitude

    cases = [
        Case("LayerNorm with bias: d = 8", (rng.normal(1.0, 0.2, size=8), rng.normal(0.0, 0.1, size=8),
                                             factors(8))),
        Case("no bias: ln_bias = None returns None", (rng.normal(1.0, 0.2, size=6), None, factors(6))),
        Case("s = 1: nothing changes", (rng.normal(1.0, 0.2, size=5), rng.normal(0.0, 0.1, size=5), np.ones(5))),
        Case("negative LayerNorm weights", (-np.abs(rng.normal(1.0, 0.5, size=7)), rng.normal(0.0, 1.0, size=7),
                                            factors(7))),
        Case("one channel: d = 1", (np.array([0.9]), np.array([-0.2]), np.array([4.0]))),
        Case("float32: parameters and factors",
             (rng.normal(1.0, 0.2, size=10).astype(np.float32), rng.normal(0.0, 0.1, size=10).astype(np.float32),
              factors(10).astype(np.float32))),
    ]
    for i in range(3):
        d = int(rng.integers(2, 64))
        bias = None if i == 1 else rng.normal(0.0, 0.3, size=d)
        cases.append(Case(f"random draw {i + 1}: d = {d}" + (", no bias" if bias is None else ""),
                          (rng.normal(1.0, 0.3, size=d), bias, factors(d))))
    return cases


@checker(reference=_fold_smoothing_reference)
def check_fold_smoothing(student_fn: Any) -> CheckResult:
    """Check ``fold_smoothing(ln_weight, ln_bias, s) -> (ln_weight / s, ln_bias / s)`` (``None`` bias kept)."""
    return _check_with_hints(student_fn, _fold_smoothing_reference, _fold_cases, _FOLD_MISTAKES,
                             name="fold_smoothing")


# =========================================================================== choose_alpha
#: The course's rule (the reference of ``check_choose_alpha``): 0.75 for a layer whose
#: largest ``max|X_j|`` is at least this many times the median channel's, 0.5 otherwise.
_OUTLIER_SPREAD = 3.0


@named("choose_alpha")
def _choose_alpha_reference(act_absmax, w):
    # The course's rule, read off the measured curves: with per-channel weight scales
    # the best alpha of every layer whose activations have outlier channels lies near
    # 0.75; without outliers smoothing does little, and 0.5 splits the range evenly.
    a = np.maximum(np.asarray(as_numpy(act_absmax), dtype=np.float64), 1e-5)
    return 0.75 if float(a.max() / np.median(a)) >= _OUTLIER_SPREAD else 0.5


_ALPHA_MISTAKES = [
    Mistake(
        lambda a, w: 0.5,
        "0.5 is the paper's default for OPT and BLOOM, whose weights it quantizes "
        "with ONE scale per tensor. Here every output row of the weight has its own "
        "scale, so the weights can take more of the range: read where the measured "
        "curves have their minimum.",
    ),
    Mistake(
        lambda a, w: 1.0,
        "alpha = 1 moves ALL of the activations' range onto the weights (s_j = "
        "max|X_j|): the activations are flat, but the weight columns of the outlier "
        "channels grow by the full max|X_j| and the weights' error takes over.",
    ),
    Mistake(
        lambda a, w: 0.0,
        "alpha = 0 divides by 1 / max|W_j| only: the activations keep their outliers "
        "AND take on the weights' spread, the worst end of every curve.",
    ),
    Mistake(
        lambda a, w: R.smooth_scales(
            np.asarray(as_numpy(a)), np.asarray(as_numpy(w)), 0.5
        ),
        "return alpha, the migration strength (one number in [0, 1]), not the "
        "smoothing factors s.",
    ),
]


def _real_number(got: Any) -> float | None:
    """``got`` as a float when it is one real number (a Python or NumPy scalar, a 0-d
    array or tensor), else None."""
    if isinstance(got, (bool, np.bool_)):
        return None
    if isinstance(got, numbers.Real):
        return float(got)
    if isinstance(got, np.ndarray) or is_tensor(got):
        arr = as_numpy(got)
        if arr.ndim == 0 and arr.dtype.kind in "fiu":
            return float(arr)
    return None


def _layer_key(act_absmax: Any, w: Any) -> tuple:
    a = np.ascontiguousarray(as_numpy(act_absmax), dtype=np.float64)
    return np.shape(w), hashlib.sha1(a.tobytes()).hexdigest()


class _AlphaJudge(Diagnosis):
    """Judges an ``alpha`` by the error it measures on the case's layer, not by
    equality with the reference."""

    def __init__(self, curves: tuple[AlphaCurve, ...]) -> None:
        super().__init__(_choose_alpha_reference, _ALPHA_MISTAKES, rtol=1e-6, atol=1e-9)
        self._curves = {_layer_key(c.act_absmax, c.weight): c for c in curves}

    def problem(self, got: Any, expected: Any) -> str | None:
        alpha = _real_number(got)
        if alpha is None:  # not one real number: the usual verdict names what it is
            return (super().problem(got, expected)
                    or "expected one number, the migration strength alpha")
        if not np.isfinite(alpha):
            return (f"you returned {alpha}, expected a finite number: the migration "
                    f"strength alpha in [0, 1]")
        if not 0.0 <= alpha <= 1.0:
            return (f"you returned {alpha:g}, but alpha is a fraction in [0, 1] (0: "
                    f"the activations keep their whole range, 1: the weights take it "
                    f"all)")
        case = self.arguments(expected)
        curve = None if case is None else self._curves.get(_layer_key(*case[0][:2]))
        if curve is None:  # pragma: no cover - the cases are made from the curves
            raise RuntimeError("choose_alpha: no measured curve for this case (a bug)")
        ratio = curve.error_at(alpha) / curve.best_error
        if ratio <= 1.0 + NEAR_BEST:
            return None
        lo, hi = curve.near_best()
        return (f"at alpha = {alpha:.3g} this layer's W8A8 error is {ratio:.2f} x its "
                f"best on the grid (the best: alpha = {curve.best_alpha:.2f}; within "
                f"{NEAR_BEST:.0%} of it: alpha from {lo:.2f} to {hi:.2f})")


def _alpha_cases(curves: tuple[AlphaCurve, ...]) -> list[Case]:
    return [
        Case(f"{c.layer}: largest max|X_j| {c.act_spread:.1f}x the median channel",
             (c.act_absmax, c.weight))
        for c in curves
    ]


@checker(reference=_choose_alpha_reference)
def check_choose_alpha(student_fn: Any) -> CheckResult:
    """Check ``choose_alpha(act_absmax, w) -> alpha``: measured on MiniLM's 12
    LayerNorm-fed layers, it must land within ``NEAR_BEST`` (25 %) of each
    layer's best W8A8 error (:func:`effx_lab.quant.smoothquant.alpha_curves`)."""
    curves = alpha_curves()
    judge = _AlphaJudge(curves)
    result = check_function(
        student_fn, judge.reference, _alpha_cases(curves), name="choose_alpha",
        compare=judge.compare,
    )
    return report(result)


def _cases_for_tests() -> dict[str, tuple[Callable, Callable, list[Mistake]]]:
    """The references, case generators and mistakes of each exercise (for the tests)."""
    return {
        "smooth_scales": (_smooth_scales_reference, _scales_cases, _SCALES_MISTAKES),
        "fold_smoothing": (_fold_smoothing_reference, _fold_cases, _FOLD_MISTAKES),
        "choose_alpha": (
            _choose_alpha_reference,
            lambda rng: _alpha_cases(alpha_curves()),
            _ALPHA_MISTAKES,
        ),
    }
