"""Quantizing whole models: TinyLM (an ``nn.Module``) and MiniLM (a functional encoder),
chapter 2.

The layer-level methods live in :mod:`effx_lab.quant.torch_ops` (uniform fake
quantization; LLM.int8, SmoothQuant and ZeroQuant from ``_torch_outliers``; RTN and GPTQ
from ``_torch_gptq``). This module applies them to every linear layer of a model and
measures what the model as a whole loses. PyTorch only. The model surgery it builds on
(finding, replacing and recording linear layers) is shared by every chapter and lives in
:mod:`effx_lab.models.surgery`; the calibration and evaluation data in
:mod:`effx_lab.data.pools`.

Two ways of swapping a model's linear layers, one per model:

* **TinyLM** (:class:`effx_lab.models.torch_ops.TinyLM`) is an ``nn.Module`` whose eight
  linear layers are ``nn.Linear`` modules named ``layers.{i}.attn.qkv``,
  ``layers.{i}.attn.proj``, ``layers.{i}.mlp.fc1`` and ``layers.{i}.mlp.fc2``.
  :func:`quantize_tinylm` (on a copy) and :func:`quantize_` (in place, torchao's verb,
  with a config from :mod:`effx_lab.quant.configs`) put a :class:`QuantizedLinear` (a
  weight, a bias and the scheme's ``matmul(x, weight, bias)``) in place of each. The
  output head is tied to the token embedding (``logits = h @ tok_emb.weight.T``, an
  ``F.linear`` call, not an ``nn.Linear``): it stays in float32, as do the embeddings
  and LayerNorms, as in the papers. :func:`fold_smoothquant` returns a float copy with
  SmoothQuant's ``1/s`` folded into the LayerNorms (exact up to rounding: the blocks are
  pre-LN).
* **MiniLM** (all-MiniLM-L6-v2) is a parameter dict run by
  :func:`effx_lab.models.torch_ops.minilm_forward`, which calls a hook ``linear(name, x,
  weight, bias)`` for each of its 36 linear layers. :func:`minilm_quant_hook` returns
  such a hook for a method; the shared
  :func:`effx_lab.models.evaluation.minilm_embeddings` and
  :func:`~effx_lab.models.evaluation.embedding_agreement` measure the damage on sentence
  embeddings.

Activation quantization is *dynamic* and *simulated* everywhere: a per-tensor scale is
the absmax of the tensor the layer receives in this call (for MiniLM, one batch of
sentences, padding included: results depend a little on the batching, which
:func:`~effx_lab.models.evaluation.minilm_embeddings` keeps deterministic), a per-token scale the absmax of each
row; values are quantized, dequantized and multiplied in float. SmoothQuant's
per-channel smoothing factors, by contrast, come from calibration data (``act_absmax``),
and by default only the layers fed by a LayerNorm are smoothed, as in the paper's code
(the others cannot fold ``1/s`` anywhere offline and get plain W8A8). Model weights
never change in place, except under :func:`quantize_`, which says so: every other
function returns a copy. Calibration and evaluation data are disjoint and deterministic
(:func:`effx_lab.data.calibration_sentences` / :func:`effx_lab.data.eval_sentences` for
MiniLM, :func:`effx_lab.data.calibration_tokens` / :func:`effx_lab.data.eval_tokens` for
TinyLM).
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from effx_lab._validate import (
    check_array,
    check_bool,
    check_choice,
    check_float,
    check_int,
    describe,
)
from effx_lab.data.pools import check_token_stream
from effx_lab.models.config import MiniLMConfig
from effx_lab.progress import progress_bar
from effx_lab.models.surgery import (
    check_ids_mask,
    check_minilm_linear_weights,
    collect_linear_inputs,
    linear_input_absmax,
    linear_names,
    minilm_layer_inputs,
    minilm_linear_names,
    replace_linears,
    set_submodule,
)

from . import torch_ops as T

# the same validation as the layer-level functions
from ._np_outliers import (
    ACT_GRANULARITIES,
    WEIGHT_GRANULARITIES,
    _check_bits,
    _check_threshold,
)
from .configs import SMOOTH_LAYERS, QuantConfig

__all__ = [
    "MINILM_METHODS",
    "SMOOTH_LAYERS",
    "TINYLM_METHODS",
    "QuantizedLinear",
    "fold_smoothquant",
    "gptq_minilm",
    "minilm_quant_hook",
    "minilm_smoothing_factors",
    "quantize_",
    "quantize_tinylm",
    "tinylm_perplexity",
]

#: methods of :func:`quantize_tinylm`
TINYLM_METHODS = ("rtn", "gptq", "w8a8", "llm_int8", "smoothquant", "zeroquant")
#: methods of :func:`minilm_quant_hook` ("float" is the unquantized baseline, F.linear)
MINILM_METHODS = (
    "float", "w8a32", "w32a8", "w8a8", "llm_int8", "smoothquant", "zeroquant", "rtn",
    "gptq",
)

_TINYLM_LN_FED = ("attn.qkv", "mlp.fc1")  # inputs: ln1(x), ln2(x) (pre-LN blocks)
_MINILM_LN_FED = (
    "attention.self.query",
    "attention.self.key",
    "attention.self.value",
    "intermediate.dense",
)


def _is_float_linear(module: nn.Module) -> bool:
    """The layers the TinyLM quantizers replace: plain ``nn.Linear`` (a
    :class:`QuantizedLinear` already in the model is left as it is)."""
    return isinstance(module, nn.Linear)


# ==========================================================================================================
# The layer a quantized model computes with
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
    act_granularity = check_choice("act_granularity", act_granularity, ACT_GRANULARITIES)
    smooth_layers = check_choice("smooth_layers", smooth_layers, SMOOTH_LAYERS)
    if a_bits is not None:
        a_bits = _check_bits("a_bits", a_bits)
    float_linears = linear_names(model, is_linear=_is_float_linear)
    in_features = {n: model.get_submodule(n).in_features for n in float_linears}
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

    return replace_linears(model, make, skip=skip, is_linear=_is_float_linear)


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
    # a plain deep copy first (every layer still nn.Linear) whose layers are swapped one
    # at a time, in place, so the inputs recorded for layer k come from the model whose
    # layers 0..k-1 are already quantized
    qmodel = copy.deepcopy(model)
    scheme = _scheme_name("gptq", bits, group_size)

    def make(name: str, lin: nn.Linear) -> QuantizedLinear:
        x = collect_linear_inputs(
            qmodel, calib_tokens, batch_size=16, names=[name], stop_early=True, **record
        )[name]
        res = T.gptq_quantize(
            lin.weight.detach(), T.gptq_hessian(x), bits=bits, group_size=group_size,
            symmetric=symmetric,
        )
        bias = None if lin.bias is None else lin.bias.detach()
        return QuantizedLinear(res.weight, bias, name=name, scheme=scheme)

    return replace_linears(
        qmodel, make, skip=skip, is_linear=_is_float_linear, inplace=True
    )


def fold_smoothquant(
    model: nn.Module,
    calib_tokens: Any,
    *,
    alpha: float = 0.5,
    calib_seq_len: int = 64,
    max_calib_tokens: int | None = None,
) -> nn.Module:
    """A float copy of a TinyLM with SmoothQuant's smoothing folded into its parameters.

    TinyLM's blocks are pre-LN: ``ln1``'s output feeds only ``attn.qkv`` and ``ln2``'s
    only ``mlp.fc1``, the LayerNorm-fed layers that SmoothQuant smooths (the same layers
    as :func:`quantize_tinylm` with ``method="smoothquant"``). For each, with
    ``s = smooth_scales(max|X_j|, W, alpha)`` and ``max|X_j|`` the largest input of
    channel ``j`` over the windows of ``calib_tokens``
    (:func:`effx_lab.models.surgery.linear_input_absmax`: windows of ``calib_seq_len``
    tokens, at most ``max_calib_tokens`` rounded up to whole windows), the LayerNorm's
    weight and bias are divided by ``s`` (``fold_smoothing``) and the layer's weight
    columns multiplied by it (``smooth_weight``). Since
    ``(LN(x) / s) (W diag(s))^T = LN(x) W^T``, the copy computes what ``model``
    computes, up to rounding, with no division at run time, while its LayerNorm-fed
    layers read the smoothed activations ``x / s``: plain W8A8 on the copy
    (``quantize_tinylm(folded, "w8a8")``) is SmoothQuant.

    ``model`` is not modified; the copy keeps its dtype and device. ``calib_tokens``: a
    1-D integer token stream (NumPy or torch), e.g.
    :func:`effx_lab.data.calibration_tokens`.
    """
    _check_tinylm(model)
    alpha = check_float("alpha", alpha, min_value=0.0, max_value=1.0)
    calib_seq_len = check_int(
        "calib_seq_len", calib_seq_len, min_value=1, max_value=model.config.max_seq_len
    )
    if max_calib_tokens is not None:
        max_calib_tokens = check_int("max_calib_tokens", max_calib_tokens, min_value=1)
    check_token_stream(
        "calib_tokens", calib_tokens, min_len=calib_seq_len,
        vocab_size=model.config.vocab_size, allow_torch=True,
    )
    pairs = [  # (LayerNorm, the one linear layer it feeds)
        (f"layers.{i}.{ln}", f"layers.{i}.{linear}")
        for i in range(len(model.layers))
        for ln, linear in zip(("ln1", "ln2"), _TINYLM_LN_FED)
    ]
    absmax = linear_input_absmax(
        model, calib_tokens, seq_len=calib_seq_len, max_tokens=max_calib_tokens,
        names=[linear for _, linear in pairs],
    )
    folded = copy.deepcopy(model)
    with torch.no_grad():
        for ln_name, linear_name in pairs:
            ln = folded.get_submodule(ln_name)
            w = folded.get_submodule(linear_name).weight
            act_absmax = absmax[linear_name].to(w.device, w.dtype)
            s = T.smooth_scales(act_absmax, w, alpha=alpha)
            gain, shift = T.fold_smoothing(ln.weight, ln.bias, s)
            ln.weight.copy_(gain)
            if shift is not None:
                ln.bias.copy_(shift)
            w.copy_(T.smooth_weight(w, s))
    return folded


def tinylm_perplexity(model: nn.Module, tokens: Any, seq_len: int = 128, max_batches: int | None = None) -> float:
    """Perplexity of a (quantized) TinyLM on a token stream: :func:`effx_lab.models.perplexity` (windows of
    ``seq_len``, batches of 16, ``max_batches`` caps the batches). ``tokens`` may be NumPy or torch."""
    from effx_lab.models import perplexity

    _check_tinylm(model)
    check_array("tokens", tokens, ndim=1, dtype_kind="iu", allow_torch=True)
    if isinstance(tokens, torch.Tensor):
        tokens = tokens.detach().cpu().numpy()
    return perplexity(model, tokens, seq_len=seq_len, max_batches=max_batches)


def quantize_(
    model: nn.Module,
    config: QuantConfig,
    *,
    calib_tokens: Any = None,
    skip: Iterable[str] = (),
) -> nn.Module:
    """Quantize a TinyLM **in place** with a method's config, and return it (torchao's
    ``quantize_`` verb).

    ``config`` is one of :mod:`effx_lab.quant.configs`: ``RTNConfig``, ``GPTQConfig``,
    ``W8A8Config``, ``LLMInt8Config``, ``SmoothQuantConfig``, ``ZeroQuantConfig``. Each
    ``nn.Linear`` of ``model`` not named in ``skip`` is replaced by the
    :class:`QuantizedLinear` that :func:`quantize_tinylm` makes with the same settings
    (``quantize_tinylm(model, config.method, **config.tinylm_kwargs())``: one
    implementation, so the two agree exactly); embeddings, LayerNorms and the tied head
    are untouched. ``calib_tokens`` (a 1-D token stream, e.g.
    :func:`effx_lab.data.calibration_tokens`) is required by the configs whose
    ``needs_calibration`` is true (GPTQ, SmoothQuant) and ignored by the others.

    Unlike :func:`quantize_tinylm`, which returns a quantized copy and leaves ``model``
    alone, the model passed in is modified: keep ``copy.deepcopy(model)`` first to
    compare with the float model. If an argument is invalid nothing is modified (the
    quantized layers are built first, then swapped in). MiniLM, a parameter dict, is
    quantized through :func:`minilm_quant_hook` / :func:`gptq_minilm` instead.
    """
    _check_tinylm(model)
    if not isinstance(skip, str) and isinstance(skip, Iterable):
        skip = tuple(skip)  # read twice below: a generator would be empty the 2nd time
    if not isinstance(config, QuantConfig):
        from . import configs

        kinds = ", ".join(
            n for n in configs.__all__ if n.endswith("Config") and n != "QuantConfig"
        )
        raise TypeError(
            f"config must be a quantization config (an instance of {kinds} from "
            f"effx_lab.quant.configs, e.g. RTNConfig(bits=4)), got {describe(config)}"
        )
    if config.needs_calibration and calib_tokens is None:
        raise ValueError(
            f"{type(config).__name__} needs calib_tokens (a 1-D token stream, e.g. "
            "effx_lab.data.calibration_tokens(8192)), got None"
        )
    quantized = quantize_tinylm(
        model, config.method, calib_tokens=calib_tokens, skip=skip,
        **config.tinylm_kwargs(),
    )
    skipped = set(skip)  # checked by quantize_tinylm: each is a linear layer of model
    for name in linear_names(model, is_linear=_is_float_linear):
        if name not in skipped:
            set_submodule(model, name, quantized.get_submodule(name))
    return model


# ==========================================================================================================
# MiniLM
# ==========================================================================================================

def _weight_of(params: dict, name: str) -> torch.Tensor:
    return torch.as_tensor(params[name + ".weight"])


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


def minilm_smoothing_factors(
    params: dict[str, Any],
    config: MiniLMConfig,
    calib: dict,
    *,
    alpha: float = 0.5,
    smooth_layers: str = "ln",
    share_qkv: bool = True,
) -> dict[str, torch.Tensor]:
    """SmoothQuant's factors ``s`` (one tensor ``[in_features]`` per smoothed layer) for
    MiniLM, from ``max|X_j|`` in ``calib`` (:func:`record_minilm_linears`).

    ``share_qkv=True``: query, key and value read one LayerNorm output, so they share
    one ``s``, computed from the largest ``|w|`` of column ``j`` over their three stacked
    weights: the only ``s`` a LayerNorm folding ``1/s`` can deliver to all three (the
    paper's code does the same). ``False``: every layer its own ``s``.
    ``smooth_layers``: ``"ln"`` (the LayerNorm-fed layers) or ``"all"``.
    """
    check_minilm_linear_weights(params, config)
    alpha = check_float("alpha", alpha, min_value=0.0, max_value=1.0)
    smooth_layers = check_choice("smooth_layers", smooth_layers, SMOOTH_LAYERS)
    share_qkv = check_bool("share_qkv", share_qkv)
    names = minilm_linear_names(config)
    smoothed = [n for n in names if smooth_layers == "all" or n.endswith(_MINILM_LN_FED)]
    calib = _check_calib(calib, smoothed, "in_absmax", "smoothquant")
    factors: dict[str, torch.Tensor] = {}
    for n in smoothed:
        if n in factors:
            continue
        group = [n]
        if share_qkv and n.endswith("attention.self.query"):
            prefix = n[: -len("query")]
            group = [prefix + k for k in ("query", "key", "value")]
        w = torch.cat([_weight_of(params, g) for g in group])
        a = torch.as_tensor(calib[n]["in_absmax"]).to(w.device)
        s = T.smooth_scales(a, w, alpha)
        factors.update({g: s for g in group})
    return factors


def _smoothquant_with(x, weight, bias, *, s, act_granularity, bits):
    s = s.to(x.device, x.dtype)
    return T.w8a8_linear(
        x / s, weight * s, bias, act_granularity=act_granularity,
        weight_granularity="channel", bits=bits,
    )


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
    share_qkv: bool = False,
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
      ``share_qkv=True`` gives query, key and value one ``s``, the foldable variant (see
      :func:`minilm_smoothing_factors`);
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
    check_minilm_linear_weights(params, config)
    bits = _check_bits("bits", bits)
    w_bits = bits if weight_bits is None else _check_bits("weight_bits", weight_bits)
    a_bits = bits if act_bits is None else _check_bits("act_bits", act_bits)
    act_granularity = check_choice("act_granularity", act_granularity, ACT_GRANULARITIES)
    weight_granularity = check_choice("weight_granularity", weight_granularity, WEIGHT_GRANULARITIES)
    symmetric = check_bool("symmetric", symmetric)
    smooth_layers = check_choice("smooth_layers", smooth_layers, SMOOTH_LAYERS)
    share_qkv = check_bool("share_qkv", share_qkv)
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
    elif method == "smoothquant" and share_qkv:
        factors = minilm_smoothing_factors(
            params, config, calib, alpha=alpha, smooth_layers=smooth_layers, share_qkv=True
        )
        for n in names:
            if n in factors:
                matmuls[n] = functools.partial(
                    _smoothquant_with, s=factors[n], act_granularity=act_granularity, bits=bits
                )
            else:  # plain W8A8 (per-channel weights) at `bits`
                quantizers[n] = functools.partial(_weight_fake_quantize, bits=bits, granularity="channel")
                matmuls[n] = _act_quant_matmul(bits, act_granularity)
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
    check_minilm_linear_weights(params, config)
    bits = _check_bits("bits", bits)
    symmetric = check_bool("symmetric", symmetric)
    if max_tokens is not None:
        max_tokens = check_int("max_tokens", max_tokens, min_value=1)
    batch_size = check_int("batch_size", batch_size, min_value=1)
    ids_t, mask_t = check_ids_mask(calib_ids, calib_mask)
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
    for group in progress_bar(groups, desc="GPTQ on MiniLM", unit="layer"):
        x = minilm_layer_inputs(
            new, config, ids_t, mask_t, group[0], max_tokens=max_tokens,
            batch_size=batch_size,
        )
        h = T.gptq_hessian(x)
        for n in group:
            w = torch.from_numpy(new[n + ".weight"])
            res = T.gptq_quantize(w, h, bits=bits, group_size=group_size, symmetric=symmetric)
            new[n + ".weight"] = res.weight.detach().cpu().numpy().astype(np.float32, copy=True)
    return new
