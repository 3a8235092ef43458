"""Notebook 04.1's checkers accept the reference and plain student solutions and reject
the wrong answers students really write, each with its hint."""
from __future__ import annotations

import numpy as np
import pytest
from _checks import fails as _fails

from effx_lab.nm import reference as R
from effx_lab.nm.exercises import structure as E


# ------------------------------------------------------------------------ right answers
def nm_mask_sort(w, n=2, m=4):
    groups = np.abs(w).reshape(w.shape[0], -1, m)
    order = np.argsort(-groups, axis=-1, kind="stable")[..., :n]
    keep = np.zeros(groups.shape, dtype=bool)
    np.put_along_axis(keep, order, True, axis=-1)
    return keep.reshape(w.shape)


def nm_mask_loops(w, n=2, m=4):
    keep = np.zeros(w.shape, dtype=bool)
    for i in range(w.shape[0]):
        for g in range(0, w.shape[1], m):
            mags = [abs(float(v)) for v in w[i, g:g + m]]
            # largest first; on equal |w| the earlier position first
            ranked = sorted(range(m), key=lambda j: (-mags[j], j))
            for j in ranked[:n]:
                keep[i, g + j] = True
    return keep


def nm_mask_flat(w, n=2, m=4):
    # groups of a flattened row-major weight never cross rows when m divides in
    flat = np.abs(w).reshape(-1, m)
    order = np.argsort(-flat, axis=1, kind="stable")[:, :n]
    keep = np.zeros(flat.shape, dtype=bool)
    np.put_along_axis(keep, order, True, axis=1)
    return keep.reshape(w.shape)


def pack_loops(idx, bits=2):
    per = 8 // bits
    count = idx.shape[-1]
    out = np.zeros(idx.shape[:-1] + (-(-count // per),), dtype=np.uint8)
    for k in range(count):
        out[..., k // per] |= (idx[..., k] << (bits * (k % per))).astype(np.uint8)
    return out


def pack_vectorised(idx, bits=2):
    per = 8 // bits
    count = idx.shape[-1]
    n_bytes = (count + per - 1) // per
    padded = np.zeros(idx.shape[:-1] + (n_bytes * per,), dtype=np.int64)
    padded[..., :count] = idx
    slots = padded.reshape(*idx.shape[:-1], n_bytes, per)
    return (slots << (bits * np.arange(per))).sum(-1).astype(np.uint8)


@pytest.mark.parametrize(
    "checker, fn",
    [
        (E.check_nm_mask, R.nm_mask),
        (E.check_nm_mask, nm_mask_sort),
        (E.check_nm_mask, nm_mask_loops),
        (E.check_nm_mask, nm_mask_flat),
        (E.check_pack_indices, lambda idx, bits=2: R.pack_indices(idx, bits)),
        (E.check_pack_indices, pack_loops),
        (E.check_pack_indices, pack_vectorised),
    ],
)
def test_right_answers_pass(checker, fn, capsys):
    result = checker(fn)
    assert result.passed is True, result.message
    assert result.n_passed == result.n_cases >= 10
    assert "passed all" in capsys.readouterr().out


# ------------------------------------------------------------------------ nm_mask
def _keep(score, n, m, *, last_on_ties=False):
    groups = np.asarray(score).reshape(np.shape(score)[0], -1, m)
    if last_on_ties:
        order = np.argsort(groups, axis=-1, kind="stable")[..., m - n:]
    else:
        order = np.argsort(-groups, axis=-1, kind="stable")[..., :n]
    keep = np.zeros(groups.shape, dtype=bool)
    np.put_along_axis(keep, order, True, axis=-1)
    return keep.reshape(np.shape(score))


def along_output_dim(w, n=2, m=4):
    return _keep(np.abs(w).T, n, m).T


def keeps_smallest(w, n=2, m=4):
    return _keep(-np.abs(w), n, m)


def by_signed_value(w, n=2, m=4):
    return _keep(w, n, m)


def n_and_m_swapped(w, n=2, m=4):
    return _keep(np.abs(w), m - n, m)


def always_two_of_four(w, n=2, m=4):
    return _keep(np.abs(w), 2, 4)


def later_wins_ties(w, n=2, m=4):
    return _keep(np.abs(w), n, m, last_on_ties=True)


def returns_pruned_weights(w, n=2, m=4):
    return np.where(_keep(np.abs(w), n, m), w, 0.0)


@pytest.mark.parametrize(
    "wrong, facts",
    [
        (along_output_dim, ["INPUT dimension", "axis 0"]),
        (keeps_smallest, ["SMALLEST"]),
        (by_signed_value, ["magnitude |w|"]),
        (n_and_m_swapped, ["n is the number KEPT"]),
        (always_two_of_four, ["use the arguments n and m"]),
        (later_wins_ties, ["EARLIER entry"]),
        (returns_pruned_weights, ["boolean mask"]),
    ],
)
def test_nm_mask_rejects_with_hint(wrong, facts):
    _fails(E.check_nm_mask(wrong), "nm_mask", "hint:", *facts)


def test_nm_mask_rejects_an_unstable_sort_on_ties():
    def argpartition(w, n=2, m=4):  # fast, but ties land anywhere
        groups = -np.abs(w).reshape(w.shape[0], -1, m)
        order = np.argpartition(groups, n - 1, axis=-1)[..., :n]
        keep = np.zeros(groups.shape, dtype=bool)
        np.put_along_axis(keep, order, True, axis=-1)
        return keep.reshape(w.shape)

    result = E.check_nm_mask(argpartition)
    if not result.passed:  # it may pick the first entries by luck; if not, say ties
        _fails(result, "nm_mask", "ties")


def test_nm_mask_rejects_integers_and_a_missing_default():
    def as_int(w, n=2, m=4):
        return nm_mask_sort(w, n, m).astype(np.int64)

    _fails(E.check_nm_mask(as_int), "nm_mask", "bool")

    def no_defaults(w, n, m):
        return nm_mask_sort(w, n, m)

    _fails(E.check_nm_mask(no_defaults), "nm_mask")


def test_nm_mask_rejects_changing_the_input_in_place():
    def in_place(w, n=2, m=4):
        keep = nm_mask_sort(w, n, m)
        w[~keep] = 0.0
        return keep

    _fails(E.check_nm_mask(in_place), "nm_mask", "in place")


# ------------------------------------------------------------------------ pack_indices
def _pack(idx, bits, *, per=None, big_end=False, n_bytes=None):
    per = 8 // bits if per is None else per
    count = idx.shape[-1]
    n_bytes = -(-count // per) if n_bytes is None else n_bytes
    out = np.zeros(idx.shape[:-1] + (n_bytes,), dtype=np.int64)
    for k in range(min(count, n_bytes * per)):
        slot = per - 1 - k % per if big_end else k % per
        out[..., k // per] |= idx[..., k].astype(np.int64) << (bits * slot)
    return out


def big_end_first(idx, bits=2):
    return _pack(idx, bits, big_end=True).astype(np.uint8)


def one_per_byte(idx, bits=2):
    return idx.astype(np.uint8)


def bytes_rounded_down(idx, bits=2):
    return _pack(idx, bits, n_bytes=idx.shape[-1] * bits // 8).astype(np.uint8)


def shift_by_position_wrapped(idx, bits=2):
    per = 8 // bits
    out = np.zeros(idx.shape[:-1] + (-(-idx.shape[-1] // per),), dtype=np.int64)
    for k in range(idx.shape[-1]):
        out[..., k // per] |= idx[..., k].astype(np.int64) << (bits * k)
    return out.astype(np.uint8)


def shift_by_position(idx, bits=2):
    per = 8 // bits
    out = np.zeros(idx.shape[:-1] + (-(-idx.shape[-1] // per),), dtype=np.int64)
    for k in range(idx.shape[-1]):
        out[..., k // per] += idx[..., k].astype(np.int64) << (bits * k)
    return out


@pytest.mark.parametrize(
    "wrong, facts",
    [
        (big_end_first, ["LOWEST bits"]),
        (one_per_byte, ["one index per byte"]),
        (bytes_rounded_down, ["round the number of bytes UP"]),
        (shift_by_position_wrapped, ["INSIDE its byte", "drops"]),
        (shift_by_position, ["INSIDE its byte", "overflow"]),
    ],
)
def test_pack_indices_rejects_with_hint(wrong, facts):
    _fails(E.check_pack_indices(wrong), "pack_indices", "hint:", *facts)


def test_pack_indices_rejects_ignoring_bits():
    def always_two_bits(idx, bits=2):
        return pack_loops(idx, 2)

    _fails(E.check_pack_indices(always_two_bits), "pack_indices")


def test_pack_indices_rejects_a_float_answer():
    def as_float(idx, bits=2):
        return pack_loops(idx, bits).astype(np.float64)

    _fails(E.check_pack_indices(as_float), "pack_indices", "float")


def test_checkers_are_exported_by_the_chapter():
    from effx_lab.nm import exercises

    assert exercises.check_nm_mask is E.check_nm_mask
    assert exercises.check_pack_indices is E.check_pack_indices
