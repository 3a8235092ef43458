"""Checkers for the exercises of notebook 02.1 (quantization fundamentals).

Each ``check_<name>(student_fn)`` runs the student's function against the course's reference
(:mod:`effx_lab.quant.reference`) on fixed edge cases and seeded random draws, prints a plain-words verdict and
returns the :class:`effx_lab.check.CheckResult`. When a wrong answer equals a classic mistake (a grid of
``2^(b-1)`` levels, a zero point left unrounded, a range not widened to contain 0, scales of a group
counted per input channel...) the verdict ends with a ``hint:`` line naming it. What the student writes:

* ``quantize_symmetric(x, bits, clip_ratio=1.0) -> (q, scale)``: per-tensor symmetric quantization on the
  restricted range ``[-(2^(b-1) - 1), 2^(b-1) - 1]``, ``scale = clip_ratio * max|x| / (2^(b-1) - 1)`` (an
  all-zero ``x`` gets ``scale = 1``), ``q = clip(round(x / scale), -qmax, qmax)`` as integers of ``x``'s shape,
  ``scale`` a float. With ``clip_ratio = 1`` this is :func:`effx_lab.quant.reference.compute_qparams` +
  :func:`~effx_lab.quant.reference.quantize` per tensor.
* ``affine_qparams(x, bits) -> (scale, zero_point)``: per-tensor affine (asymmetric, unsigned) parameters:
  the range ``[lo, hi] = [min(min x, 0), max(max x, 0)]``, ``scale = (hi - lo) / (2^b - 1)``,
  ``zero_point = round(-lo / scale)`` an int in ``[0, 2^b - 1]`` (all zeros: ``(1.0, 0)``), as
  :func:`effx_lab.quant.reference.compute_qparams` with ``symmetric=False``.
* ``bits_per_weight(shape, bits, granularity, group_size=None, scale_bits=16) -> float``: the storage of a
  weight ``[out, in] = shape`` quantized to ``bits``-bit codes, packed tightly, with one ``scale_bits``-bit
  scale per tensor (``"tensor"``), per output channel (``"channel"``: ``out`` scales) or per row and block of
  ``group_size`` consecutive inputs (``"group"``: ``out * ceil(in / group_size)`` scales, the last group of a
  row may be shorter), in bits per weight: ``bits + n_scales * scale_bits / (out * in)``. A prediction from
  counts; the notebook then measures the bytes of the packed arrays
  (:func:`effx_lab.quant.reference.pack_int4` and the scales in float16). Compared with ``rtol=1e-12``.

**Rounding ties.** The course rounds half to even (``np.round``, ``torch.round``), but rounding half away from
zero (``np.floor(v + 0.5)`` for positive ``v``, C's ``round``) is an equally valid convention: both give the
same error bound ``s / 2``. The checkers therefore accept both. No case contains an exact tie (a value of
``x / scale`` or ``-lo / scale`` exactly halfway between two integers; ``tests/ch02_quant/test_quant_exercises_fundamentals``
verifies it), so both conventions give the same integers on every case.

Array inputs are float64 except one float32 case per exercise. Integers (``q``, ``zero_point``) are compared
exactly (a float array of whole numbers is accepted for ``q``), scales with ``rtol=1e-5``.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from effx_lab.check import Case, CheckResult, Mistake, check_with_hints, checker, named

from .. import reference as R

__all__ = [
    "check_affine_qparams",
    "check_bits_per_weight",
    "check_quantize_symmetric",
]

_RTOL = 1e-5  # scales; integers are always compared exactly
_ATOL = 1e-12


def _check_with_hints(
    student_fn: Any, reference_fn: Callable, cases: Any, mistakes: list[Mistake], *, name: str
) -> CheckResult:
    """:func:`effx_lab.check.check_with_hints` with this module's tolerances (answers are tuples)."""
    return check_with_hints(student_fn, reference_fn, cases, mistakes, name=name, rtol=_RTOL, atol=_ATOL)


def _qmax(bits: int) -> int:
    return 2 ** (bits - 1) - 1


# =========================================================================== quantize_symmetric
@named("quantize_symmetric")
def _quantize_symmetric_reference(x, bits, clip_ratio=1.0):
    qp = R.compute_qparams(x, bits, symmetric=True, granularity="tensor")  # scale = max|x| / qmax (1 if all 0)
    if np.any(x != 0):
        qp = R.QParams(qp.scale * qp.scale.dtype.type(clip_ratio), qp.zero_point, bits, True, "tensor", qp.axis)
    return R.quantize(x, qp), float(qp.scale.reshape(-1)[0])


def _symmetric(
    x,
    bits,
    clip_ratio=1.0,
    *,
    levels: Callable[[int], int] = _qmax,
    qmin: Callable[[int], int] | None = None,
    clip: bool = True,
    peak: Callable[[np.ndarray], float] = lambda a: float(np.max(np.abs(a))),
    rounding: Callable[[np.ndarray], np.ndarray] = np.round,
    ratio: Callable[[float], float] = lambda r: r,
):
    """Symmetric per-tensor quantization with one knob per classic mistake (defaults: the right answer)."""
    a = np.asarray(x, dtype=np.float64)
    top = _qmax(bits)
    bottom = -top if qmin is None else qmin(bits)
    m = peak(a)
    scale = ratio(clip_ratio) * m / levels(bits) if m != 0 else 1.0
    q = rounding(a / scale)
    if clip:
        q = np.clip(q, bottom, top)
    return q, scale


_SYMMETRIC_MISTAKES = [
    Mistake(
        lambda x, bits, clip_ratio=1.0: _symmetric(
            x, bits, clip_ratio, levels=lambda b: 2 ** (b - 1), qmin=lambda b: -(2 ** (b - 1))
        ),
        "the symmetric range is restricted: qmax = 2^(b-1) - 1 (127 for 8 bits), q in [-qmax, qmax], and "
        "scale = max|x| / qmax. Dividing by 2^(b-1) and allowing -2^(b-1) gives a grid that is not symmetric.",
    ),
    Mistake(
        lambda x, bits, clip_ratio=1.0: _symmetric(x, bits, clip_ratio, levels=lambda b: 2 ** (b - 1)),
        "divide by qmax = 2^(b-1) - 1 (127 for 8 bits), not by 2^(b-1): scale = max|x| / qmax, so that the "
        "largest value lands exactly on qmax.",
    ),
    Mistake(
        lambda x, bits, clip_ratio=1.0: _symmetric(x, bits, clip_ratio, qmin=lambda b: -(2 ** (b - 1))),
        "clip to [-qmax, qmax] with qmax = 2^(b-1) - 1: the restricted symmetric range leaves -2^(b-1) "
        "(-128 for 8 bits) unused.",
    ),
    Mistake(
        lambda x, bits, clip_ratio=1.0: None if clip_ratio == 1.0 else _symmetric(x, bits, clip_ratio, clip=False),
        "clip q to [-qmax, qmax]: with clip_ratio < 1 the largest values lie outside the range and must "
        "saturate (np.clip), otherwise q leaves the integer grid.",
    ),
    Mistake(
        lambda x, bits, clip_ratio=1.0: _symmetric(x, bits, clip_ratio, peak=lambda a: float(np.max(a))),
        "the range is set by the largest magnitude, max|x| (np.abs(x).max()), not by max(x): negative values "
        "count too.",
    ),
    Mistake(
        lambda x, bits, clip_ratio=1.0: _symmetric(
            x, bits, clip_ratio, peak=lambda a: float(np.max(a)), clip=False
        ),
        "the range is set by the largest magnitude, max|x| (np.abs(x).max()), not by max(x); and clip q to "
        "[-qmax, qmax].",
    ),
    Mistake(
        lambda x, bits, clip_ratio=1.0: _symmetric(x, bits, clip_ratio, rounding=np.trunc),
        "round to the nearest integer (np.round); astype(int) or np.trunc cut towards zero, which doubles the "
        "worst-case error.",
    ),
    Mistake(
        lambda x, bits, clip_ratio=1.0: _symmetric(x, bits, clip_ratio, rounding=np.floor),
        "round to the nearest integer (np.round), not down (np.floor).",
    ),
    Mistake(
        lambda x, bits, clip_ratio=1.0: _symmetric(
            x, bits, clip_ratio, levels=lambda b: (2**b - 1) / 2
        ),
        "symmetric: scale = max|x| / qmax with qmax = 2^(b-1) - 1. The grid -qmax..qmax has 2^b - 2 steps, "
        "not 2^b - 1 (that is the affine grid 0..2^b - 1).",
    ),
    Mistake(
        lambda x, bits, clip_ratio=1.0: None if clip_ratio == 1.0 else _symmetric(x, bits, clip_ratio, ratio=lambda r: 1.0),
        "use clip_ratio: the clipped range is [-c, c] with c = clip_ratio * max|x|, so scale = c / qmax.",
    ),
    Mistake(
        lambda x, bits, clip_ratio=1.0: None if clip_ratio == 1.0 else _symmetric(
            x, bits, clip_ratio, ratio=lambda r: 1.0 / r
        ),
        "multiply by clip_ratio, do not divide: c = clip_ratio * max|x| is smaller than max|x|, and "
        "scale = c / qmax.",
    ),
]


def _symmetric_cases(rng: np.random.Generator) -> list[Case]:
    def normal(*shape: int, scale: float = 1.0) -> np.ndarray:
        return rng.normal(0.0, scale, size=shape)

    outlier = normal(40, scale=0.05)
    outlier[7] = 1.3  # one weight 26 standard deviations out
    neg_peak = normal(12)
    neg_peak[3] = -5.0
    cases = [
        Case("defaults: 8 bits, clip_ratio = 1", (normal(20), 8)),
        Case("4 bits: 15 levels", (normal(30), 4)),
        Case("3 bits: 7 levels", (normal(25), 3)),
        Case("2 bits: the grid is {-1, 0, 1}", (normal(16), 2)),
        Case("all negative: max|x| comes from the minimum", (-np.abs(normal(10)) - 0.1, 8)),
        Case("negative peak: the largest magnitude is negative", (neg_peak, 4)),
        Case("2-D: a weight matrix [8, 16]", (normal(8, 16, scale=0.1), 8)),
        Case("outlier: one weight 26 standard deviations out", (outlier, 4)),
        Case("clipping: clip_ratio = 0.5 at 4 bits", (normal(30), 4), {"clip_ratio": 0.5}),
        Case("clipping: clip_ratio = 0.1 at 8 bits (the outlier saturates)", (outlier, 8), {"clip_ratio": 0.1}),
        Case("clipping: clip_ratio = 0.3 on a [4, 6] matrix at 3 bits", (normal(4, 6), 3), {"clip_ratio": 0.3}),
        Case("all zeros: scale = 1 by convention", (np.zeros(6), 8)),
        Case("one element: x = [-0.7]", (np.array([-0.7]), 8)),
        Case("float32: input", (normal(8).astype(np.float32), 8)),
    ]
    for i in range(4):
        bits = int(rng.choice([2, 3, 4, 5, 6, 8]))
        ratio = float(rng.choice([1.0, 0.8, 0.6]))
        shape = (int(rng.integers(2, 30)),) if i % 2 == 0 else (int(rng.integers(2, 6)), int(rng.integers(2, 9)))
        cases.append(
            Case(
                f"random draw {i + 1}: {bits} bits, clip_ratio = {ratio}, shape {shape}",
                (normal(*shape, scale=float(rng.uniform(0.01, 10.0))), bits),
                {"clip_ratio": ratio},
            )
        )
    return cases


@checker(reference=_quantize_symmetric_reference)
def check_quantize_symmetric(student_fn: Any) -> CheckResult:
    """Check ``quantize_symmetric(x, bits, clip_ratio=1.0) -> (q, scale)`` (per tensor, restricted range)."""
    return _check_with_hints(
        student_fn, _quantize_symmetric_reference, _symmetric_cases, _SYMMETRIC_MISTAKES, name="quantize_symmetric"
    )


# =========================================================================== affine_qparams
@named("affine_qparams")
def _affine_qparams_reference(x, bits):
    qp = R.compute_qparams(x, bits, symmetric=False, granularity="tensor")
    return float(qp.scale.reshape(-1)[0]), int(qp.zero_point.reshape(-1)[0])


def _affine(
    x,
    bits,
    *,
    widen: bool = True,
    steps: Callable[[int], int] = lambda b: 2**b - 1,
    zero: Callable[[float, float], float] = lambda lo, s: float(np.round(-lo / s)),
    clip_zero: bool = True,
):
    """Affine per-tensor parameters with one knob per classic mistake (defaults: the right answer)."""
    a = np.asarray(x, dtype=np.float64)
    lo, hi = float(a.min()), float(a.max())
    if widen:
        lo, hi = min(lo, 0.0), max(hi, 0.0)
    if hi == lo:
        return 1.0, 0
    scale = (hi - lo) / steps(bits)
    zp = zero(lo, scale)
    if clip_zero:
        zp = min(max(zp, 0.0), 2.0**bits - 1)
    return scale, zp


_AFFINE_MISTAKES = [
    Mistake(
        lambda x, bits: _affine(x, bits, zero=lambda lo, s: -lo / s, clip_zero=False),
        "round the zero point to an integer: zero_point = round(-lo / scale). It is stored as an integer on the "
        "grid, and only an integer zero point makes the real value 0 exactly representable.",
    ),
    Mistake(
        lambda x, bits: _affine(x, bits, zero=lambda lo, s: -lo / s),
        "round the zero point to an integer: zero_point = round(-lo / scale).",
    ),
    Mistake(
        lambda x, bits: _affine(x, bits, widen=False, clip_zero=False),
        "widen the range to include 0 first: lo = min(min(x), 0), hi = max(max(x), 0). Otherwise the zero point "
        "falls off the grid (here it is outside [0, 2^b - 1]) and 0 is not exactly representable.",
    ),
    Mistake(
        lambda x, bits: _affine(x, bits, widen=False),
        "widen the range to include 0 first: lo = min(min(x), 0), hi = max(max(x), 0), so that the real value 0 "
        "(zero padding, ReLU outputs) is exactly on the grid.",
    ),
    Mistake(
        lambda x, bits: _affine(x, bits, steps=lambda b: 2**b),
        "2^b levels have 2^b - 1 steps between them: scale = (hi - lo) / (2^b - 1) (255 for 8 bits, not 256).",
    ),
    Mistake(
        lambda x, bits: _affine(x, bits, zero=lambda lo, s: float(np.round(lo / s)), clip_zero=False),
        "zero_point = round(-lo / scale), with a minus sign: it is the integer that stands for 0, and with "
        "lo <= 0 it is >= 0.",
    ),
    Mistake(
        lambda x, bits: _affine(x, bits, zero=lambda lo, s: float(np.round(lo / s))),
        "zero_point = round(-lo / scale), with a minus sign: it is the integer that stands for 0.",
    ),
    Mistake(
        lambda x, bits: _affine(x, bits, zero=lambda lo, s: float(np.trunc(-lo / s))),
        "round the zero point to the nearest integer (np.round), do not truncate it (int() or astype(int)).",
    ),
    Mistake(
        lambda x, bits: (
            None if not np.any(x) else (float(np.max(np.abs(x))) / (2 ** (bits - 1) - 1), 0)
        ),
        "that is the symmetric scheme. Affine uses the whole range: scale = (hi - lo) / (2^b - 1) and a zero "
        "point round(-lo / scale) that is usually not 0.",
    ),
]


def _affine_cases(rng: np.random.Generator) -> list[Case]:
    def normal(*shape: int, loc: float = 0.0, scale: float = 1.0) -> np.ndarray:
        return rng.normal(loc, scale, size=shape)

    gelu_like = np.maximum(normal(40), -0.17) + 0.01 * normal(40)  # a GELU output: a short negative tail
    cases = [
        Case("mixed signs: 8 bits", (normal(20, loc=0.3), 8)),
        Case("mixed signs: 4 bits", (normal(25, loc=-0.4), 4)),
        Case("mixed signs: 2 bits, 4 levels", (normal(12, loc=0.2), 2)),
        Case("short negative tail: like a GELU output, 8 bits", (gelu_like, 8)),
        Case("all positive: the range is widened down to 0", (rng.uniform(0.5, 3.0, size=15), 8)),
        Case("all positive: 4 bits", (rng.uniform(1.0, 2.0, size=9), 4)),
        Case("all negative: the range is widened up to 0", (-rng.uniform(0.2, 4.0, size=15), 8)),
        Case("2-D: an activation [6, 10]", (normal(6, 10, loc=1.0, scale=2.0), 8)),
        Case("all zeros: scale 1 and zero point 0 by convention", (np.zeros((3, 4)), 8)),
        Case("float32: input", (normal(10, loc=0.5).astype(np.float32), 8)),
    ]
    for i in range(4):
        bits = int(rng.choice([2, 3, 4, 6, 8]))
        shape = (int(rng.integers(2, 30)),) if i % 2 == 0 else (int(rng.integers(2, 6)), int(rng.integers(2, 9)))
        spread = float(rng.uniform(0.05, 5.0))
        cases.append(
            Case(
                f"random draw {i + 1}: {bits} bits, shape {shape}",
                (normal(*shape, loc=float(rng.uniform(-1.0, 1.0)) * spread, scale=spread), bits),
            )
        )
    return cases


@checker(reference=_affine_qparams_reference)
def check_affine_qparams(student_fn: Any) -> CheckResult:
    """Check ``affine_qparams(x, bits) -> (scale, zero_point)`` (per tensor, range widened to contain 0)."""
    return _check_with_hints(student_fn, _affine_qparams_reference, _affine_cases, _AFFINE_MISTAKES, name="affine_qparams")


# =========================================================================== bits_per_weight
#: the granularities of :func:`effx_lab.quant.reference.compute_qparams` that bits_per_weight counts
_GRANULARITIES = ("tensor", "channel", "group")


def _n_scales(shape, granularity, group_size, *, per_row_groups=True, channel_axis=0) -> int:
    """The number of scales of a weight ``[out, in]``, with one knob per classic mistake."""
    n_out, n_in = shape
    if granularity == "tensor":
        return 1
    if granularity == "channel":
        return shape[channel_axis]
    if per_row_groups:
        return n_out * -(-n_in // group_size)  # ceil: a row's last group may be shorter
    return -(-(n_out * n_in) // group_size)  # groups cut across the rows of the flattened matrix


@named("bits_per_weight")
def _bits_per_weight_reference(shape, bits, granularity, group_size=None, scale_bits=16):
    n_out, n_in = shape
    return bits + _n_scales(shape, granularity, group_size) * scale_bits / (n_out * n_in)


def _bpw(shape, bits, granularity, group_size=None, scale_bits=16, *, n_scales=None, per=None):
    """bits_per_weight with the scales counted wrongly (``n_scales``) or spread over ``per`` weights."""
    n_out, n_in = shape
    count = _n_scales(shape, granularity, group_size) if n_scales is None else n_scales
    return bits + count * scale_bits / (n_out * n_in if per is None else per)


_BPW_MISTAKES = [
    Mistake(
        lambda shape, bits, granularity, group_size=None, scale_bits=16: bits,
        "you returned the code bits alone: count the scales too, scale_bits bits apiece, so each weight costs "
        "bits + (number of scales) * scale_bits / (number of weights), a float (integer division // would "
        "drop the fraction).",
    ),
    Mistake(
        lambda shape, bits, granularity, group_size=None, scale_bits=16: (
            None if granularity != "channel" else _bpw(shape, bits, granularity, group_size, scale_bits,
                                                       n_scales=shape[1])
        ),
        "per channel means one scale per OUTPUT channel, a row of w [out, in]: out scales (shape[0]), not in.",
    ),
    Mistake(
        lambda shape, bits, granularity, group_size=None, scale_bits=16: (
            None if granularity != "group"
            else bits + scale_bits / group_size
        ),
        "when group_size does not divide the row, the row's last group is shorter but still needs a scale: "
        "ceil(in / group_size) groups per row, out * ceil(in / group_size) scales in all.",
    ),
    Mistake(
        lambda shape, bits, granularity, group_size=None, scale_bits=16: (
            None if granularity != "group"
            else _bpw(shape, bits, granularity, group_size, scale_bits,
                      n_scales=_n_scales(shape, "group", group_size, per_row_groups=False))
        ),
        "a group never spans two rows: groups are blocks of consecutive inputs of ONE row, so each row has "
        "ceil(in / group_size) groups (the last one may be shorter), out * ceil(in / group_size) scales.",
    ),
    Mistake(
        lambda shape, bits, granularity, group_size=None, scale_bits=16: (
            None if granularity != "group"
            else _bpw(shape, bits, granularity, group_size, scale_bits, n_scales=-(-shape[1] // group_size))
        ),
        "every row has its own groups: out * ceil(in / group_size) scales, not ceil(in / group_size).",
    ),
    Mistake(
        lambda shape, bits, granularity, group_size=None, scale_bits=16: (
            _bpw(shape, bits, granularity, group_size, scale_bits, per=shape[0])
        ),
        "spread the scales over all out * in weights, not over the out rows: "
        "bits + n_scales * scale_bits / (out * in).",
    ),
    Mistake(
        lambda shape, bits, granularity, group_size=None, scale_bits=16: (
            _bits_per_weight_reference(shape, bits, granularity, group_size, scale_bits) / 8
        ),
        "return bits per weight, not bytes: 4-bit codes with a few fp16 scales cost a little over 4 bits.",
    ),
    Mistake(
        lambda shape, bits, granularity, group_size=None, scale_bits=16: (
            _bpw(shape, bits, granularity, group_size, scale_bits / 8)
        ),
        "scale_bits is already in bits (16 for an fp16 scale): do not divide it by 8.",
    ),
]


def _bpw_cases(rng: np.random.Generator) -> list[Case]:
    cases = [
        Case("MiniLM's FFN weight [1536, 384], 4 bits per tensor", ((1536, 384), 4, "tensor")),
        Case("MiniLM's FFN weight [1536, 384], 4 bits per channel", ((1536, 384), 4, "channel")),
        Case("MiniLM's [384, 1536] weight, 4 bits per channel (out != in)", ((384, 1536), 4, "channel")),
        Case("groups of 128, fp16 scales (GPTQ's format)", ((1536, 384), 4, "group", 128)),
        Case("groups of 32", ((384, 1536), 4, "group", 32)),
        Case("int8 per channel with fp32 scales", ((1536, 384), 8, "channel", None, 32)),
        Case("groups of 64 on 100 inputs: each row's last group holds 36", ((3, 100), 3, "group", 64)),
        Case("group_size = in: one group per row, i.e. per channel", ((10, 48), 4, "group", 48)),
        Case("group_size > in: one short group per row", ((6, 20), 4, "group", 128)),
        Case("groups of one weight: a scale per weight", ((4, 6), 2, "group", 1)),
        Case("a 4096 x 11008 weight, groups of 128", ((4096, 11008), 4, "group", 128)),
        Case("8-bit scales", ((64, 96), 4, "group", 32, 8)),
        Case("one weight, per tensor", ((1, 1), 8, "tensor")),
        Case("one row: per channel = per tensor", ((1, 300), 3, "channel", None, 32)),
    ]
    for i in range(4):
        n_out, n_in = int(rng.integers(1, 400)), int(rng.integers(1, 700))
        granularity = str(rng.choice(_GRANULARITIES))
        group_size = int(rng.choice([16, 32, 64, 100, 128])) if granularity == "group" else None
        args = ((n_out, n_in), int(rng.integers(2, 9)), granularity, group_size, int(rng.choice([8, 16, 32])))
        cases.append(Case(f"random draw {i + 1}: [{n_out}, {n_in}], {granularity}", args))
    return cases


@checker(reference=_bits_per_weight_reference)
def check_bits_per_weight(student_fn: Any) -> CheckResult:
    """Check ``bits_per_weight(shape, bits, granularity, group_size=None, scale_bits=16) -> float``."""
    return check_with_hints(
        student_fn, _bits_per_weight_reference, _bpw_cases, _BPW_MISTAKES,
        name="bits_per_weight", rtol=1e-12, atol=0.0,
    )  # fmt: skip


def _cases_for_tests() -> dict[str, tuple[Callable, Callable[[np.random.Generator], list[Case]]]]:
    """The reference and case generator of each exercise (for the tests: ties, coverage of the hints)."""
    return {
        "quantize_symmetric": (_quantize_symmetric_reference, _symmetric_cases),
        "affine_qparams": (_affine_qparams_reference, _affine_cases),
        "bits_per_weight": (_bits_per_weight_reference, _bpw_cases),
    }

