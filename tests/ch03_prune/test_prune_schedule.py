"""Tests of effx_lab.prune.schedule: Zhu & Gupta's cubic schedule, gradual magnitude
pruning as an after_step hook, iterative sparsities, snapshots and rewinding, the
lottery ticket and Renda et al.'s three retraining modes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from effx_lab.data.pools import token_splits
from effx_lab.models.lm import LM, LMSpec
from effx_lab.models.training import lr_schedule, train
from effx_lab.prune import models as PM
from effx_lab.prune import schedule as S
from effx_lab.sparse.masks import get_mask


def _lm(seed=0, d=16):
    return LM(LMSpec(d_model=d, n_layers=1, max_len=32), seed=seed)


def _lm_weights(model):
    return {
        f"layers.{i}.{k}": p
        for i, layer in enumerate(model.layers)
        for k, p in layer.items()
        if k.startswith("w") and p.ndim == 2
    }


@pytest.fixture(scope="module")
def tokens():
    return token_splits()[0][:20_000]


TRAIN = dict(batch_size=2, seq_len=16, lr=3e-3, progress=False)


# ------------------------------------------------------------------------ the schedule
def _formula(t, s_i, s_f, t0, n, dt):
    return s_f + (s_i - s_f) * (1 - (t - t0) / (n * dt)) ** 3


@pytest.mark.parametrize(
    "s_i, s_f, t0, n, dt", [(0.0, 0.9, 0, 10, 1), (0.2, 0.75, 5, 4, 3)]
)
def test_cubic_sparsity_follows_zhu_gupta(s_i, s_f, t0, n, dt):
    kw = dict(s_init=s_i, s_final=s_f, t0=t0, n_steps=n, dt=dt)
    end = t0 + n * dt
    for t in range(0, end + 2 * dt + 1):
        got = S.cubic_sparsity(t, **kw)
        if t < t0:
            assert got == s_i
        elif t >= end:
            assert got == s_f
        else:  # the value of the last pruning step <= t
            last = t0 + ((t - t0) // dt) * dt
            want = _formula(last, s_i, s_f, t0, n, dt)
            assert math.isclose(got, want, abs_tol=1e-15)
    values = [S.cubic_sparsity(t, **kw) for t in range(end + 1)]
    assert all(b >= a for a, b in zip(values, values[1:]))
    # the steps get smaller: fast pruning first (the cubic's point)
    jumps = [S.cubic_sparsity(t0 + i * dt, **kw) for i in range(n + 1)]
    gaps = np.diff(jumps)
    assert all(b < a for a, b in zip(gaps, gaps[1:]))
    assert S.cubic_sparsity(t0, **kw) == s_i


@pytest.mark.parametrize(
    "kw, exc, match",
    [
        (dict(s_init=0.5, s_final=0.4), ValueError, "s_init must be <= s_final"),
        (dict(s_final=1.0), ValueError, "s_final must be < 1"),
        (dict(s_final=-0.1), ValueError, "s_final must be >= 0"),
        (dict(s_init=-0.1), ValueError, "s_init must be >= 0"),
        (dict(n_steps=0), ValueError, "start after end"),
        (dict(n_steps=-3), ValueError, "n_steps must be an int >= 1"),
        (dict(dt=0), ValueError, "dt must be an int >= 1"),
        (dict(t0=-1), ValueError, "t0 must be an int >= 0"),
        (dict(step=-1), ValueError, "step must be an int >= 0"),
        (dict(step=2.0), TypeError, "step must be an int"),
        (dict(n_steps=2.5), TypeError, "n_steps must be an int"),
        (dict(s_final="0.5"), TypeError, "s_final must be a real number"),
    ],
)
def test_cubic_sparsity_names_bad_input(kw, exc, match):
    args = dict(step=3, s_final=0.8, n_steps=5) | kw
    step = args.pop("step")
    with pytest.raises(exc, match=match):
        S.cubic_sparsity(step, **args)


# ------------------------------------------------------------------------ GradualPruner
def test_gradual_pruner_follows_the_schedule_and_keeps_zeros(tokens):
    model = _lm()
    weights = _lm_weights(model)
    pruner = S.GradualPruner(model, s_final=0.8, t0=2, n_steps=4, dt=2)
    assert sorted(pruner.masks) == sorted(weights)
    seen = {"pruned": None, "steps": 0}

    def check(m, step):  # runs before the pruner: grads are those of this step
        pruned = {k: ~pruner.masks[k].mask.clone() for k in weights}
        for k, p in weights.items():
            assert p.grad is not None
            assert bool((p.grad[pruned[k]] == 0).all()), f"gradient of pruned {k}"
        if seen["pruned"] is not None:  # never revived
            for k in weights:
                assert bool((seen["pruned"][k] <= pruned[k]).all())
        seen["pruned"] = pruned
        seen["steps"] += 1

    def zeros(m, step):  # after the pruner: every pruned weight is exactly 0
        for k, p in weights.items():
            mask = pruner.masks[k].mask
            assert bool((p[~mask] == 0).all())
            want = round(S.cubic_sparsity(step, s_final=0.8, t0=2, n_steps=4, dt=2)
                         * p.numel())  # fmt: skip
            assert int((~mask).sum()) == want  # layer scope: exact per tensor

    train(model, tokens, steps=12, after_step=[check, pruner, zeros], **TRAIN)
    assert seen["steps"] == 12
    assert [s for s, _ in pruner.history] == [2, 4, 6, 8, 10]
    total = sum(p.numel() for p in weights.values())
    for step, sparsity in pruner.history:
        target = S.cubic_sparsity(step, s_final=0.8, t0=2, n_steps=4, dt=2)
        assert abs(sparsity - target) <= len(weights) / total
    assert abs(pruner.sparsity() - 0.8) < 1e-3
    # the surviving weights kept training: not all equal to their initial values
    assert bool((model.layers[0]["w1"] != 0).any())


def test_gradual_pruner_on_tinylm_prunes_its_linear_layers(tokens):
    from effx_lab.models import TinyLMConfig
    from effx_lab.models import torch_ops as MT

    cfg = TinyLMConfig(d_model=16, n_layers=1, n_heads=2, max_seq_len=32)
    model = MT.TinyLM.from_config(cfg, seed=0)
    pruner = S.GradualPruner(model, s_final=0.5, n_steps=2, dt=2)
    assert sorted(pruner.masks) == sorted(PM.prunable_weights(model))
    assert all(k.endswith(".weight") for k in pruner.masks)
    train(model, tokens, steps=5, after_step=[pruner], **TRAIN)
    for key, m in pruner.masks.items():
        assert m.sparsity == 0.5
        assert bool((dict(model.named_parameters())[key][~m.mask] == 0).all())
    assert int((model.tok_emb.weight == 0).sum()) == 0  # embeddings never pruned


def test_gradual_pruner_global_scope_prunes_exactly(tokens):
    model = _lm(seed=1)
    pruner = S.GradualPruner(model, s_final=0.6, n_steps=2, dt=3, scope="global")
    train(model, tokens, steps=7, after_step=[pruner], **TRAIN)
    total = sum(m.mask.numel() for m in pruner.masks.values())
    pruned = sum(int((~m.mask).sum()) for m in pruner.masks.values())
    assert pruned == round(0.6 * total)
    per_tensor = [m.sparsity for m in pruner.masks.values()]
    assert max(per_tensor) - min(per_tensor) > 1e-3  # one threshold, uneven layers


def test_gradual_pruner_never_revives_a_pruned_weight_at_a_tie():
    """A kept weight that is exactly 0 must not take the place of a pruned one."""
    lin = nn.Linear(4, 4, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.arange(1.0, 17.0).reshape(4, 4))
        lin.weight.view(-1)[8:12] = 1e-3  # the 4 smallest: pruned first
    model = nn.Sequential(lin)
    pruner = S.GradualPruner(model, s_init=0.25, s_final=0.375, n_steps=1, dt=1)
    pruned0 = ~pruner.masks["0.weight"].mask.reshape(-1)
    assert pruned0.nonzero().reshape(-1).tolist() == [8, 9, 10, 11]
    with torch.no_grad():
        lin.weight.view(-1)[0:4] = 0.0  # kept, but exactly 0, before the pruned ones
    pruner(model, 1)
    pruned1 = ~pruner.masks["0.weight"].mask.reshape(-1)
    assert int(pruned1.sum()) == 6  # exactly round(0.375 * 16)
    assert bool(pruned1[8:12].all())  # the pruned four stay pruned
    assert pruner.history == [(1, 0.375)]


def test_gradual_pruner_with_a_dict_of_weights(tokens):
    model = _lm()
    chosen = {"layers.0.w1": model.layers[0]["w1"]}
    pruner = S.GradualPruner(chosen, s_final=0.5, n_steps=1, dt=2)
    assert pruner.masks is None
    train(model, tokens, steps=3, after_step=[pruner], **TRAIN)
    assert list(pruner.masks) == ["layers.0.w1"]
    assert get_mask(model.layers[0], "w2") is None
    assert pruner.masks["layers.0.w1"].sparsity == 0.5
    with pytest.raises(ValueError, match="model must be the model this GradualPruner"):
        pruner(_lm(), 4)
    other = S.GradualPruner({"layers.0.nope": model.layers[0]["w2"]}, s_final=0.5,
                            n_steps=1)  # fmt: skip
    with pytest.raises(ValueError, match="does not have: 'layers.0.nope'"):
        other(model, 1)
    stranger = S.GradualPruner({"layers.0.w2": _lm().layers[0]["w2"]}, s_final=0.5,
                               n_steps=1)  # fmt: skip
    with pytest.raises(ValueError, match="is not the model's parameter"):
        stranger(model, 1)


def test_gradual_pruner_names_bad_input():
    model = _lm()
    with pytest.raises(TypeError, match="weights_or_model must be"):
        S.GradualPruner([1, 2], s_final=0.5, n_steps=2)
    with pytest.raises(ValueError, match="scope must be one of"):
        S.GradualPruner(model, s_final=0.5, n_steps=2, scope="row")
    with pytest.raises(ValueError, match="start after end"):
        S.GradualPruner(model, s_final=0.5, n_steps=0)
    with pytest.raises(ValueError, match="s_init must be <= s_final"):
        S.GradualPruner(model, s_init=0.6, s_final=0.5, n_steps=2)
    with pytest.raises(TypeError, match=r"weights\['w'\] must be a float nn.Parameter"):
        S.GradualPruner({"w": torch.zeros(2, 2)}, s_final=0.5, n_steps=2)
    # bad input leaves the model without masks
    assert len(PM.mask_set(model)) == 0
    pruner = S.GradualPruner(model, s_final=0.5, n_steps=2)
    with pytest.raises(ValueError, match="step must be an int >= 0"):
        pruner(model, -1)
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        pruner("model", 1)


# ----------------------------------------------------------------- iterative sparsities
@pytest.mark.parametrize("final, rounds", [(0.9, 3), (0.8, 5), (0.5, 1), (0.0, 4)])
def test_iterative_sparsities_prune_a_fixed_fraction_of_what_is_left(final, rounds):
    s = S.iterative_sparsities(final, rounds)
    assert len(s) == rounds and s[-1] == final
    left = [1.0] + [1 - x for x in s]
    fractions = [1 - b / a for a, b in zip(left, left[1:])]
    assert max(fractions) - min(fractions) < 1e-12
    assert all(b >= a for a, b in zip(s, s[1:]))


def test_iterative_sparsities_names_bad_input():
    with pytest.raises(ValueError, match="final must be < 1"):
        S.iterative_sparsities(1.0, 3)
    with pytest.raises(ValueError, match="rounds must be an int >= 1"):
        S.iterative_sparsities(0.5, 0)


# --------------------------------------------------------------- snapshot and rewinding
def test_snapshot_and_rewind_keep_the_masks(tokens):
    model = _lm()
    snap0 = S.snapshot(model)
    pruner = S.GradualPruner(model, s_final=0.5, n_steps=1, dt=2)
    train(model, tokens, steps=3, after_step=[pruner], **TRAIN)
    w1 = model.layers[0]["w1"]
    assert not torch.equal(w1, snap0["layers.0.w1"])  # training moved the weights
    S.rewind_(model, snap0)
    keep = pruner.masks["layers.0.w1"].mask
    assert torch.equal(w1[keep], snap0["layers.0.w1"][keep])
    assert bool((w1[~keep] == 0).all()) and int((~keep).sum()) > 0
    assert torch.equal(model.tok_emb, snap0["tok_emb"])
    # the snapshot is a copy: changing the model does not change it
    with torch.no_grad():
        model.tok_emb.add_(1.0)
    assert not torch.equal(model.tok_emb, snap0["tok_emb"])


def test_rewind_checks_the_snapshot_first():
    model = _lm()
    before = S.snapshot(model)
    bad = dict(S.snapshot(_lm(d=32)))
    with pytest.raises(ValueError, match="must be a tensor of shape"):
        S.rewind_(model, bad)
    with pytest.raises(ValueError, match="missing"):
        S.rewind_(model, {k: v for k, v in before.items() if k != "tok_emb"})
    with pytest.raises(TypeError, match="snap must be a dict"):
        S.rewind_(model, [1])
    for k, v in S.snapshot(model).items():
        assert torch.equal(v, before[k])


# ------------------------------------------------------------------ the lottery ticket
def test_lottery_ticket_puts_the_trained_mask_on_the_early_weights(tokens):
    model = _lm()
    init = S.snapshot(model)
    train(model, tokens, steps=4, **TRAIN)
    trained = S.snapshot(model)
    masks = S.lottery_ticket_(model, 0.7, init)
    total = sum(m.mask.numel() for m in masks.values())
    assert sum(int((~m.mask).sum()) for m in masks.values()) == round(0.7 * total)
    for key, m in masks.items():
        p = dict(model.named_parameters())[key]
        assert torch.equal(p[m.mask], init[key][m.mask])  # the init weights
        assert bool((p[~m.mask] == 0).all())
        # the mask kept the trained weights of largest magnitude
        t = trained[key].abs()
        assert float(t[m.mask].min()) >= float(t[~m.mask].max()) - 0
    # the control: the same mask on a fresh random initialisation
    control = _lm()
    S.lottery_ticket_(control, 0.7, trained)  # its own mask from "trained" weights
    fresh = S.snapshot(_lm(seed=7))
    S.rewind_(control, fresh)
    w = control.layers[0]["w1"]
    keep = get_mask(control.layers[0], "w1").mask
    assert torch.equal(w[keep], fresh["layers.0.w1"][keep])
    with pytest.raises(ValueError, match="sparsity must be < 1"):
        S.lottery_ticket_(model, 1.0, init)
    before = S.snapshot(model)
    with pytest.raises(ValueError, match="snap must hold exactly"):
        S.lottery_ticket_(model, 0.8, {})
    for k, v in S.snapshot(model).items():  # unchanged on error
        assert torch.equal(v, before[k])
    assert masks["layers.0.w1"].sparsity < 0.8 + 0.1


# ------------------------------------------------------------------- retraining modes
def _pruned(tokens, T=8):
    model = _lm()
    train(model, tokens, steps=3, **TRAIN)
    snap_k = S.snapshot(model)
    train(model, tokens, steps=T - 3, **TRAIN)
    S.lottery_ticket_(model, 0.5, S.snapshot(model))  # prune, weights kept
    return model, snap_k


@pytest.mark.parametrize("mode", S.RETRAIN_MODES)
def test_retrain_modes_at_equal_steps(tokens, mode):
    T, k = 8, 3
    model, snap_k = _pruned(tokens, T)
    masks = PM.mask_set(model)
    hist = S.retrain(
        model, tokens, mode, k=k, total_steps=T, lr=3e-3, warmup=1.0, min_ratio=0.1,
        rewind_to=snap_k if mode == "weight_rewind" else None, batch_size=2,
        seq_len=16, progress=False,
    )  # fmt: skip
    assert hist.steps == T - k
    if mode == "finetune":
        assert hist.lrs == [pytest.approx(3e-4)] * (T - k)
    else:
        want = [lr_schedule(k + j, T, lr=3e-3, warmup=1.0, min_ratio=0.1)
                for j in range(1, T - k + 1)]  # fmt: skip
        assert hist.lrs == pytest.approx(want)
    for key, m in masks.items():
        p = dict(model.named_parameters())[key]
        assert bool((p[~m.mask] == 0).all())


def test_retrain_names_bad_input(tokens):
    model, snap_k = _pruned(tokens)
    with pytest.raises(ValueError, match="mode must be one of"):
        S.retrain(model, tokens, "rewind", k=1, total_steps=4)
    with pytest.raises(ValueError, match="rewind_to is required"):
        S.retrain(model, tokens, "weight_rewind", k=1, total_steps=4)
    with pytest.raises(ValueError, match="rewind_to goes with"):
        S.retrain(model, tokens, "lr_rewind", k=1, total_steps=4, rewind_to=snap_k)
    with pytest.raises(ValueError, match="k must be an int in"):
        S.retrain(model, tokens, "lr_rewind", k=4, total_steps=4)
    with pytest.raises(ValueError, match="retrain sets steps itself"):
        S.retrain(model, tokens, "finetune", k=1, total_steps=4, steps=3)
    with pytest.raises(ValueError, match="min_ratio must be > 0"):
        S.retrain(model, tokens, "finetune", k=1, total_steps=4, min_ratio=0.0)
