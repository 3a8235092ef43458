"""Tests of effx_lab.prune.storage: the bytes model of dense and CSR storage and the
crossover sparsity it predicts, checked against exact integer arithmetic and against
real CSR objects of both faces."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch

from effx_lab.prune import reference as R
from effx_lab.prune import storage
from effx_lab.prune import torch_ops as T

VALUE_BYTES = {"int8": 1, "fp16": 2, "fp32": 4, "fp64": 8}
INDEX_BYTES = {"int16": 2, "int32": 4, "int64": 8}


def test_dense_nbytes():
    assert storage.dense_nbytes((3, 5)) == 60
    assert storage.dense_nbytes((3, 5), value_bytes=2) == 30
    assert storage.dense_nbytes((2, 3, 4), value_bytes=1) == 24
    assert storage.dense_nbytes(7, value_bytes=8) == 56
    # the NumPy arrays agree
    for dtype in (np.int8, np.float16, np.float32, np.float64):
        a = np.zeros((6, 7), dtype=dtype)
        assert storage.dense_nbytes(a.shape, a.itemsize) == a.nbytes


@pytest.mark.parametrize("v", VALUE_BYTES.values(), ids=list(VALUE_BYTES))
@pytest.mark.parametrize("i", INDEX_BYTES.values(), ids=list(INDEX_BYTES))
def test_csr_nbytes_formula(v, i):
    rows, cols = 10, 30
    for nnz in (0, 1, 77, rows * cols):
        want = nnz * v + nnz * i + (rows + 1) * i
        assert storage.csr_nbytes((rows, cols), nnz, v, i) == want


@pytest.mark.parametrize("shape", [(1, 1), (4, 4), (10, 30), (64, 256), (1024, 4096)])
@pytest.mark.parametrize("v", VALUE_BYTES.values(), ids=list(VALUE_BYTES))
@pytest.mark.parametrize("i", INDEX_BYTES.values(), ids=list(INDEX_BYTES))
def test_crossover_separates_every_nnz(shape, v, i):
    """CSR is smaller exactly when the sparsity exceeds s*: checked at every nnz (small
    shapes) or around the crossover (large ones), in exact arithmetic."""
    rows, cols = shape
    n = rows * cols
    s_star = storage.crossover_sparsity(shape, v, i)
    exact = Fraction(i * n + (rows + 1) * i, (v + i) * n)
    assert s_star == pytest.approx(float(exact), rel=1e-15)
    # nnz where csr < dense: nnz < n - s* n
    limit = (1 - exact) * n
    near = int(limit)
    nnzs = range(n + 1) if n <= 1024 else range(max(0, near - 3), min(n, near + 4))
    for nnz in nnzs:
        smaller = storage.csr_nbytes(shape, nnz, v, i) < storage.dense_nbytes(shape, v)
        sparsity = 1 - Fraction(nnz, n)
        assert smaller == (sparsity > exact), (nnz, sparsity, exact)


def test_crossover_values_quoted_in_the_docstring():
    big = (4096, 4096)
    assert storage.crossover_sparsity(big, 4, 4) == pytest.approx(0.5, abs=1e-3)
    assert storage.crossover_sparsity(big, 1, 4) == pytest.approx(0.8, abs=1e-3)
    assert storage.crossover_sparsity(big, 4, 8) == pytest.approx(2 / 3, abs=1e-3)
    assert storage.crossover_sparsity(big, 2, 2) == pytest.approx(0.5, abs=1e-3)
    # 4-byte values and indices: one half plus the row pointers' share
    r, c = 64, 256
    assert storage.crossover_sparsity((r, c)) == pytest.approx(
        0.5 + (r + 1) / (2 * r * c), rel=1e-15
    )
    # one column of int8 values with int64 indices: CSR never pays off
    assert storage.crossover_sparsity((100, 1), 1, 8) > 1


@pytest.mark.parametrize("mod,mk", [(R, np.asarray), (T, torch.from_numpy)])
def test_real_csr_objects_follow_the_model(mod, mk):
    rng = np.random.default_rng(0)
    shape = (48, 64)
    s_star = storage.crossover_sparsity(shape, 4, 4)
    for s in (0.3, 0.5, 0.52, 0.6, 0.9, 0.99):
        w = rng.standard_normal(shape).astype(np.float32)
        w[R.magnitude_masks({"w": w}, s)["w"] == 0] = 0.0
        csr = mod.to_csr(mk(w), index_dtype="int32")
        assert csr.nbytes == storage.csr_nbytes(shape, csr.nnz, 4, 4)
        assert (csr.nbytes < storage.dense_nbytes(shape, 4)) == (
            1 - csr.nnz / w.size > s_star
        )


@pytest.mark.parametrize(
    "call,err,text",
    [
        (lambda: storage.dense_nbytes((3, 0)), ValueError, "shape[1] must be an int"),
        (lambda: storage.dense_nbytes("3x4"), TypeError, "shape must be a tuple"),
        (lambda: storage.dense_nbytes(()), TypeError, "shape must be a tuple"),
        (lambda: storage.dense_nbytes((3, 4), 0), ValueError, "value_bytes"),
        (lambda: storage.dense_nbytes((3, 4), 2.5), TypeError, "value_bytes"),
        (lambda: storage.dense_nbytes((3.0, 4)), TypeError, "shape[0]"),
        (lambda: storage.csr_nbytes((3, 4, 5), 2), ValueError, "(rows, cols) pair"),
        (lambda: storage.csr_nbytes((3, 4), -1), ValueError, "nnz must be an int"),
        (lambda: storage.csr_nbytes((3, 4), 13), ValueError, "nnz must be an int"),
        (lambda: storage.csr_nbytes((3, 4), 2, 4, 0), ValueError, "index_bytes"),
        (lambda: storage.csr_nbytes((3, 4), True), TypeError, "nnz"),
        (lambda: storage.crossover_sparsity((3,)), ValueError, "(rows, cols) pair"),
        (lambda: storage.crossover_sparsity((3, 4), "4"), TypeError, "value_bytes"),
        (lambda: storage.crossover_sparsity((3, 4), 4, -8), ValueError, "index_bytes"),
    ],
)
def test_bad_input_is_named(call, err, text):
    with pytest.raises(err) as info:
        call()
    assert text in str(info.value), str(info.value)
