"""Input validation helpers shared by every public function of effx_lab.

Every error names the argument, the value received and what was expected, so a student
reading the traceback knows what to fix without opening the source.
"""
from __future__ import annotations

import numbers
import os
import sys
from typing import Any, Iterable, Sequence

import numpy as np

__all__ = [
    "describe",
    "check_int",
    "check_int_sequence",
    "check_float",
    "check_choice",
    "check_array",
    "check_bool",
    "check_instance",
    "available_memory_bytes",
    "check_alloc",
    "FALLBACK_MEMORY_LIMIT_BYTES",
]


def describe(value: Any) -> str:
    """Short description of a value for an error message (type, and shape/dtype for arrays)."""
    shape = getattr(value, "shape", None)
    dtype = getattr(value, "dtype", None)
    if shape is not None and dtype is not None:
        return f"{type(value).__name__} of shape {tuple(shape)} and dtype {dtype}"
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({type(value).__name__})"


def check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {describe(value)}")
    return bool(value)


def check_int(name: str, value: Any, *, min_value: int | None = None, max_value: int | None = None) -> int:
    """Return ``value`` as an int, or raise naming ``name``.

    Bools are rejected (``True`` is an int in Python but never a meaningful size).
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {describe(value)}")
    value = int(value)
    if min_value is not None and value < min_value:
        bound = f">= {min_value}" if max_value is None else f"in [{min_value}, {max_value}]"
        raise ValueError(f"{name} must be an int {bound}, got {value}")
    if max_value is not None and value > max_value:
        bound = f"<= {max_value}" if min_value is None else f"in [{min_value}, {max_value}]"
        raise ValueError(f"{name} must be an int {bound}, got {value}")
    return value


def check_int_sequence(name: str, values: Any, *, min_value: int | None = 1) -> tuple[int, ...]:
    """A non-empty sequence (not a str) of ints, each checked by :func:`check_int` (named
    ``name[i]``); returned as a tuple."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
        raise TypeError(f"{name} must be a non-empty sequence of ints, got {describe(values)}")
    return tuple(check_int(f"{name}[{i}]", v, min_value=min_value) for i, v in enumerate(values))


def check_float(
    name: str,
    value: Any,
    *,
    min_value: float | None = None,
    max_value: float | None = None,
    min_inclusive: bool = True,
    max_inclusive: bool = True,
) -> float:
    """Return ``value`` as a finite float, or raise naming ``name``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {describe(value)}")
    value = float(value)
    if not np.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if min_value is not None and (value < min_value or (not min_inclusive and value == min_value)):
        op = ">=" if min_inclusive else ">"
        raise ValueError(f"{name} must be {op} {min_value}, got {value}")
    if max_value is not None and (value > max_value or (not max_inclusive and value == max_value)):
        op = "<=" if max_inclusive else "<"
        raise ValueError(f"{name} must be {op} {max_value}, got {value}")
    return value


def check_choice(name: str, value: Any, choices: Iterable[Any]) -> Any:
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")
    return value


def check_array(
    name: str,
    value: Any,
    *,
    ndim: int | tuple[int, ...] | None = None,
    dtype_kind: str | None = None,
    allow_torch: bool = False,
    finite: bool = False,
) -> Any:
    """Check that ``value`` is a NumPy array (or a torch tensor if ``allow_torch``).

    ``ndim`` may be an int or a tuple of allowed ranks; ``dtype_kind`` is a string of NumPy kind
    letters ('f' float, 'i' signed int, 'u' unsigned, 'b' bool), e.g. ``"iu"`` for integers.
    """
    is_np = isinstance(value, np.ndarray)
    is_torch = False
    if not is_np and allow_torch:
        try:
            import torch

            is_torch = isinstance(value, torch.Tensor)
        except ImportError:  # pragma: no cover - torch is a dependency
            is_torch = False
    if not (is_np or is_torch):
        expected = "a NumPy array or torch tensor" if allow_torch else "a NumPy array"
        raise TypeError(f"{name} must be {expected}, got {describe(value)}")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if value.ndim not in allowed:
            want = " or ".join(str(a) for a in allowed)
            raise ValueError(f"{name} must have {want} dimensions, got shape {tuple(value.shape)}")
    if dtype_kind is not None:
        if is_np:
            kind = value.dtype.kind
        else:
            kind = "b" if value.dtype == torch.bool else ("f" if value.dtype.is_floating_point else "i")
        if kind not in dtype_kind:
            names = {"f": "float", "i": "int", "u": "unsigned int", "b": "bool", "c": "complex"}
            want = "/".join(names.get(k, k) for k in dtype_kind)
            raise TypeError(f"{name} must have a {want} dtype, got {value.dtype}")
    if finite:
        ok = bool(np.isfinite(value).all()) if is_np else bool(torch.isfinite(value).all())
        if not ok:
            raise ValueError(f"{name} must contain only finite values (no NaN/inf)")
    return value


def check_instance(name: str, value: Any, cls: type, expected: str | None = None) -> Any:
    """Return ``value`` if it is an instance of ``cls``, else raise a ``TypeError`` naming ``name``.

    The message names the expected class with its module (``a TinyLMConfig
    (effx_lab.models.config.TinyLMConfig)``) so a student who passed a dict, ``None`` or the config of
    another model knows what to build instead. ``expected`` replaces the ``a <ClassName>`` part.
    """
    if not isinstance(value, cls):
        want = expected or f"a {cls.__name__}"
        raise TypeError(f"{name} must be {want} ({cls.__module__}.{cls.__qualname__}), got {describe(value)}")
    return value


# ---------------------------------------------------------------------------------------------- memory
#: Limit used by :func:`check_alloc` when the available memory cannot be read (no /proc/meminfo, no psutil,
#: no ``os.sysconf`` page counts, e.g. on Windows without psutil): 8 GiB, more than any array of the course
#: needs and less than a machine of today has, so a wrong size fails fast instead of swapping.
FALLBACK_MEMORY_LIMIT_BYTES = 8 * 1024**3
#: Requests up to this size are never refused (and cost no read of the available memory): some of the checked
#: functions, such as ``causal_mask``, run on every forward pass.
ALWAYS_ALLOWED_BYTES = 64 * 1024**2


def _meminfo_available(text: str) -> int | None:
    """``MemAvailable`` (bytes) from the text of Linux's ``/proc/meminfo``, or None if it is not there."""
    for line in text.splitlines():
        if line.startswith("MemAvailable:"):
            parts = line.split()
            try:
                value = int(parts[1])
            except (IndexError, ValueError):
                return None
            unit = parts[2].lower() if len(parts) > 2 else "b"
            return value * {"kb": 1024, "mb": 1024**2, "gb": 1024**3}.get(unit, 1)
    return None


def available_memory_bytes() -> int | None:
    """Bytes of memory a new allocation may take now, or ``None`` when it cannot be read.

    Linux: ``MemAvailable`` of ``/proc/meminfo`` (free memory plus the page cache the kernel can drop);
    elsewhere ``psutil.virtual_memory().available`` when psutil is installed, else
    ``os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")`` where the platform has them.
    (A container's cgroup limit is not read: the limit here is the machine's.)
    """
    if sys.platform.startswith("linux"):
        try:
            with open("/proc/meminfo", encoding="ascii", errors="replace") as fh:
                found = _meminfo_available(fh.read())
            if found is not None:
                return found
        except OSError:
            pass
    try:
        import psutil  # type: ignore[import-not-found]

        return int(psutil.virtual_memory().available)
    except Exception:
        pass
    try:
        pages, page_size = os.sysconf("SC_AVPHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        if pages > 0 and page_size > 0:
            return int(pages) * int(page_size)
    except (AttributeError, ValueError, OSError):
        pass
    return None


def _fmt_bytes(n: int) -> str:
    for unit, size in (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n} bytes"


def check_alloc(what: str, n_bytes: Any) -> int:
    """Raise ``ValueError`` *before* allocating when ``what`` would need more than the available memory.

    ``what`` describes the request for the message (e.g. ``"causal_mask(n=1000000000, m=1000000000)"``),
    ``n_bytes`` is its size (a non-negative int; Python ints do not overflow, so pass the exact product).
    The limit is :func:`available_memory_bytes`, or :data:`FALLBACK_MEMORY_LIMIT_BYTES` when the platform
    does not tell; requests up to :data:`ALWAYS_ALLOWED_BYTES` pass without reading it. Returns ``n_bytes``.
    """
    if not isinstance(what, str) or not what:
        raise TypeError(f"what must be a non-empty str describing the allocation, got {describe(what)}")
    n_bytes = check_int("n_bytes", n_bytes, min_value=0)
    if n_bytes <= ALWAYS_ALLOWED_BYTES:
        return n_bytes
    available = available_memory_bytes()
    limit = FALLBACK_MEMORY_LIMIT_BYTES if available is None else available
    if n_bytes > limit:
        source = (
            "the memory available now"
            if available is not None
            else "effx_lab's fixed limit (the available memory could not be read)"
        )
        raise ValueError(
            f"{what} would allocate {_fmt_bytes(n_bytes)} ({n_bytes:,} bytes), more than {source}, "
            f"{_fmt_bytes(limit)}: check the sizes you passed"
        )
    return n_bytes


def require_tensor(name: str, value: Any) -> Any:
    """Raise ``TypeError`` unless ``value`` is a torch tensor (the torch faces never convert
    NumPy arrays); return it unchanged."""
    import torch

    if not isinstance(value, torch.Tensor):
        raise TypeError(
            f"{name} must be a torch tensor (torch_ops takes tensors; use "
            f"torch.from_numpy), got {describe(value)}"
        )
    return value
