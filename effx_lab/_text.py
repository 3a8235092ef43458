"""Text the package prints fits the notebook column (88 characters, as the notebooks' code)."""
from __future__ import annotations

import textwrap

__all__ = ["OUTPUT_COLUMNS", "fit"]

#: the widest line the package prints into a notebook (the book's column at laptop width)
OUTPUT_COLUMNS = 88


def fit(text: str, *, indent: str = "  ", width: int = OUTPUT_COLUMNS) -> str:
    """``text`` with every line longer than ``width`` wrapped at spaces; continuation lines
    keep the line's own indentation plus ``indent``. Short lines are left as they are."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    out = []
    for line in text.split("\n"):
        if len(line) <= width:
            out.append(line)
            continue
        lead = line[: len(line) - len(line.lstrip())]
        out.append(
            textwrap.fill(
                line.strip(),
                width=width,
                initial_indent=lead,
                subsequent_indent=lead + indent,
                break_long_words=False,
                break_on_hyphens=False,
            )
        )
    return "\n".join(out)
