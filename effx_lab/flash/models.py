"""Small language models for chapter 7's experiments: a Transformer, FLASH-Quad and FLASH (PyTorch).

All three share everything but the layer stack, so that a comparison measures the layers: a token
embedding (``N(0, 0.02)``), a learned absolute position embedding (``N(0, 0.01)``, used by every kind
even though GAU layers also carry a relative bias), a stack of layers, a final LayerNorm and an output
head tied to the token embedding (``logits = LN(h) @ E^T``).

* ``kind="transformer"``: ``n_layers`` pre-LN Transformer layers (multi-head softmax attention + GELU FFN,
  :func:`effx_lab.attention.torch_ops.transformer_layer`);
* ``kind="flash_quad"``: ``2 * n_layers`` GAU layers (:func:`effx_lab.flash.torch_ops.gau`, quadratic);
* ``kind="flash"``: ``2 * n_layers`` FLASH layers with mixed chunk attention
  (:func:`effx_lab.flash.torch_ops.flash_layer`; ``mode="local"`` / ``"global"`` give the paper's
  LocalOnly / GlobalOnly ablations).

Two GAU layers replace one attention + FFN pair because a GAU layer holds about ``6 d^2`` weights (with
``e = 2 d``) against ``12 d^2`` for a Transformer layer (Hua et al. 2022, section 2): the models have
nearly the same number of parameters.

The layer weights come from the NumPy initialisers (:mod:`effx_lab.attention.params`,
:mod:`effx_lab.flash.params`) and live in one ``nn.ParameterDict`` per layer under the same key names as
the NumPy references, so ``{k: v.detach().numpy() for k, v in model.layers[i].items()}`` can be fed to
:mod:`effx_lab.flash.reference` directly.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from effx_lab._validate import check_alloc, check_bool, check_choice, check_float, check_instance, check_int, describe
from effx_lab.attention import torch_ops as attn_ops
from effx_lab.attention.params import _init_bytes, init_transformer_layer_params, to_torch
from effx_lab.attention.reference import mha_param_shapes
from effx_lab.flash import torch_ops as flash_ops
from effx_lab.flash.params import init_flash_params, init_gau_params
from effx_lab.flash.reference import gau_param_shapes

__all__ = ["KINDS", "MODES", "LMConfig", "LanguageModel", "build_lm"]

#: model families: the Transformer baseline, GAU layers with full quadratic attention, FLASH layers
KINDS = ("transformer", "flash_quad", "flash")
#: FLASH's token-mixing variants: both parts (the paper's model), within-chunk only, across-chunk only
MODES = ("mixed", "local", "global")

_LN_EPS = 1e-5


@dataclass(frozen=True)
class LMConfig:
    """Hyper-parameters of a chapter-7 language model.

    ``n_layers`` counts Transformer layers; the GAU-based kinds get ``2 * n_layers`` layers (the paper's
    parameter-matched rule, see :meth:`n_model_layers`). ``n_heads`` and ``d_ff`` (``None`` means
    ``4 * d_model``) apply to the Transformer only; ``expansion`` (``e = expansion * d_model``), ``s``
    (the shared width of ``Z``) and ``max_rel`` (relative bias over offsets ``-max_rel..max_rel``) to the
    GAU kinds; ``chunk_size`` and ``mode`` to FLASH only. ``max_len`` is the size of the learned position
    table, the longest sequence the model accepts.

    ``rel_bias_init`` is the starting value of every GAU/FLASH relative-position bias (the initialisers
    of :mod:`effx_lab.flash.params` use 0, as the paper's code). With 0 the attention logits
    ``q k^T / n + b`` start near 0, where ``relu^2`` is flat: the attention begins with almost no output and
    almost no gradient, and when it wakes up varies from seed to seed. A small positive value (0.1) starts
    every layer with a weak uniform causal average and makes short runs learn faster and vary less.
    """

    kind: str = "transformer"
    vocab_size: int = 256
    d_model: int = 128
    n_layers: int = 2
    n_heads: int = 4
    d_ff: int | None = None
    expansion: int = 2
    s: int = 64
    chunk_size: int = 64
    max_rel: int = 63
    max_len: int = 1024
    mode: str = "mixed"
    causal: bool = True
    rel_bias_init: float = 0.0

    def __post_init__(self) -> None:
        check_choice("kind", self.kind, KINDS)
        check_int("vocab_size", self.vocab_size, min_value=1)
        check_int("d_model", self.d_model, min_value=1)
        check_int("n_layers", self.n_layers, min_value=1)
        check_int("n_heads", self.n_heads, min_value=1)
        if self.kind == "transformer" and self.d_model % self.n_heads:
            raise ValueError(f"n_heads must divide d_model = {self.d_model}, got n_heads = {self.n_heads}")
        if self.d_ff is not None:
            check_int("d_ff", self.d_ff, min_value=1)
            if self.kind != "transformer":
                raise ValueError(
                    f"d_ff sets the Transformer's FFN width and has no meaning for kind={self.kind!r} "
                    f"(its width is expansion * d_model); leave d_ff=None, got d_ff={self.d_ff}"
                )
        check_int("expansion", self.expansion, min_value=1)
        check_int("s", self.s, min_value=1)
        check_int("chunk_size", self.chunk_size, min_value=1)
        check_int("max_rel", self.max_rel, min_value=0)
        check_int("max_len", self.max_len, min_value=1)
        check_choice("mode", self.mode, MODES)
        if self.mode != "mixed" and self.kind != "flash":
            raise ValueError(
                f"mode={self.mode!r} (an ablation of mixed chunk attention) needs kind='flash', got kind={self.kind!r}"
            )
        check_bool("causal", self.causal)
        check_float("rel_bias_init", self.rel_bias_init)
        if self.rel_bias_init != 0.0 and self.kind == "transformer":
            raise ValueError(
                f"rel_bias_init sets the GAU/FLASH relative position bias; the Transformer has none, "
                f"got rel_bias_init={self.rel_bias_init} with kind='transformer'"
            )

    @property
    def ffn_dim(self) -> int:
        """Width of the Transformer's FFN (``d_ff``, or ``4 * d_model`` when ``d_ff`` is None)."""
        return 4 * self.d_model if self.d_ff is None else self.d_ff

    def n_model_layers(self) -> int:
        """Number of layers in the stack: ``n_layers`` for the Transformer, ``2 * n_layers`` otherwise."""
        return self.n_layers if self.kind == "transformer" else 2 * self.n_layers

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-serialisable dict (``LMConfig(**config.to_dict()) == config``)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LMConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise."""
        if not isinstance(data, dict):
            raise TypeError(f"data must be a dict, got {describe(data)}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown LMConfig fields {unknown}; expected a subset of {sorted(known)}")
        return cls(**data)


def _layer_seed(seed: int, index: int) -> int:
    """Seed of layer ``index``'s initialiser, derived from the model seed (independent streams)."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def _check_config(config: Any) -> LMConfig:
    return check_instance("config", config, LMConfig, "an LMConfig")


def _model_bytes(config: LMConfig) -> int:
    """Peak bytes of building the model's float32 weights (embeddings, every layer, the float64 draws)."""
    d = config.d_model
    if config.kind == "transformer":
        layer = mha_param_shapes(d, config.ffn_dim)
    else:
        n_qk = 2 if config.kind == "flash_quad" else 4
        layer = gau_param_shapes(d, config.expansion * d, config.s, n_qk, 2 * config.max_rel + 1)
    embeddings = {"tok_emb": (config.vocab_size, d), "pos_emb": (config.max_len, d)}
    n_layer = _init_bytes(layer) - 8 * max(math.prod(v) for v in layer.values())  # float32 part of one layer
    return _init_bytes({**embeddings, **layer}) + (config.n_model_layers() - 1) * n_layer


def _init_layer(config: LMConfig, seed: int) -> dict[str, np.ndarray]:
    if config.kind == "transformer":
        return init_transformer_layer_params(config.d_model, config.n_heads, config.ffn_dim, seed=seed)
    init = init_gau_params if config.kind == "flash_quad" else init_flash_params
    params = init(config.d_model, config.expansion, config.s, config.max_rel, seed=seed)
    params["rel_bias"] = np.full_like(params["rel_bias"], config.rel_bias_init)
    return params


class LanguageModel(nn.Module):
    """Decoder-only (or, with ``causal=False``, bidirectional) language model for chapter 7.

    ``forward(tokens)`` maps ``(B, n)`` int64 token ids to ``(B, n, vocab_size)`` logits:
    ``h_0 = E[tokens] + P[:n]``, ``h_{l+1} = layer_l(h_l)`` (each layer includes its residual),
    ``logits = LN(h_L) E^T``. Build one with :func:`build_lm`.
    """

    def __init__(self, config: LMConfig, seed: int = 0) -> None:
        super().__init__()
        _check_config(config)
        seed = check_int("seed", seed, min_value=0)
        check_alloc(f"LanguageModel({config})", _model_bytes(config))
        self.config = config
        self.seed = seed
        rng = np.random.default_rng(_layer_seed(seed, 0))
        d = config.d_model
        self.tok_emb = nn.Parameter(torch.from_numpy(rng.normal(0.0, 0.02, (config.vocab_size, d)).astype(np.float32)))
        self.pos_emb = nn.Parameter(torch.from_numpy(rng.normal(0.0, 0.01, (config.max_len, d)).astype(np.float32)))
        self.layers = nn.ModuleList(
            nn.ParameterDict(
                {k: nn.Parameter(v) for k, v in to_torch(_init_layer(config, _layer_seed(seed, i + 1))).items()}
            )
            for i in range(config.n_model_layers())
        )
        self.ln_f_g = nn.Parameter(torch.ones(d))
        self.ln_f_b = nn.Parameter(torch.zeros(d))

    def _check_tokens(self, tokens: Any) -> torch.Tensor:
        cfg = self.config
        if not isinstance(tokens, torch.Tensor):
            raise TypeError(f"tokens must be a torch.LongTensor of shape (batch, n), got {describe(tokens)}")
        if tokens.dtype != torch.int64:
            raise TypeError(f"tokens must have dtype torch.int64 (token ids), got {tokens.dtype}")
        if tokens.ndim != 2 or tokens.shape[1] == 0 or tokens.shape[0] == 0:
            raise ValueError(f"tokens must have shape (batch, n) with batch, n >= 1, got shape {tuple(tokens.shape)}")
        if tokens.shape[1] > cfg.max_len:
            raise ValueError(
                f"tokens has n = {tokens.shape[1]} positions but the model's max_len is {cfg.max_len} "
                f"(the size of its position table)"
            )
        lo, hi = int(tokens.min()), int(tokens.max())
        if lo < 0 or hi >= cfg.vocab_size:
            raise ValueError(f"tokens must lie in [0, {cfg.vocab_size - 1}], got values in [{lo}, {hi}]")
        return tokens

    def _layer(self, x: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        cfg = self.config
        if cfg.kind == "transformer":
            return attn_ops.transformer_layer(x, params, cfg.n_heads, cfg.causal)
        if cfg.kind == "flash_quad":
            return flash_ops.gau(x, params, cfg.causal)
        return flash_ops.flash_layer(x, params, cfg.chunk_size, cfg.causal, cfg.mode)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """``(B, n)`` int64 token ids in ``[0, vocab_size)``, ``n <= max_len`` -> ``(B, n, vocab_size)`` logits."""
        tokens = self._check_tokens(tokens)
        n = tokens.shape[1]
        h = self.tok_emb[tokens] + self.pos_emb[:n]
        for layer in self.layers:
            h = self._layer(h, dict(layer.items()))
        h = F.layer_norm(h, (self.config.d_model,), self.ln_f_g, self.ln_f_b, _LN_EPS)
        return h @ self.tok_emb.t()

    def num_params(self) -> int:
        """Number of trainable scalars (the tied output head is counted once)."""
        return int(sum(p.numel() for p in self.parameters()))

    def extra_repr(self) -> str:
        cfg = self.config
        extra = f", chunk_size={cfg.chunk_size}, mode={cfg.mode!r}" if cfg.kind == "flash" else ""
        return (
            f"kind={cfg.kind!r}, d_model={cfg.d_model}, layers={cfg.n_model_layers()}{extra}, "
            f"params={self.num_params():,}"
        )


def build_lm(config: LMConfig, seed: int = 0) -> LanguageModel:
    """A :class:`LanguageModel` for ``config`` with weights drawn from ``seed`` (same seed, same weights)."""
    _check_config(config)
    return LanguageModel(config, seed=check_int("seed", seed, min_value=0))
