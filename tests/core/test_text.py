"""effx_lab._text.fit: what the package prints fits the notebook column."""
from __future__ import annotations

import pytest

from effx_lab._text import OUTPUT_COLUMNS, fit


def test_long_lines_wrap_at_spaces_keeping_their_indent_and_short_lines_stay():
    long = "  " + " ".join(["word"] * 40)
    out = fit(f"short line\n{long}")
    lines = out.split("\n")
    assert lines[0] == "short line"
    assert all(len(line) <= OUTPUT_COLUMNS for line in lines)
    assert all(line.startswith("    ") for line in lines[2:])  # continuation: own indent + 2
    assert " ".join(out.split()) == " ".join(f"short line\n{long}".split())


def test_a_word_longer_than_the_column_is_not_broken():
    word = "x" * 120
    assert fit(word) == word


def test_fit_rejects_a_non_string():
    with pytest.raises(TypeError, match="text must be a str"):
        fit(3)
