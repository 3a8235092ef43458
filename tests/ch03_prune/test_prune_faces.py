"""Tests of chapter 3's twin faces (effx_lab.prune.reference / torch_ops) and of the
torch.sparse helpers (effx_lab.prune.sparse_torch).

Both faces run on the same random inputs: masks and kept indices must be equal element
for element (ties included), products agree in float64 with the dense product. Then
the properties each function documents (exact counts, one threshold, the shrunk layer
computes what the full one computes with the removed units zeroed, CSR round trips and
byte counts), and the errors every public function raises on bad input, in both faces.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from effx_lab.attention import reference as AR
from effx_lab.attention import torch_ops as AT
from effx_lab.prune import reference as R
from effx_lab.prune import sparse_torch as S
from effx_lab.prune import storage
from effx_lab.prune import torch_ops as T
from effx_lab.prune._csr import CSR


def _t(a):
    return torch.from_numpy(np.array(a, copy=True))


def _np(a) -> np.ndarray:
    return a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)


FACES = [
    pytest.param((R, np.asarray), id="reference"),
    pytest.param((T, _t), id="torch_ops"),
]


def _rand(seed: int, shape) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape)


def _both(fn_name: str, *args_np, **kw):
    """``fn_name`` of both faces on the same NumPy arguments (tensors for torch)."""
    conv = [
        {k: _t(v) for k, v in a.items()} if isinstance(a, dict) else
        (_t(a) if isinstance(a, np.ndarray) else a)
        for a in args_np
    ]  # fmt: skip
    return getattr(R, fn_name)(*args_np, **kw), getattr(T, fn_name)(*conv, **kw)


def _equal_masks(a: dict, b: dict) -> None:
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == np.bool_ and b[k].dtype == torch.bool
        np.testing.assert_array_equal(_np(b[k]), a[k], err_msg=k)


# ===================================================================== magnitude masks
WEIGHTS = {
    "a": (6, 8),
    "b": (5,),
    "c": (3, 4, 2),
}


def _weights(seed: int, scale=(1.0, 0.3, 2.0)) -> dict[str, np.ndarray]:
    return {
        k: _rand(seed + i, s) * scale[i] for i, (k, s) in enumerate(WEIGHTS.items())
    }


@pytest.mark.parametrize("scope", ["layer", "global"])
@pytest.mark.parametrize("s", [0.0, 0.25, 0.5, 0.9, 0.999])
def test_magnitude_masks_agree_and_count(scope, s):
    ws = _weights(3)
    ref, got = _both("magnitude_masks", ws, s, scope=scope)
    _equal_masks(ref, got)
    total = sum(w.size for w in ws.values())
    if scope == "global":
        assert sum(int((~m).sum()) for m in ref.values()) == round(s * total)
    else:
        for k, w in ws.items():
            assert int((~ref[k]).sum()) == round(s * w.size)


def test_magnitude_masks_global_is_one_threshold():
    ws = _weights(5)
    masks = R.magnitude_masks(ws, 0.6, scope="global")
    kept = np.concatenate([np.abs(ws[k])[masks[k]] for k in ws])
    pruned = np.concatenate([np.abs(ws[k])[~masks[k]] for k in ws])
    assert pruned.max() <= kept.min()
    # the tensor of small weights ("b", scale 0.3) loses more than the large one ("c")
    assert (~masks["b"]).mean() > (~masks["c"]).mean()


@pytest.mark.parametrize("s", [0.0, 0.3, 0.5, 0.77])
def test_single_tensor_global_equals_layer(s):
    w = {"only": _rand(9, (7, 9))}
    for face, mk in ((R, np.asarray), (T, _t)):
        wf = {"only": mk(w["only"])}
        g = face.magnitude_masks(wf, s, scope="global")
        lay = face.magnitude_masks(wf, s, scope="layer")
        np.testing.assert_array_equal(_np(g["only"]), _np(lay["only"]))


@pytest.mark.parametrize("scope", ["layer", "global"])
@pytest.mark.parametrize("s", [0.1, 0.5, 0.6])
def test_ties_break_by_position_in_both_faces(scope, s):
    # many ties: magnitudes from {0, 1, 2}, signs random, two dtypes
    rng = np.random.default_rng(0)
    ws = {
        "x": (rng.integers(-2, 3, size=(4, 6))).astype(np.float64),
        "y": (rng.integers(-2, 3, size=(9,))).astype(np.float32),
    }
    ref, got = _both("magnitude_masks", ws, s, scope=scope)
    _equal_masks(ref, got)


def test_all_equal_weights_prune_in_key_then_row_major_order():
    ws = {"first": np.ones((2, 3)), "second": -np.ones(4)}
    for face, mk in ((R, np.asarray), (T, _t)):
        m = face.magnitude_masks({k: mk(v) for k, v in ws.items()}, 0.5, "global")
        # 10 entries, 5 pruned: all 6 of "first" come first, so its first 5 go
        np.testing.assert_array_equal(
            _np(m["first"]), [[False, False, False], [False, False, True]]
        )
        np.testing.assert_array_equal(_np(m["second"]), [True] * 4)
    # keys in the mapping's order: swapping the order swaps who is pruned
    swapped = {"second": ws["second"], "first": ws["first"]}
    m = R.magnitude_masks(swapped, 0.5, "global")
    np.testing.assert_array_equal(m["second"], [False] * 4)
    assert int((~m["first"]).sum()) == 1 and not m["first"][0, 0]


def test_sparsity_zero_keeps_everything():
    ws = _weights(1)
    for scope in ("layer", "global"):
        ref, got = _both("magnitude_masks", ws, 0.0, scope=scope)
        assert all(m.all() for m in ref.values())
        assert all(bool(m.all()) for m in got.values())


def test_torch_masks_accept_a_parameter_dict_and_do_not_track_grad():
    pd = torch.nn.ParameterDict(
        {k: torch.nn.Parameter(_t(v)) for k, v in _weights(2).items()}
    )
    got = T.magnitude_masks(pd, 0.5, scope="global")
    ref = R.magnitude_masks(_weights(2), 0.5, scope="global")
    _equal_masks(ref, got)
    assert not any(m.requires_grad for m in got.values())


def test_masks_do_not_modify_the_weights():
    ws = _weights(4)
    before = {k: v.copy() for k, v in ws.items()}
    R.magnitude_masks(ws, 0.5, "global")
    T.magnitude_masks({k: _t(v) for k, v in ws.items()}, 0.5, "global")
    for k in ws:
        np.testing.assert_array_equal(ws[k], before[k])


# ============================================================== importance and keep_top
def _mha_params(seed: int, d: int, d_attn: int, d_out: int | None = None) -> dict:
    d_out = d if d_out is None else d_out
    shapes = {
        "wq": (d, d_attn), "bq": (d_attn,), "wk": (d, d_attn), "bk": (d_attn,),
        "wv": (d, d_attn), "bv": (d_attn,), "wo": (d_attn, d_out), "bo": (d_out,),
    }  # fmt: skip
    rng = np.random.default_rng(seed)
    return {k: rng.standard_normal(s) / math.sqrt(s[0]) for k, s in shapes.items()}


def _ffn_params(seed: int, d: int, d_ff: int) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "w1": rng.standard_normal((d, d_ff)) / math.sqrt(d),
        "b1": rng.standard_normal(d_ff) * 0.1,
        "w2": rng.standard_normal((d_ff, d)) / math.sqrt(d_ff),
        "b2": rng.standard_normal(d) * 0.1,
    }


@pytest.mark.parametrize("n_heads", [1, 2, 4, 8])
def test_head_importance_formula_and_agreement(n_heads):
    p = _mha_params(0, 16, 16)
    ref, got = _both("head_importance", p, n_heads)
    dh = 16 // n_heads
    want = [
        np.linalg.norm(p["wv"][:, h * dh : (h + 1) * dh])
        * np.linalg.norm(p["wo"][h * dh : (h + 1) * dh])
        for h in range(n_heads)
    ]
    assert ref.shape == (n_heads,) and ref.dtype == np.float64
    np.testing.assert_allclose(ref, want, rtol=1e-13)
    assert got.dtype == torch.float64
    np.testing.assert_allclose(_np(got), ref, rtol=1e-13)


def test_head_importance_follows_scaling_of_one_head():
    p = _mha_params(1, 8, 8)
    p["wo"][2:4] *= 10.0  # head 1 of 4 (d_head 2) writes 10x louder
    scores = R.head_importance(p, 4)
    assert int(np.argmax(scores)) == 1


def test_neuron_importance_formula_and_agreement():
    p = _ffn_params(2, 6, 20)
    ref, got = _both("neuron_importance", p)
    want = np.linalg.norm(p["w1"], axis=0) * np.linalg.norm(p["w2"], axis=1)
    np.testing.assert_allclose(ref, want, rtol=1e-13)
    np.testing.assert_allclose(_np(got), ref, rtol=1e-13)


@pytest.mark.parametrize("face", FACES)
def test_keep_top_sorted_and_ties_keep_the_lower_index(face):
    mod, mk = face
    scores = np.array([3.0, 1.0, 3.0, 2.0, 3.0, 0.5])
    got = _np(mod.keep_top(mk(scores), 2))
    np.testing.assert_array_equal(got, [0, 2])  # three 3.0s: the first two
    assert got.dtype == np.int64
    np.testing.assert_array_equal(_np(mod.keep_top(mk(scores), 4)), [0, 2, 3, 4])
    np.testing.assert_array_equal(_np(mod.keep_top(mk(scores), 6)), range(6))


def test_keep_top_agrees_on_random_scores():
    s = _rand(7, 50)
    for n in (1, 13, 50):
        ref, got = _both("keep_top", s, n)
        np.testing.assert_array_equal(_np(got), ref)
        assert set(ref) == set(np.argsort(-s)[:n])


# ========================================================== prune_heads, prune_neurons
def _mha_any_width(x, p, n_heads, A):
    """Multi-head attention for ``wq (d, d_attn)`` with any ``d_attn`` (the shrunk
    layer), built on the attention package's ``softmax_attention``."""
    d_attn = p["wq"].shape[1]
    dh = d_attn // n_heads

    def heads(t):
        t = t.reshape(*t.shape[:-1], n_heads, dh)
        return t.swapaxes(-2, -3)

    q = heads(x @ p["wq"] + p["bq"])
    k = heads(x @ p["wk"] + p["bk"])
    v = heads(x @ p["wv"] + p["bv"])
    o = A.softmax_attention(q, k, v).swapaxes(-2, -3)
    return o.reshape(*x.shape[:-1], d_attn) @ p["wo"] + p["bo"]


@pytest.mark.parametrize("keep", [[0, 2], [3], [1, 2, 3], [0, 1, 2, 3]])
def test_pruned_heads_compute_the_full_layer_with_those_heads_zeroed(keep):
    d, n_heads = 16, 4
    dh = d // n_heads
    p = _mha_params(11, d, d)
    x = _rand(12, (2, 5, d))
    zeroed = {k: v.copy() for k, v in p.items()}
    for h in range(n_heads):
        if h not in keep:
            zeroed["wo"][h * dh : (h + 1) * dh] = 0.0  # head h's output is zero
    want = AR.multi_head_attention(x, zeroed, n_heads)
    small = R.prune_heads(p, keep, n_heads)
    assert small["wq"].shape == (d, len(keep) * dh)
    assert small["wo"].shape == (len(keep) * dh, d)
    assert small["bo"] is p["bo"]
    np.testing.assert_allclose(
        _mha_any_width(x, small, len(keep), AR), want, rtol=1e-12, atol=1e-13
    )
    # torch face: the same tensors, and the same output from the torch attention
    small_t = T.prune_heads({k: _t(v) for k, v in p.items()}, keep, n_heads)
    for k in small:
        np.testing.assert_array_equal(_np(small_t[k]), small[k], err_msg=k)
    want_t = AT.multi_head_attention(_t(x), {k: _t(v) for k, v in zeroed.items()}, 4)
    got_t = _mha_any_width(_t(x), small_t, len(keep), AT)
    np.testing.assert_allclose(_np(got_t), _np(want_t), rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("face", FACES)
def test_keeping_every_head_or_neuron_is_the_identity(face):
    mod, mk = face
    p = {k: mk(v) for k, v in _mha_params(3, 8, 8).items()}
    p["extra"] = mk(np.arange(3.0))
    out = mod.prune_heads(p, list(range(4)), 4)
    assert list(out) == list(p)
    for k in p:
        np.testing.assert_array_equal(_np(out[k]), _np(p[k]))
    f = {k: mk(v) for k, v in _ffn_params(4, 5, 12).items()}
    out = mod.prune_neurons(f, list(range(12)))
    for k in f:
        np.testing.assert_array_equal(_np(out[k]), _np(f[k]))


def test_pruned_heads_are_copies_and_keep_d_out():
    p = _mha_params(5, 8, 12, d_out=6)  # d 8, d_attn 12 (3 heads of 4), d_out 6
    small = R.prune_heads(p, [1], 3)
    np.testing.assert_array_equal(small["wq"], p["wq"][:, 4:8])
    np.testing.assert_array_equal(small["wo"], p["wo"][4:8])
    assert small["wo"].shape == (4, 6)
    small["wq"][:] = 0.0
    assert np.any(p["wq"] != 0)  # a copy, not a view
    # pruning twice: the second call counts the heads that are left
    twice = R.prune_heads(R.prune_heads(p, [0, 2], 3), [1], 2)
    np.testing.assert_array_equal(twice["wv"], p["wv"][:, 8:12])


def _gelu_ffn(x, p, xp):
    h = x @ p["w1"] + p["b1"]
    c = math.sqrt(2.0 / math.pi)
    g = 0.5 * h * (1.0 + xp.tanh(c * (h + 0.044715 * h**3)))
    return g @ p["w2"] + p["b2"]


@pytest.mark.parametrize("keep", [[0], [1, 5, 9], list(range(0, 12, 2))])
def test_pruned_neurons_compute_the_full_ffn_with_those_neurons_zeroed(keep):
    p = _ffn_params(6, 8, 12)
    x = _rand(7, (3, 4, 8))
    zeroed = {k: v.copy() for k, v in p.items()}
    drop = [j for j in range(12) if j not in keep]
    zeroed["w2"][drop] = 0.0  # neuron j writes nothing
    want = _gelu_ffn(x, zeroed, np)
    small = R.prune_neurons(p, keep)
    assert small["w1"].shape == (8, len(keep)) and small["b1"].shape == (len(keep),)
    assert small["w2"].shape == (len(keep), 8) and small["b2"] is p["b2"]
    np.testing.assert_allclose(_gelu_ffn(x, small, np), want, rtol=1e-12, atol=1e-13)
    small_t = T.prune_neurons({k: _t(v) for k, v in p.items()}, _t(np.array(keep)))
    for k in small:
        np.testing.assert_array_equal(_np(small_t[k]), small[k], err_msg=k)
    got_t = _gelu_ffn(_t(x), small_t, torch)
    np.testing.assert_allclose(_np(got_t), want, rtol=1e-12, atol=1e-13)


def test_torch_pruning_returns_detached_tensors():
    p = {k: torch.nn.Parameter(_t(v)) for k, v in _ffn_params(8, 4, 6).items()}
    out = T.prune_neurons(p, [1, 2])
    assert not out["w1"].requires_grad and out["b2"] is p["b2"]
    h = {k: torch.nn.Parameter(_t(v)) for k, v in _mha_params(9, 8, 8).items()}
    out = T.prune_heads(h, [0], 2)
    assert not out["wq"].requires_grad and out["bo"] is h["bo"]


def test_pruning_passes_nan_through():
    p = _ffn_params(10, 4, 6)
    p["w1"][0, 3] = np.nan
    for face, mk in ((R, np.asarray), (T, _t)):
        out = face.prune_neurons({k: mk(v) for k, v in p.items()}, [3, 4])
        assert np.isnan(_np(out["w1"])[0, 0])


# =========================================================================== CSR format
def _sparse(seed: int, shape, density: float, empty_rows=()) -> np.ndarray:
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(shape) * (rng.random(shape) < density)
    w[list(empty_rows)] = 0.0
    return w


@pytest.mark.parametrize("face", FACES)
@pytest.mark.parametrize("index_dtype", ["int32", "int64"])
def test_csr_roundtrip_is_exact(face, index_dtype):
    mod, mk = face
    w = _sparse(0, (9, 13), 0.3, empty_rows=(0, 4, 8))
    w[1, 2] = -0.0  # zero: not stored
    csr = mod.to_csr(mk(w), index_dtype=index_dtype)
    assert csr.nnz == int(np.count_nonzero(w))
    assert str(csr.col_idx.dtype).endswith(index_dtype)
    back = _np(mod.from_csr(csr))
    np.testing.assert_array_equal(back, w)
    assert back.dtype == w.dtype


def test_csr_faces_store_the_same_arrays():
    w = _sparse(1, (7, 11), 0.4, empty_rows=(3,))
    ref, got = R.to_csr(w), T.to_csr(_t(w))
    for a, b in zip(ref, got):
        if isinstance(a, tuple):
            assert a == b
        else:
            np.testing.assert_array_equal(_np(b), a)
    assert ref.nbytes == got.nbytes
    # scipy's layout, spelled out for a small matrix
    small = R.to_csr(np.array([[0.0, 2.0, 0.0], [0.0, 0.0, 0.0], [5.0, 0.0, 7.0]]))
    np.testing.assert_array_equal(small.values, [2.0, 5.0, 7.0])
    np.testing.assert_array_equal(small.col_idx, [1, 0, 2])
    np.testing.assert_array_equal(small.row_ptr, [0, 1, 1, 3])


@pytest.mark.parametrize("face", FACES)
@pytest.mark.parametrize("index_dtype", ["int32", "int64"])
def test_csr_nbytes_counts_the_three_arrays(face, index_dtype):
    mod, mk = face
    for dtype in (np.float64, np.float32, np.float16):
        w = _sparse(2, (6, 10), 0.35).astype(dtype)
        csr = mod.to_csr(mk(w), index_dtype=index_dtype)
        arrays = sum(_np(a).nbytes for a in (csr.values, csr.col_idx, csr.row_ptr))
        ib = 4 if index_dtype == "int32" else 8
        vb = np.dtype(dtype).itemsize
        assert csr.nbytes == arrays == storage.csr_nbytes((6, 10), csr.nnz, vb, ib)


def test_csr_stores_nan_and_keeps_it():
    w = _sparse(3, (4, 5), 0.5)
    w[2, 1] = np.nan
    for face, mk in ((R, np.asarray), (T, _t)):
        back = _np(face.from_csr(face.to_csr(mk(w))))
        np.testing.assert_array_equal(back, w)  # assert_array_equal: NaN == NaN


MATMUL_CASES = [
    # (W shape, density, empty rows, x leading shape)
    ((8, 12), 0.3, (0, 5), (1,)),  # one token (decode)
    ((8, 12), 0.3, (), (37,)),  # many tokens (prefill)
    ((5, 7), 0.5, (1, 2, 3), (2, 3)),  # batch dims
    ((16, 4), 0.9, (), ()),  # x 1-D
    ((6, 9), 0.0, (), (4,)),  # all-zero W: nnz 0
    ((6, 9), 1.0, (), (3,)),  # dense W
    ((1, 20), 0.2, (), (5,)),
    ((20, 1), 0.5, (), (5,)),
]


@pytest.mark.parametrize("face", FACES)
@pytest.mark.parametrize("case", MATMUL_CASES)
@pytest.mark.parametrize("with_bias", [False, True])
def test_csr_matmul_equals_dense_in_float64(face, case, with_bias):
    mod, mk = face
    shape, density, empty, lead = case
    w = _sparse(4, shape, density, empty_rows=empty)
    x = _rand(5, (*lead, shape[1]))
    b = _rand(6, shape[0]) if with_bias else None
    want = x @ w.T + (0.0 if b is None else b)
    got = mod.csr_matmul(mk(x), mod.to_csr(mk(w)), None if b is None else mk(b))
    assert tuple(got.shape) == (*lead, shape[0])
    # float64: both sum the same <= 20 products per output, bound ~ n u sum|x w|
    bound = 20 * 2.0**-53 * (np.abs(x) @ np.abs(w).T + 1e-300) + 1e-15
    assert np.all(np.abs(_np(got) - want) <= bound + (0 if b is None else 1e-15))


@settings(max_examples=40, deadline=None)
@given(
    rows=st.integers(1, 12),
    cols=st.integers(1, 12),
    lead=st.lists(st.integers(0, 4), min_size=0, max_size=2),
    density=st.sampled_from([0.0, 0.1, 0.5, 0.9, 1.0]),
    seed=st.integers(0, 2**16),
    index_dtype=st.sampled_from(["int32", "int64"]),
)
def test_csr_random_shapes_both_faces(rows, cols, lead, density, seed, index_dtype):
    w = _sparse(seed, (rows, cols), density)
    x = _rand(seed + 1, (*lead, cols))
    b = _rand(seed + 2, rows)
    want = x @ w.T + b
    # cols <= 12 products per output, summed in some order: <= 12 u sum|x w| apart
    bound = 12 * 2.0**-53 * (np.abs(x) @ np.abs(w).T + np.abs(b)) + 1e-300
    ref = R.csr_matmul(x, R.to_csr(w, index_dtype), b)
    got = _np(T.csr_matmul(_t(x), T.to_csr(_t(w), index_dtype), _t(b)))
    assert ref.shape == got.shape == want.shape
    assert np.all(np.abs(ref - want) <= bound)
    assert np.all(np.abs(got - want) <= bound)
    np.testing.assert_array_equal(R.from_csr(R.to_csr(w, index_dtype)), w)


@pytest.mark.parametrize("face", FACES)
def test_csr_matmul_handles_empty_rows_exactly(face):
    mod, mk = face
    w = np.zeros((5, 6))
    w[3, 2] = 1.5
    x = _rand(0, (4, 6))
    b = np.arange(5.0)
    y = _np(mod.csr_matmul(mk(x), mod.to_csr(mk(w)), mk(b)))
    want = np.tile(b, (4, 1))
    want[:, 3] += 1.5 * x[:, 2]
    np.testing.assert_array_equal(y, want)  # one product per output: exact


@pytest.mark.parametrize("face", FACES)
def test_csr_matmul_chunks_give_the_same_result(face, monkeypatch):
    mod, mk = face
    w = _sparse(8, (10, 14), 0.4, empty_rows=(2,))
    x = _rand(9, (3, 11, 14))
    csr = mod.to_csr(mk(w))
    whole = _np(mod.csr_matmul(mk(x), csr))
    # 33 tokens: chunks of 3 entries (rows cut in two) and of 1 entry
    for elements in (33 * 3, 33):
        monkeypatch.setattr(mod, "CHUNK_ELEMENTS", elements)
        got = _np(mod.csr_matmul(mk(x), csr))
        np.testing.assert_allclose(got, whole, rtol=1e-14, atol=1e-15)
        np.testing.assert_allclose(got, x @ w.T, rtol=1e-13, atol=1e-14)


@pytest.mark.parametrize("face", FACES)
def test_csr_matmul_zero_tokens(face):
    mod, mk = face
    w = _sparse(1, (3, 4), 0.5)
    y = mod.csr_matmul(mk(np.zeros((0, 4))), mod.to_csr(mk(w)))
    assert tuple(y.shape) == (0, 3)


def test_csr_matmul_float32_and_faces_agree_in_float64():
    w = _sparse(10, (32, 48), 0.2)
    x = _rand(11, (7, 48))
    ref = R.csr_matmul(x, R.to_csr(w))
    got = T.csr_matmul(_t(x), T.to_csr(_t(w)))
    np.testing.assert_allclose(_np(got), ref, rtol=0, atol=1e-13)
    # float32 runs and keeps its dtype in both faces
    r32 = R.csr_matmul(x.astype(np.float32), R.to_csr(w.astype(np.float32)))
    t32 = T.csr_matmul(_t(x.astype(np.float32)), T.to_csr(_t(w.astype(np.float32))))
    assert r32.dtype == np.float32 and t32.dtype == torch.float32


def test_nan_in_x_reaches_only_rows_that_read_its_column_in_both_faces():
    w = np.zeros((3, 4))
    w[0, 1], w[2, 3] = 2.0, 1.0
    x = np.ones((2, 4))
    x[0, 1] = np.nan
    for face, mk in ((R, np.asarray), (T, _t)):
        y = _np(face.csr_matmul(mk(x), face.to_csr(mk(w))))
        np.testing.assert_array_equal(np.isnan(y), [[1, 0, 0], [0, 0, 0]])


def test_torch_csr_matmul_is_differentiable():
    w = _sparse(12, (5, 6), 0.5, empty_rows=(1,))
    csr = T.to_csr(_t(w))
    values = csr.values.clone().requires_grad_(True)
    csr_v = CSR(values, csr.col_idx, csr.row_ptr, csr.shape)
    x = _t(_rand(13, (3, 6))).requires_grad_(True)
    b = _t(_rand(14, 5)).requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda x, v, b: T.csr_matmul(x, CSR(v, csr.col_idx, csr.row_ptr, csr.shape), b),
        (x, values, b),
    )
    assert csr_v.nnz == csr.nnz


# ======================================================================== torch.sparse
@pytest.mark.parametrize("layout", ["csr", "coo"])
@pytest.mark.parametrize("source", ["dense", "csr32", "csr64"])
@pytest.mark.parametrize("lead", [(1,), (9,), (2, 3), ()])
def test_torch_sparse_matmul_equals_dense(layout, source, lead):
    w = _sparse(20, (10, 12), 0.3, empty_rows=(4,))
    x = _rand(21, (*lead, 12))
    b = _rand(22, 10)
    src = (
        _t(w)
        if source == "dense"
        else T.to_csr(_t(w), index_dtype="int32" if source == "csr32" else "int64")
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the beta notice is silenced, nothing else
        sp = S.to_torch_sparse(src, layout=layout)
        y = S.torch_sparse_matmul(_t(x), sp, _t(b))
    assert sp.layout == {"csr": torch.sparse_csr, "coo": torch.sparse_coo}[layout]
    np.testing.assert_array_equal(sp.to_dense().numpy(), w)
    np.testing.assert_allclose(_np(y), x @ w.T + b, rtol=1e-13, atol=1e-14)
    assert tuple(y.shape) == (*lead, 10)


def test_torch_sparse_all_zero_matrix():
    w = np.zeros((4, 5))
    x = _rand(0, (3, 5))
    for layout in ("csr", "coo"):
        y = S.torch_sparse_matmul(_t(x), S.to_torch_sparse(_t(w), layout))
        np.testing.assert_array_equal(_np(y), np.zeros((3, 4)))


# ============================================================================ bad input
def _bad_input_cases(mk):
    w = {"a": mk(_rand(0, (3, 4)))}
    p = {k: mk(v) for k, v in _mha_params(0, 8, 8).items()}
    f = {k: mk(v) for k, v in _ffn_params(0, 4, 6).items()}
    nan = _rand(0, (3, 4))
    nan[1, 1] = np.nan
    ints = {"a": mk(np.arange(6).reshape(2, 3))}
    no_wo = {k: v for k, v in p.items() if k != "wo"}
    no_w2 = {k: v for k, v in f.items() if k != "w2"}
    bad_bq = dict(p, bq=mk(np.zeros(7)))
    bad_b1 = dict(f, b1=mk(np.zeros(5)))
    return [
        ("magnitude_masks", (w, 1.0), ValueError, "sparsity must be in"),
        ("magnitude_masks", (w, -0.1), ValueError, "sparsity must be in"),
        ("magnitude_masks", (w, float("nan")), ValueError, "sparsity"),
        ("magnitude_masks", (w, "0.5"), TypeError, "sparsity must be a real"),
        ("magnitude_masks", (w, True), TypeError, "sparsity must be a real"),
        ("magnitude_masks", (w, 0.5, "row"), ValueError, "scope must be one of"),
        ("magnitude_masks", ({}, 0.5), ValueError, "weights must hold at least one"),
        ("magnitude_masks", ([mk(nan)], 0.5), TypeError, "weights must be a dict"),
        ("magnitude_masks", ({"a": mk(nan)}, 0.5), ValueError, "weights['a']"),
        ("magnitude_masks", (ints, 0.5), TypeError, "weights['a'] must have a float"),
        ("magnitude_masks", ({1: w["a"]}, 0.5), TypeError, "str keys"),
        ("head_importance", (p, 3), ValueError, "n_heads must divide"),
        ("head_importance", (p, 0), ValueError, "n_heads must be an int"),
        ("head_importance", (no_wo, 2), ValueError, "params is missing 'wo'"),
        ("head_importance", ([1, 2], 2), TypeError, "params must be a dict"),
        ("neuron_importance", (no_w2,), ValueError, "params is missing 'w2'"),
        ("neuron_importance", (dict(f, w2=mk(np.zeros((5, 4)))),), ValueError,
         "params['w2'] must have d_ff = 6 rows"),
        ("keep_top", (mk(np.arange(4.0)), 0), ValueError, "n_keep must be an int"),
        ("keep_top", (mk(np.arange(4.0)), 5), ValueError, "n_keep must be an int"),
        ("keep_top", (mk(np.array([1.0, np.nan])), 1), ValueError, "scores"),
        ("keep_top", (mk(np.ones((2, 2))), 1), ValueError, "scores must have 1"),
        ("prune_heads", (p, [0, 4], 4), ValueError, "in [0, 4)"),
        ("prune_heads", (p, [-1], 4), ValueError, "in [0, 4)"),
        ("prune_heads", (p, [1, 1], 4), ValueError, "a repeated index"),
        ("prune_heads", (p, [2, 1], 4), ValueError, "unsorted"),
        ("prune_heads", (p, [], 4), ValueError, "at least one index"),
        ("prune_heads", (p, [0.0], 4), TypeError, "keep must hold int"),
        ("prune_heads", (p, "01", 4), TypeError, "keep must be a list"),
        ("prune_heads", (p, [0], 3), ValueError, "n_heads must divide"),
        ("prune_heads", (no_wo, [0], 2), ValueError, "params is missing 'wo'"),
        ("prune_heads", (bad_bq, [0], 2), ValueError, "params['bq'] must have d_attn"),
        ("prune_neurons", (f, [6]), ValueError, "in [0, 6)"),
        ("prune_neurons", (f, [3, 2]), ValueError, "unsorted"),
        ("prune_neurons", (no_w2, [0]), ValueError, "params is missing 'w2'"),
        ("prune_neurons", (bad_b1, [0]), ValueError, "params['b1'] must have d_ff"),
        ("to_csr", (mk(np.zeros(4)),), ValueError, "w must have 2 dimensions"),
        ("to_csr", (mk(np.zeros((2, 0))),), ValueError, "w must not be empty"),
        ("to_csr", (mk(np.zeros((2, 2))), "int16"), ValueError, "index_dtype"),
        ("to_csr", (mk(np.arange(4).reshape(2, 2)),), TypeError, "float"),
    ]


@pytest.mark.parametrize("face", FACES)
def test_bad_input_is_named(face):
    mod, mk = face
    for name, args, err, text in _bad_input_cases(mk):
        with pytest.raises(err) as info:
            getattr(mod, name)(*args)
        assert text in str(info.value), (name, args, str(info.value))


def test_a_face_refuses_the_other_kind():
    w = _rand(0, (3, 4))
    with pytest.raises(TypeError, match="effx_lab.prune.torch_ops"):
        R.to_csr(_t(w))
    with pytest.raises(TypeError, match="effx_lab.prune.reference"):
        T.to_csr(w)
    with pytest.raises(TypeError, match="use effx_lab.prune.torch_ops"):
        R.from_csr(T.to_csr(_t(w)))
    with pytest.raises(TypeError, match="use effx_lab.prune.reference"):
        T.csr_matmul(_t(np.ones((1, 4))), R.to_csr(w))
    with pytest.raises(TypeError, match="csr must be a CSR"):
        R.csr_matmul(np.ones((1, 4)), w)


@pytest.mark.parametrize("face", FACES)
def test_csr_matmul_bad_x_and_bias(face):
    mod, mk = face
    csr = mod.to_csr(mk(_rand(0, (3, 4))))
    msg = r"x must have shape \(\.\.\., in_features=4\)"
    with pytest.raises(ValueError, match=msg):
        mod.csr_matmul(mk(np.ones((2, 5))), csr)
    with pytest.raises(TypeError, match="x must have the dtype of csr.values"):
        mod.csr_matmul(mk(np.ones((2, 4), dtype=np.float32)), csr)
    with pytest.raises(ValueError, match=r"bias must have shape \(out_features,\)"):
        mod.csr_matmul(mk(np.ones((2, 4))), csr, mk(np.ones(4)))
    with pytest.raises(TypeError, match="x must be"):
        mod.csr_matmul([[1.0] * 4], csr)


@pytest.mark.parametrize("face", FACES)
def test_csr_constructor_validates_every_field(face):
    _, mk = face
    v, c, p = mk(np.array([1.0, 2.0, 3.0])), mk(np.array([1, 0, 2])), None
    p = mk(np.array([0, 1, 1, 3]))
    CSR(v, c, p, (3, 3))  # valid
    i32 = mk(np.array([1, 0, 2], dtype=np.int32))
    cases = [
        ((v, c, p, (3,)), TypeError, "shape must be a (rows, cols)"),
        ((v, c, p, (0, 3)), ValueError, "shape[0]"),
        ((v, c, mk(np.array([0, 1, 3])), (3, 3)), ValueError, "rows + 1 = 4"),
        ((v, c, mk(np.array([0, 2, 1, 3])), (3, 3)), ValueError, "never decrease"),
        ((v, c, mk(np.array([0, 1, 1, 2])), (3, 3)), ValueError, "end at the number"),
        ((v, mk(np.array([1, 0, 3])), p, (3, 3)), ValueError, "col_idx must be in"),
        ((v, mk(np.array([1, 2, 0])), p, (3, 3)), ValueError, "strictly increasing"),
        ((v, mk(np.array([1, 2])), p, (3, 3)), ValueError, "one entry per stored"),
        ((v, mk(np.array([1.0, 0.0, 2.0])), p, (3, 3)), TypeError, "int32 or int64"),
        ((v, i32, p, (3, 3)), TypeError, "share one dtype"),
        ((mk(np.array([1, 2, 3])), c, p, (3, 3)), TypeError, "values must have a fl"),
        ((mk(np.ones((3, 1))), c, p, (3, 3)), ValueError, "values must have 1 dim"),
        ((v, np.array([1, 0, 2]) if mk is _t else _t(np.array([1, 0, 2])), p, (3, 3)),
         TypeError, "like values"),
        ((v, c, [0, 1, 1, 3], (3, 3)), TypeError, "row_ptr must be a NumPy array"),
    ]  # fmt: skip
    for args, err, text in cases:
        with pytest.raises(err) as info:
            CSR(*args)
        assert text in str(info.value), (text, str(info.value))


def test_sparse_torch_bad_input():
    w = _t(_rand(0, (3, 4)))
    sp = S.to_torch_sparse(w)
    with pytest.raises(ValueError, match="layout must be one of"):
        S.to_torch_sparse(w, layout="bsr")
    with pytest.raises(TypeError, match="w_or_csr must be a dense 2-D torch tensor"):
        S.to_torch_sparse(w.numpy())
    with pytest.raises(TypeError, match="CSR holding torch tensors"):
        S.to_torch_sparse(R.to_csr(w.numpy()))
    with pytest.raises(TypeError, match="dense \\(strided\\)"):
        S.to_torch_sparse(sp)
    with pytest.raises(ValueError, match="w_or_csr must have 2 dimensions"):
        S.to_torch_sparse(torch.ones(3, dtype=torch.float64))
    with pytest.raises(TypeError, match="sparse_w must be a torch.sparse"):
        S.torch_sparse_matmul(torch.ones(2, 4, dtype=torch.float64), w)
    with pytest.raises(ValueError, match="in_features=4"):
        S.torch_sparse_matmul(torch.ones(2, 3, dtype=torch.float64), sp)
    with pytest.raises(TypeError, match="dtype of sparse_w"):
        S.torch_sparse_matmul(torch.ones(2, 4), sp)
    with pytest.raises(ValueError, match="bias must have shape"):
        ones = torch.ones(4, dtype=torch.float64)
        S.torch_sparse_matmul(ones[None], sp, ones)


# ============================================================== on a GPU, when present
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_torch_face_on_cuda_matches_the_reference():
    """The torch face and torch.sparse on CUDA give the reference's masks, indices
    and CSR arrays exactly, and its products in float64 (index_add and cuSPARSE sum in
    their own orders)."""
    dev = torch.device("cuda")
    ws = _weights(3)
    got = T.magnitude_masks({k: _t(v).to(dev) for k, v in ws.items()}, 0.6, "global")
    ref = R.magnitude_masks(ws, 0.6, "global")
    _equal_masks(ref, got)
    assert all(m.device.type == "cuda" for m in got.values())
    p = _mha_params(0, 16, 16)
    pt = {k: _t(v).to(dev) for k, v in p.items()}
    keep = T.keep_top(T.head_importance(pt, 4), 2)
    np.testing.assert_array_equal(_np(keep), R.keep_top(R.head_importance(p, 4), 2))
    small = T.prune_heads(pt, keep, 4)
    for k, v in R.prune_heads(p, _np(keep), 4).items():
        np.testing.assert_array_equal(_np(small[k]), v)
    w = _sparse(1, (64, 96), 0.2, empty_rows=(0, 7))
    x, b = _rand(2, (3, 5, 96)), _rand(3, 64)
    csr = T.to_csr(_t(w).to(dev))
    for a, r in zip(csr, R.to_csr(w)):
        if not isinstance(a, tuple):
            np.testing.assert_array_equal(_np(a), r)
    want = x @ w.T + b
    y = T.csr_matmul(_t(x).to(dev), csr, _t(b).to(dev))
    np.testing.assert_allclose(_np(y), want, rtol=1e-12, atol=1e-13)
    for layout in ("csr", "coo"):
        sp = S.to_torch_sparse(csr, layout)
        y = S.torch_sparse_matmul(_t(x).to(dev), sp, _t(b).to(dev))
        assert y.device.type == "cuda"
        np.testing.assert_allclose(_np(y), want, rtol=1e-12, atol=1e-13)
