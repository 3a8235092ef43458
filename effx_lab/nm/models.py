"""N:M sparsity on whole models: the verb :func:`sparsify_`, the masks it leaves, and
:func:`sparsify_minilm` for the real MiniLM's parameter dict.

``sparsify_(model, config)`` edits ``model`` in place and returns it (the style of
``quantize_`` and ``prune_``), for the course's two language models:

* :class:`effx_lab.models.lm.LM`: the 2-D weights of each layer (``wq``, ``wk``,
  ``wv``, ``wo``, ``w1``, ``w2``) are stored ``(in, out)``, so the N:M groups run along
  **axis 0** of the stored weight (its transpose, the ``nn.Linear`` layout, is N:M along
  its last axis);
* TinyLM (and any module with ``nn.Linear`` layers): the weight of every ``nn.Linear``,
  ``(out, in)``, grouped along the last axis.

Each selected weight gets a bool mask (:func:`effx_lab.sparse.masks.apply_masks`) that
keeps its pruned entries at exactly zero through AdamW: a gradient hook feeds the
optimizer zeros, and the masks (:func:`mask_set`, a
:class:`~effx_lab.sparse.masks.MaskSet`) are an ``after_step`` hook of
:func:`effx_lab.models.training.train`. The LM's weights live in ``nn.ParameterDict``s,
whose ``forward`` never runs, so the verb also puts a forward pre-hook on the model
itself that re-applies the masks (and re-arms their gradient hooks, which
``copy.deepcopy`` does not copy) before every forward pass.

**Permutation** (``config.permute=True``). Only channels the model can absorb for free
are permuted: the hidden units of each FFN (LM: the columns of ``w1``, the entries of
``b1`` and the rows of ``w2``; TinyLM: the rows of ``mlp.fc1``'s weight and bias and the
columns of ``mlp.fc2``'s weight). Their order is chosen to maximise the magnitude the
N:M mask of the FFN's second weight keeps (its input dimension is ``d_ff``), by
:func:`effx_lab.nm.torch_ops.search_permutation`; the model's output is unchanged
before the mask. What cannot be permuted for free: the **residual stream** ``d_model``,
the input dimension of ``w1``, ``wq``, ``wk``, ``wv`` (every layer, the embeddings, the
LayerNorms and the head read it in one order; permuting it means permuting all of them
together, which the course does not do); and the input of ``wo`` (the heads' value
features: possible per head, together with the columns of ``wv``, not done here).
"""

from __future__ import annotations

import re
import time
from typing import Any

import numpy as np
import torch
from torch import nn

from effx_lab._validate import describe
from effx_lab.models import lm as lm_mod
from effx_lab.sparse import masks as SM
from effx_lab.sparse import torch_ops as ST

from . import torch_ops as T
from .configs import NMConfig

__all__ = [
    "nm_weights",
    "mask_set",
    "sparsify_",
    "sparsify_minilm",
    "ffn_permutation",
]


def _check_model(model: Any) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise TypeError(
            "model must be a torch.nn.Module (an effx_lab.models.lm.LM or a TinyLM), "
            f"got {describe(model)}"
        )
    return model


def _check_config(config: Any) -> NMConfig:
    if not isinstance(config, NMConfig):
        raise TypeError(
            "config must be an effx_lab.nm.configs.NMConfig, e.g. NMConfig(n=2, m=4), "
            f"got {describe(config)}"
        )
    return config


def nm_weights(model: nn.Module) -> dict[str, tuple[nn.Parameter, int]]:
    """The weights N:M sparsity acts on, by ``named_parameters`` name, with the axis of
    the stored weight that the groups of ``m`` run along (the input dimension).

    LM: ``layers.i.<key>`` for each 2-D parameter whose key starts with ``w``, axis 0
    (stored ``(in, out)``); any other module: the weight of every ``nn.Linear``
    (:func:`effx_lab.sparse.masks.linear_weights`), axis 1. Never the embeddings, norms
    or biases.
    """
    model = _check_model(model)
    if isinstance(model, lm_mod.LM):
        return {
            f"layers.{i}.{key}": (p, 0)
            for i, layer in enumerate(model.layers)
            for key, p in layer.items()
            if key.startswith("w") and p.ndim == 2
        }
    return {name: (p, 1) for name, p in SM.linear_weights(model).items()}


def mask_set(model: nn.Module) -> SM.MaskSet:
    """The masks in force on ``model`` by parameter name, as one
    :class:`~effx_lab.sparse.masks.MaskSet` (an ``after_step`` hook of
    :func:`effx_lab.models.training.train`; ``remove()`` bakes the zeros in). Looked up
    each time, so the masks of a ``copy.deepcopy`` are the copy's own."""
    return SM.model_masks(_check_model(model))


def _select(weights: dict[str, Any], include: Any) -> dict[str, Any]:
    return SM.select_weights(
        weights, include, "a weight N:M applies to", "nm_weights(model)"
    )


# --------------------------------------------------------------------------------------
# the FFNs whose hidden units can be permuted
# --------------------------------------------------------------------------------------
def _ffns(model: nn.Module) -> list[dict[str, Any]]:
    """Each permutable FFN: the names of its second weight (whose input is ``d_ff``)
    and of the parameters to permute, with the axis each one's ``d_ff`` runs along."""
    out = []
    if isinstance(model, lm_mod.LM):
        for i, layer in enumerate(model.layers):
            if all(k in layer for k in ("w1", "b1", "w2")):
                out.append(
                    {
                        "second": f"layers.{i}.w2",
                        "params": {
                            f"layers.{i}.w1": (layer["w1"], 1),
                            f"layers.{i}.b1": (layer["b1"], 0),
                            f"layers.{i}.w2": (layer["w2"], 0),
                        },
                    }
                )
        return out
    for name, module in model.named_modules():
        fc1, fc2 = getattr(module, "fc1", None), getattr(module, "fc2", None)
        if isinstance(fc1, nn.Linear) and isinstance(fc2, nn.Linear):
            params = {f"{name}.fc1.weight": (fc1.weight, 0)}
            if fc1.bias is not None:
                params[f"{name}.fc1.bias"] = (fc1.bias, 0)
            params[f"{name}.fc2.weight"] = (fc2.weight, 1)
            out.append({"second": f"{name}.fc2.weight", "params": params})
    return out


def ffn_permutation(
    w2_linear: torch.Tensor, config: NMConfig
) -> tuple[torch.Tensor, float, float]:
    """The order of an FFN's hidden units for ``config``: ``w2_linear`` is its second
    weight in the ``nn.Linear`` layout ``(d_model, d_ff)``. Returns ``(perm,
    retained_identity, retained_permuted)``."""
    config = _check_config(config)
    w = w2_linear.detach()
    res = T.search_permutation(w, config.n, config.m, max_iters=config.search_iters)
    return res.perm, res.history[0], res.retained


# --------------------------------------------------------------------------------------
# the verb
# --------------------------------------------------------------------------------------
def sparsify_(model: nn.Module, config: NMConfig) -> nn.Module:
    """Make ``model``'s linear weights N:M sparse **in place**, and return it.

    ``model``: an :class:`effx_lab.models.lm.LM` or a TinyLM (any module with
    ``nn.Linear`` layers); ``config``: an :class:`~effx_lab.nm.configs.NMConfig`. See
    the module docstring for the layouts, the masks and what ``permute=True`` permutes.
    Every selected weight's input dimension must be a multiple of ``m``. Sparsifying a
    masked model again updates its masks (the zeros count as small magnitudes).
    Everything is computed before the model is touched: bad input (a config of another
    type, ``include`` naming no weight, a width not divisible by ``m``, ``permute=True``
    on a model whose FFN weights already carry masks) raises ``TypeError`` /
    ``ValueError`` and leaves the model unchanged.
    """
    model = _check_model(model)
    config = _check_config(config)
    weights = _select(nm_weights(model), config.include)
    if not weights:
        raise ValueError(
            f"model has no weight to sparsify (2-D weights of linear layers), got "
            f"{describe(model)}"
        )
    for name, (p, axis) in weights.items():
        if p.shape[axis] % config.m:
            raise ValueError(
                f"m must divide the input dimension of {name} ({p.shape[axis]}, axis "
                f"{axis} of its stored shape {tuple(p.shape)}), got m={config.m}"
            )
    existing = mask_set(model)
    # 1. the permutations (new values, computed aside)
    new_values: dict[str, torch.Tensor] = {}
    if config.permute:
        for ffn in _ffns(model):
            if ffn["second"] not in weights:
                continue
            masked = [k for k in ffn["params"] if k in existing]
            if masked:
                raise ValueError(
                    f"permute=True would reorder {masked[0]}, which already carries a "
                    "mask; sparsify a model without masks, or use permute=False"
                )
            w2, axis = ffn["params"][ffn["second"]]
            w2_linear = w2.detach() if axis == 1 else w2.detach().T
            perm, _, _ = ffn_permutation(w2_linear, config)
            for key, (p, ax) in ffn["params"].items():
                new_values[key] = p.detach().index_select(ax, perm.to(p.device))
    # 2. the masks, from the (permuted) weights
    masks = {}
    for name, (p, axis) in weights.items():
        w = new_values.get(name, p.detach())
        masks[name] = ST.nm_mask(w, config.n, config.m, axis=axis)
    # 3. touch the model
    params = dict(model.named_parameters())
    with torch.no_grad():
        for key, value in new_values.items():
            params[key].copy_(value)
    fresh = {k: v for k, v in masks.items() if k not in existing}
    SM.apply_masks(model, fresh)
    for key, mask in masks.items():
        if key in existing:
            existing[key].update(mask)
    SM.guard_masks(model)
    return model


# --------------------------------------------------------------------------------------
# MiniLM (a parameter dict)
# --------------------------------------------------------------------------------------
_MINILM = re.compile(
    r"^encoder\.layer\.(\d+)\.(attention\.self\.(query|key|value)|"
    r"attention\.output\.dense|intermediate\.dense|output\.dense)\.weight$"
)


def sparsify_minilm(
    params: dict[str, np.ndarray], config: NMConfig
) -> tuple[dict[str, np.ndarray], list[dict[str, Any]]]:
    """MiniLM's parameters (from :func:`effx_lab.models.load_minilm`, linear weights
    ``[out, in]``) made N:M sparse as ``config`` says: a new dict (``params`` is not
    modified; arrays that do not change are shared) and a report.

    The six linear weights of each layer (``include`` selects names or prefixes such as
    ``"encoder.layer.0"``) get the N:M mask along their input dimension. With
    ``permute=True`` each layer's FFN hidden units are reordered first (rows of
    ``intermediate.dense`` weight and bias, columns of ``output.dense.weight``) to
    maximise what the mask of ``output.dense.weight`` keeps; the encoder computes the
    same function before the mask. The report has one dict per sparsified weight:
    ``name``, ``shape``, ``retained_identity`` (the retained magnitude without
    permutation), ``retained`` (with the permutation used, the same value without one)
    and ``search_s`` (seconds of the search, 0.0 without one).
    """
    config = _check_config(config)
    if not isinstance(params, dict):
        raise TypeError(
            f"params must be a dict (from load_minilm()), got {describe(params)}"
        )
    names = [k for k in params if _MINILM.match(k)]
    if not names:
        raise ValueError(
            "params must hold MiniLM's linear weights (e.g. "
            "'encoder.layer.0.output.dense.weight'), found none"
        )
    for key in names:
        value = params[key]
        ok = isinstance(value, np.ndarray) and value.dtype.kind == "f"
        if not ok or value.ndim != 2:
            raise TypeError(
                f"params[{key!r}] must be a 2-D float NumPy array (as load_minilm "
                f"returns), got {describe(value)}"
            )
    chosen = _select({k[: -len(".weight")]: k for k in names}, config.include)
    weights = list(chosen.values())
    for key in weights:
        if params[key].shape[1] % config.m:
            raise ValueError(
                f"m must divide the input dimension of {key} ({params[key].shape[1]}), "
                f"got m={config.m}"
            )
    out = dict(params)
    searched: dict[str, tuple[float, float, float]] = {}
    if config.permute:  # first reorder the FFNs, then mask what they hold
        for key in weights:
            if not key.endswith(".output.dense.weight"):
                continue
            pre = key[: -len("output.dense.weight")]
            w1_key = pre + "intermediate.dense.weight"
            b1_key = pre + "intermediate.dense.bias"
            if w1_key not in params or b1_key not in params:
                continue
            start = time.perf_counter()
            perm, before, after = ffn_permutation(torch.from_numpy(params[key]), config)
            searched[key] = (before, after, time.perf_counter() - start)
            p = perm.numpy()
            out[w1_key] = params[w1_key][p].copy()
            out[b1_key] = params[b1_key][p].copy()
            out[key] = params[key][:, p].copy()
    report = []
    for key in weights:
        w = out[key]
        wt = torch.from_numpy(np.ascontiguousarray(w))
        if key in searched:
            before, after, seconds = searched[key]
        else:
            before = after = T.retained_magnitude(wt, config.n, config.m)
            seconds = 0.0
        keep = ST.nm_mask(wt, config.n, config.m).numpy()
        out[key] = np.where(keep, w, np.zeros((), dtype=w.dtype))
        report.append(
            {
                "name": key,
                "shape": tuple(w.shape),
                "retained_identity": before,
                "retained": after,
                "search_s": seconds,
            }
        )
    return out, report
