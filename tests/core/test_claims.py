"""effx_lab.claims: device-dependent claims are shown with a verdict and recorded, never asserted."""
from __future__ import annotations

import numpy as np
import pytest

from effx_lab import claims, device


@pytest.fixture(autouse=True)
def empty_ledger(monkeypatch):
    monkeypatch.setattr(claims, "RESULTS", [])


def test_a_claim_that_holds_prints_a_tick_naming_the_device(capsys):
    assert claims.verdict("the cache makes a step faster", True, "11.2x at position 255") is True
    raw = capsys.readouterr().out
    assert all(len(line) <= 88 for line in raw.splitlines())  # fits the notebook column
    out = " ".join(raw.split())  # the verdict, unwrapped
    assert out.startswith("✓ on this device (") and " ".join(device.short_summary().split()) in out
    assert out.endswith("the cache makes a step faster — 11.2x at position 255")
    assert "the text says what the course measured" not in out


def test_a_claim_that_fails_does_not_raise_and_says_where_the_course_measured_it(capsys):
    assert claims.verdict("int8 is faster than float32", False, "0.3x") is False
    raw = capsys.readouterr().out
    assert all(len(line) <= 88 for line in raw.splitlines())
    out = " ".join(raw.split())
    assert out.startswith("✗ not on this device (") and " ".join(device.short_summary().split()) in out
    assert "int8 is faster than float32 — 0.3x" in out
    assert out.endswith(f"the text says what the course measured on {claims.COURSE_DEVICE}")


def test_without_a_measurement_no_dash_is_printed(capsys):
    claims.verdict("packing wins", True)
    assert capsys.readouterr().out.rstrip().endswith("packing wins")


def test_every_verdict_is_recorded_in_order():
    claims.verdict("first", True, "2x")
    claims.verdict("second", np.float64(0.5) > 1.0, "0.5x")  # a NumPy bool is accepted
    assert claims.RESULTS == [
        {"claim": "first", "holds": True, "measured": "2x", "device": device.short_summary()},
        {"claim": "second", "holds": False, "measured": "0.5x", "device": device.short_summary()},
    ]
    assert all(type(r["holds"]) is bool for r in claims.RESULTS)


@pytest.mark.parametrize(
    ("args", "exc", "name"),
    [
        ((3, True), TypeError, "claim"),
        (("", True), ValueError, "claim"),
        (("   ", True), ValueError, "claim"),
        (("x", 1), TypeError, "holds"),
        (("x", "yes"), TypeError, "holds"),
        (("x", None), TypeError, "holds"),
        (("x", True, 2.5), TypeError, "measured"),
        (("x", True, None), TypeError, "measured"),
    ],
)
def test_arguments_are_validated_by_name(args, exc, name, capsys):
    with pytest.raises(exc, match=name):
        claims.verdict(*args)
    assert claims.RESULTS == [] and capsys.readouterr().out == ""  # nothing printed or recorded


def test_the_device_named_is_the_gpu_when_there_is_one(monkeypatch, capsys):
    monkeypatch.setattr(device, "short_summary", lambda: "GPU Fake H100 (sm_90)")
    claims.verdict("FLASH is faster", False, "0.9x")
    assert "(GPU Fake H100 (sm_90))" in capsys.readouterr().out
    assert claims.RESULTS[-1]["device"] == "GPU Fake H100 (sm_90)"
