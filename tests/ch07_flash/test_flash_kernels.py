"""Tests of effx_lab.flash.kernels (chapter 7): the Triton mixed chunk attention kernel vs the NumPy reference.

Without a GPU the kernel runs in Triton's CPU interpreter (``import effx_lab`` switches it on), so sizes are
small: chunk 16-64, s = 16-32, e <= 65, n <= 80.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from _backends import assert_within, gamma, unit_roundoff

import effx_lab  # noqa: F401  (first: sets TRITON_INTERPRET=1 when there is no GPU)

pytest.importorskip("triton", exc_type=ImportError)

from effx_lab.flash import kernels as K  # noqa: E402
from effx_lab.flash import reference as R  # noqa: E402

if not K.available():  # pragma: no cover - depends on the machine
    pytest.skip(f"Triton kernel unavailable: {K.why_unavailable()}", allow_module_level=True)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
FN = K.mixed_chunk_attention_triton


def _inputs(seed: int, lead: tuple[int, ...], n: int, s: int, e: int, dtype=torch.float32, scale: float = 1.0):
    """Five torch tensors (quad_q, quad_k, lin_q, lin_k, v) and their float64 NumPy copies."""
    rng = np.random.default_rng(seed)
    arrays = [scale * rng.standard_normal((*lead, n, s)) for _ in range(4)] + [rng.standard_normal((*lead, n, e))]
    tensors = [torch.tensor(a).to(dtype=dtype, device=DEVICE) for a in arrays]
    # the reference sees exactly the (rounded) values the kernel sees
    return tensors, [t.detach().double().cpu().numpy() for t in tensors]


def _bias(seed: int, r: int):
    w = np.random.default_rng(seed).standard_normal(2 * r + 1)
    return torch.tensor(w, dtype=torch.float32, device=DEVICE), w.astype(np.float32).astype(np.float64)


def _assert_close(out: torch.Tensor, arrays: list, c: int, causal: bool = False, rel_bias=None, mode: str = "mixed",
                  ref: np.ndarray | None = None) -> None:
    """The kernel's output against the float64 reference on the same (rounded) inputs, within a derived bound.

    Magnitudes: the reference on absolute values, ``M = mixed_chunk_attention(|qq|, |kq|, |lq|, |lk|, |v|,
    |b|)``, dominates every term of every output and the first-order change of each relu^2 weight (``a =
    relu(l)^2`` moves by ``2 relu(l) dl``, and ``|dl| <= gamma_{s+2} (|q| |k| / c + |b|)``). The kernel sums in
    float32 (tl.dot's accumulator; ieee precision): the s-term logits twice over (a^2), the chunk's c terms and
    the global part's state (all n tokens) times s; the 16-bit kernels also round the relu^2 weights, the
    scaled state and the output to their dtype (3 u): ``(gamma_{3s + c + n + 8}(u32) + 3 u_dtype) M``."""
    qq, kq, lq, lk, v = arrays
    s_dim, n = qq.shape[-1], qq.shape[-2]
    if ref is None:
        ref = R.mixed_chunk_attention(*arrays, c, causal=causal, rel_bias=rel_bias, mode=mode)
    mag = R.mixed_chunk_attention(*[np.abs(a) for a in arrays], c, causal=causal,
                                  rel_bias=None if rel_bias is None else np.abs(rel_bias), mode=mode)
    u = 3 * unit_roundoff(out.dtype) if out.dtype != torch.float32 else 0.0
    bound = (gamma(3 * s_dim + c + n + 8, unit_roundoff(torch.float32)) + u) * mag
    assert_within(out, ref, bound, f"mixed chunk attention c={c} causal={causal} mode={mode} {out.dtype}")


def _force_block_q(monkeypatch, block_q: int) -> None:
    """Make the kernel tile each chunk's rows by ``block_q`` (the default tile is min(c, 32))."""
    orig = K._launch_config
    monkeypatch.setattr(K, "_launch_config", lambda c, *args: (min(block_q, c),) + orig(c, *args)[1:])


# ============================================================================ agreement with the reference
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("mode", ["mixed", "local", "global"])
@pytest.mark.parametrize("with_bias", [False, True])
def test_matches_reference_float32(causal, mode, with_bias):
    # n = 50: not a multiple of c = 16 (padding, 4 chunks); e = 40: not a multiple of BLOCK_E (masked columns)
    tensors, arrays = _inputs(0, (2,), 50, 16, 40)
    bias_t, bias_np = _bias(1, 5) if with_bias else (None, None)
    out = FN(*tensors, 16, causal=causal, rel_bias=bias_t, mode=mode)
    assert out.dtype == torch.float32 and out.shape == (2, 50, 40)
    _assert_close(out, arrays, 16, causal, bias_np, mode)


@pytest.mark.parametrize("lead", [(), (1,), (2, 3)])
def test_leading_batch_dims(lead):
    tensors, arrays = _inputs(2, lead, 48, 16, 48)
    bias_t, bias_np = _bias(3, 2)
    out = FN(*tensors, 16, causal=True, rel_bias=bias_t)
    assert out.shape == (*lead, 48, 48)
    _assert_close(out, arrays, 16, True, bias_np)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("c, block_q", [(32, 16), (64, 16), (64, None)])
def test_tiles_inside_a_chunk(monkeypatch, causal, c, block_q):
    # several query/key tiles per chunk (and, causal, the skipped tiles above the diagonal); bias with R = 3
    # so that clipping happens inside the chunk, and R = 100 > c so that it never does. None: default tiles.
    if block_q is not None:
        _force_block_q(monkeypatch, block_q)
    tensors, arrays = _inputs(4, (1,), 80, 32, 20)
    for r in (3, 100):
        bias_t, bias_np = _bias(5 + r, r)
        out = FN(*tensors, c, causal=causal, rel_bias=bias_t)
        _assert_close(out, arrays, c, causal, bias_np)


@pytest.mark.parametrize("e", [1, 17, 64, 65])
def test_any_value_width(e):
    tensors, arrays = _inputs(6, (1,), 40, 16, e)
    out = FN(*tensors, 16, causal=True)
    _assert_close(out, arrays, 16, True)


def test_one_chunk_local_is_gau_attention():
    # chunk_size >= n: one chunk, causal local part = relu(q k^T / c + b)^2 (masked) @ v, as in GAU
    tensors, arrays = _inputs(7, (), 16, 16, 32)
    bias_t, bias_np = _bias(8, 4)
    out = FN(*tensors, 16, causal=True, rel_bias=bias_t, mode="local")
    a = R.relu2_attention(arrays[0], arrays[1], R.rel_pos_bias(16, bias_np), causal=True)
    _assert_close(out, arrays, 16, True, bias_np, "local", ref=a @ arrays[4])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("causal", [True, False])
def test_half_precision_inputs(dtype, causal):
    tensors, arrays = _inputs(9, (2,), 40, 16, 24, dtype=dtype)
    bias_t, bias_np = _bias(10, 3)
    out = FN(*tensors, 16, causal=causal, rel_bias=bias_t)
    assert out.dtype == dtype
    _assert_close(out, arrays, 16, causal, bias_np)


def test_non_contiguous_inputs():
    tensors, arrays = _inputs(11, (3,), 32, 16, 16)
    views = [t.transpose(0, 1).contiguous().transpose(0, 1) for t in tensors]  # same values, other strides
    assert not views[0].is_contiguous()
    out = FN(*views, 16, causal=True)
    _assert_close(out, arrays, 16, True)


def test_empty_inputs():
    tensors, _ = _inputs(12, (0,), 20, 16, 8)
    assert FN(*tensors, 16).shape == (0, 20, 8)
    tensors, _ = _inputs(12, (2,), 0, 16, 8)
    assert FN(*tensors, 16, causal=True).shape == (2, 0, 8)


# ============================================================================ causality, exclusive state
@pytest.mark.parametrize("which", range(5))
def test_causal_output_ignores_the_future(which):
    # change token t = 37 (in the middle of chunk 2) in one input: rows < t must not move at all
    tensors, _ = _inputs(13, (1,), 60, 16, 24)
    bias_t, _ = _bias(14, 3)
    t = 37
    before = FN(*tensors, 16, causal=True, rel_bias=bias_t)
    changed = [x.clone() for x in tensors]
    changed[which][:, t] += 1.0
    after = FN(*changed, 16, causal=True, rel_bias=bias_t)
    assert torch.equal(before[:, :t], after[:, :t])
    assert not torch.equal(before[:, t:], after[:, t:])  # the change does reach the output
    if which in (0, 2):  # a query of token t only reaches row t
        assert torch.equal(before[:, t + 1 :], after[:, t + 1 :])
    if which == 3:  # lin_k of chunk 2 enters the state only after chunk 2: chunks 0-2 (rows < 48) unchanged
        assert torch.equal(before[:, :48], after[:, :48])
    # non-causal: the same change does reach earlier rows (except through queries, which only touch row t)
    nc_before = FN(*tensors, 16, causal=False, rel_bias=bias_t)
    nc_after = FN(*changed, 16, causal=False, rel_bias=bias_t)
    assert torch.equal(nc_before[:, :t], nc_after[:, :t]) == (which in (0, 2))


def test_causal_state_is_exclusive():
    # global-only, causal: chunk 0 has no previous chunk, so its output is exactly zero; chunk 1 sees chunk 0 only
    tensors, arrays = _inputs(15, (1,), 48, 16, 16)
    out = FN(*tensors, 16, causal=True, mode="global")
    assert torch.count_nonzero(out[:, :16]) == 0
    kv0 = arrays[3][:, :16].swapaxes(-1, -2) @ arrays[4][:, :16]
    full = R.mixed_chunk_attention(*arrays, 16, causal=True, mode="global")
    np.testing.assert_allclose(full[:, 16:32], arrays[2][:, 16:32] @ kv0 / 16, rtol=1e-10, atol=1e-12)  # float64
    _assert_close(out, arrays, 16, True, mode="global", ref=full)


# ============================================================================ availability, config, bad input
def test_available_here():
    assert K.available() is True
    assert K.why_unavailable() is None


def test_launch_config_blocks_fit_tl_dot():
    for c in (16, 32, 64, 128, 256, 1024):
        for s in (16, 64, 128):
            for e in (1, 17, 64, 1000):
                for dtype in K.DTYPES:
                    block_q, block_e, num_warps, num_stages = K._launch_config(c, s, e, dtype)
                    assert block_q >= 16 and c % block_q == 0  # query/key tiles cover a chunk exactly
                    assert block_e in (16, 32, 64) and num_warps in (4, 8) and num_stages >= 1


def test_rejects_bad_tensors():
    tensors, arrays = _inputs(16, (1,), 32, 16, 16)
    qq, kq, ql, kl, v = tensors
    with pytest.raises(TypeError, match="quad_q must be a torch tensor"):
        FN(arrays[0], kq, ql, kl, v, 16)
    with pytest.raises(TypeError, match="lin_k must be a NumPy array or torch tensor"):
        FN(qq, kq, ql, [[0.0]], v, 16)
    with pytest.raises(TypeError, match="v must have a float dtype"):
        FN(qq, kq, ql, kl, v.long(), 16)
    with pytest.raises(TypeError, match="quad_q must have dtype float16, bfloat16 or float32"):
        FN(*(t.double() for t in tensors), 16)
    with pytest.raises(TypeError, match=r"quad_k must have the dtype of quad_q \(torch.float32\)"):
        FN(qq, kq.half(), ql, kl, v, 16)
    with pytest.raises(TypeError, match="v must have the dtype of quad_q"):
        FN(qq, kq, ql, kl, v.half(), 16)
    with pytest.raises(ValueError, match="lin_q must have the shape"):
        FN(qq, kq, ql[:, :31], kl, v, 16)
    with pytest.raises(ValueError, match="quad_q must have the shape"):
        FN(qq[0, 0], kq[0, 0], ql[0, 0], kl[0, 0], v[0, 0], 16)
    with pytest.raises(ValueError, match=r"v must have shape \(\.\.\., n, e\)"):
        FN(qq, kq, ql, kl, v[:, :31], 16)
    with pytest.raises(ValueError, match="lin_k must be on the device of quad_q"):
        FN(qq, kq, ql, kl.to("meta"), v, 16)


def test_rejects_bad_sizes():
    tensors, _ = _inputs(17, (1,), 32, 16, 16)
    for bad in (8, 24, 1, 0, -16):
        with pytest.raises(ValueError, match="chunk_size must be"):
            FN(*tensors, bad)
    for bad in (16.0, True, "16", None):
        with pytest.raises(TypeError, match="chunk_size must be an int"):
            FN(*tensors, bad)
    for s in (8, 24):
        small, _ = _inputs(17, (1,), 32, s, 16)
        with pytest.raises(ValueError, match="last dimension s must be a power of two >= 16"):
            FN(*small, 16)


def test_rejects_bad_options():
    tensors, _ = _inputs(18, (1,), 32, 16, 16)
    with pytest.raises(ValueError, match="mode must be one of"):
        FN(*tensors, 16, mode="both")
    with pytest.raises(TypeError, match="causal must be a bool"):
        FN(*tensors, 16, causal="yes")
    with pytest.raises(ValueError, match="rel_bias must be 1-D with an odd length"):
        FN(*tensors, 16, rel_bias=torch.zeros(4, device=DEVICE))
    with pytest.raises(ValueError, match="rel_bias must be 1-D with an odd length"):
        FN(*tensors, 16, rel_bias=torch.zeros(3, 3, device=DEVICE))
    with pytest.raises(TypeError, match="rel_bias must be a torch tensor"):
        FN(*tensors, 16, rel_bias=np.zeros(5))
    with pytest.raises(TypeError, match="rel_bias must have a float dtype"):
        FN(*tensors, 16, rel_bias=torch.zeros(5, dtype=torch.long, device=DEVICE))


def test_refuses_autograd_but_runs_under_no_grad():
    tensors, arrays = _inputs(19, (1,), 32, 16, 16)
    tensors[4].requires_grad_(True)
    with pytest.raises(ValueError, match="no backward"):
        FN(*tensors, 16)
    with torch.no_grad():
        out = FN(*tensors, 16, causal=True)
    assert not out.requires_grad
    _assert_close(out, arrays, 16, True)


# ============================================================================ split across chunks
# split=True: pass 1 writes each chunk's Kl_g^T V_g, torch sums them over chunks (cumsum causal, sum
# non-causal), pass 2 runs one program per (batch element, chunk, value block).
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("mode", ["mixed", "local", "global"])
def test_split_matches_reference_float32(causal, mode):
    # n = 50, c = 16: 4 chunks, the last one padded; batch 2 (program ids split into batch and chunk)
    tensors, arrays = _inputs(20, (2,), 50, 16, 40)
    bias_t, bias_np = _bias(21, 5)
    out = FN(*tensors, 16, causal=causal, rel_bias=bias_t, mode=mode, split=True)
    assert out.dtype == torch.float32 and out.shape == (2, 50, 40)
    _assert_close(out, arrays, 16, causal, bias_np, mode)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("n, c, block_q", [(16, 16, None), (96, 16, None), (80, 32, 16), (64, 64, 16)])
def test_split_chunk_counts_and_tiles(monkeypatch, causal, n, c, block_q):
    # 1, 6, 3 (padded) and 1 chunks; 16-row tiles inside 32- and 64-row chunks; e = 20 < one block
    if block_q is not None:
        _force_block_q(monkeypatch, block_q)
    tensors, arrays = _inputs(22 + n, (1,), n, 16, 20)
    bias_t, bias_np = _bias(23, 3)
    split = FN(*tensors, c, causal=causal, rel_bias=bias_t, split=True)
    unsplit = FN(*tensors, c, causal=causal, rel_bias=bias_t, split=False)
    _assert_close(split, arrays, c, causal, bias_np)
    _assert_close(unsplit, arrays, c, causal, bias_np)


@pytest.mark.parametrize("causal", [True, False])
def test_split_several_value_blocks_and_lead_dims(causal):
    # e = 40: two value blocks of 32 (the second one masked); leading dims (2, 2): 4 elements
    tensors, arrays = _inputs(24, (2, 2), 32, 16, 40)
    out = FN(*tensors, 16, causal=causal, split=True)
    assert out.shape == (2, 2, 32, 40)
    _assert_close(out, arrays, 16, causal)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_split_half_precision_inputs(dtype):
    tensors, arrays = _inputs(25, (2,), 40, 16, 24, dtype=dtype)
    bias_t, bias_np = _bias(26, 3)
    for causal in (True, False):
        out = FN(*tensors, 16, causal=causal, rel_bias=bias_t, split=True)
        assert out.dtype == dtype
        _assert_close(out, arrays, 16, causal, bias_np)


def test_split_causal_state_is_exclusive():
    # chunk 0 of the global part is exactly 0 (it reads no state); changing lin_k or v of chunk 2 (rows
    # 32-47) leaves rows < 48 bit-identical (the inclusive sum of chunk g - 1 excludes chunk g)
    tensors, _ = _inputs(27, (1,), 64, 16, 16)
    out = FN(*tensors, 16, causal=True, mode="global", split=True)
    assert torch.count_nonzero(out[:, :16]) == 0 and torch.count_nonzero(out[:, 16:]) > 0
    before = FN(*tensors, 16, causal=True, split=True)
    for which in (3, 4):
        changed = [x.clone() for x in tensors]
        changed[which][:, 37] += 1.0
        after = FN(*changed, 16, causal=True, split=True)
        rows = 37 if which == 4 else 48  # a value also enters the local part of its own chunk
        assert torch.equal(before[:, :rows], after[:, :rows])
        assert not torch.equal(before[:, rows:], after[:, rows:])


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("which", [2, 3, 4])
def test_split_nan_reaches_the_rows_of_the_unsplit_kernel(causal, which):
    # a NaN in lin_q, lin_k or v at t = 21 (chunk 1): the same NaN rows as the unsplit kernel (which
    # tests/core/test_nonfinite_and_edges.py holds to the reference); lin_k: causal only chunks >= 2
    tensors, _ = _inputs(28, (1,), 40, 16, 16)
    tensors[which][0, 21, 3] = float("nan")
    split = torch.isnan(FN(*tensors, 16, causal=causal, split=True))
    unsplit = torch.isnan(FN(*tensors, 16, causal=causal, split=False))
    assert split.any() and torch.equal(split, unsplit)
    if which == 3:
        rows = torch.nonzero(split[0].any(dim=-1)).flatten().tolist()
        assert rows == (list(range(32, 40)) if causal else list(range(40)))


def test_split_choice_rule():
    # unsplit grid = batch * e_blocks programs; split when that is below the SM count, with >= 2 chunks
    choose = K._choose_split
    assert choose(1, 8, 16, 132) is True  # batch 1, e = 512 in blocks of 64, H100: 8 of 132 SMs busy
    assert choose(8, 8, 16, 132) is True  # 64 programs
    assert choose(17, 8, 16, 132) is False  # 136 programs fill 132 SMs
    assert choose(16, 8, 16, 128) is False  # exactly the SM count: full
    assert choose(1, 8, 1, 132) is False  # one chunk: nothing to split
    assert choose(1, 8, 16, None) is False  # no GPU (interpreter): never
    assert K._sm_count(torch.device("cpu")) is None


class _LaunchSpy:
    """Stands in for a kernel object: records each launch's grid, then launches the real kernel."""

    def __init__(self, kernel):
        self.kernel, self.grids = kernel, []

    def __getitem__(self, grid):
        self.grids.append(grid)
        return self.kernel[grid]


def test_split_none_follows_the_sm_count(monkeypatch):
    # spies on the two split kernels (the unsplit one must stay: availability is read from it)
    tensors, arrays = _inputs(29, (2,), 48, 16, 40)  # 2 batch x 2 value blocks of 32, 3 chunks
    state, split = (_LaunchSpy(getattr(K, name)) for name in ("_chunk_state_kernel", "_mixed_chunk_split_kernel"))
    monkeypatch.setattr(K, "_chunk_state_kernel", state)
    monkeypatch.setattr(K, "_mixed_chunk_split_kernel", split)
    out = FN(*tensors, 16, causal=True)
    if DEVICE == "cpu":  # the interpreter has no SM count: unsplit
        assert state.grids == [] and split.grids == []
    _assert_close(out, arrays, 16, True)
    monkeypatch.setattr(K, "_sm_count", lambda device: 132)  # an H100: 4 programs would idle it
    out = FN(*tensors, 16, causal=True)
    assert state.grids[-1] == split.grids[-1] == (2 * 3, 2)  # (batch x chunks, value blocks)
    _assert_close(out, arrays, 16, True)
    monkeypatch.setattr(K, "_sm_count", lambda device: 4)  # 4 SMs: the unsplit grid fills them
    launched = len(split.grids)
    FN(*tensors, 16, causal=True)
    assert len(split.grids) == launched
    monkeypatch.setattr(K, "_sm_count", lambda device: 132)  # "local" split: no state pass
    launched = len(state.grids)
    FN(*tensors, 16, causal=True, mode="local")
    assert len(state.grids) == launched and split.grids[-1] == (6, 2)


def test_default_split_says_what_split_none_does(monkeypatch):
    v = torch.zeros(2, 48, 40, device=DEVICE)  # 2 batch elements x 2 value blocks of 32, 3 chunks
    monkeypatch.setattr(K, "_sm_count", lambda device: 132)
    assert K.default_split(v, 16) is True
    assert K.default_split(v, 64) is False  # one chunk
    assert K.default_split(torch.zeros(66, 48, 40, device=DEVICE), 16) is False  # 132 programs: full
    monkeypatch.setattr(K, "_sm_count", lambda device: None)  # the interpreter
    assert K.default_split(v, 16) is False
    with pytest.raises(TypeError, match="v must be a torch tensor"):
        K.default_split(np.zeros((2, 48, 40)), 16)
    with pytest.raises(ValueError, match=r"v must have shape \(\.\.\., n, e\)"):
        K.default_split(torch.zeros(40), 16)
    with pytest.raises(TypeError, match="v must have dtype float16, bfloat16 or float32"):
        K.default_split(v.double(), 16)
    with pytest.raises(ValueError, match="chunk_size must be a power of two >= 16"):
        K.default_split(v, 24)


def test_rejects_bad_split():
    tensors, _ = _inputs(30, (1,), 32, 16, 16)
    for bad in ("yes", 1, 0.0):
        with pytest.raises(TypeError, match="split must be a bool"):
            FN(*tensors, 16, split=bad)
