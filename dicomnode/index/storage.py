"""The spool of received instances, and the node's handle on its index (`dicomnode.index.db`).

Spool layout: ``<spool>/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm``,
each file written to ``<spool>/.incoming/`` first, then renamed into place and
fsynced with its folder (per config) before the sender gets 0x0000. UIDs that are not
safe as file names are replaced by a hash.

The index (one SQLite database in WAL mode: schema, migrations, every statement)
is `dicomnode.index.db`; `Storage` opens it as `storage.index`. A lock file next to the
database keeps a second node off the same index.

This module knows files; the tables are `dicomnode.index.db`', the study states and
their transitions `dicomnode.index.studies`'.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import re
import shutil
import sqlite3
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from dicomnode.index.db import FINISHED_STUDY_STATES, Index, Statements, connect  # noqa: F401 (connect: tools, tests)

logger = logging.getLogger(__name__)

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
    scan_info: str = ""  # JSON of pipeline.series.scan_info: completeness reads it instead of the file


class Storage:
    """The spool files of one node, and its index (`self.index`), which one lock file keeps to one node."""

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
        self._syncer = ThreadPoolExecutor(max_workers=8, thread_name_prefix="nodestage-fsync")
        try:
            self.index = Index(self.database, fsync)
        except BaseException:
            self._syncer.shutdown(wait=False)
            self._unlock()
            raise
        if lock:  # only the node owning the index may clear partial files (a reader must not)
            for stale in self.incoming.iterdir():
                stale.unlink(missing_ok=True)

    # ---------------------------------------------------------------- database

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction under the node's lock (`Index.tx()`), as a bare connection: for
        tests and tools outside `dicomnode/` (node code uses `storage.index.tx()`)."""
        with self.index.tx() as t:
            yield t.conn

    def query(self, sql: str, args: tuple | dict = ()) -> list[sqlite3.Row]:
        """A caller's read-only statement (tests, benchmarks, tools)."""
        return self.index.query(sql, args)

    def query_one(self, sql: str, args: tuple | dict = ()) -> sqlite3.Row | None:
        rows = self.query(sql, args)
        return rows[0] if rows else None

    def close(self) -> None:
        self._syncer.shutdown(wait=True)
        self.index.close()
        self._unlock()

    def _unlock(self) -> None:
        if self._lock_file is not None:
            fcntl.flock(self._lock_file, fcntl.LOCK_UN)
            self._lock_file.close()
            self._lock_file = None

    def record_error(self, kind: str, message: str, study_id: int | None = None,
                     conn: Statements | sqlite3.Connection | None = None) -> None:
        """Keep an error for `nodestage status` (messages carry no PHI); inside `conn`'s transaction if given."""
        if conn is not None:
            _statements(conn).record_error(kind, message, study_id, time.time())
            return
        self.index.record_error(kind, message, study_id, time.time())

    def bump(self, name: str, amount: float = 1, conn: Statements | sqlite3.Connection | None = None) -> None:
        """Add to a counter (for metrics); inside `conn`'s transaction if given."""
        if conn is not None:
            _statements(conn).bump(name, amount)
            return
        self.index.bump(name, amount)

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
        with self.index.tx() as t:
            t.prune_errors()
        if spool_days is not None:
            cutoff = now - spool_days * 86400
            with self.index.read() as q:
                rows = q.finished_studies_before(cutoff, unpurged_only=True)
            for row in rows:
                with self.index.tx() as t:
                    study = t.study(row["id"])
                    if study["state"] not in FINISHED_STUDY_STATES or study["updated"] >= cutoff:
                        continue  # re-opened meanwhile
                    t.purge_study_rows(row["id"])
                shutil.rmtree(self.study_dir(row["study_uid"]), ignore_errors=True)
                done["spool"] += 1
                logger.info("retention: removed received instances of study #%d", row["id"])
        if archive_days is not None:
            with self.index.read() as q:
                rows = q.finished_studies_before(now - archive_days * 86400, unpurged_only=False)
            for row in rows:
                folder = Path(archive_dir) / safe_name(row["study_uid"])
                if folder.exists():
                    shutil.rmtree(folder, ignore_errors=True)
                    done["archive"] += 1
                    logger.info("retention: removed outputs of study #%d", row["id"])
        return done


def _statements(conn: Statements | sqlite3.Connection) -> Statements:
    return conn if isinstance(conn, Statements) else Statements(conn)


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
