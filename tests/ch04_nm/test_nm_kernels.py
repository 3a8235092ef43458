"""Tests of effx_lab.nm.kernels (the Triton 2:4 compressed-weight matmul) against
torch_ops.nm_matmul and the float64 product, and of effx_lab.nm.semi_structured (the
library baseline) where it cannot run: its reasons and errors.

Without a GPU the kernel runs in Triton's CPU interpreter (``import effx_lab`` switches
it on before any kernel is defined), so the shapes are tiny. Agreement in float64 is
the faces' job (tests/ch04_nm/test_nm_faces.py); the kernel accumulates in float32
(``tl.dot``, ``input_precision="ieee"``), so its bound is float32's ``gamma_{K+1}``
times ``|x| |W|^T + |b|``, plus one rounding of a 16-bit output.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _backends import abs_matmul, assert_within, gamma, unit_roundoff

import effx_lab  # noqa: F401  (first: sets TRITON_INTERPRET=1 when there is no GPU)
from effx_lab.nm import reference as R
from effx_lab.nm import semi_structured as S
from effx_lab.nm import torch_ops as T

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

try:
    import triton  # noqa: F401

    from effx_lab.nm import kernels as K

    _WHY = K.why_unavailable()
except ImportError as exc:  # pragma: no cover - depends on the machine
    K, _WHY = None, f"Triton is not installed: {exc}"

needs_kernel = pytest.mark.skipif(
    _WHY is not None, reason=f"Triton kernel unavailable: {_WHY}"
)


def _case(seed, lead, shape, dtype=torch.float32, with_bias=True, zero_some=True):
    """``(x, c, bias)`` on DEVICE in ``dtype`` (``c`` 2:4 compressed), and float64
    NumPy copies of the rounded ``x``, dense ``W`` and ``bias``."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(shape)
    w = w * R.nm_mask(w)
    if zero_some:
        w[rng.random(shape) < 0.2] = 0.0  # groups with fewer than 2 non-zeros
        w[0] = 0.0
    x = rng.standard_normal((*lead, shape[1]))
    b = rng.standard_normal(shape[0]) if with_bias else None
    wt = torch.tensor(w).to(dtype=dtype, device=DEVICE)
    xt = torch.tensor(x).to(dtype=dtype, device=DEVICE)
    bt = None if b is None else torch.tensor(b).to(dtype=dtype, device=DEVICE)
    as64 = [None if t is None else t.double().cpu().numpy() for t in (xt, wt, bt)]
    return (xt, T.compress(wt), bt), as64


def _bound(x, w, b, out_dtype):
    """float32 accumulation of K products (exact for 16-bit operands) and the bias:
    ``e = gamma_{K+1}(u32) (|x| |W|^T + |b|)``; a 16-bit output is rounded once more,
    within ``2 u_out`` (one ulp: the interpreter truncates to bfloat16)."""
    want = x @ w.T + (0.0 if b is None else b)
    mag = abs_matmul(x, w.T) + (0.0 if b is None else np.abs(b))
    err = gamma(w.shape[1] + 1, unit_roundoff(torch.float32)) * mag
    u_out = 0.0 if out_dtype == torch.float32 else unit_roundoff(out_dtype)
    return want, err + 2 * u_out * (np.abs(want) + err)


# ------------------------------------------------------------------------------ kernel
@needs_kernel
@pytest.mark.parametrize(
    ("lead", "shape", "with_bias"),
    [
        ((1,), (40, 72), True),  # decode; N and K not multiples of the tiles
        ((2, 3), (64, 256), False),  # leading dimensions, two K steps
        ((20,), (48, 132), True),  # BLOCK_M 32 with rows masked; K % 8 == 4
        ((40,), (70, 64), True),  # BLOCK_M 64, N masked
    ],
)
def test_matches_torch_ops_and_the_float64_product(lead, shape, with_bias):
    (x, c, b), (x64, w64, b64) = _case(0, lead, shape, with_bias=with_bias)
    out = K.nm_matmul_triton(x, c, b)
    assert out.shape == (*lead, shape[0]) and out.dtype == torch.float32
    want, bound = _bound(x64, w64, b64, torch.float32)
    assert_within(out, want, bound, f"triton {shape}")
    assert_within(out, T.nm_matmul(x, c, b), 2 * bound, "triton vs torch_ops")


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision(dtype):
    (x, c, b), (x64, w64, b64) = _case(1, (18,), (32, 64), dtype=dtype)
    out = K.nm_matmul_triton(x, c, b)
    assert out.dtype == dtype
    want, bound = _bound(x64, w64, b64, dtype)
    assert_within(out, want, bound, f"triton {dtype}")


@needs_kernel
def test_all_zero_weight_and_empty_input():
    (x, c, b), _ = _case(2, (0,), (32, 64))
    assert K.nm_matmul_triton(x, c, b).shape == (0, 32)
    zeros = T.compress(torch.zeros(32, 64, device=DEVICE))
    xs = torch.randn(3, 64, device=DEVICE)
    bias = torch.randn(32, device=DEVICE)
    torch.testing.assert_close(
        K.nm_matmul_triton(xs, zeros, bias), bias.expand(3, 32), rtol=0, atol=0
    )


@needs_kernel
def test_nan_policy_weight_nan_stays_in_its_output_x_nan_fills_its_row():
    (x, c, b), (_, w64, _) = _case(3, (5,), (32, 64), zero_some=False)
    w = torch.tensor(w64, dtype=torch.float32, device=DEVICE)
    w[7, int(np.flatnonzero(w64[7])[0])] = float("nan")
    out = K.nm_matmul_triton(x, T.compress(w), b)
    assert torch.isnan(out[:, 7]).all() and not torch.isnan(out[:, :7]).any()
    x = x.clone()
    x[2, 5] = float("nan")
    out = K.nm_matmul_triton(x, c, b)
    # as the dense product: 0 * NaN in tl.dot reaches every output of row 2
    assert torch.isnan(out[2]).all()
    assert not torch.isnan(out[torch.arange(5, device=DEVICE) != 2]).any()


@needs_kernel
def test_checks_its_inputs():
    (x, c, b), _ = _case(4, (4,), (32, 64))
    w28 = torch.zeros(32, 64, device=DEVICE)
    with pytest.raises(ValueError, match="c must be 2:4.*got 2:8"):
        K.nm_matmul_triton(x, T.compress(w28, 2, 8))
    with pytest.raises(TypeError, match="c.values must have dtype float16, bfloat16"):
        K.nm_matmul_triton(x.double(), T.compress(w28.double()))
    with pytest.raises(TypeError, match="x must have the dtype of c.values"):
        K.nm_matmul_triton(x.half(), c)
    with pytest.raises(ValueError, match=r"x must have shape \(..., in_features=64\)"):
        K.nm_matmul_triton(x[:, :32], c)
    with pytest.raises(TypeError, match="x must be a torch tensor"):
        K.nm_matmul_triton(x.cpu().numpy(), c)
    with pytest.raises(TypeError, match="c must hold torch tensors"):
        K.nm_matmul_triton(x, R.compress(np.zeros((32, 64), dtype=np.float32)))
    with pytest.raises(TypeError, match="c must be an NMCompressed"):
        K.nm_matmul_triton(x, torch.zeros(32, 64))
    with pytest.raises(ValueError, match=r"bias must have shape \(out_features,\)"):
        K.nm_matmul_triton(x, c, b[:3])
    with pytest.raises(ValueError, match="the Triton kernel has no backward"):
        K.nm_matmul_triton(x.clone().requires_grad_(), c)
    with torch.no_grad():
        K.nm_matmul_triton(x.clone().requires_grad_(), c)  # fine without autograd


@needs_kernel
def test_kernel_source_is_readable():
    src = K.kernel_source(K._nm24_matmul_kernel)
    assert src.startswith("@_jit") and "tl.split(tl.reshape(v, (BLOCK_N" in src


@needs_kernel
def test_compiles_for_gpu_targets():
    # no GPU needed: Triton lowers the kernel to PTX for sm_80 (A100) and sm_90 (H100)
    # and its bundled ptxas assembles it; float16 dots run on tensor cores
    nvidia = pytest.importorskip("triton.backends.nvidia.compiler")
    try:
        ptxas = nvidia.get_ptxas(80).path
    except Exception as exc:  # noqa: BLE001 - any failure means "no bundled ptxas"
        pytest.skip(f"no ptxas for sm_80 in this Triton install: {exc}")
    if not ptxas:  # pragma: no cover
        pytest.skip("no ptxas for sm_80 in this Triton install")
    try:
        rows = K.compile_report((80, 90), match="fp16", timeout=300)
    except RuntimeError as exc:  # pragma: no cover - no NVIDIA backend tools here
        pytest.skip(f"cannot compile for NVIDIA targets here: {exc}")
    assert {(r["name"].split(" ")[2], r["target"]) for r in rows} == {
        (phase, target)
        for phase in ("decode", "prefill")
        for target in ("sm_80", "sm_90")
    }, rows
    for r in rows:
        assert r["ok"] is True, r
        assert r["spill_bytes"] == 0 and 0 < r["registers"] <= 255, r
        allowed = ("mma.sync",) if r["target"] == "sm_80" else ("mma.sync", "wgmma")
        assert r["mma"] in allowed, r


@needs_kernel
def test_compile_report_checks_its_arguments():
    with pytest.raises(TypeError, match="capabilities must be a non-empty tuple"):
        K.compile_report(())
    with pytest.raises(TypeError, match="match must be None or a str"):
        K.compile_report((80,), match=3)
    with pytest.raises(ValueError, match="selects no case"):
        K.compile_report((80,), match="no such kernel")


# ------------------------------------------------------------- the library baseline
def test_semi_structured_says_why_it_cannot_run_here():
    reason = S.why_unavailable()
    if torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 8:
        assert reason is None and S.available()
        return
    assert isinstance(reason, str) and not S.available()
    if not torch.cuda.is_available():
        assert reason.startswith("no CUDA GPU") and "8.0" in reason
    else:  # pragma: no cover - a pre-Ampere GPU
        assert "compute capability" in reason and "8.0" in reason
    on_cpu = S.why_unavailable("cpu")
    assert "the tensors are on cpu" in on_cpu and "sm_80" in on_cpu
    w = torch.zeros(32, 64, dtype=torch.float16)
    with pytest.raises(RuntimeError, match="cannot run here: the tensors are on cpu"):
        S.to_semi_structured(w)


def test_semi_structured_checks_its_inputs():
    with pytest.raises(TypeError, match="takes float16 or bfloat16 weights"):
        S.to_semi_structured(torch.zeros(32, 64))
    with pytest.raises(TypeError, match="w must be a torch tensor"):
        S.to_semi_structured(np.zeros((32, 64), dtype=np.float16))
    with pytest.raises(ValueError, match="m must divide the input width of w"):
        S.to_semi_structured(torch.zeros(32, 66, dtype=torch.float16))
    with pytest.raises(ValueError, match="w must have 2 dimensions"):
        S.to_semi_structured(torch.zeros(64, dtype=torch.float16))
    with pytest.raises(TypeError, match="w_sparse must be a SparseSemiStructured"):
        S.semi_structured_linear(torch.zeros(2, 64), torch.zeros(32, 64))
    with pytest.raises(TypeError, match="takes float16 or bfloat16"):
        S.min_shape(torch.float32)
    assert S.min_shape(torch.float16) in ((16, 16), (32, 64))
    with pytest.raises(TypeError, match="device must be a torch device"):
        S.why_unavailable(3.5)


@pytest.mark.skipif(not S.available(), reason=f"{S.why_unavailable()}")
def test_semi_structured_matches_nm_matmul_on_gpu():  # pragma: no cover - GPU only
    rng = np.random.default_rng(5)
    w = rng.standard_normal((64, 128))
    w = torch.tensor(w * R.nm_mask(w), dtype=torch.float16, device="cuda")
    x = torch.randn(3, 128, dtype=torch.float16, device="cuda")
    b = torch.randn(64, dtype=torch.float16, device="cuda")
    got = S.semi_structured_linear(x, S.to_semi_structured(w), b)
    want = x.double() @ w.double().T + b.double()
    torch.testing.assert_close(got.double(), want, rtol=2e-2, atol=2e-2)
    with pytest.raises(ValueError, match="w must be 2:4 sparse"):
        S.to_semi_structured(torch.ones(64, 128, dtype=torch.float16, device="cuda"))
