"""One entry point from whatever a user passes as ``environment=`` to a factory of checked turn environments.

    make_environment_factory(spec, **kwargs) -> factory;  factory() -> a CheckedEnvironment (a new one per call)

``spec`` may be:

- a class (a :class:`~textenv.environments.base.TurnEnvironment` subclass or any class with ``reset`` / ``step``) or
  a zero-argument callable returning an environment: each call makes a new one, with ``kwargs``;
- an environment instance: the factory hands it out once; a second call (a vector env wants one environment per
  row) raises, saying to pass a class or factory instead;
- a string:

  - ``"gem:<id>"``: GEM environment ``<id>``, e.g. ``"gem:game:GuessTheNumber-v0-easy"``;
  - ``"textarena:<id>"``: a TextArena single-player game, e.g. ``"textarena:GuessTheNumber-v0"``;
  - ``"openenv:<url>"``: an OpenEnv server through the generic client, e.g. ``"openenv:http://localhost:8000"``;
  - ``"openenv:<module>:<ClientClass>@<url>"``: an OpenEnv server through an installed environment package's typed
    client, e.g. ``"openenv:echo_env:EchoEnv@http://localhost:8000"``;
  - ``"<module>:<attr>"``: a class, factory or instance imported from ``module`` (``attr`` may be dotted), e.g.
    ``"my_package.envs:Countdown"``.

  ``kwargs`` go to the adapter (``gem.make`` / ``ta.make`` keywords, ``OpenEnvEnvironment``'s options). The first
  three prefixes are reserved: a module of the user's named ``gem``, ``textarena`` or ``openenv`` cannot be loaded
  this way (pass its class instead).

Factories are picklable when their target is (classes and adapters are), so subprocess vector envs can take them.
Nothing optional is imported here: a string spec only checks that its package is installed, and the package is
imported when the first environment is made (a typed OpenEnv client named in a spec is imported at once, as any
``"<module>:<attr>"`` is).
"""

from __future__ import annotations

import importlib
import importlib.util
import re
from collections.abc import Callable
from typing import Any

from textenv.environments.base import (
    CheckedEnvironment,
    EnvironmentSpecError,
    EnvironmentUnavailableError,
    TurnEnvironmentProtocol,
    checked,
)

__all__ = ["EnvironmentFactory", "InstanceFactory", "make_environment_factory"]

# prefix -> (adapter module, adapter class, import name, pip package, rlhf-gym extra)
ADAPTERS = {
    "gem": ("textenv.environments.gem", "GemEnvironment", "gem", "gem-llm", "gem"),
    "textarena": ("textenv.environments.textarena", "TextArenaEnvironment", "textarena", "textarena", "textarena"),
    "openenv": ("textenv.environments.openenv", "OpenEnvEnvironment", "openenv", "openenv-core", "openenv"),
}
_FORMS = ("'gem:<id>', 'textarena:<id>', 'openenv:<url>', 'openenv:<module>:<ClientClass>@<url>', or "
          "'<module>:<attr>' for your own class")
_TYPED_CLIENT = re.compile(r"(?P<module>[A-Za-z_][\w.]*):(?P<attr>[A-Za-z_][\w.]*)@(?P<url>.+)")
_URL = re.compile(r"(https?|wss?)://\S+")


class EnvironmentFactory:
    """Makes a new checked environment per call: ``target(**kwargs)`` wrapped by ``checked`` under ``name``."""

    def __init__(self, target: Callable[..., Any], kwargs: dict[str, Any], name: str):
        self.target, self.kwargs, self.name = target, kwargs, name

    def __call__(self) -> CheckedEnvironment:
        return checked(self.target(**self.kwargs), self.name)

    def __repr__(self) -> str:
        return f"EnvironmentFactory({self.name})"


class InstanceFactory:
    """Hands out one given environment instance, once: a second copy cannot be made from an instance."""

    def __init__(self, env: Any, name: str):
        self.env, self.name, self.used = env, name, False

    def __call__(self) -> CheckedEnvironment:
        if self.used:
            raise EnvironmentSpecError(
                f"environment {self.name} was given as an instance, and a second environment was asked for (a vector "
                "env needs one per row, and an instance is one conversation); pass its class or a zero-argument "
                "factory instead, e.g. environment=MyEnv or environment=lambda: MyEnv(...)")
        self.used = True
        return checked(self.env, self.name)

    def __repr__(self) -> str:
        return f"InstanceFactory({self.name})"


def make_environment_factory(spec: Any, **kwargs: Any) -> EnvironmentFactory | InstanceFactory:
    """A factory of :class:`~textenv.environments.base.CheckedEnvironment` from ``spec`` (see the module docstring
    for the forms); ``kwargs`` go to the class, callable or adapter. Raises :class:`EnvironmentSpecError` for a spec
    that names nothing usable and :class:`EnvironmentUnavailableError` when an optional package is missing."""
    if isinstance(spec, EnvironmentFactory | InstanceFactory) and not kwargs:
        return spec
    if isinstance(spec, str):
        return _from_string(spec, kwargs)
    return _from_object(spec, kwargs, _name_of(spec))


def _name_of(obj: Any) -> str:
    return getattr(obj, "__qualname__", None) or getattr(obj, "name", None) or type(obj).__qualname__


def _from_object(spec: Any, kwargs: dict[str, Any], name: str) -> EnvironmentFactory | InstanceFactory:
    if isinstance(spec, type):
        missing = [m for m in ("reset", "step") if not callable(getattr(spec, m, None))]
        if missing:
            raise EnvironmentSpecError(f"environment class {name} has no {' or '.join(m + '()' for m in missing)}; "
                                       "a turn environment needs reset(seed, options) and step(action)")
        return EnvironmentFactory(spec, kwargs, name)
    if isinstance(spec, TurnEnvironmentProtocol):
        if kwargs:
            raise EnvironmentSpecError(f"environment {name} is an instance, so keywords {sorted(kwargs)} cannot be "
                                       "applied to it; pass its class with the keywords instead")
        return InstanceFactory(spec, name)
    if callable(spec):
        return EnvironmentFactory(spec, kwargs, name)
    raise EnvironmentSpecError(f"environment must be a turn environment class, instance or factory, or a string "
                               f"{_FORMS}; got {type(spec).__name__} {spec!r}")


def _from_string(spec: str, kwargs: dict[str, Any]) -> EnvironmentFactory | InstanceFactory:
    prefix, colon, rest = spec.partition(":")
    if not colon or not prefix or not rest:
        raise EnvironmentSpecError(f"environment spec {spec!r} names no source: use {_FORMS}")
    if prefix not in ADAPTERS:
        return _from_object(_import_attribute(spec, prefix, rest), kwargs, spec)
    module, adapter, import_name, package, extra = ADAPTERS[prefix]
    if importlib.util.find_spec(import_name) is None:
        raise EnvironmentUnavailableError(f"environment spec {spec!r} needs the package {package!r}, which is not "
                                          f"installed: pip install 'rlhf-gym[{extra}]'")
    target = getattr(importlib.import_module(module), adapter)  # the adapter module imports its package lazily
    if prefix != "openenv":
        return EnvironmentFactory(target, {"env_id": rest, **kwargs}, spec)
    typed = _TYPED_CLIENT.fullmatch(rest)
    if typed:
        client = _import_attribute(spec, typed["module"], typed["attr"])
        return EnvironmentFactory(target, {"base_url": typed["url"], "client_class": client, **kwargs}, spec)
    if not _URL.fullmatch(rest):
        raise EnvironmentSpecError(f"environment spec {spec!r}: an OpenEnv spec is 'openenv:<url>' (e.g. "
                                   "'openenv:http://localhost:8000') or 'openenv:<module>:<ClientClass>@<url>'")
    return EnvironmentFactory(target, {"base_url": rest, **kwargs}, spec)


def _import_attribute(spec: str, module: str, attr: str) -> Any:
    """``module.attr`` (``attr`` may be dotted), or an :class:`EnvironmentSpecError` naming what is missing."""
    try:
        value = importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name is None or not (module == e.name or module.startswith(e.name + ".")):
            raise  # the module exists but one of its own imports failed: that error is the useful one
        raise EnvironmentSpecError(f"environment spec {spec!r}: {module!r} is not a source ({', '.join(ADAPTERS)}) "
                                   f"and no module of that name can be imported; use {_FORMS}") from e
    owner = module
    for part in attr.split("."):
        if not hasattr(value, part):
            raise EnvironmentSpecError(f"environment spec {spec!r}: {owner} has no attribute {part!r}")
        value, owner = getattr(value, part), f"{owner}.{part}"
    return value
