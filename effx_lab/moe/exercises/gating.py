"""Checkers for notebook 05.1's exercises (noisy top-k, Switch and GLaM gating).

* ``expert_slots(experts, n_experts, capacity_factor) -> int64 array``: the Switch /
  GShard capacity rule. ``experts`` is ``(T, k)`` (each token's chosen experts, best
  first); every expert has a buffer of ``capacity = ceil(k * T / n_experts *
  capacity_factor)`` rows (at least 1), filled in token order with all first choices of
  all tokens before any second choice. Returns the ``(T, k)`` slot of each (token,
  choice) in its expert's buffer, ``-1`` where the buffer was already full (the pair is
  dropped); as :func:`effx_lab.moe.reference.capacity` followed by
  :func:`effx_lab.moe.reference.assign_slots`. In the notebook it routes the trained
  tiny MoE's real router outputs at capacity factors 0.25 to 2 (dropped % and padded %).
* ``switch_aux_loss(probs, experts) -> float``: the Switch Transformer's load-balancing
  loss ``E * sum_i f_i P_i``, ``f_i`` the fraction of tokens whose FIRST choice
  (``experts[:, 0]``) is expert ``i``, ``P_i`` the mean router probability of expert
  ``i`` over the tokens (``probs`` is the router's full softmax, ``(T, E)``); as
  :func:`effx_lab.moe.reference.switch_aux_loss`. In the notebook it measures the balance
  of every MoE layer of the trained tiny MoE against a collapsed and a uniform router.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from effx_lab.check import Case, CheckResult, Mistake, check_with_hints, checker, named

from .. import reference as R

__all__ = ["check_expert_slots", "check_switch_aux_loss"]


# =========================================================================== slots
@named("expert_slots")
def _slots_reference(experts, n_experts, capacity_factor):
    experts = np.asarray(experts)
    n_tokens, k = experts.shape
    cap = R.capacity(n_tokens, n_experts, capacity_factor, k)
    return R.assign_slots(experts, n_experts, cap)


def _capacity(n_tokens, n_experts, factor, k, rule):
    """The capacity by ``rule`` (the right one is "ceil"); None when it cannot apply."""
    if rule == "ceil":
        return max(1, math.ceil(k * n_tokens / n_experts * factor))
    if rule == "floor":
        return max(1, math.floor(k * n_tokens / n_experts * factor))
    if rule == "no_k":
        return max(1, math.ceil(n_tokens / n_experts * factor))
    if rule == "per_batch":
        return max(1, math.ceil(k * n_tokens * factor))
    if rule == "factor":
        return max(1, math.ceil(factor))
    raise AssertionError(rule)


def _fill(experts, n_experts, capacity_factor, *, rule="ceil", token_major=False,
          reverse=False, drop=True, shared_counter=False, first=0, keep_one_less=False):
    """Slots by a (possibly wrong) filling rule; None where it cannot apply."""
    experts = np.asarray(experts)
    if experts.ndim != 2 or not isinstance(n_experts, (int, np.integer)):
        return None
    n_tokens, k = experts.shape
    if n_tokens == 0 or n_experts < 1 or np.any(experts < 0):
        return None
    if np.any(experts >= n_experts):
        return None
    cap = _capacity(n_tokens, int(n_experts), capacity_factor, k, rule)
    tokens = range(n_tokens - 1, -1, -1) if reverse else range(n_tokens)
    if token_major:
        pairs = [(i, j) for i in tokens for j in range(k)]
    else:
        pairs = [(i, j) for j in range(k) for i in tokens]
    slots = np.full((n_tokens, k), -1, dtype=np.int64)
    count = np.zeros(int(n_experts), dtype=np.int64)
    total = 0
    limit = cap - 1 if keep_one_less else cap
    for i, j in pairs:
        e = int(experts[i, j])
        if shared_counter:
            if count[e] < limit:
                slots[i, j] = total + first
                total += 1
            count[e] += 1
            continue
        if count[e] < limit or not drop:
            slots[i, j] = count[e] + first
        count[e] += 1
    return slots


def _slots_mistake(**how):
    def wrong(experts, n_experts, capacity_factor):
        return _fill(experts, n_experts, capacity_factor, **how)

    return wrong


_SLOTS_MISTAKES = [
    Mistake(
        _slots_mistake(rule="per_batch"),
        "the capacity is per EXPERT: the batch's k T (token, choice) pairs shared by "
        "the E experts, times C: ceil(k T / E * C). You gave every expert room for the "
        "whole batch, so nothing is ever dropped.",
    ),
    Mistake(
        _slots_mistake(rule="factor"),
        "capacity_factor is a multiplier, not a number of rows: an expert's buffer "
        "holds ceil(k T / E * C) rows.",
    ),
    Mistake(
        _slots_mistake(rule="floor"),
        "round the capacity UP: ceil(k T / E * C) (math.ceil), at least 1. Rounding "
        "down (int(), //) gives one row fewer whenever k T C / E is not a whole "
        "number.",
    ),
    Mistake(
        _slots_mistake(rule="no_k"),
        "with k choices per token there are k T (token, choice) pairs to place: the "
        "capacity is ceil(k T / E * C), with the factor k (GShard and GLaM's top-2 "
        "give each expert room for 2 T / E C pairs).",
    ),
    Mistake(
        _slots_mistake(reverse=True),
        "fill the buffers in TOKEN ORDER: the first tokens of the batch get the "
        "first rows and the LATE tokens overflow. You filled from the end, so the "
        "early tokens were dropped.",
    ),
    Mistake(
        _slots_mistake(token_major=True),
        "all FIRST choices of all tokens go in before any second choice (GShard, "
        "V-MoE): a token's second expert must not take the row that a later token "
        "needs for its first choice. Loop over the choices outside, the tokens "
        "inside.",
    ),
    Mistake(
        _slots_mistake(drop=False),
        "a (token, choice) pair that finds its expert's buffer full is DROPPED: its "
        "slot is -1. You gave it the next row (slot >= capacity), a row the buffer "
        "does not have.",
    ),
    Mistake(
        _slots_mistake(shared_counter=True),
        "a slot is the row in THAT expert's buffer: keep one counter per expert "
        "(np.zeros(n_experts)), not one counter for the whole batch.",
    ),
    Mistake(
        _slots_mistake(first=1),
        "slots count from 0: the first pair routed to an expert takes row 0 of its "
        "buffer (np.cumsum(...) - 1).",
    ),
    Mistake(
        _slots_mistake(keep_one_less=True),
        "an expert keeps `capacity` pairs, rows 0 to capacity - 1: you kept one "
        "fewer (slot < capacity - 1, or a 1-based count compared with <).",
    ),
]


def _top_k(rng, n_tokens, n_experts, k, *, skew=0.0):
    """The top-k experts of random logits (``skew`` favours the low experts)."""
    logits = rng.normal(size=(n_tokens, n_experts)) - skew * np.arange(n_experts)
    return np.argsort(-logits, axis=1, kind="stable")[:, :k].astype(np.int64)


def _slots_cases(rng: np.random.Generator) -> list[Case]:
    crowd = np.array([[0], [1], [0], [0], [2], [0], [1], [0]], dtype=np.int64)
    two = np.array([[0, 1], [0, 2], [1, 0], [0, 1], [2, 0], [0, 3]], dtype=np.int64)
    cases = [  # the first cases tell the mistakes apart
        Case("top-1, 8 tokens on 4 experts, C = 0.5: one row per expert",
             (crowd, 4, 0.5)),
        Case("top-1, C = 1: expert 0 overflows", (crowd, 4, 1.0)),
        Case("top-1, C = 1.6: 3.2 rounds up to 4 rows", (crowd, 4, 1.6)),
        Case("top-2, 6 tokens on 4 experts, C = 1: first choices go first",
             (two, 4, 1.0)),
        Case("top-2, C = 0.5: 1.5 rounds up to 2 rows", (two, 4, 0.5)),
        Case("top-1, C = 2: nothing dropped", (crowd, 4, 2.0)),
        Case("top-1, C = 0.25: a capacity of one row", (crowd, 4, 0.25)),
        Case("every token on one expert, C = 1.25",
             (np.zeros((10, 1), dtype=np.int64), 5, 1.25)),
        Case("one token, one expert", (np.zeros((1, 1), dtype=np.int64), 1, 1.0)),
        Case("top-2 of 8, 32 tokens, skewed router, C = 1",
             (_top_k(rng, 32, 8, 2, skew=0.4), 8, 1.0)),
        Case("top-1 of 16, 64 tokens, skewed router, C = 0.75",
             (_top_k(rng, 64, 16, 1, skew=0.2), 16, 0.75)),
        Case("top-3 of 6, 20 tokens, C = 1.5", (_top_k(rng, 20, 6, 3), 6, 1.5)),
        Case("an integer capacity factor: C = 3", (_top_k(rng, 12, 4, 1), 4, 3)),
    ]
    for n in range(3):
        n_experts = int(rng.choice([4, 8, 16]))
        k = int(rng.integers(1, 3))
        n_tokens = int(rng.integers(8, 80))
        factor = float(rng.choice([0.5, 1.0, 1.25, 2.0]))
        cases.append(Case(
            f"random draw {n + 1}: top-{k} of {n_experts}, {n_tokens} tokens, "
            f"C = {factor}",
            (_top_k(rng, n_tokens, n_experts, k, skew=0.3), n_experts, factor),
        ))
    return cases


@checker(reference=_slots_reference)
def check_expert_slots(student_fn: Any) -> CheckResult:
    """Check ``expert_slots(experts, n_experts, capacity_factor) -> int64`` (exact)."""
    return check_with_hints(
        student_fn, _slots_reference, _slots_cases, _SLOTS_MISTAKES,
        name="expert_slots", rtol=0.0, atol=0.0, exact=True,
    )  # fmt: skip


# =========================================================================== aux loss
@named("switch_aux_loss")
def _aux_reference(probs, experts):
    return float(R.switch_aux_loss(probs, experts))


def _parts(probs, experts, *, all_choices=False):
    """``(E, f, P)`` as the course computes them (``f`` over all choices if asked)."""
    probs, experts = np.asarray(probs, dtype=np.float64), np.asarray(experts)
    if probs.ndim != 2 or experts.ndim != 2 or len(probs) != len(experts):
        return None
    n_tokens, n_experts = probs.shape
    chosen = experts.reshape(-1) if all_choices else experts[:, 0]
    counts = np.bincount(chosen, minlength=n_experts)[:n_experts].astype(np.float64)
    return n_experts, counts / n_tokens, probs.mean(axis=0)


def _aux_mistake(kind):
    def wrong(probs, experts):
        parts = _parts(probs, experts, all_choices=kind == "all_choices")
        if parts is None:
            return None
        n_experts, f, p = parts
        if kind == "f_from_probs":
            return float(n_experts * np.sum(p * p))
        if kind == "no_e":
            return float(np.sum(f * p))
        if kind == "mean":
            return float(np.mean(f * p))
        if kind == "counts":
            return float(n_experts * np.sum(f * len(np.asarray(probs)) * p))
        if kind == "chosen_gates":
            probs_ = np.asarray(probs, dtype=np.float64)
            top = np.asarray(experts)[:, 0]
            gate = np.zeros_like(probs_)
            rows = np.arange(len(top))
            gate[rows, top] = probs_[rows, top]
            return float(n_experts * np.sum(f * gate.mean(axis=0)))
        if kind == "all_choices":
            return float(n_experts * np.sum(f * p))
        if kind == "argmax":
            probs_ = np.asarray(probs, dtype=np.float64)
            top = np.argmax(probs_, axis=1)
            f_ = np.bincount(top, minlength=n_experts)[:n_experts] / len(top)
            return float(n_experts * np.sum(f_ * p))
        raise AssertionError(kind)

    return wrong


_AUX_MISTAKES = [
    Mistake(
        _aux_mistake("f_from_probs"),
        "f_i is the FRACTION OF TOKENS dispatched to expert i (a count of the first "
        "choices, experts[:, 0], divided by T), not the mean probability: with f = P "
        "you get E * sum P_i^2. The count is not differentiable; P_i carries the "
        "gradient.",
    ),
    Mistake(
        _aux_mistake("no_e"),
        "multiply by the number of experts E: the loss is E * sum_i f_i P_i, which is "
        "1 for a perfectly balanced router whatever E is (sum f_i P_i alone is 1/E; "
        "E * mean_i(f_i P_i) gives the same wrong value).",
    ),
    Mistake(
        _aux_mistake("mean"),
        "sum over the experts, do not average them, and keep the factor E: "
        "E * sum_i f_i P_i (a mean over experts divides by E once more).",
    ),
    Mistake(
        _aux_mistake("counts"),
        "f_i is a fraction: divide the count of tokens sent to expert i by the "
        "number of tokens T (the f_i sum to 1).",
    ),
    Mistake(
        _aux_mistake("chosen_gates"),
        "P_i is the mean of the router's FULL softmax probs[:, i] over all tokens, "
        "not only of the gates of the tokens that chose expert i (the others' "
        "probabilities count too: that is what pushes the router away from a "
        "crowded expert).",
    ),
    Mistake(
        _aux_mistake("all_choices"),
        "count only each token's FIRST choice, experts[:, 0] (the Switch loss is "
        "defined for top-1 routing; the course applies it to the first choice when "
        "k > 1): counting all k choices makes the f_i sum to k.",
    ),
    Mistake(
        _aux_mistake("argmax"),
        "count the experts the router actually chose (experts[:, 0]), not the argmax "
        "of probs: with noisy gating the chosen expert comes from the noisy logits "
        "and need not be the argmax of the clean softmax.",
    ),
]


def _softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _router(rng, n_tokens, n_experts, k, *, skew=0.0, scale=1.0, noisy=False):
    """``(probs, experts)``: the softmax of random logits and its top-k (of noisy logits
    when ``noisy``)."""
    logits = scale * rng.normal(size=(n_tokens, n_experts)) - skew * np.arange(n_experts)
    pick = logits + (rng.normal(size=logits.shape) if noisy else 0.0)
    experts = np.argsort(-pick, axis=1, kind="stable")[:, :k].astype(np.int64)
    return _softmax(logits), experts


def _aux_cases(rng: np.random.Generator) -> list[Case]:
    balanced = np.full((4, 4), 0.25)
    cases = [  # the first cases tell the mistakes apart
        Case("a skewed top-1 router: 16 tokens, 4 experts",
             _router(rng, 16, 4, 1, skew=0.7)),
        Case("top-2, 24 tokens, 6 experts: f counts the first choice only",
             _router(rng, 24, 6, 2, skew=0.5, scale=2.0)),
        Case("noisy gating: the chosen experts are not the argmax of probs",
             _router(rng, 40, 4, 1, noisy=True)),
        Case("perfect balance: uniform probs, one token per expert (loss 1)",
             (balanced, np.arange(4, dtype=np.int64)[:, None])),
        Case("collapse: every token on expert 0 with probability 1 (loss E)",
             (np.eye(5)[np.zeros(10, dtype=int)], np.zeros((10, 1), dtype=np.int64))),
        Case("a confident router: 64 tokens, 8 experts",
             _router(rng, 64, 8, 1, scale=4.0)),
        Case("top-2 of 8, 50 tokens", _router(rng, 50, 8, 2, skew=0.2)),
        Case("one token", _router(rng, 1, 3, 1)),
        Case("an expert nobody chose", (np.array([[0.6, 0.3, 0.1], [0.5, 0.4, 0.1]]),
                                        np.array([[0], [1]], dtype=np.int64))),
        Case("float32 probabilities", tuple(
            a.astype(np.float32) if a.dtype.kind == "f" else a
            for a in _router(rng, 32, 4, 1, skew=0.3))),
    ]
    for n in range(3):
        n_experts = int(rng.choice([2, 4, 8, 16]))
        k = int(rng.integers(1, min(3, n_experts) + 1))
        n_tokens = int(rng.integers(4, 100))
        cases.append(Case(
            f"random draw {n + 1}: top-{k} of {n_experts}, {n_tokens} tokens",
            _router(rng, n_tokens, n_experts, k, skew=float(rng.uniform(0, 1)),
                    scale=float(rng.uniform(0.5, 3)), noisy=bool(n % 2)),
        ))
    return cases


@checker(reference=_aux_reference)
def check_switch_aux_loss(student_fn: Any) -> CheckResult:
    """Check ``switch_aux_loss(probs, experts) -> float`` (to 1e-6: float32 inputs
    may be summed in float32)."""
    return check_with_hints(
        student_fn, _aux_reference, _aux_cases, _AUX_MISTAKES,
        name="switch_aux_loss", rtol=1e-6, atol=1e-9,
    )  # fmt: skip
