"""Old module paths of the 0.1 layout, answered with an error that names the new place.

``import agents.sb3_policy`` (moved to ``agents.sb3.text_policy``) raises ``ModuleNotFoundError`` saying where the
module went, instead of a bare "No module named". Each package installs its own table on import
(``install_moved_modules``); the finder answers only for the exact old names it was given.
"""

from __future__ import annotations

import importlib.abc
import sys
from collections.abc import Mapping


class MovedModuleFinder(importlib.abc.MetaPathFinder):
    """A meta path finder that raises ``ModuleNotFoundError`` (naming the new place) for modules that moved."""

    def __init__(self, moved: Mapping[str, str]):
        self.moved = dict(moved)

    def find_spec(self, fullname, path=None, target=None):
        new = self.moved.get(fullname)
        if new is None:
            return None
        raise ModuleNotFoundError(f"{fullname} moved to {new} in rlhf-gym 0.2: import it from there", name=fullname)


def install_moved_modules(moved: Mapping[str, str]) -> MovedModuleFinder:
    """Add a finder for ``moved`` (old dotted name -> new dotted name) to ``sys.meta_path``, once per table."""
    for finder in sys.meta_path:
        if isinstance(finder, MovedModuleFinder) and finder.moved == dict(moved):
            return finder
    finder = MovedModuleFinder(moved)
    sys.meta_path.append(finder)  # last: a module that exists under the old name is still found first
    return finder
