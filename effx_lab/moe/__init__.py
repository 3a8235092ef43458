"""Chapter 5, mixture of experts.

* :mod:`.reference` (NumPy) and :mod:`.torch_ops` (PyTorch), same names and signatures,
  gathered from one topic module per part of the chapter (``_np_<topic>`` /
  ``_torch_<topic>``): the routers, their auxiliary losses and the capacity rules of
  Shazeer et al., Switch, GLaM, Batch Priority Routing and dynamic capacity (``route``);
  the three ways to run the experts on the routed tokens, a per-token loop, one-hot
  dispatch/combine einsums and sort-by-expert + grouped GEMM (``dispatch``); task-level
  routing and PR-MoE (``variants``). :mod:`.shapes` holds what both faces check.
* :mod:`.layers`: the MoE feed-forward blocks as sublayers of the shared language model
  (``ffn="moe"``, ``ffn="pr_moe"``) with their auxiliary losses; :mod:`.models` and
  :mod:`.configs`: the whole-model verb.
* :mod:`.kernels`: the Triton grouped GEMM over expert-sorted tokens (needs Triton);
  :mod:`.library`: PyTorch's ``grouped_mm``, the library baseline.
* :mod:`.distributed`: expert parallelism over ``torch.distributed`` (all-to-all and
  hierarchical all-to-all) and the message counts behind them; ``ep_demo`` is the same
  per-rank code as a script for ``torchrun --nproc-per-node 4 -m effx_lab.moe.ep_demo``
  (one machine or several).
* :mod:`.experiments`: the training runs behind 05.1 and 05.2 (a script whose results
  ship with the course); :mod:`.exercises`: the notebooks' checkers; :mod:`.bench`:
  ``python -m effx_lab.bench moe``.

Submodules load on demand (``from effx_lab.moe import torch_ops``).
"""

from __future__ import annotations

import importlib
from typing import Any

_SUBMODULES = (
    "reference",
    "torch_ops",
    "shapes",
    "layers",
    "models",
    "configs",
    "kernels",
    "library",
    "distributed",
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
