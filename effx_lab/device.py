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
* :func:`seed_everything` seeds Python, NumPy and PyTorch and hands back a NumPy ``Generator``.
"""
from __future__ import annotations

import os
import platform
import random
import sys
import warnings
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any

from ._validate import check_int, describe

__all__ = [
    "DeviceInfo",
    "FEATURES",
    "Feature",
    "capability",
    "cpu_name",
    "gate",
    "has_cuda",
    "info",
    "is_colab",
    "print_summary",
    "seed_everything",
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


def torch_device():
    """The ``torch.device`` the course uses: the first CUDA GPU if there is one, else the CPU."""
    import torch

    return torch.device("cuda" if has_cuda() else "cpu")


def resolve_torch_device(device: Any = None):
    """A validated ``torch.device``: ``None`` -> :func:`torch_device` (the GPU if there is one), else
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
    """How Triton kernels run here: ``"compiled"`` (GPU), ``"interpreter"`` (CPU) or ``"unavailable"``."""
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
    return f"{where} · PyTorch {d.torch_version} · {triton}{colab}"


def print_summary() -> None:
    """Print :func:`summary` (the first line of every notebook's output)."""
    print(summary())


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
