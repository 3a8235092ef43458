"""Checkers for the chapter 5 exercises (notebooks 05.1 to 05.3): mixture of experts.

One module per notebook: :mod:`.gating` (05.1), :mod:`.routing` (05.2), :mod:`.systems`
(05.3); every ``check_<name>`` is re-exported here. Each ``check_<name>(student_fn)``
runs the student's function against the course's reference on fixed edge cases and
seeded random draws, prints a plain-words verdict and returns the
:class:`effx_lab.check.CheckResult`; a wrong answer that equals a classic mistake gets a
``hint:`` line naming it.
"""

from __future__ import annotations

from . import gating, routing, systems

#: the notebook modules, in the order of the chapter
MODULES = (gating, routing, systems)

__all__ = sorted(
    name for module in MODULES for name in module.__all__ if name.startswith("check_")
)
globals().update(
    {name: getattr(m, name) for m in MODULES for name in m.__all__ if name in __all__}
)
