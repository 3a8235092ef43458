"""Checkers for the chapter 1 exercises (notebooks 01.1, 01.2, 01.3).

Each ``check_<name>(student_fn)`` runs the student's function against the course's reference on fixed
edge cases and seeded random draws, prints a plain-words verdict and returns the
:class:`effx_lab.check.CheckResult`. What the student is asked to write:

* 01.1 ``kv_cache_bytes(n_layers, n_kv_heads, head_dim, seq_len, batch_size, bytes_per_elem) -> int``:
  ``2 * n_layers * n_kv_heads * head_dim * seq_len * batch_size * bytes_per_elem`` as an exact ``int``
  (round up to a whole byte when the product is fractional, e.g. with 0.25 byte per element).
* 01.1 ``max_batch_size(memory_bytes, shape, seq_len, weight_bytes_per_param, kv_bytes_per_elem) -> int``:
  the largest batch whose weights (``shape.params()`` parameters) plus KV cache (``shape.n_kv_heads`` K/V
  heads!) fit in ``memory_bytes``: a floor, ``0`` when even the weights do not fit.
* 01.2 ``matmul_flops_bytes(m, n, k, bytes_per_elem) -> (flops, bytes)`` for ``A[m, k] @ B[k, n]``:
  ``2 m n k`` FLOPs and ``(m k + k n + m n) * bytes_per_elem`` bytes (read A and B, write C), as ints
  (bytes rounded up).
* 01.2 ``roofline_time(flops, bytes_moved, peak_flops, peak_bandwidth) -> float``:
  ``max(flops / peak_flops, bytes_moved / peak_bandwidth)`` seconds.
* 01.3 ``pack(x, lengths) -> (packed, cu)``, ``unpack(packed, cu, max_len, pad_value=0)`` and
  ``cu_seqlens(lengths)``, NumPy in and out, as in :mod:`effx_lab.costs.reference`.

Cases include sizes where 32-bit integers overflow (a 500B-class KV cache is ~6e12 bytes), int4's half
byte, grouped-query attention (``n_kv_heads < n_heads``), zero-length sequences and trailing feature dims.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from effx_lab.check import Case, CheckResult, check_function, checker, report

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


# =========================================================================== 01.1 memory
def _kv_cases(rng: np.random.Generator) -> list[Case]:
    cases = [
        Case("tiny: one layer, one head", (1, 1, 1, 1, 1, 2)),
        Case("llama2-7b: 4096 tokens, batch 1, bf16", (32, 32, 128, 4096, 1, 2)),
        Case("GQA llama2-70b: 8 KV heads, batch 8, bf16", (80, 8, 128, 4096, 8, 2)),
        Case("int32 overflow: PaLM-540B with multi-head K/V, batch 512, context 2048", (118, 48, 256, 2048, 512, 2)),
        Case("int4: 0.5 byte per element", (32, 8, 128, 1000, 3, 0.5)),
        Case("2-bit cache (0.25 byte), 4.5 bytes: round up", (3, 1, 3, 1, 1, 0.25)),
        Case("3-bit cache (0.375 byte), 0.75 byte: round up", (1, 1, 1, 1, 1, 0.375)),
        Case("3-bit cache (0.375 byte), 2.25 bytes: round up, not to the nearest", (1, 1, 1, 3, 1, 0.375)),
        Case("1-bit cache (0.125 byte), 0.25 byte: still one whole byte", (1, 1, 1, 1, 1, 0.125)),
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


@checker(reference=kv_cache_bytes)
def check_kv_cache_bytes(student_fn: Any) -> CheckResult:
    """Check ``kv_cache_bytes(n_layers, n_kv_heads, head_dim, seq_len, batch_size, bytes_per_elem) -> int``.

    Exact: the answer must be an ``int`` (not a float, not a NumPy int32 that wrapped around).
    """
    return report(check_function(student_fn, kv_cache_bytes, _kv_cases, name="kv_cache_bytes", exact=True))


def _toy_shape(rng: np.random.Generator, i: int) -> ModelShape:
    n_heads = int(rng.choice([4, 8, 16, 32]))
    n_kv = int(rng.choice([d for d in (1, 2, 4, 8, n_heads) if n_heads % d == 0 and d < n_heads]))
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


#: A toy model with a published odd parameter count: its int4 weights take a fractional number of bytes.
_ODD = ModelShape(
    name="toy-odd", n_layers=2, d_model=8, n_heads=2, n_kv_heads=1, head_dim=4, d_ff=16, vocab_size=7, n_params=1001
)


def _exact_fit(shape: ModelShape, seq_len: int, w: float, kv: float, batches: float) -> int:
    """Memory holding the weights plus ``batches`` sequences' KV cache (rounded down to a byte)."""
    weights = param_bytes(shape.params(), w)
    per_seq = kv_cache_bytes(shape.n_layers, shape.n_kv_heads, shape.head_dim, seq_len, 1, kv)
    return weights + int(per_seq * batches)


def _batch_cases(rng: np.random.Generator) -> list[Case]:
    l7, l70, palm = PRESETS["llama2-7b"], PRESETS["llama2-70b"], PRESETS["palm-540b-mha"]
    gb = 10**9
    cases = [
        Case("llama2-7b on an 80 GB GPU, 4096 tokens, bf16", (80 * gb, l7, 4096, 2, 2)),
        Case("GQA llama2-70b (8 KV heads) on 2 x 80 GB, 4096 tokens, bf16", (160 * gb, l70, 4096, 2, 2)),
        Case("GQA llama2-70b, int4 weights, int8 cache, 8192 tokens", (80 * gb, l70, 8192, 0.5, 1)),
        Case("weights do not fit: llama2-70b bf16 on 80 GB", (80 * gb, l70, 2048, 2, 2)),
        Case("weights fit, not one sequence", (_exact_fit(l7, 4096, 2, 2, 0.5), l7, 4096, 2, 2)),
        Case("exact fit: memory = weights + 3 sequences", (_exact_fit(l7, 1024, 2, 2, 3), l7, 1024, 2, 2)),
        Case("one byte short of 3 sequences", (_exact_fit(l7, 1024, 2, 2, 3) - 1, l7, 1024, 2, 2)),
        Case("2.75 sequences fit: floor, not round", (_exact_fit(l70, 512, 2, 2, 2.75), l70, 512, 2, 2)),
        Case("int32 overflow: PaLM-540B multi-head, 8 TB", (8 * 10**12, palm, 2048, 2, 2)),
        Case(
            "int4 weights, odd parameter count: 1001 x 0.5 = 500.5 bytes round up (1 byte short of 3 sequences)",
            (_exact_fit(_ODD, 16, 0.5, 2, 3) - 1, _ODD, 16, 0.5, 2),
        ),
    ]
    for i in range(6):
        shape = _toy_shape(rng, i)
        seq = int(rng.integers(1, 8193))
        w = [2, 1, 0.5][i % 3]
        kv = [2, 1, 2][i % 3]
        memory = _exact_fit(shape, seq, w, kv, float(rng.uniform(0.3, 300.0)))
        cases.append(Case(f"random GQA draw {i + 1}: {shape.n_heads} heads, {shape.n_kv_heads} KV heads", (memory, shape, seq, w, kv)))
    return cases


@checker(reference=max_batch_size)
def check_max_batch_size(student_fn: Any) -> CheckResult:
    """Check ``max_batch_size(memory_bytes, shape, seq_len, weight_bytes_per_param, kv_bytes_per_elem) -> int``."""
    return report(check_function(student_fn, max_batch_size, _batch_cases, name="max_batch_size", exact=True))


# =========================================================================== 01.2 compute
def _matmul_cases(rng: np.random.Generator) -> list[Case]:
    cases = [
        Case("square GEMM 1024, fp32", (1024, 1024, 1024, 4)),
        Case("GEMV: n = 1 (decode), bf16", (4096, 1, 4096, 2)),
        Case("odd sizes", (3, 5, 7, 2)),
        Case("1 x 1 x 1, int4: round up the half byte", (1, 1, 1, 0.5)),
        Case("1 x 1 x 2, int4: 2.5 bytes round up (not to the even 2)", (1, 1, 2, 0.5)),
        Case("1 x 1 x 2, 2-bit (0.25 byte): 1.25 bytes round up, not to the nearest", (1, 1, 2, 0.25)),
        Case("int8 weights", (8, 11008, 4096, 1)),
        Case("int32 overflow: 65536^3", (65536, 65536, 65536, 2)),
    ]
    for i in range(6):
        m, n, k = (int(v) for v in rng.integers(1, 5000, size=3))
        cases.append(Case(f"random draw {i + 1}", (m, n, k, [4, 2, 1, 0.5][i % 4])))
    return cases


@checker(reference=matmul_flops_bytes)
def check_matmul_flops_bytes(student_fn: Any) -> CheckResult:
    """Check ``matmul_flops_bytes(m, n, k, bytes_per_elem) -> (flops, bytes)`` (two ints, in that order)."""
    return report(
        check_function(student_fn, matmul_flops_bytes, _matmul_cases, name="matmul_flops_bytes", exact=True)
    )


def _roofline_cases(rng: np.random.Generator) -> list[Case]:
    h100 = (989e12, 3.35e12)  # dense bf16 FLOP/s and HBM bytes/s of an H100 SXM (datasheet)
    cases = [
        Case("compute-bound GEMM on an H100", (2 * 8192.0**3, 3 * 8192.0**2 * 2, *h100)),
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


@checker(reference=roofline_time)
def check_roofline_time(student_fn: Any) -> CheckResult:
    """Check ``roofline_time(flops, bytes_moved, peak_flops, peak_bandwidth) -> seconds`` (relative tolerance 1e-9)."""
    return report(
        check_function(student_fn, roofline_time, _roofline_cases, name="roofline_time", rtol=1e-9, atol=1e-300)
    )


# =========================================================================== 01.3 packing
def _padded(rng: np.random.Generator, batch: int, max_len: int, feat: tuple[int, ...], lengths: Any = None):
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


@checker(reference=R.pack)
def check_pack(student_fn: Any) -> CheckResult:
    """Check ``pack(x, lengths) -> (packed[T, ...], cu[B + 1])`` against :func:`effx_lab.costs.reference.pack`."""
    return report(check_function(student_fn, R.pack, _pack_cases, name="pack", exact=True))


def _unpack_cases(rng: np.random.Generator) -> list[Case]:
    cases = []
    pads = [0.0, -1.0, 0.0, 7.5, -1e9, 0.0, 3.0]
    for (case, pad) in zip(_pack_cases(rng), pads + [0.0, -2.0, 1.0, -1.0]):
        x, lens = case.args
        packed, cu = R.pack(x, lens)
        label = case.label if pad == 0 else f"{case.label}, pad_value={pad:g}"
        cases.append(Case(label, (packed, cu, x.shape[1]), {"pad_value": pad}))
    return cases


@checker(reference=R.unpack)
def check_unpack(student_fn: Any) -> CheckResult:
    """Check ``unpack(packed, cu, max_len, pad_value=0) -> [B, max_len, ...]`` (padding filled with ``pad_value``)."""
    return report(check_function(student_fn, R.unpack, _unpack_cases, name="unpack", exact=True))


def _cu_cases(rng: np.random.Generator) -> list[Case]:
    cases = [
        Case("one sequence", (np.array([5]),)),
        Case("zero lengths", (np.array([0, 3, 0, 2]),)),
        Case("empty batch", (np.zeros(0, dtype=np.int64),)),
    ]
    for i in range(4):
        cases.append(Case(f"random draw {i + 1}", (rng.integers(0, 513, size=int(rng.integers(1, 33))),)))
    return cases


@checker(reference=R.cu_seqlens)
def check_cu_seqlens(student_fn: Any) -> CheckResult:
    """Check ``cu_seqlens(lengths) -> [0, l_0, l_0 + l_1, ..., sum]`` (``B + 1`` integers)."""
    return report(check_function(student_fn, R.cu_seqlens, _cu_cases, name="cu_seqlens", exact=True))
