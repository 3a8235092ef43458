"""What hardware is here, and which of the course's features it can run.

Importing this module (``import effx_lab`` does it first) makes one decision with a side effect:
when there is no CUDA GPU it sets ``TRITON_INTERPRET=1`` so that every Triton kernel the course defines
afterwards runs in Triton's CPU interpreter. Triton reads that variable when a kernel is *defined*, so
it must happen before any ``@triton.jit`` runs; if Triton was already imported with a different setting
we warn instead of silently running the wrong mode.

Everything else here is read-only inspection:

* :func:`info` / :func:`summary` describe the device in one line for the top of every notebook;
* :func:`supports` / :func:`gate` answer "can this machine run feature X?" by compute capability, and
  :func:`gate` prints the reason when it cannot (notebooks then skip that cell instead of failing);
* :func:`seed_everything` seeds Python, NumPy and PyTorch and hands back a NumPy ``Generator``;
* :func:`compile_or_eager` is ``torch.compile`` where compiling works here, and the plain function (with a
  one-line reason) where it does not.

Apple silicon: the course runs on the CPU there. :func:`torch_device` never returns ``"mps"``, because the
MPS backend has no float64, which every agreement check of the course needs; :func:`summary` says that MPS
is present and why it is not used. (No notebook uses MPS yet, and :func:`resolve_torch_device` accepts only
``"cpu"`` and ``"cuda"``.)
"""
from __future__ import annotations

import functools
import os
import platform
import random
import shutil
import sys
import warnings
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any

from ._text import OUTPUT_COLUMNS
from ._validate import check_int, describe

__all__ = [
    "DeviceInfo",
    "FEATURES",
    "Feature",
    "capability",
    "compile_or_eager",
    "cpu_name",
    "gate",
    "has_cuda",
    "has_mps",
    "info",
    "is_colab",
    "print_summary",
    "seed_everything",
    "short_summary",
    "summary",
    "supports",
    "torch_device",
    "resolve_torch_device",
    "triton_mode",
]


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a hard dependency
        return False
    return bool(torch.cuda.is_available())


def _configure_triton_interpreter() -> None:
    """Turn on Triton's CPU interpreter when there is no GPU (must run before kernels are defined)."""
    if _cuda_available():
        return
    wanted = "1"
    current = os.environ.get("TRITON_INTERPRET")
    if current is None:
        os.environ["TRITON_INTERPRET"] = wanted
        if "triton" in sys.modules:
            warnings.warn(
                "triton was imported before effx_lab: kernels defined before this point will not use the "
                "CPU interpreter. Import effx_lab first (or set TRITON_INTERPRET=1 before starting Python).",
                RuntimeWarning,
                stacklevel=3,
            )


_configure_triton_interpreter()


def has_cuda() -> bool:
    """True when PyTorch sees a CUDA GPU."""
    return _cuda_available()


def has_mps() -> bool:
    """True when PyTorch sees Apple's Metal (MPS) backend. The course does not use it by default (no float64)."""
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a hard dependency
        return False
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


#: Printed by :func:`summary` where MPS is available.
MPS_NOTE = "MPS present but not used: the course runs on the CPU (MPS has no float64, which its checks need)"


def torch_device():
    """The ``torch.device`` the course uses: the first CUDA GPU if there is one, else the CPU.

    Never MPS, even on Apple silicon: MPS has no float64, and the course proves its implementations agree in
    float64.
    """
    import torch

    return torch.device("cuda" if has_cuda() else "cpu")


def resolve_torch_device(device: Any = None):
    """A validated ``torch.device``: ``None`` -> :func:`torch_device` (the GPU if there is one, never MPS), else
    ``"cpu"``/``"cuda[:N]"`` or a ``torch.device``; asking for CUDA without a GPU is a ``ValueError``."""
    import torch

    if device is None:
        return torch_device()
    if isinstance(device, str):
        try:
            device = torch.device(device)
        except RuntimeError as exc:
            raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}") from exc
    if not isinstance(device, torch.device):
        raise TypeError(f"device must be None, a str ('cpu' or 'cuda') or a torch.device, got {describe(device)}")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {str(device)!r}")
    if device.type == "cuda" and not has_cuda():
        raise ValueError(f"device={str(device)!r} was requested but PyTorch sees no CUDA GPU on this machine")
    return device


def capability() -> tuple[int, int] | None:
    """CUDA compute capability ``(major, minor)`` of GPU 0, or ``None`` without a GPU.

    Examples: T4 (Colab's free GPU) is (7, 5); A100 is (8, 0); L4 is (8, 9); H100 is (9, 0).
    """
    if not has_cuda():
        return None
    import torch

    return tuple(torch.cuda.get_device_capability(0))  # type: ignore[return-value]


def is_colab() -> bool:
    """True inside Google Colab."""
    return "google.colab" in sys.modules or "COLAB_RELEASE_TAG" in os.environ


def triton_mode() -> str:
    """How Triton kernels run here: ``"compiled"`` (GPU), ``"interpreter"`` (CPU) or ``"unavailable"``
    (not installed, or installed but failing to import, as the kernel modules found out)."""
    guard = sys.modules.get("effx_lab._triton")  # set once a kernel module has tried `import triton`
    if guard is not None and getattr(guard, "IMPORT_ERROR", None) is not None:
        return "unavailable"
    try:
        import importlib.util

        if importlib.util.find_spec("triton") is None:
            return "unavailable"
    except (ImportError, ValueError):
        return "unavailable"
    if has_cuda() and os.environ.get("TRITON_INTERPRET", "0") != "1":
        return "compiled"
    return "interpreter"


@lru_cache(maxsize=1)
def cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux), falling back to ``platform.processor()``."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def _memory_gib() -> float | None:
    try:
        pages = os.sysconf("SC_PHYS_PAGES")
        page_size = os.sysconf("SC_PAGE_SIZE")
        return pages * page_size / 2**30
    except (ValueError, OSError, AttributeError):
        return None


@dataclass(frozen=True)
class DeviceInfo:
    """A snapshot of the machine: what every benchmark and figure records as its provenance."""

    kind: str  # "cuda" or "cpu"
    name: str  # GPU name, or the CPU model name
    capability: tuple[int, int] | None
    cpu: str
    cpu_cores: int
    memory_gib: float | None
    gpu_memory_gib: float | None
    colab: bool
    torch_version: str
    triton_version: str | None
    triton_mode: str
    python_version: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def info() -> DeviceInfo:
    """Inspect the machine (cheap; safe to call often)."""
    import torch

    try:
        import importlib.metadata as md

        triton_version: str | None = md.version("triton")
    except Exception:  # noqa: BLE001 - any failure means "not installed"
        triton_version = None
    cuda = has_cuda()
    gpu_mem = None
    if cuda:
        name = torch.cuda.get_device_name(0)
        gpu_mem = torch.cuda.get_device_properties(0).total_memory / 2**30
    else:
        name = cpu_name()
    return DeviceInfo(
        kind="cuda" if cuda else "cpu",
        name=name,
        capability=capability(),
        cpu=cpu_name(),
        cpu_cores=os.cpu_count() or 1,
        memory_gib=_memory_gib(),
        gpu_memory_gib=gpu_mem,
        colab=is_colab(),
        torch_version=torch.__version__,
        triton_version=triton_version,
        triton_mode=triton_mode(),
        python_version=platform.python_version(),
    )


def summary() -> str:
    """One line naming the device, for the top of every notebook and every benchmark result."""
    d = info()
    if d.kind == "cuda":
        major, minor = d.capability or (0, 0)
        where = f"GPU {d.name} (sm_{major}{minor}, {d.gpu_memory_gib:.0f} GiB)"
    else:
        mem = f", {d.memory_gib:.0f} GiB RAM" if d.memory_gib else ""
        where = f"CPU {d.name} ({d.cpu_cores} cores{mem}), no GPU"
    triton = f"Triton {d.triton_version} ({d.triton_mode})" if d.triton_version else "Triton not installed"
    colab = " · Colab" if d.colab else ""
    mps = f" · {MPS_NOTE}" if d.kind == "cpu" and has_mps() else ""
    return f"{where} · PyTorch {d.torch_version} · {triton}{colab}{mps}"


def short_summary() -> str:
    """The device in a few words, e.g. ``"GPU NVIDIA H100 80GB HBM3 (sm_90)"`` or ``"CPU AMD EPYC 7B13 (2 cores)"``:
    what a claim's verdict (:class:`effx_lab.claims.ClaimRecord`) names as its device."""
    if has_cuda():
        import torch

        major, minor = capability() or (0, 0)
        return f"GPU {torch.cuda.get_device_name(0)} (sm_{major}{minor})"
    return f"CPU {cpu_name()} ({os.cpu_count() or 1} cores)"


def print_summary() -> None:
    """Print :func:`summary` (the first line of every notebook's output), broken at its
    `` · `` separators where it is wider than the notebook column."""
    lines: list[str] = []
    for part in summary().split(" · "):
        if lines and len(lines[-1]) + 3 + len(part) <= OUTPUT_COLUMNS:
            lines[-1] += " · " + part
        else:
            lines.append(part if not lines else "  · " + part)
    print("\n".join(lines))


# ----------------------------------------------------------------------------------------------------------
# torch.compile where it works, eager where it does not
# ----------------------------------------------------------------------------------------------------------
def _inductor_compilers() -> list[str]:
    """The C++ compilers TorchInductor's CPU backend may call, in its order of preference.

    Inductor's ``cpp.cxx`` setting (``(None, "g++")`` on Linux, ``clang++`` on macOS; ``None`` means "search"),
    then ``$CXX`` and the usual names (``cl`` on Windows).
    """
    names: list[str] = []
    try:
        from torch._inductor import config as inductor_config

        cxx = inductor_config.cpp.cxx
        names += [c for c in (cxx if isinstance(cxx, (tuple, list)) else (cxx,)) if isinstance(c, str) and c]
    except Exception:  # noqa: BLE001 - any failure: fall back to the usual names
        pass
    if os.environ.get("CXX"):
        names.append(os.environ["CXX"])
    names += ["cl"] if sys.platform == "win32" else ["g++", "c++", "clang++"]
    return list(dict.fromkeys(names))


def _compile_unavailable_reason(backend: Any) -> str | None:
    """Why ``torch.compile(..., backend=backend)`` cannot work here, or ``None`` when it may (the first call
    tells for sure). Only the default backend, TorchInductor, needs a compiler: a C++ compiler for CPU code,
    Triton for CUDA code."""
    import torch

    if not hasattr(torch, "compile"):
        return f"this PyTorch ({torch.__version__}) has no torch.compile"
    if backend not in (None, "inductor"):
        return None
    if has_cuda():
        import importlib.util

        if importlib.util.find_spec("triton") is None:
            return "TorchInductor generates Triton kernels for a CUDA GPU, and Triton is not installed"
        return None
    compilers = _inductor_compilers()
    if not any(shutil.which(c.split()[0]) for c in compilers):
        looked = ", ".join(compilers)
        return f"TorchInductor's CPU backend needs a C++ compiler and none was found (looked for {looked})"
    return None


def _fallback_message(name: str, reason: str) -> str:
    return f"⏭  torch.compile is not used for {name}: {reason}; running it eagerly (same results, slower)"


def compile_or_eager(fn, **kwargs):
    """``torch.compile(fn, **kwargs)`` where compiling works on this machine; otherwise ``fn`` itself.

    Two checks, so that a notebook never stops on a machine that cannot compile:

    * before compiling, a probe: TorchInductor (the default backend) needs a C++ compiler for CPU code (the
      one ``torch._inductor.config.cpp.cxx`` names, or ``g++``/``c++``/``clang++``, ``cl`` on Windows) and
      Triton for CUDA code. Without it, ``fn`` comes back unchanged and one line says why;
    * the first call: compilation happens there, so the returned wrapper runs the compiled function once and,
      if that raises while ``fn`` itself succeeds on the same arguments, prints the reason and uses ``fn``
      from then on. An error that ``fn`` raises too is the caller's, and is raised as it is.

    ``kwargs`` go to ``torch.compile`` (``mode=``, ``backend=``, ``dynamic=``, ...).
    """
    if not callable(fn):
        raise TypeError(f"fn must be a callable to compile, got {describe(fn)}")
    import torch

    name = getattr(fn, "__name__", type(fn).__name__)
    reason = _compile_unavailable_reason(kwargs.get("backend"))
    if reason is not None:
        print(_fallback_message(name, reason))
        return fn
    try:
        compiled = torch.compile(fn, **kwargs)
    except Exception as exc:  # noqa: BLE001 - e.g. a Python version this PyTorch cannot compile for
        print(_fallback_message(name, f"torch.compile refused it ({type(exc).__name__}: {exc})"))
        return fn

    state = {"call": None}  # None until the first call has succeeded one way or the other

    @functools.wraps(fn, updated=())  # name and docstring only: a module's attributes are not copied
    def first_call_checked(*args, **kw):
        if state["call"] is not None:
            return state["call"](*args, **kw)
        try:
            out = compiled(*args, **kw)
        except Exception as exc:  # noqa: BLE001 - decided below: the compiler's failure or the caller's error
            out = fn(*args, **kw)  # raises the caller's own error, if that is what it was
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            print(_fallback_message(name, f"compiling failed on the first call ({type(exc).__name__}: {first_line})"))
            state["call"] = fn
            return out
        state["call"] = compiled
        return out

    first_call_checked.compiled = compiled  # type: ignore[attr-defined]
    return first_call_checked


@dataclass(frozen=True)
class Feature:
    """A hardware feature some notebook cells need, and what it takes."""

    name: str
    needs_cuda: bool
    min_capability: tuple[int, int] | None
    why: str


FEATURES: dict[str, Feature] = {
    f.name: f
    for f in [
        Feature("cuda", True, None, "needs an NVIDIA GPU (on Colab: Runtime > Change runtime type > GPU)"),
        Feature(
            "triton_compiled",
            True,
            None,
            "compiling Triton kernels needs an NVIDIA GPU; on CPU they run in the interpreter (correct, slow)",
        ),
        Feature("fp16_tensor_cores", True, (7, 0), "fp16 tensor cores need Volta (sm_70) or newer"),
        Feature(
            "bf16",
            True,
            (8, 0),
            "native bf16 needs Ampere (sm_80) or newer; Colab's T4 (sm_75) has no real bf16",
        ),
        Feature(
            "sparse_2to4",
            True,
            (8, 0),
            "2:4 sparse tensor cores (torch.sparse.to_sparse_semi_structured) need Ampere (sm_80) or newer; "
            "Colab's T4 is sm_75",
        ),
        Feature("triton_int8_dot", True, (8, 0), "Triton's int8 tl.dot fails on sm_75 (T4); needs sm_80+"),
        Feature("fp8", True, (8, 9), "fp8 tensor cores need Ada (sm_89) or Hopper (sm_90)"),
    ]
}


def _check_feature(feature: str) -> Feature:
    if not isinstance(feature, str):
        raise TypeError(f"feature must be a str naming one of {sorted(FEATURES)}, got {feature!r}")
    if feature not in FEATURES:
        raise ValueError(f"feature must be one of {sorted(FEATURES)}, got {feature!r}")
    return FEATURES[feature]


def _unavailable_reason(f: Feature) -> str | None:
    if f.needs_cuda and not has_cuda():
        return f"no CUDA GPU here: {f.why}"
    if f.min_capability is not None:
        cap = capability()
        if cap is None or cap < f.min_capability:
            have = "none" if cap is None else f"sm_{cap[0]}{cap[1]}"
            need = f"sm_{f.min_capability[0]}{f.min_capability[1]}"
            return f"this GPU is {have}, the feature needs {need}: {f.why}"
    return None


def supports(feature: str) -> bool:
    """Whether this machine can run ``feature`` (a key of :data:`FEATURES`)."""
    return _unavailable_reason(_check_feature(feature)) is None


def gate(feature: str) -> bool:
    """Like :func:`supports`, but prints why when the answer is no, so a notebook can skip a cell:

    >>> if gate("sparse_2to4"):          # doctest: +SKIP
    ...     run_the_gpu_only_demo()
    """
    reason = _unavailable_reason(_check_feature(feature))
    if reason is not None:
        print(f"⏭  skipping '{feature}': {reason}")
        return False
    return True


def seed_everything(seed: int = 0):
    """Seed Python's ``random``, NumPy's global state and PyTorch; return a fresh ``numpy.random.Generator``.

    Course code takes explicit generators; the global seeds only tame third-party code.
    """
    import numpy as np
    import torch

    seed = check_int("seed", seed, min_value=0, max_value=2**32 - 1)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return np.random.default_rng(seed)
