"""The block-sparse matmul ``x @ W.T (+ bias)`` as one Triton kernel (chapters 3, 4).

``W (out_features, in_features)`` is stored in BSR form
(:class:`~effx_lab.sparse._format.BlockSparse`, made by
:func:`effx_lab.sparse.torch_ops.to_block_sparse`): ``values (nnzb, bh, bw)``,
``col_indices``, ``row_ptr``. The math is
:func:`effx_lab.sparse.reference.block_sparse_matmul`.

**How the work is split.** One program per output block: a tile of ``BLOCK_M`` rows of
``x`` times one block row ``r`` of ``W``, i.e. the ``BLOCK_M x bh`` outputs
``y[m0:m0+BLOCK_M, r*bh:(r+1)*bh]``. The program reads ``row_ptr[r]`` and
``row_ptr[r+1]`` and loops over the stored blocks of its block row only: for block ``k``
(block column ``c = col_indices[k]``) it loads the ``BLOCK_M x bw`` tile ``x[:,
c*bw:(c+1)*bw]`` and the ``bh x bw`` block and accumulates ``x_tile @ block^T`` in
float32. A block row with no stored block costs one load of ``row_ptr`` and writes zeros
(or the bias). The work is proportional to the number of stored blocks, the dense cost
times the density; the price of sparsity is that ``x`` is read once per stored block of
each block row instead of streaming through a dense weight.

**Restrictions.** ``tl.dot`` needs operands of at least 16 x 16: ``bh`` and ``bw`` must
be powers of two >= 16. Forward only (no backward: inputs that require grad are refused
while autograd records).

**Precision.** Every ``tl.dot`` accumulates in float32 with ``input_precision="ieee"``
(no TF32): float32 inputs match the float64 product to float32 accuracy.
float16/bfloat16 inputs are fed to the dots in their own dtype; the output has the input
dtype.

**NaN.** Nothing is clamped or multiplied by a mask: a NaN in row ``i`` of ``x`` reaches
every output of row ``i`` whose block row stores a block that reads it, the same outputs
as :mod:`.torch_ops`; an output whose block row stores no block is 0 (or the bias), as
in every face.

On a machine without a CUDA GPU ``import effx_lab`` switches on Triton's CPU interpreter
(correct, slow). :func:`compile_report` compiles the kernel for NVIDIA targets (sm_80,
sm_90) without a GPU and reports its registers, spills and tensor-core instructions.
This module is not imported by ``effx_lab.sparse``: ``from effx_lab.sparse import
kernels as K``.
"""

from __future__ import annotations

import math

import effx_lab  # noqa: F401  (first: sets TRITON_INTERPRET=1 when there is no GPU)
from effx_lab import _triton
from effx_lab._triton import jit as _jit
from effx_lab._triton import kernel_source
from effx_lab._triton import tl, triton

import torch

from ._format import BlockSparse
from .reference import _check_bsr, _check_matmul_args

__all__ = [
    "kernel_source",
    "available",
    "why_unavailable",
    "block_sparse_matmul_triton",
    "compile_report",
    "DTYPES",
]

DTYPES = (torch.float16, torch.bfloat16, torch.float32)


@_jit
def _bsr_matmul_kernel(
    x_ptr,  # (M, K) row-major, the rows of x
    val_ptr,  # (nnzb, BH, BW) stored blocks
    col_ptr,  # (nnzb,) int64 block column of each stored block
    rowptr_ptr,  # (n_block_rows + 1,) int64
    bias_ptr,  # (N,) read only when HAS_BIAS
    y_ptr,  # (M, N) row-major output
    M, K, N,  # rows of x, in_features, out_features
    BH: tl.constexpr,  # block height (output columns per program)
    BW: tl.constexpr,  # block width
    BLOCK_M: tl.constexpr,  # rows of x per program
    HAS_BIAS: tl.constexpr,
    DOT_DTYPE: tl.constexpr,  # operand dtype of tl.dot (see _triton.dot_dtype)
):  # fmt: skip
    pid_m = tl.program_id(0)
    r = tl.program_id(1).to(tl.int64)  # block row of W = block of BH output columns

    # int64: M * K may exceed 2^31
    offs_m = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    offs_h = tl.arange(0, BH)
    offs_w = tl.arange(0, BW)
    m_mask = offs_m < M

    acc = tl.zeros((BLOCK_M, BH), dtype=tl.float32)
    start = tl.load(rowptr_ptr + r)
    end = tl.load(rowptr_ptr + r + 1)
    for k in range(start, end):  # only the stored blocks of block row r
        c = tl.load(col_ptr + k)
        xt = tl.load(
            x_ptr + offs_m[:, None] * K + c * BW + offs_w[None, :],
            mask=m_mask[:, None],
            other=0.0,
        )
        blk = tl.load(val_ptr + k * (BH * BW) + offs_h[:, None] * BW + offs_w[None, :])
        # x_tile @ blk^T
        acc += tl.dot(
            xt.to(DOT_DTYPE), tl.trans(blk.to(DOT_DTYPE)), input_precision="ieee"
        )

    cols = r * BH + offs_h
    if HAS_BIAS:
        acc += tl.load(bias_ptr + cols).to(tl.float32)[None, :]
    tl.store(
        y_ptr + offs_m[:, None] * N + cols[None, :],
        acc.to(y_ptr.dtype.element_ty),
        mask=m_mask[:, None],
    )


# --------------------------------------------------------------------------------------
# availability
# --------------------------------------------------------------------------------------
def _kernel_is_interpreted() -> bool:
    return _triton.is_interpreted(_bsr_matmul_kernel)


def why_unavailable() -> str | None:
    """Why :func:`block_sparse_matmul_triton` cannot run here, or ``None``.

    It runs with a CUDA GPU (compiled) or in Triton's CPU interpreter.
    """
    return _triton.why_unavailable(_bsr_matmul_kernel, "effx_lab.sparse.kernels")


def available() -> bool:
    """Whether the Triton kernel can run here; see :func:`why_unavailable`."""
    return why_unavailable() is None


# --------------------------------------------------------------------------------------
# the public function
# --------------------------------------------------------------------------------------
def _is_pow2_at_least_16(x: int) -> bool:
    return x >= 16 and (x & (x - 1)) == 0


def _block_m(m: int) -> int:
    """Rows of ``x`` per program: 16 for a few rows, up to 64."""
    return min(64, max(16, triton.next_power_of_2(max(m, 1))))


def block_sparse_matmul_triton(
    x: torch.Tensor, bsr: BlockSparse, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """``x @ W.T (+ bias)`` for the block-sparse ``W``, in one Triton kernel.

    See the module docstring for how the work is split.

    Same signature and result as :func:`effx_lab.sparse.torch_ops.block_sparse_matmul`:
    ``x (..., in_features)``, ``bsr`` made by ``torch_ops.to_block_sparse`` and ``bias
    (out_features,)``, one dtype among float16, bfloat16, float32, one device (CUDA, or
    CPU in the interpreter). ``bh`` and ``bw`` must be powers of two >= 16. Shapes,
    dtypes and devices are checked, never values.
    """
    reason = why_unavailable()
    if reason is not None:
        raise RuntimeError(f"the Triton kernel cannot run here: {reason}")
    bsr = _check_bsr(bsr, numpy_face=False)
    _check_matmul_args(x, bsr, bias, torch.Tensor, "torch_ops")
    dtype = bsr.values.dtype
    if dtype not in DTYPES:
        raise TypeError(
            f"bsr.values must have dtype float16, bfloat16 or float32, got {dtype}"
        )
    device = bsr.values.device
    if not _kernel_is_interpreted() and device.type != "cuda":
        raise ValueError(
            f"the compiled Triton kernel needs CUDA tensors, got tensors on {device}"
        )
    if device.type not in ("cpu", "cuda"):
        raise ValueError(
            "the Triton kernel runs on CUDA (or CPU, interpreted) tensors, got "
            f"{device}"
        )
    bh, bw = bsr.block
    for name, size in (("bh", bh), ("bw", bw)):
        if not _is_pow2_at_least_16(size):
            raise ValueError(
                f"the block's {name} must be a power of two >= 16 (tl.dot needs "
                f"blocks of at least 16), got block {bsr.block}"
            )
    _triton.refuse_grad([x, bsr.values, bias], "effx_lab.sparse.torch_ops")

    out_features, in_features = bsr.shape
    lead = tuple(x.shape[:-1])
    m = math.prod(lead)
    y = torch.empty((m, out_features), dtype=dtype, device=device)
    if m == 0:
        return y.reshape(*lead, out_features)
    if bsr.nnzb == 0:
        # nothing stored, and no block to hand the kernel a valid pointer: 0 or the bias
        y.zero_()
        return (y if bias is None else y + bias).reshape(*lead, out_features)
    x2 = x.reshape(m, in_features).contiguous()
    values = bsr.values.contiguous()
    block_m = _block_m(m)
    grid = (triton.cdiv(m, block_m), bsr.block_grid[0])
    _bsr_matmul_kernel[grid](
        x2, values, bsr.col_indices.contiguous(), bsr.row_ptr.contiguous(),
        values if bias is None else bias.contiguous(), y,
        m, in_features, out_features,
        BH=bh, BW=bw, BLOCK_M=block_m,
        HAS_BIAS=bias is not None,
        DOT_DTYPE=_triton.dot_dtype(dtype, _bsr_matmul_kernel),
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
    """The specialisations :func:`compile_report` compiles: blocks of 32 x 32 (the
    chapter's block pruning), decode (``BLOCK_M`` 16, one token) and prefill
    (``BLOCK_M`` 64), each dtype; the launch's defaults (4 warps, 3 stages)."""
    cases = []
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        name = _TL_NAMES[dtype]
        for label, m in (("decode M=1", 1), ("prefill M=512", 512)):
            cases.append({
                "name": f"bsr_matmul {name} block 32x32 {label} +bias",
                "kernel": "_bsr_matmul_kernel",
                "signature": {
                    "x_ptr": f"*{name}", "val_ptr": f"*{name}", "col_ptr": "*i64",
                    "rowptr_ptr": "*i64", "bias_ptr": f"*{name}", "y_ptr": f"*{name}",
                    "M": "i32", "K": "i32", "N": "i32",
                },
                "constexprs": {
                    "BH": 32, "BW": 32, "BLOCK_M": _block_m(m), "HAS_BIAS": True,
                    "DOT_DTYPE": _TL_DOTS[dtype],
                },
                "num_warps": 4,
                "num_stages": 3,
            })  # fmt: skip
    return cases




def compile_report(
    capabilities: tuple[int, ...] = (80, 90),
    match: str | None = None,
    timeout: float = 600.0,
) -> list[dict]:
    """Compile the block-sparse kernel for NVIDIA GPUs, without a GPU.

    ``capabilities``: compute capabilities as ints (75 = T4, 80 = A100, 90 = H100);
    ``match``: keep only the cases whose name contains this text (e.g. ``"fp16"``);
    ``timeout`` in seconds. The cases (:func:`_report_cases`) are blocks of 32 x 32 in
    float16, bfloat16 and float32, for decode (one token) and prefill (512 tokens). Runs
    in a subprocess with ``TRITON_INTERPRET=0`` and asks the ``ptxas`` shipped with
    Triton (``-v``) for the resources. One dict per (case, target): ``name``,
    ``target``, ``ok``, and when it compiled ``registers`` (per thread),
    ``spill_bytes`` (0 is what you want), ``stack_bytes``, ``shared_bytes``,
    ``num_warps`` and ``mma`` (``"mma.sync"``, ``"wgmma"`` or ``None``: float32 dots
    with ``input_precision="ieee"`` run on FMA units); otherwise ``error``.
    """
    names = [c["name"] for c in _report_cases()] if _triton.IMPORT_ERROR is None else []
    return _triton.compile_report(__name__, names, capabilities, match, timeout)
