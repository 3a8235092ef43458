"""Checkers for the chapter 7 exercises (notebooks 07.1 to 07.4): FLASH.

07.1 to 07.3's checkers live in this module; 07.4's in :mod:`.length` (re-exported here).

Each ``check_<name>(student_fn)`` runs the student's function against the course's reference on fixed
edge cases and seeded random draws, prints a plain-words verdict and returns the
:class:`effx_lab.check.CheckResult`. When a wrong answer equals a classic mistake (e.g. a causal mask
that drops the diagonal), the verdict ends with a ``hint:`` line naming it. What the student writes:

* 07.1 ``relu2_attention(q, k, bias=None, causal=False)``: GAU's attention matrix
  ``relu(q k^T / m + bias)^2`` with ``m`` the number of keys, ``(..., n, s), (..., m, s) -> (..., n, m)``,
  zero above the diagonal when causal, as :func:`effx_lab.flash.reference.relu2_attention`.
* 07.1 ``glu(x, params)``: ``(swish(x W_u + b_u) * swish(x W_v + b_v)) W_o + b_o``, as
  :func:`effx_lab.flash.reference.glu`.
* 07.1 ``gau_param_count(d_model, expansion, s, max_rel) -> int``: the weights of one GAU layer (LayerNorm,
  fused ``W_uvz`` and its bias, ``gamma``/``beta`` with 2 rows, ``2 max_rel + 1`` relative-position scalars,
  ``W_o`` and ``b_o``), as :func:`effx_lab.flash.costs.layer_params` with ``kind="gau"``.
* 07.2 ``chunk_linear_states(lin_k, v, chunk_size, causal)``: the unscaled per-chunk states
  ``sum_h K_lin_h^T V_h`` over all chunks (non-causal) or the previous chunks ``h < g`` only (causal),
  ``(..., n, s), (..., n, e) -> (..., G, s, e)``, as :func:`effx_lab.flash.reference.chunk_linear_states`.
* 07.2 ``mixed_chunk_flops(n, d_model, expansion, s, chunk_size) -> int``: the token-mixing FLOPs of one
  FLASH layer, padding to whole chunks included, the ``"mixing"`` entry of
  :func:`effx_lab.flash.costs.layer_flops` with ``kind="flash"``.
* 07.3 ``flash_crossover(d_model, expansion, s, chunk_size) -> int``: the smallest
  length ``n`` at which FLASH's token mixing (padded to whole chunks) needs fewer FLOPs
  than softmax attention's ``4 n^2 d``, as
  :func:`effx_lab.flash.costs.mixing_crossover`: the prediction the notebook puts next
  to the length where FLASH overtakes SDPA on the reader's device.
* 07.3 ``scaling_exponent(lengths, times) -> float``: the slope of the least-squares line through
  ``(log n, log t)`` (any log base), as :func:`effx_lab.flash.analysis.scaling_exponent`.
* 07.3 ``causal_linear_attention(q, k, v)``: causal normalised linear attention on feature-mapped ``q, k``,
  ``out_i = q_i (sum_{j<=i} k_j^T v_j) / (q_i . sum_{j<=i} k_j + 1e-6)``, as
  :func:`effx_lab.attention.reference.linear_attention` with ``causal=True, normalize=True, eps=1e-6``.

Array exercises get float64 inputs and one float32 case; floats are compared with ``rtol=1e-4`` and a small
``atol`` (wrong answers are off by far more), counts exactly as ``int``.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np

from effx_lab.attention.reference import feature_map, linear_attention
from effx_lab.check import (
    Case,
    CheckResult,
    Mistake,
    check_with_hints,
    checker,
    named,
    random_arrays,
)
from effx_lab.models.reference import softmax

from .. import reference as R
from ..analysis import scaling_exponent
from ..costs import (
    _smallest_length_below,
    layer_flops,
    layer_params,
    mixing_crossover,
)
from .length import check_crossover_length, check_equal_glu_width

__all__ = [
    "check_relu2_attention",
    "check_glu",
    "check_gau_param_count",
    "check_chunk_linear_states",
    "check_mixed_chunk_flops",
    "check_flash_crossover",
    "check_scaling_exponent",
    "check_causal_linear_attention",
    "check_equal_glu_width",
    "check_crossover_length",
]

_RTOL = 1e-4  # array exercises (one case is float32)
_ATOL = 1e-6


def _normal(rng: np.random.Generator, shape: tuple[int, ...], scale: float = 1.0) -> np.ndarray:
    return rng.normal(0.0, scale, size=shape)


# =========================================================================== 07.1 relu2 attention
def _relu2_variant(q, k, bias=None, causal=False, *, scale="m", act="relu2", bias_at="logits", mask="tril"):
    """GAU attention with one thing changed (the reference: scale="m", act="relu2", bias_at="logits", mask="tril").

    ``bias_at``: "logits" (right), "none" (forgotten), "after" (added to relu^2), "inside" (``(relu + b)^2``);
    ``mask``: "tril" (keep j <= i, right), "strict" (j < i), "triu" (j >= i).
    """
    n, m, s = q.shape[-2], k.shape[-2], q.shape[-1]
    div = {"m": m, "n": n, "sqrt_s": math.sqrt(s)}[scale]
    logits = (q @ np.swapaxes(k, -1, -2)) / div
    if bias is not None and bias_at == "logits":
        logits = logits + bias
    keep = {"tril": np.tril, "strict": lambda a: np.tril(a, -1), "triu": np.triu}[mask](np.ones((n, m), dtype=bool))
    if act == "softmax":
        return softmax(np.where(keep, logits, -np.inf) if causal else logits, axis=-1)
    if act == "relu2":
        a = np.maximum(logits, 0.0) ** 2
    elif act == "relu":
        a = np.maximum(logits, 0.0)
    else:  # "square"
        a = logits**2
    if bias is not None and bias_at == "after":
        a = a + bias
    elif bias is not None and bias_at == "inside":
        a = (np.maximum(logits, 0.0) + bias) ** 2
    return np.where(keep, a, 0.0) if causal else a


def _only_causal(fn: Callable) -> Callable:
    def wrong(q, k, bias=None, causal=False):
        return fn(q, k, bias, causal) if causal else None

    return wrong


_RELU2_MISTAKES = [
    Mistake(
        _only_causal(lambda q, k, b, c: _relu2_variant(q, k, b, c, mask="strict")),
        "your causal mask also removes the diagonal (j < i): a token may attend to itself, keep j <= i "
        "(np.tril(..., k=0)).",
    ),
    Mistake(
        _only_causal(lambda q, k, b, c: _relu2_variant(q, k, b, c, mask="triu")),
        "your causal mask keeps the future (j >= i): query i may only see keys j <= i (np.tril, not np.triu).",
    ),
    Mistake(
        lambda q, k, bias=None, causal=False: _relu2_variant(q, k, bias, causal, scale="sqrt_s"),
        "GAU divides q k^T by m, the number of keys, not by sqrt(s) as softmax attention does.",
    ),
    Mistake(
        lambda q, k, bias=None, causal=False: _relu2_variant(q, k, bias, causal, scale="n"),
        "divide by m = k.shape[-2], the number of keys, not by n = q.shape[-2], the number of queries.",
    ),
    Mistake(
        lambda q, k, bias=None, causal=False: _relu2_variant(q, k, bias, causal, act="relu"),
        "square the relu: A = relu(...)^2.",
    ),
    Mistake(
        lambda q, k, bias=None, causal=False: _relu2_variant(q, k, bias, causal, act="square"),
        "apply the relu before squaring: negative logits must give 0, not their square.",
    ),
    Mistake(
        lambda q, k, bias=None, causal=False: (
            None if bias is None else _relu2_variant(q, k, bias, causal, bias_at="none")
        ),
        "add the bias to the logits: relu(q k^T / m + bias)^2.",
    ),
    Mistake(
        lambda q, k, bias=None, causal=False: (
            None if bias is None else _relu2_variant(q, k, bias, causal, bias_at="after")
        ),
        "the bias goes inside the relu, added to q k^T / m, not to the result.",
    ),
    Mistake(
        lambda q, k, bias=None, causal=False: (
            None if bias is None else _relu2_variant(q, k, bias, causal, bias_at="inside")
        ),
        "the bias goes inside the relu, added to q k^T / m before it.",
    ),
    Mistake(
        lambda q, k, bias=None, causal=False: _relu2_variant(q, k, bias, causal, act="softmax"),
        "GAU replaces the softmax by relu(.)^2: no exponential and no row normalisation.",
    ),
]


@named("relu2_attention")
def _relu2_reference(q, k, bias=None, causal=False):
    return R.relu2_attention(q, k, bias, causal)


def _relu2_cases(rng: np.random.Generator) -> list[Case]:
    def qk(n: int, m: int, s: int, batch: tuple[int, ...] = (), scale: float = 2.0):
        return _normal(rng, batch + (n, s), scale), _normal(rng, batch + (m, s), scale)

    def case(label: str, q, k, bias=None, causal=False) -> Case:
        return Case(label, (q, k), {"bias": bias, "causal": causal})

    q1, k1 = qk(5, 5, 3)
    q_eq = _normal(rng, (6, 4), 2.0)
    q_neg = np.abs(_normal(rng, (4, 3)))
    q32, k32 = qk(7, 7, 5)
    cases = [
        Case("defaults: no bias, not causal (q and k only)", qk(4, 6, 3)),
        case("non-square q/k: 3 queries, 7 keys", *qk(3, 7, 5)),
        case("non-square q/k: 6 queries, 2 keys, with bias", *qk(6, 2, 4), bias=_normal(rng, (6, 2), 0.5)),
        case("one token: 1 query, 1 key", *qk(1, 1, 2)),
        case("zero bias", *qk(4, 5, 3), bias=np.zeros((4, 5))),
        case("relative position bias: rel_pos_bias, R = 2", q1, k1, bias=R.rel_pos_bias(5, _normal(rng, (5,), 0.5))),
        case("causal: q = k, so the diagonal is positive and must be kept (j <= i)", q_eq, q_eq.copy(), causal=True),
        case(
            "causal: with a relative position bias",
            *qk(6, 6, 4),
            bias=R.rel_pos_bias(6, _normal(rng, (7,), 0.5)),
            causal=True,
        ),
        case("causal: one token", *qk(1, 1, 3), causal=True),
        case("all logits negative: A is all zeros", q_neg, -q_neg[:3].copy() * 2, bias=-np.ones((4, 3))),
        case("batch dimension: q is (2, 3, 5, 4)", *qk(5, 5, 4, (2, 3)), bias=_normal(rng, (5, 5), 0.5), causal=True),
        case("paper width: s = 128", *qk(8, 8, 128, scale=0.5), bias=_normal(rng, (8, 8), 0.5)),
        case(
            "float32: inputs and bias",
            q32.astype(np.float32),
            k32.astype(np.float32),
            bias=_normal(rng, (7, 7), 0.5).astype(np.float32),
            causal=True,
        ),
    ]
    for i in range(4):
        causal = i % 2 == 1
        n = int(rng.integers(2, 10))
        m = n if causal else int(rng.integers(2, 10))
        s = int(rng.integers(2, 9))
        batch = (int(rng.integers(1, 4)),) if i >= 2 else ()
        bias = _normal(rng, (n, m), 0.5) if i != 2 else None
        cases.append(
            case(
                f"random draw {i + 1}: n={n}, m={m}, s={s}, causal={causal}",
                *qk(n, m, s, batch),
                bias=bias,
                causal=causal,
            )
        )
    return cases


@checker(reference=_relu2_reference)
def check_relu2_attention(student_fn: Any) -> CheckResult:
    """Check ``relu2_attention(q, k, bias=None, causal=False) -> A`` of shape ``(..., n, m)``."""
    return check_with_hints(student_fn, _relu2_reference, _relu2_cases, _RELU2_MISTAKES, name="relu2_attention")


# =========================================================================== 07.1 GLU
def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _glu_parts(x, p):
    return x @ p["w_u"] + p["b_u"], x @ p["w_v"] + p["b_v"]


_GLU_MISTAKES = [
    Mistake(
        lambda x, p: (R.swish(_glu_parts(x, p)[0]) * _glu_parts(x, p)[1]) @ p["w_o"] + p["b_o"],
        "both branches go through Swish: U = swish(x W_u + b_u) and V = swish(x W_v + b_v).",
    ),
    Mistake(
        lambda x, p: (_sigmoid(_glu_parts(x, p)[0]) * _sigmoid(_glu_parts(x, p)[1])) @ p["w_o"] + p["b_o"],
        "the activation is Swish, x * sigmoid(x), not the sigmoid itself.",
    ),
    Mistake(
        lambda x, p: (_sigmoid(_glu_parts(x, p)[0]) * _glu_parts(x, p)[1]) @ p["w_o"] + p["b_o"],
        "that is the original GLU, sigmoid(x W_u) * (x W_v); here both branches use Swish, x * sigmoid(x).",
    ),
    Mistake(
        lambda x, p: (R.swish(_glu_parts(x, p)[0]) * R.swish(_glu_parts(x, p)[1])) @ p["w_o"],
        "add the output bias b_o after W_o.",
    ),
    Mistake(
        lambda x, p: R.swish((_glu_parts(x, p)[0] * _glu_parts(x, p)[1]) @ p["w_o"] + p["b_o"]),
        "apply Swish to the two branches (x W_u + b_u and x W_v + b_v), before the gate and W_o, not after W_o.",
    ),
]


@named("glu")
def _glu_reference(x, params):
    return R.glu(x, params)


def _glu_params(rng: np.random.Generator, d: int, e: int, bias: bool = True) -> dict[str, np.ndarray]:
    shapes = R.glu_param_shapes(d, e)
    fan_in = {"w_u": d, "w_v": d, "w_o": e}
    return {
        key: (_normal(rng, shape, 1.5 / math.sqrt(fan_in[key])) if key in fan_in
              else (_normal(rng, shape, 0.5) if bias else np.zeros(shape)))
        for key, shape in shapes.items()
    }  # fmt: skip


def _glu_cases(rng: np.random.Generator) -> list[Case]:
    def case(label: str, x_shape: tuple[int, ...], e: int, bias: bool = True, dtype: Any = np.float64) -> Case:
        d = x_shape[-1]
        params = {k: v.astype(dtype) for k, v in _glu_params(rng, d, e, bias).items()}
        return Case(label, (_normal(rng, x_shape).astype(dtype), params))

    cases = [
        case("small: 5 tokens, d = 4, e = 2d", (5, 4), 8),
        case("one token: x is (1, d)", (1, 6), 12),
        case("expansion 1: e = d", (4, 5), 5),
        case("expansion 3: e = 3d", (3, 2), 6),
        case("batch dimension: x is (2, 3, 4, 3)", (2, 3, 4, 3), 6),
        case("zero biases: as initialised", (4, 4), 8, bias=False),
        case("float32: inputs", (6, 8), 16, dtype=np.float32),
    ]
    for i in range(4):
        d = int(rng.integers(1, 9))
        e = d * int(rng.integers(1, 4))
        shape = (int(rng.integers(1, 4)),) * (i % 2) + (int(rng.integers(1, 8)), d)
        cases.append(case(f"random draw {i + 1}: d={d}, e={e}", shape, e))
    return cases


@checker(reference=_glu_reference)
def check_glu(student_fn: Any) -> CheckResult:
    """Check ``glu(x, params) -> (swish(x W_u + b_u) * swish(x W_v + b_v)) W_o + b_o``."""
    return check_with_hints(student_fn, _glu_reference, _glu_cases, _GLU_MISTAKES, name="glu")


# =========================================================================== 07.1 GAU parameters
@named("gau_param_count")
def _gau_param_count_reference(d_model, expansion, s, max_rel):
    return layer_params("gau", d_model, expansion=expansion, s=s, max_rel=max_rel)


def _gau_count_without(part: str) -> Callable:
    def wrong(d_model, expansion, s, max_rel):
        d, e = d_model, expansion * d_model
        total = _gau_param_count_reference(d_model, expansion, s, max_rel)
        return (
            total
            - {
                "biases": (2 * e + s) + d,
                "layernorm": 2 * d,
                "gamma_rows": 2 * s,
                "rel_bias": 2 * max_rel + 1,
                "rel_bias_2r": 1,
            }[part]
        )

    return wrong


_GAU_COUNT_MISTAKES = [
    Mistake(_gau_count_without("biases"), "count the biases too: b_uvz (2e + s of them) and b_o (d_model)."),
    Mistake(_gau_count_without("layernorm"), "the pre-LayerNorm has weights too: a gain and a bias, 2 * d_model."),
    Mistake(
        _gau_count_without("gamma_rows"),
        "gamma and beta have one row per query/key set: 2 rows of s each for GAU (Q and K), 4 * s in all.",
    ),
    Mistake(
        lambda d_model, expansion, s, max_rel: _gau_param_count_reference(d_model, 1, s, max_rel),
        "the expanded width is e = expansion * d_model, not d_model.",
    ),
    Mistake(_gau_count_without("rel_bias"), "count the relative position bias: one scalar per offset in [-R, R]."),
    Mistake(_gau_count_without("rel_bias_2r"), "offsets -R..R are 2R + 1 values (offset 0 included)."),
]


def _gau_count_cases(rng: np.random.Generator) -> list[Case]:
    cases = [
        Case("paper's GAU: d = 768, e = 2d, s = 128, R = 127", (768, 2, 128, 127)),
        Case("tiny: d = 1, e = d, s = 1, R = 0", (1, 1, 1, 0)),
        Case("max_rel = 0: a single relative-position scalar", (64, 2, 16, 0)),
        Case("expansion 3: d = 96, s = 32, R = 8", (96, 3, 32, 8)),
        Case("wide: d = 4096, s = 256, R = 511", (4096, 2, 256, 511)),
    ]
    for i in range(6):
        args = (
            int(rng.integers(1, 2049)),
            int(rng.integers(1, 5)),
            int(rng.integers(1, 257)),
            int(rng.integers(0, 513)),
        )
        cases.append(Case(f"random draw {i + 1}", args))
    return cases


@checker(reference=_gau_param_count_reference)
def check_gau_param_count(student_fn: Any) -> CheckResult:
    """Check ``gau_param_count(d_model, expansion, s, max_rel) -> int`` (exact)."""
    return check_with_hints(
        student_fn, _gau_param_count_reference, _gau_count_cases, _GAU_COUNT_MISTAKES,
        name="gau_param_count", rtol=0.0, atol=0.0, exact=True,
    )  # fmt: skip


# =========================================================================== 07.2 chunk states
def _chunk_kv(lin_k, v, chunk_size):
    """``kv_h = K_h^T V_h`` for every chunk: ``(..., G, s, e)``."""
    g = lin_k.shape[-2] // chunk_size
    kc = lin_k.reshape(*lin_k.shape[:-2], g, chunk_size, lin_k.shape[-1])
    vc = v.reshape(*v.shape[:-2], g, chunk_size, v.shape[-1])
    return np.swapaxes(kc, -1, -2) @ vc


_CHUNK_MISTAKES = [
    Mistake(
        lambda lin_k, v, chunk_size, causal: np.cumsum(_chunk_kv(lin_k, v, chunk_size), axis=-3) if causal else None,
        "your state for chunk g includes chunk g itself (an inclusive cumulative sum). That is a causality leak: "
        "a token would see the tokens after it in its own chunk through the linear part. Causal state g sums the "
        "previous chunks only, h < g (the local quadratic part handles chunk g, with its mask), so state 0 is "
        "zero: shift the cumulative sum by one chunk.",
    ),
    Mistake(
        lambda lin_k, v, chunk_size, causal: R.chunk_linear_states(lin_k, v, chunk_size, False) if causal else None,
        "with causal=True, chunk g may only use the chunks before it (h < g), not the sum over all chunks.",
    ),
    Mistake(
        lambda lin_k, v, chunk_size, causal: R.chunk_linear_states(lin_k, v, chunk_size, causal) / chunk_size,
        "the states are unscaled: the 1/c is applied later, by the caller (mixed_chunk_attention).",
    ),
    Mistake(
        lambda lin_k, v, chunk_size, causal: np.swapaxes(R.chunk_linear_states(lin_k, v, chunk_size, causal), -1, -2),
        "each state is K_lin^T V, of shape (s, e): the keys' width first, then the values'.",
    ),
    Mistake(
        lambda lin_k, v, chunk_size, causal: None if causal else _chunk_kv(lin_k, v, chunk_size).sum(axis=-3),
        "return one state per chunk, shape (..., G, s, e), even when they are all the same (non-causal): "
        "repeat the total for every chunk (e.g. np.broadcast_to(...).copy()).",
    ),
    Mistake(
        lambda lin_k, v, chunk_size, causal: (
            None if causal else _chunk_kv(lin_k, v, chunk_size).sum(axis=-3, keepdims=True)
        ),
        "return one state per chunk, shape (..., G, s, e), even when they are all the same (non-causal): "
        "repeat the total for every chunk (e.g. np.broadcast_to(...).copy()).",
    ),
    Mistake(
        lambda lin_k, v, chunk_size, causal: _chunk_kv(lin_k, v, chunk_size),
        "state g is a sum over chunks (all of them, or h < g when causal), not chunk g's own K_g^T V_g.",
    ),
]


@named("chunk_linear_states")
def _chunk_reference(lin_k, v, chunk_size, causal):
    return R.chunk_linear_states(lin_k, v, chunk_size, causal)


def _chunk_cases(rng: np.random.Generator) -> list[Case]:
    def case(
        label: str, n: int, c: int, s: int, e: int, causal: bool, batch: tuple[int, ...] = (), dtype: Any = np.float64
    ):
        lin_k = _normal(rng, batch + (n, s)).astype(dtype)
        v = _normal(rng, batch + (n, e)).astype(dtype)
        return Case(label, (lin_k, v, c, causal))

    cases = [
        case("causal: 4 chunks of 3 tokens, s = 2, e = 5", 12, 3, 2, 5, True),
        case("non-causal: 4 chunks of 3 tokens, s = 2, e = 5", 12, 3, 2, 5, False),
        case("one chunk: c = n, causal, so the only state is zero", 5, 5, 3, 4, True),
        case("one chunk: c = n, non-causal", 5, 5, 3, 4, False),
        case("c = 1: every token is its own chunk (causal)", 6, 1, 2, 3, True),
        case("s = e: square states (causal)", 8, 2, 3, 3, True),
        case("batch dimension: (2, 3, n, .), causal", 6, 2, 4, 2, True, (2, 3)),
        case("batch dimension: (2, n, .), non-causal", 9, 3, 2, 4, False, (2,)),
        case("float32: inputs (causal)", 8, 4, 3, 5, True, dtype=np.float32),
    ]
    for i in range(4):
        g, c = int(rng.integers(2, 6)), int(rng.integers(1, 6))
        s, e = int(rng.integers(1, 6)), int(rng.integers(1, 6))
        causal = i % 2 == 0
        batch = (int(rng.integers(1, 4)),) if i >= 2 else ()
        cases.append(case(f"random draw {i + 1}: {g} chunks of {c}, causal={causal}", g * c, c, s, e, causal, batch))
    return cases


@checker(reference=_chunk_reference)
def check_chunk_linear_states(student_fn: Any) -> CheckResult:
    """Check ``chunk_linear_states(lin_k, v, chunk_size, causal) -> states`` of shape ``(..., G, s, e)``."""
    return check_with_hints(student_fn, _chunk_reference, _chunk_cases, _CHUNK_MISTAKES, name="chunk_linear_states")


# =========================================================================== 07.2 FLOPs
@named("mixed_chunk_flops")
def _mixed_flops_reference(n, d_model, expansion, s, chunk_size):
    return layer_flops("flash", n, d_model, expansion=expansion, s=s, chunk_size=chunk_size)["mixing"]


def _flops_parts(n, d_model, expansion, s, chunk_size, pad=True):
    e, c = expansion * d_model, chunk_size
    padded = -(-n // c) * c if pad else n
    return 2 * padded * c * (s + e), 2 * 2 * padded * s * e


_FLOPS_MISTAKES = [
    Mistake(
        lambda *a: sum(_flops_parts(*a, pad=False)),
        "the sequence is padded to a whole number of chunks: count ceil(n / c) * c tokens, not n.",
    ),
    Mistake(
        lambda *a: _flops_parts(*a)[0],
        "add the global linear part too: 2 * 2 * N * s * e for the K_lin^T V states and the Q_lin read-out.",
    ),
    Mistake(
        lambda *a: _flops_parts(*a)[1],
        "add the local quadratic part too: 2 * N * c * (s + e) inside the chunks.",
    ),
    Mistake(
        lambda *a: sum(_flops_parts(*a)) // 2,
        "count FLOPs, 2 per multiply-add, not multiply-adds.",
    ),
    Mistake(
        lambda *a: _flops_parts(*a, pad=False)[0],
        "count the global linear part, and pad the sequence to whole chunks (ceil(n / c) * c tokens).",
    ),
]


def _flops_cases(rng: np.random.Generator) -> list[Case]:
    cases = [
        Case("paper's FLASH: n = 8192, d = 768, e = 2d, s = 128, c = 256", (8192, 768, 2, 128, 256)),
        Case("n not a multiple of c: 1000 tokens in chunks of 256 (padded to 1024)", (1000, 512, 2, 128, 256)),
        Case("n shorter than one chunk: 100 tokens, c = 256 (one padded chunk)", (100, 256, 2, 64, 256)),
        Case("n = c: exactly one chunk", (128, 64, 2, 32, 128)),
        Case("c = 1: every token its own chunk", (37, 16, 2, 8, 1)),
        Case("n = 1: one padded chunk of 64", (1, 32, 1, 16, 64)),
        Case("expansion 3: n = 777, c = 100", (777, 96, 3, 32, 100)),
        Case("int32 overflow: n = 2^20, d = 2048", (2**20, 2048, 2, 128, 256)),
    ]
    for i in range(6):
        c = int(rng.choice([16, 64, 128, 256, 512]))
        n = int(rng.integers(1, 20)) * c + int(rng.integers(1, c))  # never a multiple of c
        args = (n, int(rng.choice([64, 256, 512, 1024])), int(rng.integers(1, 4)), int(rng.choice([32, 64, 128])), c)
        cases.append(Case(f"random draw {i + 1}: n = {n}, c = {c}", args))
    return cases


@checker(reference=_mixed_flops_reference)
def check_mixed_chunk_flops(student_fn: Any) -> CheckResult:
    """Check ``mixed_chunk_flops(n, d_model, expansion, s, chunk_size) -> int`` (exact, padding counted)."""
    return check_with_hints(
        student_fn, _mixed_flops_reference, _flops_cases, _FLOPS_MISTAKES,
        name="mixed_chunk_flops", rtol=0.0, atol=0.0, exact=True,
    )  # fmt: skip


# ================================================================ 07.3 FLOP crossover
@named("flash_crossover")
def _crossover_reference(d_model, expansion, s, chunk_size):
    return mixing_crossover(d_model, expansion=expansion, s=s, chunk_size=chunk_size)


def _crossover_variant(quad="softmax", local=True, global_=True, per_mac=2):
    """The crossover with one thing changed (the reference: softmax's 4 n^2 d, both
    parts of FLASH, 2 FLOPs per multiply-add)."""

    def wrong(d_model, expansion, s, chunk_size):
        e, c = expansion * d_model, chunk_size
        per_chunk = per_mac * c * c * (s + e) if local else 0
        per_chunk += per_mac * 2 * c * s * e if global_ else 0
        coef = {"softmax": 4 * d_model, "one_product": 2 * d_model, "gau": 2 * (s + e)}
        return _smallest_length_below(coef[quad], per_chunk, c)

    return wrong


def _crossover_unpadded(d_model, expansion, s, chunk_size):
    e, c = expansion * d_model, chunk_size
    return (c * (s + e) + 2 * s * e) // (2 * d_model) + 1  # n > (c(s+e) + 2se) / 2d


def _crossover_whole_chunks(d_model, expansion, s, chunk_size):
    e, c = expansion * d_model, chunk_size
    per_chunk = 2 * c * c * (s + e) + 4 * c * s * e
    return (per_chunk // (4 * d_model * c * c) + 1) * c


def _crossover_e_is_d(d_model, expansion, s, chunk_size):
    return _crossover_reference(d_model, 1, s, chunk_size)


_CROSSOVER_MISTAKES = [
    Mistake(
        _crossover_unpadded,
        "FLASH pads the sequence to whole chunks: count N = ceil(n / c) * c tokens on "
        "FLASH's side, so a length just past a chunk boundary pays for a whole extra "
        "chunk.",
    ),
    Mistake(
        _crossover_whole_chunks,
        "n need not be a multiple of c: inside a chunk FLASH's (padded) count stays "
        "flat while softmax's 4 n^2 d keeps growing, so the first cheaper n can fall "
        "inside a chunk.",
    ),
    Mistake(
        _crossover_variant(quad="gau"),
        "compare with softmax attention, 4 n^2 d (QK^T and AV, width d over all "
        "heads), not with FLASH-Quad's 2 n^2 (s + e).",
    ),
    Mistake(
        _crossover_variant(quad="one_product"),
        "softmax attention does two n x n products, QK^T and AV, 2 n^2 d FLOPs each: "
        "4 n^2 d in all.",
    ),
    Mistake(
        _crossover_variant(global_=False),
        "FLASH's mixing has a global linear part too: 2 * 2 N s e for the K_lin^T V "
        "states and the Q_lin read-out.",
    ),
    Mistake(
        _crossover_variant(local=False),
        "FLASH's mixing has a local quadratic part too: 2 N c (s + e) inside the "
        "chunks.",
    ),
    Mistake(
        _crossover_variant(per_mac=1),
        "count FLASH's side in FLOPs too (2 per multiply-add), as softmax's 4 n^2 d "
        "is.",
    ),
    Mistake(
        _crossover_e_is_d, "the value width is e = expansion * d_model, not d_model."
    ),
]


def _crossover_cases(rng: np.random.Generator) -> list[Case]:
    cases = [  # the first case tells every mistake apart
        Case("a mid-size model: d = 512, e = 2d, s = 128, c = 128", (512, 2, 128, 128)),
        Case("this notebook's shapes: d = 256, e = 2d, c = 256", (256, 2, 128, 256)),
        Case("the paper's FLASH: d = 768, e = 2d, c = 256", (768, 2, 128, 256)),
        Case("crossover in the first chunk: d = 4096, c = 1024", (4096, 1, 32, 1024)),
        Case("small chunks: d = 64, s = 64, c = 64", (64, 2, 64, 64)),
        Case("c = 1: no padding at all", (16, 3, 8, 1)),
        Case("tiny: d = 1, e = d, s = 1, c = 1", (1, 1, 1, 1)),
        Case("narrow model, wide chunks: d = 32, e = 4d, c = 512", (32, 4, 128, 512)),
        Case("c not a power of two: d = 100, s = 100, c = 77", (100, 2, 100, 77)),
    ]
    for i in range(6):
        args = (
            int(rng.choice([32, 64, 128, 256, 512, 1024, 2048])),
            int(rng.integers(1, 4)),
            int(rng.choice([16, 32, 64, 128, 256])),
            int(rng.choice([16, 32, 64, 100, 128, 256, 512])),
        )
        cases.append(Case(f"random draw {i + 1}: d = {args[0]}, c = {args[3]}", args))
    return cases


@checker(reference=_crossover_reference)
def check_flash_crossover(student_fn: Any) -> CheckResult:
    """Check ``flash_crossover(d_model, expansion, s, chunk_size) -> int`` (exact,
    padding counted)."""
    return check_with_hints(
        student_fn, _crossover_reference, _crossover_cases, _CROSSOVER_MISTAKES,
        name="flash_crossover", rtol=0.0, atol=0.0, exact=True,
    )  # fmt: skip


# =========================================================================== 07.3 scaling exponent
def _slope(x, y):
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    dx = x - x.mean()
    return float(dx @ (y - y.mean()) / (dx @ dx))


def _endpoints(lengths, times):
    n, t = np.asarray(lengths, dtype=np.float64), np.asarray(times, dtype=np.float64)
    i, j = int(np.argmin(n)), int(np.argmax(n))
    return float(np.log(t[j] / t[i]) / np.log(n[j] / n[i]))


@named("scaling_exponent")
def _scaling_reference(lengths, times):
    return scaling_exponent(lengths, times)


_SCALING_MISTAKES = [
    Mistake(
        lambda lengths, times: _slope(lengths, times),
        "fit the line to the logarithms, log t against log n, not t against n.",
    ),
    Mistake(
        _endpoints,
        "use every measurement (a least-squares fit, e.g. np.polyfit(np.log(n), np.log(t), 1)[0]), "
        "not only the first and last points: single timings are noisy.",
    ),
    Mistake(
        lambda lengths, times: _slope(np.log(times), np.log(lengths)),
        "fit log t as a function of log n (x = log n, y = log t); swapping the axes gives a different slope.",
    ),
    Mistake(
        lambda lengths, times: _slope(np.log10(lengths), np.log(times)),
        "use the same logarithm on both axes (any base is fine, as long as it is the same).",
    ),
    Mistake(
        lambda lengths, times: _slope(np.log(lengths), np.log10(times)),
        "use the same logarithm on both axes (any base is fine, as long as it is the same).",
    ),
]


def _scaling_cases(rng: np.random.Generator) -> list[Case]:
    ns = np.array([256, 512, 1024, 2048, 4096, 8192])

    def noisy(p: float, a: float, sigma: float = 0.15) -> np.ndarray:
        return a * ns.astype(np.float64) ** p * np.exp(rng.normal(0.0, sigma, size=ns.size))

    order = rng.permutation(ns.size)
    cases = [
        Case("noisy: quadratic timings (softmax attention)", (ns, noisy(2.0, 1e-9))),
        Case("noisy: linear timings (FLASH)", (ns, noisy(1.0, 3e-6))),
        Case("exact power law: t = n^2 / 1e9", (ns, ns.astype(np.float64) ** 2 / 1e9)),
        Case("exact power law: t = 5e-6 n, plain Python lists", (ns.tolist(), (5e-6 * ns).tolist())),
        Case("two points: the line through both", ([1000, 4000], [0.02, 0.35])),
        Case("n log n: slightly above 1", (ns, 1e-7 * ns * np.log(ns))),
        Case("sub-linear: t = sqrt(n)", (ns, np.sqrt(ns) * 1e-4)),
        Case("lengths not sorted: noisy, exponent 1.5", (ns[order], noisy(1.5, 1e-8)[order])),
        Case("constant time: exponent 0", (ns, np.full(ns.size, 0.25))),
        Case("few points: three timings in milliseconds", (np.array([128, 512, 2048]), np.array([0.9, 3.1, 14.0]))),
    ]
    for i in range(3):
        k = int(rng.integers(3, 9))
        lengths = np.sort(rng.choice(np.arange(64, 100_000), size=k, replace=False))
        p = float(rng.uniform(0.5, 2.5))
        times = 1e-8 * lengths.astype(np.float64) ** p * np.exp(rng.normal(0.0, 0.2, size=k))
        cases.append(Case(f"random noisy draw {i + 1}: {k} points", (lengths, times)))
    return cases


@checker(reference=_scaling_reference)
def check_scaling_exponent(student_fn: Any) -> CheckResult:
    """Check ``scaling_exponent(lengths, times) -> float``, the least-squares slope in log-log (rtol 1e-6)."""
    return check_with_hints(
        student_fn, _scaling_reference, _scaling_cases, _SCALING_MISTAKES, name="scaling_exponent", rtol=1e-6, atol=1e-9
    )


# =========================================================================== 07.3 causal linear attention
_EPS = 1e-6


@named("causal_linear_attention")
def _cla_reference(q, k, v):
    return linear_attention(q, k, v, causal=True, normalize=True, eps=_EPS)


def _exclusive(a: np.ndarray, axis: int) -> np.ndarray:
    """Cumulative sum without the current element: ``out[i] = sum_{j < i} a[j]`` along ``axis``."""
    c = np.moveaxis(np.cumsum(a, axis=axis), axis, 0)
    out = np.zeros_like(c)
    out[1:] = c[:-1]
    return np.moveaxis(out, 0, axis)


def _cla_exclusive(q, k, v):
    states = _exclusive(k[..., :, :, None] * v[..., :, None, :], axis=-3)
    num = np.einsum("...nd,...nde->...ne", q, states)
    return num / ((q * _exclusive(k, axis=-2)).sum(axis=-1, keepdims=True) + _EPS)


def _cla_all_keys_normaliser(q, k, v):
    num = linear_attention(q, k, v, causal=True, normalize=False)
    return num / (q @ k.sum(axis=-2)[..., None] + _EPS)


_CLA_MISTAKES = [
    Mistake(
        lambda q, k, v: linear_attention(q, k, v, causal=False, normalize=True, eps=_EPS),
        "causal: query i may only see keys j <= i (a prefix sum over the sequence), not all keys.",
    ),
    Mistake(
        _cla_exclusive,
        "query i must also see its own key (j <= i): use an inclusive cumulative sum, not only j < i.",
    ),
    Mistake(
        lambda q, k, v: linear_attention(q, k, v, causal=True, normalize=False),
        "normalise: divide by q_i . (sum_{j<=i} k_j) + eps.",
    ),
    Mistake(
        _cla_all_keys_normaliser,
        "the normaliser is causal too: q_i . (sum_{j<=i} k_j), a prefix sum of the keys, not the sum of all keys.",
    ),
]


def _cla_cases(rng: np.random.Generator) -> list[Case]:
    def case(label: str, n: int, d: int, e: int, batch: tuple[int, ...] = (), dtype: Any = np.float64) -> Case:
        q = feature_map(_normal(rng, batch + (n, d)))
        k = feature_map(_normal(rng, batch + (n, d)))
        return Case(
            label, (q.astype(dtype), k.astype(dtype), random_arrays(rng, batch + (n, e), np.float64).astype(dtype))
        )

    cases = [
        case("small: 6 tokens, d = e = 4", 6, 4, 4),
        case("one token: n = 1", 1, 3, 2),
        case("two tokens: n = 2", 2, 2, 3),
        case("d != e: keys of width 3, values of width 5", 7, 3, 5),
        case("batch dimension: (2, 3, n, .)", 5, 2, 3, (2, 3)),
        case("longer sequence: n = 64", 64, 8, 8),
        case("float32: inputs", 9, 4, 6, dtype=np.float32),
    ]
    for i in range(3):
        n, d, e = int(rng.integers(2, 17)), int(rng.integers(1, 7)), int(rng.integers(1, 7))
        batch = (int(rng.integers(1, 4)),) if i == 2 else ()
        cases.append(case(f"random draw {i + 1}: n={n}, d={d}, e={e}", n, d, e, batch))
    return cases


@checker(reference=_cla_reference)
def check_causal_linear_attention(student_fn: Any) -> CheckResult:
    """Check ``causal_linear_attention(q, k, v) -> (..., n, e)`` (q, k already feature-mapped, eps = 1e-6)."""
    return check_with_hints(student_fn, _cla_reference, _cla_cases, _CLA_MISTAKES, name="causal_linear_attention")
