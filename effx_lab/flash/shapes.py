"""Parameter shapes and argument checks of the FLASH layers (chapter 7), shared by the
three faces.

:mod:`.reference` (NumPy), :mod:`.torch_ops` (PyTorch) and :mod:`.kernels` (Triton)
import their shapes and checks from here, so no face reaches into another's private
helpers and the three reject a bad argument with the same message. The activation and
parameter-dict checks of the attention layers come from
:mod:`effx_lab.attention.shapes`.

* the layout: :func:`glu_param_shapes`, :func:`gau_param_shapes` (weights stored ``(in,
  out)``) and :data:`MODES` (mixed chunk attention's parts: both, the local one, the
  global one);
* checks of anything with ``.shape``/``.ndim`` (NumPy arrays, and torch tensors with
  ``allow_torch=True``): :func:`layer_dims` (a GAU/FLASH parameter dict against ``x``),
  :func:`check_rel_bias`, :func:`check_chunk`, :func:`check_mixed_inputs`.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from effx_lab._validate import check_array, check_bool, check_int, describe
from effx_lab.attention.shapes import check_params

__all__ = [
    "MODES",
    "check_chunk",
    "check_mixed_inputs",
    "check_rel_bias",
    "gau_param_shapes",
    "glu_param_shapes",
    "layer_dims",
]

MODES = ("mixed", "local", "global")


# --------------------------------------------------------------------------------------
# parameter shapes
# --------------------------------------------------------------------------------------
def glu_param_shapes(d_model: int, e: int) -> dict[str, tuple[int, ...]]:
    """Shapes of a GLU layer's parameters: width ``d_model`` in and out, expanded width
    ``e`` inside."""
    d_model = check_int("d_model", d_model, min_value=1)
    e = check_int("e", e, min_value=1)
    return {
        "w_u": (d_model, e), "b_u": (e,),
        "w_v": (d_model, e), "b_v": (e,),
        "w_o": (e, d_model), "b_o": (d_model,),
    }  # fmt: skip


def gau_param_shapes(
    d_model: int, e: int, s: int, n_qk: int, n_rel: int
) -> dict[str, tuple[int, ...]]:
    """Shapes of a GAU (``n_qk = 2``: Q, K) or FLASH (``n_qk = 4``: Q_quad, K_quad,
    Q_lin, K_lin) layer.

    ``w_uvz`` is the fused ``[W_u | W_v | W_z]`` projection (``d -> 2e + s``), as in the
    paper's code. ``rel_bias`` holds ``n_rel = 2 R + 1`` learned scalars, one per
    relative offset in ``[-R, R]``.
    """
    d_model = check_int("d_model", d_model, min_value=1)
    e = check_int("e", e, min_value=1)
    s = check_int("s", s, min_value=1)
    n_qk = check_int("n_qk", n_qk, min_value=1)
    n_rel = check_int("n_rel", n_rel, min_value=1)
    if n_rel % 2 == 0:
        raise ValueError(f"n_rel must be odd (2 R + 1 offsets, -R..R), got {n_rel}")
    return {
        "ln_g": (d_model,), "ln_b": (d_model,),
        "w_uvz": (d_model, 2 * e + s), "b_uvz": (2 * e + s,),
        "gamma": (n_qk, s), "beta": (n_qk, s),
        "rel_bias": (n_rel,),
        "w_o": (e, d_model), "b_o": (d_model,),
    }  # fmt: skip


# --------------------------------------------------------------------------------------
# checks shared by the faces (anything with .shape/.ndim)
# --------------------------------------------------------------------------------------
def layer_dims(
    x: Any, params: Any, n_qk: int, allow_torch: bool = False
) -> tuple[int, int]:
    """Infer ``(e, s)`` of a GAU (``n_qk = 2``) or FLASH (``n_qk = 4``) layer from
    ``params`` and check every shape of :func:`gau_param_shapes` against ``x (..., n,
    d_model)``; return them."""
    n_qk = check_int("n_qk", n_qk, min_value=1)
    allow_torch = check_bool("allow_torch", allow_torch)
    if not isinstance(params, Mapping):
        raise TypeError(f"params must be a dict of arrays, got {describe(params)}")
    for key, ndim in (("w_o", 2), ("gamma", 2), ("rel_bias", 1)):
        if key not in params:
            raise ValueError(
                f"params is missing {key!r}; expected the keys of gau_param_shapes"
            )
        check_array(
            f"params[{key!r}]",
            params[key],
            ndim=ndim,
            dtype_kind="f",
            allow_torch=allow_torch,
        )
    e = int(params["w_o"].shape[0])
    s = int(params["gamma"].shape[-1])
    n_rel = int(params["rel_bias"].shape[0])
    if params["gamma"].shape[0] != n_qk:
        kind = (
            "GAU (2 rows: Q, K)"
            if n_qk == 2
            else "FLASH (4 rows: Q_quad, K_quad, Q_lin, K_lin)"
        )
        raise ValueError(
            f"params['gamma'] must have {n_qk} rows for a {kind} layer, "
            f"got shape {tuple(params['gamma'].shape)}"
        )
    if n_rel % 2 == 0:
        raise ValueError(
            "params['rel_bias'] must have an odd length 2R+1 (offsets -R..R), got "
            f"{n_rel}"
        )
    check_params(
        params,
        gau_param_shapes(x.shape[-1], e, s, n_qk, n_rel),
        allow_torch=allow_torch,
    )
    return e, s


def check_rel_bias(rel_bias: Any, allow_torch: bool = False) -> None:
    """``rel_bias``: None or a 1-D float array of odd length ``2R + 1`` (offsets
    ``-R..R``)."""
    if rel_bias is None:
        return
    check_array("rel_bias", rel_bias, ndim=1, dtype_kind="f", allow_torch=allow_torch)
    if rel_bias.shape[0] % 2 == 0:
        raise ValueError(
            "rel_bias must have an odd length 2R+1 (offsets -R..R), got "
            f"{rel_bias.shape[0]}"
        )


def check_chunk(n: int, chunk_size: Any, *, exact: bool) -> int:
    """``chunk_size``: a positive int, which must divide the length ``n`` when
    ``exact``; returned as an int."""
    c = check_int("chunk_size", chunk_size, min_value=1)
    if exact and n % c:
        raise ValueError(
            f"chunk_size must divide the sequence length n = {n}, got chunk_size = {c}"
        )
    return c


def _float_array(name: str, value: Any) -> Any:
    return check_array(name, value, dtype_kind="f")


def check_mixed_inputs(
    quad_q: Any,
    quad_k: Any,
    lin_q: Any,
    lin_k: Any,
    v: Any,
    check: Callable[[str, Any], Any] | None = None,
) -> None:
    """Shapes of mixed chunk attention's inputs: four ``(..., n, s)`` and one ``(..., n,
    e)``.

    ``check(name, value)`` validates each one first (default: a float NumPy array);
    :mod:`.torch_ops` and :mod:`.kernels` pass their tensor checks, so the three
    implementations reject bad shapes alike.
    """
    if check is None:
        check = _float_array
    elif not callable(check):
        raise TypeError(
            "check must be None or a callable check(name, value), got "
            f"{describe(check)}"
        )
    for name, a in zip(
        ("quad_q", "quad_k", "lin_q", "lin_k"), (quad_q, quad_k, lin_q, lin_k)
    ):
        check(name, a)
        if a.ndim < 2 or a.shape != quad_q.shape:
            raise ValueError(
                f"{name} must have the shape (..., n, s) of quad_q "
                f"{tuple(quad_q.shape)}, got {tuple(a.shape)}"
            )
    check("v", v)
    if v.ndim != quad_q.ndim or v.shape[:-1] != quad_q.shape[:-1]:
        raise ValueError(
            "v must have shape (..., n, e) with the (..., n) of quad_q "
            f"{tuple(quad_q.shape)}, "
            f"got {tuple(v.shape)}"
        )
