"""The fused / blocked weight-only linears behind torch_ops.w8a16_linear and w4a16_linear
(effx_lab.quant._torch_fused): agreement with the NumPy reference in float64, the eager fallback (forced by
EFFX_NO_COMPILE, or by a compiler that fails), the routes, and one compiled case (slow: a compile takes
seconds, tens of seconds on a loaded 2-core machine). Never timings."""

from __future__ import annotations

import shutil
import warnings

import numpy as np
import pytest
import torch
from _backends import abs_matmul, assert_within, gamma, unit_roundoff

from effx_lab.quant import _np_gptq as R
from effx_lab.quant import _torch_fused as FU
from effx_lab.quant import _torch_gptq as T


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a))


def _int8(rng, n, k):
    w = rng.normal(size=(n, k))
    q, s = R.quantize_weight_int8(w)
    return q, s, q * s[:, None]


def _int4(rng, n, k, g):
    w = rng.normal(size=(n, k))
    p, s = R.quantize_weight_int4(w, g)
    w_hat = (R.unpack_int4(p).reshape(n, k // g, g) * s[:, :, None]).reshape(n, k)
    return p, s, w_hat


@pytest.fixture
def fresh(monkeypatch):
    """An empty compile cache and state, the env var unset, restored afterwards."""
    monkeypatch.setattr(FU, "_compiled", {})
    monkeypatch.setattr(FU, "_state", {"failure": None, "warned": None})
    monkeypatch.delenv(FU.ENV_NO_COMPILE, raising=False)
    return FU


# ---------------------------------------------------------------------------- the fused formula, eagerly
@pytest.mark.parametrize("m", [1, 3])
def test_fused_expressions_match_reference_float64(m):
    """The expressions torch.compile fuses, run eagerly (same math, no compile): float64 to rounding."""
    rng = np.random.default_rng(m)
    n, k, g = 37, 96, 32  # K not a multiple of 64, N odd, 3 groups
    x = rng.normal(size=(m, k))
    q, s, w8 = _int8(rng, n, k)
    y = FU._w8_expr(_t(x), _t(q), _t(s))
    np.testing.assert_allclose(y.numpy(), R.w8a16_linear(x, q, s), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(y.numpy(), x @ w8.T, rtol=1e-11, atol=1e-12)
    p, s4, w4 = _int4(rng, n, k, g)
    xe, xo = _t(x[:, 0::2]), _t(x[:, 1::2])
    y4 = FU._w4_expr(xe, xo, _t(p), _t(s4))
    np.testing.assert_allclose(y4.numpy(), R.w4a16_linear(x, p, s4, g), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(y4.numpy(), x @ w4.T, rtol=1e-11, atol=1e-12)


def test_fused_expression_propagates_nan():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(2, 16))
    x[1, 3] = np.nan
    p, s, _ = _int4(rng, 4, 16, 8)
    s = s.copy()
    s[2, 1] = np.nan
    y = FU._w4_expr(_t(x[:, 0::2]), _t(x[:, 1::2]), _t(p), _t(s)).numpy()
    assert np.isnan(y[1]).all() and np.isnan(y[:, 2]).all()
    assert np.isfinite(np.delete(y[0], 2)).all()


# ---------------------------------------------------------------------------- the blocked (eager) path
@pytest.mark.parametrize("m", [1, 5, 40])
def test_blocked_paths_match_reference_float64(monkeypatch, m):
    """Several row blocks, the last one partial; M = 1, a few rows and prefill-sized."""
    monkeypatch.setattr(FU, "BLOCK_BYTES", 7 * 64 * 8)  # 7 float64 rows of K = 64 per block
    rng = np.random.default_rng(10 + m)
    n, k, g = 30, 64, 16
    x = rng.normal(size=(m, k))
    q, s, _ = _int8(rng, n, k)
    assert FU._block_rows(k, torch.float64) == 7
    y8 = FU._w8_blocked(_t(x), _t(q), _t(s))
    np.testing.assert_allclose(y8.numpy(), R.w8a16_linear(x, q, s), rtol=1e-12, atol=1e-12)
    p, s4, _ = _int4(rng, n, k, g)
    y4 = FU._w4_blocked(_t(x), _t(p), _t(s4))
    np.testing.assert_allclose(y4.numpy(), R.w4a16_linear(x, p, s4, g), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("m", [1, 8, 20])
def test_public_linears_every_route_float64(fresh, monkeypatch, m):
    """Through the public functions (bias, leading dims): blocked (1 and 8 rows, several blocks) and the
    prefill path (20 rows: dequantize, then one GEMM) agree with the reference in float64."""
    monkeypatch.setattr(FU, "BLOCK_BYTES", 5 * 64 * 8)
    rng = np.random.default_rng(20 + m)
    n, k, g = 23, 64, 16
    x, b = rng.normal(size=(m, 1, k)), rng.normal(size=n)
    q, s, _ = _int8(rng, n, k)
    p, s4, _ = _int4(rng, n, k, g)
    y8 = T.w8a16_linear(_t(x), _t(q), _t(s), _t(b))
    assert y8.shape == (m, 1, n)
    np.testing.assert_allclose(y8.numpy(), R.w8a16_linear(x, q, s, b), rtol=1e-12, atol=1e-12)
    y4 = T.w4a16_linear(_t(x), _t(p), _t(s4), g, _t(b))
    np.testing.assert_allclose(y4.numpy(), R.w4a16_linear(x, p, s4, g, b), rtol=1e-12, atol=1e-12)
    assert FU._compiled == {}  # small weights: nothing compiled


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_public_linears_low_precision_within_bound(monkeypatch, dtype):
    """float32 / bfloat16 activations through the public functions (blocked path, several blocks), against the
    float64 product: within (4 u + gamma_K(u32)) |x| |W_hat|^T + 2 u |b| (as test_quant_gptq derives)."""
    monkeypatch.setattr(FU, "BLOCK_BYTES", 4 * 128 * 4)
    rng = np.random.default_rng(7)
    n, k, g = 21, 128, 32
    x, b = rng.normal(size=(2, 3, k)), rng.normal(size=n)
    xr = _t(x).to(dtype).double().numpy()  # what the function sees
    u = unit_roundoff(dtype)
    q, s, w8 = _int8(rng, n, k)
    p, s4, w4 = _int4(rng, n, k, g)
    for y, w_hat in (
        (T.w8a16_linear(_t(x).to(dtype), _t(q), _t(s).float(), _t(b).to(dtype)), w8),
        (T.w4a16_linear(_t(x).to(dtype), _t(p), _t(s4).float(), g, _t(b).to(dtype)), w4),
    ):
        assert y.dtype == dtype and y.shape == (2, 3, n)
        bound = (4 * u + gamma(k, unit_roundoff(torch.float32))) * abs_matmul(xr, w_hat.T) + 2 * u * np.abs(b)
        assert_within(y.double().numpy(), xr @ w_hat.T + b, bound, f"weight-only linear {dtype}")


def test_env_var_forces_eager_same_result(fresh, monkeypatch):
    monkeypatch.setenv(FU.ENV_NO_COMPILE, "1")
    monkeypatch.setattr(FU, "FUSED_MIN_WEIGHTS", 1)  # would be fused by size
    assert FU.fused_backend() == "eager: EFFX_NO_COMPILE=1 is set"
    assert FU.route(1, 10**6) == "blocked (eager: EFFX_NO_COMPILE=1 is set)"
    rng = np.random.default_rng(2)
    x = rng.normal(size=(1, 48))
    q, s, _ = _int8(rng, 9, 48)
    y = T.w8a16_linear(_t(x), _t(q), _t(s))
    np.testing.assert_allclose(y.numpy(), R.w8a16_linear(x, q, s), rtol=1e-12, atol=1e-12)
    assert FU._compiled == {}  # nothing was compiled
    monkeypatch.setenv(FU.ENV_NO_COMPILE, "0")  # "0" means: not forced
    assert FU._env_off() is False


def test_routes(fresh, monkeypatch):
    assert FU.route(0, 10**7) == "blocked (eager)"  # empty x
    assert FU.route(FU.BLOCKED_MAX_ROWS, 10) == "blocked (eager)"  # decode rows, small weight
    assert FU.route(FU.BLOCKED_MAX_ROWS + 1, 10**7) == "dequantize + matmul"  # prefill
    assert FU.route(1, FU.FUSED_MIN_WEIGHTS - 1) == "blocked (eager)"  # small weight: no compile
    assert FU.route(1, 10**7, "cuda") == "dequantize + matmul"
    assert FU.fused_backend("cpu", probe=False) == "untried"
    assert FU.fused_backend("cuda").startswith("eager: on cuda")
    with pytest.raises(ValueError, match="rows must be an int >= 0, got -1"):
        FU.route(-1, 10)
    with pytest.raises(TypeError, match="rows must be an int, got 1.5"):
        FU.route(1.5, 10)
    with pytest.raises(ValueError, match="weight_elems must be an int >= 1, got 0"):
        FU.route(1, 0)
    with pytest.raises(ValueError, match="device must be a torch device"):
        FU.fused_backend("gpu0")
    with pytest.raises(TypeError, match="device must be a str or torch.device, got int"):
        FU.fused_backend(3)
    with pytest.raises(TypeError, match="probe must be a bool"):
        FU.fused_backend("cpu", probe="yes")


def test_compile_refused_falls_back_once_with_a_warning(fresh, monkeypatch):
    def refuse(*args, **kwargs):
        raise RuntimeError("no compiler here\nsecond line")

    monkeypatch.setattr(torch, "compile", refuse)
    monkeypatch.setattr(FU, "FUSED_MIN_WEIGHTS", 1)
    rng = np.random.default_rng(4)
    x = rng.normal(size=(2, 32))
    p, s, _ = _int4(rng, 6, 32, 16)
    with pytest.warns(RuntimeWarning, match="torch.compile refused it .RuntimeError: no compiler here."):
        y = T.w4a16_linear(_t(x), _t(p), _t(s), 16)
    np.testing.assert_allclose(y.numpy(), R.w4a16_linear(x, p, s, 16), rtol=1e-12, atol=1e-12)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once: no second warning
        T.w4a16_linear(_t(x), _t(p), _t(s), 16)
    assert FU.fused_backend() == "eager: torch.compile refused it (RuntimeError: no compiler here)"
    assert FU.route(1, 10**7).startswith("blocked (eager: torch.compile refused it")


def test_compile_failing_on_first_call_falls_back(fresh, monkeypatch):
    def broken(fn, **kwargs):
        def call(*args):
            raise RuntimeError("InvalidCxxCompiler: no working C++ compiler found")

        return call

    monkeypatch.setattr(torch, "compile", broken)
    monkeypatch.setattr(FU, "FUSED_MIN_WEIGHTS", 1)
    rng = np.random.default_rng(6)
    x = rng.normal(size=(1, 24))
    q, s, _ = _int8(rng, 5, 24)
    with pytest.warns(RuntimeWarning, match="compiling failed"):
        y = T.w8a16_linear(_t(x), _t(q), _t(s))
    np.testing.assert_allclose(y.numpy(), R.w8a16_linear(x, q, s), rtol=1e-12, atol=1e-12)
    assert FU._compiled == {} and FU.fused_backend().startswith("eager: compiling failed (RuntimeError")


def test_gradient_takes_the_plain_path(fresh, monkeypatch):
    """A call that needs d/dx stays differentiable (dequantize + matmul), never the inference-only paths."""
    monkeypatch.setattr(FU, "FUSED_MIN_WEIGHTS", 1)
    monkeypatch.setenv(FU.ENV_NO_COMPILE, "1")
    rng = np.random.default_rng(8)
    q, s, w8 = _int8(rng, 7, 16)
    p, s4, w4 = _int4(rng, 7, 16, 8)
    for call, w_hat in ((lambda x: T.w8a16_linear(x, _t(q), _t(s)), w8),
                        (lambda x: T.w4a16_linear(x, _t(p), _t(s4), 8), w4)):  # fmt: skip
        x = torch.randn(3, 16, dtype=torch.float64, requires_grad=True)
        call(x).sum().backward()
        np.testing.assert_allclose(x.grad.numpy(), np.tile(w_hat.sum(0), (3, 1)), rtol=1e-12)


# ---------------------------------------------------------------------------- one compiled case
@pytest.mark.slow
@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None, reason="no C++ compiler")
def test_compiled_fused_paths_match_reference(fresh, monkeypatch):
    """Compiled (float64, M = 1 and 2, bias, K = 96 with groups of 32): same results as the reference; then the
    float32 activations through the same compiled kernel family within the derived bound."""
    monkeypatch.setattr(FU, "FUSED_MIN_WEIGHTS", 1)
    rng = np.random.default_rng(11)
    n, k, g = 37, 96, 32
    q, s, w8 = _int8(rng, n, k)
    p, s4, w4 = _int4(rng, n, k, g)
    b = rng.normal(size=n)
    for m in (1, 2):
        x = rng.normal(size=(m, k))
        y8 = T.w8a16_linear(_t(x), _t(q), _t(s), _t(b))
        np.testing.assert_allclose(y8.numpy(), R.w8a16_linear(x, q, s, b), rtol=1e-12, atol=1e-12)
        y4 = T.w4a16_linear(_t(x), _t(p), _t(s4), g, _t(b))
        np.testing.assert_allclose(y4.numpy(), R.w4a16_linear(x, p, s4, g, b), rtol=1e-12, atol=1e-12)
    assert FU.fused_backend() == "compiled", FU._state
    keys = set(FU._compiled)
    assert {("int8", torch.float64, 1, n, k, 1), ("int4", torch.float64, 2, n, k, k // g)} <= keys
    # the same shapes again: no new compile
    T.w8a16_linear(_t(x), _t(q), _t(s))
    assert set(FU._compiled) == keys
    # float32 x, fused with float32 accumulation: (2 u + gamma_K) |x| |W_hat|^T + 2 u |b|
    x32 = _t(rng.normal(size=(1, k))).float()
    xr = x32.double().numpy()
    u = unit_roundoff(torch.float32)
    y = T.w4a16_linear(x32, _t(p), _t(s4).float(), g, _t(b).float())
    assert ("int4", torch.float32, 1, n, k, k // g) in FU._compiled and y.dtype == torch.float32
    bound = (4 * u + gamma(k, u)) * abs_matmul(xr, w4.T) + 2 * u * np.abs(b)
    assert_within(y.double().numpy(), xr @ w4.T + b, bound, "compiled w4a16 float32")
