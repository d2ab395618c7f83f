"""Clips for people: a pair of trajectory segments rendered side by side, the way a human labeller sees them.

Christiano et al. 2017 (arXiv:1706.03741, Sec. 2.2.2 and Fig. 1) show the human "two trajectory segments, in the form
of short movie clips"; segment a plays on the LEFT and segment b on the RIGHT, matching the one label convention of
this toolkit (``label`` = probability that the first item, "a", shown on the left, is preferred).

Layout of every frame (sizes are predictable, see ``ClipStyle.frame_shape``)::

    +-------------------------------+
    | left  7/25   | gap |  right   |   header band (``header`` px): which side is which, and the frame counter
    +--------------+-----+----------+
    |  segment a   |     | segment b|   each panel: the segment's frame, nearest-neighbour upscaled by ``scale``
    +--------------+-----+----------+
    |=========>                     |   progress bar (``bar`` px)
    +-------------------------------+

* The clip has ``max(T_a, T_b)`` frames (``pad_and_dim``). Steps where the segment's ``mask`` is False (padding after
  a terminal state) show its last real frame, dimmed, so a person sees that an episode ended in the clip; a shorter
  segment holds its last frame, dimmed too.
* The frame counter makes every frame differ from the previous one: GIF writers (Pillow) merge identical consecutive
  frames, which would make the frame count of a clip of a still scene unpredictable.
* Height and width are rounded up to even numbers (H.264 with yuv420p needs them; the MP4 writer is told not to
  resize).

``save_pair_clip`` writes a GIF (always; Pillow) and an MP4 when ``imageio-ffmpeg`` is installed; ``render_gif`` writes
one segment's GIF (what ``rewardmodels.feedback.human`` shows, two side by side in the web page). Files are written
atomically (``textenv.files.atomic_path``), so a labelling web app never serves half a clip.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from textenv.files import atomic_path

# Frames of classic-control envs are drawn with pygame, whose SDL installs its own SIGINT/SIGTERM handlers when
# initialised (where the process has none yet): SIGTERM then only queues an SDL quit event that nobody reads, and a
# job scheduler's `kill` or `docker stop` no longer stops a run waiting for people. This hint (read from the
# environment by SDL when pygame initialises it, so it must be set before the first frame is drawn) keeps SDL's
# hands off signals. A user who wants SDL's handlers sets SDL_NO_SIGNAL_HANDLERS=0.
os.environ.setdefault("SDL_NO_SIGNAL_HANDLERS", "1")

logger = logging.getLogger(__name__)

__all__ = [
    "ClipStyle",
    "ClipError",
    "compose_pair",
    "hold_and_dim",
    "pad_and_dim",
    "render_gif",
    "save_pair_clip",
    "obs_to_rgb",
    "mp4_available",
    "fps_for_env",
]

_DIM = 0.35  # brightness of frames after the segment's terminal state (or its end, beside a longer one)


class ClipError(ValueError):
    """Frames that cannot be rendered (wrong rank, dtype, empty segment, bad format name)."""


@dataclass
class ClipStyle:
    """How a segment pair is laid out and played back."""

    scale: int = 1
    """Integer nearest-neighbour upscaling of each panel (84x84 Atari frames read better at 2-3)."""
    gap: int = 8
    """Pixels of grey between the two panels."""
    header: int = 16
    """Height of the header band with the "left"/"right" labels and the frame counter; 0 turns it off."""
    bar: int = 3
    """Height of the progress bar under the panels; 0 turns it off."""
    fps: float = 15.0
    """Playback speed. Christiano et al. show Atari clips at 15 fps (25 steps = 1.7 s, App. A.2); for MuJoCo use
    ``fps_for_env(env)`` (1/dt: real time)."""

    def __post_init__(self) -> None:
        if int(self.scale) != self.scale or self.scale < 1:
            raise ClipError(f"scale must be a positive integer, got {self.scale}; use 1 for the frames' own size")
        for name in ("gap", "header", "bar"):
            if getattr(self, name) < 0:
                raise ClipError(f"{name} must be >= 0 pixels, got {getattr(self, name)}")
        if not self.fps > 0:
            raise ClipError(f"fps must be > 0, got {self.fps}")

    def frame_shape(self, shape_a: Sequence[int], shape_b: Sequence[int]) -> tuple[int, int, int]:
        """``(H, W, 3)`` of every clip frame, for segments whose frames are ``shape_a`` / ``shape_b`` (H, W, ...)."""
        h = self.header + max(shape_a[0], shape_b[0]) * self.scale + self.bar
        w = (shape_a[1] + shape_b[1]) * self.scale + self.gap
        return h + h % 2, w + w % 2, 3


def obs_to_rgb(obs: np.ndarray, channels_first: bool | None = None) -> np.ndarray:
    """Frames a person can watch from image observations: ``(T, H, W, 3)`` uint8.

    Accepts ``(T, H, W)`` grayscale, ``(T, H, W, 3)`` RGB, and frame stacks ``(T, k, H, W)`` (channels first, e.g.
    ``FrameStackObservation``) or ``(T, H, W, k)`` (channels last, e.g. SB3's ``VecFrameStack``), of which the newest
    frame (the last channel) is shown. ``channels_first=None`` guesses: the smallest of the last three axes is the
    channel axis.
    """
    obs = np.asarray(obs)
    if obs.ndim == 3:
        obs = obs[..., None]
    if obs.ndim != 4:
        raise ClipError(f"expected image observations (T, H, W[, C]) or (T, C, H, W), got shape {obs.shape}")
    if channels_first is None:
        channels_first = obs.shape[1] < min(obs.shape[2], obs.shape[3])
    if channels_first:
        obs = np.moveaxis(obs, 1, -1)
    if obs.shape[-1] != 3:
        obs = np.repeat(obs[..., -1:], 3, axis=-1)  # newest frame of a stack, grey -> RGB
    if obs.dtype != np.uint8:
        if np.issubdtype(obs.dtype, np.floating) and obs.size and obs.max() <= 1.0:
            obs = obs * 255.0  # scaled observations in [0, 1]
        obs = np.clip(obs, 0, 255).astype(np.uint8)
    return obs


def _as_frames(frames: np.ndarray, name: str) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim == 3:  # grayscale (T, H, W)
        frames = np.repeat(frames[..., None], 3, axis=-1)
    if frames.ndim != 4 or frames.shape[-1] not in (1, 3, 4):
        raise ClipError(
            f"{name} must be rgb_array frames (T, H, W, 3) (or grayscale (T, H, W)), got shape {frames.shape}; "
            "use obs_to_rgb() for image observations"
        )
    if frames.shape[0] == 0:
        raise ClipError(f"{name} has no frames")
    if frames.dtype != np.uint8:
        raise ClipError(f"{name} must be uint8 (what env.render() returns), got {frames.dtype}")
    if frames.shape[-1] == 1:
        frames = np.repeat(frames, 3, axis=-1)
    return frames[..., :3]  # drop alpha


def _text(img: np.ndarray, xy: tuple[int, int], text: str) -> None:
    from PIL import Image, ImageDraw  # Pillow: imported where frames are drawn, not with the module

    pil = Image.fromarray(img)
    ImageDraw.Draw(pil).text(xy, text, fill=(255, 255, 255))
    img[...] = np.asarray(pil)


def hold_and_dim(frames: np.ndarray, mask: np.ndarray | None, n: int) -> np.ndarray:
    """``n`` frames of one segment, to play in step with a segment of ``n`` steps: step ``t`` shows the last real
    frame (``mask`` True) at or before ``t``; steps that are padding after a terminal state (``mask`` False) or lie
    past the segment's end (it is shorter) are dimmed. ``mask=None``: every step is real."""
    frames = np.asarray(frames)
    valid = np.ones(len(frames), bool) if mask is None else np.asarray(mask, bool).reshape(-1)[: len(frames)]
    last_real = np.maximum.accumulate(np.where(valid, np.arange(len(frames)), 0))
    idx = last_real[np.minimum(np.arange(n), len(frames) - 1)]
    dim = ~np.concatenate([valid, np.zeros(n - len(frames), bool)])
    held = frames[idx]
    return np.where(dim[:, None, None, None], (held * _DIM).astype(np.uint8), held)


def pad_and_dim(frames_a: np.ndarray, frames_b: np.ndarray, mask_a=None, mask_b=None) -> tuple[np.ndarray, ...]:
    """Give both clips the same length (``hold_and_dim``), so that two clips shown side by side stay in step and a
    person sees where an episode ended."""
    n = max(len(frames_a), len(frames_b))
    return hold_and_dim(frames_a, mask_a, n), hold_and_dim(frames_b, mask_b, n)


def compose_pair(
    frames_a: np.ndarray,
    frames_b: np.ndarray,
    mask_a: np.ndarray | None = None,
    mask_b: np.ndarray | None = None,
    style: ClipStyle | None = None,
) -> np.ndarray:
    """Side-by-side frames of a segment pair: ``(max(T_a, T_b), *style.frame_shape(...))`` uint8, a on the left."""
    style = style or ClipStyle()
    fa, fb = _as_frames(frames_a, "frames_a"), _as_frames(frames_b, "frames_b")
    for key, frames, mask in (("a", fa, mask_a), ("b", fb, mask_b)):
        if mask is not None and np.size(mask) != len(frames):
            raise ClipError(f"mask_{key} has {np.size(mask)} steps but frames_{key} has {len(frames)}")
    n = max(len(fa), len(fb))
    h, w, _ = style.frame_shape(fa.shape[1:], fb.shape[1:])
    out = np.full((n, h, w, 3), 64, dtype=np.uint8)
    out[:, : style.header] = 0
    x0 = {"a": 0, "b": fa.shape[2] * style.scale + style.gap}
    for key, panel in zip("ab", pad_and_dim(fa, fb, mask_a, mask_b), strict=True):
        if style.scale > 1:
            panel = panel.repeat(style.scale, axis=1).repeat(style.scale, axis=2)
        out[:, style.header : style.header + panel.shape[1], x0[key] : x0[key] + panel.shape[2]] = panel
    for t in range(n):
        if style.header:
            _text(out[t, : style.header], (2, 2), f"left  {t + 1}/{n}")
            _text(out[t, : style.header], (x0["b"] + 2, 2), "right")
        if style.bar:
            out[t, h - style.bar :, : round((t + 1) * w / n)] = (80, 200, 120)
    return out


def mp4_available() -> bool:
    """True when MP4 clips can be written (``pip install imageio-ffmpeg``)."""
    try:
        import imageio_ffmpeg  # noqa: F401
    except ImportError:
        return False
    return True


def fps_for_env(env) -> float:
    """Real-time playback speed: ``1 / env.unwrapped.dt`` (MuJoCo), else ``metadata["render_fps"]``, else 15."""
    dt = getattr(env.unwrapped, "dt", None)
    if dt:
        return 1.0 / float(dt)
    return float(env.metadata.get("render_fps") or 15.0)


def _write_gif(path: Path, frames: np.ndarray, fps: float) -> Path:
    """A looping GIF, atomically. GIF frame delays are whole units of 10 ms, so the played fps is
    ``1000 / (10 * round(100 / fps))``."""
    import imageio.v3 as iio  # imageio: imported where clips are written, not with the module

    with atomic_path(path) as tmp:
        iio.imwrite(tmp, frames, extension=".gif", duration=10 * max(1, round(100.0 / fps)), loop=0)
    return path


def render_gif(frames: np.ndarray, path: str | os.PathLike, fps: float = 15.0, max_side: int | None = 160) -> Path:
    """Write one segment's ``frames`` (T, H, W, 3) uint8 as a looping GIF, downscaled so that max(H, W) <=
    ``max_side``; atomic."""
    from PIL import Image  # Pillow: imported where frames are resized, not with the module

    if np.ndim(frames) != 4:
        raise ClipError(f"frames must be (T, H, W, 3) (env.render() rgb_array), got shape {np.shape(frames)}")
    frames = _as_frames(frames, "frames")
    h, w = frames.shape[1:3]
    if max_side is not None and max(h, w) > max_side:
        scale = max_side / max(h, w)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        frames = np.stack([np.asarray(Image.fromarray(f).resize(size, Image.BILINEAR)) for f in frames])
    return _write_gif(Path(path), frames, fps)


def save_pair_clip(
    path: str | os.PathLike,
    frames_a: np.ndarray,
    frames_b: np.ndarray,
    *,
    mask_a: np.ndarray | None = None,
    mask_b: np.ndarray | None = None,
    style: ClipStyle | None = None,
    formats: Sequence[str] = ("gif", "mp4"),
) -> dict[str, Path]:
    """Render a segment pair (a left, b right) to ``path`` with each format's suffix; returns ``{format: file}``.

    ``path`` is a file stem (``clips/pair_0007``); a suffix on it is replaced. MP4 is skipped (with a log message)
    when imageio-ffmpeg is not installed; GIF always works. GIF frame delays are stored in units of 10 ms, so the
    played fps is ``1000 / (10 * round(100 / fps))``.
    """
    import imageio.v2 as iio2  # imageio: imported where clips are written, not with the module

    style = style or ClipStyle()
    unknown = set(formats) - {"gif", "mp4"}
    if unknown:
        raise ClipError(f"unknown clip formats {sorted(unknown)}; choose from 'gif' and 'mp4'")
    frames = compose_pair(frames_a, frames_b, mask_a, mask_b, style)
    stem = Path(path).with_suffix("")
    written: dict[str, Path] = {}
    if "gif" in formats:
        written["gif"] = _write_gif(stem.with_suffix(".gif"), frames, style.fps)
    if "mp4" in formats:
        if mp4_available():
            out = stem.with_suffix(".mp4")
            with atomic_path(out) as tmp:
                # macro_block_size=2: the frame is already even-sized; the default (16) would resize it.
                iio2.mimwrite(tmp, list(frames), format="FFMPEG", fps=style.fps, macro_block_size=2)
            written["mp4"] = out
        else:
            logger.info("imageio-ffmpeg is not installed: writing %s as GIF only (pip install imageio-ffmpeg)", stem)
    return written
