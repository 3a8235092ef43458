"""The whole-model verb effx_lab.moe.models.moefy_ (sparse upcycling) and its config:
the chosen layers become MoE FFNs whose experts copy the dense FFN, the upcycled model
is the dense model's function at init in float64 (top-1 and top-2, renormalized, no
drops), it trains with moe_loss afterwards, set_routing works on it, and bad input
leaves the model unchanged."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from effx_lab.bench import limit_threads
from effx_lab.data.pools import token_splits
from effx_lab.models import lm
from effx_lab.models.training import train
from effx_lab.moe import layers as L
from effx_lab.moe.configs import MoEConfig
from effx_lab.moe.models import moefy_

D = 16


def _dense(n_layers=4, seed=0):
    spec = lm.LMSpec(d_model=D, n_layers=n_layers, max_len=32,
                     mixer_options={"n_heads": 2})  # fmt: skip
    return lm.LM(spec, seed=seed)


def _tokens(seed=0, shape=(2, 12)):
    return torch.randint(0, 256, shape, generator=torch.Generator().manual_seed(seed))


def _snapshot(model):
    return (
        {k: v.detach().clone() for k, v in model.state_dict().items()},
        [model.sublayer_kind(i, "ffn") for i in range(len(model.layers))],
        model.extra_repr(),
    )


def _same(a, b):
    (sa, ka, ra), (sb, kb, rb) = a, b
    assert list(sa) == list(sb) and ka == kb and ra == rb
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("k,n_experts", [(1, 4), (2, 4), (2, 3)])
def test_upcycling_preserves_the_function_at_init(k, n_experts):
    dense = _dense().double()
    x = _tokens()
    with torch.no_grad():
        want = dense(x)
    model = moefy_(copy.deepcopy(dense), MoEConfig(
        n_experts=n_experts, k=k, renormalize=True, capacity_factor=n_experts / k))
    assert L.moe_layers(model) == [1, 3]
    assert [model.sublayer_kind(i, "ffn") for i in range(4)] == [
        "gelu", "moe", "gelu", "moe"]
    layer = model.layers[1]
    assert tuple(layer["w1"].shape) == (n_experts, D, 4 * D)
    assert layer["w1"].dtype == torch.float64
    for e in range(n_experts):  # every expert a copy of the dense FFN
        assert torch.equal(layer["w1"][e], dense.layers[1]["w1"])
        assert torch.equal(layer["b2"][e], dense.layers[1]["b2"])
    with torch.no_grad():
        got = model(x)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert all(r["routing"].kept.all() for r in L.router_records(model, x))


def test_switch_gates_do_not_preserve_the_function():
    # the negative control: top-1 with the router's probability as the gate (~1/E)
    dense = _dense().double()
    x = _tokens()
    model = moefy_(copy.deepcopy(dense), MoEConfig(n_experts=4, capacity_factor=4.0))
    with torch.no_grad():
        diff = (model(x) - dense(x)).abs().max().item()
    assert diff > 1e-4


def test_layers_pyramid_and_residual():
    model = moefy_(_dense(n_layers=5), MoEConfig(n_experts=(2, 6), every=3, first=1))
    assert L.moe_layers(model) == [1, 4]
    assert model.layers[1]["w_gate"].shape == (D, 2)
    assert model.layers[4]["w_gate"].shape == (D, 6)
    assert model.sublayer_options(4, "ffn")["n_experts"] == 6
    dense = _dense(n_layers=2).double()
    pr = moefy_(copy.deepcopy(dense), MoEConfig(n_experts=3, residual=True, first=0,
                                                every=1))  # fmt: skip
    assert [pr.sublayer_kind(i, "ffn") for i in range(2)] == ["pr_moe", "pr_moe"]
    assert torch.equal(pr.layers[0]["mlp_w1"], dense.layers[0]["w1"])
    noisy = moefy_(_dense(n_layers=2), MoEConfig(n_experts=4, noisy=True))
    assert not noisy.layers[1]["w_noise"].any()
    # the router weights are seeded
    a = moefy_(_dense(), MoEConfig(seed=3))
    b = moefy_(_dense(), MoEConfig(seed=3))
    c = moefy_(_dense(), MoEConfig(seed=4))
    assert torch.equal(a.layers[1]["w_gate"], b.layers[1]["w_gate"])
    assert not torch.equal(a.layers[1]["w_gate"], c.layers[1]["w_gate"])


def test_upcycled_model_trains_and_reroutes():
    model = moefy_(_dense(n_layers=2), MoEConfig(n_experts=4, k=2))
    train_tokens, _ = token_splits()
    with limit_threads(1):
        hist = train(model, train_tokens, steps=6, batch_size=4, seq_len=16, lr=3e-3,
                     loss_fn=L.moe_loss(), progress=False)  # fmt: skip
    assert hist.steps == 6 and all(map(math.isfinite, hist.losses))
    assert len(hist.metrics["aux"]) == 6 and all(v > 0 for v in hist.metrics["aux"])
    x = _tokens(shape=(1, 16))
    L.set_routing(model, capacity_factor=0.5, policy="bpr_max")
    (rec,) = L.router_records(model, x)
    assert rec["layer"] == 1 and rec["routing"].capacity == math.ceil(2 * 16 / 4 * 0.5)
    assert model.sublayer_kind(1, "ffn") == "moe"


def test_bad_input_leaves_the_model_unchanged():
    model = _dense(n_layers=2)
    before = _snapshot(model)
    with pytest.raises(TypeError, match="config"):
        moefy_(model, {"n_experts": 4})
    with pytest.raises(TypeError, match="model"):
        moefy_(object(), MoEConfig())
    with pytest.raises(ValueError, match="chooses no layer"):
        moefy_(model, MoEConfig(first=2))
    with pytest.raises(ValueError, match="one count per MoE layer"):
        moefy_(model, MoEConfig(n_experts=(4, 8, 2)))  # one layer chosen, 3 counts
    _same(before, _snapshot(model))
    moefy_(model, MoEConfig(first=1))
    upcycled = _snapshot(model)
    with pytest.raises(ValueError, match="'gelu'"):
        moefy_(model, MoEConfig(first=0, every=1))  # layer 1 is already MoE
    _same(upcycled, _snapshot(model))


def test_a_failing_rebuild_is_undone(monkeypatch):
    model = _dense(n_layers=4)
    before = _snapshot(model)
    x = _tokens()
    with torch.no_grad():
        want = model(x)
    real = model.rebuild_sublayer
    calls = []

    def flaky(*args, **kwargs):
        calls.append(args[0])
        if len(calls) == 2:
            raise RuntimeError("out of memory (simulated)")
        return real(*args, **kwargs)

    monkeypatch.setattr(model, "rebuild_sublayer", flaky)
    with pytest.raises(RuntimeError, match="simulated"):
        moefy_(model, MoEConfig())
    assert calls[:2] == [1, 3]
    _same(before, _snapshot(model))
    with torch.no_grad():
        torch.testing.assert_close(model(x), want, rtol=0, atol=0)


@pytest.mark.parametrize(
    "kwargs,err,match",
    [
        ({"n_experts": 0}, ValueError, "n_experts"),
        ({"n_experts": ()}, ValueError, "n_experts"),
        ({"n_experts": (2, 0)}, ValueError, r"n_experts\[1\]"),
        ({"k": 3, "n_experts": (4, 2)}, ValueError, "k must be"),
        ({"capacity_factor": 0}, ValueError, "capacity_factor"),
        ({"eval_capacity_factor": 0.0}, ValueError, "eval_capacity_factor"),
        ({"policy": "random"}, ValueError, "policy"),
        ({"strategy": "dense"}, ValueError, "strategy"),
        ({"every": 0}, ValueError, "every"),
        ({"first": -1}, ValueError, "first"),
        ({"renormalize": "yes"}, TypeError, "renormalize"),
        ({"noisy": 1}, TypeError, "noisy"),
        ({"residual": True, "k": 2}, ValueError, "k must be 1"),
        ({"residual": True, "noisy": True}, ValueError, "noisy"),
        ({"seed": -1}, ValueError, "seed"),
        ({"router_std": -0.1}, ValueError, "router_std"),
    ],
)
def test_config_validation(kwargs, err, match):
    with pytest.raises(err, match=match):
        MoEConfig(**kwargs)


def test_config_layers():
    cfg = MoEConfig()
    assert cfg.layers(6) == [1, 3, 5] and cfg.experts_of(6) == [8, 8, 8]
    assert MoEConfig(first=0, every=1).layers(3) == [0, 1, 2]
    assert MoEConfig(n_experts=[2, 4]).n_experts == (2, 4)
    assert np.array_equal(MoEConfig(n_experts=(2, 4)).experts_of(4), [2, 4])


def test_task_level_upcycling():
    dense = _dense(n_layers=2).double()
    x = _tokens(shape=(3, 8))
    with torch.no_grad():
        want = dense(x)
    model = moefy_(copy.deepcopy(dense), MoEConfig(n_experts=4, n_tasks=3,
                                                   renormalize=True,
                                                   capacity_factor=4.0))  # fmt: skip
    assert "w_task" in model.layers[1] and "w_gate" not in model.layers[1]
    assert model.layers[1]["w_task"].shape == (3, 4)
    with torch.no_grad(), L.tasks(torch.tensor([0, 1, 2])):
        torch.testing.assert_close(model(x), want, rtol=1e-12, atol=1e-12)
    assert L.task_tables(model)[1].shape == (3, 1)
    with pytest.raises(ValueError, match="n_tasks"):
        MoEConfig(n_tasks=2, residual=True)
    with pytest.raises(ValueError, match="n_tasks"):
        MoEConfig(n_tasks=0)
