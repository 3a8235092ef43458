"""The PyTorch attention and FLASH ops agree with the NumPy references (chapters 6-7).

For every public function of effx_lab.attention.torch_ops and effx_lab.flash.torch_ops: same random inputs to
both backends (extra batch dimensions, lengths that chunks do not divide, causal and not, every mode),
float64 to 1e-10 and float32 with tolerances; gradients flow; bad inputs raise the reference's error type.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import pytest
import torch

from _backends import gamma, unit_roundoff

from effx_lab.attention import params as AP
from effx_lab.attention import reference as AR
from effx_lab.attention import shapes as AS
from effx_lab.attention import torch_ops as AT
from effx_lab.flash import params as FP
from effx_lab.flash import reference as FR
from effx_lab.flash import shapes as FS
from effx_lab.flash import torch_ops as FT

CAUSAL = [pytest.param(False, id="full"), pytest.param(True, id="causal")]
# float32: a tolerance derived from the longest reduction path of the functions compared here (see
# _backends.network_atol): the transformer layer (d 16, d_ff <= 32, n <= 11: two LayerNorms, Q/K/V, scores,
# softmax and A V, the output projection, the FFN, exp/GELU ulps: < 200 terms) and the causal linear attention
# (prefix sums over n <= 130 tokens of d = 4 features, and its normaliser: < 200); relative to max |want|
K_PATH_MAX = 200
TOL = {torch.float64: 1e-10, torch.float32: 2 * gamma(K_PATH_MAX, unit_roundoff(torch.float32))}
DTYPES = (torch.float64, torch.float32)  # every agreement test runs both: float64 tight, float32 derived


def _rand(shape: tuple[int, ...], seed: int, scale: float = 1.0) -> np.ndarray:
    return scale * np.random.default_rng(seed).standard_normal(shape)


def _t(a: np.ndarray, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a)).to(dtype)


def _np_for(a: np.ndarray, dtype: torch.dtype) -> np.ndarray:
    """The NumPy input the reference gets: exactly the values the torch side sees."""
    return a.astype(np.float64 if dtype == torch.float64 else np.float32)


def _tp(params: dict[str, np.ndarray], dtype: torch.dtype = torch.float64) -> dict[str, torch.Tensor]:
    return AP.to_torch(params, dtype=dtype)


def _np_params(params: dict[str, np.ndarray], dtype: torch.dtype) -> dict[str, np.ndarray]:
    return {k: _np_for(v, dtype) for k, v in params.items()}


def _perturb(params: dict[str, np.ndarray], seed: int, scale: float = 0.3) -> dict[str, np.ndarray]:
    """Move every parameter away from its initial value (zeros and ones would hide biases, offsets, gains)."""
    rng = np.random.default_rng(seed)
    return {k: v.astype(np.float64) + scale * rng.standard_normal(v.shape) for k, v in params.items()}


def _close(got: torch.Tensor, want: np.ndarray, dtype: torch.dtype, *, nontrivial: bool = True) -> None:
    assert isinstance(got, torch.Tensor)
    assert got.dtype == dtype
    assert tuple(got.shape) == want.shape
    scale = float(np.abs(want).max()) if want.size else 0.0
    if nontrivial:
        assert scale > 1e-3, "the comparison would be between two near-zero arrays"
    tol = TOL[dtype]
    np.testing.assert_allclose(got.detach().double().numpy(), want, rtol=tol, atol=tol * scale)


def _agree(
    fn_name: str, ref_mod: Any, torch_mod: Any, arrays: list[Any], *, nontrivial: bool = True, **kw: Any
) -> None:
    """Call ``fn_name`` of both backends on the same values (None passes through), in float64 and float32."""
    for dtype in DTYPES:
        np_args = [None if a is None else _np_for(a, dtype) for a in arrays]
        want = getattr(ref_mod, fn_name)(*np_args, **kw)
        got = getattr(torch_mod, fn_name)(*[None if a is None else _t(a, dtype) for a in np_args], **kw)
        _close(got, want, dtype, nontrivial=nontrivial)


def _agree_layer(
    ref_fn: Callable, torch_fn: Callable, x: np.ndarray, params: dict, *args: Any, nontrivial: bool = True
) -> None:
    """A layer ``f(x, params, *args)`` agrees in float64 and float32, output and ``output - x`` (its own part)."""
    for dtype in DTYPES:
        xn = _np_for(x, dtype)
        want = ref_fn(xn, _np_params(params, dtype), *args)
        got = torch_fn(_t(xn, dtype), _tp(params, dtype), *args)
        _close(got, want, dtype)
        _close(got - _t(xn, dtype), want - xn, dtype, nontrivial=nontrivial)


# ==========================================================================================================
# attention: agreement
# ==========================================================================================================
@pytest.mark.parametrize("n, m", [(1, None), (5, None), (4, 7), (7, 4)])
def test_causal_mask_agrees(n: int, m: int | None) -> None:
    got = AT.causal_mask(n, m)
    assert got.dtype == torch.bool
    np.testing.assert_array_equal(got.numpy(), AR.causal_mask(n, m))


@pytest.mark.parametrize("causal", CAUSAL)
@pytest.mark.parametrize("batch", [(), (3,), (2, 3)])
def test_softmax_attention_agrees(batch, causal) -> None:
    n, m = (9, 9) if causal else (9, 6)
    arrays = [_rand((*batch, n, 5), 0), _rand((*batch, m, 5), 1), _rand((*batch, m, 3), 2)]
    for scale in (None, 0.3):
        _agree("softmax_attention", AR, AT, arrays, causal=causal, scale=scale)


@pytest.mark.parametrize("causal", CAUSAL)
@pytest.mark.parametrize("batch, n_heads", [((), 1), ((3,), 4), ((2, 3), 2)])
def test_multi_head_attention_agrees(batch, n_heads, causal) -> None:
    params = _perturb(AP.init_mha_params(16, n_heads, seed=1), seed=2)
    x = _rand((*batch, 11, 16), 3)
    for dtype in DTYPES:
        xn = _np_for(x, dtype)
        want = AR.multi_head_attention(xn, _np_params(params, dtype), n_heads, causal)
        _close(AT.multi_head_attention(_t(xn, dtype), _tp(params, dtype), n_heads, causal), want, dtype)


@pytest.mark.parametrize("causal", CAUSAL)
@pytest.mark.parametrize("batch", [(), (3,), (2, 3)])
def test_transformer_layer_agrees(batch, causal) -> None:
    params = _perturb(AP.init_transformer_layer_params(16, 4, d_ff=24, seed=4), seed=5)
    _agree_layer(AR.transformer_layer, AT.transformer_layer, _rand((*batch, 10, 16), 6), params, 4, causal)


@pytest.mark.parametrize("kind", AS.FEATURE_MAPS)
def test_feature_map_agrees(kind: str) -> None:
    x = _rand((2, 3, 50), 7, scale=3.0)
    x[0, 0, :4] = [-40.0, -700.0, 0.0, 30.0]  # exp underflow, zero, large positive
    _agree("feature_map", AR, AT, [x], kind=kind)
    if kind == "elu1":
        got = AT.feature_map(_t(x))
        assert bool((got > 0).all())  # elu + 1 stays strictly positive (F.elu(x) + 1 would round exp(-40) to 0)


def _linear_inputs(batch, n, m, d=4, e=3, seed=10) -> list[np.ndarray]:
    # positive features (as phi(Q), phi(K) would be), so the normaliser is well away from zero
    return [
        AR.feature_map(_rand((*batch, n, d), seed)),
        AR.feature_map(_rand((*batch, m, d), seed + 1)),
        _rand((*batch, m, e), seed + 2),
    ]


# n: one short chunk, exactly one chunk, padded chunks (the torch version works by chunks of 64)
@pytest.mark.parametrize("batch, n", [((), 1), ((3,), 5), ((2, 3), 64), ((2,), 100), ((), 130)])
@pytest.mark.parametrize("fn", ["linear_attention", "linear_attention_quadratic"])
def test_linear_attention_causal_agrees(fn, batch, n) -> None:
    for normalize in (True, False):
        _agree(fn, AR, AT, _linear_inputs(batch, n, n), causal=True, normalize=normalize)


@pytest.mark.parametrize("batch, n, m", [((), 7, 7), ((3,), 5, 12), ((2, 3), 70, 3)])
@pytest.mark.parametrize("fn", ["linear_attention", "linear_attention_quadratic"])
def test_linear_attention_noncausal_agrees(fn, batch, n, m) -> None:
    for normalize in (True, False):
        _agree(fn, AR, AT, _linear_inputs(batch, n, m), causal=False, normalize=normalize, eps=1e-3)


def test_chunked_causal_linear_attention_equals_quadratic_order_with_gradients() -> None:
    """The chunked torch path (three chunks, padded) against the torch quadratic order, values and gradients."""
    arrays = _linear_inputs((2,), 150, 150, seed=20)
    outs, grads = [], []
    for fn in (AT.linear_attention, AT.linear_attention_quadratic):
        q, k, v = (_t(a).requires_grad_() for a in arrays)
        out = fn(q, k, v, causal=True)
        (out * torch.linspace(-1, 1, out.shape[-1], dtype=out.dtype)).sum().backward()
        outs.append(out.detach())
        grads.append([t.grad for t in (q, k, v)])
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-10, atol=1e-12)
    for g0, g1 in zip(*grads):
        torch.testing.assert_close(g0, g1, rtol=1e-9, atol=1e-12)


# ==========================================================================================================
# FLASH: agreement
# ==========================================================================================================
def test_swish_agrees() -> None:
    _agree("swish", FR, FT, [_rand((3, 4, 20), 30, scale=4.0)])


@pytest.mark.parametrize("batch", [(), (3,), (2, 3)])
def test_glu_agrees(batch) -> None:
    params = _perturb(FP.init_glu_params(12, expansion=2, seed=31), seed=32)
    _agree_layer(lambda x, p: FR.glu(x, p) + x, lambda x, p: FT.glu(x, p) + x, _rand((*batch, 6, 12), 33), params)


@pytest.mark.parametrize("batch", [(), (3,), (2, 3)])
def test_scale_offset_agrees(batch) -> None:
    _agree("scale_offset", FR, FT, [_rand((*batch, 7, 5), 34), _rand((4, 5), 35), _rand((4, 5), 36)])


@pytest.mark.parametrize("n, m, r", [(1, None, 0), (6, None, 2), (5, 9, 3), (9, 4, 20)])
def test_rel_pos_bias_agrees(n, m, r) -> None:
    for dtype in DTYPES:
        w = _np_for(_rand((2 * r + 1,), 37), dtype)
        _close(FT.rel_pos_bias(n, _t(w, dtype), m), FR.rel_pos_bias(n, w, m), dtype)


@pytest.mark.parametrize("causal", CAUSAL)
@pytest.mark.parametrize("batch", [(), (3,), (2, 3)])
def test_relu2_attention_agrees(batch, causal) -> None:
    n, m = (8, 8) if causal else (8, 5)
    q, k = _rand((*batch, n, 6), 38, 2.0), _rand((*batch, m, 6), 39, 2.0)
    for bias in (None, _rand((n, m), 40, 0.3)):
        _agree("relu2_attention", FR, FT, [q, k, bias], causal=causal)


def _layer_params(kind: str, d: int, seed: int) -> dict[str, np.ndarray]:
    init = FP.init_gau_params if kind == "gau" else FP.init_flash_params
    return _perturb(init(d, expansion=2, s=8, max_rel=3, seed=seed), seed=seed + 1)


@pytest.mark.parametrize("causal", CAUSAL)
@pytest.mark.parametrize("batch", [(), (3,), (2, 3)])
def test_gau_agrees(batch, causal) -> None:
    _agree_layer(FR.gau, FT.gau, _rand((*batch, 9, 12), 43), _layer_params("gau", 12, seed=41), causal)


@pytest.mark.parametrize("causal", CAUSAL)
@pytest.mark.parametrize("batch, n, c", [((), 12, 4), ((3,), 12, 12), ((2, 3), 12, 1)])
def test_chunk_linear_states_agrees(batch, n, c, causal) -> None:
    arrays = [_rand((*batch, n, 5), 44), _rand((*batch, n, 3), 45)]
    # causal with one chunk: no previous chunk, every state is zero
    _agree("chunk_linear_states", FR, FT, arrays, chunk_size=c, causal=causal, nontrivial=not (causal and c == n))
    got = FT.chunk_linear_states(*[_t(a) for a in arrays], c, causal)
    assert got.is_contiguous()  # a (..., G, s, e) array, as the reference's, not a broadcast view


# (n, c): divides, pads, one short chunk, c = 1
@pytest.mark.parametrize("fn", ["mixed_chunk_attention", "mixed_chunk_dense"])
@pytest.mark.parametrize("mode", FS.MODES)
@pytest.mark.parametrize("causal", CAUSAL)
@pytest.mark.parametrize("batch, n, c", [((), 16, 4), ((3,), 13, 4), ((2, 3), 5, 8), ((2,), 7, 1)])
def test_mixed_chunk_attention_agrees(batch, n, c, causal, mode, fn) -> None:
    arrays = [_rand((*batch, n, 6), 46 + i) for i in range(4)] + [_rand((*batch, n, 5), 50)]
    trivial = causal and mode == "global" and c >= n  # one causal chunk: no previous chunk, the output is zero
    for rel_bias in (None, _rand((7,), 51, 0.5)):
        for dtype in DTYPES:
            np_args = [_np_for(a, dtype) for a in arrays]
            rel_np = None if rel_bias is None else _np_for(rel_bias, dtype)
            want = getattr(FR, fn)(*np_args, c, causal=causal, rel_bias=rel_np, mode=mode)
            got = getattr(FT, fn)(
                *[_t(a, dtype) for a in np_args], c, causal=causal,
                rel_bias=None if rel_np is None else _t(rel_np, dtype), mode=mode,
            )  # fmt: skip
            _close(got, want, dtype, nontrivial=not trivial)


@pytest.mark.parametrize("causal", CAUSAL)
@pytest.mark.parametrize("n, c", [(1, 1), (12, 4), (13, 4), (5, 8), (7, 1)])
def test_mixed_chunk_masks_agree(n, c, causal) -> None:
    got, want = FT.mixed_chunk_masks(n, c, causal), FR.mixed_chunk_masks(n, c, causal)
    for g, w in zip(got, want, strict=True):
        assert g.dtype == torch.bool and g.device.type == "cpu"
        np.testing.assert_array_equal(g.numpy(), w)


def test_mixed_chunk_dense_has_gradients() -> None:
    """The dense oracle is differentiable in torch: its gradients are those of the
    chunked code (in float64)."""
    arrays = [_rand((2, 9, 3), 52 + i) for i in range(4)] + [_rand((2, 9, 4), 56)]
    rel = _rand((5,), 57)
    grads = {}
    for fn in ("mixed_chunk_attention", "mixed_chunk_dense"):
        inputs = [_t(a).requires_grad_() for a in arrays + [rel]]
        out = getattr(FT, fn)(*inputs[:5], 4, causal=True, rel_bias=inputs[5])
        out.square().sum().backward()
        grads[fn] = [t.grad for t in inputs]
    for a, b in zip(grads["mixed_chunk_attention"], grads["mixed_chunk_dense"], strict=True):
        assert float(b.abs().max()) > 1e-3
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("mode", FS.MODES)
@pytest.mark.parametrize("causal", CAUSAL)
@pytest.mark.parametrize("batch, n, c", [((), 16, 4), ((3,), 13, 4), ((2, 3), 5, 8)])
def test_flash_layer_agrees(batch, n, c, causal, mode) -> None:
    trivial = causal and mode == "global" and c >= n
    x = _rand((*batch, n, 12), 54)
    params = _layer_params("flash", 12, seed=52)
    _agree_layer(FR.flash_layer, FT.flash_layer, x, params, c, causal, mode, nontrivial=not trivial)


def test_flash_layer_with_one_causal_chunk_is_gau() -> None:
    """The reference's documented identity holds for the torch versions too (chunk = n, causal)."""
    params = _tp(_layer_params("flash", 12, seed=55))
    gau_params = dict(params, gamma=params["gamma"][:2], beta=params["beta"][:2])
    x = _t(_rand((2, 10, 12), 57))
    torch.testing.assert_close(FT.flash_layer(x, params, 10, causal=True), FT.gau(x, gau_params, causal=True))


# ==========================================================================================================
# dtypes, devices, gradients
# ==========================================================================================================
def test_bfloat16_in_bfloat16_out() -> None:
    x = _rand((2, 20, 16), 60)
    bf16 = torch.bfloat16
    fparams = _layer_params("flash", 16, seed=61)
    tparams = _perturb(AP.init_transformer_layer_params(16, 4, seed=62), 63)
    q, k, v = _linear_inputs((2,), 70, 70)
    cases = [
        (FT.flash_layer(_t(x, bf16), _tp(fparams, bf16), 8, True), FR.flash_layer(x, fparams, 8, True)),
        (AT.transformer_layer(_t(x, bf16), _tp(tparams, bf16), 4, True), AR.transformer_layer(x, tparams, 4, True)),
        (AT.linear_attention(_t(q, bf16), _t(k, bf16), _t(v, bf16), causal=True), AR.linear_attention(q, k, v, True)),
    ]
    # bfloat16 (u = 2^-8) against the float64 reference on the unrounded inputs: every operation rounds its
    # result (and the inputs and weights are rounded) to bfloat16, about 30 roundings along the longest path
    # (the transformer layer: 2 x 5 in the LayerNorms, 2 per projection with its bias, 3 in the softmax, 4 in
    # GELU, the residuals); GEMMs accumulate in float32 (negligible next to these)
    tol = gamma(30, unit_roundoff(torch.bfloat16))
    for got, want in cases:
        assert got.dtype == torch.bfloat16
        np.testing.assert_allclose(got.double().numpy(), want, rtol=0, atol=tol * np.abs(want).max())


def test_params_are_cast_to_the_dtype_of_x() -> None:
    """float32 params (what to_torch gives by default) with float64 x: float64 out, as the reference upcasts."""
    params = {k: v.astype(np.float32) for k, v in _layer_params("flash", 12, seed=64).items()}
    x = _rand((2, 9, 12), 65)
    got = FT.flash_layer(_t(x), AP.to_torch(params), 4, causal=True)
    _close(got, FR.flash_layer(x, params, 4, causal=True), torch.float64)


def _grad_case(name: str) -> tuple[Callable[..., torch.Tensor], dict[str, np.ndarray], tuple[int, ...]]:
    if name == "mha":
        params = _perturb(AP.init_mha_params(16, 4), 1)
        return (lambda x, p: AT.multi_head_attention(x, p, 4, causal=True)), params, (2, 9, 16)
    if name == "transformer":
        params = _perturb(AP.init_transformer_layer_params(16, 4, d_ff=32), 2)
        return (lambda x, p: AT.transformer_layer(x, p, 4, causal=True)), params, (2, 9, 16)
    if name == "glu":
        return FT.glu, _perturb(FP.init_glu_params(16), 3), (2, 9, 16)
    if name == "gau":
        return (lambda x, p: FT.gau(x, p, causal=True)), _layer_params("gau", 16, 4), (2, 9, 16)
    causal = name.endswith("causal")
    return (lambda x, p: FT.flash_layer(x, p, 4, causal=causal)), _layer_params("flash", 16, 5), (2, 11, 16)


@pytest.mark.parametrize("name", ["mha", "transformer", "glu", "gau", "flash-causal", "flash-full"])
def test_gradients_flow_to_x_and_every_parameter(name: str) -> None:
    fn, params, shape = _grad_case(name)
    x = _t(_rand(shape, 70), torch.float32).requires_grad_()
    p = {k: v.requires_grad_() for k, v in _tp(params, torch.float32).items()}
    out = fn(x, p)
    (out * torch.randn(out.shape, generator=torch.Generator().manual_seed(0))).sum().backward()
    for key, t in [("x", x), *p.items()]:
        assert t.grad is not None, f"no gradient reached {key}"
        assert bool(torch.isfinite(t.grad).all()), f"non-finite gradient for {key}"
        assert float(t.grad.abs().max()) > 0, f"zero gradient for {key}"


@pytest.mark.parametrize("causal", CAUSAL)
@pytest.mark.parametrize("mode", FS.MODES)
def test_flash_layer_gradcheck(causal: bool, mode: str) -> None:
    """Analytic gradients (padding, masks, exclusive cumsum) match finite differences, in float64."""
    p = _tp(_layer_params("flash", 4, seed=72))
    x = _t(_rand((1, 7, 4), 73)).requires_grad_()
    gamma = p.pop("gamma").requires_grad_()
    rel = p.pop("rel_bias").requires_grad_()
    assert torch.autograd.gradcheck(
        lambda x, gamma, rel: FT.flash_layer(x, dict(p, gamma=gamma, rel_bias=rel), 3, causal, mode),
        (x, gamma, rel),
        fast_mode=True,
    )


@pytest.mark.parametrize("causal", CAUSAL)
def test_attention_gradcheck(causal: bool) -> None:
    """Softmax attention, multi-head attention and GAU (masks filled in place) against finite differences."""
    q, k, v = (_t(_rand((2, 5, 3), 75 + i)).requires_grad_() for i in range(3))
    assert torch.autograd.gradcheck(lambda q, k, v: AT.softmax_attention(q, k, v, causal), (q, k, v), fast_mode=True)
    p = _tp(_perturb(AP.init_mha_params(4, 2), 78))
    x = _t(_rand((1, 5, 4), 79)).requires_grad_()
    wq = p.pop("wq").requires_grad_()
    mha = lambda x, wq: AT.multi_head_attention(x, dict(p, wq=wq), 2, causal)  # noqa: E731
    assert torch.autograd.gradcheck(mha, (x, wq), fast_mode=True)
    g = _tp(_layer_params("gau", 4, 80))
    assert torch.autograd.gradcheck(lambda x: FT.gau(x, g, causal), (x,), fast_mode=True)


def test_linear_attention_gradcheck_chunked() -> None:
    q, k, v = (_t(a).requires_grad_() for a in _linear_inputs((1,), 70, 70, d=2, e=2, seed=74))
    fn = lambda q, k, v: AT.linear_attention(q, k, v, causal=True)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (q, k, v), fast_mode=True)


# ==========================================================================================================
# bad inputs: the torch versions raise the reference's error type
# ==========================================================================================================
_Q = _rand((2, 6, 4), 80)
_V = _rand((2, 6, 3), 81)
_MHA = AP.init_mha_params(8, 2)
_TL = AP.init_transformer_layer_params(8, 2)
_GLU = FP.init_glu_params(8)
_GAU = FP.init_gau_params(8, s=4, max_rel=2)
_FLASH = FP.init_flash_params(8, s=4, max_rel=2)
_X = _rand((2, 6, 8), 82)


def _without(params: dict, key: str) -> dict:
    return {k: v for k, v in params.items() if k != key}


def _as_int(a: Any) -> Any:
    return a.astype(np.int64) if isinstance(a, np.ndarray) else a.long()


def _bad_cases() -> list[Any]:
    """(id, (reference, torch_ops), call(mod, arr, params), error type): ``arr`` converts an array to the
    backend, ``params`` a parameter dict."""
    A, F = (AR, AT), (FR, FT)
    cases = [
        # attention
        ("mask-n0", A, lambda M, a, P: M.causal_mask(0), ValueError),
        ("mask-float", A, lambda M, a, P: M.causal_mask(2.5), TypeError),
        ("sm-1d-q", A, lambda M, a, P: M.softmax_attention(a(_Q[0, 0]), a(_Q), a(_V)), ValueError),
        ("sm-d-mismatch", A, lambda M, a, P: M.softmax_attention(a(_Q), a(_V), a(_V)), ValueError),
        ("sm-causal-n", A, lambda M, a, P: M.softmax_attention(a(_Q[:, :3]), a(_Q), a(_V), causal=True), ValueError),
        ("sm-causal-int", A, lambda M, a, P: M.softmax_attention(a(_Q), a(_Q), a(_V), causal=1), TypeError),
        ("sm-scale-neg", A, lambda M, a, P: M.softmax_attention(a(_Q), a(_Q), a(_V), scale=-1.0), ValueError),
        ("sm-int-q", A, lambda M, a, P: M.softmax_attention(_as_int(a(_Q)), a(_Q), a(_V)), TypeError),
        ("mha-heads", A, lambda M, a, P: M.multi_head_attention(a(_X), P(_MHA), 3), ValueError),
        ("mha-missing", A, lambda M, a, P: M.multi_head_attention(a(_X), _without(P(_MHA), "wo"), 2), ValueError),
        ("mha-shape", A, lambda M, a, P: M.multi_head_attention(a(_X[..., :4]), P(_MHA), 2), ValueError),
        ("mha-not-dict", A, lambda M, a, P: M.multi_head_attention(a(_X), [1, 2], 2), TypeError),
        ("tl-no-w1", A, lambda M, a, P: M.transformer_layer(a(_X), P(_MHA), 2), ValueError),
        ("tl-not-dict", A, lambda M, a, P: M.transformer_layer(a(_X), None, 2), TypeError),
        ("tl-w1-1d", A, lambda M, a, P: M.transformer_layer(a(_X), dict(P(_TL), w1=P(_TL)["b1"]), 2), ValueError),
        ("tl-heads-type", A, lambda M, a, P: M.transformer_layer(a(_X), P(_TL), 2.0), TypeError),
        ("fm-int", A, lambda M, a, P: M.feature_map(_as_int(a(_Q))), TypeError),
        ("fm-kind", A, lambda M, a, P: M.feature_map(a(_Q), "softmax"), ValueError),
        ("la-eps", A, lambda M, a, P: M.linear_attention(a(_Q), a(_Q), a(_V), eps=-1.0), ValueError),
        ("la-normalize", A, lambda M, a, P: M.linear_attention(a(_Q), a(_Q), a(_V), normalize="yes"), TypeError),
        ("la-v-length", A, lambda M, a, P: M.linear_attention(a(_Q), a(_Q), a(_V[:, :4]), causal=True), ValueError),
        ("laq-batch", A, lambda M, a, P: M.linear_attention_quadratic(a(_Q[:1]), a(_Q), a(_V)), ValueError),
        # FLASH
        ("swish-int", F, lambda M, a, P: M.swish(_as_int(a(_Q))), TypeError),
        ("glu-missing", F, lambda M, a, P: M.glu(a(_X), {"w_v": P(_GLU)["w_v"]}), ValueError),
        ("glu-not-dict", F, lambda M, a, P: M.glu(a(_X), (1, 2)), TypeError),
        ("glu-int-w_u", F, lambda M, a, P: M.glu(a(_X), dict(P(_GLU), w_u=_as_int(P(_GLU)["w_u"]))), TypeError),
        ("glu-shape", F, lambda M, a, P: M.glu(a(_X[..., :4]), P(_GLU)), ValueError),
        ("so-gamma-1d", F, lambda M, a, P: M.scale_offset(a(_Q), a(_Q[0, 0]), a(_Q[0])), ValueError),
        ("so-s", F, lambda M, a, P: M.scale_offset(a(_Q), a(_V[0]), a(_V[0])), ValueError),
        ("rpb-even", F, lambda M, a, P: M.rel_pos_bias(4, a(_Q[0, 0])), ValueError),
        ("rpb-n", F, lambda M, a, P: M.rel_pos_bias(-1, a(_Q[0, 0, :3])), ValueError),
        ("r2-bias-shape", F, lambda M, a, P: M.relu2_attention(a(_Q), a(_Q), a(_Q[0])), ValueError),
        ("r2-causal", F, lambda M, a, P: M.relu2_attention(a(_Q[:, :2]), a(_Q), causal=True), ValueError),
        ("gau-flash-params", F, lambda M, a, P: M.gau(a(_X), P(_FLASH)), ValueError),
        ("gau-causal", F, lambda M, a, P: M.gau(a(_X), P(_GAU), causal=None), TypeError),
        ("gau-x-1d", F, lambda M, a, P: M.gau(a(_X[0, 0]), P(_GAU)), ValueError),
        ("cls-divide", F, lambda M, a, P: M.chunk_linear_states(a(_Q), a(_V), 4), ValueError),
        ("cls-shape", F, lambda M, a, P: M.chunk_linear_states(a(_Q), a(_V[:, :3]), 3), ValueError),
        ("mca-mode", F, lambda M, a, P: M.mixed_chunk_attention(*[a(_Q)] * 4, a(_V), 2, mode="both"), ValueError),
        ("mca-chunk0", F, lambda M, a, P: M.mixed_chunk_attention(a(_Q), a(_Q), a(_Q), a(_Q), a(_V), 0), ValueError),
        ("mca-shape", F, lambda M, a, P: M.mixed_chunk_attention(a(_Q), a(_V), a(_Q), a(_Q), a(_V), 2), ValueError),
        ("mca-rel-even", F, lambda M, a, P: M.mixed_chunk_attention(*[a(_Q)] * 4, a(_V), 2, rel_bias=a(_V[0, 0, :2])),
         ValueError),
        ("mca-r2d", F, lambda M, a, P: M.mixed_chunk_attention(*[a(_Q)] * 4, a(_V), 2, rel_bias=a(_V[0])), ValueError),
        ("mca-v", F, lambda M, a, P: M.mixed_chunk_attention(a(_Q), a(_Q), a(_Q), a(_Q), a(_V[:, :5]), 2), ValueError),
        ("mcd-mode", F, lambda M, a, P: M.mixed_chunk_dense(*[a(_Q)] * 4, a(_V), 2, mode="both"), ValueError),
        ("mcd-chunk-type", F, lambda M, a, P: M.mixed_chunk_dense(*[a(_Q)] * 4, a(_V), 2.0), TypeError),
        ("mcd-v", F, lambda M, a, P: M.mixed_chunk_dense(*[a(_Q)] * 4, a(_V[:, :5]), 2), ValueError),
        ("mcd-rel-even", F, lambda M, a, P: M.mixed_chunk_dense(*[a(_Q)] * 4, a(_V), 2, rel_bias=a(_V[0, 0, :2])),
         ValueError),
        ("mcm-n0", F, lambda M, a, P: M.mixed_chunk_masks(0, 2), ValueError),
        ("mcm-chunk-float", F, lambda M, a, P: M.mixed_chunk_masks(4, 2.0), TypeError),
        ("mcm-causal", F, lambda M, a, P: M.mixed_chunk_masks(4, 2, causal=1), TypeError),
        ("fl-gau-params", F, lambda M, a, P: M.flash_layer(a(_X), P(_GAU), 2), ValueError),
        ("fl-chunk-type", F, lambda M, a, P: M.flash_layer(a(_X), P(_FLASH), 2.0), TypeError),
        ("fl-mode", F, lambda M, a, P: M.flash_layer(a(_X), P(_FLASH), 2, mode="quad"), ValueError),
        ("fl-causal", F, lambda M, a, P: M.flash_layer(a(_X), P(_FLASH), 2, causal="no"), TypeError),
        ("fl-gamma1", F, lambda M, a, P: M.flash_layer(a(_X), dict(P(_FLASH), gamma=P(_FLASH)["b_o"]), 2), ValueError),
        ("fl-missing", F, lambda M, a, P: M.flash_layer(a(_X), _without(P(_FLASH), "ln_g"), 2), ValueError),
        ("fl-beta", F, lambda M, a, P: M.flash_layer(a(_X), dict(P(_FLASH), beta=P(_GAU)["beta"]), 2), ValueError),
    ]
    return [pytest.param(mods, fn, err, id=name) for name, mods, fn, err in cases]


@pytest.mark.parametrize("modules, call, error", _bad_cases())
def test_bad_input_raises_the_reference_error(modules: tuple[Any, Any], call: Callable[..., Any], error: type) -> None:
    ref_mod, torch_mod = modules
    with pytest.raises(error) as ref_info:
        call(ref_mod, lambda a: a, lambda p: p)
    with pytest.raises(error) as torch_info:
        call(torch_mod, _t, _tp)
    assert type(torch_info.value) is type(ref_info.value)
    # the same complaint (what follows "got" describes the value, which names NumPy or torch types)
    assert str(torch_info.value).split(" got ")[0] == str(ref_info.value).split(" got ")[0]


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda: AT.softmax_attention(_Q, _t(_Q), _t(_V)), id="softmax-q"),
        pytest.param(lambda: AT.linear_attention(_t(_Q), _t(_Q), _V), id="linear-v"),
        pytest.param(lambda: AT.feature_map(_Q), id="feature_map"),
        pytest.param(lambda: AT.multi_head_attention(_X, _tp(_MHA), 2), id="mha-x"),
        pytest.param(lambda: AT.transformer_layer(_t(_X), _TL, 2), id="tl-params"),
        pytest.param(lambda: FT.swish(_Q), id="swish"),
        pytest.param(lambda: FT.glu(_t(_X), _GLU), id="glu-params"),
        pytest.param(lambda: FT.rel_pos_bias(3, np.zeros(3)), id="rpb"),
        pytest.param(lambda: FT.relu2_attention(_t(_Q), _t(_Q), np.zeros((6, 6))), id="relu2-bias"),
        pytest.param(lambda: FT.chunk_linear_states(_Q, _t(_V), 2), id="cls"),
        pytest.param(lambda: FT.mixed_chunk_attention(*[_t(_Q)] * 4, _t(_V), 2, rel_bias=np.zeros(3)), id="mca-rel"),
        pytest.param(lambda: FT.mixed_chunk_dense(*[_t(_Q)] * 4, _V, 2), id="mcd-v"),
        pytest.param(lambda: FT.mixed_chunk_dense(*[_t(_Q)] * 4, _t(_V), 2, rel_bias=np.zeros(3)), id="mcd-rel"),
        pytest.param(lambda: FT.flash_layer(_X, _tp(_FLASH), 2), id="flash-x"),
        pytest.param(lambda: FT.gau(_t(_X), dict(_tp(_GAU), w_o=_GAU["w_o"])), id="gau-one-numpy-param"),
    ],
)
def test_torch_ops_reject_numpy_arrays(call: Callable[[], Any]) -> None:
    with pytest.raises(TypeError, match="torch tensor"):
        call()


def test_mixed_dtypes_of_activations_are_rejected() -> None:
    with pytest.raises(TypeError, match="k must have the dtype of q"):
        AT.softmax_attention(_t(_Q), _t(_Q, torch.float32), _t(_V))
    with pytest.raises(TypeError, match="v must have the dtype of quad_q"):
        FT.mixed_chunk_attention(*[_t(_Q)] * 4, _t(_V, torch.float32), 2)
    with pytest.raises(TypeError, match="v must have the dtype of quad_q"):
        FT.mixed_chunk_dense(*[_t(_Q)] * 4, _t(_V, torch.float32), 2)
    with pytest.raises(TypeError, match="v must have the dtype of lin_k"):
        FT.chunk_linear_states(_t(_Q), _t(_V, torch.float32), 2)
