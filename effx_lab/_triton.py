"""One Triton import guard for every kernel module of the course.

Triton publishes wheels for Linux only: a student on macOS or Windows, or anyone who installed the
package without the ``triton`` extra, has none. A kernel module must still import there, its kernels'
*source* must still be readable (the notebooks show it), and every call that would launch a kernel must
say why it cannot instead of failing somewhere inside. This module is the one place that knows how:

* :data:`triton` / :data:`tl` are the modules, or ``None`` without Triton; :data:`IMPORT_ERROR` says why;
* :func:`jit` is ``triton.jit`` with Triton and the identity without it (the function is never launched);
* :func:`kernel_source` gives a kernel's Python source either way (``inspect.getsource(kernel.fn)`` works
  only when Triton wrapped it);
* :func:`is_interpreted` / :func:`why_unavailable` tell whether kernels run here, and why not.

``import effx_lab`` must come before ``import triton`` (it switches on the CPU interpreter when there is no
GPU), so this module imports ``effx_lab.device`` first.
"""
from __future__ import annotations

import inspect
import textwrap
from typing import Any

from effx_lab import device as _device  # first: sets TRITON_INTERPRET=1 when there is no GPU

try:
    import triton
    import triton.language as tl

    IMPORT_ERROR: str | None = None
except ImportError as exc:  # macOS, Windows, or installed without the [triton] extra
    triton = None
    tl = None
    IMPORT_ERROR = (
        f"Triton is not installed ({exc}). It ships for Linux only: `pip install triton` there; on macOS "
        "and Windows the course uses the PyTorch versions instead"
    )

__all__ = ["IMPORT_ERROR", "is_interpreted", "jit", "kernel_source", "tl", "triton", "why_unavailable"]


def jit(fn):
    """``triton.jit(fn)`` when Triton is installed; otherwise ``fn`` unchanged (it is never launched)."""
    return triton.jit(fn) if triton is not None else fn


def kernel_source(kernel: Any) -> str:
    """The Python source of a kernel defined with :func:`jit`, with or without Triton installed.

    With Triton the kernel is a ``JITFunction`` (or the interpreter's wrapper) whose ``.fn`` is the plain
    function; without Triton it *is* the plain function. Either way the decorator line is included.
    """
    fn = getattr(kernel, "fn", kernel)
    if not callable(fn):
        raise TypeError(f"kernel must be a function defined with effx_lab._triton.jit, got {type(kernel).__name__}")
    try:
        return textwrap.dedent(inspect.getsource(fn))
    except (OSError, TypeError) as exc:
        raise ValueError(f"the source of kernel {getattr(fn, '__name__', fn)!r} is not available: {exc}") from exc


def is_interpreted(kernel: Any) -> bool:
    """Whether ``kernel`` was defined under Triton's CPU interpreter (``TRITON_INTERPRET=1``)."""
    return type(kernel).__name__ == "InterpretedFunction"


def why_unavailable(kernel: Any, module: str) -> str | None:
    """Why the kernels of ``module`` (represented by one of them, ``kernel``) cannot run here, or ``None``.

    They run with a CUDA GPU (compiled) or, without one, in Triton's CPU interpreter, which must have been
    switched on before the module defined its kernels.
    """
    if IMPORT_ERROR is not None:
        return IMPORT_ERROR
    if is_interpreted(kernel) or _device.has_cuda():
        return None
    return (
        f"no CUDA GPU here and Triton's CPU interpreter is off: TRITON_INTERPRET was not '1' when {module} was "
        "imported. Restart Python and import effx_lab before triton (or set TRITON_INTERPRET=1 in the environment)"
    )
