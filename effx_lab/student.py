"""Student versions of the course notebooks: the solutions come out, the exercises stay.

The course's notebooks hold the solutions, marked so that a student version can be generated
(``effx-lab student notebooks/ student/``, or :func:`write_student_versions`). The rules:

**Code cells.** The lines from ``### BEGIN SOLUTION`` to ``### END SOLUTION`` (both marker lines
included) are replaced by a placeholder, indented like the ``### BEGIN SOLUTION`` line::

    # YOUR CODE HERE
    raise NotImplementedError("Exercise: replace this line with your code")

A cell may hold several regions. A marker without its partner (or a ``BEGIN`` inside an open region)
is an error: :class:`ValueError` naming the notebook, the cell and the line. These are the markers
nbgrader uses, so nbgrader can also import the notebooks. Put solution regions *inside a function
body*: the student version then still runs to the end (defining the function does not raise; the
exercise's checker calls it and reports "not attempted").

**Markdown cells.**

* The book hides solutions with sphinx-exercise's *gated* directives: a line starting with
  ```{solution-start} (or :::{solution-start}) opens a solution region and a line starting with
  ```{solution-end} (or :::{solution-end}) closes it; the region may span
  several cells. In the student version the directives are removed, every markdown (and raw) cell inside
  the region is removed (it is solution prose), and every **code cell inside the region is kept**, with
  its ``BEGIN/END SOLUTION`` parts replaced, so the student gets the function skeleton. Text in the same
  cell *before* a ``solution-start`` directive or *after* a ``solution-end`` directive is kept; a cell
  left empty is removed. Regions cannot nest; an unclosed region is an error.
* A complete ```{solution} (or :::{solution}) directive is removed, from its opening
  fence to the matching closing fence (a fence of the same character, at least as long); a cell that
  held only the directive is removed.
* Text between ``<!-- BEGIN SOLUTION -->`` and ``<!-- END SOLUTION -->`` (markers included; the region
  may span lines of one cell) is removed from any markdown cell.
* A markdown or raw cell with the metadata tag ``solution`` is removed entirely.
* Markers and directives shown inside an ordinary fenced code block (```python, ```md, ~~~) are
  text, not markers: they are left alone.

**Everything else.** All outputs and execution counts are cleared, and the notebook metadata gets
``"effx_lab": {"student_version": true}``. Cells without markers are copied unchanged.

:func:`solution_lines` lists what the student must never see (the stripped, non-trivial lines inside
solution regions that appear nowhere else in the notebook), for tests that the student version does
not leak a solution.
"""
from __future__ import annotations

import copy
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nbformat
from nbformat import NotebookNode

from ._validate import describe

__all__ = [
    "BEGIN_SOLUTION",
    "END_SOLUTION",
    "PLACEHOLDER",
    "make_student_notebook",
    "solution_lines",
    "write_student_version",
    "write_student_versions",
]

BEGIN_SOLUTION = "### BEGIN SOLUTION"
END_SOLUTION = "### END SOLUTION"
#: The lines that replace a solution region in a code cell (each indented like the BEGIN marker).
PLACEHOLDER = ("# YOUR CODE HERE", 'raise NotImplementedError("Exercise: replace this line with your code")')
SOLUTION_TAG = "solution"

_GATED_START = re.compile(r"^[ \t]*(?P<fence>`{3,}|:{3,})\{solution-start\}")
_GATED_END = re.compile(r"^[ \t]*(?P<fence>`{3,}|:{3,})\{solution-end\}")
_SOLUTION = re.compile(r"^[ \t]*(?P<fence>`{3,}|:{3,})\{solution\}")
_CODE_FENCE = re.compile(r"^[ \t]*(?P<fence>`{3,}|~{3,})(?!\s*\{)")
_DIRECTIVE = re.compile(r"^[ \t]*(?P<fence>`{3,}|:{3,})\{")
_HTML_MARKER = re.compile(r"<!--\s*(BEGIN|END) SOLUTION\s*-->")

# Lines too common to mean anything when found in a student version.
_TRIVIAL = {"else:", "try:", "finally:", "except:", "pass", "return", "continue", "break", "return None"}


@dataclass
class _Split:
    notebook: NotebookNode
    solution: list[str] = field(default_factory=list)  # original lines removed from the student version
    outside: list[str] = field(default_factory=list)  # original lines kept in the student version


def _closes(line: str, fence: str) -> bool:
    """Whether ``line`` closes a fence opened with ``fence`` (same character, at least as long, alone)."""
    text = line.strip()
    return len(text) >= len(fence) and set(text) == {fence[0]}


def _fence_end(lines: list[str], start: int, fence: str) -> int:
    """Index of the line closing the fence opened on ``lines[start]`` (the last line if it is unclosed)."""
    for j in range(start + 1, len(lines)):
        if _closes(lines[j], fence):
            return j
    return len(lines) - 1


def _source(cell: NotebookNode) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def _join(lines: list[str], like: str) -> str:
    text = "\n".join(lines)
    return text + "\n" if like.endswith("\n") and text else text


def _strip_code(source: str, where: str) -> tuple[str, list[str], list[str]]:
    """Replace every BEGIN/END SOLUTION region of a code cell by the placeholder."""
    out: list[str] = []
    removed: list[str] = []
    kept: list[str] = []
    opened_at: int | None = None
    for n, line in enumerate(source.splitlines(), start=1):
        stripped = line.strip()
        if stripped.startswith(BEGIN_SOLUTION):
            if opened_at is not None:
                raise ValueError(
                    f"{where}: '{BEGIN_SOLUTION}' on line {n} is inside the solution region opened on line "
                    f"{opened_at}; close it with '{END_SOLUTION}' first"
                )
            opened_at = n
            indent = line[: len(line) - len(line.lstrip())]
            out += [indent + p for p in PLACEHOLDER]
        elif stripped.startswith(END_SOLUTION):
            if opened_at is None:
                raise ValueError(f"{where}: '{END_SOLUTION}' on line {n} has no matching '{BEGIN_SOLUTION}' before it")
            opened_at = None
        elif opened_at is not None:
            removed.append(line)
        else:
            out.append(line)
            kept.append(line)
    if opened_at is not None:
        raise ValueError(f"{where}: '{BEGIN_SOLUTION}' on line {opened_at} is never closed by '{END_SOLUTION}'")
    return _join(out, source), removed, kept


def _strip_markdown(source: str, where: str, gated: bool) -> tuple[str, list[str], list[str], bool]:
    """Remove solution directives, gated regions and HTML-comment regions from one markdown cell.

    ``gated`` says whether the cell starts inside a gated solution region; the returned flag says
    whether it ends inside one.
    """
    lines = source.splitlines()
    kept: list[str] = []
    removed: list[str] = []
    html_open: int | None = None  # line number where an open <!-- BEGIN SOLUTION --> region began
    directives: list[str] = []  # fences of the open MyST directives ({exercise}, {note}, ...)
    j = 0
    while j < len(lines):
        line = lines[j]
        if gated:
            if m := _GATED_END.match(line):
                end = _fence_end(lines, j, m["fence"])
                removed += lines[j : end + 1]
                gated = False
                j = end + 1
                continue
            if _GATED_START.match(line):
                raise ValueError(f"{where}: a second {{solution-start}} on line {j + 1} inside an open solution region")
            removed.append(line)
            j += 1
            continue
        if html_open is None:
            if m := _GATED_START.match(line):
                end = _fence_end(lines, j, m["fence"])
                removed += lines[j : end + 1]
                gated = True
                j = end + 1
                continue
            if _GATED_END.match(line):
                raise ValueError(f"{where}: {{solution-end}} on line {j + 1} without a {{solution-start}} before it")
            if m := _SOLUTION.match(line):
                end = _fence_end(lines, j, m["fence"])
                removed += lines[j : end + 1]
                j = end + 1
                continue
            if directives and _closes(line, directives[-1]):
                directives.pop()
                kept.append(line)
                j += 1
                continue
            if m := _DIRECTIVE.match(line):  # another directive: its body is markdown, scanned line by line
                directives.append(m["fence"])
                kept.append(line)
                j += 1
                continue
            if m := _CODE_FENCE.match(line):  # an ordinary code block: its content is text, not markers
                end = _fence_end(lines, j, m["fence"])
                kept += lines[j : end + 1]
                j = end + 1
                continue
        parts = _HTML_MARKER.split(line)
        if len(parts) == 1:
            (removed if html_open is not None else kept).append(line)
            j += 1
            continue
        kept_text, removed_text = [], []
        for k, text in enumerate(parts[0::2]):
            (removed_text if html_open is not None else kept_text).append(text)
            if 2 * k + 1 < len(parts):
                if parts[2 * k + 1] == "BEGIN":
                    if html_open is not None:
                        raise ValueError(
                            f"{where}: '<!-- BEGIN SOLUTION -->' on line {j + 1} inside the region opened "
                            f"on line {html_open}"
                        )
                    html_open = j + 1
                else:
                    if html_open is None:
                        raise ValueError(f"{where}: '<!-- END SOLUTION -->' on line {j + 1} without a matching BEGIN")
                    html_open = None
        if "".join(kept_text).strip():
            kept.append("".join(kept_text).rstrip())
        if "".join(removed_text).strip():
            removed.append("".join(removed_text))
        j += 1
    if html_open is not None:
        raise ValueError(
            f"{where}: '<!-- BEGIN SOLUTION -->' on line {html_open} is never closed by '<!-- END SOLUTION -->'"
        )
    text = _join(kept, source)
    if removed:  # do not leave the blank lines that surrounded a removed part at the ends of the cell
        text = text.strip("\n")
    return text, removed, kept, gated


def _cell_where(name: str, index: int, cell: NotebookNode) -> str:
    cell_id = cell.get("id")
    ident = f", id {cell_id!r}" if cell_id else ""
    return f"{name}: cell {index + 1} ({cell.get('cell_type', '?')} cell{ident})"


def _split(nb: Any, name: str) -> _Split:
    if not isinstance(nb, NotebookNode) or "cells" not in nb:
        raise TypeError(f"nb must be an nbformat.NotebookNode with cells (nbformat.read(...)), got {describe(nb)}")
    student = copy.deepcopy(nb)
    split = _Split(student)
    cells: list[NotebookNode] = []
    gated_since: str | None = None  # where the open gated region began
    for index, cell in enumerate(student.cells):
        where = _cell_where(name, index, cell)
        kind = cell.get("cell_type")
        source = _source(cell)
        if kind == "code":
            new_source, removed, kept = _strip_code(source, where)
            cell.source = new_source
            cell.outputs = []
            cell.execution_count = None
            split.solution += removed
            split.outside += kept
            cells.append(cell)
            continue
        tags = cell.get("metadata", {}).get("tags", []) or []
        if SOLUTION_TAG in tags:
            split.solution += source.splitlines()
            continue
        if kind == "markdown":
            new_source, removed, kept, still_gated = _strip_markdown(source, where, gated_since is not None)
            split.solution += removed
            split.outside += kept
            if still_gated and gated_since is None:
                gated_since = where
            elif not still_gated:
                gated_since = None
            if removed and not new_source.strip():
                continue
            cell.source = new_source
            cells.append(cell)
            continue
        # raw (or unknown) cells: solution prose inside a gated region, otherwise kept unchanged
        if gated_since is not None:
            split.solution += source.splitlines()
            continue
        split.outside += source.splitlines()
        cells.append(cell)
    if gated_since is not None:
        raise ValueError(f"{gated_since}: {{solution-start}} is never closed by a {{solution-end}} directive")
    student.cells = cells
    meta = student.metadata.get("effx_lab")
    meta = dict(meta) if isinstance(meta, dict) else {}
    meta["student_version"] = True
    student.metadata["effx_lab"] = meta
    return split


def _check_name(name: Any) -> str:
    if not isinstance(name, str) or not name:
        raise TypeError(f"name must be a non-empty str (used in error messages), got {describe(name)}")
    return name


def make_student_notebook(nb: NotebookNode, *, name: str = "notebook") -> NotebookNode:
    """The student version of ``nb`` (a new notebook; ``nb`` is not modified). Pure: no file access.

    ``name`` (e.g. the notebook's path) is used in the ``ValueError`` raised for an unmatched marker.
    The rules are in this module's docstring.
    """
    return _split(nb, _check_name(name)).notebook


def solution_lines(nb: NotebookNode, *, name: str = "notebook") -> set[str]:
    """The stripped, non-trivial lines inside the solution regions of ``nb`` (code and prose).

    A line that also appears outside every solution region of the same notebook is left out, as are
    lines with fewer than three letters or digits and bare keywords (``else:``, ``pass``...). A test
    checks that none of these lines appears in the student version.
    """
    split = _split(nb, _check_name(name))
    outside = {line.strip() for line in split.outside}
    found = set()
    for line in split.solution:
        text = line.strip()
        if sum(ch.isalnum() for ch in text) < 3 or text in _TRIVIAL or text in outside:
            continue
        found.add(text)
    return found


def _as_path(argname: str, value: Any) -> Path:
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"{argname} must be a path (str or pathlib.Path), got {describe(value)}")
    return Path(value)


def write_student_version(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Read the notebook ``src``, write its student version to ``dst`` (parents created); return ``dst``."""
    src_path, dst_path = _as_path("src", src), _as_path("dst", dst)
    if not src_path.is_file():
        raise ValueError(f"src must be an existing notebook file, got {str(src_path)!r} (no such file)")
    if src_path.suffix != ".ipynb":
        raise ValueError(f"src must be a .ipynb notebook, got {str(src_path)!r}")
    if dst_path.resolve() == src_path.resolve():
        raise ValueError(f"dst must differ from src (writing {str(dst_path)!r} would erase its solutions)")
    nb = nbformat.read(src_path, as_version=4)
    student = make_student_notebook(nb, name=str(src_path))
    dst_path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(student, dst_path)
    return dst_path


def _skipped(rel: Path) -> bool:
    # hidden folders (.ipynb_checkpoints, .venv, ...) and Jupyter Book's build output
    return any(part.startswith(".") or part == "_build" for part in rel.parts[:-1])


def write_student_versions(src_dir: str | os.PathLike, dst_dir: str | os.PathLike) -> list[Path]:
    """Write the student version of every ``*.ipynb`` under ``src_dir`` to the same place under ``dst_dir``.

    Hidden folders (``.ipynb_checkpoints``...) and ``_build`` folders are skipped, and so is ``dst_dir``
    itself when it lies inside ``src_dir``. Every notebook is converted before any file is written, so
    an unmatched marker in one notebook leaves ``dst_dir`` untouched. Returns the written paths, sorted.
    """
    src_root, dst_root = _as_path("src_dir", src_dir), _as_path("dst_dir", dst_dir)
    if not src_root.is_dir():
        raise ValueError(f"src_dir must be an existing folder, got {str(src_root)!r}")
    src_abs, dst_abs = src_root.resolve(), dst_root.resolve()
    if dst_abs == src_abs:
        raise ValueError(
            f"dst_dir must differ from src_dir (got {str(dst_root)!r} for both): it would erase the solutions"
        )
    converted: list[tuple[Path, NotebookNode]] = []
    for path in sorted(src_root.rglob("*.ipynb")):
        rel = path.relative_to(src_root)
        if _skipped(rel) or path.resolve().is_relative_to(dst_abs):
            continue
        nb = nbformat.read(path, as_version=4)
        converted.append((dst_root / rel, make_student_notebook(nb, name=str(path))))
    written = []
    for target, nb in converted:
        target.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, target)
        written.append(target)
    return written
