"""Run a chapter's benchmarks: ``python -m effx_lab.bench <chapter> [--quick] [--out DIR]``.

``python -m effx_lab.bench --list`` shows the chapters. Each chapter is a module with a function
``run(quick: bool = False) -> dict`` (see docs/ARCHITECTURE.md); its results are printed and written as
JSON by :func:`effx_lab.bench.save_results` to ``DIR/<chapter>-<device>.json`` (default
``./bench_results``). Exit codes: 0 success, 1 the chapter failed to import or run, 2 usage error
(unknown or missing chapter).
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Any, Sequence

from . import Ceilings, Comparison, RooflinePoint, Timing, device_name, save_results, to_jsonable

__all__ = ["REGISTRY", "build_parser", "format_results", "main"]

#: chapter name -> module whose ``run(quick)`` returns that chapter's results
REGISTRY: dict[str, str] = {
    "ch01": "effx_lab.costs.bench",
    "costs": "effx_lab.costs.bench",
    "ch02": "effx_lab.quant.bench",
    "ch03": "effx_lab.prune.bench",
    "ch04": "effx_lab.nm.bench",
    "ch05": "effx_lab.moe.bench",
    "ch07": "effx_lab.flash.bench",
    "flash": "effx_lab.flash.bench",
    "moe": "effx_lab.moe.bench",
    "nm": "effx_lab.nm.bench",
    "prune": "effx_lab.prune.bench",
    "quant": "effx_lab.quant.bench",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m effx_lab.bench",
        description="Run a chapter's benchmarks, print the results and save them as JSON.",
    )
    parser.add_argument("chapter", nargs="?", help="chapter to run (see --list)")
    parser.add_argument("--quick", action="store_true", help="small sizes, a few seconds (what CI runs)")
    parser.add_argument("--out", default=None, metavar="DIR", help="folder for the JSON file (./bench_results)")
    parser.add_argument("--list", action="store_true", help="list the chapters and exit")
    return parser


def _fmt_scalar(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _fmt_value(value: Any) -> str:
    if isinstance(value, (Timing, Ceilings)):
        return str(value)
    if isinstance(value, (str, bool, int, float)) or value is None:
        return _fmt_scalar(value)
    plain = to_jsonable(value)
    if isinstance(plain, list) and all(not isinstance(v, (list, dict)) for v in plain):
        text = "[" + ", ".join(_fmt_scalar(v) for v in plain) + "]"
    else:
        text = repr(plain)
    return text if len(text) <= 160 else text[:157] + "..."


def _as_comparison(d: dict[str, Any]) -> Comparison | None:
    """A ``Comparison.to_dict()`` (chapters often return that) turned back into a Comparison, else None."""
    if not {"baseline", "timings", "speedups"} <= set(d) or not isinstance(d["timings"], dict):
        return None
    try:
        timings = {name: Timing(**t) for name, t in d["timings"].items()}
        comp = Comparison(timings, d["baseline"], int(d.get("rounds", 1)), dict(d.get("round_medians_s", {})))
        comp.ratios()
    except (TypeError, ValueError, KeyError, ZeroDivisionError):
        return None
    return comp


def format_results(results: Any, indent: int = 0) -> str:
    """Readable text for a results dict: nested dicts indented, comparisons as tables, numbers to 4 digits."""
    pad = "  " * indent
    if isinstance(results, dict):
        comp = _as_comparison(results)
        if comp is not None:
            results = comp
    if isinstance(results, Comparison):
        return "\n".join(pad + line for line in results.table().splitlines())
    if isinstance(results, RooflinePoint):
        p = results
        return (
            f"{pad}{p.name}: {p.achieved_flops / 1e9:.3g} GFLOP/s, {p.achieved_bandwidth / 1e9:.3g} GB/s, "
            f"intensity {p.intensity:.3g} FLOP/B, {p.bound}-bound, {100 * p.fraction_of_attainable:.1f}% of the roof"
        )
    if isinstance(results, (list, tuple)) and any(isinstance(v, (dict, Comparison, RooflinePoint)) for v in results):
        return "\n".join(f"{pad}- item {i}:\n{format_results(v, indent + 1)}" for i, v in enumerate(results))
    if not isinstance(results, dict):
        return pad + _fmt_value(results)
    lines = []
    for key, value in results.items():
        nested = isinstance(value, (dict, Comparison, RooflinePoint)) or (
            isinstance(value, (list, tuple)) and any(isinstance(v, (dict, Comparison, RooflinePoint)) for v in value)
        )
        if nested:
            lines.append(f"{pad}{key}:")
            lines.append(format_results(value, indent + 1))
        else:
            lines.append(f"{pad}{key}: {_fmt_value(value)}")
    return "\n".join(lines)


def _chapters() -> str:
    return ", ".join(sorted(REGISTRY))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (0 ok, 1 the chapter failed, 2 usage error)."""
    args = build_parser().parse_args(argv)
    if args.list:
        width = max((len(k) for k in REGISTRY), default=0)
        for name in sorted(REGISTRY):
            print(f"{name.ljust(width)}  {REGISTRY[name]}")
        return 0
    if args.chapter is None:
        print(f"error: name a chapter to run; valid chapters: {_chapters()} (or use --list)", file=sys.stderr)
        return 2
    if args.chapter not in REGISTRY:
        print(f"error: unknown chapter {args.chapter!r}; valid chapters: {_chapters()}", file=sys.stderr)
        return 2
    module_name = REGISTRY[args.chapter]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        print(f"error: chapter {args.chapter!r} needs module {module_name}, which failed to import: {exc}",
              file=sys.stderr)
        return 1
    run = getattr(module, "run", None)
    if not callable(run):
        print(f"error: {module_name} has no run(quick) function", file=sys.stderr)
        return 1
    mode = "quick" if args.quick else "full"
    print(f"effx_lab.bench {args.chapter} ({mode}) on {device_name()}", flush=True)
    results = run(quick=args.quick)
    if not isinstance(results, dict):
        print(f"error: {module_name}.run must return a dict, returned {type(results).__name__}", file=sys.stderr)
        return 1
    print(format_results(results))
    path = save_results(args.chapter, results, out_dir=args.out)
    print(f"saved {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
