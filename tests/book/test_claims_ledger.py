"""The claims ledger: book/_ext/effx_ledger.py fills book/claims.md from the notebooks.

Unit tests (no built book): the extension's collection on synthetic notebooks whose
outputs are real verdicts of :class:`effx_lab.claims.Claim`, turned into a doctree by
myst-nb; the problems it reports; the rows and the summary line. A tiny book (two
notebooks and the ledger) is built with ``jupyter-book build -W`` from a pre-filled
execution cache, as ``make test`` builds the course: no kernel runs, so the records can
only come from the cached outputs.

Browser-step tests (``-m browser``; ``make test`` runs them after the strict book
build): in the built book every claim a notebook declares (``Claim("<id>", ...)``) is a
ledger row with a verdict, every row's link reaches the verdict's card in its notebook
page, and the summary's counts are those of the rows. ``EFFX_BOOK_HTML=<dir>`` points
them at another build.
"""
from __future__ import annotations

import copy
import importlib.util
import json
import os
import posixpath
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import unquote, urldefrag

import nbformat
import pytest
import yaml
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from effx_lab import claims, device
from effx_lab.claims import Claim

ROOT = Path(__file__).resolve().parents[2]
HTML = Path(os.environ.get("EFFX_BOOK_HTML") or ROOT / "_build" / "html")
LEDGER_PAGE = "book/claims"


def _load_extension():
    """book/_ext/effx_ledger.py, imported as Sphinx imports it (by its module name)."""
    if "effx_ledger" not in sys.modules:
        path = ROOT / "book" / "_ext" / "effx_ledger.py"
        spec = importlib.util.spec_from_file_location("effx_ledger", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules["effx_ledger"] = module
    return sys.modules["effx_ledger"]


ledger = _load_extension()


@pytest.fixture(autouse=True)
def empty_results(monkeypatch):
    monkeypatch.setattr(claims, "RESULTS", [])
    monkeypatch.setattr(device, "short_summary", lambda: "CPU Test (2 cores)")


# --------------------------------------------------------------------------------------
# Synthetic notebooks with real verdicts


def _claim(claim_id: str, **changes) -> Claim:
    kwargs = dict(
        source="6.02 dB per bit", measure="SQNR slope", unit="dB/bit", holds=(5.0, 7.5),
        weakly=(4.0, 8.5), caveat="one matrix", show=False,
    )
    kwargs.update(changes)
    return Claim(claim_id, f"the claim {claim_id}", **kwargs)


def _shown(record) -> dict:
    """The output a kernel stores when a verdict is displayed."""
    return new_output("display_data", data=record._repr_mimebundle_(), metadata={})


def _cell(source: str, *records, stream: str = "") -> nbformat.NotebookNode:
    cell = new_code_cell(source)
    if stream:
        cell.outputs.append(new_output("stream", name="stdout", text=stream))
    cell.outputs.extend(_shown(r) for r in records)
    return cell


def _notebook(title: str, *cells) -> nbformat.NotebookNode:
    nb = new_notebook()
    nb.cells = [new_markdown_cell(f"# {title}"), *cells]
    nb.metadata["kernelspec"] = {
        "name": "python3", "display_name": "Python 3", "language": "python"
    }
    return nb


def _tiny_notebook() -> nbformat.NotebookNode:
    """01.1: a claim with a negative control, a timed claim; its outputs are real."""
    bits = _claim("01.1-six-db-per-bit")
    bits.measured(6.0, "per channel")
    bits.control(1.0, "per tensor, 2 bits")
    speed = _claim("01.1-cache-faster", unit="x", holds=(2.0, None), weakly=None,
                   device=True)
    speed.measured(0.5)
    r = claims.RESULTS
    html_figure = new_output("display_data", data={"text/html": "<div id='fig'></div>"})
    figure = new_code_cell("show_figure()")
    figure.outputs.append(html_figure)
    return _notebook(
        "01.1 Tiny",
        _cell('from effx_lab.claims import Claim\nbits = Claim(\n'
              '    "01.1-six-db-per-bit", "each bit adds 6 dB",\n    source="6.02 dB",'
              ' measure="slope", holds=(5, 7.5), caveat="one matrix")'),
        _cell('bits.measured(6.0, "per channel")\n'
              'bits.control(1.0, "per tensor, 2 bits")', r[0], r[1], stream="done\n"),
        figure,
        _cell('speed = Claim("01.1-cache-faster", "the cache is faster", source="10x",'
              '\n    measure="ratio", holds=(2, None), caveat="tiny", device=True)'
              "\nspeed.measured(0.5)", r[2]),
    )


def _doctree(nb: nbformat.NotebookNode):
    """The doctree myst-nb makes of ``nb`` (its stored outputs, no execution)."""
    from docutils.core import publish_doctree
    from myst_nb.docutils_ import Parser

    return publish_doctree(
        nbformat.writes(nb),
        parser=Parser(),
        settings_overrides={"nb_execution_mode": "off", "report_level": 4},
    )


# --------------------------------------------------------------------------------------
# Collection


def test_declared_claims_are_found_in_code_cells_only():
    nb = _notebook(
        "01.1",
        new_markdown_cell('In prose: `Claim("01.1-in-markdown", ...)` is not code.'),
        new_code_cell('a = Claim(\n    "01.1-first",\n    "statement")'),
        new_code_cell("b = claims.Claim('01.1-second', 'x')\n"
                      'c = Claim(id="01.1-third")'),
        new_code_cell('d = Claim(f"01.1-built-{n}", "x")  # built at run time'),
        new_code_cell('e = Claim("01.1-first", "again")\nrecord = ClaimRecord("x")'),
        new_code_cell('f = MyClaim("01.1-not-ours")'),
    )
    assert ledger.declared_claims(nb) == ["01.1-first", "01.1-second", "01.1-third"]
    lines = ['x = Claim(\n', '  "01.1-a")']
    on_disk = {"cells": [{"cell_type": "code", "source": lines}]}
    assert ledger.declared_claims(on_disk) == ["01.1-a"]  # sources as lists of lines
    with pytest.raises(TypeError, match="notebook must be a notebook"):
        ledger.declared_claims("01.1.ipynb")


def test_the_cards_of_a_notebook_are_collected_in_order():
    nb = _tiny_notebook()
    data = ledger.collect_claims(_doctree(nb))
    assert data["problems"] == []
    assert data["records"] == [r.as_dict() for r in claims.RESULTS]
    assert data["ids"] == [
        "claim-01-1-six-db-per-bit",
        "claim-01-1-six-db-per-bit-control-1",
        "claim-01-1-cache-faster",
    ]


def test_a_notebook_without_verdicts_gives_nothing():
    nb = _notebook("01.2", _cell("x = 1", stream="1\n"))
    nothing = {"records": [], "ids": [], "problems": []}
    assert ledger.collect_claims(_doctree(nb)) == nothing


def test_an_unreadable_card_is_a_problem_not_a_crash():
    nb = _tiny_notebook()
    broken = '<div class="effx-claim" id="claim-01-1-x" data-effx-claim="{oops"></div>'
    nb.cells[1].outputs.append(new_output("display_data", data={"text/html": broken}))
    data = ledger.collect_claims(_doctree(nb))
    assert len(data["records"]) == 3
    (problem,) = data["problems"]
    assert "a claim card cannot be read" in problem and "'claim-01-1-x'" in problem


def test_the_public_functions_check_their_arguments():
    with pytest.raises(TypeError, match="^doctree must be a docutils node"):
        ledger.collect_claims("<div></div>")
    with pytest.raises(TypeError, match="^docname and data must be"):
        ledger.page_problems("nb/01.1", [])
    with pytest.raises(TypeError, match="^pages must be a list of"):
        ledger.ledger_rows([("nb/01.1",)])
    with pytest.raises(TypeError, match="^rows must be a list"):
        ledger.summary(None)


# --------------------------------------------------------------------------------------
# Problems of a page


def _page(nb) -> dict:
    data = ledger.collect_claims(_doctree(nb))
    data["declared"] = ledger.declared_claims(nb)
    return data


def test_a_healthy_page_has_no_problem():
    assert ledger.page_problems("nb/01.1_tiny", _page(_tiny_notebook())) == []


def test_a_declared_claim_without_a_verdict_is_a_problem():
    nb = _tiny_notebook()
    nb.cells.append(new_code_cell('late = Claim("01.1-never-measured", "x")'))
    (problem,) = ledger.page_problems("nb/01.1_tiny", _page(nb))
    assert problem.startswith("claim 01.1-never-measured is declared in this notebook")
    assert "the claims ledger lacks it" in problem


def test_a_card_whose_id_is_not_its_anchor_is_a_problem():
    data = _page(_tiny_notebook())
    data["ids"][2] = "claim-old-style"
    (problem,) = ledger.page_problems("nb/01.1_tiny", data)
    assert "01.1-cache-faster has id='claim-old-style'" in problem
    assert "would not resolve" in problem


def test_a_claim_measured_twice_shares_an_anchor_and_is_a_problem():
    data = _page(_tiny_notebook())
    data["records"].append(data["records"][0])
    data["ids"].append(data["ids"][0])
    (problem,) = ledger.page_problems("nb/01.1_tiny", data)
    assert problem.startswith("2 verdict cards share the anchor claim-01-1-six-db-per")


def test_an_id_from_another_notebook_and_an_orphan_control_are_problems():
    data = _page(_tiny_notebook())
    problems = ledger.page_problems("nb/01.2_other", data)
    assert len(problems) == 2
    assert all("is recorded in notebook 01.2" in p for p in problems)
    data["records"], data["ids"] = data["records"][1:], data["ids"][1:]
    data["declared"] = []
    (problem,) = ledger.page_problems("nb/01.1_tiny", data)
    assert "negative control 01.1-six-db-per-bit-control-1" in problem
    assert "no verdict of its claim 01.1-six-db-per-bit" in problem


# --------------------------------------------------------------------------------------
# Rows and summary


def test_rows_group_by_notebook_with_controls_under_their_claim_and_last_verdicts():
    first = _claim("01.1-a", device=True)
    first.control(1.0, "two bits")  # a control shown before its claim's verdict
    first.measured(4.5, "first try")
    first.measured(6.0, "second try")  # measured again: the last verdict counts
    first_records = [r.as_dict() for r in claims.RESULTS]
    _claim("01.2-b").measured(6.0)
    rows = ledger.ledger_rows([
        ("nb/01.1_a", first_records),
        ("nb/empty", []),
        ("nb/01.2_b", [claims.RESULTS[-1].as_dict()]),
    ])
    kinds = [(r["kind"], r["doc"], r["record"] and r["record"].id) for r in rows]
    assert kinds == [
        ("notebook", "nb/01.1_a", None),
        ("claim", "nb/01.1_a", "01.1-a"),
        ("control", "nb/01.1_a", "01.1-a-control-1"),
        ("notebook", "nb/01.2_b", None),
        ("claim", "nb/01.2_b", "01.2-b"),
    ]
    assert rows[1]["record"].value_text == "6 dB/bit (second try)"


def test_the_summary_counts_verdicts_and_controls_and_names_the_devices():
    records = []
    for n, value in enumerate([6.0, 6.1, 4.5, 1.0]):
        claim = _claim(f"01.1-c{n}", device=True)
        claim.measured(value)
        records.append(claims.RESULTS[-1].as_dict())
    claim.control(1.0, "dense")
    claim.control(6.0, "sparse")  # a device-dependent control that holds
    records += [r.as_dict() for r in claims.RESULTS[-2:]]
    rows = ledger.ledger_rows([("nb/01.1_x", records)])
    assert ledger.summary(rows) == (
        "4 claims: 2 hold, 1 holds weakly, 1 does not hold here; 2 negative controls "
        "(1 holds on this device); built on CPU Test (2 cores)."
    )
    one = ledger.ledger_rows([("nb/01.1_x", records[:1])])
    assert ledger.summary(one) == (
        "1 claim: 1 holds, 0 hold weakly, 0 do not hold here; 0 negative controls; "
        "built on CPU Test (2 cores)."
    )
    moved = dict(records[1], device="GPU Fake H100 (sm_90)")
    two = ledger.ledger_rows([("nb/01.1_x", [records[0], moved, records[2]])])
    assert ledger.summary(two).endswith(
        "built on several devices: CPU Test (2 cores) (2 verdicts), "
        "GPU Fake H100 (sm_90) (1 verdicts)."
    )
    assert ledger.summary([]).startswith("No verdict was recorded")


# --------------------------------------------------------------------------------------
# The build's bookkeeping: parallel reads, incremental builds, the written pages


def test_records_survive_parallel_reads_and_leave_with_their_page():
    env = SimpleNamespace()
    worker = SimpleNamespace(
        effx_claims={"nb/a": {"records": [1]}, "nb/b": {"records": [2]}},
        effx_ledger_pages={"book/claims"},
    )
    ledger._merge(None, env, ["nb/a", "book/claims"], worker)
    assert env.effx_claims == {"nb/a": {"records": [1]}}  # only the worker's own docs
    assert env.effx_ledger_pages == {"book/claims"}
    ledger._purge(None, env, "nb/a")
    ledger._purge(None, env, "book/claims")
    assert env.effx_claims == {} and env.effx_ledger_pages == set()


def test_any_changed_page_makes_the_ledger_page_read_again():
    env = SimpleNamespace(effx_ledger_pages={"book/claims"})
    assert ledger._outdated(None, env, set(), {"nb/01.1"}, set()) == ["book/claims"]
    assert ledger._outdated(None, env, set(), set(), {"nb/gone"}) == ["book/claims"]
    assert ledger._outdated(None, env, set(), set(), set()) == []


def test_a_link_whose_anchor_is_not_in_the_written_page_is_a_warning(tmp_path, caplog):
    (tmp_path / "nb.html").write_text('<div id="claim-01-1-a"></div>')
    builder = SimpleNamespace(
        name="html", get_outfilename=lambda doc: str(tmp_path / f"{doc}.html")
    )
    links = [
        ("book/claims", "nb", "claim-01-1-a"),
        ("book/claims", "nb", "claim-01-1-b"),
        ("book/claims", "gone", "claim-01-1-c"),
    ]
    app = SimpleNamespace(builder=builder, effx_ledger_links=links)
    with caplog.at_level("WARNING"):
        ledger._check_links(app, None)
    warned = [r.getMessage() for r in caplog.records]
    assert warned == [
        "the claims ledger links to nb#claim-01-1-b, which the built page does not "
        "have",
        "the claims ledger links to gone#claim-01-1-c, which the built page does not "
        "have",
    ]
    assert app.effx_ledger_links == []


# --------------------------------------------------------------------------------------
# Reading a built ledger (the tiny book and the course's book)


class _LedgerHTML(HTMLParser):
    """The summary and the rows of a built ledger page."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.summary: str | None = None
        self.rows: list[dict] = []
        self._in_summary = False
        self._in_ledger = False
        self._cell: list[str] | None = None
        self._link: dict | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        classes = (a.get("class") or "").split()
        if tag == "p" and "effx-ledger-summary" in classes:
            self._in_summary, self.summary = True, ""
        elif tag == "table" and "effx-ledger" in classes:
            self._in_ledger = True
        elif self._in_ledger and tag == "tr":
            self.rows.append({"classes": classes, "cells": [], "links": []})
        elif self._in_ledger and tag in ("td", "th"):
            self._cell = []
        elif self._in_ledger and tag == "a" and self.rows:
            self._link = {"href": a.get("href", ""), "text": ""}

    def handle_endtag(self, tag):
        if tag == "p" and self._in_summary:
            self._in_summary = False
        elif tag == "table":
            self._in_ledger = False
        elif tag in ("td", "th") and self._cell is not None and self.rows:
            self.rows[-1]["cells"].append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "a" and self._link is not None:
            self.rows[-1]["links"].append(self._link)
            self._link = None

    def handle_data(self, data):
        if self._in_summary:
            self.summary += data
        if self._cell is not None:
            self._cell.append(data)
        if self._link is not None:
            self._link["text"] += data


def _read_ledger(page: Path) -> _LedgerHTML:
    parsed = _LedgerHTML()
    parsed.feed(page.read_text(encoding="utf8"))
    assert parsed.summary is not None, f"{page}: no summary line (.effx-ledger-summary)"
    return parsed


def _verdict_rows(parsed: _LedgerHTML, kind: str) -> list[dict]:
    return [row for row in parsed.rows if f"effx-ledger-{kind}" in row["classes"]]


class _Cards(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.ids: dict[str, dict] = {}

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if a.get("id"):
            self.ids[a["id"]] = a


def _broken_links(page: Path, parsed: _LedgerHTML) -> list[str]:
    """Rows whose link does not reach a card of that claim in the page it names."""
    cards: dict[Path, dict[str, dict]] = {}
    broken = []
    for kind in ("claim", "control"):
        for row in _verdict_rows(parsed, kind):
            (link,) = [a for a in row["links"] if "#" in a["href"]]
            path, anchor = urldefrag(link["href"])
            target = Path(posixpath.normpath(page.parent / unquote(path)))
            if target not in cards:
                found = _Cards()
                if target.is_file():
                    found.feed(target.read_text(encoding="utf8"))
                cards[target] = found.ids
            element = cards[target].get(anchor)
            if element is None or claims.CARD_ATTRIBUTE not in element:
                broken.append(f"{link['href']} ({link['text']}): no card with that id")
                continue
            record = claims.ClaimRecord.from_dict(
                json.loads(element[claims.CARD_ATTRIBUTE])
            )
            name = record.id if kind == "claim" else record.control
            if name != link["text"]:
                broken.append(
                    f"{link['href']}: the card is {record.id}, not {link['text']}"
                )
    return broken


_SUMMARY = re.compile(
    r"^(\d+) claims?: (\d+) holds?, (\d+) holds? weakly, (\d+) (?:does|do) not hold "
    r"here; (\d+) negative controls?"
)


def _summary_matches_rows(parsed: _LedgerHTML) -> None:
    match = _SUMMARY.match(parsed.summary)
    assert match, f"summary not understood: {parsed.summary!r}"
    n, holds, weakly, fails, controls = map(int, match.groups())
    rows = _verdict_rows(parsed, "claim")
    verdicts = [row["cells"][4].split(" ", 1)[1] for row in rows]
    assert n == len(rows)
    assert (holds, weakly, fails) == tuple(verdicts.count(v) for v in claims.VERDICTS)
    assert controls == len(_verdict_rows(parsed, "control"))


# --------------------------------------------------------------------------------------
# A tiny book, built from the execution cache


def _jupyter_book() -> str:
    exe = Path(sys.executable).with_name("jupyter-book")
    if not exe.exists():
        pytest.fail("jupyter-book is not installed: `make setup` installs it")
    return str(exe)


def _write_book(book: Path, notebooks: dict[str, nbformat.NotebookNode]) -> None:
    """A book of ``notebooks`` (path -> executed notebook) and the ledger, with this
    repository's sphinx configuration; the notebooks are stored without outputs and
    their executed versions put in the book's execution cache."""
    from jupyter_cache import get_cache
    from jupyter_cache.base import CacheBundleIn

    real = yaml.safe_load((ROOT / "_config.yml").read_text())
    sphinx = copy.deepcopy(real.get("sphinx") or {})
    extensions = dict(sphinx.get("local_extensions") or {})
    extensions.setdefault("effx_ledger", "book/_ext")
    sphinx["local_extensions"] = {k: str(ROOT / v) for k, v in extensions.items()}
    settings = sphinx.setdefault("config", {})
    settings.pop("html_static_path", None)  # vendored JS: not needed here
    config = {
        "title": "tiny",
        "only_build_toc_files": True,
        "execute": {"execute_notebooks": "cache", "cache": "_build/.jupyter_cache"},
        "sphinx": sphinx,
        # the course's bibliography: its bibtex_* settings need sphinxcontrib-bibtex
        "bibtex_bibfiles": [str(ROOT / f) for f in real.get("bibtex_bibfiles", [])],
    }
    (book / "_config.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    chapters = "".join(f"  - file: {p}\n" for p in [*notebooks, "claims"])
    toc = f"format: jb-book\nroot: intro\nchapters:\n{chapters}"
    (book / "_toc.yml").write_text(toc)
    (book / "intro.md").write_text("# A tiny book\n")
    (book / "claims.md").write_text((ROOT / "book" / "claims.md").read_text())
    cache = get_cache(str(book / "_build" / ".jupyter_cache"))
    for name, executed in notebooks.items():
        path = book / f"{name}.ipynb"
        path.parent.mkdir(parents=True, exist_ok=True)
        stored = copy.deepcopy(executed)
        for cell in stored.cells:
            if cell.cell_type == "code":
                cell.outputs, cell.execution_count = [], None
        nbformat.write(stored, str(path))
        cache.cache_notebook_bundle(
            CacheBundleIn(executed, str(path.resolve())), check_validity=False,
            overwrite=True,
        )


@pytest.mark.slow
def test_a_tiny_book_builds_its_ledger_from_cached_notebooks(tmp_path):
    tiny = _tiny_notebook()
    other = _claim("01.2-other")
    other.measured(6.5)
    second = _notebook(
        "01.2 Other",
        _cell('other = Claim("01.2-other", "x")\nother.measured(6.5)',
              claims.RESULTS[-1]),
        new_code_cell('forgotten = Claim("01.2-forgotten", "never measured")'),
    )
    book = tmp_path / "book"
    book.mkdir()
    _write_book(book, {"nb/01.1_tiny": tiny, "nb/01.2_other": second})
    run = subprocess.run(
        [_jupyter_book(), "build", ".", "-W", "-n", "--keep-going"],
        cwd=book, capture_output=True, text=True, timeout=300,
        env={**os.environ, "EFFX_QUIET": "1"},
    )
    log = run.stdout + run.stderr
    assert log.count("Using cached notebook") == 2, log
    assert "Executing notebook" not in log, log
    # the one problem of the book is the claim that was never measured: one warning
    assert run.returncode != 0, log[-3000:]
    assert "build finished with problems, 1 warning." in log, log[-3000:]
    warning = r"01\.2_other\.ipynb: WARNING: claim 01\.2-forgotten is declared"
    assert re.search(warning, log), log
    page = book / "_build" / "html" / "claims.html"
    parsed = _read_ledger(page)
    kinds = ("notebook", "claim", "control")
    order = [
        (kind, row["links"][0]["text"])
        for row in parsed.rows
        for kind in kinds
        if f"effx-ledger-{kind}" in row["classes"]
    ]
    assert order == [
        ("notebook", "01.1 Tiny"),
        ("claim", "01.1-six-db-per-bit"),
        ("control", "per tensor, 2 bits"),
        ("claim", "01.1-cache-faster"),
        ("notebook", "01.2 Other"),
        ("claim", "01.2-other"),
    ]
    first = _verdict_rows(parsed, "claim")[0]["cells"]
    assert first == [
        "01.1-six-db-per-bit — the claim 01.1-six-db-per-bit",
        "6.02 dB per bit",
        "SQNR slope: 6 dB/bit (per channel)",
        claims.RESULTS[0].rule,
        "✓ holds",
        "any (device-independent); run on CPU Test (2 cores)",
        "one matrix",
    ]
    assert parsed.summary == (
        "3 claims: 2 hold, 0 hold weakly, 1 does not hold here; 1 negative control; "
        "built on CPU Test (2 cores)."
    )
    assert _broken_links(page, parsed) == []
    _summary_matches_rows(parsed)


# --------------------------------------------------------------------------------------
# The course's book (after `make book-strict`)


@pytest.fixture(scope="module")
def built_ledger():
    if not (HTML / "index.html").exists():
        pytest.skip(
            f"no built book at {HTML}: the ledger is checked after `make book-strict` "
            "(make test builds the book before its browser step)"
        )
    page = HTML / f"{LEDGER_PAGE}.html"
    assert page.is_file(), (
        f"the book at {HTML} has no claims ledger ({LEDGER_PAGE}.html): is "
        f"{LEDGER_PAGE} in _toc.yml and effx_ledger in _config.yml?"
    )
    return page, _read_ledger(page)


def _course_notebooks() -> list[Path]:
    from test_book_render import NOTEBOOK_PAGES

    return [ROOT / f"{doc}.ipynb" for doc in NOTEBOOK_PAGES]


@pytest.mark.browser
def test_every_declared_claim_is_a_ledger_row_with_a_verdict(built_ledger):
    _, parsed = built_ledger
    rows = _verdict_rows(parsed, "claim")
    verdicts = {row["links"][0]["text"]: row["cells"][4] for row in rows}
    missing, no_verdict = [], []
    for path in _course_notebooks():
        for claim_id in ledger.declared_claims(nbformat.read(str(path), as_version=4)):
            if claim_id not in verdicts:
                missing.append(f"{path.name}: {claim_id}")
            elif verdicts[claim_id].split(" ", 1)[-1] not in claims.VERDICTS:
                no_verdict.append(f"{claim_id}: {verdicts[claim_id]!r}")
    assert not missing, f"claims declared in notebooks but not in the ledger: {missing}"
    assert not no_verdict, f"ledger rows without a verdict: {no_verdict}"


@pytest.mark.browser
def test_every_ledger_link_reaches_its_card(built_ledger):
    page, parsed = built_ledger
    assert _broken_links(page, parsed) == []


@pytest.mark.browser
def test_the_summary_counts_the_rows(built_ledger):
    _summary_matches_rows(built_ledger[1])
