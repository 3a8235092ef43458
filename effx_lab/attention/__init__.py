"""Attention building blocks shared by the chapters on efficient attention (ch06) and FLASH (ch07).

* :mod:`.reference` (NumPy) and :mod:`.torch_ops` (PyTorch), same names and signatures: softmax
  attention, multi-head attention, the pre-LN Transformer layer, linear attention (non-causal and
  causal prefix-sum) and its explicit quadratic-order twin.
* :mod:`.shapes`: parameter shapes and argument checks, imported by both faces and by
  the chapters built on them (FLASH).
* :mod:`.params`: weight initialisation shared by both backends; :mod:`.costs`: multiply-add counts of
  the two multiplication orders (``2 d m^2`` vs ``2 m d^2``).

``torch_ops`` is imported on demand (``from effx_lab.attention import torch_ops``).
"""

from __future__ import annotations

from . import costs, params, reference, shapes
from .costs import attention_macs, crossover_length
from .params import count_params, init_mha_params, init_transformer_layer_params, to_torch

__all__ = [
    "costs",
    "params",
    "reference",
    "shapes",
    "attention_macs",
    "crossover_length",
    "count_params",
    "init_mha_params",
    "init_transformer_layer_params",
    "to_torch",
]
