"""Checkers for notebook 03.1's exercises (magnitude and structured pruning).

* ``csr_nbytes(shape, nnz, value_bytes=4, index_bytes=4) -> int``: the bytes of a
  ``(rows, cols)`` matrix stored in CSR with ``nnz`` entries, ``nnz * value_bytes``
  (values) ``+ nnz * index_bytes`` (column indices) ``+ (rows + 1) * index_bytes`` (row
  pointers), as :func:`effx_lab.prune.storage.csr_nbytes`; in the notebook it predicts
  the sparsity above which CSR stores fewer bytes than dense, plotted beside the
  sparsity at which a CSR product starts to beat the dense one on the reader's device.
* ``prune_neurons(params, keep) -> dict``: an FFN with only the hidden neurons ``keep``
  (sorted indices), as :func:`effx_lab.prune.reference.prune_neurons`: the columns
  ``keep`` of ``w1`` ``(d, d_ff)``, the entries ``keep`` of ``b1``, the rows ``keep`` of
  ``w2`` ``(d_ff, d_out)``; every other key passes through unchanged. In the notebook it
  builds the pruned FFNs whose speed is measured against the dense one.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from effx_lab.check import Case, CheckResult, Mistake, check_with_hints, checker, named

from ..reference import prune_neurons
from ..storage import csr_nbytes

__all__ = ["check_csr_nbytes", "check_prune_neurons"]


# =========================================================================== CSR bytes
@named("csr_nbytes")
def _csr_nbytes_reference(shape, nnz, value_bytes=4, index_bytes=4):
    return csr_nbytes(shape, nnz, value_bytes, index_bytes)


def _csr_mistake(formula):
    """A wrong byte count ``formula(rows, cols, nnz, v, i)``, with the signature of
    ``csr_nbytes`` (defaults included)."""

    def wrong(shape, nnz, value_bytes=4, index_bytes=4):
        rows, cols = shape
        return formula(rows, cols, nnz, value_bytes, index_bytes)

    return wrong


_CSR_MISTAKES = [
    Mistake(
        _csr_mistake(lambda r, c, n, v, i: n * (v + i)),
        "you counted the values and the column indices but not the row pointers: "
        "CSR also stores rows + 1 offsets (where each row starts in values, plus the "
        "end), each index_bytes long.",
    ),
    Mistake(
        _csr_mistake(lambda r, c, n, v, i: n * (v + i) + r * i),
        "the row pointers are rows + 1 offsets, not rows: row k's entries are "
        "values[row_ptr[k]:row_ptr[k + 1]], so the last row needs an end offset too.",
    ),
    Mistake(
        _csr_mistake(lambda r, c, n, v, i: n * (v + i) + (c + 1) * i),
        "CSR compresses rows: it stores one pointer per row (rows + 1 of them), not "
        "per column (cols + 1 is CSC, the column-wise format).",
    ),
    Mistake(
        _csr_mistake(lambda r, c, n, v, i: n * v + r * c * i + (r + 1) * i),
        "CSR stores a column index only for each stored entry (nnz of them), not for "
        "every entry of the dense matrix: that would cost more than the dense matrix.",
    ),
    Mistake(
        _csr_mistake(lambda r, c, n, v, i: (2 * n + r + 1) * v),
        "the column indices and row pointers are integers of index_bytes each, not "
        "value_bytes: count nnz * value_bytes + (nnz + rows + 1) * index_bytes.",
    ),
    Mistake(
        _csr_mistake(lambda r, c, n, v, i: n * (v + i) + (r + 1) * v),
        "the row pointers are indices (index_bytes each), not values.",
    ),
    Mistake(
        _csr_mistake(lambda r, c, n, v, i: (r * c - n) * (v + i) + (r + 1) * i),
        "nnz is the number of entries stored (the non-zeros), not the number pruned.",
    ),
]


def _csr_cases(rng: np.random.Generator) -> list[Case]:
    cases = [  # the first cases tell the mistakes apart (rows != cols, v != i)
        Case("tiny: a 3 x 5 matrix, 5 entries, fp16 values, int32 indices",
             ((3, 5), 5), dict(value_bytes=2, index_bytes=4)),
        Case("defaults: a 4 x 6 matrix, 10 entries, fp32 values, int32 indices",
             ((4, 6), 10)),
        Case("int8 values, int64 indices: 7 x 2, 9 entries",
             ((7, 2), 9), dict(value_bytes=1, index_bytes=8)),
        Case("empty: no entries stored (only the row pointers)", ((8, 8), 0)),
        Case("full: every entry stored (CSR costs more than dense)",
             ((5, 3), 15), dict(value_bytes=4, index_bytes=8)),
        Case("one row", ((1, 1000), 17), dict(value_bytes=2, index_bytes=2)),
        Case("one column", ((1000, 1), 999)),
        Case("shape as a list", ([6, 9], 20), dict(value_bytes=8, index_bytes=4)),
        Case("positional byte sizes: 10 x 12, 30 entries, fp16, int16",
             ((10, 12), 30, 2, 2)),
        Case("a TinyLM FFN matrix (512 x 128) at 90 % sparsity",
             ((512, 128), 6554)),
        Case("a 4096 x 4096 matrix at 50 % sparsity, bf16 values, int64 indices",
             ((4096, 4096), 8_388_608), dict(value_bytes=2, index_bytes=8)),
    ]
    for k in range(4):
        rows, cols = int(rng.integers(1, 3000)), int(rng.integers(1, 3000))
        nnz = int(rng.integers(0, rows * cols + 1))
        v, i = (int(b) for b in rng.choice([1, 2, 4, 8], size=2))
        cases.append(Case(f"random draw {k + 1}: {rows} x {cols}, {nnz} entries, "
                          f"{v}-byte values, {i}-byte indices",
                          ((rows, cols), nnz), dict(value_bytes=v, index_bytes=i)))
    return cases


@checker(reference=_csr_nbytes_reference)
def check_csr_nbytes(student_fn: Any) -> CheckResult:
    """Check ``csr_nbytes(shape, nnz, value_bytes=4, index_bytes=4) -> int`` (exact)."""
    return check_with_hints(
        student_fn, _csr_nbytes_reference, _csr_cases, _CSR_MISTAKES,
        name="csr_nbytes", rtol=0.0, atol=0.0, exact=True,
    )  # fmt: skip


# =========================================================================== neurons
@named("prune_neurons")
def _prune_neurons_reference(params, keep):
    return prune_neurons(params, keep)


def _neuron_mistake(shrink):
    """A wrong ``prune_neurons`` from ``shrink(params, keep) -> dict of changed keys``;
    ``None`` where the wrong shapes could not even be built (the student's code would
    have raised, and the checker says so)."""

    def wrong(params, keep):
        try:
            changed = shrink(params, list(keep))
        except (IndexError, ValueError):
            return None
        return {**params, **changed}

    return wrong


def _only_ffn(params, keep):
    return {k: v for k, v in _prune_neurons_reference(params, keep).items()
            if k in ("w1", "b1", "w2")}


_NEURON_MISTAKES = [
    Mistake(
        _neuron_mistake(lambda p, k: dict(w1=p["w1"][:, k], b1=p["b1"][k],
                                          w2=p["w2"][:, k])),
        "neuron j's output weights are ROW j of w2 (shape (d_ff, d_out): one row per "
        "hidden neuron), so keep w2[keep, :]; w2[:, keep] picks output features.",
    ),
    Mistake(
        _neuron_mistake(lambda p, k: dict(w1=p["w1"][k, :], b1=p["b1"][k],
                                          w2=p["w2"][k, :])),
        "in this layout w1 has shape (d, d_ff) (y = x @ w1 + b1): neuron j is COLUMN "
        "j of w1, so keep w1[:, keep]. (nn.Linear stores the transpose, (d_ff, d).)",
    ),
    Mistake(
        _neuron_mistake(lambda p, k: dict(w1=p["w1"][:, k], w2=p["w2"][k, :])),
        "you forgot b1: neuron j has a bias b1[j] too, so b1 shrinks to b1[keep] "
        "(otherwise x @ w1 + b1 no longer lines up).",
    ),
    Mistake(
        _neuron_mistake(lambda p, k: dict(
            w1=np.delete(p["w1"], k, axis=1), b1=np.delete(p["b1"], k),
            w2=np.delete(p["w2"], k, axis=0))),
        "keep lists the neurons that STAY, not those removed: index with keep "
        "instead of deleting it.",
    ),
    Mistake(
        _neuron_mistake(lambda p, k: dict(w1=p["w1"][:, k], b1=p["b1"][k],
                                          w2=p["w2"][k, :], b2=p["b2"][k])),
        "b2 belongs to the output (d_out features), not to the hidden neurons: it "
        "stays as it is.",
    ),
    Mistake(
        _only_ffn,
        "return every key of params: the keys other than w1, b1 and w2 (b2, the "
        "LayerNorm, attention weights) pass through unchanged.",
    ),
]


def _ffn(rng, d, d_ff, d_out=None, dtype=np.float64, extra=False):
    d_out = d if d_out is None else d_out
    p = {
        "w1": rng.normal(0.0, 0.5, size=(d, d_ff)).astype(dtype),
        "b1": rng.normal(0.0, 0.5, size=d_ff).astype(dtype),
        "w2": rng.normal(0.0, 0.5, size=(d_ff, d_out)).astype(dtype),
        "b2": rng.normal(0.0, 0.5, size=d_out).astype(dtype),
    }
    if extra:  # a whole layer of models.lm.LM: the other keys pass through
        p.update({
            "ln2_g": np.ones(d, dtype=dtype), "ln2_b": np.zeros(d, dtype=dtype),
            "wq": rng.normal(0.0, 0.5, size=(d, d)).astype(dtype),
        })
    return p


def _neuron_cases(rng: np.random.Generator) -> list[Case]:
    cases = [  # the first cases tell the mistakes apart (d = d_ff = d_out)
        Case("square: d = d_ff = 4, keep neurons 0 and 2",
             (_ffn(rng, 4, 4), [0, 2])),
        Case("tiny: d = 2, d_ff = 3, keep 1 and 2", (_ffn(rng, 2, 3), [1, 2])),
        Case("d = 3, d_ff = 6, d_out = 5: keep 0, 3, 5",
             (_ffn(rng, 3, 6, 5), [0, 3, 5])),
        Case("keep every neuron: nothing changes", (_ffn(rng, 3, 4), [0, 1, 2, 3])),
        Case("keep one neuron", (_ffn(rng, 5, 8), [6])),
        Case("a whole LM layer: LayerNorm and attention keys pass through",
             (_ffn(rng, 4, 16, extra=True), [1, 2, 3, 5, 8, 13])),
        Case("keep as a NumPy int array", (_ffn(rng, 4, 10), np.array([0, 4, 9]))),
        Case("float32 weights", (_ffn(rng, 8, 32, dtype=np.float32),
                                 list(range(0, 32, 3)))),
    ]
    for k in range(3):
        d, d_ff = int(rng.integers(1, 40)), int(rng.integers(2, 120))
        n_keep = int(rng.integers(1, d_ff + 1))
        keep = sorted(int(j) for j in rng.choice(d_ff, size=n_keep, replace=False))
        cases.append(Case(f"random draw {k + 1}: d = {d}, d_ff = {d_ff}, keep "
                          f"{n_keep}", (_ffn(rng, d, d_ff), keep)))
    return cases


@checker(reference=_prune_neurons_reference)
def check_prune_neurons(student_fn: Any) -> CheckResult:
    """Check ``prune_neurons(params, keep) -> dict`` (exact: it only selects)."""
    return check_with_hints(
        student_fn, _prune_neurons_reference, _neuron_cases, _NEURON_MISTAKES,
        name="prune_neurons", rtol=0.0, atol=0.0,
    )  # fmt: skip
