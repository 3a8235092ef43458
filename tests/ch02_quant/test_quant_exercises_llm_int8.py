"""The 02.3 checkers (effx_lab.quant.exercises.llm_int8) accept right answers written in several styles and
precisions, reject each classic mistake with its hint, and never crash on a student's error."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from _checks import fails as _fails

from effx_lab.check import Case, Diagnosis
from effx_lab.quant import reference as R
from effx_lab.quant.exercises import llm_int8 as E

NAMES = ["vectorwise_quantize", "vectorwise_matmul", "llm_int8_matmul"]
CHECKERS = {name: getattr(E, f"check_{name}") for name in NAMES}


def _round_away(v):
    return np.sign(v) * np.floor(np.abs(v) + 0.5)


# ---------------------------------------------------------------------------------- right answers
def vq_plain(x, bits=8):
    qmax = 2 ** (bits - 1) - 1
    peak = np.abs(x).max(axis=1)
    scale = np.where(peak > 0, peak / qmax, 1.0)
    return np.round(x / scale[:, None]).astype(np.int8), scale


def vq_keepdims_half_away_float64(x, bits=8):
    """[M, 1] scales, computed in float64 even for float32 input, rounding half away from zero, float q."""
    a = np.asarray(x, dtype=np.float64)
    qmax = 2 ** (bits - 1) - 1
    peak = np.max(np.abs(a), axis=1, keepdims=True)
    scale = np.where(peak == 0, 1.0, peak / qmax)
    return np.clip(_round_away(a / scale), -qmax, qmax), scale


def vq_loops(x, bits=8):
    qmax = 2 ** (bits - 1) - 1
    m, k = x.shape
    q = np.zeros((m, k), dtype=np.int64)
    scale = np.ones(m)
    for i in range(m):
        peak = max(abs(float(v)) for v in x[i])
        if peak > 0:
            scale[i] = peak / qmax
        for j in range(k):
            q[i, j] = round(float(x[i, j]) / scale[i])  # Python's round: half to even
    return q, scale


def vq_torch(x, bits=8):
    t = torch.from_numpy(np.array(x))
    qmax = 2 ** (bits - 1) - 1
    peak = t.abs().amax(dim=1)
    scale = torch.where(peak > 0, peak / qmax, torch.ones_like(peak))
    return torch.round(t / scale[:, None]).to(torch.int32), scale


def vm_plain(x, w):
    qx, sx = vq_plain(x)
    qw, sw = vq_plain(w)
    return (qx.astype(np.int32) @ qw.astype(np.int32).T) * sx[:, None] * sw[None, :]


def vm_dequantize_first_float64(x, w):
    """Dequantize, then a float64 matmul: the same numbers up to rounding (and float64 for float32 input)."""
    qx, sx = vq_keepdims_half_away_float64(x)
    qw, sw = vq_keepdims_half_away_float64(w)
    return (qx * sx) @ (qw * sw).T


def vm_int64_einsum(x, w):
    qx, sx = vq_loops(x, 8)
    qw, sw = vq_loops(w, 8)
    acc = np.einsum("tk,nk->tn", qx.astype(np.int64), qw.astype(np.int64))
    return acc * np.outer(sx, sw)


def vm_torch(x, w):
    qx, sx = vq_torch(x)
    qw, sw = vq_torch(w)
    acc = qx.double() @ qw.double().T  # exact integers in float64
    return acc * sx[:, None].double() * sw[None, :].double()


def lm_plain(x, w, threshold=6.0):
    cols = np.abs(x).max(axis=0) > threshold
    y = x[:, cols] @ w[:, cols].T
    if (~cols).any():
        y = y + vm_plain(x[:, ~cols], w[:, ~cols])
    return y


def lm_loops_float64(x, w, threshold=6.0):
    """Column loop, float64 throughout, zero-filled regular matrix instead of slicing."""
    a, b = np.asarray(x, dtype=np.float64), np.asarray(w, dtype=np.float64)
    outlier = np.array([bool(np.any(np.abs(a[:, j]) > threshold)) for j in range(a.shape[1])])
    y = np.zeros((a.shape[0], b.shape[0]))
    for j in np.flatnonzero(outlier):
        y += np.outer(a[:, j], b[:, j])
    if not outlier.all():
        y += vm_dequantize_first_float64(a[:, ~outlier], b[:, ~outlier])
    return y


def lm_torch(x, w, threshold=6.0):
    xt, wt = torch.from_numpy(np.array(x)), torch.from_numpy(np.array(w))
    cols = xt.abs().amax(dim=0) > threshold
    y = xt[:, cols].double() @ wt[:, cols].double().T
    if bool((~cols).any()):
        y = y + vm_torch(xt[:, ~cols].numpy(), wt[:, ~cols].numpy())
    return y


RIGHT = [
    ("vectorwise_quantize", vq_plain),
    ("vectorwise_quantize", vq_keepdims_half_away_float64),
    ("vectorwise_quantize", vq_loops),
    ("vectorwise_quantize", vq_torch),
    ("vectorwise_matmul", vm_plain),
    ("vectorwise_matmul", vm_dequantize_first_float64),
    ("vectorwise_matmul", vm_int64_einsum),
    ("vectorwise_matmul", vm_torch),
    ("llm_int8_matmul", lm_plain),
    ("llm_int8_matmul", lm_loops_float64),
    ("llm_int8_matmul", lm_torch),
]


@pytest.mark.parametrize("name, fn", RIGHT, ids=lambda v: getattr(v, "__name__", v))
def test_right_answers_pass(name, fn, capsys):
    result = CHECKERS[name](fn)
    assert result.passed is True, result.message
    assert result.n_passed == result.n_cases >= 10
    assert "passed all" in capsys.readouterr().out


def test_references_match_the_package():
    refs = E._cases_for_tests()
    rng = np.random.default_rng(0)
    x, w = rng.normal(size=(5, 12)), rng.normal(size=(4, 12))
    x[:, 3] = 20.0
    q, scale = refs["vectorwise_quantize"][0](x, 8)
    q_pkg, s_pkg = R.absmax_quantize(x)
    np.testing.assert_array_equal(q, q_pkg)
    assert scale.shape == (5,)
    np.testing.assert_allclose(scale, s_pkg[:, 0])
    np.testing.assert_allclose(refs["vectorwise_matmul"][0](x, w), R.vectorwise_linear(x, w))
    np.testing.assert_allclose(refs["llm_int8_matmul"][0](x, w), R.llm_int8_linear(x, w, threshold=6.0))
    np.testing.assert_allclose(refs["llm_int8_matmul"][0](x, w, threshold=0.0), x @ w.T, rtol=1e-12)


# ---------------------------------------------------------------------------------- no rounding ties
def _quantized_operands(name: str, case: Case) -> list[np.ndarray]:
    """Every 2-D array the exercise quantizes by rows on this case (x, w, or the regular columns of both)."""
    x = np.asarray(case.args[0])
    if name == "vectorwise_quantize":
        return [x]
    w = np.asarray(case.args[1])
    if name == "vectorwise_matmul":
        return [x, w]
    threshold = case.kwargs.get("threshold", 6.0)
    regular = ~(np.abs(x).max(axis=0) > threshold)
    return [x[:, regular], w[:, regular]] if regular.any() else []


def _tie_distance(a: np.ndarray, bits: int = 8) -> float:
    """Smallest distance of a row-scaled value ``a / scale`` to a rounding tie (k + 1/2), in float64."""
    qmax = 2 ** (bits - 1) - 1
    a64 = a.astype(np.float64)
    peak = np.abs(a64).max(axis=1, keepdims=True)
    v = a64 / np.where(peak > 0, peak / qmax, 1.0)
    return float(np.abs(v - np.floor(v) - 0.5).min())


@pytest.mark.parametrize("name", NAMES)
def test_checker_cases_are_far_from_rounding_ties(name):
    """The cases the checker actually uses (seeded from the exercise's name): half-even, half-away, float32
    and float64 arithmetic all give the same integers (float32 needs a wider margin: its ulp at 127 is 8e-6)."""
    seen: list[Case] = []
    ref = E._cases_for_tests()[name][0]

    def spy(*args, **kwargs):
        seen.append(Case("x", args, kwargs))
        return ref(*args, **kwargs)

    assert CHECKERS[name](spy).passed
    assert len(seen) >= 10
    assert any(np.asarray(c.args[0]).dtype == np.float32 for c in seen)
    for case in seen:
        bits = case.args[1] if name == "vectorwise_quantize" and len(case.args) > 1 else 8
        margin = 1e-4 if np.asarray(case.args[0]).dtype == np.float32 else 1e-6
        for a in _quantized_operands(name, case):
            assert _tie_distance(a, bits) > margin, (name, case.label)


def test_every_hint_is_reachable():
    """Each listed mistake differs from the right answer on at least one case (else its hint is dead)."""
    for name, (ref, make, mistakes) in E._cases_for_tests().items():
        cases = make(np.random.default_rng(7))
        diag = Diagnosis(ref, [], rtol=1e-4, atol=1e-5, exact=False)
        for m in mistakes:
            reachable = False
            for c in cases:
                with np.errstate(all="ignore"):
                    wrong = m.wrong(*c.args, **c.kwargs)
                expected = ref(*c.args, **c.kwargs)
                if wrong is not None and not _close_any(diag, wrong, expected):
                    reachable = True
                    break
            assert reachable, (name, m.hint)


def _close_any(diag, a, b) -> bool:
    if isinstance(a, tuple) and isinstance(b, tuple):
        return len(a) == len(b) and all(_close_any(diag, x, y) for x, y in zip(a, b))
    return diag.close(a, b)


# ---------------------------------------------------------------------------------- vectorwise_quantize mistakes
def _vq(x, bits=8, *, axis=1, div=None, lo=None, peak=None, rnd=np.round, zero=1.0, per_tensor=False):
    qmax = 2 ** (bits - 1) - 1
    a = np.asarray(x, dtype=np.float64)
    m = np.abs(a).max(axis=axis) if peak is None else peak(a, axis)
    if per_tensor:
        m = np.full(a.shape[0], np.abs(a).max())
    scale = m / (qmax if div is None else div(bits))
    if zero is not None:
        scale = np.where(m != 0, scale, zero)
    s = scale[:, None] if axis == 1 else scale[None, :]
    with np.errstate(all="ignore"):
        return np.clip(rnd(a / s), -qmax if lo is None else lo(bits), qmax), scale


@pytest.mark.parametrize(
    "fn, hint",
    [
        (lambda x, bits=8: _vq(x, bits, axis=0), "one scale per ROW"),
        (lambda x, bits=8: _vq(x, bits, per_tensor=True), "not one for the whole matrix"),
        (lambda x, bits=8: _vq(x, bits, div=lambda b: 2 ** (b - 1), lo=lambda b: -(2 ** (b - 1))), "restricted"),
        (lambda x, bits=8: _vq(x, bits, div=lambda b: 2 ** (b - 1)), "not by 2^(b-1)"),
        (lambda x, bits=8: _vq(x, 8), "use the bits argument"),
        (lambda x, bits=8: _vq(x, bits, peak=lambda a, axis: a.max(axis=axis)), "largest MAGNITUDE"),
        (lambda x, bits=8: (np.clip(np.trunc(x / _vq(x, bits)[1][:, None]), -127, 127), _vq(x, bits)[1]), "np.trunc"),
        (lambda x, bits=8: _vq(x, bits, rnd=np.floor), "np.floor"),
        (lambda x, bits=8: _vq(x, bits, zero=None), "0 / 0 = NaN"),
    ],
)
def test_vectorwise_quantize_mistakes_get_their_hint(fn, hint):
    _fails(E.check_vectorwise_quantize(fn), "hint:", hint)


def test_vectorwise_quantize_zero_scale_gets_a_hint():
    def zero_scale(x, bits=8):
        q, s = vq_plain(x, bits) if np.all(np.abs(x).max(axis=1) > 0) else (None, None)
        if q is None:
            qmax = 2 ** (bits - 1) - 1
            s = np.abs(x).max(axis=1) / qmax
            with np.errstate(all="ignore"):
                q = np.nan_to_num(np.round(x / s[:, None]))
        return q, s

    _fails(E.check_vectorwise_quantize(zero_scale), "all-zero row", "hint:", "not 0")


def test_vectorwise_quantize_scale_shape_is_checked_but_keepdims_accepted():
    def flat_wrong(x, bits=8):
        q, s = vq_plain(x, bits)
        return q, np.repeat(s, 2)  # a scale vector of the wrong length

    _fails(E.check_vectorwise_quantize(flat_wrong), "shape")
    assert E.check_vectorwise_quantize(lambda x, bits=8: (vq_plain(x, bits)[0], vq_plain(x, bits)[1][:, None])).passed

    def dequantized(x, bits=8):
        q, s = vq_plain(x, bits)
        return q * s[:, None], s  # x_hat instead of q

    _fails(E.check_vectorwise_quantize(dequantized), "output[0]")


# ---------------------------------------------------------------------------------- vectorwise_matmul mistakes
def _vm(x, w, *, xa=1, wa=1, epi="both", per_tensor=False, div=None, acc=np.int32, swap=False):
    def rows(a, axis):
        return _vq(a, 8, axis=axis, per_tensor=per_tensor, div=div)

    qx, sx = rows(x, xa)
    qw, sw = rows(w, wa)
    if xa == 0 or wa == 0:
        return (qx * (sx[None, :] if xa == 0 else sx[:, None])) @ (qw * (sw[None, :] if wa == 0 else sw[:, None])).T
    a = (qx.astype(acc) @ qw.astype(acc).T).astype(np.float64)
    if swap:
        return a * sw[:, None] * sx[None, :] if a.shape[0] == a.shape[1] else a * sx[:, None] * sw[None, :]
    return {"none": a, "x": a * sx[:, None], "w": a * sw[None, :], "both": a * sx[:, None] * sw[None, :]}[epi]


@pytest.mark.parametrize(
    "fn, hint",
    [
        (lambda x, w: _vm(x, w, epi="none"), "raw integer accumulator"),
        (lambda x, w: _vm(x, w, epi="x"), "only the scales of x"),
        (lambda x, w: _vm(x, w, epi="w"), "only the scales of w"),
        (lambda x, w: _vm(x, w, acc=np.int8), "not int8"),
        (lambda x, w: _vm(x, w, acc=np.int16), "overflows int16"),
        (lambda x, w: _vm(x, w, per_tensor=True), "not one per matrix"),
        (lambda x, w: _vm(x, w, xa=0), "scales of x go per ROW"),
        (lambda x, w: _vm(x, w, wa=0), "scales of w go per ROW"),
        (lambda x, w: _vm(x, w, xa=0, wa=0), "both sets of scales"),
        (lambda x, w: _vm(x, w, swap=True), "You swapped them"),
        (lambda x, w: _vm(x, w, div=lambda b: 128), "not 128"),
    ],
)
def test_vectorwise_matmul_mistakes_get_their_hint(fn, hint):
    _fails(E.check_vectorwise_matmul(fn), "hint:", hint)


def test_vectorwise_matmul_exact_float_product_is_rejected():
    _fails(E.check_vectorwise_matmul(lambda x, w: x @ w.T), "wrong answer")


# ---------------------------------------------------------------------------------- llm_int8_matmul mistakes
def _lm(x, w, threshold=6.0, *, ge=False, signed=False, reduce_all=False, no_float=False, thr=None,
        full_scales=False, rows=False):
    a, b = np.asarray(x, dtype=np.float64), np.asarray(w, dtype=np.float64)
    t = threshold if thr is None else thr
    v = a if signed else np.abs(a)
    big = v >= t if ge else v > t
    if rows:
        r = big.any(axis=1)
        y = np.zeros((a.shape[0], b.shape[0]))
        y[r] = a[r] @ b.T
        if (~r).any():
            y[~r] = vm_plain(a[~r], b)
        return y
    cols = big.all(axis=0) if reduce_all else big.any(axis=0)
    y = np.zeros((a.shape[0], b.shape[0]))
    if (~cols).any():
        if full_scales:
            sx = np.where(np.abs(a).max(axis=1) > 0, np.abs(a).max(axis=1) / 127, 1.0)
            qx = np.round(a[:, ~cols] / sx[:, None])
            qw, sw = vq_plain(b[:, ~cols])
            y = (qx @ qw.T.astype(np.float64)) * sx[:, None] * sw[None, :]
        else:
            y = vm_plain(a[:, ~cols], b[:, ~cols])
    if not no_float:
        y = y + a[:, cols] @ b[:, cols].T
    return y


@pytest.mark.parametrize(
    "fn, hint",
    [
        (lambda x, w, threshold=6.0: _lm(x, w, threshold, ge=True), "STRICTLY larger"),
        (lambda x, w, threshold=6.0: _lm(x, w, threshold, no_float=True), "dropped the outlier columns"),
        (lambda x, w, threshold=6.0: _lm(x, w, threshold, reduce_all=True), "ANY of its values"),
        (lambda x, w, threshold=6.0: vm_plain(x, w), "no column went through the float path"),
        (lambda x, w, threshold=6.0: _lm(x, w, 6.0), "use the threshold argument"),
        (lambda x, w, threshold=6.0: _lm(x, w, threshold, full_scales=True), "AFTER removing the outlier columns"),
        (lambda x, w, threshold=6.0: _lm(x, w, threshold, signed=True), "MAGNITUDE"),
        (lambda x, w, threshold=6.0: _lm(x, w, threshold, rows=True), "COLUMNS of x"),
    ],
)
def test_llm_int8_matmul_mistakes_get_their_hint(fn, hint):
    _fails(E.check_llm_int8_matmul(fn), "hint:", hint)


def test_llm_int8_matmul_without_the_empty_guard_crashes_politely():
    def no_guard(x, w, threshold=6.0):
        cols = np.abs(x).max(axis=0) > threshold
        return x[:, cols] @ w[:, cols].T + vm_plain(x[:, ~cols], w[:, ~cols])

    _fails(E.check_llm_int8_matmul(no_guard), "raised", "the int8 part is empty")


# ---------------------------------------------------------------------------------- never crash


def test_inputs_modified_in_place_are_reported():
    def scales_in_place(x, w):
        x /= np.where(np.abs(x).max(axis=1, keepdims=True) > 0, np.abs(x).max(axis=1, keepdims=True), 1.0)
        return vm_plain(x, w)

    _fails(E.check_vectorwise_matmul(scales_in_place))


def test_squeeze_scale_only_touches_matching_pairs():
    q, s = np.zeros((3, 4)), np.ones(3)
    assert E._squeeze_scale((q, s[:, None]), (q, s))[1].shape == (3,)
    assert E._squeeze_scale((q, torch.ones(3, 1)), (q, s))[1].shape == (3,)
    assert E._squeeze_scale((q, np.ones((1, 3))), (q, s))[1].shape == (1, 3)
    assert E._squeeze_scale(q, (q, s)) is q
    triple = (q, s, s)
    assert E._squeeze_scale(triple, (q, s)) is triple


def test_all_names_exported():
    assert sorted(E.__all__) == ["check_llm_int8_matmul", "check_vectorwise_matmul", "check_vectorwise_quantize"]
    from effx_lab.quant import exercises

    for name in E.__all__:
        assert getattr(exercises, name) is getattr(E, name)
