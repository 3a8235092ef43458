"""Routers, their auxiliary losses, expert capacity, vanilla and Batch Priority Routing,
dynamic capacity: the PyTorch face (05.1, 05.2).

The same names and signatures as :mod:`effx_lab.moe._np_route` (see it for the
definitions and the papers), in torch primitives that run on any device and
differentiate: the gates and probabilities of :func:`topk_gating`,
:func:`noisy_topk_gating` and :func:`route` carry the router's gradient, and the
losses (:func:`cv_squared`, :func:`importance_loss`, :func:`load_loss` through
``torch.special.ndtr``, :func:`switch_aux_loss` through ``P``, :func:`z_loss`) return
0-d tensors with a gradient. Losses and gates are tensors; the measures
(:func:`dropped_fraction`, :func:`padding_fraction`, :func:`dynamic_capacity`) read
one number back and return Python numbers.

Ties are broken as in the NumPy face (stable sorts: the lower expert index, the lower
token index), so the faces agree exactly. The checks that read values (finite logits,
expert ids in range, ``order`` a permutation, the :class:`Routing` constructor) copy
to the host.
"""

from __future__ import annotations

from typing import Any

import torch

from effx_lab._validate import check_bool, check_float, check_int, describe

from ._format import CapacityTracker, Routing
from .shapes import (
    POLICIES,
    PRIORITY_SCALE,
    capacity,
    check_capacity,
    check_capacity_factor,
    check_experts,
    check_finite,
    check_float_array,
    check_gate_weight,
    check_int_array,
    check_k,
    check_logits,
    check_order,
    check_policy,
    check_tokens,
    round_up_capacity,
)

__all__ = [
    "POLICIES",
    "Routing",
    "CapacityTracker",
    "router_logits",
    "topk_gating",
    "noisy_topk_gating",
    "cv_squared",
    "importance_loss",
    "load_loss",
    "switch_aux_loss",
    "z_loss",
    "capacity",
    "priority_order",
    "assign_slots",
    "route",
    "expert_counts",
    "dropped_fraction",
    "padding_fraction",
    "dynamic_capacity",
]

#: ``cv_squared``'s guard: ``var / (mean**2 + EPS)``, as tensor2tensor's ``cv_squared``.
CV_EPS = 1e-10


def _tensor(name: str, a: Any) -> torch.Tensor:
    if not isinstance(a, torch.Tensor):
        hint = (
            "; use effx_lab.moe.reference for NumPy arrays"
            if type(a).__module__ == "numpy"
            else ""
        )
        raise TypeError(f"{name} must be a torch tensor, got {describe(a)}{hint}")
    return a


def _same_device(name: str, a: torch.Tensor, ref: torch.Tensor, ref_name: str) -> None:
    if a.device != ref.device:
        raise ValueError(
            f"{name} must be on the device of {ref_name} ({ref.device}), got {a.device}"
        )


def _routing(r: Any) -> Routing:
    if not isinstance(r, Routing):
        raise TypeError(
            f"r must be a Routing (effx_lab.moe.torch_ops.Routing, made by route), got "
            f"{describe(r)}"
        )
    if not r.is_torch:
        raise TypeError(
            "r must hold torch tensors (made by effx_lab.moe.torch_ops.route); use "
            "effx_lab.moe.reference for a Routing of NumPy arrays"
        )
    return r


def _top_indices(scores: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k`` largest of each row, best first, the lower index first among equals."""
    order = torch.sort(scores.detach(), dim=-1, descending=True, stable=True).indices
    return order[:, :k].to(torch.int64)


# ---------------------------------------------------------------------------- routers
def router_logits(x: torch.Tensor, w_gate: torch.Tensor) -> torch.Tensor:
    """The router's logits ``x @ w_gate`` ``(T, E)``; see the reference."""
    x = _tensor("x", x)
    _, d = check_tokens("x", x)
    w_gate = _tensor("w_gate", w_gate)
    check_gate_weight("w_gate", w_gate, d)
    _same_device("w_gate", w_gate, x, "x")
    return x @ w_gate


def topk_gating(
    logits: torch.Tensor, k: int, *, renormalize: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax over all experts, then the ``k`` largest: ``(gates, experts)``, both
    ``(T, k)``; ``gates`` differentiable in ``logits``. See the reference."""
    logits = _tensor("logits", logits)
    _, e = check_logits("logits", logits)
    k = check_k(k, e)
    renormalize = check_bool("renormalize", renormalize)
    experts = _top_indices(logits, k)
    gates = torch.softmax(logits, dim=-1).gather(-1, experts)
    if renormalize:
        gates = gates / gates.sum(dim=-1, keepdim=True)
    return gates, experts


def noisy_topk_gating(
    x: torch.Tensor,
    w_gate: torch.Tensor,
    w_noise: torch.Tensor,
    k: int,
    noise: torch.Tensor,
    *,
    noise_epsilon: float = 1e-2,
) -> dict[str, torch.Tensor]:
    """Noisy top-k gating (Shazeer et al., 2017); see the reference. Returns the dict
    ``gates (T, E)`` dense, ``experts (T, k)``, ``clean``, ``noisy``, ``std``;
    differentiable in ``x``, ``w_gate`` and ``w_noise``."""
    x = _tensor("x", x)
    t, d = check_tokens("x", x)
    w_gate = _tensor("w_gate", w_gate)
    e = check_gate_weight("w_gate", w_gate, d)
    w_noise = _tensor("w_noise", w_noise)
    check_gate_weight("w_noise", w_noise, d, e)
    k = check_k(k, e)
    noise = _tensor("noise", noise)
    check_float_array("noise", noise, 2)
    if tuple(noise.shape) != (t, e):
        raise ValueError(
            f"noise must have shape (n_tokens, n_experts) = {(t, e)}, got "
            f"{tuple(noise.shape)}"
        )
    for name, a in (("w_gate", w_gate), ("w_noise", w_noise), ("noise", noise)):
        _same_device(name, a, x, "x")
    noise_epsilon = check_float("noise_epsilon", noise_epsilon, min_value=0.0)
    clean = x @ w_gate
    raw = x @ w_noise
    # softplus as log(1 + e^z) without F.softplus's threshold, so the faces agree
    std = torch.logaddexp(torch.zeros_like(raw), raw) + noise_epsilon
    noisy = clean + noise * std
    check_finite("noisy logits", noisy)
    experts = _top_indices(noisy, k)
    top = noisy.gather(-1, experts)
    gates = torch.zeros_like(noisy).scatter(-1, experts, torch.softmax(top, dim=-1))
    return {"gates": gates, "experts": experts, "clean": clean, "noisy": noisy,
            "std": std}


# ------------------------------------------------------------------- auxiliary losses
def cv_squared(v: torch.Tensor) -> torch.Tensor:
    """``var(v) / (mean(v)**2 + 1e-10)`` (population variance), a 0-d tensor; 0 for a
    single entry. See the reference."""
    v = _tensor("v", v)
    check_float_array("v", v, 1)
    if v.shape[0] < 1:
        raise ValueError("v must not be empty, got shape (0,)")
    if v.shape[0] == 1:
        return (v * 0).sum()
    mean = v.mean()
    return ((v - mean) ** 2).mean() / (mean**2 + CV_EPS)


def importance_loss(gates_dense: torch.Tensor) -> torch.Tensor:
    """``cv_squared(gates_dense.sum(0))`` (Shazeer et al.); see the reference."""
    gates_dense = _tensor("gates_dense", gates_dense)
    check_float_array("gates_dense", gates_dense, 2)
    check_finite("gates_dense", gates_dense)
    return cv_squared(gates_dense.sum(dim=0))


def _load_probabilities(
    clean: torch.Tensor, noisy: torch.Tensor, std: torch.Tensor, k: int
) -> torch.Tensor:
    t, e = clean.shape
    if k == e:
        return torch.ones_like(clean)
    ranked = torch.sort(noisy.detach(), dim=-1, descending=True, stable=True).indices
    top = noisy.gather(-1, ranked[:, : k + 1])
    kth, kplus1 = top[:, k - 1 : k], top[:, k : k + 1]
    is_in = torch.zeros((t, e), dtype=torch.bool, device=clean.device)
    is_in = is_in.scatter(-1, ranked[:, :k], True)
    threshold = torch.where(is_in, kplus1, kth)
    return torch.special.ndtr((clean - threshold) / std)


def load_loss(
    clean: torch.Tensor, noisy: torch.Tensor, std: torch.Tensor, k: int
) -> torch.Tensor:
    """Shazeer et al.'s smooth load loss ``cv_squared(sum_t Phi((clean - threshold) /
    std))``, differentiable in all three; see the reference."""
    clean = _tensor("clean", clean)
    _, e = check_logits("clean", clean)
    k = check_k(k, e)
    for name, a in (("noisy", noisy), ("std", std)):
        _tensor(name, a)
        check_float_array(name, a, 2)
        if a.shape != clean.shape:
            raise ValueError(
                f"{name} must have the shape of clean {tuple(clean.shape)}, got "
                f"{tuple(a.shape)}"
            )
        _same_device(name, a, clean, "clean")
        check_finite(name, a)
    bad = ~(std.detach() > 0)
    if bool(bad.any()):
        pos = [int(i) for i in torch.nonzero(bad)[0]]
        raise ValueError(
            f"std must be > 0 (the noise scale), got {float(std[tuple(pos)])} at {pos}"
        )
    return cv_squared(_load_probabilities(clean, noisy, std, k).sum(dim=0))


def switch_aux_loss(probs: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
    """``E * sum_i f_i P_i`` (Fedus et al., 2022), ``f`` over the first choices;
    differentiable in ``probs``. See the reference."""
    probs = _tensor("probs", probs)
    t, e = check_logits("probs", probs)
    experts = _tensor("experts", experts)
    check_experts(experts, e, t)
    _same_device("experts", experts, probs, "probs")
    f = torch.bincount(experts[:, 0].to(torch.int64), minlength=e).to(probs.dtype) / t
    return e * torch.sum(f * probs.mean(dim=0))


def z_loss(logits: torch.Tensor) -> torch.Tensor:
    """``mean_t logsumexp(logits[t])**2`` (ST-MoE); see the reference."""
    logits = _tensor("logits", logits)
    check_logits("logits", logits)
    return torch.mean(torch.logsumexp(logits, dim=-1) ** 2)


# --------------------------------------------------------------- capacity and routing
def priority_order(
    probs_or_gates: torch.Tensor, by: str = "max", *, k: int | None = None
) -> torch.Tensor:
    """Batch Priority Routing's order of tokens: int64 ``(T,)``, by decreasing ``max``
    or ``sum`` of the scores, the lower index first among equals. See the
    reference."""
    scores = _tensor("probs_or_gates", probs_or_gates)
    _, c = check_logits("probs_or_gates", scores)
    if not isinstance(by, str) or by not in ("max", "sum"):
        raise ValueError(f"by must be 'max' or 'sum', got {by!r}")
    scores = scores.detach()
    if k is not None:
        k = check_k(k, c)
        scores = scores.gather(-1, _top_indices(scores, k))
    if by == "max":
        score = scores.max(dim=-1).values
    else:  # summed left to right in both faces, so they agree exactly
        score = scores[:, 0].clone()
        for j in range(1, scores.shape[1]):
            score = score + scores[:, j]
    score = torch.round(score * PRIORITY_SCALE)  # differences below 2**-40 are noise
    order = torch.sort(score, descending=True, stable=True).indices
    return order.to(torch.int64)


def assign_slots(
    experts: torch.Tensor,
    n_experts: int,
    capacity: int,
    *,
    order: torch.Tensor | None = None,
) -> torch.Tensor:
    """Each (token, choice)'s row in its expert's buffer, ``-1`` when full; all first
    choices before any second choice, tokens in ``order`` (token order when None).
    int64 ``(T, k)``, on the device of ``experts``. See the reference."""
    n_experts = check_int("n_experts", n_experts, min_value=1)
    experts = _tensor("experts", experts)
    t, k = check_experts(experts, n_experts)
    capacity = check_capacity(capacity)
    dev = experts.device
    if order is None:
        order = torch.arange(t, device=dev)
    else:
        order = _tensor("order", order)
        check_order(order, t)
        _same_device("order", order, experts, "experts")
        order = order.to(torch.int64)
    slots = torch.full((t, k), -1, dtype=torch.int64, device=dev)
    fill = torch.zeros(n_experts, dtype=torch.int64, device=dev)
    ids = torch.arange(n_experts, device=dev)
    rows = torch.arange(t, device=dev)
    for j in range(k):
        ex = experts[order, j].to(torch.int64)
        onehot = (ex[:, None] == ids[None, :]).to(torch.int64)
        rank = torch.cumsum(onehot, dim=0)[rows, ex] - 1  # earlier same expert
        pos = fill[ex] + rank
        slots[order, j] = torch.where(pos < capacity, pos, torch.full_like(pos, -1))
        fill = torch.clamp(fill + onehot.sum(dim=0), max=capacity)
    return slots


def route(
    logits: torch.Tensor,
    k: int = 1,
    capacity_factor: float = 1.25,
    *,
    policy: str = "vanilla",
    renormalize: bool = False,
    capacity: int | None = None,
) -> Routing:
    """Route a batch: top-k gating, capacity, buffer rows (``"vanilla"``,
    ``"bpr_max"``, ``"bpr_sum"``). Returns a :class:`Routing` of tensors whose
    ``gates`` and ``probs`` carry the gradient of ``logits``. See the reference."""
    logits = _tensor("logits", logits)
    t, e = check_logits("logits", logits)
    k = check_k(k, e)
    capacity_factor = check_capacity_factor(capacity_factor)
    policy = check_policy(policy)
    renormalize = check_bool("renormalize", renormalize)
    cap = (
        _capacity(t, e, capacity_factor, k)
        if capacity is None
        else check_capacity(capacity)
    )
    probs = torch.softmax(logits, dim=-1)
    experts = _top_indices(logits, k)
    top = probs.gather(-1, experts)
    gates = top / top.sum(dim=-1, keepdim=True) if renormalize else top
    order = None
    if policy != "vanilla":
        order = priority_order(top, "max" if policy == "bpr_max" else "sum")
    slots = assign_slots(experts, e, cap, order=order)
    return Routing(experts, gates, slots, cap, e, probs)


_capacity = capacity  # route's parameter of the same name hides the function


# --------------------------------------------------------------------------- measures
def expert_counts(
    experts: torch.Tensor, n_experts: int, kept: torch.Tensor | None = None
) -> torch.Tensor:
    """(token, choice) pairs per expert: int64 ``(E,)``; only the ``kept`` pairs when
    given. See the reference."""
    n_experts = check_int("n_experts", n_experts, min_value=1)
    experts = _tensor("experts", experts)
    t, k = check_experts(experts, n_experts)
    ex = experts.to(torch.int64)
    if kept is not None:
        kept = _tensor("kept", kept)
        if kept.dtype != torch.bool:
            raise TypeError(f"kept must have dtype bool, got {kept.dtype}")
        if tuple(kept.shape) != (t, k):
            raise ValueError(
                f"kept must have the shape of experts {(t, k)}, got "
                f"{tuple(kept.shape)}"
            )
        _same_device("kept", kept, experts, "experts")
        ex = ex[kept]
    return torch.bincount(ex.reshape(-1), minlength=n_experts).to(torch.int64)


def dropped_fraction(r: Routing) -> float:
    """The share of (token, choice) pairs dropped; see the reference."""
    r = _routing(r)
    return float((r.slots < 0).sum().item() / r.slots.numel())


def padding_fraction(r: Routing) -> float:
    """The share of the ``E * capacity`` buffer rows left unused; see the
    reference."""
    r = _routing(r)
    return float(1.0 - (r.slots >= 0).sum().item() / (r.n_experts * r.capacity))


def dynamic_capacity(
    counts: torch.Tensor, *, multiple: int = 8, headroom: float = 1.0
) -> int:
    """DynaMoE's capacity: ``multiple * ceil(headroom * max(counts) / multiple)``, at
    least ``multiple``; see the reference."""
    counts = _tensor("counts", counts)
    check_int_array("counts", counts, 1)
    if counts.numel() == 0 or bool((counts < 0).any()):
        raise ValueError(
            f"counts must be a non-empty array of counts >= 0, got {counts.tolist()}"
        )
    return round_up_capacity(int(counts.max().item()), multiple, headroom)
