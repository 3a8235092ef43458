"""Parameter and FLOP counts of a Transformer layer, a GAU layer and a FLASH layer (chapter 7).

FLOPs count the matrix products of one forward pass over one sequence of ``n`` tokens, 2 per
multiply-add (elementwise work, norms and softmax are left out: they are small next to the matmuls at
these widths, and the notebooks measure time anyway). Dense attention is counted in full even when
causal, because the dense implementations compute the whole ``n x n`` matrix and mask it.

Per layer, with width ``d``, ``e = expansion * d``, shared width ``s`` and chunk ``c``:

=================  =====================================  ====================================
layer              projections                            token mixing
=================  =====================================  ====================================
Transformer        ``2 n (4 d^2 + 2 d d_ff)``             ``2 n^2 (d + d)`` (``QK^T`` and ``AV``)
GAU / FLASH-Quad   ``2 n (d (2e + s) + e d)``             ``2 n^2 (s + e)``
FLASH              same as GAU                            ``2 n c (s + e)`` + ``2 * 2 n s e``
=================  =====================================  ====================================

The FLASH row is the paper's ``O(n c) + O(n e s)``: local attention inside chunks, and one ``K^T V`` state
product plus one ``Q_lin`` read-out per token for the global part.
"""

from __future__ import annotations

from effx_lab._validate import check_choice, check_int

from .shapes import gau_param_shapes, glu_param_shapes

__all__ = ["KINDS", "layer_params", "layer_flops", "model_flops"]

KINDS = ("transformer", "glu", "gau", "flash")


def _dims(d_model: int, expansion: int, s: int) -> tuple[int, int, int]:
    d = check_int("d_model", d_model, min_value=1)
    e = check_int("expansion", expansion, min_value=1) * d
    s = check_int("s", s, min_value=1)
    return d, e, s


def layer_params(
    kind: str, d_model: int, *, d_ff: int | None = None, expansion: int = 2, s: int = 128, max_rel: int = 127
) -> int:
    """Number of weights of one layer of ``kind`` (``"transformer"``: MHA + FFN with ``d_ff = 4 d``;
    ``"glu"``; ``"gau"``; ``"flash"``), biases and LayerNorm included."""
    check_choice("kind", kind, KINDS)
    d, e, s = _dims(d_model, expansion, s)
    max_rel = check_int("max_rel", max_rel, min_value=0)
    if kind == "transformer":
        d_ff = 4 * d if d_ff is None else check_int("d_ff", d_ff, min_value=1)
        return 4 * (d * d + d) + (d * d_ff + d_ff) + (d_ff * d + d) + 4 * d
    if kind == "glu":
        shapes = glu_param_shapes(d, e)
    else:
        shapes = gau_param_shapes(d, e, s, 2 if kind == "gau" else 4, 2 * max_rel + 1)
    total = 0
    for shape in shapes.values():
        size = 1
        for dim in shape:
            size *= dim
        total += size
    return total


def layer_flops(
    kind: str,
    n: int,
    d_model: int,
    *,
    d_ff: int | None = None,
    expansion: int = 2,
    s: int = 128,
    chunk_size: int = 256,
) -> dict[str, int]:
    """Forward matmul FLOPs of one layer on one sequence: ``{"projections", "mixing", "total"}``.

    ``kind`` is ``"transformer"``, ``"gau"`` (FLASH-Quad) or ``"flash"``; ``chunk_size`` matters only for
    ``"flash"`` (a sequence shorter than a chunk is padded to one chunk, as the implementations do).
    """
    check_choice("kind", kind, ("transformer", "gau", "flash"))
    n = check_int("n", n, min_value=1)
    d, e, s = _dims(d_model, expansion, s)
    c = check_int("chunk_size", chunk_size, min_value=1)
    if kind == "transformer":
        d_ff = 4 * d if d_ff is None else check_int("d_ff", d_ff, min_value=1)
        proj = 2 * n * (4 * d * d + 2 * d * d_ff)
        mixing = 2 * n * n * (d + d)
    else:
        proj = 2 * n * (d * (2 * e + s) + e * d)
        if kind == "gau":
            mixing = 2 * n * n * (s + e)
        else:
            padded = -(-n // c) * c
            mixing = 2 * padded * c * (s + e) + 2 * 2 * padded * s * e
    return {"projections": proj, "mixing": mixing, "total": proj + mixing}


def model_flops(kind: str, n: int, d_model: int, n_layers: int, **kwargs) -> int:
    """Total forward FLOPs of ``n_layers`` layers of ``kind`` (so a Transformer with ``N`` layers compares
    with ``2N`` GAU or FLASH layers at about the same parameter count)."""
    n_layers = check_int("n_layers", n_layers, min_value=1)
    return n_layers * layer_flops(kind, n, d_model, **kwargs)["total"]
