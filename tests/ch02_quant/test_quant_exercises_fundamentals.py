"""The 02.1 checkers (effx_lab.quant.exercises.fundamentals) accept right answers written in several styles,
both rounding conventions, and reject each classic mistake with its hint."""
from __future__ import annotations

import math

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


def bits_per_weight_plain(shape, bits, granularity, group_size=None, scale_bits=16):
    n_out, n_in = shape
    n_scales = {"tensor": 1, "channel": n_out}.get(granularity)
    if n_scales is None:
        n_scales = n_out * math.ceil(n_in / group_size)
    return bits + n_scales * scale_bits / (n_out * n_in)


def bits_per_weight_bytes_first(shape, bits, granularity, group_size=None, scale_bits=16):
    """Counts the total storage in bits as an int, then divides once (a NumPy float)."""
    n_out, n_in = np.int64(shape[0]), np.int64(shape[1])
    if granularity == "tensor":
        n_scales = 1
    elif granularity == "channel":
        n_scales = n_out
    else:
        n_scales = n_out * (-(-n_in // group_size))
    return (bits * n_out * n_in + n_scales * scale_bits) / (n_out * n_in)


def bits_per_weight_by_groups(shape, bits, granularity, group_size=None, scale_bits=16):
    """Every granularity as groups: the whole tensor, a whole row, or group_size inputs (a loop over rows)."""
    n_out, n_in = shape
    if granularity == "tensor":
        return bits + scale_bits / (n_out * n_in)
    size = n_in if granularity == "channel" else group_size
    total = 0
    for _ in range(n_out):
        start = 0
        while start < n_in:
            total += scale_bits
            start += size
    return bits + total / (n_out * n_in)


RIGHT = [
    (E.check_quantize_symmetric, quantize_symmetric_plain),
    (E.check_quantize_symmetric, quantize_symmetric_half_away),
    (E.check_quantize_symmetric, quantize_symmetric_torch),
    (E.check_quantize_symmetric, quantize_symmetric_clip_x_first),
    (E.check_affine_qparams, affine_qparams_plain),
    (E.check_affine_qparams, affine_qparams_other_style),
    (E.check_bits_per_weight, bits_per_weight_plain),
    (E.check_bits_per_weight, bits_per_weight_bytes_first),
    (E.check_bits_per_weight, bits_per_weight_by_groups),
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
    # bits_per_weight counts what the packed format stores: 4-bit codes two per byte, fp16 scales
    w = np.random.default_rng(1).normal(size=(6, 40))
    for granularity, kw in (("tensor", {}), ("channel", {"axis": 0}), ("group", {"axis": -1, "group_size": 8})):
        qp = R.compute_qparams(w, 4, granularity=granularity, **kw)
        stored = R.pack_int4(R.quantize(w, qp)).nbytes + qp.scale.astype(np.float16).nbytes
        predicted = refs["bits_per_weight"][0](w.shape, 4, granularity, kw.get("group_size"), 16)
        assert predicted == pytest.approx(8 * stored / w.size, rel=1e-12)


# ---------------------------------------------------------------------------------- no ties: both conventions agree
def _fractions(name, ref, case):
    out = ref(*case.args, **case.kwargs)
    x = np.asarray(case.args[0], dtype=np.float64)
    if name == "quantize_symmetric":
        return x / out[1]
    if name == "affine_qparams":
        lo = min(x.min(), 0.0)
        return np.array([-lo / out[0]])
    raise AssertionError(name)


@pytest.mark.parametrize("name", ["quantize_symmetric", "affine_qparams"])
def test_no_case_has_a_rounding_tie(name):
    ref, make = E._cases_for_tests()[name]
    cases = make(np.random.default_rng(123))
    for case in cases:
        v = _fractions(name, ref, case)
        frac = np.abs(v - np.floor(v) - 0.5)
        assert frac.min() > 1e-6, (name, case.label)  # far from a tie: half-even and half-away agree
    assert any(np.asarray(c.args[0]).dtype == np.float32 for c in cases)


@pytest.mark.parametrize("name", ["quantize_symmetric", "affine_qparams"])
def test_checker_cases_have_no_ties(name):
    """The cases the checker actually uses (its generator is seeded from the exercise's name)."""
    seen = []

    def spy(*args, **kwargs):
        seen.append(Case("x", args, kwargs))
        return E._cases_for_tests()[name][0](*args, **kwargs)

    checker = {"quantize_symmetric": E.check_quantize_symmetric, "affine_qparams": E.check_affine_qparams}[name]
    assert checker(spy).passed
    ref = E._cases_for_tests()[name][0]
    for case in seen:
        v = _fractions(name, ref, case)
        assert np.abs(v - np.floor(v) - 0.5).min() > 1e-6
    assert len(seen) >= 10


def test_every_hint_is_reachable():
    """Each listed mistake differs from the right answer on at least one case (else its hint is dead)."""
    lists = {"quantize_symmetric": E._SYMMETRIC_MISTAKES, "affine_qparams": E._AFFINE_MISTAKES,
             "bits_per_weight": E._BPW_MISTAKES}
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


# ---------------------------------------------------------------------------------- bits_per_weight mistakes
def _bpw(shape, bits, granularity, group_size=None, scale_bits=16, *, count=None, per=None):
    n_out, n_in = shape
    if count is None:
        count = {"tensor": lambda: 1, "channel": lambda: n_out,
                 "group": lambda: n_out * math.ceil(n_in / group_size)}[granularity]()
    else:
        count = count(shape, granularity, group_size)
    return bits + count * scale_bits / (n_out * n_in if per is None else per(shape))


def _right_count(shape, granularity, group_size):
    return {"tensor": 1, "channel": shape[0]}.get(granularity) or shape[0] * math.ceil(shape[1] / (group_size or 1))


@pytest.mark.parametrize(
    "fn, hint",
    [
        (lambda shape, bits, granularity, group_size=None, scale_bits=16: bits, "code bits alone"),
        (lambda shape, bits, granularity, group_size=None, scale_bits=16: (
            bits * shape[0] * shape[1] + _right_count(shape, granularity, group_size) * scale_bits
        ) // (shape[0] * shape[1]), "integer division"),
        (lambda *a, **k: _bpw(*a, **k, count=lambda s, g, gs: s[1] if g == "channel" else _right_count(s, g, gs)),
         "OUTPUT channel"),
        (lambda *a, **k: _bpw(*a, **k, count=lambda s, g, gs: s[0] * s[1] / gs if g == "group"
                              else _right_count(s, g, gs)), "last group is shorter"),
        (lambda *a, **k: _bpw(*a, **k, count=lambda s, g, gs: math.ceil(s[0] * s[1] / gs) if g == "group"
                              else _right_count(s, g, gs)), "never spans two rows"),
        (lambda *a, **k: _bpw(*a, **k, count=lambda s, g, gs: math.ceil(s[1] / gs) if g == "group"
                              else _right_count(s, g, gs)), "every row has its own groups"),
        (lambda *a, **k: _bpw(*a, **k, per=lambda s: s[0]), "not over the out rows"),
        (lambda *a, **k: _bpw(*a, **k) / 8, "not bytes"),
        (lambda shape, bits, granularity, group_size=None, scale_bits=16: _bpw(
            shape, bits, granularity, group_size, scale_bits / 8), "already in bits"),
    ],
)
def test_bits_per_weight_mistakes_get_their_hint(fn, hint):
    _fails(E.check_bits_per_weight(fn), "hint:", hint)


def test_bits_per_weight_must_accept_group_size_none():
    def group_size_required(shape, bits, granularity, group_size, scale_bits):
        return bits_per_weight_plain(shape, bits, granularity, group_size, scale_bits)

    _fails(E.check_bits_per_weight(group_size_required), "could not call your function", "group_size=None")


# ---------------------------------------------------------------------------------- never crash


def test_diagnosis_compares_tuples_element_by_element():
    diag = Diagnosis(lambda: None, [], rtol=1e-5, atol=0.0, exact=False)
    assert diag.close((np.arange(3), 1.0), (np.arange(3), 1.0))
    assert not diag.close((np.arange(3), 1.0), (np.arange(3), 2.0))
    assert not diag.close((np.arange(3), 1.0), np.arange(3))
    assert not diag.close((np.arange(3),), (np.arange(3), 1.0))


def test_all_names_exported():
    assert sorted(E.__all__) == ["check_affine_qparams", "check_bits_per_weight", "check_quantize_symmetric"]
    from effx_lab.quant import exercises

    for name in E.__all__:
        assert getattr(exercises, name) is getattr(E, name)
