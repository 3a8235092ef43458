"""The NumPy face of chapter 5, "Mixture of experts": every public function of the
chapter, written to be read.

:mod:`effx_lab.moe.torch_ops` is its PyTorch twin: the same names with the same
signatures (torch tensors in and out), which tests run on the same random input and
compare in float64. The code lives in one topic module per part of the chapter; this
face only gathers their ``__all__``:

* ``_np_route``: routers (softmax top-k, noisy top-k, Switch top-1, GLaM top-2), their
  auxiliary losses, expert capacity, vanilla and Batch Priority Routing, dynamic
  capacity (sections 05.1 and 05.2);
* ``_np_dispatch``: the experts run on the routed tokens three ways with identical
  outputs: a per-token loop, one-hot dispatch/combine einsums, sort-by-expert + grouped
  GEMM (05.3);
* ``_np_variants``: task-level routing and PR-MoE (05.2).
"""

from __future__ import annotations

from . import _np_dispatch, _np_route, _np_variants

# the face is the union of the topic modules' __all__
from ._np_dispatch import *  # noqa: F403
from ._np_route import *  # noqa: F403
from ._np_variants import *  # noqa: F403

__all__ = [
    *_np_route.__all__,
    *_np_dispatch.__all__,
    *_np_variants.__all__,
]
