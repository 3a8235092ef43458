"""Claims whose truth depends on the device: measured, judged and shown, never asserted.

A notebook asserts only what holds on every machine: exact equalities, agreement in float64, byte and FLOP
counts, and quality directions with margins that cannot flip. Whether one implementation is *faster* than
another is different: it depends on the CPU or GPU, on how busy it is, on the library build. A reader's slower
laptop, faster GPU or Apple machine may legitimately disagree with the machine the course was measured on, and
"Run all" must not stop there. So each such claim is measured on the reader's device and reported with
:func:`verdict`, one line per claim::

    ✓ on this device (CPU Intel Xeon (2 cores)): the KV cache makes a decoding step faster — 11.2x at position 255
    ✗ not on this device (GPU NVIDIA H100 (sm_90)): int8 is faster than float32 — 0.8x; the text says what ...

Every verdict is also appended to :data:`RESULTS` (claim, holds, measured, device), so that a claims ledger
can collect what a run of the notebooks found on the device it ran on.
"""
from __future__ import annotations

from typing import Any

from . import device as _device
from ._text import fit
from ._validate import check_bool, describe

__all__ = ["COURSE_DEVICE", "RESULTS", "verdict"]

#: The machine on which the course measured the claims its prose reports ("on the course's CPU, ...").
COURSE_DEVICE = "a 2-core x86-64 cloud CPU (PyTorch CPU build)"

#: Every verdict given in this process, in order: dicts with keys ``claim``, ``holds``, ``measured``, ``device``.
RESULTS: list[dict[str, Any]] = []


def verdict(claim: str, holds: bool, measured: str = "") -> bool:
    """Print whether ``claim`` held on this device, record it in :data:`RESULTS`, and return ``holds``.

    ``claim``: the statement, in words ("the KV cache makes a decoding step faster at long contexts");
    ``holds``: whether the measurement supports it here (a ``bool`` or NumPy bool, e.g. ``speedup > 2``);
    ``measured``: what was measured, in words and numbers ("11.2x at position 255"), printed after the claim.
    A verdict never raises on a claim that does not hold: the notebook goes on, and the line says which
    device disagreed with the course's measurement.
    """
    if not isinstance(claim, str):
        raise TypeError(f"claim must be a str stating the claim in words, got {describe(claim)}")
    if not claim.strip():
        raise ValueError("claim must be a non-empty str stating the claim in words, got an empty string")
    holds = check_bool("holds", holds)
    if not isinstance(measured, str):
        raise TypeError(f"measured must be a str saying what was measured (or ''), got {describe(measured)}")
    where = _device.short_summary()
    detail = f" — {measured}" if measured else ""
    if holds:
        line = f"✓ on this device ({where}): {claim}{detail}"
    else:
        line = f"✗ not on this device ({where}): {claim}{detail}; the text says what the course measured on {COURSE_DEVICE}"
    print(fit(line))
    RESULTS.append({"claim": claim, "holds": holds, "measured": measured, "device": where})
    return holds
