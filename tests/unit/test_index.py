"""The index: schema, numbered migrations, the state vocabularies, and the rule that only
`dicomnode/index/db.py` writes SQL."""

from __future__ import annotations

import ast
import re
import sqlite3
from pathlib import Path

import pytest

from dicomnode.index import db as index_module
from dicomnode.index.db import (MIGRATIONS, SCHEMA_VERSION, Index, JobState, Migration, SchemaTooNewError, SendState,
                             StudyState, migrate, schema_version)
from dicomnode.index.storage import NodeLockedError, Storage

ROOT = Path(__file__).resolve().parents[2]

# The schema of the first node (dicomnode/index/storage.py before migrations existed), frozen here so
# the upgrade path from an index written by that node stays tested whatever later versions do.
SCHEMA_AS_SHIPPED_V1 = """
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


def v1_index(path: Path) -> None:
    """An index as the first node wrote it, with a finished study, its job and a send."""
    conn = sqlite3.connect(path)
    conn.executescript(SCHEMA_AS_SHIPPED_V1)
    conn.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('schema_version', '1')")
    conn.execute("INSERT INTO studies(study_uid, state, version, first_received, last_received, created, updated) "
                 "VALUES ('1.2.3', 'DONE', 1, 1, 2, 1, 3)")
    conn.execute("INSERT INTO jobs(study_id, version, state, created, summary) VALUES (1, 1, 'DONE', 2, '{}')")
    conn.execute("INSERT INTO sends(job_id, study_id, version, destination, role, files, state, next_attempt, "
                 "created, updated) VALUES (1, 1, 1, 'pacs', 'clinical', '[]', 'FAILED_SEND', 0, 3, 3)")
    conn.commit()
    conn.close()


def schema_of(path: Path) -> set[tuple[str, str, str]]:
    """(type, name, the statement that made it) of every table and index."""
    conn = sqlite3.connect(path)
    try:
        return set(conn.execute("SELECT type, name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'")
                   .fetchall())
    finally:
        conn.close()


def stored_version(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return schema_version(conn)
    finally:
        conn.close()


def test_a_fresh_index_has_every_table_at_the_current_version(tmp_path):
    idx = Index(tmp_path / "index.sqlite")
    try:
        assert idx.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert idx.conn.execute("PRAGMA busy_timeout").fetchone()[0] == 30000
        assert idx.conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL: fsync on
    finally:
        idx.close()
    assert stored_version(tmp_path / "index.sqlite") == SCHEMA_VERSION == MIGRATIONS[-1].version
    tables = {name for kind, name, _ in schema_of(tmp_path / "index.sqlite") if kind == "table"}
    assert tables == {"meta", "studies", "series", "instances", "jobs", "sends", "errors", "counters"}
    assert [m.version for m in MIGRATIONS] == list(range(1, SCHEMA_VERSION + 1))
    idx = Index(tmp_path / "index.sqlite", fsync=False)
    try:
        assert idx.conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    finally:
        idx.close()


def test_an_index_of_the_first_node_is_migrated_and_keeps_its_rows(tmp_path):
    old = tmp_path / "old.sqlite"
    v1_index(old)
    assert stored_version(old) == 1
    assert "jobs_study" not in {name for _, name, _ in schema_of(old)}
    with Index(old).read() as q:
        assert q.study_by_uid("1.2.3")["state"] == StudyState.DONE
        assert q.recent_studies(10)[0]["summary"] == "{}"
        assert [r["destination"] for r in q.sends_in_states((SendState.FAILED_SEND,))] == ["pacs"]
    assert stored_version(old) == SCHEMA_VERSION
    assert "jobs_study" in {name for _, name, _ in schema_of(old)}  # version 2
    fresh = tmp_path / "fresh.sqlite"
    Index(fresh).close()
    assert schema_of(old) == schema_of(fresh)  # migrated = created new


def test_migrations_run_in_order_from_the_stored_version_in_one_transaction(tmp_path):
    conn = sqlite3.connect(tmp_path / "x.sqlite", isolation_level=None)
    ran: list[int] = []

    def step(version):
        return lambda c: ran.append(version)

    steps = (Migration(1, "meta", ("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)", step(1))),
             Migration(3, "c", ("CREATE TABLE c (x)", step(3))),  # listed out of order: applied by number
             Migration(2, "b", ("CREATE TABLE b (x)", step(2))))
    assert migrate(conn, steps[:1]) == 1 and ran == [1]
    assert migrate(conn, steps[:1]) == 1 and ran == [1]  # nothing to do
    ran.clear()
    assert migrate(conn, sorted(steps, key=lambda m: m.version)) == 3
    assert ran == [2, 3] and schema_version(conn) == 3

    def broken(c):
        raise RuntimeError("step 5 fails")

    with pytest.raises(RuntimeError, match="step 5 fails"):
        migrate(conn, [*steps, Migration(4, "d", ("CREATE TABLE d (x)",)), Migration(5, "e", (broken,))])
    assert schema_version(conn) == 3  # all or nothing: version 4 rolled back with 5
    assert conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'd'").fetchone() is None
    assert not conn.in_transaction
    conn.close()


def test_reopening_a_current_index_writes_nothing(tmp_path):
    path = tmp_path / "index.sqlite"
    Index(path).close()
    before = path.read_bytes()
    idx = Index(path)
    try:
        assert idx.conn.total_changes == 0
        assert idx.conn.execute("PRAGMA schema_version").fetchone()[0] == \
            sqlite3.connect(path).execute("PRAGMA schema_version").fetchone()[0]
        wal = Path(f"{path}-wal")
        assert not wal.exists() or wal.stat().st_size == 0 or idx.conn.execute(
            "PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1] == 0  # no frame written to the log
    finally:
        idx.close()
    assert path.read_bytes() == before


def test_an_index_from_a_newer_node_is_refused(tmp_path):
    path = tmp_path / "index.sqlite"
    Index(path).close()
    conn = sqlite3.connect(path)
    conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),))
    conn.commit()
    conn.close()
    newer = rf"schema version {SCHEMA_VERSION + 1}, newer than this node knows \({SCHEMA_VERSION}\)"
    with pytest.raises(SchemaTooNewError, match=newer):
        Index(path)
    with pytest.raises(SchemaTooNewError, match=newer):
        Index(path, readonly=True)
    with pytest.raises(SchemaTooNewError):
        Storage(path, tmp_path / "spool", fsync=False)
    assert stored_version(path) == SCHEMA_VERSION + 1  # untouched
    try:  # the refused node let go of the lock
        Storage(path, tmp_path / "spool", fsync=False)
    except NodeLockedError:
        pytest.fail("the lock of a refused index was kept")
    except SchemaTooNewError:
        pass


def test_a_reader_does_not_migrate(tmp_path):
    old = tmp_path / "old.sqlite"
    v1_index(old)
    idx = Index(old, readonly=True)
    try:
        assert idx.study_counts() == {"DONE": 1}
    finally:
        idx.close()
    assert stored_version(old) == 1


@pytest.mark.parametrize("enum, stored", [
    (StudyState, ["RECEIVING", "READY", "RUNNING", "DONE", "FAILED", "INCOMPLETE"]),
    (JobState, ["QUEUED", "RUNNING", "DONE", "FAILED", "CANCELLED"]),
    (SendState, ["PENDING", "SENDING", "DONE", "FAILED_SEND"]),
])
def test_state_values_are_the_strings_already_stored(enum, stored):
    assert [m.value for m in enum] == stored
    # a member hashes like its name: names must equal values for dict lookups by stored string
    assert all(m.name == m.value for m in enum)
    assert {s: 1 for s in stored}[enum(stored[0])] == 1


def test_outbox_and_status_statements(tmp_path):
    idx = Index(tmp_path / "index.sqlite")
    try:
        with idx.tx() as t:
            sid = t.insert_study("1.2.3", "", StudyState.RECEIVING, 10.0)
            a = t.enqueue_send(None, sid, 1, "pacs", "clinical", [Path("/o/seg.dcm")], 10.0)
            b = t.enqueue_send(None, sid, 1, "research", "research", [], 10.0)
            t.bump("sends_delivered")
            t.bump("sends_delivered", 2)
        with idx.read() as q:
            assert q.due_sends(9.0) == [] and q.due_sends(10.0) == [a, b]
            assert q.send(a)["files"] == '["/o/seg.dcm"]'
            assert [r["id"] for r in q.active_studies()] == [sid]
        with idx.tx() as t:
            assert t.claim_send(a, 11.0)["state"] == SendState.SENDING
            assert t.claim_send(a, 11.0) is None  # taken
            t.end_send(b, SendState.PENDING, 1, "refused", 11.0, next_attempt=20.0)
        with idx.read() as q:
            assert q.due_sends(12.0) == []
            assert q.send_counts() == {"SENDING": 1, "PENDING": 1}
        with idx.tx() as t:
            assert t.requeue_sending(13.0) == 1
            t.end_send(a, SendState.FAILED_SEND, 3, "down", 14.0)
            t.end_send(b, SendState.DONE, 2, None, 15.0)
            t.record_error("send", "down", sid, 14.0)
        with idx.read() as q:
            assert [r["id"] for r in q.sends_in_states((SendState.FAILED_SEND,), newest_first=True, limit=5)] == [a]
            assert q.send(b)["last_error"] is None
            assert q.counters() == {"sends_delivered": 3}
            assert [r["message"] for r in q.last_errors(10)] == ["down"]
        assert idx.send_counts() == {"FAILED_SEND": 1, "DONE": 1}
    finally:
        idx.close()


SQL_IN_TEXT = re.compile(r"\b(SELECT\s|INSERT\s+(OR\s+\w+\s+)?INTO|UPDATE\s+\w+\s+SET|DELETE\s+FROM|"
                         r"CREATE\s+(TABLE|INDEX|UNIQUE)|DROP\s+(TABLE|INDEX)|ALTER\s+TABLE|PRAGMA\s|"
                         r"BEGIN\s+IMMEDIATE|ROLLBACK|COMMIT)")


def sql_literals(path: Path) -> list[tuple[int, str]]:
    """(line, text) of every string literal (f-string parts included) that looks like SQL."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and SQL_IN_TEXT.search(node.value):
            found.append((node.lineno, node.value[:60]))
    return found


def test_only_the_index_module_writes_sql():
    index_path = Path(index_module.__file__).resolve()
    assert len(sql_literals(index_path)) > 40  # the pattern finds the statements where they are
    offenders = {str(p.relative_to(ROOT)): hits for p in sorted((ROOT / "dicomnode").rglob("*.py"))
                 if p.resolve() != index_path and (hits := sql_literals(p))}
    assert offenders == {}, "SQL belongs in dicomnode/index/db.py"
