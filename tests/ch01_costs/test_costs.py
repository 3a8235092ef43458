"""Tests of effx_lab.costs (chapter 1): memory/FLOP accounting and sequence packing."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from _backends import GELU_LIPSCHITZ, abs_matmul, assert_within, gamma, gelu_tanh_bound, unit_roundoff
from hypothesis import given, settings
from hypothesis import strategies as st

from effx_lab.costs import flops as F
from effx_lab.costs import memory as M
from effx_lab.costs import reference as R
from effx_lab.costs import torch_ops as T


# ============================================================================ memory
def test_dtype_bytes_names_numpy_torch():
    assert M.dtype_bytes("fp32") == 4
    assert M.dtype_bytes("BF16") == 2
    assert M.dtype_bytes("int8") == 1
    assert M.dtype_bytes("int4") == 0.5
    assert M.dtype_bytes("torch.float16") == 2
    assert M.dtype_bytes("f8") == 8  # NumPy spelling
    assert M.dtype_bytes(np.float16) == 2
    assert M.dtype_bytes(np.dtype("int32")) == 4
    assert M.dtype_bytes(torch.bfloat16) == 2
    assert M.dtype_bytes(torch.float8_e4m3fn) == 1
    with pytest.raises(ValueError, match="dtype must be one of"):
        M.dtype_bytes("fp12")
    with pytest.raises(TypeError, match="dtype must be"):
        M.dtype_bytes(3.5j)
    with pytest.raises(TypeError, match="dtype must be"):
        M.dtype_bytes(None)


def test_param_bytes():
    assert M.param_bytes(7e9, "bf16") == 14_000_000_000
    assert M.param_bytes(7, "int4") == 4  # 3.5 bytes rounded up
    assert M.param_bytes(10, 0.5) == 5
    assert M.param_bytes(10, 0.1) == 1  # decimal 0.1, not its binary approximation (which would round up to 2)
    assert isinstance(M.param_bytes(540e9, "fp32"), int)
    with pytest.raises(ValueError, match="n_params must be a whole number"):
        M.param_bytes(1.5, "bf16")
    with pytest.raises(ValueError, match="n_params must be >= 0"):
        M.param_bytes(-1, "bf16")
    with pytest.raises(TypeError, match="dtype must be a dtype or a number of bytes"):
        M.param_bytes(10, True)
    with pytest.raises(ValueError, match="dtype must be a positive"):
        M.param_bytes(10, -2)


def test_kv_cache_bytes_formula_and_exactness():
    # explicit product, with the factor 2 for K and V
    assert M.kv_cache_bytes(32, 32, 128, 4096, 1, 2) == 2 * 32 * 32 * 128 * 4096 * 2
    # 500B-class: far beyond int32, must be an exact Python int
    big = M.kv_cache_bytes(118, 48, 256, 2048, 512, 2)
    assert big == 2 * 118 * 48 * 256 * 2048 * 512 * 2 and isinstance(big, int) and big > 2**42
    # int4: half a byte per element, rounded up when odd
    assert M.kv_cache_bytes(1, 1, 1, 1, 1, 0.5) == 1
    assert M.kv_cache_bytes(3, 1, 3, 1, 1, 0.5) == 9
    assert isinstance(M.kv_cache_bytes(2, 2, 2, 2, 2, 0.5), int)
    assert M.kv_cache_bytes(2, 2, 2, 0, 2) == 0


@pytest.mark.parametrize(
    "args, exc, text",
    [
        ((0, 1, 1, 1, 1), ValueError, "n_layers must be an int >= 1, got 0"),
        ((1, 1.0, 1, 1, 1), TypeError, "n_kv_heads must be an int"),
        ((1, 1, 1, -3, 1), ValueError, "seq_len must be an int >= 0, got -3"),
        ((1, 1, 1, 1, True), TypeError, "batch_size must be an int"),
        ((1, 1, 1, 1, 1, 0), ValueError, "bytes_per_elem must be a positive"),
        ((1, 1, 1, 1, 1, "2"), TypeError, "bytes_per_elem must be a positive number"),
    ],
)
def test_kv_cache_bytes_bad_inputs(args, exc, text):
    with pytest.raises(exc, match=text):
        M.kv_cache_bytes(*args)


def test_presets_known_answers():
    p = M.PRESETS
    # Llama 2 7B: 6.74B published
    assert p["llama2-7b"].params() == pytest.approx(6.7e9, rel=0.01)
    assert p["llama2-70b"].params() == pytest.approx(69e9, rel=0.01)
    # computed counts agree with the published ones where a published n_params is given
    assert p["gpt3-175b"].computed_params() == pytest.approx(175e9, rel=0.01)
    assert p["palm-540b"].computed_params() == pytest.approx(540e9, rel=0.01)
    assert p["minilm-l6"].computed_params() == pytest.approx(22.7e6, rel=0.02)
    assert p["palm-540b"].params() == 540_000_000_000
    # KV bytes per token
    assert p["llama2-7b"].kv_bytes_per_token(2) == 524288
    assert p["llama2-70b"].kv_bytes_per_token(2) == 327680
    assert p["palm-540b-mha"].kv_bytes_per_token(2) == 48 * p["palm-540b"].kv_bytes_per_token(2)
    for shape in p.values():
        assert shape.source, shape.name
        assert shape.n_heads % shape.n_kv_heads == 0


def test_model_shape_counts_each_matrix():
    s = M.ModelShape("toy", n_layers=2, d_model=8, n_heads=4, n_kv_heads=2, head_dim=3, d_ff=10,
                     vocab_size=11, gated_mlp=True, tie_embeddings=False)
    attn = 8 * 12 + 8 * 6 + 8 * 6 + 12 * 8
    mlp = 3 * 8 * 10
    assert s.computed_params() == 2 * (attn + mlp) + 2 * 11 * 8
    assert s.params() == s.computed_params()
    s2 = M.ModelShape("toy", 2, 8, 4, 2, 3, 10, 11, n_params=1e3)
    assert s2.params() == 1000 and isinstance(s2.n_params, int)
    assert s.kv_bytes(5, 3, 2) == 2 * 2 * 2 * 3 * 5 * 3 * 2


def test_model_shape_bad_inputs():
    with pytest.raises(ValueError, match="n_kv_heads must divide n_heads"):
        M.ModelShape("x", 1, 8, 4, 3, 2, 8, 10)
    with pytest.raises(ValueError, match="d_model must be an int >= 1"):
        M.ModelShape("x", 1, 0, 4, 4, 2, 8, 10)
    with pytest.raises(TypeError, match="gated_mlp must be a bool"):
        M.ModelShape("x", 1, 8, 4, 4, 2, 8, 10, gated_mlp=1)
    with pytest.raises(ValueError, match="name must be one of"):
        M.get_preset("gpt5")


def test_memory_report():
    r = M.memory_report("llama2-7b", batch_size=8, seq_len=4096, weight_dtype="bf16", kv_dtype=torch.float16)
    assert r["weight_bytes"] == 2 * r["n_params"]
    assert r["kv_bytes"] == 524288 * 8 * 4096
    assert r["kv_to_weights"] == pytest.approx(r["kv_bytes"] / r["weight_bytes"])
    assert r["total_bytes"] == r["weight_bytes"] + r["kv_bytes"]
    json.dumps(r)
    r4 = M.memory_report(M.PRESETS["llama2-70b"], batch_size=1, seq_len=10, weight_dtype="int4", kv_dtype=1)
    assert r4["weight_bytes"] == math.ceil(r4["n_params"] / 2)
    with pytest.raises(ValueError, match="kv_dtype"):
        M.memory_report("llama2-7b", batch_size=1, seq_len=1, kv_dtype="fp3")
    with pytest.raises(TypeError, match="shape must be a ModelShape"):
        M.memory_report(42, batch_size=1, seq_len=1)


def test_max_batch_size():
    s = M.PRESETS["llama2-7b"]
    w = M.param_bytes(s.params(), 2)
    per_seq = s.kv_bytes(4096, 1, 2)
    mem = 80 * 10**9
    b = M.max_batch_size(mem, s, 4096, 2, 2)
    assert b == (mem - w) // per_seq
    assert w + b * per_seq <= mem < w + (b + 1) * per_seq
    # exactly fitting memory gives exactly that batch
    assert M.max_batch_size(w + 3 * per_seq, s, 4096, 2, 2) == 3
    assert M.max_batch_size(w + 3 * per_seq - 1, s, 4096, 2, 2) == 2
    assert M.max_batch_size(w - 1, s, 4096, 2, 2) == 0
    # GQA: 8 KV heads, not 64
    g = M.PRESETS["llama2-70b"]
    mem = 160 * 10**9
    assert M.max_batch_size(mem, g, 2048, 2, 0.5) == (mem - M.param_bytes(g.params(), 2)) // g.kv_bytes(2048, 1, 0.5)
    assert isinstance(M.max_batch_size(80e9, s, 1, 2, 2), int)
    with pytest.raises(ValueError, match="seq_len must be an int >= 1"):
        M.max_batch_size(mem, s, 0, 2, 2)
    with pytest.raises(ValueError, match="memory_bytes must be a whole number"):
        M.max_batch_size(1.5, s, 1, 2, 2)


def test_pope_example_is_transparent():
    ex = M.pope_example()
    v = ex["variants"]
    assert v["mha_bf16"]["kv_bytes"] == M.kv_cache_bytes(118, 48, 256, 2048, 512, 2)
    assert v["mha_bf16"]["kv_bytes"] == pytest.approx(6.08e12, rel=0.01)
    assert v["mha_bf16"]["kv_to_weights_bf16"] == pytest.approx(5.63, rel=0.01)
    assert v["mha_int8"]["kv_bytes"] == pytest.approx(3.04e12, rel=0.01)
    assert v["width_6144_bf16"]["kv_width_per_layer"] == 6144
    assert v["width_6144_bf16"]["kv_bytes"] == v["mha_int8"]["kv_bytes"]
    assert v["mqa_bf16"]["kv_bytes"] * 48 == v["mha_bf16"]["kv_bytes"]
    assert ex["weight_bytes_bf16"] == 1_080_000_000_000
    json.dumps(ex)


# ============================================================================ flops
def test_matmul_counts():
    assert F.matmul_flops(3, 5, 7) == 2 * 3 * 5 * 7
    assert F.matmul_bytes(3, 5, 7, 4) == (3 * 7 + 7 * 5 + 3 * 5) * 4
    assert F.matmul_bytes(1, 1, 1, 0.5) == 2  # 1.5 rounded up
    assert F.matmul_flops_bytes(3, 5, 7, 2) == (F.matmul_flops(3, 5, 7), F.matmul_bytes(3, 5, 7, 2))
    n = 1024
    assert F.arithmetic_intensity(n, n, n, 4) == pytest.approx(n / 6)
    assert F.arithmetic_intensity(n, 1, n, 4) < 0.51
    with pytest.raises(ValueError, match="k must be an int >= 1, got 0"):
        F.matmul_flops(1, 1, 0)
    with pytest.raises(TypeError, match="m must be an int"):
        F.matmul_bytes(1.0, 1, 1, 2)


def test_roofline_time():
    assert F.roofline_time(1e12, 1e9, 1e12, 1e12) == pytest.approx(1.0)  # compute-bound
    assert F.roofline_time(1e9, 1e12, 1e12, 1e11) == pytest.approx(10.0)  # memory-bound
    with pytest.raises(ValueError, match="peak_flops must be > 0"):
        F.roofline_time(1, 1, 0, 1)
    with pytest.raises(ValueError, match="bytes_moved must be >= 0"):
        F.roofline_time(1, -1, 1, 1)


def _explicit_forward(s: M.ModelShape, n: int, c: int) -> int:
    d, dh, h, hk, f = s.d_model, s.head_dim, s.n_heads, s.n_kv_heads, s.d_ff
    per_layer = 0
    for k_dim, n_dim in [(d, h * dh), (d, hk * dh), (d, hk * dh), (h * dh, d)]:
        per_layer += 2 * n * n_dim * k_dim
    for _ in range(h):  # per head: Q K^T and A V
        per_layer += 2 * n * c * dh + 2 * n * dh * c
    for _ in range(3 if s.gated_mlp else 2):
        per_layer += 2 * n * d * f
    return s.n_layers * per_layer + 2 * n * d * s.vocab_size


@pytest.mark.parametrize("name", list(M.PRESETS))
def test_forward_flops_equals_explicit_sum(name):
    s = M.PRESETS[name]
    assert F.forward_flops(s, 7, 19) == _explicit_forward(s, 7, 19)
    assert F.decode_flops(s, 3, 100) == 3 * _explicit_forward(s, 1, 100)
    assert F.prefill_flops(s, 2, 50) == 2 * _explicit_forward(s, 50, 50)
    bd = F.layer_flops_breakdown(s, 7, 19)
    assert s.n_layers * (sum(bd.values()) - bd["lm_head"]) + bd["lm_head"] == F.forward_flops(s, 7, 19)


def test_prefill_causal_and_rule_of_thumb():
    s = M.PRESETS["llama2-7b"]
    dense = F.prefill_flops(s, 1, 64)
    causal = F.prefill_flops(s, 1, 64, causal=True)
    attn_pair_cost = s.n_layers * 4 * s.n_heads * s.head_dim
    assert dense - causal == attn_pair_cost * (64 * 64 - 64 * 65 // 2)
    # ~2 FLOPs per matmul parameter per token for short contexts (the input embedding is a lookup)
    assert F.decode_flops(s, 1, 1) == pytest.approx(2 * (s.params() - s.vocab_size * s.d_model), rel=1e-3)


def test_intensity_prefill_much_higher_than_decode():
    s = M.PRESETS["llama2-7b"]
    dec1 = F.decode_intensity(s, 1, 512)
    dec16 = F.decode_intensity(s, 16, 128)
    pre = F.prefill_intensity(s, 1, 512)
    assert 0.8 < dec1 < 1.2  # ~ batch FLOPs/byte in bf16
    assert 12 < dec16 < 17
    assert pre > 300 and pre > 100 * dec1
    assert F.decode_bytes(s, 4, 100, 2, 2) == M.param_bytes(s.params(), 2) + s.kv_bytes(100, 4, 2)
    assert F.prefill_bytes(s, 4, 100, 1, 1) == M.param_bytes(s.params(), 1) + s.kv_bytes(100, 4, 1)
    with pytest.raises(TypeError, match="weight_bytes must be a number"):
        F.decode_bytes(s, 1, 1, "bf16", 2)
    with pytest.raises(ValueError, match="context_len must be an int >= 1"):
        F.decode_flops(s, 1, 0)
    with pytest.raises(ValueError, match="name must be one of"):
        F.prefill_flops("nope", 1, 1)


# ============================================================================ packing
def _ffn_bound(h, w1, b1, w2, b2, u: float = unit_roundoff(np.float32)) -> np.ndarray:
    """Derived bound on ``|fl(ffn(h)) - ffn(h)|`` for ``gelu(h @ w1 + b1) @ w2 + b2`` with unit roundoff ``u``,
    any summation order (so it holds for every BLAS, row layout and thread count): the first layer is off by
    ``Ez = gamma_{d+1} (|h| @ |w1| + |b1|)``; GELU moves that by at most ``GELU_LIPSCHITZ Ez`` and adds its own
    rounding (``gelu_tanh_bound``); the second layer adds ``gamma_{f+1} (|g| @ |w2| + |b2|)``. Two
    implementations agree to twice this."""
    h = np.asarray(h, dtype=np.float64)
    d, f = w1.shape
    z = h @ w1.astype(np.float64) + b1
    ez = gamma(d + 1, u) * (abs_matmul(h, w1) + np.abs(b1))
    eg = GELU_LIPSCHITZ * ez + gelu_tanh_bound(np.abs(z) + ez, u)
    g_mag = np.abs(z) + eg  # |gelu(z)| <= |z|
    return gamma(f + 1, u) * (abs_matmul(g_mag, w2) + np.abs(b2)) + abs_matmul(eg, w2)


def _random_batch(rng: np.random.Generator, batch: int, max_len: int, feat: tuple[int, ...], zero: bool = True):
    lengths = rng.integers(0 if zero else 1, max_len + 1, size=batch)
    x = rng.standard_normal((batch, max_len) + feat).astype(np.float32)
    return x, lengths


CASES = [
    (1, 1, (3,)),
    (4, 7, (5,)),
    (3, 9, ()),
    (5, 6, (2, 3)),
    (6, 13, (4,)),
]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("batch, max_len, feat", CASES)
def test_numpy_and_torch_packing_agree(seed, batch, max_len, feat):
    rng = np.random.default_rng(seed)
    x, lengths = _random_batch(rng, batch, max_len, feat)
    if seed == 0:
        lengths[0] = 0
    if seed == 1:
        lengths[-1] = max_len
    mask = R.lengths_to_mask(lengths, max_len)
    np.testing.assert_array_equal(mask, T.lengths_to_mask(torch.from_numpy(lengths), max_len).numpy())
    np.testing.assert_array_equal(R.cu_seqlens(lengths), T.cu_seqlens(torch.from_numpy(lengths)).numpy())
    packed, cu = R.pack(x, lengths)
    tpacked, tcu = T.pack(torch.from_numpy(x), torch.from_numpy(lengths))
    assert packed.shape == (int(lengths.sum()),) + feat
    assert cu.dtype == np.int64 and tcu.dtype == torch.int64
    np.testing.assert_array_equal(packed, tpacked.numpy())
    np.testing.assert_array_equal(cu, tcu.numpy())
    np.testing.assert_array_equal(packed, x[mask])
    # round trip: padding comes back as pad_value
    for pad in (0, -1.5):
        back = R.unpack(packed, cu, max_len, pad)
        tback = T.unpack(tpacked, tcu, max_len, pad)
        np.testing.assert_array_equal(back, tback.numpy())
        np.testing.assert_array_equal(back[mask], x[mask])
        assert np.all(back[~mask] == pad)
    stats = R.padding_stats(lengths, max_len, d_model=8, d_ff=16)
    assert stats == T.padding_stats(torch.from_numpy(lengths), max_len, d_model=8, d_ff=16)
    assert stats["real_tokens"] == int(mask.sum()) and stats["padded_slots"] == int((~mask).sum())


@settings(max_examples=40, deadline=None)
@given(
    lengths=st.lists(st.integers(0, 9), min_size=0, max_size=6),
    extra=st.integers(0, 3),
    feat=st.lists(st.integers(1, 3), max_size=2),
    pad=st.sampled_from([0.0, -1.0, 2.5]),
)
def test_pack_unpack_property(lengths, extra, feat, pad):
    """For any lengths (zeros, full rows, empty batch) and trailing dims: both backends agree and round-trip."""
    max_len = max(lengths, default=0) + extra
    rng = np.random.default_rng(len(lengths) * 31 + max_len)
    x = rng.standard_normal((len(lengths), max_len) + tuple(feat)).astype(np.float32)
    lens = np.array(lengths, dtype=np.int64)
    packed, cu = R.pack(x, lens)
    tpacked, tcu = T.pack(torch.from_numpy(x), torch.from_numpy(lens))
    np.testing.assert_array_equal(packed, tpacked.numpy())
    np.testing.assert_array_equal(cu, tcu.numpy())
    assert cu[-1] == packed.shape[0] == sum(lengths)
    back = R.unpack(packed, cu, max_len, pad)
    np.testing.assert_array_equal(back, T.unpack(tpacked, tcu, max_len, pad).numpy())
    mask = R.lengths_to_mask(lens, max_len)
    np.testing.assert_array_equal(back[mask], x[mask])
    assert np.all(back[~mask] == pad)


def test_pack_layout_and_cu():
    x = np.arange(2 * 3 * 1).reshape(2, 3, 1)
    packed, cu = R.pack(x, [2, 3])
    assert packed[:, 0].tolist() == [0, 1, 3, 4, 5]
    assert cu.tolist() == [0, 2, 5]
    assert R.cu_seqlens([]).tolist() == [0]
    assert T.cu_seqlens([0, 0]).tolist() == [0, 0, 0]
    # all-zero lengths: empty packed, round trip all padding
    p0, c0 = T.pack(torch.ones(2, 4, 3), torch.tensor([0, 0]))
    assert p0.shape == (0, 3)
    assert torch.equal(T.unpack(p0, c0, 4, 7), torch.full((2, 4, 3), 7.0))
    # integer data keep their dtype
    pi, ci = T.pack(torch.arange(6).reshape(2, 3), [1, 2])
    assert pi.dtype == torch.int64 and pi.tolist() == [0, 3, 4]


@pytest.mark.parametrize("seed", [0, 1])
def test_padded_ffn_equals_packed_ffn(seed):
    rng = np.random.default_rng(seed)
    b, l, d, f = 5, 11, 8, 16
    x, lengths = _random_batch(rng, b, l, (d,))
    lengths[0] = 0
    w1 = (rng.standard_normal((d, f)) / np.sqrt(d)).astype(np.float32)
    b1 = rng.standard_normal(f).astype(np.float32)
    w2 = (rng.standard_normal((f, d)) / np.sqrt(f)).astype(np.float32)
    b2 = rng.standard_normal(d).astype(np.float32)
    pad = R.padded_ffn(x, lengths, w1, b1, w2, b2)
    pk = R.packed_ffn(x, lengths, w1, b1, w2, b2)
    # float32, different row layouts (and below, backends): within twice the derived bound of _ffn_bound
    bound = 2 * _ffn_bound(x, w1, b1, w2, b2)
    assert_within(pad, pk, bound, "numpy padded vs packed")
    mask = R.lengths_to_mask(lengths, l)
    assert np.all(pad[~mask] == 0)
    tt = [torch.from_numpy(a) for a in (x, lengths, w1, b1, w2, b2)]
    tpad = T.padded_ffn(*tt)
    tpk = T.packed_ffn(*tt)
    assert_within(tpad, tpk, bound, "torch padded vs packed")
    assert_within(tpad, pad, bound, "torch vs numpy")
    assert_within(T.gelu(torch.from_numpy(x)), R.gelu(x), 2 * gelu_tanh_bound(x, unit_roundoff(np.float32)), "gelu")


def test_padding_stats_flops():
    s = R.padding_stats(np.array([1, 4]), 4)
    assert s["real_tokens"] == 5 and s["total_slots"] == 8 and s["padded_slots"] == 3
    assert s["fraction_wasted"] == pytest.approx(3 / 8)
    assert s["ffn_flops_padded"] == 4 * 8 * 384 * 1536
    assert s["ffn_flops_packed"] == 4 * 5 * 384 * 1536
    assert R.padding_stats([], 4)["fraction_wasted"] == 0.0


@pytest.mark.parametrize("mod", [R, T], ids=["numpy", "torch"])
def test_packing_bad_inputs(mod):
    arr = (lambda a: a) if mod is R else torch.from_numpy
    x = arr(np.zeros((2, 3, 4), dtype=np.float32))
    with pytest.raises(ValueError, match="lengths must be <= max_len=3, got max 4"):
        mod.pack(x, [1, 4])
    with pytest.raises(ValueError, match="lengths must be >= 0, got min -1"):
        mod.lengths_to_mask([1, -1], 3)
    with pytest.raises(ValueError, match="one entry per sequence"):
        mod.pack(x, [1, 2, 3])
    with pytest.raises(TypeError, match="lengths must"):
        mod.pack(x, [1.0, 2.0])
    with pytest.raises(TypeError, match="x must be"):
        mod.pack([[1, 2]], [1])
    with pytest.raises(ValueError, match="max_len must be an int >= 0"):
        mod.lengths_to_mask([1], -2)
    packed = arr(np.zeros((5, 4), dtype=np.float32))
    cu_t = (lambda v: np.array(v, dtype=np.int64)) if mod is R else (lambda v: torch.tensor(v))
    with pytest.raises(ValueError, match=r"cu\[-1\] must equal packed.shape\[0\] = 5, got 4"):
        mod.unpack(packed, cu_t([0, 2, 4]), 3)
    with pytest.raises(ValueError, match="cu must be non-decreasing"):
        mod.unpack(packed, cu_t([0, 3, 2, 5]), 3)
    with pytest.raises(ValueError, match="cu must start at 0"):
        mod.unpack(packed, cu_t([1, 3, 5]), 3)
    with pytest.raises(ValueError, match="must be <= max_len=2"):
        mod.unpack(packed, cu_t([0, 3, 5]), 2)
    with pytest.raises(TypeError, match="pad_value must be a real number"):
        mod.unpack(packed, cu_t([0, 2, 5]), 3, pad_value="x")
    ints = arr(np.zeros((5,), dtype=np.int64))
    with pytest.raises(ValueError, match="pad_value must be a whole number"):
        mod.unpack(ints, cu_t([0, 2, 5]), 3, pad_value=0.5)
    w1 = arr(np.zeros((4, 6), dtype=np.float32))
    b1 = arr(np.zeros(6, dtype=np.float32))
    w2 = arr(np.zeros((6, 4), dtype=np.float32))
    b2 = arr(np.zeros(4, dtype=np.float32))
    with pytest.raises(ValueError, match=r"w2 must have shape \[d_ff=6, d_model=4\]"):
        mod.packed_ffn(x, [1, 2], w1, b1, w1, b2)
    with pytest.raises(ValueError, match=r"b1 must have shape \[d_ff=6\]"):
        mod.padded_ffn(x, [1, 2], w1, b2, w2, b2)
    with pytest.raises(ValueError, match="d_model must be an int >= 1"):
        mod.padding_stats([1], 3, d_model=0)
    if mod is T:
        with pytest.raises(TypeError, match="b2 must have the same dtype as x"):
            mod.packed_ffn(x, [1, 2], w1, b1, w2, b2.double())


def test_pack_realistic_batch():
    """A batch of the size bench.py uses packs identically in both backends (timing is bench.py's job)."""
    rng = np.random.default_rng(0)
    x, lengths = _random_batch(rng, 32, 128, (16,), zero=False)
    p, cu = T.pack(torch.from_numpy(x), torch.from_numpy(lengths))
    rp, rcu = R.pack(x, lengths)
    np.testing.assert_array_equal(p.numpy(), rp)
    np.testing.assert_array_equal(cu.numpy(), rcu)


# ============================================================================ bench
def test_bench_run_rejects_bad_quick():
    from effx_lab.costs import bench

    with pytest.raises(TypeError, match="quick must be a bool"):
        bench.run(quick="yes")


@pytest.mark.slow
def test_bench_quick_runs(tmp_path, monkeypatch):
    from effx_lab.costs import bench

    monkeypatch.setenv("EFFX_LAB_CACHE", str(tmp_path))  # keep the ceilings cache out of $HOME
    out = bench.run(quick=True)
    json.dumps(out)  # plain, JSON-serialisable values only
    assert [row["n"] for row in out["gemm_vs_gemv"]] == [512, 1024]
    for row in out["gemm_vs_gemv"]:
        assert row["gemm"]["intensity"] == pytest.approx(row["n"] / 6)
        assert row["gemv"]["intensity"] < 0.5 < row["gemm"]["intensity"]
        assert row["gemv"]["bound"] == "memory" and row["gemv_stack"] >= 1
        # the direction of the chapter's claim: a GEMM does more FLOPs per second than a streamed GEMV. A ratio
        # of times with a huge built-in margin: n / 6 (85-170) FLOPs per byte against < 0.5, measured 30-80x
        # here, so no load on a shared machine brings it down to 1
        assert row["gemm_over_gemv_achieved_flops"] > 1.0
    ffn = out["padded_vs_packed_ffn"]
    # float32 on two row layouts: within twice the derived bound of _ffn_bound on the bench's own inputs
    cfg = {k: ffn["config"][k] for k in ("batch", "max_len", "min_len", "d_model", "d_ff")}
    _, (x, w1, b1, w2, b2) = bench._ffn_inputs(device=torch.device("cpu"), **cfg)
    rows = x.reshape(-1, cfg["d_model"]).numpy()
    bound = 2 * _ffn_bound(rows, *(t.numpy() for t in (w1, b1, w2, b2)))
    assert 0 <= ffn["max_abs_diff"] <= bound.max()  # each element within its own bound, so the max within the max
    assert ffn["ideal_speedup"] == pytest.approx(1 / (1 - ffn["padding"]["fraction_wasted"]))
    assert ffn["measured_speedup"] > 0
    assert out["pack_numpy_vs_torch"]["same_result"] is True
    dec = out["prefill_vs_decode"]
    assert [r["batch_size"] for r in dec["rows"]] == [1, 8]
    # prefill serves tokens faster than decode: a ratio of times with a huge built-in margin (one forward over
    # a 128-token prompt against one forward per token; measured ~35x on a 2-core CPU), not flipped by load
    assert dec["prefill_over_decode_tokens_per_s_batch1"] > 1.0


# ============================================================================ bench helpers for notebook 01.2
def _fake_roofline():
    from effx_lab.bench import Ceilings, Roofline

    ceil = Ceilings(device="test", peak_flops=1e11, peak_bandwidth=1e10, dtype="float32", method="test",
                    measured_at="2024-01-01T00:00:00+00:00")
    return Roofline(ceil)


def test_gemm_gemv_points_places_three_kernels():
    from effx_lab.costs import bench

    n = 64
    pts = bench.gemm_gemv_points(n, _fake_roofline(), stream_bytes=3 * 4 * n * n, min_run_time=0.01, device="cpu")
    assert pts["n"] == n and pts["stack"] == 3
    assert pts["gemm"].flops == 2 * n**3 and pts["gemm"].intensity == pytest.approx(n / 6)
    assert pts["gemv"].flops == 3 * 2 * n * n  # three matrices streamed by one call
    assert pts["gemv"].bytes_moved == 3 * F.matmul_bytes(n, 1, n, 4)
    for key in ("gemv", "gemv_cache_resident"):
        assert pts[key].intensity < 0.5 and pts[key].bound == "memory"
    for key in ("gemm", "gemv", "gemv_cache_resident"):
        assert pts[key].seconds > 0 and pts[key].achieved_flops > 0
    # stream_bytes=0 still times one matrix
    assert bench.gemm_gemv_points(8, _fake_roofline(), stream_bytes=0, min_run_time=0.01)["stack"] == 1


@pytest.mark.parametrize(
    "kwargs, exc, text",
    [
        ({"n": 0}, ValueError, "n must be an int >= 1, got 0"),
        ({"n": 2.0}, TypeError, "n must be an int"),
        ({"roofline": "peak"}, TypeError, "roofline must be an effx_lab.bench.Roofline"),
        ({"stream_bytes": -1}, ValueError, "stream_bytes must be an int >= 0, got -1"),
        ({"min_run_time": 0.0}, ValueError, "min_run_time must be > 0.0"),
        ({"device": "tpu"}, ValueError, "device must be 'cpu' or 'cuda'"),
        ({"device": 3}, TypeError, "device must be None, a str"),
        ({"seed": -1}, ValueError, "seed must be an int >= 0"),
    ],
)
def test_gemm_gemv_points_bad_inputs(kwargs, exc, text):
    from effx_lab.costs import bench

    args = {"n": 8, "roofline": _fake_roofline(), "min_run_time": 0.01}
    args.update(kwargs)
    n, roofline = args.pop("n"), args.pop("roofline")
    with pytest.raises(exc, match=text):
        bench.gemm_gemv_points(n, roofline, **args)


def _small_tinylm():
    from effx_lab.models import TinyLMConfig
    from effx_lab.models.torch_ops import TinyLM

    return TinyLM.from_config(TinyLMConfig(vocab_size=32, d_model=16, n_layers=1, n_heads=2, max_seq_len=16)).eval()


def test_prefill_decode_times_rows_and_threads_restored():
    from effx_lab.costs import bench

    model = _small_tinylm()
    before = torch.get_num_threads()
    rows = bench.prefill_decode_times(model, (1, 3), prompt_len=8, min_run_time=0.01, rounds=2, threads=1)
    assert torch.get_num_threads() == before
    assert [r["batch_size"] for r in rows] == [1, 3]
    for r in rows:
        assert r["prompt_len"] == 8 and r["prefill_s"] > 0 and r["decode_step_s"] > 0
        assert r["prefill_tokens_per_s"] == pytest.approx(r["batch_size"] * 8 / r["prefill_s"])
        assert r["decode_tokens_per_s"] == pytest.approx(r["batch_size"] / r["decode_step_s"])
    json.dumps(rows)


@pytest.mark.parametrize(
    "args, kwargs, exc, text",
    [
        (("model",), {}, TypeError, "model must be an effx_lab.models.torch_ops.TinyLM"),
        ((None, []), {"prompt_len": 4}, TypeError, "batch_sizes must be a non-empty sequence"),
        ((None, "12"), {"prompt_len": 4}, TypeError, "batch_sizes must be a non-empty sequence"),
        ((None, (1, 0)), {"prompt_len": 4}, ValueError, r"batch_sizes\[1\] must be an int >= 1, got 0"),
        ((None,), {"prompt_len": 16}, ValueError, r"prompt_len must be an int in \[1, 15\], got 16"),
        ((None,), {"threads": 0, "prompt_len": 4}, ValueError, "threads must be an int >= 1, got 0"),
        ((None,), {"rounds": 0, "prompt_len": 4}, ValueError, "rounds must be an int >= 1, got 0"),
        ((None,), {"min_run_time": -1.0, "prompt_len": 4}, ValueError, "min_run_time must be > 0.0"),
        ((None,), {"seed": 1.5, "prompt_len": 4}, TypeError, "seed must be an int"),
    ],
)
def test_prefill_decode_times_bad_inputs(args, kwargs, exc, text):
    from effx_lab.costs import bench

    model = _small_tinylm()
    args = tuple(model if a is None else a for a in args)
    with pytest.raises(exc, match=text):
        bench.prefill_decode_times(*args, **kwargs)


def test_decode_vs_full_error_is_rounding_only_and_catches_a_wrong_step(monkeypatch):
    from effx_lab.costs import bench

    model = _small_tinylm().double()
    tokens = torch.from_numpy(np.random.default_rng(0).integers(0, 32, size=(3, 12)))
    err64 = bench.decode_vs_full_error(model, tokens, prefix_len=5)
    # float64: the cached and the full pass are the same sums in another order
    assert 0.0 <= err64 < 1e-12

    # a decode step that adds 1 to every logit: the error is 1 over the largest logit
    with torch.inference_mode():
        largest = model(tokens)[:, 5:].abs().max().item()
    forward = model.forward

    def shifted(x, cache=None):
        out = forward(x, cache)
        return out + 1.0 if cache is not None and x.shape[1] == 1 else out

    monkeypatch.setattr(model, "forward", shifted)
    assert bench.decode_vs_full_error(model, tokens, prefix_len=5) == pytest.approx(
        1.0 / largest, rel=1e-9
    )


@pytest.mark.parametrize(
    "model, tokens, prefix_len, exc, text",
    [
        ("lm", None, 2, TypeError, "model must be an effx_lab.models.torch_ops.TinyLM"),
        (None, [[1, 2, 3]], 1, TypeError, "tokens must be a torch.Tensor"),
        (None, torch.ones(2, 4), 1, TypeError, "tokens must be an integer tensor"),
        (None, torch.ones(4, dtype=torch.long), 1, TypeError, "integer tensor"),
        (None, torch.ones(2, 17, dtype=torch.long), 1, ValueError,
         r"2 <= seq <= max_seq_len=16, got \(2, 17\)"),
        (None, torch.ones(2, 1, dtype=torch.long), 1, ValueError, r"got \(2, 1\)"),
        (None, torch.ones(2, 4, dtype=torch.long), 4, ValueError,
         r"prefix_len must be an int in \[1, 3\], got 4"),
        (None, torch.ones(2, 4, dtype=torch.long), 0, ValueError, "prefix_len"),
        (None, torch.ones(2, 4, dtype=torch.long), 1.0, TypeError,
         "prefix_len must be an int"),
    ],
)
def test_decode_vs_full_error_bad_inputs(model, tokens, prefix_len, exc, text):
    from effx_lab.costs import bench

    model = _small_tinylm() if model is None else model
    tokens = torch.ones(2, 4, dtype=torch.long) if tokens is None else tokens
    with pytest.raises(exc, match=text):
        bench.decode_vs_full_error(model, tokens, prefix_len=prefix_len)


# ============================================================================ memory helpers for 01.1
def test_with_kv_heads_mha_gqa_mqa():
    base = M.PRESETS["llama2-7b"]
    mqa = M.with_kv_heads("llama2-7b", 1)
    gqa = M.with_kv_heads(base, 8)
    mha = M.with_kv_heads(base, 32)
    assert (mqa.name, gqa.name, mha.name) == ("llama2-7b-mqa", "llama2-7b-gqa8", "llama2-7b-mha")
    assert mqa.n_kv_heads == 1 and gqa.n_kv_heads == 8 and mha.n_kv_heads == 32
    for attr in ("n_layers", "d_model", "n_heads", "head_dim", "d_ff", "vocab_size", "gated_mlp", "tie_embeddings"):
        assert getattr(mqa, attr) == getattr(base, attr), attr
    # the cache shrinks by exactly n_heads / n_kv_heads; the weights are kept by default
    assert base.kv_bytes(4096, 16, 2) == 32 * mqa.kv_bytes(4096, 16, 2) == 4 * gqa.kv_bytes(4096, 16, 2)
    assert mqa.params() == gqa.params() == base.params()
    # recounted: MQA drops 31/32 of the K/V projections
    small = M.with_kv_heads(base, 1, keep_n_params=False)
    assert small.n_params is None
    assert base.params() - small.params() == 32 * 2 * 4096 * (32 - 1) * 128
    assert M.with_kv_heads(base, 4, name="mine").name == "mine"
    assert "with_kv_heads" in small.source


@pytest.mark.parametrize(
    "kwargs, exc, text",
    [
        ({"n_kv_heads": 3}, ValueError, "n_kv_heads must divide n_heads=32"),
        ({"n_kv_heads": 0}, ValueError, "n_kv_heads must be an int in \\[1, 32\\], got 0"),
        ({"n_kv_heads": 64}, ValueError, "n_kv_heads must be an int in \\[1, 32\\], got 64"),
        ({"n_kv_heads": 2.0}, TypeError, "n_kv_heads must be an int"),
        ({"n_kv_heads": 2, "keep_n_params": 1}, TypeError, "keep_n_params must be a bool"),
        ({"n_kv_heads": 2, "name": ""}, TypeError, "name must be a non-empty str"),
    ],
)
def test_with_kv_heads_bad_inputs(kwargs, exc, text):
    with pytest.raises(exc, match=text):
        M.with_kv_heads("llama2-7b", **kwargs)
    with pytest.raises(TypeError, match="shape must be a ModelShape"):
        M.with_kv_heads(7, 1)


@pytest.mark.parametrize("name", ["llama2-7b", "llama2-70b", "gpt3-175b", "palm-540b", "palm-540b-mha"])
@pytest.mark.parametrize("w, kv", [("bf16", "bf16"), ("int4", "int8"), (2, 0.5), ("int8", 0.375)])
def test_kv_crossover_tokens_is_the_first_token_count_where_kv_reaches_weights(name, w, kv):
    s = M.PRESETS[name]
    n = M.kv_crossover_tokens(s, weight_dtype=w, kv_dtype=kv)
    weights = M.param_bytes(s.params(), w)
    kv_b = M.dtype_bytes(kv) if isinstance(kv, str) else kv
    assert isinstance(n, int) and n >= 1
    assert s.kv_bytes(n, 1, kv_b) >= weights > s.kv_bytes(n - 1, 1, kv_b)
    # only seq * batch matters
    assert s.kv_bytes(1, n, kv_b) >= weights


def test_kv_crossover_tokens_known_answer_and_bad_inputs():
    # llama2-7b in bf16: 13,476,298,752 bytes of weights are exactly 25704 tokens of 0.5 MiB each
    assert 13_476_298_752 == 25704 * 524_288
    assert M.kv_crossover_tokens("llama2-7b") == 25704
    assert M.kv_crossover_tokens("llama2-7b", kv_dtype="fp32") == 12852
    # a tiny model whose weights are exactly a whole number of tokens: the crossing is that token
    toy = M.ModelShape("toy", 1, 4, 1, 1, 1, 4, 4, n_params=8)
    assert M.kv_crossover_tokens(toy, weight_dtype=1, kv_dtype=1) == 4  # 2 bytes per token, 8 bytes of weights
    # 0.5 byte per token: 15 tokens hold 7.5 bytes, stored in 8 whole bytes, as many as the weights
    assert M.kv_crossover_tokens(toy, weight_dtype=1, kv_dtype=0.25) == 15
    with pytest.raises(ValueError, match="kv_dtype"):
        M.kv_crossover_tokens("llama2-7b", kv_dtype="fp3")
    with pytest.raises(ValueError, match="weight_dtype"):
        M.kv_crossover_tokens("llama2-7b", weight_dtype=-1)
    with pytest.raises(ValueError, match="name must be one of"):
        M.kv_crossover_tokens("llama9")


# ============================================================================ ffn (01.3: the FFN alone, on any row layout)
@pytest.mark.parametrize("shape", [(7, 8), (3, 5, 8), (8,), (0, 8), (2, 0, 8)])
def test_ffn_backends_agree_and_commute_with_packing(shape):
    rng = np.random.default_rng(3)
    d, f = 8, 12
    h = rng.standard_normal(shape).astype(np.float32)
    w1 = (rng.standard_normal((d, f)) / np.sqrt(d)).astype(np.float32)
    b1 = rng.standard_normal(f).astype(np.float32)
    w2 = (rng.standard_normal((f, d)) / np.sqrt(f)).astype(np.float32)
    b2 = rng.standard_normal(d).astype(np.float32)
    out = R.ffn(h, w1, b1, w2, b2)
    assert out.shape == shape and out.dtype == np.float32
    expected = R.gelu(h @ w1 + b1) @ w2 + b2
    # float32 on different row layouts and backends: within twice the derived bound of _ffn_bound
    bound = 2 * _ffn_bound(h, w1, b1, w2, b2)
    assert_within(out, expected, bound, "ffn vs its formula")
    tout = T.ffn(*(torch.from_numpy(a) for a in (h, w1, b1, w2, b2)))
    assert_within(tout, out, bound, "torch vs numpy")
    if len(shape) == 3 and shape[1]:
        # the FFN of the packed tokens is the packed FFN of the padded batch (row-wise layer)
        lengths = np.array([shape[1], 0, 1][: shape[0]])
        packed, _ = R.pack(h, lengths)
        assert_within(
            R.ffn(packed, w1, b1, w2, b2), R.pack(R.padded_ffn(h, lengths, w1, b1, w2, b2), lengths)[0],
            R.pack(bound, lengths)[0], "packed vs padded",
        )


@pytest.mark.parametrize("mod", [R, T], ids=["numpy", "torch"])
def test_ffn_bad_inputs(mod):
    arr = (lambda a: a) if mod is R else torch.from_numpy
    h = arr(np.zeros((5, 4), dtype=np.float32))
    w1 = arr(np.zeros((4, 6), dtype=np.float32))
    b1 = arr(np.zeros(6, dtype=np.float32))
    w2 = arr(np.zeros((6, 4), dtype=np.float32))
    b2 = arr(np.zeros(4, dtype=np.float32))
    assert tuple(mod.ffn(h, w1, b1, w2, b2).shape) == (5, 4)
    with pytest.raises(TypeError, match="h must"):
        mod.ffn([[0.0] * 4], w1, b1, w2, b2)
    with pytest.raises(TypeError, match="h must have a float dtype"):
        mod.ffn(arr(np.zeros((5, 4), dtype=np.int64)), w1, b1, w2, b2)
    with pytest.raises(ValueError, match="h must have"):
        mod.ffn(arr(np.array(1.0, dtype=np.float32)), w1, b1, w2, b2)
    with pytest.raises(ValueError, match=r"w1 must have shape \[d_model=3, d_ff\], got \(4, 6\)"):
        mod.ffn(arr(np.zeros((5, 3), dtype=np.float32)), w1, b1, w2, b2)
    with pytest.raises(ValueError, match=r"w2 must have shape \[d_ff=6, d_model=4\], got \(4, 6\)"):
        mod.ffn(h, w1, b1, w1, b2)
    with pytest.raises(ValueError, match=r"b2 must have shape \[d_model=4\]"):
        mod.ffn(h, w1, b1, w2, b1)
    if mod is T:
        with pytest.raises(TypeError, match=r"b1 must have the same dtype as h \(torch.float32\), got torch.float64"):
            mod.ffn(h, w1, b1.double(), w2, b2)
