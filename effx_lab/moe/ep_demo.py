"""Expert parallelism under ``torchrun``: the same per-rank code as
:func:`effx_lab.moe.distributed.expert_parallel_moe`, launched by PyTorch's own
launcher, on one machine or several.

One machine, 4 processes (gloo on a CPU, NCCL with one GPU per process)::

    torchrun --nproc-per-node 4 -m effx_lab.moe.ep_demo
    torchrun --nproc-per-node 4 -m effx_lab.moe.ep_demo --hierarchical \
        --ranks-per-node 2   # two "nodes" of 2 processes on one machine

Two machines of 4 processes each (run on both, ``--node-rank 0`` on the first, ``1``
on the second; ``HOST`` is the first machine's address, reachable from the second)::

    torchrun --nnodes 2 --nproc-per-node 4 --node-rank 0 \\
        --master-addr HOST --master-port 29500 -m effx_lab.moe.ep_demo --hierarchical

Every rank builds the same random problem from ``--seed`` (tokens, router logits,
experts; float64), routes all tokens with :func:`effx_lab.moe.reference.route`, takes
its shard of the tokens and its ``E / world_size`` experts, and runs the forward and
backward pass (:func:`~effx_lab.moe.distributed.ep_step`). ``--hierarchical`` groups the
ranks by machine (``LOCAL_WORLD_SIZE``, set by torchrun). Rank 0 gathers the outputs
and gradients, checks them against the single-process ``moe_loop`` and prints what
each rank sent. Exit status 0 when they agree, 1 when not.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

import numpy as np
import torch
import torch.distributed as dist

from effx_lab.moe import distributed as D

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="torchrun --nproc-per-node 4 -m effx_lab.moe.ep_demo",
        description="Expert-parallel MoE forward and backward, checked against "
        "the single-process reference.",
    )
    p.add_argument("--tokens", type=int, default=64, help="tokens in all (T)")
    p.add_argument("--experts", type=int, default=8, help="E (a multiple of ranks)")
    p.add_argument("--k", type=int, default=2, help="experts per token")
    p.add_argument("--capacity-factor", type=float, default=1.25)
    p.add_argument("--d-model", type=int, default=16)
    p.add_argument("--d-ff", type=int, default=32)
    p.add_argument("--hierarchical", action="store_true",
                   help="two-stage all-to-all, nodes = machines (LOCAL_WORLD_SIZE)")
    p.add_argument("--ranks-per-node", type=int, default=None,
                   help="ranks per node of the hierarchical all-to-all (default: "
                   "LOCAL_WORLD_SIZE, the processes of one machine; 2 makes 2 "
                   "'nodes' of one machine's 4 processes)")
    p.add_argument("--backend", choices=("auto", *D.BACKENDS), default="auto",
                   help="auto: nccl when every process has a GPU, else gloo")
    p.add_argument("--seed", type=int, default=0)
    return p


def _problem(args: argparse.Namespace) -> tuple:
    from effx_lab.moe import reference as R

    rng = np.random.default_rng(args.seed)
    x = rng.standard_normal((args.tokens, args.d_model))
    logits = rng.standard_normal((args.tokens, args.experts))
    routing = R.route(logits, k=args.k, capacity_factor=args.capacity_factor)
    params = {key: v.astype(np.float64) for key, v in
              R.init_experts(args.d_model, args.d_ff, args.experts,
                             seed=args.seed).items()}  # fmt: skip
    grad_output = rng.standard_normal(x.shape)
    return x, routing, params, grad_output


def main(argv: Sequence[str] | None = None) -> int:
    """Run one rank (torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE,
    MASTER_ADDR and MASTER_PORT); returns the exit status."""
    args = build_parser().parse_args(argv)
    if "RANK" not in os.environ:
        print("run me under torchrun: torchrun --nproc-per-node 4 -m "
              "effx_lab.moe.ep_demo", file=sys.stderr)  # fmt: skip
        return 2
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    backend = args.backend
    if backend == "auto":
        local = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
        backend = "nccl" if torch.cuda.device_count() >= local else "gloo"
    device = "cpu"
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
        device = f"cuda:{local_rank}"
    torch.set_num_threads(1)
    dist.init_process_group(backend)
    try:
        rank, world = dist.get_rank(), dist.get_world_size()
        x, routing, params, go = _problem(args)
        group = D.make_group(hierarchical=args.hierarchical,
                             ranks_per_node=args.ranks_per_node)
        mine = D.ep_step(rank, world, x, routing, params, go, group, device)
        parts: list = [None] * world
        dist.all_gather_object(parts, mine)
        status = 0
        if rank == 0:
            y0, g0 = D.single_process_moe(x, routing, params, grad_output=go)
            got = {k: np.concatenate([p[k] for p in parts])
                   for k in ("y", "x", *D.PARAM_NAMES, "gates")}  # fmt: skip
            want = {"y": y0.numpy(), **{k: v.numpy() for k, v in g0.items()}}
            diff = max(float(np.abs(got[k] - want[k]).max()) for k in want)
            mode = "hierarchical" if args.hierarchical else "flat"
            print(f"{world} ranks ({backend}, {mode} all-to-all, "
                  f"{group.ranks_per_node} per node), E = {args.experts}, "
                  f"T = {args.tokens}, k = {args.k}, "
                  f"C = {args.capacity_factor}")  # fmt: skip
            for r, p in enumerate(parts):
                print(f"  rank {r} sent {p['sent']['messages']} messages, "
                      f"{p['sent']['bytes']} bytes of token rows (forward + backward)")
            if diff <= 1e-10:
                print(f"output and gradients agree with the single-process moe_loop"
                      f" (max |diff| {diff:.1e}, float64)")  # fmt: skip
            else:
                print(f"MISMATCH: max |diff| {diff:.3e}")
                status = 1
        flag = torch.tensor([status], device=device)
        dist.broadcast(flag, 0)
        return int(flag.item())
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
