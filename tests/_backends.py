"""Run one test body on a NumPy reference and on its torch_ops twin.

``backends(reference, "effx_lab.<pkg>.torch_ops")`` returns pytest params: the reference module itself, and
(when it imports) the torch module behind :class:`TorchAdapter`, which turns NumPy arguments (and dicts of
them) into torch tensors of the same dtype, calls the function without autograd, and turns tensors back into
NumPy arrays. Errors raised by the torch function pass through unchanged.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pytest
import torch


def _to_torch(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.array(value, copy=True))  # keeps the dtype (float64 stays float64)
    if isinstance(value, Mapping):
        return {k: _to_torch(v) for k, v in value.items()}
    return value


def _to_numpy(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    if isinstance(value, tuple):
        return tuple(_to_numpy(v) for v in value)
    return value


class TorchAdapter:
    """``adapter.f(*numpy_args)`` calls ``module.f`` with torch tensors and returns NumPy arrays."""

    def __init__(self, module: Any) -> None:
        self.module = module

    def __getattr__(self, name: str) -> Callable[..., Any]:
        fn = getattr(self.module, name)

        def wrapped(*args: Any, **kwargs: Any) -> Any:
            with torch.no_grad():
                out = fn(*(_to_torch(a) for a in args), **{k: _to_torch(v) for k, v in kwargs.items()})
            return _to_numpy(out)

        return wrapped


def backends(reference: Any, torch_module: str) -> list[Any]:
    out = [pytest.param(reference, id="reference")]
    try:
        torch_ops = importlib.import_module(torch_module)
    except ImportError:
        return out
    return out + [pytest.param(TorchAdapter(torch_ops), id="torch_ops")]
