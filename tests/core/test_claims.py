"""effx_lab.claims: a claim's rule stated first, its verdict, controls and records."""
from __future__ import annotations

import json
import math
from html.parser import HTMLParser

import numpy as np
import pytest
import torch

from effx_lab import claims, device
from effx_lab.claims import Claim, ClaimError, ClaimRecord

SIX_DB = dict(
    source="6.02 dB per bit (Nagel et al. 2021)",
    measure="SQNR slope, 5 to 8 bits, per channel",
    unit="dB/bit",
    holds=(5.0, 7.5),
    weakly=(4.0, 8.5),
    caveat="one 1536 x 384 matrix of a 22 M-parameter encoder",
)


@pytest.fixture(autouse=True)
def empty_ledger(monkeypatch):
    monkeypatch.setattr(claims, "RESULTS", [])
    monkeypatch.setattr(device, "short_summary", lambda: "CPU Test (2 cores)")


def six_db(**changes) -> Claim:
    kwargs = {**SIX_DB, "show": False, **changes}
    return Claim("02.1-six-db-per-bit", "each extra bit adds about 6 dB", **kwargs)


def lines_fit(text: str) -> bool:
    return all(len(line) <= 88 for line in text.splitlines())


# --------------------------------------------------------------------------------------
# Declaration: the rule is printed before anything is measured


def test_declaring_a_claim_prints_its_rule_and_records_nothing(capsys):
    Claim("02.1-six-db-per-bit", "each extra bit adds about 6 dB of SQNR", **SIX_DB)
    out = capsys.readouterr().out
    assert lines_fit(out)
    flat = " ".join(out.split())
    assert flat.startswith(
        "Claim 02.1-six-db-per-bit: each extra bit adds about 6 dB of SQNR"
    )
    assert "source: 6.02 dB per bit (Nagel et al. 2021)" in flat
    assert "measured: SQNR slope, 5 to 8 bits, per channel" in flat
    assert (
        "verdict: holds if 5 ≤ value ≤ 7.5 dB/bit; holds weakly if 4 ≤ value ≤ "
        "8.5 dB/bit; otherwise does not hold here" in flat
    )
    assert claims.RESULTS == []


def test_show_false_prints_nothing(capsys):
    six_db()
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize(
    ("holds", "weakly", "unit", "rule"),
    [
        ((2, None), None, "x", "holds if value ≥ 2x; otherwise does not hold here"),
        ((None, 0.01), (None, 0.05), "", "holds if value ≤ 0.01; holds weakly if "
         "value ≤ 0.05; otherwise does not hold here"),
        ((1, 1), None, "bytes", "holds if 1 ≤ value ≤ 1 bytes; otherwise does not "
         "hold here"),
    ],
)
def test_the_rule_reads_as_written(holds, weakly, unit, rule):
    assert six_db(holds=holds, weakly=weakly, unit=unit).rule == rule


# --------------------------------------------------------------------------------------
# Verdict thresholds


@pytest.mark.parametrize(
    ("value", "verdict"),
    [
        (6.02, "holds"),
        (5.0, "holds"),  # closed at both ends
        (7.5, "holds"),
        (4.999, "holds weakly"),
        (4.0, "holds weakly"),
        (8.5, "holds weakly"),
        (7.5001, "holds weakly"),
        (3.999, "does not hold here"),
        (8.501, "does not hold here"),
        (-1e9, "does not hold here"),
    ],
)
def test_verdict_thresholds(value, verdict):
    assert six_db().judge(value) == verdict


def test_without_weakly_there_is_no_weak_verdict():
    claim = six_db(weakly=None)
    assert claim.judge(5.0) == "holds"
    assert claim.judge(4.99) == "does not hold here"


def test_open_intervals():
    claim = six_db(holds=(2.0, None), weakly=(1.5, None), unit="x")
    assert claim.judge(1e12) == "holds"
    assert claim.judge(1.7) == "holds weakly"
    assert claim.judge(1.49) == "does not hold here"


def test_judge_neither_prints_nor_records(capsys):
    six_db().judge(6.0)
    assert capsys.readouterr().out == "" and claims.RESULTS == []


@pytest.mark.parametrize(
    "value",
    [6, np.float32(6), np.float64(6), np.array(6.0), torch.tensor(6.0), np.int64(6)],
    ids=["int", "np.float32", "np.float64", "0-d array", "0-d tensor", "np.int64"],
)
def test_numbers_arrays_and_tensors_with_one_value_are_accepted(value):
    assert six_db().measured(value) == "holds"
    assert type(claims.RESULTS[-1].value) is float and claims.RESULTS[-1].value == 6.0


# --------------------------------------------------------------------------------------
# weakly must contain holds


@pytest.mark.parametrize(
    ("holds", "weakly"),
    [
        ((5.0, 7.5), (5.5, 8.5)),  # weakly starts inside holds
        ((5.0, 7.5), (4.0, 7.0)),  # weakly ends inside holds
        ((5.0, None), (4.0, 100.0)),  # holds open above, weakly bounded
        ((None, 1.0), (0.0, 2.0)),  # holds open below, weakly bounded
        ((5.0, 7.5), (8.0, 9.0)),  # disjoint
    ],
)
def test_weakly_must_contain_holds(holds, weakly):
    with pytest.raises(ValueError, match="weakly .* must contain holds"):
        six_db(holds=holds, weakly=weakly)


@pytest.mark.parametrize(
    ("holds", "weakly"),
    [((5.0, 7.5), (5.0, 7.5)), ((5.0, 7.5), (None, 9.0)), ((5.0, None), (1.0, None))],
)
def test_weakly_may_equal_holds_or_open_further(holds, weakly):
    six_db(holds=holds, weakly=weakly)


# --------------------------------------------------------------------------------------
# Every argument is validated by name; a bad call prints and records nothing

GOOD = dict(SIX_DB)


def make(**changes):
    args = {"id": "02.1-six-db-per-bit", "statement": "6 dB per bit", **GOOD, **changes}
    return Claim(args.pop("id"), args.pop("statement"), **args)


@pytest.mark.parametrize(
    ("changes", "exc", "name"),
    [
        ({"id": 21}, TypeError, "id"),
        ({"id": None}, TypeError, "id"),
        ({"id": "six-db"}, ValueError, "id"),
        ({"id": "2.1-six-db"}, ValueError, "id"),
        ({"id": "02.1-Six-DB"}, ValueError, "id"),
        ({"id": "02.1-six db"}, ValueError, "id"),
        ({"id": "02.1-six-db-"}, ValueError, "id"),
        ({"id": "02.1-six-db-control-1"}, ValueError, "id"),
        ({"statement": 3}, TypeError, "statement"),
        ({"statement": "  "}, ValueError, "statement"),
        ({"source": None}, TypeError, "source"),
        ({"source": ""}, ValueError, "source"),
        ({"measure": b"slope"}, TypeError, "measure"),
        ({"measure": "\n"}, ValueError, "measure"),
        ({"caveat": 1.0}, TypeError, "caveat"),
        ({"caveat": ""}, ValueError, "caveat"),
        ({"unit": None}, TypeError, "unit"),
        ({"holds": None}, TypeError, "holds"),
        ({"holds": 5.0}, TypeError, "holds"),
        ({"holds": (5.0, 6.0, 7.0)}, TypeError, "holds"),
        ({"holds": "5,7"}, TypeError, "holds"),
        ({"holds": (None, None)}, ValueError, "holds"),
        ({"holds": (7.5, 5.0), "weakly": None}, ValueError, "holds"),
        ({"holds": (math.nan, 7.5)}, TypeError, "holds low"),
        ({"holds": (5.0, math.inf)}, TypeError, "holds high"),
        ({"holds": (True, 7.5)}, TypeError, "holds low"),
        ({"holds": ("5", 7.5)}, TypeError, "holds low"),
        ({"weakly": 4.0}, TypeError, "weakly"),
        ({"weakly": (None, None)}, ValueError, "weakly"),
        ({"weakly": (8.5, 4.0)}, ValueError, "weakly"),
        ({"weakly": (4.0, math.nan)}, TypeError, "weakly high"),
        ({"device": 1}, TypeError, "device"),
        ({"device": "yes"}, TypeError, "device"),
        ({"expect": "hold"}, ValueError, "expect"),
        ({"expect": None}, ValueError, "expect"),
        ({"show": 0}, TypeError, "show"),
    ],
)
def test_constructor_arguments_are_validated_by_name(changes, exc, name, capsys):
    with pytest.raises(exc, match=rf"^{name} must"):
        make(**changes)
    assert capsys.readouterr().out == "" and claims.RESULTS == []


@pytest.mark.parametrize(
    ("value", "exc"),
    [
        (True, TypeError),
        ("6.0", TypeError),
        (None, TypeError),
        (np.array([6.0, 6.1]), TypeError),
        (torch.tensor([6.0]), TypeError),
        (complex(6, 0), TypeError),
        (math.nan, ValueError),
        (math.inf, ValueError),
        (np.float64(-np.inf), ValueError),
    ],
)
def test_measured_and_control_values_are_validated_by_name(value, exc, capsys):
    claim = six_db()
    with pytest.raises(exc, match="^value must"):
        claim.measured(value)
    with pytest.raises(exc, match="^value must"):
        claim.control(value, "per tensor")
    with pytest.raises(exc, match="^value must"):
        claim.judge(value)
    assert capsys.readouterr().out == "" and claims.RESULTS == []
    assert claim.verdict is None and claim.value is None


def test_detail_and_label_are_validated_by_name(capsys):
    claim = six_db()
    with pytest.raises(TypeError, match="^detail must be a str"):
        claim.measured(6.0, detail=4096)
    with pytest.raises(TypeError, match="^label must be a str"):
        claim.control(1.0, None)
    with pytest.raises(ValueError, match="^label must be a non-empty str"):
        claim.control(1.0, " ")
    assert capsys.readouterr().out == "" and claims.RESULTS == []


# --------------------------------------------------------------------------------------
# expect: device-independent claims raise when the prose would be wrong


def test_a_device_independent_verdict_other_than_expected_raises_after_recording():
    claim = six_db()
    with pytest.raises(ClaimError) as caught:
        claim.measured(4.5)
    message = str(caught.value)
    assert "02.1-six-db-per-bit" in message and "'holds weakly'" in message
    assert "says 'holds'" in message and claim.rule in message
    # recorded and shown all the same: the notebook's output says what was measured
    assert claims.RESULTS[-1].verdict == claim.verdict == "holds weakly"


@pytest.mark.parametrize(
    ("expect", "value"), [("holds weakly", 4.5), ("does not hold here", 2.0)]
)
def test_expect_says_what_the_prose_says(expect, value):
    assert six_db(expect=expect).measured(value) == expect
    with pytest.raises(ClaimError):
        six_db(expect=expect).measured(6.0)
    assert claims.RESULTS[0].expected == expect


@pytest.mark.parametrize("value", [6.0, 4.5, 0.1])
@pytest.mark.parametrize("expect", claims.VERDICTS)
def test_a_device_dependent_claim_never_raises(value, expect):
    claim = six_db(device=True, expect=expect)
    assert claim.measured(value) == claim.judge(value)
    assert claims.RESULTS[-1].expected is None and claims.RESULTS[-1].device_dependent


# --------------------------------------------------------------------------------------
# Negative controls


def test_a_control_that_does_not_hold_is_recorded_under_its_claim():
    claim = six_db()
    claim.measured(6.0)
    assert claim.control(1.2, "per tensor, 2 to 3 bits") == "does not hold here"
    record = claims.RESULTS[-1]
    assert record.id == "02.1-six-db-per-bit-control-1"
    assert record.claim_id == "02.1-six-db-per-bit"
    assert record.anchor == "claim-02-1-six-db-per-bit-control-1"
    assert record.control == "per tensor, 2 to 3 bits"
    assert record.measure == "negative control: per tensor, 2 to 3 bits"
    assert record.expected == "does not hold here" and record.rule == claim.rule
    assert claim.verdict == "holds"  # a control leaves the claim's own verdict alone


@pytest.mark.parametrize("value", [6.0, 4.2])  # holds, holds weakly
def test_a_device_independent_control_that_holds_raises(value):
    claim = six_db()
    with pytest.raises(ClaimError, match="negative control 'per tensor'.*must not"):
        claim.control(value, "per tensor")
    assert claims.RESULTS[-1].verdict != "does not hold here"


def test_a_device_dependent_control_that_holds_is_reported_not_raised(capsys):
    claim = six_db(device=True, holds=(2.0, None), weakly=None, unit="x")
    assert claim.control(3.0, "a dense matrix") == "holds"
    out = " ".join(capsys.readouterr().out.split())
    assert out.startswith(
        "✗ negative control of 02.1-six-db-per-bit (a dense matrix): holds, which a "
        "control must not"
    )


def test_controls_are_numbered_by_label_and_a_rerun_keeps_its_number():
    claim = six_db()
    claim.control(1.0, "2 bits")
    claim.control(2.0, "3 bits")
    claim.control(1.1, "2 bits")  # the same cell run again
    ids = [r.id for r in claims.RESULTS]
    assert ids == [
        "02.1-six-db-per-bit-control-1",
        "02.1-six-db-per-bit-control-2",
        "02.1-six-db-per-bit-control-1",
    ]


# --------------------------------------------------------------------------------------
# Records


def test_every_verdict_is_recorded_in_order_with_its_fields(monkeypatch):
    monkeypatch.setattr(device, "short_summary", lambda: "GPU Fake H100 (sm_90)")
    bits = six_db()
    bits.measured(np.float64(6.02), "per channel")
    speed = Claim(
        "07.3-flash-beats-sdpa", "FLASH is faster than SDPA at n = 4096",
        source="1.2x at n = 4096 (Hua et al. 2022)", measure="SDPA time / FLASH time",
        unit="x", holds=(1.0, None), weakly=(0.8, None), caveat="one layer",
        device=True, show=False,
    )
    speed.measured(0.5)
    first, second = claims.RESULTS
    assert first == ClaimRecord(
        id="02.1-six-db-per-bit", statement="each extra bit adds about 6 dB",
        source=SIX_DB["source"], measure=SIX_DB["measure"], value=6.02,
        value_text="6.02 dB/bit (per channel)", unit="dB/bit", rule=bits.rule,
        verdict="holds", expected="holds", device="GPU Fake H100 (sm_90)",
        device_dependent=False, caveat=SIX_DB["caveat"], control=None,
    )
    assert (second.value_text, second.verdict, second.expected) == (
        "0.5x", "does not hold here", None
    )
    assert repr(bits) == "Claim('02.1-six-db-per-bit': holds at 6.02)"
    assert repr(six_db()) == "Claim('02.1-six-db-per-bit': not measured yet)"


def test_from_dict_round_trips_and_validates_by_field():
    six_db().measured(6.0)
    record = claims.RESULTS[0]
    assert ClaimRecord.from_dict(json.loads(json.dumps(record.as_dict()))) == record
    data = record.as_dict()
    bad = [
        ({**data, "value": "6"}, TypeError, "value"),
        ({**data, "value": None}, TypeError, "value"),
        ({**data, "device_dependent": "no"}, TypeError, "device_dependent"),
        ({**data, "verdict": "true"}, ValueError, "verdict"),
        ({**data, "expected": "yes"}, ValueError, "expected"),
        ({**data, "control": 1}, TypeError, "control"),
        ({**data, "caveat": None}, TypeError, "caveat"),
        ({**data, "id": "02.1-x-control-1"}, ValueError, "id"),  # no control label
        ({**data, "control": "2 bits"}, ValueError, "id"),  # a label, a claim's id
        ({k: v for k, v in data.items() if k != "rule"}, ValueError, "data"),
        ({**data, "extra": 1}, ValueError, "data"),
    ]
    for wrong, exc, name in bad:
        with pytest.raises(exc, match=f"^{name} must"):
            ClaimRecord.from_dict(wrong)
    with pytest.raises(TypeError, match="^data must be a mapping"):
        ClaimRecord.from_dict([("id", "x")])


# --------------------------------------------------------------------------------------
# What a notebook shows: the line, the card, the record


class _Elements(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def test_the_mime_bundle_holds_the_line_the_card_and_the_record():
    claim = Claim(
        "01.2-quotes-and-markup", 'a "quoted" <b>claim</b> & 6 dB — ✓',
        source="it's 6 dB (x > y)", measure="slope", holds=(5, 7),
        caveat="tiny & small", show=False,
    )
    claim.measured(6.0)
    record = claims.RESULTS[0]
    bundle = record._repr_mimebundle_()
    assert set(bundle) == {"text/plain", "text/html", claims.MIME_TYPE}
    assert bundle[claims.MIME_TYPE] == record.as_dict()
    json.dumps(bundle[claims.MIME_TYPE])  # JSON-serialisable, as a notebook stores it
    assert bundle["text/plain"] == record.text and lines_fit(record.text)
    card = bundle["text/html"]
    parser = _Elements()
    parser.feed(card)
    tag, attrs = parser.tags[0]
    assert tag == "div" and attrs["id"] == "claim-01-2-quotes-and-markup"
    assert attrs["class"] == "effx-claim"
    # the record, as escaped JSON: the attribute survives quotes, markup and ampersands
    assert json.loads(attrs[claims.CARD_ATTRIBUTE]) == record.as_dict()
    assert "<b>claim</b>" not in card and "it's" not in card  # escaped everywhere
    # no tag injected by the statement's markup
    assert [tag for tag, _ in parser.tags] == ["div", "b", "br", "span"]
    assert claims.read_cards(card) == [("claim-01-2-quotes-and-markup", record)]


def test_the_line_names_the_device_of_a_timed_claim_and_the_courses_own():
    six_db(device=True).measured(3.0, "at n = 4096, median of 5 runs")
    text = " ".join(claims.RESULTS[0].text.split())
    assert text.startswith(
        "✗ claim 02.1-six-db-per-bit does not hold here on this device "
        "(CPU Test (2 cores)): measured 3 dB/bit (at n = 4096, median of 5 runs)"
    )
    course = f"the text reports what the course measured on {claims.COURSE_DEVICE}"
    assert text.endswith(course)
    assert lines_fit(claims.RESULTS[0].text)
    six_db().measured(6.0)
    assert "device" not in claims.RESULTS[1].text
    assert "course" not in claims.RESULTS[1].text


def test_in_a_notebook_the_verdict_is_displayed_not_printed():
    from IPython.core.interactiveshell import InteractiveShell
    from IPython.utils.capture import capture_output

    InteractiveShell.instance()
    try:
        with capture_output() as captured:
            six_db().measured(6.0)
    finally:
        InteractiveShell.clear_instance()
    assert captured.stdout == ""
    (output,) = captured.outputs
    assert output.data[claims.MIME_TYPE] == claims.RESULTS[0].as_dict()
    assert 'id="claim-02-1-six-db-per-bit"' in output.data["text/html"]


def test_outside_a_notebook_the_line_is_printed(capsys):
    six_db().measured(6.0)
    assert capsys.readouterr().out == claims.RESULTS[0].text + "\n"


def test_read_cards_rejects_what_is_not_a_card():
    assert claims.read_cards("<p>no claim here</p>") == []
    with pytest.raises(TypeError, match="^text must be a str"):
        claims.read_cards(b"<div></div>")
    with pytest.raises(ValueError, match="is not JSON"):
        claims.read_cards('<div id="claim-x" data-effx-claim="{not json"></div>')
    not_a_record = '<div id="claim-x" data-effx-claim="{&quot;id&quot;: 1}"></div>'
    with pytest.raises(ValueError, match="not a claim record: data must have the"):
        claims.read_cards(not_a_record)
