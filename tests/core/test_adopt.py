"""effx_lab.check.adopt: the student's function drives the experiment after its exercise
when it passed.

Tried with a registered checker of chapter 2 (check_quantize_symmetric). The checker's
cases are small (at most a few hundred elements), so an input of EXPERIMENT_SIZE
elements is "the experiment's input": the student functions below misbehave only there.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from effx_lab.check import CHECKERS, CheckerError, adopt
from effx_lab.quant.exercises.fundamentals import check_quantize_symmetric

ENTRY = CHECKERS["effx_lab.quant.exercises.fundamentals.check_quantize_symmetric"]
EXPERIMENT_SIZE = 5000


@pytest.fixture(autouse=True)
def _reading_mode(monkeypatch):
    """Each test starts outside strict mode (a CI run may export EFFX_CHECK_STRICT=1)."""
    monkeypatch.delenv("EFFX_CHECK_STRICT", raising=False)
    monkeypatch.delenv("NBGRADER_EXECUTION", raising=False)


def _correct():
    """A new function object that passes (it answers with the checker's reference)."""

    def quantize_symmetric(x, bits, clip_ratio=1.0):
        return ENTRY.reference(x, bits, clip_ratio)

    return quantize_symmetric


def _lines(capsys) -> list[str]:
    """The printed messages, one per entry (a message wrapped at the book's column goes on with two
    spaces of indent)."""
    messages: list[str] = []
    for line in capsys.readouterr().out.splitlines():
        if line.startswith("  ") and messages:
            messages[-1] += " " + line.strip()
        elif line.strip():
            messages.append(line)
    return messages


def _experiment_input() -> np.ndarray:
    return np.random.default_rng(0).normal(size=EXPERIMENT_SIZE)


def test_a_passing_function_drives_the_experiment(capsys):
    mine = _correct()
    calls = []

    def quantize_symmetric(x, bits, clip_ratio=1.0):
        calls.append(x.size)
        return mine(x, bits, clip_ratio)

    check_quantize_symmetric(quantize_symmetric)
    capsys.readouterr()
    fn = adopt(quantize_symmetric, check_quantize_symmetric)
    assert _lines(capsys) == [
        "✓ quantize_symmetric: the experiment below runs your function."
    ]
    assert fn.by_student is True and fn.__name__ == "quantize_symmetric"
    x = _experiment_input()
    q, scale = fn(x, 4)
    assert (
        calls[-1] == EXPERIMENT_SIZE
    )  # the student's code ran on the experiment's input
    q_ref, scale_ref = ENTRY.reference(x, 4)
    np.testing.assert_array_equal(q, q_ref)
    assert scale == scale_ref
    assert (
        fn.by_student is True and _lines(capsys) == []
    )  # nothing printed while it runs


def test_an_unattempted_or_failing_function_is_replaced_by_the_reference(capsys):
    def quantize_symmetric(x, bits, clip_ratio=1.0):
        # YOUR CODE HERE
        raise NotImplementedError()

    check_quantize_symmetric(quantize_symmetric)
    capsys.readouterr()
    fn = adopt(quantize_symmetric, check_quantize_symmetric)
    assert _lines(capsys) == [
        "↪ quantize_symmetric: yours has not been attempted yet, so the experiment below uses the "
        "course's quantize_symmetric."
    ]
    assert fn.by_student is False
    x = _experiment_input()
    np.testing.assert_array_equal(fn(x, 8)[0], ENTRY.reference(x, 8)[0])

    def wrong(
        x, bits, clip_ratio=1.0
    ):  # the classic mistake: no clipping ratio, 2**bits levels
        scale = np.abs(x).max() / (2 ** (bits - 1))
        return np.round(x / scale), float(scale)

    check_quantize_symmetric(wrong)
    capsys.readouterr()
    fn = adopt(wrong, check_quantize_symmetric)
    lines = _lines(capsys)
    assert (
        len(lines) == 1
        and "has not passed its check yet" in lines[0]
        and "course's" in lines[0]
    )
    assert fn.by_student is False


def test_a_result_is_reused_for_the_same_function_and_a_new_function_is_checked(capsys):
    mine = _correct()
    check_quantize_symmetric(mine)
    first = _lines(capsys)
    assert len(first) >= 1 and first[0].startswith("✅ quantize_symmetric: passed")
    adopt(mine, check_quantize_symmetric)
    assert _lines(capsys) == [
        "✓ quantize_symmetric: the experiment below runs your function."
    ]  # no second check
    again = _correct()  # the student ran the exercise cell again: a new function object
    adopt(again, check_quantize_symmetric)
    lines = _lines(capsys)
    assert lines[0].startswith("✅ quantize_symmetric: passed") and lines[
        -1
    ].startswith("✓ quantize_symmetric")


def test_a_slow_function_is_stopped_by_the_budget_and_replaced(capsys):
    mine = _correct()

    def quantize_symmetric(x, bits, clip_ratio=1.0):
        if x.size >= EXPERIMENT_SIZE:
            time.sleep(30)  # far past the budget
        return mine(x, bits, clip_ratio)

    fn = adopt(quantize_symmetric, check_quantize_symmetric, budget_s=0.5)
    assert (
        _lines(capsys)[-1]
        == "✓ quantize_symmetric: the experiment below runs your function."
    )
    x = _experiment_input()
    start = time.perf_counter()
    q, scale = fn(x, 4)
    assert time.perf_counter() - start < 10  # stopped, not waited for
    np.testing.assert_array_equal(q, ENTRY.reference(x, 4)[0])
    lines = _lines(capsys)
    assert (
        len(lines) == 1
        and "ran past its time budget (0.5 s for this experiment)" in lines[0]
    )
    assert fn.by_student is False
    # from then on the reference answers at once, without another line
    fn(x, 4)
    assert _lines(capsys) == []


def test_the_budget_counts_every_call_of_the_experiment(capsys):
    mine = _correct()

    def quantize_symmetric(x, bits, clip_ratio=1.0):
        if x.size >= EXPERIMENT_SIZE:
            time.sleep(0.15)
        return mine(x, bits, clip_ratio)

    fn = adopt(quantize_symmetric, check_quantize_symmetric, budget_s=0.4)
    capsys.readouterr()
    x = _experiment_input()
    for _ in range(6):
        fn(x, 8)
    lines = _lines(capsys)
    assert len(lines) == 1 and (
        "used up its time budget" in lines[0] or "ran past its time budget" in lines[0]
    )
    assert fn.by_student is False


def test_a_function_raising_on_the_experiments_input_is_replaced(capsys):
    mine = _correct()

    def quantize_symmetric(x, bits, clip_ratio=1.0):
        if x.size >= EXPERIMENT_SIZE:
            raise MemoryError("the student's code allocates too much")
        return mine(x, bits, clip_ratio)

    fn = adopt(quantize_symmetric, check_quantize_symmetric)
    capsys.readouterr()
    x = _experiment_input()
    np.testing.assert_array_equal(fn(x, 4)[0], ENTRY.reference(x, 4)[0])
    lines = _lines(capsys)
    assert len(lines) == 1
    assert (
        "raised MemoryError" in lines[0]
        and "the rest of this experiment uses the course's" in lines[0]
    )
    assert fn.by_student is False


def test_strict_mode_raises_instead_of_falling_back(monkeypatch, capsys):
    monkeypatch.setenv("EFFX_CHECK_STRICT", "1")
    mine = _correct()

    def quantize_symmetric(x, bits, clip_ratio=1.0):
        if x.size >= EXPERIMENT_SIZE:
            raise ValueError("only small inputs")
        return mine(x, bits, clip_ratio)

    fn = adopt(quantize_symmetric, check_quantize_symmetric)
    with pytest.raises(
        CheckerError,
        match="raised ValueError: only small inputs on the experiment's input",
    ):
        fn(_experiment_input(), 4)

    def stub(x, bits, clip_ratio=1.0):
        raise NotImplementedError()

    with pytest.raises(
        CheckerError, match="not attempted"
    ):  # the check adopt runs raises first
        adopt(stub, check_quantize_symmetric)


@pytest.mark.parametrize(
    "mode, strict",
    [("autograde", True), ("validate", True), ("", False), ("other", False)],
)
def test_nbgrader_execution_turns_on_strict_mode(monkeypatch, capsys, mode, strict):
    monkeypatch.setenv("NBGRADER_EXECUTION", mode)

    def stub(x, bits, clip_ratio=1.0):
        raise NotImplementedError()

    if strict:
        with pytest.raises(CheckerError):
            check_quantize_symmetric(stub)
    else:
        assert not check_quantize_symmetric(stub).passed


def test_bad_arguments():
    mine = _correct()
    with pytest.raises(
        TypeError,
        match="checked_by must be one of the course's check_<exercise> functions",
    ):
        adopt(mine, lambda fn: None)
    with pytest.raises(TypeError, match="checked_by"):
        adopt(mine, ENTRY.reference)  # the reference is not the checker
    for bad in (0, -1.0):
        with pytest.raises(ValueError, match="budget_s"):
            adopt(mine, check_quantize_symmetric, budget_s=bad)
    with pytest.raises(TypeError, match="budget_s"):
        adopt(mine, check_quantize_symmetric, budget_s="30")
