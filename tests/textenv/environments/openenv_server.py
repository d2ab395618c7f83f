"""A tiny OpenEnv text environment and its server, for the OpenEnv adapter's tests: built with openenv-core's own
server classes (``Environment``, ``Action``, ``Observation``, ``create_fastapi_app``) and served by uvicorn on a
thread of the test process. Also a typed client, as an environment package would ship one."""

from __future__ import annotations

import contextlib
import socket
import threading
import urllib.request
from collections.abc import Iterator
from typing import Any

import uvicorn
from openenv.core.client_types import StepResult
from openenv.core.env_client import EnvClient
from openenv.core.env_server import Environment, create_fastapi_app
from openenv.core.env_server.types import Action, Observation, State
from pydantic import Field

MAX_TURNS = 4


class SayAction(Action):
    message: str = Field(..., description="what the policy says")


class SayObservation(Observation):
    reply: str = Field(default="", description="what the environment says back")
    turn: int = Field(default=0, description="turns taken")


class PoliteEcho(Environment):
    """Echoes each message; reward 1.0 for a message that says "please"; done on "bye" or after MAX_TURNS."""

    SUPPORTS_CONCURRENT_SESSIONS = True

    def __init__(self) -> None:
        super().__init__()
        self._state = State(step_count=0)
        self.seed: int | None = None

    def reset(self, seed: int | None = None, episode_id: str | None = None, **kwargs: Any) -> SayObservation:
        self._state = State(step_count=0, episode_id=episode_id)
        self.seed = seed
        mood = kwargs.get("mood", "calm")
        return SayObservation(reply=f"Hello (seed {seed}, {mood}). Say something.", turn=0)

    def step(self, action: SayAction, timeout_s: float | None = None, **kwargs: Any) -> SayObservation:
        self._state.step_count += 1
        turn = self._state.step_count
        done = action.message == "bye" or turn >= MAX_TURNS
        return SayObservation(reply=f"You said: {action.message}", turn=turn, done=done,
                              reward=1.0 if "please" in action.message else 0.0)

    @property
    def state(self) -> State:
        return self._state


class SayClient(EnvClient[SayAction, SayObservation, State]):
    """The typed client an environment package would ship (OpenEnv's template client, shortened)."""

    def _step_payload(self, action: SayAction) -> dict[str, Any]:
        return {"message": action.message}

    def _parse_result(self, payload: dict[str, Any]) -> StepResult[SayObservation]:
        observation = SayObservation(**payload.get("observation", {}), done=payload.get("done", False),
                                     reward=payload.get("reward"))
        return StepResult(observation=observation, reward=payload.get("reward"), done=payload.get("done", False))

    def _parse_state(self, payload: dict[str, Any]) -> State:
        return State(**payload)


@contextlib.contextmanager
def serve(max_sessions: int = 4, timeout_s: float = 60.0) -> Iterator[str]:
    """Serve ``PoliteEcho`` on a free local port and yield its base URL once it answers ``/health``.

    The socket is bound and listening before the server starts, so there is no port race and no guessing: the
    health request waits in the socket's backlog until uvicorn accepts it (bounded by ``timeout_s``)."""
    app = create_fastapi_app(PoliteEcho, SayAction, SayObservation, max_concurrent_envs=max_sessions)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    # log_config=None: uvicorn must not reconfigure the test process's logging
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="openenv-test-server", daemon=True)
    thread.start()
    try:
        no_proxy = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with no_proxy.open(f"{url}/health", timeout=timeout_s) as response:
            assert response.status == 200
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout_s)
        sock.close()
