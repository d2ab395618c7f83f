"""The human labeller: queue pairs in the run's label store, wait for people to label them in the web app.

It is the loop-facing twin of the simulated teachers (``rewardmodels.teachers``): ``label(...)`` returns a (B,)
float32 array in the toolkit's convention (1 = first/left preferred, 0 = second, 0.5 = equal, NaN = skipped). Unlike a
teacher it cannot judge rewards, so it needs what a person sees: clip files, raw frames (rendered here to GIFs), or
text. Mixing synthetic and human labels is just calling both labellers on different pairs.

People label with ``rlhf-gym label --run DIR`` (the web app in ``rewardmodels/feedback/webapp``), which reads the same
``DIR/labels.sqlite`` and serves clips only from ``DIR/clips/``.

Resume: pair ids are content hashes (of the clip bytes, frames or text), so a restarted loop that asks for the same
pairs again finds the labels people already gave and does not queue them twice.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import gymnasium as gym
import numpy as np

from rewardmodels.feedback.clips import hold_and_dim, pad_and_dim, render_gif
from rewardmodels.feedback.label_store import (
    LabelStore,
    LabelStoreError,
    LabelTimeoutError,
    Query,
    clip_dir,
    store_path,
)
from textenv.checks import check_number
from textenv.files import atomic_path

logger = logging.getLogger(__name__)


# obs -> the env's internal state that render() draws, for envs whose observation determines it.
_STATE_FROM_OBS = {
    "CartPole": lambda o: np.asarray(o, np.float64),
    "MountainCar": lambda o: np.asarray(o, np.float64),
    "MountainCarContinuous": lambda o: np.asarray(o, np.float64),
    "Pendulum": lambda o: np.array([np.arctan2(o[1], o[0]), o[2]], np.float64),
    "Acrobot": lambda o: np.array([np.arctan2(o[1], o[0]), np.arctan2(o[3], o[2]), o[4], o[5]], np.float64),
}


def check_renderable(env_id: str) -> None:
    """Raise ValueError unless :class:`StateRenderer` can draw ``env_id``'s segments from their observations."""
    name = gym.spec(env_id).name
    if name not in _STATE_FROM_OBS:
        raise ValueError(f"no state-from-observation rule for {env_id!r} (known: {sorted(_STATE_FROM_OBS)}): people "
                         "can label classic-control segments drawn from observations; for other envs record frames "
                         "while collecting and pass frames_a=/frames_b= or clips= to HumanLabeller")


class StateRenderer:
    """Frames of a segment from its observations, for envs whose observation fixes what ``render()`` draws.

    Classic control (CartPole, MountainCar, Pendulum, Acrobot): the state is set from each observation and rendered,
    so clips can be made after the fact from a ``PreferenceDataset`` without recording frames during collection.
    Other envs (MuJoCo, Atari) must record rgb_array frames while collecting (``rewardmodels.feedback.clips``).
    """

    def __init__(self, env_id: str):
        check_renderable(env_id)
        self.env = gym.make(env_id, render_mode="rgb_array")
        self._to_state = _STATE_FROM_OBS[gym.spec(env_id).name]
        self.key = env_id  # names the clips it draws (rendering is deterministic given the observations)
        self.env.reset(seed=0)

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        """(T, *obs_shape) observations -> (T, H, W, 3) uint8 frames."""
        frames = []
        for o in np.asarray(obs):
            self.env.unwrapped.state = self._to_state(o)
            frames.append(self.env.render())
        return np.stack(frames)

    def close(self) -> None:
        self.env.close()


def _digest(*parts: bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(len(p).to_bytes(8, "little"))
        h.update(p)
    return h.hexdigest()[:24]


class HumanLabeller:
    """Labels pairs by asking people through the web app; blocks (with a tqdm bar) until they have.

    Args:
        run_dir: the run directory: labels go to ``run_dir/labels.sqlite``, clips to ``run_dir/clips/``.
        timeout: seconds to wait for one batch (None = forever); on expiry LabelTimeoutError is raised, or
            unlabelled pairs come back as NaN when ``on_timeout="nan"`` (they stay queued; late labels are kept).
        poll_s: how often the store is polled while waiting.
        progress: show the progress bar (None = only on a terminal; progress is also logged every 30 s).
        run_tag: tag stored with each query (e.g. the loop iteration); the web app can be limited to one tag.
        fps, max_side: GIF frame rate and largest side in pixels when rendering frames.
        labels_per_pair: > 1 asks that many different people per pair (returned label = their mean).
        renderer: ``obs (T, *obs_shape) -> frames (T, H, W, 3)`` used when pairs come as observations only
            (``label(..., obs_a=, obs_b=)`` or ``label_pairs(dataset)``); ``StateRenderer(env_id)`` for classic
            control, or an env id string as a shortcut for it.
        instructions: what people are asked to judge, shown on the labelling page (the run's task description).
    """

    #: Tells the loop that this labeller needs clips/frames/text, not just rewards.
    needs_media = True

    def __init__(self, run_dir: str | os.PathLike, *, timeout: float | None = None, on_timeout: str = "raise",
                 poll_s: float = 0.5, progress: bool | None = None, run_tag: str = "", fps: float = 15.0,
                 max_side: int | None = 160, labels_per_pair: int | None = None, renderer=None,
                 instructions: str | None = None):
        if on_timeout not in ("raise", "nan"):
            raise ValueError(f"on_timeout must be 'raise' or 'nan', got {on_timeout!r}")
        if timeout is not None and timeout <= 0:
            raise ValueError(f"timeout must be > 0 seconds or None (wait forever), got {timeout}")
        self.run_dir = Path(run_dir)
        self.clip_dir = clip_dir(self.run_dir)
        self.clip_dir.mkdir(parents=True, exist_ok=True)
        self.store = LabelStore(store_path(self.run_dir), labels_per_pair=labels_per_pair)
        try:  # a damaged page fails here, naming the file, not hours later in a query that reads it
            self.store.check_integrity()
        except LabelStoreError:
            self.store.close()
            raise
        self.timeout, self.on_timeout, self.poll_s, self.progress = timeout, on_timeout, poll_s, progress
        self.run_tag, self.fps, self.max_side = run_tag, fps, max_side
        self.renderer = StateRenderer(renderer) if isinstance(renderer, str) else renderer
        if instructions:
            self.store.set_note("instructions", instructions)

    def post_status(self, text: str) -> None:
        """Tell the people who label how the run goes (the labelling page shows it)."""
        self.store.set_note("status", text)

    # -- the loop-facing call --------------------------------------------------------------------------------------
    def label(self, rew_a=None, rew_b=None, mask_a=None, mask_b=None, *, clips=None, frames_a=None, frames_b=None,
              obs_a=None, obs_b=None, texts=None, pair_ids: Sequence[str] | None = None) -> np.ndarray:
        """The loop's ``Labeller`` signature (``label(rew_a, rew_b, mask_a, mask_b, **media)``); (B,) float32.

        Give exactly one kind of media: ``clips`` (B path pairs ``(clip_a, clip_b)`` or B side-by-side clip paths),
        ``frames_a`` and ``frames_b`` (B arrays (T, H, W, 3) uint8 each), ``obs_a`` and ``obs_b`` ((B, T, *obs_shape),
        drawn by ``renderer``), or ``texts`` (``(prompts, responses_a, responses_b)``). Masks (B, T) mark padding
        after a terminal state, shown dimmed. ``rew_a``/``rew_b`` are never shown; they only check the batch size.
        """
        given = [clips is not None, frames_a is not None or frames_b is not None,
                 obs_a is not None or obs_b is not None, texts is not None]
        if sum(given) != 1:
            raise ValueError("HumanLabeller.label needs exactly one of clips=, frames_a=/frames_b=, obs_a=/obs_b= or "
                             "texts=; a person cannot label from rewards alone (use a Teacher for that)")
        if clips is not None:
            ids = self.enqueue_clips(clips, pair_ids)
        elif texts is not None:
            ids = self.enqueue_texts(*texts, pair_ids=pair_ids)
        elif obs_a is not None or obs_b is not None:
            ids = self.enqueue_observations(obs_a, obs_b, mask_a, mask_b, pair_ids)
        else:
            ids = self.enqueue_frames(frames_a, frames_b, pair_ids, mask_a=mask_a, mask_b=mask_b)
        if rew_a is not None and len(rew_a) != len(ids):
            raise ValueError(f"{len(rew_a)} reward rows but {len(ids)} pairs to show; pass one per pair")
        return self.wait(ids)

    def label_pairs(self, pairs) -> np.ndarray:
        """Label a ``PreferenceDataset``: its clip paths (``frames_a``/``frames_b``) when it has them, else its
        observations drawn by ``renderer`` (the ``rewardmodels.teachers.PreferenceLabeller`` protocol)."""
        if getattr(pairs, "frames_a", None) is not None:
            return self.label_clips(list(zip(pairs.frames_a, pairs.frames_b, strict=True)))
        return self.wait(self.enqueue_observations(pairs.obs_a, pairs.obs_b, pairs.mask_a, pairs.mask_b))

    def label_clips(self, clips, pair_ids=None) -> np.ndarray:
        return self.wait(self.enqueue_clips(clips, pair_ids))

    def label_frames(self, frames_a, frames_b, pair_ids=None) -> np.ndarray:
        return self.wait(self.enqueue_frames(frames_a, frames_b, pair_ids))

    def label_texts(self, prompts, responses_a, responses_b, pair_ids=None, conversations=None) -> np.ndarray:
        return self.wait(self.enqueue_texts(prompts, responses_a, responses_b, pair_ids=pair_ids,
                                            conversations=conversations))

    def wait(self, ids: Sequence[str]) -> np.ndarray:
        """Block until ``ids`` are labelled (see ``LabelStore.wait_for_labels``); (B,) float32, NaN = skipped."""
        logger.info("queued %d pair(s) for human labelling; label them with `rlhf-gym label --run %s`",
                    len(ids), self.run_dir)
        try:
            return self.store.wait_for_labels(ids, timeout=self.timeout, poll_s=self.poll_s, progress=self.progress)
        except LabelTimeoutError:
            if self.on_timeout == "raise":
                raise
            logger.warning("human labelling timed out; unlabelled pairs are returned as NaN (skipped)")
            return self.store.labels_array(ids, missing="nan")

    # -- queueing without waiting ----------------------------------------------------------------------------------
    def enqueue_clips(self, clips, pair_ids: Sequence[str] | None = None) -> list[str]:
        """Queue pairs of existing clip files (copied into the run's clip directory unless already there)."""
        queries = []
        for k, item in enumerate(clips):
            pid = pair_ids[k] if pair_ids is not None else None
            if isinstance(item, (str, os.PathLike)):
                queries.append(Query("segment", {"clip": self._adopt(item)}, pid, self.run_tag))
            else:
                a, b = item
                queries.append(Query.segment(self._adopt(a), self._adopt(b), pid, self.run_tag))
        return self.store.enqueue(queries)

    def enqueue_frames(self, frames_a, frames_b, pair_ids: Sequence[str] | None = None, *, mask_a=None,
                       mask_b=None) -> list[str]:
        """Render each segment's frames to a GIF in the clip directory and queue the pairs."""
        if frames_a is None or frames_b is None or len(frames_a) != len(frames_b):
            raise ValueError("frames_a and frames_b must both be given, one (T, H, W, 3) array per pair each")
        pairs = []
        for k, (a, b) in enumerate(zip(frames_a, frames_b, strict=True)):
            if mask_a is not None or mask_b is not None or len(a) != len(b):
                a, b = pad_and_dim(a, b, None if mask_a is None else mask_a[k], None if mask_b is None else mask_b[k])
            pairs.append((self._render(a), self._render(b)))
        return self.enqueue_clips(pairs, pair_ids)

    def enqueue_observations(self, obs_a, obs_b, mask_a=None, mask_b=None,
                             pair_ids: Sequence[str] | None = None) -> list[str]:
        """Draw (B, T, *obs_shape) segments with ``renderer`` and queue them as clips."""
        if self.renderer is None:
            raise ValueError("pairs given as observations need HumanLabeller(renderer=...), e.g. renderer='CartPole-v1'"
                             " (StateRenderer), or pass frames_a=/frames_b= or clips= instead")
        if obs_a is None or obs_b is None or len(obs_a) != len(obs_b):
            raise ValueError("obs_a and obs_b must both be given, (B, T, *obs_shape) each")
        pairs = [(self._render_obs(obs_a[k], None if mask_a is None else mask_a[k]),
                  self._render_obs(obs_b[k], None if mask_b is None else mask_b[k])) for k in range(len(obs_a))]
        return self.enqueue_clips(pairs, pair_ids)

    def enqueue_texts(self, prompts, responses_a, responses_b, pair_ids: Sequence[str] | None = None,
                      conversations: Sequence[tuple[list, list]] | None = None) -> list[str]:
        """Queue text pairs; ``conversations`` (one ``(messages_a, messages_b)`` per pair) shows conversations with
        an environment turn by turn."""
        if not len(prompts) == len(responses_a) == len(responses_b):
            raise ValueError(f"prompts, responses_a, responses_b have lengths {len(prompts)}, {len(responses_a)}, "
                             f"{len(responses_b)}; give one of each per pair")
        if conversations is not None and len(conversations) != len(prompts):
            raise ValueError(f"{len(conversations)} conversations for {len(prompts)} pairs: give one per pair")
        queries = [Query.text(str(p), str(a), str(b), pair_ids[k] if pair_ids is not None else None, self.run_tag,
                              turns=conversations[k] if conversations is not None else None)
                   for k, (p, a, b) in enumerate(zip(prompts, responses_a, responses_b, strict=True))]
        return self.store.enqueue(queries)

    # -- clip files ------------------------------------------------------------------------------------------------
    def _render(self, frames) -> str:
        frames = np.ascontiguousarray(frames)
        name = f"{_digest(frames.tobytes(), str((frames.shape, self.fps, self.max_side)).encode())}.gif"
        if not (self.clip_dir / name).exists():
            render_gif(frames, self.clip_dir / name, fps=self.fps, max_side=self.max_side)
        return name

    def _render_obs(self, obs, mask) -> str:
        """One segment's clip, named by a hash of what it shows, rendered only if that file is not there yet (a
        resumed loop re-asking for the same pairs renders nothing). Steps after termination (``mask`` False) hold
        the last real frame, dimmed: the padded observations are not real states and are never drawn."""
        obs = np.ascontiguousarray(obs)
        mask = np.ones(len(obs), bool) if mask is None else np.asarray(mask, bool).reshape(-1)
        key = getattr(self.renderer, "key", type(self.renderer).__qualname__)
        name = (f"o-{_digest(obs.tobytes(), mask.tobytes(), repr((obs.shape, obs.dtype.str, key)).encode())}"
                f"-{self.max_side}-{self.fps:g}.gif")
        if not (self.clip_dir / name).exists():
            valid = np.flatnonzero(mask)  # padding comes only at the end of a segment
            n_real = int(valid[-1]) + 1 if valid.size else 1
            frames = hold_and_dim(self.renderer(obs[:n_real]), mask[:n_real], len(obs))
            render_gif(frames, self.clip_dir / name, fps=self.fps, max_side=self.max_side)
        return name

    def _adopt(self, path: str | os.PathLike) -> str:
        """A clip's path relative to the clip directory, copying it there (content-named) if it lives elsewhere."""
        src = Path(path)
        if not src.is_absolute() and (self.clip_dir / src).is_file():
            src = self.clip_dir / src
        src = src.resolve(strict=True)
        root = self.clip_dir.resolve()
        if src.is_relative_to(root):
            return src.relative_to(root).as_posix()
        name = f"{_digest(src.read_bytes())}{src.suffix.lower()}"
        if not (root / name).exists():
            with atomic_path(root / name) as tmp:
                shutil.copyfile(src, tmp)
        return name

    def close(self) -> None:
        self.store.close()
        if isinstance(self.renderer, StateRenderer):
            self.renderer.close()


class MixedLabeller:
    """Synthetic and human labels in one run: each batch, a ``human_fraction`` share of the pairs (chosen at random)
    goes to ``human`` (a :class:`HumanLabeller`), the rest to ``teacher`` (a simulated teacher). Segments:
    ``label(rew_a, rew_b, mask_a, mask_b, **media)``, the teacher judging the true rewards; text: ``label_texts(prompts,
    responses_a, responses_b)``, with a text teacher (``rewardmodels.text.teachers``). (B,) float32 either way.

    Useful to save people's time (a teacher labels the easy bulk) or to measure how people and the oracle differ.
    """

    needs_media = True

    def __init__(self, human: HumanLabeller, teacher, human_fraction: float = 0.5, seed: int | None = None):
        check_number("human_fraction", human_fraction, low=0, high=1)
        self.human, self.teacher, self.human_fraction = human, teacher, float(human_fraction)
        self._rng = np.random.default_rng(seed)

    def post_status(self, text: str) -> None:
        self.human.post_status(text)

    def _split(self, n: int) -> tuple[tuple[np.ndarray, object], tuple[np.ndarray, object]]:
        """(rows for the teacher, teacher), (rows for people, human): this batch's random ``human_fraction``."""
        to_human = np.zeros(n, bool)
        to_human[self._rng.permutation(n)[: round(self.human_fraction * n)]] = True
        return (np.flatnonzero(~to_human), self.teacher), (np.flatnonzero(to_human), self.human)

    def label(self, rew_a, rew_b, mask_a=None, mask_b=None, **media) -> np.ndarray:
        rew_a, rew_b = np.asarray(rew_a), np.asarray(rew_b)
        labels = np.full(len(rew_a), np.nan, np.float32)
        for rows, who in self._split(len(rew_a)):
            if rows.size:
                kwargs = {k: _take(v, rows) for k, v in media.items()} if who is self.human else {}
                labels[rows] = who.label(rew_a[rows], rew_b[rows], _take(mask_a, rows), _take(mask_b, rows), **kwargs)
        return labels

    def label_texts(self, prompts: Sequence[str], responses_a: Sequence[str], responses_b: Sequence[str],
                    conversations: Sequence[tuple[list, list]] | None = None) -> np.ndarray:
        labels = np.full(len(prompts), np.nan, np.float32)
        for rows, who in self._split(len(prompts)):
            if rows.size:
                labels[rows] = label_texts(who, _take(list(prompts), rows), _take(list(responses_a), rows),
                                           _take(list(responses_b), rows),
                                           _take(list(conversations), rows) if conversations is not None else None)
        return labels


def label_texts(labeller, prompts: Sequence[str], responses_a: Sequence[str], responses_b: Sequence[str],
                conversations: Sequence[tuple[list, list]] | None = None) -> np.ndarray:
    """(B,) float32 P(a preferred) from people or a mix (``label_texts(prompts, a, b)``: ``HumanLabeller``,
    ``MixedLabeller``) or a simulated text teacher (``label(prompts, a, b)``). ``conversations`` (one
    ``(messages_a, messages_b)`` per pair, for conversations with an environment) go to people, shown turn by turn."""
    if hasattr(labeller, "label_texts"):
        extra = {"conversations": list(conversations)} if conversations is not None else {}
        return np.asarray(labeller.label_texts(list(prompts), list(responses_a), list(responses_b), **extra),
                          dtype=np.float32)
    return np.asarray(labeller.label(list(prompts), list(responses_a), list(responses_b)), dtype=np.float32)


def _take(x, rows: np.ndarray):
    """Rows ``rows`` of per-pair media: an array, a list (one item per pair, e.g. clip paths), or a tuple of those
    (``texts = (prompts, responses_a, responses_b)``); None stays None."""
    if x is None:
        return None
    if isinstance(x, tuple):
        return tuple(_take(part, rows) for part in x)
    if isinstance(x, list):
        return [x[i] for i in rows]
    return np.asarray(x)[rows]
