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

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from dicomnode.app.config import StudySettings
from dicomnode.index.db import FINISHED_STUDY_STATES, JobState, Row, StudyState
from dicomnode.index.storage import InstanceHeader, Storage

logger = logging.getLogger(__name__)

# the study states by their short names, as other modules and the tests import them
RECEIVING, READY, RUNNING, DONE, FAILED, INCOMPLETE = (
    StudyState.RECEIVING, StudyState.READY, StudyState.RUNNING, StudyState.DONE, StudyState.FAILED,
    StudyState.INCOMPLETE)
STATES = tuple(StudyState)
FINISHED = FINISHED_STUDY_STATES

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


def check_series(study_dir: Path, indexed: list[Any] | None = None) -> str | None:
    """None when the folder holds a usable AC PET plus a CT in its frame of reference, else why not.

    `indexed` (`pipeline.series.IndexedInstance`s from the index) is what the receiver read of each
    file; without it (an index written before scan_info was kept) the files are read again."""
    from pipeline.errors import PipelineError
    from pipeline.series import scan_from_index, scan_study, select_series

    try:
        select_series(scan_from_index(study_dir, indexed) if indexed is not None else scan_study(study_dir))
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
        with self.storage.index.tx() as t:
            study = t.study_by_uid(header.study_uid)
            if study is None:
                study = t.study(t.insert_study(header.study_uid, header.accession, RECEIVING, now))
                created = True
            sid = study["id"]
            old = t.instance(header.sop_uid)
            new_instance = old is None or (kept and not old["kept"]) or old["study_id"] != sid
            if old is None:
                t.insert_instance(header, sid, rel, size, kept, now, calling_aet)
            else:
                t.update_instance(header, sid, rel, size, kept, now, calling_aet)
            t.upsert_series(header, sid, kept)
            state, version = StudyState(study["state"]), study["version"]
            if kept and not created:
                if state == RECEIVING:
                    t.touch_study(sid, now)
                elif state == READY:  # not started yet: more data, so wait again (same version)
                    t.cancel_queued_jobs(sid, now, "more instances arrived")
                    t.restart_receiving(sid, now)
                    state = RECEIVING
                elif new_instance or self.settings.on_resend == "new_version":
                    version += 1
                    reopened = True
                    t.reopen_study(sid, version, now)
                    state = RECEIVING
            if header.accession and not study["accession"]:
                t.set_accession(sid, header.accession)
            t.bump("instances_received" if kept else "instances_ignored")
            if old is not None:
                t.bump("instances_duplicate")
        if created:
            logger.info("study #%d: receiving", sid)
            logger.debug("study #%d is StudyInstanceUID=%s accession=%s", sid, header.study_uid, header.accession)
        if reopened:
            logger.info("study #%d: a late instance re-opened it as version %d", sid, version)
        return Received(study_id=sid, version=version, new_instance=new_instance, reopened=reopened, state=state)

    # ---------------------------------------------------------------- completeness

    def _series_counts(self, study_id: int) -> list[Row]:
        with self.storage.index.read() as q:
            return q.kept_series_counts(study_id)

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

    def _indexed_instances(self, study_id: int, study_uid: str) -> list[Any] | None:
        """The study's files as the index holds them, or None when any lacks its scan_info."""
        from pipeline.series import IndexedInstance

        with self.storage.index.read() as q:
            rows = q.kept_instances(study_id)
        if any(not r["scan_info"] for r in rows):
            return None
        return [IndexedInstance(self.storage.spool_dir / r["path"], r["sop_uid"], study_uid, r["series_uid"],
                                r["sop_class"], json.loads(r["scan_info"])) for r in rows]

    def scan(self, now: float | None = None) -> list[int]:
        """One stability scan: move quiet, usable studies to READY and hopeless ones to INCOMPLETE.

        Returns the ids of studies made READY."""
        now = self.clock() if now is None else now
        st = self.settings
        index = self.storage.index
        made_ready: list[int] = []
        ended: list[Unprocessed] = []
        with index.read() as q:
            receiving = q.studies_in_state(RECEIVING)
        for study in receiving:
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
                reason = check_series(self.storage.study_dir(study["study_uid"]),
                                      self._indexed_instances(sid, study["study_uid"]))
                with index.tx() as t:
                    t.record_series_check(sid, n_kept, reason)
            if reason is None:
                if self._to_ready(sid, study["version"], study["last_received"], now,
                                  "every expected instance in" if all_in else "quiet period over"):
                    made_ready.append(sid)
            elif age >= st.max_wait_seconds:
                why = f"{reason} (after waiting {age:.0f} s)"
                with index.tx() as t:
                    ended_now = t.move_study(sid, study["version"], RECEIVING, INCOMPLETE, now, reason=why)
                    if ended_now:
                        t.record_error("incomplete", why, sid, now=time.time())
                if ended_now:
                    logger.warning("study #%d v%d: INCOMPLETE: %s", sid, study["version"], why)
                    ended.append(Unprocessed(sid, study["study_uid"], study["accession"] or "", study["version"],
                                             INCOMPLETE, f"incomplete: {why}"))
        self._report_unprocessed(ended)
        if made_ready and self.on_ready is not None:
            self.on_ready()
        return made_ready

    def _to_ready(self, sid: int, version: int, last_received: float, now: float, why: str) -> bool:
        with self.storage.index.tx() as t:
            if not t.move_study(sid, version, RECEIVING, READY, now, keep_reason=True, last_received=last_received):
                return False  # an instance arrived meanwhile
            t.queue_job(sid, version, now)
        logger.info("study #%d v%d: READY (%s)", sid, version, why)
        return True

    def reprocess(self, study_id: int) -> bool:
        """Queue a study for processing now, whatever its series (operator command; tests).

        A finished study gets a new version. Returns False when it is RUNNING or READY already."""
        now = self.clock()
        with self.storage.index.tx() as t:
            study = t.study(study_id)
            if study is None:
                raise KeyError(f"no study #{study_id}")
            if study["state"] in (READY, RUNNING):
                return False
            version = study["version"] + (1 if study["state"] in FINISHED else 0)
            t.requeue_study_version(study_id, version, now)
            t.queue_job(study_id, version, now)
        logger.info("study #%d v%d: READY (queued by request)", study_id, version)
        if self.on_ready is not None:
            self.on_ready()
        return True

    # ---------------------------------------------------------------- jobs

    def claim_next_job(self) -> Job | None:
        """Take the oldest QUEUED job: job and study become RUNNING."""
        now = self.clock()
        with self.storage.index.tx() as t:
            while True:
                row = t.oldest_queued_job()
                if row is None:
                    return None
                if row["study_state"] != READY or row["study_version"] != row["version"]:
                    t.end_job(row["id"], JobState.CANCELLED, now, "study changed before the job started")
                    continue
                t.start_job(row["id"], now)
                t.set_study_state(row["study_id"], RUNNING, now)
                return Job(id=row["id"], study_id=row["study_id"], study_uid=row["study_uid"],
                           version=row["version"], attempts=row["attempts"] + 1, accession=row["accession"] or "")

    def finish_job(self, job: Job, state: str, reason: str | None, out_dir: Path | None,
                   summary: str | None = None) -> bool:
        """Record a job's end; the study takes `state` unless it was re-opened meanwhile.

        Returns True when the study's state changed."""
        assert state in (DONE, FAILED)
        now = self.clock()
        with self.storage.index.tx() as t:
            t.finish_job(job.id, JobState(state), now, reason, str(out_dir) if out_dir else None, summary)
            changed = t.move_study(job.study_id, job.version, RUNNING, StudyState(state), now, reason=reason)
            if state == FAILED:
                t.record_error("job", reason or "failed", job.study_id, now=time.time())
        return changed

    def set_job_pid(self, job: Job, pid: int | None) -> None:
        with self.storage.index.tx() as t:
            t.set_job_pid(job.id, pid)

    def requeue(self, job: Job, reason: str) -> None:
        """Put a job that was stopped (node shutting down) back in the queue."""
        now = self.clock()
        with self.storage.index.tx() as t:
            t.requeue_job(job.id, reason)
            t.move_study(job.study_id, job.version, RUNNING, READY, now, keep_reason=True)

    def requeue_interrupted(self, max_restarts: int, stop_leftover: Callable[[int], object] | None = None) -> int:
        """At start-up: jobs left RUNNING by a crash go back to the queue (or FAILED after too many).

        `stop_leftover(pid)` stops a pipeline process the crashed node left running (the executor's
        business, not the index's: `dicomnode.run.executor.kill_orphan`)."""
        now = self.clock()
        n = 0
        ended: list[Unprocessed] = []
        with self.storage.index.tx() as t:
            for row in t.jobs_in_state(JobState.RUNNING):
                if row["pid"] and stop_leftover is not None:
                    stop_leftover(row["pid"])
                if row["attempts"] > max_restarts:
                    reason = (f"interrupted by a node restart on attempt {row['attempts']}; not retried "
                              f"(worker.max_restarts is {max_restarts})")
                    t.end_job(row["id"], JobState.FAILED, now, reason)
                    t.move_study(row["study_id"], row["version"], RUNNING, FAILED, now, reason=reason)
                    t.record_error("job", reason, row["study_id"], now=time.time())
                    logger.warning("study #%d v%d: FAILED: %s", row["study_id"], row["version"], reason)
                    study = t.study(row["study_id"])
                    ended.append(Unprocessed(row["study_id"], study["study_uid"], study["accession"] or "",
                                             row["version"], FAILED, reason))
                    continue
                t.requeue_job(row["id"], "re-queued at start-up (was RUNNING)")
                t.move_study(row["study_id"], row["version"], RUNNING, READY, now, keep_reason=True)
                n += 1
                logger.info("study #%d v%d: job re-queued at start-up (it was RUNNING)", row["study_id"],
                            row["version"])
            # a RUNNING study without a RUNNING/QUEUED job (should not happen): make it READY again
            for row in t.running_studies_without_job():
                t.set_study_state(row["id"], READY)
                t.queue_job(row["id"], row["version"], now)
                n += 1
        self._report_unprocessed(ended)
        return n

    # ---------------------------------------------------------------- reading

    def study(self, study_id: int) -> Row | None:
        return self.storage.index.study(study_id)

    def study_by_uid(self, study_uid: str) -> Row | None:
        return self.storage.index.study_by_uid(study_uid)

    def kept_files(self, study_id: int) -> list[tuple[str, str, Path]]:
        """(series UID, SOP UID, spool path) of every kept instance of a study."""
        with self.storage.index.read() as q:
            rows = q.kept_instance_paths(study_id)
        return [(r["series_uid"], r["sop_uid"], self.storage.spool_dir / r["path"]) for r in rows]
