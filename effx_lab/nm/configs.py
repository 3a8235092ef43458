"""Settings of the whole-model verb :func:`effx_lab.nm.models.sparsify_`, a small frozen
dataclass in the style of :mod:`effx_lab.quant.configs` and torchao's
``quantize_(model, config)``. It holds settings, never data, and checks them when it is
built (``ValueError``/``TypeError`` naming the field).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from effx_lab._validate import check_bool, check_int, describe

__all__ = ["NMConfig"]


def _check_include(value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str) and value:
        return (value,)
    ok = (
        isinstance(value, (tuple, list))
        and len(value) > 0
        and all(isinstance(v, str) and v for v in value)
    )
    if not ok:
        raise TypeError(
            "include must be None (every weight N:M sparsity applies to) or a "
            "non-empty tuple of names of those weights or of the modules holding "
            f"them (e.g. ('layers.0.w2',) or ('layers.0',)), got {describe(value)}"
        )
    if len(set(value)) != len(value):
        raise ValueError(f"include must not name a weight twice, got {value!r}")
    return tuple(value)


@dataclass(frozen=True)
class NMConfig:
    """N:M sparsity: keep ``n`` of every ``m`` consecutive weights along each linear
    layer's input dimension (``1 <= n < m``; 2:4 is what sparse tensor cores run).

    ``permute=True``: before pruning, reorder the hidden units of every FFN whose second
    weight is selected so that the N:M mask of that weight keeps more magnitude (Pool &
    Yu's channel-permutation search, :func:`effx_lab.nm.torch_ops.search_permutation`
    with at most ``search_iters`` steps); the model computes the same function before
    the mask. ``include``: names (as :func:`effx_lab.nm.models.nm_weights` gives them,
    or a prefix naming a module such as ``"layers.0"``) of the weights to sparsify;
    ``None``: every one.
    """

    n: int = 2
    m: int = 4
    permute: bool = False
    include: tuple[str, ...] | None = None
    search_iters: int = 2000

    def __post_init__(self) -> None:
        m = check_int("m", self.m, min_value=2)
        n = check_int("n", self.n, min_value=1)
        if n >= m:
            raise ValueError(f"n must be < m (keep n of every m), got n={n} and m={m}")
        object.__setattr__(self, "n", n)
        object.__setattr__(self, "m", m)
        object.__setattr__(self, "permute", check_bool("permute", self.permute))
        object.__setattr__(self, "include", _check_include(self.include))
        iters = check_int("search_iters", self.search_iters, min_value=0)
        object.__setattr__(self, "search_iters", iters)
