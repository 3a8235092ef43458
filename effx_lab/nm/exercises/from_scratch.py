"""Checkers for notebook 04.3's exercises (training sparse from scratch).

* ``srste_grad(w, grad, mask, decay) -> array``: SR-STE's gradient of the dense
  weights, ``grad + decay * (~mask) * w`` (Zhou et al. 2021, eq. 5): the STE gradient
  plus a decay that pulls only the *pruned* weights towards zero, as
  :func:`effx_lab.nm.reference.srste_grad`; it drives the notebook's live SR-STE run.
* ``topkast_masks(w, forward_density, backward_density) -> (A, B)``: Top-KAST's sets
  (Jayakumar et al. 2020), bool arrays of ``w``'s shape: ``A`` the
  ``round(forward_density * w.size)`` largest ``|w|`` of the whole matrix, ``B ⊇ A``
  the ``round(backward_density * w.size)`` largest, as
  :func:`effx_lab.nm.reference.topkast_masks`; it draws the notebook's mask figure
  and drives its hand-made Top-KAST step.

The cases are tie-free (random weights, no ``.5`` counts), so an answer that breaks
ties or rounds halves another way is not failed for it; the tie rule of the course's
version is in its docstring.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from effx_lab.check import Case, CheckResult, Mistake, check_with_hints, checker, named

from ..reference import srste_grad, topkast_masks

__all__ = ["check_srste_grad", "check_topkast_masks"]


# ========================================================================= srste_grad
@named("srste_grad")
def _srste_reference(w, grad, mask, decay):
    return srste_grad(w, grad, mask, decay)


def _srste_case(
    label: str,
    rng: np.random.Generator,
    shape: tuple[int, ...],
    decay: float,
    *,
    mask: str = "2:4",
    scale: float = 1.0,
    dtype: Any = np.float64,
) -> Case:
    w = (scale * rng.standard_normal(shape)).astype(dtype)
    grad = rng.standard_normal(shape).astype(dtype)
    if mask == "2:4":  # the two largest |w| of every 4 along the last axis
        groups = np.abs(w).reshape(-1, 4)
        keep = np.zeros(groups.shape, dtype=bool)
        np.put_along_axis(keep, np.argsort(-groups, axis=-1)[:, :2], True, axis=-1)
        m = keep.reshape(shape)
    elif mask == "random":
        m = rng.random(shape) < 0.5
    else:
        m = np.full(shape, mask == "all kept", dtype=bool)
    return Case(label, (w, grad, m, decay))


_SRSTE_MISTAKES = [
    Mistake(
        lambda w, grad, mask, decay: grad + decay * mask * w,
        "the decay goes on the *pruned* weights, ~mask (¬M in W <- W - γ(g + "
        "λ_W (¬M ⊙ W))), not on the kept ones: SR-STE leaves the weights the forward "
        "pass uses alone and pulls the others towards zero.",
    ),
    Mistake(
        lambda w, grad, mask, decay: grad - decay * ~mask * w,
        "the sign: a gradient step subtracts the gradient, so adding + decay * w to "
        "it pulls w towards zero; with - decay * w the pruned weights grow away from "
        "zero and flip back into the mask.",
    ),
    Mistake(
        lambda w, grad, mask, decay: grad + decay * w,
        "that is ordinary weight decay on every weight: SR-STE decays only the pruned "
        "ones (~mask), the kept weights get the plain gradient.",
    ),
    Mistake(
        lambda w, grad, mask, decay: decay * ~mask * w,
        "you returned only the decay term: the update is the STE gradient *plus* the "
        "decay, grad + decay * (~mask) * w.",
    ),
    Mistake(
        lambda w, grad, mask, decay: ~mask * (grad + decay * w),
        "the mask's complement belongs on the decay term only: every weight, kept or "
        "pruned, still gets the full STE gradient grad (that is what lets a pruned "
        "weight grow back).",
    ),
    Mistake(
        lambda w, grad, mask, decay: mask * grad + decay * ~mask * w,
        "do not mask the gradient: STE passes it straight through to the pruned "
        "weights as well (backward as if dense), so grad is added everywhere.",
    ),
    Mistake(
        lambda w, grad, mask, decay: grad + decay * ~mask * grad,
        "the decay is proportional to the weight w (an L2 pull towards zero), not to "
        "the gradient: grad + decay * (~mask) * w.",
    ),
    Mistake(
        lambda w, grad, mask, decay: grad + decay * ~mask * np.abs(w),
        "decay w itself, not |w|: a negative pruned weight must be pulled up towards "
        "zero, so its decay term is negative.",
    ),
    Mistake(
        lambda w, grad, mask, decay: grad + decay * ~mask * w**2,
        "the decay term is the derivative of (λ_W / 2) w², which is λ_W w, not "
        "λ_W w².",
    ),
]


def _srste_cases(rng: np.random.Generator) -> list[Case]:
    # (label, shape, decay, options); the first cases tell the mistakes apart
    fixed = [
        ("structured mask: 2 of every 4 kept, 2 x 8, decay 0.5", (2, 8), 0.5, {}),
        ("random mask: 3 x 4 weight, decay 0.1", (3, 4), 0.1, {"mask": "random"}),
        ("the paper's decay: 2e-4, weights of size 0.1", (4, 16), 2e-4, {"scale": 0.1}),
        ("plain STE: decay 0", (2, 8), 0.0, {}),
        ("every weight kept: the plain gradient", (2, 4), 0.3, {"mask": "all kept"}),
        ("every weight pruned: 2 x 4, decay 0.3", (2, 4), 0.3, {"mask": "all pruned"}),
        ("1-D weight: 12 entries, decay 0.25", (12,), 0.25, {}),
        ("3-D weight: 2 x 3 x 8, decay 0.05", (2, 3, 8), 0.05, {}),
        ("float32: 4 x 8, decay 0.5", (4, 8), 0.5, {"dtype": np.float32}),
    ]
    cases = [_srste_case(label, rng, shape, d, **kw) for label, shape, d, kw in fixed]
    for i in range(4):
        rows, cols = int(rng.integers(1, 9)), 4 * int(rng.integers(1, 9))
        decay = float(np.round(rng.uniform(1e-3, 1.0), 4))
        cases.append(
            _srste_case(
                f"random draw {i + 1}: {rows} x {cols}, decay {decay}",
                rng, (rows, cols), decay,
            )  # fmt: skip
        )
    return cases


@checker(reference=_srste_reference)
def check_srste_grad(student_fn: Any) -> CheckResult:
    """Check ``srste_grad(w, grad, mask, decay) -> array`` (rtol 1e-6, atol 1e-9; a
    float32 case is judged at float32's precision by the same tolerance)."""
    return check_with_hints(
        student_fn, _srste_reference, _srste_cases, _SRSTE_MISTAKES,
        name="srste_grad", rtol=1e-6, atol=1e-9,
    )  # fmt: skip


# ====================================================================== topkast_masks
@named("topkast_masks")
def _topkast_reference(w, forward_density, backward_density):
    return topkast_masks(w, forward_density, backward_density)


def _top(score: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` largest entries of ``score`` (whole array), as a bool array."""
    keep = np.zeros(score.size, dtype=bool)
    if k > 0:
        keep[np.argsort(-score.reshape(-1), kind="stable")[:k]] = True
    return keep.reshape(score.shape)


def _by_count(count):
    """Top-KAST masks with another rule for the number of entries kept."""

    def wrong(w, d_fwd, d_bwd):
        a = np.abs(w)
        return _top(a, count(d_fwd * w.size)), _top(a, count(d_bwd * w.size))

    return wrong


def _right(w, d_fwd, d_bwd):
    return _by_count(round)(w, d_fwd, d_bwd)


def _per_row(w, d_fwd, d_bwd):
    if w.ndim < 2:
        return None
    rows = np.abs(w).reshape(-1, w.shape[-1])
    a = np.stack([_top(r, round(d_fwd * r.size)) for r in rows]).reshape(w.shape)
    b = np.stack([_top(r, round(d_bwd * r.size)) for r in rows]).reshape(w.shape)
    return a, b


def _b_minus_a(w, d_fwd, d_bwd):
    a, b = _right(w, d_fwd, d_bwd)
    return a, b & ~a


def _b_from_sum(w, d_fwd, d_bwd):
    a = np.abs(w)
    wide = min(1.0, d_fwd + d_bwd)
    return _top(a, round(d_fwd * w.size)), _top(a, round(wide * w.size))


_TOPKAST_MISTAKES = [
    Mistake(
        lambda w, d_fwd, d_bwd: _right(w, d_bwd, d_fwd),
        "you returned the larger set first (densities swapped, or (B, A)): A, the "
        "forward pass's weights, is the smaller top forward_density and comes first; "
        "B, the top backward_density, contains it.",
    ),
    Mistake(
        lambda w, d_fwd, d_bwd: (
            _top(w, round(d_fwd * w.size)), _top(w, round(d_bwd * w.size))
        ),
        "rank by magnitude |w|, not by the signed value: a large negative weight "
        "matters as much as a large positive one.",
    ),
    Mistake(
        lambda w, d_fwd, d_bwd: (
            _top(-np.abs(w), round(d_fwd * w.size)),
            _top(-np.abs(w), round(d_bwd * w.size)),
        ),
        "you kept the *smallest* |w|: Top-KAST keeps the largest (sort |w| in "
        "descending order, or take the end of an ascending sort).",
    ),
    Mistake(
        lambda w, d_fwd, d_bwd: tuple(~m for m in _right(w, d_fwd, d_bwd)),
        "True marks a weight that is *kept* (in the set), not one that is pruned.",
    ),
    Mistake(
        _b_minus_a,
        "B contains A: it is the whole top backward_density set, not only the extra "
        "weights B \\ A that the backward pass adds (the notebook draws those as "
        "B & ~A).",
    ),
    Mistake(
        _b_from_sum,
        "here backward_density is the density of B itself (D' >= D), not the extra "
        "fraction M on top of D: B is the top round(backward_density * size).",
    ),
    Mistake(
        _by_count(int),
        "the count is round(density * size), to the nearest integer; int() and "
        "math.floor round down.",
    ),
    Mistake(
        _by_count(lambda x: int(np.ceil(x))),
        "the count is round(density * size), to the nearest integer, not rounded up.",
    ),
    Mistake(
        _per_row,
        "Top-KAST ranks the whole weight matrix at once (one threshold for the "
        "layer), not each row separately: rows with larger weights keep more.",
    ),
]


def _topkast_cases(rng: np.random.Generator) -> list[Case]:
    def w(*shape: int, row_scale: bool = False) -> np.ndarray:
        out = rng.standard_normal(shape)
        if row_scale:  # rows of very different sizes: global and per-row differ
            out = out * np.geomspace(0.1, 10.0, shape[0])[:, None]
        return out

    cases = [  # the first cases tell the mistakes apart (counts never end in .5)
        Case(
            "global ranking: 4 x 8, D = 0.25, D' = 0.5",
            (w(4, 8, row_scale=True), 0.25, 0.5),
        ),
        Case("rounding: 2 x 5, counts 3.7 and 6.2 -> 4, 6", (w(2, 5), 0.37, 0.62)),
        Case("rounding: 3 x 4, counts 2.76 and 8.4 -> 3, 8", (w(3, 4), 0.23, 0.7)),
        Case(
            "global ranking: rows of very different sizes, 6 x 6, D 0.1, D' 0.3",
            (w(6, 6, row_scale=True), 0.1, 0.3),
        ),
        Case("signs: large negative weights", (0.5 - 3 * np.abs(w(4, 4)), 0.3, 0.6)),
        Case("D = D': A equals B", (w(3, 8), 0.4, 0.4)),
        Case("D' = 1: every weight gets a gradient", (w(4, 4), 0.2, 1.0)),
        Case("1-D weight: 20 entries", (w(20), 0.15, 0.55)),
        Case("3-D weight: 2 x 3 x 5", (w(2, 3, 5), 0.2, 0.43)),
        Case("float32: 8 x 8", (w(8, 8).astype(np.float32), 0.1, 0.25)),
        Case(
            "the notebook's weight size: 192 x 48, D = 0.5, D' = 0.75",
            (w(192, 48), 0.5, 0.75),
        ),
    ]
    for i in range(4):
        rows, cols = int(rng.integers(2, 20)), int(rng.integers(2, 20))
        size = rows * cols
        while True:
            d_fwd = float(np.round(rng.uniform(0.05, 0.6), 3))
            d_bwd = float(np.round(rng.uniform(d_fwd, 1.0), 3))
            if all(abs(d * size % 1 - 0.5) > 0.01 for d in (d_fwd, d_bwd)):
                break
        cases.append(
            Case(
                f"random draw {i + 1}: {rows} x {cols}, D = {d_fwd}, D' = {d_bwd}",
                (w(rows, cols, row_scale=True), d_fwd, d_bwd),
            )
        )
    return cases


@checker(reference=_topkast_reference)
def check_topkast_masks(student_fn: Any) -> CheckResult:
    """Check ``topkast_masks(w, forward_density, backward_density) -> (A, B)``: two bool
    arrays of ``w``'s shape, exact (a list of two is accepted for the tuple)."""
    return check_with_hints(
        student_fn, _topkast_reference, _topkast_cases, _TOPKAST_MISTAKES,
        name="topkast_masks", rtol=0.0, atol=0.0,
    )  # fmt: skip
