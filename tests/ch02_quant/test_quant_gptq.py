"""Tests of GPTQ and weight-only int4/int8 storage (chapter 2, section 02.5): NumPy reference vs PyTorch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _backends import abs_matmul, assert_within, gamma, unit_roundoff

from effx_lab.quant import _np_gptq as R
from effx_lab.quant import _torch_gptq as T
from effx_lab.quant.reference import QParams, dequantize, fake_quantize, qrange


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """GPTQ's loop is many small ops; on a busy 2-core machine every OpenMP region of a 2-thread pool can wait
    for a descheduled thread (measured: 270 ms instead of 11 ms for one 24x96 layer). One thread for this
    module keeps it fast; the thread count changes no result, and it is restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(a, copy=True))


def _calib(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    """Correlated calibration inputs: a rank-d/4 signal plus a little noise (real activations are like this)."""
    rank = max(d // 4, 1)
    return rng.normal(size=(n, rank)) @ rng.normal(size=(rank, d)) + 0.1 * rng.normal(size=(n, d))


def _problem(seed: int, out: int = 24, d: int = 64, n: int = 256, dtype=np.float64):
    rng = np.random.default_rng(seed)
    x = _calib(rng, n, d).astype(dtype)
    w = (rng.normal(size=(out, d)) * 0.05).astype(dtype)
    return w, x


def _group_of_column(res, n_cols: int) -> np.ndarray:
    """For each original column, the index of its group (groups follow the quantization order)."""
    gs = n_cols if res.group_size is None else res.group_size
    position = np.arange(n_cols) if res.perm is None else np.argsort(np.asarray(res.perm))
    return position // gs


def _dequant_result(res, n_cols: int) -> np.ndarray:
    g = _group_of_column(res, n_cols)
    q, scale, zero = (np.asarray(a) for a in (res.q, res.scale, res.zero_point))
    return (q - zero[:, g]).astype(scale.dtype) * scale[:, g]


def _damped(h: np.ndarray, damp: float = 0.01) -> np.ndarray:
    out = h.copy()
    out[np.diag_indices(len(h))] += damp * np.mean(np.diag(h))
    return out


# ============================================================================ agreement NumPy vs torch
GPTQ_CASES = [
    # (out, in, bits, group_size, symmetric, act_order, block_size)
    (16, 32, 4, None, False, False, 128),
    (24, 64, 3, 16, False, False, 16),
    (24, 64, 4, 16, True, False, 7),
    (20, 48, 4, 8, False, True, 12),
    (12, 40, 2, None, True, True, 5),
    (8, 64, 8, 32, False, False, 48),
]


@pytest.mark.parametrize("case", GPTQ_CASES, ids=[f"{c[0]}x{c[1]}-b{c[2]}-g{c[3]}-s{c[4]}-a{c[5]}" for c in GPTQ_CASES])
def test_gptq_reference_and_torch_agree_float64(case):
    out, d, bits, gs, sym, act, block = case
    w, x = _problem(out * 1000 + d, out, d)
    h = R.gptq_hessian(x)
    kw = {"bits": bits, "group_size": gs, "symmetric": sym, "act_order": act, "block_size": block}
    rn = R.gptq_quantize(w, h, **kw)
    rt = T.gptq_quantize(_t(w), _t(h), **kw)
    assert rn.q.shape == tuple(rt.q.shape) == (out, d)
    assert rn.q.dtype == np.int32 and rt.q.dtype == torch.int32
    n_groups = 1 if gs is None else d // gs
    assert rn.scale.shape == tuple(rt.scale.shape) == (out, n_groups) == rn.zero_point.shape
    assert rn.weight.dtype == np.float64 and rt.weight.dtype == torch.float64
    if act:
        np.testing.assert_array_equal(rn.perm, rt.perm.numpy())
    else:
        assert rn.perm is None and rt.perm is None
    # float64: the two backends' rounding differences (~1e-16 relative) cannot move a scaled weight across a
    # rounding boundary of the grid (a code flip would need a value within ~1e-13 of a half-integer), so the
    # integer codes are compared exactly here, and everything else tightly (float32 is the next test)
    np.testing.assert_array_equal(rt.q.numpy(), rn.q)
    np.testing.assert_allclose(rt.scale.numpy(), rn.scale, rtol=1e-9)
    np.testing.assert_array_equal(rt.zero_point.numpy(), rn.zero_point)
    np.testing.assert_allclose(rt.weight.numpy(), rn.weight, rtol=1e-9, atol=1e-12)
    assert rt.loss == pytest.approx(rn.loss, rel=1e-8)
    for res in (rn, rt):
        assert (res.bits, res.group_size, res.symmetric) == (bits, gs, sym)
        assert isinstance(res.loss, float) and res.loss > 0


@pytest.mark.parametrize("gs", [None, 16])
def test_gptq_float32_agreement_is_looser(gs):
    """float32: NumPy and torch accumulate GPTQ's updates in different orders (and so do BLAS kernels, CPU
    generations and thread counts), so a scaled weight that lies within float32 rounding of a half-integer can
    round to the neighbouring code in one backend. GPTQ's error feedback then steers the rest of that row onto
    another, equally valid trajectory (rows are independent: they share the Hessian, not their updates), and
    no tolerance on the loss or the weights follows from the precision. So: dtypes propagate, diverging rows are
    rare and each starts with a one-step difference, and both results have GPTQ's quality (agreement itself
    is proved in float64 above)."""
    w, x = _problem(7, 32, 64, dtype=np.float32)
    h = R.gptq_hessian(x)
    assert h.dtype == np.float32
    rn = R.gptq_quantize(w, h, 4, group_size=gs)
    rt = T.gptq_quantize(_t(w), _t(h), 4, group_size=gs)
    assert rn.weight.dtype == np.float32 and rt.weight.dtype == torch.float32
    assert rn.scale.dtype == np.float32 and rt.scale.dtype == torch.float32
    qn, qt = rn.q.astype(np.int64), rt.q.numpy().astype(np.int64)
    zn, zt = rn.zero_point, rt.zero_point.numpy()
    diverged = np.flatnonzero((qn != qt).any(axis=1) | (zn != zt).any(axis=1))
    assert len(diverged) <= 1, diverged  # rare: a near-tie at float32 rounding level, not a different method
    for r in diverged:  # columns are quantized left to right (no act-order): the first difference is one step
        first = np.flatnonzero(qn[r] != qt[r])
        assert first.size == 0 or abs(qn[r, first[0]] - qt[r, first[0]]) == 1, (r, qn[r], qt[r])
    e_rtn = R.layer_output_error(w, R.rtn_quantize_weight(w, 4, gs), x)
    e_n = R.layer_output_error(w, rn.weight, x)
    e_t = T.layer_output_error(_t(w), rt.weight, _t(x))
    assert 0 < e_n < 0.5 * e_rtn and 0 < e_t < 0.5 * e_rtn  # about 0.15x measured, as in float64


def test_torch_half_precision_inputs_keep_their_dtype():
    w, x = _problem(3, 16, 32, dtype=np.float32)
    h = T.gptq_hessian(_t(x).to(torch.bfloat16))
    assert h.dtype == torch.float32
    for dtype in (torch.float16, torch.bfloat16):
        res = T.gptq_quantize(_t(w).to(dtype), h, 4, group_size=16)
        assert res.weight.dtype == dtype and res.scale.dtype == torch.float32
        ref = T.gptq_quantize(_t(w).to(dtype).float(), h, 4, group_size=16)  # computed in float32 anyway
        torch.testing.assert_close(res.weight, ref.weight.to(dtype))


# ============================================================================ GPTQ properties
@pytest.mark.parametrize("backend", [R, T], ids=["reference", "torch"])
def test_block_size_does_not_change_the_result(backend):
    """Lazy batching is exact: any block size gives the same codes (float64), with or without groups, including
    group boundaries that fall inside a block (the group's grid uses the fully updated weights)."""
    w, x = _problem(11, 16, 48)
    h = R.gptq_hessian(x)
    cv = (lambda a: a) if backend is R else _t
    for gs in (None, 8, 16):
        results = [backend.gptq_quantize(cv(w), cv(h), 4, group_size=gs, block_size=b) for b in (48, 12, 5, 1)]
        base = np.asarray(results[0].q)
        for res in results[1:]:
            np.testing.assert_array_equal(np.asarray(res.q), base)
            np.testing.assert_allclose(np.asarray(res.scale), np.asarray(results[0].scale), rtol=1e-9)
            assert res.loss == pytest.approx(results[0].loss, rel=1e-9)


@pytest.mark.parametrize("backend", [R, T], ids=["reference", "torch"])
@pytest.mark.parametrize("bits", [3, 4])
@pytest.mark.parametrize("gs", [None, 32])
def test_gptq_beats_rtn_on_correlated_inputs(backend, bits, gs):
    w, x = _problem(5, 24, 96, n=384)
    cv = (lambda a: a) if backend is R else _t
    h = backend.gptq_hessian(cv(x))
    res = backend.gptq_quantize(cv(w), h, bits, group_size=gs)
    e_gptq = backend.layer_output_error(cv(w), res.weight, cv(x))
    e_rtn = backend.layer_output_error(cv(w), backend.rtn_quantize_weight(cv(w), bits, gs), cv(x))
    assert 0 < e_gptq < 0.5 * e_rtn  # about 0.15x measured: a clear margin
    res_act = backend.gptq_quantize(cv(w), h, bits, group_size=gs, act_order=True)
    assert backend.layer_output_error(cv(w), res_act.weight, cv(x)) < 0.5 * e_rtn


def test_gptq_loss_is_the_quadratic_error_with_the_damped_hessian():
    """sum_j err_j^2 / 2 over the steps == sum_rows (w - w_hat) H_damped (w - w_hat)^T / 2: every OBQ step is
    exact for the quadratic, so the paper's Losses add up to the total error."""
    w, x = _problem(2, 20, 40)
    h = R.gptq_hessian(x)
    for kw in ({}, {"group_size": 8}, {"act_order": True, "symmetric": True}, {"bits": 8, "damp": 0.1}):
        res = R.gptq_quantize(w, h, **kw)
        diff = w - res.weight
        quad = 0.5 * np.einsum("ri,ij,rj->", diff, _damped(h, kw.get("damp", 0.01)), diff)
        assert res.loss == pytest.approx(quad, rel=1e-9)
        res_t = T.gptq_quantize(_t(w), _t(h), **kw)
        diff_t = w - res_t.weight.numpy()
        assert res_t.loss == pytest.approx(
            0.5 * np.einsum("ri,ij,rj->", diff_t, _damped(h, kw.get("damp", 0.01)), diff_t)
        )


@pytest.mark.parametrize("backend", [R, T], ids=["reference", "torch"])
def test_eight_bits_is_nearly_lossless(backend):
    w, x = _problem(4, 16, 64)
    cv = (lambda a: a) if backend is R else _t
    res = backend.gptq_quantize(cv(w), backend.gptq_hessian(cv(x)), 8)
    assert backend.layer_output_error(cv(w), res.weight, cv(x)) < 1e-4
    assert np.abs(np.asarray(res.weight) - w).max() < 0.02 * np.abs(w).max()


@pytest.mark.parametrize("backend", [R, T], ids=["reference", "torch"])
@pytest.mark.parametrize("symmetric", [False, True], ids=["affine", "sym"])
@pytest.mark.parametrize("act_order", [False, True], ids=["natural", "act"])
def test_codes_grids_and_dequantization(backend, symmetric, act_order):
    w, x = _problem(8, 12, 48)
    cv = (lambda a: a) if backend is R else _t
    h = R.gptq_hessian(x)
    for bits, gs in ((4, None), (3, 8), (4, 16), (2, 48)):
        res = backend.gptq_quantize(cv(w), cv(h), bits, group_size=gs, symmetric=symmetric, act_order=act_order)
        q, scale, zero = (np.asarray(a) for a in (res.q, res.scale, res.zero_point))
        qmin, qmax = qrange(bits, symmetric)
        groups = _group_of_column(res, 48)
        for g in range(scale.shape[1]):
            codes = q[:, groups == g]
            assert codes.shape[1] == (48 if gs is None else gs)
            assert codes.min() >= qmin and codes.max() <= qmax
        assert (scale > 0).all() and zero.min() >= qmin and zero.max() <= qmax
        if symmetric:
            assert (zero == 0).all()
        # the integers and the grid give back `weight` exactly
        np.testing.assert_array_equal(_dequant_result(res, 48), np.asarray(res.weight))
        if not act_order:  # and so does the package's own dequantize, group by group
            gran = ("channel", 0, None) if gs is None else ("group", 1, gs)
            qp = QParams(scale, zero, bits, symmetric, *gran)
            np.testing.assert_array_equal(dequantize(q, qp), np.asarray(res.weight))


@pytest.mark.parametrize("backend", [R, T], ids=["reference", "torch"])
def test_act_order_permutation(backend):
    w, x = _problem(9, 16, 40)
    x[:, 3] *= 20.0  # a large input: quantized first
    cv = (lambda a: a) if backend is R else _t
    h = R.gptq_hessian(x)
    res = backend.gptq_quantize(cv(w), cv(h), 4, group_size=8, act_order=True)
    perm = np.asarray(res.perm)
    assert perm.dtype == np.int64
    np.testing.assert_array_equal(np.sort(perm), np.arange(40))
    assert perm[0] == 3
    assert np.all(np.diff(np.diag(h)[perm]) <= 0)  # decreasing H_jj
    # weight and q are in the original column order: quantizing a permuted problem without act-order gives
    # the same numbers, permuted
    plain = R.gptq_quantize(w[:, perm], h[np.ix_(perm, perm)], 4, group_size=8)
    np.testing.assert_allclose(np.asarray(res.weight)[:, perm], plain.weight, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("backend", [R, T], ids=["reference", "torch"])
def test_dead_inputs(backend):
    w, x = _problem(10, 12, 32)
    dead = [0, 5, 17, 31]
    x[:, dead] = 0.0
    cv = (lambda a: a) if backend is R else _t
    h = backend.gptq_hessian(cv(x))
    for kw in ({}, {"group_size": 8}, {"act_order": True, "group_size": 16}):
        res = backend.gptq_quantize(cv(w), h, 4, **kw)
        weight, q = np.asarray(res.weight), np.asarray(res.q)
        assert np.isfinite(weight).all() and np.isfinite(res.loss)
        assert (weight[:, dead] == 0).all()  # weight 0, which quantizes exactly
        zero = np.asarray(res.zero_point)[:, _group_of_column(res, 32)]
        np.testing.assert_array_equal(q[:, dead], zero[:, dead])
        e = backend.layer_output_error(cv(w), res.weight, cv(x))
        assert e < 0.5 * backend.layer_output_error(cv(w), backend.rtn_quantize_weight(cv(w), 4), cv(x))
    # an all-zero Hessian (no calibration signal at all) quantizes every weight to 0
    res = backend.gptq_quantize(cv(w), cv(np.zeros((32, 32))), 4)
    assert (np.asarray(res.weight) == 0).all()


def test_gptq_hessian_and_output_error():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 5, 8))
    xs = x.reshape(-1, 8)
    h = R.gptq_hessian(x)
    np.testing.assert_allclose(h, 2 * xs.T @ xs / 15, rtol=1e-12)
    np.testing.assert_allclose(T.gptq_hessian(_t(x)).numpy(), h, rtol=1e-12)
    assert R.gptq_hessian(x.astype(np.float16)).dtype == np.float32
    w = rng.normal(size=(4, 8))
    w_hat = w + 0.01 * rng.normal(size=w.shape)
    expected = np.sum((xs @ (w - w_hat).T) ** 2) / np.sum((xs @ w.T) ** 2)
    assert R.layer_output_error(w, w_hat, x) == pytest.approx(expected, rel=1e-12)
    assert T.layer_output_error(_t(w), _t(w_hat), _t(x)) == pytest.approx(expected, rel=1e-12)
    assert R.layer_output_error(w, w, x) == 0.0
    assert R.layer_output_error(np.zeros_like(w), np.zeros_like(w), x) == 0.0
    assert R.layer_output_error(np.zeros_like(w), w, x) == float("inf")
    assert T.layer_output_error(_t(np.zeros_like(w)), _t(w), _t(x)) == float("inf")


@pytest.mark.parametrize("gs", [None, 4, 16])
@pytest.mark.parametrize("symmetric", [False, True])
def test_rtn(gs, symmetric):
    rng = np.random.default_rng(1)
    w = rng.normal(size=(6, 16)).astype(np.float32)
    got = R.rtn_quantize_weight(w, 3, gs, symmetric)
    if gs is None:
        want = fake_quantize(w, 3, symmetric, granularity="channel", axis=0)
    else:
        want = fake_quantize(w, 3, symmetric, granularity="group", axis=1, group_size=gs)
    np.testing.assert_array_equal(got, want)
    assert got.dtype == np.float32
    np.testing.assert_allclose(T.rtn_quantize_weight(_t(w), 3, gs, symmetric).numpy(), got, rtol=1e-6)
    # each row (group) uses at most 2^3 distinct values
    for row in got.reshape(-1, gs or 16):
        assert len(np.unique(row)) <= 8


# ============================================================================ int4 / int8 storage
def _assert_weight_only_close(y, x, w_hat, b, dtype) -> None:
    """A weight-only linear run in ``dtype`` against ``x @ w_hat^T + b`` in float64 (x, w_hat, b float64).

    Derived bound, with u the unit roundoff of ``dtype``: every product ``x_k w_k`` carries up to 4 roundings
    to ``dtype`` (x, the scale, the dequantized weight or the scaled product, the output), the K-term sum is
    accumulated in float32 (NumPy float32 and PyTorch's CPU GEMMs, 16-bit inputs included) with gamma_K at
    float32's u, and the bias is rounded and added (2 u):
    ``|y - ref| <= (4 u + gamma_K(u32)) |x| @ |w_hat|^T + 2 u |b|``."""
    u, k = unit_roundoff(dtype), x.shape[-1]
    bound = (4 * u + gamma(k, unit_roundoff(np.float32))) * abs_matmul(x, w_hat.T)
    ref = x @ w_hat.T
    if b is not None:
        bound, ref = bound + 2 * u * np.abs(b), ref + b
    assert_within(y, ref, bound, f"weight-only linear in {dtype}")


def test_pack_unpack_all_values_and_layout():
    q = np.arange(-8, 8, dtype=np.int8)  # all 16 values
    for codes in (q, q[::-1].copy(), np.stack([q, np.roll(q, 3)])):
        packed = R.pack_int4(codes)
        assert packed.dtype == np.uint8 and packed.shape == codes.shape[:-1] + (codes.shape[-1] // 2,)
        np.testing.assert_array_equal(R.unpack_int4(packed), codes)
        assert R.unpack_int4(packed).dtype == np.int8
        packed_t = T.pack_int4(_t(codes))
        assert packed_t.dtype == torch.uint8
        np.testing.assert_array_equal(packed_t.numpy(), packed)
        np.testing.assert_array_equal(T.unpack_int4(packed_t).numpy(), codes)
    # the documented layout: low nibble = even index, value + 8
    np.testing.assert_array_equal(R.pack_int4(np.array([-8, 7, 1, -1, 0, 0], np.int8)), [0xF0, 0x79, 0x88])
    # every byte unpacks and packs back
    every = np.arange(256, dtype=np.uint8).reshape(4, 64)
    np.testing.assert_array_equal(R.pack_int4(R.unpack_int4(every)), every)
    np.testing.assert_array_equal(T.pack_int4(T.unpack_int4(_t(every))).numpy(), every)


@pytest.mark.parametrize("mod", [R, T], ids=["reference", "torch"])
def test_pack_rejects_bad_codes(mod):
    cv = (lambda a: a) if mod is R else _t
    with pytest.raises(ValueError, match="q must have an even"):
        mod.pack_int4(cv(np.zeros((2, 3), np.int8)))
    with pytest.raises(ValueError, match=r"q must lie in \[-8, 7\]"):
        mod.pack_int4(cv(np.array([0, 8], np.int8)))
    with pytest.raises(TypeError, match="q must have an integer dtype"):
        mod.pack_int4(cv(np.zeros(4, np.float32)))
    with pytest.raises(TypeError, match="packed must have dtype uint8"):
        mod.unpack_int4(cv(np.zeros(4, np.int8)))
    other = _t if mod is R else (lambda a: a)
    with pytest.raises(TypeError, match="q must be"):
        mod.pack_int4(other(np.zeros(4, np.int8)))


@pytest.mark.parametrize("group_size", [8, 32])
def test_int4_weights_and_w4a16(group_size):
    rng = np.random.default_rng(group_size)
    w = rng.normal(size=(12, 64))
    x = rng.normal(size=(2, 3, 64))
    b = rng.normal(size=12)
    packed, scales = R.quantize_weight_int4(w, group_size)
    assert packed.shape == (12, 32) and packed.dtype == np.uint8
    assert scales.shape == (12, 64 // group_size) and scales.dtype == np.float64
    codes = R.unpack_int4(packed)
    assert codes.min() >= -7 and codes.max() <= 7  # restricted symmetric range
    w_hat = (codes.reshape(12, -1, group_size) * scales[:, :, None]).reshape(12, 64)
    assert np.abs(w_hat - w).max() <= 0.5 * scales.max() * (1 + 1e-9)
    np.testing.assert_array_equal(w_hat, fake_quantize(w, 4, True, "group", axis=1, group_size=group_size))
    y = R.w4a16_linear(x, packed, scales, group_size, b)
    assert y.shape == (2, 3, 12) and y.dtype == np.float64
    np.testing.assert_allclose(y, x @ w_hat.T + b, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(R.w4a16_linear(x, packed, scales, group_size), x @ w_hat.T, rtol=1e-12, atol=1e-12)
    # torch: same storage, same product
    packed_t, scales_t = T.quantize_weight_int4(_t(w), group_size)
    np.testing.assert_array_equal(packed_t.numpy(), packed)
    np.testing.assert_allclose(scales_t.numpy(), scales, rtol=1e-12)
    y_t = T.w4a16_linear(_t(x), packed_t, scales_t, group_size, _t(b))
    np.testing.assert_allclose(y_t.numpy(), y, rtol=1e-10, atol=1e-10)
    # float32 and 16-bit activations (dequantized in x's dtype): within the bound derived for that dtype
    y32 = R.w4a16_linear(x.astype(np.float32), packed, scales.astype(np.float32), group_size, b.astype(np.float32))
    assert y32.dtype == np.float32
    _assert_weight_only_close(y32, x, w_hat, b, np.float32)
    y16 = R.w4a16_linear(x.astype(np.float16), packed, scales, group_size)
    assert y16.dtype == np.float16
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        yt = T.w4a16_linear(_t(x).to(dtype), packed_t, scales_t, group_size, _t(b).to(dtype))
        assert yt.dtype == dtype
        _assert_weight_only_close(yt.float().numpy(), x, w_hat, b, dtype)


def test_int8_weights_and_w8a16():
    rng = np.random.default_rng(3)
    w = rng.normal(size=(10, 24))
    x = rng.normal(size=(5, 24))
    b = rng.normal(size=10)
    q, scales = R.quantize_weight_int8(w)
    assert q.dtype == np.int8 and q.shape == (10, 24) and scales.shape == (10,)
    np.testing.assert_allclose(scales, np.abs(w).max(axis=1) / 127, rtol=1e-12)
    assert (np.abs(q).max(axis=1) == 127).all()
    w_hat = q * scales[:, None]
    np.testing.assert_allclose(R.w8a16_linear(x, q, scales, b), x @ w_hat.T + b, rtol=1e-12, atol=1e-12)
    q_t, scales_t = T.quantize_weight_int8(_t(w))
    np.testing.assert_array_equal(q_t.numpy(), q)
    y_t = T.w8a16_linear(_t(x), q_t, scales_t, _t(b))
    np.testing.assert_allclose(y_t.numpy(), x @ w_hat.T + b, rtol=1e-10, atol=1e-10)
    y_bf = T.w8a16_linear(_t(x).bfloat16(), q_t, scales_t)
    assert y_bf.dtype == torch.bfloat16
    _assert_weight_only_close(y_bf.float().numpy(), x, w_hat, None, torch.bfloat16)
    y1 = R.w8a16_linear(x[0], q, scales)  # a single token (decode)
    assert y1.shape == (10,)
    np.testing.assert_allclose(y1, x[0] @ w_hat.T, rtol=1e-12)


# ============================================================================ bad inputs
@pytest.mark.parametrize("mod", [R, T], ids=["reference", "torch"])
def test_bad_inputs(mod):
    cv = (lambda a: a) if mod is R else _t
    rng = np.random.default_rng(0)
    w = rng.normal(size=(4, 8))
    h = R.gptq_hessian(rng.normal(size=(32, 8)))
    with pytest.raises(ValueError, match="h must have shape"):
        mod.gptq_quantize(cv(w), cv(h[:4, :4]))
    with pytest.raises(ValueError, match="w must have 2 dimensions"):
        mod.gptq_quantize(cv(w[0]), cv(h))
    with pytest.raises(ValueError, match="group_size=3 must divide"):
        mod.gptq_quantize(cv(w), cv(h), group_size=3)
    with pytest.raises(ValueError, match="bits must be an int in"):
        mod.gptq_quantize(cv(w), cv(h), bits=9)
    with pytest.raises(ValueError, match="block_size"):
        mod.gptq_quantize(cv(w), cv(h), block_size=0)
    with pytest.raises(ValueError, match="damp must be >= 0"):
        mod.gptq_quantize(cv(w), cv(h), damp=-0.1)
    with pytest.raises(TypeError, match="act_order must be a bool"):
        mod.gptq_quantize(cv(w), cv(h), act_order=1)
    asym = h.copy()
    asym[0, 1] += 1.0
    with pytest.raises(ValueError, match="h must be symmetric"):
        mod.gptq_quantize(cv(w), cv(asym))
    with pytest.raises(ValueError, match="not positive definite"):
        mod.gptq_quantize(cv(w), cv(-np.eye(8) + 2 * np.ones((8, 8))), damp=0.0)
    bad = w.copy()
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match="w must contain only finite"):
        mod.gptq_quantize(cv(bad), cv(h))
    with pytest.raises(TypeError, match="w must have a float dtype"):
        mod.gptq_quantize(cv(w.astype(np.int32)), cv(h))
    other = _t if mod is R else (lambda a: a)
    with pytest.raises(TypeError, match="w must be"):
        mod.gptq_quantize(other(w), cv(h))
    with pytest.raises(ValueError, match="x must have last dimension 8"):
        mod.layer_output_error(cv(w), cv(w), cv(rng.normal(size=(3, 5))))
    with pytest.raises(ValueError, match="w_hat must have the shape"):
        mod.layer_output_error(cv(w), cv(w[:2]), cv(rng.normal(size=(3, 8))))
    with pytest.raises(ValueError, match="w must have an even number"):
        mod.quantize_weight_int4(cv(rng.normal(size=(4, 7))), group_size=7)
    with pytest.raises(ValueError, match="group_size=128 must divide"):
        mod.quantize_weight_int4(cv(w))
    packed, scales = mod.quantize_weight_int4(cv(w), group_size=4)
    with pytest.raises(ValueError, match="scales must have shape"):
        mod.w4a16_linear(cv(rng.normal(size=(2, 8))), packed, scales, 2)
    with pytest.raises(ValueError, match="x must have last dimension 8"):
        mod.w4a16_linear(cv(rng.normal(size=(2, 6))), packed, scales, 4)
    with pytest.raises(ValueError, match="b must have shape"):
        mod.w4a16_linear(cv(rng.normal(size=(2, 8))), packed, scales, 4, cv(np.zeros(3)))
    q8, s8 = mod.quantize_weight_int8(cv(w))
    with pytest.raises(TypeError, match="q must have dtype int8"):
        mod.w8a16_linear(cv(rng.normal(size=(2, 8))), cv(np.zeros((4, 8), np.int32)), s8)
    with pytest.raises(ValueError, match="scales must have shape"):
        mod.w8a16_linear(cv(rng.normal(size=(2, 8))), q8, cv(np.ones(3)))
    with pytest.raises(ValueError, match="group_size"):
        mod.rtn_quantize_weight(cv(w), 4, group_size=5)
    with pytest.raises(ValueError, match="x must not be empty"):
        mod.gptq_hessian(cv(np.zeros((0, 8))))
