"""The two forms of a course notebook: the book's MyST and the stored form (CommonMark).

The book (Jupyter Book: myst-nb, sphinx-exercise, sphinxcontrib-bibtex) renders MyST:
the roles ``{term}``, ``{cite:p}``, ``{cite:t}``, ``{doc}``, ``:::{exercise}`` blocks,
and solution regions gated by ``{solution-start}`` / ``{solution-end}`` cells. Colab,
JupyterLab and GitHub show that markup as raw text, with the solutions inline. So the
repository stores every notebook in a *stored form* that is plain CommonMark, and the
book converts it back while it reads the notebook (``effx_notebook_form.py``, a
``source-read`` handler): a tiny book built from both forms gives the same HTML, byte
for byte. ``to_book(to_stored(nb)) == nb`` for every MyST notebook this module accepts,
and ``to_stored`` is idempotent.

MyST -> stored form:

* exercise: a markdown cell ``:::{exercise} T`` / ``:label: L`` / blank line / body /
  ``:::`` keeps its place, with the metadata ``{"effx": {"exercise": "L"}}`` and the
  source ``#### ✏️ Exercise: T``, a blank line, the body.
* solution region: the gate cells ```` ```{solution-start} L```` / ``:class: dropdown``
  / ```` ``` ```` and ```` ```{solution-end}```` / ```` ``` ```` are removed; every cell
  between them gets ``{"effx": {"solution": "L"}}``. A code cell also gets
  ``{"cellView": "form"}`` and the first line ``#@title Solution: <name> (double-click
  to show)`` (<name>: its first def or class, else its first assignment, else L), so
  Colab shows the title only; a markdown cell (a model answer) is wrapped in
  ``<details>`` / ``<summary>Answer</summary>`` / blank line / body / blank line /
  ``</details>``.
* ``{term}`text``` -> ``[text](<base>book/glossary.html#term-<id>)``; ``{term}`text
  <target>``` -> the same, with ``target`` as the link's title (a tooltip, and the mark
  of the long form).
* ``{cite:p}`k1,k2``` -> ``([Smith et al., 2018](<base>book/references.html#cite-k1);
  [Jones, 2020](<base>book/references.html#cite-k2))``, without the outer parentheses
  when the citation already sits inside parentheses, as in ``(see {cite:p}`k`)``. A run
  of such links joined by "; " right inside "(" and ")" is read back as one
  ``{cite:p}``.
* ``{cite:t}`k``` -> ``[Smith et al. (2018)](<base>book/references.html#cite-k)``.
* ``{doc}`text <nb>``` (a notebook) -> ``[text](nb.ipynb)``, relative, as written (Colab
  opens it from GitHub); ``{doc}`text <../../book/page>``` (a page) ->
  ``[text](<base>book/page.html)`` (Colab cannot show a .md page); ``{doc}`target``` ->
  the same, with the target's title as the link text and as the link's title (the mark
  of the short form).

``<base>`` is ``html.baseurl`` of ``_config.yml``; ``<id>`` is the id Sphinx gives the
glossary term (``term-N-M-sparsity``); citation anchors follow ``bibtex_cite_id`` of
``_config.yml`` (``cite-{key}``). Author-year texts come from the .bib as the book's
author_year style writes them: one author ``Smith``, two ``Smith and Jones``, three or
more ``Smith et al.`` Whitespace inside a role is kept:
``{doc}`02.4\\n  <02.4_fine_grained>``` gives the link text ``02.4\\n  `` (a line break
in a link reads as a space). Read back, a plain link to the glossary, the references, a
book page or a relative .ipynb is such a role.

:func:`to_stored` refuses what it could not give back exactly (it converts every cell
back and compares), and MyST it does not know: another role or directive, a ``(label)=``
target, a ``%`` comment, a ``{{ substitution }}``, an unknown term, citation key or
``{doc}`` target, a solution region never closed. Each error is a ValueError naming the
notebook and the cell.

Workflow: write MyST in Jupyter, then run ``python book/_ext/notebook_form.py --write
notebooks`` before committing (every notebook converted in place; stored ones stay as
they are). ``--to-book`` turns stored notebooks back into MyST to edit them; ``--check``
lists the notebooks not in the stored form (exit status 1). Writing the stored form
directly works too.

The book reads code cells unchanged (``to_book(..., keep_code=True)``): the execution
cache is keyed on the code cells, which nbval executes from the stored file, so the
``#@title`` line stays in the executed code and the extension hides it in the page.
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[2]

#: The pages the stored form links to (docnames, relative to the repository root).
GLOSSARY_DOC = "book/glossary"
REFERENCES_DOC = "book/references"

#: The cell metadata key of the stored form, and its two entries.
META_KEY = "effx"
EXERCISE = "exercise"
SOLUTION = "solution"

EXERCISE_HEADING = "#### ✏️ Exercise: "
FORM_TITLE = "#@title "  # Colab's form title, the first line of a code cell
TITLE_PREFIX = FORM_TITLE + "Solution: "
TITLE_SUFFIX = " (double-click to show)"
TITLE_MAX = 88  # the course's column
ANSWER_OPEN = "<details>\n<summary>Answer</summary>\n\n"
ANSWER_CLOSE = "\n\n</details>"

GATE_END = "```{solution-end}\n```"
_GATE_START = re.compile(
    r"\A```\{solution-start\} (?P<label>[^\s`]+)\n:class: dropdown\n```\Z"
)
_EXERCISE = re.compile(
    r"\A:::\{exercise\} (?P<title>[^\n]+)\n:label: (?P<label>[^\s`]+)\n\n"
    r"(?P<body>.*)\n:::\Z",
    re.S,
)
_LABEL = re.compile(r"\A[A-Za-z0-9][\w.:-]*\Z")

#: Roles this module converts; any other MyST role raises.
KNOWN_ROLES = ("term", "doc", "cite:p", "cite:t")

# Markdown: fenced code blocks (never converted) and MyST directive fences (refused).
_FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})(?P<info>.*)$")
_TARGET = re.compile(r"^ {0,3}\([^()\s]+\)=\s*$")  # (label)=
_COMMENT = re.compile(r"^%")
_BLOCK_BREAK = re.compile(r"^\+\+\+")
_SUBSTITUTION = re.compile(r"\{\{\s*[A-Za-z_][\w.]*\s*\}\}")
# A role or a code span: `{name}` right before a run of backticks, or backticks alone.
_ROLE_OR_CODE = re.compile(r"(?:\{(?P<role>[A-Za-z][\w:+.-]*)\})?(?P<ticks>`+)")
_CODE_SPAN = re.compile(r"(?P<ticks>`+)")
# Sphinx's explicit title: "text <target>".
_EXPLICIT = re.compile(r"\A(?P<text>.+?)(?P<sep>\s*)<(?P<target>[^<]*?)>\Z", re.S)
# A link as the stored form writes it: no brackets or backticks in the text, a title or
# none.
_LINK = re.compile(
    r"\[(?P<text>[^\[\]`]*)\]\((?P<url>[^\s()<>]+)(?: \"(?P<title>[^\"\\]*)\")?\)"
)


# --------------------------------------------------------------------------------------
# Context: the glossary, the bibliography and the book's address


@dataclass(frozen=True)
class Context:
    """What the conversion reads from the repository (see :func:`load_context`)."""

    root: Path
    base_url: str  # the book's address, ends with "/"
    terms: dict  # lower-case term -> the glossary's spelling
    term_ids: dict  # glossary spelling -> HTML id
    cite_p: dict  # key -> "Smith et al., 2018"
    cite_t: dict  # key -> "Smith et al. (2018)"
    cite_ids: dict  # key -> HTML id
    cite_keys: dict  # HTML id -> key

    def glossary_url(self, term: str) -> str:
        return f"{self.base_url}{GLOSSARY_DOC}.html#{self.term_ids[term]}"

    def cite_url(self, key: str) -> str:
        return f"{self.base_url}{REFERENCES_DOC}.html#{self.cite_ids[key]}"


def _read_config(root: Path) -> dict:
    import yaml

    path = root / "_config.yml"
    if not path.is_file():
        raise ValueError(
            f"root must be the repository root (with _config.yml), got {root}"
        )
    return yaml.safe_load(path.read_text(encoding="utf8")) or {}


def base_url(root: Path | str | None = None) -> str:
    """The book's address: ``html.baseurl`` of ``_config.yml`` (https, ends in "/")."""
    root = _check_root(root)
    url = ((_read_config(root).get("html") or {}).get("baseurl")) or ""
    if not (isinstance(url, str) and url.startswith("https://") and url.endswith("/")):
        raise ValueError(
            f"html.baseurl in {root / '_config.yml'} must be the book's https address "
            f"ending with '/', got {url!r}"
        )
    return url


def glossary_terms(root: Path | str | None = None) -> list[str]:
    """The terms of ``book/glossary.md``'s ``{glossary}`` directive, as written."""
    root = _check_root(root)
    path = root / f"{GLOSSARY_DOC}.md"
    text = path.read_text(encoding="utf8")
    fence = r"^(`{3,}|:{3,})\{glossary\}[^\n]*\n(?P<body>.*?)^\1\s*$"
    block = re.search(fence, text, re.S | re.M)
    if block is None:
        raise ValueError(f"{path}: no {{glossary}} directive found")
    terms = []
    for line in block.group("body").splitlines():
        if line.strip() and not line[0].isspace() and not line.startswith(":"):
            terms.append(line.strip())
    return terms


def term_id(term: str) -> str:
    """Sphinx's HTML id of a glossary term (``N:M sparsity``: ``term-N-M-sparsity``)."""
    if not isinstance(term, str) or not term.strip():
        raise ValueError(f"term must be a non-empty str, got {term!r}")
    # Sphinx's own function (sphinx.domains.std makes glossary ids with it).
    from sphinx.util.nodes import _make_id

    return _make_id("term-" + term)


def _bib_labels(root: Path, config: dict) -> tuple[dict, dict]:
    import pybtex.database
    import pybtex.plugin

    bibfiles = config.get("bibtex_bibfiles") or []
    if not bibfiles:
        raise ValueError(f"{root / '_config.yml'}: bibtex_bibfiles names no .bib file")
    last = pybtex.plugin.find_plugin("pybtex.style.names", "last")()
    text = pybtex.plugin.find_plugin("pybtex.backends", "plaintext")()
    cite_p, cite_t = {}, {}
    for bib in bibfiles:
        data = pybtex.database.parse_file(str(root / bib))
        for key, entry in data.entries.items():
            persons = entry.persons.get("author") or entry.persons.get("editor")
            year = entry.fields.get("year")
            if not persons or not year:
                raise ValueError(
                    f"{bib}: entry {key!r} needs an author (or editor) and a year"
                )
            names = [last.format(p, True).format().render(text) for p in persons]
            if len(names) == 1:
                who = names[0]
            elif len(names) == 2:
                who = f"{names[0]} and {names[1]}"
            else:
                who = f"{names[0]} et al."
            cite_p[key] = f"{who}, {year}"
            cite_t[key] = f"{who} ({year})"
    return cite_p, cite_t


def _mtimes(root: Path) -> tuple:
    paths = [root / "_config.yml", root / f"{GLOSSARY_DOC}.md"]
    paths += sorted(root.glob("book/*.bib"))
    return tuple((str(p), p.stat().st_mtime_ns if p.exists() else None) for p in paths)


def load_context(root: Path | str | None = None) -> Context:
    """The book's address, glossary and bibliography of the repository at ``root``."""
    root = _check_root(root)
    return _load_context(root, _mtimes(root))


@functools.lru_cache(maxsize=4)
def _load_context(root: Path, _stamp: tuple) -> Context:
    config = _read_config(root)
    url = base_url(root)
    sphinx_config = ((config.get("sphinx") or {}).get("config")) or {}
    cite_template = sphinx_config.get("bibtex_cite_id") or ""
    if "{key}" not in cite_template:
        raise ValueError(
            f"sphinx.config.bibtex_cite_id in {root / '_config.yml'} must contain "
            f"'{{key}}' (stable citation anchors such as 'cite-{{key}}'), got "
            f"{cite_template!r}"
        )
    from docutils.nodes import make_id

    terms = glossary_terms(root)
    term_ids = {t: term_id(t) for t in terms}
    lower: dict = {}
    for t in terms:
        if t.lower() in lower:
            raise ValueError(f"{GLOSSARY_DOC}.md: the term {t!r} appears twice")
        lower[t.lower()] = t
    if len(set(term_ids.values())) != len(term_ids):
        raise ValueError(f"{GLOSSARY_DOC}.md: two terms get the same HTML id")
    cite_p, cite_t = _bib_labels(root, config)
    cite_ids = {
        k: make_id(cite_template.format(key=k, bibliography_count=1)) for k in cite_p
    }
    cite_keys = {v: k for k, v in cite_ids.items()}
    if len(cite_keys) != len(cite_ids):
        raise ValueError("two citation keys get the same HTML id")
    return Context(root, url, lower, term_ids, cite_p, cite_t, cite_ids, cite_keys)


# --------------------------------------------------------------------------------------
# Argument checks and error messages


def _check_root(root, path: Path | None = None) -> Path:
    """``root``, checked; by default the nearest folder above ``path`` with a config."""
    if root is None:
        for folder in path.parents if path is not None else ():
            if (folder / "_config.yml").is_file():
                return folder
        return ROOT
    if not isinstance(root, (str, os.PathLike)):
        raise TypeError(f"root must be a path (str or Path), got {type(root).__name__}")
    root = Path(root).resolve()
    if not (root / "_config.yml").is_file():
        raise ValueError(
            f"root must be the repository root (with _config.yml), got {root}"
        )
    return root


def _check_path(path) -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(
            "path must be the notebook's path (str or Path; its folder resolves "
            f"{{doc}} targets), got {type(path).__name__}"
        )
    return Path(path).resolve()


def _check_notebook(nb):
    import nbformat

    if not isinstance(nb, dict):
        raise TypeError(
            "nb must be a notebook (a dict, as nbformat reads it), got "
            f"{type(nb).__name__}"
        )
    if not isinstance(nb.get("cells"), list):
        raise ValueError(
            f"nb must be a notebook with a 'cells' list, got the keys {sorted(nb)}"
        )
    nb = nbformat.from_dict(copy.deepcopy(dict(nb)))
    for cell in nb.cells:
        if isinstance(cell.get("source"), list):
            cell.source = "".join(cell.source)
        cell.setdefault("metadata", nbformat.NotebookNode())
    return nb


def _shown(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


class _Where:
    """Names the notebook and the cell in error messages."""

    def __init__(self, path: Path, root: Path, n_cells: int):
        self.notebook = _shown(path, root)
        self.n = n_cells
        self.index = None
        self.kind = ""

    def at(self, index: int, kind: str) -> "_Where":
        self.index, self.kind = index, kind
        return self

    def error(self, problem: str) -> ValueError:
        if self.index is None:
            return ValueError(f"{self.notebook}: {problem}")
        cell = f"cell {self.index + 1} of {self.n} ({self.kind})"
        return ValueError(f"{self.notebook}: {cell}: {problem}")


# --------------------------------------------------------------------------------------
# Markdown scanning


def _prose_and_code(text: str) -> list[tuple[bool, str]]:
    """Split markdown into (is_code, chunk): fenced code blocks, and the prose between.

    A fence whose info string starts with ``{`` is a MyST directive: it stays prose
    (with its content, up to its closing fence), for the callers to refuse or keep.
    """
    lines = text.splitlines(keepends=True)
    chunks: list[tuple[bool, str]] = []
    buf: list[str] = []
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i].rstrip("\n"))
        if m is None or (m.group("fence")[0] == "`" and "`" in m.group("info")):
            buf.append(lines[i])
            i += 1
            continue
        fence = m.group("fence")
        closing = re.compile(rf"^ {{0,3}}{re.escape(fence[0])}{{{len(fence)},}}\s*$")
        j = i + 1
        while j < len(lines) and not closing.match(lines[j].rstrip("\n")):
            j += 1
        block = lines[i : j + 1]
        if m.group("info").strip().startswith("{"):  # a directive: prose
            buf.extend(block)
        else:
            if buf:
                chunks.append((False, "".join(buf)))
                buf = []
            chunks.append((True, "".join(block)))
        i = j + 1
    if buf:
        chunks.append((False, "".join(buf)))
    return chunks


def _closing_ticks(text: str, ticks: str, start: int):
    return re.compile(rf"(?<!`){ticks}(?!`)").search(text, start)


_GATE_HINT = (
    "a solution gate must be a markdown cell of its own, exactly "
    "'```{solution-start} <label>\\n:class: dropdown\\n```' or "
    "'```{solution-end}\\n```'"
)
_EXERCISE_HINT = (
    "an exercise must be a markdown cell of its own, exactly ':::{exercise} <title>', "
    "':label: <label>', a blank line, the statement, ':::'"
)
_DIRECTIVE_NAME = re.compile(r"^ {0,3}(?:`{3,}|~{3,}|:{3,})\s*\{(?P<name>[^}]*)\}")


def _refuse_unknown_myst(prose: str, where: _Where) -> None:
    """Raise on MyST block syntax this module does not convert (outside code)."""
    for line in prose.splitlines():
        m = _DIRECTIVE_NAME.match(line)
        if m:
            name = m.group("name")
            if name in ("solution-start", "solution-end"):
                raise where.error(_GATE_HINT)
            if name == "exercise":
                raise where.error(_EXERCISE_HINT)
            raise where.error(f"unknown MyST directive {{{name}}} ({line.strip()!r})")
        if _TARGET.match(line):
            raise where.error(f"MyST target {line.strip()!r} has no CommonMark form")
        if _COMMENT.match(line):
            raise where.error(f"MyST comment line {line!r} would show in Colab")
        if _BLOCK_BREAK.match(line):
            raise where.error(f"MyST block break {line!r} has no CommonMark form")
    # a substitution outside code spans
    outside = re.sub(r"(`+)(?:.|\n)*?(?<!`)\1(?!`)", " ", prose)
    m = _SUBSTITUTION.search(outside)
    if m:
        raise where.error(f"MyST substitution {m.group(0)!r} has no CommonMark form")


# --------------------------------------------------------------------------------------
# Titles of {doc} targets


def _title_of(file: Path) -> str | None:
    """The title the book gives a page: its first '# ' heading (a notebook: cell 1)."""
    try:
        if file.suffix == ".ipynb":
            cells = json.loads(file.read_text(encoding="utf8")).get("cells") or []
            first = next((c for c in cells if c.get("cell_type") == "markdown"), None)
            text = "".join(first["source"]) if first else ""
        else:
            text = file.read_text(encoding="utf8")
    except (OSError, ValueError):
        return None
    for line in text.splitlines():
        if line.startswith("# "):
            return line[2:].strip()
        if line.strip():
            return None
    return None


def _doc_file(folder: Path, target: str) -> Path | None:
    for suffix in (".ipynb", ".md"):
        file = (folder / (target + suffix)).resolve()
        if file.is_file():
            return file
    return None


# --------------------------------------------------------------------------------------
# MyST -> stored, inline


def _explicit(content: str):
    """(text, sep, target) of ``text <target>``, or None for an implicit role."""
    m = _EXPLICIT.match(content)
    if not m:
        return None
    return m.group("text"), m.group("sep"), m.group("target")


def _link_text(text: str, sep: str, where: _Where, role: str) -> str:
    """The link text that gives back ``text`` and ``sep`` (one space is implied)."""
    if sep == "":
        raise where.error(f"{{{role}}}`{text}<...>` needs a space before '<'")
    if "[" in text or "]" in text:
        raise where.error(f"{{{role}}} text {text!r} holds a bracket (it ends a link)")
    if text != text.rstrip():
        raise where.error(f"{{{role}}} text {text!r} ends with whitespace")
    return text if sep == " " else text + sep


def _term_link(content: str, ctx: Context, where: _Where) -> str:
    parts = _explicit(content)
    if parts:
        text, sep, target = parts
        if '"' in target:
            raise where.error(f"{{term}} target {target!r} holds a double quote")
    else:
        text, sep, target = content, " ", None
    wanted = " ".join((target if target is not None else text).split()).lower()
    term = ctx.terms.get(wanted)
    if term is None:
        raise where.error(
            f"{{term}}`{content}`: {wanted!r} is not a term of {GLOSSARY_DOC}.md"
        )
    shown = _link_text(text, sep, where, "term")
    title = f' "{target}"' if target is not None else ""
    return f"[{shown}]({ctx.glossary_url(term)}{title})"


def _cite_links(role: str, content: str, ctx: Context, where: _Where) -> list[str]:
    keys = content.split(",")
    if any(k != k.strip() or not k for k in keys):
        raise where.error(
            f"{{{role}}}`{content}`: write the keys separated by ',' without spaces"
        )
    for k in keys:
        if k not in ctx.cite_p:
            raise where.error(
                f"unknown citation key {k!r} (not in the .bib of _config.yml)"
            )
    if role == "cite:t":
        if len(keys) != 1:
            raise where.error(f"{{cite:t}}`{content}`: one key per {{cite:t}}")
        return [f"[{ctx.cite_t[keys[0]]}]({ctx.cite_url(keys[0])})"]
    return [f"[{ctx.cite_p[k]}]({ctx.cite_url(k)})" for k in keys]


def _doc_link(content: str, ctx: Context, folder: Path, where: _Where) -> str:
    parts = _explicit(content)
    text, sep, target = parts if parts else (None, " ", content)
    if target.startswith("/") or target != target.strip() or not target:
        raise where.error(
            f"{{doc}} target {target!r}: write it relative to the notebook"
        )
    if target.endswith((".ipynb", ".md")):
        raise where.error(f"{{doc}} target {target!r}: leave out the file suffix")
    file = _doc_file(folder, target)
    if file is None:
        raise where.error(f"{{doc}} target {target!r}: no such notebook or page")
    if text is None:  # the target's title as the link text, and as the link's title
        title = _title_of(file)
        if title is None:
            raise where.error(f"{{doc}}`{target}`: the target has no '# ' title")
        if '"' in title:
            raise where.error(f"{{doc}}`{target}`: the target's title holds a '\"'")
        shown, mark = _link_text(title, " ", where, "doc"), f' "{title}"'
    else:
        shown, mark = _link_text(text, sep, where, "doc"), ""
    if file.suffix == ".ipynb":
        return f"[{shown}]({target}.ipynb{mark})"
    try:
        page = file.with_suffix("").relative_to(ctx.root).as_posix()
    except ValueError:
        problem = f"{{doc}} target {target!r} is outside the repository"
        raise where.error(problem) from None
    return f"[{shown}]({ctx.base_url}{page}.html{mark})"


def _paren_depth(before: str) -> int:
    """Parentheses open in the paragraph ending with ``before`` (code spans skipped)."""
    paragraph = re.split(r"\n[ \t]*\n", before)[-1]
    depth = 0
    pos = 0
    while pos < len(paragraph):
        ch = paragraph[pos]
        if ch == "`":
            ticks = re.match(r"`+", paragraph[pos:]).group(0)
            close = _closing_ticks(paragraph, ticks, pos + len(ticks))
            pos = close.end() if close else pos + len(ticks)
            continue
        depth += ch == "("
        depth -= ch == ")" and depth > 0
        pos += 1
    return depth


def _roles_to_links(
    text: str, ctx: Context, folder: Path, where: _Where, wrap_all: bool
) -> str:
    out: list[str] = []
    pos = 0
    while True:
        m = _ROLE_OR_CODE.search(text, pos)
        if m is None:
            break
        ticks = m.group("ticks")
        close = _closing_ticks(text, ticks, m.end())
        if close is None:  # lone backticks are text
            out.append(text[pos : m.end()])
            pos = m.end()
            continue
        role = m.group("role")
        if role is None:  # a code span: kept as it is
            out.append(text[pos : close.end()])
            pos = close.end()
            continue
        content = text[m.end() : close.start()]
        out.append(text[pos : m.start()])
        if role == "term":
            out.append(_term_link(content, ctx, where))
        elif role == "doc":
            out.append(_doc_link(content, ctx, folder, where))
        elif role in ("cite:p", "cite:t"):
            links = _cite_links(role, content, ctx, where)
            if role == "cite:t":
                out.append(links[0])
            else:
                before, after = text[: m.start()], text[close.end() :]
                enclosed = before.endswith("(") and after.startswith(")")
                wrap = wrap_all or enclosed or _paren_depth(before) == 0
                run = "; ".join(links)
                out.append(f"({run})" if wrap else run)
        else:
            raise where.error(
                f"unknown MyST role {{{role}}} (this converter knows "
                + ", ".join(f"{{{r}}}" for r in KNOWN_ROLES)
                + ")"
            )
        pos = close.end()
    out.append(text[pos:])
    return "".join(out)


def _markdown_to_stored(source: str, ctx: Context, folder: Path, where: _Where) -> str:
    """Convert a markdown cell's roles; the result must give ``source`` back."""
    results = []
    for wrap_all in (False, True):
        parts = []
        for is_code, chunk in _prose_and_code(source):
            if is_code:
                parts.append(chunk)
            else:
                _refuse_unknown_myst(chunk, where)
                parts.append(_roles_to_links(chunk, ctx, folder, where, wrap_all))
        stored = "".join(parts)
        back = _markdown_to_book(stored, ctx, folder, where)
        if back == source:
            return stored
        results.append(back)
    raise where.error(
        "the stored form of this cell would not give the same MyST back (two citations "
        "next to each other, or a link the converter reads as a role?):\n"
        + _first_difference(source, results[-1])
    )


def _first_difference(a: str, b: str) -> str:
    i = next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    lo = max(0, i - 60)
    return (
        f"  MyST:        ...{a[lo:i + 60]!r}...\n"
        f"  given back:  ...{b[lo:i + 60]!r}..."
    )


# --------------------------------------------------------------------------------------
# stored -> MyST, inline


def _split_text_ws(text: str) -> tuple[str, str]:
    stripped = text.rstrip()
    return (stripped, text[len(stripped) :]) if stripped != text else (text, " ")


def _classify(link: re.Match, ctx: Context, folder: Path | None):
    """(kind, role or key) for a stored-form link, else None."""
    text, url, title = link.group("text"), link.group("url"), link.group("title")
    glossary = f"{ctx.base_url}{GLOSSARY_DOC}.html#"
    references = f"{ctx.base_url}{REFERENCES_DOC}.html#"
    if url.startswith(glossary):
        if title is None:
            return "term", f"{{term}}`{text}`"
        shown, sep = _split_text_ws(text)
        return "term", f"{{term}}`{shown}{sep}<{title}>`"
    if url.startswith(references) and url[len(references) :] in ctx.cite_keys:
        key = ctx.cite_keys[url[len(references) :]]
        if text.endswith(")"):
            return "cite_t", key
        return "cite_p", key
    target = None
    if url.startswith(ctx.base_url) and url.endswith(".html"):
        page = url[len(ctx.base_url) : -len(".html")]
        if folder is not None and (ctx.root / f"{page}.md").is_file():
            target = Path(os.path.relpath(ctx.root / page, folder)).as_posix()
    elif url.endswith(".ipynb") and "://" not in url and not url.startswith(("/", "#")):
        target = url[: -len(".ipynb")]
    if target is None:
        return None
    if title is not None:  # {doc}`target`: the link shows the target's title
        return "doc", f"{{doc}}`{target}`"
    shown, sep = _split_text_ws(text)
    return "doc", f"{{doc}}`{shown}{sep}<{target}>`"


def _links_to_roles(text: str, ctx: Context, folder: Path | None) -> str:
    out: list[str] = []
    pos = 0
    matches = list(_LINK.finditer(text))
    k = 0
    while k < len(matches):
        m = matches[k]
        kind = _classify(m, ctx, folder)
        if kind is None:
            k += 1
            continue
        out.append(text[pos : m.start()])
        if kind[0] != "cite_p":
            out.append(kind[1] if kind[0] != "cite_t" else f"{{cite:t}}`{kind[1]}`")
            pos = m.end()
            k += 1
            continue
        keys, end = [kind[1]], m.end()
        while k + 1 < len(matches):
            nxt = matches[k + 1]
            if text[end : nxt.start()] != "; ":
                break
            nxt_kind = _classify(nxt, ctx, folder)
            if nxt_kind is None or nxt_kind[0] != "cite_p":
                break
            keys.append(nxt_kind[1])
            end = nxt.end()
            k += 1
        role = f"{{cite:p}}`{','.join(keys)}`"
        if out[-1].endswith("(") and text[end : end + 1] == ")":
            out[-1] = out[-1][:-1]
            end += 1
        out.append(role)
        pos = end
        k += 1
    out.append(text[pos:])
    return "".join(out)


def _markdown_to_book(
    source: str, ctx: Context, folder: Path | None, where: _Where
) -> str:
    parts = []
    for is_code, chunk in _prose_and_code(source):
        if is_code:
            parts.append(chunk)
            continue
        # code spans are kept; links are converted in the text between them
        pos = 0
        pieces = []
        while True:
            m = _CODE_SPAN.search(chunk, pos)
            if m is None:
                break
            close = _closing_ticks(chunk, m.group("ticks"), m.end())
            if close is None:
                pieces.append(("text", chunk[pos : m.end()]))
                pos = m.end()
                continue
            pieces.append(("text", chunk[pos : m.start()]))
            pieces.append(("code", chunk[m.start() : close.end()]))
            pos = close.end()
        pieces.append(("text", chunk[pos:]))
        # merge adjacent text pieces so that a run of links is seen whole
        merged: list[list] = []
        for kind, piece in pieces:
            if merged and merged[-1][0] == kind == "text":
                merged[-1][1] += piece
            else:
                merged.append([kind, piece])
        parts.extend(
            _links_to_roles(piece, ctx, folder) if kind == "text" else piece
            for kind, piece in merged
        )
    return "".join(parts)


# --------------------------------------------------------------------------------------
# Cells


def _mark(cell) -> tuple[str, str] | None:
    meta = cell.metadata.get(META_KEY)
    if not isinstance(meta, dict):
        return None
    for kind in (EXERCISE, SOLUTION):
        if kind in meta:
            return kind, meta[kind]
    return None


def _set_mark(cell, kind: str, label: str) -> None:
    import nbformat

    meta = cell.metadata.get(META_KEY)
    meta = nbformat.NotebookNode(dict(meta) if isinstance(meta, dict) else {})
    meta[kind] = label
    cell.metadata[META_KEY] = meta


def _drop_mark(cell) -> None:
    meta = cell.metadata.get(META_KEY)
    if not isinstance(meta, dict):
        return
    meta = {k: v for k, v in meta.items() if k not in (EXERCISE, SOLUTION)}
    if meta:
        cell.metadata[META_KEY] = meta
    else:
        del cell.metadata[META_KEY]


_DEF = re.compile(r"^(?:async[ \t]+)?(?:def|class)[ \t]+(?P<name>[A-Za-z_]\w*)", re.M)
_ASSIGN = re.compile(r"^(?P<name>[A-Za-z_]\w*)[ \t]*(?::[^=\n]*)?=(?!=)", re.M)


def solution_title(code: str, label: str) -> str:
    """The ``#@title`` line of a solution code cell (see the module docstring)."""
    if not isinstance(code, str):
        raise TypeError(f"code must be a str, got {type(code).__name__}")
    if not isinstance(label, str) or not _LABEL.match(label):
        raise ValueError(
            f"label must be an exercise label such as 'ex-02-1-affine', got {label!r}"
        )
    m = _DEF.search(code) or _ASSIGN.search(code)
    name = m.group("name") if m else label
    title = f"{TITLE_PREFIX}{name}{TITLE_SUFFIX}"
    return title if len(title) <= TITLE_MAX else f"{TITLE_PREFIX}{name}"


def _gate_id(label: str, end: str, taken: set) -> str:
    base = re.sub(r"[^A-Za-z0-9_-]", "-", f"solution-{end}-{label}")[:60]
    candidate, n = base, 1
    while candidate in taken:
        n += 1
        candidate = f"{base}-{n}"
    taken.add(candidate)
    return candidate


def _new_gate(source: str, label: str, end: str, nb, taken: set):
    import nbformat

    cell = nbformat.v4.new_markdown_cell(source)
    cell.metadata = nbformat.NotebookNode()
    if nb.nbformat == 4 and nb.nbformat_minor >= 5:
        cell["id"] = _gate_id(label, end, taken)
    else:
        cell.pop("id", None)
    return cell


# A link the stored form may have written: to a page of the book's site or a notebook.
_STORED_LINK = re.compile(r"\]\([^()\s]*\.(?:html|ipynb)\b")


def _needs_context(nb) -> bool:
    """Whether ``nb`` may hold the stored form (else to_book reads no configuration)."""
    return any(
        _mark(c) is not None
        or (c.cell_type == "markdown" and _STORED_LINK.search(c.source))
        for c in nb.cells
    )


def to_book(nb, path, *, keep_code: bool = False, root=None):
    """The MyST form of a notebook (see the module docstring); MyST comes back as it is.

    ``path`` is where the notebook lives (its folder resolves relative links; ``root``,
    the repository, defaults to the nearest folder above it with a _config.yml).
    ``keep_code=True`` leaves every code cell untouched, source and metadata (the book
    build: the execution cache is keyed on the code cells); ``False`` also removes the
    ``#@title`` line and the form view of solution code cells, giving back the MyST
    notebook exactly. Returns a new notebook.
    """
    nb = _check_notebook(nb)
    path = _check_path(path)
    if not isinstance(keep_code, bool):
        raise TypeError(f"keep_code must be a bool, got {type(keep_code).__name__}")
    root = _check_root(root, path)
    if not _needs_context(nb):
        return nb
    ctx = load_context(root)
    folder = path.parent
    where = _Where(path, root, len(nb.cells))
    taken = {c.get("id") for c in nb.cells if c.get("id")}
    cells = []
    region: str | None = None
    for index, cell in enumerate(nb.cells):
        where.at(index, cell.cell_type)
        mark = _mark(cell)
        if mark is not None and not (
            isinstance(mark[1], str) and _LABEL.match(mark[1])
        ):
            raise where.error(
                f"metadata {META_KEY}.{mark[0]} must be a label, got {mark[1]!r}"
            )
        label = mark[1] if mark and mark[0] == SOLUTION else None
        if region is not None and label != region:
            cells.append(_new_gate(GATE_END, region, "end", nb, taken))
            region = None
        if label is not None and region is None:
            start = f"```{{solution-start}} {label}\n:class: dropdown\n```"
            cells.append(_new_gate(start, label, "start", nb, taken))
            region = label
        if cell.cell_type == "markdown":
            source = _markdown_to_book(cell.source, ctx, folder, where)
            if mark and mark[0] == EXERCISE:
                head, sep, body = source.partition("\n\n")
                if not head.startswith(EXERCISE_HEADING) or "\n" in head:
                    raise where.error(
                        f"an exercise cell must start with '{EXERCISE_HEADING}<title>' "
                        "and a blank line"
                    )
                title = head[len(EXERCISE_HEADING) :]
                source = f":::{{exercise}} {title}\n:label: {mark[1]}\n\n{body}\n:::"
            elif label is not None:
                opens = source.startswith(ANSWER_OPEN)
                if not (opens and source.endswith(ANSWER_CLOSE)):
                    raise where.error(
                        "a solution markdown cell must be wrapped in "
                        f"{ANSWER_OPEN!r} ... {ANSWER_CLOSE!r}"
                    )
                source = source[len(ANSWER_OPEN) : -len(ANSWER_CLOSE)]
            cell.source = source
            _drop_mark(cell)
        elif cell.cell_type == "code":
            if mark and mark[0] == EXERCISE:
                raise where.error("an exercise statement must be a markdown cell")
            if label is not None and not keep_code:
                first, _, rest = cell.source.partition("\n")
                if first.startswith(FORM_TITLE):
                    cell.source = rest
                if cell.metadata.get("cellView") == "form":
                    del cell.metadata["cellView"]
                _drop_mark(cell)
        elif not keep_code:
            _drop_mark(cell)
        cells.append(cell)
    if region is not None:
        cells.append(_new_gate(GATE_END, region, "end", nb, taken))
    nb.cells = cells
    return nb


def to_stored(nb, path, *, root=None):
    """The stored form of a notebook (see the module docstring); stored stays as it is.

    ``path`` is where the notebook lives (its folder resolves ``{doc}`` targets; errors
    name it; ``root`` as for :func:`to_book`). Raises ValueError, naming the notebook
    and the cell, on MyST this module does not know and on anything it could not give
    back exactly. Returns a new notebook.
    """
    path = _check_path(path)
    root = _check_root(root, path)
    myst = to_book(nb, path, root=root)
    ctx = load_context(root)
    folder = path.parent
    where = _Where(path, root, len(myst.cells))
    cells = []
    region: tuple[str, int] | None = None  # (label, index of the start gate)
    region_cells = 0
    for index, source_cell in enumerate(myst.cells):
        cell = copy.deepcopy(source_cell)
        where.at(index, cell.cell_type)
        source = cell.source
        if cell.cell_type == "markdown":
            lost = dict(cell.metadata)
            gate = _GATE_START.match(source)
            if gate:
                if region is not None:
                    raise where.error(
                        "a second {solution-start} inside the region opened in cell "
                        f"{region[1] + 1}"
                    )
                if cell.metadata:
                    raise where.error(
                        f"a gate cell's metadata would be lost: {lost} "
                        "(clear it: the stored form has no gate cells)"
                    )
                region, region_cells = (gate.group("label"), index), 0
                continue
            if source == GATE_END:
                if region is None:
                    raise where.error("{solution-end} without a {solution-start} first")
                if region_cells == 0:
                    raise where.error("an empty solution region (no cell in it)")
                if cell.metadata:
                    raise where.error(
                        f"a gate cell's metadata would be lost: {lost} "
                        "(clear it: the stored form has no gate cells)"
                    )
                region = None
                continue
            exercise = _EXERCISE.match(source)
            if exercise:
                if region is not None:
                    raise where.error("an exercise statement inside a solution region")
                if not _LABEL.match(exercise.group("label")):
                    label = exercise.group("label")
                    raise where.error(f"exercise label {label!r}: not a label")
                title, body = exercise.group("title"), exercise.group("body")
                source = f"{EXERCISE_HEADING}{title}\n\n{body}"
                _set_mark(cell, EXERCISE, exercise.group("label"))
            cell.source = _markdown_to_stored(source, ctx, folder, where)
            if region is not None:
                cell.source = f"{ANSWER_OPEN}{cell.source}{ANSWER_CLOSE}"
        elif cell.cell_type == "code" and region is not None:
            title = solution_title(source, region[0])
            cell.source = f"{title}\n{source}" if source else title
            cell.metadata["cellView"] = "form"
        if region is not None:
            if _mark(cell) is not None:
                meta = cell.metadata[META_KEY]
                raise where.error(f"metadata {META_KEY} is set on a MyST cell: {meta}")
            _set_mark(cell, SOLUTION, region[0])
            region_cells += 1
        cells.append(cell)
    if region is not None:
        where.at(region[1], "markdown")
        raise where.error(
            f"the solution region of {region[0]!r} is never closed by {{solution-end}}"
        )
    stored = copy.deepcopy(myst)
    stored.cells = cells
    _check_round_trip(myst, to_book(stored, path, root=root), where)
    return stored


def _check_round_trip(myst, back, where: _Where) -> None:
    if len(myst.cells) != len(back.cells):
        where.index = None
        raise where.error(
            f"the stored form gives {len(back.cells)} cells back, not "
            f"{len(myst.cells)} (two solution regions of one label next to each other?)"
        )
    for index, (a, b) in enumerate(zip(myst.cells, back.cells)):
        where.at(index, a.cell_type)
        if a.cell_type != b.cell_type or a.source != b.source:
            raise where.error(
                "the stored form would not give this cell back:\n"
                + _first_difference(a.source, b.source)
            )
        if dict(a.metadata) != dict(b.metadata):
            raise where.error(
                "the stored form would not give this cell's metadata back: "
                f"{dict(a.metadata)} became {dict(b.metadata)}"
            )


# --------------------------------------------------------------------------------------
# Files and the command line


def read(path):
    """Read a notebook file (nbformat 4)."""
    import nbformat

    return nbformat.read(str(_check_path(path)), as_version=4)


def dumps(nb) -> str:
    """A notebook as the repository stores it (nbformat's JSON and a final newline)."""
    import nbformat

    return nbformat.writes(nb) + "\n"


def notebooks_under(paths) -> list[Path]:
    """The .ipynb files given, or under the folders given (checkpoints skipped)."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    found = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            found += sorted(
                f for f in p.rglob("*.ipynb") if ".ipynb_checkpoints" not in f.parts
            )
        elif p.suffix == ".ipynb" and p.is_file():
            found.append(p)
        else:
            raise ValueError(f"paths must be notebooks or folders, got {str(p)!r}")
    return found


def convert_files(paths, mode: str, root=None) -> list[Path]:
    """Convert notebooks in place (``mode`` "stored" or "book") or check them ("check").

    Returns the files that changed (or, for "check", that are not in the stored form).
    """
    def stored(nb, p):
        # the stored form carries the nbgrader marks too (solution, autograded test and answer cells)
        from effx_lab.student import add_nbgrader_metadata

        return add_nbgrader_metadata(to_stored(nb, p, root=root), name=str(p))

    modes: dict[str, Callable] = {
        "stored": stored,
        "book": lambda nb, p: to_book(nb, p, root=root),
        "check": stored,
    }
    if mode not in modes:
        raise ValueError(f"mode must be one of {sorted(modes)}, got {mode!r}")
    changed = []
    for file in notebooks_under(paths):
        text = file.read_text(encoding="utf8")
        new = dumps(modes[mode](read(file), file))
        if new != text:
            changed.append(file)
            if mode != "check":
                file.write_text(new, encoding="utf8")
    return changed


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python book/_ext/notebook_form.py",
        description="Convert notebooks between the book's MyST and the stored form.",
    )
    group = parser.add_mutually_exclusive_group(required=True)
    for flag, what in (
        ("--write", "convert to the stored form, in place"),
        ("--to-book", "convert to MyST, in place (to edit them)"),
        ("--check", "list the notebooks not in the stored form"),
    ):
        group.add_argument(flag, action="store_true", help=what)
    parser.add_argument("paths", nargs="+", help="notebooks, or folders of notebooks")
    args = parser.parse_args(argv)
    mode = "stored" if args.write else "book" if args.to_book else "check"
    try:
        changed = convert_files(args.paths, mode)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    verb = {"stored": "stored form", "book": "MyST", "check": "NOT in the stored form"}
    verb = verb[mode]
    for file in changed:
        print(f"{file}: {verb}")
    return 1 if (mode == "check" and changed) else 0


if __name__ == "__main__":
    sys.exit(main())
