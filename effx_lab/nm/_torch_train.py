"""Training sparse weights from scratch, the PyTorch face (section 04.3): STE, SR-STE
and Top-KAST on one weight tensor, differentiable.

The same names and signatures as :mod:`effx_lab.nm._np_train` (read its docstring for
the methods); tests compare the two in float64. What only this face has:
:func:`ste_weight` passes the gradient straight through (``d ste_weight(w, M) / dw``
is the identity, not ``M``), and :func:`topkast_penalty` returns a 0-d tensor that
autograd differentiates.
"""

from __future__ import annotations

import numbers
from typing import Any

import torch

from effx_lab._validate import check_array, check_float, describe
from effx_lab.sparse import torch_ops as _ST

__all__ = [
    "ste_weight",
    "srste_grad",
    "srste_step",
    "topkast_masks",
    "topkast_penalty",
]


# ---------------------------------------------------------------------------- checks
def _weight(name: str, w: Any) -> torch.Tensor:
    if not isinstance(w, torch.Tensor):
        raise TypeError(
            f"{name} must be a float torch tensor (the torch face; use "
            f"effx_lab.nm.reference for NumPy arrays), got {describe(w)}"
        )
    check_array(name, w, dtype_kind="f", allow_torch=True, finite=True)
    if w.ndim == 0 or w.numel() == 0:
        raise ValueError(
            f"{name} must be a non-empty tensor with at least 1 dimension, got shape "
            f"{tuple(w.shape)}"
        )
    return w


def _mask(name: str, mask: Any, w: torch.Tensor) -> torch.Tensor:
    if not isinstance(mask, torch.Tensor):
        raise TypeError(
            f"{name} must be a bool torch tensor (True = kept), got {describe(mask)}"
        )
    if mask.dtype != torch.bool:
        raise TypeError(
            f"{name} must have dtype bool (True = kept), got {mask.dtype}; build it "
            "with nm_mask or compare, e.g. w != 0"
        )
    if mask.shape != w.shape:
        raise ValueError(
            f"{name} must have the shape of w {tuple(w.shape)}, got {tuple(mask.shape)}"
        )
    if mask.device != w.device:
        raise ValueError(
            f"{name} must be on w's device {w.device}, got {mask.device}"
        )
    return mask


def _like(name: str, g: Any, w: torch.Tensor) -> torch.Tensor:
    g = _weight(name, g)
    if g.shape != w.shape:
        raise ValueError(
            f"{name} must have the shape of w {tuple(w.shape)}, got {tuple(g.shape)}"
        )
    return g


def _density(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"{name} must be a real number in (0, 1], got {describe(value)}"
        )
    return check_float(name, value, min_value=0.0, max_value=1.0, min_inclusive=False)


def _decay(decay: Any) -> float:
    return check_float("decay", decay, min_value=0.0)


# --------------------------------------------------------------------------- STE
def ste_weight(w: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``w * mask`` in the forward pass, the identity in the backward pass.

    The value is exactly ``where(mask, w, 0)``; the gradient reaching the result is
    passed unchanged to every entry of the dense ``w``, pruned ones included (STE).
    Written ``w + (sparse - w).detach()``: the detached part carries no gradient, and
    ``w + (w - w)`` / ``w + (0 - w)`` are exact in floating point.
    """
    w = _weight("w", w)
    mask = _mask("mask", mask, w)
    sparse = torch.where(mask, w, torch.zeros((), dtype=w.dtype, device=w.device))
    return w + (sparse - w).detach()


def srste_grad(
    w: torch.Tensor, grad: torch.Tensor, mask: torch.Tensor, decay: float
) -> torch.Tensor:
    """SR-STE's gradient of the dense weights: ``grad + decay * (~mask) * w``."""
    w = _weight("w", w)
    grad = _like("grad", grad, w)
    mask = _mask("mask", mask, w)
    decay = _decay(decay)
    zero = torch.zeros((), dtype=w.dtype, device=w.device)
    return grad + decay * torch.where(mask, zero, w)


def srste_step(
    w: torch.Tensor, grad: torch.Tensor, mask: torch.Tensor, lr: float, decay: float
) -> torch.Tensor:
    """One SGD step of SR-STE: ``w - lr * srste_grad(w, grad, mask, decay)``."""
    w = _weight("w", w)
    lr = check_float("lr", lr, min_value=0.0, min_inclusive=False)
    return w - lr * srste_grad(w, grad, mask, decay)


# --------------------------------------------------------------------------- Top-KAST
def topkast_masks(
    w: torch.Tensor, forward_density: float, backward_density: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-KAST's sets ``(A, B)``, ``A ⊆ B``: the top ``forward_density`` and top
    ``backward_density`` fractions of ``w`` by magnitude (exact counts, ties by
    position as :func:`effx_lab.sparse.torch_ops.magnitude_mask` breaks them)."""
    w = _weight("w", w)
    d_fwd = _density("forward_density", forward_density)
    d_bwd = _density("backward_density", backward_density)
    if d_bwd < d_fwd:
        raise ValueError(
            "backward_density must be >= forward_density (B contains A), got "
            f"forward_density={forward_density} and backward_density={backward_density}"
        )
    a = _ST.magnitude_mask(w.detach(), 1.0 - d_fwd)
    b = _ST.magnitude_mask(w.detach(), 1.0 - d_bwd)
    return a, b


def topkast_penalty(w: torch.Tensor, A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """Top-KAST's exploration penalty ``sum_A w**2 + (1 / D) * sum_(B \\ A) w**2``
    (``D = A.sum() / A.numel()``), a 0-d tensor differentiable in ``w``."""
    w = _weight("w", w)
    A = _mask("A", A, w)
    B = _mask("B", B, w)
    if bool((A & ~B).any()):
        raise ValueError(
            "A must be a subset of B (B contains A), got A with entries not in B"
        )
    kept = int(A.sum())
    if kept == 0:
        raise ValueError("A must keep at least one entry (D > 0), got an all-False A")
    d = kept / A.numel()
    zero = torch.zeros((), dtype=w.dtype, device=w.device)
    sq = w * w
    return torch.where(A, sq, zero).sum() + torch.where(B & ~A, sq, zero).sum() / d
