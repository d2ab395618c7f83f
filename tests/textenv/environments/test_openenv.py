"""OpenEnv: a real server (openenv-core's FastAPI app for a tiny text environment, served by uvicorn on a free local
port) and episodes through the adapter, by the generic client and by a typed client. Skipped when openenv-core (or
the server's uvicorn) is not installed."""

from __future__ import annotations

import socket

import pytest

pytest.importorskip("openenv")
pytest.importorskip("uvicorn")
pytest.importorskip("fastapi")

from textenv.environments import (  # noqa: E402 - after the skips, as the module needs openenv
    EnvironmentSpecError,
    OpenEnvEnvironment,
    make_environment_factory,
)
from textenv.environments.openenv import _text_field  # noqa: E402

from .openenv_server import MAX_TURNS, SayAction, SayClient, serve  # noqa: E402

pytestmark = pytest.mark.timeout(120)  # a generous bound on everything below, which takes about a second


@pytest.fixture(scope="module")
def server_url():
    with serve() as url:
        yield url


def test_an_episode_through_the_generic_client(server_url):
    env = make_environment_factory(f"openenv:{server_url}")()
    try:
        observation, info = env.reset(seed=3)
        assert observation == "Hello (seed 3, calm). Say something." and info == {"turn": 0}
        assert env.step("hi") == ("You said: hi", 0.0, False, False, {"turn": 1})
        assert env.step("please") == ("You said: please", 1.0, False, False, {"turn": 2})
        observation, reward, terminated, truncated, info = env.step("bye")
        assert (observation, reward, terminated, truncated, info) == ("You said: bye", 0.0, True, False, {"turn": 3})
        assert env.reset(options={"mood": "cheerful"})[0] == "Hello (seed None, cheerful). Say something."
        steps = [env.step("please") for _ in range(MAX_TURNS)]
        assert [step[2] for step in steps] == [False] * (MAX_TURNS - 1) + [True]  # the server's own turn limit
    finally:
        env.close()


def test_an_episode_through_a_typed_client_named_in_the_spec(server_url):
    spec = f"openenv:tests.textenv.environments.openenv_server:SayClient@{server_url}"
    env = make_environment_factory(spec)()
    try:
        assert env.env.action_class is SayAction and env.name == spec
        assert env.reset(seed=1)[0].startswith("Hello (seed 1")
        observation, reward, terminated, _, info = env.step("please, bye")
        assert (observation, reward, terminated) == ("You said: please, bye", 1.0, False)
        assert info == {"turn": 1, "metadata": {}}  # a typed observation keeps its metadata field
    finally:
        env.close()


def test_one_factory_serves_several_sessions_at_once(server_url):
    factory = make_environment_factory(f"openenv:{server_url}", client_class=SayClient)
    envs = [factory() for _ in range(3)]
    try:
        for seed, env in enumerate(envs):
            env.reset(seed=seed)
        replies = [env.step(f"row {i}") for i, env in enumerate(envs)]
        assert [reply[0] for reply in replies] == ["You said: row 0", "You said: row 1", "You said: row 2"]
    finally:
        for env in envs:
            env.close()


def test_text_fields_come_from_the_schema_or_are_named(server_url):
    env = OpenEnvEnvironment(server_url, action_field="message", observation_field="reply")
    assert (env.action_field, env.observation_field) == ("message", "reply")
    env.close()
    with pytest.raises(EnvironmentSpecError, match=r"its observation has no field 'text' \(fields: done, metadata, "
                                                   r"reply, reward, turn\)"):
        OpenEnvEnvironment(server_url, observation_field="text")
    two = {"properties": {"metadata": {"type": "object"}, "a": {"type": "string"},
                          "b": {"anyOf": [{"type": "string"}, {"type": "null"}]}}}
    with pytest.raises(EnvironmentSpecError, match=r"its observation has string fields \['a', 'b'\].*say which "
                                                   r"carries the text with observation_field="):
        _text_field(two, None, ("metadata",), "observation", "here")
    assert _text_field({**two, "required": ["b"]}, None, ("metadata",), "action", "here") == "b"
    with pytest.raises(EnvironmentSpecError, match=r"its action has no string field"):
        _text_field({"properties": {"n": {"type": "integer"}}}, None, (), "action", "here")


def test_a_server_that_is_not_there_is_named():
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens on it
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(ConnectionError, match=rf"OpenEnv server http://127.0.0.1:{port}: GET /schema failed .*is the "
                                              "server running"):
        make_environment_factory(f"openenv:http://127.0.0.1:{port}", timeout_s=30)()
