"""Tests of effx_lab.flash (chapter 7, FLASH): GLU, GAU, mixed chunk attention, params and costs.

Every property is checked against an explicit O(n^2) computation written here from the
paper's equations (Hua et al. 2022, eq. 1-9). Mixed chunk attention's O(n^2) form is the
package's own ``mixed_chunk_dense`` (07.2 shows it as the definition), pinned here pair
by pair to eq. 6-8, with its masks ``mixed_chunk_masks``. Properties run on the NumPy
reference and, when it imports, on ``torch_ops`` through a small adapter (NumPy float64
in, torch float64 in the call, NumPy out). The reference-vs-torch agreement on random
inputs lives in tests/ch07_flash/test_flash_agreement.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _backends import TRANSCENDENTAL_ULPS, backends, network_atol, unit_roundoff

from effx_lab.attention import params as AP
from effx_lab.flash import costs as FC
from effx_lab.flash import params as FP
from effx_lab.flash import reference as F
from effx_lab.flash import shapes as FS

# ------------------------------------------------------------------------------------------------------
# backends: the reference, and torch_ops behind a numpy <-> torch adapter
# ------------------------------------------------------------------------------------------------------
BACKENDS = backends(F, "effx_lab.flash.torch_ops")


# ------------------------------------------------------------------------------------------------------
# random inputs and the explicit O(n^2) forms, written from the paper's equations
# ------------------------------------------------------------------------------------------------------
def _rand(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.standard_normal(shape)


def _layer_params(d: int, e: int, s: int, n_qk: int, max_rel: int, seed: int = 0) -> dict[str, np.ndarray]:
    """float64 GAU/FLASH weights with every entry random and of order 1 (the init has beta = rel_bias = 0)."""
    rng = np.random.default_rng(seed)
    p = {}
    for key, shape in FS.gau_param_shapes(d, e, s, n_qk, 2 * max_rel + 1).items():
        if key in ("w_uvz", "w_o"):
            p[key] = rng.standard_normal(shape) / np.sqrt(shape[0])
        elif key == "ln_g":
            p[key] = 1.0 + 0.3 * rng.standard_normal(shape)
        elif key in ("gamma", "beta", "rel_bias"):
            p[key] = rng.standard_normal(shape)
        else:
            p[key] = 0.3 * rng.standard_normal(shape)
    return p


def _glu_params(d: int, e: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        k: rng.standard_normal(sh) / (np.sqrt(sh[0]) if len(sh) == 2 else 3.0)
        for k, sh in FS.glu_param_shapes(d, e).items()
    }


def _inputs(rng: np.random.Generator, batch: tuple[int, ...], n: int, s: int, e: int) -> list[np.ndarray]:
    """quad_q, quad_k, lin_q, lin_k (..., n, s) and v (..., n, e)."""
    return [_rand(rng, *batch, n, s) for _ in range(4)] + [_rand(rng, *batch, n, e)]


def _sw(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


def _ln(x: np.ndarray, g: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5) * g + b


def _toeplitz(n: int, w: np.ndarray, m: int | None = None) -> np.ndarray:
    m = n if m is None else m
    r = (len(w) - 1) // 2
    return np.array([[w[min(max(j - i, -r), r) + r] for j in range(m)] for i in range(n)])


def _explicit_uvz(x, p):
    e = p["w_o"].shape[0]
    uvz = _sw(_ln(x, p["ln_g"], p["ln_b"]) @ p["w_uvz"] + p["b_uvz"])
    return uvz[..., :e], uvz[..., e : 2 * e], uvz[..., 2 * e :]


def _explicit_flash(x, p, c, causal, mode="mixed"):
    u, v, z = _explicit_uvz(x, p)
    qq, kq, lq, lk = (z * p["gamma"][i] + p["beta"][i] for i in range(4))
    att = F.mixed_chunk_dense(qq, kq, lq, lk, v, c, causal, p["rel_bias"], mode)
    return x + (u * att) @ p["w_o"] + p["b_o"]


def _explicit_gau(x, p, causal):
    u, v, z = _explicit_uvz(x, p)
    q, k = (z * p["gamma"][i] + p["beta"][i] for i in range(2))
    n = x.shape[-2]
    a = np.maximum(q @ np.swapaxes(k, -1, -2) / n + _toeplitz(n, p["rel_bias"]), 0.0) ** 2
    if causal:
        a = a * np.tril(np.ones((n, n)))
    return x + (u * (a @ v)) @ p["w_o"] + p["b_o"]


RTOL = 1e-10
ATOL = 1e-12
NC = [pytest.param(12, 4, id="n12-c4"), pytest.param(10, 4, id="n10-c4"), pytest.param(7, 3, id="n7-c3"),
      pytest.param(5, 5, id="n5-c5"), pytest.param(3, 4, id="n3-c4"), pytest.param(6, 1, id="n6-c1")]  # fmt: skip


# ======================================================================================================
# building blocks: swish, glu, scale_offset, rel_pos_bias, relu2_attention
# ======================================================================================================
@pytest.mark.parametrize("B", BACKENDS)
def test_swish_values(B):
    x = np.array([-50.0, -1.0, 0.0, 1.0, 2.0, 50.0])
    got = B.swish(x)
    np.testing.assert_allclose(got, x / (1 + np.exp(-x)), rtol=1e-12, atol=1e-300)
    assert got[2] == 0.0
    assert got[3] == pytest.approx(0.7310585786300049, rel=1e-12)
    assert got[5] == pytest.approx(50.0, rel=1e-12) and abs(got[0]) < 1e-19
    assert got.dtype == np.float64 and B.swish(x.astype(np.float32)).dtype == np.float32


@pytest.mark.parametrize("B", BACKENDS)
def test_glu_definition_and_zero_output_weight(B):
    rng = np.random.default_rng(0)
    d, e = 6, 10
    p = _glu_params(d, e)
    x = _rand(rng, 2, 5, d)
    expected = (_sw(x @ p["w_u"] + p["b_u"]) * _sw(x @ p["w_v"] + p["b_v"])) @ p["w_o"] + p["b_o"]
    got = B.glu(x, p)
    assert got.shape == (2, 5, d)
    np.testing.assert_allclose(got, expected, rtol=RTOL, atol=ATOL)
    # no residual: with w_o = 0 every token's output is exactly b_o, whatever x
    out = B.glu(x, {**p, "w_o": np.zeros((e, d))})
    np.testing.assert_array_equal(out, np.broadcast_to(p["b_o"], x.shape))
    # no token mixing: each token alone gives the same row
    np.testing.assert_allclose(B.glu(x[:, 2:3], p), got[:, 2:3], rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("B", BACKENDS)
def test_scale_offset_values(B):
    rng = np.random.default_rng(1)
    z, gamma, beta = _rand(rng, 2, 5, 3), _rand(rng, 4, 3), _rand(rng, 4, 3)
    got = B.scale_offset(z, gamma, beta)
    assert got.shape == (2, 5, 4, 3)
    for i in range(4):
        np.testing.assert_allclose(got[..., i, :], z * gamma[i] + beta[i], rtol=1e-14)


@pytest.mark.parametrize("B", BACKENDS)
def test_rel_pos_bias_toeplitz_and_clipping(B):
    w = np.array([10.0, 20.0, 30.0, 40.0, 50.0])  # R = 2: offsets -2..2
    b = B.rel_pos_bias(6, w)
    assert b.shape == (6, 6)
    np.testing.assert_array_equal(b, _toeplitz(6, w))
    for i in range(6):
        for j in range(6):
            off = j - i
            assert b[i, j] == w[min(max(off, -2), 2) + 2]
            if 0 < i and 0 < j:
                assert b[i, j] == b[i - 1, j - 1]  # Toeplitz
    assert (np.diag(b) == 30.0).all()
    assert b[0, 5] == 50.0 and b[5, 0] == 10.0  # clipped beyond R
    # rectangular, and R = 0 (one shared scalar), and R larger than the sequence
    np.testing.assert_array_equal(B.rel_pos_bias(3, w, 5), _toeplitz(3, w, 5))
    np.testing.assert_array_equal(B.rel_pos_bias(4, np.array([7.0])), np.full((4, 4), 7.0))
    w9 = np.arange(9.0)
    np.testing.assert_array_equal(B.rel_pos_bias(3, w9), [[4, 5, 6], [3, 4, 5], [2, 3, 4]])


@pytest.mark.parametrize("B", BACKENDS)
@pytest.mark.parametrize("causal", [False, True])
def test_relu2_attention_definition(B, causal):
    rng = np.random.default_rng(2)
    n, s = 6, 4
    q, k = 2 * _rand(rng, 3, n, s), 2 * _rand(rng, 3, n, s)
    bias = _rand(rng, n, n)
    a = B.relu2_attention(q, k, bias, causal=causal)
    assert a.shape == (3, n, n)
    expected = np.maximum(q @ np.swapaxes(k, -1, -2) / n + bias, 0) ** 2
    if causal:
        expected = expected * np.tril(np.ones((n, n)))
        assert (a[..., np.triu_indices(n, 1)[0], np.triu_indices(n, 1)[1]] == 0).all()
    np.testing.assert_allclose(a, expected, rtol=RTOL, atol=ATOL)
    assert (a >= 0).all() and (a > 0).any()
    # no bias: relu(q k^T / m)^2
    np.testing.assert_allclose(
        B.relu2_attention(q, k, causal=causal), B.relu2_attention(q, k, np.zeros((n, n)), causal=causal), rtol=0
    )


@pytest.mark.parametrize("B", BACKENDS)
def test_relu2_attention_divides_by_number_of_keys(B):
    rng = np.random.default_rng(3)
    q, k = _rand(rng, 3, 4), _rand(rng, 8, 4)
    a = B.relu2_attention(q, k)
    assert a.shape == (3, 8)
    np.testing.assert_allclose(a, np.maximum(q @ k.T / 8, 0) ** 2, rtol=RTOL)
    # repeating every key twice doubles m, which halves every logit: A quarters
    a2 = B.relu2_attention(q, np.concatenate([k, k]))
    np.testing.assert_allclose(a2[:, :8], a / 4, rtol=RTOL)
    np.testing.assert_allclose(a2[:, 8:], a / 4, rtol=RTOL)


# ======================================================================================================
# GAU
# ======================================================================================================
@pytest.mark.parametrize("B", BACKENDS)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("batch", [(), (2,), (2, 2)])
def test_gau_equals_explicit(B, causal, batch):
    rng = np.random.default_rng(4)
    d, e, s, n = 6, 12, 4, 7
    p = _layer_params(d, e, s, 2, max_rel=3, seed=5)
    x = _rand(rng, *batch, n, d)
    got = B.gau(x, p, causal=causal)
    assert got.shape == x.shape
    np.testing.assert_allclose(got, _explicit_gau(x, p, causal), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("B", BACKENDS)
def test_gau_permutation_equivariant_without_rel_bias(B):
    rng = np.random.default_rng(6)
    d, n = 6, 9
    p = _layer_params(d, 12, 4, 2, max_rel=4, seed=7)
    x = _rand(rng, n, d)
    perm = rng.permutation(n)
    p0 = {**p, "rel_bias": np.zeros_like(p["rel_bias"])}
    np.testing.assert_allclose(B.gau(x[perm], p0), B.gau(x, p0)[perm], rtol=RTOL, atol=ATOL)
    # the relative position bias is what breaks the symmetry
    assert not np.allclose(B.gau(x[perm], p), B.gau(x, p)[perm])


@pytest.mark.parametrize("B", BACKENDS)
@pytest.mark.parametrize("causal", [False, True])
def test_gau_and_flash_batch_rows_are_independent(B, causal):
    rng = np.random.default_rng(8)
    d = 6
    pg = _layer_params(d, 12, 4, 2, max_rel=3, seed=9)
    pf = _layer_params(d, 12, 4, 4, max_rel=3, seed=10)
    x = _rand(rng, 3, 10, d)
    gau_all, flash_all = B.gau(x, pg, causal=causal), B.flash_layer(x, pf, 4, causal=causal)
    for i in range(3):
        np.testing.assert_allclose(B.gau(x[i], pg, causal=causal), gau_all[i], rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(
            B.flash_layer(x[i : i + 1], pf, 4, causal=causal), flash_all[i : i + 1], rtol=RTOL, atol=ATOL
        )


# ======================================================================================================
# chunk_linear_states (eq. 7-8)
# ======================================================================================================
@pytest.mark.parametrize("B", BACKENDS)
@pytest.mark.parametrize("n,c", [(12, 4), (6, 6), (5, 1), (8, 2)])
def test_chunk_linear_states(B, n, c):
    rng = np.random.default_rng(11)
    s, e = 3, 5
    lk, v = _rand(rng, 2, n, s), _rand(rng, 2, n, e)
    g = n // c
    kv = [np.swapaxes(lk[:, h * c : (h + 1) * c], -1, -2) @ v[:, h * c : (h + 1) * c] for h in range(g)]
    causal = B.chunk_linear_states(lk, v, c, causal=True)
    full = B.chunk_linear_states(lk, v, c)
    assert causal.shape == full.shape == (2, g, s, e)
    assert (causal[:, 0] == 0).all()  # the first chunk sees no previous chunk
    for gi in range(g):
        np.testing.assert_allclose(
            causal[:, gi], sum((kv[h] for h in range(gi)), np.zeros((2, s, e))), rtol=RTOL, atol=ATOL
        )
        np.testing.assert_allclose(full[:, gi], sum(kv), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(full[:, 0], np.swapaxes(lk, -1, -2) @ v, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("B", BACKENDS)
def test_chunk_linear_states_needs_divisible_length(B):
    z = np.zeros((10, 3))
    for c in (3, 4, 11):
        with pytest.raises(ValueError, match="chunk_size"):
            B.chunk_linear_states(z, z, c)
        with pytest.raises(ValueError, match="chunk_size"):
            B.chunk_linear_states(z, z, c, causal=True)


# ======================================================================================================
# mixed chunk attention: local, global, mixed vs the explicit masked n x n forms
# ======================================================================================================
@pytest.mark.parametrize("B", BACKENDS)
@pytest.mark.parametrize("n,c", NC)
@pytest.mark.parametrize("causal", [False, True])
def test_mixed_chunk_masks_are_eq_6_to_8(B, n, c, causal):
    local, linear = B.mixed_chunk_masks(n, c, causal)
    assert local.dtype == linear.dtype == np.bool_
    assert local.shape == linear.shape == (n, n)
    for i in range(n):
        for j in range(n):
            same = i // c == j // c
            assert local[i, j] == (same and (j <= i or not causal)), (i, j)
            assert linear[i, j] == (j // c < i // c if causal else True), (i, j)
    if causal:  # every causal pair is seen once: exactly (locally) or through a state
        assert not (local & linear).any()
        np.testing.assert_array_equal(local | linear, np.tril(np.ones((n, n), bool)))
    else:  # the global part covers every pair, the query's own chunk included
        assert linear.all()
        assert local.sum() == sum(min(c, n - g) ** 2 for g in range(0, n, c))


@pytest.mark.parametrize("B", BACKENDS)
@pytest.mark.parametrize("n,c", NC)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("mode", FS.MODES)
def test_mixed_chunk_dense_is_eq_6_to_8_pair_by_pair(B, n, c, causal, mode):
    """With V = I the output is the mixing matrix: each entry is the paper's formula for
    its pair."""
    rng = np.random.default_rng(24)
    qq, kq, lq, lk = (_rand(rng, n, 3) for _ in range(4))
    w = _rand(rng, 5)  # offsets -2..2
    mix = B.mixed_chunk_dense(qq, kq, lq, lk, np.eye(n), c, causal, w, mode)
    for i in range(n):
        for j in range(n):
            same, before = i // c == j // c, j // c < i // c
            want = 0.0
            if mode != "global" and same and (j <= i or not causal):  # eq. 6
                want += max(qq[i] @ kq[j] / c + w[min(max(j - i, -2), 2) + 2], 0.0) ** 2
            # eq. 7: every chunk h; eq. 8: h < g
            if mode != "local" and (before or not causal):
                want += lq[i] @ lk[j] / c
            np.testing.assert_allclose(
                mix[i, j], want, rtol=RTOL, atol=ATOL, err_msg=f"pair {i, j}"
            )
    v = _rand(rng, 2, n, 4)
    args = [np.broadcast_to(a, (2, n, 3)) for a in (qq, kq, lq, lk)]
    np.testing.assert_allclose(
        B.mixed_chunk_dense(*args, v, c, causal, w, mode), mix @ v, rtol=RTOL, atol=ATOL
    )


@pytest.mark.parametrize("B", BACKENDS)
def test_mixed_chunk_dense_keeps_the_dtype_of_its_inputs(B):
    a, v = np.ones((6, 3), np.float32), np.ones((6, 2), np.float32)
    out = B.mixed_chunk_dense(a, a, a, a, v, 4, rel_bias=np.zeros(3))  # a float64 bias
    assert out.dtype == np.float32 and out.shape == (6, 2)


@pytest.mark.parametrize("B", BACKENDS)
@pytest.mark.parametrize("name", ["mixed_chunk_attention", "mixed_chunk_dense"])
def test_mixed_chunk_attention_of_an_empty_sequence_is_empty(B, name):
    a, v = np.zeros((2, 0, 3)), np.zeros((2, 0, 4))
    for causal in (False, True):
        out = getattr(B, name)(a, a, a, a, v, 2, causal=causal, rel_bias=np.zeros(3))
        assert out.shape == (2, 0, 4)


@pytest.mark.parametrize("B", BACKENDS)
@pytest.mark.parametrize("n,c", NC)
@pytest.mark.parametrize("causal", [False, True])
def test_mixed_chunk_attention_global_equals_masked_quadratic(B, n, c, causal):
    rng = np.random.default_rng(12)
    qq, kq, lq, lk, v = _inputs(rng, (2,), n, 3, 5)
    got = B.mixed_chunk_attention(qq, kq, lq, lk, v, c, causal=causal, mode="global")
    assert got.shape == (2, n, 5)
    want = F.mixed_chunk_dense(qq, kq, lq, lk, v, c, causal, mode="global")
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
    if causal:
        assert (got[:, : min(c, n)] == 0).all()  # the first chunk has no previous chunk


@pytest.mark.parametrize("B", BACKENDS)
@pytest.mark.parametrize("n,c", NC)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("with_bias", [False, True])
def test_mixed_chunk_attention_local_equals_block_diagonal(B, n, c, causal, with_bias):
    rng = np.random.default_rng(13)
    qq, kq, lq, lk, v = _inputs(rng, (2,), n, 3, 5)
    rel = _rand(rng, 5) if with_bias else None
    got = B.mixed_chunk_attention(qq, kq, lq, lk, v, c, causal=causal, rel_bias=rel, mode="local")
    want = F.mixed_chunk_dense(qq, kq, lq, lk, v, c, causal, rel, mode="local")
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
    if n % c == 0:  # whole chunks: exactly relu2_attention on each chunk
        bias = None if rel is None else B.rel_pos_bias(c, rel)
        for g in range(n // c):
            sl = slice(g * c, (g + 1) * c)
            chunk = B.relu2_attention(qq[:, sl], kq[:, sl], bias, causal=causal) @ v[:, sl]
            np.testing.assert_allclose(got[:, sl], chunk, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("B", BACKENDS)
@pytest.mark.parametrize("n,c", NC)
@pytest.mark.parametrize("causal", [False, True])
def test_mixed_is_local_plus_global(B, n, c, causal):
    rng = np.random.default_rng(14)
    args = _inputs(rng, (), n, 4, 3)
    rel = 0.3 * _rand(rng, 3)
    mixed = B.mixed_chunk_attention(*args, c, causal=causal, rel_bias=rel)
    local = B.mixed_chunk_attention(*args, c, causal=causal, rel_bias=rel, mode="local")
    glob = B.mixed_chunk_attention(*args, c, causal=causal, rel_bias=rel, mode="global")
    np.testing.assert_allclose(mixed, local + glob, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(
        B.mixed_chunk_attention(*args, c, causal=causal, rel_bias=rel, mode="mixed"), mixed, rtol=0
    )
    assert np.abs(local).max() > 1e-3 and (n <= c and causal or np.abs(glob).max() > 1e-3)


@pytest.mark.parametrize("B", BACKENDS)
@pytest.mark.parametrize("n,c", [(10, 4), (7, 3), (3, 4), (9, 2)])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("mode", FS.MODES)
def test_mixed_chunk_attention_padding_is_zero_pad_then_crop(B, n, c, causal, mode):
    rng = np.random.default_rng(15)
    args = _inputs(rng, (2,), n, 3, 4)
    rel = _rand(rng, 5)
    big = -(-n // c) * c
    padded = [np.concatenate([a, np.zeros((2, big - n, a.shape[-1]))], axis=-2) for a in args]
    got = B.mixed_chunk_attention(*args, c, causal=causal, rel_bias=rel, mode=mode)
    want = B.mixed_chunk_attention(*padded, c, causal=causal, rel_bias=rel, mode=mode)[:, :n]
    assert got.shape == (2, n, 4)
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("B", BACKENDS)
@pytest.mark.parametrize("mode", FS.MODES)
@pytest.mark.parametrize("t", [0, 2, 3, 4, 7, 8, 9])
def test_mixed_chunk_attention_causal_never_looks_ahead(B, mode, t):
    rng = np.random.default_rng(16)
    n, c = 10, 4  # chunks [0..3], [4..7], [8, 9] (+2 padding)
    args = _inputs(rng, (2,), n, 3, 4)
    rel = _rand(rng, 7)
    base = B.mixed_chunk_attention(*args, c, causal=True, rel_bias=rel, mode=mode)
    for which in range(5):  # each of quad_q, quad_k, lin_q, lin_k, v
        moved = [a.copy() for a in args]
        moved[which][:, t:] += 2.0 + _rand(rng, 2, n - t, moved[which].shape[-1])
        out = B.mixed_chunk_attention(*moved, c, causal=True, rel_bias=rel, mode=mode)
        np.testing.assert_array_equal(out[:, :t], base[:, :t])
    moved = [a + (np.arange(n) >= t)[:, None] * _rand(rng, *a.shape) for a in args]
    out = B.mixed_chunk_attention(*moved, c, causal=True, rel_bias=rel, mode=mode)
    np.testing.assert_array_equal(out[:, :t], base[:, :t])
    if mode != "global" or t >= c:  # (the global part of the first chunk is zero whatever the inputs)
        assert not np.allclose(out[:, t], base[:, t])


@pytest.mark.parametrize("B", BACKENDS)
def test_mixed_chunk_attention_non_causal_does_look_ahead(B):
    # the counterpart of the causal test: without the mask, the first token sees the last chunk
    args = _inputs(np.random.default_rng(17), (), 8, 3, 4)
    moved = args[:4] + [args[4] + (np.arange(8) >= 6)[:, None] * 1.0]
    for mode in ("mixed", "global"):
        assert not np.allclose(
            B.mixed_chunk_attention(*moved, 4, mode=mode)[0], B.mixed_chunk_attention(*args, 4, mode=mode)[0]
        )
    np.testing.assert_array_equal(
        B.mixed_chunk_attention(*moved, 4, mode="local")[:4], B.mixed_chunk_attention(*args, 4, mode="local")[:4]
    )


# ======================================================================================================
# the FLASH layer
# ======================================================================================================
@pytest.mark.parametrize("B", BACKENDS)
@pytest.mark.parametrize("n,c", NC)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("mode", FS.MODES)
def test_flash_layer_equals_explicit(B, n, c, causal, mode):
    rng = np.random.default_rng(18)
    d, e, s = 6, 12, 4
    p = _layer_params(d, e, s, 4, max_rel=2, seed=19)
    x = _rand(rng, 2, n, d)
    got = B.flash_layer(x, p, c, causal=causal, mode=mode)
    assert got.shape == x.shape
    np.testing.assert_allclose(got, _explicit_flash(x, p, c, causal, mode), rtol=RTOL, atol=ATOL)
    assert not np.allclose(got, x)


@pytest.mark.parametrize("B", BACKENDS)
@pytest.mark.parametrize("n", [1, 5, 8])
def test_causal_flash_with_one_chunk_is_gau(B, n):
    rng = np.random.default_rng(20)
    d = 6
    p = _layer_params(d, 12, 4, 4, max_rel=3, seed=21)
    pg = {**p, "gamma": p["gamma"][:2].copy(), "beta": p["beta"][:2].copy()}
    x = _rand(rng, 2, n, d)
    np.testing.assert_allclose(B.flash_layer(x, p, n, causal=True), B.gau(x, pg, causal=True), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(B.flash_layer(x, p, n, mode="local"), B.gau(x, pg), rtol=RTOL, atol=ATOL)
    # non-causal mixed with one chunk adds the global part over the whole sequence: not GAU
    if n > 1:
        assert not np.allclose(B.flash_layer(x, p, n), B.gau(x, pg))


@pytest.mark.parametrize("B", BACKENDS)
@pytest.mark.parametrize("mode", FS.MODES)
@pytest.mark.parametrize("t", [0, 1, 3, 4, 5, 8, 10])
def test_causal_flash_layer_never_looks_ahead(B, mode, t):
    rng = np.random.default_rng(22)
    n, c, d = 11, 4, 6  # chunk boundaries at 4 and 8, last chunk partial
    p = _layer_params(d, 12, 4, 4, max_rel=2, seed=23)
    x = _rand(rng, 2, n, d)
    base = B.flash_layer(x, p, c, causal=True, mode=mode)
    x2 = x.copy()
    x2[:, t] += 1.0 + _rand(rng, 2, d)
    out = B.flash_layer(x2, p, c, causal=True, mode=mode)
    np.testing.assert_array_equal(out[:, :t], base[:, :t])
    assert not np.allclose(out[:, t], base[:, t])
    later = np.arange(t + 1, n)
    reach = {"local": later[later // c == t // c], "global": later[later // c > t // c], "mixed": later}[mode]
    if len(reach):  # it does reach the later tokens it may see: same chunk (local), later chunks (global)
        assert not np.allclose(out[:, reach], base[:, reach])  # (a single pair's relu^2 weight may be 0)
    np.testing.assert_array_equal(
        np.delete(out, np.r_[: t + 1, reach], axis=1), np.delete(base, np.r_[: t + 1, reach], axis=1)
    )


@pytest.mark.parametrize("B", BACKENDS)
@pytest.mark.parametrize("c", [1, 3, 4, 12])
def test_causal_flash_layer_prefix_of_longer_sequence(B, c):
    rng = np.random.default_rng(24)
    d, n = 6, 12
    p = _layer_params(d, 12, 4, 4, max_rel=3, seed=25)
    x = _rand(rng, n, d)
    full = B.flash_layer(x, p, c, causal=True)
    for m in (1, 2, 5, 7, 8, 11):
        np.testing.assert_allclose(B.flash_layer(x[:m], p, c, causal=True), full[:m], rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("B", BACKENDS)
def test_flash_global_non_causal_is_permutation_equivariant(B):
    # without the local part and without the causal mask, the linear part treats the sequence as a set
    rng = np.random.default_rng(26)
    p = _layer_params(6, 12, 4, 4, max_rel=2, seed=27)
    x = _rand(rng, 8, 6)
    perm = rng.permutation(8)
    np.testing.assert_allclose(
        B.flash_layer(x[perm], p, 4, mode="global"), B.flash_layer(x, p, 4, mode="global")[perm], rtol=RTOL, atol=ATOL
    )
    assert not np.allclose(B.flash_layer(x[perm], p, 4), B.flash_layer(x, p, 4)[perm])


@pytest.mark.parametrize("B", BACKENDS)
def test_flash_layer_zero_output_weight_is_residual_plus_bias(B):
    rng = np.random.default_rng(28)
    p = _layer_params(6, 12, 4, 4, max_rel=2, seed=29)
    x = _rand(rng, 7, 6)
    out = B.flash_layer(x, {**p, "w_o": np.zeros_like(p["w_o"])}, 3, causal=True)
    np.testing.assert_allclose(out, x + p["b_o"], rtol=1e-15)


def test_flash_layer_float32_with_init_params():
    p = FP.init_flash_params(16, s=8, max_rel=4, seed=0)
    x = np.random.default_rng(0).standard_normal((2, 10, 16)).astype(np.float32)
    out = F.flash_layer(x, p, 4, causal=True)
    assert out.dtype == np.float32 and out.shape == x.shape and np.isfinite(out).all()
    p64 = {k: v.astype(np.float64) for k, v in p.items()}
    ref = F.flash_layer(x.astype(np.float64), p64, 4, causal=True)
    # the float64 run on the same values is exact for this purpose; the float32 one within the derived
    # tolerance of the layer's longest path: LayerNorm (d + 2), the U/V/Z projection (d), swish, scale-offset,
    # the local logits (s), relu^2 and the chunk sum (c), the global state over all n tokens and its product
    # with the queries (s), the gate and the output projection (e = 2 d), the residual
    d, s, c, n, e = 16, 8, 4, 10, 32
    k_path = (d + 2) + d + (TRANSCENDENTAL_ULPS + 2) + 2 + s + 2 + c + n + s + 1 + e + 2
    np.testing.assert_allclose(out, ref, rtol=0, atol=network_atol(k_path, ref, unit_roundoff(np.float32)))


# ======================================================================================================
# costs
# ======================================================================================================
@pytest.mark.parametrize("d,expansion,s,max_rel", [(8, 2, 4, 3), (16, 1, 8, 0), (5, 3, 7, 10)])
def test_layer_params_match_the_initialisers(d, expansion, s, max_rel):
    assert FC.layer_params("gau", d, expansion=expansion, s=s, max_rel=max_rel) == AP.count_params(
        FP.init_gau_params(d, expansion, s, max_rel)
    )
    assert FC.layer_params("flash", d, expansion=expansion, s=s, max_rel=max_rel) == AP.count_params(
        FP.init_flash_params(d, expansion, s, max_rel)
    )
    assert FC.layer_params("glu", d, expansion=expansion) == FP.count_params(FP.init_glu_params(d, expansion))
    # FLASH has two more rows of gamma and beta than GAU
    assert (
        FC.layer_params("flash", d, expansion=expansion, s=s, max_rel=max_rel)
        - FC.layer_params("gau", d, expansion=expansion, s=s, max_rel=max_rel)
        == 4 * s
    )


@pytest.mark.parametrize("d,d_ff", [(8, None), (8, 12), (12, 5)])
def test_layer_params_transformer_matches_initialiser(d, d_ff):
    assert FC.layer_params("transformer", d, d_ff=d_ff) == AP.count_params(
        AP.init_transformer_layer_params(d, 1, d_ff=d_ff)
    )


def test_layer_params_hand_computed():
    # GAU, d=2, e=4, s=3, R=1: ln 2+2, w_uvz 2*11, b_uvz 11, gamma/beta 2*3 each, rel 3, w_o 4*2, b_o 2
    assert FC.layer_params("gau", 2, expansion=2, s=3, max_rel=1) == 4 + 22 + 11 + 12 + 3 + 8 + 2 == 62
    assert FC.layer_params("flash", 2, expansion=2, s=3, max_rel=1) == 62 + 12
    assert FC.layer_params("glu", 2, expansion=2) == 2 * (2 * 4 + 4) + 4 * 2 + 2 == 34
    assert FC.layer_params("transformer", 2) == 4 * (4 + 2) + (16 + 8) + (16 + 2) + 8 == 74
    # at the paper's widths a GAU layer has about half the weights of attention + FFN (12 d^2)
    d = 512
    ratio = FC.layer_params("gau", d) / FC.layer_params("transformer", d)
    assert 0.45 < ratio < 0.6


def test_layer_flops_hand_computed():
    # transformer n=4, d=2, d_ff=8: proj 2*4*(4*4 + 2*2*8) = 384, mixing 2*16*(2+2) = 128
    assert FC.layer_flops("transformer", 4, 2, d_ff=8) == {"projections": 384, "mixing": 128, "total": 512}
    assert FC.layer_flops("transformer", 4, 2) == FC.layer_flops("transformer", 4, 2, d_ff=8)
    # gau n=8, d=2, e=4, s=3: proj 2*8*(2*11 + 4*2) = 480, mixing 2*64*7 = 896
    assert FC.layer_flops("gau", 8, 2, expansion=2, s=3) == {"projections": 480, "mixing": 896, "total": 1376}
    # flash c=4: mixing 2*8*4*7 + 4*8*3*4 = 448 + 384 = 832
    assert FC.layer_flops("flash", 8, 2, expansion=2, s=3, chunk_size=4) == {
        "projections": 480,
        "mixing": 832,
        "total": 1312,
    }
    # a sequence shorter than a chunk is padded to one chunk; n = 6 with c = 4 is padded to 8
    assert FC.layer_flops("flash", 3, 2, expansion=2, s=3, chunk_size=4)["mixing"] == 2 * 4 * 4 * 7 + 4 * 4 * 3 * 4
    assert FC.layer_flops("flash", 6, 2, expansion=2, s=3, chunk_size=4)["mixing"] == 832
    for kind in ("transformer", "gau", "flash"):
        f = FC.layer_flops(kind, 16, 8)
        assert f["total"] == f["projections"] + f["mixing"] and all(isinstance(v, int) for v in f.values())


def test_layer_flops_scaling_in_n():
    for n in (256, 512, 1024):
        f1 = FC.layer_flops("flash", n, 64, s=32, chunk_size=128)
        f2 = FC.layer_flops("flash", 2 * n, 64, s=32, chunk_size=128)
        assert f2["mixing"] == 2 * f1["mixing"] and f2["projections"] == 2 * f1["projections"]
        g1, g2 = FC.layer_flops("gau", n, 64, s=32), FC.layer_flops("gau", 2 * n, 64, s=32)
        assert g2["mixing"] == 4 * g1["mixing"]
        t1, t2 = FC.layer_flops("transformer", n, 64), FC.layer_flops("transformer", 2 * n, 64)
        assert t2["mixing"] == 4 * t1["mixing"]
    # the chunk size only matters for flash
    assert FC.layer_flops("gau", 64, 8, chunk_size=4) == FC.layer_flops("gau", 64, 8, chunk_size=32)
    assert FC.layer_flops("flash", 64, 8, chunk_size=4) != FC.layer_flops("flash", 64, 8, chunk_size=32)
    # long sequences: flash mixing far below gau's
    assert FC.layer_flops("flash", 8192, 512)["mixing"] < FC.layer_flops("gau", 8192, 512)["mixing"] / 10


def test_model_flops():
    for kind in ("transformer", "gau", "flash"):
        one = FC.layer_flops(kind, 64, 16, s=8, chunk_size=16)["total"]
        assert FC.model_flops(kind, 64, 16, 1, s=8, chunk_size=16) == one
        assert FC.model_flops(kind, 64, 16, 6, s=8, chunk_size=16) == 6 * one
    assert (
        FC.model_flops("transformer", 64, 16, 2, d_ff=40) == 2 * FC.layer_flops("transformer", 64, 16, d_ff=40)["total"]
    )


def test_costs_bad_inputs():
    for bad in ("attention", "GAU", None):
        with pytest.raises(ValueError, match="^kind"):
            FC.layer_params(bad, 8)
        with pytest.raises(ValueError, match="^kind"):
            FC.layer_flops(bad, 8, 8)
        with pytest.raises(ValueError, match="^kind"):
            FC.model_flops(bad, 8, 8, 2)
    with pytest.raises(ValueError, match="^kind"):
        FC.layer_flops("glu", 8, 8)  # GLU has no token mixing: not a layer_flops kind
    with pytest.raises(ValueError, match="^d_model"):
        FC.layer_params("gau", 0)
    with pytest.raises(TypeError, match="^d_model"):
        FC.layer_params("gau", 8.0)
    with pytest.raises(ValueError, match="^expansion"):
        FC.layer_params("flash", 8, expansion=0)
    with pytest.raises(TypeError, match="^s must"):
        FC.layer_params("flash", 8, s=True)
    with pytest.raises(ValueError, match="^max_rel"):
        FC.layer_params("flash", 8, max_rel=-1)
    with pytest.raises(ValueError, match="^d_ff"):
        FC.layer_params("transformer", 8, d_ff=0)
    with pytest.raises(ValueError, match="^n must"):
        FC.layer_flops("gau", 0, 8)
    with pytest.raises(TypeError, match="^n must"):
        FC.layer_flops("gau", True, 8)
    with pytest.raises(ValueError, match="^chunk_size"):
        FC.layer_flops("flash", 8, 8, chunk_size=0)
    with pytest.raises(TypeError, match="^chunk_size"):
        FC.layer_flops("flash", 8, 8, chunk_size=2.0)
    with pytest.raises(TypeError, match="^d_ff"):
        FC.layer_flops("transformer", 8, 8, d_ff="32")
    with pytest.raises(ValueError, match="^n_layers"):
        FC.model_flops("gau", 8, 8, 0)
    with pytest.raises(TypeError, match="^n_layers"):
        FC.model_flops("gau", 8, 8, True)


# ======================================================================================================
# params
# ======================================================================================================
def test_init_gau_and_flash_params_shapes():
    for init, rows in ((FP.init_gau_params, 2), (FP.init_flash_params, 4)):
        p = init(8, expansion=2, s=4, max_rel=5)
        assert set(p) == set(FS.gau_param_shapes(8, 16, 4, rows, 11))
        assert p["gamma"].shape == p["beta"].shape == (rows, 4)
        assert p["rel_bias"].shape == (11,)
        assert p["w_uvz"].shape == (8, 2 * 16 + 4) and p["b_uvz"].shape == (36,)
        assert p["w_o"].shape == (16, 8) and p["b_o"].shape == (8,)
        assert all(v.dtype == np.float32 for v in p.values())
        assert (p["ln_g"] == 1).all() and (p["beta"] == 0).all() and (p["rel_bias"] == 0).all()
        assert (p["gamma"] != 0).all() and np.abs(p["gamma"]).max() < 0.2
        assert init(8, max_rel=0)["rel_bias"].shape == (1,)
        assert init(8)["gamma"].shape == (rows, 128) and init(8)["rel_bias"].shape == (255,)  # paper defaults
    g = FP.init_glu_params(6, expansion=3)
    assert g["w_u"].shape == g["w_v"].shape == (6, 18) and g["w_o"].shape == (18, 6) and g["b_o"].shape == (6,)


@pytest.mark.parametrize(
    "init",
    [
        lambda seed: FP.init_glu_params(8, seed=seed),
        lambda seed: FP.init_gau_params(8, s=4, seed=seed),
        lambda seed: FP.init_flash_params(8, s=4, seed=seed),
    ],
)
def test_flash_params_seeds(init):
    a, b, c = init(0), init(0), init(3)
    assert set(a) == set(b) == set(c)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    w = "w_u" if "w_u" in a else "w_uvz"
    assert not np.array_equal(a[w], c[w]) and not np.array_equal(a["w_o"], c["w_o"])


def test_flash_params_run_in_the_layers_and_convert_to_torch():
    x = np.random.default_rng(0).standard_normal((9, 8)).astype(np.float32)
    assert F.gau(x, FP.init_gau_params(8, s=4, max_rel=2)).shape == (9, 8)
    assert F.flash_layer(x, FP.init_flash_params(8, s=4, max_rel=2), 4).shape == (9, 8)
    assert F.glu(x, FP.init_glu_params(8)).shape == (9, 8)
    t = FP.to_torch(FP.init_flash_params(8, s=4), dtype=torch.float64)
    assert all(isinstance(v, torch.Tensor) and v.dtype == torch.float64 for v in t.values())


def test_flash_params_bad_inputs():
    for init in (FP.init_glu_params, FP.init_gau_params, FP.init_flash_params):
        with pytest.raises(ValueError, match="^d_model"):
            init(0)
        with pytest.raises(TypeError, match="^d_model"):
            init(True)
        with pytest.raises(ValueError, match="^expansion"):
            init(8, expansion=0)
        with pytest.raises(TypeError, match="^expansion"):
            init(8, expansion=1.5)
        with pytest.raises(ValueError, match="^seed"):
            init(8, seed=-1)
        with pytest.raises(TypeError, match="^seed"):
            init(8, seed=None)
        with pytest.raises(ValueError, match="^std"):
            init(8, std=-0.02)
        with pytest.raises(TypeError, match="^std"):
            init(8, std=True)
    for init in (FP.init_gau_params, FP.init_flash_params):
        with pytest.raises(ValueError, match="^s must"):
            init(8, s=0)
        with pytest.raises(TypeError, match="^s must"):
            init(8, s=4.0)
        with pytest.raises(ValueError, match="^max_rel"):
            init(8, max_rel=-1)
        with pytest.raises(TypeError, match="^max_rel"):
            init(8, max_rel=False)


# ======================================================================================================
# bad inputs for every public function of the reference (and torch_ops through the adapter)
# ======================================================================================================
@pytest.mark.parametrize("B", BACKENDS)
def test_swish_bad_inputs(B):
    with pytest.raises(TypeError, match="^x must"):
        B.swish([1.0])
    with pytest.raises(TypeError, match="^x must"):
        B.swish(np.arange(3))


@pytest.mark.parametrize("B", BACKENDS)
def test_glu_bad_inputs(B):
    p = _glu_params(4, 8)
    x = np.zeros((3, 4))
    with pytest.raises(TypeError, match="^x must"):
        B.glu(x.tolist(), p)
    with pytest.raises(TypeError, match="^x must"):
        B.glu(x.astype(np.int64), p)
    with pytest.raises(ValueError, match="^x must"):
        B.glu(np.zeros(4), p)
    with pytest.raises(ValueError, match="params"):
        B.glu(x, {k: v for k, v in p.items() if k != "w_u"})
    with pytest.raises(ValueError, match="params"):
        B.glu(x, {k: v for k, v in p.items() if k != "b_o"})
    with pytest.raises(ValueError, match=r"params\['w_u'\]"):
        B.glu(np.zeros((3, 5)), p)  # params for another width
    with pytest.raises(ValueError, match=r"params\['w_o'\]"):
        B.glu(x, {**p, "w_o": np.zeros((7, 4))})
    with pytest.raises(TypeError, match=r"params\['b_v'\]"):
        B.glu(x, {**p, "b_v": np.zeros(8, dtype=np.int32)})


def test_glu_params_not_a_dict_is_a_type_error():
    with pytest.raises(TypeError, match="params"):
        F.glu(np.zeros((3, 4)), [np.zeros((4, 8))])


def test_glu_params_list_value_is_a_type_error():
    p = _glu_params(4, 8)
    with pytest.raises(TypeError, match=r"params\['w_u'\]"):
        F.glu(np.zeros((3, 4)), {**p, "w_u": p["w_u"].tolist()})


@pytest.mark.parametrize("B", BACKENDS)
def test_scale_offset_bad_inputs(B):
    z, g = np.zeros((5, 3)), np.ones((2, 3))
    with pytest.raises(TypeError, match="^z must"):
        B.scale_offset(z.tolist(), g, g)
    with pytest.raises(TypeError, match="^gamma must"):
        B.scale_offset(z, g.astype(int), g)
    with pytest.raises(TypeError, match="^beta must"):
        B.scale_offset(z, g, [[0.0] * 3] * 2)
    with pytest.raises(ValueError, match="^gamma must"):
        B.scale_offset(z, np.ones(3), g)
    with pytest.raises(ValueError, match="^beta must"):
        B.scale_offset(z, g, np.ones((1, 2, 3)))
    with pytest.raises(ValueError, match="gamma"):
        B.scale_offset(z, np.ones((2, 4)), np.ones((2, 4)))  # s != z's last axis
    with pytest.raises(ValueError, match="beta"):
        B.scale_offset(z, g, np.ones((3, 3)))


@pytest.mark.parametrize("B", BACKENDS)
def test_rel_pos_bias_bad_inputs(B):
    w = np.zeros(5)
    with pytest.raises(ValueError, match="^n must"):
        B.rel_pos_bias(0, w)
    with pytest.raises(TypeError, match="^n must"):
        B.rel_pos_bias(True, w)
    with pytest.raises(TypeError, match="^n must"):
        B.rel_pos_bias(4.0, w)
    with pytest.raises(ValueError, match="^m must"):
        B.rel_pos_bias(4, w, 0)
    with pytest.raises(TypeError, match="^m must"):
        B.rel_pos_bias(4, w, False)
    with pytest.raises(ValueError, match="^weights"):
        B.rel_pos_bias(4, np.zeros(4))  # even length
    with pytest.raises(ValueError, match="^weights"):
        B.rel_pos_bias(4, np.zeros((5, 1)))
    with pytest.raises(TypeError, match="^weights"):
        B.rel_pos_bias(4, np.zeros(5, dtype=np.int64))
    with pytest.raises(TypeError, match="^weights"):
        B.rel_pos_bias(4, [0.0, 0.0, 0.0])


@pytest.mark.parametrize("B", BACKENDS)
def test_relu2_attention_bad_inputs(B):
    q = np.zeros((4, 3))
    with pytest.raises(TypeError, match="^q must"):
        B.relu2_attention(q.tolist(), q)
    with pytest.raises(TypeError, match="^k must"):
        B.relu2_attention(q, q.astype(np.int64))
    with pytest.raises(ValueError, match="q and k"):
        B.relu2_attention(q, np.zeros((4, 2)))
    with pytest.raises(ValueError, match="q and k"):
        B.relu2_attention(np.zeros(3), q)
    with pytest.raises(ValueError, match="q and k"):
        B.relu2_attention(np.zeros((2, 4, 3)), np.zeros((3, 4, 3)))
    with pytest.raises(ValueError, match="causal"):
        B.relu2_attention(q, np.zeros((5, 3)), causal=True)
    with pytest.raises(TypeError, match="^causal"):
        B.relu2_attention(q, q, causal=1)
    with pytest.raises(ValueError, match="^bias"):
        B.relu2_attention(q, q, np.zeros((4, 5)))
    with pytest.raises(ValueError, match="^bias"):
        B.relu2_attention(q, q, np.zeros(4))
    with pytest.raises(TypeError, match="^bias"):
        B.relu2_attention(q, q, [[0.0] * 4] * 4)
    with pytest.raises(TypeError, match="^bias"):
        B.relu2_attention(q, q, np.zeros((4, 4), dtype=bool))


def _bad_layer_params(p: dict[str, np.ndarray], n_qk: int) -> list[tuple[dict[str, np.ndarray], type, str]]:
    """(params, error type, regex) triples that gau (n_qk = 2) or flash_layer (n_qk = 4) must reject."""
    other = 4 if n_qk == 2 else 2
    return [
        ({k: v for k, v in p.items() if k != "w_o"}, ValueError, "w_o"),
        ({k: v for k, v in p.items() if k != "rel_bias"}, ValueError, "rel_bias"),
        ({k: v for k, v in p.items() if k != "b_uvz"}, ValueError, "params"),
        ({**p, "gamma": np.ones((other, p["gamma"].shape[1]))}, ValueError, r"params\['gamma'\]"),
        ({**p, "beta": np.ones((n_qk, p["gamma"].shape[1] + 1))}, ValueError, r"params\['beta'\]"),
        ({**p, "rel_bias": np.zeros(4)}, ValueError, r"params\['rel_bias'\]"),
        ({**p, "rel_bias": np.zeros((5, 1))}, ValueError, r"params\['rel_bias'\]"),
        ({**p, "w_uvz": p["w_uvz"][:, :-1]}, ValueError, r"params\['w_uvz'\]"),
        ({**p, "b_o": np.zeros(3)}, ValueError, r"params\['b_o'\]"),
        ({**p, "ln_g": p["ln_g"].astype(np.int64)}, TypeError, r"params\['ln_g'\]"),
    ]


@pytest.mark.parametrize("B", BACKENDS)
def test_gau_bad_inputs(B):
    d = 6
    p = _layer_params(d, 12, 4, 2, max_rel=2)
    x = np.zeros((5, d))
    assert B.gau(x, p).shape == x.shape
    with pytest.raises(TypeError, match="^x must"):
        B.gau(x.tolist(), p)
    with pytest.raises(TypeError, match="^x must"):
        B.gau(x.astype(np.int32), p)
    with pytest.raises(ValueError, match="^x must"):
        B.gau(np.zeros(d), p)
    with pytest.raises(ValueError, match="w_uvz|ln_g"):
        B.gau(np.zeros((5, d + 1)), p)
    with pytest.raises(TypeError, match="^params must"):
        B.gau(x, [p["w_o"]])
    for bad in (1, "yes", None):
        with pytest.raises(TypeError, match="^causal"):
            B.gau(x, p, causal=bad)
    for params, err, pattern in _bad_layer_params(p, 2):
        with pytest.raises(err, match=pattern):
            B.gau(x, params)


@pytest.mark.parametrize("B", BACKENDS)
def test_chunk_linear_states_bad_inputs(B):
    z = np.zeros((8, 3))
    with pytest.raises(TypeError, match="^lin_k must"):
        B.chunk_linear_states(z.tolist(), z, 4)
    with pytest.raises(TypeError, match="^v must"):
        B.chunk_linear_states(z, z.astype(np.int64), 4)
    with pytest.raises(ValueError, match="lin_k and v"):
        B.chunk_linear_states(z, np.zeros((6, 3)), 2)
    with pytest.raises(ValueError, match="lin_k and v"):
        B.chunk_linear_states(np.zeros(8), z, 4)
    with pytest.raises(ValueError, match="lin_k and v"):
        B.chunk_linear_states(np.zeros((2, 8, 3)), z, 4)
    with pytest.raises(ValueError, match="^chunk_size"):
        B.chunk_linear_states(z, z, 0)
    with pytest.raises(TypeError, match="^chunk_size"):
        B.chunk_linear_states(z, z, True)
    with pytest.raises(TypeError, match="^chunk_size"):
        B.chunk_linear_states(z, z, 4.0)
    with pytest.raises(TypeError, match="^causal"):
        B.chunk_linear_states(z, z, 4, causal=0)


@pytest.mark.parametrize("B", BACKENDS)
@pytest.mark.parametrize("name", ["mixed_chunk_attention", "mixed_chunk_dense"])
def test_mixed_chunk_attention_bad_inputs(B, name):
    fn = getattr(B, name)
    a, v = np.zeros((2, 8, 3)), np.zeros((2, 8, 5))
    args = [a, a, a, a, v]
    assert fn(*args, 4).shape == (2, 8, 5)
    for i, name in enumerate(("quad_q", "quad_k", "lin_q", "lin_k", "v")):
        bad = list(args)
        bad[i] = args[i].tolist()
        with pytest.raises(TypeError, match=f"^{name} must"):
            fn(*bad, 4)
        bad[i] = args[i].astype(np.int64)
        with pytest.raises(TypeError, match=f"^{name} must"):
            fn(*bad, 4)
    for i, name in enumerate(("quad_k", "lin_q", "lin_k")):
        for shape in ((2, 8, 4), (2, 7, 3), (1, 8, 3), (8, 3)):
            bad = list(args)
            bad[i + 1] = np.zeros(shape)
            with pytest.raises(ValueError, match=f"^{name} must"):
                fn(*bad, 4)
    with pytest.raises(ValueError, match="^quad_q must"):
        fn(np.zeros(3), np.zeros(3), np.zeros(3), np.zeros(3), np.zeros(5), 4)
    for shape in ((2, 7, 5), (1, 8, 5), (8, 5), (2, 1, 8, 5)):
        with pytest.raises(ValueError, match="^v must"):
            fn(a, a, a, a, np.zeros(shape), 4)
    for bad in (0, -4):
        with pytest.raises(ValueError, match="^chunk_size"):
            fn(*args, bad)
    for bad in (True, 4.0, "4"):
        with pytest.raises(TypeError, match="^chunk_size"):
            fn(*args, bad)
    with pytest.raises(TypeError, match="^causal"):
        fn(*args, 4, causal=1)
    for bad in ("quad", "MIXED", None):
        with pytest.raises(ValueError, match="^mode"):
            fn(*args, 4, mode=bad)
    with pytest.raises(ValueError, match="odd length"):
        fn(*args, 4, rel_bias=np.zeros(4))
    with pytest.raises(TypeError, match="float"):
        fn(*args, 4, rel_bias=np.zeros(3, dtype=np.int64))


@pytest.mark.parametrize("B", BACKENDS)
def test_mixed_chunk_masks_bad_inputs(B):
    for bad in (0, -3):
        with pytest.raises(ValueError, match="^n must"):
            B.mixed_chunk_masks(bad, 2)
        with pytest.raises(ValueError, match="^chunk_size must"):
            B.mixed_chunk_masks(4, bad)
    for bad in (4.0, "4", None):
        with pytest.raises(TypeError, match="^n must"):
            B.mixed_chunk_masks(bad, 2)
        with pytest.raises(TypeError, match="^chunk_size must"):
            B.mixed_chunk_masks(4, bad)
    with pytest.raises(TypeError, match="^causal must"):
        B.mixed_chunk_masks(4, 2, causal="yes")


def test_mixed_chunk_attention_bad_rel_bias_names_rel_bias():
    a = np.zeros((8, 3))
    with pytest.raises(ValueError, match="rel_bias"):
        F.mixed_chunk_attention(a, a, a, a, a, 4, rel_bias=np.zeros(4))


def test_mixed_chunk_attention_global_mode_still_rejects_bad_rel_bias():
    a = np.zeros((8, 3))
    with pytest.raises(TypeError, match="rel_bias"):
        F.mixed_chunk_attention(a, a, a, a, a, 4, rel_bias=[0.0], mode="global")


@pytest.mark.parametrize("B", BACKENDS)
def test_flash_layer_bad_inputs(B):
    d = 6
    p = _layer_params(d, 12, 4, 4, max_rel=2)
    x = np.zeros((2, 9, d))
    assert B.flash_layer(x, p, 4).shape == x.shape
    with pytest.raises(TypeError, match="^x must"):
        B.flash_layer(x.tolist(), p, 4)
    with pytest.raises(TypeError, match="^x must"):
        B.flash_layer(x.astype(np.int64), p, 4)
    with pytest.raises(ValueError, match="^x must"):
        B.flash_layer(np.zeros(d), p, 4)
    with pytest.raises(TypeError, match="^params must"):
        B.flash_layer(x, None, 4)
    for bad in (0, -1):
        with pytest.raises(ValueError, match="^chunk_size"):
            B.flash_layer(x, p, bad)
    for bad in (True, 4.0, None):
        with pytest.raises(TypeError, match="^chunk_size"):
            B.flash_layer(x, p, bad)
    with pytest.raises(TypeError, match="^causal"):
        B.flash_layer(x, p, 4, causal=1)
    with pytest.raises(ValueError, match="^mode"):
        B.flash_layer(x, p, 4, mode="linear")
    for params, err, pattern in _bad_layer_params(p, 4):
        with pytest.raises(err, match=pattern):
            B.flash_layer(x, params, 4)


@pytest.mark.parametrize(
    "key,value",
    [
        pytest.param("gamma", "list", id="gamma-list"),
        pytest.param("w_o", "list", id="w_o-list"),
        pytest.param("rel_bias", "list", id="rel_bias-list"),
        pytest.param("rel_bias", "0d", id="rel_bias-0d"),
    ],
)
@pytest.mark.parametrize("layer", ["gau", "flash_layer"])
def test_layer_params_bad_value_types_name_the_key(layer, key, value):
    n_qk = 2 if layer == "gau" else 4
    p = _layer_params(6, 12, 4, n_qk, max_rel=2)
    p[key] = p[key].tolist() if value == "list" else np.zeros(())
    args = (4,) if layer == "flash_layer" else ()
    with pytest.raises((TypeError, ValueError), match=rf"params\['{key}'\]"):
        getattr(F, layer)(np.zeros((5, 6)), p, *args)


# ======================================================================================
# the shared shapes and checks (effx_lab.flash.shapes)
# ======================================================================================
def test_flash_shapes_checks_name_the_argument():
    a = np.zeros((2, 4, 3))
    with pytest.raises(TypeError, match="^check must be None or a callable"):
        FS.check_mixed_inputs(a, a, a, a, a, check="float")
    with pytest.raises(ValueError, match=r"^lin_q must have the shape \(\.\.\., n, s\)"):
        FS.check_mixed_inputs(a, a, a[..., :2], a, a)
    seen = []
    FS.check_mixed_inputs(a, a, a, a, a, check=lambda name, value: seen.append(name))
    assert seen == ["quad_q", "quad_k", "lin_q", "lin_k", "v"]
    with pytest.raises(ValueError, match="^chunk_size must divide the sequence length"):
        FS.check_chunk(10, 4, exact=True)
    assert FS.check_chunk(10, 4, exact=False) == 4
    with pytest.raises(ValueError, match="^rel_bias must have an odd length"):
        FS.check_rel_bias(np.zeros(4))
    FS.check_rel_bias(None)
    params = FP.init_gau_params(8, expansion=2, s=4, max_rel=3)
    assert FS.layer_dims(np.zeros((5, 8)), params, n_qk=2) == (16, 4)
    with pytest.raises(ValueError, match=r"^params\['gamma'\] must have 4 rows"):
        FS.layer_dims(np.zeros((5, 8)), params, n_qk=4)
    with pytest.raises(ValueError, match="^n_qk must be"):
        FS.layer_dims(np.zeros((5, 8)), params, n_qk=0)


def test_the_three_faces_share_one_modes_tuple():
    from effx_lab.flash import kernels

    assert FS.MODES == ("mixed", "local", "global")
    assert F.MODES is FS.MODES and kernels.MODES is FS.MODES
