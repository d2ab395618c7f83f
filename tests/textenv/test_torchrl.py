"""TorchRL drives TextGen-v0: ``GymEnv`` on the single env, ``GymEnv(..., num_envs=4)`` (TorchRL's own vectorised
entry point: four single envs in worker processes, every info key read at every step; issue 25), ``GymWrapper`` on
the vector env (num_envs=4, DISABLED autoreset, TorchRL's preferred mode): ``check_env_specs``, rollouts whose data
is the MDP's (rewards equal the KL penalty of the log-probs the info reader collects; a done row's next observation
is its final state, then a fresh prompt), and the clear refusal of NEXT_STEP instead of an AttributeError
(issue 15)."""

from __future__ import annotations

import multiprocessing

import gymnasium as gym
import pytest
import torch

import textenv  # noqa: F401  (registers TextGen-v0)
from textenv.testing import make_tiny_lm

PROMPTS = ["the movie was", "i loved this phone and", "it", "a really boring book but"]
N, KL, MAX_NEW = 4, 0.1, 3


@pytest.fixture(scope="module")
def torchrl():
    before = multiprocessing.get_start_method(allow_none=True)
    module = pytest.importorskip("torchrl")
    pytest.importorskip("torchrl.envs.libs.gym")
    # Importing torchrl sets the process-wide start method to "spawn"; the rest of the suite expects the default.
    multiprocessing.set_start_method(before, force=True)
    return module


@pytest.fixture(scope="module")
def settings():
    model, tok = make_tiny_lm()
    return {
        "model": model,
        "tokenizer": tok,
        "prompts": PROMPTS,
        "ref_model": make_tiny_lm(seed=7)[0],
        "kl_coef": KL,
        "max_new_tokens": MAX_NEW,
        "max_prompt_tokens": 6,
    }


def logprob_reader(batch: tuple[int, ...] = ()):
    """TorchRL's reader of the log-prob info keys; a batched env needs specs of its batch shape (without them
    TorchRL makes unbatched specs, which it then refuses for any vector env, CartPole's too)."""
    from torchrl.data import Unbounded
    from torchrl.envs.libs.gym import default_info_dict_reader

    keys = ["policy_logprob", "ref_logprob"]
    if not batch:
        return default_info_dict_reader(keys)  # issue 15's call, which raised on Python floats
    return default_info_dict_reader(keys, spec=[Unbounded(batch, dtype=torch.float32) for _ in keys])


def assert_rewards_are_the_kl_penalty(td):
    """No reward_fn: every reward is -kl_coef * (log pi - log pi_ref) of the info the reader collected."""
    nxt = td["next"]
    expected = -KL * (nxt["policy_logprob"] - nxt["ref_logprob"])
    assert nxt["policy_logprob"].abs().min() > 0  # read from info at every step, not zero-filled
    torch.testing.assert_close(nxt["reward"].squeeze(-1), expected, atol=1e-5, rtol=1e-4)


def test_gym_env_drives_the_single_env(torchrl, settings):
    from torchrl.envs import GymEnv
    from torchrl.envs.utils import check_env_specs

    env = GymEnv("TextGen-v0", **settings)
    check_env_specs(env)
    env.set_seed(0)
    td = env.rollout(50, break_when_any_done=False)
    assert td.batch_size == (50,) and int(td["next", "done"].sum()) >= 50 // MAX_NEW
    env.set_info_dict_reader(logprob_reader())  # issue 15: Python floats in info made this raise AttributeError
    check_env_specs(env)
    assert_rewards_are_the_kl_penalty(env.rollout(50, break_when_any_done=False))


def test_gym_wrapper_drives_the_vector_env_with_disabled_autoreset(torchrl, settings):
    from torchrl.envs import GymWrapper
    from torchrl.envs.utils import check_env_specs

    venv = gym.make_vec("TextGen-v0", num_envs=N, autoreset_mode="Disabled", **settings)
    env = GymWrapper(venv)  # issue 15: AttributeError, 'TextGenVectorEnv' object has no attribute 'autoreset_mode'
    check_env_specs(env)
    env.set_info_dict_reader(logprob_reader((N,)))
    check_env_specs(env)
    env.set_seed(0)
    td = env.rollout(50, break_when_any_done=False)
    assert td.batch_size == (N, 50)
    assert_rewards_are_the_kl_penalty(td)
    done = td["next", "done"].squeeze(-1)  # (N, 50)
    assert int(done.sum()) >= N * (50 // MAX_NEW)  # every episode lasts <= MAX_NEW steps
    prompt_lengths = {len(p.split()) for p in PROMPTS}
    now, nxt = td["attention_mask"].sum(-1), td["next", "attention_mask"].sum(-1)
    assert (nxt == now + 1).all()  # every step appends one token, the last one of an episode included
    for row, t in done.nonzero().tolist():
        if t + 1 < 50:  # TorchRL reset the row (reset_mask): the next step starts from a fresh prompt
            assert int(now[row, t + 1]) in prompt_lengths


def test_gym_wrapper_refuses_next_step_autoreset_clearly(torchrl, settings):
    """TorchRL reads the mode and names the ones it takes (before issue 15: an AttributeError)."""
    from torchrl.envs import GymWrapper

    venv = gym.make_vec("TextGen-v0", num_envs=N, **settings)
    with pytest.raises(RuntimeError, match="SAME_STEP or DISABLED"):
        GymWrapper(venv)
    assert venv.reset(seed=0)[0]["input_ids"].shape[0] == N  # the env itself is fine


def test_gym_env_with_worker_processes_reads_every_info_key(torchrl, settings):
    """Issue 25: ``GymEnv("textenv:TextGen-v0", num_envs=4)`` raised KeyError: 'prompt' (keys only at an episode's
    end, and text TorchRL cannot read). Now its own info reader takes every key at every step. (Gymnasium 1.x's
    AsyncVectorEnv resets in the step after an episode ends, and TorchRL gives the step that ends it its missing
    value, 0, for the observation and the info: the KL and the score of that step reach TorchRL in the reward.)"""
    from torchrl.envs import GymEnv
    from torchrl.envs.utils import check_env_specs

    env = GymEnv("textenv:TextGen-v0", num_envs=N, **settings)  # gymnasium's AsyncVectorEnv: worker processes
    steps = 4 * MAX_NEW
    try:
        check_env_specs(env)
        env.set_seed(0)
        td = env.rollout(steps, break_when_any_done=False)
    finally:
        env.close()
    assert td.batch_size == (N, steps)
    nxt = td["next"]
    assert {"policy_logprob", "ref_logprob", "score", "kl_sum"} <= set(nxt.keys())
    done = nxt["done"].squeeze(-1)
    assert int(done.sum()) >= N * (steps // MAX_NEW - 1)  # every episode lasts <= MAX_NEW steps
    kl = (nxt["policy_logprob"] - nxt["ref_logprob"]).double()
    torch.testing.assert_close(nxt["reward"].squeeze(-1)[~done], -KL * kl[~done].float(), atol=1e-5, rtol=1e-4)
    assert (nxt["score"] == 0).all()  # no reward_fn: every score is 0
    for row in range(N):  # kl_sum: the KL summed over the episode so far, read at every step
        so_far = 0.0
        for t in range(steps):
            so_far = 0.0 if done[row, t] else so_far + float(kl[row, t])
            if not done[row, t]:
                assert float(nxt["kl_sum"][row, t]) == pytest.approx(so_far, abs=1e-5), (row, t)
