"""Tests of chapter 2's HAWQ pieces and the straight-through estimator (sections 02.5, 02.7).

Hutchinson's trace estimator against ``np.trace`` (with the estimator's own variance as the tolerance, so the
bounds are derived, not tuned), Hessian-vector products by double backprop against an explicit Hessian and
against finite differences of the gradient, per-layer traces against the closed form of a least-squares
layer, the bit allocation against brute force, and the STE: NumPy ``ste_grad`` vs the backward of torch's
``fake_quantize_ste``.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from _backends import gamma, unit_roundoff
from torch import nn

from effx_lab.quant import _np_hawq  # private helpers: brute force, the greedy switch
from effx_lab.quant import reference as QR
from effx_lab.quant import reference as R
from effx_lab.quant import torch_ops as QT
from effx_lab.quant import torch_ops as T
from effx_lab.quant._np_gptq import rtn_quantize_weight as rtn_np
from effx_lab.quant._torch_gptq import rtn_quantize_weight as rtn_torch


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny problems, many small autograd calls: one thread is faster (and far cheaper on a busy machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _spd(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    m = rng.standard_normal((n, n))
    return m @ m.T / n + 0.5 * np.eye(n)


def _hutchinson_sigma(a: np.ndarray, n_samples: int) -> float:
    """Standard deviation of the Rademacher estimate: Var(v^T A v) = 2 * sum_{i != j} A_ij^2 (A symmetric)."""
    off = a - np.diag(np.diag(a))
    return math.sqrt(2.0 * float(np.sum(off * off)) / n_samples)


# ============================================================================ Hutchinson
@pytest.mark.parametrize("n,seed", [(8, 0), (40, 1), (97, 2)])
def test_hutchinson_converges_to_trace_numpy(n, seed):
    a = _spd(n, seed)
    est, samples = R.hutchinson_trace(lambda v: a @ v, n, n_samples=2000, seed=seed, return_samples=True)
    assert samples.shape == (2000,) and samples.dtype == np.float64
    assert est == pytest.approx(float(samples.mean()), abs=0)
    sigma = _hutchinson_sigma(a, 2000)
    assert abs(est - np.trace(a)) < 4.5 * sigma
    # the empirical variance matches the closed form (a check that the probes are Rademacher)
    assert samples.std(ddof=1) == pytest.approx(sigma * math.sqrt(2000), rel=0.15)
    # and more probes help: the error with 2000 probes is below the 1-sigma error bound of 20 probes
    assert abs(est - np.trace(a)) < _hutchinson_sigma(a, 20)


def test_hutchinson_diagonal_is_exact_for_every_probe():
    d = np.random.default_rng(3).uniform(-1.0, 2.0, size=30)
    est, samples = R.hutchinson_trace(lambda v: d * v, 30, n_samples=5, return_samples=True)
    np.testing.assert_allclose(samples, d.sum(), rtol=1e-12)  # v_i^2 = 1: no variance on the diagonal
    assert est == pytest.approx(d.sum(), rel=1e-12)


def test_hutchinson_torch_matches_numpy_probe_for_probe():
    a = _spd(25, 4)
    est_np, s_np = R.hutchinson_trace(lambda v: a @ v, 25, n_samples=50, seed=7, return_samples=True)
    at = torch.from_numpy(a)
    est_t, s_t = T.hutchinson_trace(lambda v: at @ v, 25, n_samples=50, seed=7, return_samples=True)
    assert isinstance(est_t, float) and s_t.dtype == torch.float64
    np.testing.assert_allclose(s_t.numpy(), s_np, rtol=1e-12, atol=1e-12)
    assert est_t == pytest.approx(est_np, rel=1e-12)
    # float32 matrix: the callable converts, the result agrees to float32 precision. Derived bound: with the
    # probes v = +-1, each sample v^T fl32(fl32(A) v) (the dot with v in float64) is off by at most
    # u sum|A| (rounding A) + gamma_25 sum|A| (the 25-term float32 products), and so is their mean
    at32 = at.float()
    est32 = T.hutchinson_trace(lambda v: at32 @ v.to(at32), 25, n_samples=50, seed=7)
    u = unit_roundoff(np.float32)
    assert abs(est32 - est_np) <= (u + gamma(25, u)) * np.abs(a).sum() + 1e-12 * abs(est_np)
    # a different seed gives different probes
    assert T.hutchinson_trace(lambda v: at @ v, 25, n_samples=50, seed=8) != est_t


def test_hutchinson_validation():
    with pytest.raises(TypeError, match="hvp"):
        R.hutchinson_trace(np.eye(3), 3)
    with pytest.raises(ValueError, match="dim"):
        R.hutchinson_trace(lambda v: v, 0)
    with pytest.raises(ValueError, match="n_samples"):
        T.hutchinson_trace(lambda v: v, 3, n_samples=0)
    with pytest.raises(ValueError, match="hvp must return"):
        R.hutchinson_trace(lambda v: v[:2], 3)
    with pytest.raises(ValueError, match="hvp must return"):
        T.hutchinson_trace(lambda v: v.numpy(), 3)
    with pytest.raises(ValueError, match="non-finite"):
        R.hutchinson_trace(lambda v: v * np.nan, 3)


# ============================================================================ linear layer Hessian
def test_linear_layer_hessian_closed_form_and_hutchinson():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((4, 9, 6))  # [..., in]: 36 tokens
    h = R.linear_layer_hessian(x)
    xf = x.reshape(-1, 6)
    np.testing.assert_allclose(h, 2 * xf.T @ xf / 36, rtol=1e-12)
    np.testing.assert_allclose(T.linear_layer_hessian(torch.from_numpy(x)).numpy(), h, rtol=1e-12)
    assert R.linear_layer_hessian(x.astype(np.float32)).dtype == np.float32
    # Hessian of L(W) = ||X W^T - Y||^2 / n w.r.t. vec(W) (W: [out=3, in=6]) is kron(I_3, H): check both
    w = rng.standard_normal((3, 6))
    y = rng.standard_normal((36, 3))

    xf_t, y_t = torch.from_numpy(xf), torch.from_numpy(y)

    def loss(wflat):
        r = xf_t @ wflat.reshape(3, 6).T - y_t
        return (r * r).sum() / 36

    h_full = torch.autograd.functional.hessian(loss, torch.from_numpy(w.ravel())).numpy()
    np.testing.assert_allclose(h_full, np.kron(np.eye(3), h), rtol=1e-10, atol=1e-12)
    kron = np.kron(np.eye(3), h)
    est = R.hutchinson_trace(lambda v: (v.reshape(3, 6) @ h).ravel(), 18, n_samples=3000, seed=1)
    assert abs(est - 3 * np.trace(h)) < 4.5 * _hutchinson_sigma(kron, 3000)


def test_linear_layer_hessian_validation():
    with pytest.raises(ValueError, match="x must have"):
        R.linear_layer_hessian(np.ones(4))
    with pytest.raises(TypeError, match="x must"):
        T.linear_layer_hessian(np.ones((2, 4)))


# ============================================================================ Hessian-vector products
class _TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.fc1 = nn.Linear(4, 3).double()
        self.fc2 = nn.Linear(3, 2).double()
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.tanh(self.fc1(x)))


def _tiny_problem():
    net = _TinyNet()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(16, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 2, (16,), generator=g)
    return net, (lambda: nn.functional.cross_entropy(net(x), y)), x, y


def test_hvp_fn_matches_explicit_hessian():
    net, loss_fn, x, y = _tiny_problem()
    params = list(net.parameters())
    sizes = [p.numel() for p in params]
    theta = torch.cat([p.detach().reshape(-1) for p in params])

    def loss_of(flat):
        pieces = [c.view_as(p) for c, p in zip(flat.split(sizes), params)]
        w1, b1, w2, b2 = pieces
        logits = torch.tanh(x @ w1.T + b1) @ w2.T + b2
        return nn.functional.cross_entropy(logits, y)

    h = torch.autograd.functional.hessian(loss_of, theta)
    hvp = T.hvp_fn(loss_fn, params)
    assert hvp.dim == theta.numel() == 23 and hvp.dtype == torch.float64
    cols = torch.stack([hvp(e) for e in torch.eye(hvp.dim, dtype=torch.float64)], dim=1)
    torch.testing.assert_close(cols, h, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(cols, cols.T, rtol=1e-10, atol=1e-12)  # symmetric, as a Hessian must be
    # Hutchinson through hvp_fn vs the exact trace
    est = T.hutchinson_trace(hvp, hvp.dim, n_samples=100, seed=0)
    assert abs(est - float(torch.trace(h))) < 4.5 * _hutchinson_sigma(h.numpy(), 100)


def test_hvp_fn_gradcheck_like_finite_differences():
    """H v against the central difference of the gradient along v (float64): a gradcheck one order up."""
    net, loss_fn, _, _ = _tiny_problem()
    params = list(net.parameters())
    hvp = T.hvp_fn(loss_fn, params)
    v = torch.randn(hvp.dim, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    hv = hvp(v)  # before the parameters are shifted in place below
    eps = 1e-5

    def grad_at(shift):
        with torch.no_grad():
            for p, s in zip(params, shift.split([p.numel() for p in params])):
                p.add_(s.view_as(p))
        g = torch.autograd.grad(loss_fn(), params)
        with torch.no_grad():
            for p, s in zip(params, shift.split([p.numel() for p in params])):
                p.sub_(s.view_as(p))
        return torch.cat([t.reshape(-1) for t in g])

    fd = (grad_at(eps * v) - grad_at(-eps * v)) / (2 * eps)
    torch.testing.assert_close(hv, fd, rtol=1e-6, atol=1e-8)


def test_hvp_fn_zero_blocks_and_validation():
    a = torch.tensor([1.0, 2.0], dtype=torch.float64, requires_grad=True)
    b = torch.tensor([3.0], dtype=torch.float64, requires_grad=True)
    c = torch.tensor([1.0], dtype=torch.float64, requires_grad=True)  # unused
    hvp = T.hvp_fn(lambda: (a**2).sum() * 1.5 + 4.0 * b.sum(), [a, b, c])  # linear in b: zero block
    np.testing.assert_allclose(hvp(torch.tensor([1.0, 1.0, 1.0, 1.0])).numpy(), [3.0, 3.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="v must be"):
        hvp(torch.ones(3))
    with pytest.raises(TypeError, match="params"):
        T.hvp_fn(lambda: a.sum(), a)
    with pytest.raises(TypeError, match=r"params\[0\]"):
        T.hvp_fn(lambda: a.sum(), [a.detach()])
    with pytest.raises(ValueError, match="scalar"):
        T.hvp_fn(lambda: a * 2, [a])
    with pytest.raises(TypeError, match="loss_fn"):
        T.hvp_fn(3.0, [a])


# ============================================================================ per-layer traces
class _TwoRegressions(nn.Module):
    """Two independent least-squares layers; the second sees inputs 3x larger, so its Hessian is 9x larger."""

    def __init__(self) -> None:
        super().__init__()
        self.small = nn.Linear(5, 4, bias=False).double()
        self.large = nn.Linear(5, 4, bias=False).double()


def test_layer_traces_closed_form_and_ranking():
    model = _TwoRegressions()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 5, generator=g, dtype=torch.float64)
    t1 = torch.randn(64, 4, generator=g, dtype=torch.float64)
    t2 = torch.randn(64, 4, generator=g, dtype=torch.float64)

    def loss_fn():
        r1 = model.small(x) - t1
        r2 = model.large(3 * x) - t2
        return (r1 * r1).sum() / 64 + (r2 * r2).sum() / 64

    layers = {"small": model.small, "large": model.large}
    traces = T.layer_traces(model, loss_fn, layers, n_samples=100, seed=1)
    assert set(traces) == {"small", "large"} and all(isinstance(v, float) for v in traces.values())
    h_small = R.linear_layer_hessian(x.numpy())
    for name, h in (("small", h_small), ("large", 9 * h_small)):
        exact = 4 * np.trace(h)  # kron(I_out, H): out * tr(H)
        assert traces[name] > 0
        assert abs(traces[name] - exact) < 4.5 * _hutchinson_sigma(np.kron(np.eye(4), h), 100)
    assert traces["large"] > 5 * traces["small"]  # ranking (exactly 9x in expectation)


def test_layer_traces_tinylm_consistent_and_validation():
    from effx_lab.models import TinyLMConfig
    from effx_lab.models.torch_ops import TinyLM

    cfg = TinyLMConfig(d_model=16, n_layers=1, n_heads=2, max_seq_len=16)
    model = TinyLM.from_config(cfg, seed=0)
    tokens = torch.randint(0, 256, (4, 16), generator=torch.Generator().manual_seed(0))

    def loss_fn():
        logits = model(tokens[:, :-1])
        return nn.functional.cross_entropy(logits.reshape(-1, 256), tokens[:, 1:].reshape(-1))

    layers = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    traces = T.layer_traces(model, loss_fn, layers, n_samples=3)
    assert list(traces) == list(layers) and all(math.isfinite(v) for v in traces.values())
    # each trace is Hutchinson on that layer's own Hessian block, with the same probes: proved in float64 (the
    # two computations build different autograd graphs, whose float32 roundings need not match)
    model.double()
    traces64 = T.layer_traces(model, loss_fn, layers, n_samples=3)
    w = layers["layers.0.mlp.fc2"].weight
    assert w.dtype == torch.float64
    alone = T.hutchinson_trace(T.hvp_fn(loss_fn, [w]), w.numel(), n_samples=3)
    assert traces64["layers.0.mlp.fc2"] == pytest.approx(alone, rel=1e-10, abs=1e-14)
    model.float()
    with pytest.raises(ValueError, match="submodule"):
        T.layer_traces(model, loss_fn, {"x": nn.Linear(2, 2)})
    with pytest.raises(TypeError, match="layers"):
        T.layer_traces(model, loss_fn, {})
    with pytest.raises(ValueError, match="weight"):
        T.layer_traces(model, loss_fn, {"ln": model.ln_f, "act": model.layers[0].mlp})


# ============================================================================ bit allocation
def _objective(sens, n_params, bits, choices):
    idx = [choices.index(b) for b in bits]
    return sum(sens[i][c] for i, c in enumerate(idx)), sum(n * b for n, b in zip(n_params, bits))


def test_allocate_bits_exact_vs_brute_force():
    rng = np.random.default_rng(0)
    for case in range(40):
        n_layers = int(rng.integers(1, 7))
        choices = tuple(sorted(rng.choice([2, 3, 4, 5, 6, 8], size=int(rng.integers(2, 5)), replace=False).tolist()))
        n_params = rng.integers(1, 50, size=n_layers).tolist()
        # sensitivity decreasing in bits (as real ones are), with random scales per layer
        sens = (rng.uniform(0.1, 10, size=(n_layers, 1)) * np.exp(-np.array(choices)[None, :] * 0.7)).tolist()
        if case % 4 == 0:  # also arbitrary (non-monotone) costs
            sens = rng.uniform(0, 1, size=(n_layers, len(choices))).tolist()
        lo, hi = min(choices) * sum(n_params), max(choices) * sum(n_params)
        budget = float(rng.uniform(lo, hi + 5))
        bits = R.allocate_bits(sens, n_params, budget, choices)
        assert len(bits) == n_layers and all(b in choices for b in bits)
        value, cost = _objective(sens, n_params, bits, choices)
        assert cost <= budget
        best_value, _ = _objective(sens, n_params, _np_hawq._brute_force_allocation(sens, n_params, budget, choices), choices)
        assert value == pytest.approx(best_value, rel=1e-12, abs=1e-12)
        assert T.allocate_bits(torch.tensor(sens), n_params, budget, choices) == bits


def test_allocate_bits_edges_and_greedy(monkeypatch):
    sens = [[4.0, 1.0, 0.5, 0.0], [8.0, 3.0, 1.0, 0.0], [1.0, 0.5, 0.2, 0.0]]
    n = [10, 20, 30]
    assert R.allocate_bits(sens, n, 2 * 60) == [2, 2, 2]  # exactly the minimum budget
    assert R.allocate_bits(sens, n, 8 * 60) == [8, 8, 8]  # everything fits
    with pytest.raises(ValueError, match="infeasible"):
        R.allocate_bits(sens, n, 2 * 60 - 1)
    with pytest.raises(ValueError, match="sensitivity"):
        R.allocate_bits([[1.0, 2.0]], [10], 100)
    with pytest.raises(ValueError, match="n_params"):
        R.allocate_bits(sens, [10, 20], 500)
    with pytest.raises(ValueError, match="choices"):
        R.allocate_bits(sens, n, 500, choices=(2, 2, 4, 8))
    with pytest.raises(TypeError, match="budget_bits"):
        R.allocate_bits(sens, n, "100")
    # the greedy fallback (forced): still feasible, never worse than all-minimum, here optimal too
    monkeypatch.setattr(_np_hawq, "_MAX_STATES", 1)
    rng = np.random.default_rng(1)
    for _ in range(10):
        s = (rng.uniform(0.1, 10, size=(5, 1)) * np.exp(-np.array([2, 3, 4, 8])[None, :] * 0.7)).tolist()
        npar = rng.integers(1, 40, size=5).tolist()
        budget = float(rng.uniform(2 * sum(npar), 8 * sum(npar)))
        bits = R.allocate_bits(s, npar, budget)
        value, cost = _objective(s, npar, bits, [2, 3, 4, 8])
        assert cost <= budget
        assert value <= sum(row[0] for row in s)


def test_allocate_bits_large_problem_is_fast_and_feasible():
    """24 layers x 4 choices (2.8e14 combinations): the Pareto front keeps it exact and quick."""
    rng = np.random.default_rng(2)
    n_params = [128 * 384, 128 * 128, 128 * 512, 512 * 128] * 6
    sens = (rng.uniform(0.1, 10, size=(24, 1)) * np.exp(-np.array([2, 3, 4, 8])[None, :] * 0.7)).tolist()
    budget = 4 * sum(n_params)
    bits = R.allocate_bits(sens, n_params, budget)
    value, cost = _objective(sens, n_params, bits, [2, 3, 4, 8])
    assert cost <= budget
    assert value <= _objective(sens, n_params, [4] * 24, [2, 3, 4, 8])[0] + 1e-12  # beats uniform 4 bits


# ============================================================================ HAWQ sensitivity
def test_hawq_sensitivity_formula_and_backends():
    rng = np.random.default_rng(3)
    weights = [rng.standard_normal((8, 64)), rng.standard_normal((16, 32)) * 0.1]
    traces = [2.0, 50.0]
    for group_size in (None, 16):
        sens = R.hawq_sensitivity(traces, weights, group_size=group_size)
        assert len(sens) == 2 and all(len(row) == 4 for row in sens)
        for t, w, row in zip(traces, weights, sens):
            for b, s in zip((2, 3, 4, 8), row):
                err = rtn_np(w, bits=b, group_size=group_size) - w
                assert s == pytest.approx(t / w.size * float(np.sum(err**2)), rel=1e-12)
            assert row[0] > row[1] > row[2] > row[3] > 0  # more bits, less damage
        sens_t = T.hawq_sensitivity(torch.tensor(traces), [torch.from_numpy(w) for w in weights], group_size=group_size)
        np.testing.assert_allclose(sens_t, sens, rtol=1e-9)
    # the trace scales the sensitivity linearly
    s1 = R.hawq_sensitivity([1.0], weights[:1], choices=(3,))
    s2 = R.hawq_sensitivity([10.0], weights[:1], choices=(3,))
    assert s2[0][0] == pytest.approx(10 * s1[0][0])
    w32 = torch.from_numpy(weights[0]).float()
    err32 = rtn_torch(w32, bits=4).double() - w32.double()
    assert T.hawq_sensitivity([1.0], [w32], choices=(4,))[0][0] == pytest.approx(float((err32**2).mean()), rel=1e-9)
    with pytest.raises(ValueError, match="weights"):
        R.hawq_sensitivity([1.0, 2.0], weights[:1])
    with pytest.raises(ValueError, match=r"traces\[0\]"):
        R.hawq_sensitivity([math.nan], weights[:1])


# ============================================================================ the straight-through estimator
def _schemes(shape):
    out = [{"granularity": "tensor"}, {"granularity": "channel", "axis": 0}, {"granularity": "channel", "axis": -1}]
    out.append({"granularity": "group", "axis": -1, "group_size": 4})
    return out


@pytest.mark.parametrize("shape", [(12,), (6, 8), (3, 4, 8)])
@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "affine"])
def test_fake_quantize_ste_forward_and_backward_match_numpy(shape, symmetric):
    rng = np.random.default_rng(len(shape) + 10 * symmetric)
    for dtype in (np.float32, np.float64):
        x = (rng.standard_normal(shape) * 2 + 0.3).astype(dtype)
        g = rng.standard_normal(shape).astype(dtype)
        for scheme, bits in itertools.product(_schemes(shape), (2, 4, 8)):
            xt = torch.from_numpy(x.copy()).requires_grad_(True)
            out = T.fake_quantize_ste(xt, bits, symmetric, **scheme)
            assert out.dtype == xt.dtype and out.shape == xt.shape
            assert torch.equal(out.detach(), QT.fake_quantize(xt.detach(), bits, symmetric, **scheme))
            out.backward(torch.from_numpy(g))
            qp = QR.compute_qparams(x, bits, symmetric, **scheme)
            expected = R.ste_grad(x, g, qp)
            assert expected.dtype == dtype
            np.testing.assert_array_equal(xt.grad.numpy(), expected)
            # min/max calibration never clips: the straight-through gradient is the identity
            np.testing.assert_array_equal(expected, g)
            # the torch ste_grad agrees too
            qpt = QT.compute_qparams(xt.detach(), bits, symmetric, **scheme)
            np.testing.assert_array_equal(T.ste_grad(xt.detach(), torch.from_numpy(g), qpt).numpy(), expected)


@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "affine"])
def test_ste_grad_clips_outside_a_fixed_range(symmetric):
    rng = np.random.default_rng(4)
    calib = rng.uniform(-1.0, 1.0, size=(4, 16))
    x = rng.standard_normal((4, 16)) * 2.0  # many values outside [-1, 1]
    g = rng.standard_normal((4, 16))
    qp = QR.compute_qparams(calib, 4, symmetric, "channel", axis=0)
    grad = R.ste_grad(x, g, qp)
    scale, zp = QR.expand_qparams(qp, x.shape)
    # the clipping mask is a rounding decision (round(x / scale) + z in [qmin, qmax]); PyTorch's float32 op below
    # agrees with this float64 one exactly because no x / scale + z lies near the boundaries qmin - 1/2, qmax + 1/2
    # (>= 0.18 steps for these seeds, far beyond float32 rounding)
    v = x / scale + zp
    assert np.minimum(np.abs(v - (qp.qmin - 0.5)), np.abs(v - (qp.qmax + 0.5))).min() > 1e-3
    lo, hi = (qp.qmin - zp) * scale, (qp.qmax - zp) * scale
    # inside the representable range: passes; beyond it by more than half a step: blocked
    inside = (x >= lo) & (x <= hi)
    outside = (x < lo - scale / 2) | (x > hi + scale / 2)
    assert inside.sum() > 10 and outside.sum() > 10
    np.testing.assert_array_equal(grad[inside], g[inside])
    np.testing.assert_array_equal(grad[outside], 0.0)
    # where the gradient passes, fake-quantize with these fixed parameters is not saturated
    x_hat = QR.dequantize(QR.quantize(x, qp), qp)
    scale_full = np.broadcast_to(scale, x.shape)
    assert np.all(np.abs(x_hat - x)[grad != 0] <= scale_full[grad != 0] / 2 + 1e-12)
    # torch agrees, and so does PyTorch's own fake-quantize op (per channel, same integer-domain mask)
    qpt = QT.compute_qparams(torch.from_numpy(calib), 4, symmetric, "channel", axis=0)
    np.testing.assert_array_equal(T.ste_grad(torch.from_numpy(x), torch.from_numpy(g), qpt).numpy(), grad)
    xt = torch.from_numpy(x).float().requires_grad_(True)
    ref = torch.fake_quantize_per_channel_affine(
        xt, qpt.scale.reshape(-1).float(), qpt.zero_point.reshape(-1), 0, qp.qmin, qp.qmax
    )
    ref.backward(torch.from_numpy(g).float())
    np.testing.assert_array_equal(xt.grad.numpy() != 0, grad != 0)


def test_ste_validation():
    x = np.ones((2, 4))
    qp = QR.compute_qparams(x)
    with pytest.raises(ValueError, match="grad_out"):
        R.ste_grad(x, np.ones((4, 2)), qp)
    with pytest.raises(TypeError, match="qparams"):
        R.ste_grad(x, x, QT.compute_qparams(torch.ones(2, 4)))
    with pytest.raises(ValueError, match="does not match qparams"):
        R.ste_grad(np.ones((3, 4)), np.ones((3, 4)), QR.compute_qparams(x, granularity="channel", axis=0))
    with pytest.raises(TypeError, match="grad_out"):
        T.ste_grad(torch.ones(2, 4), np.ones((2, 4)), QT.compute_qparams(torch.ones(2, 4)))
    with pytest.raises(TypeError, match="x must be a torch tensor"):
        T.fake_quantize_ste(np.ones(3))
    with pytest.raises(ValueError, match="bits"):
        T.fake_quantize_ste(torch.ones(3), bits=1)


# ------------------------------------------------- the 1/n of H = 2 X^T X / n (02.5, GPTQ)
@pytest.mark.parametrize("c", [4.0, 1 / 64])
def test_gptq_codes_do_not_depend_on_the_scale_of_h(c):
    """02.5 says the 1/n of the layer Hessian cancels in GPTQ, because the damping is
    relative (damp * mean(diag H)): c H gives the same codes, only the loss scales by c.
    Powers of 4 keep every step exact (sqrt(c) is a power of 2), so the codes must be
    identical, in both faces."""
    gen = np.random.default_rng(3)
    x = gen.normal(size=(96, 24)) @ (np.eye(24) + 0.5 * gen.normal(size=(24, 24)))
    w = gen.normal(size=(10, 24))
    h = R.gptq_hessian(x)
    for kw in ({}, {"group_size": 8, "act_order": True}):
        base = R.gptq_quantize(w, h, bits=3, **kw)
        scaled = R.gptq_quantize(w, c * h, bits=3, **kw)
        assert np.array_equal(base.q, scaled.q)
        assert scaled.loss == pytest.approx(c * base.loss, rel=1e-12)
        base_t = T.gptq_quantize(torch.as_tensor(w), torch.as_tensor(h), bits=3, **kw)
        scaled_t = T.gptq_quantize(torch.as_tensor(w), torch.as_tensor(c * h), bits=3,
                                   **kw)
        assert torch.equal(base_t.q, scaled_t.q)
    # absolute damping (lambda fixed, not relative to H) would not cancel: the same
    # lambda on c H is a different problem, and its codes differ
    lam = 0.5 * np.mean(np.diag(h))
    plain = R.gptq_quantize(w, h + lam * np.eye(24), bits=3, damp=0.0)
    shrunk = R.gptq_quantize(w, c * h + lam * np.eye(24), bits=3, damp=0.0)
    assert not np.array_equal(plain.q, shrunk.q)
