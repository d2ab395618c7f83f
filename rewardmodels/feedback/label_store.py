"""A durable SQLite store for human preference labels: the queue people label from and the loop reads from.

Schema (one file, ``<run>/labels.sqlite`` by convention, see :func:`store_path`)::

    queries      pair_id TEXT PK, kind 'segment'|'text', run TEXT, payload JSON, created REAL
    assignments  (pair_id, labeller) PK, expires REAL   -- who holds a pair, until when (a lease)
    labels       id PK, pair_id, label REAL (NULL = skipped), choice TEXT, labeller TEXT, created REAL
                 UNIQUE (pair_id, labeller); UNIQUE (pair_id) too unless the store was made with labels_per_pair > 1
    undone       the labels people took back with ``undo_last`` (kept for audit), with the time of the undo
    people       key TEXT PK, name TEXT, token_sha256 TEXT UNIQUE, created REAL  -- personal invitations

Labeller names (:func:`check_labeller`): 1-64 letters/digits of any script, space, ``_ . @ + -``; no leading or
trailing space, no control characters (``"alice\n"`` is refused). The name is stored as given (after Unicode NFKC
normalisation), but a PERSON is its case-folded form (:func:`labeller_key`): ``alice``, ``Alice`` and ``ALICE`` are
one person everywhere (one label per pair, one reserved pair at a time, one invitation).

Label convention (the toolkit's one convention): ``label`` = probability that the FIRST item ("a", shown on the
LEFT) is preferred: 1.0 left, 0.0 right, 0.5 equal, NaN skipped ("can't tell", never used for training).

Durability: WAL journal with ``synchronous=FULL``, so a label whose ``submit`` returned (and whose HTTP request was
acknowledged) survives a ``kill -9`` of the process and a power cut. Every read-modify-write runs in a
``BEGIN IMMEDIATE`` transaction (the write lock is taken up front, so two labellers can never both see a pair as
free), and connections wait ``busy_timeout_s`` for the lock instead of failing. Several processes may share the file
(the web server writes, the training loop reads).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import os
import re
import secrets
import sqlite3
import threading
import time
import unicodedata
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from tqdm.auto import tqdm

from textenv.files import atomic_write_text

logger = logging.getLogger(__name__)

LABEL_DB_NAME = "labels.sqlite"
CLIP_DIR_NAME = "clips"
SCHEMA_VERSION = 1

#: The choices a person can make, and the label each one stores.
CHOICES: dict[str, float] = {"left": 1.0, "right": 0.0, "equal": 0.5, "skip": math.nan}
KINDS = ("segment", "text")
PAIR_ID_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
# Letters/digits of any script, space and a few separators; no control characters, quotes or markup. Used with
# fullmatch: `$` would also match before a trailing newline ("alice\n").
LABELLER_RE = re.compile(r"[\w.@+-](?:[\w .@+-]{0,62}[\w.@+-])?")


class LabelStoreError(Exception):
    """Base class of the label store's errors."""


class UnknownPairError(LabelStoreError, KeyError):
    """A pair id that was never enqueued."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else "unknown pair"


class AlreadyLabelledError(LabelStoreError):
    """The pair already has all the labels it needs (or this labeller already labelled it)."""


class InvalidLabelError(LabelStoreError, ValueError):
    """A label value, labeller name, pair id or payload that is not allowed."""


class LabelTimeoutError(LabelStoreError, TimeoutError):
    """``wait_for_labels`` ran out of time before every pair was labelled."""


def store_path(run_dir: str | os.PathLike) -> Path:
    """Where a run keeps its label database."""
    return Path(run_dir) / LABEL_DB_NAME


def clip_dir(run_dir: str | os.PathLike) -> Path:
    """The only directory the web app serves clip files from."""
    return Path(run_dir) / CLIP_DIR_NAME


def parse_label(value: Any) -> tuple[float, str]:
    """``value`` (a choice name, 1 / 0 / 0.5, NaN or None for skip) -> (label, choice). Raises InvalidLabelError."""
    if isinstance(value, str):
        if value not in CHOICES:
            raise InvalidLabelError(f"label {value!r} is not one of {sorted(CHOICES)}")
        return CHOICES[value], value
    if value is None:
        return math.nan, "skip"
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise InvalidLabelError(f"label must be one of {sorted(CHOICES)} or 1 / 0 / 0.5 / NaN, got {value!r}")
    value = float(value)
    if math.isnan(value):
        return math.nan, "skip"
    for choice, label in CHOICES.items():
        if label == value:
            return label, choice
    raise InvalidLabelError(f"label {value!r} is not 1 (left), 0 (right), 0.5 (equal) or NaN (skip)")


def check_labeller(name: Any) -> str:
    """``name`` in NFKC form if it is a valid labeller name (module docstring), else InvalidLabelError."""
    normal = unicodedata.normalize("NFKC", name) if isinstance(name, str) else None
    if normal is None or not LABELLER_RE.fullmatch(normal):
        raise InvalidLabelError(
            f"labeller name {name!r} must be 1-64 characters: letters, digits, space, '_', '.', '@', '+', '-', "
            f"not starting or ending with a space")
    return normal


def labeller_key(name: str) -> str:
    """The person a name stands for: NFKC + case folding, so 'Alice' and 'alice' are one person."""
    return unicodedata.normalize("NFKC", name).casefold()


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def _sql_key(name: Any) -> str | None:
    return labeller_key(name) if isinstance(name, str) else None


def _damaged(path: Path, reason: Any) -> str:
    return (f"{path} is not a usable label database ({reason}); nothing was changed. If it is damaged, move it "
            f"aside (`mv {path} {path}.damaged`; `sqlite3 {path}.damaged .recover` may rescue its labels) and start "
            f"again; if it is unreadable, fix its permissions")


def check_pair_id(pair_id: Any) -> str:
    if not isinstance(pair_id, str) or not PAIR_ID_RE.match(pair_id):
        raise InvalidLabelError(f"pair id {pair_id!r} must be 1-128 characters of [A-Za-z0-9_.:-]")
    return pair_id


@dataclasses.dataclass(frozen=True)
class Query:
    """One pair to be labelled.

    Segment payload: ``{"clip_a": rel_path, "clip_b": rel_path}`` (paths relative to the run's clip directory; shown
    side by side) or ``{"clip": rel_path}`` (one side-by-side clip, as rendered by ``rewardmodels.feedback.clips``),
    plus any JSON metadata. Text payload: ``{"prompt": str, "response_a": str, "response_b": str}``.
    """

    kind: Literal["segment", "text"]
    payload: dict[str, Any]
    pair_id: str | None = None
    """None -> a content hash of kind + payload, so enqueueing the same pair again is a no-op (resume)."""
    run: str = ""
    """Free tag grouping the queries of one run/iteration (the web app can show one run only)."""

    def __post_init__(self):
        if self.kind not in KINDS:
            raise InvalidLabelError(f"query kind {self.kind!r} must be one of {KINDS}")
        if self.kind == "text":
            missing = [k for k in ("prompt", "response_a", "response_b") if not isinstance(self.payload.get(k), str)]
        else:
            has_pair = all(isinstance(self.payload.get(k), str) for k in ("clip_a", "clip_b"))
            missing = [] if has_pair or isinstance(self.payload.get("clip"), str) else ["clip_a", "clip_b"]
        if missing:
            raise InvalidLabelError(f"{self.kind} query payload lacks string field(s) {missing}")
        if self.pair_id is not None:
            check_pair_id(self.pair_id)

    @classmethod
    def segment(cls, clip_a: str, clip_b: str, pair_id: str | None = None, run: str = "", **meta) -> Query:
        return cls("segment", {"clip_a": str(clip_a), "clip_b": str(clip_b), **meta}, pair_id, run)

    @classmethod
    def text(cls, prompt: str, response_a: str, response_b: str, pair_id: str | None = None, run: str = "") -> Query:
        return cls("text", {"prompt": prompt, "response_a": response_a, "response_b": response_b}, pair_id, run)

    @property
    def id(self) -> str:
        if self.pair_id is not None:
            return self.pair_id
        blob = json.dumps([self.kind, self.run, self.payload], sort_keys=True).encode()
        return f"{self.kind[0]}-{hashlib.sha256(blob).hexdigest()[:24]}"


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
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """A write transaction: BEGIN IMMEDIATE takes the write lock first, so check-then-write is atomic."""
        db = self._conn()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def close(self) -> None:
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
        with self._tx() as db:
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
        with self._tx() as db:
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
