"""Studies and their states: grouping of received instances, completeness, and the job queue.

States (DESIGN.md §2)::

    RECEIVING -> READY -> RUNNING -> DONE | FAILED
        \\-> INCOMPLETE (maximum wait reached without a usable PET + CT)

A study is complete when it has been quiet for `stability_seconds` **and** it
holds an attenuation-corrected PET plus a CT sharing its FrameOfReferenceUID (the
same rules the pipeline uses: `pipeline.series.select_series`). Once every
expected instance is in - each PET series' NumberOfSlices and each CT series'
ImagesInAcquisition, where present - the quiet period shrinks to
`guard_seconds`. After `max_wait_seconds` from its first instance the study is
processed if usable, else it ends INCOMPLETE with the reason.

Completeness never depends on an association closing. A new instance arriving
after a study left RECEIVING re-opens it as a new version (the running job and
earlier outputs are kept); an unchanged resend does so only when
`on_resend: new_version`.

Logs at INFO name studies by their index number (``study #12``); the UID and
accession number appear at DEBUG only.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from dicomnode.config import StudySettings
from dicomnode.storage import InstanceHeader, Storage

logger = logging.getLogger(__name__)

RECEIVING, READY, RUNNING, DONE, FAILED, INCOMPLETE = "RECEIVING", "READY", "RUNNING", "DONE", "FAILED", "INCOMPLETE"
STATES = (RECEIVING, READY, RUNNING, DONE, FAILED, INCOMPLETE)
FINISHED = (DONE, FAILED, INCOMPLETE)

# SOP classes kept for processing; every other storage class is accepted and ignored.
CT_PET_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.2": "CT",        # CT Image Storage
    "1.2.840.10008.5.1.4.1.1.2.1": "CT",      # Enhanced CT Image Storage
    "1.2.840.10008.5.1.4.1.1.2.2": "CT",      # Legacy Converted Enhanced CT Image Storage
    "1.2.840.10008.5.1.4.1.1.128": "PT",      # Positron Emission Tomography Image Storage
    "1.2.840.10008.5.1.4.1.1.130": "PT",      # Enhanced PET Image Storage
    "1.2.840.10008.5.1.4.1.1.128.1": "PT",    # Legacy Converted Enhanced PET Image Storage
}
SINGLE_FRAME_CLASSES = {"1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.128"}


def is_kept(sop_class: str) -> bool:
    return sop_class in CT_PET_CLASSES


@dataclass(frozen=True)
class Received:
    """What recording one instance did."""

    study_id: int
    version: int
    new_instance: bool
    reopened: bool
    state: str


@dataclass(frozen=True)
class Unprocessed:
    """A study version that ended without a pipeline result (INCOMPLETE, or FAILED before its run finished)."""

    study_id: int
    study_uid: str
    accession: str
    version: int
    state: str
    reason: str


@dataclass(frozen=True)
class Job:
    id: int
    study_id: int
    study_uid: str
    version: int
    attempts: int
    accession: str


def kill_orphan(pid: int) -> bool:
    """Kill the process group of a pipeline job left by a crashed node (checked by its command line)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return False
    if b"dicomnode.pipeline_job" not in cmdline:
        return False
    try:
        os.killpg(pid, signal.SIGKILL)
    except OSError:
        return False
    logger.warning("killed pipeline process %d left running by a previous node", pid)
    return True


def check_series(study_dir: Path) -> str | None:
    """None when the folder holds a usable AC PET plus a CT in its frame of reference, else why not."""
    from pipeline.errors import PipelineError
    from pipeline.series import scan_study, select_series

    try:
        select_series(scan_study(study_dir))
    except PipelineError as err:
        return str(err)
    except Exception as err:  # a rule crashed on odd data: not complete, say why
        logger.exception("series check failed")
        return f"series check failed: {type(err).__name__}: {err}"
    return None


class StudyTracker:
    """The study state machine over the index in `storage`."""

    def __init__(self, storage: Storage, settings: StudySettings, clock: Callable[[], float] = time.time,
                 on_ready: Callable[[], None] | None = None,
                 on_unprocessed: Callable[[Unprocessed], None] | None = None):
        self.storage = storage
        self.settings = settings
        self.clock = clock
        self.on_ready = on_ready
        # A study version that ends without a pipeline result of its own (INCOMPLETE, or FAILED after
        # too many interrupted runs): the node records it in the silent-mode ledger, so an
        # evaluation counts it as a failure instead of missing it.
        self.on_unprocessed = on_unprocessed

    def _report_unprocessed(self, ended: list[Unprocessed]) -> None:
        if self.on_unprocessed is None:
            return
        for item in ended:
            try:
                self.on_unprocessed(item)
            except Exception:  # the ledger is a record, not the state machine: never stop a scan for it
                logger.exception("study #%d v%d: could not record the %s outcome", item.study_id, item.version,
                                 item.state)

    # ---------------------------------------------------------------- receiving

    def record_instance(self, header: InstanceHeader, path: Path | None, size: int, calling_aet: str,
                        kept: bool) -> Received:
        """Index one stored (or ignored) instance and move its study's state. Fast: one transaction."""
        now = self.clock()
        rel = str(path.relative_to(self.storage.spool_dir)) if path is not None else None
        created = reopened = False
        with self.storage.tx() as c:
            study = c.execute("SELECT * FROM studies WHERE study_uid = ?", (header.study_uid,)).fetchone()
            if study is None:
                cur = c.execute(
                    "INSERT INTO studies(study_uid, accession, state, version, first_received, last_received, "
                    "created, updated) VALUES (?, ?, ?, 1, ?, ?, ?, ?)",
                    (header.study_uid, header.accession, RECEIVING, now, now, now, now))
                study = c.execute("SELECT * FROM studies WHERE id = ?", (cur.lastrowid,)).fetchone()
                created = True
            sid = study["id"]
            old = c.execute("SELECT * FROM instances WHERE sop_uid = ?", (header.sop_uid,)).fetchone()
            new_instance = old is None or (kept and not old["kept"]) or old["study_id"] != sid
            if old is None:
                c.execute(
                    "INSERT INTO instances(sop_uid, study_id, series_uid, sop_class, path, size, kept, "
                    "first_received, last_received, times_received, calling_aet) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 1, ?)",
                    (header.sop_uid, sid, header.series_uid, header.sop_class, rel, size, int(kept), now, now,
                     calling_aet))
            else:
                c.execute(
                    "UPDATE instances SET study_id = ?, series_uid = ?, sop_class = ?, path = ?, size = ?, "
                    "kept = ?, last_received = ?, times_received = times_received + 1, calling_aet = ? "
                    "WHERE sop_uid = ?",
                    (sid, header.series_uid, header.sop_class, rel, size, int(kept), now, calling_aet,
                     header.sop_uid))
            c.execute(
                "INSERT INTO series(series_uid, study_id, modality, sop_class, frame_of_reference, description, "
                "corrected_image, image_type, series_type, series_number, number_of_slices, "
                "images_in_acquisition, kept) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT(series_uid) DO UPDATE SET "
                "number_of_slices = COALESCE(series.number_of_slices, excluded.number_of_slices), "
                "images_in_acquisition = COALESCE(series.images_in_acquisition, excluded.images_in_acquisition)",
                (header.series_uid, sid, header.modality, header.sop_class, header.frame_of_reference,
                 header.series_description, header.corrected_image, header.image_type, header.series_type,
                 header.series_number, header.number_of_slices, header.images_in_acquisition, int(kept)))
            state, version = study["state"], study["version"]
            if kept and not created:
                if state == RECEIVING:
                    c.execute("UPDATE studies SET last_received = ?, updated = ? WHERE id = ?", (now, now, sid))
                elif state == READY:  # not started yet: more data, so wait again (same version)
                    c.execute("UPDATE jobs SET state = 'CANCELLED', finished = ?, reason = ? "
                              "WHERE study_id = ? AND state = 'QUEUED'", (now, "more instances arrived", sid))
                    c.execute("UPDATE studies SET state = ?, last_received = ?, updated = ?, checked_count = -1 "
                              "WHERE id = ?", (RECEIVING, now, now, sid))
                    state = RECEIVING
                elif new_instance or self.settings.on_resend == "new_version":
                    version += 1
                    reopened = True
                    c.execute(
                        "UPDATE studies SET state = ?, version = ?, reason = NULL, first_received = ?, "
                        "last_received = ?, updated = ?, checked_count = -1, check_reason = NULL WHERE id = ?",
                        (RECEIVING, version, now, now, now, sid))
                    state = RECEIVING
            if header.accession and not study["accession"]:
                c.execute("UPDATE studies SET accession = ? WHERE id = ?", (header.accession, sid))
            self.storage.bump("instances_received" if kept else "instances_ignored", conn=c)
            if old is not None:
                self.storage.bump("instances_duplicate", conn=c)
        if created:
            logger.info("study #%d: receiving", sid)
            logger.debug("study #%d is StudyInstanceUID=%s accession=%s", sid, header.study_uid, header.accession)
        if reopened:
            logger.info("study #%d: a late instance re-opened it as version %d", sid, version)
        return Received(study_id=sid, version=version, new_instance=new_instance, reopened=reopened, state=state)

    # ---------------------------------------------------------------- completeness

    def _series_counts(self, study_id: int) -> list:
        return self.storage.query(
            "SELECT s.*, (SELECT COUNT(*) FROM instances i WHERE i.series_uid = s.series_uid AND i.kept = 1 "
            "AND i.study_id = s.study_id) AS n FROM series s WHERE s.study_id = ? AND s.kept = 1", (study_id,))

    @staticmethod
    def expected_all_in(series: list) -> bool:
        """Every series with an expected count is whole, and a whole PET and a CT are there."""
        pet_whole = ct_seen = False
        for s in series:
            if s["sop_class"] not in SINGLE_FRAME_CLASSES:
                continue
            expected = s["number_of_slices"] if s["modality"] == "PT" else s["images_in_acquisition"]
            if s["modality"] == "CT":
                ct_seen = True
            if expected:
                if s["n"] < expected:
                    return False
                if s["modality"] == "PT":
                    pet_whole = True
        return pet_whole and ct_seen

    def scan(self, now: float | None = None) -> list[int]:
        """One stability scan: move quiet, usable studies to READY and hopeless ones to INCOMPLETE.

        Returns the ids of studies made READY."""
        now = self.clock() if now is None else now
        st = self.settings
        made_ready: list[int] = []
        ended: list[Unprocessed] = []
        for study in self.storage.query("SELECT * FROM studies WHERE state = ? ORDER BY id", (RECEIVING,)):
            sid = study["id"]
            series = self._series_counts(sid)
            n_kept = sum(s["n"] for s in series)
            quiet = now - study["last_received"]
            age = now - study["first_received"]
            all_in = self.expected_all_in(series)
            needed = st.guard_seconds if all_in else st.stability_seconds
            if quiet < needed and age < st.max_wait_seconds:
                continue
            if n_kept == 0:
                reason = "no CT or PET images received"
            elif study["checked_count"] == n_kept:
                reason = study["check_reason"]
            else:
                reason = check_series(self.storage.study_dir(study["study_uid"]))
                with self.storage.tx() as c:
                    c.execute("UPDATE studies SET checked_count = ?, check_reason = ? WHERE id = ? AND state = ?",
                              (n_kept, reason, sid, RECEIVING))
            if reason is None:
                if self._to_ready(sid, study["version"], study["last_received"], now,
                                  "every expected instance in" if all_in else "quiet period over"):
                    made_ready.append(sid)
            elif age >= st.max_wait_seconds:
                why = f"{reason} (after waiting {age:.0f} s)"
                with self.storage.tx() as c:
                    cur = c.execute("UPDATE studies SET state = ?, reason = ?, updated = ? "
                                    "WHERE id = ? AND state = ? AND version = ?",
                                    (INCOMPLETE, why, now, sid, RECEIVING, study["version"]))
                    if cur.rowcount:
                        self.storage.record_error("incomplete", why, sid, conn=c)
                if cur.rowcount:
                    logger.warning("study #%d v%d: INCOMPLETE: %s", sid, study["version"], why)
                    ended.append(Unprocessed(sid, study["study_uid"], study["accession"] or "", study["version"],
                                             INCOMPLETE, f"incomplete: {why}"))
        self._report_unprocessed(ended)
        if made_ready and self.on_ready is not None:
            self.on_ready()
        return made_ready

    def _to_ready(self, sid: int, version: int, last_received: float, now: float, why: str) -> bool:
        with self.storage.tx() as c:
            cur = c.execute("UPDATE studies SET state = ?, updated = ? WHERE id = ? AND state = ? AND version = ? "
                            "AND last_received = ?", (READY, now, sid, RECEIVING, version, last_received))
            if not cur.rowcount:
                return False  # an instance arrived meanwhile
            c.execute("INSERT INTO jobs(study_id, version, state, created) VALUES (?, ?, 'QUEUED', ?)",
                      (sid, version, now))
        logger.info("study #%d v%d: READY (%s)", sid, version, why)
        return True

    def reprocess(self, study_id: int) -> bool:
        """Queue a study for processing now, whatever its series (operator command; tests).

        A finished study gets a new version. Returns False when it is RUNNING or READY already."""
        now = self.clock()
        with self.storage.tx() as c:
            study = c.execute("SELECT * FROM studies WHERE id = ?", (study_id,)).fetchone()
            if study is None:
                raise KeyError(f"no study #{study_id}")
            if study["state"] in (READY, RUNNING):
                return False
            version = study["version"] + (1 if study["state"] in FINISHED else 0)
            c.execute("UPDATE studies SET state = ?, version = ?, reason = NULL, updated = ? WHERE id = ?",
                      (READY, version, now, study_id))
            c.execute("INSERT INTO jobs(study_id, version, state, created) VALUES (?, ?, 'QUEUED', ?)",
                      (study_id, version, now))
        logger.info("study #%d v%d: READY (queued by request)", study_id, version)
        if self.on_ready is not None:
            self.on_ready()
        return True

    # ---------------------------------------------------------------- jobs

    def claim_next_job(self) -> Job | None:
        """Take the oldest QUEUED job: job and study become RUNNING."""
        now = self.clock()
        with self.storage.tx() as c:
            while True:
                row = c.execute(
                    "SELECT j.*, s.study_uid, s.accession, s.state AS study_state, s.version AS study_version "
                    "FROM jobs j JOIN studies s ON s.id = j.study_id WHERE j.state = 'QUEUED' "
                    "ORDER BY j.id LIMIT 1").fetchone()
                if row is None:
                    return None
                if row["study_state"] != READY or row["study_version"] != row["version"]:
                    c.execute("UPDATE jobs SET state = 'CANCELLED', finished = ?, reason = ? WHERE id = ?",
                              (now, "study changed before the job started", row["id"]))
                    continue
                c.execute("UPDATE jobs SET state = 'RUNNING', started = ?, attempts = attempts + 1 WHERE id = ?",
                          (now, row["id"]))
                c.execute("UPDATE studies SET state = ?, updated = ? WHERE id = ?", (RUNNING, now, row["study_id"]))
                return Job(id=row["id"], study_id=row["study_id"], study_uid=row["study_uid"],
                           version=row["version"], attempts=row["attempts"] + 1, accession=row["accession"] or "")

    def finish_job(self, job: Job, state: str, reason: str | None, out_dir: Path | None,
                   summary: str | None = None) -> bool:
        """Record a job's end; the study takes `state` unless it was re-opened meanwhile.

        Returns True when the study's state changed."""
        assert state in (DONE, FAILED)
        now = self.clock()
        with self.storage.tx() as c:
            c.execute("UPDATE jobs SET state = ?, finished = ?, reason = ?, out_dir = ?, summary = ? WHERE id = ?",
                      (state, now, reason, str(out_dir) if out_dir else None, summary, job.id))
            cur = c.execute("UPDATE studies SET state = ?, reason = ?, updated = ? "
                            "WHERE id = ? AND version = ? AND state = ?",
                            (state, reason, now, job.study_id, job.version, RUNNING))
            if state == FAILED:
                self.storage.record_error("job", reason or "failed", job.study_id, conn=c)
        return bool(cur.rowcount)

    def set_job_pid(self, job: Job, pid: int | None) -> None:
        with self.storage.tx() as c:
            c.execute("UPDATE jobs SET pid = ? WHERE id = ?", (pid, job.id))

    def requeue(self, job: Job, reason: str) -> None:
        """Put a job that was stopped (node shutting down) back in the queue."""
        now = self.clock()
        with self.storage.tx() as c:
            c.execute("UPDATE jobs SET state = 'QUEUED', started = NULL, reason = ? WHERE id = ?", (reason, job.id))
            c.execute("UPDATE studies SET state = ?, updated = ? WHERE id = ? AND version = ? AND state = ?",
                      (READY, now, job.study_id, job.version, RUNNING))

    def requeue_interrupted(self, max_restarts: int) -> int:
        """At start-up: jobs left RUNNING by a crash go back to the queue (or FAILED after too many)."""
        now = self.clock()
        n = 0
        ended: list[Unprocessed] = []
        with self.storage.tx() as c:
            for row in c.execute("SELECT * FROM jobs WHERE state = 'RUNNING'").fetchall():
                if row["pid"]:
                    kill_orphan(row["pid"])
                if row["attempts"] > max_restarts:
                    reason = (f"interrupted by a node restart on attempt {row['attempts']}; not retried "
                              f"(worker.max_restarts is {max_restarts})")
                    c.execute("UPDATE jobs SET state = 'FAILED', finished = ?, reason = ? WHERE id = ?",
                              (now, reason, row["id"]))
                    c.execute("UPDATE studies SET state = ?, reason = ?, updated = ? WHERE id = ? AND version = ? "
                              "AND state = ?", (FAILED, reason, now, row["study_id"], row["version"], RUNNING))
                    self.storage.record_error("job", reason, row["study_id"], conn=c)
                    logger.warning("study #%d v%d: FAILED: %s", row["study_id"], row["version"], reason)
                    study = c.execute("SELECT study_uid, accession FROM studies WHERE id = ?",
                                      (row["study_id"],)).fetchone()
                    ended.append(Unprocessed(row["study_id"], study["study_uid"], study["accession"] or "",
                                             row["version"], FAILED, reason))
                    continue
                c.execute("UPDATE jobs SET state = 'QUEUED', started = NULL, reason = ? WHERE id = ?",
                          ("re-queued at start-up (was RUNNING)", row["id"]))
                c.execute("UPDATE studies SET state = ?, updated = ? WHERE id = ? AND version = ? AND state = ?",
                          (READY, now, row["study_id"], row["version"], RUNNING))
                n += 1
                logger.info("study #%d v%d: job re-queued at start-up (it was RUNNING)", row["study_id"],
                            row["version"])
            # a RUNNING study without a RUNNING/QUEUED job (should not happen): make it READY again
            for row in c.execute("SELECT * FROM studies s WHERE state = ? AND NOT EXISTS (SELECT 1 FROM jobs j "
                                 "WHERE j.study_id = s.id AND j.version = s.version AND j.state IN "
                                 "('QUEUED', 'RUNNING'))", (RUNNING,)).fetchall():
                c.execute("UPDATE studies SET state = ? WHERE id = ?", (READY, row["id"]))
                c.execute("INSERT INTO jobs(study_id, version, state, created) VALUES (?, ?, 'QUEUED', ?)",
                          (row["id"], row["version"], now))
                n += 1
        self._report_unprocessed(ended)
        return n

    # ---------------------------------------------------------------- reading

    def study(self, study_id: int):
        return self.storage.query_one("SELECT * FROM studies WHERE id = ?", (study_id,))

    def study_by_uid(self, study_uid: str):
        return self.storage.query_one("SELECT * FROM studies WHERE study_uid = ?", (study_uid,))

    def kept_files(self, study_id: int) -> list[tuple[str, str, Path]]:
        """(series UID, SOP UID, spool path) of every kept instance of a study."""
        rows = self.storage.query("SELECT series_uid, sop_uid, path FROM instances WHERE study_id = ? AND kept = 1 "
                                  "AND path IS NOT NULL ORDER BY series_uid, sop_uid", (study_id,))
        return [(r["series_uid"], r["sop_uid"], self.storage.spool_dir / r["path"]) for r in rows]
