"""Hessian-aware mixed precision (HAWQ) and the straight-through estimator, in NumPy (chapter 2, 02.5 and 02.7).

**Which layers can take fewer bits?** A layer whose weights sit in a flat valley of the loss can be rounded
coarsely; one in a sharp valley cannot. The Hessian of the loss with respect to the layer's weights measures
sharpness. HAWQ (Dong et al. 2019) and Q-BERT (Shen et al. 2020) summarised it by its *top eigenvalue*
(power iteration); HAWQ-v2 (Dong et al. 2020) replaced that by the *trace*, the sum over all directions,
which HAWQ-v3 (Yao et al. 2021) keeps and this module implements. A second-order Taylor expansion around
trained weights ``W`` (gradient ~ 0) gives the loss increase of a perturbation ``dW = Q(W) - W``::

    dL ~ 1/2 dW^T H dW ~ 1/2 (tr(H) / n) ||dW||^2        (HAWQ-v2/v3, H replaced by its average eigenvalue)

so the *sensitivity* of layer ``i`` at ``b`` bits is ``Omega_i(b) = tr(H_i) / n_i * ||Q_b(W_i) - W_i||^2``
(:func:`hawq_sensitivity`), and mixed precision is a budgeted choice of one bit width per layer that minimises
the summed sensitivity (:func:`allocate_bits`, HAWQ-v3's integer linear program, solved exactly here).

**The trace without the matrix.** ``H`` has ``n^2`` entries (``n`` = weights of the layer): never formed.
Hutchinson's estimator (Hutchinson 1989; used by PyHessian and HAWQ-v2) needs only Hessian-vector products:
for a random vector ``v`` with independent Rademacher entries (+1 or -1 with probability 1/2),
``E[v v^T] = I``, so ``E[v^T H v] = tr(H E[v v^T]) = tr(H)``; the estimate is the mean over ``n_samples``
probes (:func:`hutchinson_trace`), with standard error ``std(samples) / sqrt(n_samples)``. ``H v`` itself costs
one extra backward pass in an autograd framework ("double backprop", :func:`effx_lab.quant.torch_ops.hvp_fn`:
torch only, since NumPy has no autograd). For a linear layer fitted by least squares the Hessian is explicit
(:func:`linear_layer_hessian`, the same ``2 X^T X / n`` that GPTQ uses), which lets a notebook check the
estimator against ``np.trace``.

**The straight-through estimator (STE)** (Bengio et al. 2013; Hubara et al. 2017; Jacob et al. 2018). In
quantization-aware training the forward pass uses ``fake_quantize(x)``, whose true derivative is zero almost
everywhere (``round`` is a staircase). The STE pretends ``round`` is the identity in the backward pass but
keeps the clip: the gradient flows unchanged where the value was *not* clipped and is zero where it was
saturated (:func:`ste_grad`).
"""

from __future__ import annotations

import itertools
import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from effx_lab._validate import check_array, check_bool, check_int, describe

from ._np_gptq import rtn_quantize_weight
from ._np_uniform import (
    QParams,
    _check_matches,
    _check_qparams_numpy,
    _check_x,
    expand_qparams,
)

__all__ = [
    "allocate_bits",
    "hawq_sensitivity",
    "hutchinson_trace",
    "linear_layer_hessian",
    "ste_grad",
]

#: above this many Pareto-optimal partial allocations, :func:`allocate_bits` falls back to its greedy
_MAX_STATES = 2**16


# --------------------------------------------------------------------------- Hutchinson's trace estimator
def _check_hutchinson_args(hvp: Any, dim: Any, n_samples: Any, seed: Any, return_samples: Any) -> tuple:
    """Shared by the NumPy and torch :func:`hutchinson_trace`."""
    if not callable(hvp):
        raise TypeError(f"hvp must be a callable mapping a vector v to H v, got {describe(hvp)}")
    dim = check_int("dim", dim, min_value=1)
    n_samples = check_int("n_samples", n_samples, min_value=1)
    seed = check_int("seed", seed, min_value=0)
    return_samples = check_bool("return_samples", return_samples)
    return dim, n_samples, seed, return_samples


def _rademacher_signs(rng: np.random.Generator, dim: int) -> np.ndarray:
    """One probe's integers in {0, 1} (shared by both backends, so that they draw the same probes)."""
    return rng.integers(0, 2, size=dim)


def hutchinson_trace(
    hvp: Callable[[np.ndarray], np.ndarray],
    dim: int,
    n_samples: int = 64,
    seed: int = 0,
    return_samples: bool = False,
) -> float | tuple[float, np.ndarray]:
    """Hutchinson's estimate of ``tr(H)`` from Hessian-vector products: ``mean_i v_i^T H v_i``.

    ``hvp`` maps a float64 vector ``v`` of length ``dim`` to ``H v`` (a 1-D array of the same length);
    ``H`` is never formed. The probes ``v_i`` have independent Rademacher entries (+1 or -1, each with
    probability 1/2) drawn from ``np.random.default_rng(seed)``, so ``E[v v^T] = I`` and every sample
    ``v_i^T H v_i`` is an unbiased estimate of the trace. Returns the mean as a float, or
    ``(mean, samples)`` (the ``n_samples`` per-probe values, float64) when ``return_samples`` is true; the
    standard error of the mean is ``samples.std(ddof=1) / sqrt(n_samples)``.

    The torch version (:func:`effx_lab.quant.torch_ops.hutchinson_trace`) draws the very same probes.
    """
    dim, n_samples, seed, return_samples = _check_hutchinson_args(hvp, dim, n_samples, seed, return_samples)
    rng = np.random.default_rng(seed)
    samples = np.empty(n_samples, dtype=np.float64)
    for i in range(n_samples):
        v = _rademacher_signs(rng, dim).astype(np.float64) * 2.0 - 1.0  # {0, 1} -> {-1, +1}
        hv = hvp(v)
        if not isinstance(hv, np.ndarray) or hv.shape != (dim,) or hv.dtype.kind not in "fiu":
            raise ValueError(
                f"hvp must return a 1-D NumPy array of length dim={dim} (H v), got {describe(hv)} for probe {i}"
            )
        samples[i] = float(v @ hv.astype(np.float64))  # v^T H v
    if not np.isfinite(samples).all():
        raise ValueError("hvp returned non-finite values (NaN/inf): v^T H v is not finite")
    mean = float(samples.mean())
    return (mean, samples) if return_samples else mean


def linear_layer_hessian(x: np.ndarray) -> np.ndarray:
    """Hessian of a linear layer's squared output error with respect to one output row: ``2 X^T X / n``.

    For ``y = x @ w.T`` and the loss ``L(w) = ||X w_r^T - t_r||^2 / n`` summed over output rows ``r``, each row
    ``w_r`` (``in`` weights) has the same Hessian ``H = 2 X^T X / n`` (``X``: ``x`` flattened to ``[n, in]``,
    ``n`` tokens), and the Hessian with respect to the whole ``[out, in]`` matrix is block diagonal,
    ``kron(I_out, H)``, with trace ``out * tr(H)``. A Hessian-vector product with it is
    ``v -> (v.reshape(out, in) @ H).ravel()``: the input of :func:`hutchinson_trace` in the teaching notebook.
    (GPTQ's ``gptq_hessian`` is the same matrix.) Returns ``[in, in]`` in float64 for float64 ``x``, float32
    otherwise.
    """
    check_array("x", x, ndim=tuple(range(2, 9)), dtype_kind="f", finite=True)
    if x.size == 0:
        raise ValueError(f"x must not be empty, got shape {x.shape}")
    dtype = np.float64 if x.dtype == np.float64 else np.float32
    X = x.reshape(-1, x.shape[-1]).astype(dtype, copy=False)  # [n tokens, in]
    n = X.shape[0]
    return (2.0 / n) * (X.T @ X)


# --------------------------------------------------------------------------- bit allocation (HAWQ-v3's ILP)
def _as_float_matrix(name: str, value: Any) -> np.ndarray:
    """``value`` (nested sequences, an array, or a CPU tensor) as a float64 NumPy array."""
    if hasattr(value, "detach"):  # a torch tensor: no torch import needed here
        value = value.detach().cpu().numpy()
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a sequence of real numbers (or of sequences), got {describe(value)}") from None
    return arr


def _check_choices(choices: Any) -> tuple[int, ...]:
    if not isinstance(choices, (tuple, list)) or len(choices) == 0:
        raise TypeError(f"choices must be a non-empty tuple of bit widths, got {describe(choices)}")
    out = tuple(check_int(f"choices[{c}]", b, min_value=1) for c, b in enumerate(choices))
    if len(set(out)) != len(out):
        raise ValueError(f"choices must hold distinct bit widths, got {out}")
    return out


def _check_allocation_args(sensitivity: Any, n_params: Any, budget_bits: Any, choices: Any) -> tuple:
    choices = _check_choices(choices)
    sens = _as_float_matrix("sensitivity", sensitivity)
    if sens.ndim != 2 or sens.shape[0] == 0 or sens.shape[1] != len(choices):
        raise ValueError(
            f"sensitivity must be [n_layers][len(choices)] = [L][{len(choices)}] with L >= 1, got shape {sens.shape}"
        )
    if not np.isfinite(sens).all():
        raise ValueError("sensitivity must contain only finite values (no NaN/inf)")
    if hasattr(n_params, "tolist"):
        n_params = n_params.tolist()
    if not isinstance(n_params, (list, tuple)) or len(n_params) != sens.shape[0]:
        raise ValueError(
            f"n_params must be a sequence of {sens.shape[0]} ints (one per layer of sensitivity), "
            f"got {describe(n_params)}"
        )
    n_params = [check_int(f"n_params[{i}]", n, min_value=1) for i, n in enumerate(n_params)]
    if isinstance(budget_bits, (bool, np.bool_)) or not isinstance(budget_bits, numbers.Real):
        raise TypeError(f"budget_bits must be a real number (total bits of all weights), got {describe(budget_bits)}")
    if not math.isfinite(budget_bits) or budget_bits <= 0:
        raise ValueError(f"budget_bits must be finite and > 0, got {budget_bits}")
    smallest = min(choices) * sum(n_params)
    if smallest > budget_bits:
        raise ValueError(
            f"budget_bits={budget_bits} is infeasible: even every layer at the smallest choice ({min(choices)} bits) "
            f"needs {smallest} bits"
        )
    return sens, n_params, budget_bits, choices


def _greedy_allocation(sens: np.ndarray, n_params: list[int], budget: float, choices: tuple[int, ...]) -> list[int]:
    """Start every layer at its cheapest bit width, then repeatedly take the upgrade (layer, wider choice)
    with the largest sensitivity decrease per extra bit that still fits the budget. Not guaranteed optimal."""
    cheapest = int(np.argmin(choices))
    pick = [cheapest] * len(n_params)
    cost = sum(n * choices[cheapest] for n in n_params)
    while True:
        best, best_ratio = None, 0.0
        for i, n in enumerate(n_params):
            for c, b in enumerate(choices):
                extra = n * (b - choices[pick[i]])
                gain = sens[i, pick[i]] - sens[i, c]
                if extra > 0 and gain > 0 and cost + extra <= budget and gain / extra > best_ratio:
                    best, best_ratio = (i, c, extra), gain / extra
        if best is None:
            return [choices[c] for c in pick]
        i, c, extra = best
        pick[i], cost = c, cost + extra


def allocate_bits(
    sensitivity: Sequence[Sequence[float]],
    n_params: Sequence[int],
    budget_bits: float,
    choices: Sequence[int] = (2, 3, 4, 8),
) -> list[int]:
    """HAWQ-style mixed precision: one bit width per layer minimising the total sensitivity under a size budget.

    ``sensitivity[i][c]`` is the cost of storing layer ``i`` with ``choices[c]`` bits (typically
    :func:`hawq_sensitivity`); ``n_params[i]`` its number of weights. Solves the integer program of HAWQ-v3::

        minimise  sum_i sensitivity[i][c_i]   subject to   sum_i n_params[i] * choices[c_i] <= budget_bits

    and returns ``[choices[c_0], choices[c_1], ...]`` (bit widths, not indices). Raises ``ValueError`` when
    even every layer at the smallest choice does not fit.

    Method: an exact dynamic programme over partial allocations (layers ``0..i``). A partial allocation that
    costs at least as many bits as another one *and* has at least its sensitivity can never become better,
    since the remaining layers add the same amounts to both; so after each layer only the Pareto front
    (strictly cheaper or strictly less sensitive) is kept, and partial allocations that cannot fit even with
    the remaining layers at their smallest choice are dropped. The result is the optimum (ties: the cheapest
    optimal allocation). The front is small in practice (at most the number of distinct bit totals); if it
    ever exceeds 65536 entries, the function falls back to a greedy (every layer at the smallest choice, then
    repeatedly the upgrade with the best sensitivity decrease per extra bit that fits), which is fast but not
    guaranteed optimal. The torch module exports the same function.
    """
    sens, n_params, budget, choices = _check_allocation_args(sensitivity, n_params, budget_bits, choices)
    n_layers = len(n_params)
    # cheapest possible cost of layers i.. (used to drop partial allocations that cannot be completed)
    rest = [0] * (n_layers + 1)
    for i in range(n_layers - 1, -1, -1):
        rest[i] = rest[i + 1] + n_params[i] * min(choices)

    front = [(0, 0.0, ())]  # (bits used, sensitivity so far, choice index per layer so far)
    for i in range(n_layers):
        candidates = []
        for cost, loss, picks in front:
            for c, b in enumerate(choices):
                new_cost = cost + n_params[i] * b
                if new_cost + rest[i + 1] <= budget:
                    candidates.append((new_cost, loss + float(sens[i, c]), picks + (c,)))
        candidates.sort(key=lambda s: (s[0], s[1]))  # by cost, then sensitivity
        front, best_loss = [], math.inf
        for state in candidates:  # keep a state only if it beats every cheaper one
            if state[1] < best_loss:
                front.append(state)
                best_loss = state[1]
        if len(front) > _MAX_STATES:
            return _greedy_allocation(sens, n_params, budget, choices)
    # the front is sorted by increasing cost and strictly decreasing sensitivity: the last entry is optimal
    return [choices[c] for c in front[-1][2]]


def _brute_force_allocation(sensitivity: Any, n_params: Any, budget_bits: float, choices: Sequence[int]) -> list[int]:
    """Every combination (for tests and small notebooks): the optimum of :func:`allocate_bits`' program."""
    sens, n_params, budget, choices = _check_allocation_args(sensitivity, n_params, budget_bits, choices)
    best, best_key = None, (math.inf, math.inf)
    for picks in itertools.product(range(len(choices)), repeat=len(n_params)):
        cost = sum(n * choices[c] for n, c in zip(n_params, picks))
        if cost <= budget:
            key = (sum(float(sens[i, c]) for i, c in enumerate(picks)), cost)
            if key < best_key:
                best, best_key = picks, key
    return [choices[c] for c in best]


# --------------------------------------------------------------------------- sensitivity (HAWQ-v2/v3)
def _check_traces_weights(traces: Any, weights: Any, allow_torch: bool) -> tuple[list[float], list[Any]]:
    if isinstance(traces, dict):
        raise TypeError("traces must be a sequence in the order of weights, got a dict: pass list(traces.values())")
    if hasattr(traces, "tolist"):
        traces = traces.tolist()
    if not isinstance(traces, (list, tuple)) or len(traces) == 0:
        raise TypeError(f"traces must be a non-empty sequence of floats (one per layer), got {describe(traces)}")
    out = []
    for i, t in enumerate(traces):
        if isinstance(t, (bool, np.bool_)) or not isinstance(t, numbers.Real) or not math.isfinite(t):
            raise ValueError(f"traces[{i}] must be a finite real number, got {describe(t)}")
        out.append(float(t))
    if not isinstance(weights, (list, tuple)) or len(weights) != len(out):
        raise ValueError(
            f"weights must be a list of {len(out)} [out, in] matrices (one per trace), got {describe(weights)}"
        )
    for i, w in enumerate(weights):
        check_array(f"weights[{i}]", w, ndim=2, dtype_kind="f", allow_torch=allow_torch)
    return out, list(weights)


def hawq_sensitivity(
    traces: Sequence[float],
    weights: Sequence[np.ndarray],
    choices: Sequence[int] = (2, 3, 4, 8),
    group_size: int | None = None,
) -> list[list[float]]:
    """HAWQ-v2/v3 sensitivity of every layer at every bit width: ``tr(H_i) / n_i * ||Q_b(W_i) - W_i||_F^2``.

    ``traces[i]`` is the Hessian trace of layer ``i`` (:func:`hutchinson_trace`, or ``layer_traces`` in
    torch), ``weights[i]`` its ``[out, in]`` matrix with ``n_i = out * in`` entries, and ``Q_b`` the
    round-to-nearest quantizer ``rtn_quantize_weight(w, bits=b, group_size=group_size)`` (affine, per
    output row or per group of ``group_size`` input features). Returns ``sens[i][c]`` as plain floats, ready
    for :func:`allocate_bits`. (``tr(H) / n`` is the Hessian's mean eigenvalue: the second-order loss increase
    of a perturbation spread evenly over the eigen-directions is ``1/2 * tr(H)/n * ||dW||^2``.) A negative
    trace (estimation noise, or a layer away from a minimum) gives negative sensitivities, which the
    allocation reads as "more bits hurt": clamp such traces at 0 first to treat the layer as insensitive.
    """
    traces, weights = _check_traces_weights(traces, weights, allow_torch=False)
    choices = _check_choices(choices)
    sens = []
    for t, w in zip(traces, weights):
        w64 = w.astype(np.float64)
        row = []
        for b in choices:
            err = rtn_quantize_weight(w, bits=b, group_size=group_size).astype(np.float64) - w64
            row.append(t / w.size * float(np.sum(err * err)))
        sens.append(row)
    return sens


# --------------------------------------------------------------------------- the straight-through estimator
def ste_grad(x: np.ndarray, grad_out: np.ndarray, qparams: QParams) -> np.ndarray:
    """Clipped straight-through gradient of ``fake_quantize`` with fixed ``qparams``: ``grad_out * mask``.

    The forward is ``x_hat = (clip(round(x / scale) + zero_point, qmin, qmax) - zero_point) * scale``. The STE
    treats ``round`` as the identity and ``scale``, ``zero_point`` as constants, so the only non-trivial factor
    is the clip's derivative: 1 where ``x`` lands inside the integer range, i.e. where
    ``qmin <= round(x / scale) + zero_point <= qmax`` (``x`` within ``[(qmin - zp) * scale, (qmax - zp) * scale]``
    up to half a step of rounding at each end: exactly the values the clip leaves untouched), and 0 where the
    value saturates. ``qparams`` (from ``compute_qparams``) must fit ``x``'s shape; ``grad_out`` has the shape
    of ``x``. Returns an array of ``grad_out``'s dtype.
    """
    x = _check_x(x)
    check_array("grad_out", grad_out, dtype_kind="f")
    if grad_out.shape != x.shape:
        raise ValueError(f"grad_out must have the shape of x {x.shape}, got {grad_out.shape}")
    qparams = _check_qparams_numpy(qparams)
    _check_matches("x", x.shape, qparams)
    scale, zero_point = expand_qparams(qparams, x.shape)
    unclipped = np.round(x.astype(scale.dtype, copy=False) / scale) + zero_point  # the integer before the clip
    inside = (unclipped >= qparams.qmin) & (unclipped <= qparams.qmax)
    return np.where(inside, grad_out, np.zeros((), dtype=grad_out.dtype))
