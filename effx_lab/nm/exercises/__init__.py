"""Checkers for the chapter 4 exercises (notebooks 04.1 to 04.4): N:M sparsity.

One module per notebook: :mod:`.structure` (04.1), :mod:`.permutation` (04.2),
:mod:`.from_scratch` (04.3), :mod:`.layers` (04.4); every ``check_<name>`` is
re-exported here. Each ``check_<name>(student_fn)`` runs the student's function against
the course's reference on fixed edge cases and seeded random draws, prints a plain-words
verdict and returns the :class:`effx_lab.check.CheckResult`; a wrong answer that equals
a classic mistake gets a ``hint:`` line naming it.
"""

from __future__ import annotations

from . import from_scratch, layers, permutation, structure

#: the notebook modules, in the order of the chapter
MODULES = (structure, permutation, from_scratch, layers)

__all__ = sorted(
    name for module in MODULES for name in module.__all__ if name.startswith("check_")
)
globals().update(
    {name: getattr(m, name) for m in MODULES for name in m.__all__ if name in __all__}
)
