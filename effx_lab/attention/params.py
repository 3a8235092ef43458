"""Parameter initialisation for the attention baselines (NumPy arrays; ``to_torch`` converts).

Weights are stored ``(in, out)`` (``y = x @ w + b``) and drawn from ``N(0, 0.02)`` as in GPT-2; biases
are zero and LayerNorm gains one. Both backends take the same dict, so a test can feed one set of
weights to the NumPy reference and to the PyTorch version.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

from effx_lab._validate import check_alloc, check_float, check_int, describe

from .shapes import mha_param_shapes

__all__ = [
    "init_mha_params",
    "init_transformer_layer_params",
    "to_torch",
    "count_params",
    "init_bytes",
]


def init_bytes(shapes: Mapping[str, tuple[int, ...]]) -> int:
    """Peak bytes drawing float32 parameters of these shapes takes: all of them, plus the
    float64 draw of the largest (``rng.normal`` draws float64 before the cast).

    ``shapes``: a dict of tuples of ints >= 0, as
    :func:`effx_lab.attention.shapes.mha_param_shapes` returns; the initialisers of the
    chapters built on attention check their allocation with it.
    """
    if not isinstance(shapes, Mapping):
        raise TypeError(f"shapes must be a dict of shape tuples, got {describe(shapes)}")
    for key, shape in shapes.items():
        if not isinstance(shape, tuple) or not all(
            isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape
        ):
            raise TypeError(
                f"shapes[{key!r}] must be a tuple of non-negative ints, "
                f"got {describe(shape)}"
            )
    sizes = [math.prod(shape) for shape in shapes.values()] or [0]
    return 4 * sum(sizes) + 8 * max(sizes)


def _init(shapes: Mapping[str, tuple[int, ...]], seed: int, std: float, what: str) -> dict[str, np.ndarray]:
    seed = check_int("seed", seed, min_value=0)
    std = check_float("std", std, min_value=0.0, min_inclusive=False)
    check_alloc(what, init_bytes(shapes))
    rng = np.random.default_rng(seed)
    params = {}
    for key, shape in shapes.items():
        if key.startswith(("w",)) and len(shape) == 2:
            params[key] = rng.normal(0.0, std, size=shape).astype(np.float32)
        elif key.endswith("_g"):
            params[key] = np.ones(shape, dtype=np.float32)
        else:
            params[key] = np.zeros(shape, dtype=np.float32)
    return params


def init_mha_params(d_model: int, n_heads: int, seed: int = 0, std: float = 0.02) -> dict[str, np.ndarray]:
    """Random multi-head attention weights ``wq, bq, wk, bk, wv, bv, wo, bo`` for width ``d_model``."""
    d_model = check_int("d_model", d_model, min_value=1)
    n_heads = check_int("n_heads", n_heads, min_value=1)
    if d_model % n_heads:
        raise ValueError(f"n_heads must divide d_model = {d_model}, got n_heads = {n_heads}")
    return _init(mha_param_shapes(d_model), seed, std, f"init_mha_params(d_model={d_model})")


def init_transformer_layer_params(
    d_model: int, n_heads: int, d_ff: int | None = None, seed: int = 0, std: float = 0.02
) -> dict[str, np.ndarray]:
    """Random weights of one pre-LN Transformer layer (MHA + GELU FFN, ``d_ff = 4 d_model`` by default)."""
    d_model = check_int("d_model", d_model, min_value=1)
    n_heads = check_int("n_heads", n_heads, min_value=1)
    if d_model % n_heads:
        raise ValueError(f"n_heads must divide d_model = {d_model}, got n_heads = {n_heads}")
    d_ff = 4 * d_model if d_ff is None else check_int("d_ff", d_ff, min_value=1)
    what = f"init_transformer_layer_params(d_model={d_model}, d_ff={d_ff})"
    return _init(mha_param_shapes(d_model, d_ff), seed, std, what)


def to_torch(params: Mapping[str, Any], device: Any = None, dtype: Any = None) -> dict[str, Any]:
    """The same dict with every array as a torch tensor (float32 unless ``dtype`` is given)."""
    import torch

    if not isinstance(params, Mapping):
        raise TypeError(f"params must be a dict of arrays, got {describe(params)}")
    out = {}
    for key, value in params.items():
        if isinstance(value, np.ndarray):
            value = torch.from_numpy(np.ascontiguousarray(value))
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"params[{key!r}] must be a NumPy array or torch tensor, got {describe(value)}")
        out[key] = value.to(device=device, dtype=dtype or torch.float32)
    return out


def count_params(params: Mapping[str, Any]) -> int:
    """Number of scalars in a parameter dict."""
    if not isinstance(params, Mapping):
        raise TypeError(f"params must be a dict of arrays, got {describe(params)}")
    total = 0
    for key, value in params.items():
        shape = getattr(value, "shape", None)
        if shape is None:
            raise TypeError(f"params[{key!r}] must be a NumPy array or torch tensor, got {describe(value)}")
        total += int(np.prod(tuple(shape)))
    return total
