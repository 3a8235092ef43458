"""The library's sparse formats: ``torch.sparse`` CSR and COO, and their product.

Torch only (NumPy has no sparse tensors; scipy is not a dependency of the course), so
this module is not one of the faces. 03.1 and ``python -m effx_lab.bench prune``
measure it beside the course's own CSR product
(:func:`effx_lab.prune.torch_ops.csr_matmul`) and the dense matmul:

* :func:`to_torch_sparse`: a dense weight ``W (out, in)`` or a torch-face
  :class:`~effx_lab.prune._csr.CSR` as a ``torch.sparse_csr`` or ``torch.sparse_coo``
  tensor (indices int64, as torch's kernels want);
* :func:`torch_sparse_matmul`: ``x @ W.T (+ bias)``, the ``nn.Linear`` convention, by
  ``torch.sparse.mm(W, x.T).T`` (the library's sparse x dense kernel: MKL or a native
  loop on a CPU, cuSPARSE on a GPU).
"""

from __future__ import annotations

import math
import warnings
from contextlib import contextmanager
from typing import Any, Iterator

import torch

from effx_lab._validate import check_array, check_choice, describe

from ._csr import CSR

__all__ = ["LAYOUTS", "to_torch_sparse", "torch_sparse_matmul"]

#: The sparse layouts :func:`to_torch_sparse` makes.
LAYOUTS = ("csr", "coo")


@contextmanager
def _quiet() -> Iterator[None]:
    """Silence torch's "Sparse CSR tensor support is in beta state" notice (printed
    once per process, in the middle of a notebook's output); other warnings pass."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="Sparse CSR tensor support is in beta"
        )
        yield


def to_torch_sparse(w_or_csr: Any, layout: str = "csr") -> torch.Tensor:
    """``W`` as a ``torch.sparse`` tensor of ``layout`` ``"csr"`` or ``"coo"``.

    ``w_or_csr``: a dense 2-D float tensor ``W (out, in)`` (its nonzero entries are
    stored; NaN counts as nonzero) or a :class:`~effx_lab.prune._csr.CSR` holding torch
    tensors (made by :func:`effx_lab.prune.torch_ops.to_csr`; its entries are stored as
    they are). Indices become int64; the result is on ``W``'s device, COO coalesced.
    """
    layout = check_choice("layout", layout, LAYOUTS)
    if isinstance(w_or_csr, CSR):
        if not isinstance(w_or_csr.values, torch.Tensor):
            raise TypeError(
                "w_or_csr must be a CSR holding torch tensors (from "
                "effx_lab.prune.torch_ops.to_csr), got one holding "
                f"{type(w_or_csr.values).__name__}"
            )
        csr = w_or_csr
        with _quiet():  # the CSR was validated where it was made
            sp = torch.sparse_csr_tensor(
                csr.row_ptr.to(torch.int64),
                csr.col_idx.to(torch.int64),
                csr.values,
                size=csr.shape,
                check_invariants=False,
            )
        return sp if layout == "csr" else sp.to_sparse_coo().coalesce()
    if not isinstance(w_or_csr, torch.Tensor):
        raise TypeError(
            "w_or_csr must be a dense 2-D torch tensor or a CSR, got "
            f"{describe(w_or_csr)}"
        )
    if w_or_csr.layout != torch.strided:
        raise TypeError(
            f"w_or_csr must be a dense (strided) tensor, got layout {w_or_csr.layout}"
        )
    w = check_array("w_or_csr", w_or_csr, ndim=2, dtype_kind="f", allow_torch=True)
    if w.numel() == 0:
        raise ValueError(f"w_or_csr must not be empty, got shape {tuple(w.shape)}")
    w = w.detach()
    with _quiet():
        return w.to_sparse_csr() if layout == "csr" else w.to_sparse_coo().coalesce()


def torch_sparse_matmul(
    x: torch.Tensor, sparse_w: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """``x @ W.T (+ bias)`` with ``W (out, in)`` a ``torch.sparse`` CSR or COO tensor.

    ``x (..., in)`` and ``bias (out,)`` share ``sparse_w``'s dtype and device. The
    library's kernel computes ``torch.sparse.mm(W, x2.T)`` with ``x2 = x.reshape(-1,
    in)``; the result is transposed back to ``(..., out)``.
    """
    if not isinstance(sparse_w, torch.Tensor) or sparse_w.layout not in (
        torch.sparse_csr,
        torch.sparse_coo,
    ):
        raise TypeError(
            "sparse_w must be a torch.sparse CSR or COO tensor (to_torch_sparse), got "
            f"{describe(sparse_w)}"
            + (
                f" with layout {sparse_w.layout}"
                if isinstance(sparse_w, torch.Tensor)
                else ""
            )
        )
    if sparse_w.ndim != 2:
        raise ValueError(
            f"sparse_w must have 2 dimensions (out, in), got shape "
            f"{tuple(sparse_w.shape)}"
        )
    n_out, n_in = (int(d) for d in sparse_w.shape)
    for name, a in (("x", x), ("bias", bias)):
        if a is None and name == "bias":
            continue
        if not isinstance(a, torch.Tensor):
            raise TypeError(f"{name} must be a torch tensor, got {describe(a)}")
        if a.dtype != sparse_w.dtype:
            raise TypeError(
                f"{name} must have the dtype of sparse_w ({sparse_w.dtype}), got "
                f"{a.dtype}"
            )
        if a.device != sparse_w.device:
            raise ValueError(
                f"{name} must be on the device of sparse_w ({sparse_w.device}), got "
                f"{a.device}"
            )
    if x.ndim < 1 or x.shape[-1] != n_in:
        raise ValueError(
            f"x must have shape (..., in_features={n_in}) to multiply W "
            f"{(n_out, n_in)} as x @ W.T, got shape {tuple(x.shape)}"
        )
    if bias is not None and tuple(bias.shape) != (n_out,):
        raise ValueError(
            f"bias must have shape (out_features,) = ({n_out},), got "
            f"{tuple(bias.shape)}"
        )
    lead = tuple(x.shape[:-1])
    x2 = x.reshape(math.prod(lead), n_in)
    with _quiet():
        y = torch.sparse.mm(sparse_w, x2.T.contiguous()).T.reshape(*lead, n_out)
    return y if bias is None else y + bias
