"""The course's notebooks, as every test that walks them finds them (one definition)."""
from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: every committed notebook of the course, sorted (Jupyter's checkpoints left out)
NOTEBOOKS = sorted(
    p
    for p in (ROOT / "notebooks").rglob("*.ipynb")
    if ".ipynb_checkpoints" not in p.parts
)
