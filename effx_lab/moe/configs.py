"""Settings of the whole-model verb :func:`effx_lab.moe.models.moefy_`, a small frozen
dataclass in the style of :mod:`effx_lab.nm.configs` (and torchao's ``quantize_(model,
config)``). It holds settings, never data, and checks them when it is built
(``ValueError``/``TypeError`` naming the field).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from effx_lab._validate import (
    check_bool,
    check_choice,
    check_float,
    check_int,
)

from .shapes import STRATEGIES
from .shapes import POLICIES

__all__ = ["MoEConfig"]


def _check_experts(value: Any) -> int | tuple[int, ...]:
    if isinstance(value, (tuple, list)):
        if not value:
            raise ValueError("n_experts must not be an empty sequence")
        return tuple(
            check_int(f"n_experts[{i}]", v, min_value=1) for i, v in enumerate(value)
        )
    return check_int("n_experts", value, min_value=1)


@dataclass(frozen=True)
class MoEConfig:
    """Which layers of an :class:`effx_lab.models.lm.LM` become mixtures of experts, and
    how they route.

    * Layers: every ``every``-th layer from layer ``first`` (``first, first + every,
      ...``). GLaM and the Switch Transformer put an MoE FFN in every other layer: the
      default ``every=2, first=1`` picks layers 1, 3, 5, ...
    * ``n_experts``: experts per MoE layer, or one count per chosen layer (a PR-MoE
      pyramid, :func:`effx_lab.moe.reference.pyramid_experts`).
    * Routing: top-``k`` at ``capacity_factor`` (``eval_capacity_factor`` under
      ``torch.no_grad()`` if given) by ``policy`` (``"vanilla"``, ``"bpr_max"``,
      ``"bpr_sum"``), the experts run by ``strategy``; ``renormalize`` (``None``: the
      layer's rule, ``False`` for ``k = 1``, ``True`` for ``k >= 2``) and ``noisy``
      (Shazeer et al.'s learned noise while training) as in
      :func:`effx_lab.moe.layers.moe_ffn`.
    * ``n_tasks``: task-level routing (Kudugunta et al., 2021): the router is a table of
      logits per task ``w_task (n_tasks, E)`` (run the model inside
      :func:`effx_lab.moe.layers.tasks`); not with ``noisy`` or ``residual``.
    * ``residual=True``: PR-MoE blocks (``"pr_moe"``, top-1): the dense FFN stays as the
      residual MLP and the experts add a correction (``k`` must be 1).
    * ``seed``: the router weights (``w_gate`` or ``w_task``) ``~ N(0, router_std^2)``
      of layer ``i`` come from ``numpy.random.default_rng([seed, i])``.
    """

    n_experts: int | tuple[int, ...] = 8
    k: int = 1
    capacity_factor: float = 1.25
    policy: str = "vanilla"
    every: int = 2
    first: int = 1
    strategy: str = "grouped"
    renormalize: bool | None = None
    noisy: bool = False
    eval_capacity_factor: float | None = None
    residual: bool = False
    n_tasks: int | None = None
    seed: int = 0
    router_std: float = 0.02

    def __post_init__(self) -> None:
        n_experts = _check_experts(self.n_experts)
        object.__setattr__(self, "n_experts", n_experts)
        fewest = min(n_experts) if isinstance(n_experts, tuple) else n_experts
        k = check_int("k", self.k, min_value=1, max_value=fewest)
        object.__setattr__(self, "k", k)
        c = check_float(
            "capacity_factor", self.capacity_factor, min_value=0.0, min_inclusive=False
        )
        object.__setattr__(self, "capacity_factor", c)
        if self.eval_capacity_factor is not None:
            object.__setattr__(
                self,
                "eval_capacity_factor",
                check_float(
                    "eval_capacity_factor", self.eval_capacity_factor,
                    min_value=0.0, min_inclusive=False,
                ),  # fmt: skip
            )
        check_choice("policy", self.policy, POLICIES)
        check_choice("strategy", self.strategy, STRATEGIES)
        object.__setattr__(self, "every", check_int("every", self.every, min_value=1))
        object.__setattr__(self, "first", check_int("first", self.first, min_value=0))
        if self.renormalize is not None:
            check_bool("renormalize", self.renormalize)
        noisy = check_bool("noisy", self.noisy)
        residual = check_bool("residual", self.residual)
        if residual and k != 1:
            raise ValueError(
                f"k must be 1 with residual=True (PR-MoE is top-1), got {k}"
            )
        if residual and noisy:
            raise ValueError("noisy must be False with residual=True (PR-MoE's router)")
        if self.n_tasks is not None:
            n_tasks = check_int("n_tasks", self.n_tasks, min_value=1)
            object.__setattr__(self, "n_tasks", n_tasks)
            if noisy or residual:
                raise ValueError(
                    "n_tasks (task-level routing) needs noisy=False and residual=False"
                )
        object.__setattr__(self, "seed", check_int("seed", self.seed, min_value=0))
        std = check_float("router_std", self.router_std, min_value=0.0)
        object.__setattr__(self, "router_std", std)

    def layers(self, n_layers: int) -> list[int]:
        """The indices of the layers this config makes MoE in a model of ``n_layers``
        layers."""
        n_layers = check_int("n_layers", n_layers, min_value=1)
        return list(range(self.first, n_layers, self.every))

    def experts_of(self, n_layers: int) -> list[int]:
        """The experts of each chosen layer (in the order of :meth:`layers`);
        ``ValueError`` when a per-layer ``n_experts`` does not name one count per
        chosen layer."""
        chosen = self.layers(n_layers)
        if isinstance(self.n_experts, tuple):
            if len(self.n_experts) != len(chosen):
                raise ValueError(
                    f"n_experts must name one count per MoE layer ({len(chosen)}: "
                    f"layers {chosen}), got {len(self.n_experts)}: {self.n_experts}"
                )
            return list(self.n_experts)
        return [self.n_experts] * len(chosen)
