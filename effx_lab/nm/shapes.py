"""Argument checks and shape rules of chapter 4's faces, shared by all of them.

:mod:`.reference` (NumPy), :mod:`.torch_ops` (PyTorch) and :mod:`.kernels` (Triton)
import their checks from here, so they reject a bad argument with the same message and
none reaches into another's private helpers. Everything here works on anything with
``.shape``/``.ndim``/``.dtype`` (NumPy arrays and torch tensors) and on plain Python
values; nothing imports torch.

* the pattern: :func:`check_nm` (``1 <= n < m``), :func:`check_nm_weight` (a 2-D
  ``(out, in)`` weight whose input width ``m`` divides);
* the metadata layout: :func:`index_bits` (``ceil(log2 m)``: 2 for 2:4, 3 for 2:8),
  :func:`slot_bits` (the bits one index takes in a byte: ``index_bits`` rounded up to a
  divisor of 8, so 3 -> 4), :func:`meta_bytes` (bytes of metadata per row),
  :func:`check_bits` (a packing width in 1, 2, 4, 8);
* products: :func:`check_nm_matmul_args` (shapes, dtypes, devices of ``x``, ``bias``;
  never values).
"""

from __future__ import annotations

import math
from typing import Any

from effx_lab._validate import check_int
from effx_lab.sparse import check_matmul_operands

__all__ = [
    "MAX_M",
    "PACK_BITS",
    "check_bits",
    "check_nm",
    "check_nm_matmul_args",
    "check_nm_weight",
    "index_bits",
    "meta_bytes",
    "slot_bits",
]

#: The packing widths a byte holds a whole number of: 8, 4, 2 or 1 indices per byte.
PACK_BITS = (1, 2, 4, 8)
#: The largest group the compressed form stores: its indices must fit one byte.
MAX_M = 256


# -------------------------------------------------------------------------- the pattern
def check_nm(n: Any, m: Any) -> tuple[int, int]:
    """``(n, m)`` as ints with ``1 <= n < m``: keep ``n`` of every ``m`` entries.

    ``n == m`` is refused: it keeps every entry, the weight is dense (use it as it is).
    """
    m = check_int("m", m, min_value=2)
    n = check_int("n", n, min_value=1)
    if n >= m:
        raise ValueError(
            f"n must be < m (keep n of every m entries; n == m keeps them all: the "
            f"weight is dense), got n={n} and m={m}"
        )
    return n, m


def check_nm_weight(name: str, w: Any, m: int) -> tuple[int, int]:
    """``w`` must be 2-D ``(out, in)`` (the ``nn.Linear`` layout) with ``m | in``.

    Returns ``(out, in)``. Types and dtypes are the caller's to check first.
    """
    if w.ndim != 2:
        raise ValueError(
            f"{name} must have 2 dimensions (out_features, in_features), the "
            f"nn.Linear layout, got shape {tuple(w.shape)}"
        )
    out, d_in = (int(d) for d in w.shape)
    if out == 0 or d_in == 0:
        raise ValueError(f"{name} must not be empty, got shape {(out, d_in)}")
    if d_in % m:
        raise ValueError(
            f"m must divide the input width of {name} (its last dimension, "
            f"{d_in}) into groups of m consecutive entries, got m={m}"
        )
    return out, d_in


# ------------------------------------------------------------------- metadata layout
def index_bits(m: int) -> int:
    """``ceil(log2 m)``: the bits that name one position of a group of ``m`` (2 for
    2:4, 3 for 2:8, 1 for 1:2)."""
    m = check_int("m", m, min_value=2, max_value=MAX_M)
    return max(1, math.ceil(math.log2(m)))


def slot_bits(m: int) -> int:
    """The bits one index occupies in the packed metadata: :func:`index_bits` rounded up
    to a divisor of 8 (1, 2, 4 or 8), so that a byte holds a whole number of indices and
    no index straddles two bytes. 2:4 -> 2 (4 indices per byte, the sparse tensor
    cores' logical metadata); 2:8 -> 3 rounded up to 4 (2 per byte); 2:16 -> 4."""
    bits = index_bits(m)
    return next(b for b in PACK_BITS if b >= bits)


def check_bits(bits: Any) -> int:
    """``bits``: a packing width that divides 8 (1, 2, 4 or 8)."""
    if isinstance(bits, bool) or not isinstance(bits, int):
        bits = check_int("bits", bits)
    if bits not in PACK_BITS:
        raise ValueError(
            "bits must divide 8 (1, 2, 4 or 8), so a byte holds a whole number of "
            f"indices; round 3 up to 4 (as compress does for m=8), got {bits}"
        )
    return int(bits)


def meta_bytes(count: int, bits: int) -> int:
    """Bytes that hold ``count`` indices of ``bits`` each: ``ceil(count / (8 // bits))``
    (the last byte's unused high bits are zero)."""
    per = 8 // check_bits(bits)
    return -(-check_int("count", count, min_value=0) // per)


# ------------------------------------------------------------------------- products
def check_nm_matmul_args(
    x: Any, c: Any, bias: Any, array_type: type, face: str
) -> None:
    """Shapes, dtypes and devices of ``nm_matmul(x, c, bias)``, never values.

    ``c`` is an already checked ``NMCompressed``; ``array_type``: ``np.ndarray`` or
    ``torch.Tensor``; ``face``: ``"reference"``, ``"torch_ops"`` or ``"kernels"``
    (named in the hint of a wrong array type).
    """
    check_matmul_operands(x, c, bias, array_type, face, "nm", "c")
