"""Checkers for notebook 03.3's exercises (iterative pruning, rewinding, the lottery
ticket).

* ``iterative_sparsities(final, rounds) -> list[float]``: the sparsity after each of
  ``rounds`` rounds of iterative pruning when every round prunes the same fraction of
  the weights still there, ``1 - (1 - final)^(r / rounds)`` for ``r = 1 .. rounds``,
  as :func:`effx_lab.prune.schedule.iterative_sparsities`; it drives the notebook's
  live iterative run.
* ``retraining_lrs(mode, k, total_steps, lr, warmup, min_ratio) -> list[float]``: the
  learning rate of each of the ``total_steps - k`` retraining steps in one of Renda et
  al.'s (2020) modes (``"finetune"``, ``"weight_rewind"``, ``"lr_rewind"``) after an
  original run of ``total_steps`` steps on
  :func:`effx_lab.models.training.lr_schedule`, what
  :func:`effx_lab.prune.schedule.retrain` trains with; it draws the notebook's
  learning-rate curves.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from effx_lab.check import Case, CheckResult, Mistake, check_with_hints, checker, named
from effx_lab.models.training import lr_schedule

from ..schedule import RETRAIN_MODES, iterative_sparsities

__all__ = ["check_iterative_sparsities", "check_retraining_lrs"]


def _as_list(got: Any, expected: Any) -> Any:
    """Accept a tuple or a 1-D array (NumPy or torch) where a list is expected."""
    if isinstance(got, tuple):
        return list(got)
    if hasattr(got, "tolist") and getattr(got, "ndim", None) == 1:
        return got.tolist()
    return got


# ================================================================= iterative sparsities
@named("iterative_sparsities")
def _sparsities_reference(final, rounds):
    return iterative_sparsities(final, rounds)


_SPARSITY_MISTAKES = [
    Mistake(
        lambda final, rounds: [final * r / rounds for r in range(1, rounds + 1)],
        "equal steps of sparsity (final * r / rounds) prune a larger and larger "
        "fraction of the weights still there in each round; every round should prune "
        "the same fraction p of what is left: s_r = 1 - (1 - p)^r with "
        "(1 - p)^rounds = 1 - final.",
    ),
    Mistake(
        lambda final, rounds: [
            1 - (1 - final / rounds) ** r for r in range(1, rounds + 1)
        ],
        "p = final / rounds of the remaining weights per round does not reach final: "
        "the fractions compound. Choose p so that (1 - p)^rounds = 1 - final.",
    ),
    Mistake(
        lambda final, rounds: [
            (1 - final) ** (r / rounds) for r in range(1, rounds + 1)
        ],
        "these are the fractions of weights *kept* after each round; return the "
        "sparsities, 1 minus them.",
    ),
    Mistake(
        lambda final, rounds: [
            r * (1 - (1 - final) ** (1 / rounds)) for r in range(1, rounds + 1)
        ],
        "each round prunes p of the weights still there, not p of the original "
        "weights: the kept fraction compounds, (1 - p)^r after round r, so the "
        "sparsities do not add up round by round.",
    ),
    Mistake(
        lambda final, rounds: [final ** (r / rounds) for r in range(1, rounds + 1)],
        "compound the kept fraction 1 - final, not the sparsity: what survives a "
        "round is (1 - p) of what was there, so (1 - final)^(r / rounds) is kept "
        "after round r.",
    ),
    Mistake(
        lambda final, rounds: [1 - (1 - final) ** (r / rounds) for r in range(rounds)],
        "off by one: the list starts after the first round (r = 1) and ends at final "
        "after round r = rounds; range(rounds) starts at the dense model.",
    ),
    Mistake(
        lambda final, rounds: [
            1 - (1 - final) ** (r / rounds) for r in range(rounds + 1)
        ],
        "one sparsity per round, after the round: leave out the dense start (r = 0); "
        "the list has rounds entries and ends at final.",
    ),
    Mistake(
        lambda final, rounds: [1 - (1 - final) ** (1 / rounds)] * rounds,
        "return the sparsity reached after each round (cumulative, ending at final), "
        "not the fraction of the remaining weights each round prunes.",
    ),
    Mistake(
        lambda final, rounds: [
            1 - (1 - final) ** (r / (rounds - 1)) for r in range(1, rounds + 1)
        ]
        if rounds > 1 else None,
        "off by one in the exponent: after round r the kept fraction is "
        "(1 - final)^(r / rounds), so the last round (r = rounds) reaches final.",
    ),
]


def _sparsity_cases(rng: np.random.Generator) -> list[Case]:
    cases = [  # the first cases tell the mistakes apart
        Case("the notebook's run: 80 % in 3 rounds", (0.8, 3)),
        Case("90 % in 3 rounds", (0.9, 3)),
        Case("one round: prune to final at once", (0.5, 1)),
        Case("50 % in 2 rounds", (0.5, 2)),
        Case(
            "the lottery ticket's 20 % per round: 89.3 % in 10 rounds",
            (1 - 0.8**10, 10),
        ),
        Case("no pruning: final = 0", (0.0, 4)),
        Case("99 % in 5 rounds", (0.99, 5)),
        Case("a small target: 10 % in 4 rounds", (0.1, 4)),
    ]
    for i in range(4):
        final = float(np.round(rng.uniform(0.05, 0.98), 3))
        rounds = int(rng.integers(2, 12))
        cases.append(
            Case(
                f"random draw {i + 1}: {final:.1%} in {rounds} rounds",
                (final, rounds),
            )
        )
    return cases


@checker(reference=_sparsities_reference)
def check_iterative_sparsities(student_fn: Any) -> CheckResult:
    """Check ``iterative_sparsities(final, rounds) -> list[float]`` (rtol 1e-9; a
    tuple or a 1-D array is accepted for the list)."""
    return check_with_hints(
        student_fn, _sparsities_reference, _sparsity_cases, _SPARSITY_MISTAKES,
        name="iterative_sparsities", rtol=1e-9, atol=1e-12, prepare=_as_list,
    )  # fmt: skip


# ===================================================================== retraining lrs
def _rates(positions, total_steps, lr, warmup, min_ratio):
    return [
        lr_schedule(p, total_steps, lr=lr, warmup=warmup, min_ratio=min_ratio)
        for p in positions
    ]


@named("retraining_lrs")
def _lrs_reference(mode, k, total_steps, lr, warmup, min_ratio):
    if mode not in RETRAIN_MODES:
        raise ValueError(f"mode must be one of {RETRAIN_MODES}, got {mode!r}")
    n = total_steps - k
    if mode == "finetune":
        return [lr * min_ratio] * n
    return _rates(range(k + 1, total_steps + 1), total_steps, lr, warmup, min_ratio)


def _rewinding(fn):
    """A mistake in the rewinding modes only (fine-tuning answered right)."""

    def wrong(mode, k, total_steps, lr, warmup, min_ratio):
        if mode == "finetune":
            return _lrs_reference(mode, k, total_steps, lr, warmup, min_ratio)
        return fn(mode, k, total_steps, lr, warmup, min_ratio)

    return wrong


def _finetuning(fn):
    """A mistake in fine-tuning only (the rewinding modes answered right)."""

    def wrong(mode, k, total_steps, lr, warmup, min_ratio):
        if mode != "finetune":
            return _lrs_reference(mode, k, total_steps, lr, warmup, min_ratio)
        return fn(mode, k, total_steps, lr, warmup, min_ratio)

    return wrong


_LRS_MISTAKES = [
    Mistake(
        _rewinding(lambda mode, k, T, lr, w, m: _rates(range(k, T), T, lr, w, m)),
        "off by one: step j of the retraining (j = 1 .. T - k) ends at position k + j "
        "of the original schedule, as the training loop reads it (step j of a run "
        "gets lr_schedule(j, ...)); the last rate is lr_schedule(T, T, ...).",
    ),
    Mistake(
        _rewinding(
            lambda mode, k, T, lr, w, m: _rates(range(1, T - k + 1), T, lr, w, m)
        ),
        "rewinding to step k replays the schedule from position k, not from the "
        "start: the rates of the original run's steps k + 1 .. T.",
    ),
    Mistake(
        _rewinding(
            lambda mode, k, T, lr, w, m: _rates(range(1, T - k + 1), T - k, lr, w, m)
        ),
        "a rewinding mode replays the *original* schedule (T steps) from position k; "
        "a fresh schedule squeezed into T - k steps is another method.",
    ),
    Mistake(
        lambda mode, k, T, lr, w, m: [m * lr] * (T - k)
        if mode == "weight_rewind" else None,
        "weight rewinding rewinds the learning-rate schedule with the weights: its "
        "rates are the same as learning-rate rewinding's (only the starting weights "
        "differ).",
    ),
    Mistake(
        lambda mode, k, T, lr, w, m: [m * lr] * (T - k)
        if mode == "lr_rewind" else None,
        "learning-rate rewinding keeps the weights but replays the schedule from step "
        "k: the rates of steps k + 1 .. T of the original run, as weight rewinding.",
    ),
    Mistake(
        _finetuning(lambda mode, k, T, lr, w, m: [lr] * (T - k)),
        "fine-tuning continues at the original run's *final* learning rate, "
        "lr * min_ratio, held constant; not at the peak lr.",
    ),
    Mistake(
        _finetuning(
            lambda mode, k, T, lr, w, m: _rates(range(k + 1, T + 1), T, lr, w, m)
        ),
        "that is learning-rate rewinding: fine-tuning holds the final learning rate "
        "lr * min_ratio constant for all T - k steps.",
    ),
    Mistake(
        _finetuning(lambda mode, k, T, lr, w, m: [lr * m] * (T - k - 1)),
        "fine-tuning retrains as many steps as the other modes: T - k.",
    ),
    Mistake(
        _finetuning(
            lambda mode, k, T, lr, w, m: _rates(range(1, T - k + 1), T - k, lr, w, m)
        ),
        "fine-tuning does not start a new schedule: it holds the final learning rate "
        "of the original run, lr * min_ratio.",
    ),
]


def _lrs_cases(rng: np.random.Generator) -> list[Case]:
    cases = []
    for mode in ("lr_rewind", "weight_rewind", "finetune"):
        cases += [
            Case(f"{mode}: k = 2 of 6 steps, no warm-up", (mode, 2, 6, 1.0, 0.0, 0.1)),
            Case(
                f"{mode}: k = 5 of 20 steps, warm-up 4",
                (mode, 5, 20, 3e-3, 4.0, 0.1),
            ),
        ]
    cases += [
        Case(
            "lr_rewind: k = 0 (replay the whole run)",
            ("lr_rewind", 0, 8, 0.5, 2.0, 0.2),
        ),
        Case(
            "weight_rewind: k = T - 1 (one step)",
            ("weight_rewind", 9, 10, 1.0, 0.0, 0.1),
        ),
        Case("finetune: k = T - 1 (one step)", ("finetune", 9, 10, 1.0, 0.0, 0.1)),
        Case(
            "lr_rewind: rewind into the warm-up, k = 1 of 12, warm-up 5",
            ("lr_rewind", 1, 12, 2.0, 5.0, 0.0),
        ),
        Case(
            "weight_rewind: decay to 0 (min_ratio 0)",
            ("weight_rewind", 3, 9, 1.0, 0.0, 0.0),
        ),
        Case(
            "the notebook's run: lr_rewind, k = 40 of 160, warm-up 16",
            ("lr_rewind", 40, 160, 3e-3, 16.0, 0.1),
        ),
    ]
    for i in range(4):
        mode = str(rng.choice(RETRAIN_MODES))
        total = int(rng.integers(5, 60))
        k = int(rng.integers(0, total))
        warmup = float(rng.integers(0, total // 3 + 1))
        m = float(np.round(rng.uniform(0.02, 0.5), 2))
        lr = float(np.round(rng.uniform(1e-4, 1e-2), 5))
        cases.append(
            Case(
                f"random draw {i + 1}: {mode}, k = {k} of {total}",
                (mode, k, total, lr, warmup, m),
            )
        )
    return cases


@checker(reference=_lrs_reference)
def check_retraining_lrs(student_fn: Any) -> CheckResult:
    """Check ``retraining_lrs(mode, k, total_steps, lr, warmup, min_ratio) ->
    list[float]`` (rtol 1e-9; a tuple or a 1-D array is accepted for the list)."""
    return check_with_hints(
        student_fn, _lrs_reference, _lrs_cases, _LRS_MISTAKES,
        name="retraining_lrs", rtol=1e-9, atol=1e-15, prepare=_as_list,
    )  # fmt: skip
