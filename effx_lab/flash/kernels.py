"""FLASH's mixed chunk attention in Triton (chapter 7): one kernel, or two split across chunks.

Hua, Dai, Liu and Le, "Transformer Quality in Linear Time" (ICML 2022), equation numbers from the paper.
The math is :func:`effx_lab.flash.reference.mixed_chunk_attention`; this file computes the same thing in one
pass over the sequence (or, split, in two passes over the chunks). Split the ``n`` tokens into ``G = n / c``
chunks of ``c``; for chunk ``g``:

* local, quadratic (eq. 6): ``quad_g = (relu(Qq_g Kq_g^T / c + B)^2 * mask) V_g`` with ``B`` the ``c x c``
  relative position bias and ``mask`` the lower triangle (causal) or all ones;
* global, linear (eq. 8 causal / eq. 7 non-causal): ``lin_g = Ql_g S_g / c`` with the state
  ``S_g = sum_h Kl_h^T V_h`` over the chunks ``h < g`` (causal: *exclusive*, the current chunk is the local
  part's job) or over all chunks (non-causal);
* ``out_g = quad_g + lin_g``.

**How the work is split (unsplit, ``split=False``).** One program per (batch element, block of ``BLOCK_E``
value columns). The program walks the chunks in order and keeps the ``s x BLOCK_E`` state ``S`` in registers
as a float32 accumulator: for each chunk it computes the outputs, then adds the chunk's ``Kl_g^T V_g`` to
``S`` *after* using it. Inside a chunk it works on tiles of ``BLOCK_Q`` rows (a 256 x 256 score matrix would
not fit in registers): for each query tile it visits the key tiles of the same chunk (causal: only those on
or left of the diagonal, the others are fully masked) and adds ``Ql S / c``. Nothing of size ``n x n`` (or
even ``G x s x e``) ever reaches memory. The price of splitting ``e`` over programs is that each one
recomputes the chunk's scores; with a few ``e``-blocks that is small next to the loads. Non-causal attention
needs the sum over *all* chunks before the first output, so the program makes a first pass that only builds
``S``.

**Split across chunks (``split=True``).** The unsplit grid has ``B * ceil(e / BLOCK_E)`` programs: at batch 1
and ``e = 512`` that is 8, on a GPU with 132 SMs (H100) or 108 (A100), so most of the chip idles while each
program walks all ``G`` chunks in turn. The split version gives every chunk its own programs: pass 1
(:func:`_chunk_state_kernel`, one program per (batch element x chunk, value block)) writes each chunk's
``Kl_g^T V_g`` to a float32 ``(B, G, s, e)`` buffer; torch sums them over chunks between the kernels
(``cumsum_`` causal, ``sum`` non-causal; a Triton scan would save one read and one write of the buffer);
pass 2 (:func:`_mixed_chunk_split_kernel`, same grid) computes each chunk's local part plus ``Ql_g`` times
the state it reads (causal: the inclusive sum up to chunk ``g - 1``, i.e. the exclusive state of ``g``;
chunk 0 reads zeros). Both versions share the per-chunk code (:func:`_add_chunk_state`,
:func:`_chunk_outputs`), so they do the same FLOPs; the split one moves the state buffer through memory
(bytes counted in :func:`mixed_chunk_attention_triton`'s docstring) and sums the states in another order
(float32 rounding differs, nothing else). ``split=None`` picks it when the unsplit grid is smaller than the
SM count.

**Precision.** Every ``tl.dot`` accumulates in float32. float32 inputs use ``input_precision="ieee"`` (no TF32
on the GPU, so results match the float64 reference to float32 accuracy). float16/bfloat16 inputs are fed to
the dots in their own dtype (tensor cores); the float32 intermediates that meet a second dot (the score
matrix and ``S / c``) are rounded to that dtype first, the standard trade in FlashAttention-style kernels.
The output has the input dtype.

**NaN.** The kernel never turns a NaN into a finite number: the relu keeps NaN
(``propagate_nan=tl.PropagateNan.ALL``; Triton's default ``tl.maximum`` would return 0), so a NaN in a query,
key, value or bias weight reaches the output rows that depend on it, the same rows as the NumPy reference and
:mod:`.torch_ops` (causal masking *replaces* future scores by 0 in all three, so a NaN key never reaches an
earlier row). One difference is inherent to tiling: the dense versions multiply a value row ``v_j`` by the
masked zeros of every row of its chunk (``0 * NaN = NaN``), while the kernel skips the key tiles right of the
diagonal, so with several tiles per chunk (``c > 32``) a NaN value does not mark the rows of earlier tiles,
which do not depend on it. See docs/ARCHITECTURE.md, "Non-finite values".

On a machine without a CUDA GPU ``import effx_lab`` switches on Triton's CPU interpreter (correct, slow);
this module imports ``effx_lab`` before ``triton`` for that reason. It is not imported by
``effx_lab.flash`` itself: ``from effx_lab.flash import kernels`` when you want it.
"""
from __future__ import annotations

from typing import Any

import effx_lab  # noqa: F401  (first: sets TRITON_INTERPRET=1 when there is no GPU)
from effx_lab import _triton
from effx_lab import device as _device
from effx_lab._validate import check_array, check_bool, check_choice, check_int, describe

from effx_lab._triton import jit as _jit
from effx_lab._triton import kernel_source
from effx_lab._triton import tl, triton

from .shapes import MODES, check_mixed_inputs

import torch

__all__ = [
    "kernel_source", "available", "why_unavailable", "mixed_chunk_attention_triton", "default_split", "MODES",
    "DTYPES",
]  # fmt: skip

DTYPES = (torch.float16, torch.bfloat16, torch.float32)


@_jit
def _load_tile(ptr, rows, cols, n, width, col_mask, DTYPE: tl.constexpr):
    """Rows ``rows``, columns ``cols`` of a row-major ``(n, width)`` matrix; rows >= n: 0."""
    mask = (rows < n)[:, None] & col_mask[None, :]
    ptrs = ptr + rows[:, None] * width + cols[None, :]
    return tl.load(ptrs, mask=mask, other=0.0).to(DTYPE)


@_jit
def _add_chunk_state(
    state,  # (S, BLOCK_E) float32 accumulator
    kl_ptr, v_ptr,  # this batch element's K_lin (n, S) and V (n, e)
    start, n, e,  # first row of the chunk, sequence length, value width
    offs_r, offs_s, s_mask, offs_e, e_mask,
    C: tl.constexpr, S: tl.constexpr, BLOCK_Q: tl.constexpr, DOT_DTYPE: tl.constexpr,
):  # fmt: skip
    """``state + Kl_g^T V_g`` for the chunk starting at row ``start``, tile by tile."""
    for r0 in range(start, start + C, BLOCK_Q):
        rows = (r0 + offs_r).to(tl.int64)
        kl = _load_tile(kl_ptr, rows, offs_s, n, S, s_mask, DOT_DTYPE)
        v = _load_tile(v_ptr, rows, offs_e, n, e, e_mask, DOT_DTYPE)
        state += tl.dot(tl.trans(kl), v, input_precision="ieee")  # Kl^T V
    return state


@_jit
def _chunk_outputs(
    qq_ptr, kq_ptr, ql_ptr, v_ptr,  # this batch element's Q_quad, K_quad, Q_lin, V
    w_ptr, out_ptr,  # bias weights; this batch element's output
    state,  # (S, BLOCK_E) float32: the chunk's inter-chunk state (eq. 7-8), if USE_LIN
    start, n, e, R, inv_c,
    offs_r, offs_s, s_mask, offs_e, e_mask,
    C: tl.constexpr, S: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_E: tl.constexpr,
    CAUSAL: tl.constexpr, HAS_BIAS: tl.constexpr,
    USE_QUAD: tl.constexpr, USE_LIN: tl.constexpr, DOT_DTYPE: tl.constexpr,
):  # fmt: skip
    """Write ``out_g = quad_g + Ql_g state / c`` for the chunk starting at ``start``."""
    # one tile of BLOCK_Q query rows at a time (registers do not grow with c)
    for q0 in range(start, start + C, BLOCK_Q):
        rows_q = (q0 + offs_r).to(tl.int64)  # int64: n * e may exceed 2^31
        acc = tl.zeros((BLOCK_Q, BLOCK_E), dtype=tl.float32)

        if USE_QUAD:
            # eq. 6: quad_g = relu(Qq_g Kq_g^T / c + B)^2 V_g (lower-triangular when
            # causal), one (query tile, key tile) block of the c x c matrix at a time
            qq = _load_tile(qq_ptr, rows_q, offs_s, n, S, s_mask, DOT_DTYPE)
            if CAUSAL:
                k_end = q0 + BLOCK_Q  # tiles right of the diagonal are all masked
            else:
                k_end = start + C
            for k0 in range(start, k_end, BLOCK_Q):
                rows_k = (k0 + offs_r).to(tl.int64)
                kq = _load_tile(kq_ptr, rows_k, offs_s, n, S, s_mask, DOT_DTYPE)
                v = _load_tile(v_ptr, rows_k, offs_e, n, e, e_mask, DOT_DTYPE)
                # Qq Kq^T / c
                logits = tl.dot(qq, tl.trans(kq), input_precision="ieee") * inv_c
                if HAS_BIAS:
                    # + B[i, j] = w[clip(j - i, -R, R) + R] (i, j in the same chunk)
                    rel = rows_k[None, :] - rows_q[:, None]
                    logits += tl.load(w_ptr + tl.minimum(tl.maximum(rel, -R), R) + R)
                # relu^2. tl.maximum's default (propagate_nan=NONE, fmaxf) returns
                # the non-NaN operand, i.e. relu(NaN) = 0: a NaN query/key/bias would
                # vanish. ALL keeps it, as NumPy and torch do.
                a = tl.maximum(logits, 0.0, propagate_nan=tl.PropagateNan.ALL)
                a = a * a
                if CAUSAL:
                    # mask: j <= i. Replaced, not multiplied: a NaN score of a future
                    # key stays out of row i
                    a = tl.where(rows_k[None, :] <= rows_q[:, None], a, 0.0)
                acc += tl.dot(a.to(DOT_DTYPE), v, input_precision="ieee")

        if USE_LIN:
            # eq. 7-8: lin_g = Ql_g S / c, S summed over h < g (causal) or all h
            ql = _load_tile(ql_ptr, rows_q, offs_s, n, S, s_mask, DOT_DTYPE)
            acc += tl.dot(ql, (state * inv_c).to(DOT_DTYPE), input_precision="ieee")

        # out_g = quad_g + lin_g, in the input dtype
        out_mask = (rows_q < n)[:, None] & e_mask[None, :]
        out_ptrs = out_ptr + rows_q[:, None] * e + offs_e[None, :]
        tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=out_mask)


@_jit
def _mixed_chunk_kernel(
    qq_ptr, kq_ptr, ql_ptr, kl_ptr,  # (B, n, S) each: Q_quad, K_quad, Q_lin, K_lin
    v_ptr,  # (B, n, e)
    w_ptr,  # (2R+1,) float32 relative position bias weights (read only when HAS_BIAS)
    out_ptr,  # (B, n, e), dtype of the inputs
    n, e,  # sequence length (not padded) and value width
    R,  # largest relative offset with its own bias weight
    inv_c,  # 1 / c, the paper's normalisation of both parts
    C: tl.constexpr,  # chunk size c
    S: tl.constexpr,  # query/key width s
    BLOCK_Q: tl.constexpr,  # rows per tile inside a chunk (divides C)
    BLOCK_E: tl.constexpr,  # value columns handled by one program
    CAUSAL: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    USE_QUAD: tl.constexpr,  # mode "mixed" or "local"
    USE_LIN: tl.constexpr,  # mode "mixed" or "global"
    DOT_DTYPE: tl.constexpr,  # operand dtype of every tl.dot (see _triton.dot_dtype)
):  # fmt: skip
    """Unsplit: one program per (batch element, value block) walks all the chunks."""
    pid_b = tl.program_id(0).to(tl.int64)  # int64: B * n * e may exceed 2^31
    pid_e = tl.program_id(1)

    offs_r = tl.arange(0, BLOCK_Q)  # row inside a tile
    offs_s = tl.arange(0, S)
    s_mask = offs_s < S  # all true
    offs_e = pid_e * BLOCK_E + tl.arange(0, BLOCK_E)
    e_mask = offs_e < e  # the last e-block may stick out

    # base pointers of this batch element
    qq_ptr += pid_b * n * S
    kq_ptr += pid_b * n * S
    ql_ptr += pid_b * n * S
    kl_ptr += pid_b * n * S
    v_ptr += pid_b * n * e
    out_ptr += pid_b * n * e

    # the inter-chunk state S = sum_h Kl_h^T V_h (eq. 7-8), float32, (S, BLOCK_E)
    state = tl.zeros((S, BLOCK_E), dtype=tl.float32)
    # the last chunk's rows >= n read as 0: the reference's zero padding
    n_chunks = tl.cdiv(n, C)

    if USE_LIN and not CAUSAL:
        # non-causal (eq. 7): every chunk sees the sum over ALL chunks: a first pass
        for g in range(0, n_chunks):
            state = _add_chunk_state(
                state, kl_ptr, v_ptr, g * C, n, e, offs_r, offs_s, s_mask, offs_e,
                e_mask, C, S, BLOCK_Q, DOT_DTYPE,
            )  # fmt: skip

    for g in range(0, n_chunks):
        _chunk_outputs(
            qq_ptr, kq_ptr, ql_ptr, v_ptr, w_ptr, out_ptr, state, g * C, n, e, R, inv_c,
            offs_r, offs_s, s_mask, offs_e, e_mask, C, S, BLOCK_Q, BLOCK_E,
            CAUSAL, HAS_BIAS, USE_QUAD, USE_LIN, DOT_DTYPE,
        )  # fmt: skip
        if USE_LIN and CAUSAL:
            # eq. 8: only after the chunk is done, S += Kl_g^T V_g (S stays exclusive)
            state = _add_chunk_state(
                state, kl_ptr, v_ptr, g * C, n, e, offs_r, offs_s, s_mask, offs_e,
                e_mask, C, S, BLOCK_Q, DOT_DTYPE,
            )  # fmt: skip


@_jit
def _chunk_state_kernel(
    kl_ptr,  # (B, n, S) K_lin
    v_ptr,  # (B, n, e)
    states_ptr,  # (B, G, S, e) float32: this pass writes Kl_g^T V_g of every chunk g
    n, e, n_chunks,
    C: tl.constexpr, S: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_E: tl.constexpr,
    DOT_DTYPE: tl.constexpr,
):  # fmt: skip
    """Split, pass 1: one program per (batch element x chunk, value block)."""
    pid = tl.program_id(0).to(tl.int64)  # batch element * n_chunks + chunk
    pid_e = tl.program_id(1)
    pid_b = pid // n_chunks
    g = (pid % n_chunks).to(tl.int32)

    offs_r = tl.arange(0, BLOCK_Q)
    offs_s = tl.arange(0, S)
    s_mask = offs_s < S
    offs_e = pid_e * BLOCK_E + tl.arange(0, BLOCK_E)
    e_mask = offs_e < e

    state = tl.zeros((S, BLOCK_E), dtype=tl.float32)
    state = _add_chunk_state(
        state, kl_ptr + pid_b * n * S, v_ptr + pid_b * n * e, g * C, n, e,
        offs_r, offs_s, s_mask, offs_e, e_mask, C, S, BLOCK_Q, DOT_DTYPE,
    )  # fmt: skip
    ptrs = states_ptr + (pid * S + offs_s[:, None]) * e + offs_e[None, :]
    tl.store(ptrs, state, mask=s_mask[:, None] & e_mask[None, :])


@_jit
def _mixed_chunk_split_kernel(
    qq_ptr, kq_ptr, ql_ptr,  # (B, n, S) each: Q_quad, K_quad, Q_lin
    v_ptr,  # (B, n, e)
    w_ptr,  # (2R+1,) float32 relative position bias weights (read only when HAS_BIAS)
    states_ptr,  # float32: causal (B, G, S, e) inclusive sums; non-causal (B, S, e)
    out_ptr,  # (B, n, e), dtype of the inputs
    n, e, R, inv_c, n_chunks,
    C: tl.constexpr, S: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_E: tl.constexpr,
    CAUSAL: tl.constexpr, HAS_BIAS: tl.constexpr,
    USE_QUAD: tl.constexpr, USE_LIN: tl.constexpr, DOT_DTYPE: tl.constexpr,
):  # fmt: skip
    """Split, pass 2: one program per (batch element x chunk, value block)."""
    pid = tl.program_id(0).to(tl.int64)  # batch element * n_chunks + chunk
    pid_e = tl.program_id(1)
    pid_b = pid // n_chunks
    g = (pid % n_chunks).to(tl.int32)

    offs_r = tl.arange(0, BLOCK_Q)
    offs_s = tl.arange(0, S)
    s_mask = offs_s < S
    offs_e = pid_e * BLOCK_E + tl.arange(0, BLOCK_E)
    e_mask = offs_e < e

    state = tl.zeros((S, BLOCK_E), dtype=tl.float32)
    if USE_LIN:
        if CAUSAL:
            # the exclusive state of chunk g is the inclusive sum up to g - 1. Chunk 0
            # has none: zeros, still multiplied (a NaN in Ql_0 reaches its row)
            prev = pid_b * n_chunks + tl.maximum(g - 1, 0)
            ptrs = states_ptr + (prev * S + offs_s[:, None]) * e + offs_e[None, :]
            has_prev = offs_e < tl.where(g > 0, e, 0)  # e_mask; all false for chunk 0
            mask = s_mask[:, None] & has_prev[None, :]
            state = tl.load(ptrs, mask=mask, other=0.0)
        else:
            ptrs = states_ptr + (pid_b * S + offs_s[:, None]) * e + offs_e[None, :]
            state = tl.load(ptrs, mask=s_mask[:, None] & e_mask[None, :], other=0.0)

    _chunk_outputs(
        qq_ptr + pid_b * n * S, kq_ptr + pid_b * n * S, ql_ptr + pid_b * n * S,
        v_ptr + pid_b * n * e, w_ptr, out_ptr + pid_b * n * e, state, g * C, n, e, R,
        inv_c, offs_r, offs_s, s_mask, offs_e, e_mask, C, S, BLOCK_Q, BLOCK_E,
        CAUSAL, HAS_BIAS, USE_QUAD, USE_LIN, DOT_DTYPE,
    )  # fmt: skip


# ----------------------------------------------------------------------------------------------------------
# availability
# ----------------------------------------------------------------------------------------------------------
def _kernel_is_interpreted() -> bool:
    return _triton.is_interpreted(_mixed_chunk_kernel)


def why_unavailable() -> str | None:
    """Why :func:`mixed_chunk_attention_triton` cannot run here, or ``None`` when it can.

    It can run with a CUDA GPU (compiled) or, without one, in Triton's CPU interpreter, which must have been
    switched on (``TRITON_INTERPRET=1``) before this module defined its kernel.
    """
    return _triton.why_unavailable(_mixed_chunk_kernel, "effx_lab.flash.kernels")


def available() -> bool:
    """Whether the Triton kernel can run here (GPU, or CPU interpreter); see :func:`why_unavailable`."""
    return why_unavailable() is None


# ----------------------------------------------------------------------------------------------------------
# the public function
# ----------------------------------------------------------------------------------------------------------
def _is_pow2_at_least_16(x: int) -> bool:
    return x >= 16 and (x & (x - 1)) == 0


def _check_tensor(name: str, value: Any) -> torch.Tensor:
    check_array(name, value, dtype_kind="f", allow_torch=True)
    if not isinstance(value, torch.Tensor):
        raise TypeError(
            f"{name} must be a torch tensor, got {describe(value)}; "
            "use effx_lab.flash.reference.mixed_chunk_attention for NumPy arrays"
        )
    return value


def _launch_config(c: int, s: int, e: int, dtype: torch.dtype) -> tuple[int, int, int, int]:
    """``(BLOCK_Q, BLOCK_E, num_warps, num_stages)`` for a GPU (the interpreter ignores the last two).

    A program holds, in registers, the float32 ``s x BLOCK_E`` state, a ``BLOCK_Q x BLOCK_Q`` score tile,
    a ``BLOCK_Q x BLOCK_E`` accumulator and ``BLOCK_Q x s`` query/key tiles; tiling the chunk's rows keeps
    that independent of ``c``. Chosen from the register and shared-memory use Triton 3.x reports when it
    compiles the kernel for ``c = 256, s = 128`` (the paper's sizes): no register spills with these blocks on
    sm_75 (T4), sm_80 (A100) and sm_90 (H100), except a few bytes for float32 on sm_80; 64 value columns
    need the float16/bfloat16 tensor-core layouts of sm_80+, on a T4 they spill.
    """
    block_q = min(c, 32)
    cap = _device.capability() or (0, 0)
    wide = dtype != torch.float32 and cap >= (8, 0)
    block_e = min(64 if wide else 32, max(16, triton.next_power_of_2(e)))
    num_warps = 8 if s >= 64 else 4
    return block_q, block_e, num_warps, 2


def _sm_count(device: torch.device) -> int | None:
    """Streaming multiprocessors of ``device``'s GPU; ``None`` off CUDA (the CPU interpreter)."""
    if device.type != "cuda":
        return None
    return int(torch.cuda.get_device_properties(device).multi_processor_count)


def _choose_split(batch: int, e_blocks: int, n_chunks: int, sm_count: int | None) -> bool:
    """Whether ``split=None`` splits the work across chunks.

    The unsplit grid has ``batch * e_blocks`` programs. When that is below the GPU's SM count, SMs sit
    idle for the whole call (an H100 has 132; at batch 1 with ``e = 512`` in 64-column blocks, 8 programs
    use 8 of them), so the split grid (``n_chunks`` times more programs) is chosen, if there is more than
    one chunk to split. Without a GPU (``sm_count`` is ``None``: the interpreter runs programs one after
    the other) the unsplit kernel is kept; pass ``split=True`` to run the split one.
    """
    return sm_count is not None and n_chunks > 1 and batch * e_blocks < sm_count


def default_split(v: torch.Tensor, chunk_size: int) -> bool:
    """Whether :func:`mixed_chunk_attention_triton` with ``split=None`` splits the work across chunks for
    values ``v`` of shape ``(..., n, e)`` and chunks of ``chunk_size``, on ``v``'s device.

    True on a CUDA GPU when the unsplit grid (batch elements times blocks of value columns) is smaller than
    the GPU's SM count and there are at least two chunks; always False in the CPU interpreter.
    """
    _check_tensor("v", v)
    if v.ndim < 2:
        raise ValueError(f"v must have shape (..., n, e), got shape {tuple(v.shape)}")
    if v.dtype not in DTYPES:
        raise TypeError(f"v must have dtype float16, bfloat16 or float32, got {v.dtype}")
    c = check_int("chunk_size", chunk_size, min_value=1)
    if not _is_pow2_at_least_16(c):
        raise ValueError(f"chunk_size must be a power of two >= 16 (tl.dot needs blocks of at least 16), got {c}")
    *lead, n, e = (int(d) for d in v.shape)
    batch = 1
    for d in lead:
        batch *= d
    block_e = _launch_config(c, 16, e, v.dtype)[1]
    return _choose_split(batch, -(-e // block_e), -(-n // c), _sm_count(v.device))


def mixed_chunk_attention_triton(
    quad_q: torch.Tensor,
    quad_k: torch.Tensor,
    lin_q: torch.Tensor,
    lin_k: torch.Tensor,
    v: torch.Tensor,
    chunk_size: int,
    causal: bool = False,
    rel_bias: torch.Tensor | None = None,
    mode: str = "mixed",
    split: bool | None = None,
) -> torch.Tensor:
    """Mixed chunk attention ``Vhat_quad + Vhat_lin`` (eq. 6-8) with Triton kernels.

    Same signature and result as :func:`effx_lab.flash.reference.mixed_chunk_attention`, for torch tensors:
    ``(..., n, s) x4, (..., n, e) -> (..., n, e)``. ``mode`` is ``"mixed"``, ``"local"`` (quadratic part only)
    or ``"global"`` (linear part only). ``rel_bias`` (length ``2R+1``) adds the relative position bias inside
    each chunk. When ``chunk_size`` does not divide ``n`` the last chunk is read as zero-padded (the kernel
    masks its loads; nothing is copied) and the output has ``n`` rows.

    Restrictions of the kernel (``tl.dot`` needs blocks of at least 16): ``chunk_size`` and ``s`` must be
    powers of two >= 16; ``e`` is free. All tensors on one device with one dtype among float16, bfloat16,
    float32 (``rel_bias`` may be any float dtype; it is used in float32). Forward only: there is no backward,
    so inputs that require grad are refused while autograd is recording.

    ``split`` picks how the work is spread over the GPU (the result is the same up to float32 rounding of
    the state sums; see the module docstring):

    * ``False``: one kernel, one program per (batch element, block of value columns), walking the chunks
      in order with the state in registers. Nothing but the inputs and the output touches memory.
    * ``True``: split across chunks, one program per (batch element, chunk, value block) in each of two
      kernels: pass 1 writes every chunk's ``Kl_g^T V_g`` (float32); between the kernels
      ``torch.Tensor.cumsum_`` over the chunks (causal: pass 2 reads the *inclusive* sum of chunk ``g - 1``,
      which is the exclusive state of chunk ``g``) or ``sum`` (non-causal: the total); pass 2 writes each
      chunk's outputs. The price is memory traffic: the float32 states hold ``B * G * s * e * 4`` bytes
      (``G = ceil(n / c)``), written by pass 1, read and written by the cumsum and read by pass 2, about
      ``16 B G s e`` extra bytes causal (non-causal: ``12 B G s e``: the sum writes only ``B s e``,
      but every chunk's programs read that total, mostly from L2). At
      ``n = 8192, c = 256, s = 128, e = 512`` that is 32 MiB per batch element (causal; the buffer
      itself is 8 MiB of extra memory per element), next to 24 MiB of bfloat16
      inputs and output: the split moves about twice the bytes, and pays only where the unsplit grid
      leaves SMs idle. Mode ``"local"`` has no state: the split is then one kernel, parallel over chunks.
    * ``None`` (default): split on a CUDA GPU when the unsplit grid, ``batch * ceil(e / BLOCK_E)``
      programs, is smaller than the GPU's SM count and there are at least two chunks; never in the CPU
      interpreter.
    """
    reason = why_unavailable()
    if reason is not None:
        raise RuntimeError(f"the Triton kernel cannot run here: {reason}")

    names = ("quad_q", "quad_k", "lin_q", "lin_k")
    tensors = (quad_q, quad_k, lin_q, lin_k)
    check_mixed_inputs(quad_q, quad_k, lin_q, lin_k, v, check=_check_tensor)
    dtype = quad_q.dtype
    if dtype not in DTYPES:
        raise TypeError(f"quad_q must have dtype float16, bfloat16 or float32, got {dtype}")
    for name, a in zip(names[1:] + ("v",), tensors[1:] + (v,), strict=True):
        if a.dtype != dtype:
            raise TypeError(f"{name} must have the dtype of quad_q ({dtype}), got {a.dtype}")
        if a.device != quad_q.device:
            raise ValueError(f"{name} must be on the device of quad_q ({quad_q.device}), got {a.device}")
    if not _kernel_is_interpreted() and quad_q.device.type != "cuda":
        raise ValueError(f"the compiled Triton kernel needs CUDA tensors, got tensors on {quad_q.device}")
    if quad_q.device.type not in ("cpu", "cuda"):
        raise ValueError(f"the Triton kernel runs on CUDA (or CPU, interpreted) tensors, got {quad_q.device}")

    c = check_int("chunk_size", chunk_size, min_value=1)
    if not _is_pow2_at_least_16(c):
        raise ValueError(f"chunk_size must be a power of two >= 16 (tl.dot needs blocks of at least 16), got {c}")
    s = int(quad_q.shape[-1])
    if not _is_pow2_at_least_16(s):
        raise ValueError(
            f"quad_q's last dimension s must be a power of two >= 16 (tl.dot needs blocks of at least 16), got {s}"
        )
    causal = check_bool("causal", causal)
    check_choice("mode", mode, MODES)
    if split is not None:
        split = check_bool("split", split)

    if rel_bias is not None:
        _check_tensor("rel_bias", rel_bias)
        if rel_bias.ndim != 1 or rel_bias.shape[0] % 2 == 0:
            raise ValueError(
                f"rel_bias must be 1-D with an odd length 2R+1 (offsets -R..R), got shape {tuple(rel_bias.shape)}"
            )
        if rel_bias.device != quad_q.device:
            raise ValueError(f"rel_bias must be on the device of quad_q ({quad_q.device}), got {rel_bias.device}")

    _triton.refuse_grad([*tensors, v, rel_bias], "effx_lab.flash.torch_ops")

    *lead, n, _ = quad_q.shape
    e = int(v.shape[-1])
    batch = 1
    for d in lead:
        batch *= int(d)
    out = torch.empty((batch, n, e), dtype=dtype, device=quad_q.device)
    if out.numel() == 0:
        return out.reshape(*lead, n, e)

    flat = [a.reshape(batch, n, a.shape[-1]).contiguous() for a in (quad_q, quad_k, lin_q, lin_k, v)]
    use_quad = mode in ("mixed", "local")
    use_lin = mode in ("mixed", "global")
    has_bias = rel_bias is not None and use_quad
    # bias weights in float32; when unused, any pointer will do (never read)
    weights = rel_bias.detach().to(torch.float32).contiguous() if has_bias else flat[4]
    max_rel = (int(rel_bias.shape[0]) - 1) // 2 if has_bias else 0

    block_q, block_e, num_warps, num_stages = _launch_config(c, s, e, dtype)
    e_blocks = triton.cdiv(e, block_e)
    n_chunks = triton.cdiv(n, c)
    if split is None:
        split = _choose_split(batch, e_blocks, n_chunks, _sm_count(quad_q.device))
    consts = dict(C=c, S=s, BLOCK_Q=block_q, BLOCK_E=block_e, DOT_DTYPE=_triton.dot_dtype(dtype, _mixed_chunk_kernel),
                  num_warps=num_warps, num_stages=num_stages)  # fmt: skip
    flags = dict(CAUSAL=causal, HAS_BIAS=has_bias, USE_QUAD=use_quad, USE_LIN=use_lin)
    if not split:
        _mixed_chunk_kernel[(batch, e_blocks)](
            *flat, weights, out, n, e, max_rel, 1.0 / c, **flags, **consts
        )  # fmt: skip
        return out.reshape(*lead, n, e)

    grid = (batch * n_chunks, e_blocks)  # axis 0 allows 2^31 - 1 programs (axis 1 only 65535)
    states = out  # any pointer will do when the kernel reads no state ("local")
    if use_lin:
        states = torch.empty((batch, n_chunks, s, e), dtype=torch.float32, device=quad_q.device)
        _chunk_state_kernel[grid](flat[3], flat[4], states, n, e, n_chunks, **consts)
        # the prefix sum over chunks between the kernels, in torch (one read, one write of the states)
        states = states.cumsum_(dim=1) if causal else states.sum(dim=1)
    _mixed_chunk_split_kernel[grid](
        flat[0], flat[1], flat[2], flat[4], weights, states, out, n, e, max_rel, 1.0 / c, n_chunks,
        **flags, **consts,
    )  # fmt: skip
    return out.reshape(*lead, n, e)
