"""The MoE blocks of the shared LM (effx_lab.moe.layers): the registered FFNs "moe" and
"pr_moe" compute what the NumPy face says in float64 (every strategy), capacity is per
call, a token whose choices all overflowed passes unchanged, the router runs in
float32 at least, noise only while autograd records; moe_loss, router_records and
set_routing; an LM with ffn="moe" learns; bad input is named."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from effx_lab.bench import limit_threads
from effx_lab.data.pools import token_splits
from effx_lab.models import lm
from effx_lab.models.training import evaluate, next_token_loss, train
from effx_lab.moe import layers as L
from effx_lab.moe import reference as R

D = 16
EXPERT_KEYS = ("w1", "b1", "w2", "b2")


def _ln(x: np.ndarray, g: np.ndarray, b: np.ndarray) -> np.ndarray:
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + 1e-5) * g + b


def _sublayer(factory, seed=0, **options):
    """A sublayer with random (not initial) float64 parameters, as tensors and NumPy."""
    part = factory(D, seed=seed, causal=True, **options)
    rng = np.random.default_rng(seed + 100)
    p = {k: rng.normal(0.0, 0.5, v.shape) for k, v in part.params.items()}
    return part, p, {k: torch.from_numpy(v) for k, v in p.items()}


def _expected(x, p, *, k, c, policy, renormalize, strategy="loop", pr=False):
    h = _ln(x, p["ln2_g"], p["ln2_b"]).reshape(-1, x.shape[-1])
    r = R.route(R.router_logits(h, p["w_gate"]), k=k, capacity_factor=c,
                policy=policy, renormalize=renormalize)  # fmt: skip
    if pr:
        keys = (*EXPERT_KEYS, "mlp_w1", "mlp_b1", "mlp_w2", "mlp_b2")
        y = R.pr_moe(h, {q: p[q] for q in keys}, r, strategy=strategy)
    else:
        y = R.moe_forward(h, r, {q: p[q] for q in EXPERT_KEYS}, strategy=strategy)
    return x + y.reshape(x.shape), r


def test_ffns_are_registered():
    assert {"moe", "pr_moe"} <= set(lm.ffns())


@pytest.mark.parametrize("strategy", ["loop", "einsum", "grouped"])
@pytest.mark.parametrize(
    "k,c,policy", [(1, 1.25, "vanilla"), (2, 0.5, "bpr_max"), (2, 1.0, "bpr_sum")]
)
def test_moe_block_is_the_numpy_face_in_float64(strategy, k, c, policy):
    part, p, t = _sublayer(L.moe_ffn, n_experts=4, k=k, capacity_factor=c,
                           policy=policy, strategy=strategy, d_ff=24)  # fmt: skip
    x = np.random.default_rng(1).normal(size=(3, 7, D))
    with torch.no_grad():
        got = part.apply(torch.from_numpy(x), t).numpy()
    want, r = _expected(x, p, k=k, c=c, policy=policy, renormalize=k >= 2,
                        strategy=strategy)  # fmt: skip
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    # capacity is per call: the B * n tokens of this call
    assert r.capacity == math.ceil(k * 21 / 4 * c)


def test_pr_moe_block_is_the_numpy_face_in_float64():
    part, p, t = _sublayer(L.pr_moe_ffn, n_experts=3, capacity_factor=0.5, d_ff=20)
    x = np.random.default_rng(2).normal(size=(2, 5, D))
    with torch.no_grad():
        got = part.apply(torch.from_numpy(x), t).numpy()
    want, r = _expected(x, p, k=1, c=0.5, policy="vanilla", renormalize=False, pr=True)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    assert (~r.kept).any()  # some tokens got the MLP alone


def test_a_token_whose_choices_all_overflowed_passes_unchanged():
    part, p, t = _sublayer(L.moe_ffn, n_experts=4, k=2, capacity_factor=0.25)
    x = np.random.default_rng(3).normal(size=(2, 16, D))
    with torch.no_grad():
        got = part.apply(torch.from_numpy(x), t).numpy().reshape(-1, D)
    _, r = _expected(x, p, k=2, c=0.25, policy="vanilla", renormalize=True)
    gone = ~r.kept.any(axis=1)
    assert gone.sum() >= 8  # a quarter of the pairs fit: many tokens lose both
    np.testing.assert_array_equal(got[gone], x.reshape(-1, D)[gone])
    assert not np.allclose(got[~gone], x.reshape(-1, D)[~gone])


def test_renormalize_default_is_switch_for_top1_and_glam_for_top2():
    for k, want in ((1, False), (2, True)):
        part = L.moe_ffn(D, seed=0, causal=True, n_experts=4, k=k)
        assert part.apply.keywords["renormalize"] is want
    part = L.moe_ffn(D, seed=0, causal=True, n_experts=4, k=1, renormalize=True)
    assert part.apply.keywords["renormalize"] is True


def test_router_runs_in_float32_for_low_precision_activations():
    part = L.moe_ffn(D, seed=0, causal=True, n_experts=4)
    t = {k: torch.from_numpy(v).to(torch.bfloat16) for k, v in part.params.items()}
    x = torch.randn(2, 8, D).to(torch.bfloat16)
    with torch.no_grad(), L._collect() as records:
        y = part.apply(x, t)
    assert y.dtype == torch.bfloat16 and y.shape == x.shape
    assert records[0]["logits"].dtype == torch.float32
    assert records[0]["routing"].probs.dtype == torch.float32


def test_noise_only_while_autograd_records():
    part, _, t = _sublayer(L.moe_ffn, n_experts=4, k=1, noisy=True)
    assert "w_noise" in part.params and not part.params["w_noise"].any()
    x = torch.from_numpy(np.random.default_rng(4).normal(size=(2, 8, D)))
    with torch.no_grad():
        a, b = part.apply(x, t), part.apply(x, t)
    assert torch.equal(a, b)  # evaluation: no noise, deterministic
    tg = {k: v.clone().requires_grad_() for k, v in t.items()}
    with L._collect() as records:
        c, d = part.apply(x, tg), part.apply(x, tg)
    assert not torch.equal(c, d)  # training: a new draw each call
    assert {"importance", "load", "aux", "z"} <= set(records[0])
    (records[0]["load"] + records[0]["importance"]).backward()
    assert tg["w_noise"].grad.abs().sum() > 0  # the load loss trains the noise


# --------------------------------------------------------------------------------------
# the model-level helpers
# --------------------------------------------------------------------------------------
def _lm(ffn="moe", seed=0, n_layers=2, **options):
    spec = lm.LMSpec(d_model=D, n_layers=n_layers, max_len=32, ffn=ffn,
                     mixer_options={"n_heads": 2},
                     ffn_options={"n_experts": 4, **options})  # fmt: skip
    return lm.LM(spec, seed=seed)


def test_moe_loss_adds_the_layers_losses():
    model = _lm(k=2, capacity_factor=0.5).double()
    x = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(0))
    y = torch.roll(x, -1, 1)
    out = L.moe_loss(aux_weight=0.5, z_weight=0.25)(model, x, y)
    assert set(out) == {"loss", "ce", "aux", "z", "dropped"}
    assert all(v.numel() == 1 for v in out.values())
    torch.testing.assert_close(out["ce"], next_token_loss(model, x, y))
    torch.testing.assert_close(
        out["loss"].detach(), out["ce"] + 0.5 * out["aux"] + 0.25 * out["z"]
    )
    # two layers, each Switch loss >= 0 and z-loss >= 0; top-2 at C = 0.5 drops pairs
    assert out["aux"] > 0 and out["z"] > 0 and 0 < out["dropped"] < 1
    # the sum over the layers of what router_records' routings give
    recs = L.router_records(model, x)
    aux = sum(R.switch_aux_loss(r["routing"].probs, r["routing"].experts) for r in recs)
    z = sum(R.z_loss(r["logits"]) for r in recs)
    assert float(out["aux"]) == pytest.approx(aux, rel=1e-10)
    assert float(out["z"]) == pytest.approx(z, rel=1e-10)
    out["loss"].backward()
    assert model.layers[0]["w_gate"].grad.abs().sum() > 0


def test_moe_loss_needs_moe_layers_and_valid_weights():
    spec = lm.LMSpec(d_model=D, n_layers=1, max_len=16, mixer_options={"n_heads": 2})
    model = lm.LM(spec, seed=0)
    x = torch.zeros(1, 4, dtype=torch.int64)
    with pytest.raises(ValueError, match="MoE layers"):
        L.moe_loss()(model, x, x)
    with pytest.raises(ValueError, match="aux_weight"):
        L.moe_loss(aux_weight=-1.0)
    with pytest.raises(TypeError, match="z_weight"):
        L.moe_loss(z_weight="big")


def test_router_records_and_set_routing():
    model = _lm(n_layers=3, k=2, capacity_factor=2.0)
    model.train()
    tokens = np.random.default_rng(5).integers(0, 256, (2, 10))
    recs = L.router_records(model, tokens)
    assert model.training  # restored
    assert [r["layer"] for r in recs] == [0, 1, 2] == L.moe_layers(model)
    for rec in recs:
        r = rec["routing"]
        assert rec["logits"].dtype == np.float64 and rec["logits"].shape == (20, 4)
        assert isinstance(r.experts, np.ndarray) and not r.is_torch
        assert r.capacity == math.ceil(2 * 20 / 4 * 2.0)
        again = R.route(rec["logits"], k=2, capacity_factor=2.0, renormalize=True)
        np.testing.assert_array_equal(r.experts, again.experts)
        np.testing.assert_array_equal(r.slots, again.slots)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    assert L.set_routing(model, capacity_factor=0.25, policy="bpr_sum") is model
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights kept
    new = L.router_records(model, tokens)
    # the first router sees the same input: its logits are unchanged (later ones see
    # what the new capacity of the layers before them let through)
    np.testing.assert_array_equal(new[0]["logits"], recs[0]["logits"])
    for rec in new:
        r = rec["routing"]
        assert r.capacity == math.ceil(2 * 20 / 4 * 0.25)
        want = R.route(rec["logits"], k=2, capacity_factor=0.25, policy="bpr_sum",
                       renormalize=True)  # fmt: skip
        np.testing.assert_array_equal(r.slots, want.slots)
    assert model.sublayer_options(0, "ffn")["policy"] == "bpr_sum"


def test_eval_capacity_factor_applies_without_grad_and_set_routing_clears_it():
    model = _lm(capacity_factor=1.0, eval_capacity_factor=2.0)
    tokens = torch.randint(0, 256, (1, 16), generator=torch.Generator().manual_seed(1))
    assert L.router_records(model, tokens)[0]["routing"].capacity == 8  # 16/4 * 2
    L.set_routing(model, capacity_factor=0.5)
    assert L.router_records(model, tokens)[0]["routing"].capacity == 2
    assert model.sublayer_options(0, "ffn")["eval_capacity_factor"] is None


def test_helpers_reject_bad_input():
    model = _lm()
    with pytest.raises(TypeError, match="model"):
        L.router_records(object(), np.zeros((1, 4), np.int64))
    with pytest.raises(TypeError, match="tokens"):
        L.router_records(model, [1, 2, 3])
    with pytest.raises(TypeError, match="tokens"):
        L.router_records(model, np.zeros((1, 4)))
    with pytest.raises(ValueError, match="neither"):
        L.set_routing(model)
    with pytest.raises(ValueError, match="policy"):
        L.set_routing(model, policy="random")
    with pytest.raises(ValueError, match="capacity_factor"):
        L.set_routing(model, capacity_factor=0.0)
    dense = lm.LM(lm.LMSpec(d_model=D, n_layers=1, mixer_options={"n_heads": 2}))
    with pytest.raises(ValueError, match="no MoE layer"):
        L.set_routing(dense, policy="bpr_max")
    with pytest.raises(ValueError, match="no MoE layer"):
        L.router_records(dense, np.zeros((1, 4), np.int64))


@pytest.mark.parametrize(
    "options,err,match",
    [
        ({"k": 5}, ValueError, "k must be"),
        ({"k": 0}, ValueError, "k must be"),
        ({"capacity_factor": 0.0}, ValueError, "capacity_factor"),
        ({"capacity_factor": float("nan")}, ValueError, "capacity_factor"),
        ({"policy": "greedy"}, ValueError, "policy"),
        ({"strategy": "dense"}, ValueError, "strategy"),
        ({"renormalize": 1}, TypeError, "renormalize"),
        ({"noisy": "yes"}, TypeError, "noisy"),
        ({"eval_capacity_factor": -1.0}, ValueError, "eval_capacity_factor"),
        ({"n_experts": 0}, ValueError, "n_experts"),
        ({"d_ff": 0}, ValueError, "d_ff"),
        ({"experts": 4}, TypeError, "do not fit"),
    ],
)
def test_bad_options_are_named(options, err, match):
    with pytest.raises(err, match=match):
        _lm(**options)


def test_an_lm_with_moe_ffns_learns_the_course_corpus():
    train_tokens, val_tokens = token_splits()
    model = _lm(n_layers=2, k=1, capacity_factor=1.25)
    model.train()
    loss_fn = L.moe_loss()
    with limit_threads(1):
        before = evaluate(model, val_tokens, seq_len=16, batch_size=8, max_batches=2,
                          seed=0)  # fmt: skip
        hist = train(model, train_tokens, steps=30, batch_size=8, seq_len=16,
                     lr=1e-2, loss_fn=loss_fn, progress=False)  # fmt: skip
        after = evaluate(model, val_tokens, seq_len=16, batch_size=8, max_batches=2,
                         seed=0)  # fmt: skip
    assert hist.steps == 30
    assert set(hist.metrics) == {"ce", "aux", "z", "dropped"}
    assert all(len(v) == 30 and all(map(math.isfinite, v))
               for v in hist.metrics.values())  # fmt: skip
    # from uniform over 256 bytes (ln 256 = 5.5) to well below: a wide margin
    assert before > 5.0 and after < before - 1.5


def test_a_deepcopy_routes_as_the_original():
    model = _lm(noisy=True)
    twin = copy.deepcopy(model)
    tokens = np.arange(12).reshape(1, 12)
    a, b = L.router_records(model, tokens), L.router_records(twin, tokens)
    np.testing.assert_array_equal(a[0]["logits"], b[0]["logits"])
    assert L.moe_layers(twin) == [0, 1]


# --------------------------------------------------------------------------------------
# task-level routing in the LM
# --------------------------------------------------------------------------------------
def test_task_routed_layer_is_the_numpy_face_in_float64():
    part, p, t = _sublayer(L.moe_ffn, n_experts=4, k=2, n_tasks=3,
                           capacity_factor=1.0)  # fmt: skip
    assert "w_task" in part.params and "w_gate" not in part.params
    x = np.random.default_rng(6).normal(size=(3, 5, D))
    ids = np.array([2, 0, 2])
    with torch.no_grad(), L.tasks(ids):
        got = part.apply(torch.from_numpy(x), t).numpy()
    h = _ln(x, p["ln2_g"], p["ln2_b"]).reshape(-1, D)
    r = R.route(p["w_task"][np.repeat(ids, 5)], k=2, capacity_factor=1.0,
                renormalize=True)  # fmt: skip
    want = x + R.moe_forward(h, r, {q: p[q] for q in EXPERT_KEYS}).reshape(x.shape)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    # per-token task ids give the same result when they repeat the sequence's
    with torch.no_grad(), L.tasks(torch.from_numpy(np.repeat(ids, 5).reshape(3, 5))):
        again = part.apply(torch.from_numpy(x), t).numpy()
    np.testing.assert_array_equal(again, got)


def test_task_routed_lm_trains_and_deploys_a_static_table():
    model = _lm(n_layers=2, k=1, n_tasks=3, capacity_factor=4.0)
    assert L.moe_layers(model) == [0, 1]
    x = torch.randint(0, 256, (3, 8), generator=torch.Generator().manual_seed(2))
    ids = torch.tensor([0, 1, 2])
    with L.tasks(ids):
        out = L.moe_loss()(model, x, torch.roll(x, -1, 1))
        out["loss"].backward()
        recs = L.router_records(model, x)
    assert model.layers[0]["w_task"].grad.abs().sum() > 0
    tables = L.task_tables(model)
    assert sorted(tables) == [0, 1] and tables[0].shape == (3, 1)
    for rec in recs:  # every token of a sequence goes to its task's row of the table
        experts = rec["routing"].experts.reshape(3, 8)
        np.testing.assert_array_equal(experts, np.repeat(tables[rec["layer"]], 8, 1))
        assert rec["routing"].kept.all()  # C = E / k: nothing dropped
    L.set_routing(model, policy="bpr_max")  # the task table survives a rebuild
    assert L.task_tables(model)[0].tolist() == tables[0].tolist()


def test_task_routing_needs_its_ids():
    model = _lm(n_tasks=2)
    x = torch.zeros(2, 4, dtype=torch.int64)
    with pytest.raises(ValueError, match="inside"):
        model(x)
    with L.tasks(torch.tensor([0, 2])), pytest.raises(ValueError, match="task_ids"):
        model(x)
    with L.tasks(torch.tensor([0, 1, 1])), pytest.raises(ValueError, match="shape"):
        model(x)
    with pytest.raises(TypeError, match="task_ids"):
        with L.tasks(np.array([0.0, 1.0])):
            pass
    with pytest.raises(ValueError, match="noisy"):
        _lm(n_tasks=2, noisy=True)
    with pytest.raises(ValueError, match="n_tasks"):
        _lm(n_tasks=0)
    assert L.task_tables(_lm()) == {}
