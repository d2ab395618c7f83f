"""How tests wait: for an event (a file, a line, a port, a process's exit, a store's state), polled, never for a
guessed duration. ``OUTER_TIMEOUT_S`` only bounds how long a broken test hangs: on a loaded 2-core machine a CLI
start alone costs seconds of imports and a run minutes, and the suite must pass there (issue 25)."""

from __future__ import annotations

import time
from collections.abc import Callable

OUTER_TIMEOUT_S = 600.0
POLL_S = 0.05


def wait_until(ready: Callable[[], object], what: str, timeout: float = OUTER_TIMEOUT_S,
               alive: Callable[[], object] | None = None, poll_s: float = POLL_S) -> object:
    """Poll ``ready()`` until it returns something true, and return that. Fails (AssertionError naming ``what``)
    after ``timeout`` seconds, or as soon as ``alive()`` returns something false (the process that should make
    ``what`` happen has died: no use waiting)."""
    deadline = time.monotonic() + timeout
    while True:
        result = ready()
        if result:
            return result
        if alive is not None and not alive():
            raise AssertionError(f"gave up waiting for {what}: what should make it happen has stopped")
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout:.0f} s")
        time.sleep(poll_s)
