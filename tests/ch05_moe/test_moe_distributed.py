"""Tests of effx_lab.moe.distributed: expert parallelism over torch.distributed (gloo).

* the message counts of flat and hierarchical all-to-all, by hand, against a brute-force
  simulation of the chunks' routes, and against what real gloo ranks logged;
* the expert-parallel MoE (real processes) equals the single-process ``moe_loop`` and
  its autograd gradients in float64 (x, the experts' weights, the gates), flat and
  hierarchical, 2 and 4 ranks, 4 and 8 experts, with and without dropped tokens;
* the hierarchical exchange delivers bit-equal rows in the flat exchange's order;
* a rank that raises or hangs gives a named error instead of a hung test;
* bad input is refused by name before any process starts.

Each spawned run costs a few seconds (every rank imports torch); the runs with 4
ranks are ``slow``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import effx_lab  # noqa: F401  (first: sets TRITON_INTERPRET=1 when there is no GPU)
from effx_lab.moe import distributed as D
from effx_lab.moe import reference as R
from effx_lab.moe import torch_ops as T


# ----------------------------------------------------------------------- helpers
def _problem(n_tokens=24, d=8, f=16, n_experts=4, k=2, cf=1.0, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n_tokens, d))
    logits = rng.standard_normal((n_tokens, n_experts))
    routing = R.route(logits, k=k, capacity_factor=cf)
    params = {key: v.astype(np.float64)
              for key, v in R.init_experts(d, f, n_experts, seed=seed).items()}
    for key in ("b1", "b2"):  # non-zero biases: their gradients are checked too
        params[key] = params[key] + 0.1 * rng.standard_normal(params[key].shape)
    grad_output = rng.standard_normal((n_tokens, d))
    return x, routing, params, grad_output


def _reference(x, routing, params, grad_output):
    """moe_loop in one process, float64, and its autograd gradients."""
    xt = torch.tensor(x, requires_grad=True)
    pt = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    gates = torch.tensor(routing.gates, requires_grad=True)
    rt = R.Routing(torch.from_numpy(routing.experts), gates,
                   torch.from_numpy(routing.slots), routing.capacity,
                   routing.n_experts, torch.from_numpy(routing.probs))  # fmt: skip
    y = T.moe_loop(xt, rt, pt)
    y.backward(torch.tensor(grad_output))
    return y.detach(), {"x": xt.grad, "gates": gates.grad,
                        **{k: v.grad for k, v in pt.items()}}  # fmt: skip


def _check_equal(problem, **kw):
    x, routing, params, go = problem
    y0, g0 = _reference(x, routing, params, go)
    y, g = D.expert_parallel_moe(x, routing, params, grad_output=go, **kw)
    assert y.dtype == torch.float64 and y.shape == y0.shape
    torch.testing.assert_close(y, y0, rtol=1e-12, atol=1e-12)
    for key in ("x", "w1", "b1", "w2", "b2", "gates"):
        torch.testing.assert_close(g[key], g0[key], rtol=1e-12, atol=1e-12,
                                   msg=lambda m, key=key: f"grad {key}: {m}")
    # dropped choices get no gradient through the gates (they contribute nothing)
    assert bool((g["gates"][torch.from_numpy(routing.slots) < 0] == 0).all())
    return g


def _simulate(world_size, ranks_per_node, b):
    """Brute force: route every (src, dst) chunk of b bytes along the flat and the
    hierarchical paths, count per sending rank the distinct receivers and the bytes."""
    L, g = ranks_per_node, world_size
    out = {}
    for mode in ("flat", "hierarchical"):
        msgs = [set() for _ in range(g)]
        byts = [0] * g
        for src in range(g):
            for dst in range(g):
                if mode == "flat":
                    hops = [(src, dst)]
                else:  # stage 1: to the node peer of dst's local index; stage 2: dst
                    mid = (src // L) * L + dst % L
                    hops = [(src, mid), (mid, dst)]
                for stage, (a, c) in enumerate(hops):
                    if a != c:
                        msgs[a].add((stage, c))
                        byts[a] += b
        assert len({len(m) for m in msgs}) == 1 and len(set(byts)) == 1  # symmetric
        out[mode] = (len(msgs[0]), byts[0])
    return out


# ------------------------------------------------------------------- counting
def test_count_by_hand():
    c = D.count_all_to_all(4, 2)
    assert c["nodes"] == 2
    assert c["flat"] == {"messages": 3, "bytes": 3, "stages": 1,
                         "inter_node_messages": 2, "inter_node_bytes": 2}
    # 1 message inside the node (2 chunks: for both nodes), 1 to the other node
    # (2 chunks: from both ranks of my node): 2 messages, 4 chunks sent
    assert c["hierarchical"] == {"messages": 2, "bytes": 4, "stages": 2,
                                 "inter_node_messages": 1, "inter_node_bytes": 2}
    c = D.count_all_to_all(8, 4, bytes_per_pair=10)
    assert c["flat"]["messages"] == 7 and c["flat"]["bytes"] == 70
    assert c["hierarchical"]["messages"] == 3 + 1
    assert c["hierarchical"]["bytes"] == (3 * 2 + 1 * 4) * 10
    c = D.count_all_to_all(4096, 8)
    assert c["flat"]["messages"] == 4095 and c["hierarchical"]["messages"] == 7 + 511
    # across nodes the hierarchical exchange sends fewer, larger messages, same bytes
    assert c["flat"]["inter_node_bytes"] == c["hierarchical"]["inter_node_bytes"]


@pytest.mark.parametrize("world_size", [1, 2, 4, 6, 8, 12])
def test_count_matches_brute_force(world_size):
    for L in range(1, world_size + 1):
        if world_size % L:
            continue
        sim = _simulate(world_size, L, 3)
        c = D.count_all_to_all(world_size, L, bytes_per_pair=3)
        for mode in ("flat", "hierarchical"):
            assert (c[mode]["messages"], c[mode]["bytes"]) == sim[mode], (L, mode)


def test_count_is_fast_up_to_4096_ranks():
    t0 = time.perf_counter()
    rows = [D.count_all_to_all(g, L) for g in (4, 16, 64, 256, 1024, 4096)
            for L in (1, 2, 4) if g % L == 0]  # fmt: skip
    assert time.perf_counter() - t0 < 1.0 and len(rows) == 18
    # O(G) vs O(G / L + L): at 4096 ranks in nodes of 64, 126 messages instead of 4095
    c = D.count_all_to_all(4096, 64)
    assert c["hierarchical"]["messages"] == 63 + 63


def test_shard_rows_like_tensor_split():
    for n, w in [(10, 4), (3, 4), (8, 2), (0, 3)]:
        parts = torch.tensor_split(torch.arange(n), w)
        for r in range(w):
            s = D.shard_rows(n, w, r)
            assert list(range(n))[s] == parts[r].tolist()


def test_shard_experts_and_routing():
    x, routing, params, _ = _problem(n_tokens=10, n_experts=4)
    loc = D.shard_experts(params, 1, 2)
    assert np.array_equal(loc["w1"], params["w1"][2:4])
    part = D.shard_routing(routing, 1, 4)
    assert isinstance(part, R.Routing) and part.capacity == routing.capacity
    assert np.array_equal(part.experts, routing.experts[3:6])  # 10 = 3 + 3 + 2 + 2


# -------------------------------------------------------------- real processes
def test_expert_parallel_two_ranks_with_drops_equals_loop():
    problem = _problem(n_experts=4, cf=0.75)  # capacity 0.75: some pairs dropped
    assert 0 < R.dropped_fraction(problem[1]) < 0.5
    g = _check_equal(problem, world_size=2)
    # forward: 2 exchanges, backward: 2; each rank sends to its 1 peer
    assert [s["messages"] for s in g["sent"]] == [4, 4]


def _fails_on_rank_one(rank, world_size):
    if rank == 1:
        raise ValueError("rank one was told to fail")
    torch.distributed.barrier()  # rank 0 waits for its dead peer
    return rank


def _hangs_on_rank_one(rank, world_size):
    if rank == 1:
        time.sleep(600)
    return rank


def _fails(rank, world_size):
    raise ValueError(f"rank {rank} was told to fail")


def test_failing_rank_raises_its_message_one_process():
    with pytest.raises(RuntimeError,
                       match=r"rank 0 of 1 failed: ValueError: rank 0 was told"):
        D.run_ranks(_fails, 1, timeout_s=60)


@pytest.mark.slow
def test_failing_rank_raises_its_message():
    # rank 0 fails too (its peer vanished): the caller names rank 1, the cause
    with pytest.raises(RuntimeError,
                       match=r"rank 1 of 2 failed.*: ValueError: rank one was told"):
        D.run_ranks(_fails_on_rank_one, 2, timeout_s=60)


@pytest.mark.slow
def test_hung_rank_times_out_with_a_named_error():
    t0 = time.monotonic()
    # rank 0 waits for rank 1 in the final barrier: both are named
    with pytest.raises(TimeoutError, match=r"ranks \[0, 1\] of 2 did not finish "
                                           "within timeout_s = 10 s"):
        D.run_ranks(_hangs_on_rank_one, 2, timeout_s=10)
    assert time.monotonic() - t0 < 30


def _ep_cases(rank, world_size, cases):
    """Several expert-parallel problems in one set of processes (a spawn costs
    seconds): ep_step on each, flat or hierarchical."""
    out = []
    for x, routing, params, go, hierarchical, ranks_per_node in cases:
        group = D.make_group(hierarchical=hierarchical, ranks_per_node=ranks_per_node)
        out.append(D.ep_step(rank, world_size, x, routing, params, go, group))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("world_size", [2, 4])
def test_expert_parallel_equals_loop(world_size):
    # (experts, capacity factor, hierarchical): E = 4 and 8, drops (C < 1) and none
    settings = [(4, 4.0, False), (8, 0.5, True), (8, 4.0, True), (4, 0.5, False)]
    rpn = 2 if world_size == 4 else 1
    cases, problems = [], []
    for i, (e, cf, hier) in enumerate(settings):
        problem = _problem(n_tokens=30, n_experts=e, cf=cf, seed=i)
        assert (R.dropped_fraction(problem[1]) > 0) is (cf < 1)
        problems.append(problem)
        cases.append((*problem, hier, rpn))
    outs = D.run_ranks(_ep_cases, world_size, args=(cases,), timeout_s=300)
    for i, problem in enumerate(problems):
        y0, g0 = _reference(*problem)
        got = {k: np.concatenate([o[i][k] for o in outs])
               for k in ("y", "x", "w1", "b1", "w2", "b2", "gates")}  # fmt: skip
        np.testing.assert_allclose(got["y"], y0.numpy(), rtol=1e-12, atol=1e-12)
        for k, v in g0.items():
            np.testing.assert_allclose(got[k], v.numpy(), rtol=1e-12, atol=1e-12,
                                       err_msg=f"case {settings[i]}, grad {k}")


@pytest.mark.slow
def test_all_to_all_counts_and_rows_match_a_real_run():
    res = D.time_all_to_all(4, 2, rows_per_pair=3, d=5, repeats=2)
    assert res["equal"]  # hierarchical rows bit-equal to flat, flat rows correct
    model = res["model"]  # bytes per pair: 3 rows of 5 float64
    assert model["bytes_per_pair"] == 3 * 5 * 8
    for mode in ("flat", "hierarchical"):
        want = {"messages": model[mode]["messages"], "bytes": model[mode]["bytes"]}
        # the first, untimed exchange logged per rank
        assert res[mode]["sent"] == [want] * 4, mode
        assert res[mode]["seconds"] > 0


@pytest.mark.slow
def test_ep_demo_under_torchrun():
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "4",
           "--master-port", str(D._free_port()), "-m", "effx_lab.moe.ep_demo",
           "--hierarchical", "--ranks-per-node", "2", "--tokens", "32",
           "--experts", "8"]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "agree with the single-process moe_loop" in out.stdout


# ----------------------------------------------------------------- bad input
def test_bad_input_is_named():
    x, routing, params, _ = _problem(n_experts=4)
    with pytest.raises(ValueError, match="world_size must divide the number of "
                                         r"experts \(4\).*world_size = 3"):
        D.expert_parallel_moe(x, routing, params, world_size=3)
    with pytest.raises(ValueError, match="ranks_per_node must divide world_size = 4"):
        D.expert_parallel_moe(x, routing, params, hierarchical=True, ranks_per_node=3)
    with pytest.raises(ValueError, match="backend must be one of 'gloo', 'nccl'"):
        D.expert_parallel_moe(x, routing, params, backend="mpi")
    with pytest.raises(TypeError, match="params must be a dict with keys"):
        D.expert_parallel_moe(x, routing, {"w1": params["w1"]})
    with pytest.raises(TypeError, match="routing must be a Routing"):
        D.expert_parallel_moe(x, routing.experts, params)
    with pytest.raises(ValueError, match="grad_output must have x's shape"):
        D.expert_parallel_moe(x, routing, params, grad_output=x[:3])
    with pytest.raises(ValueError, match="routing must route x's 5 tokens"):
        D.expert_parallel_moe(x[:5], routing, params)
    with pytest.raises(TypeError, match="x must be"):
        D.expert_parallel_moe(x.astype(np.int64), routing, params)
    with pytest.raises(ValueError, match="ranks_per_node must divide world_size = 6"):
        D.count_all_to_all(6, 4)
    with pytest.raises(ValueError, match="ranks_per_node must be an int in"):
        D.count_all_to_all(4, 8)
    with pytest.raises(TypeError, match="world_size must be an int"):
        D.count_all_to_all(4.0, 2)
    with pytest.raises(ValueError, match="bytes_per_pair must be an int >= 0"):
        D.count_all_to_all(4, 2, -1)
    with pytest.raises(ValueError, match="ranks_per_node must divide world_size = 4"):
        D.time_all_to_all(4, 3)
    with pytest.raises(TypeError, match="fn must be a module-level function"):
        D.run_ranks("not a function", 2)
    with pytest.raises(ValueError, match="timeout_s must be > 0"):
        D.run_ranks(_fails_on_rank_one, 2, timeout_s=0)
    if torch.cuda.device_count() < 64:
        with pytest.raises(ValueError, match="backend 'nccl' needs a GPU per rank"):
            D.run_ranks(_fails_on_rank_one, 64, backend="nccl")
    with pytest.raises(RuntimeError, match="make_group needs torch.distributed"):
        D.make_group()
    with pytest.raises(ValueError, match="world_size must divide the number"):
        D.shard_experts(params, 0, 3)
    with pytest.raises(ValueError, match="rank must be an int in"):
        D.shard_rows(10, 2, 2)
