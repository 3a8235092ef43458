"""The notebooks as Colab, JupyterLab and GitHub show them: read as CommonMark.

The book's launch button opens the committed .ipynb in Colab, which knows no MyST. Each
markdown cell of each committed notebook is rendered with markdown-it-py's "commonmark"
preset, and the rendered text must hold no MyST: no role (``{term}``, ``{cite:p}``,
``{doc}``...), no directive (``:::{exercise}``, a ```` ```{solution-start} ```` fence
renders as a code block of language ``{solution-start}``), no ``:label:``. Every link
and image is an absolute https address or a relative path to a file of the repository; a
link into the book's site names a page that exists, and a glossary or citation anchor
the book makes. Every solution code cell opens in Colab's form view (``cellView: form``
and a ``#@title`` first line), every model answer is folded in ``<details>``, and the
files are exactly what ``python book/_ext/notebook_form.py --write notebooks`` writes.

The same checks run on the converter's output for every notebook (whatever form it is
committed in), and on a MyST notebook, where they must fail.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
from markdown_it import MarkdownIt
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "book" / "_ext"))

import notebook_form as NF  # noqa: E402

from _notebooks import NOTEBOOKS  # noqa: E402
IDS = [p.name for p in NOTEBOOKS]
COMMONMARK = MarkdownIt("commonmark")
FIX = "run `python book/_ext/notebook_form.py --write notebooks`"

# What MyST leaves in CommonMark's rendering (code removed first).
MYST_LEFTOVERS = (
    "{term}",
    "{cite",
    "{doc}",
    "{ref}",
    ":::{",
    "```{",
    ":label:",
    "{solution-",
    "{exercise}",
)
_ROLE_BEFORE_CODE = re.compile(r"\{[A-Za-z][\w:+.-]*\}<code>")
_DIRECTIVE_FENCE = re.compile(r'<code class="language-\{')
_CODE = re.compile(r"<code[^>]*>.*?</code>|<pre[^>]*>.*?</pre>", re.S)
_ADDRESS = re.compile(r'\b(?:href|src)="([^"]*)"')


def _book_pages(ctx) -> set:
    """The pages of the book's site: the repository's .md and .ipynb files, as .html."""
    pages = set()
    for pattern in ("book/*.md", "notebooks/**/*.ipynb"):
        pages |= {
            p.relative_to(ctx.root).with_suffix(".html").as_posix()
            for p in ctx.root.glob(pattern)
        }
    return pages


def colab_problems(nb, path: Path) -> list[str]:
    """What does not read well as CommonMark in ``nb`` (the notebook at ``path``)."""
    ctx = NF.load_context()
    pages = _book_pages(ctx)
    anchors = {
        f"{NF.GLOSSARY_DOC}.html": set(ctx.term_ids.values()),
        f"{NF.REFERENCES_DOC}.html": set(ctx.cite_ids.values()),
    }
    problems = []
    for i, cell in enumerate(nb.cells, start=1):
        where = f"{path.name}: cell {i} ({cell.cell_type})"
        mark = cell.metadata.get("effx") or {}
        if cell.cell_type == "code" and "solution" in mark:
            if cell.metadata.get("cellView") != "form" or not cell.source.startswith(
                "#@title "
            ):
                problems.append(
                    f"{where}: a solution code cell without Colab's form view "
                    "(cellView: form and a first line #@title)"
                )
        if cell.cell_type != "markdown":
            continue
        if "solution" in mark and not (
            cell.source.startswith("<details>") and cell.source.endswith("</details>")
        ):
            problems.append(f"{where}: a model answer not folded in <details>")
        if "exercise" in mark and not cell.source.startswith(NF.EXERCISE_HEADING):
            problems.append(
                f"{where}: an exercise without its heading {NF.EXERCISE_HEADING!r}"
            )
        html = COMMONMARK.render(cell.source)
        if _DIRECTIVE_FENCE.search(html) or _ROLE_BEFORE_CODE.search(html):
            problems.append(f"{where}: MyST markup rendered as code: {html[:200]!r}")
        text = _CODE.sub(" ", html)
        found = [s for s in MYST_LEFTOVERS if s in text]
        if found:
            problems.append(f"{where}: MyST left in the rendered text: {found}")
        for address in _ADDRESS.findall(text):
            address = unquote(address.replace("&amp;", "&"))
            problem = _address_problem(address, path, ctx, pages, anchors)
            if problem:
                problems.append(f"{where}: {problem}")
    return problems


def _address_problem(
    address: str, path: Path, ctx, pages: set, anchors: dict
) -> str | None:
    url = urlparse(address)
    if url.scheme:
        if url.scheme != "https":
            return f"link {address!r} is not an https address"
        if not address.startswith(ctx.base_url):
            return None
        page = url.path[len(urlparse(ctx.base_url).path) :]
        if page not in pages:
            return f"link {address!r}: the book has no page {page!r}"
        if url.fragment and page in anchors and url.fragment not in anchors[page]:
            return f"link {address!r}: no anchor {url.fragment!r} on {page}"
        return None
    if not url.path:  # "#anchor" in the same notebook
        return None
    if url.path.startswith("/"):
        return f"link {address!r}: an absolute path"
    if not (path.parent / url.path).resolve().is_file():
        return f"link {address!r}: no such file next to the notebook"
    return None


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_committed_notebook_reads_as_commonmark(path):
    """The file the launch button opens: no MyST, links that work outside the book."""
    problems = colab_problems(NF.read(path), path)
    assert not problems, f"{len(problems)} problem(s); {FIX}:\n" + "\n".join(
        problems[:30]
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_committed_notebook_is_in_the_stored_form(path):
    text = path.read_text(encoding="utf8")
    assert NF.dumps(NF.to_stored(NF.read(path), path)) == text, f"{path.name}: {FIX}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_converted_notebook_reads_as_commonmark(path):
    """The converter's output for every notebook, whatever form it is committed in."""
    problems = colab_problems(NF.to_stored(NF.read(path), path), path)
    assert not problems, "\n".join(problems[:30])


def test_the_check_finds_myst():
    path = ROOT / "notebooks" / "ch02_quantization" / "x.ipynb"
    nb = new_notebook(
        cells=[
            new_markdown_cell(
                "# T\n\nA {term}`GEMV` {cite:p}`weng2023inference`, "
                "{doc}`02.2_outliers`."
            ),
            new_markdown_cell(":::{exercise} E\n:label: ex-t\n\nDo it.\n:::"),
            new_markdown_cell("```{solution-start} ex-t\n:class: dropdown\n```"),
            new_code_cell("def f():\n    pass"),
            new_markdown_cell("```{solution-end}\n```"),
            new_markdown_cell(
                "[a](http://example.com) [b](missing.ipynb) [c](/etc/passwd) "
                "[d](https://effx-lab.github.io/effx-lab/book/nowhere.html) "
                "[e](https://effx-lab.github.io/effx-lab/book/glossary.html#term-nope)"
            ),
        ]
    )
    problems = "\n".join(colab_problems(nb, path))
    for expected in (
        "cell 1 (markdown): MyST markup rendered as code",
        "cell 2 (markdown): MyST left",
        "cell 3 (markdown): MyST markup rendered as code",
        "not an https address",
        "no such file",
        "an absolute path",
        "no page 'book/nowhere.html'",
        "no anchor 'term-nope'",
    ):
        assert expected in problems, f"{expected!r} not found in:\n{problems}"
    stored = NF.to_stored(new_notebook(cells=nb.cells[:5]), path)
    assert colab_problems(stored, path) == []
    stored.cells[2].metadata.pop("cellView")
    assert "without Colab's form view" in "\n".join(colab_problems(stored, path))
