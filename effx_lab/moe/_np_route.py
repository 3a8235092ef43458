"""Routers, their auxiliary losses, expert capacity, vanilla and Batch Priority Routing,
dynamic capacity: the NumPy face (05.1, 05.2).

Tokens are flattened: ``x (T, d)``; a router ``w_gate (d, E)`` gives logits ``(T, E)``.

* Routers. :func:`router_logits` (``x @ w_gate``); :func:`topk_gating`: the softmax over
  all ``E`` experts, then the ``k`` largest (Switch: ``k = 1``, Fedus et al. 2022;
  GLaM/GShard: ``k = 2``, renormalized over the two, Du et al. 2022, Lepikhin et al.
  2021); :func:`noisy_topk_gating`: Shazeer et al. (2017), tunable Gaussian noise on the
  logits, the top-k of the noisy logits kept and a softmax over them.
* Auxiliary losses. :func:`cv_squared`, :func:`importance_loss` and :func:`load_loss`
  (Shazeer et al.'s two balancing losses; the load is a smooth estimate through the
  normal CDF); :func:`switch_aux_loss` (``E sum_i f_i P_i``, Fedus et al.);
  :func:`z_loss` (the router z-loss of ST-MoE, Zoph et al. 2022).
* Capacity and routing. :func:`capacity` (``ceil(k T / E * C)``); :func:`assign_slots`
  (each expert's buffer filled in an order: token order for vanilla routing, all first
  choices before any second choice, as GShard and V-MoE do); :func:`priority_order`
  (Batch Priority Routing, Riquelme et al. 2021: tokens sorted by their top-1
  probability or by the sum of their top-k probabilities); :func:`route`: all of it,
  returning a :class:`Routing`.
* Measures. :func:`expert_counts`, :func:`dropped_fraction`, :func:`padding_fraction`;
  :func:`dynamic_capacity` (DynaMoE, Kossmann et al. 2022) and
  :class:`CapacityTracker` (the same over many steps, with hysteresis).

Ties: the lower expert index wins a tie in the top-k, the lower token index a tie in
priority (stable sorts), so both faces agree exactly.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

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


def _array(name: str, a: Any) -> np.ndarray:
    if not isinstance(a, np.ndarray):
        hint = (
            "; use effx_lab.moe.torch_ops for torch tensors"
            if type(a).__module__.startswith("torch")
            else ""
        )
        raise TypeError(f"{name} must be a NumPy array, got {describe(a)}{hint}")
    return a


def _routing(r: Any) -> Routing:
    if not isinstance(r, Routing):
        raise TypeError(
            f"r must be a Routing (effx_lab.moe.reference.Routing, made by route), got "
            f"{describe(r)}"
        )
    if r.is_torch:
        raise TypeError(
            "r must hold NumPy arrays (made by effx_lab.moe.reference.route); use "
            "effx_lab.moe.torch_ops for a Routing of torch tensors"
        )
    return r


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _top_indices(scores: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` largest of each row, best first, the lower index first among equals."""
    return np.argsort(-scores, axis=-1, kind="stable")[:, :k].astype(np.int64)


# ---------------------------------------------------------------------------- routers
def router_logits(x: np.ndarray, w_gate: np.ndarray) -> np.ndarray:
    """The router's logits ``x @ w_gate``: ``x (T, d)`` tokens, ``w_gate (d, E)``.

    The router is one linear map without bias (Shazeer et al. 2017; Switch; GLaM).
    Returns ``(T, E)``.
    """
    x = _array("x", x)
    _, d = check_tokens("x", x)
    w_gate = _array("w_gate", w_gate)
    check_gate_weight("w_gate", w_gate, d)
    return x @ w_gate


def topk_gating(
    logits: np.ndarray, k: int, *, renormalize: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Softmax top-k gating: ``p = softmax(logits)`` over all ``E`` experts, keep the
    ``k`` largest.

    Returns ``(gates, experts)``, both ``(T, k)``, best first: ``experts`` the chosen
    ids (int64), ``gates = p[t, experts[t]]``. With ``renormalize=True`` the ``k``
    gates of a token are divided by their sum (GShard/GLaM's top-2; for ``k = 1`` every
    gate becomes 1). The top-k is taken on the logits (softmax is monotone), the lower
    expert index first among equal logits.
    """
    logits = _array("logits", logits)
    _, e = check_logits("logits", logits)
    k = check_k(k, e)
    renormalize = check_bool("renormalize", renormalize)
    experts = _top_indices(logits, k)
    gates = np.take_along_axis(_softmax(logits), experts, axis=-1)
    if renormalize:
        gates = gates / gates.sum(axis=-1, keepdims=True)
    return gates, experts


def noisy_topk_gating(
    x: np.ndarray,
    w_gate: np.ndarray,
    w_noise: np.ndarray,
    k: int,
    noise: np.ndarray,
    *,
    noise_epsilon: float = 1e-2,
) -> dict[str, np.ndarray]:
    """Noisy top-k gating (Shazeer et al., 2017, eq. 3-5):

    ``clean = x w_gate``, ``std = softplus(x w_noise) + noise_epsilon``, ``noisy = clean
    + noise * std``; keep the ``k`` largest noisy logits of each token and take the
    softmax over them (the others get gate 0). ``noise (T, E)`` is the standard normal
    sample, passed in so that both faces (and a test) see the same one; pass zeros for
    the deterministic router of evaluation. ``noise_epsilon`` (tensor2tensor's value,
    1e-2) keeps ``std`` away from 0, which :func:`load_loss` divides by.

    Returns a dict: ``gates (T, E)`` dense (zeros outside the top-k, each row sums to
    1), ``experts (T, k)`` int64 (best first, the lower index among equals), ``clean``,
    ``noisy``, ``std`` (all ``(T, E)``).
    """
    x = _array("x", x)
    t, d = check_tokens("x", x)
    w_gate = _array("w_gate", w_gate)
    e = check_gate_weight("w_gate", w_gate, d)
    w_noise = _array("w_noise", w_noise)
    check_gate_weight("w_noise", w_noise, d, e)
    k = check_k(k, e)
    noise = _array("noise", noise)
    check_float_array("noise", noise, 2)
    if tuple(noise.shape) != (t, e):
        raise ValueError(
            f"noise must have shape (n_tokens, n_experts) = {(t, e)}, got "
            f"{tuple(noise.shape)}"
        )
    noise_epsilon = check_float("noise_epsilon", noise_epsilon, min_value=0.0)
    clean = x @ w_gate
    std = np.logaddexp(0.0, x @ w_noise) + noise_epsilon
    noisy = clean + noise * std
    check_finite("noisy logits", noisy)
    experts = _top_indices(noisy, k)
    top = np.take_along_axis(noisy, experts, axis=-1)
    gates = np.zeros_like(noisy)
    np.put_along_axis(gates, experts, _softmax(top), axis=-1)
    return {"gates": gates, "experts": experts, "clean": clean, "noisy": noisy,
            "std": std}


# ------------------------------------------------------------------- auxiliary losses
def cv_squared(v: np.ndarray) -> float:
    """The squared coefficient of variation of ``v (E,)``: ``var(v) / (mean(v)**2 +
    1e-10)`` with the population variance (tensor2tensor's ``cv_squared``); 0 for a
    single entry. Zero exactly when every expert gets the same share."""
    v = _array("v", v)
    check_float_array("v", v, 1)
    if v.shape[0] < 1:
        raise ValueError("v must not be empty, got shape (0,)")
    if v.shape[0] == 1:
        return 0.0
    mean = v.mean()
    return float(((v - mean) ** 2).mean() / (mean**2 + CV_EPS))


def importance_loss(gates_dense: np.ndarray) -> float:
    """Shazeer et al.'s importance loss: ``cv_squared(sum_t gates[t, :])``, the
    squared coefficient of variation of each expert's total gate over the batch.
    ``gates_dense (T, E)`` (zeros for the experts a token did not choose). Multiply by
    ``w_importance`` (0.1 in the paper) to add it to the loss."""
    gates_dense = _array("gates_dense", gates_dense)
    check_float_array("gates_dense", gates_dense, 2)
    check_finite("gates_dense", gates_dense)
    return cv_squared(gates_dense.sum(axis=0))


def _normal_cdf(z: np.ndarray) -> np.ndarray:
    return 0.5 * np.vectorize(math.erfc, otypes=[np.float64])(-z / math.sqrt(2.0))


def _load_probabilities(
    clean: np.ndarray, noisy: np.ndarray, std: np.ndarray, k: int
) -> np.ndarray:
    t, e = clean.shape
    if k == e:
        return np.ones_like(clean)
    ranked = np.argsort(-noisy, axis=-1, kind="stable")
    top = np.take_along_axis(noisy, ranked[:, : k + 1], axis=-1)
    kth, kplus1 = top[:, k - 1 : k], top[:, k : k + 1]
    is_in = np.zeros((t, e), dtype=bool)
    np.put_along_axis(is_in, ranked[:, :k], True, axis=-1)
    threshold = np.where(is_in, kplus1, kth)
    return _normal_cdf((clean - threshold) / std)


def load_loss(
    clean: np.ndarray, noisy: np.ndarray, std: np.ndarray, k: int
) -> float:
    """Shazeer et al.'s smooth load loss: ``cv_squared(load)`` with ``load_i = sum_t
    P(i in top-k of token t)``.

    With the noise of every other expert fixed, expert ``i`` stays in token ``t``'s
    top-k while its noisy logit exceeds the ``k``-th largest of the *other* experts'
    noisy logits: the ``(k+1)``-th largest of the row when ``i`` is in the top-k, the
    ``k``-th otherwise. A new draw of ``i``'s noise gives ``P = Phi((clean_i -
    threshold) / std_i)`` (``Phi``: the standard normal CDF), a smooth function of the
    router's weights (Shazeer et al. 2017, appendix A). ``clean``, ``noisy``, ``std``
    ``(T, E)`` from :func:`noisy_topk_gating`; ``std > 0``. With ``k = E`` every expert
    is always chosen: the loss is 0.
    """
    clean = _array("clean", clean)
    _, e = check_logits("clean", clean)
    k = check_k(k, e)
    for name, a in (("noisy", noisy), ("std", std)):
        _array(name, a)
        check_float_array(name, a, 2)
        if a.shape != clean.shape:
            raise ValueError(
                f"{name} must have the shape of clean {clean.shape}, got {a.shape}"
            )
        check_finite(name, a)
    if not (std > 0).all():
        pos = [int(i) for i in np.argwhere(~(std > 0))[0]]
        raise ValueError(
            f"std must be > 0 (the noise scale), got {std[tuple(pos)]} at {pos}"
        )
    return cv_squared(_load_probabilities(clean, noisy, std, k).sum(axis=0))


def switch_aux_loss(probs: np.ndarray, experts: np.ndarray) -> float:
    """The Switch Transformer's load-balancing loss ``E * sum_i f_i P_i`` (Fedus et
    al., 2022, eq. 4-6).

    ``f_i``: the fraction of tokens whose **first** choice (``experts[:, 0]``) is
    expert ``i``, counted before capacity drops, as GShard's ``mean(mask1)``; for
    ``k > 1`` the later choices are not counted. ``P_i``: the mean router probability
    of expert ``i``, ``probs (T, E)``. 1 under perfect balance (``f = P = 1/E``), up to
    ``E`` when one expert takes everything; only ``P`` carries a gradient.
    """
    probs = _array("probs", probs)
    t, e = check_logits("probs", probs)
    experts = _array("experts", experts)
    check_experts(experts, e, t)
    f = np.bincount(experts[:, 0], minlength=e) / t
    return float(e * np.sum(f * probs.mean(axis=0)))


def z_loss(logits: np.ndarray) -> float:
    """The router z-loss of ST-MoE (Zoph et al., 2022, eq. 5): ``mean_t
    logsumexp(logits[t])**2``. It keeps the router's logits small, where the softmax
    in low precision is stable; multiply by 1e-3 (the paper's weight)."""
    logits = _array("logits", logits)
    check_logits("logits", logits)
    m = logits.max(axis=-1)
    lse = m + np.log(np.exp(logits - m[:, None]).sum(axis=-1))
    return float(np.mean(lse**2))


# --------------------------------------------------------------- capacity and routing
def priority_order(
    probs_or_gates: np.ndarray, by: str = "max", *, k: int | None = None
) -> np.ndarray:
    """Batch Priority Routing's order of tokens (Riquelme et al., 2021, V-MoE).

    A token's priority is the ``max`` or the ``sum`` of its scores, over the last axis
    of ``probs_or_gates``: pass the top-k probabilities ``(T, k)`` (before any
    renormalization; what :func:`route` passes), or the probabilities ``(T, E)`` with
    ``k=`` to score the ``k`` largest of each row (``sum`` over all ``E`` of a softmax
    is 1 for every token: no order). Returns int64 ``(T,)``: tokens by decreasing
    priority, the lower index first among equals. Priorities are compared at a
    resolution of ``2**-40`` (``shapes.PRIORITY_SCALE``): closer ones are equal, so
    rounding noise (the last bit of a softmax) never decides, and both faces agree.
    """
    scores = _array("probs_or_gates", probs_or_gates)
    t, c = check_logits("probs_or_gates", scores)
    if not isinstance(by, str) or by not in ("max", "sum"):
        raise ValueError(f"by must be 'max' or 'sum', got {by!r}")
    if k is not None:
        k = check_k(k, c)
        scores = np.take_along_axis(scores, _top_indices(scores, k), axis=-1)
    if by == "max":
        score = scores.max(axis=-1)
    else:  # summed left to right in both faces, so they agree exactly
        score = scores[:, 0].copy()
        for j in range(1, scores.shape[1]):
            score = score + scores[:, j]
    score = np.rint(score * PRIORITY_SCALE)  # differences below 2**-40 are noise
    return np.argsort(-score, kind="stable").astype(np.int64)


def assign_slots(
    experts: np.ndarray,
    n_experts: int,
    capacity: int,
    *,
    order: np.ndarray | None = None,
) -> np.ndarray:
    """Each (token, choice)'s row in its expert's buffer, ``-1`` when it is full.

    ``experts (T, k)`` int; tokens claim rows in ``order`` (a permutation of
    ``range(T)``; token order when None: vanilla routing), **all first choices before
    any second choice** (GShard, V-MoE): pass ``j`` runs over the tokens in ``order``
    and gives each the next free row of ``experts[t, j]``, or ``-1`` once the expert
    has ``capacity`` rows taken. Returns int64 ``(T, k)``: an expert's kept pairs hold
    rows ``0, 1, ...`` in the order they claimed them.
    """
    n_experts = check_int("n_experts", n_experts, min_value=1)
    experts = _array("experts", experts)
    t, k = check_experts(experts, n_experts)
    capacity = check_capacity(capacity)
    if order is None:
        order = np.arange(t)
    else:
        order = _array("order", order)
        check_order(order, t)
    slots = np.full((t, k), -1, dtype=np.int64)
    fill = np.zeros(n_experts, dtype=np.int64)  # rows taken so far, per expert
    for j in range(k):
        ex = experts[order, j].astype(np.int64)
        onehot = ex[:, None] == np.arange(n_experts)[None, :]
        rank = np.cumsum(onehot, axis=0)[np.arange(t), ex] - 1  # earlier same expert
        pos = fill[ex] + rank
        slots[order, j] = np.where(pos < capacity, pos, -1)
        fill = np.minimum(fill + onehot.sum(axis=0), capacity)
    return slots


def route(
    logits: np.ndarray,
    k: int = 1,
    capacity_factor: float = 1.25,
    *,
    policy: str = "vanilla",
    renormalize: bool = False,
    capacity: int | None = None,
) -> Routing:
    """Route a batch: top-k gating, capacity, buffer rows. Returns a :class:`Routing`.

    ``probs = softmax(logits)``; ``gates, experts = topk_gating(logits, k,
    renormalize=...)``; the capacity is ``capacity(T, E, capacity_factor, k)`` unless
    ``capacity`` is given (then ``capacity_factor`` is ignored); rows from
    :func:`assign_slots` in the policy's order: ``"vanilla"`` token order, ``"bpr_max"``
    / ``"bpr_sum"`` :func:`priority_order` of the top-k probabilities (before
    renormalizing) by ``max`` / ``sum`` (Batch Priority Routing).
    """
    logits = _array("logits", logits)
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
    probs = _softmax(logits)
    experts = _top_indices(logits, k)
    top = np.take_along_axis(probs, experts, axis=-1)
    gates = top / top.sum(axis=-1, keepdims=True) if renormalize else top
    order = None
    if policy != "vanilla":
        order = priority_order(top, "max" if policy == "bpr_max" else "sum")
    slots = assign_slots(experts, e, cap, order=order)
    return Routing(experts, gates, slots, cap, e, probs)


_capacity = capacity  # route's parameter of the same name hides the function


# --------------------------------------------------------------------------- measures
def expert_counts(
    experts: np.ndarray, n_experts: int, kept: np.ndarray | None = None
) -> np.ndarray:
    """(token, choice) pairs per expert: int64 ``(E,)``. ``kept (T, k)`` bool (e.g.
    ``routing.kept``) counts only the pairs that were not dropped."""
    n_experts = check_int("n_experts", n_experts, min_value=1)
    experts = _array("experts", experts)
    t, k = check_experts(experts, n_experts)
    ex = experts.astype(np.int64)
    if kept is not None:
        kept = _array("kept", kept)
        if kept.dtype != np.bool_:
            raise TypeError(f"kept must have dtype bool, got {kept.dtype}")
        if kept.shape != (t, k):
            raise ValueError(
                f"kept must have the shape of experts {(t, k)}, got {kept.shape}"
            )
        ex = ex[kept]
    return np.bincount(ex.ravel(), minlength=n_experts).astype(np.int64)


def dropped_fraction(r: Routing) -> float:
    """The share of (token, choice) pairs dropped: ``#(slots == -1) / (T k)``."""
    r = _routing(r)
    return float((r.slots < 0).sum() / r.slots.size)


def padding_fraction(r: Routing) -> float:
    """The share of the ``E * capacity`` buffer rows left unused (padding that an
    einsum/batched-GEMM formulation still computes): ``1 - kept / (E C)``."""
    r = _routing(r)
    return float(1.0 - (r.slots >= 0).sum() / (r.n_experts * r.capacity))


def dynamic_capacity(
    counts: np.ndarray, *, multiple: int = 8, headroom: float = 1.0
) -> int:
    """DynaMoE's capacity (Kossmann et al., 2022): the smallest capacity that drops
    nothing for the observed per-expert ``counts`` (1-D ints, e.g.
    :func:`expert_counts`), times ``headroom`` (>= 1), rounded up to a multiple of
    ``multiple``: ``multiple * ceil(headroom * max(counts) / multiple)``, at least
    ``multiple``. Rounding to buckets means a static-shape program recompiles only
    when the bucket changes; :class:`CapacityTracker` adds hysteresis over steps."""
    counts = _array("counts", counts)
    check_int_array("counts", counts, 1)
    if counts.size == 0 or (counts < 0).any():
        raise ValueError(
            f"counts must be a non-empty array of counts >= 0, got {counts.tolist()}"
        )
    return round_up_capacity(int(counts.max()), multiple, headroom)
