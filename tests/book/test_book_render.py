"""The built book: it never ships a failed notebook, it stays light, and it works offline.

Unit tests (no browser, no built book needed): a throwaway three-cell book is built with
``jupyter-book build`` and this repository's ``sphinx:`` configuration and extension, the way ``make
book`` builds the course; a cell that raises must fail the build, the message must name the notebook
and the cell, and ``reports/`` (tracebacks with local paths) must not be left in the HTML.

Browser tests (``-m browser``; run after the book is built, ``make test`` does: book-strict, then these):
the built book opened in a real headless Chromium with the network cut off. For every notebook page in
_toc.yml they check that each plotly figure was actually drawn (an SVG inside the figure's div), that
math was typeset, that a Colab launch link is on the page, and that no script raised; every request to
a host other than the local test server is aborted, so a page that only works online fails here. They
also weigh a prose page and a figure page (bytes of every request until the network is idle) and check
the output holds no source maps, no reports/ and no unused vendored scripts. Screenshots land in
_build/screenshots/ for a human to look at.

The house style of figures (effx_lab.viz), at 1400 and at 400 px wide: on every page with a plotly
figure, no figure is wider than its column, no two text boxes of a figure (title, subtitle, legend,
menus, axis titles, tick labels, annotations, sliders, colour bars, the toolbar while hovered) overlap
or stick out of it, and no text is drawn under 10 px. A failure names the page, the figure, the width
and the elements, and leaves a screenshot of the figure in _build/screenshots/figures/. Code cells:
no input line over 88 columns (an expected failure until the notebooks are rewrapped), with the share
of lines that overflow their box at 1400 px, per page. ``EFFX_BOOK_HTML=<dir>`` points the browser
tests at another build.
"""
from __future__ import annotations

import copy
import functools
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
# The built book; EFFX_BOOK_HTML points the browser tests at another build (e.g. a copy under /tmp).
HTML = Path(os.environ.get("EFFX_BOOK_HTML") or ROOT / "_build" / "html")
SHOTS = ROOT / "_build" / "screenshots"
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


def _toc_files() -> list[str]:
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"]]

    def walk(entries):
        for e in entries or []:
            if "file" in e:
                files.append(e["file"])
            walk(e.get("sections"))
            walk(e.get("chapters"))

    for part in toc.get("parts", []):
        walk(part.get("chapters"))
    return files


PAGES = _toc_files()
NOTEBOOK_PAGES = [f for f in PAGES if (ROOT / f"{f}.ipynb").exists()]
PROSE_PAGE = "book/intro"  # no figure, no math: the theme alone
MATH_PAGE = "book/glossary"  # prose with math, no figure
FIGURE_PAGE = NOTEBOOK_PAGES[0]
# Bytes (uncompressed) a prose page may request on a first visit, until the network is idle.
PROSE_PAGE_BUDGET = 1_500_000


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.fail(
        "headless Chromium is needed for the rendered-book check and was not found. "
        "On Debian/Ubuntu: sudo apt-get install chromium  (or set EFFX_SKIP_BROWSER=1 to skip knowingly)"
    )


@pytest.fixture(scope="module")
def server():
    if os.environ.get("EFFX_SKIP_BROWSER") == "1":
        pytest.skip("EFFX_SKIP_BROWSER=1")
    if not (HTML / "index.html").exists():
        pytest.fail(f"no built book at {HTML}: run `make book` (or `make book-strict`) first")
    handler = functools.partial(_QuietHandler, directory=str(HTML))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest output readable
        pass


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    executable = _chromium()
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_FLAGS)
        yield b
        b.close()


def _open(browser, url: str, width: int = 1280, height: int = 900):
    """Open ``url`` with every non-local request aborted; return (page, errors, blocked)."""
    context = browser.new_context(viewport={"width": width, "height": height})
    page = context.new_page()
    errors: list[str] = []
    blocked: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))

    def route(r):
        host = urlparse(r.request.url).hostname
        if r.request.url.startswith("data:") or host in ("127.0.0.1", "localhost"):
            r.continue_()
        else:
            blocked.append(r.request.url)
            r.abort()

    page.route("**/*", route)
    page.goto(url, wait_until="load")
    # Not "networkidle": aborted requests may be retried by a script forever. Give deferred scripts
    # (MathJax, widgets) a moment, then let each test wait for what it needs.
    page.wait_for_timeout(1000)
    return context, page, errors, blocked


@pytest.mark.browser
@pytest.mark.parametrize("doc", PAGES)
def test_page_loads_offline_without_errors(server, browser, doc):
    context, page, errors, blocked = _open(browser, f"{server}/{doc}.html")
    try:
        assert page.title(), f"{doc}: empty <title>"
        assert not errors, f"{doc}: JavaScript errors: {errors}"
        scripts = [u for u in blocked if u.split("?")[0].endswith((".js", ".css"))]
        assert not scripts, f"{doc}: the page needs scripts/styles from the network: {scripts}"
    finally:
        context.close()


@pytest.mark.browser
@pytest.mark.parametrize("doc", NOTEBOOK_PAGES)
def test_notebook_page_renders_figures_math_and_colab_link(server, browser, doc):
    context, page, errors, blocked = _open(browser, f"{server}/{doc}.html")
    try:
        try:
            page.wait_for_function(
                "() => { const f = document.querySelectorAll('div.js-plotly-plot');"
                " return f.length > 0 && [...f].every(d => d.querySelector('svg.main-svg')); }",
                timeout=15000,
            )
        except Exception:  # the assertions below say what is missing
            pass
        figures = page.locator("div.js-plotly-plot")
        n_fig = figures.count()
        assert n_fig >= 1, f"{doc}: no plotly figure on the page (renderer not set for the book build?)"
        drawn = page.locator("div.js-plotly-plot svg.main-svg")
        n_drawn = page.evaluate(
            "() => [...document.querySelectorAll('div.js-plotly-plot')]"
            ".filter(d => d.querySelector('svg.main-svg') && d.getBoundingClientRect().height > 100).length"
        )
        assert n_drawn == n_fig, f"{doc}: {n_fig} figures, only {n_drawn} drawn ({drawn.count()} svgs)"
        colab = page.locator('a[href*="colab.research.google.com/github/"]')
        assert colab.count() >= 1, f"{doc}: no Colab launch link"
        href = colab.first.get_attribute("href")
        assert href.endswith(f"{doc}.ipynb"), f"{doc}: Colab link points elsewhere: {href}"
        if page.locator("div.math, span.math").count():
            assert page.locator("mjx-container").count() >= 1, f"{doc}: math present but not typeset"
        assert not errors, f"{doc}: JavaScript errors: {errors}"
        if page.locator('script[type="application/vnd.jupyter.widget-view+json"]').count():
            assert page.locator(".jupyter-widgets, .widget-inline-hbox").count() >= 1, f"{doc}: widgets not rendered"
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / (doc.replace("/", "__") + ".png")), full_page=False)
        # A second shot, scrolled to the first figure, shows a figure as a reader sees it.
        figures.first.scroll_into_view_if_needed()
        page.screenshot(path=str(SHOTS / (doc.replace("/", "__") + "__figure.png")))
    finally:
        context.close()


# --------------------------------------------------------------------------------------------------
# One figure style: each plotly figure checked in a browser, desktop and phone widths

FIGURE_WIDTHS = (1400, 400)  # px of the browser window: a desktop, a phone
MIN_FONT_PX = 10  # no text of a figure may be drawn smaller (effx_lab.viz.MIN_FONT_PX)
CODE_COLUMNS = 88  # the course's line length for code cells

# Runs in the page. For each plotly figure (or only figure ``args.only``): the figure
# fits its column (no horizontal overflow); no two of its text boxes (title, subtitle,
# legend, menus, axis titles, tick labels, annotations, sliders, colour bars, and the
# toolbar while it shows) overlap or stick out of the figure; no text is drawn under
# ``args.minFont`` px (the font size times the element's scale on screen, which is how
# plotly shrinks sunburst and bar labels). ``args.modebarOnly`` reports only what the
# toolbar overlaps: it shows while the mouse is over the figure, so the test hovers each
# figure in turn.
_FIGURE_STYLE_JS = r"""
(args) => {
  const TOL = 2, out = [];
  const figures = [...document.querySelectorAll("div.js-plotly-plot")];
  const shown = (el, stop) => {
    for (let e = el; e && e !== stop; e = e.parentElement) {
      const cs = getComputedStyle(e);
      const hidden = cs.display === "none" || cs.visibility === "hidden";
      if (hidden || parseFloat(cs.opacity) === 0) return false;
    }
    const r = el.getBoundingClientRect();
    return r.width > 0.5 && r.height > 0.5;
  };
  const words = (el) =>
    (el.textContent || "").replace(/[\s\u200b]+/g, " ").trim().slice(0, 48);
  const px = (n) => `${Math.round(n)} px`;
  figures.forEach((gd, index) => {
    if (args.only !== null && args.only !== index) return;
    const fr = gd.getBoundingClientRect(), stop = gd.parentElement, problems = [];
    const column = gd.closest(".cell_output") || gd.parentElement;
    if (!args.modebarOnly) {
      const cw = column.clientWidth;
      if (fr.width > cw + 1)
        problems.push(`the figure is ${px(fr.width)} wide in a ${px(cw)} column`);
      if (column.scrollWidth > cw + 1)
        problems.push(`its output overflows (${px(column.scrollWidth)} > ${px(cw)})`);
      const svg = gd.querySelector("svg.main-svg");
      const drawn = svg ? svg.getBoundingClientRect().width : 0;
      if (drawn > fr.width + 1)
        problems.push(`the drawing is ${px(drawn)} wide in a ${px(fr.width)} figure`);
    }
    const boxes = [];
    const add = (kind, el, text) => {
      if (!shown(el, stop)) return;
      const label = text === undefined ? words(el) : text;
      boxes.push({kind, el, text: label, r: el.getBoundingClientRect()});
    };
    const each = (selector, fn) => gd.querySelectorAll(selector).forEach(fn);
    each("text.gtitle", (e) => add("title", e));
    each("text.gtitle-subtitle", (e) => add("subtitle", e));
    each("g.legend", (e) => add("legend", e, ""));
    each("g.updatemenu-header-group, g.updatemenu-button", (e) => add("menu", e));
    each("text", (e) => {
      if (/^[xy]\d*title$/.test(e.getAttribute("class") || "")) add("axis title", e);
    });
    each("g.xaxislayer-above, g.yaxislayer-above", (e) => {
      if (!e.querySelector("text")) return;
      const sub = e.closest("g.subplot");
      const id = sub ? (sub.getAttribute("class") || "").split(" ")[1] : "";
      const axis = e.matches("g.xaxislayer-above") ? "x" : "y";
      add(`${axis} tick labels${id ? ` of subplot ${id}` : ""}`, e, "");
    });
    each("g.annotation", (e) => add("annotation", e));
    each("g.slider-container", (e) => add("slider", e, ""));
    each("g.colorbar", (e) => add("colour bar", e, ""));
    each(".modebar", (e) => {
      const groups = [...e.querySelectorAll(".modebar-group")];
      const opacity = (g) => parseFloat(getComputedStyle(g).opacity);
      const visible = groups.some((g) => opacity(g) > 0.05);
      if (visible) add("toolbar", e, "");
    });
    const name = (b) => b.kind + (b.text ? ` "${b.text}"` : "");
    for (let i = 0; i < boxes.length; i++) {
      const a = boxes[i], ra = a.r;
      const outside = ra.left < fr.left - TOL || ra.right > fr.right + TOL ||
                      ra.top < fr.top - TOL || ra.bottom > fr.bottom + TOL;
      if (!args.modebarOnly && outside)
        problems.push(`${name(a)} sticks out of the figure`);
      for (let j = i + 1; j < boxes.length; j++) {
        const b = boxes[j], rb = b.r;
        if (a.el.contains(b.el) || b.el.contains(a.el)) continue;
        if (args.modebarOnly && a.kind !== "toolbar" && b.kind !== "toolbar") continue;
        const ox = Math.min(ra.right, rb.right) - Math.max(ra.left, rb.left);
        const oy = Math.min(ra.bottom, rb.bottom) - Math.max(ra.top, rb.top);
        const area = `${Math.round(ox)} x ${Math.round(oy)} px`;
        if (ox > TOL && oy > TOL)
          problems.push(`${name(a)} overlaps ${name(b)} (${area})`);
      }
    }
    if (!args.modebarOnly) {
      const small = new Set();
      each("text, tspan", (t) => {
        if (!(t.textContent || "").trim() || !shown(t, stop)) return;
        const m = t.getScreenCTM ? t.getScreenCTM() : null;
        const scale = m ? Math.sqrt(Math.abs(m.a * m.d - m.b * m.c)) : 1;
        const size = parseFloat(getComputedStyle(t).fontSize) * scale;
        if (size < args.minFont - 0.05)
          small.add(`"${words(t)}" ${size.toFixed(1)} px`);
      });
      const list = [...small];
      if (list.length) {
        const more = list.length > 5 ? ` and ${list.length - 5} more` : "";
        const first = list.slice(0, 5).join(", ");
        problems.push(`text under ${args.minFont} px: ${first}${more}`);
      }
    }
    out.push({index, problems});
  });
  return out;
}
"""

# A signature of every figure's drawn size and top margin: the book's script refits a
# figure after its first draw (title lines, menu band), so the check waits until two
# looks agree.
_FIGURES_SETTLED_JS = """
() => [...document.querySelectorAll('div.js-plotly-plot')].map(d => {
  const s = d._fullLayout && d._fullLayout._size;
  if (!d.querySelector('svg.main-svg')) return 'x';
  return [d.clientWidth, d.clientHeight, s ? Math.round(s.t) : -1].join(',');
}).join(';')
"""


def _has_figure(doc: str) -> bool:
    page = HTML / f"{doc}.html"
    text = page.read_text(encoding="utf8", errors="replace") if page.is_file() else ""
    return 'class="plotly-graph-div"' in text


def _wait_for_figures(page) -> None:
    page.wait_for_function(
        "() => [...document.querySelectorAll('div.js-plotly-plot')]"
        ".every(d => d.querySelector('svg.main-svg'))",
        timeout=15000,
    )
    page.evaluate("() => document.fonts.ready.then(() => true)")
    last, deadline = None, time.monotonic() + 8
    while time.monotonic() < deadline:
        page.wait_for_timeout(250)
        now = page.evaluate(_FIGURES_SETTLED_JS)
        if now == last and "x" not in now.split(";"):
            return
        last = now


@pytest.mark.browser
@pytest.mark.parametrize("width", FIGURE_WIDTHS)
@pytest.mark.parametrize("doc", PAGES)
def test_figures_keep_the_house_style(server, browser, doc, width):
    """At 1400 and 400 px: no overlapping or cut-off text, no overflow, no tiny text."""
    if not _has_figure(doc):
        pytest.skip(f"{doc} has no plotly figure")
    context, page, errors, _ = _open(browser, f"{server}/{doc}.html", width=width)
    try:
        _wait_for_figures(page)
        args = {"minFont": MIN_FONT_PX, "only": None, "modebarOnly": False}
        results = page.evaluate(_FIGURE_STYLE_JS, args)
        assert results, f"{doc} at {width} px: no plotly figure drawn"
        problems = {r["index"]: list(r["problems"]) for r in results}
        figures = page.locator("div.js-plotly-plot")
        for index in range(len(results)):
            # The toolbar shows while the mouse is over a figure (the book hides it on a
            # phone): hover each figure and check what the toolbar covers.
            figures.nth(index).scroll_into_view_if_needed()
            figures.nth(index).hover(position={"x": 5, "y": 5})
            page.wait_for_timeout(400)  # its fade-in
            hover = {"minFont": MIN_FONT_PX, "only": index, "modebarOnly": True}
            for r in page.evaluate(_FIGURE_STYLE_JS, hover):
                problems[index] += r["problems"]
        page.mouse.move(0, 0)
        failed = {i: p for i, p in problems.items() if p}
        shots = SHOTS / "figures"
        if failed:
            shots.mkdir(parents=True, exist_ok=True)
            for index in failed:
                name = f"{doc.replace('/', '__')}__{index}__{width}.png"
                figures.nth(index).screenshot(path=str(shots / name))
        report = "\n".join(
            f"  {doc}, figure {i} (of {len(results)}, from 0), at {width} px: {problem}"
            for i, ps in failed.items()
            for problem in ps
        )
        assert not failed, (
            f"{doc} at {width} px: {len(failed)} figure(s) break the house style "
            f"(screenshots in {shots}):\n{report}"
        )
        assert not errors, f"{doc} at {width} px: JavaScript errors: {errors}"
    finally:
        context.close()


# For a notebook page: its code-cell input lines longer than ``columns``, and how many
# input and output lines overflow their box at this width (a line's length times the
# width of one character of the block's monospace font, against the block's inner
# width).
_CODE_WIDTH_JS = r"""
(columns) => {
  const measure = (pre) => {
    const probe = document.createElement("span");
    probe.textContent = "M".repeat(40);
    pre.appendChild(probe);
    const ch = probe.getBoundingClientRect().width / 40;
    probe.remove();
    const cs = getComputedStyle(pre);
    const padding = parseFloat(cs.paddingLeft) + parseFloat(cs.paddingRight);
    const inner = pre.clientWidth - padding;
    const lines = (pre.textContent || "").replace(/\n$/, "").split("\n");
    return {lines, over: lines.filter((l) => l.length * ch > inner + 1).length};
  };
  const stats = {input: 0, inputOver: 0, output: 0, outputOver: 0, long: []};
  document.querySelectorAll(".cell_input pre").forEach((pre) => {
    const m = measure(pre);
    stats.input += m.lines.length;
    stats.inputOver += m.over;
    m.lines.forEach((l) => { if (l.length > columns) stats.long.push(l.length); });
  });
  document.querySelectorAll(".cell_output pre").forEach((pre) => {
    const m = measure(pre);
    stats.output += m.lines.length;
    stats.outputOver += m.over;
  });
  return stats;
}
"""


def _share(part: int, whole: int) -> str:
    return f"{part}/{whole} ({part / whole:.0%})" if whole else "0/0"


@pytest.mark.browser
def test_code_cells_fit_the_page_at_laptop_width(server, browser):
    """No code-cell line scrolls sideways at 1400 px, as the reader sees it (the source
    check, 88 columns, is tests/book/test_notebook_style.py; this one sees the theme's
    font and column). Output lines that overflow are counted in the message only."""
    rows, offenders = [], []
    for doc in NOTEBOOK_PAGES:
        context, page, _, _ = _open(browser, f"{server}/{doc}.html", width=1400)
        try:
            s = page.evaluate(_CODE_WIDTH_JS, CODE_COLUMNS)
        finally:
            context.close()
        longest = f" (the longest {max(s['long'])})" if s["long"] else ""
        inputs = _share(s["inputOver"], s["input"])
        outputs = _share(s["outputOver"], s["output"])
        rows.append(
            f"  {doc}: overflowing at 1400 px: input lines {inputs}, output lines "
            f"{outputs}; input lines over {CODE_COLUMNS} columns: {len(s['long'])}"
            f"{longest}"
        )
        if s["inputOver"]:
            offenders.append(doc)
    assert not offenders, (
        f"{len(offenders)} notebook page(s) have code-cell lines that scroll sideways "
        "at 1400 px; per page:\n" + "\n".join(rows)
    )


# --------------------------------------------------------------------------------------------------
# A failed notebook fails the build (no browser, no built book needed)

FAILING_SOURCE = "y = 20 + 1\nassert y == 42, 'effx tiny-book marker'"


def _jupyter_book() -> str:
    exe = Path(sys.executable).with_name("jupyter-book")
    found = str(exe) if exe.exists() else shutil.which("jupyter-book")
    if not found:
        pytest.fail("jupyter-book is not installed: `make setup` installs the book's dependencies")
    return found


def _build_tiny_book(tmp_path: Path, notebook_metadata: dict | None = None):
    """Build a one-notebook book with this repository's extension and sphinx config; return (dir, run)."""
    import nbformat
    from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

    real = yaml.safe_load((ROOT / "_config.yml").read_text())
    sphinx = copy.deepcopy(real.get("sphinx") or {})
    sphinx["local_extensions"] = {
        name: str(ROOT / folder) for name, folder in (sphinx.get("local_extensions") or {}).items()
    }
    (sphinx.get("config") or {}).pop("html_static_path", None)  # the vendored JS is not needed here
    book = tmp_path / "tinybook"
    book.mkdir()
    config = {
        "title": "tiny",
        "only_build_toc_files": True,
        "execute": {"execute_notebooks": "force", "timeout": 60},
        "sphinx": sphinx,
    }
    (book / "_config.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    (book / "_toc.yml").write_text("format: jb-book\nroot: tiny\n")
    nb = new_notebook()
    nb.cells = [
        new_markdown_cell("# A tiny book"),
        new_code_cell(FAILING_SOURCE),  # the second cell raises
        new_code_cell("print('never runs')"),
    ]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata.update(notebook_metadata or {})
    nbformat.write(nb, str(book / "tiny.ipynb"))
    env = {**os.environ, "EFFX_PLOTLY_RENDERER": "book"}  # as `make book`
    run = subprocess.run(
        [_jupyter_book(), "build", "."], cwd=book, env=env, capture_output=True, text=True, timeout=300
    )
    return book, run


@pytest.mark.parametrize(
    "notebook_metadata",
    [None, {"mystnb": {"execution_raise_on_error": False}}],
    ids=["raises", "notebook-opts-out-of-raising"],
)
def test_cell_error_fails_the_book_build_naming_notebook_and_cell(tmp_path, notebook_metadata):
    book, run = _build_tiny_book(tmp_path, notebook_metadata)
    out = run.stdout + run.stderr
    assert run.returncode != 0, f"the book built although a cell raised:\n{out[-4000:]}"
    assert "tiny.ipynb: cell 2 of 3 (code cell 1) raised AssertionError: effx tiny-book marker" in out, out[-4000:]
    assert FAILING_SOURCE in out, f"the failing cell's source is not shown:\n{out[-4000:]}"
    html = book / "_build" / "html"
    assert not (html / "reports").exists(), "reports/ (tracebacks with local paths) left in the HTML"
    assert not (html / "tiny.html").exists(), "the failed notebook's page was left in the HTML"


# --------------------------------------------------------------------------------------------------
# A light book: each page loads only what it uses (needs the built book)


def _weigh(browser, base: str, doc: str):
    """Open ``doc`` offline and wait for the network to be idle; return (context, page, {path: bytes}).

    Bytes are the sizes of the local files the page requested (uncompressed, as served here), each
    counted once; requests to other hosts are aborted and count nothing (the offline test fails them).
    """
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))

    def route(r):
        if urlparse(r.request.url).hostname in ("127.0.0.1", "localhost"):
            r.continue_()
        else:
            r.abort()

    page.route("**/*", route)
    page.goto(f"{base}/{doc}.html", wait_until="networkidle", timeout=60000)
    # A long script (plotly, MathJax) can hold back layout, and with it the icon fonts, past the first
    # idle moment: wait for the fonts, then until no new request has started for a second.
    page.evaluate("() => document.fonts.ready.then(() => true)")
    count, quiet_since, deadline = -1, time.monotonic(), time.monotonic() + 20
    while time.monotonic() < deadline:
        if len(requested) != count:
            count, quiet_since = len(requested), time.monotonic()
        elif time.monotonic() - quiet_since >= 1.0:
            break
        page.wait_for_timeout(200)
    sizes: dict[str, int] = {}
    for url in requested:
        parsed = urlparse(url)
        if parsed.scheme not in ("http", "https") or parsed.hostname not in ("127.0.0.1", "localhost"):
            continue
        path = HTML / unquote(parsed.path).lstrip("/")
        if path.is_dir():
            path = path / "index.html"
        sizes[unquote(parsed.path)] = path.stat().st_size if path.is_file() else 0
    return context, page, sizes


def _biggest(sizes: dict[str, int], n: int = 8) -> str:
    return ", ".join(f"{p} {b / 1e6:.2f} MB" for p, b in sorted(sizes.items(), key=lambda kv: -kv[1])[:n])


@pytest.mark.browser
def test_pages_load_only_what_they_use(server, browser):
    weights = {}
    loaded = {}
    for doc in (PROSE_PAGE, MATH_PAGE, FIGURE_PAGE):
        context, page, sizes = _weigh(browser, server, doc)
        try:
            weights[doc] = sum(sizes.values())
            loaded[doc] = sizes
            names = {p.rsplit("/", 1)[-1] for p in sizes}
            has_math = page.locator("div.math, span.math").count() > 0
            assert ("tex-svg.js" in names) == has_math, f"{doc}: MathJax loaded {'without' if not has_math else 'but no'} math"
            if has_math:
                page.wait_for_selector("mjx-container", timeout=15000)
            widget_state = page.locator('script[type="application/vnd.jupyter.widget-state+json"]').count()
            widget_js = names & {"require.min.js", "embed-amd.js"}
            assert widget_state or not widget_js, f"{doc}: loads the widget renderer {widget_js} without widgets"
            # The icons come from the theme's CSS and the Font Awesome web fonts (no fontawesome.js).
            icon_font = page.evaluate(
                "() => { const i = document.querySelector('i.fa-solid, i.fas, i.fa-brands, i.fab');"
                " return i ? getComputedStyle(i, '::before').fontFamily + ' | ' + getComputedStyle(i, '::before').content : ''; }"
            )
            assert "Font Awesome" in icon_font, f"{doc}: theme icons not drawn by the icon font ({icon_font!r})"
            fonts_loaded = page.evaluate(
                "() => [...document.fonts].filter(f => f.family.includes('Font Awesome') && f.status === 'loaded').length"
            )
            assert fonts_loaded >= 1, f"{doc}: no Font Awesome web font loaded"
            SHOTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SHOTS / (doc.replace("/", "__") + "__weighed.png")))
        finally:
            context.close()
    SHOTS.mkdir(parents=True, exist_ok=True)
    (SHOTS / "page_weight.json").write_text(
        json.dumps({doc: {"bytes": weights[doc], "requests": loaded[doc]} for doc in weights}, indent=1)
    )
    prose = loaded[PROSE_PAGE]
    assert weights[PROSE_PAGE] <= PROSE_PAGE_BUDGET, (
        f"{PROSE_PAGE} requests {weights[PROSE_PAGE] / 1e6:.2f} MB (budget {PROSE_PAGE_BUDGET / 1e6:.1f} MB): "
        f"{_biggest(prose)}"
    )
    plotly = [p for p in loaded[FIGURE_PAGE] if p.endswith("/plotly.min.js")]
    assert plotly, f"{FIGURE_PAGE}: plotly.min.js not requested ({_biggest(loaded[FIGURE_PAGE])})"
    for doc in (PROSE_PAGE, MATH_PAGE):
        assert not [p for p in loaded[doc] if p.endswith("/plotly.min.js")], f"{doc}: loads plotly.min.js"


@pytest.mark.browser
def test_output_has_no_source_maps_reports_or_unused_vendored_files():
    if not (HTML / "index.html").exists():
        pytest.fail(f"no built book at {HTML}: run `make book` (or `make book-strict`) first")
    maps = sorted(str(p.relative_to(HTML)) for p in HTML.rglob("*.map"))
    assert not maps, f"source maps in the output: {maps}"
    assert not (HTML / "reports").exists(), "reports/ (notebook tracebacks with local paths) in the output"
    static = HTML / "_static"
    # The comments that make a browser's dev tools fetch a .map (a bundler's code may hold the same
    # text in a string: only a JS line comment, or a CSS comment, counts).
    map_comment = {
        ".js": re.compile(r"(?m)^[ \t]*//[#@][ \t]*sourceMappingURL="),
        ".css": re.compile(r"/\*[#@][ \t]*sourceMappingURL="),
    }
    pointing = [
        str(p.relative_to(HTML))
        for p in [*static.rglob("*.js"), *static.rglob("*.css")]
        if map_comment[p.suffix].search(p.read_text(encoding="utf8", errors="replace"))
    ]
    assert not pointing, f"files still pointing at source maps: {pointing}"
    pages = "\n".join(
        p.read_text(encoding="utf8", errors="replace") for p in HTML.rglob("*.html") if "_static" not in p.parts
    )
    for name in ("plotly.min.js", "tex-svg.js", "require.min.js", "embed-amd.js", "scripts/fontawesome.js"):
        if (static / name).exists():
            assert f"_static/{name}" in pages, f"_static/{name} is in the output but no page uses it"


@pytest.mark.browser  # reads the built book: runs with the browser tests, after make book
def test_rendered_solutions_hide_colab_titles_and_nbgrader_markers():
    """A solution reads as code a programmer would write: the page shows neither Colab's
    ``#@title`` line nor nbgrader's ``### BEGIN/END SOLUTION`` lines (the notebook keeps
    them)."""
    if not (HTML / "index.html").exists():
        pytest.fail(f"no built book at {HTML}: run `make book` (or `make book-strict`) first")
    pages = sorted((HTML / "notebooks").rglob("*.html"))
    assert pages, f"no notebook pages under {HTML / 'notebooks'}"
    shown = []
    for page in pages:
        text = page.read_text(encoding="utf8", errors="replace")
        for pattern in ("BEGIN SOLUTION", "END SOLUTION", "#@title Solution"):
            if pattern in text:
                shown.append(f"{page.relative_to(HTML)}: {pattern!r}")
    assert not shown, "\n".join(shown)
