"""How a notebook reads: code within the column, one alias per module, no helper written twice.

A notebook page should read as a chapter, not a script (issue 10):
* every code line fits 88 columns (the book's column at laptop width; longer lines scroll);
* package source is shown with ``viz.show_source`` (highlighted, folded), never dumped with
  ``print(inspect.getsource(...))``;
* a module has one alias in every notebook and an alias names one module (``F`` is
  ``torch.nn.functional`` everywhere), so a reader who learned ``QM`` in 02.2 reads 02.5;
* a helper function is defined once: a name defined outside an exercise in two notebooks belongs
  in the package. Exercise solutions re-implement package functions on purpose and are exempt.
"""
from __future__ import annotations

import ast
import collections
import re
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[2]
from _notebooks import NOTEBOOKS  # noqa: E402
MAX_COLUMNS = 88
#: the aliases the course uses; a module not listed may use any alias, but only one
ALIASES = {
    "numpy": "np",
    "plotly.graph_objects": "go",
    "torch.nn.functional": "F",
    "effx_lab.quant.models": "QM",
    "effx_lab.models.evaluation": "ME",
    "effx_lab.quant.bench": "QB",
    "effx_lab.flash.bench": "FB",
    "effx_lab.costs.bench": "CB",
    "effx_lab.costs.flops": "FL",
    "effx_lab.costs.memory": "MEM",
    "effx_lab.models.torch_ops": "MT",
    "effx_lab.attention.reference": "AR",
    "effx_lab.attention.torch_ops": "AT",
}


def _code_cells(path: Path):
    nb = nbformat.read(path, as_version=4)
    return [(i, c.source) for i, c in enumerate(nb.cells) if c.cell_type == "code"]


def _is_magic(line: str) -> bool:
    return line.lstrip().startswith(("%", "!"))


def _parse(src: str) -> ast.Module:
    lines = src.split("\n")
    text = "\n".join(
        line[: len(line) - len(line.lstrip())] + "pass" if _is_magic(line) else line for line in lines
    )
    return ast.parse(text)


def _aliases(path: Path) -> set[tuple[str, str]]:
    out = set()
    for _, src in _code_cells(path):
        for node in ast.walk(_parse(src)):
            if isinstance(node, ast.Import):
                out |= {(a.name, a.asname) for a in node.names if a.asname}
            elif isinstance(node, ast.ImportFrom) and node.module:
                out |= {(f"{node.module}.{a.name}", a.asname) for a in node.names if a.asname}
    return out


def _helper_defs(path: Path) -> set[str]:
    """Names of the top-level functions a notebook defines outside exercise solutions."""
    names = set()
    for _, src in _code_cells(path):
        if "### BEGIN SOLUTION" in src:
            continue
        names |= {n.name for n in _parse(src).body if isinstance(n, ast.FunctionDef)}
    return names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_code_fits_the_column(path):
    long = [
        f"cell {i} line {j + 1} ({len(line)} columns): {line.strip()[:50]}"
        for i, src in _code_cells(path)
        for j, line in enumerate(src.split("\n"))
        if len(line) > MAX_COLUMNS
    ]
    assert not long, f"{path.name}: {len(long)} code lines wider than {MAX_COLUMNS}:\n" + "\n".join(long[:15])


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_package_source_is_shown_with_show_source(path):
    dumps = [i for i, src in _code_cells(path) if re.search(r"print\(\s*inspect\.getsource", src)]
    assert not dumps, f"{path.name} cells {dumps}: use effx_lab.viz.show_source(f), not print(getsource(f))"


def test_each_module_has_one_alias_and_each_alias_one_module():
    by_module, by_alias = collections.defaultdict(set), collections.defaultdict(set)
    for path in NOTEBOOKS:
        for module, alias in _aliases(path):
            by_module[module].add((alias, path.name))
            by_alias[alias].add((module, path.name))
    problems = []
    for module, uses in sorted(by_module.items()):
        names = {a for a, _ in uses}
        if len(names) > 1:
            problems.append(f"{module} is imported as {sorted(uses)}")
        if module in ALIASES and names != {ALIASES[module]}:
            problems.append(f"{module} must be imported as {ALIASES[module]}, got {sorted(uses)}")
    for alias, uses in sorted(by_alias.items()):
        # a chapter's own faces are R/T/K in each chapter: one module per chapter folder
        per_chapter = collections.defaultdict(set)
        for module, nb in uses:
            per_chapter[nb[:2]].add(module)
        if any(len(mods) > 1 for mods in per_chapter.values()):
            problems.append(f"alias {alias} names several modules: {sorted(uses)}")
        if alias not in {"R", "T", "K"} and len({m for m, _ in uses}) > 1:
            problems.append(f"alias {alias} names several modules: {sorted(uses)}")
    assert not problems, "\n".join(problems)


def test_no_helper_is_defined_in_two_notebooks():
    where = collections.defaultdict(list)
    for path in NOTEBOOKS:
        for name in _helper_defs(path):
            where[name].append(path.name)
    twice = {n: nbs for n, nbs in where.items() if len(nbs) > 1}
    assert not twice, f"helpers defined in several notebooks (move them to the package): {twice}"


def test_the_checks_catch_what_they_look_for(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell("import numpy as xp\nprint(inspect.getsource(f))\n" + "x = 1" + " " * 90),
        nbformat.v4.new_code_cell("def rel_err(a, b):\n    return a - b"),
    ]
    path = tmp_path / "00.1_bad.ipynb"
    nbformat.write(nb, path)
    with pytest.raises(AssertionError, match="wider than"):
        test_code_fits_the_column(path)
    with pytest.raises(AssertionError, match="show_source"):
        test_package_source_is_shown_with_show_source(path)
    assert ("numpy", "xp") in _aliases(path)
    assert _helper_defs(path) == {"rel_err"}
