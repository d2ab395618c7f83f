"""The turn-level text environment protocol (GEM's API), its base class, and the checker that guards its boundary.

A turn environment is what answers the policy in a multi-turn ``TextGen-v0`` episode::

    observation, info = environment.reset(seed=None, options=None)            # the first user turn (the task)
    observation, reward, terminated, truncated, info = environment.step(text)  # text: the policy's whole turn
    environment.close()                                                        # optional

It is Gymnasium's signature with strings on both sides, exactly the API of GEM (Liu et al. 2025,
https://github.com/axon-rl/gem, ``gem.core.Env``). Three ways to be one:

- subclass :class:`TurnEnvironment` (a plain class: ``reset`` seeds ``self.np_random`` like Gymnasium's);
- any object with those methods (duck typing; :class:`TurnEnvironmentProtocol` says so at run time);
- an adapter of this package (GEM, TextArena, OpenEnv), built from a spec by ``make_environment_factory``.

Whatever it is, :func:`checked` wraps it so that every value crossing the boundary is the right kind (a ``str``
observation, a finite ``float`` reward, ``bool`` flags, a ``dict`` info) and the calls come in a valid order; a
violation raises a :class:`TurnEnvironmentError` that names the environment and what was wrong.
"""

from __future__ import annotations

import importlib.util
import inspect
import math
import numbers
import reprlib
from typing import Any, Protocol, runtime_checkable

import numpy as np

__all__ = ["CheckedEnvironment", "EnvironmentSpecError", "EnvironmentUnavailableError", "TurnEnvironment",
           "TurnEnvironmentError", "TurnEnvironmentProtocol", "TurnEnvironmentTypeError", "TurnEpisodeEndedError",
           "check_reset_result", "check_step_result", "checked", "require"]

_show = reprlib.Repr()
_show.maxstring = _show.maxother = 80


class TurnEnvironmentError(ValueError):
    """A turn environment broke the protocol: it returned a value of the wrong kind, or was called out of order."""


class TurnEnvironmentTypeError(TurnEnvironmentError, TypeError):
    """A value of the wrong type crossed the boundary: an observation that is not a ``str``, a reward that is not a
    number, a flag that is not a ``bool``, an info that is not a ``dict``, an action that is not a ``str``."""


class TurnEpisodeEndedError(TurnEnvironmentError, RuntimeError):
    """``step()`` before ``reset()``, after the episode ended (terminated or truncated), or after ``close()``."""


class EnvironmentSpecError(ValueError):
    """A spec given to ``make_environment_factory`` does not name an environment that can be made (an unknown id or
    source, a bad import path, a multi-player game, an instance asked for twice)."""


class EnvironmentUnavailableError(ImportError):
    """The optional package an environment needs is not installed; the message names the extra to install."""


def require(module: str, extra: str, package: str, what: str) -> Any:
    """Import optional ``module`` (pip package ``package``, rlhf-gym extra ``extra``) for ``what``, or raise
    :class:`EnvironmentUnavailableError` in one line saying what to install."""
    if importlib.util.find_spec(module) is None:
        raise EnvironmentUnavailableError(
            f"{what} needs the package {package!r} (import name {module!r}), which is not installed: "
            f"pip install 'rlhf-gym[{extra}]'")
    return importlib.import_module(module)


@runtime_checkable
class TurnEnvironmentProtocol(Protocol):
    """Any object with GEM's two methods is a turn environment (``close()`` is optional). ``isinstance`` checks only
    that the methods exist; :func:`checked` checks what they return."""

    def reset(self, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
        ...

    def step(self, action: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        ...


class TurnEnvironment:
    """Base class for a user's own turn environment: the other side of a multi-turn conversation.

    The contract (GEM's API; :func:`checked` enforces it):

    - ``reset(seed=None, options=None) -> (observation, info)``: start an episode. ``observation`` (``str``) is the
      first user turn, e.g. the task; ``info`` is a ``dict``. Call ``super().reset(seed=seed)`` first: it seeds
      ``self.np_random``, the only source of randomness an environment should draw from (as in Gymnasium), so that
      a seed reproduces the episode and environments of a vector env do not share a stream.
    - ``step(action) -> (observation, reward, terminated, truncated, info)``: ``action`` (``str``) is the policy's
      whole turn. ``observation`` (``str``) is the reply, appended to the conversation as the next user turn;
      ``reward`` (a finite number) is this turn's reward, 0.0 when there is none yet (sparse rewards are fine);
      ``terminated`` (``bool``): the task ended (solved, failed, given up); ``truncated`` (``bool``): the episode was
      cut short from outside the task (a turn limit); ``info``: a ``dict``. After either flag, ``reset()`` before
      the next ``step()``.
    - ``close()``: release what the environment holds (connections, processes). The default does nothing.

    Each instance is one conversation: keep per-episode state on ``self``, and give a vector env a class or factory so
    that each row gets its own instance. Example::

        class Countdown(TurnEnvironment):
            def reset(self, seed=None, options=None):
                super().reset(seed=seed)
                self.target = int(self.np_random.integers(1, 10))
                return "Guess my number (1-9).", {}

            def step(self, action):
                won = action.strip() == str(self.target)
                return ("Yes!" if won else "No."), float(won), won, False, {}
    """

    _np_random: np.random.Generator | None = None

    @property
    def np_random(self) -> np.random.Generator:
        """This environment's random generator, seeded by ``reset(seed=...)`` (unseeded until then)."""
        if self._np_random is None:
            self._np_random = np.random.default_rng()
        return self._np_random

    def reset(self, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
        """Seed ``self.np_random`` when ``seed`` is given (subclasses call this first, then return the first
        ``(observation, info)``)."""
        if seed is not None:
            self._np_random = np.random.default_rng(seed)

    def step(self, action: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        raise NotImplementedError(f"{type(self).__name__}.step(action) must return "
                                  "(observation, reward, terminated, truncated, info)")

    def close(self) -> None:
        """Release resources; nothing by default."""


# --- the checks, one function per kind of value; adapters call check_*_result on what their package returned ---

def _kind(value: Any) -> str:
    return f"{type(value).__name__} {_show.repr(value)}"


def _observation(name: str, where: str, value: Any) -> str:
    if isinstance(value, str):
        return str(value)  # numpy.str_ and other str subclasses become plain str
    raise TurnEnvironmentTypeError(f"turn environment {name}: {where} returned an observation that is not a str "
                                   f"(the text shown to the policy as the next user turn): {_kind(value)}")


def _reward(name: str, value: Any) -> float:
    if isinstance(value, np.ndarray) and value.shape == () and value.dtype.kind in "biuf":
        value = value.item()
    if not isinstance(value, numbers.Real):
        hint = "; return 0.0 for no reward" if value is None else ""
        raise TurnEnvironmentTypeError(f"turn environment {name}: step() returned a reward that is not a real number:"
                                       f" {_kind(value)}{hint}")
    reward = float(value)
    if not math.isfinite(reward):
        raise TurnEnvironmentError(f"turn environment {name}: step() returned a reward that is not finite: {reward}")
    return reward


def _flag(name: str, flag: str, value: Any) -> bool:
    if isinstance(value, bool | np.bool_):
        return bool(value)
    raise TurnEnvironmentTypeError(f"turn environment {name}: step() returned {flag} that is not a bool: "
                                   f"{_kind(value)} (the order is observation, reward, terminated, truncated, info)")


def _info(name: str, where: str, value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        return value
    hint = "; return {} for no info" if value is None else ""
    raise TurnEnvironmentTypeError(f"turn environment {name}: {where} returned an info that is not a dict: "
                                   f"{_kind(value)}{hint}")


def check_reset_result(name: str, result: Any) -> tuple[str, dict[str, Any]]:
    """``(observation, info)`` from what ``reset()`` of environment ``name`` returned, or a
    :class:`TurnEnvironmentError` saying what is wrong with it."""
    if not isinstance(result, tuple | list) or len(result) != 2:
        size = f" of {len(result)} values" if isinstance(result, tuple | list) else ""
        raise TurnEnvironmentTypeError(f"turn environment {name}: reset() must return a 2-tuple (observation, info),"
                                       f" got {type(result).__name__}{size}: {_show.repr(result)}")
    return _observation(name, "reset()", result[0]), _info(name, "reset()", result[1])


def check_step_result(name: str, result: Any) -> tuple[str, float, bool, bool, dict[str, Any]]:
    """``(observation, reward, terminated, truncated, info)`` from what ``step()`` of environment ``name`` returned,
    with harmless types made plain (numpy bools and numbers, an int reward), or a :class:`TurnEnvironmentError`."""
    if not isinstance(result, tuple | list) or len(result) != 5:
        size = f" of {len(result)} values" if isinstance(result, tuple | list) else ""
        hint = (" (Gym's old (observation, reward, done, info)? split done into terminated and truncated)"
                if isinstance(result, tuple | list) and len(result) == 4 else "")
        raise TurnEnvironmentTypeError(f"turn environment {name}: step() must return a 5-tuple (observation, reward,"
                                       f" terminated, truncated, info), got {type(result).__name__}{size}{hint}")
    observation, reward, terminated, truncated, info = result
    return (_observation(name, "step()", observation), _reward(name, reward), _flag(name, "terminated", terminated),
            _flag(name, "truncated", truncated), _info(name, "step()", info))


def _check_seed(name: str, seed: Any) -> int | None:
    if seed is None:
        return None
    if isinstance(seed, numbers.Integral) and not isinstance(seed, bool | np.bool_) and seed >= 0:
        return int(seed)
    raise TurnEnvironmentTypeError(f"turn environment {name}: reset(seed=...) takes None or an int >= 0, "
                                   f"got {_kind(seed)}")


def _takes_options(reset: Any) -> bool:
    """Whether ``reset`` accepts ``options`` (GEM's own ``Env.reset`` takes only ``seed``)."""
    try:
        parameters = inspect.signature(reset).parameters.values()
    except (TypeError, ValueError):  # a builtin or C callable without a signature: assume the full protocol
        return True
    return any(p.name == "options" or p.kind is p.VAR_KEYWORD for p in parameters)


class CheckedEnvironment(TurnEnvironment):
    """A turn environment whose every return is checked and made plain, and whose calls must come in order
    (``reset`` before ``step``, no ``step`` after the episode ended or after ``close``). ``env`` is the wrapped
    object, ``name`` the name errors use (its spec, or its class).

    ``reset`` without ``options`` in its signature (GEM's style) is called with the seed alone; passing options to
    it is an error."""

    def __init__(self, env: Any, name: str | None = None):
        self.name = name or _default_name(env)
        for method in ("reset", "step"):
            if not callable(getattr(env, method, None)):
                raise TurnEnvironmentTypeError(f"turn environment {self.name}: {type(env).__name__} has no {method}()"
                                               "; a turn environment needs reset(seed, options) and step(action)")
        self.env = env
        self._takes_options = _takes_options(env.reset)
        self._state = "new"  # new -> running <-> ended; closed is final
        self._turns = 0

    def reset(self, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
        if self._state == "closed":
            raise TurnEpisodeEndedError(f"turn environment {self.name}: reset() after close()")
        seed = _check_seed(self.name, seed)
        if options is not None and not isinstance(options, dict):
            raise TurnEnvironmentTypeError(f"turn environment {self.name}: reset(options=...) takes None or a dict, "
                                           f"got {_kind(options)}")
        if self._takes_options:
            result = self.env.reset(seed=seed, options=options)
        elif options:
            raise TurnEnvironmentError(f"turn environment {self.name}: its reset() takes no options, got {options!r}")
        else:
            result = self.env.reset(seed=seed)
        observation, info = check_reset_result(self.name, result)
        self._state, self._turns = "running", 0
        return observation, info

    def step(self, action: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        if self._state != "running":
            why = {"new": "before reset()", "closed": "after close()",
                   "ended": f"after the episode ended (at turn {self._turns}); call reset() first"}[self._state]
            raise TurnEpisodeEndedError(f"turn environment {self.name}: step() {why}")
        if not isinstance(action, str):
            raise TurnEnvironmentTypeError(f"turn environment {self.name}: step(action) takes the policy's turn as a "
                                           f"str, got {_kind(action)}")
        observation, reward, terminated, truncated, info = check_step_result(self.name, self.env.step(str(action)))
        self._turns += 1
        if terminated or truncated:
            self._state = "ended"
        return observation, reward, terminated, truncated, info

    def close(self) -> None:
        """Close the wrapped environment (once; later calls do nothing)."""
        if self._state == "closed":
            return
        self._state = "closed"
        close = getattr(self.env, "close", None)
        if callable(close):
            close()

    def __repr__(self) -> str:
        return f"CheckedEnvironment({self.name})"


def _default_name(env: Any) -> str:
    name = getattr(env, "name", None)
    return name if isinstance(name, str) and name else type(env).__qualname__


def checked(env: Any, name: str | None = None) -> CheckedEnvironment:
    """``env`` wrapped in a :class:`CheckedEnvironment` (returned as is when it already is one and no other name is
    asked for)."""
    if isinstance(env, CheckedEnvironment) and name in (None, env.name):
        return env
    return CheckedEnvironment(env, name)
