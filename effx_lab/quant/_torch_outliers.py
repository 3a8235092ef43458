"""Outlier-aware quantization in PyTorch, vectorised (chapter 2, sections 02.2, 02.3, 02.4, 02.6).

Same names, signatures and math as :mod:`effx_lab.quant._np_outliers` (read its docstring for the ideas and
the papers: GOBO, Zadeh et al. 2020; LLM.int8(), Dettmers et al. 2022; PEG, Bondarenko et al. 2021;
ZeroQuant, Yao et al. 2022; SmoothQuant, Xiao et al. 2023), with torch tensors in and out, on the device of
the input (CPU or CUDA). :class:`GoboWeight` is the same dataclass, here holding tensors, and
:func:`gobo_bits_per_weight` is the same function. What differs, and why:

* :func:`int8_matmul` calls ``torch._int_mm`` (the int8 x int8 -> int32 GEMM of cuBLASLt) on CUDA when its
  shape constraints hold (``M > 16``, ``K`` and ``N`` multiples of 8). On CPU it computes the same integers
  exactly with float32 GEMMs over chunks of 1024 input features, converted to int32 and summed: a chunk's
  partial sums are integers of magnitude at most ``1024 * 128 * 128 = 2**24``, which float32 holds exactly.
  Elsewhere (CUDA shapes ``_int_mm`` refuses) a float64 GEMM rounded back to int32 (exact: every partial sum
  is an integer below ``2**31 < 2**53``). Why not ``torch._int_mm`` on CPU: on an AVX2 CPU without VNNI
  (measured once on a busy 2-core machine) it was about 10x *slower* than a float64 GEMM (3.0 s vs 0.33 s for
  ``[2048, 1536] x [1536, 384]``). On a CPU with AVX-512 VNNI it wins instead (02.3 measured it 4.7x faster
  than float32 ``F.linear`` at ``[128, 384] x [1536, 384]``, on a busy 2-core Xeon): int8 GEMMs pay off on
  hardware with int8 dot-product units, and this function keeps the path that is safe everywhere.
* GOBO's k-means never builds the ``[n, K]`` distance matrix either; the centroid update is one
  ``index_add_`` and one ``bincount`` per iteration instead of a loop over clusters; the quantiles are
  computed by sorting (``torch.quantile`` refuses inputs above 16M elements). As in NumPy, the statistics
  and the clustering run in float64, so both backends find the same clusters.
* :func:`peg_fake_quantize` views the permuted activations as ``[tokens, n_groups, D / n_groups]`` and
  computes all group ranges with one reduction (``granularity="channel"`` on the group axis) instead of a
  loop over groups.

* The layers (``*_linear``) read nothing computed from the activation back to Python: a check such as
  ``bool(torch.isfinite(x).all())`` is a device sync on CUDA, once per layer and token of a decode loop. A
  token holding a NaN or inf is found with a mask and zeroed before quantization, and its output row is set to
  NaN with ``masked_fill`` (the NumPy module's rule, the same rows); they quantize through the uniform
  quantizer's unchecked core (``_torch_uniform._symmetric_unchecked``: the same arithmetic, without the value
  checks). The one exception is :func:`llm_int8_linear`, which reads back the number of outlier columns
  it gathers (inherent to the method; see its docstring). ``w``, ``b`` and a calibrated ``act_absmax`` are still
  checked for finite values, once per call (made once, they are validated like every quantizer input).

Input validation is the NumPy module's (``allow_torch=True``), but every array argument must be a
``torch.Tensor`` (a NumPy array raises ``TypeError``), and the tensors of one call must share a device.
float16/bfloat16 inputs are computed in float32 and returned in their dtype; float64 stays float64.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from effx_lab._validate import (
    check_bool,
    check_choice,
    check_float,
    check_int,
    require_tensor,
)

from ._np_outliers import (
    ACT_GRANULARITIES,
    SMOOTH_EPS,
    WEIGHT_GRANULARITIES,
    GoboWeight,
    _check_act_absmax,
    _check_bits,
    _check_float,
    _check_gobo,
    _check_group_size,
    _check_int8_pair,
    _check_layernorm,
    _check_linear,
    _check_n_groups,
    _check_scales,
    _check_threshold,
    gobo_bits_per_weight,
)
from ._np_uniform import _check_config
from ._torch_uniform import _symmetric_unchecked, compute_qparams, dequantize, quantize

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


# =========================================================================== validation
def _tensor(name: str, value: Any, like: torch.Tensor | None = None, **kw: Any) -> torch.Tensor:
    """A finite float tensor (checked like the NumPy side), on ``like``'s device if given."""
    _check_float(name, require_tensor(name, value), allow_torch=True, **kw)
    if like is not None and value.device != like.device:
        raise ValueError(f"{name} must be on the device of {like.device}, got {value.device}")
    return value


def _compute_dtype(*dtypes: torch.dtype) -> torch.dtype:
    """float64 if any operand is float64, else float32 (float16/bfloat16 are upcast)."""
    return torch.float64 if any(dt == torch.float64 for dt in dtypes) else torch.float32


def _linear_inputs(x: Any, w: Any, b: Any):
    """``(x2, bad, w, b, out_shape)``: ``x`` flattened to ``[tokens, in]`` with its non-finite tokens set to 0,
    the mask ``bad [tokens]`` of those tokens, and ``w``, ``b`` in the compute dtype of ``x``; the rule of
    :func:`effx_lab.quant._np_outliers._linear_inputs`, with masks (nothing of ``x`` is read back)."""
    for name, value in (("x", x), ("w", w)) + ((("b", b),) if b is not None else ()):
        require_tensor(name, value)
    _check_linear(x, w, b, allow_torch=True)
    for name, value in (("w", w), ("b", b)):
        if value is not None and value.device != x.device:
            raise ValueError(f"{name} must be on the device of x ({x.device}), got {value.device}")
    cdt = _compute_dtype(x.dtype)
    bc = None if b is None else b.to(cdt)
    x2 = x.reshape(-1, x.shape[-1]).to(cdt)
    bad = ~torch.isfinite(x2).all(dim=-1)
    return x2.masked_fill(bad[:, None], 0.0), bad, w.to(cdt), bc, tuple(x.shape[:-1]) + (w.shape[0],)


def _finish(
    y: torch.Tensor, bad: torch.Tensor, b: torch.Tensor | None, out_shape: tuple[int, ...], dtype: torch.dtype
) -> torch.Tensor:
    """``y [tokens, out]`` with the rows of the non-finite tokens ``bad`` set to NaN, ``+ b``, as ``dtype``."""
    y = y.masked_fill(bad[:, None], float("nan"))
    if b is not None:
        y = y + b
    return y.reshape(out_shape).to(dtype)


def _symmetric(
    x: torch.Tensor, bits: int, granularity: str, axis: int = -1, group_size: int | None = None, fake: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """``_torch_uniform._symmetric_unchecked`` with the configuration validated as ``compute_qparams`` does: codes
    (or, with ``fake``, the fake-quantized values) and scales of a finite ``x``, with no read-back."""
    bits, _, granularity, axis, group_size = _check_config(
        tuple(x.shape), bits, True, granularity, axis, group_size
    )
    return _symmetric_unchecked(x, bits, granularity, axis, group_size, fake)


def _fake_symmetric(
    x: torch.Tensor, bits: int, granularity: str, axis: int = -1, group_size: int | None = None
) -> torch.Tensor:
    """``fake_quantize(x, bits, True, granularity, axis, group_size)`` for a finite ``x``, with no read-back."""
    return _symmetric(x, bits, granularity, axis, group_size, fake=True)[0]


# =========================================================================== GOBO (section 02.2)
def _nearest_centroid(values: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Index (uint8) of the nearest centroid; on a tie the lower index wins (strict ``<``), one pass per centroid."""
    best = (values - centroids[0]).abs_()
    index = torch.zeros(values.shape, dtype=torch.uint8, device=values.device)
    dist = torch.empty_like(best)
    for k in range(1, centroids.shape[0]):
        torch.sub(values, centroids[k], out=dist).abs_()
        index.masked_fill_(dist < best, k)
        torch.minimum(best, dist, out=best)  # = where(dist < best, dist, best)
    return index


def _quantiles(values: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Linear-interpolation quantiles (NumPy's default method) by sorting; any size."""
    ordered = torch.sort(values).values
    n = ordered.shape[0]
    pos = q * (n - 1)
    lo = pos.floor().long().clamp(0, n - 1)
    hi = (lo + 1).clamp(max=n - 1)
    return torch.lerp(ordered[lo], ordered[hi], pos - lo.to(pos.dtype))


def gobo_quantize(w: torch.Tensor, bits: int = 3, outlier_sigma: float = 3.0, n_iter: int = 20) -> GoboWeight:
    """GOBO (Zadeh et al. 2020): Gaussian outliers kept exactly, the rest binned by 1-D k-means into
    ``2**bits`` centroids. Same contract as :func:`effx_lab.quant._np_outliers.gobo_quantize` (statistics and
    k-means in float64 on ``w``'s device; centroids and outlier values in ``w``'s dtype)."""
    _tensor("w", w)
    bits = check_int("bits", bits, min_value=1, max_value=8)
    outlier_sigma = check_float("outlier_sigma", outlier_sigma, min_value=0.0, min_inclusive=False)
    n_iter = check_int("n_iter", n_iter, min_value=0)
    n_bins = 2**bits
    v = w.to(torch.float64)
    mean, std = v.mean(), v.std(correction=0)
    outlier_mask = (v - mean).abs() > outlier_sigma * std
    inliers = v[~outlier_mask]
    if inliers.numel() < n_bins:
        raise ValueError(
            f"w must have at least 2**bits = {n_bins} non-outlier weights to fit {n_bins} centroids, got "
            f"{inliers.numel()} (w of shape {tuple(w.shape)}, outlier_sigma={outlier_sigma})"
        )
    ks = torch.arange(n_bins, dtype=torch.float64, device=w.device)
    centroids = _quantiles(inliers, (ks + 0.5) / n_bins)
    for _ in range(n_iter):
        assign = _nearest_centroid(inliers, centroids).long()
        sums = torch.zeros_like(centroids).index_add_(0, assign, inliers)
        counts = torch.bincount(assign, minlength=n_bins)
        centroids = torch.where(counts > 0, sums / counts.clamp(min=1), centroids)  # empty cluster: unchanged
    indices = torch.zeros(w.shape, dtype=torch.uint8, device=w.device)
    indices[~outlier_mask] = _nearest_centroid(inliers, centroids)
    return GoboWeight(indices, centroids.to(w.dtype), outlier_mask, w[outlier_mask].clone(), bits)


def gobo_dequantize(g: GoboWeight) -> torch.Tensor:
    """``centroids[indices]`` with the outliers put back exactly (``centroids``' dtype, the weight's shape)."""
    g = _check_gobo(g, numpy=False)
    w_hat = g.centroids[g.indices.long()]
    w_hat[g.outlier_mask] = g.outlier_values
    return w_hat


# =========================================================================== LLM.int8() (section 02.3)
def absmax_quantize(x: torch.Tensor, axis: int = -1, bits: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric absmax int8 with one scale per slice along ``axis`` (reducing over ``axis``, keepdims);
    same contract as :func:`effx_lab.quant._np_outliers.absmax_quantize`."""
    _tensor("x", x)
    axis = check_int("axis", axis)
    if not -x.ndim <= axis < x.ndim:
        raise ValueError(f"axis must be in [{-x.ndim}, {x.ndim - 1}] for x of shape {tuple(x.shape)}, got {axis}")
    bits = _check_bits("bits", bits)
    qp = compute_qparams(x, bits, True, "group", axis=axis, group_size=x.shape[axis])
    return quantize(x, qp), qp.scale


def _int_mm_applies(a: torch.Tensor, b: torch.Tensor) -> bool:
    """cuBLASLt's int8 GEMM constraints (CUDA only; see the module docstring for CPU)."""
    if a.device.type != "cuda" or not hasattr(torch, "_int_mm"):
        return False
    return a.shape[0] > 16 and a.shape[1] > 0 and a.shape[1] % 8 == 0 and b.shape[0] > 0 and b.shape[0] % 8 == 0


_EXACT_F32_CHUNK = 1024  # K per float32 GEMM chunk: partial sums stay <= 2**24 (exact in float32)


def int8_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b.T`` of int8 ``a [M, K]`` and ``b [N, K]``, exactly, as int32 ``[M, N]`` (``K <= 131071``).

    ``torch._int_mm(a, b.t())`` on CUDA where it applies; on CPU exact float32 GEMMs over chunks of 1024 input
    features summed in int32 (``torch._int_mm`` measured about 10x slower than float64 on an AVX2 CPU without
    VNNI); otherwise (or if ``_int_mm`` raises) a float64 GEMM rounded to int32, exact because every partial sum
    is an integer of magnitude ``< 2**31`` (module docstring)."""
    require_tensor("a", a)
    require_tensor("b", b)
    _check_int8_pair(a, b, allow_torch=True)
    if b.device != a.device:
        raise ValueError(f"b must be on the device of a ({a.device}), got {b.device}")
    if _int_mm_applies(a, b):
        try:
            return torch._int_mm(a, b.t())
        except RuntimeError:  # an unsupported layout on this build: use the exact fallback
            pass
    if a.device.type == "cpu":
        # float32 GEMMs over K-chunks of 1024, summed in int32: every partial sum is an integer of magnitude
        # <= 1024 * 128 * 128 = 2**24, which float32 holds exactly, and float32 GEMM is about 2x float64's speed.
        a32, b32 = a.to(torch.float32), b.to(torch.float32)
        out = torch.zeros(a.shape[0], b.shape[0], dtype=torch.int32)
        for k0 in range(0, a.shape[1], _EXACT_F32_CHUNK):
            k1 = k0 + _EXACT_F32_CHUNK
            out += (a32[:, k0:k1] @ b32[:, k0:k1].t()).to(torch.int32)
        return out
    return torch.round(a.to(torch.float64) @ b.to(torch.float64).t()).to(torch.int32)


def _vectorwise(x2: torch.Tensor, w: torch.Tensor, bits: int) -> torch.Tensor:
    """``absmax_quantize`` of both operands (through :func:`_symmetric`: finite inputs, no read-back)."""
    qx, sx = _symmetric(x2, bits, "group", axis=-1, group_size=x2.shape[-1])  # sx [T, 1]
    qw, sw = _symmetric(w, bits, "group", axis=-1, group_size=w.shape[-1])  # sw [out, 1]
    return int8_matmul(qx, qw).to(x2.dtype) * sx * sw.t()


def vectorwise_linear(
    x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None, bits: int = 8
) -> torch.Tensor:
    """LLM.int8's vector-wise W8A8 linear (per-token and per-output-channel absmax scales, int8 GEMM with int32
    accumulation, float epilogue); same contract as :func:`effx_lab.quant._np_outliers.vectorwise_linear`."""
    bits = _check_bits("bits", bits)
    x2, bad, wc, bc, out_shape = _linear_inputs(x, w, b)
    return _finish(_vectorwise(x2, wc, bits), bad, bc, out_shape, x.dtype)


def outlier_columns(x: torch.Tensor, threshold: float = 6.0) -> torch.Tensor:
    """Boolean ``[in]``: columns where any ``|x[..., j]| > threshold``."""
    _tensor("x", x)
    threshold = _check_threshold(threshold)
    return x.abs().reshape(-1, x.shape[-1]).amax(dim=0) > threshold


def llm_int8_linear(
    x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None, threshold: float = 6.0, bits: int = 8
) -> torch.Tensor:
    """LLM.int8() mixed-precision decomposition: outlier columns in float, the rest vector-wise int8, summed,
    plus bias; same contract as :func:`effx_lab.quant._np_outliers.llm_int8_linear`.

    Unlike the other simulated layers, this one reads one number back per call: how many outlier columns
    the activation has. That is inherent to the method, not to this code: the outlier columns are found in
    the activation and gathered, so the shapes of both parts depend on the data (bitsandbytes' kernels read
    the count back too). Masking instead of gathering would avoid the read, but would run the float part
    over every column, which is the cost the decomposition exists to avoid. A non-finite token still gives
    a NaN output row (``_finish``), with its row zeroed before the outliers are found."""
    bits = _check_bits("bits", bits)
    threshold = _check_threshold(threshold)
    x2, bad, wc, bc, out_shape = _linear_inputs(x, w, b)
    outliers = x2.abs().amax(dim=0) > threshold  # outlier_columns of the finite tokens, without its check
    n_out = int(outliers.sum())  # the one read-back (see above)
    if n_out < outliers.shape[0]:
        regular = ~outliers
        y = _vectorwise(x2[:, regular], wc[:, regular], bits)  # int8
    else:
        y = x2.new_zeros((x2.shape[0], wc.shape[0]))
    if n_out:
        y = y + x2[:, outliers] @ wc[:, outliers].t()  # float, on the outlier columns only
    return _finish(y, bad, bc, out_shape, x.dtype)


def _w8a8(x2: torch.Tensor, w: torch.Tensor, act_granularity: str, weight_granularity: str, bits: int):
    """Symmetric fake-quantization of both (finite) operands, then a float matmul; no read-back."""
    if act_granularity == "token":
        xq = _fake_symmetric(x2, bits, "channel", axis=0)
    else:
        xq = _fake_symmetric(x2, bits, "tensor")
    if weight_granularity == "channel":
        wq = _fake_symmetric(w, bits, "channel", axis=0)
    else:
        wq = _fake_symmetric(w, bits, "tensor")
    return xq @ wq.t()


def w8a8_linear(
    x: torch.Tensor,
    w: torch.Tensor,
    b: torch.Tensor | None = None,
    *,
    act_granularity: str = "token",
    weight_granularity: str = "channel",
    bits: int = 8,
) -> torch.Tensor:
    """Simulated W8A8 (symmetric absmax fake-quantization of ``x`` per token or tensor and of ``w`` per
    channel or tensor, float matmul); same contract as :func:`effx_lab.quant._np_outliers.w8a8_linear`."""
    check_choice("act_granularity", act_granularity, ACT_GRANULARITIES)
    check_choice("weight_granularity", weight_granularity, WEIGHT_GRANULARITIES)
    bits = _check_bits("bits", bits)
    x2, bad, wc, bc, out_shape = _linear_inputs(x, w, b)
    return _finish(_w8a8(x2, wc, act_granularity, weight_granularity, bits), bad, bc, out_shape, x.dtype)


# =========================================================================== PEG (section 02.4)
def peg_permutation(ranges: torch.Tensor, n_groups: int) -> torch.Tensor:
    """PEG's range-based permutation: stable ascending argsort of ``ranges [D]`` (int64); ``n_groups`` must
    divide ``D``. Same contract as :func:`effx_lab.quant._np_outliers.peg_permutation`."""
    _tensor("ranges", ranges, ndim=1)
    _check_n_groups(n_groups, ranges.shape[0])
    return torch.argsort(ranges, stable=True).to(torch.int64)


def peg_fake_quantize(
    x: torch.Tensor, n_groups: int, bits: int = 8, permute: bool = True, calib: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-embedding-group affine fake-quantization of ``x [..., D]`` with ranges from ``calib`` (default
    ``x``); same contract as :func:`effx_lab.quant._np_outliers.peg_fake_quantize`."""
    _tensor("x", x)
    d = x.shape[-1]
    n_groups = _check_n_groups(n_groups, d)
    bits = _check_bits("bits", bits)
    permute = check_bool("permute", permute)
    if calib is None:
        calib = x
    _tensor("calib", calib, like=x)
    if calib.shape[-1] != d:
        raise ValueError(f"calib must have the last dimension of x ({d}), got shape {tuple(calib.shape)}")
    cdt = _compute_dtype(x.dtype, calib.dtype)
    x2 = x.reshape(-1, d).to(cdt)
    c2 = calib.reshape(-1, d).to(cdt)
    order = peg_permutation(c2.amax(dim=0) - c2.amin(dim=0), n_groups) if permute else None
    if order is not None:
        x2, c2 = x2[:, order], c2[:, order]
    size = d // n_groups
    # [tokens, n_groups, size]: "channel" on axis 1 = one (scale, zero point) per group over tokens and dims
    qp = compute_qparams(c2.reshape(-1, n_groups, size), bits, False, "channel", axis=1)
    xg = x2.reshape(-1, n_groups, size)
    y = dequantize(quantize(xg, qp), qp, dtype=x.dtype).reshape(-1, d)
    if order is not None:
        out = torch.empty_like(y)
        out[:, order] = y
        y = out
    return y.reshape(x.shape)


# =========================================================================== ZeroQuant (section 02.4)
def zeroquant_linear(
    x: torch.Tensor,
    w: torch.Tensor,
    b: torch.Tensor | None = None,
    *,
    w_bits: int = 8,
    group_size: int | None = 64,
    a_bits: int = 8,
) -> torch.Tensor:
    """ZeroQuant: group-wise symmetric weights, token-wise symmetric activations, float matmul; same contract
    as :func:`effx_lab.quant._np_outliers.zeroquant_linear`."""
    w_bits = _check_bits("w_bits", w_bits)
    a_bits = _check_bits("a_bits", a_bits)
    x2, bad, wc, bc, out_shape = _linear_inputs(x, w, b)
    group_size = _check_group_size(group_size, wc.shape[1])
    if group_size is None:
        wq = _fake_symmetric(wc, w_bits, "channel", axis=0)
    else:
        wq = _fake_symmetric(wc, w_bits, "group", axis=-1, group_size=group_size)
    xq = _fake_symmetric(x2, a_bits, "channel", axis=0)  # token-wise
    return _finish(xq @ wq.t(), bad, bc, out_shape, x.dtype)


def layernorm_quantize_rows(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-5, bits: int = 8
) -> tuple[torch.Tensor, torch.Tensor]:
    """``F.layer_norm`` then one symmetric absmax scale per row (token): ``(q int8 [..., D], scale [...])``;
    same contract as :func:`effx_lab.quant._np_outliers.layernorm_quantize_rows` (a quantizer: ``x`` must be
    finite, which reads one flag back). ``effx_lab.quant.kernels.layernorm_quantize_rows`` fuses the two."""
    for name, value in (("x", x), ("weight", weight), ("bias", bias)):
        require_tensor(name, value)
    eps, bits = _check_layernorm(x, weight, bias, eps, bits, allow_torch=True)
    for name, value in (("weight", weight), ("bias", bias)):
        if value.device != x.device:
            raise ValueError(f"{name} must be on the device of x ({x.device}), got {value.device}")
    cdt = _compute_dtype(x.dtype)
    y = F.layer_norm(x.to(cdt), (x.shape[-1],), weight.to(cdt), bias.to(cdt), eps)
    q, scale = absmax_quantize(y, axis=-1, bits=bits)
    return q, scale[..., 0]


# =========================================================================== SmoothQuant (section 02.6)
def smooth_scales(act_absmax: torch.Tensor, w: torch.Tensor, alpha: float = 0.5) -> torch.Tensor:
    """``s_j = max(max|X_j|, 1e-5)^alpha / max(max|W_j|, 1e-5)^(1 - alpha)``; same contract as
    :func:`effx_lab.quant._np_outliers.smooth_scales`."""
    _tensor("w", w, ndim=2)
    require_tensor("act_absmax", act_absmax)
    _check_act_absmax(act_absmax, w.shape[1], allow_torch=True)
    if act_absmax.device != w.device:
        raise ValueError(f"act_absmax must be on the device of w ({w.device}), got {act_absmax.device}")
    alpha = check_float("alpha", alpha, min_value=0.0, max_value=1.0)
    return _smooth_scales(act_absmax, w, alpha)


def _smooth_scales(act_absmax: torch.Tensor, w: torch.Tensor, alpha: float) -> torch.Tensor:
    """The arithmetic of :func:`smooth_scales`, arguments already validated (no read-back)."""
    cdt = _compute_dtype(act_absmax.dtype, w.dtype)
    a_max = act_absmax.to(cdt).clamp(min=SMOOTH_EPS)
    w_max = w.to(cdt).abs().amax(dim=0).clamp(min=SMOOTH_EPS)
    return a_max**alpha / w_max ** (1.0 - alpha)


def _scales_for(s: Any, d: int, like: torch.Tensor) -> torch.Tensor:
    require_tensor("s", s)
    _check_scales(s, d, allow_torch=True)
    if s.device != like.device:
        raise ValueError(f"s must be on the device {like.device}, got {s.device}")
    return s


def smooth_weight(w: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """``w * s[None, :]`` in ``w``'s dtype."""
    _tensor("w", w, ndim=2)
    s = _scales_for(s, w.shape[1], w)
    cdt = _compute_dtype(w.dtype, s.dtype)
    return (w.to(cdt) * s.to(cdt)).to(w.dtype)


def smooth_activation(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """``x / s`` (over the last dimension) in ``x``'s dtype."""
    _tensor("x", x)
    s = _scales_for(s, x.shape[-1], x)
    cdt = _compute_dtype(x.dtype, s.dtype)
    return (x.to(cdt) / s.to(cdt)).to(x.dtype)


def fold_smoothing(
    ln_weight: torch.Tensor, ln_bias: torch.Tensor | None, s: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(ln_weight / s, ln_bias / s)`` (``ln_bias`` may be None); same contract as
    :func:`effx_lab.quant._np_outliers.fold_smoothing`."""
    _tensor("ln_weight", ln_weight, ndim=1)
    s = _scales_for(s, ln_weight.shape[0], ln_weight)
    if ln_bias is not None:
        _tensor("ln_bias", ln_bias, like=ln_weight, ndim=1)
        if ln_bias.shape != ln_weight.shape:
            raise ValueError(
                f"ln_bias must have the shape of ln_weight {tuple(ln_weight.shape)}, got {tuple(ln_bias.shape)}"
            )

    def divide(p: torch.Tensor) -> torch.Tensor:
        cdt = _compute_dtype(p.dtype, s.dtype)
        return (p.to(cdt) / s.to(cdt)).to(p.dtype)

    return divide(ln_weight), None if ln_bias is None else divide(ln_bias)


def smoothquant_linear(
    x: torch.Tensor,
    w: torch.Tensor,
    b: torch.Tensor | None = None,
    *,
    alpha: float = 0.5,
    act_absmax: torch.Tensor | None = None,
    act_granularity: str = "tensor",
    bits: int = 8,
) -> torch.Tensor:
    """SmoothQuant W8A8: ``w8a8_linear(x / s, w * s, b, act_granularity, weight_granularity="channel")`` with
    ``s = smooth_scales(act_absmax, w, alpha)``; same contract as
    :func:`effx_lab.quant._np_outliers.smoothquant_linear`. A calibrated ``act_absmax`` is validated as in
    :func:`smooth_scales`; the factors computed from ``x`` itself (and ``x / s``) are not read back."""
    check_choice("act_granularity", act_granularity, ACT_GRANULARITIES)
    bits = _check_bits("bits", bits)
    x2, bad, wc, bc, out_shape = _linear_inputs(x, w, b)
    if act_absmax is None:
        act_absmax = x2.abs().amax(dim=0)  # over the finite tokens (the others are zeroed)
    else:
        require_tensor("act_absmax", act_absmax)
        _check_act_absmax(act_absmax, wc.shape[1], allow_torch=True)
        if act_absmax.device != wc.device:
            raise ValueError(f"act_absmax must be on the device of w ({wc.device}), got {act_absmax.device}")
    alpha = check_float("alpha", alpha, min_value=0.0, max_value=1.0)
    s = _smooth_scales(act_absmax, wc, alpha).to(x2.dtype)  # > 0 and finite: both maxima clamped to >= 1e-5
    # smooth_activation(x2, s) and smooth_weight(wc, s) without their checks (s is already x2's dtype)
    y = _w8a8(x2 / s, wc * s, act_granularity, "channel", bits)
    return _finish(y, bad, bc, out_shape, x.dtype)

