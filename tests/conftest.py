"""Tests are grouped by chapter (ch01_costs/, ch02_quant/, ch07_flash/), by the shared workbench
(shared/), the core (core/) and the notebooks and book (book/). Their helpers (_backends.py,
_checks.py, nbval_cache.py) stay here, importable from every folder."""
from __future__ import annotations

import sys
from pathlib import Path

HERE = str(Path(__file__).resolve().parent)
if HERE not in sys.path:
    sys.path.insert(0, HERE)
