"""Private copies of the process-wide random streams, for environment packages that draw from them.

GEM and TextArena games seed and draw from the global ``random`` module (GEM's ``reset(seed)`` also seeds the legacy
global ``numpy.random``; ``reset()`` without a seed re-seeds both from the OS). Used as they are, every environment of
a vector env would share one stream, so a row's episode would depend on what the other rows did and on their order,
a seeded single env and a seeded vector row would disagree, and every reset would disturb the caller's own use of
``random``. Each adapter therefore holds its own copy of those streams and swaps it in around each call into the
package.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np

__all__ = ["PrivateGlobalRandom"]


class PrivateGlobalRandom:
    """One environment's own state of ``random`` and ``numpy.random`` (the legacy global ``RandomState``).

    ``with streams:`` installs this state, and on exit keeps what the environment drew and restores the caller's.
    Starts from fresh OS entropy; the package's own seeding (``random.seed(seed)`` inside ``reset``) then applies to
    this copy only. Not re-entrant and not thread-safe: the swap changes module globals, so calls into environments
    that use it must come from one thread at a time (as a vector env's step loop does)."""

    def __init__(self) -> None:
        self._python: Any = random.Random().getstate()
        self._numpy: Any = np.random.RandomState().get_state()
        self._caller: tuple[Any, Any] | None = None

    def __enter__(self) -> PrivateGlobalRandom:
        if self._caller is not None:
            raise RuntimeError("PrivateGlobalRandom is not re-entrant")
        self._caller = (random.getstate(), np.random.get_state())  # noqa: NPY002 - the legacy global is the point
        random.setstate(self._python)
        np.random.set_state(self._numpy)  # noqa: NPY002
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._caller is not None
        self._python, self._numpy = random.getstate(), np.random.get_state()  # noqa: NPY002
        random.setstate(self._caller[0])
        np.random.set_state(self._caller[1])  # noqa: NPY002
        self._caller = None
