"""Training sparse weights from scratch, the NumPy face (section 04.3): the update rules
of STE, SR-STE and Top-KAST on one weight matrix, written to be read.

:mod:`effx_lab.nm._torch_train` is the PyTorch twin (same names and signatures; its
:func:`ste_weight` also differentiates straight through). The hooks that train whole
models with these rules are :mod:`effx_lab.nm.sparse_training`.

**STE** (the straight-through estimator, Bengio et al. 2013, used for pruning by Zhou
et al. 2021). Keep the *dense* weights ``W``; every step compute the mask ``M`` from
them (N:M: the ``n`` largest ``|W|`` of each group of ``m`` along the input dimension),
run the forward pass on ``W ⊙ M`` (:func:`ste_weight`), and apply the gradient ``g``
taken at the sparse weights to the dense ones, as if the mask were the identity:
``W <- W - γ g``. A pruned weight still moves, so it can grow back into the mask.

**SR-STE** (sparse-refined STE, Zhou et al. 2021, eq. 5) adds a decay on the pruned
weights only: ``W <- W - γ (g + λ_W (¬M ⊙ W))`` (:func:`srste_grad`,
:func:`srste_step`; the paper's ``λ_W`` is ``2e-4``). It pulls the pruned weights
towards zero, so they cross back into the mask less often: the mask flips less.

**Top-KAST** (Jayakumar et al. 2020), unstructured: the forward pass uses the set ``A``
of the top ``D`` fraction of the weights by magnitude (a ``D``-dense network), the
backward pass updates a larger set ``B ⊇ A``, the top ``D' > D``
(:func:`topkast_masks`); weights outside ``B`` receive no gradient. Its exploration
regulariser (:func:`topkast_penalty`) is an L2 penalty on the weights of ``B``, with
the weights of ``B \\ A`` penalised ``1/D`` times more than those of ``A``: a weight
that only the backward pass sees must earn its place in ``A`` against a stronger pull
towards zero, which keeps the mask from churning.
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np

from effx_lab._validate import check_array, check_float, describe
from effx_lab.sparse import reference as _SR

__all__ = [
    "ste_weight",
    "srste_grad",
    "srste_step",
    "topkast_masks",
    "topkast_penalty",
]


# ---------------------------------------------------------------------------- checks
def _weight(name: str, w: Any) -> np.ndarray:
    if not isinstance(w, np.ndarray):
        raise TypeError(
            f"{name} must be a float NumPy array (the NumPy face; use "
            f"effx_lab.nm.torch_ops for tensors), got {describe(w)}"
        )
    check_array(name, w, dtype_kind="f", finite=True)
    if w.ndim == 0 or w.size == 0:
        raise ValueError(
            f"{name} must be a non-empty array with at least 1 dimension, got shape "
            f"{tuple(w.shape)}"
        )
    return w


def _mask(name: str, mask: Any, w: np.ndarray) -> np.ndarray:
    if not isinstance(mask, np.ndarray):
        raise TypeError(
            f"{name} must be a bool NumPy array (True = kept), got {describe(mask)}"
        )
    if mask.dtype != np.bool_:
        raise TypeError(
            f"{name} must have dtype bool (True = kept), got {mask.dtype}; build it "
            "with nm_mask or compare, e.g. w != 0"
        )
    if mask.shape != w.shape:
        raise ValueError(
            f"{name} must have the shape of w {tuple(w.shape)}, got {tuple(mask.shape)}"
        )
    return mask


def _like(name: str, g: Any, w: np.ndarray) -> np.ndarray:
    g = _weight(name, g)
    if g.shape != w.shape:
        raise ValueError(
            f"{name} must have the shape of w {tuple(w.shape)}, got {tuple(g.shape)}"
        )
    return g


def _density(name: str, value: Any) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"{name} must be a real number in (0, 1], got {describe(value)}"
        )
    return check_float(name, value, min_value=0.0, max_value=1.0, min_inclusive=False)


def _decay(decay: Any) -> float:
    return check_float("decay", decay, min_value=0.0)


# --------------------------------------------------------------------------- STE
def ste_weight(w: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The weight the forward pass of STE uses: ``w * mask`` (pruned entries exactly 0).

    ``w``: float array of any shape (finite); ``mask``: bool array of ``w``'s shape
    (``True`` = kept). In the torch face the gradient of the result flows unchanged to
    every entry of the dense ``w`` (the straight-through estimator); NumPy has no
    gradient, so here it is the forward value only.
    """
    w = _weight("w", w)
    mask = _mask("mask", mask, w)
    return np.where(mask, w, np.zeros((), dtype=w.dtype))


def srste_grad(
    w: np.ndarray, grad: np.ndarray, mask: np.ndarray, decay: float
) -> np.ndarray:
    """SR-STE's gradient of the dense weights: ``grad + decay * (~mask) * w``.

    ``grad``: the STE gradient (taken at the sparse weights ``w * mask``), of ``w``'s
    shape; ``decay``: ``λ_W >= 0`` (Zhou et al. 2021 use ``2e-4``; 0 gives plain STE).
    Kept entries get ``grad`` unchanged; pruned ones also a pull ``decay * w`` towards
    zero.
    """
    w = _weight("w", w)
    grad = _like("grad", grad, w)
    mask = _mask("mask", mask, w)
    decay = _decay(decay)
    return grad + decay * np.where(mask, np.zeros((), dtype=w.dtype), w)


def srste_step(
    w: np.ndarray, grad: np.ndarray, mask: np.ndarray, lr: float, decay: float
) -> np.ndarray:
    """One SGD step of SR-STE (Zhou et al. 2021, eq. 5): ``w - lr * srste_grad(...)``.

    Returns the new dense weights; ``lr > 0``. With ``decay=0`` it is the STE step
    ``w - lr * grad``.
    """
    w = _weight("w", w)
    lr = check_float("lr", lr, min_value=0.0, min_inclusive=False)
    return w - lr * srste_grad(w, grad, mask, decay)


# --------------------------------------------------------------------------- Top-KAST
def topkast_masks(
    w: np.ndarray, forward_density: float, backward_density: float
) -> tuple[np.ndarray, np.ndarray]:
    """Top-KAST's sets: ``(A, B)``, bool arrays of ``w``'s shape with ``A ⊆ B``.

    ``A`` keeps the ``size - round((1 - forward_density) * size)`` largest ``|w|`` (the
    forward pass's weights), ``B`` the ``size - round((1 - backward_density) * size)``
    largest (the weights that receive gradients), ``0 < forward_density <=
    backward_density <= 1``. Counts are exact: the complement of
    :func:`effx_lab.sparse.reference.magnitude_mask`'s pruned count (``round`` half to
    even), which is ``round(density * size)`` unless that product ends in .5 (size 5 at
    density 0.5 keeps 3, not 2). Ties go by position (among equal ``|w|`` the
    later entry in row-major order is kept first), and ``A ⊆ B`` always holds: both
    come from one stable sort of ``|w|``.
    """
    w = _weight("w", w)
    d_fwd = _density("forward_density", forward_density)
    d_bwd = _density("backward_density", backward_density)
    if d_bwd < d_fwd:
        raise ValueError(
            "backward_density must be >= forward_density (B contains A), got "
            f"forward_density={forward_density} and backward_density={backward_density}"
        )
    a = _SR.magnitude_mask(w, 1.0 - d_fwd)
    b = _SR.magnitude_mask(w, 1.0 - d_bwd)
    return a, b


def topkast_penalty(w: np.ndarray, A: np.ndarray, B: np.ndarray) -> float:
    """Top-KAST's exploration penalty: ``sum_A w**2 + (1 / D) * sum_(B \\ A) w**2``.

    ``D = A.sum() / A.size`` is the forward density. The weights the forward pass uses
    (``A``) get an ordinary L2 penalty, the ones only the backward pass updates
    (``B \\ A``) one ``1/D`` times stronger, and weights outside ``B`` none (they get no
    gradient at all). This is the course's reading of Jayakumar et al. 2020, section
    2.3 ("exploration regularisation"); multiply it by a coefficient in the loss.
    ``A`` must be a subset of ``B`` and hold at least one entry.
    """
    w = _weight("w", w)
    A = _mask("A", A, w)
    B = _mask("B", B, w)
    if np.any(A & ~B):
        raise ValueError(
            "A must be a subset of B (B contains A), got A with entries not in B"
        )
    kept = int(A.sum())
    if kept == 0:
        raise ValueError("A must keep at least one entry (D > 0), got an all-False A")
    d = kept / A.size
    sq = w.astype(np.float64) ** 2
    return float(sq[A].sum() + sq[B & ~A].sum() / d)
