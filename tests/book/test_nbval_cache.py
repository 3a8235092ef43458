"""The nbval plugin that lets the book build reuse what `make test-notebooks` executed (tests/nbval_cache.py)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

HERE = Path(__file__).resolve().parents[1]  # tests/, where nbval_cache.py lives


def _notebook(path: Path, *cells: str) -> None:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_markdown_cell("# A notebook")] + [nbformat.v4.new_code_cell(c) for c in cells]
    nbformat.write(nb, path)


def _run_nbval(tmp_path: Path, *notebooks: str, renderer: str | None = "book", extra=()):
    env = dict(os.environ, PYTHONPATH=str(HERE))
    env.pop("EFFX_PLOTLY_RENDERER", None)
    if renderer:
        env["EFFX_PLOTLY_RENDERER"] = renderer
    cmd = [sys.executable, "-m", "pytest", "--nbval-lax", "-q", "-p", "no:cacheprovider", "-p", "nbval_cache",
           "--nbval-current-env", f"--nb-cache={tmp_path / 'cache'}", *extra, *notebooks]
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)


def _cached(tmp_path: Path, name: str):
    from jupyter_cache import get_cache

    cache = get_cache(str(tmp_path / "cache"))
    nb = nbformat.read(tmp_path / name, as_version=4)
    try:
        return cache.match_cache_notebook(nb)
    except KeyError:
        return None


@pytest.mark.slow
def test_passing_notebook_is_stored_with_its_outputs_and_failing_one_is_not(tmp_path):
    _notebook(tmp_path / "good.ipynb", "x = 6 * 7\nprint('the answer', x)", "x")
    _notebook(tmp_path / "bad.ipynb", "print('first')", "raise ValueError('boom')")
    result = _run_nbval(tmp_path, "good.ipynb", "bad.ipynb")
    assert result.returncode == 1, result.stdout  # bad.ipynb fails
    assert "notebook budget" in result.stdout and "good.ipynb" in result.stdout
    record = _cached(tmp_path, "good.ipynb")
    assert record is not None, result.stdout
    assert _cached(tmp_path, "bad.ipynb") is None
    from jupyter_cache import get_cache

    bundle = get_cache(str(tmp_path / "cache")).get_cache_bundle(record.pk)
    code = [c for c in bundle.nb.cells if c.cell_type == "code"]
    assert code[0].outputs[0]["text"] == "the answer 42\n"
    assert code[1].outputs[0]["data"]["text/plain"] == "42" and code[1].execution_count == 2


@pytest.mark.slow
def test_nothing_is_stored_without_the_books_renderer(tmp_path):
    _notebook(tmp_path / "good.ipynb", "print(1)")
    result = _run_nbval(tmp_path, "good.ipynb", renderer=None)
    assert result.returncode == 0, result.stdout + result.stderr
    assert _cached(tmp_path, "good.ipynb") is None


@pytest.mark.slow
def test_memory_budget_fails_the_run(tmp_path):
    _notebook(tmp_path / "big.ipynb", "block = bytearray(300 * 2**20)\nblock[::4096] = b'x' * len(block[::4096])")
    result = _run_nbval(tmp_path, "big.ipynb", extra=("--nb-max-rss-mb", "200"))
    assert result.returncode == 1 and "FAILED budget: big.ipynb" in result.stdout, result.stdout
