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


def _round_away(v):
    return np.sign(v) * np.floor(np.abs(v) + 0.5)


# ---------------------------------------------------------------------------------- right answers: head_quantize
def head_quantize_plain(w, n_heads, bits):
    qmax = 2 ** (bits - 1) - 1
    blocks = w.reshape(n_heads, -1)
    scales = np.abs(blocks).max(axis=1) / qmax
    scales = np.where(scales > 0, scales, 1.0)
    return np.clip(np.round(blocks / scales[:, None]), -qmax, qmax).reshape(w.shape).astype(np.int8), scales


def head_quantize_loops(w, n_heads, bits):
    """A loop over heads, rounding half away from zero, int64 codes."""
    qmax = 2 ** (bits - 1) - 1
    d = w.shape[0] // n_heads
    q = np.zeros(w.shape, dtype=np.int64)
    scales = np.ones(n_heads)
    for h in range(n_heads):
        rows = w[h * d : (h + 1) * d]
        peak = float(np.abs(rows).max())
        if peak > 0:
            scales[h] = peak / qmax
        q[h * d : (h + 1) * d] = np.clip(_round_away(rows / scales[h]), -qmax, qmax)
    return q, scales


def head_quantize_torch(w, n_heads, bits):
    t = torch.from_numpy(np.array(w))
    qmax = 2 ** (bits - 1) - 1
    blocks = t.view(n_heads, -1, t.shape[1])
    scales = blocks.abs().amax(dim=(1, 2)) / qmax
    scales = torch.where(scales > 0, scales, torch.ones_like(scales))
    return torch.round(blocks / scales[:, None, None]).clamp(-qmax, qmax).reshape(t.shape), scales


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


# ---------------------------------------------------------------------------------- right answers: tokenwise_quantize
def tokenwise_plain(x, bits):
    qmax = 2 ** (bits - 1) - 1
    scales = np.abs(x).max(axis=1) / qmax
    scales = np.where(scales > 0, scales, 1.0)
    return np.clip(np.round(x / scales[:, None]), -qmax, qmax).astype(np.int8), scales


def tokenwise_half_away(x, bits):
    qmax = 2 ** (bits - 1) - 1
    q = np.zeros(x.shape, dtype=np.int32)
    scales = []
    for t, row in enumerate(np.asarray(x, dtype=np.float64)):
        peak = max(abs(float(v)) for v in row)
        s = peak / qmax if peak > 0 else 1.0
        scales.append(s)
        q[t] = np.clip(_round_away(row / s), -qmax, qmax)
    return q, np.array(scales)


def tokenwise_torch(x, bits):
    t = torch.from_numpy(np.array(x))
    qmax = 2 ** (bits - 1) - 1
    scales = t.abs().amax(dim=1) / qmax
    scales = torch.where(scales > 0, scales, torch.ones_like(scales))
    return torch.round(t / scales[:, None]).clamp(-qmax, qmax).to(torch.int8), scales


RIGHT = [
    (E.check_head_quantize, head_quantize_plain),
    (E.check_head_quantize, head_quantize_loops),
    (E.check_head_quantize, head_quantize_torch),
    (E.check_peg_order, peg_order_plain),
    (E.check_peg_order, peg_order_descending),
    (E.check_peg_order, peg_order_shuffled_inside_groups),
    (E.check_peg_order, peg_order_torch),
    (E.check_tokenwise_quantize, tokenwise_plain),
    (E.check_tokenwise_quantize, tokenwise_half_away),
    (E.check_tokenwise_quantize, tokenwise_torch),
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
    w = rng.normal(size=(12, 8))
    q, scales = refs["head_quantize"][0](w, 3, 4)
    assert q.shape == (12, 8) and scales.shape == (3,)
    for h in range(3):  # each head is quantized like a tensor of its own
        qp = R.compute_qparams(w[4 * h : 4 * h + 4], 4)
        np.testing.assert_array_equal(q[4 * h : 4 * h + 4], R.quantize(w[4 * h : 4 * h + 4], qp))
        assert scales[h] == qp.scale.item()
    calib = rng.normal(size=(20, 12)) * rng.uniform(0.1, 5.0, size=12)
    perm = refs["peg_order"][0](calib, 4)
    np.testing.assert_array_equal(perm, R.peg_permutation(np.ptp(calib, axis=0), 4))
    x = rng.normal(size=(5, 9))
    q, scales = refs["tokenwise_quantize"][0](x, 8)
    qp = R.compute_qparams(x, 8, granularity="channel", axis=0)  # one scale per row
    np.testing.assert_array_equal(q, R.quantize(x, qp))
    np.testing.assert_allclose(scales, qp.scale.reshape(-1))


# ---------------------------------------------------------------------------------- the cases are fair
def _fractions(name, ref, case):
    """x / scale of every element, in float64 (where a rounding tie would sit at a half integer)."""
    _q, scales = ref(*case.args, **case.kwargs)
    x = np.asarray(case.args[0], dtype=np.float64)
    if name == "head_quantize":
        n_heads = case.args[1]
        full = np.repeat(np.asarray(scales, dtype=np.float64), x.shape[0] // n_heads)[:, None]
    else:
        full = np.asarray(scales, dtype=np.float64)[:, None]
    return x / full


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


@pytest.mark.parametrize("name, checker", [("head_quantize", E.check_head_quantize),
                                           ("tokenwise_quantize", E.check_tokenwise_quantize)])
def test_no_case_has_a_rounding_tie(name, checker):
    ref, cases = _used_cases(name, checker)
    for case in cases:
        v = _fractions(name, ref, case)
        # far from a tie, so half-even and half-away agree (float32 input: |x / scale| <= 127 carries an error
        # of about 127 * 2^-24 ~ 1e-5 in float32 arithmetic, so keep a wider margin there)
        margin = 1e-4 if np.asarray(case.args[0]).dtype == np.float32 else 1e-6
        assert np.abs(v - np.floor(v) - 0.5).min() > margin, case.args[1:]
    assert any(np.asarray(c.args[0]).dtype == np.float32 for c in cases)


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


# ---------------------------------------------------------------------------------- head_quantize mistakes
def _head(w, n_heads, bits, *, layout="rows", expand="repeat", div=None, lo=None, peak="abs"):
    out, n_in = w.shape
    d = out // n_heads
    qmax = 2 ** (bits - 1) - 1
    if layout == "rows":
        blocks = w.reshape(n_heads, d, n_in)
        m = np.abs(blocks).max(axis=(1, 2)) if peak == "abs" else blocks.max(axis=(1, 2))
        full = (np.repeat(m, d) if expand == "repeat" else np.tile(m, d))[:, None]
    elif layout == "strided":
        m = np.abs(w.reshape(d, n_heads, n_in)).max(axis=(0, 2))
        full = np.tile(m, d)[:, None]
    elif layout == "columns":
        m = np.abs(w.reshape(out, n_heads, n_in // n_heads)).max(axis=(0, 2))
        full = np.repeat(m, n_in // n_heads)[None, :]
    elif layout == "rowwise":
        m = np.abs(w).max(axis=1)
        full = m[:, None]
    else:  # one scale for everything
        m = np.full(n_heads, np.abs(w).max())
        full = np.full((out, 1), np.abs(w).max())
    scale_div = qmax if div is None else div
    scales = np.where(m != 0, m / scale_div, 1.0)
    full = np.where(full != 0, full / scale_div, 1.0)
    return np.clip(np.round(w / full), -qmax if lo is None else lo, qmax), scales


@pytest.mark.parametrize(
    "fn, hint",
    [
        (lambda w, n, b: _head(w, n, b, layout="columns"), "output ROWS"),  # fails on case 1 (24 % 12 == 0)
        (lambda w, n, b: _head(w, n, b, layout="strided"), "CONSECUTIVE"),
        (lambda w, n, b: _head(w, n, b, expand="tile"), "np.tile"),
        (lambda w, n, b: _head(w, n, b, layout="rowwise"), "per-channel"),
        (lambda w, n, b: _head(w, n, b, layout="tensor"), "same scale"),
        (lambda w, n, b: _head(w, n, b, div=2 ** (b - 1), lo=-(2 ** (b - 1))), "restricted"),
        (lambda w, n, b: _head(w, n, b, div=2 ** (b - 1)), "not by 2^(b-1)"),
        (lambda w, n, b: _head(w, n, b, peak="max"), "largest magnitude"),
    ],
)
def test_head_quantize_mistakes_get_their_hint(fn, hint):
    _fails(E.check_head_quantize(fn), "hint:", hint)


def test_head_quantize_shape_of_scales_is_checked():
    def per_head_2d(w, n_heads, bits):
        q, s = head_quantize_plain(w, n_heads, bits)
        return q, s[:, None]

    _fails(E.check_head_quantize(per_head_2d), "shape")


def test_head_quantize_zero_head_convention():
    def no_guard(w, n_heads, bits):
        qmax = 2 ** (bits - 1) - 1
        blocks = w.reshape(n_heads, -1)
        scales = np.abs(blocks).max(axis=1) / qmax
        with np.errstate(all="ignore"):
            q = np.nan_to_num(np.clip(np.round(blocks / scales[:, None]), -qmax, qmax))
        return q.reshape(w.shape), scales

    _fails(E.check_head_quantize(no_guard), "a head of zeros")


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


# ---------------------------------------------------------------------------------- tokenwise_quantize mistakes
def _tok(x, bits, *, axis=1, keep=False, div=None, lo=None, peak="abs", tensor=False):
    qmax = 2 ** (bits - 1) - 1
    if tensor:
        m = np.full(x.shape[0], np.abs(x).max())
    else:
        m = np.abs(x).max(axis=axis) if peak == "abs" else x.max(axis=axis)
    scales = np.where(m != 0, m / (qmax if div is None else div), 1.0)
    full = scales[None, :] if axis == 0 else scales[:, None]
    q = np.clip(np.round(x / full), -qmax if lo is None else lo, qmax)
    return q, scales[:, None] if keep else scales


@pytest.mark.parametrize(
    "fn, hint",
    [
        (lambda x, b: _tok(x, b, axis=0), "one scale per TOKEN"),
        (lambda x, b: _tok(x, b, keep=True), "1-D array"),
        (lambda x, b: _tok(x, b, tensor=True), "per-tensor"),
        (lambda x, b: _tok(x, b, div=2 ** (b - 1), lo=-(2 ** (b - 1))), "restricted"),
        (lambda x, b: _tok(x, b, div=2 ** (b - 1)), "not by 2^(b-1)"),
        (lambda x, b: _tok(x, b, peak="max"), "largest magnitude"),
    ],
)
def test_tokenwise_mistakes_get_their_hint(fn, hint):
    _fails(E.check_tokenwise_quantize(fn), "hint:", hint)


def test_tokenwise_padding_row_convention():
    def no_guard(x, bits):
        qmax = 2 ** (bits - 1) - 1
        scales = np.abs(x).max(axis=1) / qmax
        with np.errstate(all="ignore"):
            return np.nan_to_num(np.clip(np.round(x / scales[:, None]), -qmax, qmax)), scales

    _fails(E.check_tokenwise_quantize(no_guard), "padding token")


def test_tokenwise_q_must_be_integers():
    def dequantized(x, bits):
        q, s = tokenwise_plain(x, bits)
        return q * s[:, None], s

    _fails(E.check_tokenwise_quantize(dequantized), "output[0]")


# ---------------------------------------------------------------------------------- never crash
CHECKERS = [E.check_head_quantize, E.check_peg_order, E.check_tokenwise_quantize]


def test_all_names_exported():
    assert sorted(E.__all__) == ["check_head_quantize", "check_peg_order", "check_tokenwise_quantize"]
    from effx_lab.quant import exercises

    for name in E.__all__:
        assert getattr(exercises, name) is getattr(E, name)
