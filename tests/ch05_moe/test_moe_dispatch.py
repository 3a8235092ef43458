"""Tests of effx_lab.moe's topic ``dispatch`` (05.3): the experts run on the routed
tokens three ways (a per-token loop, one-hot dispatch/combine einsums, sort by expert
+ grouped GEMM), in both faces.

Every strategy must equal the loop (the definition) in float64 on random routings:
top-1 and top-2, buffers filled in token order or in a priority order (BPR), small
capacities (drops) and large ones (none), E not dividing T, an expert no token chose,
a single token. The faces agree in float64 (integers exactly); the torch face
differentiates with respect to x, the experts' weights and the gates (gradcheck); a
token whose every choice is dropped gets exactly 0; bad inputs raise errors that name
the argument.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from effx_lab.moe import reference as R
from effx_lab.moe import torch_ops as T
from effx_lab.moe._format import Routing

STRATEGIES = ("loop", "einsum", "grouped")
close = np.testing.assert_allclose


def _t(a):
    return torch.from_numpy(np.array(a, copy=True)) if isinstance(a, np.ndarray) else a


def _np(a):
    return a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else a


def _routing(rng, t, e, k, cap, order=None, renorm=False, skip=()):
    """A NumPy Routing of ``t`` random tokens over ``e`` experts (never the experts in
    ``skip``): softmax of random logits, top-``k``, buffers of ``cap`` rows filled in
    ``order`` ("token": token order; "random": a random priority order, as BPR fills
    them), every first choice before any second choice. Written independently of
    ``route`` so that the dispatch tests stand on their own."""
    logits = rng.standard_normal((t, e))
    logits[:, list(skip)] = -1e9
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    experts = np.argsort(-probs, axis=1, kind="stable")[:, :k].astype(np.int64)
    gates = np.take_along_axis(probs, experts, 1)
    if renorm:
        gates = gates / gates.sum(1, keepdims=True)
    tokens = rng.permutation(t) if order == "random" else np.arange(t)
    slots = np.full((t, k), -1, dtype=np.int64)
    fill = np.zeros(e, dtype=np.int64)
    for j in range(k):
        for i in tokens:
            ex = experts[i, j]
            if fill[ex] < cap:
                slots[i, j] = fill[ex]
                fill[ex] += 1
    return Routing(experts, gates, slots, cap, e, probs)


def _torch_routing(r, requires_grad=False):
    gates = _t(r.gates).requires_grad_(requires_grad)
    experts, slots, probs = _t(r.experts), _t(r.slots), _t(r.probs)
    return Routing(experts, gates, slots, r.capacity, r.n_experts, probs)


def _params64(d, f, e, seed=0):
    return {k: v.astype(np.float64) for k, v in R.init_experts(d, f, e, seed).items()}


CASES = [
    # (T, E, k, capacity, order, skip): E never divides T
    pytest.param(13, 4, 1, 2, "token", (), id="top1-drops"),
    pytest.param(13, 4, 1, 13, "token", (), id="top1-no-drops"),
    pytest.param(17, 5, 2, 3, "token", (), id="top2-drops"),
    pytest.param(17, 5, 2, 34, "random", (), id="top2-no-drops-priority"),
    pytest.param(17, 5, 2, 4, "random", (), id="top2-drops-priority"),
    pytest.param(11, 6, 2, 3, "token", (2,), id="an-expert-with-no-tokens"),
    pytest.param(1, 3, 2, 1, "token", (), id="one-token"),
    pytest.param(9, 1, 1, 4, "token", (), id="one-expert"),
]


# -------------------------------------------------------------- three ways, one result
@pytest.mark.parametrize(("t", "e", "k", "cap", "order", "skip"), CASES)
def test_every_strategy_equals_the_loop_in_float64_in_both_faces(
    t, e, k, cap, order, skip
):
    rng = np.random.default_rng(t * 31 + e * 7 + k + cap)
    d, f = 6, 10
    r = _routing(rng, t, e, k, cap, order, renorm=k == 2, skip=skip)
    params = _params64(d, f, e, seed=t)
    x = rng.standard_normal((t, d))
    want = R.moe_loop(x, r, params)
    assert want.shape == (t, d) and want.dtype == np.float64
    # the loop is the definition: check it against the formula once, written out
    manual = np.zeros((t, d))
    for i in range(t):
        for j in range(k):
            if r.slots[i, j] >= 0:
                out = R.expert_ffn(x[i : i + 1], params, r.experts[i, j])[0]
                manual[i] += r.gates[i, j] * out
    np.testing.assert_allclose(want, manual, rtol=0, atol=1e-14)
    rt, pt, xt = _torch_routing(r), {k_: _t(v) for k_, v in params.items()}, _t(x)
    for strategy in STRATEGIES:
        got = R.moe_forward(x, r, params, strategy=strategy)
        close(got, want, rtol=1e-12, atol=1e-13, err_msg=strategy)
        got_t = T.moe_forward(xt, rt, pt, strategy=strategy)
        assert got_t.dtype == torch.float64 and got_t.shape == (t, d)
        close(_np(got_t), want, rtol=1e-12, atol=1e-13, err_msg=strategy)
    if (r.slots < 0).any():  # the case drops something: it must matter
        slots = _slots_without_drops(r)
        kept_all = Routing(r.experts, r.gates, slots, t * k, e, r.probs)
        assert not np.allclose(R.moe_grouped(x, kept_all, params), want)


def _slots_without_drops(r):
    """The same choices with a buffer large enough for all: nothing dropped."""
    slots = np.zeros_like(r.experts)
    fill = np.zeros(r.n_experts, dtype=np.int64)
    for j in range(r.k):
        for i in range(r.n_tokens):
            slots[i, j] = fill[r.experts[i, j]]
            fill[r.experts[i, j]] += 1
    return slots


@pytest.mark.parametrize("policy", ["vanilla", "bpr_max", "bpr_sum"])
@pytest.mark.parametrize(("k", "factor"), [(1, 0.5), (1, 4.0), (2, 0.75), (2, 3.0)])
def test_strategies_on_routes_of_the_router(policy, k, factor):
    rng = np.random.default_rng(k * 10 + int(factor * 4))
    t, e, d, f = 21, 4, 5, 7
    logits = rng.standard_normal((t, e))
    r = R.route(logits, k=k, capacity_factor=factor, policy=policy, renormalize=k > 1)
    params = _params64(d, f, e, seed=3)
    x = rng.standard_normal((t, d))
    want = R.moe_loop(x, r, params)
    rt = T.route(
        _t(logits), k=k, capacity_factor=factor, policy=policy, renormalize=k > 1
    )
    np.testing.assert_array_equal(_np(rt.slots), r.slots)
    pt, xt = {k_: _t(v) for k_, v in params.items()}, _t(x)
    for strategy in STRATEGIES:
        got = R.moe_forward(x, r, params, strategy=strategy)
        close(got, want, rtol=1e-12, atol=1e-13)
        got = _np(T.moe_forward(xt, rt, pt, strategy=strategy))
        close(got, want, rtol=1e-12, atol=1e-13)


def test_a_token_whose_every_choice_is_dropped_gets_exactly_zero():
    rng = np.random.default_rng(1)
    t, e, d, f = 10, 3, 4, 6
    r = _routing(rng, t, e, 2, 1)  # 3 buffer rows for 20 pairs: most are dropped
    dropped = np.flatnonzero((r.slots < 0).all(axis=1))
    assert dropped.size >= 3
    params = _params64(d, f, e)
    x = rng.standard_normal((t, d))
    rt, pt = _torch_routing(r), {k: _t(v) for k, v in params.items()}
    for strategy in STRATEGIES:
        for y in (R.moe_forward(x, r, params, strategy=strategy),
                  _np(T.moe_forward(_t(x), rt, pt, strategy=strategy))):  # fmt: skip
            assert (y[dropped] == 0.0).all(), strategy
            assert (np.abs(y[np.setdiff1d(np.arange(t), dropped)]).sum(1) > 0).all()


def test_nan_policy_a_nan_token_stays_in_its_row_except_in_the_einsums():
    rng = np.random.default_rng(11)
    r = _routing(rng, 10, 3, 1, 3)
    kept = np.flatnonzero(r.slots[:, 0] >= 0)
    dropped = np.flatnonzero(r.slots[:, 0] < 0)
    assert kept.size and dropped.size
    params = _params64(4, 5, 3)
    x = rng.standard_normal((10, 4))
    x[kept[0], 1] = np.nan
    x[dropped[0], 2] = np.nan  # never read: its only choice was dropped
    rt, pt = _torch_routing(r), {k: _t(v) for k, v in params.items()}
    want = np.zeros(10, dtype=bool)
    want[kept[0]] = True
    for strategy in STRATEGIES:
        for y in (R.moe_forward(x, r, params, strategy=strategy),
                  _np(T.moe_forward(_t(x), rt, pt, strategy=strategy))):  # fmt: skip
            nan_rows = np.isnan(y).any(axis=1)
            if strategy == "einsum":  # 0 * NaN in the dispatch einsum: every row
                assert nan_rows.all(), strategy
            else:
                np.testing.assert_array_equal(nan_rows, want, err_msg=strategy)
                assert np.isnan(y[kept[0]]).all()


def test_float32_strategies_agree_with_the_float64_loop():
    rng = np.random.default_rng(2)
    t, e, d, f = 40, 4, 8, 16
    r = _routing(rng, t, e, 2, 12, renorm=True)
    params = R.init_experts(d, f, e, seed=4)
    assert all(v.dtype == np.float32 for v in params.values())
    x = rng.standard_normal((t, d)).astype(np.float32)
    p64 = {k: v.astype(np.float64) for k, v in params.items()}
    want = R.moe_loop(x.astype(np.float64), r, p64)
    rt, pt = _torch_routing(r), {k: _t(v) for k, v in params.items()}
    for strategy in STRATEGIES:
        y = R.moe_forward(x, r, params, strategy=strategy)
        yt = T.moe_forward(_t(x), rt, pt, strategy=strategy)
        assert y.dtype == np.float32 and yt.dtype == torch.float32
        # two GEMMs of length <= 16 and a tanh: far below a few hundred float32 ulps of
        # O(1) values (tests/ch05_moe/test_moe_kernels.py derives the bound)
        np.testing.assert_allclose(y, want, rtol=0, atol=1e-4, err_msg=strategy)
        np.testing.assert_allclose(_np(yt), want, rtol=0, atol=1e-4, err_msg=strategy)


# ------------------------------------------------------------------------ the pieces
def test_init_experts_is_seeded_float32_and_the_same_in_both_faces():
    p = R.init_experts(4, 6, 3, seed=5)
    assert {k: v.shape for k, v in p.items()} == {
        "w1": (3, 4, 6), "b1": (3, 6), "w2": (3, 6, 4), "b2": (3, 4)
    }
    q = T.init_experts(4, 6, 3, seed=5)
    for key in p:
        assert q[key].dtype == torch.float32
        np.testing.assert_array_equal(p[key], _np(q[key]))
        np.testing.assert_array_equal(p[key], R.init_experts(4, 6, 3, seed=5)[key])
    assert not np.array_equal(p["w1"], R.init_experts(4, 6, 3, seed=6)["w1"])
    assert not np.array_equal(p["w1"][0], p["w1"][1])  # the experts differ
    big = R.init_experts(256, 512, 2, seed=0)
    assert abs(big["w1"].std() * 16 - 1) < 0.05  # N(0, 1/d): std 1/sqrt(256)


def test_expert_ffn_is_the_gelu_mlp_of_one_expert():
    rng = np.random.default_rng(3)
    params = _params64(5, 7, 3)
    x = rng.standard_normal((4, 5))
    for e in range(3):
        h = x @ params["w1"][e] + params["b1"][e]
        h = 0.5 * h * (1 + np.tanh(np.sqrt(2 / np.pi) * (h + 0.044715 * h**3)))
        want = h @ params["w2"][e] + params["b2"][e]
        close(R.expert_ffn(x, params, e), want, rtol=1e-13, atol=1e-14)
        got = T.expert_ffn(_t(x), {k: _t(v) for k, v in params.items()}, e)
        np.testing.assert_allclose(_np(got), want, rtol=1e-13, atol=1e-14)


def test_dispatch_and_combine_place_each_kept_pair_once():
    rng = np.random.default_rng(4)
    t, e, k, cap = 15, 4, 2, 3
    r = _routing(rng, t, e, k, cap, order="random")
    dispatch, combine = R.dispatch_combine(r)
    assert dispatch.shape == combine.shape == (t, e, cap)
    assert set(np.unique(dispatch)) <= {0.0, 1.0}
    # each buffer row holds at most one token; each token has one row per kept choice
    assert (dispatch.sum(axis=0) <= 1).all()
    np.testing.assert_array_equal(dispatch.sum(axis=(1, 2)), (r.slots >= 0).sum(1))
    np.testing.assert_array_equal(combine != 0, dispatch != 0)
    for i, j in zip(*np.nonzero(r.slots >= 0)):
        assert dispatch[i, r.experts[i, j], r.slots[i, j]] == 1.0
        assert combine[i, r.experts[i, j], r.slots[i, j]] == r.gates[i, j]
    kept_gates = np.where(r.slots >= 0, r.gates, 0).sum(1)
    close(combine.sum(axis=(1, 2)), kept_gates)
    dt, ct = T.dispatch_combine(_torch_routing(r))
    np.testing.assert_array_equal(_np(dt), dispatch)
    np.testing.assert_array_equal(_np(ct), combine)


def test_sort_by_expert_groups_kept_pairs_stably():
    rng = np.random.default_rng(5)
    t, e, k, cap = 19, 5, 2, 4
    r = _routing(rng, t, e, k, cap, order="random", skip=(3,))
    order, offsets = R.sort_by_expert(r)
    assert order.dtype == np.int64 and offsets.dtype == np.int64
    assert offsets.shape == (e + 1,) and offsets[0] == 0
    kept = np.flatnonzero(r.slots.reshape(-1) >= 0)
    np.testing.assert_array_equal(np.sort(order), kept)  # exactly the kept pairs
    flat = r.experts.reshape(-1)
    for ex in range(e):
        seg = order[offsets[ex] : offsets[ex + 1]]
        assert (flat[seg] == ex).all()
        assert (np.diff(seg // k) > 0).all()  # token order within an expert
    assert offsets[3] == offsets[4]  # expert 3: no token
    ot, oft = T.sort_by_expert(_torch_routing(r))
    np.testing.assert_array_equal(_np(ot), order)
    np.testing.assert_array_equal(_np(oft), offsets)


def test_grouped_ffn_runs_each_segment_through_its_expert():
    rng = np.random.default_rng(6)
    params = _params64(4, 5, 4)
    offsets = np.array([0, 3, 3, 7, 8], dtype=np.int64)  # expert 1 empty
    xs = rng.standard_normal((8, 4))
    got = R.grouped_ffn(xs, offsets, params)
    for e in range(4):
        lo, hi = offsets[e], offsets[e + 1]
        if hi > lo:
            close(got[lo:hi], R.expert_ffn(xs[lo:hi], params, e), rtol=1e-14)
    pt = {k: _t(v) for k, v in params.items()}
    close(_np(T.grouped_ffn(_t(xs), _t(offsets), pt)), got, rtol=1e-13)
    # no rows at all (every pair dropped)
    empty = np.zeros(5, dtype=np.int64)
    assert R.grouped_ffn(np.zeros((0, 4)), empty, params).shape == (0, 4)
    none = torch.zeros(0, 4, dtype=torch.float64)
    assert T.grouped_ffn(none, _t(empty), pt).shape == (0, 4)


# --------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_gradcheck_x_params_and_gates(strategy):
    rng = np.random.default_rng(7)
    t, e, k, d, f = 7, 3, 2, 3, 4
    r = _routing(rng, t, e, k, 3, renorm=True)
    assert (r.slots < 0).any() and (r.slots >= 0).any()
    params = _params64(d, f, e, seed=8)
    x = _t(rng.standard_normal((t, d))).requires_grad_()
    ps = [_t(params[key]).requires_grad_() for key in ("w1", "b1", "w2", "b2")]
    gates = _t(r.gates).requires_grad_()

    def fn(x, w1, b1, w2, b2, gates):
        rt = Routing(_t(r.experts), gates, _t(r.slots), r.capacity, e, _t(r.probs))
        p = {"w1": w1, "b1": b1, "w2": w2, "b2": b2}
        return T.moe_forward(x, rt, p, strategy=strategy)

    assert torch.autograd.gradcheck(fn, (x, *ps, gates), eps=1e-6, atol=1e-7)


# --------------------------------------------------------------------------- bad input
FACES = [
    pytest.param((R, lambda a: a), id="reference"),
    pytest.param((T, _t), id="torch_ops"),
]


@pytest.mark.parametrize("face", FACES)
def test_bad_inputs_are_named(face):
    mod, conv = face
    rng = np.random.default_rng(8)
    r = _routing(rng, 6, 3, 1, 2)
    if mod is T:
        r = _torch_routing(r)
    params = {k: conv(v) for k, v in _params64(4, 5, 3).items()}
    x = conv(rng.standard_normal((6, 4)))
    with pytest.raises(ValueError, match=r"params must hold routing.n_experts = 3"):
        mod.moe_grouped(x, r, {k: conv(v) for k, v in _params64(4, 5, 2).items()})
    with pytest.raises(ValueError, match=r"x must have shape \(T, d\) with d = 4"):
        mod.moe_einsum(x[:, :3], r, params)
    with pytest.raises(ValueError, match="x must have one row per routed token"):
        mod.moe_loop(x[:5], r, params)
    with pytest.raises(TypeError, match="x must have the dtype of the experts'"):
        mod.moe_forward(x.astype(np.float32) if mod is R else x.float(), r, params)
    with pytest.raises(ValueError, match="x must have 2 dimensions"):
        mod.moe_grouped(x[None], r, params)
    bad = dict(params)
    bad["b2"] = params["b2"][:, :3]
    with pytest.raises(ValueError, match=r"params\['b2'\] must have shape \(3, 4\)"):
        mod.moe_grouped(x, r, bad)
    bad = dict(params)
    del bad["w2"]
    with pytest.raises(ValueError, match=r"params must have the keys .* \['w2'\]"):
        mod.moe_loop(x, r, bad)
    bad = dict(params)
    bad["b1"] = params["b1"].astype(np.float32) if mod is R else params["b1"].float()
    with pytest.raises(TypeError, match=r"params\['b1'\] must have the dtype of"):
        mod.moe_einsum(x, r, bad)
    with pytest.raises(ValueError, match="strategy must be one of 'loop', 'einsum'"):
        mod.moe_forward(x, r, params, strategy="dense")
    with pytest.raises(TypeError, match="routing must be a Routing"):
        mod.moe_grouped(x, (r.experts, r.gates), params)
    with pytest.raises(TypeError, match="routing must be a Routing"):
        mod.dispatch_combine(None)
    with pytest.raises(ValueError, match=r"e must be an int in \[0, 2\]"):
        mod.expert_ffn(x, params, 3)
    order, offsets = mod.sort_by_expert(r)
    xs = x[order // 1]
    with pytest.raises(ValueError, match=r"offsets must have shape \(E\+1,\) = \(4,\)"):
        mod.grouped_ffn(xs, offsets[:-1], params)
    shifted = offsets.copy() if mod is R else offsets.clone()
    shifted[-1] += 1
    with pytest.raises(ValueError, match="offsets must start at 0 and end at the"):
        mod.grouped_ffn(xs, shifted, params)
    with pytest.raises(TypeError, match="offsets must have an int dtype"):
        mod.grouped_ffn(xs, offsets * 1.0, params)
    with pytest.raises(ValueError, match="n_experts must be an int >= 1"):
        mod.init_experts(4, 5, 0)
    with pytest.raises(TypeError, match="d must be an int"):
        mod.init_experts(4.0, 5, 2)


def test_the_faces_refuse_each_others_arrays():
    rng = np.random.default_rng(9)
    r = _routing(rng, 6, 3, 1, 2)
    params = _params64(4, 5, 3)
    x = rng.standard_normal((6, 4))
    pt = {k: _t(v) for k, v in params.items()}
    with pytest.raises(TypeError, match="x must be a NumPy array in effx_lab.moe.re"):
        R.moe_loop(_t(x), r, params)
    with pytest.raises(TypeError, match=r"params\['w1'\] must be a NumPy array"):
        R.moe_grouped(x, r, pt)
    with pytest.raises(TypeError, match="routing must hold torch tensors in effx_lab"):
        T.moe_grouped(_t(x), r, pt)
    with pytest.raises(TypeError, match="x must be a torch tensor in effx_lab.moe.t"):
        T.moe_einsum(x, _torch_routing(r), pt)
    with pytest.raises(TypeError, match="routing must hold NumPy arrays"):
        R.dispatch_combine(_torch_routing(r))


@pytest.mark.parametrize("face", FACES)
def test_dispatch_combine_refuses_a_huge_one_hot_tensor(face):
    mod, conv = face
    t, e, cap = 1 << 14, 1 << 7, 1 << 8  # (T, E, C) of 2^29 elements
    experts = np.zeros((t, 1), dtype=np.int64)
    slots = np.where(np.arange(t) < cap, np.arange(t), -1)[:, None].astype(np.int64)
    probs = np.full((t, e), 1.0 / e)
    r = Routing(*(conv(a) for a in (experts, probs[:, :1], slots)), cap, e, conv(probs))
    with pytest.raises(ValueError, match=r"\(T, E, C\) = \(16384, 128, 256\).*moe_grouped"):
        mod.dispatch_combine(r)
