"""Chapter 2, "Quantization": storing weights and activations as small integers.

* :mod:`.reference` (NumPy, written to be read) and :mod:`.torch_ops` (PyTorch, vectorised, CPU/CUDA), same
  names and signatures: uniform quantization (section 02.1). The integer grid (:func:`qrange`: symmetric
  restricted signed, or affine unsigned, 2 to 8 bits), min/max calibration of ``scale`` and ``zero_point``
  per tensor, per channel or per group (:func:`compute_qparams`, returning a :class:`QParams`),
  :func:`quantize` (round half to even, clip), :func:`dequantize`, :func:`fake_quantize` (quantize then
  dequantize) and the error metrics of :func:`quant_error` (MSE, max error, SQNR in dB, relative Frobenius).

Later sections add outlier-aware and data-aware methods (GOBO, LLM.int8, SmoothQuant, GPTQ), quantization-aware
training and Triton kernels. Both public faces are imported here (``import effx_lab`` has already imported
torch), so any topic module (``_np_*``/``_torch_*``) may be imported first without a circular-import error.
"""

from __future__ import annotations

from . import reference, torch_ops
from .reference import (
    GRANULARITIES,
    QParams,
    compute_qparams,
    dequantize,
    expand_qparams,
    fake_quantize,
    qparams_shape,
    qrange,
    quant_error,
    quantize,
)

__all__ = [
    "GRANULARITIES",
    "QParams",
    "compute_qparams",
    "dequantize",
    "expand_qparams",
    "fake_quantize",
    "qparams_shape",
    "qrange",
    "quant_error",
    "quantize",
    "reference",
    "torch_ops",
]
