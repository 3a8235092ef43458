"""The claims ledger: every claim a notebook checks, its rule stated before measuring.

The course's promise is that the claims of its sources are reproduced at small scale and
measured. A claim has one life cycle, in two cells of a notebook::

    six_db = Claim(
        "02.1-six-db-per-bit",
        "each extra bit of a uniform quantizer adds about 6 dB of SQNR",
        source="6.02 dB per bit (signal-processing rule; Nagel et al. 2021)",
        measure="SQNR slope from 5 to 8 bits, per channel, on MiniLM's FFN weight",
        unit="dB/bit",
        holds=(5.0, 7.5),    # the verdict rule, printed now, before measuring
        weakly=(4.0, 8.5),
        caveat="one 1536 x 384 weight matrix of a 22 M-parameter encoder",
    )
    ...                                # the experiment
    six_db.measured(slope)             # -> "holds"; prints the verdict, records it
    six_db.control(slope_2_3, "per tensor, 2 to 3 bits")  # must NOT hold

**Verdicts.** ``holds`` and ``weakly`` are closed intervals ``(low, high)`` (``None``:
unbounded) of the measured value: inside ``holds`` the claim *holds*, else inside
``weakly`` it *holds weakly*, else it *does not hold here*. The rule is printed when the
claim is declared, so the reader sees it before the number.

**Device-independent claims** (counts, float64 agreement, quality at fixed seeds) carry
``expect=``, the verdict the course's prose was written for (default ``"holds"``).
:meth:`Claim.measured` raises :class:`ClaimError` when the verdict differs: the prose
would be wrong. **Device-dependent claims** (``device=True``: speed, anything timed)
never raise: the verdict is given for the device the notebook runs on, and the line says
which device that was and what the course measured on its own (:data:`COURSE_DEVICE`).

**Negative controls.** :meth:`Claim.control` measures a case where the claim must *not*
hold (per tensor below 4 bits for the 6 dB rule; a dense matrix for a sparsity
speed-up). A control inside ``weakly`` raises :class:`ClaimError` for a
device-independent claim; for a device-dependent one it is reported.

**The ledger.** Every verdict is displayed as one output with three forms:
``text/plain`` (one line), ``text/html`` (a small card with the anchor
``id="claim-<id>"`` and the record as JSON in ``data-effx-claim``) and :data:`MIME_TYPE`
(the record as JSON). The book's "Claims ledger" page (``book/_ext/effx_ledger.py``)
reads the cards of the executed notebooks with :func:`read_cards`, never typed by hand.
The records of this process are in :data:`RESULTS` as :class:`ClaimRecord`.
"""
from __future__ import annotations

import html
import json
import math
import numbers
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from html.parser import HTMLParser
from typing import Any

from . import device as _device
from ._text import fit
from ._validate import check_bool, describe

__all__ = [
    "CARD_ATTRIBUTE",
    "COURSE_DEVICE",
    "Claim",
    "ClaimError",
    "ClaimRecord",
    "MARKS",
    "MIME_TYPE",
    "RESULTS",
    "VERDICTS",
    "read_cards",
]

#: The machine on which the course measured the claims its prose reports.
COURSE_DEVICE = "a 2-core x86-64 cloud CPU (PyTorch CPU build)"

#: The three verdicts, strongest first.
VERDICTS = ("holds", "holds weakly", "does not hold here")

#: The mark shown with each verdict (in a notebook's line and card, and in the ledger).
MARKS = {"holds": "✓", "holds weakly": "≈", "does not hold here": "✗"}

#: The MIME type of a claim record in a notebook's outputs (with text/html, text/plain).
MIME_TYPE = "application/vnd.effx.claim+json"

#: The HTML attribute of a verdict's card that holds the record as JSON.
CARD_ATTRIBUTE = "data-effx-claim"

_ID = re.compile(r"^\d{2}\.\d-[a-z0-9]+(?:-[a-z0-9]+)*$")
_CONTROL_SUFFIX = re.compile(r"-control-\d+$")
_COLOUR = {
    "holds": "#1a7f37", "holds weakly": "#9a6700", "does not hold here": "#cf222e"
}


class ClaimError(AssertionError):
    """A device-independent claim came out differently from what the prose says."""


@dataclass(frozen=True)
class ClaimRecord:
    """One verdict: what the ledger shows for a claim (or one of its negative controls).

    Displayed in Jupyter, a record is the verdict's line (``text/plain``), its card
    (``text/html``) and itself as JSON (:data:`MIME_TYPE`).
    """

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
    control: str | None = None  # a negative control's label (None: the claim itself)

    @property
    def claim_id(self) -> str:
        """The id of the claim (for a control, of the claim it controls)."""
        if self.control is None:
            return self.id
        return _CONTROL_SUFFIX.sub("", self.id)

    @property
    def anchor(self) -> str:
        """The HTML id of the verdict's card: ``claim-02-1-six-db-per-bit``; a negative
        control's ends in ``-control-<n>``."""
        return "claim-" + self.id.replace(".", "-")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ClaimRecord:
        """The record ``data`` describes (as :meth:`as_dict` wrote it), validated field
        by field: raises TypeError/ValueError naming the field."""
        if not isinstance(data, Mapping):
            raise TypeError(f"data must be a mapping (a record), got {describe(data)}")
        names = [f.name for f in fields(cls)]
        missing = [n for n in names if n != "control" and n not in data]
        unknown = sorted(set(data) - set(names))
        if missing or unknown:
            raise ValueError(
                f"data must have the fields of a ClaimRecord: missing {missing}, "
                f"unknown {unknown}"
            )
        values = dict(data)
        values.setdefault("control", None)
        for name in names:
            value = values[name]
            if name == "value":
                if isinstance(value, bool) or not isinstance(value, numbers.Real):
                    raise TypeError(
                        f"value must be a real number, got {describe(value)}"
                    )
                if not math.isfinite(float(value)):
                    raise ValueError(f"value must be finite, got {value!r}")
                values[name] = float(value)
            elif name == "device_dependent":
                values[name] = check_bool("device_dependent", value)
            elif name in ("expected", "control"):
                if value is not None and not isinstance(value, str):
                    raise TypeError(
                        f"{name} must be a str or None, got {describe(value)}"
                    )
            elif not isinstance(value, str):
                raise TypeError(f"{name} must be a str, got {describe(value)}")
        if values["verdict"] not in VERDICTS:
            raise ValueError(
                f"verdict must be one of {VERDICTS}, got {values['verdict']!r}"
            )
        if values["expected"] is not None and values["expected"] not in VERDICTS:
            raise ValueError(
                f"expected must be None or one of {VERDICTS}, "
                f"got {values['expected']!r}"
            )
        is_control = values["control"] is not None
        base = _CONTROL_SUFFIX.sub("", values["id"]) if is_control else values["id"]
        suffix = _CONTROL_SUFFIX.search(values["id"]) is not None
        if not _ID.match(base) or suffix != is_control:
            shape = "'02.1-slug-control-1'" if is_control else "'02.1-slug'"
            raise ValueError(f"id must look like {shape}, got {values['id']!r}")
        return cls(**values)

    @property
    def text(self) -> str:
        """The verdict in one line (wrapped to the notebook's column)."""
        where = f" on this device ({self.device})" if self.device_dependent else ""
        if self.control is not None:  # a control passes when the claim does NOT hold for it
            ok = self.verdict == VERDICTS[2]
            verdict = (
                "does not hold, as a control must" if ok
                else f"{self.verdict}, which a control must not"
            )
            line = (
                f"{'✓' if ok else '✗'} negative control of {self.claim_id} "
                f"({self.control}): {verdict}{where}: measured {self.value_text}"
            )
            return fit(line)
        line = f"{MARKS[self.verdict]} claim {self.id} {self.verdict}{where}: "
        line += f"measured {self.value_text}"
        differs = self.verdict != VERDICTS[0] and self.control is None
        if self.device_dependent and differs:
            line += f"; the text reports what the course measured on {COURSE_DEVICE}"
        return fit(line)

    @property
    def html(self) -> str:
        """The verdict's card: anchor ``id`` = :attr:`anchor`, the record in
        :data:`CARD_ATTRIBUTE` (escaped JSON)."""
        data = html.escape(json.dumps(self.as_dict(), ensure_ascii=False), quote=True)
        if self.control is not None:
            ok = self.verdict == VERDICTS[2]
            head = f"{'✓' if ok else '✗'} negative control: {self.control}"
            detail = (
                "the claim does not hold here, as a control must" if ok
                else f"the claim {self.verdict} here, which a control must not"
            ) + f"; measured {self.value_text}"
            colour = "#57606a" if ok else _COLOUR[VERDICTS[2]]
        else:
            head = f"{MARKS[self.verdict]} {self.verdict}"
            detail = " ".join(self.text.split()).split(": ", 1)[1]
            colour = _COLOUR[self.verdict]
        style = (
            f"border-left:4px solid {colour};padding:2px 8px;"
            "margin:4px 0;font-size:0.9em"
        )
        return (
            f'<div class="effx-claim" id="{self.anchor}" {CARD_ATTRIBUTE}="{data}" '
            f'style="{style}"><b>{html.escape(head)}</b>: {html.escape(detail)}<br>'
            f'<span style="opacity:0.75">{html.escape(self.rule)}. '
            f"Scale: {html.escape(self.caveat)}</span></div>"
        )

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict:
        return {
            "text/plain": self.text, "text/html": self.html, MIME_TYPE: self.as_dict()
        }


#: Every verdict given in this process, in order.
RESULTS: list[ClaimRecord] = []


class _CardParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.cards: list[tuple[str | None, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if CARD_ATTRIBUTE in found:
            self.cards.append((found.get("id"), found[CARD_ATTRIBUTE] or ""))


def read_cards(text: str) -> list[tuple[str | None, ClaimRecord]]:
    """The verdict cards in an HTML fragment, in order: ``(the card's id attribute,
    its record)``. Raises ValueError when a card holds no valid record."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str (HTML), got {describe(text)}")
    if CARD_ATTRIBUTE not in text:
        return []
    parser = _CardParser()
    parser.feed(text)
    parser.close()
    out = []
    for element_id, raw in parser.cards:
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as error:
            raise ValueError(
                f"text holds a claim card (id {element_id!r}) whose {CARD_ATTRIBUTE} "
                f"is not JSON: {error}"
            ) from None
        try:
            record = ClaimRecord.from_dict(data)
        except (TypeError, ValueError) as error:
            raise ValueError(
                f"text holds a claim card (id {element_id!r}) that is not a claim "
                f"record: {error}"
            ) from None
        out.append((element_id, record))
    return out


def _interval(name: str, value: Any) -> tuple[float | None, float | None] | None:
    if value is None:
        return None
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise TypeError(
            f"{name} must be an interval (low, high) with None for an open end, "
            f"got {describe(value)}"
        )
    out = []
    for side, v in zip(("low", "high"), value):
        if v is None:
            out.append(None)
        elif (
            isinstance(v, numbers.Real)
            and not isinstance(v, bool)
            and math.isfinite(float(v))
        ):
            out.append(float(v))
        else:
            raise TypeError(
                f"{name} {side} must be a finite number or None, got {describe(v)}"
            )
    low, high = out
    if low is None and high is None:
        raise ValueError(
            f"{name} must bound the value on at least one side, got (None, None)"
        )
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
    """A claim of the sources, its verdict rule, and (once measured) its verdict.

    ``id``: ``"<notebook>-<slug>"``, e.g. ``"02.1-six-db-per-bit"`` (unique in the
    course); ``statement``: the claim in words; ``source``: what the source says, with
    its number; ``measure``: what this notebook measures to test it; ``unit``: the unit
    of the measured value; ``holds`` / ``weakly``: the verdict intervals (``weakly``
    must contain ``holds``; None: no weak verdict); ``caveat``: what the small scale of
    the experiment can and cannot show; ``device``: whether the value depends on the
    device (timings); ``expect``: for a device-independent claim, the verdict the prose
    was written for; ``show``: print the claim and its rule now. See the module's
    documentation.
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
        if not isinstance(id, str):
            raise TypeError(
                f"id must be a str such as '02.1-six-db-per-bit', got {describe(id)}"
            )
        if not _ID.match(id) or _CONTROL_SUFFIX.search(id):
            raise ValueError(
                "id must look like '02.1-six-db-per-bit' (notebook number, dash, "
                "lowercase words joined by dashes, not ending in -control-<n>), "
                f"got {id!r}"
            )
        self.id = id
        self.statement = _text("statement", statement)
        self.source = _text("source", source)
        self.measure = _text("measure", measure)
        self.unit = _text("unit", unit, empty=True)
        self.caveat = _text("caveat", caveat)
        if holds is None:
            raise TypeError("holds must be an interval (low, high), got None")
        self.holds = _interval("holds", holds)
        self.weakly = _interval("weakly", weakly)
        if self.weakly is not None:
            (lo, hi), (wlo, whi) = self.holds, self.weakly  # type: ignore[misc]
            wider_low = wlo is None or (lo is not None and wlo <= lo)
            wider_high = whi is None or (hi is not None and whi >= hi)
            if not (wider_low and wider_high):
                raise ValueError(
                    f"weakly {self.weakly} must contain holds {self.holds}"
                )
        self.device_dependent = check_bool("device", device)
        if expect not in VERDICTS:
            raise ValueError(f"expect must be one of {VERDICTS}, got {expect!r}")
        self.expect = expect
        self.verdict: str | None = None
        self.value: float | None = None
        # label -> n: a control cell run again keeps its anchor
        self._controls: dict[str, int] = {}
        if check_bool("show", show):
            print(fit(
                f"Claim {self.id}: {self.statement}\n  source:   {self.source}\n"
                f"  measured: {self.measure}\n  verdict:  {self.rule}"
            ))

    @property
    def rule(self) -> str:
        """The verdict rule in words, e.g.
        ``"holds if 5 ≤ value ≤ 7.5 dB/bit; holds weakly if ...; otherwise ..."``."""
        holds = _interval_text(self.holds, self.unit)  # type: ignore[arg-type]
        text = f"holds if {holds}"
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
        if hasattr(value, "item") and getattr(value, "ndim", None) == 0:
            value = value.item()  # a 0-d array or tensor, a NumPy scalar
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(
                f"value must be a real number (the measured {self.measure}), "
                f"got {describe(value)}"
            )
        x = float(value)
        if not math.isfinite(x):
            raise ValueError(
                f"value must be finite, got {x} (claim {self.id}: the measurement "
                "failed)"
            )
        return x

    def measured(self, value: float, detail: str = "") -> str:
        """Give the verdict for the measured ``value``, print it, record it, return it.

        ``detail``: how the value was obtained, in a few words ("at n = 4096, median of
        5 runs"), shown after the number. Raises :class:`ClaimError` when a
        device-independent claim's verdict is not ``expect``.
        """
        x = self._value(value)
        detail = _text("detail", detail, empty=True)
        verdict = self.judge(x)
        self.value, self.verdict = x, verdict
        record = self._record(x, verdict, detail, control=None, number=0)
        _show(record)
        if not self.device_dependent and verdict != self.expect:
            raise ClaimError(
                f"claim {self.id}: measured {_with_unit(x, self.unit)} gives "
                f"'{verdict}', but the course's text says '{self.expect}' "
                f"({self.rule}). Either the experiment changed or the text must."
            )
        return verdict

    def control(self, value: float, label: str) -> str:
        """A negative control: a case where the claim must not hold.

        ``label`` names the case ("per tensor, 2 to 3 bits"). For a device-independent
        claim a control that holds (even weakly) raises :class:`ClaimError`: the
        measurement cannot tell the claim from its absence. Returns the control's
        verdict.
        """
        x = self._value(value)
        label = _text("label", label)
        verdict = self.judge(x)
        number = self._controls.setdefault(label, len(self._controls) + 1)
        record = self._record(x, verdict, "", control=label, number=number)
        _show(record)
        if not self.device_dependent and verdict != VERDICTS[2]:
            raise ClaimError(
                f"claim {self.id}: the negative control '{label}' measured "
                f"{_with_unit(x, self.unit)}, which '{verdict}' by the rule "
                f"({self.rule}); a control must not."
            )
        return verdict

    def _record(
        self, x: float, verdict: str, detail: str, control: str | None, number: int
    ) -> ClaimRecord:
        value_text = _with_unit(x, self.unit) + (f" ({detail})" if detail else "")
        if control is None:
            expected = None if self.device_dependent else self.expect
        else:
            expected = None if self.device_dependent else VERDICTS[2]
        record = ClaimRecord(
            id=self.id if control is None else f"{self.id}-control-{number}",
            statement=self.statement,
            source=self.source,
            measure=self.measure if control is None else f"negative control: {control}",
            value=x,
            value_text=value_text,
            unit=self.unit,
            rule=self.rule,
            verdict=verdict,
            expected=expected,
            device=_device.short_summary(),
            device_dependent=self.device_dependent,
            caveat=self.caveat,
            control=control,
        )
        RESULTS.append(record)
        return record

    def __repr__(self) -> str:
        if self.verdict is None:
            return f"Claim({self.id!r}: not measured yet)"
        value = _num(self.value)  # type: ignore[arg-type]
        return f"Claim({self.id!r}: {self.verdict} at {value})"


def _show(record: ClaimRecord) -> None:
    """Display ``record`` (its card) in a notebook; print its line elsewhere."""
    try:
        from IPython import get_ipython

        shell = get_ipython()
    except ImportError:  # pragma: no cover - IPython ships with every notebook kernel
        shell = None
    rich = (
        shell is not None
        and getattr(shell, "display_pub", None) is not None
        and "Terminal" not in type(shell).__name__
    )
    if rich:
        from IPython.display import display

        display(record)
    else:
        print(record.text)

