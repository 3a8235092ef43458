"""A training loop for chapter 7's small language models, budgeted in steps or in wall time.

The paper's central claim is about quality *per unit of training time* (Hua et al. 2022, figure 1 and
section 4): a faster layer gets more steps in the same time. :func:`train_lm` therefore accepts a
``time_budget_s`` and counts only the time spent training (evaluation stops the clock), and every model
is evaluated on the same fixed validation windows so that losses can be compared across models.

Data: the byte-level training and validation splits of CPython's help text
(:func:`effx_lab.data.load_corpus_splits`, :class:`effx_lab.data.ByteTokenizer`); training windows from
:func:`effx_lab.data.get_batch`.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from effx_lab._validate import check_array, check_choice, check_float, check_int, describe

from .models import LanguageModel, LMConfig, build_lm

__all__ = ["EVAL_SEED", "TrainResult", "corpus_tokens", "evaluate_lm", "train_lm"]

#: seed of the validation windows used by :func:`train_lm` (the same windows for every model and run)
EVAL_SEED = 1234


@dataclass
class TrainResult:
    """What :func:`train_lm` measured.

    ``wall_s`` is the training time only (evaluations excluded); ``tokens_per_s`` is
    ``steps * batch_size * seq_len / wall_s``. ``history`` holds one dict per evaluation with ``step``,
    ``wall_s`` (training time so far), ``train_loss`` (mean training loss since the previous entry,
    ``None`` at step 0) and ``val_loss`` (nats/token on the fixed validation windows). ``model`` is the
    trained model (left out of :meth:`to_dict`).
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


@lru_cache(maxsize=4)
def _corpus_tokens(val_every: int) -> tuple[np.ndarray, np.ndarray]:
    from effx_lab.data import ByteTokenizer, load_corpus_splits

    tok = ByteTokenizer()
    train_text, val_text = load_corpus_splits(val_every)
    train, val = tok.encode(train_text), tok.encode(val_text)
    train.setflags(write=False)
    val.setflags(write=False)
    return train, val


def corpus_tokens(val_every: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """``(train_tokens, val_tokens)``: the byte-tokenised splits of :func:`effx_lab.data.load_corpus_splits`
    (1-D int64, read-only, cached)."""
    return _corpus_tokens(check_int("val_every", val_every, min_value=2))


def _check_stream(name: str, tokens: Any, vocab_size: int, min_len: int) -> np.ndarray:
    check_array(name, tokens, ndim=1, dtype_kind="iu")
    if tokens.shape[0] < min_len:
        raise ValueError(f"{name} must hold at least seq_len + 1 = {min_len} tokens, got {tokens.shape[0]}")
    lo, hi = int(tokens.min()), int(tokens.max())
    if lo < 0 or hi >= vocab_size:
        raise ValueError(
            f"{name} must lie in [0, {vocab_size - 1}] (the model's vocabulary), got values in [{lo}, {hi}]"
        )
    return tokens


def evaluate_lm(
    model: LanguageModel, tokens: np.ndarray, seq_len: int, n_batches: int, seed: int, *, batch_size: int = 16
) -> float:
    """Mean next-token cross-entropy (nats/token) of ``model`` on ``n_batches`` windows batches.

    The windows are drawn by :func:`effx_lab.data.get_batch` with ``numpy.random.default_rng(seed)``, so the
    same ``(tokens, seq_len, n_batches, seed, batch_size)`` gives the same windows for every model: the
    numbers are comparable across models. Runs without gradients and restores the model's train/eval mode.
    """
    from effx_lab.data import get_batch

    if not isinstance(model, LanguageModel):
        raise TypeError(f"model must be a LanguageModel (effx_lab.flash.models.build_lm), got {describe(model)}")
    seq_len = check_int("seq_len", seq_len, min_value=1, max_value=model.config.max_len)
    n_batches = check_int("n_batches", n_batches, min_value=1)
    seed = check_int("seed", seed, min_value=0)
    batch_size = check_int("batch_size", batch_size, min_value=1)
    tokens = _check_stream("tokens", tokens, model.config.vocab_size, seq_len + 1)
    rng = np.random.default_rng(seed)
    was_training = model.training
    model.eval()
    total = 0.0
    try:
        with torch.no_grad():
            for _ in range(n_batches):
                x, y = get_batch(tokens, batch_size, seq_len, rng)
                logits = model(torch.from_numpy(x))
                total += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), torch.from_numpy(y).reshape(-1)))
    finally:
        model.train(was_training)
    return total / n_batches


def _lr_factor(progress: float, warmup: float, min_ratio: float) -> float:
    """Linear warm-up over the first ``warmup`` fraction of training, then cosine decay to ``min_ratio``."""
    progress = min(max(progress, 0.0), 1.0)
    if warmup > 0 and progress < warmup:
        return progress / warmup
    p = (progress - warmup) / max(1e-12, 1.0 - warmup)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * p))


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
) -> TrainResult:
    """Build ``build_lm(config, seed)`` and train it on next-token prediction for a number of ``steps`` or
    for ``time_budget_s`` seconds of training time (exactly one of the two).

    Each step draws ``batch_size`` windows of ``seq_len`` tokens from the training split
    (``get_batch`` with ``numpy.random.default_rng([seed, 1])``), minimises the mean cross-entropy with
    AdamW (betas (0.9, 0.95), ``weight_decay`` on weight matrices and embeddings only), clips the gradient
    norm to ``grad_clip``, and sets the learning rate from the *progress* of training: the fraction of
    ``steps`` done, or the fraction of the time budget spent. The schedule is a linear warm-up over the
    first ``warmup`` fraction, then a cosine decay from ``lr`` to ``min_lr_ratio * lr``; with a time
    budget the run stops at the first step that starts after the budget is spent.

    Evaluation runs at step 0, every ``eval_every`` steps or every ``eval_every_s`` seconds of training
    time (default: eight evaluations per run), and at the end; the clock is stopped meanwhile. It is
    :func:`evaluate_lm` on ``eval_batches`` batches of ``eval_batch_size`` (default ``batch_size``)
    validation windows of ``seq_len`` tokens drawn with :data:`EVAL_SEED`, so every run with the same
    ``seq_len``, ``eval_batches`` and ``eval_batch_size`` is scored on the same windows, whatever the model.
    ``threads`` sets ``torch.set_num_threads`` for the run and restores it.
    ``train_tokens`` / ``val_tokens`` replace the corpus splits (1-D integer arrays).

    ``clock="wall"`` measures time with :func:`time.perf_counter`; ``clock="cpu"`` with
    :func:`time.process_time`, the CPU time of this process. With ``threads=1`` the two agree on an idle
    machine, but the CPU clock leaves out the time other processes hold the cores, so budgets stay more
    comparable on a busy machine (a book build running notebooks side by side); shared caches and memory
    bandwidth still slow each step down there. With more threads the
    CPU clock adds up every thread's time: use it with ``threads=1``. ``wall_s`` and the ``wall_s`` of the
    history are in seconds of the chosen clock.

    With ``steps`` the run is deterministic for a given ``seed`` (and thread count); with a time budget
    the number of steps depends on the machine.
    """
    from effx_lab.data import get_batch

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
    timer = time.perf_counter if clock == "wall" else time.process_time
    if train_tokens is None or val_tokens is None:
        corpus_train, corpus_val = corpus_tokens()
        train_tokens = corpus_train if train_tokens is None else train_tokens
        val_tokens = corpus_val if val_tokens is None else val_tokens
    train_tokens = _check_stream("train_tokens", train_tokens, config.vocab_size, seq_len + 1)
    val_tokens = _check_stream("val_tokens", val_tokens, config.vocab_size, seq_len + 1)

    settings = {
        "time_budget_s": time_budget_s, "steps": steps, "batch_size": batch_size, "seq_len": seq_len, "lr": lr,
        "eval_batches": eval_batches, "eval_batch_size": eval_batch_size, "seed": seed,
        "threads": threads if threads is not None else torch.get_num_threads(),
        "warmup": warmup, "min_lr_ratio": min_lr_ratio, "weight_decay": weight_decay, "grad_clip": grad_clip,
        "clock": clock,
    }  # fmt: skip
    old_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        model = build_lm(config, seed=seed)
        named = list(model.named_parameters())
        decay = [p for name, p in named if name in ("tok_emb", "pos_emb") or name.rsplit(".", 1)[-1].startswith("w")]
        decay_ids = {id(p) for p in decay}
        no_decay = [p for _, p in named if id(p) not in decay_ids]
        opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=lr,
            betas=(0.9, 0.95),
        )
        rng = np.random.default_rng([seed, 1])

        def evaluate() -> float:
            return evaluate_lm(model, val_tokens, seq_len, eval_batches, EVAL_SEED, batch_size=eval_batch_size)

        history: list[dict[str, Any]] = [{"step": 0, "wall_s": 0.0, "train_loss": None, "val_loss": evaluate()}]
        wall, step, last_step_s = 0.0, 0, 0.0
        running, n_running = 0.0, 0
        next_eval_s = eval_every_s
        model.train()
        while True:
            if steps is not None:
                if step >= steps:
                    break
                progress = (step + 1) / steps
            else:
                if wall >= time_budget_s:
                    break
                progress = (wall + last_step_s) / time_budget_s  # where this step will end
            t0 = timer()
            for group in opt.param_groups:
                group["lr"] = lr * _lr_factor(progress, warmup, min_lr_ratio)
            x, y = get_batch(train_tokens, batch_size, seq_len, rng)
            logits = model(torch.from_numpy(x))
            loss = F.cross_entropy(logits.reshape(-1, config.vocab_size), torch.from_numpy(y).reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            opt.step()
            loss_value = float(loss.detach())
            last_step_s = timer() - t0
            wall += last_step_s
            step += 1
            if not math.isfinite(loss_value):
                raise FloatingPointError(f"training diverged at step {step} (loss {loss_value}); lower lr (got {lr})")
            running += loss_value
            n_running += 1
            due = step % eval_every == 0 if steps is not None else wall >= next_eval_s
            if due:
                entry = {"step": step, "wall_s": wall, "train_loss": running / n_running, "val_loss": evaluate()}
                history.append(entry)
                running, n_running = 0.0, 0
                if steps is None:
                    while next_eval_s <= wall:
                        next_eval_s += eval_every_s
        if history[-1]["step"] != step:
            history.append({"step": step, "wall_s": wall, "train_loss": running / n_running, "val_loss": evaluate()})
        model.eval()
    finally:
        torch.set_num_threads(old_threads)
    final = float(history[-1]["val_loss"])
    return TrainResult(
        config=config.to_dict(),
        steps=step,
        wall_s=wall,
        tokens_per_s=step * batch_size * seq_len / wall if wall > 0 else float("nan"),
        history=history,
        final_val_loss=final,
        final_val_ppl=math.exp(final),
        n_params=model.num_params(),
        settings=settings,
        model=model,
    )
