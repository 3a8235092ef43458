"""Checkers for the chapter 1 exercises (notebooks 01.1, 01.2, 01.3).

Each ``check_<name>(student_fn)`` runs the student's function against the course's
reference on fixed edge cases and seeded random draws, prints a plain-words verdict and
returns the :class:`effx_lab.check.CheckResult`. What the student is asked to write:

* 01.1 ``kv_cache_bytes(n_layers, n_kv_heads, head_dim, seq_len, batch_size,
  bytes_per_elem) -> int``: ``2 * n_layers * n_kv_heads * head_dim * seq_len *
  batch_size * bytes_per_elem`` as an exact ``int`` (round up to a whole byte when the
  product is fractional, e.g. with 0.25 byte per element).
* 01.1 ``max_batch_size(memory_bytes, shape, seq_len, weight_bytes_per_param,
  kv_bytes_per_elem) -> int``: the largest batch whose weights (``shape.params()``
  parameters) plus KV cache (``shape.n_kv_heads`` K/V heads!) fit in ``memory_bytes``:
  a floor, ``0`` when even the weights do not fit.
* 01.2 ``matmul_flops_bytes(m, n, k, bytes_per_elem) -> (flops, bytes)`` for
  ``A[m, k] @ B[k, n]``: ``2 m n k`` FLOPs and ``(m k + k n + m n) * bytes_per_elem``
  bytes (read A and B, write C), as ints (bytes rounded up).
* 01.2 ``roofline_time(flops, bytes_moved, peak_flops, peak_bandwidth) -> float``:
  ``max(flops / peak_flops, bytes_moved / peak_bandwidth)`` seconds.
* 01.3 ``cu_seqlens(lengths)``, ``pack(x, lengths) -> (packed, cu)`` and
  ``unpack(packed, cu, max_len, pad_value=0)``, NumPy in and out, as in
  :mod:`effx_lab.costs.reference`.

Cases include sizes where 32-bit integers overflow (a 500B-class KV cache is ~6e12
bytes), int4's half byte, grouped-query attention (``n_kv_heads < n_heads``),
zero-length sequences and trailing feature dims.

When a wrong answer equals a classic mistake on the failing case, the verdict ends with
a ``hint:`` line naming it (a :class:`~effx_lab.check.Mistake` list per exercise,
checked in order): forgetting the factor 2 of K and V (or of a multiply-add), counting
bits instead of bytes, a factor left out, rounding a fractional byte down or to the
nearest, ``n_heads`` instead of ``n_kv_heads``, ``<`` instead of ``<=`` at an exact fit,
the sum or the min of the roofline's two times instead of the max, ``cu_seqlens``
without its leading 0 or its total or off by one, ``<=`` instead of ``<`` in a padding
mask, tokens gathered position by position instead of sequence by sequence, a
``pad_value`` ignored.
"""
from __future__ import annotations

import math
from fractions import Fraction
from typing import Any, Callable

import numpy as np

from effx_lab.check import Case, CheckResult, Mistake, check_with_hints, checker

from . import reference as R
from .flops import matmul_flops_bytes, roofline_time
from .memory import PRESETS, ModelShape, kv_cache_bytes, max_batch_size, param_bytes

__all__ = [
    "check_kv_cache_bytes",
    "check_max_batch_size",
    "check_matmul_flops_bytes",
    "check_roofline_time",
    "check_pack",
    "check_unpack",
    "check_cu_seqlens",
]


def _round_half_up(x: Fraction) -> int:
    """Round to the nearest integer, halves up: the ``int(x + 0.5)`` students write."""
    return math.floor(x + Fraction(1, 2))


# ======================================================================== 01.1 memory
def _kv_cases(rng: np.random.Generator) -> list[Case]:
    cases = [
        Case("tiny: one layer, one head", (1, 1, 1, 1, 1, 2)),
        Case("llama2-7b: 4096 tokens, batch 1, bf16", (32, 32, 128, 4096, 1, 2)),
        Case("GQA llama2-70b: 8 KV heads, batch 8, bf16", (80, 8, 128, 4096, 8, 2)),
        Case(
            "int32 overflow: PaLM-540B with multi-head K/V, batch 512, context 2048",
            (118, 48, 256, 2048, 512, 2),
        ),
        Case("int4: 0.5 byte per element", (32, 8, 128, 1000, 3, 0.5)),
        Case("2-bit cache (0.25 byte), 4.5 bytes: round up", (3, 1, 3, 1, 1, 0.25)),
        Case("3-bit cache (0.375 byte), 0.75 byte: round up", (1, 1, 1, 1, 1, 0.375)),
        Case(
            "3-bit cache (0.375 byte), 2.25 bytes: round up, not to the nearest",
            (1, 1, 1, 3, 1, 0.375),
        ),
        Case(
            "1-bit cache (0.125 byte), 0.25 byte: still one whole byte",
            (1, 1, 1, 1, 1, 0.125),
        ),
        Case("fp32: 4 bytes", (6, 12, 32, 128, 16, 4)),
        Case("empty cache: seq_len 0", (12, 12, 64, 0, 4, 2)),
    ]
    for i in range(6):
        args = (
            int(rng.integers(1, 129)),
            int(rng.choice([1, 2, 4, 8, 16, 32, 64])),
            int(rng.choice([32, 64, 80, 96, 128, 256])),
            int(rng.integers(1, 1 << 17)),
            int(rng.integers(1, 1025)),
            [4, 2, 1, 0.5][i % 4],
        )
        cases.append(Case(f"random draw {i + 1}", args))
    return cases


def _kv_variant(
    *,
    factor: int = 2,
    scale: Fraction = Fraction(1),
    rounding: Callable[[Fraction], int] = math.ceil,
    drop: str | None = None,
) -> Callable[..., int]:
    """kv_cache_bytes with one thing changed: the K/V factor, a scale (8: bits), the
    rounding, or a factor (``drop``: ``"n_layers"``, ``"seq_len"``, ``"batch_size"``)
    left out."""

    def wrong(n_layers, n_kv_heads, head_dim, seq_len, batch_size, bytes_per_elem):
        size = {"n_layers": n_layers, "seq_len": seq_len, "batch_size": batch_size}
        if drop is not None:
            size[drop] = 1
        elems = factor * size["n_layers"] * n_kv_heads * head_dim
        elems *= size["seq_len"] * size["batch_size"]
        return int(rounding(elems * Fraction(bytes_per_elem) * scale))

    return wrong


# in order: where two mistakes give one answer on a case, the first one's hint shows
_KV_MISTAKES = [
    Mistake(
        _kv_variant(rounding=_round_half_up),
        "round up, not to the nearest: 2.25 bytes need 3 bytes of storage (math.ceil).",
    ),
    Mistake(
        _kv_variant(rounding=math.floor),
        "round up: a partly used byte is still a byte (math.ceil, not int() or //).",
    ),
    Mistake(
        _kv_variant(factor=1),
        "your answer is half the expected one: the cache holds a key AND a value per "
        "position (the leading 2).",
    ),
    Mistake(
        _kv_variant(scale=Fraction(8)),
        "your answer is 8x too large: it counts bits, not bytes (bytes_per_elem is "
        "already in bytes).",
    ),
    Mistake(
        _kv_variant(drop="batch_size"),
        "multiply by batch_size: every sequence of the batch keeps its own cache.",
    ),
    Mistake(
        _kv_variant(drop="n_layers"),
        "multiply by n_layers: every layer keeps its own keys and values.",
    ),
    Mistake(
        _kv_variant(scale=Fraction(1, 8)),
        "your answer is 8x too small: bytes_per_elem is already in bytes, do not "
        "divide by 8.",
    ),
]


@checker(reference=kv_cache_bytes)
def check_kv_cache_bytes(student_fn: Any) -> CheckResult:
    """Check ``kv_cache_bytes(n_layers, n_kv_heads, head_dim, seq_len, batch_size,
    bytes_per_elem) -> int``.

    Exact: the answer must be an ``int`` (not a float, not a NumPy int32 that wrapped
    around).
    """
    return check_with_hints(
        student_fn, kv_cache_bytes, _kv_cases, _KV_MISTAKES,
        name="kv_cache_bytes", exact=True, rtol=0.0, atol=0.0,
    )


def _toy_shape(rng: np.random.Generator, i: int) -> ModelShape:
    n_heads = int(rng.choice([4, 8, 16, 32]))
    divisors = [d for d in (1, 2, 4, 8, n_heads) if n_heads % d == 0 and d < n_heads]
    n_kv = int(rng.choice(divisors))
    head_dim = int(rng.choice([32, 64, 128]))
    return ModelShape(
        name=f"random-gqa-{i}",
        n_layers=int(rng.integers(2, 49)),
        d_model=n_heads * head_dim,
        n_heads=n_heads,
        n_kv_heads=n_kv,
        head_dim=head_dim,
        d_ff=4 * n_heads * head_dim,
        vocab_size=int(rng.integers(1000, 50001)),
        gated_mlp=bool(rng.integers(0, 2)),
    )


#: A toy model with a published odd parameter count: its int4 weights take a fractional
#: number of bytes.
_ODD = ModelShape(
    name="toy-odd", n_layers=2, d_model=8, n_heads=2, n_kv_heads=1, head_dim=4, d_ff=16,
    vocab_size=7, n_params=1001,
)


def _exact_fit(
    shape: ModelShape, seq_len: int, w: float, kv: float, batches: float
) -> int:
    """Memory holding the weights plus ``batches`` sequences' KV cache (rounded down to
    a byte)."""
    weights = param_bytes(shape.params(), w)
    per_seq = kv_cache_bytes(
        shape.n_layers, shape.n_kv_heads, shape.head_dim, seq_len, 1, kv
    )
    return weights + int(per_seq * batches)


def _batch_cases(rng: np.random.Generator) -> list[Case]:
    l7, l70 = PRESETS["llama2-7b"], PRESETS["llama2-70b"]
    palm = PRESETS["palm-540b-mha"]
    gb = 10**9
    three = _exact_fit(l7, 1024, 2, 2, 3)
    cases = [
        Case("llama2-7b on an 80 GB GPU, 4096 tokens, bf16", (80 * gb, l7, 4096, 2, 2)),
        Case(
            "GQA llama2-70b (8 KV heads) on 2 x 80 GB, 4096 tokens, bf16",
            (160 * gb, l70, 4096, 2, 2),
        ),
        Case(
            "GQA llama2-70b, int4 weights, int8 cache, 8192 tokens",
            (80 * gb, l70, 8192, 0.5, 1),
        ),
        Case(
            "weights do not fit: llama2-70b bf16 on 80 GB", (80 * gb, l70, 2048, 2, 2)
        ),
        Case(
            "weights fit, not one sequence",
            (_exact_fit(l7, 4096, 2, 2, 0.5), l7, 4096, 2, 2),
        ),
        Case("exact fit: memory = weights + 3 sequences", (three, l7, 1024, 2, 2)),
        Case("one byte short of 3 sequences", (three - 1, l7, 1024, 2, 2)),
        Case(
            "2.75 sequences fit: floor, not round",
            (_exact_fit(l70, 512, 2, 2, 2.75), l70, 512, 2, 2),
        ),
        Case(
            "int32 overflow: PaLM-540B multi-head, 8 TB", (8 * 10**12, palm, 2048, 2, 2)
        ),
        Case(
            "int4 weights, odd parameter count: 1001 x 0.5 = 500.5 bytes round up "
            "(1 byte short of 3 sequences)",
            (_exact_fit(_ODD, 16, 0.5, 2, 3) - 1, _ODD, 16, 0.5, 2),
        ),
    ]
    for i in range(6):
        shape = _toy_shape(rng, i)
        seq = int(rng.integers(1, 8193))
        w = [2, 1, 0.5][i % 3]
        kv = [2, 1, 2][i % 3]
        memory = _exact_fit(shape, seq, w, kv, float(rng.uniform(0.3, 300.0)))
        label = f"random GQA draw {i + 1}: {shape.n_heads} heads, "
        label += f"{shape.n_kv_heads} KV heads"
        cases.append(Case(label, (memory, shape, seq, w, kv)))
    return cases


def _batch_variant(
    *,
    heads: str = "n_kv_heads",
    factor: int = 2,
    weights_rounding: Callable[[Fraction], int] = math.ceil,
    fit: str = "floor",
    clamp: bool = True,
) -> Callable[..., int]:
    """max_batch_size with one thing changed (the reference: ``n_kv_heads``, factor 2,
    weights rounded up, ``fit="floor"`` of ``weights + b * one_sequence <= memory``, 0
    when the weights do not fit). ``fit``: ``"round"`` (to the nearest) or ``"strict"``
    (``<`` instead of ``<=``)."""

    def wrong(memory_bytes, shape, seq_len, weight_bytes_per_param, kv_bytes_per_elem):
        weights = weights_rounding(shape.params() * Fraction(weight_bytes_per_param))
        per_seq = factor * shape.n_layers * getattr(shape, heads) * shape.head_dim
        per_seq *= seq_len * Fraction(kv_bytes_per_elem)
        free = Fraction(memory_bytes) - weights
        if clamp and free < 0:
            return 0
        if fit == "round":
            return round(free / per_seq)
        if fit == "strict":
            return max(0, math.ceil(free / per_seq) - 1)
        return math.floor(free / per_seq)

    return wrong


_BATCH_MISTAKES = [
    Mistake(
        _batch_variant(heads="n_heads"),
        "use shape.n_kv_heads, not shape.n_heads: under grouped-query attention "
        "several query heads share one K/V head, and only the K/V heads are cached.",
    ),
    Mistake(
        _batch_variant(factor=1),
        "one sequence's cache holds a key AND a value per position and layer: the "
        "factor 2 is missing.",
    ),
    Mistake(
        _batch_variant(clamp=False),
        "when even the weights do not fit the answer is 0, never a negative number.",
    ),
    Mistake(
        _batch_variant(fit="strict"),
        "an exact fit counts: weights + b * one_sequence <= memory_bytes (<=, not <).",
    ),
    Mistake(
        _batch_variant(weights_rounding=math.floor),
        "round the weights' bytes up (math.ceil): 1001 int4 weights take 501 bytes.",
    ),
    Mistake(
        _batch_variant(weights_rounding=round),
        "round the weights' bytes up (math.ceil), not to the nearest even: 500.5 bytes "
        "take 501.",
    ),
    Mistake(
        _batch_variant(fit="round"),
        "take the floor, not the nearest integer: room for 2.75 sequences holds 2.",
    ),
]


@checker(reference=max_batch_size)
def check_max_batch_size(student_fn: Any) -> CheckResult:
    """Check ``max_batch_size(memory_bytes, shape, seq_len, weight_bytes_per_param,
    kv_bytes_per_elem) -> int``."""
    return check_with_hints(
        student_fn, max_batch_size, _batch_cases, _BATCH_MISTAKES,
        name="max_batch_size", exact=True, rtol=0.0, atol=0.0,
    )


# ======================================================================= 01.2 compute
def _matmul_cases(rng: np.random.Generator) -> list[Case]:
    cases = [
        Case("square GEMM 1024, fp32", (1024, 1024, 1024, 4)),
        Case("GEMV: n = 1 (decode), bf16", (4096, 1, 4096, 2)),
        Case("odd sizes", (3, 5, 7, 2)),
        Case("1 x 1 x 1, int4: round up the half byte", (1, 1, 1, 0.5)),
        Case("1 x 1 x 2, int4: 2.5 bytes round up (not to the even 2)", (1, 1, 2, 0.5)),
        Case(
            "1 x 1 x 2, 2-bit (0.25 byte): 1.25 bytes round up, not to the nearest",
            (1, 1, 2, 0.25),
        ),
        Case("int8 weights", (8, 11008, 4096, 1)),
        Case("int32 overflow: 65536^3", (65536, 65536, 65536, 2)),
    ]
    for i in range(6):
        m, n, k = (int(v) for v in rng.integers(1, 5000, size=3))
        cases.append(Case(f"random draw {i + 1}", (m, n, k, [4, 2, 1, 0.5][i % 4])))
    return cases


def _matmul_variant(
    *,
    factor: int = 2,
    write_c: bool = True,
    scale: Fraction = Fraction(1),
    rounding: Callable[[Fraction], int] = math.ceil,
    swap: bool = False,
) -> Callable[..., tuple[int, int]]:
    """matmul_flops_bytes with one thing changed (the reference: ``2 m n k`` FLOPs, A
    and B read and C written once, bytes rounded up, ``(flops, bytes)`` in that
    order)."""

    def wrong(m, n, k, bytes_per_elem):
        flops = factor * m * n * k
        elements = m * k + k * n + (m * n if write_c else 0)
        n_bytes = int(rounding(elements * Fraction(bytes_per_elem) * scale))
        return (n_bytes, flops) if swap else (flops, n_bytes)

    return wrong


# rounding first: it changes the answer only where the bytes are fractional
_MATMUL_MISTAKES = [
    Mistake(
        _matmul_variant(rounding=math.floor),
        "round the bytes up (math.ceil): a partly used byte is still moved.",
    ),
    Mistake(
        _matmul_variant(rounding=_round_half_up),
        "round the bytes up, not to the nearest: 1.25 bytes need 2 (math.ceil).",
    ),
    Mistake(
        _matmul_variant(rounding=round),
        "round the bytes up, not to the nearest even: 2.5 bytes need 3 (math.ceil).",
    ),
    Mistake(
        _matmul_variant(factor=1),
        "a multiply-add is 2 FLOPs: the product costs 2 m n k, not m n k.",
    ),
    Mistake(
        _matmul_variant(write_c=False),
        "the product also writes C once: add m * n elements to the bytes.",
    ),
    Mistake(
        _matmul_variant(scale=Fraction(8)),
        "your bytes are 8x too many: that counts bits (bytes_per_elem is already in "
        "bytes).",
    ),
    Mistake(_matmul_variant(swap=True), "return (flops, bytes), in that order."),]


@checker(reference=matmul_flops_bytes)
def check_matmul_flops_bytes(student_fn: Any) -> CheckResult:
    """Check ``matmul_flops_bytes(m, n, k, bytes_per_elem) -> (flops, bytes)`` (two
    ints, in that order)."""
    return check_with_hints(
        student_fn, matmul_flops_bytes, _matmul_cases, _MATMUL_MISTAKES,
        name="matmul_flops_bytes", exact=True, rtol=0.0, atol=0.0,
    )


def _roofline_cases(rng: np.random.Generator) -> list[Case]:
    h100 = (989e12, 3.35e12)  # dense bf16 FLOP/s and HBM bytes/s of an H100 SXM
    cases = [
        Case(
            "compute-bound GEMM on an H100", (2 * 8192.0**3, 3 * 8192.0**2 * 2, *h100)
        ),
        Case("memory-bound GEMV on an H100", (2 * 8192.0**2, 8192.0**2 * 2, *h100)),
        Case("balanced: both terms equal 1 s", (1e12, 1e11, 1e12, 1e11)),
        Case("both terms close: 1 s and 0.8 s", (1e12, 8e10, 1e12, 1e11)),
        Case("nothing to do: 0 FLOPs, 0 bytes", (0.0, 0.0, 1e12, 1e11)),
        Case("laptop CPU: 100 GFLOP/s, 20 GB/s", (5e9, 3e9, 1e11, 2e10)),
    ]
    for i in range(6):
        peak_f = float(10 ** rng.uniform(10, 15))
        peak_b = float(10 ** rng.uniform(10, 13))
        flops = float(peak_f * rng.uniform(1e-4, 1.0))
        bytes_moved = float(peak_b * rng.uniform(1e-4, 1.0))
        cases.append(Case(f"random draw {i + 1}", (flops, bytes_moved, peak_f, peak_b)))
    return cases


_ROOFLINE_MISTAKES = [
    Mistake(
        lambda f, b, pf, pb: f / pf + b / pb,
        "take the max of the two times, not their sum: a processor fetches the next "
        "data while it computes on the last, so the slower of the two sets the time.",
    ),
    Mistake(
        lambda f, b, pf, pb: min(f / pf, b / pb),
        "take the max, not the min (nor one of the two terms alone): the kernel must "
        "finish both its arithmetic and its memory traffic.",
    ),
]


@checker(reference=roofline_time)
def check_roofline_time(student_fn: Any) -> CheckResult:
    """Check ``roofline_time(flops, bytes_moved, peak_flops, peak_bandwidth) ->
    seconds`` (relative tolerance 1e-9)."""
    return check_with_hints(
        student_fn, roofline_time, _roofline_cases, _ROOFLINE_MISTAKES,
        name="roofline_time", rtol=1e-9, atol=1e-300,
    )


# ======================================================================= 01.3 packing
def _padded(
    rng: np.random.Generator,
    batch: int,
    max_len: int,
    feat: tuple[int, ...],
    lengths: Any = None,
) -> tuple[np.ndarray, np.ndarray]:
    x = rng.standard_normal((batch, max_len) + feat).astype(np.float32)
    if lengths is None:
        lengths = rng.integers(0, max_len + 1, size=batch)
    return x, np.asarray(lengths, dtype=np.int64)


def _pack_cases(rng: np.random.Generator) -> list[Case]:
    specs = [
        ("odd sizes: 3 sequences of up to 7 tokens, d = 5", 3, 7, (5,), [4, 7, 1]),
        ("zero length: an empty sequence in the middle", 3, 6, (4,), [2, 0, 5]),
        ("all full length: no padding at all", 4, 5, (3,), [5, 5, 5, 5]),
        ("batch of 1", 1, 9, (2,), [6]),
        ("trailing feature dims: x is [B, L, 2, 3]", 3, 4, (2, 3), [1, 4, 2]),
        ("no feature dim: x is [B, L]", 4, 6, (), [6, 0, 3, 1]),
        ("all empty: every length is 0", 2, 3, (2,), [0, 0]),
    ]
    cases = []
    for label, b, l, feat, lengths in specs:
        x, lens = _padded(rng, b, l, feat, lengths)
        cases.append(Case(label, (x, lens)))
    for i in range(4):
        b, l = int(rng.integers(2, 9)), int(rng.integers(2, 17))
        x, lens = _padded(rng, b, l, (int(rng.integers(1, 9)),))
        cases.append(Case(f"random draw {i + 1}: batch {b}, max_len {l}", (x, lens)))
    return cases


def _cu_no_zero(lengths: Any) -> np.ndarray:
    """``np.cumsum(lengths)``: B offsets, the leading 0 missing."""
    return np.cumsum(np.asarray(lengths, dtype=np.int64))


def _cu_no_total(lengths: Any) -> np.ndarray:
    """An exclusive cumsum: B offsets, the total missing."""
    cu = np.cumsum(np.asarray(lengths, dtype=np.int64))
    return np.concatenate([np.zeros(1, dtype=np.int64), cu[:-1]])


def _cu_minus_one(lengths: Any) -> np.ndarray:
    """The last row of each sequence instead of the first row of the next."""
    cu = R.cu_seqlens(lengths)
    cu[1:] -= 1
    return cu


def _cu_plus_one(lengths: Any) -> np.ndarray:
    cu = R.cu_seqlens(lengths)
    cu[1:] += 1
    return cu


def _pack_variant(
    *,
    cu: Callable[[Any], np.ndarray] = R.cu_seqlens,
    inclusive: bool = False,
    by_position: bool = False,
) -> Callable[..., tuple[np.ndarray, np.ndarray]]:
    """pack with one thing changed: the offsets ``cu``, a ``<=`` mask, or the tokens
    gathered position by position (position 0 of every sequence, then position 1...)."""

    def wrong(x, lengths):
        lengths = np.asarray(lengths, dtype=np.int64)
        t = np.arange(x.shape[1])[None, :]
        mask = (t <= lengths[:, None]) if inclusive else (t < lengths[:, None])
        packed = np.swapaxes(x, 0, 1)[mask.T] if by_position else x[mask]
        return packed, cu(lengths)

    return wrong


_CU_MISTAKES = [
    Mistake(
        _cu_no_zero,
        "start with 0: cu has B + 1 entries, cu[0] = 0 (where sequence 0 starts), then "
        "the running sums (np.cumsum alone gives only B of them).",
    ),
    Mistake(
        _cu_no_total,
        "end with the total T = sum(lengths): cu has B + 1 entries, the last one is "
        "where a sequence after the batch would start.",
    ),
    Mistake(
        _cu_minus_one,
        "off by one: cu[b + 1] is the first row of sequence b + 1 (one past the last "
        "row of sequence b), so cu[b + 1] = cu[b] + l_b.",
    ),
    Mistake(
        _cu_plus_one,
        "off by one: cu[b + 1] = cu[b] + l_b exactly, with nothing added.",
    ),
]

_PACK_MISTAKES = [
    Mistake(
        _pack_variant(cu=_cu_no_zero), "cu must start with 0: B + 1 offsets, cu[0] = 0."
    ),
    Mistake(
        _pack_variant(cu=_cu_no_total),
        "cu must end with the total T = sum(lengths): B + 1 offsets.",
    ),
    Mistake(
        _pack_variant(cu=_cu_minus_one),
        "cu is off by one: cu[0] = 0 and cu[b + 1] = cu[b] + l_b.",
    ),
    Mistake(
        _pack_variant(cu=_cu_plus_one),
        "cu is off by one: cu[b + 1] = cu[b] + l_b, nothing added.",
    ),
    Mistake(
        _pack_variant(inclusive=True),
        "position t of sequence b is real when t < lengths[b] (not <=): your packed "
        "rows include one padding token per sequence.",
    ),
    Mistake(
        _pack_variant(by_position=True),
        "keep each sequence's tokens together: all of sequence 0, then all of "
        "sequence 1 (the row-major order of the [B, L] mask), not position 0 of every "
        "sequence, then position 1, ...",
    ),
]


@checker(reference=R.pack)
def check_pack(student_fn: Any) -> CheckResult:
    """Check ``pack(x, lengths) -> (packed[T, ...], cu[B + 1])`` against
    :func:`effx_lab.costs.reference.pack`."""
    return check_with_hints(
        student_fn, R.pack, _pack_cases, _PACK_MISTAKES,
        name="pack", exact=True, rtol=0.0, atol=0.0,
    )


def _unpack_cases(rng: np.random.Generator) -> list[Case]:
    cases = []
    pads = [0.0, -1.0, 0.0, 7.5, -1e9, 0.0, 3.0, 0.0, -2.0, 1.0, -1.0]
    for case, pad in zip(_pack_cases(rng), pads):
        x, lens = case.args
        packed, cu = R.pack(x, lens)
        label = case.label if pad == 0 else f"{case.label}, pad_value={pad:g}"
        cases.append(Case(label, (packed, cu, x.shape[1]), {"pad_value": pad}))
    return cases


def _unpack_variant(
    *, ignore_pad: bool = False, shift: int = 0
) -> Callable[..., np.ndarray]:
    """unpack with one thing changed: the padding left at 0, or each sequence's rows
    read from ``cu[b] + shift``."""

    def wrong(packed, cu, max_len, pad_value=0):
        cu = np.asarray(cu, dtype=np.int64)
        pad = 0 if ignore_pad else pad_value
        shape = (len(cu) - 1, max_len) + packed.shape[1:]
        out = np.full(shape, pad, dtype=packed.dtype)
        for b in range(len(cu) - 1):
            start = int(cu[b]) + shift
            rows = packed[start:start + int(cu[b + 1] - cu[b])]
            out[b, : len(rows)] = rows
        return out

    return wrong


_UNPACK_MISTAKES = [
    Mistake(
        _unpack_variant(ignore_pad=True),
        "fill the padding with pad_value (np.full(..., pad_value)), not with zeros.",
    ),
    Mistake(
        _unpack_variant(shift=1),
        "off by one: sequence b's tokens are rows cu[b] to cu[b + 1] - 1 of packed.",
    ),
]


@checker(reference=R.unpack)
def check_unpack(student_fn: Any) -> CheckResult:
    """Check ``unpack(packed, cu, max_len, pad_value=0) -> [B, max_len, ...]`` (padding
    filled with ``pad_value``)."""
    return check_with_hints(
        student_fn, R.unpack, _unpack_cases, _UNPACK_MISTAKES,
        name="unpack", exact=True, rtol=0.0, atol=0.0,
    )


def _cu_cases(rng: np.random.Generator) -> list[Case]:
    cases = [
        Case("one sequence", (np.array([5]),)),
        Case("zero lengths", (np.array([0, 3, 0, 2]),)),
        Case("empty batch", (np.zeros(0, dtype=np.int64),)),
    ]
    for i in range(4):
        lengths = rng.integers(0, 513, size=int(rng.integers(1, 33)))
        cases.append(Case(f"random draw {i + 1}", (lengths,)))
    return cases


@checker(reference=R.cu_seqlens)
def check_cu_seqlens(student_fn: Any) -> CheckResult:
    """Check ``cu_seqlens(lengths) -> [0, l_0, l_0 + l_1, ..., sum]`` (``B + 1``
    integers)."""
    return check_with_hints(
        student_fn, R.cu_seqlens, _cu_cases, _CU_MISTAKES,
        name="cu_seqlens", exact=True, rtol=0.0, atol=0.0,
    )
