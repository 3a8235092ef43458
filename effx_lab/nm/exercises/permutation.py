"""Checkers for notebook 04.2's exercises (channel permutations for N:M sparsity).

* ``permute_ffn(params, perm) -> dict``: the FFN with its hidden units in the order
  ``perm`` (the shared LM's layout: ``w1 (d, d_ff)``, ``b1 (d_ff,)``, ``w2 (d_ff, d)``):
  ``w1[:, perm]``, ``b1[perm]``, ``w2[perm, :]``, every other key unchanged, as
  :func:`effx_lab.nm.reference.permute_ffn`. In the notebook it permutes a real MiniLM
  FFN, whose output is then shown unchanged in float64.
* ``retained_magnitude(w, n=2, m=4, perm=None) -> float``: the share of ``sum |w|``
  that the N:M mask of ``w[:, perm]`` keeps (groups of ``m`` consecutive input columns
  of ``w (out, in)``), as :func:`effx_lab.nm.reference.retained_magnitude`. In the
  notebook it drives a small greedy swap search whose progress is drawn.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from effx_lab.check import Case, CheckResult, Mistake, check_with_hints, checker, named

from ..reference import permute_ffn, retained_magnitude

__all__ = ["check_permute_ffn", "check_retained_magnitude"]


# =========================================================================== permute_ffn
@named("permute_ffn")
def _permute_ffn_reference(params, perm):
    return permute_ffn(params, perm)


def _ffn_mistake(change):
    """A wrong ``permute_ffn`` from ``change(params, perm) -> dict of changed keys``;
    ``None`` where the wrong indexing could not even run (the student's code would
    have raised, and the checker says so)."""

    def wrong(params, perm):
        p = np.asarray(perm)
        try:
            changed = change(params, p)
        except (IndexError, ValueError):
            return None
        return {**params, **changed}

    return wrong


def _only_ffn(params, perm):
    return {k: v for k, v in _permute_ffn_reference(params, perm).items()
            if k in ("w1", "b1", "w2")}


_PERMUTE_FFN_MISTAKES = [
    Mistake(
        _ffn_mistake(lambda q, p: dict(w1=q["w1"][:, p], b1=q["b1"][p],
                                       w2=q["w2"][:, p])),
        "hidden unit j writes the output through ROW j of w2 (shape (d_ff, d): one row "
        "per unit), so reorder the rows, w2[perm, :]; w2[:, perm] shuffles the "
        "output features and changes the FFN.",
    ),
    Mistake(
        _ffn_mistake(lambda q, p: dict(w1=q["w1"][p, :], b1=q["b1"][p],
                                       w2=q["w2"][p, :])),
        "in this layout w1 has shape (d, d_ff) (h = x @ w1 + b1): hidden unit j is "
        "COLUMN j of w1, so reorder w1[:, perm]; w1[perm, :] shuffles the input "
        "features. (nn.Linear stores the transpose, (d_ff, d).)",
    ),
    Mistake(
        _ffn_mistake(lambda q, p: dict(w1=q["w1"][:, p], w2=q["w2"][p, :])),
        "you forgot b1: unit j has a bias b1[j] that must move with it, so b1 becomes "
        "b1[perm] (otherwise unit j gets another unit's bias and the output changes).",
    ),
    Mistake(
        _ffn_mistake(lambda q, p: dict(w1=q["w1"][:, p], b1=q["b1"][p],
                                       w2=q["w2"][np.argsort(p), :])),
        "w2 was reordered by the inverse permutation (argsort(perm)): the unit that "
        "moves to position i must find its own output row there, so use the same "
        "perm on all three, w1[:, perm], b1[perm], w2[perm, :].",
    ),
    Mistake(
        _ffn_mistake(lambda q, p: dict(w1=q["w1"][:, np.argsort(p)],
                                       b1=q["b1"][np.argsort(p)],
                                       w2=q["w2"][p, :])),
        "w1 and b1 were reordered by the inverse permutation (argsort(perm)) and w2 "
        "by perm: use the same perm on all three, w1[:, perm], b1[perm], w2[perm, :].",
    ),
    Mistake(
        _ffn_mistake(lambda q, p: dict(w1=q["w1"][:, np.argsort(p)],
                                       b1=q["b1"][np.argsort(p)],
                                       w2=q["w2"][np.argsort(p), :])),
        "new position i holds old unit perm[i]: index with perm (w1[:, perm]), not "
        "with its inverse argsort(perm) (the FFN is unchanged either way, but the "
        "order is not the one asked for).",
    ),
    Mistake(
        _ffn_mistake(lambda q, p: dict(w1=q["w1"][:, p], b1=q["b1"][p],
                                       w2=q["w2"][p, :], b2=q["b2"][p])),
        "b2 belongs to the output features (d of them), not to the hidden units: it "
        "stays as it is.",
    ),
    Mistake(
        _only_ffn,
        "return every key of params: the keys other than w1, b1 and w2 (b2, the "
        "LayerNorm, attention weights) pass through unchanged.",
    ),
]


def _ffn(rng, d, d_ff, dtype=np.float64, extra=False):
    p = {
        "w1": rng.normal(0.0, 0.5, size=(d, d_ff)).astype(dtype),
        "b1": rng.normal(0.0, 0.5, size=d_ff).astype(dtype),
        "w2": rng.normal(0.0, 0.5, size=(d_ff, d)).astype(dtype),
        "b2": rng.normal(0.0, 0.5, size=d).astype(dtype),
    }
    if extra:  # a whole layer of models.lm.LM: the other keys pass through
        p.update({
            "ln2_g": np.ones(d, dtype=dtype), "ln2_b": np.zeros(d, dtype=dtype),
            "wq": rng.normal(0.0, 0.5, size=(d, d)).astype(dtype),
        })  # fmt: skip
    return p


def _permute_ffn_cases(rng: np.random.Generator) -> list[Case]:
    cases = [  # the first cases tell the mistakes apart (square ones: d == d_ff)
        Case("square: d = d_ff = 4, a rotation", (_ffn(rng, 4, 4), np.array([1, 2, 3, 0]))),
        Case("square: d = d_ff = 6, a random order", (_ffn(rng, 6, 6), rng.permutation(6))),
        Case("d = 3, d_ff = 8, a random order", (_ffn(rng, 3, 8), rng.permutation(8))),
        Case("d = 5, d_ff = 12, reversed", (_ffn(rng, 5, 12), np.arange(12)[::-1].copy())),
        Case("identity: nothing moves", (_ffn(rng, 4, 8), np.arange(8))),
        Case("a swap of two units", (_ffn(rng, 4, 8), np.array([0, 5, 2, 3, 4, 1, 6, 7]))),
        Case("perm as a Python list", (_ffn(rng, 2, 4), [3, 1, 0, 2])),
        Case("a whole LM layer: the other keys pass through",
             (_ffn(rng, 4, 16, extra=True), rng.permutation(16))),
        Case("float32 weights", (_ffn(rng, 8, 32, dtype=np.float32), rng.permutation(32))),
    ]
    for i in range(4):
        d, d_ff = int(rng.integers(1, 24)), int(rng.integers(1, 64))
        cases.append(Case(f"random draw {i + 1}: d = {d}, d_ff = {d_ff}",
                          (_ffn(rng, d, d_ff), rng.permutation(d_ff))))
    return cases


@checker(reference=_permute_ffn_reference)
def check_permute_ffn(student_fn: Any) -> CheckResult:
    """Check ``permute_ffn(params, perm) -> dict`` (exact: indexing only)."""
    return check_with_hints(
        student_fn, _permute_ffn_reference, _permute_ffn_cases, _PERMUTE_FFN_MISTAKES,
        name="permute_ffn", rtol=0.0, atol=0.0,
    )  # fmt: skip


# ==================================================================== retained_magnitude
@named("retained_magnitude")
def _retained_reference(w, n=2, m=4, perm=None):
    return retained_magnitude(w, n, m, perm)


def _columns(w, perm):
    a = np.asarray(w, dtype=np.float64)
    return a if perm is None else a[:, np.asarray(perm)]


def _top_n_sum(a, n, m, signed=False):
    """Per row and group of ``m`` columns, the sum of the ``n`` kept entries of ``a``
    (the largest ``|a|``, or the largest signed values when ``signed``), kept as signed
    values when ``signed``."""
    g = a.reshape(a.shape[0], -1, m)
    key = g if signed else np.abs(g)
    order = np.argsort(-key, axis=-1, kind="stable")[..., :n]
    return np.take_along_axis(g if signed else np.abs(g), order, axis=-1).sum()


def _retained_mistake(formula):
    """A wrong ``retained_magnitude`` from ``formula(w, n, m, perm) -> float``, with the
    reference's signature; ``None`` where it could not run."""

    def wrong(w, n=2, m=4, perm=None):
        try:
            return float(formula(np.asarray(w, dtype=np.float64), n, m, perm))
        except (IndexError, ValueError):
            return None

    return wrong


_RETAINED_MISTAKES = [
    Mistake(
        _retained_mistake(lambda w, n, m, p: _top_n_sum(w, n, m) / np.abs(w).sum()),
        "your answer is the retained magnitude of the UNPERMUTED w: the permutation "
        "changed nothing. Reorder the input columns first, w[:, perm] (reordering the "
        "rows never changes an N:M mask along the rows), and only then compute the "
        "mask of the permuted weight.",
    ),
    Mistake(
        _retained_mistake(lambda w, n, m, p: 1.0
                          - _top_n_sum(_columns(w, p), n, m) / np.abs(w).sum()),
        "that is the share the mask PRUNES: return the share it keeps, "
        "kept |w| / total |w|.",
    ),
    Mistake(
        _retained_mistake(lambda w, n, m, p: _top_n_sum(_columns(w, p), n, m)
                          / (w.size * n / m)),
        "divide the kept magnitude by the TOTAL magnitude sum |w|, not by the number "
        "of kept entries: the answer is a share of magnitude in [0, 1].",
    ),
    Mistake(
        _retained_mistake(lambda w, n, m, p: _top_n_sum(_columns(w, p), n, m)
                          / np.abs(_columns(w, p)).max(axis=1).sum()),
        "divide by the total magnitude sum |w| of the whole matrix.",
    ),
    Mistake(
        _retained_mistake(lambda w, n, m, p: _top_n_sum(_columns(w, p), n, m,
                                                        signed=True) / w.sum()),
        "use magnitudes: the mask keeps the n largest |w| of each group (a weight of "
        "-3 matters more than one of 0.1), and both sums are of |w|; signed values "
        "cancel.",
    ),
    Mistake(
        _retained_mistake(lambda w, n, m, p: _top_n_sum(_columns(w, p), n, m,
                                                        signed=True)
                          / np.abs(w).sum()),
        "the mask keeps the n largest MAGNITUDES |w| of each group, not the n largest "
        "signed values: rank by np.abs(w).",
    ),
    Mistake(
        _retained_mistake(lambda w, n, m, p: _top_n_sum(_columns(w, p).T, n, m)
                          / np.abs(w).sum()),
        "the groups of m run along the INPUT dimension, the last axis of w (out, in): "
        "m consecutive columns of a row, not m consecutive rows of a column.",
    ),
    Mistake(
        _retained_mistake(lambda w, n, m, p: _top_n_sum(_columns(w, p), m - n, m)
                          / np.abs(w).sum()),
        "N:M keeps n entries of every group of m (2 of 4 for 2:4), not m - n.",
    ),
]


def _retained_cases(rng: np.random.Generator) -> list[Case]:
    def w(rows, cols, dtype=np.float64):
        return rng.normal(0.0, 1.0, size=(rows, cols)).astype(dtype)

    ties = np.array([[1.0, -1.0, 1.0, 0.5, 2.0, 2.0, -2.0, 2.0]])
    small = np.array([[4.0, -3.0, 0.5, 0.25, -0.1, 2.0, 1.0, -5.0],
                      [0.2, 0.1, -6.0, 3.0, 1.5, -0.5, 0.3, 0.4]])
    cases = [  # the first cases tell the mistakes apart (signs mixed; one square)
        Case("8 x 8, square: permuting rows instead of columns would run",
             (w(8, 8), 2, 4, np.array([4, 1, 6, 3, 0, 5, 2, 7]))),
        Case("2 x 8, a swap across the two groups", (small,),
             dict(perm=np.array([7, 1, 2, 3, 4, 5, 6, 0]))),
        Case("2 x 8, no perm (the default order)", (small,)),
        Case("3 x 8, 2:4, a random order", (w(3, 8), 2, 4, rng.permutation(8))),
        Case("5 x 12, 2:4, perm as a list", (w(5, 12), 2, 4, list(rng.permutation(12)))),
        Case("4 x 16, 1:4", (w(4, 16), 1, 4, rng.permutation(16))),
        Case("6 x 16, 2:8", (w(6, 16),), dict(n=2, m=8, perm=rng.permutation(16))),
        Case("3 x 12, 3:4 (keep three of four)", (w(3, 12), 3, 4, rng.permutation(12))),
        Case("ties in |w|: the sum does not depend on which tie is kept",
             (ties, 2, 4, np.array([4, 5, 0, 1, 6, 7, 2, 3]))),
        Case("all positive weights", (np.abs(w(4, 8)), 2, 4, rng.permutation(8))),
        Case("float32 weights, 16 x 32", (w(16, 32, np.float32), 2, 4, rng.permutation(32))),
    ]
    for i in range(4):
        rows, stripes = int(rng.integers(1, 40)), int(rng.integers(1, 12))
        m = int(rng.choice([4, 8]))
        n = int(rng.integers(1, m))
        cols = stripes * m
        cases.append(Case(f"random draw {i + 1}: {rows} x {cols}, {n}:{m}",
                          (w(rows, cols), n, m, rng.permutation(cols))))
    return cases


@checker(reference=_retained_reference)
def check_retained_magnitude(student_fn: Any) -> CheckResult:
    """Check ``retained_magnitude(w, n=2, m=4, perm=None) -> float`` (rtol 1e-6)."""
    return check_with_hints(
        student_fn, _retained_reference, _retained_cases, _RETAINED_MISTAKES,
        name="retained_magnitude", rtol=1e-6, atol=0.0,
    )  # fmt: skip
