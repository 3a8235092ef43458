"""Checkers for notebook 05.3's exercises (kernels and systems: how an MoE layer runs).

* ``dispatch_combine(routing) -> (dispatch, combine)``: the one-hot tensors of the
  Mesh-TensorFlow / Switch formulation, both ``(T, E, C)`` (tokens, experts, capacity
  slots): ``dispatch[t, e, c] = 1`` where choice ``j`` of token ``t`` was kept in slot
  ``c`` of expert ``e`` (``routing.experts[t, j] == e``, ``routing.slots[t, j] == c``),
  and ``combine`` holds that choice's gate ``routing.gates[t, j]`` there; a dropped choice
  (slot ``-1``) appears in neither; as
  :func:`effx_lab.moe.reference.dispatch_combine`. In the notebook the student's tensors
  drive the dispatch/combine einsums whose output must equal the per-token loop.
* ``sort_by_expert(routing) -> (order, offsets)``: the kept (token, choice) pairs,
  numbered ``t * k + j`` in the flattened ``(T, k)`` routing, sorted by expert with a
  stable sort (pairs of one expert stay in pair order), and ``offsets`` ``(E + 1,)``
  int64 with ``offsets[0] = 0`` and ``offsets[e + 1] - offsets[e]`` the kept pairs of
  expert ``e``; as :func:`effx_lab.moe.reference.sort_by_expert`. In the notebook it
  drives the sorted grouped GEMM (no padding) and its timing.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from effx_lab.check import Case, CheckResult, Mistake, check_with_hints, checker, named

from .. import reference as R

__all__ = ["check_dispatch_combine", "check_sort_by_expert"]


def _np(a: Any) -> np.ndarray:
    """``a`` as a NumPy array (a torch tensor is read on the CPU)."""
    if hasattr(a, "detach"):
        return a.detach().cpu().numpy()
    return np.asarray(a)


def _parts(routing: Any):
    """experts, gates, slots (NumPy), n_experts, capacity of a Routing."""
    return (
        _np(routing.experts).astype(np.int64),
        _np(routing.gates),
        _np(routing.slots).astype(np.int64),
        int(routing.n_experts),
        int(routing.capacity),
    )


def _routing(
    rng: np.random.Generator,
    n_tokens: int,
    n_experts: int,
    k: int,
    capacity_factor: float,
    *,
    policy: str = "vanilla",
    renormalize: bool = False,
    skew: float = 0.0,
    dtype: Any = np.float64,
):
    """A routing of random router logits (``skew`` favours expert 0)."""
    logits = rng.normal(size=(n_tokens, n_experts))
    logits[:, 0] += skew
    return R.route(
        logits.astype(dtype), k=k, capacity_factor=capacity_factor,
        policy=policy, renormalize=renormalize,
    )  # fmt: skip


def _routing_cases(rng: np.random.Generator) -> list[Case]:
    """Routings that tell the mistakes apart, then random ones."""
    cases = [  # the first cases tell the mistakes apart
        Case("top-1, no drops: 6 tokens, 3 experts, C = 4", (
            _routing(rng, 6, 3, 1, 4.0),)),
        Case("top-1 with drops: 8 tokens, 2 experts, C = 0.5, skewed to expert 0", (
            _routing(rng, 8, 2, 1, 0.5, skew=2.0),)),
        Case("top-2 (GLaM), renormalized gates, drops: 10 tokens, 4 experts", (
            _routing(rng, 10, 4, 2, 1.0, renormalize=True, skew=1.0),)),
        Case("top-2, BPR (max), capacity factor 0.5", (
            _routing(rng, 12, 3, 2, 0.5, policy="bpr_max"),)),
        Case("one token", (_routing(rng, 1, 4, 1, 1.0),)),
        Case("one expert, capacity 1 of 5 tokens", (_routing(rng, 5, 1, 1, 0.2),)),
        Case("float32 router: 16 tokens, 4 experts, top-2", (
            _routing(rng, 16, 4, 2, 1.25, dtype=np.float32),)),
    ]
    for i in range(4):
        t = int(rng.integers(5, 40))
        e = int(rng.integers(2, 9))
        k = int(rng.integers(1, min(e, 3) + 1))
        c = float(rng.choice([0.25, 0.5, 1.0, 1.25, 2.0]))
        policy = str(rng.choice(["vanilla", "bpr_max", "bpr_sum"]))
        cases.append(Case(
            f"random draw {i + 1}: {t} tokens, {e} experts, top-{k}, C = {c}, {policy}",
            (_routing(rng, t, e, k, c, policy=policy, skew=float(rng.uniform(0, 2))),),
        ))  # fmt: skip
    return cases


# ====================================================================== dispatch_combine
@named("dispatch_combine")
def _dispatch_combine_reference(routing):
    return R.dispatch_combine(routing)


def _one_hot(routing, *, gates=True, keep_dropped=False, slot0=False, first_only=False,
             probs=False):
    """The classic wrong versions of dispatch/combine."""
    experts, g, slots, n_e, cap = _parts(routing)
    n_t, k = experts.shape
    if probs:
        g = np.take_along_axis(_np(routing.probs), experts, axis=1)
    dispatch = np.zeros((n_t, n_e, cap), dtype=g.dtype)
    combine = np.zeros((n_t, n_e, cap), dtype=g.dtype)
    for t in range(n_t):
        for j in range(1 if first_only else k):
            s = slots[t, j]
            if s < 0 and not keep_dropped:
                continue
            c = 0 if slot0 else s  # a dropped slot -1 lands in the last slot
            dispatch[t, experts[t, j], c] = 1.0
            combine[t, experts[t, j], c] = g[t, j] if gates else 1.0
    return dispatch, combine


def _axes_etc(routing):
    d, c = _dispatch_combine_reference(routing)
    d, c = _np(d), _np(c)
    return d.transpose(1, 0, 2), c.transpose(1, 0, 2)


_DISPATCH_MISTAKES = [
    Mistake(
        lambda r: _one_hot(r, keep_dropped=True),
        "a dropped choice has slot -1, and a[..., -1] is the LAST slot in NumPy: you "
        "wrote dropped tokens into slot C - 1. Skip every (t, j) with "
        "routing.slots[t, j] < 0 (the token overflowed: it passes through the residual).",
    ),
    Mistake(
        lambda r: _one_hot(r, gates=False),
        "combine is not a copy of dispatch: it carries the gate of each kept choice, "
        "combine[t, e, c] = routing.gates[t, j], so that the experts' outputs are "
        "weighted when they are gathered back.",
    ),
    Mistake(
        lambda r: _one_hot(r, slot0=True),
        "every token went to slot 0 of its expert: use its own position, "
        "routing.slots[t, j], or the tokens of one expert overwrite each other.",
    ),
    Mistake(
        _axes_etc,
        "the axes are (tokens, experts, capacity) = (T, E, C), not (E, T, C): the "
        "einsum 'tec,td->ecd' then builds the experts' buffers.",
    ),
    Mistake(
        lambda r: _one_hot(r, probs=True),
        "the combine weights are routing.gates (renormalized where the router does "
        "so), not the router probabilities routing.probs of the chosen experts.",
    ),
    Mistake(
        lambda r: _one_hot(r, first_only=True),
        "a token has k choices: loop over all k columns of routing.experts, not only "
        "the first.",
    ),
]


@checker(reference=_dispatch_combine_reference)
def check_dispatch_combine(student_fn: Any) -> CheckResult:
    """Check ``dispatch_combine(routing) -> (dispatch, combine)`` (``(T, E, C)`` each)."""
    return check_with_hints(
        student_fn, _dispatch_combine_reference, _routing_cases, _DISPATCH_MISTAKES,
        name="dispatch_combine", rtol=1e-6, atol=1e-9,
    )  # fmt: skip


# ======================================================================== sort_by_expert
@named("sort_by_expert")
def _sort_by_expert_reference(routing):
    return R.sort_by_expert(routing)


def _sort(routing, *, kind="stable", dropped=False, subset_index=False, offsets="ok"):
    """The classic wrong versions of sort_by_expert."""
    experts, _, slots, n_e, _ = _parts(routing)
    flat = experts.reshape(-1)
    kept = slots.reshape(-1) >= 0
    pairs = np.arange(flat.size) if dropped else np.flatnonzero(kept)
    local = np.argsort(flat[pairs], kind=kind)
    order = local if subset_index else pairs[local]
    counts = np.bincount(flat[pairs], minlength=n_e)
    ends = np.cumsum(counts)
    if offsets == "ends":  # length E: the ends of the segments
        off = ends
    elif offsets == "starts":  # length E: the starts of the segments
        off = np.concatenate([[0], ends[:-1]])
    elif offsets == "argmax":  # first position of each expert; 0 for an empty one
        sorted_e = flat[pairs][local]
        off = np.array([int(np.argmax(sorted_e == e)) for e in range(n_e)]
                       + [sorted_e.size])
    else:
        off = np.concatenate([[0], ends])
    return order.astype(np.int64), off.astype(np.int64)


_SORT_MISTAKES = [
    Mistake(
        lambda r: _sort(r, dropped=True),
        "dropped pairs (slot -1) are not run by any expert: leave them out of order "
        "and out of the counts behind offsets.",
    ),
    Mistake(
        lambda r: _sort(r, kind="quicksort"),
        "the sort must be stable (np.argsort(..., kind='stable')): pairs of one "
        "expert keep their order, so that the result does not depend on the sort "
        "algorithm and both faces agree.",
    ),
    Mistake(
        lambda r: _sort(r, subset_index=True),
        "argsort of the kept experts returns positions in that shorter array: map "
        "them back to pair numbers t * k + j (index an array of the kept pairs' "
        "numbers with them).",
    ),
    Mistake(
        lambda r: _sort(r, offsets="ends"),
        "offsets has E + 1 entries starting at 0: expert e's rows are "
        "order[offsets[e]:offsets[e + 1]]. np.cumsum(counts) alone gives only the ends.",
    ),
    Mistake(
        lambda r: _sort(r, offsets="starts"),
        "offsets has E + 1 entries: the starts of the E segments AND the end of the "
        "last one (the number of kept pairs).",
    ),
    Mistake(
        lambda r: _sort(r, offsets="argmax"),
        "the first position of an expert found with argmax is 0 for an expert that "
        "received no token: build offsets from the counts (np.bincount with "
        "minlength=E, then a cumulative sum after a 0).",
    ),
]


def _sort_cases(rng: np.random.Generator) -> list[Case]:
    cases = _routing_cases(rng)
    # an expert with no token (argmax offsets fail), and many ties (quicksort differs)
    logits = np.zeros((40, 5))
    logits[:, 2] = 5.0
    logits[::3, 4] = 6.0
    cases.insert(0, Case("expert 0, 1, 3 empty: 40 tokens on experts 2 and 4", (
        R.route(logits, k=1, capacity_factor=5.0),)))  # fmt: skip
    big = _routing(rng, 200, 4, 2, 2.0)
    cases.insert(1, Case("200 tokens, 4 experts, top-2: many pairs per expert", (big,)))
    return cases


@checker(reference=_sort_by_expert_reference)
def check_sort_by_expert(student_fn: Any) -> CheckResult:
    """Check ``sort_by_expert(routing) -> (order, offsets)`` (exact integers)."""
    return check_with_hints(
        student_fn, _sort_by_expert_reference, _sort_cases, _SORT_MISTAKES,
        name="sort_by_expert", rtol=0.0, atol=0.0,
    )  # fmt: skip
