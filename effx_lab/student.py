"""Student versions of the course notebooks, and the nbgrader metadata that makes them
assignments.

The notebooks are stored with their solutions, marked in each cell's metadata (the
stored form, which also reads well in Colab and JupyterLab):

* an exercise statement is a markdown cell with ``{"effx": {"exercise": "<label>"}}``;
* every cell of the exercise's solution region has
  ``{"effx": {"solution": "<label>"}}``, with the label of an exercise stated earlier in
  the notebook. A solution **code** cell holds the function skeleton: the body between
  ``### BEGIN SOLUTION`` and ``### END SOLUTION`` (each marker alone on its line,
  regions not nested) is the solution, and the rest (the def line, the docstring, hint
  comments) is what the student starts from. Its first line may be a Colab
  ``#@title``, shown instead of the code when the cell also has
  ``{"cellView": "form"}``. A solution **markdown** cell is a model
  answer (wrapped in ``<details>`` so that it stays folded);
* the cell right after a region that holds code is its test, one line:
  ``check_<name>(<name>)``, where ``<name>`` is defined in the region's code.

:func:`add_nbgrader_metadata` turns those marks into nbgrader (0.9) cell metadata,
schema 3 (``solution``, ``grade``, ``locked``, ``points``, ``grade_id``):

* solution code cell: nbgrader's "autograded answer", ``solution: true, grade: false,
  locked: false``; ``grade_id`` ``<name>``;
* test cell: "autograder tests", ``grade: true, solution: false, locked: true,
  points: 1`` (:data:`TEST_POINTS`; nbgrader awards them when the cell runs without an
  error); ``grade_id`` ``check_<name>``;
* solution markdown cell: "manually graded answer" worth 0 points, ``solution: true,
  grade: true, locked: false, points: 0`` (the reasoning answers are discussed, not
  graded; give them points in your copy to grade them by hand); ``grade_id``
  ``<label>-answer``.

A second code cell of one region gets ``<name>-2`` (and so on), a second answer of one
label ``<label>-answer-2``. Every other cell has no nbgrader metadata (any it had is
removed: the marks are the one source). ``nbgrader generate_assignment`` then replaces
each solution region by its stub (``# YOUR CODE HERE`` /
``raise NotImplementedError()``, indented like the BEGIN marker) and each answer by
``YOUR ANSWER HERE``; ``nbgrader autograde`` runs the notebook with
``NBGRADER_EXECUTION=autograde`` set, which turns on the checkers' strict mode
(:mod:`effx_lab.check`): a failed or unattempted exercise raises, and its test cell
scores 0.

:func:`make_student_notebook` (``effx-lab student``, :func:`write_student_versions`)
produces the same student version without nbgrader: the same stubs, outputs cleared
and, in every solution code cell, the ``#@title`` line and the form view removed, so
that Colab shows the student the skeleton instead of a folded title. (nbgrader keeps
both; the preprocessor ``ShowSkeletons`` of this module, added by
:func:`nbgrader_preprocessors`, removes them from nbgrader's release too.)
:func:`write_nbgrader_course` (``effx-lab nbgrader``) puts notebooks into an nbgrader
course folder.

Inconsistent marks raise :class:`ValueError` naming the notebook and the cell: a
solution code cell without a marked region, a marker in a cell that is not a solution
cell (nbgrader would refuse the notebook), a region with code and no test cell after
it, a test cell checking a name its region does not define, a label with no exercise
statement before it, duplicate grade ids.

:func:`solution_lines` lists what the student must never see (the stripped, non-trivial
lines inside solution regions that appear nowhere else in the notebook), for tests that
the student version does not leak a solution.

(Transitional, until every notebook is stored in the stored form: notebooks written with
the book's gated directives, a markdown cell ```` ```{solution-start} <label> ````
opening a region and ```` ```{solution-end} ```` closing it, are read by
:func:`make_student_notebook` and :func:`solution_lines` as if their region cells
carried the marks; :func:`add_nbgrader_metadata` wants the stored form.)
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
    "ANSWER_PLACEHOLDER",
    "BEGIN_SOLUTION",
    "END_SOLUTION",
    "NBGRADER_CONFIG",
    "NBGRADER_SCHEMA_VERSION",
    "PLACEHOLDER",
    "TEST_POINTS",
    "add_nbgrader_metadata",
    "make_student_notebook",
    "nbgrader_preprocessors",
    "solution_lines",
    "write_nbgrader_course",
    "write_student_version",
    "write_student_versions",
]

BEGIN_SOLUTION = "### BEGIN SOLUTION"
END_SOLUTION = "### END SOLUTION"
#: The lines that replace a solution region in a code cell (each indented like the BEGIN
#: marker): nbgrader's own code stub for Python, so both tools give one student version.
PLACEHOLDER = ("# YOUR CODE HERE", "raise NotImplementedError()")
#: What replaces a model answer (a solution markdown cell): nbgrader's text stub.
ANSWER_PLACEHOLDER = "YOUR ANSWER HERE"
#: The nbgrader cell-metadata schema that :func:`add_nbgrader_metadata` writes.
NBGRADER_SCHEMA_VERSION = 3
#: Points of every autograded test cell; model answers are worth 0 (module docstring).
TEST_POINTS = 1

#: The ``nbgrader_config.py`` that :func:`write_nbgrader_course` writes into a course.
NBGRADER_CONFIG = """\
# nbgrader configuration of an effx-lab course (written by `effx-lab nbgrader`).
# Edit it freely.
# Run nbgrader from this folder, in an environment where effx_lab is installed.
c = get_config()  # noqa: F821 - nbgrader provides get_config

# The release shows each solution cell's skeleton in Colab: without this, nbgrader keeps
# the instructors' "#@title" form view, which folds the student's skeleton away.
from effx_lab.student import nbgrader_preprocessors  # noqa: E402

c.GenerateAssignment.preprocessors = nbgrader_preprocessors()

# A notebook runs in about 90 s on a 2-core CPU; a cell may take minutes on a slow one.
c.Execute.timeout = 300
"""

# nbgrader finds its delimiters anywhere in a line of any cell
_DELIMITERS = ("BEGIN SOLUTION", "END SOLUTION")
_TITLE = re.compile(r"^[ \t]*#[ \t]*@title\b")
_TEST = re.compile(r"^check_(?P<checker>\w+)\((?P<arg>[A-Za-z_]\w*)[^()\n]*\)$")
_DEF = re.compile(r"^[ \t]*(?:async[ \t]+)?def[ \t]+(?P<name>\w+)[ \t]*\(", re.M)
_GRADE_ID = re.compile(r"[^A-Za-z0-9_-]")
_ASSIGNMENT = re.compile(r"[A-Za-z0-9_.-]+")
_FENCE = r"^[ \t]*(?:`{3,}|:{3,})"
_GATED_START = re.compile(_FENCE + r"\{solution-start\}[ \t]*(?P<label>\S*)")
_GATED_END = re.compile(_FENCE + r"\{solution-end\}")
_WRAPPER = re.compile(r"</?details>|<summary>[^<]*</summary>", re.I)

# Lines too common to mean anything when found in a student version.
_TRIVIAL = {
    "else:", "try:", "finally:", "except:", "pass", "return", "continue", "break",
    "return None",
}


@dataclass
class _Region:
    """A run of consecutive cells marked as the solution of one exercise."""

    label: str
    cells: list[int] = field(default_factory=list)
    test: int | None = None  # the test cell right after the region
    checker: str | None = None  # "check_<name>" called by the test cell
    name: str | None = None  # the function the test cell checks


# ------------------------------------------------------------------------------------
# Reading the marks
# ------------------------------------------------------------------------------------


def _source(cell: NotebookNode) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def _cell_where(name: str, index: int, cell: NotebookNode) -> str:
    cell_id = cell.get("id")
    ident = f", id {cell_id!r}" if cell_id else ""
    return f"{name}: cell {index + 1} ({cell.get('cell_type', '?')} cell{ident})"


def _check_notebook(nb: Any) -> None:
    if not isinstance(nb, NotebookNode) or "cells" not in nb:
        raise TypeError(
            "nb must be an nbformat.NotebookNode with cells (nbformat.read(...)), "
            f"got {describe(nb)}"
        )


def _check_name(name: Any) -> str:
    if not isinstance(name, str) or not name:
        raise TypeError(
            "name must be a non-empty str (used in error messages), "
            f"got {describe(name)}"
        )
    return name


def _mark(cell: NotebookNode, where: str) -> tuple[str, str] | None:
    """``("solution", label)``, ``("exercise", label)`` or None (``effx`` metadata)."""
    meta = cell.get("metadata", {}).get("effx")
    if meta is None:
        return None
    if not isinstance(meta, dict):
        raise ValueError(
            f"{where}: metadata 'effx' must be a dict such as "
            f"{{'solution': 'ex-label'}}, got {meta!r}"
        )
    kinds = [k for k in ("solution", "exercise") if k in meta]
    if len(kinds) > 1:
        raise ValueError(
            f"{where}: a cell is either an exercise statement or a solution, not both "
            f"({meta!r})"
        )
    if not kinds:
        return None
    label = meta[kinds[0]]
    if not isinstance(label, str) or not label.strip():
        raise ValueError(
            f"{where}: metadata effx.{kinds[0]} must be the exercise's label "
            f"(a non-empty str), got {label!r}"
        )
    return kinds[0], label


def _gate(cell: NotebookNode) -> tuple[str, str] | None:
    """``("start", label)`` / ``("end", "")`` for a markdown cell holding a gated
    directive, else None."""
    if cell.get("cell_type") != "markdown":
        return None
    for line in _source(cell).split("\n"):
        if m := _GATED_START.match(line):
            return "start", m["label"]
        if _GATED_END.match(line):
            return "end", ""
    return None


def _has_gates(nb: NotebookNode) -> bool:
    return any(_gate(cell) for cell in nb.cells)


def _regions(nb: NotebookNode, name: str) -> list[_Region]:
    """The solution regions of a stored-form notebook, validated (module docstring)."""
    regions: list[_Region] = []
    exercises: set[str] = set()
    previous: tuple[str, str] | None = None
    for index, cell in enumerate(nb.cells):
        where = _cell_where(name, index, cell)
        kind = cell.get("cell_type")
        mark = _mark(cell, where)
        source = _source(cell)
        if mark is not None and mark[0] == "exercise":
            if kind != "markdown":
                raise ValueError(
                    f"{where}: an exercise statement (effx.exercise) must be a "
                    "markdown cell"
                )
            exercises.add(mark[1])
        if mark is not None and mark[0] == "solution":
            _check_solution_cell(cell, mark[1], exercises, where)
            if previous == mark:
                regions[-1].cells.append(index)
            else:
                regions.append(_Region(mark[1], [index]))
        else:
            for n, line in enumerate(source.split("\n"), start=1):
                if any(d in line for d in _DELIMITERS):
                    raise ValueError(
                        f"{where}: line {n} holds a solution marker but the cell is "
                        "not a solution cell (metadata effx.solution); nbgrader would "
                        "refuse the notebook"
                    )
            if previous is not None and previous[0] == "solution":
                _attach_test(regions[-1], nb, index, where)
        previous = mark
    for region in regions:
        has_code = any(nb.cells[i].cell_type == "code" for i in region.cells)
        if region.test is None and has_code:
            last = region.cells[-1]
            raise ValueError(
                f"{_cell_where(name, last, nb.cells[last])}: the solution of "
                f"{region.label!r} holds code, so the next cell must be its test, one "
                "line: check_<name>(<name>)"
            )
    return regions


def _check_solution_cell(
    cell: NotebookNode, label: str, exercises: set[str], where: str
) -> None:
    kind = cell.get("cell_type")
    source = _source(cell)
    if kind not in ("code", "markdown"):
        raise ValueError(
            f"{where}: a solution cell must be a code or markdown cell, not {kind!r}"
        )
    if label not in exercises:
        raise ValueError(
            f"{where}: solution of {label!r}, but no exercise statement (a markdown "
            f"cell with metadata effx.exercise = {label!r}) comes before it"
        )
    if kind == "code":
        _strip_code(source, where)  # validates the markers
        if not any(BEGIN_SOLUTION in line for line in source.split("\n")):
            raise ValueError(
                f"{where}: a solution code cell must hold a '{BEGIN_SOLUTION}' ... "
                f"'{END_SOLUTION}' region (the student gets the rest of the cell as "
                "the skeleton)"
            )
    elif any(d in source for d in _DELIMITERS):
        raise ValueError(
            f"{where}: a model answer must not contain solution markers; the whole "
            "cell is the answer"
        )


def _attach_test(region: _Region, nb: NotebookNode, index: int, where: str) -> None:
    """Make cell ``index`` (right after ``region``) its test cell when it is one line
    ``check_<name>(...)``."""
    cell = nb.cells[index]
    if cell.get("cell_type") != "code":
        return
    m = _TEST.match(_source(cell).strip())
    if m is None:
        return
    cells = [nb.cells[i] for i in region.cells]
    code = [_source(c) for c in cells if c.cell_type == "code"]
    defined = {d["name"] for source in code for d in _DEF.finditer(source)}
    if code and m["arg"] not in defined:
        raise ValueError(
            f"{where}: the test cell checks {m['arg']!r}, which the solution of "
            f"{region.label!r} before it does not define (it defines "
            f"{sorted(defined) or 'no function'})"
        )
    region.test, region.checker, region.name = index, f"check_{m['checker']}", m["arg"]


# ------------------------------------------------------------------------------------
# Code cells: the solution regions
# ------------------------------------------------------------------------------------


def _strip_code(source: str, where: str) -> tuple[str, list[str], list[str]]:
    """Replace every BEGIN/END SOLUTION region of a code cell by the placeholder, as
    nbgrader does. Returns the new source, the removed lines and the kept lines."""
    out: list[str] = []
    removed: list[str] = []
    kept: list[str] = []
    opened_at: int | None = None
    for n, line in enumerate(source.split("\n"), start=1):
        if not any(d in line for d in _DELIMITERS):
            (removed if opened_at is not None else kept).append(line)
            if opened_at is None:
                out.append(line)
            continue
        begin = "BEGIN SOLUTION" in line
        marker = BEGIN_SOLUTION if begin else END_SOLUTION
        if line.strip() != marker:
            raise ValueError(
                f"{where}: line {n}: write the marker as '{marker}' alone on its line, "
                f"got {line.strip()!r}"
            )
        if begin:
            if opened_at is not None:
                raise ValueError(
                    f"{where}: '{BEGIN_SOLUTION}' on line {n} is inside the solution "
                    f"region opened on line {opened_at}; close it with "
                    f"'{END_SOLUTION}' first"
                )
            opened_at = n
            indent = line[: len(line) - len(line.lstrip())]
            out += [indent + p for p in PLACEHOLDER]
        else:
            if opened_at is None:
                raise ValueError(
                    f"{where}: '{END_SOLUTION}' on line {n} has no matching "
                    f"'{BEGIN_SOLUTION}' before it"
                )
            opened_at = None
    if opened_at is not None:
        raise ValueError(
            f"{where}: '{BEGIN_SOLUTION}' on line {opened_at} is never closed by "
            f"'{END_SOLUTION}'"
        )
    return "\n".join(out), removed, kept


def _show_skeleton(cell: NotebookNode) -> None:
    """In place: drop a solution code cell's ``#@title`` first line and its folding
    (Colab's form view, Jupyter's hidden source)."""
    lines = _source(cell).split("\n")
    if lines and _TITLE.match(lines[0]):
        cell.source = "\n".join(lines[1:])
    meta = cell.get("metadata", {})
    meta.pop("cellView", None)
    meta.pop("collapsed", None)
    jupyter = meta.get("jupyter")
    if isinstance(jupyter, dict):
        jupyter.pop("source_hidden", None)
        if not jupyter:
            del meta["jupyter"]


# ------------------------------------------------------------------------------------
# nbgrader metadata
# ------------------------------------------------------------------------------------


def _nbgrader(
    grade_id: str, *, solution: bool, grade: bool, locked: bool, points: int | None
) -> dict:
    meta = {
        "grade": grade,
        "grade_id": grade_id,
        "locked": locked,
        "schema_version": NBGRADER_SCHEMA_VERSION,
        "solution": solution,
    }
    if points is not None:
        meta["points"] = points
    return meta


def add_nbgrader_metadata(nb: NotebookNode, *, name: str = "notebook") -> NotebookNode:
    """A copy of the stored-form notebook ``nb`` with nbgrader's cell metadata, derived
    from its marks.

    The rule per cell kind is in this module's docstring. Idempotent
    (``add_nbgrader_metadata(x) == add_nbgrader_metadata(add_nbgrader_metadata(x))``),
    pure (``nb`` is not modified), and a validation: inconsistent marks raise
    ``ValueError`` naming ``name`` and the cell.
    """
    _check_notebook(nb)
    name = _check_name(name)
    if _has_gates(nb):
        raise ValueError(
            f"{name}: holds the book's {{solution-start}}/{{solution-end}} directives; "
            "convert it to the stored form first (book/_ext/notebook_form.py), where "
            "each solution cell carries metadata effx.solution"
        )
    out = copy.deepcopy(nb)
    regions = _regions(out, name)
    for cell in out.cells:
        cell.metadata.pop("nbgrader", None)
    owner: dict[str, int] = {}

    def assign(index: int, grade_id: str, **kw: Any) -> None:
        grade_id = _GRADE_ID.sub("-", grade_id)
        if grade_id in owner:
            first = owner[grade_id]
            raise ValueError(
                f"{_cell_where(name, index, out.cells[index])}: grade id "
                f"{grade_id!r} is already the id of "
                f"{_cell_where(name, first, out.cells[first])}; exercise labels and "
                "function names must be unique"
            )
        owner[grade_id] = index
        out.cells[index].metadata["nbgrader"] = _nbgrader(grade_id, **kw)

    answers: dict[str, int] = {}
    for region in regions:
        n_code = 0
        for index in region.cells:
            if out.cells[index].cell_type == "code":
                n_code += 1
                base = region.name or region.label
                grade_id = base if n_code == 1 else f"{base}-{n_code}"
                assign(index, grade_id, solution=True, grade=False, locked=False,
                       points=None)
            else:
                k = answers[region.label] = answers.get(region.label, 0) + 1
                grade_id = f"{region.label}-answer" + ("" if k == 1 else f"-{k}")
                assign(index, grade_id, solution=True, grade=True, locked=False,
                       points=0)
        if region.test is not None:
            assign(region.test, region.checker, solution=False, grade=True, locked=True,
                   points=TEST_POINTS)
    return out


# ------------------------------------------------------------------------------------
# Student versions
# ------------------------------------------------------------------------------------


@dataclass
class _Split:
    notebook: NotebookNode
    solution: list[str] = field(default_factory=list)  # lines removed for the student
    outside: list[str] = field(default_factory=list)  # lines the student version keeps


def _split(nb: Any, name: str) -> _Split:
    _check_notebook(nb)
    if _has_gates(nb):
        raise ValueError(
            f"{name}: the notebook holds the book's {{solution-start}} gates; convert it to the "
            "stored form first (python book/_ext/notebook_form.py --write <notebook>)"
        )
    student = copy.deepcopy(nb)
    regions = _regions(student, name)
    in_region = {i for r in regions for i in r.cells}
    split = _Split(student)
    for index, cell in enumerate(student.cells):
        source = _source(cell)
        if cell.get("cell_type") == "code":
            cell.outputs = []
            cell.execution_count = None
        if index not in in_region:
            split.outside += source.split("\n")
        elif cell.cell_type == "code":
            where = _cell_where(name, index, cell)
            cell.source, removed, kept = _strip_code(source, where)
            _show_skeleton(cell)
            split.solution += removed
            split.outside += [ln for ln in kept if not _TITLE.match(ln)]
        else:
            split.solution += [_WRAPPER.sub("", ln) for ln in source.split("\n")]
            cell.source = ANSWER_PLACEHOLDER
    meta = student.metadata.get("effx_lab")
    meta = dict(meta) if isinstance(meta, dict) else {}
    meta["student_version"] = True
    student.metadata["effx_lab"] = meta
    return split


def make_student_notebook(nb: NotebookNode, *, name: str = "notebook") -> NotebookNode:
    """The student version of ``nb`` (a new notebook; ``nb`` is not modified). Pure: no
    file access.

    Every solution region of a code cell becomes :data:`PLACEHOLDER`, every model answer
    :data:`ANSWER_PLACEHOLDER`; solution code cells lose their ``#@title`` line and form
    view; outputs and execution counts are cleared, and the notebook metadata gets
    ``"effx_lab": {"student_version": true}``. Cells keep their ``effx`` and
    ``nbgrader`` metadata. ``name`` (e.g. the notebook's path) is used in the
    ``ValueError`` raised for inconsistent marks (see this module's docstring).
    """
    return _split(nb, _check_name(name)).notebook


def solution_lines(nb: NotebookNode, *, name: str = "notebook") -> set[str]:
    """The stripped, non-trivial lines inside the solution regions of ``nb`` (code and
    model answers).

    A line that also appears outside every solution region of the same notebook is left
    out, as are lines with fewer than three letters or digits, bare keywords (``else:``,
    ``pass``...) and the ``<details>`` wrapper of an answer. A test checks that none of
    these lines appears in the student version.
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


# ------------------------------------------------------------------------------------
# nbgrader's side: the preprocessor that shows the skeletons
# ------------------------------------------------------------------------------------


def _is_solution_code(cell: NotebookNode) -> bool:
    if cell.get("cell_type") != "code":
        return False
    meta = cell.get("metadata", {})
    grader, effx = meta.get("nbgrader"), meta.get("effx")
    return bool(
        (isinstance(grader, dict) and grader.get("solution"))
        or (isinstance(effx, dict) and effx.get("solution"))
    )


def _require_nbgrader() -> Any:
    try:
        import nbgrader.preprocessors as pp
    except ImportError as exc:
        raise ImportError(
            "nbgrader is not installed: pip install 'effx_lab[instructor]' "
            "(nbgrader 0.9.6)"
        ) from exc
    return pp


def _make_show_skeletons() -> type:
    pp = _require_nbgrader()

    class ShowSkeletons(pp.NbGraderPreprocessor):
        """nbgrader preprocessor: a solution code cell of the release shows its skeleton
        in Colab.

        It drops the cell's ``#@title`` first line and its form view (``cellView``),
        which fold the solution in the instructors' copy. Run it after
        ``ClearSolutions`` and before ``ComputeChecksums``
        (:func:`effx_lab.student.nbgrader_preprocessors` does).
        """

        def preprocess_cell(
            self, cell: NotebookNode, resources: dict, index: int
        ) -> tuple[NotebookNode, dict]:
            if _is_solution_code(cell):
                _show_skeleton(cell)
            return cell, resources

    ShowSkeletons.__module__ = __name__
    ShowSkeletons.__qualname__ = "ShowSkeletons"
    return ShowSkeletons


def __getattr__(attr: str) -> Any:
    # ShowSkeletons subclasses nbgrader's preprocessor: made on first use, so that
    # nbgrader stays optional
    if attr == "ShowSkeletons":
        cls = _make_show_skeletons()
        globals()[attr] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")


def nbgrader_preprocessors() -> list:
    """nbgrader's ``GenerateAssignment`` preprocessors, with ``ShowSkeletons`` right
    after ``ClearSolutions``.

    For an nbgrader course's ``nbgrader_config.py`` (:data:`NBGRADER_CONFIG`)::

        from effx_lab.student import nbgrader_preprocessors
        c.GenerateAssignment.preprocessors = nbgrader_preprocessors()

    Needs nbgrader (``pip install 'effx_lab[instructor]'``); ``ImportError`` without it.
    """
    pp = _require_nbgrader()
    from nbgrader.converters import GenerateAssignment

    default = list(GenerateAssignment.class_traits()["preprocessors"].default())
    if pp.ClearSolutions not in default:  # pragma: no cover - a future nbgrader
        raise RuntimeError(f"nbgrader's GenerateAssignment lacks ClearSolutions: "
                           f"{default}")
    cls = __getattr__("ShowSkeletons")
    at = default.index(pp.ClearSolutions) + 1
    return [*default[:at], cls, *default[at:]]


# ------------------------------------------------------------------------------------
# Files
# ------------------------------------------------------------------------------------


def _as_path(argname: str, value: Any) -> Path:
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(
            f"{argname} must be a path (str or pathlib.Path), got {describe(value)}"
        )
    return Path(value)


def write_student_version(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Read the notebook ``src``, write its student version to ``dst`` (parents
    created); return ``dst``."""
    src_path, dst_path = _as_path("src", src), _as_path("dst", dst)
    if not src_path.is_file():
        raise ValueError(
            f"src must be an existing notebook file, got {str(src_path)!r} "
            "(no such file)"
        )
    if src_path.suffix != ".ipynb":
        raise ValueError(f"src must be a .ipynb notebook, got {str(src_path)!r}")
    if dst_path.resolve() == src_path.resolve():
        raise ValueError(
            f"dst must differ from src (writing {str(dst_path)!r} would erase its "
            "solutions)"
        )
    nb = nbformat.read(src_path, as_version=4)
    student = make_student_notebook(nb, name=str(src_path))
    dst_path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(student, dst_path)
    return dst_path


def _skipped(rel: Path) -> bool:
    # hidden folders (.ipynb_checkpoints, .venv, ...) and Jupyter Book's build output
    return any(part.startswith(".") or part == "_build" for part in rel.parts[:-1])


def _notebooks_under(src_dir: Path, dst_dir: Path | None = None) -> list[Path]:
    """The ``*.ipynb`` files under ``src_dir``, sorted, without hidden and ``_build``
    folders and without those under ``dst_dir``."""
    dst_abs = dst_dir.resolve() if dst_dir is not None else None
    found = []
    for path in sorted(src_dir.rglob("*.ipynb")):
        inside_dst = dst_abs is not None and path.resolve().is_relative_to(dst_abs)
        if not _skipped(path.relative_to(src_dir)) and not inside_dst:
            found.append(path)
    return found


def write_student_versions(
    src_dir: str | os.PathLike, dst_dir: str | os.PathLike
) -> list[Path]:
    """Write the student version of every ``*.ipynb`` under ``src_dir`` to the same
    place under ``dst_dir``.

    Hidden folders (``.ipynb_checkpoints``...) and ``_build`` folders are skipped, and
    so is ``dst_dir`` itself when it lies inside ``src_dir``. Every notebook is
    converted before any file is written, so inconsistent marks in one notebook leave
    ``dst_dir`` untouched. Returns the written paths, sorted.
    """
    src_root, dst_root = _as_path("src_dir", src_dir), _as_path("dst_dir", dst_dir)
    if not src_root.is_dir():
        raise ValueError(f"src_dir must be an existing folder, got {str(src_root)!r}")
    if dst_root.resolve() == src_root.resolve():
        raise ValueError(
            f"dst_dir must differ from src_dir (got {str(dst_root)!r} for both): it "
            "would erase the solutions"
        )
    converted: list[tuple[Path, NotebookNode]] = []
    for path in _notebooks_under(src_root, dst_root):
        nb = make_student_notebook(nbformat.read(path, as_version=4), name=str(path))
        converted.append((dst_root / path.relative_to(src_root), nb))
    written = []
    for target, nb in converted:
        target.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, target)
        written.append(target)
    return written


def write_nbgrader_course(
    src: str | os.PathLike,
    course_dir: str | os.PathLike,
    *,
    assignment: str | None = None,
) -> list[Path]:
    """Put course notebooks into an nbgrader course folder, as its assignments' source.

    ``src`` is a notebook or a folder of them. Each notebook goes to
    ``course_dir/source/<assignment>/<notebook>.ipynb`` with its nbgrader metadata
    (:func:`add_nbgrader_metadata`, which also validates it); ``assignment`` defaults to
    the name of the notebook's folder (``ch02_quantization``).
    ``course_dir/nbgrader_config.py`` is written from :data:`NBGRADER_CONFIG` unless it
    exists. Every notebook is converted before any file is written. Returns the written
    notebooks, sorted.
    """
    src_path, course = _as_path("src", src), _as_path("course_dir", course_dir)
    if assignment is not None and (
        not isinstance(assignment, str) or not _ASSIGNMENT.fullmatch(assignment)
    ):
        raise ValueError(
            "assignment must be an nbgrader assignment name (letters, digits, _ . -), "
            f"got {assignment!r}"
        )
    if src_path.is_dir():
        paths = _notebooks_under(src_path, course)
        if not paths:
            raise ValueError(
                f"src must hold notebooks (*.ipynb), found none under {str(src_path)!r}"
            )
    elif src_path.is_file() and src_path.suffix == ".ipynb":
        paths = [src_path]
    else:
        raise ValueError(
            f"src must be a .ipynb notebook or a folder of them, got {str(src_path)!r}"
        )
    planned: dict[Path, NotebookNode] = {}
    for path in paths:
        folder = assignment or path.parent.resolve().name
        if not _ASSIGNMENT.fullmatch(folder):
            raise ValueError(
                f"{path}: its folder {folder!r} is no nbgrader assignment name; pass "
                "assignment="
            )
        target = course / "source" / folder / path.name
        if target in planned:
            raise ValueError(
                f"{path}: two notebooks named {path.name!r} would go to assignment "
                f"{folder!r}"
            )
        nb = nbformat.read(path, as_version=4)
        planned[target] = add_nbgrader_metadata(nb, name=str(path))
    for target, nb in planned.items():
        target.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, target)
    config = course / "nbgrader_config.py"
    if not config.exists():
        config.write_text(NBGRADER_CONFIG, encoding="utf-8")
    return sorted(planned)
