"""The 02.5 checkers (effx_lab.quant.exercises.second_order) accept right answers written in several styles,
reject each classic mistake with its hint, and never crash on a student's error."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from _checks import fails as _fails

from effx_lab.check import Case, Diagnosis
from effx_lab.quant import _np_hawq as H  # _brute_force_allocation (private)
from effx_lab.quant import reference as R
from effx_lab.quant.exercises import second_order as E

NAMES = ["hutchinson_trace", "allocate_bits", "gptq_quantize_simple"]
CHECKERS = {name: getattr(E, f"check_{name}") for name in NAMES}


# ---------------------------------------------------------------------------------- right answers
def ht_loop(hvp, dim, n_samples=64, seed=0):
    rng = np.random.default_rng(seed)
    total = 0.0
    for _ in range(n_samples):
        v = rng.integers(0, 2, size=dim) * 2.0 - 1.0
        total += float(v @ hvp(v))
    return total / n_samples


def ht_matrix_of_probes(hvp, dim, n_samples=64, seed=0):
    """All probes drawn at once as an [n_samples, dim] matrix (the same stream), numpy scalar returned."""
    probes = np.random.default_rng(seed).integers(0, 2, size=(n_samples, dim)) * 2 - 1
    return np.mean([p @ hvp(p.astype(np.float64)) for p in probes])


def ht_choice_list(hvp, dim, n_samples=64, seed=0):
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(n_samples):
        v = rng.integers(0, 2, size=dim).astype(np.float32) * 2 - 1  # float32 probes: +-1 exactly
        samples.append(np.sum(v * hvp(v)))
    return float(np.mean(samples))


def ht_torch(hvp, dim, n_samples=64, seed=0):
    rng = np.random.default_rng(seed)
    acc = torch.zeros((), dtype=torch.float64)
    for _ in range(n_samples):
        v = torch.from_numpy(rng.integers(0, 2, size=dim) * 2.0 - 1.0)
        acc += v @ torch.from_numpy(np.asarray(hvp(v.numpy())))
    return acc / n_samples  # a 0-d tensor


def ab_itertools(sensitivity, n_params, budget_bits, choices=(2, 3, 4, 8)):
    best, best_cost = None, np.inf
    for picks in itertools.product(range(len(choices)), repeat=len(n_params)):
        if sum(n * choices[c] for n, c in zip(n_params, picks)) <= budget_bits:
            cost = sum(sensitivity[i][c] for i, c in enumerate(picks))
            if cost < best_cost:
                best, best_cost = [choices[c] for c in picks], cost
    return best


def ab_product_of_bits_array(sensitivity, n_params, budget_bits, choices=(2, 3, 4, 8)):
    """Iterates over bit widths (not indices), vectorised, returns an integer array."""
    sens = np.asarray(sensitivity, dtype=float)
    combos = np.array(list(itertools.product(choices, repeat=len(n_params))))
    sizes = combos @ np.asarray(n_params)
    col = {b: c for c, b in enumerate(choices)}
    idx = np.vectorize(col.get)(combos)
    costs = sens[np.arange(len(n_params))[None, :], idx].sum(axis=1)
    costs[sizes > budget_bits] = np.inf
    return combos[int(np.argmin(costs))]


def ab_recursive_tuple(sensitivity, n_params, budget_bits, choices=(2, 3, 4, 8)):
    def go(i, left):
        if i == len(n_params):
            return 0.0, ()
        best = (np.inf, None)
        for c, b in enumerate(choices):
            if n_params[i] * b <= left:
                cost, rest = go(i + 1, left - n_params[i] * b)
                if rest is not None and cost + sensitivity[i][c] < best[0]:
                    best = (cost + sensitivity[i][c], (b,) + rest)
        return best

    return go(0, budget_bits)[1]


def gq_plain(w, h, scale, zero_point, bits=4, damp=0.01):
    W = w.astype(np.float64)
    Hd = h + damp * np.mean(np.diag(h)) * np.eye(h.shape[0])
    U = np.linalg.cholesky(np.linalg.inv(Hd)).T
    out = np.zeros_like(W)
    for j in range(W.shape[1]):
        q = np.clip(np.round(W[:, j] / scale) + zero_point, 0, 2**bits - 1)
        out[:, j] = (q - zero_point) * scale
        err = (W[:, j] - out[:, j]) / U[j, j]
        W[:, j + 1 :] -= np.outer(err, U[j, j + 1 :])
    return out


def gq_obs_elimination(w, h, scale, zero_point, bits=4, damp=0.01):
    """The OBS form: rows of the explicitly eliminated inverse instead of the Cholesky factor."""
    W = w.astype(np.float64).copy()
    k = h.shape[0]
    Hinv = np.linalg.inv(h + damp * np.trace(h) / k * np.eye(k))
    out = np.zeros_like(W)
    for j in range(k):
        q = np.clip(np.round(W[:, j] / scale[:, None].ravel()) + zero_point, 0, 2**bits - 1)
        out[:, j] = (q - zero_point) * scale
        d = Hinv[0, 0]
        W[:, j:] -= np.outer((W[:, j] - out[:, j]) / d, Hinv[0])
        Hinv = (Hinv - np.outer(Hinv[:, 0], Hinv[0]) / d)[1:, 1:]
    return out


def gq_lazy_torch(w, h, scale, zero_point, bits=4, damp=0.01, block=3):
    """Torch, lazy batches of 3 columns, [N, 1] grid, returns a tensor."""
    W = torch.from_numpy(np.array(w, dtype=np.float64))
    Ht = torch.from_numpy(np.asarray(h, dtype=np.float64))
    Ht = Ht + damp * Ht.diagonal().mean() * torch.eye(Ht.shape[0], dtype=torch.float64)
    U = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(Ht)), upper=True)
    s = torch.as_tensor(scale, dtype=torch.float64)
    z = torch.as_tensor(zero_point, dtype=torch.float64)
    out = torch.zeros_like(W)
    k = W.shape[1]
    for i in range(0, k, block):
        end = min(i + block, k)
        errs = torch.zeros(W.shape[0], end - i, dtype=torch.float64)
        for j in range(i, end):
            q = torch.clamp(torch.round(W[:, j] / s) + z, 0, 2**bits - 1)
            out[:, j] = (q - z) * s
            errs[:, j - i] = (W[:, j] - out[:, j]) / U[j, j]
            W[:, j + 1 : end] -= torch.outer(errs[:, j - i], U[j, j + 1 : end])
        W[:, end:] -= errs @ U[i:end, end:]
    return out


RIGHT = [
    ("hutchinson_trace", ht_loop),
    ("hutchinson_trace", ht_matrix_of_probes),
    ("hutchinson_trace", ht_choice_list),
    ("hutchinson_trace", ht_torch),
    ("allocate_bits", ab_itertools),
    ("allocate_bits", ab_product_of_bits_array),
    ("allocate_bits", ab_recursive_tuple),
    ("gptq_quantize_simple", gq_plain),
    ("gptq_quantize_simple", gq_obs_elimination),
    ("gptq_quantize_simple", gq_lazy_torch),
]


@pytest.mark.parametrize("name, fn", RIGHT, ids=lambda v: getattr(v, "__name__", v))
def test_right_answers_pass(name, fn, capsys):
    result = CHECKERS[name](fn)
    assert result.passed is True, result.message
    assert result.n_passed == result.n_cases >= 9
    assert "passed all" in capsys.readouterr().out


# ---------------------------------------------------------------------------------- references and cases
def _spy_cases(name: str) -> list[Case]:
    """The cases the checker actually uses (seeded from the exercise's name)."""
    seen: list[Case] = []
    ref = E._cases_for_tests()[name][0]

    def spy(*args, **kwargs):
        seen.append(Case("x", args, kwargs))
        return ref(*args, **kwargs)

    assert CHECKERS[name](spy).passed
    return seen


def test_hutchinson_reference_is_the_package_and_unbiased():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(30, 30))
    h = a @ a.T
    ref = E._cases_for_tests()["hutchinson_trace"][0]
    hvp = E._MatrixHVP(h)
    assert ref(hvp, 30, n_samples=7, seed=2) == R.hutchinson_trace(hvp, 30, n_samples=7, seed=2)
    est, samples = R.hutchinson_trace(hvp, 30, n_samples=4000, seed=1, return_samples=True)
    assert abs(est - np.trace(h)) < 4 * samples.std() / np.sqrt(4000)
    # the linear-layer product equals the explicit kron(I_out, H)
    kron = E._KronHVP(h[:6, :6], 3)
    v = rng.normal(size=18)
    np.testing.assert_allclose(kron(v), np.kron(np.eye(3), h[:6, :6]) @ v)
    assert "hvp(" in repr(hvp) and "linear layer" in repr(kron)


def test_allocate_reference_is_the_brute_force_optimum_without_ties():
    """Every case: the package's optimum equals brute force, the budget is feasible, and the best allocation
    beats the runner-up by a clear margin (no ties a different search order could resolve differently)."""
    cases = _spy_cases("allocate_bits")
    assert len(cases) >= 9
    for case in cases:
        sens, n, budget = case.args
        choices = case.kwargs.get("choices", (2, 3, 4, 8))
        best = E._cases_for_tests()["allocate_bits"][0](sens, n, budget, choices)
        assert best == H._brute_force_allocation(sens, n, budget, choices)
        s = np.asarray(sens, dtype=float)
        costs = sorted(
            sum(s[i, c] for i, c in enumerate(p))
            for p in itertools.product(range(len(choices)), repeat=len(n))
            if sum(k * choices[c] for k, c in zip(n, p)) <= budget
        )
        assert len(costs) == 1 or costs[1] - costs[0] > 1e-9 * abs(costs[0]), case.label


def test_gptq_cases_match_the_package_grid_and_stay_far_from_ties():
    """The grid passed in is the package's own per-row min/max grid; the reference equals the readable
    algorithm; and no updated weight lands within 1e-7 grid steps of a rounding tie (so float noise in a
    student's order of operations cannot flip a code)."""
    cases = _spy_cases("gptq_quantize_simple")
    assert len(cases) >= 9
    for case in cases:
        w, h, scale, zp, bits = case.args
        damp = case.kwargs.get("damp", 0.01)
        qp = R.compute_qparams(w, bits, False, granularity="channel", axis=0)
        np.testing.assert_array_equal(scale, qp.scale[:, 0])
        np.testing.assert_array_equal(zp, qp.zero_point[:, 0])
        expected = E._cases_for_tests()["gptq_quantize_simple"][0](w, h, scale, zp, bits, damp)
        np.testing.assert_allclose(gq_plain(w, h, scale, zp, bits, damp), expected, rtol=1e-9, atol=1e-12)
        # tie distance along the algorithm
        W = w.astype(np.float64).copy()
        Hd = h + damp * np.mean(np.diag(h)) * np.eye(h.shape[0])
        U = np.linalg.cholesky(np.linalg.inv(Hd)).T
        for j in range(W.shape[1]):
            a = W[:, j] / scale
            assert np.abs(a - np.floor(a) - 0.5).min() > 1e-7, case.label
            q = np.clip(np.round(a) + zp, 0, 2**bits - 1)
            err = (W[:, j] - (q - zp) * scale) / U[j, j]
            W[:, j + 1 :] -= np.outer(err, U[j, j + 1 :])


def test_gptq_cases_exercise_the_clip():
    """At least one case pushes an updated weight off the grid (so forgetting the clip is caught)."""
    clipped = False
    for case in _spy_cases("gptq_quantize_simple"):
        w, h, scale, zp, bits = case.args
        damp = case.kwargs.get("damp", 0.01)
        W = w.astype(np.float64).copy()
        Hd = h + damp * np.mean(np.diag(h)) * np.eye(h.shape[0])
        U = np.linalg.cholesky(np.linalg.inv(Hd)).T
        for j in range(W.shape[1]):
            raw = np.round(W[:, j] / scale) + zp
            clipped |= bool(((raw < 0) | (raw > 2**bits - 1)).any())
            q = np.clip(raw, 0, 2**bits - 1)
            W[:, j + 1 :] -= np.outer((W[:, j] - (q - zp) * scale) / U[j, j], U[j, j + 1 :])
    assert clipped


def test_gptq_is_better_than_rtn_on_the_cases():
    """The exercise's point: on its cases, GPTQ's output error (on H) is below round to nearest's."""
    better = 0
    cases = _spy_cases("gptq_quantize_simple")
    for case in cases:
        w, h, scale, zp, bits = case.args
        w_g = gq_plain(w, h, scale, zp, bits, case.kwargs.get("damp", 0.01))
        w_r = R.rtn_quantize_weight(w, bits=bits)
        err_g = np.einsum("ri,ij,rj->", w - w_g, h, w - w_g)
        err_r = np.einsum("ri,ij,rj->", w - w_r, h, w - w_r)
        better += err_g < err_r
    assert better >= len(cases) - 1  # the one-column case is round to nearest itself


def test_every_hint_is_reachable():
    """Each listed mistake differs from the right answer on at least one case (else its hint is dead)."""
    for name, (ref, make, mistakes) in E._cases_for_tests().items():
        cases = make(np.random.default_rng(7))
        diag = Diagnosis(ref, [], rtol=1e-6, atol=1e-9, exact=False)
        for m in mistakes:
            reachable = False
            for c in cases:
                try:
                    with np.errstate(all="ignore"):
                        wrong = m.wrong(*c.args, **c.kwargs)
                except IndexError:  # e.g. a mistake that ignores `choices` on a case with 3 choices
                    continue
                expected = ref(*c.args, **c.kwargs)
                if wrong is not None and not diag.close(wrong, expected):
                    reachable = True
                    break
            assert reachable, (name, m.hint)


# ---------------------------------------------------------------------------------- hutchinson mistakes
def _ht(hvp, dim, n_samples=64, seed=0, *, probe="pm1", reduce=np.mean, sample="vHv", fresh=False, fixed=None):
    s = seed if fixed is None else fixed
    rng = np.random.default_rng(s)
    legacy = np.random.RandomState(s)  # the stream of np.random.seed(s) + np.random.randint
    out = []
    for _ in range(n_samples):
        if fresh:
            rng = np.random.default_rng(s)
        if probe == "pm1":
            v = rng.integers(0, 2, size=dim) * 2.0 - 1.0
        elif probe == "01":
            v = rng.integers(0, 2, size=dim).astype(float)
        elif probe == "normal":
            v = rng.normal(size=dim)
        else:
            v = legacy.randint(0, 2, size=dim) * 2.0 - 1.0
        hv = hvp(v)
        out.append({"vHv": v @ hv, "sum": hv.sum(), "mean": np.mean(v * hv), "norm": (v @ hv) / (v @ v)}[sample])
    return float(reduce(out))


@pytest.mark.parametrize(
    "fn, hint",
    [
        (lambda hvp, dim, n_samples=64, seed=0: _ht(hvp, dim, n_samples, seed, probe="01"), "* 2.0 - 1.0"),
        (lambda hvp, dim, n_samples=64, seed=0: _ht(hvp, dim, n_samples, seed, probe="normal"), "Gaussian"),
        (lambda hvp, dim, n_samples=64, seed=0: _ht(hvp, dim, n_samples, seed, probe="legacy"), "legacy"),
        (lambda hvp, dim, n_samples=64, seed=0: _ht(hvp, dim, n_samples, seed, reduce=np.sum), "MEAN"),
        (lambda hvp, dim, n_samples=64, seed=0: _ht(hvp, dim, n_samples, seed, sample="sum"), "summed H v"),
        (lambda hvp, dim, n_samples=64, seed=0: _ht(hvp, dim, n_samples, seed, sample="mean"), "divide the trace"),
        (lambda hvp, dim, n_samples=64, seed=0: _ht(hvp, dim, n_samples, seed, sample="norm"), "divide the trace"),
        (lambda hvp, dim, n_samples=64, seed=0: _ht(hvp, dim, n_samples, seed, fresh=True), "ONCE"),
        (lambda hvp, dim, n_samples=64, seed=0: _ht(hvp, dim, n_samples, seed, fixed=0), "seed argument"),
    ],
)
def test_hutchinson_mistakes_get_their_hint(fn, hint):
    _fails(E.check_hutchinson_trace(fn), "hint:", hint)


# ---------------------------------------------------------------------------------- allocate_bits mistakes
def _ab(sensitivity, n_params, budget_bits, choices=(2, 3, 4, 8), *, size=None, sign=1.0, index=False):
    size = size or (lambda bits: sum(n * b for n, b in zip(n_params, bits)) <= budget_bits)
    best, best_cost = None, np.inf
    for picks in itertools.product(range(len(choices)), repeat=len(n_params)):
        if size([choices[c] for c in picks]):
            cost = sign * sum(sensitivity[i][c] for i, c in enumerate(picks))
            if cost < best_cost:
                best, best_cost = (list(picks) if index else [choices[c] for c in picks]), cost
    return best


@pytest.mark.parametrize(
    "fn, hint",
    [
        (lambda s, n, b, choices=(2, 3, 4, 8): _ab(
            s, n, b, choices, size=lambda bits: sum(k * x for k, x in zip(n, bits)) < b), "<= budget_bits"),
        (lambda s, n, b, choices=(2, 3, 4, 8): _ab(
            s, n, b, choices, size=lambda bits: np.mean(bits) <= b / sum(n)), "plain average"),
        (lambda s, n, b, choices=(2, 3, 4, 8): _ab(s, n, b, choices, size=lambda bits: sum(bits) <= b),
         "without multiplying"),
        (lambda s, n, b, choices=(2, 3, 4, 8): _ab(s, n, b, choices, sign=-1.0), "MINIMISE"),
        (lambda s, n, b, choices=(2, 3, 4, 8): _ab(s, n, b, choices, index=True), "not their indices"),
        (lambda s, n, b, choices=(2, 3, 4, 8): [choices[int(np.argmin(r))] for r in np.asarray(s)],
         "respect the budget"),
        (lambda s, n, b, choices=(2, 3, 4, 8): _ab(s, n, b), "choices argument"),
    ],
)
def test_allocate_bits_mistakes_get_their_hint(fn, hint):
    _fails(E.check_allocate_bits(fn), "hint:", hint)


def test_allocate_bits_accepts_arrays_and_tuples_but_not_floats_of_other_values():
    assert E.check_allocate_bits(lambda *a, **k: np.asarray(ab_itertools(*a, **k), dtype=np.int32)).passed
    assert E.check_allocate_bits(lambda *a, **k: tuple(ab_itertools(*a, **k))).passed
    assert E.check_allocate_bits(lambda *a, **k: torch.tensor(ab_itertools(*a, **k))).passed
    _fails(E.check_allocate_bits(lambda *a, **k: ab_itertools(*a, **k)[:-1]), "item")


# ---------------------------------------------------------------------------------- gptq mistakes
def _gq(w, h, scale, zero_point, bits=4, damp=0.01, *, feedback=True, damping="rel", sign=-1.0, divide=True,
        factor="upper", clip=True, zero=True):
    W = np.array(w, dtype=np.float64)
    k = h.shape[0]
    Hd = {"rel": h + damp * np.mean(np.diag(h)) * np.eye(k), "abs": h + damp * np.eye(k), "none": h}[damping]
    U = {
        "upper": lambda: np.linalg.cholesky(np.linalg.inv(Hd)).T,
        "lower": lambda: np.linalg.cholesky(np.linalg.inv(Hd)),
        "of_h": lambda: np.linalg.cholesky(Hd).T,
        "inv": lambda: np.linalg.inv(Hd),
    }[factor]()
    z = zero_point if zero else 0
    out = np.zeros_like(W)
    for j in range(k):
        q = np.round(W[:, j] / scale) + z
        q = np.clip(q, 0, 2**bits - 1) if clip else q
        out[:, j] = (q - z) * scale
        if feedback:
            e = (W[:, j] - out[:, j]) / (U[j, j] if divide else 1.0)
            W[:, j + 1 :] += sign * np.outer(e, U[j, j + 1 :])
    return out


@pytest.mark.parametrize(
    "kwargs, hint",
    [
        ({"feedback": False}, "round-to-nearest"),
        ({"factor": "lower"}, "round-to-nearest"),  # the lower factor's row j is 0 past the diagonal
        ({"damping": "none"}, "dampen H first"),
        ({"damping": "abs"}, "relative"),
        ({"sign": 1.0}, "minus sign"),
        ({"divide": False}, "divide the error"),
        ({"factor": "of_h"}, "INVERSE"),
        ({"factor": "inv"}, "plain inverse"),
        ({"clip": False}, "clip the integers"),
        ({"zero": False}, "zero point"),
    ],
)
def test_gptq_mistakes_get_their_hint(kwargs, hint):
    _fails(E.check_gptq_quantize_simple(lambda *a, **k: _gq(*a, **k, **kwargs)), "hint:", hint)


def test_gptq_rtn_hint_names_the_upper_factor():
    result = E.check_gptq_quantize_simple(lambda *a, **k: _gq(*a, **k, factor="lower"))
    _fails(result, "UPPER", "L.T")


def test_gptq_modifying_w_in_place_is_reported():
    def in_place(w, h, scale, zero_point, bits=4, damp=0.01):
        result = gq_plain(w, h, scale, zero_point, bits, damp)
        w -= w  # the student's loop wrote into the input
        return result

    _fails(E.check_gptq_quantize_simple(in_place), "in place")


# ---------------------------------------------------------------------------------- never crash


def test_all_names_exported():
    assert sorted(E.__all__) == ["check_allocate_bits", "check_gptq_quantize_simple", "check_hutchinson_trace"]
    from effx_lab.quant import exercises

    for name in E.__all__:
        assert getattr(exercises, name) is getattr(E, name)
