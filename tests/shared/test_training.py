"""Tests of effx_lab.models.training (the one training loop, its schedule, evaluation)
and effx_lab.progress."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from effx_lab import progress
from effx_lab.models import TinyLMConfig
from effx_lab.models import reference as R
from effx_lab.models import torch_ops as T
from effx_lab.models import training

CFG = TinyLMConfig(vocab_size=32, d_model=16, n_heads=2, n_layers=1, max_seq_len=24)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _tokens(n: int = 600, vocab: int = 32, seed: int = 0) -> np.ndarray:
    """A noisy periodic stream: learnable in a few steps."""
    rng = np.random.default_rng(seed)
    base = np.tile(np.arange(1, 12), n // 11 + 1)[:n]
    return np.where(rng.random(n) < 0.05, rng.integers(0, vocab, n), base).astype(
        np.int64
    )


def _model(seed: int = 0) -> T.TinyLM:
    return T.TinyLM.from_config(CFG, seed=seed)


# --------------------------------------------------------------------------------------
# the schedule
# --------------------------------------------------------------------------------------


def test_lr_schedule_known_values() -> None:
    lr, s = 0.01, training.lr_schedule
    # linear warm-up from 0, then a cosine from lr down to min_ratio * lr at the end
    assert s(0, 10, lr=lr, warmup=4) == 0.0
    assert s(2, 10, lr=lr, warmup=4, min_ratio=0.1) == pytest.approx(0.005, rel=1e-15)
    assert s(4, 10, lr=lr, warmup=4, min_ratio=0.1) == pytest.approx(lr, rel=1e-15)
    assert s(7, 10, lr=lr, warmup=4, min_ratio=0.1) == pytest.approx(
        lr * (0.1 + 0.9 * 0.5), rel=1e-12
    )
    assert s(10, 10, lr=lr, warmup=4, min_ratio=0.1) == pytest.approx(
        0.1 * lr, rel=1e-12
    )
    assert s(12, 10, lr=lr, warmup=4, min_ratio=0.1) == pytest.approx(
        0.1 * lr, rel=1e-12
    )  # clipped
    # no warm-up: the cosine starts at the first position
    assert s(0, 8, lr=lr) == lr and s(8, 8, lr=lr) == pytest.approx(0.0, abs=1e-18)
    # hold: the peak is kept, the cosine is delayed
    assert s(4.5, 10, lr=lr, warmup=4, hold=1) == lr
    assert s(5, 10, lr=lr, warmup=4, hold=1) == lr  # p = 0


def test_lr_schedule_hold_1_is_nanogpts_get_lr() -> None:
    """Read at the end of step k (k = 1..steps), warmup W and hold 1 give nanoGPT's
    schedule, which TinyLM's checkpoint and QAT use: lr * k / W during the warm-up, then
    cos((k - 1 - W) / (steps - W)), bit for bit.
    """
    for steps, warmup, lr, min_ratio in [
        (40, 4, 3e-4, 0.0),
        (650, 65, 3e-3, 0.1),
        (7, 0, 1e-2, 0.1),
    ]:
        for i in range(steps):
            if i < warmup:
                want = lr * (i + 1) / warmup
            else:
                p = (i - warmup) / max(1, steps - warmup)
                want = lr * (
                    min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * p))
                )
            got = training.lr_schedule(
                i + 1, steps, lr=lr, warmup=warmup, hold=1, min_ratio=min_ratio
            )
            assert got == want, (steps, warmup, i)


def test_lr_schedule_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="steps must be > 0.0, got 0.0"):
        training.lr_schedule(0, 0, lr=1.0)
    with pytest.raises(ValueError, match="warmup must be <= 10.0, got 11.0"):
        training.lr_schedule(1, 10, lr=1.0, warmup=11)
    with pytest.raises(ValueError, match="min_ratio must be <= 1.0"):
        training.lr_schedule(1, 10, lr=1.0, min_ratio=2.0)
    with pytest.raises(TypeError, match="step must be a real number"):
        training.lr_schedule("1", 10, lr=1.0)


# --------------------------------------------------------------------------------------
# the loop
# --------------------------------------------------------------------------------------


def test_train_reduces_the_loss_records_every_step_and_is_reproducible() -> None:
    data = _tokens()
    runs = []
    for _ in range(2):
        model = _model()
        run = training.train(
            model, data, steps=30, batch_size=8, seq_len=16, lr=1e-2, warmup=3, seed=4
        )
        runs.append((run, model))
    run, model = runs[0]
    assert (
        run.steps == 30
        and len(run.lrs) == len(run.elapsed_s) == 30
        and run.tokens == 30 * 8 * 16
    )
    assert np.mean(run.losses[-5:]) < 0.5 * np.mean(run.losses[:5])
    assert run.lrs[2] == pytest.approx(1e-2) and run.lrs[-1] == pytest.approx(
        1e-3
    )  # warm-up 3, min_ratio 0.1
    assert (
        run.elapsed_s == sorted(run.elapsed_s) and run.time_s == run.elapsed_s[-1] > 0
    )
    assert not model.training  # left in eval mode
    assert runs[1][0].losses == run.losses
    for (name, p), (_, q) in zip(
        model.named_parameters(), runs[1][1].named_parameters(), strict=True
    ):
        assert torch.equal(p, q), name
    # a Generator is used as is: the same stream as its seed
    other = training.train(
        _model(), data, steps=3, batch_size=8, seq_len=16, seed=np.random.default_rng(4)
    )
    again = training.train(_model(), data, steps=3, batch_size=8, seq_len=16, seed=4)
    assert other.losses == again.losses


def test_a_hook_that_zeroes_weights_keeps_them_zero() -> None:
    data = _tokens()
    mask = torch.ones(CFG.ffn_dim, CFG.d_model)
    mask[:, ::2] = 0.0  # half of fc1's input columns pruned
    seen = []

    def reapply(model: nn.Module, step: int) -> None:
        seen.append(step)
        model.layers[0].mlp.fc1.weight.mul_(mask)

    model = _model()
    with torch.no_grad():
        model.layers[0].mlp.fc1.weight.mul_(mask)
    training.train(
        model, data, steps=12, batch_size=4, seq_len=16, lr=1e-2, after_step=reapply
    )
    w = model.layers[0].mlp.fc1.weight.detach()
    assert seen == list(range(1, 13))
    assert (
        torch.count_nonzero(w[:, ::2]) == 0
        and torch.count_nonzero(w[:, 1::2]) == w[:, 1::2].numel()
    )
    # the test can fail: without the hook, AdamW moves the pruned weights off zero
    model = _model()
    with torch.no_grad():
        model.layers[0].mlp.fc1.weight.mul_(mask)
    training.train(model, data, steps=2, batch_size=4, seq_len=16, lr=1e-2)
    assert torch.count_nonzero(model.layers[0].mlp.fc1.weight[:, ::2]) > 0


def test_a_custom_loss_records_its_scalars() -> None:
    data = _tokens()

    def loss_fn(model, x, y):
        logits = model(x)
        ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        z = logits.pow(2).mean()
        return {"loss": ce + 1e-3 * z, "ce": ce, "z": z}

    run = training.train(
        _model(), data, steps=4, batch_size=4, seq_len=16, loss_fn=loss_fn
    )
    assert set(run.metrics) == {"ce", "z"} and all(
        len(v) == 4 for v in run.metrics.values()
    )
    for loss, ce, z in zip(run.losses, run.metrics["ce"], run.metrics["z"]):
        assert loss == pytest.approx(ce + 1e-3 * z, rel=1e-6)
    with pytest.raises(
        TypeError, match="loss_fn must return a scalar tensor or a dict"
    ):
        training.train(
            _model(),
            data,
            steps=1,
            batch_size=2,
            seq_len=8,
            loss_fn=lambda m, x, y: 1.0,
        )
    with pytest.raises(
        TypeError, match="loss_fn's 'loss' must be a scalar torch tensor"
    ):
        training.train(
            _model(),
            data,
            steps=1,
            batch_size=2,
            seq_len=8,
            loss_fn=lambda m, x, y: m(x),
        )
    with pytest.raises(FloatingPointError, match="training diverged at step 1"):
        training.train(
            _model(),
            data,
            steps=2,
            batch_size=2,
            seq_len=8,
            loss_fn=lambda m, x, y: m(x).sum() * float("nan"),
        )


class _Decayed(nn.Module):
    """A TinyLM plus two 2-D parameters whose gradient is exactly zero: only weight
    decay moves them."""

    def __init__(self) -> None:
        super().__init__()
        self.lm = _model()
        self.kept = nn.Parameter(torch.ones(3, 3))
        self.decayed = nn.Parameter(torch.ones(3, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lm(x) + 0.0 * (self.kept.sum() + self.decayed.sum())

    def no_weight_decay(self) -> tuple[str, ...]:
        return ("kept",)


def test_weight_decay_spares_what_the_model_lists_and_vectors() -> None:
    model = _Decayed()
    bias_before = model.lm.layers[0].mlp.fc1.bias.detach().clone()
    training.train(
        model, _tokens(), steps=3, batch_size=2, seq_len=8, lr=0.1, weight_decay=0.5
    )
    assert torch.equal(model.kept, torch.ones(3, 3))
    assert (
        float(model.decayed.detach().max()) < 1.0
    )  # three steps of p *= 1 - lr * wd (with the schedule's lr)
    assert not torch.equal(
        model.lm.layers[0].mlp.fc1.bias, bias_before
    )  # trained, not decayed to zero


def test_time_budget_and_evaluation_schedule() -> None:
    data, val = _tokens(), _tokens(300, seed=1)
    run = training.train(
        _model(),
        data,
        time_budget_s=0.3,
        batch_size=4,
        seq_len=16,
        eval_tokens=val,
        eval_every_s=0.1,
        eval_batches=1,
    )
    assert run.time_s >= 0.3 and run.steps >= 1
    steps = [e["step"] for e in run.evals]
    assert steps[0] == 0 and steps[-1] == run.steps and steps == sorted(set(steps))
    assert run.evals[0]["train_loss"] is None and all(
        e["train_loss"] > 0 for e in run.evals[1:]
    )
    by_steps = training.train(
        _model(),
        data,
        steps=10,
        batch_size=4,
        seq_len=16,
        eval_tokens=val,
        eval_every=4,
        eval_batches=2,
    )
    assert [e["step"] for e in by_steps.evals] == [0, 4, 8, 10]
    # each entry's train_loss is the mean of the step losses since the previous one
    assert by_steps.evals[2]["train_loss"] == pytest.approx(
        np.mean(by_steps.losses[4:8]), rel=1e-12
    )
    # the evaluation is evaluate() on fixed windows: step 0 scores the untrained model
    fresh = _model()
    assert by_steps.evals[0]["loss"] == training.evaluate(
        fresh, val, seq_len=16, max_batches=2, seed=1234, batch_size=4
    )
    assert by_steps.to_dict()["steps"] == 10


def test_schedule_offset_follows_the_tail_of_a_longer_run() -> None:
    """Learning-rate rewinding: a run of 4 steps with schedule_start=6 and
    schedule_steps=10 uses exactly the learning rates of steps 7..10 of a 10-step run;
    the default (schedule_start=0, schedule_steps=steps) is the run's own schedule."""
    data = _tokens()
    kw = dict(batch_size=4, seq_len=8, lr=1e-2, warmup=2, hold=1, min_ratio=0.1)
    long = training.train(_model(), data, steps=10, **kw)
    tail = training.train(
        _model(), data, steps=4, schedule_start=6, schedule_steps=10, **kw
    )
    assert tail.lrs == long.lrs[6:]
    assert tail.settings["schedule_start"] == 6
    assert tail.settings["schedule_steps"] == 10
    # a head of the schedule: the first 4 rates of the long run, then the run stops
    head = training.train(_model(), data, steps=4, schedule_steps=10, **kw)
    assert head.lrs == long.lrs[:4]
    # the default is unchanged: the run's own schedule, as lr_schedule gives it
    own = training.train(_model(), data, steps=4, **kw)
    want = [
        training.lr_schedule(k, 4, lr=1e-2, warmup=2, hold=1, min_ratio=0.1)
        for k in range(1, 5)
    ]
    assert own.lrs == want and own.lrs != tail.lrs
    same = training.train(
        _model(), data, steps=4, schedule_start=0, schedule_steps=4, **kw
    )
    assert same.lrs == own.lrs and same.losses == own.losses


def test_schedule_offset_rejects_bad_arguments() -> None:
    data, model = _tokens(), _model()
    kw = dict(batch_size=2, seq_len=8)
    with pytest.raises(ValueError, match="schedule_start must be an int >= 0, got -1"):
        training.train(model, data, steps=2, schedule_start=-1, schedule_steps=4, **kw)
    with pytest.raises(
        ValueError,
        match=r"schedule_start \+ steps must be <= schedule_steps.*"
        r"schedule_start=3 \+ steps=2 > schedule_steps=4",
    ):
        training.train(model, data, steps=2, schedule_start=3, schedule_steps=4, **kw)
    with pytest.raises(ValueError, match="schedule_start needs schedule_steps"):
        training.train(model, data, steps=2, schedule_start=1, **kw)
    with pytest.raises(ValueError, match="schedule_steps must be an int"):
        training.train(model, data, steps=2, schedule_steps=0, **kw)
    with pytest.raises(TypeError, match="schedule_start must be an int"):
        training.train(model, data, steps=2, schedule_start=1.5, schedule_steps=4, **kw)
    with pytest.raises(
        ValueError, match="schedule_start and schedule_steps go with steps"
    ):
        training.train(model, data, time_budget_s=1.0, schedule_steps=4, **kw)
    with pytest.raises(
        ValueError, match="schedule_start and schedule_steps go with steps"
    ):
        training.train(model, data, time_budget_s=1.0, schedule_start=2, **kw)
    # warm-up is checked against the schedule's length, not the run's
    training.train(_model(), data, steps=1, schedule_steps=6, warmup=5, **kw)
    with pytest.raises(ValueError, match="warmup must be <= 6"):
        training.train(model, data, steps=1, schedule_steps=6, warmup=7, **kw)


def test_train_rejects_bad_arguments() -> None:
    data, model = _tokens(), _model()
    with pytest.raises(ValueError, match="exactly one of time_budget_s and steps"):
        training.train(model, data)
    with pytest.raises(ValueError, match="exactly one of time_budget_s and steps"):
        training.train(model, data, steps=2, time_budget_s=1.0)
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        training.train(R.TinyLM.from_config(CFG), data, steps=1)
    with pytest.raises(
        ValueError, match=r"seq_len must be an int in \[1, 24\], got 25"
    ):
        training.train(model, data, steps=1, seq_len=25)
    with pytest.raises(ValueError, match=r"train_tokens must lie in \[0, 31\]"):
        training.train(model, data + 100, steps=1, seq_len=8)
    with pytest.raises(ValueError, match="train_tokens must hold at least 9 tokens"):
        training.train(model, data[:5], steps=1, seq_len=8)
    with pytest.raises(ValueError, match="eval_every goes with steps"):
        training.train(model, data, time_budget_s=1.0, eval_every=2, seq_len=8)
    with pytest.raises(ValueError, match="eval_every_s goes with time_budget_s"):
        training.train(model, data, steps=2, eval_every_s=1.0, seq_len=8)
    with pytest.raises(ValueError, match="warmup must be <= 2, got 3.0"):
        training.train(model, data, steps=2, warmup=3, seq_len=8)
    with pytest.raises(TypeError, match=r"after_step\[1\] must be a callable"):
        training.train(
            model, data, steps=1, seq_len=8, after_step=[lambda m, s: None, "x"]
        )
    with pytest.raises(TypeError, match="betas must be a pair"):
        training.train(model, data, steps=1, seq_len=8, betas=0.9)
    with pytest.raises(ValueError, match="clock must be one of"):
        training.train(model, data, steps=1, seq_len=8, clock="gpu")
    frozen = _model().requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameter"):
        training.train(frozen, data, steps=1, seq_len=8)


# --------------------------------------------------------------------------------------
# evaluation
# --------------------------------------------------------------------------------------


def test_evaluate_a_uniform_model_scores_log_v_in_both_backends() -> None:
    params = T.TinyLM.from_config(CFG).to_params()
    params["tok_emb"][:] = 0.0  # logits 0 everywhere
    tokens = _tokens(300)
    for model in (R.TinyLM(params, CFG), T.TinyLM(params, CFG)):
        assert training.evaluate(
            model, tokens, seq_len=16, batch_size=4
        ) == pytest.approx(math.log(32), rel=1e-12)
        assert training.perplexity(model, tokens, seq_len=16) == pytest.approx(
            32.0, rel=1e-12
        )
        assert training.evaluate(
            model, tokens, seq_len=16, max_batches=2, seed=3
        ) == pytest.approx(math.log(32), rel=1e-6)


def test_evaluate_windows_and_backends() -> None:
    torch_model = _model(seed=2)
    np_model = R.TinyLM(torch_model.to_params(), CFG)
    tokens = _tokens(16 * 10 + 5)
    # consecutive windows: 10 whole windows of 16; max_batches=1 scores the first 4
    first4 = training.evaluate(
        torch_model, tokens[: 4 * 16 + 1], seq_len=16, batch_size=4
    )
    assert (
        training.evaluate(torch_model, tokens, seq_len=16, batch_size=4, max_batches=1)
        == first4
    )
    # float32 backends on the same windows: close (test_models proves the agreement)
    a = training.evaluate(torch_model, tokens, seq_len=16, batch_size=4)
    b = training.evaluate(np_model, tokens, seq_len=16, batch_size=4)
    assert a == pytest.approx(b, rel=1e-4)
    # random windows: the seed fixes them
    r1 = training.evaluate(torch_model, tokens, seq_len=16, max_batches=3, seed=5)
    assert r1 == training.evaluate(
        torch_model, tokens, seq_len=16, max_batches=3, seed=5
    )
    assert r1 != training.evaluate(
        torch_model, tokens, seq_len=16, max_batches=3, seed=6
    )
    torch_model.train()
    training.evaluate(torch_model, tokens, seq_len=16)
    assert torch_model.training  # mode restored


def test_evaluate_rejects_bad_arguments() -> None:
    model, tokens = _model(), _tokens(100)
    with pytest.raises(
        TypeError, match="model must be a torch.nn.Module or a NumPy model"
    ):
        training.evaluate("model", tokens)
    with pytest.raises(ValueError, match="max_batches is required with seed"):
        training.evaluate(model, tokens, seq_len=8, seed=0)
    with pytest.raises(ValueError, match="tokens must hold at least 17 tokens"):
        training.evaluate(model, tokens[:10], seq_len=16)
    with pytest.raises(ValueError, match=r"tokens must lie in \[0, 31\]"):
        training.evaluate(model, tokens + 40, seq_len=16)
    with pytest.raises(ValueError, match=r"seq_len must be an int in \[1, 24\]"):
        training.evaluate(model, tokens, seq_len=30)


def test_model_limits() -> None:
    assert training.model_limits(_model()) == (32, 24)
    assert training.model_limits(nn.Linear(2, 2)) == (None, None)


# --------------------------------------------------------------------------------------
# the progress-bar policy
# --------------------------------------------------------------------------------------


def test_progress_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    assert progress.progress_enabled() is False  # under pytest
    assert (
        progress.progress_enabled(True) is True
        and progress.progress_enabled(False) is False
    )
    monkeypatch.delenv("PYTEST_CURRENT_TEST", raising=False)
    monkeypatch.setenv("EFFX_QUIET", "1")
    assert progress.progress_enabled() is False
    monkeypatch.delenv("EFFX_QUIET")

    class _Tty:
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr("sys.stderr", _Tty())
    assert progress.progress_enabled() is True  # a terminal
    with pytest.raises(TypeError, match="enabled must be a bool"):
        progress.progress_enabled("yes")


def test_progress_bar_iterates_and_counts_when_disabled() -> None:
    assert list(progress.progress_bar(range(3), desc="x")) == [0, 1, 2]
    with progress.progress_bar(total=2.5, unit="s") as bar:
        bar.update(1.0)
        bar.set_postfix(loss="1.0", refresh=False)
    with pytest.raises(ValueError, match="give an iterable or a total"):
        progress.progress_bar()
    with pytest.raises(ValueError, match="total must be >= 0.0"):
        progress.progress_bar(total=-1.0)
    with pytest.raises(TypeError, match="iterable must be an iterable"):
        progress.progress_bar(3)
