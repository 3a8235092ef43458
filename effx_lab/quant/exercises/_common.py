"""Helpers shared by the chapter 2 checker modules."""
from __future__ import annotations

from collections.abc import Callable


def _named(name: str) -> Callable[[Callable], Callable]:
    """Give a reference wrapper the exercise's name (it appears in "it should accept ..." messages)."""

    def rename(fn: Callable) -> Callable:
        fn.__name__ = fn.__qualname__ = name
        return fn

    return rename
