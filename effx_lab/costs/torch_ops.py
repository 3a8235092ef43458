"""Sequence packing in PyTorch, vectorised (chapter 1, section 01.3).

Same names and signatures as :mod:`effx_lab.costs.reference` (torch tensors in, torch tensors out).
What differs, and why:

* no Python loop over the batch: the mask is one broadcast comparison ``arange(L) < lengths[:, None]``,
  the offsets one ``cumsum``;
* ``pack`` is a single gather: the flat indices of the real tokens (``nonzero`` of the mask, which
  comes out in row-major order, i.e. sequence by sequence) feed one ``index_select`` on the ``[B*L, ...]``
  view, so the copy is one contiguous kernel;
* ``unpack`` is a single scatter: each packed row's sequence id comes from ``repeat_interleave`` of the
  lengths, its position from ``row - cu[seq]``, and ``index_copy_`` writes all rows at once;
* the FFN uses ``torch.addmm`` (bias fused into the GEMM) and ``F.gelu(approximate="tanh")``, the same
  formula as the NumPy reference.

Everything runs on the device of ``x`` (CPU or CUDA).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from effx_lab._validate import check_array, check_int, describe

from .reference import _check_pad_value, _stats

__all__ = [
    "lengths_to_mask",
    "cu_seqlens",
    "pack",
    "unpack",
    "gelu",
    "ffn",
    "padded_ffn",
    "packed_ffn",
    "padding_stats",
]

_INT_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)


def _lengths(lengths: Any, max_len: int | None = None, device: Any = None) -> torch.Tensor:
    """Validate ``lengths`` (a 1-D integer tensor, array or list) and return an int64 tensor."""
    if isinstance(lengths, (list, tuple)):
        if not all(isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)) for v in lengths):
            raise TypeError(f"lengths must contain ints, got {describe(lengths)}")
        lengths = torch.tensor(lengths, dtype=torch.int64).reshape(len(lengths))
    elif isinstance(lengths, np.ndarray):
        check_array("lengths", lengths, ndim=1, dtype_kind="iu")
        lengths = torch.from_numpy(lengths.astype(np.int64))
    if not isinstance(lengths, torch.Tensor):
        raise TypeError(f"lengths must be a 1-D integer tensor (or array/list of ints), got {describe(lengths)}")
    if lengths.ndim != 1:
        raise ValueError(f"lengths must have 1 dimensions, got shape {tuple(lengths.shape)}")
    if lengths.dtype not in _INT_DTYPES:
        raise TypeError(f"lengths must have an int dtype, got {lengths.dtype}")
    lens = lengths.to(dtype=torch.int64, device=device if device is not None else lengths.device)
    if lens.numel():
        lo, hi = int(lens.min()), int(lens.max())
        if lo < 0:
            raise ValueError(f"lengths must be >= 0, got min {lo}")
        if max_len is not None and hi > max_len:
            raise ValueError(f"lengths must be <= max_len={max_len}, got max {hi}")
    return lens


def _check_tensor(name: str, value: Any, ndim: tuple[int, ...] | None = None) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch tensor, got {describe(value)}")
    if ndim is not None and value.ndim not in ndim:
        want = " or ".join(str(a) for a in ndim)
        raise ValueError(f"{name} must have {want} dimensions, got shape {tuple(value.shape)}")
    return value


def _check_padded(x: Any, lengths: Any) -> tuple[torch.Tensor, torch.Tensor]:
    x = _check_tensor("x", x, tuple(range(2, 8)))
    lens = _lengths(lengths, max_len=x.shape[1], device=x.device)
    if lens.shape[0] != x.shape[0]:
        raise ValueError(
            f"lengths must have one entry per sequence of x (x.shape[0] = {x.shape[0]}), got {lens.shape[0]}"
        )
    return x, lens


def _check_cu(cu: Any, n_rows: int, max_len: int, device: Any) -> torch.Tensor:
    cu = _check_tensor("cu", cu, (1,))
    if cu.dtype not in _INT_DTYPES:
        raise TypeError(f"cu must have an int dtype, got {cu.dtype}")
    if cu.shape[0] < 1:
        raise ValueError(f"cu must have at least one entry (B + 1 offsets), got shape {tuple(cu.shape)}")
    cu = cu.to(dtype=torch.int64, device=device)
    if int(cu[0]) != 0:
        raise ValueError(f"cu must start at 0, got cu[0] = {int(cu[0])}")
    steps = torch.diff(cu)
    if steps.numel():
        if int(steps.min()) < 0:
            raise ValueError(f"cu must be non-decreasing, got a step of {int(steps.min())}")
        if int(steps.max()) > max_len:
            raise ValueError(f"cu steps (sequence lengths) must be <= max_len={max_len}, got {int(steps.max())}")
    if int(cu[-1]) != n_rows:
        raise ValueError(f"cu[-1] must equal packed.shape[0] = {n_rows}, got {int(cu[-1])}")
    return cu


def _check_ffn(x: torch.Tensor, w1: Any, b1: Any, w2: Any, b2: Any) -> None:
    if x.ndim != 3 or not x.dtype.is_floating_point:
        raise ValueError(f"x must be a float tensor of shape [B, L, d_model], got {describe(x)}")
    _check_ffn_weights(x, w1, b1, w2, b2)


def _check_ffn_weights(x: torch.Tensor, w1: Any, b1: Any, w2: Any, b2: Any, input_name: str = "x") -> None:
    """Shapes and dtypes of the FFN weights against the already validated input (d_model = its last axis)."""
    d = x.shape[-1]
    for name, t in (("w1", w1), ("b1", b1), ("w2", w2), ("b2", b2)):
        _check_tensor(name, t)
        if t.dtype != x.dtype:
            raise TypeError(f"{name} must have the same dtype as {input_name} ({x.dtype}), got {t.dtype}")
    if w1.ndim != 2 or w1.shape[0] != d:
        raise ValueError(f"w1 must have shape [d_model={d}, d_ff], got {tuple(w1.shape)}")
    d_ff = w1.shape[1]
    if tuple(b1.shape) != (d_ff,):
        raise ValueError(f"b1 must have shape [d_ff={d_ff}], got {tuple(b1.shape)}")
    if tuple(w2.shape) != (d_ff, d):
        raise ValueError(f"w2 must have shape [d_ff={d_ff}, d_model={d}], got {tuple(w2.shape)}")
    if tuple(b2.shape) != (d,):
        raise ValueError(f"b2 must have shape [d_model={d}], got {tuple(b2.shape)}")


def lengths_to_mask(lengths: Any, max_len: int) -> torch.Tensor:
    """Boolean ``[B, max_len]`` mask, ``True`` at the real tokens: one broadcast ``arange < lengths``."""
    max_len = check_int("max_len", max_len, min_value=0)
    lens = _lengths(lengths, max_len)
    return torch.arange(max_len, device=lens.device)[None, :] < lens[:, None]


def cu_seqlens(lengths: Any) -> torch.Tensor:
    """Cumulative offsets ``[0, l_0, l_0 + l_1, ..., sum(lengths)]`` as int64 ``[B + 1]`` (one cumsum)."""
    lens = _lengths(lengths)
    return F.pad(torch.cumsum(lens, 0), (1, 0))


def pack(x: torch.Tensor, lengths: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Remove right padding with one gather: ``x[B, L, ...]`` -> ``(packed[T, ...], cu[B + 1])``."""
    x, lens = _check_padded(x, lengths)
    batch, max_len = x.shape[0], x.shape[1]
    mask = torch.arange(max_len, device=x.device)[None, :] < lens[:, None]
    flat_index = torch.nonzero(mask.reshape(-1), as_tuple=False).squeeze(1)
    packed = x.reshape((batch * max_len,) + tuple(x.shape[2:])).index_select(0, flat_index)
    return packed, F.pad(torch.cumsum(lens, 0), (1, 0))


def unpack(packed: torch.Tensor, cu: torch.Tensor, max_len: int, pad_value: float = 0) -> torch.Tensor:
    """Inverse of :func:`pack` with one scatter: ``packed[T, ...]`` -> ``[B, max_len, ...]``, padding = ``pad_value``."""
    packed = _check_tensor("packed", packed, tuple(range(1, 7)))
    max_len = check_int("max_len", max_len, min_value=0)
    cu = _check_cu(cu, packed.shape[0], max_len, packed.device)
    pad_value = _check_pad_value(pad_value, packed.dtype)
    batch = cu.shape[0] - 1
    lens = torch.diff(cu)
    seq_id = torch.repeat_interleave(torch.arange(batch, device=packed.device), lens)
    pos = torch.arange(packed.shape[0], device=packed.device) - cu[seq_id]
    feat = tuple(packed.shape[1:])
    out = torch.full((batch * max_len,) + feat, pad_value, dtype=packed.dtype, device=packed.device)
    out.index_copy_(0, seq_id * max_len + pos, packed)
    return out.reshape((batch, max_len) + feat)


def gelu(x: torch.Tensor) -> torch.Tensor:
    """GELU, tanh approximation (same formula as the NumPy reference), via ``F.gelu(approximate="tanh")``."""
    x = _check_tensor("x", x)
    return F.gelu(x, approximate="tanh")


def _ffn(h: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor) -> torch.Tensor:
    rows = h.reshape(-1, h.shape[-1])
    out = torch.addmm(b2, F.gelu(torch.addmm(b1, rows, w1), approximate="tanh"), w2)
    return out.reshape(tuple(h.shape[:-1]) + (w2.shape[1],))


def ffn(h: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor) -> torch.Tensor:
    """Position-wise FFN ``GELU(h W1 + b1) W2 + b2`` on the last axis of ``h`` (any leading shape).

    Same contract as :func:`effx_lab.costs.reference.ffn`. The leading axes are flattened into one row axis
    so that each layer is a single ``torch.addmm`` (bias fused into the matrix product); weights must share
    ``h``'s dtype and device.
    """
    h = _check_tensor("h", h, tuple(range(1, 8)))
    if not h.dtype.is_floating_point:
        raise TypeError(f"h must have a float dtype, got {h.dtype}")
    _check_ffn_weights(h, w1, b1, w2, b2, input_name="h")
    return _ffn(h, w1, b1, w2, b2)


def padded_ffn(
    x: torch.Tensor, lengths: Any, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor
) -> torch.Tensor:
    """FFN ``GELU(x W1 + b1) W2 + b2`` on all ``B * L`` positions (two ``addmm``), padding then zeroed."""
    x, lens = _check_padded(x, lengths)
    _check_ffn(x, w1, b1, w2, b2)
    y = _ffn(x, w1, b1, w2, b2)
    mask = torch.arange(x.shape[1], device=x.device)[None, :] < lens[:, None]
    return torch.where(mask[:, :, None], y, torch.zeros((), dtype=y.dtype, device=y.device))


def packed_ffn(
    x: torch.Tensor, lengths: Any, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor
) -> torch.Tensor:
    """The same FFN on the ``T = sum(lengths)`` real rows only: gather -> two ``addmm`` -> scatter."""
    x, lens = _check_padded(x, lengths)
    _check_ffn(x, w1, b1, w2, b2)
    packed, cu = pack(x, lens)
    return unpack(_ffn(packed, w1, b1, w2, b2), cu, x.shape[1], 0)


def padding_stats(lengths: Any, max_len: int, *, d_model: int = 384, d_ff: int = 1536) -> dict:
    """Same as :func:`effx_lab.costs.reference.padding_stats`, for lengths given as a tensor."""
    max_len = check_int("max_len", max_len, min_value=0)
    lens = _lengths(lengths, max_len)
    return _stats(int(lens.shape[0]), int(lens.sum()), max_len, d_model, d_ff)
