"""Sparse building blocks shared by chapter 3 (pruning) and chapter 4 (N:M sparsity).

Chapter 3 prunes weights (by magnitude, by block) and fine-tunes the pruned model;
chapter 4 keeps ``n`` of every ``m`` weights along the input dimension (2:4 for sparse
tensor cores). Both need the same three things, which live here so that neither chapter
imports the other:

* **masks**, in :mod:`.reference` (NumPy) and :mod:`.torch_ops` (PyTorch), same names
  and signatures: ``magnitude_mask(w, sparsity)``, ``nm_mask(w, n, m, axis=-1)``,
  ``block_mask(w, block, density)`` and ``sparsity(x)``; a mask is a bool array of the
  weight's shape, ``True`` = kept;
* **masks that survive training**, in :mod:`.masks` (PyTorch): ``apply_mask(module,
  mask)`` attaches a :class:`~.masks.WeightMask` to a parameter (gradient hook, forward
  pre-hook, and ``reapply()`` for the training loop's ``after_step`` hook) so that
  AdamW's momentum cannot bring pruned weights back; ``apply_masks(model, masks)`` does
  it for many linears at once and gives a :class:`~.masks.MaskSet`;
* **a block-sparse matmul**: ``to_block_sparse(w, block)`` (a BSR :class:`BlockSparse`),
  ``block_sparse_matmul(x, bsr, bias=None) = x @ W.T + bias`` (the ``nn.Linear``
  convention) visiting only the stored blocks, and ``from_block_sparse(bsr)``, in both
  faces; :mod:`.kernels` has the Triton version (``from effx_lab.sparse import kernels
  as K``; it needs Triton, see ``K.why_unavailable()``).

This package is on the shared side: it never imports a chapter package. ``torch_ops``,
``masks`` and ``kernels`` are imported on demand (``from effx_lab.sparse import
torch_ops``).
"""

from __future__ import annotations

from . import reference
from ._format import BlockSparse, check_matmul_operands, check_row_structure

__all__ = [
    "BlockSparse",
    "check_matmul_operands",
    "check_row_structure",
    "reference",
]
