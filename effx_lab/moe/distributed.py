"""Expert parallelism over ``torch.distributed``: experts sharded over ranks, tokens
exchanged with ``all_to_all_single`` (uneven splits), flat or hierarchical.

The layout (GShard, Switch, DeepSpeed-MoE): ``world_size`` ranks each hold ``E /
world_size`` experts (rank ``r`` holds experts ``r * E_local .. (r + 1) * E_local - 1``)
and a contiguous shard of the tokens (``torch.tensor_split`` of the ``T`` rows). A step
on every rank (:func:`ep_forward`):

1. sort this rank's kept (token, choice) pairs by expert (so by destination rank) and
   count them per expert;
2. exchange the counts (an all-to-all of ``E_local`` ints per peer): every rank learns
   how many rows it receives from each peer for each of its experts;
3. exchange the token rows (an all-to-all with uneven splits);
4. run the local experts on the received rows, sorted by expert (one GEMM per expert);
5. send the outputs back (the reverse all-to-all) and combine them with the gates.

The routing is computed once for all ``T`` tokens (the caller passes the full
:class:`~effx_lab.moe._format.Routing`; each rank takes its rows with
:func:`shard_routing`), so capacity and drops are those of the single-process reference
exactly. A real system routes on each rank and gives each (rank, expert) pair its own
capacity (GShard's "local group dispatch"); the exchange is the same.

Autograd: the exchange is :class:`AllToAll`, an ``autograd.Function`` whose backward is
the reverse exchange (a permutation's adjoint is its inverse), so ``y.backward()`` works
on every backend, gloo included.

Hierarchical all-to-all (Tutel's "2DH" all-to-all, Hwang et al. 2023; DeepSpeed-MoE
does the same): the ranks form nodes of ``ranks_per_node = L`` consecutive ranks
(``N = G / L`` nodes). Stage 1, inside each node: rank ``(n, l)`` sends to its node peer
``(n, j)`` everything it has for the ranks ``(m, j)`` of every node ``m`` (``L - 1``
messages of ``N`` chunks each). Stage 2, between nodes, among the ranks of equal local
index ``j``: rank ``(n, j)`` sends to ``(m, j)`` what node ``n`` has for it (``N - 1``
messages of ``L`` chunks). Messages per rank: ``L - 1 + N - 1`` instead of ``G - 1``;
bytes per rank about twice the flat exchange's (every chunk not for this node or local
index moves twice), the same bytes across nodes. Received rows come out in the same
order as the flat exchange's (by source rank): the tests check bit-equal rows.

:func:`count_all_to_all` counts messages and bytes per rank for both, exactly, for any
number of ranks; :func:`time_all_to_all` runs both with real processes and records what
each rank sent, so the counts can be checked against a run.

Processes: :func:`run_ranks` starts ``world_size`` processes with the "spawn" start
method (the default of macOS and Windows; the worker functions live in this module so
a child finds them), one torch thread each, a free TCP port chosen at run time, and
a deadline: a rank that raises makes the caller raise with that rank's message, a rank
that hangs is killed after ``timeout_s`` with a named error. ``torchrun`` runs the same
per-rank code across processes and machines: :mod:`effx_lab.moe.ep_demo`.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import os
import queue as queue_mod
import socket
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.distributed as dist

from effx_lab._validate import (
    check_bool,
    check_choice,
    check_float,
    check_int,
    describe,
)

__all__ = [
    "AllToAll",
    "BACKENDS",
    "EPGroup",
    "PARAM_NAMES",
    "all_to_all_rows",
    "count_all_to_all",
    "ep_forward",
    "ep_step",
    "exchange_counts",
    "expert_parallel_moe",
    "make_group",
    "run_ranks",
    "shard_experts",
    "shard_routing",
    "shard_rows",
    "single_process_moe",
    "time_all_to_all",
]

#: the process-group backends :func:`run_ranks` starts (nccl needs a GPU per rank)
BACKENDS = ("gloo", "nccl")
#: the experts' weights, stacked over experts (LM layout, (in, out))
PARAM_NAMES = ("w1", "b1", "w2", "b2")


# ------------------------------------------------------------------------ counting
def count_all_to_all(
    world_size: int, ranks_per_node: int, bytes_per_pair: int = 1
) -> dict[str, Any]:
    """Messages and bytes one rank sends in one all-to-all where every rank has
    ``bytes_per_pair`` bytes for every other rank, flat and hierarchical.

    With ``G = world_size`` ranks in ``N = G / L`` nodes of ``L = ranks_per_node``:

    * flat: ``G - 1`` messages of ``b`` bytes, 1 stage; ``G - L`` leave the node;
    * hierarchical (Tutel's 2DH): ``L - 1`` messages of ``N b`` inside the node, then
      ``N - 1`` messages of ``L b`` to the peers of equal local index in the other
      nodes: ``L + N - 2`` messages, ``(N (L - 1) + L (N - 1)) b`` bytes, 2 stages;
      across nodes ``N - 1`` messages carrying the same ``(G - L) b`` bytes as flat.

    A chunk a rank keeps for itself (or passes to itself between stages) is not a
    message. Exact, O(1): fine for 4096 ranks and more. Returns ``{"world_size",
    "ranks_per_node", "nodes", "bytes_per_pair", "flat", "hierarchical"}``; each mode
    ``{"messages", "bytes", "stages", "inter_node_messages", "inter_node_bytes"}``.
    """
    g = check_int("world_size", world_size, min_value=1)
    L = check_int("ranks_per_node", ranks_per_node, min_value=1, max_value=g)
    if g % L:
        raise ValueError(
            f"ranks_per_node must divide world_size = {g}, got {L}"
        )
    b = check_int("bytes_per_pair", bytes_per_pair, min_value=0)
    n = g // L
    return {
        "world_size": g, "ranks_per_node": L, "nodes": n, "bytes_per_pair": b,
        "flat": {"messages": g - 1, "bytes": (g - 1) * b, "stages": 1,
                 "inter_node_messages": g - L, "inter_node_bytes": (g - L) * b},
        "hierarchical": {"messages": (L - 1) + (n - 1),
                         "bytes": ((L - 1) * n + (n - 1) * L) * b, "stages": 2,
                         "inter_node_messages": n - 1,
                         "inter_node_bytes": (n - 1) * L * b},
    }  # fmt: skip


# ---------------------------------------------------------------- the rank's group
@dataclass
class EPGroup:
    """One rank's view of the expert-parallel group (made by :func:`make_group`).

    ``intra``: the process group of this rank's node, ``inter``: the ranks of the
    same local index in every node (hierarchical only). ``log`` records every
    collective this rank ran: ``{"kind": "counts"|"rows", "stage":
    "flat"|"intra"|"inter", "messages", "bytes"}`` (messages: non-empty sends to other
    ranks; bytes: what they carried)."""

    rank: int
    world_size: int
    ranks_per_node: int
    hierarchical: bool
    intra: Any = None
    inter: Any = None
    log: list[dict[str, Any]] = field(default_factory=list)

    @property
    def nodes(self) -> int:
        return self.world_size // self.ranks_per_node

    def sent(self, kind: str = "rows") -> dict[str, int]:
        """Total messages and bytes this rank sent in the collectives of ``kind``."""
        rows = [e for e in self.log if e["kind"] == kind]
        return {"messages": sum(e["messages"] for e in rows),
                "bytes": sum(e["bytes"] for e in rows)}  # fmt: skip


def make_group(
    *, hierarchical: bool = False, ranks_per_node: int | None = None
) -> EPGroup:
    """This rank's :class:`EPGroup` over the default process group (every rank must
    call it, in the same order: ``new_group`` is collective). ``ranks_per_node``
    defaults to ``LOCAL_WORLD_SIZE`` (set by torchrun), else the world size."""
    if not dist.is_initialized():
        raise RuntimeError(
            "make_group needs torch.distributed initialised "
            "(dist.init_process_group, or run under torchrun / run_ranks)"
        )
    hierarchical = check_bool("hierarchical", hierarchical)
    g, rank = dist.get_world_size(), dist.get_rank()
    if ranks_per_node is None:
        ranks_per_node = int(os.environ.get("LOCAL_WORLD_SIZE", g))
    L = check_int("ranks_per_node", ranks_per_node, min_value=1, max_value=g)
    if g % L:
        raise ValueError(f"ranks_per_node must divide world_size = {g}, got {L}")
    grp = EPGroup(rank, g, L, hierarchical)
    if hierarchical:
        for node in range(g // L):  # every rank creates every group, in one order
            pg = dist.new_group(list(range(node * L, (node + 1) * L)))
            if rank // L == node:
                grp.intra = pg
        for j in range(L):
            pg = dist.new_group(list(range(j, g, L)))
            if rank % L == j:
                grp.inter = pg
    return grp


# ------------------------------------------------------------------ the exchanges
def _a2a(
    send: torch.Tensor, send_counts: list[int], recv_counts: list[int],
    group: EPGroup, pg: Any, me: int, kind: str, stage: str,
) -> torch.Tensor:
    """One ``all_to_all_single`` over rows (dim 0) in process group ``pg`` (None: the
    default), logged on ``group``; ``me`` is this rank's index in ``pg``."""
    send = send.contiguous()
    out = send.new_empty((sum(recv_counts), *send.shape[1:]))
    dist.all_to_all_single(out, send, recv_counts, send_counts, group=pg)
    row = math.prod(send.shape[1:]) * send.element_size()  # bytes per row
    others = [c for i, c in enumerate(send_counts) if i != me]
    group.log.append({"kind": kind, "stage": stage,
                      "messages": sum(1 for c in others if c > 0),
                      "bytes": sum(others) * row})  # fmt: skip
    return out


def _gather_chunks(
    x: torch.Tensor, counts: np.ndarray, order: Sequence[int]
) -> torch.Tensor:
    """Rows of ``x`` (chunks of ``counts`` rows, in chunk order) re-ordered so that
    chunk ``order[0]`` comes first, then ``order[1]``..."""
    starts = np.concatenate([[0], np.cumsum(counts)])
    idx = [np.arange(starts[c], starts[c + 1]) for c in order]
    idx = np.concatenate(idx) if idx else np.zeros(0, np.int64)
    return x[torch.as_tensor(idx, dtype=torch.long, device=x.device)]


def _exchange(
    send: torch.Tensor, send_counts: list[int], recv_counts: list[int],
    group: EPGroup, kind: str,
) -> torch.Tensor:
    """Flat or hierarchical exchange of rows: ``send`` holds ``send_counts[r]`` rows
    for rank ``r`` in rank order; returns ``recv_counts[s]`` rows from each source
    ``s``, in source order (the same rows in both modes)."""
    if not group.hierarchical:
        return _a2a(send, send_counts, recv_counts, group, None, group.rank,
                    kind, "flat")  # fmt: skip
    L, n = group.ranks_per_node, group.nodes
    node, loc = divmod(group.rank, L)
    sc = np.asarray(send_counts, np.int64).reshape(n, L)  # [dst node m, dst local j]
    # stage 1 (inside the node): to peer j, the chunks for (m, j), m = 0..N-1
    s1 = _gather_chunks(send, sc.reshape(-1), [m * L + j for j in range(L)
                                                for m in range(n)])
    # the peers' chunk sizes for (m, loc): L x N ints (a fixed-size exchange)
    mine = torch.as_tensor(sc.T.copy().reshape(-1), device=send.device)  # [j, m]
    c1 = _a2a(mine, [n] * L, [n] * L, group, group.intra, loc, "counts", "intra")
    c1 = c1.cpu().numpy().reshape(L, n)  # [src local l, dst node m]
    r1 = _a2a(s1, sc.sum(0).tolist(), c1.sum(1).tolist(), group, group.intra, loc,
              kind, "intra")  # fmt: skip
    # received as [l][m]; stage 2 sends to node m the chunks (n, l) -> (m, loc)
    s2 = _gather_chunks(r1, c1.reshape(-1), [src * n + m for m in range(n)
                                              for src in range(L)])
    rc = np.asarray(recv_counts, np.int64).reshape(n, L)  # [src node, src local]
    return _a2a(s2, c1.sum(0).tolist(), rc.sum(1).tolist(), group, group.inter,
                node, kind, "inter")  # fmt: skip


class AllToAll(torch.autograd.Function):
    """The row exchange as an autograd function: forward sends ``send_counts[r]``
    rows to rank ``r``; backward sends the gradient rows back the reverse way (the
    exchange is a permutation of rows across ranks; its adjoint is its inverse)."""

    @staticmethod
    def forward(ctx: Any, send: torch.Tensor, send_counts: list[int],
                recv_counts: list[int], group: EPGroup) -> torch.Tensor:  # fmt: skip
        ctx.counts = (send_counts, recv_counts)
        ctx.group = group
        return _exchange(send.detach(), send_counts, recv_counts, group, "rows")

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> Any:
        send_counts, recv_counts = ctx.counts
        back = _exchange(grad.contiguous(), recv_counts, send_counts, ctx.group,
                         "rows")  # fmt: skip
        return back, None, None, None


def _check_group(group: Any) -> EPGroup:
    if not isinstance(group, EPGroup):
        raise TypeError(
            f"group must be an EPGroup (from make_group), got {describe(group)}"
        )
    return group


def _check_counts(name: str, counts: Any, world_size: int) -> list[int]:
    if isinstance(counts, torch.Tensor):
        counts = counts.tolist()
    if isinstance(counts, (str, bytes)) or not isinstance(counts, Sequence):
        raise TypeError(f"{name} must be a sequence of {world_size} ints, got "
                        f"{describe(counts)}")  # fmt: skip
    if len(counts) != world_size:
        raise ValueError(
            f"{name} must have world_size = {world_size} entries, got {len(counts)}"
        )
    return [check_int(f"{name}[{i}]", c, min_value=0) for i, c in enumerate(counts)]


def all_to_all_rows(
    send: torch.Tensor, send_counts: Any, recv_counts: Any, group: EPGroup
) -> torch.Tensor:
    """Send ``send_counts[r]`` rows of ``send`` (rows in rank order) to rank ``r``;
    returns the ``sum(recv_counts)`` rows received, by source rank. Differentiable
    (:class:`AllToAll`); flat or hierarchical as ``group`` says."""
    group = _check_group(group)
    if not isinstance(send, torch.Tensor) or send.dim() < 1:
        raise TypeError(f"send must be a tensor of rows, got {describe(send)}")
    sc = _check_counts("send_counts", send_counts, group.world_size)
    rc = _check_counts("recv_counts", recv_counts, group.world_size)
    if sum(sc) != send.shape[0]:
        raise ValueError(f"send_counts must sum to send's {send.shape[0]} rows, got "
                         f"{sum(sc)}")  # fmt: skip
    return AllToAll.apply(send, sc, rc, group)


def exchange_counts(counts: torch.Tensor, group: EPGroup) -> torch.Tensor:
    """``counts (world_size, m)`` int64, row ``r`` for rank ``r`` -> the
    ``(world_size, m)`` rows every rank sent to this one (row ``s`` from rank ``s``).
    In expert parallelism row ``r`` is "my tokens for each of rank r's experts"."""
    group = _check_group(group)
    g = group.world_size
    if (not isinstance(counts, torch.Tensor) or counts.dim() != 2
            or counts.shape[0] != g or counts.dtype != torch.int64):  # fmt: skip
        raise TypeError(f"counts must be an int64 tensor (world_size = {g}, m), "
                        f"got {describe(counts)}")  # fmt: skip
    ones = [1] * g
    return _exchange(counts, ones, ones, group, "counts")


# -------------------------------------------------------------------- sharding
def shard_rows(n_rows: int, world_size: int, rank: int) -> slice:
    """The contiguous rows of ``rank`` among ``n_rows`` split over ``world_size``
    ranks as ``torch.tensor_split`` does (the first ``n_rows % world_size`` ranks get
    one more)."""
    n_rows = check_int("n_rows", n_rows, min_value=0)
    world_size = check_int("world_size", world_size, min_value=1)
    rank = check_int("rank", rank, min_value=0, max_value=world_size - 1)
    q, r = divmod(n_rows, world_size)
    start = rank * q + min(rank, r)
    return slice(start, start + q + (rank < r))


def shard_routing(routing: Any, rank: int, world_size: int) -> Any:
    """The rows of ``rank`` of a routing of all tokens (a ``Routing`` of either face;
    capacity, slots and drops stay those of the global routing)."""
    _check_routing(routing)
    s = shard_rows(int(routing.experts.shape[0]), world_size, rank)
    return dataclasses.replace(
        routing, experts=routing.experts[s], gates=routing.gates[s],
        slots=routing.slots[s], probs=routing.probs[s],
    )  # fmt: skip


def _check_n_experts(n_experts: int, world_size: int) -> int:
    if n_experts % world_size:
        raise ValueError(
            f"world_size must divide the number of experts ({n_experts}) so that "
            f"every rank holds the same number, got world_size = {world_size}"
        )
    return n_experts // world_size


def shard_experts(params: dict[str, Any], rank: int, world_size: int) -> dict:
    """The experts of ``rank``: slices ``[rank * E_local, (rank + 1) * E_local)`` of
    every stacked weight (``E % world_size == 0``)."""
    _check_params(params)
    world_size = check_int("world_size", world_size, min_value=1)
    rank = check_int("rank", rank, min_value=0, max_value=world_size - 1)
    e_local = _check_n_experts(int(params["w1"].shape[0]), world_size)
    s = slice(rank * e_local, (rank + 1) * e_local)
    return {k: params[k][s] for k in PARAM_NAMES}


def _check_routing(
    routing: Any, fields: tuple[str, ...] = ("experts", "gates", "slots", "probs")
) -> None:
    for name in (*fields, "n_experts"):
        if not hasattr(routing, name):
            raise TypeError(
                "routing must be a Routing (effx_lab.moe.reference.route or "
                f"torch_ops.route), got {describe(routing)}"
            )


def _check_params(params: Any) -> None:
    if not isinstance(params, dict) or any(k not in params for k in PARAM_NAMES):
        raise TypeError(
            f"params must be a dict with keys {list(PARAM_NAMES)} (stacked experts, "
            f"init_experts), got {describe(params)}"
        )
    e, d, f = (int(s) for s in params["w1"].shape)
    want = {"w1": (e, d, f), "b1": (e, f), "w2": (e, f, d), "b2": (e, d)}
    for k, shape in want.items():
        if tuple(params[k].shape) != shape:
            raise ValueError(f"params[{k!r}] must have shape {shape}, got "
                             f"{tuple(params[k].shape)}")  # fmt: skip


# ---------------------------------------------------------------- one rank's step
def ep_forward(
    x_local: torch.Tensor,
    routing_local: Any,
    local_params: dict[str, torch.Tensor],
    group: EPGroup,
) -> torch.Tensor:
    """This rank's part of the expert-parallel MoE (every rank calls it together).

    ``x_local (t, d)``: this rank's tokens; ``routing_local``: their rows of the
    routing (:func:`shard_routing`; ``experts``, ``gates``, ``slots`` (t, k) and
    ``n_experts``); ``local_params``: this rank's ``E / world_size`` experts
    (:func:`shard_experts`). Returns ``(t, d)``: the MoE output of this rank's tokens
    without the residual (a dropped choice adds nothing). Differentiable in
    ``x_local``, ``routing_local.gates`` and ``local_params``."""
    from effx_lab.moe import torch_ops as T

    group = _check_group(group)
    _check_routing(routing_local, ("experts", "gates", "slots"))
    g = group.world_size
    e_total = int(routing_local.n_experts)
    e_local = _check_n_experts(e_total, g)
    if int(local_params["w1"].shape[0]) != e_local:
        raise ValueError(
            f"local_params must hold E / world_size = {e_local} experts, got "
            f"{int(local_params['w1'].shape[0])}"
        )
    experts = torch.as_tensor(routing_local.experts, device=x_local.device)
    slots = torch.as_tensor(routing_local.slots, device=x_local.device)
    gates = routing_local.gates
    if x_local.dim() != 2 or x_local.shape[0] != experts.shape[0]:
        raise ValueError(f"x_local must be (t, d) with t = {experts.shape[0]} rows, "
                         f"got {describe(x_local)}")  # fmt: skip
    k = int(experts.shape[1])
    pair = torch.nonzero(slots.reshape(-1) >= 0).reshape(-1)  # kept (token, choice)
    e_kept = experts.reshape(-1)[pair]
    order = torch.sort(e_kept, stable=True).indices  # by expert: by destination
    pair, e_kept = pair[order], e_kept[order]
    per_expert = torch.bincount(e_kept, minlength=e_total).reshape(g, e_local)
    recv_matrix = exchange_counts(per_expert.to(torch.int64), group)  # (src, e)
    send_counts = per_expert.sum(1).tolist()
    recv_counts = recv_matrix.sum(1).tolist()
    rows = all_to_all_rows(x_local[pair // k], send_counts, recv_counts, group)
    # received: by source, inside a source by local expert; regroup by expert
    local_e = torch.repeat_interleave(
        torch.arange(e_local, device=rows.device).repeat(g), recv_matrix.reshape(-1)
    )
    order2 = torch.sort(local_e, stable=True).indices
    offsets = torch.zeros(e_local + 1, dtype=torch.int64)
    offsets[1:] = torch.cumsum(recv_matrix.sum(0).cpu(), 0)
    out_sorted = T.grouped_ffn(rows[order2], offsets.to(rows.device), local_params)
    out = torch.empty_like(out_sorted).index_copy(0, order2, out_sorted)
    back = all_to_all_rows(out, recv_counts, send_counts, group)
    gate = gates.reshape(-1)[pair].to(back.dtype)
    y = torch.zeros_like(x_local)
    return y.index_add(0, pair // k, back * gate[:, None])


def ep_step(
    rank: int,
    world_size: int,
    x: np.ndarray,
    routing: Any,
    params: dict[str, np.ndarray],
    grad_output: np.ndarray,
    group: EPGroup,
    device: str = "cpu",
) -> dict[str, Any]:
    """Forward and backward of this rank's shard, from the global arrays every rank
    holds: ``y`` of its tokens and the gradients of ``sum(y * grad_output)`` in its
    tokens (``x``, ``gates``) and its experts (``w1``...), as NumPy arrays, plus the
    messages and bytes it sent (``sent``)."""
    s = shard_rows(x.shape[0], world_size, rank)
    loc = shard_routing(routing, rank, world_size)
    dev = torch.device(device)
    x_l = torch.as_tensor(x[s], device=dev).requires_grad_(True)
    gates = torch.as_tensor(np.asarray(loc.gates), device=dev).requires_grad_(True)
    loc = _TorchRows(loc.experts, gates, loc.slots, int(loc.n_experts))
    p = {k: torch.as_tensor(v, device=dev).requires_grad_(True)
         for k, v in shard_experts(params, rank, world_size).items()}  # fmt: skip
    y = ep_forward(x_l, loc, p, group)
    y.backward(torch.as_tensor(grad_output[s], device=dev))

    def grad(t: torch.Tensor) -> np.ndarray:
        return (torch.zeros_like(t) if t.grad is None else t.grad).cpu().numpy()

    return {"y": y.detach().cpu().numpy(), "x": grad(x_l), "gates": grad(gates),
            **{k: grad(v) for k, v in p.items()},
            "sent": group.sent("rows")}  # fmt: skip


@dataclass
class _TorchRows:
    """A routing's rows for ep_forward when the caller's gates are NumPy (ep_step)."""

    experts: Any
    gates: Any
    slots: Any
    n_experts: int


# ---------------------------------------------------------------- processes
def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _worker(
    rank: int, world_size: int, port: int, backend: str, timeout_s: float,
    fn: Callable[..., Any], args: tuple, results: Any,
) -> None:  # fmt: skip
    """A spawned rank: join the group, run ``fn(rank, world_size, *args)``, report
    (before leaving the group, so that a failing rank's own message comes first)."""
    try:
        torch.set_num_threads(1)
        if backend == "nccl":
            torch.cuda.set_device(rank)
        dist.init_process_group(
            backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank,
            world_size=world_size, timeout=datetime.timedelta(seconds=timeout_s),
        )  # fmt: skip
        out = fn(rank, world_size, *args)
        dist.barrier()  # nobody leaves while a peer still talks to it
        results.put(("ok", rank, out))
    except BaseException as exc:  # noqa: BLE001  (reported to the caller)
        tb = traceback.format_exc(limit=6)
        results.put(("error", rank, f"{type(exc).__name__}: {exc}\n{tb}"))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


#: words of the errors a rank raises when a peer died (not the cause: reported last)
_PEER_ERRORS = ("Connection reset", "Connection closed", "connectFullMesh",
                "transport", "Timed out", "timed out")  # fmt: skip


def _first_cause(errors: dict[int, str]) -> tuple[int, str]:
    """The error to report: a rank's own failure before its peers' broken links."""
    own = [r for r, m in errors.items()
           if not any(w in m.splitlines()[0] for w in _PEER_ERRORS)]  # fmt: skip
    rank = min(own) if own else min(errors)
    return rank, errors[rank]


def run_ranks(
    fn: Callable[..., Any],
    world_size: int = 4,
    *,
    args: tuple = (),
    backend: str = "gloo",
    timeout_s: float = 120.0,
) -> list[Any]:
    """Run ``fn(rank, world_size, *args)`` on ``world_size`` spawned processes joined
    in a ``torch.distributed`` group; returns the ranks' results in rank order.

    ``fn`` must be importable by name (a module-level function: the "spawn" start
    method imports it in each child) and return picklable values; ``args`` are
    pickled to every rank. One torch thread per rank. A rank that raises makes this
    raise ``RuntimeError`` with that rank's message (the others are stopped); ranks
    still running ``timeout_s`` seconds after the start (start-up included: about 2 s
    per process on an idle 2-core machine, the import of torch) are killed and
    ``TimeoutError`` names them. ``backend="nccl"`` needs a GPU per rank (rank ``r``
    uses ``cuda:r``)."""
    import torch.multiprocessing as mp

    if not callable(fn):
        raise TypeError(f"fn must be a module-level function, got {describe(fn)}")
    world_size = check_int("world_size", world_size, min_value=1, max_value=64)
    backend = check_choice("backend", backend, BACKENDS)
    timeout_s = check_float("timeout_s", timeout_s, min_value=0.0,
                            min_inclusive=False)  # fmt: skip
    if backend == "nccl" and torch.cuda.device_count() < world_size:
        raise ValueError(
            f"backend 'nccl' needs a GPU per rank: world_size = {world_size}, "
            f"GPUs = {torch.cuda.device_count()} (use backend='gloo' on a CPU)"
        )
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = _free_port()
    procs = [
        ctx.Process(target=_worker, daemon=True,
                    args=(r, world_size, port, backend, timeout_s, fn, args, results))
        for r in range(world_size)
    ]  # fmt: skip
    for p in procs:
        p.start()
    got: dict[int, Any] = {}
    deadline = time.monotonic() + timeout_s  # start-up included
    try:
        while len(got) < world_size:
            try:
                status, rank, out = results.get(timeout=0.2)
            except queue_mod.Empty:
                dead = [r for r, p in enumerate(procs)
                        if r not in got and p.exitcode not in (None, 0)]  # fmt: skip
                if dead:
                    raise RuntimeError(
                        f"rank {dead[0]} of {world_size} exited with code "
                        f"{procs[dead[0]].exitcode} without a result"
                    ) from None
                if time.monotonic() > deadline:
                    missing = [r for r in range(world_size) if r not in got]
                    raise TimeoutError(
                        f"ranks {missing} of {world_size} did not finish within "
                        f"timeout_s = {timeout_s:g} s (start-up included); they were "
                        "stopped (a hung collective or a rank waiting for a dead peer)"
                    ) from None
                continue
            if status == "error":
                errors = {rank: out}
                grace = time.monotonic() + 2.0  # the other ranks' errors, if any
                while time.monotonic() < grace and len(errors) < world_size:
                    try:
                        status, rank, out = results.get(timeout=0.2)
                    except queue_mod.Empty:
                        continue
                    if status == "error":
                        errors[rank] = out
                rank, msg = _first_cause(errors)
                others = sorted(set(errors) - {rank})
                also = f" (then ranks {others} failed too)" if others else ""
                raise RuntimeError(
                    f"rank {rank} of {world_size} failed{also}: {msg}"
                )
            got[rank] = out
    finally:
        for p in procs:
            p.join(timeout=2.0 if len(got) == world_size else 0.1)
            if p.is_alive():
                p.kill()
                p.join(timeout=5.0)
        results.close()
    return [got[r] for r in range(world_size)]


# --------------------------------------------------------- expert parallel MoE
def _ep_job(
    rank: int, world_size: int, x: np.ndarray, routing: Any, params: dict,
    grad_output: np.ndarray, hierarchical: bool, ranks_per_node: int, backend: str,
) -> dict[str, Any]:  # fmt: skip
    group = make_group(hierarchical=hierarchical, ranks_per_node=ranks_per_node)
    device = f"cuda:{rank}" if backend == "nccl" else "cpu"
    return ep_step(rank, world_size, x, routing, params, grad_output, group, device)


def _to_numpy(name: str, v: Any) -> np.ndarray:
    if isinstance(v, torch.Tensor):
        return v.detach().cpu().numpy()
    if isinstance(v, np.ndarray):
        return v
    raise TypeError(f"{name} must be a tensor or a NumPy array, got {describe(v)}")


def expert_parallel_moe(
    x: Any,
    routing: Any,
    params: dict[str, Any],
    *,
    world_size: int = 4,
    backend: str = "gloo",
    hierarchical: bool = False,
    ranks_per_node: int = 2,
    grad_output: Any = None,
    timeout_s: float = 120.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The MoE output of ``x (T, d)`` run by ``world_size`` expert-parallel processes
    (:func:`run_ranks`, :func:`ep_forward` on each), and its gradients, gathered here.

    ``routing``: a ``Routing`` of all ``T`` tokens (either face); ``params``: the
    stacked experts (``w1 (E, d, f)``...; ``E % world_size == 0``). Returns ``(y,
    grads)``: ``y (T, d)`` equals ``moe_loop(x, routing, params)`` (no residual), and
    ``grads`` holds the gradients of ``sum(y * grad_output)`` (``grad_output`` defaults
    to ones) in ``"x"``, ``"w1"``, ``"b1"``, ``"w2"``, ``"b2"`` and ``"gates"`` (T, k),
    as torch tensors in ``x``'s dtype, plus ``"sent"``: per rank the messages and
    bytes of token rows it sent. Each rank holds a contiguous shard of the tokens
    (:func:`shard_rows`) and ``E / world_size`` experts."""
    world_size = check_int("world_size", world_size, min_value=1, max_value=64)
    backend = check_choice("backend", backend, BACKENDS)
    hierarchical = check_bool("hierarchical", hierarchical)
    ranks_per_node = check_int("ranks_per_node", ranks_per_node, min_value=1)
    if hierarchical and world_size % ranks_per_node:
        raise ValueError(f"ranks_per_node must divide world_size = {world_size}, "
                         f"got {ranks_per_node}")  # fmt: skip
    rpn = ranks_per_node if hierarchical else world_size
    _check_routing(routing)
    _check_params(params)
    xn = _to_numpy("x", x)
    if xn.ndim != 2 or xn.dtype not in (np.float32, np.float64):
        raise TypeError(f"x must be (T, d) float32 or float64, got {describe(x)}")
    n_tok, d = xn.shape
    pn = {k: _to_numpy(f"params[{k!r}]", params[k]).astype(xn.dtype, copy=False)
          for k in PARAM_NAMES}  # fmt: skip
    if pn["w1"].shape[1] != d:
        raise ValueError(f"params['w1'] must be (E, d = {d}, f), got "
                         f"{pn['w1'].shape}")  # fmt: skip
    e = int(pn["w1"].shape[0])
    if int(routing.n_experts) != e:
        raise ValueError(f"routing.n_experts must equal the experts in params ({e}),"
                         f" got {int(routing.n_experts)}")  # fmt: skip
    _check_n_experts(e, world_size)
    if tuple(routing.experts.shape)[0] != n_tok:
        raise ValueError(f"routing must route x's {n_tok} tokens, got "
                         f"{tuple(routing.experts.shape)[0]}")  # fmt: skip
    go = np.ones_like(xn) if grad_output is None else _to_numpy(
        "grad_output", grad_output).astype(xn.dtype, copy=False)  # fmt: skip
    if go.shape != xn.shape:
        raise ValueError(f"grad_output must have x's shape {xn.shape}, got "
                         f"{go.shape}")  # fmt: skip
    plain = _NumpyRouting(
        _to_numpy("routing.experts", routing.experts),
        _to_numpy("routing.gates", routing.gates).astype(xn.dtype),
        _to_numpy("routing.slots", routing.slots),
        np.zeros((n_tok, 0), xn.dtype), int(routing.n_experts),
    )  # probs are not needed here  # fmt: skip
    outs = run_ranks(
        _ep_job, world_size, backend=backend, timeout_s=timeout_s,
        args=(xn, plain, pn, go, hierarchical, rpn, backend),
    )  # fmt: skip
    cat = {k: np.concatenate([o[k] for o in outs]) for k in ("y", "x", "gates")}
    cat.update({k: np.concatenate([o[k] for o in outs]) for k in PARAM_NAMES})
    grads = {k: torch.from_numpy(cat[k]) for k in ("x", *PARAM_NAMES, "gates")}
    grads["sent"] = [o["sent"] for o in outs]  # type: ignore[assignment]
    return torch.from_numpy(cat["y"]), grads


def single_process_moe(
    x: Any, routing: Any, params: dict[str, Any], *, grad_output: Any = None
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """What :func:`expert_parallel_moe` computes, in this process: ``moe_loop`` (the
    torch face's per-token definition) and autograd. Returns ``(y, grads)`` with the
    same keys (no ``"sent"``), in ``x``'s dtype: the reference the distributed run is
    checked against."""
    from effx_lab.moe import torch_ops as T
    from effx_lab.moe._format import Routing

    _check_routing(routing)
    _check_params(params)
    xn = _to_numpy("x", x)
    xt = torch.tensor(xn, requires_grad=True)
    pt = {k: torch.tensor(_to_numpy(f"params[{k!r}]", params[k]), dtype=xt.dtype,
                          requires_grad=True) for k in PARAM_NAMES}  # fmt: skip
    gates = torch.tensor(_to_numpy("routing.gates", routing.gates), dtype=xt.dtype,
                         requires_grad=True)  # fmt: skip
    rt = Routing(
        torch.as_tensor(_to_numpy("routing.experts", routing.experts)), gates,
        torch.as_tensor(_to_numpy("routing.slots", routing.slots)),
        int(routing.capacity), int(routing.n_experts),
        torch.as_tensor(_to_numpy("routing.probs", routing.probs)),
    )  # fmt: skip
    y = T.moe_loop(xt, rt, pt)
    go = torch.ones_like(y) if grad_output is None else torch.as_tensor(
        _to_numpy("grad_output", grad_output), dtype=y.dtype)  # fmt: skip
    if go.shape != y.shape:
        raise ValueError(f"grad_output must have x's shape {tuple(y.shape)}, got "
                         f"{tuple(go.shape)}")  # fmt: skip
    y.backward(go)
    grads = {"x": xt.grad, **{k: pt[k].grad for k in PARAM_NAMES}, "gates": gates.grad}
    return y.detach(), {k: torch.zeros_like(xt if k == "x" else pt.get(k, gates))
                        if v is None else v for k, v in grads.items()}  # fmt: skip


@dataclass
class _NumpyRouting:
    """The routing fields expert parallelism needs, as plain arrays (pickled to the
    ranks; :func:`shard_routing` slices it like a Routing)."""

    experts: np.ndarray
    gates: np.ndarray
    slots: np.ndarray
    probs: np.ndarray
    n_experts: int


# ----------------------------------------------------------- timing the exchange
def _time_job(
    rank: int, world_size: int, ranks_per_node: int, rows_per_pair: int, d: int,
    repeats: int,
) -> dict[str, Any]:  # fmt: skip
    out: dict[str, Any] = {}
    recv: dict[str, torch.Tensor] = {}
    g = world_size
    counts = [rows_per_pair] * g
    # row values say (source, destination, index): exactness is checkable
    src = torch.full((g * rows_per_pair, d), float(rank), dtype=torch.float64)
    src[:, 1] = torch.arange(g).repeat_interleave(rows_per_pair).double()
    src[:, 2] = torch.arange(rows_per_pair).repeat(g).double()
    if d > 3:
        src[:, 3:] = torch.randn(g * rows_per_pair, d - 3,
                                 generator=torch.Generator().manual_seed(rank))
    for hier in (False, True):
        group = make_group(hierarchical=hier, ranks_per_node=ranks_per_node)
        recv[str(hier)] = all_to_all_rows(src, counts, counts, group)
        sent = group.sent("rows")
        times = []
        for _ in range(repeats):
            dist.barrier()
            t0 = time.perf_counter()
            all_to_all_rows(src, counts, counts, group)
            times.append(time.perf_counter() - t0)
        out["hierarchical" if hier else "flat"] = {"sent": sent, "times_s": times}
    want_src = torch.arange(g).repeat_interleave(rows_per_pair).double()
    flat = recv["False"]
    out["flat_correct"] = bool(torch.equal(flat[:, 0], want_src)
                               and bool((flat[:, 1] == rank).all()))  # fmt: skip
    out["equal"] = bool(torch.equal(flat, recv["True"]))
    return out


def time_all_to_all(
    world_size: int = 4,
    ranks_per_node: int = 2,
    *,
    rows_per_pair: int = 64,
    d: int = 256,
    repeats: int = 20,
    timeout_s: float = 120.0,
) -> dict[str, Any]:
    """Run a flat and a hierarchical all-to-all of ``rows_per_pair`` float64 rows of
    ``d`` values from every rank to every rank on ``world_size`` gloo processes.

    Returns ``{"config", "flat", "hierarchical", "equal", "counted", "model"}``: per
    mode the median over ``repeats`` of the slowest rank's wall time per exchange
    (``seconds``), what each rank sent (``sent``: messages, bytes, logged by the
    run), ``equal``: the hierarchical exchange delivered bit-equal rows in the flat
    exchange's order, ``model``: :func:`count_all_to_all` for the same sizes (the
    tests check the logged counts against it). On this course's 2-core machine only 4
    ranks make sense: more processes than cores measure the scheduler, not the
    exchange; every "node" here is the same machine (shared memory, no network), so
    the timing shows the stages' overhead, not the network saving."""
    world_size = check_int("world_size", world_size, min_value=1, max_value=64)
    ranks_per_node = check_int("ranks_per_node", ranks_per_node, min_value=1,
                               max_value=world_size)  # fmt: skip
    if world_size % ranks_per_node:
        raise ValueError(f"ranks_per_node must divide world_size = {world_size}, "
                         f"got {ranks_per_node}")  # fmt: skip
    rows_per_pair = check_int("rows_per_pair", rows_per_pair, min_value=1)
    d = check_int("d", d, min_value=3)
    repeats = check_int("repeats", repeats, min_value=1)
    outs = run_ranks(_time_job, world_size, timeout_s=timeout_s,
                     args=(ranks_per_node, rows_per_pair, d, repeats))  # fmt: skip
    res: dict[str, Any] = {
        "config": {"world_size": world_size, "ranks_per_node": ranks_per_node,
                   "rows_per_pair": rows_per_pair, "d": d, "dtype": "float64",
                   "repeats": repeats, "backend": "gloo", "threads_per_rank": 1},
    }  # fmt: skip
    for mode in ("flat", "hierarchical"):
        per_rep = np.max([o[mode]["times_s"] for o in outs], axis=0)
        res[mode] = {"seconds": float(np.median(per_rep)),
                     "sent": [o[mode]["sent"] for o in outs]}  # fmt: skip
    res["equal"] = all(o["equal"] and o["flat_correct"] for o in outs)
    res["model"] = count_all_to_all(world_size, ranks_per_node,
                                    rows_per_pair * d * 8)  # fmt: skip
    return res
