"""Quantization kernels in Triton (chapter 2, sections 02.1, 02.3, 02.4 and 02.5).

Each kernel does in one pass over memory what :mod:`effx_lab.quant.reference` spells out in NumPy:

* :func:`quantize_rows` / :func:`dequantize_rows`: per-row symmetric absmax quantization, ``scale_i = max_j
  |x_ij| / qmax``, ``q_ij = clip(round(x_ij / scale_i), -qmax, qmax)`` (LLM.int8's vector-wise row scales,
  ZeroQuant's token-wise activations). The same integers as ``reference.quantize`` with
  ``compute_qparams(x, bits, True, "channel", axis=0)`` on a 2-D ``x``.
* :func:`layernorm_quantize_rows`: ZeroQuant's fused LayerNorm + token-wise quantization: a LayerNorm (weight,
  bias, eps) computed in registers and quantized per row before anything is stored, so the activation is read
  once and only int8 codes and one scale per token are written (the LayerNorm output never goes to memory).
* :func:`quantize_groups` / :func:`dequantize_groups`: the same with one scale per row *and* per block of
  ``group_size`` consecutive columns (``granularity="group", axis=-1``). A group is quantized exactly like a
  short row, so both share one kernel: ``x [M, K]`` is viewed as ``[M * K / group_size, group_size]``.
* :func:`int8_gemm`: ``int8 [M, K] x int8 [N, K]^T`` with int32 accumulation (``tl.dot(..., out_dtype=
  tl.int32)``: tensor cores on sm_80+) and the epilogue ``acc * a_scale[:, None] * b_scale[None, :] + bias``
  applied in registers before the one store (LLM.int8 vector-wise, SmoothQuant W8A8).
* :func:`w4a16_matmul` / :func:`w8a16_matmul`: weight-only quantization for decoding. The weights travel
  from memory as 4-bit (two per byte, the format of ``pack_int4``: low nibble = even ``k``, stored value
  ``q + 8``) or 8-bit integers, are turned into floats in registers, and meet the float activations in a
  ``tl.dot`` with float32 accumulation. Decode is memory bound, so moving 4x/2x fewer weight bytes than
  float16 is the whole point (``M = 1`` is the decode GEMV; any ``M`` works).

**Rounding.** Quantization rounds half to even, like ``np.round``. Triton's ``libdevice.rint`` would do it on
a GPU but the CPU interpreter cannot run libdevice calls, so :func:`_round_half_even` builds it from
``floor``: ``f = floor(y)``; round up when ``y - f > 0.5``, or when ``y - f == 0.5`` and ``f`` is odd. All of it
is exact in float32 for ``|y| < 2^22``, and here ``|y| <= qmax``. The divisions ``absmax / qmax`` and
``x / scale`` use ``tl.math.div_rn`` (IEEE round-to-nearest) because Triton's ``/`` on float32 compiles to an
approximate division on NVIDIA GPUs; with it the kernel's integers equal the reference's bit for bit.

**Weight-only scales.** When a ``BLOCK_K`` tile of the reduction lies inside one group (``group_size`` a
multiple of 16, or a single group as in :func:`w8a16_matmul`), the kernel multiplies the *integers* (exact in
float16/bfloat16 up to 256) and applies the scale once per tile to the float32 partial product:
``sum_k x_k q_nk s_n = s_n sum_k x_k q_nk``. Otherwise (small or odd group sizes) every weight is scaled
before the dot, ``w = q * s`` rounded to the activation dtype. Either way the result can differ from
"dequantize to the activation dtype, then matmul" by float16/bfloat16 rounding only.

**Hardware.** Triton's int8 ``tl.dot`` does not compile for sm_75 (T4: the ``TritonGPUAccelerateMatmul`` pass
fails), so on a CUDA GPU with compute capability < 8.0 :func:`int8_gemm` takes :func:`_int8_gemm_torch`
(``torch._int_mm``, cuBLASLt's int8 GEMM, where its shape rules allow, else an exact float64 matmul of the
integers; then the same epilogue); :func:`int8_gemm_backend` says which path a call takes and
:func:`int8_gemm_backend_reason` why. :func:`compile_report` compiles every kernel for sm_80/sm_90 without a
GPU (it needs only the ``ptxas`` shipped with Triton) and reports registers, spills and shared memory per
kernel.

**Non-finite values** (docs/ARCHITECTURE.md). :func:`quantize_rows` / :func:`quantize_groups` /
:func:`layernorm_quantize_rows` make integers and reject NaN/inf in ``x`` (``ValueError`` naming it; a NaN has
no integer code; the last also in the LayerNorm's ``weight`` and ``bias``). The other entry points
(:func:`dequantize_rows`, :func:`dequantize_groups`, :func:`int8_gemm`, :func:`w4a16_matmul`,
:func:`w8a16_matmul`) check shapes, dtypes and devices only, never values: a value check would read back from
the GPU on every call of a decode loop. Their float operands propagate NaN instead: a NaN activation row, row
scale or token scale gives a NaN output row, a NaN weight scale or bias a NaN output column; no kernel turns
a NaN into a finite number.

Block sizes are reasonable defaults (:func:`_quant_config`, :func:`_gemm_config`, :func:`_weight_only_config`),
not tuned on a GPU. On a machine without a CUDA GPU ``import effx_lab`` switches on Triton's CPU interpreter
(correct, slow); this module imports ``effx_lab`` before ``triton`` for that reason. It is not imported by
``effx_lab.quant`` itself: ``from effx_lab.quant import kernels`` when you want it.
"""
from __future__ import annotations

from typing import Any

import numpy as np

import effx_lab  # noqa: F401  (first: sets TRITON_INTERPRET=1 when there is no GPU)
from effx_lab import _triton
from effx_lab import device as _device
from effx_lab._validate import check_int, describe

from effx_lab._triton import jit as _jit
from effx_lab._triton import kernel_source
from effx_lab._triton import tl, triton

import torch

__all__ = [
    "FLOAT_DTYPES",
    "available",
    "kernel_source",
    "compile_report",
    "dequantize_groups",
    "dequantize_rows",
    "int8_gemm",
    "int8_gemm_backend",
    "int8_gemm_backend_reason",
    "layernorm_quantize_rows",
    "quantize_groups",
    "quantize_rows",
    "w4a16_matmul",
    "w8a16_matmul",
    "why_unavailable",
]

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_GEMM_OUT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.int32)



# ==========================================================================================================
# kernels
# ==========================================================================================================
@_jit
def _round_half_even(y):
    """Round a float32 tensor to the nearest integer, ties to even (``np.round``); exact for |y| < 2^22."""
    f = tl.floor(y)
    d = y - f  # in [0, 1), exact
    half = f * 0.5
    odd = tl.floor(half) != half  # f is an odd integer
    up = (d > 0.5) | ((d == 0.5) & odd)
    return tl.where(up, f + 1.0, f)


@_jit
def _quantize_rows_kernel(
    x_ptr,  # (R, L) row-major, float16 / bfloat16 / float32
    q_ptr,  # (R, L) int8
    scale_ptr,  # (R,) float32
    R, L,  # rows, row length
    scale_cap,  # largest scale whose grid end QMAX * scale fits x's dtype (_np_uniform._fit_grid)
    QMAX: tl.constexpr,  # 2^(bits-1) - 1
    BLOCK_R: tl.constexpr,  # rows per program
    BLOCK_L: tl.constexpr,  # columns per tile
    ONE_TILE: tl.constexpr,  # L <= BLOCK_L: load the rows once, keep them in registers
):  # fmt: skip
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_mask = rows < R
    base = rows.to(tl.int64)[:, None] * L  # int64: R * L may exceed 2^31
    cols = tl.arange(0, BLOCK_L)
    qmax = tl.full((BLOCK_R,), QMAX, tl.float32)

    # pass 1: absmax of every row (masked entries read as 0, which never raises a maximum of |x|)
    if ONE_TILE:
        mask = row_mask[:, None] & (cols < L)[None, :]
        x = tl.load(x_ptr + base + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        absmax = tl.max(tl.abs(x), axis=1)
    else:
        absmax = tl.zeros((BLOCK_R,), dtype=tl.float32)
        for c0 in range(0, L, BLOCK_L):
            c = c0 + cols
            mask = row_mask[:, None] & (c < L)[None, :]
            xt = tl.load(x_ptr + base + c[None, :], mask=mask, other=0.0).to(tl.float32)
            absmax = tl.maximum(absmax, tl.max(tl.abs(xt), axis=1))

    # scale = absmax / qmax; an all-zero row gets scale 1 (its values quantize to 0 anyway)
    scale = tl.math.div_rn(absmax, qmax)
    scale = tl.where(scale > 0.0, scale, 1.0)
    # a row whose absmax is x's dtype's largest value: absmax / qmax may round up so that qmax * scale
    # overflows; the reference then lowers the scale to the cap (only such rows: the cap is >= max / 127)
    scale = tl.minimum(scale, scale_cap)
    tl.store(scale_ptr + rows, scale, mask=row_mask)

    # pass 2: q = clip(round(x / scale), -qmax, qmax), round half to even
    if ONE_TILE:
        y = tl.math.div_rn(x, tl.broadcast_to(scale[:, None], (BLOCK_R, BLOCK_L)))
        q = tl.minimum(tl.maximum(_round_half_even(y), -QMAX), QMAX)
        tl.store(q_ptr + base + cols[None, :], q.to(tl.int8), mask=mask)
    else:
        for c0 in range(0, L, BLOCK_L):
            c = c0 + cols
            mask = row_mask[:, None] & (c < L)[None, :]
            xt = tl.load(x_ptr + base + c[None, :], mask=mask, other=0.0).to(tl.float32)
            y = tl.math.div_rn(xt, tl.broadcast_to(scale[:, None], (BLOCK_R, BLOCK_L)))
            q = tl.minimum(tl.maximum(_round_half_even(y), -QMAX), QMAX)
            tl.store(q_ptr + base + c[None, :], q.to(tl.int8), mask=mask)


@_jit
def _layernorm_quantize_kernel(
    x_ptr,  # (R, L) row-major, float16 / bfloat16 / float32
    w_ptr,  # (L,) float32 LayerNorm weight
    b_ptr,  # (L,) float32 LayerNorm bias
    q_ptr,  # (R, L) int8
    scale_ptr,  # (R,) float32
    R, L,  # rows (tokens), row length (hidden size)
    eps,  # float32
    scale_cap,  # as in _quantize_rows_kernel
    QMAX: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_L: tl.constexpr,
    ONE_TILE: tl.constexpr,  # L <= BLOCK_L: x is read once and stays in registers
):  # fmt: skip
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_mask = rows < R
    base = rows.to(tl.int64)[:, None] * L
    cols = tl.arange(0, BLOCK_L)
    qmax = tl.full((BLOCK_R,), QMAX, tl.float32)
    length = tl.full((BLOCK_R,), 0.0, tl.float32) + L  # L as float32, for exact divisions

    if ONE_TILE:
        # one read of x; mean, variance, LayerNorm, absmax and codes all from registers
        mask = row_mask[:, None] & (cols < L)[None, :]
        x = tl.load(x_ptr + base + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        mean = tl.math.div_rn(tl.sum(x, axis=1), length)
        xc = tl.where(mask, x - mean[:, None], 0.0)
        var = tl.math.div_rn(tl.sum(xc * xc, axis=1), length)
        rstd = tl.math.div_rn(tl.full((BLOCK_R,), 1.0, tl.float32), tl.sqrt_rn(var + eps))
        w = tl.load(w_ptr + cols, mask=cols < L, other=0.0)
        b = tl.load(b_ptr + cols, mask=cols < L, other=0.0)
        y = tl.where(mask, xc * rstd[:, None] * w[None, :] + b[None, :], 0.0)
        absmax = tl.max(tl.abs(y), axis=1)
    else:
        # rows longer than a tile: mean, variance, absmax and codes in four passes over tiles of x
        acc = tl.zeros((BLOCK_R,), dtype=tl.float32)
        for c0 in range(0, L, BLOCK_L):
            c = c0 + cols
            mask = row_mask[:, None] & (c < L)[None, :]
            acc += tl.sum(tl.load(x_ptr + base + c[None, :], mask=mask, other=0.0).to(tl.float32), axis=1)
        mean = tl.math.div_rn(acc, length)
        acc = tl.zeros((BLOCK_R,), dtype=tl.float32)
        for c0 in range(0, L, BLOCK_L):
            c = c0 + cols
            mask = row_mask[:, None] & (c < L)[None, :]
            xt = tl.load(x_ptr + base + c[None, :], mask=mask, other=0.0).to(tl.float32)
            xc = tl.where(mask, xt - mean[:, None], 0.0)
            acc += tl.sum(xc * xc, axis=1)
        var = tl.math.div_rn(acc, length)
        rstd = tl.math.div_rn(tl.full((BLOCK_R,), 1.0, tl.float32), tl.sqrt_rn(var + eps))
        absmax = tl.zeros((BLOCK_R,), dtype=tl.float32)
        for c0 in range(0, L, BLOCK_L):
            c = c0 + cols
            mask = row_mask[:, None] & (c < L)[None, :]
            xt = tl.load(x_ptr + base + c[None, :], mask=mask, other=0.0).to(tl.float32)
            w = tl.load(w_ptr + c, mask=c < L, other=0.0)
            b = tl.load(b_ptr + c, mask=c < L, other=0.0)
            y = tl.where(mask, (xt - mean[:, None]) * rstd[:, None] * w[None, :] + b[None, :], 0.0)
            absmax = tl.maximum(absmax, tl.max(tl.abs(y), axis=1))

    scale = tl.math.div_rn(absmax, qmax)
    scale = tl.where(scale > 0.0, scale, 1.0)  # an all-zero row: scale 1, codes 0
    scale = tl.minimum(scale, scale_cap)
    tl.store(scale_ptr + rows, scale, mask=row_mask)

    if ONE_TILE:
        yq = tl.math.div_rn(y, tl.broadcast_to(scale[:, None], (BLOCK_R, BLOCK_L)))
        q = tl.minimum(tl.maximum(_round_half_even(yq), -QMAX), QMAX)
        tl.store(q_ptr + base + cols[None, :], q.to(tl.int8), mask=mask)
    else:
        for c0 in range(0, L, BLOCK_L):
            c = c0 + cols
            mask = row_mask[:, None] & (c < L)[None, :]
            xt = tl.load(x_ptr + base + c[None, :], mask=mask, other=0.0).to(tl.float32)
            w = tl.load(w_ptr + c, mask=c < L, other=0.0)
            b = tl.load(b_ptr + c, mask=c < L, other=0.0)
            y = (xt - mean[:, None]) * rstd[:, None] * w[None, :] + b[None, :]
            yq = tl.math.div_rn(y, tl.broadcast_to(scale[:, None], (BLOCK_R, BLOCK_L)))
            q = tl.minimum(tl.maximum(_round_half_even(yq), -QMAX), QMAX)
            tl.store(q_ptr + base + c[None, :], q.to(tl.int8), mask=mask)


@_jit
def _dequantize_rows_kernel(
    q_ptr,  # (R, L) int8
    scale_ptr,  # (R,) float32
    out_ptr,  # (R, L) float16 / bfloat16 / float32
    R, L,
    BLOCK_R: tl.constexpr,
    BLOCK_L: tl.constexpr,
):  # fmt: skip
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.program_id(1) * BLOCK_L + tl.arange(0, BLOCK_L)
    row_mask = rows < R
    mask = row_mask[:, None] & (cols < L)[None, :]
    offs = rows.to(tl.int64)[:, None] * L + cols[None, :]
    q = tl.load(q_ptr + offs, mask=mask, other=0).to(tl.float32)
    scale = tl.load(scale_ptr + rows, mask=row_mask, other=1.0)
    # x_hat = q * scale in float32 (as the reference), then rounded once to the output dtype
    tl.store(out_ptr + offs, (q * scale[:, None]).to(out_ptr.dtype.element_ty), mask=mask)


@_jit
def _int8_gemm_kernel(
    a_ptr,  # (M, K) int8, row-major
    b_ptr,  # (N, K) int8, row-major (nn.Linear layout: the kernel reads it as b^T)
    sa_ptr,  # (M,) float32 row scales (read only when SCALED)
    sb_ptr,  # (N,) float32 column scales (read only when SCALED)
    bias_ptr,  # (N,) float32 (read only when HAS_BIAS)
    c_ptr,  # (M, N) out dtype
    M, N, K,
    SCALED: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    EVEN_K: tl.constexpr,  # K % BLOCK_K == 0: no mask along K
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):  # fmt: skip
    rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    # rows past the end of a or b re-read the last row instead of being masked (no 2-D masks in the loop);
    # what they produce lands in rows/columns the final store masks out
    ra = tl.minimum(rm, M - 1)
    rb = tl.minimum(rn, N - 1)
    a_ptrs = a_ptr + ra.to(tl.int64)[:, None] * K + rk[None, :]  # int64: M * K may exceed 2^31
    b_ptrs = b_ptr + rb.to(tl.int64)[:, None] * K + rk[None, :]

    # int8 x int8 products summed in int32: exact as long as K * 128 * 128 < 2^31 (K < 131072)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    for k0 in range(0, K, BLOCK_K):
        if EVEN_K:
            a = tl.load(a_ptrs)
            b = tl.load(b_ptrs)
        else:
            k_mask = (k0 + rk)[None, :] < K
            a = tl.load(a_ptrs, mask=k_mask, other=0)
            b = tl.load(b_ptrs, mask=k_mask, other=0)
        acc = tl.dot(a, tl.trans(b), acc, out_dtype=tl.int32)
        a_ptrs += BLOCK_K
        b_ptrs += BLOCK_K

    out_mask = (rm < M)[:, None] & (rn < N)[None, :]
    c_offs = rm.to(tl.int64)[:, None] * N + rn[None, :]
    if SCALED or HAS_BIAS:
        # epilogue in registers: y = acc * sa[:, None] * sb[None, :] + bias (one float32 pass, one store)
        y = acc.to(tl.float32)
        if SCALED:
            y = y * tl.load(sa_ptr + ra)[:, None] * tl.load(sb_ptr + rb)[None, :]
        if HAS_BIAS:
            y += tl.load(bias_ptr + rb)[None, :]
        tl.store(c_ptr + c_offs, y.to(c_ptr.dtype.element_ty), mask=out_mask)
    else:
        tl.store(c_ptr + c_offs, acc.to(c_ptr.dtype.element_ty), mask=out_mask)


@_jit
def _weight_only_kernel(
    x_ptr,  # (M, K) float16 / bfloat16 / float32 activations
    w_ptr,  # INT4: (N, K/2) uint8, two weights per byte; else (N, K) int8
    s_ptr,  # (N, n_groups) float32 scales
    bias_ptr,  # (N,) float32 (read only when HAS_BIAS)
    out_ptr,  # (M, N), dtype of x
    M, N, K,
    G,  # group size (K itself for a single group per row)
    n_groups,  # K / G
    INT4: tl.constexpr,
    SCALE_PER_TILE: tl.constexpr,  # every BLOCK_K tile lies inside one group
    HAS_BIAS: tl.constexpr,
    EVEN_K: tl.constexpr,  # K % BLOCK_K == 0: no mask along K
    DOT_DTYPE: tl.constexpr,  # operand dtype of tl.dot (x's dtype; see _triton.dot_dtype)
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,  # even, so a tile covers whole bytes of packed int4 weights
):  # fmt: skip
    rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    rx = tl.minimum(rm, M - 1)  # rows past the end re-read the last row; the store masks them out
    rw = tl.minimum(rn, N - 1)
    x_ptrs = x_ptr + rx.to(tl.int64)[:, None] * K + rk[None, :]
    if INT4:
        # weight k sits in byte k // 2: the low nibble for even k, the high nibble for odd k, stored + 8.
        # Both nibbles of a byte are loaded by neighbouring lanes (the second load hits the cache).
        w_ptrs = w_ptr + rw.to(tl.int64)[:, None] * (K // 2) + (rk // 2)[None, :]
        shift = ((rk % 2) * 4)[None, :]
    else:
        w_ptrs = w_ptr + rw.to(tl.int64)[:, None] * K + rk[None, :]
    s_row = s_ptr + rw.to(tl.int64) * n_groups

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        if EVEN_K:
            x = tl.load(x_ptrs)
            wq = tl.load(w_ptrs)
        else:
            k_mask = (k0 + rk)[None, :] < K
            x = tl.load(x_ptrs, mask=k_mask, other=0.0)
            wq = tl.load(w_ptrs, mask=k_mask, other=0)
        x = x.to(DOT_DTYPE)
        if INT4:
            wq = ((wq.to(tl.int32) >> shift) & 0xF) - 8
        if SCALE_PER_TILE:
            # the whole tile is in group k0 // G: multiply integers (exact in float16/bfloat16), scale after
            part = tl.dot(x, tl.trans(wq.to(DOT_DTYPE)), input_precision="ieee")
            acc += part * tl.load(s_row + k0 // G)[None, :]
        else:
            # groups smaller than a tile: scale every weight, w = q * s, rounded to the dot dtype
            g = (k0 + rk) // G
            if not EVEN_K:
                g = tl.minimum(g, n_groups - 1)  # columns past K (x reads 0 there) must not read past the row
            s = tl.load(s_row[:, None] + g[None, :])
            w = (wq.to(tl.float32) * s).to(DOT_DTYPE)
            acc = tl.dot(x, tl.trans(w), acc, input_precision="ieee")
        x_ptrs += BLOCK_K
        if INT4:
            w_ptrs += BLOCK_K // 2
        else:
            w_ptrs += BLOCK_K

    if HAS_BIAS:
        acc += tl.load(bias_ptr + rw)[None, :]
    out_offs = rm.to(tl.int64)[:, None] * N + rn[None, :]
    tl.store(out_ptr + out_offs, acc.to(out_ptr.dtype.element_ty), mask=(rm < M)[:, None] & (rn < N)[None, :])


# ==========================================================================================================
# availability
# ==========================================================================================================
def _kernel_is_interpreted() -> bool:
    return _triton.is_interpreted(_quantize_rows_kernel)


def why_unavailable() -> str | None:
    """Why the kernels cannot run here, or ``None`` when they can.

    They run with a CUDA GPU (compiled) or, without one, in Triton's CPU interpreter, which must have been
    switched on (``TRITON_INTERPRET=1``) before this module defined its kernels.
    """
    return _triton.why_unavailable(_quantize_rows_kernel, "effx_lab.quant.kernels")


def available() -> bool:
    """Whether the Triton kernels can run here (GPU, or CPU interpreter); see :func:`why_unavailable`."""
    return why_unavailable() is None


def _require_available() -> None:
    reason = why_unavailable()
    if reason is not None:
        raise RuntimeError(f"the Triton kernels cannot run here: {reason}")


# ==========================================================================================================
# validation helpers
# ==========================================================================================================
def _check_tensor(name: str, value: Any, numpy_alt: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch tensor, got {describe(value)}; {numpy_alt}")
    return value


def _check_float_input(name: str, value: Any, numpy_alt: str) -> torch.Tensor:
    t = _check_tensor(name, value, numpy_alt)
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must have dtype float16, bfloat16 or float32, got {t.dtype}")
    return t


def _check_int_dtype(name: str, t: torch.Tensor, dtype: torch.dtype, what: str) -> None:
    if t.dtype != dtype:
        raise TypeError(f"{name} must have dtype {dtype} ({what}), got {t.dtype}")


def _check_scale(name: str, value: Any, shape: tuple[int, ...], ref: torch.Tensor, ref_name: str) -> torch.Tensor:
    """A float tensor of exactly ``shape`` on ``ref``'s device; returned as contiguous float32."""
    t = _check_tensor(name, value, "the kernels take torch tensors")
    if not t.dtype.is_floating_point:
        raise TypeError(f"{name} must have a float dtype, got {t.dtype}")
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)} to match {ref_name}, got {tuple(t.shape)}")
    _check_same_device(name, t, ref, ref_name)
    return t.to(torch.float32).contiguous()


def _check_same_device(name: str, t: torch.Tensor, ref: torch.Tensor, ref_name: str) -> None:
    if t.device != ref.device:
        raise ValueError(f"{name} must be on the device of {ref_name} ({ref.device}), got {t.device}")


def _check_kernel_device(name: str, t: torch.Tensor) -> None:
    if t.device.type not in ("cpu", "cuda"):
        raise ValueError(f"the Triton kernels run on CUDA (or CPU, interpreted) tensors; {name} is on {t.device}")
    if not _kernel_is_interpreted() and t.device.type != "cuda":
        raise ValueError(f"the compiled Triton kernels need CUDA tensors, {name} is on {t.device}")


def _check_no_grad(**tensors: torch.Tensor | None) -> None:
    if not torch.is_grad_enabled():
        return
    names = [name for name, t in tensors.items() if t is not None and t.requires_grad]
    if names:
        raise ValueError(
            f"{', '.join(names)} require(s) grad, but the Triton kernels have no backward: the result would "
            "silently carry no gradient; call them under torch.no_grad() or pass detached tensors "
            "(use effx_lab.quant.torch_ops for training)"
        )


def _check_bits(bits: Any) -> int:
    return check_int("bits", bits, min_value=2, max_value=8)


def _check_out_dtype(name: str, dtype: Any, choices: tuple[torch.dtype, ...]) -> torch.dtype:
    if not isinstance(dtype, torch.dtype) or dtype not in choices:
        want = ", ".join(str(c) for c in choices)
        raise TypeError(f"{name} must be one of {want}, got {describe(dtype)}")
    return dtype


def _check_finite(name: str, x: torch.Tensor) -> None:
    if x.numel() and not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} must contain only finite values (no NaN/inf): a scale of inf/NaN has no integers")


def _rows_of(name: str, x: torch.Tensor) -> tuple[int, int]:
    """``(M, K)`` of a ``[..., K]`` tensor: every leading dimension flattened into rows."""
    if x.ndim < 1:
        raise ValueError(f"{name} must have at least 1 dimension [..., K], got shape {tuple(x.shape)}")
    k = int(x.shape[-1])
    if k == 0:
        raise ValueError(f"{name} must have a non-empty last dimension K, got shape {tuple(x.shape)}")
    return x.numel() // k, k


def _store_dtype(dtype: torch.dtype) -> torch.dtype:
    """dtype of the buffer a kernel writes for a result of ``dtype``: float32 for bfloat16 in the interpreter.

    Triton 3.9's interpreter converts float32 to bfloat16 by truncating the mantissa (its cast passes no
    rounding mode), where a GPU rounds to nearest even (``cvt.rn.bf16.f32``); writing float32 and letting
    torch round (to nearest even) keeps the interpreter's results equal to the GPU's.
    """
    if dtype == torch.bfloat16 and _kernel_is_interpreted():
        return torch.float32
    return dtype


# ==========================================================================================================
# launch configurations (defaults from the register/shared-memory use compile_report shows; not GPU-tuned)
# ==========================================================================================================
def _quant_config(length: int) -> tuple[int, int, bool]:
    """``(BLOCK_R, BLOCK_L, ONE_TILE)`` of the quantize kernel for rows of ``length`` elements.

    A row of up to 4096 elements is held in registers in one tile (``BLOCK_R * BLOCK_L <= 4096`` values per
    program, 32 per thread with 4 warps), so ``x`` is read from memory once; longer rows take two passes
    (absmax, then quantize) over 1024-column tiles, reading ``x`` twice.
    """
    block_l = triton.next_power_of_2(length)
    if block_l <= 4096:
        return max(1, min(64, 4096 // block_l)), block_l, True
    return 4, 1024, False


def _dequant_config(length: int) -> tuple[int, int]:
    """``(BLOCK_R, BLOCK_L)`` of the dequantize kernel: 2048 values per program (a 2-D grid covers long rows;
    4096 spill a few bytes on sm_80)."""
    block_l = min(1024, triton.next_power_of_2(length))
    return max(1, 2048 // block_l), block_l


def _gemm_config(m: int, n: int, k: int) -> tuple[int, int, int, int, int]:
    """``(BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages)`` of :func:`int8_gemm`.

    Blocks are >= 16 (``tl.dot``) and the K tile >= 32 (int8 tensor-core instructions are 32 deep). Checked
    with :func:`compile_report`: no register spills on sm_80/sm_90 for these (a 128 x 128 tile with 4 warps
    spills; with 8 it does not).
    """
    block_k = 64 if k > 32 else 32
    if m <= 16:
        return 16, 64, block_k, 4, 3
    if m <= 64:
        return 64, 64, block_k, 4, 3
    return 128, 128, block_k, 8, 3


def _weight_only_config(
    m: int, group_size: int, n_groups: int, dtype: torch.dtype
) -> tuple[int, int, int, bool, int]:
    """``(BLOCK_M, BLOCK_N, BLOCK_K, SCALE_PER_TILE, num_warps)`` of the weight-only kernel.

    Decode (``M <= 16``) uses 16 x 32 output tiles, so that a 4096-wide layer spreads over 128 programs, with
    4 warps; larger ``M`` 64 x 64 tiles with 8 warps. ``BLOCK_K`` is 128 (decode) or 64 for 16-bit
    activations and half that for float32 (float32 operand tiles take twice the registers), and is capped
    by the largest power of two dividing ``group_size``: when that is >= 16 every tile lies in one group and
    the scale is applied once per tile (``SCALE_PER_TILE``); a single group (per-channel scales) allows any
    tile. Otherwise each weight is scaled before the dot. Checked with :func:`compile_report`: no register
    spills on sm_80/sm_90.
    """
    decode = m <= 16
    block_m, block_n, num_warps = (16, 32, 4) if decode else (64, 64, 8)
    wide = 128 if decode else 64
    block_k = wide if dtype != torch.float32 else wide // 2
    if n_groups == 1:
        return block_m, block_n, block_k, True, num_warps
    pow2 = group_size & -group_size  # largest power of two dividing group_size
    if pow2 >= 16:
        return block_m, block_n, min(block_k, pow2), True, num_warps
    return block_m, block_n, min(block_k, 64), False, num_warps


# ==========================================================================================================
# quantize / dequantize
# ==========================================================================================================
def _scale_cap(qmax: int, dtype: torch.dtype) -> float:
    """The largest float32 scale ``s`` with ``qmax * s`` within ``dtype``'s largest value: the cap that
    :func:`effx_lab.quant.reference.compute_qparams` applies (its ``_fit_grid``, zero point 0), so that a row
    reaching the dtype's limit gets the reference's scale and dequantizes to finite values."""
    from effx_lab.quant._np_uniform import _fit_grid  # NumPy, only here

    cap = _fit_grid(np.full(1, np.inf, dtype=np.float32), np.zeros(1, dtype=np.int32), -qmax, qmax,
                    float(torch.finfo(dtype).max))
    return float(cap[0])


def _quantize_2d(x2: torch.Tensor, qmax: int) -> tuple[torch.Tensor, torch.Tensor]:
    r, length = x2.shape
    q = torch.empty((r, length), dtype=torch.int8, device=x2.device)
    scale = torch.empty((r,), dtype=torch.float32, device=x2.device)
    if r:
        block_r, block_l, one_tile = _quant_config(length)
        _quantize_rows_kernel[(triton.cdiv(r, block_r),)](
            x2, q, scale, r, length, _scale_cap(qmax, x2.dtype), QMAX=qmax, BLOCK_R=block_r, BLOCK_L=block_l, ONE_TILE=one_tile,
            num_warps=4, enable_fp_fusion=False,
        )
    return q, scale


def _dequantize_2d(q2: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    r, length = q2.shape
    out = torch.empty((r, length), dtype=_store_dtype(dtype), device=q2.device)
    if r:
        block_r, block_l = _dequant_config(length)
        grid = (triton.cdiv(r, block_r), triton.cdiv(length, block_l))
        _dequantize_rows_kernel[grid](
            q2, scale, out, r, length, BLOCK_R=block_r, BLOCK_L=block_l, num_warps=4, enable_fp_fusion=False
        )
    return out.to(dtype)


def quantize_rows(x: torch.Tensor, bits: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row symmetric absmax quantization of ``x [..., K]``: ``(q int8 [..., K], scale float32 [...])``.

    ``scale = max_k |x[..., k]| / qmax`` with ``qmax = 2^(bits-1) - 1`` (restricted range: int8 uses -127..127),
    ``q = clip(round(x / scale), -qmax, qmax)`` rounding half to even; an all-zero row gets ``scale = 1``.
    Every leading dimension is a row (a token). For 2-D ``x`` the integers and scales are exactly those of
    ``reference.quantize`` / ``compute_qparams(x, bits, True, "channel", axis=0)`` (float16/bfloat16 input is
    upcast to float32 first, as there). ``x``: float16/bfloat16/float32, finite, ``K >= 1``; ``bits`` in 2..8.
    """
    _require_available()
    x = _check_float_input("x", x, "use effx_lab.quant.reference.compute_qparams/quantize for NumPy arrays")
    bits = _check_bits(bits)
    m, k = _rows_of("x", x)
    _check_kernel_device("x", x)
    _check_no_grad(x=x)
    _check_finite("x", x)
    q, scale = _quantize_2d(x.reshape(m, k).contiguous(), 2 ** (bits - 1) - 1)
    return q.reshape(x.shape), scale.reshape(x.shape[:-1])


def layernorm_quantize_rows(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-5, bits: int = 8
) -> tuple[torch.Tensor, torch.Tensor]:
    """LayerNorm fused with token-wise quantization (ZeroQuant): ``(q int8 [..., D], scale float32 [...])``.

    One program holds a block of rows: it reads ``x`` once (rows of up to 4096 elements stay in registers;
    longer rows take four passes over tiles), computes ``y = (x - mean) / sqrt(var + eps) * weight + bias`` in
    float32 (biased variance, ``torch.nn.LayerNorm``'s), then ``scale = max|y| / qmax`` per row and ``q =
    clip(round(y / scale), -qmax, qmax)`` (round half to even; an all-zero row gets scale 1), and writes only
    ``q`` and ``scale``: ``y`` never goes to memory. The reference is
    ``effx_lab.quant.reference.layernorm_quantize_rows`` (or ``torch_ops``'s twin); against it, computed from
    the same input in float64, a code can differ by 1 where ``y / scale`` lies within float32 rounding of a
    half-integer, and the scales agree to float32 rounding. ``x``: float16/bfloat16/float32 ``[..., D]``,
    finite; ``weight``, ``bias``: float ``[D]`` on x's device; ``eps > 0``; ``bits`` in 2..8.
    """
    _require_available()
    x = _check_float_input("x", x, "use effx_lab.quant.reference.layernorm_quantize_rows for NumPy arrays")
    m, d = _rows_of("x", x)
    weight = _check_scale("weight", weight, (d,), x, "x's last dimension")
    bias = _check_scale("bias", bias, (d,), x, "x's last dimension")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not (0.0 < float(eps) < float("inf")):
        raise ValueError(f"eps must be a positive finite number, got {eps!r}")
    bits = _check_bits(bits)
    _check_kernel_device("x", x)
    _check_no_grad(x=x, weight=weight, bias=bias)
    _check_finite("x", x)
    _check_finite("weight", weight)
    _check_finite("bias", bias)
    qmax = 2 ** (bits - 1) - 1
    x2 = x.reshape(m, d).contiguous()
    q = torch.empty((m, d), dtype=torch.int8, device=x.device)
    scale = torch.empty((m,), dtype=torch.float32, device=x.device)
    if m:
        block_r, block_l, one_tile = _quant_config(d)
        _layernorm_quantize_kernel[(triton.cdiv(m, block_r),)](
            x2, weight, bias, q, scale, m, d, float(eps), _scale_cap(qmax, torch.float32),
            QMAX=qmax, BLOCK_R=block_r, BLOCK_L=block_l, ONE_TILE=one_tile,
            num_warps=4, enable_fp_fusion=False,
        )  # fmt: skip
    return q.reshape(x.shape), scale.reshape(x.shape[:-1])


def dequantize_rows(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``x_hat = q * scale[..., None]`` computed in float32 and returned as ``dtype``: the inverse of
    :func:`quantize_rows`. ``q``: int8 ``[..., K]``; ``scale``: float ``[...]`` (``q.shape[:-1]``); ``dtype``:
    float16, bfloat16 or float32. Any int8 value is accepted (the bit width is not needed to dequantize)."""
    _require_available()
    q = _check_tensor("q", q, "use effx_lab.quant.reference.dequantize for NumPy arrays")
    _check_int_dtype("q", q, torch.int8, "from quantize_rows")
    m, k = _rows_of("q", q)
    scale = _check_scale("scale", scale, tuple(q.shape[:-1]), q, "q.shape[:-1]")
    dtype = _check_out_dtype("dtype", dtype, FLOAT_DTYPES)
    _check_kernel_device("q", q)
    return _dequantize_2d(q.reshape(m, k).contiguous(), scale.reshape(m), dtype).reshape(q.shape)


def quantize_groups(x: torch.Tensor, group_size: int, bits: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-group symmetric absmax quantization: ``(q int8 [..., K], scales float32 [..., K / group_size])``.

    Group ``g`` of a row covers columns ``g * group_size .. (g + 1) * group_size - 1`` and has its own
    ``scale = max |x| / qmax`` over them; otherwise as :func:`quantize_rows` (round half to even, all-zero
    group -> scale 1). For 2-D ``x`` equal to ``reference.compute_qparams(x, bits, True, "group", axis=-1,
    group_size=group_size)`` and ``reference.quantize``. ``group_size`` must divide ``K``.
    """
    _require_available()
    x = _check_float_input("x", x, "use effx_lab.quant.reference.compute_qparams/quantize for NumPy arrays")
    group_size = check_int("group_size", group_size, min_value=1)
    bits = _check_bits(bits)
    m, k = _rows_of("x", x)
    if k % group_size:
        raise ValueError(f"group_size={group_size} must divide the last dimension K={k} of x")
    _check_kernel_device("x", x)
    _check_no_grad(x=x)
    _check_finite("x", x)
    n_groups = k // group_size
    # a group is a short row: x [M, K] viewed as [M * n_groups, group_size]
    q, scale = _quantize_2d(x.reshape(m * n_groups, group_size).contiguous(), 2 ** (bits - 1) - 1)
    return q.reshape(x.shape), scale.reshape(*x.shape[:-1], n_groups)


def dequantize_groups(q: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The inverse of :func:`quantize_groups`: ``x_hat[..., k] = q[..., k] * scales[..., k // group_size]``
    in float32, returned as ``dtype``. ``q``: int8 ``[..., K]``; ``scales``: float ``[..., n_groups]`` with
    ``n_groups`` dividing ``K`` (``group_size = K / n_groups`` is read from the shapes)."""
    _require_available()
    q = _check_tensor("q", q, "use effx_lab.quant.reference.dequantize for NumPy arrays")
    _check_int_dtype("q", q, torch.int8, "from quantize_groups")
    m, k = _rows_of("q", q)
    _check_tensor("scales", scales, "the kernels take torch tensors")
    if scales.ndim != q.ndim or tuple(scales.shape[:-1]) != tuple(q.shape[:-1]) or scales.shape[-1] < 1:
        raise ValueError(
            f"scales must have shape (*q.shape[:-1], n_groups) = {(*q.shape[:-1], 'n_groups')}, "
            f"got {tuple(scales.shape)}"
        )
    n_groups = int(scales.shape[-1])
    if k % n_groups:
        raise ValueError(f"scales' last dimension n_groups={n_groups} must divide q's last dimension K={k}")
    scales = _check_scale("scales", scales, tuple(scales.shape), q, "q")
    dtype = _check_out_dtype("dtype", dtype, FLOAT_DTYPES)
    _check_kernel_device("q", q)
    group_size = k // n_groups
    out = _dequantize_2d(q.reshape(m * n_groups, group_size).contiguous(), scales.reshape(-1), dtype)
    return out.reshape(q.shape)


# ==========================================================================================================
# int8 x int8 -> int32 GEMM
# ==========================================================================================================
def _int8_backend(device_type: str, capability: tuple[int, int] | None, interpreted: bool) -> str:
    """The decision of :func:`int8_gemm_backend`, as a pure function (tested for every case)."""
    if device_type == "cuda" and (capability or (0, 0)) < (8, 0):
        return "torch"  # T4 (sm_75) and older: Triton's int8 tl.dot does not compile
    if interpreted:
        return "interpreter"
    return "triton" if device_type == "cuda" else "torch"


def _int8_backend_reason(device_type: str, capability: tuple[int, int] | None, interpreted: bool) -> str:
    """Why :func:`_int8_backend` chose its path, in one sentence (tested for every case)."""
    backend = _int8_backend(device_type, capability, interpreted)
    if backend == "triton":
        return f"Triton's int8 tl.dot compiled for sm_{capability[0]}{capability[1]} (int8 tensor cores)"
    if backend == "interpreter":
        return "no compiled Triton here: the kernel runs in Triton's CPU interpreter (exact, slow)"
    if device_type == "cuda":
        cap = "unknown" if capability is None else f"sm_{capability[0]}{capability[1]}"
        return (
            f"Triton's int8 tl.dot needs sm_80+ and this GPU is {cap}: int8_gemm uses torch._int_mm "
            "(cuBLASLt int8) where its shape rules allow (M > 16, K and N multiples of 8), else an exact "
            "float64 matmul of the integers, with the same epilogue"
        )
    return (
        f"the Triton kernels are compiled for the GPU, and these are {device_type} tensors: int8_gemm uses "
        "torch_ops.int8_matmul (exact) with the same epilogue"
    )


def int8_gemm_backend(device: Any = None) -> str:
    """Which path :func:`int8_gemm` takes for tensors on ``device`` (default: :func:`effx_lab.device.torch_device`):
    ``"triton"`` (compiled, CUDA sm_80+), ``"interpreter"`` (Triton's CPU interpreter) or ``"torch"``
    (:func:`_int8_gemm_torch`: on a CUDA GPU below sm_80, e.g. a T4, where Triton's int8 ``tl.dot`` does not
    compile, and for CPU tensors on a machine whose kernels are compiled for its GPU).
    :func:`int8_gemm_backend_reason` says why, in words."""
    dev = _device.resolve_torch_device(device)
    cap = _device.capability() if dev.type == "cuda" else None
    return _int8_backend(dev.type, cap, _kernel_is_interpreted())


def int8_gemm_backend_reason(device: Any = None) -> str:
    """One sentence saying why :func:`int8_gemm` takes the path :func:`int8_gemm_backend` names on ``device``;
    e.g. on a T4: "Triton's int8 tl.dot needs sm_80+ and this GPU is sm_75: int8_gemm uses torch._int_mm ..."."""
    dev = _device.resolve_torch_device(device)
    cap = _device.capability() if dev.type == "cuda" else None
    return _int8_backend_reason(dev.type, cap, _kernel_is_interpreted())


def _int8_gemm_torch(
    a_q: torch.Tensor,
    b_q: torch.Tensor,
    a_scale: torch.Tensor | None,
    b_scale: torch.Tensor | None,
    bias: torch.Tensor | None,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """The fallback of :func:`int8_gemm` (inputs already validated): the exact int32 ``a_q @ b_q^T`` of
    ``torch_ops.int8_matmul`` (``torch._int_mm`` on CUDA where its shape rules allow, else exact float GEMMs of
    the integers), then the same float32 epilogue as the kernel."""
    from effx_lab.quant.torch_ops import int8_matmul  # torch only, only here

    acc = int8_matmul(a_q, b_q)
    if a_scale is None and bias is None:
        return acc.to(out_dtype)
    y = acc.to(torch.float32)
    if a_scale is not None:
        y = y * a_scale[:, None] * b_scale[None, :]
    if bias is not None:
        y = y + bias[None, :]
    return y.to(out_dtype)


def int8_gemm(
    a_q: torch.Tensor,
    b_q: torch.Tensor,
    a_scale: torch.Tensor | None,
    b_scale: torch.Tensor | None,
    bias: torch.Tensor | None = None,
    out_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """``(a_q @ b_q^T) * a_scale[:, None] * b_scale[None, :] + bias``: int8 GEMM, int32 accumulation, fused epilogue.

    ``a_q``: int8 ``[M, K]`` (quantized activations, one scale per row/token: :func:`quantize_rows`);
    ``b_q``: int8 ``[N, K]`` (weights in nn.Linear layout, one scale per output channel); ``a_scale`` float
    ``[M]``, ``b_scale`` float ``[N]``, ``bias`` float ``[N]`` or ``None`` (all used in float32). The integer
    products are summed exactly in int32 (``K < 131072``), converted to float32 once, scaled and stored as
    ``out_dtype`` (float32, float16 or bfloat16). Pass ``a_scale = b_scale = None`` for the unscaled
    accumulator; with ``out_dtype=torch.int32`` (and no bias) that is the exact int32 ``a_q @ b_q^T``.

    On a CUDA GPU below sm_80 (T4) Triton's int8 ``tl.dot`` does not compile and this function computes the
    same thing with :func:`_int8_gemm_torch` instead, as it does for CPU tensors on a machine with a GPU
    (see :func:`int8_gemm_backend`).
    """
    _require_available()
    a_q = _check_tensor("a_q", a_q, "use effx_lab.quant.reference's NumPy functions for arrays")
    b_q = _check_tensor("b_q", b_q, "use effx_lab.quant.reference's NumPy functions for arrays")
    _check_int_dtype("a_q", a_q, torch.int8, "quantized activations")
    _check_int_dtype("b_q", b_q, torch.int8, "quantized weights")
    if a_q.ndim != 2 or b_q.ndim != 2:
        raise ValueError(
            f"a_q and b_q must be 2-D [M, K] and [N, K], got shapes {tuple(a_q.shape)} and {tuple(b_q.shape)}"
        )
    m, k = a_q.shape
    n = b_q.shape[0]
    if b_q.shape[1] != k:
        raise ValueError(f"b_q must have shape [N, K={k}] (a_q's K), got {tuple(b_q.shape)}")
    _check_same_device("b_q", b_q, a_q, "a_q")
    out_dtype = _check_out_dtype("out_dtype", out_dtype, _GEMM_OUT_DTYPES)
    if (a_scale is None) != (b_scale is None):
        raise ValueError(
            f"a_scale and b_scale must both be tensors or both be None, got {describe(a_scale)} and {describe(b_scale)}"
        )
    _check_no_grad(a_scale=a_scale, b_scale=b_scale, bias=bias)
    if a_scale is not None:
        a_scale = _check_scale("a_scale", a_scale, (m,), a_q, "a_q's rows [M]")
        b_scale = _check_scale("b_scale", b_scale, (n,), a_q, "b_q's rows [N]")
    if bias is not None:
        bias = _check_scale("bias", bias, (n,), a_q, "b_q's rows [N]")
    if out_dtype == torch.int32 and (a_scale is not None or bias is not None):
        raise ValueError("out_dtype=torch.int32 returns the raw accumulator: pass a_scale=b_scale=None and no bias")
    if a_q.device.type not in ("cpu", "cuda"):
        raise ValueError(f"int8_gemm runs on CUDA or CPU tensors; a_q is on {a_q.device}")
    if int8_gemm_backend(a_q.device) == "torch":
        return _int8_gemm_torch(a_q, b_q, a_scale, b_scale, bias, out_dtype)

    out = torch.empty((m, n), dtype=_store_dtype(out_dtype), device=a_q.device)
    if m == 0 or n == 0:
        return out.to(out_dtype)
    a_q, b_q = a_q.contiguous(), b_q.contiguous()
    block_m, block_n, block_k, num_warps, num_stages = _gemm_config(m, n, k)
    dummy = out  # any pointer for the scale/bias arguments a specialisation never reads
    grid = (triton.cdiv(m, block_m), triton.cdiv(n, block_n))
    _int8_gemm_kernel[grid](
        a_q, b_q,
        a_scale if a_scale is not None else dummy, b_scale if b_scale is not None else dummy,
        bias if bias is not None else dummy, out,
        m, n, k,
        SCALED=a_scale is not None, HAS_BIAS=bias is not None, EVEN_K=k % block_k == 0,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, num_warps=num_warps, num_stages=num_stages,
        enable_fp_fusion=True,
    )  # fmt: skip
    return out.to(out_dtype)


# ==========================================================================================================
# weight-only: int4 / int8 weights, float activations
# ==========================================================================================================
def _weight_only(
    x: torch.Tensor,
    w: torch.Tensor,
    scales: torch.Tensor,
    bias: torch.Tensor | None,
    k: int,
    group_size: int,
    int4: bool,
) -> torch.Tensor:
    """Launch :func:`_weight_only_kernel` on validated inputs; ``scales`` float32 ``[N, n_groups]``."""
    m = x.numel() // k
    n = int(w.shape[0])
    n_groups = int(scales.shape[1])
    out = torch.empty((m, n), dtype=_store_dtype(x.dtype), device=x.device)
    if m and n:
        block_m, block_n, block_k, per_tile, num_warps = _weight_only_config(m, group_size, n_groups, x.dtype)
        grid = (triton.cdiv(m, block_m), triton.cdiv(n, block_n))
        _weight_only_kernel[grid](
            x.reshape(m, k).contiguous(), w.contiguous(), scales.contiguous(),
            bias if bias is not None else out, out,
            m, n, k, group_size if n_groups > 1 else k, n_groups,
            INT4=int4, SCALE_PER_TILE=per_tile, HAS_BIAS=bias is not None, EVEN_K=k % block_k == 0,
            DOT_DTYPE=_triton.dot_dtype(x.dtype, _quantize_rows_kernel),
            BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k,
            num_warps=num_warps, num_stages=3, enable_fp_fusion=True,
        )  # fmt: skip
    return out.to(x.dtype).reshape(*x.shape[:-1], n)


def w4a16_matmul(
    x: torch.Tensor,
    packed: torch.Tensor,
    scales: torch.Tensor,
    group_size: int,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """``y = x @ W^T + bias`` with int4 weights unpacked and scaled in registers: ``[..., K] -> [..., N]``.

    ``packed``: uint8 ``[N, K/2]`` in ``pack_int4``'s format (byte ``i`` of a row holds weight ``2i`` in its low
    nibble and ``2i+1`` in its high nibble, each stored as ``q + 8`` with ``q`` in -8..7); ``scales``: float
    ``[N, K / group_size]``, ``W[n, k] = q[n, k] * scales[n, k // group_size]``; ``group_size`` divides ``K``.
    ``x``: float16, bfloat16 or float32 ``[..., K]`` (``M = 1`` for the decode GEMV); the dot accumulates in
    float32 and the result has x's dtype (float32 activations use exact float32 dots, no TF32, so they do not
    run on tensor cores). ``bias``: float ``[N]`` or ``None``.
    """
    _require_available()
    x = _check_float_input("x", x, "use the NumPy reference for arrays")
    packed = _check_tensor("packed", packed, "the kernels take torch tensors")
    _check_int_dtype("packed", packed, torch.uint8, "two int4 weights per byte, from pack_int4")
    _, k = _rows_of("x", x)
    if k % 2:
        raise ValueError(f"x's last dimension K must be even for int4 weights (two per byte), got K={k}")
    if packed.ndim != 2 or 2 * int(packed.shape[1]) != k:
        raise ValueError(f"packed must have shape [N, K/2] = [N, {k // 2}] for x with K={k}, got {tuple(packed.shape)}")
    n = int(packed.shape[0])
    group_size = check_int("group_size", group_size, min_value=1)
    if k % group_size:
        raise ValueError(f"group_size={group_size} must divide K={k}")
    _check_same_device("packed", packed, x, "x")
    scales = _check_scale("scales", scales, (n, k // group_size), x, "[N, K / group_size]")
    if bias is not None:
        bias = _check_scale("bias", bias, (n,), x, "packed's rows [N]")
    _check_kernel_device("x", x)
    _check_no_grad(x=x, scales=scales, bias=bias)
    return _weight_only(x, packed, scales, bias, k, group_size, int4=True)


def w8a16_matmul(
    x: torch.Tensor,
    q: torch.Tensor,
    scales: torch.Tensor,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """``y = (x @ q^T) * scales + bias`` with int8 weights ``q [N, K]`` and per-output-channel ``scales [N]``:
    ``[..., K] -> [..., N]``. The integers enter the dot in x's dtype (exact), the scale is applied to the
    float32 accumulator (after the matmul, as in ``w8a16_linear``); the result has x's dtype (float16,
    bfloat16 or float32). ``bias``: float ``[N]`` or ``None``."""
    _require_available()
    x = _check_float_input("x", x, "use the NumPy reference for arrays")
    q = _check_tensor("q", q, "the kernels take torch tensors")
    _check_int_dtype("q", q, torch.int8, "per-channel int8 weights")
    _, k = _rows_of("x", x)
    if q.ndim != 2 or int(q.shape[1]) != k:
        raise ValueError(f"q must have shape [N, K={k}] for x with K={k}, got {tuple(q.shape)}")
    n = int(q.shape[0])
    _check_same_device("q", q, x, "x")
    scales = _check_scale("scales", scales, (n,), x, "q's rows [N]")
    if bias is not None:
        bias = _check_scale("bias", bias, (n,), x, "q's rows [N]")
    _check_kernel_device("x", x)
    _check_no_grad(x=x, scales=scales, bias=bias)
    return _weight_only(x, q, scales.reshape(n, 1), bias, k, k, int4=False)


# ==========================================================================================================
# what the compiler makes of the kernels (no GPU needed)
# ==========================================================================================================
_DT = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32", torch.int32: "i32"}
_TL = {torch.float16: "tl.float16", torch.bfloat16: "tl.bfloat16", torch.float32: "tl.float32"}


def _report_cases() -> list[dict]:
    """The specialisations :func:`compile_report` compiles, at the shapes of a 4096-wide LLM layer."""
    cases: list[dict] = []
    for dt in (torch.float16, torch.float32):
        br, bl, one = _quant_config(4096)
        cases.append({
            "name": f"quantize_rows {_DT[dt]} K=4096", "kernel": "_quantize_rows_kernel",
            "signature": {"x_ptr": f"*{_DT[dt]}", "q_ptr": "*i8", "scale_ptr": "*fp32", "R": "i32", "L": "i32",
                          "scale_cap": "fp32"},
            "constexprs": {"QMAX": 127, "BLOCK_R": br, "BLOCK_L": bl, "ONE_TILE": one},
            "num_warps": 4, "fp_fusion": False,
        })  # fmt: skip
    br, bl, one = _quant_config(128)
    cases.append({
        "name": "quantize_groups fp16 g=128", "kernel": "_quantize_rows_kernel",
        "signature": {"x_ptr": "*fp16", "q_ptr": "*i8", "scale_ptr": "*fp32", "R": "i32", "L": "i32",
                      "scale_cap": "fp32"},
        "constexprs": {"QMAX": 127, "BLOCK_R": br, "BLOCK_L": bl, "ONE_TILE": one}, "num_warps": 4, "fp_fusion": False,
    })  # fmt: skip
    br, bl, one = _quant_config(16384)
    cases.append({
        "name": "quantize_rows fp16 K=16384 (two passes)", "kernel": "_quantize_rows_kernel",
        "signature": {"x_ptr": "*fp16", "q_ptr": "*i8", "scale_ptr": "*fp32", "R": "i32", "L": "i32",
                      "scale_cap": "fp32"},
        "constexprs": {"QMAX": 127, "BLOCK_R": br, "BLOCK_L": bl, "ONE_TILE": one}, "num_warps": 4, "fp_fusion": False,
    })  # fmt: skip
    for dt, length in ((torch.float16, 4096), (torch.bfloat16, 4096), (torch.float16, 16384)):
        br, bl, one = _quant_config(length)
        cases.append({
            "name": f"layernorm_quantize_rows {_DT[dt]} D={length}" + ("" if one else " (four passes)"),
            "kernel": "_layernorm_quantize_kernel",
            "signature": {"x_ptr": f"*{_DT[dt]}", "w_ptr": "*fp32", "b_ptr": "*fp32", "q_ptr": "*i8",
                          "scale_ptr": "*fp32", "R": "i32", "L": "i32", "eps": "fp32", "scale_cap": "fp32"},
            "constexprs": {"QMAX": 127, "BLOCK_R": br, "BLOCK_L": bl, "ONE_TILE": one},
            "num_warps": 4, "fp_fusion": False,
        })  # fmt: skip
    br, bl = _dequant_config(4096)
    cases.append({
        "name": "dequantize_rows -> fp16", "kernel": "_dequantize_rows_kernel",
        "signature": {"q_ptr": "*i8", "scale_ptr": "*fp32", "out_ptr": "*fp16", "R": "i32", "L": "i32"},
        "constexprs": {"BLOCK_R": br, "BLOCK_L": bl}, "num_warps": 4, "fp_fusion": False,
    })  # fmt: skip
    for m in (16, 64, 4096):
        bm, bn, bk, nw, ns = _gemm_config(m, 4096, 4096)
        cases.append({
            "name": f"int8_gemm M={m} N=K=4096 -> fp16 +bias", "kernel": "_int8_gemm_kernel",
            "signature": {"a_ptr": "*i8", "b_ptr": "*i8", "sa_ptr": "*fp32", "sb_ptr": "*fp32", "bias_ptr": "*fp32",
                          "c_ptr": "*fp16", "M": "i32", "N": "i32", "K": "i32"},
            "constexprs": {"SCALED": True, "HAS_BIAS": True, "EVEN_K": True, "BLOCK_M": bm, "BLOCK_N": bn,
                           "BLOCK_K": bk},
            "num_warps": nw, "num_stages": ns,
        })  # fmt: skip
    specs = [
        ("w4a16 fp16 M=1 g=128", True, torch.float16, 1, 128),
        ("w4a16 bf16 M=1 g=128", True, torch.bfloat16, 1, 128),
        ("w4a16 fp16 M=64 g=128", True, torch.float16, 64, 128),
        ("w4a16 fp32 M=1 g=128", True, torch.float32, 1, 128),
        ("w4a16 fp32 M=64 g=128", True, torch.float32, 64, 128),
        ("w4a16 fp16 M=1 g=8 (scale per weight)", True, torch.float16, 1, 8),
        ("w4a16 fp16 M=64 g=8 (scale per weight)", True, torch.float16, 64, 8),
        ("w8a16 fp16 M=1", False, torch.float16, 1, 4096),
        ("w8a16 fp16 M=64", False, torch.float16, 64, 4096),
        ("w8a16 fp32 M=1", False, torch.float32, 1, 4096),
    ]
    for name, int4, dt, m, g in specs:
        n_groups = 4096 // g
        bm, bn, bk, per_tile, nw = _weight_only_config(m, g, n_groups, dt)
        cases.append({
            "name": name + " N=K=4096", "kernel": "_weight_only_kernel",
            "signature": {"x_ptr": f"*{_DT[dt]}", "w_ptr": "*u8" if int4 else "*i8", "s_ptr": "*fp32",
                          "bias_ptr": "*fp32", "out_ptr": f"*{_DT[dt]}", "M": "i32", "N": "i32", "K": "i32",
                          "G": "i32", "n_groups": "i32"},
            "constexprs": {"INT4": int4, "SCALE_PER_TILE": per_tile, "HAS_BIAS": False, "EVEN_K": True,
                           "DOT_DTYPE": _TL[dt],
                           "BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk},
            "num_warps": nw, "num_stages": 3,
        })  # fmt: skip
    return cases




def compile_report(
    capabilities: tuple[int, ...] = (80, 90), match: str | None = None, timeout: float = 600.0
) -> list[dict]:
    """Compile the kernels (at the shapes of a 4096-wide layer) for NVIDIA GPUs, without a GPU.

    ``capabilities``: compute capabilities as ints (75 = T4, 80 = A100, 89 = L4, 90 = H100); ``match``: keep
    only the cases whose name contains this text (e.g. ``"w4a16"``); ``timeout`` in seconds. Runs in a
    subprocess with ``TRITON_INTERPRET=0`` (kernels defined for the interpreter cannot be compiled) and asks
    the ``ptxas`` shipped with Triton (``-v``, Triton's flags) for the resources. One dict per (case, target):
    ``name``, ``target``, ``ok``, and when it compiled ``registers`` (per thread), ``spill_bytes`` (spill
    stores + loads, per thread; 0 is what you want), ``stack_bytes``, ``shared_bytes`` (per program, Triton's
    count), ``num_warps`` and ``mma`` (the tensor-core instruction emitted: ``"mma.sync"`` (sm_80+),
    ``"wgmma"`` (sm_90 warpgroup MMA) or ``None``: float32 dots run on FMA units); otherwise ``error``.
    All cases for two targets take about a minute on a laptop-class CPU.
    """
    names = [c["name"] for c in _report_cases()] if _triton.IMPORT_ERROR is None else []
    return _triton.compile_report(__name__, names, capabilities, match, timeout)
