"""The SQLite label store: queue, leases, submit errors, multi-label mode, waiting, export, concurrency."""

import dataclasses
import json
import math
import sqlite3
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from rewardmodels.feedback.label_store import (
    AlreadyLabelledError,
    InvalidLabelError,
    LabelStore,
    LabelStoreError,
    LabelTimeoutError,
    Query,
    UnknownPairError,
    parse_label,
)
from tests.waiting import OUTER_TIMEOUT_S


@pytest.fixture
def store(tmp_path):
    s = LabelStore(tmp_path / "labels.sqlite")
    yield s
    s.close()


def texts(n, run=""):
    return [Query.text(f"prompt {i}", f"a{i}", f"b{i}", run=run) for i in range(n)]


def n_labels(store):
    return store.progress()["labels"]


def test_round_trip_and_the_label_convention(store):
    ids = store.enqueue(texts(4))
    for choice in ("left", "right", "equal", "skip"):
        pair = store.next_pair("ann")
        store.submit(pair["pair_id"], choice, "ann")
    np.testing.assert_array_equal(store.labels_array(ids), np.array([1.0, 0.0, 0.5, np.nan], np.float32))
    assert store.labels_array(ids).dtype == np.float32
    assert store.next_pair("ann") is None
    assert store.progress() == {"queued": 4, "labelled": 4, "labels": 4}
    rows = store.rows()
    assert [r["choice"] for r in rows] == ["left", "right", "equal", "skip"] and rows[0]["labeller"] == "ann"
    assert rows[0]["payload"] == {"prompt": "prompt 0", "response_a": "a0", "response_b": "b0"}


@pytest.mark.parametrize("value, expected", [("left", 1.0), (1, 1.0), (1.0, 1.0), (0, 0.0), ("right", 0.0),
                                             (0.5, 0.5), ("equal", 0.5), (None, math.nan), (math.nan, math.nan),
                                             ("skip", math.nan), (np.float32(0.5), 0.5)])
def test_parse_label_accepts_the_allowed_set(value, expected):
    label, _ = parse_label(value)
    assert label == expected or (math.isnan(label) and math.isnan(expected))


@pytest.mark.parametrize("bad", ["up", "LEFT", "1", 2, -1, 0.3, True, [], {}, float("inf")])
def test_invalid_labels_are_refused_and_nothing_is_written(store, bad):
    [pid] = store.enqueue(texts(1))
    with pytest.raises(InvalidLabelError):
        store.submit(pid, bad, "ann")
    assert n_labels(store) == 0


def test_unknown_and_already_labelled_pairs(store):
    [pid] = store.enqueue(texts(1))
    with pytest.raises(UnknownPairError, match="was ever queued"):
        store.submit("no-such-pair", "left", "ann")
    store.submit(pid, "left", "ann")
    with pytest.raises(AlreadyLabelledError):
        store.submit(pid, "right", "bob")
    with pytest.raises(AlreadyLabelledError):
        store.submit(pid, "right", "ann")
    assert n_labels(store) == 1 and store.labels_array([pid])[0] == 1.0


@pytest.mark.parametrize("name", ["", " ", "x" * 65, "<script>", "a\nb", "a;b", "a/b", 3, None, "alice\n", " alice",
                                  "alice ", "x" * 64 + "\n"])
def test_bad_labeller_names(store, name):
    [pid] = store.enqueue(texts(1))
    with pytest.raises(InvalidLabelError):
        store.submit(pid, "left", name)
    with pytest.raises(InvalidLabelError):
        store.next_pair(name)
    assert n_labels(store) == 0


@pytest.mark.parametrize("pid", ["", "a b", "../x", "x" * 129, 7, None])
def test_bad_pair_ids(store, pid):
    with pytest.raises(InvalidLabelError):
        store.submit(pid, "left", "ann")


def test_bad_queries():
    with pytest.raises(InvalidLabelError, match="kind"):
        Query("video", {"clip": "a.gif"})
    with pytest.raises(InvalidLabelError, match="response_b"):
        Query("text", {"prompt": "p", "response_a": "a"})
    with pytest.raises(InvalidLabelError, match="clip_a"):
        Query("segment", {"clip_a": "a.gif"})
    with pytest.raises(InvalidLabelError):
        Query.text("p", "a", "b", pair_id="bad id!")


def test_enqueue_is_idempotent_by_content(store):
    ids = store.enqueue(texts(3))
    store.submit(ids[0], "left", "ann")
    assert store.enqueue(texts(3)) == ids  # same content -> same ids, labels kept
    assert store.progress() == {"queued": 3, "labelled": 1, "labels": 1}
    assert store.enqueue([Query.text("p", "a", "b", pair_id="mine")]) == ["mine"]


class Clock:
    """The label store's clock, moved by hand: a lease expires when the test says, not when a busy machine does."""

    def __init__(self):
        self.now = time.time()

    def time(self):
        return self.now

    def __getattr__(self, name):  # monotonic, sleep: the real ones
        return getattr(time, name)


def test_concurrent_labellers_get_different_pairs_and_leases_expire(tmp_path, monkeypatch):
    import rewardmodels.feedback.label_store as label_store

    clock = Clock()
    monkeypatch.setattr(label_store, "time", clock)
    store = LabelStore(tmp_path / "l.sqlite", lease_s=300)
    ids = store.enqueue(texts(2))
    a, b = store.next_pair("ann"), store.next_pair("bob")
    assert {a["pair_id"], b["pair_id"]} == set(ids)
    assert store.next_pair("cy") is None  # both held
    assert store.next_pair("ann")["pair_id"] == a["pair_id"]  # a reload shows the same pair again
    clock.now += 301
    assert store.next_pair("cy")["pair_id"] == ids[0]  # ann's lease expired
    store.release(ids[0], "cy")
    assert store.next_pair("dee")["pair_id"] == ids[0]


def test_a_held_pair_labelled_by_someone_else_is_not_shown_again(store):
    ids = store.enqueue(texts(2))
    assert store.next_pair("ann")["pair_id"] == ids[0]
    store.submit(ids[0], "left", "bob")  # bob labels it directly (e.g. an API client) while ann holds it
    assert store.next_pair("ann")["pair_id"] == ids[1]
    assert store._conn().execute("SELECT COUNT(*) FROM assignments WHERE pair_id = ?", (ids[0],)).fetchone()[0] == 0


def test_multi_label_mode(tmp_path):
    path = tmp_path / "l.sqlite"
    store = LabelStore(path, labels_per_pair=3)
    [pid] = store.enqueue(texts(1))
    assert [store.next_pair(n)["pair_id"] for n in ("ann", "bob", "cy")] == [pid] * 3  # allowed at once
    assert store.next_pair("dee") is None
    store.submit(pid, "left", "ann")
    with pytest.raises(AlreadyLabelledError):
        store.submit(pid, "right", "ann")  # one label per person
    assert np.isnan(store.labels_array([pid], missing="nan")[0])
    with pytest.raises(LabelStoreError, match="not labelled yet"):
        store.labels_array([pid])
    store.submit(pid, "equal", "bob")
    store.submit(pid, "skip", "cy")  # skips do not count towards the mean
    assert store.labels_array([pid])[0] == pytest.approx(0.75)
    with pytest.raises(AlreadyLabelledError):
        store.submit(pid, "left", "dee")
    store.close()
    with pytest.raises(ValueError, match="labels_per_pair=3"):
        LabelStore(path, labels_per_pair=1)
    assert LabelStore(path).labels_per_pair == 3


def test_single_label_mode_is_enforced_by_the_database_too(store):
    [pid] = store.enqueue(texts(1))
    store.submit(pid, "left", "ann")
    db = sqlite3.connect(store.path)
    with pytest.raises(sqlite3.IntegrityError):
        db.execute("INSERT INTO labels (pair_id, label, choice, labeller, created) VALUES (?, 0, 'right', 'x', 0)",
                   (pid,))
    db.close()


def test_wal_mode_and_labels_survive_reopening(tmp_path):
    path = tmp_path / "l.sqlite"
    store = LabelStore(path)
    assert store._conn().execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store._conn().execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    ids = store.enqueue(texts(2))
    store.submit(ids[1], "right", "ann")
    store.close()
    again = LabelStore(path)
    np.testing.assert_array_equal(again.labels_array(ids, missing="nan"), [np.nan, 0.0])


def copy_alone(path, dest):
    """labels.sqlite copied without its -wal and -shm files: the backup a user makes with cp."""
    import shutil

    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, dest)
    return dest


def label_rows(path):
    with LabelStore(path) as copy:
        return [(r["pair_id"], r["choice"], r["labeller"]) for r in copy.rows()]


def test_a_copy_of_the_database_file_alone_holds_every_label_while_the_store_is_open(store, tmp_path):
    """Labels sat in labels.sqlite-wal while a server held the store (SQLite checkpoints at 1000 pages): a copy of
    labels.sqlite alone was an empty store. Each durable write now ends with a checkpoint."""
    ids = store.enqueue(texts(5))
    acked = []
    for k, pid in enumerate(ids[:4]):
        store.submit(pid, "left" if k % 2 else "right", f"person {k}")
        acked.append((pid, "left" if k % 2 else "right", f"person {k}"))
        assert label_rows(copy_alone(store.path, tmp_path / f"copy{k}" / "labels.sqlite")) == acked
    store.undo_last("person 3")
    assert label_rows(copy_alone(store.path, tmp_path / "undone" / "labels.sqlite")) == acked[:3]


def test_a_checkpoint_a_reader_held_back_is_finished_once_it_moves_on(store, tmp_path):
    ids = store.enqueue(texts(2))
    reader = sqlite3.connect(store.path, isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT COUNT(*) FROM labels").fetchone()  # a snapshot from before the label
    store.submit(ids[0], "left", "ann")
    assert label_rows(copy_alone(store.path, tmp_path / "held" / "labels.sqlite")) == []  # the reader needs the WAL
    reader.execute("COMMIT")
    reader.close()
    deadline = time.monotonic() + 60  # the background retry copies it now; wait for that, generously
    later = tmp_path / "later" / "labels.sqlite"
    while label_rows(copy_alone(store.path, later)) == [] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert label_rows(tmp_path / "later" / "labels.sqlite") == [(ids[0], "left", "ann")]


def test_backup_is_one_consistent_file_made_while_another_thread_labels(store, tmp_path):
    ids = store.enqueue(texts(300))
    done = threading.Event()

    def person():
        for pid in ids:
            store.submit(pid, "left", "ann")
        done.set()

    writer = threading.Thread(target=person)
    writer.start()
    backups = []
    while not done.is_set() or not backups:
        path = tmp_path / f"backup{len(backups)}.sqlite"
        backups.append((store.backup(path), path))
    writer.join()
    for n, path in backups:
        assert not path.with_name(path.name + "-wal").exists()  # one self-contained file
        with sqlite3.connect(path) as db:
            assert db.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
        assert [r[0] for r in label_rows(path)] == ids[:n]  # a consistent prefix, never a torn copy
    assert backups[-1][0] == 300 or store.backup(tmp_path / "final.sqlite") == 300


def test_wait_for_labels_blocks_until_people_label(store):
    ids = store.enqueue(texts(3))

    def person():
        for _ in ids:
            time.sleep(0.05)
            pair = store.next_pair("ann")
            store.submit(pair["pair_id"], "right", "ann")

    t = threading.Thread(target=person)
    t.start()
    labels = store.wait_for_labels(ids, timeout=OUTER_TIMEOUT_S, poll_s=0.02, progress=True)
    t.join()
    np.testing.assert_array_equal(labels, [0, 0, 0])


def test_wait_for_labels_times_out_and_rejects_unknown_ids(store):
    ids = store.enqueue(texts(2))
    store.submit(ids[0], "left", "ann")
    with pytest.raises(LabelTimeoutError, match="only 1 of 2"):
        store.wait_for_labels(ids, timeout=0.2, poll_s=0.05, progress=False)
    with pytest.raises(UnknownPairError):
        store.wait_for_labels(["nope"], timeout=0.1)


def test_export_text_jsonl(store, tmp_path):
    ids = store.enqueue(texts(3) + [Query.segment("a.gif", "b.gif")])
    store.submit(ids[0], "left", "ann")
    store.submit(ids[1], "skip", "ann")
    store.submit(ids[3], "right", "ann")  # a segment pair: not in the text export
    out = tmp_path / "pairs.jsonl"
    assert store.export_text_jsonl(out) == 1
    assert [json.loads(line) for line in out.read_text().splitlines()] == [
        {"prompt": "prompt 0", "response_a": "a0", "response_b": "b0", "label": 1.0}]
    assert store.export_text_jsonl(out, include_skipped=True) == 2
    assert json.loads(out.read_text().splitlines()[1])["label"] is None


def test_text_export_is_readable_by_text_preference_pairs(store, tmp_path):
    from rewardmodels.text.preferences import TextPreferencePairs

    ids = store.enqueue(texts(3) + [Query.text("p", "same", "same"), Query.text("p", " ", "x")])
    for pid, choice in zip(ids, ["left", "equal", "skip", "left", "right"], strict=True):
        store.submit(pid, choice, "ann")
    out = tmp_path / "pairs.jsonl"
    assert store.export_text_jsonl(out, include_skipped=True) == 3  # identical / empty responses left out
    pairs = TextPreferencePairs.load(out)
    assert len(pairs) == 3 and pairs.prompts[0] == "prompt 0"
    np.testing.assert_array_equal(pairs.labels, np.array([1.0, 0.5, np.nan], np.float32))


def test_merge_into_a_preference_dataset(store):
    @dataclasses.dataclass
    class FakeDataset:  # stands in for rewardmodels.preferences.PreferenceDataset (same labels field contract)
        obs: np.ndarray
        labels: np.ndarray

        def __len__(self):
            return len(self.labels)

    ids = store.enqueue([Query.segment(f"a{i}.gif", f"b{i}.gif") for i in range(3)])
    for pid, choice in zip(ids, ["right", "left", "skip"], strict=True):
        store.submit(pid, choice, "ann")
    ds = FakeDataset(np.zeros((3, 4)), np.full(3, np.nan, np.float32))
    merged = store.merge_into(ds, ids)
    np.testing.assert_array_equal(merged.labels, [0, 1, np.nan])
    with pytest.raises(ValueError, match="one id per pair"):
        store.merge_into(ds, ids[:2])


def test_threads_never_double_label(store):
    ids = store.enqueue(texts(120))
    got: list[str] = []
    errors: list[Exception] = []

    def worker(name):
        try:
            while (pair := store.next_pair(name)) is not None:
                store.submit(pair["pair_id"], "left", name)
                got.append(pair["pair_id"])
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=OUTER_TIMEOUT_S)
    assert not errors
    assert sorted(got) == sorted(ids) and n_labels(store) == 120


def test_processes_share_the_queue_without_overlap(tmp_path):
    """Leases are exclusive across processes too (BEGIN IMMEDIATE takes the write lock before choosing)."""
    path = tmp_path / "l.sqlite"
    with LabelStore(path) as store:
        ids = store.enqueue(texts(80))
    script = (
        "import sys, json\n"
        "from rewardmodels.feedback.label_store import LabelStore\n"
        "s = LabelStore(sys.argv[1]); got = []\n"
        "while (p := s.next_pair(sys.argv[2])) is not None:\n"
        "    s.submit(p['pair_id'], 'left', sys.argv[2]); got.append(p['pair_id'])\n"
        "print(json.dumps(got))\n")
    procs = [subprocess.Popen([sys.executable, "-c", script, str(path), f"p{i}"], stdout=subprocess.PIPE, text=True)
             for i in range(3)]
    claimed = [json.loads(p.communicate(timeout=OUTER_TIMEOUT_S)[0]) for p in procs]  # a busy machine: slow imports
    flat = [pid for c in claimed for pid in c]
    assert sorted(flat) == sorted(ids)  # every pair handed out once, to one process
    assert all(p.returncode == 0 for p in procs)  # and no AlreadyLabelledError in any of them


def test_names_are_one_person_case_insensitively_and_stored_as_typed(store):
    ids = store.enqueue(texts(3))
    assert store.next_pair("Alice")["pair_id"] == ids[0]
    assert store.next_pair("alice")["pair_id"] == ids[0] and store.next_pair("bob")["pair_id"] == ids[1]
    store.submit(ids[0], "left", "ALICE")
    with pytest.raises(AlreadyLabelledError):
        store.submit(ids[0], "right", "alice")
    assert [r["labeller"] for r in store.rows()] == ["ALICE"]


def test_undo_last_moves_the_label_to_the_audit_table_and_re_reserves_the_pair(store):
    ids = store.enqueue(texts(3))
    store.submit(ids[0], "left", "ann")
    store.submit(ids[1], "right", "Ann")
    assert store.undo_last("bob") is None
    assert store.undo_last("ANN") == ids[1]
    assert [r["pair_id"] for r in store.rows()] == [ids[0]]
    assert store.next_pair("carl")["pair_id"] == ids[2]  # ids[1] is held for ann again
    assert store.next_pair("ann")["pair_id"] == ids[1]
    assert store.undo_last("ann", run="another-tag") is None
    with pytest.raises(LabelStoreError, match="undone for 0 s"):
        store.undo_last("ann", within_s=0.0)
    assert store._conn().execute("SELECT COUNT(*) FROM undone").fetchone()[0] == 1


def test_invitations(store):
    token = store.invite("Ann")
    assert len(token) >= 32 and store.person(token) == "Ann" and store.person("made-up") is None
    assert token not in str(store._conn().execute("SELECT * FROM people").fetchall())  # only a hash is kept
    replaced = store.invite("ann")
    assert store.person(token) is None and store.person(replaced) == "ann"
    assert store.revoke("ANN") and store.person(replaced) is None
    with pytest.raises(InvalidLabelError):
        store.invite("ann\n")


def test_a_file_that_is_not_a_label_database(tmp_path):
    path = tmp_path / "labels.sqlite"
    path.write_bytes(b"definitely not SQLite" * 100)
    with pytest.raises(LabelStoreError, match="not a usable label database.*move it aside"):
        LabelStore(path)
    assert path.read_bytes() == b"definitely not SQLite" * 100


def test_notes_for_labellers_are_kept_and_refused_for_unknown_keys(tmp_path):
    with LabelStore(tmp_path / "labels.sqlite") as store:
        assert store.notes() == {}
        store.set_note("instructions", "judge positivity")
        store.set_note("status", "round 1")
        store.set_note("status", "round 2")
        with pytest.raises(ValueError, match="note must be one of"):
            store.set_note("html", "x")
    with LabelStore(tmp_path / "labels.sqlite") as store:  # kept in the file
        assert store.notes() == {"instructions": "judge positivity", "status": "round 2"}
