"""FLASH in PyTorch, vectorised (chapter 7): the same names and signatures as :mod:`effx_lab.flash.reference`
(torch tensors in, torch tensors out). Hua et al. 2022, "Transformer Quality in Linear Time".

What differs from the NumPy reference, and why:

* activations and norms are PyTorch's fused kernels: ``F.silu`` for Swish, ``F.layer_norm`` (eps ``1e-5``,
  biased variance, as :func:`effx_lab.models.reference.layer_norm`), ``torch.relu(...).square()`` for the
  squared ReLU; every projection is one GEMM with its bias fused (``F.linear`` on the transposed
  ``(in, out)`` weight, a view). GLU's ``W_u`` and ``W_v`` are concatenated into one GEMM.
* :func:`gau` and :func:`flash_layer` build the query/key sets directly as ``Z * gamma[i] + beta[i]`` in a
  ``(..., h, n, s)`` layout, so every set is contiguous (the reference slices an ``(..., n, h, s)`` array).
* **mixed chunk attention** works on ``(..., G, c, .)`` views of the sequence: the local part is one batched
  ``(c, c)`` product per chunk, the causal global part one batched ``K_lin_h^T V_h`` per chunk followed by
  an exclusive ``torch.cumsum`` over chunks (the cumsum of chunks ``0..G-2`` with a zero state padded in
  front; the last chunk's ``K^T V`` is never needed and never computed). The *non-causal* global state
  is the same for every chunk, ``sum_h K_lin_h^T V_h = K_lin^T V``: it is computed once as a
  ``(..., s, e)`` matrix and broadcast, never materialised ``G`` times (:func:`chunk_linear_states`, whose
  contract is the ``(..., G, s, e)`` array, still returns the copies).
* :func:`flash_layer` pads ``Z`` and ``V`` (two tensors, not the reference's five) when ``chunk_size`` does
  not divide ``n``: padded queries/keys are then ``beta`` instead of zero, but a padded token's value is
  zero, so it still contributes exactly nothing to a real token (``A[i, j] * 0`` locally, ``k_j^T 0``
  globally), and padded outputs are cropped. The math is the reference's.
* the causal mask multiplies nothing: ``masked_fill_(~tril, 0)`` zeroes the entries in place (the reference
  replaces them with ``np.where``: the same numbers, NaN included, since a NaN score of a future key must not
  reach an earlier row; and no gradient flows into the masked entries).

Validation: the reference's shape checks are reused (:mod:`.shapes`, with
``allow_torch=True``), but every array argument must be a ``torch.Tensor`` (NumPy arrays
raise ``TypeError``) and the activations given to one call must share one dtype and
device. Parameters (``params``, ``gamma``, ``beta``, ``bias``, ``rel_bias``,
``weights``) are cast to the dtype of the activations, so the output always has the
input's dtype (float32, float64, bfloat16) and lives on its device (CPU or CUDA);
everything is differentiable.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn.functional as F

from effx_lab._validate import check_bool, check_choice, check_int
from effx_lab.attention.shapes import (
    check_layer_dict,
    check_params,
    check_x,
    linear,
    require_tensor,
    same_kind,
    tensor_params,
    tril,
)

from .shapes import (
    MODES,
    check_chunk,
    check_mixed_inputs,
    check_rel_bias,
    gau_param_shapes,
    glu_param_shapes,
    layer_dims,
)

__all__ = [
    "swish",
    "glu",
    "scale_offset",
    "rel_pos_bias",
    "relu2_attention",
    "gau",
    "chunk_linear_states",
    "mixed_chunk_attention",
    "mixed_chunk_masks",
    "mixed_chunk_dense",
    "flash_layer",
]


# ----------------------------------------------------------------------------------------------------------
# torch-side validation
# ----------------------------------------------------------------------------------------------------------
def _float_tensor(name: str, value: Any, ndim: int | None = None) -> torch.Tensor:
    """A float torch tensor (``TypeError`` otherwise), optionally of rank ``ndim`` (``ValueError``)."""
    require_tensor(name, value)
    if not value.dtype.is_floating_point:
        raise TypeError(f"{name} must have a float dtype, got {value.dtype}")
    if ndim is not None and value.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(value.shape)}")
    return value


def _param_like(name: str, value: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``value`` in ``like``'s dtype; ``ValueError`` if it lives on another device."""
    if value.device != like.device:
        raise ValueError(f"{name} must be on the device of the activations ({like.device}), got {value.device}")
    return value.to(like.dtype)


def _layer_params(x: Any, params: Any, n_qk: int) -> tuple[dict[str, torch.Tensor], int]:
    """Validate ``x`` and a GAU (``n_qk = 2``) or FLASH (``n_qk = 4``) parameter dict; return tensors and ``e``."""
    require_tensor("x", x)
    check_x(x, allow_torch=True)
    e, s = layer_dims(x, params, n_qk=n_qk, allow_torch=True)
    keys = gau_param_shapes(x.shape[-1], e, s, n_qk, int(params["rel_bias"].shape[0]))
    return tensor_params(params, keys, x), e


# ----------------------------------------------------------------------------------------------------------
# building blocks
# ----------------------------------------------------------------------------------------------------------
def swish(x: torch.Tensor) -> torch.Tensor:
    """Swish / SiLU, ``x * sigmoid(x)``: the activation ``phi`` of GLU and GAU in the paper."""
    return F.silu(_float_tensor("x", x))


def glu(x: torch.Tensor, params: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The gated linear unit ``(phi(x W_u + b_u) * phi(x W_v + b_v)) W_o + b_o`` (no norm, no residual)."""
    require_tensor("x", x)
    check_x(x, allow_torch=True)
    check_layer_dict(params, "w_u", "keys w_u, b_u, w_v, b_v, w_o, b_o")
    shapes = glu_param_shapes(x.shape[-1], params["w_u"].shape[-1])
    check_params(params, shapes, allow_torch=True)
    p = tensor_params(params, shapes, x)
    uv = F.silu(linear(x, torch.cat((p["w_u"], p["w_v"]), dim=1), torch.cat((p["b_u"], p["b_v"]))))
    u, v = uv.chunk(2, dim=-1)
    return linear(u * v, p["w_o"], p["b_o"])


def scale_offset(z: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """Per-dimension scale and offset: ``(..., n, s) -> (..., n, h, s)``, row ``i`` = ``z * gamma[i] + beta[i]``."""
    _float_tensor("z", z)
    _float_tensor("gamma", gamma, ndim=2)
    _float_tensor("beta", beta, ndim=2)
    if z.ndim < 1 or gamma.shape[1] != z.shape[-1] or beta.shape != gamma.shape:
        raise ValueError(
            f"gamma and beta must have shape (h, s) with s = z.shape[-1], got z {tuple(z.shape)}, "
            f"gamma {tuple(gamma.shape)}, beta {tuple(beta.shape)}"
        )
    gamma, beta = _param_like("gamma", gamma, z), _param_like("beta", beta, z)
    return z.unsqueeze(-2) * gamma + beta


def _rel_pos_bias(n: int, m: int, weights: torch.Tensor) -> torch.Tensor:
    r = (weights.shape[0] - 1) // 2
    offsets = torch.arange(m, device=weights.device)[None, :] - torch.arange(n, device=weights.device)[:, None]
    return weights[offsets.clamp_(-r, r) + r]


def rel_pos_bias(n: int, weights: torch.Tensor, m: int | None = None) -> torch.Tensor:
    """``(n, m)`` relative position bias: ``b[i, j] = weights[clip(j - i, -R, R) + R]``, ``len(weights) = 2R + 1``.

    A gather from ``weights`` (differentiable: each weight's gradient sums over its diagonals).
    """
    n = check_int("n", n, min_value=1)
    m = n if m is None else check_int("m", m, min_value=1)
    _float_tensor("weights", weights, ndim=1)
    if weights.shape[0] % 2 == 0:
        raise ValueError(f"weights must have an odd length 2R+1 (offsets -R..R), got {weights.shape[0]}")
    return _rel_pos_bias(n, m, weights)


def _relu2(q: torch.Tensor, k: torch.Tensor, bias: torch.Tensor | None, causal: bool) -> torch.Tensor:
    n, m = q.shape[-2], k.shape[-2]
    logits = torch.matmul(q, k.transpose(-1, -2)) / m
    if bias is not None:
        logits = logits + bias
    a = torch.relu(logits).square()
    if causal:  # in place on square's fresh output (its backward reads the input)
        a.masked_fill_(~tril(n, m, q.device), 0.0)
    return a


def relu2_attention(
    q: torch.Tensor, k: torch.Tensor, bias: torch.Tensor | None = None, causal: bool = False
) -> torch.Tensor:
    """GAU's attention matrix ``A = relu(q k^T / m + bias)^2``, ``(..., n, s), (..., m, s) -> (..., n, m)``.

    ``m`` is the number of keys; ``bias`` an ``(n, m)`` tensor (e.g. :func:`rel_pos_bias`) or None;
    ``causal`` zeroes ``A[i, j]`` for ``j > i``.
    """
    _float_tensor("q", q)
    _float_tensor("k", k)
    if q.ndim < 2 or k.ndim < 2 or q.shape[-1] != k.shape[-1] or q.shape[:-2] != k.shape[:-2]:
        raise ValueError(
            f"q and k must have shapes (..., n, s) and (..., m, s), got {tuple(q.shape)} and {tuple(k.shape)}"
        )
    same_kind(q=q, k=k)
    n, m = q.shape[-2], k.shape[-2]
    causal = check_bool("causal", causal)
    if causal and n != m:
        raise ValueError(f"causal attention needs as many queries as keys, got {n} and {m}")
    if bias is not None:
        _float_tensor("bias", bias, ndim=2)
        if tuple(bias.shape) != (n, m):
            raise ValueError(f"bias must have shape ({n}, {m}), got {tuple(bias.shape)}")
        bias = _param_like("bias", bias, q)
    return _relu2(q, k, bias, causal)


def _uvz(x: torch.Tensor, p: Mapping[str, torch.Tensor], e: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    h = F.layer_norm(x, (x.shape[-1],), p["ln_g"], p["ln_b"], eps=1e-5)
    uvz = F.silu(linear(h, p["w_uvz"], p["b_uvz"]))
    return uvz[..., :e], uvz[..., e : 2 * e], uvz[..., 2 * e :]


def _qk_sets(z: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``z * gamma[i] + beta[i]`` for every row ``i``, in an ``(..., h, n, s)`` layout: contiguous sets."""
    return (z.unsqueeze(-3) * gamma.unsqueeze(-2) + beta.unsqueeze(-2)).unbind(-3)


def gau(x: torch.Tensor, params: Mapping[str, torch.Tensor], causal: bool = False) -> torch.Tensor:
    """One GAU layer (FLASH-Quad, eq. 3-5): ``x + [U * (A V)] W_o + b_o``, with ``U, V, Z`` from ``LN(x)``.

    ``A = relu(Q K^T / n + b)^2`` (causal: lower triangle), ``Q, K = Z * gamma + beta``. Quadratic in ``n``.
    """
    p, e = _layer_params(x, params, n_qk=2)
    causal = check_bool("causal", causal)
    u, v, z = _uvz(x, p, e)
    q, k = _qk_sets(z, p["gamma"], p["beta"])
    n = x.shape[-2]
    a = _relu2(q, k, _rel_pos_bias(n, n, p["rel_bias"]), causal)
    return x + linear(u * torch.matmul(a, v), p["w_o"], p["b_o"])


def _chunk_states(kc: torch.Tensor, vc: torch.Tensor, causal: bool) -> torch.Tensor:
    """States from ``(..., G, c, s)`` keys and ``(..., G, c, e)`` values: causal ``(..., G, s, e)`` exclusive
    prefix sums; non-causal the ``(..., 1, s, e)`` total (broadcasts over chunks)."""
    if not causal:
        kf, vf = kc.flatten(-3, -2), vc.flatten(-3, -2)
        return torch.matmul(kf.transpose(-1, -2), vf).unsqueeze(-3)
    # (..., G-1, s, e): K_h^T V_h for every chunk but the last, whose state no chunk reads
    kv = torch.matmul(kc[..., :-1, :, :].transpose(-1, -2), vc[..., :-1, :, :])
    return F.pad(torch.cumsum(kv, dim=-3), (0, 0, 0, 0, 1, 0))  # exclusive prefix: a zero state shifted in front


def chunk_linear_states(lin_k: torch.Tensor, v: torch.Tensor, chunk_size: int, causal: bool = False) -> torch.Tensor:
    """The linear part's state for each chunk: ``(..., n, s), (..., n, e) -> (..., G, s, e)``, ``G = n / c``.

    ``sum_h K_lin_h^T V_h`` over all chunks (non-causal, eq. 7) or over ``h < g`` (causal, eq. 8; exclusive
    cumulative sum, state 0 is zero). Unscaled. ``chunk_size`` must divide ``n``.
    """
    _float_tensor("lin_k", lin_k)
    _float_tensor("v", v)
    if lin_k.ndim < 2 or v.ndim < 2 or lin_k.shape[:-1] != v.shape[:-1]:
        raise ValueError(
            f"lin_k and v must have shapes (..., n, s) and (..., n, e), got {tuple(lin_k.shape)} and {tuple(v.shape)}"
        )
    same_kind(lin_k=lin_k, v=v)
    n = lin_k.shape[-2]
    c = check_chunk(n, chunk_size, exact=True)
    causal = check_bool("causal", causal)
    g = n // c
    states = _chunk_states(lin_k.unflatten(-2, (g, c)), v.unflatten(-2, (g, c)), causal)
    if not causal:
        states = states.expand(*states.shape[:-3], g, *states.shape[-2:]).contiguous()
    return states


def _mixed(
    qq: torch.Tensor,
    kq: torch.Tensor,
    ql: torch.Tensor,
    kl: torch.Tensor,
    v: torch.Tensor,
    c: int,
    causal: bool,
    rel_bias: torch.Tensor | None,
    mode: str,
) -> torch.Tensor:
    """Mixed chunk attention on validated inputs whose length is a multiple of ``c``."""
    g = v.shape[-2] // c
    vc = v.unflatten(-2, (g, c))
    out = None
    if mode in ("mixed", "local"):
        bias = None if rel_bias is None else _rel_pos_bias(c, c, rel_bias)
        a = _relu2(qq.unflatten(-2, (g, c)), kq.unflatten(-2, (g, c)), bias, causal)  # (..., G, c, c)
        out = torch.matmul(a, vc)
    if mode in ("mixed", "global"):
        states = _chunk_states(kl.unflatten(-2, (g, c)), vc, causal)  # (..., G or 1, s, e)
        lin = torch.matmul(ql.unflatten(-2, (g, c)), states) / c
        out = lin if out is None else out + lin
    return out.flatten(-3, -2)


def _mixed_args(
    quad_q: Any,
    quad_k: Any,
    lin_q: Any,
    lin_k: Any,
    v: Any,
    chunk_size: Any,
    causal: Any,
    rel_bias: Any,
    mode: Any,
) -> tuple[int, bool, torch.Tensor | None]:
    """Validate mixed chunk attention's arguments; return the chunk size, ``causal`` and
    ``rel_bias`` in the activations' dtype."""
    check_mixed_inputs(quad_q, quad_k, lin_q, lin_k, v, check=_float_tensor)
    same_kind(quad_q=quad_q, quad_k=quad_k, lin_q=lin_q, lin_k=lin_k, v=v)
    c = check_chunk(quad_q.shape[-2], chunk_size, exact=False)
    causal = check_bool("causal", causal)
    check_choice("mode", mode, MODES)
    if rel_bias is not None:
        require_tensor("rel_bias", rel_bias)
        check_rel_bias(rel_bias, allow_torch=True)
        rel_bias = _param_like("rel_bias", rel_bias, quad_q)
    return c, causal, rel_bias


def mixed_chunk_attention(
    quad_q: torch.Tensor,
    quad_k: torch.Tensor,
    lin_q: torch.Tensor,
    lin_k: torch.Tensor,
    v: torch.Tensor,
    chunk_size: int,
    causal: bool = False,
    rel_bias: torch.Tensor | None = None,
    mode: str = "mixed",
) -> torch.Tensor:
    """Mixed chunk attention ``Vhat_quad + Vhat_lin`` (eq. 6-8): ``(..., n, s) x4, (..., n, e) -> (..., n, e)``.

    ``mode``: ``"mixed"``, ``"local"`` (within-chunk quadratic part only) or ``"global"`` (across-chunk linear
    part only). A length that ``chunk_size`` does not divide is padded with zeros at the end and the output
    cropped back to ``n``. ``rel_bias`` (length ``2R+1``) adds :func:`rel_pos_bias` inside each chunk.
    """
    c, causal, rel_bias = _mixed_args(
        quad_q, quad_k, lin_q, lin_k, v, chunk_size, causal, rel_bias, mode
    )
    n = quad_q.shape[-2]
    pad = (-n) % c
    tensors = (quad_q, quad_k, lin_q, lin_k, v)
    if pad:
        tensors = tuple(F.pad(t, (0, 0, 0, pad)) for t in tensors)
    return _mixed(*tensors, c, causal, rel_bias, mode)[..., :n, :]


def _masks(
    n: int, c: int, causal: bool, device: torch.device | None
) -> tuple[torch.Tensor, torch.Tensor]:
    pos = torch.arange(n, device=device)
    chunk = pos // c
    same_chunk = chunk[:, None] == chunk[None, :]
    if causal:
        local = same_chunk & (pos[None, :] <= pos[:, None])  # lower triangle in a chunk
        return local, chunk[None, :] < chunk[:, None]  # earlier chunks only: h < g
    return same_chunk, torch.ones(n, n, dtype=torch.bool, device=device)


def mixed_chunk_masks(
    n: int, chunk_size: int, causal: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Who sees whom in mixed chunk attention: two boolean ``(n, n)`` CPU tensors
    ``(local, linear)``, True where query ``i`` reaches key ``j`` through that part.

    ``local``: the same chunk (``i // chunk_size``), and ``j <= i`` if ``causal``.
    ``linear``: every pair (non-causal) or the earlier chunks only (causal).
    """
    n = check_int("n", n, min_value=1)
    c = check_int("chunk_size", chunk_size, min_value=1)
    causal = check_bool("causal", causal)
    return _masks(n, c, causal, None)


def mixed_chunk_dense(
    quad_q: torch.Tensor,
    quad_k: torch.Tensor,
    lin_q: torch.Tensor,
    lin_k: torch.Tensor,
    v: torch.Tensor,
    chunk_size: int,
    causal: bool = False,
    rel_bias: torch.Tensor | None = None,
    mode: str = "mixed",
) -> torch.Tensor:
    """Mixed chunk attention by its definition, one ``n x n`` mixing matrix: the same
    arguments and result as :func:`mixed_chunk_attention`, at ``O(n^2)`` cost.

    ``(A_quad + A_lin) V``, each part filled with zeros outside its mask of
    :func:`mixed_chunk_masks` (built on the inputs' device): the definition the chunked
    code is tested against, on any device and in any float dtype.
    """
    c, causal, rel_bias = _mixed_args(
        quad_q, quad_k, lin_q, lin_k, v, chunk_size, causal, rel_bias, mode
    )
    n = quad_q.shape[-2]
    local, linear = _masks(n, c, causal, quad_q.device)
    a = torch.zeros(*quad_q.shape[:-1], n, dtype=quad_q.dtype, device=quad_q.device)
    if mode in ("mixed", "local"):
        logits = torch.matmul(quad_q, quad_k.transpose(-1, -2)) / c
        if rel_bias is not None:
            logits = logits + _rel_pos_bias(n, n, rel_bias)
        a = a + torch.relu(logits).square().masked_fill(~local, 0.0)
    if mode in ("mixed", "global"):
        lin = torch.matmul(lin_q, lin_k.transpose(-1, -2)) / c
        a = a + lin.masked_fill(~linear, 0.0)
    return torch.matmul(a, v)


def flash_layer(
    x: torch.Tensor, params: Mapping[str, torch.Tensor], chunk_size: int, causal: bool = False, mode: str = "mixed"
) -> torch.Tensor:
    """One FLASH layer (eq. 9): ``x + [U * (Vhat_quad + Vhat_lin)] W_o + b_o``, cost linear in ``n``.

    ``params``: see :func:`effx_lab.flash.shapes.gau_param_shapes` with ``n_qk = 4`` (rows of
    ``gamma``/``beta``: Q_quad, K_quad, Q_lin, K_lin).
    """
    p, e = _layer_params(x, params, n_qk=4)
    c = check_int("chunk_size", chunk_size, min_value=1)
    causal = check_bool("causal", causal)
    check_choice("mode", mode, MODES)
    u, v, z = _uvz(x, p, e)
    n = x.shape[-2]
    pad = (-n) % c
    if pad:  # zero values make the padded tokens inert (see the module docstring)
        v, z = F.pad(v, (0, 0, 0, pad)), F.pad(z, (0, 0, 0, pad))
    qq, kq, ql, kl = _qk_sets(z, p["gamma"], p["beta"])
    att = _mixed(qq, kq, ql, kl, v, c, causal, p["rel_bias"], mode)[..., :n, :]
    return x + linear(u * att, p["w_o"], p["b_o"])
