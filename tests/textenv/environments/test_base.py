"""The turn environment protocol, its base class and the boundary checker: every kind of broken return and every
out-of-order call raises a specific TurnEnvironmentError naming the environment; harmless types are made plain."""

from __future__ import annotations

import random

import numpy as np
import pytest

from textenv.environments import (
    CheckedEnvironment,
    TurnEnvironment,
    TurnEnvironmentError,
    TurnEnvironmentProtocol,
    TurnEnvironmentTypeError,
    TurnEpisodeEndedError,
    checked,
)
from textenv.environments.rng import PrivateGlobalRandom

from .user_envs import Echo, GuessDigit

GOOD_STEP = ("reply", 0.0, False, False, {})


class Scripted:
    """Returns what it is told to; records its calls."""

    def __init__(self, reset_result=("hi", {}), step_result=GOOD_STEP):
        self.reset_result, self.step_result, self.calls = reset_result, step_result, []

    def reset(self, seed=None, options=None):
        self.calls.append(("reset", seed, options))
        return self.reset_result

    def step(self, action):
        self.calls.append(("step", action))
        return self.step_result


def test_error_classes_say_what_kind_of_error_they_are():
    assert issubclass(TurnEnvironmentError, ValueError)
    assert issubclass(TurnEnvironmentTypeError, TurnEnvironmentError) and issubclass(TurnEnvironmentTypeError,
                                                                                     TypeError)
    assert issubclass(TurnEpisodeEndedError, TurnEnvironmentError) and issubclass(TurnEpisodeEndedError, RuntimeError)


def test_the_protocol_holds_for_subclasses_duck_types_and_the_checker_only():
    assert isinstance(GuessDigit(), TurnEnvironmentProtocol)
    assert isinstance(Echo(), TurnEnvironmentProtocol)
    assert isinstance(checked(Echo()), TurnEnvironmentProtocol)
    assert not isinstance(object(), TurnEnvironmentProtocol)


def test_base_class_seeds_np_random_like_gymnasium():
    a, b = GuessDigit(high=1000), GuessDigit(high=1000)
    a.reset(seed=3)
    b.reset(seed=3)
    assert a.target == b.target
    b.reset(seed=4)
    assert a.target != b.target  # seeded, so not a matter of chance
    with pytest.raises(NotImplementedError, match="must return"):
        TurnEnvironment().step("x")
    TurnEnvironment().close()


def test_a_subclass_plays_to_the_end_through_the_checker():
    env = checked(GuessDigit(max_turns=10))
    observation, info = env.reset(seed=0)
    assert observation.startswith("Guess my number") and info == {"max_turns": 10}
    low, high, reward, terminated = 0, 9, 0.0, False
    while not terminated:
        guess = (low + high) // 2
        observation, reward, terminated, truncated, info = env.step(str(guess))
        assert not truncated
        low, high = (guess + 1, high) if observation == "Higher." else (low, guess - 1)
    assert observation == "Right!" and reward == 1.0
    with pytest.raises(TurnEpisodeEndedError, match=r"GuessDigit: step\(\) after the episode ended"):
        env.step("1")


def test_a_duck_typed_class_without_options_gets_the_seed_alone():
    inner = Echo()
    env = checked(inner)
    assert env.reset(seed=1) == ("Say something.", {})
    with pytest.raises(TurnEnvironmentError, match="its reset.. takes no options"):
        env.reset(options={"level": 2})
    observation, reward, terminated, truncated, _ = env.step("bye")
    assert (observation, reward, terminated, truncated) == ("You said: bye", 3.0, True, False)
    assert type(reward) is float  # an int reward leaves as a float
    env.close()
    env.close()  # once is enough; the second does nothing
    assert inner.closed


def test_plain_types_leave_the_checker():
    env = checked(Scripted(reset_result=[np.str_("hi"), {}],
                           step_result=(np.str_("ok"), np.float32(0.5), np.bool_(True), np.bool_(False), {"k": 1})))
    observation, _ = env.reset(seed=np.int64(4))
    assert type(observation) is str and env.env.calls[0] == ("reset", 4, None)
    observation, reward, terminated, truncated, info = env.step("x")
    assert type(observation) is str and type(reward) is float and reward == 0.5
    assert terminated is True and truncated is False and info == {"k": 1}
    for reward in (True, 2, np.array(1.5)):
        env = checked(Scripted(step_result=("ok", reward, False, False, {})))
        env.reset()
        assert type(env.step("x")[1]) is float


@pytest.mark.parametrize("reset_result, message", [
    ("hi", r"reset\(\) must return a 2-tuple \(observation, info\), got str"),
    (("hi", {}, 0), r"reset\(\) must return a 2-tuple .*got tuple of 3 values"),
    (({"text": "hi"}, {}), r"reset\(\) returned an observation that is not a str .*dict"),
    (("hi", None), r"reset\(\) returned an info that is not a dict: NoneType None; return \{\} for no info"),
])
def test_broken_reset_returns_are_named(reset_result, message):
    with pytest.raises(TurnEnvironmentTypeError, match="turn environment Scripted: " + message):
        checked(Scripted(reset_result=reset_result)).reset()


@pytest.mark.parametrize("step_result, error, message", [
    (("a", 0.0, True, {}), TurnEnvironmentTypeError, r"5-tuple .*got tuple of 4 values \(Gym's old"),
    ("a", TurnEnvironmentTypeError, r"must return a 5-tuple"),
    ((b"a", 0.0, False, False, {}), TurnEnvironmentTypeError, r"observation that is not a str .*bytes"),
    (("a", None, False, False, {}), TurnEnvironmentTypeError, r"reward that is not a real number: NoneType None; "
                                                              r"return 0.0 for no reward"),
    (("a", "1", False, False, {}), TurnEnvironmentTypeError, r"reward that is not a real number: str '1'"),
    (("a", float("nan"), False, False, {}), TurnEnvironmentError, r"reward that is not finite: nan"),
    (("a", float("inf"), False, False, {}), TurnEnvironmentError, r"reward that is not finite: inf"),
    (("a", 0.0, 1, False, {}), TurnEnvironmentTypeError, r"terminated that is not a bool: int 1"),
    (("a", 0.0, False, None, {}), TurnEnvironmentTypeError, r"truncated that is not a bool: NoneType"),
    (("a", 0.0, False, False, ["x"]), TurnEnvironmentTypeError, r"step\(\) returned an info that is not a dict"),
])
def test_broken_step_returns_are_named(step_result, error, message):
    env = checked(Scripted(step_result=step_result), name="my-env")
    env.reset()
    with pytest.raises(error, match="turn environment my-env: .*" + message) as raised:
        env.step("x")
    if error is TurnEnvironmentError:
        assert not isinstance(raised.value, TypeError)


def test_calls_out_of_order_are_refused():
    env = checked(Scripted())
    with pytest.raises(TurnEpisodeEndedError, match=r"step\(\) before reset\(\)"):
        env.step("x")
    for flags in ((True, False), (False, True)):
        env = checked(Scripted(step_result=("a", 0.0, *flags, {})))
        env.reset()
        env.step("x")
        with pytest.raises(TurnEpisodeEndedError, match=r"after the episode ended \(at turn 1\); call reset"):
            env.step("x")
        env.reset()  # a new episode may start
        env.step("x")
    env.close()
    with pytest.raises(TurnEpisodeEndedError, match=r"step\(\) after close\(\)"):
        env.step("x")
    with pytest.raises(TurnEpisodeEndedError, match=r"reset\(\) after close\(\)"):
        env.reset()


@pytest.mark.parametrize("kwargs, message", [
    ({"seed": -1}, r"seed=...\) takes None or an int >= 0, got int -1"),
    ({"seed": 1.5}, r"got float 1.5"),
    ({"seed": True}, r"got bool True"),
    ({"seed": "3"}, r"got str '3'"),
    ({"options": ["a"]}, r"options=...\) takes None or a dict, got list"),
])
def test_bad_reset_arguments_are_refused(kwargs, message):
    with pytest.raises(TurnEnvironmentTypeError, match=message):
        checked(Scripted()).reset(**kwargs)


def test_actions_must_be_text():
    env = checked(Scripted())
    env.reset()
    with pytest.raises(TurnEnvironmentTypeError, match=r"step\(action\) takes the policy's turn as a str, got int 5"):
        env.step(5)
    assert env.step(np.str_("x")) and type(env.env.calls[-1][1]) is str


def test_an_object_without_the_methods_is_not_an_environment():
    with pytest.raises(TurnEnvironmentTypeError, match="turn environment object: object has no reset"):
        checked(object())


def test_checked_does_not_wrap_twice():
    env = checked(Echo())
    assert checked(env) is env and checked(env, "Echo") is env
    renamed = checked(env, "other")
    assert isinstance(renamed, CheckedEnvironment) and renamed.name == "other"


def test_private_global_random_keeps_streams_apart():
    # the legacy global numpy stream is what GEM seeds, so this test uses it on purpose (NPY002)
    streams = PrivateGlobalRandom()
    random.seed(1)
    np.random.seed(1)  # noqa: NPY002
    before = random.getstate(), np.random.get_state()[1].copy()  # noqa: NPY002
    with streams:
        random.seed(7)
        np.random.seed(7)  # noqa: NPY002
        first = random.random(), np.random.random()  # noqa: NPY002
    assert random.getstate() == before[0] and (np.random.get_state()[1] == before[1]).all()  # noqa: NPY002
    with streams:  # the environment's streams go on where they left off
        second = random.random(), np.random.random()  # noqa: NPY002
    random.seed(7)
    np.random.seed(7)  # noqa: NPY002
    assert [random.random(), random.random()] == [first[0], second[0]]
    assert [np.random.random(), np.random.random()] == [first[1], second[1]]  # noqa: NPY002
    with streams:
        with pytest.raises(RuntimeError, match="not re-entrant"):
            streams.__enter__()
