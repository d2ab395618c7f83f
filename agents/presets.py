"""Presets that encode the protocol of Christiano et al. 2017, "Deep reinforcement learning from human preferences"
(arXiv:1706.03741), on current Gymnasium: ``christiano-mujoco`` and ``christiano-atari``.

Every value below is the paper's unless marked "ours"; "A.1" / "A.2" are its appendix sections (MuJoCo / Atari),
"2.2.x" its method sections.

``christiano-mujoco`` (Hopper, HalfCheetah, Walker2d, Swimmer, Ant, Reacher, InvertedPendulum, InvertedDoublePendulum;
Gymnasium v5):

* segments of 1.5 s of env time (A.1: "trajectory segments that last 1.5 seconds"): ``round(1.5 / env.dt)`` steps,
  at most the env's time limit (Reacher's episodes last 1 s). NOTE: on v5 dt this is 30-188 steps (Hopper and
  Walker2d: dt = 0.008 s, 188 steps), while A.1 says "15 to 60 timesteps"; the paper's envs must have used coarser
  steps. ``segment_len`` overrides it.
* an ensemble of 3 predictors, each on its own bootstrap of the labels (2.2.3: "an ensemble of predictors, each
  trained on |D| triples sampled from D with replacement"; three members as in the paper's ablation code).
* 10x candidate oversampling, queries chosen by ensemble disagreement (2.2.4).
* label rate proportional to 2e6 / (T + 2e6) after T env steps (A.1). In ``LoopConfig`` terms: ``label_schedule=
  "hyperbolic"`` with ``schedule_c = 2e6 / total_steps`` (the loop measures c as a fraction of the run).
* 25% of the comparisons from a randomly initialised policy at the start (A.1): ``initial_label_fraction = 0.25``,
  ``initial_policy = "random"``.
* the predictor: two hidden layers of 64 units with leaky ReLU, alpha 0.01 (A.1); rewards normalised to standard
  deviation 1 (A.1).
* 1/e of the labels held out for validation, L2 adapted to keep validation loss at 1.1-1.5x training loss (2.2.3).
* the 10% random-response noise of the preference model (2.2.3: P = 0.05 + 0.9 sigmoid(R_a - R_b)).
* the policy: the paper used TRPO (A.1), which SB3 lacks; PPO (its successor) stands in, with gamma 0.995 and
  lambda 0.97 as in A.1 and the entropy bonus 0.01 (0.001 on Swimmer) of A.1 as ``ent_coef`` (ours: the rest of
  PPO's settings are rl-baselines3-zoo's MuJoCo PPO settings).

``christiano-atari`` (Pong, BeamRider, Breakout, Enduro, Qbert, SpaceInvaders, Seaquest; ALE v5 via ale-py):

* standard Atari preprocessing (Mnih et al. 2015, as in A.2 "the same inputs as the policy"): 30 no-op starts, 4
  frame skip with max-pooling of the last two frames, grayscale, 84x84 (Gymnasium's ``AtariPreprocessing``), and 4
  stacked frames (``FrameStackObservation``). The env id becomes ``AtariPreprocessed/<Game>-v5`` (registered here,
  so every part of the loop can ``gym.make`` it). v5's sticky actions (p = 0.25) are kept (ours; Machado et al.
  2018's recommended protocol).
* the predictor: the paper's CNN (``rewardmodels.cnn.CNNRewardNet``, A.2), rewards normalised to standard deviation
  0.05 (A.2) via ``RewardEnsemble(reward_scale=0.05)``.
* segments of 25 steps (A.2: "25 timesteps (1.7 seconds at 15 fps with frame skipping)").
* 500 comparisons from the random initial policy, then a rate proportional to 5e6 / (T + 5e6) (A.2).
* 200 epochs of predictor training on those initial comparisons before the policy trains (A.2, "pretraining").
* a buffer of only the last 3,000 labels (A.2, "to ensure that the predictor gives enough weight to new labels").
* A2C (A.2: "A3C ... in synchronous form (A2C)": 16 workers, n = 5 steps, entropy bonus 0.01, learning rate 7e-4
  decayed linearly, gamma 0.99) or PPO (rl-baselines3-zoo's Atari PPO settings), from SB3, with the Nature CNN.

Use: ``rlhf-gym prefs --preset christiano-mujoco --env Hopper-v5 --labels 700 --steps 2000000`` (see
``agents/commands/prefs.py``), or ``apply_preset(name, env_id, overrides)`` from Python.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
import types
from dataclasses import asdict, dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np

logger = logging.getLogger(__name__)

MUJOCO_ENVS = ("Hopper-v5", "HalfCheetah-v5", "Walker2d-v5", "Swimmer-v5", "Ant-v5", "Reacher-v5",
               "InvertedPendulum-v5", "InvertedDoublePendulum-v5")
ATARI_ENVS = ("ALE/Pong-v5", "ALE/BeamRider-v5", "ALE/Breakout-v5", "ALE/Enduro-v5", "ALE/Qbert-v5",
              "ALE/SpaceInvaders-v5", "ALE/Seaquest-v5")
ATARI_NAMESPACE = "AtariPreprocessed"
SEGMENT_SECONDS = 1.5  # A.1
MUJOCO_LABEL_C = 2e6  # A.1
ATARI_LABEL_C = 5e6  # A.2
ATARI_SEGMENT_LEN = 25  # A.2
ATARI_INITIAL_LABELS = 500  # A.2
ATARI_PRETRAIN_EPOCHS = 200  # A.2
ATARI_LABEL_BUFFER = 3_000  # A.2


class PresetError(ValueError):
    """An unknown preset name, or an env the preset does not cover."""


# -- Atari preprocessing ------------------------------------------------------------------------------------------
def _area_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """Area-averaging resampling (OpenCV's INTER_AREA) as taps: output pixel j = sum_k w[k, j] * input[idx[k, j]].

    Each output pixel averages the input pixels it covers, fractional ones by their covered fraction; downscaling
    210 -> 84 needs at most 4 taps. (Taps rather than a dense (84, 210) matrix product: BLAS threads on matrices this
    small are 20x slower on a busy machine than a few numpy multiply-adds.) Agrees with cv2.resize to +-1 grey level.
    """
    edges = np.arange(n_out + 1) * (n_in / n_out)
    lo, hi, i = edges[:-1, None], edges[1:, None], np.arange(n_in)[None, :]
    dense = np.clip(np.minimum(hi, i + 1) - np.maximum(lo, i), 0, None) * (n_out / n_in)  # (n_out, n_in)
    n_taps = int((dense > 0).sum(axis=1).max())
    first = np.argmax(dense > 0, axis=1)  # (n_out,)
    idx = np.minimum(first[None, :] + np.arange(n_taps)[:, None], n_in - 1)  # (taps, n_out)
    w = np.take_along_axis(dense.T, idx, axis=0)  # (taps, n_out); past the last covered pixel -> 0 weight
    w = np.where(first[None, :] + np.arange(n_taps)[:, None] < n_in, w, 0.0)
    return idx, w.astype(np.float32)


def area_resize(frame: np.ndarray, row_taps: tuple[np.ndarray, np.ndarray],
                col_taps: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """(H, W[, C]) -> (h, w[, C]) float32 with the taps of ``_area_taps(H, h)`` and ``_area_taps(W, w)``."""
    (ri, rw), (ci, cw) = row_taps, col_taps
    x = frame.astype(np.float32)
    extra = (None,) * (x.ndim - 1)
    rows = sum(rw[k][(slice(None), *extra)] * x[ri[k]] for k in range(len(ri)))  # (h, W[, C])
    extra = (None,) * (x.ndim - 2)
    return sum(cw[k][(slice(None), *extra)] * rows[:, ci[k]] for k in range(len(ci)))  # (h, w[, C])


class AreaResizeAtariPreprocessing(gym.wrappers.AtariPreprocessing):
    """Gymnasium's ``AtariPreprocessing`` with its OpenCV resize replaced by numpy area averaging.

    Everything else (no-op starts, frame skip, max-pooling, grayscale, life-loss handling) is Gymnasium's own code.
    Used when OpenCV is not installed (``gymnasium[atari]`` does not pull it in); with ``opencv-python`` installed,
    ``make_atari_env`` uses the original wrapper.
    """

    def __init__(self, env: gym.Env, **kwargs: Any):
        stub = "cv2" not in sys.modules
        if stub:  # AtariPreprocessing.__init__ only checks that cv2 imports; _get_obs below never uses it
            sys.modules["cv2"] = types.ModuleType("cv2")
        try:
            super().__init__(env, **kwargs)
        finally:
            if stub:
                del sys.modules["cv2"]
        h, w = self.obs_buffer[0].shape[:2]
        self._taps = (_area_taps(h, self.screen_size[1]), _area_taps(w, self.screen_size[0]))

    def _get_obs(self):
        if self.frame_skip > 1:
            np.maximum(self.obs_buffer[0], self.obs_buffer[1], out=self.obs_buffer[0])
        obs = area_resize(self.obs_buffer[0], *self._taps)
        if self.scale_obs:
            obs = obs / 255.0
        else:
            obs = np.clip(np.rint(obs), 0, 255).astype(np.uint8)
        if self.grayscale_obs and self.grayscale_newaxis:
            obs = obs[..., None]
        return obs


def _register_ale() -> None:
    import ale_py

    gym.register_envs(ale_py)


def make_atari_env(game_id: str = "ALE/Pong-v5", frame_stack: int = 4, noop_max: int = 30,
                   terminal_on_life_loss: bool = False, render_mode: str | None = None,
                   **make_kwargs: Any) -> gym.Env:
    """``game_id`` with the standard preprocessing and ``frame_stack`` stacked frames: obs (4, 84, 84) uint8.

    ``terminal_on_life_loss`` stays False: the learned reward, not the life counter, should tell the agent that
    losing a life is bad, and evaluation returns are whole-game scores.
    """
    _register_ale()
    env = gym.make(game_id, frameskip=1, render_mode=render_mode, **make_kwargs)
    wrapper = (gym.wrappers.AtariPreprocessing if importlib.util.find_spec("cv2") is not None
               else AreaResizeAtariPreprocessing)
    env = wrapper(env, noop_max=noop_max, frame_skip=4, screen_size=84, terminal_on_life_loss=terminal_on_life_loss,
                  grayscale_obs=True, scale_obs=False)
    return gym.wrappers.FrameStackObservation(env, frame_stack)


def atari_env_id(game_id: str) -> str:
    """Register ``AtariPreprocessed/<Game>-v5`` (``make_atari_env(game_id)``) and return it; idempotent."""
    if game_id.startswith(f"{ATARI_NAMESPACE}/"):
        return game_id
    if not game_id.startswith("ALE/"):
        raise PresetError(f"{game_id!r} is not an ALE id; the Atari preset needs e.g. 'ALE/Pong-v5' "
                          f"(one of {', '.join(ATARI_ENVS)})")
    wrapped = f"{ATARI_NAMESPACE}/{game_id.split('/', 1)[1]}"
    if wrapped not in gym.registry:
        _register_ale()
        gym.spec(game_id)  # raises for an unknown game
        gym.register(wrapped, entry_point=make_atari_env, kwargs={"game_id": game_id})
    return wrapped


def mujoco_segment_len(env_id: str, seconds: float = SEGMENT_SECONDS) -> int:
    """Steps in ``seconds`` of env time (``round(seconds / env.unwrapped.dt)``), capped at the env's time limit."""
    env = gym.make(env_id)
    try:
        dt = getattr(env.unwrapped, "dt", None)
        if not dt:
            raise PresetError(f"{env_id} has no dt (env time per step); pass segment_len explicitly")
        steps = max(1, int(round(seconds / float(dt))))
        limit = env.spec.max_episode_steps if env.spec is not None else None
    finally:
        env.close()
    return min(steps, limit) if limit else steps
