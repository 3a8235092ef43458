"""The grouped GEMM over expert-sorted tokens as one Triton kernel (05.3).

After :func:`effx_lab.moe.torch_ops.sort_by_expert`, the kept (token, choice) rows of
``x`` sit in expert order: expert ``e`` owns rows ``offsets[e]:offsets[e+1]`` of
``x_sorted (N, K)``. :func:`grouped_matmul_triton` multiplies every segment by its own
weight ``w[e] (K, N_out)`` in **one launch** (``torch_ops.grouped_ffn`` launches one
GEMM per expert; ``F.grouped_mm`` is PyTorch's one-launch version, :mod:`.library`).

**How the work is split.** The host reads the ``E + 1`` offsets once and builds a
*tile table* (as the grouped GEMM of Triton's tutorial and MegaBlocks do): every
expert's segment is cut into row tiles of ``BLOCK_M``, and tile ``i`` records its
expert ``tile_expert[i]`` and its first row ``tile_row[i]``. The grid is (tiles, column
tiles of ``BLOCK_N``); a program reads its expert and first row from the table, walks
the inner dimension in steps of ``BLOCK_K`` and ``tl.dot``'s the ``BLOCK_M x BLOCK_K``
tile of ``x_sorted`` with the ``BLOCK_K x BLOCK_N`` tile of ``w[e]``, accumulating in
float32. Rows past the segment's end (``offsets[e+1]``) are masked: a segment that is
not a multiple of ``BLOCK_M`` costs one partly empty tile, an expert with no rows costs
nothing (no tile). The padding is at most ``BLOCK_M - 1`` rows per expert, where the
one-hot formulation pads every expert to the capacity.

**Epilogue.** ``bias (E, N_out)`` (``b[e]`` added to the rows of expert ``e``) and the
tanh GELU can be fused into the store (``gelu=True``):
:func:`moe_grouped_triton` runs the MoE FFN as two launches,
``gelu(x_sorted @ w1[e] + b1[e])`` and ``h @ w2[e] + b2[e]``, then scales by the gates
and scatter-adds in torch. The GELU is ``0.5 z (1 + tanh(c (z + 0.044715 z^3)))`` with
``tanh(u) = 1 - 2 / (exp(2u) + 1)`` (``u`` clamped at 15 from above with a
``tl.where``, which keeps a NaN, so that ``exp`` never overflows; absolute error of a
few float32 ulps near 0, where ``1 + tanh`` is what matters).

**Restrictions.** Forward only (inputs that require grad are refused while autograd
records: use :func:`effx_lab.moe.torch_ops.moe_grouped` to train); float16, bfloat16,
float32.

**Precision.** ``tl.dot`` accumulates in float32 with ``input_precision="ieee"`` (no
TF32): float32 inputs match the float64 product to float32 accuracy; 16-bit operands
are fed to the dots in their own dtype, the output has the input dtype (so between the
two GEMMs of :func:`moe_grouped_triton` ``h`` is rounded once to it, as in any 16-bit
MoE layer).

**NaN.** Masked loads *replace* (``other=0``): a NaN in a row of ``x_sorted`` reaches
every output of that row and no other row; a NaN in ``w[e]`` reaches the outputs of
expert ``e``'s rows in its column only.

On a machine without a CUDA GPU ``import effx_lab`` switches on Triton's CPU interpreter
(correct, slow). :func:`compile_report` compiles the kernel for NVIDIA targets (sm_80,
sm_90) without a GPU. This module is not imported by ``effx_lab.moe``: ``from
effx_lab.moe import kernels as K``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import effx_lab  # noqa: F401  (first: sets TRITON_INTERPRET=1 when there is no GPU)
from effx_lab import _triton
from effx_lab._triton import jit as _jit
from effx_lab._triton import kernel_source
from effx_lab._triton import tl, triton
from effx_lab._validate import check_bool, describe

import torch

from .shapes import check_offsets
from ._torch_dispatch import _inputs, sort_by_expert

__all__ = [
    "kernel_source",
    "available",
    "why_unavailable",
    "grouped_matmul_triton",
    "moe_grouped_triton",
    "compile_report",
    "DTYPES",
]

DTYPES = (torch.float16, torch.bfloat16, torch.float32)


@_jit
def _grouped_matmul_kernel(
    x_ptr,  # (M, K) row-major: the expert-sorted rows
    w_ptr,  # (E, K, N) row-major: one (K, N) weight per expert
    b_ptr,  # (E, N) bias, read only when HAS_BIAS
    y_ptr,  # (M, N) row-major output
    tile_expert_ptr,  # (n_tiles,) int32: the expert of each row tile
    tile_row_ptr,  # (n_tiles,) int32: the first row of each row tile
    offsets_ptr,  # (E + 1,) int32: expert e owns rows offsets[e]:offsets[e+1]
    K, N,  # inner and output widths
    BLOCK_M: tl.constexpr,  # rows per tile
    BLOCK_N: tl.constexpr,  # output columns per program
    BLOCK_K: tl.constexpr,  # inner columns per step
    HAS_BIAS: tl.constexpr,
    GELU: tl.constexpr,  # apply the tanh GELU after the bias
    DOT_DTYPE: tl.constexpr,  # operand dtype of tl.dot (see _triton.dot_dtype)
):  # fmt: skip
    pid_t = tl.program_id(0)
    pid_n = tl.program_id(1)
    e = tl.load(tile_expert_ptr + pid_t).to(tl.int64)
    row0 = tl.load(tile_row_ptr + pid_t).to(tl.int64)
    row_end = tl.load(offsets_ptr + e + 1).to(tl.int64)
    # int64: M * K and E * K * N may exceed 2^31
    offs_m = row0 + tl.arange(0, BLOCK_M).to(tl.int64)
    offs_n = (pid_n * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
    m_mask = offs_m < row_end  # the segment's ragged end
    n_mask = offs_n < N
    w_base = w_ptr + e * K * N

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        k_mask = k < K
        xt = tl.load(
            x_ptr + offs_m[:, None] * K + k[None, :],
            mask=m_mask[:, None] & k_mask[None, :],
            other=0.0,
        )
        wt = tl.load(
            w_base + k[:, None] * N + offs_n[None, :],
            mask=k_mask[:, None] & n_mask[None, :],
            other=0.0,
        )
        acc += tl.dot(xt.to(DOT_DTYPE), wt.to(DOT_DTYPE), input_precision="ieee")

    if HAS_BIAS:
        bias = tl.load(b_ptr + e * N + offs_n, mask=n_mask, other=0.0)
        acc += bias.to(tl.float32)[None, :]
    if GELU:
        u = 0.7978845608028654 * (acc + 0.044715 * acc * acc * acc)  # sqrt(2/pi)
        u = tl.where(u > 15.0, 15.0, u)  # tanh(15) = 1 in float32; NaN stays NaN
        tanh = 1.0 - 2.0 / (tl.exp(2.0 * u) + 1.0)
        acc = 0.5 * acc * (1.0 + tanh)
    tl.store(
        y_ptr + offs_m[:, None] * N + offs_n[None, :],
        acc.to(y_ptr.dtype.element_ty),
        mask=m_mask[:, None] & n_mask[None, :],
    )


# --------------------------------------------------------------------------------------
# availability
# --------------------------------------------------------------------------------------
def _kernel_is_interpreted() -> bool:
    return _triton.is_interpreted(_grouped_matmul_kernel)


def why_unavailable() -> str | None:
    """Why :func:`grouped_matmul_triton` cannot run here, or ``None``.

    It runs with a CUDA GPU (compiled) or in Triton's CPU interpreter.
    """
    return _triton.why_unavailable(_grouped_matmul_kernel, "effx_lab.moe.kernels")


def available() -> bool:
    """Whether the Triton kernel can run here; see :func:`why_unavailable`."""
    return why_unavailable() is None


# --------------------------------------------------------------------------------------
# the public functions
# --------------------------------------------------------------------------------------
def _tiles(dtype: torch.dtype) -> tuple[int, int, int, int]:
    """``(BLOCK_M, BLOCK_N, BLOCK_K, num_warps)``.

    Row tiles of 64: at 4096 tokens over 64 experts a segment has 64 rows on average,
    so most experts take one tile and a ragged end wastes under one tile per expert.
    16-bit dots run on tensor cores with 128 output columns per program and 8 warps
    (4 warps spill with the fused GELU on sm_90); float32 dots (``ieee``: FMA units)
    hold more registers, so narrower tiles and shorter steps.
    """
    if dtype == torch.float32:
        return 64, 64, 16, 4
    return 64, 128, 32, 8


def _tile_table(
    bounds: list[int], block_m: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(tile_expert, tile_row)`` int32: each expert's segment cut into row tiles of
    ``block_m`` (an empty segment has none)."""
    experts, rows = [], []
    for e, (lo, hi) in enumerate(zip(bounds, bounds[1:])):
        for r in range(lo, hi, block_m):
            experts.append(e)
            rows.append(r)
    as_int32 = dict(dtype=torch.int32, device=device)
    return torch.tensor(experts, **as_int32), torch.tensor(rows, **as_int32)


def _check_tensor(name: str, t: Any) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch tensor, got {describe(t)}")
    return t


def grouped_matmul_triton(
    x_sorted: torch.Tensor,
    offsets: torch.Tensor,
    w: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    gelu: bool = False,
) -> torch.Tensor:
    """For every expert ``e``: rows ``offsets[e]:offsets[e+1]`` of ``x_sorted (M, K)``
    times ``w[e]`` (``w (E, K, N)``), plus ``bias[e]`` (``bias (E, N)``) and through the
    tanh GELU when ``gelu``; one Triton launch, output ``(M, N)``.

    ``offsets (E+1,)`` int (made by :func:`effx_lab.moe.torch_ops.sort_by_expert`):
    from 0 to ``M``, non-decreasing; read back once to build the tile table. One dtype
    among float16, bfloat16, float32 for ``x_sorted``, ``w`` and ``bias``; one device
    (CUDA, or CPU in the interpreter). Shapes, dtypes and devices are checked, never
    the values of ``x_sorted``/``w``. Forward only.
    """
    reason = why_unavailable()
    if reason is not None:
        raise RuntimeError(f"the Triton kernel cannot run here: {reason}")
    _check_tensor("x_sorted", x_sorted)
    _check_tensor("w", w)
    _check_tensor("offsets", offsets)
    gelu = check_bool("gelu", gelu)
    if w.ndim != 3 or min(w.shape) < 1:
        raise ValueError(
            f"w must have shape (E, K, N) (one (K, N) weight per expert, x @ w), got "
            f"{tuple(w.shape)}"
        )
    n_experts, k_dim, n_dim = (int(s) for s in w.shape)
    if x_sorted.ndim != 2 or int(x_sorted.shape[1]) != k_dim:
        raise ValueError(
            f"x_sorted must have shape (M, K) with K = {k_dim} (w is (E, K, N)), got "
            f"{tuple(x_sorted.shape)}"
        )
    dtype = w.dtype
    if dtype not in DTYPES:
        raise TypeError(f"w must have dtype float16, bfloat16 or float32, got {dtype}")
    if x_sorted.dtype != dtype:
        raise TypeError(
            f"x_sorted must have the dtype of w ({dtype}), got {x_sorted.dtype}"
        )
    if bias is not None:
        _check_tensor("bias", bias)
        if tuple(bias.shape) != (n_experts, n_dim):
            raise ValueError(
                f"bias must have shape (E, N) = {(n_experts, n_dim)}, got "
                f"{tuple(bias.shape)}"
            )
        if bias.dtype != dtype:
            raise TypeError(
                f"bias must have the dtype of w ({dtype}), got {bias.dtype}"
            )
    device = w.device
    for name, t in (("x_sorted", x_sorted), ("offsets", offsets), ("bias", bias)):
        if t is not None and t.device != device:
            raise ValueError(
                f"{name} must be on the device of w ({device}), got {t.device}"
            )
    if not _kernel_is_interpreted() and device.type != "cuda":
        raise ValueError(
            f"the compiled Triton kernel needs CUDA tensors, got tensors on {device}"
        )
    if device.type not in ("cpu", "cuda"):
        raise ValueError(
            "the Triton kernel runs on CUDA (or CPU, interpreted) tensors, got "
            f"{device}"
        )
    m_rows = int(x_sorted.shape[0])
    bounds = check_offsets(offsets, m_rows, n_experts, torch.Tensor)
    _triton.refuse_grad(
        [x_sorted, w, bias], "effx_lab.moe.torch_ops.grouped_ffn (differentiable)"
    )

    y = torch.empty((m_rows, n_dim), dtype=dtype, device=device)
    if m_rows == 0:
        return y
    block_m, block_n, block_k, warps = _tiles(dtype)
    tile_expert, tile_row = _tile_table(bounds, block_m, device)
    offs32 = torch.tensor(bounds, dtype=torch.int32, device=device)
    x2 = x_sorted.contiguous()
    w2 = w.contiguous()
    grid = (int(tile_expert.shape[0]), triton.cdiv(n_dim, block_n))
    _grouped_matmul_kernel[grid](
        x2, w2, w2 if bias is None else bias.contiguous(), y,
        tile_expert, tile_row, offs32,
        k_dim, n_dim,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k,
        HAS_BIAS=bias is not None, GELU=gelu,
        DOT_DTYPE=_triton.dot_dtype(dtype, _grouped_matmul_kernel),
        num_warps=warps,
    )  # fmt: skip
    return y


def moe_grouped_triton(
    x: torch.Tensor, routing: Any, params: Mapping[str, torch.Tensor]
) -> torch.Tensor:
    """The MoE output ``(T, d)`` (no residual) with the expert GEMMs in Triton:
    :func:`~effx_lab.moe.torch_ops.sort_by_expert`, one gather, two launches of
    :func:`grouped_matmul_triton` (the first with ``b1`` and the GELU fused, the second
    with ``b2``), the gates and one ``index_add`` in torch. The same result as
    :func:`effx_lab.moe.torch_ops.moe_grouped` up to rounding; forward only.
    """
    reason = why_unavailable()
    if reason is not None:
        raise RuntimeError(f"the Triton kernel cannot run here: {reason}")
    _, k, _, _ = _inputs(x, routing, params)
    if x.dtype not in DTYPES:
        raise TypeError(
            f"x and params must have dtype float16, bfloat16 or float32, got {x.dtype};"
            " use effx_lab.moe.torch_ops.moe_grouped for float64"
        )
    _triton.refuse_grad(
        [x, routing.gates, *params.values()],
        "effx_lab.moe.torch_ops.moe_grouped (differentiable)",
    )
    order, offsets = sort_by_expert(routing)
    tokens = order // k
    xs = x.index_select(0, tokens)
    h = grouped_matmul_triton(xs, offsets, params["w1"], params["b1"], gelu=True)
    h = grouped_matmul_triton(h, offsets, params["w2"], params["b2"])
    gates = routing.gates.reshape(-1).index_select(0, order).to(x.dtype)
    return torch.zeros_like(x).index_add(0, tokens, h * gates[:, None])


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
    """The specialisations :func:`compile_report` compiles: each dtype, the first GEMM
    of the MoE FFN (bias and GELU fused) and the second (bias only); 3 stages."""
    cases = []
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        name = _TL_NAMES[dtype]
        bm, bn, bk, warps = _tiles(dtype)
        for label, gelu in (("up +bias+gelu", True), ("down +bias", False)):
            cases.append({
                "name": f"grouped_matmul {name} {label}",
                "kernel": "_grouped_matmul_kernel",
                "signature": {
                    "x_ptr": f"*{name}", "w_ptr": f"*{name}", "b_ptr": f"*{name}",
                    "y_ptr": f"*{name}", "tile_expert_ptr": "*i32",
                    "tile_row_ptr": "*i32", "offsets_ptr": "*i32",
                    "K": "i32", "N": "i32",
                },
                "constexprs": {
                    "BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "HAS_BIAS": True,
                    "GELU": gelu, "DOT_DTYPE": _TL_DOTS[dtype],
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
    """Compile the grouped GEMM for NVIDIA GPUs, without a GPU.

    ``capabilities``: compute capabilities as ints (75 = T4, 80 = A100, 90 = H100);
    ``match``: keep only the cases whose name contains this text (e.g. ``"fp16"``);
    ``timeout`` in seconds. The cases (:func:`_report_cases`) are float16, bfloat16 and
    float32, each for the up projection (bias and GELU fused) and the down projection.
    One dict per (case, target) as :func:`effx_lab._triton.compile_report` describes
    (``registers``, ``spill_bytes``, ``shared_bytes``, ``mma``, or ``error``).
    """
    names = [c["name"] for c in _report_cases()] if _triton.IMPORT_ERROR is None else []
    return _triton.compile_report(__name__, names, capabilities, match, timeout)
