"""Sphinx extension: the "Claims ledger" page, built from the executed notebooks.

A notebook checks a claim with :class:`effx_lab.claims.Claim`; each verdict is one
output (``text/plain``, ``text/html``, and the record as
``application/vnd.effx.claim+json``). The ``{claims-ledger}`` directive puts a table of
every verdict of the book on its page.

**Where the records come from: the doctree of each notebook page.** myst-nb renders a
notebook's outputs while it parses the page, from the notebook its execution client
returns: executed now, or, with ``execute_notebooks: cache``, *merged from the
jupyter-cache*. At ``doctree-read`` (after parsing, before the mime type of each output
is chosen) every output is still in the doctree as a mime bundle, the verdict's card
among them: a raw HTML node whose ``data-effx-claim`` attribute holds the record and
whose ``id`` is the anchor the ledger links to (:func:`effx_lab.claims.read_cards` reads
it). The records are stored in the build environment (``env-purge-doc``,
``env-merge-info``), so a page that was not read again keeps its records.

Why not the other places an executed notebook can be found: myst-nb 1.4 writes
``_build/jupyter_execute/<doc>.ipynb`` from the notebook it *read*, and a cached
notebook's outputs live in a deep copy (``merge_match_into_notebook``), so for a cached
notebook that file has no outputs; the jupyter-cache holds only what was cached (not
what ``execute_notebooks: force`` or ``auto`` ran) and is matched by a hash of the code.
The JSON output itself is dropped by myst-nb (an unknown mime type renders to nothing),
which is why the card carries the record too. The doctree is what the page shows,
however the notebook got its outputs.

**The table** is filled at ``doctree-resolved`` (every page has been read by then): one
row per claim, grouped by notebook in the order of the table of contents, its negative
controls in rows below it; a summary line counts the verdicts. Links are relative URIs
to the cards' anchors in the notebook pages. When any page changes, the ledger pages are
read again (``env-get-outdated``), so an incremental build never shows a stale table.

**Warnings** (the strict build fails on them), at ``env-check-consistency``: a claim
declared in a notebook's code (``Claim("<id>", ...)``) without a verdict in its outputs;
a card that cannot be read, whose ``id`` is not its record's anchor, or that repeats an
anchor of its page; a claim id recorded by two pages, or whose number is not the
notebook's; a negative control whose claim has no verdict; verdicts recorded but no page
with the ledger. At ``build-finished``: a ledger link whose anchor is not in the written
page.
"""
from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any

from docutils import nodes
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective

logger = logging.getLogger(__name__)

#: The type and subtype of this extension's warnings (for suppress_warnings).
WARNING_TYPE, WARNING_SUBTYPE = "effx", "ledger"

#: A claim declared in a code cell: ``Claim("02.1-slug"`` (also ``Claim(id="...")`` and
#: across a line break). An id built at run time (an f-string) is not a declaration.
DECLARED = re.compile(r"""\bClaim\(\s*(?:id\s*=\s*)?(["'])(?P<id>[^"'\\\n]+)\1""")

#: The notebook number in a notebook's file name: ``02.1`` in ``02.1_fundamentals``.
_NOTEBOOK_NUMBER = re.compile(r"^(\d{2}\.\d)_")

COLUMNS = (
    ("Claim", 16),
    ("What the source says", 14),
    ("What was measured", 16),
    ("Verdict rule", 16),
    ("Verdict", 10),
    ("Device", 12),
    ("Scale caveat", 16),
)

_STYLE = """<style>
table.effx-ledger { font-size: 0.82em; }
table.effx-ledger td, table.effx-ledger th { vertical-align: top; }
table.effx-ledger tr.effx-ledger-notebook td { font-weight: 600; padding-top: 0.9em; }
table.effx-ledger tr.effx-ledger-control td { opacity: 0.85; }
table.effx-ledger tr.effx-ledger-control td:first-child { padding-left: 1.4em; }
</style>"""


def _claims():
    """effx_lab.claims, imported when first needed (it imports torch, ~2 s)."""
    from effx_lab import claims

    return claims


# --------------------------------------------------------------------------------------
# Collection (pure functions: the unit tests call them on synthetic notebooks)


def declared_claims(notebook: Any) -> list[str]:
    """The claim ids declared in the code cells of ``notebook`` (an nbformat notebook,
    or a mapping with its ``cells``), in order, each once."""
    cells = getattr(notebook, "cells", None)
    if cells is None and isinstance(notebook, dict):
        cells = notebook.get("cells")
    if not isinstance(cells, list):
        raise TypeError(
            "notebook must be a notebook (with a list of cells), "
            f"got {type(notebook).__name__}"
        )
    found: list[str] = []
    for cell in cells:
        if cell.get("cell_type") != "code":
            continue
        source = cell.get("source", "")
        if isinstance(source, list):  # the on-disk form: a list of lines
            source = "".join(source)
        for match in DECLARED.finditer(source):
            if match.group("id") not in found:
                found.append(match.group("id"))
    return found


def collect_claims(doctree: nodes.Node) -> dict[str, list]:
    """The verdict cards among the raw HTML outputs of a page's doctree.

    Returns ``{"records": [record as dict, ...], "ids": [the card's id attribute, ...],
    "problems": [message, ...]}``, records and ids in page order (one id per record).
    """
    if not isinstance(doctree, nodes.Node):
        raise TypeError(
            f"doctree must be a docutils node, got {type(doctree).__name__}"
        )
    out: dict[str, list] = {"records": [], "ids": [], "problems": []}
    for raw in doctree.findall(nodes.raw):
        if "html" not in raw.get("format", "").split():
            continue
        text = raw.astext()
        claims = _claims()
        if claims.CARD_ATTRIBUTE not in text:
            continue
        try:
            cards = claims.read_cards(text)
        except ValueError as error:
            out["problems"].append(f"a claim card cannot be read: {error}")
            continue
        for element_id, record in cards:
            out["records"].append(record.as_dict())
            out["ids"].append(element_id)
    return out


def page_problems(docname: str, data: dict[str, list]) -> list[str]:
    """What is wrong with the claims of one page (``data``: :func:`collect_claims` plus
    ``declared``, the ids its code declares)."""
    if not isinstance(docname, str) or not isinstance(data, dict):
        raise TypeError(
            "docname and data must be a str and a dict (collect_claims' result), got "
            f"{type(docname).__name__} and {type(data).__name__}"
        )
    claims = _claims()
    problems = list(data.get("problems", []))
    records = [claims.ClaimRecord.from_dict(r) for r in data.get("records", [])]
    measured = {r.id for r in records if r.control is None}
    for claim_id in data.get("declared", []):
        if claim_id not in measured:
            problems.append(
                f"claim {claim_id} is declared in this notebook but has no verdict in "
                "its executed outputs, so the claims ledger lacks it (is .measured() "
                "called, and is the cell's output shown?)"
            )
    seen: Counter[str] = Counter()
    for record, element_id in zip(records, data.get("ids", [])):
        if element_id != record.anchor:
            problems.append(
                f"the card of {record.id} has id={element_id!r}, not "
                f"{record.anchor!r}: the ledger's link to it would not resolve"
            )
        seen[record.anchor] += 1
        if record.control is not None and record.claim_id not in measured:
            problems.append(
                f"negative control {record.id} ({record.control}) has no verdict of "
                f"its claim {record.claim_id} on this page"
            )
    for anchor, count in sorted(seen.items()):
        if count > 1:
            problems.append(
                f"{count} verdict cards share the anchor {anchor} (a claim measured "
                "twice?): the ledger shows the last one and its link is ambiguous"
            )
    number = _NOTEBOOK_NUMBER.match(docname.rsplit("/", 1)[-1])
    if number:
        prefix = number.group(1)
        for record in records:
            if record.control is None and not record.id.startswith(prefix + "-"):
                problems.append(
                    f"claim {record.id} is recorded in notebook {prefix}: a claim's id "
                    f"starts with its notebook's number ({prefix}-...)"
                )
    return problems


def ledger_rows(pages: list[tuple[str, list[dict]]]) -> list[dict]:
    """The ledger's rows: for each page (``(docname, records)`` in course order) a
    ``notebook`` row, then each claim (the last verdict of an id) followed by its
    negative controls. Each row: ``{"kind": "notebook" | "claim" | "control", "doc":
    docname, "record": ClaimRecord or None}``."""
    if not isinstance(pages, list) or not all(
        isinstance(p, tuple) and len(p) == 2 for p in pages
    ):
        raise TypeError("pages must be a list of (docname, records) pairs")
    claims = _claims()
    rows: list[dict] = []
    for docname, raw_records in pages:
        records = [claims.ClaimRecord.from_dict(r) for r in raw_records]
        if not records:
            continue
        last: dict[str, Any] = {}
        for record in records:
            last[record.id] = record  # a claim measured twice: its last verdict
        order: list[str] = []
        for record in records:
            if record.claim_id not in order:
                order.append(record.claim_id)
        rows.append({"kind": "notebook", "doc": docname, "record": None})
        for claim_id in order:
            if claim_id in last:
                rows.append({"kind": "claim", "doc": docname, "record": last[claim_id]})
            for record in last.values():
                if record.control is None or record.claim_id != claim_id:
                    continue
                rows.append({"kind": "control", "doc": docname, "record": record})
    return rows


def summary(rows: list[dict]) -> str:
    """The summary line of the rows of :func:`ledger_rows`: ``N claims: a hold, b hold
    weakly, c do not hold here; k negative controls; built on <device>.``"""
    if not isinstance(rows, list):
        raise TypeError(f"rows must be a list (ledger_rows), got {type(rows).__name__}")
    claims = [row["record"] for row in rows if row["kind"] == "claim"]
    controls = [row["record"] for row in rows if row["kind"] == "control"]
    if not claims and not controls:
        return "No verdict was recorded: no notebook of the book has measured a claim."
    count = Counter(r.verdict for r in claims)

    def n(k: int, one: str, many: str) -> str:
        return f"{k} {one if k == 1 else many}"

    text = (
        f"{n(len(claims), 'claim', 'claims')}: "
        f"{n(count['holds'], 'holds', 'hold')}, "
        f"{n(count['holds weakly'], 'holds weakly', 'hold weakly')}, "
        f"{n(count['does not hold here'], 'does not hold here', 'do not hold here')}; "
        f"{n(len(controls), 'negative control', 'negative controls')}"
    )
    failed = sum(r.verdict != "does not hold here" for r in controls)
    if failed:
        text += f" ({n(failed, 'holds', 'hold')} on this device)"
    devices = Counter(r.device for r in claims + controls)
    if len(devices) == 1:
        text += f"; built on {next(iter(devices))}."
    else:
        where = ", ".join(f"{d} ({k} verdicts)" for d, k in devices.most_common())
        text += f"; built on several devices: {where}."
    return text


# --------------------------------------------------------------------------------------
# The directive and the table


class claims_ledger(nodes.General, nodes.Element):  # noqa: N801 - docutils node naming
    """Where the ledger goes; replaced by the table at doctree-resolved."""


class ClaimsLedgerDirective(SphinxDirective):
    """``{claims-ledger}``: the table of every claim of the book (no options)."""

    has_content = False
    required_arguments = 0
    optional_arguments = 0

    def run(self) -> list[nodes.Node]:
        _ledger_pages(self.env).add(self.env.docname)
        return [claims_ledger()]


def _store(env) -> dict[str, dict[str, list]]:
    if not hasattr(env, "effx_claims"):
        env.effx_claims = {}
    return env.effx_claims


def _ledger_pages(env) -> set[str]:
    if not hasattr(env, "effx_ledger_pages"):
        env.effx_ledger_pages = set()
    return env.effx_ledger_pages


def _course_order(env) -> list[str]:
    """Every document in the order of the table of contents, then the others sorted."""
    order: list[str] = []
    stack = [env.config.root_doc]
    while stack:
        doc = stack.pop()
        if doc in order:
            continue
        order.append(doc)
        stack.extend(reversed(env.toctree_includes.get(doc, [])))
    return order + sorted(set(_store(env)) - set(order))


def _paragraph(*children: nodes.Node | str) -> nodes.paragraph:
    para = nodes.paragraph()
    for child in children:
        para += nodes.Text(child) if isinstance(child, str) else child
    return para


def _entry(*children: nodes.Node | str, **attributes: Any) -> nodes.entry:
    entry = nodes.entry(**attributes)
    entry += _paragraph(*children)
    return entry


def _link(text: str, uri: str) -> nodes.reference:
    return nodes.reference(text, text, refuri=uri, internal=True)


def _table(app, docname: str, rows: list[dict]) -> tuple[nodes.table, list[tuple]]:
    """The docutils table of ``rows``, and the links it holds (target doc, anchor)."""
    claims = _claims()
    env = app.env
    table = nodes.table(classes=["effx-ledger"])
    group = nodes.tgroup(cols=len(COLUMNS))
    table += group
    for _, width in COLUMNS:
        group += nodes.colspec(colwidth=width)
    head = nodes.thead()
    group += head
    head += nodes.row("", *(_entry(title) for title, _ in COLUMNS))
    body = nodes.tbody()
    group += body
    links = []
    for row in rows:
        doc = row["doc"]
        page = app.builder.get_relative_uri(docname, doc)
        if row["kind"] == "notebook":
            title = env.titles[doc].astext() if doc in env.titles else doc
            body += nodes.row(
                "",
                _entry(_link(title, page), morecols=len(COLUMNS) - 1),
                classes=["effx-ledger-notebook"],
            )
            continue
        r = row["record"]
        link = _link(r.id if r.control is None else r.control, f"{page}#{r.anchor}")
        links.append((doc, r.anchor))
        mark = f"{claims.MARKS[r.verdict]} {r.verdict}"
        if r.device_dependent:
            device = f"{r.device}; timed: the verdict is this device's"
        else:
            device = f"any (device-independent); run on {r.device}"
        if r.control is None:
            cells = [
                _entry(link, " — ", r.statement),
                _entry(r.source),
                _entry(f"{r.measure}: {r.value_text}"),
                _entry(r.rule),
                _entry(mark),
                _entry(device),
                _entry(r.caveat),
            ]
        else:
            if r.verdict != "does not hold here":
                mark += " (a control must not: this measurement cannot tell the claim "
                mark += "from its absence here)"
            cells = [
                _entry("negative control: ", link),
                _entry(""),
                _entry(r.value_text),
                _entry("must not hold by the claim's rule"),
                _entry(mark),
                _entry(device),
                _entry(""),
            ]
        verdict_class = "effx-verdict-" + r.verdict.replace(" ", "-")
        body += nodes.row(
            "", *cells, classes=[f"effx-ledger-{row['kind']}", verdict_class]
        )
    return table, links


def _fill(app, doctree: nodes.document, docname: str) -> None:
    """doctree-resolved: replace each ledger placeholder of ``docname`` by the table."""
    placeholders = list(doctree.findall(claims_ledger))
    if not placeholders:
        return
    store = _store(app.env)
    pages = [
        (doc, store[doc]["records"])
        for doc in _course_order(app.env)
        if doc in store and store[doc].get("records")
    ]
    rows = ledger_rows(pages)
    for placeholder in placeholders:
        content: list[nodes.Node] = []
        if app.builder.format == "html":
            content.append(nodes.raw("", _STYLE, format="html"))
        content.append(
            nodes.paragraph("", summary(rows), classes=["effx-ledger-summary"])
        )
        if rows:
            table, links = _table(app, docname, rows)
            content.append(table)
            app.effx_ledger_links = [
                *getattr(app, "effx_ledger_links", []),
                *((docname, doc, anchor) for doc, anchor in links),
            ]
        placeholder.replace_self(content)


# --------------------------------------------------------------------------------------
# Environment: collect at read, purge, merge, re-read the ledger, check


def _read(app, doctree: nodes.document) -> None:
    """doctree-read: store the page's verdicts and a notebook's declared claims."""
    env = app.env
    data = collect_claims(doctree)
    path = Path(env.doc2path(env.docname))
    if path.suffix == ".ipynb":
        import nbformat

        try:
            data["declared"] = declared_claims(nbformat.read(str(path), as_version=4))
        except Exception as error:  # unreadable as a notebook: myst-nb has said so
            data["problems"].append(f"its code cannot be searched for claims: {error}")
    if any(data.values()):
        _store(env)[env.docname] = data


def _purge(app, env, docname: str) -> None:
    _store(env).pop(docname, None)
    _ledger_pages(env).discard(docname)


def _merge(app, env, docnames, other) -> None:
    theirs = getattr(other, "effx_claims", {})
    _store(env).update({doc: theirs[doc] for doc in docnames if doc in theirs})
    pages = getattr(other, "effx_ledger_pages", set())
    _ledger_pages(env).update(set(docnames) & pages)


def _outdated(app, env, added, changed, removed) -> list[str]:
    """env-get-outdated: when any page changes, read the ledger pages again."""
    if added or changed or removed:
        return sorted(_ledger_pages(env))
    return []


def _warn(message: str, location: str | None = None) -> None:
    logger.warning(
        message, location=location, type=WARNING_TYPE, subtype=WARNING_SUBTYPE
    )


def _check(app, env) -> None:
    """env-check-consistency: every problem of every page, and ids recorded twice."""
    store = _store(env)
    owner: dict[str, str] = {}
    n_records = 0
    for docname in sorted(store):
        data = store[docname]
        for message in page_problems(docname, data):
            _warn(message, docname)
        for record in data.get("records", []):
            n_records += 1
            if record.get("control") is not None:
                continue
            first = owner.setdefault(record["id"], docname)
            if first != docname:
                _warn(f"claim {record['id']} is recorded by {first} too: ids are "
                      "unique in the course", docname)
    if n_records and not _ledger_pages(env):
        _warn(f"{n_records} claim verdicts were recorded but no page holds the "
              "{claims-ledger} directive, so the claims ledger lacks them")


def _check_links(app, exception) -> None:
    """build-finished: every ledger link's anchor is in the page written for it."""
    links = getattr(app, "effx_ledger_links", [])
    if exception is not None or not links:
        return
    if app.builder.name not in ("html", "dirhtml"):
        return
    ids: dict[str, set[str]] = {}
    for ledger, doc, anchor in links:
        if doc not in ids:
            page = Path(app.builder.get_outfilename(doc))
            text = page.read_text(encoding="utf8") if page.is_file() else ""
            ids[doc] = set(re.findall(r'\bid="([^"]+)"', text))
        if anchor not in ids[doc]:
            _warn(f"the claims ledger links to {doc}#{anchor}, which the built page "
                  "does not have", ledger)
    app.effx_ledger_links = []


def setup(app):
    app.add_node(claims_ledger)
    app.add_directive("claims-ledger", ClaimsLedgerDirective)
    app.connect("doctree-read", _read)
    app.connect("env-purge-doc", _purge)
    app.connect("env-merge-info", _merge)
    app.connect("env-get-outdated", _outdated)
    app.connect("env-check-consistency", _check)
    app.connect("doctree-resolved", _fill)
    app.connect("build-finished", _check_links)
    return {
        "version": "1.0",
        "env_version": 1,
        "parallel_read_safe": True,
        "parallel_write_safe": True,
    }
