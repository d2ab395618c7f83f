"""A durable SQLite store for human preference labels: the queue people label from and the loop reads from.

Schema (one file, ``<run>/labels.sqlite`` by convention, see :func:`store_path`)::

    queries      pair_id TEXT PK, kind 'segment'|'text', run TEXT, payload JSON, created REAL
    assignments  (pair_id, labeller) PK, expires REAL   -- who holds a pair, until when (a lease)
    labels       id PK, pair_id, label REAL (NULL = skipped), choice TEXT, labeller TEXT, created REAL
                 UNIQUE (pair_id, labeller); UNIQUE (pair_id) too unless the store was made with labels_per_pair > 1
    undone       the labels people took back with ``undo_last`` (kept for audit), with the time of the undo
    people       key TEXT PK, name TEXT, token_sha256 TEXT UNIQUE, created REAL  -- personal invitations

Labeller names (one person = the case-folded name), the label convention (1.0 left, 0.0 right, 0.5 equal, NaN
skipped), pair ids and queries: ``rewardmodels.feedback.labels``, re-exported here.

Durability: WAL journal with ``synchronous=FULL``, so a label whose ``submit`` returned (and whose HTTP request was
acknowledged) survives a ``kill -9`` of the process and a power cut. Every read-modify-write runs in a
``BEGIN IMMEDIATE`` transaction (the write lock is taken up front, so two labellers can never both see a pair as
free), and connections wait ``busy_timeout_s`` for the lock instead of failing. Several processes may share the file
(the web server writes, the training loop reads).

Backups: each write of labels, pairs or invitations ends with a WAL checkpoint (``checkpoint``), so labels.sqlite
itself holds every acknowledged label even while a server has it open, and a plain copy of it is a backup;
``backup(FILE)`` (``rlhf-gym label --backup FILE``) makes a consistent single-file copy with SQLite's online backup
API at any moment.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from tqdm.auto import tqdm

from rewardmodels.feedback.labels import (
    CHOICES,
    KINDS,
    AlreadyLabelledError,
    InvalidLabelError,
    LabelStoreError,
    LabelTimeoutError,
    Query,
    UnknownPairError,
    check_labeller,
    check_pair_id,
    labeller_key,
    parse_label,
)
from textenv.files import atomic_path, atomic_write_text

logger = logging.getLogger(__name__)

__all__ = ["CHOICES", "KINDS", "AlreadyLabelledError", "InvalidLabelError", "LabelStore", "LabelStoreError",
           "LabelTimeoutError", "Query", "UnknownPairError", "check_labeller", "check_pair_id", "clip_dir",
           "labeller_key", "parse_label", "store_path"]

LABEL_DB_NAME = "labels.sqlite"
CLIP_DIR_NAME = "clips"
SCHEMA_VERSION = 1

#: The notes a run leaves for its labellers (``LabelStore.set_note``).
NOTES = ("instructions", "status")


def store_path(run_dir: str | os.PathLike) -> Path:
    """Where a run keeps its label database."""
    return Path(run_dir) / LABEL_DB_NAME


def clip_dir(run_dir: str | os.PathLike) -> Path:
    """The only directory the web app serves clip files from."""
    return Path(run_dir) / CLIP_DIR_NAME


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def _sql_key(name: Any) -> str | None:
    return labeller_key(name) if isinstance(name, str) else None


def _checkpoint(conn: sqlite3.Connection) -> bool:
    """PRAGMA wal_checkpoint(PASSIVE) on ``conn``: True when every page of the WAL is in the database file."""
    try:
        busy, log, done = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    except sqlite3.OperationalError:  # another connection is checkpointing right now
        return False
    return not busy and done >= log


def _damaged(path: Path, reason: Any) -> str:
    return (f"{path} is not a usable label database ({reason}); nothing was changed. If it is damaged, move it "
            f"aside (`mv {path} {path}.damaged`; `sqlite3 {path}.damaged .recover` may rescue its labels) and start "
            f"again; if it is unreadable, fix its permissions")


_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS queries (
    pair_id TEXT PRIMARY KEY, kind TEXT NOT NULL CHECK (kind IN ('segment', 'text')),
    run TEXT NOT NULL, payload TEXT NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS assignments (
    pair_id TEXT NOT NULL REFERENCES queries(pair_id), labeller TEXT NOT NULL, expires REAL NOT NULL,
    PRIMARY KEY (pair_id, labeller));
CREATE TABLE IF NOT EXISTS labels (
    id INTEGER PRIMARY KEY AUTOINCREMENT, pair_id TEXT NOT NULL REFERENCES queries(pair_id),
    label REAL CHECK (label IS NULL OR label IN (0.0, 0.5, 1.0)),
    choice TEXT NOT NULL CHECK (choice IN ('left', 'right', 'equal', 'skip')),
    labeller TEXT NOT NULL, created REAL NOT NULL, UNIQUE (pair_id, labeller));
CREATE INDEX IF NOT EXISTS labels_pair ON labels(pair_id);
CREATE TABLE IF NOT EXISTS undone (
    id INTEGER PRIMARY KEY, pair_id TEXT NOT NULL, label REAL, choice TEXT NOT NULL, labeller TEXT NOT NULL,
    created REAL NOT NULL, undone REAL NOT NULL);
CREATE TABLE IF NOT EXISTS people (
    key TEXT PRIMARY KEY, name TEXT NOT NULL, token_sha256 TEXT NOT NULL UNIQUE, created REAL NOT NULL);
"""


class LabelStore:
    """The SQLite label store. Thread-safe (one connection per thread) and shared safely between processes.

    Args:
        path: the database file (created with its tables when missing).
        labels_per_pair: labels each pair needs (1 = one label, the default). > 1 is multi-label mode: that many
            different labellers label each pair, and may hold it at the same time. Fixed when the file is created.
        lease_s: how long ``next_pair`` reserves a pair for its labeller before others may get it.
        busy_timeout_s: how long a connection waits for another's write lock before failing.
    """

    def __init__(self, path: str | os.PathLike, labels_per_pair: int | None = None, lease_s: float = 300.0,
                 busy_timeout_s: float = 30.0):
        if labels_per_pair is not None and (not isinstance(labels_per_pair, int) or labels_per_pair < 1):
            raise ValueError(f"labels_per_pair must be an int >= 1, got {labels_per_pair!r}")
        if lease_s <= 0 or busy_timeout_s <= 0:
            raise ValueError("lease_s and busy_timeout_s must be > 0 seconds")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.lease_s = float(lease_s)
        self.busy_timeout_s = float(busy_timeout_s)
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._catching_up, self._wanted = False, 0
        try:
            stored = self._create(labels_per_pair)
        except sqlite3.DatabaseError as exc:  # not a database, truncated, unreadable, read-only...
            self.close()
            raise LabelStoreError(_damaged(self.path, exc)) from exc
        if int(stored.get("schema_version", -1)) != SCHEMA_VERSION:
            raise LabelStoreError(f"{self.path} has schema version {stored['schema_version']}, this code reads "
                                  f"{SCHEMA_VERSION}; export its labels with the version that wrote it")
        self.labels_per_pair = int(stored["labels_per_pair"])
        if labels_per_pair is not None and labels_per_pair != self.labels_per_pair:
            raise ValueError(f"{self.path} was created with labels_per_pair={self.labels_per_pair}; open it with "
                             f"that value (or None), or use a new file for {labels_per_pair}")

    def _create(self, labels_per_pair: int | None) -> dict[str, str]:
        """Create the tables if missing; return the stored meta settings."""
        with self._tx() as db:
            for statement in filter(str.strip, _SCHEMA.split(";")):  # not executescript: it would COMMIT
                db.execute(statement)
            stored = dict(db.execute("SELECT key, value FROM meta").fetchall())
            if not stored:
                n = labels_per_pair or 1
                db.executemany("INSERT INTO meta VALUES (?, ?)",
                               [("schema_version", str(SCHEMA_VERSION)), ("labels_per_pair", str(n))])
                if n == 1:  # belt and braces: the database itself refuses a second label for a pair
                    db.execute("CREATE UNIQUE INDEX IF NOT EXISTS labels_one_per_pair ON labels(pair_id)")
                stored = {"schema_version": str(SCHEMA_VERSION), "labels_per_pair": str(n)}
        return stored

    def check_integrity(self) -> None:
        """Raise LabelStoreError unless SQLite's ``quick_check`` finds the file sound (run before serving it)."""
        try:
            problems = [r[0] for r in self._conn().execute("PRAGMA quick_check").fetchall()]
        except sqlite3.DatabaseError as exc:
            raise LabelStoreError(_damaged(self.path, exc)) from exc
        if problems != ["ok"]:
            raise LabelStoreError(_damaged(self.path, "; ".join(problems[:3])))

    # -- connections -----------------------------------------------------------------------------------------------
    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None or getattr(self._local, "pid", None) != os.getpid():  # never reuse a connection across fork
            conn = sqlite3.connect(self.path, timeout=self.busy_timeout_s, isolation_level=None,
                                   check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_s * 1000)}")
            conn.execute("PRAGMA journal_mode = WAL")
            # FULL: the WAL is fsynced at every commit, so an acknowledged label survives power loss, not only kill -9.
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = ON")
            # One person, however they type their name: SQL compares lkey(labeller) with labeller_key(name).
            conn.create_function("lkey", 1, _sql_key, deterministic=True)
            self._local.conn, self._local.pid = conn, os.getpid()
            with self._lock:
                self._all.append(conn)
        return conn

    @contextlib.contextmanager
    def _tx(self, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """A write transaction: BEGIN IMMEDIATE takes the write lock first, so check-then-write is atomic.

        ``durable``: what it writes must reach labels.sqlite itself (labels, queued pairs, invitations), so the WAL is
        checkpointed after the commit; leases (``durable=False``) are short-lived and need not be."""
        db = self._conn()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        if durable and not self.checkpoint():
            self._catch_up()

    # -- copies of the store ---------------------------------------------------------------------------------------
    def checkpoint(self) -> bool:
        """Copy what the WAL holds into labels.sqlite; True when nothing is left only in ``labels.sqlite-wal``.

        Without it, a small store keeps every label in the WAL while a server has it open (SQLite checkpoints at 1000
        pages), so copying labels.sqlite alone, the obvious backup, gave an empty store. PASSIVE never waits for
        readers or writers: pages a reader still needs stay in the WAL, and a background retry copies them once it
        has moved on (``_catch_up``). Costs one fsync of the database file per call."""
        return _checkpoint(self._conn())

    def _catch_up(self) -> None:
        """Retry the checkpoint in one background thread (its own connection) until one completes after the last
        request for it, or the store is closed."""
        with self._lock:
            self._wanted += 1
            if self._catching_up:
                return
            self._catching_up = True
        closed = self._closed

        def retry():
            conn = None
            try:
                conn = sqlite3.connect(self.path, timeout=self.busy_timeout_s, isolation_level=None)
                while not closed.wait(0.05):
                    with self._lock:
                        seen = self._wanted
                    done = _checkpoint(conn)
                    with self._lock:
                        if done and seen == self._wanted:  # nothing asked for since: the WAL is all copied
                            self._catching_up = False
                            return
            except sqlite3.Error:  # the file went away under it: closing the store checkpoints anyway
                pass
            finally:
                if conn is not None:
                    conn.close()
                with self._lock:
                    self._catching_up = False

        threading.Thread(target=retry, name="label-store-checkpoint", daemon=True).start()

    def backup(self, path: str | os.PathLike) -> int:
        """Write a consistent copy of the store to ``path`` with SQLite's online backup API (safe while a server
        writes to it), atomically, as one self-contained file (no -wal beside it); returns its label rows."""
        path = Path(path)
        with atomic_path(path) as tmp:
            target = sqlite3.connect(tmp, isolation_level=None)
            try:
                self._conn().backup(target)
                target.execute("PRAGMA journal_mode = DELETE")  # one file a user can copy, mail or open anywhere
                ok = target.execute("PRAGMA quick_check").fetchone()[0]
                n = target.execute("SELECT COUNT(*) FROM labels").fetchone()[0]
            except sqlite3.Error as exc:  # a full disk, a damaged source page
                raise LabelStoreError(f"cannot back up {self.path} to {path}: {exc}") from exc
            finally:
                target.close()
            if ok != "ok":
                raise LabelStoreError(f"the backup of {self.path} failed its integrity check ({ok}); nothing was "
                                      f"written to {path}")
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        return int(n)

    def close(self) -> None:
        self._closed.set()  # stops a checkpoint retry; a store used again after close gets a fresh event
        self._closed = threading.Event()
        with self._lock:
            for conn in self._all:
                with contextlib.suppress(sqlite3.Error):
                    conn.close()
            self._all.clear()
        self._local = threading.local()

    def __enter__(self) -> LabelStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- the queue -------------------------------------------------------------------------------------------------
    def enqueue(self, queries: Iterable[Query | Mapping[str, Any]]) -> list[str]:
        """Add pairs to the queue and return their ids, in order. Re-enqueueing an existing id is a no-op."""
        items = [q if isinstance(q, Query) else Query(**q) for q in queries]
        now = time.time()
        rows = [(q.id, q.kind, q.run, json.dumps(q.payload, sort_keys=True), now) for q in items]
        with self._tx() as db:
            db.executemany("INSERT OR IGNORE INTO queries VALUES (?, ?, ?, ?, ?)", rows)
        return [r[0] for r in rows]

    def next_pair(self, labeller: str, run: str | None = None) -> dict[str, Any] | None:
        """Reserve the next pair for ``labeller`` and return it (``{"pair_id", "kind", "run", "payload"}``).

        A person holds at most ONE pair at a time (the cap that keeps one person from starving the others): one who
        already holds an unexpired lease gets that pair again (a page reload shows the same pair), and taking a new
        pair drops any other lease they hold. Otherwise the oldest pair that still needs labels, that this person has
        not labelled, and that is not held by enough others to cover its remaining labels. None when nothing is left.
        """
        labeller = check_labeller(labeller)
        key = labeller_key(labeller)
        now = time.time()
        run_sql, run_arg = ("AND q.run = ?", [run]) if run is not None else ("", [])
        with self._tx(durable=False) as db:
            db.execute("DELETE FROM assignments WHERE expires <= ?", (now,))
            row = db.execute(  # a pair this labeller already holds (it may have been labelled since via the API)
                f"SELECT q.pair_id, q.kind, q.run, q.payload FROM assignments a JOIN queries q USING (pair_id) "
                f"WHERE lkey(a.labeller) = ? {run_sql} "
                f"AND (SELECT COUNT(*) FROM labels l WHERE l.pair_id = q.pair_id) < ? "
                f"AND NOT EXISTS (SELECT 1 FROM labels l WHERE l.pair_id = q.pair_id AND lkey(l.labeller) = ?) "
                f"ORDER BY q.rowid LIMIT 1", [key, *run_arg, self.labels_per_pair, key]).fetchone()
            if row is None:
                row = db.execute(
                    f"SELECT q.pair_id, q.kind, q.run, q.payload FROM queries q "
                    f"WHERE (SELECT COUNT(*) FROM labels l WHERE l.pair_id = q.pair_id) "
                    f"    + (SELECT COUNT(*) FROM assignments a WHERE a.pair_id = q.pair_id) < ? "
                    f"AND NOT EXISTS (SELECT 1 FROM labels l WHERE l.pair_id = q.pair_id AND lkey(l.labeller) = ?) "
                    f"{run_sql} ORDER BY q.rowid LIMIT 1", [self.labels_per_pair, key, *run_arg]).fetchone()
                if row is None:
                    return None
            self._reserve(db, row[0], labeller, now)
        return {"pair_id": row[0], "kind": row[1], "run": row[2], "payload": json.loads(row[3])}

    def _reserve(self, db: sqlite3.Connection, pair_id: str, labeller: str, now: float) -> None:
        """``labeller``'s one lease becomes ``pair_id`` (any other lease of the same person is dropped)."""
        db.execute("DELETE FROM assignments WHERE lkey(labeller) = ?", (labeller_key(labeller),))
        db.execute("INSERT INTO assignments VALUES (?, ?, ?)", (pair_id, labeller, now + self.lease_s))

    def release(self, pair_id: str, labeller: str) -> None:
        """Give a reserved pair back to the queue (e.g. the labeller closed the page)."""
        with self._tx(durable=False) as db:
            db.execute("DELETE FROM assignments WHERE pair_id = ? AND lkey(labeller) = ?",
                       (pair_id, labeller_key(labeller)))

    def submit(self, pair_id: str, label: Any, labeller: str, run: str | None = None) -> float:
        """Record ``labeller``'s label for ``pair_id``; returns the stored label (NaN for skip).

        Raises InvalidLabelError (bad label / name / id), UnknownPairError (never queued, or not queued under
        ``run`` when it is given), AlreadyLabelledError; nothing is written when it raises. Holding the lease is not
        required: if a lease expired and two people label the same pair, the first submit wins and the second gets
        AlreadyLabelledError.
        """
        check_pair_id(pair_id)
        labeller = check_labeller(labeller)
        value, choice = parse_label(label)
        with self._tx() as db:
            found = db.execute("SELECT run FROM queries WHERE pair_id = ?", (pair_id,)).fetchone()
            if found is None:
                raise UnknownPairError(f"no pair with id {pair_id!r} was ever queued")
            if run is not None and found[0] != run:
                raise UnknownPairError(f"pair {pair_id!r} is not queued under run tag {run!r}, the only tag this "
                                       f"server labels")
            done, mine = db.execute("SELECT COUNT(*), COALESCE(SUM(lkey(labeller) = ?), 0) FROM labels "
                                    "WHERE pair_id = ?", (labeller_key(labeller), pair_id)).fetchone()
            if mine:
                raise AlreadyLabelledError(f"{labeller!r} already labelled pair {pair_id!r}")
            if done >= self.labels_per_pair:
                raise AlreadyLabelledError(f"pair {pair_id!r} is already labelled")
            db.execute("INSERT INTO labels (pair_id, label, choice, labeller, created) VALUES (?, ?, ?, ?, ?)",
                       (pair_id, None if math.isnan(value) else value, choice, labeller, time.time()))
            if done + 1 >= self.labels_per_pair:  # complete: nobody needs to hold it any more
                db.execute("DELETE FROM assignments WHERE pair_id = ?", (pair_id,))
            else:
                db.execute("DELETE FROM assignments WHERE pair_id = ? AND lkey(labeller) = ?",
                           (pair_id, labeller_key(labeller)))
        return value

    def undo_last(self, labeller: str, run: str | None = None, within_s: float | None = None) -> str | None:
        """Take back ``labeller``'s most recent label (of pairs tagged ``run`` when given) and reserve its pair for
        them again, so they can label it anew; returns its pair id, or None when they have no label to undo.

        The row moves to the ``undone`` table (kept for audit). Raises LabelStoreError if that label is older than
        ``within_s`` seconds. A training loop that already read the label keeps the value it read.
        """
        labeller = check_labeller(labeller)
        run_sql, run_arg = ("AND q.run = ?", [run]) if run is not None else ("", [])
        now = time.time()
        with self._tx() as db:
            row = db.execute(f"SELECT l.id, l.pair_id, l.created FROM labels l JOIN queries q USING (pair_id) "
                             f"WHERE lkey(l.labeller) = ? {run_sql} ORDER BY l.id DESC LIMIT 1",
                             [labeller_key(labeller), *run_arg]).fetchone()
            if row is None:
                return None
            label_id, pair_id, created = row
            if within_s is not None and now - created > within_s:
                raise LabelStoreError(f"your last label (pair {pair_id!r}) is {now - created:.0f} s old; labels "
                                      f"can be undone for {within_s:g} s only")
            db.execute("INSERT INTO undone SELECT id, pair_id, label, choice, labeller, created, ? FROM labels "
                       "WHERE id = ?", (now, label_id))
            db.execute("DELETE FROM labels WHERE id = ?", (label_id,))
            self._reserve(db, pair_id, labeller, now)
        return pair_id

    # -- people (personal invitations) -----------------------------------------------------------------------------
    def invite(self, name: str) -> str:
        """A new secret token for the person ``name`` (replacing their previous one: old links stop working).

        Only its SHA-256 is stored; give the token to that person (``rlhf-gym label --invite NAME`` prints a link).
        """
        name = check_labeller(name)
        token = secrets.token_urlsafe(24)
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO people VALUES (?, ?, ?, ?)",
                       (labeller_key(name), name, _token_hash(token), time.time()))
        return token

    def revoke(self, name: str) -> bool:
        """Invalidate ``name``'s invitation; True if there was one. Their labels stay."""
        with self._tx() as db:
            return db.execute("DELETE FROM people WHERE key = ?", (labeller_key(check_labeller(name)),)).rowcount > 0

    def person(self, token: str) -> str | None:
        """The invited person's name for an invitation token, or None."""
        row = self._conn().execute("SELECT name FROM people WHERE token_sha256 = ?", (_token_hash(token),)).fetchone()
        return None if row is None else row[0]

    def set_note(self, key: str, text: str) -> None:
        """A note for the people who label, kept in the store and shown by the web app: ``instructions`` (what to
        judge) or ``status`` (how the run goes, e.g. how often the reward model agreed with their last labels)."""
        if key not in NOTES:
            raise ValueError(f"note must be one of {', '.join(NOTES)}, got {key!r}")
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (f"note:{key}", str(text)))

    def notes(self) -> dict[str, str]:
        """The notes set with :meth:`set_note`, by key."""
        rows = self._conn().execute("SELECT key, value FROM meta WHERE key LIKE 'note:%'").fetchall()
        return {key[len("note:"):]: value for key, value in rows}

    # -- reading ---------------------------------------------------------------------------------------------------
    def progress(self, run: str | None = None) -> dict[str, int]:
        """``{"queued": pairs, "labelled": pairs with all their labels, "labels": label rows}``."""
        run_sql, args = ("WHERE q.run = ?", [run]) if run is not None else ("", [])
        queued, complete, labels = self._conn().execute(
            f"SELECT COUNT(*), COALESCE(SUM(n >= ?), 0), COALESCE(SUM(n), 0) FROM "
            f"(SELECT (SELECT COUNT(*) FROM labels l WHERE l.pair_id = q.pair_id) AS n FROM queries q {run_sql})",
            [self.labels_per_pair, *args]).fetchone()
        return {"queued": queued, "labelled": complete, "labels": labels}

    def _counts(self, ids: Sequence[str]) -> dict[str, int]:
        db, out = self._conn(), {}
        for start in range(0, len(ids), 500):  # stay under SQLite's bound-parameter limit
            chunk = list(ids[start:start + 500])
            marks = ",".join("?" * len(chunk))
            out.update(db.execute(f"SELECT pair_id, COUNT(*) FROM labels WHERE pair_id IN ({marks}) GROUP BY pair_id",
                                  chunk).fetchall())
        return out

    def labels_array(self, ids: Sequence[str], missing: Literal["raise", "nan"] = "raise") -> np.ndarray:
        """Labels of ``ids`` in order, (N,) float32. Multi-label pairs give the mean of their non-skip labels (the
        fraction of people preferring the left item, ties counting half); NaN when all skipped."""
        db, sums = self._conn(), {}
        known: set[str] = set()
        for start in range(0, len(ids), 500):
            chunk = list(ids[start:start + 500])
            marks = ",".join("?" * len(chunk))
            known.update(r[0] for r in db.execute(f"SELECT pair_id FROM queries WHERE pair_id IN ({marks})", chunk))
            for pid, mean, n in db.execute(f"SELECT pair_id, AVG(label), COUNT(*) FROM labels "
                                           f"WHERE pair_id IN ({marks}) GROUP BY pair_id", chunk):
                sums[pid] = (mean, n)
        unknown = [i for i in ids if i not in known]
        if unknown:
            raise UnknownPairError(f"{len(unknown)} pair id(s) were never queued, e.g. {unknown[:3]}")
        out = np.full(len(ids), np.nan, dtype=np.float32)
        pending = []
        for k, pid in enumerate(ids):
            mean, n = sums.get(pid, (None, 0))
            if n < self.labels_per_pair:
                pending.append(pid)
            elif mean is not None:
                out[k] = mean
        if pending and missing == "raise":
            raise LabelStoreError(f"{len(pending)} of {len(ids)} pairs are not labelled yet, e.g. {pending[:3]}; "
                                  f"wait_for_labels(...) first, or pass missing='nan'")
        return out

    def wait_for_labels(self, ids: Sequence[str], timeout: float | None = None, poll_s: float = 0.5,
                        progress: bool | None = None, desc: str = "waiting for human labels") -> np.ndarray:
        """Block until every pair in ``ids`` has its labels; return ``labels_array(ids)``.

        Shows a tqdm bar (``progress=None``: only on a terminal) and logs progress every 30 s. Raises
        LabelTimeoutError after ``timeout`` seconds (None = wait forever); labels given later stay in the store.
        """
        ids = list(ids)
        self.labels_array(ids, missing="nan")  # raises UnknownPairError early
        unique = list(dict.fromkeys(ids))
        start = last_log = time.monotonic()
        bar = tqdm(total=len(unique), desc=desc, unit="pair", disable=None if progress is None else not progress)
        try:
            while True:
                counts = self._counts(unique)
                done = sum(counts.get(i, 0) >= self.labels_per_pair for i in unique)
                bar.update(done - bar.n)
                if done == len(unique):
                    return self.labels_array(ids)
                now = time.monotonic()
                if timeout is not None and now - start >= timeout:
                    raise LabelTimeoutError(f"only {done} of {len(unique)} pairs were labelled within {timeout} s; "
                                            f"start `rlhf-gym label --run DIR` and label the rest, or raise timeout")
                if now - last_log >= 30:
                    logger.info("%s: %d / %d pairs labelled", desc, done, len(unique))
                    last_log = now
                time.sleep(poll_s if timeout is None else max(0.0, min(poll_s, start + timeout - now)))
        finally:
            bar.close()

    def rows(self, run: str | None = None) -> list[dict[str, Any]]:
        """Every label row joined with its query (for audits and exports), oldest first."""
        run_sql, args = ("WHERE q.run = ?", [run]) if run is not None else ("", [])
        cur = self._conn().execute(
            f"SELECT l.pair_id, q.kind, q.run, q.payload, l.label, l.choice, l.labeller, l.created "
            f"FROM labels l JOIN queries q USING (pair_id) {run_sql} ORDER BY l.id", args)
        keys = ("pair_id", "kind", "run", "payload", "label", "choice", "labeller", "created")
        out = [dict(zip(keys, r, strict=True)) for r in cur]
        for r in out:
            r["payload"] = json.loads(r["payload"])
            r["label"] = math.nan if r["label"] is None else r["label"]
        return out

    # -- export ----------------------------------------------------------------------------------------------------
    def export_text_jsonl(self, path: str | os.PathLike, run: str | None = None, include_skipped: bool = False) -> int:
        """Write labelled text pairs as JSONL ``{prompt, response_a, response_b, label}`` (the TextPreferencePairs
        format), atomically; skipped pairs are left out unless ``include_skipped`` (then ``"label": null``).
        Multi-label pairs are written once, with their mean label; pairs with an empty response or two identical
        responses are left out (``TextPreferencePairs`` refuses them). Returns the number of lines."""
        by_pair: dict[str, dict[str, Any]] = {}
        for r in self.rows(run):
            if r["kind"] == "text":
                by_pair.setdefault(r["pair_id"], r["payload"])
        ids = list(by_pair)
        labels = self.labels_array(ids, missing="nan") if ids else np.zeros(0, np.float32)
        counts, lines, unusable = self._counts(ids), [], 0
        for pid, label in zip(ids, labels, strict=True):
            if counts.get(pid, 0) < self.labels_per_pair or (np.isnan(label) and not include_skipped):
                continue
            p = by_pair[pid]
            if not p["response_a"].strip() or not p["response_b"].strip() or p["response_a"] == p["response_b"]:
                unusable += 1  # TextPreferencePairs refuses empty or identical responses: nothing to learn there
                continue
            lines.append(json.dumps({"prompt": p["prompt"], "response_a": p["response_a"],
                                     "response_b": p["response_b"],
                                     "label": None if np.isnan(label) else float(label)}, ensure_ascii=False))
        if unusable:
            logger.warning("left %d labelled pair(s) with empty or identical responses out of %s", unusable, path)
        atomic_write_text(path, "".join(line + "\n" for line in lines))
        return len(lines)

    def merge_into(self, dataset: Any, ids: Sequence[str]) -> Any:
        """A copy of a PreferenceDataset (any dataclass with a ``labels`` field) with ``labels`` from this store.

        ``ids[i]`` is the pair id of ``dataset``'s i-th pair; every pair must be labelled (skips become NaN).
        """
        if len(ids) != len(dataset):
            raise ValueError(f"{len(ids)} ids for a dataset of {len(dataset)} pairs; give one id per pair, in order")
        return dataclasses.replace(dataset, labels=self.labels_array(ids))
