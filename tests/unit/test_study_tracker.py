"""The study state machine (DESIGN.md §2) over a real index, driven by a fake clock.

The series rules themselves (`pipeline.series.select_series`) are tested elsewhere; here
`check_series` is replaced by a recorder whose answer the test sets, so each transition is
reached on purpose and the number of checks shows the tracker does not redo one.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from dicomnode.app.config import StudySettings
from dicomnode.index import studies
from dicomnode.index.db import JobState, StudyState
from dicomnode.index.storage import InstanceHeader, Storage
from dicomnode.index.studies import DONE, FAILED, FINISHED, READY, RECEIVING, RUNNING, STATES, StudyTracker, Unprocessed

CT = "1.2.840.10008.5.1.4.1.1.2"
PET = "1.2.840.10008.5.1.4.1.1.128"
SR = "1.2.840.10008.5.1.4.1.1.88.22"
STUDY = "1.2.826.0.1.3680043.8.498.1"
SETTINGS = StudySettings(stability_seconds=60, guard_seconds=5, max_wait_seconds=3600)


class Clock:
    def __init__(self, now: float = 1_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class SeriesCheck:
    """Stands in for `studies.check_series`: answers `reason` (None: usable) and counts calls."""

    def __init__(self):
        self.reason: str | None = None
        self.calls = 0
        self.indexed = None

    def __call__(self, study_dir: Path, indexed=None) -> str | None:
        self.calls += 1
        self.indexed = indexed
        return self.reason


@pytest.fixture
def series_check(monkeypatch) -> SeriesCheck:
    check = SeriesCheck()
    monkeypatch.setattr(studies, "check_series", check)
    return check


@pytest.fixture
def storage(tmp_path):
    s = Storage(tmp_path / "index.sqlite", tmp_path / "spool", fsync=False)
    yield s
    s.close()


def header(sop: str, modality: str = "CT", sop_class: str = CT, series: str | None = None, **extra) -> InstanceHeader:
    return InstanceHeader(sop_uid=f"{STUDY}.{sop}", sop_class=sop_class, study_uid=STUDY,
                          series_uid=series or f"{STUDY}.{modality}", modality=modality, accession="ACC1",
                          frame_of_reference=f"{STUDY}.9", **extra)


def receive(tracker: StudyTracker, storage: Storage, h: InstanceHeader, kept: bool = True):
    path = storage.write_instance([b"DICM"], h).wait() if kept else None
    return tracker.record_instance(h, path, 4, "SCANNER", kept)


def make_tracker(storage, clock, settings=SETTINGS, **kw) -> StudyTracker:
    return StudyTracker(storage, settings, clock=clock, **kw)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def tracker(storage, clock) -> StudyTracker:
    """A tracker with the default `SETTINGS` and no callbacks, the set-up most tests share."""
    return make_tracker(storage, clock)


def queue_study(tracker: StudyTracker, storage: Storage, clock: Clock):
    """Receives instance "1" and waits out the stability window: the study is READY with a QUEUED job.

    The starting point of every job-lifecycle test; returns the `record_instance` answer.
    """
    first = receive(tracker, storage, header("1"))
    clock.advance(tracker.settings.stability_seconds)
    tracker.scan()
    return first


def jobs(storage: Storage, study_id: int) -> list[tuple[int, str]]:
    return [(r["version"], r["state"]) for r in storage.query(
        "SELECT version, state FROM jobs WHERE study_id = ? ORDER BY id", (study_id,))]


def test_state_names_are_the_stored_strings():
    assert [str(s) for s in STATES] == ["RECEIVING", "READY", "RUNNING", "DONE", "FAILED", "INCOMPLETE"]
    assert set(FINISHED) == {StudyState.DONE, StudyState.FAILED, StudyState.INCOMPLETE}
    assert READY == "READY" and f"{DONE}" == "DONE"


def test_receive_stable_queued_running_done(storage, clock, series_check):
    ready_calls = []
    tracker = make_tracker(storage, clock, on_ready=lambda: ready_calls.append(clock.now))
    first = receive(tracker, storage, header("1"))
    assert (first.state, first.version, first.new_instance, first.reopened) == (RECEIVING, 1, True, False)
    clock.advance(10)
    receive(tracker, storage, header("2", "PT", PET))
    assert tracker.scan() == []  # quiet for 0 s of 60
    assert series_check.calls == 0
    clock.advance(59)
    assert tracker.scan() == []
    clock.advance(1)
    assert tracker.scan() == [first.study_id]
    assert ready_calls == [clock.now]
    assert series_check.calls == 1
    study = tracker.study(first.study_id)
    assert study["state"] == READY and study["accession"] == "ACC1"
    assert jobs(storage, first.study_id) == [(1, JobState.QUEUED)]

    clock.advance(1)
    job = tracker.claim_next_job()
    assert (job.study_id, job.version, job.attempts, job.study_uid, job.accession) == (first.study_id, 1, 1, STUDY,
                                                                                       "ACC1")
    assert tracker.claim_next_job() is None  # one job only
    assert tracker.study(first.study_id)["state"] == RUNNING
    tracker.set_job_pid(job, 4242)
    assert storage.query_one("SELECT pid, started FROM jobs WHERE id = ?", (job.id,))[:] == (4242, clock.now)

    clock.advance(30)
    assert tracker.finish_job(job, DONE, None, Path("/out/v1"), '{"n_tnm8": "N2b"}') is True
    study = tracker.study(first.study_id)
    assert (study["state"], study["reason"], study["updated"]) == (DONE, None, clock.now)
    row = storage.query_one("SELECT * FROM jobs WHERE id = ?", (job.id,))
    assert (row["state"], row["out_dir"], row["summary"], row["finished"]) == (
        "DONE", "/out/v1", '{"n_tnm8": "N2b"}', clock.now)
    assert tracker.kept_files(first.study_id) == [
        (f"{STUDY}.CT", f"{STUDY}.1", storage.spool_path(header("1"))),
        (f"{STUDY}.PT", f"{STUDY}.2", storage.spool_path(header("2", "PT", PET)))]


def test_every_expected_instance_in_shortens_the_wait_to_the_guard(storage, clock, tracker, series_check):
    r = receive(tracker, storage, header("1", images_in_acquisition=1))
    receive(tracker, storage, header("2", "PT", PET, number_of_slices=2))
    clock.advance(5)
    assert tracker.scan() == []  # PET has 1 of 2 slices: the full 60 s apply
    receive(tracker, storage, header("3", "PT", PET, number_of_slices=2))
    clock.advance(5)
    assert tracker.scan() == [r.study_id]


def test_a_failed_job_records_an_error(storage, clock, tracker, series_check):
    r = queue_study(tracker, storage, clock)
    job = tracker.claim_next_job()
    assert tracker.finish_job(job, FAILED, "no lesions readable", None) is True
    assert tracker.study(r.study_id)["state"] == FAILED
    assert storage.query_one("SELECT kind, message, study_id FROM errors")[:] == ("job", "no lesions readable",
                                                                                  r.study_id)


def test_a_new_instance_after_done_opens_a_new_version(storage, clock, tracker, series_check):
    r = queue_study(tracker, storage, clock)
    v1 = tracker.claim_next_job()
    tracker.finish_job(v1, DONE, None, None)

    clock.advance(100)
    resent = receive(tracker, storage, header("1"))  # unchanged resend, on_resend: ignore
    assert (resent.state, resent.version, resent.new_instance, resent.reopened) == (DONE, 1, False, False)
    late = receive(tracker, storage, header("5"))
    assert (late.state, late.version, late.reopened) == (RECEIVING, 2, True)
    study = tracker.study(r.study_id)
    assert (study["state"], study["version"], study["first_received"], study["checked_count"]) == (
        RECEIVING, 2, clock.now, -1)
    clock.advance(60)
    assert tracker.scan() == [r.study_id]
    assert jobs(storage, r.study_id) == [(1, JobState.DONE), (2, JobState.QUEUED)]
    assert storage.query_one("SELECT times_received FROM instances WHERE sop_uid = ?", (f"{STUDY}.1",))[0] == 2


def test_an_unchanged_resend_after_done_is_a_new_version_when_configured(storage, clock, series_check):
    tracker = make_tracker(storage, clock, StudySettings(stability_seconds=60, on_resend="new_version"))
    queue_study(tracker, storage, clock)
    tracker.finish_job(tracker.claim_next_job(), DONE, None, None)
    resent = receive(tracker, storage, header("1"))
    assert (resent.state, resent.version, resent.reopened) == (RECEIVING, 2, True)


def test_a_new_instance_before_the_job_starts_cancels_it(storage, clock, tracker, series_check):
    r = queue_study(tracker, storage, clock)
    more = receive(tracker, storage, header("2"))
    assert (more.state, more.version, more.reopened) == (RECEIVING, 1, False)
    assert jobs(storage, r.study_id) == [(1, JobState.CANCELLED)]
    assert storage.query_one("SELECT reason FROM jobs")[0] == "more instances arrived"
    assert tracker.claim_next_job() is None
    clock.advance(60)
    assert tracker.scan() == [r.study_id]
    assert series_check.calls == 2  # the kept count changed: checked again
    assert jobs(storage, r.study_id) == [(1, JobState.CANCELLED), (1, JobState.QUEUED)]


def test_a_new_instance_while_running_supersedes_the_running_version(storage, clock, tracker, series_check):
    r = queue_study(tracker, storage, clock)
    v1 = tracker.claim_next_job()
    late = receive(tracker, storage, header("2"))
    assert (late.state, late.version, late.reopened) == (RECEIVING, 2, True)
    assert tracker.finish_job(v1, DONE, None, None) is False  # the study moved on: it stays RECEIVING v2
    study = tracker.study(r.study_id)
    assert (study["state"], study["version"]) == (RECEIVING, 2)
    assert jobs(storage, r.study_id) == [(1, JobState.DONE)]


def test_a_stale_queued_job_is_cancelled_when_claimed(storage, clock, tracker, series_check):
    r = queue_study(tracker, storage, clock)
    with storage.tx() as c:  # a queued job whose study is no longer READY (a crash between two writes)
        c.execute("UPDATE studies SET state = 'RECEIVING' WHERE id = ?", (r.study_id,))
    assert tracker.claim_next_job() is None
    assert storage.query_one("SELECT state, reason FROM jobs")[:] == ("CANCELLED",
                                                                      "study changed before the job started")


def test_incomplete_after_the_maximum_wait(storage, clock, series_check):
    ended: list[Unprocessed] = []
    tracker = make_tracker(storage, clock, on_unprocessed=ended.append)
    series_check.reason = "no attenuation-corrected PET series"
    r = receive(tracker, storage, header("1"))
    clock.advance(60)
    assert tracker.scan() == []
    assert series_check.calls == 1
    study = tracker.study(r.study_id)
    assert (study["state"], study["checked_count"], study["check_reason"]) == (
        RECEIVING, 1, "no attenuation-corrected PET series")
    clock.advance(1000)
    assert tracker.scan() == []
    assert series_check.calls == 1  # same files: the remembered answer is used
    assert ended == []
    clock.advance(3600 - 1060)
    assert tracker.scan() == []
    why = "no attenuation-corrected PET series (after waiting 3600 s)"
    study = tracker.study(r.study_id)
    assert (study["state"], study["reason"], study["updated"]) == (StudyState.INCOMPLETE, why, clock.now)
    assert ended == [Unprocessed(r.study_id, STUDY, "ACC1", 1, StudyState.INCOMPLETE, f"incomplete: {why}")]
    assert storage.query_one("SELECT kind, message FROM errors")[:] == ("incomplete", why)
    assert jobs(storage, r.study_id) == []
    tracker.scan()
    assert len(ended) == 1  # ended once


def test_only_ignored_instances_end_incomplete_without_a_series_check(storage, clock, tracker, series_check):
    r = receive(tracker, storage, header("1", "SR", SR), kept=False)
    clock.advance(3600)
    tracker.scan()
    assert tracker.study(r.study_id)["reason"] == "no CT or PET images received (after waiting 3600 s)"
    assert series_check.calls == 0


def test_restart_requeues_a_running_job(tmp_path, clock, series_check):
    storage = Storage(tmp_path / "index.sqlite", tmp_path / "spool", fsync=False)
    tracker = make_tracker(storage, clock)
    r = queue_study(tracker, storage, clock)
    job = tracker.claim_next_job()
    storage.close()  # the node dies with the job RUNNING

    storage = Storage(tmp_path / "index.sqlite", tmp_path / "spool", fsync=False)
    try:
        clock.advance(5)
        ended: list[Unprocessed] = []
        tracker = make_tracker(storage, clock, on_unprocessed=ended.append)
        assert tracker.study(r.study_id)["state"] == RUNNING
        assert tracker.requeue_interrupted(max_restarts=1) == 1
        assert tracker.study(r.study_id)["state"] == READY
        row = storage.query_one("SELECT state, started, reason FROM jobs WHERE id = ?", (job.id,))
        assert row[:] == ("QUEUED", None, "re-queued at start-up (was RUNNING)")
        again = tracker.claim_next_job()
        assert (again.id, again.attempts) == (job.id, 2)
        assert tracker.requeue_interrupted(max_restarts=1) == 0  # attempt 2 > 1 restart: FAILED
        study = tracker.study(r.study_id)
        assert study["state"] == FAILED and "not retried (worker.max_restarts is 1)" in study["reason"]
        assert storage.query_one("SELECT state FROM jobs WHERE id = ?", (job.id,))[0] == "FAILED"
        assert [(u.study_id, u.version, u.state) for u in ended] == [(r.study_id, 1, FAILED)]
    finally:
        storage.close()


def test_restart_gives_a_running_study_without_a_job_a_new_one(storage, clock, tracker, series_check):
    r = receive(tracker, storage, header("1"))
    with storage.tx() as c:  # RUNNING with no live job (a crash between two writes)
        c.execute("UPDATE studies SET state = 'RUNNING' WHERE id = ?", (r.study_id,))
    assert tracker.requeue_interrupted(max_restarts=1) == 1
    assert tracker.study(r.study_id)["state"] == READY
    assert jobs(storage, r.study_id) == [(1, JobState.QUEUED)]


def test_requeue_after_shutdown_and_reprocess(storage, clock, tracker, series_check):
    r = queue_study(tracker, storage, clock)
    job = tracker.claim_next_job()
    assert tracker.reprocess(r.study_id) is False  # RUNNING already
    tracker.requeue(job, "node stopped while the job ran")
    assert tracker.study(r.study_id)["state"] == READY
    job = tracker.claim_next_job()
    tracker.finish_job(job, FAILED, "crashed", None)
    assert tracker.reprocess(r.study_id) is True
    study = tracker.study(r.study_id)
    assert (study["state"], study["version"], study["reason"]) == (READY, 2, None)
    assert jobs(storage, r.study_id) == [(1, JobState.FAILED), (2, JobState.QUEUED)]
    with pytest.raises(KeyError):
        tracker.reprocess(999)
    assert tracker.study_by_uid(STUDY)["id"] == r.study_id
