"""The 2:4 compressed-weight matmul ``x @ W.T (+ bias)`` as one Triton kernel (04.1).

``W (out_features, in_features)`` is 2:4 sparse along its input dimension and stored in
compressed form (:class:`~effx_lab.nm._format.NMCompressed`, made by
:func:`effx_lab.nm.torch_ops.compress`): ``values (out, in // 2)`` and ``meta (out, in
// 8)`` uint8, four 2-bit positions per byte, little end first. The math is
:func:`effx_lab.nm.reference.nm_matmul`.

**How the work is split.** One program per output tile: ``BLOCK_M`` rows of ``x`` times
``BLOCK_N`` rows of ``W``. The program walks the input dimension in steps of
``BLOCK_K`` columns and, for each step, **decompresses the weight tile in registers**:
it reads the step's ``BLOCK_K / 2`` stored values and ``BLOCK_K / 8`` metadata bytes of
each of its rows once, contiguously; shifts every byte by 0, 2, 4, 6 bits to get four
2-bit positions; splits values and positions into each group's first and second; and
builds the dense ``BLOCK_N x BLOCK_K`` tile in which position ``q`` of a group holds
the stored value whose position is ``q``, else 0 (a ``tl.where``, never a multiply by
a mask). That tile goes to ``tl.dot`` with the ``x`` tile, accumulating in float32.
Tiles (:func:`_tiles`): 16 x 32 in steps of 128 for decode, 64 x 64 in steps of 32 with
8 warps for prefill (no register spills on sm_80/sm_90 in 16-bit;
:func:`compile_report`).

**What it saves.** The weight crosses memory in compressed form: for fp16 ``0.5`` of the
dense bytes in ``values`` and ``0.0625`` in ``meta`` (``0.5625``), so a memory-bound
matmul (decode: one to a few tokens) can be at most ``1 / 0.5625 = 1.78 x`` faster than
the dense one. The multiply-adds are the dense ones: ``tl.dot`` has no access to the
sparse tensor cores' ``mma.sp`` instruction, which halves them (what cuSPARSELt and
:mod:`effx_lab.nm.semi_structured` use). In prefill (compute-bound) it can therefore
at best match the dense matmul, and the unpacking costs extra instructions.

**Restrictions.** 2:4 only (``c.n == 2``, ``c.m == 4``); forward only (inputs that
require grad are refused while autograd records); float16, bfloat16, float32.

**Precision.** ``tl.dot`` accumulates in float32 with ``input_precision="ieee"`` (no
TF32): float32 inputs match the float64 product to float32 accuracy; float16/bfloat16
operands are fed to the dots in their own dtype, the output has the input dtype.

**NaN.** Nothing is clamped. A NaN weight reaches only the outputs of its row; a NaN in
column ``j`` of ``x`` reaches **every** output of its row (the decompressed tile holds
zeros, and ``0 * NaN = NaN`` in ``tl.dot``), as in the dense product, where
:mod:`.torch_ops` reaches only the outputs whose row stores column ``j``: the
known difference of docs/ARCHITECTURE.md, "Non-finite values".

On a machine without a CUDA GPU ``import effx_lab`` switches on Triton's CPU interpreter
(correct, slow). :func:`compile_report` compiles the kernel for NVIDIA targets (sm_80,
sm_90) without a GPU. This module is not imported by ``effx_lab.nm``: ``from
effx_lab.nm import kernels as K``.
"""

from __future__ import annotations

import math

import effx_lab  # noqa: F401  (first: sets TRITON_INTERPRET=1 when there is no GPU)
from effx_lab import _triton
from effx_lab._triton import jit as _jit
from effx_lab._triton import kernel_source
from effx_lab._triton import tl, triton
from effx_lab._validate import describe

import torch

from ._format import NMCompressed
from .shapes import check_nm_matmul_args

__all__ = [
    "kernel_source",
    "available",
    "why_unavailable",
    "nm_matmul_triton",
    "compile_report",
    "DTYPES",
]

DTYPES = (torch.float16, torch.bfloat16, torch.float32)


@_jit
def _nm24_matmul_kernel(
    x_ptr,  # (M, K) row-major, the rows of x
    val_ptr,  # (N, K // 2) the stored values of W
    meta_ptr,  # (N, KB) uint8: four 2-bit positions per byte
    bias_ptr,  # (N,) read only when HAS_BIAS
    y_ptr,  # (M, N) row-major output
    M, K, N, KB,  # rows of x, in_features, out_features, bytes of meta per row
    BLOCK_M: tl.constexpr,  # rows of x per program
    BLOCK_N: tl.constexpr,  # rows of W (output columns) per program
    BLOCK_K: tl.constexpr,  # input columns per step (a multiple of 8)
    HAS_BIAS: tl.constexpr,
    DOT_DTYPE: tl.constexpr,  # operand dtype of tl.dot (see _triton.dot_dtype)
):  # fmt: skip
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    # int64: M * K may exceed 2^31
    offs_m = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    offs_n = (pid_n * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
    m_mask = offs_m < M
    n_mask = offs_n < N
    KV = K // 2  # stored values per row

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    kv = tl.arange(0, BLOCK_K // 2)  # stored values of one step
    kb = tl.arange(0, BLOCK_K // 8)  # bytes of meta of one step
    shifts = tl.arange(0, 4) * 2  # slot j of a byte sits at bits [2j, 2j + 2)
    where = tl.arange(0, 4)  # the four positions of a group
    for k0 in range(0, K, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)  # dense input columns of this step
        k_mask = k < K
        # the step's stored values and packed positions, each read once, contiguous
        vmask = n_mask[:, None] & (k0 // 2 + kv < KV)[None, :]
        v = tl.load(
            val_ptr + offs_n[:, None] * KV + (k0 // 2 + kv)[None, :],
            mask=vmask,
            other=0.0,
        )  # (BLOCK_N, BLOCK_K // 2)
        bmask = n_mask[:, None] & (k0 // 8 + kb < KB)[None, :]
        byte = tl.load(
            meta_ptr + offs_n[:, None] * KB + (k0 // 8 + kb)[None, :],
            mask=bmask,
            other=0,
        ).to(tl.int32)  # (BLOCK_N, BLOCK_K // 8)
        # unpack: 4 positions per byte -> (BLOCK_N, BLOCK_K // 2)
        pos = (byte[:, :, None] >> shifts[None, None, :]) & 3
        pos = tl.reshape(pos, (BLOCK_N, BLOCK_K // 2))
        # per group: (first, second) stored value and position
        v0, v1 = tl.split(tl.reshape(v, (BLOCK_N, BLOCK_K // 4, 2)))
        p0, p1 = tl.split(tl.reshape(pos, (BLOCK_N, BLOCK_K // 4, 2)))
        # the dense (BLOCK_N, BLOCK_K) tile of W, rebuilt in registers: position q of
        # group g holds the stored value whose position is q, else 0
        w = tl.where(
            p0[:, :, None] == where[None, None, :],
            v0[:, :, None],
            tl.where(p1[:, :, None] == where[None, None, :], v1[:, :, None], 0.0),
        )
        w = tl.reshape(w, (BLOCK_N, BLOCK_K))
        xt = tl.load(
            x_ptr + offs_m[:, None] * K + k[None, :],
            mask=m_mask[:, None] & k_mask[None, :],
            other=0.0,
        )
        # x_tile @ w_tile^T
        acc += tl.dot(
            xt.to(DOT_DTYPE), tl.trans(w.to(DOT_DTYPE)), input_precision="ieee"
        )

    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)[
            None, :
        ]
    tl.store(
        y_ptr + offs_m[:, None] * N + offs_n[None, :],
        acc.to(y_ptr.dtype.element_ty),
        mask=m_mask[:, None] & n_mask[None, :],
    )


# --------------------------------------------------------------------------------------
# availability
# --------------------------------------------------------------------------------------
def _kernel_is_interpreted() -> bool:
    return _triton.is_interpreted(_nm24_matmul_kernel)


def why_unavailable() -> str | None:
    """Why :func:`nm_matmul_triton` cannot run here, or ``None``.

    It runs with a CUDA GPU (compiled) or in Triton's CPU interpreter.
    """
    return _triton.why_unavailable(_nm24_matmul_kernel, "effx_lab.nm.kernels")


def available() -> bool:
    """Whether the Triton kernel can run here; see :func:`why_unavailable`."""
    return why_unavailable() is None


# --------------------------------------------------------------------------------------
# the public function
# --------------------------------------------------------------------------------------
def _tiles(m: int, dtype: torch.dtype) -> tuple[int, int, int, int]:
    """``(BLOCK_M, BLOCK_N, BLOCK_K, num_warps)`` for ``m`` rows of ``x``.

    Decode (up to 16 rows): the smallest row tile ``tl.dot`` takes (16), narrow output
    tiles (32) so that a 4096-wide layer still gives 128 programs, long steps along the
    input (128 columns). Prefill: 64 x 64 tiles in steps of 32 columns with 8 warps
    (the decompressed tile lives in registers next to the accumulator: wider steps
    spill). float32 dots run on FMA units and hold more registers: shorter steps.
    """
    wide = dtype == torch.float32
    if m <= 16:
        return (16, 32, 32, 4) if wide else (16, 32, 128, 4)
    if wide:
        return 32, 32, 32, 4
    return (32, 64, 64, 4) if m <= 32 else (64, 64, 32, 8)


def nm_matmul_triton(
    x: torch.Tensor, c: NMCompressed, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """``x @ W.T (+ bias)`` for a 2:4 ``W`` read in compressed form, in one Triton
    kernel that decompresses the weight tiles in registers.

    See the module docstring for how the work is split. Same signature and result as
    :func:`effx_lab.nm.torch_ops.nm_matmul`: ``x (..., in_features)``, ``c`` made by
    ``torch_ops.compress(w, 2, 4)`` and ``bias (out_features,)``, one dtype among
    float16, bfloat16, float32, one device (CUDA, or CPU in the interpreter). Shapes,
    dtypes and devices are checked, never values.
    """
    reason = why_unavailable()
    if reason is not None:
        raise RuntimeError(f"the Triton kernel cannot run here: {reason}")
    if not isinstance(c, NMCompressed):
        raise TypeError(
            f"c must be an NMCompressed (made by compress), got {describe(c)}"
        )
    if not isinstance(c.values, torch.Tensor):
        raise TypeError(
            "c must hold torch tensors, got one holding "
            f"{type(c.values).__name__}; use effx_lab.nm.torch_ops.compress"
        )
    if (c.n, c.m) != (2, 4):
        raise ValueError(
            "c must be 2:4 (the kernel unpacks four 2-bit positions per byte, two per "
            f"group), got {c.n}:{c.m}; use effx_lab.nm.torch_ops.nm_matmul for it"
        )
    check_nm_matmul_args(x, c, bias, torch.Tensor, "kernels")
    dtype = c.values.dtype
    if dtype not in DTYPES:
        raise TypeError(
            f"c.values must have dtype float16, bfloat16 or float32, got {dtype}"
        )
    device = c.values.device
    if not _kernel_is_interpreted() and device.type != "cuda":
        raise ValueError(
            f"the compiled Triton kernel needs CUDA tensors, got tensors on {device}"
        )
    if device.type not in ("cpu", "cuda"):
        raise ValueError(
            "the Triton kernel runs on CUDA (or CPU, interpreted) tensors, got "
            f"{device}"
        )
    _triton.refuse_grad([x, c.values, bias], "effx_lab.nm.torch_ops.nm_matmul")

    out_features, in_features = c.shape
    lead = tuple(x.shape[:-1])
    m = math.prod(lead)
    y = torch.empty((m, out_features), dtype=dtype, device=device)
    if m == 0:
        return y.reshape(*lead, out_features)
    x2 = x.reshape(m, in_features).contiguous()
    values = c.values.contiguous()
    meta = c.meta.contiguous()
    block_m, block_n, block_k, warps = _tiles(m, dtype)
    grid = (triton.cdiv(m, block_m), triton.cdiv(out_features, block_n))
    _nm24_matmul_kernel[grid](
        x2, values, meta, values if bias is None else bias.contiguous(), y,
        m, in_features, out_features, int(meta.shape[1]),
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k,
        HAS_BIAS=bias is not None,
        DOT_DTYPE=_triton.dot_dtype(dtype, _nm24_matmul_kernel),
        num_warps=warps,
    )  # fmt: skip
    return y.reshape(*lead, out_features)


# --------------------------------------------------------------------------------------
# what the compiler makes of the kernel (no GPU needed)
# --------------------------------------------------------------------------------------
_TL_NAMES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}
_TL_DOTS = {
    torch.float16: "tl.float16",
    torch.bfloat16: "tl.bfloat16",
    torch.float32: "tl.float32",
}


def _report_cases() -> list[dict]:
    """The specialisations :func:`compile_report` compiles: decode (one token) and
    prefill (2048 tokens) tiles, each dtype, with a bias; 4 warps, 3 stages."""
    cases = []
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        name = _TL_NAMES[dtype]
        for label, m in (("decode M=1", 1), ("prefill M=2048", 2048)):
            bm, bn, bk, warps = _tiles(m, dtype)
            cases.append({
                "name": f"nm24_matmul {name} {label} +bias",
                "kernel": "_nm24_matmul_kernel",
                "signature": {
                    "x_ptr": f"*{name}", "val_ptr": f"*{name}", "meta_ptr": "*u8",
                    "bias_ptr": f"*{name}", "y_ptr": f"*{name}",
                    "M": "i32", "K": "i32", "N": "i32", "KB": "i32",
                },
                "constexprs": {
                    "BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "HAS_BIAS": True,
                    "DOT_DTYPE": _TL_DOTS[dtype],
                },
                "num_warps": warps,
                "num_stages": 3,
            })  # fmt: skip
    return cases


def compile_report(
    capabilities: tuple[int, ...] = (80, 90),
    match: str | None = None,
    timeout: float = 600.0,
) -> list[dict]:
    """Compile the 2:4 kernel for NVIDIA GPUs, without a GPU.

    ``capabilities``: compute capabilities as ints (75 = T4, 80 = A100, 90 = H100);
    ``match``: keep only the cases whose name contains this text (e.g. ``"fp16"``);
    ``timeout`` in seconds. The cases (:func:`_report_cases`) are float16, bfloat16 and
    float32, for decode (one token) and prefill (2048 tokens). Runs in a subprocess
    with ``TRITON_INTERPRET=0`` and asks the ``ptxas`` shipped with Triton (``-v``) for
    the resources. One dict per (case, target): ``name``, ``target``, ``ok``, and when
    it compiled ``registers`` (per thread), ``spill_bytes`` (0 is what you want),
    ``stack_bytes``, ``shared_bytes``, ``num_warps`` and ``mma`` (``"mma.sync"``,
    ``"wgmma"`` or ``None``: float32 dots with ``input_precision="ieee"`` run on FMA
    units); otherwise ``error``.
    """
    names = [c["name"] for c in _report_cases()] if _triton.IMPORT_ERROR is None else []
    return _triton.compile_report(__name__, names, capabilities, match, timeout)
