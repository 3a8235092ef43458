"""Chapter 2, "Quantization": storing weights and activations as small integers.

* :mod:`.reference` (NumPy, written to be read) and :mod:`.torch_ops` (PyTorch, vectorised, CPU/CUDA), same
  names and signatures: uniform quantization (section 02.1). The integer grid (:func:`qrange`: symmetric
  restricted signed, or affine unsigned, 2 to 8 bits), min/max calibration of ``scale`` and ``zero_point``
  per tensor, per channel or per group (:func:`compute_qparams`, returning a :class:`QParams`),
  :func:`quantize` (round half to even, clip), :func:`dequantize`, :func:`fake_quantize` (quantize then
  dequantize) and the error metrics of :func:`quant_error` (MSE, max error, SQNR in dB, relative Frobenius).

The later sections' methods live in topic modules and are re-exported by both faces: ``_np_outliers`` /
``_torch_outliers`` (GOBO, LLM.int8's vector-wise product and decomposition, W8A8, PEG, ZeroQuant, SmoothQuant;
02.2-02.4, 02.6), ``_np_gptq`` / ``_torch_gptq`` (round-to-nearest, GPTQ, int4/int8 weight-only storage; 02.5),
``_np_hawq`` / ``_torch_hawq`` (Hutchinson traces, bit allocation, the straight-through gradient; 02.5, 02.7).
Beside them: :mod:`.kernels` (Triton), :mod:`.qat` (quantization-aware training), :mod:`.models` (whole
TinyLM and MiniLM, calibration and evaluation data), :mod:`.exercises` and :mod:`.bench`.

Both public faces are imported here (``import effx_lab`` has already imported torch), so any topic module
(``_np_*``/``_torch_*``) may be imported first without a circular-import error.
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
