"""Assertions shared by the exercise-checker tests."""
from __future__ import annotations


def fails(result, *facts: str) -> None:
    """``result`` (a CheckResult) is an attempted answer that was rejected, and its message names every fact."""
    assert result.passed is False, result.message
    assert result.attempted is True
    for fact in facts:
        assert fact in result.message, (fact, result.message)
