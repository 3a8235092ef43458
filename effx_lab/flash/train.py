"""Chapter 7's training runs, budgeted in steps or in training time: :func:`train_lm`
and :func:`evaluate_lm`.

The paper's central claim is about quality *per unit of training time* (Hua et al. 2022,
figure 1 and section 4): a faster layer gets more steps in the same time.
:func:`train_lm` therefore accepts a ``time_budget_s`` and counts only the time spent
training (evaluation stops the clock), and every model is evaluated on the same fixed
validation windows so that losses can be compared across models.

Both are chapter 7's settings of the course's one training loop and evaluation,
:func:`effx_lab.models.training.train` and :func:`effx_lab.models.training.evaluate`.
Data: the byte-level training and validation splits of CPython's help text
(:func:`effx_lab.data.token_splits`); training windows from
:func:`effx_lab.data.get_batch`.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from effx_lab._validate import check_choice, check_float, check_int, describe
from effx_lab.bench import limit_threads
from effx_lab.data.pools import check_token_stream, token_splits
from effx_lab.models.training import evaluate, train

from .models import LanguageModel, LMConfig, build_lm

__all__ = ["EVAL_SEED", "TrainResult", "evaluate_lm", "train_lm"]

#: seed of the validation windows used by :func:`train_lm` (the same windows for every model and run)
EVAL_SEED = 1234


@dataclass
class TrainResult:
    """What :func:`train_lm` measured.

    ``wall_s`` is the training time only (evaluations excluded); ``tokens_per_s`` is
    ``steps * batch_size * seq_len / wall_s``. ``history`` holds one dict per evaluation
    with ``step``, ``wall_s`` (training time so far), ``train_loss`` (mean training loss
    since the previous entry, ``None`` at step 0) and ``val_loss`` (nats/token on the
    fixed validation windows). ``model`` is the trained model (left out of
    :meth:`to_dict`).
    """

    config: dict[str, Any]
    steps: int
    wall_s: float
    tokens_per_s: float
    history: list[dict[str, Any]]
    final_val_loss: float
    final_val_ppl: float
    n_params: int = 0
    settings: dict[str, Any] = field(default_factory=dict)
    model: LanguageModel | None = field(default=None, repr=False, compare=False)

    @property
    def steps_per_s(self) -> float:
        """Training steps per second of training time."""
        return self.steps / self.wall_s if self.wall_s > 0 else float("nan")

    def to_dict(self) -> dict[str, Any]:
        """Everything but the model, as a JSON-serialisable dict."""
        out = asdict(self)
        out.pop("model")
        return out


def evaluate_lm(
    model: LanguageModel, tokens: np.ndarray, seq_len: int, n_batches: int, seed: int, *, batch_size: int = 16
) -> float:
    """Mean next-token cross-entropy (nats/token) of ``model`` on ``n_batches`` batches
    of random windows.

    :func:`effx_lab.models.training.evaluate` with ``seed``: the windows are drawn by
    :func:`effx_lab.data.get_batch` with ``numpy.random.default_rng(seed)``, so the same
    ``(tokens, seq_len, n_batches, seed, batch_size)`` gives the same windows for every
    model: the numbers are comparable across models. Runs without gradients and restores
    the model's train/eval mode.
    """
    if not isinstance(model, LanguageModel):
        raise TypeError(f"model must be a LanguageModel (effx_lab.flash.models.build_lm), got {describe(model)}")
    seq_len = check_int("seq_len", seq_len, min_value=1, max_value=model.config.max_len)
    n_batches = check_int("n_batches", n_batches, min_value=1)
    seed = check_int("seed", seed, min_value=0)
    vocab = model.config.vocab_size
    tokens = check_token_stream("tokens", tokens, min_len=seq_len + 1, vocab_size=vocab)
    return evaluate(
        model, tokens, seq_len=seq_len, batch_size=batch_size, max_batches=n_batches,
        seed=seed,
    )  # fmt: skip


def train_lm(
    config: LMConfig,
    *,
    time_budget_s: float | None = None,
    steps: int | None = None,
    batch_size: int = 16,
    seq_len: int = 256,
    lr: float = 3e-3,
    eval_every_s: float | None = None,
    eval_every: int | None = None,
    eval_batches: int = 4,
    eval_batch_size: int | None = None,
    seed: int = 0,
    threads: int | None = None,
    warmup: float = 0.05,
    min_lr_ratio: float = 0.1,
    weight_decay: float = 0.01,
    grad_clip: float = 1.0,
    train_tokens: np.ndarray | None = None,
    val_tokens: np.ndarray | None = None,
    clock: str = "wall",
    progress: bool | None = None,
) -> TrainResult:
    """Build ``build_lm(config, seed)`` and train it on next-token prediction for a
    number of ``steps`` or for ``time_budget_s`` seconds of training time (exactly one
    of the two).

    This is :func:`effx_lab.models.training.train` with chapter 7's settings. Each step
    draws ``batch_size`` windows of ``seq_len`` tokens from the training split
    (``get_batch`` with ``numpy.random.default_rng([seed, 1])``), minimises the mean
    cross-entropy with AdamW (betas (0.9, 0.95), ``weight_decay`` on weight matrices and
    embeddings only, not on GAU's ``gamma``/``beta``), clips the gradient norm to
    ``grad_clip``, and sets the learning rate from the *progress* of training: the
    fraction of ``steps`` done, or the fraction of the time budget spent, at the end of
    the step. The schedule is a linear warm-up over the first ``warmup`` fraction, then
    a cosine decay from ``lr`` to ``min_lr_ratio * lr``
    (:func:`effx_lab.models.training.lr_schedule`); with a time budget the run stops at
    the first step that starts after the budget is spent.

    Evaluation runs at step 0, every ``eval_every`` steps or every ``eval_every_s``
    seconds of training time (default: eight evaluations per run), and at the end; the
    clock is stopped meanwhile. It is :func:`evaluate_lm` on ``eval_batches`` batches of
    ``eval_batch_size`` (default ``batch_size``) validation windows of ``seq_len``
    tokens drawn with :data:`EVAL_SEED`, so every run with the same ``seq_len``,
    ``eval_batches`` and ``eval_batch_size`` is scored on the same windows, whatever the
    model. ``threads`` sets ``torch.set_num_threads`` for the run and restores it.
    ``train_tokens`` / ``val_tokens`` replace the corpus splits (1-D integer arrays).

    ``clock="wall"`` measures time with :func:`time.perf_counter`; ``clock="cpu"`` with
    :func:`time.process_time`, the CPU time of this process. With ``threads=1`` the two
    agree on an idle machine, but the CPU clock leaves out the time other processes hold
    the cores, so budgets stay more comparable on a busy machine (a book build running
    notebooks side by side); shared caches and memory bandwidth still slow each step
    down there. With more threads the CPU clock adds up every thread's time: use it with
    ``threads=1``. ``wall_s`` and the ``wall_s`` of the history are in seconds of the
    chosen clock. ``progress`` controls the progress bar
    (:func:`effx_lab.progress.progress_bar`: ``None`` shows it in notebooks and
    terminals only).

    With ``steps`` the run is deterministic for a given ``seed`` (and thread count):
    assert on those runs only. With a time budget the number of steps depends on the
    machine: such a run is a demonstration.
    """
    if not isinstance(config, LMConfig):
        raise TypeError(f"config must be an LMConfig, got {describe(config)}")
    if (time_budget_s is None) == (steps is None):
        raise ValueError(
            f"give exactly one of time_budget_s and steps, got time_budget_s={time_budget_s!r} and steps={steps!r}"
        )
    if steps is not None:
        steps = check_int("steps", steps, min_value=1)
        if eval_every_s is not None:
            raise ValueError(
                f"eval_every_s goes with time_budget_s; with steps use eval_every, got eval_every_s={eval_every_s!r}"
            )
        eval_every = max(1, steps // 8) if eval_every is None else check_int("eval_every", eval_every, min_value=1)
    else:
        time_budget_s = check_float("time_budget_s", time_budget_s, min_value=0.0, min_inclusive=False)
        if eval_every is not None:
            raise ValueError(
                f"eval_every goes with steps; with time_budget_s use eval_every_s, got eval_every={eval_every!r}"
            )
        eval_every_s = (
            time_budget_s / 8
            if eval_every_s is None
            else check_float("eval_every_s", eval_every_s, min_value=0.0, min_inclusive=False)
        )
    batch_size = check_int("batch_size", batch_size, min_value=1)
    seq_len = check_int("seq_len", seq_len, min_value=1, max_value=config.max_len)
    lr = check_float("lr", lr, min_value=0.0, min_inclusive=False)
    eval_batches = check_int("eval_batches", eval_batches, min_value=1)
    if eval_batch_size is None:
        eval_batch_size = batch_size
    eval_batch_size = check_int("eval_batch_size", eval_batch_size, min_value=1)
    seed = check_int("seed", seed, min_value=0)
    if threads is not None:
        threads = check_int("threads", threads, min_value=1)
    warmup = check_float("warmup", warmup, min_value=0.0, max_value=1.0, max_inclusive=False)
    min_lr_ratio = check_float("min_lr_ratio", min_lr_ratio, min_value=0.0, max_value=1.0)
    weight_decay = check_float("weight_decay", weight_decay, min_value=0.0)
    grad_clip = check_float("grad_clip", grad_clip, min_value=0.0, min_inclusive=False)
    clock = check_choice("clock", clock, ("wall", "cpu"))
    if train_tokens is None or val_tokens is None:
        corpus_train, corpus_val = token_splits()
        train_tokens = corpus_train if train_tokens is None else train_tokens
        val_tokens = corpus_val if val_tokens is None else val_tokens
    train_tokens, val_tokens = (
        check_token_stream(name, t, min_len=seq_len + 1, vocab_size=config.vocab_size)
        for name, t in (("train_tokens", train_tokens), ("val_tokens", val_tokens))
    )

    settings = {
        "time_budget_s": time_budget_s, "steps": steps, "batch_size": batch_size, "seq_len": seq_len, "lr": lr,
        "eval_batches": eval_batches, "eval_batch_size": eval_batch_size, "seed": seed,
        "threads": threads if threads is not None else torch.get_num_threads(),
        "warmup": warmup, "min_lr_ratio": min_lr_ratio, "weight_decay": weight_decay, "grad_clip": grad_clip,
        "clock": clock,
    }  # fmt: skip
    budget = steps if steps is not None else time_budget_s
    with limit_threads(threads, blas=False):
        model = build_lm(config, seed=seed)
        run = train(
            model, train_tokens, steps=steps, time_budget_s=time_budget_s,
            batch_size=batch_size, seq_len=seq_len, lr=lr, warmup=warmup * budget,
            min_ratio=min_lr_ratio, weight_decay=weight_decay, betas=(0.9, 0.95),
            grad_clip=grad_clip, seed=np.random.default_rng([seed, 1]),
            eval_tokens=val_tokens, eval_every=eval_every, eval_every_s=eval_every_s,
            eval_batches=eval_batches, eval_batch_size=eval_batch_size,
            eval_seed=EVAL_SEED, clock=clock, progress=progress,
            desc=f"training {config.kind}",
        )  # fmt: skip
    history = [
        {
            "step": e["step"],
            "wall_s": e["elapsed_s"],
            "train_loss": e["train_loss"],
            "val_loss": e["loss"],
        }
        for e in run.evals
    ]
    final = float(history[-1]["val_loss"])
    wall = run.time_s
    return TrainResult(
        config=config.to_dict(),
        steps=run.steps,
        wall_s=wall,
        tokens_per_s=run.tokens / wall if wall > 0 else float("nan"),
        history=history,
        final_val_loss=final,
        final_val_ppl=math.exp(final),
        n_params=model.num_params(),
        settings=settings,
        model=model,
    )
