"""Pruning during and after training: the cubic schedule, gradual magnitude pruning,
iterative pruning, rewinding and the lottery ticket.

* :func:`cubic_sparsity`: Zhu & Gupta's (2017) schedule. Starting at step ``t0`` the
  weights are pruned every ``dt`` steps, ``n_steps`` times, to

      s_t = s_f + (s_i - s_f) (1 - (t - t0) / (n dt))^3  for t = t0 + i dt, i = 0..n

  fast at first, while many weights are redundant, then slower as the network has
  fewer left to lose.
* :class:`GradualPruner`: gradual magnitude pruning (GMP) as an ``after_step`` hook of
  :func:`effx_lab.models.training.train`: at each pruning step the magnitude masks are
  recomputed at ``cubic_sparsity(step)`` and an :class:`effx_lab.sparse.masks.MaskSet`
  keeps the pruned weights exactly 0 (gradients 0 as well); a pruned weight is never
  revived.
* :func:`iterative_sparsities`: the sparsity after each round of iterative pruning
  when every round prunes the same fraction of the weights still there (Han et al. 2015,
  Frankle & Carbin 2019).
* :func:`snapshot` and :func:`rewind_`: the weights at iteration ``k``, and putting them
  back while the masks stay (pruned weights stay 0).
* :func:`retrain`: the three ways of retraining a pruned network that Renda et al.
  (2020) compare at equal retraining steps: fine-tuning (the weights kept, the final
  learning rate held constant), weight rewinding (weights *and* learning-rate schedule
  back to step ``k``) and learning-rate rewinding (the weights kept, the schedule
  replayed from step ``k``).
* :func:`lottery_ticket_`: the winning ticket of Frankle & Carbin (2019): the mask of a
  trained network put onto its weights at initialisation, or (Frankle et al. 2020) at an
  early iteration ``k``; the control is the same mask on a fresh random initialisation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from effx_lab._validate import (
    check_choice,
    check_float,
    check_int,
    describe,
)
from effx_lab.sparse import masks as sparse_masks

from .models import mask_set, prunable_weights
from .torch_ops import magnitude_masks

__all__ = [
    "RETRAIN_MODES",
    "GradualPruner",
    "cubic_sparsity",
    "iterative_sparsities",
    "lottery_ticket_",
    "retrain",
    "rewind_",
    "snapshot",
]

#: the retraining modes of :func:`retrain` (Renda et al. 2020)
RETRAIN_MODES = ("finetune", "weight_rewind", "lr_rewind")

_SCOPES = ("layer", "global")


# --------------------------------------------------------------------------------------
# the cubic schedule
# --------------------------------------------------------------------------------------


def _check_sparsity(name: str, value: Any) -> float:
    return check_float(name, value, min_value=0.0, max_value=1.0, max_inclusive=False)


def _check_schedule(
    s_init: Any, s_final: Any, t0: Any, n_steps: Any, dt: Any
) -> tuple[float, float, int, int, int]:
    s_init = _check_sparsity("s_init", s_init)
    s_final = _check_sparsity("s_final", s_final)
    if s_init > s_final:
        raise ValueError(
            "s_init must be <= s_final (the schedule only prunes more), got "
            f"s_init={s_init} and s_final={s_final}"
        )
    t0 = check_int("t0", t0, min_value=0)
    dt = check_int("dt", dt, min_value=1)
    if isinstance(n_steps, bool) or not isinstance(n_steps, int):
        check_int("n_steps", n_steps)  # raises the TypeError
    if n_steps < 1:
        raise ValueError(
            "n_steps must be an int >= 1: the schedule's end t0 + n_steps * dt must "
            f"come after its start t0 = {t0}, got n_steps={n_steps} (start after end)"
        )
    return s_init, s_final, t0, int(n_steps), dt


def cubic_sparsity(
    step: int,
    *,
    s_init: float = 0.0,
    s_final: float,
    t0: int = 0,
    n_steps: int,
    dt: int = 1,
) -> float:
    """The sparsity Zhu & Gupta's (2017) cubic schedule prescribes after ``step`` steps.

    Pruning happens at the steps ``t = t0 + i dt`` for ``i = 0, 1, ..., n_steps``, where
    the sparsity becomes ``s_final + (s_init - s_final) (1 - i / n_steps)^3``; between
    two pruning steps it stays at the value of the last one (``<= step``). Before ``t0``
    it is ``s_init``, from ``t0 + n_steps dt`` on ``s_final``. ``s_init <= s_final``,
    both in ``[0, 1)``; ``t0 >= 0``, ``n_steps >= 1``, ``dt >= 1``, ``step >= 0``.
    """
    s_init, s_final, t0, n_steps, dt = _check_schedule(s_init, s_final, t0, n_steps, dt)
    step = check_int("step", step, min_value=0)
    if step < t0:
        return s_init
    i = min((step - t0) // dt, n_steps)
    if i == 0:
        return s_init
    if i == n_steps:
        return s_final
    value = s_final + (s_init - s_final) * (1.0 - i / n_steps) ** 3
    return min(max(value, s_init), s_final)


# --------------------------------------------------------------------------------------
# which weights, and their masks
# --------------------------------------------------------------------------------------


def _check_model(value: Any) -> nn.Module:
    if not isinstance(value, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {describe(value)}")
    return value


def _check_weights(weights: Any) -> dict[str, nn.Parameter]:
    if not isinstance(weights, Mapping) or not weights:
        raise TypeError(
            "weights must be a non-empty dict of parameter name -> nn.Parameter (the "
            "names of model.named_parameters()), got "
            f"{describe(weights)}"
        )
    out = {}
    for key, value in weights.items():
        if not isinstance(key, str):
            raise TypeError(f"weights keys must be str names, got {describe(key)}")
        if not isinstance(value, nn.Parameter) or not value.dtype.is_floating_point:
            raise TypeError(
                f"weights[{key!r}] must be a float nn.Parameter, got {describe(value)}"
            )
        out[key] = value
    return out


def _bind(model: nn.Module, weights: Mapping[str, nn.Parameter]) -> None:
    """Check that every entry of ``weights`` is the parameter of that name in model."""
    params = dict(model.named_parameters())
    for key, value in weights.items():
        if key not in params:
            some = ", ".join(list(params)[:4])
            raise ValueError(
                f"weights names a parameter the model does not have: {key!r} (the "
                f"model has e.g. {some})"
            )
        if params[key] is not value:
            raise ValueError(
                f"weights[{key!r}] is not the model's parameter of that name (was the "
                "model rebuilt or given another?)"
            )


def _ranked(w: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """``|w|`` in float64 with the pruned entries at 0 and kept zeros just above 0.

    Pruned weights are exactly 0, so magnitude pruning ranks them first anyway; a kept
    weight that happens to be exactly 0 is lifted to the smallest normal float64
    (below every float32 magnitude), so that a tie at 0 can never revive a pruned
    weight in place of it.
    """
    a = w.detach().to(torch.float64).abs()
    tiny = torch.finfo(torch.float64).tiny
    a = torch.where(a == 0, torch.full_like(a, tiny), a)
    return torch.where(keep, a, torch.zeros_like(a))


def _attach(
    model: nn.Module, masks: Mapping[str, torch.Tensor]
) -> sparse_masks.MaskSet:
    """Attach ``masks`` (updating masks already there); return them as a MaskSet."""
    present = mask_set(model)
    new = {k: v for k, v in masks.items() if k not in present}
    old = {k: v for k, v in masks.items() if k in present}
    attached = dict(sparse_masks.apply_masks(model, new)) if new else {}
    if old:
        sub = sparse_masks.MaskSet({k: present[k] for k in old})
        sub.update(old)
        attached.update(dict(sub))
    return sparse_masks.MaskSet({k: attached[k] for k in masks})


# --------------------------------------------------------------------------------------
# gradual magnitude pruning
# --------------------------------------------------------------------------------------


class GradualPruner:
    """Gradual magnitude pruning (Zhu & Gupta 2017) as an ``after_step`` hook.

    ``GradualPruner(model, s_final=0.9, t0=0, n_steps=10, dt=20)`` prunes the
    prunable weights of ``model`` (:func:`effx_lab.prune.models.prunable_weights`: the
    2-D weights of its linear layers, for :class:`effx_lab.models.lm.LM` the ``w*``
    matrices of every layer, never the embeddings); pass a dict ``{name: parameter}``
    (names of ``model.named_parameters()``) instead of the model to choose them, in
    which case the masks are attached at the first call. Use it as
    ``train(model, tokens, steps=..., after_step=[pruner])``:

    * at each pruning step ``t`` of :func:`cubic_sparsity` the magnitude masks are
      recomputed at ``cubic_sparsity(t)`` (:func:`effx_lab.prune.torch_ops.
      magnitude_masks`, ``scope="layer"``: each tensor pruned to that sparsity,
      ``"global"``: one threshold over all of them) and the :class:`MaskSet`
      (:attr:`masks`) is updated;
    * after every step the masks are reapplied, so the pruned weights are exactly 0
      after each optimizer step (their gradients are 0 through the masks' gradient
      hooks; AdamW's momentum from before a weight was pruned moves it during the next
      step, and the reapply zeros it again);
    * a pruned weight is never revived: it is 0, the smallest magnitude, and ranks
      first at the next pruning step (a kept weight that is exactly 0 ranks just above
      the pruned ones).

    The masks start at ``s_init`` when they are attached. :attr:`history` lists
    ``(step, sparsity)`` at each pruning step, the sparsity measured over the pruned
    weights together.
    """

    def __init__(
        self,
        weights_or_model: Any,
        *,
        s_final: float,
        t0: int = 0,
        n_steps: int,
        dt: int = 1,
        s_init: float = 0.0,
        scope: str = "layer",
    ) -> None:
        self._schedule = dict(
            zip(
                ("s_init", "s_final", "t0", "n_steps", "dt"),
                _check_schedule(s_init, s_final, t0, n_steps, dt),
            )
        )
        self.scope = check_choice("scope", scope, _SCOPES)
        self.history: list[tuple[int, float]] = []
        self._model: nn.Module | None = None
        self._masks: sparse_masks.MaskSet | None = None
        self._last = -1
        if isinstance(weights_or_model, nn.Module):
            weights = prunable_weights(weights_or_model)
            if not weights:
                raise ValueError(
                    "weights_or_model has no prunable weights (2-D weights of linear "
                    f"layers): {type(weights_or_model).__name__}"
                )
            self._weights = weights
            self._start(weights_or_model)
        elif isinstance(weights_or_model, Mapping):
            self._weights = _check_weights(weights_or_model)
        else:
            raise TypeError(
                "weights_or_model must be a torch.nn.Module or a dict of parameter "
                f"name -> nn.Parameter, got {describe(weights_or_model)}"
            )

    # ---------------------------------------------------------------------------- state
    @property
    def masks(self) -> sparse_masks.MaskSet | None:
        """The :class:`~effx_lab.sparse.masks.MaskSet` kept up to date (``None`` until
        the masks are attached)."""
        return self._masks

    @property
    def schedule(self) -> dict[str, Any]:
        """The schedule's arguments (``s_init, s_final, t0, n_steps, dt``)."""
        return dict(self._schedule)

    @property
    def end(self) -> int:
        """The last pruning step, ``t0 + n_steps * dt``."""
        s = self._schedule
        return s["t0"] + s["n_steps"] * s["dt"]

    def target(self, step: int) -> float:
        """:func:`cubic_sparsity` at ``step`` for this pruner's schedule."""
        return cubic_sparsity(step, **self._schedule)

    def is_pruning_step(self, step: int) -> bool:
        """Whether the masks are recomputed at ``step``."""
        step = check_int("step", step, min_value=0)
        t0, dt = self._schedule["t0"], self._schedule["dt"]
        return t0 <= step <= self.end and (step - t0) % dt == 0

    def sparsity(self) -> float:
        """The fraction of the chosen weights' entries now pruned (0 until attached)."""
        return self._masks.sparsity() if self._masks is not None else 0.0

    def __repr__(self) -> str:
        s = self._schedule
        return (
            f"GradualPruner({len(self._weights)} weights, s {s['s_init']} -> "
            f"{s['s_final']}, steps {s['t0']}..{self.end} every {s['dt']}, "
            f"scope={self.scope!r}, now {self.sparsity():.3g})"
        )

    # ---------------------------------------------------------------------------- work
    def _new_masks(self, sparsity: float) -> dict[str, torch.Tensor]:
        keep = (
            {k: m.mask for k, m in self._masks.items()}
            if self._masks is not None
            else {
                k: torch.ones_like(w, dtype=torch.bool)
                for k, w in self._weights.items()
            }
        )
        ranked = {k: _ranked(w, keep[k]) for k, w in self._weights.items()}
        new = magnitude_masks(ranked, sparsity, scope=self.scope)
        return {k: new[k].to(keep[k].device) & keep[k] for k in self._weights}

    def _start(self, model: nn.Module) -> None:
        _bind(model, self._weights)
        masks = self._new_masks(self._schedule["s_init"])
        self._masks = _attach(model, masks)
        self._model = model

    def __call__(self, model: Any, step: Any) -> None:
        """The hook ``hook(model, step)``: prune at a pruning step, then reapply."""
        model = _check_model(model)
        step = check_int("step", step, min_value=0)
        if self._model is None:
            self._start(model)
        elif model is not self._model:
            raise ValueError(
                "model must be the model this GradualPruner prunes, got another "
                f"{type(model).__name__}"
            )
        if self.is_pruning_step(step) and step > self._last:
            with torch.no_grad():
                self._masks.update(self._new_masks(self.target(step)))
            self._last = step
            self.history.append((step, self._masks.sparsity()))
        self._masks.reapply()


# --------------------------------------------------------------------------------------
# iterative pruning, snapshots, rewinding
# --------------------------------------------------------------------------------------


def iterative_sparsities(final: float, rounds: int) -> list[float]:
    """The sparsity after each of ``rounds`` rounds of iterative pruning to ``final``.

    Every round prunes the same fraction ``p`` of the weights still there, so after
    round ``r`` the sparsity is ``1 - (1 - p)^r``; ``p = 1 - (1 - final)^(1 / rounds)``
    makes the last one ``final`` (returned exactly). ``final`` in ``[0, 1)``,
    ``rounds >= 1``.
    """
    final = _check_sparsity("final", final)
    rounds = check_int("rounds", rounds, min_value=1)
    keep = (1.0 - final) ** (1.0 / rounds)
    out = [1.0 - keep**r for r in range(1, rounds)]
    return [min(max(s, 0.0), final) for s in out] + [final]


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """A deep copy of ``model``'s state (``state_dict``): the weights at this iteration.

    The copy shares no memory with the model, so training on does not change it; give
    it to :func:`rewind_` later.
    """
    model = _check_model(model)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _check_snap(model: nn.Module, snap: Any) -> dict[str, torch.Tensor]:
    """The model's ``state_dict``, once ``snap`` is checked to match it by entry."""
    if not isinstance(snap, Mapping):
        raise TypeError(
            f"snap must be a dict made by snapshot(model), got {describe(snap)}"
        )
    state = model.state_dict()
    missing = [k for k in state if k not in snap]
    extra = [k for k in snap if k not in state]
    if missing or extra:
        raise ValueError(
            "snap must hold exactly the model's state_dict entries; "
            f"missing {missing[:4]}, unexpected {extra[:4]}"
        )
    for key, value in state.items():
        got = snap[key]
        if not isinstance(got, torch.Tensor) or tuple(got.shape) != tuple(value.shape):
            raise ValueError(
                f"snap[{key!r}] must be a tensor of shape {tuple(value.shape)}, got "
                f"{describe(got)}"
            )
    return state


def rewind_(model: nn.Module, snap: Mapping[str, torch.Tensor]) -> nn.Module:
    """Put the weights of ``snap`` (:func:`snapshot`) back into ``model``; keep masks.

    Every entry of the model's ``state_dict`` must be in ``snap`` with its shape
    (checked before anything is written: on error the model is unchanged). The masks
    attached to the model stay, and its pruned weights are zeroed again at once:
    rewinding a pruned network gives the pruned network at the earlier iteration.
    Returns ``model``.
    """
    model = _check_model(model)
    state = _check_snap(model, snap)
    with torch.no_grad():
        for key, value in state.items():
            value.copy_(snap[key])
    mask_set(model).reapply()
    return model


def lottery_ticket_(
    model: nn.Module,
    sparsity: float,
    rewind_to: Mapping[str, torch.Tensor],
    *,
    scope: str = "global",
    weights: Mapping[str, nn.Parameter] | None = None,
) -> sparse_masks.MaskSet:
    """Turn a trained ``model`` into a lottery ticket, in place; return its masks.

    The magnitude masks of the trained weights at ``sparsity`` (``scope="global"``, as
    Frankle & Carbin 2019 do for deep networks, or ``"layer"``) over the prunable
    weights (or ``weights``) are attached (or update masks already there: iterative
    pruning), then the weights are rewound to ``rewind_to`` (:func:`rewind_`): the
    snapshot at initialisation (the original ticket), at an early iteration ``k``
    (Frankle et al. 2020: what makes tickets work beyond small networks), or a *fresh*
    random initialisation (``snapshot(LM(spec, seed=other))``: the control, the same
    mask without the weights it was found with).
    """
    model = _check_model(model)
    sparsity = _check_sparsity("sparsity", sparsity)
    scope = check_choice("scope", scope, _SCOPES)
    if weights is None:
        weights = prunable_weights(model)
    else:
        weights = _check_weights(weights)
        _bind(model, weights)
    _check_snap(model, rewind_to)  # before anything is changed
    present = mask_set(model)
    keep = {
        k: present[k].mask if k in present else torch.ones_like(w, dtype=torch.bool)
        for k, w in weights.items()
    }
    ranked = {k: _ranked(w, keep[k]) for k, w in weights.items()}
    new = magnitude_masks(ranked, sparsity, scope=scope)
    masks = _attach(model, {k: new[k].to(keep[k].device) & keep[k] for k in weights})
    rewind_(model, rewind_to)
    return masks


# --------------------------------------------------------------------------------------
# retraining after pruning
# --------------------------------------------------------------------------------------


def retrain(
    model: nn.Module,
    train_tokens: Any,
    mode: str,
    *,
    k: int,
    total_steps: int,
    rewind_to: Mapping[str, torch.Tensor] | None = None,
    lr: float = 3e-3,
    warmup: float = 0.0,
    min_ratio: float = 0.1,
    after_step: Sequence[Any] = (),
    **train_kwargs: Any,
):
    """Retrain a pruned ``model`` for ``total_steps - k`` steps in one of Renda et al.'s
    (2020) modes; returns the :class:`~effx_lab.models.training.TrainHistory`.

    The original run trained ``total_steps`` steps (``T``) with peak ``lr``,
    ``warmup`` and ``min_ratio`` (:func:`effx_lab.models.training.lr_schedule`). All
    three modes retrain for the same ``T - k`` steps (``0 <= k < T``):

    * ``"finetune"``: the weights kept, the learning rate held at the original run's
      final value ``lr * min_ratio``;
    * ``"weight_rewind"``: the weights rewound to ``rewind_to`` (the :func:`snapshot`
      at step ``k``; the masks stay) and the schedule replayed from step ``k``: steps
      ``k + 1 .. T`` of the original run;
    * ``"lr_rewind"``: the weights kept, the schedule replayed from step ``k``.

    The model's masks (:func:`model_masks`) run as an ``after_step`` hook, before
    ``after_step``. ``train_kwargs`` go to :func:`effx_lab.models.training.train`
    (``batch_size``, ``seq_len``, ``seed``, ``eval_tokens``, ...).
    """
    from effx_lab.models.training import train

    model = _check_model(model)
    mode = check_choice("mode", mode, RETRAIN_MODES)
    total_steps = check_int("total_steps", total_steps, min_value=1)
    k = check_int("k", k, min_value=0, max_value=total_steps - 1)
    lr = check_float("lr", lr, min_value=0.0, min_inclusive=False)
    min_ratio = check_float("min_ratio", min_ratio, min_value=0.0, max_value=1.0)
    if mode == "finetune" and min_ratio == 0.0:
        raise ValueError(
            "min_ratio must be > 0 for mode='finetune' (it fine-tunes at the final "
            "learning rate lr * min_ratio), got 0.0"
        )
    for bad in ("steps", "time_budget_s", "schedule_start", "schedule_steps"):
        if bad in train_kwargs:
            raise ValueError(
                f"retrain sets {bad} itself (total_steps - k steps); got {bad}="
                f"{train_kwargs[bad]!r}"
            )
    if mode == "weight_rewind":
        if rewind_to is None:
            raise ValueError(
                "rewind_to is required for mode='weight_rewind' (the snapshot at "
                "step k), got None"
            )
        rewind_(model, rewind_to)
    elif rewind_to is not None:
        raise ValueError(
            f"rewind_to goes with mode='weight_rewind' only, got it with mode={mode!r}"
        )
    hooks = [mask_set(model), *after_step]
    steps = total_steps - k
    if mode == "finetune":
        return train(
            model, train_tokens, steps=steps, lr=lr * min_ratio,
            warmup=0.0, min_ratio=1.0, after_step=hooks, **train_kwargs,
        )  # fmt: skip
    return train(
        model, train_tokens, steps=steps, lr=lr, warmup=warmup, min_ratio=min_ratio,
        schedule_start=k, schedule_steps=total_steps, after_step=hooks, **train_kwargs,
    )  # fmt: skip
