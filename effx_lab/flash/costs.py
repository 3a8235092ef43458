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
:func:`mixing_crossover` is the length from which FLASH's token mixing needs fewer FLOPs
than softmax attention's.
"""

from __future__ import annotations

import math

from effx_lab._validate import check_choice, check_int

from .shapes import gau_param_shapes, glu_param_shapes

__all__ = ["KINDS", "layer_params", "layer_flops", "mixing_crossover", "model_flops"]

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



def _smallest_length_below(quad: int, per_chunk: int, c: int) -> int:
    """The smallest ``n >= 1`` with ``ceil(n / c) * per_chunk < quad * n^2`` (ints).

    Inside chunk ``k`` (``(k - 1) c < n <= k c``) the left side is constant and the
    right side grows, so the inequality first holds in the first chunk where it holds
    at ``n = k c``: ``k > per_chunk / (quad c^2)``.
    """
    k = per_chunk // (quad * c * c) + 1
    n = max((k - 1) * c + 1, math.isqrt(k * per_chunk // quad))
    while quad * n * n <= k * per_chunk:
        n += 1
    return n


def mixing_crossover(
    d_model: int, *, expansion: int = 2, s: int = 128, chunk_size: int = 256
) -> int:
    """The smallest length ``n`` at which FLASH's token mixing needs fewer FLOPs than
    softmax attention's.

    Compares the ``"mixing"`` entries of :func:`layer_flops`: ``kind="flash"``,
    ``2 N c (s + e) + 4 N s e`` with ``N = ceil(n / c) c`` (the sequence padded to whole
    chunks), against ``kind="transformer"``, ``4 n^2 d`` (``QK^T`` and ``AV`` over all
    heads), with ``e = expansion * d_model``. Padding makes FLASH's count a staircase,
    flat inside a chunk, so the answer need not be a multiple of ``chunk_size``; it is
    the first ``n`` at which FLASH is cheaper (with the course's shapes it stays cheaper
    from there on). At ``d_model = 256``, ``s = 128``, ``c = 256``: 666.
    """
    d, e, s = _dims(d_model, expansion, s)
    c = check_int("chunk_size", chunk_size, min_value=1)
    per_chunk = 2 * c * c * (s + e) + 2 * 2 * c * s * e
    return _smallest_length_below(4 * d, per_chunk, c)
