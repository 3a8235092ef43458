"""Every public checker of every chapter survives the bad code students really write.

The checkers are found, not listed: every ``check_*`` function defined in an
``effx_lab.<chapter>.exercises`` module (or in a module of an ``exercises`` package) is
fed a function that raises, is still the placeholder, returns ``None``, a wrong type, a
wrong shape or a wrong dtype, has the wrong signature, modifies its input, loops forever
(also while swallowing the time-out), prints a flood of lines, or returns NaN. Each must
come back as a failed :class:`~effx_lab.check.CheckResult` whose message names the
problem; none may raise or hang. A checker that is not registered with
:func:`effx_lab.check.checker` fails here (the right answers some of the bad code needs
come from the registered reference).
"""
from __future__ import annotations

import copy
import importlib
import importlib.util
import numbers
import pkgutil
import time
from typing import Any, Callable

import numpy as np
import pytest
import torch

import effx_lab
from effx_lab import check as C

#: the cap on each call of a student's function that loops forever (the checkers' own
#: limit is 10 s), and on the others (generous: printing 20,000 lines takes a while on a
#: busy 2-core machine)
_LOOP_LIMIT_S = 0.1
_LIMIT_S = 5.0


def _by_name(info: pkgutil.ModuleInfo) -> str:
    return info.name


def _exercise_modules() -> list[str]:
    """``effx_lab.<pkg>.exercises`` of every subpackage that has one (+ its modules)."""
    names = []
    for info in sorted(pkgutil.iter_modules(effx_lab.__path__), key=_by_name):
        if not info.ispkg:
            continue
        name = f"effx_lab.{info.name}.exercises"
        spec = importlib.util.find_spec(name)  # imports effx_lab.<pkg>: must not fail
        if spec is None:
            continue
        names.append(name)
        if spec.submodule_search_locations:
            subs = pkgutil.iter_modules(spec.submodule_search_locations)
            names += [f"{name}.{sub.name}" for sub in sorted(subs, key=_by_name)]
    return names


def _public_checkers() -> dict[str, Callable]:
    """``"module.check_x" -> function`` for every public ``check_*`` of them."""
    found = {}
    for module_name in _exercise_modules():
        module = importlib.import_module(module_name)
        for attr in dir(module):
            fn = getattr(module, attr)
            own = getattr(fn, "__module__", None) == module_name
            if attr.startswith("check_") and callable(fn) and own:
                found[f"{module_name}.{fn.__qualname__}"] = fn
    return found


PUBLIC = _public_checkers()


@pytest.fixture(autouse=True)
def _not_strict(monkeypatch):
    monkeypatch.delenv(C.STRICT_ENV_VAR, raising=False)
    yield
    C.RESULTS.clear()


def test_every_public_checker_is_registered():
    chapters = {name.split(".")[1] for name in PUBLIC}
    assert {"costs", "quant", "flash"} <= chapters, sorted(PUBLIC)
    missing = sorted(set(PUBLIC) - set(C.CHECKERS))
    assert not missing, f"decorate with @check.checker(reference=...): {missing}"
    for name, fn in PUBLIC.items():
        entry = C.CHECKERS[name]
        assert entry.function is fn and callable(entry.reference)


# ------------------------------------------------------------------------- the bad code
def _leaf_map(
    value: Any, fn: Callable[[Any], Any], *, first_only: bool
) -> tuple[Any, bool]:
    """``value`` with ``fn`` applied to the leaves of its tuples, lists and dicts.

    ``fn`` returns None to leave a leaf alone; with ``first_only`` only the first leaf
    that ``fn`` changes is replaced. Returns ``(new value, changed)``.
    """
    if isinstance(value, (tuple, list)):
        items, changed = [], False
        for item in value:
            if changed and first_only:
                items.append(item)
                continue
            new, did = _leaf_map(item, fn, first_only=first_only)
            items.append(new)
            changed = changed or did
        return type(value)(items), changed
    if isinstance(value, dict):
        out, changed = {}, False
        for key, item in value.items():
            if changed and first_only:
                out[key] = item
                continue
            out[key], did = _leaf_map(item, fn, first_only=first_only)
            changed = changed or did
        return out, changed
    new = fn(value)
    return (value, False) if new is None else (new, True)


def _as_array(value: Any) -> np.ndarray | None:
    if isinstance(value, np.ndarray) or C.is_tensor(value):
        return C.as_numpy(value)
    if isinstance(value, (numbers.Number, np.generic)):
        return np.asarray(value)
    return None


def _is_number(leaf: Any, arr: np.ndarray) -> bool:
    return arr.ndim == 0 and not isinstance(leaf, np.ndarray)


def _wrong_shape(answer: Any) -> Any:
    """One more row in the first array, 3 numbers for a number, a list one item more."""
    flat = (list, tuple, np.ndarray)
    if isinstance(answer, list) and answer and not isinstance(answer[0], flat):
        return answer + answer[:1]

    def grow(leaf: Any) -> Any:
        arr = _as_array(leaf)
        if arr is None:
            return None
        if arr.ndim == 0:
            return np.full(3, arr)
        extra = np.zeros((1,) + arr.shape[1:], dtype=arr.dtype)
        return np.concatenate([arr, extra])

    return _leaf_map(answer, grow, first_only=True)[0]


def _wrong_dtype(answer: Any) -> Any:
    """Every number and array as complex (what ``x ** 0.5`` of a negative gives)."""

    def to_complex(leaf: Any) -> Any:
        arr = _as_array(leaf)
        if arr is None:
            return None
        return complex(arr) if _is_number(leaf, arr) else arr.astype(np.complex128)

    return _leaf_map(answer, to_complex, first_only=False)[0]


def _with_nan(answer: Any, state: dict[str, Any]) -> Any:
    """The first finite float of the answer replaced by NaN.

    An answer without floats (integers, booleans) gets the NaN in its first number,
    which turns it into floats (``state["floats_made"]``).
    """

    def poison(leaf: Any, kinds: str) -> Any:
        arr = _as_array(leaf)
        if arr is None or arr.dtype.kind not in kinds:
            return None
        finite = np.isfinite(arr.astype(np.float64))
        if not finite.any():
            return None
        if _is_number(leaf, arr):
            return float("nan")
        out = arr.astype(np.float64)
        out[tuple(np.argwhere(finite)[0])] = np.nan
        return out

    poisoned, changed = _leaf_map(answer, lambda x: poison(x, "f"), first_only=True)
    if changed:
        return poisoned
    state["floats_made"] = True
    return _leaf_map(answer, lambda x: poison(x, "biu"), first_only=True)[0]


def _mutate_first_array(value: Any) -> bool:
    """Change the first non-empty array or tensor in ``value`` (args, lists, dicts)."""
    if isinstance(value, (tuple, list)):
        return any(_mutate_first_array(v) for v in value)
    if isinstance(value, dict):
        return any(_mutate_first_array(v) for v in value.values())
    if C.is_tensor(value) and value.numel() > 0:
        before = value.detach().clone()
        with torch.no_grad():
            value.logical_not_() if value.dtype == torch.bool else value.add_(1)
        return not torch.equal(before, value.detach())
    if isinstance(value, np.ndarray) and value.size > 0 and value.flags.writeable:
        before = value.copy()
        if value.dtype.kind == "b":
            np.logical_not(value, out=value)
        elif value.dtype.kind in "iufc":
            value += 1
        return not np.array_equal(before, value, equal_nan=value.dtype.kind in "fc")
    return False


def _student(kind: str, reference: Callable, state: dict[str, Any]) -> Callable:
    """The student's function of one kind of bad code (``reference``: right answers)."""

    def right(args: tuple, kwargs: dict) -> Any:
        answer = reference(*copy.deepcopy(args), **copy.deepcopy(kwargs))
        return copy.deepcopy(answer)

    if kind == "raises":

        def student(*args, **kwargs):
            raise ValueError("the student's code broke")

    elif kind == "placeholder":

        def student(*args, **kwargs):
            raise NotImplementedError("Exercise: replace this line with your code")

    elif kind == "returns None":

        def student(*args, **kwargs):
            total = 0
            for value in args:
                total += 1 if value is not None else 0  # some work, then no `return`

    elif kind == "wrong type":

        def student(*args, **kwargs):
            return "42"

    elif kind == "wrong shape":

        def student(*args, **kwargs):
            return _wrong_shape(right(args, kwargs))

    elif kind == "wrong dtype":

        def student(*args, **kwargs):
            return _wrong_dtype(right(args, kwargs))

    elif kind == "wrong signature":

        def student():
            return 0

    elif kind == "modifies its input":

        def student(*args, **kwargs):
            answer = right(args, kwargs)
            mutated = _mutate_first_array((args, kwargs))
            state["mutated"] = mutated or state.get("mutated", False)
            return answer

    elif kind == "loops forever":

        def student(*args, **kwargs):
            n = 0
            while True:
                n += 1

    elif kind == "loops forever, swallowing the time-out":

        def student(*args, **kwargs):
            while True:
                try:
                    while True:
                        pass
                except BaseException:  # noqa: B036 - the student catches everything
                    pass

    elif kind == "prints a flood":

        def student(*args, **kwargs):
            for i in range(20_000):
                print("debug", i)
            return None

    elif kind == "returns NaN":

        def student(*args, **kwargs):
            return _with_nan(right(args, kwargs), state)

    else:  # pragma: no cover - a kind without code is a bug of this test
        raise AssertionError(kind)
    return student


#: kind -> the words the message must contain (all of them)
EXPECTED: dict[str, tuple[str, ...]] = {
    "raises": ("raised ValueError: the student's code broke",),
    "placeholder": ("not attempted",),
    "returns None": ("None",),
    "wrong type": ("you returned a str",),
    "wrong shape": (),  # "shape" or "items": checked below
    "wrong dtype": ("complex",),
    "wrong signature": ("could not call your function",),
    "modifies its input": ("modified its input",),
    "loops forever": (f"took longer than {_LOOP_LIMIT_S:g} s",),
    "loops forever, swallowing the time-out": (
        f"took longer than {_LOOP_LIMIT_S:g} s",
    ),
    "prints a flood": ("printed 20,000 lines", "hidden", "None"),
    "returns NaN": (),  # "nan" (or "float" for an integer answer): checked below
}


@pytest.mark.parametrize("kind", list(EXPECTED))
@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_checker_survives_bad_code(name, kind):
    entry = C.CHECKERS.get(name)
    if entry is None:
        pytest.fail(f"{name} is not registered: decorate it with @checker(reference=)")
    state: dict[str, Any] = {}
    student = _student(kind, entry.reference, state)
    start = time.perf_counter()
    with C.time_limit(_LOOP_LIMIT_S if kind.startswith("loops") else _LIMIT_S):
        result = entry.function(student)
    elapsed = time.perf_counter() - start
    assert isinstance(result, C.CheckResult), f"{name} returned {type(result).__name__}"
    assert elapsed < 30, f"{name} took {elapsed:.1f} s on {kind!r}"
    message = result.message
    assert len(message) < 4000, message[:500]  # a flood of output is cut
    if kind == "modifies its input" and not state.get("mutated"):
        # no case has an array input to modify: the function is right and must pass
        assert result.passed, message
        return
    assert result.passed is False, f"{name} accepted code that {kind}:\n{message}"
    assert result.attempted is (kind != "placeholder"), message
    for words in EXPECTED[kind]:
        assert words in message, (kind, words, message)
    if kind == "wrong shape":
        assert "shape" in message or "items" in message, message
    if kind == "returns NaN":  # an integer answer with a NaN is floats: either is named
        named = ("nan", "float") if state.get("floats_made") else ("nan",)
        assert any(word in message.lower() for word in named), message
