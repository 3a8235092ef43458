"""Chapter 4 benchmarks: ``python -m effx_lab.bench nm`` (or ``ch04``).

Each set of candidates is timed side by side in one run (:func:`effx_lab.bench.compare`:
interleaved rounds, so their ratios survive a busy machine), on one CPU thread (on a
machine shared with other jobs a parallel kernel waits for its descheduled second
thread, which swamps every ratio; one thread measures the work):

* :func:`sparse_ffn_decode`: the Scaling Transformer's sparse FFN against the dense
  FFN for single-token decode at ``d_model = 1024``, ``d_ff = 4096`` with blocks of
  ``N = 4, 8, 16, 32`` (controller rank ``d_model / N``, the paper's): time ratio per
  ``N`` (ideal about ``N``; the controller's ``r (d + d_ff)`` weights make the bytes
  ratio ``2 d d_ff / (r (d + d_ff) + 2 d d_ff / N)``, 0.62 N here) and the weight bytes
  each reads per token. Goal: >= 0.5 N at N = 8.
* :func:`nm_matmul_vs_dense`: the course's 2:4 compressed matmul
  (:func:`effx_lab.nm.torch_ops.nm_matmul`, a gather, a multiply and a sum in PyTorch)
  against dense ``F.linear`` for decode and prefill: bytes and time. On a CPU 2:4 buys
  no speed: no CPU has sparse tensor cores, the dense GEMM is the best-tuned code on the
  machine, and the gather costs more than the bytes it saves (the results' notes say
  so). The hardware speed-up is the GPU check's (``semi_structured``, Triton).
* :func:`permutation_search`: :func:`effx_lab.nm.torch_ops.search_permutation` on a
  768 x 3072 weight (BERT-base's FFN shape; a Gaussian weight): time and retained
  magnitude against the identity order, per ``stripes_per_window`` and ``max_iters``.
* :func:`decode_speedup`: the whole-model claim of 04.4: single-token decode of
  :func:`effx_lab.nm.layers.decode_model` (dense; sparse FFN; sparse FFN and sparse
  QKV) at ``d_model = 1024``, per token, batch 1, and the weight bytes per token.
* :func:`run`: all of it, with the goal as a computed ratio (reported, never asserted).
"""

from __future__ import annotations

import math
import time
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from effx_lab._validate import (
    check_bool,
    check_float,
    check_int,
    check_int_sequence,
    describe,
)
from effx_lab.bench import (
    check_threads,
    compare,
    cpu_cores,
    goal,
    limit_threads,
    load_average,
    to_jsonable,
)

__all__ = [
    "RUN_CONFIG",
    "decode_speedup",
    "nm_matmul_vs_dense",
    "permutation_search",
    "run",
    "sparse_ffn_decode",
]

#: sizes and timing of :func:`run`, full (False) and quick (True)
RUN_CONFIG: dict[bool, dict[str, Any]] = {
    False: {
        "threads": 1,
        "timing": {"min_run_time": 0.2, "rounds": 5},
        "ffn": {"d_model": 1024, "d_ff": 4096, "blocks": (4, 8, 16, 32),
                "copies": 4},
        "nm": {"size": 4096, "tokens": (1, 16)},
        "perm": {"rows": 768, "cols": 3072,
                 "settings": ((2, 10), (2, 40), (3, 10), (3, 40))},
        "decode": {"d_model": 1024, "d_ff": 4096, "n_layers": 2, "block": 32,
                   "n_modules": 16, "context": 128},
    },
    True: {
        "threads": 1,
        "timing": {"min_run_time": 0.02, "rounds": 2},
        "ffn": {"d_model": 256, "d_ff": 1024, "blocks": (4, 8), "copies": 1},
        "nm": {"size": 256, "tokens": (1, 8)},
        "perm": {"rows": 32, "cols": 64, "settings": ((2, 5), (3, 5))},
        "decode": {"d_model": 128, "d_ff": 512, "n_layers": 1, "block": 8,
                   "n_modules": 4, "context": 16},
    },
}  # fmt: skip


def _check_timing(min_run_time: Any, rounds: Any) -> tuple[float, int]:
    min_run_time = check_float(
        "min_run_time", min_run_time, min_value=0.0, min_inclusive=False
    )
    return min_run_time, check_int("rounds", rounds, min_value=1)


def _ffn_weights(d: int, d_ff: int, block: int | None) -> int:
    """Weights the decode FFN reads per token (dense: ``block=None``)."""
    if block is None:
        return 2 * d * d_ff + d_ff + d
    k, r = d_ff // block, max(1, d // block)
    return r * (d + d_ff) + 2 * k * d + k + d


def sparse_ffn_decode(
    d_model: int = 1024,
    d_ff: int = 4096,
    *,
    blocks: Sequence[int] = (4, 8, 16, 32),
    copies: int = 4,
    tokens: int = 64,
    min_run_time: float = 0.2,
    rounds: int = 3,
    threads: int | None = 1,
    seed: int = 0,
) -> dict[str, Any]:
    """Single-token decode of the sparse FFN (one unit per block of ``N``, controller
    rank ``d_model // N``, the unit-major layout of
    :func:`effx_lab.nm.layers.decode_model`) against the dense ReLU FFN of the same
    width (two ``F.linear``).

    As in a real decoder, weights come from memory, not from the cache: each call uses
    the next of ``copies`` FFNs (distinct weights; 4 dense FFNs at the full size are
    134 MB, more than a server's last-level cache) and the next of ``tokens`` random
    tokens (the controller picks other units for each). Returns ``{"config",
    "times_s", "speedup_vs_dense", "ideal_n", "bytes_per_token", "bytes_ratio",
    "max_abs_diff"}`` keyed by ``"dense"`` / ``"N=4"``...; ``max_abs_diff`` checks the
    decode path against the torch face's inference path."""
    from effx_lab.nm import torch_ops as T
    from effx_lab.nm.layers import _ffn_step

    d_model = check_int("d_model", d_model, min_value=1)
    d_ff = check_int("d_ff", d_ff, min_value=1)
    blocks = check_int_sequence("blocks", blocks)
    for b in blocks:
        if d_ff % b:
            raise ValueError(f"blocks must divide d_ff = {d_ff}, got {b}")
    copies = check_int("copies", copies, min_value=1)
    tokens = check_int("tokens", tokens, min_value=1)
    min_run_time, rounds = _check_timing(min_run_time, rounds)
    threads = check_threads(threads)
    seed = check_int("seed", seed, min_value=0)
    gen = torch.Generator().manual_seed(seed)
    xs = torch.randn(tokens, d_model, generator=gen)
    ffns = [
        (0.02 * torch.randn(d_ff, d_model, generator=gen), torch.zeros(d_ff),
         0.02 * torch.randn(d_ff, d_model, generator=gen), torch.zeros(d_model))
        for _ in range(copies)
    ]  # fmt: skip

    def cycling(fn: Any) -> Any:
        count = [0]

        def call() -> torch.Tensor:
            i = count[0]
            count[0] = i + 1
            return fn(i % copies, xs[i % tokens])

        return call

    fns: dict[str, Any] = {"dense": cycling(lambda c, x: _ffn_step(x, *ffns[c]))}
    diffs: dict[str, float] = {}
    byts: dict[str, int] = {"dense": 4 * _ffn_weights(d_model, d_ff, None)}
    for b in blocks:
        r = max(1, d_model // b)
        ctrl = [
            (torch.randn(d_model, r, generator=gen) / math.sqrt(d_model),
             torch.randn(r, d_ff, generator=gen) / math.sqrt(r), b,
             b * torch.arange(d_ff // b))
            for _ in range(copies)
        ]  # fmt: skip
        name = f"N={b}"
        fns[name] = cycling(
            lambda c, x, ctrl=ctrl: _ffn_step(x, *ffns[c], ctrl[c])
        )
        byts[name] = 4 * _ffn_weights(d_model, d_ff, b)
        w1u, b1, w2, b2 = ffns[0]
        params = {"w1": w1u.t(), "b1": b1, "w2": w2, "b2": b2,
                  "c1": ctrl[0][0], "c2": ctrl[0][1]}  # fmt: skip
        with torch.no_grad():
            ref = T.sparse_ffn(xs[:4], params, b)
            got = torch.stack([_ffn_step(x, *ffns[0], ctrl[0]) for x in xs[:4]])
            diffs[name] = float((got - ref).abs().max())
    with limit_threads(threads) as applied, torch.no_grad():
        comp = compare(fns, baseline="dense", min_run_time=min_run_time, rounds=rounds)
    return {
        "config": {"d_model": d_model, "d_ff": d_ff, "blocks": list(blocks),
                   "rank": "d_model // N", "copies": copies, "tokens": tokens,
                   "threads": applied.torch, "dtype": "float32",
                   "activation": "relu"},
        "times_s": {k: t.median_s for k, t in comp.timings.items()},
        "speedup_vs_dense": comp.ratios(),
        "ideal_n": {f"N={b}": float(b) for b in blocks},
        "bytes_per_token": byts,
        "bytes_ratio": {k: byts["dense"] / v for k, v in byts.items()},
        "max_abs_diff": diffs,
        "comparison": comp.to_dict(),
    }  # fmt: skip


def nm_matmul_vs_dense(
    size: int = 4096,
    *,
    tokens: Sequence[int] = (1, 16),
    min_run_time: float = 0.2,
    rounds: int = 3,
    threads: int | None = 1,
    seed: int = 0,
) -> dict[str, Any]:
    """``x @ W.T`` for a 2:4 ``W (size, size)``: dense ``F.linear`` against the
    course's :func:`effx_lab.nm.torch_ops.nm_matmul` on the compressed form (float32).
    Returns ``{"config", "bytes", "rows", "note"}``; a row per number of tokens with
    ``times_s``, ``speedup_vs_dense`` and ``max_abs_diff`` (the two agree to float32
    rounding)."""
    from effx_lab.nm import torch_ops as T

    size = check_int("size", size, min_value=4)
    if size % 4:
        raise ValueError(f"size must be a multiple of 4 (groups of 4), got {size}")
    tokens = check_int_sequence("tokens", tokens)
    min_run_time, rounds = _check_timing(min_run_time, rounds)
    threads = check_threads(threads)
    seed = check_int("seed", seed, min_value=0)
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(size, size, generator=gen) / math.sqrt(size)
    w = w * T.nm_mask(w, 2, 4)
    c = T.compress(w, 2, 4)
    rows = []
    with limit_threads(threads) as applied, torch.no_grad():
        for t in tokens:
            x = torch.randn(t, size, generator=gen)
            diff = float((T.nm_matmul(x, c) - F.linear(x, w)).abs().max())
            comp = compare(
                {"dense": lambda x=x: F.linear(x, w),
                 "nm_matmul_ours": lambda x=x: T.nm_matmul(x, c)},
                baseline="dense", min_run_time=min_run_time, rounds=rounds,
            )  # fmt: skip
            rows.append({
                "tokens": t, "phase": "decode" if t == 1 else "prefill",
                "times_s": {k: v.median_s for k, v in comp.timings.items()},
                "speedup_vs_dense": comp.ratios(), "max_abs_diff": diff,
            })  # fmt: skip
    return {
        "config": {"size": size, "n": 2, "m": 4, "dtype": "float32",
                   "threads": applied.torch},
        "bytes": {"dense": c.dense_nbytes, "compressed": c.nbytes,
                  "ratio": c.dense_nbytes / c.nbytes},
        "rows": rows,
        "note": (
            "on a CPU expect no speed-up from 2:4 itself: no CPU has sparse tensor "
            "cores, dense F.linear is the machine's best-tuned kernel, and the "
            "course's nm_matmul gathers x at the stored indices for decode "
            "(index_select, a multiply and a sum in PyTorch), which costs more than "
            "the bytes it saves, and for 4 tokens or more rebuilds the dense weight "
            "(one scatter) before the dense product; the compressed form reads "
            f"{c.nbytes / c.dense_nbytes:.3f} x the dense bytes (float32 values + "
            "2-bit indices). The speed-up is a GPU's (sparse tensor cores, sm80+): "
            "the course's GPU check"
        ),
    }  # fmt: skip


def permutation_search(
    rows: int = 768,
    cols: int = 3072,
    *,
    settings: Sequence[tuple[int, int]] = ((2, 10), (2, 40), (3, 10), (3, 40)),
    seed: int = 0,
    threads: int | None = 1,
) -> dict[str, Any]:
    """:func:`effx_lab.nm.torch_ops.search_permutation` (greedy) on a Gaussian
    ``(rows, cols)`` weight for each ``(stripes_per_window, max_iters)`` in
    ``settings``: wall time (one run each) and retained magnitude, beside the identity
    order's."""
    from effx_lab.nm import torch_ops as T

    rows = check_int("rows", rows, min_value=1)
    cols = check_int("cols", cols, min_value=4)
    bad = isinstance(settings, (str, bytes)) or not isinstance(settings, Sequence)
    if bad or not settings:
        raise TypeError(
            "settings must be a non-empty sequence of (stripes_per_window, max_iters) "
            f"pairs, got {describe(settings)}"
        )
    pairs = []
    for i, s in enumerate(settings):
        if not isinstance(s, (tuple, list)) or len(s) != 2:
            raise TypeError(
                f"settings[{i}] must be a pair (stripes_per_window, max_iters), "
                f"got {describe(s)}"
            )
        pairs.append((check_int(f"settings[{i}][0]", s[0], min_value=1),
                      check_int(f"settings[{i}][1]", s[1], min_value=0)))  # fmt: skip
    seed = check_int("seed", seed, min_value=0)
    threads = check_threads(threads)
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=gen)
    out = []
    with limit_threads(threads) as applied:
        base = T.search_permutation(w, method="identity")
        for spw, iters in pairs:
            t0 = time.perf_counter()
            res = T.search_permutation(
                w, stripes_per_window=spw, max_iters=iters, seed=seed
            )
            out.append({
                "stripes_per_window": spw, "max_iters": iters,
                "time_s": time.perf_counter() - t0, "retained": res.retained,
                "gain_over_identity": res.retained - base.retained,
                "steps": len(res.history) - 1,
            })  # fmt: skip
    return {
        "config": {"rows": rows, "cols": cols, "n": 2, "m": 4, "method": "greedy",
                   "weight": "Gaussian", "threads": applied.torch},
        "identity_retained": base.retained,
        "rows": out,
    }  # fmt: skip


def decode_speedup(
    d_model: int = 1024,
    d_ff: int = 4096,
    n_layers: int = 2,
    *,
    block: int = 32,
    n_modules: int = 16,
    context: int = 128,
    min_run_time: float = 0.2,
    rounds: int = 3,
    threads: int | None = 1,
    seed: int = 0,
) -> dict[str, Any]:
    """Whole-model single-token decode (batch 1) of
    :func:`effx_lab.nm.layers.decode_model`: dense, sparse FFN only, sparse FFN and
    sparse QKV, with ``context`` positions in the KV caches; seconds per token, speed-up
    over dense, weight bytes per token. Each step takes the next of 64 random tokens.
    At the full size the dense model's 96 MiB of weights come from memory while the
    sparse models' 13-35 MiB touched per token may stay in a large last-level cache
    between steps: a real decoder of many layers would read them from memory too."""
    from effx_lab.nm import layers as L

    d_model = check_int("d_model", d_model, min_value=1)
    context = check_int("context", context, min_value=0)
    min_run_time, rounds = _check_timing(min_run_time, rounds)
    threads = check_threads(threads)
    variants = {
        "dense": (False, False),
        "sparse_ffn": (True, False),
        "sparse_ffn_qkv": (True, True),
    }
    models = {
        name: L.decode_model(
            d_model, d_ff, n_layers, n_heads=max(1, d_model // 64), block=block,
            n_modules=n_modules, sparse_ffn=f, sparse_qkv=q, max_len=context + 1,
            seed=seed,
        ).reset(context)
        for name, (f, q) in variants.items()
    }  # fmt: skip
    hs = torch.randn(64, d_model, generator=torch.Generator().manual_seed(seed))

    def stepper(model: Any) -> Any:
        count = [0]

        def one() -> torch.Tensor:  # the next of 64 tokens: the units chosen vary
            model.position = context
            count[0] += 1
            return model.step(hs[count[0] % 64])

        return one

    with limit_threads(threads) as applied:
        comp = compare({k: stepper(m) for k, m in models.items()}, baseline="dense",
                       min_run_time=min_run_time, rounds=rounds)  # fmt: skip
    byts = {k: L.weight_bytes_per_token(m) for k, m in models.items()}
    return {
        "config": {"d_model": d_model, "d_ff": d_ff, "n_layers": n_layers,
                   "block": block, "n_modules": n_modules, "context": context,
                   "batch": 1, "threads": applied.torch, "dtype": "float32"},
        "times_s": {k: t.median_s for k, t in comp.timings.items()},
        "speedup_vs_dense": comp.ratios(),
        "bytes_per_token": byts,
        "bytes_ratio": {k: byts["dense"] / v for k, v in byts.items()},
    }  # fmt: skip


def run(quick: bool = False) -> dict[str, Any]:
    """Run the chapter 4 benchmarks (sizes in :data:`RUN_CONFIG`), print a line per
    section and return plain dicts. Goal: the sparse FFN with blocks of 8 decodes a
    token >= 4x (0.5 N) faster than the dense FFN (reported, never asserted)."""
    quick = check_bool("quick", quick)
    from effx_lab import device as devmod
    from effx_lab.bench import device_name

    cfg = RUN_CONFIG[quick]
    timing, threads = cfg["timing"], cfg["threads"]
    load_start = load_average()
    ffn = sparse_ffn_decode(**cfg["ffn"], threads=threads, **timing)
    print("sparse FFN decode, speed-up over dense (ideal N): " + ", ".join(
        f"{k} {v:.2f}x" for k, v in ffn["speedup_vs_dense"].items() if k != "dense"
    ), flush=True)  # fmt: skip
    nm = nm_matmul_vs_dense(**cfg["nm"], threads=threads, **timing)
    for row in nm["rows"]:
        print(f"2:4 nm_matmul (ours) vs dense, {row['tokens']} token(s): "
              f"{row['speedup_vs_dense']['nm_matmul_ours']:.3f}x", flush=True)
    perm = permutation_search(**cfg["perm"], threads=threads)
    print(f"permutation search: identity keeps {perm['identity_retained']:.4f}; " +
          ", ".join(f"spw {r['stripes_per_window']} iters {r['max_iters']}: "
                    f"{r['retained']:.4f} in {r['time_s']:.2f} s"
                    for r in perm["rows"]), flush=True)  # fmt: skip
    dec = decode_speedup(**cfg["decode"], threads=threads, **timing)
    print("whole-model decode speed-up: " + ", ".join(
        f"{k} {v:.2f}x" for k, v in dec["speedup_vs_dense"].items()
    ), flush=True)  # fmt: skip
    n8 = "N=8"
    value = ffn["speedup_vs_dense"].get(n8)
    goals = {
        "sparse_ffn_decode_n8": goal(value, 4.0, ideal=8.0,
                                     bytes_ratio=ffn["bytes_ratio"].get(n8)),
        "note": (
            "sparse FFN, blocks of 8 (d_model "
            f"{ffn['config']['d_model']}, d_ff {ffn['config']['d_ff']}, float32, "
            "single-token decode): >= 0.5 N = 4x the dense FFN; ideal N = 8x, the "
            "weight bytes allow about 0.62 N (the controller reads r (d + d_ff))"
            + (" (quick mode: small sizes, ratios not meaningful)" if quick else "")
        ),
    }  # fmt: skip
    return to_jsonable({
        "chapter": "ch04",
        "quick": quick,
        "device": device_name(),
        "device_summary": devmod.summary(),
        "torch_version": torch.__version__,
        "numpy_version": np.__version__,
        "threads": threads,
        "cpu_cores": cpu_cores(),
        "load_start": load_start,
        "load_end": load_average(),
        "goals": goals,
        "sparse_ffn_decode": ffn,
        "nm_matmul_vs_dense": nm,
        "permutation_search": perm,
        "decode_speedup": dec,
    })  # fmt: skip
