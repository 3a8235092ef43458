"""Checkers for notebook 03.2's exercises (gradual magnitude pruning).

* ``cubic_sparsity(step, *, s_init, s_final, t0, n_steps, dt) -> float``: Zhu & Gupta's
  schedule ``s_t = s_f + (s_i - s_f) (1 - (t - t0) / (n dt))^3``, read at the last
  pruning step ``t0 + k dt <= step`` (constant in between), ``s_i`` before ``t0`` and
  ``s_f`` from ``t0 + n dt`` on, as :func:`effx_lab.prune.schedule.cubic_sparsity`; the
  notebook's live run of gradual magnitude pruning follows the student's schedule.
* ``matched_width(d_large, sparsity, *, n_layers, n_heads, max_len) -> int``: the width
  ``d`` (a multiple of ``n_heads``) of a dense :class:`effx_lab.models.lm.LM` (byte
  vocabulary of 256, tied output head, FFN of width ``4 d``, ``n_layers`` layers, a
  position table of ``max_len``) whose parameter count is nearest (the smaller on a
  tie) to the non-zero count of the same model at width ``d_large`` with the fraction
  ``sparsity`` of its prunable weights (the ``w*`` matrices) pruned: every parameter
  counted, as :func:`effx_lab.prune.experiments.matching_width` sizes the small dense
  model of the experiment the notebook reads.

The schedule is compared with ``rtol=1e-9`` (the right answers differ by rounding only;
the classic wrong ones by far more); the width exactly, as an ``int``.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np

from effx_lab.check import Case, CheckResult, Mistake, check_with_hints, checker, named

from effx_lab.models.lm import LM, LMSpec

from ..experiments import matching_width
from ..models import prunable_weights
from ..schedule import cubic_sparsity

__all__ = ["check_cubic_sparsity", "check_matched_width"]


# =========================================================================== cubic schedule
@named("cubic_sparsity")
def _cubic_reference(step, *, s_init, s_final, t0, n_steps, dt):
    return cubic_sparsity(
        step, s_init=s_init, s_final=s_final, t0=t0, n_steps=n_steps, dt=dt
    )


def _cubic(
    step: int,
    s_init: float,
    s_final: float,
    t0: int,
    n_steps: int,
    dt: int,
    *,
    power: int = 3,
    form: str = "right",
    steps_of: str | None = "floor",
    span: str = "n dt",
    clamp_low: bool = True,
    clamp_high: bool = True,
) -> float:
    """The schedule as students write it, one knob per classic mistake.

    The defaults give the right schedule. ``steps_of``: how ``t - t0`` becomes a
    pruning step (``"floor"``, ``"round"``, ``None``: not at all); ``span``: what the
    progress is divided by (``"n dt"``, ``"n"``; ``"k / (n dt)"`` divides the count of
    pruning steps by ``n dt``).
    """
    t = step - t0
    if span == "k / (n dt)":
        frac = math.floor(t / dt) / (n_steps * dt)
    else:
        if steps_of == "floor":
            t = math.floor(t / dt) * dt
        elif steps_of == "round":
            t = round(t / dt) * dt
        frac = t / (n_steps * dt if span == "n dt" else n_steps)
    if clamp_low:
        frac = max(frac, 0.0)
    if clamp_high:
        frac = min(frac, 1.0)
    if form == "swapped":  # s_i and s_f exchanged
        return s_init + (s_final - s_init) * (1.0 - frac) ** power
    if form == "progress cubed":  # the cube on the progress, not on 1 - progress
        return s_final + (s_init - s_final) * frac**power
    return s_final + (s_init - s_final) * (1.0 - frac) ** power


def _mistake(**knobs: Any) -> Callable[..., float]:
    def wrong(step, *, s_init, s_final, t0, n_steps, dt):
        return _cubic(step, s_init, s_final, t0, n_steps, dt, **knobs)

    return wrong


_CUBIC_MISTAKES = [
    Mistake(
        _mistake(power=1),
        "that is a linear ramp: Zhu & Gupta cube the part of the schedule still "
        "ahead, (1 - (t - t0) / (n dt))^3, so the sparsity rises fast at first and "
        "slowly near s_f.",
    ),
    Mistake(
        _mistake(form="progress cubed"),
        "the cube belongs on 1 - (t - t0) / (n dt), the part of the schedule still "
        "ahead, not on (t - t0) / (n dt): yours gives s_f at t = t0 and s_i at the end.",
    ),
    Mistake(
        _mistake(form="swapped"),
        "s_i and s_f are swapped: s_t = s_f + (s_i - s_f) (1 - ...)^3 is s_i at t0 and "
        "s_f at the end; yours starts at s_f.",
    ),
    Mistake(
        _mistake(clamp_low=False),
        "before t0 nothing is pruned yet: return s_i there (clamp the progress "
        "(t - t0) / (n dt) at 0; the formula alone falls below s_i, even below 0).",
    ),
    Mistake(
        _mistake(clamp_high=False),
        "after the last pruning step t0 + n dt the sparsity stays s_f (clamp the "
        "progress at 1: the cube of a negative number takes the formula past s_f).",
    ),
    Mistake(
        _mistake(steps_of=None),
        "the masks change only every dt steps: between two pruning steps the sparsity "
        "is that of the last pruning step t0 + k dt <= t, with k = (t - t0) // dt.",
    ),
    Mistake(
        _mistake(steps_of="round"),
        "take the last pruning step already reached, k = (t - t0) // dt (floor), not "
        "the nearest one (round): the sparsity never runs ahead of the step.",
    ),
    Mistake(
        _mistake(steps_of=None, span="n"),
        "the schedule spans n pruning steps dt apart, n dt training steps: divide "
        "t - t0 by n dt, not by n.",
    ),
    Mistake(
        _mistake(span="k / (n dt)"),
        "k = (t - t0) // dt already counts pruning steps: the progress is k / n, not "
        "k / (n dt).",
    ),
]


def _schedule_case(label: str, step: int, s_i: float, s_f: float, t0: int, n: int,
                   dt: int) -> Case:  # fmt: skip
    kwargs = dict(s_init=s_i, s_final=s_f, t0=t0, n_steps=n, dt=dt)
    return Case(label, (step,), kwargs)


def _cubic_cases(rng: np.random.Generator) -> list[Case]:
    c = _schedule_case
    cases = [  # the first cases tell the mistakes apart
        c("mid-schedule: step 3 of n = 10, dt = 1, 0 -> 0.9", 3, 0.0, 0.9, 0, 10, 1),
        c("between pruning steps: step 47, every dt = 10 steps", 47, 0.0, 0.8, 0, 10, 10),
        c("before the start: step 5, t0 = 20", 5, 0.0, 0.9, 20, 5, 4),
        c("after the end: step 200, t0 + n dt = 60", 200, 0.0, 0.9, 20, 10, 4),
        c("the start itself: step = t0 = 20, s_i = 0.1", 20, 0.1, 0.9, 20, 10, 4),
        c("the last pruning step: step = t0 + n dt = 60", 60, 0.1, 0.9, 20, 10, 4),
        c("just before the last pruning step: step 59", 59, 0.1, 0.9, 20, 10, 4),
        c("s_i > 0: 0.5 -> 0.95, step 130, t0 = 100, dt = 5", 130, 0.5, 0.95, 100, 8, 5),
        c("one pruning step: n = 1, step 14 of t0 = 10, dt = 5", 14, 0.0, 0.75, 10, 1, 5),
        c("one pruning step: n = 1, step 15 of t0 = 10, dt = 5", 15, 0.0, 0.75, 10, 1, 5),
        c("no pruning asked: s_i = s_f = 0.5", 33, 0.5, 0.5, 10, 4, 10),
        c("step 0, t0 = 0: the schedule's first value", 0, 0.0, 0.9, 0, 10, 3),
        c("this notebook's run: step 100, t0 = 40, n = 8, dt = 20", 100, 0.0, 0.95, 40, 8,
          20),
    ]  # fmt: skip
    for i in range(6):
        s_i = float(rng.uniform(0.0, 0.5))
        s_f = float(rng.uniform(s_i, 0.99))
        t0, n = int(rng.integers(0, 100)), int(rng.integers(1, 30))
        dt = int(rng.integers(1, 50))
        step = int(rng.integers(0, t0 + n * dt + 100))
        cases.append(
            c(f"random draw {i + 1}: step {step}, t0 = {t0}, n = {n}, dt = {dt}",
              step, s_i, s_f, t0, n, dt)
        )  # fmt: skip
    return cases


@checker(reference=_cubic_reference)
def check_cubic_sparsity(student_fn: Any) -> CheckResult:
    """Check ``cubic_sparsity(step, *, s_init, s_final, t0, n_steps, dt)`` (rtol 1e-9)."""
    return check_with_hints(
        student_fn, _cubic_reference, _cubic_cases, _CUBIC_MISTAKES,
        name="cubic_sparsity", rtol=1e-9, atol=1e-12,
    )  # fmt: skip


# =========================================================================== matched width
@named("matched_width")
def _width_reference(d_large, sparsity, *, n_layers, n_heads, max_len):
    spec = LMSpec(
        d_model=d_large, n_layers=n_layers, max_len=max_len,
        mixer_options={"n_heads": n_heads},
    )  # fmt: skip
    large = LM(spec, seed=0)
    prunable = sum(p.numel() for p in prunable_weights(large).values())
    target = large.num_params() - sparsity * prunable
    cfg = {"n_layers": n_layers, "n_heads": n_heads, "seq_len": max_len}
    return matching_width(round(target), cfg)


def _count(d: int, n_layers: int, max_len: int, count: str) -> int:
    """Weights of a dense LM of width ``d`` as students count them (``count``)."""
    layers = n_layers * 12 * d * d  # W_q, W_k, W_v, W_o (d x d), W_1, W_2 (d x 4d)
    if count == "prunable":
        return layers
    small = n_layers * 13 * d + 2 * d  # biases (9 d), two LayerNorms (4 d); final LN
    if count == "no biases or norms":
        return layers + (256 + max_len) * d
    if count == "no positions":
        return layers + small + 256 * d
    if count == "untied head":
        return layers + small + (2 * 256 + max_len) * d
    return layers + small + (256 + max_len) * d  # "all"


def _width(
    d_large: int,
    sparsity: float,
    n_layers: int,
    n_heads: int,
    max_len: int,
    *,
    count: str = "all",
    pruned: str = "prunable",
    step: int | None = None,
    rule: str = "nearest",
) -> int:
    """The width as students compute it, one knob per classic mistake (the defaults
    give the right one). ``pruned="all"``: the sparsity applied to every parameter;
    ``step``: the widths tried (default ``n_heads``); ``rule``: ``"nearest"`` (ties to
    the smaller) or ``"floor"`` (the largest not above the target)."""
    step = n_heads if step is None else step
    big = _count(d_large, n_layers, max_len, count)
    if pruned == "all":
        target = (1.0 - sparsity) * big
    else:
        target = big - sparsity * n_layers * 12 * d_large * d_large
    best, d = step, step
    while True:
        n = _count(d, n_layers, max_len, count)
        if rule == "floor":
            if n > target:
                return best
            best = d
        else:
            if abs(n - target) < abs(_count(best, n_layers, max_len, count) - target):
                best = d
            if n > target:
                return best
        d += step


def _width_mistake(**knobs: Any) -> Callable[..., int]:
    def wrong(d_large, sparsity, *, n_layers, n_heads, max_len):
        return _width(d_large, sparsity, n_layers, n_heads, max_len, **knobs)

    return wrong


def _linear_width(d_large, sparsity, *, n_layers, n_heads, max_len):
    return max(n_heads, n_heads * round(d_large * (1.0 - sparsity) / n_heads))


_WIDTH_MISTAKES = [  # the first: it agrees with the right answer on the first case
    Mistake(
        _width_mistake(count="no biases or norms"),
        "count the biases (b_q, b_k, b_v, b_o, b_2: d each, b_1: 4d) and the "
        "LayerNorms' gains and shifts (2 per layer and the final one, d each).",
    ),
    Mistake(
        _linear_width,
        "the weights of a layer grow as d^2 (W_q, ..., W_2 are d x d and d x 4d), so "
        "keeping a fraction 1 - s of them does not shrink the width by 1 - s: solve "
        "the count for d.",
    ),
    Mistake(
        _width_mistake(count="prunable"),
        "you matched the pruned matrices only (12 L d^2 against (1 - s) 12 L D^2). "
        "Count every parameter, as the experiment does: the embeddings, biases and "
        "LayerNorms are not pruned, so the large model keeps all of them and the "
        "small one has fewer.",
    ),
    Mistake(
        _width_mistake(pruned="all"),
        "only the prunable matrices lose the fraction s; the embeddings, biases and "
        "LayerNorms of the large model stay (its non-zeros: all parameters - s x its "
        "prunable ones).",
    ),
    Mistake(
        _width_mistake(count="no positions"),
        "the position table (max_len x d) is a parameter too, in both models.",
    ),
    Mistake(
        _width_mistake(count="untied head"),
        "the output head is tied to the token embedding (logits = h @ tok_emb^T): "
        "count the 256 x d table once.",
    ),
    Mistake(
        _width_mistake(step=1),
        "the width must be a multiple of n_heads (each head gets d / n_heads "
        "dimensions): try d = n_heads, 2 n_heads, ...",
    ),
    Mistake(
        _width_mistake(rule="floor"),
        "take the width whose count is nearest the target (the smaller on a tie), not "
        "the largest one that stays below it.",
    ),
]


def _width_case(label: str, d: int, s: float, layers: int, heads: int,
                max_len: int) -> Case:  # fmt: skip
    return Case(label, (d, s), dict(n_layers=layers, n_heads=heads, max_len=max_len))


def _width_cases(rng: np.random.Generator) -> list[Case]:
    c = _width_case
    cases = [  # the first two cases tell the mistakes apart
        c("3 layers: D = 64, s = 0.8, 2 heads, max_len 256", 64, 0.8, 3, 2, 256),
        c("the experiment: D = 96, s = 0.75, 2 layers, 4 heads, max_len 64", 96,
          0.75, 2, 4, 64),
        c("the experiment at s = 0.9", 96, 0.9, 2, 4, 64),
        c("long positions: D = 96, s = 0.8, max_len 512", 96, 0.8, 3, 4, 512),
        c("deep: D = 128, s = 0.75, 8 layers", 128, 0.75, 8, 4, 64),
        c("one head: D = 40, s = 0.5, 1 layer", 40, 0.5, 1, 1, 16),
        c("eight heads: D = 256, s = 0.9, 4 layers", 256, 0.9, 4, 8, 128),
        c("nothing pruned: s = 0", 64, 0.0, 2, 4, 64),
        c("very sparse: D = 64, s = 0.98, 1 layer, 2 heads", 64, 0.98, 1, 2, 32),
    ]  # fmt: skip
    for i in range(5):
        heads = int(rng.choice([1, 2, 4, 8]))
        d = heads * int(rng.integers(4, 160 // heads + 4))
        s = float(np.round(rng.uniform(0.3, 0.95), 3))
        layers, max_len = int(rng.integers(1, 5)), int(rng.choice([16, 64, 128, 256]))
        cases.append(
            c(f"random draw {i + 1}: D = {d}, s = {s}, {layers} layers, {heads} heads",
              d, s, layers, heads, max_len)
        )  # fmt: skip
    return cases


@checker(reference=_width_reference)
def check_matched_width(student_fn: Any) -> CheckResult:
    """Check ``matched_width(d_large, sparsity, *, n_layers, n_heads, max_len)``
    (exact ``int``)."""
    return check_with_hints(
        student_fn, _width_reference, _width_cases, _WIDTH_MISTAKES,
        name="matched_width", rtol=0.0, atol=0.0, exact=True,
    )  # fmt: skip
