"""Checkers for notebook 04.4's exercises (the Scaling Transformer's sparse layers).

* ``choose_units(logits, block) -> int array``: the controller's choice at inference.
  ``logits`` has shape ``(..., d_ff)``; the hidden units are cut into consecutive blocks
  of ``block`` units (block ``j`` holds units ``j * block`` to ``j * block + block - 1``,
  a reshape to ``(..., d_ff // block, block)``); the answer holds, for each block, the
  **global** index of its unit with the largest logit (ties: the first), shape
  ``(..., d_ff // block)``. It drives the inference path of the sparse FFN.
* ``sparse_ffn_infer(x, params, idx) -> array``: one token's sparse FFN at inference,
  reading only the chosen hidden units: ``relu(x @ W1[:, idx] + b1[idx]) @ W2[idx] + b2``
  (the layout of the shared LM: ``w1`` is ``(d_model, d_ff)``, ``w2`` is
  ``(d_ff, d_model)``). It equals the dense FFN whose hidden activations outside ``idx``
  are zeroed, and must not read the others: one case stores NaN there. It drives the
  decode timing of the notebook.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from effx_lab.check import Case, CheckResult, Mistake, check_with_hints, checker, named

__all__ = ["check_choose_units", "check_sparse_ffn_infer"]


def _blocks(logits: Any, block: int) -> np.ndarray:
    z = np.asarray(logits)
    return z.reshape(z.shape[:-1] + (z.shape[-1] // block, block))


def _offsets(logits: Any, block: int) -> np.ndarray:
    return block * np.arange(np.asarray(logits).shape[-1] // block)


# =========================================================================== choose_units
@named("choose_units")
def _choose_reference(logits, block):
    """Global index of the largest logit in each block of ``block`` consecutive units."""
    return _blocks(logits, block).argmax(-1) + _offsets(logits, block)


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _strided(logits, block, *, consistent: bool):
    """Blocks made by reshaping to (block, d_ff // block): units j, j + nb, j + 2 nb..."""
    z = np.asarray(logits)
    nb = z.shape[-1] // block
    local = z.reshape(z.shape[:-1] + (block, nb)).argmax(-2)
    return local * nb + np.arange(nb) if consistent else local + block * np.arange(nb)


def _last_of_ties(logits, block):
    b = _blocks(logits, block)[..., ::-1]
    return block - 1 - b.argmax(-1) + _offsets(logits, block)


def _soft_index(logits, block):
    p = _softmax(_blocks(logits, block).astype(np.float64))
    return (p * np.arange(block)).sum(-1) + _offsets(logits, block)


def _one_hot(logits, block):
    z = np.asarray(logits)
    out = np.zeros(z.shape, dtype=np.int64)
    np.put_along_axis(out, _choose_reference(logits, block), 1, axis=-1)
    return out


def _top_row(logits, block):
    z = np.asarray(logits)
    nb = z.shape[-1] // block
    return np.sort(np.argsort(-z, axis=-1, kind="stable")[..., :nb], axis=-1)


_CHOOSE_MISTAKES = [
    Mistake(
        lambda logits, block: np.asarray(logits).argmax(-1),
        "that is the argmax of the whole row: one unit per token. The controller picks "
        "one unit in EVERY block: reshape to (..., d_ff // block, block) and take the "
        "argmax along the last axis.",
    ),
    Mistake(
        _top_row,
        "these are the d_ff // block largest logits of the whole row: two of them may "
        "sit in one block and some block gets none. Take the argmax inside each block.",
    ),
    Mistake(
        lambda logits, block: _blocks(logits, block).argmax(-1),
        "these indices are local to their block (0 .. block - 1). Return the unit's "
        "index in the whole row: add j * block for block j.",
    ),
    Mistake(
        lambda logits, block: _strided(logits, block, consistent=False),
        "blocks are consecutive units (0..block-1, block..2 block-1, ...): reshape to "
        "(..., d_ff // block, block), not (..., block, d_ff // block), which groups "
        "every (d_ff // block)-th unit.",
    ),
    Mistake(
        lambda logits, block: _strided(logits, block, consistent=True),
        "your blocks are strided: reshape(..., block, d_ff // block) puts units j, "
        "j + d_ff // block, ... together. Blocks are consecutive units: reshape to "
        "(..., d_ff // block, block) and argmax along the last axis.",
    ),
    Mistake(
        lambda logits, block: _softmax(_blocks(logits, block).astype(np.float64)),
        "at inference the choice is hard: return the index of the largest logit of "
        "each block, not the softmax probabilities (those, with Gumbel noise, are for "
        "training).",
    ),
    Mistake(
        lambda logits, block: _softmax(_blocks(logits, block).astype(np.float64))
        .reshape(np.asarray(logits).shape),
        "at inference the choice is hard: return the index of the largest logit of "
        "each block, not the softmax probabilities (those, with Gumbel noise, are for "
        "training).",
    ),
    Mistake(
        _soft_index,
        "a softmax-weighted average of positions is not a unit: at inference take the "
        "argmax of each block (an integer index), not the expected position.",
    ),
    Mistake(
        _one_hot,
        "return the chosen units' indices, one integer per block (shape "
        "(..., d_ff // block)), not a one-hot mask of the row.",
    ),
    Mistake(
        _last_of_ties,
        "on a tie the first unit of the block wins (np.argmax's rule); your choice "
        "takes the last (argsort(...)[-1] does that).",
    ),
]


def _choose_cases(rng: np.random.Generator) -> list[Case]:
    cases = [  # the first cases tell the mistakes apart
        Case(
            "one token, 2 blocks of 4: the largest logits both in block 0",
            (np.array([0.3, 2.0, 1.5, -1.0, 0.1, 0.4, -0.2, 0.0]), 4),
        ),
        Case(
            "one token, 3 blocks of 2",
            (np.array([-1.0, 0.5, 2.0, 0.0, 0.2, 0.7]), 2),
        ),
        Case(
            "two tokens, 4 blocks of 4",
            (rng.standard_normal((2, 16)), 4),
        ),
        Case(
            "ties: the first unit of the block wins",
            (np.array([[1.0, 1.0, 0.0, 0.0, 0.0, 2.0, 2.0, 0.0]]), 4),
        ),
        Case("block = 1: every unit is chosen", (rng.standard_normal((3, 5)), 1)),
        Case(
            "one block spanning the whole row",
            (rng.standard_normal((2, 8)), 8),
        ),
        Case(
            "float32 logits, 8 tokens, d_ff = 256, blocks of 32",
            (rng.standard_normal((8, 256)).astype(np.float32), 32),
        ),
        Case(
            "a batch of sequences: shape (2, 3, 64), blocks of 8",
            (rng.standard_normal((2, 3, 64)), 8),
        ),
    ]
    for i in range(4):
        block = int(rng.choice([2, 4, 8, 16]))
        d_ff = block * int(rng.integers(2, 40))
        t = int(rng.integers(1, 6))
        cases.append(
            Case(
                f"random draw {i + 1}: {t} tokens, d_ff = {d_ff}, blocks of {block}",
                (rng.standard_normal((t, d_ff)) * 3.0, block),
            )
        )
    return cases


@checker(reference=_choose_reference)
def check_choose_units(student_fn: Any) -> CheckResult:
    """Check ``choose_units(logits, block) -> int array (..., d_ff // block)`` (exact)."""
    return check_with_hints(
        student_fn, _choose_reference, _choose_cases, _CHOOSE_MISTAKES,
        name="choose_units", rtol=0.0, atol=0.0, exact=True,
    )  # fmt: skip


# =========================================================================== sparse_ffn_infer
def _relu(z: np.ndarray) -> np.ndarray:
    return np.maximum(z, 0.0)


def _parts(params):
    return params["w1"], params["b1"], params["w2"], params["b2"]


@named("sparse_ffn_infer")
def _infer_reference(x, params, idx):
    """Gather the chosen units (rows of ``w1.T``, entries of ``b1``, rows of ``w2``)
    and never touch the others: ``relu(x @ W1[:, idx] + b1[idx]) @ W2[idx] + b2``."""
    w1, b1, w2, b2 = _parts(params)
    idx = np.asarray(idx)
    return _relu(w1.T[idx] @ x + b1[idx]) @ w2[idx] + b2


def _gathered(x, params, idx, *, act=_relu, bias1="gather", bias2=True):
    w1, b1, w2, b2 = _parts(params)
    idx = np.asarray(idx)
    pre = x @ w1[:, idx]
    if bias1 == "gather":
        pre = pre + b1[idx]
    elif bias1 == "first":
        pre = pre + b1[: idx.size]
    out = act(pre) @ w2[idx]
    return out + b2 if bias2 else out


def _after_act(x, params, idx):
    w1, b1, w2, b2 = _parts(params)
    idx = np.asarray(idx)
    return (_relu(x @ w1[:, idx]) + b1[idx]) @ w2[idx] + b2


def _w2_columns(x, params, idx):
    w1, b1, w2, b2 = _parts(params)
    idx = np.asarray(idx)
    return _relu(x @ w1[:, idx] + b1[idx]) @ w2[:, idx].T + b2


def _w1_rows(x, params, idx):
    w1, b1, w2, b2 = _parts(params)
    idx = np.asarray(idx)
    return _relu(x @ w1[idx].T + b1[idx]) @ w2[idx] + b2


def _dense(x, params, idx):
    w1, b1, w2, b2 = _parts(params)
    return _relu(x @ w1 + b1) @ w2 + b2


def _masked_dense(x, params, idx):
    w1, b1, w2, b2 = _parts(params)
    keep = np.zeros(w1.shape[1])
    keep[np.asarray(idx)] = 1.0
    return (_relu(x @ w1 + b1) * keep) @ w2 + b2


def _gelu(z):
    return 0.5 * z * (1.0 + np.vectorize(math.erf)(np.asarray(z) / math.sqrt(2.0)))


_INFER_MISTAKES = [  # first: on the NaN case other mistakes give NaN too
    Mistake(
        _masked_dense,
        "right numbers, wrong reads: you computed every unit and zeroed the others, "
        "which reads all of W1 and W2 (here the units not chosen hold NaN, and "
        "0 * NaN is NaN). Gather W1[:, idx], b1[idx] and W2[idx] first.",
    ),
    Mistake(
        lambda x, p, idx: _gathered(x, p, idx, bias1="none"),
        "the first layer's bias is missing: add b1[idx], the biases of the chosen "
        "units, before the ReLU.",
    ),
    Mistake(
        lambda x, p, idx: _gathered(x, p, idx, bias1="first"),
        "b1[:len(idx)] takes the biases of the first units, not of the chosen ones: "
        "gather b1[idx] like the columns of W1.",
    ),
    Mistake(
        _after_act,
        "the bias b1 goes inside the ReLU: relu(x @ W1[:, idx] + b1[idx]), not "
        "relu(x @ W1[:, idx]) + b1[idx].",
    ),
    Mistake(
        _w2_columns,
        "W2 is stored (d_ff, d_model): unit u's output weights are its ROW W2[u], so "
        "gather W2[idx] (rows), not W2[:, idx] (columns).",
    ),
    Mistake(
        _w1_rows,
        "W1 is stored (d_model, d_ff): unit u's input weights are its COLUMN W1[:, u], "
        "so gather W1[:, idx], not W1[idx].",
    ),
    Mistake(
        lambda x, p, idx: _gathered(x, p, idx, act=lambda z: z),
        "the ReLU is missing: h = relu(x @ W1[:, idx] + b1[idx]).",
    ),
    Mistake(
        lambda x, p, idx: _gathered(x, p, idx, act=_gelu),
        "the Scaling Transformer's sparse FFN uses a ReLU, not the GELU of the dense "
        "LM's FFN.",
    ),
    Mistake(
        lambda x, p, idx: _gathered(x, p, idx, bias2=False),
        "the output bias b2 is missing: it is dense, add all of it.",
    ),
    Mistake(
        _dense,
        "this is the dense FFN: every unit contributes. Keep only the chosen units "
        "idx (one per block).",
    ),
]


def _ffn_params(rng, d, d_ff, dtype=np.float64, *, scale=1.0) -> dict:
    s1, s2 = scale / np.sqrt(d), scale / np.sqrt(d_ff)
    p = {
        "w1": rng.standard_normal((d, d_ff)) * s1,
        "b1": rng.standard_normal(d_ff) * 0.5,
        "w2": rng.standard_normal((d_ff, d)) * s2,
        "b2": rng.standard_normal(d) * 0.1,
        "c1": rng.standard_normal((d, 4)) * s1,  # the controller rides along, unused
        "c2": rng.standard_normal((4, d_ff)) * 0.5,
    }
    return {k: v.astype(dtype) for k, v in p.items()}


def _random_idx(rng, d_ff, block):
    return np.arange(0, d_ff, block) + rng.integers(0, block, size=d_ff // block)


def _poisoned(rng, d, d_ff, block):
    p = _ffn_params(rng, d, d_ff)
    idx = _random_idx(rng, d_ff, block)
    off = np.ones(d_ff, dtype=bool)
    off[idx] = False
    p["w1"][:, off] = np.nan
    p["b1"][off] = np.nan
    p["w2"][off] = np.nan
    return rng.standard_normal(d), p, idx


def _telling(rng: np.random.Generator):
    """d_model = d_ff = 8, units 1 and 6 chosen; unit 1: x @ W1 < 0 < x @ W1 + b1,
    unit 6: x @ W1 + b1 < 0 < x @ W1 (so a missing ReLU, a bias after the ReLU and a
    missing bias all give different answers)."""
    x, p = rng.standard_normal(8), _ffn_params(rng, 8, 8)
    for u, sign, bias in ((1, -1.0, 0.5), (6, 1.0, -0.5)):
        a = float(x @ p["w1"][:, u])
        if a * sign < 0:
            p["w1"][:, u] *= -1.0
            a = -a
        p["b1"][u] = -a + bias
    return x, p, np.array([1, 6])


def _infer_cases(rng: np.random.Generator) -> list[Case]:
    cases = [  # the first cases tell the mistakes apart
        Case("square: d_model = d_ff = 8, blocks of 4", _telling(rng)),
        Case(
            "d_model = 4, d_ff = 16, blocks of 4",
            (rng.standard_normal(4), _ffn_params(rng, 4, 16), np.array([0, 7, 9, 14])),
        ),
        Case(
            "block = 1: every unit chosen, the dense FFN",
            (rng.standard_normal(6), _ffn_params(rng, 6, 12), np.arange(12)),
        ),
        Case(
            "one block: a single unit",
            (rng.standard_normal(5), _ffn_params(rng, 5, 10), np.array([3])),
        ),
        Case(
            "the units not chosen hold NaN: a function that reads them returns NaN",
            _poisoned(rng, 16, 64, 8),
        ),
        Case(
            "float32, d_model = 32, d_ff = 128, blocks of 16",
            (
                rng.standard_normal(32).astype(np.float32),
                _ffn_params(rng, 32, 128, np.float32),
                _random_idx(rng, 128, 16),
            ),
        ),
    ]
    for i in range(4):
        block = int(rng.choice([2, 4, 8, 16, 32]))
        d = int(rng.integers(2, 48))
        d_ff = block * int(rng.integers(1, 12))
        cases.append(
            Case(
                f"random draw {i + 1}: d_model = {d}, d_ff = {d_ff}, blocks of {block}",
                (rng.standard_normal(d), _ffn_params(rng, d, d_ff),
                 _random_idx(rng, d_ff, block)),
            )
        )  # fmt: skip
    return cases


@checker(reference=_infer_reference)
def check_sparse_ffn_infer(student_fn: Any) -> CheckResult:
    """Check ``sparse_ffn_infer(x, params, idx) -> (d_model,)`` (rtol 1e-5)."""
    return check_with_hints(
        student_fn, _infer_reference, _infer_cases, _INFER_MISTAKES,
        name="sparse_ffn_infer", rtol=1e-5, atol=1e-5,
    )  # fmt: skip
