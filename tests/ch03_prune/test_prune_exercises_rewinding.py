"""Notebook 03.3's checkers (iterative_sparsities, retraining_lrs) pass the reference and
plain student solutions, and reject the classic wrong answers with their hints."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from _checks import fails

from effx_lab.models.training import lr_schedule
from effx_lab.prune import schedule as S
from effx_lab.prune.exercises import rewinding as E


# ------------------------------------------------------------------ iterative_sparsities
def sparsities_plain(final, rounds):
    return [1 - (1 - final) ** (r / rounds) for r in range(1, rounds + 1)]


def sparsities_loop(final, rounds):
    """The per-round fraction first, then the kept fraction compounded round by round."""
    p = 1 - math.exp(math.log1p(-final) / rounds)
    kept, out = 1.0, []
    for _ in range(rounds):
        kept *= 1 - p
        out.append(1 - kept)
    return out


@pytest.mark.parametrize(
    "fn",
    [
        S.iterative_sparsities,
        sparsities_plain,
        sparsities_loop,
        lambda f, r: np.array(sparsities_plain(f, r)),
        lambda f, r: tuple(sparsities_plain(f, r)),
        lambda f, r: torch.tensor(sparsities_plain(f, r), dtype=torch.float64),
    ],
    ids=["schedule", "plain", "loop", "numpy", "tuple", "torch"],
)
def test_iterative_sparsities_right_answers_pass(fn, capsys):
    result = E.check_iterative_sparsities(fn)
    assert result.passed is True, result.message
    assert result.n_passed == result.n_cases >= 10
    assert "passed all" in capsys.readouterr().out


SPARSITY_WRONG = {
    "linear steps": (
        lambda f, r: [f * i / r for i in range(1, r + 1)],
        "equal steps of sparsity",
    ),
    "p = final / rounds": (
        lambda f, r: [1 - (1 - f / r) ** i for i in range(1, r + 1)],
        "p = final / rounds",
    ),
    "kept fractions": (
        lambda f, r: [(1 - f) ** (i / r) for i in range(1, r + 1)],
        "fractions of weights *kept*",
    ),
    "adds the per-round fractions": (
        lambda f, r: [i * (1 - (1 - f) ** (1 / r)) for i in range(1, r + 1)],
        "not p of the original",
    ),
    "compounds the sparsity": (
        lambda f, r: [f ** (i / r) for i in range(1, r + 1)],
        "compound the kept fraction",
    ),
    "range(rounds)": (
        lambda f, r: [1 - (1 - f) ** (i / r) for i in range(r)],
        "off by one",
    ),
    "range(rounds + 1)": (
        lambda f, r: [1 - (1 - f) ** (i / r) for i in range(r + 1)],
        "leave out the dense start",
    ),
    "the per-round fraction": (
        lambda f, r: [1 - (1 - f) ** (1 / r)] * r,
        "not the fraction of the remaining weights each round prunes",
    ),
    "exponent r / (rounds - 1)": (
        lambda f, r: [1 - (1 - f) ** (i / max(r - 1, 1)) for i in range(1, r + 1)],
        "off by one in the exponent",
    ),
}


@pytest.mark.parametrize("name", list(SPARSITY_WRONG))
def test_iterative_sparsities_wrong_answers_fail_with_hint(name):
    fn, hint = SPARSITY_WRONG[name]
    fails(E.check_iterative_sparsities(fn), "hint:", hint)


def test_iterative_sparsities_final_must_be_exact():
    """A last round that misses final by more than rounding is wrong."""

    def short(final, rounds):
        return sparsities_plain(final, rounds)[:-1] + [final - 1e-6]

    fails(E.check_iterative_sparsities(short), "output[")


# --------------------------------------------------------------------- retraining_lrs
def lrs_plain(mode, k, total_steps, lr, warmup, min_ratio):
    def at(pos):
        return lr_schedule(pos, total_steps, lr=lr, warmup=warmup, min_ratio=min_ratio)

    if mode == "finetune":
        return [at(total_steps)] * (total_steps - k)  # the final rate, held
    return [at(k + j) for j in range(1, total_steps - k + 1)]


def lrs_numpy(mode, k, total_steps, lr, warmup, min_ratio):
    """A vectorized student version: warm-up, then cosine, written out."""
    pos = np.arange(k + 1, total_steps + 1, dtype=np.float64)
    if mode == "finetune":
        return np.full(total_steps - k, lr * min_ratio)
    p = np.clip((pos - warmup) / (total_steps - warmup), 0.0, 1.0)
    cos = lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + np.cos(np.pi * p)))
    if warmup > 0:
        cos = np.where(pos <= warmup, lr * pos / warmup, cos)
    return cos


@pytest.mark.parametrize("fn", [E._lrs_reference, lrs_plain, lrs_numpy])
def test_retraining_lrs_right_answers_pass(fn):
    result = E.check_retraining_lrs(fn)
    assert result.passed is True, result.message
    assert result.n_passed == result.n_cases >= 10


def test_retraining_lrs_reference_matches_what_retrain_trains_with():
    """The rates the checker expects are those schedule.retrain gives train()."""
    from effx_lab.models import lm

    spec = lm.LMSpec(d_model=8, n_layers=1, max_len=8, mixer_options={"n_heads": 2})
    tokens = np.arange(200, dtype=np.int64) % 256
    for mode in S.RETRAIN_MODES:
        model = lm.LM(spec, seed=0)
        snap = S.snapshot(model)
        rates = []
        orig = torch.optim.AdamW.step

        def spy(self, *a, **kw):
            rates.append(self.param_groups[0]["lr"])
            return orig(self, *a, **kw)

        torch.optim.AdamW.step = spy
        try:
            S.retrain(
                model, tokens, mode, k=3, total_steps=9,
                rewind_to=snap if mode == "weight_rewind" else None,
                lr=0.01, warmup=2.0, min_ratio=0.1, batch_size=2, seq_len=8,
                progress=False,
            )  # fmt: skip
        finally:
            torch.optim.AdamW.step = orig
        expected = E._lrs_reference(mode, 3, 9, 0.01, 2.0, 0.1)
        assert np.allclose(rates, expected, rtol=1e-12, atol=0), (mode, rates)


RATE_WRONG = {
    "positions k .. T - 1": (
        lambda mode, k, T, lr, w, m: lrs_plain(mode, k, T, lr, w, m)
        if mode == "finetune"
        else [
            lr_schedule(p, T, lr=lr, warmup=w, min_ratio=m) for p in range(k, T)
        ],
        "off by one",
    ),
    "replays from step 0": (
        lambda mode, k, T, lr, w, m: lrs_plain(mode, k, T, lr, w, m)
        if mode == "finetune"
        else [
            lr_schedule(p, T, lr=lr, warmup=w, min_ratio=m)
            for p in range(1, T - k + 1)
        ],
        "not from the start",
    ),
    "a fresh schedule of T - k steps": (
        lambda mode, k, T, lr, w, m: lrs_plain(mode, k, T, lr, w, m)
        if mode == "finetune"
        else [
            lr_schedule(p, T - k, lr=lr, warmup=min(w, T - k), min_ratio=m)
            for p in range(1, T - k + 1)
        ],
        "replays the *original* schedule",
    ),
    "weight rewinding at the final rate": (
        lambda mode, k, T, lr, w, m: [lr * m] * (T - k)
        if mode == "weight_rewind"
        else lrs_plain(mode, k, T, lr, w, m),
        "rewinds the learning-rate schedule with the weights",
    ),
    "lr rewinding at the final rate": (
        lambda mode, k, T, lr, w, m: [lr * m] * (T - k)
        if mode == "lr_rewind"
        else lrs_plain(mode, k, T, lr, w, m),
        "keeps the weights but replays the schedule",
    ),
    "fine-tuning at the peak": (
        lambda mode, k, T, lr, w, m: [lr] * (T - k)
        if mode == "finetune"
        else lrs_plain(mode, k, T, lr, w, m),
        "*final* learning rate",
    ),
    "fine-tuning replays the schedule": (
        lambda mode, k, T, lr, w, m: lrs_plain("lr_rewind", k, T, lr, w, m),
        "that is learning-rate rewinding",
    ),
    "fine-tuning one step short": (
        lambda mode, k, T, lr, w, m: [lr * m] * (T - k - 1)
        if mode == "finetune"
        else lrs_plain(mode, k, T, lr, w, m),
        "as many steps as the other modes",
    ),
}


@pytest.mark.parametrize("name", list(RATE_WRONG))
def test_retraining_lrs_wrong_answers_fail_with_hint(name):
    fn, hint = RATE_WRONG[name]
    fails(E.check_retraining_lrs(fn), "hint:", hint)


def test_retraining_lrs_every_mode_is_tested():
    """An answer right for two modes and wrong for the third fails."""
    for bad in S.RETRAIN_MODES:

        def wrong(mode, k, T, lr, w, m, bad=bad):
            out = lrs_plain(mode, k, T, lr, w, m)
            return [2 * x for x in out] if mode == bad else out

        fails(E.check_retraining_lrs(wrong), bad)


# ------------------------------------------------------------------------ never crash
@pytest.mark.parametrize(
    "checker", [E.check_iterative_sparsities, E.check_retraining_lrs]
)
def test_not_attempted_and_non_functions(checker):
    def todo(*args, **kwargs):
        raise NotImplementedError

    res = checker(todo)
    assert res.passed is False and res.attempted is False
    assert "not attempted" in res.message
    res = checker(42)
    assert res.passed is False and "expected a function" in res.message


def test_exported_from_the_chapter_package():
    from effx_lab.prune import exercises

    assert exercises.check_iterative_sparsities is E.check_iterative_sparsities
    assert exercises.check_retraining_lrs is E.check_retraining_lrs
