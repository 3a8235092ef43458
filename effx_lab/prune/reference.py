"""The NumPy reference of chapter 3: magnitude masks, structured pruning, CSR.

:mod:`effx_lab.prune.torch_ops` has the same names and signatures for torch tensors;
the tests run both on the same random input in float64 (masks and kept indices equal
element for element, products within rounding). Argument checks live in
:mod:`effx_lab.prune.shapes`.

**Unstructured magnitude pruning.** :func:`magnitude_masks` prunes the weights of
smallest ``|w|`` of a dict of weights, either each tensor to the same sparsity
(``scope="layer"``, :func:`effx_lab.sparse.reference.magnitude_mask` per tensor) or
with one threshold over all of them (``scope="global"``): then a layer whose weights
are small loses more of them. Masks are bool arrays, ``True`` = kept.

**Structured pruning** removes whole attention heads or FFN neurons, so the layer
really shrinks (its matmuls get smaller; no sparse format is needed):
:func:`head_importance` and :func:`neuron_importance` score the units from the weights
alone, :func:`keep_top` picks the best, :func:`prune_heads` and :func:`prune_neurons`
slice the weights. Weights follow :mod:`effx_lab.models.lm`: stored ``(in, out)``, ``y
= x @ w + b``.

**CSR** (compressed sparse row): :func:`to_csr` keeps the nonzero entries of ``W (out,
in)`` in a :class:`~effx_lab.prune._csr.CSR`, :func:`from_csr` gives ``W`` back and
:func:`csr_matmul` computes ``x @ W.T (+ bias)`` (the ``nn.Linear`` convention)
visiting only the stored entries: one gather of ``x``'s columns, one multiply, one
segmented sum per row (``np.add.reduceat``), no Python loop over rows (long inputs are
cut into chunks of tokens, :data:`CHUNK_ELEMENTS`).
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

from effx_lab._validate import check_array, check_choice, describe
from effx_lab.sparse import reference as SR

from ._csr import CSR, INDEX_DTYPES
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
#: at once: 2**18 (2 MiB in float64, in cache); the stored entries are taken in chunks.
CHUNK_ELEMENTS = 1 << 18


def _torch_hint(value: Any) -> str:
    return (
        "; use effx_lab.prune.torch_ops for torch tensors"
        if type(value).__module__.startswith("torch")
        else ""
    )


def _array(name: str, a: Any, ndim: int | None = None, finite: bool = True):
    if not isinstance(a, np.ndarray):
        raise TypeError(
            f"{name} must be a NumPy array, got {describe(a)}{_torch_hint(a)}"
        )
    check_array(name, a, ndim=ndim, dtype_kind="f", finite=finite)
    if a.ndim == 0:
        raise ValueError(f"{name} must have at least 1 dimension, got a 0-d array")
    if a.size == 0:
        raise ValueError(f"{name} must not be empty, got shape {a.shape}")
    return a


def _weights(weights: Any) -> dict[str, np.ndarray]:
    if not isinstance(weights, Mapping):
        raise TypeError(
            f"weights must be a dict of name -> weight array, got {describe(weights)}"
            f"{_torch_hint(weights)}"
        )
    if len(weights) == 0:
        raise ValueError("weights must hold at least one array, got an empty mapping")
    out = {}
    for name, w in weights.items():
        if not isinstance(name, str):
            raise TypeError(f"weights must have str keys, got {describe(name)}")
        out[name] = _array(f"weights[{name!r}]", w)
    return out


# ------------------------------------------------------------------ unstructured masks
def magnitude_masks(
    weights: Mapping[str, np.ndarray], sparsity: float, scope: str = "layer"
) -> dict[str, np.ndarray]:
    """Magnitude masks for a dict of weights: prune the entries of smallest ``|w|``.

    ``weights``: name -> finite float array (any shape); ``sparsity`` in ``[0, 1)``;
    ``scope``:

    * ``"layer"``: every tensor loses ``round(sparsity * w.size)`` entries
      (:func:`effx_lab.sparse.reference.magnitude_mask` on each);
    * ``"global"``: one threshold over all tensors together: exactly ``round(sparsity *
      total)`` entries are pruned, ``total`` the number of entries of all tensors.

    Ties are broken by position, the same way in both faces: among equal ``|w|`` the
    entry that comes first is pruned first, in row-major order within a tensor and, for
    ``"global"``, in the mapping's key order across tensors (one stable sort of the
    concatenated magnitudes, taken in float64 so that tensors of different dtypes
    compare exactly). Returns ``{name: bool array of w's shape}``, ``False`` = pruned,
    in the mapping's order.
    """
    ws = _weights(weights)
    s = check_sparsity(sparsity)
    scope = check_scope(scope)
    if scope == "layer":
        return {name: SR.magnitude_mask(w, s) for name, w in ws.items()}
    flat = np.concatenate(
        [np.abs(w.astype(np.float64)).reshape(-1) for w in ws.values()]
    )
    order = np.argsort(flat, kind="stable")
    keep = np.ones(flat.size, dtype=bool)
    keep[order[: n_pruned(flat.size, s)]] = False
    out, start = {}, 0
    for name, w in ws.items():
        out[name] = keep[start : start + w.size].reshape(w.shape)
        start += w.size
    return out


# ------------------------------------------------------------------ structured pruning
def _norms(a: np.ndarray, axis: int) -> np.ndarray:
    """Euclidean norms along ``axis``, in float64."""
    return np.sqrt((a.astype(np.float64) ** 2).sum(axis=axis))


def head_importance(params: Mapping[str, np.ndarray], n_heads: int) -> np.ndarray:
    """Weight-norm importance of each attention head, ``(n_heads,)`` float64.

    Head ``h``'s score is ``||Wv_h||_F * ||Wo_h||_F``: ``Wv_h`` the head's ``d_head``
    columns of ``wv (d, d_attn)``, ``Wo_h`` its ``d_head`` rows of ``wo (d_attn,
    d_out)``. The head adds ``A_h (x Wv_h + bv_h) Wo_h`` to the output, with the rows of
    the attention matrix ``A_h`` summing to 1, so the product of these norms bounds how
    much the head can move the output per unit of input (Frobenius norms standing in
    for spectral ones); queries and keys only choose where the head looks, not how loud
    it is. The score reads the weights alone (no data); :func:`keep_top` picks heads
    from it. Michel et al.'s data-driven score is
    :func:`effx_lab.prune.models.taylor_importance`.
    """
    n_heads, dh = head_dims(params, n_heads, keys=("wv", "wo"))
    wv = _array("params['wv']", params["wv"], ndim=2)
    wo = _array("params['wo']", params["wo"], ndim=2)
    d = wv.shape[0]
    v = _norms(wv.reshape(d, n_heads, dh), axis=(0, 2))
    o = _norms(wo.reshape(n_heads, dh, wo.shape[1]), axis=(1, 2))
    return v * o


def neuron_importance(params: Mapping[str, np.ndarray]) -> np.ndarray:
    """Weight-norm importance of each FFN neuron, ``(d_ff,)`` float64.

    Neuron ``j``'s score is ``||w1[:, j]|| * ||w2[j, :]||`` (``w1 (d, d_ff)``, ``w2
    (d_ff, d_out)``): how strongly it reads its input times how strongly it writes its
    output.
    """
    ffn_dims(params, keys=("w1", "w2"))
    w1 = _array("params['w1']", params["w1"], ndim=2)
    w2 = _array("params['w2']", params["w2"], ndim=2)
    return _norms(w1, axis=0) * _norms(w2, axis=1)


def keep_top(scores: np.ndarray, n_keep: int) -> np.ndarray:
    """The indices of the ``n_keep`` highest ``scores``, sorted ascending (int64).

    ``scores``: a finite 1-D float array; ``n_keep`` in ``[1, len(scores)]``. Ties:
    among equal scores the lower index is kept (one stable sort of ``-scores``).
    """
    scores = _array("scores", scores, ndim=1)
    n_keep = check_n_keep(n_keep, scores.shape[0])
    order = np.argsort(-scores.astype(np.float64), kind="stable")
    return np.sort(order[:n_keep]).astype(np.int64)


def prune_heads(
    params: Mapping[str, np.ndarray], keep: Any, n_heads: int
) -> dict[str, np.ndarray]:
    """A multi-head attention layer with only the heads ``keep``.

    ``params``: ``wq, bq, wk, bk, wv, bv (d, d_attn) / (d_attn,)`` and ``wo (d_attn,
    d_out)`` (every other key, ``bo`` included, passes through unchanged); ``n_heads``
    divides ``d_attn``; ``keep``: the kept heads' indices, strictly increasing (as
    :func:`keep_top` returns them; an unsorted or repeated list is an error). Returns a
    new dict whose ``wq, wk, wv`` keep the kept heads' columns, ``bq, bk, bv`` their
    entries and ``wo`` their rows (copies), so the layer has ``len(keep)`` heads of the
    same ``d_head``. It computes exactly what the full layer computes with the removed
    heads' outputs set to zero. Values are copied as they are (NaN included).
    """
    n_heads, dh = head_dims(params, n_heads)
    for k in HEAD_KEYS:
        _array(f"params[{k!r}]", params[k], finite=False)
    heads = keep_indices(keep, n_heads, "heads")
    cols = (np.asarray(heads)[:, None] * dh + np.arange(dh)).reshape(-1)
    out = dict(params)
    for k in ("wq", "wk", "wv", "bq", "bk", "bv"):
        out[k] = np.take(params[k], cols, axis=-1)
    out["wo"] = np.take(params["wo"], cols, axis=0)
    return out


def prune_neurons(params: Mapping[str, np.ndarray], keep: Any) -> dict[str, np.ndarray]:
    """An FFN with only the neurons ``keep``: columns of ``w1``, entries of ``b1``, rows
    of ``w2``.

    ``params``: ``w1 (d, d_ff)``, ``b1 (d_ff,)``, ``w2 (d_ff, d_out)`` (every other key,
    ``b2`` included, passes through); ``keep``: strictly increasing indices in ``[0,
    d_ff)``. Returns a new dict (copies). The FFN ``act(x w1 + b1) w2 + b2`` computes
    exactly what the full one computes with the removed neurons' activations set to
    zero, for any activation.
    """
    d_ff = ffn_dims(params)
    for k in NEURON_KEYS:
        _array(f"params[{k!r}]", params[k], finite=False)
    idx = np.asarray(keep_indices(keep, d_ff, "neurons"), dtype=np.int64)
    out = dict(params)
    out["w1"] = np.take(params["w1"], idx, axis=1)
    out["b1"] = np.take(params["b1"], idx, axis=0)
    out["w2"] = np.take(params["w2"], idx, axis=0)
    return out


# --------------------------------------------------------------------------------- CSR
def to_csr(w: np.ndarray, index_dtype: str = "int32") -> CSR:
    """``w (rows, cols)`` in CSR form, storing its nonzero entries.

    An entry is stored when it is not exactly zero (``-0.0`` is zero; a NaN is stored).
    ``index_dtype``: ``"int32"`` (4 bytes per index, scipy's choice while the counts
    fit) or ``"int64"``. Returns a :class:`~effx_lab.prune._csr.CSR` with ``values``
    (copies, ``w``'s dtype) in row-major order: the layout of
    ``scipy.sparse.csr_matrix(w)``.
    """
    w = _array("w", w, ndim=2, finite=False)
    index_dtype = _index_dtype(index_dtype, w.shape)
    stored = w != 0  # NaN != 0: stored
    rows, cols = np.nonzero(stored)  # row-major
    row_ptr = np.concatenate([[0], np.cumsum(stored.sum(axis=1))])
    return CSR(
        w[rows, cols].copy(),
        cols.astype(index_dtype),
        row_ptr.astype(index_dtype),
        (int(w.shape[0]), int(w.shape[1])),
    )


def _index_dtype(index_dtype: Any, shape: tuple[int, ...]) -> str:
    index_dtype = check_choice("index_dtype", index_dtype, INDEX_DTYPES)
    if index_dtype == "int32" and math.prod(shape) > np.iinfo(np.int32).max:
        raise ValueError(
            f"index_dtype 'int32' cannot count the {math.prod(shape)} entries of w "
            f"{tuple(shape)}; use 'int64'"
        )
    return index_dtype


def _check_csr(csr: Any, numpy_face: bool) -> CSR:
    if not isinstance(csr, CSR):
        raise TypeError(f"csr must be a CSR (made by to_csr), got {describe(csr)}")
    if isinstance(csr.values, np.ndarray) != numpy_face:
        want, other = ("NumPy", "torch_ops") if numpy_face else ("torch", "reference")
        raise TypeError(
            f"csr must hold {want} arrays, got one holding "
            f"{type(csr.values).__name__}; use effx_lab.prune.{other} for it"
        )
    return csr


def from_csr(csr: CSR) -> np.ndarray:
    """The dense ``(rows, cols)`` matrix of ``csr`` (zeros where nothing is stored)."""
    csr = _check_csr(csr, numpy_face=True)
    rows = np.repeat(np.arange(csr.shape[0]), np.diff(csr.row_ptr))
    dense = np.zeros(csr.shape, dtype=csr.values.dtype)
    dense[rows, csr.col_idx] = csr.values
    return dense


def csr_matmul(x: np.ndarray, csr: CSR, bias: np.ndarray | None = None) -> np.ndarray:
    """``x @ W.T (+ bias)`` for ``W`` in CSR: the ``nn.Linear`` convention.

    ``W`` is ``(out_features, in_features)``, ``x`` is ``(..., in_features)`` and the
    result ``(..., out_features)``; ``x`` and ``bias (out_features,)`` have the dtype of
    ``csr.values``. Only the stored entries are visited, ``nnz`` multiply-adds per row
    of ``x`` (the dense cost times :attr:`CSR.density`). With ``xt = x.T`` (tokens last,
    so that gathering a column of ``x`` copies one contiguous row): the products
    ``xt[col_idx] * values[:, None]`` for the stored entries, then ``np.add.reduceat``
    sums each row's segment (rows that store nothing have no segment, and give 0). The
    entries are taken in chunks of :data:`CHUNK_ELEMENTS` ``// t`` (a row cut by a
    chunk boundary gets two partial sums).

    Shapes and dtypes are checked, values never. A NaN in ``x[i, c]`` reaches the
    outputs of row ``i`` whose row of ``W`` stores an entry in column ``c``, where the
    dense ``x @ W.T`` would reach every output (``0 * NaN = NaN``); the same holds in
    both faces.
    """
    csr = _check_csr(csr, numpy_face=True)
    check_csr_matmul_args(x, csr, bias, np.ndarray, "reference")
    lead, (n_out, n_in) = x.shape[:-1], csr.shape
    # tokens last: gathering a column of x is then copying one contiguous row of xt
    xt = np.ascontiguousarray(x.reshape(-1, n_in).T)  # (in, t)
    t = xt.shape[1]
    yt = np.zeros((n_out, t), dtype=x.dtype)
    ptr = csr.row_ptr.astype(np.int64)
    chunk = max(1, CHUNK_ELEMENTS // max(t, 1))  # entries per chunk
    for k0 in range(0, csr.nnz if t else 0, chunk):
        k1 = min(k0 + chunk, csr.nnz)
        # (k1 - k0, t): entry k times the column of x it multiplies
        prod = np.take(xt, csr.col_idx[k0:k1], axis=0) * csr.values[k0:k1, None]
        # rows r_lo..r_hi - 1 own entries k0..k1 - 1; each non-empty one is a segment
        r_lo = int(np.searchsorted(ptr, k0, side="right")) - 1
        r_hi = int(np.searchsorted(ptr, k1, side="left"))
        start = np.maximum(ptr[r_lo:r_hi], k0)
        nonempty = np.minimum(ptr[r_lo + 1 : r_hi + 1], k1) > start
        rows = np.arange(r_lo, r_hi)[nonempty]
        yt[rows] += np.add.reduceat(prod, start[nonempty] - k0, axis=0)
    y = yt.T.reshape(*lead, n_out)
    return y if bias is None else y + bias
