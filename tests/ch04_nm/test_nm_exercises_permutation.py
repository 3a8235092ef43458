"""Notebook 04.2's checkers accept the reference and plain student solutions and reject
the wrong answers students really write, each with its hint."""
from __future__ import annotations

import numpy as np
import pytest
from _checks import fails as _fails

from effx_lab.nm import reference as R
from effx_lab.nm.exercises import permutation as E


# ------------------------------------------------------------------------ right answers
def permute_ffn_plain(params, perm):
    out = dict(params)
    out["w1"] = params["w1"][:, perm]
    out["b1"] = params["b1"][perm]
    out["w2"] = params["w2"][perm, :]
    return out


def permute_ffn_loops(params, perm):
    out = {k: v for k, v in params.items()}
    out["w1"] = np.stack([params["w1"][:, j] for j in perm], axis=1)
    out["b1"] = np.array([params["b1"][j] for j in perm], dtype=params["b1"].dtype)
    out["w2"] = np.stack([params["w2"][j] for j in perm], axis=0)
    return out


def retained_plain(w, n=2, m=4, perm=None):
    a = np.abs(w if perm is None else w[:, perm])
    groups = a.reshape(a.shape[0], -1, m)
    kept = np.sort(groups, axis=-1)[..., m - n:].sum()
    return float(kept / a.sum())


def retained_with_nm_mask(w, n=2, m=4, perm=None):
    from effx_lab.sparse.reference import nm_mask

    if perm is not None:
        w = w[:, perm]
    w = np.asarray(w, dtype=np.float64)
    return float(np.abs(w)[nm_mask(w, n, m)].sum() / np.abs(w).sum())


def retained_loops(w, n=2, m=4, perm=None):
    cols = range(w.shape[1]) if perm is None else perm
    a = [[abs(float(w[r, c])) for c in cols] for r in range(w.shape[0])]
    kept = 0.0
    for row in a:
        for s in range(0, len(row), m):
            kept += sum(sorted(row[s:s + m], reverse=True)[:n])
    return kept / sum(sum(row) for row in a)


@pytest.mark.parametrize(
    "checker, fn",
    [
        (E.check_permute_ffn, R.permute_ffn),
        (E.check_permute_ffn, permute_ffn_plain),
        (E.check_permute_ffn, permute_ffn_loops),
        (E.check_retained_magnitude, R.retained_magnitude),
        (E.check_retained_magnitude, retained_plain),
        (E.check_retained_magnitude, retained_with_nm_mask),
        (E.check_retained_magnitude, retained_loops),
    ],
)
def test_right_answers_pass(checker, fn, capsys):
    result = checker(fn)
    assert result.passed is True, result.message
    assert result.n_passed == result.n_cases >= 10
    assert "passed all" in capsys.readouterr().out


# ------------------------------------------------------------------------ permute_ffn
def _with(change):
    def wrong(params, perm):
        return {**params, **change(params, np.asarray(perm))}

    return wrong


@pytest.mark.parametrize(
    "change, facts",
    [
        (lambda q, p: dict(w1=q["w1"][:, p], b1=q["b1"][p], w2=q["w2"][:, p]),
         ["ROW j of w2"]),
        (lambda q, p: dict(w1=q["w1"][p, :], b1=q["b1"][p], w2=q["w2"][p, :]),
         ["COLUMN j of w1"]),
        (lambda q, p: dict(w1=q["w1"][:, p], w2=q["w2"][p, :]), ["forgot b1"]),
        (lambda q, p: dict(w1=q["w1"][:, p], b1=q["b1"][p],
                           w2=q["w2"][np.argsort(p), :]), ["inverse permutation"]),
        (lambda q, p: dict(w1=q["w1"][:, np.argsort(p)], b1=q["b1"][np.argsort(p)],
                           w2=q["w2"][p, :]), ["inverse permutation"]),
        (lambda q, p: dict(w1=q["w1"][:, np.argsort(p)], b1=q["b1"][np.argsort(p)],
                           w2=q["w2"][np.argsort(p), :]), ["not with its inverse"]),
        (lambda q, p: dict(w1=q["w1"][:, p], b1=q["b1"][p], w2=q["w2"][p, :],
                           b2=q["b2"][p]), ["b2 belongs to the output"]),
    ],
)
def test_permute_ffn_rejects_with_hint(change, facts):
    _fails(E.check_permute_ffn(_with(change)), "permute_ffn", "hint:", *facts)


def test_permute_ffn_rejects_dropping_the_other_keys():
    def only_ffn(params, perm):
        return {"w1": params["w1"][:, perm], "b1": params["b1"][perm],
                "w2": params["w2"][perm, :]}

    _fails(E.check_permute_ffn(only_ffn), "permute_ffn", "hint:", "every key")


def test_permute_ffn_rejects_changing_the_input_in_place():
    def in_place(params, perm):
        params["w1"] = params["w1"][:, perm]
        params["b1"] = params["b1"][perm]
        params["w2"] = params["w2"][perm, :]
        return params

    _fails(E.check_permute_ffn(in_place), "permute_ffn", "in place")


# ------------------------------------------------------------------ retained_magnitude
def _retained(body):
    def wrong(w, n=2, m=4, perm=None):
        a = np.asarray(w, dtype=np.float64)
        return float(body(a, n, m, perm))

    return wrong


def _kept(a, n, m):
    g = np.abs(a).reshape(a.shape[0], -1, m)
    return np.sort(g, axis=-1)[..., m - n:].sum()


def _cols(a, perm):
    return a if perm is None else a[:, perm]


def _signed_kept(a, n, m):
    g = a.reshape(a.shape[0], -1, m)
    return np.sort(g, axis=-1)[..., m - n:].sum()


@pytest.mark.parametrize(
    "body, facts",
    [
        # permuting the rows: the mask does not change
        (lambda a, n, m, p: _kept(a if p is None else a[p, :], n, m) / np.abs(a).sum(),
         ["UNPERMUTED", "rows"]),
        # the mask computed before permuting, applied to the permuted weight
        (lambda a, n, m, p: (np.abs(_cols(a, p))
                             * _cols(np.abs(a) >= np.sort(np.abs(a).reshape(
                                 a.shape[0], -1, m), axis=-1)[..., m - n:m - n + 1]
                                 .repeat(m, axis=-1).reshape(a.shape), p)).sum()
         / np.abs(a).sum(), ["UNPERMUTED", "only then"]),
        # ignoring perm
        (lambda a, n, m, p: _kept(a, n, m) / np.abs(a).sum(), ["UNPERMUTED"]),
        (lambda a, n, m, p: 1 - _kept(_cols(a, p), n, m) / np.abs(a).sum(), ["PRUNES"]),
        (lambda a, n, m, p: _kept(_cols(a, p), n, m) / (a.size * n / m),
         ["number of kept entries"]),
        (lambda a, n, m, p: _signed_kept(_cols(a, p), n, m) / a.sum(), ["signed"]),
        (lambda a, n, m, p: _signed_kept(_cols(a, p), n, m) / np.abs(a).sum(),
         ["MAGNITUDES"]),
        (lambda a, n, m, p: _kept(_cols(a, p), m - n, m) / np.abs(a).sum(),
         ["not m - n"]),
    ],
)
def test_retained_magnitude_rejects_with_hint(body, facts):
    _fails(E.check_retained_magnitude(_retained(body)), "retained_magnitude", "hint:",
           *facts)


def test_retained_magnitude_rejects_groups_down_the_rows():
    def down_rows(w, n=2, m=4, perm=None):
        a = np.abs(w if perm is None else w[:, perm]).T  # (in, out): groups of rows
        g = a.reshape(a.shape[0], -1, m)
        return float(np.sort(g, axis=-1)[..., m - n:].sum() / a.sum())

    _fails(E.check_retained_magnitude(down_rows), "retained_magnitude", "hint:",
           "INPUT dimension")


def test_retained_magnitude_rejects_a_missing_default():
    def no_default(w, n, m, perm):
        return retained_plain(w, n, m, perm)

    _fails(E.check_retained_magnitude(no_default), "retained_magnitude")
