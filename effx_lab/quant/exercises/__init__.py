"""Checkers for chapter 2's exercises, one module per notebook: fundamentals (02.1), outliers (02.2), llm_int8
(02.3), fine_grained (02.4), second_order (02.5), smoothquant (02.6), qat (02.7).

This package exports every ``check_<name>`` of those modules (each module's ``__all__`` lists its
checkers, and may list helpers its notebook imports from it, which stay in the module)."""
from __future__ import annotations

from . import fine_grained, fundamentals, llm_int8, outliers, qat, second_order, smoothquant

#: the notebook modules, in the order of the chapter
MODULES = (fundamentals, outliers, llm_int8, fine_grained, second_order, smoothquant, qat)

for _module in MODULES:
    for _name in _module.__all__:
        if _name.startswith("check_"):
            globals()[_name] = getattr(_module, _name)

__all__ = sorted(name for module in MODULES for name in module.__all__ if name.startswith("check_"))

del _module, _name
