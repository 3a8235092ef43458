"""Task-level routing and PR-MoE: the NumPy face (05.2).

**Task-level MoE** (Kudugunta et al., 2021, "Beyond distillation"). A token-level router
sends the tokens of one request to any expert, so a server must hold every expert. A
task-level router decides per *task* (a language pair in the paper): every token of
task ``s`` goes to the same ``k`` experts. Once trained, the choice is a static table
``table (n_tasks, k)`` of expert indices, and a server for task ``s`` loads only the
experts in row ``s``: :func:`task_expert_bytes` counts what that saves.
:func:`task_routing` turns task ids into the chosen experts ``(T, k)``;
:func:`task_route` into a full :class:`~effx_lab.moe._format.Routing` (gates ``1 / k``
each, the mean of the task's experts; a capacity that drops nothing, since a static
choice has nothing to balance at inference), which every strategy of
:func:`~effx_lab.moe.reference.moe_forward` runs.

**PR-MoE** (Rajbhandari et al., 2022, DeepSpeed-MoE). Two observations give the
*pyramid-residual* MoE: (i) experts help more in later layers, so the *pyramid* puts
more experts there (:func:`pyramid_experts`; their 350M+PR-MoE-32/64 model has 32
experts in its first 10 MoE layers and 64 in the last 2); (ii) top-2 routing helps
because the second expert corrects the first, so the *residual* design fixes one
"expert" as a dense MLP every token runs and routes each token to one more expert as a
correction: ``y = MLP(x) + g * E_{e(x)}(x)`` (:func:`pr_moe`), the quality of top-2 at
the communication of top-1. :func:`moe_param_count` counts the parameters of a stack of
MoE layers for such comparisons.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from effx_lab._validate import check_array, check_bool, check_int, describe
from effx_lab.models.reference import gelu_tanh

from ._format import Routing
from ._np_dispatch import moe_forward
from ._np_route import assign_slots

__all__ = [
    "task_routing",
    "task_route",
    "task_expert_bytes",
    "pr_moe",
    "pyramid_experts",
    "moe_param_count",
]

MLP_KEYS = ("mlp_w1", "mlp_b1", "mlp_w2", "mlp_b2")


# ------------------------------------------------------------------------ shared checks
# Checks on plain ints or on anything with .shape/.ndim/.dtype; the torch face imports
# them so that both reject a bad argument with the same message.
def check_table(table: Any, n_experts: int | None = None) -> tuple[int, int]:
    """``table (n_tasks, k)`` of expert indices (ints >= 0, below ``n_experts`` when
    given, distinct within a row); returns ``(n_tasks, k)`` (host values read)."""
    host = _int_host("table", table, 2)
    n_tasks, k = host.shape
    if n_tasks == 0 or k == 0:
        raise ValueError(
            f"table must have shape (n_tasks, k) with n_tasks, k >= 1, got {host.shape}"
        )
    top = "" if n_experts is None else f" and < n_experts = {n_experts}"
    if host.min() < 0 or (n_experts is not None and host.max() >= n_experts):
        raise ValueError(
            f"table must hold expert indices >= 0{top}, got values in "
            f"[{host.min()}, {host.max()}]"
        )
    for s, row in enumerate(host):
        if len(set(row.tolist())) != k:
            raise ValueError(
                f"table row {s} must name {k} distinct experts, got {row.tolist()}"
            )
    return n_tasks, k


def check_task_ids(task_ids: Any, n_tasks: int) -> np.ndarray:
    """``task_ids (T,)`` ints in ``[0, n_tasks)``; returns them on the host."""
    host = _int_host("task_ids", task_ids, 1)
    if host.size and (host.min() < 0 or host.max() >= n_tasks):
        raise ValueError(
            f"task_ids must lie in [0, {n_tasks - 1}] (rows of table), got values in "
            f"[{host.min()}, {host.max()}]"
        )
    return host


def _int_host(name: str, a: Any, ndim: int) -> np.ndarray:
    if not hasattr(a, "shape") or not hasattr(a, "dtype"):
        raise TypeError(
            f"{name} must be a {ndim}-D integer array or tensor, got {describe(a)}"
        )
    host = a.detach().cpu().numpy() if hasattr(a, "detach") else np.asarray(a)
    if host.ndim != ndim or host.dtype.kind not in "iu":
        raise TypeError(
            f"{name} must be a {ndim}-D integer array or tensor, got {describe(a)}"
        )
    return host.astype(np.int64)


def expert_sizes(params: Any) -> np.ndarray:
    """Bytes of each expert: from an experts' dict (every value stacked along a
    leading axis of ``E``; NumPy arrays or torch tensors) or a 1-D sequence of
    per-expert byte counts. Returns an int64 array ``(E,)``."""
    if isinstance(params, Mapping):
        if not params:
            raise ValueError("params must hold the experts' arrays, got an empty dict")
        leading = set()
        total = 0
        for key, v in params.items():
            if not hasattr(v, "shape") or len(v.shape) == 0:
                raise TypeError(
                    f"params[{key!r}] must be an array stacked over experts, got "
                    f"{describe(v)}"
                )
            leading.add(int(v.shape[0]))
            size = v.element_size() if hasattr(v, "element_size") else v.itemsize
            total += int(np.prod(v.shape)) * int(size)
        if len(leading) != 1:
            raise ValueError(
                "params must stack every array over the same number of experts "
                f"(leading axis), got leading sizes {sorted(leading)}"
            )
        n_experts = leading.pop()
        return np.full(n_experts, total // n_experts, dtype=np.int64)
    if isinstance(params, Sequence) and not isinstance(params, str):
        values = [
            check_int(f"sizes[{i}]", v, min_value=0) for i, v in enumerate(params)
        ]
        if not values:
            raise ValueError("sizes must name the bytes of at least one expert")
        return np.asarray(values, dtype=np.int64)
    raise TypeError(
        "params must be an experts' dict (w1 (E, d, f), ...) or a sequence of "
        f"per-expert byte counts, got {describe(params)}"
    )


def check_pyramid(
    n_layers: Any, base: Any, top: Any, top_layers: Any
) -> tuple[int, int, int, int]:
    n_layers = check_int("n_layers", n_layers, min_value=1)
    base = check_int("base", base, min_value=1)
    top = check_int("top", top, min_value=base)
    if top_layers is None:
        top_layers = max(1, n_layers // 6)
    top_layers = check_int("top_layers", top_layers, min_value=0, max_value=n_layers)
    return n_layers, base, top, top_layers


def check_mlp(params: Any, d: int, dtype: Any) -> int:
    """The residual MLP of ``pr_moe``: ``mlp_w1 (d, f)``, ``mlp_b1 (f,)``, ``mlp_w2
    (f, d)``, ``mlp_b2 (d,)`` of ``dtype``; returns ``f``."""
    if not isinstance(params, Mapping):
        raise TypeError(
            f"params must be a dict of the MLP's and the experts' arrays, got "
            f"{describe(params)}"
        )
    missing = [k for k in MLP_KEYS if k not in params]
    if missing:
        raise ValueError(
            f"params must hold the residual MLP {list(MLP_KEYS)} beside the experts; "
            f"missing {missing}"
        )
    w1 = params["mlp_w1"]
    if not hasattr(w1, "shape") or len(w1.shape) != 2 or w1.shape[0] != d:
        raise ValueError(
            f"params['mlp_w1'] must have shape (d, f) with d = {d}, got "
            f"{describe(w1)}"
        )
    f = int(w1.shape[1])
    want = {"mlp_w1": (d, f), "mlp_b1": (f,), "mlp_w2": (f, d), "mlp_b2": (d,)}
    for key, shape in want.items():
        v = params[key]
        if tuple(getattr(v, "shape", ())) != shape or v.dtype != dtype:
            raise ValueError(
                f"params[{key!r}] must have shape {shape} and the dtype of x "
                f"({dtype}), got {describe(v)}"
            )
    return f


def pyramid_schedule(n_layers: int, base: int, top: int, top_layers: int) -> list[int]:
    return [base] * (n_layers - top_layers) + [top] * top_layers


def param_count(
    d_model: Any, d_ff: Any, experts_per_layer: Any, residual: Any
) -> int:
    d = check_int("d_model", d_model, min_value=1)
    f = check_int("d_ff", d_ff, min_value=1)
    residual = check_bool("residual", residual)
    if isinstance(experts_per_layer, (int, np.integer)) and not isinstance(
        experts_per_layer, bool
    ):
        experts_per_layer = [experts_per_layer]
    if not isinstance(experts_per_layer, Sequence) or not experts_per_layer:
        raise TypeError(
            "experts_per_layer must be an int or a non-empty sequence of ints (the "
            f"experts of each MoE layer), got {describe(experts_per_layer)}"
        )
    ffn = 2 * d * f + f + d
    total = 0
    for i, e in enumerate(experts_per_layer):
        e = check_int(f"experts_per_layer[{i}]", e, min_value=1)
        total += e * ffn + d * e + (ffn if residual else 0)
    return total


# --------------------------------------------------------------------------- the face
def task_routing(task_ids: np.ndarray, table: np.ndarray) -> np.ndarray:
    """The experts of each token under task-level routing: ``experts[t] =
    table[task_ids[t]]``, int64 ``(T, k)`` (``task_ids (T,)`` ints in ``[0,
    n_tasks)``, ``table (n_tasks, k)`` distinct expert indices per row)."""
    n_tasks, _ = check_table(table)
    ids = check_task_ids(task_ids, n_tasks)
    return np.asarray(table, dtype=np.int64)[ids]


def task_route(task_ids: np.ndarray, table: np.ndarray, n_experts: int) -> Routing:
    """Task-level routing as a :class:`~effx_lab.moe._format.Routing`: experts of
    :func:`task_routing`, gates ``1 / k`` each (the mean of the task's experts),
    ``probs`` the same ``1 / k`` on the chosen experts and 0 elsewhere, and a capacity
    equal to the busiest expert's load (at least 1): nothing is dropped, slots filled
    in token order (:func:`~effx_lab.moe.reference.assign_slots`)."""
    n_experts = check_int("n_experts", n_experts, min_value=1)
    check_table(table, n_experts)
    experts = task_routing(task_ids, table)
    n_tokens, k = experts.shape
    counts = np.bincount(experts.reshape(-1), minlength=n_experts)
    capacity = max(1, int(counts.max(initial=0)))
    slots = assign_slots(experts, n_experts, capacity)
    gates = np.full((n_tokens, k), 1.0 / k)
    probs = np.zeros((n_tokens, n_experts))
    np.put_along_axis(probs, experts, 1.0 / k, axis=1)
    return Routing(experts, gates, slots, capacity, n_experts, probs)


def task_expert_bytes(table: np.ndarray, params: Any, task: int) -> tuple[int, int]:
    """``(bytes of the experts task ``task`` uses, bytes of all experts)``: what a
    server for one task loads under task-level routing vs under token-level routing.
    ``params``: the experts' dict (``w1 (E, d, f)``, ``b1``, ``w2``, ``b2``, any
    dtype) or a sequence of per-expert byte counts."""
    sizes = expert_sizes(params)
    n_tasks, _ = check_table(table, len(sizes))
    task = check_int("task", task, min_value=0, max_value=n_tasks - 1)
    row = np.unique(_int_host("table", table, 2)[task])
    return int(sizes[row].sum()), int(sizes.sum())


def pr_moe(
    x: np.ndarray,
    params: Mapping[str, np.ndarray],
    routing: Routing,
    *,
    strategy: str = "loop",
) -> np.ndarray:
    """PR-MoE's residual block without the residual stream: ``MLP(x) + sum over kept
    choices of gate * expert(x)``, ``(T, d)``. ``params`` holds the dense MLP
    (``mlp_w1 (d, f)``, ``mlp_b1``, ``mlp_w2 (f, d)``, ``mlp_b2``) and the experts
    (``w1 (E, d, f)``, ...); ``routing`` is top-1 in the paper (any ``k`` runs). A
    token whose expert overflowed gets the MLP alone."""
    check_array("x", x, ndim=2, dtype_kind="f")
    check_mlp(params, x.shape[1], x.dtype)
    experts = {k: v for k, v in params.items() if k not in MLP_KEYS}
    y = moe_forward(x, routing, experts, strategy=strategy)
    h = gelu_tanh(x @ params["mlp_w1"] + params["mlp_b1"])
    return h @ params["mlp_w2"] + params["mlp_b2"] + y


def pyramid_experts(
    n_layers: int, base: int = 32, top: int = 64, *, top_layers: int | None = None
) -> list[int]:
    """The experts of each of ``n_layers`` MoE layers in PR-MoE's pyramid: ``base``
    experts, and ``top`` in the last ``top_layers`` (default ``max(1, n_layers //
    6)``: the paper's 350M+PR-MoE-32/64, 12 MoE layers, has 32 experts in the first 10
    and 64 in the last 2). A list of ints."""
    return pyramid_schedule(*check_pyramid(n_layers, base, top, top_layers))


def moe_param_count(
    d_model: int, d_ff: int, experts_per_layer: Any, *, residual: bool = False
) -> int:
    """Parameters of a stack of MoE FFN layers (norms not counted): per layer ``E``
    experts of ``2 d f + f + d`` parameters, a router of ``d E``, and with
    ``residual=True`` (PR-MoE) a dense MLP of ``2 d f + f + d``.
    ``experts_per_layer``: an int (one layer) or a sequence (e.g.
    :func:`pyramid_experts`)."""
    return param_count(d_model, d_ff, experts_per_layer, residual)
