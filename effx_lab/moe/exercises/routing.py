"""Checkers for notebook 05.2's exercises (routing: BPR, task-level MoE, PR-MoE).

* ``bpr_slots(probs, experts, capacity, by="max") -> slots``: Batch Priority Routing
  (V-MoE, Riquelme et al. 2021). ``probs`` ``(T, E)`` is the router's softmax,
  ``experts`` ``(T, k)`` the chosen experts of each token (best first), ``capacity`` the
  buffer size of every expert. A token's priority is the max (``by="max"``) or the sum
  (``by="sum"``) of the router probabilities of its ``k`` chosen experts; the buffers
  are filled with the tokens in descending priority (ties: the lower token index
  first), all first choices before any second choice; a (token, choice) whose expert is
  full gets ``-1``. The answer is ``(T, k)`` integers in TOKEN order, as
  ``assign_slots(experts, E, capacity, order=priority_order(...))`` of
  :mod:`effx_lab.moe.reference`. In the notebook it routes the trained tiny MoE at
  small capacity factors.
* ``task_expert_bytes(table, params, task) -> (loaded, total)``: task-level MoE
  (Kudugunta et al. 2021). ``table`` ``(n_tasks, k)`` holds the experts each task is
  statically routed to, ``params`` the stacked experts of one MoE layer (``w1 (E, d,
  f)``, ``b1 (E, f)``, ``w2 (E, f, d)``, ``b2 (E, d)``); the answer is the bytes of the
  distinct experts a server for ``task`` loads and the bytes of all ``E`` experts, as
  :func:`effx_lab.moe.reference.task_expert_bytes`. In the notebook it makes the memory
  table of a task-routed model.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from effx_lab.check import Case, CheckResult, Mistake, check_with_hints, checker, named

from .. import reference as R

__all__ = ["check_bpr_slots", "check_task_expert_bytes"]


# =========================================================================== BPR slots
@named("bpr_slots")
def _bpr_reference(probs, experts, capacity, by="max"):
    probs, experts = np.asarray(probs), np.asarray(experts)
    scores = np.take_along_axis(probs, experts, axis=1)
    order = R.priority_order(scores, by=by)
    return R.assign_slots(experts, probs.shape[1], capacity, order=order)


def _scores(probs, experts):
    probs, experts = np.asarray(probs, dtype=np.float64), np.asarray(experts)
    return np.take_along_axis(probs, experts.astype(np.int64), axis=1)


def _fill(experts, n_experts, capacity, order, *, choice_major=True, orders=None,
          extra=0):
    """Slots of ``experts`` filled in ``order`` (per choice: ``orders[j]``);
    ``choice_major``: all first choices first (right), else token by token;
    ``extra``: rows a buffer takes beyond ``capacity`` (right: 0)."""
    experts = np.asarray(experts).astype(np.int64)
    n_tokens, k = experts.shape
    limit = capacity + extra
    slots = np.full((n_tokens, k), -1, dtype=np.int64)
    fill = np.zeros(n_experts, dtype=np.int64)
    pairs = (
        [(t, j) for j in range(k) for t in (order if orders is None else orders[j])]
        if choice_major
        else [(t, j) for t in order for j in range(k)]
    )
    for t, j in pairs:
        e = experts[t, j]
        if fill[e] < limit:
            slots[t, j] = fill[e]
            fill[e] += 1
    return slots


def _priority(probs, experts, by):
    s = _scores(probs, experts)
    return s.max(axis=1) if by == "max" else s.sum(axis=1)


def _descending(score):
    return np.argsort(-np.asarray(score), kind="stable")


def _bpr_with(order_of, **how):
    """A wrong answer: ``order_of(probs, experts, by) -> order`` filled as ``how`` says."""

    def wrong(probs, experts, capacity, by="max"):
        if by not in ("max", "sum"):
            return None
        probs, experts = np.asarray(probs), np.asarray(experts)
        order = order_of(probs, experts, by)
        return _fill(experts, probs.shape[1], capacity, order, **how)

    return wrong


def _per_choice(probs, experts, capacity, by="max"):
    """Each choice ordered by its own probability, not by the token's priority."""
    s = _scores(probs, experts)
    orders = [_descending(s[:, j]) for j in range(s.shape[1])]
    return _fill(experts, np.shape(probs)[1], capacity, None, orders=orders)


def _not_unpermuted(probs, experts, capacity, by="max"):
    """The right slots, but left in priority order (rows permuted)."""
    order = _descending(_priority(probs, experts, by))
    slots = _fill(experts, np.shape(probs)[1], capacity, order)
    return slots[order]


def _sorted_experts(probs, experts, capacity, by="max"):
    """Sorted each token's experts by probability: an argsort of the row of probs."""
    probs = np.asarray(probs)
    return np.argsort(-probs, axis=1, kind="stable")[:, : np.shape(experts)[1]]


_BPR_MISTAKES = [
    Mistake(
        _bpr_with(lambda p, e, by: np.argsort(_priority(p, e, by), kind="stable")),
        "you filled the buffers with the LEAST confident tokens first: BPR sorts the "
        "priorities in DESCENDING order (np.argsort(-priority, kind='stable')).",
    ),
    Mistake(
        _bpr_with(lambda p, e, by: np.arange(np.shape(p)[0])),
        "that is vanilla routing (tokens in their order in the batch): BPR first "
        "orders the tokens by priority, the max or the sum of their top-k router "
        "probabilities.",
    ),
    Mistake(
        _bpr_with(
            lambda p, e, by: np.argsort(_priority(p, e, by), kind="stable")[::-1]
        ),
        "reversing an ascending sort puts the LATER token first among equal "
        "priorities: ties go to the lower token index. Sort -priority with a stable "
        "sort (np.argsort(-priority, kind='stable')).",
    ),
    Mistake(
        _bpr_with(lambda p, e, by: np.argsort(-_priority(p, e, by))),
        "np.argsort's default sort is not stable: among equal priorities it may put "
        "any token first. Ties go to the lower token index: "
        "np.argsort(-priority, kind='stable').",
    ),
    Mistake(
        _bpr_with(lambda p, e, by: _descending(_priority(p, e, "max"))),
        "with by='sum' the priority is the SUM of the router probabilities of the "
        "token's k chosen experts, not only the first one's (that is by='max').",
    ),
    Mistake(
        _bpr_with(
            lambda p, e, by: _descending(
                np.asarray(p, dtype=np.float64).sum(axis=1) if by == "sum"
                else _priority(p, e, by)
            )
        ),
        "the sum runs over the token's k CHOSEN experts (probs[t, experts[t]]), not "
        "over all E experts: a softmax row always sums to 1, so every token ties.",
    ),
    Mistake(
        _bpr_with(lambda p, e, by: _descending(_priority(p, e, by)),
                  choice_major=False),
        "fill ALL first choices (in priority order) before ANY second choice: you "
        "took each token's k choices together, so a confident token's second choice "
        "took a buffer row before a less confident token's first choice.",
    ),
    Mistake(
        _per_choice,
        "a token has ONE priority for all its choices (the max or the sum of its "
        "top-k probabilities): you ordered each choice by its own expert's "
        "probability.",
    ),
    Mistake(
        _not_unpermuted,
        "you returned the slots in PRIORITY order: row i of the answer must be token "
        "i's slots. Write slots[order[r]] = ..., or un-permute at the end "
        "(out[order] = sorted_slots).",
    ),
    Mistake(
        _bpr_with(lambda p, e, by: _descending(_priority(p, e, by)), extra=1),
        "an expert takes `capacity` tokens, slots 0 .. capacity - 1: you let it take "
        "one more (<= where < belongs).",
    ),
    Mistake(
        _sorted_experts,
        "return the SLOT of each (token, choice) in its expert's buffer (-1 when "
        "dropped), not the experts sorted by probability: the experts are given.",
    ),
]


def _routed(rng, n_tokens, n_experts, k, *, levels=None, late_sure=False):
    """A router's softmax and its top-k experts. ``levels``: logits drawn from that
    many values (ties in the priorities); ``late_sure``: the router is surest about
    the last tokens of the batch."""
    if levels is None:
        logits = rng.normal(0.0, 1.5, size=(n_tokens, n_experts))
    else:
        logits = rng.integers(0, levels, size=(n_tokens, n_experts)).astype(float)
        logits[:, 0] += 0.5  # a clear favourite: priorities tie across tokens
    if late_sure:
        logits *= np.linspace(0.3, 3.0, n_tokens)[:, None]
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs = z / z.sum(axis=1, keepdims=True)
    experts = np.argsort(-probs, axis=1, kind="stable")[:, :k].astype(np.int64)
    return probs, experts


def _bpr_cases(rng: np.random.Generator) -> list[Case]:
    cases = []

    def add(label, n, e, k, capacity, by=None, **how):
        probs, experts = _routed(rng, n, e, k, **how)
        kwargs = {} if by is None else {"by": by}
        cases.append(Case(label, (probs, experts, capacity), kwargs))

    # the first cases tell the mistakes apart
    add("top-1: 8 tokens, 2 experts, capacity 2; the router is surest about the "
        "last tokens", 8, 2, 1, 2, late_sure=True)
    add("top-2: 10 tokens, 4 experts, capacity 3, by='max'", 10, 4, 2, 3, by="max")
    add("top-2: 10 tokens, 4 experts, capacity 3, by='sum'", 10, 4, 2, 3, by="sum")
    add("ties: 40 tokens whose priorities repeat, 3 experts, capacity 5", 40, 3, 1, 5,
        levels=3)
    add("ties, top-2 by 'sum': 36 tokens, 4 experts, capacity 6", 36, 4, 2, 6,
        by="sum", levels=2)
    add("capacity 1: 12 tokens, 3 experts (C = 0.25)", 12, 3, 1, 1)
    add("top-3 of 5 experts by 'sum': 15 tokens, capacity 4", 15, 5, 3, 4, by="sum")
    add("capacity large enough: nothing dropped (16 tokens, 4 experts, capacity 16)",
        16, 4, 1, 16)
    add("one expert: every token routed to it, capacity 3", 7, 1, 1, 3)
    add("one token, 4 experts, top-2, capacity 1", 1, 4, 2, 1)
    probs, experts = _routed(rng, 9, 3, 1)
    cases.append(Case("float32 probabilities, capacity 2",
                      (probs.astype(np.float32), experts, 2)))
    for i in range(4):
        n, e = int(rng.integers(8, 80)), int(rng.integers(2, 9))
        k = int(rng.integers(1, min(e, 3) + 1))
        cap = int(rng.integers(1, max(2, k * n // e) + 1))
        by = str(rng.choice(["max", "sum"]))
        add(f"random draw {i + 1}: {n} tokens, {e} experts, top-{k}, capacity {cap}, "
            f"by='{by}'", n, e, k, cap, by=by)
    return cases


@checker(reference=_bpr_reference)
def check_bpr_slots(student_fn: Any) -> CheckResult:
    """Check ``bpr_slots(probs, experts, capacity, by="max") -> slots`` (exact)."""
    return check_with_hints(
        student_fn, _bpr_reference, _bpr_cases, _BPR_MISTAKES,
        name="bpr_slots", rtol=0.0, atol=0.0, exact=True,
    )  # fmt: skip


# =========================================================================== task bytes
@named("task_expert_bytes")
def _task_bytes_reference(table, params, task):
    return R.task_expert_bytes(table, params, task)


def _one_expert(params, *, itemsize=None, keys=None):
    """Bytes of one expert (``itemsize``: assumed bytes per number; ``keys``: only
    those arrays)."""
    total = 0
    for key, v in params.items():
        if keys is not None and key not in keys:
            continue
        v = np.asarray(v)
        total += int(v[0].size) * (v.itemsize if itemsize is None else itemsize)
    return total


def _n_experts(params):
    return int(np.shape(next(iter(params.values())))[0])


def _bytes_with(loaded_experts, **how):
    """A wrong answer: ``loaded_experts(table, task) -> how many experts`` loaded,
    each of ``_one_expert(params, **how)`` bytes."""

    def wrong(table, params, task):
        one = _one_expert(params, **how)
        return int(loaded_experts(np.asarray(table), task) * one), int(
            _n_experts(params) * one
        )

    return wrong


def _row(table, task):
    return len(set(table[task].tolist()))


def _stack_bytes(table, params, task):
    """Each loaded expert counted as the whole stack ``w1, b1, ...`` (all E)."""
    stack = sum(int(np.asarray(v).nbytes) for v in params.values())
    return int(_row(np.asarray(table), task) * stack), int(stack)


def _union_total(table, params, task):
    one = _one_expert(params)
    table = np.asarray(table)
    return int(_row(table, task) * one), int(len(np.unique(table)) * one)


_TASK_BYTES_MISTAKES = [
    Mistake(
        _bytes_with(_row, itemsize=1),
        "those are numbers of parameters, not bytes: multiply by the bytes per "
        "number (v.itemsize: 4 for float32, 2 for float16), or use v.nbytes.",
    ),
    Mistake(
        _bytes_with(_row, itemsize=4),
        "you assumed 4 bytes per number: the experts may be stored in float16 or "
        "float64. Read the bytes from the arrays (v.nbytes, or v.size * v.itemsize).",
    ),
    Mistake(
        _bytes_with(_row, keys=("w1", "w2")),
        "an expert is w1, b1, w2 and b2: count the biases' bytes too (every array "
        "of params).",
    ),
    Mistake(
        _bytes_with(lambda table, task: len(np.unique(table))),
        "a server for ONE task loads only that task's experts, row table[task]; you "
        "counted every expert any task uses.",
    ),
    Mistake(
        _bytes_with(lambda table, task: len(set(table[:, task].tolist()))),
        "table has one ROW per task (n_tasks, k): the task's experts are "
        "table[task], not the column table[:, task].",
    ),
    Mistake(
        _stack_bytes,
        "params['w1'] stacks ALL E experts (E, d, f): one expert is w1[e], b1[e], "
        "w2[e], b2[e], 1/E of each array.",
    ),
    Mistake(
        _union_total,
        "the second number is what token-level routing must load: ALL E experts "
        "(the leading axis of params' arrays), not only those the table names.",
    ),
]


def _experts_params(rng, n_experts, d, f, dtype=np.float32):
    shapes = {"w1": (n_experts, d, f), "b1": (n_experts, f),
              "w2": (n_experts, f, d), "b2": (n_experts, d)}
    return {k: rng.normal(size=s).astype(dtype) for k, s in shapes.items()}


def _table(rng, n_tasks, k, n_experts):
    return np.stack(
        [rng.choice(n_experts, size=k, replace=False) for _ in range(n_tasks)]
    ).astype(np.int64)


def _task_bytes_cases(rng: np.random.Generator) -> list[Case]:
    cases = [  # the first cases tell the mistakes apart
        Case("3 tasks, top-2 of 8 float32 experts (d = 4, f = 8), task 1",
             (_table(rng, 3, 2, 8), _experts_params(rng, 8, 4, 8), 1)),
        Case("float16 experts: 4 tasks, top-1 of 6 (d = 3, f = 5), task 0",
             (_table(rng, 4, 1, 6), _experts_params(rng, 6, 3, 5, np.float16), 0)),
        Case("float64 experts: 2 tasks, top-3 of 5 (d = 2, f = 6), task 1",
             (_table(rng, 2, 3, 5), _experts_params(rng, 5, 2, 6, np.float64), 1)),
        Case("5 tasks sharing experts, top-2 of 4 (d = 3, f = 7), task 4",
             (np.array([[0, 1], [1, 2], [2, 3], [3, 0], [0, 2]]),
              _experts_params(rng, 4, 3, 7), 4)),
        Case("one task, every expert: top-3 of 3", (np.array([[2, 0, 1]]),
                                                    _experts_params(rng, 3, 2, 2), 0)),
        Case("a table naming few of many experts: 2 tasks, top-1 of 16",
             (np.array([[5], [9]]), _experts_params(rng, 16, 2, 3), 0)),
        Case("one expert", (np.array([[0]]), _experts_params(rng, 1, 4, 4), 0)),
    ]
    for i in range(3):
        e = int(rng.integers(2, 33))
        k = int(rng.integers(1, min(e, 4) + 1))
        n_tasks = int(rng.integers(1, 9))
        d, f = int(rng.integers(1, 9)), int(rng.integers(1, 17))
        dtype = [np.float16, np.float32, np.float64][int(rng.integers(0, 3))]
        task = int(rng.integers(0, n_tasks))
        cases.append(Case(
            f"random draw {i + 1}: {n_tasks} tasks, top-{k} of {e} experts "
            f"({np.dtype(dtype).name}, d = {d}, f = {f}), task {task}",
            (_table(rng, n_tasks, k, e), _experts_params(rng, e, d, f, dtype), task),
        ))
    return cases


@checker(reference=_task_bytes_reference)
def check_task_expert_bytes(student_fn: Any) -> CheckResult:
    """Check ``task_expert_bytes(table, params, task) -> (loaded, total)`` (exact)."""
    return check_with_hints(
        student_fn, _task_bytes_reference, _task_bytes_cases, _TASK_BYTES_MISTAKES,
        name="task_expert_bytes", rtol=0.0, atol=0.0, exact=True,
    )  # fmt: skip
