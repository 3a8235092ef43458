"""Running the experts on the routed tokens, three ways with one result: the PyTorch
face (05.3).

The same names and signatures as :mod:`effx_lab.moe._np_dispatch` (see it for the
definitions and the layout of the experts' weights), written in torch primitives so
that they run on any device and differentiate with respect to ``x``, the experts'
weights and ``routing.gates`` (the router trains through the gates). ``GELU`` is
``F.gelu(..., approximate="tanh")``, the shared LM's.

Speed: :func:`moe_grouped` does one gather of the kept rows, one GEMM pair per
non-empty expert (a Python loop over experts, never over tokens) and one
``index_add``; it reads ``E + 1`` offsets back to the host (the segment bounds), as a
grouped GEMM launch must. :func:`moe_einsum` reads nothing back except inside
:func:`dispatch_combine` (the positions of the kept pairs). :func:`moe_loop` is the
per-token definition, slow on purpose: it reads the routing to the host once.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from effx_lab._validate import check_alloc, check_choice, check_int

from . import _np_dispatch
from .shapes import (
    MAX_DISPATCH_ELEMENTS,
    STRATEGIES,
    check_match,
    check_offsets,
    check_routing,
    check_rows,
    check_x,
    expert_shapes,
)

__all__ = [
    "STRATEGIES",
    "init_experts",
    "expert_ffn",
    "moe_loop",
    "dispatch_combine",
    "moe_einsum",
    "sort_by_expert",
    "grouped_ffn",
    "moe_grouped",
    "moe_forward",
]


def _params(params: Any) -> tuple[int, int, int]:
    return expert_shapes(params, torch.Tensor, "torch_ops")


def _routing(routing: Any) -> tuple[int, int]:
    return check_routing(routing, torch.Tensor, "torch_ops")


def _inputs(x: Any, routing: Any, params: Any) -> tuple[int, int, int, int]:
    """Check ``moe_*(x, routing, params)``; returns ``(T, k, E, d)``."""
    n_experts, d, _ = _params(params)
    n_tokens = check_x(x, params, torch.Tensor, "torch_ops")
    _, k = _routing(routing)
    check_match(routing, n_tokens, n_experts)
    if routing.experts.device != x.device:
        raise ValueError(
            f"routing must be on the device of x ({x.device}), got "
            f"{routing.experts.device}"
        )
    return n_tokens, k, n_experts, d


def _ffn(x: torch.Tensor, params: Mapping[str, torch.Tensor], e: int) -> torch.Tensor:
    """Expert ``e`` on ``x (n, d)``, unchecked (``addmm``: the bias in the GEMM)."""
    h = F.gelu(torch.addmm(params["b1"][e], x, params["w1"][e]), approximate="tanh")
    return torch.addmm(params["b2"][e], h, params["w2"][e])


# ------------------------------------------------------------------------ the experts
def init_experts(
    d: int, f: int, n_experts: int, seed: int = 0
) -> dict[str, torch.Tensor]:
    """The weights of :func:`effx_lab.moe.reference.init_experts` (the same NumPy
    draws) as float32 CPU tensors."""
    return {
        k: torch.from_numpy(np.ascontiguousarray(v))
        for k, v in _np_dispatch.init_experts(d, f, n_experts, seed).items()
    }


def expert_ffn(
    x: torch.Tensor, params: Mapping[str, torch.Tensor], e: int
) -> torch.Tensor:
    """Expert ``e`` on the rows of ``x (T, d)``; see the reference."""
    n_experts, _, _ = _params(params)
    check_x(x, params, torch.Tensor, "torch_ops")
    e = check_int("e", e, min_value=0, max_value=n_experts - 1)
    return _ffn(x, params, e)


# ------------------------------------------------------------------ strategy 1: loop
def moe_loop(
    x: torch.Tensor, routing: Any, params: Mapping[str, torch.Tensor]
) -> torch.Tensor:
    """The MoE output token by token (the definition); see the reference. One Python
    iteration per (token, kept choice): slow on purpose, the baseline of 05.3."""
    n_tokens, k, _, d = _inputs(x, routing, params)
    experts = routing.experts.tolist()
    slots = routing.slots.tolist()
    gates = routing.gates.to(x.dtype)
    rows = []
    for t in range(n_tokens):
        acc = x.new_zeros(d)
        for j in range(k):
            if slots[t][j] < 0:  # dropped
                continue
            acc = acc + gates[t, j] * _ffn(x[t : t + 1], params, experts[t][j])[0]
        rows.append(acc)
    return torch.stack(rows) if rows else x.new_zeros((0, d))


# ---------------------------------------------------------------- strategy 2: einsum
def dispatch_combine(routing: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """The dense ``(T, E, C)`` dispatch (0/1) and combine (gates) tensors; see the
    reference. ``combine`` is differentiable with respect to ``routing.gates``."""
    n_tokens, k = _routing(routing)
    n_experts, cap = int(routing.n_experts), int(routing.capacity)
    gates = routing.gates
    if n_tokens * n_experts * cap > MAX_DISPATCH_ELEMENTS:
        raise ValueError(
            "dispatch_combine would build (T, E, C) = "
            f"({n_tokens}, {n_experts}, {cap}) "
            f"tensors, more than {MAX_DISPATCH_ELEMENTS} elements: use moe_grouped"
        )
    check_alloc(
        f"dispatch_combine (T={n_tokens}, E={n_experts}, C={cap})",
        2 * n_tokens * n_experts * cap * gates.element_size(),
    )
    t, j = torch.nonzero(routing.slots >= 0, as_tuple=True)
    e, c = routing.experts[t, j], routing.slots[t, j]
    shape = (n_tokens, n_experts, cap)
    zeros = torch.zeros(shape, dtype=gates.dtype, device=gates.device)
    dispatch = zeros.index_put((t, e, c), torch.ones_like(t, dtype=gates.dtype))
    combine = zeros.index_put((t, e, c), gates[t, j])
    return dispatch, combine


def moe_einsum(
    x: torch.Tensor, routing: Any, params: Mapping[str, torch.Tensor]
) -> torch.Tensor:
    """The MoE output with dense dispatch/combine einsums and batched GEMMs over the
    ``(E, C, d)`` buffers, padding rows included; see the reference."""
    _inputs(x, routing, params)
    dispatch, combine = dispatch_combine(routing)
    dispatch, combine = dispatch.to(x.dtype), combine.to(x.dtype)
    x_e = torch.einsum("tec,td->ecd", dispatch, x)
    h = torch.baddbmm(params["b1"][:, None, :], x_e, params["w1"])
    h = F.gelu(h, approximate="tanh")
    h = torch.baddbmm(params["b2"][:, None, :], h, params["w2"])
    return torch.einsum("tec,ecd->td", combine, h)


# --------------------------------------------------------------- strategy 3: grouped
def sort_by_expert(routing: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``(order, offsets)``: the flat indices ``t * k + j`` of the kept pairs sorted
    stably by expert, and the ``(E+1,)`` int64 segment bounds; see the reference."""
    _routing(routing)
    n_experts = int(routing.n_experts)
    kept = torch.nonzero(routing.slots.reshape(-1) >= 0).reshape(-1)
    experts = routing.experts.reshape(-1)[kept]
    order = kept[torch.argsort(experts, stable=True)].to(torch.int64)
    counts = torch.bincount(experts, minlength=n_experts)
    offsets = torch.zeros(n_experts + 1, dtype=torch.int64, device=kept.device)
    offsets[1:] = torch.cumsum(counts, 0)
    return order, offsets


def grouped_ffn(
    x_sorted: torch.Tensor, offsets: torch.Tensor, params: Mapping[str, torch.Tensor]
) -> torch.Tensor:
    """Expert ``e`` on rows ``offsets[e]:offsets[e+1]`` of ``x_sorted (N, d)``: one GEMM
    pair per non-empty segment (a loop over experts), no padding; see the reference."""
    n_experts, d, _ = _params(params)
    n_rows = check_rows(x_sorted, params, torch.Tensor, "torch_ops")
    bounds = check_offsets(offsets, n_rows, n_experts, torch.Tensor)
    parts = [
        _ffn(x_sorted[lo:hi], params, e)
        for e, (lo, hi) in enumerate(zip(bounds, bounds[1:]))
        if hi > lo
    ]
    return torch.cat(parts) if parts else x_sorted.new_zeros((0, d))


def moe_grouped(
    x: torch.Tensor, routing: Any, params: Mapping[str, torch.Tensor]
) -> torch.Tensor:
    """The MoE output by sort + grouped GEMM + weighted scatter-add: one gather, one
    GEMM pair per non-empty expert, one ``index_add``; see the reference."""
    _, k, _, _ = _inputs(x, routing, params)
    order, offsets = sort_by_expert(routing)
    tokens = order // k
    h = grouped_ffn(x.index_select(0, tokens), offsets, params)
    gates = routing.gates.reshape(-1).index_select(0, order).to(x.dtype)
    return torch.zeros_like(x).index_add(0, tokens, h * gates[:, None])


def moe_forward(
    x: torch.Tensor,
    routing: Any,
    params: Mapping[str, torch.Tensor],
    *,
    strategy: str = "loop",
) -> torch.Tensor:
    """The MoE output ``(T, d)`` (no residual) by ``strategy``: ``"loop"``,
    ``"einsum"`` or ``"grouped"``; see the reference."""
    check_choice("strategy", strategy, STRATEGIES)
    fn = {"loop": moe_loop, "einsum": moe_einsum, "grouped": moe_grouped}[strategy]
    return fn(x, routing, params)

