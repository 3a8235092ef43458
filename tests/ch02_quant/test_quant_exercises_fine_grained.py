"""The 02.4 checkers (effx_lab.quant.exercises.fine_grained) accept right answers written in several styles,
reject each classic mistake with its hint, and never crash."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from _checks import fails as _fails

from effx_lab.check import Case, Diagnosis
from effx_lab.quant import reference as R
from effx_lab.quant.exercises import fine_grained as E


# ---------------------------------------------------------------------------------- right answers: group_error_ratio
def group_error_ratio_plain(x, n_groups):
    m = np.abs(x).reshape(n_groups, -1).max(axis=1)
    return float(np.sqrt(np.mean(m**2)) / m.max())


def group_error_ratio_loops(x, n_groups):
    """A loop over the groups, summing squared steps (qmax cancels, any bit width gives the same)."""
    rows = len(x) // n_groups
    qmax = 7
    steps = [np.abs(x[g * rows : (g + 1) * rows]).max() / qmax for g in range(n_groups)]
    per_group_mse = sum(s**2 / 12 for s in steps) / n_groups
    per_tensor_mse = max(steps) ** 2 / 12
    return (per_group_mse / per_tensor_mse) ** 0.5


def group_error_ratio_torch(x, n_groups):
    t = torch.as_tensor(np.asarray(x))
    m = t.abs().reshape(n_groups, -1).amax(dim=1)
    return m.square().mean().sqrt() / t.abs().max()  # a 0-d tensor


# ---------------------------------------------------------------------------------- right answers: peg_order
def peg_order_plain(calib, n_groups):
    return np.argsort(calib.max(axis=0) - calib.min(axis=0))


def peg_order_descending(calib, n_groups):
    return np.argsort(-(calib.max(axis=0) - calib.min(axis=0)))


def peg_order_shuffled_inside_groups(calib, n_groups):
    """The right groups, each one internally reversed, and returned as a Python list."""
    perm = np.argsort(np.ptp(calib, axis=0), kind="stable")
    size = perm.size // n_groups
    return [int(j) for g in range(n_groups) for j in perm[g * size : (g + 1) * size][::-1]]


def peg_order_torch(calib, n_groups):
    t = torch.from_numpy(np.array(calib))
    return torch.argsort(t.amax(dim=0) - t.amin(dim=0))


RIGHT = [
    (E.check_group_error_ratio, group_error_ratio_plain),
    (E.check_group_error_ratio, group_error_ratio_loops),
    (E.check_group_error_ratio, group_error_ratio_torch),
    (E.check_peg_order, peg_order_plain),
    (E.check_peg_order, peg_order_descending),
    (E.check_peg_order, peg_order_shuffled_inside_groups),
    (E.check_peg_order, peg_order_torch),
]


@pytest.mark.parametrize("checker, fn", RIGHT, ids=lambda v: getattr(v, "__name__", ""))
def test_right_answers_pass(checker, fn, capsys):
    result = checker(fn)
    assert result.passed is True, result.message
    assert result.n_passed == result.n_cases >= 10
    assert "passed all" in capsys.readouterr().out


def test_references_match_the_package():
    refs = E._cases_for_tests()
    rng = np.random.default_rng(0)
    # the uniform-noise prediction is the error ratio of the two quantizers when the grid is fine
    w = rng.normal(size=(48, 200)) * np.repeat(rng.uniform(0.2, 2.0, size=4), 12)[:, None]
    heads = R.fake_quantize(w.reshape(4, -1), 8, granularity="channel", axis=0).reshape(w.shape)
    measured = R.quant_error(w, heads)["rel_fro"] / R.quant_error(w, R.fake_quantize(w, 8))["rel_fro"]
    assert refs["group_error_ratio"][0](w, 4) == pytest.approx(measured, rel=0.03)
    assert refs["group_error_ratio"][0](w, 1) == 1.0
    calib = rng.normal(size=(20, 12)) * rng.uniform(0.1, 5.0, size=12)
    perm = refs["peg_order"][0](calib, 4)
    np.testing.assert_array_equal(perm, R.peg_permutation(np.ptp(calib, axis=0), 4))


# ---------------------------------------------------------------------------------- the cases are fair
def _used_cases(name, checker):
    """The cases the checker actually uses (its generator is seeded from the exercise's name)."""
    ref = E._cases_for_tests()[name][0]
    seen = []

    def spy(*args, **kwargs):
        seen.append(Case("x", args, kwargs))
        return ref(*args, **kwargs)

    assert checker(spy).passed
    assert len(seen) >= 10
    return ref, seen


def test_peg_groups_are_unambiguous():
    """At every group boundary the sorted ranges differ clearly, so float32 vs float64 arithmetic (or another
    sorting algorithm) cannot move a dimension to the neighbouring group."""
    _ref, cases = _used_cases("peg_order", E.check_peg_order)
    for case in cases:
        calib, n_groups = case.args
        ranges = np.sort(np.ptp(np.asarray(calib, dtype=np.float64), axis=0))
        size = ranges.size // n_groups
        for g in range(1, n_groups):
            below, above = ranges[g * size - 1], ranges[g * size]
            assert above - below > 1e-4 * max(above, 1e-12), (n_groups, below, above)
    assert any(np.asarray(c.args[0]).dtype == np.float32 for c in cases)


def test_every_hint_is_reachable():
    """Each listed mistake differs from the right answer on at least one case (else its hint is dead)."""
    for name, (ref, make, mistakes) in E._cases_for_tests().items():
        cases = make(np.random.default_rng(7))
        diag = Diagnosis(ref, mistakes, rtol=1e-5, atol=1e-12, exact=False)
        for m in mistakes:
            reachable = False
            for c in cases:
                with np.errstate(all="ignore"):
                    wrong = m.wrong(*c.args, **c.kwargs)
                if wrong is None:
                    continue
                if name == "peg_order":
                    n_groups = c.args[1]
                    part = E._GroupCheck._partition
                    differs = part(np.asarray(wrong), n_groups) != part(ref(*c.args), n_groups)
                else:
                    differs = not diag.close(wrong, ref(*c.args, **c.kwargs))
                if differs:
                    reachable = True
                    break
            assert reachable, (name, m.hint)


# ---------------------------------------------------------------------------------- group_error_ratio mistakes
def _peaks(x, n_groups, *, strided=False, rows=False, signed=False):
    a = np.asarray(x, dtype=np.float64)
    if rows:
        groups = a
    elif strided:  # head g = rows g, g + n_groups, ...
        groups = np.stack([a[g::n_groups].ravel() for g in range(n_groups)])
    else:
        groups = a.reshape(n_groups, -1)
    return groups.max(axis=1) if signed else np.abs(groups).max(axis=1)


@pytest.mark.parametrize(
    "fn, hint",
    [
        (lambda x, n: float(_peaks(x, n).mean() / _peaks(x, n).max()), "average the squares"),
        (lambda x, n: float((_peaks(x, n) ** 2).mean() / _peaks(x, n).max() ** 2), "SQUARED errors"),
        (lambda x, n: float(_peaks(x, n).max() / np.sqrt((_peaks(x, n) ** 2).mean())), "not its inverse"),
        (lambda x, n: float(np.sqrt((_peaks(x, n, strided=True) ** 2).mean()) / np.abs(x).max()), "CONSECUTIVE"),
        (lambda x, n: float(np.sqrt((_peaks(x, n, rows=True) ** 2).mean()) / np.abs(x).max()), "not per row"),
        (lambda x, n: float(np.sqrt((_peaks(x, n, signed=True) ** 2).mean()) / _peaks(x, n, signed=True).max()),
         "MAGNITUDE"),
        (lambda x, n: float(np.sqrt(np.mean(np.square(x))) / np.abs(x).max()), "group maxima"),
    ],
)
def test_group_error_ratio_mistakes_get_their_hint(fn, hint):
    _fails(E.check_group_error_ratio(fn), "hint:", hint)


def test_group_error_ratio_matches_the_measured_ratio_on_heads():
    """The prediction is what the notebook compares with the measured per-head / per-tensor error: at 8 bits
    on heads of a few thousand weights each, the uniform-noise model is right to a percent."""
    rng = np.random.default_rng(3)
    w = rng.normal(0.0, 0.05, size=(96, 64)) * np.repeat(rng.uniform(1.0, 3.0, size=6), 16)[:, None]
    measured = (R.quant_error(w, R.fake_quantize(w.reshape(6, -1), 8, granularity="channel", axis=0)
                              .reshape(w.shape))["rel_fro"]
                / R.quant_error(w, R.fake_quantize(w, 8))["rel_fro"])
    assert E._group_error_ratio_reference(w, 6) == pytest.approx(measured, rel=0.03)


# ---------------------------------------------------------------------------------- peg_order mistakes
@pytest.mark.parametrize(
    "fn, hint",
    [
        (lambda c, n: np.argsort(c.max(axis=0)), "not by its max"),
        (lambda c, n: np.argsort(-c.max(axis=0)), "not by its max"),
        (lambda c, n: np.argsort(np.abs(c).max(axis=0)), "not by max |x|"),
        (lambda c, n: np.argsort(c.std(axis=0)), "standard deviation"),
        (lambda c, n: np.arange(c.shape[1]), "identity order"),
    ],
)
def test_peg_order_mistakes_get_their_hint(fn, hint):
    _fails(E.check_peg_order(fn), "hint:", hint, "is not one of PEG's groups")


@pytest.mark.parametrize(
    "fn, fact",
    [
        (lambda c, n: np.sort(c.max(axis=0) - c.min(axis=0)), "np.argsort"),
        (lambda c, n: np.argsort(c.max(axis=1) - c.min(axis=1)), "axis 0"),
        (lambda c, n: np.zeros(c.shape[1], dtype=np.int64), "not a permutation"),
        (lambda c, n: None, "return"),
        (lambda c, n: "0 1 2", "expected an array"),
        (lambda c, n: np.argsort(c.max(axis=0) - c.min(axis=0)).astype(np.float64) + 0.5, "not whole numbers"),
    ],
)
def test_peg_order_malformed_answers_are_explained(fn, fact):
    _fails(E.check_peg_order(fn), fact)


def test_peg_order_accepts_whole_floats():
    def as_floats(calib, n_groups):
        return peg_order_plain(calib, n_groups).astype(np.float64)

    assert E.check_peg_order(as_floats).passed


def test_peg_order_rejects_a_partial_sort():
    """Sorting inside each contiguous group (right within groups, wrong across them) must not pass."""
    def sort_within_contiguous(calib, n_groups):
        ranges = np.ptp(calib, axis=0)
        size = ranges.size // n_groups
        return np.concatenate([g * size + np.argsort(ranges[g * size : (g + 1) * size]) for g in range(n_groups)])

    _fails(E.check_peg_order(sort_within_contiguous), "is not one of PEG's groups")


# ---------------------------------------------------------------------------------- never crash
def test_all_names_exported():
    assert sorted(E.__all__) == ["check_group_error_ratio", "check_peg_order"]
    from effx_lab.quant import exercises

    for name in E.__all__:
        assert getattr(exercises, name) is getattr(E, name)
