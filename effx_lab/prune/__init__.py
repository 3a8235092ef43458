"""Chapter 3, pruning: remove weights that matter least, store what is left, retrain.

* :mod:`.reference` (NumPy) and :mod:`.torch_ops` (PyTorch), same names and signatures:
  unstructured magnitude masks with layer-wise or global thresholds, structured pruning
  of attention heads and FFN neurons (the layer really shrinks), CSR storage built from
  scratch and a sparse x dense product; :mod:`.shapes` holds what both faces check;
  :mod:`.storage`: byte counts of dense and CSR storage and the crossover they predict;
  :mod:`.sparse_torch` (torch only): the library's ``torch.sparse`` CSR/COO and its product,
  measured beside ours.
* :mod:`.models` and :mod:`.configs`: the whole-model verb ``prune_(model, config)`` (in
  the style of :func:`effx_lab.quant.quantize_`), masks that stay exact zeros through
  AdamW and checkpoints (:mod:`effx_lab.sparse.masks`), head and neuron importance.
* :mod:`.schedule`: Zhu & Gupta's cubic schedule, gradual magnitude pruning as an
  ``after_step`` hook of :func:`effx_lab.models.training.train`, iterative pruning,
  weight and learning-rate rewinding, the lottery ticket.
* :mod:`.experiments`: the training runs behind 03.2 and 03.3 (a script whose results
  ship with the course); :mod:`.exercises`: the notebooks' checkers; :mod:`.bench`:
  ``python -m effx_lab.bench prune``. The Triton block-sparse matmul the chapter uses is
  the shared one, :mod:`effx_lab.sparse.kernels`.

Submodules load on demand (``from effx_lab.prune import torch_ops``).
"""

from __future__ import annotations

import importlib
from typing import Any

_SUBMODULES = (
    "reference",
    "torch_ops",
    "shapes",
    "storage",
    "sparse_torch",
    "models",
    "configs",
    "schedule",
    "experiments",
    "exercises",
    "bench",
)

__all__ = list(_SUBMODULES)


def __getattr__(name: str) -> Any:
    if name not in _SUBMODULES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return importlib.import_module(f"{__name__}.{name}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_SUBMODULES))
