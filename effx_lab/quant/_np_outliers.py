"""Outlier-aware quantization in NumPy, written to be read (chapter 2, sections 02.2, 02.3, 02.4, 02.6).

Transformer weights and activations are not nice bell curves: a few values are tens of times larger than the
rest, and a uniform grid stretched to cover them wastes almost all its levels on empty space (section 02.1:
``scale = max|x| / qmax``). Every method here is a different answer to "what do we do with the outliers?":

* **GOBO** (Zadeh et al. 2020, "GOBO: Quantizing Attention-Based NLP Models for Low Latency and Energy
  Efficient Inference", MICRO): *weights*. Fit one Gaussian to a layer's weights; the few weights farther than
  ``outlier_sigma`` standard deviations from the mean are kept exactly (value + position), the rest, a tidy
  bell curve, are replaced by the nearest of ``2**bits`` centroids found by 1-D k-means (Lloyd's algorithm).
  Non-uniform levels and no outliers stretching the grid: about 3 bits per weight for BERT-sized layers.
  (:class:`GoboWeight`, :func:`gobo_quantize`, :func:`gobo_dequantize`, :func:`gobo_bits_per_weight`.)
* **LLM.int8()** (Dettmers et al. 2022, "LLM.int8(): 8-bit Matrix Multiplication for Transformers at
  Scale", NeurIPS): *activations* of large models have a few feature *columns* with huge values in almost
  every token. Sec. 3.1, vector-wise quantization: one absmax scale per token (row of ``x``) and one per output
  channel (row of ``w``), an int8 x int8 -> int32 product and the epilogue ``acc * s_x[:, None] *
  s_w[None, :]`` (:func:`absmax_quantize`, :func:`int8_matmul`, :func:`vectorwise_linear`). Sec. 3.2,
  mixed-precision decomposition: the columns holding any ``|x| > threshold`` (6.0 in the paper) go through a
  float matmul, the other ~99.9% through the int8 path, and the two results are added
  (:func:`outlier_columns`, :func:`llm_int8_linear`). :func:`w8a8_linear` is the same arithmetic *simulated*
  in float (fake-quantize both operands, float matmul), with a choice of per-token or per-tensor activations.
* **PEG** (Bondarenko et al. 2021, "Understanding and Overcoming the Challenges of Efficient Transformer
  Quantization", EMNLP): per-embedding-group activation quantization. The ``D`` embedding dimensions are cut
  into ``n_groups`` groups with one (affine) scale each; a range-based permutation first sorts the dimensions
  by their calibration range, so the few outlier dimensions share one group and do not spoil the others
  (:func:`peg_permutation`, :func:`peg_fake_quantize`).
* **ZeroQuant** (Yao et al. 2022, "ZeroQuant: Efficient and Affordable Post-Training Quantization for
  Large-Scale Transformers", NeurIPS): group-wise symmetric weights (one scale per ``group_size`` input
  features of each output row) and token-wise dynamic symmetric activations (:func:`zeroquant_linear`).
  Its inference kernels fuse the token-wise quantization into the kernel that produces the activation:
  :func:`layernorm_quantize_rows` is that fused step written out (LayerNorm, then one int8 scale per token),
  the reference of ``effx_lab.quant.kernels.layernorm_quantize_rows``.
* **SmoothQuant** (Xiao et al. 2023, "SmoothQuant: Accurate and Efficient Post-Training Quantization for
  Large Language Models", ICML), Sec. 4: move the difficulty from activations to weights with an exact
  identity ``x w^T = (x / s) (w * s)^T``, one factor ``s_j = max|X_j|^alpha / max|W_j|^(1 - alpha)`` per input
  feature. The division is folded offline into the LayerNorm that produces ``x``; both operands are then easy
  to quantize to 8 bits (:func:`smooth_scales`, :func:`smooth_weight`, :func:`smooth_activation`,
  :func:`fold_smoothing`, :func:`smoothquant_linear`).

Conventions (shared with every chapter-2 module): a weight ``w`` is ``[out, in]`` (the ``nn.Linear`` layout),
an activation ``x`` is ``[..., in]`` with any leading dimensions (flattened to tokens internally),
``y = x @ w.T + b`` is ``[..., out]``. Arithmetic runs in float64 for float64 ``x`` and in float32 otherwise
(float16 inputs are upcast, and the result is cast back to ``x``'s dtype); ``w`` and ``b`` are cast to that
compute dtype. The layers (``*_linear``) are matmuls that quantize their activation on every call: a NaN or
inf in a token of ``x`` gives a NaN in every output of that token (its whole row, as a float matmul gives for a
NaN) and leaves the other tokens' outputs as they would be without it; ``w``, ``b`` and a calibrated
``act_absmax``, made once, must be finite (``ValueError`` naming the argument). The uniform quantizers are
those of :mod:`effx_lab.quant.reference` (:func:`compute_qparams`, :func:`quantize`, :func:`dequantize`,
:func:`fake_quantize`; symmetric = restricted range ``+-127``). The fast
twin, with the same names and signatures, is :mod:`effx_lab.quant._torch_outliers`; both are re-exported by the
public faces :mod:`effx_lab.quant.reference` and :mod:`effx_lab.quant.torch_ops`.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any

import numpy as np

from effx_lab._validate import (
    check_array,
    check_bool,
    check_choice,
    check_float,
    check_int,
    describe,
)

from ._np_uniform import MAX_NDIM, compute_qparams, dequantize, fake_quantize, quantize

__all__ = [
    "GoboWeight",
    "absmax_quantize",
    "fold_smoothing",
    "gobo_bits_per_weight",
    "gobo_dequantize",
    "gobo_quantize",
    "int8_matmul",
    "layernorm_quantize_rows",
    "llm_int8_linear",
    "outlier_columns",
    "peg_fake_quantize",
    "peg_permutation",
    "smooth_activation",
    "smooth_scales",
    "smooth_weight",
    "smoothquant_linear",
    "vectorwise_linear",
    "w8a8_linear",
    "zeroquant_linear",
]

ACT_GRANULARITIES = ("token", "tensor")
WEIGHT_GRANULARITIES = ("channel", "tensor")
SMOOTH_EPS = 1e-5  # SmoothQuant clamps both maxima to >= 1e-5 before the power
# int8_matmul accumulates in int32: |sum_k a_k b_k| <= K * 128 * 128 must stay below 2**31
INT8_MATMUL_MAX_K = (2**31 - 1) // (128 * 128)


# =========================================================================== validation (shared with torch)
def _check_float(
    name: str,
    value: Any,
    *,
    ndim: int | None = None,
    min_ndim: int = 1,
    allow_torch: bool = False,
    finite: bool = True,
) -> Any:
    """A non-empty float array (or tensor if ``allow_torch``) of rank ``ndim`` (or ``>= min_ndim``), finite
    unless ``finite=False`` (the values are then not read: no device sync for a tensor)."""
    ranks = (ndim,) if ndim is not None else tuple(range(min_ndim, MAX_NDIM + 1))
    check_array(name, value, ndim=ranks, dtype_kind="f", allow_torch=allow_torch)
    if math.prod(value.shape) == 0:
        raise ValueError(f"{name} must not be empty, got shape {tuple(value.shape)}")
    if finite:
        check_array(name, value, finite=True, allow_torch=allow_torch)
    return value


def _check_linear(x: Any, w: Any, b: Any, allow_torch: bool = False) -> None:
    """``x [..., in]``, ``w [out, in]``, ``b`` None or ``[out]``: float arrays of matching sizes; ``w`` and ``b``
    finite (made once), ``x``'s values unchecked (a new activation every call: a NaN/inf token gives a NaN
    output row, see :func:`_linear_inputs`)."""
    _check_float("x", x, allow_torch=allow_torch, finite=False)
    _check_float("w", w, ndim=2, allow_torch=allow_torch)
    if x.shape[-1] != w.shape[1]:
        raise ValueError(
            f"x's last dimension must equal w.shape[1] (w is [out, in]); got x of shape {tuple(x.shape)} and w of "
            f"shape {tuple(w.shape)}"
        )
    if b is not None:
        _check_float("b", b, ndim=1, allow_torch=allow_torch)
        if b.shape[0] != w.shape[0]:
            raise ValueError(f"b must have shape ({w.shape[0]},) (w.shape[0]), got {tuple(b.shape)}")


def _check_threshold(threshold: Any) -> float:
    """A real number >= 0; unlike ``check_float``, ``inf`` is allowed (it means "no outliers")."""
    if isinstance(threshold, (bool, np.bool_)) or not isinstance(threshold, numbers.Real):
        raise TypeError(f"threshold must be a real number >= 0 (inf allowed), got {describe(threshold)}")
    threshold = float(threshold)
    if math.isnan(threshold) or threshold < 0:
        raise ValueError(f"threshold must be a real number >= 0 (inf allowed), got {threshold}")
    return threshold


def _check_bits(name: str, bits: Any) -> int:
    """Bit width of a symmetric uniform grid (``qrange``): an int in 2..8."""
    return check_int(name, bits, min_value=2, max_value=8)


def _check_group_size(group_size: Any, n_in: int) -> int | None:
    if group_size is None:
        return None
    group_size = check_int("group_size", group_size, min_value=1)
    if n_in % group_size:
        raise ValueError(f"group_size={group_size} must divide the input dimension w.shape[1]={n_in}")
    return group_size


def _check_n_groups(n_groups: Any, d: int) -> int:
    n_groups = check_int("n_groups", n_groups, min_value=1)
    if d % n_groups:
        raise ValueError(f"n_groups={n_groups} must divide the embedding dimension D={d}")
    return n_groups


def _check_scales(s: Any, d: int, allow_torch: bool = False) -> Any:
    """Smoothing factors ``s``: a 1-D finite float array of length ``d``, every entry > 0."""
    _check_float("s", s, ndim=1, allow_torch=allow_torch)
    if s.shape[0] != d:
        raise ValueError(f"s must have shape ({d},), got {tuple(s.shape)}")
    if not bool((s > 0).all()):
        raise ValueError("s must be > 0 everywhere (smoothing factors divide the activations)")
    return s


def _check_act_absmax(act_absmax: Any, d: int, allow_torch: bool = False) -> Any:
    _check_float("act_absmax", act_absmax, ndim=1, allow_torch=allow_torch)
    if act_absmax.shape[0] != d:
        raise ValueError(f"act_absmax must have shape ({d},) (one max |x_j| per input feature), got "
                         f"{tuple(act_absmax.shape)}")
    if not bool((act_absmax >= 0).all()):
        raise ValueError("act_absmax must be >= 0 everywhere (it holds max |x_j| per input feature)")
    return act_absmax


def _dtype_name(a: Any) -> str:
    """``"uint8"`` for both ``np.uint8`` and ``torch.uint8`` (no torch import needed here)."""
    return str(a.dtype).rsplit(".", 1)[-1]


def _compute_dtype(*dtypes: np.dtype) -> type:
    """float64 if any operand is float64, else float32 (float16 is upcast)."""
    return np.float64 if any(dt == np.float64 for dt in dtypes) else np.float32


def _linear_inputs(x: np.ndarray, w: np.ndarray, b: np.ndarray | None):
    """``(x2, bad, w, b, out_shape)`` of a simulated quantized layer, validated: ``x`` flattened to
    ``[tokens, in]`` with its non-finite tokens set to 0, the mask ``bad [tokens]`` of those tokens, and ``w``,
    ``b`` in the compute dtype of ``x``.

    A NaN or inf in token ``i`` makes output row ``i`` NaN (:func:`_finish`), as a float matmul does for a
    NaN; the layers quantize ``x`` on every call, so the token is zeroed first: the quantizer sees finite
    values only, and every other token's result (its scale, a per-tensor scale, LLM.int8's outlier columns,
    SmoothQuant's ``max|x_j|``) is that of the finite tokens alone.
    """
    _check_linear(x, w, b)
    cdt = np.float64 if x.dtype == np.float64 else np.float32
    x2 = x.reshape(-1, x.shape[-1]).astype(cdt, copy=False)
    bad = ~np.isfinite(x2).all(axis=-1)
    if bad.any():
        x2 = np.where(bad[:, None], 0.0, x2).astype(cdt, copy=False)
    bc = None if b is None else b.astype(cdt, copy=False)
    return x2, bad, w.astype(cdt, copy=False), bc, x.shape[:-1] + (w.shape[0],)


def _finish(
    y: np.ndarray, bad: np.ndarray, b: np.ndarray | None, out_shape: tuple[int, ...], dtype: np.dtype
) -> np.ndarray:
    """``y [tokens, out]`` with the rows of the non-finite tokens ``bad`` set to NaN, ``+ b``, as ``dtype``."""
    if bad.any():
        y = np.where(bad[:, None], np.nan, y).astype(y.dtype, copy=False)
    if b is not None:
        y = y + b
    return y.reshape(out_shape).astype(dtype, copy=False)


# =========================================================================== GOBO (section 02.2)
@dataclass(frozen=True, eq=False)
class GoboWeight:
    """A GOBO-compressed weight (:func:`gobo_quantize`); holds NumPy arrays or torch tensors (never both).

    * ``indices``: uint8, the shape of the weight; the centroid of every weight (outlier positions hold 0).
    * ``centroids``: float, ``[2**bits]``, sorted; the weight's dtype.
    * ``outlier_mask``: bool, the shape of the weight; True where the weight is an outlier kept exactly.
    * ``outlier_values``: float, ``[n_outliers]``, the outliers in row-major order of ``outlier_mask``
      (``w[outlier_mask]``).
    * ``bits``: bits per index, 1..8.
    """

    indices: Any
    centroids: Any
    outlier_mask: Any
    outlier_values: Any
    bits: int

    def __post_init__(self) -> None:
        bits = check_int("bits", self.bits, min_value=1, max_value=8)
        for name in ("indices", "centroids", "outlier_mask", "outlier_values"):
            check_array(name, getattr(self, name), allow_torch=True)
        arrays = (self.indices, self.centroids, self.outlier_mask, self.outlier_values)
        if len({isinstance(a, np.ndarray) for a in arrays}) > 1:
            raise TypeError("indices, centroids, outlier_mask and outlier_values must all be NumPy arrays or all "
                            "torch tensors, got a mix")
        if not isinstance(self.indices, np.ndarray) and len({str(a.device) for a in arrays}) > 1:
            raise ValueError("indices, centroids, outlier_mask and outlier_values must live on one device")
        if _dtype_name(self.indices) != "uint8":
            raise TypeError(f"indices must have dtype uint8, got {self.indices.dtype}")
        if _dtype_name(self.outlier_mask) != "bool":
            raise TypeError(f"outlier_mask must have dtype bool, got {self.outlier_mask.dtype}")
        check_array("centroids", self.centroids, ndim=1, dtype_kind="f", allow_torch=True)
        check_array("outlier_values", self.outlier_values, ndim=1, dtype_kind="f", allow_torch=True)
        if tuple(self.centroids.shape) != (2**bits,):
            raise ValueError(
                f"centroids must have shape ({2**bits},) for bits={bits}, got {tuple(self.centroids.shape)}"
            )
        if tuple(self.outlier_mask.shape) != tuple(self.indices.shape):
            raise ValueError(f"outlier_mask must have the shape of indices {tuple(self.indices.shape)}, got "
                             f"{tuple(self.outlier_mask.shape)}")
        if tuple(self.outlier_values.shape) != (self.n_outliers,):
            raise ValueError(f"outlier_values must have shape ({self.n_outliers},) (one per True in outlier_mask), "
                             f"got {tuple(self.outlier_values.shape)}")
        if math.prod(self.indices.shape) and int(self.indices.max()) >= 2**bits:
            raise ValueError(f"indices must be < 2**bits = {2**bits}, got a maximum of {int(self.indices.max())}")

    @property
    def n_outliers(self) -> int:
        """How many weights are stored exactly."""
        return int(self.outlier_mask.sum())


def _nearest_centroid(values: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Index of the nearest centroid of every value; on a tie the lower index wins.

    One pass per centroid (memory of one copy of ``values``, not ``len(values) x K``): a value moves to
    centroid ``k`` only if it is *strictly* closer than to every earlier one.
    """
    best = np.abs(values - centroids[0])
    index = np.zeros(values.shape, dtype=np.uint8)
    for k in range(1, len(centroids)):
        dist = np.abs(values - centroids[k])
        closer = dist < best
        index[closer] = k
        best = np.where(closer, dist, best)
    return index


def gobo_quantize(w: np.ndarray, bits: int = 3, outlier_sigma: float = 3.0, n_iter: int = 20) -> GoboWeight:
    """GOBO weight compression (Zadeh et al. 2020): Gaussian outliers kept exactly, the rest k-means binned.

    1. Fit a Gaussian to all the weights of the layer: ``mean`` and (population) ``std``.
    2. Outliers: ``|w - mean| > outlier_sigma * std``; stored exactly (value and position).
    3. The other weights ("Gaussian group") are clustered into ``K = 2**bits`` centroids by 1-D Lloyd k-means:
       initial centroids at the ``(k + 0.5) / K`` quantiles (``k = 0..K-1``, linear interpolation) of the
       non-outliers; then ``n_iter`` times: assign every weight to its nearest centroid (ties: the lower
       index), move every centroid to the mean of its weights (an empty cluster keeps its centroid). The final
       indices are the nearest centroids of the last centroids.

    ``w`` is a finite float array of any shape with at least ``2**bits`` non-outliers; ``bits`` in 1..8;
    ``outlier_sigma > 0``; ``n_iter >= 0``. Statistics and k-means run in float64; ``centroids`` and
    ``outlier_values`` are stored in ``w``'s dtype (outliers are then exact).
    """
    _check_float("w", w)
    bits = check_int("bits", bits, min_value=1, max_value=8)
    outlier_sigma = check_float("outlier_sigma", outlier_sigma, min_value=0.0, min_inclusive=False)
    n_iter = check_int("n_iter", n_iter, min_value=0)
    n_bins = 2**bits
    v = w.astype(np.float64)

    # 1-2. one Gaussian for the whole layer; weights beyond outlier_sigma standard deviations are outliers
    mean, std = v.mean(), v.std()
    outlier_mask = np.abs(v - mean) > outlier_sigma * std
    inliers = v[~outlier_mask]
    if inliers.size < n_bins:
        raise ValueError(
            f"w must have at least 2**bits = {n_bins} non-outlier weights to fit {n_bins} centroids, got "
            f"{inliers.size} (w of shape {w.shape}, outlier_sigma={outlier_sigma})"
        )

    # 3. 1-D k-means (Lloyd): quantile initialisation, then assign / update n_iter times
    centroids = np.quantile(inliers, (np.arange(n_bins) + 0.5) / n_bins)
    for _ in range(n_iter):
        assign = _nearest_centroid(inliers, centroids)
        for k in range(n_bins):
            members = inliers[assign == k]
            if members.size:  # an empty cluster keeps its centroid
                centroids[k] = members.mean()
    indices = np.zeros(w.shape, dtype=np.uint8)  # outlier positions hold 0
    indices[~outlier_mask] = _nearest_centroid(inliers, centroids)
    return GoboWeight(indices, centroids.astype(w.dtype), outlier_mask, w[outlier_mask].copy(), bits)


def _check_gobo(g: Any, numpy: bool) -> GoboWeight:
    if not isinstance(g, GoboWeight):
        raise TypeError(f"g must be a GoboWeight (from gobo_quantize), got {describe(g)}")
    if isinstance(g.indices, np.ndarray) != numpy:
        want = "NumPy arrays (effx_lab.quant.reference)" if numpy else "torch tensors (effx_lab.quant.torch_ops)"
        raise TypeError(f"g must hold {want}, got {describe(g.indices)}")
    return g


def gobo_dequantize(g: GoboWeight) -> np.ndarray:
    """The approximate weight: ``centroids[indices]``, with the outliers put back exactly (``centroids``'
    dtype, the shape of the original weight)."""
    g = _check_gobo(g, numpy=True)
    w_hat = g.centroids[g.indices]
    w_hat[g.outlier_mask] = g.outlier_values
    return w_hat


def gobo_bits_per_weight(g: GoboWeight) -> float:
    """Storage cost of ``g`` in bits per weight: ``bits`` per index for *every* weight (the dense index array;
    outlier positions hold a dummy 0), 32 bits per centroid, and 64 bits per outlier (32-bit value + 32-bit
    position). Works on NumPy- and torch-backed :class:`GoboWeight` alike."""
    if not isinstance(g, GoboWeight):
        raise TypeError(f"g must be a GoboWeight (from gobo_quantize), got {describe(g)}")
    n = math.prod(g.indices.shape)
    total = g.bits * n + 32 * 2**g.bits + (32 + 32) * g.n_outliers
    return total / n


# =========================================================================== LLM.int8() (section 02.3)
def absmax_quantize(x: np.ndarray, axis: int = -1, bits: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric absmax quantization with one scale per slice *along* ``axis`` (LLM.int8's "vector-wise").

    The reduction runs over ``axis``: ``scale = max |x| / qmax`` over ``axis`` with ``keepdims`` (so with the
    default ``axis=-1``, one scale per row of a ``[M, K]`` array: ``scale`` is ``[M, 1]``), ``q =
    round(x / scale)`` as int8 in ``[-qmax, qmax]`` (``qmax = 127`` for 8 bits); an all-zero slice gets
    ``scale = 1``. In terms of :func:`compute_qparams`: ``granularity="group"`` along ``axis`` with a single
    group of ``x.shape[axis]`` elements (for a 2-D array, the same as ``granularity="channel"`` on the *other*
    axis). ``x``: finite float array, ``bits`` in 2..8. Returns ``(q int8, scale)`` with ``scale`` float64
    for float64 ``x`` and float32 otherwise.
    """
    _check_float("x", x)
    axis = check_int("axis", axis)
    if not -x.ndim <= axis < x.ndim:
        raise ValueError(f"axis must be in [{-x.ndim}, {x.ndim - 1}] for x of shape {x.shape}, got {axis}")
    bits = _check_bits("bits", bits)
    qp = compute_qparams(x, bits, True, "group", axis=axis, group_size=x.shape[axis])
    return quantize(x, qp), qp.scale


def _check_int8_pair(a: Any, b: Any, allow_torch: bool = False) -> None:
    for name, m in (("a", a), ("b", b)):
        check_array(name, m, ndim=2, allow_torch=allow_torch)
        if _dtype_name(m) != "int8":
            raise TypeError(f"{name} must have dtype int8, got {m.dtype}")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"a [M, K] and b [N, K] must share K, got a of shape {tuple(a.shape)} and b of shape "
                         f"{tuple(b.shape)}")
    if a.shape[1] > INT8_MATMUL_MAX_K:
        raise ValueError(f"a.shape[1] (K) must be <= {INT8_MATMUL_MAX_K} so that int32 accumulation cannot "
                         f"overflow, got {a.shape[1]}")


def int8_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b.T`` of int8 ``a [M, K]`` and int8 ``b [N, K]``, exactly, as int32 ``[M, N]``.

    Every product is at most ``128 * 128 = 2**14`` in magnitude, so the int32 accumulator is exact for
    ``K <= 131071`` (larger ``K`` raises ``ValueError``). Here: cast to int32 and an integer matmul.
    """
    _check_int8_pair(a, b)
    return a.astype(np.int32) @ b.astype(np.int32).T


def _vectorwise(x2: np.ndarray, w: np.ndarray, bits: int) -> np.ndarray:
    """``x2 [T, in] @ w.T`` through int8, no bias (both already in the compute dtype)."""
    qx, sx = absmax_quantize(x2, axis=-1, bits=bits)  # one scale per token:          sx [T, 1]
    qw, sw = absmax_quantize(w, axis=-1, bits=bits)  # one scale per output channel: sw [out, 1]
    acc = int8_matmul(qx, qw)  # exact int32 [T, out]
    return acc.astype(x2.dtype) * sx * sw.T  # epilogue: acc * sx[:, None] * sw[None, :]


def vectorwise_linear(x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None, bits: int = 8) -> np.ndarray:
    """LLM.int8's vector-wise W8A8 linear layer (Dettmers et al. 2022, Sec. 3.1): ``x @ w.T + b`` with one
    absmax scale per token (row of ``x``) and one per output channel (row of ``w``), an exact int8 x int8 ->
    int32 product (:func:`int8_matmul`) and the float epilogue ``acc * s_x[:, None] * s_w[None, :] + b``.

    ``x [..., in]``, ``w [out, in]``, ``b`` None or ``[out]``; returns ``[..., out]`` in ``x``'s dtype. A token
    of ``x`` holding a NaN or inf gets a NaN output row (``w`` and ``b`` must be finite).
    """
    bits = _check_bits("bits", bits)
    x2, bad, wc, bc, out_shape = _linear_inputs(x, w, b)
    return _finish(_vectorwise(x2, wc, bits), bad, bc, out_shape, x.dtype)


def outlier_columns(x: np.ndarray, threshold: float = 6.0) -> np.ndarray:
    """Boolean mask ``[in]`` of the feature columns ``j`` where any ``|x[..., j]| > threshold`` (LLM.int8's
    outlier features). ``threshold >= 0``; ``inf`` gives no outliers, ``0`` every column that is not all zero."""
    _check_float("x", x)
    threshold = _check_threshold(threshold)
    return np.abs(x).reshape(-1, x.shape[-1]).max(axis=0) > threshold


def llm_int8_linear(
    x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None, threshold: float = 6.0, bits: int = 8
) -> np.ndarray:
    """LLM.int8() (Dettmers et al. 2022, Sec. 3.2): mixed-precision decomposition of ``x @ w.T + b``.

    ``O = outlier_columns(x, threshold)``;  ``y = x[:, O] @ w[:, O].T`` (float)
    ``+ vectorwise_linear(x[:, ~O], w[:, ~O])`` (int8) ``+ b``.

    The float part runs in the compute dtype (float32, float64 for float64 ``x``; the paper uses fp16 on GPU).
    ``threshold=inf``: no outlier column, the result is exactly :func:`vectorwise_linear`; ``threshold=0``:
    every non-zero column in float, i.e. the exact product (all-zero columns contribute exactly 0 either way).
    Shapes and dtype as :func:`vectorwise_linear`.
    """
    bits = _check_bits("bits", bits)
    x2, bad, wc, bc, out_shape = _linear_inputs(x, w, b)
    outliers = outlier_columns(x2, threshold)
    regular = ~outliers
    if regular.any():
        y = _vectorwise(x2[:, regular], wc[:, regular], bits)  # ~99.9% of the features: int8
    else:
        y = np.zeros((x2.shape[0], wc.shape[0]), dtype=x2.dtype)
    if outliers.any():
        y = y + x2[:, outliers] @ wc[:, outliers].T  # the few outlier features: float
    return _finish(y, bad, bc, out_shape, x.dtype)


def w8a8_linear(
    x: np.ndarray,
    w: np.ndarray,
    b: np.ndarray | None = None,
    *,
    act_granularity: str = "token",
    weight_granularity: str = "channel",
    bits: int = 8,
) -> np.ndarray:
    """Simulated W8A8: fake-quantize ``x`` and ``w`` with symmetric absmax, then a float matmul, ``+ b``.

    ``act_granularity``: ``"token"`` (one scale per row of ``x``, dynamic) or ``"tensor"`` (one for all);
    ``weight_granularity``: ``"channel"`` (one per output row of ``w``) or ``"tensor"``. With
    ``("token", "channel")`` this equals :func:`vectorwise_linear` up to float rounding (the scales are the
    same; only where they multiply differs). Shapes and dtype as :func:`vectorwise_linear`.
    """
    check_choice("act_granularity", act_granularity, ACT_GRANULARITIES)
    check_choice("weight_granularity", weight_granularity, WEIGHT_GRANULARITIES)
    bits = _check_bits("bits", bits)
    x2, bad, wc, bc, out_shape = _linear_inputs(x, w, b)
    return _finish(_w8a8(x2, wc, act_granularity, weight_granularity, bits), bad, bc, out_shape, x.dtype)


def _w8a8(x2: np.ndarray, w: np.ndarray, act_granularity: str, weight_granularity: str, bits: int) -> np.ndarray:
    if act_granularity == "token":  # x2 is [T, in]: "channel" along axis 0 = one scale per token
        xq = fake_quantize(x2, bits, True, "channel", axis=0)
    else:
        xq = fake_quantize(x2, bits, True, "tensor")
    if weight_granularity == "channel":  # w is [out, in]: one scale per output row
        wq = fake_quantize(w, bits, True, "channel", axis=0)
    else:
        wq = fake_quantize(w, bits, True, "tensor")
    return xq @ wq.T


# =========================================================================== PEG (section 02.4)
def peg_permutation(ranges: np.ndarray, n_groups: int) -> np.ndarray:
    """PEG's range-based permutation (Bondarenko et al. 2021): the embedding dimensions sorted by their range.

    ``ranges [D]`` (e.g. ``max - min`` of each dimension over calibration tokens). Returns ``perm`` int64
    ``[D]``, the stable ascending argsort: group ``g`` of :func:`peg_fake_quantize` is ``perm[g * D/n_groups :
    (g + 1) * D/n_groups]``, so each group holds dimensions of similar range and the largest (outlier)
    dimensions end up together in the last group. ``n_groups`` must divide ``D``.
    """
    _check_float("ranges", ranges, ndim=1)
    _check_n_groups(n_groups, ranges.shape[0])
    return np.argsort(ranges, kind="stable").astype(np.int64)


def peg_fake_quantize(
    x: np.ndarray, n_groups: int, bits: int = 8, permute: bool = True, calib: np.ndarray | None = None
) -> np.ndarray:
    """Per-embedding-group (PEG) activation quantization (Bondarenko et al. 2021), quantize-dequantize.

    The last dimension ``D`` of ``x [..., D]`` is split into ``n_groups`` groups of ``D / n_groups``
    dimensions: contiguous (``permute=False``) or by :func:`peg_permutation` of the per-dimension ranges
    (``max - min`` over all tokens of ``calib``; ``permute=True``). Each group gets one *affine* (min/max)
    scale and zero point computed over all tokens of ``calib`` (default: ``x`` itself, i.e. dynamic) and
    that group's dimensions; values of ``x`` outside the calibrated range saturate. Returns the fake-quantized
    ``x`` in its original dimension order, shape and dtype. ``n_groups=1`` is per-tensor affine quantization,
    ``n_groups=D`` per-dimension.
    """
    _check_float("x", x)
    d = x.shape[-1]
    n_groups = _check_n_groups(n_groups, d)
    bits = _check_bits("bits", bits)
    permute = check_bool("permute", permute)
    if calib is None:
        calib = x
    _check_float("calib", calib)
    if calib.shape[-1] != d:
        raise ValueError(f"calib must have the last dimension of x ({d}), got shape {calib.shape}")
    cdt = _compute_dtype(x.dtype, calib.dtype)
    x2 = x.reshape(-1, d)
    c2 = calib.reshape(-1, d).astype(cdt)

    if permute:  # sort the dimensions by range: outlier dimensions share the last group
        order = peg_permutation(c2.max(axis=0) - c2.min(axis=0), n_groups)
    else:
        order = np.arange(d)
    size = d // n_groups
    out = np.empty(x2.shape, dtype=x.dtype)
    for g in range(n_groups):
        dims = order[g * size : (g + 1) * size]
        qp = compute_qparams(c2[:, dims], bits, symmetric=False, granularity="tensor")  # one scale per group
        out[:, dims] = dequantize(quantize(x2[:, dims].astype(cdt), qp), qp, dtype=x.dtype)
    return out.reshape(x.shape)


# =========================================================================== ZeroQuant (section 02.4)
def zeroquant_linear(
    x: np.ndarray,
    w: np.ndarray,
    b: np.ndarray | None = None,
    *,
    w_bits: int = 8,
    group_size: int | None = 64,
    a_bits: int = 8,
) -> np.ndarray:
    """ZeroQuant's fine-grained W8A8 (Yao et al. 2022), simulated: group-wise symmetric weights (one scale per
    ``group_size`` consecutive input features of each output row; ``group_size=None``: one per row) and
    token-wise symmetric activations (one scale per row of ``x``, computed on the fly), then a float matmul
    ``+ b``. ``group_size`` must divide ``w.shape[1]``; ``w_bits``, ``a_bits`` in 2..8. Shapes and dtype as
    :func:`vectorwise_linear`.
    """
    w_bits = _check_bits("w_bits", w_bits)
    a_bits = _check_bits("a_bits", a_bits)
    x2, bad, wc, bc, out_shape = _linear_inputs(x, w, b)
    group_size = _check_group_size(group_size, wc.shape[1])
    if group_size is None:
        wq = fake_quantize(wc, w_bits, True, "channel", axis=0)
    else:
        wq = fake_quantize(wc, w_bits, True, "group", axis=-1, group_size=group_size)
    xq = fake_quantize(x2, a_bits, True, "channel", axis=0)  # token-wise
    return _finish(xq @ wq.T, bad, bc, out_shape, x.dtype)


def _check_layernorm(x: Any, weight: Any, bias: Any, eps: Any, bits: Any, allow_torch: bool = False):
    """``x [..., D]`` finite (the quantizer makes integers of it), ``weight`` and ``bias`` finite ``[D]``,
    ``eps > 0``, ``bits`` in 2..8; returns ``(eps, bits)``."""
    _check_float("x", x, allow_torch=allow_torch)
    _check_float("weight", weight, ndim=1, allow_torch=allow_torch)
    _check_float("bias", bias, ndim=1, allow_torch=allow_torch)
    d = x.shape[-1]
    if tuple(weight.shape) != (d,) or tuple(bias.shape) != (d,):
        raise ValueError(
            f"weight and bias must have shape ({d},) to match x's last dimension, got weight "
            f"{tuple(weight.shape)} and bias {tuple(bias.shape)} for x of shape {tuple(x.shape)}"
        )
    eps = check_float("eps", eps, min_value=0.0, min_inclusive=False)
    return eps, _check_bits("bits", bits)


def layernorm_quantize_rows(
    x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float = 1e-5, bits: int = 8
) -> tuple[np.ndarray, np.ndarray]:
    """LayerNorm, then token-wise symmetric quantization of its output: ZeroQuant's fused step, unfused.

    ``y = (x - mean) / sqrt(var + eps) * weight + bias`` over the last axis (biased variance, as
    ``torch.nn.LayerNorm``), then one absmax scale per row (token) of ``y``: ``scale = max|y| / qmax``
    (``qmax = 2^(bits-1) - 1``; 1 for an all-zero row), ``q = clip(round(y / scale), -qmax, qmax)``, round half
    to even. ``x``: finite float ``[..., D]`` (every leading dimension is a token); ``weight``, ``bias``: finite
    float ``[D]``; ``eps > 0``; ``bits`` in 2..8. Computed in float64 for float64 ``x`` and in float32 otherwise.
    Returns ``(q int8 [..., D], scale [...])``: the codes and scales of ``absmax_quantize(y)`` for that ``y``.
    A fused kernel (``effx_lab.quant.kernels.layernorm_quantize_rows``) reads ``x`` once and writes ``q`` and
    ``scale``; the two-step version writes ``y`` and reads it back.
    """
    eps, bits = _check_layernorm(x, weight, bias, eps, bits)
    cdt = _compute_dtype(x.dtype)
    xc = x.astype(cdt, copy=False)
    mean = xc.mean(axis=-1, keepdims=True)
    var = ((xc - mean) ** 2).mean(axis=-1, keepdims=True)
    y = (xc - mean) / np.sqrt(var + cdt(eps)) * weight.astype(cdt) + bias.astype(cdt)
    q, scale = absmax_quantize(y, axis=-1, bits=bits)
    return q, scale[..., 0]


# =========================================================================== SmoothQuant (section 02.6)
def smooth_scales(act_absmax: np.ndarray, w: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """SmoothQuant's per-input-feature factors (Xiao et al. 2023, Sec. 4):
    ``s_j = max|X_j|^alpha / max|W_j|^(1 - alpha)``.

    ``act_absmax [in]`` holds ``max|X_j|`` over calibration tokens (>= 0); ``max|W_j|`` is over the output rows
    of column ``j`` of ``w [out, in]``. Both maxima are clamped to ``>= 1e-5``. ``alpha`` in ``[0, 1]`` is the
    migration strength: with ``alpha = 0.5`` the smoothed activation and weight columns have the same max,
    ``sqrt(max|X_j| max|W_j|)``. Returns float64 if either input is float64, else float32.
    """
    _check_float("w", w, ndim=2)
    _check_act_absmax(act_absmax, w.shape[1])
    alpha = check_float("alpha", alpha, min_value=0.0, max_value=1.0)
    cdt = _compute_dtype(act_absmax.dtype, w.dtype)
    a_max = np.maximum(act_absmax.astype(cdt), SMOOTH_EPS)
    w_max = np.maximum(np.abs(w.astype(cdt)).max(axis=0), SMOOTH_EPS)
    return a_max**alpha / w_max ** (1.0 - alpha)


def smooth_weight(w: np.ndarray, s: np.ndarray) -> np.ndarray:
    """``w * s[None, :]``: column ``j`` of ``w [out, in]`` scaled up by ``s_j`` (``diag(s) W`` in the paper's
    ``[in, out]`` layout). Returns ``w``'s dtype."""
    _check_float("w", w, ndim=2)
    _check_scales(s, w.shape[1])
    cdt = _compute_dtype(w.dtype, s.dtype)
    return (w.astype(cdt) * s.astype(cdt)[None, :]).astype(w.dtype)


def smooth_activation(x: np.ndarray, s: np.ndarray) -> np.ndarray:
    """``x / s``: feature ``j`` of ``x [..., in]`` divided by ``s_j`` (``X diag(s)^-1``). Returns ``x``'s dtype.
    In a deployed model this division is folded into the previous LayerNorm (:func:`fold_smoothing`)."""
    _check_float("x", x)
    _check_scales(s, x.shape[-1])
    cdt = _compute_dtype(x.dtype, s.dtype)
    return (x.astype(cdt) / s.astype(cdt)).astype(x.dtype)


def fold_smoothing(
    ln_weight: np.ndarray, ln_bias: np.ndarray | None, s: np.ndarray
) -> tuple[np.ndarray, np.ndarray | None]:
    """Fold ``1 / s`` into the LayerNorm that produces ``x``, offline: ``(ln_weight / s, ln_bias / s)``.

    ``LayerNorm(x) = norm(x) * ln_weight + ln_bias``, so dividing both parameters by ``s`` gives
    ``LayerNorm(x) / s`` at no run-time cost. ``ln_bias`` may be None (a norm without bias: None is returned).
    Each output keeps its input's dtype.
    """
    _check_float("ln_weight", ln_weight, ndim=1)
    _check_scales(s, ln_weight.shape[0])
    if ln_bias is not None:
        _check_float("ln_bias", ln_bias, ndim=1)
        if ln_bias.shape != ln_weight.shape:
            raise ValueError(f"ln_bias must have the shape of ln_weight {ln_weight.shape}, got {ln_bias.shape}")

    def divide(p: np.ndarray) -> np.ndarray:
        cdt = _compute_dtype(p.dtype, s.dtype)
        return (p.astype(cdt) / s.astype(cdt)).astype(p.dtype)

    return divide(ln_weight), None if ln_bias is None else divide(ln_bias)


def smoothquant_linear(
    x: np.ndarray,
    w: np.ndarray,
    b: np.ndarray | None = None,
    *,
    alpha: float = 0.5,
    act_absmax: np.ndarray | None = None,
    act_granularity: str = "tensor",
    bits: int = 8,
) -> np.ndarray:
    """SmoothQuant W8A8 (Xiao et al. 2023): smooth, then :func:`w8a8_linear` with per-channel weights.

    ``s = smooth_scales(act_absmax, w, alpha)`` with ``act_absmax`` from calibration (default: ``max|x_j|``
    over the tokens of ``x`` itself); ``y = w8a8_linear(x / s, w * s, b, act_granularity=act_granularity,
    weight_granularity="channel")``. The smoothing is exact in real arithmetic (``(x / s) (w * s)^T = x w^T``);
    only the quantization error changes. ``act_granularity`` ``"tensor"`` (the paper's per-tensor setting, the
    default) or ``"token"``; the activation scale itself is computed from ``x / s`` on the fly (dynamic), only
    ``s`` comes from ``act_absmax``. Shapes and dtype as :func:`vectorwise_linear`.
    """
    check_choice("act_granularity", act_granularity, ACT_GRANULARITIES)
    bits = _check_bits("bits", bits)
    x2, bad, wc, bc, out_shape = _linear_inputs(x, w, b)
    if act_absmax is None:
        act_absmax = np.abs(x2).max(axis=0)  # over the finite tokens (the others are zeroed)
    s = smooth_scales(act_absmax, wc, alpha).astype(x2.dtype)
    y = _w8a8(smooth_activation(x2, s), smooth_weight(wc, s), act_granularity, "channel", bits)
    return _finish(y, bad, bc, out_shape, x.dtype)
