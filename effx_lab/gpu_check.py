"""One command for a GPU: ``python -m effx_lab.gpu_check`` (``make gpu-check``).

Everything in the course that needs a CUDA GPU, checked in one run of under 8 minutes on one H100 or A100:

1. **tests**: ``pytest -m gpu tests`` and the Triton kernel test files (``tests/ch02_quant/test_quant_kernels.py``,
   ``tests/ch07_flash/test_flash_kernels.py``, ``tests/shared/test_sparse_kernels.py``,
   ``tests/ch04_nm/test_nm_kernels.py``, ``tests/ch05_moe/test_moe_kernels.py``, which run on the GPU when there
   is one), each in a subprocess; the
   passed / failed / skipped counts come from pytest's JUnit XML (``-q`` summary as a fallback).
2. **kernels**: every Triton kernel compiled for real and run against its PyTorch twin: the quantization
   kernels of :mod:`effx_lab.quant.kernels` (``quantize_rows``, ``dequantize_rows``, ``quantize_groups``,
   ``dequantize_groups``, ``int8_gemm`` with the backend it took, ``w4a16_matmul``, ``w8a16_matmul``) and
   :func:`effx_lab.flash.kernels.mixed_chunk_attention_triton`, the block-sparse matmul
   :func:`effx_lab.sparse.kernels.block_sparse_matmul_triton` (chapter 3) and the 2:4 compressed-weight matmul
   :func:`effx_lab.nm.kernels.nm_matmul_triton` (chapter 4), the MoE FFN over expert-sorted tokens with the
   Triton grouped GEMM :func:`effx_lab.moe.kernels.moe_grouped_triton` and with the torch loop of cuBLAS calls
   :func:`effx_lab.moe.torch_ops.moe_grouped` (chapter 5); max abs error against the torch version and
   against a float64 reference, with the tolerance each is held to.
3. **benchmarks**: each chapter's ``run(quick=True)`` (all its CUDA branches, small sizes) and, at the sizes
   of a 4096-wide layer, the chapters' GPU measurements: the decode GEMV paths
   (:func:`effx_lab.quant.bench.decode_gemv`), Triton ``int8_gemm`` against ``torch._int_mm``
   (:func:`effx_lab.quant.bench.int8_gemm_vs_int_mm`), the mixed chunk kernel against torch
   (:func:`effx_lab.flash.bench.triton_vs_torch`) and the Triton block-sparse kernel and ``torch.sparse`` CSR
   against the dense cuBLAS matmul (:func:`effx_lab.prune.bench.gpu_sparse_vs_dense`, float16, decode and
   prefill, densities 0.5 / 0.25 / 0.1), and 2:4 sparsity at widths 4096 / 8192 / 16384, 1 to 16 tokens
   (decode) and 2048 (prefill), float16: dense cuBLAS vs PyTorch's semi-structured tensors (sparse tensor
   cores) vs the course's Triton kernel (:func:`_nm_timing`, with the published numbers and the 1.78x
   bandwidth limit in :data:`NM_PUBLISHED`), and the MoE FFN at 4096 tokens, d_model 512, d_ff 1024, 8 and 64
   experts, top-1 at capacity factor 1.25 (:func:`_moe_timing`): the course's sort + loop of cuBLAS calls,
   PyTorch's ``grouped_mm``, the course's Triton grouped GEMM and the one-hot dispatch/combine einsums, beside
   a dense FFN with the same active parameters; reported as kernel-vs-library speed-ups.
4. **notebooks** (``--notebooks``, default on with a GPU): the notebooks with GPU branches under
   ``pytest --nbval-lax``, one subprocess each, while the time budget lasts.

Then it prints a short table and writes ``<out>/gpu_check-<card>.json`` (:func:`effx_lab.bench.save_results`).

Every step is time-boxed (a share of ``--budget``; unused time carries over to the next step) and
failure-isolated: a step that raises or overruns is reported as failed and the others still run. Features
the card lacks are gated by compute capability (:func:`effx_lab.device.supports`: bfloat16 and Triton's
int8 ``tl.dot`` need sm_80) and reported as ``skipped: <reason>``, so a T4 (sm_75) gives an honest partial
report rather than a crash. Every number printed was measured in that run. Exit code: 0 when nothing failed,
1 when something failed, 2 for a usage error.

``--dry-run`` is for a machine without a GPU (CI, a laptop): the same functions with a CPU device and the
smallest sizes (the kernels in Triton's CPU interpreter, or skipped with ``why_unavailable()`` when Triton is
missing), the chapters' quick benchmarks, ``pytest -m gpu --collect-only`` instead of the GPU tests (proof
that they exist and import) and nbval ``--collect-only`` for the notebooks. The JSON goes to a temporary
folder unless ``--out`` is given. ``tests/core/test_gpu_check.py`` runs it, so this command cannot rot unseen.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from effx_lab import device as _device  # first: switches on Triton's interpreter when there is no GPU

import torch

__all__ = [
    "DEFAULT_BUDGET_S",
    "NOTEBOOKS",
    "STEPS",
    "build_parser",
    "format_report",
    "main",
    "parse_junit_xml",
    "parse_pytest_progress",
    "parse_pytest_summary",
    "run_check",
]

#: the steps, in the order they run
STEPS = ("tests", "kernels", "benchmarks", "notebooks")
#: share of the time budget each step may use (unused time carries over to the steps after it)
STEP_SHARES = {"tests": 0.40, "kernels": 0.15, "benchmarks": 0.30, "notebooks": 0.15}
#: total time budget in seconds: on a GPU (8 minutes minus start-up and the report), and for --dry-run
DEFAULT_BUDGET_S = {"gpu": 420.0, "dry": 120.0}
#: notebooks with GPU branches, most informative first (each runs only if the budget still allows it)
NOTEBOOKS = (
    "notebooks/ch07_flash/07.2_mixed_chunk.ipynb",
    "notebooks/ch02_quantization/02.3_llm_int8.ipynb",
    "notebooks/ch02_quantization/02.5_second_order.ipynb",
    "notebooks/ch02_quantization/02.4_fine_grained.ipynb",
)
#: the Triton kernel test files (all their tests, which use the GPU when there is one)
KERNEL_TEST_FILES = (
    "tests/ch02_quant/test_quant_kernels.py",
    "tests/ch07_flash/test_flash_kernels.py",
    "tests/shared/test_sparse_kernels.py",
    "tests/ch04_nm/test_nm_kernels.py",
    "tests/ch05_moe/test_moe_kernels.py",
)
#: a notebook is started only with at least this much budget left (seconds)
NOTEBOOK_MIN_S = 45.0
#: the SIGALRM backstop fires this long after a step's deadline (the steps stop themselves first)
ALARM_GRACE_S = 10.0
#: the package's checkout (holds tests/ and notebooks/ when run from a clone)
ROOT = Path(__file__).resolve().parent.parent

# Sizes. "gpu": the kernel checks and the measurements at the shapes of a 4096-wide layer (decode M = 1 and a
# prefill-sized M); "dry": the smallest sizes that still take every code path (in Triton's interpreter).
SIZES: dict[str, dict[str, Any]] = {
    "gpu": {
        "rows": (4096, 4096),
        "long_rows": (64, 16384),  # rows longer than one tile: the two-pass quantize kernel
        "group_size": 128,
        "int8_gemm": (512, 1024, 1024),
        "weight_only": {"n": 4096, "k": 4096, "group_size": 128, "m": (1, 64)},
        "flash": {"batch": 2, "n": 1024, "s": 128, "e": 512, "chunk_size": 256},
        "timing": {"min_run_time": 0.1, "rounds": 3},
        "gemv": {"n": 4096, "k": 4096, "group_size": 128},
        "int8_bench": {"m": 4096, "n": 4096, "k": 4096},
        "flash_bench": {"n": 4096, "batch": 4, "d_model": 256, "expansion": 2, "s": 128, "chunk_size": 256},
        "flash_split": {"batches": (1, 8), "ns": (4096, 8192), "s": 128, "e": 512, "chunk_size": 256},
        "bsr": {"n": 4096, "k": 4096, "m": (1, 512), "block": 32, "density": 0.25},
        "prune_sparse": {"n": 4096, "k": 4096, "tokens": (1, 512), "densities": (0.5, 0.25, 0.1), "block": 32},
        "nm": {"n": 4096, "k": 4096, "m": (1, 2048)},
        "nm_bench": {"widths": (4096, 8192, 16384), "tokens": (1, 4, 16, 2048)},
        # the float64 reference is the per-token loop: 1024 (token, choice) pairs
        "moe": {"tokens": 512, "d": 512, "f": 1024, "experts": 8, "k": 2, "capacity_factor": 2.0},
        "moe_bench": {"tokens": 4096, "d": 512, "f": 1024, "experts": (8, 64), "capacity_factor": 1.25},
    },
    "dry": {
        "rows": (8, 64),
        "long_rows": (2, 4200),
        "group_size": 16,
        "int8_gemm": (32, 16, 64),
        "weight_only": {"n": 32, "k": 64, "group_size": 32, "m": (1,)},
        "flash": {"batch": 1, "n": 32, "s": 16, "e": 16, "chunk_size": 16},
        "timing": {"min_run_time": 0.002, "rounds": 1},
        "gemv": {"n": 32, "k": 64, "group_size": 32},
        "int8_bench": {"m": 32, "n": 16, "k": 64},
        "flash_bench": {"n": 32, "batch": 1, "d_model": 8, "expansion": 2, "s": 16, "chunk_size": 16},
        "flash_split": {"batches": (1,), "ns": (32,), "s": 16, "e": 16, "chunk_size": 16},
        "bsr": {"n": 64, "k": 64, "m": (1, 20), "block": 32, "density": 0.5},
        "prune_sparse": {"n": 64, "k": 64, "tokens": (1, 16), "densities": (0.5,), "block": 32},
        "nm": {"n": 64, "k": 64, "m": (1, 20)},
        "nm_bench": {"widths": (64,), "tokens": (1, 20)},
        "moe": {"tokens": 24, "d": 16, "f": 32, "experts": 4, "k": 2, "capacity_factor": 1.0},
        "moe_bench": {"tokens": 64, "d": 16, "f": 32, "experts": (4,), "capacity_factor": 1.25},
    },
}
#: allowed error of a kernel, relative to max |float64 reference|, by dtype of its inputs
TOL_MATMUL = {"float32": 1e-4, "float16": 5e-3, "bfloat16": 3e-2}
TOL_FLASH = {"float32": 1e-4, "float16": 1e-2, "bfloat16": 5e-2}

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


# ==========================================================================================================
# time boxes
# ==========================================================================================================
class StepTimeout(BaseException):
    """Raised inside a step when its time box is over (a BaseException: no ``except Exception`` swallows it)."""


@contextlib.contextmanager
def _alarm(seconds: float):
    """Raise :class:`StepTimeout` in this thread after ``seconds`` (SIGALRM; a no-op off the main thread or
    without SIGALRM, where the steps' own deadline checks are the only time box). A long C call (a Triton
    compile, a CUDA sync) is interrupted when it returns to Python."""
    if not hasattr(signal, "SIGALRM") or threading.current_thread() is not threading.main_thread():
        yield False
        return

    def on_alarm(signum, frame):  # noqa: ARG001
        raise StepTimeout(f"time box of {seconds:.0f} s exceeded")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, max(float(seconds), 0.01))
    try:
        yield True
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


@dataclass
class Context:
    """What every step needs: the mode, the torch device, sizes, the step's deadline, folders."""

    dry_run: bool
    device: torch.device
    sizes: dict[str, Any]
    notebooks: bool
    root: Path
    deadline: float = math.inf  # time.monotonic() by which the current step must end
    log: Callable[[str], None] = print
    #: dry run: collect-only subprocesses started before the in-process steps, by step name
    background: dict[str, Any] = field(default_factory=dict)

    def remaining(self) -> float:
        return self.deadline - time.monotonic()


# ==========================================================================================================
# environment and feature gates
# ==========================================================================================================
def _cap_str(cap: Sequence[int] | None) -> str | None:
    return None if cap is None else f"sm_{cap[0]}{cap[1]}"


def feature_reason(feature: str) -> str | None:
    """``None`` when this machine supports ``feature`` (:data:`effx_lab.device.FEATURES`), else why not."""
    if _device.supports(feature):
        return None
    f = _device.FEATURES[feature]
    cap = _device.capability()
    if cap is None:
        return f"no CUDA GPU here: {f.why}"
    need = _cap_str(f.min_capability) if f.min_capability else "CUDA"
    return f"this GPU is {_cap_str(cap)}, {feature} needs {need}: {f.why}"


def environment() -> dict[str, Any]:
    """The card, its compute capability, the versions and every feature gate's answer."""
    from effx_lab.bench import device_name

    info = _device.info()
    return {
        "device_name": device_name(),
        "kind": info.kind,
        "gpu": info.name if info.kind == "cuda" else None,
        "capability": _cap_str(info.capability),
        "gpu_memory_gib": info.gpu_memory_gib,
        "cpu": info.cpu,
        "cpu_cores": info.cpu_cores,
        "torch_version": info.torch_version,
        "torch_cuda_version": torch.version.cuda,
        "triton_version": info.triton_version,
        "triton_mode": info.triton_mode,
        "python_version": info.python_version,
        "summary": _device.summary(),
        "features": {name: {"supported": _device.supports(name), "reason": feature_reason(name)}
                     for name in _device.FEATURES},
    }  # fmt: skip


def _half_dtype() -> torch.dtype:
    """The 16-bit dtype the benchmarks time Triton in: bfloat16 where it is native (sm_80+), else float16."""
    return torch.bfloat16 if _device.supports("bf16") else torch.float16


# ==========================================================================================================
# pytest: run, parse
# ==========================================================================================================
_SUMMARY_WORDS = {
    "passed": "passed", "failed": "failed", "skipped": "skipped", "deselected": "deselected",
    "error": "errors", "errors": "errors", "xfailed": "xfailed", "xpassed": "xpassed",
    "warning": "warnings", "warnings": "warnings", "rerun": "rerun",
}  # fmt: skip
_SUMMARY_RE = re.compile(r"(\d+) (passed|failed|skipped|deselected|errors?|xfailed|xpassed|warnings?|rerun)\b")
_COLLECTED_RE = re.compile(r"(?:(\d+)/)?(\d+) tests? collected(?: \((\d+) deselected\))?")


def parse_pytest_summary(text: str) -> dict[str, Any] | None:
    """Counts from pytest's final summary line (``-q`` or not), or ``None`` when there is none.

    ``"1 failed, 2 passed, 3 skipped, 4 deselected in 1.2s"`` -> ``{"passed": 2, "failed": 1, "skipped": 3,
    "deselected": 4, "errors": 0, ..., "seconds": 1.2}``; ``"2/2234 tests collected (2232 deselected) in 7s"``
    (``--collect-only``) -> ``{"collected": 2, "total": 2234, "deselected": 2232, "seconds": 7.0}``;
    ``"no tests ran in 0.01s"`` -> all zero.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str (pytest's output), got {type(text).__name__}")
    for line in reversed(text.strip().splitlines()):
        line = line.strip().strip("=").strip()
        secs = re.search(r" in ([\d.]+)s\b", line)
        m = _COLLECTED_RE.search(line)
        if m and secs:
            sel, total, desel = m.group(1), int(m.group(2)), m.group(3)
            return {"collected": int(sel) if sel else total, "total": total,
                    "deselected": int(desel) if desel else 0, "seconds": float(secs.group(1))}  # fmt: skip
        if line.startswith("no tests ran") and secs:
            out = {v: 0 for v in set(_SUMMARY_WORDS.values())}
            out.update(_counts(_SUMMARY_RE.findall(line)))
            out["seconds"] = float(secs.group(1))
            return out
        found = _SUMMARY_RE.findall(line)
        if found and secs:
            out = {v: 0 for v in set(_SUMMARY_WORDS.values())}
            out.update(_counts(found))
            out["seconds"] = float(secs.group(1))
            return out
    return None


def _counts(found: list[tuple[str, str]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for num, word in found:
        key = _SUMMARY_WORDS[word]
        out[key] = out.get(key, 0) + int(num)
    return out


_PROGRESS_RE = re.compile(r"^(?:\S+\.py\s+|\S+\.ipynb\s+)?([.FEsxX]+)\s*(?:\[\s*\d+%\])?$")


def parse_pytest_progress(text: str) -> dict[str, int]:
    """Counts from pytest's progress characters (``..F.s  [ 40%]``): what finished before a run was killed."""
    counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0, "xfailed": 0, "xpassed": 0}
    key = {".": "passed", "F": "failed", "E": "errors", "s": "skipped", "x": "xfailed", "X": "xpassed"}
    for line in text.splitlines():
        m = _PROGRESS_RE.match(line.strip())
        if m:
            for ch in m.group(1):
                counts[key[ch]] += 1
    return counts


def parse_junit_xml(source: str | os.PathLike[str]) -> dict[str, Any]:
    """Counts and names from a ``--junitxml`` report (a path, or the XML text itself).

    Returns ``{"tests", "passed", "failed", "errors", "skipped", "seconds", "failed_ids": [...],
    "skip_reasons": {reason: count}}``; a test case with a ``<failure>`` is failed, with an ``<error>``
    (setup/teardown) an error, with ``<skipped>`` skipped (xfail included), else passed.
    """
    if isinstance(source, os.PathLike) or (isinstance(source, str) and not source.lstrip().startswith("<")):
        root = ET.parse(os.fspath(source)).getroot()
    elif isinstance(source, str):
        root = ET.fromstring(source)
    else:
        raise TypeError(f"source must be a path or the XML text, got {type(source).__name__}")
    out: dict[str, Any] = {"tests": 0, "passed": 0, "failed": 0, "errors": 0, "skipped": 0, "seconds": 0.0,
                           "failed_ids": [], "skip_reasons": {}}  # fmt: skip
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    for suite in suites:
        out["seconds"] += float(suite.get("time", 0) or 0)
        for case in suite.iter("testcase"):
            out["tests"] += 1
            name = f"{case.get('classname', '')}::{case.get('name', '')}".lstrip(":")
            if case.find("failure") is not None:
                out["failed"] += 1
                out["failed_ids"].append(name)
            elif case.find("error") is not None:
                out["errors"] += 1
                out["failed_ids"].append(name)
            elif case.find("skipped") is not None:
                out["skipped"] += 1
                reason = (case.find("skipped").get("message") or "").strip()[:200] or "(no reason given)"
                out["skip_reasons"][reason] = out["skip_reasons"].get(reason, 0) + 1
            else:
                out["passed"] += 1
    return out


def _kill_group(proc: subprocess.Popen) -> None:
    """End the process group this module started for ``proc`` (TERM, then KILL after 5 s)."""
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def run_pytest(args: Sequence[str], *, name: str, timeout: float, cwd: Path,
               env: dict[str, str] | None = None, collect_only: bool = False) -> dict[str, Any]:  # fmt: skip
    """Run ``python -m pytest <args>`` in a subprocess (its own process group), at most ``timeout`` seconds.

    Returns ``{"name", "cmd", "status" ("ok" / "failed" / "timeout"), "returncode", "seconds", "counts",
    "failed_ids", "skip_reasons", "output_tail"}``. Counts come from the JUnit XML (``collect_only``: from the
    summary line, plus the collected ``ids``); after a timeout, from the progress characters printed so far.
    """
    with tempfile.TemporaryDirectory(prefix="effx-gpu-check-") as tmp:
        xml = Path(tmp) / "junit.xml"
        cmd = [sys.executable, "-m", "pytest", *args, "-p", "no:cacheprovider"]
        if not collect_only:
            cmd.append(f"--junitxml={xml}")
        full_env = dict(os.environ, PYTHONHASHSEED="0", PYTHONUNBUFFERED="1", **(env or {}))
        t0 = time.monotonic()
        proc = subprocess.Popen(cmd, cwd=cwd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, errors="replace", start_new_session=True)  # fmt: skip
        timed_out = False
        try:
            try:
                output, _ = proc.communicate(timeout=max(1.0, timeout))
            except subprocess.TimeoutExpired:
                timed_out = True
                _kill_group(proc)
                try:  # a grandchild outside the group (a Jupyter kernel) may hold the pipe a moment longer
                    output, _ = proc.communicate(timeout=15)
                except subprocess.TimeoutExpired:
                    output = ""
        finally:
            _kill_group(proc)  # also when the step's own time box interrupts us
        seconds = time.monotonic() - t0
        shown = [a if "--junitxml" not in a else "--junitxml=<tmp>" for a in cmd[1:]]
        res: dict[str, Any] = {"name": name, "cmd": " ".join(["python", *shown]), "returncode": proc.returncode,
                               "seconds": seconds, "failed_ids": [], "skip_reasons": {}}  # fmt: skip
        summary = parse_pytest_summary(output or "")
        if collect_only:
            res["ids"] = [ln.strip() for ln in (output or "").splitlines() if "::" in ln and " " not in ln.strip()]
            res["counts"] = summary or {"collected": len(res["ids"])}
        elif xml.exists() and not timed_out:
            junit = parse_junit_xml(xml)
            res["failed_ids"] = junit.pop("failed_ids")[:20]
            res["skip_reasons"] = junit.pop("skip_reasons")
            res["counts"] = junit
        elif timed_out:
            res["counts"] = parse_pytest_progress(output or "")
            res["counts_note"] = "partial: counted from the progress output before the run was stopped"
        else:
            res["counts"] = summary or {}
    c = res["counts"]
    if timed_out:
        res["status"] = "timeout"
        res["error"] = f"stopped after its time box of {timeout:.0f} s"
    elif collect_only:
        ok = proc.returncode == 0 and int(c.get("collected", 0)) > 0
        res["status"] = "ok" if ok else "failed"
        if not ok:
            res["error"] = f"pytest --collect-only exited {proc.returncode} with {c.get('collected', 0)} tests"
    elif proc.returncode == 0:
        res["status"] = "ok"
    else:
        res["status"] = "failed"
        what = {1: "tests failed", 2: "interrupted", 3: "internal error", 4: "usage error",
                5: "no tests collected"}.get(proc.returncode, "error")  # fmt: skip
        res["error"] = f"pytest exited {proc.returncode} ({what})"
    if res["status"] != "ok":
        res["output_tail"] = (output or "")[-3000:]
    return res


def _tests_missing(root: Path) -> str | None:
    if not (root / "tests").is_dir():
        return f"no tests/ folder at {root} (installed from a wheel? run from a clone)"
    return None


def _collect_gpu_tests(root: Path, timeout: float) -> dict[str, Any]:
    """``pytest -m gpu --collect-only -q tests``: the GPU tests exist and their modules import."""
    return run_pytest(["-m", "gpu", "--collect-only", "-q", "tests"], name="gpu-marked (collect-only)",
                      timeout=timeout, cwd=root, collect_only=True)  # fmt: skip


def _tests_step(ctx: Context, out: dict[str, Any]) -> None:
    runs: list[dict[str, Any]] = []
    out["runs"] = runs
    why = _tests_missing(ctx.root)
    if why is not None:
        out["status"] = "skipped"
        out["reason"] = why
        return
    if ctx.dry_run:
        fut = ctx.background.get("tests")
        out["background"] = fut is not None
        runs.append(fut.result() if fut is not None else _collect_gpu_tests(ctx.root, ctx.remaining()))
        runs.append({"name": "kernel test files", "status": "skipped",
                     "reason": "dry run: without a GPU these files run in Triton's interpreter under "
                               "`make test-package`"})  # fmt: skip
        return
    # the GPU-marked tests first (few, quick), then the kernel files with what is left of the step's share
    share = max(30.0, 0.25 * ctx.remaining())
    runs.append(run_pytest(["-m", "gpu", "-q", "tests"], name="gpu-marked", timeout=min(share, ctx.remaining()),
                           cwd=ctx.root))  # fmt: skip
    files = [f for f in KERNEL_TEST_FILES if (ctx.root / f).is_file()]
    if not files:
        runs.append({"name": "kernel test files", "status": "skipped", "reason": f"none of {KERNEL_TEST_FILES} found"})
    elif ctx.remaining() < 10:
        runs.append({"name": "kernel test files", "status": "skipped", "reason": "time budget used up"})
    else:
        runs.append(run_pytest(["-q", *files], name="kernel test files", timeout=ctx.remaining(), cwd=ctx.root))


# ==========================================================================================================
# kernels vs their torch twins
# ==========================================================================================================
def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def _timed_first_call(dev: torch.device, fn: Callable[[], Any]) -> tuple[Any, float]:
    """``fn()`` and its wall time, synchronized (on a GPU the first call includes Triton's compilation)."""
    _sync(dev)
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = fn()
    _sync(dev)
    return out, time.perf_counter() - t0


def _max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.numel() == 0:
        return 0.0
    return float((a.detach().to(torch.float64) - b.detach().to(torch.float64)).abs().max())


def _rel_to_ref(y: torch.Tensor, ref64: torch.Tensor) -> float:
    """``max |y - ref| / max |ref|`` in float64."""
    scale = float(ref64.abs().max()) if ref64.numel() else 0.0
    return _max_abs(y, ref64) / (scale if scale > 0 else 1.0)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator(device="cpu").manual_seed(seed)


def _randn(seed: int, shape: tuple[int, ...], dev: torch.device, dtype: torch.dtype, scale: float = 1.0):
    return (torch.randn(shape, generator=_gen(seed), dtype=torch.float32) * scale).to(device=dev, dtype=dtype)


def _dt(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def _quant_cases(ctx: Context) -> list[tuple[str, str, str, Callable[[], dict[str, Any]]]]:
    """``(kernel, dtype, shape, check)`` for every quantization kernel; ``check()`` returns its metrics."""
    from effx_lab.quant import kernels as K
    from effx_lab.quant import torch_ops as T

    dev, sz = ctx.device, ctx.sizes
    cases: list[tuple[str, str, str, Callable[[], dict[str, Any]]]] = []

    def quantize_rows(shape: tuple[int, int], dtype: torch.dtype) -> dict[str, Any]:
        x = _randn(1, shape, dev, dtype, 3.0)
        (q, scale), first = _timed_first_call(dev, lambda: K.quantize_rows(x, bits=8))
        qp = T.compute_qparams(x, 8, True, "channel", axis=0)
        q_ref, s_ref = T.quantize(x, qp), qp.scale[:, 0]
        return {"first_call_s": first, "twin": "torch_ops.compute_qparams + quantize (per row)",
                "max_abs_err": _max_abs(q, q_ref), "codes_differing": int((q != q_ref).sum()),
                "scale_max_abs_err": _max_abs(scale, s_ref), "tolerance": "exact",
                "ok": bool(torch.equal(q, q_ref) and torch.equal(scale, s_ref))}  # fmt: skip

    def dequantize_rows(shape: tuple[int, int], dtype: torch.dtype) -> dict[str, Any]:
        x = _randn(2, shape, dev, torch.float32, 3.0)
        qp = T.compute_qparams(x, 8, True, "channel", axis=0)
        q = T.quantize(x, qp)
        out, first = _timed_first_call(dev, lambda: K.dequantize_rows(q, qp.scale[:, 0], dtype))
        ref = T.dequantize(q, qp, dtype)
        return {"first_call_s": first, "twin": "torch_ops.dequantize", "max_abs_err": _max_abs(out, ref),
                "tolerance": "exact", "ok": bool(out.dtype == dtype and torch.equal(out, ref))}  # fmt: skip

    def quantize_groups(shape: tuple[int, int], dtype: torch.dtype, g: int) -> dict[str, Any]:
        x = _randn(3, shape, dev, dtype, 2.0)
        (q, scales), first = _timed_first_call(dev, lambda: K.quantize_groups(x, g, bits=8))
        qp = T.compute_qparams(x, 8, True, "group", axis=-1, group_size=g)
        q_ref = T.quantize(x, qp)
        back, _ = _timed_first_call(dev, lambda: K.dequantize_groups(q, scales))
        back_ref = T.dequantize(q_ref, qp, torch.float32)
        return {"first_call_s": first, "twin": f"torch_ops.compute_qparams + quantize (groups of {g})",
                "max_abs_err": _max_abs(q, q_ref), "codes_differing": int((q != q_ref).sum()),
                "scale_max_abs_err": _max_abs(scales, qp.scale),
                "dequantize_groups_max_abs_err": _max_abs(back, back_ref), "tolerance": "exact",
                "ok": bool(torch.equal(q, q_ref) and torch.equal(scales, qp.scale) and torch.equal(back, back_ref))}

    def int8_gemm(m: int, n: int, k: int, out_dtype: torch.dtype, scaled: bool) -> dict[str, Any]:
        a = torch.randint(-127, 128, (m, k), generator=_gen(4), dtype=torch.int8).to(dev)
        b = torch.randint(-127, 128, (n, k), generator=_gen(5), dtype=torch.int8).to(dev)
        sa = (torch.rand(m, generator=_gen(6)) * 0.01 + 1e-3).to(dev)
        sb = (torch.rand(n, generator=_gen(7)) * 0.01 + 1e-3).to(dev)
        bias = _randn(8, (n,), dev, torch.float32)
        args = (a, b, sa, sb, bias) if scaled else (a, b, None, None, None)
        y, first = _timed_first_call(dev, lambda: K.int8_gemm(*args, out_dtype=out_dtype))
        try:
            with torch.inference_mode():
                acc = torch._int_mm(a, b.t())
            twin = "torch._int_mm"
        except (RuntimeError, NotImplementedError, AttributeError):
            acc = torch.round(a.double() @ b.double().T).to(torch.int32)
            twin = "float64 matmul of the integers (torch._int_mm unavailable here)"
        ref64 = acc.double() * sa.double()[:, None] * sb.double()[None, :] + bias.double() if scaled else acc.double()
        twin_out = (acc.float() * sa[:, None] * sb[None, :] + bias).to(out_dtype) if scaled else acc
        res = {"first_call_s": first, "backend": K.int8_gemm_backend(dev),
               "twin": twin + (" + epilogue" if scaled else ""),
               "max_abs_err": _max_abs(y, twin_out), "rel_err_vs_fp64": _rel_to_ref(y, ref64)}  # fmt: skip
        if out_dtype == torch.int32:
            res.update(tolerance="exact", ok=bool(torch.equal(y, acc)))
        else:
            tol = {torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 8e-3}[out_dtype]
            res.update(tolerance=tol, ok=bool(res["rel_err_vs_fp64"] <= tol))
        return res

    def weight_only(bits: int, m: int, dtype: torch.dtype) -> dict[str, Any]:
        wo = sz["weight_only"]
        n, k, g = wo["n"], wo["k"], wo["group_size"]
        w = _randn(9, (n, k), dev, torch.float32, 0.02)
        x = _randn(10, (m, k), dev, dtype)
        if bits == 4:
            packed, scales = T.quantize_weight_int4(w, group_size=g)
            y, first = _timed_first_call(dev, lambda: K.w4a16_matmul(x, packed, scales, g))
            with torch.inference_mode():
                twin = T.w4a16_linear(x, packed, scales, g)
            q = T.unpack_int4(packed).double()
            w_hat = q * scales.double().repeat_interleave(g, dim=1)
            name = f"torch_ops.w4a16_linear (groups of {g})"
        else:
            q8, scales = T.quantize_weight_int8(w)
            y, first = _timed_first_call(dev, lambda: K.w8a16_matmul(x, q8, scales))
            with torch.inference_mode():
                twin = T.w8a16_linear(x, q8, scales)
            w_hat = q8.double() * scales.double()[:, None]
            name = "torch_ops.w8a16_linear"
        ref64 = x.double() @ w_hat.T
        tol = TOL_MATMUL[_dt(dtype)]
        rel = _rel_to_ref(y, ref64)
        return {"first_call_s": first, "twin": name, "max_abs_err": _max_abs(y, twin), "rel_err_vs_fp64": rel,
                "twin_rel_err_vs_fp64": _rel_to_ref(twin, ref64), "tolerance": tol,
                "ok": bool(y.dtype == dtype and rel <= tol)}  # fmt: skip

    rows, long_rows, g = sz["rows"], sz["long_rows"], sz["group_size"]
    shape_s = lambda s: "x".join(str(v) for v in s)  # noqa: E731
    for dt in ("float32", "float16", "bfloat16"):
        cases.append(("quantize_rows", dt, shape_s(rows), lambda dt=dt: quantize_rows(rows, _DTYPES[dt])))
    cases.append(("quantize_rows", "float16", shape_s(long_rows) + " (two passes)",
                  lambda: quantize_rows(long_rows, torch.float16)))  # fmt: skip
    for dt in ("float32", "float16", "bfloat16"):
        cases.append(("dequantize_rows", dt, shape_s(rows), lambda dt=dt: dequantize_rows(rows, _DTYPES[dt])))
    for dt in ("float32", "float16", "bfloat16"):
        cases.append(("quantize_groups", dt, f"{shape_s(rows)} g={g}",
                      lambda dt=dt: quantize_groups(rows, _DTYPES[dt], g)))  # fmt: skip
    m, n, k = sz["int8_gemm"]
    for label, dt, scaled in (("int32 raw", "int32", False), ("scaled+bias -> float32", "float32", True),
                              ("scaled+bias -> float16", "float16", True),
                              ("scaled+bias -> bfloat16", "bfloat16", True)):  # fmt: skip
        odt = torch.int32 if dt == "int32" else _DTYPES[dt]
        cases.append(("int8_gemm", dt, f"{m}x{n}x{k} {label}",
                      lambda odt=odt, scaled=scaled: int8_gemm(m, n, k, odt, scaled)))  # fmt: skip
    wo = sz["weight_only"]
    combos = [(mm, "float16") for mm in wo["m"]] + [(wo["m"][0], "float32"), (wo["m"][0], "bfloat16")]
    for bits, kname in ((4, "w4a16_matmul"), (8, "w8a16_matmul")):
        for mm, dt in combos:
            shape = f"M={mm} N={wo['n']} K={wo['k']}" + (f" g={wo['group_size']}" if bits == 4 else "")
            cases.append((kname, dt, shape, lambda bits=bits, mm=mm, dt=dt: weight_only(bits, mm, _DTYPES[dt])))
    return cases


def _flash_cases(ctx: Context) -> list[tuple[str, str, str, Callable[[], dict[str, Any]]]]:
    from effx_lab.flash import kernels as FK
    from effx_lab.flash import torch_ops as FT

    dev, f = ctx.device, ctx.sizes["flash"]
    b, n, s, e, c = f["batch"], f["n"], f["s"], f["e"], f["chunk_size"]

    def check(dtype: torch.dtype, causal: bool, split: bool = False) -> dict[str, Any]:
        qq, kq, ql, kl = (_randn(20 + i, (b, n, s), dev, dtype) for i in range(4))
        v = _randn(24, (b, n, e), dev, dtype)
        rel = _randn(25, (2 * 31 + 1,), dev, torch.float32, 0.1)
        args = (qq, kq, ql, kl, v, c)
        y, first = _timed_first_call(
            dev, lambda: FK.mixed_chunk_attention_triton(*args, causal=causal, rel_bias=rel, split=split)
        )  # fmt: skip
        with torch.inference_mode():
            twin = FT.mixed_chunk_attention(*args, causal=causal, rel_bias=rel.to(dtype))
            ref64 = FT.mixed_chunk_attention(*(t.double() for t in args[:5]), c, causal=causal, rel_bias=rel.double())
        tol = TOL_FLASH[_dt(dtype)]
        err = _rel_to_ref(y, ref64)
        return {"first_call_s": first, "twin": "flash.torch_ops.mixed_chunk_attention",
                "max_abs_err": _max_abs(y, twin), "rel_err_vs_fp64": err,
                "twin_rel_err_vs_fp64": _rel_to_ref(twin, ref64), "tolerance": tol,
                "ok": bool(y.dtype == dtype and err <= tol)}  # fmt: skip

    shape = f"B={b} n={n} s={s} e={e} c={c}"
    name = "mixed_chunk_attention_triton"
    # unsplit (one program per batch element and value block) and split across chunks (split=True: a pass
    # for the chunk states, a cumsum, a parallel pass per chunk); both held to the same tolerance
    cases = []
    for split in (False, True):
        tag = " split" if split else ""
        cases += [
            (name, "float32", shape + " causal" + tag, lambda split=split: check(torch.float32, True, split)),
            (name, "float16", shape + " causal" + tag, lambda split=split: check(torch.float16, True, split)),
            (name, "bfloat16", shape + " causal" + tag, lambda split=split: check(torch.bfloat16, True, split)),
            (name, "float16", shape + " non-causal" + tag, lambda split=split: check(torch.float16, False, split)),
        ]  # fmt: skip
    return cases


def _sparse_cases(ctx: Context) -> list[tuple[str, str, str, Callable[[], dict[str, Any]]]]:
    """The Triton block-sparse matmul (chapters 3, 4) against ``sparse.torch_ops.block_sparse_matmul`` and the
    float64 product, for decode (M = 1) and prefill, with a bias."""
    from effx_lab.sparse import kernels as SK
    from effx_lab.sparse import torch_ops as ST

    dev, b = ctx.device, ctx.sizes["bsr"]
    n, k, block, density = b["n"], b["k"], b["block"], b["density"]

    def check(m: int, dtype: torch.dtype) -> dict[str, Any]:
        w64 = torch.randn((n, k), generator=_gen(40), dtype=torch.float64) / math.sqrt(k)
        w = (w64 * ST.block_mask(w64, block, density)).to(device=dev, dtype=dtype)
        bsr = ST.to_block_sparse(w, block)
        x = _randn(41, (m, k), dev, dtype)
        bias = _randn(42, (n,), dev, dtype, 0.1)
        y, first = _timed_first_call(dev, lambda: SK.block_sparse_matmul_triton(x, bsr, bias))
        with torch.inference_mode():
            twin = ST.block_sparse_matmul(x, bsr, bias)
        ref64 = x.double() @ w.double().T + bias.double()
        tol = TOL_MATMUL[_dt(dtype)]
        err = _rel_to_ref(y, ref64)
        return {"first_call_s": first, "twin": "sparse.torch_ops.block_sparse_matmul",
                "max_abs_err": _max_abs(y, twin), "rel_err_vs_fp64": err,
                "twin_rel_err_vs_fp64": _rel_to_ref(twin, ref64), "tolerance": tol,
                "stored_blocks": bsr.nnzb, "ok": bool(y.dtype == dtype and err <= tol)}  # fmt: skip

    cases = []
    for m in b["m"]:
        shape = f"M={m} N={n} K={k} block {block} density {density}"
        for dt in ("float32", "float16", "bfloat16"):
            cases.append(("block_sparse_matmul_triton", dt, shape, lambda m=m, dt=dt: check(m, _DTYPES[dt])))
    return cases


def _nm_cases(ctx: Context) -> list[tuple[str, str, str, Callable[[], dict[str, Any]]]]:
    """The Triton 2:4 compressed-weight matmul (chapter 4) against ``nm.torch_ops.nm_matmul`` and the float64
    dense product, for decode (M = 1) and prefill, with a bias."""
    from effx_lab.nm import kernels as NK
    from effx_lab.nm import torch_ops as NT

    dev, b = ctx.device, ctx.sizes["nm"]
    n, k = b["n"], b["k"]

    def check(m: int, dtype: torch.dtype) -> dict[str, Any]:
        w64 = torch.randn((n, k), generator=_gen(50), dtype=torch.float64) / math.sqrt(k)
        w = (w64 * NT.nm_mask(w64, 2, 4)).to(device=dev, dtype=dtype)
        c = NT.compress(w, 2, 4)
        x = _randn(51, (m, k), dev, dtype)
        bias = _randn(52, (n,), dev, dtype, 0.1)
        y, first = _timed_first_call(dev, lambda: NK.nm_matmul_triton(x, c, bias))
        with torch.inference_mode():
            twin = NT.nm_matmul(x, c, bias)
        ref64 = x.double() @ w.double().T + bias.double()
        tol = TOL_MATMUL[_dt(dtype)]
        err = _rel_to_ref(y, ref64)
        return {"first_call_s": first, "twin": "nm.torch_ops.nm_matmul",
                "max_abs_err": _max_abs(y, twin), "rel_err_vs_fp64": err,
                "twin_rel_err_vs_fp64": _rel_to_ref(twin, ref64), "tolerance": tol,
                "compressed_over_dense_bytes": c.nbytes / c.dense_nbytes,
                "ok": bool(y.dtype == dtype and err <= tol)}  # fmt: skip

    cases = []
    for m in b["m"]:
        shape = f"M={m} N={n} K={k} 2:4"
        for dt in ("float32", "float16", "bfloat16"):
            cases.append(("nm_matmul_triton", dt, shape, lambda m=m, dt=dt: check(m, _DTYPES[dt])))
    return cases


def _moe_inputs(dev: torch.device, dtype: torch.dtype, tokens: int, d: int, f: int, experts: int, k: int,
                capacity_factor: float, seed: int) -> tuple[torch.Tensor, Any, dict[str, torch.Tensor]]:  # fmt: skip
    """``(x, routing, params)`` of an MoE layer on ``dev``: random tokens, a top-``k`` routing of random router
    logits (float32, vanilla, renormalised gates when ``k > 1``) and the experts of ``init_experts``."""
    from effx_lab.moe import torch_ops as MT

    logits = _randn(seed, (tokens, experts), dev, torch.float32)
    routing = MT.route(logits, k=k, capacity_factor=capacity_factor, renormalize=k > 1)
    params = {key: v.to(device=dev, dtype=dtype) for key, v in MT.init_experts(d, f, experts, seed=seed).items()}
    x = _randn(seed + 1, (tokens, d), dev, dtype)
    return x, routing, params


def _moe_cases(ctx: Context) -> list[tuple[str, str, str, Callable[[], dict[str, Any]]]]:
    """The MoE FFN over expert-sorted tokens (chapter 5) on the device: the Triton grouped GEMM
    (``moe.kernels.moe_grouped_triton``, twin ``moe.torch_ops.moe_grouped``) and the torch loop of cuBLAS calls
    (``moe.torch_ops.moe_grouped``, twin ``moe.library.moe_grouped_mm`` where ``F.grouped_mm`` runs), both
    against the float64 per-token loop ``moe.torch_ops.moe_loop`` (the definition)."""
    from effx_lab.moe import kernels as MK
    from effx_lab.moe import library as ML
    from effx_lab.moe import torch_ops as MT

    dev, b = ctx.device, ctx.sizes["moe"]
    shape = (f"T={b['tokens']} d={b['d']} f={b['f']} E={b['experts']} top-{b['k']} "
             f"C={b['capacity_factor']:g}")  # fmt: skip

    def check(which: str, dtype: torch.dtype) -> dict[str, Any]:
        x, routing, params = _moe_inputs(dev, dtype, b["tokens"], b["d"], b["f"], b["experts"], b["k"],
                                         b["capacity_factor"], seed=70)  # fmt: skip
        if which == "triton":
            fn, twin_name, twin_fn = MK.moe_grouped_triton, "moe.torch_ops.moe_grouped", MT.moe_grouped
        else:
            fn, twin_name, twin_fn = MT.moe_grouped, "moe.library.moe_grouped_mm", ML.moe_grouped_mm
        y, first = _timed_first_call(dev, lambda: fn(x, routing, params))
        twin_err: float | None = None
        try:
            with torch.inference_mode():
                twin = twin_fn(x, routing, params)
            twin_err = _max_abs(y, twin)
        except Exception as exc:  # noqa: BLE001 - grouped_mm may lack this dtype/device: recorded
            twin_name = f"{twin_name} ({_error_text(exc)})"
        with torch.inference_mode():
            p64 = {key: v.double() for key, v in params.items()}
            ref64 = MT.moe_loop(x.double(), routing, p64)
        tol = TOL_MATMUL[_dt(dtype)]
        err = _rel_to_ref(y, ref64)
        kept = float(routing.kept.double().mean())
        return {"first_call_s": first, "twin": twin_name, "max_abs_err": twin_err, "rel_err_vs_fp64": err,
                "tolerance": tol, "kept_fraction": kept, "ok": bool(y.dtype == dtype and err <= tol)}  # fmt: skip

    cases = [("moe_grouped_triton", dt, shape, lambda dt=dt: check("triton", _DTYPES[dt]))
             for dt in ("float32", "float16", "bfloat16")]  # fmt: skip
    cases += [("torch_ops.moe_grouped", dt, shape, lambda dt=dt: check("torch", _DTYPES[dt]))
              for dt in ("float32", "bfloat16")]  # fmt: skip
    return cases


def _error_text(exc: BaseException) -> str:
    text = str(exc).strip()
    first = text.splitlines()[0] if text else ""
    return f"{type(exc).__name__}: {first[:300]}"


def _kernels_step(ctx: Context, out: dict[str, Any]) -> None:
    checks: list[dict[str, Any]] = []
    out["checks"] = checks
    out["triton_mode"] = _device.triton_mode()
    groups: list[tuple[str, Callable[[Context], list], str | None]] = []
    for module, build in (("effx_lab.quant.kernels", _quant_cases), ("effx_lab.flash.kernels", _flash_cases),
                          ("effx_lab.sparse.kernels", _sparse_cases), ("effx_lab.nm.kernels", _nm_cases),
                          ("effx_lab.moe.kernels", _moe_cases)):
        try:
            mod = importlib.import_module(module)
            why = mod.why_unavailable()
        except ImportError as exc:
            mod, why = None, f"{module} failed to import: {exc}"
        groups.append((module, build, why))
        if module.endswith("quant.kernels") and mod is not None and why is None:
            out["int8_gemm_backend"] = mod.int8_gemm_backend(ctx.device)
            out["int8_gemm_backend_reason"] = (
                feature_reason("triton_int8_dot") if out["int8_gemm_backend"] == "torch" and ctx.device.type == "cuda"
                else None
            )  # fmt: skip
    bf16_why = feature_reason("bf16")
    for module, build, why in groups:
        if why is not None:
            checks.append({"kernel": module, "status": "skipped", "reason": why})
            continue
        for kernel, dtype, shape, fn in build(ctx):
            row: dict[str, Any] = {"kernel": kernel, "dtype": dtype, "shape": shape}
            checks.append(row)
            if dtype == "bfloat16" and bf16_why is not None:
                row.update(status="skipped", reason=bf16_why)
                continue
            if ctx.remaining() < 2:
                row.update(status="skipped", reason="time budget of the kernels step used up")
                continue
            try:
                row.update(fn())
                row["status"] = "ok" if row.pop("ok") else "failed"
                if row["status"] == "failed":
                    row["error"] = "error above tolerance" if row.get("tolerance") != "exact" else "not bit-exact"
            except StepTimeout:
                row.update(status="timeout", error="the step's time box ended during this check")
                raise
            except Exception as exc:  # noqa: BLE001 - one failing kernel must not hide the others
                row.update(status="failed", error=_error_text(exc))
            ctx.log(f"  kernel {kernel:<30} {dtype:<9} {shape:<34} {row['status']}")


# ==========================================================================================================
# benchmarks: the chapters' run(quick=True), then the GPU measurements at layer sizes
# ==========================================================================================================
def _flash_split_timing(*, batches: Sequence[int], ns: Sequence[int], s: int, e: int, chunk_size: int,
                        dtype: torch.dtype, device: torch.device, min_run_time: float, rounds: int = 1,
                        causal: bool = True) -> dict[str, Any]:  # fmt: skip
    """The Triton mixed chunk kernel split across chunks against unsplit, at each ``batch`` x ``n``.

    ``split=False`` launches one program per (batch element, value block); ``split=True`` one per (batch
    element, chunk, value block) in two kernels with a torch cumsum between them
    (:func:`effx_lab.flash.kernels.mixed_chunk_attention_triton`). Each is timed with
    :func:`effx_lab.bench.time_fn`, the two alternating for ``rounds`` rounds (best median);
    ``max_abs_diff`` compares the two outputs (float32 rounding of the state sums differs);
    ``auto_splits`` is what ``split=None`` picks on this device. Returns ``{"config", "rows": [{"batch", "n", "unsplit_s", "split_s", "max_abs_diff",
    "max_abs_out", "auto_splits"}]}``, or ``{"skipped": why}`` when the kernel cannot run here.
    """
    from effx_lab.bench import time_fn
    from effx_lab.flash import kernels as FK

    why = FK.why_unavailable()
    if why is not None:
        return {"skipped": why}
    cfg = {"batches": list(batches), "ns": list(ns), "s": s, "e": e, "chunk_size": chunk_size,
           "dtype": _dt(dtype), "causal": causal, "device": str(device)}  # fmt: skip
    out: dict[str, Any] = {"config": cfg, "rows": []}
    for batch in batches:
        for n in ns:
            qq, kq, ql, kl = (_randn(30 + i, (batch, n, s), device, dtype) for i in range(4))
            v = _randn(34, (batch, n, e), device, dtype)
            rel = _randn(35, (2 * 31 + 1,), device, torch.float32, 0.1)
            calls = {name: (lambda split=split: FK.mixed_chunk_attention_triton(
                qq, kq, ql, kl, v, chunk_size, causal=causal, rel_bias=rel, split=split))
                for name, split in (("unsplit", False), ("split", True))}  # fmt: skip
            with torch.inference_mode():
                ys = {name: fn() for name, fn in calls.items()}  # also the compile
                times = {name: math.inf for name in calls}
                for _ in range(max(1, rounds)):  # alternate, so that a clock change hits both alike
                    for name, fn in calls.items():
                        t = time_fn(fn, name=name, min_run_time=min_run_time, device=device).median_s
                        times[name] = min(times[name], t)
            out["rows"].append({
                "batch": batch, "n": n, "unsplit_s": times["unsplit"], "split_s": times["split"],
                "max_abs_diff": _max_abs(ys["split"], ys["unsplit"]),
                "max_abs_out": float(ys["unsplit"].abs().max()),
                "auto_splits": FK.default_split(v, chunk_size),
            })  # fmt: skip
            del qq, kq, ql, kl, v, ys
    return out


#: what others measured for 2:4 on sparse tensor cores, recorded next to the course's own numbers
NM_PUBLISHED = (
    "published: torchao's sparsity README reports 1.24x and 1.27x for the two ViT-L MLP Linear layers (fp16, "
    "A100, 13008 tokens); pytorch/pytorch#111339 reports no speed-up for a 4096 x 4096 layer at one token; "
    "about 1.3-1.6x per large Linear on an A100 is the range usually quoted (not measured by the course). "
    "Bandwidth limit of a memory-bound (decode) 2:4 fp16 matmul: the weight moves as values 0.5 + metadata "
    "0.0625 = 0.5625 of its dense bytes, so at most 1 / 0.5625 = 1.78x; compute limit (prefill): 2x on the "
    "sparse tensor cores (mma.sp), 1x for the course's Triton kernel (dense tl.dot on decompressed tiles)"
)


def _nm_timing(*, widths: Sequence[int], tokens: Sequence[int], dtype: torch.dtype, device: torch.device,
               min_run_time: float, rounds: int = 1) -> dict[str, Any]:  # fmt: skip
    """``x @ W.T`` for a 2:4 ``W (width, width)`` three ways, at each width and token count: the dense cuBLAS
    matmul of the pruned weight (``F.linear``, ``dense``), PyTorch's semi-structured sparse tensor on the sparse
    tensor cores (:func:`effx_lab.nm.semi_structured.semi_structured_linear`, ``semi_structured``; cuSPARSELt or
    CUTLASS) and the course's Triton kernel reading the compressed form
    (:func:`effx_lab.nm.kernels.nm_matmul_triton`, ``triton_nm``).

    Each is timed with :func:`effx_lab.bench.time_fn` (L2 flushed before each call on a GPU), the three
    alternating for ``rounds`` rounds (best median). Returns ``{"config", "rows", "notes", "published"}``: one
    row per (width, tokens) with ``times_s``, ``speedup_vs_dense`` (dense time / its time) and
    ``rel_err_vs_fp64`` (``max |y - ref| / max |ref|`` against the float64 product); ``notes`` says why a
    candidate was not timed (semi-structured: no CUDA or a GPU before sm_80); ``published`` is
    :data:`NM_PUBLISHED`. On a CPU (``--dry-run``) the kernel runs in Triton's interpreter, float32, and the
    times mean nothing. Returns ``{"skipped": why}`` when the Triton kernel cannot run.
    """
    import torch.nn.functional as F

    from effx_lab.bench import time_fn
    from effx_lab.nm import kernels as NK
    from effx_lab.nm import semi_structured as NS
    from effx_lab.nm import torch_ops as NT

    why = NK.why_unavailable()
    if why is not None:
        return {"skipped": why}
    if device.type != "cuda":
        dtype = torch.float32
    cfg = {"widths": list(widths), "tokens": list(tokens), "dtype": _dt(dtype), "device": str(device),
           "pattern": "2:4 along the input dimension"}  # fmt: skip
    out: dict[str, Any] = {"config": cfg, "rows": [], "notes": {}, "published": NM_PUBLISHED}
    semi_why = NS.why_unavailable(device)
    if semi_why is None and dtype not in NS.DTYPES:
        semi_why = f"semi-structured sparsity takes float16/bfloat16, the benchmark runs {_dt(dtype)}"
    if semi_why is not None:
        out["notes"]["semi_structured"] = semi_why
    for width in widths:
        w = _randn(60, (width, width), device, dtype, 1.0 / math.sqrt(width))
        w = w * NT.nm_mask(w, 2, 4)
        c = NT.compress(w, 2, 4)
        ws = None
        if semi_why is None:
            try:
                ws = NS.to_semi_structured(w)
            except Exception as exc:  # noqa: BLE001 - recorded, the other two still run
                out["notes"]["semi_structured"] = _error_text(exc)
        w64 = w.double()
        for m in tokens:
            x = _randn(61, (m, width), device, dtype)
            calls = {"dense": lambda x=x: F.linear(x, w), "triton_nm": lambda x=x: NK.nm_matmul_triton(x, c)}
            if ws is not None:
                calls["semi_structured"] = lambda x=x: NS.semi_structured_linear(x, ws)
            with torch.inference_mode():
                ref64 = x.double() @ w64.T
                errs = {name: _rel_to_ref(fn(), ref64) for name, fn in calls.items()}  # also the compile
                del ref64
                times = {name: math.inf for name in calls}
                for _ in range(max(1, rounds)):  # alternate, so that a clock change hits all alike
                    for name, fn in calls.items():
                        t = time_fn(fn, name=name, min_run_time=min_run_time, device=device).median_s
                        times[name] = min(times[name], t)
            out["rows"].append({
                "width": width, "tokens": m, "times_s": times, "rel_err_vs_fp64": errs,
                "speedup_vs_dense": {name: times["dense"] / t for name, t in times.items() if name != "dense"},
                "compressed_over_dense_bytes": c.nbytes / c.dense_nbytes,
            })  # fmt: skip
            del x
        del w, w64, c, ws
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return out


#: the MoE goals of issue 15 (reported, never asserted)
MOE_GOALS = ("at 64 experts, top-1, C = 1.25: sort + grouped GEMM >= 5x faster than the one-hot einsums, and "
             "within 1.5x of a dense FFN with the same active parameters")  # fmt: skip


def _moe_timing(*, tokens: int, d: int, f: int, experts: Sequence[int], capacity_factor: float,
                dtype: torch.dtype, device: torch.device, min_run_time: float, rounds: int = 1) -> dict[str, Any]:  # fmt: skip
    """The MoE FFN (no residual) at ``tokens`` tokens, top-1 at ``capacity_factor``, for each number of
    ``experts``, five ways: the course's sort + loop of cuBLAS calls over the experts
    (:func:`effx_lab.moe.torch_ops.moe_grouped`, ``cublas_loop``), PyTorch's ``F.grouped_mm``
    (:func:`effx_lab.moe.library.moe_grouped_mm`, ``grouped_mm``), the course's Triton grouped GEMM
    (:func:`effx_lab.moe.kernels.moe_grouped_triton`, ``triton``), the one-hot dispatch/combine einsums with
    capacity padding (:func:`effx_lab.moe.torch_ops.moe_einsum`, ``einsum``), and a dense FFN of the same
    active parameters (one expert on every token, ``dense_active``).

    Each is timed with :func:`effx_lab.bench.time_fn` (the routing is made once, outside the timings), the
    five alternating for ``rounds`` rounds (best median). Returns ``{"config", "rows", "notes", "goals"}``:
    one row per number of experts with ``capacity``, ``dropped_fraction``, ``padding_fraction`` (share of the
    ``E * C`` buffer rows that the einsums run on padding), ``times_s`` and ``rel_err_vs_fp64``
    (``max |y - ref| / max |ref|`` against ``moe_grouped`` in float64); ``notes`` says why one was not
    timed. On a CPU (``--dry-run``) the Triton kernel runs in the interpreter, float32: times mean nothing.
    """
    from effx_lab.bench import time_fn
    from effx_lab.moe import kernels as MK
    from effx_lab.moe import library as ML
    from effx_lab.moe import torch_ops as MT

    if device.type != "cuda":
        dtype = torch.float32
    cfg = {"tokens": tokens, "d": d, "f": f, "experts": list(experts), "k": 1, "capacity_factor": capacity_factor,
           "dtype": _dt(dtype), "device": str(device)}  # fmt: skip
    out: dict[str, Any] = {"config": cfg, "rows": [], "notes": {}, "goals": MOE_GOALS}
    for key, why in (("triton", MK.why_unavailable()), ("grouped_mm", ML.why_unavailable())):
        if why is not None:
            out["notes"][key] = why
    for n_exp in experts:
        x, routing, params = _moe_inputs(device, dtype, tokens, d, f, n_exp, 1, capacity_factor, seed=80)
        dense = {key: v[:1] for key, v in params.items()}
        calls: dict[str, Callable[[], Any]] = {
            "cublas_loop": lambda: MT.moe_grouped(x, routing, params),
            "einsum": lambda: MT.moe_einsum(x, routing, params),
            "dense_active": lambda: MT.expert_ffn(x, dense, 0),
        }
        if "grouped_mm" not in out["notes"]:
            calls["grouped_mm"] = lambda: ML.moe_grouped_mm(x, routing, params)
        if "triton" not in out["notes"]:
            calls["triton"] = lambda: MK.moe_grouped_triton(x, routing, params)
        with torch.inference_mode():
            ref64 = MT.moe_grouped(x.double(), routing, {key: v.double() for key, v in params.items()})
            errs: dict[str, float] = {}
            for name, fn in list(calls.items()):  # also the compile
                try:
                    y = fn()
                    if name != "dense_active":
                        errs[name] = _rel_to_ref(y, ref64)
                except Exception as exc:  # noqa: BLE001 - recorded, the others still run
                    out["notes"][name] = _error_text(exc)
                    del calls[name]
            del ref64
            times = {name: math.inf for name in calls}
            for _ in range(max(1, rounds)):  # alternate, so that a clock change hits all alike
                for name, fn in calls.items():
                    t = time_fn(fn, name=name, min_run_time=min_run_time, device=device).median_s
                    times[name] = min(times[name], t)
        kept = routing.kept
        used = int(kept.sum())
        out["rows"].append({
            "experts": n_exp, "capacity": routing.capacity,
            "dropped_fraction": 1.0 - used / kept.numel(),
            "padding_fraction": 1.0 - used / (n_exp * routing.capacity),
            "times_s": times, "rel_err_vs_fp64": errs,
        })  # fmt: skip
        del x, routing, params, dense
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return out


def _speedup(lib_s: float | None, kern_s: float | None) -> float | None:
    if lib_s is None or kern_s is None or not kern_s > 0 or not lib_s > 0:
        return None
    return lib_s / kern_s


def _ratio(name: str, source: str, kernel: str, library: str, kern_s: float | None, lib_s: float | None,
           err: dict[str, Any], why: str | None, note: str | None = None) -> dict[str, Any]:  # fmt: skip
    row = {"name": name, "source": source, "kernel": kernel, "library": library,
           "kernel_ms": None if kern_s is None else kern_s * 1e3,
           "library_ms": None if lib_s is None else lib_s * 1e3,
           "speedup": _speedup(lib_s, kern_s), "errors": err, "note": note}  # fmt: skip
    if why is not None:
        row.update(status="skipped", reason=why)
    elif row["speedup"] is None:
        row.update(status="skipped", reason="one of the two was not timed")
    else:
        row["status"] = "ok"
    return row


def bench_ratios(measurements: dict[str, Any], *, interpreted: bool, int8_backend_reason: str | None = None
                 ) -> list[dict[str, Any]]:  # fmt: skip
    """Kernel-vs-library speed-ups (library time / kernel time: above 1 the course's kernel is faster) from the
    measurement results (plain dicts, as the bench functions return them). Missing pieces become skipped rows
    with the reason recorded by the measurement."""
    ratios: list[dict[str, Any]] = []
    tag = "CPU interpreter: times mean nothing" if interpreted else None

    gemv = measurements.get("decode_gemv") or {}
    if "paths" in gemv:
        paths, skipped = gemv["paths"], gemv.get("skipped", {})
        cfg = gemv.get("config", {})
        src = f"quant.bench.decode_gemv n={cfg.get('n')} k={cfg.get('k')} group {cfg.get('group_size')}"
        pairs = (
            ("int4_triton", "fp16", "decode GEMV: Triton w4a16 vs fp16 F.linear"),
            ("int8_triton", "fp16", "decode GEMV: Triton w8a16 vs fp16 F.linear"),
            ("int4_triton", "int4_torch_lib", "decode GEMV: Triton w4a16 vs torch int4 (tinygemm)"),
            ("int8_triton", "int8_torch_lib", "decode GEMV: Triton w8a16 vs torch._weight_int8pack_mm"),
        )
        for kern, lib, label in pairs:
            missing = [p for p in (kern, lib) if p not in paths]
            why = "; ".join(f"{p}: {skipped.get(p, 'not measured')}" for p in missing) or None
            kp, lp = paths.get(kern, {}), paths.get(lib, {})
            err = {"kernel_rel_err_vs_dequant": kp.get("rel_err_vs_dequant"),
                   "library_rel_err_vs_dequant": lp.get("rel_err_vs_dequant")}  # fmt: skip
            acts = f"activations {kp.get('act_dtype')} vs {lp.get('act_dtype')}" if kp and lp else None
            note = "; ".join(x for x in (acts, tag) if x) or None
            ratios.append(_ratio(label, src, kern, lib, kp.get("ms", 0) / 1e3 if kp else None,
                                 lp.get("ms", 0) / 1e3 if lp else None, err, why, note))  # fmt: skip
    elif gemv:
        for label in ("decode GEMV: Triton w4a16 vs fp16 F.linear", "decode GEMV: Triton w8a16 vs fp16 F.linear"):
            ratios.append(_ratio(label, "quant.bench.decode_gemv", "", "", None, None, {},
                                 gemv.get("skipped") or gemv.get("error") or "not measured"))  # fmt: skip

    mm = measurements.get("int8_gemm") or {}
    cfg = mm.get("config", {})
    src = f"quant.bench.int8_gemm_vs_int_mm {cfg.get('m')}x{cfg.get('n')}x{cfg.get('k')}"
    if "times_s" in mm:
        t = mm["times_s"]
        err = {"max_abs_err": mm.get("max_abs_err"), "max_abs_exact": mm.get("max_abs_exact")}
        backend = mm.get("backend")
        float_name = next((k for k in t if k.endswith("_matmul")), None)
        why_int_mm = None if "torch_int_mm" in t else (mm.get("notes", {}).get("torch_int_mm") or "not timed")
        if backend == "torch":
            why = "int8_gemm took its torch fallback here, not Triton: " + (int8_backend_reason or "see backend")
            ratios.append(_ratio("int8 GEMM: Triton int8_gemm vs torch._int_mm + epilogue", src, "triton_int8_gemm",
                                 "torch_int_mm_scaled", None, None, err, why))  # fmt: skip
            ratios.append(_ratio("int8 GEMM: int8_gemm's torch fallback vs torch._int_mm + epilogue", src,
                                 "triton_int8_gemm (torch fallback)", "torch_int_mm_scaled", t.get("triton_int8_gemm"),
                                 t.get("torch_int_mm_scaled"), err, why_int_mm, "backend: torch"))  # fmt: skip
        else:
            note = f"backend: {backend}" + (f"; {tag}" if tag else "")
            ratios.append(_ratio("int8 GEMM: Triton int8_gemm vs torch._int_mm + epilogue", src, "triton_int8_gemm",
                                 "torch_int_mm_scaled", t.get("triton_int8_gemm"), t.get("torch_int_mm_scaled"), err,
                                 why_int_mm, note))  # fmt: skip
            ratios.append(_ratio("int8 GEMM: Triton int8_gemm vs raw torch._int_mm (int32 out)", src,
                                 "triton_int8_gemm", "torch_int_mm", t.get("triton_int8_gemm"), t.get("torch_int_mm"),
                                 err, why_int_mm, note))  # fmt: skip
        if float_name:
            ratios.append(_ratio(f"int8 GEMM: int8_gemm vs {float_name.replace('_', ' ')}", src, "triton_int8_gemm",
                                 float_name, t.get("triton_int8_gemm"), t.get(float_name), err, None,
                                 f"backend: {backend}" + (f"; {tag}" if tag else "")))  # fmt: skip
    elif mm:
        ratios.append(_ratio("int8 GEMM: Triton int8_gemm vs torch._int_mm + epilogue", src, "", "", None, None, {},
                             mm.get("skipped") or mm.get("error") or "not measured"))  # fmt: skip

    fl = measurements.get("flash_triton_vs_torch") or {}
    cfg = fl.get("config", {})
    src = (f"flash.bench.triton_vs_torch n={cfg.get('n')} batch={cfg.get('batch')} s={cfg.get('s')} e={cfg.get('e')} "
           f"c={cfg.get('chunk_size')} {cfg.get('dtype')}")  # fmt: skip
    if "times_s" in fl:
        t = fl["times_s"]
        err = {"max_abs_diff": fl.get("max_abs_diff"), "max_abs_torch": fl.get("max_abs_torch")}
        ratios.append(_ratio("mixed chunk attention: Triton vs torch", src, "triton", "torch", t.get("triton"),
                             t.get("torch"), err, None, tag))  # fmt: skip
        ratios.append(_ratio("linear (global) part: Triton vs fla chunk_linear_attn", src, "triton_global", "fla",
                             t.get("triton_global"), t.get("fla"), err,
                             None if "fla" in t else (fl.get("fla") or "fla not timed")))  # fmt: skip
    elif fl:
        ratios.append(_ratio("mixed chunk attention: Triton vs torch", src, "", "", None, None, {},
                             fl.get("skipped") or fl.get("error") or "not measured"))  # fmt: skip

    sp = measurements.get("flash_split") or {}
    cfg = sp.get("config", {})
    src = (f"gpu_check._flash_split_timing s={cfg.get('s')} e={cfg.get('e')} c={cfg.get('chunk_size')} "
           f"{cfg.get('dtype')} causal={cfg.get('causal')}")  # fmt: skip
    for row in sp.get("rows", []):
        label = f"mixed chunk Triton: split vs unsplit, batch {row['batch']} n={row['n']}"
        err = {"max_abs_diff": row.get("max_abs_diff"), "max_abs_out": row.get("max_abs_out")}
        note = f"split=None splits here: {'yes' if row.get('auto_splits') else 'no'}" + (f"; {tag}" if tag else "")
        ratios.append(_ratio(label, src, "split", "unsplit", row.get("split_s"), row.get("unsplit_s"), err, None,
                             note))  # fmt: skip
    if sp and "rows" not in sp:
        ratios.append(_ratio("mixed chunk Triton: split vs unsplit", src, "", "", None, None, {},
                             sp.get("skipped") or sp.get("error") or "not measured"))  # fmt: skip

    ps = measurements.get("prune_sparse") or {}
    cfg = ps.get("config", {})
    src = (f"prune.bench.gpu_sparse_vs_dense {cfg.get('n')}x{cfg.get('k')} block {cfg.get('block')} "
           f"{cfg.get('dtype')}")  # fmt: skip
    for row in ps.get("rows", []):
        t, errs = row.get("times_s", {}), row.get("rel_err_vs_fp64", {})
        where = f"density {row['density']:g}, M={row['tokens']}"
        for kern, label in (("triton_bsr", "block-sparse Triton"), ("torch_csr", "torch.sparse CSR")):
            why = None if kern in t else (ps.get("notes", {}).get(kern) or "not timed")
            err = {"kernel_rel_err_vs_fp64": errs.get(kern), "dense_rel_err_vs_fp64": errs.get("dense")}
            ratios.append(_ratio(f"{label} vs dense cuBLAS, {where}", src, kern, "dense", t.get(kern),
                                 t.get("dense"), err, why, tag))  # fmt: skip
    if ps and "rows" not in ps:
        ratios.append(_ratio("block-sparse Triton vs dense cuBLAS", src, "", "", None, None, {},
                             ps.get("skipped") or ps.get("error") or "not measured"))  # fmt: skip

    nm = measurements.get("nm_sparse") or {}
    cfg = nm.get("config", {})
    src = f"gpu_check._nm_timing 2:4 {cfg.get('dtype')}"
    for row in nm.get("rows", []):
        t, errs = row.get("times_s", {}), row.get("rel_err_vs_fp64", {})
        phase = "prefill" if row["tokens"] > 16 else "decode"
        where = f"N=K={row['width']}, M={row['tokens']} ({phase})"
        for kern, label in (("triton_nm", "2:4 Triton (ours)"), ("semi_structured", "2:4 semi-structured")):
            why = None if kern in t else (nm.get("notes", {}).get(kern) or "not timed")
            err = {"kernel_rel_err_vs_fp64": errs.get(kern), "dense_rel_err_vs_fp64": errs.get("dense")}
            note = "; ".join(x for x in ("bandwidth limit 1.78x, compute limit 2x (sparse tensor cores)", tag) if x)
            ratios.append(_ratio(f"{label} vs dense cuBLAS, {where}", src, kern, "dense", t.get(kern),
                                 t.get("dense"), err, why, note))  # fmt: skip
    if nm and "rows" not in nm:
        ratios.append(_ratio("2:4 Triton (ours) vs dense cuBLAS", src, "", "", None, None, {},
                             nm.get("skipped") or nm.get("error") or "not measured"))  # fmt: skip

    moe = measurements.get("moe") or {}
    cfg = moe.get("config", {})
    src = (f"gpu_check._moe_timing T={cfg.get('tokens')} d={cfg.get('d')} f={cfg.get('f')} top-1 "
           f"C={cfg.get('capacity_factor')} {cfg.get('dtype')}")  # fmt: skip
    pairs = (
        ("triton", "einsum", "Triton grouped GEMM (ours) vs one-hot einsums"),
        ("triton", "cublas_loop", "Triton grouped GEMM (ours) vs loop of cuBLAS calls"),
        ("triton", "grouped_mm", "Triton grouped GEMM (ours) vs F.grouped_mm"),
        ("cublas_loop", "einsum", "sort + loop of cuBLAS calls (ours) vs one-hot einsums"),
        ("cublas_loop", "grouped_mm", "sort + loop of cuBLAS calls (ours) vs F.grouped_mm"),
        ("triton", "dense_active", "Triton grouped GEMM (ours) vs dense FFN, same active parameters"),
    )
    for row in moe.get("rows", []):
        t, errs = row.get("times_s", {}), row.get("rel_err_vs_fp64", {})
        where = f"E={row['experts']}"
        for kern, lib, label in pairs:
            missing = [p for p in (kern, lib) if p not in t]
            why = "; ".join(f"{p}: {moe.get('notes', {}).get(p, 'not timed')}" for p in missing) or None
            err = {"kernel_rel_err_vs_fp64": errs.get(kern), "library_rel_err_vs_fp64": errs.get(lib)}
            note = f"padding {row.get('padding_fraction', 0):.0%} of the einsums' rows" if lib == "einsum" else None
            note = "; ".join(x for x in (note, tag) if x) or None
            ratios.append(_ratio(f"MoE {where}: {label}", src, kern, lib, t.get(kern), t.get(lib), err, why,
                                 note))  # fmt: skip
    if moe and "rows" not in moe:
        ratios.append(_ratio("MoE: Triton grouped GEMM (ours) vs one-hot einsums", src, "", "", None, None, {},
                             moe.get("skipped") or moe.get("error") or "not measured"))  # fmt: skip
    return ratios


def _capture(fn: Callable[[], Any]) -> tuple[Any, str]:
    """``fn()`` with its prints captured (the chapters print their tables): ``(result, printed text)``."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        res = fn()
    return res, buf.getvalue()


def _bench_item(ctx: Context, items: dict[str, Any], key: str, fn: Callable[[], Any], min_s: float) -> None:
    """Run one benchmark item into ``items[key]``: skipped when less than ``min_s`` seconds are left."""
    item: dict[str, Any] = {}
    items[key] = item
    if ctx.remaining() < min_s:
        left = ctx.remaining()
        item.update(status="skipped", reason=f"time budget: {left:.0f} s left, this needs about {min_s:.0f} s")
        ctx.log(f"  bench {key:<28} skipped (time budget)")
        return
    t0 = time.monotonic()
    try:
        res, printed = _capture(fn)
        item["result"] = res
        if printed.strip():
            item["printed_tail"] = printed[-4000:]
        item["status"] = "skipped" if isinstance(res, dict) and set(res) == {"skipped"} else "ok"
        if item["status"] == "skipped":
            item["reason"] = res["skipped"]
    except StepTimeout:
        item.update(status="timeout", error="the step's time box ended during this benchmark",
                    seconds=time.monotonic() - t0)  # fmt: skip
        raise
    except Exception as exc:  # noqa: BLE001 - one failing benchmark must not hide the others
        item.update(status="failed", error=_error_text(exc), traceback=traceback.format_exc()[-3000:])
    item["seconds"] = time.monotonic() - t0
    ctx.log(f"  bench {key:<28} {item['status']} ({item['seconds']:.1f} s)")


def _module(name: str) -> Any:
    return importlib.import_module(name)


def _benchmarks_step(ctx: Context, out: dict[str, Any]) -> None:
    from effx_lab.bench import to_jsonable
    from effx_lab.bench.__main__ import REGISTRY

    sz, dev = ctx.sizes, ctx.device
    half = _half_dtype()
    out["triton_half_dtype"] = _dt(half)
    out["triton_half_dtype_reason"] = feature_reason("bf16")
    chapters: dict[str, Any] = {}
    out["chapters"] = chapters
    for chapter in ("ch01", "ch02", "ch03", "ch07"):
        # ch07 times its Triton kernel in bfloat16 by default: float16 where bfloat16 is not native (T4)
        kwargs = {"triton_dtype": half} if chapter == "ch07" else {}
        _bench_item(ctx, chapters, chapter,
                    lambda chapter=chapter, kwargs=kwargs: _module(REGISTRY[chapter]).run(quick=True, **kwargs),
                    min_s=5.0 if ctx.dry_run else 15.0)  # fmt: skip
        chapters[chapter]["function"] = f"{REGISTRY[chapter]}.run(quick=True)"

    timing = sz["timing"]
    meas: dict[str, Any] = {}
    out["measurements"] = meas
    quant, flash = "effx_lab.quant.bench", "effx_lab.flash.bench"
    _bench_item(ctx, meas, "decode_gemv",
                lambda: _module(quant).decode_gemv(**sz["gemv"], device=dev, paths=_module(quant).CUDA_PATHS, **timing),
                min_s=3.0 if ctx.dry_run else 15.0)  # fmt: skip
    _bench_item(ctx, meas, "int8_gemm",
                lambda: _module(quant).int8_gemm_vs_int_mm(**sz["int8_bench"], device=dev, **timing),
                min_s=3.0 if ctx.dry_run else 15.0)  # fmt: skip
    _bench_item(ctx, meas, "flash_triton_vs_torch",
                lambda: _module(flash).triton_vs_torch(**sz["flash_bench"], causal=True, dtype=half, device=dev,
                                                       **timing),
                min_s=3.0 if ctx.dry_run else 15.0)  # fmt: skip
    _bench_item(ctx, meas, "flash_split",
                lambda: _flash_split_timing(**sz["flash_split"], dtype=half, device=dev, **timing),
                min_s=3.0 if ctx.dry_run else 20.0)  # fmt: skip
    # float16: torch.sparse CSR on cuSPARSE and the Triton kernel both take it on every card (sm_75 too)
    _bench_item(ctx, meas, "prune_sparse",
                lambda: _module("effx_lab.prune.bench").gpu_sparse_vs_dense(
                    **sz["prune_sparse"], dtype=torch.float16, device=dev, **timing),
                min_s=3.0 if ctx.dry_run else 20.0)  # fmt: skip
    # float16: the sparse tensor cores (semi-structured) and the Triton kernel both take it
    _bench_item(ctx, meas, "nm_sparse",
                lambda: _nm_timing(**sz["nm_bench"], dtype=torch.float16, device=dev, **timing),
                min_s=3.0 if ctx.dry_run else 20.0)  # fmt: skip
    # bfloat16 where native (grouped_mm's fast path), else float16; float32 on a CPU
    _bench_item(ctx, meas, "moe",
                lambda: _moe_timing(**sz["moe_bench"], dtype=half, device=dev, **timing),
                min_s=3.0 if ctx.dry_run else 20.0)  # fmt: skip
    for item in meas.values():
        if "result" in item:
            item["result"] = to_jsonable(item["result"])
    plain = {k: (v.get("result") if "result" in v else {"skipped": v.get("reason") or v.get("error") or v["status"]})
             for k, v in meas.items()}  # fmt: skip
    quant_k = sys.modules.get("effx_lab.quant.kernels")
    reason = None
    if quant_k is not None and dev.type == "cuda" and quant_k.int8_gemm_backend(dev) == "torch":
        reason = feature_reason("triton_int8_dot")
    out["ratios"] = bench_ratios(plain, interpreted=_device.triton_mode() == "interpreter", int8_backend_reason=reason)


# ==========================================================================================================
# notebooks
# ==========================================================================================================
_NB_ENV = {"EFFX_CHECK_STRICT": "1"}  # as `make test-notebooks`: a failed exercise check is an error


def _notebook_plan(root: Path) -> tuple[list[str], str | None]:
    """The notebooks of :data:`NOTEBOOKS` present under ``root``, or why none can run."""
    present = [nb for nb in NOTEBOOKS if (root / nb).is_file()]
    if not present:
        return [], f"none of {list(NOTEBOOKS)} found under {root}"
    try:
        import nbval  # noqa: F401
    except ImportError as exc:
        return [], f"nbval is not installed (pip install -e '.[test]'): {exc}"
    return present, None


def _collect_notebooks(root: Path, present: Sequence[str], timeout: float) -> dict[str, Any]:
    """nbval ``--collect-only``: nbval loads and the notebooks parse into cells (running them is --notebooks')."""
    return run_pytest(["--nbval-lax", "--nbval-current-env", "--collect-only", "-q", *present],
                      name="nbval (collect-only)", timeout=timeout, cwd=root, env=_NB_ENV, collect_only=True)


def _notebooks_step(ctx: Context, out: dict[str, Any]) -> None:
    runs: list[dict[str, Any]] = []
    out["runs"] = runs
    present, why = _notebook_plan(ctx.root)
    if why is not None:
        out["status"] = "skipped"
        out["reason"] = why
        return
    env = _NB_ENV
    if not ctx.notebooks:
        out["mode"] = "collect-only"
        fut = ctx.background.get("notebooks")
        out["background"] = fut is not None
        runs.append(fut.result() if fut is not None else _collect_notebooks(ctx.root, present, ctx.remaining()))
        return
    out["mode"] = "run"
    for nb in present:
        if ctx.remaining() < NOTEBOOK_MIN_S:
            runs.append({"name": nb, "status": "skipped",
                         "reason": f"time budget: {ctx.remaining():.0f} s left, a notebook gets at least "
                                   f"{NOTEBOOK_MIN_S:.0f} s"})  # fmt: skip
            continue
        # --nbval-current-env: this Python's packages, whatever kernel the notebook's metadata names
        res = run_pytest(["--nbval-lax", "--nbval-current-env", "-q", nb], name=nb, timeout=ctx.remaining(),
                         cwd=ctx.root, env=env)  # fmt: skip
        runs.append(res)
        ctx.log(f"  notebook {nb:<55} {res['status']} ({res['seconds']:.0f} s)")


# ==========================================================================================================
# the run
# ==========================================================================================================
def _start_collect_tests(ctx: Context, pool: Any, timeout: float) -> Any:
    return pool.submit(_collect_gpu_tests, ctx.root, timeout) if _tests_missing(ctx.root) is None else None


def _start_collect_notebooks(ctx: Context, pool: Any, timeout: float) -> Any:
    present, why = _notebook_plan(ctx.root)
    if ctx.notebooks or why is not None:
        return None
    return pool.submit(_collect_notebooks, ctx.root, present, timeout)


#: dry run: the collect-only subprocesses started in the background before the in-process steps
_BACKGROUND: dict[str, Callable[[Context, Any, float], Any]] = {
    "tests": _start_collect_tests,
    "notebooks": _start_collect_notebooks,
}

_STEP_FUNCS: dict[str, Callable[[Context, dict[str, Any]], None]] = {
    "tests": _tests_step,
    "kernels": _kernels_step,
    "benchmarks": _benchmarks_step,
    "notebooks": _notebooks_step,
}


def _items(section: dict[str, Any]) -> list[dict[str, Any]]:
    """The sub-items of a step's section (test runs, kernel checks, benchmark items, notebook runs)."""
    items: list[dict[str, Any]] = []
    for key in ("runs", "checks"):
        items += [x for x in section.get(key, []) if isinstance(x, dict)]
    for key in ("chapters", "measurements"):
        items += [x for x in section.get(key, {}).values() if isinstance(x, dict)]
    return items


def _aggregate(section: dict[str, Any]) -> str:
    """A step's status from its items: failed if any failed or timed out, ok if any ran, else skipped."""
    statuses = [x.get("status") for x in _items(section)]
    if any(s in ("failed", "timeout") for s in statuses):
        return "failed"
    if any(s == "ok" for s in statuses):
        return "ok"
    return "skipped"


def _run_step(name: str, ctx: Context, deadline: float) -> dict[str, Any]:
    section: dict[str, Any] = {}
    ctx.deadline = deadline
    t0 = time.monotonic()
    limit = deadline - t0
    if limit < 1.0:
        return {"status": "skipped", "reason": "time budget used up by the earlier steps", "seconds": 0.0}
    ctx.log(f"[{name}] time box {limit:.0f} s")
    try:
        with _alarm(limit + ALARM_GRACE_S):  # a backstop: the steps stop themselves at their deadline first
            _STEP_FUNCS[name](ctx, section)
        section["status"] = section.get("status") or _aggregate(section)
    except StepTimeout as exc:
        section["status"] = "timeout"
        section["error"] = str(exc)
    except Exception as exc:  # noqa: BLE001 - a failing step is reported, the others still run
        section["status"] = "failed"
        section["error"] = _error_text(exc)
        section["traceback"] = traceback.format_exc()[-3000:]
    section["seconds"] = time.monotonic() - t0
    ctx.log(f"[{name}] {section['status']} in {section['seconds']:.1f} s")
    return section


def run_check(*, dry_run: bool, steps: Sequence[str] = STEPS, notebooks: bool | None = None,
              budget_s: float | None = None, log: Callable[[str], None] = print) -> dict[str, Any]:  # fmt: skip
    """Run the selected steps and return the report (plain dicts; :func:`main` prints and saves it).

    ``dry_run``: CPU device and the smallest sizes (must be run without a GPU: :func:`main` hides the GPU
    first). ``notebooks``: run the notebooks (``None``: only with a GPU and not dry; otherwise nbval
    ``--collect-only``). ``budget_s``: total seconds (default :data:`DEFAULT_BUDGET_S`), shared among the
    steps by :data:`STEP_SHARES` with unused time carried over.
    """
    t_start = time.monotonic()
    cuda = _device.has_cuda()
    if dry_run and cuda:
        raise RuntimeError("run_check(dry_run=True) needs the GPU hidden; use main(['--dry-run']), which does that")
    if not dry_run and not cuda:
        raise RuntimeError("no CUDA GPU here: use --dry-run on a machine without one")
    mode = "dry" if dry_run else "gpu"
    budget = float(budget_s if budget_s is not None else DEFAULT_BUDGET_S[mode])
    steps = [s for s in STEPS if s in steps]
    ctx = Context(dry_run=dry_run, device=torch.device("cpu" if dry_run else "cuda"), sizes=SIZES[mode],
                  notebooks=bool(notebooks if notebooks is not None else cuda and not dry_run), root=ROOT, log=log)
    report: dict[str, Any] = {
        "mode": "dry-run" if dry_run else "gpu",
        "environment": environment(),
        "options": {"steps": steps, "budget_s": budget, "notebooks": ctx.notebooks, "sizes": mode},
    }
    env = report["environment"]
    log(f"effx_lab.gpu_check ({report['mode']}): {env['summary']}")
    # On a GPU the steps run one after the other (a test run next to a benchmark would spoil its times). In a
    # dry run the two collect-only subprocesses need nothing from this process: they start first, in the
    # background, and their steps run last and pick up the results (on 2 cores that saves a third of the time).
    order = [s for s in (("kernels", "benchmarks", "tests", "notebooks") if dry_run else STEPS) if s in steps]
    total_share = sum(STEP_SHARES[s] for s in steps) or 1.0
    deadlines, cum = {}, 0.0
    for name in order:
        cum += STEP_SHARES[name] / total_share
        deadlines[name] = t_start + cum * budget
    with contextlib.ExitStack() as stack:
        if dry_run:
            from concurrent.futures import ThreadPoolExecutor

            pool = stack.enter_context(ThreadPoolExecutor(max_workers=2, thread_name_prefix="gpu-check-collect"))
            for name, start in _BACKGROUND.items():
                if name in steps:
                    fut = start(ctx, pool, deadlines[name] - time.monotonic())
                    if fut is not None:
                        ctx.background[name] = fut
        for name in order:
            report[name] = _run_step(name, ctx, deadlines[name])
            if ctx.device.type == "cuda":
                torch.cuda.empty_cache()
    for name in STEPS:
        if name not in steps:
            report[name] = {"status": "skipped", "reason": "not selected (--steps)", "seconds": 0.0}
    report["options"]["order"] = order
    failed = [f"{name}" for name in STEPS if report[name].get("status") in ("failed", "timeout")]
    report["summary"] = {
        "total_s": time.monotonic() - t_start,
        "failed_steps": failed,
        "failed_items": _failed_items(report),
        "skipped_items": _skipped_items(report),
        "exit_code": 1 if failed else 0,
    }
    return report


def _label(step: str, item: dict[str, Any]) -> str:
    name = item.get("name") or item.get("kernel") or item.get("key") or "?"
    extra = " ".join(str(item[k]) for k in ("dtype", "shape") if item.get(k))
    return f"{step}: {name}" + (f" [{extra}]" if extra else "")


def _walk(report: dict[str, Any]):
    for step in STEPS:
        section = report.get(step) or {}
        for key in ("chapters", "measurements"):
            for name, item in (section.get(key) or {}).items():
                if isinstance(item, dict):
                    yield step, dict(item, name=f"{key[:-1] if key != 'measurements' else 'measurement'} {name}")
        for key in ("runs", "checks"):
            for item in section.get(key) or []:
                if isinstance(item, dict):
                    yield step, item
        for item in section.get("ratios") or []:
            yield step, dict(item, name=f"ratio {item.get('name')}")


def _failed_items(report: dict[str, Any]) -> list[str]:
    out = [f"{_label(s, i)}: {i.get('error', i.get('status'))}" for s, i in _walk(report)
           if i.get("status") in ("failed", "timeout")]  # fmt: skip
    for step in STEPS:
        sec = report.get(step) or {}
        if sec.get("status") in ("failed", "timeout") and sec.get("error"):
            out.append(f"{step}: {sec['error']}")
    return out


def _skipped_items(report: dict[str, Any]) -> list[str]:
    """One line per reason: ``"<step>: <item> [<dtype> <shape>]: <reason>"``, or for several items skipped for
    the same reason ``"<step>: 7 items (a, b, ...): <reason>"``."""
    groups: dict[tuple[str, str], list[str]] = {}
    for step, item in _walk(report):
        if item.get("status") == "skipped":
            label = _label(step, item)[len(step) + 2:]
            groups.setdefault((step, str(item.get("reason", ""))), []).append(label)
    out = []
    for (step, reason), labels in groups.items():
        if len(labels) == 1:
            out.append(f"{step}: {labels[0]}: {reason}")
        else:
            names = ", ".join(labels[:4]) + (", ..." if len(labels) > 4 else "")
            out.append(f"{step}: {len(labels)} items ({names}): {reason}")
    for step in STEPS:
        sec = report.get(step) or {}
        if sec.get("status") == "skipped" and sec.get("reason"):
            out.append(f"{step}: {sec['reason']}")
    return out


# ==========================================================================================================
# the table
# ==========================================================================================================
def _fmt_num(v: Any, spec: str = ".2g") -> str:
    if v is None:
        return "-"
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    if v == 0:
        return "0"
    return format(v, spec)


def _table(rows: list[Sequence[str]], right: set[int] = frozenset()) -> list[str]:
    if not rows:
        return []
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for j, r in enumerate(rows):
        cells = [str(c).rjust(w) if i in right else str(c).ljust(w) for i, (c, w) in enumerate(zip(r, widths))]
        lines.append("  ".join(cells).rstrip())
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return lines


def _count_text(counts: dict[str, Any]) -> str:
    if "collected" in counts:
        return f"{counts['collected']} collected"
    keys = ("passed", "failed", "errors", "skipped")
    return ", ".join(f"{int(counts.get(k, 0) or 0)} {k}" for k in keys)


def _step_summary(step: str, sec: dict[str, Any]) -> str:
    if sec.get("reason") and sec.get("status") == "skipped":
        return f"skipped: {sec['reason']}"
    if sec.get("error") and not _items(sec):
        return sec["error"]
    if step in ("tests", "notebooks"):
        parts = []
        for r in sec.get("runs", []):
            if r.get("status") == "skipped":
                parts.append(f"{r.get('name')}: skipped")
            else:
                secs = f" in {r['seconds']:.0f} s" if isinstance(r.get("seconds"), (int, float)) else ""
                parts.append(f"{r.get('name')}: {_count_text(r.get('counts', {}))}{secs}"
                             + (f" ({r['status']})" if r.get("status") != "ok" else ""))  # fmt: skip
        return "; ".join(parts) + (" (ran in the background)" if sec.get("background") else "")
    if step == "kernels":
        st = [c.get("status") for c in sec.get("checks", [])]
        text = ", ".join(f"{st.count(s)} {s}" for s in ("ok", "failed", "timeout", "skipped") if st.count(s))
        if sec.get("int8_gemm_backend"):
            text += f"; int8_gemm backend: {sec['int8_gemm_backend']}"
        return text + f"; Triton {sec.get('triton_mode', '?')}"
    if step == "benchmarks":
        ch = sec.get("chapters", {})
        me = sec.get("measurements", {})
        return (f"chapters run(quick=True): " + ", ".join(f"{k} {v.get('status')}" for k, v in ch.items())
                + "; measurements: " + ", ".join(f"{k} {v.get('status')}" for k, v in me.items()))  # fmt: skip
    return ""


def format_report(report: dict[str, Any], json_path: str | os.PathLike[str] | None = None) -> str:
    """The short text table of a :func:`run_check` report: the card, the steps, kernel errors, the
    kernel-vs-library speed-ups, what was skipped and why, total time."""
    env = report.get("environment", {})
    lines = []
    card = env.get("gpu") or f"no GPU ({env.get('cpu', '?')})"
    cap = env.get("capability") or "-"
    lines.append(f"effx_lab.gpu_check · {report.get('mode', '?')} · {card} · compute capability {cap}")
    lines.append(f"torch {env.get('torch_version', '?')} (CUDA {env.get('torch_cuda_version') or '-'}) · "
                 f"triton {env.get('triton_version') or 'not installed'} ({env.get('triton_mode', '?')}) · "
                 f"python {env.get('python_version', '?')}")  # fmt: skip
    lines.append("")
    rows: list[Sequence[str]] = [("step", "status", "time", "summary")]
    for step in STEPS:
        sec = report.get(step)
        if not isinstance(sec, dict):
            continue
        rows.append((step, sec.get("status", "?"), f"{sec.get('seconds', 0.0):.1f} s", _step_summary(step, sec)))
    lines += _table(rows, right={2})

    checks = [c for c in (report.get("kernels") or {}).get("checks", []) if c.get("status") != "skipped"]
    if checks:
        lines.append("")
        rows = [("kernel vs torch twin", "dtype", "shape", "max|err| vs torch", "rel err vs fp64", "tolerance",
                 "1st call", "status")]  # fmt: skip
        for c in checks:
            tol = c.get("tolerance")
            rows.append((c.get("kernel", "?") + (f" [{c['backend']}]" if c.get("backend") else ""),
                         c.get("dtype", ""), c.get("shape", ""), _fmt_num(c.get("max_abs_err")),
                         _fmt_num(c.get("rel_err_vs_fp64")), tol if isinstance(tol, str) else _fmt_num(tol),
                         f"{c['first_call_s']:.2f} s" if isinstance(c.get("first_call_s"), (int, float)) else "-",
                         c.get("status", "?")))  # fmt: skip
        lines += _table(rows, right={3, 4, 5, 6})

    ratios = (report.get("benchmarks") or {}).get("ratios") or []
    if ratios:
        lines.append("")
        rows = [("kernel vs library (speed-up = library time / kernel time)", "speed-up", "kernel ms",
                 "library ms", "max err")]  # fmt: skip
        for r in ratios:
            errs = [v for v in (r.get("errors") or {}).values() if isinstance(v, (int, float))]
            err = _fmt_num(errs[0]) if errs else "-"
            if r.get("status") == "ok":
                rows.append((r["name"], f"{r['speedup']:.2f}x", _fmt_num(r.get("kernel_ms"), ".3g"),
                             _fmt_num(r.get("library_ms"), ".3g"), err))  # fmt: skip
            else:
                rows.append((r["name"], "skipped", "-", "-", "-"))
        lines += _table(rows, right={1, 2, 3, 4})
        notes = sorted({r["note"] for r in ratios if r.get("note")})
        lines += [f"  note: {n}" for n in notes]

    summ = report.get("summary", {})
    skipped = summ.get("skipped_items") or []
    if skipped:
        lines.append("")
        lines.append("skipped:")
        lines += [f"  {s}" for s in skipped]
    failed = summ.get("failed_items") or []
    if failed:
        lines.append("")
        lines.append("FAILED:")
        lines += [f"  {s}" for s in failed]
    lines.append("")
    tail = f"total {summ.get('total_s', 0.0):.1f} s · exit code {summ.get('exit_code', '?')}"
    if json_path is not None:
        tail += f" · JSON {json_path}"
    lines.append(tail)
    return "\n".join(lines)


# ==========================================================================================================
# command line
# ==========================================================================================================
def _steps_arg(text: str) -> list[str]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    bad = [s for s in names if s not in STEPS]
    if not names or bad:
        raise argparse.ArgumentTypeError(
            f"--steps must be a comma-separated list of {', '.join(STEPS)}, got {text!r}"
        )
    if len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"--steps must not repeat a step, got {text!r}")
    return names


def _budget_arg(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--budget must be a number of seconds, got {text!r}") from None
    if not math.isfinite(value) or not 10 <= value <= 3600:
        raise argparse.ArgumentTypeError(f"--budget must be between 10 and 3600 seconds, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m effx_lab.gpu_check",
        description="Check everything in the course that needs a CUDA GPU in one run (under 8 minutes on an "
        "H100/A100): the GPU tests, the Triton kernels against their torch twins, the GPU benchmarks, and the "
        "notebooks' GPU branches. Prints a table and writes JSON.",
    )
    parser.add_argument("--dry-run", action="store_true",
                        help="no GPU needed: the same code on the CPU at the smallest sizes (kernels in Triton's "
                             "interpreter), GPU tests only collected; JSON into a temporary folder")  # fmt: skip
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="folder for gpu_check-<card>.json (default: bench_results/, or a temporary folder "
                             "with --dry-run)")  # fmt: skip
    parser.add_argument("--notebooks", action=argparse.BooleanOptionalAction, default=None,
                        help="run the notebooks' GPU branches under nbval (default: on with a GPU, off with "
                             "--dry-run, where they are only collected)")  # fmt: skip
    parser.add_argument("--budget", type=_budget_arg, default=None, metavar="SECONDS",
                        help=f"total time budget (default {DEFAULT_BUDGET_S['gpu']:.0f} s on a GPU, "
                             f"{DEFAULT_BUDGET_S['dry']:.0f} s for --dry-run)")  # fmt: skip
    parser.add_argument("--steps", type=_steps_arg, default=list(STEPS), metavar="LIST",
                        help=f"comma-separated subset of {','.join(STEPS)} (default: all)")  # fmt: skip
    return parser


def _reexec_without_gpu(argv: Sequence[str]) -> int:
    """``--dry-run`` on a machine with a GPU: run again in a subprocess that cannot see it (and so uses
    Triton's interpreter, which must be chosen before torch and the kernels are imported)."""
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", TRITON_INTERPRET="1", EFFX_GPU_CHECK_CHILD="1")
    cwd = os.getcwd()
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return subprocess.call([sys.executable, "-m", "effx_lab.gpu_check", *argv], env=env, cwd=cwd)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (0 nothing failed, 1 something failed, 2 usage error)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse printed the message
        return int(exc.code or 0)
    if args.out is not None and Path(args.out).exists() and not Path(args.out).is_dir():
        print(f"error: --out must be a folder, {args.out!r} is a file", file=sys.stderr)
        return 2
    cuda = _device.has_cuda()
    if args.dry_run and cuda:
        if os.environ.get("EFFX_GPU_CHECK_CHILD"):
            print("error: --dry-run could not hide the GPU (CUDA_VISIBLE_DEVICES='' was ignored)", file=sys.stderr)
            return 1
        return _reexec_without_gpu(argv)
    if not args.dry_run and not cuda:
        print("error: PyTorch sees no CUDA GPU here. On a machine without one use --dry-run "
              f"(details: {feature_reason('cuda')})", file=sys.stderr)  # fmt: skip
        return 2
    from effx_lab.bench import save_results

    out_dir = args.out
    if out_dir is None:
        out_dir = tempfile.mkdtemp(prefix="effx-gpu-check-") if args.dry_run else str(Path.cwd() / "bench_results")
    report = run_check(dry_run=args.dry_run, steps=args.steps, notebooks=args.notebooks, budget_s=args.budget)
    try:
        path: Path | str = save_results("gpu_check", report, out_dir=out_dir)
    except (OSError, TypeError, ValueError) as exc:
        path = f"(not written: {_error_text(exc)})"
        report["summary"]["exit_code"] = 1
    print()
    print(format_report(report, json_path=path))
    return int(report["summary"]["exit_code"])


if __name__ == "__main__":
    sys.exit(main())
