"""Small language models for chapter 7's experiments: a Transformer, FLASH-Quad and
FLASH (PyTorch).

They are configurations of the course's shared language model,
:class:`effx_lab.models.lm.LM`, so they share everything but the layer stack, and a
comparison measures the layers: a token embedding (``N(0, 0.02)``), a learned absolute
position embedding (``N(0, 0.01)``, used by every kind even though GAU layers also carry
a relative bias), a stack of layers, a final LayerNorm and an output head tied to the
token embedding (``logits = LN(h) @ E^T``).

* ``kind="transformer"``: ``n_layers`` pre-LN Transformer layers, the shared
  ``"softmax"`` mixer (multi-head softmax attention) followed by the shared ``"gelu"``
  FFN: together :func:`effx_lab.attention.torch_ops.transformer_layer`;
* ``kind="flash_quad"``: ``2 * n_layers`` GAU layers (mixer ``"gau"``,
  :func:`effx_lab.flash.torch_ops.gau`, quadratic);
* ``kind="flash"``: ``2 * n_layers`` FLASH layers with mixed chunk attention (mixer
  ``"flash"``, :func:`effx_lab.flash.torch_ops.flash_layer`; ``mode="local"`` /
  ``"global"`` give the paper's LocalOnly / GlobalOnly ablations).

Importing this module (``import effx_lab.flash`` does) registers the ``"gau"`` and
``"flash"`` mixers with :func:`effx_lab.models.lm.register_mixer`; a GAU or FLASH layer
is its own FFN, so those models have none.

Two GAU layers replace one attention + FFN pair because a GAU layer holds about ``6
d^2`` weights (with ``e = 2 d``) against ``12 d^2`` for a Transformer layer (Hua et al.
2022, section 2): the models have nearly the same number of parameters.

The layer weights come from the NumPy initialisers (:mod:`effx_lab.attention.params`,
:mod:`effx_lab.flash.params`) and live in one ``nn.ParameterDict`` per layer under the
same key names as the NumPy references, so ``{k: v.detach().numpy() for k, v in
model.layers[i].items()}`` can be fed to :mod:`effx_lab.flash.reference` directly.
"""
from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import torch

from effx_lab._validate import (
    check_bool,
    check_choice,
    check_float,
    check_instance,
    check_int,
    describe,
)
from effx_lab.models.lm import LM, LMSpec, Sublayer, register_mixer

from . import torch_ops as flash_ops
from .params import init_flash_params, init_gau_params
from .shapes import MODES

__all__ = [
    "KINDS",
    "MODES",
    "LMConfig",
    "LanguageModel",
    "build_lm",
    "flash_mixer",
    "gau_mixer",
]

#: model families: the Transformer baseline, GAU layers with full quadratic attention, FLASH layers
KINDS = ("transformer", "flash_quad", "flash")


# --------------------------------------------------------------------------------------
# the GAU and FLASH mixers, registered with the shared model
# --------------------------------------------------------------------------------------


Params = Mapping[str, torch.Tensor]


def _gau_apply(x: torch.Tensor, p: Params, *, causal: bool) -> torch.Tensor:
    return flash_ops.gau(x, p, causal)


def _flash_apply(
    x: torch.Tensor, p: Params, *, chunk_size: int, causal: bool, mode: str
) -> torch.Tensor:
    return flash_ops.flash_layer(x, p, chunk_size, causal, mode)


def _gau_params(
    init: Any, d_model: int, expansion: int, s: int, max_rel: int, bias: Any, seed: int
) -> dict[str, np.ndarray]:
    """The initialiser's weights for ``seed``, every relative-position bias set to
    ``bias`` (the ``rel_bias_init`` option)."""
    bias = check_float("rel_bias_init", bias)
    params = init(d_model, expansion, s, max_rel, seed=seed)
    params["rel_bias"] = np.full_like(params["rel_bias"], bias)
    return params


def gau_mixer(
    d_model: int,
    *,
    seed: int,
    causal: bool,
    expansion: int = 2,
    s: int = 128,
    max_rel: int = 127,
    rel_bias_init: float = 0.0,
) -> Sublayer:
    """The ``"gau"`` mixer: one GAU layer (FLASH-Quad,
    :func:`effx_lab.flash.torch_ops.gau`), weights of
    :func:`effx_lab.flash.params.init_gau_params` with every relative-position bias set
    to ``rel_bias_init``. ``gamma`` and ``beta`` (per-dimension query/key scales and
    offsets) get no weight decay."""
    causal = check_bool("causal", causal)
    params = _gau_params(
        init_gau_params, d_model, expansion, s, max_rel, rel_bias_init, seed
    )
    apply = functools.partial(_gau_apply, causal=causal)
    return Sublayer(params, apply, no_decay=("gamma", "beta"))


def flash_mixer(
    d_model: int,
    *,
    seed: int,
    causal: bool,
    expansion: int = 2,
    s: int = 128,
    max_rel: int = 127,
    rel_bias_init: float = 0.0,
    chunk_size: int = 256,
    mode: str = "mixed",
) -> Sublayer:
    """The ``"flash"`` mixer: one FLASH layer with mixed chunk attention of
    ``chunk_size`` (:func:`effx_lab.flash.torch_ops.flash_layer`, ``mode`` one of
    :data:`MODES`), weights of :func:`effx_lab.flash.params.init_flash_params` (relative
    bias ``rel_bias_init``)."""
    causal = check_bool("causal", causal)
    chunk_size = check_int("chunk_size", chunk_size, min_value=1)
    mode = check_choice("mode", mode, MODES)
    params = _gau_params(
        init_flash_params, d_model, expansion, s, max_rel, rel_bias_init, seed
    )
    apply = functools.partial(
        _flash_apply, chunk_size=chunk_size, causal=causal, mode=mode
    )
    return Sublayer(params, apply, no_decay=("gamma", "beta"))


register_mixer("gau", gau_mixer)
register_mixer("flash", flash_mixer)


# --------------------------------------------------------------------------------------
# chapter 7's configurations
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LMConfig:
    """Hyper-parameters of a chapter-7 language model.

    ``n_layers`` counts Transformer layers; the GAU-based kinds get ``2 * n_layers``
    layers (the paper's parameter-matched rule, see :meth:`n_model_layers`). ``n_heads``
    and ``d_ff`` (``None`` means ``4 * d_model``) apply to the Transformer only;
    ``expansion`` (``e = expansion * d_model``), ``s`` (the shared width of ``Z``) and
    ``max_rel`` (relative bias over offsets ``-max_rel..max_rel``) to the GAU kinds;
    ``chunk_size`` and ``mode`` to FLASH only. ``max_len`` is the size of the learned
    position table, the longest sequence the model accepts.

    ``rel_bias_init`` is the starting value of every GAU/FLASH relative-position bias
    (the initialisers of :mod:`effx_lab.flash.params` use 0, as the paper's code). With
    0 the attention logits ``q k^T / n + b`` start near 0, where ``relu^2`` is flat: the
    attention begins with almost no output and almost no gradient, and when it wakes up
    varies from seed to seed. A small positive value (0.1) starts every layer with a
    weak uniform causal average and makes short runs learn faster and vary less.
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
        """Width of the Transformer's FFN (``d_ff``, or ``4 * d_model`` when ``d_ff`` is
        None)."""
        return 4 * self.d_model if self.d_ff is None else self.d_ff

    def n_model_layers(self) -> int:
        """Number of layers in the stack: ``n_layers`` for the Transformer, ``2 *
        n_layers`` otherwise."""
        return self.n_layers if self.kind == "transformer" else 2 * self.n_layers

    def spec(self) -> LMSpec:
        """This configuration as the shared model's
        :class:`~effx_lab.models.lm.LMSpec`."""
        common = dict(
            vocab_size=self.vocab_size, d_model=self.d_model,
            n_layers=self.n_model_layers(), max_len=self.max_len, causal=self.causal,
        )  # fmt: skip
        if self.kind == "transformer":
            return LMSpec(
                mixer="softmax", mixer_options={"n_heads": self.n_heads},
                ffn="gelu", ffn_options={"d_ff": self.ffn_dim}, **common,
            )  # fmt: skip
        options: dict[str, Any] = dict(
            expansion=self.expansion, s=self.s, max_rel=self.max_rel,
            rel_bias_init=self.rel_bias_init,
        )  # fmt: skip
        if self.kind == "flash":
            options.update(chunk_size=self.chunk_size, mode=self.mode)
        mixer = "gau" if self.kind == "flash_quad" else "flash"
        return LMSpec(mixer=mixer, mixer_options=options, ffn=None, **common)

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-serialisable dict (``LMConfig(**config.to_dict()) ==
        config``)."""
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


def _check_config(config: Any) -> LMConfig:
    return check_instance("config", config, LMConfig, "an LMConfig")


class LanguageModel(LM):
    """Decoder-only (or, with ``causal=False``, bidirectional) language model for
    chapter 7: the shared :class:`~effx_lab.models.lm.LM` built from ``config.spec()``,
    with ``config`` kept as ``model.config``.

    ``forward(tokens)`` maps ``(B, n)`` int64 token ids to ``(B, n, vocab_size)``
    logits: ``h_0 = E[tokens] + P[:n]``, ``h_{l+1} = layer_l(h_l)`` (each layer includes
    its residual), ``logits = LN(h_L) E^T``. Build one with :func:`build_lm`.
    """

    def __init__(self, config: LMConfig, seed: int = 0) -> None:
        _check_config(config)
        super().__init__(config.spec(), seed=seed)
        self.config = config

    def extra_repr(self) -> str:
        cfg = self.config
        extra = f", chunk_size={cfg.chunk_size}, mode={cfg.mode!r}" if cfg.kind == "flash" else ""
        return (
            f"kind={cfg.kind!r}, d_model={cfg.d_model}, layers={cfg.n_model_layers()}{extra}, "
            f"params={self.num_params():,}"
        )


def build_lm(config: LMConfig, seed: int = 0) -> LanguageModel:
    """A :class:`LanguageModel` for ``config`` with weights drawn from ``seed`` (same
    seed, same weights)."""
    _check_config(config)
    return LanguageModel(config, seed=check_int("seed", seed, min_value=0))
