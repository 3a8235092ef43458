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
TinyLM and MiniLM), :mod:`.smoothquant` (SmoothQuant's alpha measured on MiniLM's layers), :mod:`.exercises`
and :mod:`.bench`.

Whole models, torchao's way: ``quantize_(model, config)`` quantizes a TinyLM **in
place** (and returns it) with a small config from :mod:`.configs` (:class:`RTNConfig`,
:class:`GPTQConfig`, :class:`W8A8Config`, :class:`LLMInt8Config`,
:class:`SmoothQuantConfig`, :class:`ZeroQuantConfig`); ``calib_tokens=`` feeds the
methods that calibrate (GPTQ, SmoothQuant). It is built on
:func:`.models.quantize_tinylm`, which returns a quantized copy instead. The pruning and
sparsity chapters add ``prune_`` / ``sparsify_`` in the same shape. The model surgery
and the data every chapter shares live outside this package
(:mod:`effx_lab.models.surgery`, :mod:`effx_lab.data.pools`).

The topic modules (``_np_*``/``_torch_*``) take their primitives from ``_np_uniform`` /
``_torch_uniform`` and never import the faces, so any of them may be imported first; each
face's ``__all__`` is built from its topic modules' ``__all__``.
"""

from __future__ import annotations

from . import reference, torch_ops
from .configs import (
    GPTQConfig,
    LLMInt8Config,
    QuantConfig,
    RTNConfig,
    SmoothQuantConfig,
    W8A8Config,
    ZeroQuantConfig,
)
from .models import quantize_
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
    "GPTQConfig",
    "GRANULARITIES",
    "LLMInt8Config",
    "QParams",
    "QuantConfig",
    "RTNConfig",
    "SmoothQuantConfig",
    "W8A8Config",
    "ZeroQuantConfig",
    "compute_qparams",
    "dequantize",
    "expand_qparams",
    "fake_quantize",
    "qparams_shape",
    "qrange",
    "quant_error",
    "quantize",
    "quantize_",
    "reference",
    "torch_ops",
]
