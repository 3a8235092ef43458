"""Chapter 1 benchmarks: ``python -m effx_lab.bench ch01`` (or ``run(quick=True)`` from a notebook).

Three measurements, each reported as ratios measured side by side in one run on the reader's device:

(a) **GEMM vs GEMV** in fp32: an ``n x n`` by ``n x n`` product (intensity ``n / 6`` FLOPs/byte) against
    an ``n x n`` matrix times a vector (intensity ~0.5). Each is placed on the roofline measured by
    :func:`effx_lab.bench.measure_ceilings`; the GEMV is memory-bound, which is why autoregressive
    decode (one token per sequence = a GEMV per weight matrix at batch 1) is slow. The GEMV is timed
    streaming a stack of matrices larger than any cache (as decode streams every layer's weights), and
    also cache-resident (the same small matrix again and again), to show what caches hide.
(b) **Padded vs packed FFN** (EffectiveTransformer): a MiniLM-sized FFN (384 -> 1536 -> 384) on a batch
    whose lengths are spread uniformly, run on all ``B x L`` positions vs on the real tokens only.
    The ideal speed-up is ``total / real = 1 / (1 - fraction_wasted)``.
(c) **NumPy reference pack vs torch pack**: the readable loop against the vectorised gather.

Every value returned is a plain Python number, string, list or dict (JSON-serialisable).
"""
from __future__ import annotations

import dataclasses
import numbers
from typing import Any

import numpy as np
import torch

from effx_lab._validate import check_bool

from . import reference as R
from . import torch_ops as T
from .flops import matmul_bytes, matmul_flops

__all__ = ["run"]


def _plain(obj: Any) -> Any:
    """Turn dataclasses / objects with ``to_dict`` / NumPy scalars into JSON-serialisable values."""
    if hasattr(obj, "to_dict") and callable(obj.to_dict):
        return _plain(obj.to_dict())
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return _plain(dataclasses.asdict(obj))
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, numbers.Integral):
        return int(obj)
    if isinstance(obj, numbers.Real):
        return float(obj)
    if obj is None or isinstance(obj, str):
        return obj
    return str(obj)


def _gemm_vs_gemv(
    sizes: tuple[int, ...], roofline: Any, device: torch.device, min_run_time: float, stream_bytes: int
) -> list[dict]:
    """GEMM and GEMV at each size, placed on the roofline.

    Two GEMVs are timed: ``gemv_cache_resident`` multiplies the same ``n x n`` matrix again and again (at
    these sizes it stays in the CPU's last-level cache or the GPU's L2, so it can beat the DRAM roof),
    and ``gemv`` streams: one call multiplies a stack of ``k`` different matrices (``k * n^2 * 4`` bytes,
    at least ``stream_bytes``, far larger than any cache) by a vector, as a decode step streams the
    weights of every layer from memory (bytes are counted as ``k`` separate GEMVs, which overcounts the
    shared vector by ``(k - 1) * n * 4`` bytes: negligible). The headline ratio uses the streamed GEMV.
    """
    from effx_lab.bench import time_fn

    gen = torch.Generator(device="cpu").manual_seed(0)
    rows = []
    for n in sizes:
        a = torch.randn(n, n, generator=gen).to(device)
        b = torch.randn(n, n, generator=gen).to(device)
        v = torch.randn(n, generator=gen).to(device)
        k = max(1, -(-stream_bytes // (4 * n * n)))
        stack = torch.randn(k, n, n, generator=gen).to(device)
        t_gemm = time_fn(torch.mm, a, b, name=f"gemm_{n}", min_run_time=min_run_time)
        t_warm = time_fn(torch.mv, a, v, name=f"gemv_cached_{n}", min_run_time=min_run_time)
        # [k, n, n] @ [n]: torch folds it into one GEMV over the k*n rows, which streams all k matrices
        t_gemv = time_fn(torch.matmul, stack, v, name=f"gemv_streamed_{n}", min_run_time=min_run_time)
        gemm = roofline.point(f"GEMM {n}x{n}x{n}", matmul_flops(n, n, n), matmul_bytes(n, n, n, 4), t_gemm.median_s)
        warm = roofline.point(
            f"GEMV {n}x{n}x1 (cache-resident)", matmul_flops(n, 1, n), matmul_bytes(n, 1, n, 4), t_warm.median_s
        )
        gemv = roofline.point(
            f"GEMV {n}x{n}x1 (streamed, {k} matrices)",
            k * matmul_flops(n, 1, n),
            k * matmul_bytes(n, 1, n, 4),
            t_gemv.median_s,
        )
        del stack
        rows.append(
            {
                "n": n,
                "dtype": "float32",
                "gemv_stack": k,
                "gemm": _plain(gemm),
                "gemv": _plain(gemv),
                "gemv_cache_resident": _plain(warm),
                "gemm_over_gemv_achieved_flops": float(gemm.achieved_flops / gemv.achieved_flops),
            }
        )
    return rows


def _ffn_inputs(batch: int, max_len: int, min_len: int, d_model: int, d_ff: int, device: torch.device):
    rng = np.random.default_rng(0)
    lengths = rng.integers(min_len, max_len + 1, size=batch)
    gen = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(batch, max_len, d_model, generator=gen)
    w1 = torch.randn(d_model, d_ff, generator=gen) / d_model**0.5
    b1 = torch.zeros(d_ff)
    w2 = torch.randn(d_ff, d_model, generator=gen) / d_ff**0.5
    b2 = torch.zeros(d_model)
    tensors = [t.to(device) for t in (x, w1, b1, w2, b2)]
    return lengths, tensors


def _padded_vs_packed(cfg: dict, device: torch.device, min_run_time: float, rounds: int) -> dict:
    from effx_lab.bench import compare

    lengths, (x, w1, b1, w2, b2) = _ffn_inputs(device=device, **cfg)
    lt = torch.from_numpy(lengths).to(device)
    stats = R.padding_stats(lengths, cfg["max_len"], d_model=cfg["d_model"], d_ff=cfg["d_ff"])
    # correctness first: a speed-up of a wrong answer is worthless
    diff = (T.padded_ffn(x, lt, w1, b1, w2, b2) - T.packed_ffn(x, lt, w1, b1, w2, b2)).abs().max().item()
    comparison = compare(
        {
            "padded": lambda: T.padded_ffn(x, lt, w1, b1, w2, b2),
            "packed": lambda: T.packed_ffn(x, lt, w1, b1, w2, b2),
        },
        baseline="padded",
        min_run_time=min_run_time,
        rounds=rounds,
    )
    return {
        "config": dict(cfg, dtype="float32", lengths="uniform integers in [min_len, max_len], seed 0"),
        "padding": stats,
        "ideal_speedup": stats["total_slots"] / stats["real_tokens"],
        "measured_speedup": float(comparison.speedup("packed")),
        "max_abs_diff": float(diff),
        "timings": _plain(comparison.to_dict()),
    }


def _pack_numpy_vs_torch(cfg: dict, device: torch.device, min_run_time: float, rounds: int) -> dict:
    from effx_lab.bench import compare

    lengths, (x, *_rest) = _ffn_inputs(device=device, **cfg)
    x_np = x.cpu().numpy()
    lt = torch.from_numpy(lengths).to(device)
    same = bool(np.array_equal(R.pack(x_np, lengths)[0], T.pack(x, lt)[0].cpu().numpy()))
    comparison = compare(
        {
            "numpy_reference": lambda: R.pack(x_np, lengths),
            "torch": lambda: T.pack(x, lt),
        },
        baseline="numpy_reference",
        min_run_time=min_run_time,
        rounds=rounds,
    )
    return {
        "config": {k: cfg[k] for k in ("batch", "max_len", "min_len", "d_model")},
        "torch_device": str(device),
        "same_result": same,
        "speedup_torch_over_numpy": float(comparison.speedup("torch")),
        "timings": _plain(comparison.to_dict()),
    }


def run(quick: bool = False) -> dict:
    """Run the chapter 1 benchmarks and return plain dicts (see the module docstring).

    ``quick=True`` uses smaller sizes (GEMM n = 512/1024, a 16 x 128 batch) and shorter timing, for
    tests and for a first look on a laptop.
    """
    quick = check_bool("quick", quick)
    from effx_lab import device as dev
    from effx_lab.bench import Roofline, measure_ceilings

    device = dev.torch_device()
    min_run_time = 0.05 if quick else 0.2
    rounds = 2 if quick else 3
    ceilings = measure_ceilings(quick=quick)
    roofline = Roofline(ceilings)
    sizes = (512, 1024) if quick else (1024, 2048)
    stream_bytes = (64 if quick else 256) * 2**20
    if quick:
        ffn_cfg = {"batch": 16, "max_len": 128, "min_len": 8, "d_model": 384, "d_ff": 1536}
    else:
        ffn_cfg = {"batch": 32, "max_len": 512, "min_len": 32, "d_model": 384, "d_ff": 1536}
    return {
        "chapter": "ch01",
        "quick": quick,
        "device": dev.summary(),
        "torch_device": str(device),
        "torch_threads": torch.get_num_threads(),
        "ceilings": _plain(ceilings),
        "gemm_vs_gemv": _gemm_vs_gemv(sizes, roofline, device, min_run_time, stream_bytes),
        "padded_vs_packed_ffn": _padded_vs_packed(ffn_cfg, device, min_run_time, rounds),
        "pack_numpy_vs_torch": _pack_numpy_vs_torch(ffn_cfg, device, min_run_time, rounds),
    }
