"""Bytes of dense and CSR storage, and the sparsity at which CSR starts to pay.

Plain Python (no arrays): the bytes model that 03.1 predicts with before it measures.
For a ``rows x cols`` matrix with ``nnz`` stored entries, values of ``v`` bytes and
indices of ``i`` bytes:

* dense: ``rows * cols * v`` (:func:`dense_nbytes`);
* CSR: ``nnz * v`` (values) ``+ nnz * i`` (column indices) ``+ (rows + 1) * i`` (row
  pointers) (:func:`csr_nbytes`; what :attr:`effx_lab.prune._csr.CSR.nbytes` counts);
* CSR stores fewer bytes than dense exactly when the sparsity ``s = 1 - nnz / (rows *
  cols)`` exceeds

  ``s* = i / (v + i) + (rows + 1) * i / ((v + i) * rows * cols)``

  (:func:`crossover_sparsity`). With 4-byte values and 4-byte indices ``s*`` is one
  half plus the row pointers' share, ``(rows + 1) / (2 * rows * cols)``: each stored
  entry costs twice a dense one, so at least half the entries must go. Int8 values with
  int32 indices need ``s* > 0.8``; float32 values with int64 indices ``s* > 2/3``.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np

from effx_lab._validate import check_int, describe

__all__ = ["dense_nbytes", "csr_nbytes", "crossover_sparsity"]


def _check_shape(shape: Any, ndim: int | None = None) -> tuple[int, ...]:
    if isinstance(shape, (numbers.Integral,)) and not isinstance(
        shape, (bool, np.bool_)
    ):
        shape = (shape,)
    if not isinstance(shape, (tuple, list)) or len(shape) == 0:
        raise TypeError(
            f"shape must be a tuple of positive ints, got {describe(shape)}"
        )
    if ndim is not None and len(shape) != ndim:
        raise ValueError(
            f"shape must be a (rows, cols) pair for a CSR matrix, got {tuple(shape)}"
        )
    return tuple(
        check_int(f"shape[{k}]", d, min_value=1) for k, d in enumerate(shape)
    )


def _bytes(name: str, value: Any) -> int:
    return check_int(name, value, min_value=1)


def dense_nbytes(shape: tuple[int, ...], value_bytes: int = 4) -> int:
    """Bytes of a dense array: ``prod(shape) * value_bytes``.

    ``shape``: a tuple of positive ints (an int: a vector); ``value_bytes``: a positive
    int (4 for float32, 2 for float16/bfloat16, 1 for int8).
    """
    shape = _check_shape(shape)
    return math.prod(shape) * _bytes("value_bytes", value_bytes)


def csr_nbytes(
    shape: tuple[int, int], nnz: int, value_bytes: int = 4, index_bytes: int = 4
) -> int:
    """Bytes of a ``(rows, cols)`` matrix in CSR with ``nnz`` stored entries.

    ``nnz * value_bytes`` (values) ``+ nnz * index_bytes`` (column indices) ``+ (rows +
    1) * index_bytes`` (row pointers). ``nnz`` in ``[0, rows * cols]``; ``index_bytes``
    4 for int32 indices (scipy's choice while the counts fit), 8 for int64 (torch's
    default).
    """
    rows, cols = _check_shape(shape, ndim=2)
    nnz = check_int("nnz", nnz, min_value=0, max_value=rows * cols)
    v = _bytes("value_bytes", value_bytes)
    i = _bytes("index_bytes", index_bytes)
    return nnz * (v + i) + (rows + 1) * i


def crossover_sparsity(
    shape: tuple[int, int], value_bytes: int = 4, index_bytes: int = 4
) -> float:
    """The sparsity above which CSR stores fewer bytes than dense.

    ``s* = i / (v + i) + (rows + 1) * i / ((v + i) * rows * cols)`` with ``v =
    value_bytes``, ``i = index_bytes``: for a sparsity ``s`` with ``nnz = (1 - s) * rows
    * cols`` stored entries, ``csr_nbytes(shape, nnz, v, i) < dense_nbytes(shape, v)``
    exactly when ``s > s*`` (at ``s = s*`` they are equal). A value ``>= 1`` means CSR
    never stores fewer bytes (a matrix with very few columns: the row pointers alone
    outweigh it).
    """
    rows, cols = _check_shape(shape, ndim=2)
    v = _bytes("value_bytes", value_bytes)
    i = _bytes("index_bytes", index_bytes)
    # one division of exact integers: s* = (i * rows * cols + (rows + 1) * i) / ((v + i)
    # * rows * cols)
    return (i * rows * cols + (rows + 1) * i) / ((v + i) * rows * cols)
