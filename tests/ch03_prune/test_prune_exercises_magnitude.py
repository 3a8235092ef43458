"""Notebook 03.1's checkers accept the reference and plain student solutions and reject
the wrong answers students really write, each with its hint."""
from __future__ import annotations

import numpy as np
import pytest
from _checks import fails as _fails

from effx_lab.prune import reference as R
from effx_lab.prune import storage as S
from effx_lab.prune.exercises import magnitude as E


# ------------------------------------------------------------------------ right answers
def csr_nbytes_plain(shape, nnz, value_bytes=4, index_bytes=4):
    rows, cols = shape
    values = nnz * value_bytes
    col_idx = nnz * index_bytes
    row_ptr = (rows + 1) * index_bytes
    return values + col_idx + row_ptr


def csr_nbytes_numpy(shape, nnz, value_bytes=4, index_bytes=4):
    # a student who builds the arrays of an empty CSR of that size and counts their bytes
    values = np.zeros(nnz, dtype=f"f{value_bytes}" if value_bytes > 1 else "i1")
    col_idx = np.zeros(nnz, dtype=f"i{index_bytes}")
    row_ptr = np.zeros(shape[0] + 1, dtype=f"i{index_bytes}")
    return int(values.nbytes + col_idx.nbytes + row_ptr.nbytes)


def prune_neurons_plain(params, keep):
    out = dict(params)
    out["w1"] = params["w1"][:, keep]
    out["b1"] = params["b1"][keep]
    out["w2"] = params["w2"][keep, :]
    return out


def prune_neurons_loops(params, keep):
    out = {k: v for k, v in params.items()}
    out["w1"] = np.stack([params["w1"][:, j] for j in keep], axis=1)
    out["b1"] = np.array([params["b1"][j] for j in keep], dtype=params["b1"].dtype)
    out["w2"] = np.stack([params["w2"][j] for j in keep], axis=0)
    return out


@pytest.mark.parametrize(
    "checker, fn",
    [
        (E.check_csr_nbytes, S.csr_nbytes),
        (E.check_csr_nbytes, csr_nbytes_plain),
        (E.check_csr_nbytes, csr_nbytes_numpy),
        (E.check_prune_neurons, R.prune_neurons),
        (E.check_prune_neurons, prune_neurons_plain),
        (E.check_prune_neurons, prune_neurons_loops),
    ],
)
def test_right_answers_pass(checker, fn, capsys):
    result = checker(fn)
    assert result.passed is True, result.message
    assert result.n_passed == result.n_cases >= 10
    assert "passed all" in capsys.readouterr().out


# ------------------------------------------------------------------------ csr_nbytes
def _csr(formula):
    def wrong(shape, nnz, value_bytes=4, index_bytes=4):
        return formula(shape[0], shape[1], nnz, value_bytes, index_bytes)

    return wrong


@pytest.mark.parametrize(
    "formula, facts",
    [
        (lambda r, c, n, v, i: n * (v + i), ["row pointers"]),
        (lambda r, c, n, v, i: n * (v + i) + r * i, ["rows + 1", "end offset"]),
        (lambda r, c, n, v, i: n * (v + i) + (c + 1) * i, ["CSC"]),
        (lambda r, c, n, v, i: n * v + r * c * i + (r + 1) * i, ["each stored entry"]),
        (lambda r, c, n, v, i: (2 * n + r + 1) * v, ["index_bytes each"]),
        (lambda r, c, n, v, i: n * (v + i) + (r + 1) * v, ["are indices"]),
        (lambda r, c, n, v, i: (r * c - n) * (v + i) + (r + 1) * i, ["not the number"]),
    ],
)
def test_csr_nbytes_rejects_with_hint(formula, facts):
    _fails(E.check_csr_nbytes(_csr(formula)), "csr_nbytes", "hint:", *facts)


def test_csr_nbytes_rejects_floats_and_sparsity_rounding():
    def as_float(shape, nnz, value_bytes=4, index_bytes=4):
        return float(csr_nbytes_plain(shape, nnz, value_bytes, index_bytes))

    _fails(E.check_csr_nbytes(as_float), "csr_nbytes", "float")

    def ignores_byte_sizes(shape, nnz, value_bytes=4, index_bytes=4):
        return csr_nbytes_plain(shape, nnz)  # always fp32 values, int32 indices

    _fails(E.check_csr_nbytes(ignores_byte_sizes), "csr_nbytes")


def test_csr_nbytes_rejects_a_missing_default():
    def no_defaults(shape, nnz, value_bytes, index_bytes):
        return csr_nbytes_plain(shape, nnz, value_bytes, index_bytes)

    _fails(E.check_csr_nbytes(no_defaults), "csr_nbytes")


# ------------------------------------------------------------------------ prune_neurons
def _with(shrink):
    def wrong(params, keep):
        return {**params, **shrink(params, list(keep))}

    return wrong


@pytest.mark.parametrize(
    "shrink, facts",
    [
        (lambda p, k: dict(w1=p["w1"][:, k], b1=p["b1"][k], w2=p["w2"][:, k]),
         ["ROW j of w2"]),
        (lambda p, k: dict(w1=p["w1"][k, :], b1=p["b1"][k], w2=p["w2"][k, :]),
         ["COLUMN j of w1"]),
        (lambda p, k: dict(w1=p["w1"][:, k], w2=p["w2"][k, :]), ["forgot b1"]),
        (lambda p, k: dict(w1=np.delete(p["w1"], k, axis=1), b1=np.delete(p["b1"], k),
                           w2=np.delete(p["w2"], k, axis=0)), ["STAY"]),
        (lambda p, k: dict(w1=p["w1"][:, k], b1=p["b1"][k], w2=p["w2"][k, :],
                           b2=p["b2"][k]), ["b2 belongs to the output"]),
    ],
)
def test_prune_neurons_rejects_with_hint(shrink, facts):
    _fails(E.check_prune_neurons(_with(shrink)), "prune_neurons", "hint:", *facts)


def test_prune_neurons_rejects_dropping_the_other_keys():
    def only_ffn(params, keep):
        return {"w1": params["w1"][:, keep], "b1": params["b1"][keep],
                "w2": params["w2"][keep, :]}

    _fails(E.check_prune_neurons(only_ffn), "prune_neurons", "b2")


def test_prune_neurons_rejects_changing_the_input_in_place():
    def in_place(params, keep):
        params["w1"] = params["w1"][:, keep]
        params["b1"] = params["b1"][keep]
        params["w2"] = params["w2"][keep, :]
        return params

    _fails(E.check_prune_neurons(in_place), "prune_neurons", "in place")


def test_prune_neurons_rejects_zeroing_instead_of_removing():
    def zeroed(params, keep):  # unstructured thinking: the layer does not shrink
        out = dict(params)
        drop = np.setdiff1d(np.arange(params["b1"].shape[0]), keep)
        out["w1"] = params["w1"].copy()
        out["w1"][:, drop] = 0.0
        return out

    _fails(E.check_prune_neurons(zeroed), "prune_neurons", "shape")


def test_checkers_are_exported_by_the_chapter():
    from effx_lab.prune import exercises

    assert exercises.check_csr_nbytes is E.check_csr_nbytes
    assert exercises.check_prune_neurons is E.check_prune_neurons
