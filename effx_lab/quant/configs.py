"""Settings of the whole-model verb :func:`effx_lab.quant.quantize_`, one small frozen
dataclass per method, in the style of torchao's ``quantize_(model,
Int4WeightOnlyConfig(...))``.

Each config holds a method's settings (never data: calibration tokens are an argument of
``quantize_``), checks them when it is built (``ValueError``/``TypeError`` naming the
field), and maps them onto :func:`effx_lab.quant.models.quantize_tinylm`, which does the
work. Defaults are those of ``quantize_tinylm`` except the bit width of the weight-only
methods (4, their usual setting), so ``RTNConfig(bits=8)`` is ``quantize_tinylm(model,
"rtn")``.

* :class:`RTNConfig` (``"rtn"``) and :class:`GPTQConfig` (``"gptq"``, needs calibration
  tokens: each layer's Hessian): weight-only;
* :class:`W8A8Config` (``"w8a8"``), :class:`LLMInt8Config` (``"llm_int8"``),
  :class:`SmoothQuantConfig` (``"smoothquant"``, needs calibration tokens: the
  per-channel ``max|X_j|``) and :class:`ZeroQuantConfig` (``"zeroquant"``): weights and
  (dynamic) activations.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

from effx_lab._validate import check_bool, check_choice, check_float, check_int

from ._np_outliers import ACT_GRANULARITIES, _check_bits, _check_threshold

__all__ = [
    "GPTQConfig",
    "LLMInt8Config",
    "QuantConfig",
    "RTNConfig",
    "SMOOTH_LAYERS",
    "SmoothQuantConfig",
    "W8A8Config",
    "ZeroQuantConfig",
]

#: which layers SmoothQuant smooths: those fed by a LayerNorm (where 1/s folds into it
#: offline), or all
SMOOTH_LAYERS = ("ln", "all")


def _group_size(value: Any) -> int | None:
    return None if value is None else check_int("group_size", value, min_value=1)


def _calib(cfg: Any) -> None:
    """Check and normalise the calibration-window fields of ``cfg``."""
    seq_len = check_int("calib_seq_len", cfg.calib_seq_len, min_value=1)
    object.__setattr__(cfg, "calib_seq_len", seq_len)
    if cfg.max_calib_tokens is not None:
        n = check_int("max_calib_tokens", cfg.max_calib_tokens, min_value=1)
        object.__setattr__(cfg, "max_calib_tokens", n)


@dataclass(frozen=True)
class QuantConfig:
    """Base of the configs: ``method`` names the :func:`quantize_tinylm` method and
    ``needs_calibration`` says whether ``quantize_`` must be given ``calib_tokens``."""

    method: ClassVar[str] = ""
    needs_calibration: ClassVar[bool] = False

    def __post_init__(self) -> None:
        if type(self) is QuantConfig:
            raise TypeError(
                "QuantConfig is the base class: build RTNConfig, GPTQConfig, ... "
                "instead"
            )

    def tinylm_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of :func:`quantize_tinylm` (besides ``model``,
        ``method``, ``calib_tokens`` and ``skip``) that this config stands for."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


@dataclass(frozen=True)
class RTNConfig(QuantConfig):
    """Weight-only round-to-nearest: ``bits`` per output row (``group_size=None``) or
    per group of ``group_size`` input features, affine unless ``symmetric``."""

    bits: int = 4
    group_size: int | None = None
    symmetric: bool = False
    method: ClassVar[str] = "rtn"

    def __post_init__(self) -> None:
        object.__setattr__(self, "bits", _check_bits("bits", self.bits))
        object.__setattr__(self, "group_size", _group_size(self.group_size))
        object.__setattr__(self, "symmetric", check_bool("symmetric", self.symmetric))


@dataclass(frozen=True)
class GPTQConfig(QuantConfig):
    """Weight-only GPTQ, sequential (each layer calibrated on the model whose earlier
    layers are already quantized), same grid as :class:`RTNConfig`; calibration windows
    of ``calib_seq_len`` tokens, at most ``max_calib_tokens`` of them (``None``:
    all)."""

    bits: int = 4
    group_size: int | None = None
    symmetric: bool = False
    calib_seq_len: int = 64
    max_calib_tokens: int | None = None
    method: ClassVar[str] = "gptq"
    needs_calibration: ClassVar[bool] = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "bits", _check_bits("bits", self.bits))
        object.__setattr__(self, "group_size", _group_size(self.group_size))
        object.__setattr__(self, "symmetric", check_bool("symmetric", self.symmetric))
        _calib(self)


@dataclass(frozen=True)
class W8A8Config(QuantConfig):
    """Symmetric absmax weights at ``bits`` per output channel, activations at
    ``a_bits`` per tensor or per token (``act_granularity``), dynamic; ``a_bits=None``:
    weight-only absmax."""

    bits: int = 8
    a_bits: int | None = 8
    act_granularity: str = "tensor"
    method: ClassVar[str] = "w8a8"

    def __post_init__(self) -> None:
        object.__setattr__(self, "bits", _check_bits("bits", self.bits))
        if self.a_bits is not None:
            object.__setattr__(self, "a_bits", _check_bits("a_bits", self.a_bits))
        check_choice("act_granularity", self.act_granularity, ACT_GRANULARITIES)


@dataclass(frozen=True)
class LLMInt8Config(QuantConfig):
    """LLM.int8(): input columns with a value ``> threshold`` in float, the rest
    vector-wise at ``bits`` (``threshold=inf``: no outlier column)."""

    bits: int = 8
    threshold: float = 6.0
    method: ClassVar[str] = "llm_int8"

    def __post_init__(self) -> None:
        object.__setattr__(self, "bits", _check_bits("bits", self.bits))
        object.__setattr__(self, "threshold", _check_threshold(self.threshold))


@dataclass(frozen=True)
class SmoothQuantConfig(QuantConfig):
    """SmoothQuant with migration strength ``alpha``, ``bits``-bit activations (per
    tensor or per token) and per-channel weights; ``smooth_layers="ln"`` smooths only
    the LayerNorm-fed layers (the others get plain W8A8), ``"all"`` every layer.
    Calibration windows as in :class:`GPTQConfig`."""

    bits: int = 8
    alpha: float = 0.5
    act_granularity: str = "tensor"
    smooth_layers: str = "ln"
    calib_seq_len: int = 64
    max_calib_tokens: int | None = None
    method: ClassVar[str] = "smoothquant"
    needs_calibration: ClassVar[bool] = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "bits", _check_bits("bits", self.bits))
        alpha = check_float("alpha", self.alpha, min_value=0.0, max_value=1.0)
        object.__setattr__(self, "alpha", alpha)
        check_choice("act_granularity", self.act_granularity, ACT_GRANULARITIES)
        check_choice("smooth_layers", self.smooth_layers, SMOOTH_LAYERS)
        _calib(self)


@dataclass(frozen=True)
class ZeroQuantConfig(QuantConfig):
    """ZeroQuant: group-wise weights (``bits``, ``group_size``) and token-wise
    activations (``a_bits``)."""

    bits: int = 8
    group_size: int = 64
    a_bits: int = 8
    method: ClassVar[str] = "zeroquant"

    def __post_init__(self) -> None:
        object.__setattr__(self, "bits", _check_bits("bits", self.bits))
        group_size = check_int("group_size", self.group_size, min_value=1)
        object.__setattr__(self, "group_size", group_size)
        object.__setattr__(self, "a_bits", _check_bits("a_bits", self.a_bits))
