"""Checkers of notebook magnitude (being written)."""
from __future__ import annotations

__all__: list[str] = []
