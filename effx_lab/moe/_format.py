"""The routing decision shared by the NumPy, PyTorch and Triton faces of chapter 5.

:class:`Routing` says, for every token ``t`` of a flattened batch ``(T, d)`` and each of
its ``k`` choices ``j`` (best first):

* ``experts[t, j]`` (int64): the expert chosen;
* ``gates[t, j]`` (float): its combine weight (the router's probability, renormalized
  over the ``k`` choices when the router says so);
* ``slots[t, j]`` (int64): the row of that expert's buffer the pair occupies, ``-1``
  when the buffer was full: the pair is **dropped** and contributes nothing (a token
  whose every choice is dropped passes the MoE layer on its residual unchanged, the
  rule of the Switch Transformer);
* ``capacity``: the rows of each expert's buffer; ``n_experts``: ``E``;
* ``probs (T, E)``: the router's softmax over all experts, which the auxiliary losses
  read.

The arrays are NumPy arrays (made by :mod:`effx_lab.moe.reference`) or torch tensors
on one device (made by :mod:`effx_lab.moe.torch_ops`; ``gates`` and ``probs`` may carry
autograd history). A routing is **validated once, where it is made**: the constructor
reads ``experts``, ``slots``, ``gates`` and ``probs`` back (a copy to the host for CUDA
tensors) and checks shapes, dtypes, ranges and that no two kept pairs share an
``(expert, slot)``; the functions that take a ``Routing`` then trust it.

:class:`CapacityTracker` is DynaMoE's capacity with hysteresis (Kossmann et al., 2022):
one instance follows the loads of many steps and changes the capacity (a recompilation
of a static-shape program) only when the bucket must change.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from effx_lab._validate import check_float, check_int, describe

from .shapes import (
    _host,
    _is_tensor,
    check_experts,
    check_finite,
    check_float_array,
    check_int_array,
    check_slots,
    round_up_capacity,
)

__all__ = ["CapacityTracker", "Routing"]


def _is_int64(a: Any) -> bool:
    if _is_tensor(a):
        import torch

        return a.dtype == torch.int64
    return a.dtype == np.int64


@dataclass(frozen=True, eq=False, repr=False)
class Routing:
    """A routing decision: ``experts``, ``gates``, ``slots``, ``capacity``,
    ``n_experts``, ``probs``, as described in the module docstring.

    Made by ``route(...)`` of either face (or by hand); the constructor validates
    everything and raises ``TypeError``/``ValueError`` naming the field.
    """

    experts: Any
    gates: Any
    slots: Any
    capacity: int
    n_experts: int
    probs: Any

    def __post_init__(self) -> None:
        arrays = {
            "experts": self.experts,
            "gates": self.gates,
            "slots": self.slots,
            "probs": self.probs,
        }
        torch_face = _is_tensor(self.experts)
        kind = "torch tensor" if torch_face else "NumPy array"
        for name, a in arrays.items():
            if not (isinstance(a, np.ndarray) or _is_tensor(a)):
                raise TypeError(
                    f"{name} must be a NumPy array or torch tensor, got {describe(a)}"
                )
            if _is_tensor(a) != torch_face:
                raise TypeError(
                    f"{name} must be a {kind}, like experts, got {describe(a)}"
                )
            if torch_face and a.device != self.experts.device:
                raise ValueError(
                    f"{name} must be on the device of experts ({self.experts.device}),"
                    f" got {a.device}"
                )
        n_experts = check_int("n_experts", self.n_experts, min_value=1)
        cap = check_int("capacity", self.capacity, min_value=1)
        object.__setattr__(self, "n_experts", n_experts)
        object.__setattr__(self, "capacity", cap)
        for name in ("experts", "slots"):
            a = arrays[name]
            check_int_array(name, a, 2)
            if not _is_int64(a):
                raise TypeError(f"{name} must have dtype int64, got {a.dtype}")
        t, k = check_experts(self.experts, n_experts)
        check_float_array("gates", self.gates, 2)
        if tuple(self.gates.shape) != (t, k):
            raise ValueError(
                f"gates must have the shape of experts {(t, k)}, got "
                f"{tuple(self.gates.shape)}"
            )
        check_float_array("probs", self.probs, 2)
        if tuple(self.probs.shape) != (t, n_experts):
            raise ValueError(
                f"probs must have shape (n_tokens, n_experts) = {(t, n_experts)}, got "
                f"{tuple(self.probs.shape)}"
            )
        check_finite("gates", self.gates)
        check_finite("probs", self.probs)
        check_slots(self.slots, self.experts, cap)

    # ------------------------------------------------------------------------ derived
    @property
    def kept(self) -> Any:
        """``slots >= 0``: bool ``(T, k)``, the (token, choice) pairs that run."""
        return self.slots >= 0

    @property
    def k(self) -> int:
        """Experts per token."""
        return int(self.experts.shape[1])

    @property
    def n_tokens(self) -> int:
        """``T``: tokens routed."""
        return int(self.experts.shape[0])

    @property
    def is_torch(self) -> bool:
        """Whether the arrays are torch tensors (made by the torch face)."""
        return _is_tensor(self.experts)

    def __repr__(self) -> str:
        kept = int(_host(self.slots >= 0).sum())
        pairs = self.n_tokens * self.k
        where = f", device={self.experts.device}" if self.is_torch else ""
        return (
            f"Routing(n_tokens={self.n_tokens}, n_experts={self.n_experts}, "
            f"k={self.k}, capacity={self.capacity}, kept {kept}/{pairs} pairs{where})"
        )


class CapacityTracker:
    """DynaMoE-style dynamic capacity over many steps (Kossmann et al., 2022).

    A static-shape program (an XLA/``torch.compile`` graph, a Triton launch grid) is
    compiled for one capacity; a new capacity means a recompilation. The tracker
    follows the per-expert loads of each step and returns the capacity to use:

    * ``need = round_up_capacity(max(counts), multiple, headroom)``: the smallest
      bucket that drops nothing in this step (:func:`dynamic_capacity`);
    * ``ema``: an exponential moving average (``decay``) of ``max(counts)``;
    * the capacity **grows at once** to ``need`` when ``need`` exceeds it (nothing is
      dropped), and **shrinks** only to ``max(need, bucket(ema))`` when that is
      smaller, so one quiet step does not trigger a recompilation that the next busy
      step undoes.

    ``update(counts)`` takes a NumPy array or a torch tensor of per-expert counts
    (``expert_counts(...)``), returns the capacity, and counts the changes in
    ``recompiles``; ``history`` lists the capacities returned.
    """

    def __init__(
        self, multiple: int = 8, decay: float = 0.9, headroom: float = 1.0
    ) -> None:
        self.multiple = check_int("multiple", multiple, min_value=1)
        self.decay = check_float(
            "decay", decay, min_value=0.0, max_value=1.0, max_inclusive=False
        )
        self.headroom = check_float("headroom", headroom, min_value=1.0)
        self.ema: float | None = None
        self.capacity: int | None = None
        self.recompiles = 0
        self.history: list[int] = []

    def update(self, counts: Any) -> int:
        """Record one step's per-expert ``counts`` (1-D ints >= 0); return the
        capacity for it."""
        if not (isinstance(counts, np.ndarray) or _is_tensor(counts)):
            raise TypeError(
                f"counts must be a NumPy array or torch tensor, got {describe(counts)}"
            )
        check_int_array("counts", counts, 1)
        host = _host(counts).astype(np.int64)
        if host.size == 0 or (host < 0).any():
            raise ValueError(
                f"counts must be a non-empty array of counts >= 0, got {host.tolist()}"
            )
        peak = int(host.max())
        need = round_up_capacity(peak, self.multiple, self.headroom)
        self.ema = (
            float(peak)
            if self.ema is None
            else self.decay * self.ema + (1.0 - self.decay) * peak
        )
        smooth = round_up_capacity(int(np.ceil(self.ema)), self.multiple, self.headroom)
        if self.capacity is None:
            new = need
        elif need > self.capacity:
            new = need
        else:
            new = min(self.capacity, max(need, smooth))
        if self.capacity is not None and new != self.capacity:
            self.recompiles += 1
        self.capacity = new
        self.history.append(new)
        return new

    def __repr__(self) -> str:
        return (
            f"CapacityTracker(multiple={self.multiple}, decay={self.decay}, "
            f"capacity={self.capacity}, recompiles={self.recompiles})"
        )
