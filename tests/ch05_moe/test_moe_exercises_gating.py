"""Notebook 05.1's checkers accept the reference and plain student solutions and reject
the wrong answers students really write, each with its hint."""
from __future__ import annotations

import math

import numpy as np
import pytest
from _checks import fails as _fails

from effx_lab.moe import reference as R
from effx_lab.moe.exercises import gating as E


# ------------------------------------------------------------------------ right answers
def slots_loops(experts, n_experts, capacity_factor):
    n_tokens, k = experts.shape
    cap = max(1, math.ceil(k * n_tokens / n_experts * capacity_factor))
    slots = np.full((n_tokens, k), -1, dtype=np.int64)
    used = [0] * n_experts
    for j in range(k):  # all first choices, then all second choices
        for i in range(n_tokens):
            e = int(experts[i, j])
            if used[e] < cap:
                slots[i, j] = used[e]
                used[e] += 1
    return slots


def slots_cumsum(experts, n_experts, capacity_factor):
    n_tokens, k = experts.shape
    cap = max(1, int(np.ceil(k * n_tokens / n_experts * capacity_factor)))
    onehot = np.eye(n_experts, dtype=np.int64)[experts.T.reshape(-1)]  # choice-major
    position = np.cumsum(onehot, axis=0) - 1
    slot = np.take_along_axis(position, experts.T.reshape(-1, 1), axis=1)[:, 0]
    slot = np.where(slot < cap, slot, -1)
    return slot.reshape(k, n_tokens).T.copy()


def slots_course(experts, n_experts, capacity_factor):
    cap = R.capacity(experts.shape[0], n_experts, capacity_factor, experts.shape[1])
    return R.assign_slots(experts, n_experts, cap)


def aux_bincount(probs, experts):
    n_tokens, n_experts = probs.shape
    f = np.bincount(experts[:, 0], minlength=n_experts) / n_tokens
    return n_experts * float(np.sum(f * probs.mean(axis=0)))


def aux_onehot(probs, experts):
    n_experts = probs.shape[1]
    f = np.eye(n_experts)[experts[:, 0]].mean(axis=0)
    return float(n_experts * f @ probs.mean(axis=0))


@pytest.mark.parametrize(
    "checker, fn",
    [
        (E.check_expert_slots, slots_loops),
        (E.check_expert_slots, slots_cumsum),
        (E.check_expert_slots, slots_course),
        (E.check_switch_aux_loss, aux_bincount),
        (E.check_switch_aux_loss, aux_onehot),
        (E.check_switch_aux_loss, R.switch_aux_loss),
    ],
)
def test_right_answers_pass(checker, fn, capsys):
    result = checker(fn)
    assert result.passed is True, result.message
    assert result.n_passed == result.n_cases >= 10
    assert "passed all" in capsys.readouterr().out


# ------------------------------------------------------------------------ expert_slots
def _slots(experts, n_experts, cap, *, token_major=False, reverse=False, drop=True,
           shared=False, first=0, limit=None):
    n_tokens, k = experts.shape
    limit = cap if limit is None else limit
    tokens = list(range(n_tokens))[::-1] if reverse else list(range(n_tokens))
    if token_major:
        pairs = [(i, j) for i in tokens for j in range(k)]
    else:
        pairs = [(i, j) for j in range(k) for i in tokens]
    slots = np.full((n_tokens, k), -1, dtype=np.int64)
    used, total = [0] * n_experts, 0
    for i, j in pairs:
        e = int(experts[i, j])
        if used[e] < limit or not drop:
            slots[i, j] = (total if shared else used[e]) + first
            total += 1
        used[e] += 1
    return slots


def _cap(experts, n_experts, c):
    return max(1, math.ceil(experts.shape[1] * experts.shape[0] / n_experts * c))


def capacity_for_the_batch(experts, n_experts, c):
    return _slots(experts, n_experts, math.ceil(experts.size * c))


def capacity_is_the_factor(experts, n_experts, c):
    return _slots(experts, n_experts, max(1, math.ceil(c)))


def capacity_floor(experts, n_experts, c):
    return _slots(experts, n_experts,
                  max(1, int(experts.shape[1] * experts.shape[0] / n_experts * c)))


def capacity_without_k(experts, n_experts, c):
    return _slots(experts, n_experts, max(1, math.ceil(len(experts) / n_experts * c)))


def drops_the_early_tokens(experts, n_experts, c):
    return _slots(experts, n_experts, _cap(experts, n_experts, c), reverse=True)


def second_choices_first(experts, n_experts, c):
    return _slots(experts, n_experts, _cap(experts, n_experts, c), token_major=True)


def never_drops(experts, n_experts, c):
    return _slots(experts, n_experts, _cap(experts, n_experts, c), drop=False)


def one_counter(experts, n_experts, c):
    return _slots(experts, n_experts, _cap(experts, n_experts, c), shared=True)


def slots_from_one(experts, n_experts, c):
    return _slots(experts, n_experts, _cap(experts, n_experts, c), first=1)


def one_row_short(experts, n_experts, c):
    cap = _cap(experts, n_experts, c)
    return _slots(experts, n_experts, cap, limit=cap - 1)


@pytest.mark.parametrize(
    "wrong, facts",
    [
        (capacity_for_the_batch, ["per EXPERT"]),
        (capacity_is_the_factor, ["multiplier"]),
        (capacity_floor, ["round the capacity UP"]),
        (capacity_without_k, ["factor k"]),
        (drops_the_early_tokens, ["TOKEN ORDER", "early tokens"]),
        (second_choices_first, ["FIRST choices"]),
        (never_drops, ["DROPPED", "-1"]),
        (one_counter, ["one counter per expert"]),
        (slots_from_one, ["count from 0"]),
        (one_row_short, ["kept one"]),
    ],
)
def test_expert_slots_rejects_with_hint(wrong, facts):
    _fails(E.check_expert_slots(wrong), "expert_slots", "hint:", *facts)


def test_expert_slots_rejects_a_float_answer_and_a_changed_input():
    def as_float(experts, n_experts, c):
        return slots_loops(experts, n_experts, c).astype(np.float64)

    _fails(E.check_expert_slots(as_float), "expert_slots")

    def in_place(experts, n_experts, c):
        slots = slots_loops(experts, n_experts, c)
        experts[slots < 0] = 0
        return slots

    _fails(E.check_expert_slots(in_place), "expert_slots")


# ------------------------------------------------------------------------ aux loss
def _f(experts, n_experts, n_tokens):
    return np.bincount(experts[:, 0], minlength=n_experts) / n_tokens


def f_from_probs(probs, experts):
    p = probs.mean(axis=0)
    return float(probs.shape[1] * np.sum(p * p))


def without_e(probs, experts):
    return float(np.sum(_f(experts, probs.shape[1], len(probs)) * probs.mean(axis=0)))


def mean_over_experts(probs, experts):
    return float(np.mean(_f(experts, probs.shape[1], len(probs)) * probs.mean(axis=0)))


def counts_not_fractions(probs, experts):
    counts = np.bincount(experts[:, 0], minlength=probs.shape[1])
    return float(probs.shape[1] * np.sum(counts * probs.mean(axis=0)))


def gates_of_the_chosen_only(probs, experts):
    n_tokens, n_experts = probs.shape
    gates = np.zeros_like(probs)
    rows = np.arange(n_tokens)
    gates[rows, experts[:, 0]] = probs[rows, experts[:, 0]]
    f = _f(experts, n_experts, n_tokens)
    return float(n_experts * np.sum(f * gates.mean(axis=0)))


def all_choices_counted(probs, experts):
    n_tokens, n_experts = probs.shape
    f = np.bincount(experts.reshape(-1), minlength=n_experts) / n_tokens
    return float(n_experts * np.sum(f * probs.mean(axis=0)))


def argmax_of_probs(probs, experts):
    n_tokens, n_experts = probs.shape
    f = np.bincount(probs.argmax(axis=1), minlength=n_experts) / n_tokens
    return float(n_experts * np.sum(f * probs.mean(axis=0)))


@pytest.mark.parametrize(
    "wrong, facts",
    [
        (f_from_probs, ["FRACTION OF TOKENS"]),
        (without_e, ["multiply by the number of experts E"]),
        (mean_over_experts, ["sum over the experts"]),
        (counts_not_fractions, ["divide the count"]),
        (gates_of_the_chosen_only, ["FULL softmax"]),
        (all_choices_counted, ["FIRST choice"]),
        (argmax_of_probs, ["noisy"]),
    ],
)
def test_switch_aux_loss_rejects_with_hint(wrong, facts):
    _fails(E.check_switch_aux_loss(wrong), "switch_aux_loss", "hint:", *facts)


def test_switch_aux_loss_rejects_an_array_answer():
    def per_expert(probs, experts):  # forgot the sum
        n_experts = probs.shape[1]
        return n_experts * _f(experts, n_experts, len(probs)) * probs.mean(axis=0)

    _fails(E.check_switch_aux_loss(per_expert), "switch_aux_loss")


def test_checkers_are_exported_by_the_chapter():
    from effx_lab.moe import exercises

    assert exercises.check_expert_slots is E.check_expert_slots
    assert exercises.check_switch_aux_loss is E.check_switch_aux_loss
