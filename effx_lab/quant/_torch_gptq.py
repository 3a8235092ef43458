"""GPTQ and weight-only storage in PyTorch, vectorised (chapter 2, section 02.5 and the decode path).

Same names and signatures as :mod:`._np_gptq` (torch tensors in, torch tensors out; the same
:class:`~._np_gptq.GPTQResult`, here holding tensors). Frantar et al. 2023, "GPTQ: Accurate Post-Training
Quantization for Generative Pre-trained Transformers"; read the NumPy module's docstring for the method.

:func:`gptq_quantize` computes the same result as the reference (in float64 the same codes, except at exact
rounding ties) with a different order of operations. What differs, and why:

* **One Cholesky factorisation instead of three.** The paper's ``U = Cholesky(H^-1)^T`` (upper) is the inverse
  of the upper triangular ``R`` with ``H = R R^T`` (``H^-1 = U^T U`` gives ``H = U^-1 U^-T``), and ``R`` is a
  Cholesky factorisation run from the last row up: ``R = J chol(J H J) J`` with ``J`` the flip. So one
  ``torch.linalg.cholesky`` replaces ``cholesky`` + ``cholesky_inverse`` + ``cholesky`` (four times less work:
  at ``in = 1024`` this was most of the time). The updates are rewritten for ``R``: the paper's
  ``W_cur[:, k] = W[:, k] - sum_{j<k} E[:, j] U[j, k]`` with ``E[:, j] = (W_cur[:, j] - Q[:, j]) / U[j, j]``
  means ``W - Q = E U``, i.e. ``E = (W - Q) R``, and so

      W_cur[:, k] = W[:, k] + sum_{j<k} D[:, j] R[j, k] / R[k, k],      D = W - Q  (residuals against the
                                                                         *original* weights)

  which the loop accumulates with the same lazy batching (``+= D_block @ Rs_block``, ``Rs = R / diag(R)``).
* **Group grids from the paper's current weights.** The partial sums of that recursion (after ``j < k``
  columns) are not the paper's partially updated weights; only the complete sum is. When a group ``G``
  starts after the columns ``P``, its grid needs the paper's ``W_G - E_P U_PG`` (the optimal update of the
  group given ``P``); since ``R U = I`` blockwise, ``R_PP U_PG = -R_PG U_GG``, this is
  ``W_G + (D_P R_PG) R_GG^-1``: one small matrix product per group, with every ``R_GG^-1`` from one batched
  ``torch.linalg.solve_triangular`` at the start.
* **Columns are rows, in grid units.** The weight is held transposed (``Wt = W^T``, ``[in, out]``) so a column
  is a contiguous row. Each sub-block is divided by its group's scale once (``a = w / s``): a code is
  ``clamp(round(a), qmin - z, qmax - z) + z`` (equal to the reference's ``clamp(round(w / s) + z, qmin,
  qmax)`` for integer ``z``). The sub-block's own updates ``sum_j Rs[j, k] (a0_j - q_j)`` are split: the
  ``a0`` (original weights) half is one small product before the loop, the ``q`` half a rank-1 update after
  each code. So a column costs ``round``, ``clamp_`` and ``addr_``, three in-place operations on
  preallocated rows, and nothing else.
* **Two levels of lazy batching.** Inside each block of ``block_size`` columns the columns run in sub-blocks
  of at most :data:`SUB_BLOCK` (also cut at group starts): the per-column rank-1 update touches its sub-block
  only, the sub-block reaches the rest of the block with one ``addmm_``, and the block the rest of the matrix
  with one ``addmm_`` (the paper's lazy batch update). The Python loop over columns is the only sequential
  part (a column's code depends on the previous columns' errors); there is no host-device synchronisation
  inside it (CUDA runs it asynchronously). Working buffers are per block / group / sub-block, not per matrix.
* validation is the reference's (shared helpers), with a one-pass ``aminmax`` for finiteness (``isfinite``
  is slow on CPU); the group grids use the formula of :func:`~.torch_ops.compute_qparams` without its
  validation pass, and the dequantized weight is computed on a grouped view.

Cost (``in = out = 1024``): one Cholesky (``in^3 / 3`` flops), the lazy updates (about ``out * in^2``, as in
the reference), the group corrections (``out * in * group_size``) and ``in`` short steps of Python; the
NumPy reference pays two Cholesky factorisations and an inverse, and per column a few validated calls.

float32 on the device of ``w`` (float64 if ``w`` is float64; float16/bfloat16 are computed in float32 and the
dequantized weight is returned in the input dtype). :func:`w4a16_linear` and :func:`w8a16_linear` return
x's dtype: their fused decode path (:mod:`._torch_fused`) accumulates in float32, their blocked and CUDA
paths compute in the dtype of ``x`` itself (bfloat16/float16 activations stay 16-bit: that is the scheme),
unlike the NumPy reference, which computes float16 in float32.
"""

from __future__ import annotations

import itertools
import math

import torch

from . import _torch_fused as _fused
from ._np_gptq import (
    NOT_PD,
    GPTQResult,
    _pd_failure,
    _check_bias,
    _check_codes,
    _check_float_array,
    _check_gptq_args,
    _check_group_size,
    _check_int8_weight,
    _check_packed,
    _check_scales,
    _check_w4a16_args,
    _check_weight,
    _check_x_for,
)
from ._np_uniform import qrange
from ._torch_uniform import compute_qparams, fake_quantize, quantize

__all__ = [
    "GPTQResult",
    "gptq_hessian",
    "gptq_quantize",
    "layer_output_error",
    "pack_int4",
    "quantize_weight_int4",
    "quantize_weight_int8",
    "rtn_quantize_weight",
    "unpack_int4",
    "w4a16_linear",
    "w8a16_linear",
]

SUB_BLOCK = 16  # columns per inner sub-block (rank-1 updates stay this narrow)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


# --------------------------------------------------------------------------- baseline and Hessian
def rtn_quantize_weight(
    w: torch.Tensor, bits: int = 4, group_size: int | None = None, symmetric: bool = False
) -> torch.Tensor:
    """Round-to-nearest baseline, per output row or per row and group of ``group_size`` input features;
    same contract as :func:`._np_gptq.rtn_quantize_weight`."""
    _check_weight("w", w, torch_mode=True)
    group_size = _check_group_size(group_size, w.shape[1], allow_none=True)
    if group_size is None:
        return fake_quantize(w, bits, symmetric, granularity="channel", axis=0)
    return fake_quantize(w, bits, symmetric, granularity="group", axis=1, group_size=group_size)


def gptq_hessian(x: torch.Tensor) -> torch.Tensor:
    """``H = 2 X^T X / n`` of calibration inputs ``x`` ``[..., in]``; same contract as
    :func:`._np_gptq.gptq_hessian` (float32, or float64 for float64 input; on x's device)."""
    _check_float_array("x", x, torch_mode=True, ndim=tuple(range(1, 9)))
    xs = x.reshape(-1, x.shape[-1]).to(_compute_dtype(x.dtype))
    return (xs.T @ xs).mul_(2.0 / xs.shape[0])


def _reverse_cholesky(h: torch.Tensor, damp: float) -> torch.Tensor:
    """The upper triangular ``R`` with ``H = R R^T`` (a Cholesky factorisation run from the last row up):
    ``R = J chol(J H J) J`` with ``J`` the flip. ``R^-1`` is the paper's ``Cholesky(H^-1)^T``.

    ``ValueError`` when ``h`` is not positive definite by the rule of :func:`._np_gptq._pd_failure`, shared
    with the NumPy reference: the factorisation fails (``cholesky_ex``'s ``info``), or a pivot
    ``R_jj^2 / H_jj`` is at rounding level. One read-back of two numbers, once per call."""
    lower, info = torch.linalg.cholesky_ex(h.flip((0, 1)))
    r = lower.flip((0, 1))
    min_ratio = (r.diagonal().square() / h.diagonal()).amin()
    failed, ratio = torch.stack((info.to(h.dtype), min_ratio)).tolist()
    reason = _pd_failure(failed != 0, ratio, h.shape[0], torch.finfo(h.dtype).eps)
    if reason is not None:
        raise ValueError(NOT_PD.format(damp=damp, detail=reason))
    return r


def _row_grid(
    group: torch.Tensor, qmin: int, qmax: int, symmetric: bool, out: tuple[torch.Tensor, torch.Tensor]
) -> torch.Tensor:
    """Min/max grid of every column of ``group`` ``[k, out]`` (one per output row of W), written into ``out =
    (scale, zero_point)``: the formula of :func:`~.torch_ops.compute_qparams` (``granularity="channel"``), op
    for op, without its validation pass (these weights are finite by construction) and without its handling of
    ranges within a step of the dtype's largest value (``_fit_grid``; GPTQ's products with ``H`` would overflow
    long before). Returns the scale."""
    scale, zero_point = out
    lo, hi = torch.aminmax(group, dim=0)
    lo, hi = lo.clamp_(max=0), hi.clamp_(min=0)
    if symmetric:
        torch.div(torch.maximum(-lo, hi), qmax, out=scale)
    else:
        torch.div(hi - lo, qmax - qmin, out=scale)
    scale.masked_fill_(~(scale > 0), 1.0)  # an all-zero row: any scale works, take 1
    if symmetric:
        zero_point.zero_()
    else:
        torch.round(qmin - lo / scale, out=zero_point).clamp_(qmin, qmax)
    return scale


def _sub_blocks(start: int, end: int, group: int) -> list[tuple[int, int]]:
    """``[start, end)`` cut every :data:`SUB_BLOCK` columns and at every group start (multiple of ``group``)."""
    cuts = set(range(start, end, SUB_BLOCK)) | set(range(-(-start // group) * group, end, group))
    points = sorted(cuts) + [end]
    return list(itertools.pairwise(points))


# --------------------------------------------------------------------------- GPTQ
def gptq_quantize(
    w: torch.Tensor,
    h: torch.Tensor,
    bits: int = 4,
    group_size: int | None = None,
    symmetric: bool = False,
    block_size: int = 128,
    damp: float = 0.01,
    act_order: bool = False,
) -> GPTQResult:
    """GPTQ (Frantar et al. 2023, Algorithm 1) on ``w`` ``[out, in]`` with the Hessian ``h`` ``[in, in]``
    (same device); same contract as :func:`._np_gptq.gptq_quantize`, tensors in the result."""
    bits, group_size, symmetric, block_size, damp, act_order = _check_gptq_args(
        w, h, bits, group_size, symmetric, block_size, damp, act_order, torch_mode=True
    )
    n_rows, n_cols = w.shape
    dtype, device = _compute_dtype(w.dtype), w.device
    qmin, qmax = qrange(bits, symmetric)
    with torch.no_grad():
        Wt = torch.empty((n_cols, n_rows), dtype=dtype, device=device).copy_(w.t())  # W^T: column j is Wt[j]
        H = h.to(dtype=dtype, copy=True)

        # dead inputs: weight 0, H_jj = 1
        dead = H.diagonal() == 0
        if bool(dead.any()):
            H.diagonal().masked_fill_(dead, 1.0)
            Wt.masked_fill_(dead[:, None], 0.0)

        perm = None
        if act_order:  # decreasing H_jj (stable, as the reference's argsort of -diag)
            perm = torch.argsort(H.diagonal(), descending=True, stable=True)
            Wt = Wt[perm]
            H = H[perm][:, perm]

        H.diagonal().add_(damp * H.diagonal().mean())
        R = _reverse_cholesky(H, damp)  # H = R R^T, R upper; the paper's Cholesky(H^-1)^T is R^-1
        del H
        r_diag = R.diagonal().clone()

        gs = n_cols if group_size is None else group_size
        n_groups = n_cols // gs
        # R_GG^-1 (= the paper's Cholesky(H^-1)^T restricted to G) for every group G after the first, in one
        # batched solve: it turns the recursion's partial sums into the paper's current weights of G
        u_groups = None
        if n_groups > 1:
            r_groups = torch.stack([R[g * gs : (g + 1) * gs, g * gs : (g + 1) * gs] for g in range(1, n_groups)])
            eye = torch.eye(gs, dtype=dtype, device=device).expand_as(r_groups)
            u_groups = torch.linalg.solve_triangular(r_groups, eye, upper=True)
        # Rs[j, k] = R[j, k] / R[k, k] for j < k, 0 on and below the diagonal (in place: R is not needed after)
        # so that W_cur[:, k] = W[:, k] + sum_{j<k} D[:, j] Rs[j, k]
        Rs = R.div_(r_diag).triu_(1)

        W0t = Wt.clone()  # the original weights (the residuals D are taken against them)
        S = torch.empty((n_groups, n_rows), dtype=dtype, device=device)  # scales, one row per group
        Z = torch.empty((n_groups, n_rows), dtype=dtype, device=device)  # zero points (integers, as floats)
        Qc = torch.empty((n_cols, n_rows), dtype=dtype, device=device)  # centred codes q - zero_point
        q_rows = Qc.unbind(0)  # one view per column, made once (indexing in the loop costs a dispatch each)
        # working buffers, reused: the group's original weights / scale, the block's residuals D = W - W_hat,
        # the sub-block's current weights / scale
        a0_group = torch.empty((gs, n_rows), dtype=dtype, device=device)
        d_block = torch.empty((min(block_size, n_cols), n_rows), dtype=dtype, device=device)
        a_sub = torch.empty((min(SUB_BLOCK, n_cols), n_rows), dtype=dtype, device=device)
        losses = []

        s = lo = hi = g0 = None
        for i in range(0, n_cols, block_size):
            end = min(i + block_size, n_cols)
            for s0, s1 in _sub_blocks(i, end, gs):
                if s0 % gs == 0:  # group start (always a sub-block start): grid from the current weights
                    g, g0, cols = s0 // gs, s0, slice(s0, s0 + gs)
                    group = Wt[cols]
                    if s0 > i and s0 + gs > end:  # past the block: apply the pending lazy update first
                        group = group.clone()
                        group[end - s0 :].addmm_(Rs[i:s0, end : s0 + gs].T, d_block[: s0 - i])
                    if g > 0:  # the paper's current weights W_G + (D_P R_PG) R_GG^-1 (module docstring)
                        partial = (group - W0t[cols]) * r_diag[cols, None]  # (D_P R_PG)^T
                        group = torch.addmm(W0t[cols], u_groups[g - 1].T, partial)
                    s = _row_grid(group, qmin, qmax, symmetric, out=(S[g], Z[g]))
                    lo, hi = (qmin, qmax) if symmetric else (qmin - Z[g], qmax - Z[g])
                    torch.div(W0t[cols], s, out=a0_group)
                # In units of the grid step: a = w / s, centred code = clamp(round(a), qmin - z, qmax - z).
                # The sub-block's own updates are sum_j Rs[j, k] (a0_j - q_j): the a0 half is one product, now;
                # the q half is the rank-1 update after each code (it adds exact zeros to the columns done).
                rs, a0 = Rs[s0:s1, s0:s1], a0_group[s0 - g0 : s1 - g0]
                a = torch.div(Wt[s0:s1], s, out=a_sub[: s1 - s0]).addmm_(rs.T, a0)
                a_rows, rs_rows = a.unbind(0), rs.unbind(0)
                for j in range(s1 - s0):
                    q = torch.round(a_rows[j], out=q_rows[s0 + j]).clamp_(lo, hi)
                    if j + 1 < s1 - s0:
                        a.addr_(rs_rows[j], q, alpha=-1)
                qc = Qc[s0:s1]
                # the paper's Losses: ((W_cur - Q) / [H^-1]_jj)^2 / 2, with 1 / [H^-1]_jj = R_jj
                losses.append(torch.linalg.vector_norm(a.sub_(qc).mul_(s).mul_(r_diag[s0:s1, None])))
                dc = torch.sub(a0, qc, out=d_block[s0 - i : s1 - i]).mul_(s)  # D = W - W_hat
                if s1 < end:  # the sub-block reaches the rest of the block
                    Wt[s1:end].addmm_(Rs[s0:s1, s1:end].T, dc)
            if end < n_cols:  # the block reaches the rest of the matrix (the paper's lazy batch update)
                Wt[end:].addmm_(Rs[i:end, end:].T, d_block[: end - i])

        loss = float(torch.stack(losses).square_().sum()) / 2
        grouped = Qc.view(n_groups, gs, n_rows)
        contiguous = torch.contiguous_format
        Q = grouped.add_(Z[:, None, :]).view(n_cols, n_rows).t().to(torch.int32, memory_format=contiguous)
        # dequantize group by group (the formula of torch_ops.dequantize, on a view: no validation pass)
        weight = grouped.sub_(Z[:, None, :]).mul_(S[:, None, :]).view(n_cols, n_rows).t()
        weight = weight.to(w.dtype, memory_format=contiguous)
        scale = S.t().contiguous()
        zero_point = Z.t().to(torch.int32, memory_format=contiguous)
        if perm is not None:
            inverse = torch.argsort(perm)
            Q, weight = Q[:, inverse], weight[:, inverse]
    return GPTQResult(
        weight=weight,
        q=Q,
        scale=scale,
        zero_point=zero_point,
        perm=perm,
        loss=loss,
        bits=bits,
        group_size=group_size,
        symmetric=symmetric,
    )


def layer_output_error(w: torch.Tensor, w_hat: torch.Tensor, x: torch.Tensor) -> float:
    """``||x w^T - x w_hat^T||_F^2 / ||x w^T||_F^2`` in float64; same contract as
    :func:`._np_gptq.layer_output_error`."""
    _check_weight("w", w, torch_mode=True)
    _check_weight("w_hat", w_hat, torch_mode=True)
    if w_hat.shape != w.shape:
        raise ValueError(f"w_hat must have the shape of w {tuple(w.shape)}, got {tuple(w_hat.shape)}")
    _check_x_for("x", x, w.shape[1], torch_mode=True)
    with torch.no_grad():
        xs = x.reshape(-1, x.shape[-1]).to(torch.float64)
        w64 = w.to(torch.float64)
        diff = w64 - w_hat.to(device=w.device, dtype=torch.float64)
        sums = torch.stack([(xs @ diff.T).square().sum(), (xs @ w64.T).square().sum()]).tolist()
    num, den = sums
    if den == 0.0:
        return 0.0 if num == 0.0 else math.inf
    return num / den


# --------------------------------------------------------------------------- int4 / int8 weight-only storage
def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """Two signed 4-bit codes per byte (low nibble = even index, ``code + 8``); same contract as
    :func:`._np_gptq.pack_int4`."""
    _check_codes(q, torch_mode=True)
    nibbles = (q.to(torch.int16) + 8).to(torch.uint8)
    return nibbles[..., 0::2] | (nibbles[..., 1::2] << 4)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """uint8 ``[..., K/2]`` -> int8 ``[..., K]``; the inverse of :func:`pack_int4`."""
    _check_packed(packed, torch_mode=True)
    return _unpack(packed)


def _unpack(packed: torch.Tensor) -> torch.Tensor:
    low = (packed & 0x0F).to(torch.int8) - 8
    high = (packed >> 4).to(torch.int8) - 8
    return torch.stack((low, high), dim=-1).reshape(*packed.shape[:-1], 2 * packed.shape[-1])


def quantize_weight_int4(w: torch.Tensor, group_size: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int4 (``[-7, 7]``) per row and group, packed; same contract as
    :func:`._np_gptq.quantize_weight_int4`."""
    _check_weight("w", w, torch_mode=True)
    if w.shape[1] % 2:
        raise ValueError(f"w must have an even number of input features K (two codes per byte), got {tuple(w.shape)}")
    group_size = _check_group_size(group_size, w.shape[1], allow_none=False)
    qp = compute_qparams(w, 4, True, granularity="group", axis=1, group_size=group_size)
    return pack_int4(quantize(w, qp)), qp.scale


def w4a16_linear(
    x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor, group_size: int, b: torch.Tensor | None = None
) -> torch.Tensor:
    """``x @ W^T + b`` with packed int4 ``W``, in x's dtype (on x's device); same contract as
    :func:`._np_gptq.w4a16_linear`. On CPU a decode-sized ``x`` (at most 8 rows) makes no float copy of
    ``W``: a fused, compiled unpack-scale-multiply-sum (float32 accumulation), or, where compiling is off
    (``EFFX_NO_COMPILE=1``) or fails, row blocks dequantized into a reused buffer (:mod:`._torch_fused`).
    Prefill-sized ``x``, CUDA, and a call that needs a gradient for ``x`` dequantize the whole matrix, then
    one GEMM.
    Shapes, dtypes and devices are checked, values are not (that would read back from the GPU on every decode
    step): NaN in ``x``, ``scales`` or ``b`` propagates to the output rows / columns, as in the reference."""
    group_size = _check_w4a16_args(x, packed, scales, group_size, b, torch_mode=True)
    n, half = packed.shape
    y = _fused.w4a16(x.reshape(-1, 2 * half), packed, scales)
    if b is not None:
        y = y + b.to(x.dtype)
    return y.reshape(*x.shape[:-1], n)


def quantize_weight_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per output channel; same contract as :func:`._np_gptq.quantize_weight_int8`."""
    _check_weight("w", w, torch_mode=True)
    qp = compute_qparams(w, 8, True, granularity="channel", axis=0)
    return quantize(w, qp), qp.scale[:, 0]


def w8a16_linear(x: torch.Tensor, q: torch.Tensor, scales: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """``(x @ q^T) * scales + b`` in x's dtype; same contract as :func:`._np_gptq.w8a16_linear` (no value
    checks, no read-back from the device: NaN propagates). On CPU a decode-sized ``x`` (at most 8 rows)
    makes no float copy of ``q``: a fused, compiled multiply-and-sum over the int8 bytes (float32
    accumulation), or, where compiling is off (``EFFX_NO_COMPILE=1``) or fails, row blocks converted into a
    reused buffer (:mod:`._torch_fused`). More rows, CUDA and autograd: convert the whole matrix, one GEMM."""
    _check_int8_weight(q, torch_mode=True)
    n, k = q.shape
    _check_scales(scales, (n,), torch_mode=True)
    _check_x_for("x", x, k, torch_mode=True, finite=False)
    _check_bias(b, n, torch_mode=True)
    y = _fused.w8a16(x.reshape(-1, k), q, scales)
    if b is not None:
        y = y + b.to(x.dtype)
    return y.reshape(*x.shape[:-1], n)
