"""Tests of effx_lab.sparse (shared by ch03 pruning and ch04 N:M sparsity): masks and
the block-sparse matmul.

The NumPy reference and torch_ops run on the same random inputs: masks must be equal
element for element, products agree in float64 within a derived rounding bound. Then the
properties each helper documents, and the errors every public function raises on bad
input (in both faces).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from _backends import abs_matmul, assert_within, gamma, unit_roundoff
from hypothesis import given, settings
from hypothesis import strategies as st

from effx_lab.sparse import BlockSparse
from effx_lab.sparse import reference as R
from effx_lab.sparse import torch_ops as T


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(a, copy=True))


def _np(a) -> np.ndarray:
    return a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else a


#: (module, array maker) of each face: one test body runs on NumPy arrays and tensors
FACES = [
    pytest.param((R, np.asarray), id="reference"),
    pytest.param((T, _t), id="torch_ops"),
]


def _rand(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape)


def _sparse_weight(
    seed: int, shape: tuple[int, int], block: tuple[int, int], density: float
) -> np.ndarray:
    w = _rand(seed, shape)
    return w * R.block_mask(w, block, density)


# ======================================================== masks: reference == torch_ops
@pytest.mark.parametrize("shape", [(7,), (6, 10), (2, 3, 8)])
@pytest.mark.parametrize("s", [0.0, 0.3, 0.5, 0.9])
def test_magnitude_mask_agrees(shape, s):
    w = _rand(1, shape)
    ref = R.magnitude_mask(w, s)
    got = T.magnitude_mask(_t(w), s)
    assert ref.dtype == np.bool_ and got.dtype == torch.bool and ref.shape == shape
    np.testing.assert_array_equal(_np(got), ref)


@pytest.mark.parametrize(("n", "m"), [(2, 4), (1, 4), (4, 8), (3, 3), (1, 1)])
@pytest.mark.parametrize("axis", [-1, 0, 1])
def test_nm_mask_agrees(n, m, axis):
    w = _rand(2, (24, 24, 2)) if axis == 1 else _rand(2, (24, 24))
    ref = R.nm_mask(w, n, m, axis=axis)
    np.testing.assert_array_equal(_np(T.nm_mask(_t(w), n, m, axis=axis)), ref)


@pytest.mark.parametrize("block", [1, 2, (2, 3), (4, 1), (8, 12)])
@pytest.mark.parametrize("density", [0.01, 0.25, 0.5, 1.0])
def test_block_mask_agrees(block, density):
    w = _rand(3, (8, 12))
    ref = R.block_mask(w, block, density)
    np.testing.assert_array_equal(_np(T.block_mask(_t(w), block, density)), ref)


@pytest.mark.parametrize("face", FACES)
def test_masks_of_float32_and_tied_weights_agree(face):
    """Integer-valued weights are full of ties: both faces break them the same way
    (stable sorts).
    """
    w = np.random.default_rng(4).integers(-2, 3, size=(8, 16)).astype(np.float32)
    mod, arr = face
    np.testing.assert_array_equal(
        _np(mod.magnitude_mask(arr(w), 0.4)), R.magnitude_mask(w, 0.4)
    )
    np.testing.assert_array_equal(_np(mod.nm_mask(arr(w), 2, 4)), R.nm_mask(w, 2, 4))
    np.testing.assert_array_equal(
        _np(mod.block_mask(arr(w), 4, 0.3)), R.block_mask(w, 4, 0.3)
    )


@pytest.mark.parametrize("face", FACES)
def test_many_ties_are_broken_by_position(face):
    """Large runs of equal values (where an unstable sort shuffles them) resolve in
    row-major order.
    """
    mod, arr = face
    signs = np.where(np.arange(256) % 3 == 0, -1.0, 1.0).reshape(4, 64)  # |w| all equal
    first_half = np.arange(256).reshape(4, 64) >= 128
    np.testing.assert_array_equal(_np(mod.magnitude_mask(arr(signs), 0.5)), first_half)
    keep = np.zeros((4, 64), dtype=bool)
    keep[:, :24] = True
    np.testing.assert_array_equal(_np(mod.nm_mask(arr(signs), 24, 64)), keep)
    blocks = np.zeros((64, 2), dtype=bool)
    # 128 blocks of 1 x 2 (64 block rows, 2 block columns): the first 64 are kept
    blocks[:32] = True
    np.testing.assert_array_equal(
        _np(mod.block_mask(arr(np.ones((64, 4))), (1, 2), 0.5)),
        np.repeat(blocks, 2, axis=1),
    )


@settings(max_examples=40, deadline=None)
@given(
    shape=st.lists(st.integers(1, 7), min_size=1, max_size=3).map(tuple),
    s=st.floats(0.0, 0.999),
    seed=st.integers(0, 2**16),
)
def test_magnitude_mask_prunes_exactly_round_s_times_size(shape, s, seed):
    w = _rand(seed, shape)
    ref = R.magnitude_mask(w, s)
    assert int((~ref).sum()) == round(s * w.size)
    np.testing.assert_array_equal(_np(T.magnitude_mask(_t(w), s)), ref)
    if 0 < (~ref).sum() < w.size:  # every kept magnitude >= every pruned one
        assert np.abs(w[ref]).min() >= np.abs(w[~ref]).max()


# ========================================================= masks: documented properties
@pytest.mark.parametrize("face", FACES)
def test_magnitude_mask_rounds_half_to_even_and_breaks_ties_by_position(face):
    mod, arr = face
    # round(2.5) = 2
    assert int((~_np(mod.magnitude_mask(arr(_rand(0, (5,))), 0.5))).sum()) == 2
    # round(3.5) = 4
    assert int((~_np(mod.magnitude_mask(arr(_rand(0, (7,))), 0.5))).sum()) == 4
    w = np.array([1.0, -1.0, 1.0, 2.0, -0.5])
    # |w| = 1, 1, 1, 2, 0.5: prune 0.5 first, then the 1s in row-major order
    np.testing.assert_array_equal(
        _np(mod.magnitude_mask(arr(w), 0.6)), [False, False, True, True, False]
    )
    np.testing.assert_array_equal(_np(mod.magnitude_mask(arr(w), 0.0)), [True] * 5)


@pytest.mark.parametrize("face", FACES)
def test_nm_mask_keeps_n_largest_per_group_and_the_first_of_ties(face):
    mod, arr = face
    w = _rand(5, (6, 16))
    keep = _np(mod.nm_mask(arr(w), 2, 4))
    groups, kept = np.abs(w).reshape(6, 4, 4), keep.reshape(6, 4, 4)
    assert (kept.sum(-1) == 2).all()
    kept_min = np.where(kept, groups, np.inf).min(-1)
    pruned_max = np.where(kept, -np.inf, groups).max(-1)
    assert (kept_min >= pruned_max).all()
    ties = np.array([[1.0, -1.0, 1.0, 1.0, 0.0, 3.0, -3.0, 3.0]])
    np.testing.assert_array_equal(
        _np(mod.nm_mask(arr(ties), 2, 4)),
        [[True, True, False, False, False, True, True, False]],
    )
    # axis=0 groups along the first dimension: the transpose grouped along its last
    np.testing.assert_array_equal(
        _np(mod.nm_mask(arr(w.T.copy()), 2, 4, axis=0)), keep.T
    )


@pytest.mark.parametrize("face", FACES)
def test_block_mask_keeps_whole_blocks_of_largest_norm(face):
    mod, arr = face
    w = _rand(6, (8, 12))
    keep = _np(mod.block_mask(arr(w), (2, 3), 0.4))
    blocks = keep.reshape(4, 2, 4, 3).swapaxes(1, 2)  # (4, 4, 2, 3)
    # constant on each block
    assert (blocks.all(axis=(-2, -1)) | ~blocks.any(axis=(-2, -1))).all()
    kept_blocks = blocks.all(axis=(-2, -1))
    assert kept_blocks.sum() == round(0.4 * 16)
    norms = (w.reshape(4, 2, 4, 3).swapaxes(1, 2) ** 2).sum(axis=(-2, -1))
    assert norms[kept_blocks].min() >= norms[~kept_blocks].max()
    # a density too small to round to one block keeps one; equal norms keep the first
    assert _np(mod.block_mask(arr(w), (2, 3), 0.01)).sum() == 6
    np.testing.assert_array_equal(
        _np(mod.block_mask(arr(np.ones((2, 4))), 2, 0.5)),
        [[True, True, False, False]] * 2,
    )


@pytest.mark.parametrize("face", FACES)
def test_sparsity_counts_exact_zeros(face):
    mod, arr = face
    assert mod.sparsity(arr(np.array([0.0, -0.0, 1e-300, np.nan]))) == 0.5
    assert mod.sparsity(arr(np.array([[True, False, False, False]]))) == 0.75
    assert mod.sparsity(arr(np.arange(5))) == 0.2
    w = _rand(7, (10, 20))
    assert mod.sparsity(arr(w * R.magnitude_mask(w, 0.35))) == 0.35
    assert isinstance(mod.sparsity(arr(w)), float)


# ================================================================== block-sparse format
@pytest.mark.parametrize(
    ("shape", "block", "density"),
    [
        ((8, 12), (2, 3), 0.5),
        ((16, 16), 4, 0.25),
        ((6, 10), 1, 0.3),
        ((8, 12), (8, 12), 1.0),
        ((4, 8), (4, 2), 1.0),
    ],
)
def test_to_block_sparse_agrees_and_round_trips(shape, block, density):
    w = _sparse_weight(
        8, shape, block if isinstance(block, tuple) else (block, block), density
    )
    ref = R.to_block_sparse(w, block)
    got = T.to_block_sparse(_t(w), block)
    assert isinstance(ref, BlockSparse) and isinstance(got, BlockSparse)
    for a, b in zip(ref, got, strict=True):
        np.testing.assert_array_equal(_np(b), a)
    assert (
        ref.values.dtype == w.dtype
        and ref.col_indices.dtype == np.int64
        and ref.row_ptr.dtype == np.int64
    )
    assert got.col_indices.dtype == torch.int64 and got.row_ptr.dtype == torch.int64
    n_blocks = (shape[0] // ref.block[0]) * (shape[1] // ref.block[1])
    assert (
        ref.nnzb == got.nnzb == round(density * n_blocks) and ref.density == got.density
    )
    np.testing.assert_array_equal(R.from_block_sparse(ref), w)
    np.testing.assert_array_equal(_np(T.from_block_sparse(got)), w)
    values, cols, ptr, shp = ref  # unpacks like a tuple
    assert (
        shp == shape
        and values is ref.values
        and ptr is ref.row_ptr
        and cols is ref.col_indices
    )
    assert "nnzb=" in repr(ref) and "device=cpu" in repr(got)


def test_block_sparse_layout_is_scipys_and_torchs_bsr():
    sp = pytest.importorskip("scipy.sparse")
    w = _sparse_weight(9, (12, 16), (3, 4), 0.4)
    ref = R.to_block_sparse(w, (3, 4))
    bsr = sp.bsr_matrix(w, blocksize=(3, 4))
    bsr.eliminate_zeros()  # drop the all-zero blocks scipy keeps from the dense layout
    np.testing.assert_array_equal(ref.row_ptr, bsr.indptr)
    np.testing.assert_array_equal(ref.col_indices, bsr.indices)
    np.testing.assert_array_equal(ref.values, bsr.data)
    with warnings.catch_warnings():
        # "Sparse BSR tensor support is in beta state"
        warnings.simplefilter("ignore", UserWarning)
        tb = _t(w).to_sparse_bsr((3, 4))
    np.testing.assert_array_equal(ref.row_ptr, tb.crow_indices().numpy())
    np.testing.assert_array_equal(ref.col_indices, tb.col_indices().numpy())


@pytest.mark.parametrize("face", FACES)
def test_blocks_with_a_nonzero_are_stored_and_nan_counts_as_nonzero(face):
    mod, arr = face
    w = np.zeros((4, 6))
    w[0, 5] = -0.0  # still zero
    w[3, 0] = np.nan
    w[2, 4] = 1e-300
    bsr = mod.to_block_sparse(arr(w), 2)
    assert bsr.nnzb == 2
    np.testing.assert_array_equal(_np(bsr.row_ptr), [0, 0, 2])
    np.testing.assert_array_equal(_np(bsr.col_indices), [0, 2])
    empty = mod.to_block_sparse(arr(np.zeros((4, 6))), 2)
    assert empty.nnzb == 0 and tuple(empty.values.shape) == (0, 2, 2)
    np.testing.assert_array_equal(_np(mod.from_block_sparse(empty)), np.zeros((4, 6)))


# ================================================================== block-sparse matmul
def _dense_bound(x: np.ndarray, w: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
    """Two float64 results of x @ W.T + b, each within gamma_{K+1} (|x| |W|^T + |b|) of
    the exact value.
    """
    mag = abs_matmul(x, w.T) + (0.0 if bias is None else np.abs(bias))
    return 2 * gamma(w.shape[1] + 1, unit_roundoff(np.float64)) * mag


@pytest.mark.parametrize(
    ("lead", "shape", "block", "density", "with_bias"),
    [
        ((5,), (8, 12), (2, 3), 0.5, True),
        ((2, 3), (16, 16), 4, 0.25, False),
        ((7,), (6, 10), 1, 0.3, True),
        ((3,), (8, 12), (8, 12), 1.0, True),
        ((), (12, 8), (4, 2), 0.6, False),
        ((0,), (8, 8), 4, 0.5, True),
    ],
)
def test_block_sparse_matmul_is_x_times_w_transposed(
    lead, shape, block, density, with_bias
):
    bsize = block if isinstance(block, tuple) else (block, block)
    w = _sparse_weight(10, shape, bsize, density)
    x = _rand(11, (*lead, shape[1]))
    bias = _rand(12, (shape[0],)) if with_bias else None
    want = x @ w.T + (0.0 if bias is None else bias)
    bound = _dense_bound(x, w, bias)
    ref = R.block_sparse_matmul(x, R.to_block_sparse(w, block), bias)
    got = T.block_sparse_matmul(
        _t(x), T.to_block_sparse(_t(w), block), None if bias is None else _t(bias)
    )
    assert (
        ref.shape == got.shape == (*lead, shape[0])
        and ref.dtype == np.float64
        and got.dtype == torch.float64
    )
    assert_within(ref, want, bound, "reference vs dense")
    assert_within(got, want, bound, "torch_ops vs dense")
    assert_within(got, ref, bound, "torch_ops vs reference")


def test_torch_matmul_in_small_chunks_gives_the_same_result(monkeypatch):
    w = _sparse_weight(13, (16, 24), (4, 4), 0.5)
    x, b = _rand(14, (6, 24)), _rand(15, (16,))
    bsr = T.to_block_sparse(_t(w), 4)
    whole = T.block_sparse_matmul(_t(x), bsr, _t(b))
    monkeypatch.setattr(T, "CHUNK_ELEMENTS", 6 * 4 * 3)  # three blocks per chunk
    assert_within(
        T.block_sparse_matmul(_t(x), bsr, _t(b)),
        whole,
        _dense_bound(x, w, b),
        "chunked",
    )


def test_block_sparse_matmul_of_an_empty_matrix_is_the_bias():
    x, b = _rand(16, (3, 8)), _rand(17, (4,))
    for mod, arr in ((R, np.asarray), (T, _t)):
        bsr = mod.to_block_sparse(arr(np.zeros((4, 8))), 2)
        np.testing.assert_array_equal(
            _np(mod.block_sparse_matmul(arr(x), bsr, arr(b))), np.tile(b, (3, 1))
        )
        np.testing.assert_array_equal(
            _np(mod.block_sparse_matmul(arr(x), bsr)), np.zeros((3, 4))
        )


def test_torch_face_is_differentiable():
    w = _sparse_weight(18, (6, 8), (2, 2), 0.5)
    bsr = T.to_block_sparse(_t(w), 2)
    x = _t(_rand(19, (3, 8))).requires_grad_()
    values = bsr.values.clone().requires_grad_()
    b = _t(_rand(20, (6,))).requires_grad_()

    def f(x, values, b):
        return T.block_sparse_matmul(
            x, BlockSparse(values, bsr.col_indices, bsr.row_ptr, bsr.shape), b
        )

    assert torch.autograd.gradcheck(f, (x, values, b))
    # the stored values are a gather of w: gradients flow back to the stored blocks of w
    wt = _t(w).requires_grad_()
    T.from_block_sparse(T.to_block_sparse(wt, 2)).sum().backward()
    np.testing.assert_array_equal(
        wt.grad.numpy(), (R.block_mask(w, 2, 0.5)).astype(np.float64)
    )


@pytest.mark.parametrize("face", FACES)
def test_a_nan_token_reaches_every_output_with_a_stored_block(face):
    mod, arr = face
    w = np.zeros((6, 8))
    w[:2, :4] = _rand(21, (2, 4))  # block row 0 stores one block, rows 2..5 store none
    x = _rand(22, (3, 8))
    x[1, 6] = np.nan  # a column that no stored block reads
    x[2, 0] = np.nan
    y = _np(mod.block_sparse_matmul(arr(x), mod.to_block_sparse(arr(w), 2)))
    # NaN at column 6: no stored block reads it
    assert np.isfinite(y[0]).all() and np.isfinite(y[1]).all()
    # documented: empty block rows give 0
    assert np.isnan(y[2, :2]).all() and (y[2, 2:] == 0).all()


# =========================================================================== bad inputs
W = _rand(30, (4, 8))

BAD = [
    # (function, args as a function of the array maker, error, message)
    ("magnitude_mask", lambda a: ([1.0, 2.0], 0.5), TypeError, "w must be a"),
    (
        "magnitude_mask",
        lambda a: (a(np.arange(4)), 0.5),
        TypeError,
        "w must have a float dtype",
    ),
    (
        "magnitude_mask",
        lambda a: (a(np.array([1.0, np.nan])), 0.5),
        ValueError,
        "w must contain only finite",
    ),
    (
        "magnitude_mask",
        lambda a: (a(np.zeros((0, 3))), 0.5),
        ValueError,
        "w must not be empty",
    ),
    (
        "magnitude_mask",
        lambda a: (a(np.array(1.0)), 0.5),
        ValueError,
        "w must have at least 1 dimension",
    ),
    (
        "magnitude_mask",
        lambda a: (a(W), 1.0),
        ValueError,
        r"sparsity must be in \[0, 1\).*got 1.0",
    ),
    (
        "magnitude_mask",
        lambda a: (a(W), -0.1),
        ValueError,
        r"sparsity must be in \[0, 1\)",
    ),
    (
        "magnitude_mask",
        lambda a: (a(W), "0.5"),
        TypeError,
        "sparsity must be a real number",
    ),
    (
        "magnitude_mask",
        lambda a: (a(W), True),
        TypeError,
        "sparsity must be a real number",
    ),
    ("nm_mask", lambda a: (a(W), 5, 4), ValueError, "n must be <= m.*n=5 and m=4"),
    (
        "nm_mask",
        lambda a: (a(W), 2, 3),
        ValueError,
        r"m must divide the size of w along axis 1 \(8\).*m=3",
    ),
    ("nm_mask", lambda a: (a(W), 0, 4), ValueError, "n must be an int >= 1, got 0"),
    ("nm_mask", lambda a: (a(W), 1, 0), ValueError, "m must be an int >= 1, got 0"),
    ("nm_mask", lambda a: (a(W), 2.0, 4), TypeError, "n must be an int"),
    (
        "nm_mask",
        lambda a: (a(W), 2, 4, 2),
        ValueError,
        r"axis must be in \[-2, 2\).*got 2",
    ),
    ("nm_mask", lambda a: (a(W), 2, 4, 0.5), TypeError, "axis must be an int"),
    (
        "block_mask",
        lambda a: (a(W), 3, 0.5),
        ValueError,
        r"block must divide the shape of w \(4, 8\).*\(3, 3\)",
    ),
    (
        "block_mask",
        lambda a: (a(W), (2,), 0.5),
        ValueError,
        r"block must be an int or a \(bh, bw\) pair",
    ),
    (
        "block_mask",
        lambda a: (a(W), 0, 0.5),
        ValueError,
        "block must be an int >= 1, got 0",
    ),
    (
        "block_mask",
        lambda a: (a(W), (2, -1), 0.5),
        ValueError,
        r"block\[1\] must be an int >= 1",
    ),
    ("block_mask", lambda a: (a(W), 2.0, 0.5), TypeError, "block must be an int or a"),
    (
        "block_mask",
        lambda a: (a(W), 2, 0.0),
        ValueError,
        "density must be > 0.0, got 0.0",
    ),
    (
        "block_mask",
        lambda a: (a(W), 2, 1.5),
        ValueError,
        "density must be <= 1.0, got 1.5",
    ),
    ("block_mask", lambda a: (a(W[0]), 2, 0.5), ValueError, "w must have 2 dimensions"),
    ("sparsity", lambda a: ([0.0, 1.0],), TypeError, "x must be a"),
    ("sparsity", lambda a: (a(np.zeros(0)),), ValueError, "x must not be empty"),
    (
        "to_block_sparse",
        lambda a: (a(np.zeros((2, 4, 4))), 2),
        ValueError,
        "w must have 2 dimensions",
    ),
    (
        "to_block_sparse",
        lambda a: (a(W), (3, 2)),
        ValueError,
        r"block must divide the shape of w",
    ),
    (
        "to_block_sparse",
        lambda a: (a(np.ones((4, 4), dtype=np.int64)), 2),
        TypeError,
        "w must have a float",
    ),
    ("from_block_sparse", lambda a: (a(W),), TypeError, "bsr must be a BlockSparse"),
]


@pytest.mark.parametrize("face", FACES)
@pytest.mark.parametrize(
    ("fn", "args", "error", "says"), BAD, ids=[f"{b[0]}-{i}" for i, b in enumerate(BAD)]
)
def test_bad_inputs_name_the_argument(face, fn, args, error, says):
    mod, arr = face
    with pytest.raises(error, match=says):
        getattr(mod, fn)(*args(arr))


def test_each_face_refuses_the_other_faces_arrays():
    with pytest.raises(
        TypeError, match="w must be a NumPy array.*use effx_lab.sparse.torch_ops"
    ):
        R.magnitude_mask(_t(W), 0.5)
    with pytest.raises(
        TypeError, match="w must be a torch tensor.*use effx_lab.sparse.reference"
    ):
        T.nm_mask(W, 2, 4)
    with pytest.raises(TypeError, match="x must be a NumPy array"):
        R.sparsity(_t(W))
    with pytest.raises(
        TypeError, match="bsr must hold NumPy arrays.*use effx_lab.sparse.torch_ops"
    ):
        R.from_block_sparse(T.to_block_sparse(_t(W), 2))
    with pytest.raises(
        TypeError, match="bsr must hold torch arrays.*use effx_lab.sparse.reference"
    ):
        T.block_sparse_matmul(_t(W), R.to_block_sparse(W, 2))


@pytest.mark.parametrize("face", FACES)
def test_block_sparse_matmul_checks_shapes_and_dtypes(face):
    mod, arr = face
    bsr = mod.to_block_sparse(arr(W), 2)  # W (4, 8): x @ W.T needs x (..., 8)
    with pytest.raises(
        ValueError,
        match=r"x must have shape \(..., in_features=8\).*got shape \(3, 4\)",
    ):
        mod.block_sparse_matmul(arr(_rand(0, (3, 4))), bsr)
    with pytest.raises(TypeError, match="x must have the dtype of bsr.values"):
        mod.block_sparse_matmul(arr(_rand(0, (3, 8)).astype(np.float32)), bsr)
    with pytest.raises(
        ValueError, match=r"bias must have shape \(out_features,\) = \(4,\), got \(8,\)"
    ):
        mod.block_sparse_matmul(arr(_rand(0, (3, 8))), bsr, arr(_rand(0, (8,))))
    with pytest.raises(TypeError, match="bias must have the dtype of bsr.values"):
        mod.block_sparse_matmul(
            arr(_rand(0, (3, 8))), bsr, arr(np.zeros(4, dtype=np.float32))
        )
    with pytest.raises(TypeError, match="x must be a"):
        mod.block_sparse_matmul([1.0] * 8, bsr)
    with pytest.raises(TypeError, match="bsr must be a BlockSparse"):
        mod.block_sparse_matmul(
            arr(_rand(0, (3, 8))), (bsr.values, bsr.col_indices, bsr.row_ptr)
        )


@pytest.mark.parametrize("face", FACES)
def test_block_sparse_validates_its_structure_where_it_is_made(face):
    _, arr = face
    # 2 block rows, 4 block columns
    good = R.to_block_sparse(_sparse_weight(31, (4, 8), (2, 2), 0.5), 2)
    v, c, p = arr(good.values), arr(good.col_indices), arr(good.row_ptr)
    assert BlockSparse(v, c, p, (4, 8)).nnzb == 4

    def i64(*xs):
        return arr(np.array(xs, dtype=np.int64))

    cases = [
        ((v[0], c, p, (4, 8)), ValueError, r"values must have 3 dimensions"),
        (
            (arr(good.values.astype(np.int64)), c, p, (4, 8)),
            TypeError,
            "values must have a float dtype",
        ),
        (
            (v, arr(good.col_indices.astype(np.int32)), p, (4, 8)),
            TypeError,
            "col_indices must have dtype int64",
        ),
        (
            (v, c, p[:-1], (4, 8)),
            ValueError,
            r"row_ptr must have rows // bh \+ 1 = 3 entries",
        ),
        (
            (v, c[:-1], p, (4, 8)),
            ValueError,
            r"col_indices must have one entry per stored block \(4\)",
        ),
        ((v, c, i64(1, 2, 4), (4, 8)), ValueError, "row_ptr must start at 0"),
        (
            (v, c, i64(0, 3, 2), (4, 8)),
            ValueError,
            "row_ptr must start at 0, never decrease",
        ),
        (
            (v, i64(0, 1, 4, 2), i64(0, 2, 4), (4, 8)),
            ValueError,
            r"col_indices must be in \[0, 4\)",
        ),
        (
            (v, i64(1, 0, 0, 2), i64(0, 2, 4), (4, 8)),
            ValueError,
            "strictly increasing within each block row",
        ),
        (
            (v, i64(1, 1, 0, 2), i64(0, 2, 4), (4, 8)),
            ValueError,
            "strictly increasing within each block row",
        ),
        (
            (v, c, p, (4, 7)),
            ValueError,
            r"the block \(2, 2\) of values must divide shape \(4, 7\)",
        ),
        ((v, c, p, (4,)), TypeError, r"shape must be a \(rows, cols\) tuple"),
        ((v, c, p, (4, 0)), ValueError, r"shape\[1\] must be an int >= 1"),
        (
            (v, list(good.col_indices), p, (4, 8)),
            TypeError,
            "col_indices must be a NumPy array or torch tensor",
        ),
    ]
    for args, error, says in cases:
        with pytest.raises(error, match=says):
            BlockSparse(*args)
    # a row whose columns restart is fine when it is another block row
    assert BlockSparse(v, i64(1, 3, 0, 2), i64(0, 2, 4), (4, 8)).nnzb == 4


def test_block_sparse_refuses_mixed_faces():
    good = R.to_block_sparse(_sparse_weight(32, (4, 8), (2, 2), 0.5), 2)
    with pytest.raises(
        TypeError, match="col_indices must be a torch tensor, like values"
    ):
        BlockSparse(_t(good.values), good.col_indices, _t(good.row_ptr), good.shape)
    with pytest.raises(TypeError, match="row_ptr must be a NumPy array, like values"):
        BlockSparse(good.values, good.col_indices, _t(good.row_ptr), good.shape)
