"""The NumPy face of chapter 2, "Quantization": every public function of the chapter,
written to be read.

:mod:`effx_lab.quant.torch_ops` is its PyTorch twin: the same names with the same
signatures (torch tensors in and out), which tests run on the same random input and
compare in float64. The code lives in one topic module per part of the chapter; this
face only gathers their ``__all__``:

* ``_np_uniform``: uniform quantization (section 02.1): the integer grid
  (:func:`qrange`), min/max calibration per tensor, channel or group
  (:func:`compute_qparams` -> :class:`QParams`), :func:`quantize`, :func:`dequantize`,
  :func:`fake_quantize` and :func:`quant_error`. Its docstring states the formulas.
* ``_np_outliers``: GOBO, LLM.int8's vector-wise product and decomposition, W8A8, PEG,
  ZeroQuant and SmoothQuant (02.2-02.4, 02.6).
* ``_np_gptq``: round-to-nearest, GPTQ and int4/int8 weight-only storage (02.5).
* ``_np_hawq``: Hutchinson traces, mixed-precision bit allocation and the
  straight-through gradient (02.5, 02.7).

The topic modules take their primitives from ``_np_uniform``, never from this face, so
no module imports one that imports it back.
"""

from __future__ import annotations

from . import _np_gptq, _np_hawq, _np_outliers, _np_uniform

# the face is the union of the topic modules' __all__
from ._np_gptq import *  # noqa: F403
from ._np_hawq import *  # noqa: F403
from ._np_outliers import *  # noqa: F403
from ._np_uniform import *  # noqa: F403

__all__ = [
    *_np_uniform.__all__,
    *_np_outliers.__all__,
    *_np_gptq.__all__,
    *_np_hawq.__all__,
]
