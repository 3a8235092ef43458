"""Tests of effx_lab.sparse.kernels: the Triton block-sparse matmul against torch_ops
and the float64 product.

Without a GPU the kernel runs in Triton's CPU interpreter (``import effx_lab`` switches
it on), so the shapes are tiny: blocks of 16 x 16 (the smallest ``tl.dot`` takes), at
most 4 x 4 blocks, at most 40 rows of ``x``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _backends import abs_matmul, assert_within, gamma, unit_roundoff

import effx_lab  # noqa: F401  (first: sets TRITON_INTERPRET=1 when there is no GPU)
from effx_lab.sparse import reference as R
from effx_lab.sparse import torch_ops as T

pytest.importorskip("triton", exc_type=ImportError)

from effx_lab.sparse import kernels as K  # noqa: E402

if not K.available():  # pragma: no cover - depends on the machine
    pytest.skip(
        f"Triton kernel unavailable: {K.why_unavailable()}", allow_module_level=True
    )

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
FN = K.block_sparse_matmul_triton


def _case(
    seed: int,
    lead: tuple[int, ...],
    shape: tuple[int, int],
    block: tuple[int, int],
    density: float,
    dtype=torch.float32,
    with_bias: bool = True,
):
    """``(x, bsr, bias)`` on DEVICE in ``dtype``, and the float64 NumPy copies of the
    rounded values.
    """
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(shape)
    w = w * R.block_mask(w, block, density)
    x = rng.standard_normal((*lead, shape[1]))
    b = rng.standard_normal(shape[0]) if with_bias else None
    wt, xt = (
        torch.tensor(w).to(dtype=dtype, device=DEVICE),
        torch.tensor(x).to(dtype=dtype, device=DEVICE),
    )
    bt = None if b is None else torch.tensor(b).to(dtype=dtype, device=DEVICE)
    as64 = [None if t is None else t.double().cpu().numpy() for t in (xt, wt, bt)]
    return (xt, T.to_block_sparse(wt, block), bt), as64


def _assert_close(
    out: torch.Tensor, x: np.ndarray, w: np.ndarray, b: np.ndarray | None, what: str
) -> None:
    """Against the float64 product of the same rounded inputs: the K products (exact in
    float32 for 16-bit operands) summed in float32 (tl.dot, ieee) and the bias added
    once, ``e = gamma_{K+1}(u32) (|x| |W|^T + |b|)``; a 16-bit output is then rounded to
    its dtype, within ``2 u_out`` of the float32 value (1 ulp: Triton's CPU interpreter
    converts float32 to bfloat16 by truncation, where a GPU rounds to nearest): ``e + 2
    u_out (|y| + e)``.
    """
    want = x @ w.T + (0.0 if b is None else b)
    mag = abs_matmul(x, w.T) + (0.0 if b is None else np.abs(b))
    err = gamma(w.shape[1] + 1, unit_roundoff(torch.float32)) * mag
    u_out = unit_roundoff(out.dtype) if out.dtype != torch.float32 else 0.0
    assert_within(out, want, err + 2 * u_out * (np.abs(want) + err), what)


@pytest.mark.parametrize(
    ("lead", "shape", "block", "density", "with_bias"),
    [
        # 20 rows: BLOCK_M = 32, the last rows masked
        ((20,), (48, 64), (16, 16), 0.5, True),
        # rectangular blocks, leading dimensions
        ((2, 3), (32, 64), (16, 32), 0.5, False),
        # dense
        ((5,), (64, 32), (32, 16), 1.0, True),
        # a few block rows store nothing: the bias alone
        ((40,), (64, 64), (16, 16), 0.2, True),
    ],
)
def test_matches_torch_ops_and_the_float64_product(
    lead, shape, block, density, with_bias
):
    (x, bsr, b), (x64, w64, b64) = _case(
        0, lead, shape, block, density, with_bias=with_bias
    )
    out = FN(x, bsr, b)
    assert (
        out.shape == (*lead, shape[0])
        and out.dtype == torch.float32
        and out.device == x.device
    )
    _assert_close(out, x64, w64, b64, f"triton {shape} {block} density={density}")
    ref = T.block_sparse_matmul(x, bsr, b)
    mag = abs_matmul(x64, w64.T) + (0.0 if b64 is None else np.abs(b64))
    assert_within(
        out,
        ref,
        2 * gamma(shape[1] + 1, unit_roundoff(torch.float32)) * mag,
        "triton vs torch_ops",
    )


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision(dtype):
    (x, bsr, b), (x64, w64, b64) = _case(1, (18,), (32, 64), (16, 16), 0.5, dtype=dtype)
    out = FN(x, bsr, b)
    assert out.dtype == dtype
    _assert_close(out, x64, w64, b64, f"triton {dtype}")


def test_empty_inputs():
    (x, bsr, b), _ = _case(2, (0,), (32, 32), (16, 16), 0.5)
    assert FN(x, bsr, b).shape == (0, 32)
    zeros = T.to_block_sparse(torch.zeros(32, 32, device=DEVICE), 16)
    xs = torch.randn(3, 32, device=DEVICE)
    bias = torch.randn(32, device=DEVICE)
    torch.testing.assert_close(FN(xs, zeros, bias), bias.expand(3, 32), rtol=0, atol=0)
    torch.testing.assert_close(
        FN(xs, zeros), torch.zeros(3, 32, device=DEVICE), rtol=0, atol=0
    )


def test_a_nan_token_reaches_the_same_outputs_as_torch_ops():
    (x, bsr, b), _ = _case(3, (17,), (64, 64), (16, 16), 0.3)
    x = x.clone()
    x[4, 3] = float("nan")
    out, ref = FN(x, bsr, b), T.block_sparse_matmul(x, bsr, b)
    assert torch.equal(torch.isnan(out), torch.isnan(ref))
    assert (
        torch.isnan(out[4]).any() and not torch.isnan(out[torch.arange(17) != 4]).any()
    )


def test_checks_its_inputs():
    (x, bsr, b), _ = _case(4, (4,), (32, 32), (16, 16), 0.5)
    small = T.to_block_sparse(torch.randn(32, 32, device=DEVICE), (8, 16))
    with pytest.raises(
        ValueError, match=r"bh must be a power of two >= 16.*got block \(8, 16\)"
    ):
        FN(x, small)
    with pytest.raises(
        TypeError, match="bsr.values must have dtype float16, bfloat16 or float32"
    ):
        FN(
            x.double(),
            T.to_block_sparse(
                torch.randn(32, 32, dtype=torch.float64, device=DEVICE), 16
            ),
        )
    with pytest.raises(TypeError, match="x must have the dtype of bsr.values"):
        FN(x.half(), bsr)
    with pytest.raises(ValueError, match=r"x must have shape \(..., in_features=32\)"):
        FN(x[:, :16], bsr)
    with pytest.raises(TypeError, match="x must be a torch tensor"):
        FN(x.cpu().numpy(), bsr)
    with pytest.raises(TypeError, match="bsr must hold torch arrays"):
        FN(x, R.to_block_sparse(np.ones((32, 32), dtype=np.float32), 16))
    with pytest.raises(ValueError, match="the Triton kernel has no backward"):
        FN(x.clone().requires_grad_(), bsr)
    with torch.no_grad():
        FN(x.clone().requires_grad_(), bsr)  # fine without autograd


def test_kernel_source_is_readable():
    src = K.kernel_source(K._bsr_matmul_kernel)
    assert src.startswith("@_jit") and "for k in range(start, end)" in src


def test_compiles_for_gpu_targets():
    # no GPU needed: Triton lowers the kernel to PTX for sm_80 (A100) and sm_90 (H100)
    # and its bundled ptxas assembles it; float16 blocks of 32 x 32 run on tensor cores
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
    phases = ("decode", "prefill")
    assert {(r["name"].split(" ")[4], r["target"]) for r in rows} == {
        (phase, target) for phase in phases for target in ("sm_80", "sm_90")
    }, rows
    for r in rows:
        assert r["ok"] is True, r
        assert r["spill_bytes"] == 0 and 0 < r["registers"] <= 255, r
        assert r["shared_bytes"] > 0, r
        # tensor cores: mma.sync on sm_80, mma.sync or the warpgroup MMA on sm_90
        allowed = ("mma.sync",) if r["target"] == "sm_80" else ("mma.sync", "wgmma")
        assert r["mma"] in allowed, r


def test_compile_report_checks_its_arguments():
    with pytest.raises(TypeError, match="capabilities must be a non-empty tuple"):
        K.compile_report(())
    with pytest.raises(ValueError, match="capabilities"):
        K.compile_report((60,))
    with pytest.raises(TypeError, match="match must be None or a str"):
        K.compile_report((80,), match=3)
    with pytest.raises(ValueError, match="timeout must be a positive number"):
        K.compile_report((80,), timeout=0)
    with pytest.raises(ValueError, match="selects no case"):
        K.compile_report((80,), match="no such kernel")
