"""GPTQ and weight-only storage in NumPy, written to be read (chapter 2, section 02.5 and the decode path).

**Round to nearest (RTN)** quantizes every weight on its own: :func:`rtn_quantize_weight` fake-quantizes a
``[out, in]`` weight per output row or per group of input features. It minimises ``||W - W_hat||`` weight by
weight, but what matters is the layer's *output* on real inputs, ``||X W^T - X W_hat^T||``.

**The layer-wise problem.** Given calibration inputs ``X`` (``n`` tokens, ``[n, in]``), find quantized
``W_hat`` minimising ``||X W^T - X W_hat^T||_F^2``. Rows of ``W`` do not interact, and for one row ``w`` the
loss is the quadratic form ``(w - w_hat) H (w - w_hat)^T / 2`` with the Hessian ``H = 2 X^T X / n``
(:func:`gptq_hessian`). The ``1/n`` changes no code: the damping is relative to ``H``
(``lambda = damp * mean(diag H)``), so ``c H`` damps to ``c (H + lambda I)``, the Cholesky factor of its
inverse is ``U / sqrt(c)``, and every update ``(w_j - q_j) / U_jj * U_j,:`` is unchanged; only the loss scales.

**OBS / OBQ** (Hassibi and Stork 1993, "Optimal Brain Surgeon"; Frantar and Alistarh 2022, "Optimal Brain
Compression"): quantize one weight ``w_j`` at a time and let the not-yet-quantized ones absorb its error. If
``w_j`` moves to ``quant(w_j)``, the optimal update of the remaining weights ``F`` is

    delta_F = - (w_j - quant(w_j)) / [H_F^-1]_jj * (H_F^-1)_{j, :}                   (GPTQ paper, eq. 2)

after which ``j`` leaves ``F`` and ``H_F^-1`` loses row and column ``j`` (one step of Gaussian elimination, eq. 3).
OBQ picks the weight with the smallest error next, separately for every row: ``O(in^3)`` per row.

**GPTQ** (Frantar, Ashkboos, Hoefler and Alistarh 2023, "GPTQ: Accurate Post-Training Quantization for
Generative Pre-trained Transformers", ICLR; Algorithm 1) makes this practical for billions of weights with
three changes:

1. *Arbitrary order.* Quantize the columns in the same fixed order (left to right) for every row. Then all
   rows share one sequence of ``H_F^-1`` matrices, computed once, and each step updates all rows at once
   (a rank-1 update of the ``[out, in]`` matrix). The paper finds the greedy order barely helps on large
   models; ``act_order=True`` is the reference implementation's heuristic (columns by decreasing ``H_jj``,
   i.e. the inputs with the largest activations first).
2. *Lazy batch updates.* A column's update only has to reach the columns still to be quantized when they are
   quantized. Columns are processed in blocks of ``B = block_size``: inside a block the updates are applied
   eagerly (small rank-1 updates), the rest of the matrix receives the whole block's updates at once, as one
   matrix product ``W[:, (i+B):] -= E H^-1[i:(i+B), (i+B):]``. Same result, far better use of memory.
3. *Cholesky reformulation.* Row ``j`` of the successive ``H_F^-1`` (from its diagonal on) is row ``j`` of
   the upper Cholesky factor of ``H^-1`` times its diagonal entry, so ``Hinv = Cholesky(H^-1)^T`` (upper) is
   computed once, stably, and used everywhere in place of the eliminated inverses. ``H`` is dampened first,
   ``H += damp * mean(diag H) * I`` (``damp = 0.01``), so that the factorisations exist.

Inputs that were never active (``H_jj = 0``, "dead") carry no information: their weight is set to 0 and
``H_jj`` to 1. With ``group_size`` every row gets one ``(scale, zero_point)`` per group of ``group_size``
consecutive (quantization-order) columns, computed from the *current*, already updated weights when the
group's first column is reached, as in the reference implementation (``IST-DASLab/gptq``, ``fasterquant``).
Two details differ from that code. When a group starts inside a block, the reference measures the group's
columns as they were at the start of the block; here every update from the earlier columns is applied first
(including the pending lazy update of columns past the block), so the result does not depend on
``block_size``; with ``group_size`` a multiple of ``block_size`` (e.g. both 128) groups start at block starts
and the two agree. Without groups, one ``(scale, zero_point)`` per row is measured once, at the start, after
dead inputs are zeroed (the reference measures before).

:mod:`._torch_gptq` computes the same result with one Cholesky factorisation instead of three (its docstring
shows the algebra).

**Weight-only storage for decode.** Generating one token multiplies a vector by every weight matrix: the time
is spent *reading weights*, so storing them in 4 or 8 bits and dequantizing on the fly cuts it by up to 8x or
4x. :func:`pack_int4` stores two signed 4-bit codes per byte (low nibble = even index, ``code + 8``);
:func:`quantize_weight_int4` / :func:`w4a16_linear` (symmetric, one scale per row and group of
``group_size`` inputs) and :func:`quantize_weight_int8` / :func:`w8a16_linear` (one scale per output
channel, applied after the matmul) are the "W4A16" / "W8A16" schemes: low-bit weights, 16-bit activations.

The grids are those of :mod:`.reference` (:func:`~.reference.qrange`: symmetric = restricted signed range
``±(2^(b-1) - 1)``, affine = ``[0, 2^b - 1]``), and so is the min/max calibration
(:func:`~.reference.compute_qparams`). Arithmetic runs in float64 for float64 input and float32 otherwise.
The fast twin, same names and signatures, is :mod:`._torch_gptq`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from effx_lab._validate import check_array, check_bool, check_float, check_int, describe

from ._np_uniform import QParams, compute_qparams, dequantize, fake_quantize, quantize

__all__ = [
    "GPTQResult",
    "gptq_hessian",
    "gptq_quantize",
    "layer_output_error",
    "pack_int4",
    "quantize_weight_int4",
    "quantize_weight_int8",
    "rtn_quantize_weight",
    "unpack_int4",
    "w4a16_linear",
    "w8a16_linear",
]


# --------------------------------------------------------------------------- result container
@dataclass(frozen=True, eq=False)
class GPTQResult:
    """What :func:`gptq_quantize` returns (NumPy arrays here, torch tensors from :mod:`._torch_gptq`).

    * ``weight``: the dequantized weight, shape and dtype of the input ``w``, columns in the original order.
    * ``q``: the integer codes (int32), same ``[out, in]`` layout and column order as ``w``.
    * ``scale`` (float) and ``zero_point`` (int32): ``[out, n_groups]``, ``n_groups = in // group_size``
      (1 without groups). Group ``g`` covers the columns quantized in positions ``g * group_size`` to
      ``(g + 1) * group_size - 1``: the columns ``perm[g * group_size:(g + 1) * group_size]`` with act-order,
      plain consecutive columns without. So ``weight[:, c] = (q[:, c] - zero_point[:, g]) * scale[:, g]`` with
      ``g = position of c // group_size``.
    * ``perm``: ``None``, or (``act_order=True``) the column order used (int64, ``perm[k]`` = the original
      column quantized k-th).
    * ``loss``: GPTQ's ``sum_j ||W[:, j] - Q[:, j]||^2 / [H^-1]_jj^2 / 2`` (the paper's ``Losses``, summed),
      with ``W[:, j]`` the updated column when it was quantized: the increase of the layer's loss
      ``sum_rows (w - w_hat) H (w - w_hat)^T / 2`` caused by quantization, with the damped ``H``.
    * ``bits``, ``group_size`` (``None`` without groups), ``symmetric``: the grid.
    """

    weight: Any
    q: Any
    scale: Any
    zero_point: Any
    perm: Any
    loss: float
    bits: int
    group_size: int | None
    symmetric: bool


# --------------------------------------------------------------------------- validation (shared with torch)
def _is_torch(value: Any) -> bool:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return False
    return isinstance(value, torch.Tensor)


def _check_kind(name: str, value: Any, torch_mode: bool) -> None:
    """NumPy functions take NumPy arrays, torch functions take tensors: never a silent conversion."""
    if torch_mode and not _is_torch(value):
        raise TypeError(f"{name} must be a torch tensor (torch functions take tensors), got {describe(value)}")
    if not torch_mode and not isinstance(value, np.ndarray):
        raise TypeError(f"{name} must be a NumPy array, got {describe(value)}")


def _check_float_array(name: str, value: Any, torch_mode: bool, ndim: Any = None, finite: bool = True) -> Any:
    """A non-empty float array (tensor in torch mode) of the allowed ranks; finite unless ``finite=False``.

    ``finite=False`` is for the operands of the weight-only matmuls (activations, scales, bias): they are not
    checked per call (in torch that check reads a value back from the device: a sync on every decode step),
    and a NaN among them propagates to the output (docs/ARCHITECTURE.md, "Non-finite values")."""
    _check_kind(name, value, torch_mode)
    check_array(name, value, ndim=ndim, dtype_kind="f", allow_torch=torch_mode)
    if any(n == 0 for n in value.shape):
        raise ValueError(f"{name} must not be empty, got shape {tuple(value.shape)}")
    if not finite:
        return value
    if torch_mode:  # one aminmax pass (NaN propagates, inf shows): far cheaper than isfinite().all() on CPU
        ends = value.reshape(-1).aminmax()
        if not all(bool(e.isfinite()) for e in ends):
            raise ValueError(f"{name} must contain only finite values (no NaN/inf)")
    else:
        check_array(name, value, finite=True)
    return value


def _check_weight(name: str, w: Any, torch_mode: bool) -> Any:
    """A weight ``[out, in]``: 2-D, finite, float."""
    return _check_float_array(name, w, torch_mode, ndim=2)


def _check_x_for(name: str, x: Any, in_features: int, torch_mode: bool, finite: bool = True) -> Any:
    """Inputs ``[..., in]`` (any leading dims) whose last dimension matches the weight; finite unless
    ``finite=False`` (activations of a weight-only matmul: a NaN propagates to its output row)."""
    _check_float_array(name, x, torch_mode, ndim=tuple(range(1, 9)), finite=finite)
    if x.shape[-1] != in_features:
        raise ValueError(
            f"{name} must have last dimension {in_features} (the weight's in_features), got shape {tuple(x.shape)}"
        )
    return x


def _check_bias(b: Any, out_features: int, torch_mode: bool) -> Any:
    """The bias of a weight-only matmul: shape and dtype only (a NaN propagates to its output column)."""
    if b is None:
        return None
    _check_float_array("b", b, torch_mode, ndim=1, finite=False)
    if b.shape[0] != out_features:
        raise ValueError(f"b must have shape ({out_features},) (the weight's out_features), got {tuple(b.shape)}")
    return b


def _check_group_size(group_size: Any, in_features: int, allow_none: bool) -> int | None:
    if group_size is None and allow_none:
        return None
    group_size = check_int("group_size", group_size, min_value=1)
    if in_features % group_size:
        raise ValueError(f"group_size={group_size} must divide the number of input features K={in_features}")
    return group_size


def _check_gptq_args(
    w: Any,
    h: Any,
    bits: Any,
    group_size: Any,
    symmetric: Any,
    block_size: Any,
    damp: Any,
    act_order: Any,
    torch_mode: bool,
) -> tuple[int, int | None, bool, int, float, bool]:
    """Everything :func:`gptq_quantize` checks, in both backends; returns the normalised scalars."""
    _check_weight("w", w, torch_mode)
    n_in = w.shape[1]
    _check_float_array("h", h, torch_mode, ndim=2)
    if tuple(h.shape) != (n_in, n_in):
        raise ValueError(f"h must have shape ({n_in}, {n_in}) (in_features of w), got {tuple(h.shape)}")
    if torch_mode and h.device != w.device:
        raise ValueError(f"h must be on the device of w ({w.device}), got {h.device}")
    bits = check_int("bits", bits, min_value=2, max_value=8)
    symmetric = check_bool("symmetric", symmetric)
    group_size = _check_group_size(group_size, n_in, allow_none=True)
    block_size = check_int("block_size", block_size, min_value=1)
    damp = check_float("damp", damp, min_value=0.0)
    act_order = check_bool("act_order", act_order)
    # h must be symmetric with a non-negative diagonal (X^T X is); tolerance for float32 accumulation
    diag = h.diagonal()
    if bool((diag < 0).any()):
        raise ValueError("h must have a non-negative diagonal (it is 2 X^T X / n), got a negative entry")
    diff = h - (h.T.contiguous() if torch_mode else h.T)  # a contiguous transpose first is faster in torch
    asym = float(max(-diff.min(), diff.max()))  # NumPy and torch alike
    size = float(max(-h.min(), h.max()))
    if asym > 1e-4 * size:
        raise ValueError(f"h must be symmetric (it is 2 X^T X / n), got max |h - h^T| = {asym:.3g}")
    return bits, group_size, symmetric, block_size, damp, act_order


def _compute_dtype(dtype: np.dtype) -> type:
    """float64 stays float64; every other float (float16, float32) is computed in float32."""
    return np.float64 if dtype == np.float64 else np.float32


NOT_PD = (
    "h is not positive definite after damping (damp={damp}): {detail}. This happens when an input feature of "
    "the calibration data is (numerically) a linear combination of others, e.g. two identical input columns, "
    "which makes X^T X singular; pass damp > 0 (the default 0.01 adds 1% of the mean diagonal of h to it) or "
    "use more, and more varied, calibration tokens"
)


def _pd_failure(failed: bool, min_ratio: float, n: int, eps: float) -> str | None:
    """The positive-definiteness rule shared by both backends, or ``None`` when ``H`` passes.

    Both factor the damped ``H = R R^T`` with ``R`` upper triangular (a Cholesky factorisation run from the
    last row up, :mod:`._torch_gptq`'s factor) and look at its pivots: ``R_jj^2 / H_jj`` is the fraction of
    input ``j`` not explained by the inputs after it. Exactly dependent inputs make it 0 in exact arithmetic;
    in floating point the factorisation then either fails (``failed``) or leaves a pivot at rounding level,
    a few ``eps`` (whether it fails is rounding luck, and differs between LAPACK builds). So both count as
    "not positive definite": ``failed``, or ``min_j R_jj^2 / H_jj <= 32 * eps`` of the compute dtype.

    The tolerance does not grow with ``n``: a legitimately damped ``H`` of a real layer can have a pivot ratio
    far below ``n * eps`` (MiniLM's 1536-wide FC2 input in float32, damp 0.01: 9.8e-5, with n * eps = 1.8e-4),
    while exactly dependent inputs leave a ratio of a few eps (at most about 10 eps measured).
    """
    if failed:
        return "its Cholesky factorisation failed"
    del n  # kept in the signature: both faces pass it, and a future rule may need it
    tol = 32 * eps
    if not min_ratio > tol:  # NaN included
        return (
            f"a Cholesky pivot is at rounding level (min_j R_jj^2 / H_jj = {min_ratio:.3g} <= {tol:.3g} = "
            f"32 * eps)"
        )
    return None


def _check_positive_definite(h: np.ndarray, damp: float) -> None:
    """Raise ``ValueError`` when the damped ``h`` fails :func:`_pd_failure`'s rule (the same rule as torch)."""
    try:
        r_flipped = np.linalg.cholesky(h[::-1, ::-1])  # = J R J: its diagonal is R's, reversed
        failed, ratio = False, float(np.min(np.diag(r_flipped)[::-1] ** 2 / np.diag(h)))
    except np.linalg.LinAlgError:
        failed, ratio = True, float("nan")
    reason = _pd_failure(failed, ratio, h.shape[0], float(np.finfo(h.dtype).eps))
    if reason is not None:
        raise ValueError(NOT_PD.format(damp=damp, detail=reason))


# --------------------------------------------------------------------------- baseline and Hessian
def rtn_quantize_weight(
    w: np.ndarray, bits: int = 4, group_size: int | None = None, symmetric: bool = False
) -> np.ndarray:
    """Round-to-nearest baseline: fake-quantize ``w`` ``[out, in]`` with min/max calibration, one
    ``(scale, zero_point)`` per output row (``group_size=None``) or per row and group of ``group_size``
    consecutive input features. Returns ``w_hat`` with the shape and dtype of ``w``."""
    _check_weight("w", w, torch_mode=False)
    group_size = _check_group_size(group_size, w.shape[1], allow_none=True)
    if group_size is None:
        return fake_quantize(w, bits, symmetric, granularity="channel", axis=0)
    return fake_quantize(w, bits, symmetric, granularity="group", axis=1, group_size=group_size)


def gptq_hessian(x: np.ndarray) -> np.ndarray:
    """``H = 2 X^T X / n`` (``[in, in]``) of calibration inputs ``x`` ``[..., in]`` (``n`` = number of tokens,
    the product of the leading dims): the Hessian of the layer's squared output error w.r.t. each row of the
    weight, up to the ``1/n``. float64 for float64 input, float32 otherwise."""
    _check_float_array("x", x, torch_mode=False, ndim=tuple(range(1, 9)))
    xs = x.reshape(-1, x.shape[-1]).astype(_compute_dtype(x.dtype), copy=False)
    return (2.0 / xs.shape[0]) * (xs.T @ xs)


def _upper_cholesky_of_inverse(h: np.ndarray, damp: float) -> np.ndarray:
    """``Cholesky(H^-1)^T``: the upper triangular ``U`` with ``H^-1 = U^T U`` (paper, Algorithm 1, line 3).

    ``H^-1`` itself comes from the Cholesky factor of ``H`` (``H = L L^T`` so ``H^-1 = L^-T L^-1``), the
    stable way (what ``torch.cholesky_inverse`` does)."""
    try:
        lower = np.linalg.cholesky(h)
        lower_inv = np.linalg.inv(lower)
        h_inv = lower_inv.T @ lower_inv
        return np.linalg.cholesky(h_inv).T
    except np.linalg.LinAlgError:  # h passed _check_positive_definite: only a (very) ill-conditioned h gets here
        raise ValueError(NOT_PD.format(damp=damp, detail="factorising its inverse failed")) from None


# --------------------------------------------------------------------------- GPTQ
def gptq_quantize(
    w: np.ndarray,
    h: np.ndarray,
    bits: int = 4,
    group_size: int | None = None,
    symmetric: bool = False,
    block_size: int = 128,
    damp: float = 0.01,
    act_order: bool = False,
) -> GPTQResult:
    """Quantize ``w`` ``[out, in]`` with GPTQ (Frantar et al. 2023, Algorithm 1), given the Hessian
    ``h = gptq_hessian(x)`` ``[in, in]`` of calibration inputs. See the module docstring for the method.

    ``bits`` in 2..8 on the grid of :func:`~.reference.qrange` (``symmetric=False``: affine ``[0, 2^b - 1]``
    with a zero point, GPTQ's default); ``group_size`` (must divide ``in``) for one grid per row and group of
    columns; ``block_size`` columns per lazy batch (changes speed and float rounding only); ``damp`` the
    relative dampening of ``H``; ``act_order`` quantizes the columns by decreasing ``H_jj``. Returns a
    :class:`GPTQResult`.
    """
    bits, group_size, symmetric, block_size, damp, act_order = _check_gptq_args(
        w, h, bits, group_size, symmetric, block_size, damp, act_order, torch_mode=False
    )
    n_rows, n_cols = w.shape
    dtype = _compute_dtype(w.dtype)
    W = w.astype(dtype)  # a copy: updated in place below
    H = h.astype(dtype)

    # Dead inputs: H_jj = 0 means column j never saw a non-zero input; its weight is irrelevant, set it to 0
    # (it then quantizes exactly) and put a 1 on the diagonal so that H stays invertible.
    dead = np.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0

    # act-order: quantize the columns with the largest H_jj (largest inputs) first; undone at the end.
    perm = None
    if act_order:
        perm = np.argsort(-np.diag(H), kind="stable")
        W = W[:, perm]
        H = H[np.ix_(perm, perm)]

    # Dampening: H += lambda I with lambda = damp * mean(diag H).
    H[np.diag_indices(n_cols)] += damp * np.mean(np.diag(H))

    # Algorithm 1, line 3: H^-1 <- Cholesky(H^-1)^T, upper triangular. First the check that H is positive
    # definite (the rule both backends share, so that they accept and refuse the same matrices).
    _check_positive_definite(H, damp)
    Hinv = _upper_cholesky_of_inverse(H, damp)

    # One grid per row and group; without groups a single group spans all the columns.
    gs = n_cols if group_size is None else group_size
    n_groups = n_cols // gs
    scale = np.empty((n_rows, n_groups), dtype=dtype)
    zero_point = np.empty((n_rows, n_groups), dtype=np.int32)
    Q = np.zeros((n_rows, n_cols), dtype=np.int32)  # Algorithm 1, line 1: Q <- 0
    loss = 0.0

    for i in range(0, n_cols, block_size):  # line 4: for i = 0, B, 2B, ...
        end = min(i + block_size, n_cols)
        E = np.zeros((n_rows, end - i), dtype=dtype)  # line 2: E <- 0 (the block's scaled errors)
        for j in range(i, end):  # line 5: for j = i, ..., i + B - 1
            if j % gs == 0:
                # A new group starts: its grid from the current weights of its columns. Columns past this
                # block have not yet received the lazy update of columns i..j-1: apply it to a copy first.
                group = W[:, j : j + gs].copy()
                if j > i and j + gs > end:
                    group[:, end - j :] -= E[:, : j - i] @ Hinv[i:j, end : j + gs]
                qp = compute_qparams(group, bits, symmetric, granularity="channel", axis=0)  # one per row
                scale[:, j // gs] = qp.scale[:, 0]
                zero_point[:, j // gs] = qp.zero_point[:, 0]
            codes = quantize(W[:, j : j + 1], qp)  # line 6: Q[:, j] <- quant(W[:, j])
            Q[:, j] = codes[:, 0]
            w_hat = dequantize(codes, qp)[:, 0]
            err = (W[:, j] - w_hat) / Hinv[j, j]  # line 7: E[:, j-i] <- (W[:, j] - Q[:, j]) / [H^-1]_jj
            E[:, j - i] = err
            loss += float(np.sum(err * err)) / 2  # the paper's Losses[:, j] = (w - q)^2 / d^2 / 2
            # line 8: W[:, j:(i+B)] <- W[:, j:(i+B)] - E[:, j-i] H^-1[j, j:(i+B)]   (eq. 2, inside the
            # block; column j itself becomes its quantized value)
            W[:, j:end] -= np.outer(err, Hinv[j, j:end])
        # line 10: W[:, (i+B):] <- W[:, (i+B):] - E H^-1[i:(i+B), (i+B):]   (the lazy batch update)
        W[:, end:] -= E @ Hinv[i:end, end:]

    # The integers dequantize to `weight`, group by group (groups follow the quantization order).
    if group_size is None:
        grid = QParams(scale, zero_point, bits, symmetric, "channel", 0)
    else:
        grid = QParams(scale, zero_point, bits, symmetric, "group", 1, group_size)
    weight = dequantize(Q, grid)
    if perm is not None:  # back to the original column order
        inverse = np.argsort(perm)
        Q, weight = Q[:, inverse], weight[:, inverse]
    return GPTQResult(
        weight=weight.astype(w.dtype),
        q=Q,
        scale=scale,
        zero_point=zero_point,
        perm=perm,
        loss=loss,
        bits=bits,
        group_size=group_size,
        symmetric=symmetric,
    )


def layer_output_error(w: np.ndarray, w_hat: np.ndarray, x: np.ndarray) -> float:
    """Relative output error ``||x w^T - x w_hat^T||_F^2 / ||x w^T||_F^2`` of a quantized weight on inputs
    ``x`` ``[..., in]`` (float64; 0 when both are 0, ``inf`` when only the output is 0)."""
    _check_weight("w", w, torch_mode=False)
    _check_weight("w_hat", w_hat, torch_mode=False)
    if w_hat.shape != w.shape:
        raise ValueError(f"w_hat must have the shape of w {w.shape}, got {w_hat.shape}")
    _check_x_for("x", x, w.shape[1], torch_mode=False)
    xs = x.reshape(-1, x.shape[-1]).astype(np.float64)
    w64 = w.astype(np.float64)
    num = float(np.sum((xs @ (w64 - w_hat.astype(np.float64)).T) ** 2))
    den = float(np.sum((xs @ w64.T) ** 2))
    if den == 0.0:
        return 0.0 if num == 0.0 else float("inf")
    return num / den


# --------------------------------------------------------------------------- int4 / int8 weight-only storage
def _check_codes(q: Any, torch_mode: bool) -> Any:
    _check_kind("q", q, torch_mode)
    check_array("q", q, ndim=tuple(range(1, 9)), allow_torch=torch_mode)
    is_int = (q.dtype.kind in "iu") if not torch_mode else not (q.dtype.is_floating_point or q.dtype.is_complex)
    if not is_int or str(q.dtype).endswith("bool"):
        raise TypeError(f"q must have an integer dtype (int8 codes in [-8, 7]), got {q.dtype}")
    k = q.shape[-1]
    if k == 0 or k % 2:
        raise ValueError(f"q must have an even, non-zero last dimension K (two codes per byte), got {tuple(q.shape)}")
    lo, hi = int(q.min()), int(q.max())
    if lo < -8 or hi > 7:
        raise ValueError(f"q must lie in [-8, 7] (signed 4-bit), got values in [{lo}, {hi}]")
    return q


def _check_packed(packed: Any, torch_mode: bool, ndim: Any = None) -> Any:
    _check_kind("packed", packed, torch_mode)
    check_array("packed", packed, ndim=ndim if ndim is not None else tuple(range(1, 9)), allow_torch=torch_mode)
    if str(packed.dtype) not in ("uint8", "torch.uint8"):
        raise TypeError(f"packed must have dtype uint8 (two 4-bit codes per byte), got {packed.dtype}")
    if any(n == 0 for n in packed.shape):
        raise ValueError(f"packed must not be empty, got shape {tuple(packed.shape)}")
    return packed


def pack_int4(q: np.ndarray) -> np.ndarray:
    """Two signed 4-bit codes per byte: ``q`` (integers in ``[-8, 7]``, last dim ``K`` even) ->
    uint8 ``[..., K/2]`` with ``byte = (q[2i] + 8) | ((q[2i+1] + 8) << 4)`` (low nibble = even index)."""
    _check_codes(q, torch_mode=False)
    nibbles = (q.astype(np.int16) + 8).astype(np.uint8)  # 0..15, offset binary
    return nibbles[..., 0::2] | (nibbles[..., 1::2] << 4)


def unpack_int4(packed: np.ndarray) -> np.ndarray:
    """The inverse of :func:`pack_int4`: uint8 ``[..., K/2]`` -> int8 ``[..., K]`` in ``[-8, 7]``."""
    _check_packed(packed, torch_mode=False)
    low = (packed & 0x0F).astype(np.int8) - 8  # even indices
    high = (packed >> 4).astype(np.int8) - 8  # odd indices
    return np.stack([low, high], axis=-1).reshape(packed.shape[:-1] + (2 * packed.shape[-1],))


def quantize_weight_int4(w: np.ndarray, group_size: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int4 weights for decode: one scale per row and group of ``group_size`` input features
    (``scale = max|w| / 7``, codes in the restricted range ``[-7, 7]``), packed two per byte.

    ``w`` ``[N, K]`` with ``K`` even and divisible by ``group_size``. Returns ``(packed uint8 [N, K/2],
    scales [N, K/group_size])`` (float64 for float64 ``w``, float32 otherwise)."""
    _check_weight("w", w, torch_mode=False)
    if w.shape[1] % 2:
        raise ValueError(f"w must have an even number of input features K (two codes per byte), got {w.shape}")
    group_size = _check_group_size(group_size, w.shape[1], allow_none=False)
    qp = compute_qparams(w, 4, True, granularity="group", axis=1, group_size=group_size)
    return pack_int4(quantize(w, qp)), qp.scale


def _check_scales(scales: Any, shape: tuple[int, ...], torch_mode: bool) -> Any:
    """Scales given to a weight-only matmul: shape and dtype only. They were validated where they were made
    (:func:`quantize_weight_int4` / :func:`quantize_weight_int8` reject non-finite weights); a NaN put in
    later propagates to its output column."""
    _check_float_array("scales", scales, torch_mode, ndim=len(shape), finite=False)
    if tuple(scales.shape) != shape:
        raise ValueError(f"scales must have shape {shape}, got {tuple(scales.shape)}")
    return scales


def _check_w4a16_args(x: Any, packed: Any, scales: Any, group_size: Any, b: Any, torch_mode: bool) -> int:
    _check_packed(packed, torch_mode, ndim=2)
    n, k = packed.shape[0], 2 * packed.shape[1]
    group_size = _check_group_size(group_size, k, allow_none=False)
    _check_scales(scales, (n, k // group_size), torch_mode)
    _check_x_for("x", x, k, torch_mode, finite=False)
    _check_bias(b, n, torch_mode)
    return group_size


def w4a16_linear(
    x: np.ndarray, packed: np.ndarray, scales: np.ndarray, group_size: int, b: np.ndarray | None = None
) -> np.ndarray:
    """``y = x @ W^T + b`` with ``W`` stored as packed int4 (:func:`quantize_weight_int4`): unpack, multiply
    each group by its scale, matmul. ``x`` ``[..., K]``; returns ``[..., N]`` in x's dtype (float16 input is
    computed in float32). Values are not checked (a decode step calls this per layer): a NaN in a row of
    ``x`` gives a NaN output row, a NaN scale or bias a NaN output column."""
    group_size = _check_w4a16_args(x, packed, scales, group_size, b, torch_mode=False)
    dtype = _compute_dtype(x.dtype)
    n, k = packed.shape[0], 2 * packed.shape[1]
    codes = unpack_int4(packed).astype(dtype).reshape(n, k // group_size, group_size)
    weight = (codes * scales.astype(dtype)[:, :, None]).reshape(n, k)
    y = x.reshape(-1, k).astype(dtype) @ weight.T
    if b is not None:
        y = y + b.astype(dtype)
    return y.reshape(x.shape[:-1] + (n,)).astype(x.dtype)


def quantize_weight_int8(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 weights, one scale per output channel (row): ``scale = max|w_row| / 127``.
    Returns ``(q int8 [N, K], scales [N])`` (float64 for float64 ``w``, float32 otherwise)."""
    _check_weight("w", w, torch_mode=False)
    qp = compute_qparams(w, 8, True, granularity="channel", axis=0)
    return quantize(w, qp), qp.scale[:, 0]


def w8a16_linear(x: np.ndarray, q: np.ndarray, scales: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
    """``y = (x @ q^T) * scales + b``: int8 weights (:func:`quantize_weight_int8`), the per-channel scale
    applied *after* the matmul (it factors out of every dot product). Returns x's dtype (float16 input is
    computed in float32). Values are not checked, as in :func:`w4a16_linear`: NaN propagates."""
    _check_int8_weight(q, torch_mode=False)
    n, k = q.shape
    _check_scales(scales, (n,), torch_mode=False)
    _check_x_for("x", x, k, torch_mode=False, finite=False)
    _check_bias(b, n, torch_mode=False)
    dtype = _compute_dtype(x.dtype)
    y = (x.reshape(-1, k).astype(dtype) @ q.T.astype(dtype)) * scales.astype(dtype)
    if b is not None:
        y = y + b.astype(dtype)
    return y.reshape(x.shape[:-1] + (n,)).astype(x.dtype)


def _check_int8_weight(q: Any, torch_mode: bool) -> Any:
    _check_kind("q", q, torch_mode)
    check_array("q", q, ndim=2, allow_torch=torch_mode)
    if str(q.dtype) not in ("int8", "torch.int8"):
        raise TypeError(f"q must have dtype int8 (from quantize_weight_int8), got {q.dtype}")
    if any(n == 0 for n in q.shape):
        raise ValueError(f"q must not be empty, got shape {tuple(q.shape)}")
    return q
