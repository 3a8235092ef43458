"""Every chapter 2 checker, whatever the exercise: a placeholder is "not attempted", a non-function, a crash or
a None answer is reported, and nothing is raised into the student's notebook."""
from __future__ import annotations

import importlib

import numpy as np
import pytest
from _checks import fails

from effx_lab.quant import exercises

CHECKERS = {name: getattr(exercises, name) for name in exercises.__all__}


MODULES = ["fundamentals", "outliers", "llm_int8", "fine_grained", "second_order", "smoothquant", "qat"]


def test_every_notebook_module_is_exported():
    """The package exports exactly the checkers of its seven notebook modules (02.1 to 02.7), each once, at
    least two per notebook, and every one is the module's own registered function."""
    modules = [importlib.import_module(f"{exercises.__name__}.{m}") for m in MODULES]
    assert [m.__name__ for m in exercises.MODULES] == [m.__name__ for m in modules]
    own = {}
    for module in modules:
        names = [n for n in module.__all__ if n.startswith("check_")]
        assert len(names) >= 2, module.__name__
        for name in names:
            assert name not in own, (name, own.get(name), module.__name__)
            own[name] = getattr(module, name)
    assert sorted(own) == exercises.__all__
    assert all(getattr(exercises, name) is fn for name, fn in own.items())


@pytest.mark.parametrize("name", sorted(CHECKERS))
def test_placeholder_non_function_crash_and_none_are_reported(name):
    check = CHECKERS[name]

    def todo(*args, **kwargs):
        raise NotImplementedError("Exercise: replace this line with your code")

    res = check(todo)
    assert res.passed is False and res.attempted is False and "not attempted" in res.message
    res = check(42)
    assert res.passed is False and "expected a function" in res.message
    fails(check(lambda *a, **k: np.zeros((7, 7)).reshape(3, 3)), "raised")
    assert check(lambda *a, **k: None).passed is False
