import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces
from stable_baselines3 import DQN, SAC
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.vec_env import DummyVecEnv

from rewardmodels.wrappers import (
    LearnedRewardVecEnv,
    LearnedRewardWrapper,
    buffer_actions_to_env,
    relabel_replay_buffer,
)


def pole_angle_reward(obs, acts):
    """A stand-in learned reward that depends on the state and the action: -|pole angle| + 0.1 * action."""
    obs = np.asarray(obs)
    return -np.abs(obs[:, 2]) + 0.1 * np.asarray(acts, dtype=np.float64).reshape(len(obs))


def test_wrapper_replaces_reward_and_keeps_true_one_on_cartpole():
    env = LearnedRewardWrapper(gym.make("CartPole-v1"), pole_angle_reward)
    obs, _ = env.reset(seed=0)
    rng = np.random.default_rng(0)
    for _ in range(200):
        action = int(rng.integers(2))
        next_obs, reward, terminated, truncated, info = env.step(action)
        assert info["true_reward"] == 1.0  # CartPole's own reward
        assert reward == pytest.approx(-abs(obs[2]) + 0.1 * action, abs=1e-6)  # the reward of (s_t, a_t)
        obs = next_obs
        if terminated or truncated:
            obs, _ = env.reset()


def test_wrapper_needs_reset_and_a_callable():
    with pytest.raises(TypeError, match="callable"):
        LearnedRewardWrapper(gym.make("CartPole-v1"), reward_fn=3.0)
    env = LearnedRewardWrapper(gym.make("CartPole-v1"), pole_angle_reward)
    with pytest.raises(RuntimeError, match="reset"):
        env.step(0)


def test_wrapper_rejects_wrong_number_of_rewards():
    env = LearnedRewardWrapper(gym.make("CartPole-v1"), lambda obs, acts: np.zeros(3))
    env.reset(seed=0)
    with pytest.raises(ValueError, match="one reward per"):
        env.step(0)


def test_vec_env_wrapper_batches_reward_and_keeps_true_reward_across_autoreset():
    calls = []

    def reward_fn(obs, acts):
        calls.append(len(obs))
        return pole_angle_reward(obs, acts)

    venv = LearnedRewardVecEnv(DummyVecEnv([lambda: gym.make("CartPole-v1")] * 4), reward_fn)
    venv.seed(0)
    obs = venv.reset()
    saw_done = False
    for _ in range(60):
        acts = np.array([0, 1, 0, 1])
        next_obs, rewards, dones, infos = venv.step(acts)
        np.testing.assert_allclose(rewards, pole_angle_reward(obs, acts), rtol=1e-5)
        assert all(info["true_reward"] == 1.0 for info in infos)
        saw_done |= bool(dones.any())
        obs = next_obs
    assert saw_done and set(calls) == {4} and len(calls) == 60  # one batched call per vec step


def test_buffer_actions_are_converted_to_env_units():
    box = spaces.Box(low=-2.0, high=2.0, shape=(1,))
    np.testing.assert_allclose(buffer_actions_to_env(np.array([[-1.0], [0.0], [1.0]]), box, scaled=True),
                               [[-2.0], [0.0], [2.0]])
    np.testing.assert_allclose(buffer_actions_to_env(np.array([[0.5]]), box, scaled=False), [[0.5]])
    out = buffer_actions_to_env(np.array([[1.0], [0.0]]), spaces.Discrete(2), scaled=True)
    assert out.dtype == np.int64 and out.tolist() == [1, 0]


def _pendulum_reward(obs, acts):
    # Pendulum's own cost as a function of the (cos, sin, thetadot) observation and the torque.
    theta = np.arctan2(obs[:, 1], obs[:, 0])
    return -(theta**2 + 0.1 * obs[:, 2] ** 2 + 0.001 * acts.reshape(len(obs)) ** 2)


def test_relabelling_rewrites_a_sac_replay_buffer_with_unscaled_actions():
    model = SAC("MlpPolicy", "Pendulum-v1", learning_starts=200, buffer_size=1000, seed=0,
                policy_kwargs=dict(net_arch=[16]))
    model.learn(300)
    buf = model.replay_buffer
    stored_before = buf.rewards[: buf.pos].copy()
    n = relabel_replay_buffer(buf, _pendulum_reward, model.action_space)
    assert n == 300
    # Pendulum's reward is the cost of the state the action was taken in, so the relabelled buffer must equal
    # what the env gave (up to float error) -- only if the stored [-1, 1] actions were scaled back to [-2, 2].
    np.testing.assert_allclose(buf.rewards[: buf.pos], stored_before, atol=1e-4)
    relabel_replay_buffer(buf, lambda obs, acts: np.full(len(obs), 7.0), model.action_space)
    assert np.all(buf.rewards[: buf.pos] == 7.0) and np.all(buf.rewards[buf.pos:] == 0.0)


def test_relabelling_a_full_multi_env_dqn_buffer():
    venv = DummyVecEnv([lambda: gym.make("CartPole-v1")] * 2)
    model = DQN("MlpPolicy", venv, buffer_size=100, learning_starts=10, seed=0, policy_kwargs=dict(net_arch=[8]))
    model.learn(120)  # SB3 splits buffer_size over the envs: 50 rows x 2 envs
    buf = model.replay_buffer
    assert buf.full and buf.rewards.shape == (50, 2)
    seen = []

    def reward_fn(obs, acts):
        seen.append((obs.shape, acts.shape, acts.dtype))
        return pole_angle_reward(obs, acts)

    assert relabel_replay_buffer(buf, reward_fn, batch_size=64) == 100
    assert [s[0] for s in seen] == [(64, 4), (36, 4)] and all(s[2] == np.int64 for s in seen)
    expected = pole_angle_reward(buf.observations.reshape(100, 4), buf.actions.reshape(100)).reshape(50, 2)
    np.testing.assert_allclose(buf.rewards, expected, rtol=1e-5)


def test_relabelling_an_empty_buffer_is_a_no_op():
    buf = ReplayBuffer(10, spaces.Box(-1, 1, (3,)), spaces.Discrete(2))
    assert relabel_replay_buffer(buf, pole_angle_reward) == 0
