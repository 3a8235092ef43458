"""Exercise checkers: run a student's function against the reference and say, in plain words, what is wrong.

Every exercise in the course's notebooks asks the student to write one function. The chapter's
``exercises.py`` wraps :func:`check_function` around the chapter's reference implementation::

    def check_kv_cache_bytes(fn):
        return report(check_function(fn, kv_cache_bytes, _cases, name="kv_cache_bytes", exact=True))

and the notebook calls ``check_kv_cache_bytes(kv_cache_bytes)`` after the student's cell.

What the checker does (it is meant to be strict: a lenient checker that passes a wrong answer is the
most common complaint about puzzle courses; one that crashes the notebook is the second):

* It runs the reference and the student's function on every :class:`Case` (fixed edge cases and random
  inputs), each on its **own deep copy** of the arguments, so a student who modifies an input in place
  cannot corrupt the expected answer. Modifying an input is itself reported as a failure, unless the
  reference modifies it too (an in-place exercise), in which case the modified input is compared.
* It compares the results recursively (numbers, bools, strings, NumPy arrays, torch tensors, and
  tuples / lists / dicts / dataclasses of those), naming the path of the first wrong part, e.g.
  ``output[1]['scale']``. A torch tensor is accepted where a NumPy array is expected and vice versa
  (both are compared on the CPU as NumPy arrays). Floats are compared with
  ``|got - expected| <= atol + rtol * |expected|`` (the rule of :func:`numpy.isclose`); **integers are
  counts and are always compared exactly**, and ``exact=True`` also demands the same kind of number
  (an ``int`` where an ``int`` is expected, an integer array where one is expected) and equal floats.
* It stops at the first failing case and reports which case (label and number), what the inputs were
  (arrays by shape and dtype) and what was wrong: wrong type, ``None``, wrong shape, wrong kind of
  number, NaN/inf, or the largest error and how many elements are off.
* An exception in the student's code is caught and reported with the line of the student's code where
  it happened; a placeholder that still raises ``NotImplementedError`` is reported as "not attempted".
  A student's function that runs longer than ``time_limit_s`` is stopped (``SIGALRM`` in the main
  thread on Unix, repeated until the code stops, with the student's frames traced so that an ``except:``
  that swallows the time-out raises it again on its next line; elsewhere it is judged after it returns);
  a function that returns, or raises something else, after the limit is reported as too slow all the same.
  (No in-process mechanism can stop every program: a loop that swallows the time-out in several nested
  ``try`` blocks of one function is stopped only when a repeated alarm lands outside the inner ones,
  usually within seconds.)
* A ``KeyboardInterrupt`` raised by the student's code is an error of that code, reported like any other;
  a real interrupt (Ctrl-C, Jupyter's stop button: a SIGINT, noticed by a handler installed for the call
  in the main thread) stops the checker, even when the student's code swallowed it.
* What the student's function prints (``sys.stdout``/``sys.stderr``) is captured: the report shows the
  first few lines and how many more were hidden, so a function printing millions of lines cannot flood
  the notebook. (Output written straight to the file descriptors, e.g. by C code, is not captured.)
* :func:`check_function` never raises because of anything the student does; it raises ``TypeError`` /
  ``ValueError`` only when the *checker* is called wrongly (a bug in the course).

:func:`report` prints the result and records it in :data:`RESULTS`; with the environment variable
``EFFX_CHECK_STRICT=1`` it also raises :class:`CheckerError` when the exercise failed or was not
attempted, so running the solution notebooks in CI fails the build when a solution is wrong.

Writing a checker for a new chapter
-----------------------------------
Imitate :mod:`effx_lab.flash.exercises` (one module per chapter, or one per notebook
in a package such as :mod:`effx_lab.quant.exercises`). Everything a chapter needs is
public here (``__all__``); a chapter module never imports a name starting with ``_``
from this module. For each exercise:

1. A reference: the library function itself, or a thin wrapper decorated with
   :func:`named`, so that the messages show the name the student uses::

       @named("glu")
       def _glu_reference(x, params):
           return R.glu(x, params)

2. A case generator ``_glu_cases(rng) -> list[Case]``: fixed edge cases with
   plain-words labels (``"kind: details"``) and seeded random draws
   (:func:`random_arrays`); float64 inputs, plus one float32 case.
3. Optionally a list of :class:`Mistake` (the classic wrong answers, a hint for each).
4. The public checker, registered with :func:`checker`, returning the reported result::

       @checker(reference=_glu_reference)
       def check_glu(student_fn: Any) -> CheckResult:
           return check_with_hints(
               student_fn, _glu_reference, _glu_cases, _GLU_MISTAKES, name="glu"
           )

   Without mistakes: ``report(check_function(student_fn, reference, cases, name=...))``.

Extension points, when the built-in comparison is not the right judge:

* ``prepare=`` of :func:`check_with_hints` / :class:`Diagnosis`: accept another form
  of the answer (a scale of shape ``[M, 1]`` for ``[M]``, an array for a list), as
  :mod:`effx_lab.quant.exercises.llm_int8` does.
* A subclass of :class:`Diagnosis` overriding :meth:`Diagnosis.close` (when two
  answers are the same mistake) or :meth:`Diagnosis.problem` (when an answer is
  right), passed to :func:`check_function` as ``reference_fn=diag.reference,
  compare=diag.compare``.
* :class:`ReferenceRecorder`: any ``compare(got, expected)`` hook that needs the
  case's arguments; :mod:`effx_lab.quant.exercises.fine_grained` judges a
  permutation by the groups it makes.
* :func:`as_numpy` / :func:`is_tensor` read a NumPy or torch answer alike;
  :func:`time_limit` caps the time limit of the checks run inside a ``with`` block.

Every checker registered with :func:`checker` is listed in :data:`CHECKERS`.
``tests/core/test_checkers_survive_bad_code.py`` finds every ``check_*`` of every
``effx_lab.<chapter>.exercises`` module, fails if one is not registered, and feeds
each the bad code students write (a crash, ``None``, a wrong type, shape or dtype, a
wrong signature, a modified input, an endless loop, a flood of prints, NaN): each must
come back as a failed result that names the problem. Each checker also has its own
test with the chapter's known-wrong answers.
"""
from __future__ import annotations

import contextlib
import contextvars
import copy
import dataclasses
import functools
import inspect
import io
import numbers
import os
import signal
import sys
import sysconfig
import threading
import time
import traceback
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from ._text import fit
from ._validate import check_bool, check_float, check_int, describe

__all__ = [
    "CHECKERS",
    "Case",
    "CheckResult",
    "CheckerError",
    "Diagnosis",
    "Mistake",
    "RESULTS",
    "ReferenceRecorder",
    "RegisteredChecker",
    "STRICT_ENV_VAR",
    "adopt",
    "as_numpy",
    "check_function",
    "check_value",
    "check_with_hints",
    "checker",
    "is_tensor",
    "named",
    "random_arrays",
    "report",
    "summary",
    "time_limit",
]

#: Name of the environment variable that turns on strict mode in :func:`report`.
STRICT_ENV_VAR = "EFFX_CHECK_STRICT"

#: Every result passed to :func:`report` in this process, in order.
RESULTS: list["CheckResult"] = []

#: The cap set by :func:`time_limit` on every check's time limit (None: no cap).
_TIME_LIMIT_CAP: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "effx_check_time_cap", default=None
)

_NOT_ATTEMPTED_HINT = "replace the placeholder in the exercise cell with your code"
_MAX_TEXT = 300


class CheckerError(AssertionError):
    """Raised by :func:`report` in strict mode when an exercise failed or was not attempted."""

    def __init__(self, message: str, result: "CheckResult | None" = None) -> None:
        super().__init__(message)
        self.result = result


# --------------------------------------------------------------------------------------------------
# Public data types
# --------------------------------------------------------------------------------------------------


@dataclass
class Case:
    """One input to an exercise: a plain-words ``label`` and the arguments to call the function with.

    ``label`` appears in the report, so write what makes the case special, e.g.
    ``"odd sizes: batch=3, seq=7"`` or ``"extreme values (1e30)"``. A label of the form
    ``"kind: details"`` is summarised by its ``kind`` in the "passed all N cases (...)" line.
    """

    label: str
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.label, str) or not self.label.strip():
            raise TypeError(f"Case label must be a non-empty str, got {describe(self.label)}")
        if isinstance(self.args, list):
            self.args = tuple(self.args)
        if not isinstance(self.args, tuple):
            raise TypeError(
                f"Case args must be a tuple of positional arguments, e.g. args=(x,) (note the comma), "
                f"got {describe(self.args)} for case {self.label!r}"
            )
        if not isinstance(self.kwargs, dict) or not all(isinstance(k, str) for k in self.kwargs):
            raise TypeError(
                f"Case kwargs must be a dict with str keys, got {describe(self.kwargs)} for case {self.label!r}"
            )


@dataclass
class CheckResult:
    """Outcome of one exercise check. ``bool(result)`` is ``result.passed``; ``str(result)`` the report."""

    name: str
    passed: bool
    attempted: bool
    n_cases: int
    n_passed: int
    message: str
    failed_case: str | None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise TypeError(f"CheckResult name must be a non-empty str, got {describe(self.name)}")
        self.passed = check_bool("passed", self.passed)
        self.attempted = check_bool("attempted", self.attempted)
        self.n_cases = check_int("n_cases", self.n_cases, min_value=0)
        self.n_passed = check_int("n_passed", self.n_passed, min_value=0, max_value=self.n_cases)
        if not isinstance(self.message, str):
            raise TypeError(f"CheckResult message must be a str, got {describe(self.message)}")
        if self.failed_case is not None and not isinstance(self.failed_case, str):
            raise TypeError(f"CheckResult failed_case must be a str or None, got {describe(self.failed_case)}")

    def __bool__(self) -> bool:
        return self.passed

    def __str__(self) -> str:
        return self.message

    def _repr_markdown_(self) -> str:
        first, *rest = self.message.splitlines() or [""]
        text = _md_escape(first)
        if rest:
            body = "\n".join(line[3:] if line.startswith("   ") else line for line in rest)
            longest = max((len(run) for run in _backtick_runs(body)), default=0)
            fence = "`" * max(3, longest + 1)
            text += f"\n\n{fence}text\n{body}\n{fence}\n"
        return text

    def _ipython_display_(self) -> None:
        # report() already printed this result: showing it again as the cell's value would duplicate it
        # (``report(...)`` is usually the last line of a checker cell).
        if getattr(self, "_reported", False):
            return
        from IPython.display import display

        display({"text/markdown": self._repr_markdown_(), "text/plain": self.message}, raw=True)


# --------------------------------------------------------------------------------------------------
# Helpers to build cases
# --------------------------------------------------------------------------------------------------


def random_arrays(
    rng: np.random.Generator,
    shape: int | tuple[int, ...],
    dtype: Any = "float32",
    low: float = -1,
    high: float = 1,
) -> np.ndarray:
    """A random array for a checker case: uniform in ``[low, high)`` for floats, ``[low, high]`` for ints.

    Bool arrays are fair coin flips (``low``/``high`` ignored). Use it inside a case generator::

        def _cases(rng):
            return [Case(f"odd sizes: {s}", (random_arrays(rng, s),)) for s in [(3, 7), (1, 5)]]
    """
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator (np.random.default_rng(seed)), got {describe(rng)}")
    if isinstance(shape, numbers.Integral) and not isinstance(shape, (bool, np.bool_)):
        shape = (int(shape),)
    if not isinstance(shape, (tuple, list)):
        raise TypeError(f"shape must be a tuple of ints, got {describe(shape)}")
    shape = tuple(check_int(f"shape[{i}]", s, min_value=0) for i, s in enumerate(shape))
    try:
        dt = np.dtype(dtype)
    except TypeError as exc:
        raise TypeError(f"dtype must be a NumPy dtype or its name, got {describe(dtype)}") from exc
    if dt.kind not in "biuf":
        raise ValueError(f"dtype must be a bool, integer or float dtype, got {dt}")
    low = check_float("low", low)
    high = check_float("high", high)
    if dt.kind == "b":
        return rng.random(shape) < 0.5
    if not low < high:
        raise ValueError(f"low must be < high, got low={low}, high={high}")
    if dt.kind in "iu":
        lo, hi = int(np.ceil(low)), int(np.floor(high))
        info = np.iinfo(dt)
        if lo > hi or lo < info.min or hi > info.max:
            raise ValueError(f"[low, high] = [{low}, {high}] holds no integer representable as {dt}")
        return rng.integers(lo, hi, size=shape, endpoint=True).astype(dt)
    return rng.uniform(low, high, size=shape).astype(dt)


# --------------------------------------------------------------------------------------------------
# Describing values in plain words
# --------------------------------------------------------------------------------------------------


def _torch_tensor_type() -> type | None:
    torch = sys.modules.get("torch")  # no object can be a tensor unless torch is already imported
    return getattr(torch, "Tensor", None) if torch is not None else None


def is_tensor(value: Any) -> bool:
    """Whether ``value`` is a torch tensor (False without importing torch)."""
    tensor_type = _torch_tensor_type()
    return tensor_type is not None and isinstance(value, tensor_type)


def _tensor_to_numpy(t: Any) -> np.ndarray:
    """A CPU NumPy copy of a torch tensor (detached; dense; bf16/fp8 widened to float32)."""
    t = t.detach()
    if getattr(t, "layout", None) is not None and str(t.layout) != "torch.strided":
        t = t.to_dense()
    t = t.cpu().resolve_conj().resolve_neg()
    try:
        return t.numpy()
    except (TypeError, RuntimeError):
        if t.is_floating_point():
            return t.float().numpy()
        if t.is_complex():
            return t.to(dtype=sys.modules["torch"].complex64).numpy()
        return t.long().numpy()


def as_numpy(value: Any) -> np.ndarray:
    """``value`` as a NumPy array.

    A torch tensor is copied to the CPU (detached, dense, bfloat16 and float8 widened to
    float32); anything else goes through :func:`numpy.asarray`.
    """
    return _tensor_to_numpy(value) if is_tensor(value) else np.asarray(value)


def _dtype_name(value: Any) -> str:
    return str(value.dtype).replace("torch.", "")


def _what(value: Any) -> str:
    """'a list', 'a NumPy array', 'an int', 'None' ... for type-mismatch messages."""
    if value is None:
        return "None"
    if isinstance(value, np.ndarray):
        return "a NumPy array"
    if is_tensor(value):
        return "a torch tensor"
    if isinstance(value, (bool, np.bool_)):
        return "a bool"
    if isinstance(value, np.generic):
        return f"a NumPy {value.dtype} scalar"
    if isinstance(value, numbers.Integral):
        return "an int"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, numbers.Real):
        return f"a {type(value).__name__}"
    if isinstance(value, complex):
        return "a complex number"
    names = {list: "a list", tuple: "a tuple", dict: "a dict", str: "a str", set: "a set", bytes: "bytes"}
    for kind, text in names.items():
        if isinstance(value, kind):
            return text
    if inspect.isgenerator(value):
        return "a generator (did you use `yield` instead of `return`?)"
    if callable(value):
        return f"a function ({getattr(value, '__name__', type(value).__name__)}) instead of its result"
    name = type(value).__name__
    return f"an {name}" if name[:1].lower() in "aeiou" else f"a {name}"


def _short(value: Any, limit: int = 60) -> str:
    try:
        text = repr(value)
    except Exception:  # a student object whose __repr__ raises
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _describe_input(value: Any) -> str:
    """Arrays as 'array of shape (2, 7) float32', scalars as their value, containers briefly."""
    if isinstance(value, np.ndarray):
        return f"array of shape {tuple(value.shape)} {value.dtype}"
    if is_tensor(value):
        return f"tensor of shape {tuple(value.shape)} {_dtype_name(value)} on {value.device}"
    if isinstance(value, (list, tuple)):
        text = _short(value)
        if len(text) <= 60 and "..." not in text:
            return text
        return f"{type(value).__name__} of {len(value)} items"
    if isinstance(value, dict):
        return f"dict with keys {_short(list(value.keys()), 50)}"
    return _short(value)


def _fmt(value: Any) -> str:
    """A number as the student would write it: '1.5', '1e+30', 'nan', '7'."""
    if isinstance(value, (np.generic, float, int, complex)):
        return str(value)
    return _short(value)


def _fmt_index(index: tuple[int, ...]) -> str:
    if len(index) == 1:
        return str(index[0])
    return "(" + ", ".join(str(i) for i in index) + ")"


def _md_escape(text: str) -> str:
    return "".join("\\" + ch if ch in "\\`*_[]<>#|" else ch for ch in text)


def _backtick_runs(text: str) -> list[str]:
    runs, current = [], ""
    for ch in text:
        if ch == "`":
            current += ch
        elif current:
            runs.append(current)
            current = ""
    if current:
        runs.append(current)
    return runs


def _n_of(n: int, total: int, singular: str, plural: str) -> str:
    """'7 of 120 elements are off' / '1 of 120 elements is off'."""
    return f"{n} of {total} elements {singular if n == 1 else plural}"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


# --------------------------------------------------------------------------------------------------
# Comparing an answer with the expected one
# --------------------------------------------------------------------------------------------------

_KIND_WORDS = {"b": "booleans (True/False)", "i": "integers", "u": "integers", "f": "floats", "c": "complex numbers"}


@dataclass
class _Comparer:
    """Recursive comparison producing a plain-words message, or None when the answer is right.

    ``reveal=False`` (used by :func:`check_value`) never prints the expected value, only where and
    in which direction the answer is off, so the message does not give the answer away.
    """

    rtol: float
    atol: float
    exact: bool
    root: str = "output"
    verb: str = "you returned"
    none_message: str = "your function returned None — did you forget `return`?"
    reveal: bool = True

    def __call__(self, got: Any, expected: Any, path: str | None = None) -> str | None:
        path = self.root if path is None else path
        at = "" if path == self.root else f"at {path}: "
        if expected is None:
            return None if got is None else f"{at}{self.verb} {_what(got)}, expected None"
        if got is None:
            return self.none_message if path == self.root else f"{at}{self.verb} None, expected {_what(expected)}"
        if isinstance(expected, np.ndarray) or is_tensor(expected):
            return self._array(got, expected, at)
        if isinstance(expected, (bool, np.bool_)):
            return self._bool(got, expected, at)
        if isinstance(expected, numbers.Number):
            return self._number(got, expected, at)
        if isinstance(expected, (str, bytes)):
            if type(got) is not type(expected):
                return f"{at}{self.verb} {_what(got)}, expected {_what(expected)}"
            if got != expected:
                want = f", expected {_short(expected)}" if self.reveal else " — not the expected text"
                return f"{at}{self.verb} {_short(got)}{want}"
            return None
        if isinstance(expected, Mapping):
            return self._mapping(got, expected, path, at)
        if isinstance(expected, (list, tuple)):
            return self._sequence(got, expected, path, at)
        if dataclasses.is_dataclass(expected) and not isinstance(expected, type):
            if type(got) is not type(expected):
                return f"{at}{self.verb} {_what(got)}, expected a {type(expected).__name__}"
            for f in dataclasses.fields(expected):
                problem = self(getattr(got, f.name), getattr(expected, f.name), f"{path}.{f.name}")
                if problem:
                    return problem
            return None
        if type(got) is not type(expected):
            return f"{at}{self.verb} {_what(got)}, expected {_what(expected)}"
        equal = got == expected
        if not isinstance(equal, (bool, np.bool_)):
            raise TypeError(
                f"the checker cannot compare values of type {type(expected).__name__}; "
                f"pass compare=... to check_function"
            )
        if not equal:
            want = f", expected {_short(expected)}" if self.reveal else " — not the expected value"
            return f"{at}{self.verb} {_short(got)}{want}"
        return None

    # -- containers ------------------------------------------------------------------------------

    def _sequence(self, got: Any, expected: list | tuple, path: str, at: str) -> str | None:
        kind = "a tuple" if isinstance(expected, tuple) else "a list"
        if not isinstance(got, (list, tuple)):
            return f"{at}{self.verb} {_what(got)}, expected {kind} of {_plural(len(expected), 'item')}"
        if self.exact and isinstance(got, tuple) != isinstance(expected, tuple):
            return f"{at}{self.verb} {_what(got)}, expected {kind}"
        if len(got) != len(expected):
            return (
                f"{at}{self.verb} {_what(got)} of {_plural(len(got), 'item')}, "
                f"expected {kind} of {_plural(len(expected), 'item')}"
            )
        for i, (g, e) in enumerate(zip(got, expected)):
            problem = self(g, e, f"{path}[{i}]")
            if problem:
                return problem
        return None

    def _mapping(self, got: Any, expected: Mapping, path: str, at: str) -> str | None:
        if not isinstance(got, Mapping):
            return f"{at}{self.verb} {_what(got)}, expected a dict with keys {_short(list(expected), 50)}"
        missing = [k for k in expected if k not in got]
        if missing:
            keys = _short(list(expected), 50)
            return f"{at}{self.verb} a dict without the key {missing[0]!r} (expected keys: {keys})"
        extra = [k for k in got if k not in expected]
        if extra:
            keys = _short(list(expected), 50)
            return f"{at}{self.verb} a dict with an unexpected key {extra[0]!r} (expected keys: {keys})"
        for key in expected:
            problem = self(got[key], expected[key], f"{path}[{key!r}]")
            if problem:
                return problem
        return None

    # -- scalars ---------------------------------------------------------------------------------

    def _bool(self, got: Any, expected: Any, at: str) -> str | None:
        if isinstance(got, np.ndarray) or is_tensor(got):
            arr = as_numpy(got)
            if self.exact or arr.ndim != 0:
                return f"{at}{self.verb} {_what(got)} of shape {tuple(arr.shape)}, expected a bool (True or False)"
            got = arr[()]
        if not isinstance(got, (bool, np.bool_)):
            return f"{at}{self.verb} {_fmt(got)} ({_what(got)}), expected a bool (True or False)"
        if bool(got) != bool(expected):
            want = f", expected {bool(expected)}" if self.reveal else ", which is not right"
            return f"{at}{self.verb} {bool(got)}{want}"
        return None

    def _number(self, got: Any, expected: Any, at: str) -> str | None:
        exp_int = isinstance(expected, numbers.Integral)
        if exp_int:
            want_kind = "an integer (int)"
        elif isinstance(expected, numbers.Real):
            want_kind = "a number (float)"
        else:
            want_kind = "a complex number"
        if isinstance(got, np.ndarray) or is_tensor(got):
            arr = as_numpy(got)
            if self.exact or arr.ndim != 0:
                shape = f" of shape {tuple(arr.shape)}" if arr.ndim else ""
                return (
                    f"{at}{self.verb} {_what(got)}{shape}, expected {want_kind} — "
                    f"use .item() to get a plain Python number"
                )
            got = arr[()]
        if isinstance(got, (bool, np.bool_)):
            return f"{at}{self.verb} {got} (a bool), expected {want_kind}"
        if not isinstance(got, numbers.Number):
            return f"{at}{self.verb} {_what(got)}, expected {want_kind}"
        if isinstance(expected, numbers.Real) and not isinstance(got, numbers.Real):
            return f"{at}{self.verb} {_fmt(got)} (a complex number), expected {want_kind}"

        if exp_int:
            if not isinstance(got, numbers.Integral):
                g = complex(got).real
                if not np.isfinite(g):
                    return f"{at}{self.verb} {_fmt(got)}, expected {want_kind}"
                if self.exact:
                    return (
                        f"{at}{self.verb} {_fmt(got)} ({_what(got)}), expected {want_kind} — use integer "
                        f"arithmetic (//, int(...), math.ceil) so the result is an int"
                    )
                if not float(g).is_integer():
                    return f"{at}{self.verb} {_fmt(got)}, expected a whole number (an int)"
                got_int = int(g)
            else:
                got_int = int(got)
            diff = got_int - int(expected)
            if diff == 0:
                return None
            if self.reveal:
                hint = f" (off by {abs(diff)})" if abs(diff) <= 2 else ""
                return f"{at}{self.verb} {got_int}, expected {int(expected)}{hint}"
            return f"{at}{self.verb} {got_int}, which is not right (too {'high' if diff > 0 else 'low'})"

        if self.exact and isinstance(got, numbers.Integral) and not isinstance(expected, numbers.Integral):
            return f"{at}{self.verb} {_fmt(got)} ({_what(got)}), expected {want_kind}"
        g, e = complex(got), complex(expected)
        g_finite, e_finite = np.isfinite(g), np.isfinite(e)
        if e_finite and not g_finite:
            want = f"expected {_fmt(expected)}" if self.reveal else "expected a finite number"
            return f"{at}{self.verb} {_fmt(got)}, {want} — an overflow, a division by zero or a log of 0?"
        if not e_finite:
            same = (np.isnan(g) and np.isnan(e)) or g == e
            if not same:
                return f"{at}{self.verb} {_fmt(got)}, expected {_fmt(expected)}"
            return None
        if self.exact:
            if g == e:
                return None
            if self.reveal:
                return f"{at}{self.verb} {_fmt(got)}, expected exactly {_fmt(expected)}"
            return f"{at}{self.verb} {_fmt(got)}, which is not exactly right"
        err = abs(g - e)
        tol = self.atol + self.rtol * abs(e)
        if err <= tol:
            return None
        if self.reveal:
            return (
                f"{at}{self.verb} {_fmt(got)}, expected {_fmt(expected)} (absolute error {err:.3g}; "
                f"tolerance: atol + rtol·|expected| = {tol:.3g})"
            )
        direction = "too high" if g.real > e.real else "too low"
        return f"{at}{self.verb} {_fmt(got)}, which is not right ({direction})"

    # -- arrays ----------------------------------------------------------------------------------

    def _array(self, got: Any, expected: Any, at: str) -> str | None:
        e = as_numpy(expected)
        exp_what = "a torch tensor" if is_tensor(expected) else "a NumPy array"
        if isinstance(got, np.ndarray) or is_tensor(got):
            g = as_numpy(got)
        elif e.ndim == 0 and not self.exact and isinstance(got, (numbers.Number, np.bool_)):
            g = np.asarray(got)
        else:
            return f"{at}{self.verb} {_what(got)}, expected {exp_what} of shape {tuple(e.shape)} {e.dtype}"
        if g.dtype.kind not in "biufc":
            return (
                f"{at}{self.verb} an array of dtype {g.dtype}, expected numbers ({e.dtype}) — "
                f"did you build it from a list of arrays, or of mixed types?"
            )
        if g.shape != e.shape:
            return f"{at}{self.verb} shape {tuple(g.shape)}, expected {tuple(e.shape)}{_shape_hint(g.shape, e.shape)}"
        ek, gk = e.dtype.kind, g.dtype.kind
        if ek == "b" and gk != "b":
            return f"{at}{self.verb} {_KIND_WORDS[gk]} ({g.dtype}), expected {_KIND_WORDS['b']} ({e.dtype})"
        if gk == "c" and ek != "c":
            return f"{at}{self.verb} complex numbers ({g.dtype}), expected {_KIND_WORDS[ek]} ({e.dtype})"
        if self.exact and _kind_group(gk) != _kind_group(ek):
            return f"{at}{self.verb} {_KIND_WORDS[gk]} ({g.dtype}), expected {_KIND_WORDS[ek]} ({e.dtype})"
        if e.size == 0:
            return None
        if ek in "iu" and gk in "fc":
            gr = g.real
            whole = np.isfinite(gr) & (gr == np.round(gr)) & (g.imag == 0 if gk == "c" else True)
            if not whole.all():
                idx = _first(~whole)
                return (
                    f"{at}{self.verb} {_fmt(g[idx])} at index {_fmt_index(idx)}, expected whole numbers "
                    f"({e.dtype}); {_n_of(int((~whole).sum()), e.size, 'is not an integer', 'are not integers')}"
                )
            g = gr.astype(np.float64)
            # whole floats compare exactly with the expected integers (below, via the exact branch)
            return self._mismatch(g, e, at, exact=True)
        if ek in "biu" and gk in "biu":
            return self._mismatch(g, e, at, exact=True)
        return self._close(g, e, at)

    def _mismatch(self, g: np.ndarray, e: np.ndarray, at: str, exact: bool) -> str | None:
        with np.errstate(invalid="ignore"):
            if e.dtype.kind in "fc" or g.dtype.kind in "fc":
                same = (g == e) | (np.isnan(g) & np.isnan(e))
            else:
                same = g == e
        bad = ~np.asarray(same, dtype=bool)
        if not bad.any():
            return None
        idx = _first(bad)
        n_bad = int(bad.sum())
        if self.reveal:
            return (
                f"{at}{_n_of(n_bad, e.size, 'differs', 'differ')}; the first at index {_fmt_index(idx)}: "
                f"{self.verb} {_fmt(g[idx])}, expected {_fmt(e[idx])}"
            )
        return (
            f"{at}{_n_of(n_bad, e.size, 'is wrong', 'are wrong')}; the first at index {_fmt_index(idx)}, "
            f"where {self.verb} {_fmt(g[idx])}"
        )

    def _close(self, g: np.ndarray, e: np.ndarray, at: str) -> str | None:
        complex_ = "c" in (g.dtype.kind, e.dtype.kind)
        wide = np.complex128 if complex_ else np.float64
        g64, e64 = g.astype(wide), e.astype(wide)
        g_fin, e_fin = np.isfinite(g64), np.isfinite(e64)
        nonfinite = e_fin & ~g_fin
        if nonfinite.any():
            idx = _first(nonfinite)
            want = f"where the expected value is {_fmt(e[idx])}" if self.reveal else "where a finite number is expected"
            return (
                f"{at}{self.verb} {_fmt(g[idx])} at index {_fmt_index(idx)} {want} "
                f"({_n_of(int(nonfinite.sum()), e.size, 'is NaN or inf', 'are NaN or inf')}) — an overflow, "
                f"a division by zero or a log of 0?"
            )
        with np.errstate(invalid="ignore"):
            special = ~e_fin & ~((np.isnan(e64) & np.isnan(g64)) | (e64 == g64))
        if special.any():
            idx = _first(special)
            return f"{at}at index {_fmt_index(idx)} {self.verb} {_fmt(g[idx])}, expected {_fmt(e[idx])}"
        if self.exact:
            return self._mismatch(g, e, at, exact=True)
        with np.errstate(over="ignore", invalid="ignore"):
            err = np.abs(g64 - e64)
            tol = self.atol + self.rtol * np.abs(e64)
            off = e_fin & (err > tol)
        if not off.any():
            return None
        n_off = int(off.sum())
        idx = tuple(int(i) for i in np.unravel_index(int(np.argmax(np.where(off, err, -1.0))), e.shape))
        if self.reveal:
            return (
                f"{at}largest absolute error {float(err[idx]):.3g} at index {_fmt_index(idx)}: {self.verb} "
                f"{_fmt(g[idx])}, expected {_fmt(e[idx])} (tolerance: atol + rtol·|expected| = "
                f"{float(tol[idx]):.3g}); {_n_of(n_off, e.size, 'is off', 'are off')}"
            )
        direction = "too high" if g64[idx].real > e64[idx].real else "too low"
        return (
            f"{at}{_n_of(n_off, e.size, 'is off', 'are off')}; the largest error is at index "
            f"{_fmt_index(idx)}, where {self.verb} {_fmt(g[idx])} ({direction})"
        )


def _kind_group(kind: str) -> str:
    return "i" if kind in "iu" else kind


def _first(mask: np.ndarray) -> tuple[int, ...]:
    return tuple(int(i) for i in np.argwhere(mask)[0]) if mask.ndim else ()


def _shape_hint(got: tuple[int, ...], expected: tuple[int, ...]) -> str:
    if len(got) == len(expected) >= 2 and tuple(got) == tuple(reversed(expected)):
        return " (the expected shape transposed: did you swap axes or return the transpose?)"
    if len(got) == len(expected):
        diffs = [(i, g, e) for i, (g, e) in enumerate(zip(got, expected)) if g != e]
        if len(diffs) == 1 and abs(diffs[0][1] - diffs[0][2]) == 1:
            i, g, e = diffs[0]
            return f" (dimension {i} is {g} instead of {e}: off by one?)"
        return ""
    if int(np.prod(got)) == int(np.prod(expected)):
        return " (same number of elements arranged differently: a reshape or keepdims problem?)"
    if len(got) == len(expected) - 1:
        return " (one dimension fewer: did you reduce over an axis that should stay, or forget keepdims=True?)"
    if len(got) == len(expected) + 1:
        return " (one dimension more: did you forget to reduce over an axis?)"
    return ""


# --------------------------------------------------------------------------------------------------
# Input mutation
# --------------------------------------------------------------------------------------------------


def _unchanged(before: Any, after: Any) -> bool:
    """True unless ``after`` (a copy of ``before`` handed to a function) was visibly modified.

    Only types whose contents we understand are inspected; anything else counts as unchanged.
    """
    try:
        if isinstance(before, np.ndarray) or is_tensor(before):
            if not (isinstance(after, np.ndarray) or is_tensor(after)):
                return False
            b, a = as_numpy(before), as_numpy(after)
            if b.shape != a.shape or b.dtype != a.dtype:
                return False
            return bool(np.array_equal(b, a, equal_nan=b.dtype.kind in "fc"))
        if isinstance(before, (list, tuple)):
            return (
                type(after) is type(before)
                and len(after) == len(before)
                and all(_unchanged(b, a) for b, a in zip(before, after))
            )
        if isinstance(before, dict):
            return (
                isinstance(after, dict)
                and list(after) == list(before)
                and all(_unchanged(before[k], after[k]) for k in before)
            )
        if isinstance(before, (set, bytearray)):
            return bool(before == after)
        return True
    except Exception:
        return True


# --------------------------------------------------------------------------------------------------
# Running the student's function
# --------------------------------------------------------------------------------------------------


class _TimeLimitExceeded(BaseException):
    """Raised inside the student's code by the SIGALRM handler (BaseException: `except Exception` misses it)."""


#: After the time limit, the alarm fires again every this many seconds until the student's code has stopped.
_RETRY_S = 0.02
#: Attribute set on a KeyboardInterrupt that came from the user (Ctrl-C, Jupyter's stop button).
_USER_INTERRUPT = "_effx_user_interrupt"


class _Output:
    """A bounded stand-in for ``sys.stdout``/``sys.stderr`` while the student's code runs.

    Keeps the first ``max_lines`` lines (each cut to ``max_chars`` characters) and counts the rest, so a
    function that prints millions of lines neither floods the notebook nor fills the memory.
    """

    encoding = "utf-8"
    errors = "replace"

    def __init__(self, max_lines: int = 6, max_chars: int = 200) -> None:
        self.max_lines, self.max_chars = max_lines, max_chars
        self.kept: list[str] = []
        self.n_finished = 0  # lines ended by a newline
        self._current = ""  # start of the line being written (cut to max_chars)
        self._current_len = 0  # its full length
        self._pending = False  # text written since the last newline

    def _add(self, text: str) -> None:
        if text:
            self._pending = True
            self._current_len += len(text)
            room = self.max_chars - len(self._current)
            if room > 0:
                self._current += text[:room]

    def _newline(self) -> None:
        self.n_finished += 1
        if len(self.kept) < self.max_lines:
            self.kept.append(self._current + (" …" if self._current_len > self.max_chars else ""))
        self._current, self._current_len, self._pending = "", 0, False

    def write(self, text: Any) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        at = 0
        while len(self.kept) < self.max_lines:
            j = text.find("\n", at)
            if j < 0:
                self._add(text[at:])
                return len(text)
            self._add(text[at:j])
            self._newline()
            at = j + 1
        rest = text[at:]  # nothing more is kept: only count the lines
        newlines = rest.count("\n")
        if newlines:
            self.n_finished += newlines
            self._pending = not rest.endswith("\n")
        elif rest:
            self._pending = True
        return len(text)

    def writelines(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        raise io.UnsupportedOperation("the checker captures your function's output: it has no file descriptor")

    def writable(self) -> bool:
        return True

    def readable(self) -> bool:
        return False

    @property
    def n_lines(self) -> int:
        return self.n_finished + (1 if self._pending else 0)

    def excerpt(self) -> list[str]:
        """Lines for a report: how much was printed, the first lines, and how many more were hidden."""
        total = self.n_lines
        if total == 0:
            return []
        shown = list(self.kept)
        if self._pending and len(shown) < self.max_lines:
            shown.append(self._current + (" …" if self._current_len > self.max_chars else ""))
        hidden = total - len(shown)
        head = f"   your function printed {total:,} {'line' if total == 1 else 'lines'} while it was checked"
        lines = [head + (f"; the first {len(shown)}:" if hidden else ":")]
        lines += [f"   | {line}" for line in shown]
        if hidden:
            lines.append(f"   | ({hidden:,} more {'line' if hidden == 1 else 'lines'} hidden)")
        return lines


@dataclass
class _CallState:
    armed: bool = True
    fired: int = 0  # alarms delivered after the time limit
    user_interrupt: bool = False  # a SIGINT (Ctrl-C, Jupyter's stop button) arrived during the call
    home: Any = None  # the frame of _call_with_limit: the student's frames are the ones above it


def _stop_student_code(frame: Any, state: _CallState) -> None:
    """Trace the student's frames so that the next line they run raises the time-out again: the body of an
    ``except:`` that swallowed it is such a line, so the time-out leaves that ``try``. CPython removes a trace
    function that raises, so every repeated alarm installs it again. The checker's own frames are never traced.
    """

    def tracer(fr: Any, event: str, arg: Any) -> Any:
        if os.path.abspath(fr.f_code.co_filename) == _THIS_FILE:
            return None
        if event in ("call", "line") and state.armed:
            raise _TimeLimitExceeded()
        return tracer

    f = frame
    while f is not None and f is not state.home:
        if os.path.abspath(f.f_code.co_filename) != _THIS_FILE:
            f.f_trace = tracer
        f = f.f_back
    sys.settrace(tracer)


def _call_with_limit(
    fn: Callable, args: tuple, kwargs: dict, limit: float, output: _Output | None = None
) -> tuple[Any, float]:
    """Call the student's ``fn`` and stay in control of the notebook whatever it does.

    * Time limit (main thread on Unix): SIGALRM raises :class:`_TimeLimitExceeded` in the student's code
      after ``limit`` seconds, then again every :data:`_RETRY_S` seconds, each time also tracing the student's
      frames so that the next line they run raises it again: an ``except:`` that swallows it does not keep
      the code running. If the code still returns, or raises something else, after the limit it is reported
      as too slow all the same. Elsewhere the call is timed and judged after it returns.
    * Interrupts: a ``KeyboardInterrupt`` that the student's code raises itself is an error of that code; one
      that follows a real SIGINT (Ctrl-C, Jupyter's stop button: they are told apart by a SIGINT handler
      installed for the call, main thread only) stops the checker, even when the student's code swallowed
      it. Outside the main thread no SIGINT can arrive, so every KeyboardInterrupt is the code's.
    * ``sys.stdout`` and ``sys.stderr`` go to ``output`` (bounded) during the call.
    """
    in_main = threading.current_thread() is threading.main_thread()
    use_alarm = in_main and hasattr(signal, "setitimer")
    state = _CallState(home=sys._getframe())
    previous_trace = sys.gettrace()
    previous_int: Any = None
    previous_alarm: Any = None
    previous_delay = previous_interval = 0.0

    def on_sigint(signum: int, frame: Any) -> None:
        state.user_interrupt = True
        if not state.armed:  # the checker is cleaning up: it raises KeyboardInterrupt once it is done
            return None
        if callable(previous_int) and previous_int is not on_sigint:
            return previous_int(signum, frame)
        if previous_int == signal.SIG_IGN:
            return None
        raise KeyboardInterrupt

    def on_alarm(signum: int, frame: Any) -> None:
        if not state.armed:
            return
        state.fired += 1
        _stop_student_code(frame, state)
        raise _TimeLimitExceeded()

    if in_main:
        previous_int = signal.signal(signal.SIGINT, on_sigint)
    if use_alarm:
        previous_alarm = signal.signal(signal.SIGALRM, on_alarm)
        previous_delay, previous_interval = signal.setitimer(signal.ITIMER_REAL, limit, _RETRY_S)
    saved_streams = sys.stdout, sys.stderr
    if output is not None:
        sys.stdout = sys.stderr = output
    start = time.perf_counter()
    error: BaseException | None = None
    try:
        out = fn(*args, **kwargs)
    except BaseException as exc:  # noqa: B036 - sorted out below, once the handlers are restored
        error = exc
    finally:
        # no calls before `armed` is False: a signal is handled only at a call or a backward jump
        sys.stdout, sys.stderr = saved_streams
        state.armed = False
        elapsed = time.perf_counter() - start
        if use_alarm:
            signal.setitimer(signal.ITIMER_REAL, 0)
        if state.fired:
            sys.settrace(previous_trace)
        if use_alarm:
            signal.signal(signal.SIGALRM, previous_alarm if previous_alarm is not None else signal.SIG_DFL)
            if previous_delay > 0:  # someone else's timer was running: give it back what is left of it
                remaining = max(previous_delay - elapsed, 1e-3)
                signal.setitimer(signal.ITIMER_REAL, remaining, previous_interval)
        if in_main:
            signal.signal(signal.SIGINT, previous_int if previous_int is not None else signal.default_int_handler)
    if state.user_interrupt:  # the user asked to stop: stop, whatever the student's code made of it
        interrupt = error if isinstance(error, KeyboardInterrupt) else KeyboardInterrupt()
        setattr(interrupt, _USER_INTERRUPT, True)
        raise interrupt
    if state.fired:
        raise _TimeLimitExceeded() from (None if isinstance(error, _TimeLimitExceeded) else error)
    if error is not None:
        raise error
    return out, elapsed


def _is_user_interrupt(exc: BaseException) -> bool:
    return isinstance(exc, KeyboardInterrupt) and getattr(exc, _USER_INTERRUPT, False)


def _library_dirs() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    dirs = {os.path.dirname(os.path.abspath(__file__))}
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        if paths.get(key):
            dirs.add(os.path.abspath(paths[key]))
    for prefix in {sys.prefix, sys.base_prefix, sys.exec_prefix}:
        dirs.add(os.path.join(os.path.abspath(prefix), "lib"))
    return tuple(sorted(dirs))


_LIBRARY_DIRS = _library_dirs()
_THIS_FILE = os.path.abspath(__file__)


def _is_library_file(filename: str) -> bool:
    if filename.startswith("<frozen") or filename.startswith("<built-in"):
        return True
    path = os.path.abspath(filename)
    return any(path == d or path.startswith(d + os.sep) for d in _LIBRARY_DIRS)


def _student_frames(exc: BaseException) -> list[traceback.FrameSummary]:
    return [f for f in traceback.extract_tb(exc.__traceback__) if not _is_library_file(f.filename)]


def _where_in_student_code(exc: BaseException) -> str | None:
    frames = _student_frames(exc)
    if not frames:
        return None
    frame = frames[-1]
    fname = frame.filename
    if "ipykernel" in fname or fname.startswith("<ipython-input") or fname.startswith("<cell"):
        place = "your notebook cell"
    else:
        place = os.path.basename(fname)
    code = (frame.line or "").strip()
    code = f": {code}" if code else ""
    return f"at line {frame.lineno} of {place}, in {frame.name}{code}"


def _exception_text(exc: BaseException) -> str:
    try:
        text = str(exc)
    except Exception:
        text = ""
    text = " ".join(text.split())
    if len(text) > _MAX_TEXT:
        text = text[: _MAX_TEXT - 3] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _positional_names(fn: Callable) -> list[str]:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return []
    return [
        p.name
        for p in params
        if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    ]


def _arg_name(index: int, names: list[str]) -> str:
    return f"argument {index + 1} (`{names[index]}`)" if index < len(names) else f"argument {index + 1}"


def _describe_case(case: Case, names: list[str]) -> str:
    parts = []
    for i, value in enumerate(case.args):
        label = names[i] if i < len(names) else f"argument {i + 1}"
        parts.append(f"{label} = {_describe_input(value)}")
    parts += [f"{k} = {_describe_input(v)}" for k, v in case.kwargs.items()]
    return ", ".join(parts) if parts else "(no arguments)"


def _signature_text(fn: Callable) -> str:
    try:
        return f"{getattr(fn, '__name__', 'f')}{inspect.signature(fn)}"
    except (TypeError, ValueError):
        return getattr(fn, "__name__", "f")


def _kinds(cases: list[Case]) -> str:
    kinds: list[str] = []
    for case in cases:
        kind = case.label.split(":", 1)[0].strip()
        if kind not in kinds:
            kinds.append(kind)
    shown = ", ".join(kinds[:5])
    return shown + (", …" if len(kinds) > 5 else "")


def _resolve_cases(cases: Any, name: str) -> list[Case]:
    if callable(cases) and not isinstance(cases, (list, tuple)):
        rng = np.random.default_rng(zlib.crc32(name.encode("utf-8")))
        produced = cases(rng)
        if isinstance(produced, (str, bytes)) or not isinstance(produced, Iterable):
            raise TypeError(f"cases generator must return a list of Case, got {describe(produced)}")
        cases = list(produced)
    elif isinstance(cases, (list, tuple)):
        cases = list(cases)
    else:
        raise TypeError(f"cases must be a list of Case or a callable rng -> list[Case], got {describe(cases)}")
    if not cases:
        raise ValueError(f"cases must hold at least one Case, got an empty list for exercise {name!r}")
    for i, case in enumerate(cases):
        if not isinstance(case, Case):
            raise TypeError(f"cases[{i}] must be a Case, got {describe(case)}")
    return cases


def _copy_case(case: Case, i: int) -> tuple[tuple, dict]:
    try:
        return copy.deepcopy(case.args), copy.deepcopy(case.kwargs)
    except Exception as exc:
        raise TypeError(f"the arguments of cases[{i}] ({case.label!r}) cannot be deep-copied: {exc}") from exc


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[float]:
    """Cap the time limit of every check run inside the ``with`` block at ``seconds``.

    A chapter's ``check_<name>(student_fn)`` takes only the student's function; this is
    how a test (or a teacher grading many submissions) makes a student's endless loop
    cost less than the default 10 s::

        with time_limit(0.5):
            check_glu(looping_glu)   # "took longer than 0.5 s ..."

    Each check uses ``min(its own time_limit_s, seconds)``; nested blocks keep the
    smallest cap. Yields the cap in force.
    """
    seconds = check_float("seconds", seconds, min_value=0.0, min_inclusive=False)
    outer = _TIME_LIMIT_CAP.get()
    cap = seconds if outer is None else min(outer, seconds)
    token = _TIME_LIMIT_CAP.set(cap)
    try:
        yield cap
    finally:
        _TIME_LIMIT_CAP.reset(token)


def check_function(
    student_fn: Any,
    reference_fn: Callable,
    cases: list[Case] | Callable[[np.random.Generator], list[Case]],
    *,
    name: str,
    rtol: float = 1e-6,
    atol: float = 0.0,
    exact: bool = False,
    time_limit_s: float = 10.0,
    compare: Callable[[Any, Any], str | None] | None = None,
) -> CheckResult:
    """Run ``student_fn`` and ``reference_fn`` on every case and compare; stop at the first failure.

    ``cases`` is a list of :class:`Case` or a callable ``rng -> list[Case]``; the callable gets a
    ``numpy.random.Generator`` seeded from ``name``, so the same exercise always draws the same inputs.
    Floats must satisfy ``|got - expected| <= atol + rtol·|expected|`` element-wise; integers must be
    equal; with ``exact=True`` everything must be equal and of the same kind (int vs float vs bool).
    ``compare(got, expected) -> str | None`` replaces the built-in value comparison (return ``None``
    when the answer is right, else a plain-words message). Each call of the student's function may
    run ``time_limit_s`` seconds (at most the cap of an enclosing :func:`time_limit` block).
    Returns a :class:`CheckResult`; never raises for anything the student does. Raises
    ``TypeError``/``ValueError`` when the checker's own arguments are wrong.
    """
    if not isinstance(name, str) or not name.strip():
        raise TypeError(f"name must be a non-empty str naming the exercise, got {describe(name)}")
    if not callable(reference_fn):
        raise TypeError(f"reference_fn must be a function, got {describe(reference_fn)}")
    rtol = check_float("rtol", rtol, min_value=0.0)
    atol = check_float("atol", atol, min_value=0.0)
    exact = check_bool("exact", exact)
    time_limit_s = check_float("time_limit_s", time_limit_s, min_value=0.0, min_inclusive=False)
    cap = _TIME_LIMIT_CAP.get()
    if cap is not None:
        time_limit_s = min(time_limit_s, cap)
    if compare is not None and not callable(compare):
        raise TypeError(f"compare must be a callable (got, expected) -> str | None, or None; got {describe(compare)}")
    case_list = _resolve_cases(cases, name)
    n = len(case_list)

    output = _Output()

    def result(
        passed: bool, message: str, *, attempted: bool = True, n_passed: int = 0, failed: str | None = None
    ) -> CheckResult:
        message = "\n".join([message, *output.excerpt()])
        return CheckResult(name, passed, attempted, n, n_passed, message, failed)

    if not callable(student_fn):
        return result(
            False,
            f"❌ {name}: expected a function, got {describe(student_fn)} — "
            f"pass the function itself, without calling it",
        )

    names = _positional_names(reference_fn)
    comparer = _Comparer(rtol=rtol, atol=atol, exact=exact)
    for i, case in enumerate(case_list):
        where = f"on case {case.label!r} (case {i + 1} of {n})"
        inputs = f"   input: {_describe_case(case, names)}"

        def fail(text: str, *extra: str) -> CheckResult:
            lines = [f"❌ {name}: {text}", inputs, *extra]
            return result(False, "\n".join(lines), n_passed=i, failed=case.label)

        ref_args, ref_kwargs = _copy_case(case, i)
        stu_args, stu_kwargs = _copy_case(case, i)
        try:
            expected = reference_fn(*ref_args, **ref_kwargs)
        except Exception as exc:
            return fail(
                f"the course's reference solution raised {_exception_text(exc)} {where}.",
                "   This is a bug in the course, not in your code: please report it.",
            )

        try:
            got, elapsed = _call_with_limit(student_fn, stu_args, stu_kwargs, time_limit_s, output)
        except _TimeLimitExceeded:
            return fail(_too_slow(time_limit_s, where))
        except BaseException as exc:  # noqa: B036 - anything the student's code raises is reported, except:
            if _is_user_interrupt(exc):
                raise  # Ctrl-C / the stop button: the user wants the notebook to stop
            tb_frames = traceback.extract_tb(exc.__traceback__)
            own_frames = [f for f in tb_frames if os.path.abspath(f.filename) != _THIS_FILE]
            # The placeholder raises NotImplementedError from the student's own cell; one raised inside a
            # library (e.g. torch's "missing forward"), or after earlier cases passed, is a real error.
            if isinstance(exc, NotImplementedError) and i == 0 and not _is_library_file(tb_frames[-1].filename):
                return result(
                    False,
                    f"✏️ {name}: not attempted yet — {_NOT_ATTEMPTED_HINT}",
                    attempted=False,
                    failed=case.label,
                )
            if isinstance(exc, TypeError) and not own_frames:
                return fail(
                    f"could not call your function with this exercise's arguments {where}: {_exception_text(exc)}",
                    f"   it should accept the same parameters as {_signature_text(reference_fn)}",
                )
            extra = [f"   {loc}"] if (loc := _where_in_student_code(exc)) else []
            if isinstance(exc, NotImplementedError) and i > 0:
                extra.append("   (the earlier cases passed: this case needs something your code does not handle yet)")
            if isinstance(exc, KeyboardInterrupt):
                extra.append("   (your code raised KeyboardInterrupt itself: nobody pressed stop)")
            return fail(f"your function raised {_exception_text(exc)} — {where}", *extra)
        if elapsed > time_limit_s:
            return fail(_too_slow(time_limit_s, where))

        try:
            problem = _check_output(got, expected, comparer, compare)
            if problem is None:
                problem = _check_inputs(case, ref_args, ref_kwargs, stu_args, stu_kwargs, names, comparer)
        except Exception as exc:
            problem = (
                f"the checker could not compare your answer with the expected one ({_exception_text(exc)}). "
                f"If your answer has the expected type, this is a bug in the course: please report it."
            )
        if problem is not None:
            return fail(f"wrong answer {where}", f"   {problem}")

    count = f"all {n} cases" if n > 1 else "its only case"
    return result(True, f"✅ {name}: passed {count} ({_kinds(case_list)})", n_passed=n)


def _too_slow(limit: float, where: str) -> str:
    return f"took longer than {limit:g} s {where}: is there an infinite loop or an O(n³) loop over elements?"


def _check_output(got: Any, expected: Any, comparer: _Comparer, compare: Callable | None) -> str | None:
    if compare is None or (got is None and expected is not None):
        return comparer(got, expected)
    verdict = compare(got, expected)
    if verdict is not None and not isinstance(verdict, str):
        raise TypeError(f"compare must return None or a str message, got {describe(verdict)}")
    return verdict or None


def _check_inputs(
    case: Case,
    ref_args: tuple,
    ref_kwargs: dict,
    stu_args: tuple,
    stu_kwargs: dict,
    names: list[str],
    comparer: _Comparer,
) -> str | None:
    """Report an input the student modified in place (unless the reference does too: then compare it)."""
    pairs = [(_arg_name(i, names), case.args[i], ref_args[i], stu_args[i]) for i in range(len(case.args))]
    pairs += [(f"keyword argument `{k}`", case.kwargs[k], ref_kwargs[k], stu_kwargs[k]) for k in case.kwargs]
    for label, original, ref_after, stu_after in pairs:
        if _unchanged(original, ref_after):
            if not _unchanged(original, stu_after):
                return (
                    f"your function modified its input {label} in place — work on a copy "
                    f"(e.g. x = x.copy()) or build a new array instead of writing into the input"
                )
        else:  # an in-place exercise: the modified input is (part of) the answer
            inplace = dataclasses.replace(comparer, root="input", verb="it holds", none_message="it holds None")
            problem = inplace(stu_after, ref_after)
            if problem is not None:
                return f"after your function ran, its input {label} is wrong: {problem}"
    return None


def check_value(
    student_value: Any,
    expected: Any,
    *,
    name: str,
    rtol: float = 1e-6,
    atol: float = 0.0,
    exact: bool = False,
) -> CheckResult:
    """Check a value the student computed (e.g. "how many bytes does this KV cache take?").

    The same comparison rules as :func:`check_function`, but the message never shows the expected
    value (that would give the answer away): it says where and in which direction the value is off.
    ``...`` (Ellipsis, the usual placeholder ``answer = ...``) counts as not attempted.
    """
    if not isinstance(name, str) or not name.strip():
        raise TypeError(f"name must be a non-empty str naming the exercise, got {describe(name)}")
    rtol = check_float("rtol", rtol, min_value=0.0)
    atol = check_float("atol", atol, min_value=0.0)
    exact = check_bool("exact", exact)
    if student_value is Ellipsis:
        message = f"✏️ {name}: not attempted yet — {_NOT_ATTEMPTED_HINT}"
        return CheckResult(name, False, False, 1, 0, message, None)
    comparer = _Comparer(
        rtol=rtol,
        atol=atol,
        exact=exact,
        root="value",
        verb="you gave",
        none_message="your value is None — did you forget to assign it (or does your function lack `return`)?",
        reveal=False,
    )
    try:
        problem = comparer(student_value, expected)
    except Exception as exc:
        problem = f"the checker could not compare your value ({_exception_text(exc)}); this may be a bug in the course"
    if problem is None:
        return CheckResult(name, True, True, 1, 1, f"✅ {name}: correct", None)
    return CheckResult(name, False, True, 1, 0, f"❌ {name}: not right yet\n   {problem}", "value")


# --------------------------------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------------------------------


def _strict() -> bool:
    """Whether a failed check raises: under ``EFFX_CHECK_STRICT=1`` (CI on the solution notebooks) and when
    nbgrader executes a notebook to grade or validate it (it scores a test cell by whether it raises)."""
    return os.environ.get(STRICT_ENV_VAR, "") == "1" or _grading()


def _grading() -> bool:
    return os.environ.get("NBGRADER_EXECUTION", "") in ("autograde", "validate")


def report(result: CheckResult) -> CheckResult:
    """Print ``result``, record it in :data:`RESULTS` and return it.

    In strict mode (environment variable ``EFFX_CHECK_STRICT=1``, used by the course's CI on the
    solution notebooks) a failed or not-attempted result raises :class:`CheckerError` after printing.
    """
    if not isinstance(result, CheckResult):
        raise TypeError(f"result must be a CheckResult (from check_function/check_value), got {describe(result)}")
    print(fit(result.message), flush=True)
    result._reported = True  # type: ignore[attr-defined]
    RESULTS.append(result)
    if _strict() and not result.passed:
        raise CheckerError(result.message, result)
    return result


def _summary_line(result: CheckResult) -> str:
    if result.passed:
        return f"✅ {result.name}: passed ({result.n_passed} of {result.n_cases} cases)"
    if not result.attempted:
        return f"✏️ {result.name}: not attempted"
    where = f" on case {result.n_passed + 1} of {result.n_cases} ({result.failed_case!r})" if result.failed_case else ""
    return f"❌ {result.name}: failed{where}"


def summary() -> str:
    """One line per exercise reported so far (its latest result): passed / failed / not attempted."""
    latest: dict[str, CheckResult] = {}
    for r in RESULTS:  # a dict keeps each name at its first position and holds its latest result
        latest[r.name] = r
    if not latest:
        return "no exercises checked yet"
    results = list(latest.values())
    n_pass = sum(r.passed for r in results)
    n_todo = sum(not r.attempted for r in results)
    n_fail = len(results) - n_pass - n_todo
    head = f"{_plural(len(results), 'exercise')}: {n_pass} passed, {n_fail} failed, {n_todo} not attempted"
    return fit("\n".join([head, *(_summary_line(r) for r in results)]))


# ---------------------------------------------------------------------------------------------- hints
@dataclass
class Mistake:
    """A classic wrong answer and what to tell a student who made it.

    ``wrong(*args, **kwargs)`` computes the wrong answer on a case's arguments (``None``
    where the mistake does not apply, e.g. a causal-mask mistake on a non-causal case).
    ``hint`` is the sentence appended to the verdict (``hint: ...``) when the student's
    answer equals this wrong answer.
    """

    wrong: Callable[..., Any]
    hint: str

    def __post_init__(self) -> None:
        if not callable(self.wrong):
            raise TypeError(
                f"Mistake wrong must be a function (*args, **kwargs) -> answer, "
                f"got {describe(self.wrong)}"
            )
        if not isinstance(self.hint, str) or not self.hint.strip():
            raise TypeError(
                f"Mistake hint must be a non-empty str, got {describe(self.hint)}"
            )


class ReferenceRecorder:
    """A reference wrapper that remembers its last call, for a ``compare`` hook.

    :func:`check_function` calls ``reference_fn`` on a case just before it compares the
    student's answer for that case, so a ``compare(got, expected)`` hook that needs the
    case's arguments (to recompute a classic mistake, or to judge an answer that has
    several right forms) passes ``recorder.reference`` as ``reference_fn`` and asks
    :meth:`arguments` for them::

        recorder = ReferenceRecorder(_peg_order_reference)

        def compare(got, expected):
            args, kwargs = recorder.arguments(expected)
            ...

        check_function(fn, recorder.reference, cases, name="peg_order", compare=compare)

    ``recorder.reference`` keeps the reference's name and signature (the messages show
    them).
    """

    def __init__(self, reference: Callable) -> None:
        if not callable(reference):
            raise TypeError(f"reference must be a function, got {describe(reference)}")
        self._last: tuple[Any, tuple, dict] | None = None

        @functools.wraps(reference)
        def recorded(*args: Any, **kwargs: Any) -> Any:
            expected = reference(*args, **kwargs)
            self._last = (expected, args, kwargs)
            return expected

        self.reference: Callable = recorded

    def arguments(self, expected: Any) -> tuple[tuple, dict] | None:
        """``(args, kwargs)`` of the reference call that returned ``expected``.

        ``expected`` must be the very object the reference returned (as
        :func:`check_function` passes it to ``compare``); None otherwise.
        """
        if self._last is None or self._last[0] is not expected:
            return None
        return self._last[1], self._last[2]


class Diagnosis(ReferenceRecorder):
    """The ``compare`` hook of :func:`check_with_hints`: the usual verdict, plus a hint.

    ``compare(got, expected)`` runs the built-in comparison (the rules of
    :func:`check_function` with ``rtol``, ``atol``, ``exact``) and, when the answer is
    wrong and equals one of ``mistakes`` on the same arguments (and that mistake differs
    from the right answer there), appends ``hint: ...``. Pass ``diagnosis.reference``
    as the reference of :func:`check_function`.

    Extension points, for answers that need them:

    * ``prepare(got, expected) -> got`` (argument): turns an accepted alternative form
      of the answer into the expected one before anything is compared, e.g. a scale of
      shape ``[M, 1]`` read as ``[M]``, or an integer array read as a list.
    * :meth:`close` (``a, b -> bool``): when two answers count as the same for matching
      a mistake. Tuples and lists are compared element by element, ``None`` only equals
      ``None``, dicts key by key, anything else as float64 (or complex) arrays within
      ``rtol``/``atol``, NaN equal to NaN. Override it for answers of another kind.
    * :meth:`problem` (``got, expected -> str | None``): the plain-words verdict before
      the hint; override it to judge answers that have several right forms.
    """

    def __init__(
        self,
        reference: Callable,
        mistakes: list[Mistake],
        *,
        rtol: float = 1e-4,
        atol: float = 1e-6,
        exact: bool = False,
        prepare: Callable[[Any, Any], Any] | None = None,
    ) -> None:
        super().__init__(reference)
        if not isinstance(mistakes, list) or not all(
            isinstance(m, Mistake) for m in mistakes
        ):
            raise TypeError(
                f"mistakes must be a list of Mistake, got {describe(mistakes)}"
            )
        self.rtol = check_float("rtol", rtol, min_value=0.0)
        self.atol = check_float("atol", atol, min_value=0.0)
        self.exact = check_bool("exact", exact)
        if prepare is not None and not callable(prepare):
            raise TypeError(
                f"prepare must be a callable (got, expected) -> got, or None; "
                f"got {describe(prepare)}"
            )
        self.mistakes = mistakes
        self.prepare = prepare
        self._base = _Comparer(rtol=self.rtol, atol=self.atol, exact=self.exact)

    def compare(self, got: Any, expected: Any) -> str | None:
        """None when ``got`` is right, else the verdict (and a ``hint:`` line)."""
        if self.prepare is not None:
            got = self.prepare(got, expected)
        problem = self.problem(got, expected)
        if problem is None:
            return None
        hint = self.hint(got, expected)
        return problem if hint is None else f"{problem}\n   hint: {hint}"

    def problem(self, got: Any, expected: Any) -> str | None:
        """The built-in comparison of :func:`check_function`: None when right."""
        return self._base(got, expected)

    def hint(self, got: Any, expected: Any) -> str | None:
        """The hint of the first mistake whose answer on this case equals ``got``."""
        case = self.arguments(expected)
        if case is None:
            return None
        args, kwargs = case
        for mistake in self.mistakes:
            try:
                with np.errstate(all="ignore"):
                    wrong = mistake.wrong(*args, **kwargs)
            except Exception:  # noqa: BLE001, S112 - a mistake that cannot run: no hint
                continue
            if wrong is None or self.close(wrong, expected):
                continue
            if self.close(got, wrong):
                return mistake.hint
        return None

    def close(self, a: Any, b: Any) -> bool:
        """Whether ``a`` and ``b`` count as the same answer (see the class doc)."""
        if a is None or b is None:
            return a is None and b is None
        if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
            return len(a) == len(b) and all(self.close(x, y) for x, y in zip(a, b))
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            return list(a) == list(b) and all(self.close(a[k], b[k]) for k in a)
        try:
            x, y = np.asarray(as_numpy(a)), np.asarray(as_numpy(b))
            wide = np.complex128 if "c" in (x.dtype.kind, y.dtype.kind) else np.float64
            x, y = x.astype(wide), y.astype(wide)
        except Exception:  # noqa: BLE001 - not numbers: not the same answer
            return False
        if x.shape != y.shape:
            return False
        with np.errstate(all="ignore"):
            same = np.isclose(x, y, rtol=self.rtol, atol=self.atol, equal_nan=True)
            return bool(np.all(same))


def check_with_hints(
    student_fn: Any,
    reference_fn: Callable,
    cases: Any,
    mistakes: list[Mistake],
    *,
    name: str,
    rtol: float = 1e-4,
    atol: float = 1e-6,
    exact: bool = False,
    prepare: Callable[[Any, Any], Any] | None = None,
    time_limit_s: float = 10.0,
) -> CheckResult:
    """:func:`check_function` + :func:`report`, with a ``hint:`` naming a known mistake.

    When a wrong answer equals a known :class:`Mistake` on the failing case, the verdict
    gets a ``hint:`` line naming that mistake. ``prepare(got, expected) -> got`` turns
    an accepted alternative form of the answer into the expected one first (see
    :class:`Diagnosis`). The other arguments are those of :func:`check_function`.
    """
    if not isinstance(mistakes, list) or not all(isinstance(m, Mistake) for m in mistakes):
        raise TypeError(f"mistakes must be a list of Mistake, got {describe(mistakes)}")
    if not callable(reference_fn):
        raise TypeError(f"reference_fn must be callable, got {describe(reference_fn)}")
    diag = Diagnosis(
        reference_fn, mistakes, rtol=rtol, atol=atol, exact=exact, prepare=prepare
    )
    result = check_function(
        student_fn,
        diag.reference,
        cases,
        name=name,
        rtol=rtol,
        atol=atol,
        exact=exact,
        time_limit_s=time_limit_s,
        compare=diag.compare,
    )
    return report(result)


# ----------------------------------------------------------------------------------- naming, registry
def named(name: str) -> Callable[[Callable], Callable]:
    """Decorator: give a reference wrapper the exercise's name.

    The messages show it (``it should accept the same parameters as glu(x, params)``),
    so a wrapper ``_glu_reference`` reads as the function the student writes::

        @named("glu")
        def _glu_reference(x, params):
            return R.glu(x, params)
    """
    if not isinstance(name, str) or not name.isidentifier():
        raise TypeError(
            f"name must be the exercise's function name (a Python identifier), "
            f"got {describe(name)}"
        )

    def rename(fn: Callable) -> Callable:
        if not callable(fn):
            raise TypeError(
                f"@named({name!r}) must decorate a function, got {describe(fn)}"
            )
        fn.__name__ = fn.__qualname__ = name
        return fn

    return rename


@dataclass(frozen=True)
class RegisteredChecker:
    """An entry of :data:`CHECKERS`: a public ``check_<name>`` and its reference."""

    qualname: str
    function: Callable[[Any], CheckResult]
    reference: Callable


#: Every checker decorated with :func:`checker`, by ``"<module>.<function name>"``.
#: ``tests/core/test_checkers_survive_bad_code.py`` feeds each the bad code students write.
CHECKERS: dict[str, RegisteredChecker] = {}


def checker(*, reference: Callable) -> Callable[[Callable], Callable]:
    """Decorator: register a chapter's public ``check_<name>`` in :data:`CHECKERS`.

    ``reference`` is the function the checker compares against (the one it passes to
    :func:`check_function` / :func:`check_with_hints`): the shared test builds right
    answers with it (e.g. a right answer from a function that also modifies its input).
    The checker itself is returned unchanged::

        @checker(reference=_glu_reference)
        def check_glu(student_fn):
            ...
    """
    if not callable(reference):
        raise TypeError(
            f"reference must be the function the checker compares against, "
            f"got {describe(reference)}"
        )

    def register(fn: Callable) -> Callable:
        if not callable(fn) or not getattr(fn, "__name__", "").startswith("check_"):
            raise TypeError(
                f"@checker must decorate a function named check_<exercise>, "
                f"got {describe(fn)}"
            )
        qualname = f"{fn.__module__}.{fn.__qualname__}"

        @functools.wraps(fn)
        def checked(student_fn: Any, *args: Any, **kwargs: Any) -> CheckResult:
            try:
                result = fn(student_fn, *args, **kwargs)
            except CheckerError as exc:  # strict mode: remember the failure, then raise it
                if exc.result is not None:
                    _LAST_CHECK[qualname] = (student_fn, exc.result)
                raise
            if isinstance(result, CheckResult):
                _LAST_CHECK[qualname] = (student_fn, result)
            return result

        CHECKERS[qualname] = RegisteredChecker(qualname, checked, reference)
        return checked

    return register


#: The latest (student function, result) of every registered checker, for :func:`adopt`.
_LAST_CHECK: dict[str, tuple[Any, CheckResult]] = {}


def _registered(check: Any) -> RegisteredChecker:
    for entry in CHECKERS.values():
        if entry.function is check:
            return entry
    raise TypeError(
        f"checked_by must be one of the course's check_<exercise> functions (e.g. check_glu), "
        f"got {describe(check)}"
    )


def adopt(student_fn: Any, checked_by: Callable, *, budget_s: float = 30.0) -> Callable:
    """The function the experiment after an exercise runs: the student's if it passed, else the course's.

    The MIT-EfficientML pattern: the student's answer drives the plot that follows it. ``checked_by`` is
    the exercise's ``check_<name>``; if its latest check was of this very ``student_fn`` that result is
    used, otherwise the check runs now (and reports). Then:

    * passed: the returned function calls ``student_fn``, with a time budget of ``budget_s`` seconds for
      all its calls together. A call that runs past what is left of the budget is stopped, as is one that
      raises on the experiment's (larger) inputs; from then on the course's reference answers, and one line
      says so. In strict mode (``EFFX_CHECK_STRICT=1``, the solution notebooks in CI) that raises
      :class:`CheckerError` instead: the solution must carry the experiment.
    * not passed (or not attempted): the course's reference, with one line saying so.

    The returned function has the exercise's name and signature, and ``.by_student`` (whether the student's
    code is running) for labels such as "your quantize_symmetric".
    """
    entry = _registered(checked_by)
    budget_s = check_float("budget_s", budget_s, min_value=0.0, min_inclusive=False)
    last = _LAST_CHECK.get(entry.qualname)
    result = last[1] if last is not None and last[0] is student_fn else checked_by(student_fn)
    reference = entry.reference
    name = result.name

    if not result.passed:
        why = "has not been attempted yet" if not result.attempted else "has not passed its check yet"
        message = f"↪ {name}: yours {why}, so the experiment below uses the course's {name}."
        if os.environ.get(STRICT_ENV_VAR, "") == "1":  # CI on the solution notebooks: never a fallback
            raise CheckerError(message, result)
        print(fit(message), flush=True)  # (under nbgrader the test cell is what scores: no raise here)
        return _labelled(reference, reference, by_student=False)

    state = {"left": budget_s, "fallen": False}

    def run(*args: Any, **kwargs: Any) -> Any:
        if state["fallen"]:
            return reference(*args, **kwargs)
        try:
            out, elapsed = _call_with_limit(student_fn, args, kwargs, state["left"])
            state["left"] -= elapsed
            if state["left"] > 0:
                return out
            problem = f"used up its time budget ({budget_s:g} s for this experiment)"
        except _TimeLimitExceeded:
            problem = f"ran past its time budget ({budget_s:g} s for this experiment) and was stopped"
        except BaseException as exc:  # noqa: B036 - the student's code failed on the experiment's input
            if _is_user_interrupt(exc):
                raise
            problem = f"raised {_exception_text(exc)} on the experiment's input"
        state["fallen"] = True
        run.by_student = False  # type: ignore[attr-defined]
        message = f"↪ {name}: yours {problem}; the rest of this experiment uses the course's {name}."
        if os.environ.get(STRICT_ENV_VAR, "") == "1":
            raise CheckerError(message, result)
        print(fit(message), flush=True)
        return reference(*args, **kwargs)

    print(fit(f"✓ {name}: the experiment below runs your function."), flush=True)
    return _labelled(run, reference, by_student=True)


def _labelled(fn: Callable, like: Callable, *, by_student: bool) -> Callable:
    if fn is like:
        @functools.wraps(like)
        def same(*args: Any, **kwargs: Any) -> Any:
            return like(*args, **kwargs)

        fn = same
    else:
        functools.update_wrapper(fn, like)
    fn.by_student = by_student  # type: ignore[attr-defined]
    return fn
