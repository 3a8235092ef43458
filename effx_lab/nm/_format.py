"""The N:M compressed container shared by the NumPy, PyTorch and Triton faces.

:class:`NMCompressed` stores a weight ``W`` of ``shape = (out, in)`` (the ``nn.Linear``
layout) in which every group of ``m`` consecutive entries along the input dimension
holds at most ``n`` non-zeros, as the sparse tensor cores of NVIDIA Ampere and later
read it for 2:4 (Mishra et al., 2021):

* ``values``: ``(out, in // m * n)``, the ``n`` kept entries of each group, in the
  order of their position;
* ``meta``: ``(out, ceil(in // m * n / (8 // slot_bits)))`` uint8, the position
  (``0 .. m-1``) inside its group of every kept entry, packed little-end first: index
  ``j`` of a row sits in byte ``j // per`` at bits ``[(j % per) * b, (j % per + 1) *
  b)``, with ``b = slot_bits`` and ``per = 8 // b`` indices per byte. ``slot_bits`` is
  ``index_bits = ceil(log2 m)`` rounded up to a divisor of 8: 2 bits (4 per byte) for
  2:4, 4 bits (2 per byte) for 2:8, whose 3-bit indices would otherwise straddle bytes.
  The unused high bits of a row's last byte are zero. This is the *logical* metadata;
  cuSPARSELt and ``torch.sparse.to_sparse_semi_structured`` reorder it for the
  hardware;
* ``shape``, ``n``, ``m``.

The positions of one group increase strictly, so the dense ``W`` comes back exactly. A
group with fewer than ``n`` non-zeros stores explicit zeros at unused positions.

The arrays are NumPy arrays (made by :mod:`effx_lab.nm.reference`) or torch tensors on
one device (made by :mod:`effx_lab.nm.torch_ops`). The structure is **validated once,
where it is made** (the constructor reads ``meta``, a copy to the host for CUDA
tensors); the matmuls then check only shapes, dtypes and devices, never values (see
docs/ARCHITECTURE.md, "Non-finite values"). ``values`` may hold NaN or inf: a NaN
weight is a non-zero, and is stored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np

from effx_lab._validate import check_int, describe

from .shapes import MAX_M, check_nm, index_bits, meta_bytes, slot_bits

__all__ = ["NMCompressed"]


def _is_tensor(value: Any) -> bool:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return False
    return isinstance(value, torch.Tensor)


def _host(value: Any) -> np.ndarray:
    return value.detach().cpu().numpy() if _is_tensor(value) else value


def slots_host(packed: np.ndarray, bits: int) -> np.ndarray:
    """Every ``bits``-wide slot of ``packed (..., B)`` uint8, little end first: uint8
    ``(..., B * (8 // bits))``, without checks. The NumPy face's ``unpack_indices`` and
    the constructor below read ``meta`` with it (uint8: a 16384 x 16384 weight's
    positions fit in 128 MiB)."""
    per = 8 // bits
    slots = [(packed >> (j * bits)) & ((1 << bits) - 1) for j in range(per)]
    return np.stack(slots, axis=-1).reshape(*packed.shape[:-1], -1)


def _is_uint8(value: Any) -> bool:
    if isinstance(value, np.ndarray):
        return value.dtype == np.uint8
    import torch

    return value.dtype == torch.uint8


def _is_float(value: Any) -> bool:
    if isinstance(value, np.ndarray):
        return value.dtype.kind == "f"
    return bool(value.dtype.is_floating_point)


@dataclass(frozen=True, eq=False, repr=False)
class NMCompressed:
    """An N:M sparse matrix in compressed form: ``values``, ``meta``, ``shape``, ``n``,
    ``m``, as described in the module docstring.

    Made by ``compress(w, n, m)`` of either face; the constructor validates everything
    (types, ranks, dtypes, devices, sizes, and the positions in ``meta``: each below
    ``m``, strictly increasing within a group, unused bits zero) and raises
    ``TypeError``/``ValueError`` naming the field. It unpacks like a tuple: ``values,
    meta, shape, n, m = c``.
    """

    values: Any
    meta: Any
    shape: tuple[int, int]
    n: int
    m: int

    def __post_init__(self) -> None:
        values, meta = self.values, self.meta
        torch_face = _is_tensor(values)
        kind = "torch tensor" if torch_face else "NumPy array"
        for name, a in (("values", values), ("meta", meta)):
            if not (isinstance(a, np.ndarray) or _is_tensor(a)):
                raise TypeError(
                    f"{name} must be a NumPy array or torch tensor, got {describe(a)}"
                )
            if _is_tensor(a) != torch_face:
                raise TypeError(
                    f"{name} must be a {kind}, like values, got {describe(a)}"
                )
            if a.ndim != 2:
                raise ValueError(
                    f"{name} must have 2 dimensions (out_features, ...), got shape "
                    f"{tuple(a.shape)}"
                )
        if not _is_float(values):
            raise TypeError(f"values must have a float dtype, got {values.dtype}")
        if not _is_uint8(meta):
            raise TypeError(f"meta must have dtype uint8, got {meta.dtype}")
        if torch_face and meta.device != values.device:
            raise ValueError(
                f"meta must be on the device of values ({values.device}), got "
                f"{meta.device}"
            )
        n, m = check_nm(self.n, self.m)
        if m > MAX_M:
            raise ValueError(
                f"m must be <= {MAX_M} (a position in the group must fit one byte "
                f"of meta), got m={m}"
            )
        object.__setattr__(self, "n", n)
        object.__setattr__(self, "m", m)
        shape = self.shape
        if not isinstance(shape, (tuple, list)) or len(shape) != 2:
            raise TypeError(
                "shape must be an (out_features, in_features) tuple of two ints, got "
                f"{describe(shape)}"
            )
        out = check_int("shape[0]", shape[0], min_value=1)
        d_in = check_int("shape[1]", shape[1], min_value=1)
        if d_in % m:
            raise ValueError(
                f"m={m} must divide shape[1] (the input width {d_in}) into groups"
            )
        object.__setattr__(self, "shape", (out, d_in))
        kept = d_in // m * n
        if tuple(values.shape) != (out, kept):
            raise ValueError(
                f"values must have shape (out, in // m * n) = {(out, kept)} for shape "
                f"{(out, d_in)} and {n}:{m}, got {tuple(values.shape)}"
            )
        bits = slot_bits(m)
        n_bytes = meta_bytes(kept, bits)
        if tuple(meta.shape) != (out, n_bytes):
            raise ValueError(
                f"meta must have shape (out, ceil(in // m * n / {8 // bits})) = "
                f"{(out, n_bytes)} ({bits}-bit positions, {8 // bits} per byte), got "
                f"{tuple(meta.shape)}"
            )
        self._check_positions(_host(meta), kept, bits)

    def _check_positions(self, meta: np.ndarray, kept: int, bits: int) -> None:
        n, m = self.n, self.m
        per = 8 // bits
        idx = slots_host(meta, bits)
        spare = idx.shape[1] - kept
        if spare:
            # the unused slots of the last byte must be zero
            unused = idx[:, kept:].any(axis=-1)
            if np.any(unused):
                row = int(np.flatnonzero(unused)[0])
                raise ValueError(
                    f"meta must have its unused high bits zero: row {row}'s last byte "
                    f"is {int(meta[row, -1])} but holds only {per - spare} position(s)"
                )
        idx = idx[:, :kept]
        if np.any(idx >= m):
            row, j = (int(v) for v in np.argwhere(idx >= m)[0])
            raise ValueError(
                f"meta must hold positions in [0, {m}) (inside a group of m), got "
                f"{int(idx[row, j])} at row {row}, kept entry {j}"
            )
        groups = idx.reshape(idx.shape[0], -1, n)
        bad = (groups[..., 1:] <= groups[..., :-1]).any(axis=-1)
        if np.any(bad):
            row, g = (int(v) for v in np.argwhere(bad)[0])
            raise ValueError(
                "meta must hold strictly increasing positions within each group "
                f"(sorted, no repeats), got {groups[row, g].tolist()} in row {row}, "
                f"group {g} (columns {g * m}..{g * m + m - 1})"
            )

    # -------------------------------------------------------------------- derived sizes
    @property
    def index_bits(self) -> int:
        """``ceil(log2 m)``: the bits that name a position in a group (2 for 2:4)."""
        return index_bits(self.m)

    @property
    def slot_bits(self) -> int:
        """The bits one position takes in ``meta``: :attr:`index_bits` rounded up to a
        divisor of 8 (2 for 2:4; 4 for 2:8)."""
        return slot_bits(self.m)

    @property
    def groups(self) -> int:
        """Groups per row: ``in // m``."""
        return self.shape[1] // self.m

    @property
    def density(self) -> float:
        """``n / m``: the fraction of the entries stored."""
        return self.n / self.m

    @property
    def nbytes(self) -> int:
        """Bytes of ``values`` plus bytes of ``meta``. For 2:4 in fp16 that is ``0.5 x``
        the dense bytes plus ``out * in / 8`` (2 bits per kept entry, one entry in two
        kept: 1 bit per dense element), ``1/16`` of the dense fp16 bytes: ``0.5625 x``
        in all, a bandwidth limit of ``1 / 0.5625 = 1.78 x`` on a memory-bound
        matmul."""
        return _nbytes(self.values) + _nbytes(self.meta)

    @property
    def dense_nbytes(self) -> int:
        """Bytes of the dense ``(out, in)`` matrix in the dtype of ``values``."""
        out, d_in = self.shape
        return out * d_in * _itemsize(self.values)

    def __iter__(self) -> Iterator[Any]:
        return iter((self.values, self.meta, self.shape, self.n, self.m))

    def __repr__(self) -> str:
        where = f", device={self.values.device}" if _is_tensor(self.values) else ""
        return (
            f"NMCompressed(shape={self.shape}, {self.n}:{self.m}, "
            f"dtype={self.values.dtype}, nbytes={self.nbytes} "
            f"({self.nbytes / self.dense_nbytes:.4g} x dense){where})"
        )


def _itemsize(a: Any) -> int:
    return int(a.element_size()) if _is_tensor(a) else int(a.itemsize)


def _nbytes(a: Any) -> int:
    return int(a.numel()) * _itemsize(a) if _is_tensor(a) else int(a.nbytes)
