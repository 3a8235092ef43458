"""The NumPy face of the variants topic of chapter 5 (placeholder: its owner fills it)."""

from __future__ import annotations

__all__: list[str] = []
