"""The 02.2 checkers (effx_lab.quant.exercises.outliers) accept right answers written in several styles and
reject each classic mistake with its own hint."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from _checks import fails as _fails

from effx_lab.quant import reference as R
from effx_lab.quant.exercises import outliers as E


# ---------------------------------------------------------------------------------- right answers
def outlier_ratio_plain(x):
    ranges = np.abs(x).reshape(-1, x.shape[-1]).max(axis=0)
    dim = int(np.argmax(ranges))
    return dim, float(ranges[dim] / np.median(ranges))


def outlier_ratio_loops(x):
    """Loops over dimensions, sorts by hand for the median, returns NumPy scalars."""
    d = x.shape[-1]
    flat = np.asarray(x, dtype=np.float64).reshape(-1, d)
    ranges = [max(abs(float(v)) for v in flat[:, j]) for j in range(d)]
    s = sorted(ranges)
    median = s[d // 2] if d % 2 else (s[d // 2 - 1] + s[d // 2]) / 2
    dim = max(range(d), key=lambda j: ranges[j])
    return np.int64(dim), np.float64(ranges[dim] / median)


def outlier_ratio_torch(x):
    t = torch.from_numpy(np.array(x))
    ranges = t.abs().flatten(0, -2).amax(dim=0).double()
    dim = int(ranges.argmax())
    return dim, float(ranges[dim] / ranges.quantile(0.5))


def gobo_split_plain(w, outlier_sigma=3.0):
    return np.abs(w - w.mean()) > outlier_sigma * w.std()


def gobo_split_torch(w, outlier_sigma=3.0):
    t = torch.from_numpy(np.array(w, dtype=np.float64))
    return (t - t.mean()).abs() > outlier_sigma * t.std(correction=0)


def gobo_split_float32(w, outlier_sigma=3.0):
    """Computes in float32 whatever the input: the cases keep every weight away from the cut."""
    a = np.asarray(w, dtype=np.float32)
    z = np.abs(a - a.mean(dtype=np.float32)) / a.std(dtype=np.float32)
    return z > np.float32(outlier_sigma)


def lloyd_step_plain(values, centroids):
    assign = np.argmin(np.abs(values[:, None] - centroids[None, :]), axis=1)
    new = np.array(centroids, dtype=np.float64)
    for k in range(len(centroids)):
        if np.any(assign == k):
            new[k] = values[assign == k].mean()
    return assign, new


def lloyd_step_loops(values, centroids):
    """Strictly-closer loop (ties stay low), list outputs."""
    assign = []
    for v in values:
        best, dist = 0, abs(v - centroids[0])
        for k in range(1, len(centroids)):
            if abs(v - centroids[k]) < dist:
                best, dist = k, abs(v - centroids[k])
        assign.append(best)
    sums, counts = [0.0] * len(centroids), [0] * len(centroids)
    for v, k in zip(values, assign):
        sums[k] += float(v)
        counts[k] += 1
    new = [sums[k] / counts[k] if counts[k] else float(centroids[k]) for k in range(len(centroids))]
    return np.array(assign), np.array(new)


def lloyd_step_torch(values, centroids):
    v, c = torch.from_numpy(np.array(values)), torch.from_numpy(np.array(centroids))
    assign = (v[:, None] - c[None, :]).abs().argmin(dim=1)
    sums = torch.zeros(c.shape, dtype=torch.float64).index_add_(0, assign, v.double())
    counts = torch.bincount(assign, minlength=c.numel())
    return assign, torch.where(counts > 0, sums / counts.clamp(min=1), c.double())


RIGHT = [
    (E.check_outlier_ratio, outlier_ratio_plain),
    (E.check_outlier_ratio, outlier_ratio_loops),
    (E.check_outlier_ratio, outlier_ratio_torch),
    (E.check_gobo_split, gobo_split_plain),
    (E.check_gobo_split, gobo_split_torch),
    (E.check_gobo_split, gobo_split_float32),
    (E.check_lloyd_step, lloyd_step_plain),
    (E.check_lloyd_step, lloyd_step_loops),
    (E.check_lloyd_step, lloyd_step_torch),
]


@pytest.mark.parametrize("checker, fn", RIGHT, ids=lambda v: getattr(v, "__name__", ""))
def test_right_answers_pass(checker, fn, capsys):
    result = checker(fn)
    assert result.passed is True, result.message
    assert result.n_passed == result.n_cases >= 10
    assert "passed all" in capsys.readouterr().out


# ---------------------------------------------------------------------------------- references and cases
def test_references_match_the_package():
    refs = E._cases_for_tests()
    rng = np.random.default_rng(0)
    w = rng.normal(0.1, 0.05, size=(20, 30))
    w[3, 4] = 2.0
    mask = refs["gobo_split"][0](w)
    np.testing.assert_array_equal(mask, R.gobo_quantize(w, bits=3).outlier_mask)
    assert mask[3, 4] and mask.sum() >= 1
    # one Lloyd step from the quantile initialisation = gobo_quantize with n_iter=1 (no outlier here)
    v = rng.normal(size=300)
    c0 = np.quantile(v, (np.arange(8) + 0.5) / 8)
    _, c1 = refs["lloyd_step"][0](v, c0)
    g = R.gobo_quantize(v, bits=3, outlier_sigma=100.0, n_iter=1)
    np.testing.assert_allclose(g.centroids, c1, rtol=1e-12)
    dim, ratio = refs["outlier_ratio"][0](np.array([[1.0, -9.0, 2.0], [0.5, 1.0, -3.0]]))
    assert dim == 1 and ratio == pytest.approx(9.0 / 3.0)


def test_cases_are_unambiguous():
    """No tie for the largest range or zero median; no weight near GOBO's cut; a ddof trap and exact ties."""
    refs = E._cases_for_tests()
    for case in refs["outlier_ratio"][1](np.random.default_rng(3)):
        x = np.asarray(case.args[0], dtype=np.float64)
        ranges = np.sort(np.abs(x).reshape(-1, x.shape[-1]).max(axis=0))
        assert ranges[-1] > ranges[-2] * (1 + 1e-4) and np.median(ranges) > 0, case.label
    saw_ddof_trap = False
    for case in refs["gobo_split"][1](np.random.default_rng(3)):
        w = np.asarray(case.args[0], dtype=np.float64)
        sigma = case.kwargs.get("outlier_sigma", 3.0)
        z = np.abs(w - w.mean()) / w.std()
        assert np.min(np.abs(z - sigma)) > 1e-6 * sigma, case.label  # float32 and float64 agree
        z1 = np.abs(w - w.mean()) / w.std(ddof=1)
        saw_ddof_trap |= bool(np.any((z > sigma) & (z1 < sigma)))
    assert saw_ddof_trap
    cases = refs["lloyd_step"][1](np.random.default_rng(3))
    ties = [c for c in cases if c.label.startswith("ties")]
    v, c = ties[0].args
    d = np.abs(v[:, None] - c[None, :])
    assert np.any(np.sum(d == d.min(axis=1, keepdims=True), axis=1) > 1)  # at least one exact tie
    assert any(np.asarray(c.args[0]).dtype == np.float32 for c in cases)


def _diff(a, b) -> bool:
    if isinstance(a, tuple):
        return any(_diff(x, y) for x, y in zip(a, b))
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return x.shape != y.shape or not np.allclose(x, y, rtol=1e-5, atol=1e-12, equal_nan=True)


def test_every_hint_is_reachable():
    """Each listed mistake differs from the right answer on at least one case (else its hint is dead)."""
    for name, (ref, make, mistakes) in E._cases_for_tests().items():
        cases = make(np.random.default_rng(11))
        for m in mistakes:
            reachable = False
            for c in cases:
                with np.errstate(all="ignore"):
                    wrong = m.wrong(*c.args, **c.kwargs)
                if wrong is not None and _diff(wrong, ref(*c.args, **c.kwargs)):
                    reachable = True
                    break
            assert reachable, (name, m.hint)


# ---------------------------------------------------------------------------------- outlier_ratio mistakes
def _ratio(x, *, signed=False, axis="dim", middle=np.median):
    v = np.asarray(x, dtype=np.float64)
    v = v if signed else np.abs(v)
    if axis == "dim":
        ranges = v.reshape(-1, v.shape[-1]).max(axis=0)
    elif axis == "token":
        ranges = v.reshape(-1, v.shape[-1]).max(axis=1)
    else:
        ranges = v.max(axis=0)
    dim = int(np.argmax(ranges))
    return dim, float(ranges.reshape(-1)[dim] / middle(ranges))


@pytest.mark.parametrize(
    "fn, hint",
    [
        (lambda x: _ratio(x, signed=True), "take magnitudes first"),
        (lambda x: _ratio(x, axis="token"), "reduce over the tokens"),
        (lambda x: _ratio(x, axis="first"), "every axis but the last"),
        (lambda x: _ratio(x, middle=np.mean), "not by their mean"),
        (lambda x: _ratio(x, middle=lambda r: np.sort(r.reshape(-1))[r.size // 2]), "two middle values"),
        (lambda x: _ratio(x, middle=lambda r: np.median(np.abs(x))), "not over all the values"),
    ],
)
def test_outlier_ratio_mistakes_get_their_hint(fn, hint):
    _fails(E.check_outlier_ratio(fn), "hint:", hint)


def test_outlier_ratio_dim_must_be_an_integer_index():
    def one_based(x):
        dim, ratio = outlier_ratio_plain(x)
        return dim + 1, ratio

    _fails(E.check_outlier_ratio(one_based), "output[0]")


# ---------------------------------------------------------------------------------- gobo_split mistakes
def _split(w, sigma=3.0, *, center=True, absolute=True, axis=None, ddof=0, var=False, fixed=None):
    a = np.asarray(w, dtype=np.float64)
    keep = axis is not None
    dev = a - (a.mean(axis=axis, keepdims=keep) if center else 0.0)
    dev = np.abs(dev) if absolute else dev
    s = a.std(axis=axis, ddof=ddof, keepdims=keep)
    return dev > (sigma if fixed is None else fixed) * (s**2 if var else s)


@pytest.mark.parametrize(
    "fn, hint",
    [
        (lambda w, outlier_sigma=3.0: _split(w, outlier_sigma, center=False), "distance from the mean"),
        (lambda w, outlier_sigma=3.0: _split(w, outlier_sigma, absolute=False), "either side"),
        (lambda w, outlier_sigma=3.0: _split(w, outlier_sigma, axis=-1), "not of each row"),
        (lambda w, outlier_sigma=3.0: _split(w, outlier_sigma, axis=0), "not of each column"),
        (lambda w, outlier_sigma=3.0: _split(w, outlier_sigma, ddof=1), "ddof=0"),
        (lambda w, outlier_sigma=3.0: _split(w, outlier_sigma, var=True), "not with the variance"),
        (lambda w, outlier_sigma=3.0: _split(w, outlier_sigma, fixed=3.0), "use the outlier_sigma argument"),
    ],
)
def test_gobo_split_mistakes_get_their_hint(fn, hint):
    _fails(E.check_gobo_split(fn), "hint:", hint)


def test_gobo_split_must_return_a_mask_not_the_values():
    def values(w, outlier_sigma=3.0):
        return np.where(gobo_split_plain(w, outlier_sigma), w, 0.0)

    _fails(E.check_gobo_split(values))


# ---------------------------------------------------------------------------------- lloyd_step mistakes
def _lloyd(values, centroids, *, high=False, empty="keep", stat=np.mean, update=True, reassign=False):
    v, c = np.asarray(values, dtype=np.float64), np.asarray(centroids, dtype=np.float64)
    d = np.abs(v[:, None] - c[None, :])
    assign = c.size - 1 - np.argmin(d[:, ::-1], axis=1) if high else np.argmin(d, axis=1)
    new = c.copy()
    for k in range(c.size) if update else ():
        members = v[assign == k]
        if members.size:
            new[k] = stat(members)
        elif empty == "nan":
            new[k] = np.nan
        elif empty == "zero":
            new[k] = 0.0
    if reassign:
        assign = np.argmin(np.abs(v[:, None] - new[None, :]), axis=1)
    return assign, new


@pytest.mark.parametrize(
    "fn, hint",
    [
        (lambda v, c: _lloyd(v, c, high=True), "LOWER index"),
        (lambda v, c: _lloyd(v, c, empty="nan"), "mean of no values is NaN"),
        (lambda v, c: _lloyd(v, c, empty="zero"), "does not move to 0"),
        (lambda v, c: _lloyd(v, c, stat=np.median), "MEAN of its values"),
        (lambda v, c: _lloyd(v, c, update=False), "move every centroid"),
        (lambda v, c: _lloyd(v, c, reassign=True), "GIVEN centroids"),
    ],
)
def test_lloyd_step_mistakes_get_their_hint(fn, hint):
    with np.errstate(all="ignore"):
        _fails(E.check_lloyd_step(fn), "hint:", hint)


def test_lloyd_step_empty_mean_with_numpy_warning_is_reported_not_raised():
    def naive(values, centroids):
        assign = np.argmin(np.abs(values[:, None] - centroids[None, :]), axis=1)
        new = np.array([values[assign == k].mean() for k in range(len(centroids))])  # nan (and a warning) if empty
        return assign, new

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        _fails(E.check_lloyd_step(naive), "hint:", "NaN")


# ---------------------------------------------------------------------------------- never crash


def test_all_names_exported():
    assert sorted(E.__all__) == ["check_gobo_split", "check_lloyd_step", "check_outlier_ratio"]
    from effx_lab.quant import exercises

    for name in E.__all__:
        assert getattr(exercises, name) is getattr(E, name)
