"""N:M masks, the compressed form and the matmul that reads it: the NumPy face (04.1).

Convention: groups of ``m`` consecutive entries along the **input** dimension, the last
axis of an ``nn.Linear`` weight ``(out, in)``, the layout NVIDIA's sparse tensor cores
read for 2:4.

* :func:`nm_mask` (which ``n`` of every ``m`` to keep: the largest ``|w|``) and
  :func:`is_nm` (does a weight already follow the pattern);
* :func:`pack_indices` / :func:`unpack_indices`: positions of a few bits packed into
  bytes, little end first;
* :func:`compress` / :func:`decompress`: ``W`` <-> :class:`NMCompressed` (kept values +
  packed positions), exact both ways;
* :func:`nm_matmul`: ``x @ W.T + bias`` reading only the compressed form: gather the
  columns of ``x`` at the stored positions, multiply by the values, sum.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from effx_lab._validate import check_array, check_int, describe
from effx_lab.sparse import reference as _sparse

from ._format import NMCompressed, slots_host
from .shapes import (
    MAX_M,
    check_bits,
    check_nm,
    check_nm_matmul_args,
    check_nm_weight,
    meta_bytes,
    slot_bits,
)

__all__ = [
    "NMCompressed",
    "nm_mask",
    "is_nm",
    "pack_indices",
    "unpack_indices",
    "compress",
    "decompress",
    "nm_matmul",
]

#: Elements of the largest temporary ``x[..., idx]`` that :func:`nm_matmul` builds.
CHUNK_ELEMENTS = 1 << 22


def _array(name: str, w: Any, finite: bool = False) -> np.ndarray:
    if not isinstance(w, np.ndarray):
        hint = (
            "; use effx_lab.nm.torch_ops for torch tensors"
            if type(w).__module__ == "torch"
            else ""
        )
        raise TypeError(f"{name} must be a NumPy array, got {describe(w)}{hint}")
    return check_array(name, w, dtype_kind="f", finite=finite)


# -------------------------------------------------------------------------------- masks
def nm_mask(w: np.ndarray, n: int = 2, m: int = 4) -> np.ndarray:
    """The N:M mask of ``w (out, in)``: keep the ``n`` largest ``|w|`` of every group of
    ``m`` consecutive entries along the input dimension (the last axis).

    ``1 <= n < m``, ``m`` divides ``in``; ``w`` finite. Returns a bool array of ``w``'s
    shape with exactly ``n`` ``True`` per group; among equal ``|w|`` the entry that
    comes first in its group is kept. A thin wrapper of
    :func:`effx_lab.sparse.reference.nm_mask` along ``axis=-1``.
    """
    w = _array("w", w, finite=True)
    n, m = check_nm(n, m)
    check_nm_weight("w", w, m)
    return _sparse.nm_mask(w, n, m, axis=-1)


def is_nm(w: np.ndarray, n: int = 2, m: int = 4) -> bool:
    """Whether every group of ``m`` consecutive entries of ``w (out, in)`` along the
    input dimension holds at most ``n`` non-zeros (NaN counts as a non-zero)."""
    w = _array("w", w)
    n, m = check_nm(n, m)
    out, d_in = check_nm_weight("w", w, m)
    counts = (w != 0).reshape(out, d_in // m, m).sum(axis=-1)
    return bool(np.all(counts <= n))


# ---------------------------------------------------------------------------- metadata
def _check_index_array(name: str, idx: Any, face_type: type, other: str) -> None:
    if not isinstance(idx, face_type):
        want = "a NumPy array" if face_type is np.ndarray else "a torch tensor"
        raise TypeError(
            f"{name} must be {want}, got {describe(idx)}; use effx_lab.nm.{other} "
            "for the other kind"
        )


def pack_indices(idx: np.ndarray, bits: int) -> np.ndarray:
    """Pack small non-negative ints into bytes, ``8 // bits`` per byte.

    ``idx (..., k)``: an integer array with values in ``[0, 2**bits)``; ``bits`` in 1,
    2, 4, 8. Returns uint8 ``(..., ceil(k / (8 // bits)))``: index ``j`` sits in byte
    ``j // per`` at bits ``[(j % per) * bits, (j % per + 1) * bits)`` (little end
    first, ``per = 8 // bits``); the unused high bits of the last byte are zero. For
    2 bits, ``[1, 3, 0, 2]`` packs into ``1 | 3 << 2 | 0 << 4 | 2 << 6 = 141``.
    """
    _check_index_array("idx", idx, np.ndarray, "torch_ops")
    if idx.dtype.kind not in "iu":
        raise TypeError(f"idx must have an int dtype, got {idx.dtype}")
    bits = check_bits(bits)
    if idx.ndim < 1:
        raise ValueError("idx must have at least 1 dimension, got a 0-d array")
    if idx.size and (idx.min() < 0 or idx.max() >= 1 << bits):
        raise ValueError(
            f"idx must hold values in [0, {1 << bits}) to fit {bits} bits, got values "
            f"in [{int(idx.min())}, {int(idx.max())}]"
        )
    per, k = 8 // bits, idx.shape[-1]
    n_bytes = meta_bytes(k, bits)
    padded = np.zeros((*idx.shape[:-1], n_bytes * per), dtype=np.int64)
    padded[..., :k] = idx
    slots = padded.reshape(*idx.shape[:-1], n_bytes, per)
    shifts = np.arange(per, dtype=np.int64) * bits
    return (slots << shifts).sum(axis=-1).astype(np.uint8)


def unpack_indices(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    """The inverse of :func:`pack_indices`: ``(..., count)`` int64 from ``packed (...,
    ceil(count / (8 // bits)))`` uint8 (``count`` fixes how many slots of the last byte
    are used)."""
    _check_index_array("packed", packed, np.ndarray, "torch_ops")
    if packed.dtype != np.uint8:
        raise TypeError(f"packed must have dtype uint8, got {packed.dtype}")
    bits = check_bits(bits)
    count = check_int("count", count, min_value=0)
    if packed.ndim < 1 or packed.shape[-1] != meta_bytes(count, bits):
        raise ValueError(
            f"packed must have ceil(count / {8 // bits}) = {meta_bytes(count, bits)} "
            f"bytes in its last dimension for count={count} and bits={bits}, got shape "
            f"{tuple(packed.shape)}"
        )
    return slots_host(packed, bits)[..., :count].astype(np.int64)


# ---------------------------------------------------------------------- compressed form
def _first_bad_group(counts: np.ndarray, n: int, m: int) -> str:
    row, g = (int(v) for v in np.argwhere(counts > n)[0])
    return (
        f"w must be {n}:{m} sparse (at most {n} non-zeros in every group of {m} "
        f"along the input dimension; prune it with nm_mask first), got "
        f"{int(counts[row, g])} non-zeros in row {row}, group {g} (columns "
        f"{g * m}..{g * m + m - 1})"
    )


def compress(w: np.ndarray, n: int = 2, m: int = 4) -> NMCompressed:
    """``w (out, in)``, already N:M, as :class:`NMCompressed`.

    Raises ``ValueError`` naming the first group (row-major) with more than ``n``
    non-zeros. In each group the stored positions are its non-zeros, then (for a group
    with fewer than ``n``) the first unused positions, holding explicit zeros; sorted
    ascending. So ``decompress(compress(w))`` equals ``w`` exactly. NaN and inf count
    as non-zeros and are stored as they are.
    """
    w = _array("w", w)
    n, m = check_nm(n, m)
    if m > MAX_M:
        raise ValueError(
            f"m must be <= {MAX_M} to compress (a position must fit one byte), got {m}"
        )
    out, d_in = check_nm_weight("w", w, m)
    groups = w.reshape(out, d_in // m, m)
    nz = groups != 0
    counts = nz.sum(axis=-1)
    if np.any(counts > n):
        raise ValueError(_first_bad_group(counts, n, m))
    # non-zeros first, then the zeros, each in the order of position; keep n; sort
    order = np.argsort(~nz, axis=-1, kind="stable")
    pos = np.sort(order[..., :n], axis=-1)
    values = np.take_along_axis(groups, pos, axis=-1).reshape(out, -1)
    meta = pack_indices(pos.reshape(out, -1), slot_bits(m))
    return NMCompressed(np.ascontiguousarray(values), meta, (out, d_in), n, m)


def _check_compressed(c: Any, numpy_face: bool) -> NMCompressed:
    if not isinstance(c, NMCompressed):
        raise TypeError(
            f"c must be an NMCompressed (made by compress), got {describe(c)}"
        )
    if isinstance(c.values, np.ndarray) != numpy_face:
        want, other = ("NumPy", "torch_ops") if numpy_face else ("torch", "reference")
        raise TypeError(
            f"c must hold {want} arrays, got one holding {type(c.values).__name__}; "
            f"use effx_lab.nm.{other} for it"
        )
    return c


def _columns(c: NMCompressed) -> np.ndarray:
    """``(out, in // m * n)`` int64: the input column of every stored value."""
    out, _ = c.shape
    kept = c.values.shape[1]
    pos = slots_host(c.meta, c.slot_bits)[:, :kept].astype(np.int64)
    group = np.arange(kept) // c.n
    return group * c.m + pos


def decompress(c: NMCompressed) -> np.ndarray:
    """The dense ``(out, in)`` matrix of ``c``: zeros where nothing is stored."""
    c = _check_compressed(c, numpy_face=True)
    w = np.zeros(c.shape, dtype=c.values.dtype)
    np.put_along_axis(w, _columns(c), c.values, axis=-1)
    return w


def nm_matmul(
    x: np.ndarray, c: NMCompressed, bias: np.ndarray | None = None
) -> np.ndarray:
    """``x @ W.T (+ bias)`` for an N:M ``W`` read only in its compressed form.

    ``x (..., in)``, ``bias (out,)`` and ``c.values`` share one dtype. Output ``o`` of a
    row is ``sum_k x[cols[o, k]] * values[o, k]`` over the ``in // m * n`` stored
    entries of row ``o``, ``cols = group * m + position``: ``n / m`` of the dense
    multiply-adds. Shapes and dtypes are checked, values never. A NaN in ``x[..., j]``
    reaches the outputs whose row stores column ``j`` (the dense product would spread
    it to every output: ``0 * NaN``).
    """
    c = _check_compressed(c, numpy_face=True)
    check_nm_matmul_args(x, c, bias, np.ndarray, "reference")
    cols, values = _columns(c), c.values
    out, kept = values.shape
    lead = x.shape[:-1]
    xf = x.reshape(-1, x.shape[-1])
    y = np.empty((xf.shape[0], out), dtype=x.dtype)
    step = max(1, CHUNK_ELEMENTS // max(1, xf.shape[0] * kept))
    for o0 in range(0, out, step):
        o1 = min(out, o0 + step)
        gathered = xf[:, cols[o0:o1]]  # (t, rows, kept): x at the stored columns
        y[:, o0:o1] = np.einsum("tok,ok->to", gathered, values[o0:o1])
    y = y.reshape(*lead, out)
    return y if bias is None else y + bias
