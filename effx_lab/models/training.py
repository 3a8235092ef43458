"""The course's one training loop, its learning-rate schedule, and evaluation (mean
loss, perplexity).

Every chapter that trains a language model uses :func:`train`: TinyLM's checkpoint
(:func:`effx_lab.models.train.train_tinylm`), chapter 2's quantization-aware training
(:func:`effx_lab.quant.qat.qat_finetune`), chapter 7's FLASH experiments
(:func:`effx_lab.flash.train.train_lm`), and the pruning, sparsity and
mixture-of-experts chapters. It works with any ``torch.nn.Module`` that maps int64
tokens ``[B, T]`` to logits ``[B, T, V]`` (TinyLM, :class:`effx_lab.models.lm.LM` and
its chapter-7 configurations), and has three extension points:

* ``loss_fn(model, x, y)``: the loss of one batch (default :func:`next_token_loss`, the
  mean next-token cross-entropy). It returns a scalar tensor, or a dict with the scalar
  under ``"loss"`` and any other scalars to record each step (QAT returns ``{"loss",
  "ce", "kl"}`` for its distillation loss).
* ``after_step``: hooks called as ``hook(model, step)`` after every optimizer step
  (``step`` counts the steps done, from 1), under ``torch.no_grad()``: re-applying a
  pruning mask, SR-STE's decay of pruned weights, Top-KAST's regrowth. A hook that
  zeroes weights keeps them zero in the model the loop returns.
* ``eval_tokens``: a validation stream scored with :func:`evaluate` on fixed random
  windows at step 0, during training and at the end (the time spent there is not
  training time).

The budget is a number of ``steps`` (deterministic for a seed and a thread count: use it
for anything a notebook or a test asserts) or a ``time_budget_s`` of training time (the
number of steps then depends on the machine: use it for demonstrations, with printed
results or a device-dependent :class:`effx_lab.claims.Claim`, never for asserts). Loops longer than a
couple of seconds show a progress bar (:mod:`effx_lab.progress`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from effx_lab._validate import check_choice, check_float, check_int, describe
from effx_lab.data.pools import check_token_stream
from effx_lab.progress import progress_bar

__all__ = [
    "TrainHistory",
    "evaluate",
    "lr_schedule",
    "model_limits",
    "next_token_loss",
    "perplexity",
    "train",
]


# --------------------------------------------------------------------------------------
# the learning-rate schedule
# --------------------------------------------------------------------------------------


def _schedule(
    step: float, steps: float, lr: float, warmup: float, hold: float, min_ratio: float
) -> float:
    """:func:`lr_schedule` on validated arguments (the training loop calls it once per
    step)."""
    if warmup > 0 and step <= warmup:
        return lr * step / warmup
    if step < warmup + hold:
        return lr
    span = steps - warmup
    p = (step - warmup - hold) / span if span > 0 else 1.0
    p = min(max(p, 0.0), 1.0)
    return lr * (min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * p)))


def lr_schedule(
    step: float,
    steps: float,
    *,
    lr: float,
    warmup: float = 0.0,
    min_ratio: float = 0.0,
    hold: float = 0.0,
) -> float:
    """The learning rate when training has reached position ``step`` of ``steps``:
    linear warm-up, then cosine.

    ``step`` and ``steps`` share one unit: steps (the loop of :func:`train` passes
    ``step = k`` for the ``k``-th step, counted from 1: the position training reaches
    when that step is done), or seconds of a time budget (training time spent by the end
    of the step). With ``w = warmup`` and ``h = hold``::

        lr * step / w                              if step <= w     (warm-up from 0)
        lr                                         if step < w + h  (the peak, held)
        lr * (m + (1 - m) * (1 + cos(pi * p)) / 2) otherwise, with m = min_ratio and
                                 p = (step - w - h) / (steps - w), clipped to [0, 1]

    With ``hold=0`` (the default) the rate rises to ``lr`` at the end of the warm-up and
    decays to ``min_ratio * lr`` at the last step. ``hold`` delays the cosine: with
    ``hold=1`` the warm-up is read at the end of each step and the decay at its start,
    which is nanoGPT's ``get_lr`` (step ``k`` of ``warmup`` gets ``lr * k / warmup``,
    the first decay step gets ``lr`` again and the last stops one step short of
    ``min_ratio * lr``): the schedule TinyLM's checkpoint and QAT were tuned with.
    """
    steps = check_float("steps", steps, min_value=0.0, min_inclusive=False)
    step = check_float("step", step, min_value=0.0)
    lr = check_float("lr", lr, min_value=0.0)
    warmup = check_float("warmup", warmup, min_value=0.0, max_value=steps)
    hold = check_float("hold", hold, min_value=0.0)
    min_ratio = check_float("min_ratio", min_ratio, min_value=0.0, max_value=1.0)
    return _schedule(step, steps, lr, warmup, hold, min_ratio)


# --------------------------------------------------------------------------------------
# what a model accepts
# --------------------------------------------------------------------------------------


def model_limits(model: Any) -> tuple[int | None, int | None]:
    """``(vocab_size, max_len)`` a model declares, ``None`` for what it does not: read
    from ``model.config`` (``vocab_size``; ``max_seq_len`` for TinyLM, ``max_len`` for
    chapter 7's models) or ``model.spec`` (:class:`effx_lab.models.lm.LMSpec`). The
    loops use them to check tokens and ``seq_len`` up front.
    """
    vocab, max_len = None, None
    for holder in (getattr(model, "config", None), getattr(model, "spec", None)):
        if holder is None:
            continue
        vocab = vocab if vocab is not None else getattr(holder, "vocab_size", None)
        for name in ("max_seq_len", "max_len"):
            if max_len is None:
                max_len = getattr(holder, name, None)
    vocab = vocab if isinstance(vocab, int) and not isinstance(vocab, bool) else None
    max_len = (
        max_len if isinstance(max_len, int) and not isinstance(max_len, bool) else None
    )
    return vocab, max_len


def _first_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


# --------------------------------------------------------------------------------------
# evaluation
# --------------------------------------------------------------------------------------


def _check_eval_model(model: Any) -> str:
    if isinstance(model, nn.Module):
        return "torch"
    if callable(getattr(model, "forward", None)):
        return "numpy"
    raise TypeError(
        "model must be a torch.nn.Module or a NumPy model with a forward(tokens) "
        "method (such as effx_lab.models.reference.TinyLM), mapping int64 tokens "
        f"[B, T] to logits [B, T, V]; got {describe(model)}"
    )


def evaluate(
    model: Any,
    tokens: np.ndarray,
    *,
    seq_len: int = 128,
    batch_size: int = 16,
    max_batches: int | None = None,
    seed: int | None = None,
) -> float:
    """Mean next-token cross-entropy (nats/token) of ``model`` on a 1-D token stream.

    ``model``: a ``torch.nn.Module`` (run under ``torch.no_grad()`` in eval mode on its
    parameters' device; its train/eval mode is restored) or a NumPy model with
    ``forward`` (``effx_lab.models.reference.TinyLM``). Windows of ``seq_len`` inputs,
    each with its ``seq_len`` next-token targets, go through the model ``batch_size`` at
    a time:

    * ``seed=None``: consecutive non-overlapping windows from the start of the stream,
      each with an empty context (the loss at context lengths ``1..seq_len``);
      ``max_batches`` stops after that many batches (``None``: every whole window; a
      tail shorter than a window is left out). The result is the exact mean over every
      predicted token, summed in float64.
    * ``seed`` an int: ``max_batches`` (required) batches of random windows drawn by
      :func:`effx_lab.data.get_batch` with ``numpy.random.default_rng(seed)``; the
      result is the mean of the batches' mean losses. The same ``(tokens, seq_len,
      batch_size, max_batches, seed)`` gives the same windows for every model, so the
      numbers compare models (chapter 7's validation loss).
    """
    backend = _check_eval_model(model)
    vocab, max_len = model_limits(model)
    seq_len = check_int("seq_len", seq_len, min_value=1, max_value=max_len)
    batch_size = check_int("batch_size", batch_size, min_value=1)
    if max_batches is not None:
        max_batches = check_int("max_batches", max_batches, min_value=1)
    if seed is not None:
        seed = check_int("seed", seed, min_value=0)
        if max_batches is None:
            raise ValueError(
                "max_batches is required with seed (the number of batches of random "
                "windows), got None"
            )
    tokens = check_token_stream("tokens", tokens, min_len=seq_len + 1, vocab_size=vocab)
    if backend == "numpy":
        return _evaluate_numpy(model, tokens, seq_len, batch_size, max_batches, seed)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return _evaluate_torch(
                model, tokens, seq_len, batch_size, max_batches, seed
            )
    finally:
        model.train(was_training)


def _windows(
    tokens: np.ndarray,
    seq_len: int,
    batch_size: int,
    max_batches: int | None,
    seed: int | None,
) -> Iterable[tuple[np.ndarray, np.ndarray]]:
    from effx_lab.data import get_batch

    if seed is not None:
        rng = np.random.default_rng(seed)
        for _ in range(max_batches or 0):
            yield get_batch(tokens, batch_size, seq_len, rng)
        return
    n_windows = (tokens.shape[0] - 1) // seq_len
    if max_batches is not None:
        n_windows = min(n_windows, max_batches * batch_size)
    starts = np.arange(n_windows) * seq_len
    for b in range(0, n_windows, batch_size):
        window = tokens[
            starts[b : b + batch_size, None] + np.arange(seq_len + 1)[None, :]
        ].astype(np.int64)
        yield window[:, :-1], window[:, 1:]


def _evaluate_torch(
    model: nn.Module,
    tokens: np.ndarray,
    seq_len: int,
    batch_size: int,
    max_batches: int | None,
    seed: int | None,
) -> float:
    device = _first_device(model)
    total, count = 0.0, 0
    for x, y in _windows(tokens, seq_len, batch_size, max_batches, seed):
        logits = model(torch.from_numpy(x).to(device))
        y_t = torch.from_numpy(y).to(device).reshape(-1)
        if (
            seed is not None
        ):  # the mean of the batch means (the number chapter 7 compares)
            total += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y_t))
            count += 1
        else:  # every token, summed in float64
            total += float(
                F.cross_entropy(
                    logits.double().reshape(-1, logits.shape[-1]), y_t, reduction="sum"
                )
            )
            count += y.size
    return total / count


def _evaluate_numpy(
    model: Any,
    tokens: np.ndarray,
    seq_len: int,
    batch_size: int,
    max_batches: int | None,
    seed: int | None,
) -> float:
    total, count = 0.0, 0
    for x, y in _windows(tokens, seq_len, batch_size, max_batches, seed):
        logits = np.asarray(model.forward(x)).astype(np.float64)
        m = logits.max(axis=-1, keepdims=True)
        log_z = (m + np.log(np.exp(logits - m).sum(axis=-1, keepdims=True)))[..., 0]
        nll = log_z - np.take_along_axis(logits, y[..., None], axis=-1)[..., 0]
        if seed is not None:
            total += float(nll.mean())
            count += 1
        else:
            total += float(nll.sum())
            count += y.size
    return total / count


def perplexity(
    model: Any,
    tokens: np.ndarray,
    *,
    seq_len: int = 128,
    batch_size: int = 16,
    max_batches: int | None = None,
    seed: int | None = None,
) -> float:
    """``exp(evaluate(model, tokens, ...))``: the perplexity per token (see
    :func:`evaluate` for the windows).

    With the defaults (consecutive windows of 128, every window) this is the perplexity
    the course reports for TinyLM, a uniform model over ``V`` tokens scoring exactly
    ``V``."""
    return math.exp(
        evaluate(
            model,
            tokens,
            seq_len=seq_len,
            batch_size=batch_size,
            max_batches=max_batches,
            seed=seed,
        )
    )


# --------------------------------------------------------------------------------------
# the training loop
# --------------------------------------------------------------------------------------


def next_token_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The default ``loss_fn`` of :func:`train`: mean cross-entropy of every next token,
    ``model(x)`` against ``y`` (logits in float16/bfloat16 are upcast to float32
    first)."""
    logits = model(x)
    if (
        not isinstance(logits, torch.Tensor)
        or logits.ndim != 3
        or tuple(logits.shape[:2]) != tuple(x.shape)
    ):
        raise ValueError(
            "the model must return logits of shape [B, T, V] = "
            f"[{x.shape[0]}, {x.shape[1]}, V] for tokens of "
            f"shape {tuple(x.shape)}, got {describe(logits)}"
        )
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


@dataclass
class TrainHistory:
    """What :func:`train` recorded, one entry per optimizer step unless said otherwise.

    ``losses`` (the loss of each step, nats/token for the default loss), ``lrs`` (the
    learning rate it used), ``elapsed_s`` (training time after it, seconds of the loop's
    clock, evaluations excluded), ``metrics`` (the other scalars ``loss_fn`` returned,
    by name, one list each), and ``evals``: one dict per evaluation with ``step`` (0
    before training), ``elapsed_s``, ``train_loss`` (mean of the step losses since the
    previous evaluation, ``None`` at step 0) and ``loss`` (:func:`evaluate` on the fixed
    validation windows). ``settings`` holds the arguments of the run.
    """

    losses: list[float] = field(default_factory=list)
    lrs: list[float] = field(default_factory=list)
    elapsed_s: list[float] = field(default_factory=list)
    metrics: dict[str, list[float]] = field(default_factory=dict)
    evals: list[dict[str, Any]] = field(default_factory=list)
    tokens_per_step: int = 0
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def steps(self) -> int:
        """Number of optimizer steps taken."""
        return len(self.losses)

    @property
    def time_s(self) -> float:
        """Training time of the whole run (evaluations excluded)."""
        return self.elapsed_s[-1] if self.elapsed_s else 0.0

    @property
    def tokens(self) -> int:
        """Tokens the model was trained on (``steps * batch_size * seq_len``)."""
        return self.steps * self.tokens_per_step

    def to_dict(self) -> dict[str, Any]:
        """Everything as a JSON-serialisable dict."""
        return asdict(self) | {
            "steps": self.steps,
            "time_s": self.time_s,
            "tokens": self.tokens,
        }


def _check_hooks(after_step: Any) -> tuple[Callable[[nn.Module, int], Any], ...]:
    hooks = (after_step,) if callable(after_step) else after_step
    if isinstance(hooks, (str, bytes)) or not isinstance(hooks, Iterable):
        raise TypeError(
            "after_step must be a callable hook(model, step) or a sequence of them, "
            f"got {describe(after_step)}"
        )
    hooks = tuple(hooks)
    for i, hook in enumerate(hooks):
        if not callable(hook):
            raise TypeError(
                f"after_step[{i}] must be a callable hook(model, step), "
                f"got {describe(hook)}"
            )
    return hooks


def _check_betas(betas: Any) -> tuple[float, float]:
    if not isinstance(betas, Sequence) or isinstance(betas, str) or len(betas) != 2:
        raise TypeError(
            f"betas must be a pair of floats (beta1, beta2), got {describe(betas)}"
        )
    return (
        check_float(
            "betas[0]", betas[0], min_value=0.0, max_value=1.0, max_inclusive=False
        ),
        check_float(
            "betas[1]", betas[1], min_value=0.0, max_value=1.0, max_inclusive=False
        ),
    )


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: weight decay on matrices and embeddings (``ndim >= 2``) except the
    names the model's ``no_weight_decay()`` lists (timm's convention); biases and norm
    gains never. Order kept.
    """
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    if weight_decay == 0.0:
        return [{"params": [p for _, p in named], "weight_decay": 0.0}]
    skip_fn = getattr(model, "no_weight_decay", None)
    skip = set(skip_fn()) if callable(skip_fn) else set()
    decay = [p for name, p in named if p.ndim >= 2 and name not in skip]
    ids = {id(p) for p in decay}
    rest = [p for _, p in named if id(p) not in ids]
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": rest, "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


def _split_loss(out: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    if isinstance(out, torch.Tensor):
        loss, extras = out, {}
    elif isinstance(out, Mapping) and "loss" in out:
        loss, extras = out["loss"], {k: v for k, v in out.items() if k != "loss"}
    else:
        raise TypeError(
            "loss_fn must return a scalar tensor or a dict with a 'loss' tensor, "
            f"got {describe(out)}"
        )
    for name, value in (("loss", loss), *extras.items()):
        if not isinstance(value, torch.Tensor) or value.numel() != 1:
            raise TypeError(
                f"loss_fn's {name!r} must be a scalar torch tensor, "
                f"got {describe(value)}"
            )
    return loss, extras


def train(
    model: nn.Module,
    train_tokens: np.ndarray,
    *,
    steps: int | None = None,
    time_budget_s: float | None = None,
    schedule_start: int = 0,
    schedule_steps: int | None = None,
    batch_size: int = 16,
    seq_len: int = 128,
    lr: float = 3e-3,
    warmup: float = 0.0,
    hold: float = 0.0,
    min_ratio: float = 0.1,
    weight_decay: float = 0.1,
    betas: tuple[float, float] = (0.9, 0.95),
    grad_clip: float | None = 1.0,
    seed: int | np.random.Generator = 0,
    loss_fn: Callable[[nn.Module, torch.Tensor, torch.Tensor], Any] | None = None,
    after_step: (
        Callable[[nn.Module, int], Any] | Sequence[Callable[[nn.Module, int], Any]]
    ) = (),
    eval_tokens: np.ndarray | None = None,
    eval_every: int | None = None,
    eval_every_s: float | None = None,
    eval_batches: int = 4,
    eval_batch_size: int | None = None,
    eval_seed: int = 1234,
    clock: str = "wall",
    progress: bool | None = None,
    desc: str = "training",
) -> TrainHistory:
    """Train ``model`` in place with AdamW for ``steps`` optimizer steps or
    ``time_budget_s`` seconds of training time (exactly one of the two); returns a
    :class:`TrainHistory`.

    Each step draws ``batch_size`` random windows of ``seq_len`` tokens from the 1-D
    integer stream ``train_tokens`` (:func:`effx_lab.data.get_batch`, with
    ``numpy.random.default_rng(seed)``, or ``seed`` itself when it is a
    ``numpy.random.Generator``), moves them to the device of the model's parameters,
    computes ``loss_fn(model, x, y)`` (default :func:`next_token_loss`), and takes one
    AdamW step (Loshchilov & Hutter 2019; ``betas``; ``weight_decay`` on matrices and
    embeddings only, see below) after clipping the gradient norm to ``grad_clip``
    (``None``: no clipping). Every parameter with ``requires_grad`` is trained. The
    learning rate follows :func:`lr_schedule` (peak ``lr``, ``warmup``, ``hold``,
    ``min_ratio``), read at the position training reaches at the end of each step: ``k``
    for step ``k`` of ``steps``, and with a time budget the training time spent so far
    plus the duration of the previous step, in seconds (``warmup`` and ``hold`` are then
    seconds too). ``schedule_start`` and ``schedule_steps`` (step budgets only) let a
    run follow the schedule of a longer one: step ``k`` of this run reads position
    ``schedule_start + k`` of a schedule of ``schedule_steps`` steps (default ``steps``:
    the run's own schedule), which needs ``schedule_start + steps <= schedule_steps``.
    Learning-rate rewinding (Renda et al. 2020) retrains for ``steps`` with the rates of
    the last ``steps`` of the original run: ``schedule_start=T - steps,
    schedule_steps=T``. Then the ``after_step`` hooks run (``hook(model, step)``, under
    ``torch.no_grad()``). A non-finite loss raises ``FloatingPointError``.

    Weight decay goes to every trainable parameter with two or more dimensions, except
    the names listed by the model's ``no_weight_decay()`` method if it has one
    (per-dimension scales such as GAU's ``gamma``/``beta``).

    **Budgets.** With ``steps`` the run is deterministic for a given seed (and thread
    count): notebooks and tests assert only on such runs. With ``time_budget_s`` the run
    stops at the first step that would start after the budget is spent, so the number of
    steps depends on the machine: a time budget is for demonstrations (results printed
    or shown with a verdict, never asserted). ``clock="wall"`` times steps with
    :func:`time.perf_counter`, ``"cpu"`` with :func:`time.process_time` (the CPU time of
    this process: steadier on a busy machine with one thread).

    **Evaluation** (only with ``eval_tokens``): :func:`evaluate` with ``seed=eval_seed``
    on ``eval_batches`` batches of ``eval_batch_size`` (default ``batch_size``) windows
    of ``seq_len``, the same windows every time, at step 0, every ``eval_every`` steps
    (default ``steps // 8``) or every ``eval_every_s`` seconds of training time (default
    an eighth of the budget), and after the last step; its time is not training time.

    ``progress``: a progress bar with the time left
    (:func:`effx_lab.progress.progress_bar`; ``None`` shows it in notebooks and
    terminals, never under pytest; it appears after two seconds). The model is left in
    eval mode.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(
            "model must be a torch.nn.Module mapping tokens [B, T] to logits "
            f"[B, T, V], got {describe(model)}"
        )
    if (time_budget_s is None) == (steps is None):
        raise ValueError(
            "give exactly one of time_budget_s and steps, got "
            f"time_budget_s={time_budget_s!r} and steps={steps!r}"
        )
    vocab, max_len = model_limits(model)
    if steps is not None:
        steps = check_int("steps", steps, min_value=1)
        if eval_every_s is not None:
            raise ValueError(
                "eval_every_s goes with time_budget_s; with steps use eval_every, "
                f"got {eval_every_s!r}"
            )
        eval_every = (
            max(1, steps // 8)
            if eval_every is None
            else check_int("eval_every", eval_every, min_value=1)
        )
        schedule_start = check_int("schedule_start", schedule_start, min_value=0)
        if schedule_steps is None:
            schedule_steps = schedule_start + steps
            if schedule_start:
                raise ValueError(
                    "schedule_start needs schedule_steps (the length of the schedule "
                    f"it is a position in), got schedule_start={schedule_start} and "
                    "schedule_steps=None"
                )
        schedule_steps = check_int("schedule_steps", schedule_steps, min_value=1)
        if schedule_start + steps > schedule_steps:
            raise ValueError(
                "schedule_start + steps must be <= schedule_steps (the run must end "
                f"inside the schedule), got schedule_start={schedule_start} + "
                f"steps={steps} > schedule_steps={schedule_steps}"
            )
        total: float = schedule_steps
    else:
        if schedule_start != 0 or schedule_steps is not None:
            raise ValueError(
                "schedule_start and schedule_steps go with steps, not with "
                f"time_budget_s, got schedule_start={schedule_start!r} and "
                f"schedule_steps={schedule_steps!r}"
            )
        time_budget_s = check_float(
            "time_budget_s", time_budget_s, min_value=0.0, min_inclusive=False
        )
        if eval_every is not None:
            raise ValueError(
                "eval_every goes with steps; with time_budget_s use eval_every_s, "
                f"got {eval_every!r}"
            )
        eval_every_s = (
            time_budget_s / 8
            if eval_every_s is None
            else check_float(
                "eval_every_s", eval_every_s, min_value=0.0, min_inclusive=False
            )
        )
        total = time_budget_s
    batch_size = check_int("batch_size", batch_size, min_value=1)
    seq_len = check_int("seq_len", seq_len, min_value=1, max_value=max_len)
    lr = check_float("lr", lr, min_value=0.0, min_inclusive=False)
    warmup = check_float("warmup", warmup, min_value=0.0, max_value=total)
    hold = check_float("hold", hold, min_value=0.0)
    min_ratio = check_float("min_ratio", min_ratio, min_value=0.0, max_value=1.0)
    weight_decay = check_float("weight_decay", weight_decay, min_value=0.0)
    betas = _check_betas(betas)
    if grad_clip is not None:
        grad_clip = check_float(
            "grad_clip", grad_clip, min_value=0.0, min_inclusive=False
        )
    if isinstance(seed, np.random.Generator):
        rng = seed
    else:
        rng = np.random.default_rng(check_int("seed", seed, min_value=0))
    if loss_fn is None:
        loss_fn = next_token_loss
    elif not callable(loss_fn):
        raise TypeError(
            "loss_fn must be a callable loss_fn(model, x, y) or None, "
            f"got {describe(loss_fn)}"
        )
    hooks = _check_hooks(after_step)
    eval_batches = check_int("eval_batches", eval_batches, min_value=1)
    eval_batch_size = (
        batch_size
        if eval_batch_size is None
        else check_int("eval_batch_size", eval_batch_size, min_value=1)
    )
    eval_seed = check_int("eval_seed", eval_seed, min_value=0)
    clock = check_choice("clock", clock, ("wall", "cpu"))
    if not isinstance(desc, str):
        raise TypeError(f"desc must be a str, got {describe(desc)}")
    tokens = check_token_stream(
        "train_tokens", train_tokens, min_len=seq_len + 1, vocab_size=vocab
    )
    if eval_tokens is not None:
        eval_tokens = check_token_stream(
            "eval_tokens", eval_tokens, min_len=seq_len + 1, vocab_size=vocab
        )
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("model has no trainable parameter (requires_grad=True)")

    from effx_lab.data import get_batch

    timer = time.perf_counter if clock == "wall" else time.process_time
    device = params[0].device
    opt = torch.optim.AdamW(_param_groups(model, weight_decay), lr=lr, betas=betas)
    history = TrainHistory(tokens_per_step=batch_size * seq_len)
    history.settings = dict(
        steps=steps, time_budget_s=time_budget_s, schedule_start=schedule_start,
        schedule_steps=schedule_steps, batch_size=batch_size,
        seq_len=seq_len, lr=lr, warmup=warmup, hold=hold, min_ratio=min_ratio,
        weight_decay=weight_decay, betas=betas, grad_clip=grad_clip,
        eval_batches=eval_batches, eval_batch_size=eval_batch_size, eval_seed=eval_seed,
        clock=clock,
    )  # fmt: skip

    def run_eval() -> float:
        return evaluate(
            model, eval_tokens, seq_len=seq_len, batch_size=eval_batch_size,
            max_batches=eval_batches, seed=eval_seed,
        )  # fmt: skip

    if eval_tokens is not None:
        history.evals.append(
            {"step": 0, "elapsed_s": 0.0, "train_loss": None, "loss": run_eval()}
        )
    elapsed, step, last_step_s = 0.0, 0, 0.0
    running, n_running = 0.0, 0
    next_eval_s = eval_every_s
    bar = progress_bar(
        total=steps if steps is not None else total,
        desc=desc,
        enabled=progress,
        unit="step" if steps is not None else "s",
    )
    model.train()
    try:
        while True:
            if steps is not None:
                if step >= steps:
                    break
                position: float = schedule_start + step + 1
            else:
                if elapsed >= time_budget_s:
                    break
                position = elapsed + last_step_s  # where this step will end
            t0 = timer()
            step_lr = _schedule(position, total, lr, warmup, hold, min_ratio)
            for group in opt.param_groups:
                group["lr"] = step_lr
            x, y = get_batch(tokens, batch_size, seq_len, rng)
            x_t, y_t = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
            loss, extras = _split_loss(loss_fn(model, x_t, y_t))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(params, grad_clip)
            opt.step()
            step += 1
            if hooks:
                with torch.no_grad():
                    for hook in hooks:
                        hook(model, step)
            if extras:  # one read-back per step for all the recorded scalars
                scalars = [loss, *extras.values()]
                values = torch.stack([v.detach().double().reshape(()) for v in scalars])
                loss_value, *extra_values = values.tolist()
                for name, value in zip(extras, extra_values):
                    history.metrics.setdefault(name, []).append(value)
            else:
                loss_value = float(loss.detach())
            last_step_s = timer() - t0
            elapsed += last_step_s
            if not math.isfinite(loss_value):
                raise FloatingPointError(
                    f"training diverged at step {step} (loss {loss_value}); "
                    f"lower lr (got {lr})"
                )
            history.losses.append(loss_value)
            history.lrs.append(step_lr)
            history.elapsed_s.append(elapsed)
            running += loss_value
            n_running += 1
            bar.update(
                1 if steps is not None else min(last_step_s, max(0.0, total - bar.n))
            )
            bar.set_postfix(loss=f"{loss_value:.3f}", refresh=False)
            if eval_tokens is not None:
                due = (
                    step % eval_every == 0
                    if steps is not None
                    else elapsed >= next_eval_s
                )
                if due:
                    history.evals.append(
                        {
                            "step": step,
                            "elapsed_s": elapsed,
                            "train_loss": running / n_running,
                            "loss": run_eval(),
                        }
                    )
                    running, n_running = 0.0, 0
                    if steps is None:
                        while next_eval_s <= elapsed:
                            next_eval_s += eval_every_s
        if eval_tokens is not None and history.evals[-1]["step"] != step:
            history.evals.append(
                {
                    "step": step,
                    "elapsed_s": elapsed,
                    "train_loss": running / n_running,
                    "loss": run_eval(),
                }
            )
    finally:
        bar.close()
        model.eval()
    return history
