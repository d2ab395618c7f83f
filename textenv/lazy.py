"""Package namespaces that load their modules on first use (PEP 562), so that ``import agents`` or ``rlhf-gym
--help`` does not pay for torch and transformers before anything needs them.

A package's ``__init__`` lists which module defines each public name and installs the hooks::

    __getattr__, __dir__, __all__ = lazy_exports(__name__, {"textenv.env": ("TextGenEnv",), ...})

``from package import Name`` and ``package.Name`` then import the defining module the first time, and cache the name
in the package's namespace.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any


def lazy_exports(package: str, exports: Mapping[str, Sequence[str]]) -> tuple[Callable[[str], Any],
                                                                              Callable[[], list[str]], list[str]]:
    """``(__getattr__, __dir__, __all__)`` for ``package`` whose public names live in the modules of ``exports``
    (module -> names)."""
    where = {name: module for module, names in exports.items() for name in names}

    def __getattr__(name: str) -> Any:  # noqa: N807 - the module-level hook's name is fixed by PEP 562
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:  # noqa: N807
        return sorted(set(vars(sys.modules[package])) | set(where))

    return __getattr__, __dir__, sorted(where)
