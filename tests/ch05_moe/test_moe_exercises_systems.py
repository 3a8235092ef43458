"""Notebook 05.3's checkers accept the reference and plain student solutions and reject
the wrong answers students really write, each with its hint."""
from __future__ import annotations

import numpy as np
import pytest
from _checks import fails as _fails

from effx_lab.moe import reference as R
from effx_lab.moe.exercises import systems as E


# ------------------------------------------------------------------------ right answers
def dispatch_loops(routing):
    n_t, k = routing.experts.shape
    shape = (n_t, routing.n_experts, routing.capacity)
    dispatch = np.zeros(shape, dtype=routing.gates.dtype)
    combine = np.zeros(shape, dtype=routing.gates.dtype)
    for t in range(n_t):
        for j in range(k):
            s = int(routing.slots[t, j])
            if s >= 0:
                e = int(routing.experts[t, j])
                dispatch[t, e, s] = 1
                combine[t, e, s] = routing.gates[t, j]
    return dispatch, combine


def dispatch_one_hot(routing):
    """Products of one-hot encodings, as the Mesh-TensorFlow code writes it."""
    e_hot = np.eye(routing.n_experts)[routing.experts]  # (T, k, E)
    kept = routing.slots >= 0
    s_hot = np.eye(routing.capacity)[np.where(kept, routing.slots, 0)] * kept[..., None]
    dispatch = np.einsum("tke,tkc->tec", e_hot, s_hot).astype(routing.gates.dtype)
    combine = np.einsum("tk,tke,tkc->tec", routing.gates, e_hot, s_hot)
    return dispatch, combine.astype(routing.gates.dtype)


def sort_loops(routing):
    n_t, k = routing.experts.shape
    buckets = [[] for _ in range(routing.n_experts)]
    for t in range(n_t):
        for j in range(k):
            if routing.slots[t, j] >= 0:
                buckets[int(routing.experts[t, j])].append(t * k + j)
    order = [p for b in buckets for p in b]
    offsets = [0]
    for b in buckets:
        offsets.append(offsets[-1] + len(b))
    return np.array(order, dtype=np.int64), np.array(offsets, dtype=np.int64)


def sort_lexsort(routing):
    flat = routing.experts.reshape(-1)
    pairs = np.arange(flat.size)
    kept = routing.slots.reshape(-1) >= 0
    order = np.lexsort((pairs[kept], flat[kept]))
    order = pairs[kept][order]
    offsets = np.searchsorted(flat[order], np.arange(routing.n_experts + 1))
    return order.astype(np.int64), offsets.astype(np.int64)


@pytest.mark.parametrize("fn", [R.dispatch_combine, dispatch_loops, dispatch_one_hot])
def test_right_dispatch_combine_passes(fn, capsys):
    result = E.check_dispatch_combine(fn)
    assert result.passed is True, result.message
    assert result.n_passed == result.n_cases >= 10
    assert "passed all" in capsys.readouterr().out


@pytest.mark.parametrize("fn", [R.sort_by_expert, sort_loops, sort_lexsort])
def test_right_sort_by_expert_passes(fn):
    result = E.check_sort_by_expert(fn)
    assert result.passed is True, result.message
    assert result.n_passed == result.n_cases >= 10


# ------------------------------------------------------------------------ wrong answers
def dispatch_keeps_dropped(routing):
    n_t, k = routing.experts.shape
    d = np.zeros((n_t, routing.n_experts, routing.capacity))
    c = np.zeros_like(d)
    for t in range(n_t):
        for j in range(k):  # slot -1 writes into the last slot
            d[t, routing.experts[t, j], routing.slots[t, j]] = 1
            c[t, routing.experts[t, j], routing.slots[t, j]] = routing.gates[t, j]
    return d, c


def dispatch_no_gates(routing):
    d, _ = dispatch_loops(routing)
    return d, d.copy()


def dispatch_slot_zero(routing):
    n_t, k = routing.experts.shape
    d = np.zeros((n_t, routing.n_experts, routing.capacity))
    c = np.zeros_like(d)
    for t in range(n_t):
        for j in range(k):
            if routing.slots[t, j] >= 0:
                d[t, routing.experts[t, j], 0] = 1
                c[t, routing.experts[t, j], 0] = routing.gates[t, j]
    return d, c


def dispatch_e_t_c(routing):
    d, c = dispatch_loops(routing)
    return d.transpose(1, 0, 2), c.transpose(1, 0, 2)


def dispatch_probs(routing):
    d, _ = dispatch_loops(routing)
    chosen = np.take_along_axis(routing.probs, routing.experts, axis=1)
    n_t, k = routing.experts.shape
    c = np.zeros_like(d)
    for t in range(n_t):
        for j in range(k):
            if routing.slots[t, j] >= 0:
                c[t, routing.experts[t, j], routing.slots[t, j]] = chosen[t, j]
    return d, c


def dispatch_first_choice(routing):
    d = np.zeros((routing.n_tokens, routing.n_experts, routing.capacity))
    c = np.zeros_like(d)
    for t in range(routing.n_tokens):
        if routing.slots[t, 0] >= 0:
            d[t, routing.experts[t, 0], routing.slots[t, 0]] = 1
            c[t, routing.experts[t, 0], routing.slots[t, 0]] = routing.gates[t, 0]
    return d, c


@pytest.mark.parametrize(
    "fn, fact",
    [
        (dispatch_keeps_dropped, "LAST slot"),
        (dispatch_no_gates, "not a copy of dispatch"),
        (dispatch_slot_zero, "went to slot 0"),
        (dispatch_e_t_c, "not (E, T, C)"),
        (dispatch_probs, "not the router"),
        (dispatch_first_choice, "k choices"),
    ],
)
def test_wrong_dispatch_combine_fails_with_its_hint(fn, fact):
    _fails(E.check_dispatch_combine(fn), "hint:", fact)


def sort_with_dropped(routing):
    flat = routing.experts.reshape(-1)
    order = np.argsort(flat, kind="stable")
    counts = np.bincount(flat, minlength=routing.n_experts)
    return order, np.concatenate([[0], np.cumsum(counts)])


def sort_unstable(routing):
    flat = routing.experts.reshape(-1)
    kept = np.flatnonzero(routing.slots.reshape(-1) >= 0)
    order = kept[np.argsort(flat[kept])]  # quicksort by default
    counts = np.bincount(flat[kept], minlength=routing.n_experts)
    return order, np.concatenate([[0], np.cumsum(counts)])


def sort_subset_positions(routing):
    flat = routing.experts.reshape(-1)
    kept = routing.slots.reshape(-1) >= 0
    order = np.argsort(flat[kept], kind="stable")
    counts = np.bincount(flat[kept], minlength=routing.n_experts)
    return order, np.concatenate([[0], np.cumsum(counts)])


def sort_offsets_cumsum(routing):
    order, offsets = R.sort_by_expert(routing)
    return order, offsets[1:]


def sort_offsets_starts(routing):
    order, offsets = R.sort_by_expert(routing)
    return order, offsets[:-1]


def sort_offsets_argmax(routing):
    order, offsets = R.sort_by_expert(routing)
    sorted_e = routing.experts.reshape(-1)[order]
    starts = [int(np.argmax(sorted_e == e)) for e in range(routing.n_experts)]
    return order, np.array(starts + [len(order)])


@pytest.mark.parametrize(
    "fn, fact",
    [
        (sort_with_dropped, "leave them out"),
        (sort_unstable, "stable"),
        (sort_subset_positions, "shorter array"),
        (sort_offsets_cumsum, "only the ends"),
        (sort_offsets_starts, "the end of the last"),
        (sort_offsets_argmax, "received no token"),
    ],
)
def test_wrong_sort_by_expert_fails_with_its_hint(fn, fact):
    _fails(E.check_sort_by_expert(fn), "hint:", fact)


def test_torch_answers_are_read_as_arrays():
    import torch

    def as_tensors(routing):
        order, offsets = R.sort_by_expert(routing)
        return torch.from_numpy(order), torch.from_numpy(offsets)

    assert E.check_sort_by_expert(as_tensors).passed
