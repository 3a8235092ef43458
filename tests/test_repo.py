"""The repository's own promises: one repository URL, notebooks committed clean, Colab-safe requirements."""
from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import pytest
import yaml

import effx_lab

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted(p for p in (ROOT / "notebooks").rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)


def _toc_files() -> list[str]:
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    out = [toc["root"]]

    def walk(entries):
        for e in entries or []:
            if "file" in e:
                out.append(e["file"])
            walk(e.get("sections"))
            walk(e.get("chapters"))

    for part in toc["parts"]:
        walk(part["chapters"])
    return out


def _cells(path: Path) -> list[dict]:
    return json.loads(path.read_text())["cells"]


def _src(cell: dict) -> str:
    s = cell["source"]
    return "".join(s) if isinstance(s, list) else s


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 3


def test_repository_url_is_written_in_one_place():
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    assert config["repository"]["url"] == effx_lab.REPO_URL


def test_every_notebook_is_in_the_toc_and_every_toc_file_exists():
    toc = _toc_files()
    listed = {f"{f}.ipynb" for f in toc if (ROOT / f"{f}.ipynb").exists()}
    on_disk = {str(p.relative_to(ROOT)) for p in NOTEBOOKS}
    assert on_disk == listed, f"not in _toc.yml: {sorted(on_disk - listed)}"
    for f in toc:
        assert (ROOT / f"{f}.ipynb").exists() or (ROOT / f"{f}.md").exists(), f"_toc.yml lists missing {f}"


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_committed_without_outputs(nb):
    for i, cell in enumerate(_cells(nb)):
        if cell["cell_type"] != "code" or "NBVAL_CHECK_OUTPUT" in _src(cell):
            continue
        assert not cell.get("outputs"), f"{nb.name} cell {i} keeps outputs: strip them (nbstripout)"
        assert cell.get("execution_count") is None, f"{nb.name} cell {i} keeps an execution count"


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_anatomy(nb):
    cells = _cells(nb)
    code = [_src(c) for c in cells if c["cell_type"] == "code"]
    # 1. setup cell: installs effx_lab from the repository only on Colab, never touching torch
    assert "google.colab" in code[0] and effx_lab.REPO_URL in code[0], f"{nb.name}: first code cell is not the Colab setup"
    assert not re.search(r"pip install[^\n]*\btorch\b", code[0]), f"{nb.name}: setup cell must not (re)install torch"
    # 2. device summary + seeds
    assert "setup_notebook(" in code[1], f"{nb.name}: second code cell must call effx_lab.setup_notebook()"
    # exercises: at least two auto-checked ones, with balanced solution markers
    text = "\n".join(code)
    n_checks = len(re.findall(r"^check_\w+\(", text, flags=re.M))
    assert n_checks >= 2, f"{nb.name}: {n_checks} checker calls, expected at least 2 exercises"
    assert text.count("### BEGIN SOLUTION") == text.count("### END SOLUTION") >= 2
    # title first
    assert cells[0]["cell_type"] == "markdown" and _src(cells[0]).startswith("# ")


def test_requirements_are_ranges_not_pins():
    """Pins clash with Colab's preinstalled torch/numpy: the package only states ranges."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        reqs += extra
    pinned = [r for r in reqs if "==" in r]
    assert not pinned, f"pinned requirements break Colab: {pinned}"
    torch_req = [r for r in project["dependencies"] if r.startswith("torch")]
    assert torch_req and ">=" in torch_req[0]
