"""Chapter 5 benchmarks: ``python -m effx_lab.bench moe`` (or ``ch05``).

Each set of candidates is timed side by side in one run (:func:`effx_lab.bench.compare`:
interleaved rounds, so their ratios survive a busy machine), on one CPU thread (on a
machine shared with other jobs a parallel kernel waits for its descheduled second
thread, which swamps every ratio; one thread measures the work):

* :func:`strategies`: the MoE layer on ``T = 4096`` tokens, ``d_model = 512``,
  ``d_ff = 1024``, float32, ``E = 8, 16, 32, 64`` experts, top-1 at ``C = 1.25`` and
  top-2 at ``C = 2.0`` (a random router; the experts see uneven loads and some pairs
  drop): one-hot dispatch/combine einsums with capacity padding
  (:func:`~effx_lab.moe.torch_ops.moe_einsum`, the Mesh-TensorFlow/Switch
  formulation), sort + grouped GEMM (:func:`~effx_lab.moe.torch_ops.moe_grouped`,
  ours, the megablocks idea), PyTorch's ``F.grouped_mm``
  (:func:`effx_lab.moe.library.moe_grouped_mm`, the library) and, as the anchor, a
  dense FFN with the same active parameters (``k * d_ff`` hidden units) on every
  token. The per-token loop (:func:`~effx_lab.moe.torch_ops.moe_loop`, the
  definition) is far too slow for the full size: it is timed once per ``k`` at the
  smallest ``E`` on the first ``loop_tokens`` tokens and reported per token and scaled
  to ``T`` (a loop's time is linear in its tokens).
* :func:`all_to_all`: messages and bytes per rank of the flat and the hierarchical
  all-to-all (:func:`effx_lab.moe.distributed.count_all_to_all`) for 4 to 4096 ranks,
  and the wall time of both with 4 gloo processes on this machine
  (:func:`~effx_lab.moe.distributed.time_all_to_all`; on 2 cores more ranks measure
  the scheduler; all "nodes" share one memory, so the time shows the second stage's
  overhead, not the network saving).
* :func:`run`: all of it, with the goals as computed ratios (reported, never asserted):
  at 64 experts, top-1, ``C = 1.25``, ours >= 5x faster than the one-hot einsum and
  within 1.5x of the dense FFN with the same active parameters.
"""

from __future__ import annotations

import dataclasses
import math
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
    time_fn,
    to_jsonable,
)

__all__ = ["RUN_CONFIG", "all_to_all", "run", "strategies"]

#: sizes and timing of :func:`run`, full (False) and quick (True)
RUN_CONFIG: dict[bool, dict[str, Any]] = {
    False: {
        "threads": 1,
        "timing": {"min_run_time": 0.2, "rounds": 3},
        "moe": {"n_tokens": 4096, "d_model": 512, "d_ff": 1024,
                "experts": (8, 16, 32, 64), "settings": ((1, 1.25), (2, 2.0)),
                "loop_tokens": 256},
        "a2a": {"world_sizes": tuple(4 ** i for i in range(1, 7)),
                "ranks_per_node": (2, 8), "bytes_per_pair": 4 * 512 * 16,
                "time": {"world_size": 4, "ranks_per_node": 2, "rows_per_pair": 64,
                         "d": 512, "repeats": 20}},
    },
    True: {
        "threads": 1,
        "timing": {"min_run_time": 0.02, "rounds": 2},
        "moe": {"n_tokens": 256, "d_model": 64, "d_ff": 128, "experts": (4, 8),
                "settings": ((1, 1.25), (2, 2.0)), "loop_tokens": 16},
        "a2a": {"world_sizes": (4, 16, 64, 4096), "ranks_per_node": (2, 8),
                "bytes_per_pair": 4 * 64, "time": None},
    },
}  # fmt: skip

#: the candidates of :func:`strategies`, in the order they are reported
CANDIDATES = ("dense", "einsum", "grouped", "grouped_mm")


def _check_timing(min_run_time: Any, rounds: Any) -> tuple[float, int]:
    min_run_time = check_float(
        "min_run_time", min_run_time, min_value=0.0, min_inclusive=False
    )
    return min_run_time, check_int("rounds", rounds, min_value=1)


def _check_settings(settings: Any) -> tuple[tuple[int, float], ...]:
    bad = isinstance(settings, (str, bytes)) or not isinstance(settings, Sequence)
    if bad or not settings:
        raise TypeError("settings must be a non-empty sequence of (k, capacity_factor)"
                        f" pairs, got {describe(settings)}")  # fmt: skip
    out = []
    for i, s in enumerate(settings):
        if not isinstance(s, (tuple, list)) or len(s) != 2:
            raise TypeError(f"settings[{i}] must be a pair (k, capacity_factor), got "
                            f"{describe(s)}")  # fmt: skip
        out.append((check_int(f"settings[{i}][0]", s[0], min_value=1),
                    check_float(f"settings[{i}][1]", s[1], min_value=0.0,
                                min_inclusive=False)))  # fmt: skip
    return tuple(out)


def _torch_routing(r: Any) -> Any:
    """The NumPy face's routing as torch tensors (the same decision)."""
    return dataclasses.replace(
        r, experts=torch.from_numpy(r.experts), gates=torch.from_numpy(r.gates),
        slots=torch.from_numpy(r.slots), probs=torch.from_numpy(r.probs),
    )  # fmt: skip


def _dense_ffn(d: int, hidden: int, gen: torch.Generator) -> Any:
    w1 = torch.randn(d, hidden, generator=gen) / math.sqrt(d)
    w2 = torch.randn(hidden, d, generator=gen) / math.sqrt(hidden)
    b1, b2 = torch.zeros(hidden), torch.zeros(d)

    def ffn(x: torch.Tensor) -> torch.Tensor:
        return F.gelu(x @ w1 + b1, approximate="tanh") @ w2 + b2

    return ffn


def strategies(
    n_tokens: int = 4096,
    d_model: int = 512,
    d_ff: int = 1024,
    *,
    experts: Sequence[int] = (8, 16, 32, 64),
    settings: Sequence[tuple[int, float]] = ((1, 1.25), (2, 2.0)),
    loop_tokens: int = 256,
    min_run_time: float = 0.2,
    rounds: int = 3,
    threads: int | None = 1,
    seed: int = 0,
) -> dict[str, Any]:
    """Time the MoE layer's execution strategies side by side (float32, no grad).

    For every ``E`` in ``experts`` and ``(k, C)`` in ``settings``: a router with random
    weights routes ``n_tokens`` random tokens (vanilla policy, gates not
    renormalised); the row gives ``times_s`` of ``dense`` (the FFN with ``k * d_ff``
    hidden units on every token), ``einsum``, ``grouped`` (ours) and ``grouped_mm``
    (the library, where it runs), ``speedup_vs_einsum`` (einsum time / time),
    ``vs_dense`` (time / dense time: 1 is the dense FFN's speed), the routing's
    ``capacity``, ``dropped`` and ``padding`` fractions and ``max_abs_diff`` of each
    strategy against ``grouped`` (float32 rounding). ``loop``: the per-token loop at
    the smallest ``E`` on ``loop_tokens`` tokens, per token and scaled to
    ``n_tokens``."""
    from effx_lab.moe import library
    from effx_lab.moe import reference as R
    from effx_lab.moe import torch_ops as T

    n_tokens = check_int("n_tokens", n_tokens, min_value=1)
    d_model = check_int("d_model", d_model, min_value=1)
    d_ff = check_int("d_ff", d_ff, min_value=1)
    experts = check_int_sequence("experts", experts)
    settings = _check_settings(settings)
    for k, _ in settings:
        if k > min(experts):
            raise ValueError(f"settings' k must be <= the fewest experts "
                             f"({min(experts)}), got k = {k}")  # fmt: skip
    loop_tokens = check_int("loop_tokens", loop_tokens, min_value=1,
                            max_value=n_tokens)  # fmt: skip
    min_run_time, rounds = _check_timing(min_run_time, rounds)
    threads = check_threads(threads)
    seed = check_int("seed", seed, min_value=0)
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n_tokens, d_model, generator=gen)
    lib_ok = library.available()
    rows, loop = [], []
    with limit_threads(threads) as applied, torch.no_grad():
        for e in experts:
            params = T.init_experts(d_model, d_ff, e, seed=seed)
            w_gate = rng.standard_normal((d_model, e)) / math.sqrt(d_model)
            logits = x.double().numpy() @ w_gate
            for k, cf in settings:
                r_np = R.route(logits, k=k, capacity_factor=cf)
                r = _torch_routing(r_np)
                dense = _dense_ffn(d_model, k * d_ff, gen)
                fns = {
                    "dense": lambda dense=dense: dense(x),
                    "einsum": lambda r=r, p=params: T.moe_einsum(x, r, p),
                    "grouped": lambda r=r, p=params: T.moe_grouped(x, r, p),
                }
                if lib_ok:
                    fns["grouped_mm"] = lambda r=r, p=params: library.moe_grouped_mm(
                        x, r, p)  # fmt: skip
                ref = fns["grouped"]()
                diffs = {name: float((fn() - ref).abs().max())
                         for name, fn in fns.items() if name != "dense"}  # fmt: skip
                comp = compare(fns, baseline="einsum", min_run_time=min_run_time,
                               rounds=rounds)  # fmt: skip
                t = {name: tm.median_s for name, tm in comp.timings.items()}
                rows.append({
                    "n_experts": e, "k": k, "capacity_factor": cf,
                    "capacity": r_np.capacity,
                    "dropped": R.dropped_fraction(r_np),
                    "padding": R.padding_fraction(r_np),
                    "times_s": t,
                    "speedup_vs_einsum": comp.ratios(),
                    "vs_dense": {name: v / t["dense"] for name, v in t.items()},
                    "max_abs_diff": diffs,
                })  # fmt: skip
                if e == min(experts):
                    sub = dataclasses.replace(
                        r, experts=r.experts[:loop_tokens], gates=r.gates[:loop_tokens],
                        slots=r.slots[:loop_tokens], probs=r.probs[:loop_tokens])
                    xs = x[:loop_tokens]
                    tm = time_fn(lambda sub=sub: T.moe_loop(xs, sub, params),
                                 min_run_time=min_run_time)  # fmt: skip
                    per = tm.median_s / loop_tokens
                    loop.append({"n_experts": e, "k": k, "capacity_factor": cf,
                                 "tokens_timed": loop_tokens, "per_token_s": per,
                                 "scaled_s": per * n_tokens,
                                 "vs_grouped": per * n_tokens / t["grouped"]})
    return {
        "config": {"n_tokens": n_tokens, "d_model": d_model, "d_ff": d_ff,
                   "experts": list(experts), "settings": [list(s) for s in settings],
                   "dtype": "float32", "threads": applied.torch, "policy": "vanilla",
                   "router": "random Gaussian weights", "loop_tokens": loop_tokens},
        "grouped_mm": "timed" if lib_ok else f"skipped: {library.why_unavailable()}",
        "rows": rows,
        "loop": loop,
    }  # fmt: skip


def all_to_all(
    world_sizes: Sequence[int] = (4, 16, 64, 256, 1024, 4096),
    ranks_per_node: Sequence[int] = (2, 8),
    bytes_per_pair: int = 4 * 512 * 16,
    *,
    time: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Messages and bytes per rank of one all-to-all, flat and hierarchical, for every
    world size and node size that divides it (``bytes_per_pair``: 16 float32 tokens of
    512 values from each rank to each rank, by default), and, when ``time`` holds the
    arguments of :func:`effx_lab.moe.distributed.time_all_to_all`, the measured run."""
    from effx_lab.moe import distributed as D

    world_sizes = check_int_sequence("world_sizes", world_sizes)
    ranks_per_node = check_int_sequence("ranks_per_node", ranks_per_node)
    bytes_per_pair = check_int("bytes_per_pair", bytes_per_pair, min_value=0)
    if time is not None and not isinstance(time, dict):
        raise TypeError(f"time must be None or a dict of time_all_to_all's arguments,"
                        f" got {describe(time)}")  # fmt: skip
    counts = [D.count_all_to_all(g, L, bytes_per_pair)
              for L in ranks_per_node for g in world_sizes
              if g % L == 0 and g > L]  # fmt: skip
    return {
        "counts": counts,
        "timing": None if time is None else D.time_all_to_all(**time),
        "note": (
            "messages per rank: flat G - 1, hierarchical L - 1 + G / L - 1 (O(G) vs "
            "O(G / L + L)); the hierarchical exchange sends about twice the bytes per "
            "rank (each chunk moves twice) but the same bytes across nodes, in fewer, "
            "larger messages. The timing uses 4 gloo processes on one machine: no "
            "network, so it shows the extra stage's cost, not the saving"
        ),
    }  # fmt: skip


def run(quick: bool = False) -> dict[str, Any]:
    """Run the chapter 5 benchmarks (sizes in :data:`RUN_CONFIG`), print a line per
    section and return plain dicts. Goals at the largest ``E`` (64), top-1, ``C =
    1.25``: ours (sorted grouped) >= 5x faster than the one-hot einsum, and at most
    1.5x the dense FFN with the same active parameters (reported, never asserted)."""
    quick = check_bool("quick", quick)
    from effx_lab import device as devmod
    from effx_lab.bench import device_name

    cfg = RUN_CONFIG[quick]
    timing, threads = cfg["timing"], cfg["threads"]
    load_start = load_average()
    strat = strategies(**cfg["moe"], threads=threads, **timing)
    for row in strat["rows"]:
        t, v = row["speedup_vs_einsum"], row["vs_dense"]
        print(f"E={row['n_experts']:>3} k={row['k']} C={row['capacity_factor']}: "
              f"grouped (ours) {t['grouped']:.2f}x the einsum's speed, "
              f"{v['grouped']:.2f}x the dense FFN's time"
              + (f"; grouped_mm {v['grouped_mm']:.2f}x dense" if "grouped_mm" in v
                 else ""), flush=True)  # fmt: skip
    for row in strat["loop"]:
        print(f"per-token loop (E={row['n_experts']}, k={row['k']}): "
              f"{row['per_token_s'] * 1e6:.0f} us per token, "
              f"{row['vs_grouped']:.0f}x the grouped time", flush=True)
    a2a = all_to_all(**cfg["a2a"])
    big = a2a["counts"][-1]
    print(f"all-to-all at {big['world_size']} ranks, {big['ranks_per_node']} per "
          f"node: {big['flat']['messages']} messages per rank flat, "
          f"{big['hierarchical']['messages']} hierarchical", flush=True)
    if a2a["timing"] is not None:
        tm = a2a["timing"]
        print(f"4 gloo ranks: flat {tm['flat']['seconds'] * 1e3:.2f} ms, "
              f"hierarchical {tm['hierarchical']['seconds'] * 1e3:.2f} ms per "
              f"exchange (rows equal: {tm['equal']})", flush=True)
    e_max = max(cfg["moe"]["experts"])
    top1 = [r for r in strat["rows"] if r["n_experts"] == e_max and r["k"] == 1]
    sp = top1[0]["speedup_vs_einsum"]["grouped"] if top1 else None
    vd = top1[0]["vs_dense"]["grouped"] if top1 else None
    note = (f"E = {e_max}, top-1, C = 1.25, {cfg['moe']['n_tokens']} tokens, "
            f"d_model {cfg['moe']['d_model']}, d_ff {cfg['moe']['d_ff']}, float32, "
            "one thread")  # fmt: skip
    goals = {
        "grouped_vs_einsum": goal(sp, 5.0, what="einsum time / grouped time"),
        "grouped_vs_dense": goal(vd, 1.5, op="<=",
                                 what="grouped time / dense FFN time, same active "
                                      "parameters"),
        "note": note + (" (quick mode: small sizes, ratios not meaningful)"
                        if quick else ""),
    }  # fmt: skip
    return to_jsonable({
        "chapter": "ch05",
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
        "strategies": strat,
        "all_to_all": a2a,
    })  # fmt: skip
