"""The ``effx-lab`` command.

* ``effx-lab student IN OUT`` writes student versions of notebooks (solutions replaced by placeholders,
  see :mod:`effx_lab.student`): a notebook to a notebook (or into an existing folder), or a folder
  of notebooks to a folder, mirroring the tree.
* ``effx-lab bench CHAPTER [--quick]`` runs a chapter's benchmarks (the same as
  ``python -m effx_lab.bench CHAPTER``).
* ``effx-lab --version`` prints the package version.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from ._validate import describe

__all__ = ["build_parser", "main"]


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

    bench = sub.add_parser("bench", help="run a chapter's benchmarks", description="Run a chapter's benchmarks.")
    bench.add_argument("chapter", help="the chapter's benchmark name, e.g. costs")
    bench.add_argument("--quick", action="store_true", help="small sizes, a few seconds")
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


def _bench(chapter: str, quick: bool) -> int:
    from .bench.__main__ import main as bench_main

    code = bench_main([chapter, *(["--quick"] if quick else [])])
    return int(code or 0)


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
    return _bench(args.chapter, args.quick)


if __name__ == "__main__":  # pragma: no cover - `python -m effx_lab.cli`
    sys.exit(main())
