"""Checkers for the exercises of notebook 02.7 (quantization-aware training).

Each ``check_<name>(student_fn)`` runs the student's function against the course's reference on fixed edge
cases and seeded random draws, prints a plain-words verdict and returns the :class:`effx_lab.check.CheckResult`.
When a wrong answer equals a classic mistake (no clipping mask, the mask on the unrounded value, the KL the wrong
way round, a forgotten ``T^2``...) the verdict ends with a ``hint:`` line naming it. What the student writes:

* ``ste_grad(x, grad_out, scale, qmin, qmax, zero_point=0) -> grad_x``: the clipped straight-through gradient
  of ``fake_quantize`` (Bengio et al. 2013) with fixed parameters: ``grad_out`` where the clip is inactive,
  ``qmin <= round(x / scale) + zero_point <= qmax`` (PyTorch's ``fake_quantize_per_tensor_affine``
  convention), and 0 where the value saturates. ``scale`` is a positive float or an array that broadcasts
  against ``x`` (``[out, 1]``: one scale per row), ``zero_point`` an int or an integer array of ``scale``'s
  shape. As :func:`effx_lab.quant.reference.ste_grad` (the reference, with a :class:`~effx_lab.quant.reference.QParams`
  built from the arguments).
* ``distillation_loss(student_logits, teacher_logits, temperature=1.0) -> float``: Hinton et al. (2015)'s
  distillation term (``T`` = ``temperature``) ``T^2 * mean over positions of KL(softmax(teacher / T) || softmax(student / T))``, the softmax over the
  last axis (the vocabulary), any number of leading axes (positions). As
  :func:`effx_lab.quant.qat.distillation_loss` with ``alpha=1`` (the loss of ``qat_finetune`` with ``distill=1``).

Inputs are float64 NumPy arrays except one float32 case per exercise (NumPy or torch answers are accepted).
``ste_grad`` answers are compared with ``rtol=1e-6`` (they are ``grad_out`` or 0); no case puts ``x / scale``
within ``0.2`` of a rounding tie at the edge of the grid, so float32 or float64 arithmetic and either rounding
convention give the same mask. ``distillation_loss`` answers are compared with ``rtol=1e-4`` and ``atol=1e-6``
(the reference computes in the input's precision: float32 for the float32 case, float64 otherwise).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from effx_lab.check import Case, CheckResult, Mistake, check_with_hints, checker, named

from .. import reference as R

__all__ = ["check_distillation_loss", "check_ste_grad"]

_STE_RTOL = 1e-6
_KD_RTOL = 1e-4
_KD_ATOL = 1e-6


# =========================================================================== ste_grad
def _grid(qmin: int, qmax: int) -> tuple[int, bool]:
    """``(bits, symmetric)`` of the integer range ``[qmin, qmax]`` (the two ranges of ``R.qrange``)."""
    for bits in range(2, 9):
        for symmetric in (True, False):
            if R.qrange(bits, symmetric) == (qmin, qmax):
                return bits, symmetric
    raise ValueError(f"[{qmin}, {qmax}] is not a symmetric or affine grid of 2..8 bits")


def _qparams(x: np.ndarray, scale: Any, qmin: int, qmax: int, zero_point: Any) -> R.QParams:
    """The :class:`R.QParams` of the exercise's arguments: per tensor (scalar ``scale``) or per index of the one
    axis where ``scale`` is not 1 (``"channel"`` granularity)."""
    bits, symmetric = _grid(int(qmin), int(qmax))
    s = np.asarray(scale, dtype=np.float64)
    if s.ndim == 0:
        s = s.reshape((1,) * x.ndim)
    wide = [i for i, n in enumerate(s.shape) if n != 1]
    axis = wide[0] if wide else 0
    zp = np.broadcast_to(np.asarray(zero_point, dtype=np.int32), s.shape).copy()
    return R.QParams(s, zp, bits, symmetric, "channel" if wide else "tensor", axis)


@named("ste_grad")
def _ste_grad_reference(x, grad_out, scale, qmin, qmax, zero_point=0):
    return R.ste_grad(x, grad_out, _qparams(x, scale, qmin, qmax, zero_point))


def _ste(x, grad_out, scale, qmin, qmax, zero_point=0, *, mask: str = "right", factor: str = "one"):
    """``ste_grad`` with one knob per classic mistake (defaults: the right answer).

    ``mask``: ``"none"`` (identity), ``"zero"`` (round's true derivative), ``"unrounded"`` (``x / s + z`` in
    range), ``"inverted"``, ``"strict"`` (``<`` instead of ``<=``), ``"no_zero_point"``; ``factor``: ``"scale"``
    or ``"inv_scale"`` (a chain-rule factor that does not belong there).
    """
    x = np.asarray(x, dtype=np.float64)
    g = np.asarray(grad_out, dtype=np.float64)
    s = np.asarray(scale, dtype=np.float64)
    z = np.asarray(zero_point, dtype=np.float64)
    v = np.round(x / s) + z
    if mask == "none":
        keep = np.ones(x.shape, dtype=bool)
    elif mask == "zero":
        keep = np.zeros(x.shape, dtype=bool)
    elif mask == "unrounded":
        u = x / s + z
        keep = (u >= qmin) & (u <= qmax)
    elif mask == "inverted":
        keep = (v < qmin) | (v > qmax)
    elif mask == "strict":
        keep = (v > qmin) & (v < qmax)
    elif mask == "no_zero_point":
        keep = (np.round(x / s) >= qmin) & (np.round(x / s) <= qmax)
    else:
        keep = (v >= qmin) & (v <= qmax)
    out = np.where(keep, g, 0.0)
    if factor == "scale":
        out = out * s
    elif factor == "inv_scale":
        out = out / s
    return out


def _when_affine(fn: Callable) -> Callable:
    """A mistake that only differs from the right answer when there is a zero point."""

    def wrong(x, grad_out, scale, qmin, qmax, zero_point=0):
        if np.all(np.asarray(zero_point) == 0):
            return None
        return fn(x, grad_out, scale, qmin, qmax, zero_point)

    return wrong


_STE_MISTAKES = [
    Mistake(
        lambda *a, **k: _ste(*a, **k, mask="none"),
        "that is the plain identity STE (the gradient passed through everywhere). The clipped STE multiplies "
        "it by the clip's derivative: 0 where round(x / scale) + zero_point falls outside [qmin, qmax] (the "
        "value saturates, and moving x a little does not move x_hat at all).",
    ),
    Mistake(
        lambda *a, **k: _ste(*a, **k, mask="zero"),
        "all zeros is the true derivative of round (flat almost everywhere): exactly the problem the STE "
        "solves. Treat round as the identity and keep only the clip's 0/1 derivative.",
    ),
    Mistake(
        lambda *a, **k: _ste(*a, **k, mask="unrounded"),
        "test the ROUNDED integer, qmin <= round(x / scale) + zero_point <= qmax (PyTorch's convention): a value "
        "up to half a step past the last mark still rounds onto the grid, the clip does not act on it, and "
        "its gradient passes.",
    ),
    Mistake(
        lambda *a, **k: _ste(*a, **k, mask="inverted"),
        "the mask is inverted: the gradient passes where the value is INSIDE the range (the clip is inactive) "
        "and is 0 where it saturates.",
    ),
    Mistake(
        lambda *a, **k: _ste(*a, **k, mask="strict"),
        "use <= at both ends: a value that rounds exactly to qmin or qmax is on the grid, not clipped, so its "
        "gradient passes.",
    ),
    Mistake(
        _when_affine(lambda *a, **k: _ste(*a, **k, mask="no_zero_point")),
        "add the zero point before comparing with [qmin, qmax]: the integer stored is round(x / scale) + "
        "zero_point (an affine grid runs from 0 to 2^b - 1, not around 0).",
    ),
    Mistake(
        lambda *a, **k: _ste(*a, **k, factor="scale"),
        "no scale factor: x_hat = (round(x / s) + z - z) * s, and with round treated as the identity the 1/s "
        "of x / s and the s of the dequantization cancel. Inside the range the gradient is grad_out itself.",
    ),
    Mistake(
        lambda *a, **k: _ste(*a, **k, factor="inv_scale"),
        "no 1 / scale factor: the 1/s of x / s and the s of the dequantization cancel, so inside the range the "
        "gradient is grad_out itself.",
    ),
]


def _ste_cases(rng: np.random.Generator) -> list[Case]:
    def beyond(shape: tuple[int, ...], scale: float, qmin: int, qmax: int, zp: int = 0) -> np.ndarray:
        """Values whose integer lands in [qmin - 3, qmax + 3], never within 0.2 of a tie at the edges."""
        u = rng.uniform(qmin - 3.0, qmax + 3.0, size=shape)
        frac = u - np.floor(u)
        u = np.where(np.abs(frac - 0.5) < 0.2, np.floor(u) + 0.25, u)  # keep away from .5 ties
        return (u - zp) * scale

    def grad(shape: tuple[int, ...]) -> np.ndarray:
        return rng.normal(size=shape)

    # the half step past each end: integers at qmax + 0.25 (rounds onto the grid: passes) and qmax + 0.75
    half = np.array([-7.75, -7.25, -7.0, -3.1, 0.0, 2.2, 7.0, 7.25, 7.75, 9.0]) * 0.1
    inside = rng.uniform(-0.9, 0.9, size=(4, 6))  # 4-bit symmetric, scale 0.2: every |x / s| < 4.5
    aff_x = beyond((5, 8), 0.05, 0, 15, 6)
    rows = np.array([[0.02], [0.1], [0.5]])
    row_x = np.concatenate([beyond((1, 9), float(s), -7, 7) for s in rows[:, 0]], axis=0)
    row_zp = np.array([[3], [8], [12]])
    row_ax = np.concatenate([beyond((1, 7), float(s), 0, 15, int(z)) for s, z in zip(rows[:, 0], row_zp[:, 0])])
    cases = [
        Case("3 bits symmetric: values beyond both ends", (beyond((6, 5), 0.1, -3, 3), grad((6, 5)), 0.1, -3, 3)),
        Case("half a step past the last mark: x / scale = +-7.25 rounds onto the grid, +-7.75 does not",
             (half, grad(half.shape), 0.1, -7, 7)),
        Case("everything inside: the mask is all ones", (inside, grad(inside.shape), 0.2, -7, 7)),
        Case("2 bits symmetric: the grid is -1, 0, 1", (beyond((12,), 0.5, -1, 1), grad((12,)), 0.5, -1, 1)),
        Case("8 bits symmetric", (beyond((3, 40), 0.01, -127, 127), grad((3, 40)), 0.01, -127, 127)),
        Case("4 bits affine: zero_point = 6", (aff_x, grad(aff_x.shape), 0.05, 0, 15), {"zero_point": 6}),
        Case("per-row scales [3, 1]", (row_x, grad(row_x.shape), rows, -7, 7)),
        Case("per-row scales and zero points, affine", (row_ax, grad(row_ax.shape), rows, 0, 15),
             {"zero_point": row_zp}),
        Case("3-D x [2, 3, 4], one scale", (beyond((2, 3, 4), 0.3, -7, 7), grad((2, 3, 4)), 0.3, -7, 7)),
        Case("float32: x and grad_out", (beyond((5, 6), 0.125, -7, 7).astype(np.float32),
                                         grad((5, 6)).astype(np.float32), 0.125, -7, 7)),
    ]
    for i in range(3):
        bits = int(rng.integers(2, 9))
        symmetric = bool(i != 1)
        qmin, qmax = R.qrange(bits, symmetric)
        zp = 0 if symmetric else int(rng.integers(0, qmax + 1))
        scale = float(rng.uniform(0.01, 1.0))
        shape = (int(rng.integers(1, 8)), int(rng.integers(1, 12)))
        kwargs = {} if symmetric else {"zero_point": zp}
        cases.append(Case(f"random draw {i + 1}: {bits} bits {'symmetric' if symmetric else 'affine'}, x {shape}",
                          (beyond(shape, scale, qmin, qmax, zp), grad(shape), scale, qmin, qmax), kwargs))
    return cases


@checker(reference=_ste_grad_reference)
def check_ste_grad(student_fn: Any) -> CheckResult:
    """Check ``ste_grad(x, grad_out, scale, qmin, qmax, zero_point=0) -> grad_x`` (the clipped STE)."""
    return check_with_hints(student_fn, _ste_grad_reference, _ste_cases, _STE_MISTAKES, name="ste_grad",
                            rtol=_STE_RTOL, atol=0.0)


# =========================================================================== distillation_loss
@named("distillation_loss")
def _distillation_loss_reference(student_logits, teacher_logits, temperature=1.0):
    import torch  # torch only when this exercise is checked

    from ..qat import distillation_loss

    s = torch.as_tensor(np.asarray(student_logits))
    t = torch.as_tensor(np.asarray(teacher_logits))
    return float(distillation_loss(s, t, float(temperature)))


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def _kd(student_logits, teacher_logits, temperature=1.0, *, factor: str = "T2", direction: str = "teacher",
        temp: str = "both", kind: str = "kl", reduce: str = "mean", axis: int = -1):
    """The distillation loss with one knob per classic mistake (defaults: the right answer).

    ``factor``: ``"T2"``, ``"none"``, ``"T"``, ``"inv_T2"``; ``direction="student"``: KL(student || teacher);
    ``temp``: ``"both"``, ``"none"`` (no division by T), ``"student"``, ``"teacher"`` (only one side);
    ``kind="soft_ce"``: the soft-target cross-entropy; ``reduce``: ``"mean"`` over positions, ``"sum"`` over
    positions, ``"all"`` (mean over positions and the vocabulary); ``axis=0``: softmax over the first axis.
    """
    s = np.asarray(student_logits, dtype=np.float64)
    t = np.asarray(teacher_logits, dtype=np.float64)
    T = float(temperature)
    s_div = T if temp in ("both", "student") else 1.0
    t_div = T if temp in ("both", "teacher") else 1.0
    if axis == 0:
        s, t = np.moveaxis(s, 0, -1), np.moveaxis(t, 0, -1)
    log_s, log_t = _log_softmax(s / s_div), _log_softmax(t / t_div)
    if direction == "student":
        log_s, log_t = log_t, log_s
    p_t = np.exp(log_t)
    per = -(p_t * log_s).sum(axis=-1) if kind == "soft_ce" else (p_t * (log_t - log_s)).sum(axis=-1)
    if reduce == "sum":
        value = per.sum()
    elif reduce == "all":
        value = per.mean() / s.shape[-1]
    else:
        value = per.mean()
    return float(value) * {"T2": T * T, "none": 1.0, "T": T, "inv_T2": 1.0 / (T * T)}[factor]


def _naive_kd(student_logits, teacher_logits, temperature=1.0):
    """The loss with softmax = exp / sum(exp) and no max subtracted: overflows (NaN) for logits / T > ~700."""
    def softmax(z: np.ndarray) -> np.ndarray:
        e = np.exp(z)
        return e / e.sum(axis=-1, keepdims=True)

    T = float(temperature)
    p_s = softmax(np.asarray(student_logits, dtype=np.float64) / T)
    p_t = softmax(np.asarray(teacher_logits, dtype=np.float64) / T)
    return T * T * float(np.mean((p_t * np.log(p_t / p_s)).sum(axis=-1)))


def _not_at_T1(fn: Callable) -> Callable:
    """A temperature mistake: identical to the right answer at T = 1, so only tried at other temperatures."""

    def wrong(student_logits, teacher_logits, temperature=1.0):
        return None if float(temperature) == 1.0 else fn(student_logits, teacher_logits, temperature)

    return wrong


_KD_MISTAKES = [
    Mistake(
        _not_at_T1(lambda s, t, temperature=1.0: _kd(s, t, temperature, factor="none")),
        "multiply the KL by T^2 (Hinton et al. 2015): the soft targets' gradients shrink like 1/T^2, and the "
        "factor keeps their size independent of the temperature, so T can change without retuning the rate.",
    ),
    Mistake(
        _not_at_T1(lambda s, t, temperature=1.0: _kd(s, t, temperature, factor="T")),
        "the factor is T^2, not T: the gradient of the softened KL shrinks like 1/T^2.",
    ),
    Mistake(
        _not_at_T1(lambda s, t, temperature=1.0: _kd(s, t, temperature, factor="inv_T2")),
        "MULTIPLY by T^2 (do not divide): the softened KL's gradient is about 1/T^2 too small, the factor "
        "restores it.",
    ),
    Mistake(
        lambda s, t, temperature=1.0: _kd(s, t, temperature, direction="student"),
        "the KL is the wrong way round: distillation uses KL(teacher || student) = sum p_teacher * (log "
        "p_teacher - log p_student), the teacher's distribution weighting the sum.",
    ),
    Mistake(
        _not_at_T1(lambda s, t, temperature=1.0: _kd(s, t, temperature, temp="none")),
        "soften both distributions with the temperature: softmax(logits / T), for the student and the teacher.",
    ),
    Mistake(
        _not_at_T1(lambda s, t, temperature=1.0: _kd(s, t, temperature, temp="student")),
        "divide the TEACHER's logits by T too: both distributions are softmax(logits / T).",
    ),
    Mistake(
        _not_at_T1(lambda s, t, temperature=1.0: _kd(s, t, temperature, temp="teacher")),
        "divide the STUDENT's logits by T too: both distributions are softmax(logits / T).",
    ),
    Mistake(
        lambda s, t, temperature=1.0: _kd(s, t, temperature, kind="soft_ce"),
        "that is the soft-target cross-entropy -sum p_teacher * log p_student. It has the same gradient, but "
        "it is larger than the KL by the teacher's entropy: subtract it (add sum p_teacher * log p_teacher), "
        "so that a student equal to the teacher scores 0.",
    ),
    Mistake(
        lambda s, t, temperature=1.0: (None if np.asarray(s).size == np.asarray(s).shape[-1]
                                      else _kd(s, t, temperature, reduce="sum")),
        "average over the positions (every axis but the last), do not sum: the loss should not grow with the "
        "batch size or the sequence length.",
    ),
    Mistake(
        lambda s, t, temperature=1.0: _kd(s, t, temperature, reduce="all"),
        "sum the KL over the vocabulary (the last axis) and average only over the positions: np.mean over "
        "everything also divides by the vocabulary size.",
    ),
    Mistake(
        lambda s, t, temperature=1.0: _kd(s, t, temperature, axis=0) if np.ndim(s) == 2 else None,
        "take the softmax over the LAST axis (the vocabulary), not the first: each position has its own "
        "distribution over the next token.",
    ),
    Mistake(
        _naive_kd,
        "exp(logits / T) overflows to inf for logits / T above about 709 (float64), and inf / inf is NaN. "
        "Compute log-softmax stably: z = logits / T; z - z.max(axis=-1, keepdims=True) - log(sum(exp(...))) "
        "(or scipy.special.log_softmax / torch.log_softmax).",
    ),
]


def _kd_cases(rng: np.random.Generator) -> list[Case]:
    def logits(shape: tuple[int, ...], spread: float = 2.0) -> np.ndarray:
        return rng.normal(0.0, spread, size=shape)

    def near(t: np.ndarray, noise: float = 0.5) -> np.ndarray:
        """A student close to the teacher, as in QAT."""
        return t + rng.normal(0.0, noise, size=t.shape)

    t1, t2, t3 = logits((6, 10)), logits((4, 7)), logits((2, 3, 12))
    same = logits((5, 8))
    big_t = logits((3, 9), spread=300.0)
    big_t[1, 4] = 1500.0  # exp(1500 / 1.5) overflows float64
    cases = [
        Case("T = 1: 6 positions, vocabulary 10", (near(t1), t1)),
        Case("T = 2: 4 positions, vocabulary 7", (near(t2), t2), {"temperature": 2.0}),
        Case("T = 4: a very soft teacher", (logits((5, 6)), logits((5, 6))), {"temperature": 4.0}),
        Case("T = 0.5: a sharper teacher", (logits((3, 5)), logits((3, 5))), {"temperature": 0.5}),
        Case("student = teacher: the loss is 0", (same.copy(), same), {"temperature": 2.0}),
        Case("3-D logits [batch 2, seq 3, vocab 12]: average over the 6 positions", (near(t3), t3)),
        Case("one position: logits [1, 9]", (logits((1, 9)), logits((1, 9)))),
        Case("1-D logits [vocab 6]: a single position", (logits((6,)), logits((6,)))),
        Case("large logits (about +-1000): exp overflows without a stable log-softmax", (near(big_t, 40.0), big_t),
             {"temperature": 1.5}),
        Case("float32 logits, T = 3", (logits((4, 16)).astype(np.float32), logits((4, 16)).astype(np.float32)),
             {"temperature": 3.0}),
    ]
    for i in range(3):
        shape = (int(rng.integers(2, 9)), int(rng.integers(3, 30)))
        temp = float(rng.choice([1.0, 1.5, 2.0, 5.0]))
        t = logits(shape, float(rng.uniform(0.5, 4.0)))
        cases.append(Case(f"random draw {i + 1}: logits {shape}, T = {temp}", (near(t, 1.0), t),
                          {"temperature": temp}))
    return cases


@checker(reference=_distillation_loss_reference)
def check_distillation_loss(student_fn: Any) -> CheckResult:
    """Check ``distillation_loss(student_logits, teacher_logits, temperature=1.0) -> float`` (T^2 KL)."""
    return check_with_hints(student_fn, _distillation_loss_reference, _kd_cases, _KD_MISTAKES,
                            name="distillation_loss", rtol=_KD_RTOL, atol=_KD_ATOL)


def _cases_for_tests() -> dict[str, tuple[Callable, Callable, list[Mistake]]]:
    """The references, case generators and mistakes of each exercise (for the tests)."""
    return {
        "ste_grad": (_ste_grad_reference, _ste_cases, _STE_MISTAKES),
        "distillation_loss": (_distillation_loss_reference, _kd_cases, _KD_MISTAKES),
    }
