"""Notebook 05.2's checkers accept the reference and plain student solutions and reject
the wrong answers students really write, each with its hint."""
from __future__ import annotations

import numpy as np
import pytest
from _checks import fails as _fails

from effx_lab.moe import reference as R
from effx_lab.moe.exercises import routing as E


# ------------------------------------------------------------------------ right answers
def bpr_loops(probs, experts, capacity, by="max"):
    n_tokens, k = experts.shape
    chosen = [[float(probs[t, e]) for e in experts[t]] for t in range(n_tokens)]
    priority = [max(c) if by == "max" else sum(c) for c in chosen]
    # highest priority first; among equals the lower token index first
    order = sorted(range(n_tokens), key=lambda t: (-priority[t], t))
    slots = np.full((n_tokens, k), -1, dtype=np.int64)
    used = {}
    for j in range(k):  # every first choice before any second choice
        for t in order:
            e = int(experts[t, j])
            if used.get(e, 0) < capacity:
                slots[t, j] = used.get(e, 0)
                used[e] = used.get(e, 0) + 1
    return slots


def bpr_vectorised(probs, experts, capacity, by="max"):
    scores = np.take_along_axis(probs, experts, axis=1)
    priority = scores.max(axis=1) if by == "max" else scores.sum(axis=1)
    order = np.argsort(-priority, kind="stable")
    n_tokens, k = experts.shape
    slots = np.full((n_tokens, k), -1, dtype=np.int64)
    fill = np.zeros(probs.shape[1], dtype=np.int64)
    for j in range(k):
        for t in order:
            e = experts[t, j]
            if fill[e] < capacity:
                slots[t, j], fill[e] = fill[e], fill[e] + 1
    return slots


def bpr_with_library(probs, experts, capacity, by="max"):
    order = R.priority_order(np.take_along_axis(probs, experts, axis=1), by=by)
    return R.assign_slots(experts, probs.shape[1], capacity, order=order)


def task_bytes_nbytes(table, params, task):
    n_experts = params["w1"].shape[0]
    one = sum(v.nbytes for v in params.values()) // n_experts
    return len(set(table[task].tolist())) * one, n_experts * one


def task_bytes_by_index(table, params, task):
    loaded = sum(v[e].nbytes for e in table[task] for v in params.values())
    total = sum(v.nbytes for v in params.values())
    return int(loaded), int(total)


@pytest.mark.parametrize(
    "checker, fn",
    [
        (E.check_bpr_slots, bpr_loops),
        (E.check_bpr_slots, bpr_vectorised),
        (E.check_bpr_slots, bpr_with_library),
        (E.check_task_expert_bytes, R.task_expert_bytes),
        (E.check_task_expert_bytes, task_bytes_nbytes),
        (E.check_task_expert_bytes, task_bytes_by_index),
    ],
)
def test_right_answers_pass(checker, fn, capsys):
    result = checker(fn)
    assert result.passed is True, result.message
    assert result.n_passed == result.n_cases >= 10
    assert "passed all" in capsys.readouterr().out


# ------------------------------------------------------------------------ bpr_slots
def _priority(probs, experts, by):
    scores = np.take_along_axis(probs, experts, axis=1)
    return scores.max(axis=1) if by == "max" else scores.sum(axis=1)


def _fill(experts, n_experts, capacity, order, *, token_major=False, extra=0):
    n_tokens, k = experts.shape
    slots = np.full((n_tokens, k), -1, dtype=np.int64)
    fill = np.zeros(n_experts, dtype=np.int64)
    pairs = (
        [(t, j) for t in order for j in range(k)]
        if token_major
        else [(t, j) for j in range(k) for t in order]
    )
    for t, j in pairs:
        e = experts[t, j]
        if fill[e] < capacity + extra:
            slots[t, j], fill[e] = fill[e], fill[e] + 1
    return slots


def ascending(probs, experts, capacity, by="max"):
    order = np.argsort(_priority(probs, experts, by), kind="stable")
    return _fill(experts, probs.shape[1], capacity, order)


def vanilla(probs, experts, capacity, by="max"):
    return _fill(experts, probs.shape[1], capacity, range(len(experts)))


def reversed_ascending(probs, experts, capacity, by="max"):
    order = np.argsort(_priority(probs, experts, by), kind="stable")[::-1]
    return _fill(experts, probs.shape[1], capacity, order)


def sum_is_max(probs, experts, capacity, by="max"):
    order = np.argsort(-_priority(probs, experts, "max"), kind="stable")
    return _fill(experts, probs.shape[1], capacity, order)


def sum_over_all_experts(probs, experts, capacity, by="max"):
    score = probs.sum(axis=1) if by == "sum" else _priority(probs, experts, by)
    order = np.argsort(-score, kind="stable")
    return _fill(experts, probs.shape[1], capacity, order)


def token_by_token(probs, experts, capacity, by="max"):
    order = np.argsort(-_priority(probs, experts, by), kind="stable")
    return _fill(experts, probs.shape[1], capacity, order, token_major=True)


def each_choice_its_own_order(probs, experts, capacity, by="max"):
    scores = np.take_along_axis(probs, experts, axis=1)
    slots = np.full(experts.shape, -1, dtype=np.int64)
    fill = np.zeros(probs.shape[1], dtype=np.int64)
    for j in range(experts.shape[1]):
        for t in np.argsort(-scores[:, j], kind="stable"):
            e = experts[t, j]
            if fill[e] < capacity:
                slots[t, j], fill[e] = fill[e], fill[e] + 1
    return slots


def slots_in_priority_order(probs, experts, capacity, by="max"):
    order = np.argsort(-_priority(probs, experts, by), kind="stable")
    return _fill(experts, probs.shape[1], capacity, order)[order]


def one_row_too_many(probs, experts, capacity, by="max"):
    order = np.argsort(-_priority(probs, experts, by), kind="stable")
    return _fill(experts, probs.shape[1], capacity, order, extra=1)


def experts_sorted(probs, experts, capacity, by="max"):
    return np.argsort(-probs, axis=1)[:, : experts.shape[1]]


@pytest.mark.parametrize(
    "wrong, facts",
    [
        (ascending, ["DESCENDING"]),
        (vanilla, ["vanilla routing"]),
        (reversed_ascending, ["LATER token first"]),
        (sum_is_max, ["SUM of the router probabilities"]),
        (sum_over_all_experts, ["CHOSEN experts", "sums to 1"]),
        (token_by_token, ["ALL first choices"]),
        (each_choice_its_own_order, ["ONE priority"]),
        (slots_in_priority_order, ["PRIORITY order", "un-permute"]),
        (one_row_too_many, ["one more"]),
        (experts_sorted, ["SLOT of each"]),
    ],
)
def test_bpr_slots_rejects_with_hint(wrong, facts):
    _fails(E.check_bpr_slots(wrong), "bpr_slots", "hint:", *facts)


def test_bpr_slots_rejects_an_unstable_sort_on_ties():
    def unstable(probs, experts, capacity, by="max"):  # ties land anywhere
        order = np.argsort(-_priority(probs, experts, by), kind="quicksort")
        return _fill(experts, probs.shape[1], capacity, order)

    result = E.check_bpr_slots(unstable)
    if not result.passed:  # quicksort may keep equal keys in order by luck
        _fails(result, "bpr_slots", "tie")


def test_bpr_slots_rejects_ignoring_the_capacity_and_a_float_answer():
    def no_capacity(probs, experts, capacity, by="max"):
        order = np.argsort(-_priority(probs, experts, by), kind="stable")
        return _fill(experts, probs.shape[1], 10**9, order)

    _fails(E.check_bpr_slots(no_capacity), "bpr_slots")

    def as_float(probs, experts, capacity, by="max"):
        return bpr_vectorised(probs, experts, capacity, by).astype(np.float64)

    _fails(E.check_bpr_slots(as_float), "bpr_slots", "float")


def test_bpr_slots_rejects_changing_the_input_in_place():
    def in_place(probs, experts, capacity, by="max"):
        slots = bpr_vectorised(probs, experts, capacity, by)
        probs.sort(axis=1)
        return slots

    _fails(E.check_bpr_slots(in_place), "bpr_slots", "in place")


def test_bpr_cases_route_like_the_library():
    """The checker's cases are real routings: slots of route(policy='bpr_*') on the
    same probabilities (top-k of a softmax, no renormalisation)."""
    rng = np.random.default_rng(3)
    for case in E._bpr_cases(rng):
        probs, experts, capacity = case.args
        by = case.kwargs.get("by", "max")
        logits = np.log(np.asarray(probs, dtype=np.float64))
        r = R.route(logits, k=experts.shape[1], policy=f"bpr_{by}",
                    capacity=capacity)
        assert np.array_equal(r.experts, experts), case.label
        assert np.array_equal(E._bpr_reference(probs, experts, capacity, by),
                              r.slots), case.label


# ------------------------------------------------------------------------ task bytes
def _one(params, itemsize=None, keys=("w1", "b1", "w2", "b2")):
    return sum(
        v[0].size * (v.itemsize if itemsize is None else itemsize)
        for key, v in params.items() if key in keys
    )


def counts_numbers(table, params, task):
    one = _one(params, itemsize=1)
    return len(table[task]) * one, params["w1"].shape[0] * one


def assumes_float32(table, params, task):
    one = _one(params, itemsize=4)
    return len(table[task]) * one, params["w1"].shape[0] * one


def weights_only(table, params, task):
    one = _one(params, keys=("w1", "w2"))
    return len(table[task]) * one, params["w1"].shape[0] * one


def every_task(table, params, task):
    one = _one(params)
    return len(np.unique(table)) * one, params["w1"].shape[0] * one


def column_not_row(table, params, task):
    one = _one(params)
    return len(set(table[:, task].tolist())) * one, params["w1"].shape[0] * one


def whole_stack_per_expert(table, params, task):
    stack = sum(v.nbytes for v in params.values())
    return len(table[task]) * stack, stack


def total_of_the_table(table, params, task):
    one = _one(params)
    return len(table[task]) * one, len(np.unique(table)) * one


@pytest.mark.parametrize(
    "wrong, facts",
    [
        (counts_numbers, ["not bytes"]),
        (assumes_float32, ["4 bytes per number"]),
        (weights_only, ["biases"]),
        (every_task, ["ONE task"]),
        (column_not_row, ["ROW per task"]),
        (whole_stack_per_expert, ["stacks ALL E experts"]),
        (total_of_the_table, ["ALL E experts"]),
    ],
)
def test_task_expert_bytes_rejects_with_hint(wrong, facts):
    _fails(E.check_task_expert_bytes(wrong), "task_expert_bytes", "hint:", *facts)


def test_task_expert_bytes_rejects_floats_and_a_single_number():
    def as_floats(table, params, task):
        loaded, total = task_bytes_nbytes(table, params, task)
        return float(loaded), float(total)

    _fails(E.check_task_expert_bytes(as_floats), "task_expert_bytes")

    def loaded_only(table, params, task):
        return task_bytes_nbytes(table, params, task)[0]

    _fails(E.check_task_expert_bytes(loaded_only), "task_expert_bytes")


def test_checkers_are_exported_by_the_chapter():
    from effx_lab.moe import exercises

    assert exercises.check_bpr_slots is E.check_bpr_slots
    assert exercises.check_task_expert_bytes is E.check_task_expert_bytes
