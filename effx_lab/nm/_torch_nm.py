"""N:M masks, the compressed form and the matmul that reads it: the PyTorch face (04.1).

The same names and signatures as :mod:`effx_lab.nm._np_nm` (see it for the
definitions), written in torch primitives so that they run on any device and
differentiate: :func:`compress` gathers the kept values of ``w`` (its gradient flows
back to ``w``), :func:`decompress` scatters them, :func:`nm_matmul` gathers ``x`` at
the stored columns (``index_select``), multiplies and sums, differentiable in ``x``,
``c.values`` and ``bias``. Only :func:`compress` and the :class:`NMCompressed`
constructor read data back to the host (to name a bad group; to validate ``meta``).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from effx_lab._validate import check_array, check_int, describe
from effx_lab.sparse import torch_ops as _sparse

from ._format import NMCompressed
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
#: from this many tokens on, nm_matmul decompresses the weight and uses the dense GEMM
DECOMPRESS_TOKENS = 4


def _tensor(name: str, w: Any, finite: bool = False) -> torch.Tensor:
    if not isinstance(w, torch.Tensor):
        hint = (
            "; use effx_lab.nm.reference for NumPy arrays"
            if type(w).__module__ == "numpy"
            else ""
        )
        raise TypeError(f"{name} must be a torch tensor, got {describe(w)}{hint}")
    return check_array(name, w, dtype_kind="f", allow_torch=True, finite=finite)


def _index_tensor(name: str, a: Any) -> torch.Tensor:
    if not isinstance(a, torch.Tensor):
        raise TypeError(
            f"{name} must be a torch tensor, got {describe(a)}; use "
            "effx_lab.nm.reference for the other kind"
        )
    if a.dtype.is_floating_point or a.dtype.is_complex or a.dtype == torch.bool:
        raise TypeError(f"{name} must have an int dtype, got {a.dtype}")
    return a


# -------------------------------------------------------------------------------- masks
def nm_mask(w: torch.Tensor, n: int = 2, m: int = 4) -> torch.Tensor:
    """The N:M mask of ``w (out, in)`` along the input dimension; see the reference.

    A thin wrapper of :func:`effx_lab.sparse.torch_ops.nm_mask` along ``axis=-1``.
    """
    w = _tensor("w", w, finite=True)
    n, m = check_nm(n, m)
    check_nm_weight("w", w, m)
    return _sparse.nm_mask(w, n, m, axis=-1)


def is_nm(w: torch.Tensor, n: int = 2, m: int = 4) -> bool:
    """Whether every group of ``m`` along the input dimension holds at most ``n``
    non-zeros; see the reference. Reads one bool back."""
    w = _tensor("w", w)
    n, m = check_nm(n, m)
    out, d_in = check_nm_weight("w", w, m)
    counts = (w.detach() != 0).reshape(out, d_in // m, m).sum(dim=-1)
    return bool((counts <= n).all())


# ---------------------------------------------------------------------------- metadata
def pack_indices(idx: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack small non-negative ints into bytes, little end first; see the reference."""
    idx = _index_tensor("idx", idx)
    bits = check_bits(bits)
    if idx.ndim < 1:
        raise ValueError("idx must have at least 1 dimension, got a 0-d tensor")
    if idx.numel():
        lo, hi = int(idx.min()), int(idx.max())
        if lo < 0 or hi >= 1 << bits:
            raise ValueError(
                f"idx must hold values in [0, {1 << bits}) to fit {bits} bits, got "
                f"values in [{lo}, {hi}]"
            )
    per, k = 8 // bits, idx.shape[-1]
    n_bytes = meta_bytes(k, bits)
    padded = idx.new_zeros((*idx.shape[:-1], n_bytes * per), dtype=torch.int64)
    padded[..., :k] = idx
    slots = padded.reshape(*idx.shape[:-1], n_bytes, per)
    shifts = torch.arange(per, dtype=torch.int64, device=idx.device) * bits
    return (slots << shifts).sum(dim=-1).to(torch.uint8)


def _unpack(packed: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    """The first ``count`` slots of ``packed (..., B)``, int64: ``8 // bits`` shifts of
    the uint8 bytes by constants (shifts by a tensor of amounts are slow on CPUs)."""
    per = 8 // bits
    slots = [(packed >> (j * bits)) & ((1 << bits) - 1) for j in range(per)]
    flat = torch.stack(slots, dim=-1).reshape(*packed.shape[:-1], -1)
    return flat[..., :count].to(torch.int64)


def unpack_indices(packed: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    """The inverse of :func:`pack_indices`: ``(..., count)`` int64; see the
    reference."""
    if not isinstance(packed, torch.Tensor):
        raise TypeError(
            f"packed must be a torch tensor, got {describe(packed)}; use "
            "effx_lab.nm.reference for the other kind"
        )
    if packed.dtype != torch.uint8:
        raise TypeError(f"packed must have dtype uint8, got {packed.dtype}")
    bits = check_bits(bits)
    count = check_int("count", count, min_value=0)
    if packed.ndim < 1 or packed.shape[-1] != meta_bytes(count, bits):
        raise ValueError(
            f"packed must have ceil(count / {8 // bits}) = {meta_bytes(count, bits)} "
            f"bytes in its last dimension for count={count} and bits={bits}, got shape "
            f"{tuple(packed.shape)}"
        )
    return _unpack(packed, bits, count)


# ---------------------------------------------------------------------- compressed form
def compress(w: torch.Tensor, n: int = 2, m: int = 4) -> NMCompressed:
    """``w (out, in)``, already N:M, as :class:`NMCompressed`; see the reference.

    The values are a gather of ``w`` (differentiable when ``w`` requires grad).
    """
    w = _tensor("w", w)
    n, m = check_nm(n, m)
    if m > MAX_M:
        raise ValueError(
            f"m must be <= {MAX_M} to compress (a position must fit one byte), got {m}"
        )
    out, d_in = check_nm_weight("w", w, m)
    groups = w.reshape(out, d_in // m, m)
    nz = groups.detach() != 0
    counts = nz.sum(dim=-1)
    bad = counts > n
    if bool(bad.any()):
        row, g = (int(v) for v in bad.nonzero()[0])
        raise ValueError(
            f"w must be {n}:{m} sparse (at most {n} non-zeros in every group of {m} "
            f"along the input dimension; prune it with nm_mask first), got "
            f"{int(counts[row, g])} non-zeros in row {row}, group {g} (columns "
            f"{g * m}..{g * m + m - 1})"
        )
    # non-zeros first, then the zeros, each in the order of position; keep n; sort
    order = torch.sort((~nz).to(torch.int8), dim=-1, stable=True).indices
    pos = torch.sort(order[..., :n], dim=-1).values
    values = torch.gather(groups, -1, pos).reshape(out, -1).contiguous()
    meta = pack_indices(pos.reshape(out, -1), slot_bits(m))
    return NMCompressed(values, meta, (out, d_in), n, m)


def _check_compressed(c: Any) -> NMCompressed:
    if not isinstance(c, NMCompressed):
        raise TypeError(
            f"c must be an NMCompressed (made by compress), got {describe(c)}"
        )
    if not isinstance(c.values, torch.Tensor):
        raise TypeError(
            "c must hold torch tensors, got one holding "
            f"{type(c.values).__name__}; use effx_lab.nm.reference for it"
        )
    return c


def _columns(c: NMCompressed) -> torch.Tensor:
    """``(out, in // m * n)`` int64: the input column of every stored value."""
    kept = c.values.shape[1]
    pos = _unpack(c.meta, c.slot_bits, kept)
    group = torch.arange(kept, device=pos.device) // c.n
    return group * c.m + pos


def decompress(c: NMCompressed) -> torch.Tensor:
    """The dense ``(out, in)`` matrix of ``c``: one scatter, differentiable in
    ``c.values``; see the reference."""
    c = _check_compressed(c)
    w = c.values.new_zeros(c.shape)
    return w.scatter(1, _columns(c), c.values)


def nm_matmul(
    x: torch.Tensor, c: NMCompressed, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """``x @ W.T (+ bias)`` reading only the compressed ``W``; see the reference.

    Fewer than :data:`DECOMPRESS_TOKENS` tokens (decode): ``index_select`` of the
    columns of ``x`` at the stored positions, then a multiply by ``c.values`` and a sum
    (one ``einsum``), in chunks of output rows. From :data:`DECOMPRESS_TOKENS` tokens
    on (prefill) the gathers would cost tokens x stored values, so the weight is
    decompressed once into a dense temporary (one scatter) and multiplied by the dense
    GEMM, as the Triton kernel does tile by tile in registers: measured on a 2-core
    Xeon at 4096 x 4096, 16 tokens took 0.20 s that way against 0.43 s gathering, 64
    tokens 0.18 s against 2.0 s. Shapes, dtypes and devices are checked, never values
    (no read-back). Differentiable in ``x``, ``c.values`` and ``bias``. A NaN in
    ``x[i, j]`` reaches the outputs whose row stores column ``j`` on the gather path,
    every output of token ``i`` on the dense path (``0 * NaN``).
    """
    c = _check_compressed(c)
    check_nm_matmul_args(x, c, bias, torch.Tensor, "torch_ops")
    lead = tuple(x.shape[:-1])
    t = math.prod(lead)
    if t >= DECOMPRESS_TOKENS:
        return torch.nn.functional.linear(x, decompress(c), bias)
    cols, values = _columns(c), c.values
    out, kept = values.shape
    xf = x.reshape(t, x.shape[-1])
    step = max(1, CHUNK_ELEMENTS // max(1, t * kept))
    parts = []
    for o0 in range(0, out, step):
        o1 = min(out, o0 + step)
        idx = cols[o0:o1].reshape(-1)
        gathered = xf.index_select(1, idx).reshape(t, o1 - o0, kept)
        # one dot product of length kept per output: a batched matmul
        parts.append(torch.einsum("tok,ok->to", gathered, values[o0:o1]))
    y = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
    y = y.reshape(*lead, out)
    return y if bias is None else y + bias
