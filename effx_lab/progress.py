"""One policy for progress bars: shown where a person watches, quiet under tests and
when asked.

Long loops of the course (training, calibration sweeps) report their progress with
:func:`progress_bar`, a :func:`tqdm.auto.tqdm` bar (a widget in Jupyter, text in a
terminal) with the time left. The policy lives here once, so every loop agrees on it:

* ``enabled=None`` (the default) shows the bar in an interactive session: a Jupyter
  kernel, or a terminal (``stderr`` is a TTY). It stays off under pytest
  (``PYTEST_CURRENT_TEST`` is set), when the environment variable ``EFFX_QUIET=1`` is
  set (a book build, a CI log), and in scripts whose output is redirected.
* ``enabled=True``/``False`` overrides the policy (a loop's ``progress=`` argument
  passes it through).
* the bar appears only once the loop has run for ``delay`` seconds (2 by default): a
  loop of a second or two prints nothing.

Typical use::

    from effx_lab.progress import progress_bar
    for step in progress_bar(range(steps), desc="training"):
        ...
    with progress_bar(total=budget_s, desc="training", unit="s") as bar:
        bar.update(seconds_spent)
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import Any

from effx_lab._validate import check_bool, check_float, check_int, describe

__all__ = ["progress_enabled", "progress_bar"]

#: seconds a loop runs before its bar appears (shorter loops print nothing)
DEFAULT_DELAY_S = 2.0


def _in_notebook() -> bool:
    """True inside a Jupyter kernel (IPython with a kernel attached); never imports
    IPython itself."""
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    get = getattr(ipython, "get_ipython", None)
    shell = get() if callable(get) else None
    return shell is not None and getattr(shell, "kernel", None) is not None


def progress_enabled(enabled: bool | None = None) -> bool:
    """Whether a progress bar should be drawn: ``enabled`` itself when it is a bool; for
    ``None`` the policy of the module docstring (on in a notebook or a terminal, off
    under pytest and with ``EFFX_QUIET=1``).
    """
    if enabled is not None:
        return check_bool("enabled", enabled)
    if os.environ.get("PYTEST_CURRENT_TEST") or os.environ.get("EFFX_QUIET", "") == "1":
        return False
    if _in_notebook():
        return True
    stream = sys.stderr
    return bool(stream is not None and hasattr(stream, "isatty") and stream.isatty())


def progress_bar(
    iterable: Iterable[Any] | None = None,
    *,
    total: float | None = None,
    desc: str | None = None,
    enabled: bool | None = None,
    unit: str = "it",
    delay: float = DEFAULT_DELAY_S,
) -> Any:
    """A :func:`tqdm.auto.tqdm` bar over ``iterable`` (or a manual one of size
    ``total``: call ``update``).

    ``enabled`` follows :func:`progress_enabled`; a disabled bar still iterates and
    accepts ``update`` and ``set_postfix`` (it just draws nothing), so loops never
    branch on it. ``desc`` labels the bar, ``unit`` names what ``total`` counts
    (``"it"``, ``"step"``, ``"s"``; a float ``total`` is shown with one decimal), and
    ``delay`` is the number of seconds before the bar is first drawn. The bar disappears
    when the loop ends (``leave=False``): a notebook keeps its printed results, not a
    finished bar.
    """
    if iterable is not None and not isinstance(iterable, Iterable):
        raise TypeError(
            f"iterable must be an iterable or None, got {describe(iterable)}"
        )
    if iterable is None and total is None:
        raise ValueError(
            "give an iterable or a total (the size of a bar updated by hand), "
            "got neither"
        )
    if total is not None:
        if isinstance(total, int) and not isinstance(total, bool):
            total = check_int("total", total, min_value=0)
        else:
            total = check_float("total", total, min_value=0.0)
    if desc is not None and not isinstance(desc, str):
        raise TypeError(f"desc must be a str or None, got {describe(desc)}")
    if not isinstance(unit, str) or not unit:
        raise TypeError(f"unit must be a non-empty str, got {describe(unit)}")
    delay = check_float("delay", delay, min_value=0.0)
    show = progress_enabled(enabled)
    from tqdm.auto import tqdm

    # a float total (seconds of a time budget) is shown with one decimal, without a rate
    fmt = None
    if isinstance(total, float):
        fmt = "{l_bar}{bar}| {n:.1f}/{total:.1f} %s " % unit
        fmt += "[{elapsed}<{remaining}{postfix}]"
    return tqdm(
        iterable,
        total=total,
        desc=desc,
        disable=not show,
        unit=unit,
        delay=delay,
        leave=False,
        bar_format=fmt,
    )
