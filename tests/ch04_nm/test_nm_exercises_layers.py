"""Notebook 04.4's checkers (effx_lab.nm.exercises.layers) accept right answers, plain
student versions included, and reject the wrong answers students write, with the hint
that names each mistake."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from _checks import fails

from effx_lab.nm import exercises as E
from effx_lab.nm.exercises import layers as L


# ---------------------------------------------------------------------------------- choose_units
def choose_vectorised(logits, block):
    z = np.asarray(logits)
    nb = z.shape[-1] // block
    local = z.reshape(*z.shape[:-1], nb, block).argmax(axis=-1)
    return local + np.arange(nb) * block


def choose_loops(logits, block):
    z = np.asarray(logits)
    flat = z.reshape(-1, z.shape[-1])
    out = np.zeros((flat.shape[0], z.shape[-1] // block), dtype=np.int64)
    for t, row in enumerate(flat):
        for j in range(z.shape[-1] // block):
            best = j * block
            for u in range(j * block, (j + 1) * block):
                if row[u] > row[best]:
                    best = u
            out[t, j] = best
    return out.reshape(*z.shape[:-1], -1)


def choose_torch(logits, block):
    z = torch.as_tensor(logits)
    return z.unflatten(-1, (-1, block)).argmax(-1) + block * torch.arange(
        z.shape[-1] // block
    )


@pytest.mark.parametrize("fn", [choose_vectorised, choose_loops, choose_torch])
def test_choose_units_right_answers_pass(fn, capsys):
    res = E.check_choose_units(fn)
    assert res.passed is True, res.message
    assert res.n_passed == res.n_cases >= 10
    assert "passed all" in capsys.readouterr().out


def _softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def choose_whole_row(logits, block):
    return np.asarray(logits).argmax(-1)


def choose_local(logits, block):
    z = np.asarray(logits)
    return z.reshape(*z.shape[:-1], -1, block).argmax(-1)


def choose_wrong_reshape(logits, block):
    z = np.asarray(logits)
    nb = z.shape[-1] // block
    return z.reshape(*z.shape[:-1], block, nb).argmax(-2) + block * np.arange(nb)


def choose_soft(logits, block):
    z = np.asarray(logits, dtype=np.float64)
    return _softmax(z.reshape(*z.shape[:-1], -1, block))


def choose_soft_index(logits, block):
    z = np.asarray(logits, dtype=np.float64)
    p = _softmax(z.reshape(*z.shape[:-1], -1, block))
    return (p * np.arange(block)).sum(-1) + block * np.arange(z.shape[-1] // block)


def choose_last_of_ties(logits, block):
    z = np.asarray(logits)
    local = np.argsort(z.reshape(*z.shape[:-1], -1, block), axis=-1, kind="stable")
    return local[..., -1] + block * np.arange(z.shape[-1] // block)


def choose_top_of_row(logits, block):
    z = np.asarray(logits)
    return np.sort(np.argsort(-z, axis=-1)[..., : z.shape[-1] // block], axis=-1)


def choose_one_hot(logits, block):
    z = np.asarray(logits)
    out = np.zeros(z.shape, dtype=np.int64)
    np.put_along_axis(out, choose_vectorised(z, block), 1, axis=-1)
    return out


def choose_one_token_only(logits, block):
    z = np.asarray(logits).reshape(-1)
    nb = z.shape[-1] // block
    return z.reshape(nb, block).argmax(-1) + block * np.arange(nb)


@pytest.mark.parametrize(
    "fn, facts",
    [
        (choose_whole_row, ["in EVERY block"]),
        (choose_local, ["local to their block"]),
        (choose_wrong_reshape, ["blocks are consecutive units"]),
        (choose_soft, ["the choice is hard"]),
        (choose_soft_index, ["expected position"]),
        (choose_last_of_ties, ["ties", "first unit of the block wins"]),
        (choose_top_of_row, ["largest logits of the whole row"]),
        (choose_one_hot, ["not a one-hot mask"]),
        (choose_one_token_only, ["two tokens"]),
    ],
)
def test_choose_units_wrong_answers_fail_with_their_hint(fn, facts):
    fails(E.check_choose_units(fn), *facts)


# ---------------------------------------------------------------------------------- sparse_ffn_infer
def _relu(z):
    return np.maximum(z, 0.0)


def infer_gather(x, params, idx):
    h = _relu(x @ params["w1"][:, idx] + params["b1"][idx])
    return h @ params["w2"][idx] + params["b2"]


def infer_loops(x, params, idx):
    w1, b1, w2, b2 = params["w1"], params["b1"], params["w2"], params["b2"]
    out = np.array(b2, dtype=np.result_type(x, w1), copy=True)
    for u in idx:
        h = max(float(x @ w1[:, u] + b1[u]), 0.0)
        out = out + h * w2[u]
    return out


def infer_torch(x, params, idx):
    p = {k: torch.as_tensor(v) for k, v in params.items()}
    idx = torch.as_tensor(idx)
    h = torch.relu(torch.as_tensor(x) @ p["w1"][:, idx] + p["b1"][idx])
    return h @ p["w2"][idx] + p["b2"]


def infer_transposed_copy(x, params, idx):
    w1t = np.ascontiguousarray(params["w1"].T)  # unit-major, as a fast path stores it
    return _relu(w1t[idx] @ x + params["b1"][idx]) @ params["w2"][idx] + params["b2"]


@pytest.mark.parametrize("fn", [infer_gather, infer_loops, infer_torch, infer_transposed_copy])
def test_sparse_ffn_infer_right_answers_pass(fn, capsys):
    res = E.check_sparse_ffn_infer(fn)
    assert res.passed is True, res.message
    assert res.n_passed == res.n_cases >= 10
    assert "passed all" in capsys.readouterr().out


def infer_no_b1(x, params, idx):
    return _relu(x @ params["w1"][:, idx]) @ params["w2"][idx] + params["b2"]


def infer_b1_first(x, params, idx):
    h = _relu(x @ params["w1"][:, idx] + params["b1"][: len(idx)])
    return h @ params["w2"][idx] + params["b2"]


def infer_b1_after(x, params, idx):
    h = _relu(x @ params["w1"][:, idx]) + params["b1"][idx]
    return h @ params["w2"][idx] + params["b2"]


def infer_w2_columns(x, params, idx):
    h = _relu(x @ params["w1"][:, idx] + params["b1"][idx])
    return h @ params["w2"][:, idx].T + params["b2"]


def infer_w1_rows(x, params, idx):
    h = _relu(x @ params["w1"][idx].T + params["b1"][idx])
    return h @ params["w2"][idx] + params["b2"]


def infer_no_relu(x, params, idx):
    h = x @ params["w1"][:, idx] + params["b1"][idx]
    return h @ params["w2"][idx] + params["b2"]


def infer_gelu(x, params, idx):
    z = x @ params["w1"][:, idx] + params["b1"][idx]
    h = 0.5 * z * (1.0 + np.vectorize(math.erf)(z / math.sqrt(2.0)))
    return h @ params["w2"][idx] + params["b2"]


def infer_no_b2(x, params, idx):
    return _relu(x @ params["w1"][:, idx] + params["b1"][idx]) @ params["w2"][idx]


def infer_dense(x, params, idx):
    return _relu(x @ params["w1"] + params["b1"]) @ params["w2"] + params["b2"]


def infer_masked_dense(x, params, idx):
    keep = np.zeros(params["w1"].shape[1])
    keep[idx] = 1.0
    h = _relu(x @ params["w1"] + params["b1"]) * keep
    return h @ params["w2"] + params["b2"]


@pytest.mark.parametrize(
    "fn, facts",
    [
        (infer_no_b1, ["bias is missing", "b1[idx]"]),
        (infer_b1_first, ["b1[:len(idx)]"]),
        (infer_b1_after, ["goes inside the ReLU"]),
        (infer_w2_columns, ["gather W2[idx] (rows)"]),
        (infer_w1_rows, ["gather W1[:, idx]"]),
        (infer_no_relu, ["ReLU is missing"]),
        (infer_gelu, ["not the GELU"]),
        (infer_no_b2, ["b2 is missing"]),
        (infer_dense, ["this is the dense FFN"]),
        (infer_masked_dense, ["NaN", "wrong reads"]),
    ],
)
def test_sparse_ffn_infer_wrong_answers_fail_with_their_hint(fn, facts):
    fails(E.check_sparse_ffn_infer(fn), *facts)


# ---------------------------------------------------------------------------------- the module
def test_checkers_are_exported_and_registered():
    from effx_lab.check import CHECKERS

    assert set(L.__all__) == {"check_choose_units", "check_sparse_ffn_infer"}
    for name in L.__all__:
        assert getattr(E, name) is getattr(L, name)
    for name in L.__all__:
        assert f"effx_lab.nm.exercises.layers.{name}" in CHECKERS


@pytest.mark.parametrize("checker", [E.check_choose_units, E.check_sparse_ffn_infer])
def test_not_attempted_and_non_functions(checker):
    def todo(*args, **kwargs):
        raise NotImplementedError

    res = checker(todo)
    assert res.passed is False and res.attempted is False
    assert "not attempted" in res.message
    res = checker(42)
    assert res.passed is False and "expected a function" in res.message


def test_the_nan_case_poisons_exactly_the_units_not_chosen():
    rng = np.random.default_rng(0)
    x, params, idx = L._poisoned(rng, 8, 32, 4)
    chosen = np.zeros(32, dtype=bool)
    chosen[idx] = True
    assert np.isfinite(params["w1"][:, chosen]).all()
    assert np.isnan(params["w1"][:, ~chosen]).all()
    assert np.isnan(params["w2"][~chosen]).all() and np.isnan(params["b1"][~chosen]).all()
    out = L._infer_reference(x, params, idx)
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, infer_gather(x, params, idx), rtol=1e-12)
