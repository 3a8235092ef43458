"""The PyTorch face of chapter 2, "Quantization": the names and signatures of
:mod:`effx_lab.quant.reference`, torch tensors in and out, vectorised, on CPU or CUDA.

The code lives in one topic module per part of the chapter, each the twin of a NumPy
one; this face only gathers their ``__all__``:

* ``_torch_uniform``: uniform quantization (section 02.1), the same arithmetic as
  ``_np_uniform`` on views (its docstring says what differs from the NumPy version, and
  why); :class:`QParams` is shared.
* ``_torch_outliers``: GOBO, LLM.int8, W8A8, PEG, ZeroQuant, SmoothQuant (02.2-02.4,
  02.6).
* ``_torch_gptq``: round-to-nearest, GPTQ, int4/int8 weight-only storage (02.5).
* ``_torch_hawq``: Hutchinson traces, bit allocation, the straight-through gradient
  (02.5, 02.7), plus three names that need autograd and have no NumPy twin:
  :func:`hvp_fn`, :func:`layer_traces` and :func:`fake_quantize_ste`.

The topic modules take their primitives from ``_torch_uniform`` (and the shared
validation from the ``_np_*`` modules), never from this face, so no module imports one
that imports it back.
"""

from __future__ import annotations

from . import _torch_gptq, _torch_hawq, _torch_outliers, _torch_uniform

# the face is the union of the topic modules' __all__
from ._torch_gptq import *  # noqa: F403
from ._torch_hawq import *  # noqa: F403
from ._torch_outliers import *  # noqa: F403
from ._torch_uniform import *  # noqa: F403

__all__ = [
    *_torch_uniform.__all__,
    *_torch_outliers.__all__,
    *_torch_gptq.__all__,
    *_torch_hawq.__all__,
]
