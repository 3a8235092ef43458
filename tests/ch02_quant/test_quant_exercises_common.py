"""Every chapter 2 checker, whatever the exercise: a placeholder is "not attempted", a non-function, a crash or
a None answer is reported, and nothing is raised into the student's notebook."""
from __future__ import annotations

import numpy as np
import pytest
from _checks import fails

from effx_lab.quant import exercises

CHECKERS = {name: getattr(exercises, name) for name in exercises.__all__}


def test_every_notebook_module_is_exported():
    assert len(CHECKERS) == 19 and all(callable(c) for c in CHECKERS.values())


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
