"""effx_lab.student and the `effx-lab` CLI: student versions and nbgrader metadata from
the stored form.

The notebooks here are synthetic stored-form notebooks (metadata marks, `#@title`
solution cells, `<details>` answers); tests/book/test_notebooks_student.py runs the same
functions on the course's notebooks and tests/book/test_nbgrader.py compares them with
the real nbgrader.
"""

from __future__ import annotations

import copy
import sys
import types

import nbformat
import pytest
from nbformat.v4 import (
    new_code_cell,
    new_markdown_cell,
    new_notebook,
    new_output,
    new_raw_cell,
)

from effx_lab import __version__, student
from effx_lab.cli import main
from effx_lab.student import (
    ANSWER_PLACEHOLDER,
    NBGRADER_CONFIG,
    PLACEHOLDER,
    TEST_POINTS,
    add_nbgrader_metadata,
    make_student_notebook,
    solution_lines,
    write_nbgrader_course,
    write_student_version,
    write_student_versions,
)

PLACE_1, PLACE_2 = PLACEHOLDER
KERNEL = {
    "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}
}

QUANTIZE_CELL = '''#@title Solution: quantize (double-click to show)
def quantize(x):
    """Round to quarters and clip to [-1, 1]."""
    # hint: multiply by four first
    ### BEGIN SOLUTION
    import numpy as np
    scaled = np.round(x * 4) / 4
    return np.clip(scaled, -1, 1)
    ### END SOLUTION'''

STEPPER_CELL = """#@title Solution: Stepper (double-click to show)
class Stepper:
    def step(self, x):
        if x > 0:
            ### BEGIN SOLUTION
            return x - 1
            ### END SOLUTION
        return 0

def helper(v):
    ### BEGIN SOLUTION
    return v * 3 + 11
    ### END SOLUTION"""

ANSWER = "<details>\n<summary>Answer</summary>\n\nThe trick is to multiply by four before rounding.\n\n</details>"


def _mark(cell, **effx):
    cell.metadata["effx"] = effx
    return cell


def _solution_code(source, label):
    cell = _mark(new_code_cell(source), solution=label)
    cell.metadata["cellView"] = "form"
    return cell


def course_notebook() -> nbformat.NotebookNode:
    """A stored-form notebook with every kind of mark: a code exercise with a model answer, a code
    exercise of two cells (a class and a helper), a reasoning exercise answered in prose only.
    """
    setup = new_code_cell(
        "import numpy as np\nfrom effx_lab.check import Case, check_function, report",
        execution_count=1,
    )
    setup.outputs = [new_output("stream", name="stdout", text="device: cpu\n")]
    solved = _solution_code(QUANTIZE_CELL, "ex-quant")
    solved.outputs = [
        new_output("execute_result", data={"text/plain": "42"}, execution_count=2)
    ]
    solved.execution_count = 2
    stale = new_code_cell("print('no grade here')")
    stale.metadata["nbgrader"] = {
        "grade": True,
        "grade_id": "old",
        "points": 3,
        "solution": False,
        "locked": False,
        "schema_version": 3,
    }
    cells = [
        new_markdown_cell("# Quantization\nRound to a grid of quarters."),  # 0
        setup,  # 1
        _mark(
            new_markdown_cell("#### ✏️ Exercise: Quantize\n\nWrite `quantize(x)`."),
            exercise="ex-quant",
        ),  # 2
        solved,  # 3
        _mark(new_markdown_cell(ANSWER), solution="ex-quant"),  # 4
        new_code_cell("check_quantize(quantize)"),  # 5
        _mark(
            new_markdown_cell(
                "#### ✏️ Exercise: Steps\n\nWrite `Stepper` and `helper`."
            ),
            exercise="ex-step",
        ),  # 6
        _solution_code(
            "#@title Solution: stepper\nimport math\n\ndef stepper(x):\n    ### BEGIN SOLUTION\n    return Stepper().step(x)\n"
            "    ### END SOLUTION",
            "ex-step",
        ),  # 7
        _solution_code(STEPPER_CELL, "ex-step"),  # 8
        new_code_cell("check_stepper(stepper)"),  # 9
        _mark(
            new_markdown_cell("#### ✏️ Exercise: Why\n\nWhy quarters?"),
            exercise="ex-why",
        ),  # 10
        _mark(
            new_markdown_cell(
                "<details><summary>Answer</summary>\n\nBecause rounding halves go to even."
                "\n\n</details>"
            ),
            solution="ex-why",
        ),  # 11
        stale,  # 12
        new_markdown_cell(
            "How to mark a solution: put it between `BEGIN` and `END` markers."
        ),  # 13
        new_raw_cell("raw text stays"),  # 14
    ]
    return new_notebook(cells=cells, metadata=dict(KERNEL))


def text_lines(nb) -> set[str]:
    return {line.strip() for cell in nb.cells for line in cell.source.splitlines()}


# --------------------------------------------------------------------------------------------------
# Student versions
# --------------------------------------------------------------------------------------------------


def test_student_version_replaces_solutions_and_keeps_the_skeletons():
    nb = course_notebook()
    before = copy.deepcopy(nb)
    st = make_student_notebook(nb)
    assert nb == before  # pure: the input is not modified
    assert len(st.cells) == len(nb.cells)
    src = [c.source for c in st.cells]
    assert src[0] == nb.cells[0].source and src[2] == nb.cells[2].source
    # the skeleton, without the #@title line, placeholder indented like the BEGIN marker
    assert src[3] == (
        'def quantize(x):\n    """Round to quarters and clip to [-1, 1]."""\n    # hint: multiply by four first\n'
        f"    {PLACE_1}\n    {PLACE_2}"
    )
    assert "cellView" not in st.cells[3].metadata and st.cells[3].metadata["effx"] == {
        "solution": "ex-quant"
    }
    assert src[4] == ANSWER_PLACEHOLDER and src[11] == ANSWER_PLACEHOLDER
    assert src[5] == "check_quantize(quantize)"
    assert f"            {PLACE_1}\n            {PLACE_2}\n        return 0" in src[8]
    assert (
        src[8].startswith("class Stepper:")
        and f"def helper(v):\n    {PLACE_1}\n    {PLACE_2}" in src[8]
    )
    assert src[13:] == [nb.cells[13].source, "raw text stays"]
    assert st.metadata["effx_lab"] == {"student_version": True}
    assert st.metadata["kernelspec"]["name"] == "python3"
    for cell in st.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None
    nbformat.validate(st)


def test_solution_lines_are_found_and_none_leaks():
    nb = course_notebook()
    secrets = solution_lines(nb)
    for line in [
        "scaled = np.round(x * 4) / 4",
        "return np.clip(scaled, -1, 1)",
        "return x - 1",
        "return v * 3 + 11",
        "return Stepper().step(x)",
        "The trick is to multiply by four before rounding.",
        "Because rounding halves go to even.",
    ]:
        assert line in secrets, line
    assert "import numpy as np" not in secrets  # also outside the solution regions
    assert not any("details" in s or "summary" in s or "@title" in s for s in secrets)
    assert "### BEGIN SOLUTION" not in secrets
    assert not secrets & text_lines(make_student_notebook(nb))


def test_the_book_s_gated_form_is_refused_with_the_way_out():
    """A notebook still in the book's MyST (gates) must be converted first, never half-read."""
    stored = course_notebook()
    myst = copy.deepcopy(stored)
    myst.cells.insert(1, new_markdown_cell("```{solution-start} ex-1\n:class: dropdown\n```"))
    for make in (make_student_notebook, solution_lines):
        with pytest.raises(ValueError, match="convert it to the stored form first"):
            make(myst)
    with pytest.raises(ValueError, match="convert it to the stored form first"):
        add_nbgrader_metadata(myst, name="x.ipynb")


def _grader(**kw):
    return {"schema_version": 3, **kw}


def test_nbgrader_metadata_per_cell_kind():
    nb = course_notebook()
    before = copy.deepcopy(nb)
    graded = add_nbgrader_metadata(nb, name="q.ipynb")
    assert nb == before  # pure
    meta = [c.metadata.get("nbgrader") for c in graded.cells]
    solution = dict(solution=True, grade=False, locked=False)
    answer = dict(solution=True, grade=True, locked=False, points=0)
    test = dict(solution=False, grade=True, locked=True, points=TEST_POINTS)
    assert meta == [
        None,
        None,
        None,
        _grader(grade_id="quantize", **solution),
        _grader(grade_id="ex-quant-answer", **answer),
        _grader(grade_id="check_quantize", **test),
        None,
        _grader(grade_id="stepper", **solution),
        _grader(grade_id="stepper-2", **solution),
        _grader(grade_id="check_stepper", **test),
        None,
        _grader(grade_id="ex-why-answer", **answer),
        None,  # the stale metadata of a cell the marks do not explain is removed
        None,
        None,
    ]
    assert TEST_POINTS == 1
    # the marks and the rest of the notebook are untouched
    for a, b in zip(nb.cells, graded.cells):
        assert a.source == b.source and {
            k: v for k, v in b.metadata.items() if k != "nbgrader"
        } == {k: v for k, v in a.metadata.items() if k != "nbgrader"}
    assert add_nbgrader_metadata(graded, name="q.ipynb") == graded  # idempotent
    nbformat.validate(graded)


@pytest.mark.instructor
def test_nbgrader_metadata_validates_with_nbgrader_when_installed():
    validator = pytest.importorskip("nbgrader.nbgraderformat.v3")
    validator.MetadataValidatorV3().validate_nb(
        add_nbgrader_metadata(course_notebook())
    )


def _notebook(*cells):
    return new_notebook(cells=list(cells), metadata=dict(KERNEL))


def _ex(label="ex-a"):
    return _mark(new_markdown_cell("#### ✏️ Exercise: A\n\nDo it."), exercise=label)


def _sol(
    source="def f(x):\n    ### BEGIN SOLUTION\n    return x\n    ### END SOLUTION",
    label="ex-a",
):
    return _solution_code(source, label)


@pytest.mark.parametrize(
    "cells, text",
    [
        (
            [_ex(), _sol("x = 1\n### END SOLUTION"), new_code_cell("check_f(f)")],
            r"cell 2 \(code cell.*'### END SOLUTION' on line 2 has no matching",
        ),
        (
            [_ex(), _sol("def f():\n    ### BEGIN SOLUTION\n    return 1")],
            "line 2 is never closed",
        ),
        (
            [_ex(), _sol("### BEGIN SOLUTION\n### BEGIN SOLUTION\n### END SOLUTION")],
            "on line 2 is inside the solution region opened on line 1",
        ),
        (
            [
                _ex(),
                _sol(
                    "def f():\n    # BEGIN SOLUTION\n    return 1\n    # END SOLUTION"
                ),
            ],
            "line 2: write the marker as '### BEGIN SOLUTION' alone on its line",
        ),
        ([_ex(), _sol("def f(x):\n    return x")], "must hold a '### BEGIN SOLUTION'"),
        (
            [
                _ex(),
                new_code_cell(
                    "def f():\n    ### BEGIN SOLUTION\n    return 1\n    ### END SOLUTION"
                ),
            ],
            "cell 2 .*line 2 holds a solution marker but the cell is not a solution cell",
        ),
        (
            [
                new_markdown_cell(
                    "Put the answer between BEGIN SOLUTION and END SOLUTION."
                )
            ],
            "cell 1 .*not a solution cell.*nbgrader would refuse",
        ),
        ([_ex(), _sol()], "cell 2 .*holds code, so the next cell must be its test"),
        (
            [_ex(), _sol(), new_code_cell("print(f(1))")],
            "the next cell must be its test",
        ),
        (
            [_ex(), _sol(), new_code_cell("check_g(g)")],
            "cell 3 .*checks 'g', which the solution of 'ex-a'",
        ),
        (
            [_sol(), new_code_cell("check_f(f)")],
            "cell 1 .*no exercise statement .*effx.exercise = 'ex-a'",
        ),
        (
            [_ex(), _mark(new_raw_cell("x"), solution="ex-a")],
            "must be a code or markdown cell, not 'raw'",
        ),
        ([_mark(new_code_cell("x = 1"), exercise="ex-a")], "must be a markdown cell"),
        (
            [_ex(), _mark(new_markdown_cell("### BEGIN SOLUTION\nx"), solution="ex-a")],
            "a model answer must not contain solution markers",
        ),
        ([_mark(new_markdown_cell("x"), exercise="ex-a", solution="ex-a")], "not both"),
        ([_mark(new_markdown_cell("x"), solution="")], "must be the exercise's label"),
        (
            [new_markdown_cell("x", metadata={"effx": "ex-a"})],
            "metadata 'effx' must be a dict",
        ),
        (
            [
                _ex(),
                _sol(),
                new_code_cell("check_f(f)"),
                _ex("ex-b"),
                _sol(label="ex-b"),
                new_code_cell("check_f(f)"),
            ],
            "cell 5 .*grade id 'f' is already the id of .*cell 2",
        ),
    ],
)
def test_inconsistent_marks_raise_naming_notebook_and_cell(cells, text):
    nb = _notebook(*cells)
    with pytest.raises(ValueError, match=text) as info:
        add_nbgrader_metadata(nb, name="ch01/01.1_memory.ipynb")
    assert str(info.value).startswith("ch01/01.1_memory.ipynb: cell ")
    if "grade id" not in text:  # the student version validates the same marks
        with pytest.raises(ValueError, match=text):
            make_student_notebook(nb, name="ch01/01.1_memory.ipynb")


def test_bad_inputs():
    with pytest.raises(TypeError, match="nb must be an nbformat.NotebookNode"):
        make_student_notebook({"cells": []})
    with pytest.raises(TypeError, match="nb must be an nbformat.NotebookNode"):
        add_nbgrader_metadata([])
    with pytest.raises(TypeError, match="name must be a non-empty str"):
        make_student_notebook(new_notebook(), name="")
    with pytest.raises(TypeError, match="name must be a non-empty str"):
        add_nbgrader_metadata(new_notebook(), name=3)
    with pytest.raises(TypeError, match="src must be a path"):
        write_student_version(3, "out.ipynb")


def test_nbgrader_stays_optional(monkeypatch):
    """Without nbgrader the module imports and says what to install when its nbgrader parts are asked for."""
    monkeypatch.setitem(sys.modules, "nbgrader", None)
    monkeypatch.setitem(sys.modules, "nbgrader.preprocessors", None)
    monkeypatch.delitem(student.__dict__, "ShowSkeletons", raising=False)
    with pytest.raises(ImportError, match=r"effx_lab\[instructor\]"):
        student.nbgrader_preprocessors()
    with pytest.raises(ImportError, match=r"effx_lab\[instructor\]"):
        student.ShowSkeletons  # noqa: B018
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        student.nothing  # noqa: B018


# --------------------------------------------------------------------------------------------------
# Files, folders and the CLI
# --------------------------------------------------------------------------------------------------


def _write(path, nb):
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


def test_write_student_versions_mirrors_the_tree(tmp_path):
    src, dst = tmp_path / "notebooks", tmp_path / "student"
    _write(src / "ch01_costs" / "01.1_memory.ipynb", course_notebook())
    _write(src / "ch02_quant" / "02.1_basics.ipynb", course_notebook())
    _write(
        src / "ch01_costs" / ".ipynb_checkpoints" / "01.1_memory-checkpoint.ipynb",
        course_notebook(),
    )
    written = write_student_versions(src, dst)
    assert written == [
        dst / "ch01_costs" / "01.1_memory.ipynb",
        dst / "ch02_quant" / "02.1_basics.ipynb",
    ]
    for path in written:
        nb = nbformat.read(path, as_version=4)
        assert nb.metadata["effx_lab"]["student_version"] is True
        assert not solution_lines(course_notebook()) & text_lines(nb)
    assert not (dst / "ch01_costs" / ".ipynb_checkpoints").exists()
    # a destination inside the source tree is not converted again on the next run
    inner = src / "student"
    assert len(write_student_versions(src, inner)) == 2
    assert len(write_student_versions(src, inner)) == 2
    with pytest.raises(ValueError, match="dst_dir must differ from src_dir"):
        write_student_versions(src, src)
    with pytest.raises(ValueError, match="src_dir must be an existing folder"):
        write_student_versions(tmp_path / "missing", dst)
    # inconsistent marks in one notebook: nothing is written
    broken = course_notebook()
    broken.cells[5].source = "print('not a test')"
    _write(src / "ch03" / "03.1.ipynb", broken)
    with pytest.raises(
        ValueError, match="03.1.ipynb: cell 5 .*next cell must be its test"
    ):
        write_student_versions(src, tmp_path / "fresh")
    assert not (tmp_path / "fresh").exists()


def test_write_student_version_refuses_to_overwrite_the_source(tmp_path):
    src = _write(tmp_path / "a.ipynb", course_notebook())
    with pytest.raises(ValueError, match="would erase its solutions"):
        write_student_version(src, tmp_path / "." / "a.ipynb")
    with pytest.raises(ValueError, match="no such file"):
        write_student_version(tmp_path / "missing.ipynb", tmp_path / "b.ipynb")
    out = write_student_version(src, tmp_path / "out" / "b.ipynb")
    assert PLACE_2 in nbformat.read(out, as_version=4).cells[3].source


def test_write_nbgrader_course(tmp_path):
    src = tmp_path / "notebooks"
    _write(src / "ch01_costs" / "01.1_memory.ipynb", course_notebook())
    _write(src / "ch02_quant" / "02.1_basics.ipynb", course_notebook())
    course = tmp_path / "course"
    written = write_nbgrader_course(src, course)
    assert written == [
        course / "source" / "ch01_costs" / "01.1_memory.ipynb",
        course / "source" / "ch02_quant" / "02.1_basics.ipynb",
    ]
    assert nbformat.read(written[0], as_version=4) == add_nbgrader_metadata(
        nbformat.read(src / "ch01_costs" / "01.1_memory.ipynb", as_version=4)
    )
    config = course / "nbgrader_config.py"
    assert config.read_text() == NBGRADER_CONFIG
    assert (
        "c.GenerateAssignment.preprocessors = nbgrader_preprocessors()"
        in NBGRADER_CONFIG
    )
    config.write_text("# mine\n")
    one = write_nbgrader_course(
        src / "ch01_costs" / "01.1_memory.ipynb", course, assignment="week1"
    )
    assert one == [course / "source" / "week1" / "01.1_memory.ipynb"]
    assert config.read_text() == "# mine\n"  # an existing configuration is kept
    with pytest.raises(
        ValueError, match="assignment must be an nbgrader assignment name"
    ):
        write_nbgrader_course(src, course, assignment="a b")
    with pytest.raises(ValueError, match="two notebooks named '01.1_memory.ipynb'"):
        _write(src / "ch02_quant" / "01.1_memory.ipynb", course_notebook())
        write_nbgrader_course(src, tmp_path / "c2", assignment="all")
    with pytest.raises(ValueError, match="src must be a .ipynb notebook or a folder"):
        write_nbgrader_course(tmp_path / "missing", course)
    with pytest.raises(TypeError, match="course_dir must be a path"):
        write_nbgrader_course(src, 3)


def test_cli_student_and_nbgrader(tmp_path, capsys):
    src = _write(tmp_path / "nbs" / "sub" / "x.ipynb", course_notebook())
    assert main(["student", str(tmp_path / "nbs"), str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "sub" / "x.ipynb").exists()
    assert "1 student notebook written" in capsys.readouterr().out
    assert main(["student", str(src), str(tmp_path / "single.ipynb")]) == 0
    (tmp_path / "folder").mkdir()
    assert main(["student", str(src), str(tmp_path / "folder")]) == 0
    assert (tmp_path / "folder" / "x.ipynb").exists()
    capsys.readouterr()
    assert main(["nbgrader", str(tmp_path / "nbs"), str(tmp_path / "course")]) == 0
    out = capsys.readouterr().out
    assert (tmp_path / "course" / "source" / "sub" / "x.ipynb").exists()
    assert "nbgrader generate_assignment sub" in out
    # errors are one line on stderr and a non-zero status, not a traceback
    _write(
        tmp_path / "broken.ipynb",
        new_notebook(cells=[new_code_cell("### END SOLUTION")]),
    )
    assert (
        main(["student", str(tmp_path / "broken.ipynb"), str(tmp_path / "b.ipynb")])
        == 1
    )
    err = capsys.readouterr().err
    assert err.startswith("effx-lab student: error:") and "broken.ipynb: cell 1" in err
    assert main(["nbgrader", str(tmp_path / "broken.ipynb"), str(tmp_path / "c")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("effx-lab nbgrader: error:") and "broken.ipynb: cell 1" in err
    (tmp_path / "empty").mkdir()
    assert main(["student", str(tmp_path / "empty"), str(tmp_path / "o2")]) == 1
    assert "no notebooks" in capsys.readouterr().err


def test_cli_version_usage_and_bench_delegation(monkeypatch, capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"effx-lab {__version__}"
    assert main([]) == 2
    assert "usage: effx-lab" in capsys.readouterr().err
    calls = []
    fake = types.ModuleType("effx_lab.bench.__main__")
    fake.main = lambda argv: calls.append(argv) or 0
    monkeypatch.setitem(sys.modules, "effx_lab.bench.__main__", fake)
    assert main(["bench", "costs", "--quick"]) == 0
    assert main(["bench", "quant"]) == 0
    assert calls == [["costs", "--quick"], ["quant"]]
    with pytest.raises(TypeError, match="argv must be a list of str"):
        main("student a b")


# --------------------------------------------------------------------------------------------------
# Executing notebooks: the student version runs to the end; the solution passes in strict mode
# --------------------------------------------------------------------------------------------------

EXERCISE_CELL = """#@title Solution: quantize
def quantize(x):
    ### BEGIN SOLUTION
    return np.clip(np.round(x * 4) / 4, -1, 1)
    ### END SOLUTION"""

CHECK_DEFINITION = """def _reference(x):
    return np.clip(np.round(x * 4) / 4, -1, 1)

_cases = [
    Case("odd sizes: 3x7", (np.linspace(-2, 2, 21).reshape(3, 7),)),
    Case("extreme values (1e30)", (np.array([1e30, -1e30, 0.3]),)),
]

def check_quantize(fn):
    return report(check_function(fn, _reference, _cases, name="quantize"))"""


def executable_notebook():
    return _notebook(
        new_code_cell(
            "import numpy as np\nfrom effx_lab.check import Case, check_function, report"
        ),
        new_code_cell(CHECK_DEFINITION),
        _mark(
            new_markdown_cell("#### ✏️ Exercise: quantize\n\nWrite it."), exercise="ex"
        ),
        _solution_code(EXERCISE_CELL, "ex"),
        _mark(
            new_markdown_cell(
                "<details><summary>Answer</summary>\n\nSolution prose.\n\n</details>"
            ),
            solution="ex",
        ),
        new_code_cell("check_quantize(quantize)"),
        new_code_cell('print("reached the end")'),
    )


def _run(client, nb):
    client.nb = nb  # nbclient stores each executed cell back into client.nb
    for index, cell in enumerate(nb.cells):
        client.execute_cell(cell, index)
    return "".join(
        out.get("text", "")
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.outputs
    )


@pytest.mark.slow
def test_student_notebook_runs_and_the_solution_passes_in_strict_mode(
    tmp_path, monkeypatch
):
    """One kernel (a kernel start costs seconds) runs three notebooks one after the other."""
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    monkeypatch.delenv("EFFX_CHECK_STRICT", raising=False)
    monkeypatch.delenv("NBGRADER_EXECUTION", raising=False)
    st = make_student_notebook(executable_notebook())
    assert PLACE_2 in st.cells[3].source
    solution = executable_notebook()
    strict_student = make_student_notebook(executable_notebook())
    client = NotebookClient(
        st,
        timeout=120,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    with client.setup_kernel():
        # 1. the student version, default mode: runs to the end and says "not attempted"
        out = _run(client, st)
        assert "✏️ quantize: not attempted yet" in out
        assert "reached the end" in out
        # 2. the solution version in strict mode (as the course's CI runs it): passes
        _run(
            client,
            _notebook(
                new_code_cell("import os\nos.environ['EFFX_CHECK_STRICT'] = '1'")
            ),
        )
        out = _run(client, solution)
        assert (
            "✅ quantize: passed all 2 cases (odd sizes, extreme values (1e30))" in out
        )
        assert "reached the end" in out
        # 3. the student version in strict mode: the checker cell fails the run
        with pytest.raises(CellExecutionError, match="CheckerError"):
            _run(client, strict_student)
