"""Chapter 7, FLASH: Transformer quality in linear time (Hua, Dai, Liu and Le, ICML 2022).

* :mod:`.reference` (NumPy) and :mod:`.torch_ops` (PyTorch), same names and signatures: GLU, the Gated
  Attention Unit (``relu^2`` attention with per-dimension scale/offset queries and keys and a relative
  position bias), mixed chunk attention (quadratic inside chunks, linear across them; causal and
  non-causal) and the FLASH layer.
* :mod:`.params`: weight initialisation shared by both backends; :mod:`.costs`: parameter and FLOP
  counts of a Transformer layer, a GAU layer and a FLASH layer; :mod:`.analysis`: fitting how time
  scales with length.
* :mod:`.kernels`: the Triton kernel for mixed chunk attention (state carried across chunks);
  :mod:`.models` and :mod:`.train`: the experiments' small language models (Transformer, FLASH-Quad, FLASH:
  configurations of the shared :class:`effx_lab.models.lm.LM`) and their step- or time-budgeted training
  (the shared :func:`effx_lab.models.training.train`); :mod:`.exercises`: the notebooks' checkers;
  :mod:`.bench`: ``python -m effx_lab.bench flash``.

Importing the package registers the ``"gau"`` and ``"flash"`` mixers with the shared language model
(:func:`effx_lab.models.lm.register_mixer`, in :mod:`.models`), so ``LMSpec(mixer="flash")`` works after
``import effx_lab.flash`` (this loads :mod:`.torch_ops` too). The other modules (kernels, training,
benchmarks, checkers) load on demand (``from effx_lab.flash import train``).
"""

from __future__ import annotations

from . import analysis, costs, models, params, reference
from .analysis import scaling_exponent
from .costs import layer_flops, layer_params, model_flops
from .params import init_flash_params, init_gau_params, init_glu_params

__all__ = [
    "analysis",
    "scaling_exponent",
    "costs",
    "models",
    "params",
    "reference",
    "layer_flops",
    "layer_params",
    "model_flops",
    "init_flash_params",
    "init_gau_params",
    "init_glu_params",
]
