"""The 02.1 checkers (effx_lab.quant.exercises.fundamentals) accept right answers written in several styles,
both rounding conventions, and reject each classic mistake with its hint."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from _checks import fails as _fails

from effx_lab.check import Case, Diagnosis
from effx_lab.quant import reference as R
from effx_lab.quant.exercises import fundamentals as E


def _round_away(v):
    return np.sign(v) * np.floor(np.abs(v) + 0.5)


# ---------------------------------------------------------------------------------- right answers
def quantize_symmetric_plain(x, bits, clip_ratio=1.0):
    qmax = 2 ** (bits - 1) - 1
    peak = np.abs(x).max()
    scale = clip_ratio * peak / qmax if peak > 0 else 1.0
    return np.clip(np.round(x / scale), -qmax, qmax).astype(np.int8), scale


def quantize_symmetric_half_away(x, bits, clip_ratio=1.0):
    """Rounds half away from zero, loops over elements, returns Python ints in a list-free int64 array."""
    qmax = 2 ** (bits - 1) - 1
    flat = np.asarray(x, dtype=np.float64).reshape(-1)
    peak = max(abs(float(v)) for v in flat)
    scale = clip_ratio * peak / qmax if peak > 0 else 1.0
    q = np.empty(flat.shape, dtype=np.int64)
    for i, v in enumerate(flat):
        q[i] = min(max(int(_round_away(v / scale)), -qmax), qmax)
    return q.reshape(np.shape(x)), scale


def quantize_symmetric_torch(x, bits, clip_ratio=1.0):
    t = torch.from_numpy(np.array(x))
    qmax = 2 ** (bits - 1) - 1
    peak = t.abs().max()
    scale = clip_ratio * peak / qmax if peak > 0 else torch.tensor(1.0, dtype=t.dtype)
    return torch.clamp(torch.round(t / scale), -qmax, qmax), float(scale)


def quantize_symmetric_clip_x_first(x, bits, clip_ratio=1.0):
    """Clips x to [-c, c] before rounding (equivalent to clipping q)."""
    qmax = 2 ** (bits - 1) - 1
    c = clip_ratio * np.abs(x).max()
    if c == 0:
        return np.zeros(np.shape(x), dtype=np.int32), 1.0
    scale = c / qmax
    return np.round(np.clip(x, -c, c) / scale).astype(np.int32), scale


def affine_qparams_plain(x, bits):
    lo, hi = min(x.min(), 0.0), max(x.max(), 0.0)
    if hi == lo:
        return 1.0, 0
    scale = (hi - lo) / (2**bits - 1)
    return scale, int(np.clip(np.round(-lo / scale), 0, 2**bits - 1))


def affine_qparams_other_style(x, bits):
    """qmax - hi / scale instead of -lo / scale, rounding half away, a float zero point with a whole value."""
    qmax = 2**bits - 1
    lo, hi = float(np.minimum(np.min(x), 0)), float(np.maximum(np.max(x), 0))
    if hi - lo == 0:
        return np.float64(1.0), 0.0
    scale = (hi - lo) / qmax
    return np.float64(scale), float(min(max(_round_away(qmax - hi / scale), 0), qmax))


def quantize_per_group_plain(w, bits, group_size):
    out, k = w.shape
    qmax = 2 ** (bits - 1) - 1
    scales = np.abs(w.reshape(out, k // group_size, group_size)).max(axis=-1) / qmax
    scales = np.where(scales > 0, scales, 1.0)
    full = np.repeat(scales, group_size, axis=1)
    return np.clip(np.round(w / full), -qmax, qmax).astype(np.int8), scales


def quantize_per_group_loops(w, bits, group_size):
    out, k = w.shape
    qmax = 2 ** (bits - 1) - 1
    q = np.zeros((out, k), dtype=np.int64)
    scales = np.ones((out, k // group_size))
    for r in range(out):
        for g in range(k // group_size):
            cols = slice(g * group_size, (g + 1) * group_size)
            peak = np.abs(w[r, cols]).max()
            if peak > 0:
                scales[r, g] = peak / qmax
            q[r, cols] = np.clip(_round_away(w[r, cols] / scales[r, g]), -qmax, qmax)
    return q, scales


def quantize_per_group_torch(w, bits, group_size):
    t = torch.from_numpy(np.array(w))
    out, k = t.shape
    qmax = 2 ** (bits - 1) - 1
    scales = t.view(out, -1, group_size).abs().amax(dim=-1) / qmax
    scales = torch.where(scales > 0, scales, torch.ones_like(scales))
    q = torch.round(t.view(out, -1, group_size) / scales[..., None]).clamp(-qmax, qmax).reshape(out, k)
    return q.to(torch.int8), scales


RIGHT = [
    (E.check_quantize_symmetric, quantize_symmetric_plain),
    (E.check_quantize_symmetric, quantize_symmetric_half_away),
    (E.check_quantize_symmetric, quantize_symmetric_torch),
    (E.check_quantize_symmetric, quantize_symmetric_clip_x_first),
    (E.check_affine_qparams, affine_qparams_plain),
    (E.check_affine_qparams, affine_qparams_other_style),
    (E.check_quantize_per_group, quantize_per_group_plain),
    (E.check_quantize_per_group, quantize_per_group_loops),
    (E.check_quantize_per_group, quantize_per_group_torch),
]


@pytest.mark.parametrize("checker, fn", RIGHT, ids=lambda v: getattr(v, "__name__", ""))
def test_right_answers_pass(checker, fn, capsys):
    result = checker(fn)
    assert result.passed is True, result.message
    assert result.n_passed == result.n_cases >= 10
    assert "passed all" in capsys.readouterr().out


def test_references_match_the_package():
    refs = E._cases_for_tests()
    x = np.random.default_rng(0).normal(size=(4, 8))
    q, scale = refs["quantize_symmetric"][0](x, 4)
    qp = R.compute_qparams(x, 4)
    np.testing.assert_array_equal(q, R.quantize(x, qp))
    assert scale == float(qp.scale.item())
    assert refs["affine_qparams"][0](x, 8) == (float(R.compute_qparams(x, 8, False).scale.item()),
                                               int(R.compute_qparams(x, 8, False).zero_point.item()))
    qg, sg = refs["quantize_per_group"][0](x, 4, 4)
    assert qg.shape == (4, 8) and sg.shape == (4, 2)


# ---------------------------------------------------------------------------------- no ties: both conventions agree
def _fractions(name, ref, case):
    out = ref(*case.args, **case.kwargs)
    x = np.asarray(case.args[0], dtype=np.float64)
    if name == "quantize_symmetric":
        return x / out[1]
    if name == "affine_qparams":
        lo = min(x.min(), 0.0)
        return np.array([-lo / out[0]])
    scales = np.repeat(out[1].astype(np.float64), case.args[2], axis=1)
    return x / scales


@pytest.mark.parametrize("name", ["quantize_symmetric", "affine_qparams", "quantize_per_group"])
def test_no_case_has_a_rounding_tie(name):
    ref, make = E._cases_for_tests()[name]
    cases = make(np.random.default_rng(123))
    for case in cases:
        v = _fractions(name, ref, case)
        frac = np.abs(v - np.floor(v) - 0.5)
        assert frac.min() > 1e-6, (name, case.label)  # far from a tie: half-even and half-away agree
    assert any(np.asarray(c.args[0]).dtype == np.float32 for c in cases)


@pytest.mark.parametrize("name", ["quantize_symmetric", "affine_qparams", "quantize_per_group"])
def test_checker_cases_have_no_ties(name):
    """The cases the checker actually uses (its generator is seeded from the exercise's name)."""
    seen = []

    def spy(*args, **kwargs):
        seen.append(Case("x", args, kwargs))
        return E._cases_for_tests()[name][0](*args, **kwargs)

    checker = {"quantize_symmetric": E.check_quantize_symmetric, "affine_qparams": E.check_affine_qparams,
               "quantize_per_group": E.check_quantize_per_group}[name]
    assert checker(spy).passed
    ref = E._cases_for_tests()[name][0]
    for case in seen:
        v = _fractions(name, ref, case)
        assert np.abs(v - np.floor(v) - 0.5).min() > 1e-6
    assert len(seen) >= 10


def test_every_hint_is_reachable():
    """Each listed mistake differs from the right answer on at least one case (else its hint is dead)."""
    lists = {"quantize_symmetric": E._SYMMETRIC_MISTAKES, "affine_qparams": E._AFFINE_MISTAKES,
             "quantize_per_group": E._GROUP_MISTAKES}
    for name, mistakes in lists.items():
        ref, make = E._cases_for_tests()[name]
        cases = make(np.random.default_rng(7))
        diag = Diagnosis(ref, mistakes, rtol=1e-5, atol=1e-12, exact=False)
        for m in mistakes:
            reachable = False
            for c in cases:
                with np.errstate(all="ignore"):
                    wrong = m.wrong(*c.args, **c.kwargs)
                if wrong is not None and not diag.close(wrong, ref(*c.args, **c.kwargs)):
                    reachable = True
                    break
            assert reachable, (name, m.hint)


# ---------------------------------------------------------------------------------- quantize_symmetric mistakes
def _sym(x, bits, clip_ratio=1.0, *, div=None, lo=None, clip=True, peak=None, rnd=np.round, ratio=None):
    qmax = 2 ** (bits - 1) - 1
    m = np.abs(x).max() if peak is None else peak(x)
    r = clip_ratio if ratio is None else ratio(clip_ratio)
    scale = r * m / (qmax if div is None else div) if m != 0 else 1.0
    q = rnd(x / scale)
    if clip:
        q = np.clip(q, -qmax if lo is None else lo, qmax)
    return q, scale


@pytest.mark.parametrize(
    "fn, hint",
    [
        (lambda x, b, clip_ratio=1.0: _sym(x, b, clip_ratio, div=2 ** (b - 1), lo=-(2 ** (b - 1))), "restricted"),
        (lambda x, b, clip_ratio=1.0: _sym(x, b, clip_ratio, div=2 ** (b - 1)), "not by 2^(b-1)"),
        (lambda x, b, clip_ratio=1.0: _sym(x, b, clip_ratio, lo=-(2 ** (b - 1))), "leaves -2^(b-1)"),
        (lambda x, b, clip_ratio=1.0: _sym(x, b, clip_ratio, clip=False), "must saturate"),
        (lambda x, b, clip_ratio=1.0: _sym(x, b, clip_ratio, peak=np.max), "largest magnitude"),
        (lambda x, b, clip_ratio=1.0: _sym(x, b, clip_ratio, peak=np.max, clip=False), "largest magnitude"),
        (lambda x, b, clip_ratio=1.0: (np.clip((x / _sym(x, b, clip_ratio)[1]).astype(int), -(2 ** (b - 1) - 1),
                                               2 ** (b - 1) - 1), _sym(x, b, clip_ratio)[1]), "np.trunc"),
        (lambda x, b, clip_ratio=1.0: _sym(x, b, clip_ratio, rnd=np.floor), "np.floor"),
        (lambda x, b, clip_ratio=1.0: _sym(x, b, clip_ratio, div=(2**b - 1) / 2), "2^b - 2 steps"),
        (lambda x, b, clip_ratio=1.0: _sym(x, b, clip_ratio, ratio=lambda r: 1.0), "use clip_ratio"),
        (lambda x, b, clip_ratio=1.0: _sym(x, b, clip_ratio, ratio=lambda r: 1 / r), "multiply by clip_ratio"),
    ],
)
def test_quantize_symmetric_mistakes_get_their_hint(fn, hint):
    _fails(E.check_quantize_symmetric(fn), "hint:", hint)


def test_quantize_symmetric_without_the_zero_guard_fails_on_zeros():
    def no_guard(x, bits, clip_ratio=1.0):
        qmax = 2 ** (bits - 1) - 1
        scale = clip_ratio * np.abs(x).max() / qmax
        with np.errstate(all="ignore"):
            return np.nan_to_num(np.clip(np.round(x / scale), -qmax, qmax)), scale

    _fails(E.check_quantize_symmetric(no_guard), "all zeros")


def test_quantize_symmetric_q_must_be_integers():
    def dequantized(x, bits, clip_ratio=1.0):
        q, scale = quantize_symmetric_plain(x, bits, clip_ratio)
        return q * scale, scale  # x_hat instead of q

    _fails(E.check_quantize_symmetric(dequantized), "output[0]")


# ---------------------------------------------------------------------------------- affine_qparams mistakes
def _aff(x, bits, *, widen=True, steps=None, zero=None, clip=True):
    lo, hi = float(x.min()), float(x.max())
    if widen:
        lo, hi = min(lo, 0.0), max(hi, 0.0)
    if hi == lo:
        return 1.0, 0
    scale = (hi - lo) / ((2**bits - 1) if steps is None else steps(bits))
    zp = np.round(-lo / scale) if zero is None else zero(lo, scale)
    if clip:
        zp = np.clip(zp, 0, 2**bits - 1)
    return scale, zp


@pytest.mark.parametrize(
    "fn, hint",
    [
        (lambda x, b: _aff(x, b, zero=lambda lo, s: -lo / s, clip=False), "round the zero point"),
        (lambda x, b: _aff(x, b, zero=lambda lo, s: -lo / s), "round the zero point"),
        (lambda x, b: _aff(x, b, widen=False, clip=False), "widen the range"),
        (lambda x, b: _aff(x, b, widen=False), "widen the range"),
        (lambda x, b: _aff(x, b, steps=lambda b: 2**b), "2^b - 1 steps"),
        (lambda x, b: _aff(x, b, zero=lambda lo, s: np.round(lo / s), clip=False), "minus sign"),
        (lambda x, b: _aff(x, b, zero=lambda lo, s: np.round(lo / s)), "minus sign"),
        (lambda x, b: _aff(x, b, zero=lambda lo, s: int(-lo / s)), "do not truncate"),
        (lambda x, b: (np.abs(x).max() / (2 ** (b - 1) - 1), 0) if np.any(x) else (1.0, 0), "symmetric scheme"),
    ],
)
def test_affine_qparams_mistakes_get_their_hint(fn, hint):
    _fails(E.check_affine_qparams(fn), "hint:", hint)


def test_affine_qparams_all_zeros_convention():
    def nan_scale(x, bits):
        if not np.any(x):
            return 0.0, 0
        return affine_qparams_plain(x, bits)

    _fails(E.check_affine_qparams(nan_scale), "all zeros")


# ---------------------------------------------------------------------------------- quantize_per_group mistakes
def _grp(w, bits, g, *, strided=False, tile=False, div=None, lo=None, peak="abs"):
    out, k = w.shape
    qmax = 2 ** (bits - 1) - 1
    blocks = w.reshape(out, g, k // g) if strided else w.reshape(out, k // g, g)
    axis = 1 if strided else 2
    m = np.abs(blocks).max(axis=axis) if peak == "abs" else blocks.max(axis=axis)
    scales = m / (qmax if div is None else div)
    scales = np.where(scales != 0, scales, 1.0)
    full = np.tile(scales, (1, g)) if (strided or tile) else np.repeat(scales, g, axis=1)
    return np.clip(np.round(w / full), -qmax if lo is None else lo, qmax), scales


@pytest.mark.parametrize(
    "fn, hint",
    [
        (lambda w, b, g: _grp(w, b, g, strided=True), "CONSECUTIVE"),
        (lambda w, b, g: _grp(w, b, g, tile=True), "np.tile"),
        (lambda w, b, g: _grp(w, b, g, div=2 ** (b - 1), lo=-(2 ** (b - 1))), "restricted"),
        (lambda w, b, g: _grp(w, b, g, div=2 ** (b - 1)), "not by 2^(b-1)"),
        (lambda w, b, g: _grp(w, b, g, peak="max"), "largest magnitude"),
    ],
)
def test_quantize_per_group_mistakes_get_their_hint(fn, hint):
    _fails(E.check_quantize_per_group(fn), "hint:", hint)


def test_quantize_per_group_shape_of_scales_is_checked():
    def per_row(w, bits, g):
        q, s = quantize_per_group_plain(w, bits, g)
        return q, s.reshape(-1)  # flattened scales

    _fails(E.check_quantize_per_group(per_row), "shape")


# ---------------------------------------------------------------------------------- never crash


def test_diagnosis_compares_tuples_element_by_element():
    diag = Diagnosis(lambda: None, [], rtol=1e-5, atol=0.0, exact=False)
    assert diag.close((np.arange(3), 1.0), (np.arange(3), 1.0))
    assert not diag.close((np.arange(3), 1.0), (np.arange(3), 2.0))
    assert not diag.close((np.arange(3), 1.0), np.arange(3))
    assert not diag.close((np.arange(3),), (np.arange(3), 1.0))


def test_all_names_exported():
    assert sorted(E.__all__) == ["check_affine_qparams", "check_quantize_per_group", "check_quantize_symmetric"]
    from effx_lab.quant import exercises

    for name in E.__all__:
        assert getattr(exercises, name) is getattr(E, name)
