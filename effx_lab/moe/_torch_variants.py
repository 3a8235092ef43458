"""Task-level routing and PR-MoE: the PyTorch face (05.2). Same names, signatures and
rules as :mod:`effx_lab.moe._np_variants` (read it for the method); tensors in and
out, differentiable through :func:`pr_moe`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from effx_lab._validate import check_int, describe

from ._format import Routing
from ._np_variants import (
    MLP_KEYS,
    check_mlp,
    check_pyramid,
    check_table,
    check_task_ids,
    expert_sizes,
    param_count,
    pyramid_schedule,
)
from ._torch_dispatch import moe_forward
from ._torch_route import assign_slots

__all__ = [
    "task_routing",
    "task_route",
    "task_expert_bytes",
    "pr_moe",
    "pyramid_experts",
    "moe_param_count",
]


def _require(name: str, value: Any) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch tensor, got {describe(value)}")
    return value


def task_routing(task_ids: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """``experts[t] = table[task_ids[t]]``, int64 ``(T, k)`` on ``task_ids``' device;
    see the reference."""
    _require("task_ids", task_ids)
    _require("table", table)
    n_tasks, _ = check_table(table)
    check_task_ids(task_ids, n_tasks)
    return table.to(device=task_ids.device, dtype=torch.int64)[task_ids.long()]


def task_route(task_ids: torch.Tensor, table: torch.Tensor, n_experts: int) -> Routing:
    """Task-level routing as a Routing (gates ``1 / k``, nothing dropped); see the
    reference."""
    n_experts = check_int("n_experts", n_experts, min_value=1)
    _require("table", table)
    check_table(table, n_experts)
    experts = task_routing(task_ids, table)
    n_tokens, k = experts.shape
    counts = torch.bincount(experts.reshape(-1), minlength=n_experts)
    capacity = max(1, int(counts.max())) if n_tokens else 1
    slots = assign_slots(experts, n_experts, capacity)
    kw = {"dtype": torch.float64, "device": experts.device}
    gates = torch.full((n_tokens, k), 1.0 / k, **kw)
    probs = torch.zeros((n_tokens, n_experts), **kw).scatter(1, experts, 1.0 / k)
    return Routing(experts, gates, slots, capacity, n_experts, probs)


def task_expert_bytes(table: torch.Tensor, params: Any, task: int) -> tuple[int, int]:
    """``(bytes of task ``task``'s experts, bytes of all experts)``; see the
    reference."""
    _require("table", table)
    sizes = expert_sizes(params)
    n_tasks, _ = check_table(table, len(sizes))
    task = check_int("task", task, min_value=0, max_value=n_tasks - 1)
    row = sorted(set(table[task].tolist()))
    return int(sizes[row].sum()), int(sizes.sum())


def pr_moe(
    x: torch.Tensor,
    params: Mapping[str, torch.Tensor],
    routing: Routing,
    *,
    strategy: str = "loop",
) -> torch.Tensor:
    """``MLP(x) + sum over kept choices of gate * expert(x)``, ``(T, d)``; see the
    reference."""
    _require("x", x)
    if x.ndim != 2 or not x.is_floating_point():
        raise ValueError(f"x must be a 2-D float tensor (T, d), got {describe(x)}")
    check_mlp(params, x.shape[1], x.dtype)
    experts = {k: v for k, v in params.items() if k not in MLP_KEYS}
    y = moe_forward(x, routing, experts, strategy=strategy)
    h = F.gelu(x @ params["mlp_w1"] + params["mlp_b1"], approximate="tanh")
    return h @ params["mlp_w2"] + params["mlp_b2"] + y


def pyramid_experts(
    n_layers: int, base: int = 32, top: int = 64, *, top_layers: int | None = None
) -> list[int]:
    """PR-MoE's experts per MoE layer; see the reference."""
    return pyramid_schedule(*check_pyramid(n_layers, base, top, top_layers))


def moe_param_count(
    d_model: int, d_ff: int, experts_per_layer: Any, *, residual: bool = False
) -> int:
    """Parameters of a stack of MoE FFN layers; see the reference."""
    return param_count(d_model, d_ff, experts_per_layer, residual)
