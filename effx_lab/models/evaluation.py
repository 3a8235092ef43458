"""How much a compressed model still agrees with the float one: shared by every chapter.

* :func:`minilm_embeddings` -- MiniLM's sentence embeddings with every linear layer
  computed by a hook (quantized in chapter 2, pruned or sparse in chapters 3 and 4);
* :func:`embedding_agreement` -- cosine and nearest-neighbour agreement of two sets of
  embeddings (does search still return the same sentences?).

Perplexity of a language model is :func:`effx_lab.models.training.perplexity`.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from effx_lab._validate import check_array, check_int, describe
from effx_lab.models.config import MiniLMConfig, check_minilm_config
from effx_lab.models.surgery import check_ids_mask, minilm_batches
from effx_lab.progress import progress_bar

__all__ = ["embedding_agreement", "minilm_embeddings"]


def minilm_embeddings(
    params: dict[str, Any],
    config: MiniLMConfig,
    ids: Any,
    mask: Any,
    hook: Callable | None = None,
    *,
    batch_size: int = 64,
) -> torch.Tensor:
    """Sentence embeddings ``[B, hidden]`` (float32, unit norm: mean over real tokens, then L2-normalised)
    of MiniLM with every linear layer computed by ``hook`` (``None``: float). Runs under ``torch.no_grad``,
    ``batch_size`` sentences at a time, each batch cut to its longest sentence (dynamic activation scales see
    one batch: its real tokens and the padding of its shorter sentences), on the device of ``ids``."""
    from effx_lab.models.torch_ops import mean_pool_normalize, minilm_forward

    check_minilm_config(config)
    if hook is not None and not callable(hook):
        raise TypeError(f"hook must be None or a callable linear(name, x, weight, bias) -> y, got {describe(hook)}")
    batch_size = check_int("batch_size", batch_size, min_value=1)
    ids_t, mask_t = check_ids_mask(ids, mask)
    out = []
    with torch.no_grad():
        batches = progress_bar(
            minilm_batches(ids_t, mask_t, batch_size),
            total=-(-int(ids_t.shape[0]) // batch_size),
            desc="MiniLM embeddings",
            unit="batch",
        )
        for i, m in batches:
            hidden = minilm_forward(params, config, i, m, linear=hook)
            out.append(mean_pool_normalize(hidden.float(), m))
    return torch.cat(out)


def embedding_agreement(ref: Any, test: Any, k: int = 5) -> dict[str, float]:
    """How well embeddings ``test`` ``[N, D]`` (of a quantized model) agree with ``ref`` (of the float model).

    * ``cosine_mean`` / ``cosine_min``: cosine similarity of each sentence's two embeddings;
    * ``top1_agreement``: fraction of sentences whose nearest neighbour among the *other* sentences (by
      cosine) is the same under ``ref`` and ``test`` (a retrieval view: does search still return the same?);
    * ``topk_overlap``: mean ``|top-k(ref) ∩ top-k(test)| / k``.

    NumPy arrays or torch tensors; computed in float64. ``N >= 2``, ``1 <= k <= N - 1``.
    """
    check_array("ref", ref, ndim=2, dtype_kind="f", allow_torch=True, finite=True)
    check_array("test", test, ndim=2, dtype_kind="f", allow_torch=True, finite=True)
    r = torch.as_tensor(ref).detach().to("cpu", torch.float64)
    t = torch.as_tensor(test).detach().to("cpu", torch.float64)
    if r.shape != t.shape:
        raise ValueError(f"test must have the shape of ref {tuple(r.shape)}, got {tuple(t.shape)}")
    n = r.shape[0]
    if n < 2:
        raise ValueError(f"ref must hold at least 2 embeddings (rows) for nearest neighbours, got {n}")
    k = check_int("k", k, min_value=1, max_value=n - 1)
    rn, tn = F.normalize(r, dim=1), F.normalize(t, dim=1)
    if bool((r.norm(dim=1) == 0).any()) or bool((t.norm(dim=1) == 0).any()):
        raise ValueError("ref and test must not contain all-zero rows (cosine undefined)")
    cos = (rn * tn).sum(dim=1)
    eye = torch.eye(n, dtype=torch.bool)
    s_ref = (rn @ rn.T).masked_fill(eye, -math.inf)
    s_test = (tn @ tn.T).masked_fill(eye, -math.inf)
    top_ref, top_test = s_ref.topk(k, dim=1).indices, s_test.topk(k, dim=1).indices
    overlap = (top_ref[:, :, None] == top_test[:, None, :]).any(dim=2).sum(dim=1).double() / k
    return {
        "cosine_mean": float(cos.mean()),
        "cosine_min": float(cos.min()),
        "top1_agreement": float((top_ref[:, 0] == top_test[:, 0]).double().mean()),
        "topk_overlap": float(overlap.mean()),
    }
