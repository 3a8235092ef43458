"""Mixture-of-experts feed-forward blocks for the shared language model (05.1-05.3).

Importing this module registers two FFNs with :mod:`effx_lab.models.lm`:

* ``"moe"`` (:func:`moe_ffn`): ``x + MoE(LN(x))``, a router ``w_gate (d, E)`` and
  ``E`` GELU experts stacked in the LM's layout (``w1 (E, d, f)``, ``b1 (E, f)``, ``w2
  (E, f, d)``, ``b2 (E, d)``). Options: ``n_experts``, ``k``, ``capacity_factor``,
  ``policy`` (``"vanilla"``, ``"bpr_max"``, ``"bpr_sum"``), ``d_ff``, ``strategy``
  (``"loop"``, ``"einsum"``, ``"grouped"``), ``renormalize``, ``noisy``,
  ``eval_capacity_factor``, ``n_tasks``. So ``LM(LMSpec(ffn="moe",
  ffn_options={"n_experts": 8}))`` trains with :func:`effx_lab.models.training.train`
  and :func:`moe_loss`.
* ``"pr_moe"`` (:func:`pr_moe_ffn`): DeepSpeed-MoE's PR-MoE block (Rajbhandari et al.
  2022), ``x + MLP(LN(x)) + g * expert(LN(x))``: a dense residual MLP every token runs
  (``mlp_w1 (d, f)``, ``mlp_b1``, ``mlp_w2 (f, d)``, ``mlp_b2``) plus one routed expert
  (top-1) whose gate ``g`` corrects it.

What a forward pass of an MoE block does (all of it in
:mod:`effx_lab.moe.torch_ops`, nothing re-implemented here):

1. **Tokens flattened per call.** ``x (B, n, d)`` becomes ``T = B n`` tokens; the
   expert capacity ``ceil(k T / E * C)`` is computed for that call's tokens. Switch
   computes it per device batch; a call is this course's "device batch", and the
   chapter's capacity claims assume exactly this.
2. **The router runs in float32 at least** (``float64`` stays ``float64``): Switch's
   selective precision, the softmax of a bfloat16 router being unstable.
3. **Routing** by :func:`~effx_lab.moe.torch_ops.route` with the layer's ``k``,
   ``capacity_factor`` and ``policy``. ``renormalize=None`` means: ``False`` for
   ``k = 1`` (Switch keeps the top-1 probability as the gate, which is how the router
   learns), ``True`` for ``k >= 2`` (GLaM divides the top-2 gates by their sum).
   ``noisy=True`` adds Shazeer et al.'s learned noise ``N(0, 1) softplus(x W_noise)``
   (parameter ``w_noise (d, E)``) while autograd records, from a generator seeded with
   the layer's seed; the gates are then the softmax over the kept noisy logits
   (Shazeer's rule, so ``renormalize`` is ``True`` for noisy layers). Under
   ``torch.no_grad()`` (evaluation) there is no noise, and ``eval_capacity_factor``
   (if given) replaces ``capacity_factor``.
   **Task-level routing** (``n_tasks=S``; Kudugunta et al., 2021): the router is a
   table of logits per task, ``w_task (S, E)``, instead of ``w_gate``; every token of
   a sequence takes its task's logits (the ids given by the context manager
   :func:`tasks`), so all tokens of a task go to the same ``k`` experts and the
   auxiliary losses balance tasks over experts. Capacity still applies: a task's
   tokens all queue at the same experts, so give such layers ``capacity_factor >= E /
   k`` to drop nothing. :func:`task_tables` reads the static choice a server would
   deploy (:func:`effx_lab.moe.reference.task_expert_bytes` counts what it loads).
4. **The experts** run by :func:`~effx_lab.moe.torch_ops.moe_forward` with the layer's
   ``strategy``; a dropped (token, choice) adds nothing, so a token whose every choice
   overflowed leaves the layer unchanged (the residual).

A sublayer function cannot see the model, so the auxiliary losses of a forward pass are
collected while it runs: :func:`moe_loss` wraps the forward pass of each training step
in a collector and adds, over the MoE layers, the Switch load-balancing loss (and, for
noisy layers, Shazeer's importance and load losses) and the router z-loss;
:func:`router_records` collects the router logits and the routing of one batch.
:func:`set_routing` gives every MoE layer a new capacity factor or policy, keeping its
weights (:meth:`effx_lab.models.lm.LM.rebuild_sublayer`).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from effx_lab._validate import (
    check_alloc,
    check_bool,
    check_choice,
    check_float,
    check_instance,
    check_int,
    describe,
)
from effx_lab.attention.shapes import tensor_params
from effx_lab.models import lm
from effx_lab.models.training import next_token_loss

from . import reference as R
from . import torch_ops as T
from ._format import Routing
from .shapes import EXPERT_PARAM_NAMES as EXPERT_KEYS
from ._np_variants import MLP_KEYS

__all__ = [
    "MOE_KEYS",
    "PR_MOE_KEYS",
    "init_moe_params",
    "init_pr_moe_params",
    "moe_ffn",
    "tasks",
    "task_tables",
    "moe_layers",
    "moe_loss",
    "pr_moe_ffn",
    "router_records",
    "set_routing",
]

_LN_EPS = 1e-5
#: The parameters of the "moe" FFN (and "w_noise" when noisy), of the "pr_moe" FFN.
MOE_KEYS = ("ln2_g", "ln2_b", "w_gate", *EXPERT_KEYS)
PR_MOE_KEYS = (*MOE_KEYS, *MLP_KEYS)


# --------------------------------------------------------------------------------------
# the collector: what the MoE layers of a forward pass leave behind
# --------------------------------------------------------------------------------------
_COLLECTORS: list[list[dict[str, Any]]] = []


@contextlib.contextmanager
def _collect() -> Iterator[list[dict[str, Any]]]:
    """Every MoE layer that runs inside the block appends one record (its router
    logits, routing and auxiliary losses) to the list it yields, in layer order."""
    records: list[dict[str, Any]] = []
    _COLLECTORS.append(records)
    try:
        yield records
    finally:
        _COLLECTORS.remove(records)


def _record(**fields: Any) -> None:
    if _COLLECTORS:
        _COLLECTORS[-1].append(fields)


_TASKS: list[Any] = []


@contextlib.contextmanager
def tasks(task_ids: Any) -> Iterator[None]:
    """The task of each sequence of the forward passes run inside the block, for the
    task-routed MoE layers (``n_tasks`` set): ``task_ids`` ``(B,)`` (one task per
    sequence) or ``(B, n)`` (per token) ints, torch or NumPy::

        with tasks(ids):
            loss = loss_fn(model, x, y)
    """
    if isinstance(task_ids, np.ndarray):
        if task_ids.dtype.kind not in "iu":
            raise TypeError(f"task_ids must hold ints, got {describe(task_ids)}")
        task_ids = torch.from_numpy(task_ids.astype(np.int64))
    if (
        not isinstance(task_ids, torch.Tensor)
        or task_ids.dtype != torch.int64
        or task_ids.ndim not in (1, 2)
    ):
        raise TypeError(
            "task_ids must be a (batch,) or (batch, n) int64 tensor or NumPy int "
            f"array, got {describe(task_ids)}"
        )
    _TASKS.append(task_ids)
    try:
        yield
    finally:
        _TASKS.pop()


def _token_tasks(x: torch.Tensor, n_tasks: int) -> torch.Tensor:
    """The task of each of the ``B n`` tokens of ``x (B, n, d)``, from :func:`tasks`."""
    if not _TASKS:
        raise ValueError(
            "a task-routed MoE layer (n_tasks set) needs the tasks of its tokens: run "
            "the model inside `with effx_lab.moe.layers.tasks(task_ids):`"
        )
    ids = _TASKS[-1]
    if x.ndim != 3 or ids.shape not in ((x.shape[0],), tuple(x.shape[:2])):
        raise ValueError(
            f"task_ids must have shape (batch,) = ({x.shape[0]},) or (batch, n) = "
            f"{tuple(x.shape[:2])} for the batch of shape {tuple(x.shape)}, got "
            f"{tuple(ids.shape)}"
        )
    lo, hi = int(ids.min()), int(ids.max())
    if lo < 0 or hi >= n_tasks:
        raise ValueError(
            f"task_ids must lie in [0, {n_tasks - 1}] (n_tasks = {n_tasks}), got "
            f"values in [{lo}, {hi}]"
        )
    if ids.ndim == 1:
        ids = ids[:, None].expand(-1, x.shape[1])
    return ids.reshape(-1).to(x.device)


# --------------------------------------------------------------------------------------
# parameters
# --------------------------------------------------------------------------------------
def _check_dims(d_model: Any, n_experts: Any, d_ff: Any) -> tuple[int, int, int]:
    d_model = check_int("d_model", d_model, min_value=1)
    n_experts = check_int("n_experts", n_experts, min_value=1)
    d_ff = 4 * d_model if d_ff is None else check_int("d_ff", d_ff, min_value=1)
    return d_model, n_experts, d_ff


def init_moe_params(
    d_model: int,
    n_experts: int,
    d_ff: int | None = None,
    *,
    seed: int = 0,
    noisy: bool = False,
    n_tasks: int | None = None,
) -> dict[str, np.ndarray]:
    """float32 parameters of the ``"moe"`` FFN: LayerNorm ``ln2_g = 1``, ``ln2_b = 0``;
    ``E`` experts of width ``d_ff`` (default ``4 d_model``) drawn as the LM's dense
    ``"gelu"`` FFN draws its one (``w1``, ``w2`` ``~ N(0, 0.02)``, zero biases, rather
    than :func:`effx_lab.moe.reference.init_experts`'s ``N(0, 1 / fan_in)``), so that an
    MoE layer starts at the scale of the dense layer it is compared with; router
    ``w_gate (d, E) ~ N(0, 0.02)`` (near-uniform routing at first); with ``noisy``,
    ``w_noise (d, E) = 0`` (Shazeer et al.'s initialisation: noise of scale
    ``softplus(0) = 0.69`` at first). With ``n_tasks``, the router is a table of
    logits per task, ``w_task (n_tasks, E) ~ N(0, 0.02)``, instead of ``w_gate``."""
    d_model, n_experts, d_ff = _check_dims(d_model, n_experts, d_ff)
    seed = check_int("seed", seed, min_value=0)
    noisy = check_bool("noisy", noisy)
    check_alloc(
        f"init_moe_params(d_model={d_model}, n_experts={n_experts}, d_ff={d_ff})",
        4 * n_experts * (2 * d_model * d_ff + d_ff + 3 * d_model),
    )
    rng = np.random.default_rng(seed)
    f32 = np.float32
    params = {
        "w1": rng.normal(0.0, 0.02, (n_experts, d_model, d_ff)).astype(f32),
        "b1": np.zeros((n_experts, d_ff), f32),
        "w2": rng.normal(0.0, 0.02, (n_experts, d_ff, d_model)).astype(f32),
        "b2": np.zeros((n_experts, d_model), f32),
        "w_gate": rng.normal(0.0, 0.02, (d_model, n_experts)).astype(f32),
    }
    if n_tasks is not None:
        n_tasks = check_int("n_tasks", n_tasks, min_value=1)
        if noisy:
            raise ValueError("noisy must be False for a task-routed layer (n_tasks)")
        del params["w_gate"]
        params["w_task"] = rng.normal(0.0, 0.02, (n_tasks, n_experts)).astype(f32)
    if noisy:
        params["w_noise"] = np.zeros((d_model, n_experts), f32)
    params["ln2_g"] = np.ones(d_model, f32)
    params["ln2_b"] = np.zeros(d_model, f32)
    return params


def init_pr_moe_params(
    d_model: int,
    n_experts: int,
    d_ff: int | None = None,
    *,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """float32 parameters of the ``"pr_moe"`` FFN: those of :func:`init_moe_params`
    plus the dense residual MLP ``mlp_w1 (d, f)``, ``mlp_w2 (f, d)`` drawn ``N(0,
    0.02)`` (the LM's FFN initialisation) with zero biases."""
    params = init_moe_params(d_model, n_experts, d_ff, seed=seed)
    d_model, f = params["w1"].shape[1:]
    rng = np.random.default_rng([seed, 2])
    params["mlp_w1"] = rng.normal(0.0, 0.02, (d_model, f)).astype(np.float32)
    params["mlp_b1"] = np.zeros(f, np.float32)
    params["mlp_w2"] = rng.normal(0.0, 0.02, (f, d_model)).astype(np.float32)
    params["mlp_b2"] = np.zeros(d_model, np.float32)
    return params


# --------------------------------------------------------------------------------------
# the forward pass of a block
# --------------------------------------------------------------------------------------
def _route(
    h: torch.Tensor,
    p: Mapping[str, torch.Tensor],
    *,
    k: int,
    capacity_factor: float,
    eval_capacity_factor: float | None,
    policy: str,
    renormalize: bool,
    noisy: bool,
    generator: torch.Generator,
    token_tasks: torch.Tensor | None = None,
) -> tuple[Any, dict[str, torch.Tensor]]:
    """Route the flat tokens ``h (T, d)``: the Routing and the auxiliary losses, with
    the router in float32 at least; records them when a collector listens.
    ``token_tasks (T,)``: task-level routing by ``w_task``."""
    dtype = torch.promote_types(h.dtype, torch.float32)
    hr = h.to(dtype)
    training = torch.is_grad_enabled()
    c = capacity_factor
    if not training and eval_capacity_factor is not None:
        c = eval_capacity_factor
    losses: dict[str, torch.Tensor] = {}
    router = p["w_gate"] if token_tasks is None else p["w_task"]
    if token_tasks is not None:
        logits = clean = router.to(dtype).index_select(0, token_tasks)
    elif noisy and training:
        w_gate = router.to(dtype)
        noise = torch.randn(
            (h.shape[0], w_gate.shape[1]), generator=generator, dtype=torch.float32
        ).to(device=h.device, dtype=dtype)
        out = T.noisy_topk_gating(hr, w_gate, p["w_noise"].to(dtype), k, noise)
        logits = out["noisy"]
        losses["importance"] = T.importance_loss(out["gates"])
        losses["load"] = T.load_loss(out["clean"], out["noisy"], out["std"], k)
        clean = out["clean"]
    else:
        logits = clean = T.router_logits(hr, router.to(dtype))
    routing = T.route(
        logits, k=k, capacity_factor=c, policy=policy, renormalize=renormalize
    )
    losses["aux"] = T.switch_aux_loss(routing.probs, routing.experts)
    losses["z"] = T.z_loss(clean)
    _record(router=router, logits=clean, routing=routing, **losses)
    return routing, losses


def _experts(p: Mapping[str, torch.Tensor], like: torch.Tensor) -> dict[str, Any]:
    return tensor_params(p, EXPERT_KEYS, like)


def _moe_apply(
    x: torch.Tensor,
    p: Mapping[str, torch.Tensor],
    *,
    strategy: str,
    n_tasks: int | None = None,
    **routing: Any,
) -> torch.Tensor:
    t = tensor_params(p, ("ln2_g", "ln2_b"), x)
    h = F.layer_norm(x, (x.shape[-1],), t["ln2_g"], t["ln2_b"], eps=_LN_EPS)
    flat = h.reshape(-1, h.shape[-1])
    if n_tasks is not None:
        routing["token_tasks"] = _token_tasks(x, n_tasks)
    r, _ = _route(flat, p, **routing)
    y = T.moe_forward(flat, r, _experts(p, x), strategy=strategy)
    return x + y.to(x.dtype).reshape(x.shape)


def _pr_moe_apply(
    x: torch.Tensor, p: Mapping[str, torch.Tensor], *, strategy: str, **routing: Any
) -> torch.Tensor:
    t = tensor_params(p, ("ln2_g", "ln2_b"), x)
    h = F.layer_norm(x, (x.shape[-1],), t["ln2_g"], t["ln2_b"], eps=_LN_EPS)
    flat = h.reshape(-1, h.shape[-1])
    r, _ = _route(flat, p, **routing)
    keys = (*MLP_KEYS, *EXPERT_KEYS)
    y = T.pr_moe(flat, tensor_params(p, keys, x), r, strategy=strategy)
    return x + y.to(x.dtype).reshape(x.shape)


def _check_routing_options(
    n_experts: int,
    k: Any,
    capacity_factor: Any,
    policy: Any,
    strategy: Any,
    renormalize: Any,
    eval_capacity_factor: Any,
) -> dict[str, Any]:
    k = check_int("k", k, min_value=1, max_value=n_experts)
    c = check_float("capacity_factor", capacity_factor, min_value=0.0,
                    min_inclusive=False)  # fmt: skip
    if eval_capacity_factor is not None:
        eval_capacity_factor = check_float(
            "eval_capacity_factor", eval_capacity_factor, min_value=0.0,
            min_inclusive=False,
        )  # fmt: skip
    renormalize = k >= 2 if renormalize is None else check_bool(
        "renormalize", renormalize
    )
    return {
        "k": k,
        "capacity_factor": c,
        "eval_capacity_factor": eval_capacity_factor,
        "policy": check_choice("policy", policy, T.POLICIES),
        "strategy": check_choice("strategy", strategy, T.STRATEGIES),
        "renormalize": renormalize,
    }


def moe_ffn(
    d_model: int,
    *,
    seed: int,
    causal: bool,
    n_experts: int = 4,
    k: int = 1,
    capacity_factor: float = 1.25,
    policy: str = "vanilla",
    d_ff: int | None = None,
    strategy: str = "grouped",
    renormalize: bool | None = None,
    noisy: bool = False,
    eval_capacity_factor: float | None = None,
    n_tasks: int | None = None,
) -> lm.Sublayer:
    """The LM's FFN ``"moe"``: ``x + MoE(LN(x))`` with ``n_experts`` GELU experts of
    width ``d_ff`` (default ``4 d_model``, the dense FFN's, so that an expert can start
    as a copy of it), top-``k`` routing at ``capacity_factor`` by ``policy``, run by
    ``strategy`` (see the module docstring for the rules, the float32 router, the
    noise and ``renormalize=None``; ``n_tasks``: task-level routing, run inside
    :func:`tasks`). Parameters of :func:`init_moe_params` for the layer's ``seed``."""
    check_bool("causal", causal)
    d_model, n_experts, d_ff = _check_dims(d_model, n_experts, d_ff)
    seed = check_int("seed", seed, min_value=0)
    noisy = check_bool("noisy", noisy)
    opts = _check_routing_options(
        n_experts, k, capacity_factor, policy, strategy, renormalize,
        eval_capacity_factor,
    )  # fmt: skip
    if noisy:
        opts["renormalize"] = True  # softmax over the kept noisy logits (Shazeer)
    params = init_moe_params(
        d_model, n_experts, d_ff, seed=seed, noisy=noisy, n_tasks=n_tasks
    )
    if n_tasks is not None:
        opts["n_tasks"] = int(params["w_task"].shape[0])
    apply = functools.partial(
        _moe_apply, noisy=noisy, generator=torch.Generator().manual_seed(seed), **opts
    )
    return lm.Sublayer(params, apply)


def pr_moe_ffn(
    d_model: int,
    *,
    seed: int,
    causal: bool,
    n_experts: int = 4,
    capacity_factor: float = 1.25,
    policy: str = "vanilla",
    d_ff: int | None = None,
    strategy: str = "grouped",
    renormalize: bool = False,
    eval_capacity_factor: float | None = None,
) -> lm.Sublayer:
    """The LM's FFN ``"pr_moe"``: ``x + MLP(LN(x)) + g * expert(LN(x))``, PR-MoE's
    residual design (Rajbhandari et al. 2022): the dense MLP every token runs, plus
    one expert chosen top-1 among ``n_experts`` (width ``d_ff``, default ``4
    d_model``, for the MLP and the experts alike) whose gate ``g`` (the router's
    top-1 probability; ``renormalize=True``: 1) weighs the correction. A token whose
    expert overflowed still gets the MLP. Parameters of :func:`init_pr_moe_params`."""
    check_bool("causal", causal)
    d_model, n_experts, d_ff = _check_dims(d_model, n_experts, d_ff)
    seed = check_int("seed", seed, min_value=0)
    opts = _check_routing_options(
        n_experts, 1, capacity_factor, policy, strategy, renormalize,
        eval_capacity_factor,
    )  # fmt: skip
    params = init_pr_moe_params(d_model, n_experts, d_ff, seed=seed)
    apply = functools.partial(
        _pr_moe_apply,
        noisy=False,
        generator=torch.Generator().manual_seed(seed),
        **opts,
    )
    return lm.Sublayer(params, apply)


lm.register_ffn("moe", moe_ffn)
lm.register_ffn("pr_moe", pr_moe_ffn)


# --------------------------------------------------------------------------------------
# the model's MoE layers: losses, records, routing settings
# --------------------------------------------------------------------------------------
def _check_lm(model: Any) -> lm.LM:
    return check_instance("model", model, lm.LM, "an effx_lab.models.lm.LM")


def moe_layers(model: lm.LM) -> list[int]:
    """Indices of the layers of ``model`` whose FFN is an MoE block (``"moe"`` or
    ``"pr_moe"``: the layers holding a router, ``w_gate`` or a task table
    ``w_task``)."""
    model = _check_lm(model)
    return [
        i
        for i, layer in enumerate(model.layers)
        if "w_gate" in layer or "w_task" in layer
    ]


def _layer_of(model: lm.LM, router: torch.Tensor) -> int:
    for i in moe_layers(model):
        layer = model.layers[i]
        if any(key in layer and layer[key] is router for key in ("w_gate", "w_task")):
            return i
    raise RuntimeError("a router ran whose weights are not the model's")  # unreachable


def moe_loss(
    aux_weight: float = 1e-2, z_weight: float = 1e-3
) -> Callable[[nn.Module, torch.Tensor, torch.Tensor], dict[str, torch.Tensor]]:
    """A ``loss_fn`` for :func:`effx_lab.models.training.train` on a model with MoE
    layers: ``loss = ce + aux_weight * aux + z_weight * z`` where ``ce`` is the
    next-token cross-entropy (:func:`~effx_lab.models.training.next_token_loss`),
    ``aux`` the sum over the MoE layers of the Switch load-balancing loss (plus
    Shazeer's importance and load losses for noisy layers), ``z`` the sum of their
    router z-losses. Switch's ``aux_weight = 1e-2``, ST-MoE's ``z_weight = 1e-3``.

    Returns ``{"loss", "ce", "aux", "z", "dropped"}`` (``dropped``: the mean over the
    MoE layers of the share of (token, choice) pairs dropped), which ``train`` records
    per step. A model without an MoE layer raises ``ValueError`` at its first step."""
    aux_weight = check_float("aux_weight", aux_weight, min_value=0.0)
    z_weight = check_float("z_weight", z_weight, min_value=0.0)

    def loss_fn(
        model: nn.Module, x: torch.Tensor, y: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        with _collect() as records:
            ce = next_token_loss(model, x, y)
        if not records:
            raise ValueError(
                "moe_loss needs a model with MoE layers (ffn 'moe' or 'pr_moe'); "
                f"none ran in {describe(model)}"
            )
        aux = sum(
            r["aux"] + r.get("importance", 0.0) + r.get("load", 0.0) for r in records
        )
        z = sum(r["z"] for r in records)
        dropped = sum(float(T.dropped_fraction(r["routing"])) for r in records)
        return {
            "loss": ce + aux_weight * aux + z_weight * z,
            "ce": ce.detach(),
            "aux": aux.detach(),
            "z": z.detach(),
            "dropped": torch.tensor(dropped / len(records), dtype=torch.float64),
        }

    loss_fn.__name__ = loss_fn.__qualname__ = "moe_loss"
    return loss_fn


def _tokens(tokens: Any, device: torch.device) -> torch.Tensor:
    if isinstance(tokens, np.ndarray):
        if tokens.dtype.kind not in "iu":
            raise TypeError(
                f"tokens must hold integer token ids, got {describe(tokens)}"
            )
        tokens = torch.from_numpy(tokens.astype(np.int64))
    if not isinstance(tokens, torch.Tensor):
        raise TypeError(
            "tokens must be a (batch, n) int64 tensor or NumPy array of token ids, "
            f"got {describe(tokens)}"
        )
    if tokens.ndim == 1:
        tokens = tokens[None]
    return tokens.to(device)


def _to_numpy(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        out = value.detach().cpu()
        return out.double().numpy() if out.is_floating_point() else out.numpy()
    return value


def router_records(model: lm.LM, tokens: Any) -> list[dict[str, Any]]:
    """The routing of one batch in every MoE layer of ``model``, in evaluation mode
    (no noise, ``eval_capacity_factor`` if set, no gradient): a list, one dict per MoE
    layer in order, with ``layer`` (its index in ``model.layers``), ``logits`` (the
    clean router logits ``(T, E)``, float64 NumPy, ``T = B n`` tokens in row-major
    order of ``tokens``) and ``routing`` (a NumPy-face
    :class:`~effx_lab.moe.reference.Routing`). ``tokens``: ``(B, n)`` or ``(n,)`` int
    token ids, torch or NumPy. The model's training mode is restored."""
    model = _check_lm(model)
    device = model.tok_emb.device
    tokens = _tokens(tokens, device)
    if not moe_layers(model):
        raise ValueError(
            f"model has no MoE layer (ffn 'moe' or 'pr_moe'): {describe(model)}"
        )
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), _collect() as records:
            model(tokens)
    finally:
        model.train(was_training)
    out = []
    for rec in records:
        r = rec["routing"]
        routing = Routing(
            experts=_to_numpy(r.experts),
            gates=_to_numpy(r.gates),
            slots=_to_numpy(r.slots),
            capacity=int(r.capacity),
            n_experts=int(r.n_experts),
            probs=_to_numpy(r.probs),
        )
        out.append(
            {
                "layer": _layer_of(model, rec["router"]),
                "logits": _to_numpy(rec["logits"]),
                "routing": routing,
            }
        )
    return out


def set_routing(
    model: lm.LM,
    *,
    capacity_factor: float | None = None,
    policy: str | None = None,
) -> lm.LM:
    """Give every MoE layer of ``model`` a new ``capacity_factor`` (for training and
    evaluation alike: a layer's ``eval_capacity_factor`` becomes ``None``) and/or
    routing ``policy``, in place, keeping its weights (a trained router evaluated with
    vanilla routing or BPR at another capacity, without retraining). Returns
    ``model``. The parameters of those layers become new ``nn.Parameter`` objects
    (:meth:`~effx_lab.models.lm.LM.rebuild_sublayer`): build a new optimizer after."""
    model = _check_lm(model)
    options: dict[str, Any] = {}
    if capacity_factor is not None:
        options["capacity_factor"] = check_float(
            "capacity_factor", capacity_factor, min_value=0.0, min_inclusive=False
        )
        options["eval_capacity_factor"] = None
    if policy is not None:
        options["policy"] = check_choice("policy", policy, T.POLICIES)
    if not options:
        raise ValueError("set_routing needs capacity_factor or policy, got neither")
    layers = moe_layers(model)
    if not layers:
        raise ValueError(
            f"model has no MoE layer (ffn 'moe' or 'pr_moe'): {describe(model)}"
        )
    for i in layers:
        extra = ("w_noise", "w_task")
        keys = [k for k in PR_MOE_KEYS + extra if k in model.layers[i]]
        params = {k: model.layers[i][k] for k in keys}
        model.rebuild_sublayer(i, "ffn", params, **options)
    return model



def task_tables(model: lm.LM) -> dict[int, np.ndarray]:
    """The static expert choice of every task-routed MoE layer of ``model`` (``n_tasks``
    set): ``{layer index: table (n_tasks, k)}``, int64 NumPy, each row the ``k``
    experts with the largest logits of ``w_task`` (best first, the lower index on a
    tie, as ``route`` chooses). What a server for one task loads:
    :func:`effx_lab.moe.reference.task_expert_bytes` of a row."""
    model = _check_lm(model)
    out = {}
    for i in moe_layers(model):
        layer = model.layers[i]
        if "w_task" not in layer:
            continue
        k = model.sublayer_options(i, "ffn").get("k", 1)
        logits = layer["w_task"].detach().cpu().double().numpy()
        _, experts = R.topk_gating(logits, k)
        out[i] = experts
    return out
