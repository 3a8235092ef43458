"""Argument checks and shape rules of chapter 3's faces, shared by both.

:mod:`.reference` (NumPy) and :mod:`.torch_ops` (PyTorch) import their checks from
here, so the two faces reject a bad argument with the same message and neither reaches
into the other's private helpers. Everything here works on anything with
``.shape``/``.ndim``/``.dtype`` (NumPy arrays and torch tensors) and on plain Python
values; nothing imports torch.

* pruning amounts: :func:`check_sparsity` (``[0, 1)``), :func:`n_pruned` (how many
  entries a sparsity prunes), :data:`SCOPES` and :func:`check_scope`,
  :func:`check_n_keep`;
* indices kept by structured pruning: :func:`keep_indices` (sorted, unique, in range;
  an unsorted list is an error, not silently sorted);
* the layer layouts of :mod:`effx_lab.models.lm` (weights stored ``(in, out)``,
  ``y = x @ w + b``): :data:`HEAD_KEYS`, :data:`NEURON_KEYS`, :func:`head_dims`
  (``wq, wk, wv (d, d_attn)``, their biases ``(d_attn,)``, ``wo (d_attn, d_out)``,
  ``n_heads`` dividing ``d_attn``) and :func:`ffn_dims` (``w1 (d, d_ff)``, ``b1
  (d_ff,)``, ``w2 (d_ff, d_out)``);
* CSR products: :func:`check_csr_matmul_args` (shapes, dtypes, devices; never values).
"""

from __future__ import annotations

import numbers
from typing import Any, Mapping

import numpy as np

from effx_lab._validate import check_int, describe
from effx_lab.sparse import check_matmul_operands

__all__ = [
    "HEAD_KEYS",
    "NEURON_KEYS",
    "SCOPES",
    "check_csr_matmul_args",
    "check_n_keep",
    "check_param_mapping",
    "check_scope",
    "check_sparsity",
    "ffn_dims",
    "head_dims",
    "keep_indices",
    "n_pruned",
]

#: Where :func:`magnitude_masks` draws its threshold: one per tensor, or one for all.
SCOPES = ("layer", "global")
#: The keys :func:`prune_heads` shrinks: columns of ``wq, wk, wv`` and their biases,
#: rows of ``wo`` (``bo`` and every other key pass through).
HEAD_KEYS = ("wq", "bq", "wk", "bk", "wv", "bv", "wo")
#: The keys :func:`prune_neurons` shrinks: columns of ``w1``, ``b1``, rows of ``w2``.
NEURON_KEYS = ("w1", "b1", "w2")


# -------------------------------------------------------------------- pruning amounts
def check_sparsity(sparsity: Any) -> float:
    """``sparsity``: a real number in ``[0, 1)`` (the fraction pruned), as a float."""
    if isinstance(sparsity, (bool, np.bool_)) or not isinstance(sparsity, numbers.Real):
        raise TypeError(
            f"sparsity must be a real number in [0, 1), got {describe(sparsity)}"
        )
    s = float(sparsity)
    if not (0.0 <= s < 1.0):  # NaN fails too
        raise ValueError(
            "sparsity must be in [0, 1) (the fraction of entries pruned), got "
            f"{sparsity}"
        )
    return s


def n_pruned(size: int, sparsity: float) -> int:
    """How many of ``size`` entries a sparsity prunes: ``round(sparsity * size)``.

    Python's ``round`` (half to even), as
    :func:`effx_lab.sparse.reference.magnitude_mask` counts: 0.5 of 5 entries prunes
    2, 0.5 of 7 prunes 4.
    """
    return int(round(sparsity * size))


def check_scope(scope: Any) -> str:
    """``scope``: ``"layer"`` (a threshold per tensor) or ``"global"`` (one for all)."""
    if not isinstance(scope, str) or scope not in SCOPES:
        raise ValueError(
            f"scope must be one of {', '.join(map(repr, SCOPES))}, got {scope!r}"
        )
    return scope


def check_n_keep(n_keep: Any, n: int) -> int:
    """``n_keep``: an int in ``[1, n]`` (how many of ``n`` units stay)."""
    return check_int("n_keep", n_keep, min_value=1, max_value=n)


# ------------------------------------------------------------------------ kept indices
def keep_indices(keep: Any, n: int, unit: str) -> list[int]:
    """``keep`` as a list of ints: sorted, unique, each in ``[0, n)``, at least one.

    ``keep``: a list or tuple of ints, or a 1-D integer NumPy array or torch tensor
    (read back to the host: it is small). ``unit`` names what is counted ("heads",
    "neurons") in the messages. An unsorted ``keep`` is an error rather than silently
    sorted: the order of the kept units is the order of the shrunk layer's columns, and
    :func:`keep_top` already returns them sorted.
    """
    if isinstance(keep, (list, tuple)):
        values = list(keep)
        for v in values:
            if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Integral):
                raise TypeError(
                    f"keep must hold int indices of {unit}, got an element "
                    f"{describe(v)}"
                )
        values = [int(v) for v in values]
    elif hasattr(keep, "ndim") and hasattr(keep, "dtype") and hasattr(keep, "tolist"):
        kind = _dtype_kind(keep)
        if kind not in "iu":
            raise TypeError(
                f"keep must hold int indices of {unit}, got dtype {keep.dtype}"
            )
        if keep.ndim != 1:
            raise ValueError(
                f"keep must be 1-D (indices of {unit}), got shape {tuple(keep.shape)}"
            )
        values = [int(v) for v in keep.tolist()]
    else:
        raise TypeError(
            f"keep must be a list of int indices of {unit} (or a 1-D int array), got "
            f"{describe(keep)}"
        )
    if not values:
        raise ValueError(
            f"keep must hold at least one index: a layer without {unit} has no output"
        )
    bad = [v for v in values if not 0 <= v < n]
    if bad:
        raise ValueError(
            f"keep must hold indices of {unit} in [0, {n}), got {bad[:5]} out of range"
        )
    if any(b <= a for a, b in zip(values, values[1:])):
        what = "a repeated index" if len(set(values)) < len(values) else "unsorted"
        raise ValueError(
            f"keep must be strictly increasing (sorted, no repeats: the order of the "
            f"shrunk layer's {unit}), got {what}: {values[:12]}; pass sorted(set(keep))"
        )
    return values


def _dtype_kind(a: Any) -> str:
    """NumPy's kind letter ('f', 'i', 'u', 'b', 'c') of an array's or tensor's dtype."""
    if isinstance(a, np.ndarray):
        return a.dtype.kind
    dtype = a.dtype
    if str(dtype) == "torch.bool":
        return "b"
    if getattr(dtype, "is_complex", False):
        return "c"
    if getattr(dtype, "is_floating_point", False):
        return "f"
    return "u" if str(dtype) == "torch.uint8" else "i"


# ------------------------------------------------------------------------ layer layouts
def check_param_mapping(params: Any, keys: tuple[str, ...], layout: str) -> None:
    """``params``: a mapping (dict, ``nn.ParameterDict``) holding every key of
    ``keys``; the message names the missing ones and ``layout``."""
    if not (
        isinstance(params, Mapping)
        or (hasattr(params, "keys") and hasattr(params, "__getitem__"))
    ):
        raise TypeError(
            f"params must be a dict of a layer's weights ({layout}), got "
            f"{describe(params)}"
        )
    missing = [k for k in keys if k not in params.keys()]
    if missing:
        raise ValueError(
            f"params is missing {', '.join(map(repr, missing))}; expected the keys "
            f"{', '.join(keys)} ({layout})"
        )


def _shape(params: Any, key: str, ndim: int) -> tuple[int, ...]:
    a = params[key]
    if not (hasattr(a, "shape") and hasattr(a, "ndim") and hasattr(a, "dtype")):
        raise TypeError(f"params[{key!r}] must be an array, got {describe(a)}")
    if _dtype_kind(a) != "f":
        raise TypeError(f"params[{key!r}] must have a float dtype, got {a.dtype}")
    if a.ndim != ndim:
        raise ValueError(
            f"params[{key!r}] must have {ndim} dimension{'s' * (ndim > 1)}, got shape "
            f"{tuple(a.shape)}"
        )
    return tuple(int(d) for d in a.shape)


def head_dims(
    params: Any, n_heads: Any, keys: tuple[str, ...] = HEAD_KEYS
) -> tuple[int, int]:
    """Check a multi-head attention layer's ``keys`` against one another; return
    ``(n_heads, d_head)``.

    Layout of :mod:`effx_lab.models.lm` (``y = x @ w + b``): ``wq, wk, wv`` are ``(d,
    d_attn)``, ``bq, bk, bv`` are ``(d_attn,)``, ``wo`` is ``(d_attn, d_out)``; head
    ``h`` owns columns (of ``wq, wk, wv``) and rows (of ``wo``) ``h * d_head`` to ``(h +
    1) * d_head``, with ``d_head = d_attn // n_heads``. Only the keys in ``keys`` are
    required and checked.
    """
    check_param_mapping(params, keys, "wq, wk, wv (d, d_attn); their biases; wo")
    ndims = {"wq": 2, "wk": 2, "wv": 2, "wo": 2, "bq": 1, "bk": 1, "bv": 1}
    shapes = {k: _shape(params, k, ndims[k]) for k in keys}
    d_attn = shapes["wo"][0] if "wo" in shapes else shapes["wv"][1]
    for k, shape in shapes.items():
        got = shape[0] if k == "wo" else shape[-1]
        if got != d_attn:
            where = "rows" if k == "wo" else ("entries" if k[0] == "b" else "columns")
            ref = "wo" if "wo" in shapes else "wv"
            raise ValueError(
                f"params[{k!r}] must have d_attn = {d_attn} {where} (as {ref}), got "
                f"shape {shape}"
            )
    d_in = {shapes[k][0] for k in ("wq", "wk", "wv") if k in shapes}
    if len(d_in) > 1:
        raise ValueError(
            "params['wq'], params['wk'] and params['wv'] must have the same number of "
            f"rows (the model width), got {[shapes[k] for k in ('wq', 'wk', 'wv')]}"
        )
    n_heads = check_int("n_heads", n_heads, min_value=1)
    if d_attn % n_heads:
        raise ValueError(
            f"n_heads must divide the attention width d_attn = {d_attn} (columns of "
            f"wq, wk, wv), got n_heads = {n_heads}"
        )
    return n_heads, d_attn // n_heads


def ffn_dims(params: Any, keys: tuple[str, ...] = NEURON_KEYS) -> int:
    """Check an FFN's ``w1 (d, d_ff)``, ``b1 (d_ff,)``, ``w2 (d_ff, d_out)`` (only the
    keys in ``keys``); return ``d_ff``."""
    check_param_mapping(params, keys, "w1 (d, d_ff), b1 (d_ff,), w2 (d_ff, d_out)")
    ndims = {"w1": 2, "b1": 1, "w2": 2}
    shapes = {k: _shape(params, k, ndims[k]) for k in keys}
    d_ff = shapes["w1"][1] if "w1" in shapes else shapes["w2"][0]
    for k, shape in shapes.items():
        got = shape[0] if k == "w2" else shape[-1]
        if got != d_ff:
            where = "rows" if k == "w2" else ("entries" if k == "b1" else "columns")
            raise ValueError(
                f"params[{k!r}] must have d_ff = {d_ff} {where} (as "
                f"{'w1' if 'w1' in shapes else 'w2'}), got shape {shape}"
            )
    return d_ff


# ------------------------------------------------------------------------ CSR products
def check_csr_matmul_args(
    x: Any, csr: Any, bias: Any, array_type: type, face: str
) -> None:
    """Shapes, dtypes and devices of ``csr_matmul(x, csr, bias)``, never values.

    ``array_type``: ``np.ndarray`` or ``torch.Tensor``; ``face``: ``"reference"`` or
    ``"torch_ops"`` (named in the hint of a wrong array type).
    """
    check_matmul_operands(x, csr, bias, array_type, face, "prune", "csr")
