"""A pytest plugin: store what nbval executed in the book's execution cache, so `make test` runs each notebook once.

`make test` validates every notebook with nbval and then builds the book. Both used to execute every
notebook, which doubled the longest part of the suite. With this plugin (``-p nbval_cache`` with
``tests/`` on ``PYTHONPATH``), a notebook whose every cell passed under nbval is written, with the outputs nbval
collected, into the jupyter-cache that Jupyter Book reads (``execute_notebooks: cache`` in ``_config.yml``).
The book build then finds the notebook's code unchanged and takes those outputs instead of executing it again.

Only a run that produces what a book build would is stored: the book renders figures with
``EFFX_PLOTLY_RENDERER=book`` (the Makefile sets it for both runs); without it the plugin stores nothing.
A notebook with a failed, skipped or timed-out cell is never stored, so the book build executes it again and
fails on its own terms. nbval ignores widget ``comm`` messages, so a notebook that leaves widget state behind
would render blank widgets from the cache: none of the course's notebooks does in the book renderer (live
widgets are created only when a kernel runs without it); a notebook that displays a widget view is not stored.
"""
from __future__ import annotations

import copy
import os
import time
from pathlib import Path

import pytest

_WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def pytest_addoption(parser):
    group = parser.getgroup("nbval_cache")
    group.addoption("--nb-cache", default=None, metavar="DIR",
                    help="jupyter-cache directory to store notebooks that passed (the book's execute cache)")
    group.addoption("--nb-max-rss-mb", type=float, default=None, metavar="MB",
                    help="fail the run when a notebook's kernel peaks above this resident memory")


def _kernel_peak_rss_mb(nb_file) -> float | None:
    """The kernel process's peak resident memory (Linux VmHWM), read before nbval stops the kernel."""
    km = getattr(getattr(nb_file, "kernel", None), "km", None)
    process = getattr(getattr(km, "provisioner", None), "process", None) or getattr(km, "kernel", None)
    pid = getattr(process, "pid", None)
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


class _Recorder:
    """Per notebook: wall time and the kernel's peak memory (always); its outputs into the cache (with a cache)."""

    def __init__(self, cache_dir: Path | None, max_rss_mb: float | None):
        self.cache_dir = cache_dir
        self.max_rss_mb = max_rss_mb
        self.budget: list[tuple[str, float, float | None]] = []
        self.failed: set[str] = set()
        self.started: dict[str, float] = {}
        self.stored: list[str] = []
        self.outputs: dict[str, dict[int, list]] = {}

    # a notebook is one IPyNbFile; its cells are the items whose parent it is
    @staticmethod
    def _is_cell(item) -> bool:
        return type(item).__name__ == "IPyNbCell"

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(self, item, call):
        outcome = yield
        if not self._is_cell(item):
            return
        key = str(item.parent.fspath)
        self.started.setdefault(key, time.perf_counter())
        report = outcome.get_result()
        if report.failed or report.skipped:
            self.failed.add(key)
        elif call.when == "call" and item.test_outputs is not None:
            self.outputs.setdefault(key, {})[id(item.cell)] = item.test_outputs

    @pytest.hookimpl(tryfirst=True)  # before pytest tears the notebook down (and nbval stops its kernel)
    def pytest_runtest_teardown(self, item, nextitem):
        if not self._is_cell(item):
            return
        if nextitem is not None and nextitem.parent is item.parent:
            return  # more cells of this notebook to come
        key = str(item.parent.fspath)
        outputs = self.outputs.pop(key, {})
        seconds = time.perf_counter() - self.started.get(key, time.perf_counter())
        self.budget.append((Path(key).name, seconds, _kernel_peak_rss_mb(item.parent)))
        if key in self.failed or self.cache_dir is None:
            return
        self._store(item.parent, outputs, seconds)

    def _store(self, nb_file, outputs_by_cell: dict[int, list], seconds: float) -> None:
        from jupyter_cache import get_cache
        from jupyter_cache.base import CacheBundleIn

        nb = copy.deepcopy(nb_file.nb)
        count = 0
        for original, cell in zip(nb_file.nb.cells, nb.cells):
            if cell.cell_type != "code":
                continue
            outputs = outputs_by_cell.get(id(original))
            if outputs is None:  # a cell nbval did not run: do not guess
                return
            count += 1
            cell.execution_count = count
            cell.outputs = []
            for out in outputs:
                out = copy.deepcopy(out)
                if "data" in out and _WIDGET_VIEW in out["data"]:
                    return  # widget views need widget state that nbval does not record
                if out.get("output_type") == "execute_result":
                    out["execution_count"] = count
                cell.outputs.append(out)
        cache = get_cache(str(self.cache_dir))
        cache.cache_notebook_bundle(
            CacheBundleIn(nb, str(Path(str(nb_file.fspath)).resolve()), data={"execution_seconds": seconds}),
            check_validity=False,
            overwrite=True,
        )
        self.stored.append(Path(str(nb_file.fspath)).name)

    def over_budget(self) -> list[str]:
        if self.max_rss_mb is None:
            return []
        return [name for name, _, rss in self.budget if rss is not None and rss > self.max_rss_mb]

    def pytest_sessionfinish(self, session):
        if self.over_budget():
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter):
        if self.budget:
            terminalreporter.write_sep("-", "notebook budget: wall time and the kernel's peak memory")
            for name, seconds, rss in self.budget:
                mem = f"{rss:8.0f} MB" if rss is not None else "       ? MB"
                terminalreporter.write_line(f"  {name:40s} {seconds:7.1f} s {mem}")
            for name in self.over_budget():
                terminalreporter.write_line(f"FAILED budget: {name} peaked above {self.max_rss_mb:.0f} MB", red=True)
        if self.stored:
            terminalreporter.write_line(
                f"nbval_cache: {len(self.stored)} notebook(s) stored in {self.cache_dir} for the book build")


def pytest_configure(config):
    cache_dir = config.getoption("--nb-cache")
    if cache_dir and os.environ.get("EFFX_PLOTLY_RENDERER") != "book":
        config.issue_config_time_warning(
            pytest.PytestConfigWarning("--nb-cache needs EFFX_PLOTLY_RENDERER=book (the book's renderer); "
                                       "nothing will be stored"), stacklevel=2)
        cache_dir = None
    config.pluginmanager.register(_Recorder(Path(cache_dir) if cache_dir else None,
                                            config.getoption("--nb-max-rss-mb")), "nbval_cache_recorder")
