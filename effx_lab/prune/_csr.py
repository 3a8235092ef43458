"""The compressed sparse row (CSR) container of both faces of chapter 3.

:class:`CSR` holds a matrix ``W`` of ``shape = (rows, cols)`` by its stored entries,
in the layout of ``scipy.sparse.csr_matrix`` and ``torch.sparse_csr_tensor``:

* ``values``: ``(nnz,)``, the stored entries in row-major order;
* ``col_idx``: ``(nnz,)``, the column of each stored entry, strictly increasing within
  a row;
* ``row_ptr``: ``(rows + 1,)``; the entries of row ``r`` are
  ``values[row_ptr[r]:row_ptr[r + 1]]``.

``col_idx`` and ``row_ptr`` share one integer dtype, int32 (4 bytes per index, what
scipy uses while the counts fit) or int64. The arrays are NumPy arrays (made by
:mod:`effx_lab.prune.reference`) or torch tensors on one device (made by
:mod:`effx_lab.prune.torch_ops`), as :class:`effx_lab.sparse.BlockSparse`. The
structure is **validated once, where it is made** (the constructor reads ``row_ptr``
and ``col_idx``, a copy to the host for CUDA tensors); the product then checks only
shapes, dtypes and devices, never values. :attr:`CSR.nbytes` is what the three arrays
occupy, :func:`effx_lab.prune.storage.csr_nbytes` of the same sizes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np

from effx_lab._validate import check_int, describe
from effx_lab.sparse import check_row_structure

from . import storage

__all__ = ["CSR", "INDEX_DTYPES"]

#: The index dtypes a CSR may use, by name.
INDEX_DTYPES = ("int32", "int64")


def _is_tensor(value: Any) -> bool:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return False
    return isinstance(value, torch.Tensor)


def _host(value: Any) -> np.ndarray:
    """A NumPy view (or host copy) of an index array, for reading its values."""
    return value.detach().cpu().numpy() if _is_tensor(value) else value


def _dtype_name(value: Any) -> str:
    """``"float32"``, ``"int64"``, ... for a NumPy array or a torch tensor."""
    return str(value.dtype).removeprefix("torch.")


def _itemsize(value: Any) -> int:
    return int(value.itemsize if _is_tensor(value) else value.dtype.itemsize)


@dataclass(frozen=True, eq=False, repr=False)
class CSR:
    """A sparse matrix in compressed sparse row form.

    ``values (nnz,)``, ``col_idx (nnz,)``, ``row_ptr (rows + 1,)`` and ``shape``, as
    described in the module docstring. Made by ``to_csr(w)`` of either face; the
    constructor validates everything (types, ranks, dtypes, devices, and the values of
    ``row_ptr`` and ``col_idx``) and raises ``TypeError``/``ValueError`` naming the
    field. It unpacks like a tuple: ``values, col_idx, row_ptr, shape = csr``.
    """

    values: Any
    col_idx: Any
    row_ptr: Any
    shape: tuple[int, int]

    def __post_init__(self) -> None:
        values, cols, ptr = self.values, self.col_idx, self.row_ptr
        torch_face = _is_tensor(values)
        kind = "torch tensor" if torch_face else "NumPy array"
        for name, a in (("values", values), ("col_idx", cols), ("row_ptr", ptr)):
            if not (isinstance(a, np.ndarray) or _is_tensor(a)):
                raise TypeError(
                    f"{name} must be a NumPy array or torch tensor, got {describe(a)}"
                )
            if _is_tensor(a) != torch_face:
                raise TypeError(
                    f"{name} must be a {kind}, like values, got {describe(a)}"
                )
            if a.ndim != 1:
                raise ValueError(
                    f"{name} must have 1 dimension, got shape {tuple(a.shape)}"
                )
        if not _dtype_name(values).startswith(("float", "bfloat")):
            raise TypeError(f"values must have a float dtype, got {values.dtype}")
        for name, a in (("col_idx", cols), ("row_ptr", ptr)):
            if _dtype_name(a) not in INDEX_DTYPES:
                raise TypeError(
                    f"{name} must have dtype int32 or int64, got {a.dtype}"
                )
        if _dtype_name(cols) != _dtype_name(ptr):
            raise TypeError(
                f"col_idx and row_ptr must share one dtype, got {cols.dtype} and "
                f"{ptr.dtype}"
            )
        if torch_face:
            for name, a in (("col_idx", cols), ("row_ptr", ptr)):
                if a.device != values.device:
                    raise ValueError(
                        f"{name} must be on the device of values ({values.device}), "
                        f"got {a.device}"
                    )
        shape = self.shape
        if not isinstance(shape, (tuple, list)) or len(shape) != 2:
            raise TypeError(
                f"shape must be a (rows, cols) tuple of two ints, got {describe(shape)}"
            )
        rows = check_int("shape[0]", shape[0], min_value=1)
        n_cols = check_int("shape[1]", shape[1], min_value=1)
        object.__setattr__(self, "shape", (rows, n_cols))
        nnz = int(values.shape[0])
        if cols.shape[0] != nnz:
            raise ValueError(
                f"col_idx must have one entry per stored value ({nnz}), got shape "
                f"{tuple(cols.shape)}"
            )
        if ptr.shape[0] != rows + 1:
            raise ValueError(
                f"row_ptr must have rows + 1 = {rows + 1} entries, got shape "
                f"{tuple(ptr.shape)}"
            )
        if nnz > rows * n_cols:
            raise ValueError(
                f"values must hold at most rows * cols = {rows * n_cols} entries, got "
                f"{nnz}"
            )
        check_row_structure(ptr, cols, rows, n_cols, nnz)

    # -------------------------------------------------------------------- derived sizes
    @property
    def nnz(self) -> int:
        """The number of stored entries."""
        return int(self.values.shape[0])

    @property
    def density(self) -> float:
        """The fraction of the entries that are stored (1.0: dense)."""
        return self.nnz / (self.shape[0] * self.shape[1])

    @property
    def nbytes(self) -> int:
        """Bytes of ``values``, ``col_idx`` and ``row_ptr``: ``nnz * (value_bytes +
        index_bytes) + (rows + 1) * index_bytes``
        (:func:`effx_lab.prune.storage.csr_nbytes`)."""
        return storage.csr_nbytes(
            self.shape,
            self.nnz,
            value_bytes=_itemsize(self.values),
            index_bytes=_itemsize(self.col_idx),
        )

    def __iter__(self) -> Iterator[Any]:
        return iter((self.values, self.col_idx, self.row_ptr, self.shape))

    def __repr__(self) -> str:
        where = f", device={self.values.device}" if _is_tensor(self.values) else ""
        return (
            f"CSR(shape={self.shape}, nnz={self.nnz}, density={self.density:.3g}, "
            f"dtype={_dtype_name(self.values)}, index={_dtype_name(self.col_idx)}"
            f"{where})"
        )
