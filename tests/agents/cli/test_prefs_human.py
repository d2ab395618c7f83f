"""``rlhf-gym prefs --labeller human`` when people do not come, and when their label store is damaged (issue 25): a
batch nobody labels is skipped as ``--help`` says (it ended in an EmptyDatasetError traceback), and a corrupt
labels.sqlite met by a resumed run is one line naming the file (it was a LabelStoreError traceback)."""

import json
import logging
import os

import pytest

from agents.cli import main
from rewardmodels.feedback.label_store import LabelStore, Query, store_path

# Nobody labels: each batch waits --label-timeout (1 s), then its pairs come back unlabelled.
NOBODY = ["--env", "CartPole-v1", "--labeller", "human", "--label-timeout", "1", "--labels", "6", "--steps", "600",
          "--rounds", "2", "--segment-len", "10", "--initial-steps", "200", "--ensemble", "2", "--reward-epochs", "2",
          "--eval-episodes", "1", "--eval-every", "0", "--no-progress"]


def metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def unlabelled_run(tmp_path_factory):
    """A real run whose people never label: every batch times out."""
    out = tmp_path_factory.mktemp("prefs") / "run"
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("agents.loop.preference_loop").addHandler(handler)
    try:
        status = main(["prefs", *NOBODY, "--out", str(out)])
    finally:
        logging.getLogger("agents.loop.preference_loop").removeHandler(handler)
    return out, status, [r.getMessage() for r in records]


def test_batches_nobody_labels_are_skipped_and_the_run_finishes(unlabelled_run):
    out, status, logged = unlabelled_run
    assert status == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["finished"] and summary["labels_used"] == 6
    rows = metrics(out)
    assert [r["labels/skipped"] for r in rows if "labels/skipped" in r] == [2.0, 2.0, 2.0]  # every pair, reported
    assert not any("reward_model/accuracy" in r for r in rows)  # never fitted on nothing
    assert sum("keeps its previous fit" in m for m in logged) == 3
    with LabelStore(store_path(out)) as store:
        assert store.progress() == {"queued": 6, "labelled": 0, "labels": 0}  # still queued for late labels


def _damage(path, how):
    if how == "garbage":
        path.write_bytes(os.urandom(8192))
    else:  # a sound header over damaged pages: opens, then fails on the first query that reads them
        with LabelStore(path) as store:
            store.enqueue([Query.text(f"prompt {i}" * 40, "a", "b") for i in range(300)])
        data = bytearray(path.read_bytes())
        data[len(data) // 2:len(data) // 2 + 8192] = os.urandom(8192)
        path.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["garbage", "damaged pages"])
def test_a_corrupt_label_store_on_resume_is_one_line_naming_the_file(unlabelled_run, tmp_path, capsys, how):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(unlabelled_run[0], out)
    for extra in ("labels.sqlite-wal", "labels.sqlite-shm"):
        (out / extra).unlink(missing_ok=True)
    _damage(store_path(out), how)
    damaged = store_path(out).read_bytes()
    assert main(["prefs", "--out", str(out), "--resume", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("rlhf-gym prefs: error: "), err
    assert str(store_path(out)) in err and "move it aside" in err
    assert store_path(out).read_bytes() == damaged  # left as it was, for rescue


def test_text_batches_nobody_labels_are_skipped_too(tmp_path):
    """The same loop drives text: people who never label cost each round its timeout, nothing more."""
    out = tmp_path / "text"
    argv = ["text", "--labeller", "human", "--label-timeout", "1", "--rounds", "2", "--pairs", "4", "--iterations",
            "2", "--max-new-tokens", "4", "--eval-prompts", "2", "--samples", "0", "--no-progress", "--out", str(out)]
    assert main(argv) == 0
    assert json.loads((out / "summary.json").read_text())["labels_used"] == 4
    assert [r["labels/skipped"] for r in metrics(out) if "labels/skipped" in r] == [2.0, 2.0]
