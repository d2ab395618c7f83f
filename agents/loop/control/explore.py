"""PEBBLE's unsupervised pre-training as the preference loop's initial collection (``initial_policy="explore"``).

Lee, Smith & Abbeel 2021 ("PEBBLE", arXiv:2106.05091, Sec. 4.1): before the first label, the agent learns for a
budget of env steps on an intrinsic reward that maximises the entropy of the states it visits
(``rewardmodels.intrinsic.StateEntropyReward``: each state's distance to its k-th nearest neighbour among the states
collected so far, k = 5, normalised by a running standard deviation). The segments of the first labels are then cut
from that diverse experience rather than from a random policy's. After it, the critic is reinitialised ("reset Q
due to unsupervised exploration", BPref ``train_PEBBLE.py``, ``agent.reset_critic()``): its values are those of the
intrinsic reward. The first reward fit then relabels the whole replay buffer with the learned reward (SAC: PEBBLE's
relabelling, ``SB3Agent.set_reward_fn``), and the policy that explored is where training starts.

Budget: the loop's ``initial_steps`` (PEBBLE: 1,000 random steps, then 9,000 of pre-training, BPref
``num_seed_steps: 1000``, ``num_unsup_steps=9000`` in every B-Pref script; SB3's SAC takes ``learning_starts``
uniformly random steps first, which plays the seed steps' part).

The states come from the pair source's experience (the steps of the agent's training envs, recorded as it learns);
the reference set is refreshed every ``refresh`` steps (PEBBLE recomputes it at every update from the whole buffer;
SAC's replay buffer is relabelled against the new set each time, so stored intrinsic rewards are never older than
one refresh). PPO and A2C learn from the intrinsic reward of their rollouts the same way (ours: PEBBLE's agent is SAC;
B-Pref's PrefPPO pre-trains PPO with the same reward, ``--unsuper-step``); their value head is reinitialised at the
end (ours, by analogy with the critic reset).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from rewardmodels.intrinsic import StateEntropyReward, knn_distances
from rewardmodels.published import PEBBLE_K
from textenv.checks import check_number

logger = logging.getLogger(__name__)

#: Ours: steps between refreshes of the reference states (PEBBLE: every update; a refresh relabels SAC's buffer, a
#: k-NN pass over it, so it is spaced out; 9 refreshes over PEBBLE's 9,000 pre-training steps).
EXPLORE_REFRESH = 1_000


class StateEntropyExploration:
    """Runs an agent on PEBBLE's state-entropy reward for a number of env steps (module docstring).

    Args:
        experience: the pair source's ``Experience`` (its ``trajectories()`` hold the states visited so far).
        k: the k of the k-th nearest neighbour (PEBBLE: 5).
        refresh: env steps between updates of the reference states.
        max_reference: at most this many most recent states form the reference (bounds the k-NN cost).
    """

    def __init__(self, experience: Any, k: int = PEBBLE_K, refresh: int = EXPLORE_REFRESH,
                 max_reference: int = 20_000):
        check_number("explore_k", k, low=1, integer=True)
        check_number("refresh", refresh, low=1, integer=True)
        self.experience, self.k, self.refresh, self.max_reference = experience, int(k), int(refresh), max_reference
        self.reward = StateEntropyReward(self.k)

    def states(self) -> np.ndarray | None:
        """The most recent ``max_reference`` observations of the experience, (M, *obs_shape), or None."""
        trajs = self.experience.trajectories(self.max_reference)
        if not trajs:
            return None
        return np.concatenate([t.obs for t in trajs])[-self.max_reference:]

    def run(self, agent: Any, n_steps: int) -> dict[str, float]:
        """Train ``agent`` on the intrinsic reward for about ``n_steps`` env steps (never more), then reset its
        critic. Returns metrics: ``explore/steps`` and ``explore/knn_distance`` (the mean distance of the visited
        states to their k-th nearest neighbour at the end: what the pre-training maximised)."""
        start = agent.num_timesteps
        metrics: dict[str, float] = {}
        while (done := agent.num_timesteps - start) < n_steps:
            states = self.states()
            if states is not None:
                self.reward.set_reference(states)
            agent.set_reward_fn(self.reward)  # SAC: relabels its buffer against the new reference
            left = n_steps - done
            agent.learn(min(max(self.refresh, agent.step_granularity), left), max_steps=left)
            if agent.num_timesteps - start == done:  # the rest is less than one rollout: it goes to training
                break
        agent.reset_critic()
        states = self.states()
        if states is not None and len(states) > self.k:
            metrics["explore/knn_distance"] = float(knn_distances(states, states, self.k).mean())
        metrics["explore/steps"] = float(agent.num_timesteps - start)
        logger.info("explored %d env steps on the state-entropy reward (k=%d)", metrics["explore/steps"], self.k)
        return metrics
