"""Chapter 1, "Why inference is expensive": memory and FLOP accounting, and sequence packing.

* :mod:`.memory`: bytes of weights and of the KV cache, model presets (PaLM, GPT-3, Llama 2, MiniLM),
  the largest batch that fits, and the survey's "3 TB KV cache" example recomputed.
* :mod:`.flops`: FLOPs and bytes of matmuls, prefill and decode; arithmetic intensity; roofline time.
* :mod:`.reference` (NumPy) and :mod:`.torch_ops` (PyTorch): pack/unpack padded batches
  (EffectiveTransformer) with the same names and signatures.
* :mod:`.exercises`: checkers for the chapter's notebooks; :mod:`.bench`: ``run(quick)`` for
  ``python -m effx_lab.bench ch01``.

``torch_ops``, ``exercises`` and ``bench`` are imported on demand (``from effx_lab.costs import torch_ops``)
so that importing this package stays light.
"""
from __future__ import annotations

from . import flops, memory, reference
from .flops import (
    arithmetic_intensity,
    decode_bytes,
    decode_flops,
    decode_intensity,
    forward_flops,
    layer_flops_breakdown,
    matmul_bytes,
    matmul_flops,
    matmul_flops_bytes,
    prefill_bytes,
    prefill_flops,
    prefill_intensity,
    roofline_time,
)
from .memory import (
    DTYPE_BYTES,
    PRESETS,
    ModelShape,
    dtype_bytes,
    get_preset,
    kv_cache_bytes,
    kv_crossover_tokens,
    max_batch_size,
    memory_report,
    param_bytes,
    pope_example,
    with_kv_heads,
)

__all__ = [
    "flops",
    "memory",
    "reference",
    "DTYPE_BYTES",
    "PRESETS",
    "ModelShape",
    "dtype_bytes",
    "get_preset",
    "kv_cache_bytes",
    "kv_crossover_tokens",
    "with_kv_heads",
    "max_batch_size",
    "memory_report",
    "param_bytes",
    "pope_example",
    "arithmetic_intensity",
    "decode_bytes",
    "decode_flops",
    "decode_intensity",
    "forward_flops",
    "layer_flops_breakdown",
    "matmul_bytes",
    "matmul_flops",
    "matmul_flops_bytes",
    "prefill_bytes",
    "prefill_flops",
    "prefill_intensity",
    "roofline_time",
]
