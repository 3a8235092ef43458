"""Argument checks and shape rules of chapter 5's faces, shared by all of them.

:mod:`.reference` (NumPy), :mod:`.torch_ops` (PyTorch), :mod:`.kernels` (Triton) and
the layers import their checks from here, so they reject a bad argument with the same
message and none reaches into another's private helpers. Everything here works on
anything with ``.shape``/``.ndim``/``.dtype`` (NumPy arrays and torch tensors) and on
plain Python values; nothing imports torch.

The chapter's conventions (tokens flattened to ``(T, d)``, router logits ``(T, E)``,
``w_gate (d, E)``, experts stacked in the LM layout ``w1 (E, d, f)``, ``b1 (E, f)``,
``w2 (E, f, d)``, ``b2 (E, d)``):

* routers: :func:`check_logits` (2-D float ``(T, E)``, finite: a routing decision needs
  an order), :func:`check_k` (``1 <= k <= E``), :func:`check_gate_weight`;
* capacity: :func:`capacity` (``ceil(k T / E * C)``, at least 1),
  :func:`check_capacity_factor`, :func:`check_capacity`, :func:`round_up_capacity`;
* routing decisions: :func:`check_experts`, :func:`check_slots`, :func:`check_order`,
  :func:`check_policy`; :data:`PRIORITY_SCALE` (the resolution at which Batch
  Priority Routing compares priorities);
* experts: :func:`check_expert_params` (the stacked dict; returns ``(E, d, f)``),
  :func:`check_tokens`.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any, Mapping

import numpy as np

from effx_lab._validate import check_float, check_int, describe

__all__ = [
    "EXPERT_PARAM_NAMES",
    "MAX_DISPATCH_ELEMENTS",
    "POLICIES",
    "PRIORITY_SCALE",
    "STRATEGIES",
    "capacity",
    "check_capacity",
    "check_capacity_factor",
    "check_expert_params",
    "check_experts",
    "check_finite",
    "check_float_array",
    "check_gate_weight",
    "check_int_array",
    "check_k",
    "check_logits",
    "check_match",
    "check_offsets",
    "check_order",
    "check_policy",
    "check_routing",
    "check_rows",
    "check_slots",
    "check_tokens",
    "check_x",
    "expert_shapes",
    "round_up_capacity",
]

#: The ways :func:`route` fills the experts' buffers: token order (GShard, V-MoE's
#: "vanilla"), or Batch Priority Routing by the top-1 probability or by the sum of the
#: top-k probabilities (Riquelme et al., 2021).
POLICIES = ("vanilla", "bpr_max", "bpr_sum")
#: Batch Priority Routing compares priorities at a resolution of ``1 / PRIORITY_SCALE``
#: (about 1e-12): ``rint(score * 2**40)``, exact in both faces. Differences below it are
#: rounding noise (with ``k = E`` a token's summed probabilities are 1 up to rounding,
#: and the faces' softmaxes differ in the last bit), and equal priorities go to the
#: lower token index, so the two faces order tokens identically.
PRIORITY_SCALE = 2.0**40
#: The keys of the stacked experts' parameter dict, in the LM layout (in, out).
EXPERT_PARAM_NAMES = ("w1", "b1", "w2", "b2")


# ---------------------------------------------------------------------------- helpers
def _is_tensor(a: Any) -> bool:
    return type(a).__module__.startswith("torch") and hasattr(a, "detach")


def _is_float(a: Any) -> bool:
    if _is_tensor(a):
        return bool(a.dtype.is_floating_point)
    return a.dtype.kind == "f"


def _is_int(a: Any) -> bool:
    if _is_tensor(a):
        import torch  # only reached with a tensor in hand

        ints = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)
        return a.dtype in ints
    return a.dtype.kind in "iu"


def _host(a: Any) -> np.ndarray:
    """A NumPy view (a host copy, for a tensor) of ``a``, for the checks that read
    values."""
    if _is_tensor(a):
        t = a.detach().cpu()
        if t.dtype.is_floating_point and t.element_size() < 4:
            t = t.float()  # NumPy has no bfloat16; float32 holds every 16-bit value
        return t.numpy()
    return np.asarray(a)


def check_float_array(name: str, a: Any, ndim: int) -> Any:
    """``a`` must have ``ndim`` dimensions and a float dtype (the caller checked that it
    is an array of its face)."""
    if a.ndim != ndim:
        raise ValueError(
            f"{name} must have {ndim} dimensions, got shape {tuple(a.shape)}"
        )
    if not _is_float(a):
        raise TypeError(f"{name} must have a float dtype, got {a.dtype}")
    return a


def check_int_array(name: str, a: Any, ndim: int) -> Any:
    """``a`` must have ``ndim`` dimensions and an integer dtype."""
    if a.ndim != ndim:
        raise ValueError(
            f"{name} must have {ndim} dimensions, got shape {tuple(a.shape)}"
        )
    if not _is_int(a):
        raise TypeError(f"{name} must have an int dtype (int64), got {a.dtype}")
    return a


def check_finite(name: str, a: Any) -> Any:
    """Raise ``ValueError`` naming the first non-finite entry of ``a`` (reads ``a``
    back to the host when it is a tensor)."""
    host = _host(a)
    bad = ~np.isfinite(host)
    if bad.any():
        pos = tuple(int(i) for i in np.argwhere(bad)[0])
        where = list(pos) if len(pos) != 1 else pos[0]
        raise ValueError(
            f"{name} must contain only finite values (a routing decision needs an "
            f"order), got {host[pos]} at {where}"
        )
    return a


# ---------------------------------------------------------------------------- routers
def check_logits(name: str, logits: Any) -> tuple[int, int]:
    """``logits`` must be 2-D float ``(T, E)`` with ``T >= 1``, ``E >= 1`` and finite
    values. Returns ``(T, E)``."""
    check_float_array(name, logits, 2)
    t, e = (int(s) for s in logits.shape)
    if t < 1 or e < 1:
        raise ValueError(
            f"{name} must have shape (n_tokens, n_experts) with both >= 1, got "
            f"{(t, e)}"
        )
    check_finite(name, logits)
    return t, e


def check_tokens(name: str, x: Any) -> tuple[int, int]:
    """``x`` must be 2-D float ``(T, d)``, tokens flattened (reshape a model's ``(B, n,
    d)`` to ``(B * n, d)``), both sizes >= 1. Values are not read. Returns ``(T,
    d)``."""
    if x.ndim != 2:
        raise ValueError(
            f"{name} must have 2 dimensions (n_tokens, d_model): flatten (B, n, d) to "
            f"(B * n, d), got shape {tuple(x.shape)}"
        )
    check_float_array(name, x, 2)
    t, d = (int(s) for s in x.shape)
    if t < 1 or d < 1:
        raise ValueError(f"{name} must not be empty, got shape {(t, d)}")
    return t, d


def check_gate_weight(name: str, w: Any, d: int, e: int | None = None) -> int:
    """A router weight ``w (d, E)`` (the LM layout, (in, out)) for tokens of width
    ``d``; ``E`` is checked when given. Returns ``E``."""
    check_float_array(name, w, 2)
    if int(w.shape[0]) != d or int(w.shape[1]) < 1:
        raise ValueError(
            f"{name} must have shape (d_model, n_experts) = ({d}, E) with E >= 1 (the "
            f"LM layout, (in, out)), got {tuple(w.shape)}"
        )
    if e is not None and int(w.shape[1]) != e:
        raise ValueError(
            f"{name} must have shape (d_model, n_experts) = {(d, e)}, got "
            f"{tuple(w.shape)}"
        )
    return int(w.shape[1])


def check_k(k: Any, n_experts: int) -> int:
    """``k``: experts per token, ``1 <= k <= n_experts``."""
    return check_int("k", k, min_value=1, max_value=n_experts)


# --------------------------------------------------------------------------- capacity
def check_capacity_factor(capacity_factor: Any) -> float:
    """``capacity_factor``: a finite real ``> 0`` (1.0 = exactly the average load)."""
    return check_float(
        "capacity_factor", capacity_factor, min_value=0.0, min_inclusive=False
    )


def check_capacity(capacity: Any, name: str = "capacity") -> int:
    """``capacity``: the rows of one expert's buffer, an int ``>= 1``."""
    return check_int(name, capacity, min_value=1)


def capacity(
    n_tokens: int, n_experts: int, capacity_factor: float, k: int = 1
) -> int:
    """Expert capacity: ``ceil(k * n_tokens / n_experts * capacity_factor)``, at
    least 1.

    Each expert gets a buffer of this many rows (Lepikhin et al., 2021; Fedus et al.,
    2022). ``capacity_factor = 1`` is exactly the average load of ``k * n_tokens``
    (token, choice) pairs spread over ``n_experts``; above 1 leaves room for imbalance
    (and pads), below 1 drops tokens even under perfect balance. The product is
    computed exactly on the decimal value of ``capacity_factor``
    (``Fraction(repr(c))``), so ``capacity(30, 1, 0.1) == 3``, not the 4 that float
    rounding gives.
    """
    n_tokens = check_int("n_tokens", n_tokens, min_value=1)
    n_experts = check_int("n_experts", n_experts, min_value=1)
    capacity_factor = check_capacity_factor(capacity_factor)
    k = check_k(k, n_experts)
    exact = Fraction(k * n_tokens, n_experts) * Fraction(repr(capacity_factor))
    return max(1, math.ceil(exact))


def round_up_capacity(max_count: Any, multiple: Any, headroom: Any = 1.0) -> int:
    """The bucket of a load: ``multiple * ceil(headroom * max_count / multiple)``, at
    least ``multiple`` (a buffer of 0 rows is no buffer). DynaMoE's rule of
    :func:`dynamic_capacity`, shared by both faces and the tracker."""
    max_count = check_int("max_count", max_count, min_value=0)
    multiple = check_int("multiple", multiple, min_value=1)
    headroom = check_float("headroom", headroom, min_value=1.0)
    need = math.ceil(Fraction(repr(headroom)) * max_count)
    return multiple * max(1, -(-need // multiple))


# ------------------------------------------------------------------ routing decisions
def check_policy(policy: Any) -> str:
    """``policy``: one of :data:`POLICIES`."""
    if not isinstance(policy, str):
        raise TypeError(
            f"policy must be one of {', '.join(map(repr, POLICIES))}, got "
            f"{describe(policy)}"
        )
    if policy not in POLICIES:
        raise ValueError(
            f"policy must be one of {', '.join(map(repr, POLICIES))}, got {policy!r}"
        )
    return policy


def check_experts(
    experts: Any,
    n_experts: int,
    n_tokens: int | None = None,
    name: str = "experts",
    distinct: bool = True,
) -> tuple[int, int]:
    """``experts (T, k)``: integer expert ids in ``[0, n_experts)``, each token's ids
    distinct (a token chooses an expert once), ``T`` equal to ``n_tokens`` when given,
    ``1 <= k <= n_experts``. Reads the values. Returns ``(T, k)``."""
    check_int_array(name, experts, 2)
    t, k = (int(s) for s in experts.shape)
    if t < 1 or k < 1:
        raise ValueError(
            f"{name} must have shape (n_tokens, k) with both >= 1, got {(t, k)}"
        )
    if n_tokens is not None and t != n_tokens:
        raise ValueError(
            f"{name} must have one row per token ({n_tokens}), got shape {(t, k)}"
        )
    if k > n_experts:
        raise ValueError(
            f"{name} must have k <= n_experts = {n_experts} columns, got shape "
            f"{(t, k)}"
        )
    host = _host(experts)
    bad = (host < 0) | (host >= n_experts)
    if bad.any():
        pos = [int(i) for i in np.argwhere(bad)[0]]
        raise ValueError(
            f"{name} must hold expert ids in [0, {n_experts}), got "
            f"{int(host[tuple(pos)])} at {pos}"
        )
    if distinct and k > 1:
        ordered = np.sort(host, axis=1)
        dup = (ordered[:, 1:] == ordered[:, :-1]).any(axis=1)
        if dup.any():
            row = int(np.flatnonzero(dup)[0])
            raise ValueError(
                f"{name} must name distinct experts in each row (a token chooses an "
                f"expert once), got {host[row].tolist()} in row {row}"
            )
    return t, k


def check_slots(
    slots: Any, experts: Any, capacity: int, name: str = "slots"
) -> None:
    """``slots (T, k)``: integers in ``[-1, capacity)`` (``-1``: dropped), the shape of
    ``experts``, and no two kept pairs in one ``(expert, slot)``. Reads the values."""
    check_int_array(name, slots, 2)
    if tuple(slots.shape) != tuple(experts.shape):
        raise ValueError(
            f"{name} must have the shape of experts {tuple(experts.shape)}, got "
            f"{tuple(slots.shape)}"
        )
    host = _host(slots).astype(np.int64)
    bad = (host < -1) | (host >= capacity)
    if bad.any():
        pos = [int(i) for i in np.argwhere(bad)[0]]
        raise ValueError(
            f"{name} must hold buffer rows in [0, capacity={capacity}) or -1 "
            f"(dropped), got {int(host[tuple(pos)])} at {pos}"
        )
    kept = host >= 0
    if kept.any():
        ex = _host(experts).astype(np.int64)[kept]
        key = ex * capacity + host[kept]
        uniq, counts = np.unique(key, return_counts=True)
        if (counts > 1).any():
            e, s = divmod(int(uniq[np.flatnonzero(counts > 1)[0]]), capacity)
            raise ValueError(
                f"{name} must give each kept (token, choice) its own buffer row, got "
                f"two pairs in expert {e}, slot {s}"
            )


def check_order(order: Any, n_tokens: int, name: str = "order") -> None:
    """``order``: a 1-D integer permutation of ``range(n_tokens)`` (the order in which
    tokens claim buffer rows). Reads the values."""
    check_int_array(name, order, 1)
    if int(order.shape[0]) != n_tokens:
        raise ValueError(
            f"{name} must be a permutation of range({n_tokens}) (one entry per "
            f"token), got shape {tuple(order.shape)}"
        )
    host = _host(order).astype(np.int64)
    if not np.array_equal(np.sort(host), np.arange(n_tokens)):
        seen = np.zeros(n_tokens, dtype=bool)
        for i, v in enumerate(host.tolist()):
            if v < 0 or v >= n_tokens or seen[v]:
                raise ValueError(
                    f"{name} must be a permutation of range({n_tokens}), got "
                    f"{v} at position {i}"
                    + (" (a repeat)" if 0 <= v < n_tokens else "")
                )
            seen[v] = True


# ---------------------------------------------------------------------------- experts
def check_expert_params(
    params: Any, d: int | None = None, name: str = "params"
) -> tuple[int, int, int]:
    """The stacked experts: a mapping with ``w1 (E, d, f)``, ``b1 (E, f)``, ``w2 (E, f,
    d)``, ``b2 (E, d)``, float, one kind of array (the caller checks which). ``d``:
    the token width, checked when given. Returns ``(E, d, f)``. Values are not read."""
    if not isinstance(params, Mapping):
        raise TypeError(
            f"{name} must be a dict with keys {list(EXPERT_PARAM_NAMES)}, got "
            f"{describe(params)}"
        )
    missing = [key for key in EXPERT_PARAM_NAMES if key not in params]
    if missing:
        raise ValueError(
            f"{name} must have the keys {list(EXPERT_PARAM_NAMES)}, missing {missing}"
        )
    w1 = params["w1"]
    if not hasattr(w1, "shape"):
        raise TypeError(f"{name}['w1'] must be an array, got {describe(w1)}")
    check_float_array(f"{name}['w1']", w1, 3)
    e, d_in, f = (int(s) for s in w1.shape)
    if min(e, d_in, f) < 1:
        raise ValueError(f"{name}['w1'] must not be empty, got shape {(e, d_in, f)}")
    want = {"b1": (e, f), "w2": (e, f, d_in), "b2": (e, d_in)}
    for key, shape in want.items():
        a = params[key]
        if not hasattr(a, "shape"):
            raise TypeError(f"{name}[{key!r}] must be an array, got {describe(a)}")
        check_float_array(f"{name}[{key!r}]", a, len(shape))
        if tuple(a.shape) != shape:
            raise ValueError(
                f"{name}[{key!r}] must have shape {shape} for w1 of shape "
                f"{(e, d_in, f)} (E, d, f), got {tuple(a.shape)}"
            )
    if d is not None and d_in != d:
        raise ValueError(
            f"{name}['w1'] must have shape (E, d, f) with d = {d} (the width of x), "
            f"got {(e, d_in, f)}"
        )
    return e, d_in, f


#: The names :func:`moe_forward` accepts, in the order the chapter introduces them.
STRATEGIES = ("loop", "einsum", "grouped")
#: The largest dense (T, E, C) tensor dispatch_combine builds (elements).
MAX_DISPATCH_ELEMENTS = 1 << 28


# ----------------------------------------------------------------------- shared checks
# The face-aware checks of the dispatch functions, on top of the checks above: they
# work on NumPy arrays and torch tensors alike, and the torch face, the kernels
# and the library baseline import them, so all reject a bad argument with the same
# message. ``face`` is the module the caller is in ("reference", "torch_ops",
# "kernels", "library"), named in the hints.
def _kind(array_type: type) -> str:
    return "NumPy array" if array_type is np.ndarray else "torch tensor"


def _other(face: str) -> str:
    return "torch_ops" if face == "reference" else "reference"


def expert_shapes(params: Any, array_type: type, face: str) -> tuple[int, int, int]:
    """``(E, d, f)`` of an experts' dict ``{w1 (E, d, f), b1 (E, f), w2 (E, f, d),
    b2 (E, d)}`` (:func:`~effx_lab.moe.shapes.check_expert_params`) whose entries are
    ``array_type`` with one float dtype (and, for tensors, one device)."""
    if isinstance(params, Mapping):
        for key in EXPERT_PARAM_NAMES:
            value = params.get(key)
            if value is not None and not isinstance(value, array_type):
                raise TypeError(
                    f"params[{key!r}] must be a {_kind(array_type)} in "
                    f"effx_lab.moe.{face}, got {describe(value)}; use "
                    f"effx_lab.moe.{_other(face)} for the other kind"
                )
    shape = check_expert_params(params)
    w1 = params["w1"]
    for key in ("b1", "w2", "b2"):
        if params[key].dtype != w1.dtype:
            raise TypeError(
                f"params[{key!r}] must have the dtype of params['w1'] ({w1.dtype}), "
                f"got {params[key].dtype}"
            )
        if getattr(params[key], "device", None) != getattr(w1, "device", None):
            raise ValueError(
                f"params[{key!r}] must be on the device of params['w1'] "
                f"({w1.device}), got {params[key].device}"
            )
    return shape


def check_x(
    x: Any, params: Any, array_type: type, face: str, name: str = "x"
) -> int:
    """``x (T, d)`` (:func:`~effx_lab.moe.shapes.check_tokens`): an ``array_type`` of
    the width, dtype (and device) of the experts' weights ``params`` (checked). Returns
    ``T``."""
    if not isinstance(x, array_type):
        raise TypeError(
            f"{name} must be a {_kind(array_type)} in effx_lab.moe.{face}, got "
            f"{describe(x)}; use effx_lab.moe.{_other(face)} for the other kind"
        )
    n_tokens, d = check_tokens(name, x)
    _, d_model, _ = expert_shapes(params, array_type, face)
    w1 = params["w1"]
    if d != d_model:
        raise ValueError(
            f"{name} must have shape (T, d) with d = {d_model} (the experts' width: w1 "
            f"is (E, d, f)), got {tuple(x.shape)}"
        )
    if x.dtype != w1.dtype:
        raise TypeError(
            f"{name} must have the dtype of the experts' weights ({w1.dtype}), got "
            f"{x.dtype}"
        )
    if getattr(x, "device", None) != getattr(w1, "device", None):
        raise ValueError(
            f"{name} must be on the device of the experts' weights ({w1.device}), got "
            f"{x.device}"
        )
    return n_tokens


def check_routing(routing: Any, array_type: type, face: str) -> tuple[int, int]:
    """``routing`` must be a :class:`~effx_lab.moe._format.Routing` (validated where it
    was made) holding ``array_type`` arrays. Returns ``(T, k)``."""
    from ._format import Routing  # here: _format imports this module

    if not isinstance(routing, Routing):
        raise TypeError(
            f"routing must be a Routing (made by effx_lab.moe.{face}.route), got "
            f"{describe(routing)}"
        )
    if routing.is_torch != (array_type is not np.ndarray):
        have = "torch tensors" if routing.is_torch else "NumPy arrays"
        raise TypeError(
            f"routing must hold {_kind(array_type)}s in effx_lab.moe.{face}, got one "
            f"holding {have}; route with effx_lab.moe.{face}.route (or use "
            f"effx_lab.moe.{_other(face)})"
        )
    return routing.n_tokens, routing.k


def check_match(routing: Any, n_tokens: int, n_experts: int, name: str = "x") -> None:
    """The routing must be of these tokens and these experts."""
    if routing.n_experts != n_experts:
        raise ValueError(
            f"params must hold routing.n_experts = {routing.n_experts} experts (w1 is "
            f"(E, d, f)), got E = {n_experts}"
        )
    if routing.n_tokens != n_tokens:
        raise ValueError(
            f"{name} must have one row per routed token (routing.n_tokens = "
            f"{routing.n_tokens}), got {n_tokens} rows"
        )


def check_offsets(
    offsets: Any, n_rows: int, n_experts: int, array_type: type
) -> list[int]:
    """``offsets (E+1,)`` int, starting at 0, non-decreasing, ending at ``n_rows``
    (reads the values back: they are the host-side bounds of the groups). Returns them
    as a list."""
    if not isinstance(offsets, array_type):
        raise TypeError(
            f"offsets must be a {_kind(array_type)} (made by sort_by_expert), got "
            f"{describe(offsets)}"
        )
    check_int_array("offsets", offsets, 1)
    if tuple(offsets.shape) != (n_experts + 1,):
        raise ValueError(
            f"offsets must have shape (E+1,) = ({n_experts + 1},) for E = {n_experts} "
            f"experts, got {tuple(offsets.shape)}"
        )
    values = [int(v) for v in offsets.tolist()]
    if values[0] != 0 or values[-1] != n_rows:
        raise ValueError(
            f"offsets must start at 0 and end at the number of rows ({n_rows}), got "
            f"{values[0]} ... {values[-1]}"
        )
    if any(b < a for a, b in zip(values, values[1:])):
        raise ValueError(f"offsets must be non-decreasing, got {values}")
    return values


def check_rows(x_sorted: Any, params: Any, array_type: type, face: str) -> int:
    """``x_sorted (N, d)``: as ``x`` but ``N = 0`` is allowed (every pair dropped)."""
    empty = isinstance(x_sorted, array_type) and x_sorted.ndim == 2
    if empty and not x_sorted.shape[0]:
        _, d, _ = expert_shapes(params, array_type, face)
        if int(x_sorted.shape[1]) != d or x_sorted.dtype != params["w1"].dtype:
            raise ValueError(
                f"x_sorted must have shape (N, d = {d}) and dtype "
                f"{params['w1'].dtype}, got {describe(x_sorted)}"
            )
        return 0
    return check_x(x_sorted, params, array_type, face, "x_sorted")
