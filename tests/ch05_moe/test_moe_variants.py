"""Task-level routing and PR-MoE (effx_lab.moe, topic ``variants``): both faces agree in
float64, the byte counts and parameter counts match hand counts, PR-MoE is the MLP plus
the gated expert (the MLP alone for a dropped token), the pyramid follows the paper's
32/64 schedule, and bad input is named in both faces."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from effx_lab.models.reference import gelu_tanh
from effx_lab.moe import reference as R
from effx_lab.moe import torch_ops as T

D, F_, E = 6, 10, 5
TABLE = np.array([[0, 3], [2, 1], [4, 0]], dtype=np.int64)


def tt(p):
    if isinstance(p, dict):
        return {k: torch.from_numpy(v) for k, v in p.items()}
    return torch.from_numpy(p)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def pr_params(rng, e=E):
    return {
        "w1": rng.normal(size=(e, D, F_)),
        "b1": rng.normal(size=(e, F_)),
        "w2": rng.normal(size=(e, F_, D)),
        "b2": rng.normal(size=(e, D)),
        "mlp_w1": rng.normal(size=(D, F_)),
        "mlp_b1": rng.normal(size=F_),
        "mlp_w2": rng.normal(size=(F_, D)),
        "mlp_b2": rng.normal(size=D),
    }


# --------------------------------------------------------------------------------------
# task-level routing
# --------------------------------------------------------------------------------------
def test_task_routing_is_a_table_lookup_in_both_faces(rng):
    ids = rng.integers(0, 3, 40)
    want = TABLE[ids]
    np.testing.assert_array_equal(R.task_routing(ids, TABLE), want)
    got = T.task_routing(tt(ids), tt(TABLE))
    assert got.dtype == torch.int64
    np.testing.assert_array_equal(got.numpy(), want)


def test_task_route_drops_nothing_and_averages_the_experts(rng):
    ids = rng.integers(0, 3, 40)
    r = R.task_route(ids, TABLE, E)
    rt = T.task_route(tt(ids), tt(TABLE), E)
    assert r.capacity == rt.capacity == np.bincount(TABLE[ids].ravel()).max()
    assert r.kept.all() and bool(rt.kept.all())
    for name in ("experts", "gates", "slots", "probs"):
        np.testing.assert_array_equal(getattr(rt, name).numpy(), getattr(r, name))
    np.testing.assert_array_equal(r.gates, 0.5)
    np.testing.assert_allclose(r.probs.sum(1), 1.0)
    # the mean of the task's experts, by every strategy of both faces
    p = pr_params(rng)
    experts = {k: p[k] for k in ("w1", "b1", "w2", "b2")}
    x = rng.normal(size=(40, D))
    want = 0.5 * sum(
        np.stack([R.expert_ffn(x[t : t + 1], experts, e)[0] for t, e in
                  enumerate(TABLE[ids, j])])  # fmt: skip
        for j in range(2)
    )
    for strategy in ("loop", "einsum", "grouped"):
        np.testing.assert_allclose(
            R.moe_forward(x, r, experts, strategy=strategy), want, rtol=1e-12,
            atol=1e-12,
        )  # fmt: skip
        got = T.moe_forward(tt(x), rt, tt(experts), strategy=strategy).numpy()
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_task_expert_bytes_counts_what_one_task_loads():
    params = {
        "w1": np.zeros((8, 4, 16), np.float32),
        "b1": np.zeros((8, 16), np.float32),
        "w2": np.zeros((8, 16, 4), np.float32),
        "b2": np.zeros((8, 4), np.float32),
    }
    per_expert = 4 * (4 * 16 + 16 + 16 * 4 + 4)
    table = np.array([[0, 5], [7, 6]])
    assert R.task_expert_bytes(table, params, 1) == (2 * per_expert, 8 * per_expert)
    got = T.task_expert_bytes(tt(table), tt(params), 1)
    assert got == (2 * per_expert, 8 * per_expert)
    half = {k: v.astype(np.float16) for k, v in params.items()}
    assert R.task_expert_bytes(table, half, 0) == (per_expert, 4 * per_expert)
    # per-expert sizes given directly
    assert R.task_expert_bytes(table, [10, 20, 30, 40, 50, 60, 70, 80], 0) == (70, 360)


# --------------------------------------------------------------------------------------
# PR-MoE
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("strategy", ["loop", "einsum", "grouped"])
def test_pr_moe_is_mlp_plus_gated_expert_in_both_faces(rng, strategy):
    p = pr_params(rng)
    x = rng.normal(size=(30, D))
    logits = rng.normal(size=(30, E))
    r = R.route(logits, k=1, capacity_factor=0.75)
    rt = T.route(tt(logits), k=1, capacity_factor=0.75)
    got = R.pr_moe(x, p, r, strategy=strategy)
    mlp = gelu_tanh(x @ p["mlp_w1"] + p["mlp_b1"]) @ p["mlp_w2"] + p["mlp_b2"]
    experts = {k: p[k] for k in ("w1", "b1", "w2", "b2")}
    want = mlp + R.moe_loop(x, r, experts)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    dropped = ~r.kept[:, 0]
    assert dropped.any()  # at C = 0.75 some tokens get the MLP alone
    np.testing.assert_allclose(got[dropped], mlp[dropped], rtol=1e-12, atol=1e-12)
    torch_out = T.pr_moe(tt(x), tt(p), rt, strategy=strategy).numpy()
    np.testing.assert_allclose(torch_out, got, rtol=1e-12, atol=1e-12)


def test_pr_moe_is_differentiable():
    rng = np.random.default_rng(1)
    p = {k: v.requires_grad_() for k, v in tt(pr_params(rng)).items()}
    x = torch.from_numpy(rng.normal(size=(12, D))).requires_grad_()
    logits = torch.from_numpy(rng.normal(size=(12, E))).requires_grad_()
    r = T.route(logits, k=1, capacity_factor=2.0)
    T.pr_moe(x, p, r).sum().backward()
    for name in ("mlp_w1", "w1", "b2"):
        assert p[name].grad.abs().sum() > 0
    assert x.grad.abs().sum() > 0 and logits.grad.abs().sum() > 0


def test_pyramid_and_parameter_counts():
    # DeepSpeed-MoE's 350M+PR-MoE-32/64: 12 MoE layers, 32 experts then 64 in the last 2
    for face in (R, T):
        assert face.pyramid_experts(12) == [32] * 10 + [64] * 2
        assert face.pyramid_experts(4, 2, 8, top_layers=3) == [2, 8, 8, 8]
        assert face.pyramid_experts(3, 4, 4, top_layers=0) == [4, 4, 4]
    d, f = 4, 8
    ffn = 2 * d * f + f + d
    assert R.moe_param_count(d, f, 3) == 3 * ffn + d * 3
    assert R.moe_param_count(d, f, [2, 4], residual=True) == (
        6 * ffn + d * 6 + 2 * ffn
    )
    assert T.moe_param_count(d, f, [2, 4], residual=True) == R.moe_param_count(
        d, f, [2, 4], residual=True
    )
    # the pyramid holds fewer parameters than 64 experts everywhere
    pyramid = R.moe_param_count(768, 3072, R.pyramid_experts(12), residual=True)
    assert pyramid < 0.65 * R.moe_param_count(768, 3072, [64] * 12)  # 460 vs 768 FFNs


# --------------------------------------------------------------------------------------
# bad input, both faces
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("face", ["R", "T"])
def test_bad_input_is_named(face, rng):
    F = R if face == "R" else T
    conv = (lambda a: a) if face == "R" else tt
    ids = conv(np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="distinct"):
        F.task_routing(ids, conv(np.array([[0, 0], [1, 2], [3, 4]])))
    with pytest.raises(ValueError, match="table must hold expert indices"):
        F.task_routing(ids, conv(np.array([[0, -1], [1, 2], [3, 4]])))
    with pytest.raises(ValueError, match="task_ids must lie"):
        F.task_routing(conv(np.array([0, 3])), conv(TABLE))
    with pytest.raises(TypeError, match="task_ids"):
        F.task_routing(conv(np.array([0.0, 1.0])), conv(TABLE))
    with pytest.raises(TypeError, match="table"):
        F.task_routing(ids, conv(TABLE.astype(np.float64)))
    with pytest.raises(ValueError, match="n_experts"):
        F.task_route(ids, conv(TABLE), 4)  # expert 4 does not exist
    with pytest.raises(ValueError, match="task must be"):
        F.task_expert_bytes(conv(TABLE), [1] * E, 3)
    with pytest.raises(ValueError, match="leading"):
        F.task_expert_bytes(conv(TABLE), {"w1": np.zeros((5, 2)),
                                          "b1": np.zeros((4, 2))}, 0)  # fmt: skip
    with pytest.raises(TypeError, match="params"):
        F.task_expert_bytes(conv(TABLE), 128, 0)
    p = conv(pr_params(rng))
    x = conv(rng.normal(size=(8, D)))
    r = F.route(conv(rng.normal(size=(8, E))), k=1, capacity_factor=2.0)
    with pytest.raises(ValueError, match="missing"):
        F.pr_moe(x, {k: v for k, v in p.items() if k != "mlp_b2"}, r)
    bad = dict(p)
    bad["mlp_w2"] = conv(np.zeros((F_ + 1, D)))
    with pytest.raises(ValueError, match="mlp_w2"):
        F.pr_moe(x, bad, r)
    bad = dict(p)
    bad["mlp_b1"] = conv(np.zeros(F_, np.float32))
    with pytest.raises(ValueError, match="dtype"):
        F.pr_moe(x, bad, r)
    with pytest.raises(ValueError, match="top must be"):
        F.pyramid_experts(4, 8, 4)
    with pytest.raises(ValueError, match="top_layers"):
        F.pyramid_experts(4, 2, 4, top_layers=5)
    with pytest.raises(TypeError, match="n_layers"):
        F.pyramid_experts(2.0)
    with pytest.raises(ValueError, match=r"experts_per_layer\[1\]"):
        F.moe_param_count(4, 8, [2, 0])
    with pytest.raises(TypeError, match="residual"):
        F.moe_param_count(4, 8, 2, residual=1)
