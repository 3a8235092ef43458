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
(d) **Prefill vs decode** of the trained TinyLM: tokens per second when the prompt is processed in one
    forward pass, against one token per sequence per step with the KV cache, at several batch sizes.

The measurements notebook 01.2 shows are public, so the notebook and this benchmark
run the same code: :func:`gemm_gemv_points` (one size of (a)),
:func:`prefill_decode_times` (d) and :func:`decode_vs_full_error`, the check that
decoding through the KV cache computes what one full forward pass computes.

Every value returned is a plain Python number, string, list or dict (JSON-serialisable).
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from effx_lab._validate import check_bool, check_float, check_int, describe
from effx_lab.bench import check_threads, limit_threads, to_jsonable
from effx_lab.device import resolve_torch_device

from . import reference as R
from . import torch_ops as T
from .flops import matmul_bytes, matmul_flops

__all__ = ["decode_vs_full_error", "gemm_gemv_points", "prefill_decode_times", "run"]


def gemm_gemv_points(
    n: int,
    roofline: Any,
    *,
    stream_bytes: int = 256 * 2**20,
    min_run_time: float = 0.2,
    device: Any = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Time a GEMM and two GEMVs of size ``n`` in float32 and place them on ``roofline``.

    * ``"gemm"``: ``A[n, n] @ B[n, n]``, ``2 n^3`` FLOPs over ``3 n^2 * 4`` ideal bytes (intensity
      ``n / 6``): the shape of prefill, where many tokens share every weight.
    * ``"gemv"``: a matrix times a vector, *streamed*: one call multiplies a stack of ``stack`` different
      ``n x n`` matrices (``stack * n^2 * 4`` bytes, at least ``stream_bytes``, so far larger than any
      cache) by one vector, as a decode step streams the weights of every layer from memory. Torch folds
      ``[stack, n, n] @ [n]`` into one GEMV over ``stack * n`` rows. Bytes are counted as ``stack``
      separate GEMVs (this overcounts the shared vector by ``(stack - 1) * n * 4`` bytes: negligible).
      Intensity ~0.5 FLOP/byte: the shape of decode at batch 1.
    * ``"gemv_cache_resident"``: the same ``n x n`` matrix times a vector again and again. A small matrix
      stays in the CPU's caches (or the GPU's L2) between calls, so this GEMV can beat the DRAM roof:
      the roofline's bandwidth is the bandwidth of wherever the data really comes from.

    Returns ``{"n", "stack", "gemm", "gemv", "gemv_cache_resident"}`` with
    :class:`effx_lab.bench.RooflinePoint` values. Times are medians from :func:`effx_lab.bench.time_fn`.
    """
    from effx_lab.bench import Roofline, time_fn

    n = check_int("n", n, min_value=1)
    if not isinstance(roofline, Roofline):
        raise TypeError(f"roofline must be an effx_lab.bench.Roofline, got {describe(roofline)}")
    stream_bytes = check_int("stream_bytes", stream_bytes, min_value=0)
    min_run_time = check_float("min_run_time", min_run_time, min_value=0.0, min_inclusive=False)
    dev = resolve_torch_device(device)
    seed = check_int("seed", seed, min_value=0)

    gen = torch.Generator(device="cpu").manual_seed(seed)
    a = torch.randn(n, n, generator=gen).to(dev)
    b = torch.randn(n, n, generator=gen).to(dev)
    v = torch.randn(n, generator=gen).to(dev)
    stack = max(1, -(-stream_bytes // (4 * n * n)))
    weights = torch.randn(stack, n, n, generator=gen).to(dev)
    t_gemm = time_fn(torch.mm, a, b, name=f"gemm_{n}", min_run_time=min_run_time, device=dev)
    t_cached = time_fn(torch.mv, a, v, name=f"gemv_cached_{n}", min_run_time=min_run_time, device=dev)
    t_gemv = time_fn(torch.matmul, weights, v, name=f"gemv_streamed_{n}", min_run_time=min_run_time, device=dev)
    del weights
    return {
        "n": n,
        "stack": stack,
        "gemm": roofline.point(f"GEMM {n}x{n}x{n}", matmul_flops(n, n, n), matmul_bytes(n, n, n, 4), t_gemm.median_s),
        "gemv": roofline.point(
            f"GEMV {n}x{n}x1 (streamed, {stack} matrices)",
            stack * matmul_flops(n, 1, n),
            stack * matmul_bytes(n, 1, n, 4),
            t_gemv.median_s,
        ),
        "gemv_cache_resident": roofline.point(
            f"GEMV {n}x{n}x1 (cache-resident)", matmul_flops(n, 1, n), matmul_bytes(n, 1, n, 4), t_cached.median_s
        ),
    }


def _gemm_vs_gemv(
    sizes: tuple[int, ...], roofline: Any, device: torch.device, min_run_time: float, stream_bytes: int
) -> list[dict]:
    """:func:`gemm_gemv_points` at each size, as plain dicts; the headline ratio uses the streamed GEMV."""
    rows = []
    for n in sizes:
        pts = gemm_gemv_points(n, roofline, stream_bytes=stream_bytes, min_run_time=min_run_time, device=device)
        gemm, gemv = pts["gemm"], pts["gemv"]
        rows.append(
            {
                "n": n,
                "dtype": "float32",
                "gemv_stack": pts["stack"],
                "gemm": to_jsonable(gemm),
                "gemv": to_jsonable(gemv),
                "gemv_cache_resident": to_jsonable(pts["gemv_cache_resident"]),
                "gemm_over_gemv_achieved_flops": float(gemm.achieved_flops / gemv.achieved_flops),
            }
        )
    return rows


def prefill_decode_times(
    model: Any,
    batch_sizes: Sequence[int] = (1, 8, 32),
    *,
    prompt_len: int = 128,
    min_run_time: float = 0.2,
    rounds: int = 2,
    threads: int | None = None,
    seed: int = 0,
) -> list[dict[str, float]]:
    """Time prefill and one decode step of a TinyLM at each batch size: the two phases of generation.

    For ``B`` in ``batch_sizes``, on random prompts of ``prompt_len`` tokens (seeded):

    * **prefill**: one forward pass over all ``B x prompt_len`` prompt tokens, filling a fresh KV cache;
    * **decode step**: one forward pass over ``B`` new tokens (one per sequence) that attend to the
      ``prompt_len`` cached positions and their own, as each step of generation does. Every timed call
      rewinds the cache to ``prompt_len``, so all calls do the same work.

    The whole sweep over ``batch_sizes`` runs ``rounds`` times and each time is the best round's median
    (:func:`effx_lab.bench.time_fn`): a burst of load from another program then spoils one round, not the
    result, and every batch size is measured at both early and late moments.

    Returns one dict per batch size: ``batch_size``, ``prompt_len``, ``prefill_s``, ``decode_step_s``
    (seconds), ``prefill_tokens_per_s`` (``B * prompt_len / prefill_s``) and ``decode_tokens_per_s``
    (``B / decode_step_s``). ``threads``, when given, sets ``torch.set_num_threads`` for the measurement and
    restores it afterwards. Runs on the model's device under ``torch.inference_mode``.
    """
    from effx_lab.bench import time_fn
    from effx_lab.models.torch_ops import TinyLM

    if not isinstance(model, TinyLM):
        raise TypeError(f"model must be an effx_lab.models.torch_ops.TinyLM, got {describe(model)}")
    if isinstance(batch_sizes, (str, bytes)) or not isinstance(batch_sizes, Sequence) or len(batch_sizes) == 0:
        raise TypeError(f"batch_sizes must be a non-empty sequence of positive ints, got {describe(batch_sizes)}")
    batch_sizes = [check_int(f"batch_sizes[{i}]", b, min_value=1) for i, b in enumerate(batch_sizes)]
    max_len = model.config.max_seq_len
    prompt_len = check_int("prompt_len", prompt_len, min_value=1, max_value=max_len - 1)
    min_run_time = check_float("min_run_time", min_run_time, min_value=0.0, min_inclusive=False)
    rounds = check_int("rounds", rounds, min_value=1)
    threads = check_threads(threads)
    seed = check_int("seed", seed, min_value=0)

    device = model.tok_emb.weight.device
    gen = torch.Generator(device="cpu").manual_seed(seed)
    vocab = model.config.vocab_size
    inputs = [
        (
            torch.randint(0, vocab, (batch, prompt_len), generator=gen).to(device),
            torch.randint(0, vocab, (batch, 1), generator=gen).to(device),
            model.new_cache(batch, max_seq_len=prompt_len + 1),
        )
        for batch in batch_sizes
    ]
    best = [[float("inf"), float("inf")] for _ in batch_sizes]
    timing = {"min_run_time": min_run_time, "device": device}
    with limit_threads(threads, blas=False), torch.inference_mode():
        for _ in range(rounds):
            for i, (prompt, new, cache) in enumerate(inputs):

                def prefill(prompt=prompt, cache=cache) -> torch.Tensor:
                    cache.length = 0
                    return model(prompt, cache)

                def decode_step(new=new, cache=cache) -> torch.Tensor:
                    cache.length = prompt_len
                    return model(new, cache)

                t_pre = time_fn(prefill, **timing).median_s
                t_dec = time_fn(decode_step, **timing).median_s
                best[i] = [min(best[i][0], t_pre), min(best[i][1], t_dec)]
    return [
        {
            "batch_size": batch,
            "prompt_len": prompt_len,
            "prefill_s": t_pre,
            "decode_step_s": t_dec,
            "prefill_tokens_per_s": batch * prompt_len / t_pre,
            "decode_tokens_per_s": batch / t_dec,
        }
        for batch, (t_pre, t_dec) in zip(batch_sizes, best)
    ]


def decode_vs_full_error(model: Any, tokens: torch.Tensor, *, prefix_len: int) -> float:
    """How far the logits of decoding through the KV cache are from one full pass.

    Prefills ``tokens[:, :prefix_len]`` into a fresh cache, then feeds the remaining
    tokens one at a time through it (the decode loop, with the next token given), and
    compares the logits of each step with those of one forward pass over all of
    ``tokens`` at the same positions. Returns ``max |stepwise - full| / max |full|``
    over those positions, computed in the model's dtype: the size of float32 rounding
    (the same sums in another order) for a float32 model, ~1e-16 for a float64 copy,
    order 1 for a wrong cache (a position off by one, a key overwritten).

    ``model`` is an :class:`effx_lab.models.torch_ops.TinyLM`; ``tokens`` an integer
    tensor ``[batch, seq]`` on its device, ``2 <= seq <= max_seq_len``;
    ``1 <= prefix_len < seq``. Runs under ``torch.inference_mode``.
    """
    from effx_lab.models.torch_ops import TinyLM

    if not isinstance(model, TinyLM):
        raise TypeError(
            f"model must be an effx_lab.models.torch_ops.TinyLM, got {describe(model)}"
        )
    if not isinstance(tokens, torch.Tensor):
        raise TypeError(f"tokens must be a torch.Tensor, got {describe(tokens)}")
    integer = not (tokens.dtype == torch.bool or tokens.is_floating_point()
                   or tokens.is_complex())
    if tokens.ndim != 2 or not integer:
        raise TypeError(
            f"tokens must be an integer tensor [batch, seq], got {describe(tokens)}"
        )
    batch, seq = tokens.shape
    max_len = model.config.max_seq_len
    if batch < 1 or not 2 <= seq <= max_len:
        raise ValueError(
            f"tokens must have shape [batch >= 1, seq] with 2 <= seq <= max_seq_len="
            f"{max_len}, got {tuple(tokens.shape)}"
        )
    device = model.tok_emb.weight.device
    if tokens.device != device:
        raise ValueError(
            f"tokens must be on the model's device {device}, got {tokens.device}"
        )
    prefix_len = check_int("prefix_len", prefix_len, min_value=1, max_value=seq - 1)
    with torch.inference_mode():
        full = model(tokens)[:, prefix_len:]  # one pass: logits for every position
        cache = model.new_cache(batch, max_seq_len=seq)
        model(tokens[:, :prefix_len], cache)  # prefill
        stepwise = torch.stack(
            [model(tokens[:, i : i + 1], cache)[:, 0] for i in range(prefix_len, seq)],
            dim=1,
        )
    return ((stepwise - full).abs().max() / full.abs().max()).item()


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
        "timings": to_jsonable(comparison.to_dict()),
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
        "timings": to_jsonable(comparison.to_dict()),
    }


def _prefill_vs_decode(quick: bool, device: torch.device, min_run_time: float) -> dict:
    from effx_lab.models import load_pretrained_tinylm

    model = load_pretrained_tinylm("torch").to(device).eval()
    batch_sizes = (1, 8) if quick else (1, 8, 32)
    rows = prefill_decode_times(model, batch_sizes, prompt_len=128, min_run_time=min_run_time)
    first = rows[0]
    return {
        "model": dict(model.config.to_dict(), n_params=model.config.n_params(), weights="pretrained TinyLM"),
        "threads": torch.get_num_threads(),
        "rows": rows,
        "prefill_over_decode_tokens_per_s_batch1": first["prefill_tokens_per_s"] / first["decode_tokens_per_s"],
    }


def run(quick: bool = False) -> dict:
    """Run the chapter 1 benchmarks and return plain dicts (see the module docstring).

    ``quick=True`` uses smaller sizes (GEMM n = 512/1024, a 16 x 128 batch, decode batches 1 and 8) and
    shorter timing, for tests and for a first look on a laptop.
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
        "ceilings": to_jsonable(ceilings),
        "gemm_vs_gemv": _gemm_vs_gemv(sizes, roofline, device, min_run_time, stream_bytes),
        "padded_vs_packed_ffn": _padded_vs_packed(ffn_cfg, device, min_run_time, rounds),
        "pack_numpy_vs_torch": _pack_numpy_vs_torch(ffn_cfg, device, min_run_time, rounds),
        "prefill_vs_decode": _prefill_vs_decode(quick, device, min_run_time),
    }
