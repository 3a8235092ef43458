"""Chapter 2 benchmarks: ``python -m effx_lab.bench quant`` (or ``ch02``), or the pieces from a notebook.

Weight-only quantization pays off where a layer is limited by the bytes of its weights: the decode step of a
language model, one token at a time, multiplies a ``[1, K]`` activation by every ``[N, K]`` weight matrix and
does two FLOPs per weight it reads. Storing the weights in int8 (int4) moves 4x (8x) fewer bytes than float32,
so the best a kernel can do is to be 4x (8x) faster, *if* turning the integers back into floats costs less
than the memory traffic it saves. Everything here measures that on the reader's device, side by side
(:func:`effx_lab.bench.compare`: all candidates timed in one run, interleaved round by round, so that their
ratios survive a busy machine):

* :func:`gemv_fns`: the decode GEMV ``y = x W^T`` for ``x [1, K]``, ``W [N, K]`` (default 4096 x 4096), as
  zero-argument callables, one per *path*: float baselines (``F.linear`` in float32, bfloat16, float16),
  the course's weight-only linears (``w8a16_linear``, ``w4a16_linear`` of :mod:`effx_lab.quant.torch_ops`:
  on CPU a fused multiply-and-sum over the integer bytes compiled by ``torch.compile``, see
  :mod:`effx_lab.quant._torch_fused` and :func:`fused_backend`; their eager blocked fallback as the
  ``*_ours_eager`` paths; on CUDA dequantize, then matmul), a row-blocked int8 formulation in plain PyTorch
  (:func:`_make_w8a16_rowblocked`), the library kernels a user would pick (``torch._weight_int8pack_mm``;
  ``torch.ops.aten._weight_int4pack_mm_for_cpu`` on CPU, ``torch._weight_int4pack_mm`` on CUDA) and, on a
  GPU, the course's Triton kernels (:mod:`effx_lab.quant.kernels`). Every path's output is checked against a
  float64 reference before it is timed.
* :func:`decode_gemv`: times those paths at one thread count and reports per path the median time, the
  effective bandwidth (bytes the path must read, over its time), the speed-up over float32 and over the
  library op of the same width, the bytes-limited ideal speed-up, and the relative errors.
* :func:`gptq_numpy_vs_torch`: the NumPy reference GPTQ against the PyTorch one on one layer (same losses?).
* :func:`int8_gemm_vs_int_mm`: on a CUDA GPU, the Triton ``int8_gemm`` against ``torch._int_mm`` and a
  float16 cuBLAS matmul (a prefill-sized GEMM).
* :func:`run`: all of it with the chapter's goals as computed ratios, each ``{"value", "goal", "met"}``.

**Cold weights.** A model's layers do not share weights, so in a real decode step every weight matrix comes
from main memory. A benchmark that calls one layer over and over would instead find a small (int8: 16 MiB,
int4: 8 MiB) matrix in the CPU's last-level cache (32 MiB on the machine this was tuned on) and report a
cache speed, not a memory speed. With ``cold_bytes > 0`` every path cycles through enough copies of its
weights to touch at least ``cold_bytes`` bytes between two uses of one copy, as the layers of a model would.
On a CUDA GPU the timer (``triton.testing.do_bench``) flushes the L2 cache before each call instead.

Every public function returns plain JSON-able values (converted by :func:`effx_lab.bench.to_jsonable`).
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from effx_lab._validate import check_bool, check_float, check_int, describe
from effx_lab.bench import check_threads, cpu_cores, goal, limit_threads, load_average
from effx_lab.device import resolve_torch_device

from . import _torch_fused
from ._torch_fused import fused_backend
from ._torch_fused import route as _route

__all__ = [
    "CPU_PATHS",
    "CUDA_PATHS",
    "GOALS",
    "PATH_INFO",
    "RUN_CONFIG",
    "decode_gemv",
    "format_gemv",
    "fused_backend",
    "gemv_fns",
    "gptq_numpy_vs_torch",
    "int8_gemm_vs_int_mm",
    "run",
]

#: what each path of :func:`gemv_fns` computes: ``(kind, description)``; kind is "baseline", "ours" (the
#: course's PyTorch functions), "suggested" (a plain-PyTorch formulation measured here), "library" (a kernel
#: shipped with PyTorch) or "triton" (the course's Triton kernels)
PATH_INFO: dict[str, tuple[str, str]] = {
    "fp32": ("baseline", "F.linear, float32 weights and activations"),
    "bf16": ("baseline", "F.linear, bfloat16 weights and activations"),
    "fp16": ("baseline", "F.linear, float16 weights and activations (cuBLAS on a GPU)"),
    "int8_ours_fp32": ("ours", "torch_ops.w8a16_linear, float32 x (CPU: fused multiply-and-sum, compiled)"),
    "int8_ours_bf16": ("ours", "torch_ops.w8a16_linear, bfloat16 x (CPU: fused, compiled, float32 sums)"),
    "int8_ours_fp16": ("ours", "torch_ops.w8a16_linear, float16 x (CUDA: int8 -> float16 weights, matmul)"),
    "int8_ours_eager": (
        "ours",
        "the eager fallback of w8a16_linear, float32 x: row blocks -> one reused float32 buffer, mm",
    ),
    "int8_rowblocked": (
        "suggested",
        (
            "plain PyTorch, float32 x: int8 rows converted block by block into one reused cache-sized float32 "
            "buffer, then mm into the output (the weights stream from memory once, as int8)"
        ),
    ),
    "int8_torch_lib": ("library", "torch._weight_int8pack_mm (bfloat16 x, bfloat16 per-channel scales)"),
    "int8_triton": ("triton", "kernels.w8a16_matmul: int8 -> float in registers, float32 accumulation"),
    "int4_ours_fp32": ("ours", "torch_ops.w4a16_linear, float32 x (CPU: fused unpack-scale-sum, compiled)"),
    "int4_ours_bf16": ("ours", "torch_ops.w4a16_linear, bfloat16 x (CPU: fused, compiled, float32 sums)"),
    "int4_ours_fp16": ("ours", "torch_ops.w4a16_linear, float16 x (CUDA: unpack, dequantize, matmul)"),
    "int4_ours_eager": (
        "ours",
        "the eager fallback of w4a16_linear, float32 x: row blocks unpacked and scaled into one buffer, mm",
    ),
    "int4_torch_lib": (
        "library",
        (
            "aten._weight_int4pack_mm_for_cpu (CPU) / torch._weight_int4pack_mm (CUDA tinygemm): bfloat16 x, "
            "bfloat16 group scales and zeros"
        ),
    ),
    "int4_triton": ("triton", "kernels.w4a16_matmul: nibbles unpacked and scaled in registers"),
}
#: the paths :func:`gemv_fns` builds by default on CPU (the Triton ones only run in the interpreter there)
CPU_PATHS = (
    "fp32",
    "bf16",
    "int8_ours_fp32",
    "int8_ours_bf16",
    "int8_rowblocked",
    "int8_torch_lib",
    "int4_ours_fp32",
    "int4_ours_bf16",
    "int4_torch_lib",
)
#: the paths :func:`gemv_fns` builds by default on a CUDA GPU
CUDA_PATHS = (
    "fp32",
    "fp16",
    "bf16",
    "int8_ours_fp16",
    "int8_triton",
    "int8_torch_lib",
    "int4_ours_fp16",
    "int4_triton",
    "int4_torch_lib",
)
#: the chapter's targets. Decode GEMV on CPU: the course's own int8 / int4 paths (``*_ours_*``, the best of
#: their activation dtypes) at least 2.5x faster than float32 and at least as fast as bfloat16 ``F.linear``;
#: the best path of any kind (the library ops included: what the device can do) 3x / 5x. Torch GPTQ over
#: NumPy GPTQ.
GOALS = {
    "int8_ours_over_fp32": 2.5,
    "int4_ours_over_fp32": 2.5,
    "int8_ours_over_bf16": 1.0,
    "int4_ours_over_bf16": 1.0,
    "int8_over_fp32": 3.0,
    "int4_over_fp32": 5.0,
    "gptq_torch_over_numpy": 10.0,
}

_ROWBLOCK_BYTES = 4 * 2**20  # float32 rows converted at a time by the row-blocked int8 path (a few MiB: cache)


# ----------------------------------------------------------------------------------------------------------
# small helpers
# ----------------------------------------------------------------------------------------------------------
def _rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    """``||y - ref|| / ||ref||`` in float64 (on CPU)."""
    y64 = y.detach().to("cpu", torch.float64).reshape(ref.shape)
    den = float(torch.linalg.vector_norm(ref))
    return float(torch.linalg.vector_norm(y64 - ref)) / (den if den > 0 else 1.0)


def _ours() -> tuple[Any, str | None]:
    """The module with the course's torch weight-only functions (``w8a16_linear``...), or ``(None, why)``.

    The public face :mod:`effx_lab.quant.torch_ops` once the topic module is re-exported there, else the
    topic module ``effx_lab.quant._torch_gptq`` itself.
    """
    from effx_lab.quant import torch_ops

    if hasattr(torch_ops, "w8a16_linear"):
        return torch_ops, None
    try:
        from effx_lab.quant import _torch_gptq
    except ImportError as exc:
        return None, f"the course's torch weight-only functions are not available: {exc}"
    return _torch_gptq, None


def _ours_numpy() -> tuple[Any, str | None]:
    from effx_lab.quant import reference

    if hasattr(reference, "gptq_quantize"):
        return reference, None
    try:
        from effx_lab.quant import _np_gptq
    except ImportError as exc:
        return None, f"the course's NumPy GPTQ is not available: {exc}"
    return _np_gptq, None


def _kernels() -> tuple[Any, str | None]:
    try:
        from effx_lab.quant import kernels
    except ImportError as exc:
        return None, f"effx_lab.quant.kernels failed to import: {exc}"
    if not kernels.available():
        return None, f"the Triton kernels cannot run: {kernels.why_unavailable()}"
    return kernels, None


# ----------------------------------------------------------------------------------------------------------
# quantized weights for the GEMV (symmetric absmax, restricted range, as in the rest of the chapter)
# ----------------------------------------------------------------------------------------------------------
def _absmax_int(w: torch.Tensor, bits: int, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Integers ``q`` (int8, in ``[-qmax, qmax]``) and float32 scales ``[N, K / group_size]`` with the course's
    :func:`effx_lab.quant.torch_ops.compute_qparams` / ``quantize`` (symmetric, per row and group)."""
    from effx_lab.quant import torch_ops as T

    k = w.shape[1]
    if group_size == k:
        qp = T.compute_qparams(w, bits=bits, symmetric=True, granularity="channel", axis=0)
    else:
        qp = T.compute_qparams(w, bits=bits, symmetric=True, granularity="group", axis=-1, group_size=group_size)
    q = T.quantize(w, qp).to(torch.int8)
    return q, qp.scale.reshape(w.shape[0], -1).to(torch.float32)


def _unpack_nibbles(packed: torch.Tensor) -> torch.Tensor:
    """The spec's int4 format read back independently of the code under test: byte ``i`` holds ``q[2i] + 8``
    in its low nibble and ``q[2i + 1] + 8`` in its high nibble."""
    p = packed.to(torch.int16)
    lo, hi = (p & 15) - 8, (p >> 4) - 8
    return torch.stack([lo, hi], dim=-1).reshape(*packed.shape[:-1], 2 * packed.shape[-1])


def _dequant(q: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """float64 ``q * scale`` with ``scales [N, G]`` repeated over groups of ``K / G`` columns."""
    n, k = q.shape
    s = scales.detach().to("cpu", torch.float64).reshape(n, -1)
    return q.detach().to("cpu", torch.float64) * s.repeat_interleave(k // s.shape[1], dim=1)


def _make_w8a16_rowblocked(k: int, device: torch.device, block_rows: int | None = None) -> Callable[..., torch.Tensor]:
    """A plain-PyTorch ``y = (x @ q^T) * scales`` (float32 ``x [M, K]``, int8 ``q [N, K]``, ``scales [N]``).

    ``x @ q.T.to(x.dtype)`` first writes the whole weight matrix as floats (4x the int8 bytes) and reads it back:
    more memory traffic than the float32 GEMV it is meant to beat. Here ``block_rows`` rows of ``q`` at a time
    (default: 4 MiB of float32) are converted into one buffer allocated once, which stays in cache, and
    multiplied into their slice of the output: the weights come from memory once, as int8. On CPU the int8 ->
    float32 conversion then sets the speed.
    """
    if block_rows is None:
        block_rows = max(1, _ROWBLOCK_BYTES // (4 * k))
    buf = torch.empty(block_rows, k, dtype=torch.float32, device=device)

    def w8a16_rowblocked(x: torch.Tensor, q: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, k)
        n = q.shape[0]
        out_t = torch.empty(n, x2.shape[0], dtype=torch.float32, device=x.device)  # y^T: row blocks contiguous
        for i in range(0, n, block_rows):
            r = min(block_rows, n - i)
            b = buf[:r]
            b.copy_(q[i : i + r])
            torch.mm(b, x2.t(), out=out_t[i : i + r])
        return (out_t.t() * scales).reshape(*x.shape[:-1], n)

    return w8a16_rowblocked


def _int4_lib_cpu(q: torch.Tensor, scales: torch.Tensor, group_size: int, x: torch.Tensor):
    """CPU int4 library op: weights as int32 ``q + 8`` in 0..15, ``[N, K]``; ``qScaleAndZeros [K/g, N, 2]``
    (scale, zero) with ``w = (q_stored - 8) * scale + zero``; zero = 0 for symmetric weights."""
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.to(torch.int32) + 8, 2)
    sz = torch.stack([scales.t(), torch.zeros_like(scales.t())], dim=-1).contiguous().to(x.dtype)
    return packed, sz


def _int4_lib_cuda(q: torch.Tensor, scales: torch.Tensor, group_size: int, x: torch.Tensor):
    """CUDA tinygemm (``torch._weight_int4pack_mm``): uint8 ``[N, K/2]`` with the *even* k in the high nibble
    (torch >= 2.5; older versions took int32 ``[N, K]``), 8 inner k-tiles, bfloat16 scales and zeros
    ``[K/g, N, 2]``, ``w = (q_stored - 8) * scale + zero``. Unverified layouts show up in ``rel_err_vs_dequant``."""
    u = q.to(torch.int32) + 8
    try:
        packed = torch.ops.aten._convert_weight_to_int4pack((u[:, ::2] << 4 | u[:, 1::2]).to(torch.uint8), 8)
    except RuntimeError:
        packed = torch.ops.aten._convert_weight_to_int4pack(u.contiguous(), 8)
    sz = torch.stack([scales.t(), torch.zeros_like(scales.t())], dim=-1).contiguous().to(x.dtype)
    return packed, sz


# ----------------------------------------------------------------------------------------------------------
# the decode GEMV
# ----------------------------------------------------------------------------------------------------------
def _paths_arg(paths: Any, default: tuple[str, ...]) -> tuple[str, ...]:
    if paths is None:
        return default
    if isinstance(paths, str):
        paths = (paths,)
    if not isinstance(paths, (list, tuple)) or not paths:
        raise TypeError(
            f"paths must be None or a non-empty list of names from {sorted(PATH_INFO)}, got {describe(paths)}"
        )
    for p in paths:
        if p not in PATH_INFO:
            raise ValueError(f"paths must be names from {sorted(PATH_INFO)}, got {p!r}")
    if len(set(paths)) != len(paths):
        raise ValueError(f"paths must not repeat a name, got {list(paths)}")
    if "fp32" not in paths:
        raise ValueError(f"paths must include 'fp32' (the baseline every ratio is taken against), got {list(paths)}")
    return tuple(paths)


def _gemv_args(n: Any, k: Any, group_size: Any, seed: Any, cold_bytes: Any) -> tuple[int, int, int, int, int]:
    n = check_int("n", n, min_value=1)
    k = check_int("k", k, min_value=2)
    group_size = check_int("group_size", group_size, min_value=2)
    if k % group_size or group_size % 2:
        raise ValueError(f"group_size must be even and divide k = {k}, got group_size = {group_size}")
    seed = check_int("seed", seed, min_value=0)
    cold_bytes = check_int("cold_bytes", cold_bytes, min_value=0)
    return n, k, group_size, seed, cold_bytes


def gemv_fns(
    n: int = 4096,
    k: int = 4096,
    *,
    group_size: int = 128,
    device: Any = None,
    seed: int = 0,
    cold_bytes: int = 0,
    paths: Sequence[str] | None = None,
) -> tuple[dict[str, Callable[[], torch.Tensor]], dict[str, dict[str, Any]], dict[str, str]]:
    """The decode GEMV ``y = x W^T`` (``x [1, k]``, ``W [n, k]``) along every path of :data:`PATH_INFO`.

    Weights ``W ~ N(0, 0.02^2)`` and ``x ~ N(0, 1)`` from ``seed``. The int8 paths use one float32 scale per
    output row, the int4 paths one per row and group of ``group_size`` inputs (symmetric, ``[-127, 127]`` and
    ``[-7, 7]``); the course's paths get their weights from ``quantize_weight_int8`` / ``quantize_weight_int4``,
    the library and Triton paths from :func:`effx_lab.quant.torch_ops.quantize` (the same integers). ``paths``
    (default :data:`CPU_PATHS` or :data:`CUDA_PATHS` by device; must include ``"fp32"``) picks a subset; a path
    that cannot run here (library op missing, shape it does not support, Triton unavailable) is left out with
    the reason. With ``cold_bytes > 0`` each path cycles through ``ceil(cold_bytes / its weight bytes)`` copies of
    its weights (see the module docstring); ``0`` times one copy (cache-warm when it fits).

    Before returning, every path is called once and checked: ``rel_err_vs_fp32`` is ``||y - x W^T|| / ||x W^T||``
    against the original float weights in float64 (the quantization error plus the arithmetic), and
    ``rel_err_vs_dequant`` the same against ``x_a W_hat^T`` in float64 where ``W_hat`` are the path's own
    dequantized weights and ``x_a`` is ``x`` rounded to the path's activation dtype (the arithmetic alone: a
    broken kernel shows up here).

    Returns ``(fns, meta, skipped)``: ``fns[name]`` a zero-argument callable (under ``torch.inference_mode()``),
    ``meta[name]`` ``{"kind", "what", "act_dtype", "weight_bytes", "bytes_moved", "copies", "rel_err_vs_fp32",
    "rel_err_vs_dequant"}``, ``skipped[name]`` the reason a requested path is missing.
    """
    n, k, group_size, seed, cold_bytes = _gemv_args(n, k, group_size, seed, cold_bytes)
    dev = resolve_torch_device(device)
    paths = _paths_arg(paths, CUDA_PATHS if dev.type == "cuda" else CPU_PATHS)
    half = torch.float16 if dev.type == "cuda" else torch.bfloat16
    gen = torch.Generator(device="cpu").manual_seed(seed)
    w = torch.randn((n, k), generator=gen) * 0.02
    x = torch.randn((1, k), generator=gen)
    x64, w64 = x.double(), w.double()
    ref_fp32 = x64 @ w64.T

    fns: dict[str, Callable[[], torch.Tensor]] = {}
    meta: dict[str, dict[str, Any]] = {}
    skipped: dict[str, str] = {}
    xs = {dt: x.to(device=dev, dtype=dt) for dt in (torch.float32, torch.float16, torch.bfloat16)}
    cache: dict[str, Any] = {}

    def q8() -> tuple[torch.Tensor, torch.Tensor]:
        if "q8" not in cache:
            q, s = _absmax_int(w, 8, k)
            cache["q8"] = (q.to(dev), s.reshape(n).to(dev))
        return cache["q8"]

    def q4() -> tuple[torch.Tensor, torch.Tensor]:
        if "q4" not in cache:
            q, s = _absmax_int(w, 4, group_size)
            cache["q4"] = (q.to(dev), s.to(dev))
        return cache["q4"]

    def add(name: str, act: torch.dtype, op: Callable[..., torch.Tensor], weights: tuple, w_hat: torch.Tensor) -> None:
        """Check ``op(x_act, *weights)`` against the references, then register it with its cold copies."""
        xa = xs[act]
        with torch.inference_mode():
            y = op(xa, *weights)
        if tuple(y.shape) != (1, n):
            raise RuntimeError(f"path {name} returned shape {tuple(y.shape)}, expected (1, {n})")
        weight_bytes = sum(t.numel() * t.element_size() for t in weights)
        copies = max(1, math.ceil(cold_bytes / weight_bytes)) if cold_bytes else 1
        sets = [weights] + [tuple(t.clone() for t in weights) for _ in range(copies - 1)]
        nxt = itertools.cycle(sets).__next__

        def call() -> torch.Tensor:
            with torch.inference_mode():
                return op(xa, *nxt())

        call.__name__ = name
        fns[name] = call
        kind, what = PATH_INFO[name]
        meta[name] = {
            "kind": kind,
            "what": what,
            "act_dtype": str(act).replace("torch.", ""),
            "weight_bytes": weight_bytes,
            "bytes_moved": weight_bytes + xa.numel() * xa.element_size() + n * y.element_size(),
            "copies": copies,
            "rel_err_vs_fp32": _rel_err(y, ref_fp32),
            "rel_err_vs_dequant": _rel_err(y, xa.to("cpu", torch.float64) @ w_hat.T),
        }

    ours, ours_why = _ours() if any("_ours_" in p for p in paths) else (None, None)
    kern, kern_why = _kernels() if any(p.endswith("_triton") for p in paths) else (None, None)
    for name in paths:
        try:
            if name in ("fp32", "bf16", "fp16"):
                dt = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]
                wd = w.to(device=dev, dtype=dt)
                add(name, dt, F.linear, (wd,), wd.to("cpu", torch.float64))
            elif "_ours_" in name and not name.endswith("_eager"):
                if ours is None:
                    skipped[name] = ours_why
                    continue
                act = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name.rsplit("_", 1)[1]]
                if name.startswith("int8"):
                    if "ours8" not in cache:
                        cache["ours8"] = tuple(t.to(dev) for t in ours.quantize_weight_int8(w))
                    q, s = cache["ours8"]
                    add(name, act, ours.w8a16_linear, (q, s), _dequant(q, s))
                    meta[name]["route"] = _route(1, n * k, dev)
                else:
                    if "ours4" not in cache:
                        cache["ours4"] = tuple(t.to(dev) for t in ours.quantize_weight_int4(w, group_size))
                    packed, s = cache["ours4"]

                    def w4(xa, p, sc):
                        return ours.w4a16_linear(xa, p, sc, group_size)

                    add(name, act, w4, (packed, s), _dequant(_unpack_nibbles(packed.cpu()), s))
                    meta[name]["route"] = _route(1, n * k, dev)
            elif name in ("int8_ours_eager", "int4_ours_eager"):
                if ours is None or dev.type != "cpu":
                    skipped[name] = ours_why or "the eager blocked fallback is the CPU path (CUDA dequantizes, then mm)"
                    continue
                if name == "int8_ours_eager":
                    q, s = tuple(t.to(dev) for t in ours.quantize_weight_int8(w))
                    add(name, torch.float32, _torch_fused._w8_blocked, (q, s), _dequant(q, s))
                else:
                    packed, s = tuple(t.to(dev) for t in ours.quantize_weight_int4(w, group_size))
                    add(name, torch.float32, _torch_fused._w4_blocked, (packed, s),
                        _dequant(_unpack_nibbles(packed.cpu()), s))  # fmt: skip
                meta[name]["route"] = "blocked (eager)"
            elif name == "int8_rowblocked":
                q, s = q8()
                add(name, torch.float32, _make_w8a16_rowblocked(k, dev), (q, s), _dequant(q, s))
            elif name == "int8_torch_lib":
                q, s = q8()
                add(name, torch.bfloat16, torch._weight_int8pack_mm, (q, s.to(torch.bfloat16)),
                    _dequant(q, s.to(torch.bfloat16)))  # fmt: skip
            elif name == "int4_torch_lib":
                q, s = q4()
                xb = xs[torch.bfloat16]
                if dev.type == "cuda":
                    packed, sz = _int4_lib_cuda(q, s, group_size, xb)
                    mm = torch.ops.aten._weight_int4pack_mm
                else:
                    packed, sz = _int4_lib_cpu(q, s, group_size, xb)
                    mm = torch.ops.aten._weight_int4pack_mm_for_cpu

                def w4lib(xa, p, z, mm=mm):
                    return mm(xa, p, group_size, z)

                add(name, torch.bfloat16, w4lib, (packed, sz), _dequant(q, sz[..., 0].t()))
            elif name.endswith("_triton"):
                if kern is None:
                    skipped[name] = kern_why
                    continue
                act = half if dev.type == "cuda" else torch.float32  # the interpreter: float32 (no bfloat16 in NumPy)
                if name == "int8_triton":
                    q, s = q8()
                    add(name, act, kern.w8a16_matmul, (q, s), _dequant(q, s))
                else:
                    q, s = q4()
                    if "packed4" not in cache:
                        u = (q.to(torch.int16) + 8).to(torch.uint8)
                        cache["packed4"] = (u[:, 0::2] | (u[:, 1::2] << 4)).contiguous()

                    def w4t(xa, p, sc):
                        return kern.w4a16_matmul(xa, p, sc, group_size)

                    add(name, act, w4t, (cache["packed4"], s), _dequant(q, s))
        except (RuntimeError, NotImplementedError, AttributeError, TypeError, ValueError) as exc:
            if name == "fp32":
                raise
            skipped[name] = (
                f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ''}"
            )
    return fns, meta, skipped


def decode_gemv(
    n: int = 4096,
    k: int = 4096,
    *,
    group_size: int = 128,
    threads: int | None = None,
    cold_bytes: int = 0,
    min_run_time: float = 0.2,
    rounds: int = 3,
    device: Any = None,
    seed: int = 0,
    paths: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Time the decode GEMV paths of :func:`gemv_fns` side by side (baseline ``"fp32"``).

    ``threads`` sets ``torch.set_num_threads`` for the measurement and restores it afterwards (``None``: leave
    PyTorch's setting). ``rounds`` interleaved rounds of at least ``min_run_time`` seconds per path
    (:func:`effx_lab.bench.compare`); each path's time is the median of its round medians.

    Returns ``{"config", "torch_device", "threads", "load_before", "load_after" (1/5/15-minute load
    averages), "fused_backend", "paths": {name: {"ms", "gb_s", "speedup_vs_fp32", "ideal_speedup",
    "fraction_of_ideal", "speedup_vs_16bit" (over bf16 on CPU / fp16 on CUDA, when timed), "speedup_vs_lib"
    (over the library op of the same width, ``int8_torch_lib`` / ``int4_torch_lib``, when timed; ``None`` for
    the float paths), **meta}}, "skipped", "comparison"}``. The course's paths' meta also says which ``route``
    they took (``"fused (compiled)"``, ``"blocked (eager...)"``, see :func:`effx_lab.quant._torch_fused.route`).
    ``gb_s`` is the effective bandwidth: the bytes a path must read and write (its stored weights and scales,
    ``x`` and ``y``) over its time; ``ideal_speedup`` is float32's bytes over the path's (the speed-up of a
    purely memory-bound kernel: about 4 for int8, about 8 for int4 minus its scales).
    """
    from effx_lab.bench import compare, to_jsonable

    n, k, group_size, seed, cold_bytes = _gemv_args(n, k, group_size, seed, cold_bytes)
    threads = check_threads(threads)
    min_run_time = check_float("min_run_time", min_run_time, min_value=0.0, min_inclusive=False)
    rounds = check_int("rounds", rounds, min_value=1)
    dev = resolve_torch_device(device)
    with limit_threads(threads if dev.type == "cpu" else None, blas=False) as applied:
        used = applied.torch
        fns, meta, skipped = gemv_fns(
            n, k, group_size=group_size, device=dev, seed=seed, cold_bytes=cold_bytes, paths=paths
        )
        load_before = load_average()
        comp = compare(fns, baseline="fp32", min_run_time=min_run_time, rounds=rounds, device=dev.type)
        load_after = load_average()
    del fns
    half = "fp16" if dev.type == "cuda" else "bf16"
    base = meta["fp32"]["bytes_moved"]
    out: dict[str, Any] = {}
    for name, m in meta.items():
        t = comp.timings[name].median_s
        ideal = base / m["bytes_moved"]
        speed = comp.speedup(name)
        out[name] = {
            "ms": t * 1e3,
            "gb_s": m["bytes_moved"] / t / 1e9,
            "speedup_vs_fp32": speed,
            "ideal_speedup": ideal,
            "fraction_of_ideal": speed / ideal,
            "speedup_vs_16bit": comp.timings[half].median_s / t if half in comp.timings else None,
            "speedup_vs_lib": _vs_lib(name, t, comp),
            **m,
        }
    return to_jsonable(
        {
            "config": {"n": n, "k": k, "m": 1, "group_size": group_size, "cold_bytes": cold_bytes, "seed": seed,
                       "min_run_time": min_run_time, "rounds": rounds,
                       "weights": "cold (cycling copies)" if cold_bytes and dev.type == "cpu" else
                       ("L2 flushed by do_bench" if dev.type == "cuda" else "warm (one copy, may sit in cache)")},
            "torch_device": str(dev),
            "threads": used if dev.type == "cpu" else None,
            "fused_backend": fused_backend(dev, probe=False),
            "load_before": load_before,
            "load_after": load_after,
            "paths": out,
            "skipped": skipped,
            "comparison": comp,
        }
    )  # fmt: skip


def _vs_lib(name: str, seconds: float, comp: Any) -> float | None:
    """Speed of path ``name`` relative to the library op of its width (> 1: faster than the library)."""
    lib = f"{name[:4]}_torch_lib"
    if name[:4] not in ("int8", "int4") or lib not in comp.timings:
        return None
    return comp.timings[lib].median_s / seconds


def format_gemv(result: dict[str, Any]) -> str:
    """A text table of a :func:`decode_gemv` result: per path its time, bandwidth, speed-ups and errors."""
    if not isinstance(result, dict) or "paths" not in result:
        raise TypeError(f"result must be a dict returned by decode_gemv, got {describe(result)}")
    cfg = result["config"]
    head = (
        f"decode GEMV [1, {cfg['k']}] x [{cfg['n']}, {cfg['k']}]^T on {result['torch_device']}"
        f", threads={result['threads']}, weights {cfg['weights']}, int4 group {cfg['group_size']}"
        f", load {result['load_before']} -> {result['load_after']}"
        + (f"\nfused weight-only backend: {result['fused_backend']}" if "fused_backend" in result else "")
    )
    cols = ("path", "kind", "x", "ms", "GB/s", "vs fp32", "vs lib", "ideal", "err vs fp32", "err vs deq")
    rows = [cols]
    for name, p in result["paths"].items():
        rows.append((
            name, p["kind"], p["act_dtype"], f"{p['ms']:.3f}", f"{p['gb_s']:.1f}", f"{p['speedup_vs_fp32']:.2f}x",
            "-" if p.get("speedup_vs_lib") is None else f"{p['speedup_vs_lib']:.2f}x", f"{p['ideal_speedup']:.2f}x", f"{p['rel_err_vs_fp32']:.2e}", f"{p['rel_err_vs_dequant']:.1e}",
        ))  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(cols))]
    lines = [head]
    for j, r in enumerate(rows):
        lines.append("  ".join(c.ljust(wd) if i < 3 else c.rjust(wd) for i, (c, wd) in enumerate(zip(r, widths))))
        if j == 0:
            lines.append("  ".join("-" * wd for wd in widths))
    for name, why in result.get("skipped", {}).items():
        lines.append(f"skipped {name}: {why}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------
# GPTQ: NumPy reference vs PyTorch
# ----------------------------------------------------------------------------------------------------------
def _calibration(rows: int, cols: int, tokens: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """float32 ``w [rows, cols] ~ N(0, 0.02^2)`` and calibration inputs ``x [tokens, cols]`` with correlated
    features of unequal scales (log-normal), as in a real layer, so that GPTQ's error feedback matters."""
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((rows, cols)) * 0.02).astype(np.float32)
    z = rng.standard_normal((tokens, cols))
    mix = np.eye(cols) + rng.standard_normal((cols, cols)) * (0.5 / math.sqrt(cols))
    x = (z @ mix) * np.exp(rng.normal(0.0, 0.75, cols))
    return w, x.astype(np.float32)


def gptq_numpy_vs_torch(
    rows: int = 1024,
    cols: int = 1024,
    tokens: int = 2048,
    bits: int = 4,
    group_size: int | None = 128,
    *,
    min_run_time: float = 0.1,
    rounds: int = 1,
    threads: int | None = 1,
    seed: int = 0,
) -> dict[str, Any]:
    """The NumPy reference ``gptq_quantize`` against the PyTorch one on one ``[rows, cols]`` layer (float32).

    Calibration: ``tokens`` correlated inputs of unequal feature scales (:func:`_calibration`); each backend
    builds its Hessian with its own ``gptq_hessian`` (not timed) and quantizes with ``bits``, ``group_size``
    (asymmetric, GPTQ's default). Timed side by side with ``threads`` torch threads and, when threadpoolctl is
    installed, the same number of BLAS threads for NumPy (``numpy_blas_threads`` says what was applied).

    Correctness first: ``loss_numpy`` / ``loss_torch`` (GPTQ's summed error, the paper's ``Losses``) and their
    relative difference, ``code_agreement`` (fraction of equal integer codes: float32 rounding can flip a code
    at a tie, and GPTQ's error feedback then moves later columns a little), ``output_error`` of both (relative
    squared output error on the calibration inputs, ``layer_output_error``) next to round-to-nearest's at the
    same grid (``rtn_output_error``: GPTQ should be lower). Returns those, ``numpy_s``, ``torch_s``,
    ``speedup`` (numpy / torch), ``config`` and the ``comparison``.
    """
    from effx_lab.bench import compare, to_jsonable

    rows = check_int("rows", rows, min_value=1)
    cols = check_int("cols", cols, min_value=1)
    tokens = check_int("tokens", tokens, min_value=1)
    bits = check_int("bits", bits, min_value=2, max_value=8)
    if group_size is not None:
        group_size = check_int("group_size", group_size, min_value=1)
        if cols % group_size:
            raise ValueError(f"group_size must divide cols = {cols}, got {group_size}")
    min_run_time = check_float("min_run_time", min_run_time, min_value=0.0, min_inclusive=False)
    rounds = check_int("rounds", rounds, min_value=1)
    threads = check_threads(threads)
    seed = check_int("seed", seed, min_value=0)
    R, why = _ours_numpy()
    T, why_t = _ours()
    if R is None or T is None:
        return {"skipped": why or why_t}

    w, x = _calibration(rows, cols, tokens, seed)
    wt, xt = torch.from_numpy(w), torch.from_numpy(x)
    kw = {"bits": bits, "group_size": group_size, "symmetric": False}
    with limit_threads(threads) as applied:
        used, blas_threads = applied.torch, applied.blas
        h_np = R.gptq_hessian(x)
        with torch.inference_mode():
            h_t = T.gptq_hessian(xt)
        t0 = time.perf_counter()
        res_np = R.gptq_quantize(w, h_np, **kw)
        first_numpy_s = time.perf_counter() - t0
        with torch.inference_mode():
            res_t = T.gptq_quantize(wt, h_t, **kw)
        load_before = load_average()

        def torch_call() -> Any:
            with torch.inference_mode():
                return T.gptq_quantize(wt, h_t, **kw)

        comp = compare(
            {"numpy": lambda: R.gptq_quantize(w, h_np, **kw), "torch": torch_call},
            baseline="numpy",
            min_run_time=min_run_time,
            rounds=rounds,
            device="cpu",
        )
        load_after = load_average()
        rtn = R.rtn_quantize_weight(w, bits=bits, group_size=group_size, symmetric=False)
        err_np = float(R.layer_output_error(w, np.asarray(res_np.weight), x))
        err_t = float(R.layer_output_error(w, res_t.weight.detach().cpu().numpy(), x))
        err_rtn = float(R.layer_output_error(w, np.asarray(rtn), x))
    loss_np, loss_t = float(res_np.loss), float(res_t.loss)
    q_np, q_t = np.asarray(res_np.q), res_t.q.detach().cpu().numpy()
    return to_jsonable(
        {
            "numpy_s": comp.timings["numpy"].median_s,
            "torch_s": comp.timings["torch"].median_s,
            "speedup": comp.speedup("torch"),
            "first_numpy_call_s": first_numpy_s,
            "loss_numpy": loss_np,
            "loss_torch": loss_t,
            "loss_rel_diff": abs(loss_np - loss_t) / max(abs(loss_np), 1e-30),
            "code_agreement": float(np.mean(q_np == q_t)),
            "weight_max_abs_diff": float(np.abs(np.asarray(res_np.weight) - res_t.weight.detach().cpu().numpy()).max()),
            "output_error_numpy": err_np,
            "output_error_torch": err_t,
            "rtn_output_error": err_rtn,
            "load_before": load_before,
            "load_after": load_after,
            "config": {"rows": rows, "cols": cols, "tokens": tokens, "bits": bits, "group_size": group_size,
                       "symmetric": False, "dtype": "float32", "threads": used, "numpy_blas_threads": blas_threads,
                       "seed": seed},
            "comparison": comp,
        }
    )  # fmt: skip


# ----------------------------------------------------------------------------------------------------------
# CUDA: int8 GEMM (Triton) vs torch._int_mm
# ----------------------------------------------------------------------------------------------------------
def int8_gemm_vs_int_mm(
    m: int = 4096,
    n: int = 4096,
    k: int = 4096,
    *,
    min_run_time: float = 0.1,
    rounds: int = 3,
    seed: int = 0,
    device: Any = None,
) -> dict[str, Any]:
    """On a CUDA GPU: the course's Triton ``int8_gemm`` (int8 x int8 -> int32, row/column-scale epilogue fused)
    against ``torch._int_mm`` (cuBLASLt int8, raw int32 out), ``torch._int_mm`` plus the same epilogue in
    PyTorch, and a float16 cuBLAS matmul of the same shape, on random int8 ``a [m, k]``, ``b [n, k]``.

    ``max_abs_err`` checks the Triton output (float32) against the exact float64 result first. With
    ``device=None`` and no GPU returns ``{"skipped": reason}`` (Triton's CPU interpreter is far too slow to time);
    ``device="cpu"`` runs this code path anyway (interpreter, tiny sizes; the float baseline is then float32 and
    the times mean nothing).
    """
    from effx_lab.bench import compare, to_jsonable
    from effx_lab.device import has_cuda

    m = check_int("m", m, min_value=1)
    n = check_int("n", n, min_value=1)
    k = check_int("k", k, min_value=1)
    min_run_time = check_float("min_run_time", min_run_time, min_value=0.0, min_inclusive=False)
    rounds = check_int("rounds", rounds, min_value=1)
    seed = check_int("seed", seed, min_value=0)
    if device is None and not has_cuda():
        return {"skipped": "no CUDA GPU: the Triton kernels only run in the (slow) CPU interpreter here"}
    dev = resolve_torch_device(device)
    kern, why = _kernels()
    if kern is None:
        return {"skipped": why}
    gen = torch.Generator(device="cpu").manual_seed(seed)
    a = torch.randint(-127, 128, (m, k), generator=gen, dtype=torch.int8)
    b = torch.randint(-127, 128, (n, k), generator=gen, dtype=torch.int8)
    sa = torch.rand(m, generator=gen) * 0.01 + 0.001
    sb = torch.rand(n, generator=gen) * 0.01 + 0.001
    a, b, sa, sb = (t.to(dev) for t in (a, b, sa, sb))
    acc = a.double() @ b.double().T  # exact: |sum| <= k * 127^2 < 2^53
    exact = (acc * sa.double()[:, None] * sb.double()[None, :]).cpu()
    fdt = torch.float16 if dev.type == "cuda" else torch.float32
    af, bf = (a.to(fdt) * 0.01, b.to(fdt) * 0.01)
    with torch.inference_mode():
        got = kern.int8_gemm(a, b, sa, sb, out_dtype=torch.float32)
    err = float((got.double().cpu() - exact).abs().max())

    def inf(fn: Callable[[], Any]) -> Callable[[], Any]:
        def call() -> Any:
            with torch.inference_mode():
                return fn()

        return call

    fns = {
        f"{'fp16' if dev.type == 'cuda' else 'fp32'}_matmul": inf(lambda: F.linear(af, bf)),
        "triton_int8_gemm": inf(lambda: kern.int8_gemm(a, b, sa, sb, out_dtype=fdt)),
    }
    notes: dict[str, str] = {}
    try:
        with torch.inference_mode():
            raw = torch._int_mm(a, b.t())
        int_mm_exact = bool(torch.equal(raw.to(torch.float64), acc))
        fns["torch_int_mm"] = inf(lambda: torch._int_mm(a, b.t()))
        fns["torch_int_mm_scaled"] = inf(lambda: (torch._int_mm(a, b.t()) * sa[:, None] * sb[None, :]).to(fdt))
    except (RuntimeError, NotImplementedError) as exc:
        int_mm_exact = None
        notes["torch_int_mm"] = f"{type(exc).__name__}: {str(exc).strip()[:200]}"
    baseline = next(iter(fns))
    comp = compare(fns, baseline=baseline, min_run_time=min_run_time, rounds=rounds, device=dev.type)
    return to_jsonable(
        {
            "config": {"m": m, "n": n, "k": k, "out_dtype": str(fdt).replace("torch.", "")},
            "torch_device": str(dev),
            "backend": kern.int8_gemm_backend(dev),
            "max_abs_err": err,
            "max_abs_exact": float(exact.abs().max()),
            "int_mm_exact": int_mm_exact,
            "times_s": {name: t.median_s for name, t in comp.timings.items()},
            "speedups_vs_float": comp.ratios(),
            "triton_over_int_mm": (
                comp.timings["torch_int_mm_scaled"].median_s / comp.timings["triton_int8_gemm"].median_s
                if "torch_int_mm_scaled" in comp.timings else None
            ),
            "notes": notes,
            "comparison": comp,
        }
    )  # fmt: skip


# ----------------------------------------------------------------------------------------------------------
# the chapter's run
# ----------------------------------------------------------------------------------------------------------
def _gemv_goals(res: dict[str, Any]) -> dict[str, Any]:
    """The decode GEMV goals of :data:`GOALS` in one :func:`decode_gemv` result.

    ``int8_ours_over_fp32`` / ``int4_ours_over_fp32``: the best of the course's own compiled-or-default paths
    (``int8_ours_fp32``, ``int8_ours_bf16``...; not the ``*_eager`` fallback) over float32, with the library
    op's speed-up of the same width beside it (``library``) and the bytes/s of both; ``*_ours_over_bf16``: the
    same path's time against bfloat16 ``F.linear``. ``int8_over_fp32`` / ``int4_over_fp32``: the best path of
    any kind (what the device can do)."""
    goals = {}
    paths = res["paths"]
    for bits in ("int8", "int4"):
        ours = {
            k: v["speedup_vs_fp32"]
            for k, v in paths.items()
            if k.startswith(f"{bits}_ours_") and not k.endswith("_eager")
        }
        best = max(ours, key=ours.get) if ours else None
        lib = paths.get(f"{bits}_torch_lib")
        beside = {
            "library": None if lib is None else lib["speedup_vs_fp32"],
            "library_gb_s": None if lib is None else lib["gb_s"],
        }
        if best is not None:
            beside.update(path=best, route=paths[best].get("route"), gb_s=paths[best]["gb_s"],
                          vs_library=paths[best]["speedup_vs_lib"])  # fmt: skip
        value = ours[best] if best is not None else None
        goals[f"{bits}_ours_over_fp32"] = goal(value, GOALS[f"{bits}_ours_over_fp32"], **beside, per_path=ours)
        vs_bf16 = paths[best]["speedup_vs_16bit"] if best is not None and "bf16" in paths else None
        goals[f"{bits}_ours_over_bf16"] = goal(
            vs_bf16, GOALS[f"{bits}_ours_over_bf16"], **({"path": best} if best is not None else {})
        )
        cands = {k: v["speedup_vs_fp32"] for k, v in paths.items() if k.startswith(bits)}
        best_any = max(cands, key=cands.get) if cands else None
        where = {"path": best_any} if best_any is not None else {}
        value = cands[best_any] if best_any is not None else None
        goals[f"{bits}_over_fp32"] = goal(value, GOALS[f"{bits}_over_fp32"], **where, per_path=cands)
    return goals


#: sizes and timing of :func:`run`, full and quick. ``cpu_settings``: one CPU measurement of the decode GEMV per
#: entry, ``threads`` (``None``: every core; a setting equal to an earlier one is skipped) and ``cold`` (weights
#: cycled through ``cold_bytes``, see the module docstring). Two threads, cold, is the setting the goals are
#: stated for (a laptop's decode). One thread measures the work without waiting on a descheduled second thread when the machine is
#: busy; all cores is what a user decoding on this machine gets; the warm run shows what a benchmark that
#: keeps one small matrix in cache would claim.
RUN_CONFIG: dict[bool, dict[str, Any]] = {
    False: {
        "gemv": {"n": 4096, "k": 4096, "group_size": 128},
        "cpu_settings": (
            {"threads": 2, "cold": True},
            {"threads": 1, "cold": True},
            {"threads": None, "cold": True},
            {"threads": None, "cold": False},
        ),
        "cold_bytes": 128 * 2**20,
        "min_run_time": 0.2,
        "rounds": 3,
        "gptq": {"rows": 1024, "cols": 1024, "tokens": 2048, "bits": 4, "group_size": 128},
        "gptq_timing": {"min_run_time": 0.1, "rounds": 2, "threads": 1},
        "int8_gemm": {"m": 4096, "n": 4096, "k": 4096},
    },
    True: {
        "gemv": {"n": 1024, "k": 1024, "group_size": 128},
        "cpu_settings": ({"threads": 1, "cold": False},),
        "cold_bytes": 0,
        "min_run_time": 0.02,
        "rounds": 1,
        "gptq": {"rows": 256, "cols": 256, "tokens": 512, "bits": 4, "group_size": 128},
        "gptq_timing": {"min_run_time": 0.02, "rounds": 1, "threads": 1},
        "int8_gemm": {"m": 1024, "n": 1024, "k": 1024},
    },
}


def run(quick: bool = False) -> dict[str, Any]:
    """Run the chapter 2 benchmarks, print the decode tables and return plain dicts (sizes in :data:`RUN_CONFIG`).

    1. :func:`decode_gemv` on CPU for each of ``cpu_settings`` (full: two threads and one thread with cold
       weights, all cores with cold weights, all cores warm; quick: 1024 x 1024, one thread, warm), and on a CUDA GPU when there is
       one (float16 baseline, the Triton kernels, tinygemm).
    2. The goals as computed ratios, ``{"value", "goal", "met", "path"}`` (never asserted), per CPU setting
       (:func:`_gemv_goals`): the course's own int8 and int4 paths at least 2.5x faster than float32 and at
       least as fast as bfloat16 (the library op of the same width beside them), and the best int8 / int4 path
       of any kind at least 3x / 5x (the bytes-limited ideals are about 4x and 8x).
    3. :func:`gptq_numpy_vs_torch` on a 1024 x 1024 layer, 2048 tokens, 4 bits, group 128 (quick: 256 x 256, 512
       tokens); goal: torch at least 10x faster.
    4. :func:`int8_gemm_vs_int_mm` on a CUDA GPU (skipped on CPU).
    """
    quick = check_bool("quick", quick)
    from effx_lab import device as devmod
    from effx_lab.bench import device_name, to_jsonable

    cfg = RUN_CONFIG[quick]
    load_start = load_average()
    timing = {"min_run_time": cfg["min_run_time"], "rounds": cfg["rounds"]}
    cpu: dict[str, Any] = {}
    goals: dict[str, Any] = {"decode_gemv_cpu": {}}
    for setting in cfg["cpu_settings"]:
        threads = setting["threads"] if setting["threads"] is not None else cpu_cores()
        label = f"threads_{threads}_{'cold' if setting['cold'] else 'warm'}"
        if label in cpu:  # "every core" is 2 (or 1) cores here: measured once
            continue
        res = decode_gemv(
            **cfg["gemv"],
            threads=threads,
            cold_bytes=cfg["cold_bytes"] if setting["cold"] else 0,
            device="cpu",
            **timing,
        )
        print(format_gemv(res), flush=True)
        cpu[label] = res
        goals["decode_gemv_cpu"][label] = _gemv_goals(res)
    if devmod.has_cuda():
        cuda_gemv = decode_gemv(**cfg["gemv"], device="cuda", **timing)
        print(format_gemv(cuda_gemv), flush=True)
    else:
        cuda_gemv = {"skipped": "no CUDA GPU"}
    gptq = gptq_numpy_vs_torch(**cfg["gptq"], **cfg["gptq_timing"])
    goals["gptq_torch_over_numpy"] = goal(
        gptq.get("speedup"), GOALS["gptq_torch_over_numpy"]
    )
    if "speedup" in gptq:
        print(
            f"GPTQ {cfg['gptq']['rows']}x{cfg['gptq']['cols']}, {cfg['gptq']['tokens']} tokens: numpy "
            f"{gptq['numpy_s']:.3f} s, torch {gptq['torch_s']:.3f} s, x{gptq['speedup']:.1f}; losses "
            f"{gptq['loss_numpy']:.4g} / {gptq['loss_torch']:.4g}, output error {gptq['output_error_torch']:.3g} "
            f"(RTN {gptq['rtn_output_error']:.3g})",
            flush=True,
        )
    int8 = int8_gemm_vs_int_mm(**cfg["int8_gemm"], **timing)
    goals["note"] = (
        "decode GEMV goals on CPU, one entry per CPU setting: the course's own int8 and int4 paths (fused, "
        f"compiled; backend here: {fused_backend('cpu', probe=False)}) >= 2.5x faster than float32 F.linear and at least "
        "as fast as bfloat16, the library op of the same width reported beside; the best path of any kind "
        ">= 3x (int8) and >= 5x (int4); bytes-limited ideals ~4x / ~8x"
        + (" (quick mode: small sizes, warm weights, ratios not meaningful)" if quick else "")
    )
    return to_jsonable(
        {
            "chapter": "ch02",
            "quick": quick,
            "device": device_name(),
            "device_summary": devmod.summary(),
            "torch_version": torch.__version__,
            "numpy_version": np.__version__,
            "torch_threads": torch.get_num_threads(),
            "cpu_cores": cpu_cores(),
            "load_start": load_start,
            "load_end": load_average(),
            "goals": goals,
            "decode_gemv_cpu": cpu,
            "decode_gemv_cuda": cuda_gemv,
            "gptq_numpy_vs_torch": gptq,
            "int8_gemm_vs_int_mm": int8,
        }
    )
