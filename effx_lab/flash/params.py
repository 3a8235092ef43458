"""Parameter initialisation for GLU, GAU (FLASH-Quad) and FLASH layers (NumPy; ``to_torch`` converts).

Following the paper's code: weights ``N(0, 0.02)``, biases zero, LayerNorm gain one; the per-dimension
query/key scales ``gamma ~ N(0, 0.02)`` and offsets ``beta = 0``; the relative position bias starts at zero.
"""

from __future__ import annotations

import numpy as np

from effx_lab._validate import check_alloc, check_choice, check_float, check_int
from effx_lab.attention.params import count_params, init_bytes, to_torch

from .shapes import gau_param_shapes, glu_param_shapes

__all__ = ["init_glu_params", "init_gau_params", "init_flash_params", "to_torch", "count_params"]


def _draw(shapes: dict[str, tuple[int, ...]], seed: int, std: float, what: str) -> dict[str, np.ndarray]:
    seed = check_int("seed", seed, min_value=0)
    std = check_float("std", std, min_value=0.0, min_inclusive=False)
    check_alloc(what, init_bytes(shapes))
    rng = np.random.default_rng(seed)
    out = {}
    for key, shape in shapes.items():
        if key.startswith("w_") or key == "gamma":
            out[key] = rng.normal(0.0, std, size=shape).astype(np.float32)
        elif key == "ln_g":
            out[key] = np.ones(shape, dtype=np.float32)
        else:
            out[key] = np.zeros(shape, dtype=np.float32)
    return out


def init_glu_params(d_model: int, expansion: int = 2, seed: int = 0, std: float = 0.02) -> dict[str, np.ndarray]:
    """GLU weights ``w_u, b_u, w_v, b_v`` (``d -> e``) and ``w_o, b_o`` (``e -> d``), ``e = expansion * d``."""
    d_model = check_int("d_model", d_model, min_value=1)
    expansion = check_int("expansion", expansion, min_value=1)
    what = f"init_glu_params(d_model={d_model}, expansion={expansion})"
    return _draw(glu_param_shapes(d_model, expansion * d_model), seed, std, what)


def _init_layer(kind: str, d_model: int, expansion: int, s: int, max_rel: int, seed: int, std: float):
    d_model = check_int("d_model", d_model, min_value=1)
    expansion = check_int("expansion", expansion, min_value=1)
    s = check_int("s", s, min_value=1)
    max_rel = check_int("max_rel", max_rel, min_value=0)
    check_choice("kind", kind, ("gau", "flash"))
    n_qk = 2 if kind == "gau" else 4
    what = f"init_{kind}_params(d_model={d_model}, expansion={expansion}, s={s}, max_rel={max_rel})"
    return _draw(gau_param_shapes(d_model, expansion * d_model, s, n_qk, 2 * max_rel + 1), seed, std, what)


def init_gau_params(
    d_model: int, expansion: int = 2, s: int = 128, max_rel: int = 127, seed: int = 0, std: float = 0.02
) -> dict[str, np.ndarray]:
    """One GAU (FLASH-Quad) layer: ``e = expansion * d_model`` (paper: 2), shared width ``s`` (paper: 128),
    two query/key rows in ``gamma``/``beta``, and ``2 * max_rel + 1`` relative-position scalars."""
    return _init_layer("gau", d_model, expansion, s, max_rel, seed, std)


def init_flash_params(
    d_model: int, expansion: int = 2, s: int = 128, max_rel: int = 127, seed: int = 0, std: float = 0.02
) -> dict[str, np.ndarray]:
    """One FLASH layer: as :func:`init_gau_params` but four query/key rows (Q_quad, K_quad, Q_lin, K_lin)."""
    return _init_layer("flash", d_model, expansion, s, max_rel, seed, std)
