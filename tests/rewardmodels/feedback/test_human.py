"""HumanLabeller: queue, render clips, wait for people (simulated by threads on the store), resume, time out."""

import threading
import time

import imageio.v3 as iio
import numpy as np
import pytest

from rewardmodels.feedback.clips import render_gif
from rewardmodels.feedback.human import HumanLabeller, StateRenderer
from rewardmodels.feedback.label_store import LabelStore, LabelTimeoutError, store_path
from tests.waiting import OUTER_TIMEOUT_S


def person(run_dir, choices, name="ann", delay=0.02):
    """A thread that labels whatever the store hands it, choosing by pair id from ``choices`` (default left)."""

    def work():
        store = LabelStore(store_path(run_dir))
        deadline = time.monotonic() + OUTER_TIMEOUT_S  # the bound of a broken test, never reached otherwise
        done = 0
        while done < len(choices) and time.monotonic() < deadline:
            pair = store.next_pair(name)
            if pair is None:
                time.sleep(delay)
                continue
            store.submit(pair["pair_id"], choices[pair["payload"].get("prompt", pair["pair_id"])], name)
            done += 1
        store.close()

    t = threading.Thread(target=work, daemon=True)
    t.start()
    return t


def test_label_texts_waits_for_people_and_returns_the_convention(tmp_path):
    labeller = HumanLabeller(tmp_path, timeout=OUTER_TIMEOUT_S, poll_s=0.02)
    prompts = ["p0", "p1", "p2", "p3"]
    t = person(tmp_path, {"p0": "left", "p1": "right", "p2": "equal", "p3": "skip"})
    labels = labeller.label(np.zeros((4, 3)), np.zeros((4, 3)),
                            texts=(prompts, ["a"] * 4, ["b"] * 4))
    t.join()
    assert labels.dtype == np.float32 and labels.shape == (4,)
    np.testing.assert_array_equal(labels, [1.0, 0.0, 0.5, np.nan])


def test_frames_are_rendered_into_the_clip_dir_and_resume_reuses_labels(tmp_path):
    rng = np.random.default_rng(0)
    fa = [rng.integers(0, 255, (5, 40, 60, 3), dtype=np.uint8) for _ in range(3)]
    fb = [rng.integers(0, 255, (4, 40, 60, 3), dtype=np.uint8) for _ in range(3)]
    first = HumanLabeller(tmp_path, timeout=0.2, poll_s=0.02)
    ids = first.enqueue_frames(fa, fb)
    gifs = sorted(p.name for p in (tmp_path / "clips").iterdir())
    assert len(gifs) == 6 and all(g.endswith(".gif") for g in gifs)
    pair = first.store.next_pair("ann")
    assert pair["payload"]["clip_a"] in gifs
    assert iio.improps(tmp_path / "clips" / pair["payload"]["clip_a"]).shape[0] == 5
    for pid, choice in zip(ids[:2], ["left", "right"], strict=True):
        first.store.submit(pid, choice, "ann")
    with pytest.raises(LabelTimeoutError):
        first.label_frames(fa, fb)
    first.close()

    # The loop restarts and asks for the same pairs: same ids, the two labels are kept, one pair is still queued.
    again = HumanLabeller(tmp_path, timeout=OUTER_TIMEOUT_S, poll_s=0.02)
    assert again.enqueue_frames(fa, fb) == ids
    assert again.store.progress() == {"queued": 3, "labelled": 2, "labels": 2}
    t = person(tmp_path, {ids[2]: "equal"})
    np.testing.assert_array_equal(again.label(frames_a=fa, frames_b=fb), [1.0, 0.0, 0.5])
    t.join()


def test_timeout_can_return_nan_instead(tmp_path):
    labeller = HumanLabeller(tmp_path, timeout=0.1, on_timeout="nan", poll_s=0.02)
    labels = labeller.label_texts(["p"], ["a"], ["b"])
    assert np.isnan(labels).all()
    assert labeller.store.progress()["queued"] == 1  # still queued: a late label is kept for export


def test_clip_files_are_adopted_into_the_clip_dir(tmp_path):
    outside = tmp_path / "elsewhere"
    frames = np.zeros((2, 8, 8, 3), np.uint8)
    a = render_gif(frames, outside / "a.gif")
    b = render_gif(frames + 255, outside / "b.gif")
    run = tmp_path / "run"
    labeller = HumanLabeller(run, timeout=0.1, on_timeout="nan")
    inside = render_gif(frames, run / "clips" / "sub" / "c.gif")
    [pid_ab, pid_side] = labeller.enqueue_clips([(a, b), inside])
    pairs = {p["pair_id"]: p["payload"] for p in [labeller.store.next_pair("x"), labeller.store.next_pair("y")]}
    assert pairs[pid_side] == {"clip": "sub/c.gif"}  # already inside: referenced, not copied
    ca, cb = pairs[pid_ab]["clip_a"], pairs[pid_ab]["clip_b"]
    assert (run / "clips" / ca).read_bytes() == a.read_bytes() and "/" not in ca and ca != cb


def test_label_needs_exactly_one_kind_of_media(tmp_path):
    labeller = HumanLabeller(tmp_path)
    with pytest.raises(ValueError, match="exactly one"):
        labeller.label(np.zeros((1, 2)), np.zeros((1, 2)))
    with pytest.raises(ValueError, match="exactly one"):
        labeller.label(texts=(["p"], ["a"], ["b"]), clips=["x.gif"])
    with pytest.raises(ValueError, match="one per pair"):
        labeller.label(np.zeros((2, 2)), np.zeros((2, 2)), texts=(["p"], ["a"], ["b"]))
    with pytest.raises(ValueError, match="lengths"):
        labeller.enqueue_texts(["p"], ["a", "a2"], ["b"])
    with pytest.raises(ValueError, match="on_timeout"):
        HumanLabeller(tmp_path, on_timeout="ignore")


def test_state_renderer_draws_cartpole_from_observations():
    renderer = StateRenderer("CartPole-v1")
    obs = np.array([[0, 0, 0, 0], [0, 0, 0.2, 0], [1.0, 0, -0.2, 0]], np.float32)
    frames = renderer(obs)
    renderer.close()
    assert frames.shape == (3, 400, 600, 3) and frames.dtype == np.uint8
    assert not np.array_equal(frames[0], frames[1]) and not np.array_equal(frames[1], frames[2])
    with pytest.raises(ValueError, match="state-from-observation"):
        StateRenderer("FrozenLake-v1")


def cartpole_pairs(n_pairs, segment_len=12, seed=0):
    """Random-policy CartPole segment pairs as a real PreferenceDataset (true rewards known)."""
    import gymnasium as gym

    from rewardmodels.preferences import PreferenceDataset
    from rewardmodels.segments import Trajectory, cut_segments

    env = gym.make("CartPole-v1")
    rng = np.random.default_rng(seed)
    trajs = []
    for ep in range(max(6, n_pairs)):
        obs, _ = env.reset(seed=seed * 1000 + ep)
        steps = []
        while True:
            act = int(rng.integers(2))
            nxt, rew, term, trunc, _ = env.step(act)
            steps.append((obs, act, rew))
            obs = nxt
            if term or trunc:
                break
        o, a, r = zip(*steps, strict=True)
        trajs.append(Trajectory(np.stack(o), np.array(a), np.array(r, np.float32), terminated=term))
    env.close()
    segs = cut_segments(trajs, segment_len, n=2 * n_pairs, rng=rng)
    return PreferenceDataset.from_segments(segs[:n_pairs], segs[n_pairs:], obs_space=env.observation_space,
                                           act_space=env.action_space)


def oracle_choice(ret_a, ret_b):
    return "equal" if np.isclose(ret_a, ret_b) else ("left" if ret_a > ret_b else "right")


def test_label_pairs_on_a_preference_dataset_matches_the_oracle_teacher(tmp_path):
    from rewardmodels.teachers import make_teacher

    ds = cartpole_pairs(6)
    labeller = HumanLabeller(tmp_path, renderer="CartPole-v1", timeout=OUTER_TIMEOUT_S, poll_s=0.02, max_side=96)
    ids = labeller.enqueue_observations(ds.obs_a, ds.obs_b, ds.mask_a, ds.mask_b)  # what people will be shown
    ret_a, ret_b = ds.true_returns()
    t = person(tmp_path, {pid: oracle_choice(ret_a[k], ret_b[k]) for k, pid in enumerate(ids)})
    labels = labeller.label_pairs(ds)  # renders the same clips again: same ids, waits for the person
    t.join()
    oracle = make_teacher("oracle").label(ds.true_rew_a, ds.true_rew_b, ds.mask_a, ds.mask_b)
    np.testing.assert_array_equal(labels, oracle)
    assert len(list((tmp_path / "clips").glob("*.gif"))) <= 12


def test_mixed_labeller_sends_a_share_to_people_and_the_rest_to_the_teacher(tmp_path):
    from rewardmodels.feedback.human import MixedLabeller
    from rewardmodels.teachers import make_teacher

    ds = cartpole_pairs(8)
    human = HumanLabeller(tmp_path, renderer="CartPole-v1", timeout=OUTER_TIMEOUT_S, poll_s=0.02,
                          max_side=64)
    mixed = MixedLabeller(human, make_teacher("oracle"), human_fraction=0.25, seed=0)

    class SkipTwo(dict):  # a person who skips whatever pair is shown, two of them: their pairs come back NaN
        def __missing__(self, key):
            return "skip"

        def __len__(self):
            return 2

    t = person(tmp_path, SkipTwo(), delay=0.01)
    labels = mixed.label(ds.true_rew_a, ds.true_rew_b, ds.mask_a, ds.mask_b, obs_a=ds.obs_a, obs_b=ds.obs_b)
    oracle = make_teacher("oracle").label(ds.true_rew_a, ds.true_rew_b, ds.mask_a, ds.mask_b)
    to_people = np.isnan(labels)
    assert to_people.sum() == 2  # 25% of 8 pairs
    np.testing.assert_array_equal(labels[~to_people], oracle[~to_people])
    with LabelStore(store_path(tmp_path)) as store:
        assert len(store.rows()) == 2  # only the people's share was asked (and answered)
    t.join(timeout=OUTER_TIMEOUT_S)
    with pytest.raises(ValueError, match="human_fraction"):
        MixedLabeller(human, make_teacher("oracle"), human_fraction=-0.1)
