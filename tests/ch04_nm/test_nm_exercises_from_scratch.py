"""Notebook 04.3's checkers (srste_grad, topkast_masks) pass the course's functions and
plain student solutions, and reject the classic wrong answers with their hints."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from _checks import fails

from effx_lab.nm import reference as R
from effx_lab.nm import torch_ops as T
from effx_lab.nm.exercises import from_scratch as E


# ------------------------------------------------------------------------- srste_grad
def srste_plain(w, grad, mask, decay):
    return grad + decay * (~mask) * w


def srste_where(w, grad, mask, decay):
    return np.where(mask, grad, grad + decay * w)


def srste_float_mask(w, grad, mask, decay):
    """The complement written as 1 - mask (a float 0/1 array)."""
    return grad + decay * (1 - mask.astype(w.dtype)) * w


def srste_loop(w, grad, mask, decay):
    out = grad.copy()
    for idx in np.ndindex(*w.shape):
        if not mask[idx]:
            out[idx] += decay * w[idx]
    return out


def srste_via_torch(w, grad, mask, decay):
    """Through the torch face: tensors back are accepted."""
    return T.srste_grad(
        torch.from_numpy(w), torch.from_numpy(grad), torch.from_numpy(mask), decay
    )


@pytest.mark.parametrize(
    "fn",
    [R.srste_grad, srste_plain, srste_where, srste_float_mask, srste_loop,
     srste_via_torch],
    ids=["reference", "plain", "where", "float mask", "loop", "torch face"],
)  # fmt: skip
def test_srste_grad_right_answers_pass(fn, capsys):
    result = E.check_srste_grad(fn)
    assert result.passed is True, result.message
    assert result.n_passed == result.n_cases >= 10
    assert "passed all" in capsys.readouterr().out


SRSTE_WRONG = {
    "decay on the kept weights": (
        lambda w, g, m, d: g + d * m * w,
        "not on the kept ones",
    ),
    "sign flipped": (lambda w, g, m, d: g - d * ~m * w, "the sign"),
    "plain weight decay": (lambda w, g, m, d: g + d * w, "ordinary weight decay"),
    "forgets the gradient": (lambda w, g, m, d: d * ~m * w, "only the decay term"),
    "complement on both terms": (
        lambda w, g, m, d: ~m * (g + d * w),
        "on the decay term only",
    ),
    "masks the gradient": (
        lambda w, g, m, d: m * g + d * ~m * w,
        "do not mask the gradient",
    ),
    "decay times the gradient": (
        lambda w, g, m, d: g + d * ~m * g,
        "proportional to the weight",
    ),
    "decay on |w|": (lambda w, g, m, d: g + d * ~m * np.abs(w), "not |w|"),
    "decay on w squared": (lambda w, g, m, d: g + d * ~m * w**2, "not λ_W w²"),
}


@pytest.mark.parametrize("name", list(SRSTE_WRONG))
def test_srste_grad_wrong_answers_fail_with_hint(name):
    fn, hint = SRSTE_WRONG[name]
    fails(E.check_srste_grad(fn), "hint:", hint)


def test_srste_grad_catches_the_papers_small_decay():
    """At the paper's λ_W = 2e-4 on weights of size 0.1 the decay term is about 1 %
    of the gradient: an answer that drops it on those cases alone still fails."""

    def decay_only_when_large(w, grad, mask, decay):
        return grad if decay < 1e-3 else srste_plain(w, grad, mask, decay)

    fails(E.check_srste_grad(decay_only_when_large), "the paper's decay: 2e-4")


def test_srste_grad_decay_zero_is_ste():
    """The case with decay 0 is plain STE: the gradient unchanged, whatever the mask."""
    cases = E._srste_cases(np.random.default_rng(0))
    case = next(c for c in cases if "plain STE" in c.label)
    w, grad, mask, decay = case.args
    assert decay == 0.0 and not mask.all()
    assert np.array_equal(E._srste_reference(w, grad, mask, decay), grad)


# ---------------------------------------------------------------------- topkast_masks
def topkast_argsort(w, forward_density, backward_density):
    order = np.argsort(-np.abs(w).ravel(), kind="stable")
    a = np.zeros(w.size, dtype=bool)
    b = np.zeros(w.size, dtype=bool)
    a[order[: round(forward_density * w.size)]] = True
    b[order[: round(backward_density * w.size)]] = True
    return a.reshape(w.shape), b.reshape(w.shape)


def topkast_threshold(w, forward_density, backward_density):
    """A threshold on |w| (no ties in the cases), returned as a list."""
    flat = np.sort(np.abs(w).ravel())[::-1]
    out = []
    for d in (forward_density, backward_density):
        k = int(np.round(d * w.size))
        out.append(np.abs(w) >= flat[k - 1] if k > 0 else np.zeros(w.shape, bool))
    return out


def topkast_torch(w, forward_density, backward_density):
    return T.topkast_masks(torch.from_numpy(w), forward_density, backward_density)


@pytest.mark.parametrize(
    "fn",
    [R.topkast_masks, topkast_argsort, topkast_threshold, topkast_torch],
    ids=["reference", "argsort", "threshold", "torch face"],
)
def test_topkast_masks_right_answers_pass(fn, capsys):
    result = E.check_topkast_masks(fn)
    assert result.passed is True, result.message
    assert result.n_passed == result.n_cases >= 10
    assert "passed all" in capsys.readouterr().out


def topkast_signed(w, forward_density, backward_density):
    order = np.argsort(-w.ravel())
    a = np.zeros(w.size, dtype=bool)
    b = np.zeros(w.size, dtype=bool)
    a[order[: round(forward_density * w.size)]] = True
    b[order[: round(backward_density * w.size)]] = True
    return a.reshape(w.shape), b.reshape(w.shape)


def _swap(pair):
    return pair[1], pair[0]


TOPKAST_WRONG = {
    "densities swapped": (
        lambda w, d, e: topkast_argsort(w, e, d),
        "densities swapped",
    ),
    "(B, A)": (lambda w, d, e: _swap(topkast_argsort(w, d, e)), "or (B, A)"),
    "signed value": (
        lambda w, d, e: topkast_signed(w, d, e),
        "not by the signed value",
    ),
    "smallest |w|": (
        lambda w, d, e: topkast_argsort(1.0 / np.abs(w), d, e),
        "*smallest* |w|",
    ),
    "pruned marked True": (
        lambda w, d, e: tuple(~m for m in topkast_argsort(w, d, e)),
        "*kept*",
    ),
    "B without A": (
        lambda w, d, e: (lambda a, b: (a, b & ~a))(*topkast_argsort(w, d, e)),
        "B contains A",
    ),
    "B of density D + D'": (
        lambda w, d, e: (
            topkast_argsort(w, d, d)[0],
            topkast_argsort(w, min(1.0, d + e), min(1.0, d + e))[1],
        ),
        "density of B itself",
    ),
    "floor": (
        lambda w, d, e: E._by_count(math.floor)(w, d, e),
        "int() and math.floor round down",
    ),
    "ceil": (lambda w, d, e: E._by_count(math.ceil)(w, d, e), "not rounded up"),
    "per row": (
        lambda w, d, e: E._per_row(w, d, e) if w.ndim > 1 else topkast_argsort(w, d, e),
        "not each row separately",
    ),
}


@pytest.mark.parametrize("name", list(TOPKAST_WRONG))
def test_topkast_masks_wrong_answers_fail_with_hint(name):
    fn, hint = TOPKAST_WRONG[name]
    fails(E.check_topkast_masks(fn), "hint:", hint)


def test_topkast_masks_int_masks_are_rejected():
    """0/1 integer masks are not masks: ~A of an int array is -1 / -2."""

    def ints(w, d, e):
        return tuple(m.astype(np.int64) for m in topkast_argsort(w, d, e))

    fails(E.check_topkast_masks(ints), "bool")


def test_topkast_cases_are_tie_free_and_never_halfway():
    """The cases never ask for a count that ends in .5 and have no ties at the cut,
    so a student's tie or half-rounding rule is never what fails them."""
    for case in E._topkast_cases(np.random.default_rng(0)):
        w, d_fwd, d_bwd = case.args
        for d in (d_fwd, d_bwd):
            assert abs(d * w.size % 1 - 0.5) > 0.01, case.label
        assert np.unique(np.abs(w)).size == w.size, case.label
        a, b = R.topkast_masks(w, d_fwd, d_bwd)
        assert not (a & ~b).any()
        assert a.sum() == round(d_fwd * w.size) and b.sum() == round(d_bwd * w.size)


# ------------------------------------------------------------------------ never crash
@pytest.mark.parametrize("checker", [E.check_srste_grad, E.check_topkast_masks])
def test_not_attempted_and_non_functions(checker):
    def todo(*args, **kwargs):
        raise NotImplementedError

    res = checker(todo)
    assert res.passed is False and res.attempted is False
    assert "not attempted" in res.message
    res = checker(42)
    assert res.passed is False and "expected a function" in res.message


def test_exported_from_the_chapter_package():
    from effx_lab.nm import exercises

    assert exercises.check_srste_grad is E.check_srste_grad
    assert exercises.check_topkast_masks is E.check_topkast_masks
