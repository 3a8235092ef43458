"""No page calls a chapter that exists "coming soon", and the lists of written chapters are true.

A chapter exists when ``notebooks/chNN_*/`` holds a notebook. Every markdown source a
reader sees (the book's pages and the notebooks' markdown cells) is split into clauses
(at ``. ``, ``;`` and line breaks outside a paragraph); a clause that says a chapter is "coming soon",
"being written", "not yet written" or "in preparation" must not name an existing chapter,
and a clause that says chapters "are available now" or "are written" must name every
existing chapter after the first one (chapter 1's own pages may leave it out) and no
other.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PENDING = re.compile(r"coming soon|being written|not yet written|in preparation", re.I)
WRITTEN = re.compile(r"\b(?:are|is) (?:available now|written)\b", re.I)
# "Chapter 3", "chapters 2 and 7", "Chapters 1, 2 and 7", "Chapters 2 (quantization) and 7 (FLASH)"
CHAPTERS = re.compile(
    r"\b[Cc]hapters?\s+(\d+)((?:\s*(?:\([^()]*\))?\s*(?:,|and|&)\s*\d+)*)"
)


def existing_chapters() -> set[int]:
    found = set()
    for folder in (ROOT / "notebooks").glob("ch[0-9][0-9]_*"):
        if any(folder.glob("*.ipynb")):
            found.add(int(folder.name[2:4]))
    return found


def _sources() -> list[tuple[str, str]]:
    out = [(str(p.relative_to(ROOT)), p.read_text(encoding="utf-8"))
           for p in sorted((ROOT / "book").glob("*.md"))]
    out.append(("README.md", (ROOT / "README.md").read_text(encoding="utf-8")))
    for nb in sorted((ROOT / "notebooks").glob("ch*/*.ipynb")):
        cells = json.loads(nb.read_text(encoding="utf-8"))["cells"]
        for i, cell in enumerate(cells):
            if cell["cell_type"] == "markdown":
                out.append((f"{nb.relative_to(ROOT)} cell {i}", "".join(cell["source"])))
    return out


def clauses(text: str) -> list[str]:
    """Paragraphs joined into lines, then cut at sentence and clause ends."""
    # a line break inside a paragraph joins; a blank line, a table row, a heading or a
    # list item starts a new block
    text = re.sub(r"\n(?!\s*\n|\s*[|#*-]|\s*\d+\. )", " ", text)
    return [c for c in re.split(r"\.\s|;|\n", text) if c.strip()]


def chapters_named(clause: str) -> set[int]:
    named = set()
    for m in CHAPTERS.finditer(clause):
        named.add(int(m.group(1)))
        named.update(int(n) for n in re.findall(r"\d+", re.sub(r"\([^()]*\)", "", m.group(2))))
    return named


def test_the_parser_reads_the_forms_the_pages_use():
    assert chapters_named("Chapters 1, 2 and 7 are available now") == {1, 2, 7}
    assert chapters_named("Chapters 2 (quantization) and 7 (FLASH) are written") == {2, 7}
    assert chapters_named("**Chapter 3: Pruning** *(coming soon)*") == {3}
    assert chapters_named("see 02.1 and 07.3") == set()
    parts = clauses("Chapters 1 and 2 are written; the others are\nbeing written.")
    assert [bool(PENDING.search(p)) for p in parts] == [False, True]
    assert chapters_named(parts[1]) == set()


def test_no_existing_chapter_is_called_coming_soon():
    chapters = existing_chapters()
    assert {1, 2, 7} <= chapters, chapters
    bad = []
    for where, text in _sources():
        for clause in clauses(text):
            if PENDING.search(clause):
                stale = chapters_named(clause) & chapters
                if stale:
                    bad.append(f"{where}: chapter(s) {sorted(stale)} exist: {clause.strip()[:160]!r}")
    assert not bad, "\n".join(bad)


def test_lists_of_written_chapters_are_complete():
    chapters = existing_chapters()
    checked = 0
    bad = []
    for where, text in _sources():
        for clause in clauses(text):
            if not WRITTEN.search(clause):
                continue
            named = chapters_named(clause)
            if len(named) < 2:
                continue  # "the package is written to be read": not a list of chapters
            checked += 1
            if named - chapters:
                bad.append(f"{where}: calls chapter(s) {sorted(named - chapters)} written: {clause!r}")
            missing = chapters - named - {1}
            if missing:
                bad.append(f"{where}: leaves out written chapter(s) {sorted(missing)}: {clause!r}")
    assert checked >= 2, "the intro and 01.3 list the written chapters: the pattern lost them"
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("chapter", sorted(existing_chapters()))
def test_the_course_map_links_every_existing_chapter(chapter):
    """intro.md's map gives every existing chapter its overview link, not a "coming soon"."""
    intro = (ROOT / "book" / "intro.md").read_text(encoding="utf-8")
    line = next((ln for ln in intro.splitlines() if re.match(rf"- \*\*Chapter {chapter}:", ln)), None)
    assert line is not None, f"intro.md's map has no entry for chapter {chapter}"
    assert "{doc}" in line and not PENDING.search(line), line
