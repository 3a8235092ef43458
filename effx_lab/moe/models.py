"""Mixture of experts on whole models: the verb :func:`moefy_`.

``moefy_(model, config)`` edits an :class:`effx_lab.models.lm.LM` in place and returns
it (the style of ``quantize_``, ``prune_`` and ``sparsify_``): the dense ``"gelu"``
FFNs of the layers ``config`` chooses (every other layer by default, as GLaM) become
``"moe"`` FFNs (:func:`effx_lab.moe.layers.moe_ffn`), or ``"pr_moe"`` ones with
``residual=True``, through :meth:`~effx_lab.models.lm.LM.rebuild_sublayer`.

**Sparse upcycling** (Komatsuzaki et al., 2023): every expert starts as a copy of the
dense FFN it replaces (its LayerNorm kept too); only the router ``w_gate`` is new, drawn
small (``N(0, router_std^2)``, seeded). The upcycled model computes exactly the dense
model's function at initialisation whenever every token's gates sum to 1 and nothing is
dropped: ``renormalize=True`` (for ``k = 1`` the gate is then 1; for ``k >= 2`` the
gates sum to 1 over identical experts) and a capacity factor large enough (``C >= E /
k`` is always enough). With Switch's ``renormalize=False`` at ``k = 1`` the output of
each MoE layer starts scaled by the router's top probability (about ``1 / E``), which
training then has to undo. For ``"pr_moe"`` the dense FFN becomes the residual MLP and
the experts are copies too; the block then starts at ``MLP(x) + g * MLP(x)``.

Training continues with :func:`effx_lab.models.training.train` and
:func:`effx_lab.moe.layers.moe_loss`; build a new optimizer (the verb makes new
``nn.Parameter`` objects).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from effx_lab._validate import check_instance, describe
from effx_lab.models import lm

from . import layers  # noqa: F401  (registers the FFNs "moe" and "pr_moe")
from .configs import MoEConfig

__all__ = ["moefy_", "upcycled_params"]

_DENSE_KEYS = ("ln2_g", "ln2_b", "w1", "b1", "w2", "b2")


def upcycled_params(
    dense: dict[str, torch.Tensor],
    n_experts: int,
    w_gate: torch.Tensor,
    *,
    residual: bool = False,
) -> dict[str, torch.Tensor]:
    """The parameters of an MoE FFN whose ``n_experts`` experts are copies of the dense
    FFN ``dense`` (keys ``ln2_g, ln2_b, w1 (d, f), b1, w2 (f, d), b2``): ``w1 (E, d,
    f)`` etc., the router ``w_gate`` (``(d, E)``; a task table ``(n_tasks, E)`` is
    accepted too), and with ``residual`` the dense FFN again
    as PR-MoE's ``mlp_*``. New tensors (detached copies)."""
    missing = [k for k in _DENSE_KEYS if k not in dense]
    if missing:
        raise ValueError(
            f"dense must hold a dense FFN's {_DENSE_KEYS}; missing {missing}"
        )
    d, f = dense["w1"].shape
    if w_gate.ndim != 2 or w_gate.shape[1] != n_experts:
        raise ValueError(
            f"w_gate must have shape (d, n_experts) = {(d, n_experts)} (or (n_tasks, "
            f"n_experts) for a task table), got {tuple(w_gate.shape)}"
        )
    out = {"ln2_g": dense["ln2_g"].detach().clone(),
           "ln2_b": dense["ln2_b"].detach().clone()}  # fmt: skip
    for key in ("w1", "b1", "w2", "b2"):
        v = dense[key].detach()
        out[key] = v.unsqueeze(0).expand(n_experts, *v.shape).clone()
        if residual:
            out[f"mlp_{key}"] = v.clone()
    out["w_gate"] = w_gate.detach().to(dense["w1"].dtype).clone()
    return out


def _check_model(model: Any) -> lm.LM:
    return check_instance("model", model, lm.LM, "an effx_lab.models.lm.LM")


def _check_config(config: Any) -> MoEConfig:
    if not isinstance(config, MoEConfig):
        raise TypeError(
            "config must be an effx_lab.moe.configs.MoEConfig, e.g. "
            f"MoEConfig(n_experts=8), got {describe(config)}"
        )
    return config


def moefy_(model: lm.LM, config: MoEConfig) -> lm.LM:
    """Turn the dense FFNs of ``model``'s chosen layers into mixtures of experts **in
    place** (sparse upcycling; see the module docstring), and return it.

    ``config.layers(n_layers)`` picks the layers; each must have a ``"gelu"`` FFN
    (``ValueError`` otherwise, e.g. on a model already upcycled), and at least one layer
    must be chosen. The MoE layers keep the dense FFN's width, LayerNorm, dtype and
    device. Everything is checked and computed before the model is touched; should a
    rebuild still fail, the layers already changed are put back (same values, kinds and
    options), so on any error the model computes what it computed before.
    """
    model = _check_model(model)
    config = _check_config(config)
    n_layers = len(model.layers)
    chosen = config.layers(n_layers)
    if not chosen:
        raise ValueError(
            f"config chooses no layer of this {n_layers}-layer model (first="
            f"{config.first}, every={config.every}); lower first"
        )
    experts = config.experts_of(n_layers)
    if model.spec.ffn is None:
        raise ValueError("model has no FFN sublayers (ffn=None) to turn into experts")
    for i in chosen:
        kind = model.sublayer_kind(i, "ffn")
        if kind != "gelu":
            raise ValueError(
                f"layer {i}'s FFN must be the dense 'gelu' FFN to be upcycled, got "
                f"{kind!r}"
            )
    kind = "pr_moe" if config.residual else "moe"
    options: dict[str, Any] = {
        "capacity_factor": config.capacity_factor,
        "policy": config.policy,
        "strategy": config.strategy,
        "eval_capacity_factor": config.eval_capacity_factor,
    }
    if not config.residual:
        options.update(k=config.k, noisy=config.noisy)
    if config.n_tasks is not None:
        options["n_tasks"] = config.n_tasks
    if config.renormalize is not None:
        options["renormalize"] = config.renormalize
    # 1. the new parameters, computed aside
    plans = []
    for i, n_experts in zip(chosen, experts):
        layer = model.layers[i]
        dense = {k: layer[k] for k in _DENSE_KEYS}
        rng = np.random.default_rng([config.seed, i])
        d = dense["w1"].shape[0]
        rows = d if config.n_tasks is None else config.n_tasks
        gate = rng.normal(0.0, config.router_std, (rows, n_experts))
        w_gate = torch.from_numpy(gate).to(device=dense["w1"].device)
        params = upcycled_params(dense, n_experts, w_gate, residual=config.residual)
        if config.n_tasks is not None:
            params["w_task"] = params.pop("w_gate")
        if config.noisy and not config.residual:
            params["w_noise"] = torch.zeros_like(params["w_gate"])
        opts = {**options, "n_experts": n_experts, "d_ff": int(dense["w1"].shape[1])}
        old_options = model.sublayer_options(i, "ffn")
        plans.append((i, params, opts, dense, old_options))
    # 2. touch the model, undoing what was done if a rebuild fails
    done = []
    try:
        for i, params, opts, dense, old_options in plans:
            model.rebuild_sublayer(i, "ffn", params, kind=kind, **opts)
            done.append((i, dense, old_options))
    except Exception:
        for i, dense, old_options in reversed(done):
            model.rebuild_sublayer(i, "ffn", dense, kind="gelu", **old_options)
        raise
    return model
