"""Sphinx extension with the book's small fixes (loaded through _config.yml ``local_extensions``).

* sphinx-thebe 0.3.1 registers its inline configuration script on every ``env-before-read-docs``
  event, which Jupyter Book emits more than once per build; the page then declares
  ``const THEBE_JS_URL`` twice and the browser raises a SyntaxError. We drop exact duplicate
  script entries from each page's context (same file, same inline body, same attributes).

* A failed notebook fails the build. ``nb_execution_raise_on_error`` (set in _config.yml) makes
  myst-nb raise at the first notebook that fails; at ``build-finished`` we turn that exception into
  one short message: the notebook, the failing cell (its number, its source) and the error. If a
  notebook still failed without raising (a notebook can switch the option off in its own metadata),
  myst-nb leaves ``reports/<doc>.err.log`` in the HTML output: we report those the same way and fail
  the build too. Either way ``reports/`` (tracebacks with the builder's local paths) never stays in
  the published HTML.

* Pages load only what they use. Sphinx would put plotly.js (4.8 MB) on every page if it were in
  ``html_js_files``; we add it to a page only when the page's body holds a plotly figure. MathJax
  (2.1 MB) is kept only on pages whose body has math markup (Sphinx also loads it on a page whose
  toctree merely *includes* pages with math). The theme's fontawesome.js (1.5 MB, every icon as
  SVG path data) is dropped: the theme's CSS already draws the same icons with the Font Awesome web
  fonts. At ``build-finished`` the vendored files no page references (the widget renderer, when no
  notebook has widgets), the theme's translation catalogs, template macros and source maps are
  deleted from the output, and ``sourceMappingURL`` comments are stripped so nothing points at them.
"""
from __future__ import annotations

import os
import posixpath
import re
import shutil
from pathlib import Path

from sphinx.errors import SphinxError
from sphinx.util import logging

logger = logging.getLogger(__name__)

PLOTLY_JS = "plotly.min.js"
# Loaded before require.js (priority 500, widget pages), which would otherwise capture plotly as an
# anonymous AMD module and leave window.Plotly undefined.
PLOTLY_PRIORITY = 200
# What plotly's HTML output (viz's book renderer, or plotly's own "notebook" renderers) writes.
_PLOTLY_MARKUP = ('class="plotly-graph-div"', "Plotly.newPlot(")
# MathJax 3 typesets inside elements with these classes (myst's processHtmlClass).
_MATH_CLASSES = {"math", "tex2jax_process", "mathjax_process", "output_area"}
_CLASS_ATTR = re.compile(r'class="([^"]*)"')

# The theme macro that writes <script src="_static/scripts/fontawesome.js">, and the line to drop.
_WEBPACK_MACROS = "static/webpack-macros.html"
_FONTAWESOME_TAG = re.compile(r"[ \t]*<script\b[^>]*fontawesome\.js[^>]*>\s*</script>[ \t]*\n?")

# Files in _static that browsers never ask for or that we stopped referencing: deleted when no page
# references them. Paths relative to _static; the vendored files (html_static_path) are added too.
_PRUNE_IF_UNREFERENCED = (
    "scripts/fontawesome.js",
    "scripts/fontawesome.js.LICENSE.txt",
    "webpack-macros.html",  # the theme's Jinja macros, copied as if they were assets
    "sbt-webpack-macros.html",
)
_ALWAYS_PRUNE_DIRS = ("locales",)  # sphinx-book-theme's gettext catalogs: used at build time only
_SOURCE_MAP_COMMENT = {  # the trailing comment that points a browser's dev tools at a .map file
    ".js": re.compile(r"(?m)^[ \t]*//[#@][ \t]*sourceMappingURL=[^\s'\"]*[ \t]*\r?$\n?"),
    ".css": re.compile(r"/\*[#@][ \t]*sourceMappingURL=[^*\s]*[ \t]*\*/"),
}


# --------------------------------------------------------------------------------------------------
# Per-page scripts


def _dedupe_scripts(app, pagename, templatename, context, doctree):
    scripts = context.get("script_files")
    if not scripts:
        return
    seen = set()
    unique = []
    for js in scripts:
        attrs = getattr(js, "attributes", {}) or {}
        key = (getattr(js, "filename", None) or "", tuple(sorted((k, str(v)) for k, v in attrs.items())))
        if key in seen:
            continue
        seen.add(key)
        unique.append(js)
    scripts[:] = unique  # in place: later handlers append to this same list


def _has_plotly(body: str) -> bool:
    return any(marker in body for marker in _PLOTLY_MARKUP)


def _has_math(body: str) -> bool:
    return any(_MATH_CLASSES.intersection(m.group(1).split()) for m in _CLASS_ATTR.finditer(body))


def _per_page_assets(app, pagename, templatename, context, doctree):
    """Add plotly.js where a figure is; drop MathJax where no math is (after sphinx.ext.mathjax)."""
    if app.builder.format != "html":
        return
    body = context.get("body") or ""
    scripts = context.get("script_files")
    if scripts is None:
        return
    if _has_plotly(body):
        app.builder.add_js_file(PLOTLY_JS, priority=PLOTLY_PRIORITY)
    if not _has_math(body):
        mathjax = app.config.mathjax_path or ""
        mathjax_file = mathjax if "://" in mathjax else posixpath.join("_static", mathjax)

        def is_mathjax(js) -> bool:
            filename = os.fspath(getattr(js, "filename", "") or "")
            body_js = str((getattr(js, "attributes", {}) or {}).get("body", ""))
            return (bool(mathjax) and filename == mathjax_file) or (
                not filename and body_js.lstrip().startswith(("window.MathJax", "MathJax.Hub.Config"))
            )

        scripts[:] = [js for js in scripts if not is_mathjax(js)]


def _drop_fontawesome_js(app):
    """Have the theme's webpack macros render without the fontawesome.js <script> tag."""
    templates = getattr(app.builder, "templates", None)
    if templates is None or not hasattr(templates, "get_source"):
        return
    original = templates.get_source

    def get_source(environment, template):
        source, filename, uptodate = original(environment, template)
        if template.lstrip("!") == _WEBPACK_MACROS:
            source = _FONTAWESOME_TAG.sub("", source)
        return source, filename, uptodate

    templates.get_source = get_source  # instance attribute: jinja's loader.load() calls self.get_source


# --------------------------------------------------------------------------------------------------
# Failed notebooks


class NotebookExecutionFailed(SphinxError):
    category = "Notebook execution failed"


_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_CELL_MARKERS = ("An error occurred while executing the following cell:", "A cell timed out while")
_BETWEEN_RULES = re.compile(r"\n-{18,}\n(.*?)\n-{18,}\n", re.S)
_ERROR_LINE = re.compile(r"^([A-Za-z_][\w.]*):(?:[ \t](.*))?$", re.M)  # "AssertionError: message"
_TRACEBACK_HEAD = "Traceback (most recent call last)"


def _locate_cell(notebook: Path, source: str) -> str:
    """'cell 3 of 4 (code cell 2)' for the cell of ``notebook`` whose source is ``source``."""
    try:
        import nbformat

        nb = nbformat.read(str(notebook), as_version=4)
    except Exception:  # a text notebook, or unreadable: the source below still names the cell
        return "a cell"
    wanted = source.strip()
    first_line = wanted.splitlines()[0].strip() if wanted else ""
    code_index = 0
    fallback = None
    for index, cell in enumerate(nb.cells, start=1):
        if cell.cell_type != "code":
            continue
        code_index += 1
        where = f"cell {index} of {len(nb.cells)} (code cell {code_index})"
        if cell.source.strip() == wanted:
            return where
        if fallback is None and first_line and first_line in cell.source:
            fallback = where  # a timeout shows only a preview of a long cell
    return fallback or "a cell"


def _describe_failure(notebook: Path, text: str, srcdir: Path, ename: str = "", evalue: str = "") -> str:
    """Notebook, cell and error from nbclient's message (or a whole .err.log), ANSI codes removed."""
    text = _ANSI.sub("", text)
    try:
        shown = notebook.resolve().relative_to(srcdir.resolve())
    except ValueError:
        shown = notebook
    starts = [text.find(m) for m in _CELL_MARKERS if m in text]
    if not starts:  # a dead kernel or the like: no cell to name
        lines = text.strip().splitlines()
        return f"{shown}: the notebook could not be executed:\n" + "\n".join(lines[-25:])
    detail = text[min(starts):].strip()
    match = _BETWEEN_RULES.search("\n" + detail.split("\n", 1)[-1] + "\n")
    source = match.group(1) if match else ""
    where = _locate_cell(notebook, source)
    if not ename and match:  # from IPython's traceback, after the cell's source and printed output
        after = detail[detail.find(match.group(1)) + len(match.group(1)) :]
        head = after.find(_TRACEBACK_HEAD)
        errors = _ERROR_LINE.findall(after[head:] if head >= 0 else after)
        if errors:
            ename, evalue = errors[-1]
            evalue = evalue.strip()
    if detail.startswith(_CELL_MARKERS[1]):
        error = "timed out"
    elif ename:
        error = f"raised {ename}: {evalue}" if evalue else f"raised {ename}"
    else:
        error = "failed"
    lines = detail.splitlines()
    if len(lines) > 80:  # keep the cell and the end of the traceback
        lines = lines[:40] + ["[...]"] + lines[-35:]
    return f"{shown}: {where} {error}\n" + "\n".join(lines)


def _report_files(outdir: Path) -> list[Path]:
    reports = outdir / "reports"
    return sorted(reports.rglob("*.err.log")) if reports.is_dir() else []


def _failures_from_reports(app, outdir: Path) -> list[str]:
    """Describe each notebook that failed without raising; delete the page written for it."""
    messages = []
    for log in _report_files(outdir):
        docname = log.relative_to(outdir / "reports").as_posix()[: -len(".err.log")]
        try:
            notebook = Path(app.env.doc2path(docname))
        except Exception:
            notebook = Path(app.srcdir) / docname
        text = log.read_text(encoding="utf8", errors="replace")
        messages.append(_describe_failure(notebook, text, Path(app.srcdir)))
        try:
            page = Path(app.builder.get_outfilename(docname))
        except Exception:
            page = outdir / f"{docname}.html"
        page.unlink(missing_ok=True)  # the page shows the traceback and cells without output
    return messages


def _execution_error(exception):
    """The myst-nb ExecutionError behind ``exception`` (or None)."""
    try:
        from myst_nb.core.execute.base import ExecutionError
    except ImportError:  # pragma: no cover
        return None
    seen = 0
    while exception is not None and seen < 5:
        if isinstance(exception, ExecutionError):
            return exception
        exception = exception.__cause__ or exception.__context__
        seen += 1
    return None


def _check_notebooks(app, exception):
    """Fail the build on any failed notebook, name it, and keep reports/ out of the output."""
    if isinstance(exception, NotebookExecutionFailed):
        return  # raised by this handler; Sphinx emits build-finished again with it
    outdir = Path(app.outdir)
    messages = _failures_from_reports(app, outdir)
    shutil.rmtree(outdir / "reports", ignore_errors=True)
    failed = _execution_error(exception)
    if failed is not None:
        cause = failed.__cause__
        messages.insert(
            0,
            _describe_failure(
                Path(str(failed)),
                str(cause or failed),
                Path(app.srcdir),
                ename=str(getattr(cause, "ename", "") or ""),
                evalue=str(getattr(cause, "evalue", "") or ""),
            ),
        )
    if not messages:
        return
    summary = "\n\n".join(messages)
    if exception is not None and failed is None:
        # Another error stopped the build: let it through, but name the failed notebooks first.
        logger.error("notebook execution failed:\n%s", summary)
        return
    if exception is None:
        _prune_output(app, None)  # the pages were written: leave the output as tidy as a good build's
    raise NotebookExecutionFailed(
        f"{len(messages)} notebook(s) failed, so the book is not built.\n\n{summary}\n"
    ) from None


# --------------------------------------------------------------------------------------------------
# Output pruning


def _referenced_static_paths(outdir: Path) -> set[str]:
    """Every ``_static/...`` path an HTML page of the output refers to."""
    refs: set[str] = set()
    pattern = re.compile(r"_static/([^\"'?#\s)<>]+)")
    for page in outdir.rglob("*.html"):
        if "_static" in page.relative_to(outdir).parts:
            continue
        refs.update(pattern.findall(page.read_text(encoding="utf8", errors="replace")))
    return refs


def _vendored_names(app) -> list[str]:
    """Files the book's own html_static_path folders put into _static (relative paths).

    Only the relative entries (the ones _config.yml names): extensions append their own folders as
    absolute paths, and what their scripts fetch at run time is not ours to judge.
    """
    names = []
    for entry in app.config.html_static_path:
        if os.path.isabs(entry):
            continue
        folder = Path(app.confdir, entry)
        if folder.is_dir():
            names += [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()]
        elif folder.is_file():
            names.append(folder.name)
    return names


def _prune_output(app, exception):
    if exception is not None or app.builder.format != "html":
        return
    outdir = Path(app.outdir)
    static = outdir / "_static"
    referenced = _referenced_static_paths(outdir)
    removed = []
    for name in [*_vendored_names(app), *_PRUNE_IF_UNREFERENCED]:
        path = static / name
        if path.is_file() and name not in referenced:
            path.unlink()
            removed.append(f"_static/{name}")
    for name in _ALWAYS_PRUNE_DIRS:
        if (static / name).is_dir():
            shutil.rmtree(static / name)
            removed.append(f"_static/{name}/")
    for source_map in outdir.rglob("*.map"):
        source_map.unlink()
        removed.append(source_map.relative_to(outdir).as_posix())
    for asset in [*static.rglob("*.js"), *static.rglob("*.css")]:
        text = asset.read_text(encoding="utf8", errors="surrogateescape")
        if "sourceMappingURL" in text:
            stripped = _SOURCE_MAP_COMMENT[asset.suffix].sub("", text)
            if stripped != text:
                asset.write_text(stripped, encoding="utf8", errors="surrogateescape")
    if removed:
        logger.info("effx_book: removed from the output (unused): %s", ", ".join(sorted(removed)))


#: Code cells hold at most 88 columns (tests/book/test_notebook_style.py); at the theme's
#: code size an 88-column line scrolls sideways in the column of a 1400 px window, so code
#: and output blocks use a slightly smaller monospace size (the browser test measures it).
CODE_CSS_NAME = "effx-code.css"
CODE_CSS = """div.cell_input pre, div.cell_output pre { font-size: 0.78rem; }
"""


def _write_code_css(app, exception):
    if exception is not None or app.builder.format != "html":
        return
    static = Path(app.outdir) / "_static"
    static.mkdir(parents=True, exist_ok=True)
    (static / CODE_CSS_NAME).write_text(CODE_CSS, encoding="utf8")


def setup(app):
    app.add_css_file(CODE_CSS_NAME)
    app.connect("build-finished", _write_code_css, priority=50)
    # Early (priority 1), so the duplicates are gone before other handlers look at the list.
    app.connect("html-page-context", _dedupe_scripts, priority=1)
    # Late (after sphinx.ext.mathjax and myst-nb, priority 500), so their scripts are in the list.
    app.connect("html-page-context", _per_page_assets, priority=900)
    app.connect("builder-inited", _drop_fontawesome_js)
    app.connect("build-finished", _check_notebooks, priority=100)
    app.connect("build-finished", _prune_output, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True, "version": "1.1"}
