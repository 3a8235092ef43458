"""Checkers for notebook 04.1's exercises (N:M structure and the compressed form).

* ``nm_mask(w, n=2, m=4) -> bool array``: for a weight ``w`` in the ``nn.Linear``
  layout ``(out, in)``, keep the ``n`` entries of largest ``|w|`` in every group of
  ``m`` consecutive entries along the last (input) axis; among equal ``|w|`` the
  earlier entry of the group is kept; as :func:`effx_lab.nm.reference.nm_mask`. In the
  notebook it prunes the course's TinyLM to 2:4 before a short retrain.
* ``pack_indices(idx, bits=2) -> uint8 array``: the positions kept in each group
  (integers in ``[0, 2**bits)``) packed ``8 // bits`` to a byte along the last axis,
  the first index in the lowest bits (little end first), the last byte padded with
  zero bits; as :func:`effx_lab.nm.reference.pack_indices`. In the notebook it makes
  the metadata bytes of the mask explorer and of the byte counts of the compressed form.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from effx_lab.check import Case, CheckResult, Mistake, check_with_hints, checker, named

from .. import reference as R

__all__ = ["check_nm_mask", "check_pack_indices"]


# =========================================================================== N:M mask
@named("nm_mask")
def _nm_mask_reference(w, n=2, m=4):
    return R.nm_mask(w, n, m)


def _groups(w, m):
    """``w`` as ``(..., in // m, m)``: its groups (None if m does not divide ``in``)."""
    w = np.asarray(w)
    if w.ndim < 1 or w.shape[-1] % m:
        return None
    return w.reshape(*w.shape[:-1], w.shape[-1] // m, m)


def _keep_by(score, n, m, *, last_on_ties=False):
    """Keep the ``n`` largest ``score`` per group of ``m`` along the last axis."""
    g = _groups(score, m)
    if g is None or not 0 <= n <= m:
        return None
    if last_on_ties:  # ascending stable sort, take the tail: later entries win ties
        order = np.argsort(g, axis=-1, kind="stable")[..., m - n:]
    else:
        order = np.argsort(-g, axis=-1, kind="stable")[..., :n]
    keep = np.zeros(g.shape, dtype=bool)
    np.put_along_axis(keep, order, True, axis=-1)
    return keep.reshape(np.asarray(score).shape)


def _along_axis0(w, n=2, m=4):
    w = np.asarray(w)
    if w.ndim != 2:
        return None
    keep = _keep_by(np.abs(w).T, n, m)
    return None if keep is None else keep.T


_NM_MASK_MISTAKES = [
    Mistake(
        _along_axis0,
        "the groups run along the INPUT dimension, the last axis of an nn.Linear "
        "weight (out, in): w[i, 4 g : 4 g + 4] is one group. You grouped down the "
        "columns (axis 0, the output dimension).",
    ),
    Mistake(
        lambda w, n=2, m=4: _keep_by(-np.abs(np.asarray(w)), n, m),
        "you kept the SMALLEST entries of each group: N:M pruning keeps the n of "
        "largest |w| (sort in descending order, or take the end of an ascending sort).",
    ),
    Mistake(
        lambda w, n=2, m=4: _keep_by(np.asarray(w), n, m),
        "rank the entries by magnitude |w|, not by signed value: a weight of -0.9 "
        "matters more than one of 0.1 (use np.abs before sorting).",
    ),
    Mistake(
        lambda w, n=2, m=4: _keep_by(np.abs(np.asarray(w)), m - n, m),
        "n is the number KEPT per group of m (1:4 keeps one entry in four), so m - n "
        "entries are pruned; you kept m - n.",
    ),
    Mistake(
        lambda w, n=2, m=4: _keep_by(np.abs(np.asarray(w)), 2, 4),
        "use the arguments n and m: you kept 2 of every 4 whatever they were "
        "(1:4, 2:8 and 4:8 are N:M patterns too).",
    ),
    Mistake(
        lambda w, n=2, m=4: _keep_by(np.abs(np.asarray(w)), n, m, last_on_ties=True),
        "among equal |w| keep the EARLIER entry of the group (a group of zeros keeps "
        "its first n positions): sort -|w| with a stable sort "
        "(np.argsort(-a, kind='stable')) and take the first n.",
    ),
    Mistake(
        lambda w, n=2, m=4: (
            None if (k := _keep_by(np.abs(np.asarray(w)), n, m)) is None
            else np.where(k, np.asarray(w), 0)
        ),
        "return the boolean mask (True where a weight is kept), not the pruned "
        "weights w * mask.",
    ),
]


def _distinct(rng, shape, dtype=np.float64):
    """Entries of distinct magnitudes, about half of them negative."""
    size = int(np.prod(shape))
    mags = rng.permutation(np.arange(1, size + 1)) / size
    signs = rng.choice([-1.0, 1.0], size=size)
    return (mags * signs).reshape(shape).astype(dtype)


def _nm_mask_cases(rng: np.random.Generator) -> list[Case]:
    neg = np.array([[0.1, -0.9, 0.5, -0.2, -0.7, 0.3, 0.05, 0.6]])
    cases = [  # the first cases tell the mistakes apart
        Case("square: a 4 x 4 weight, 2 of 4", (_distinct(rng, (4, 4)),)),
        Case("one row: negatives of large magnitude, 2 of 4", (neg,)),
        Case("one of four: n = 1, m = 4", (_distinct(rng, (4, 8)), 1, 4)),
        Case("two of eight: n = 2, m = 8", (_distinct(rng, (4, 16)), 2, 8)),
        Case("four of eight: n = 4, m = 8", (_distinct(rng, (8, 16)), 4, 8)),
        Case("defaults: n = 2, m = 4 when not given", (_distinct(rng, (3, 12)),)),
        Case("wide weight: 2 x 20, three of four", (_distinct(rng, (2, 20)), 3, 4)),
        Case("keyword arguments: n=1, m=2", (_distinct(rng, (6, 6)),),
             dict(n=1, m=2)),
        Case("float32 weight: 8 x 32, two of four",
             (_distinct(rng, (8, 32), np.float32), 2, 4)),
        Case("one input group: a 5 x 4 weight, one of four",
             (_distinct(rng, (5, 4)), 1, 4)),
        Case("ties: a row of zeros and a row of equal values keep their first n",
             (np.array([[0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0],
                        [0.5, -0.5, 0.5, -0.5, 0.0, 2.0, 0.0, 0.0]]),)),
        Case("ties: a weight already pruned to two of four, pruned to one",
             (np.array([[0.0, 3.0, 0.0, -3.0, 0.0, 0.0, 0.0, 0.0]]), 1, 4)),
    ]
    for k in range(3):
        m = int(rng.choice([4, 8, 16]))
        n = int(rng.integers(1, m))
        shape = (int(rng.integers(1, 20)), m * int(rng.integers(1, 6)))
        cases.append(Case(f"random draw {k + 1}: {shape[0]} x {shape[1]}, {n} of {m}",
                          (rng.normal(size=shape), n, m)))
    return cases


@checker(reference=_nm_mask_reference)
def check_nm_mask(student_fn: Any) -> CheckResult:
    """Check ``nm_mask(w, n=2, m=4) -> bool array`` (exact)."""
    return check_with_hints(
        student_fn, _nm_mask_reference, _nm_mask_cases, _NM_MASK_MISTAKES,
        name="nm_mask", rtol=0.0, atol=0.0, exact=True,
    )  # fmt: skip


# =========================================================================== packing
@named("pack_indices")
def _pack_reference(idx, bits=2):
    return R.pack_indices(idx, bits)


def _pack_with(idx, bits, *, per, big_end=False, n_bytes=None):
    """Pack ``per`` indices to a byte (``big_end``: the first in the highest bits);
    ``n_bytes`` per row (default: enough for all); the result as int64 (no wrap)."""
    idx = np.asarray(idx).astype(np.int64)
    count = idx.shape[-1]
    n_bytes = -(-count // per) if n_bytes is None else n_bytes
    out = np.zeros(idx.shape[:-1] + (n_bytes,), dtype=np.int64)
    for k in range(min(count, n_bytes * per)):
        slot = per - 1 - k % per if big_end else k % per
        out[..., k // per] |= idx[..., k] << (bits * slot)
    return out


def _pack_mistake(**how):
    def wrong(idx, bits=2):
        if not isinstance(bits, int) or bits not in (1, 2, 4, 8):
            return None
        per = how.get("per", lambda b: 8 // b)(bits)
        n_bytes = how.get("n_bytes")
        out = _pack_with(
            idx, bits, per=per, big_end=how.get("big_end", False),
            n_bytes=None if n_bytes is None else n_bytes(np.shape(idx)[-1], bits),
        )
        return out

    return wrong


def _global_shift(idx, bits=2, *, wrap=True):
    """Each index shifted by ``bits * k`` (its position in the row); ``wrap``: cast to
    uint8 (the bits above the byte are lost), else left as int64 (values above 255)."""
    if not isinstance(bits, int) or bits not in (1, 2, 4, 8):
        return None
    idx = np.asarray(idx).astype(np.int64)
    count, per = idx.shape[-1], 8 // bits
    out = np.zeros(idx.shape[:-1] + (-(-count // per),), dtype=np.int64)
    for k in range(count):
        out[..., k // per] |= idx[..., k] << (bits * k)
    return out.astype(np.uint8) if wrap else out


_PACK_MISTAKES = [
    Mistake(
        _pack_mistake(big_end=True),
        "the first index goes in the LOWEST bits (little end first): byte = i0 | "
        "i1 << 2 | i2 << 4 | i3 << 6 for 2-bit indices. You put the first one in the "
        "highest bits.",
    ),
    Mistake(
        _pack_mistake(per=lambda b: 1),
        "that stores one index per byte: a byte holds 8 // bits indices (four 2-bit "
        "indices), which is the whole point of packing.",
    ),
    Mistake(
        _pack_mistake(n_bytes=lambda count, b: count // (8 // b)),
        "round the number of bytes UP: count indices need ceil(count / (8 // bits)) "
        "bytes, the last one padded with zero bits; rounding down drops the last "
        "indices when count is not a multiple of 8 // bits.",
    ),
    Mistake(
        _global_shift,
        "shift index k by bits * (k % (8 // bits)), its slot INSIDE its byte: "
        "bits * k overflows the byte for every index after the first byte's, and the "
        "uint8 cast silently drops those bits.",
    ),
    Mistake(
        lambda idx, bits=2: _global_shift(idx, bits, wrap=False),
        "shift index k by bits * (k % (8 // bits)), its slot INSIDE its byte: "
        "bits * k pushes every index after the first byte's above bit 7, so your "
        "bytes overflow (values above 255).",
    ),
]


def _idx(rng, shape, bits):
    return rng.integers(0, 2**bits, size=shape).astype(np.int64)


def _pack_cases(rng: np.random.Generator) -> list[Case]:
    cases = [  # the first cases tell the mistakes apart
        Case("one byte: four 2-bit indices 0, 1, 2, 3",
             (np.array([0, 1, 2, 3]),)),
        Case("metadata of a 2 x 8 weight at two of four: 2 x 4 indices",
             (np.array([[0, 2, 1, 3], [1, 2, 0, 1]]), 2)),
        Case("a partial last byte: six 2-bit indices",
             (np.array([[3, 0, 1, 2, 3, 1]]), 2)),
        Case("4-bit indices: two to a byte, groups of 16",
             (np.array([[7, 1, 15, 6, 2]]), 4)),
        Case("defaults: bits = 2 when not given", (_idx(rng, (3, 8), 2),)),
        Case("one index", (np.array([[2]]), 2)),
        Case("1-bit indices: eight to a byte, groups of 2", (_idx(rng, (2, 19), 1), 1)),
        Case("4-bit indices: 4 x 9", (_idx(rng, (4, 9), 4), 4)),
        Case("8-bit indices: one per byte", (_idx(rng, (2, 5), 8), 8)),
        Case("uint8 input: 4 x 12, 2 bits",
             (_idx(rng, (4, 12), 2).astype(np.uint8), 2)),
        Case("keyword bits=4 on a stack (2, 3, 7)", (_idx(rng, (2, 3, 7), 4),),
             dict(bits=4)),
        Case("all ones: the index 3 everywhere", (np.full((2, 8), 3), 2)),
    ]
    for k in range(3):
        bits = int(rng.choice([1, 2, 4]))
        shape = (int(rng.integers(1, 30)), int(rng.integers(1, 40)))
        cases.append(Case(f"random draw {k + 1}: {shape[0]} x {shape[1]} indices, "
                          f"{bits} bits", (_idx(rng, shape, bits), bits)))
    return cases


@checker(reference=_pack_reference)
def check_pack_indices(student_fn: Any) -> CheckResult:
    """Check ``pack_indices(idx, bits=2) -> uint8 array`` (exact)."""
    return check_with_hints(
        student_fn, _pack_reference, _pack_cases, _PACK_MISTAKES,
        name="pack_indices", rtol=0.0, atol=0.0, exact=True,
    )  # fmt: skip
