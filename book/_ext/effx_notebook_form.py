"""Sphinx extension: the book reads the stored notebooks back as the MyST it renders.

The repository stores the course notebooks in a form that reads as plain CommonMark in
Colab, JupyterLab and GitHub (``notebook_form.py`` in this folder describes both forms).
The book renders MyST: exercises, gated solutions, glossary terms, citations, links
between pages.

* ``source-read``: a notebook's JSON text is converted back to MyST before myst-nb
  parses it (``notebook_form.to_book(..., keep_code=True)``). Code cells are left
  exactly as stored, source and metadata: the execution cache is keyed on them, and
  ``make test``'s nbval run stores what it executed from the stored file. A notebook
  already in MyST is passed through unchanged.
* ``doctree-read``: a solution code cell's first line ``#@title ...`` (Colab's form
  title) and nbgrader's marker lines (``### BEGIN SOLUTION``, ``### END SOLUTION``, in
  any code cell) are dropped from the code block the page shows. The executed code still has them
  (comments); a reader sees the solution as a programmer would write it.

A notebook the converter cannot read raises an error naming the notebook and the cell.
"""

from __future__ import annotations

import sys
from pathlib import Path

from docutils import nodes
from sphinx.errors import ExtensionError

try:
    import notebook_form
except ImportError:  # imported by path (tests): its folder is not on sys.path yet
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import notebook_form


def book_text(text: str, path, root=None) -> str:
    """The JSON text of a notebook as the book reads it (MyST; code cells as stored).

    ``path`` is the notebook's file (its folder resolves relative links); ``root`` the
    repository (default: the nearest folder above ``path`` with a _config.yml). Returns
    ``text`` itself when nothing changes.
    """
    import nbformat

    if not isinstance(text, str):
        raise TypeError(
            f"text must be a notebook's JSON text (str), got {type(text).__name__}"
        )
    try:
        nb = nbformat.reads(text, as_version=4)
    except Exception as exc:  # nbformat raises several kinds
        raise ValueError(f"{path}: not a notebook's JSON ({exc})") from exc
    book = notebook_form.to_book(nb, path, keep_code=True, root=root)
    if book == nb:
        return text
    return notebook_form.dumps(book)


def read_stored_notebook(app, docname, source):
    """The ``source-read`` handler: a notebook's text becomes :func:`book_text`'s."""
    path = Path(app.env.doc2path(docname))
    if path.suffix != ".ipynb":
        return
    try:  # the repository: the folder above the notebook that holds _config.yml
        source[0] = book_text(source[0], path)
    except ValueError as exc:
        raise ExtensionError(f"effx_notebook_form: {exc}") from exc


def _is_solution(metadata) -> bool:
    meta = (metadata or {}).get(notebook_form.META_KEY)
    return isinstance(meta, dict) and notebook_form.SOLUTION in meta


#: the nbgrader lines that delimit a solution inside a code cell (the page hides them)
SOLUTION_MARKERS = ("### BEGIN SOLUTION", "### END SOLUTION")


def _page_code(code: str, solution: bool) -> str:
    """A code cell's source as the page shows it: no nbgrader marker lines (in any
    cell: a notebook written in MyST has no solution metadata yet, and both forms must
    render alike) and, in a solution cell, no form title."""
    if solution and code.startswith(notebook_form.FORM_TITLE):
        code = code.partition("\n")[2]
    lines = code.split("\n")
    return "\n".join(ln for ln in lines if ln.strip() not in SOLUTION_MARKERS)


def hide_form_titles(doctree) -> int:
    """Drop each solution code cell's ``#@title`` line, and nbgrader's ``### BEGIN/END
    SOLUTION`` lines from every code cell, on the page; count the code blocks changed."""
    hidden = 0
    for cell in doctree.findall(nodes.container):
        if cell.get("nb_element") != "cell_code":
            continue
        solution = _is_solution(cell.get("cell_metadata"))
        for source in cell.findall(nodes.container):
            if source.get("nb_element") != "cell_code_source":
                continue
            for block in source.findall(nodes.literal_block):
                code = block.astext()
                shown = _page_code(code, solution)
                if shown == code:
                    continue
                block[:] = [nodes.Text(shown)]
                block.rawsource = shown
                hidden += 1
    return hidden


def _hide_form_titles(app, doctree):
    hide_form_titles(doctree)


def setup(app):
    app.connect("source-read", read_stored_notebook)
    app.connect("doctree-read", _hide_form_titles)
    return {"parallel_read_safe": True, "parallel_write_safe": True, "version": "1.0"}
