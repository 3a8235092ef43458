"""The built book, opened in a real headless Chromium with the network cut off.

Run after the book is built (``make test`` does: book-strict, then this). For every notebook page in
_toc.yml it checks that each plotly figure was actually drawn (an SVG inside the figure's div), that
math was typeset, that a Colab launch link is on the page, and that no script raised; every request to
a host other than the local test server is aborted, so a page that only works online fails here.
Screenshots land in _build/screenshots/ for a human to look at.
"""
from __future__ import annotations

import functools
import http.server
import os
import shutil
import threading
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[1]
HTML = ROOT / "_build" / "html"
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


def _open(browser, url: str):
    """Open ``url`` with every non-local request aborted; return (page, errors, blocked)."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
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

