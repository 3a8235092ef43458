"""Permutation invariance and the channel-permutation search (NumPy face, 04.2).

**Invariance.** Permuting the feature axis of the queries and the keys together leaves
``Q Kᵀ`` unchanged (:func:`permute_qk`); permuting the hidden units of an FFN (the
columns of ``w1``, the entries of ``b1`` and the rows of ``w2``) leaves the FFN's
output unchanged (:func:`permute_ffn`): the nonlinearity acts on each unit alone. So a
model can store its weights in any order of those channels for free.

**Why it matters for N:M.** An N:M mask keeps ``n`` of every ``m`` consecutive entries
along the input dimension of ``W (out, in)``. Which entries share a group depends on the
order of the input columns; permuting them (and the producer of that input the same
way) changes what the mask can keep. Pool & Yu (2021) measure a permutation by the
*retained magnitude*: the sum of ``|w|`` the N:M mask of ``W[:, perm]`` keeps, divided
by the sum of ``|w|`` (:func:`retained_magnitude`).

**The search** (:func:`search_permutation`). A *stripe* is a group of ``m`` consecutive
columns. The retained magnitude is a sum over stripes of ``sum_rows top_n(|w| of the
stripe's columns)``, so it depends only on which columns share a stripe, not on the
order inside a stripe or the order of the stripes. Methods:

* ``"identity"``: no permutation;
* ``"greedy"``: swap the two columns (in different stripes) whose swap gains the most,
  until no swap gains; then up to ``max_regressions`` times take the best swap that does
  not gain (a *regression*, never undoing one of the last few swaps: a tabu list) and
  keep the best permutation seen; then *narrow and deep*: split the stripes into windows
  of ``stripes_per_window`` stripes (a random grouping from ``seed``) and, inside every
  window, try every assignment of its columns to its stripes (35 for two stripes of 4);
  repeat both while the windows still gain;
* ``"exhaustive"``: every assignment of the columns to stripes,
  ``C! / ((m!)^(C/m) (C/m)!)`` of them (35 for ``C = 8``, 5775 for ``C = 12`` at
  ``m = 4``); refused above :data:`EXHAUSTIVE_LIMIT`.

The gain of swapping the columns at positions ``i`` and ``j`` only involves their two
stripes. Write ``R_i`` for the stripe of ``i`` without column ``i``: adding a column
``x`` to ``R_i`` gives, per row, ``top_n(R_i ∪ {x}) = top_n(R_i) + max(0, x -
nth(R_i))`` (``x`` enters the kept set if it beats the ``n``-th largest of ``R_i``). So
``F[i, j] = sum_rows (top_n(R_i) - top_n(stripe of i) + max(0, |w_j| - nth(R_i)))`` is
the change of the stripe of ``i`` when column ``j`` replaces column ``i``, and the gain
of the swap is ``F[i, j] + F[j, i]``.

Determinism: both faces pick the same swap. The per-row terms are computed the same way
in both (exact elementwise arithmetic), only the sums over rows may round differently;
every choice takes the first candidate within ``tol = 1e-12 * sum |w|`` of the best
(the swap ``(i, j)`` first in row-major order, the window assignment first in the
enumeration, where the unchanged one comes first), a swap or a window move counts as a
gain only above ``tol``, and a new best order must beat the old one by more than
``tol``.
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from effx_lab._validate import check_array, check_choice, check_int, describe

__all__ = [
    "PermutationResult",
    "permute_qk",
    "permute_ffn",
    "retained_magnitude",
    "search_permutation",
    "n_assignments",
]

#: Most assignments of columns to stripes that ``method="exhaustive"`` enumerates.
EXHAUSTIVE_LIMIT = 200_000
#: Most assignments a narrow-and-deep window may try (5775: three stripes of 4).
WINDOW_LIMIT = 6000
#: How many recent swaps the greedy search may not undo (its tabu list).
TABU_LENGTH = 8
#: A swap or window move must gain more than this share of ``sum |w|``.
GAIN_TOLERANCE = 1e-12
METHODS = ("identity", "greedy", "exhaustive")


@dataclass
class PermutationResult:
    """What :func:`search_permutation` found.

    ``perm``: the column order (``w[:, perm]`` is the permuted weight), an int array of
    the face's kind; ``retained``: the retained magnitude of ``w[:, perm]`` (a float in
    ``[0, 1]``); ``history``: the retained magnitude at the start and after every
    applied step (a swap, a regression or a window pass), so it may go down where a
    regression was taken; ``method``: the method's name.
    """

    perm: Any
    retained: float
    history: list[float] = field(default_factory=list)
    method: str = "greedy"

    def __repr__(self) -> str:
        return (
            f"PermutationResult(method={self.method!r}, retained={self.retained:.6f}, "
            f"steps={max(len(self.history) - 1, 0)}, columns={len(self.perm)})"
        )


# ----------------------------------------------------------------- checks (both faces)
def _check_nm(n: Any, m: Any) -> tuple[int, int]:
    m = check_int("m", m, min_value=2)
    n = check_int("n", n, min_value=1)
    if n >= m:
        raise ValueError(f"n must be < m (keep n of every m), got n={n} and m={m}")
    return n, m


def _check_cols(cols: int, m: int, name: str = "w") -> None:
    if cols % m:
        raise ValueError(
            f"m must divide the number of input columns of {name} ({cols}) into "
            f"stripes of m, got m={m}"
        )


def _check_perm_values(p: np.ndarray, size: int, name: str = "perm") -> np.ndarray:
    """``p`` (an int array) as an int64 permutation of ``range(size)``."""
    if p.ndim != 1 or p.shape[0] != size:
        raise ValueError(
            f"{name} must be a 1-D permutation of range({size}), got shape "
            f"{tuple(p.shape)}"
        )
    if p.dtype.kind not in "iu":
        raise TypeError(f"{name} must hold integers, got dtype {p.dtype}")
    p = p.astype(np.int64)
    if not np.array_equal(np.sort(p), np.arange(size)):
        raise ValueError(
            f"{name} must be a permutation of range({size}) (each index once), got "
            "repeated or out-of-range indices"
        )
    return p


def _check_search_args(
    method: Any,
    stripes_per_window: Any,
    max_regressions: Any,
    seed: Any,
    max_iters: Any,
) -> tuple[str, int, int, int, int]:
    if not isinstance(method, str):
        raise TypeError(
            f"method must be a str, one of {METHODS}, got {describe(method)}"
        )
    method = check_choice("method", method, METHODS)
    spw = check_int("stripes_per_window", stripes_per_window, min_value=2)
    reg = check_int("max_regressions", max_regressions, min_value=0)
    seed = check_int("seed", seed, min_value=0)
    iters = check_int("max_iters", max_iters, min_value=0)
    return method, spw, reg, seed, iters


def _check_window(spw: int, m: int) -> None:
    count = n_assignments(spw * m, m)
    if count > WINDOW_LIMIT:
        raise ValueError(
            f"stripes_per_window={spw} at m={m} would try {count} assignments in every "
            f"window (more than WINDOW_LIMIT={WINDOW_LIMIT}); use 2 or 3 stripes per "
            "window at m=4"
        )


def _weight(name: str, w: Any) -> np.ndarray:
    if not isinstance(w, np.ndarray):
        hint = (
            "; use effx_lab.nm.torch_ops for torch tensors"
            if type(w).__module__ == "torch"
            else ""
        )
        raise TypeError(f"{name} must be a 2-D NumPy array, got {describe(w)}{hint}")
    check_array(name, w, ndim=2, dtype_kind="f", finite=True)
    if 0 in w.shape:
        raise ValueError(f"{name} must not be empty, got shape {w.shape}")
    return w


def _perm_array(perm: Any, size: int, name: str = "perm") -> np.ndarray:
    if isinstance(perm, (list, tuple)):
        perm = np.asarray(perm)
    if not isinstance(perm, np.ndarray):
        raise TypeError(
            f"{name} must be a NumPy int array (or list) permuting range({size}), got "
            f"{describe(perm)}"
        )
    if perm.size == 0 and size:
        perm = perm.astype(np.int64)
    return _check_perm_values(perm, size, name)


def n_assignments(columns: int, m: int) -> int:
    """How many ways to split ``columns`` columns into stripes of ``m`` (unordered).

    ``C! / ((m!)^(C/m) (C/m)!)``: 35 for 8 columns at ``m = 4``, 5775 for 12.
    """
    s = columns // m
    return math.factorial(columns) // (math.factorial(m) ** s * math.factorial(s))


def _assignments(columns: int, m: int) -> np.ndarray:
    """Every split of ``range(columns)`` into stripes of ``m``, as permutations.

    Row ``k`` lists the columns stripe by stripe; each stripe is sorted and starts with
    the smallest column not yet placed, so every split appears once; row 0 is the
    identity.
    """
    out: list[list[int]] = []

    def rec(rest: tuple[int, ...], acc: list[int]) -> None:
        if not rest:
            out.append(list(acc))
            return
        first, others = rest[0], rest[1:]
        for combo in itertools.combinations(others, m - 1):
            chosen = set(combo)
            rec(tuple(c for c in others if c not in chosen), [*acc, first, *combo])

    rec(tuple(range(columns)), [])
    return np.asarray(out, dtype=np.int64)


# ------------------------------------------------------------------------- invariance
def permute_qk(
    q: np.ndarray, k: np.ndarray, perm: Any
) -> tuple[np.ndarray, np.ndarray]:
    """Permute the feature axis (the last) of the queries and the keys together.

    ``q (..., n_q, d)`` and ``k (..., n_k, d)``: ``q[..., perm] @ k[..., perm].T`` sums
    the same products as ``q @ k.T`` in another order, so the scores are unchanged. This
    is why the columns of ``wq`` and ``wk`` (the output features of the two
    projections, per head) can be reordered together for free. Returns ``(q', k')``.
    """
    q = _any_array("q", q)
    k = _any_array("k", k)
    if q.ndim < 2 or k.ndim < 2:
        raise ValueError(
            f"q and k must have at least 2 dimensions (..., tokens, d), got shapes "
            f"{q.shape} and {k.shape}"
        )
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(
            f"q and k must share the feature size d (last axis), got {q.shape[-1]} and "
            f"{k.shape[-1]}"
        )
    p = _perm_array(perm, q.shape[-1])
    return q[..., p], k[..., p]


def _any_array(name: str, x: Any) -> np.ndarray:
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name} must be a NumPy array, got {describe(x)}")
    check_array(name, x, dtype_kind="f")
    return x


def _check_ffn_params(params: Any, ndarray: type) -> tuple[int, int]:
    """``(d, d_ff)`` of an LM-layout FFN: ``w1 (d, d_ff)``, ``b1 (d_ff,)``,
    ``w2 (d_ff, d)``."""
    if not hasattr(params, "keys") or not hasattr(params, "__getitem__"):
        raise TypeError(
            "params must be a dict (or ParameterDict) with w1 (d, d_ff), b1 (d_ff,) "
            f"and w2 (d_ff, d), got {describe(params)}"
        )
    missing = [key for key in ("w1", "b1", "w2") if key not in params]
    if missing:
        raise ValueError(
            f"params must hold w1, b1 and w2 (the LM's gelu FFN), missing {missing}"
        )
    for key in ("w1", "b1", "w2"):
        if not isinstance(params[key], ndarray):
            raise TypeError(
                f"params[{key!r}] must be a {ndarray.__name__}, got "
                f"{describe(params[key])}"
            )
    w1, b1, w2 = params["w1"], params["b1"], params["w2"]
    if w1.ndim != 2 or w2.ndim != 2 or b1.ndim != 1:
        raise ValueError(
            "params must hold w1 (d, d_ff), b1 (d_ff,) and w2 (d_ff, d), got shapes "
            f"{tuple(w1.shape)}, {tuple(b1.shape)} and {tuple(w2.shape)}"
        )
    d, d_ff = w1.shape
    if tuple(b1.shape) != (d_ff,) or tuple(w2.shape) != (d_ff, d):
        raise ValueError(
            "params must hold w1 (d, d_ff), b1 (d_ff,) and w2 (d_ff, d) with one d and "
            f"one d_ff, got shapes {tuple(w1.shape)}, {tuple(b1.shape)} and "
            f"{tuple(w2.shape)}"
        )
    return int(d), int(d_ff)


def permute_ffn(params: Any, perm: Any) -> dict:
    """The FFN with its hidden units in the order ``perm`` (the LM's layout).

    ``params`` holds ``w1 (d, d_ff)``, ``b1 (d_ff,)``, ``w2 (d_ff, d)`` (and any other
    keys, copied as they are). Returns a new dict with ``w1[:, perm]``, ``b1[perm]``,
    ``w2[perm, :]``: ``gelu(x @ w1 + b1) @ w2 + b2`` is unchanged, since the
    nonlinearity acts on each hidden unit alone and the last product sums over them.
    """
    _, d_ff = _check_ffn_params(params, np.ndarray)
    p = _perm_array(perm, d_ff)
    out = {key: params[key] for key in params.keys()}
    out["w1"] = params["w1"][:, p]
    out["b1"] = params["b1"][p]
    out["w2"] = params["w2"][p, :]
    return out


# -------------------------------------------------------------------- retained metric
def _stripe_topn(a: np.ndarray, n: int, m: int) -> np.ndarray:
    """Per row and stripe, the sum of the ``n`` largest of ``a`` (rows, stripes)."""
    g = a.reshape(a.shape[0], -1, m)
    top = -np.sort(-g, axis=-1)[..., :n]
    total = top[..., 0]
    for t in range(1, n):
        total = total + top[..., t]
    return total


def retained_magnitude(
    w: np.ndarray, n: int = 2, m: int = 4, perm: Any = None
) -> float:
    """Share of ``sum |w|`` that the N:M mask of ``w[:, perm]`` keeps.

    ``w (out, in)``; the mask keeps the ``n`` largest ``|w|`` of every ``m`` consecutive
    columns (of the permuted weight). ``perm=None`` is the identity. An all-zero ``w``
    loses nothing: 1.0.
    """
    w = _weight("w", w)
    n, m = _check_nm(n, m)
    _check_cols(w.shape[1], m)
    a = np.abs(w.astype(np.float64, copy=False))
    if perm is not None:
        a = a[:, _perm_array(perm, w.shape[1])]
    total = float(a.sum())
    if total == 0.0:
        return 1.0
    return float(_stripe_topn(a, n, m).sum()) / total


# ----------------------------------------------------------------------------- search
def _gain_matrix(a: np.ndarray, n: int, m: int) -> np.ndarray:
    """``F[i, j]``: change of the stripe of position ``i`` when column ``j`` replaces
    column ``i`` (see the module docstring). ``a``: ``|w|`` in the current order."""
    rows, cols = a.shape
    g = a.reshape(rows, cols // m, m)
    base = _stripe_topn(a, n, m)  # (rows, stripes)
    f = np.empty((cols, cols), dtype=a.dtype)
    for i in range(cols):
        s, slot = divmod(i, m)
        rest = np.delete(g[:, s, :], slot, axis=1)  # (rows, m - 1)
        top = -np.sort(-rest, axis=1)[:, :n]
        top_sum = top[:, 0]
        for t in range(1, n):
            top_sum = top_sum + top[:, t]
        d0 = top_sum - base[:, s]  # (rows,)
        thr = top[:, n - 1]
        f[i] = (d0[:, None] + np.maximum(a - thr[:, None], 0.0)).sum(axis=0)
    return f


def _kept_sum(a: np.ndarray, n: int, m: int) -> float:
    return float(_stripe_topn(a, n, m).sum())


def _greedy_swaps(
    a0: np.ndarray,
    perm: np.ndarray,
    n: int,
    m: int,
    max_regressions: int,
    budget: int,
    tol: float,
    total: float,
    history: list[float],
) -> tuple[np.ndarray, int]:
    """Best-gain pairwise swaps with bounded regressions; the best order seen."""
    cols = perm.shape[0]
    stripe = np.arange(cols) // m
    same = stripe[:, None] == stripe[None, :]
    best_perm, best_kept = perm.copy(), _kept_sum(a0[:, perm], n, m)
    tabu: deque[tuple[int, int]] = deque(maxlen=TABU_LENGTH)
    regressions = steps = 0
    while steps < budget:
        f = _gain_matrix(a0[:, perm], n, m)
        gain = f + f.T
        gain[same] = -np.inf
        where = np.empty(cols, dtype=np.int64)
        where[perm] = np.arange(cols)
        for c1, c2 in tabu:
            gain[where[c1], where[c2]] = gain[where[c2], where[c1]] = -np.inf
        top = float(gain.max())
        if top == -np.inf:
            break
        # the first pair (row-major) within tol of the best: both faces pick it
        k = int(np.argmax(gain >= top - tol))
        i, j = divmod(k, cols)
        if gain[i, j] <= tol:
            if regressions >= max_regressions:
                break
            regressions += 1
        tabu.append((int(perm[i]), int(perm[j])))
        perm[i], perm[j] = perm[j], perm[i]
        steps += 1
        kept = _kept_sum(a0[:, perm], n, m)
        history.append(kept / total)
        if kept > best_kept + tol:
            best_perm, best_kept = perm.copy(), kept
    return best_perm, steps


def _window_pass(
    a0: np.ndarray,
    perm: np.ndarray,
    n: int,
    m: int,
    spw: int,
    rng: np.random.Generator,
    tol: float,
) -> tuple[np.ndarray, bool]:
    """One narrow-and-deep pass: random disjoint windows of ``spw`` stripes, each set to
    the best assignment of its columns (every one tried)."""
    stripes = perm.shape[0] // m
    order = rng.permutation(stripes)
    n_windows = stripes // spw
    if n_windows == 0:
        return perm, False
    assign = _assignments(spw * m, m)  # (K, spw*m), row 0 the identity
    perm = perm.copy()
    improved = False
    for wdw in range(n_windows):
        chosen = order[wdw * spw : (wdw + 1) * spw]
        positions = (chosen[:, None] * m + np.arange(m)[None, :]).reshape(-1)
        cols = perm[positions]  # the window's columns
        a = a0[:, cols]  # (rows, spw*m)
        # kept sum of each assignment, per row then summed over rows
        cand = a[:, assign]  # (rows, K, spw*m)
        g = cand.reshape(a.shape[0], assign.shape[0], spw, m)
        top = -np.sort(-g, axis=-1)[..., :n]
        per_stripe = top[..., 0]
        for t in range(1, n):
            per_stripe = per_stripe + top[..., t]
        per_row = per_stripe[..., 0]
        for t in range(1, spw):
            per_row = per_row + per_stripe[..., t]
        delta = (per_row - per_row[:, :1]).sum(axis=0)  # (K,)
        k = int(np.argmax(delta >= delta.max() - tol))
        if delta[k] > tol:
            perm[positions] = cols[assign[k]]
            improved = True
    return perm, improved


def search_permutation(
    w: np.ndarray,
    n: int = 2,
    m: int = 4,
    *,
    method: str = "greedy",
    stripes_per_window: int = 2,
    max_regressions: int = 10,
    seed: int = 0,
    max_iters: int = 2000,
) -> PermutationResult:
    """Find an order of the input columns of ``w (out, in)`` that the N:M mask likes.

    Maximises :func:`retained_magnitude` of ``w[:, perm]`` (Pool & Yu, 2021); see the
    module docstring for the methods. ``max_iters`` bounds the steps of ``"greedy"``
    (swaps, regressions and window passes together); ``max_regressions`` the swaps that
    do not gain; ``seed`` draws the grouping of stripes into windows. Returns a
    :class:`PermutationResult`; ``retained`` of ``"greedy"`` is never below the
    identity's (it keeps the best order seen).
    """
    w = _weight("w", w)
    n, m = _check_nm(n, m)
    _check_cols(w.shape[1], m)
    method, spw, max_regressions, seed, max_iters = _check_search_args(
        method, stripes_per_window, max_regressions, seed, max_iters
    )
    _check_window(spw, m)
    cols = w.shape[1]
    a0 = np.abs(w.astype(np.float64, copy=False))
    total = float(a0.sum())
    if total == 0.0:
        return PermutationResult(np.arange(cols), 1.0, [1.0], method)
    perm = np.arange(cols, dtype=np.int64)
    history = [_kept_sum(a0[:, perm], n, m) / total]
    if method == "exhaustive":
        count = n_assignments(cols, m)
        if count > EXHAUSTIVE_LIMIT:
            raise ValueError(
                f"method='exhaustive' would try {count} assignments of {cols} columns "
                f"to stripes of {m} (more than EXHAUSTIVE_LIMIT={EXHAUSTIVE_LIMIT}); "
                "use method='greedy' or fewer columns"
            )
        assign = _assignments(cols, m)
        kept = np.array([_kept_sum(a0[:, p], n, m) for p in assign])
        tol = GAIN_TOLERANCE * total
        perm = assign[int(np.argmax(kept >= kept.max() - tol))].copy()
        history.append(_kept_sum(a0[:, perm], n, m) / total)
    elif method == "greedy":
        tol = GAIN_TOLERANCE * total
        rng = np.random.default_rng(seed)
        steps = 0
        while steps < max_iters:
            perm, used = _greedy_swaps(
                a0, perm, n, m, max_regressions, max_iters - steps, tol, total, history
            )
            steps += used
            if steps >= max_iters:
                break
            perm, improved = _window_pass(a0, perm, n, m, spw, rng, tol)
            steps += 1
            history.append(_kept_sum(a0[:, perm], n, m) / total)
            if not improved:
                break
    return PermutationResult(
        perm, _kept_sum(a0[:, perm], n, m) / total, history, method
    )
