"""Student versions of the real course notebooks: no solution leaks, and the stored
nbgrader metadata.

The solution notebooks themselves are executed under nbval with EFFX_CHECK_STRICT=1 by
`make test` (every checker must pass there). Every student version is executed by `make
test-instructor` (tests/book/test_nbgrader.py: nbgrader autogrades the released student
versions, which must run to the end and score zero, and checks them for giveaways).
Here, cheaply, every notebook's student version is generated and checked for leaks, and
every stored notebook must carry the nbgrader metadata its marks give
(effx_lab.student.add_nbgrader_metadata), so that it is an nbgrader assignment as
committed.
"""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

from effx_lab.student import (
    PLACEHOLDER,
    add_nbgrader_metadata,
    make_student_notebook,
    solution_lines,
)

ROOT = Path(__file__).resolve().parents[2]
from _notebooks import NOTEBOOKS  # noqa: E402
_GATED = re.compile(r"^[ \t]*(`{3,}|:{3,})\{solution-(start|end)\}", re.M)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_no_solution_line_leaks(path):
    nb = nbformat.read(path, as_version=4)
    student = make_student_notebook(nb, name=path.name)
    text = "\n".join(c.source for c in student.cells)
    secret = solution_lines(nb, name=path.name)
    assert secret, f"{path.name}: no solution lines found; are the exercises marked?"
    leaked = sorted(secret & {line.strip() for line in text.splitlines()})
    assert (
        not leaked
    ), f"{path.name}: solution lines leak into the student version: {leaked[:5]}"
    assert text.count(PLACEHOLDER[1]) >= 2


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_stored_notebooks_carry_their_nbgrader_metadata(path):
    nb = nbformat.read(path, as_version=4)
    assert not any(
        c.cell_type == "markdown" and _GATED.search(c.source) for c in nb.cells
    ), f"{path.name} is not in the stored form: python book/_ext/notebook_form.py --write notebooks"
    expected = add_nbgrader_metadata(nb, name=path.name)
    wrong = [
        i + 1
        for i, (a, b) in enumerate(zip(nb.cells, expected.cells))
        if a.metadata != b.metadata
    ]
    assert not wrong, (
        f"{path.name}: cells {wrong} lack the nbgrader metadata their marks give "
        "(effx_lab.student.add_nbgrader_metadata)"
    )
    assert expected == nb
