"""Tests of effx_lab.attention (chapters 6-7): softmax / multi-head / linear attention, params and costs.

Properties run on the NumPy reference and, when it imports, on ``torch_ops`` through a small adapter
(NumPy float64 in, torch float64 in the call, NumPy out), so one test body checks both backends. The
reference-vs-torch agreement on random inputs lives in tests/ch07_flash/test_flash_agreement.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _backends import backends

from effx_lab.attention import costs as C
from effx_lab.attention import params as P
from effx_lab.attention import reference as R
from effx_lab.attention import shapes as S

# ------------------------------------------------------------------------------------------------------
# backends: the reference, and torch_ops behind a numpy <-> torch adapter
# ------------------------------------------------------------------------------------------------------
BACKENDS = backends(R, "effx_lab.attention.torch_ops")


def _rand(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.standard_normal(shape)


def _mha_params(d: int, d_ff: int | None = None, seed: int = 0) -> dict[str, np.ndarray]:
    """Random float64 weights of order 1/sqrt(d), biases and LayerNorm parameters nonzero."""
    rng = np.random.default_rng(seed)
    shapes = S.mha_param_shapes(d, d_ff)
    params = {}
    for key, shape in shapes.items():
        if len(shape) == 2:
            params[key] = rng.standard_normal(shape) / np.sqrt(shape[0])
        elif key.endswith("_g"):
            params[key] = 1.0 + 0.3 * rng.standard_normal(shape)
        else:
            params[key] = 0.3 * rng.standard_normal(shape)
    return params


def _naive_softmax_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, causal: bool, scale: float) -> np.ndarray:
    out = np.zeros((q.shape[0], v.shape[1]))
    for i in range(q.shape[0]):
        j_end = i + 1 if causal else k.shape[0]
        scores = np.array([q[i] @ k[j] for j in range(j_end)]) * scale
        w = np.exp(scores - scores.max())
        w = w / w.sum()
        out[i] = sum(w[j] * v[j] for j in range(j_end))
    return out


# ======================================================================================================
# softmax attention
# ======================================================================================================
@pytest.mark.parametrize("B", BACKENDS)
@pytest.mark.parametrize("causal", [False, True])
def test_softmax_attention_rows_are_probabilities(B, causal):
    rng = np.random.default_rng(0)
    n, d = 7, 5
    q, k = 2 * _rand(rng, n, d), 2 * _rand(rng, n, d)
    attn = B.softmax_attention(q, k, np.eye(n), causal=causal)  # v = identity: the output is the matrix
    assert attn.shape == (n, n)
    np.testing.assert_allclose(attn.sum(axis=-1), np.ones(n), rtol=1e-12)
    assert (attn >= 0).all()
    if causal:
        assert (attn[np.triu_indices(n, 1)] == 0).all()
        assert attn[0, 0] == pytest.approx(1.0)
    else:
        assert (attn > 0).all()
    # the same matrix from the definition
    scores = q @ k.T / np.sqrt(d)
    if causal:
        scores = np.where(np.tril(np.ones((n, n), bool)), scores, -np.inf)
    expected = np.exp(scores - scores.max(-1, keepdims=True))
    np.testing.assert_allclose(attn, expected / expected.sum(-1, keepdims=True), rtol=1e-10, atol=1e-15)


@pytest.mark.parametrize("B", BACKENDS)
@pytest.mark.parametrize("causal", [False, True])
def test_softmax_attention_equals_naive_loop(B, causal):
    rng = np.random.default_rng(1)
    n, d, e = 6, 4, 3
    q, k, v = _rand(rng, n, d), _rand(rng, n, d), _rand(rng, n, e)
    got = B.softmax_attention(q, k, v, causal=causal)
    assert got.shape == (n, e) and got.dtype == np.float64
    np.testing.assert_allclose(got, _naive_softmax_attention(q, k, v, causal, 1 / np.sqrt(d)), rtol=1e-10)


@pytest.mark.parametrize("B", BACKENDS)
def test_softmax_attention_non_causal_different_lengths(B):
    rng = np.random.default_rng(2)
    q, k, v = _rand(rng, 3, 4), _rand(rng, 9, 4), _rand(rng, 9, 2)
    got = B.softmax_attention(q, k, v)
    assert got.shape == (3, 2)
    np.testing.assert_allclose(got, _naive_softmax_attention(q, k, v, False, 0.5), rtol=1e-10)


@pytest.mark.parametrize("B", BACKENDS)
def test_softmax_attention_scale_argument(B):
    rng = np.random.default_rng(3)
    q, k, v = _rand(rng, 5, 4), _rand(rng, 5, 4), _rand(rng, 5, 3)
    for scale in (0.1, 1.0, 3.0):
        got = B.softmax_attention(q, k, v, scale=scale)
        np.testing.assert_allclose(got, _naive_softmax_attention(q, k, v, False, scale), rtol=1e-10)
    # scale s on q is the same as scaling q by s with scale 1
    np.testing.assert_allclose(
        B.softmax_attention(q, k, v, scale=2.5), B.softmax_attention(2.5 * q, k, v, scale=1.0), rtol=1e-10
    )
    # the default is 1/sqrt(d)
    np.testing.assert_allclose(B.softmax_attention(q, k, v), B.softmax_attention(q, k, v, scale=0.5), rtol=1e-12)
    assert not np.allclose(B.softmax_attention(q, k, v, scale=0.1), B.softmax_attention(q, k, v, scale=3.0))


@pytest.mark.parametrize("B", BACKENDS)
@pytest.mark.parametrize("t", [0, 3, 7])
def test_softmax_attention_causal_never_looks_ahead(B, t):
    rng = np.random.default_rng(4)
    n, d = 8, 4
    q, k, v = _rand(rng, 2, n, d), _rand(rng, 2, n, d), _rand(rng, 2, n, d)
    base = B.softmax_attention(q, k, v, causal=True)
    k2, v2 = k.copy(), v.copy()
    k2[:, t:] += 5 * _rand(rng, 2, n - t, d)
    v2[:, t:] += 5 * _rand(rng, 2, n - t, d)
    out = B.softmax_attention(q, k2, v2, causal=True)
    np.testing.assert_array_equal(out[:, :t], base[:, :t])
    assert not np.allclose(out[:, t:], base[:, t:])  # the perturbation does reach the later outputs


@pytest.mark.parametrize("B", BACKENDS)
@pytest.mark.parametrize("causal", [False, True])
def test_softmax_attention_batch_dims(B, causal):
    rng = np.random.default_rng(5)
    q, k, v = _rand(rng, 2, 3, 6, 4), _rand(rng, 2, 3, 6, 4), _rand(rng, 2, 3, 6, 5)
    got = B.softmax_attention(q, k, v, causal=causal)
    assert got.shape == (2, 3, 6, 5)
    for a in range(2):
        for b in range(3):
            np.testing.assert_allclose(
                got[a, b], B.softmax_attention(q[a, b], k[a, b], v[a, b], causal=causal), rtol=1e-10
            )


@pytest.mark.parametrize("B", BACKENDS)
def test_causal_mask_values(B):
    np.testing.assert_array_equal(np.asarray(B.causal_mask(4)), np.tril(np.ones((4, 4), bool)))
    np.testing.assert_array_equal(np.asarray(B.causal_mask(2, 3)), [[True, False, False], [True, True, False]])


# ======================================================================================================
# multi-head attention and the Transformer layer
# ======================================================================================================
@pytest.mark.parametrize("B", BACKENDS)
@pytest.mark.parametrize("causal", [False, True])
def test_mha_one_head_is_softmax_attention_on_projections(B, causal):
    rng = np.random.default_rng(6)
    d = 8
    p = _mha_params(d, seed=1)
    x = _rand(rng, 2, 5, d)
    q, k, v = (x @ p[f"w{c}"] + p[f"b{c}"] for c in "qkv")
    expected = R.softmax_attention(q, k, v, causal=causal) @ p["wo"] + p["bo"]
    np.testing.assert_allclose(B.multi_head_attention(x, p, 1, causal=causal), expected, rtol=1e-10)


@pytest.mark.parametrize("B", BACKENDS)
@pytest.mark.parametrize("causal", [False, True])
def test_mha_heads_are_independent_slices(B, causal):
    rng = np.random.default_rng(7)
    d, h, n = 12, 3, 6
    dh = d // h
    p = _mha_params(d, seed=2)
    x = _rand(rng, n, d)
    q, k, v = (x @ p[f"w{c}"] + p[f"b{c}"] for c in "qkv")
    sl = [slice(i * dh, (i + 1) * dh) for i in range(h)]
    heads = [_naive_softmax_attention(q[:, s], k[:, s], v[:, s], causal, 1 / np.sqrt(dh)) for s in sl]
    expected = np.concatenate(heads, axis=-1) @ p["wo"] + p["bo"]
    got = B.multi_head_attention(x, p, h, causal=causal)
    np.testing.assert_allclose(got, expected, rtol=1e-10)
    # a different head count gives a different answer (the head split matters)
    assert not np.allclose(B.multi_head_attention(x, p, 1, causal=causal), got)


@pytest.mark.parametrize("B", BACKENDS)
def test_transformer_layer_shape_and_definition(B):
    rng = np.random.default_rng(8)
    d, d_ff = 8, 12
    p = _mha_params(d, d_ff, seed=3)
    x = _rand(rng, 2, 5, d)
    got = B.transformer_layer(x, p, 2, causal=True)
    assert got.shape == x.shape

    def ln(t, g, b):
        return (t - t.mean(-1, keepdims=True)) / np.sqrt(t.var(-1, keepdims=True) + 1e-5) * g + b

    def gelu(t):
        return 0.5 * t * (1 + np.tanh(np.sqrt(2 / np.pi) * (t + 0.044715 * t**3)))

    h = x + R.multi_head_attention(ln(x, p["ln1_g"], p["ln1_b"]), p, 2, causal=True)
    expected = h + gelu(ln(h, p["ln2_g"], p["ln2_b"]) @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("B", BACKENDS)
@pytest.mark.parametrize("causal", [False, True])
def test_transformer_layer_zero_output_weights_is_identity(B, causal):
    rng = np.random.default_rng(9)
    d = 8
    p = _mha_params(d, 16, seed=4)
    for key in ("wo", "bo", "w2", "b2"):  # both residual branches end in these
        p[key] = np.zeros_like(p[key])
    x = _rand(rng, 3, 4, d)
    np.testing.assert_array_equal(B.transformer_layer(x, p, 4, causal=causal), x)
    p["b2"] = np.ones(d)  # and a bias shows up in every position
    np.testing.assert_allclose(B.transformer_layer(x, p, 4, causal=causal), x + 1.0, rtol=1e-12)


@pytest.mark.parametrize("B", BACKENDS)
def test_transformer_layer_causal_never_looks_ahead(B):
    rng = np.random.default_rng(10)
    d = 8
    p = _mha_params(d, 16, seed=5)
    x = _rand(rng, 7, d)
    base = B.transformer_layer(x, p, 2, causal=True)
    x2 = x.copy()
    x2[4] += 3.0
    out = B.transformer_layer(x2, p, 2, causal=True)
    np.testing.assert_array_equal(out[:4], base[:4])
    assert not np.allclose(out[4:], base[4:])


# ======================================================================================================
# linear attention and feature maps
# ======================================================================================================
LINEAR_SHAPES = [
    pytest.param((6,), 4, 4, id="n6-d4"),
    pytest.param((9,), 3, 5, id="n9-d3-e5"),
    pytest.param((2, 5), 4, 2, id="batch2-n5-e2"),
    pytest.param((2, 3, 8), 6, 3, id="batch2x3-n8"),
    pytest.param((1,), 2, 3, id="n1"),
]


def _phi_qkv(rng, shape, d, e, m=None):
    batch, n = shape[:-1], shape[-1]
    m = n if m is None else m
    q = R.feature_map(_rand(rng, *batch, n, d))
    k = R.feature_map(_rand(rng, *batch, m, d))
    return q, k, _rand(rng, *batch, m, e)


@pytest.mark.parametrize("B", BACKENDS)
@pytest.mark.parametrize("shape,d,e", LINEAR_SHAPES)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("normalize", [True, False])
def test_linear_attention_equals_quadratic_form(B, shape, d, e, causal, normalize):
    rng = np.random.default_rng(11)
    q, k, v = _phi_qkv(rng, shape, d, e)
    fast = B.linear_attention(q, k, v, causal=causal, normalize=normalize)
    slow = B.linear_attention_quadratic(q, k, v, causal=causal, normalize=normalize)
    assert fast.shape == (*shape, e)
    np.testing.assert_allclose(fast, slow, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("B", BACKENDS)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("normalize", [True, False])
def test_linear_attention_quadratic_definition(B, causal, normalize):
    """The explicit form, written as a loop over queries: out_i = sum_j w_ij v_j (/ (sum_j w_ij + eps))."""
    rng = np.random.default_rng(12)
    n, d, e, eps = 5, 3, 4, 1e-3
    q, k, v = _phi_qkv(rng, (n,), d, e)
    expected = np.zeros((n, e))
    for i in range(n):
        js = range(i + 1) if causal else range(n)
        w = np.array([q[i] @ k[j] for j in js])
        expected[i] = sum(w[t] * v[j] for t, j in enumerate(js))
        if normalize:
            expected[i] /= w.sum() + eps
    for fn in (B.linear_attention, B.linear_attention_quadratic):
        np.testing.assert_allclose(fn(q, k, v, causal=causal, normalize=normalize, eps=eps), expected, rtol=1e-10)


@pytest.mark.parametrize("B", BACKENDS)
def test_linear_attention_non_causal_different_lengths(B):
    rng = np.random.default_rng(13)
    q, k, v = _phi_qkv(rng, (2, 3), 4, 5, m=7)
    fast = B.linear_attention(q, k, v)
    assert fast.shape == (2, 3, 5)
    np.testing.assert_allclose(fast, B.linear_attention_quadratic(q, k, v), rtol=1e-10)


@pytest.mark.parametrize("B", BACKENDS)
@pytest.mark.parametrize("fn", ["linear_attention", "linear_attention_quadratic"])
@pytest.mark.parametrize("t", [1, 4, 8])
def test_linear_attention_causal_never_looks_ahead(B, fn, t):
    rng = np.random.default_rng(14)
    n, d = 9, 3
    q, k, v = _phi_qkv(rng, (2, n), d, 4)
    f = getattr(B, fn)
    base = f(q, k, v, causal=True)
    k2, v2 = k.copy(), v.copy()
    k2[:, t:] = R.feature_map(_rand(rng, 2, n - t, d))
    v2[:, t:] += 3.0
    out = f(q, k2, v2, causal=True)
    np.testing.assert_array_equal(out[:, :t], base[:, :t])
    assert not np.allclose(out[:, t:], base[:, t:])


@pytest.mark.parametrize("B", BACKENDS)
@pytest.mark.parametrize("causal", [False, True])
def test_linear_attention_elu1_normaliser_positive_and_convex(B, causal):
    rng = np.random.default_rng(15)
    n, d = 10, 4
    q = B.feature_map(3 * _rand(rng, n, d), "elu1")
    k = B.feature_map(3 * _rand(rng, n, d), "elu1")
    den = (q * (np.cumsum(k, axis=0) if causal else k.sum(0))).sum(-1)
    assert (den > 0).all()
    # positive weights that sum to one: with v = 1 the output is 1 (up to eps), and it stays in [min v, max v]
    np.testing.assert_allclose(B.linear_attention(q, k, np.ones((n, 1)), causal=causal), 1.0, rtol=1e-5)
    v = _rand(rng, n, 3)
    out = B.linear_attention(q, k, v, causal=causal)
    assert (out >= v.min(0) - 1e-9).all() and (out <= v.max(0) + 1e-9).all()


@pytest.mark.parametrize("B", BACKENDS)
def test_linear_attention_eps_and_normalize(B):
    rng = np.random.default_rng(16)
    q, k, v = _phi_qkv(rng, (6,), 3, 2)
    raw = B.linear_attention(q, k, v, normalize=False)
    np.testing.assert_allclose(raw, q @ (k.T @ v), rtol=1e-12)
    den = q @ k.sum(0)
    np.testing.assert_allclose(B.linear_attention(q, k, v, eps=0.0), raw / den[:, None], rtol=1e-12)
    np.testing.assert_allclose(B.linear_attention(q, k, v, eps=0.5), raw / (den[:, None] + 0.5), rtol=1e-12)


@pytest.mark.parametrize("B", BACKENDS)
def test_feature_map_values(B):
    x = np.array([[-30.0, -2.0, -0.5, 0.0, 0.5, 2.0]])
    np.testing.assert_allclose(
        B.feature_map(x, "elu1"), [[np.exp(-30), np.exp(-2), np.exp(-0.5), 1.0, 1.5, 3.0]], rtol=1e-12
    )
    np.testing.assert_allclose(B.feature_map(x), B.feature_map(x, "elu1"), rtol=0)  # elu1 is the default
    np.testing.assert_array_equal(B.feature_map(x, "relu"), [[0, 0, 0, 0, 0.5, 2.0]])
    np.testing.assert_array_equal(B.feature_map(x, "identity"), x)
    assert (B.feature_map(np.random.default_rng(0).standard_normal((4, 50)) * 10, "elu1") > 0).all()


def test_feature_map_keeps_dtype_and_does_not_alias():
    x = np.array([[-1.0, 1.0]], dtype=np.float32)
    for kind in S.FEATURE_MAPS:
        y = R.feature_map(x, kind)
        assert y.dtype == np.float32
        assert not np.shares_memory(x, y)


# ======================================================================================================
# costs
# ======================================================================================================
def test_attention_macs_formulas():
    for m, d in [(1, 1), (7, 3), (64, 16), (100, 128)]:
        assert C.attention_macs(m, d) == 2 * d * m * m
        assert C.attention_macs(m, d, "qk_first") == 2 * d * m * m
        assert C.attention_macs(m, d, "kv_first") == 2 * m * d * d
        assert C.attention_macs(m, d, e=d) == C.attention_macs(m, d)
    # e != d: (m d m) + (m m e) and (d m e) + (m d e)
    assert C.attention_macs(5, 3, "qk_first", e=7) == 5 * 3 * 5 + 5 * 5 * 7 == 250
    assert C.attention_macs(5, 3, "kv_first", e=7) == 2 * 5 * 3 * 7 == 210
    assert isinstance(C.attention_macs(5, 3), int)


@pytest.mark.parametrize("d", [1, 2, 16, 64, 128])
def test_crossover_length(d):
    m0 = C.crossover_length(d)
    assert m0 == d + 1
    for m in range(max(1, d - 3), d + 4):
        kv, qk = C.attention_macs(m, d, "kv_first"), C.attention_macs(m, d, "qk_first")
        assert (kv < qk) == (m > d) == (m >= m0)
        if m == d:
            assert kv == qk


# ======================================================================================================
# params
# ======================================================================================================
def test_init_mha_params_shapes_dtype_and_values():
    p = P.init_mha_params(16, 4)
    assert set(p) == {"wq", "bq", "wk", "bk", "wv", "bv", "wo", "bo"}
    for key, value in p.items():
        assert value.dtype == np.float32
        assert value.shape == ((16, 16) if key.startswith("w") else (16,))
    assert all((p[b] == 0).all() for b in ("bq", "bk", "bv", "bo"))
    assert 0.01 < p["wq"].std() < 0.03  # N(0, 0.02)
    assert P.init_mha_params(16, 4, std=0.5)["wq"].std() > 0.3
    assert P.count_params(p) == 4 * (16 * 16 + 16)


def test_init_transformer_layer_params_shapes():
    p = P.init_transformer_layer_params(8, 2)
    assert p["w1"].shape == (8, 32) and p["b1"].shape == (32,) and p["w2"].shape == (32, 8)
    assert all(v.dtype == np.float32 for v in p.values())
    assert (p["ln1_g"] == 1).all() and (p["ln2_b"] == 0).all()
    p = P.init_transformer_layer_params(8, 2, d_ff=12)
    assert p["w1"].shape == (8, 12) and p["w2"].shape == (12, 8)
    assert P.count_params(p) == 4 * (64 + 8) + (8 * 12 + 12) + (12 * 8 + 8) + 4 * 8
    assert set(p) == set(S.mha_param_shapes(8, 12))


@pytest.mark.parametrize(
    "init",
    [lambda seed: P.init_mha_params(8, 2, seed=seed), lambda seed: P.init_transformer_layer_params(8, 2, seed=seed)],
)
def test_params_seeds(init):
    a, b, c = init(0), init(0), init(1)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    assert not np.array_equal(a["wq"], c["wq"])


def test_params_work_in_the_reference():
    p = P.init_transformer_layer_params(8, 2, seed=3)
    x = np.random.default_rng(0).standard_normal((2, 5, 8)).astype(np.float32)
    assert R.transformer_layer(x, p, 2).shape == (2, 5, 8)


def test_to_torch_and_count_params():
    p = P.init_mha_params(8, 2)
    t = P.to_torch(p)
    assert set(t) == set(p)
    for key in p:
        assert isinstance(t[key], torch.Tensor) and t[key].dtype == torch.float32 and t[key].device.type == "cpu"
        np.testing.assert_array_equal(t[key].numpy(), p[key])
    t64 = P.to_torch(p, device="cpu", dtype=torch.float64)
    assert all(v.dtype == torch.float64 for v in t64.values())
    assert P.to_torch(t64)["wq"].dtype == torch.float32  # tensors are accepted too
    assert P.count_params(t) == P.count_params(p) == 4 * (64 + 8)
    assert P.count_params({}) == 0
    assert P.count_params({"a": np.zeros((2, 3, 4)), "b": torch.zeros(5)}) == 29


# ======================================================================================================
# bad inputs
# ======================================================================================================
F64 = np.zeros((4, 3))


@pytest.mark.parametrize("B", BACKENDS)
@pytest.mark.parametrize("fn", ["softmax_attention", "linear_attention", "linear_attention_quadratic"])
def test_qkv_bad_inputs(B, fn):
    f = getattr(B, fn)

    def z(*shape: int) -> np.ndarray:
        return np.zeros(shape)

    with pytest.raises(TypeError, match="^q must"):
        f([[0.0]], z(4, 3), z(4, 3))
    with pytest.raises(TypeError, match="^k must"):
        f(z(4, 3), z(4, 3).astype(np.int64), z(4, 3))
    with pytest.raises(TypeError, match="^v must"):
        f(z(4, 3), z(4, 3), np.zeros((4, 3), dtype=bool))
    with pytest.raises(ValueError, match="^q must"):
        f(z(3), z(4, 3), z(4, 3))
    with pytest.raises(ValueError, match="^v must"):
        f(z(4, 3), z(4, 3), z(4))
    with pytest.raises(ValueError, match="q and k"):
        f(z(4, 3), z(4, 2), z(4, 3))
    with pytest.raises(ValueError, match="k and v"):
        f(z(4, 3), z(4, 3), z(5, 3))
    with pytest.raises(ValueError, match="batch"):
        f(z(2, 4, 3), z(3, 4, 3), z(3, 4, 3))
    with pytest.raises(ValueError, match="batch"):
        f(z(4, 3), z(1, 4, 3), z(1, 4, 3))
    with pytest.raises(ValueError, match="causal"):
        f(z(3, 3), z(4, 3), z(4, 3), causal=True)
    for bad in (1, 0, "yes", None):
        with pytest.raises(TypeError, match="^causal"):
            f(z(4, 3), z(4, 3), z(4, 3), causal=bad)


@pytest.mark.parametrize("B", BACKENDS)
def test_softmax_attention_bad_scale(B):
    q = np.zeros((4, 3))
    for bad in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="^scale"):
            B.softmax_attention(q, q, q, scale=bad)
    for bad in (True, "1", [1.0]):
        with pytest.raises(TypeError, match="^scale"):
            B.softmax_attention(q, q, q, scale=bad)


@pytest.mark.parametrize("B", BACKENDS)
@pytest.mark.parametrize("fn", ["linear_attention", "linear_attention_quadratic"])
def test_linear_attention_bad_flags(B, fn):
    f = getattr(B, fn)
    q = np.ones((4, 3))
    for bad in (1, "no", None):
        with pytest.raises(TypeError, match="^normalize"):
            f(q, q, q, normalize=bad)
    with pytest.raises(TypeError, match="^eps"):
        f(q, q, q, eps=True)
    with pytest.raises(ValueError, match="^eps"):
        f(q, q, q, eps=-1e-6)


@pytest.mark.parametrize("B", BACKENDS)
def test_feature_map_bad_inputs(B):
    with pytest.raises(ValueError, match="^kind"):
        B.feature_map(np.zeros(3), "softmax")
    with pytest.raises(ValueError, match="^kind"):
        B.feature_map(np.zeros(3), "ELU1")
    with pytest.raises(TypeError, match="^x must"):
        B.feature_map([1.0, 2.0])
    with pytest.raises(TypeError, match="^x must"):
        B.feature_map(np.arange(3))


@pytest.mark.parametrize("B", BACKENDS)
def test_causal_mask_bad_inputs(B):
    with pytest.raises(ValueError, match="^n must"):
        B.causal_mask(0)
    with pytest.raises(TypeError, match="^n must"):
        B.causal_mask(True)
    with pytest.raises(TypeError, match="^n must"):
        B.causal_mask(3.0)
    with pytest.raises(ValueError, match="^m must"):
        B.causal_mask(3, 0)
    with pytest.raises(TypeError, match="^m must"):
        B.causal_mask(3, False)


@pytest.mark.parametrize("B", BACKENDS)
@pytest.mark.parametrize("fn", ["multi_head_attention", "transformer_layer"])
def test_mha_and_layer_bad_inputs(B, fn):
    f = getattr(B, fn)
    d = 8
    p = _mha_params(d, 16)
    x = np.zeros((2, 5, d))
    assert f(x, p, 2).shape == x.shape  # the baseline call works
    with pytest.raises(TypeError, match="^x must"):
        f(x.tolist(), p, 2)
    with pytest.raises(TypeError, match="^x must"):
        f(x.astype(np.int32), p, 2)
    with pytest.raises(ValueError, match="^x must"):
        f(np.zeros(d), p, 2)
    with pytest.raises(ValueError, match="n_heads"):
        f(x, p, 3)
    with pytest.raises(ValueError, match="n_heads"):
        f(x, p, 0)
    with pytest.raises(TypeError, match="n_heads"):
        f(x, p, True)
    with pytest.raises(TypeError, match="n_heads"):
        f(x, p, 2.0)
    with pytest.raises(TypeError, match="^causal"):
        f(x, p, 2, causal=1)
    with pytest.raises(ValueError, match="params"):
        f(x, {k: v for k, v in p.items() if k != "wk"}, 2)
    with pytest.raises(ValueError, match=r"params\['wq'\]"):
        f(x, {**p, "wq": np.zeros((d, d + 1))}, 2)
    with pytest.raises(ValueError, match=r"params\['bo'\]"):
        f(np.zeros((5, d)), {**p, "bo": np.zeros(d - 1)}, 2)
    with pytest.raises(TypeError, match=r"params\['bv'\]"):
        f(x, {**p, "bv": np.zeros(d, dtype=np.int64)}, 2)
    with pytest.raises(ValueError, match=r"params\['wq'\]"):  # params built for another width
        f(np.zeros((5, 4)), p, 2)


@pytest.mark.parametrize("B", BACKENDS)
def test_transformer_layer_bad_ffn_params(B):
    p = _mha_params(8, 16)
    x = np.zeros((5, 8))
    with pytest.raises(ValueError, match="params"):
        B.transformer_layer(x, _mha_params(8), 2)  # MHA weights only: no FFN
    with pytest.raises(ValueError, match=r"params\['b1'\]"):
        B.transformer_layer(x, {**p, "b1": np.zeros(15)}, 2)
    with pytest.raises(ValueError, match=r"params\['w2'\]"):
        B.transformer_layer(x, {**p, "w2": np.zeros((15, 8))}, 2)


@pytest.mark.parametrize("B", BACKENDS)
@pytest.mark.parametrize(
    "fn",
    [
        "multi_head_attention",
        "transformer_layer",
    ],
)
def test_params_not_a_dict_is_a_type_error(B, fn):
    with pytest.raises(TypeError, match="params"):
        getattr(B, fn)(np.zeros((5, 8)), [np.zeros((8, 8))], 2)


def test_transformer_layer_params_list_value_is_a_type_error():
    p = _mha_params(8, 16)
    with pytest.raises(TypeError, match=r"params\['w1'\]"):
        R.transformer_layer(np.zeros((5, 8)), {**p, "w1": p["w1"].tolist()}, 2)


def test_mha_params_list_value_is_a_type_error():
    p = _mha_params(8)
    with pytest.raises(TypeError, match=r"params\['wq'\]"):
        R.multi_head_attention(np.zeros((5, 8)), {**p, "wq": p["wq"].tolist()}, 2)


def test_costs_bad_inputs():
    with pytest.raises(ValueError, match="^m must"):
        C.attention_macs(0, 4)
    with pytest.raises(ValueError, match="^d must"):
        C.attention_macs(4, -1)
    with pytest.raises(ValueError, match="^e must"):
        C.attention_macs(4, 4, e=0)
    with pytest.raises(TypeError, match="^m must"):
        C.attention_macs(True, 4)
    with pytest.raises(TypeError, match="^m must"):
        C.attention_macs(4.0, 4)
    with pytest.raises(TypeError, match="^d must"):
        C.attention_macs(4, "4")
    with pytest.raises(TypeError, match="^e must"):
        C.attention_macs(4, 4, e=False)
    with pytest.raises(ValueError, match="^order"):
        C.attention_macs(4, 4, order="kv")
    with pytest.raises(ValueError, match="^order"):
        C.attention_macs(4, 4, order=None)
    with pytest.raises(ValueError, match="^d must"):
        C.crossover_length(0)
    with pytest.raises(TypeError, match="^d must"):
        C.crossover_length(True)


def test_params_bad_inputs():
    for init in (P.init_mha_params, P.init_transformer_layer_params):
        with pytest.raises(ValueError, match="n_heads"):
            init(10, 4)
        with pytest.raises(ValueError, match="^n_heads"):
            init(8, 0)
        with pytest.raises(ValueError, match="^d_model"):
            init(0, 1)
        with pytest.raises(TypeError, match="^d_model"):
            init(8.0, 2)
        with pytest.raises(TypeError, match="^n_heads"):
            init(8, True)
        with pytest.raises(ValueError, match="^seed"):
            init(8, 2, seed=-1)
        with pytest.raises(TypeError, match="^seed"):
            init(8, 2, seed=1.5)
        with pytest.raises(TypeError, match="^seed"):
            init(8, 2, seed=True)
        with pytest.raises(ValueError, match="^std"):
            init(8, 2, std=0.0)
        with pytest.raises(ValueError, match="^std"):
            init(8, 2, std=float("nan"))
        with pytest.raises(TypeError, match="^std"):
            init(8, 2, std="0.02")
    with pytest.raises(ValueError, match="^d_ff"):
        P.init_transformer_layer_params(8, 2, d_ff=0)
    with pytest.raises(TypeError, match="^d_ff"):
        P.init_transformer_layer_params(8, 2, d_ff=32.0)


def test_to_torch_and_count_params_bad_inputs():
    with pytest.raises(TypeError, match="^params must"):
        P.to_torch([np.zeros(3)])
    with pytest.raises(TypeError, match=r"^params\['a'\]"):
        P.to_torch({"a": [1.0, 2.0]})
    with pytest.raises(TypeError, match="^params must"):
        P.count_params([np.zeros(3)])


def test_count_params_list_value_is_a_type_error():
    with pytest.raises(TypeError, match=r"params\['a'\]"):
        P.count_params({"a": [1.0, 2.0]})


# ======================================================================================
# the shared shapes and checks (effx_lab.attention.shapes), the torch-only layer core
# ======================================================================================
def test_init_bytes_counts_float32_params_plus_the_largest_float64_draw():
    shapes = {"w": (4, 8), "b": (8,)}
    assert P.init_bytes(shapes) == 4 * (32 + 8) + 8 * 32
    assert P.init_bytes({}) == 0
    with pytest.raises(TypeError, match="^shapes must be a dict"):
        P.init_bytes([(4, 8)])
    with pytest.raises(TypeError, match=r"^shapes\['w'\] must be a tuple"):
        P.init_bytes({"w": (4, -1)})
    with pytest.raises(TypeError, match=r"^shapes\['w'\] must be a tuple"):
        P.init_bytes({"w": [4, 8]})


def test_shapes_torch_checks_name_the_argument():
    x = torch.zeros(2, 3)
    with pytest.raises(TypeError, match="^x must be a torch tensor"):
        S.require_tensor("x", np.zeros(3))
    with pytest.raises(ValueError, match="^x must have 3 dimensions"):
        S.check_tensor("x", x, ndim=3)
    with pytest.raises(TypeError, match="^k must have the dtype of q"):
        S.same_kind(q=x, k=x.double())
    with pytest.raises(ValueError, match="at least one tensor"):
        S.same_kind()
    with pytest.raises(ValueError, match=r"^params is missing 'w1'"):
        S.check_layer_dict({}, "w1", "the layer's keys")
    with pytest.raises(TypeError, match=r"^params\['w'\] must be a torch tensor"):
        S.tensor_params({"w": np.zeros(3)}, ["w"], x)
    assert S.tensor_params({"w": x}, ["w"], x.double())["w"].dtype == torch.float64


def test_shapes_linear_and_tril():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 3, generator=g, dtype=torch.float64)
    w = torch.randn(3, 4, generator=g, dtype=torch.float64)
    b = torch.randn(4, generator=g, dtype=torch.float64)
    torch.testing.assert_close(S.linear(x, w, b), x @ w + b, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(S.linear(x, w, None), x @ w, rtol=1e-13, atol=1e-13)
    with pytest.raises(ValueError, match=r"^w must have shape \(in, out\)"):
        S.linear(x, w.t(), b)
    with pytest.raises(ValueError, match=r"^b must be None or of shape \(4,\)"):
        S.linear(x, w, b[:3])
    with pytest.raises(TypeError, match="^w must be a torch tensor"):
        S.linear(x, w.numpy(), b)
    mask = S.tril(3, 4)
    assert mask.dtype == torch.bool and mask.device.type == "cpu"
    assert torch.equal(mask, torch.from_numpy(R.causal_mask(3, 4)))
    with pytest.raises(ValueError, match="^m must be"):
        S.tril(3, 0)


def test_transformer_layer_with_core_is_the_layer_with_another_core():
    from effx_lab.attention import torch_ops as T

    rng = np.random.default_rng(3)
    x = torch.from_numpy(_rand(rng, 2, 6, 8))
    p = {k: torch.from_numpy(v) for k, v in _mha_params(8, 16).items()}
    want = T.transformer_layer(x, p, 2, causal=True)
    assert torch.equal(T.transformer_layer_with_core(x, p, 2, True), want)
    calls = []

    def sdpa(q, k, v, causal, scale):
        calls.append((tuple(q.shape), causal, scale))
        return torch.nn.functional.scaled_dot_product_attention(
            q, k, v, is_causal=causal, scale=scale
        )

    got = T.transformer_layer_with_core(x, p, 2, causal=True, core=sdpa)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert calls == [((2, 2, 6, 4), True, 0.5)]
    with pytest.raises(TypeError, match="^core must be None or a callable"):
        T.transformer_layer_with_core(x, p, 2, core="sdpa")
