"""Permutation invariance and the channel-permutation search (PyTorch face, 04.2).

Same names, signatures and results as ``_np_permute`` (see its docstring for the method;
on the same float64 input both faces return the same ``perm`` and the same ``history``
up to rounding of the sums over rows). What differs, and why: this is the face a user
runs on real layers (3072 input columns), so the greedy search does not recompute the
swap gains after every swap. It keeps the matrix ``F`` (``F[i, j]``: the change of the
stripe of position ``i`` when column ``j`` replaces column ``i``) and the gains
``G = F + Fᵀ``; a swap of positions ``p`` and ``q`` only changes the two stripes
involved, so it swaps columns ``p`` and ``q`` of ``F``, recomputes the ``2m`` rows of
those stripes, and refreshes those rows and columns of ``G``: ``O(m · C · rows)`` per
swap instead of ``O(C² · rows)``. The sum over rows of ``max(0, |w_j| - nth(R_i))`` is
written with an L1 distance (``relu(x) = (x + |x|) / 2``), which ``torch.cdist(p=1)``
computes without a ``(rows, C, C)`` temporary; it rounds differently from the
reference's direct sum, which the tolerance of every choice absorbs. The windows of the
narrow-and-deep pass are evaluated together, in chunks. Everything runs on ``w``'s
device and in ``w``'s dtype.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import torch

from effx_lab._validate import check_array, describe
from effx_lab.bench import limit_threads
from effx_lab.progress import progress_bar

from ._np_permute import (
    EXHAUSTIVE_LIMIT,
    GAIN_TOLERANCE,
    TABU_LENGTH,
    PermutationResult,
    _assignments,
    _check_cols,
    _check_ffn_params,
    _check_nm,
    _check_search_args,
    _check_window,
    n_assignments,
)

__all__ = [
    "PermutationResult",
    "permute_qk",
    "permute_ffn",
    "retained_magnitude",
    "search_permutation",
    "n_assignments",
]

#: Largest temporary tensor (elements) the search builds at once: 2**24.
CHUNK_ELEMENTS = 1 << 24


def _numpy_hint(value: Any) -> str:
    return (
        "; use effx_lab.nm.reference for NumPy arrays"
        if type(value).__module__ == "numpy"
        else ""
    )


def _weight(name: str, w: Any) -> torch.Tensor:
    if not isinstance(w, torch.Tensor):
        raise TypeError(
            f"{name} must be a 2-D torch tensor, got {describe(w)}{_numpy_hint(w)}"
        )
    check_array(name, w, ndim=2, dtype_kind="f", allow_torch=True, finite=True)
    if 0 in tuple(w.shape):
        raise ValueError(f"{name} must not be empty, got shape {tuple(w.shape)}")
    return w


def _perm_tensor(perm: Any, size: int, device: Any, name: str = "perm") -> torch.Tensor:
    if isinstance(perm, (list, tuple)):
        perm = torch.as_tensor(perm, dtype=torch.int64)
    if not isinstance(perm, torch.Tensor):
        raise TypeError(
            f"{name} must be a torch int tensor (or list) permuting range({size}), got "
            f"{describe(perm)}{_numpy_hint(perm)}"
        )
    if perm.ndim != 1 or perm.shape[0] != size:
        raise ValueError(
            f"{name} must be a 1-D permutation of range({size}), got shape "
            f"{tuple(perm.shape)}"
        )
    if perm.dtype.is_floating_point or perm.dtype in (torch.bool, torch.complex64):
        raise TypeError(f"{name} must hold integers, got dtype {perm.dtype}")
    p = perm.to(device=device, dtype=torch.int64)
    if not torch.equal(torch.sort(p).values, torch.arange(size, device=device)):
        raise ValueError(
            f"{name} must be a permutation of range({size}) (each index once), got "
            "repeated or out-of-range indices"
        )
    return p


def _any_tensor(name: str, x: Any) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(
            f"{name} must be a torch tensor, got {describe(x)}{_numpy_hint(x)}"
        )
    check_array(name, x, dtype_kind="f", allow_torch=True)
    return x


# ------------------------------------------------------------------------- invariance
def permute_qk(
    q: torch.Tensor, k: torch.Tensor, perm: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    """Permute the feature axis of ``q`` and ``k`` together; see the reference."""
    q = _any_tensor("q", q)
    k = _any_tensor("k", k)
    if q.ndim < 2 or k.ndim < 2:
        raise ValueError(
            f"q and k must have at least 2 dimensions (..., tokens, d), got shapes "
            f"{tuple(q.shape)} and {tuple(k.shape)}"
        )
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(
            f"q and k must share the feature size d (last axis), got {q.shape[-1]} and "
            f"{k.shape[-1]}"
        )
    p = _perm_tensor(perm, q.shape[-1], q.device)
    return q[..., p], k[..., p.to(k.device)]


def permute_ffn(params: Any, perm: Any) -> dict:
    """The FFN with its hidden units in the order ``perm``; see the reference.

    ``params`` may be a dict or an ``nn.ParameterDict`` (the LM's ``model.layers[i]``);
    the result is a new dict of plain tensors for the three permuted entries (the other
    entries are the same objects).
    """
    _, d_ff = _check_ffn_params(params, torch.Tensor)
    p = _perm_tensor(perm, d_ff, params["w1"].device)
    out = {key: params[key] for key in params.keys()}
    out["w1"] = params["w1"].detach()[:, p]
    out["b1"] = params["b1"].detach()[p.to(params["b1"].device)]
    out["w2"] = params["w2"].detach()[p.to(params["w2"].device), :]
    return out


# -------------------------------------------------------------------- retained metric
def _topn(g: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of the ``n`` largest along the last axis (added largest first, as the
    reference does) and the ``n``-th largest."""
    top = torch.sort(g, dim=-1, descending=True).values[..., :n]
    total = top[..., 0]
    for t in range(1, n):
        total = total + top[..., t]
    return total, top[..., n - 1]


def _stripe_topn(a: torch.Tensor, n: int, m: int) -> torch.Tensor:
    return _topn(a.reshape(a.shape[0], -1, m), n)[0]


def retained_magnitude(
    w: torch.Tensor, n: int = 2, m: int = 4, perm: Any = None
) -> float:
    """Share of ``sum |w|`` that the N:M mask of ``w[:, perm]`` keeps; see the
    reference."""
    w = _weight("w", w)
    n, m = _check_nm(n, m)
    _check_cols(w.shape[1], m)
    a = w.detach().abs()
    if perm is not None:
        a = a[:, _perm_tensor(perm, w.shape[1], w.device)]
    total = float(a.sum(dtype=torch.float64))
    if total == 0.0:
        return 1.0
    return float(_stripe_topn(a, n, m).sum(dtype=torch.float64)) / total


# ----------------------------------------------------------------------------- search
class _SwapState:
    """The greedy search's ``F``, ``G`` and per-stripe kept sums, kept up to date."""

    def __init__(self, a0: torch.Tensor, perm: torch.Tensor, n: int, m: int) -> None:
        self.a0, self.n, self.m = a0, n, m
        rows, cols = a0.shape
        self.cols = cols
        dev = a0.device
        stripe = torch.arange(cols, device=dev) // m
        self.same = stripe[:, None] == stripe[None, :]
        # for each position, the positions of the other m-1 columns of its stripe
        slots = torch.arange(m, device=dev)
        others = torch.stack([torch.cat([slots[:t], slots[t + 1 :]]) for t in range(m)])
        self.rest = (stripe[:, None] * m + others[slots.repeat(cols // m)]).long()
        self.chunk = max(1, CHUNK_ELEMENTS // max(1, rows * m))
        self.perm = perm.clone()
        self.a = a0[:, self.perm]
        self.at = self.a.T.contiguous()  # (C, rows): the rows cdist compares
        self.colsum = self.a.sum(dim=0)
        self.base = _stripe_topn(self.a, n, m)  # (rows, stripes)
        self.stripe_kept = self.base.sum(dim=0, dtype=torch.float64)
        self.f = torch.empty(cols, cols, dtype=a0.dtype, device=dev)
        self._rows_of_f(torch.arange(cols, device=dev))
        self.g = self.f + self.f.T
        self.g.masked_fill_(self.same, float("-inf"))

    def _rows_of_f(self, positions: torch.Tensor) -> None:
        n, m = self.n, self.m
        for start in range(0, positions.numel(), self.chunk):
            pos = positions[start : start + self.chunk]
            rest = self.a[:, self.rest[pos]]  # (rows, b, m-1)
            top_sum, thr = _topn(rest, n)  # (rows, b)
            d0 = (top_sum - self.base[:, pos // m]).sum(dim=0)  # (b,)
            # sum_r relu(a[r, j] - thr[r, i]) = (sum_r a[r, j] - sum_r thr[r, i]
            #   + sum_r |a[r, j] - thr[r, i]|) / 2, the last an L1 distance: cdist
            l1 = torch.cdist(thr.T[None], self.at[None], p=1)[0]  # (b, C)
            relu_sum = 0.5 * (self.colsum[None, :] - thr.sum(dim=0)[:, None] + l1)
            self.f[pos] = d0[:, None] + relu_sum

    def kept(self) -> float:
        return float(self.stripe_kept.sum())

    def swap(self, p: int, q: int) -> None:
        n, m = self.n, self.m
        self.perm[[p, q]] = self.perm[[q, p]]
        self.a[:, [p, q]] = self.a[:, [q, p]]
        self.at[[p, q]] = self.at[[q, p]]
        self.colsum[[p, q]] = self.colsum[[q, p]]
        sp, sq = p // m, q // m
        for s in (sp, sq):
            self.base[:, s] = _stripe_topn(self.a[:, s * m : (s + 1) * m], n, m)[:, 0]
            self.stripe_kept[s] = self.base[:, s].sum(dtype=torch.float64)
        self.f[:, [p, q]] = self.f[:, [q, p]]
        dev = self.a.device
        changed = torch.cat(
            [torch.arange(s * m, (s + 1) * m, device=dev) for s in (sp, sq)]
        )
        self._rows_of_f(changed)
        rows_g = self.f[changed] + self.f[:, changed].T  # (2m, C)
        rows_g.masked_fill_(self.same[changed], float("-inf"))
        self.g[changed] = rows_g
        self.g[:, changed] = rows_g.T


def _greedy_swaps(
    state: _SwapState,
    max_regressions: int,
    budget: int,
    tol: float,
    total: float,
    history: list[float],
    bar: Any,
) -> tuple[torch.Tensor, int]:
    cols = state.cols
    best_perm, best_kept = state.perm.clone(), state.kept()
    tabu: deque[tuple[int, int]] = deque(maxlen=TABU_LENGTH)
    regressions = steps = 0
    neg = float("-inf")
    while steps < budget:
        where = torch.empty_like(state.perm)
        where[state.perm] = torch.arange(cols, device=state.perm.device)
        saved = []
        for c1, c2 in tabu:
            i, j = int(where[c1]), int(where[c2])
            saved.append((i, j, state.g[i, j].clone()))
            state.g[i, j] = state.g[j, i] = neg
        # the first pair (row-major) within tol of the best, as the reference picks
        # it: the first row whose maximum is within tol, then the first entry of that
        # row within tol (one pass over G instead of three)
        row_max = state.g.amax(dim=1)
        top = float(row_max.max())
        if top != neg:
            i = int((row_max >= top - tol).to(torch.uint8).argmax())
            j = int((state.g[i] >= top - tol).to(torch.uint8).argmax())
        for r, c, value in reversed(saved):
            state.g[r, c] = state.g[c, r] = value
        if top == neg:
            break
        if top <= tol:
            if regressions >= max_regressions:
                break
            regressions += 1
        tabu.append((int(state.perm[i]), int(state.perm[j])))
        state.swap(i, j)
        steps += 1
        bar.update(1)
        kept = state.kept()
        history.append(kept / total)
        if kept > best_kept + tol:
            best_perm, best_kept = state.perm.clone(), kept
    return best_perm, steps


def _best_assignment(
    a: torch.Tensor, assign: torch.Tensor, n: int, m: int, tol: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """For windows ``a (rows, W, c)``, the first assignment within ``tol`` of the best
    and its gain over the unchanged one: ``(index (W,), gain (W,))``."""
    rows, windows, c = a.shape
    k = assign.shape[0]
    spw = c // m
    per_window = max(1, CHUNK_ELEMENTS // max(1, rows * k * c))
    idx, gains = [], []
    for start in range(0, windows, per_window):
        part = a[:, start : start + per_window]  # (rows, w, c)
        cand = part[:, :, assign]  # (rows, w, K, c)
        g = cand.reshape(rows, part.shape[1], k, spw, m)
        per_stripe = _topn(g, n)[0]  # (rows, w, K, spw)
        per_row = per_stripe[..., 0]
        for t in range(1, spw):
            per_row = per_row + per_stripe[..., t]
        delta = (per_row - per_row[..., :1]).sum(dim=0)  # (w, K)
        best = delta.max(dim=-1, keepdim=True).values
        first = (delta >= best - tol).to(torch.uint8).argmax(dim=-1)
        idx.append(first)
        gains.append(delta.gather(-1, first[:, None])[:, 0])
    return torch.cat(idx), torch.cat(gains)


def _window_pass(
    a0: torch.Tensor,
    perm: torch.Tensor,
    n: int,
    m: int,
    spw: int,
    rng: Any,
    tol: float,
) -> tuple[torch.Tensor, bool]:
    stripes = perm.shape[0] // m
    order = torch.as_tensor(rng.permutation(stripes), device=perm.device)
    n_windows = stripes // spw
    if n_windows == 0:
        return perm, False
    assign = torch.as_tensor(_assignments(spw * m, m), device=perm.device)
    chosen = order[: n_windows * spw].reshape(n_windows, spw)
    positions = (chosen[:, :, None] * m + torch.arange(m, device=perm.device)).reshape(
        n_windows, spw * m
    )
    cols = perm[positions]  # (W, spw*m)
    a = a0[:, cols]  # (rows, W, spw*m)
    idx, gains = _best_assignment(a, assign, n, m, tol)
    better = gains > tol
    if not bool(better.any()):
        return perm, False
    perm = perm.clone()
    new_cols = cols.gather(1, assign[idx])
    perm[positions[better]] = new_cols[better]
    return perm, True


def search_permutation(
    w: torch.Tensor,
    n: int = 2,
    m: int = 4,
    *,
    method: str = "greedy",
    stripes_per_window: int = 2,
    max_regressions: int = 10,
    seed: int = 0,
    max_iters: int = 2000,
) -> PermutationResult:
    """Find an order of the input columns of ``w (out, in)`` that the N:M mask likes;
    see the reference. ``perm`` is an int64 tensor on ``w``'s device."""
    import numpy as np  # the window grouping is drawn as in the reference

    w = _weight("w", w)
    n, m = _check_nm(n, m)
    _check_cols(w.shape[1], m)
    method, spw, max_regressions, seed, max_iters = _check_search_args(
        method, stripes_per_window, max_regressions, seed, max_iters
    )
    _check_window(spw, m)
    cols = w.shape[1]
    dev = w.device
    a0 = w.detach().abs()
    total = float(a0.sum(dtype=torch.float64))
    arange = torch.arange(cols, device=dev)
    if total == 0.0:
        return PermutationResult(arange, 1.0, [1.0], method)

    def kept_of(p: torch.Tensor) -> float:
        return float(_stripe_topn(a0[:, p], n, m).sum(dtype=torch.float64))

    perm = arange.clone()
    history = [kept_of(perm) / total]
    tol = GAIN_TOLERANCE * total
    if method == "exhaustive":
        count = n_assignments(cols, m)
        if count > EXHAUSTIVE_LIMIT:
            raise ValueError(
                f"method='exhaustive' would try {count} assignments of {cols} columns "
                f"to stripes of {m} (more than EXHAUSTIVE_LIMIT={EXHAUSTIVE_LIMIT}); "
                "use method='greedy' or fewer columns"
            )
        assign = torch.as_tensor(_assignments(cols, m), device=dev)
        idx, _ = _best_assignment(a0[:, None, :], assign, n, m, tol)
        perm = assign[int(idx[0])].clone()
        history.append(kept_of(perm) / total)
    elif method == "greedy":
        rng = np.random.default_rng(seed)
        steps = 0
        bar = progress_bar(total=max_iters, desc="permutation search", unit="step")
        try:
            while steps < max_iters:
                state = _SwapState(a0, perm, n, m)
                # one swap is a few small ops: on a CPU, extra threads only add
                # waiting (10x slower on a loaded 2-core machine)
                with limit_threads(1 if dev.type == "cpu" else None, blas=False):
                    perm, used = _greedy_swaps(
                        state, max_regressions, max_iters - steps, tol, total, history,
                        bar,
                    )  # fmt: skip
                steps += used
                if steps >= max_iters:
                    break
                perm, improved = _window_pass(a0, perm, n, m, spw, rng, tol)
                steps += 1
                bar.update(1)
                history.append(kept_of(perm) / total)
                if not improved:
                    break
        finally:
            bar.close()
    return PermutationResult(perm, kept_of(perm) / total, history, method)
