"""Print the notebooks `make test-portable` runs from the installed wheel without Triton.

Every notebook that uses a Triton kernel module (the cells that must skip cleanly without Triton), and for a
chapter that has none, its first notebook (so every chapter runs from the wheel at least once). Run from the
repository root: ``python tests/portable_notebooks.py``.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

KERNEL_USE = re.compile(r"kernels as K|from effx_lab\.\w+ import kernels|import triton")


def portable_notebooks(root: Path) -> list[Path]:
    chosen: list[Path] = []
    for chapter in sorted(p for p in (root / "notebooks").iterdir() if p.is_dir() and p.name.startswith("ch")):
        notebooks = sorted(chapter.glob("*.ipynb"))
        with_kernels = [nb for nb in notebooks if KERNEL_USE.search(nb.read_text(encoding="utf-8"))]
        chosen += with_kernels or notebooks[:1]
    return chosen


if __name__ == "__main__":
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path.cwd()
    print(" ".join(str(p.relative_to(root)) for p in portable_notebooks(root)))
