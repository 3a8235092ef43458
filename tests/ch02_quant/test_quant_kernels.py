"""Tests of effx_lab.quant.kernels (chapter 2): the Triton quantization kernels vs NumPy / torch references.

Without a GPU the kernels run in Triton's CPU interpreter (``import effx_lab`` switches it on), so sizes are
small (M <= 40, N <= 72, K <= 1200 except one long-row case). Integers are compared exactly against
``effx_lab.quant.reference`` (per-row / per-group symmetric quantization, round half to even); matmuls
against float64 products of the same integers. One test compiles kernels for sm_75/sm_80 with the ptxas
shipped with Triton (no GPU needed).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from _backends import abs_matmul, assert_within, gamma, unit_roundoff

import effx_lab  # noqa: F401  (first: sets TRITON_INTERPRET=1 when there is no GPU)

pytest.importorskip("triton", exc_type=ImportError)

from effx_lab.quant import kernels as K
from effx_lab.quant import reference as R
from effx_lab.quant import torch_ops as T

try:  # B's int4 / int8 weight-only storage (pack_int4, quantize_weight_int4, w4a16_linear, ...)
    from effx_lab.quant import _torch_gptq as B
except ImportError:  # pragma: no cover - present in the package
    B = None

if not K.available():  # pragma: no cover - depends on the machine
    pytest.skip(f"Triton kernels unavailable: {K.why_unavailable()}", allow_module_level=True)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randn(seed: int, *shape: int, dtype=torch.float32, scale: float = 1.0) -> torch.Tensor:
    return (scale * torch.randn(*shape, generator=_gen(seed), dtype=torch.float64)).to(dtype).to(DEVICE)


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


def _pack_int4_spec(q: torch.Tensor) -> torch.Tensor:
    """The format of the package plan, written out: byte i = (q[2i] + 8) | ((q[2i+1] + 8) << 4)."""
    u = (q.to(torch.int16) + 8).to(torch.uint8)
    return u[..., 0::2] | (u[..., 1::2] << 4)


def _pack_int4(q: torch.Tensor) -> torch.Tensor:
    """B's ``pack_int4`` (the package's packer) when present, else the written-out format."""
    return B.pack_int4(q) if B is not None else _pack_int4_spec(q)


U32 = unit_roundoff(torch.float32)


def _matmul_bound(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype) -> np.ndarray:
    """Derived bound on ``|y - (x @ w^T + bias)|`` for a weight-only kernel (or the torch path) run in ``dtype``,
    where ``x``, ``w``, ``bias`` hold the exact values multiplied (x already in ``dtype``, w dequantized, float64).

    The K products are summed in float32 (tl.dot's accumulator; PyTorch's CPU GEMMs for 16-bit inputs), in any
    order: gamma_K at float32's u; every term also meets up to 3 more float32 roundings (the per-group scale, the
    sum over tiles, the bias add) and up to 2 roundings to ``dtype`` (a weight scaled per element and rounded to
    the dot dtype, the output): ``(2 u_dtype + gamma_{K+3}(u32)) (|x| @ |w|^T + |bias|)``."""
    k = x.shape[-1]
    mag = abs_matmul(x.reshape(-1, k), w.T).reshape(*x.shape[:-1], w.shape[0])
    if bias is not None:
        mag = mag + np.abs(bias.detach().cpu().double().numpy())
    return (2 * unit_roundoff(dtype) + gamma(k + 3, U32)) * mag


def _epilogue_bound(acc: torch.Tensor, sa, sb, bias, out_dtype: torch.dtype) -> np.ndarray:
    """Derived bound for int8_gemm's epilogue ``acc * sa[:, None] * sb[None, :] + bias`` (the int32 ``acc`` is
    exact, and exact in float32 below 2^24): two float32 products and the bias add (3 u32), then one rounding
    to ``out_dtype`` (u_out, of the already rounded value: the cross term too); relative to
    ``|acc sa sb| + |bias|``."""
    mag = np.abs(acc.double().cpu().numpy())
    if sa is not None:
        mag = mag * np.abs(sa.double().cpu().numpy())[:, None] * np.abs(sb.double().cpu().numpy())[None, :]
    if bias is not None:
        mag = mag + np.abs(bias.double().cpu().numpy())
    u_out = unit_roundoff(out_dtype)
    return (3 * U32 * (1 + u_out) + u_out) * mag


# ============================================================================ per-row quantization
ROW_SHAPES = [(1, 1), (5, 7), (37, 100), (3, 4, 33), (2, 5000)]  # (2, 5000): rows longer than one tile


@pytest.mark.parametrize("shape", ROW_SHAPES, ids=str)
@pytest.mark.parametrize("bits", [8, 4, 2])
def test_quantize_rows_matches_reference(shape, bits):
    for dtype in (torch.float32, torch.float16):
        x = _randn(sum(shape) + bits, *shape, dtype=dtype, scale=3.0)
        q, scale = K.quantize_rows(x, bits=bits)
        assert q.dtype == torch.int8 and q.shape == x.shape
        assert scale.dtype == torch.float32 and scale.shape == x.shape[:-1]
        x2 = _np(x).reshape(-1, shape[-1])  # the reference's per-row scheme is "channel" along axis 0 of 2-D
        qp = R.compute_qparams(x2, bits, True, "channel", axis=0)
        np.testing.assert_array_equal(_np(q).reshape(x2.shape), R.quantize(x2, qp))
        np.testing.assert_array_equal(_np(scale).reshape(-1), qp.scale[:, 0])


def test_quantize_rows_bfloat16_matches_torch_ops():
    x = _randn(1, 9, 40, dtype=torch.bfloat16, scale=5.0)
    q, scale = K.quantize_rows(x)
    qp = T.compute_qparams(x, 8, True, "channel", axis=0)  # upcasts bfloat16 to float32, as the kernel
    assert torch.equal(q, T.quantize(x, qp)) and torch.equal(scale, qp.scale[:, 0])


@pytest.mark.parametrize("bits", [8, 4])
def test_rounding_ties_go_to_even(bits):
    # the first element fixes scale = max|x| / qmax = 1 exactly, so x / scale = x and every tie is exact
    qmax = 2 ** (bits - 1) - 1
    ties = [0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 3.5, -3.5, qmax - 0.5]
    near = [0.4999999, 0.5000001, -2.5000002, 2.4999998]
    x = torch.tensor([[float(qmax), *ties, *near]], dtype=torch.float32, device=DEVICE)
    q, scale = K.quantize_rows(x, bits=bits)
    assert float(scale[0]) == 1.0
    expected = [qmax, 0, 2, 2, 0, -2, -2, 4, -4, qmax - 1 if qmax % 2 else qmax, 0, 1, -3, 2]
    assert _np(q)[0].tolist() == expected
    np.testing.assert_array_equal(_np(q)[0], np.clip(np.round(_np(x)[0]), -qmax, qmax))  # np.round: half even
    # the same ties in float16 (exactly representable), and scaled by a power of two (still exact)
    x16 = (x[:, : 1 + len(ties)] * 0.25).half()
    assert _np(K.quantize_rows(x16, bits=bits)[0])[0].tolist() == expected[: 1 + len(ties)]


def test_zero_rows_get_scale_one_and_grid_is_full():
    x = _randn(2, 6, 30, scale=2.0)
    x[1] = 0.0
    x[4, :] = 0.0
    x[4, 7] = -1e-30  # tiny but nonzero: its own scale, q = -127 there
    q, scale = K.quantize_rows(x)
    assert float(scale[1]) == 1.0 and torch.count_nonzero(q[1]) == 0
    assert int(q[4, 7]) == -127 and torch.count_nonzero(q[4]) == 1
    nonzero = [i for i in range(6) if i != 1]
    assert (q[nonzero].abs().amax(dim=1) == 127).all()  # the row's absmax lands on +-qmax
    assert int(q.abs().max()) <= 127  # restricted range: -128 is never produced


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_dequantize_rows(dtype):
    x = _randn(3, 11, 50, scale=4.0)
    q, scale = K.quantize_rows(x)
    out = K.dequantize_rows(q, scale, dtype)
    assert out.dtype == dtype and out.shape == x.shape
    exact = q.float() * scale[:, None]  # float32 product, rounded once to dtype
    assert torch.equal(out, exact.to(dtype))
    qp = R.compute_qparams(_np(x), 8, True, "channel", axis=0)
    if dtype == torch.float32:
        np.testing.assert_array_equal(_np(out), R.dequantize(_np(q), qp))
    # round trip: at most half a step per element, plus the float32 rounding of q * scale (<= 127 u steps,
    # u = 2^-24: below 1e-5) and of the subtraction
    err = (K.dequantize_rows(q, scale) - x).abs()
    assert bool((err <= scale[:, None] * (0.5 + 1e-5)).all())


def test_leading_dims_are_rows():
    x = _randn(4, 2, 3, 24)
    q, scale = K.quantize_rows(x, bits=4)
    q2, scale2 = K.quantize_rows(x.reshape(6, 24), bits=4)
    assert torch.equal(q.reshape(6, 24), q2) and torch.equal(scale.reshape(6), scale2)
    assert torch.equal(K.dequantize_rows(q, scale), K.dequantize_rows(q2, scale2).reshape(2, 3, 24))


# ============================================================================ per-group quantization
@pytest.mark.parametrize("shape, group_size", [((5, 48), 1), ((5, 48), 3), ((7, 96), 16), ((3, 96), 32), ((4, 40), 40)])
@pytest.mark.parametrize("bits", [8, 4])
def test_quantize_groups_matches_reference(shape, group_size, bits):
    x = _randn(group_size + bits, *shape, scale=2.0)
    x[1, :group_size] = 0.0  # an all-zero group
    q, scales = K.quantize_groups(x, group_size, bits=bits)
    assert q.dtype == torch.int8 and scales.shape == (shape[0], shape[1] // group_size)
    qp = R.compute_qparams(_np(x), bits, True, "group", axis=-1, group_size=group_size)
    np.testing.assert_array_equal(_np(q), R.quantize(_np(x), qp))
    np.testing.assert_array_equal(_np(scales), qp.scale)
    assert float(scales[1, 0]) == 1.0
    np.testing.assert_array_equal(_np(K.dequantize_groups(q, scales)), R.dequantize(_np(q), qp))


def test_groups_of_a_whole_row_are_rows_and_leading_dims():
    x = _randn(5, 2, 3, 64, dtype=torch.float16)
    qg, sg = K.quantize_groups(x, 64)
    qr, sr = K.quantize_rows(x)
    assert torch.equal(qg, qr) and torch.equal(sg[..., 0], sr) and sg.shape == (2, 3, 1)
    q, s = K.quantize_groups(x, 16)
    assert s.shape == (2, 3, 4)
    out = K.dequantize_groups(q, s, torch.float16)
    assert out.dtype == torch.float16
    assert torch.equal(out, (q.float() * s.repeat_interleave(16, dim=-1)).half())
    # a group's absmax is at most its row's: finer groups have finer (or equal) steps, and every element is
    # within half a step of its group's grid
    assert bool((s <= sr[..., None]).all()) and bool((s < sr[..., None]).any())
    err = (K.dequantize_groups(q, s) - x.float()).abs()
    assert bool((err <= s.repeat_interleave(16, dim=-1) * (0.5 + 1e-5)).all())


# ============================================================================ int8 GEMM
@pytest.mark.parametrize("m, n, k", [(1, 1, 1), (17, 45, 70), (33, 20, 128), (64, 72, 129)])
def test_int8_gemm_accumulates_exactly(m, n, k):
    a = torch.randint(-128, 128, (m, k), generator=_gen(m), dtype=torch.int8).to(DEVICE)
    b = torch.randint(-128, 128, (n, k), generator=_gen(n + 1), dtype=torch.int8).to(DEVICE)
    out = K.int8_gemm(a, b, None, None, out_dtype=torch.int32)
    assert out.dtype == torch.int32 and out.shape == (m, n)
    np.testing.assert_array_equal(_np(out), _np(a).astype(np.int64) @ _np(b).astype(np.int64).T)


def test_int8_gemm_int32_beats_float32_accumulation():
    # sums above 2^24 with odd values: float32 cannot hold them, the int32 accumulator does
    k = 1200
    a = torch.full((16, k), 127, dtype=torch.int8, device=DEVICE)
    b = torch.randint(101, 128, (16, k), generator=_gen(7), dtype=torch.int8).to(DEVICE)
    exact = _np(a).astype(np.int64) @ _np(b).astype(np.int64).T
    assert exact.min() > 2**24 and (exact % 2 == 1).any()
    out = K.int8_gemm(a, b, None, None, out_dtype=torch.int32)
    np.testing.assert_array_equal(_np(out), exact)
    as_float32 = exact.astype(np.float32).astype(np.int64)
    assert (as_float32 != exact).any()


@pytest.mark.parametrize("out_dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("with_bias", [False, True])
def test_int8_gemm_epilogue(out_dtype, with_bias):
    m, n, k = 19, 37, 96
    a = torch.randint(-127, 128, (m, k), generator=_gen(1), dtype=torch.int8).to(DEVICE)
    b = torch.randint(-127, 128, (n, k), generator=_gen(2), dtype=torch.int8).to(DEVICE)
    sa = torch.rand(m, generator=_gen(3)).to(DEVICE) * 0.01
    sb = torch.rand(n, generator=_gen(4)).to(DEVICE) * 0.01
    bias = _randn(5, n) if with_bias else None
    out = K.int8_gemm(a, b, sa, sb, bias=bias, out_dtype=out_dtype)
    assert out.dtype == out_dtype
    acc = a.double() @ b.double().T  # exact
    ref = acc * sa.double()[:, None] * sb.double()[None, :]
    if with_bias:
        ref = ref + bias.double()
    bound = _epilogue_bound(acc, sa, sb, bias, out_dtype)
    assert_within(out, ref, bound, "int8_gemm")
    # the torch fallback (used on GPUs below sm_80) computes the same thing (each within the bound of ref)
    assert_within(K._int8_gemm_torch(a, b, sa, sb, bias, out_dtype), out, 2 * bound, "fallback vs kernel")
    # scales in another float dtype are used in float32 (sb rounded to float16 first: u16 more on the product)
    got = K.int8_gemm(a, b, sa.double(), sb.half().float(), bias, out_dtype)
    prod = np.abs((acc * sa.double()[:, None] * sb.double()[None, :]).cpu().numpy())
    assert_within(got, ref, bound + unit_roundoff(torch.float16) * prod, "float64 scales")


def test_w8a8_pipeline_approximates_the_float_matmul():
    # LLM.int8 vector-wise: per-token rows of x, per-output-channel rows of w, int8 GEMM, scale epilogue
    x, w, bias = _randn(10, 24, 64), _randn(11, 40, 64, scale=0.1), _randn(12, 40)
    xq, sx = K.quantize_rows(x)
    wq, sw = K.quantize_rows(w)
    y = K.int8_gemm(xq, wq, sx, sw, bias)
    ref = x.double() @ w.double().T + bias.double()
    rel = float((y.double() - ref).norm() / ref.norm())
    assert rel < 0.01
    # and it is the dequantized operands multiplied in float64, up to float32 rounding: the epilogue's bound,
    # plus the two roundings of dequantize_rows (q * s in float32) on every term
    xd, wd = K.dequantize_rows(xq, sx).double(), K.dequantize_rows(wq, sw).double()
    deq = xd @ wd.T + bias.double()
    bound = _epilogue_bound(xq.double() @ wq.double().T, sx, sw, bias, torch.float32) + 2 * U32 * abs_matmul(xd, wd.T)
    assert_within(y, deq, bound, "w8a8 pipeline")


def test_int8_backend_decision():
    assert K._int8_backend("cuda", (7, 5), False) == "torch"  # T4: int8 tl.dot does not compile
    assert K._int8_backend("cuda", (7, 5), True) == "torch"
    assert K._int8_backend("cuda", (8, 0), False) == "triton"
    assert K._int8_backend("cuda", (9, 0), False) == "triton"
    assert K._int8_backend("cpu", None, True) == "interpreter"
    assert K._int8_backend("cpu", None, False) == "torch"
    expected = "interpreter" if K._kernel_is_interpreted() else "triton"
    assert K.int8_gemm_backend(DEVICE) in (expected, "torch")
    if DEVICE == "cpu":
        assert K.int8_gemm_backend("cpu") == "interpreter"


def test_int8_backend_reason_names_the_gate():
    # a T4 (sm_75) is not dropped silently: the reason names the capability, what Triton needs and the path taken
    t4 = K._int8_backend_reason("cuda", (7, 5), False)
    assert "sm_80+" in t4 and "sm_75" in t4 and "torch._int_mm" in t4
    assert K._int8_backend_reason("cuda", (7, 0), True) == t4.replace("sm_75", "sm_70")
    assert "sm_80" in K._int8_backend_reason("cuda", (8, 0), False) and "needs" not in K._int8_backend_reason(
        "cuda", (8, 0), False
    )
    assert "sm_90" in K._int8_backend_reason("cuda", (9, 0), False)
    assert "interpreter" in K._int8_backend_reason("cpu", None, True)
    assert "cpu tensors" in K._int8_backend_reason("cpu", None, False)
    assert isinstance(K.int8_gemm_backend_reason(DEVICE), str)


def test_int8_gemm_takes_the_torch_path_when_gated(monkeypatch):
    a = torch.randint(-127, 128, (5, 40), generator=_gen(8), dtype=torch.int8).to(DEVICE)
    b = torch.randint(-127, 128, (6, 40), generator=_gen(9), dtype=torch.int8).to(DEVICE)
    sa, sb = torch.rand(5, device=DEVICE), torch.rand(6, device=DEVICE)
    calls = []
    fallback = K._int8_gemm_torch

    def spy(*args):
        calls.append(args)
        return fallback(*args)

    monkeypatch.setattr(K, "int8_gemm_backend", lambda device=None: "torch")
    monkeypatch.setattr(K, "_int8_gemm_torch", spy)
    out = K.int8_gemm(a, b, sa, sb)
    assert len(calls) == 1
    acc = a.double() @ b.double().T
    ref = acc * sa.double()[:, None] * sb.double()[None, :]
    assert_within(out, ref, _epilogue_bound(acc, sa, sb, None, torch.float32), "torch path")
    exact = K.int8_gemm(a, b, None, None, out_dtype=torch.int32)
    assert len(calls) == 2 and torch.equal(exact.cpu(), (a.long() @ b.long().T).int().cpu())


# ============================================================================ weight-only matmuls
def _int4_weight(seed: int, n: int, k: int, group_size: int):
    q = torch.randint(-8, 8, (n, k), generator=_gen(seed), dtype=torch.int8)
    scales = torch.rand(n, k // group_size, generator=_gen(seed + 1)) * 0.1 + 0.01
    w = q.double() * scales.double().repeat_interleave(group_size, dim=1)
    return _pack_int4(q).to(DEVICE), scales.to(DEVICE), w.to(DEVICE)


W4_CASES = [
    # (M, N, K, group_size): decode (M = 1) and prefill-sized M > 16; groups >= 16 (scale per tile, with and
    # without a K tail) and small or odd groups (scale per weight); one group per row; N not a block multiple
    (1, 40, 96, 32),
    (1, 70, 256, 128),
    (3, 33, 96, 6),
    (1, 9, 10, 2),
    (20, 45, 160, 16),
    (20, 24, 72, 24),
    (2, 17, 40, 40),
]


@pytest.mark.parametrize("m, n, k, group_size", W4_CASES, ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_w4a16_matches_float64(m, n, k, group_size, dtype):
    packed, scales, w = _int4_weight(m * n + k, n, k, group_size)
    x = _randn(k + group_size, m, k, dtype=dtype)
    bias = _randn(n, n)
    for b in (None, bias):
        y = K.w4a16_matmul(x, packed, scales, group_size, bias=b)
        assert y.dtype == dtype and y.shape == (m, n)
        ref = x.double() @ w.T + (0.0 if b is None else b.double())
        assert_within(y, ref, _matmul_bound(x.double(), w, b, dtype), "w4a16")


def test_w4a16_nibble_order():
    # one nonzero weight per output row: row 0 reads k = 5 (odd: high nibble), row 1 reads k = 4 (low nibble)
    q = torch.zeros(2, 8, dtype=torch.int8)
    q[0, 5], q[1, 4] = 7, -8
    packed = _pack_int4(q)  # (B's packer when present: this also checks its byte layout)
    assert packed[0].tolist() == [0x88, 0x88, 0xF8, 0x88] and packed[1].tolist() == [0x88, 0x88, 0x80, 0x88]
    x = _randn(13, 3, 8)
    y = K.w4a16_matmul(x, packed.to(DEVICE), torch.ones(2, 1, device=DEVICE), 8)
    assert torch.equal(y[:, 0], 7 * x[:, 5]) and torch.equal(y[:, 1], -8 * x[:, 4])


@pytest.mark.skipif(B is None, reason="effx_lab.quant._torch_gptq not available")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_w4a16_agrees_with_torch_weight_only(dtype):
    w = _randn(20, 48, 128, scale=0.05)
    packed, scales = B.quantize_weight_int4(w, group_size=32)
    codes = torch.randint(-8, 8, (5, 12), generator=_gen(23), dtype=torch.int8)
    assert torch.equal(B.pack_int4(codes), _pack_int4_spec(codes))  # B's format is the one the kernel reads
    assert torch.equal(B.unpack_int4(B.pack_int4(codes)), codes)
    x, bias = _randn(21, 2, 5, 128, dtype=dtype), _randn(22, 48)
    y = K.w4a16_matmul(x, packed, scales, 32, bias=bias)
    assert y.shape == (2, 5, 48)
    # both are within the derived bound of the exact product (the torch path also rounds the scales and the
    # dequantized weights to x's dtype, and the bias: twice _matmul_bound covers it), so within twice of each other
    w4 = B.unpack_int4(packed).double().cpu() * scales.double().cpu().repeat_interleave(32, dim=1)
    bound4 = _matmul_bound(x.double(), w4, bias, dtype)
    assert_within(y, B.w4a16_linear(x, packed, scales, 32, b=bias), 4 * bound4, "w4a16 kernel vs torch")
    q8, s8 = B.quantize_weight_int8(w)
    w8 = q8.double().cpu() * s8.double().cpu()[:, None]
    bound8 = _matmul_bound(x.double(), w8, bias, dtype)
    assert_within(K.w8a16_matmul(x, q8, s8, bias), B.w8a16_linear(x, q8, s8, b=bias), 4 * bound8, "w8a16 vs torch")


@pytest.mark.parametrize("m, n, k", [(1, 40, 128), (1, 33, 100), (24, 70, 64), (5, 3, 1)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_w8a16_matches_float64(m, n, k, dtype):
    q = torch.randint(-127, 128, (n, k), generator=_gen(n + k), dtype=torch.int8).to(DEVICE)
    scales = (torch.rand(n, generator=_gen(m)) * 0.01 + 1e-3).to(DEVICE)
    x = _randn(m + n, m, k, dtype=dtype)
    bias = _randn(k, n)
    for b in (None, bias):
        y = K.w8a16_matmul(x, q, scales, bias=b)
        assert y.dtype == dtype and y.shape == (m, n)
        ref = (x.double() @ q.double().T) * scales.double() + (0.0 if b is None else b.double())
        assert_within(y, ref, _matmul_bound(x.double(), q.double() * scales.double()[:, None], b, dtype), "w8a16")


def test_non_contiguous_inputs():
    x = _randn(30, 16, 6).T  # (6, 16), not contiguous
    assert not x.is_contiguous()
    q, s = K.quantize_rows(x)
    q2, s2 = K.quantize_rows(x.contiguous())
    assert torch.equal(q, q2) and torch.equal(s, s2)
    packed, scales, w = _int4_weight(31, 12, 16, 8)
    x64 = x.double()
    assert_within(K.w4a16_matmul(x, packed, scales, 8), x64 @ w.T, _matmul_bound(x64, w, None, x.dtype), "w4a16")
    wq = torch.randint(-127, 128, (16, 12), generator=_gen(32), dtype=torch.int8).to(DEVICE).T  # (12, 16) view
    bound = _matmul_bound(x64, wq.double(), None, x.dtype)
    assert_within(K.w8a16_matmul(x, wq, torch.ones(12, device=DEVICE)), x64 @ wq.double().T, bound, "w8a16")
    # no scales: the exact int32 accumulator, stored as float32 (|acc| <= 16 * 127^2 < 2^24: exact)
    assert torch.equal(K.int8_gemm(q, wq, None, None).cpu(), (q.long() @ wq.long().T).float().cpu())


def test_empty_row_counts():
    x = torch.zeros(0, 16, device=DEVICE)
    q, s = K.quantize_rows(x)
    assert q.shape == (0, 16) and s.shape == (0,)
    assert K.dequantize_rows(q, s).shape == (0, 16)
    assert K.quantize_groups(x, 8)[1].shape == (0, 2)
    packed, scales, _ = _int4_weight(40, 4, 16, 8)
    assert K.w4a16_matmul(x, packed, scales, 8).shape == (0, 4)
    wq = torch.zeros(4, 16, dtype=torch.int8, device=DEVICE)
    assert K.w8a16_matmul(x, wq, torch.ones(4, device=DEVICE)).shape == (0, 4)
    assert K.int8_gemm(q, wq, None, None).shape == (0, 4)


# ============================================================================ configs, compilation
def test_launch_configs_fit_tl_dot_and_groups():
    for m in (1, 16, 17, 4096):
        for dtype in K.FLOAT_DTYPES:
            for g, n_groups in ((4096, 1), (128, 32), (32, 128), (16, 256), (24, 10), (8, 512), (2, 2048), (96, 4)):
                bm, bn, bk, per_tile, warps = K._weight_only_config(m, g, n_groups, dtype)
                assert bm >= 16 and bn >= 16 and bk >= 16 and bk % 2 == 0 and warps in (4, 8)
                assert per_tile == (n_groups == 1 or g % 16 == 0)
                if per_tile and n_groups > 1:
                    assert g % bk == 0  # a tile never straddles two groups
        bm, bn, bk, warps, _ = K._gemm_config(m, 4096, 4096)
        assert bm >= 16 and bn >= 16 and bk >= 32 and warps in (4, 8)
    for length in (1, 7, 128, 4096, 4097, 100000):
        br, bl, one = K._quant_config(length)
        assert one == (length <= 4096) and br * bl <= 4096 and (not one or bl >= length)


def test_compiles_for_gpu_targets():
    # no GPU needed: Triton lowers to PTX and its bundled ptxas assembles it. int8 tl.dot does not compile for
    # sm_75 (the reason int8_gemm falls back to torch on a T4) and compiles, on tensor cores, for sm_80.
    nvidia = pytest.importorskip("triton.backends.nvidia.compiler")
    try:
        ptxas = nvidia.get_ptxas(80).path
    except Exception as exc:  # noqa: BLE001 - any failure means "no bundled ptxas"
        pytest.skip(f"no ptxas for sm_80 in this Triton install: {exc}")
    if not ptxas:  # pragma: no cover
        pytest.skip("no ptxas for sm_80 in this Triton install")
    try:
        rows = K.compile_report((75, 80), match="int8_gemm M=16 ", timeout=240)
    except RuntimeError as exc:  # pragma: no cover - e.g. a Triton build without the NVIDIA backend tools
        pytest.skip(f"cannot compile for NVIDIA targets here: {exc}")
    by_target = {r["target"]: r for r in rows}
    assert by_target["sm_75"]["ok"] is False
    sm80 = by_target["sm_80"]
    assert sm80["ok"] is True and sm80["mma"] == "mma.sync" and sm80["spill_bytes"] == 0
    assert 0 < sm80["registers"] <= 255 and sm80["shared_bytes"] > 0


@pytest.mark.slow
def test_layernorm_quantize_compiles_without_spills():
    nvidia = pytest.importorskip("triton.backends.nvidia.compiler")
    try:
        if not nvidia.get_ptxas(80).path:  # pragma: no cover
            pytest.skip("no ptxas for sm_80 in this Triton install")
        rows = K.compile_report((80,), match="layernorm_quantize_rows fp16", timeout=300)
    except Exception as exc:  # noqa: BLE001 - pragma: no cover - no NVIDIA backend tools here
        pytest.skip(f"cannot compile for NVIDIA targets here: {exc}")
    assert {r["name"] for r in rows} == {"layernorm_quantize_rows fp16 D=4096",
                                         "layernorm_quantize_rows fp16 D=16384 (four passes)"}
    assert all(r["ok"] and r["spill_bytes"] == 0 and r["mma"] is None for r in rows), rows


# ============================================================================ LayerNorm + token-wise quantize
def _ln_case(seed: int, m: int, d: int, dtype=torch.float32):
    g = _gen(seed)
    # tokens of very different sizes and offsets, one outlier feature: what a Transformer's LayerNorm receives
    x = torch.randn(m, d, generator=g, dtype=torch.float64) * (0.1 + 10 * torch.rand(m, 1, generator=g,
                                                                                      dtype=torch.float64))
    x = x + torch.randn(m, 1, generator=g, dtype=torch.float64)
    x[:, min(3, d - 1)] += 25.0
    w = 1.0 + 0.3 * torch.randn(d, generator=g, dtype=torch.float64)
    b = 0.2 * torch.randn(d, generator=g, dtype=torch.float64)
    return x.to(dtype), w.float(), b.float()


def _assert_ln_quant_close(q, s, x, w, b, eps=1e-5, bits=8):
    """The kernel (float32) against the reference computed from the same input in float64.

    The LayerNorm output y carries float32 rounding (a few ulps of max|y| per value), so where y / scale lies
    that close to a half-integer the two round to neighbouring codes: codes may differ by 1, never more, and
    only in a few places; scales agree to float32 rounding; each dequantized value is within one step of y.
    """
    qr, sr = R.layernorm_quantize_rows(_np(x).astype(np.float64), _np(w).astype(np.float64),
                                       _np(b).astype(np.float64), eps, bits)
    qk, sk = _np(q).astype(np.int64), _np(s).astype(np.float64)
    assert q.dtype == torch.int8 and s.dtype == torch.float32
    assert qk.shape == qr.shape and sk.shape == sr.shape
    diff = np.abs(qk - qr)
    assert diff.max() <= 1 and diff.mean() < 0.01, (diff.max(), diff.mean())
    np.testing.assert_allclose(sk, sr, rtol=64 * U32)
    x64 = _np(x).astype(np.float64)
    mean = x64.mean(-1, keepdims=True)
    yref = (x64 - mean) / np.sqrt(((x64 - mean) ** 2).mean(-1, keepdims=True) + eps) * _np(w) + _np(b)
    assert np.all(np.abs(qk * sk[..., None] - yref) <= sr[..., None])


@pytest.mark.parametrize("m, d", [(37, 384), (5, 100), (1, 7), (130, 64)])
@pytest.mark.parametrize("bits", [8, 4])
def test_layernorm_quantize_rows_matches_reference(m, d, bits):
    x, w, b = _ln_case(20 + m + d, m, d)
    q, s = K.layernorm_quantize_rows(x.to(DEVICE), w.to(DEVICE), b.to(DEVICE), 1e-5, bits)
    _assert_ln_quant_close(q, s, x, w, b, 1e-5, bits)


def test_layernorm_quantize_rows_long_rows_take_four_passes():
    x, w, b = _ln_case(30, 3, 5000)  # 5000 > 4096: the tiled path
    assert K._quant_config(5000)[2] is False
    q, s = K.layernorm_quantize_rows(x.to(DEVICE), w.to(DEVICE), b.to(DEVICE), eps=1e-3)
    _assert_ln_quant_close(q, s, x, w, b, eps=1e-3)


def test_layernorm_quantize_rows_equals_the_unfused_two_steps_mostly():
    # the unfused pipeline on the same device: F.layer_norm in float32, then the row-quantize kernel
    x, w, b = _ln_case(31, 48, 256)
    xd, wd, bd = x.to(DEVICE), w.to(DEVICE), b.to(DEVICE)
    q, s = K.layernorm_quantize_rows(xd, wd, bd)
    q2, s2 = K.quantize_rows(torch.nn.functional.layer_norm(xd, (256,), wd, bd, 1e-5))
    diff = (q.long() - q2.long()).abs()
    assert int(diff.max()) <= 1 and float(diff.float().mean()) < 0.01
    np.testing.assert_allclose(_np(s), _np(s2), rtol=64 * U32)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_layernorm_quantize_rows_half_inputs(dtype):
    x, w, b = _ln_case(32, 6, 96, dtype)
    q, s = K.layernorm_quantize_rows(x.to(DEVICE), w.to(DEVICE), b.to(DEVICE))
    _assert_ln_quant_close(q, s, x.float(), w, b)  # the reference sees the same (rounded) inputs


def test_layernorm_quantize_rows_leading_dims_and_constant_rows():
    x, w, b = _ln_case(33, 12, 32)
    q, s = K.layernorm_quantize_rows(x.reshape(3, 4, 32).to(DEVICE), w.to(DEVICE), b.to(DEVICE))
    q2, s2 = K.layernorm_quantize_rows(x.to(DEVICE), w.to(DEVICE), b.to(DEVICE))
    assert q.shape == (3, 4, 32) and s.shape == (3, 4)
    assert torch.equal(q.reshape(12, 32), q2) and torch.equal(s.reshape(12), s2)
    # a constant row normalizes to 0; with a zero bias its codes are 0 and its scale 1
    qc, sc = K.layernorm_quantize_rows(torch.full((2, 32), 3.0, device=DEVICE), w.to(DEVICE),
                                       torch.zeros(32, device=DEVICE))
    assert not qc.any() and torch.all(sc == 1.0)


def test_layernorm_quantize_rows_rejects_bad_inputs():
    x, w, b = (t.to(DEVICE) for t in _ln_case(34, 4, 16))
    with pytest.raises(TypeError, match="x must be a torch tensor"):
        K.layernorm_quantize_rows(_np(x), w, b)
    with pytest.raises(TypeError, match="x must have dtype"):
        K.layernorm_quantize_rows(x.double(), w, b)
    with pytest.raises(ValueError, match=r"weight must have shape \(16,\)"):
        K.layernorm_quantize_rows(x, w[:8], b)
    with pytest.raises(ValueError, match="bias must have shape"):
        K.layernorm_quantize_rows(x, w, b[:8])
    with pytest.raises(ValueError, match="eps must be a positive"):
        K.layernorm_quantize_rows(x, w, b, eps=0.0)
    with pytest.raises(ValueError, match="bits"):
        K.layernorm_quantize_rows(x, w, b, bits=1)
    bad = x.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="x must contain only finite"):
        K.layernorm_quantize_rows(bad, w, b)
    wb = w.clone()
    wb[1] = float("inf")
    with pytest.raises(ValueError, match="weight must contain only finite"):
        K.layernorm_quantize_rows(x, wb, b)


# ============================================================================ bad input
def test_rejects_bad_inputs_quantize():
    x = _randn(50, 4, 8)
    with pytest.raises(TypeError, match="x must be a torch tensor"):
        K.quantize_rows(_np(x))
    with pytest.raises(TypeError, match="x must have dtype float16, bfloat16 or float32"):
        K.quantize_rows(x.double())
    with pytest.raises(TypeError, match="bits must be an int"):
        K.quantize_rows(x, bits=8.0)
    with pytest.raises(ValueError, match=r"bits must be an int in \[2, 8\]"):
        K.quantize_rows(x, bits=9)
    with pytest.raises(ValueError, match="x must have a non-empty last dimension"):
        K.quantize_rows(torch.zeros(3, 0, device=DEVICE))
    with pytest.raises(ValueError, match="x must have at least 1 dimension"):
        K.quantize_rows(torch.tensor(1.0, device=DEVICE))
    bad = x.clone()
    bad[1, 2] = float("nan")
    with pytest.raises(ValueError, match="x must contain only finite values"):
        K.quantize_rows(bad)
    with pytest.raises(ValueError, match="x must contain only finite values"):
        K.quantize_groups(bad.abs() * float("inf"), 4)
    with pytest.raises(ValueError, match="group_size=3 must divide the last dimension K=8"):
        K.quantize_groups(x, 3)
    with pytest.raises(ValueError, match="group_size must be an int >= 1"):
        K.quantize_groups(x, 0)
    q, s = K.quantize_rows(x)
    with pytest.raises(TypeError, match=r"q must have dtype torch.int8"):
        K.dequantize_rows(q.int(), s)
    with pytest.raises(ValueError, match=r"scale must have shape \(4,\)"):
        K.dequantize_rows(q, s[:3])
    with pytest.raises(TypeError, match="scale must have a float dtype"):
        K.dequantize_rows(q, s.int())
    with pytest.raises(TypeError, match="dtype must be one of"):
        K.dequantize_rows(q, s, torch.float64)
    with pytest.raises(ValueError, match="scale must be on the device of q"):
        K.dequantize_rows(q, s.to("meta"))
    qg, sg = K.quantize_groups(x, 4)
    with pytest.raises(ValueError, match="scales must have shape"):
        K.dequantize_groups(qg, sg[0])
    with pytest.raises(ValueError, match="n_groups=3 must divide"):
        K.dequantize_groups(qg, torch.ones(4, 3, device=DEVICE))


def test_rejects_bad_inputs_matmuls():
    a = torch.zeros(4, 32, dtype=torch.int8, device=DEVICE)
    b = torch.zeros(6, 32, dtype=torch.int8, device=DEVICE)
    sa, sb = torch.ones(4, device=DEVICE), torch.ones(6, device=DEVICE)
    with pytest.raises(TypeError, match=r"a_q must have dtype torch.int8"):
        K.int8_gemm(a.float(), b, sa, sb)
    with pytest.raises(ValueError, match=r"b_q must have shape \[N, K=32\]"):
        K.int8_gemm(a, b[:, :16], sa, sb)
    with pytest.raises(ValueError, match="must be 2-D"):
        K.int8_gemm(a[0], b, sa, sb)
    with pytest.raises(ValueError, match="a_scale and b_scale must both be tensors or both be None"):
        K.int8_gemm(a, b, sa, None)
    with pytest.raises(ValueError, match=r"b_scale must have shape \(6,\)"):
        K.int8_gemm(a, b, sa, sa)
    with pytest.raises(ValueError, match=r"bias must have shape \(6,\)"):
        K.int8_gemm(a, b, sa, sb, bias=sa)
    with pytest.raises(ValueError, match=r"out_dtype=torch\.int32 returns the raw accumulator"):
        K.int8_gemm(a, b, sa, sb, out_dtype=torch.int32)
    with pytest.raises(TypeError, match="out_dtype must be one of"):
        K.int8_gemm(a, b, sa, sb, out_dtype="float32")

    x = _randn(51, 3, 32, dtype=torch.float16)
    packed = torch.zeros(6, 16, dtype=torch.uint8, device=DEVICE)
    scales = torch.ones(6, 2, device=DEVICE)
    with pytest.raises(TypeError, match=r"packed must have dtype torch.uint8"):
        K.w4a16_matmul(x, packed.to(torch.int8), scales, 16)
    with pytest.raises(ValueError, match=r"packed must have shape \[N, K/2\] = \[N, 16\]"):
        K.w4a16_matmul(x, packed[:, :8], scales, 16)
    with pytest.raises(ValueError, match="K must be even for int4 weights"):
        K.w4a16_matmul(x[:, :31], packed, scales, 16)
    with pytest.raises(ValueError, match="group_size=5 must divide K=32"):
        K.w4a16_matmul(x, packed, scales, 5)
    with pytest.raises(ValueError, match=r"scales must have shape \(6, 4\)"):
        K.w4a16_matmul(x, packed, scales, 8)
    with pytest.raises(TypeError, match="x must have dtype float16, bfloat16 or float32"):
        K.w4a16_matmul(x.double(), packed, scales, 16)
    with pytest.raises(TypeError, match="group_size must be an int"):
        K.w4a16_matmul(x, packed, scales, None)
    with pytest.raises(ValueError, match="packed must be on the device of x"):
        K.w4a16_matmul(x, packed.to("meta"), scales, 16)
    with pytest.raises(TypeError, match=r"q must have dtype torch.int8"):
        K.w8a16_matmul(x, b.to(torch.uint8), sb)
    with pytest.raises(ValueError, match=r"q must have shape \[N, K=32\]"):
        K.w8a16_matmul(x, b[:, :31], sb)
    with pytest.raises(ValueError, match=r"scales must have shape \(6,\)"):
        K.w8a16_matmul(x, b, sb[:, None])


def test_refuses_autograd_but_runs_under_no_grad():
    x = _randn(60, 2, 32).requires_grad_(True)
    wq = torch.randint(-127, 128, (4, 32), generator=_gen(61), dtype=torch.int8).to(DEVICE)
    s = torch.ones(4, device=DEVICE)
    with pytest.raises(ValueError, match=r"x require.* no backward"):
        K.w8a16_matmul(x, wq, s)
    with pytest.raises(ValueError, match="no backward"):
        K.quantize_rows(x)
    with torch.no_grad():
        y = K.w8a16_matmul(x, wq, s)
    assert not y.requires_grad
    x64 = x.detach().double()
    assert_within(y, x64 @ wq.double().T, _matmul_bound(x64, wq.double(), None, x.dtype), "w8a16 under no_grad")
