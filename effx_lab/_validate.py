"""Input validation helpers shared by every public function of effx_lab.

Every error names the argument, the value received and what was expected, so a student
reading the traceback knows what to fix without opening the source.
"""
from __future__ import annotations

import numbers
from typing import Any, Iterable

import numpy as np

__all__ = [
    "describe",
    "check_int",
    "check_float",
    "check_choice",
    "check_array",
    "check_bool",
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
