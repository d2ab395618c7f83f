"""make_environment_factory: every form of spec, and an error a user can act on for every wrong one. Runs without
GEM, TextArena and OpenEnv installed (a missing package is simulated where the message is the point)."""

from __future__ import annotations

import importlib.util
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from textenv.environments import (
    CheckedEnvironment,
    EnvironmentFactory,
    EnvironmentSpecError,
    EnvironmentUnavailableError,
    InstanceFactory,
    make_environment_factory,
)

from . import user_envs
from .user_envs import Echo, GuessDigit

HERE = "tests.textenv.environments.user_envs"


def _play(env: CheckedEnvironment, actions: list[str]) -> list[tuple]:
    env.reset(seed=0)
    return [env.step(action) for action in actions]


def test_a_class_makes_a_new_checked_environment_per_call_with_the_keywords():
    factory = make_environment_factory(GuessDigit, high=3, max_turns=2)
    a, b = factory(), factory()
    assert isinstance(a, CheckedEnvironment) and a.env is not b.env
    assert a.name == "GuessDigit" and a.env.high == 3
    steps = _play(a, ["9", "9"])
    assert steps[-1][3] is True  # truncated after max_turns


def test_a_zero_argument_callable_is_a_factory():
    env = make_environment_factory(lambda: Echo(prefix="# "))()
    assert _play(env, ["hi"])[0][0] == "# hi"
    assert make_environment_factory(user_envs.make_echo)().env.prefix == "> "


def test_an_instance_is_handed_out_once_only():
    echo = Echo()
    factory = make_environment_factory(echo)
    assert isinstance(factory, InstanceFactory) and factory().env is echo
    with pytest.raises(EnvironmentSpecError, match=r"environment Echo was given as an instance.*vector env needs one "
                                                   r"per row.*pass its class or a zero-argument factory"):
        factory()
    with pytest.raises(EnvironmentSpecError, match=r"Echo is an instance, so keywords \['prefix'\] cannot be applied"):
        make_environment_factory(Echo(), prefix="x")


def test_import_paths_load_users_classes_factories_and_instances():
    env = make_environment_factory(f"{HERE}:GuessDigit", high=1)()
    assert env.name == f"{HERE}:GuessDigit" and env.env.high == 1
    assert make_environment_factory(f"{HERE}:make_echo")().env.prefix == "> "
    factory = make_environment_factory(f"{HERE}:SHARED_ECHO")
    assert factory().env is user_envs.SHARED_ECHO
    with pytest.raises(EnvironmentSpecError, match="given as an instance"):
        factory()
    assert make_environment_factory(f"{HERE}:Echo.step") is not None  # dotted attributes resolve


def test_a_factory_passes_through_and_pickles():
    factory = make_environment_factory(GuessDigit, high=2)
    assert make_environment_factory(factory) is factory
    copy = pickle.loads(pickle.dumps(factory))
    assert isinstance(copy, EnvironmentFactory) and copy().env.high == 2
    spec = pickle.loads(pickle.dumps(make_environment_factory(f"{HERE}:GuessDigit")))
    assert spec.name == f"{HERE}:GuessDigit"


@pytest.mark.parametrize("spec, message", [
    ("GuessDigit", r"'GuessDigit' names no source: use 'gem:<id>', 'textarena:<id>', 'openenv:<url>'"),
    ("gem:", r"'gem:' names no source"),
    ("no_such_module_xyz:Env", r"'no_such_module_xyz' is not a source \(gem, textarena, openenv\) and no module of "
                               r"that name can be imported; use 'gem:<id>'"),
    (f"{HERE}:Nope", rf"{HERE} has no attribute 'Nope'"),
    (f"{HERE}:Echo.nope", rf"{HERE}.Echo has no attribute 'nope'"),
    (f"{HERE}:__doc__", r"must be a turn environment class, instance or factory, or a string"),
    (42, r"must be a turn environment class, instance or factory.*got int 42"),
])
def test_specs_that_name_nothing_say_what_would(spec, message):
    with pytest.raises(EnvironmentSpecError, match=message):
        make_environment_factory(spec)


def test_a_class_without_the_methods_is_refused():
    class NoStep:
        def reset(self, seed=None, options=None):
            return "", {}

    with pytest.raises(EnvironmentSpecError, match=r"class .*NoStep has no step\(\); a turn environment needs"):
        make_environment_factory(NoStep)


@pytest.fixture
def installed(monkeypatch):
    """Pretend which optional packages are installed: ``installed({"gem": False})``."""
    real = importlib.util.find_spec

    def pretend(packages: dict[str, bool]) -> None:
        def find_spec(name, *args, **kwargs):
            if name in packages:
                return real("json") if packages[name] else None
            return real(name, *args, **kwargs)

        monkeypatch.setattr(importlib.util, "find_spec", find_spec)

    return pretend


@pytest.mark.parametrize("spec, package, extra", [
    ("gem:game:GuessTheNumber-v0-easy", "gem-llm", "gem"),
    ("textarena:GuessTheNumber-v0", "textarena", "textarena"),
    ("openenv:http://localhost:8000", "openenv-core", "openenv"),
])
def test_a_missing_package_names_the_extra_to_install(installed, spec, package, extra):
    installed({spec.partition(":")[0]: False})
    with pytest.raises(EnvironmentUnavailableError, match=rf"needs the package '{package}', which is not installed: "
                                                          rf"pip install 'rlhf-gym\[{extra}\]'$"):
        make_environment_factory(spec)


def test_adapters_made_directly_name_the_extra_too(installed):
    from textenv.environments import GemEnvironment, OpenEnvEnvironment, TextArenaEnvironment

    installed({"gem": False, "textarena": False, "openenv": False})
    for make, extra in ((lambda: GemEnvironment("game:GuessTheNumber-v0-easy"), "gem"),
                        (lambda: TextArenaEnvironment("GuessTheNumber-v0"), "textarena"),
                        (lambda: OpenEnvEnvironment("http://localhost:8000"), "openenv")):
        with pytest.raises(EnvironmentUnavailableError, match=rf"pip install 'rlhf-gym\[{extra}\]'$"):
            make()


def test_adapter_specs_become_adapter_factories_without_importing_the_package(installed):
    installed({"gem": True, "textarena": True, "openenv": True})
    gem = make_environment_factory("gem:game:GuessTheNumber-v0-easy", max_turns=3)
    assert gem.target.__name__ == "GemEnvironment" and gem.kwargs == {"env_id": "game:GuessTheNumber-v0-easy",
                                                                      "max_turns": 3}
    arena = make_environment_factory("textarena:Mastermind-v0")
    assert arena.target.__name__ == "TextArenaEnvironment" and arena.kwargs == {"env_id": "Mastermind-v0"}
    for url in ("http://localhost:8000", "https://user-space.hf.space", "ws://127.0.0.1:9/x"):
        openenv = make_environment_factory(f"openenv:{url}", observation_field="text")
        assert openenv.target.__name__ == "OpenEnvEnvironment"
        assert openenv.kwargs == {"base_url": url, "observation_field": "text"} and openenv.name == f"openenv:{url}"
    typed = make_environment_factory(f"openenv:{HERE}:Echo@http://localhost:8000")
    assert typed.kwargs == {"base_url": "http://localhost:8000", "client_class": Echo}


@pytest.mark.parametrize("spec, message", [
    ("openenv:localhost:8000", r"an OpenEnv spec is 'openenv:<url>' \(e.g. 'openenv:http://localhost:8000'\) or "
                               r"'openenv:<module>:<ClientClass>@<url>'"),
    ("openenv:no_such_module_xyz:Client@http://localhost:8000", r"'no_such_module_xyz' is not a source"),
])
def test_malformed_openenv_specs_show_the_forms(installed, spec, message):
    installed({"openenv": True})
    with pytest.raises(EnvironmentSpecError, match=message):
        make_environment_factory(spec)


def test_importing_the_package_and_making_factories_imports_no_optional_package():
    code = ("import sys, textenv.environments as e\n"
            "for spec in ('gem:x', 'textarena:x', 'openenv:http://localhost:1'):\n"
            "    try: e.make_environment_factory(spec)\n"
            "    except e.EnvironmentUnavailableError: pass\n"
            "e.TurnEnvironment, e.checked, e.GemEnvironment, e.TextArenaEnvironment, e.OpenEnvEnvironment\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'gem', 'textarena', 'openenv', 'torch'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True,
                         cwd=Path(__file__).resolve().parents[3])
    assert out.stdout.strip() == "[]", out.stderr
