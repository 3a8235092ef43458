"""Running the experts on the routed tokens, three ways with one result: the NumPy face
(05.3).

A routing decision (:class:`~effx_lab.moe._format.Routing`, made by ``route``) gives
every token ``t`` its ``k`` chosen experts ``experts[t, j]``, their combine weights
``gates[t, j]`` and their places ``slots[t, j]`` in the experts' buffers of
``capacity`` rows (``-1``: the choice overflowed and is dropped). Every strategy here
computes the MoE output **without the residual**::

    y_t = sum over kept j of gates[t, j] * FFN_{experts[t, j]}(x_t)
    FFN_e(x) = gelu_tanh(x @ w1[e] + b1[e]) @ w2[e] + b2[e]

so a dropped choice contributes nothing and a token whose every choice is dropped gets
exactly 0 (the layer adds ``y`` to the residual: the token passes through unchanged, the
Switch Transformer's rule). The experts' weights are stacked in one dict in the shared
LM's layout (``(in, out)``): ``w1 (E, d, f)``, ``b1 (E, f)``, ``w2 (E, f, d)``,
``b2 (E, d)`` (:func:`init_experts`).

The three strategies (:func:`moe_forward` picks one):

* :func:`moe_loop`: token by token, choice by choice: the definition, the reference
  the others are tested against;
* :func:`moe_einsum`: the Mesh-TensorFlow / Switch formulation. :func:`dispatch_combine`
  turns the routing into two dense ``(T, E, C)`` tensors, a 0/1 ``dispatch`` and the
  gate-weighted ``combine``; one einsum gathers the tokens into ``E`` buffers of ``C``
  rows, a batched GEMM runs every expert on its whole buffer (**padding rows
  included**: ``E * C`` rows however many tokens came), a second einsum combines. Its
  cost grows with ``T * E * C`` in the einsums and ``E * C`` in the GEMMs;
* :func:`moe_grouped`: sort the kept (token, choice) pairs by expert
  (:func:`sort_by_expert`), gather their rows once, run each expert on its contiguous
  segment (:func:`grouped_ffn`, no padding: the MegaBlocks idea), scale by the gates
  and scatter-add back. Its GEMMs see exactly the kept pairs.

**NaN.** Nothing is clamped or masked by a multiply in the loop and the grouped
strategies: a NaN in token ``t`` reaches ``y[t]`` only (and not even that when every
choice of ``t`` is dropped: its row is never read). The einsum strategy sends it to
**every** output: the dispatch einsum sums over all tokens, and ``0 * NaN = NaN`` fills
every buffer row, as any dense one-hot formulation does (the known difference of
docs/ARCHITECTURE.md, "Non-finite values").
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from effx_lab._validate import check_alloc, check_choice, check_int
from effx_lab.models.reference import gelu_tanh

from .shapes import (
    EXPERT_PARAM_NAMES,
    MAX_DISPATCH_ELEMENTS,
    STRATEGIES,
    check_match,
    check_offsets,
    check_rows,
    check_routing,
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

# --------------------------------------------------------------------------- helpers
def _params(params: Any) -> tuple[int, int, int]:
    return expert_shapes(params, np.ndarray, "reference")


def _routing(routing: Any) -> tuple[int, int]:
    return check_routing(routing, np.ndarray, "reference")


def _inputs(x: Any, routing: Any, params: Any) -> tuple[int, int, int, int]:
    """Check ``moe_*(x, routing, params)``; returns ``(T, k, E, d)``."""
    n_experts, d, _ = _params(params)
    n_tokens = check_x(x, params, np.ndarray, "reference")
    _, k = _routing(routing)
    check_match(routing, n_tokens, n_experts)
    return n_tokens, k, n_experts, d


# ------------------------------------------------------------------------ the experts
def init_experts(
    d: int, f: int, n_experts: int, seed: int = 0
) -> dict[str, np.ndarray]:
    """Random weights of ``n_experts`` GELU experts ``d -> f -> d``, stacked, float32.

    ``w1 (E, d, f)`` and ``w2 (E, f, d)`` are drawn from ``N(0, 1 / fan_in)`` (so an
    expert's output has the scale of its input), ``b1 (E, f)`` and ``b2 (E, d)`` from
    ``N(0, 0.02^2)``; one ``numpy.random.default_rng(seed)`` in that order, so the torch
    face returns the same numbers as tensors.
    """
    d = check_int("d", d, min_value=1)
    f = check_int("f", f, min_value=1)
    n_experts = check_int("n_experts", n_experts, min_value=1)
    seed = check_int("seed", seed, min_value=0)
    check_alloc(
        f"init_experts(d={d}, f={f}, n_experts={n_experts})",
        4 * n_experts * (2 * d * f + d + f),
    )
    rng = np.random.default_rng(seed)
    w1 = rng.standard_normal((n_experts, d, f)) / np.sqrt(d)
    b1 = 0.02 * rng.standard_normal((n_experts, f))
    w2 = rng.standard_normal((n_experts, f, d)) / np.sqrt(f)
    b2 = 0.02 * rng.standard_normal((n_experts, d))
    arrays = (w1, b1, w2, b2)
    return {k: v.astype(np.float32) for k, v in zip(EXPERT_PARAM_NAMES, arrays)}


def expert_ffn(
    x: np.ndarray, params: Mapping[str, np.ndarray], e: int
) -> np.ndarray:
    """Expert ``e`` on the rows of ``x (T, d)``: ``gelu_tanh(x @ w1[e] + b1[e]) @ w2[e]
    + b2[e]``, shape ``(T, d)``."""
    n_experts, _, _ = _params(params)
    check_x(x, params, np.ndarray, "reference")
    e = check_int("e", e, min_value=0, max_value=n_experts - 1)
    return _ffn(x, params, e)


def _ffn(x: np.ndarray, params: Mapping[str, np.ndarray], e: int) -> np.ndarray:
    """Expert ``e`` on ``x``, unchecked."""
    h = gelu_tanh(x @ params["w1"][e] + params["b1"][e])
    return h @ params["w2"][e] + params["b2"][e]


# ------------------------------------------------------------------ strategy 1: loop
def moe_loop(
    x: np.ndarray, routing: Any, params: Mapping[str, np.ndarray]
) -> np.ndarray:
    """The MoE output token by token: for each token ``t`` and each kept choice ``j``
    (``slots[t, j] >= 0``), add ``gates[t, j] * FFN_{experts[t, j]}(x_t)``. The
    definition the other strategies are tested against; ``(T, d)``, no residual."""
    n_tokens, k, _, _ = _inputs(x, routing, params)
    gates = routing.gates.astype(x.dtype, copy=False)
    y = np.zeros_like(x)
    for t in range(n_tokens):
        for j in range(k):
            if routing.slots[t, j] < 0:  # overflowed its expert's buffer: dropped
                continue
            e = int(routing.experts[t, j])
            y[t] += gates[t, j] * _ffn(x[t : t + 1], params, e)[0]
    return y


# ---------------------------------------------------------------- strategy 2: einsum
def dispatch_combine(routing: Any) -> tuple[np.ndarray, np.ndarray]:
    """The routing as two dense ``(T, E, C)`` tensors (Mesh-TensorFlow, Switch):
    ``dispatch[t, e, c] = 1`` where token ``t`` sits in row ``c`` of expert ``e``'s
    buffer, ``combine[t, e, c]`` its gate there; zero elsewhere (dropped choices have
    no row). Both in the dtype of ``routing.gates``."""
    n_tokens, k = _routing(routing)
    n_experts, cap = int(routing.n_experts), int(routing.capacity)
    if n_tokens * n_experts * cap > MAX_DISPATCH_ELEMENTS:
        raise ValueError(
            "dispatch_combine would build (T, E, C) = "
            f"({n_tokens}, {n_experts}, {cap}) "
            f"tensors, more than {MAX_DISPATCH_ELEMENTS} elements: use moe_grouped"
        )
    check_alloc(
        f"dispatch_combine (T={n_tokens}, E={n_experts}, C={cap})",
        2 * n_tokens * n_experts * cap * routing.gates.dtype.itemsize,
    )
    dispatch = np.zeros((n_tokens, n_experts, cap), dtype=routing.gates.dtype)
    combine = np.zeros_like(dispatch)
    t, j = np.nonzero(routing.slots >= 0)
    e, c = routing.experts[t, j], routing.slots[t, j]
    dispatch[t, e, c] = 1.0
    combine[t, e, c] = routing.gates[t, j]
    return dispatch, combine


def moe_einsum(
    x: np.ndarray, routing: Any, params: Mapping[str, np.ndarray]
) -> np.ndarray:
    """The MoE output with dense dispatch/combine einsums and batched GEMMs::

        x_e = einsum("tec,td->ecd", dispatch, x)       # E buffers of C rows
        h   = gelu(x_e @ w1 + b1) @ w2 + b2            # every row, padding included
        y   = einsum("tec,ecd->td", combine, h)

    Padding rows (buffers not full) are zeros that still go through the experts (their
    outputs are multiplied by zeros in ``combine``): the cost of ``E * C`` rows."""
    _inputs(x, routing, params)
    dispatch, combine = dispatch_combine(routing)
    dispatch, combine = dispatch.astype(x.dtype), combine.astype(x.dtype)
    x_e = np.einsum("tec,td->ecd", dispatch, x)
    h = gelu_tanh(x_e @ params["w1"] + params["b1"][:, None, :])
    h = h @ params["w2"] + params["b2"][:, None, :]
    return np.einsum("tec,ecd->td", combine, h)


# --------------------------------------------------------------- strategy 3: grouped
def sort_by_expert(routing: Any) -> tuple[np.ndarray, np.ndarray]:
    """The kept (token, choice) pairs grouped by expert.

    Returns ``order``: the flat indices ``p = t * k + j`` of the kept pairs, sorted by
    expert, stably (so within an expert in token order), and ``offsets (E+1,)`` int64:
    expert ``e``'s pairs are ``order[offsets[e]:offsets[e+1]]``. The token of pair
    ``p`` is ``p // k``, its gate ``gates.reshape(-1)[p]``.
    """
    _, k = _routing(routing)
    n_experts = int(routing.n_experts)
    kept = np.flatnonzero(routing.slots.reshape(-1) >= 0)
    experts = routing.experts.reshape(-1)[kept]
    order = kept[np.argsort(experts, kind="stable")].astype(np.int64)
    counts = np.bincount(experts, minlength=n_experts)
    offsets = np.zeros(n_experts + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    return order, offsets


def grouped_ffn(
    x_sorted: np.ndarray, offsets: np.ndarray, params: Mapping[str, np.ndarray]
) -> np.ndarray:
    """Expert ``e`` on rows ``offsets[e]:offsets[e+1]`` of ``x_sorted (N, d)``, for
    every ``e``: one GEMM pair per non-empty segment, no padding. Returns ``(N, d)``."""
    n_experts, _, _ = _params(params)
    n_rows = check_rows(x_sorted, params, np.ndarray, "reference")
    bounds = check_offsets(offsets, n_rows, n_experts, np.ndarray)
    out = np.empty_like(x_sorted)
    for e, (lo, hi) in enumerate(zip(bounds, bounds[1:])):
        if hi > lo:
            out[lo:hi] = _ffn(x_sorted[lo:hi], params, e)
    return out


def moe_grouped(
    x: np.ndarray, routing: Any, params: Mapping[str, np.ndarray]
) -> np.ndarray:
    """The MoE output by sort + grouped GEMM + weighted scatter-add (MegaBlocks'
    idea without its block-sparse kernels): gather the kept pairs' rows in expert order
    (:func:`sort_by_expert`), run :func:`grouped_ffn`, multiply each row by its gate and
    add it to its token's output. No padding rows, nothing for dropped choices."""
    _, k, _, _ = _inputs(x, routing, params)
    order, offsets = sort_by_expert(routing)
    tokens = order // k
    h = grouped_ffn(x[tokens], offsets, params)
    gates = routing.gates.reshape(-1)[order].astype(x.dtype, copy=False)
    y = np.zeros_like(x)
    np.add.at(y, tokens, gates[:, None] * h)
    return y


def moe_forward(
    x: np.ndarray,
    routing: Any,
    params: Mapping[str, np.ndarray],
    *,
    strategy: str = "loop",
) -> np.ndarray:
    """The MoE output ``(T, d)`` (no residual) by ``strategy``: ``"loop"``
    (:func:`moe_loop`), ``"einsum"`` (:func:`moe_einsum`) or ``"grouped"``
    (:func:`moe_grouped`); all three give the same numbers up to rounding."""
    check_choice("strategy", strategy, STRATEGIES)
    fn = {"loop": moe_loop, "einsum": moe_einsum, "grouped": moe_grouped}[strategy]
    return fn(x, routing, params)
