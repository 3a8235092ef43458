"""Tests of effx_lab.nm's topic ``nm`` (04.1): N:M masks, the compressed form
(NMCompressed, packed metadata), compress / decompress and nm_matmul, in both faces.

The NumPy reference and torch_ops run on the same random inputs: masks, values and
metadata must be equal bit for bit, products agree in float64 within a rounding bound
(any summation order). Then the properties each function documents (seeded loops over
random shapes and patterns), and the errors every public function raises.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _backends import abs_matmul, assert_within, gamma, unit_roundoff

from effx_lab.nm import reference as R
from effx_lab.nm import shapes
from effx_lab.nm import torch_ops as T
from effx_lab.nm._format import NMCompressed


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(a, copy=True))


def _np(a) -> np.ndarray:
    return a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else a


FACES = [
    pytest.param((R, np.asarray), id="reference"),
    pytest.param((T, _t), id="torch_ops"),
]
PATTERNS = [(2, 4), (1, 2), (1, 4), (2, 8), (3, 8), (4, 8), (3, 5), (5, 16)]


def _nm_weight(rng, out, d_in, n, m, zero_some=True):
    """A random N:M weight with, where asked, groups holding fewer than n non-zeros,
    an all-zero row and repeated magnitudes."""
    w = rng.standard_normal((out, d_in))
    w[:, ::3] = np.round(w[:, ::3])  # ties in |w|
    w = w * R.nm_mask(w, n, m)
    if zero_some:
        drop = rng.random(w.shape) < 0.3
        w[drop] = 0.0
        w[0] = 0.0  # an all-zero row
    return w


# ------------------------------------------------------------------------------- masks
@pytest.mark.parametrize("n,m", PATTERNS)
def test_nm_mask_keeps_exactly_n_largest_per_group_and_faces_agree(n, m):
    rng = np.random.default_rng(n * 100 + m)
    for trial in range(5):
        out, d_in = int(rng.integers(1, 7)), m * int(rng.integers(1, 6))
        w = rng.standard_normal((out, d_in))
        w[:, ::2] = np.round(w[:, ::2])  # ties
        mask = R.nm_mask(w, n, m)
        assert mask.dtype == bool and mask.shape == w.shape
        assert np.array_equal(mask, _np(T.nm_mask(_t(w), n, m)))
        groups = mask.reshape(out, -1, m)
        assert np.all(groups.sum(axis=-1) == n)
        a = np.abs(w).reshape(out, -1, m)
        kept_min = np.where(groups, a, np.inf).min(axis=-1)
        pruned_max = np.where(groups, -np.inf, a).max(axis=-1)
        assert np.all(kept_min >= pruned_max)
        assert R.is_nm(w * mask, n, m) and T.is_nm(_t(w * mask), n, m)


def test_nm_mask_ties_keep_the_first_of_the_group():
    w = np.array([[1.0, -1.0, 1.0, 1.0, 0.0, 2.0, -2.0, 2.0]])
    want = [[True, True, False, False, False, True, True, False]]
    assert R.nm_mask(w).tolist() == want
    assert T.nm_mask(_t(w)).tolist() == want


def test_is_nm_counts_at_most_n_and_nan_as_nonzero():
    w = np.array([[1.0, 0.0, 2.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    for F, mk in ((R, np.asarray), (T, _t)):
        assert F.is_nm(mk(w), 2, 4) and not F.is_nm(mk(w), 1, 4)
        w2 = w.copy()
        w2[0, 1] = np.nan
        assert not F.is_nm(mk(w2), 2, 4)
        assert F.is_nm(mk(np.zeros((3, 8))), 1, 4)


# ----------------------------------------------------------------------------- metadata
def test_pack_indices_layout_is_little_end_first():
    # 2 bits: index j of a byte at bits [2j, 2j + 2)
    idx = np.array([[1, 3, 0, 2, 3]])
    want = [[1 | 3 << 2 | 0 << 4 | 2 << 6, 3]]
    assert R.pack_indices(idx, 2).tolist() == want
    assert T.pack_indices(_t(idx), 2).tolist() == want
    assert R.pack_indices(np.array([5, 10, 15]), 4).tolist() == [5 | 10 << 4, 15]
    assert R.pack_indices(np.array([1, 0, 1, 1, 0, 0, 0, 1, 1]), 1).tolist() == [
        0b10001101,
        1,
    ]
    assert R.pack_indices(np.array([200, 7]), 8).tolist() == [200, 7]
    assert R.pack_indices(idx, 2).dtype == np.uint8
    assert T.pack_indices(_t(idx), 2).dtype == torch.uint8


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_pack_unpack_round_trip_and_faces_agree(bits):
    rng = np.random.default_rng(bits)
    for count in range(0, 19):
        idx = rng.integers(0, 1 << bits, size=(3, 2, count))
        p = R.pack_indices(idx, bits)
        assert p.shape == (3, 2, shapes.meta_bytes(count, bits))
        assert np.array_equal(p, _np(T.pack_indices(_t(idx), bits)))
        assert np.array_equal(R.unpack_indices(p, bits, count), idx)
        assert np.array_equal(_np(T.unpack_indices(_t(p), bits, count)), idx)


def test_layout_rules_of_the_metadata():
    assert [shapes.index_bits(m) for m in (2, 3, 4, 5, 8, 16, 256)] == [
        1, 2, 2, 3, 3, 4, 8,
    ]  # fmt: skip
    # 3 bits do not divide 8: rounded up to 4 (two positions per byte)
    assert [shapes.slot_bits(m) for m in (2, 4, 8, 16, 32, 256)] == [1, 2, 4, 4, 8, 8]
    assert shapes.meta_bytes(5, 2) == 2 and shapes.meta_bytes(8, 2) == 2
    assert shapes.meta_bytes(0, 4) == 0


# ---------------------------------------------------------------------- compressed form
@pytest.mark.parametrize("n,m", PATTERNS)
def test_compress_decompress_identity_and_faces_bit_exact(n, m):
    rng = np.random.default_rng(7 * n + m)
    for trial in range(6):
        out, d_in = int(rng.integers(1, 6)), m * int(rng.integers(1, 7))
        w = _nm_weight(rng, out, d_in, n, m)
        c, ct = R.compress(w, n, m), T.compress(_t(w), n, m)
        assert c.values.shape == (out, d_in // m * n)
        bits = shapes.slot_bits(m)
        assert c.meta.shape == (out, -(-(d_in // m * n) // (8 // bits)))
        assert c.meta.dtype == np.uint8 and ct.meta.dtype == torch.uint8
        assert np.array_equal(c.values, _np(ct.values))
        assert np.array_equal(c.meta, _np(ct.meta))
        assert (c.shape, c.n, c.m) == (ct.shape, ct.n, ct.m) == ((out, d_in), n, m)
        assert np.array_equal(R.decompress(c), w)
        assert np.array_equal(_np(T.decompress(ct)), w)
        # positions strictly increasing in each group, below m
        pos = R.unpack_indices(c.meta, bits, d_in // m * n).reshape(out, -1, n)
        assert np.all(pos < m) and np.all(np.diff(pos, axis=-1) > 0)


def test_compress_fills_short_groups_with_zeros_at_the_first_unused_positions():
    w = np.array([[0.0, 0.0, 5.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 2.0]])
    for F, mk in ((R, np.asarray), (T, _t)):
        c = F.compress(mk(w), 2, 4)
        assert _np(c.values).tolist() == [[0.0, 5.0, 0.0, 0.0, 1.0, 2.0]]
        pos = R.unpack_indices(_np(c.meta), 2, 6)
        assert pos.tolist() == [[0, 2, 0, 1, 0, 3]]
        assert np.array_equal(_np(F.decompress(c)), w)


def test_compress_stores_nan_and_inf_as_nonzeros():
    w = np.array([[np.nan, 0.0, 0.0, 1.0, 0.0, np.inf, 0.0, 0.0]])
    for F, mk in ((R, np.asarray), (T, _t)):
        back = _np(F.decompress(F.compress(mk(w))))
        assert np.array_equal(back, w, equal_nan=True)


def test_nbytes_formula_2_4_fp16_and_2_8():
    out, d_in = 8, 64
    w = R.nm_mask(np.random.default_rng(0).standard_normal((out, d_in))).astype(
        np.float16
    )
    for F, mk in ((R, np.asarray), (T, _t)):
        c = F.compress(mk(w * 1.0), 2, 4)
        assert c.index_bits == 2 and c.slot_bits == 2
        assert c.dense_nbytes == out * d_in * 2
        # values: half the dense bytes; meta: 2 bits per kept entry, one kept entry
        # per 2: 1 bit = 1/8 byte per dense element, 1/16 of the fp16 dense bytes
        assert c.nbytes == c.dense_nbytes // 2 + out * d_in // 8
        assert c.meta.shape == (out, d_in // 8)
        assert c.nbytes / c.dense_nbytes == 0.5625
    w8 = np.zeros((out, d_in), dtype=np.float32)
    c8 = R.compress(w8, 2, 8)
    assert c8.index_bits == 3 and c8.slot_bits == 4
    assert c8.meta.shape == (out, d_in // 8 * 2 // 2)
    assert c8.nbytes == out * d_in // 4 * 4 + out * d_in // 8


def test_compressed_unpacks_like_a_tuple_and_repr():
    c = R.compress(np.zeros((2, 8)))
    values, meta, shape, n, m = c
    assert shape == (2, 8) and (n, m) == (2, 4) and values.shape == (2, 4)
    assert "2:4" in repr(c) and "0.5" in repr(c)
    assert c.groups == 2 and c.density == 0.5


# ------------------------------------------------------------------------------- matmul
@pytest.mark.parametrize("n,m", PATTERNS)
def test_nm_matmul_equals_dense_in_float64_both_faces(n, m):
    rng = np.random.default_rng(31 * n + m)
    u = unit_roundoff(np.float64)
    for trial in range(4):
        out, d_in = int(rng.integers(1, 9)), m * int(rng.integers(1, 7))
        w = _nm_weight(rng, out, d_in, n, m)
        lead = [(), (3,), (2, 3)][trial % 3]
        x = rng.standard_normal((*lead, d_in))
        b = rng.standard_normal(out) if trial % 2 else None
        want = x @ w.T + (0 if b is None else b)
        bound = gamma(d_in + 1, u) * (abs_matmul(x, np.abs(w).T) + (
            0 if b is None else np.abs(b)
        ))
        y = R.nm_matmul(x, R.compress(w, n, m), b)
        yt = T.nm_matmul(_t(x), T.compress(_t(w), n, m), None if b is None else _t(b))
        assert y.shape == yt.shape == (*lead, out)
        assert_within(y, want, bound, "reference")
        assert_within(yt, want, bound, "torch_ops")
        assert_within(yt, y, 2 * bound, "faces")


def test_nm_matmul_chunks_give_the_same_result(monkeypatch):
    from effx_lab.nm import _np_nm, _torch_nm

    rng = np.random.default_rng(3)
    w = _nm_weight(rng, 13, 16, 2, 4, zero_some=False)
    x = rng.standard_normal((5, 16))
    c, ct = R.compress(w), T.compress(_t(w))
    y, yt = R.nm_matmul(x, c), T.nm_matmul(_t(x), ct)
    monkeypatch.setattr(_np_nm, "CHUNK_ELEMENTS", 40)
    monkeypatch.setattr(_torch_nm, "CHUNK_ELEMENTS", 40)
    assert np.allclose(R.nm_matmul(x, c), y, rtol=0, atol=1e-13)
    assert torch.allclose(T.nm_matmul(_t(x), ct), yt, rtol=0, atol=1e-13)


def test_nm_matmul_nan_reaches_only_rows_that_store_its_column():
    w = np.zeros((2, 4))
    w[0, 0] = 1.0
    w[1, 2:] = 1.0  # row 1 stores positions 2, 3
    x = np.array([[np.nan, 1.0, 1.0, 1.0]])
    for F, mk in ((R, np.asarray), (T, _t)):
        y = _np(F.nm_matmul(mk(x), F.compress(mk(w))))
        assert np.isnan(y[0, 0]) and y[0, 1] == 2.0


def test_torch_nm_matmul_gradcheck_x_values_bias():
    rng = np.random.default_rng(5)
    w = _nm_weight(rng, 4, 8, 2, 4, zero_some=False)
    c = T.compress(_t(w))
    x = _t(rng.standard_normal((2, 3, 8))).requires_grad_()
    b = _t(rng.standard_normal(4)).requires_grad_()
    values = c.values.clone().requires_grad_()

    def f(x, values, b):
        return T.nm_matmul(x, NMCompressed(values, c.meta, c.shape, c.n, c.m), b)

    assert torch.autograd.gradcheck(f, (x, values, b))
    # the gradient of compress reaches the dense weight at the stored entries only
    wt = _t(w).requires_grad_()
    T.nm_matmul(x.detach(), T.compress(wt)).sum().backward()
    assert torch.equal(wt.grad != 0, _t(w) != 0)


def test_torch_decompress_is_differentiable():
    c = T.compress(_t(R.nm_mask(np.arange(1.0, 9.0).reshape(1, 8)) * 1.0))
    v = c.values.clone().requires_grad_()
    T.decompress(NMCompressed(v, c.meta, c.shape, 2, 4)).sum().backward()
    assert torch.equal(v.grad, torch.ones_like(v))


# ------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("face", FACES)
def test_bad_arguments_are_named(face):
    F, mk = face
    w = mk(np.zeros((2, 8)))
    with pytest.raises(ValueError, match="n must be < m"):
        F.nm_mask(w, 4, 4)
    with pytest.raises(ValueError, match="m must be an int >= 2"):
        F.is_nm(w, 1, 1)
    with pytest.raises(TypeError, match="n must be an int"):
        F.compress(w, 2.0, 4)
    with pytest.raises(ValueError, match="m must divide the input width of w"):
        F.nm_mask(w, 2, 3)
    with pytest.raises(ValueError, match="w must have 2 dimensions"):
        F.compress(mk(np.zeros(8)))
    with pytest.raises(ValueError, match="w must contain only finite"):
        F.nm_mask(mk(np.full((1, 4), np.nan)))
    with pytest.raises(TypeError, match="w must be a"):
        F.nm_mask([[1.0, 2.0, 3.0, 4.0]])
    with pytest.raises(TypeError, match="w must have a float dtype"):
        F.compress(mk(np.zeros((2, 4), dtype=np.int64)))
    with pytest.raises(ValueError, match=r"row 1, group 1 \(columns 4..7\)"):
        dense = np.zeros((2, 8))
        dense[1, 4:7] = 1.0
        F.compress(mk(dense))
    with pytest.raises(ValueError, match="bits must divide 8"):
        F.pack_indices(mk(np.zeros(3, dtype=np.int64)), 3)
    with pytest.raises(ValueError, match=r"idx must hold values in \[0, 4\)"):
        F.pack_indices(mk(np.array([0, 4])), 2)
    with pytest.raises(TypeError, match="idx must have an int"):
        F.pack_indices(mk(np.zeros(3)), 2)
    with pytest.raises(TypeError, match="packed must have dtype uint8"):
        F.unpack_indices(mk(np.zeros(3, dtype=np.int64)), 2, 12)
    with pytest.raises(ValueError, match=r"packed must have ceil\(count / 4\) = 2"):
        F.unpack_indices(mk(np.zeros(3, dtype=np.uint8)), 2, 5)
    c = F.compress(w)
    with pytest.raises(ValueError, match=r"x must have shape \(\.\.\., in_feat"):
        F.nm_matmul(mk(np.zeros((3, 7))), c)
    with pytest.raises(TypeError, match="x must have the dtype of c.values"):
        F.nm_matmul(mk(np.zeros((3, 8), dtype=np.float32)), c)
    with pytest.raises(ValueError, match=r"bias must have shape \(out_features,\)"):
        F.nm_matmul(mk(np.zeros((3, 8))), c, mk(np.zeros(3)))
    with pytest.raises(TypeError, match="c must be an NMCompressed"):
        F.nm_matmul(mk(np.zeros((3, 8))), w)
    with pytest.raises(TypeError, match="c must be an NMCompressed"):
        F.decompress((1, 2))


def test_faces_refuse_each_others_arrays():
    w = np.zeros((2, 8))
    with pytest.raises(TypeError, match="use effx_lab.nm.torch_ops"):
        R.nm_mask(_t(w))
    with pytest.raises(TypeError, match="use effx_lab.nm.reference"):
        T.nm_mask(w)
    with pytest.raises(TypeError, match="c must hold NumPy arrays"):
        R.decompress(T.compress(_t(w)))
    with pytest.raises(TypeError, match="c must hold torch tensors"):
        T.nm_matmul(_t(np.zeros((1, 8))), R.compress(w))
    with pytest.raises(TypeError, match="x must be a NumPy array"):
        R.nm_matmul(_t(np.zeros((1, 8))), R.compress(w))


def test_nmcompressed_validates_its_fields():
    c = R.compress(np.zeros((2, 8)))
    v, meta = c.values, c.meta
    with pytest.raises(TypeError, match="meta must have dtype uint8"):
        NMCompressed(v, meta.astype(np.int64), (2, 8), 2, 4)
    with pytest.raises(TypeError, match="meta must be a NumPy array, like values"):
        NMCompressed(v, _t(meta), (2, 8), 2, 4)
    with pytest.raises(ValueError, match=r"values must have shape \(out, in // m"):
        NMCompressed(v[:, :3], meta, (2, 8), 2, 4)
    with pytest.raises(ValueError, match=r"meta must have shape"):
        NMCompressed(v, np.zeros((2, 2), np.uint8), (2, 8), 2, 4)
    with pytest.raises(ValueError, match="m=4 must divide shape"):
        NMCompressed(v, meta, (2, 6), 2, 4)
    with pytest.raises(ValueError, match="n must be < m"):
        NMCompressed(v, meta, (2, 8), 4, 4)
    with pytest.raises(TypeError, match="values must have a float dtype"):
        NMCompressed(v.astype(np.int64), meta, (2, 8), 2, 4)
    # positions must increase strictly in a group: [1, 0] and [2, 2] are refused
    bad = R.pack_indices(np.array([[1, 0, 0, 1], [0, 1, 2, 2]]), 2)
    with pytest.raises(ValueError, match=r"strictly increasing.*row 0, group 0"):
        NMCompressed(v, bad, (2, 8), 2, 4)
    bad = R.pack_indices(np.array([[0, 1, 0, 1], [0, 1, 2, 2]]), 2)
    with pytest.raises(ValueError, match=r"\[2, 2\] in row 1, group 1"):
        NMCompressed(v, bad, (2, 8), 2, 4)
    # 3:5 uses 3-bit positions in 4-bit slots: 5, 6, 7 are out of the group
    v35 = np.zeros((1, 3))
    with pytest.raises(ValueError, match=r"in \[0, 5\) \(inside a group of m\), got 7"):
        NMCompressed(v35, R.pack_indices(np.array([[0, 1, 7]]), 4), (1, 5), 3, 5)
    # unused high bits of the last byte must be zero
    odd = R.pack_indices(np.array([[0, 1, 2]]), 4)
    odd[0, -1] |= 0xF0
    with pytest.raises(ValueError, match="unused high bits zero"):
        NMCompressed(v35, odd, (1, 5), 3, 5)
