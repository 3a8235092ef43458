"""The portability rules every notebook follows, as checks, so that new chapters inherit them.

A notebook runs top to bottom on any reader's machine: a laptop CPU or a Colab GPU, with or without Triton
(macOS and Windows have none), fast or slow, loaded or idle. So a notebook
* reads a kernel's source with ``K.kernel_source(K._kernel)``, never ``K._kernel.fn`` (no ``.fn`` without Triton);
* launches a Triton kernel only inside a cell that asks ``K.available()`` first and says why it skips;
* never asserts a timing: a claim whose direction depends on the device is shown with
  a ``effx_lab.claims.Claim(..., device=True)`` verdict for the device it ran on;
* never hides a claim behind ``if ON_CPU``: GPU readers get the verdict too.
These checks read the notebooks' code; tests/book/test_repo.py checks their anatomy.
"""
from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[2]
from _notebooks import NOTEBOOKS  # noqa: E402

# Calls into a kernel module that do not launch a kernel.
_KERNEL_SAFE = {"kernel_source", "available", "why_unavailable", "int8_gemm_backend",
                "int8_gemm_backend_reason", "compile_report", "MODES",
                "DTYPES", "FLOAT_DTYPES"}
_KERNEL_CALL = re.compile(r"\bK\.(\w+)\(")
_TIMING = re.compile(r"\b(compare|time_fn|perf_counter|process_time|timeit|benchmark|blocked_autorange)\b")
# Names under which notebooks keep measured times and their ratios.
_TIMED_NAME = re.compile(r"(speed|_ms\b|\bms\[|\bms\b|median_s|_s\[|seconds|elapsed|time|tokens_per_s|per_s\b|"
                         r"throughput|growth|faster|slower|latency|gflops|flops_per_s|achieved)", re.I)


def _code_cells(path: Path):
    nb = nbformat.read(path, as_version=4)
    return [(i, c.source) for i, c in enumerate(nb.cells) if c.cell_type == "code"]


def _uses_kernel_module(source: str) -> bool:
    return bool(re.search(r"kernels as K\b", source))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_kernel_source_is_read_without_dot_fn(path):
    for i, src in _code_cells(path):
        assert not re.search(r"\.fn\b", src), f"{path.name} cell {i}: use K.kernel_source(K._kernel), not .fn"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_kernel_launches_are_guarded(path):
    cells = _code_cells(path)
    if not any(_uses_kernel_module(src) for _, src in cells):
        return
    for i, src in cells:
        launches = [m for m in _KERNEL_CALL.findall(src) if m not in _KERNEL_SAFE]
        if launches:
            assert "K.available()" in src, (
                f"{path.name} cell {i} launches {sorted(set(launches))} without asking K.available() first: "
                "without Triton (macOS, Windows) this cell would crash")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_no_claim_is_hidden_behind_on_cpu(path):
    for i, src in _code_cells(path):
        assert not re.search(r"^\s*if\s+(ON_CPU|on_cpu)\s*:", src, re.M), (
            f"{path.name} cell {i}: a claim guarded by `if ON_CPU:`; show it as a Claim(..., device=True) on every device")


# An inequality in a timing cell is allowed only as a derived rounding bound (named as such).
_DERIVED_BOUND = re.compile(r"\bbound\b|2\.0\s*\*\*\s*-\d+|\beps\b|finfo")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_timings_are_shown_not_asserted(path):
    """A cell that times something asserts only equalities and derived error bounds, never a measured time."""
    for i, src in _code_cells(path):
        if not _TIMING.search(src):
            continue
        for line in src.splitlines():
            code = line.strip().split("#")[0]
            if not code.startswith("assert "):
                continue
            if _TIMED_NAME.search(code) or (re.search(r"[<>]", code) and not _DERIVED_BOUND.search(code)):
                pytest.fail(f"{path.name} cell {i} asserts a timing or an inequality: {code!r}; use "
                            "a Claim(..., device=True) so a slower or faster machine is told, not stopped")


def test_the_rules_catch_what_they_are_for(tmp_path):
    """Each rule fails on the pattern it exists to catch (so none of them passes vacuously)."""
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(s) for s in (
        "from effx_lab.quant import kernels as K",
        "print(inspect.getsource(K._int8_gemm_kernel.fn))",
        "y = K.int8_gemm(a, b, sa, sb)",
        "if ON_CPU:\n    assert x > 1",
        "t = compare(c, baseline='a')\nassert t.speedup('b') > 2",
    )]
    path = tmp_path / "bad.ipynb"
    nbformat.write(nb, path)
    for rule in (test_kernel_source_is_read_without_dot_fn, test_kernel_launches_are_guarded,
                 test_no_claim_is_hidden_behind_on_cpu, test_timings_are_shown_not_asserted):
        with pytest.raises((AssertionError, pytest.fail.Exception)):
            rule(path)


def test_an_unnamed_timing_inequality_is_caught(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("full, cached = run(compare)\nassert full[-1] > 2 * cached[-1]")]
    path = tmp_path / "bad.ipynb"
    nbformat.write(nb, path)
    with pytest.raises(pytest.fail.Exception):
        test_timings_are_shown_not_asserted(path)
    nb.cells = [nbformat.v4.new_code_cell("t = compare(c)\nbound = 8 * 2.0**-24 * terms\nassert (err <= bound).all()")]
    nbformat.write(nb, path)
    test_timings_are_shown_not_asserted(path)  # a derived rounding bound is fine


# --------------------------------------------------------------------------------------------------------
# Stale text: no page calls a chapter that exists "coming soon" or "being written".
_STALE = re.compile(r"coming soon|being written|not yet written|not written yet", re.I)
_CHAPTER_REFS = re.compile(r"\bchapters?\s+(\d+)(?:\s*(?:to|-|–)\s*(\d+))?((?:\s*(?:,|and)\s*\d+)*)", re.I)


def _existing_chapters() -> set[int]:
    return {int(m.group(1)) for d in (ROOT / "notebooks").iterdir()
            if (m := re.match(r"ch(\d+)_", d.name)) and any(d.glob("*.ipynb"))}


def _stale_mentions(text: str, existing: set[int]) -> list[str]:
    """Clauses that say "coming soon"/"being written" and name an existing chapter (ranges included)."""
    found = []
    for clause in re.split(r"(?<=[.!?;])\s+|\n\s*[-*]\s+|\n\n", text):
        if not _STALE.search(clause):
            continue
        named: set[int] = set()
        for m in _CHAPTER_REFS.finditer(clause):
            first, last = int(m.group(1)), int(m.group(2) or m.group(1))
            named |= set(range(first, last + 1)) | {int(n) for n in re.findall(r"\d+", m.group(3) or "")}
        if named & existing:
            found.append(" ".join(clause.split())[:160])
    return found


def _pages():
    for path in sorted((ROOT / "book").glob("*.md")):
        yield path.relative_to(ROOT), path.read_text(encoding="utf-8")
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        yield path.relative_to(ROOT), "\n\n".join(c.source for c in nb.cells if c.cell_type == "markdown")


@pytest.mark.parametrize("page", [p for p, _ in _pages()], ids=str)
def test_no_existing_chapter_is_called_coming_soon(page):
    existing = _existing_chapters()
    text = dict(_pages())[page]
    stale = _stale_mentions(text, existing)
    assert not stale, f"{page} calls an existing chapter ({sorted(existing)}) unfinished: {stale}"


def test_the_stale_text_check_catches_what_it_is_for():
    existing = {1, 2, 7}
    assert _stale_mentions("Chapters 2 to 8 are coming soon; the map lists them.", existing)
    assert _stale_mentions("Chapter 2, *Quantization* (coming soon), attacks the bytes.", existing)
    assert _stale_mentions("This is the last notebook. Chapter 2 is being written: see the map.", existing)
    assert not _stale_mentions("- **Chapter 3: Pruning** *(coming soon)*", existing)
    assert not _stale_mentions("Chapters 1, 2 and 7 are available now; the other chapters are being written.",
                               existing)
