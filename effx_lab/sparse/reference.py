"""The NumPy reference of the sparse building blocks: masks, block-sparse matmul.

Shared by the chapters on pruning (3) and N:M sparsity (4).
:mod:`effx_lab.sparse.torch_ops` has the same names and signatures for torch tensors;
the tests run both on the same random input in float64.

**Masks** are boolean arrays of the weight's shape: ``True`` keeps an entry, ``False``
prunes it.

* :func:`magnitude_mask`: unstructured, prunes the ``round(sparsity * size)`` entries of
  smallest ``|w|``;
* :func:`nm_mask`: N:M, keeps the ``n`` largest ``|w|`` of every group of ``m``
  consecutive entries along the input dimension (the last one of an ``nn.Linear`` weight
  ``(out, in)``);
* :func:`block_mask`: keeps the ``bh x bw`` blocks of largest Frobenius norm;
* :func:`sparsity`: the fraction of exact zeros of any array (of ``False`` for a mask).

Every tie is broken the same way in both faces: among equal magnitudes (or equal block
norms) the entry that comes *first* in row-major order is the one pruned first (by
:func:`magnitude_mask`) and kept first (by :func:`nm_mask` and :func:`block_mask`): each
helper uses one stable sort.

**Block-sparse matmul.** :func:`to_block_sparse` stores the blocks of ``W`` that hold a
nonzero (NaN counts as nonzero) in a :class:`~effx_lab.sparse._format.BlockSparse` (BSR:
``values (nnzb, bh, bw)``, ``col_indices``, ``row_ptr``, ``shape``);
:func:`block_sparse_matmul` computes ``x @ W.T (+ bias)``, the ``nn.Linear`` convention
(``W`` is ``(out_features, in_features)``), visiting only the stored blocks;
:func:`from_block_sparse` gives the dense ``W`` back.
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np

from effx_lab._validate import check_array, check_float, check_int, describe

from ._format import BlockSparse

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


# --------------------------------------------------------- argument checks (both faces)
def _check_sparsity(sparsity: Any) -> float:
    if isinstance(sparsity, (bool, np.bool_)) or not isinstance(sparsity, numbers.Real):
        raise TypeError(
            f"sparsity must be a real number in [0, 1), got {describe(sparsity)}"
        )
    s = float(sparsity)
    if not (0.0 <= s < 1.0):
        raise ValueError(
            "sparsity must be in [0, 1) (the fraction of entries pruned), got "
            f"{sparsity}"
        )
    return s


def _n_pruned(size: int, sparsity: float) -> int:
    """How many of ``size`` entries :func:`magnitude_mask` prunes.

    ``round(sparsity * size)`` with Python's ``round`` (half to even): 0.5 of 5 entries
    prunes 2, 0.5 of 7 prunes 4.
    """
    return int(round(sparsity * size))


def _check_nm(n: Any, m: Any) -> tuple[int, int]:
    m = check_int("m", m, min_value=1)
    n = check_int("n", n, min_value=1)
    if n > m:
        raise ValueError(
            f"n must be <= m (keep n of every m entries), got n={n} and m={m}"
        )
    return n, m


def _check_axis(axis: Any, ndim: int) -> int:
    axis = check_int("axis", axis)
    if not -ndim <= axis < ndim:
        raise ValueError(
            f"axis must be in [{-ndim}, {ndim}) for w with {ndim} dimensions, got "
            f"{axis}"
        )
    return axis % ndim


def _check_groups(shape: tuple[int, ...], axis: int, m: int) -> None:
    if shape[axis] % m:
        raise ValueError(
            f"m must divide the size of w along axis {axis} ({shape[axis]}) into "
            f"groups of m, got m={m}"
        )


def _check_block(
    block: Any, shape: tuple[int, ...], what: str = "w"
) -> tuple[int, int]:
    """``block`` as ``(bh, bw)`` (an int: square blocks), dividing ``shape``."""
    if isinstance(block, (tuple, list)):
        if len(block) != 2:
            raise ValueError(f"block must be an int or a (bh, bw) pair, got {block!r}")
        bh = check_int("block[0]", block[0], min_value=1)
        bw = check_int("block[1]", block[1], min_value=1)
    elif isinstance(block, numbers.Integral) and not isinstance(
        block, (bool, np.bool_)
    ):
        bh = bw = check_int("block", block, min_value=1)
    else:
        raise TypeError(
            f"block must be an int or a (bh, bw) pair of ints, got {describe(block)}"
        )
    rows, cols = shape
    if rows % bh or cols % bw:
        raise ValueError(
            f"block must divide the shape of {what} {(rows, cols)} in both dimensions, "
            f"got block ({bh}, {bw})"
        )
    return bh, bw


def _check_density(density: Any) -> float:
    return check_float(
        "density", density, min_value=0.0, max_value=1.0, min_inclusive=False
    )


def _n_kept_blocks(n_blocks: int, density: float) -> int:
    """How many of ``n_blocks`` blocks :func:`block_mask` keeps.

    ``max(1, round(density * n_blocks))``.
    """
    return max(1, int(round(density * n_blocks)))


def _nonempty(name: str, shape: tuple[int, ...]) -> None:
    if 0 in tuple(shape):
        raise ValueError(f"{name} must not be empty, got shape {tuple(shape)}")


def _weight(
    name: str, w: Any, ndim: int | tuple[int, ...] | None = None, finite: bool = True
) -> np.ndarray:
    if not isinstance(w, np.ndarray):
        hint = (
            "; use effx_lab.sparse.torch_ops for torch tensors"
            if type(w).__module__ == "torch"
            else ""
        )
        raise TypeError(f"{name} must be a NumPy array, got {describe(w)}{hint}")
    check_array(name, w, ndim=ndim, dtype_kind="f", finite=finite)
    if w.ndim == 0:
        raise ValueError(f"{name} must have at least 1 dimension, got a 0-d array")
    _nonempty(name, w.shape)
    return w


# -------------------------------------------------------------------------------- masks
def magnitude_mask(w: np.ndarray, sparsity: float) -> np.ndarray:
    """Unstructured magnitude pruning: prune the smallest ``|w|``.

    ``w``: a float array of any shape (finite); ``sparsity`` in ``[0, 1)``. Returns a
    bool array of ``w``'s shape, ``False`` where an entry is pruned; exactly
    ``round(sparsity * w.size)`` entries are ``False`` (Python's ``round``, half to
    even). Ties are broken by position: among equal ``|w|`` the entry that comes first
    in row-major order is pruned first (one stable sort of ``|w|``), so the result never
    depends on the sorting algorithm or the face.
    """
    w = _weight("w", w)
    s = _check_sparsity(sparsity)
    k = _n_pruned(w.size, s)
    order = np.argsort(np.abs(w).reshape(-1), kind="stable")
    keep = np.ones(w.size, dtype=bool)
    keep[order[:k]] = False
    return keep.reshape(w.shape)


def nm_mask(w: np.ndarray, n: int, m: int, axis: int = -1) -> np.ndarray:
    """N:M sparsity: keep the ``n`` largest ``|w|`` of every ``m`` consecutive entries.

    Groups run along ``axis``, by default the last one: for an ``nn.Linear`` weight
    ``(out, in)`` that is the input dimension, the layout sparse tensor cores need (2:4
    on NVIDIA Ampere and later). ``1 <= n <= m`` and ``m`` must divide
    ``w.shape[axis]``. Returns a bool array of ``w``'s shape with exactly ``n`` ``True``
    per group. Ties: among equal ``|w|`` the entry that comes first in the group is
    kept.
    """
    w = _weight("w", w)
    n, m = _check_nm(n, m)
    ax = _check_axis(axis, w.ndim)
    _check_groups(w.shape, ax, m)
    a = np.moveaxis(np.abs(w), ax, -1)
    groups = a.reshape(*a.shape[:-1], a.shape[-1] // m, m)
    # largest first; ties: first in the group first
    order = np.argsort(-groups, axis=-1, kind="stable")
    keep = np.zeros(groups.shape, dtype=bool)
    np.put_along_axis(keep, order[..., :n], True, axis=-1)
    return np.moveaxis(keep.reshape(a.shape), -1, ax)


def _block_view(w: Any, bh: int, bw: int) -> Any:
    """``w (rows, cols)`` as ``(rows // bh, cols // bw, bh, bw)``.

    Block ``(i, j)`` is at ``[i, j]``.
    """
    rows, cols = w.shape
    return w.reshape(rows // bh, bh, cols // bw, bw).swapaxes(1, 2)


def block_mask(
    w: np.ndarray, block: int | tuple[int, int], density: float
) -> np.ndarray:
    """Block pruning: keep the ``bh x bw`` blocks of largest Frobenius norm.

    ``w``: a finite 2-D float array; ``block``: an int (square blocks) or ``(bh, bw)``,
    dividing ``w.shape``; ``density`` in ``(0, 1]``: the fraction of blocks kept,
    ``max(1, round(density * n_blocks))`` of them. Returns a bool array of ``w``'s
    shape, constant on each block. The norms are computed in float64; among equal norms
    the block that comes first in row-major block order is kept.
    """
    w = _weight("w", w, ndim=2)
    bh, bw = _check_block(block, w.shape)
    d = _check_density(density)
    # squared norms: the order of the norms, without a square root
    norms = (_block_view(w.astype(np.float64), bh, bw) ** 2).sum(axis=(-2, -1))
    k = _n_kept_blocks(norms.size, d)
    order = np.argsort(-norms.reshape(-1), kind="stable")
    keep_blocks = np.zeros(norms.size, dtype=bool)
    keep_blocks[order[:k]] = True
    keep_blocks = keep_blocks.reshape(norms.shape)
    return np.repeat(np.repeat(keep_blocks, bh, axis=0), bw, axis=1)


def sparsity(x: np.ndarray) -> float:
    """The fraction of exact zeros of ``x`` (of ``False`` for a mask), a Python float.

    ``-0.0`` is zero, NaN is not. ``x``: a non-empty float, integer or bool array.
    """
    if not isinstance(x, np.ndarray):
        hint = (
            "; use effx_lab.sparse.torch_ops for torch tensors"
            if type(x).__module__ == "torch"
            else ""
        )
        raise TypeError(f"x must be a NumPy array, got {describe(x)}{hint}")
    check_array("x", x, dtype_kind="fiub")
    if x.size == 0:
        raise ValueError(f"x must not be empty, got shape {x.shape}")
    return float(np.count_nonzero(x == 0)) / x.size


# ------------------------------------------------------------------ block-sparse matmul
def to_block_sparse(w: np.ndarray, block: int | tuple[int, int]) -> BlockSparse:
    """``w`` in block-compressed (BSR) form, storing only the blocks with a nonzero.

    ``block``: an int (square blocks) or ``(bh, bw)``, dividing ``w.shape``. A block is
    dropped when all its entries are exactly zero (a NaN is not zero: its block is
    stored). Returns a :class:`~effx_lab.sparse._format.BlockSparse` whose ``values
    (nnzb, bh, bw)`` are copies of the stored blocks in row-major order, with
    ``col_indices (nnzb,)`` and ``row_ptr (rows // bh + 1,)``, both int64: the layout of
    ``scipy.sparse.bsr_matrix(w, blocksize=block)`` (``indices``, ``indptr``).
    """
    w = _weight("w", w, ndim=2, finite=False)
    bh, bw = _check_block(block, w.shape)
    blocks = _block_view(w, bh, bw)  # (n_rows, n_cols, bh, bw)
    stored = (blocks != 0).any(axis=(-2, -1))  # NaN != 0: a NaN block is stored
    # row-major: block row by block row, columns increasing
    rows, cols = np.nonzero(stored)
    row_ptr = np.concatenate([[0], np.cumsum(stored.sum(axis=1))]).astype(np.int64)
    values = np.ascontiguousarray(blocks[rows, cols])
    return BlockSparse(
        values, cols.astype(np.int64), row_ptr, (int(w.shape[0]), int(w.shape[1]))
    )


def _check_bsr(bsr: Any, numpy_face: bool) -> BlockSparse:
    if not isinstance(bsr, BlockSparse):
        raise TypeError(
            f"bsr must be a BlockSparse (made by to_block_sparse), got {describe(bsr)}"
        )
    if isinstance(bsr.values, np.ndarray) != numpy_face:
        want, other = ("NumPy", "torch_ops") if numpy_face else ("torch", "reference")
        raise TypeError(
            f"bsr must hold {want} arrays, got one holding "
            f"{type(bsr.values).__name__}; use effx_lab.sparse.{other} for it"
        )
    return bsr


def from_block_sparse(bsr: BlockSparse) -> np.ndarray:
    """The dense ``(rows, cols)`` matrix of ``bsr`` (zeros where no block is stored)."""
    bsr = _check_bsr(bsr, numpy_face=True)
    bh, bw = bsr.block
    dense = np.zeros(bsr.shape, dtype=bsr.values.dtype)
    for r in range(bsr.block_grid[0]):
        for k in range(bsr.row_ptr[r], bsr.row_ptr[r + 1]):
            c = bsr.col_indices[k]
            dense[r * bh : (r + 1) * bh, c * bw : (c + 1) * bw] = bsr.values[k]
    return dense


def _check_matmul_args(
    x: Any, bsr: BlockSparse, bias: Any, array_type: type, face: str
) -> None:
    """Check the shapes, dtypes and devices of the matmul's arguments, never values.

    ``array_type`` is ``np.ndarray`` or ``torch.Tensor``; ``face`` is ``"reference"`` or
    ``"torch_ops"``.
    """
    want, other = (
        ("a NumPy array", "torch_ops")
        if face == "reference"
        else ("a torch tensor", "reference")
    )
    for name, a in (("x", x), ("bias", bias)):
        if a is None:
            continue
        if not isinstance(a, array_type):
            raise TypeError(
                f"{name} must be {want}, got {describe(a)}; use "
                f"effx_lab.sparse.{other} for it"
            )
        if a.dtype != bsr.values.dtype:
            raise TypeError(
                f"{name} must have the dtype of bsr.values ({bsr.values.dtype}), got "
                f"{a.dtype}"
            )
        if face == "torch_ops" and a.device != bsr.values.device:
            raise ValueError(
                f"{name} must be on the device of bsr.values ({bsr.values.device}), "
                f"got {a.device}"
            )
    out_features, in_features = bsr.shape
    if x.ndim < 1 or x.shape[-1] != in_features:
        raise ValueError(
            f"x must have shape (..., in_features={in_features}) to multiply W "
            f"{bsr.shape} as x @ W.T, got shape {tuple(x.shape)}"
        )
    if bias is not None and tuple(bias.shape) != (out_features,):
        raise ValueError(
            f"bias must have shape (out_features,) = ({out_features},), got "
            f"{tuple(bias.shape)}"
        )


def block_sparse_matmul(
    x: np.ndarray, bsr: BlockSparse, bias: np.ndarray | None = None
) -> np.ndarray:
    """``x @ W.T (+ bias)`` for a block-sparse ``W``: the ``nn.Linear`` convention.

    ``W`` is ``(out_features, in_features)``, ``x`` is ``(..., in_features)`` and the
    result ``(..., out_features)``; ``x`` and ``bias (out_features,)`` have the dtype of
    ``bsr.values``. Only the stored blocks are visited: block ``k`` in block row ``r``
    and block column ``c`` adds ``x[..., c*bw:(c+1)*bw] @ values[k].T`` to the outputs
    ``r*bh:(r+1)*bh``. The cost is ``nnzb * bh * bw`` multiply-adds per row of ``x``,
    the dense cost times :attr:`BlockSparse.density`.

    Shapes and dtypes are checked, values never. A NaN in row ``i`` of ``x`` reaches
    every output of row ``i`` whose block row stores a block; an output whose block row
    stores none is 0 (or the bias), where the dense ``x @ W.T`` would give ``0 * NaN =
    NaN`` (the same holds in every face).
    """
    bsr = _check_bsr(bsr, numpy_face=True)
    _check_matmul_args(x, bsr, bias, np.ndarray, "reference")
    bh, bw = bsr.block
    y = np.zeros((*x.shape[:-1], bsr.shape[0]), dtype=x.dtype)
    for r in range(bsr.block_grid[0]):
        # the stored blocks of block row r
        for k in range(bsr.row_ptr[r], bsr.row_ptr[r + 1]):
            c = bsr.col_indices[k]
            y[..., r * bh : (r + 1) * bh] += (
                x[..., c * bw : (c + 1) * bw] @ bsr.values[k].T
            )
    if bias is not None:
        y += bias
    return y
