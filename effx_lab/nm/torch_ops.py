"""The PyTorch face of chapter 4, "N:M sparsity and sparse Transformer layers": every
public function of the chapter, written to run fast and to differentiate.

:mod:`effx_lab.nm.reference` is its NumPy twin: the same names with the same
signatures (NumPy arrays in and out), which tests run on the same random input and
compare in float64. The code lives in one topic module per part of the chapter; this
face only gathers their ``__all__``:

* ``_torch_nm``: N:M masks along the input dimension, the compressed form (kept values
  plus packed index metadata), its exact decompression and a matmul that reads it
  (section 04.1);
* ``_torch_permute``: permutation invariance of QKᵀ and of the FFN, retained magnitude and
  the channel-permutation search (04.2);
* ``_torch_train``: the update rules of STE, SR-STE and Top-KAST (04.3);
* ``_torch_layers``: the Scaling Transformer's sparse FFN (a low-rank controller choosing
  one unit per block) and sparse QKV layer (04.4).
"""

from __future__ import annotations

from . import _torch_layers, _torch_nm, _torch_permute, _torch_train

# the face is the union of the topic modules' __all__
from ._torch_layers import *  # noqa: F403
from ._torch_nm import *  # noqa: F403
from ._torch_permute import *  # noqa: F403
from ._torch_train import *  # noqa: F403

__all__ = [
    *_torch_nm.__all__,
    *_torch_permute.__all__,
    *_torch_train.__all__,
    *_torch_layers.__all__,
]
