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

NAMES = ["max_safe_k", "vectorwise_matmul", "llm_int8_matmul"]
MATMULS = ["vectorwise_matmul", "llm_int8_matmul"]
CHECKERS = {name: getattr(E, f"check_{name}") for name in NAMES}


def _round_away(v):
    return np.sign(v) * np.floor(np.abs(v) + 0.5)


# ---------------------------------------------------------------------------------- right answers
# the row quantizers the matmul answers below are built from, in several styles
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


def max_safe_k_plain(bits=8, acc_bits=32, restricted=True):
    qmax = 2 ** (bits - 1) - 1
    largest = qmax * qmax if restricted else (qmax + 1) ** 2  # (-128) * (-128) when -128 is allowed
    return (2 ** (acc_bits - 1) - 1) // largest


def max_safe_k_search(bits=8, acc_bits=32, restricted=True):
    """Walks the worst case: the largest K whose K * (largest product) still fits, found by bisection,
    returned as a NumPy integer."""
    lo_code = -(2 ** (bits - 1)) + (1 if restricted else 0)
    hi_code = 2 ** (bits - 1) - 1
    products = [a * b for a in (lo_code, hi_code) for b in (lo_code, hi_code)]
    top, bottom = 2 ** (acc_bits - 1) - 1, -(2 ** (acc_bits - 1))
    lo, hi = 0, 2**acc_bits
    while lo < hi:  # the largest K with every K * p in [bottom, top]
        mid = (lo + hi + 1) // 2
        if all(bottom <= mid * p <= top for p in products):
            lo = mid
        else:
            hi = mid - 1
    return np.int64(lo)


def max_safe_k_float_then_floor(bits=8, acc_bits=32, restricted=True):
    """math.floor of a float quotient: exact here, because the quotients are far from whole numbers."""
    import math

    qmax = 2 ** (bits - 1) - 1
    p = qmax**2 if restricted else 4 ** (bits - 1)
    return math.floor((2.0 ** (acc_bits - 1) - 1) / p) if acc_bits <= 52 else (2 ** (acc_bits - 1) - 1) // p


RIGHT = [
    ("max_safe_k", max_safe_k_plain),
    ("max_safe_k", max_safe_k_search),
    ("max_safe_k", max_safe_k_float_then_floor),
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
    assert refs["max_safe_k"][0]() == (2**31 - 1) // 127**2 == 133144
    assert refs["max_safe_k"][0](8, 32, restricted=False) == 2**17 - 1  # (-128)^2 = 2^14
    # the package's int8_matmul documents the same bound for codes in [-128, 127]
    assert "131071" in R.int8_matmul.__doc__
    np.testing.assert_allclose(refs["vectorwise_matmul"][0](x, w), R.vectorwise_linear(x, w))
    np.testing.assert_allclose(refs["llm_int8_matmul"][0](x, w), R.llm_int8_linear(x, w, threshold=6.0))
    np.testing.assert_allclose(refs["llm_int8_matmul"][0](x, w, threshold=0.0), x @ w.T, rtol=1e-12)


# ---------------------------------------------------------------------------------- no rounding ties
def _quantized_operands(name: str, case: Case) -> list[np.ndarray]:
    """Every 2-D array the exercise quantizes by rows on this case (x, w, or the regular columns of both)."""
    x = np.asarray(case.args[0])
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


@pytest.mark.parametrize("name", MATMULS)
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
        margin = 1e-4 if np.asarray(case.args[0]).dtype == np.float32 else 1e-6
        for a in _quantized_operands(name, case):
            assert _tie_distance(a) > margin, (name, case.label)


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


# ---------------------------------------------------------------------------------- max_safe_k mistakes
def _k(bits=8, acc_bits=32, restricted=True, *, top=None, p=None, div=lambda t, p: t // p):
    qmax = 2 ** (bits - 1) - 1
    largest = (qmax * qmax if restricted else (qmax + 1) ** 2) if p is None else p(bits, restricted)
    return div(2 ** (acc_bits - 1) - 1 if top is None else top(acc_bits), largest)


@pytest.mark.parametrize(
    "fn, hint",
    [
        (lambda bits=8, acc_bits=32, restricted=True: _k(bits, acc_bits, restricted, top=lambda a: 2 ** (a - 1)),
         "not 2^31"),
        (lambda bits=8, acc_bits=32, restricted=True: _k(bits, acc_bits, restricted, top=lambda a: 2**a - 1),
         "SIGNED"),
        (lambda bits=8, acc_bits=32, restricted=True: ((2 ** (acc_bits - 1) - 1) // (2 ** (bits - 1) - 1) ** 2),
         "larger than 127 * 127"),
        (lambda bits=8, acc_bits=32, restricted=True: _k(
            bits, acc_bits, restricted, p=lambda b, r: (2 ** (b - 1) - 1) ** 2 if r else 2 ** (b - 1) * (2 ** (b - 1) - 1)),
         "not 128 * 127"),
        (lambda bits=8, acc_bits=32, restricted=True: _k(bits, acc_bits, restricted, p=lambda b, r: 4 ** (b - 1)),
         "not 128^2"),
        (lambda bits=8, acc_bits=32, restricted=True: _k(
            bits, acc_bits, restricted, p=lambda b, r: 2 ** (b - 1) - (1 if r else 0)),
         "TWO codes"),
        (lambda bits=8, acc_bits=32, restricted=True: _k(bits, acc_bits, restricted, p=lambda b, r: (2**b - 1) ** 2),
         "uint8"),
        (lambda bits=8, acc_bits=32, restricted=True: _k(bits, acc_bits, restricted, div=lambda t, p: t / p),
         "whole number"),
        (lambda bits=8, acc_bits=32, restricted=True: _k(bits, acc_bits, restricted, div=lambda t, p: -(-t // p)),
         "first K that CAN overflow"),
        (lambda bits=8, acc_bits=32, restricted=True: _k(bits, acc_bits, restricted) + 1,
         "first K that CAN overflow"),
        (lambda bits=8, acc_bits=32, restricted=True: _k(bits, acc_bits, restricted, div=lambda t, p: round(t / p)),
         "nearest integer"),
    ],
)
def test_max_safe_k_mistakes_get_their_hint(fn, hint):
    _fails(E.check_max_safe_k(fn), "hint:", hint)


def test_max_safe_k_is_measured_by_int32_wraparound():
    """The prediction is where a worst-case int32 sum stops being exact: K codes of 127 * 127 fit, K + 1 wrap
    (the measurement the notebook makes with torch._int_mm on the reader's device)."""
    k = E._max_safe_k_reference(8, 32)
    for n, exact in ((k, True), (k + 1, False)):
        codes = np.full(n, 127, dtype=np.int32)
        assert (int(codes @ codes) == n * 127 * 127) is exact  # NumPy's int32 dot wraps silently
    k_full = E._max_safe_k_reference(8, 32, restricted=False)
    for n, exact in ((k_full, True), (k_full + 1, False)):
        codes = np.full(n, -128, dtype=np.int32)
        assert (int(codes @ codes) == n * 128 * 128) is exact


def test_max_safe_k_wants_an_int():
    _fails(E.check_max_safe_k(lambda bits=8, acc_bits=32, restricted=True: float(max_safe_k_plain(
        bits, acc_bits, restricted))), "expected an integer")


# ---------------------------------------------------------------------------------- vectorwise_matmul mistakes
def _vq(x, bits=8, *, axis=1, div=None, per_tensor=False):
    """Row quantization with the knobs of the matmul mistakes below (defaults: one scale per row)."""
    qmax = 2 ** (bits - 1) - 1
    a = np.asarray(x, dtype=np.float64)
    m = np.full(a.shape[0], np.abs(a).max()) if per_tensor else np.abs(a).max(axis=axis)
    scale = np.where(m != 0, m / (qmax if div is None else div(bits)), 1.0)
    s = scale[:, None] if axis == 1 else scale[None, :]
    return np.clip(np.round(a / s), -qmax, qmax), scale


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


def test_all_names_exported():
    assert sorted(E.__all__) == ["check_llm_int8_matmul", "check_max_safe_k", "check_vectorwise_matmul"]
    from effx_lab.quant import exercises

    for name in E.__all__:
        assert getattr(exercises, name) is getattr(E, name)
