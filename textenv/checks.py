"""The one validation helper of the toolkit: settings are checked where they enter (a config's ``__post_init__``, an
env's constructor, a file reader), with a message that names the setting, the bad value and what would do.

    check(self.group_size >= 2, f"group_size must be >= 2 (a group baseline needs two samples), got {...}")
    check_number("kl_coef", self.kl_coef, low=0)                     # a finite number >= 0
    check_number("rounds", self.rounds, low=1, integer=True)         # an int >= 1 (not a bool, not 2.0)
    check_number("label_timeout", self.label_timeout, low=0, low_open=True, none_ok=True)

Both raise ``ValueError`` (or the ``error`` given), which the CLI turns into one line and exit status 2.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

__all__ = ["check", "check_number"]


def check(ok: bool, message: str, error: type[Exception] = ValueError) -> None:
    """Raise ``error(message)`` unless ``ok``."""
    if not ok:
        raise error(message)


def check_number(name: str, value: Any, *, low: float | None = None, high: float | None = None,
                 low_open: bool = False, high_open: bool = False, integer: bool = False, none_ok: bool = False,
                 hint: str = "") -> None:
    """Check that setting ``name`` is a finite real number (an integer with ``integer``) in the range given by
    ``low`` / ``high`` (closed unless ``low_open`` / ``high_open``); None passes with ``none_ok``. ``hint`` is added
    to the message (what the value means, what to use)."""
    if value is None and none_ok:
        return
    kind = "an integer" if integer else "a finite number"
    bounds = []
    if low is not None:
        bounds.append(f"{'>' if low_open else '>='} {low:g}")
    if high is not None:
        bounds.append(f"{'<' if high_open else '<='} {high:g}")
    wanted = f"{name} must be {kind}{' ' + ' and '.join(bounds) if bounds else ''}"
    wanted += " (or None)" if none_ok else ""
    is_number = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if integer:
        is_number = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    ok = is_number and (isinstance(value, numbers.Integral) or math.isfinite(value))  # 10**400: no float
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        raise ValueError(f"{wanted}, got {value!r}{'; ' + hint if hint else ''}")
