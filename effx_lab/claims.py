"""The claims ledger: every claim a notebook checks, with its rule stated before it is measured.

The course's promise is that the claims of its sources are reproduced at small scale and measured. A claim
has one life cycle, in two cells of a notebook::

    six_db = Claim(
        "02.1-six-db-per-bit",
        "each extra bit of a uniform quantizer adds about 6 dB of SQNR",
        source="6.02 dB per bit (signal-processing rule; Nagel et al. 2021)",
        measure="SQNR slope from 5 to 8 bits, per channel, on MiniLM's FFN weight",
        unit="dB/bit",
        holds=(5.0, 7.5),        # the verdict rule, printed now, before anything is measured
        weakly=(4.0, 8.5),
        caveat="one 1536 x 384 weight matrix of a 22 M-parameter encoder",
    )
    ...                          # the experiment
    six_db.measured(slope)                        # -> "holds"; prints the verdict, records it
    six_db.control(slope_2_to_3, "per tensor, 2 to 3 bits")   # a case where it must NOT hold

**Verdicts.** ``holds`` and ``weakly`` are closed intervals ``(low, high)`` (``None``: unbounded) of the
measured value: inside ``holds`` the claim *holds*, else inside ``weakly`` it *holds weakly*, else it
*does not hold here*. The rule is printed when the claim is declared, so the reader sees it before the
number.

**Device-independent claims** (counts, float64 agreement, quality at fixed seeds) carry ``expect=``, the
verdict the course's prose was written for (default ``"holds"``). :meth:`Claim.measured` raises
:class:`ClaimError` when the verdict differs: the prose would be wrong. **Device-dependent claims** (``device=True``:
speed, anything timed) never raise: the verdict is given for the device the notebook runs on, and the line
says which device that was and what the course measured on its own (:data:`COURSE_DEVICE`).

**Negative controls.** :meth:`Claim.control` measures a case where the claim must *not* hold (per tensor
below 4 bits for the 6 dB rule; a dense matrix for a sparsity speed-up). A control inside ``weakly``
raises :class:`ClaimError` for a device-independent claim; for a device-dependent one it is reported.

**The ledger.** Every verdict is printed as one line, shown in Jupyter as a small card whose HTML carries the
record (``data-effx-claim``, JSON) and an anchor ``id="claim-<id>"``; the book's "Claims ledger" page
collects the records from the executed notebooks (``book/_ext/effx_book.py``), never typed by hand. The
records of this process are in :data:`RESULTS` as :class:`ClaimRecord`.
"""
from __future__ import annotations

import html
import json
import math
import numbers
import re
from dataclasses import asdict, dataclass
from typing import Any

from . import device as _device
from ._text import fit
from ._validate import check_bool, describe

__all__ = [
    "COURSE_DEVICE",
    "Claim",
    "ClaimError",
    "ClaimRecord",
    "MIME_TYPE",
    "RESULTS",
    "VERDICTS",
]

#: The machine on which the course measured the claims its prose reports ("on the course's CPU, ...").
COURSE_DEVICE = "a 2-core x86-64 cloud CPU (PyTorch CPU build)"

#: The three verdicts, strongest first.
VERDICTS = ("holds", "holds weakly", "does not hold here")

#: The MIME type of a claim record in a notebook's outputs (next to text/html and text/plain).
MIME_TYPE = "application/vnd.effx.claim+json"

_ID = re.compile(r"^\d{2}\.\d-[a-z0-9]+(?:-[a-z0-9]+)*$")


class ClaimError(AssertionError):
    """A device-independent claim came out differently from what the course's prose says."""


@dataclass(frozen=True)
class ClaimRecord:
    """One verdict: what the ledger shows for a claim (or for one of its negative controls)."""

    id: str
    statement: str
    source: str
    measure: str
    value: float
    value_text: str
    unit: str
    rule: str
    verdict: str
    expected: str | None
    device: str
    device_dependent: bool
    caveat: str
    control: str | None = None  # the label of a negative control (None: the claim itself)

    @property
    def anchor(self) -> str:
        """The HTML id of the verdict's card (``claim-02-1-six-db-per-bit``; controls add ``-control-N``)."""
        return "claim-" + self.id.replace(".", "-")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


#: Every verdict given in this process, in order.
RESULTS: list[ClaimRecord] = []


def _interval(name: str, value: Any) -> tuple[float | None, float | None] | None:
    if value is None:
        return None
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise TypeError(f"{name} must be an interval (low, high) with None for an open end, got {describe(value)}")
    out = []
    for side, v in zip(("low", "high"), value):
        if v is None:
            out.append(None)
        elif isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(float(v)):
            out.append(float(v))
        else:
            raise TypeError(f"{name} {side} must be a finite number or None, got {describe(v)}")
    low, high = out
    if low is None and high is None:
        raise ValueError(f"{name} must bound the value on at least one side, got (None, None)")
    if low is not None and high is not None and low > high:
        raise ValueError(f"{name} must have low <= high, got ({low}, {high})")
    return low, high


def _inside(x: float, interval: tuple[float | None, float | None] | None) -> bool:
    if interval is None:
        return False
    low, high = interval
    return (low is None or x >= low) and (high is None or x <= high)


def _num(x: float) -> str:
    return f"{x:.4g}"


def _with_unit(x: float, unit: str) -> str:
    return f"{_num(x)}{unit}" if unit == "x" else f"{_num(x)} {unit}".strip()


def _interval_text(interval: tuple[float | None, float | None], unit: str) -> str:
    low, high = interval
    if low is None:
        return f"value ≤ {_with_unit(high, unit)}"  # type: ignore[arg-type]
    if high is None:
        return f"value ≥ {_with_unit(low, unit)}"
    return f"{_num(low)} ≤ value ≤ {_with_unit(high, unit)}"


def _text(name: str, value: Any, *, empty: bool = False) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, got {describe(value)}")
    if not empty and not value.strip():
        raise ValueError(f"{name} must be a non-empty str, got {value!r}")
    return value.strip()


class Claim:
    """A claim of the sources, its verdict rule, and (once measured) its verdict. See the module doc.

    ``id``: ``"<notebook>-<slug>"``, e.g. ``"02.1-six-db-per-bit"`` (unique in the course);
    ``statement``: the claim in words; ``source``: what the source says, with its number;
    ``measure``: what this notebook measures to test it; ``unit``: the unit of the measured value;
    ``holds`` / ``weakly``: the verdict intervals (``weakly`` must contain ``holds``; None: no weak verdict);
    ``caveat``: what the small scale of the experiment can and cannot show; ``device``: whether the value
    depends on the device (timings); ``expect``: for a device-independent claim, the verdict the prose
    was written for.
    """

    def __init__(
        self,
        id: str,  # noqa: A002 - the claim's id is what the ledger calls it
        statement: str,
        *,
        source: str,
        measure: str,
        holds: tuple[float | None, float | None],
        weakly: tuple[float | None, float | None] | None = None,
        unit: str = "",
        caveat: str,
        device: bool = False,
        expect: str = "holds",
        show: bool = True,
    ) -> None:
        if not isinstance(id, str) or not _ID.match(id):
            raise ValueError(
                f"id must look like '02.1-six-db-per-bit' (notebook number, dash, lowercase words joined by "
                f"dashes), got {id!r}"
            )
        self.id = id
        self.statement = _text("statement", statement)
        self.source = _text("source", source)
        self.measure = _text("measure", measure)
        self.unit = _text("unit", unit, empty=True)
        self.caveat = _text("caveat", caveat)
        self.holds = _interval("holds", holds)
        if self.holds is None:
            raise TypeError("holds must be an interval (low, high), got None")
        self.weakly = _interval("weakly", weakly)
        if self.weakly is not None:
            (lo, hi), (wlo, whi) = self.holds, self.weakly
            wider_low = wlo is None or (lo is not None and wlo <= lo)
            wider_high = whi is None or (hi is not None and whi >= hi)
            if not (wider_low and wider_high):
                raise ValueError(f"weakly {self.weakly} must contain holds {self.holds}")
        self.device_dependent = check_bool("device", device)
        if expect not in VERDICTS:
            raise ValueError(f"expect must be one of {VERDICTS}, got {expect!r}")
        self.expect = expect
        self.verdict: str | None = None
        self.value: float | None = None
        self._n_controls = 0
        if check_bool("show", show):
            print(fit(f"Claim {self.id}: {self.statement}\n  source:   {self.source}\n"
                      f"  measured: {self.measure}\n  verdict:  {self.rule}"))

    @property
    def rule(self) -> str:
        """The verdict rule in words, e.g. ``"holds if 5 ≤ x ≤ 7.5 dB/bit; weakly if 4 ≤ x ≤ 8.5 dB/bit"``."""
        text = f"holds if {_interval_text(self.holds, self.unit)}"  # type: ignore[arg-type]
        if self.weakly is not None:
            text += f"; holds weakly if {_interval_text(self.weakly, self.unit)}"
        return text + "; otherwise does not hold here"

    def judge(self, value: float) -> str:
        """The verdict for ``value`` (no printing, no record)."""
        x = self._value(value)
        if _inside(x, self.holds):
            return VERDICTS[0]
        if _inside(x, self.weakly):
            return VERDICTS[1]
        return VERDICTS[2]

    def _value(self, value: Any) -> float:
        if hasattr(value, "item") and getattr(value, "ndim", getattr(value, "dim", lambda: 0)) in (0, ()):
            value = value.item()
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(f"value must be a real number (the measured {self.measure}), got {describe(value)}")
        x = float(value)
        if math.isnan(x):
            raise ValueError(f"value must not be NaN (claim {self.id}: the measurement failed)")
        return x

    def measured(self, value: float, detail: str = "") -> str:
        """Give the verdict for the measured ``value``, print it, record it, and return it.

        ``detail``: how the value was obtained, in a few words ("at n = 4096, median of 5 runs"), printed
        after the number. Raises :class:`ClaimError` when a device-independent claim's verdict is not
        ``expect``.
        """
        x = self._value(value)
        detail = _text("detail", detail, empty=True)
        verdict = self.judge(x)
        self.value, self.verdict = x, verdict
        record = self._record(x, verdict, detail, control=None)
        _show(record, detail)
        if not self.device_dependent and verdict != self.expect:
            raise ClaimError(
                f"claim {self.id}: measured {_num(x)} {self.unit} gives '{verdict}', but the course's text "
                f"says '{self.expect}' ({self.rule}). Either the experiment changed or the text must."
            )
        return verdict

    def control(self, value: float, label: str) -> str:
        """A negative control: a case where the claim must not hold (verdict "does not hold here").

        ``label`` names the case ("per tensor, 2 to 3 bits"). For a device-independent claim a control that
        holds (even weakly) raises :class:`ClaimError`: the measurement cannot tell the claim from its
        absence. Returns the control's verdict.
        """
        x = self._value(value)
        label = _text("label", label)
        verdict = self.judge(x)
        self._n_controls += 1
        record = self._record(x, verdict, "", control=label)
        _show(record, "")
        if not self.device_dependent and verdict != VERDICTS[2]:
            raise ClaimError(
                f"claim {self.id}: the negative control '{label}' measured {_num(x)} {self.unit}, which "
                f"'{verdict}' by the rule ({self.rule}); a control must not."
            )
        return verdict

    def _record(self, x: float, verdict: str, detail: str, control: str | None) -> ClaimRecord:
        value_text = _with_unit(x, self.unit) + (f" ({detail})" if detail else "")
        record = ClaimRecord(
            id=self.id if control is None else f"{self.id}-control-{self._n_controls}",
            statement=self.statement,
            source=self.source,
            measure=self.measure if control is None else f"negative control: {control}",
            value=x,
            value_text=value_text,
            unit=self.unit,
            rule=self.rule,
            verdict=verdict,
            expected=None if self.device_dependent else (self.expect if control is None else VERDICTS[2]),
            device=_device.short_summary(),
            device_dependent=self.device_dependent,
            caveat=self.caveat,
            control=control,
        )
        RESULTS.append(record)
        return record

    def __repr__(self) -> str:
        state = f"{self.verdict} at {_num(self.value)}" if self.verdict else "not measured yet"
        return f"Claim({self.id!r}: {state})"


_MARK = {"holds": "✓", "holds weakly": "≈", "does not hold here": "✗"}


def _line(record: ClaimRecord, detail: str) -> str:
    mark = _MARK[record.verdict]
    what = "negative control" if record.control is not None else "claim"
    name = record.id if record.control is None else f"{record.id.rsplit('-control-', 1)[0]} ({record.control})"
    where = f" on this device ({record.device})" if record.device_dependent else ""
    text = f"{mark} {what} {name} {record.verdict}{where}: measured {record.value_text}"
    if record.device_dependent and record.verdict != VERDICTS[0] and record.control is None:
        text += f"; the text reports what the course measured on {COURSE_DEVICE}"
    return text


class _ClaimOutput:
    """What a notebook shows for a verdict: a line of text, a small HTML card carrying the record."""

    def __init__(self, record: ClaimRecord, detail: str) -> None:
        self.record = record
        self.text = fit(_line(record, detail))

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        r = self.record
        data = html.escape(json.dumps(r.as_dict(), ensure_ascii=False), quote=True)
        colour = {"holds": "#1a7f37", "holds weakly": "#9a6700", "does not hold here": "#cf222e"}[r.verdict]
        card = (
            f'<div class="effx-claim" id="{r.anchor}" data-effx-claim="{data}" '
            f'style="border-left:4px solid {colour};padding:2px 8px;margin:4px 0;font-size:0.9em">'
            f"<b>{html.escape(_MARK[r.verdict])} {html.escape(r.verdict)}</b>"
            f"{' (negative control)' if r.control else ''}: {html.escape(_line(r, '').split(': ', 1)[1])}"
            f"<br><span style=\"opacity:0.75\">{html.escape(r.rule)}. Scale: {html.escape(r.caveat)}</span></div>"
        )
        return {"text/plain": self.text, "text/html": card, MIME_TYPE: r.as_dict()}


def _show(record: ClaimRecord, detail: str) -> None:
    out = _ClaimOutput(record, detail)
    try:
        from IPython import get_ipython

        shell = get_ipython()
    except ImportError:  # pragma: no cover - IPython ships with every notebook kernel
        shell = None
    if shell is not None and getattr(shell, "display_pub", None) is not None and "Terminal" not in type(shell).__name__:
        from IPython.display import display

        display(out)
    else:
        print(out.text)


def verdict(claim: str, holds: bool, measured: str = "") -> bool:  # TEMPORARY: removed once notebooks use Claim
    """Deprecated: use :class:`Claim` with ``device=True``."""
    where = _device.short_summary()
    print(fit(f"{'✓' if holds else '✗'} on this device ({where}): {claim} — {measured}"))
    return bool(holds)
