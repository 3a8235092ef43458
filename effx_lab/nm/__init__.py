"""Chapter 4, N:M sparsity and sparse Transformer layers.

* :mod:`.reference` (NumPy) and :mod:`.torch_ops` (PyTorch), same names and signatures,
  gathered from one topic module per part of the chapter (``_np_<topic>`` /
  ``_torch_<topic>``): N:M masks along the input dimension, the compressed form
  (kept values plus packed index metadata) and a matmul that reads it (``nm``);
  permutation invariance and the channel-permutation search of Pool & Yu (``permute``);
  the update rules of STE, SR-STE and Top-KAST (``train``); the Scaling Transformer's
  sparse FFN and sparse QKV layers (``layers``). :mod:`.shapes` holds what both faces
  check.
* :mod:`.models` and :mod:`.configs`: the whole-model verb ``sparsify_(model, config)``.
* :mod:`.sparse_training`: training N:M and Top-KAST models from scratch as hooks of
  :func:`effx_lab.models.training.train`; :mod:`.layers`: the sparse layers as modules
  that plug into the shared language model.
* :mod:`.kernels`: the Triton 2:4 compressed-weight matmul (needs Triton);
  :mod:`.semi_structured`: PyTorch's ``to_sparse_semi_structured`` (sm80+ GPUs), the
  library baseline.
* :mod:`.experiments`: the training runs behind 04.3 (a script whose results ship with
  the course); :mod:`.exercises`: the notebooks' checkers; :mod:`.bench`:
  ``python -m effx_lab.bench nm``.

Submodules load on demand (``from effx_lab.nm import torch_ops``).
"""

from __future__ import annotations

import importlib
from typing import Any

_SUBMODULES = (
    "reference",
    "torch_ops",
    "shapes",
    "models",
    "configs",
    "sparse_training",
    "layers",
    "kernels",
    "semi_structured",
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
