"""The PyTorch face of chapter 5, "Mixture of experts": every public function of the
chapter, written to be fast and differentiable.

:mod:`effx_lab.moe.reference` is its NumPy twin: the same names with the same
signatures (NumPy arrays in and out), which tests run on the same random input and
compare in float64. The code lives in one topic module per part of the chapter; this
face only gathers their ``__all__``:

* ``_torch_route``: routers (softmax top-k, noisy top-k, Switch top-1, GLaM top-2),
  their auxiliary losses, expert capacity, vanilla and Batch Priority Routing, dynamic
  capacity (sections 05.1 and 05.2);
* ``_torch_dispatch``: the experts run on the routed tokens three ways with identical
  outputs: a per-token loop, one-hot dispatch/combine einsums, sort-by-expert + grouped
  GEMM (05.3);
* ``_torch_variants``: task-level routing and PR-MoE (05.2).
"""

from __future__ import annotations

from . import _torch_dispatch, _torch_route, _torch_variants

# the face is the union of the topic modules' __all__
from ._torch_dispatch import *  # noqa: F403
from ._torch_route import *  # noqa: F403
from ._torch_variants import *  # noqa: F403

__all__ = [
    *_torch_route.__all__,
    *_torch_dispatch.__all__,
    *_torch_variants.__all__,
]
