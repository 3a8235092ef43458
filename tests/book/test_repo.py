"""The repository's own promises: one repository URL, notebooks committed clean, Colab-safe requirements."""
from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import pytest
import yaml

import effx_lab

ROOT = Path(__file__).resolve().parents[2]
from _notebooks import NOTEBOOKS  # noqa: E402


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
    # at least one exercise drives the experiment after it: adopt(fn, check_fn) after check_fn(fn)
    adopted = re.findall(r"\badopt\(\s*(\w+)\s*,\s*(check_\w+)", text)
    assert adopted, f"{nb.name}: no exercise drives an experiment (effx_lab.check.adopt(fn, check_fn))"
    for fn, check in adopted:
        first_check = text.find(f"{check}({fn})")
        assert 0 <= first_check < text.find(f"adopt({fn}"), f"{nb.name}: {check}({fn}) must come before adopt"
    # claims have one mechanism (effx_lab.claims.Claim); the old one-line verdict is gone
    assert "verdict(" not in text, f"{nb.name}: use effx_lab.claims.Claim, not verdict()"
    # title first
    assert cells[0]["cell_type"] == "markdown" and _src(cells[0]).startswith("# ")


def test_requirements_are_ranges_not_pins():
    """Pins clash with Colab's preinstalled torch/numpy: the package only states ranges."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        reqs += extra
    pinned = [r for r in reqs if "==" in r.split(";")[0]]  # an environment marker may compare with ==
    assert not pinned, f"pinned requirements break Colab: {pinned}"
    torch_req = [r for r in project["dependencies"] if r.startswith("torch")]
    assert torch_req and ">=" in torch_req[0]


# ------------------------------------------------------------------------------------------------------------
# The course is pinned to one git ref: COURSE_REF, the Colab button's branch and every install cell agree
# ------------------------------------------------------------------------------------------------------------
def _install_cell(nb: Path) -> str:
    return next(_src(c) for c in _cells(nb) if c["cell_type"] == "code")


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.name)
def test_install_cell_installs_the_pinned_ref(nb):
    """A notebook opened from an older book installs the package of that book, not whatever main is now."""
    expected = f'%pip install -q "effx_lab @ git+{effx_lab.REPO_URL}@{effx_lab.COURSE_REF}"'
    urls = re.findall(r"git\+\S+?(?=[\"'\s])", _install_cell(nb))
    assert urls == [f"git+{effx_lab.REPO_URL}@{effx_lab.COURSE_REF}"], f"{nb.name}: installs {urls}"
    assert expected in _install_cell(nb), f"{nb.name}: the install line must read {expected}"


def test_launch_button_opens_the_pinned_ref():
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    assert config["repository"]["branch"] == effx_lab.COURSE_REF


def _course_copy(tmp_path: Path) -> Path:
    """The three kinds of file `effx-lab pin` rewrites, copied into tmp_path (two notebooks suffice)."""
    (tmp_path / "effx_lab").mkdir()
    (tmp_path / "effx_lab" / "__init__.py").write_text((ROOT / "effx_lab" / "__init__.py").read_text())
    (tmp_path / "_config.yml").write_text((ROOT / "_config.yml").read_text())
    for nb in (NOTEBOOKS[0], NOTEBOOKS[-1]):
        target = tmp_path / nb.relative_to(ROOT)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(nb.read_text(encoding="utf-8"), encoding="utf-8")
    return tmp_path


def test_pin_rewrites_the_ref_in_all_three_places_and_nothing_else(tmp_path, capsys):
    from effx_lab.cli import main

    root = _course_copy(tmp_path)
    before = {p: p.read_text(encoding="utf-8") for p in root.rglob("*") if p.is_file()}
    assert main(["pin", "v1.2.0", "--root", str(root)]) == 0
    assert "pinned to 'v1.2.0'" in capsys.readouterr().out

    init = (root / "effx_lab" / "__init__.py").read_text()
    assert re.findall(r'^COURSE_REF = "(.*)"$', init, re.M) == ["v1.2.0"]
    config_text = (root / "_config.yml").read_text()
    assert yaml.safe_load(config_text)["repository"]["branch"] == "v1.2.0"
    for path, old in before.items():  # exactly one line changed in each file
        new = path.read_text(encoding="utf-8")
        changed = [(a, b) for a, b in zip(old.splitlines(), new.splitlines()) if a != b]
        assert len(old.splitlines()) == len(new.splitlines()) and len(changed) == 1, (path, changed)
    for nb in root.rglob("*.ipynb"):
        assert f'git+{effx_lab.REPO_URL}@v1.2.0"' in _install_cell(nb)
        cells, cells_before = json.loads(nb.read_text(encoding="utf-8"))["cells"], json.loads(before[nb])["cells"]
        assert cells[0] == cells_before[0] and cells[2:] == cells_before[2:]  # only the setup cell changed
        assert nb.read_text(encoding="utf-8").endswith("}\n")

    # pinning again to the same ref changes nothing; pinning back restores the files byte for byte
    assert main(["pin", "v1.2.0", "--root", str(root)]) == 0
    assert "(0 files changed)" in capsys.readouterr().out
    assert main(["pin", effx_lab.COURSE_REF, "--root", str(root)]) == 0
    assert {p: p.read_text(encoding="utf-8") for p in before} == before


def test_pin_quotes_a_ref_yaml_would_not_read_as_a_string(tmp_path):
    from effx_lab.cli import pin_course_ref

    root = _course_copy(tmp_path)
    pin_course_ref(root, "1.0")
    assert yaml.safe_load((root / "_config.yml").read_text())["repository"]["branch"] == "1.0"


@pytest.mark.parametrize("ref", ["", "main branch", 'v1"', "v1'", "a;rm -rf", "$(id)", "`id`", "a|b", "a&b",
                                 "-rf", "../x", "a..b", "x.lock", "x/", ".hidden", "a\\b", "a\nb", "a~1", "a^", "a:b"])
def test_pin_rejects_refs_that_are_not_safe_git_ref_names(tmp_path, ref, capsys):
    from effx_lab.cli import main, pin_course_ref

    root = _course_copy(tmp_path)
    before = {p: p.read_text(encoding="utf-8") for p in root.rglob("*") if p.is_file()}
    with pytest.raises(ValueError, match="ref"):
        pin_course_ref(root, ref)
    assert main(["pin", "--root", str(root), "--", ref]) == 1
    assert "effx-lab pin: error: ref" in capsys.readouterr().err
    assert {p: p.read_text(encoding="utf-8") for p in before} == before  # nothing written


def test_pin_validates_its_arguments_and_writes_nothing_on_a_broken_file(tmp_path):
    from effx_lab.cli import pin_course_ref

    with pytest.raises(TypeError, match="ref must be a str"):
        pin_course_ref(tmp_path, 1.0)
    with pytest.raises(ValueError, match="does not exist"):
        pin_course_ref(tmp_path, "v1")
    root = _course_copy(tmp_path)
    config = root / "_config.yml"
    config.write_text(config.read_text().replace("  branch:", "  # branch:"))
    init_before = (root / "effx_lab" / "__init__.py").read_text()
    with pytest.raises(ValueError, match="no `branch:` line"):
        pin_course_ref(root, "v1")
    assert (root / "effx_lab" / "__init__.py").read_text() == init_before  # checked everything before writing


def test_every_data_file_of_the_package_ships_in_the_wheel():
    """Colab installs the wheel, not a checkout: every tracked non-Python file under
    effx_lab/ must match a [tool.setuptools.package-data] pattern of its package."""
    import fnmatch
    import subprocess
    import tomllib

    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    patterns = data.get("package-data", {})
    files = subprocess.run(
        ["git", "ls-files", "effx_lab"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    assert files, "git ls-files found nothing under effx_lab/"
    data_files = [f for f in files if not f.endswith(".py") and not f.endswith(".typed")]
    assert any(f.endswith(".npz") for f in data_files)  # the TinyLM weights at least
    missing = []
    for f in data_files:
        parts = f.split("/")
        shipped = False
        for depth in range(len(parts) - 1, 0, -1):
            package, rest = ".".join(parts[:depth]), "/".join(parts[depth:])
            if any(fnmatch.fnmatch(rest, pat) for pat in patterns.get(package, ())):
                shipped = True
                break
        if not shipped:
            missing.append(f)
    assert not missing, f"not in pyproject's package-data, so not in the wheel: {missing}"
