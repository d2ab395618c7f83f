"""The paper's Atari preprocessing: stacked 84x84 grayscale frames, and the OpenCV-free area resize."""

import gymnasium as gym
import numpy as np
import pytest

from agents.loop.control.atari import ATARI_ENVS, NotAnAtariEnvError, _area_taps, area_resize, atari_env_id


def test_atari_env_is_preprocessed_and_stacked():
    env = gym.make(atari_env_id("ALE/Pong-v5"))
    obs, _ = env.reset(seed=0)
    assert obs.shape == (4, 84, 84) and obs.dtype == np.uint8
    obs, *_ = env.step(0)
    assert obs.shape == (4, 84, 84)
    env.close()


def test_area_resize_matches_area_averaging():
    img = np.random.default_rng(0).integers(0, 256, (210, 160)).astype(np.uint8)
    out = area_resize(img, _area_taps(210, 84), _area_taps(160, 84))
    # exact area averaging computed naively, in float64, on one output pixel
    y0, y1, x0, x1 = 10 * 2.5, 11 * 2.5, 7 * 160 / 84, 8 * 160 / 84
    ys, xs = np.arange(210), np.arange(160)
    wy = np.clip(np.minimum(y1, ys + 1) - np.maximum(y0, ys), 0, None)
    wx = np.clip(np.minimum(x1, xs + 1) - np.maximum(x0, xs), 0, None)
    assert out[10, 7] == pytest.approx(wy @ img.astype(np.float64) @ wx / (wy.sum() * wx.sum()), abs=1e-3)
    assert out.shape == (84, 84)


def test_every_paper_game_is_registered_and_bad_ids_are_refused():
    assert all(atari_env_id(g) in gym.registry for g in ATARI_ENVS)
    with pytest.raises(NotAnAtariEnvError, match="ALE id"):
        atari_env_id("Hopper-v5")
