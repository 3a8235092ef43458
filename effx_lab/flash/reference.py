"""FLASH in plain NumPy, written to be read (chapter 7).

Hua, Dai, Liu and Le, "Transformer Quality in Linear Time" (ICML 2022), equation numbers from the paper.

**GLU** (Shazeer 2020; paper eq. 1-2): ``U = phi(X W_u)``, ``V = phi(X W_v)``, ``O = (U * V) W_o`` with
``phi`` = Swish (SiLU). No token ever looks at another one.

**GAU**, the Gated Attention Unit (eq. 3-5): let a token *mix* ``V`` before the gate,
``O = (U * A V) W_o``, with the attention matrix built from one small shared projection
``Z = phi(X W_z)`` (width ``s = 128`` in the paper) and a per-dimension scale and offset (like
LayerNorm's gain and bias) that turn ``Z`` into queries and keys:
``Q = Z * gamma_q + beta_q``, ``K = Z * gamma_k + beta_k``,
``A = relu(Q K^T / m + b)^2`` where ``b`` is a relative position bias and ``m`` the number of keys
(the paper writes ``n``: in self-attention the sequence length, the number of queries and keys alike).
One head, expansion ``e = 2 d``; a GAU layer has about ``3 d e + d s`` = ``6 d^2 + d s`` weights, half of an
attention (4 d^2) + FFN (8 d^2) pair, so
``2N`` GAU layers replace ``N`` attention + ``N`` FFN layers: **FLASH-Quad** (still quadratic).

**Mixed chunk attention** (eq. 6-9), which makes it **FLASH**: split the ``n`` tokens into ``G = n / c``
chunks of ``c``. From ``Z`` make four sets of queries and keys, ``Q_quad, K_quad, Q_lin, K_lin``.

* local, quadratic inside each chunk (eq. 6): ``Vhat_quad_g = relu(Q_quad_g K_quad_g^T / c + b)^2 V_g``
  (causal: masked lower-triangular inside the chunk); cost ``O(n c)``;
* global, linear across chunks (eq. 7 non-causal / eq. 8 causal):
  ``Vhat_lin_g = Q_lin_g sum_h K_lin_h^T V_h / c`` where ``h`` runs over **all** chunks (non-causal) or
  **the previous chunks only**, ``h < g`` (causal: the current chunk is the local part's job; including it
  would let a token see the future); cost ``O(n e s)``;
* ``O = [U * (Vhat_quad + Vhat_lin)] W_o`` (eq. 9).

Scaling: the paper's equations leave it implicit. We divide both parts by ``c``: for the local part that is
GAU's ``1 / (number of keys)`` rule applied to a chunk; for the global part it is our choice (ports of the
paper differ, some divide the non-causal global sum by ``n``). Positions: the paper's code also applies
rotary embeddings (RoPE) to the queries and keys; we use only the relative position bias. Every layer here
is pre-LayerNorm with a residual connection, ``x + f(LN(x))``, as in the paper's code. Shapes take leading
batch dimensions.
:mod:`.torch_ops` exports the same names and signatures for PyTorch tensors. Both take
the parameter shapes and argument checks from :mod:`.shapes` (``glu_param_shapes``,
``gau_param_shapes``, ``MODES``).
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from effx_lab._validate import check_array, check_bool, check_choice, check_int, describe
from effx_lab.attention.shapes import check_params, check_x
from effx_lab.models.reference import layer_norm

from .shapes import (
    MODES,
    check_chunk,
    check_mixed_inputs,
    check_rel_bias,
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
# building blocks
# ----------------------------------------------------------------------------------------------------------
def swish(x: np.ndarray) -> np.ndarray:
    """Swish / SiLU, ``x * sigmoid(x)``: the activation ``phi`` of GLU and GAU in the paper."""
    check_array("x", x, dtype_kind="f")
    return x / (1.0 + np.exp(-x))


def glu(x: np.ndarray, params: Mapping[str, np.ndarray]) -> np.ndarray:
    """The gated linear unit ``(phi(x W_u + b_u) * phi(x W_v + b_v)) W_o + b_o`` (no norm, no residual)."""
    check_x(x)
    if not isinstance(params, Mapping):
        raise TypeError(f"params must be a dict with keys w_u, b_u, w_v, b_v, w_o, b_o, got {describe(params)}")
    if "w_u" not in params:
        raise ValueError(f"params is missing 'w_u'; expected keys w_u, b_u, w_v, b_v, w_o, b_o, got {sorted(params)}")
    check_array("params['w_u']", params["w_u"], ndim=2, dtype_kind="f")
    check_params(params, glu_param_shapes(x.shape[-1], params["w_u"].shape[-1]))
    u = swish(x @ params["w_u"] + params["b_u"])
    v = swish(x @ params["w_v"] + params["b_v"])
    return (u * v) @ params["w_o"] + params["b_o"]


def scale_offset(z: np.ndarray, gamma: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """Per-dimension scale and offset: ``(..., n, s) -> (..., n, h, s)``, row ``i`` = ``z * gamma[i] + beta[i]``.

    This is how GAU gets ``h`` different query/key sets from one shared ``Z`` almost for free.
    """
    check_array("z", z, dtype_kind="f")
    check_array("gamma", gamma, ndim=2, dtype_kind="f")
    check_array("beta", beta, ndim=2, dtype_kind="f")
    if z.ndim < 1 or gamma.shape[1] != z.shape[-1] or beta.shape != gamma.shape:
        raise ValueError(
            f"gamma and beta must have shape (h, s) with s = z.shape[-1], got z {tuple(z.shape)}, "
            f"gamma {tuple(gamma.shape)}, beta {tuple(beta.shape)}"
        )
    return z[..., None, :] * gamma + beta


def rel_pos_bias(n: int, weights: np.ndarray, m: int | None = None) -> np.ndarray:
    """``(n, m)`` relative position bias: ``b[i, j] = weights[clip(j - i, -R, R) + R]`` with ``len(weights) = 2R + 1``.

    One learned scalar per relative offset (offsets beyond ``R`` share the end values), like T5's bias
    without its logarithmic buckets.
    """
    n = check_int("n", n, min_value=1)
    m = n if m is None else check_int("m", m, min_value=1)
    check_array("weights", weights, ndim=1, dtype_kind="f")
    if weights.shape[0] % 2 == 0:
        raise ValueError(f"weights must have an odd length 2R+1 (offsets -R..R), got {weights.shape[0]}")
    r = (weights.shape[0] - 1) // 2
    offsets = np.arange(m)[None, :] - np.arange(n)[:, None]
    return weights[np.clip(offsets, -r, r) + r]


def relu2_attention(q: np.ndarray, k: np.ndarray, bias: np.ndarray | None = None, causal: bool = False) -> np.ndarray:
    """GAU's attention matrix ``A = relu(q k^T / m + bias)^2``, ``(..., n, s), (..., m, s) -> (..., n, m)``.

    ``m`` is the number of keys. Dividing by it is the paper's normalisation in place of a softmax: the
    rows do *not* sum to one (for content-only logits of fixed size the row sums even shrink like
    ``1/m``); it only keeps the logits from growing with the length. ``bias`` is an ``(n, m)`` array (e.g.
    :func:`rel_pos_bias`) or None. ``causal`` zeroes ``A[i, j]`` for ``j > i``.
    """
    check_array("q", q, dtype_kind="f")
    check_array("k", k, dtype_kind="f")
    if q.ndim < 2 or k.ndim < 2 or q.shape[-1] != k.shape[-1] or q.shape[:-2] != k.shape[:-2]:
        raise ValueError(
            f"q and k must have shapes (..., n, s) and (..., m, s), got {tuple(q.shape)} and {tuple(k.shape)}"
        )
    n, m = q.shape[-2], k.shape[-2]
    causal = check_bool("causal", causal)
    if causal and n != m:
        raise ValueError(f"causal attention needs as many queries as keys, got {n} and {m}")
    logits = (q @ np.swapaxes(k, -1, -2)) / m
    if bias is not None:
        check_array("bias", bias, ndim=2, dtype_kind="f")
        if bias.shape != (n, m):
            raise ValueError(f"bias must have shape ({n}, {m}), got {tuple(bias.shape)}")
        logits = logits + bias
    a = np.maximum(logits, 0.0) ** 2
    if causal:  # replace, not multiply: 0 * NaN is NaN, and a NaN future key must not reach row i
        a = np.where(np.tril(np.ones((n, m), dtype=bool)), a, 0.0)
    return a


def _uvz(x: np.ndarray, params: Mapping[str, np.ndarray], e: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    h = layer_norm(x, params["ln_g"], params["ln_b"])
    uvz = swish(h @ params["w_uvz"] + params["b_uvz"])
    return uvz[..., :e], uvz[..., e : 2 * e], uvz[..., 2 * e :]


def gau(x: np.ndarray, params: Mapping[str, np.ndarray], causal: bool = False) -> np.ndarray:
    """One GAU layer (a FLASH-Quad layer): ``x + [U * (A V)] W_o + b_o``, with ``U, V, Z`` from ``LN(x)``.

    ``A = relu2_attention(Q, K, rel_pos_bias(n, rel_bias), causal)``, ``Q, K = scale_offset(Z, gamma, beta)``.
    ``params``: see :func:`gau_param_shapes` with ``n_qk = 2``. Cost: quadratic in ``n``.
    """
    check_x(x)
    e, _ = layer_dims(x, params, n_qk=2)
    causal = check_bool("causal", causal)
    u, v, z = _uvz(x, params, e)
    qk = scale_offset(z, params["gamma"], params["beta"])
    n = x.shape[-2]
    a = relu2_attention(qk[..., 0, :], qk[..., 1, :], rel_pos_bias(n, params["rel_bias"]), causal)
    return x + (u * (a @ v)) @ params["w_o"] + params["b_o"]


def chunk_linear_states(lin_k: np.ndarray, v: np.ndarray, chunk_size: int, causal: bool = False) -> np.ndarray:
    """The linear part's state for each chunk: ``(..., n, s), (..., n, e) -> (..., G, s, e)``, ``G = n / c``.

    ``kv_h = K_lin_h^T V_h`` per chunk; state ``g`` is ``sum_h kv_h`` over all chunks (non-causal, eq. 7,
    the same for every ``g``) or over the previous chunks ``h < g`` (causal, eq. 8: an *exclusive*
    cumulative sum, so state 0 is zero). Unscaled (the ``1 / c`` is applied by the caller).
    ``chunk_size`` must divide ``n``.
    """
    check_array("lin_k", lin_k, dtype_kind="f")
    check_array("v", v, dtype_kind="f")
    if lin_k.ndim < 2 or v.ndim < 2 or lin_k.shape[:-1] != v.shape[:-1]:
        raise ValueError(
            f"lin_k and v must have shapes (..., n, s) and (..., n, e), got {tuple(lin_k.shape)} and {tuple(v.shape)}"
        )
    n = lin_k.shape[-2]
    c = check_chunk(n, chunk_size, exact=True)
    causal = check_bool("causal", causal)
    g = n // c
    kc = lin_k.reshape(*lin_k.shape[:-2], g, c, lin_k.shape[-1])
    vc = v.reshape(*v.shape[:-2], g, c, v.shape[-1])
    kv = np.swapaxes(kc, -1, -2) @ vc  # (..., G, s, e)
    if not causal:
        return np.broadcast_to(kv.sum(axis=-3, keepdims=True), kv.shape).copy()
    states = np.zeros_like(kv)
    states[..., 1:, :, :] = np.cumsum(kv, axis=-3)[..., :-1, :, :]
    return states


def mixed_chunk_attention(
    quad_q: np.ndarray,
    quad_k: np.ndarray,
    lin_q: np.ndarray,
    lin_k: np.ndarray,
    v: np.ndarray,
    chunk_size: int,
    causal: bool = False,
    rel_bias: np.ndarray | None = None,
    mode: str = "mixed",
) -> np.ndarray:
    """Mixed chunk attention ``Vhat_quad + Vhat_lin`` (eq. 6-8): ``(..., n, s) x4, (..., n, e) -> (..., n, e)``.

    ``mode="local"`` keeps only the quadratic within-chunk part, ``"global"`` only the linear across-chunk
    part (the paper's LocalOnly / GlobalOnly ablations). When ``chunk_size`` does not divide ``n`` the
    sequence is padded at the end with zero values (a padded token then contributes nothing to anyone)
    and the output cropped back to ``n``. ``rel_bias`` (length ``2R+1``) adds :func:`rel_pos_bias` inside
    each chunk. The output dtype is that of the main inputs (``np.result_type`` of the five): ``rel_bias`` is a
    parameter and is cast to it, as :mod:`.torch_ops` does, so a float64 bias does not turn a float32 call
    into a float64 one.
    """
    check_mixed_inputs(quad_q, quad_k, lin_q, lin_k, v)
    n = quad_q.shape[-2]
    c = check_chunk(n, chunk_size, exact=False)
    causal = check_bool("causal", causal)
    check_choice("mode", mode, MODES)
    check_rel_bias(rel_bias)
    dtype = np.result_type(quad_q, quad_k, lin_q, lin_k, v)
    if rel_bias is not None:
        rel_bias = rel_bias.astype(dtype, copy=False)
    pad = (-n) % c
    if pad:
        widths = [(0, 0)] * (quad_q.ndim - 2) + [(0, pad), (0, 0)]
        quad_q, quad_k, lin_q, lin_k, v = (np.pad(a, widths) for a in (quad_q, quad_k, lin_q, lin_k, v))
    big_n = n + pad
    g = big_n // c

    def chunks(a: np.ndarray) -> np.ndarray:  # (..., N, w) -> (..., G, c, w)
        return a.reshape(*a.shape[:-2], g, c, a.shape[-1])

    out = np.zeros(v.shape, dtype=dtype)
    out = chunks(out)
    vc = chunks(v)
    if mode in ("mixed", "local"):
        bias = None if rel_bias is None else rel_pos_bias(c, rel_bias)
        a = relu2_attention(chunks(quad_q), chunks(quad_k), bias, causal)  # (..., G, c, c)
        out = out + a @ vc
    if mode in ("mixed", "global"):
        states = chunk_linear_states(lin_k, v, c, causal)  # (..., G, s, e)
        out = out + (chunks(lin_q) @ states) / c
    out = out.reshape(*out.shape[:-3], big_n, out.shape[-1])
    return out[..., :n, :]


def mixed_chunk_masks(
    n: int, chunk_size: int, causal: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Who sees whom in mixed chunk attention: two boolean ``(n, n)`` masks ``(local,
    linear)``, True where query ``i`` reaches key ``j`` through that part (eq. 6-8).

    Token ``i`` is in chunk ``i // chunk_size`` (the last chunk may be short).
    ``local``: the same chunk, and ``j <= i`` if ``causal`` (eq. 6). ``linear``: every
    pair (non-causal, eq. 7: the query's own chunk included) or the earlier chunks only
    (causal, eq. 8: ``chunk(j) < chunk(i)``).
    """
    n = check_int("n", n, min_value=1)
    c = check_int("chunk_size", chunk_size, min_value=1)
    return _masks(n, c, check_bool("causal", causal))


def _masks(n: int, c: int, causal: bool) -> tuple[np.ndarray, np.ndarray]:
    pos = np.arange(n)
    chunk = pos // c
    same_chunk = chunk[:, None] == chunk[None, :]
    if causal:
        local = same_chunk & (pos[None, :] <= pos[:, None])  # lower triangle in a chunk
        linear = chunk[None, :] < chunk[:, None]  # earlier chunks only: h < g
    else:
        local = same_chunk
        linear = np.ones((n, n), dtype=bool)  # every chunk, the query's own included
    return local, linear


def mixed_chunk_dense(
    quad_q: np.ndarray,
    quad_k: np.ndarray,
    lin_q: np.ndarray,
    lin_k: np.ndarray,
    v: np.ndarray,
    chunk_size: int,
    causal: bool = False,
    rel_bias: np.ndarray | None = None,
    mode: str = "mixed",
) -> np.ndarray:
    """Mixed chunk attention by its definition, as one ``n x n`` mixing matrix: the
    same arguments and result as :func:`mixed_chunk_attention`, at ``O(n^2)`` cost.

    ``(A_quad + A_lin) V`` with the masks of :func:`mixed_chunk_masks`:
    ``A_quad = relu(Q_quad K_quad^T / c + b)^2`` on the local pairs (``b`` from
    :func:`rel_pos_bias`, the bias of each pair's offset) and ``A_lin = Q_lin K_lin^T
    / c`` on the linear pairs, zero elsewhere; ``mode`` keeps one of the two. Short
    enough to check by eye: the definition the chunked code is tested against.
    A masked pair is replaced by zero, yet ``A @ V`` still multiplies it by its value:
    a NaN value reaches every output row, where the chunked code spreads it only to
    the rows that see it (docs/ARCHITECTURE.md, "Non-finite values").
    """
    check_mixed_inputs(quad_q, quad_k, lin_q, lin_k, v)
    n = quad_q.shape[-2]
    c = check_chunk(n, chunk_size, exact=False)
    causal = check_bool("causal", causal)
    check_choice("mode", mode, MODES)
    check_rel_bias(rel_bias)
    dtype = np.result_type(quad_q, quad_k, lin_q, lin_k, v)
    local, linear = _masks(n, c, causal)  # (n = 0 too, as the chunked code)
    a = np.zeros((*quad_q.shape[:-1], n), dtype=dtype)
    if mode in ("mixed", "local"):
        logits = quad_q @ np.swapaxes(quad_k, -1, -2) / c
        if rel_bias is not None and n:
            logits = logits + rel_pos_bias(n, rel_bias.astype(dtype, copy=False))
        a = a + np.where(local, np.maximum(logits, 0.0) ** 2, 0.0)
    if mode in ("mixed", "global"):
        a = a + np.where(linear, lin_q @ np.swapaxes(lin_k, -1, -2) / c, 0.0)
    return a @ v


def flash_layer(
    x: np.ndarray, params: Mapping[str, np.ndarray], chunk_size: int, causal: bool = False, mode: str = "mixed"
) -> np.ndarray:
    """One FLASH layer (eq. 9): ``x + [U * (Vhat_quad + Vhat_lin)] W_o + b_o``, cost linear in ``n``.

    ``params``: see :func:`gau_param_shapes` with ``n_qk = 4`` (rows of ``gamma``/``beta``: Q_quad, K_quad,
    Q_lin, K_lin). With ``causal=True`` and ``chunk_size == n`` it equals :func:`gau` on the first two rows.
    """
    check_x(x)
    e, _ = layer_dims(x, params, n_qk=4)
    c = check_int("chunk_size", chunk_size, min_value=1)
    u, v, z = _uvz(x, params, e)
    base = scale_offset(z, params["gamma"], params["beta"])  # (..., n, 4, s)
    qq, kq, ql, kl = (base[..., i, :] for i in range(4))
    att = mixed_chunk_attention(qq, kq, ql, kl, v, c, causal=causal, rel_bias=params["rel_bias"], mode=mode)
    return x + (u * att) @ params["w_o"] + params["b_o"]
