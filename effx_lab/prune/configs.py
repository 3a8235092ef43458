"""Settings of the whole-model verb :func:`effx_lab.prune.models.prune_`, one small
frozen dataclass per kind of pruning, in the style of the quantization chapter's
configs (:mod:`effx_lab.quant.configs`) and torchao's ``quantize_(model, config)``.

Each config holds settings, never data (the tokens of the Taylor criterion are an
argument of ``prune_``), and checks them when it is built (``ValueError``/``TypeError``
naming the field):

* :class:`MagnitudeConfig`: unstructured magnitude pruning, masks that keep the pruned
  weights at exactly zero through training (``sparsity`` per weight matrix with
  ``scope="layer"``, over all of them together with ``scope="global"``);
* :class:`HeadConfig`: remove a ``fraction`` of each layer's attention heads;
* :class:`NeuronConfig`: remove a ``fraction`` of each layer's FFN neurons.

The structured configs rank units by ``criterion``: ``"norm"`` (weights only:
:func:`effx_lab.prune.torch_ops.head_importance` / ``neuron_importance``) or
``"taylor"`` (Michel et al. 2019's first-order estimate of the loss change on data:
:func:`effx_lab.prune.models.taylor_importance`; ``prune_`` then needs ``tokens``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from effx_lab._validate import check_choice, check_float, describe

from .shapes import check_scope, check_sparsity

__all__ = [
    "CRITERIA",
    "HeadConfig",
    "MagnitudeConfig",
    "NeuronConfig",
    "PruneConfig",
]

#: how a structured config ranks heads or neurons
CRITERIA = ("norm", "taylor")


@dataclass(frozen=True)
class PruneConfig:
    """Base of the configs: ``structured`` says whether the layers shrink, and
    ``needs_tokens`` whether :func:`~effx_lab.prune.models.prune_` must be given
    ``tokens``."""

    structured: ClassVar[bool] = False

    def __post_init__(self) -> None:
        if type(self) is PruneConfig:
            raise TypeError(
                "PruneConfig is the base class: build MagnitudeConfig, HeadConfig or "
                "NeuronConfig instead"
            )

    @property
    def needs_tokens(self) -> bool:
        """Whether pruning with this config reads data (the Taylor criterion)."""
        return getattr(self, "criterion", None) == "taylor"


def _check_include(value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return (value,) if value else _bad_include(value)
    if not isinstance(value, (tuple, list)) or not value:
        return _bad_include(value)
    for name in value:
        if not isinstance(name, str) or not name:
            return _bad_include(value)
    if len(set(value)) != len(value):
        raise ValueError(f"include must not name a weight twice, got {value!r}")
    return tuple(value)


def _bad_include(value: Any) -> Any:
    raise TypeError(
        "include must be None (every prunable weight) or a non-empty tuple of names "
        "of prunable weights or of the modules holding them (e.g. ('layers.0.wq',) "
        f"or ('layers.0',)), got {describe(value)}"
    )


@dataclass(frozen=True)
class MagnitudeConfig(PruneConfig):
    """Unstructured magnitude pruning to ``sparsity`` (the fraction of entries set to
    zero, in ``[0, 1)``).

    ``scope="layer"``: each weight matrix loses ``round(sparsity * size)`` entries;
    ``"global"``: one threshold over all the selected matrices together (exactly
    ``round(sparsity * total)`` entries; layers with small weights lose more).
    ``include``: the names (as :func:`~effx_lab.prune.models.prunable_weights` gives
    them, or a prefix naming a module, such as ``"layers.0"``) of the weights to prune;
    ``None``: every prunable weight (the 2-D weights of the linear layers; never the
    embeddings, norms or biases).
    """

    sparsity: float = 0.5
    scope: str = "layer"
    include: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "sparsity", check_sparsity(self.sparsity))
        object.__setattr__(self, "scope", check_scope(self.scope))
        object.__setattr__(self, "include", _check_include(self.include))


def _check_fraction(value: Any) -> float:
    return check_float(
        "fraction", value, min_value=0.0, max_value=1.0, max_inclusive=False
    )


@dataclass(frozen=True)
class HeadConfig(PruneConfig):
    """Remove ``round(fraction * n_heads)`` attention heads of every layer (``fraction``
    in ``[0, 1)``; a fraction that would leave a layer without a head is an error when
    pruning), those of lowest importance under ``criterion`` (``"norm"`` or
    ``"taylor"``). The layers shrink: fewer columns of ``W_Q, W_K, W_V``, fewer rows of
    ``W_O``."""

    fraction: float = 0.25
    criterion: str = "norm"
    structured: ClassVar[bool] = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "fraction", _check_fraction(self.fraction))
        object.__setattr__(
            self, "criterion", check_choice("criterion", self.criterion, CRITERIA)
        )


@dataclass(frozen=True)
class NeuronConfig(PruneConfig):
    """Remove ``round(fraction * d_ff)`` FFN neurons of every layer (``fraction`` in
    ``[0, 1)``), those of lowest importance under ``criterion`` (``"norm"`` or
    ``"taylor"``): a neuron is a column of ``W_1``, its bias and a row of ``W_2``
    (in the ``(in, out)`` layout), so the FFN really shrinks."""

    fraction: float = 0.25
    criterion: str = "norm"
    structured: ClassVar[bool] = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "fraction", _check_fraction(self.fraction))
        object.__setattr__(
            self, "criterion", check_choice("criterion", self.criterion, CRITERIA)
        )
