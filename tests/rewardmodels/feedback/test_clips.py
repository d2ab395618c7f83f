"""Side-by-side clips of segment pairs: predictable frame count and size, read back from the written files."""

import imageio.v3 as iio
import numpy as np
import pytest

from rewardmodels.feedback.clips import (
    ClipError,
    ClipStyle,
    compose_pair,
    fps_for_env,
    mp4_available,
    obs_to_rgb,
    pad_and_dim,
    render_gif,
    save_pair_clip,
)


def _frames(t, h=20, w=30, value=None, seed=0):
    if value is not None:
        return np.full((t, h, w, 3), value, np.uint8)
    return np.random.default_rng(seed).integers(0, 256, (t, h, w, 3), dtype=np.uint8)


def test_gif_has_the_expected_frame_count_and_size(tmp_path):
    style = ClipStyle(scale=2, gap=6, header=16, bar=3, fps=10)
    a, b = _frames(12, 20, 30, seed=1), _frames(9, 24, 28, seed=2)  # different lengths and sizes
    written = save_pair_clip(tmp_path / "pair", a, b, style=style, formats=("gif",))
    frames = iio.imread(written["gif"], index=None)
    h, w, c = style.frame_shape(a.shape[1:], b.shape[1:])
    assert (h, w, c) == (16 + 24 * 2 + 3 + 1, (30 + 28) * 2 + 6, 3)  # height 67 rounded up to even
    assert frames.shape[:3] == (12, h, w)  # max(T_a, T_b) frames, every one kept
    assert iio.immeta(written["gif"], index=0)["duration"] == 100  # 10 fps


def test_a_still_scene_keeps_every_frame(tmp_path):
    """GIF writers merge identical consecutive frames; the frame counter keeps the count predictable."""
    still = _frames(25, value=90)
    gif = save_pair_clip(tmp_path / "still.gif", still, still, formats=("gif",))["gif"]
    assert iio.imread(gif, index=None).shape[0] == 25


def test_segment_a_is_on_the_left_and_padding_is_dimmed():
    style = ClipStyle(scale=1, gap=4, header=16, bar=0)
    a, b = _frames(5, value=200), _frames(5, value=100)
    mask_b = np.array([1, 1, 1, 0, 0], bool)  # b terminated after 3 steps
    out = compose_pair(a, b, mask_b=mask_b, style=style)
    left, right = out[:, 16:36, :30], out[:, 16:36, 34:64]
    assert np.all(left == 200)
    assert np.all(right[:3] == 100) and np.all(right[3:] < 100)


def test_padding_shows_the_last_real_frame_dimmed_and_a_shorter_segment_holds_its_last():
    style = ClipStyle(scale=2, gap=4, header=0, bar=0)
    a = np.stack([np.full((4, 5, 3), 10 * (t + 1), np.uint8) for t in range(6)])  # step t has value 10 (t + 1)
    b = _frames(4, 4, 5, value=100)
    out = compose_pair(a, b, mask_a=[1, 1, 1, 1, 0, 0], style=style)
    left, right = out[:, :8, :10, 0], out[:, :8, 14:24, 0]
    assert [int(left[t].mean()) for t in range(6)] == [10, 20, 30, 40, int(40 * 0.35), int(40 * 0.35)]
    assert [int(right[t].mean()) for t in range(6)] == [100] * 4 + [int(100 * 0.35)] * 2


def test_render_gif_downscales_and_keeps_every_frame(tmp_path):
    frames = np.random.default_rng(0).integers(0, 255, (7, 400, 600, 3), dtype=np.uint8)
    path = render_gif(frames, tmp_path / "c.gif", fps=10, max_side=120)
    assert iio.improps(path).shape == (7, 80, 120, 3)
    assert iio.immeta(path, index=0)["duration"] == 100  # 10 fps, as for pair clips
    with pytest.raises(ValueError, match="uint8"):
        render_gif(frames.astype(np.float32), tmp_path / "d.gif")
    with pytest.raises(ValueError, match="T, H, W, 3"):
        render_gif(frames[0], tmp_path / "d.gif")
    assert [p.name for p in tmp_path.iterdir()] == ["c.gif"]  # nothing half-written


def test_pad_and_dim_equalises_lengths_and_dims_steps_after_termination():
    a = np.full((4, 2, 2, 3), 200, np.uint8)
    a[1] = 100
    b = np.full((2, 2, 2, 3), 50, np.uint8)
    pa, pb = pad_and_dim(a, b, mask_a=[True, True, False, False], mask_b=None)
    assert pa.shape == pb.shape == (4, 2, 2, 3)
    assert pa[1, 0, 0, 0] == 100 and pa[2, 0, 0, 0] == pa[3, 0, 0, 0] == int(100 * 0.35)  # last real frame, dimmed
    assert pb[1, 0, 0, 0] == 50 and pb[3, 0, 0, 0] == int(50 * 0.35)  # shorter clip holds its last frame, dimmed


def test_observations_become_rgb_frames():
    stacked = np.random.default_rng(0).integers(0, 256, (7, 4, 84, 84), dtype=np.uint8)  # (T, k, H, W)
    rgb = obs_to_rgb(stacked)
    assert rgb.shape == (7, 84, 84, 3)
    np.testing.assert_array_equal(rgb[..., 0], stacked[:, -1])  # the newest frame of each stack
    assert obs_to_rgb(np.zeros((3, 84, 84, 4), np.uint8)).shape == (3, 84, 84, 3)  # channels last
    assert obs_to_rgb(np.ones((2, 8, 8), np.float32)).max() == 255  # scaled float frames


@pytest.mark.skipif(not mp4_available(), reason="imageio-ffmpeg is not installed")
def test_mp4_has_the_expected_frame_count_and_size(tmp_path):
    import imageio.v2 as iio2

    style = ClipStyle(scale=3)
    a, b = _frames(15, 21, 17, seed=3), _frames(15, 21, 17, seed=4)  # odd sizes: padded to even
    mp4 = save_pair_clip(tmp_path / "pair", a, b, style=style, formats=("mp4",))["mp4"]
    frames = iio2.mimread(mp4, format="FFMPEG", memtest=False)
    assert len(frames) == 15 and frames[0].shape == style.frame_shape(a.shape[1:], b.shape[1:])


def test_mp4_is_skipped_without_ffmpeg_but_gif_is_written(tmp_path, monkeypatch):
    import rewardmodels.feedback.clips as clips

    monkeypatch.setattr(clips, "mp4_available", lambda: False)
    written = save_pair_clip(tmp_path / "p", _frames(3), _frames(3))
    assert set(written) == {"gif"} and written["gif"].exists()


def test_bad_input_raises_clip_error(tmp_path):
    with pytest.raises(ClipError, match="uint8"):
        compose_pair(np.zeros((3, 8, 8, 3), np.float32), _frames(3))
    with pytest.raises(ClipError, match="rgb_array"):
        compose_pair(np.zeros((3, 8), np.uint8), _frames(3))
    with pytest.raises(ClipError, match="unknown clip formats"):
        save_pair_clip(tmp_path / "x", _frames(2), _frames(2), formats=("avi",))
    with pytest.raises(ClipError, match="scale"):
        ClipStyle(scale=0)
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_fps_for_env_is_real_time():
    import gymnasium as gym

    env = gym.make("InvertedPendulum-v5")
    assert fps_for_env(env) == pytest.approx(1 / env.unwrapped.dt)
    env.close()
