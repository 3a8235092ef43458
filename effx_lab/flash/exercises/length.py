"""Checkers for notebook 07.4's exercises (FLASH at length).

* ``equal_glu_width(d_model, d_ff) -> int``: the largest GLU hidden width whose weights
  (``W_u, b_u, W_v, b_v, W_o, b_o``: ``3 d e + 2 e + d``) do not outnumber a GELU FFN's
  of width ``d_ff`` (``2 d d_ff + d_ff + d``), as
  :func:`effx_lab.flash.experiments.equal_glu_width`; it sizes the MHSA + GLU model of
  the comparison.
* ``crossover_length(lengths, t_quad, t_flash) -> float``: the length where power laws
  ``t = a n^p`` fitted (least squares in log-log) to FLASH-Quad's and FLASH's measured
  times meet, ``inf`` when FLASH-Quad's exponent is not the larger, as
  :func:`effx_lab.flash.experiments.crossover_length`; it predicts, from the reader's
  own timings, the length beyond which FLASH is the faster.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from effx_lab.check import Case, CheckResult, Mistake, check_with_hints, checker, named

from ..experiments import crossover_length, equal_glu_width

__all__ = ["check_equal_glu_width", "check_crossover_length"]


# =========================================================================== GLU width
@named("equal_glu_width")
def _glu_width_reference(d_model, d_ff):
    return equal_glu_width(d_model, d_ff)


_GLU_WIDTH_MISTAKES = [
    Mistake(
        lambda d_model, d_ff: d_ff,
        "a GLU has three matrices (W_u, W_v, W_o) where the GELU FFN has two: at the "
        "same width it holds about 1.5x the weights. Solve 3 d e + 2 e + d <= "
        "2 d d_ff + d_ff + d for e.",
    ),
    Mistake(
        lambda d_model, d_ff: (2 * d_ff) // 3,
        "2 d_ff / 3 forgets the biases: the GLU has two hidden biases (b_u, b_v, 2 e "
        "weights), the FFN one (b1, d_ff weights). Count them: 3 d e + 2 e + d <= "
        "2 d d_ff + d_ff + d.",
    ),
    Mistake(
        lambda d_model, d_ff: round(2 * d_ff / 3),
        "rounding 2 d_ff / 3 to the nearest integer can overshoot the budget, and "
        "forgets the biases: take the largest e with 3 d e + 2 e + d <= "
        "2 d d_ff + d_ff + d (floor division).",
    ),
    Mistake(
        lambda d_model, d_ff: max(1, (2 * d_model * d_ff + d_ff) // (3 * d_model + 1)),
        "the GLU has two hidden biases, b_u and b_v: 2 e, not e.",
    ),
    Mistake(
        lambda d_model, d_ff: max(1, -(-(2 * d_model * d_ff + d_ff) // (3 * d_model + 2))),
        "the GLU must not hold more weights than the FFN: round e down (floor), "
        "not up.",
    ),
    Mistake(
        lambda d_model, d_ff: max(1, (2 * d_model * d_ff) // (3 * d_model + 2)),
        "the FFN's hidden bias b1 (d_ff weights) belongs to its budget too: "
        "2 d d_ff + d_ff + d.",
    ),
]


def _glu_width_cases(rng: np.random.Generator) -> list[Case]:
    cases = [  # the first cases tell the mistakes apart
        Case("tiny: d = 2, d_ff = 3", (2, 3)),
        Case("tiny: d = 1, d_ff = 4", (1, 4)),
        Case("this notebook's model: d = 64, d_ff = 256", (64, 256)),
        Case("d = 3, d_ff = 12", (3, 12)),
        Case("a GPT-2-small FFN: d = 768, d_ff = 3072", (768, 3072)),
        Case("narrow FFN: d = 512, d_ff = 100", (512, 100)),
        Case("d = 1, d_ff = 1: the smallest width is 1", (1, 1)),
        Case("d = 5, d_ff = 7", (5, 7)),
    ]
    for i in range(5):
        d = int(rng.integers(1, 300))
        f = int(rng.integers(1, 1200))
        cases.append(Case(f"random draw {i + 1}: d = {d}, d_ff = {f}", (d, f)))
    return cases


@checker(reference=_glu_width_reference)
def check_equal_glu_width(student_fn: Any) -> CheckResult:
    """Check ``equal_glu_width(d_model, d_ff) -> int`` (exact)."""
    return check_with_hints(
        student_fn, _glu_width_reference, _glu_width_cases, _GLU_WIDTH_MISTAKES,
        name="equal_glu_width", rtol=0.0, atol=0.0, exact=True,
    )  # fmt: skip


# =========================================================================== crossover
@named("crossover_length")
def _crossover_reference(lengths, t_quad, t_flash):
    return crossover_length(lengths, t_quad, t_flash)


def _fit(lengths, times, log=np.log):
    x, y = log(np.asarray(lengths, dtype=np.float64)), log(np.asarray(times, dtype=np.float64))
    p = float(np.polyfit(x, y, 1)[0])
    return p, float(y.mean() - p * x.mean())


def _meet(fq, ff, exp=math.exp):
    (pq, aq), (pf, af) = fq, ff
    if pq <= pf:
        return math.inf
    with np.errstate(over="ignore"):
        return float(exp((af - aq) / (pq - pf)))


def _swapped(lengths, t_quad, t_flash):
    (pq, aq), (pf, af) = _fit(lengths, t_quad), _fit(lengths, t_flash)
    return math.inf if pq <= pf else float(math.exp((aq - af) / (pq - pf)))


def _first_measured(lengths, t_quad, t_flash):
    for n, q, f in sorted(zip(lengths, t_quad, t_flash)):
        if f < q:
            return float(n)
    return math.inf


def _endpoint_fit(lengths, times):
    n, t = np.asarray(lengths, dtype=np.float64), np.asarray(times, dtype=np.float64)
    i, j = int(np.argmin(n)), int(np.argmax(n))
    p = float(np.log(t[j] / t[i]) / np.log(n[j] / n[i]))
    return p, float(np.log(t[i]) - p * np.log(n[i]))


def _linear_fit(lengths, times):
    return _fit(lengths, times, log=lambda v: v)


def _no_inf(lengths, t_quad, t_flash):
    (pq, aq), (pf, af) = _fit(lengths, t_quad), _fit(lengths, t_flash)
    return float(math.exp((af - aq) / (pq - pf))) if pq != pf else math.inf


_CROSSOVER_MISTAKES = [
    Mistake(
        _swapped,
        "the lines meet where log a_q + p_q log n = log a_f + p_f log n: "
        "log n* = (log a_f - log a_q) / (p_q - p_f); your signs give 1 / n*.",
    ),
    Mistake(
        _first_measured,
        "return the crossing of the two fitted power laws, not the first measured "
        "length where FLASH was faster: it falls between (or outside) the "
        "measured lengths.",
    ),
    Mistake(
        lambda n, q, f: _meet(_endpoint_fit(n, q), _endpoint_fit(n, f)),
        "fit every measurement by least squares (np.polyfit on the logs), not the "
        "line through the first and last point: single timings are noisy.",
    ),
    Mistake(
        lambda n, q, f: _meet(_fit(n, q, np.log10), _fit(n, f, np.log10)),
        "you fitted with log10 and inverted with exp: use one base (np.log and "
        "math.exp, or log10 and 10**).",
    ),
    Mistake(
        lambda n, q, f: _meet(_linear_fit(n, q), _linear_fit(n, f), exp=np.exp),
        "fit t = a n^p as a straight line in log-log (log t against log n), not t "
        "against n.",
    ),
    Mistake(
        _no_inf,
        "when FLASH-Quad's exponent is not larger than FLASH's (p_q <= p_f), the "
        "fitted FLASH never overtakes it from then on: return math.inf.",
    ),
]


def _crossover_cases(rng: np.random.Generator) -> list[Case]:
    ns = np.array([512, 1024, 2048, 4096, 8192], dtype=np.float64)

    def noisy(p: float, a: float, sigma: float = 0.1) -> np.ndarray:
        return a * ns**p * np.exp(rng.normal(0.0, sigma, size=ns.size))

    exact_q, exact_f = 1e-9 * ns**2, 2e-6 * ns
    cases = [
        Case("noisy timings: quadratic FLASH-Quad, linear FLASH", (ns, noisy(1.9, 2e-9), noisy(1.05, 3e-6))),
        Case("exact power laws crossing at n = 2000", (ns, exact_q, exact_f)),
        Case("plain Python lists", (ns.tolist(), exact_q.tolist(), (4e-6 * ns).tolist())),
        Case(
            "FLASH faster everywhere: the crossing lies below the lengths",
            (ns, 1e-8 * ns**2, 1e-7 * ns),
        ),
        Case(
            "FLASH slower everywhere: the crossing lies above the lengths",
            (ns, 1e-10 * ns**2, 1e-5 * ns),
        ),
        Case("FLASH-Quad grows no faster: inf", (ns, 1e-6 * ns, 1e-5 * ns**1.2)),
        Case("FLASH grows faster (a bad FLASH): inf", (ns, 3e-6 * ns, 1e-7 * ns**1.5)),
        Case("two lengths only", ([1024, 4096], [0.05, 0.7], [0.03, 0.13])),
        Case(
            "milliseconds, three lengths",
            (np.array([256.0, 1024.0, 4096.0]), np.array([1.0, 9.0, 120.0]), np.array([2.5, 9.0, 38.0])),
        ),
    ]
    for i in range(4):
        k = int(rng.integers(3, 7))
        lengths = np.sort(rng.choice(np.arange(128, 20_000), size=k, replace=False)).astype(np.float64)
        pq, pf = float(rng.uniform(1.5, 2.2)), float(rng.uniform(0.8, 1.2))
        tq = 1e-9 * lengths**pq * np.exp(rng.normal(0.0, 0.15, size=k))
        tf = 1e-6 * lengths**pf * np.exp(rng.normal(0.0, 0.15, size=k))
        cases.append(Case(f"random noisy draw {i + 1}: {k} lengths", (lengths, tq, tf)))
    return cases


@checker(reference=_crossover_reference)
def check_crossover_length(student_fn: Any) -> CheckResult:
    """Check ``crossover_length(lengths, t_quad, t_flash) -> float`` (rtol 1e-6)."""
    return check_with_hints(
        student_fn, _crossover_reference, _crossover_cases, _CROSSOVER_MISTAKES,
        name="crossover_length", rtol=1e-6, atol=0.0,
    )  # fmt: skip
