"""Chapter 7, FLASH: Transformer quality in linear time (Hua, Dai, Liu and Le, ICML 2022).

* :mod:`.reference` (NumPy) and :mod:`.torch_ops` (PyTorch), same names and signatures: GLU, the Gated
  Attention Unit (``relu^2`` attention with per-dimension scale/offset queries and keys and a relative
  position bias), mixed chunk attention (quadratic inside chunks, linear across them; causal and
  non-causal) and the FLASH layer.
* :mod:`.params`: weight initialisation shared by both backends; :mod:`.costs`: parameter and FLOP
  counts of a Transformer layer, a GAU layer and a FLASH layer; :mod:`.analysis`: fitting how time
  scales with length.
* :mod:`.kernels`: the Triton kernel for mixed chunk attention (state carried across chunks);
  :mod:`.models` and :mod:`.train`: small language models (Transformer, FLASH-Quad, FLASH) and a
  wall-time-budgeted training loop for the experiments; :mod:`.exercises`: the notebooks' checkers;
  :mod:`.bench`: ``python -m effx_lab.bench flash``.

Only the NumPy modules are imported here; the others on demand (``from effx_lab.flash import torch_ops``).
"""

from __future__ import annotations

from . import analysis, costs, params, reference
from .analysis import scaling_exponent
from .costs import layer_flops, layer_params, model_flops
from .params import init_flash_params, init_gau_params, init_glu_params

__all__ = [
    "analysis",
    "scaling_exponent",
    "costs",
    "params",
    "reference",
    "layer_flops",
    "layer_params",
    "model_flops",
    "init_flash_params",
    "init_gau_params",
    "init_glu_params",
]
