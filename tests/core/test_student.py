"""effx_lab.student and the `effx-lab` CLI: student versions keep exercises, drop solutions, and run."""
from __future__ import annotations

import copy
import sys
import types

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output, new_raw_cell

from effx_lab import __version__
from effx_lab.cli import main
from effx_lab.student import (
    PLACEHOLDER,
    make_student_notebook,
    solution_lines,
    write_student_version,
    write_student_versions,
)

PLACE_1, PLACE_2 = PLACEHOLDER

QUANTIZE_CELL = '''def quantize(x):
    """Round to quarters and clip to [-1, 1]."""
    ### BEGIN SOLUTION
    import numpy as np
    scaled = np.round(x * 4) / 4
    return np.clip(scaled, -1, 1)
    ### END SOLUTION'''

NESTED_CELL = """class Stepper:
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

CHECKER_CELL = 'report(check_function(quantize, _reference, _cases, name="quantize"))'


def course_notebook() -> nbformat.NotebookNode:
    """A notebook using every kind of solution marker the course supports."""
    setup = new_code_cell("import numpy as np\nfrom effx_lab.check import Case, check_function, report", execution_count=1)
    setup.outputs = [new_output("stream", name="stdout", text="device: cpu\n")]
    solved = new_code_cell(QUANTIZE_CELL, execution_count=2)
    solved.outputs = [new_output("execute_result", data={"text/plain": "42"}, execution_count=2)]
    tagged = new_markdown_cell("Tagged solution prose that must vanish.")
    tagged.metadata["tags"] = ["solution"]
    cells = [
        new_markdown_cell("# Quantization\nRound to a grid of quarters."),  # 0
        setup,  # 1
        new_markdown_cell("```{exercise} ex-quant\nWrite `quantize(x)`.\n```"),  # 2
        new_markdown_cell("```{solution-start} ex-quant\n:class: dropdown\n```"),  # 3
        new_markdown_cell("The trick is to multiply by four before rounding."),  # 4
        solved,  # 5
        new_markdown_cell("```{solution-end}\n```"),  # 6
        new_code_cell(NESTED_CELL),  # 7
        new_markdown_cell(
            "````{solution} ex-quant\n:class: dropdown\n```python\nsecret_solution_line = 42\n```\n"
            "Because rounding halves go to even.\n````"
        ),  # 8
        new_markdown_cell(
            "Answer: <!-- BEGIN SOLUTION -->the cache grows linearly with sequence length<!-- END SOLUTION -->\n"
            "More visible text.\n<!-- BEGIN SOLUTION -->\nhidden explanation line one\n<!-- END SOLUTION -->"
        ),  # 9
        tagged,  # 10
        new_code_cell(CHECKER_CELL),  # 11
        new_markdown_cell("How to mark prose:\n```md\n<!-- BEGIN SOLUTION -->\n```{solution-end}\n```"),  # 12
        new_raw_cell("raw text stays"),  # 13
    ]
    return new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})


def text_lines(nb) -> set[str]:
    return {line.strip() for cell in nb.cells for line in cell.source.splitlines()}


def test_student_version_replaces_solutions_and_keeps_exercises():
    nb = course_notebook()
    before = copy.deepcopy(nb)
    student = make_student_notebook(nb)
    assert nb == before  # pure: the input is not modified
    sources = [c.source for c in student.cells]
    assert sources[0] == "# Quantization\nRound to a grid of quarters."
    assert sources[2].startswith("```{exercise} ex-quant")
    # the code cell inside the gated region is kept as a skeleton, placeholder indented like the marker
    assert sources[3] == (
        'def quantize(x):\n    """Round to quarters and clip to [-1, 1]."""\n'
        f"    {PLACE_1}\n    {PLACE_2}"
    )
    assert f"            {PLACE_1}\n            {PLACE_2}\n        return 0" in sources[4]
    assert f"def helper(v):\n    {PLACE_1}\n    {PLACE_2}" in sources[4]
    assert sources[5] == "Answer:\nMore visible text."
    assert sources[6] == CHECKER_CELL
    assert sources[7].startswith("How to mark prose:\n```md\n<!-- BEGIN SOLUTION -->")  # code block: just text
    assert sources[8] == "raw text stays"
    assert len(student.cells) == 9
    assert student.metadata["effx_lab"] == {"student_version": True}
    assert student.metadata["kernelspec"]["name"] == "python3"
    for cell in student.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None
    nbformat.validate(student)


def test_solution_lines_are_found_and_none_leaks():
    nb = course_notebook()
    secrets = solution_lines(nb)
    for line in [
        "scaled = np.round(x * 4) / 4",
        "return np.clip(scaled, -1, 1)",
        "return x - 1",
        "return v * 3 + 11",
        "The trick is to multiply by four before rounding.",
        "secret_solution_line = 42",
        "Because rounding halves go to even.",
        "the cache grows linearly with sequence length",
        "hidden explanation line one",
        "Tagged solution prose that must vanish.",
    ]:
        assert line in secrets, line
    assert "import numpy as np" not in secrets  # also outside the solution regions
    assert "### BEGIN SOLUTION" not in secrets and "```" not in secrets
    leaked = secrets & text_lines(make_student_notebook(nb))
    assert not leaked


def test_prose_around_gated_directives_in_the_same_cell_is_kept():
    nb = new_notebook(
        cells=[
            new_markdown_cell("Exercise statement.\n\n```{solution-start} ex1\n```\nsolution prose here"),
            new_code_cell("def f():\n    ### BEGIN SOLUTION\n    return 1\n    ### END SOLUTION"),
            new_markdown_cell("more solution prose\n:::{solution-end}\n:::\nNext section."),
            new_markdown_cell("```{note}\nA note.\n```\nShown <!-- BEGIN SOLUTION -->hidden<!-- END SOLUTION --> text"),
        ]
    )
    student = make_student_notebook(nb)
    assert [c.source for c in student.cells] == [
        "Exercise statement.",
        f"def f():\n    {PLACE_1}\n    {PLACE_2}",
        "Next section.",
        "```{note}\nA note.\n```\nShown  text",
    ]
    assert {"solution prose here", "more solution prose", "hidden"} <= solution_lines(nb)


@pytest.mark.parametrize(
    "cells, text",
    [
        ([new_code_cell("x = 1\n### END SOLUTION")], r"cell 1 \(code cell.*'### END SOLUTION' on line 2 has no matching"),
        ([new_code_cell("def f():\n    ### BEGIN SOLUTION\n    return 1")], "line 2 is never closed"),
        (
            [new_code_cell("### BEGIN SOLUTION\n### BEGIN SOLUTION\n### END SOLUTION")],
            "on line 2 is inside the solution region opened on line 1",
        ),
        ([new_markdown_cell("x"), new_markdown_cell("```{solution-end}\n```")], "cell 2 .*without a \\{solution-start\\}"),
        ([new_markdown_cell("```{solution-start} e\n```"), new_markdown_cell("text")], "cell 1 .*never closed"),
        (
            [new_markdown_cell("```{solution-start} a\n```"), new_markdown_cell(":::{solution-start} b\n:::")],
            "cell 2 .*second \\{solution-start\\}",
        ),
        ([new_markdown_cell("a <!-- BEGIN SOLUTION --> b")], "on line 1 is never closed by '<!-- END SOLUTION -->'"),
        ([new_markdown_cell("a <!-- END SOLUTION -->")], "without a matching BEGIN"),
    ],
)
def test_unmatched_markers_raise_naming_notebook_and_cell(cells, text):
    nb = new_notebook(cells=cells)
    with pytest.raises(ValueError, match=text) as info:
        make_student_notebook(nb, name="ch01/01.1_memory.ipynb")
    assert str(info.value).startswith("ch01/01.1_memory.ipynb: cell ")


def test_bad_inputs():
    with pytest.raises(TypeError, match="nb must be an nbformat.NotebookNode"):
        make_student_notebook({"cells": []})
    with pytest.raises(TypeError, match="name must be a non-empty str"):
        make_student_notebook(new_notebook(), name="")
    with pytest.raises(TypeError, match="src must be a path"):
        write_student_version(3, "out.ipynb")


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
    _write(src / "ch01_costs" / ".ipynb_checkpoints" / "01.1_memory-checkpoint.ipynb", course_notebook())
    written = write_student_versions(src, dst)
    assert written == [dst / "ch01_costs" / "01.1_memory.ipynb", dst / "ch02_quant" / "02.1_basics.ipynb"]
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


def test_write_student_version_refuses_to_overwrite_the_source(tmp_path):
    src = _write(tmp_path / "a.ipynb", course_notebook())
    with pytest.raises(ValueError, match="would erase its solutions"):
        write_student_version(src, tmp_path / "." / "a.ipynb")
    with pytest.raises(ValueError, match="no such file"):
        write_student_version(tmp_path / "missing.ipynb", tmp_path / "b.ipynb")
    out = write_student_version(src, tmp_path / "out" / "b.ipynb")
    assert PLACE_2 in nbformat.read(out, as_version=4).cells[3].source


def test_cli_student_file_and_folder(tmp_path, capsys):
    src = _write(tmp_path / "nbs" / "sub" / "x.ipynb", course_notebook())
    assert main(["student", str(tmp_path / "nbs"), str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "sub" / "x.ipynb").exists()
    assert "1 student notebook written" in capsys.readouterr().out
    assert main(["student", str(src), str(tmp_path / "single.ipynb")]) == 0
    (tmp_path / "folder").mkdir()
    assert main(["student", str(src), str(tmp_path / "folder")]) == 0
    assert (tmp_path / "folder" / "x.ipynb").exists()
    capsys.readouterr()
    # errors are one line on stderr and a non-zero status, not a traceback
    _write(tmp_path / "broken.ipynb", new_notebook(cells=[new_code_cell("### END SOLUTION")]))
    assert main(["student", str(tmp_path / "broken.ipynb"), str(tmp_path / "b.ipynb")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("effx-lab student: error:") and "broken.ipynb: cell 1" in err
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

EXERCISE_CELL = """def quantize(x):
    ### BEGIN SOLUTION
    return np.clip(np.round(x * 4) / 4, -1, 1)
    ### END SOLUTION"""

CHECK_CELL = """def _reference(x):
    return np.clip(np.round(x * 4) / 4, -1, 1)

_cases = [
    Case("odd sizes: 3x7", (np.linspace(-2, 2, 21).reshape(3, 7),)),
    Case("extreme values (1e30)", (np.array([1e30, -1e30, 0.3]),)),
]
result = report(check_function(quantize, _reference, _cases, name="quantize"))"""


def executable_notebook():
    return new_notebook(
        cells=[
            new_code_cell("import numpy as np\nfrom effx_lab.check import Case, check_function, report"),
            new_markdown_cell("```{solution-start} ex\n```"),
            new_markdown_cell("Solution prose."),
            new_code_cell(EXERCISE_CELL),
            new_markdown_cell("```{solution-end}\n```"),
            new_code_cell(CHECK_CELL),
            new_code_cell('print("reached the end")'),
        ],
        metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
    )


def _run(client, nb):
    client.nb = nb  # nbclient stores each executed cell back into client.nb
    for index, cell in enumerate(nb.cells):
        client.execute_cell(cell, index)
    return "".join(out.get("text", "") for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs)


@pytest.mark.slow
def test_student_notebook_runs_and_the_solution_passes_in_strict_mode(tmp_path, monkeypatch):
    """One kernel (a kernel start costs seconds) runs three notebooks one after the other."""
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    monkeypatch.delenv("EFFX_CHECK_STRICT", raising=False)
    student = make_student_notebook(executable_notebook())
    assert PLACE_2 in student.cells[1].source
    solution = executable_notebook()
    strict_student = make_student_notebook(executable_notebook())
    client = NotebookClient(student, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    with client.setup_kernel():
        # 1. the student version, default mode: runs to the end and says "not attempted"
        out = _run(client, student)
        assert "✏️ quantize: not attempted yet" in out
        assert "reached the end" in out
        # 2. the solution version in strict mode (as the course's CI runs it): passes
        _run(client, new_notebook(cells=[new_code_cell("import os\nos.environ['EFFX_CHECK_STRICT'] = '1'")]))
        out = _run(client, solution)
        assert "✅ quantize: passed all 2 cases (odd sizes, extreme values (1e30))" in out
        assert "reached the end" in out
        # 3. the student version in strict mode: the checker cell fails the run
        with pytest.raises(CellExecutionError, match="CheckerError"):
            _run(client, strict_student)
