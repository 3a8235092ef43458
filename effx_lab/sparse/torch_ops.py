"""Sparse building blocks in PyTorch: weight masks and a block-sparse matmul.

Same names and signatures as :mod:`effx_lab.sparse.reference` (torch tensors in, torch
tensors out) and the same results: the masks are equal element for element (the same
stable sorts break ties the same way) and the block-sparse products agree with the
reference in float64. What differs, and why:

* the masks are built on ``w``'s device, from ``w.detach()`` (a mask is a decision, not
  a differentiable function); they are bool tensors;
* :func:`to_block_sparse` and :func:`from_block_sparse` are one gather / one scatter (no
  Python loop over blocks) and stay differentiable: the stored ``values`` are a gather
  of ``w``;
* :func:`block_sparse_matmul` has no loop over block rows either: it gathers, for every
  stored block ``k``, the ``bw`` columns of ``x`` it multiplies (``x[...,
  col_indices[k]]``), multiplies all blocks at once (one batched matmul), and adds each
  product into its block row with ``index_add_``. The gathered copy of ``x`` grows with
  the number of stored blocks, so the blocks are processed in chunks that keep it under
  :data:`CHUNK_ELEMENTS` elements. It reads no value back from the device (the block row
  of each block comes from ``repeat_interleave`` with a known output size) and supports
  autograd through ``x``, ``values`` and ``bias``.

Everything runs on the device of the inputs (CPU or CUDA).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from effx_lab._validate import check_array, describe

from ._format import BlockSparse
from .reference import (
    _block_view,
    _check_axis,
    _check_block,
    _check_bsr,
    _check_density,
    _check_groups,
    _check_matmul_args,
    _check_nm,
    _check_sparsity,
    _n_kept_blocks,
    _n_pruned,
    _nonempty,
)

__all__ = [
    "BlockSparse",
    "magnitude_mask",
    "nm_mask",
    "block_mask",
    "sparsity",
    "to_block_sparse",
    "from_block_sparse",
    "block_sparse_matmul",
]

#: Largest number of elements of the gathered copy of ``x`` (and of the products) that
#: :func:`block_sparse_matmul` builds at once: 2**24 (128 MiB in float64).
CHUNK_ELEMENTS = 1 << 24


def _numpy_hint(value: Any) -> str:
    return (
        "; use effx_lab.sparse.reference for NumPy arrays"
        if type(value).__module__ == "numpy"
        else ""
    )


def _weight(
    name: str, w: Any, ndim: int | None = None, finite: bool = True
) -> torch.Tensor:
    if not isinstance(w, torch.Tensor):
        raise TypeError(
            f"{name} must be a torch tensor, got {describe(w)}{_numpy_hint(w)}"
        )
    check_array(name, w, ndim=ndim, dtype_kind="f", allow_torch=True, finite=finite)
    if w.ndim == 0:
        raise ValueError(f"{name} must have at least 1 dimension, got a 0-d tensor")
    _nonempty(name, tuple(w.shape))
    return w


# -------------------------------------------------------------------------------- masks
def magnitude_mask(w: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Unstructured magnitude pruning; see the reference's ``magnitude_mask``.

    One stable ``torch.sort`` of ``|w|``: the first ``round(sparsity * w.numel())``
    indices are pruned. Returns a bool tensor on ``w``'s device.
    """
    w = _weight("w", w)
    s = _check_sparsity(sparsity)
    k = _n_pruned(w.numel(), s)
    order = torch.sort(w.detach().abs().reshape(-1), stable=True).indices
    keep = torch.ones(w.numel(), dtype=torch.bool, device=w.device)
    keep[order[:k]] = False
    return keep.reshape(w.shape)


def nm_mask(w: torch.Tensor, n: int, m: int, axis: int = -1) -> torch.Tensor:
    """N:M structured sparsity; see :func:`effx_lab.sparse.reference.nm_mask`.

    One stable sort of ``-|w|`` inside each group of ``m``; the first ``n`` indices are
    scattered into the mask.
    """
    w = _weight("w", w)
    n, m = _check_nm(n, m)
    ax = _check_axis(axis, w.ndim)
    _check_groups(tuple(w.shape), ax, m)
    a = w.detach().abs().movedim(ax, -1)
    groups = a.reshape(*a.shape[:-1], a.shape[-1] // m, m)
    # largest first; ties: first in the group
    order = torch.sort(-groups, dim=-1, stable=True).indices
    keep = torch.zeros(groups.shape, dtype=torch.bool, device=w.device)
    keep.scatter_(-1, order[..., :n], True)
    return keep.reshape(a.shape).movedim(-1, ax).contiguous()


def block_mask(
    w: torch.Tensor, block: int | tuple[int, int], density: float
) -> torch.Tensor:
    """Block pruning by Frobenius norm; see the reference's ``block_mask``."""
    w = _weight("w", w, ndim=2)
    bh, bw = _check_block(block, tuple(w.shape))
    d = _check_density(density)
    norms = _block_view(w.detach().to(torch.float64), bh, bw).pow(2).sum(dim=(-2, -1))
    k = _n_kept_blocks(norms.numel(), d)
    order = torch.sort(-norms.reshape(-1), stable=True).indices
    keep_blocks = torch.zeros(norms.numel(), dtype=torch.bool, device=w.device)
    keep_blocks[order[:k]] = True
    keep_blocks = keep_blocks.reshape(norms.shape)
    return keep_blocks.repeat_interleave(bh, dim=0).repeat_interleave(bw, dim=1)


def sparsity(x: torch.Tensor) -> float:
    """The fraction of exact zeros of ``x``; see the reference. Reads one number."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch tensor, got {describe(x)}{_numpy_hint(x)}")
    check_array("x", x, dtype_kind="fib", allow_torch=True)
    if x.numel() == 0:
        raise ValueError(f"x must not be empty, got shape {tuple(x.shape)}")
    return int((x == 0).sum()) / x.numel()


# ------------------------------------------------------------------ block-sparse matmul
def to_block_sparse(w: torch.Tensor, block: int | tuple[int, int]) -> BlockSparse:
    """``w`` in BSR form, storing the blocks that hold a nonzero; see the reference.

    The ``values`` are a gather of ``w`` (differentiable when ``w`` requires grad); the
    block structure is read back to the host once, where it is validated.
    """
    w = _weight("w", w, ndim=2, finite=False)
    bh, bw = _check_block(block, tuple(w.shape))
    blocks = _block_view(w, bh, bw)  # (n_rows, n_cols, bh, bw)
    stored = (blocks != 0).any(dim=-1).any(dim=-1)  # NaN != 0: a NaN block is stored
    rows, cols = stored.nonzero(as_tuple=True)  # row-major order
    zero = torch.zeros(1, dtype=torch.int64, device=w.device)
    row_ptr = torch.cat([zero, stored.sum(dim=1).cumsum(dim=0)]).to(torch.int64)
    values = blocks[rows, cols].contiguous()
    return BlockSparse(
        values, cols.to(torch.int64), row_ptr, (int(w.shape[0]), int(w.shape[1]))
    )


def _block_rows(bsr: BlockSparse) -> torch.Tensor:
    """The block row of every stored block, ``(nnzb,)`` int64, with no read-back."""
    n_rows = bsr.block_grid[0]
    ids = torch.arange(n_rows, device=bsr.values.device)
    return torch.repeat_interleave(ids, torch.diff(bsr.row_ptr), output_size=bsr.nnzb)


def from_block_sparse(bsr: BlockSparse) -> torch.Tensor:
    """The dense ``(rows, cols)`` matrix of ``bsr``: one scatter, differentiable."""
    bsr = _check_bsr(bsr, numpy_face=False)
    (bh, bw), (n_rows, n_cols) = bsr.block, bsr.block_grid
    blocks = bsr.values.new_zeros((n_rows, n_cols, bh, bw))
    blocks = blocks.index_put((_block_rows(bsr), bsr.col_indices), bsr.values)
    return blocks.swapaxes(1, 2).reshape(bsr.shape)


def block_sparse_matmul(
    x: torch.Tensor, bsr: BlockSparse, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """``x @ W.T (+ bias)`` for a block-sparse ``W`` (``nn.Linear``); see the reference.

    ``x (..., in_features)``, ``bias (out_features,)`` and ``bsr.values`` share one
    dtype and device. Shapes, dtypes and devices are checked, never values (no
    read-back). Differentiable in ``x``, ``bsr.values`` and ``bias``.
    """
    bsr = _check_bsr(bsr, numpy_face=False)
    _check_matmul_args(x, bsr, bias, torch.Tensor, "torch_ops")
    (bh, bw), (n_rows, n_cols) = bsr.block, bsr.block_grid
    lead = tuple(x.shape[:-1])
    t = math.prod(lead)
    xb = x.reshape(t, n_cols, bw)
    y = x.new_zeros((t, n_rows, bh))
    rows_of = _block_rows(bsr)
    chunk = max(1, CHUNK_ELEMENTS // max(1, t * max(bh, bw)))
    for k0 in range(0, bsr.nnzb, chunk):
        k1 = min(k0 + chunk, bsr.nnzb)
        # (t, c, bw): the columns each block multiplies
        xg = xb.index_select(1, bsr.col_indices[k0:k1])
        # (t, c, bh): x_block @ block.T
        part = torch.einsum("tcj,cij->tci", xg, bsr.values[k0:k1])
        y.index_add_(1, rows_of[k0:k1], part)  # into the block row of each block
    y = y.reshape(*lead, bsr.shape[0])
    return y if bias is None else y + bias
