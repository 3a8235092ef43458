"""Tests of effx_lab.moe.kernels (the Triton grouped GEMM over expert-sorted rows) and
effx_lab.moe.library (PyTorch's F.grouped_mm, the library baseline), against the
float64 loop of effx_lab.moe.reference.

Without a GPU the kernel runs in Triton's CPU interpreter (``import effx_lab`` switches
it on before any kernel is defined), so the sizes are tiny. Neither takes float64, so
agreement is proved against the float64 loop on the same (rounded) inputs within a
first-order rounding bound of the MoE FFN (:func:`_moe_bound`), derived from the
standard model (tests/_backends.py): every GEMM ``gamma_{K+1}`` (its ``K`` products and
the bias) times the magnitudes, the GELU's own bound and its Lipschitz constant 1.13
for the error of its argument, then the gate's product and the sum of the ``k`` choices.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _backends import (
    GELU_LIPSCHITZ,
    assert_within,
    gamma,
    gelu_tanh_bound,
    unit_roundoff,
)

import effx_lab  # noqa: F401  (first: sets TRITON_INTERPRET=1 when there is no GPU)
from effx_lab.models.reference import gelu_tanh
from effx_lab.moe import library as L
from effx_lab.moe import reference as R
from effx_lab.moe import torch_ops as T
from effx_lab.moe._format import Routing

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

try:
    import triton  # noqa: F401

    from effx_lab.moe import kernels as K

    _WHY = K.why_unavailable()
except ImportError as exc:  # pragma: no cover - depends on the machine
    K, _WHY = None, f"Triton is not installed: {exc}"

needs_kernel = pytest.mark.skipif(
    _WHY is not None, reason=f"Triton kernel unavailable: {_WHY}"
)


# ----------------------------------------------------------------------------- helpers
def _routing(rng, t, e, k, cap, skip=()):
    """A NumPy Routing: top-``k`` of a random softmax (never the experts in ``skip``),
    renormalised gates, buffers of ``cap`` rows filled in token order, first choices
    first."""
    logits = rng.standard_normal((t, e))
    logits[:, list(skip)] = -1e9
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    experts = np.argsort(-probs, axis=1, kind="stable")[:, :k].astype(np.int64)
    gates = np.take_along_axis(probs, experts, 1)
    gates = gates / gates.sum(1, keepdims=True)
    slots = np.full((t, k), -1, dtype=np.int64)
    fill = np.zeros(e, dtype=np.int64)
    for j in range(k):
        for i in range(t):
            if fill[experts[i, j]] < cap:
                slots[i, j] = fill[experts[i, j]]
                fill[experts[i, j]] += 1
    return Routing(experts, gates, slots, cap, e, probs)


def _on(r, dtype=torch.float32, device=DEVICE):
    """The routing as tensors on ``device`` (gates in ``dtype``)."""
    def t(a):
        return torch.from_numpy(np.array(a, copy=True)).to(device)

    gates = t(r.gates).to(dtype)
    return Routing(t(r.experts), gates, t(r.slots), r.capacity, r.n_experts, t(r.probs))


def _case(seed, t, e, k, cap, d, f, dtype=torch.float32, skip=(), device=DEVICE):
    """Inputs on ``device`` in ``dtype`` and float64 NumPy copies of the rounded
    values."""
    rng = np.random.default_rng(seed)
    r = _routing(rng, t, e, k, cap, skip)
    p = {key: torch.from_numpy(v).to(device, dtype) for key, v in
         R.init_experts(d, f, e, seed).items()}  # fmt: skip
    x = torch.from_numpy(rng.standard_normal((t, d))).to(device, dtype)
    # gates stay float32 for 16-bit experts (the router runs in float32; the MoE
    # functions cast them to the experts' dtype)
    rt = _on(r, torch.float32 if dtype != torch.float64 else dtype, device)
    gates64 = rt.gates.double().cpu().numpy()
    r64 = Routing(r.experts, gates64, r.slots, r.capacity, e, r.probs)
    p64 = {key: v.double().cpu().numpy() for key, v in p.items()}
    return (x, rt, p), (x.double().cpu().numpy(), r64, p64)


def _moe_bound(x, r, p, u, gelu_u=None, u_out=0.0):
    """Elementwise bound on ``|fl(y) - y|`` for the MoE output ``y`` computed in unit
    roundoff ``u`` from the float64 values ``x``, ``r``, ``p`` (any summation order):

    * ``z = x w1[e] + b1[e]``: ``e_z = gamma_{d+1} (|x| |w1[e]| + |b1[e]|)``;
    * ``g = gelu(z)``: ``e_g = 1.13 e_z + gelu_tanh_bound(z, gelu_u)``;
    * ``o = g w2[e] + b2[e]``: ``e_o = gamma_{f+1} ((|g| + e_g) |w2[e]| + |b2[e]|) +
      e_g |w2[e]|``;
    * ``y = sum_j gate_j o_j`` (the gate cast and a product, then ``k`` terms):
      ``sum_j |gate_j| e_o_j + gamma_{k+2} sum_j |gate_j o_j|``;

    plus ``u_out |y|`` when the output is rounded to a narrower dtype."""
    d, f = p["w1"].shape[1:]
    gelu_u = u if gelu_u is None else gelu_u
    y = np.zeros_like(x)
    terms = np.zeros_like(x)
    err = np.zeros_like(x)
    for t, j in zip(*np.nonzero(r.slots >= 0)):
        e, g8 = r.experts[t, j], abs(r.gates[t, j])
        w1, b1, w2, b2 = (p[key][e] for key in ("w1", "b1", "w2", "b2"))
        z = x[t] @ w1 + b1
        e_z = gamma(d + 1, u) * (np.abs(x[t]) @ np.abs(w1) + np.abs(b1))
        g = gelu_tanh(z)
        e_g = GELU_LIPSCHITZ * e_z + gelu_tanh_bound(z, gelu_u)
        o = g @ w2 + b2
        e_o = gamma(f + 1, u) * ((np.abs(g) + e_g) @ np.abs(w2) + np.abs(b2))
        e_o += e_g @ np.abs(w2)
        y[t] += r.gates[t, j] * o
        terms[t] += g8 * np.abs(o)
        err[t] += g8 * e_o
    k = r.experts.shape[1]
    return err + gamma(k + 2, u) * terms + u_out * (np.abs(y) + err)


# ------------------------------------------------------------------------------ kernel
@needs_kernel
@pytest.mark.parametrize(
    ("bias", "gelu"), [(False, False), (True, False), (True, True)]
)
def test_grouped_matmul_matches_the_float64_segments(bias, gelu):
    rng = np.random.default_rng(0)
    # segments: 70 rows (a full tile and a ragged one), none, 5, 64 (one exact tile)
    bounds = [0, 70, 70, 75, 139]
    e, k_dim, n_dim = 4, 20, 70  # K not a multiple of BLOCK_K, N not of BLOCK_N
    xs = rng.standard_normal((bounds[-1], k_dim))
    w = rng.standard_normal((e, k_dim, n_dim)) / np.sqrt(k_dim)
    b = rng.standard_normal((e, n_dim)) if bias else None
    xt, wt = (torch.tensor(a, dtype=torch.float32, device=DEVICE) for a in (xs, w))
    bt = None if b is None else torch.tensor(b, dtype=torch.float32, device=DEVICE)
    offsets = torch.tensor(bounds, dtype=torch.int64, device=DEVICE)
    out = K.grouped_matmul_triton(xt, offsets, wt, bt, gelu=gelu)
    assert out.shape == (139, n_dim) and out.dtype == torch.float32
    x64, w64 = xt.double().cpu().numpy(), wt.double().cpu().numpy()
    b64 = np.zeros((e, n_dim)) if bt is None else bt.double().cpu().numpy()
    u = unit_roundoff(torch.float32)
    want, bound = np.zeros((139, n_dim)), np.zeros((139, n_dim))
    for ex, (lo, hi) in enumerate(zip(bounds, bounds[1:])):
        z = x64[lo:hi] @ w64[ex] + b64[ex]
        mag = np.abs(x64[lo:hi]) @ np.abs(w64[ex]) + np.abs(b64[ex])
        e_z = gamma(k_dim + 1, u) * mag
        if gelu:
            want[lo:hi] = gelu_tanh(z)
            # the kernel's tanh is 1 - 2 / (exp(2a) + 1): three roundings more than a
            # library tanh, covered by doubling u in the GELU's own bound
            bound[lo:hi] = GELU_LIPSCHITZ * e_z + gelu_tanh_bound(z, 2 * u)
        else:
            want[lo:hi], bound[lo:hi] = z, e_z
    assert_within(out, want, bound, "grouped_matmul_triton")


@needs_kernel
@pytest.mark.parametrize(
    ("t", "e", "k", "cap", "skip"),
    [
        (70, 4, 1, 30, ()),  # top-1 with drops
        (53, 5, 2, 40, (3,)),  # top-2, an expert with no tokens, a ragged tile
        (1, 3, 2, 1, ()),  # one token
    ],
)
def test_moe_grouped_triton_matches_the_float64_loop(t, e, k, cap, skip):
    (x, r, p), (x64, r64, p64) = _case(t, t, e, k, cap, 24, 40, skip=skip)
    out = K.moe_grouped_triton(x, r, p)
    assert out.shape == (t, 24) and out.dtype == torch.float32
    want = R.moe_loop(x64, r64, p64)
    u = unit_roundoff(torch.float32)
    assert_within(out, want, _moe_bound(x64, r64, p64, u, gelu_u=2 * u), "triton")
    dropped = (r64.slots < 0).all(axis=1)
    assert (out[torch.from_numpy(dropped).to(DEVICE)] == 0).all()


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision(dtype):
    (x, r, p), (x64, r64, p64) = _case(3, 40, 4, 2, 30, 16, 32, dtype=dtype)
    out = K.moe_grouped_triton(x, r, p)
    assert out.dtype == dtype
    # every operation modelled as rounding to the 16-bit dtype: a worst case (the dots
    # accumulate in float32); h is stored in it between the two launches
    u = unit_roundoff(dtype)
    want = R.moe_loop(x64, r64, p64)
    bound = _moe_bound(x64, r64, p64, u, gelu_u=2 * u, u_out=u)
    assert_within(out, want, bound, str(dtype))


@needs_kernel
def test_empty_input_and_nan_rows():
    w = torch.randn(3, 16, 16, device=DEVICE)
    empty = torch.zeros(4, dtype=torch.int64, device=DEVICE)
    none = torch.zeros(0, 16, device=DEVICE)
    assert K.grouped_matmul_triton(none, empty, w).shape == (0, 16)
    xs = torch.randn(10, 16, device=DEVICE)
    xs[4, 3] = float("nan")
    offsets = torch.tensor([0, 3, 3, 10], device=DEVICE)
    out = K.grouped_matmul_triton(xs, offsets, w, gelu=True)
    assert torch.isnan(out[4]).all()
    assert not torch.isnan(out[torch.arange(10, device=DEVICE) != 4]).any()


@needs_kernel
def test_kernel_checks_its_inputs():
    (x, r, p), _ = _case(4, 12, 3, 1, 12, 8, 16)
    order, offsets = T.sort_by_expert(r)
    xs = x[order]
    w = p["w1"]
    with pytest.raises(ValueError, match=r"w must have shape \(E, K, N\)"):
        K.grouped_matmul_triton(xs, offsets, w[0])
    with pytest.raises(ValueError, match=r"x_sorted must have shape \(M, K\) with K"):
        K.grouped_matmul_triton(xs[:, :4], offsets, w)
    with pytest.raises(TypeError, match="w must have dtype float16, bfloat16 or"):
        K.grouped_matmul_triton(xs.double(), offsets, w.double())
    with pytest.raises(TypeError, match="x_sorted must have the dtype of w"):
        K.grouped_matmul_triton(xs.half(), offsets, w)
    with pytest.raises(ValueError, match=r"bias must have shape \(E, N\) = \(3, 16\)"):
        K.grouped_matmul_triton(xs, offsets, w, p["b1"][:, :4])
    with pytest.raises(ValueError, match=r"offsets must have shape \(E\+1,\) = \(4,\)"):
        K.grouped_matmul_triton(xs, offsets[:3], w)
    bad = torch.tensor([0, 9, 3, 12], device=DEVICE)
    with pytest.raises(ValueError, match="offsets must be non-decreasing"):
        K.grouped_matmul_triton(xs, bad, w)
    with pytest.raises(TypeError, match="x_sorted must be a torch tensor"):
        K.grouped_matmul_triton(xs.cpu().numpy(), offsets, w)
    with pytest.raises(TypeError, match="gelu must be a bool"):
        K.grouped_matmul_triton(xs, offsets, w, gelu=1)
    with pytest.raises(ValueError, match="the Triton kernel has no backward"):
        K.grouped_matmul_triton(xs.clone().requires_grad_(), offsets, w)
    with pytest.raises(ValueError, match="the Triton kernel has no backward"):
        K.moe_grouped_triton(x, r, {**p, "w2": p["w2"].clone().requires_grad_()})
    with torch.no_grad():
        K.moe_grouped_triton(x.clone().requires_grad_(), r, p)  # fine without autograd
    with pytest.raises(TypeError, match="torch_ops.moe_grouped for float64"):
        K.moe_grouped_triton(x.double(), r, {key: v.double() for key, v in p.items()})
    with pytest.raises(ValueError, match="params must hold routing.n_experts = 3"):
        K.moe_grouped_triton(x, r, {key: v[:2] for key, v in p.items()})


@needs_kernel
def test_kernel_source_is_readable():
    src = K.kernel_source(K._grouped_matmul_kernel)
    assert src.startswith("@_jit") and "tl.load(tile_expert_ptr + pid_t)" in src


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
        (which, target) for which in ("up", "down") for target in ("sm_80", "sm_90")
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
    with pytest.raises(ValueError, match="selects no case"):
        K.compile_report((80,), match="no such kernel")


# ------------------------------------------------------------- the library baseline
# On the CPU, where torch 2.13 runs F.grouped_mm in float32 and 16-bit; on a GPU its
# dtypes depend on the card (bfloat16 on sm_90): the GPU check times and compares it.
needs_grouped_mm = pytest.mark.skipif(
    not L.available(), reason=f"F.grouped_mm unavailable: {L.why_unavailable()}"
)


@needs_grouped_mm
@pytest.mark.parametrize(
    ("t", "e", "k", "cap", "skip"), [(60, 4, 1, 20, ()), (45, 5, 2, 30, (1,))]
)
def test_grouped_mm_matches_moe_grouped_in_float32(t, e, k, cap, skip):
    case = _case(t + 10, t, e, k, cap, 16, 32, skip=skip, device="cpu")
    (x, r, p), (x64, r64, p64) = case
    got = L.moe_grouped_mm(x, r, p)
    ours = T.moe_grouped(x, r, p)
    assert got.dtype == torch.float32 and got.shape == (t, 16)
    want = R.moe_loop(x64, r64, p64)
    bound = _moe_bound(x64, r64, p64, unit_roundoff(torch.float32))
    # both are within the bound of the exact value, so within twice it of each other
    assert_within(got, want, bound, "grouped_mm")
    assert_within(got, ours, 2 * bound, "grouped_mm vs moe_grouped")


@needs_grouped_mm
def test_grouped_mm_in_bfloat16_and_its_gradients():
    case = _case(5, 40, 4, 2, 30, 16, 32, dtype=torch.bfloat16, device="cpu")
    (x, r, p), (x64, r64, p64) = case
    out = L.moe_grouped_mm(x, r, p)
    u = unit_roundoff(torch.bfloat16)
    want = R.moe_loop(x64, r64, p64)
    assert_within(out, want, _moe_bound(x64, r64, p64, u, u_out=u), "grouped_mm bf16")
    # differentiable: the same gradients as moe_grouped (float32, a few ulps)
    (x, r, p), _ = _case(6, 30, 4, 2, 30, 16, 32, device="cpu")
    leaves = [x, *p.values()]
    leaves = [v.clone().requires_grad_() for v in leaves]
    gates = r.gates.clone().requires_grad_()
    grads = []
    for fn in (L.moe_grouped_mm, T.moe_grouped):
        rt = Routing(r.experts, gates, r.slots, r.capacity, r.n_experts, r.probs)
        params = dict(zip(p, leaves[1:]))
        y = fn(leaves[0], rt, params)
        grads.append(torch.autograd.grad((y * y).sum(), [*leaves, gates]))
    for a, b in zip(*grads):
        # normwise: float32 GEMMs of K <= 32 terms in forward and backward
        rel = float((a - b).norm() / b.norm())
        assert rel < 1e-5, rel


def test_grouped_mm_checks_and_explains():
    if not L.available():  # pragma: no cover - torch without grouped_mm
        assert "grouped_mm" in L.why_unavailable()
        return
    assert L.why_unavailable() is None
    (x, r, p), _ = _case(7, 12, 3, 1, 12, 8, 16, device="cpu")
    r64 = _on(_routing(np.random.default_rng(0), 12, 3, 1, 12), torch.float64, "cpu")
    p64 = {key: v.double() for key, v in p.items()}
    with pytest.raises(TypeError, match="torch_ops.moe_grouped for float64"):
        L.moe_grouped_mm(x.double(), r64, p64)
    (x, r, p), _ = _case(8, 12, 3, 1, 12, 6, 16, device="cpu")
    with pytest.raises(ValueError, match="d and f must be multiples of 4 in torch"):
        L.moe_grouped_mm(x, r, p)
    with pytest.raises(ValueError, match=r"x must have shape \(T, d\) with d = 8"):
        (x, r, p), _ = _case(9, 12, 3, 1, 12, 8, 16, device="cpu")
        L.moe_grouped_mm(x[:, :4], r, p)


def test_grouped_mm_says_why_without_it(monkeypatch):
    monkeypatch.delattr(F, "grouped_mm", raising=False)
    reason = L.why_unavailable()
    assert "has no torch.nn.functional.grouped_mm" in reason and not L.available()
    (x, r, p), _ = _case(10, 4, 2, 1, 4, 8, 8, device="cpu")
    with pytest.raises(RuntimeError, match="grouped_mm cannot run here"):
        L.moe_grouped_mm(x, r, p)
