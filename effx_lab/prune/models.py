"""Pruning whole models: the verb :func:`prune_`, the masks it leaves, structured
pruning that really shrinks the layers, and Michel et al.'s data-driven importance.

``prune_(model, config, *, tokens=None)`` edits ``model`` in place and returns it (the
style of :func:`effx_lab.quant.quantize_` and torchao), for the course's two language
models: :class:`effx_lab.models.lm.LM` (``"softmax"`` mixer, ``"gelu"`` FFN; parameters
by name in ``model.layers[i]``) and TinyLM (:class:`effx_lab.models.torch_ops.TinyLM`,
``nn.Linear`` layers ``attn.qkv`` (fused), ``attn.proj``, ``mlp.fc1``, ``mlp.fc2``).

* :class:`~effx_lab.prune.configs.MagnitudeConfig` attaches a bool mask to each selected
  weight (:func:`effx_lab.sparse.masks.apply_masks`, masks from
  :func:`effx_lab.prune.torch_ops.magnitude_masks`). A mask keeps its pruned entries at
  exactly zero through AdamW (a gradient hook feeds the optimizer zeros, so momentum and
  decoupled weight decay leave a zero at zero), through ``load_state_dict`` (a post-hook
  masks the loaded weight) and through ``copy.deepcopy`` (a forward pre-hook on the
  model itself re-arms the copy's gradient hooks and zeros the pruned entries before
  every forward pass, also in an LM, whose ``nn.ParameterDict`` layers never run a
  forward of their own); :func:`mask_set` returns the
  masks as one :class:`~effx_lab.sparse.masks.MaskSet`, which is also an ``after_step``
  hook of :func:`effx_lab.models.training.train`. Pruning a masked model again updates
  its masks (magnitudes include the zeros, so a higher sparsity keeps every pruned
  entry pruned).
* :class:`~effx_lab.prune.configs.HeadConfig` /
  :class:`~effx_lab.prune.configs.NeuronConfig` remove the least important heads / FFN
  neurons of every layer: new, smaller parameters
  (:func:`effx_lab.prune.torch_ops.prune_heads` / ``prune_neurons``). The
  pruned model computes exactly what the full one computes with those heads' or
  neurons' outputs set to zero. In an LM the layer's sublayer is rebuilt with fewer
  heads (:meth:`effx_lab.models.lm.LM.rebuild_sublayer`); in TinyLM the attention module
  becomes a :class:`PrunedAttention`, which keeps its heads in the first slots of the
  model's KV cache, so generation with the cache still works.

Every argument is checked, and every new tensor or module built, before the model is
touched: on an error nothing is modified. Structured pruning leaves a model whose
``state_dict`` has smaller tensors than a fresh model of the same config. To reload a
checkpoint, prune a fresh model by the same structured configs (the same number of
heads and neurons per layer), load the weights, then ``prune_`` it by the same
magnitude config: masks are not in the ``state_dict``, and the stored zeros give the
same masks (a mask attached before loading would mask the loaded weights by the fresh
model's magnitudes instead).
MiniLM, a parameter dict, is pruned by :func:`prune_minilm`, which returns a new dict.
"""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from effx_lab._validate import check_choice, check_int, describe
from effx_lab.data import get_batch
from effx_lab.data.pools import check_token_stream
from effx_lab.models import lm as lm_mod
from effx_lab.models.config import MiniLMConfig, check_minilm_config
from effx_lab.models.surgery import check_minilm_linear_weights, minilm_linear_names
from effx_lab.models.torch_ops import KVCache, TinyLM
from effx_lab.models.training import model_limits, next_token_loss
from effx_lab.sparse import masks as SM

from . import reference as R
from . import torch_ops as T
from .configs import HeadConfig, MagnitudeConfig, NeuronConfig, PruneConfig

__all__ = [
    "PrunedAttention",
    "mask_set",
    "prunable_weights",
    "prune_",
    "prune_minilm",
    "taylor_importance",
]

_HEAD_KEYS = ("wq", "bq", "wk", "bk", "wv", "bv", "wo", "bo")
_FFN_KEYS = ("w1", "b1", "w2", "b2")


# --------------------------------------------------------------------------------------
# what can be pruned, and the masks in force
# --------------------------------------------------------------------------------------


def _check_model(model: Any) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise TypeError(
            "model must be a torch.nn.Module (an effx_lab.models.lm.LM or a TinyLM), "
            f"got {describe(model)}"
        )
    return model


def prunable_weights(model: nn.Module) -> dict[str, nn.Parameter]:
    """The weights that pruning acts on, by their ``named_parameters`` name, in order.

    For :class:`effx_lab.models.lm.LM`: the 2-D parameters of each layer whose key
    starts with ``w`` (``layers.0.wq``, ``layers.0.wk``, ..., ``layers.0.w2``); for any
    other module (TinyLM): the weight of every ``nn.Linear``
    (:func:`effx_lab.sparse.masks.linear_weights`: ``layers.0.attn.qkv.weight``, ...).
    Never the embeddings (nor the tied output head), norms or biases.
    """
    model = _check_model(model)
    if isinstance(model, lm_mod.LM):
        return {
            f"layers.{i}.{key}": p
            for i, layer in enumerate(model.layers)
            for key, p in layer.items()
            if key.startswith("w") and p.ndim == 2
        }
    return SM.linear_weights(model)


def mask_set(model: nn.Module) -> SM.MaskSet:
    """The masks in force on ``model`` (those :func:`prune_` attached, or any
    :func:`effx_lab.sparse.masks.apply_masks` attached), by parameter name, as one
    :class:`~effx_lab.sparse.masks.MaskSet`: pass it to
    :func:`effx_lab.models.training.train` as an ``after_step`` hook, read its
    ``sparsity()``, or ``remove()`` them (the zeros stay, the hooks go). Empty when
    the model has none. Looked up on the model each time, so the masks of a
    ``copy.deepcopy`` are the copy's own."""
    return SM.model_masks(_check_model(model))


def _select(weights: dict[str, Any], include: Any) -> dict[str, Any]:
    return SM.select_weights(
        weights, include, "a prunable weight", "prunable_weights(model)"
    )


# --------------------------------------------------------------------------------------
# TinyLM's attention with fewer heads
# --------------------------------------------------------------------------------------


class PrunedAttention(nn.Module):
    """TinyLM's causal self-attention after head pruning: ``n_heads`` heads of width
    ``head_dim`` (the kept ones, ``heads`` their indices in the original layer), a fused
    ``qkv`` ``nn.Linear(d_model, 3 * n_heads * head_dim)`` and ``proj``
    ``nn.Linear(n_heads * head_dim, d_model)``.

    Called as TinyLM's attention is, ``attn(x, layer, start, cache)``. With a KV cache
    (``model.new_cache``, sized for the unpruned model) its keys and values go to the
    first ``n_heads`` head slots of the layer's cache: generation with the cache gives
    what the model gives without it. A cache with other head sizes raises
    ``ValueError``.
    """

    def __init__(
        self,
        qkv: nn.Linear,
        proj: nn.Linear,
        n_heads: int,
        head_dim: int,
        heads: tuple[int, ...] | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(qkv, nn.Linear) or not isinstance(proj, nn.Linear):
            raise TypeError(
                "qkv and proj must be nn.Linear layers, got "
                f"{describe(qkv)} and {describe(proj)}"
            )
        n_heads = check_int("n_heads", n_heads, min_value=1)
        head_dim = check_int("head_dim", head_dim, min_value=1)
        inner = n_heads * head_dim
        if qkv.out_features != 3 * inner or proj.in_features != inner:
            raise ValueError(
                f"qkv must have 3 * n_heads * head_dim = {3 * inner} outputs and proj "
                f"{inner} inputs, got {qkv.out_features} and {proj.in_features}"
            )
        if qkv.in_features != proj.out_features:
            raise ValueError(
                "qkv's inputs and proj's outputs must both be d_model, got "
                f"{qkv.in_features} and {proj.out_features}"
            )
        heads = tuple(range(n_heads)) if heads is None else tuple(heads)
        if len(heads) != n_heads or any(
            not isinstance(h, int) or h < 0 for h in heads
        ):
            raise ValueError(
                f"heads must be {n_heads} head indices (ints >= 0), got {heads!r}"
            )
        self.qkv, self.proj = qkv, proj
        self.n_heads = self.kv_heads = n_heads
        self.head_dim = head_dim
        self.heads = heads

    def extra_repr(self) -> str:
        return f"n_heads={self.n_heads}, head_dim={self.head_dim}, heads={self.heads}"

    def forward(
        self, x: torch.Tensor, layer: int, start: int, cache: KVCache | None
    ) -> torch.Tensor:
        B, T_, _ = x.shape
        h, d_k = self.n_heads, self.head_dim
        q, k, v = self.qkv(x).split(h * d_k, dim=-1)
        q, k, v = (t.view(B, T_, h, d_k).transpose(1, 2) for t in (q, k, v))
        if cache is not None:
            slots = cache.k[layer]
            if slots.shape[1] < h or slots.shape[3] != d_k:
                raise ValueError(
                    f"cache layer {layer} holds {slots.shape[1]} heads of width "
                    f"{slots.shape[3]}, but this pruned attention needs {h} heads of "
                    f"width {d_k}: make the cache with model.new_cache"
                )
            cache.k[layer][:, :h, start : start + T_] = k
            cache.v[layer][:, :h, start : start + T_] = v
            k = cache.k[layer][:, :h, : start + T_]
            v = cache.v[layer][:, :h, : start + T_]
        if start == 0:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        elif T_ == 1:
            y = F.scaled_dot_product_attention(q, k, v)
        else:  # a chunk after a prefix: query t sees keys 0 .. start + t
            mask = torch.ones(T_, start + T_, dtype=torch.bool, device=x.device)
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask.tril(diagonal=start)
            )
        return self.proj(y.transpose(1, 2).reshape(B, T_, h * d_k))


def _linear_like(
    ref: nn.Linear, weight: torch.Tensor, bias: torch.Tensor | None
) -> nn.Linear:
    """A new ``nn.Linear`` holding ``weight (out, in)`` and ``bias`` (copies), with
    ``ref``'s dtype, device and ``requires_grad``."""
    w = ref.weight
    new = nn.Linear(
        weight.shape[1], weight.shape[0], bias=bias is not None,
        device=w.device, dtype=w.dtype,
    )  # fmt: skip
    with torch.no_grad():
        new.weight.copy_(weight)
        if bias is not None:
            new.bias.copy_(bias)
    new.requires_grad_(w.requires_grad)
    return new


# --------------------------------------------------------------------------------------
# the units of each architecture, in the LM layout (y = x @ w + b, w (in, out))
# --------------------------------------------------------------------------------------


def _arch(model: nn.Module, what: str) -> str:
    if isinstance(model, lm_mod.LM):
        spec = model.spec
        if spec.mixer != "softmax" or spec.ffn != "gelu":
            raise ValueError(
                f"{what} works on an LM with mixer 'softmax' and ffn 'gelu', got "
                f"mixer {spec.mixer!r} and ffn {spec.ffn!r}"
            )
        return "lm"
    if isinstance(model, TinyLM):
        return "tinylm"
    raise TypeError(
        f"model must be an effx_lab.models.lm.LM or a TinyLM for {what}, got "
        f"{describe(model)}"
    )


def _lm_heads(model: lm_mod.LM, index: int) -> tuple[int, int]:
    """``(n_heads, head_dim)`` of layer ``index``'s softmax mixer."""
    options = model.sublayer_options(index, "mixer")
    default = inspect.signature(lm_mod.softmax_attention_mixer).parameters["n_heads"]
    n_heads = options.get("n_heads", default.default)
    head_dim = options.get("head_dim") or model.spec.d_model // n_heads
    return n_heads, head_dim


def _tiny_attn(model: TinyLM, index: int) -> tuple[nn.Module, int, int]:
    attn = model.layers[index].attn
    if attn.kv_heads != attn.n_heads:
        raise ValueError(
            "head pruning needs one key/value head per query head; layer "
            f"{index} of this TinyLM has n_heads={attn.n_heads} and "
            f"kv_heads={attn.kv_heads} (grouped-query attention)"
        )
    return attn, attn.n_heads, attn.head_dim


def _unit_params(model: nn.Module, arch: str, kind: str, index: int) -> dict:
    """Layer ``index``'s attention (``kind="heads"``) or FFN (``"neurons"``) parameters
    in the LM layout, as detached tensors (TinyLM's are transposed views)."""
    if arch == "lm":
        layer = model.layers[index]
        keys = _HEAD_KEYS if kind == "heads" else _FFN_KEYS
        return {k: layer[k].detach() for k in keys}
    block = model.layers[index]
    if kind == "heads":
        attn, n_heads, dh = _tiny_attn(model, index)
        inner = n_heads * dh
        w, b = attn.qkv.weight.detach(), attn.qkv.bias.detach()
        out = {}
        for j, c in enumerate("qkv"):
            out[f"w{c}"] = w[j * inner : (j + 1) * inner].t()
            out[f"b{c}"] = b[j * inner : (j + 1) * inner]
        out["wo"] = attn.proj.weight.detach().t()
        out["bo"] = attn.proj.bias.detach()
        return out
    mlp = block.mlp
    return {
        "w1": mlp.fc1.weight.detach().t(), "b1": mlp.fc1.bias.detach(),
        "w2": mlp.fc2.weight.detach().t(), "b2": mlp.fc2.bias.detach(),
    }  # fmt: skip


def _n_units(model: nn.Module, arch: str, kind: str, index: int) -> int:
    if kind == "heads":
        if arch == "lm":
            return _lm_heads(model, index)[0]
        return _tiny_attn(model, index)[1]
    if arch == "lm":
        return int(model.layers[index]["w1"].shape[1])
    return int(model.layers[index].mlp.fc1.out_features)


def _gate_weight(model: nn.Module, arch: str, kind: str, index: int) -> nn.Parameter:
    """The weight whose slices carry each unit's output: ``wo`` / ``w2`` (LM), ``proj``
    / ``fc2`` (TinyLM)."""
    if arch == "lm":
        return model.layers[index]["wo" if kind == "heads" else "w2"]
    block = model.layers[index]
    return block.attn.proj.weight if kind == "heads" else block.mlp.fc2.weight


def _per_unit(
    w: torch.Tensor, g: torch.Tensor, arch: str, kind: str, n_units: int
) -> torch.Tensor:
    """``<W_u, dL/dW_u>`` for each unit ``u`` (float64): its slice of ``wo``/``w2``
    (rows in the LM's ``(in, out)`` layout, columns of TinyLM's ``(out, in)``)."""
    p = w.detach().double() * g.double()
    if arch == "tinylm":
        p = p.t()
    return p.reshape(n_units, -1).sum(dim=1)


# --------------------------------------------------------------------------------------
# Michel et al.'s importance
# --------------------------------------------------------------------------------------


def taylor_importance(
    model: nn.Module,
    tokens: Any,
    kind: str = "heads",
    *,
    batches: int = 4,
    batch_size: int = 8,
    seq_len: int | None = None,
    seed: int = 0,
) -> list[np.ndarray]:
    """Michel et al. (2019)'s importance of each attention head (``kind="heads"``) or
    FFN neuron (``"neurons"``): ``I_u = E |dL/dxi_u|``, ``xi_u`` a gate multiplying
    unit ``u``'s output (all gates 1), ``L`` the next-token loss.

    Returns one float64 NumPy array per layer (``(n_units,)``: heads or neurons of that
    layer). ``batches`` batches of ``batch_size`` random windows of ``seq_len + 1``
    tokens (default ``seq_len``: 64, or the model's longest sequence if shorter) are
    drawn from the 1-D stream ``tokens`` (:func:`effx_lab.data.get_batch` with
    ``numpy.random.default_rng(seed)``); for each, the gradient of the batch's mean
    next-token loss (:func:`effx_lab.models.training.next_token_loss`) is taken, its
    absolute value per unit, and the result is the mean over the batches. This is the
    authors' code (the absolute value of each batch's gradient, accumulated over
    batches), rather than the paper's per-example expectation; the ranking inside a
    layer does not depend on their later per-layer normalisation.

    No gate is inserted: scaling head ``h``'s output by ``xi`` is scaling its
    ``head_dim`` rows of ``W_O`` (in the ``(in, out)`` layout), so ``dL/dxi_h =
    <W_O^h, dL/dW_O^h>``, read from the weight gradient (the same for neuron ``j`` with
    its row of ``W_2``). The model's parameters, gradients (``torch.autograd.grad``, no
    ``.grad`` written) and train/eval mode are left as they were; it runs in eval mode.
    """
    model = _check_model(model)
    arch = _arch(model, "taylor_importance")
    kind = check_choice("kind", kind, ("heads", "neurons"))
    batches = check_int("batches", batches, min_value=1)
    batch_size = check_int("batch_size", batch_size, min_value=1)
    vocab, max_len = model_limits(model)
    if seq_len is None:
        seq_len = min(64, max_len or 64)
    seq_len = check_int("seq_len", seq_len, min_value=1, max_value=max_len)
    seed = check_int("seed", seed, min_value=0)
    tokens = check_token_stream(
        "tokens", tokens, min_len=seq_len + 1, vocab_size=vocab
    )
    n_layers = len(model.layers)
    sizes = [_n_units(model, arch, kind, i) for i in range(n_layers)]
    weights = [_gate_weight(model, arch, kind, i) for i in range(n_layers)]
    frozen = [i for i, w in enumerate(weights) if not w.requires_grad]
    if frozen:
        raise ValueError(
            "taylor_importance needs gradients of the output weights, but those of "
            f"layers {frozen} have requires_grad=False"
        )
    device = weights[0].device
    rng = np.random.default_rng(seed)
    totals = [torch.zeros(n, dtype=torch.float64, device=device) for n in sizes]
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            for _ in range(batches):
                x, y = get_batch(tokens, batch_size, seq_len, rng)
                loss = next_token_loss(
                    model,
                    torch.from_numpy(x).to(device),
                    torch.from_numpy(y).to(device),
                )
                grads = torch.autograd.grad(loss, weights)
                for i, (w, g) in enumerate(zip(weights, grads)):
                    totals[i] += _per_unit(w, g, arch, kind, sizes[i]).abs()
    finally:
        model.train(was_training)
    return [(t / batches).cpu().numpy() for t in totals]


# --------------------------------------------------------------------------------------
# the verb
# --------------------------------------------------------------------------------------


def _config_kinds() -> str:
    return "MagnitudeConfig, HeadConfig or NeuronConfig from effx_lab.prune.configs"


def prune_(model: nn.Module, config: PruneConfig, *, tokens: Any = None) -> nn.Module:
    """Prune ``model`` **in place** as ``config`` says, and return it.

    ``model``: an :class:`effx_lab.models.lm.LM` (mixer ``"softmax"``, FFN ``"gelu"``)
    or a TinyLM (magnitude pruning works on any ``nn.Module`` with linear layers).
    ``config``: a :class:`~effx_lab.prune.configs.MagnitudeConfig` (masks on the
    weights of :func:`prunable_weights`, or those of ``config.include``; see the module
    docstring), :class:`~effx_lab.prune.configs.HeadConfig` or
    :class:`~effx_lab.prune.configs.NeuronConfig` (every layer loses
    ``round(fraction * n)`` of its ``n`` heads or neurons, the lowest-ranked by
    ``config.criterion``; ties keep the lower index). ``tokens``: a 1-D token stream,
    required by ``criterion="taylor"`` (:func:`taylor_importance` with its defaults)
    and ignored otherwise.

    Keep ``copy.deepcopy(model)`` first to compare with the unpruned model. An optimizer
    built before structured pruning holds the old parameters: build a new one
    (:func:`effx_lab.models.training.train` does). Bad input (a config of another type,
    ``include`` naming no prunable weight, a fraction that would remove every head or
    neuron of a layer, ``tokens`` missing for ``"taylor"``, structured pruning of a
    weight that carries a mask) raises ``TypeError``/``ValueError`` and leaves the model
    unchanged.
    """
    model = _check_model(model)
    if not isinstance(config, PruneConfig):
        raise TypeError(
            f"config must be a pruning config ({_config_kinds()}), e.g. "
            f"MagnitudeConfig(sparsity=0.5), got {describe(config)}"
        )
    if isinstance(config, MagnitudeConfig):
        return _prune_magnitude(model, config)
    if isinstance(config, (HeadConfig, NeuronConfig)):
        return _prune_structured(model, config, tokens)
    raise TypeError(
        f"config must be one of {_config_kinds()}, got {describe(config)}"
    )  # pragma: no cover - a PruneConfig subclass defined elsewhere


def _prune_magnitude(model: nn.Module, config: MagnitudeConfig) -> nn.Module:
    weights = _select(prunable_weights(model), config.include)
    if not weights:
        raise ValueError(
            f"model has no prunable weight (2-D weights of linear layers), got "
            f"{describe(model)}"
        )
    masks = T.magnitude_masks(
        {k: w.detach() for k, w in weights.items()}, config.sparsity, config.scope
    )
    existing = mask_set(model)
    fresh = {k: m for k, m in masks.items() if k not in existing}
    SM.apply_masks(model, fresh)  # checks every key before attaching any
    for key, mask in masks.items():
        if key in existing:
            existing[key].update(mask)
    SM.guard_masks(model)
    return model


def _prune_structured(
    model: nn.Module, config: HeadConfig | NeuronConfig, tokens: Any
) -> nn.Module:
    kind = "heads" if isinstance(config, HeadConfig) else "neurons"
    arch = _arch(model, f"pruning {kind}")
    if config.criterion == "taylor" and tokens is None:
        raise ValueError(
            f"criterion 'taylor' ranks {kind} on data: pass tokens (a 1-D token "
            "stream, e.g. effx_lab.data.calibration_tokens(8192)), got None"
        )
    n_layers = len(model.layers)
    sizes = [_n_units(model, arch, kind, i) for i in range(n_layers)]
    n_keep = [n - int(round(config.fraction * n)) for n in sizes]
    for i, (n, k) in enumerate(zip(sizes, n_keep)):
        if k < 1:
            raise ValueError(
                f"fraction={config.fraction} would remove all {n} {kind} of layer "
                f"{i} (round(fraction * {n}) = {n}); use a smaller fraction"
            )
    touched = _touched(model, arch, kind)
    masked = [name for name in mask_set(model) if name in touched]
    if masked:
        raise ValueError(
            f"the weights {masked} carry pruning masks, and {kind} pruning would "
            "replace them by smaller ones: prune structure first, or drop the masks "
            "with mask_set(model).remove()"
        )
    if config.criterion == "taylor":
        scores = [torch.from_numpy(s) for s in taylor_importance(model, tokens, kind)]
    else:
        scores = []
        for i in range(n_layers):
            p = _unit_params(model, arch, kind, i)
            scores.append(
                T.head_importance(p, sizes[i])
                if kind == "heads"
                else T.neuron_importance(p)
            )
    # build every new layer first, then swap them in (nothing changes on an error)
    changes = []
    for i in range(n_layers):
        if n_keep[i] == sizes[i]:
            continue
        keep = T.keep_top(scores[i], n_keep[i]).tolist()
        p = _unit_params(model, arch, kind, i)
        if kind == "heads":
            changes.append(_shrink_heads(model, arch, i, p, keep, sizes[i]))
        else:
            changes.append(_shrink_neurons(model, arch, i, p, keep))
    for apply in changes:
        apply()
    return model


def _touched(model: nn.Module, arch: str, kind: str) -> set[str]:
    """Names of the parameters that pruning ``kind`` replaces."""
    names = set()
    for i in range(len(model.layers)):
        if arch == "lm":
            keys = _HEAD_KEYS if kind == "heads" else _FFN_KEYS
            names.update(f"layers.{i}.{k}" for k in keys)
        else:
            mods = ["mlp.fc1", "mlp.fc2"]
            if kind == "heads":
                mods = ["attn.qkv", "attn.proj"]
            names.update(
                f"layers.{i}.{m}.{p}" for m in mods for p in ("weight", "bias")
            )
    return names


def _shrink_heads(
    model: nn.Module, arch: str, index: int, p: dict, keep: list[int], n_heads: int
) -> Any:
    new = T.prune_heads(p, keep, n_heads)
    if arch == "lm":
        _, head_dim = _lm_heads(model, index)
        layer = model.layers[index]
        keys = [k for k in layer if k in _HEAD_KEYS or k.startswith("ln1_")]
        params = {k: new.get(k, layer[k]).detach() for k in keys}
        options = {"n_heads": len(keep), "head_dim": head_dim}

        def apply() -> None:
            model.rebuild_sublayer(index, "mixer", params, **options)

        return apply
    block = model.layers[index]
    attn, _, head_dim = _tiny_attn(model, index)
    qkv_w = torch.cat([new["wq"], new["wk"], new["wv"]], dim=1).t()
    qkv_b = torch.cat([new["bq"], new["bk"], new["bv"]])
    old_heads = getattr(attn, "heads", tuple(range(n_heads)))
    pruned = PrunedAttention(
        _linear_like(attn.qkv, qkv_w, qkv_b),
        _linear_like(attn.proj, new["wo"].t(), new["bo"]),
        len(keep),
        head_dim,
        heads=tuple(old_heads[j] for j in keep),
    )

    def apply() -> None:
        block.attn = pruned

    return apply


def _shrink_neurons(
    model: nn.Module, arch: str, index: int, p: dict, keep: list[int]
) -> Any:
    new = T.prune_neurons(p, keep)
    if arch == "lm":
        layer = model.layers[index]
        keys = [k for k in layer if k in _FFN_KEYS or k.startswith("ln2_")]
        params = {k: new.get(k, layer[k]).detach() for k in keys}

        def apply() -> None:
            model.rebuild_sublayer(index, "ffn", params, d_ff=len(keep))

        return apply
    mlp = model.layers[index].mlp
    fc1 = _linear_like(mlp.fc1, new["w1"].t(), new["b1"])
    fc2 = _linear_like(mlp.fc2, new["w2"].t(), new["b2"])

    def apply() -> None:
        mlp.fc1, mlp.fc2 = fc1, fc2

    return apply


# --------------------------------------------------------------------------------------
# MiniLM (a parameter dict)
# --------------------------------------------------------------------------------------


def prune_minilm(
    params: dict[str, np.ndarray], config: PruneConfig, model_config: MiniLMConfig
) -> dict[str, np.ndarray]:
    """MiniLM's parameters (from :func:`effx_lab.models.load_minilm`) pruned as
    ``config`` says, as a new dict (``params`` is not modified; arrays that do not
    change are shared, not copied). ``model_config``: the MiniLM config that comes with
    them.

    * :class:`~effx_lab.prune.configs.MagnitudeConfig`: the six linear weights of each
      layer (``encoder.layer.i.attention.self.query.weight``, ...,
      ``encoder.layer.i.output.dense.weight``; ``include`` selects names or prefixes
      such as ``"encoder.layer.0"``) get their pruned entries set to zero; embeddings,
      LayerNorms and biases are never pruned.
    * :class:`~effx_lab.prune.configs.NeuronConfig` (``criterion="norm"``): each
      layer's FFN shrinks: rows of ``intermediate.dense`` (weight and bias) and
      columns of ``output.dense.weight``. MiniLM's forward reads the FFN width from the
      weights, so the smaller dict runs as is.
    * :class:`~effx_lab.prune.configs.HeadConfig` (``criterion="norm"``): the dropped
      heads' ``head_dim`` columns of ``attention.output.dense.weight`` (``[out, in]``:
      its rows in the ``(in, out)`` layout) are set to zero. A head reaches the layer's
      output only through them, so this is exactly removing the head (its queries, keys
      and values are still computed: MiniLM's forward takes its head count from the
      config, so the attention cannot shrink here).

    The Taylor criterion needs a training loss, which this encoder does not have here:
    ``criterion="taylor"`` raises ``ValueError``.
    """
    check_minilm_config(model_config)
    if not isinstance(model_config, MiniLMConfig):
        raise TypeError(
            f"model_config must be a MiniLMConfig, got {describe(model_config)}"
        )
    check_minilm_linear_weights(params, model_config)
    if not isinstance(config, PruneConfig):
        raise TypeError(
            f"config must be a pruning config ({_config_kinds()}), got "
            f"{describe(config)}"
        )
    names = minilm_linear_names(model_config)
    for name in names:
        for suffix in (".weight", ".bias"):
            value = params.get(name + suffix)
            if not isinstance(value, np.ndarray) or value.dtype.kind != "f":
                raise TypeError(
                    f"params[{name + suffix!r}] must be a float NumPy array (as "
                    f"load_minilm returns), got {describe(value)}"
                )
    out = dict(params)
    if isinstance(config, MagnitudeConfig):
        weights = {n + ".weight": params[n + ".weight"] for n in names}
        weights = _select(weights, config.include)
        masks = R.magnitude_masks(weights, config.sparsity, config.scope)
        for key, keep in masks.items():
            w = params[key]
            out[key] = np.where(keep, w, np.zeros((), dtype=w.dtype))
        return out
    if config.criterion == "taylor":
        raise ValueError(
            "criterion 'taylor' needs a training loss, which MiniLM (a sentence "
            "encoder) has not here; use criterion='norm'"
        )
    for i in range(model_config.num_hidden_layers):
        pre = f"encoder.layer.{i}."
        if isinstance(config, NeuronConfig):
            w1 = params[pre + "intermediate.dense.weight"]  # [d_ff, d]
            w2 = params[pre + "output.dense.weight"]  # [d, d_ff]
            n = w1.shape[0]
            n_keep = _minilm_keep(n, config.fraction, "neurons", i)
            scores = R.neuron_importance({"w1": w1.T, "w2": w2.T})
            keep = R.keep_top(scores, n_keep)
            out[pre + "intermediate.dense.weight"] = w1[keep].copy()
            out[pre + "intermediate.dense.bias"] = params[
                pre + "intermediate.dense.bias"
            ][keep].copy()
            out[pre + "output.dense.weight"] = w2[:, keep].copy()
        elif isinstance(config, HeadConfig):
            n = model_config.num_attention_heads
            dh = model_config.head_dim
            n_keep = _minilm_keep(n, config.fraction, "heads", i)
            wv = params[pre + "attention.self.value.weight"]
            wo = params[pre + "attention.output.dense.weight"]  # [d, n * dh]
            scores = R.head_importance({"wv": wv.T, "wo": wo.T}, n)
            keep = set(R.keep_top(scores, n_keep).tolist())
            new = wo.copy()
            for h in range(n):
                if h not in keep:
                    new[:, h * dh : (h + 1) * dh] = 0
            out[pre + "attention.output.dense.weight"] = new
        else:  # pragma: no cover - a PruneConfig subclass defined elsewhere
            raise TypeError(f"config must be one of {_config_kinds()}")
    return out


def _minilm_keep(n: int, fraction: float, unit: str, layer: int) -> int:
    keep = n - int(round(fraction * n))
    if keep < 1:
        raise ValueError(
            f"fraction={fraction} would remove all {n} {unit} of layer {layer}; use a "
            "smaller fraction"
        )
    return keep
