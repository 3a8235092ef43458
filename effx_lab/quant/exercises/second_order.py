"""Checkers for the exercises of notebook 02.5 (second-order methods: HAWQ and GPTQ).

Each ``check_<name>(student_fn)`` runs the student's function against the course's NumPy reference
(:mod:`effx_lab.quant.reference`) on fixed edge cases and seeded random draws, prints a plain-words verdict and
returns the :class:`effx_lab.check.CheckResult`. When a wrong answer equals a classic mistake (probes in
``{0, 1}``, a sum instead of a mean, a strict budget, the error never fed back, the lower Cholesky factor...)
the verdict ends with a ``hint:`` line naming it. What the student writes:

* ``hutchinson_trace(hvp, dim, n_samples=64, seed=0) -> float``: Hutchinson's estimate of ``tr(H)``,
  ``mean_i v_i^T (H v_i)``, with Rademacher probes drawn from one generator
  ``rng = np.random.default_rng(seed)`` as ``v_i = rng.integers(0, 2, size=dim) * 2.0 - 1.0``, one probe after
  the other. As :func:`effx_lab.quant.reference.hutchinson_trace`.
* ``allocate_bits(sensitivity, n_params, budget_bits, choices=(2, 3, 4, 8)) -> list of bit widths``: HAWQ's
  mixed-precision program, by exhaustive search: the bit width per layer that minimises
  ``sum_i sensitivity[i][c_i]`` subject to ``sum_i n_params[i] * choices[c_i] <= budget_bits``. As
  :func:`effx_lab.quant.reference.allocate_bits` (every case has one optimum and a feasible budget).
* ``gptq_quantize_simple(w, h, scale, zero_point, bits=4, damp=0.01) -> w_hat``: GPTQ without lazy batches,
  groups or act-order (Frantar et al. 2023, Algorithm 1 with ``B = 1``): dampen ``H``, take the upper
  Cholesky factor ``U`` of ``H^-1``, then for each column ``j`` in order quantize it on the row's affine grid
  (``q = clip(round(w / scale) + zero_point, 0, 2^bits - 1)``), compute ``err = (w_j - w_hat_j) / U[j, j]`` and
  update the later columns ``W[:, j+1:] -= err U[j, j+1:]``. ``scale`` and ``zero_point`` (``[out]``) are the
  per-row min/max grid of the original ``w``, given. As
  ``effx_lab.quant.reference.gptq_quantize(w, h, bits, damp=damp).weight``.

Inputs are float64. ``hutchinson_trace`` is compared with ``rtol=1e-8`` (the same probes give the same
numbers up to summation order), ``gptq_quantize_simple`` with ``rtol=1e-6`` (every listed mistake moves
whole grid steps), ``allocate_bits`` exactly. No GPTQ case puts an updated weight within ``1e-7`` grid steps
of a rounding tie, so a different order of float operations gives the same codes
(``tests/ch02_quant/test_quant_exercises_second_order`` checks it).
"""
from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import numpy as np

from effx_lab.check import Case, CheckResult, Mistake, check_with_hints, checker, named

from .. import reference as R

__all__ = [
    "check_allocate_bits",
    "check_gptq_quantize_simple",
    "check_hutchinson_trace",
]

_TRACE_RTOL, _TRACE_ATOL = 1e-8, 1e-10
_GPTQ_RTOL, _GPTQ_ATOL = 1e-6, 1e-9


class _MatrixHVP:
    """``v -> H v`` for an explicit symmetric ``H`` (a callable object: it shows as ``hvp(H: 5 x 5)`` in the
    checker's messages and survives the checker's deep copies)."""

    def __init__(self, h: np.ndarray, label: str = "H") -> None:
        self.h = np.asarray(h, dtype=np.float64)
        self.label = label

    def __call__(self, v: Any) -> np.ndarray:
        return self.h @ np.asarray(v, dtype=np.float64)

    def __repr__(self) -> str:
        return f"hvp({self.label}: {self.h.shape[0]} x {self.h.shape[1]})"


class _KronHVP:
    """``v -> (V H)`` flattened, with ``V = v.reshape(out, in)``: the Hessian ``kron(I_out, H)`` of a linear
    layer's squared output error with respect to its whole ``[out, in]`` weight (never formed)."""

    def __init__(self, h: np.ndarray, out: int) -> None:
        self.h = np.asarray(h, dtype=np.float64)
        self.out = out

    def __call__(self, v: Any) -> np.ndarray:
        v = np.asarray(v, dtype=np.float64)
        return (v.reshape(self.out, -1) @ self.h).ravel()

    def __repr__(self) -> str:
        n = self.out * self.h.shape[0]
        return f"hvp(linear layer {self.out} x {self.h.shape[0]}: {n} x {n})"


# =========================================================================== hutchinson_trace
@named("hutchinson_trace")
def _hutchinson_reference(hvp, dim, n_samples=64, seed=0):
    return R.hutchinson_trace(hvp, dim, n_samples=n_samples, seed=seed)


def _hutch(
    hvp,
    dim,
    n_samples=64,
    seed=0,
    *,
    probe: str = "pm1",
    reduce: str = "mean",
    form: str = "vHv",
    rng_once: bool = True,
    fixed_seed: int | None = None,
):
    """Hutchinson's estimator with one knob per classic mistake (defaults: the right answer)."""
    s = seed if fixed_seed is None else fixed_seed
    if probe == "legacy":
        legacy = np.random.RandomState(s)  # what np.random.seed(seed) + np.random.randint would draw
    rng = np.random.default_rng(s)
    samples = []
    for _ in range(n_samples):
        if not rng_once:
            rng = np.random.default_rng(s)
        if probe == "pm1":
            v = rng.integers(0, 2, size=dim) * 2.0 - 1.0
        elif probe == "01":
            v = rng.integers(0, 2, size=dim).astype(np.float64)
        elif probe == "normal":
            v = rng.standard_normal(dim)
        elif probe == "legacy":
            v = legacy.randint(0, 2, size=dim) * 2.0 - 1.0
        else:  # pragma: no cover - a typo in this file
            raise ValueError(probe)
        hv = np.asarray(hvp(v), dtype=np.float64)
        if form == "vHv":
            samples.append(float(v @ hv))
        elif form == "sumHv":
            samples.append(float(hv.sum()))
        elif form == "mean_vHv":
            samples.append(float(np.mean(v * hv)))
    return float(np.sum(samples)) if reduce == "sum" else float(np.mean(samples))


_HUTCH_MISTAKES = [
    Mistake(
        lambda hvp, dim, n_samples=64, seed=0: _hutch(hvp, dim, n_samples, seed, probe="01"),
        "the probes must be Rademacher vectors of +1 and -1: rng.integers(0, 2, size=dim) gives 0 and 1; map "
        "them with * 2.0 - 1.0. (Only E[v v^T] = I makes v^T H v an unbiased estimate of the trace.)",
    ),
    Mistake(
        lambda hvp, dim, n_samples=64, seed=0: _hutch(hvp, dim, n_samples, seed, probe="normal"),
        "Gaussian probes also estimate the trace, but this exercise (and the course's reference) uses Rademacher "
        "probes, v = rng.integers(0, 2, size=dim) * 2.0 - 1.0: they have lower variance (v_i^2 = 1 exactly) "
        "and give the same numbers as the reference.",
    ),
    Mistake(
        lambda hvp, dim, n_samples=64, seed=0: _hutch(hvp, dim, n_samples, seed, probe="legacy"),
        "use a Generator, rng = np.random.default_rng(seed), not the legacy np.random.seed / np.random.randint "
        "(a different random stream, so different probes).",
    ),
    Mistake(
        lambda hvp, dim, n_samples=64, seed=0: _hutch(hvp, dim, n_samples, seed, reduce="sum"),
        "return the MEAN of the n_samples values v^T H v, not their sum: each one is already an estimate of "
        "the trace.",
    ),
    Mistake(
        lambda hvp, dim, n_samples=64, seed=0: _hutch(hvp, dim, n_samples, seed, form="sumHv"),
        "each sample is v^T (H v) = np.dot(v, hvp(v)): you summed H v without multiplying by v first.",
    ),
    Mistake(
        lambda hvp, dim, n_samples=64, seed=0: _hutch(hvp, dim, n_samples, seed, form="mean_vHv"),
        "each sample is the dot product v^T (H v) = np.sum(v * hvp(v)), not np.mean(v * hvp(v)) nor "
        "v^T H v / v^T v (both divide the trace by dim): with E[v v^T] = I, v^T H v itself estimates tr(H).",
    ),
    Mistake(
        lambda hvp, dim, n_samples=64, seed=0: _hutch(hvp, dim, n_samples, seed, rng_once=False),
        "create the generator ONCE, before the loop: np.random.default_rng(seed) inside the loop restarts the "
        "stream, so every probe is the same vector and averaging gains nothing.",
    ),
    Mistake(
        lambda hvp, dim, n_samples=64, seed=0: None if seed == 0 else _hutch(hvp, dim, n_samples, 0, fixed_seed=0),
        "use the seed argument: rng = np.random.default_rng(seed), not a fixed seed.",
    ),
]


def _symmetric(rng: np.random.Generator, n: int, spd: bool = True) -> np.ndarray:
    a = rng.normal(size=(n, n))
    if spd:
        return a @ a.T / n + 0.1 * np.eye(n)
    return (a + a.T) / 2  # indefinite: eigenvalues of both signs


def _hutch_cases(rng: np.random.Generator) -> list[Case]:
    x = rng.normal(size=(64, 6)) * np.exp(rng.normal(0.0, 0.5, size=6))
    layer_h = 2.0 * x.T @ x / x.shape[0]
    diag = np.diag(rng.uniform(0.5, 5.0, size=7))
    return [
        Case("a diagonal H: every probe gives the exact trace", (_MatrixHVP(diag, "diagonal"), 7), {"n_samples": 4}),
        Case("a random positive definite H, 5 x 5", (_MatrixHVP(_symmetric(rng, 5)), 5), {"n_samples": 16}),
        Case("one probe: n_samples=1", (_MatrixHVP(_symmetric(rng, 6)), 6), {"n_samples": 1}),
        Case("an indefinite symmetric H (negative eigenvalues too)", (_MatrixHVP(_symmetric(rng, 8, False)), 8),
             {"n_samples": 32, "seed": 3}),
        Case("seed 7", (_MatrixHVP(_symmetric(rng, 9)), 9), {"n_samples": 10, "seed": 7}),
        Case("dim 1: H is a number", (_MatrixHVP(np.array([[2.5]])), 1), {"n_samples": 5, "seed": 1}),
        Case("the defaults: n_samples=64, seed=0", (_MatrixHVP(_symmetric(rng, 12)), 12)),
        Case("a linear layer's Hessian kron(I_3, 2 X^T X / n), never formed", (_KronHVP(layer_h, 3), 18),
             {"n_samples": 40, "seed": 11}),
        Case("a large H: dim 200", (_MatrixHVP(_symmetric(rng, 200)), 200), {"n_samples": 8, "seed": 5}),
    ]


@checker(reference=_hutchinson_reference)
def check_hutchinson_trace(student_fn: Any) -> CheckResult:
    """Check ``hutchinson_trace(hvp, dim, n_samples=64, seed=0) -> float`` (mean of ``v^T H v``, Rademacher)."""
    return check_with_hints(
        student_fn,
        _hutchinson_reference,
        _hutch_cases,
        _HUTCH_MISTAKES,
        name="hutchinson_trace",
        rtol=_TRACE_RTOL,
        atol=_TRACE_ATOL,
    )


# =========================================================================== allocate_bits
@named("allocate_bits")
def _allocate_reference(sensitivity, n_params, budget_bits, choices=(2, 3, 4, 8)):
    return [int(b) for b in R.allocate_bits(sensitivity, n_params, budget_bits, choices)]


def _search(sensitivity, n_params, budget_bits, choices=(2, 3, 4, 8), *, fits=None, objective=None, out="bits"):
    """Exhaustive search with one knob per classic mistake (defaults: the right answer). ``fits(bits)`` decides
    whether an allocation is allowed, ``objective(picks)`` is minimised; returns bit widths or indices."""
    sens = np.asarray(sensitivity, dtype=np.float64)
    n = [int(v) for v in n_params]
    if fits is None:
        def fits(bits):
            return sum(k * b for k, b in zip(n, bits)) <= budget_bits
    if objective is None:
        def objective(picks):
            return sum(sens[i, c] for i, c in enumerate(picks))
    best, best_value = None, np.inf
    for picks in itertools.product(range(len(choices)), repeat=len(n)):
        bits = [choices[c] for c in picks]
        if fits(bits):
            value = objective(picks)
            if value < best_value:
                best, best_value = picks, value
    if best is None:
        return None
    return list(best) if out == "index" else [int(choices[c]) for c in best]


_ALLOC_MISTAKES = [
    Mistake(
        lambda s, n, b, choices=(2, 3, 4, 8): [int(choices[int(np.argmin(row))]) for row in np.asarray(s)],
        "respect the budget: taking each layer's least sensitive choice on its own ignores "
        "sum_i n_params[i] * bits_i <= budget_bits. Search over whole allocations (itertools.product).",
    ),
    Mistake(
        lambda s, n, b, choices=(2, 3, 4, 8): _search(
            s, n, b, choices, fits=lambda bits: sum(k * x for k, x in zip(n, bits)) < b),
        "the budget is an upper bound that may be reached: keep allocations with total bits <= budget_bits, not "
        "< (the best allocation often uses the whole budget).",
    ),
    Mistake(
        lambda s, n, b, choices=(2, 3, 4, 8): _search(
            s, n, b, choices, fits=lambda bits: np.mean(bits) <= b / sum(n)),
        "weight each layer's bit width by its number of parameters: the cost is sum_i n_params[i] * bits_i "
        "(bits of storage), not the plain average of the bit widths.",
    ),
    Mistake(
        lambda s, n, b, choices=(2, 3, 4, 8): _search(
            s, n, b, choices, fits=lambda bits: sum(bits) <= b),
        "the cost of layer i is n_params[i] * bits_i (every weight takes bits_i bits): you added the bit widths "
        "without multiplying by the number of parameters.",
    ),
    Mistake(
        lambda s, n, b, choices=(2, 3, 4, 8): _search(
            s, n, b, choices, objective=lambda p: -sum(np.asarray(s, dtype=float)[i, c] for i, c in enumerate(p))),
        "MINIMISE the total sensitivity (the predicted loss increase), do not maximise it.",
    ),
    Mistake(
        lambda s, n, b, choices=(2, 3, 4, 8): _search(s, n, b, choices, out="index"),
        "return the bit widths themselves (e.g. [8, 4, 3]), not their indices into choices.",
    ),
    Mistake(
        lambda s, n, b, choices=(2, 3, 4, 8): None if tuple(choices) == (2, 3, 4, 8) else _search(s, n, b),
        "use the choices argument: the candidate bit widths are not always (2, 3, 4, 8).",
    ),
]


def _sensitivity(rng: np.random.Generator, n_layers: int, choices: tuple[int, ...]) -> np.ndarray:
    """HAWQ-like costs: trace_i / n_i * ||Q_b(W_i) - W_i||^2 ~ t_i * 4^-b, decreasing in b, with noise."""
    traces = np.exp(rng.normal(0.0, 1.5, size=n_layers))
    bits = np.asarray(choices, dtype=np.float64)
    noise = np.exp(rng.normal(0.0, 0.2, size=(n_layers, len(choices))))
    return traces[:, None] * 4.0 ** (-bits[None, :]) * noise


def _alloc_cases(rng: np.random.Generator) -> list[Case]:
    cases = []
    sens = _sensitivity(rng, 3, (2, 3, 4, 8))
    cases.append(Case("tiny layers: n_params [1, 1, 3], 14 bits", (sens.tolist(), [1, 1, 3], 14)))
    sens = _sensitivity(rng, 3, (2, 3, 4, 8))
    cases.append(Case("three layers of equal size, average 4 bits", (sens.tolist(), [100, 100, 100], 1200)))
    sens = _sensitivity(rng, 4, (2, 3, 4, 8))
    cases.append(Case("four layers of different sizes, average 4 bits",
                      (sens.tolist(), [4096, 1024, 16384, 2048], 4 * (4096 + 1024 + 16384 + 2048))))
    sens = _sensitivity(rng, 5, (2, 3, 4, 8))
    n = [300, 700, 300, 1200, 500]
    cases.append(Case("five layers, average 3.5 bits", (sens, n, 3.5 * sum(n))))
    sens = _sensitivity(rng, 6, (3, 4, 6, 8))
    n = [int(v) for v in rng.integers(50, 500, size=6)]
    cases.append(Case("six layers, choices (3, 4, 6, 8), average 5 bits", (sens.tolist(), n, 5 * sum(n)),
                      {"choices": (3, 4, 6, 8)}))
    sens = _sensitivity(rng, 4, (2, 4, 8))
    cases.append(Case("choices (2, 4, 8)", (sens.tolist(), [10, 20, 30, 40], 500), {"choices": (2, 4, 8)}))
    sens = _sensitivity(rng, 1, (2, 3, 4, 8))
    cases.append(Case("one layer", (sens.tolist(), [64], 64 * 5)))
    sens = _sensitivity(rng, 3, (2, 3, 4, 8))
    cases.append(Case("a tight budget: every layer at 2 bits", (sens.tolist(), [50, 80, 20], 2 * 150)))
    sens = _sensitivity(rng, 3, (2, 3, 4, 8))
    cases.append(Case("a loose budget: every layer at 8 bits", (sens.tolist(), [50, 80, 20], 8 * 150 + 7)))
    # one very sensitive small layer and one insensitive large layer: the sizes decide
    sens = _sensitivity(rng, 3, (2, 3, 4, 8))
    sens[0] *= 1000.0
    sens[2] /= 1000.0
    cases.append(Case("one very sensitive small layer, one insensitive large one",
                      (sens.tolist(), [100, 400, 2000], 3 * 2500)))
    return cases


def _as_list(got: Any, expected: Any) -> Any:
    """An array or tensor answer as a list (``[8, 4, 3]`` is expected; an integer array
    is just as good): the ``prepare`` of :func:`effx_lab.check.check_with_hints`."""
    if isinstance(got, np.ndarray) or (hasattr(got, "tolist") and hasattr(got, "shape")):
        return got.tolist() if len(got.shape) == 1 else got
    if isinstance(got, tuple):
        return list(got)
    return got


@checker(reference=_allocate_reference)
def check_allocate_bits(student_fn: Any) -> CheckResult:
    """Check ``allocate_bits(sensitivity, n_params, budget_bits, choices=(2, 3, 4, 8)) -> [bits per layer]``."""
    return check_with_hints(
        student_fn,
        _allocate_reference,
        _alloc_cases,
        _ALLOC_MISTAKES,
        name="allocate_bits",
        rtol=0.0,
        atol=0.0,
        prepare=_as_list,
    )


# =========================================================================== gptq_quantize_simple
@named("gptq_quantize_simple")
def _gptq_reference(w, h, scale, zero_point, bits=4, damp=0.01):
    # the package's GPTQ measures the same per-row min/max grid of w that the cases pass in
    return R.gptq_quantize(w, h, bits=bits, damp=damp).weight


def _gptq(
    w,
    h,
    scale,
    zero_point,
    bits=4,
    damp=0.01,
    *,
    feedback: bool = True,
    damping: str = "relative",
    sign: float = -1.0,
    divide: bool = True,
    factor: str = "upper_inv",
    clip: bool = True,
    zero: bool = True,
):
    """GPTQ with one column at a time and one knob per classic mistake (defaults: the right answer)."""
    W = np.array(w, dtype=np.float64)
    H = np.array(h, dtype=np.float64)
    n = H.shape[0]
    if damping == "relative":
        H = H + damp * np.mean(np.diag(H)) * np.eye(n)
    elif damping == "absolute":
        H = H + damp * np.eye(n)
    if factor == "upper_inv":
        U = np.linalg.cholesky(np.linalg.inv(H)).T
    elif factor == "upper_h":
        U = np.linalg.cholesky(H).T
    elif factor == "plain_inv":
        U = np.linalg.inv(H)
    s, z = np.asarray(scale, dtype=np.float64), np.asarray(zero_point, dtype=np.float64)
    if not zero:
        z = np.zeros_like(z)
    qmax = 2**bits - 1
    out = np.empty_like(W)
    for j in range(n):
        q = np.round(W[:, j] / s) + z
        if clip:
            q = np.clip(q, 0, qmax)
        out[:, j] = (q - z) * s
        if feedback:
            err = W[:, j] - out[:, j]
            if divide:
                err = err / U[j, j]
            W[:, j + 1 :] += sign * np.outer(err, U[j, j + 1 :])
    return out


_GPTQ_MISTAKES = [
    Mistake(
        lambda w, h, s, z, bits=4, damp=0.01: _gptq(w, h, s, z, bits, damp, feedback=False),
        "your result is round-to-nearest: after quantizing column j, spread its error over the LATER columns, "
        "W[:, j+1:] -= err[:, None] * U[j, j+1:] with err = (W[:, j] - w_hat_j) / U[j, j] and U the UPPER "
        "Cholesky factor of H^-1 (np.linalg.cholesky returns the lower one L, whose row j is zero after the "
        "diagonal: use U = L.T), and quantize each column as it is AFTER the earlier updates.",
    ),
    Mistake(
        lambda w, h, s, z, bits=4, damp=0.01: _gptq(w, h, s, z, bits, damp, damping="none"),
        "dampen H first: H + damp * mean(diag(H)) * I (the damp argument, relative to the mean diagonal).",
    ),
    Mistake(
        lambda w, h, s, z, bits=4, damp=0.01: _gptq(w, h, s, z, bits, damp, damping="absolute"),
        "the dampening is relative: add damp * mean(diag(H)) to the diagonal, not damp itself.",
    ),
    Mistake(
        lambda w, h, s, z, bits=4, damp=0.01: _gptq(w, h, s, z, bits, damp, sign=1.0),
        "the update has a minus sign: W[:, j+1:] -= err[:, None] * U[j, j+1:] (the later weights move to "
        "cancel the error, err = W[:, j] - w_hat_j).",
    ),
    Mistake(
        lambda w, h, s, z, bits=4, damp=0.01: _gptq(w, h, s, z, bits, damp, divide=False),
        "divide the error by the diagonal entry first: err = (W[:, j] - w_hat_j) / U[j, j], then "
        "W[:, j+1:] -= err[:, None] * U[j, j+1:] (Algorithm 1, lines 7-8).",
    ),
    Mistake(
        lambda w, h, s, z, bits=4, damp=0.01: _gptq(w, h, s, z, bits, damp, factor="upper_h"),
        "the factor is the Cholesky factor of the INVERSE, U = cholesky(inv(H)).T, not of H itself.",
    ),
    Mistake(
        lambda w, h, s, z, bits=4, damp=0.01: _gptq(w, h, s, z, bits, damp, factor="plain_inv"),
        "rows of the plain inverse H^-1 are only right for the first column: after each column, H^-1 must lose "
        "that column (eq. 3 of the paper). The rows of the upper Cholesky factor of H^-1 do that for you: use "
        "U = np.linalg.cholesky(np.linalg.inv(H)).T.",
    ),
    Mistake(
        lambda w, h, s, z, bits=4, damp=0.01: _gptq(w, h, s, z, bits, damp, clip=False),
        "clip the integers to the grid, q = clip(round(w / scale) + zero_point, 0, 2**bits - 1): the updates "
        "can push a weight outside the row's original [min, max] range.",
    ),
    Mistake(
        lambda w, h, s, z, bits=4, damp=0.01: _gptq(w, h, s, z, bits, damp, zero=False),
        "use the zero point: q = clip(round(w / scale) + zero_point, 0, 2**bits - 1) and "
        "w_hat = (q - zero_point) * scale.",
    ),
]


def _gptq_case(rng: np.random.Generator, out: int, n_in: int, bits: int, *, tokens: int | None = None,
               mix: float = 0.6) -> tuple:
    """``(w, h, scale, zero_point, bits)``: correlated inputs of unequal scales, as in a real layer, and the
    per-row affine min/max grid of ``w`` (the one the package's GPTQ measures)."""
    tokens = tokens or 4 * n_in + 8
    z = rng.normal(size=(tokens, n_in))
    m = np.eye(n_in) + rng.normal(size=(n_in, n_in)) * (mix / np.sqrt(n_in))
    x = (z @ m) * np.exp(rng.normal(0.0, 0.5, size=n_in))
    h = R.gptq_hessian(x)
    w = rng.normal(0.0, 0.05, size=(out, n_in))
    qp = R.compute_qparams(w, bits, False, granularity="channel", axis=0)
    return w, h, qp.scale[:, 0].copy(), qp.zero_point[:, 0].astype(np.int64), bits


def _gptq_cases(rng: np.random.Generator) -> list[Case]:
    cases = [
        Case("small: w [3, 6], 4 bits", _gptq_case(rng, 3, 6, 4)),
        Case("w [8, 16], 3 bits", _gptq_case(rng, 8, 16, 3)),
        Case("w [5, 12], 2 bits (updates leave the row's range)", _gptq_case(rng, 5, 12, 2, mix=1.5)),
        Case("w [4, 10], 8 bits", _gptq_case(rng, 4, 10, 8)),
        Case("one row: w [1, 9], 4 bits", _gptq_case(rng, 1, 9, 4)),
        Case("one column: w [6, 1], 4 bits", _gptq_case(rng, 6, 1, 4)),
        Case("strongly correlated inputs: w [6, 12], 3 bits", _gptq_case(rng, 6, 12, 3, mix=3.0)),
        Case("damp=0.1", _gptq_case(rng, 4, 8, 4), {"damp": 0.1}),
        Case("damp=0 (H is positive definite here)", _gptq_case(rng, 4, 8, 3), {"damp": 0.0}),
        Case("random draw: w [16, 32], 4 bits", _gptq_case(rng, 16, 32, 4)),
    ]
    return cases


@checker(reference=_gptq_reference)
def check_gptq_quantize_simple(student_fn: Any) -> CheckResult:
    """Check ``gptq_quantize_simple(w, h, scale, zero_point, bits=4, damp=0.01) -> w_hat [out, in]``."""
    return check_with_hints(
        student_fn,
        _gptq_reference,
        _gptq_cases,
        _GPTQ_MISTAKES,
        name="gptq_quantize_simple",
        rtol=_GPTQ_RTOL,
        atol=_GPTQ_ATOL,
    )


def _cases_for_tests() -> dict[str, tuple[Callable, Callable[[np.random.Generator], list[Case]], list[Mistake]]]:
    """The reference, case generator and mistakes of each exercise (for the tests: ties, reachable hints)."""
    return {
        "hutchinson_trace": (_hutchinson_reference, _hutch_cases, _HUTCH_MISTAKES),
        "allocate_bits": (_allocate_reference, _alloc_cases, _ALLOC_MISTAKES),
        "gptq_quantize_simple": (_gptq_reference, _gptq_cases, _GPTQ_MISTAKES),
    }
