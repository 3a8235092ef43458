"""Chapter 3 in PyTorch: magnitude masks, structured pruning, CSR and its product.

Same names and signatures as :mod:`effx_lab.prune.reference` (torch tensors in, torch
tensors out) and the same results: masks and kept indices are equal element for
element (the same stable sorts break ties the same way), products agree with the
reference in float64. What differs, and why:

* masks and importance scores are computed from ``w.detach()`` (a pruning decision is
  not a differentiable function) on the weights' device; masks are bool tensors;
* :func:`prune_heads` and :func:`prune_neurons` return detached copies
  (``index_select``), ready to become new ``nn.Parameter`` objects;
* :func:`csr_matmul` is written in torch primitives, no ``torch.sparse``: it gathers
  the columns of ``x`` that the stored entries multiply (``index_select`` on ``x.T``,
  tokens last), multiplies them by the values, and adds each product into its output
  row with ``index_add``
  (the row of each entry comes from ``repeat_interleave`` with a known output size, so
  nothing is read back from the device). It is differentiable in ``x``, ``values`` and
  ``bias``. The library's sparse product is
  :func:`effx_lab.prune.sparse_torch.torch_sparse_matmul`.

Everything runs on the device of the inputs (CPU or CUDA).
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import torch

from effx_lab._validate import check_array, describe
from effx_lab.sparse import torch_ops as ST

from ._csr import CSR
from .reference import _check_csr, _index_dtype
from .shapes import (
    HEAD_KEYS,
    NEURON_KEYS,
    check_csr_matmul_args,
    check_n_keep,
    check_scope,
    check_sparsity,
    ffn_dims,
    head_dims,
    keep_indices,
    n_pruned,
)

__all__ = [
    "CSR",
    "magnitude_masks",
    "head_importance",
    "neuron_importance",
    "keep_top",
    "prune_heads",
    "prune_neurons",
    "to_csr",
    "from_csr",
    "csr_matmul",
]

#: Largest number of elements of the gathered products that :func:`csr_matmul` builds
#: at once: 2**20 (8 MiB in float64); the stored entries are taken in chunks.
CHUNK_ELEMENTS = 1 << 20

_INDEX = {"int32": torch.int32, "int64": torch.int64}


def _numpy_hint(value: Any) -> str:
    return (
        "; use effx_lab.prune.reference for NumPy arrays"
        if type(value).__module__ == "numpy"
        else ""
    )


def _tensor(name: str, a: Any, ndim: int | None = None, finite: bool = True):
    if not isinstance(a, torch.Tensor):
        raise TypeError(
            f"{name} must be a torch tensor, got {describe(a)}{_numpy_hint(a)}"
        )
    check_array(name, a, ndim=ndim, dtype_kind="f", allow_torch=True, finite=finite)
    if a.ndim == 0:
        raise ValueError(f"{name} must have at least 1 dimension, got a 0-d tensor")
    if a.numel() == 0:
        raise ValueError(f"{name} must not be empty, got shape {tuple(a.shape)}")
    return a


def _weights(weights: Any) -> dict[str, torch.Tensor]:
    if not isinstance(weights, (Mapping, torch.nn.ParameterDict)):
        raise TypeError(
            f"weights must be a dict of name -> weight tensor, got {describe(weights)}"
            f"{_numpy_hint(weights)}"
        )
    if len(weights) == 0:
        raise ValueError("weights must hold at least one tensor, got an empty mapping")
    out = {}
    for name, w in weights.items():
        if not isinstance(name, str):
            raise TypeError(f"weights must have str keys, got {describe(name)}")
        out[name] = _tensor(f"weights[{name!r}]", w)
    devices = {w.device for w in out.values()}
    if len(devices) > 1:
        raise ValueError(
            f"weights must all be on one device, got {sorted(map(str, devices))}"
        )
    return out


# ------------------------------------------------------------------ unstructured masks
def magnitude_masks(
    weights: Mapping[str, torch.Tensor], sparsity: float, scope: str = "layer"
) -> dict[str, torch.Tensor]:
    """Magnitude masks for a dict of weights; see the reference's ``magnitude_masks``.

    ``"layer"``: :func:`effx_lab.sparse.torch_ops.magnitude_mask` on each tensor;
    ``"global"``: one stable ``torch.sort`` of the concatenated ``|w|`` in float64 on
    the weights' device (they must share one). Returns bool tensors.
    """
    ws = _weights(weights)
    s = check_sparsity(sparsity)
    scope = check_scope(scope)
    if scope == "layer":
        return {name: ST.magnitude_mask(w, s) for name, w in ws.items()}
    flat = torch.cat(
        [w.detach().to(torch.float64).abs().reshape(-1) for w in ws.values()]
    )
    order = torch.sort(flat, stable=True).indices
    keep = torch.ones(flat.numel(), dtype=torch.bool, device=flat.device)
    keep[order[: n_pruned(flat.numel(), s)]] = False
    out, start = {}, 0
    for name, w in ws.items():
        out[name] = keep[start : start + w.numel()].reshape(w.shape)
        start += w.numel()
    return out


# ------------------------------------------------------------------ structured pruning
def _norms(a: torch.Tensor, dim: Any) -> torch.Tensor:
    """Euclidean norms along ``dim``, in float64, from ``a.detach()``."""
    return a.detach().to(torch.float64).pow(2).sum(dim=dim).sqrt()


def head_importance(params: Mapping[str, torch.Tensor], n_heads: int) -> torch.Tensor:
    """Weight-norm importance of each head, ``||Wv_h||_F * ||Wo_h||_F``; see the
    reference. ``(n_heads,)`` float64 on the weights' device."""
    n_heads, dh = head_dims(params, n_heads, keys=("wv", "wo"))
    wv = _tensor("params['wv']", params["wv"], ndim=2)
    wo = _tensor("params['wo']", params["wo"], ndim=2)
    v = _norms(wv.reshape(wv.shape[0], n_heads, dh), dim=(0, 2))
    o = _norms(wo.reshape(n_heads, dh, wo.shape[1]), dim=(1, 2))
    return v * o


def neuron_importance(params: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """``||w1[:, j]|| * ||w2[j, :]||`` for each neuron ``j``; see the reference.
    ``(d_ff,)`` float64 on the weights' device."""
    ffn_dims(params, keys=("w1", "w2"))
    w1 = _tensor("params['w1']", params["w1"], ndim=2)
    w2 = _tensor("params['w2']", params["w2"], ndim=2)
    return _norms(w1, dim=0) * _norms(w2, dim=1)


def keep_top(scores: torch.Tensor, n_keep: int) -> torch.Tensor:
    """The indices of the ``n_keep`` highest ``scores``, sorted (int64, on ``scores``'
    device); ties keep the lower index. See the reference."""
    scores = _tensor("scores", scores, ndim=1)
    n_keep = check_n_keep(n_keep, scores.shape[0])
    order = torch.sort(-scores.detach().to(torch.float64), stable=True).indices
    return torch.sort(order[:n_keep]).values.to(torch.int64)


def _index(values: list[int], device: torch.device) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.int64, device=device)


def prune_heads(
    params: Mapping[str, torch.Tensor], keep: Any, n_heads: int
) -> dict[str, torch.Tensor]:
    """A multi-head attention layer with only the heads ``keep``; see the reference.

    The shrunk tensors are detached copies on the weights' device; other keys pass
    through unchanged (the same objects).
    """
    n_heads, dh = head_dims(params, n_heads)
    for k in HEAD_KEYS:
        _tensor(f"params[{k!r}]", params[k], finite=False)
    heads = keep_indices(keep, n_heads, "heads")
    device = params["wq"].device
    cols = (_index(heads, device)[:, None] * dh + torch.arange(dh, device=device))
    cols = cols.reshape(-1)
    out = dict(params.items())
    for k in ("wq", "wk", "wv", "bq", "bk", "bv"):
        out[k] = params[k].detach().index_select(-1, cols.to(params[k].device))
    out["wo"] = params["wo"].detach().index_select(0, cols.to(params["wo"].device))
    return out


def prune_neurons(
    params: Mapping[str, torch.Tensor], keep: Any
) -> dict[str, torch.Tensor]:
    """An FFN with only the neurons ``keep``; see the reference. Detached copies."""
    d_ff = ffn_dims(params)
    for k in NEURON_KEYS:
        _tensor(f"params[{k!r}]", params[k], finite=False)
    idx = keep_indices(keep, d_ff, "neurons")
    out = dict(params.items())
    for k, dim in (("w1", 1), ("b1", 0), ("w2", 0)):
        t = params[k].detach()
        out[k] = t.index_select(dim, _index(idx, t.device))
    return out


# --------------------------------------------------------------------------------- CSR
def to_csr(w: torch.Tensor, index_dtype: str = "int32") -> CSR:
    """``w (rows, cols)`` in CSR form, storing its nonzero entries; see the reference.

    ``values`` are a boolean-mask gather of ``w`` (differentiable when ``w`` requires
    grad); the structure is read back to the host once, where it is validated.
    """
    w = _tensor("w", w, ndim=2, finite=False)
    dtype = _INDEX[_index_dtype(index_dtype, tuple(w.shape))]
    stored = w != 0  # NaN != 0: stored
    zero = torch.zeros(1, dtype=torch.int64, device=w.device)
    row_ptr = torch.cat([zero, stored.sum(dim=1).cumsum(dim=0)])
    cols = stored.nonzero(as_tuple=True)[1]  # row-major
    return CSR(
        w[stored], cols.to(dtype), row_ptr.to(dtype), (int(w.shape[0]), int(w.shape[1]))
    )


def _rows_of(csr: CSR) -> torch.Tensor:
    """The row of every stored entry, ``(nnz,)`` int64, with no read-back."""
    ids = torch.arange(csr.shape[0], device=csr.values.device)
    counts = torch.diff(csr.row_ptr).to(torch.int64)
    return torch.repeat_interleave(ids, counts, output_size=csr.nnz)


def from_csr(csr: CSR) -> torch.Tensor:
    """The dense ``(rows, cols)`` matrix of ``csr``: one scatter, differentiable."""
    csr = _check_csr(csr, numpy_face=False)
    dense = csr.values.new_zeros(csr.shape)
    return dense.index_put((_rows_of(csr), csr.col_idx.to(torch.int64)), csr.values)


def csr_matmul(
    x: torch.Tensor, csr: CSR, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """``x @ W.T (+ bias)`` for ``W`` in CSR (``nn.Linear``); see the reference.

    In torch primitives: the rows ``col_idx`` of ``x.T`` (``index_select``: tokens
    last, so each gather copies a contiguous row) times the values, then
    ``index_add`` of each product into its output row. Shapes, dtypes and devices are
    checked, never values (no read-back). Differentiable in ``x``, ``csr.values`` and
    ``bias``.
    """
    csr = _check_csr(csr, numpy_face=False)
    check_csr_matmul_args(x, csr, bias, torch.Tensor, "torch_ops")
    lead, (n_out, n_in) = tuple(x.shape[:-1]), csr.shape
    t = math.prod(lead)
    # tokens last: gathering a column of x is then copying one contiguous row of xt
    xt = x.reshape(t, n_in).T.contiguous()  # (in, t)
    yt = x.new_zeros((n_out, t))
    if csr.nnz and t:
        rows_of = _rows_of(csr)
        cols = csr.col_idx.to(torch.int64)
        chunk = max(1, CHUNK_ELEMENTS // t)  # entries per chunk
        for k0 in range(0, csr.nnz, chunk):
            k1 = min(k0 + chunk, csr.nnz)
            # (k1 - k0, t): entry k times the column of x it multiplies
            prod = xt.index_select(0, cols[k0:k1]) * csr.values[k0:k1, None]
            yt = yt.index_add(0, rows_of[k0:k1], prod)  # into the row of each entry
    y = yt.T.reshape(*lead, n_out)
    return y if bias is None else y + bias
