"""Quantizing whole models: TinyLM (an ``nn.Module``) and MiniLM (a functional encoder), chapter 2.

The layer-level methods live in :mod:`effx_lab.quant.torch_ops` (uniform fake quantization; LLM.int8,
SmoothQuant and ZeroQuant from ``_torch_outliers``; RTN and GPTQ from ``_torch_gptq``). This module
applies them to every linear layer of a model and measures what the model as a whole loses. PyTorch only.

Two ways of swapping a model's linear layers, one per model:

* **TinyLM** (:class:`effx_lab.models.torch_ops.TinyLM`) is an ``nn.Module`` whose eight linear layers are
  ``nn.Linear`` modules named ``layers.{i}.attn.qkv``, ``layers.{i}.attn.proj``, ``layers.{i}.mlp.fc1`` and
  ``layers.{i}.mlp.fc2``. :func:`replace_linears` deep-copies the model and puts a :class:`QuantizedLinear`
  (a weight, a bias and the scheme's ``matmul(x, weight, bias)``) in place of each. The output head is tied
  to the token embedding (``logits = h @ tok_emb.weight.T``, an ``F.linear`` call, not an ``nn.Linear``):
  it stays in float32, as do the embeddings and LayerNorms, as in the papers.
* **MiniLM** (all-MiniLM-L6-v2) is a parameter dict run by
  :func:`effx_lab.models.torch_ops.minilm_forward`, which calls a hook ``linear(name, x, weight, bias)``
  for each of its 36 linear layers. :func:`minilm_quant_hook` returns such a hook for a method;
  :func:`minilm_embeddings` and :func:`embedding_agreement` measure the damage on sentence embeddings.

Activation quantization is *dynamic* and *simulated* everywhere: a per-tensor scale is the absmax of the
tensor the layer receives in this call (for MiniLM, one batch of sentences, padding included: results depend
a little on the batching, which :func:`minilm_embeddings` keeps deterministic), a per-token scale the absmax
of each row; values are quantized, dequantized and multiplied in float. SmoothQuant's per-channel smoothing
factors, by contrast, come from calibration data (``act_absmax``), and by default only the layers fed by a
LayerNorm are smoothed, as in the paper's code (the others cannot fold ``1/s`` anywhere offline and get
plain W8A8). Model weights never change in place: every function returns a copy. Calibration and evaluation data are
disjoint and deterministic: :func:`calibration_sentences` / :func:`eval_sentences` (paragraphs of CPython's
help text, split once into two pools) and :func:`calibration_tokens` / :func:`eval_tokens` (the training and
validation splits of :func:`effx_lab.data.load_corpus_splits`).
"""

from __future__ import annotations

import copy
import functools
import math
import re
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from effx_lab._validate import check_array, check_bool, check_choice, check_float, check_int, describe
from effx_lab.models.config import MiniLMConfig

from . import torch_ops as T
from ._np_outliers import _check_bits, _check_threshold  # the same validation as the layer-level functions

__all__ = [
    "MINILM_METHODS",
    "SMOOTH_LAYERS",
    "TINYLM_METHODS",
    "QuantizedLinear",
    "calibration_sentences",
    "calibration_tokens",
    "collect_linear_inputs",
    "embedding_agreement",
    "eval_sentences",
    "eval_tokens",
    "gptq_minilm",
    "linear_input_absmax",
    "linear_names",
    "minilm_embeddings",
    "minilm_linear_names",
    "minilm_quant_hook",
    "quantize_tinylm",
    "record_minilm_linears",
    "replace_linears",
    "tinylm_perplexity",
    "tokenize_sentences",
]

#: methods of :func:`quantize_tinylm`
TINYLM_METHODS = ("rtn", "gptq", "w8a8", "llm_int8", "smoothquant", "zeroquant")
#: methods of :func:`minilm_quant_hook` ("float" is the unquantized baseline, F.linear)
MINILM_METHODS = ("float", "w8a32", "w32a8", "w8a8", "llm_int8", "smoothquant", "zeroquant", "rtn", "gptq")

#: which layers SmoothQuant smooths: those fed by a LayerNorm (where 1/s folds into it offline), or all
SMOOTH_LAYERS = ("ln", "all")
_TINYLM_LN_FED = ("attn.qkv", "mlp.fc1")  # inputs: ln1(x), ln2(x) (pre-LN blocks)
_MINILM_LN_FED = ("attention.self.query", "attention.self.key", "attention.self.value", "intermediate.dense")
_ACT_GRANULARITIES = ("tensor", "token")
_WEIGHT_GRANULARITIES = ("tensor", "channel")


# ==========================================================================================================
# Swapping the linear layers of an nn.Module
# ==========================================================================================================
class QuantizedLinear(nn.Module):
    """A linear layer computed by a quantization scheme: ``forward(x) = matmul(x, weight, bias)``.

    ``weight`` (float ``[out, in]``) is stored as given: already quantized-dequantized for weight-only
    schemes (RTN, GPTQ), or the original float weight for schemes that quantize inside ``matmul``
    (LLM.int8, SmoothQuant). ``bias`` is ``None`` or ``[out]``. Both are buffers (they move with
    ``.to(device)`` and are not trained). ``matmul`` is any callable ``(x [..., in], weight, bias) ->
    [..., out]``; the default is ``F.linear``. ``name`` (the layer's qualified name) and ``scheme`` (a short
    description) only show in ``repr``.
    """

    def __init__(
        self,
        weight: torch.Tensor,
        bias: torch.Tensor | None = None,
        matmul: Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor] | None = None,
        *,
        name: str = "",
        scheme: str = "float",
    ) -> None:
        super().__init__()
        if not isinstance(weight, torch.Tensor) or weight.ndim != 2 or not weight.dtype.is_floating_point:
            raise TypeError(f"weight must be a 2-D float torch tensor [out, in], got {describe(weight)}")
        if bias is not None:
            if not isinstance(bias, torch.Tensor) or not bias.dtype.is_floating_point:
                raise TypeError(f"bias must be None or a float torch tensor [out], got {describe(bias)}")
            if tuple(bias.shape) != (weight.shape[0],):
                raise ValueError(f"bias must have shape ({weight.shape[0]},) (weight's out), got {tuple(bias.shape)}")
        if matmul is not None and not callable(matmul):
            raise TypeError(f"matmul must be None or a callable (x, weight, bias) -> y, got {describe(matmul)}")
        if not isinstance(name, str) or not isinstance(scheme, str):
            raise TypeError(f"name and scheme must be str, got {describe(name)} and {describe(scheme)}")
        self.register_buffer("weight", weight.detach().clone())
        self.register_buffer("bias", None if bias is None else bias.detach().clone())
        self.matmul = F.linear if matmul is None else matmul
        self.name = name
        self.scheme = scheme

    @property
    def in_features(self) -> int:
        return int(self.weight.shape[1])

    @property
    def out_features(self) -> int:
        return int(self.weight.shape[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.matmul(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return (
            f"name={self.name!r}, scheme={self.scheme!r}, in_features={self.in_features}, "
            f"out_features={self.out_features}, bias={self.bias is not None}"
        )


def _check_module(name: str, model: Any) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise TypeError(f"{name} must be a torch.nn.Module, got {describe(model)}")
    return model


def linear_names(model: nn.Module) -> list[str]:
    """Qualified names (as in ``model.named_modules()``, same order) of every ``nn.Linear`` in ``model``."""
    _check_module("model", model)
    return [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def _check_skip(skip: Any, names: list[str]) -> set[str]:
    if isinstance(skip, str) or not isinstance(skip, Iterable):
        raise TypeError(f"skip must be a list/tuple/set of layer names, got {describe(skip)}")
    skip = set(skip)
    unknown = sorted(skip - set(names), key=str)
    if unknown:
        raise ValueError(f"skip names {unknown} that are not nn.Linear layers of model; its linear layers: {names}")
    return skip


def replace_linears(
    model: nn.Module, make: Callable[[str, nn.Linear], nn.Module], *, skip: Iterable[str] = ()
) -> nn.Module:
    """A deep copy of ``model`` in which every ``nn.Linear`` whose qualified name is not in ``skip`` is
    replaced by ``make(name, linear)`` (``linear`` is the *copy*'s layer: ``model`` itself is never touched).

    ``make`` must return an ``nn.Module``; names in ``skip`` must be linear layers of ``model`` (a typo raises
    instead of silently quantizing everything).
    """
    _check_module("model", model)
    if not callable(make):
        raise TypeError(f"make must be a callable make(name, linear) -> nn.Module, got {describe(make)}")
    names = linear_names(model)
    skip = _check_skip(skip, names)
    new_model = copy.deepcopy(model)
    for name in names:
        if name in skip:
            continue
        new = make(name, new_model.get_submodule(name))
        if not isinstance(new, nn.Module):
            raise TypeError(f"make({name!r}, linear) must return an nn.Module, got {describe(new)}")
        _set_submodule(new_model, name, new)
    return new_model


# ==========================================================================================================
# Calibration statistics of a token-in model (TinyLM)
# ==========================================================================================================
class _StopForward(Exception):
    """Raised by a recording hook once every requested layer has run: the rest of the forward is skipped."""


def _check_token_stream(name: str, tokens: Any, min_len: int) -> torch.Tensor:
    check_array(name, tokens, ndim=1, dtype_kind="iu", allow_torch=True)
    t = torch.from_numpy(np.ascontiguousarray(tokens)) if isinstance(tokens, np.ndarray) else tokens
    if t.shape[0] < min_len:
        raise ValueError(f"{name} must hold at least {min_len} tokens (one window of seq_len), got {t.shape[0]}")
    return t.long()


def _model_device(model: nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def _linear_like(model: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if isinstance(m, (nn.Linear, QuantizedLinear))}


def _record(
    model: nn.Module,
    tokens: Any,
    *,
    batch_size: int,
    seq_len: int,
    max_tokens: int | None,
    names: Iterable[str] | None,
    absmax: bool,
    stop_early: bool = False,
) -> dict[str, torch.Tensor]:
    """Run ``model`` on consecutive windows of ``tokens`` and record, for the linear layers ``names``
    (``nn.Linear`` or :class:`QuantizedLinear`), either their inputs ``[n_tokens, in]`` or the per-feature
    max ``|x|`` ``[in]``."""
    _check_module("model", model)
    batch_size = check_int("batch_size", batch_size, min_value=1)
    seq_len = check_int("seq_len", seq_len, min_value=1)
    cfg = getattr(model, "config", None)
    if cfg is not None and hasattr(cfg, "max_seq_len") and seq_len > cfg.max_seq_len:
        raise ValueError(f"seq_len must be <= the model's max_seq_len={cfg.max_seq_len}, got {seq_len}")
    if max_tokens is not None:
        max_tokens = check_int("max_tokens", max_tokens, min_value=1)
    stream = _check_token_stream("tokens", tokens, seq_len)
    layers = _linear_like(model)
    if not layers:
        raise ValueError("model has no nn.Linear (or QuantizedLinear) layer to record")
    if names is None:
        wanted = list(layers)
    else:
        if isinstance(names, str):
            raise TypeError(f"names must be a list of layer names or None, got {describe(names)}")
        wanted = list(names)
        unknown = [n for n in wanted if n not in layers]
        if unknown:
            raise ValueError(f"names {unknown} are not linear layers of model; its linear layers: {list(layers)}")
    n_windows = stream.shape[0] // seq_len
    if max_tokens is not None:
        n_windows = min(n_windows, -(-max_tokens // seq_len))
    windows = stream[: n_windows * seq_len].view(n_windows, seq_len).to(_model_device(model))
    store: dict[str, list[torch.Tensor]] = {n: [] for n in wanted}
    seen: set[str] = set()

    def make_hook(name: str) -> Callable:
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            x = args[0].detach()
            x = x.reshape(-1, x.shape[-1]).float()
            store[name].append(x.abs().amax(dim=0) if absmax else x.clone())
            seen.add(name)
            if stop_early and len(seen) == len(wanted):
                raise _StopForward

        return hook

    handles = [layers[n].register_forward_hook(make_hook(n)) for n in wanted]
    try:
        with torch.no_grad():
            for b in range(0, n_windows, batch_size):
                seen.clear()
                try:
                    model(windows[b : b + batch_size])
                except _StopForward:
                    pass
    finally:
        for h in handles:
            h.remove()
    missing = [n for n in wanted if not store[n]]
    if missing:
        raise ValueError(f"layers {missing} were never called by model's forward pass")
    if absmax:
        return {n: torch.stack(v).amax(dim=0) for n, v in store.items()}
    out = {n: torch.cat(v) for n, v in store.items()}
    if max_tokens is not None:
        out = {n: v[:max_tokens] for n, v in out.items()}
    return out


def collect_linear_inputs(
    model: nn.Module,
    tokens: Any,
    *,
    batch_size: int = 16,
    seq_len: int = 64,
    max_tokens: int | None = None,
    names: Iterable[str] | None = None,
) -> dict[str, torch.Tensor]:
    """The inputs of every linear layer of a token-in model (e.g. TinyLM), recorded with forward hooks.

    ``tokens`` (a 1-D integer stream, NumPy or torch) is cut into consecutive windows of ``seq_len``
    (a tail shorter than a window is dropped), which run ``batch_size`` at a time. Returns
    ``{name: float32 tensor [n_tokens, in]}`` on the model's device for each ``nn.Linear`` (and
    :class:`QuantizedLinear`, so an already partly quantized model can be recorded: GPTQ's sequential
    calibration does that), or only for ``names``. ``max_tokens`` keeps the first ``max_tokens`` rows.
    """
    return _record(
        model, tokens, batch_size=batch_size, seq_len=seq_len, max_tokens=max_tokens, names=names, absmax=False
    )


def linear_input_absmax(
    model: nn.Module,
    tokens: Any,
    *,
    batch_size: int = 16,
    seq_len: int = 64,
    max_tokens: int | None = None,
    names: Iterable[str] | None = None,
) -> dict[str, torch.Tensor]:
    """Per-input-feature ``max |x|`` (float32 ``[in]``) of each linear layer over the calibration windows:
    the statistic SmoothQuant's ``act_absmax`` and LLM.int8's outlier analysis need. Same arguments as
    :func:`collect_linear_inputs`, without storing the inputs (``max_tokens`` rounds up to whole windows)."""
    return _record(
        model, tokens, batch_size=batch_size, seq_len=seq_len, max_tokens=max_tokens, names=names, absmax=True
    )


# ==========================================================================================================
# Per-layer schemes shared by TinyLM and MiniLM
# ==========================================================================================================
def _flat_fake_quantize(x: torch.Tensor, bits: int, granularity: str) -> torch.Tensor:
    """Symmetric absmax fake quantization of activations: one scale per tensor or per token (row)."""
    if granularity == "tensor":
        return T.fake_quantize(x, bits=bits)
    flat = x.reshape(-1, x.shape[-1])
    return T.fake_quantize(flat, bits=bits, granularity="channel", axis=0).reshape(x.shape)


def _weight_fake_quantize(w: torch.Tensor, bits: int, granularity: str) -> torch.Tensor:
    if granularity == "tensor":
        return T.fake_quantize(w, bits=bits)
    return T.fake_quantize(w, bits=bits, granularity="channel", axis=0)


def _act_quant_matmul(a_bits: int | None, act_granularity: str) -> Callable:
    """``F.linear`` on fake-quantized activations (``a_bits=None``: activations stay float)."""
    if a_bits is None:
        return F.linear

    def matmul(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return F.linear(_flat_fake_quantize(x, a_bits, act_granularity), weight, bias)

    return matmul


def _check_group_size(group_size: Any, in_features: dict[str, int]) -> int | None:
    """``None`` (no groups), or an int dividing the number of input features of every layer."""
    if group_size is None:
        return None
    group_size = check_int("group_size", group_size, min_value=1)
    bad = {n: k for n, k in in_features.items() if k % group_size}
    if bad:
        first = next(iter(bad))
        raise ValueError(
            f"group_size must divide every layer's number of input features; got {group_size}, but layer "
            f"{first!r} has {bad[first]} (and {len(bad) - 1} more layers do not divide)"
        )
    return group_size


# ==========================================================================================================
# TinyLM
# ==========================================================================================================


def _check_tinylm(model: Any) -> nn.Module:
    from effx_lab.models.torch_ops import TinyLM

    if not isinstance(model, TinyLM):
        raise TypeError(
            "model must be an effx_lab.models.torch_ops.TinyLM (load_pretrained_tinylm('torch')), "
            f"got {describe(model)}"
        )
    return model


def quantize_tinylm(
    model: nn.Module,
    method: str,
    *,
    calib_tokens: Any = None,
    bits: int = 8,
    group_size: int | None = None,
    threshold: float = 6.0,
    alpha: float = 0.5,
    a_bits: int | None = 8,
    act_granularity: str = "tensor",
    symmetric: bool = False,
    smooth_layers: str = "ln",
    calib_seq_len: int = 64,
    max_calib_tokens: int | None = None,
    skip: Iterable[str] = (),
) -> nn.Module:
    """A quantized copy of a TinyLM: each ``nn.Linear`` (not in ``skip``) becomes a :class:`QuantizedLinear`.

    ``method``:

    * ``"rtn"``: weight-only round-to-nearest at ``bits``, per output row (``group_size=None``) or per group of
      ``group_size`` input features, affine unless ``symmetric`` (``rtn_quantize_weight``).
    * ``"gptq"``: weight-only GPTQ (Frantar et al. 2023) with the same grid as ``"rtn"``. Sequential, layer by
      layer in ``named_modules`` order (the execution order for TinyLM): the Hessian ``2 X^T X / n`` of a
      layer uses the inputs ``X`` it receives from the *already quantized* earlier layers on
      ``calib_tokens`` (required).
    * ``"w8a8"``: symmetric absmax weights at ``bits`` per output channel, activations at ``a_bits`` per
      tensor or per token (``act_granularity``), dynamic; ``a_bits=None`` gives weight-only absmax.
    * ``"llm_int8"``: LLM.int8()'s decomposition (Dettmers et al. 2022): input columns with a value
      ``> threshold`` in float, the rest vector-wise ``bits``-bit (``llm_int8_linear``).
    * ``"smoothquant"``: SmoothQuant (Xiao et al. 2023) with migration strength ``alpha``; the per-channel
      ``max|X_j|`` come from ``calib_tokens`` (required); then ``bits``-bit per-tensor (or per-token)
      activations and per-channel weights (``smoothquant_linear``). With ``smooth_layers="ln"`` (default, as
      in the paper's code) only the layers fed by a LayerNorm are smoothed (``attn.qkv``, ``mlp.fc1``: there
      ``1/s`` folds into the LayerNorm offline); ``attn.proj`` and ``mlp.fc2`` get the plain ``"w8a8"``
      scheme at ``bits``. ``smooth_layers="all"`` smooths every layer (simulation only: no offline folding
      exists for the inputs of ``proj`` and ``fc2``).
    * ``"zeroquant"``: ZeroQuant (Yao et al. 2022): group-wise weights (``bits``, ``group_size``, default 64)
      and token-wise activations (``a_bits``, default 8) (``zeroquant_linear``).

    The tied output head, embeddings and LayerNorms stay float32 (the head is not an ``nn.Linear``).
    Calibration windows are ``calib_seq_len`` tokens long; ``max_calib_tokens`` caps how many are used.
    """
    _check_tinylm(model)
    method = check_choice("method", method, TINYLM_METHODS)
    bits = _check_bits("bits", bits)
    symmetric = check_bool("symmetric", symmetric)
    act_granularity = check_choice("act_granularity", act_granularity, _ACT_GRANULARITIES)
    smooth_layers = check_choice("smooth_layers", smooth_layers, SMOOTH_LAYERS)
    if a_bits is not None:
        a_bits = _check_bits("a_bits", a_bits)
    in_features = {n: model.get_submodule(n).in_features for n in linear_names(model)}
    group_size = _check_group_size(group_size, in_features)
    threshold = _check_threshold(threshold)
    alpha = check_float("alpha", alpha, min_value=0.0, max_value=1.0)
    calib_seq_len = check_int("calib_seq_len", calib_seq_len, min_value=1, max_value=model.config.max_seq_len)
    if method in ("gptq", "smoothquant") and calib_tokens is None:
        raise ValueError(f"method={method!r} needs calib_tokens (a 1-D token stream, e.g. calibration_tokens(8192))")
    record = {"seq_len": calib_seq_len, "max_tokens": max_calib_tokens}

    if method == "gptq":
        return _gptq_tinylm(model, calib_tokens, bits, group_size, symmetric, skip, record)

    absmax: dict[str, torch.Tensor] = {}
    if method == "smoothquant":
        absmax = linear_input_absmax(model, calib_tokens, **record)
    elif method == "zeroquant":
        group_size = _check_group_size(64 if group_size is None else group_size, in_features)

    def make(name: str, lin: nn.Linear) -> QuantizedLinear:
        w, b = lin.weight.detach(), None if lin.bias is None else lin.bias.detach()
        if method == "rtn":
            w_hat = T.rtn_quantize_weight(w, bits=bits, group_size=group_size, symmetric=symmetric)
            return QuantizedLinear(w_hat, b, name=name, scheme=_scheme_name("rtn", bits, group_size))
        plain = method == "smoothquant" and smooth_layers == "ln" and not name.endswith(_TINYLM_LN_FED)
        if method == "w8a8" or plain:
            a = bits if plain else a_bits
            w_hat = _weight_fake_quantize(w, bits, "channel")
            mm = _act_quant_matmul(a, act_granularity)
            scheme = f"w{bits}a{a or 32} (weights per channel, activations per {act_granularity})"
            return QuantizedLinear(w_hat, b, mm, name=name, scheme=scheme)
        if method == "llm_int8":
            mm = functools.partial(_llm_int8, threshold=threshold, bits=bits)
            return QuantizedLinear(w, b, mm, name=name, scheme=f"llm_int8 (threshold {threshold}, {bits} bits)")
        if method == "smoothquant":
            mm = functools.partial(
                _smoothquant, alpha=alpha, act_absmax=absmax[name], act_granularity=act_granularity, bits=bits
            )
            return QuantizedLinear(w, b, mm, name=name, scheme=f"smoothquant (alpha {alpha}, W{bits}A{bits})")
        a = 8 if a_bits is None else a_bits
        mm = functools.partial(_zeroquant, w_bits=bits, group_size=group_size, a_bits=a)
        return QuantizedLinear(w, b, mm, name=name, scheme=f"zeroquant (W{bits} g{group_size}, A{a} per token)")

    return replace_linears(model, make, skip=skip)


def _scheme_name(method: str, bits: int, group_size: int | None) -> str:
    return f"{method} {bits}-bit " + ("per channel" if group_size is None else f"group {group_size}")


def _llm_int8(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, *, threshold: float, bits: int):
    return T.llm_int8_linear(x, weight, bias, threshold=threshold, bits=bits)


def _smoothquant(x, weight, bias, *, alpha, act_absmax, act_granularity, bits):
    return T.smoothquant_linear(
        x, weight, bias, alpha=alpha, act_absmax=act_absmax.to(x.device), act_granularity=act_granularity, bits=bits
    )


def _rtn(w: torch.Tensor, *, bits: int, group_size: int | None, symmetric: bool) -> torch.Tensor:
    return T.rtn_quantize_weight(w, bits=bits, group_size=group_size, symmetric=symmetric)


def _gptq_weight(w: torch.Tensor, *, x: torch.Tensor, bits: int, group_size: int | None, symmetric: bool):
    """GPTQ-quantized ``w`` with the Hessian of the calibration inputs ``x``."""
    h = T.gptq_hessian(x.to(w.device, torch.float32))
    return T.gptq_quantize(w, h, bits=bits, group_size=group_size, symmetric=symmetric).weight


def _zeroquant(x, weight, bias, *, w_bits, group_size, a_bits):
    return T.zeroquant_linear(x, weight, bias, w_bits=w_bits, group_size=group_size, a_bits=a_bits)


def _gptq_tinylm(model, calib_tokens, bits, group_size, symmetric, skip, record) -> nn.Module:
    # a plain deep copy first (every layer still nn.Linear), then layers are swapped one at a time, so the
    # inputs recorded for layer k come from the model whose layers 0..k-1 are already quantized
    names = linear_names(model)
    skip = _check_skip(skip, names)
    qmodel = copy.deepcopy(model)
    for name in names:
        if name in skip:
            continue
        x = _record(qmodel, calib_tokens, batch_size=16, names=[name], absmax=False, stop_early=True, **record)[name]
        lin = qmodel.get_submodule(name)
        w = lin.weight.detach()
        res = T.gptq_quantize(w, T.gptq_hessian(x), bits=bits, group_size=group_size, symmetric=symmetric)
        bias = None if lin.bias is None else lin.bias.detach()
        _set_submodule(
            qmodel, name, QuantizedLinear(res.weight, bias, name=name, scheme=_scheme_name("gptq", bits, group_size))
        )
    return qmodel


def tinylm_perplexity(model: nn.Module, tokens: Any, seq_len: int = 128, max_batches: int | None = None) -> float:
    """Perplexity of a (quantized) TinyLM on a token stream: :func:`effx_lab.models.perplexity` (windows of
    ``seq_len``, batches of 16, ``max_batches`` caps the batches). ``tokens`` may be NumPy or torch."""
    from effx_lab.models import perplexity

    _check_tinylm(model)
    check_array("tokens", tokens, ndim=1, dtype_kind="iu", allow_torch=True)
    if isinstance(tokens, torch.Tensor):
        tokens = tokens.detach().cpu().numpy()
    return perplexity(model, tokens, seq_len=seq_len, max_batches=max_batches)


# ==========================================================================================================
# MiniLM
# ==========================================================================================================
_MINILM_SUFFIXES = (
    "attention.self.query",
    "attention.self.key",
    "attention.self.value",
    "attention.output.dense",
    "intermediate.dense",
    "output.dense",
)


def _check_config(config: Any) -> MiniLMConfig:
    if not isinstance(config, MiniLMConfig):
        raise TypeError(f"config must be a MiniLMConfig (from load_minilm()), got {describe(config)}")
    return config


def minilm_linear_names(config: MiniLMConfig) -> list[str]:
    """The ``num_hidden_layers * 6`` linear layers of MiniLM in execution order (query, key, value,
    attention.output.dense, intermediate.dense, output.dense of each layer), e.g.
    ``"encoder.layer.3.intermediate.dense"``; ``params[name + ".weight"]`` is ``[out, in]``."""
    _check_config(config)
    return [f"encoder.layer.{i}.{s}" for i in range(config.num_hidden_layers) for s in _MINILM_SUFFIXES]


def _check_minilm_params(params: Any, config: MiniLMConfig) -> None:
    if not isinstance(params, dict):
        raise TypeError(f"params must be a dict (from load_minilm()), got {describe(params)}")
    missing = [n + ".weight" for n in minilm_linear_names(config) if n + ".weight" not in params]
    if missing:
        raise ValueError(
            f"params is missing {len(missing)} linear weights, e.g. {missing[0]!r}: pass load_minilm()'s dict"
        )


def _as_ids_mask(ids: Any, mask: Any) -> tuple[torch.Tensor, torch.Tensor]:
    check_array("ids", ids, ndim=2, dtype_kind="iu", allow_torch=True)
    check_array("mask", mask, ndim=2, dtype_kind="iub", allow_torch=True)
    ids_t = torch.as_tensor(ids).long()
    mask_t = torch.as_tensor(mask).to(ids_t.device).long()
    if tuple(mask_t.shape) != tuple(ids_t.shape):
        raise ValueError(f"mask must have the shape of ids {tuple(ids_t.shape)}, got {tuple(mask_t.shape)}")
    if ids_t.shape[0] < 1 or ids_t.shape[1] < 1:
        raise ValueError(f"ids must have shape [batch, seq] with batch >= 1 and seq >= 1, got {tuple(ids_t.shape)}")
    return ids_t, mask_t


def _batches(ids: torch.Tensor, mask: torch.Tensor, batch_size: int):
    """``(ids, mask)`` of consecutive batches of ``batch_size`` sentences, each cut to its longest sentence
    (the trailing columns that are padding in every row are dropped), as if each batch had been tokenized on
    its own: less work, and dynamic activation scales never see padding a batch does not need."""
    for b in range(0, ids.shape[0], batch_size):
        i, m = ids[b : b + batch_size], mask[b : b + batch_size]
        cols = torch.nonzero(m.any(dim=0))
        length = int(cols.max()) + 1 if cols.numel() else 1
        yield i[:, :length], m[:, :length]


def _weight_of(params: dict, name: str) -> torch.Tensor:
    return torch.as_tensor(params[name + ".weight"])


def record_minilm_linears(
    params: dict[str, Any],
    config: MiniLMConfig,
    ids: Any,
    mask: Any,
    *,
    keep_inputs: bool = True,
    max_tokens: int | None = 4096,
    batch_size: int = 64,
) -> dict[str, dict[str, torch.Tensor]]:
    """Statistics of every linear layer of MiniLM over the *real* (unpadded) tokens of ``ids``/``mask``.

    Returns ``{name: {"in_absmax": [in], "out_absmax": [out], "inputs": [n, in]}}`` (float32, CPU):
    per-feature ``max |x|`` of the layer's input and output, and (``keep_inputs``) the inputs themselves,
    the first ``max_tokens`` real tokens (``None``: all), for GPTQ's Hessian. The forward runs
    ``batch_size`` sentences at a time with the float weights.
    """
    _check_config(config)
    _check_minilm_params(params, config)
    keep_inputs = check_bool("keep_inputs", keep_inputs)
    if max_tokens is not None:
        max_tokens = check_int("max_tokens", max_tokens, min_value=1)
    batch_size = check_int("batch_size", batch_size, min_value=1)
    ids_t, mask_t = _as_ids_mask(ids, mask)
    names = minilm_linear_names(config)
    in_max: dict[str, torch.Tensor] = {}
    out_max: dict[str, torch.Tensor] = {}
    inputs: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    kept = {n: 0 for n in names}
    real: torch.Tensor = torch.empty(0)

    def hook(name: str, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, weight, bias)
        xr, yr = x[real].float(), y[real].float()
        if xr.shape[0]:
            a, o = xr.abs().amax(dim=0).cpu(), yr.abs().amax(dim=0).cpu()
            in_max[name] = a if name not in in_max else torch.maximum(in_max[name], a)
            out_max[name] = o if name not in out_max else torch.maximum(out_max[name], o)
        if keep_inputs and (max_tokens is None or kept[name] < max_tokens):
            take = xr if max_tokens is None else xr[: max_tokens - kept[name]]
            inputs[name].append(take.cpu().clone())
            kept[name] += take.shape[0]
        return y

    from effx_lab.models.torch_ops import minilm_forward

    with torch.no_grad():
        for i, m in _batches(ids_t, mask_t, batch_size):
            real = m.bool()
            minilm_forward(params, config, i, m, linear=hook)
    if not in_max:
        raise ValueError("mask selects no real token (all zeros)")
    out: dict[str, dict[str, torch.Tensor]] = {}
    for n in names:
        out[n] = {"in_absmax": in_max[n], "out_absmax": out_max[n]}
        if keep_inputs:
            out[n]["inputs"] = torch.cat(inputs[n])
    return out


def _check_calib(calib: Any, names: list[str], key: str, method: str) -> dict:
    if calib is None:
        raise ValueError(f"method={method!r} needs calib=record_minilm_linears(params, config, calib_ids, calib_mask)")
    if not isinstance(calib, dict):
        raise TypeError(f"calib must be the dict returned by record_minilm_linears, got {describe(calib)}")
    missing = [n for n in names if n not in calib or key not in calib[n]]
    if missing:
        raise ValueError(
            f"calib has no {key!r} for layer {missing[0]!r}: pass record_minilm_linears(...)"
            + (" with keep_inputs=True" if key == "inputs" else "")
        )
    return calib


def minilm_quant_hook(
    method: str,
    *,
    params: dict[str, Any],
    config: MiniLMConfig,
    calib: dict | None = None,
    bits: int = 8,
    threshold: float = 6.0,
    alpha: float = 0.5,
    group_size: int | None = None,
    weight_bits: int | None = None,
    act_bits: int | None = None,
    act_granularity: str = "tensor",
    weight_granularity: str = "channel",
    symmetric: bool = False,
    smooth_layers: str = "ln",
) -> Callable[[str, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """A hook ``linear(name, x, weight, bias)`` for ``minilm_forward(params, config, ids, mask, linear=hook)``
    that computes every linear layer of MiniLM with a quantization ``method``:

    * ``"float"``: ``F.linear`` (the baseline; reproduces ``minilm_forward`` without a hook exactly);
    * ``"w8a32"``: weights only, symmetric absmax at ``weight_bits`` (default ``bits``) per output channel
      (``weight_granularity="tensor"``: one scale per matrix);
    * ``"w32a8"``: activations only, symmetric absmax at ``act_bits`` (default ``bits``), dynamic, per
      tensor (``act_granularity="token"``: one scale per token);
    * ``"w8a8"``: both of the above;
    * ``"llm_int8"``: LLM.int8() with ``threshold`` at ``bits``;
    * ``"smoothquant"``: SmoothQuant with ``alpha``, ``max|X_j|`` from ``calib`` (required), ``bits``-bit
      activations per tensor (or per token) and weights per channel. ``smooth_layers="ln"`` (default, as in
      the paper's code) smooths only the layers fed by a LayerNorm (query, key, value, intermediate.dense),
      where ``1/s`` folds into the LayerNorm offline; attention.output.dense and output.dense (fed by the
      attention context and by GELU) get plain W8A8 at ``bits``. ``"all"`` smooths every layer;
    * ``"zeroquant"``: group-wise weights (``weight_bits``, ``group_size`` default 64), token-wise activations
      (``act_bits``);
    * ``"rtn"``: weight-only round-to-nearest at ``bits``, per channel or per ``group_size`` (affine unless
      ``symmetric``);
    * ``"gptq"``: weight-only GPTQ, same grid as ``"rtn"``, each layer's Hessian from the float model's
      inputs in ``calib`` (required, with ``"inputs"``). This is the *one-shot, independent* variant:
      :func:`gptq_minilm` is the sequential one (each layer calibrated on the already-quantized model).

    ``calib`` is the dict of :func:`record_minilm_linears` on calibration sentences. A layer's weight is
    quantized once, from ``params``, on the layer's first call (so the first forward pass of a GPTQ hook
    includes its 36 GPTQ runs), then cached; the hook checks it is called with those same weights. It runs
    on the device of ``x``.
    """
    method = check_choice("method", method, MINILM_METHODS)
    _check_config(config)
    _check_minilm_params(params, config)
    bits = _check_bits("bits", bits)
    w_bits = bits if weight_bits is None else _check_bits("weight_bits", weight_bits)
    a_bits = bits if act_bits is None else _check_bits("act_bits", act_bits)
    act_granularity = check_choice("act_granularity", act_granularity, _ACT_GRANULARITIES)
    weight_granularity = check_choice("weight_granularity", weight_granularity, _WEIGHT_GRANULARITIES)
    symmetric = check_bool("symmetric", symmetric)
    smooth_layers = check_choice("smooth_layers", smooth_layers, SMOOTH_LAYERS)
    threshold = _check_threshold(threshold)
    alpha = check_float("alpha", alpha, min_value=0.0, max_value=1.0)
    names = minilm_linear_names(config)
    in_features = {n: int(params[n + ".weight"].shape[1]) for n in names}
    if method == "zeroquant":
        group_size = _check_group_size(64 if group_size is None else group_size, in_features)
    else:
        group_size = _check_group_size(group_size, in_features)

    sources = {n: _weight_of(params, n) for n in names}
    # replacement weights (quantized-dequantized), for the methods that have them: made on a layer's first call
    quantizers: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {}
    weights: dict[str, torch.Tensor] = {}
    matmuls: dict[str, Callable] = {}
    if method in ("w8a32", "w8a8"):
        quantizers = {
            n: functools.partial(_weight_fake_quantize, bits=w_bits, granularity=weight_granularity) for n in names
        }
    elif method == "rtn":
        rtn = functools.partial(_rtn, bits=bits, group_size=group_size, symmetric=symmetric)
        quantizers = {n: rtn for n in names}
    elif method == "gptq":
        calib = _check_calib(calib, names, "inputs", method)
        quantizers = {
            n: functools.partial(
                _gptq_weight, x=calib[n]["inputs"], bits=bits, group_size=group_size, symmetric=symmetric
            )
            for n in names
        }
    if method in ("w32a8", "w8a8"):
        matmuls = {n: _act_quant_matmul(a_bits, act_granularity) for n in names}
    elif method == "llm_int8":
        matmuls = {n: functools.partial(_llm_int8, threshold=threshold, bits=bits) for n in names}
    elif method == "smoothquant":
        smoothed = [n for n in names if smooth_layers == "all" or n.endswith(_MINILM_LN_FED)]
        calib = _check_calib(calib, smoothed, "in_absmax", method)
        for n in names:
            if n in smoothed:
                matmuls[n] = functools.partial(
                    _smoothquant,
                    alpha=alpha,
                    act_absmax=calib[n]["in_absmax"],
                    act_granularity=act_granularity,
                    bits=bits,
                )
            else:  # plain W8A8 (per-channel weights) at `bits`
                quantizers[n] = functools.partial(_weight_fake_quantize, bits=bits, granularity="channel")
                matmuls[n] = _act_quant_matmul(bits, act_granularity)
    elif method == "zeroquant":
        matmuls = {n: functools.partial(_zeroquant, w_bits=w_bits, group_size=group_size, a_bits=a_bits) for n in names}

    def hook(name: str, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if name not in sources:
            raise ValueError(f"hook called for an unknown layer {name!r}; MiniLM's layers: {names[:6]} ...")
        src = sources[name]
        if weight.shape != src.shape or (
            weight.data_ptr() != src.data_ptr() and not torch.equal(weight, src.to(weight.device))
        ):
            raise ValueError(
                f"the hook for layer {name!r} was built from other weights than the ones minilm_forward passes: "
                "build it with the same params"
            )
        w = weight
        if name in quantizers:
            if name not in weights:
                weights[name] = quantizers[name](src.float())
            w = weights[name].to(device=x.device, dtype=x.dtype)
        return matmuls.get(name, F.linear)(x, w, bias)

    hook.method = method  # type: ignore[attr-defined]
    return hook


def _minilm_layer_input(
    params: dict, config: MiniLMConfig, ids: torch.Tensor, mask: torch.Tensor, target: str, max_tokens, batch_size
) -> torch.Tensor:
    """Inputs (real tokens, at most ``max_tokens``) of MiniLM's layer ``target``; each forward stops there."""
    from effx_lab.models.torch_ops import minilm_forward

    chunks: list[torch.Tensor] = []
    kept = 0
    real = torch.empty(0, dtype=torch.bool)

    def hook(name: str, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        nonlocal kept
        if name == target:
            xr = x[real].float()
            take = xr if max_tokens is None else xr[: max_tokens - kept]
            chunks.append(take.clone())
            kept += take.shape[0]
            raise _StopForward
        return F.linear(x, weight, bias)

    with torch.no_grad():
        for i, m in _batches(ids, mask, batch_size):
            if max_tokens is not None and kept >= max_tokens:
                break
            real = m.bool()
            try:
                minilm_forward(params, config, i, m, linear=hook)
            except _StopForward:
                pass
    x = torch.cat(chunks)
    if x.shape[0] == 0:
        raise ValueError("calib_mask selects no real token (all zeros)")
    return x


def gptq_minilm(
    params: dict[str, Any],
    config: MiniLMConfig,
    calib_ids: Any,
    calib_mask: Any,
    bits: int = 4,
    group_size: int | None = None,
    *,
    symmetric: bool = False,
    max_tokens: int | None = 4096,
    batch_size: int = 64,
) -> dict[str, np.ndarray]:
    """Sequential GPTQ of MiniLM's 36 linear layers; returns new params (float32 NumPy arrays, a copy).

    Layers are quantized in execution order; the Hessian ``2 X^T X / n`` of each uses the inputs ``X`` (real
    tokens of the calibration sentences, at most ``max_tokens``) that the layer receives from the model whose
    earlier layers are *already quantized*, so later layers compensate for earlier errors (query, key and
    value share one recording: they see the same input). Evaluate with ``minilm_embeddings(new_params, ...)``
    (no hook needed: the weights are dequantized floats).
    """
    _check_config(config)
    _check_minilm_params(params, config)
    bits = _check_bits("bits", bits)
    symmetric = check_bool("symmetric", symmetric)
    if max_tokens is not None:
        max_tokens = check_int("max_tokens", max_tokens, min_value=1)
    batch_size = check_int("batch_size", batch_size, min_value=1)
    ids_t, mask_t = _as_ids_mask(calib_ids, calib_mask)
    names = minilm_linear_names(config)
    group_size = _check_group_size(group_size, {n: int(params[n + ".weight"].shape[1]) for n in names})
    new = {
        k: np.array(torch.as_tensor(v).detach().cpu().numpy(), dtype=np.float32, copy=True) for k, v in params.items()
    }
    # layers sharing one input are quantized from one recording
    groups: list[list[str]] = []
    for n in names:
        if n.endswith(("attention.self.key", "attention.self.value")):
            groups[-1].append(n)
        else:
            groups.append([n])
    for group in groups:
        x = _minilm_layer_input(new, config, ids_t, mask_t, group[0], max_tokens, batch_size)
        h = T.gptq_hessian(x)
        for n in group:
            w = torch.from_numpy(new[n + ".weight"])
            res = T.gptq_quantize(w, h, bits=bits, group_size=group_size, symmetric=symmetric)
            new[n + ".weight"] = res.weight.detach().cpu().numpy().astype(np.float32, copy=True)
    return new


def minilm_embeddings(
    params: dict[str, Any],
    config: MiniLMConfig,
    ids: Any,
    mask: Any,
    hook: Callable | None = None,
    *,
    batch_size: int = 64,
) -> torch.Tensor:
    """Sentence embeddings ``[B, hidden]`` (float32, unit norm: mean over real tokens, then L2-normalised)
    of MiniLM with every linear layer computed by ``hook`` (``None``: float). Runs under ``torch.no_grad``,
    ``batch_size`` sentences at a time, each batch cut to its longest sentence (dynamic activation scales see
    one batch: its real tokens and the padding of its shorter sentences), on the device of ``ids``."""
    from effx_lab.models.torch_ops import mean_pool_normalize, minilm_forward

    _check_config(config)
    if hook is not None and not callable(hook):
        raise TypeError(f"hook must be None or a callable linear(name, x, weight, bias) -> y, got {describe(hook)}")
    batch_size = check_int("batch_size", batch_size, min_value=1)
    ids_t, mask_t = _as_ids_mask(ids, mask)
    out = []
    with torch.no_grad():
        for i, m in _batches(ids_t, mask_t, batch_size):
            hidden = minilm_forward(params, config, i, m, linear=hook)
            out.append(mean_pool_normalize(hidden.float(), m))
    return torch.cat(out)


def embedding_agreement(ref: Any, test: Any, k: int = 5) -> dict[str, float]:
    """How well embeddings ``test`` ``[N, D]`` (of a quantized model) agree with ``ref`` (of the float model).

    * ``cosine_mean`` / ``cosine_min``: cosine similarity of each sentence's two embeddings;
    * ``top1_agreement``: fraction of sentences whose nearest neighbour among the *other* sentences (by
      cosine) is the same under ``ref`` and ``test`` (a retrieval view: does search still return the same?);
    * ``topk_overlap``: mean ``|top-k(ref) ∩ top-k(test)| / k``.

    NumPy arrays or torch tensors; computed in float64. ``N >= 2``, ``1 <= k <= N - 1``.
    """
    check_array("ref", ref, ndim=2, dtype_kind="f", allow_torch=True, finite=True)
    check_array("test", test, ndim=2, dtype_kind="f", allow_torch=True, finite=True)
    r = torch.as_tensor(ref).detach().to("cpu", torch.float64)
    t = torch.as_tensor(test).detach().to("cpu", torch.float64)
    if r.shape != t.shape:
        raise ValueError(f"test must have the shape of ref {tuple(r.shape)}, got {tuple(t.shape)}")
    n = r.shape[0]
    if n < 2:
        raise ValueError(f"ref must hold at least 2 embeddings (rows) for nearest neighbours, got {n}")
    k = check_int("k", k, min_value=1, max_value=n - 1)
    rn, tn = F.normalize(r, dim=1), F.normalize(t, dim=1)
    if bool((r.norm(dim=1) == 0).any()) or bool((t.norm(dim=1) == 0).any()):
        raise ValueError("ref and test must not contain all-zero rows (cosine undefined)")
    cos = (rn * tn).sum(dim=1)
    eye = torch.eye(n, dtype=torch.bool)
    s_ref = (rn @ rn.T).masked_fill(eye, -math.inf)
    s_test = (tn @ tn.T).masked_fill(eye, -math.inf)
    top_ref, top_test = s_ref.topk(k, dim=1).indices, s_test.topk(k, dim=1).indices
    overlap = (top_ref[:, :, None] == top_test[:, None, :]).any(dim=2).sum(dim=1).double() / k
    return {
        "cosine_mean": float(cos.mean()),
        "cosine_min": float(cos.min()),
        "top1_agreement": float((top_ref[:, 0] == top_test[:, 0]).double().mean()),
        "topk_overlap": float(overlap.mean()),
    }


# ==========================================================================================================
# Cached data: sentences for MiniLM, token streams for TinyLM
# ==========================================================================================================
_HEADER = re.compile(r"[*=\-~^]{3,}")
_MIN_WORDS, _MAX_WORDS = 8, 40
_CALIB_EVERY = 3  # every 3rd sentence of the pool is reserved for calibration, the others for evaluation


@functools.lru_cache(maxsize=1)
def _sentence_pools() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Prose paragraphs of CPython's help text (sorted topics, paragraphs in order): not indented (code),
    not a title (a line of ``***``), 8 to 40 words (most fit 64 WordPiece tokens), each kept once; the
    i-th (0-based) goes to the calibration pool when ``i % 3 == 0``, else to the evaluation pool."""
    from pydoc_data.topics import topics

    pool: list[str] = []
    seen: set[str] = set()
    for key in sorted(topics):
        for para in topics[key].split("\n\n"):
            if not para.strip() or para[0].isspace():
                continue
            lines = para.split("\n")
            if any(_HEADER.fullmatch(line.strip()) for line in lines):
                continue
            text = re.sub(r"\s+", " ", " ".join(line.strip() for line in lines)).strip()
            if not _MIN_WORDS <= len(text.split()) <= _MAX_WORDS or text in seen:
                continue
            seen.add(text)
            pool.append(text)
    calib = tuple(s for i, s in enumerate(pool) if i % _CALIB_EVERY == 0)
    evals = tuple(s for i, s in enumerate(pool) if i % _CALIB_EVERY != 0)
    return calib, evals


def _sample(pool: tuple[str, ...], n: Any, seed: Any, what: str) -> list[str]:
    n = check_int("n", n, min_value=1)
    seed = check_int("seed", seed, min_value=0)
    if n > len(pool):
        raise ValueError(f"n must be <= {len(pool)} (the {what} pool's size on this Python), got {n}")
    idx = np.random.default_rng(seed).permutation(len(pool))[:n]
    return [pool[i] for i in idx]


def calibration_sentences(n: int = 64, seed: int = 0) -> list[str]:
    """``n`` English sentences for calibration, drawn (``seed``) from the calibration pool of CPython's help
    text; never overlaps :func:`eval_sentences` whatever the seeds. Deterministic for a given Python."""
    return _sample(_sentence_pools()[0], n, seed, "calibration")


def eval_sentences(n: int = 256, seed: int = 1) -> list[str]:
    """``n`` English sentences for evaluation, drawn (``seed``) from the evaluation pool (disjoint from the
    calibration pool)."""
    return _sample(_sentence_pools()[1], n, seed, "evaluation")


@functools.lru_cache(maxsize=1)
def _tokenizer():
    from effx_lab.models import MiniLMTokenizer

    return MiniLMTokenizer()


def tokenize_sentences(sentences: list[str], max_length: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """MiniLM's WordPiece ``(ids, mask)`` (int64 ``[n, T]``, padded to the longest, truncated to
    ``max_length``) with a tokenizer loaded once."""
    return _tokenizer()(sentences, max_length=max_length)


@functools.lru_cache(maxsize=1)
def _token_splits() -> tuple[np.ndarray, np.ndarray]:
    from effx_lab.data import ByteTokenizer, load_corpus_splits

    train, val = load_corpus_splits()
    tok = ByteTokenizer()
    a, b = tok.encode(train), tok.encode(val)
    a.flags.writeable = False
    b.flags.writeable = False
    return a, b


def calibration_tokens(n_tokens: int = 8192, seed: int = 0) -> np.ndarray:
    """A contiguous slice of ``n_tokens`` byte tokens (int64) of the *training* split, starting at an offset
    drawn with ``seed``: calibration data TinyLM has seen in training, as in the papers' setups."""
    train = _token_splits()[0]
    n_tokens = check_int("n_tokens", n_tokens, min_value=1, max_value=train.shape[0])
    seed = check_int("seed", seed, min_value=0)
    start = int(np.random.default_rng(seed).integers(0, train.shape[0] - n_tokens + 1))
    return train[start : start + n_tokens].copy()


def eval_tokens(n_tokens: int | None = None) -> np.ndarray:
    """The first ``n_tokens`` byte tokens (int64; ``None``: all, about 11k) of the held-out *validation*
    split, which neither training nor :func:`calibration_tokens` ever sees."""
    val = _token_splits()[1]
    if n_tokens is not None:
        n_tokens = check_int("n_tokens", n_tokens, min_value=1, max_value=val.shape[0])
    return val[:n_tokens].copy()
