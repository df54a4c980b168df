"""The spool of received instances and the SQLite index (WAL) of instances, series, studies, jobs and sends.

Spool layout: ``<spool>/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm``,
each file written to ``<spool>/.incoming/`` first, then renamed into place and
fsynced with its folder (per config) before the sender gets 0x0000. UIDs that are not
safe as file names are replaced by a hash.

The index is one SQLite database in WAL mode, shared by the receiving threads,
the scheduler and the worker of one node process (one connection behind a lock),
and read by `nodestage status` from another process. A lock file next to the
database keeps a second node off the same index.

This module knows tables and files; the study states and their transitions are
`dicomnode.studies`'.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import re
import shutil
import sqlite3
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS studies (
    id INTEGER PRIMARY KEY,
    study_uid TEXT NOT NULL UNIQUE,
    accession TEXT,
    state TEXT NOT NULL,
    version INTEGER NOT NULL DEFAULT 1,
    reason TEXT,
    first_received REAL NOT NULL,      -- first instance of the current version
    last_received REAL NOT NULL,       -- last kept instance (any version)
    created REAL NOT NULL,
    updated REAL NOT NULL,
    checked_count INTEGER NOT NULL DEFAULT -1,  -- kept instances at the last series check
    check_reason TEXT,                  -- why the last series check failed
    purged INTEGER NOT NULL DEFAULT 0   -- spool removed by retention
);
CREATE INDEX IF NOT EXISTS studies_state ON studies(state);
CREATE TABLE IF NOT EXISTS series (
    series_uid TEXT PRIMARY KEY,
    study_id INTEGER NOT NULL REFERENCES studies(id),
    modality TEXT, sop_class TEXT, frame_of_reference TEXT, description TEXT,
    corrected_image TEXT, image_type TEXT, series_type TEXT, series_number INTEGER,
    number_of_slices INTEGER, images_in_acquisition INTEGER,
    kept INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS series_study ON series(study_id);
CREATE TABLE IF NOT EXISTS instances (
    sop_uid TEXT PRIMARY KEY,
    study_id INTEGER NOT NULL REFERENCES studies(id),
    series_uid TEXT NOT NULL,
    sop_class TEXT NOT NULL,
    path TEXT,                  -- relative to the spool; NULL when not kept
    size INTEGER NOT NULL,
    kept INTEGER NOT NULL,
    first_received REAL NOT NULL,
    last_received REAL NOT NULL,
    times_received INTEGER NOT NULL DEFAULT 1,
    calling_aet TEXT
);
CREATE INDEX IF NOT EXISTS instances_study ON instances(study_id);
CREATE INDEX IF NOT EXISTS instances_series ON instances(series_uid);
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY,
    study_id INTEGER NOT NULL REFERENCES studies(id),
    version INTEGER NOT NULL,
    state TEXT NOT NULL,        -- QUEUED, RUNNING, DONE, FAILED, CANCELLED
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    reason TEXT,
    out_dir TEXT,
    pid INTEGER,                -- pipeline process (group leader) while RUNNING
    summary TEXT                -- JSON: N stage, stations, timings (no PHI)
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state);
CREATE TABLE IF NOT EXISTS sends (
    id INTEGER PRIMARY KEY,
    job_id INTEGER REFERENCES jobs(id),
    study_id INTEGER NOT NULL REFERENCES studies(id),
    version INTEGER NOT NULL,
    destination TEXT NOT NULL,  -- name in config; address resolved at send time
    role TEXT NOT NULL,         -- clinical or research
    files TEXT NOT NULL,        -- JSON list of absolute paths
    state TEXT NOT NULL,        -- PENDING, SENDING, DONE, FAILED_SEND
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL NOT NULL,
    last_error TEXT,
    created REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS sends_state ON sends(state, next_attempt);
CREATE TABLE IF NOT EXISTS errors (
    id INTEGER PRIMARY KEY,
    time REAL NOT NULL,
    study_id INTEGER,
    kind TEXT NOT NULL,
    message TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value REAL NOT NULL);
"""

_SAFE = re.compile(r"^[0-9A-Za-z][0-9A-Za-z._-]{0,127}$")
_HASHED = re.compile(r"^h[0-9a-f]{40}$")  # what safe_name makes of an unsafe value


def safe_name(value: str) -> str:
    """`value` if it is safe as one path component, else a stable hash of it. A value that looks
    like such a hash is hashed too, so it cannot share a folder with the value it is the hash of."""
    if _SAFE.match(value) and ".." not in value and not _HASHED.match(value):
        return value
    return "h" + hashlib.sha1(value.encode("utf-8", "surrogateescape")).hexdigest()


class NodeLockedError(RuntimeError):
    """Another node process holds this database."""


@dataclass(frozen=True)
class InstanceHeader:
    """What the index keeps of one received instance (read from its header; no PHI)."""

    sop_uid: str
    sop_class: str
    study_uid: str
    series_uid: str
    modality: str = ""
    accession: str = ""
    frame_of_reference: str = ""
    series_description: str = ""
    corrected_image: str = ""
    image_type: str = ""
    series_type: str = ""
    series_number: int | None = None
    number_of_slices: int | None = None
    images_in_acquisition: int | None = None


class Storage:
    """Spool files and the SQLite index of one node."""

    def __init__(self, database: Path, spool_dir: Path, fsync: bool = True, lock: bool = True):
        self.database = Path(database)
        self.spool_dir = Path(spool_dir)
        self.incoming = self.spool_dir / ".incoming"
        self.fsync = fsync
        self.database.parent.mkdir(parents=True, exist_ok=True)
        self.incoming.mkdir(parents=True, exist_ok=True)
        self._lock_file = None
        if lock:
            self._lock_file = open(self.database.with_name(self.database.name + ".lock"), "a+")
            try:
                fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                self._lock_file.close()
                self._lock_file = None
                raise NodeLockedError(f"another node is running on {self.database}") from None
        self._lock = threading.RLock()
        self._syncer = ThreadPoolExecutor(max_workers=8, thread_name_prefix="nodestage-fsync")
        self.conn = connect(self.database, fsync)
        self.conn.executescript(SCHEMA)
        self.conn.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        if lock:  # only the node owning the index may clear partial files (a reader must not)
            for stale in self.incoming.iterdir():
                stale.unlink(missing_ok=True)

    # ---------------------------------------------------------------- database

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE) under the node's lock."""
        with self._lock:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.conn
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
            else:
                self.conn.execute("COMMIT")

    def query(self, sql: str, args: tuple | dict = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self.conn.execute(sql, args).fetchall()

    def query_one(self, sql: str, args: tuple | dict = ()) -> sqlite3.Row | None:
        rows = self.query(sql, args)
        return rows[0] if rows else None

    def close(self) -> None:
        self._syncer.shutdown(wait=True)
        with self._lock:
            try:
                self.conn.close()
            except sqlite3.Error:
                pass
        if self._lock_file is not None:
            fcntl.flock(self._lock_file, fcntl.LOCK_UN)
            self._lock_file.close()
            self._lock_file = None

    def record_error(self, kind: str, message: str, study_id: int | None = None,
                     conn: sqlite3.Connection | None = None) -> None:
        """Keep an error for `nodestage status` (messages carry no PHI)."""
        sql = "INSERT INTO errors(time, study_id, kind, message) VALUES (?, ?, ?, ?)"
        if conn is not None:
            conn.execute(sql, (time.time(), study_id, kind, message))
            return
        with self.tx() as c:
            c.execute(sql, (time.time(), study_id, kind, message))

    def bump(self, name: str, amount: float = 1, conn: sqlite3.Connection | None = None) -> None:
        """Add to a counter (for metrics)."""
        sql = ("INSERT INTO counters(name, value) VALUES (?, ?) "
               "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value")
        if conn is not None:
            conn.execute(sql, (name, amount))
            return
        with self.tx() as c:
            c.execute(sql, (name, amount))

    # ---------------------------------------------------------------- spool

    def spool_path(self, header: InstanceHeader) -> Path:
        return (self.spool_dir / safe_name(header.study_uid) / safe_name(header.series_uid)
                / (safe_name(header.sop_uid) + ".dcm"))

    def study_dir(self, study_uid: str) -> Path:
        return self.spool_dir / safe_name(study_uid)

    def write_instance(self, parts: Sequence[bytes | memoryview], header: InstanceHeader) -> PendingWrite:
        """Write `parts` (one after the other) to a temp file and rename it into the spool; the fsyncs
        (per config) run meanwhile.

        The caller indexes the instance while the file and its folder are synced
        (the two waits overlap), then calls `PendingWrite.wait()` before it
        acknowledges. A kill of the node cannot tear a renamed file (the kernel
        holds it); a power loss before `wait()` returns can, but that instance was
        never acknowledged, and the sender's retry rewrites it.
        Raises OSError (disk full, permissions); the temp file is removed then.
        """
        final = self.spool_path(header)
        tmp = self.incoming / f"{uuid.uuid4().hex}.part"
        fd = -1
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
            _write_all(fd, parts)
            created = not final.parent.is_dir()
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, final)
        except BaseException:
            if fd >= 0:
                os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        if not self.fsync:
            os.close(fd)
            return PendingWrite(final)
        folders = [final.parent] + ([final.parent.parent, self.spool_dir] if created else [])
        return PendingWrite(final, self._syncer.submit(_sync_and_close, fd, folders))

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.spool_dir).free

    # ---------------------------------------------------------------- retention

    def apply_retention(self, archive_dir: Path, spool_days: float | None, archive_days: float | None,
                        now: float | None = None) -> dict[str, int]:
        """Delete the spool (and index rows) of finished studies older than `spool_days`,
        and their outputs older than `archive_days`. Studies still in flight are never touched."""
        now = time.time() if now is None else now
        done: dict[str, int] = {"spool": 0, "archive": 0}
        with self.tx() as c:  # keep the last 1000 errors
            c.execute("DELETE FROM errors WHERE id <= (SELECT MAX(id) FROM errors) - 1000")
        finished = "('DONE', 'FAILED', 'INCOMPLETE')"
        if spool_days is not None:
            rows = self.query(f"SELECT id, study_uid FROM studies WHERE state IN {finished} AND purged = 0 "
                              "AND updated < ?", (now - spool_days * 86400,))
            for row in rows:
                with self.tx() as c:
                    state = c.execute("SELECT state, updated FROM studies WHERE id = ?", (row["id"],)).fetchone()
                    if state["state"] not in ("DONE", "FAILED", "INCOMPLETE") or state["updated"] >= now - spool_days * 86400:
                        continue  # re-opened meanwhile
                    c.execute("DELETE FROM instances WHERE study_id = ?", (row["id"],))
                    c.execute("DELETE FROM series WHERE study_id = ?", (row["id"],))
                    c.execute("UPDATE studies SET purged = 1 WHERE id = ?", (row["id"],))
                shutil.rmtree(self.study_dir(row["study_uid"]), ignore_errors=True)
                done["spool"] += 1
                logger.info("retention: removed received instances of study #%d", row["id"])
        if archive_days is not None:
            rows = self.query(f"SELECT id, study_uid FROM studies WHERE state IN {finished} AND updated < ?",
                              (now - archive_days * 86400,))
            for row in rows:
                folder = Path(archive_dir) / safe_name(row["study_uid"])
                if folder.exists():
                    shutil.rmtree(folder, ignore_errors=True)
                    done["archive"] += 1
                    logger.info("retention: removed outputs of study #%d", row["id"])
        return done


def connect(database: Path, fsync: bool = True, readonly: bool = False) -> sqlite3.Connection:
    """A connection with WAL, row factory and a busy timeout."""
    if readonly:
        conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=30, check_same_thread=False,
                               isolation_level=None)
    else:
        conn = sqlite3.connect(database, timeout=30, check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={'FULL' if fsync else 'NORMAL'}")
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


def _write_all(fd: int, parts: Sequence[bytes | memoryview]) -> None:
    views = [memoryview(p) for p in parts if len(p)]
    while views:
        written = os.writev(fd, views)
        while views and written >= len(views[0]):
            written -= len(views[0])
            views.pop(0)
        if views and written:
            views[0] = views[0][written:]


@dataclass
class PendingWrite:
    """A file renamed into the spool whose fsync may still be running."""

    path: Path
    sync: Future | None = None

    def wait(self) -> Path:
        """Block until the file and its folders are on disk; raises the fsync's OSError."""
        if self.sync is not None:
            self.sync.result()
        return self.path


def _sync_and_close(fd: int, folders: list[Path]) -> None:
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    for folder in folders:
        _fsync_dir(folder)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
