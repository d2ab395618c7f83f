"""Atari envs as Christiano et al. 2017 (and Mnih et al. 2015) used them: standard preprocessing + frame stacking.

``make_atari_env("ALE/Pong-v5")``: 30 no-op starts, 4-frame skip with max-pooling of the last two frames, grayscale,
84x84 (Gymnasium's ``AtariPreprocessing``) and 4 stacked frames (``FrameStackObservation``): observations (4, 84, 84)
uint8. Importing this module registers ``AtariPreprocessed/<Game>-v5`` for the seven games of the paper, so every
part of the preference loop can ``gym.make`` the preprocessed env by id.

Gymnasium's ``AtariPreprocessing`` resizes with OpenCV, which ``gymnasium[atari]`` does not install; without OpenCV
``AreaResizeAtariPreprocessing`` (the same wrapper with a numpy area-averaging resize, equal to OpenCV's INTER_AREA
to +-1 grey level) is used instead.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from typing import Any

import gymnasium as gym
import numpy as np

ATARI_ENVS = ("ALE/Pong-v5", "ALE/BeamRider-v5", "ALE/Breakout-v5", "ALE/Enduro-v5", "ALE/Qbert-v5",
              "ALE/SpaceInvaders-v5", "ALE/Seaquest-v5")
ATARI_NAMESPACE = "AtariPreprocessed"


class NotAnAtariEnvError(ValueError):
    """An env id that is not an ALE id."""


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
    import ale_py  # lazy: the optional [control] extra, needed only for Atari envs

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
        raise NotAnAtariEnvError(f"{game_id!r} is not an ALE id; the Atari preset needs e.g. 'ALE/Pong-v5' "
                          f"(one of {', '.join(ATARI_ENVS)})")
    wrapped = f"{ATARI_NAMESPACE}/{game_id.split('/', 1)[1]}"
    if wrapped not in gym.registry:
        _register_ale()
        gym.spec(game_id)  # raises for an unknown game
        gym.register(wrapped, entry_point=make_atari_env, kwargs={"game_id": game_id})
    return wrapped


for _game in ATARI_ENVS:  # registered when this module is imported (agents.loop.control.presets imports it)
    _wrapped = f"{ATARI_NAMESPACE}/{_game.split('/', 1)[1]}"
    if _wrapped not in gym.registry:
        gym.register(_wrapped, entry_point="agents.loop.control.atari:make_atari_env", kwargs={"game_id": _game})
