"""Real nbgrader (0.9.6, the `instructor` extra) on every course notebook, and the
no-giveaway test.

In a temporary course folder, `effx-lab nbgrader` puts every notebook of notebooks/ into
one assignment (with its nbgrader metadata); `nbgrader generate_assignment` must accept
it, and its release must hold the same cells as `effx-lab student`'s version. `nbgrader
autograde` then grades two submissions: the solution notebooks (student "solution": full
marks on every autograded test cell) and the released student versions (student "blank":
zero). Scores are read from the gradebook. Neither run sets EFFX_CHECK_STRICT:
nbgrader's own NBGRADER_EXECUTION=autograde must make a failed or unattempted check
raise.

The executed student versions (autograded/blank/) are the input of the no-giveaway test:
before an exercise's test cell, no output may show the source of a library function the
exercise's reference calls (see :func:`shows_source`).

The run executes every notebook twice, the two submissions side by side in two copies
of the course; `EFFX_NBGRADER_ONLY=02.1,07.1` restricts it to the notebooks whose names start
with those prefixes. `make test-instructor` runs it (`-m instructor`); `make
test-package` leaves it out. The detector's own unit tests below need no nbgrader and
run with the package tests.
"""

from __future__ import annotations

import ast
import html
import importlib
import inspect
import io
import os
import pkgutil
import re
import shutil
import subprocess
import sys
import textwrap
import time
import tokenize
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import nbformat
import pytest

import effx_lab
from effx_lab.check import CHECKERS
from effx_lab.cli import main as effx_lab_main
from effx_lab.student import add_nbgrader_metadata, make_student_notebook

ROOT = Path(__file__).resolve().parents[2]
from _notebooks import NOTEBOOKS  # noqa: E402
ONLY = [
    s.strip() for s in os.environ.get("EFFX_NBGRADER_ONLY", "").split(",") if s.strip()
]
SELECTED = [p for p in NOTEBOOKS if not ONLY or p.name.startswith(tuple(ONLY))]
ASSIGNMENT = "effx"


# ======================================================================================
# The no-giveaway detector
# ======================================================================================
_EXCLUDED_MODULES = ("effx_lab.check", "effx_lab._validate", "effx_lab._text")
_TRIVIAL = {
    "else:",
    "try:",
    "finally:",
    "except:",
    "pass",
    "return",
    "continue",
    "break",
    "return None",
}
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_TAG = re.compile(r"<[^>]*>")


def _collapse(line: str) -> str:
    return " ".join(line.split())


@dataclass(frozen=True)
class Fingerprint:
    """What shows a function's source: its ``def name(`` and its substantive body lines, normalised."""

    qualname: str
    def_key: str
    body: tuple[str, ...]


def fingerprint(fn: Callable) -> Fingerprint:
    """The normalised source of ``fn``: dedented, without decorators, docstring, comments, blank lines;
    whitespace collapsed; body lines shorter than 12 characters or bare keywords dropped.
    """
    fn = inspect.unwrap(fn)
    source = textwrap.dedent(inspect.getsource(fn))
    tree = ast.parse(source)
    node = next(
        n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
    )
    lines = source.split("\n")
    skip: set[int] = set()  # 1-based line numbers of the docstring
    first = node.body[0]
    if (
        isinstance(first, ast.Expr)
        and isinstance(first.value, ast.Constant)
        and isinstance(first.value.value, str)
    ):
        skip.update(range(first.lineno, first.end_lineno + 1))
    comments: dict[int, int] = {}  # line -> column where a comment starts
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.start[1]
    if (
        node.body[0].lineno == node.lineno
    ):  # a one-line def: its body is on the def line
        skip.add(node.lineno)
    body = []
    for number in range(node.body[0].lineno, node.end_lineno + 1):
        if number in skip:
            continue
        text = lines[number - 1]
        if number in comments:
            text = text[: comments[number]]
        text = _collapse(text)
        if len(text) >= 12 and text not in _TRIVIAL:
            body.append(text)
    qualname = f"{fn.__module__}.{fn.__qualname__}"
    return Fingerprint(qualname, f"def {node.name}(", tuple(dict.fromkeys(body)))


def output_text(outputs: list) -> str:
    """Everything a reader sees in a cell's outputs, as text: streams, plain text, markdown, HTML with
    its tags stripped and entities unescaped, error messages and tracebacks without colours.
    """
    parts = []
    for out in outputs:
        kind = out.get("output_type")
        if kind == "stream":
            parts.append(out.get("text", ""))
        elif kind in ("execute_result", "display_data"):
            data = out.get("data", {})
            for mime in ("text/plain", "text/markdown", "text/latex"):
                if mime in data:
                    parts.append(_join(data[mime]))
            if "text/html" in data:
                parts.append(html.unescape(_TAG.sub("", _join(data["text/html"]))))
        elif kind == "error":
            parts.append(f"{out.get('ename', '')}: {out.get('evalue', '')}")
            parts.append(_ANSI.sub("", "\n".join(out.get("traceback", []))))
    return "\n".join(parts)


def _join(value: Any) -> str:
    return "".join(value) if isinstance(value, list) else str(value)


def shows_source(text: str, print_: Fingerprint) -> bool:
    """Whether ``text`` shows the function: its def line and two or more of its substantive body lines
    (or at least half of them; the def line alone when the body has none)."""
    normal = "\n".join(_collapse(line) for line in text.split("\n"))
    if print_.def_key not in normal:
        return False
    hits = sum(line in normal for line in print_.body)
    n = len(print_.body)
    return n == 0 or hits >= 2 or (hits > 0 and 2 * hits >= n)


def _is_library_function(obj: Any) -> bool:
    obj = inspect.unwrap(obj) if callable(obj) else obj
    module = getattr(obj, "__module__", "") or ""
    return (
        inspect.isfunction(obj)
        and module.startswith("effx_lab.")
        and not module.startswith(_EXCLUDED_MODULES)
    )


def _local_imports(tree: ast.AST, fn: Callable) -> dict[str, Any]:
    """Names bound by ``import`` statements inside the function (``from ..qat import _kl``)."""
    package = fn.__module__.rpartition(".")[0]
    names: dict[str, Any] = {}
    for node in ast.walk(tree):
        try:
            if isinstance(node, ast.ImportFrom):
                base = "." * node.level + (node.module or "")
                module = importlib.import_module(
                    base, package=package if node.level else None
                )
                for alias in node.names:
                    names[alias.asname or alias.name] = getattr(
                        module, alias.name, None
                    )
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    names[alias.asname or alias.name.split(".")[0]] = (
                        importlib.import_module(alias.name.split(".")[0])
                    )
        except ImportError:
            continue
    return names


def referenced_functions(fn: Callable) -> list[Callable]:
    """The effx_lab functions that ``fn``'s source names (``R.glu``, ``helper``), resolved through its
    globals, closure and local imports; the checking machinery (effx_lab.check, _validate) left out.
    """
    fn = inspect.unwrap(fn)
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
    except (OSError, TypeError, SyntaxError):
        return []
    scope = dict(fn.__globals__)
    scope.update(inspect.getclosurevars(fn).nonlocals)
    scope.update(_local_imports(tree, fn))

    def resolve(node: ast.AST) -> Any:
        if isinstance(node, ast.Name):
            return scope.get(node.id)
        if isinstance(node, ast.Attribute):
            base = resolve(node.value)
            return getattr(base, node.attr, None) if base is not None else None
        return None

    found: dict[int, Callable] = {}
    for node in ast.walk(tree):
        if isinstance(node, (ast.Name, ast.Attribute)):
            obj = resolve(node)
            if obj is not None and obj is not fn and _is_library_function(obj):
                found.setdefault(id(inspect.unwrap(obj)), inspect.unwrap(obj))
    return list(found.values())


def reference_functions(reference: Callable) -> list[Callable]:
    """The library functions an exercise's reference stands for: the reference itself when it is a
    library function, those it calls (level 1), and those they call from their own module (level 2:
    their helpers). Wrappers in the chapters' ``exercises`` modules are not library functions.
    """
    root = inspect.unwrap(reference)
    found: dict[int, Callable] = {}
    if _is_library_function(root) and ".exercises" not in root.__module__:
        found[id(root)] = root
    level1 = [f for f in referenced_functions(root) if ".exercises" not in f.__module__]
    for f in level1:
        found.setdefault(id(f), f)
    for f in [root, *level1]:
        for g in referenced_functions(f):
            if g.__module__ == f.__module__ and ".exercises" not in g.__module__:
                found.setdefault(id(g), g)
    return list(found.values())


def giveaways(nb: nbformat.NotebookNode, checkers: dict[str, Any]) -> list[str]:
    """For each test cell ``check_<name>(...)`` of an executed notebook: the outputs before it that show
    a reference function of the exercise. ``checkers`` maps ``check_<name>`` to its registry entry.
    """
    found = []
    for index, cell in enumerate(nb.cells):
        if not _is_test_cell(cell):
            continue
        checker = re.match(r"\s*(check_\w+)\(", cell.source)[1]
        entry = checkers.get(checker)
        assert (
            entry is not None
        ), f"cell {index + 1}: {checker} is not a registered checker (effx_lab.check.CHECKERS)"
        # No library function behind the reference (a count computed in the exercises module itself):
        # then the reference is the implementation a notebook must not show.
        functions = reference_functions(entry.reference) or [inspect.unwrap(entry.reference)]
        prints = [fingerprint(f) for f in functions]
        for before in range(index):
            text = output_text(nb.cells[before].get("outputs", []))
            for p in prints:
                if text and shows_source(text, p):
                    found.append(
                        f"cell {before + 1} shows the source of {p.qualname} before {checker} (cell {index + 1})"
                    )
    return found


def _is_test_cell(cell: nbformat.NotebookNode) -> bool:
    meta = cell.get("metadata", {}).get("nbgrader", {})
    return (
        cell.cell_type == "code"
        and bool(meta.get("grade"))
        and not meta.get("solution")
    )


def registered_checkers() -> dict[str, Any]:
    """``check_<name>`` -> its :data:`CHECKERS` entry, after importing every chapter's exercises."""
    for info in pkgutil.walk_packages(effx_lab.__path__, "effx_lab."):
        if ".exercises" in info.name or info.name.endswith("exercises"):
            importlib.import_module(info.name)
    by_name: dict[str, Any] = {}
    for qualname, entry in CHECKERS.items():
        by_name.setdefault(qualname.rsplit(".", 1)[1], entry)
    return by_name


# -------------------------------------------------------------- the detector's own tests
def _glu_like(x, params):
    """A docstring that is not code."""
    # a comment that is dropped
    gate = x @ params["w_u"] + params["b_u"]
    value = x @ params["w_v"] + params["b_v"]
    return gate * value


@pytest.fixture
def ipython_shell():
    """An in-process IPython shell, so that viz.show_source displays its HTML as in a notebook."""
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    try:
        yield shell
    finally:
        InteractiveShell.clear_instance()


def _displayed(fn: Callable) -> str:
    from IPython.utils.capture import capture_output

    with capture_output() as captured:
        fn()
    outputs = [
        {"output_type": "display_data", "data": o.data} for o in captured.outputs
    ]
    outputs.append({"output_type": "stream", "text": captured.stdout})
    return output_text(outputs)


def test_fingerprint_drops_docstring_comments_and_short_lines():
    p = fingerprint(_glu_like)
    assert p.def_key == "def _glu_like("
    assert p.body == (
        'gate = x @ params["w_u"] + params["b_u"]',
        'value = x @ params["w_v"] + params["b_v"]',
        "return gate * value",
    )


def test_detector_catches_show_source_html(ipython_shell):
    from effx_lab import viz
    from effx_lab.quant import reference as QR

    html_text = _displayed(lambda: viz.show_source(QR.compute_qparams))
    assert (
        "<span" not in html_text and "&quot;" not in html_text
    )  # tags stripped, entities unescaped
    assert shows_source(html_text, fingerprint(QR.compute_qparams))
    # the same listing does not show an unrelated function
    assert not shows_source(html_text, fingerprint(_glu_like))
    assert not shows_source(html_text, fingerprint(QR.quantize))


def test_detector_catches_printed_getsource():
    from effx_lab.quant import reference as QR

    printed = inspect.getsource(QR.quantize)
    assert shows_source(printed, fingerprint(QR.quantize))
    # re-indented (inside a <pre> or a traceback) it is still caught
    assert shows_source(textwrap.indent(printed, "    "), fingerprint(QR.quantize))


def test_detector_does_not_fire_on_unrelated_output():
    p = fingerprint(_glu_like)
    assert not shows_source("✅ glu: passed all 12 cases (shapes, dtypes)\n", p)
    # the def line alone (e.g. a signature in a message) is not the implementation
    assert not shows_source("def _glu_like(x, params):\n    ...", p)
    # one body line without the def line: not the implementation either
    assert not shows_source("gate = x @ params['w_u'] + params['b_u']", p)
    # the def line and half the body: caught
    assert shows_source(
        'def _glu_like(x, params):\n  return gate * value\n  gate = x @ params["w_u"] + params["b_u"]',
        p,
    )


def test_reference_functions_follow_the_wrapper_into_the_library():
    entry = registered_checkers()["check_quantize_symmetric"]
    from effx_lab.quant import reference as QR

    names = {f.__name__ for f in reference_functions(entry.reference)}
    assert {"compute_qparams", "quantize"} <= names
    assert not any(
        ".exercises" in f.__module__ for f in reference_functions(entry.reference)
    )
    # a library function as its own reference is included, with the helpers of its module it calls
    found = reference_functions(QR.compute_qparams)
    assert QR.compute_qparams in found and all(
        f.__module__.startswith("effx_lab.") for f in found
    )


def test_giveaways_are_found_before_the_test_cell_only(ipython_shell):
    from effx_lab import viz
    from effx_lab.quant import reference as QR

    shown = _displayed(lambda: viz.show_source(QR.compute_qparams))
    test = nbformat.v4.new_code_cell("check_quantize_symmetric(quantize_symmetric)")
    test.metadata["nbgrader"] = {"grade": True, "solution": False}
    leak = nbformat.v4.new_code_cell("viz.show_source(R.compute_qparams)")
    leak.outputs = [nbformat.v4.new_output("display_data", data={"text/html": shown})]
    checkers = registered_checkers()
    before = nbformat.v4.new_notebook(cells=[leak, test])
    assert (
        len(giveaways(before, checkers)) == 1
        and "compute_qparams" in giveaways(before, checkers)[0]
    )
    after = nbformat.v4.new_notebook(cells=[test, leak])
    assert giveaways(after, checkers) == []


# ======================================================================================
# The nbgrader run
# ======================================================================================
def _stored_form(nb: nbformat.NotebookNode, path: Path) -> nbformat.NotebookNode:
    """The notebook as git stores it (book/_ext/notebook_form.py --write); the book's gates are refused."""
    assert not any(
        c.cell_type == "markdown"
        and re.search(r"^[ \t]*(`{3,}|:{3,})\{solution-(start|end)\}", c.source, re.M)
        for c in nb.cells
    ), f"{path.name} holds the book's MyST gates: run python book/_ext/notebook_form.py --write"
    return nb


def _check_log(args: list[str], returncode: int, log: str) -> str:
    assert (
        returncode == 0
    ), f"nbgrader {' '.join(args)} failed ({returncode}):\n{log[-6000:]}"
    assert (
        "[ERROR]" not in log and "| ERROR]" not in log
    ), f"nbgrader {' '.join(args)} logged errors:\n{log[-6000:]}"
    return log


def _nbgrader(
    args: list[str], course: Path, env: dict[str, str], timeout: int = 1800
) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "nbgrader", *args],
        cwd=course,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return _check_log(args, proc.returncode, proc.stdout + proc.stderr)


def _nbgrader_together(
    runs: list[tuple[list[str], Path]], env: dict[str, str], timeout: int = 1800
) -> list[str]:
    """Several nbgrader commands at once, each in its own course folder (its own gradebook,
    so no two processes write one SQLite file); their logs, in order."""
    procs = [
        (
            args,
            subprocess.Popen(
                [sys.executable, "-m", "nbgrader", *args],
                cwd=folder,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            ),
        )
        for args, folder in runs
    ]
    logs = []
    try:
        for args, proc in procs:
            out, _ = proc.communicate(timeout=timeout)
            logs.append((args, proc.returncode, out))
    finally:
        for _, proc in procs:
            if proc.poll() is None:
                proc.kill()
    return [_check_log(args, rc, out) for args, rc, out in logs]


@dataclass
class Course:
    root: Path
    source: dict[
        str, nbformat.NotebookNode
    ]  # notebook name -> source (solution) notebook
    release: dict[str, nbformat.NotebookNode]
    autograded: dict[
        str, dict[str, nbformat.NotebookNode]
    ]  # student -> name -> executed notebook
    scores: dict[
        str, dict[str, dict[str, tuple]]
    ]  # student -> name -> grade_id -> (auto_score, max_score)
    timings: dict[str, float]


@pytest.fixture(scope="module")
def course(tmp_path_factory, request) -> Course:
    pytest.importorskip(
        "nbgrader", reason="pip install -e '.[instructor]' (make test-instructor does)"
    )
    if not SELECTED:
        pytest.skip(
            f"EFFX_NBGRADER_ONLY={os.environ.get('EFFX_NBGRADER_ONLY')!r} selects no notebook"
        )
    from nbgrader.api import Gradebook

    tmp = tmp_path_factory.mktemp("nbgrader")
    stored = tmp / "notebooks"
    for path in SELECTED:
        nb = _stored_form(nbformat.read(path, as_version=4), path)
        target = stored / path.parent.name / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, target)
    root = tmp / "course"
    assert (
        effx_lab_main(["nbgrader", str(stored), str(root), "--assignment", ASSIGNMENT])
        == 0
    )
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("EFFX_CHECK_STRICT", "NBGRADER_EXECUTION")
    }
    env["PATH"] = (
        f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # nbgrader runs `alembic`
    )
    env["EFFX_QUIET"] = "1"
    env["PYTHONHASHSEED"] = "0"
    timings: dict[str, float] = {}

    t0 = time.perf_counter()
    _nbgrader(["generate_assignment", ASSIGNMENT, "--force"], root, env)
    timings["generate_assignment"] = time.perf_counter() - t0
    names = [p.stem for p in SELECTED]
    # The two submissions are graded at the same time, each in a copy of the course (with
    # its own gradebook): on a 2-core machine that takes about 60 % of the time of one
    # after the other, as every notebook's kernel is mostly one busy thread.
    roots = {}
    for student, folder in (("solution", "source"), ("blank", "release")):
        roots[student] = tmp / f"course-{student}"
        shutil.copytree(root, roots[student])
        shutil.copytree(
            root / folder / ASSIGNMENT,
            roots[student] / "submitted" / student / ASSIGNMENT,
        )
    t0 = time.time()
    _nbgrader_together(
        [
            (["autograde", ASSIGNMENT, "--create", "--force", f"--student={s}"], r)
            for s, r in roots.items()
        ],
        env,
    )
    timings["autograde solution and blank, together"] = time.time() - t0
    for student, course_root in roots.items():
        graded = course_root / "autograded" / student / ASSIGNMENT
        # nbgrader grades the notebooks one after the other and writes each when done
        order = sorted(names, key=lambda n: (graded / f"{n}.ipynb").stat().st_mtime)
        done = [(graded / f"{n}.ipynb").stat().st_mtime for n in order]
        for name, end, start in zip(order, done, [t0, *done[:-1]]):
            timings[f"autograde {student} {name}"] = end - start
    def read(folder: str, n: str, course_root: Path = root) -> nbformat.NotebookNode:
        return nbformat.read(course_root / folder / f"{n}.ipynb", as_version=4)

    scores: dict[str, dict[str, dict[str, tuple]]] = {}
    for student, course_root in roots.items():
        with Gradebook(f"sqlite:///{course_root / 'gradebook.db'}") as gb:
            scores[student] = {}
            for name in names:
                sub = gb.find_submission_notebook(name, ASSIGNMENT, student)
                scores[student][name] = {
                    g.name: (g.auto_score, g.max_score) for g in sub.grades
                }
    reporter = request.config.pluginmanager.getplugin("terminalreporter")
    capture = request.config.pluginmanager.getplugin("capturemanager")
    if reporter is not None and capture is not None:
        with (
            capture.global_and_fixture_disabled()
        ):  # shown even when pytest captures the output
            reporter.write_line("")
            for key, seconds in timings.items():
                reporter.write_line(f"nbgrader timing: {key}: {seconds:.1f} s")
    return Course(
        root,
        {n: read(f"source/{ASSIGNMENT}", n) for n in names},
        {n: read(f"release/{ASSIGNMENT}", n) for n in names},
        {
            s: {n: read(f"autograded/{s}/{ASSIGNMENT}", n, r) for n in names}
            for s, r in roots.items()
        },
        scores,
        timings,
    )


def _test_ids(nb: nbformat.NotebookNode) -> set[str]:
    return {c.metadata["nbgrader"]["grade_id"] for c in nb.cells if _is_test_cell(c)}


@pytest.mark.parametrize("path", SELECTED, ids=lambda p: p.stem)
@pytest.mark.slow
@pytest.mark.instructor
def test_generate_assignment_releases_what_effx_lab_student_writes(course, path):
    source, release = course.source[path.stem], course.release[path.stem]
    assert source == add_nbgrader_metadata(
        source, name=path.name
    ), "the source lost or changed its metadata"
    ours = make_student_notebook(source, name=path.name)
    assert [c.cell_type for c in release.cells] == [c.cell_type for c in ours.cells]
    for i, (theirs, mine) in enumerate(zip(release.cells, ours.cells)):
        assert (
            theirs.source == mine.source
        ), f"{path.name} cell {i + 1}: nbgrader and effx-lab student differ"
        assert (
            "cellView" not in theirs.metadata
        ), f"{path.name} cell {i + 1}: the release folds a cell"
    assert (
        len(_test_ids(source)) >= 2
    ), f"{path.name}: fewer than two autograded exercises"


@pytest.mark.parametrize("path", SELECTED, ids=lambda p: p.stem)
@pytest.mark.slow
@pytest.mark.instructor
def test_autograde_gives_the_solution_full_marks(course, path):
    grades = course.scores["solution"][path.stem]
    ids = _test_ids(course.source[path.stem])
    assert ids and ids <= set(
        grades
    ), f"{path.name}: the gradebook lacks test cells {ids - set(grades)}"
    lost = [
        (gid, *grades[gid]) for gid in sorted(ids) if grades[gid][0] != grades[gid][1]
    ]
    assert not lost, f"{path.name}: the solution lost points on {lost}"
    executed = course.autograded["solution"][path.stem]
    errors = [
        (i + 1, o.get("ename"), o.get("evalue"))
        for i, c in enumerate(executed.cells)
        if c.cell_type == "code"
        for o in c.outputs
        if o.output_type == "error"
    ]
    assert not errors, f"{path.name}: the solution raised under autograde: {errors}"


@pytest.mark.parametrize("path", SELECTED, ids=lambda p: p.stem)
@pytest.mark.slow
@pytest.mark.instructor
def test_autograde_gives_the_student_version_zero(course, path):
    ids = _test_ids(course.source[path.stem])
    grades = course.scores["blank"][path.stem]
    tests = {gid: grades[gid][0] for gid in ids}
    assert tests and all(
        got == 0 for got in tests.values()
    ), f"{path.name}: a blank student version scored {tests}"
    executed = course.autograded["blank"][path.stem]
    # the student version runs to the end: only the test cells raise (each exercise is unattempted)
    for i, cell in enumerate(executed.cells):
        errors = [o for o in cell.get("outputs", []) if o.output_type == "error"]
        if _is_test_cell(cell):
            assert [o.ename for o in errors] == [
                "CheckerError"
            ], f"{path.name} cell {i + 1}: {cell.source}"
        else:
            assert (
                not errors
            ), f"{path.name} cell {i + 1} raised {errors[0].ename}: {errors[0].evalue}"


@pytest.mark.parametrize("path", SELECTED, ids=lambda p: p.stem)
@pytest.mark.slow
@pytest.mark.instructor
def test_student_versions_give_no_exercise_away(course, path):
    found = giveaways(course.autograded["blank"][path.stem], registered_checkers())
    assert not found, f"{path.name}: " + "; ".join(found)


@pytest.mark.instructor
def test_show_skeletons_unfolds_solution_cells_that_nbgrader_leaves_folded():
    pytest.importorskip("nbgrader")
    from nbgrader.preprocessors import ClearSolutions

    from effx_lab import student

    cell = nbformat.v4.new_code_cell(
        "#@title Solution: f\ndef f():\n    ### BEGIN SOLUTION\n    return 1\n    ### END SOLUTION"
    )
    cell.metadata.update(
        cellView="form",
        nbgrader={
            "solution": True,
            "grade": False,
            "locked": False,
            "grade_id": "f",
            "schema_version": 3,
        },
    )
    other = nbformat.v4.new_code_cell("#@title Setup\nx = 1")
    other.metadata["cellView"] = "form"
    nb = nbformat.v4.new_notebook(
        cells=[cell, other],
        metadata={
            "kernelspec": {
                "name": "python3",
                "display_name": "Python 3",
                "language": "python",
            }
        },
    )
    cleared, _ = ClearSolutions().preprocess(nb, {})
    assert (
        cleared.cells[0].metadata["cellView"] == "form"
    )  # nbgrader alone keeps the form view
    assert cleared.cells[0].source.startswith("#@title")
    shown, _ = student.ShowSkeletons().preprocess(cleared, {})
    assert (
        shown.cells[0].source
        == "def f():\n    # YOUR CODE HERE\n    raise NotImplementedError()"
    )
    assert "cellView" not in shown.cells[0].metadata
    assert shown.cells[1].metadata["cellView"] == "form" and shown.cells[
        1
    ].source.startswith(
        "#@title"
    )  # not a solution
    pps = student.nbgrader_preprocessors()
    assert pps.index(student.ShowSkeletons) == pps.index(ClearSolutions) + 1
