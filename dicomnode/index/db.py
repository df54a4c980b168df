"""The node's SQLite index: the only module that writes SQL.

It owns the schema, its numbered migrations, the state vocabularies (`StudyState`,
`JobState`, `SendState`) and one typed method per statement. The state machine
(`dicomnode.index.studies`), the outbox (`dicomnode.send.outbox.Outbox`), the worker and the
commands call these methods; none of them writes SQL, so a change of a table is
made, and reviewed, here (a unit test greps `dicomnode/` to keep it so).

One database in WAL mode is shared by the receiving threads, the scheduler and the
worker of one node process through one connection behind a lock (`Index.tx()`:
BEGIN IMMEDIATE under that lock), and read by `nodestage status` from another
process (`Index(..., readonly=True)`).

Migrations are numbered and applied in order, all in one transaction, when a
writer opens the index; `meta.schema_version` records the last one applied. An
index written by this schema version opens without a write; one written by a
newer version is refused (`SchemaTooNewError`), since this code cannot know what
that version changed.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence, Union

logger = logging.getLogger(__name__)

Row = sqlite3.Row
BUSY_TIMEOUT_MS = 30000
CONNECT_TIMEOUT_S = 30
ERRORS_KEPT = 1000  # retention keeps this many of the latest errors


# ---------------------------------------------------------------- state vocabularies
# The values are the strings stored in the index; names equal values, so a member hashes
# like its string and works as a key of a dict read from the index.


class StudyState(StrEnum):
    """A study version's place in DESIGN.md §2: RECEIVING -> READY -> RUNNING -> DONE | FAILED, or INCOMPLETE."""

    RECEIVING = "RECEIVING"
    READY = "READY"
    RUNNING = "RUNNING"
    DONE = "DONE"
    FAILED = "FAILED"
    INCOMPLETE = "INCOMPLETE"


FINISHED_STUDY_STATES = (StudyState.DONE, StudyState.FAILED, StudyState.INCOMPLETE)


class JobState(StrEnum):
    """A pipeline job: QUEUED -> RUNNING -> DONE | FAILED; CANCELLED when its study changed first."""

    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    DONE = "DONE"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


class SendState(StrEnum):
    """One outbox row: PENDING -> SENDING -> DONE (delivered) | PENDING (retry) | FAILED_SEND."""

    PENDING = "PENDING"
    SENDING = "SENDING"
    DONE = "DONE"
    FAILED_SEND = "FAILED_SEND"


# ---------------------------------------------------------------- schema and migrations

Step = Union[str, Callable[[sqlite3.Connection], None]]


@dataclass(frozen=True)
class Migration:
    """Statements (or callables on the connection) that take the schema from `version - 1` to `version`."""

    version: int
    what: str
    steps: tuple[Step, ...]


# Version 1 as the first node shipped it, text and comments included: history, never edited.
_SCHEMA_V1: tuple[str, ...] = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)",
    """CREATE TABLE IF NOT EXISTS studies (
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
)""",
    "CREATE INDEX IF NOT EXISTS studies_state ON studies(state)",
    """CREATE TABLE IF NOT EXISTS series (
    series_uid TEXT PRIMARY KEY,
    study_id INTEGER NOT NULL REFERENCES studies(id),
    modality TEXT, sop_class TEXT, frame_of_reference TEXT, description TEXT,
    corrected_image TEXT, image_type TEXT, series_type TEXT, series_number INTEGER,
    number_of_slices INTEGER, images_in_acquisition INTEGER,
    kept INTEGER NOT NULL
)""",
    "CREATE INDEX IF NOT EXISTS series_study ON series(study_id)",
    """CREATE TABLE IF NOT EXISTS instances (
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
)""",
    "CREATE INDEX IF NOT EXISTS instances_study ON instances(study_id)",
    "CREATE INDEX IF NOT EXISTS instances_series ON instances(series_uid)",
    """CREATE TABLE IF NOT EXISTS jobs (
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
)""",
    "CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state)",
    """CREATE TABLE IF NOT EXISTS sends (
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
)""",
    "CREATE INDEX IF NOT EXISTS sends_state ON sends(state, next_attempt)",
    """CREATE TABLE IF NOT EXISTS errors (
    id INTEGER PRIMARY KEY,
    time REAL NOT NULL,
    study_id INTEGER,
    kind TEXT NOT NULL,
    message TEXT NOT NULL
)""",
    "CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value REAL NOT NULL)",
)

MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "the tables of the first node", _SCHEMA_V1),
    # the status command, retention and the worker look a study's jobs up by (study, version)
    Migration(2, "index jobs by study and version",
              ("CREATE INDEX IF NOT EXISTS jobs_study ON jobs(study_id, version)",)),
    # each header is parsed once, at receive time: completeness reads what selection needs from here
    Migration(3, "keep each instance's scan_info (pipeline.series.scan_info, JSON)",
              ("ALTER TABLE instances ADD COLUMN scan_info TEXT",)),
)
SCHEMA_VERSION = MIGRATIONS[-1].version


class SchemaTooNewError(RuntimeError):
    """The index was written by a newer version of the node than this code."""


def schema_version(conn: sqlite3.Connection) -> int:
    """The version recorded in `meta` (0 for an empty database)."""
    if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'").fetchone() is None:
        return 0
    row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    return int(row[0]) if row is not None else 0


def migrate(conn: sqlite3.Connection, migrations: Sequence[Migration] = MIGRATIONS,
            database: Path | str = "the index") -> int:
    """Bring the schema to the last of `migrations`, in order, in one transaction; returns the version.

    A database at that version is left untouched (no write); one at a newer version raises
    `SchemaTooNewError`. A failing step rolls every step back."""
    target = migrations[-1].version
    conn.execute("BEGIN IMMEDIATE")
    try:
        current = schema_version(conn)
        if current > target:
            raise SchemaTooNewError(
                f"{database} has schema version {current}, newer than this node knows ({target}): "
                "run the node version that wrote it, or restore an older index")
        pending = [m for m in migrations if m.version > current]
        for m in sorted(pending, key=lambda m: m.version):
            for step in m.steps:
                if callable(step):
                    step(conn)
                else:
                    conn.execute(step)
            logger.info("index schema: migrated to version %d (%s)", m.version, m.what)
        if pending:
            conn.execute("INSERT INTO meta(key, value) VALUES ('schema_version', ?) "
                         "ON CONFLICT(key) DO UPDATE SET value = excluded.value", (str(target),))
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return target


def connect(database: Path, fsync: bool = True, readonly: bool = False) -> sqlite3.Connection:
    """A connection with WAL, row factory and a busy timeout (autocommit: transactions are explicit)."""
    if readonly:
        conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=CONNECT_TIMEOUT_S,
                               check_same_thread=False, isolation_level=None)
    else:
        conn = sqlite3.connect(database, timeout=CONNECT_TIMEOUT_S, check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={'FULL' if fsync else 'NORMAL'}")
    conn.row_factory = sqlite3.Row
    conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    return conn


# ---------------------------------------------------------------- statements


def _placeholders(values: Sequence[Any]) -> str:
    return ", ".join("?" for _ in values)


class Statements:
    """Every statement the node runs, on one connection (inside `Index.tx()` or `Index.read()`)."""

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn

    def _one(self, sql: str, args: Sequence[Any] = ()) -> Row | None:
        return self.conn.execute(sql, args).fetchone()

    def _all(self, sql: str, args: Sequence[Any] = ()) -> list[Row]:
        return self.conn.execute(sql, args).fetchall()

    def _changed(self, sql: str, args: Sequence[Any] = ()) -> int:
        return self.conn.execute(sql, args).rowcount

    def ping(self) -> None:
        self._one("SELECT 1")

    # ------------------------------------------------------------ errors and counters

    def record_error(self, kind: str, message: str, study_id: int | None, now: float) -> None:
        self.conn.execute("INSERT INTO errors(time, study_id, kind, message) VALUES (?, ?, ?, ?)",
                          (now, study_id, kind, message))

    def bump(self, name: str, amount: float = 1) -> None:
        self.conn.execute("INSERT INTO counters(name, value) VALUES (?, ?) "
                          "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value", (name, amount))

    def counters(self) -> dict[str, float]:
        return {r["name"]: r["value"] for r in self._all("SELECT name, value FROM counters ORDER BY name")}

    def last_errors(self, limit: int) -> list[Row]:
        return self._all("SELECT * FROM errors ORDER BY id DESC LIMIT ?", (limit,))

    def prune_errors(self, keep: int = ERRORS_KEPT) -> None:
        self.conn.execute("DELETE FROM errors WHERE id <= (SELECT MAX(id) FROM errors) - ?", (keep,))

    # ------------------------------------------------------------ studies

    def study(self, study_id: int) -> Row | None:
        return self._one("SELECT * FROM studies WHERE id = ?", (study_id,))

    def study_by_uid(self, study_uid: str) -> Row | None:
        return self._one("SELECT * FROM studies WHERE study_uid = ?", (study_uid,))

    def studies_in_state(self, state: StudyState) -> list[Row]:
        return self._all("SELECT * FROM studies WHERE state = ? ORDER BY id", (state,))

    def study_counts(self) -> dict[str, int]:
        """Studies by state (states without a study are absent)."""
        return {r["state"]: r["n"] for r in self._all("SELECT state, COUNT(*) AS n FROM studies GROUP BY state")}

    def insert_study(self, study_uid: str, accession: str, state: StudyState, now: float) -> int:
        return self.conn.execute(
            "INSERT INTO studies(study_uid, accession, state, version, first_received, last_received, "
            "created, updated) VALUES (?, ?, ?, 1, ?, ?, ?, ?)",
            (study_uid, accession, state, now, now, now, now)).lastrowid

    def touch_study(self, study_id: int, now: float) -> None:
        """A kept instance arrived for a study still receiving."""
        self.conn.execute("UPDATE studies SET last_received = ?, updated = ? WHERE id = ?", (now, now, study_id))

    def restart_receiving(self, study_id: int, now: float) -> None:
        """Back to RECEIVING with the same version (more data before its job started)."""
        self.conn.execute("UPDATE studies SET state = ?, last_received = ?, updated = ?, checked_count = -1 "
                          "WHERE id = ?", (StudyState.RECEIVING, now, now, study_id))

    def reopen_study(self, study_id: int, version: int, now: float) -> None:
        """RECEIVING as `version`, with a fresh wait and no earlier reason or series check."""
        self.conn.execute(
            "UPDATE studies SET state = ?, version = ?, reason = NULL, first_received = ?, "
            "last_received = ?, updated = ?, checked_count = -1, check_reason = NULL WHERE id = ?",
            (StudyState.RECEIVING, version, now, now, now, study_id))

    def set_accession(self, study_id: int, accession: str) -> None:
        self.conn.execute("UPDATE studies SET accession = ? WHERE id = ?", (accession, study_id))

    def record_series_check(self, study_id: int, n_kept: int, reason: str | None) -> None:
        """Remember a series check (while the study is still RECEIVING) so it is not redone for the same files."""
        self.conn.execute("UPDATE studies SET checked_count = ?, check_reason = ? WHERE id = ? AND state = ?",
                          (n_kept, reason, study_id, StudyState.RECEIVING))

    def move_study(self, study_id: int, version: int, from_state: StudyState, to_state: StudyState, now: float,
                   reason: str | None = None, keep_reason: bool = False,
                   last_received: float | None = None) -> bool:
        """`from_state` -> `to_state` for that version (and, if given, that last instance time);
        False when the study moved on meanwhile. The reason is set unless `keep_reason`."""
        sets = "state = ?, updated = ?" + ("" if keep_reason else ", reason = ?")
        args: list[Any] = [to_state, now] + ([] if keep_reason else [reason])
        where = "id = ? AND version = ? AND state = ?"
        args += [study_id, version, from_state]
        if last_received is not None:
            where += " AND last_received = ?"
            args.append(last_received)
        return bool(self._changed(f"UPDATE studies SET {sets} WHERE {where}", args))

    def set_study_state(self, study_id: int, state: StudyState, now: float | None = None) -> None:
        """Set the state whatever it was (`updated` too when `now` is given)."""
        if now is None:
            self.conn.execute("UPDATE studies SET state = ? WHERE id = ?", (state, study_id))
        else:
            self.conn.execute("UPDATE studies SET state = ?, updated = ? WHERE id = ?", (state, now, study_id))

    def requeue_study_version(self, study_id: int, version: int, now: float) -> None:
        """READY as `version`, without an earlier reason (an operator's reprocess)."""
        self.conn.execute("UPDATE studies SET state = ?, version = ?, reason = NULL, updated = ? WHERE id = ?",
                          (StudyState.READY, version, now, study_id))

    def running_studies_without_job(self) -> list[Row]:
        """RUNNING studies whose version has no QUEUED or RUNNING job (a crash between two writes)."""
        live = (JobState.QUEUED, JobState.RUNNING)
        return self._all("SELECT * FROM studies s WHERE state = ? AND NOT EXISTS (SELECT 1 FROM jobs j "
                         "WHERE j.study_id = s.id AND j.version = s.version AND j.state IN "
                         f"({_placeholders(live)}))", (StudyState.RUNNING, *live))

    def active_studies(self) -> list[Row]:
        """Unfinished studies with their kept instance and series counts (for `nodestage status`)."""
        return self._all(
            "SELECT s.id, s.study_uid, s.state, s.version, s.first_received, s.last_received, "
            "s.check_reason, (SELECT COUNT(*) FROM instances i WHERE i.study_id = s.id AND i.kept = 1) AS "
            "instances, (SELECT COUNT(*) FROM series x WHERE x.study_id = s.id AND x.kept = 1) AS series "
            f"FROM studies s WHERE s.state NOT IN ({_placeholders(FINISHED_STUDY_STATES)}) ORDER BY s.id",
            FINISHED_STUDY_STATES)

    def recent_studies(self, limit: int) -> list[Row]:
        """The last finished studies, each with the summary of its version's DONE job."""
        return self._all(
            "SELECT s.id, s.study_uid, s.state, s.version, s.reason, s.updated, "
            "(SELECT summary FROM jobs j WHERE j.study_id = s.id AND j.version = s.version "
            "AND j.state = ? ORDER BY j.id DESC LIMIT 1) AS summary "
            f"FROM studies s WHERE s.state IN ({_placeholders(FINISHED_STUDY_STATES)}) "
            "ORDER BY s.updated DESC LIMIT ?", (JobState.DONE, *FINISHED_STUDY_STATES, limit))

    def finished_studies_before(self, cutoff: float, unpurged_only: bool) -> list[Row]:
        """(id, study_uid) of finished studies last changed before `cutoff`."""
        purged = " AND purged = 0" if unpurged_only else ""
        return self._all(f"SELECT id, study_uid FROM studies WHERE state IN "
                         f"({_placeholders(FINISHED_STUDY_STATES)}){purged} AND updated < ?",
                         (*FINISHED_STUDY_STATES, cutoff))

    def purge_study_rows(self, study_id: int) -> None:
        """Forget a study's instances and series (its spool is gone); the study row stays, marked purged."""
        self.conn.execute("DELETE FROM instances WHERE study_id = ?", (study_id,))
        self.conn.execute("DELETE FROM series WHERE study_id = ?", (study_id,))
        self.conn.execute("UPDATE studies SET purged = 1 WHERE id = ?", (study_id,))

    # ------------------------------------------------------------ instances and series

    def instance(self, sop_uid: str) -> Row | None:
        return self._one("SELECT * FROM instances WHERE sop_uid = ?", (sop_uid,))

    def insert_instance(self, header: Any, study_id: int, path: str | None, size: int, kept: bool, now: float,
                        calling_aet: str) -> None:
        """`header` is a `dicomnode.index.storage.InstanceHeader`."""
        self.conn.execute(
            "INSERT INTO instances(sop_uid, study_id, series_uid, sop_class, path, size, kept, "
            "first_received, last_received, times_received, calling_aet, scan_info) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 1, ?, ?)",
            (header.sop_uid, study_id, header.series_uid, header.sop_class, path, size, int(kept), now, now,
             calling_aet, header.scan_info or None))

    def update_instance(self, header: Any, study_id: int, path: str | None, size: int, kept: bool, now: float,
                        calling_aet: str) -> None:
        """A resent instance: the latest copy wins; `times_received` counts them."""
        self.conn.execute(
            "UPDATE instances SET study_id = ?, series_uid = ?, sop_class = ?, path = ?, size = ?, "
            "kept = ?, last_received = ?, times_received = times_received + 1, calling_aet = ?, scan_info = ? "
            "WHERE sop_uid = ?",
            (study_id, header.series_uid, header.sop_class, path, size, int(kept), now, calling_aet,
             header.scan_info or None, header.sop_uid))

    def kept_instances(self, study_id: int) -> list[Row]:
        """The study's files on the spool, with what series selection reads of each (`scan_info`)."""
        return self._all("SELECT sop_uid, series_uid, sop_class, path, scan_info FROM instances "
                         "WHERE study_id = ? AND kept = 1 AND path IS NOT NULL", (study_id,))

    def upsert_series(self, header: Any, study_id: int, kept: bool) -> None:
        """Insert a series on its first instance; later instances only fill missing expected counts."""
        self.conn.execute(
            "INSERT INTO series(series_uid, study_id, modality, sop_class, frame_of_reference, description, "
            "corrected_image, image_type, series_type, series_number, number_of_slices, "
            "images_in_acquisition, kept) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT(series_uid) DO UPDATE SET "
            "number_of_slices = COALESCE(series.number_of_slices, excluded.number_of_slices), "
            "images_in_acquisition = COALESCE(series.images_in_acquisition, excluded.images_in_acquisition)",
            (header.series_uid, study_id, header.modality, header.sop_class, header.frame_of_reference,
             header.series_description, header.corrected_image, header.image_type, header.series_type,
             header.series_number, header.number_of_slices, header.images_in_acquisition, int(kept)))

    def kept_series_counts(self, study_id: int) -> list[Row]:
        """Each kept series of a study, with `n`: its kept instances."""
        return self._all(
            "SELECT s.*, (SELECT COUNT(*) FROM instances i WHERE i.series_uid = s.series_uid AND i.kept = 1 "
            "AND i.study_id = s.study_id) AS n FROM series s WHERE s.study_id = ? AND s.kept = 1", (study_id,))

    def kept_instance_paths(self, study_id: int) -> list[Row]:
        """(series_uid, sop_uid, path) of a study's kept instances, path relative to the spool."""
        return self._all("SELECT series_uid, sop_uid, path FROM instances WHERE study_id = ? AND kept = 1 "
                         "AND path IS NOT NULL ORDER BY series_uid, sop_uid", (study_id,))

    # ------------------------------------------------------------ jobs

    def queue_job(self, study_id: int, version: int, now: float) -> int:
        return self.conn.execute("INSERT INTO jobs(study_id, version, state, created) VALUES (?, ?, ?, ?)",
                                 (study_id, version, JobState.QUEUED, now)).lastrowid

    def cancel_queued_jobs(self, study_id: int, now: float, reason: str) -> int:
        return self._changed("UPDATE jobs SET state = ?, finished = ?, reason = ? WHERE study_id = ? AND state = ?",
                             (JobState.CANCELLED, now, reason, study_id, JobState.QUEUED))

    def oldest_queued_job(self) -> Row | None:
        """The oldest QUEUED job with its study's uid, accession, state (`study_state`) and version
        (`study_version`)."""
        return self._one(
            "SELECT j.*, s.study_uid, s.accession, s.state AS study_state, s.version AS study_version "
            "FROM jobs j JOIN studies s ON s.id = j.study_id WHERE j.state = ? ORDER BY j.id LIMIT 1",
            (JobState.QUEUED,))

    def end_job(self, job_id: int, state: JobState, now: float, reason: str | None) -> None:
        """A job ends without a run of its own (CANCELLED, or FAILED after too many interruptions)."""
        self.conn.execute("UPDATE jobs SET state = ?, finished = ?, reason = ? WHERE id = ?",
                          (state, now, reason, job_id))

    def start_job(self, job_id: int, now: float) -> None:
        self.conn.execute("UPDATE jobs SET state = ?, started = ?, attempts = attempts + 1 WHERE id = ?",
                          (JobState.RUNNING, now, job_id))

    def finish_job(self, job_id: int, state: JobState, now: float, reason: str | None, out_dir: str | None,
                   summary: str | None) -> None:
        self.conn.execute("UPDATE jobs SET state = ?, finished = ?, reason = ?, out_dir = ?, summary = ? WHERE id = ?",
                          (state, now, reason, out_dir, summary, job_id))

    def set_job_pid(self, job_id: int, pid: int | None) -> None:
        self.conn.execute("UPDATE jobs SET pid = ? WHERE id = ?", (pid, job_id))

    def requeue_job(self, job_id: int, reason: str) -> None:
        self.conn.execute("UPDATE jobs SET state = ?, started = NULL, reason = ? WHERE id = ?",
                          (JobState.QUEUED, reason, job_id))

    def jobs_in_state(self, state: JobState) -> list[Row]:
        return self._all("SELECT * FROM jobs WHERE state = ? ORDER BY id", (state,))

    def count_jobs(self, state: JobState) -> int:
        return self._one("SELECT COUNT(*) AS n FROM jobs WHERE state = ?", (state,))["n"]

    def latest_job(self, study_id: int, state: JobState) -> Row | None:
        return self._one("SELECT * FROM jobs WHERE study_id = ? AND state = ? ORDER BY id DESC", (study_id, state))

    # ------------------------------------------------------------ sends (the outbox)

    def enqueue_send(self, job_id: int | None, study_id: int, version: int, destination: str, role: str,
                     files: Iterable[Path | str], now: float) -> int:
        return self.conn.execute(
            "INSERT INTO sends(job_id, study_id, version, destination, role, files, state, attempts, "
            "next_attempt, created, updated) VALUES (?, ?, ?, ?, ?, ?, ?, 0, ?, ?, ?)",
            (job_id, study_id, version, destination, role, json.dumps([str(f) for f in files]), SendState.PENDING,
             now, now, now)).lastrowid

    def requeue_sending(self, now: float) -> int:
        """Sends left SENDING (a crash) are PENDING and due now; returns how many."""
        return self._changed("UPDATE sends SET state = ?, next_attempt = ? WHERE state = ?",
                             (SendState.PENDING, now, SendState.SENDING))

    def due_sends(self, now: float) -> list[int]:
        return [r["id"] for r in self._all("SELECT id FROM sends WHERE state = ? AND next_attempt <= ? ORDER BY id",
                                           (SendState.PENDING, now))]

    def claim_send(self, send_id: int, now: float) -> Row | None:
        """PENDING -> SENDING; the row, or None when another thread took it first."""
        if not self._changed("UPDATE sends SET state = ?, updated = ? WHERE id = ? AND state = ?",
                             (SendState.SENDING, now, send_id, SendState.PENDING)):
            return None
        return self._one("SELECT * FROM sends WHERE id = ?", (send_id,))

    def end_send(self, send_id: int, state: SendState, attempts: int, error: str | None, now: float,
                 next_attempt: float | None = None) -> None:
        """Record an attempt: DONE (error cleared), FAILED_SEND, or PENDING again at `next_attempt`."""
        if next_attempt is None:
            self.conn.execute("UPDATE sends SET state = ?, attempts = ?, last_error = ?, updated = ? WHERE id = ?",
                              (state, attempts, error, now, send_id))
        else:
            self.conn.execute("UPDATE sends SET state = ?, attempts = ?, last_error = ?, next_attempt = ?, "
                              "updated = ? WHERE id = ?", (state, attempts, error, next_attempt, now, send_id))

    def send(self, send_id: int) -> Row | None:
        return self._one("SELECT * FROM sends WHERE id = ?", (send_id,))

    def send_counts(self) -> dict[str, int]:
        """Sends by state (states without a send are absent)."""
        return {r["state"]: r["n"] for r in self._all("SELECT state, COUNT(*) AS n FROM sends GROUP BY state")}

    def sends_in_states(self, states: Sequence[SendState], newest_first: bool = False,
                        limit: int | None = None) -> list[Row]:
        order = "DESC" if newest_first else "ASC"
        tail = "" if limit is None else f" LIMIT {int(limit)}"
        return self._all(f"SELECT * FROM sends WHERE state IN ({_placeholders(states)}) ORDER BY id {order}{tail}",
                         tuple(states))


class Index:
    """The index of one node: a connection, its lock, and the schema brought up to date on open."""

    def __init__(self, database: Path, fsync: bool = True, readonly: bool = False):
        self.database = Path(database)
        self.readonly = readonly
        self._lock = threading.RLock()
        self.conn = connect(self.database, fsync, readonly=readonly)
        try:
            if readonly:  # a reader never writes; it only refuses what it cannot read
                found = schema_version(self.conn)
                if found > SCHEMA_VERSION:
                    raise SchemaTooNewError(f"{self.database} has schema version {found}, newer than this node "
                                            f"knows ({SCHEMA_VERSION})")
            else:
                migrate(self.conn, MIGRATIONS, self.database)
        except BaseException:
            self.conn.close()
            raise

    @contextmanager
    def tx(self) -> Iterator[Statements]:
        """One write transaction (BEGIN IMMEDIATE) under the node's lock."""
        with self._lock:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield Statements(self.conn)
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
            else:
                self.conn.execute("COMMIT")

    @contextmanager
    def read(self) -> Iterator[Statements]:
        """Reads under the lock, without a write transaction (each statement sees the latest commit)."""
        with self._lock:
            yield Statements(self.conn)

    def close(self) -> None:
        with self._lock:
            try:
                self.conn.close()
            except sqlite3.Error:
                pass

    # ------------------------------------------------------------ one-statement shortcuts

    def ping(self) -> None:
        with self.read() as q:
            q.ping()

    def study(self, study_id: int) -> Row | None:
        with self.read() as q:
            return q.study(study_id)

    def study_by_uid(self, study_uid: str) -> Row | None:
        with self.read() as q:
            return q.study_by_uid(study_uid)

    def counters(self) -> dict[str, float]:
        with self.read() as q:
            return q.counters()

    def study_counts(self) -> dict[str, int]:
        with self.read() as q:
            return q.study_counts()

    def send_counts(self) -> dict[str, int]:
        with self.read() as q:
            return q.send_counts()

    def latest_job(self, study_id: int, state: JobState) -> Row | None:
        with self.read() as q:
            return q.latest_job(study_id, state)

    def bump(self, name: str, amount: float = 1) -> None:
        with self.tx() as t:
            t.bump(name, amount)

    def record_error(self, kind: str, message: str, study_id: int | None, now: float) -> None:
        with self.tx() as t:
            t.record_error(kind, message, study_id, now)

    # ------------------------------------------------------------ for tests and tools

    def query(self, sql: str, args: tuple | dict = ()) -> list[Row]:
        """Run a caller's read-only statement (tests, benchmarks and tools outside `dicomnode/`)."""
        with self._lock:
            return self.conn.execute(sql, args).fetchall()
