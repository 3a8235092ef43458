"""Measuring: time, speed-ups side by side, memory peaks, the roofline, and JSON results.

Every chapter measures its techniques with these tools, so that all numbers in the course are taken
the same way:

* :func:`time_fn` times one function. On CPU it uses ``torch.utils.benchmark.Timer.blocked_autorange``
  (after a warm-up call; blocks of calls long enough that timer overhead vanishes; median and IQR
  over the blocks). On a CUDA GPU it uses ``triton.testing.do_bench`` (CUDA events, an L2-cache flush
  before each run, a warm-up phase), which times the kernels instead of Python's launch overhead.
* :func:`compare` times several candidates *in one run*, interleaved round by round, and reports
  speed-ups against a baseline. Ratios measured this way survive thermal drift and a busy laptop far
  better than absolute times measured at different moments.
* :func:`peak_memory` measures the peak extra memory a call needs (CUDA allocator statistics on a
  GPU; ``tracemalloc`` for NumPy plus PyTorch's profiler for torch tensors on CPU).
* :func:`measure_ceilings` measures this machine's peak FLOP/s and memory bandwidth (cached per
  device), and :class:`Roofline` places a measured kernel under those ceilings (Williams, Waterman &
  Patterson 2009, "Roofline: An Insightful Visual Performance Model for Multicore Architectures").
* :func:`save_results` writes results as JSON tagged with the device they came from: absolute times
  mean nothing without it.

What every chapter's ``bench.py`` shares besides the timers:

* :func:`limit_threads` (a context manager) runs a measurement with ``threads``
  PyTorch threads and, with ``blas=True`` and threadpoolctl installed, as many BLAS
  threads for NumPy, and restores both afterwards; :func:`check_threads` validates a
  ``threads`` argument up front (``None`` or an int >= 1). One thread measures the work
  without waiting on a descheduled second thread of a busy small CPU.
* :func:`goal` turns a measured ratio and the chapter's target into
  ``{"value", "goal", "met"}`` (plus any extra keys): goals are *reported* in
  ``run()``'s results, never asserted, because whether they are met depends on the
  device (docs/ARCHITECTURE.md, "Timings are shown, not asserted").
* :func:`cpu_cores` and :func:`load_average` say what the machine had to offer while
  it was measured.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import json
import math
import numbers
import os
import platform
import re
import statistics
import sys
import tempfile
import time
import tracemalloc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, NamedTuple

import numpy as np
import torch

from .._validate import check_bool, check_choice, check_float, check_int, describe
from ..device import cpu_name, has_cuda

__all__ = [
    "BACKEND_CPU",
    "BACKEND_CUDA",
    "Ceilings",
    "Comparison",
    "Roofline",
    "RooflinePoint",
    "Timing",
    "ThreadLimits",
    "cache_dir",
    "experiments_main",
    "check_seed_spread",
    "check_threads",
    "compare",
    "compare_arms",
    "cpu_cores",
    "device_name",
    "goal",
    "limit_threads",
    "load_average",
    "load_checked_results",
    "measure_ceilings",
    "memory_by_source",
    "peak_memory",
    "run_record",
    "save_results",
    "seed_spread",
    "time_fn",
    "to_jsonable",
    "write_json",
]

#: backend names recorded in :class:`Timing`
BACKEND_CPU = "torch.utils.benchmark"
BACKEND_CUDA = "triton.testing.do_bench"


# ---------------------------------------------------------------------------------------------- device


def _has_cuda() -> bool:
    return bool(has_cuda())


def _resolve_device(device: Any) -> str:
    """``None`` -> "cuda" when a GPU is present else "cpu"; "cpu"/"cuda"/"cuda:N"/torch.device accepted."""
    if device is None:
        return "cuda" if _has_cuda() else "cpu"
    if isinstance(device, torch.device):
        kind = device.type
    elif isinstance(device, str):
        kind = device.split(":", 1)[0].strip().lower()
    else:
        raise TypeError(f"device must be None, a str ('cpu' or 'cuda') or a torch.device, got {describe(device)}")
    if kind not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    if kind == "cuda" and not _has_cuda():
        raise ValueError(f"device={device!r} was requested but PyTorch sees no CUDA GPU on this machine")
    return kind


def _cpu_model() -> str:
    return cpu_name()


def cpu_cores() -> int:
    """The CPU cores this process may run on (its affinity mask, else all cores)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages, or None where the OS has none."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def device_name() -> str:
    """Name of the device benchmarks run on: the CUDA GPU's name, else the CPU model and its core count.

    Examples: ``"NVIDIA H100 80GB HBM3"``, ``"AMD EPYC (2 cores)"``. Used as the key of the ceilings
    cache and in the file name of saved results.
    """
    if _has_cuda():
        return torch.cuda.get_device_name(0)
    return f"{_cpu_model()} ({cpu_cores()} cores)"


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "device"


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


# --------------------------------------------------------------------------------------------- threads


class ThreadLimits(NamedTuple):
    """What :func:`limit_threads` applied inside its block.

    ``torch``: PyTorch's thread count; ``blas``: the BLAS limit set for NumPy, or
    ``None`` when BLAS was left alone (``threads=None``, ``blas=False`` or no
    threadpoolctl).
    """

    torch: int
    blas: int | None


def check_threads(threads: Any) -> int | None:
    """``threads`` as a thread count (an int >= 1), or None (leave the settings alone).

    A benchmark validates its ``threads`` argument with this before any expensive
    setup. Raises ``TypeError``/``ValueError`` naming ``threads``.
    """
    if threads is None:
        return None
    integer = isinstance(threads, numbers.Integral)
    if isinstance(threads, (bool, np.bool_)) or not integer:
        raise TypeError(f"threads must be None or an int >= 1, got {describe(threads)}")
    return check_int("threads", threads, min_value=1)


@contextlib.contextmanager
def limit_threads(threads: int | None, *, blas: bool = True) -> Iterator[ThreadLimits]:
    """Run the ``with`` block with ``threads`` PyTorch (and BLAS) threads, then restore.

    ``threads=None`` changes nothing. With ``blas=True`` NumPy's BLAS is limited too,
    through threadpoolctl when it is installed (else it keeps its own count and
    :attr:`ThreadLimits.blas` is None). Yields the :class:`ThreadLimits` in force::

        with limit_threads(1) as applied:
            comparison = compare({"numpy": ..., "torch": ...}, baseline="numpy")
        config["threads"], config["numpy_blas_threads"] = applied.torch, applied.blas
    """
    threads = check_threads(threads)
    blas = check_bool("blas", blas)
    old = torch.get_num_threads()
    with contextlib.ExitStack() as stack:
        blas_limit = None
        if threads is not None and blas:
            try:
                from threadpoolctl import threadpool_limits
            except ImportError:
                pass
            else:
                stack.enter_context(threadpool_limits(limits=threads, user_api="blas"))
                blas_limit = threads
        try:
            if threads is not None:
                torch.set_num_threads(threads)
            yield ThreadLimits(torch.get_num_threads(), blas_limit)
        finally:
            torch.set_num_threads(old)


# ------------------------------------------------------------------------------------------------ goals
_GOAL_OPS = (">=", "<=")
_GOAL_KEYS = ("value", "goal", "met")


def goal(
    value: float | None, target: float, *, op: str = ">=", **extra: Any
) -> dict[str, Any]:
    """A chapter's goal as a computed ratio: ``{"value", "goal", "met"}``.

    ``value`` is the measured number (``None`` when it could not be measured: then not
    met), ``target`` the goal, ``op`` ``">="`` (at least) or ``"<="`` (at most).
    ``extra`` keys are added to the dict (e.g. ``path="int8_triton"``, the candidate
    that reached the value). The dict goes into ``run()``'s results: a goal is
    reported, never asserted. A NaN value is not met (and becomes ``null`` in JSON).
    """
    real = isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))
    if value is not None and not real:
        raise TypeError(
            f"value must be a real number or None (not measured), got {describe(value)}"
        )
    target = check_float("target", target)
    op = check_choice("op", op, _GOAL_OPS)
    clash = [key for key in extra if key in _GOAL_KEYS]
    if clash:
        raise ValueError(
            f"extra keys must not be one of {list(_GOAL_KEYS)}, got {clash}"
        )
    if value is None or math.isnan(float(value)):
        met = False
    else:
        met = float(value) >= target if op == ">=" else float(value) <= target
    return {"value": value, "goal": f"{op} {target:.4g}", "met": bool(met), **extra}


# ---------------------------------------------------------------------------------------------- timing


@dataclass(frozen=True)
class Timing:
    """Time of one function: median and interquartile range of the per-call time, in seconds.

    ``runs`` is the number of timed calls behind the statistics, ``device`` "cpu" or "cuda" and
    ``backend`` the measuring tool (:data:`BACKEND_CPU` or :data:`BACKEND_CUDA`).
    """

    name: str
    median_s: float
    iqr_s: float
    runs: int
    device: str
    backend: str

    @property
    def median_ms(self) -> float:
        return self.median_s * 1e3

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def __str__(self) -> str:
        return (
            f"{self.name}: {_fmt_time(self.median_s)} median (IQR {_fmt_time(self.iqr_s)}) over {self.runs} "
            f"calls on {self.device} [{self.backend}]"
        )


def _fmt_time(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.3f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.3f} ms"
    if seconds >= 1e-6:
        return f"{seconds * 1e6:.3f} µs"
    return f"{seconds * 1e9:.1f} ns"


def _check_callable(name: str, fn: Any) -> None:
    if not callable(fn):
        raise TypeError(f"{name} must be callable (a function to time), got {describe(fn)}")


def _quartiles(samples: list[float]) -> tuple[float, float, float]:
    q25, q50, q75 = np.percentile(np.asarray(samples, dtype=np.float64), [25, 50, 75])
    return float(q25), float(q50), float(q75)


def _measure(fn: Callable[[], Any], device: str, min_run_time: float) -> tuple[list[float], int, str]:
    """Per-call times in seconds (one per block or run), the number of calls they cover, and the backend."""
    if device == "cuda":
        try:
            from triton.testing import do_bench
        except ImportError:
            do_bench = None
        if do_bench is not None:
            rep_ms = max(1.0, min_run_time * 1e3)
            try:
                times_ms = do_bench(fn, warmup=max(1.0, rep_ms / 4), rep=rep_ms, return_mode="all")
            except (AssertionError, TypeError, ValueError):  # Triton too old for return_mode="all"
                times_ms = None
            if times_ms is not None:
                times = [float(t) * 1e-3 for t in times_ms]
                return times, len(times), BACKEND_CUDA
    # CPU, or CUDA without Triton: torch.utils.benchmark. Its default timer already synchronizes CUDA;
    # the explicit synchronize in the statement makes sure the kernels of the last call are counted.
    from torch.utils import benchmark

    fn()  # warm-up: first-call costs (allocation, dispatch caches, lazy init) are not what we measure
    _sync(device)
    timer = benchmark.Timer(
        stmt="fn(); sync()",
        globals={"fn": fn, "sync": (lambda: _sync(device))},
        num_threads=torch.get_num_threads(),  # Timer defaults to 1 thread; measure what users get
    )
    m = timer.blocked_autorange(min_run_time=min_run_time)
    times = [float(t) for t in m.times]
    return times, int(m.number_per_run) * len(times), BACKEND_CPU


def time_fn(
    fn: Callable[..., Any],
    *args: Any,
    name: str | None = None,
    min_run_time: float = 0.2,
    device: Any = None,
    **kwargs: Any,
) -> Timing:
    """Time ``fn(*args, **kwargs)``: median and IQR of the per-call time in seconds.

    * CPU (``device="cpu"``, or no GPU): one warm-up call, then
      ``torch.utils.benchmark.Timer(...).blocked_autorange(min_run_time=min_run_time)``, which groups
      calls into blocks long enough for the clock's resolution and reports statistics over blocks. It
      runs with PyTorch's current thread count (the Timer's default of one thread would understate
      multi-threaded kernels).
    * CUDA (``device="cuda"``, or ``None`` with a GPU present): ``triton.testing.do_bench`` with
      ``rep = min_run_time``: CUDA events around each call, L2 cache flushed before each, statistics over
      the individual runs. Without Triton (or with a Triton whose ``do_bench`` lacks
      ``return_mode="all"``), falls back to ``torch.utils.benchmark`` with a CUDA synchronize after
      each call.

    ``name`` defaults to the function's ``__name__``. Keyword arguments called ``name``,
    ``min_run_time`` or ``device`` belong to ``time_fn`` itself; bind such arguments of ``fn`` with a
    lambda or ``functools.partial``.
    """
    _check_callable("fn", fn)
    if name is None:
        name = getattr(fn, "__name__", type(fn).__name__)
    elif not isinstance(name, str) or not name:
        raise TypeError(f"name must be a non-empty str or None, got {describe(name)}")
    min_run_time = check_float("min_run_time", min_run_time, min_value=0.0, min_inclusive=False)
    dev = _resolve_device(device)

    def call() -> Any:
        return fn(*args, **kwargs)

    times, runs, backend = _measure(call, dev, min_run_time)
    q25, q50, q75 = _quartiles(times)
    return Timing(name=name, median_s=q50, iqr_s=q75 - q25, runs=runs, device=dev, backend=backend)


@dataclass
class Comparison:
    """Timings of several candidates measured side by side, and their speed-ups over a baseline.

    ``round_medians_s[name]`` holds the candidate's median in each round; its :class:`Timing` has the
    median of those round medians and the IQR of all its samples pooled over the rounds.
    """

    timings: dict[str, Timing]
    baseline: str
    rounds: int
    round_medians_s: dict[str, list[float]] = field(default_factory=dict)

    def speedup(self, name: str) -> float:
        """``baseline time / time of name``: above 1 means ``name`` is faster than the baseline."""
        if name not in self.timings:
            raise ValueError(f"name must be one of {sorted(self.timings)}, got {name!r}")
        return self.timings[self.baseline].median_s / self.timings[name].median_s

    def ratios(self) -> dict[str, float]:
        """Speed-up of every candidate over the baseline (the baseline's is 1.0)."""
        return {name: self.speedup(name) for name in self.timings}

    def _rows(self) -> list[tuple[str, str, str, str]]:
        return [
            (name, f"{t.median_s * 1e3:.4g}", f"{t.iqr_s * 1e3:.2g}", f"{self.speedup(name):.2f}x")
            for name, t in self.timings.items()
        ]

    def _footer(self) -> str:
        first = next(iter(self.timings.values()))
        return f"{self.rounds} interleaved round(s) on {first.device} [{first.backend}]"

    def table(self) -> str:
        """Aligned text table: name, median (ms), IQR (ms), speed-up vs the baseline."""
        header = ("name", "median ms", "IQR ms", f"speed-up vs {self.baseline}")
        rows = [header, *self._rows()]
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        lines = []
        for j, r in enumerate(rows):
            cells = [r[0].ljust(widths[0])] + [r[i].rjust(widths[i]) for i in range(1, 4)]
            lines.append("  ".join(cells))
            if j == 0:
                lines.append("  ".join("-" * w for w in widths))
        lines.append(self._footer())
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "baseline": self.baseline,
            "rounds": self.rounds,
            "timings": {name: t.to_dict() for name, t in self.timings.items()},
            "speedups": self.ratios(),
            "round_medians_s": {name: list(v) for name, v in self.round_medians_s.items()},
        }

    def _repr_markdown_(self) -> str:
        lines = [
            f"| name | median (ms) | IQR (ms) | speed-up vs {self.baseline} |",
            "|:--|--:|--:|--:|",
            *(f"| {a} | {b} | {c} | {d} |" for a, b, c, d in self._rows()),
            "",
            self._footer(),
        ]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


def compare(
    fns: dict[str, Callable[[], Any]],
    *,
    baseline: str,
    min_run_time: float = 0.2,
    rounds: int = 3,
    device: Any = None,
) -> Comparison:
    """Time several zero-argument callables side by side and report speed-ups over ``baseline``.

    All candidates are measured in one run, interleaved: round 1 times A, B, C, then round 2 times
    A, B, C again, and so on, each for ``min_run_time`` seconds per round (with the same backend as
    :func:`time_fn`). Slow drift (CPU frequency, other programs, thermal throttling) then hits every
    candidate alike, and each candidate's time is the median of its round medians. Use
    ``functools.partial`` or a lambda to bind arguments.
    """
    if not isinstance(fns, dict) or not fns:
        raise TypeError(f"fns must be a non-empty dict of name -> callable, got {describe(fns)}")
    for key, fn in fns.items():
        if not isinstance(key, str) or not key:
            raise TypeError(f"fns keys must be non-empty str names, got {key!r}")
        _check_callable(f"fns[{key!r}]", fn)
    if not isinstance(baseline, str):
        raise TypeError(f"baseline must be a str naming one of {list(fns)}, got {describe(baseline)}")
    if baseline not in fns:
        raise ValueError(f"baseline must be one of {list(fns)}, got {baseline!r}")
    min_run_time = check_float("min_run_time", min_run_time, min_value=0.0, min_inclusive=False)
    rounds = check_int("rounds", rounds, min_value=1)
    dev = _resolve_device(device)

    samples: dict[str, list[float]] = {name: [] for name in fns}
    round_medians: dict[str, list[float]] = {name: [] for name in fns}
    runs: dict[str, int] = {name: 0 for name in fns}
    backend = BACKEND_CPU
    for _ in range(rounds):
        for name, fn in fns.items():
            times, n_calls, backend = _measure(fn, dev, min_run_time)
            samples[name].extend(times)
            round_medians[name].append(float(np.median(times)))
            runs[name] += n_calls
    timings = {}
    for name in fns:
        q25, _, q75 = _quartiles(samples[name])
        timings[name] = Timing(
            name=name,
            median_s=float(statistics.median(round_medians[name])),
            iqr_s=q75 - q25,
            runs=runs[name],
            device=dev,
            backend=backend,
        )
    return Comparison(timings=timings, baseline=baseline, rounds=rounds, round_medians_s=round_medians)


# ---------------------------------------------------------------------------------------------- memory


@contextlib.contextmanager
def _quiet_profiler_log() -> Iterator[None]:
    """Hide the ``USDT:``/``STAGE:`` lines that PyTorch's profiler backend (Kineto) prints to file
    descriptor 2 on every start and stop (no setting silences them); any other output is passed on."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no usable file descriptor 2: nothing to hide
        yield
        return
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            text = tmp.read().decode("utf-8", errors="replace")
            kept = [line for line in text.splitlines(keepends=True) if not re.match(r"(USDT|STAGE):", line)]
            if kept:
                sys.stderr.write("".join(kept))


def _torch_cpu_peak(prof: Any) -> int:
    """Peak of the running sum of CPU allocation deltas recorded by ``torch.profiler`` (bytes).

    Every allocation and free of PyTorch's CPU allocator becomes a ``[memory]`` record with a signed
    byte count; sorted by time, the running sum is the memory torch holds beyond what it held when
    profiling started, and its maximum is the peak. The raw records (``kineto_results``) keep transient
    allocations made and freed inside one operator; if that internal attribute is missing, the public
    event list is used, where allocations are attributed to operators (``self_cpu_memory_usage``) and a
    buffer allocated and freed inside one operator is not seen.
    """
    records: list[tuple[int, int]] = []
    kineto = getattr(getattr(prof, "profiler", None), "kineto_results", None)
    if kineto is not None:
        for e in kineto.events():
            if e.name() == "[memory]" and str(e.device_type()).endswith("CPU"):
                records.append((int(e.start_ns()), int(e.nbytes())))
    else:  # pragma: no cover - depends on the torch version
        for e in prof.events():
            delta = int(getattr(e, "self_cpu_memory_usage", 0) or 0)
            if delta:
                records.append((int(e.time_range.start), delta))
    records.sort(key=lambda r: r[0])
    running = peak = 0
    for _, delta in records:
        running += delta
        peak = max(peak, running)
    return peak


def memory_by_source(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> dict[str, int | None]:
    """Call ``fn(*args, **kwargs)`` once and return its peak extra memory per allocator, in bytes.

    * ``"tracemalloc"``: Python objects and NumPy arrays (NumPy reports its data buffers to
      :mod:`tracemalloc`): peak traced memory during the call minus the traced memory at its start.
    * ``"torch_cpu"``: PyTorch CPU tensors, which :mod:`tracemalloc` does NOT see (PyTorch's allocator
      does not report to it): ``torch.profiler.profile(profile_memory=True)`` records every allocation
      and free, and the peak of the running sum of those deltas is taken.
    * ``"cuda"``: ``torch.cuda.max_memory_allocated()`` after ``reset_peak_memory_stats()``, minus the
      memory allocated at the start; ``None`` without a GPU.

    All three count memory still held by the return value. Memory freed by the call (pre-existing
    buffers) never makes a peak negative.
    """
    _check_callable("fn", fn)
    from torch.profiler import ProfilerActivity, profile

    cuda = _has_cuda()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        cuda_base = torch.cuda.memory_allocated()
    with _quiet_profiler_log(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        was_tracing = tracemalloc.is_tracing()
        if not was_tracing:
            tracemalloc.start()
        try:
            tracemalloc.reset_peak()
            traced_base, _ = tracemalloc.get_traced_memory()
            result = fn(*args, **kwargs)
            if cuda:
                torch.cuda.synchronize()
            _, traced_peak = tracemalloc.get_traced_memory()
        finally:
            if not was_tracing:
                tracemalloc.stop()
    del result
    cuda_peak = max(0, int(torch.cuda.max_memory_allocated()) - int(cuda_base)) if cuda else None
    return {
        "tracemalloc": max(0, int(traced_peak - traced_base)),
        "torch_cpu": _torch_cpu_peak(prof),
        "cuda": cuda_peak,
    }


def peak_memory(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> int:
    """Peak extra memory, in bytes, needed by one call of ``fn(*args, **kwargs)``.

    On a machine with a GPU, when the call allocates CUDA memory, this is the CUDA allocator's peak
    (``reset_peak_memory_stats`` then ``max_memory_allocated`` minus the memory allocated before).
    Otherwise it is the host peak: ``tracemalloc``'s peak (Python objects and NumPy arrays) plus the
    peak of PyTorch's CPU allocations taken from ``torch.profiler`` (PyTorch CPU tensors are invisible
    to ``tracemalloc``); see :func:`memory_by_source` for each part. When only one library allocates,
    this is that library's peak; when both do, the sum is an upper bound (their peaks may not coincide).
    This is memory *requested* by the code, like PyTorch's own memory statistics: pages an allocator
    keeps cached after a free, and buffers of other native libraries that report to neither tool, are
    not counted, so it can differ from the process's resident size.
    """
    parts = memory_by_source(fn, *args, **kwargs)
    if parts["cuda"]:
        return int(parts["cuda"])
    return int(parts["tracemalloc"]) + int(parts["torch_cpu"])


# -------------------------------------------------------------------------------------------- roofline

_DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
}


@dataclass(frozen=True)
class Ceilings:
    """Measured ceilings of a device: peak FLOP/s and peak memory bandwidth (bytes/s) for ``dtype``."""

    device: str
    peak_flops: float
    peak_bandwidth: float
    dtype: str
    method: str
    measured_at: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def __str__(self) -> str:
        return (
            f"{self.device} ({self.dtype}): {self.peak_flops / 1e9:.1f} GFLOP/s, "
            f"{self.peak_bandwidth / 1e9:.1f} GB/s, ridge {self.peak_flops / self.peak_bandwidth:.1f} FLOP/byte"
        )


def cache_dir() -> Path:
    """Where effx_lab caches measurements: ``$EFFX_LAB_CACHE`` if set, else ``~/.cache/effx_lab``."""
    env = os.environ.get("EFFX_LAB_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "effx_lab"


def _read_cache(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_cache(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True), encoding="utf-8")
    os.replace(tmp, path)


def _best_seconds(fn: Callable[[], Any], device: str, budget_s: float, min_repeats: int) -> tuple[float, int]:
    """Fastest per-call time of ``fn`` over repeats until ``budget_s`` is spent (at least ``min_repeats``)."""
    fn()  # warm-up (page faults, library initialisation)
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    single = max(time.perf_counter() - t0, 1e-9)
    number = max(1, math.ceil(0.01 / single))  # at least ~10 ms per sample, far above timer resolution
    best, repeats, start = math.inf, 0, time.perf_counter()
    while repeats < min_repeats or time.perf_counter() - start < budget_s:
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        _sync(device)
        best = min(best, (time.perf_counter() - t0) / number)
        repeats += 1
    return best, repeats


def measure_ceilings(*, dtype: str = "float32", quick: bool = False, cache: bool = True) -> Ceilings:
    """Measure this device's peak FLOP/s and memory bandwidth (not datasheet numbers) for ``dtype``.

    * peak FLOP/s: the fastest of repeated ``torch.matmul`` of two ``n x n`` matrices, counted as
      ``2 n^3`` FLOPs (n = 2048 on CPU, 8192 on a GPU; 1024 / 2048 in quick mode). On a GPU, float32
      matmuls use TF32 tensor cores only if ``torch.backends.cuda.matmul.allow_tf32`` is on; the method
      string records the setting.
    * peak bandwidth: the fastest of repeated ``dst.copy_(src)`` of a buffer far larger than the last
      level cache (256 MiB on CPU, 1 GiB on a GPU; 64 MiB / 256 MiB in quick mode), counted as bytes read
      plus bytes written (``2 x size``; the STREAM convention, which ignores write-allocate traffic).

    Both use every CPU thread PyTorch uses. The result is cached in ``cache_dir() / "ceilings.json"``
    keyed by :func:`device_name` and ``dtype``, so it is measured once per device: a cached full
    measurement answers both modes, a cached quick one only quick requests. ``cache=False`` measures
    afresh. Every full measurement is combined with the cached full one by taking the maximum of each
    ceiling (the best the device has shown; a busy moment only understates it), and the cache is updated;
    a quick one is cached only when ``cache=True`` and no full measurement exists.
    """
    check_choice("dtype", dtype, tuple(_DTYPES))
    quick = check_bool("quick", quick)
    cache = check_bool("cache", cache)
    name = device_name()
    key = f"{name} | {dtype}"
    path = cache_dir() / "ceilings.json"
    if cache:
        entry = _read_cache(path).get(key)
        if isinstance(entry, dict) and isinstance(entry.get("ceilings"), dict) and (quick or not entry.get("quick")):
            try:
                return Ceilings(**entry["ceilings"])
            except TypeError:
                pass  # written by another version: measure again

    device = "cuda" if _has_cuda() else "cpu"
    tdtype = _DTYPES[dtype]
    if device == "cuda":
        n = 2048 if quick else 8192
        copy_bytes = (256 if quick else 1024) * 2**20
    else:
        n = 1024 if quick else 2048
        copy_bytes = (64 if quick else 256) * 2**20
    budget = 0.3 if quick else 2.0
    gen = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, generator=gen, device=device).to(tdtype)
    b = torch.randn(n, n, generator=gen, device=device).to(tdtype)
    c = torch.empty(n, n, device=device, dtype=tdtype)
    t_mm, r_mm = _best_seconds(lambda: torch.matmul(a, b, out=c), device, budget, 3)
    del a, b, c
    numel = copy_bytes // torch.tensor([], dtype=tdtype).element_size()
    src = torch.ones(numel, device=device, dtype=tdtype)
    dst = torch.empty_like(src)
    t_copy, r_copy = _best_seconds(lambda: dst.copy_(src), device, budget, 3)
    del src, dst

    tf32 = ""
    if device == "cuda" and dtype == "float32":
        tf32 = f", TF32 {'on' if torch.backends.cuda.matmul.allow_tf32 else 'off'}"
    method = (
        f"best of {r_mm} torch.matmul {n}x{n} {dtype} (2n^3 FLOPs{tf32}); best of {r_copy} copy_ of "
        f"{copy_bytes // 2**20} MiB counted as 2x bytes (read + write); {torch.get_num_threads()} torch threads"
        f"{'; quick mode' if quick else ''}"
    )
    result = Ceilings(
        device=name,
        peak_flops=2.0 * n**3 / t_mm,
        peak_bandwidth=2.0 * copy_bytes / t_copy,
        dtype=dtype,
        method=method,
        measured_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    )
    # A ceiling is the best this device has shown: a measurement taken while the machine was busy only
    # understates it. So every full measurement is folded into the cache by keeping the maximum of each
    # ceiling, and the maximum is what we return (quick measurements never replace a full one).
    data = _read_cache(path)
    old = data.get(key)
    old_full = isinstance(old, dict) and old.get("quick") is False and isinstance(old.get("ceilings"), dict)
    if old_full and not quick:
        try:
            prev = Ceilings(**old["ceilings"])
        except TypeError:
            prev = None
        if prev is not None and (prev.peak_flops > result.peak_flops or prev.peak_bandwidth > result.peak_bandwidth):
            result = Ceilings(
                device=name,
                peak_flops=max(prev.peak_flops, result.peak_flops),
                peak_bandwidth=max(prev.peak_bandwidth, result.peak_bandwidth),
                dtype=dtype,
                method=method + "; the maximum of this and earlier measurements on this device",
                measured_at=result.measured_at,
            )
    if not quick or (cache and not old_full):  # a quick result never replaces a full one
        data[key] = {"quick": quick, "ceilings": result.to_dict()}
        _write_cache(path, data)
    return result


@dataclass(frozen=True)
class RooflinePoint:
    """A measured kernel placed on the roofline.

    ``intensity`` = FLOPs / bytes moved; ``achieved_flops`` and ``achieved_bandwidth`` are per second;
    ``attainable_flops`` is the roof at that intensity; ``fraction_of_attainable`` how close the kernel
    gets to it (achieved bandwidth / peak bandwidth when memory-bound, achieved FLOP/s / peak FLOP/s when
    compute-bound; both equal achieved / attainable FLOP/s when FLOPs > 0).
    """

    name: str
    flops: float
    bytes_moved: float
    seconds: float
    intensity: float
    achieved_flops: float
    achieved_bandwidth: float
    attainable_flops: float
    fraction_of_attainable: float
    bound: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class Roofline:
    """The roofline model of a device (Williams, Waterman & Patterson 2009).

    A kernel of arithmetic intensity ``I`` (FLOPs per byte moved to or from memory) can reach at most
    ``attainable(I) = min(peak_flops, peak_bandwidth * I)``. Below the *ridge* intensity
    ``peak_flops / peak_bandwidth`` the bandwidth roof binds (memory-bound), above it the compute roof.
    """

    def __init__(self, ceilings: Ceilings) -> None:
        if not isinstance(ceilings, Ceilings):
            raise TypeError(f"ceilings must be a Ceilings (from measure_ceilings()), got {describe(ceilings)}")
        check_float("ceilings.peak_flops", ceilings.peak_flops, min_value=0.0, min_inclusive=False)
        check_float("ceilings.peak_bandwidth", ceilings.peak_bandwidth, min_value=0.0, min_inclusive=False)
        self.ceilings = ceilings

    @property
    def peak_flops(self) -> float:
        return float(self.ceilings.peak_flops)

    @property
    def peak_bandwidth(self) -> float:
        return float(self.ceilings.peak_bandwidth)

    @property
    def ridge_intensity(self) -> float:
        """Intensity (FLOP/byte) where the two roofs meet: ``peak_flops / peak_bandwidth``."""
        return self.peak_flops / self.peak_bandwidth

    def attainable(self, intensity: Any) -> Any:
        """``min(peak_flops, peak_bandwidth * intensity)`` in FLOP/s; a float, or an array for an array."""
        if isinstance(intensity, np.ndarray):
            if intensity.dtype.kind not in "fiu":
                raise TypeError(f"intensity must be a real number or a real array, got {describe(intensity)}")
            if np.isnan(intensity).any() or (intensity < 0).any():
                raise ValueError("intensity must be >= 0 (FLOPs per byte) everywhere, with no NaN")
            return np.minimum(self.peak_flops, self.peak_bandwidth * intensity.astype(np.float64))
        if isinstance(intensity, (bool, np.bool_)) or not isinstance(intensity, numbers.Real):
            raise TypeError(f"intensity must be a real number or a real array, got {describe(intensity)}")
        if math.isnan(intensity) or intensity < 0:
            raise ValueError(f"intensity must be >= 0 (FLOPs per byte), got {intensity}")
        return float(min(self.peak_flops, self.peak_bandwidth * float(intensity)))

    def bound(self, intensity: float) -> str:
        """``"memory"`` below the ridge intensity, ``"compute"`` at or above it."""
        intensity = check_float("intensity", intensity, min_value=0.0)
        return "memory" if intensity < self.ridge_intensity else "compute"

    def point(self, name: str, flops: float, bytes_moved: float, seconds: float) -> RooflinePoint:
        """Place a kernel that did ``flops`` FLOPs and moved ``bytes_moved`` bytes in ``seconds`` seconds."""
        if not isinstance(name, str):
            raise TypeError(f"name must be a str, got {describe(name)}")
        flops = check_float("flops", flops, min_value=0.0)
        bytes_moved = check_float("bytes_moved", bytes_moved, min_value=0.0, min_inclusive=False)
        seconds = check_float("seconds", seconds, min_value=0.0, min_inclusive=False)
        intensity = flops / bytes_moved
        achieved_flops = flops / seconds
        achieved_bandwidth = bytes_moved / seconds
        bound = self.bound(intensity)
        if bound == "memory":
            fraction = achieved_bandwidth / self.peak_bandwidth
        else:
            fraction = achieved_flops / self.peak_flops
        return RooflinePoint(
            name=name,
            flops=flops,
            bytes_moved=bytes_moved,
            seconds=seconds,
            intensity=intensity,
            achieved_flops=achieved_flops,
            achieved_bandwidth=achieved_bandwidth,
            attainable_flops=self.attainable(intensity),
            fraction_of_attainable=fraction,
            bound=bound,
        )

    def __repr__(self) -> str:
        return (
            f"Roofline(peak_flops={self.peak_flops:.3g}, peak_bandwidth={self.peak_bandwidth:.3g}, "
            f"ridge_intensity={self.ridge_intensity:.3g}, device={self.ceilings.device!r})"
        )


# --------------------------------------------------------------------------------------------- results


def to_jsonable(obj: Any, _where: str = "results") -> Any:
    """Convert results to plain JSON types.

    Handles objects with ``to_dict()`` (:class:`Timing`, :class:`Comparison`, :class:`Ceilings`,
    :class:`RooflinePoint`), other dataclasses, dicts (keys become str), lists/tuples, NumPy scalars
    and arrays, torch tensors and paths. Non-finite floats become ``None`` (JSON has no NaN).
    Anything else raises ``TypeError`` naming where it was found.
    """
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, numbers.Integral):
        return int(obj)
    if isinstance(obj, numbers.Real):
        value = float(obj)
        return value if math.isfinite(value) else None
    if isinstance(obj, torch.Tensor):
        return to_jsonable(obj.detach().cpu().numpy(), _where)
    if isinstance(obj, np.ndarray):
        return [to_jsonable(v, f"{_where}[{i}]") for i, v in enumerate(obj.tolist())]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "to_dict") and callable(obj.to_dict):
        return to_jsonable(obj.to_dict(), _where)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return to_jsonable(dataclasses.asdict(obj), _where)
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if not isinstance(k, (str, int, float, bool, np.integer)):
                raise TypeError(f"{_where} has a key that cannot be a JSON key: {describe(k)}")
            out[str(k)] = to_jsonable(v, f"{_where}[{k!r}]")
        return out
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v, f"{_where}[{i}]") for i, v in enumerate(obj)]
    raise TypeError(f"{_where} cannot be written as JSON: got {describe(obj)}")


def save_results(name: str, results: dict[str, Any], out_dir: str | os.PathLike[str] | None = None) -> Path:
    """Write ``results`` to ``<out_dir or ./bench_results>/<name>-<device-slug>.json`` and return the path.

    The file records the device name (and :func:`effx_lab.device.summary` when available), the torch,
    NumPy and Python versions and the UTC time next to the results, converted by :func:`to_jsonable`.
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {describe(name)}")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise ValueError(f"name must be letters, digits, '_', '-' or '.' (it becomes a file name), got {name!r}")
    if not isinstance(results, dict):
        raise TypeError(f"results must be a dict, got {describe(results)}")
    if out_dir is not None and not isinstance(out_dir, (str, os.PathLike)):
        raise TypeError(f"out_dir must be a path or None, got {describe(out_dir)}")
    device = device_name()
    try:
        from effx_lab.device import summary

        device_summary = summary()
    except ImportError:
        device_summary = device
    payload = {
        "name": name,
        "device": device,
        "device_summary": device_summary,
        "torch_version": torch.__version__,
        "numpy_version": np.__version__,
        "python_version": platform.python_version(),
        "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "results": to_jsonable(results),
    }
    out = Path(out_dir) if out_dir is not None else Path.cwd() / "bench_results"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}-{_slug(device)}.json"
    path.write_text(json.dumps(payload, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return path


# ======================================================================================
# The chapters' experiments scripts (python -m effx_lab.<chapter>.experiments)
# ======================================================================================
def seed_spread(values: Any) -> dict[str, Any]:
    """``{"values", "mean", "spread" (max - min), "std" (sample std, ddof=1; 0 for one
    value)}`` of a list of floats: one arm of an experiment over several seeds, as the
    chapters' experiments scripts summarise it."""
    if not isinstance(values, (list, tuple)) or not values:
        raise TypeError(
            f"values must be a non-empty list of floats, got {describe(values)}"
        )
    vals = [float(v) for v in values]
    if not all(math.isfinite(v) for v in vals):
        raise ValueError(f"values must be finite, got {vals}")
    return {
        "values": vals,
        "mean": float(statistics.fmean(vals)),
        "spread": float(max(vals) - min(vals)),
        "std": float(statistics.stdev(vals)) if len(vals) > 1 else 0.0,
    }


def check_seed_spread(where: str, s: Any, n: int, *, positive: bool = True) -> None:
    """Check a :func:`seed_spread` summary read back from a results file: ``n`` finite
    values (> 0 when ``positive``, such as losses; >= 0 otherwise), finite ``mean``,
    ``spread`` and ``std`` >= 0, and the mean its values' mean. Raises ``ValueError``
    naming ``where`` and the first bad entry."""
    if not isinstance(s, dict) or not isinstance(s.get("values"), list):
        raise ValueError(f"{where} must hold 'values', 'mean', 'spread', 'std'")
    if len(s["values"]) != n:
        raise ValueError(f"{where}['values'] must hold one value per seed ({n})")
    for i, v in enumerate(s["values"]):
        ok = isinstance(v, float) and math.isfinite(v) and (v > 0 if positive else v >= 0)
        if not ok:
            want = "a finite positive float" if positive else "a finite float >= 0"
            raise ValueError(f"{where}['values'][{i}] must be {want}, got {v!r}")
    for key in ("mean", "spread", "std"):
        v = s.get(key)
        if not (isinstance(v, float) and math.isfinite(v) and v >= 0):
            raise ValueError(f"{where}[{key!r}] must be a finite float >= 0, got {v!r}")
    if abs(s["mean"] - statistics.fmean(s["values"])) > 1e-9:
        raise ValueError(f"{where}['mean'] is not the mean of its values")


def compare_arms(a: Any, b: Any) -> str:
    """The experiments scripts' rule for two arms' :func:`seed_spread` summaries of a
    loss (lower is better): ``"beats"`` when ``a``'s mean is below ``b``'s by more than
    the larger of the two spreads, ``"matches"`` when the means are within it,
    ``"worse"`` otherwise."""
    for name, arm in (("a", a), ("b", b)):
        if not isinstance(arm, dict) or not {"mean", "spread"} <= set(arm):
            raise TypeError(
                f"{name} must be a seed_spread() summary with 'mean' and 'spread', "
                f"got {describe(arm)}"
            )
    tol = max(a["spread"], b["spread"])
    if a["mean"] < b["mean"] - tol:
        return "beats"
    if abs(a["mean"] - b["mean"]) <= tol:
        return "matches"
    return "worse"


def run_record() -> dict[str, Any]:
    """What an experiments script records about the machine and the moment it starts:
    device (with the CPU architecture), cores it may use, load average, torch version
    and the UTC date. Results that ship with the course carry it, so a notebook can
    name the machine that made them."""
    return {
        "device": f"{device_name()}, {platform.machine()}",
        "cpu_cores": cpu_cores(),
        "load_average_before": load_average(),
        "torch": torch.__version__,
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def write_json(results: dict[str, Any], out: str | os.PathLike[str]) -> Path:
    """Write ``results`` as indented JSON to ``out`` (its folder created); the path."""
    if not isinstance(results, dict):
        raise TypeError(f"results must be a dict, got {describe(results)}")
    if not isinstance(out, (str, os.PathLike)):
        raise TypeError(f"out must be a path, got {describe(out)}")
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1) + "\n")
    return path


def load_checked_results(
    path: str | os.PathLike[str] | None,
    default: Path,
    module: str,
    check: Callable[[dict[str, Any]], dict[str, Any]],
) -> dict[str, Any]:
    """The JSON results at ``path`` (``default``, the file shipped with the course,
    when ``path`` is None), passed through ``check``; a missing file names the command
    (``python -m <module> --out PATH``) that makes it."""
    if path is not None and not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str, a Path or None, got {describe(path)}")
    file = Path(default) if path is None else Path(path)
    if not file.is_file():
        raise FileNotFoundError(
            f"no results at {file}: run `python -m {module} --out {file}`"
        )
    return check(json.loads(file.read_text()))


def experiments_main(
    module: str,
    names: tuple[str, ...],
    run: Callable[..., dict[str, Any]],
    check: Callable[[dict[str, Any]], dict[str, Any]],
    argv: list[str] | None = None,
) -> int:
    """``python -m <module> [--quick] [--only NAME ...] --out F``: ``run(tuple(only),
    quick=quick)``, the command line recorded in the results, ``check`` on them, and
    the JSON written to ``F``."""
    import argparse

    parser = argparse.ArgumentParser(prog=f"python -m {module}")
    parser.add_argument("--out", required=True, help="where to write the JSON results")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, a few steps")
    parser.add_argument("--only", nargs="+", choices=names, default=list(names))
    args = parser.parse_args(argv)
    results = run(tuple(args.only), quick=args.quick)
    argv_text = " ".join(sys.argv[1:] if argv is None else argv)
    results["command"] = f"python -m {module} {argv_text}".strip()
    write_json(check(results), args.out)
    return 0
