"""The stored form of the notebooks, and the book's reading of it (notebook_form.py).

Every notebook in notebooks/ goes through both forms, whichever form it is committed in:
the MyST the book renders comes back exactly (sources and metadata, cell for cell), the
stored form is idempotent, and the book's reading (code cells as stored) keeps the
execution cache's key. The conversions are pinned on small examples (citations in and
out of parentheses, explicit and implicit terms and links, gated solutions), MyST the
converter does not know raises a ValueError naming the notebook and the cell, and a tiny
book built from the MyST and from the stored form of the same notebooks gives the same
HTML.
"""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import yaml
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "book" / "_ext"))

import effx_notebook_form as EXT  # noqa: E402
import notebook_form as NF  # noqa: E402
from test_book_render import _jupyter_book  # noqa: E402  (tests/book is on sys.path)

from _notebooks import NOTEBOOKS  # noqa: E402
IDS = [p.name for p in NOTEBOOKS]
BASE = "https://effx-lab.github.io/effx-lab/"
GLOSSARY = BASE + "book/glossary.html#"
REFS = BASE + "book/references.html#"
# A notebook that does not exist, in the folder of chapter 2's notebooks (links resolve
# there).
HERE = ROOT / "notebooks" / "ch02_quantization" / "x.ipynb"


def _is_gate(cell) -> bool:
    return cell.cell_type == "markdown" and (
        cell.source.startswith("```{solution-start}") or cell.source == NF.GATE_END
    )


def assert_same_notebook(got, want, what: str) -> None:
    """Cell for cell: type, source, metadata, outputs, id (a gate's id is made anew)."""
    assert got.metadata == want.metadata, f"{what}: notebook metadata differ"
    assert len(got.cells) == len(
        want.cells
    ), f"{what}: {len(got.cells)} cells, not {len(want.cells)}"
    for i, (a, b) in enumerate(zip(got.cells, want.cells), start=1):
        where = f"{what}: cell {i}"
        assert a.cell_type == b.cell_type, where
        assert a.source == b.source, f"{where}: source\n{a.source!r}\n!=\n{b.source!r}"
        assert (
            a.metadata == b.metadata
        ), f"{where}: metadata {a.metadata} != {b.metadata}"
        assert a.get("outputs") == b.get("outputs"), f"{where}: outputs"
        if not _is_gate(b):
            assert a.get("id") == b.get("id"), f"{where}: id"


def _marked(nb, kind: str) -> list:
    return [c for c in nb.cells if kind in (c.metadata.get("effx") or {})]


# --------------------------------------------------------------------------------------
# Every notebook of the course


@pytest.fixture(scope="module", params=NOTEBOOKS, ids=IDS)
def forms(request):
    path = request.param
    committed = NF.read(path)
    myst = NF.to_book(committed, path)
    stored = NF.to_stored(committed, path)
    return path, committed, myst, stored


def test_round_trip_gives_the_myst_back(forms):
    path, committed, myst, stored = forms
    assert_same_notebook(
        NF.to_book(stored, path), myst, f"{path.name}: to_book(to_stored)"
    )
    # the MyST form converts to the same stored form as the committed file
    assert NF.dumps(NF.to_stored(myst, path)) == NF.dumps(stored)
    if not _marked(committed, "exercise") and not _marked(committed, "solution"):
        # committed in MyST: to_book leaves it as it is
        assert NF.dumps(myst) == NF.dumps(
            committed
        ), f"{path.name}: to_book changed a MyST notebook"
    assert NF.dumps(NF.to_book(myst, path)) == NF.dumps(
        myst
    ), "to_book is not the identity on MyST"


def test_stored_form_is_idempotent(forms):
    path, _, _, stored = forms
    assert NF.dumps(NF.to_stored(stored, path)) == NF.dumps(stored)


def test_stored_form_marks_every_exercise_and_solution(forms):
    path, _, myst, stored = forms
    exercises = [c for c in myst.cells if c.source.startswith(":::{exercise}")]
    gates = [c for c in myst.cells if c.source.startswith("```{solution-start}")]
    assert len(_marked(stored, "exercise")) == len(exercises)
    assert not [c for c in stored.cells if _is_gate(c)], f"{path.name}: gate cells left"
    assert len(stored.cells) == len(myst.cells) - 2 * len(gates)
    # one region per pair of gates: a run of cells with the same label
    marks = [(c.metadata.get("effx") or {}).get("solution") for c in stored.cells]
    runs = [m for i, m in enumerate(marks) if m and (i == 0 or marks[i - 1] != m)]
    assert len(runs) == len(gates)
    for cell in _marked(stored, "solution"):
        if cell.cell_type == "code":
            assert cell.metadata["cellView"] == "form"
            assert cell.source.startswith(NF.TITLE_PREFIX)
            assert len(cell.source.partition("\n")[0]) <= NF.TITLE_MAX


def test_book_reads_code_cells_as_stored(forms, tmp_path):
    """Code cells are read as stored (source, metadata): the cache key holds."""
    from jupyter_cache import get_cache

    path, _, myst, stored = forms
    book = NF.to_book(stored, path, keep_code=True)
    assert len(book.cells) == len(myst.cells)
    stored_code = [c for c in stored.cells if c.cell_type == "code"]
    book_code = [c for c in book.cells if c.cell_type == "code"]
    assert [(c.source, c.metadata) for c in book_code] == [
        (c.source, c.metadata) for c in stored_code
    ]
    markdown = [c.source for c in book.cells if c.cell_type == "markdown"]
    assert markdown == [c.source for c in myst.cells if c.cell_type == "markdown"]
    cache = get_cache(str(tmp_path / "cache"))
    assert (
        cache.create_hashed_notebook(book)[1] == cache.create_hashed_notebook(stored)[1]
    )
    # the extension's source-read handler does the same on the JSON text
    text = NF.dumps(stored)
    assert nbformat.reads(EXT.book_text(text, path), as_version=4) == book
    myst_text = NF.dumps(myst)
    assert EXT.book_text(myst_text, path) is myst_text  # MyST passes through untouched


# --------------------------------------------------------------------------------------
# The conversions, pinned on examples


def _markdown_round_trip(myst: str, stored: str) -> None:
    nb = new_notebook(cells=[new_markdown_cell("# A title"), new_markdown_cell(myst)])
    got = NF.to_stored(nb, HERE)
    assert got.cells[1].source == stored
    assert NF.to_book(got, HERE).cells[1].source == myst


@pytest.mark.parametrize(
    "myst, stored",
    [
        # a citation outside parentheses gets them; keys keep their order
        (
            "as shown {cite:p}`jacob2018quantization,weng2023inference`.",
            f"as shown ([Jacob et al., 2018]({REFS}cite-jacob2018quantization); "
            f"[Weng, 2023]({REFS}cite-weng2023inference)).",
        ),
        # inside parentheses it does not
        (
            "(see {cite:p}`weng2023inference`)",
            f"(see [Weng, 2023]({REFS}cite-weng2023inference))",
        ),
        # right inside parentheses the author wrote: both kept
        (
            "({cite:p}`weng2023inference`)",
            f"(([Weng, 2023]({REFS}cite-weng2023inference)))",
        ),
        # two citations inside one pair of parentheses: each is wrapped, they stay two
        (
            "(see {cite:p}`weng2023inference`; {cite:p}`hassibi1993obs`)",
            f"(see ([Weng, 2023]({REFS}cite-weng2023inference)); "
            f"([Hassibi and Stork, 1993]({REFS}cite-hassibi1993obs)))",
        ),
        (
            "{cite:t}`jacob2018quantization` and {cite:t}`hassibi1993obs`",
            f"[Jacob et al. (2018)]({REFS}cite-jacob2018quantization) and "
            f"[Hassibi and Stork (1993)]({REFS}cite-hassibi1993obs)",
        ),
        (
            "{term}`Quantization`, {term}`outliers <outlier>`, {term}`N:M sparsity`",
            f"[Quantization]({GLOSSARY}term-quantization), "
            f'[outliers]({GLOSSARY}term-outlier "outlier"), '
            f"[N:M sparsity]({GLOSSARY}term-N-M-sparsity)",
        ),
        # an explicit target equal to the text (any case) stays explicit
        (
            "{term}`Quantization <quantization>`",
            f'[Quantization]({GLOSSARY}term-quantization "quantization")',
        ),
        (
            "{doc}`02.2 <02.2_outliers>`, {doc}`the course map\n<../../book/intro>`",
            f"[02.2](02.2_outliers.ipynb), [the course map\n]({BASE}book/intro.html)",
        ),
        # no text: the target's title, also as the link title
        (
            "{doc}`../ch01_costs/01.1_memory`",
            "[01.1 Memory: where the bytes go](../ch01_costs/01.1_memory.ipynb "
            '"01.1 Memory: where the bytes go")',
        ),
        # code is never converted
        (
            "`{term}`x`` and\n\n```md\n{cite:p}`nope`\n:::{note}\n```\n",
            "`{term}`x`` and\n\n```md\n{cite:p}`nope`\n:::{note}\n```\n",
        ),
    ],
    ids=[
        "cite-p",
        "cite-in-parens",
        "cite-parens-only",
        "two-cites-in-parens",
        "cite-t",
        "term",
        "term-explicit",
        "doc",
        "doc-title",
        "code",
    ],
)
def test_inline_conversions(myst, stored):
    _markdown_round_trip(myst, stored)


def test_exercise_and_solution_region():
    exercise = (
        ":::{exercise} Predict the ratio\n:label: ex-x\n\n"
        "Write `ratio(n)` {cite:p}`weng2023inference`.\n:::"
    )
    code = "def ratio(n):\n    ### BEGIN SOLUTION\n    return n\n    ### END SOLUTION"
    nb = new_notebook(
        cells=[
            new_markdown_cell("# T"),
            new_markdown_cell(exercise),
            new_markdown_cell("```{solution-start} ex-x\n:class: dropdown\n```"),
            new_code_cell(code, metadata={"tags": ["x"]}),
            new_markdown_cell("Because {term}`GEMV` is memory-bound."),
            new_markdown_cell(NF.GATE_END),
            new_code_cell("check_ratio(ratio)"),
        ]
    )
    stored = NF.to_stored(nb, HERE)
    assert [c.cell_type for c in stored.cells] == [
        "markdown",
        "markdown",
        "code",
        "markdown",
        "code",
    ]
    ex, sol, answer = stored.cells[1:4]
    assert ex.metadata == {"effx": {"exercise": "ex-x"}}
    assert ex.source == (
        "#### ✏️ Exercise: Predict the ratio\n\nWrite `ratio(n)` "
        f"([Weng, 2023]({REFS}cite-weng2023inference))."
    )
    assert sol.metadata == {
        "tags": ["x"],
        "cellView": "form",
        "effx": {"solution": "ex-x"},
    }
    assert sol.source == "#@title Solution: ratio (double-click to show)\n" + code
    assert answer.metadata == {"effx": {"solution": "ex-x"}}
    assert answer.source == (
        "<details>\n<summary>Answer</summary>\n\n"
        f"Because [GEMV]({GLOSSARY}term-GEMV) is "
        "memory-bound.\n\n</details>"
    )
    assert stored.cells[4].metadata == {}
    assert_same_notebook(NF.to_book(stored, HERE), nb, "example")
    # the book's reading keeps the code cell as stored, with its title line
    assert NF.to_book(stored, HERE, keep_code=True).cells[3] == sol


def test_solution_title_names_the_function():
    assert NF.solution_title("x = 1\n\ndef f(a):\n    pass", "ex-1") == (
        "#@title Solution: f (double-click to show)"
    )
    assert NF.solution_title("alpha: float = 0.5", "ex-1").startswith(
        "#@title Solution: alpha "
    )
    assert NF.solution_title("# nothing", "ex-1").startswith("#@title Solution: ex-1 ")
    long = NF.solution_title("def " + "n" * 70 + "():\n    pass", "ex-1")
    assert long == "#@title Solution: " + "n" * 70
    with pytest.raises(ValueError, match="label must be an exercise label"):
        NF.solution_title("pass", "not a label")
    with pytest.raises(TypeError, match="code must be a str"):
        NF.solution_title(None, "ex-1")


def test_glossary_ids_and_citation_texts():
    ctx = NF.load_context()
    # the ids Sphinx gave these terms in a built book
    assert ctx.term_ids["N:M sparsity"] == "term-N-M-sparsity"
    assert ctx.term_ids["ACT"] == "term-ACT"
    assert ctx.terms["gemv"] == "GEMV"
    # one author, two, three or more, and an organisation
    assert ctx.cite_p["weng2023inference"] == "Weng, 2023"
    assert ctx.cite_p["hassibi1993obs"] == "Hassibi and Stork, 1993"
    assert ctx.cite_t["jacob2018quantization"] == "Jacob et al. (2018)"
    assert ctx.cite_p["bytedance2020effective"] == "ByteDance, 2020"
    assert ctx.cite_ids["weng2023inference"] == "cite-weng2023inference"


def test_config_gives_stable_anchors_and_the_books_address():
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    owner, name = config["repository"]["url"].rstrip("/").split("/")[-2:]
    assert (
        config["html"]["baseurl"]
        == f"https://{owner}.github.io/{name}/"
        == NF.base_url()
    )
    assert config["sphinx"]["config"]["bibtex_cite_id"] == "cite-{key}"
    assert config["sphinx"]["local_extensions"]["effx_notebook_form"] == "book/_ext"


# --------------------------------------------------------------------------------------
# Errors name the notebook and the cell


def _notebook(*sources):
    return new_notebook(
        cells=[new_markdown_cell("# T"), *[new_markdown_cell(s) for s in sources]]
    )


GATE = "```{solution-start} ex-y\n:class: dropdown\n```"


@pytest.mark.parametrize(
    "sources, cell, message",
    [
        (["See {ref}`intro`."], 2, r"unknown MyST role \{ref\}"),
        (["See {cite}`weng2023inference`."], 2, r"unknown MyST role \{cite\}"),
        (["As {cite:p}`nobody2099`."], 2, r"unknown citation key 'nobody2099'"),
        (["As {cite:p}`weng2023inference, hassibi1993obs`."], 2, "without spaces"),
        (["A {term}`flux capacitor`."], 2, r"'flux capacitor' is not a term"),
        (["Go to {doc}`02.9 <02.9_missing>`."], 2, "no such notebook or page"),
        (["```{note}\nHi\n```"], 2, r"unknown MyST directive \{note\}"),
        (
            [":::{exercise}\n:label: ex-y\n\nText\n:::"],
            2,
            "an exercise must be a markdown cell",
        ),
        (["(sec-x)=\n## X"], 2, "MyST target"),
        (["Hello {{ name }}"], 2, "MyST substitution"),
        ([GATE, "answer"], 2, r"never closed by \{solution-end\}"),
        (["text", NF.GATE_END], 3, r"\{solution-end\} without a \{solution-start\}"),
        ([GATE, NF.GATE_END], 3, "an empty solution region"),
        ([GATE, GATE, "x", NF.GATE_END], 3, r"a second \{solution-start\}"),
        (
            ["Intro.\n\n" + GATE],
            2,
            "a solution gate must be a markdown cell of its own",
        ),
    ],
    ids=[
        "role",
        "bare-cite",
        "cite-key",
        "cite-spaces",
        "term",
        "doc",
        "directive",
        "exercise",
        "target",
        "substitution",
        "unclosed",
        "end-alone",
        "empty",
        "nested",
        "gate-in-text",
    ],
)
def test_unknown_or_broken_myst_raises_naming_notebook_and_cell(sources, cell, message):
    nb = _notebook(*sources)
    n = len(nb.cells)
    with pytest.raises(
        ValueError,
        match=rf"notebooks/ch02_quantization/x\.ipynb: cell {cell} of {n} "
        rf"\(markdown\): .*{message}",
    ):
        NF.to_stored(nb, HERE)


def test_what_the_stored_form_cannot_hold_raises():
    twice = _notebook(GATE, "a", NF.GATE_END, GATE, "b", NF.GATE_END)
    with pytest.raises(
        ValueError, match=r"x\.ipynb: the stored form gives 5 cells back"
    ):
        NF.to_stored(twice, HERE)
    tagged = _notebook(GATE, "a", NF.GATE_END)
    tagged.cells[1].metadata["tags"] = ["x"]
    with pytest.raises(
        ValueError, match=r"cell 2 of 4 .*gate cell's metadata would be lost"
    ):
        NF.to_stored(tagged, HERE)
    stored = NF.to_stored(_notebook(GATE, "a", NF.GATE_END), HERE)
    stored.cells[1].metadata["effx"]["solution"] = ["not", "a", "label"]
    with pytest.raises(
        ValueError, match=r"cell 2 of 2 .*effx.solution must be a label"
    ):
        NF.to_book(stored, HERE)


def test_a_stored_cell_that_lost_its_form_raises():
    stored = NF.to_stored(_notebook(":::{exercise} T\n:label: ex-y\n\nText\n:::"), HERE)
    stored.cells[1].source = "Exercise without its heading"
    with pytest.raises(
        ValueError, match=r"x\.ipynb: cell 2 of 2 \(markdown\): an exercise cell"
    ):
        NF.to_book(stored, HERE)


def test_arguments_are_checked(tmp_path):
    nb = _notebook("x")
    with pytest.raises(TypeError, match="nb must be a notebook"):
        NF.to_stored("not a notebook", HERE)
    with pytest.raises(ValueError, match="'cells' list"):
        NF.to_book({"metadata": {}}, HERE)
    with pytest.raises(TypeError, match="path must be the notebook's path"):
        NF.to_book(nb, 3)
    with pytest.raises(TypeError, match="keep_code must be a bool"):
        NF.to_book(nb, HERE, keep_code="yes")
    with pytest.raises(ValueError, match="root must be the repository root"):
        NF.to_stored(nb, HERE, root=tmp_path)
    with pytest.raises(ValueError, match="mode must be one of"):
        NF.convert_files([], "sideways")
    with pytest.raises(TypeError, match="text must be a notebook's JSON text"):
        EXT.book_text(b"{}", HERE)


# --------------------------------------------------------------------------------------
# The command line, the Sphinx extension


def test_command_line_converts_and_checks(tmp_path, capsys):
    """--check lists MyST notebooks, --write stores them, --to-book gives MyST back."""
    folder = tmp_path / "repo" / "notebooks" / "ch"
    folder.mkdir(parents=True)
    for name in ("_config.yml", "book/glossary.md", "book/references.bib"):
        (tmp_path / "repo" / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, tmp_path / "repo" / name)
    nb = new_notebook(
        cells=[
            new_markdown_cell("# One\n\nA {term}`GEMV` {cite:p}`weng2023inference`."),
            new_markdown_cell(":::{exercise} Write f\n:label: ex-1\n\nWrite `f`.\n:::"),
            new_markdown_cell(GATE.replace("ex-y", "ex-1")),
            new_code_cell(
                "def f():\n    ### BEGIN SOLUTION\n    pass\n    ### END SOLUTION"
            ),
            new_markdown_cell(NF.GATE_END),
            new_code_cell("check_f(f)"),
        ]
    )
    file = folder / "one.ipynb"
    myst_text = NF.dumps(nb)
    file.write_text(myst_text)
    assert NF.main(["--check", str(folder)]) == 1
    assert "NOT in the stored form" in capsys.readouterr().out
    assert NF.main(["--write", str(tmp_path / "repo" / "notebooks")]) == 0
    stored = nbformat.read(str(file), as_version=4)
    assert stored.cells[2].metadata["effx"] == {"solution": "ex-1"}
    # --write also gives the nbgrader marks: a solution cell and the autograded test cell
    assert stored.cells[2].metadata["nbgrader"]["solution"] is True
    assert stored.cells[3].metadata["nbgrader"]["grade"] is True
    assert NF.main(["--check", str(file)]) == 0
    assert NF.main(["--to-book", str(file)]) == 0
    back = nbformat.read(str(file), as_version=4)
    for cell in back.cells:  # the nbgrader marks stay (harmless to the book)
        cell.metadata.pop("nbgrader", None)
    assert_same_notebook(back, nb, "command line")
    file.write_text(NF.dumps(_notebook("{ref}`x`")))
    assert NF.main(["--write", str(file)]) == 2
    assert "unknown MyST role {ref}" in capsys.readouterr().err


def test_source_read_handler_converts_only_notebooks():
    stored = NF.to_stored(_notebook("A {term}`GEMV`."), HERE)

    class Env:
        def doc2path(self, docname):
            return (
                str(ROOT / f"{docname}.ipynb")
                if docname.startswith("notebooks")
                else "x.md"
            )

    class App:
        env = Env()

    source = [NF.dumps(stored)]
    EXT.read_stored_notebook(App(), "notebooks/ch02_quantization/x", source)
    assert nbformat.reads(source[0], as_version=4).cells[1].source == "A {term}`GEMV`."
    page = [
        "A [GEMV](https://effx-lab.github.io/effx-lab/book/glossary.html#term-GEMV)."
    ]
    EXT.read_stored_notebook(App(), "book/page", page)
    assert page[0].startswith("A [GEMV]")  # a .md page is not a notebook: left alone
    broken = NF.to_stored(_notebook(":::{exercise} T\n:label: ex-y\n\nText\n:::"), HERE)
    broken.cells[1].source = "no heading"
    from sphinx.errors import ExtensionError

    with pytest.raises(ExtensionError, match=r"x\.ipynb: cell 2 of 2 \(markdown\)"):
        EXT.read_stored_notebook(
            App(), "notebooks/ch02_quantization/x", [NF.dumps(broken)]
        )


def test_form_titles_are_hidden_in_the_page_only():
    from docutils import nodes

    def cell(code, metadata):
        block = nodes.literal_block(code, code)
        source = nodes.container("", block, nb_element="cell_code_source")
        output = nodes.literal_block("#@title printed", "#@title printed")
        outputs = nodes.container("", output, nb_element="cell_code_output")
        return nodes.container(
            "", source, outputs, nb_element="cell_code", cell_metadata=metadata
        )

    solution = cell(
        "#@title Solution: f (double-click to show)\ndef f():\n"
        "    # hint\n    ### BEGIN SOLUTION\n    return 1\n    ### END SOLUTION",
        {"cellView": "form", "effx": {"solution": "ex-1"}},
    )
    markers_only = cell(
        "def g():\n    ### BEGIN SOLUTION\n    pass\n    ### END SOLUTION\n",
        {"effx": {"solution": "ex-2"}},
    )
    myst = cell("def h():\n    ### BEGIN SOLUTION\n    pass\n    ### END SOLUTION", {})
    other = cell("#@title not a solution\nx = 1", {})
    doc = nodes.section("", solution, markers_only, myst, other)
    assert EXT.hide_form_titles(doc) == 3
    blocks = [b.astext() for b in doc.findall(nodes.literal_block)]
    assert blocks == [
        "def f():\n    # hint\n    return 1",
        "#@title printed",
        "def g():\n    pass\n",
        "#@title printed",
        "def h():\n    pass",
        "#@title printed",
        "#@title not a solution\nx = 1",
        "#@title printed",
    ]


def _tiny_book(folder: Path, notebooks: dict) -> Path:
    """A book: the repository's sphinx config, glossary, references and notebooks."""
    real = yaml.safe_load((ROOT / "_config.yml").read_text())
    sphinx = copy.deepcopy(real["sphinx"])
    sphinx["local_extensions"] = {
        k: str(ROOT / v) for k, v in sphinx["local_extensions"].items()
    }
    sphinx["config"].pop("html_static_path", None)
    config = {
        "title": "tiny",
        "only_build_toc_files": True,
        "execute": {"execute_notebooks": "off"},
        "html": {"baseurl": real["html"]["baseurl"]},
        "bibtex_bibfiles": real["bibtex_bibfiles"],
        "parse": real["parse"],
        "sphinx": sphinx,
    }
    (folder / "book").mkdir(parents=True)
    (folder / "_config.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    for page in ("glossary.md", "references.md", "references.bib"):
        shutil.copy(ROOT / "book" / page, folder / "book" / page)
    (folder / "book" / "page.md").write_text("# A page of the book\n\nText.\n")
    (folder / "notebooks" / "ch").mkdir(parents=True)
    names = list(notebooks)
    toc = [f"format: jb-book\nroot: notebooks/ch/{names[0]}\nchapters:"]
    toc += [f"- file: notebooks/ch/{n}" for n in names[1:]]
    toc += ["- file: book/glossary", "- file: book/references", "- file: book/page"]
    (folder / "_toc.yml").write_text("\n".join(toc) + "\n")
    for name, nb in notebooks.items():
        (folder / "notebooks" / "ch" / f"{name}.ipynb").write_text(NF.dumps(nb))
    return folder


@pytest.mark.slow
def test_tiny_book_renders_both_forms_the_same(tmp_path):
    """The same notebooks, MyST in one book and stored in another: the same pages."""
    first = new_notebook(
        cells=[
            new_markdown_cell(
                "# First\n\n{term}`Quantization` and {term}`outliers <outlier>`, as "
                "{cite:t}`jacob2018quantization` shows (see "
                "{cite:p}`nagel2021white,weng2023inference`)."
                " Next: {doc}`second` and {doc}`a page\n<../../book/page>`."
            ),
            new_code_cell("def check_f(fn):\n    assert fn(2) == 4"),
            new_markdown_cell(
                ":::{exercise} Double\n:label: ex-tiny\n\nWrite `f(x)`, $2x$.\n:::"
            ),
            new_markdown_cell("```{solution-start} ex-tiny\n:class: dropdown\n```"),
            new_code_cell(
                "def f(x):\n    ### BEGIN SOLUTION\n    return 2 * x\n"
                "    ### END SOLUTION"
            ),
            new_markdown_cell("Doubling is {term}`GEMV`-free."),
            new_markdown_cell(NF.GATE_END),
            new_code_cell("check_f(f)"),  # the exercise's test cell (nbgrader marks it)
        ]
    )
    second = new_notebook(
        cells=[new_markdown_cell("# Second\n\nBack to {doc}`the first <first>`.")]
    )
    for nb in (first, second):
        nb.metadata["kernelspec"] = {
            "name": "python3",
            "display_name": "Python 3",
            "language": "python",
        }
    built = {}
    for form in ("myst", "stored"):
        book = _tiny_book(tmp_path / form, {"first": first, "second": second})
        if form == "stored":
            assert NF.main(["--write", str(book / "notebooks")]) == 0
            text = (book / "notebooks" / "ch" / "first.ipynb").read_text()
            assert "{term}" not in text and "#@title" in text
        run = subprocess.run(
            [_jupyter_book(), "build", str(book), "--warningiserror", "--nitpick"],
            capture_output=True,
            text=True,
            timeout=600,
            env=dict(os.environ),
        )
        assert (
            run.returncode == 0
        ), f"{form}: the book did not build\n{(run.stdout + run.stderr)[-4000:]}"
        built[form] = book / "_build" / "html"
    for page in ("notebooks/ch/first.html", "notebooks/ch/second.html"):
        myst, stored = ((built[f] / page).read_text() for f in ("myst", "stored"))
        assert stored == myst, f"{page}: the stored form renders differently"
    page = (built["stored"] / "notebooks/ch/first.html").read_text()
    assert "#@title" not in page and 'class="exercise admonition"' in page
    assert 'href="../../book/references.html#cite-jacob2018quantization"' in page
    assert 'href="../../book/glossary.html#term-outlier"' in page
