"""PyTorch's own grouped GEMM, ``torch.nn.functional.grouped_mm``: the library baseline
beside the course's sort + grouped GEMM (05.3).

:func:`moe_grouped_mm` computes what :func:`effx_lab.moe.torch_ops.moe_grouped` computes
(sort the kept (token, choice) pairs by expert, run each expert on its contiguous
segment, scale by the gates, scatter-add back) with the two per-expert GEMM loops
replaced by two calls of ``F.grouped_mm``: one operator for all experts, the segments
given by ``offs``, the **ends** of the groups as ``int32`` (``offsets[1:]`` of
:func:`~effx_lab.moe.torch_ops.sort_by_expert`). The weights are already in the layout
it wants for ``x @ w``: ``w1 (E, d, f)``, ``w2 (E, f, d)``. It has no per-group bias in
torch 2.13 (``Bias not supported yet``), so the biases are gathered per row and added.

What it takes (torch 2.13): float32, bfloat16 or float16, not float64 (so agreement
with the loop is shown in float32 with a rounding bound, see the tests); on CPU every
row stride a multiple of 16 bytes (``d`` and ``f`` multiples of 4 in float32, of 8 in
16-bit); on CUDA an sm_80+ GPU (its fast path is bfloat16 on sm_90). It is
differentiable. This is PyTorch's implementation, not ours: it is here to be measured
against (``python -m effx_lab.bench moe``, the GPU check).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from ._torch_dispatch import _inputs, sort_by_expert

__all__ = ["DTYPES", "available", "why_unavailable", "moe_grouped_mm"]

#: The dtypes ``F.grouped_mm`` multiplies (torch 2.13).
DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def why_unavailable() -> str | None:
    """Why :func:`moe_grouped_mm` cannot run with this torch, or ``None``."""
    if not hasattr(F, "grouped_mm"):
        return (
            f"torch {torch.__version__} has no torch.nn.functional.grouped_mm (it "
            "appeared in torch 2.8 and runs on CPUs from torch 2.10 or so); use "
            "effx_lab.moe.torch_ops.moe_grouped"
        )
    return None


def available() -> bool:
    """Whether ``F.grouped_mm`` exists here; see :func:`why_unavailable`."""
    return why_unavailable() is None


def moe_grouped_mm(
    x: torch.Tensor, routing: Any, params: Mapping[str, torch.Tensor]
) -> torch.Tensor:
    """The MoE output ``(T, d)`` (no residual) with two ``F.grouped_mm`` calls over the
    expert-sorted kept rows; the same result as
    :func:`effx_lab.moe.torch_ops.moe_grouped` up to rounding.

    ``x (T, d)``, ``routing`` from :func:`effx_lab.moe.torch_ops.route`, ``params``
    the experts' tensors (:func:`~effx_lab.moe.torch_ops.init_experts`), one dtype in
    :data:`DTYPES` (``routing.gates`` is cast to it), one device. Differentiable with
    respect to ``x``, the weights and the gates.
    """
    reason = why_unavailable()
    if reason is not None:
        raise RuntimeError(f"grouped_mm cannot run here: {reason}")
    _, k, _, d = _inputs(x, routing, params)
    if x.dtype not in DTYPES:
        raise TypeError(
            "x and params must have dtype float32, bfloat16 or float16 (what "
            f"F.grouped_mm multiplies), got {x.dtype}; use "
            "effx_lab.moe.torch_ops.moe_grouped for float64"
        )
    f = int(params["w1"].shape[2])
    align = 16 // x.element_size()
    if x.device.type == "cpu" and (d % align or f % align):
        raise ValueError(
            f"d and f must be multiples of {align} in {x.dtype} on CPU (F.grouped_mm "
            f"wants row strides of a multiple of 16 bytes), got d={d}, f={f}"
        )
    order, offsets = sort_by_expert(routing)
    tokens = order // k
    row_expert = routing.experts.reshape(-1).index_select(0, order)
    ends = offsets[1:].to(torch.int32)
    xs = x.index_select(0, tokens)
    h = F.grouped_mm(xs, params["w1"], offs=ends)
    h = F.gelu(h + params["b1"].index_select(0, row_expert), approximate="tanh")
    h = F.grouped_mm(h, params["w2"], offs=ends)
    h = h + params["b2"].index_select(0, row_expert)
    gates = routing.gates.reshape(-1).index_select(0, order).to(x.dtype)
    return torch.zeros_like(x).index_add(0, tokens, h * gates[:, None])
