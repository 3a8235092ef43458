"""The NumPy face of chapter 4, "N:M sparsity and sparse Transformer layers": every
public function of the chapter, written to be read.

:mod:`effx_lab.nm.torch_ops` is its PyTorch twin: the same names with the same
signatures (torch tensors in and out), which tests run on the same random input and
compare in float64. The code lives in one topic module per part of the chapter; this
face only gathers their ``__all__``:

* ``_np_nm``: N:M masks along the input dimension, the compressed form (kept values
  plus packed index metadata), its exact decompression and a matmul that reads it
  (section 04.1);
* ``_np_permute``: permutation invariance of QKᵀ and of the FFN, retained magnitude and
  the channel-permutation search (04.2);
* ``_np_train``: the update rules of STE, SR-STE and Top-KAST (04.3);
* ``_np_layers``: the Scaling Transformer's sparse FFN (a low-rank controller choosing
  one unit per block) and sparse QKV layer (04.4).
"""

from __future__ import annotations

from . import _np_layers, _np_nm, _np_permute, _np_train

# the face is the union of the topic modules' __all__
from ._np_layers import *  # noqa: F403
from ._np_nm import *  # noqa: F403
from ._np_permute import *  # noqa: F403
from ._np_train import *  # noqa: F403

__all__ = [
    *_np_nm.__all__,
    *_np_permute.__all__,
    *_np_train.__all__,
    *_np_layers.__all__,
]
