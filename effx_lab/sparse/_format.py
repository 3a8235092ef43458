"""The block-compressed (BSR) container shared by the NumPy and the PyTorch faces.

:class:`BlockSparse` holds a matrix ``W`` of ``shape = (rows, cols)`` cut into ``bh x
bw`` blocks and keeps only the blocks it stores, in the layout of
``scipy.sparse.bsr_matrix`` and ``torch.sparse_bsr_tensor``:

* ``values``: ``(nnzb, bh, bw)``, the stored blocks in row-major order of their
  position;
* ``col_indices``: ``(nnzb,)`` int64, the block column of each stored block, strictly
  increasing within a block row;
* ``row_ptr``: ``(rows // bh + 1,)`` int64; the blocks of block row ``r`` are
  ``values[row_ptr[r]:row_ptr[r + 1]]``.

The arrays are NumPy arrays (made by :mod:`effx_lab.sparse.reference`) or torch tensors
on one device (made by :mod:`effx_lab.sparse.torch_ops`). The structure is **validated
once, where it is made** (the constructor reads ``row_ptr`` and ``col_indices``, a copy
to the host for CUDA tensors); the matmuls then check only shapes, dtypes and devices,
never values (see docs/ARCHITECTURE.md, "Non-finite values").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np

from effx_lab._validate import check_int, describe

__all__ = ["BlockSparse", "check_row_structure"]


def _is_tensor(value: Any) -> bool:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return False
    return isinstance(value, torch.Tensor)


def _host(value: Any) -> np.ndarray:
    """A NumPy view (or host copy) of an index array, for reading its values."""
    return value.detach().cpu().numpy() if _is_tensor(value) else value


def _dtype_kind(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return value.dtype.kind
    import torch

    if value.dtype == torch.bool:
        return "b"
    return (
        "f"
        if value.dtype.is_floating_point
        else ("c" if value.dtype.is_complex else "i")
    )


def _is_int64(value: Any) -> bool:
    if isinstance(value, np.ndarray):
        return value.dtype == np.int64
    import torch

    return value.dtype == torch.int64


def check_row_structure(
    row_ptr: Any,
    col_idx: Any,
    n_rows: int,
    n_cols: int,
    n_stored: int,
    *,
    index_name: str = "col_idx",
    stored: str = "stored values",
    row: str = "row",
    column: str = "columns",
) -> None:
    """Check the index arrays of a compressed-row format (CSR, or BSR by blocks).

    ``row_ptr`` ``(n_rows + 1,)`` must start at 0, never decrease and end at
    ``n_stored``; ``col_idx`` ``(n_stored,)`` must lie in ``[0, n_cols)`` and increase
    strictly within each row. NumPy arrays or torch tensors (read on the host). Shapes
    are the caller's to check first. Raises ``ValueError`` naming ``row_ptr`` or
    ``index_name``; ``stored``, ``row`` and ``column`` are the words the messages use.
    """
    p, c = _host(row_ptr).astype(np.int64), _host(col_idx).astype(np.int64)
    if p[0] != 0 or p[-1] != n_stored or np.any(np.diff(p) < 0):
        raise ValueError(
            "row_ptr must start at 0, never decrease and end at the number of "
            f"{stored} ({n_stored}), got "
            f"{p.tolist() if p.size <= 12 else describe(p)}"
        )
    if n_stored and (c.min() < 0 or c.max() >= n_cols):
        raise ValueError(
            f"{index_name} must be in [0, {n_cols}) ({column}), got values in "
            f"[{int(c.min())}, {int(c.max())}]"
        )
    row_of = np.repeat(np.arange(n_rows), np.diff(p))
    same_row = row_of[1:] == row_of[:-1]
    if np.any(np.diff(c)[same_row] <= 0):
        raise ValueError(
            f"{index_name} must be strictly increasing within each {row} (sorted, no "
            "repeats)"
        )


@dataclass(frozen=True, eq=False, repr=False)
class BlockSparse:
    """A block-sparse matrix in BSR form.

    ``values (nnzb, bh, bw)``, ``col_indices``, ``row_ptr`` and ``shape``, as described
    in the module docstring.

    Made by ``to_block_sparse(w, block)`` of either face; the constructor validates
    everything (types, ranks, dtypes, devices, and the values of ``row_ptr`` and
    ``col_indices``) and raises ``TypeError``/``ValueError`` naming the field. It
    unpacks like a tuple: ``values, col_indices, row_ptr, shape = bsr``.
    """

    values: Any
    col_indices: Any
    row_ptr: Any
    shape: tuple[int, int]

    def __post_init__(self) -> None:
        values, cols, ptr = self.values, self.col_indices, self.row_ptr
        torch_face = _is_tensor(values)
        kind = "torch tensor" if torch_face else "NumPy array"
        for name, a in (("values", values), ("col_indices", cols), ("row_ptr", ptr)):
            if not (isinstance(a, np.ndarray) or _is_tensor(a)):
                raise TypeError(
                    f"{name} must be a NumPy array or torch tensor, got {describe(a)}"
                )
            if _is_tensor(a) != torch_face:
                raise TypeError(
                    f"{name} must be a {kind}, like values, got {describe(a)}"
                )
        if values.ndim != 3:
            raise ValueError(
                "values must have 3 dimensions (nnzb, bh, bw), got shape "
                f"{tuple(values.shape)}"
            )
        if _dtype_kind(values) != "f":
            raise TypeError(f"values must have a float dtype, got {values.dtype}")
        for name, a in (("col_indices", cols), ("row_ptr", ptr)):
            if a.ndim != 1:
                raise ValueError(
                    f"{name} must have 1 dimension, got shape {tuple(a.shape)}"
                )
            if not _is_int64(a):
                raise TypeError(f"{name} must have dtype int64, got {a.dtype}")
        if torch_face:
            for name, a in (("col_indices", cols), ("row_ptr", ptr)):
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
        cols_n = check_int("shape[1]", shape[1], min_value=1)
        object.__setattr__(self, "shape", (rows, cols_n))
        nnzb, bh, bw = (int(d) for d in values.shape)
        if bh < 1 or bw < 1:
            raise ValueError(
                "values must hold blocks of at least 1 x 1, got shape "
                f"{tuple(values.shape)}"
            )
        if rows % bh or cols_n % bw:
            raise ValueError(
                f"the block ({bh}, {bw}) of values must divide shape {(rows, cols_n)} "
                "(both dimensions)"
            )
        n_rows, n_cols = rows // bh, cols_n // bw
        if cols.shape[0] != nnzb:
            raise ValueError(
                f"col_indices must have one entry per stored block ({nnzb}), got shape "
                f"{tuple(cols.shape)}"
            )
        if ptr.shape[0] != n_rows + 1:
            raise ValueError(
                f"row_ptr must have rows // bh + 1 = {n_rows + 1} entries, got shape "
                f"{tuple(ptr.shape)}"
            )
        check_row_structure(
            ptr, cols, n_rows, n_cols, nnzb,
            index_name="col_indices", stored="stored blocks", row="block row",
            column="block columns",
        )  # fmt: skip

    # -------------------------------------------------------------------- derived sizes
    @property
    def block(self) -> tuple[int, int]:
        """``(bh, bw)``, the size of one block."""
        return int(self.values.shape[1]), int(self.values.shape[2])

    @property
    def nnzb(self) -> int:
        """The number of stored blocks."""
        return int(self.values.shape[0])

    @property
    def block_grid(self) -> tuple[int, int]:
        """``(rows // bh, cols // bw)``, the number of block rows and block columns."""
        bh, bw = self.block
        return self.shape[0] // bh, self.shape[1] // bw

    @property
    def density(self) -> float:
        """The fraction of the blocks that are stored (1.0: dense)."""
        n_rows, n_cols = self.block_grid
        return self.nnzb / (n_rows * n_cols)

    def __iter__(self) -> Iterator[Any]:
        return iter((self.values, self.col_indices, self.row_ptr, self.shape))

    def __repr__(self) -> str:
        where = f", device={self.values.device}" if _is_tensor(self.values) else ""
        return (
            f"BlockSparse(shape={self.shape}, block={self.block}, nnzb={self.nnzb}, "
            f"density={self.density:.3g}, dtype={self.values.dtype}{where})"
        )


def check_matmul_operands(
    x: Any, w: Any, bias: Any, array_type: type, face: str, package: str, what: str
) -> None:
    """Shapes, dtypes and devices of ``x @ W.T + bias`` with ``W`` stored sparse as
    ``w`` (an already checked format object with ``.values`` and ``.shape (out,
    in)``), never values. ``array_type``: ``np.ndarray`` or ``torch.Tensor``;
    ``face``: ``"reference"`` (NumPy) or another face of ``effx_lab.<package>`` (torch
    tensors, devices checked), named in the hint of a wrong array type; ``what``: the
    argument's name in messages (``"csr"``, ``"c"``). Chapter 3's CSR and chapter 4's
    N:M products check their arguments here."""
    want, other = (
        ("a NumPy array", "torch_ops")
        if face == "reference"
        else ("a torch tensor", "reference")
    )
    values = w.values
    for name, a in (("x", x), ("bias", bias)):
        if a is None and name == "bias":
            continue
        if not isinstance(a, array_type):
            raise TypeError(
                f"{name} must be {want}, got {describe(a)}; use "
                f"effx_lab.{package}.{other} for the other kind"
            )
        if a.dtype != values.dtype:
            raise TypeError(
                f"{name} must have the dtype of {what}.values ({values.dtype}), got "
                f"{a.dtype}"
            )
        if face != "reference" and a.device != values.device:
            raise ValueError(
                f"{name} must be on the device of {what}.values ({values.device}), "
                f"got {a.device}"
            )
    out_features, in_features = w.shape
    if x.ndim < 1 or x.shape[-1] != in_features:
        raise ValueError(
            f"x must have shape (..., in_features={in_features}) to multiply W "
            f"{w.shape} as x @ W.T, got shape {tuple(x.shape)}"
        )
    if bias is not None and tuple(bias.shape) != (out_features,):
        raise ValueError(
            f"bias must have shape (out_features,) = ({out_features},), got "
            f"{tuple(bias.shape)}"
        )
