"""The ``effx-lab`` command.

* ``effx-lab student IN OUT`` writes student versions of notebooks (solutions replaced by placeholders,
  see :mod:`effx_lab.student`): a notebook to a notebook (or into an existing folder), or a folder
  of notebooks to a folder, mirroring the tree.
* ``effx-lab nbgrader IN COURSE [--assignment NAME]`` puts notebooks into an nbgrader
  course folder as assignment sources, with their nbgrader metadata, and writes its
  ``nbgrader_config.py`` (see :func:`effx_lab.student.write_nbgrader_course`).
* ``effx-lab bench CHAPTER [--quick]`` runs a chapter's benchmarks (the same as
  ``python -m effx_lab.bench CHAPTER``).
* ``effx-lab pin REF [--root DIR]`` pins the course to a git ref (a release tag): it rewrites
  ``COURSE_REF`` in ``effx_lab/__init__.py``, ``repository: branch:`` in ``_config.yml`` (the ref the
  Colab launch button opens) and the install line of every notebook's setup cell
  (``git+REPO_URL@REF``), so that all three always name the same ref (see :func:`pin_course_ref`).
* ``effx-lab --version`` prints the package version.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Sequence

from ._validate import describe

__all__ = ["build_parser", "check_ref", "main", "pin_course_ref"]


def _version() -> str:
    from . import __version__

    return __version__


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``effx-lab`` command."""
    parser = argparse.ArgumentParser(
        prog="effx-lab",
        description="Tools of the effx-lab course: student notebooks and benchmarks.",
    )
    parser.add_argument("--version", action="version", version=f"effx-lab {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    student = sub.add_parser(
        "student",
        help="write student versions of notebooks (solutions replaced by placeholders)",
        description="Write the student version of a notebook (file to file, or into an existing folder) "
        "or of every notebook under a folder (folder to folder, mirroring the tree).",
    )
    student.add_argument("src", type=Path, help="a solution notebook (.ipynb) or a folder of them")
    student.add_argument("dst", type=Path, help="where to write the student version(s)")

    grader = sub.add_parser(
        "nbgrader",
        help="put notebooks into an nbgrader course folder (source/<assignment>/)",
        description="Copy a notebook, or every notebook under a folder, into "
        "COURSE/source/<assignment>/ with its nbgrader metadata (solution cells, "
        "autograded test cells with points), and write COURSE/nbgrader_config.py unless "
        "it exists. Then, in COURSE: nbgrader generate_assignment <assignment>.",
    )
    grader.add_argument(
        "src", type=Path, help="a solution notebook (.ipynb) or a folder of them"
    )
    grader.add_argument(
        "course", type=Path, help="the nbgrader course folder (created if missing)"
    )
    grader.add_argument(
        "--assignment",
        default=None,
        help="the assignment name (default: the name of each notebook's folder)",
    )

    bench = sub.add_parser("bench", help="run a chapter's benchmarks", description="Run a chapter's benchmarks.")
    bench.add_argument("chapter", help="the chapter's benchmark name, e.g. costs")
    bench.add_argument("--quick", action="store_true", help="small sizes, a few seconds")

    pin = sub.add_parser(
        "pin",
        help="pin the course to a git ref (COURSE_REF, the Colab button's branch, every install cell)",
        description="Rewrite COURSE_REF in effx_lab/__init__.py, repository.branch in _config.yml and the "
        "install line (git+REPO_URL@REF) of every notebook's setup cell, so that they all name REF.",
    )
    pin.add_argument("ref", help="a git branch or tag name, e.g. v1.0 (no spaces, quotes or shell characters)")
    pin.add_argument("--root", type=Path, default=Path("."), help="the repository's root folder (default: .)")
    return parser


def _student(src: Path, dst: Path) -> int:
    from .student import write_student_version, write_student_versions

    if src.is_dir():
        if dst.exists() and not dst.is_dir():
            print(f"effx-lab student: error: {src} is a folder, so {dst} must be a folder too", file=sys.stderr)
            return 2
        written = write_student_versions(src, dst)
        if not written:
            print(f"effx-lab student: error: no notebooks (*.ipynb) found under {src}", file=sys.stderr)
            return 1
    else:
        target = dst / src.name if dst.is_dir() else dst
        written = [write_student_version(src, target)]
    for path in written:
        print(f"wrote {path}")
    print(f"{len(written)} student notebook{'s' if len(written) != 1 else ''} written")
    return 0


def _nbgrader(src: Path, course: Path, assignment: str | None) -> int:
    from .student import write_nbgrader_course

    written = write_nbgrader_course(src, course, assignment=assignment)
    for path in written:
        print(f"wrote {path}")
    assignments = sorted({path.parent.name for path in written})
    plural = "s" if len(written) != 1 else ""
    print(f"{len(written)} notebook{plural} in {course / 'source'}; next, in {course}:")
    for name in assignments:
        print(f"  nbgrader generate_assignment {name}")
    return 0


def _bench(chapter: str, quick: bool) -> int:
    from .bench.__main__ import main as bench_main

    code = bench_main([chapter, *(["--quick"] if quick else [])])
    return int(code or 0)


# ----------------------------------------------------------------------------------------------------------
# effx-lab pin REF
# ----------------------------------------------------------------------------------------------------------
_REF_CHARS = re.compile(r"[A-Za-z0-9._/+-]+")
_YAML_WORDS = {"y", "yes", "n", "no", "true", "false", "on", "off", "null", "~"}


def check_ref(ref: object) -> str:
    """``ref`` if it is a safe git branch or tag name, else ``TypeError``/``ValueError`` naming the problem.

    Safe: letters, digits and ``. _ / + -`` only (no spaces, quotes or shell metacharacters, so the ref can
    stand in a ``%pip install "...@REF"`` line and a YAML value), and a valid git ref name: not starting with
    ``-``, ``/`` or ``.``, not ending with ``/``, ``.`` or ``.lock``, no ``..``, ``//`` or ``/.``.
    """
    if not isinstance(ref, str):
        raise TypeError(f"ref must be a str naming a git branch or tag, got {describe(ref)}")
    if not _REF_CHARS.fullmatch(ref):
        raise ValueError(
            "ref must be a git branch or tag name made of letters, digits and . _ / + - only "
            f"(no spaces, quotes or shell characters), got {ref!r}"
        )
    if ref.startswith(("-", "/", ".")) or ref.endswith(("/", ".", ".lock")) or any(
        bad in ref for bad in ("..", "//", "/.")
    ):
        raise ValueError(
            "ref is not a valid git ref name (it may not start with - / or ., end with / . or .lock, "
            f"or contain .. // or /.), got {ref!r}"
        )
    return ref


def _pin_init(text: str, ref: str, path: Path) -> str:
    pattern = re.compile(r'^COURSE_REF = (["\'])[^"\'\n]*\1', re.M)
    found = pattern.findall(text)
    if len(found) != 1:
        raise ValueError(f"{path} must hold exactly one line `COURSE_REF = \"...\"`, found {len(found)}")
    return pattern.sub(f'COURSE_REF = "{ref}"', text)


def _yaml_scalar(ref: str) -> str:
    """``ref`` as a YAML value that reads back as the same string (quoted when YAML would read a number or a bool)."""
    plain = re.fullmatch(r"[A-Za-z][A-Za-z0-9._/+-]*", ref) and ref.lower() not in _YAML_WORDS
    return ref if plain else f'"{ref}"'


def _pin_config(text: str, ref: str, path: Path) -> str:
    """Rewrite the value of ``branch:`` inside the top-level ``repository:`` block, and nothing else."""
    lines = text.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if re.match(r"repository:\s*(#.*)?$", line)), None)
    if start is None:
        raise ValueError(f"{path} has no top-level `repository:` section")
    for i in range(start + 1, len(lines)):
        line = lines[i]
        if line.strip() and not line[0].isspace():
            break  # the next top-level key: the block ended without a branch
        m = re.match(r"(\s+branch:[ \t]*)([^#\n]*?)([ \t]*(#[^\n]*)?)(\r?\n)?$", line)
        if m:
            lines[i] = f"{m.group(1)}{_yaml_scalar(ref)}{m.group(3)}{m.group(5) or ''}"
            return "".join(lines)
    raise ValueError(f"{path}: the `repository:` section has no `branch:` line")


def _pin_notebook(text: str, ref: str, path: Path, repo_url: str) -> str:
    nb = json.loads(text)
    install = re.compile(r"git\+" + re.escape(repo_url) + r"(?:@[^\"'\s]*)?(?=[\"'\s])")
    for cell in nb.get("cells", []):
        if cell.get("cell_type") != "code":
            continue
        source = cell["source"]
        joined = "".join(source) if isinstance(source, list) else source
        if "google.colab" not in joined:
            continue
        if not install.search(joined):
            break
        new = f"git+{repo_url}@{ref}"
        if isinstance(source, list):
            cell["source"] = [install.sub(new, line) for line in source]
        else:
            cell["source"] = install.sub(new, source)
        return json.dumps(nb, indent=1, ensure_ascii=False) + "\n"
    raise ValueError(f"{path}: no setup cell installing git+{repo_url} (the Colab cell) was found")


def pin_course_ref(root: Path | str, ref: str) -> list[Path]:
    """Pin the course at ``root`` to the git ref ``ref``; return the files that changed.

    Rewrites ``COURSE_REF = "..."`` in ``effx_lab/__init__.py``, the ``branch:`` line of the ``repository:``
    section of ``_config.yml`` (the ref of the Colab launch button; no other line of the file is touched) and,
    in every notebook under ``notebooks/``, the install line of the setup cell to ``git+REPO_URL@ref``. Every
    file is read and checked before any is written, so an error leaves the repository as it was.
    """
    ref = check_ref(ref)
    if not isinstance(root, (str, Path)):
        raise TypeError(f"root must be a path to the repository's root folder, got {describe(root)}")
    from . import REPO_URL

    root = Path(root)
    init, config = root / "effx_lab" / "__init__.py", root / "_config.yml"
    for path in (init, config, root / "notebooks"):
        if not path.exists():
            raise ValueError(f"{path} does not exist: is {root} the course repository's root?")
    notebooks = sorted(p for p in (root / "notebooks").rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)
    if not notebooks:
        raise ValueError(f"no notebooks (*.ipynb) found under {root / 'notebooks'}")
    planned: list[tuple[Path, str, str]] = []
    for path, rewrite in [(init, lambda t, p: _pin_init(t, ref, p)), (config, lambda t, p: _pin_config(t, ref, p))] + [
        (nb, lambda t, p: _pin_notebook(t, ref, p, REPO_URL)) for nb in notebooks
    ]:
        old = path.read_text(encoding="utf-8")
        planned.append((path, old, rewrite(old, path)))
    changed = []
    for path, old, new in planned:
        if new != old:
            path.write_text(new, encoding="utf-8")
            changed.append(path)
    return changed


def _pin(ref: str, root: Path) -> int:
    changed = pin_course_ref(root, ref)
    for path in changed:
        print(f"pinned {path}")
    print(f"the course is pinned to {ref!r} ({len(changed)} file{'s' if len(changed) != 1 else ''} changed)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``effx-lab`` command with ``argv`` (default: ``sys.argv[1:]``); return the exit status."""
    if argv is not None and (isinstance(argv, (str, bytes)) or not all(isinstance(a, str) for a in argv)):
        raise TypeError(f"argv must be a list of str (or None for sys.argv[1:]), got {describe(argv)}")
    parser = build_parser()
    try:
        args = parser.parse_args(None if argv is None else list(argv))
    except SystemExit as exc:  # --help, --version and usage errors: argparse has printed the message
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    if args.command == "student":
        try:
            return _student(args.src, args.dst)
        except (ValueError, OSError) as exc:
            print(f"effx-lab student: error: {exc}", file=sys.stderr)
            return 1
    if args.command == "nbgrader":
        try:
            return _nbgrader(args.src, args.course, args.assignment)
        except (ValueError, OSError) as exc:
            print(f"effx-lab nbgrader: error: {exc}", file=sys.stderr)
            return 1
    if args.command == "pin":
        try:
            return _pin(args.ref, args.root)
        except (ValueError, TypeError, OSError) as exc:
            print(f"effx-lab pin: error: {exc}", file=sys.stderr)
            return 1
    return _bench(args.chapter, args.quick)


if __name__ == "__main__":  # pragma: no cover - `python -m effx_lab.cli`
    sys.exit(main())
