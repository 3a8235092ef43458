"""Checkers for the exercises of notebook 02.2 (the outlier problem).

Each ``check_<name>(student_fn)`` runs the student's function against the course's reference on fixed edge
cases and seeded random draws, prints a plain-words verdict and returns the
:class:`effx_lab.check.CheckResult`. When a wrong answer equals a classic mistake (statistics over the wrong
axis, a mean where a median belongs, a one-sided outlier test, an empty k-means cluster turned into NaN...)
the verdict ends with a ``hint:`` line naming it. What the student writes:

* ``outlier_ratio(x) -> (dim, ratio)``: for activations ``x`` of shape ``[..., D]`` (any leading dimensions:
  tokens, or batch and sequence), the per-dimension range ``r_j = max |x[..., j]|`` over every token, the
  dimension ``dim = argmax_j r_j`` with the largest range (an int) and ``ratio = r_dim / median_j r_j`` (a
  float): how many times larger the worst dimension is than a typical one (Bondarenko et al. 2021). No case
  has a tie for the largest range or a zero median.
* ``gobo_split(w, outlier_sigma=3.0) -> mask``: GOBO's outlier test (Zadeh et al. 2020): one Gaussian for the
  whole layer, ``mean`` and population ``std`` (``ddof=0``) over *all* the weights, and ``mask = |w - mean| >
  outlier_sigma * std``, a bool array of ``w``'s shape. Reference: the ``outlier_mask`` of
  :func:`effx_lab.quant.reference.gobo_quantize`. No weight lies within ``1e-6`` (relative) of the cut, so
  float32 and float64 arithmetic agree.
* ``lloyd_step(values, centroids) -> (assign, new_centroids)``: one iteration of 1-D k-means (Lloyd), as
  inside :func:`effx_lab.quant.reference.gobo_quantize`: ``assign[i]`` = the index of the centroid nearest to
  ``values[i]`` (ties go to the lower index), integers of ``values``' shape; ``new_centroids[k]`` = the mean
  of the values assigned to ``k``, or the old ``centroids[k]`` if none is (an empty cluster keeps its
  centroid). Assignment uses the *given* centroids.

Integers (``dim``, ``assign``) and booleans (``mask``) are compared exactly, floats with ``rtol=1e-5``.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from effx_lab.check import Case, CheckResult, Mistake, check_with_hints, checker, named

from .. import _np_outliers
from .. import reference as R

__all__ = [
    "check_gobo_split",
    "check_lloyd_step",
    "check_outlier_ratio",
]

_RTOL = 1e-5
_ATOL = 1e-12


def _check(student_fn: Any, reference_fn: Callable, cases: Any, mistakes: list[Mistake], *, name: str) -> CheckResult:
    return check_with_hints(student_fn, reference_fn, cases, mistakes, name=name, rtol=_RTOL, atol=_ATOL)


# =========================================================================== outlier_ratio
@named("outlier_ratio")
def _outlier_ratio_reference(x):
    a = np.asarray(x, dtype=np.float64)
    ranges = np.abs(a).reshape(-1, a.shape[-1]).max(axis=0)  # max |x| of every dimension, over all tokens
    dim = int(np.argmax(ranges))
    return dim, float(ranges[dim] / np.median(ranges))


def _ratio(
    x,
    *,
    magnitude: bool = True,
    per: str = "dim",
    middle: str = "median",
):
    """``outlier_ratio`` with one knob per classic mistake (defaults: the right answer)."""
    a = np.asarray(x, dtype=np.float64)
    v = np.abs(a) if magnitude else a
    if per == "dim":
        ranges = v.reshape(-1, a.shape[-1]).max(axis=0)
    elif per == "token":  # the maximum of every token (row) instead of every dimension (column)
        ranges = v.reshape(-1, a.shape[-1]).max(axis=1)
    else:  # per == "axis0": only the first axis reduced (a 3-D input keeps its sequence axis)
        ranges = v.max(axis=0)
    dim = int(np.argmax(ranges))
    top = float(ranges.reshape(-1)[dim])
    if middle == "median":
        mid = float(np.median(ranges))
    elif middle == "mean":
        mid = float(np.mean(ranges))
    elif middle == "upper":  # sorted(r)[D // 2]: the upper middle value when D is even
        mid = float(np.sort(ranges.reshape(-1))[ranges.size // 2])
    else:  # middle == "all": the median of every |x| value, not of the per-dimension ranges
        mid = float(np.median(v))
    return dim, top / mid


_RATIO_MISTAKES = [
    Mistake(
        lambda x: _ratio(x, magnitude=False),
        "take magnitudes first: the range of dimension j is max |x[..., j]| (np.abs(x).max(...)). A dimension "
        "whose largest values are negative is an outlier too.",
    ),
    Mistake(
        lambda x: _ratio(x, per="token"),
        "reduce over the tokens, not over the dimensions: the range of dimension j is the maximum of column j "
        "(x.reshape(-1, D).max(axis=0)), one number per dimension, D numbers in all.",
    ),
    Mistake(
        lambda x: None if np.ndim(x) < 3 else _ratio(x, per="axis0"),
        "reduce over every axis but the last: x.reshape(-1, x.shape[-1]) first, so that a [batch, seq, D] input "
        "gives one range per dimension (D numbers), not a [seq, D] array.",
    ),
    Mistake(
        lambda x: _ratio(x, middle="mean"),
        "divide by the median of the per-dimension ranges (np.median), not by their mean: the mean is pulled "
        "up by the outlier dimensions themselves.",
    ),
    Mistake(
        lambda x: None if np.shape(x)[-1] % 2 else _ratio(x, middle="upper"),
        "with an even number of dimensions the median is the mean of the two middle values (np.median does "
        "that); sorted(r)[D // 2] is only the upper one.",
    ),
    Mistake(
        lambda x: _ratio(x, middle="all"),
        "the median is over the D per-dimension ranges (max |x| of each dimension), not over all the values "
        "|x| of the tensor.",
    ),
]


def _activations(rng: np.random.Generator, shape: tuple[int, ...], outliers: dict[int, float]) -> np.ndarray:
    """Gaussian activations whose dimensions have different scales, plus large outlier dimensions."""
    d = shape[-1]
    scales = rng.uniform(0.5, 2.0, size=d)
    x = rng.normal(0.0, 1.0, size=shape) * scales
    for j, size in outliers.items():
        x[..., j] += size * rng.uniform(0.6, 1.0, size=shape[:-1])
    return x


def _ratio_cases(rng: np.random.Generator) -> list[Case]:
    negative = _activations(rng, (20, 16), {})
    negative[:, 5] = -np.abs(negative[:, 5]) * 30.0  # an outlier dimension whose values are all negative
    negative[3, 9] = 12.0  # the largest *positive* value sits elsewhere
    wide = _activations(rng, (6, 40), {17: 60.0})  # fewer tokens than dimensions
    cases = [
        Case("one outlier dimension: [32, 24]", (_activations(rng, (32, 24), {7: 80.0}),)),
        Case("two outlier dimensions: [40, 30]", (_activations(rng, (40, 30), {3: 50.0, 21: 120.0}),)),
        Case("a negative outlier: dimension 5 is large and negative", (negative,)),
        Case("fewer tokens than dimensions: [6, 40]", (wide,)),
        Case("3-D: [batch, seq, D] = [3, 10, 12]", (_activations(rng, (3, 10, 12), {4: 40.0}),)),
        Case("odd number of dimensions: [25, 15]", (_activations(rng, (25, 15), {14: 30.0}),)),
        Case("no outlier: a ratio close to 1", (_activations(rng, (50, 10), {}),)),
        Case("one token: [1, 8]", (_activations(rng, (1, 8), {2: 9.0}),)),
        Case("float32: input [16, 20]", (_activations(rng, (16, 20), {11: 70.0}).astype(np.float32),)),
    ]
    for i in range(3):
        d = int(rng.integers(6, 40))
        shape = (int(rng.integers(2, 30)), d) if i != 1 else (2, int(rng.integers(2, 9)), d)
        out = {int(j): float(rng.uniform(5.0, 150.0)) for j in rng.choice(d, size=int(rng.integers(1, 3)), replace=False)}
        cases.append(Case(f"random draw {i + 1}: shape {shape}", (_activations(rng, shape, out),)))
    return cases


@checker(reference=_outlier_ratio_reference)
def check_outlier_ratio(student_fn: Any) -> CheckResult:
    """Check ``outlier_ratio(x) -> (dim, ratio)``: the dimension with the largest ``max |x|`` and how many times
    the median dimension's ``max |x|`` it is."""
    return _check(student_fn, _outlier_ratio_reference, _ratio_cases, _RATIO_MISTAKES, name="outlier_ratio")


# =========================================================================== gobo_split
@named("gobo_split")
def _gobo_split_reference(w, outlier_sigma=3.0):
    # the package's GOBO: bits=1 and n_iter=0 only skip work that does not change the mask
    return R.gobo_quantize(w, bits=1, outlier_sigma=outlier_sigma, n_iter=0).outlier_mask


def _split(
    w,
    outlier_sigma=3.0,
    *,
    center: bool = True,
    two_sided: bool = True,
    ddof: int = 0,
    axis: int | None = None,
    spread: str = "std",
    sigma: float | None = None,
    strict: bool = True,
):
    """``gobo_split`` with one knob per classic mistake (defaults: the right answer)."""
    a = np.asarray(w, dtype=np.float64)
    keep = axis is not None
    mean = a.mean(axis=axis, keepdims=keep) if center else 0.0
    std = a.std(axis=axis, ddof=ddof, keepdims=keep)
    if spread == "var":
        std = std**2
    dev = a - mean
    dev = np.abs(dev) if two_sided else dev
    cut = (outlier_sigma if sigma is None else sigma) * std
    return dev > cut if strict else dev >= cut


_SPLIT_MISTAKES = [
    Mistake(
        lambda w, outlier_sigma=3.0: _split(w, outlier_sigma, center=False),
        "measure the distance from the mean: |w - mean| > outlier_sigma * std. |w| alone assumes the weights "
        "are centred on 0, and this layer's are not.",
    ),
    Mistake(
        lambda w, outlier_sigma=3.0: _split(w, outlier_sigma, two_sided=False),
        "an outlier can lie on either side: take the absolute value, |w - mean| > outlier_sigma * std.",
    ),
    Mistake(
        lambda w, outlier_sigma=3.0: None if np.ndim(w) < 2 else _split(w, outlier_sigma, axis=-1),
        "GOBO fits ONE Gaussian to the whole layer: the mean and std of all the weights (w.mean(), w.std()), "
        "not of each row.",
    ),
    Mistake(
        lambda w, outlier_sigma=3.0: None if np.ndim(w) < 2 else _split(w, outlier_sigma, axis=0),
        "GOBO fits ONE Gaussian to the whole layer: the mean and std of all the weights (w.mean(), w.std()), "
        "not of each column.",
    ),
    Mistake(
        lambda w, outlier_sigma=3.0: _split(w, outlier_sigma, ddof=1),
        "use the population standard deviation, np.std(w) (ddof=0), as the reference does; ddof=1 "
        "(torch.std's default, pandas') moves the cut slightly, and a weight close to it changes side.",
    ),
    Mistake(
        lambda w, outlier_sigma=3.0: _split(w, outlier_sigma, spread="var"),
        "compare with outlier_sigma standard deviations (np.std), not with the variance (np.var = std ** 2).",
    ),
    Mistake(
        lambda w, outlier_sigma=3.0: None if outlier_sigma == 3.0 else _split(w, outlier_sigma, sigma=3.0),
        "use the outlier_sigma argument: the cut is outlier_sigma * std, not always 3 * std.",
    ),
]


def _gauss_layer(rng: np.random.Generator, shape: tuple[int, ...], *, loc: float = 0.0, scale: float = 0.05,
                 n_out: int = 3, out_size: float = 8.0) -> np.ndarray:
    w = rng.normal(loc, scale, size=shape)
    flat = w.reshape(-1)
    pos = rng.choice(flat.size, size=n_out, replace=False)
    flat[pos] = loc + scale * out_size * rng.choice([-1.0, 1.0], size=n_out) * rng.uniform(0.8, 1.2, size=n_out)
    return w


def _z_scores(w: np.ndarray, ddof: int = 0) -> np.ndarray:
    a = np.asarray(w, dtype=np.float64)
    return np.abs(a - a.mean()) / a.std(ddof=ddof)


def _place_between(w: np.ndarray, index: int, sigma: float) -> np.ndarray:
    """A copy of ``w`` in which ``w.flat[index]`` is moved so that its population z-score lies just above
    ``sigma`` and its sample (``ddof=1``) z-score just below it: only a student using ``ddof=1`` misses it.

    The sample z-score is the population one times ``sqrt((n - 1) / n)``, so the window is
    ``sigma < z < sigma * sqrt(n / (n - 1))``; we aim at its middle by bisection on the value (the z-score of a
    weight above the others' mean grows with its value)."""
    w = np.array(w, dtype=np.float64)
    flat = w.reshape(-1)
    n = flat.size
    target = sigma * (1 + np.sqrt(n / (n - 1))) / 2
    rest = np.delete(flat, index)
    lo, hi = rest.mean(), rest.mean() + 10 * np.sqrt(n) * rest.std()
    for _ in range(200):
        flat[index] = mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _z_scores(flat)[index] < target else (lo, mid)
    flat[index] = (lo + hi) / 2
    return w


def _split_cases(rng: np.random.Generator) -> list[Case]:
    shifted = _gauss_layer(rng, (12, 20), loc=0.4, scale=0.05)  # centred far from 0: |w| alone is wrong
    rows = _gauss_layer(rng, (6, 30), n_out=2)
    rows[0] *= 8.0  # one row with a much larger scale: per-row statistics see no outliers there
    cols = _gauss_layer(rng, (30, 6), n_out=2)
    cols[:, 4] *= 8.0
    one_side = rng.normal(0.0, 0.05, size=(8, 40))
    one_side.reshape(-1)[[7, 253]] = [-0.6, -0.5]  # outliers on the negative side only
    small = rng.normal(0.0, 1.0, size=24)
    small = _place_between(small, int(np.argmax(np.abs(small))), 2.0)  # between the ddof=0 and ddof=1 cuts
    cases = [
        Case("a layer [16, 24] with a few outliers", (_gauss_layer(rng, (16, 24)),)),
        Case("rows of different scales: [6, 30]", (rows,)),
        Case("columns of different scales: [30, 6]", (cols,)),
        Case("centred far from 0: mean 0.4", (shifted,)),
        Case("negative outliers only", (one_side,)),
        Case("outlier_sigma = 2.5", (_gauss_layer(rng, (20, 20), n_out=5, out_size=3.0),), {"outlier_sigma": 2.5}),
        Case("outlier_sigma = 4.0", (_gauss_layer(rng, (20, 20), n_out=5, out_size=5.0),), {"outlier_sigma": 4.0}),
        Case("outlier_sigma = 2.0: a weight just beyond the cut (24 weights)", (small,), {"outlier_sigma": 2.0}),
        Case("no outlier: uniform weights", (rng.uniform(-0.1, 0.1, size=(8, 8)),)),
        Case("3-D: [2, 8, 10]", (_gauss_layer(rng, (2, 8, 10), n_out=4),)),
        Case("large variance: scale 20", (_gauss_layer(rng, (10, 10), scale=20.0),)),
        Case("float32: input [12, 16]", (_gauss_layer(rng, (12, 16)).astype(np.float32),)),
    ]
    for i in range(3):
        shape = (int(rng.integers(4, 20)), int(rng.integers(4, 20)))
        sigma = float(rng.choice([2.5, 3.0, 3.5]))
        w = _gauss_layer(rng, shape, loc=float(rng.normal(0.0, 0.02)), scale=float(rng.uniform(0.01, 0.2)),
                         n_out=int(rng.integers(1, 5)), out_size=float(rng.uniform(3.0, 10.0)))
        cases.append(Case(f"random draw {i + 1}: {shape}, outlier_sigma = {sigma}", (w,), {"outlier_sigma": sigma}))
    return cases


@checker(reference=_gobo_split_reference)
def check_gobo_split(student_fn: Any) -> CheckResult:
    """Check ``gobo_split(w, outlier_sigma=3.0) -> mask``: GOBO's outliers, ``|w - mean| > sigma * std`` over
    the whole layer."""
    return _check(student_fn, _gobo_split_reference, _split_cases, _SPLIT_MISTAKES, name="gobo_split")


# =========================================================================== lloyd_step
@named("lloyd_step")
def _lloyd_step_reference(values, centroids):
    v = np.asarray(values, dtype=np.float64)
    c = np.asarray(centroids, dtype=np.float64)
    assign = _np_outliers._nearest_centroid(v, c).astype(np.int64)  # ties: the lower index
    new = c.copy()
    for k in range(c.size):
        members = v[assign == k]
        if members.size:  # an empty cluster keeps its centroid
            new[k] = members.mean()
    return assign, new


def _lloyd(
    values,
    centroids,
    *,
    ties: str = "low",
    empty: str = "keep",
    stat: Callable[[np.ndarray], float] = np.mean,
    update: bool = True,
    reassign: bool = False,
):
    """``lloyd_step`` with one knob per classic mistake (defaults: the right answer)."""
    v = np.asarray(values, dtype=np.float64)
    c = np.asarray(centroids, dtype=np.float64)
    dist = np.abs(v[:, None] - c[None, :])
    if ties == "low":
        assign = np.argmin(dist, axis=1)
    else:  # the last of the nearest centroids
        assign = c.size - 1 - np.argmin(dist[:, ::-1], axis=1)
    new = c.copy()
    if update:
        for k in range(c.size):
            members = v[assign == k]
            if members.size:
                new[k] = stat(members)
            elif empty == "nan":
                new[k] = np.nan
            elif empty == "zero":
                new[k] = 0.0
    if reassign:  # the assignment to the *new* centroids
        assign = np.argmin(np.abs(v[:, None] - new[None, :]), axis=1)
    return assign, new


def _has_empty(values, centroids) -> bool:
    assign = _lloyd(values, centroids)[0]
    return np.unique(assign).size < np.size(centroids)


_LLOYD_MISTAKES = [
    Mistake(
        lambda values, centroids: _lloyd(values, centroids, ties="high"),
        "a value exactly halfway between two centroids goes to the LOWER index (np.argmin returns the first "
        "minimum; in a loop, move to centroid k only if it is strictly closer).",
    ),
    Mistake(
        lambda values, centroids: _lloyd(values, centroids, empty="nan") if _has_empty(values, centroids) else None,
        "an empty cluster keeps its old centroid: the mean of no values is NaN (np.mean([]) warns and returns "
        "nan), so test `if members.size:` before updating.",
    ),
    Mistake(
        lambda values, centroids: _lloyd(values, centroids, empty="zero") if _has_empty(values, centroids) else None,
        "an empty cluster keeps its old centroid, it does not move to 0.",
    ),
    Mistake(
        lambda values, centroids: _lloyd(values, centroids, stat=np.median),
        "the new centroid is the MEAN of its values (that minimises the squared error); the median minimises "
        "the absolute error instead.",
    ),
    Mistake(
        lambda values, centroids: _lloyd(values, centroids, update=False),
        "after the assignment, move every centroid to the mean of the values assigned to it.",
    ),
    Mistake(
        lambda values, centroids: _lloyd(values, centroids, reassign=True),
        "return the assignment to the GIVEN centroids (the assignment step comes first), not to the new ones.",
    ),
]


def _lloyd_cases(rng: np.random.Generator) -> list[Case]:
    def gauss(n: int, scale: float = 1.0) -> np.ndarray:
        return rng.normal(0.0, scale, size=n)

    def quantile_init(v: np.ndarray, k: int) -> np.ndarray:
        return np.quantile(v, (np.arange(k) + 0.5) / k)

    g8 = gauss(200, 0.05)
    ties = np.array([0.5, 1.5, 0.2, 1.9, 0.5, 2.6, -0.3, 1.5])  # 0.5 and 1.5: exactly halfway
    far = gauss(30)
    g4 = gauss(60, 2.0)
    g32 = gauss(40).astype(np.float32)
    cases = [
        Case("8 centroids at the quantiles of 200 Gaussian weights", (g8, quantile_init(g8, 8))),
        Case("ties: values exactly halfway between two centroids", (ties, np.array([0.0, 1.0, 2.0, 3.0]))),
        Case("an empty cluster: a centroid far from every value", (far, np.array([-1.0, 0.0, 1.0, 10.0]))),
        Case("two empty clusters, one on each side", (gauss(25), np.array([-9.0, -0.5, 0.5, 9.0]))),
        Case("2 centroids (1 bit)", (g4, np.array([-1.0, 1.0]))),
        Case("poor initial centroids: all on one side", (g4, np.array([3.0, 4.0, 5.0]))),
        Case("one value per centroid", (np.array([0.1, 0.9, 2.2]), np.array([0.0, 1.0, 2.0]))),
        Case("skewed values: a GELU-like tail", (np.maximum(gauss(50), -0.17) + 0.01 * gauss(50), np.linspace(-0.2, 2.0, 4))),
        Case("float32: values and centroids", (g32, quantile_init(g32, 4).astype(np.float32))),
    ]
    for i in range(3):
        n, k = int(rng.integers(10, 80)), int(rng.choice([2, 4, 8]))
        v = gauss(n, float(rng.uniform(0.01, 3.0)))
        c = np.sort(rng.choice(v, size=k, replace=False)) if i != 1 else quantile_init(v, k)
        cases.append(Case(f"random draw {i + 1}: {n} values, {k} centroids", (v, c)))
    return cases


@checker(reference=_lloyd_step_reference)
def check_lloyd_step(student_fn: Any) -> CheckResult:
    """Check ``lloyd_step(values, centroids) -> (assign, new_centroids)``: one Lloyd iteration of 1-D k-means."""
    return _check(student_fn, _lloyd_step_reference, _lloyd_cases, _LLOYD_MISTAKES, name="lloyd_step")


def _cases_for_tests() -> dict[str, tuple[Callable, Callable[[np.random.Generator], list[Case]], list[Mistake]]]:
    """The reference, case generator and mistakes of each exercise (for the tests)."""
    return {
        "outlier_ratio": (_outlier_ratio_reference, _ratio_cases, _RATIO_MISTAKES),
        "gobo_split": (_gobo_split_reference, _split_cases, _SPLIT_MISTAKES),
        "lloyd_step": (_lloyd_step_reference, _lloyd_cases, _LLOYD_MISTAKES),
    }
