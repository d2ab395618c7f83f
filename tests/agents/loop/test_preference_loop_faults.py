"""The loop stopped while people label: the checkpoint saved before waiting lets a resumed run ask people for the
very same pairs, so no label they gave is lost and nothing is queued twice (issue 15, failure 3)."""

import json
import signal
import threading
import time

import numpy as np
import pytest

from agents.loop.control.run import build_loop
from agents.loop.preference_loop import PENDING_FILE, label_allocation
from rewardmodels.feedback.label_store import LabelStore, store_path
from rewardmodels.preferences import PreferenceDataset
from tests.agents.loop.test_preference_loop import tiny
from tests.waiting import OUTER_TIMEOUT_S, POLL_S


def _latest(out):
    try:
        return json.loads((out / "checkpoints" / "latest.json").read_text())["checkpoint"]
    except (OSError, ValueError, KeyError):
        return None


class People(threading.Thread):
    """Labels every queued pair 'left' until the loop waits for round 1's pairs; then presses Ctrl-C (SIGINT)."""

    def __init__(self, out):
        super().__init__(daemon=True)
        self.out, self.interrupted, self.done = out, threading.Event(), threading.Event()

    def run(self):
        deadline = time.monotonic() + OUTER_TIMEOUT_S  # the loop under test, not this thread, decides when it ends
        while not self.done.is_set() and time.monotonic() < deadline:
            self.done.wait(POLL_S)
            if _latest(self.out) == "round-0001-labelling":
                with LabelStore(store_path(self.out)) as store:
                    if store.progress()["queued"] < 4:  # round 1's clips are still being drawn
                        continue
                # Round 1's labelling checkpoint is committed and its pairs queued: the main thread waits for
                # people now (or is about to), and Ctrl-C there keeps that checkpoint (signals_deferred).
                self.interrupted.set()
                signal.raise_signal(signal.SIGINT)  # the main thread, in wait_for_labels, gets KeyboardInterrupt
                return
            if store_path(self.out).exists():
                with LabelStore(store_path(self.out)) as store:
                    while (pair := store.next_pair("alice")) is not None:
                        store.submit(pair["pair_id"], "left", "alice")


def test_ctrl_c_while_people_label_then_resume_asks_for_the_same_pairs(tmp_path):
    out = tmp_path / "run"
    # mixed: a random half of each batch goes to people; the choice must survive the restart, or other pairs get
    # queued and the ones people labelled are wasted. label_timeout: only the outer bound of a broken test (people
    # here are a thread, as slow as the machine is busy: a guess of 60 s failed on a loaded machine).
    cfg = tiny(labeller="mixed", human_fraction=0.5, labels=8, rounds=2, label_until=0.5, eval_every=0,
               label_timeout=OUTER_TIMEOUT_S)
    assert label_allocation(cfg) == [4, 4, 0]  # 2 + 2 pairs for people, in rounds 0 and 1
    people = People(out)
    loop = build_loop(cfg, out)
    people.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            loop.run()
    finally:
        people.done.set()
        loop.agent.close()
    assert people.interrupted.is_set()
    ckpt = out / "checkpoints" / "round-0001-labelling"
    assert _latest(out) == ckpt.name and (out / "checkpoints" / "round-0000").is_dir()  # and the one before it
    pending = PreferenceDataset.load(ckpt / PENDING_FILE)
    assert len(pending) == 4 and np.isnan(pending.labels).all()

    with LabelStore(store_path(out)) as store:  # people label round 1's pairs while the loop is down
        queued = store.progress()["queued"]
        while (pair := store.next_pair("alice")) is not None:
            store.submit(pair["pair_id"], "right", "alice")
        assert store.progress()["labelled"] == queued == 4  # 2 of round 0 and 2 of round 1

    resumed = build_loop(cfg, out)
    try:
        summary = resumed.run(resume=True)
    finally:
        resumed.agent.close()
    assert summary["finished"] and summary["labels_used"] == 8
    with LabelStore(store_path(out)) as store:
        assert store.progress() == {"queued": 4, "labelled": 4, "labels": 4}  # the same pairs: nothing queued twice
    labels = resumed.dataset.labels
    assert not np.isnan(labels).any()  # every label used, none timed out
    np.testing.assert_array_equal(resumed.dataset.obs_a[4:], pending.obs_a)  # round 1 = the pairs saved pending
    assert (labels[4:] == 0.0).sum() >= 2  # the two people chose "right" (the teacher's labels may say anything)
