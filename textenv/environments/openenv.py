"""OpenEnv environment servers as turn environments: specs ``"openenv:<url>"`` and
``"openenv:<module>:<ClientClass>@<url>"`` (``pip install 'rlhf-gym[openenv]'``; package ``openenv-core``, import
name ``openenv``).

An OpenEnv environment (https://github.com/meta-pytorch/OpenEnv) runs as a server (FastAPI; often a Docker container
or a Hugging Face Space); a client keeps one WebSocket session per connection (``/ws``: ``reset``, ``step``,
``state``), and ``GET /schema`` gives the JSON schemas of the server's action and observation. Actions and
observations are pydantic models with named fields, so the adapter needs to know which field carries the text:

- the action's text field: ``action_field``, else the action schema's only string field (besides ``metadata``);
- the observation's text field: ``observation_field``, else the observation schema's only string field (besides
  ``done``, ``reward``, ``metadata``). The observation's other fields go to ``info``.

``"openenv:http://host:port"`` talks through ``openenv.core.GenericEnvClient`` (plain dicts; nothing of the
environment's package needs to be installed). ``"openenv:<module>:<ClientClass>@http://host:port"`` uses an
installed environment package's typed client (an ``EnvClient[Action, Observation, State]`` subclass, e.g.
``echo_env:EchoEnv``); the action class is read from its type parameters (or given as ``action_class``).

``reward`` is the server's reward (``None`` -> 0.0), ``terminated`` its ``done``; OpenEnv has no truncation signal,
so ``truncated`` is False. ``reset(seed, options)`` sends the seed and the options as reset keywords (the server
passes those its environment's ``reset`` accepts). Each instance holds one WebSocket session (opened at the first
reset) and the sync client's background event-loop thread; ``close()`` ends both. A server serves one session at a
time unless started with ``max_concurrent_envs`` (and an environment marked ``SUPPORTS_CONCURRENT_SESSIONS``): a
vector env with n rows on one server needs n. Nothing is downloaded; the server must be reachable.
"""

from __future__ import annotations

import json
import typing
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from textenv.environments.base import (
    EnvironmentSpecError,
    TurnEnvironment,
    TurnEnvironmentTypeError,
    check_reset_result,
    check_step_result,
    require,
)

__all__ = ["OpenEnvEnvironment", "fetch_schema"]

_OBSERVATION_CONTROL = ("done", "reward", "metadata")  # fields every OpenEnv observation has besides its own


def fetch_schema(base_url: str, timeout_s: float = 30.0) -> dict[str, Any]:
    """``GET <base_url>/schema`` of an OpenEnv server: ``{"action": ..., "observation": ..., "state": ...}``."""
    url = base_url.rstrip("/") + "/schema"
    scheme, rest = url.split("://", 1) if "://" in url else ("http", url)
    scheme = {"ws": "http", "wss": "https"}.get(scheme, scheme)  # the WebSocket address of a server is fine too
    url = f"{scheme}://{rest}"
    host = urllib.parse.urlsplit(url).hostname
    # a proxy set for the outside world must not carry requests to a server on this machine (OpenEnv's own client
    # bypasses proxies for localhost too)
    handlers = [urllib.request.ProxyHandler({})] if host in ("localhost", "127.0.0.1", "::1") else []
    try:
        with urllib.request.build_opener(*handlers).open(url, timeout=timeout_s) as response:
            return json.loads(response.read())
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise ConnectionError(f"OpenEnv server {base_url}: GET /schema failed ({e}); is the server running at this "
                              "address?") from e


def _is_text(field: dict[str, Any]) -> bool:
    return field.get("type") == "string" or any(option.get("type") == "string" for option in field.get("anyOf", ()))


def _text_field(schema: dict[str, Any], given: str | None, ignore: tuple[str, ...], what: str, where: str) -> str:
    """The field of JSON schema ``schema`` that carries the text: ``given`` if it is a field, else the only string
    field not in ``ignore`` (the only required one, when there are several)."""
    properties = schema.get("properties", {})
    if given is not None:
        if given not in properties:
            raise EnvironmentSpecError(f"OpenEnv server {where}: its {what} has no field {given!r} "
                                       f"(fields: {', '.join(sorted(properties))})")
        return given
    texts = [name for name, field in properties.items() if name not in ignore and _is_text(field)]
    if len(texts) > 1:
        texts = [name for name in texts if name in schema.get("required", ())] or texts
    if len(texts) != 1:
        found = f"string fields {texts}" if texts else "no string field"
        raise EnvironmentSpecError(f"OpenEnv server {where}: its {what} has {found} (all fields: "
                                   f"{', '.join(sorted(properties))}); say which carries the text with {what}_field=")
    return texts[0]


def _action_class_of(client_class: type) -> type | None:
    """``Action`` of a typed client ``class X(EnvClient[Action, Observation, State])``, or None."""
    from openenv.core.env_client import EnvClient

    for klass in client_class.__mro__:
        for base in getattr(klass, "__orig_bases__", ()):
            origin, args = typing.get_origin(base), typing.get_args(base)
            if isinstance(origin, type) and issubclass(origin, EnvClient) and args and isinstance(args[0], type):
                return args[0]
    return None


class OpenEnvEnvironment(TurnEnvironment):
    """The OpenEnv environment served at ``base_url`` (``http(s)://`` or ``ws(s)://``), one WebSocket session.

    ``client_class``: a typed ``EnvClient`` subclass (default: ``GenericEnvClient``, plain dicts); ``action_class``:
    its action model when its type parameters do not say; ``action_field`` / ``observation_field``: the text fields
    when the schemas have more than one string field; ``timeout_s``: for connecting and for each reply."""

    def __init__(self, base_url: str, *, client_class: type | None = None, action_class: type | None = None,
                 action_field: str | None = None, observation_field: str | None = None, timeout_s: float = 60.0):
        require("openenv", "openenv", "openenv-core", "an OpenEnv environment ('openenv:<url>')")
        from openenv.core.generic_client import GenericEnvClient

        self.name = f"openenv:{base_url}"
        schema = fetch_schema(base_url, timeout_s)
        self.action_field = _text_field(schema.get("action", {}), action_field, ("metadata",), "action", base_url)
        self.observation_field = _text_field(schema.get("observation", {}), observation_field, _OBSERVATION_CONTROL,
                                             "observation", base_url)
        self.action_class = None
        if client_class is not None and client_class is not GenericEnvClient:
            self.action_class = action_class or _action_class_of(client_class)
            if self.action_class is None:
                raise EnvironmentSpecError(f"OpenEnv client {client_class.__qualname__} does not name its action class"
                                           " (EnvClient[Action, Observation, State]); pass action_class=")
        client = (client_class or GenericEnvClient)(base_url=base_url, connect_timeout_s=timeout_s,
                                                    message_timeout_s=timeout_s)
        self.client = client.sync()  # its own event loop on a background thread; connects at the first reset

    def reset(self, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
        keywords = dict(options or {})
        if seed is not None:
            keywords["seed"] = seed
        result = self.client.reset(**keywords)
        return check_reset_result(self.name, self._observation(result.observation))

    def step(self, action: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        fields = {self.action_field: action}
        result = self.client.step(self.action_class(**fields) if self.action_class is not None else fields)
        observation, info = self._observation(result.observation)
        reward = 0.0 if result.reward is None else result.reward
        return check_step_result(self.name, (observation, reward, result.done, False, info))

    def _observation(self, observation: Any) -> tuple[str, dict[str, Any]]:
        """(text, info) from an observation: a dict (generic client) or a pydantic model (typed client)."""
        fields = dict(observation.model_dump() if hasattr(observation, "model_dump") else observation)
        if self.observation_field not in fields:
            raise TurnEnvironmentTypeError(f"turn environment {self.name}: the observation has no field "
                                           f"{self.observation_field!r}: {sorted(fields)}")
        text = fields.pop(self.observation_field)
        return text, {name: value for name, value in fields.items() if name not in ("done", "reward")}

    def close(self) -> None:
        """End the session and stop the client's event-loop thread."""
        self.client.close()
