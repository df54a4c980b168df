"""Study completeness and versions: quiet period, required series, early end, maximum wait, late instances.

Stability scans are run by hand with an explicit `now` (the node's own scan runs
every 1000 s in these configs), so the timing rules are tested exactly.
"""

from __future__ import annotations

from contextlib import contextmanager

import pydicom
import pytest
from pydicom.uid import generate_uid

from dicomnode.index.studies import INCOMPLETE, READY, RECEIVING, StudyTracker
from dicomnode.send.ledger import read_ledger
from tests.node_fixtures import (make_config, running_node, small_study, storescu,  # noqa: F401
                                      study_row)

pytestmark = pytest.mark.network

STABILITY, GUARD, MAX_WAIT = 30.0, 2.0, 300.0
TIMINGS = {"studies": {"stability_seconds": STABILITY, "guard_seconds": GUARD, "max_wait_seconds": MAX_WAIT}}


def _files(study, kind: str) -> list:
    return sorted((study.out_dir / "dicom" / kind).glob("*.dcm"))


def _uid(study) -> str:
    return study.truth["dicom"]["study_instance_uid"]


@contextmanager
def _node_after_sending(tmp_path, files, uid: str, timings: dict = TIMINGS):
    """A running node that has received `files` by C-STORE: yields it and the study's index row.

    Each test then runs the stability scans by hand from that row's times.
    """
    with running_node(make_config(tmp_path, timings)) as node:
        assert storescu(files, node.port).returncode == 0
        yield node, study_row(node, uid)


def test_ready_after_guard_when_every_expected_instance_is_in(tmp_path, small_study):
    uid = _uid(small_study)
    with _node_after_sending(tmp_path, small_study.out_dir / "dicom", uid) as (node, row):
        t = row["last_received"]
        assert StudyTracker.expected_all_in(node.tracker._series_counts(row["id"]))
        assert node.tracker.scan(now=t + GUARD - 0.5) == []
        assert study_row(node, uid)["state"] == RECEIVING
        assert node.tracker.scan(now=t + GUARD + 0.1) == [row["id"]]
        assert study_row(node, uid)["state"] == READY
        job = node.storage.query_one("SELECT * FROM jobs WHERE study_id = ?", (row["id"],))
        assert job["state"] == "QUEUED" and job["version"] == 1


def test_ready_only_after_the_quiet_period_when_counts_are_unknown(tmp_path, small_study):
    """A PET slice short of NumberOfSlices: the study waits the full quiet period, then goes
    READY (the pipeline can use the PET it has)."""
    uid = _uid(small_study)
    files = _files(small_study, "ct") + _files(small_study, "pet")[:-1]
    with _node_after_sending(tmp_path, files, uid) as (node, row):
        t = row["last_received"]
        assert not StudyTracker.expected_all_in(node.tracker._series_counts(row["id"]))
        assert node.tracker.scan(now=t + GUARD + 1) == []
        assert node.tracker.scan(now=t + STABILITY - 1) == []
        assert study_row(node, uid)["state"] == RECEIVING
        assert node.tracker.scan(now=t + STABILITY + 0.1) == [row["id"]]
        assert study_row(node, uid)["state"] == READY


def test_an_instance_arriving_while_ready_restarts_the_wait(tmp_path, small_study):
    uid = _uid(small_study)
    pet = _files(small_study, "pet")
    with _node_after_sending(tmp_path, _files(small_study, "ct") + pet[:-1], uid) as (node, row):
        assert node.tracker.scan(now=row["last_received"] + STABILITY + 1) == [row["id"]]
        assert storescu(pet[-1:], node.port).returncode == 0  # before the job started
        row = study_row(node, uid)
        assert (row["state"], row["version"]) == (RECEIVING, 1)
        jobs = node.storage.query("SELECT state FROM jobs WHERE study_id = ?", (row["id"],))
        assert [j["state"] for j in jobs] == ["CANCELLED"]
        assert node.tracker.scan(now=row["last_received"] + GUARD + 0.1) == [row["id"]]


def test_ct_only_ends_incomplete_after_max_wait_with_the_reason(tmp_path, small_study):
    uid = _uid(small_study)
    with _node_after_sending(tmp_path, _files(small_study, "ct"), uid) as (node, row):
        assert node.tracker.scan(now=row["last_received"] + STABILITY + 1) == []
        row = study_row(node, uid)
        assert row["state"] == RECEIVING and "no PET" in row["check_reason"]
        node.tracker.scan(now=row["first_received"] + MAX_WAIT + 1)
        row = study_row(node, uid)
        assert row["state"] == INCOMPLETE
        assert "no PET series" in row["reason"] and "after waiting" in row["reason"]
        assert node.storage.query_one("SELECT COUNT(*) FROM jobs")[0] == 0
    # Silent mode: the evaluation must count it as a failure of the node, not as a study it never saw.
    (ledger_row,) = read_ledger(node.config.storage.ledger)
    assert (ledger_row["study_instance_uid"], ledger_row["version"], ledger_row["status"]) == (uid, "1", "failed")
    assert ledger_row["failure_reason"].startswith("incomplete: ") and "no PET series" in ledger_row["failure_reason"]


def test_pet_without_ct_ends_incomplete_with_the_reason(tmp_path, small_study):
    uid = _uid(small_study)
    with _node_after_sending(tmp_path, _files(small_study, "pet"), uid) as (node, row):
        node.tracker.scan(now=row["first_received"] + MAX_WAIT + 1)
        row = study_row(node, uid)
        assert row["state"] == INCOMPLETE
        assert "no CT" in row["reason"]


def test_late_instances_reopen_the_study_as_a_new_version(tmp_path, small_study):
    """CT first, INCOMPLETE at max wait; the PET arrives late: version 2 is processed."""
    uid = _uid(small_study)
    with _node_after_sending(tmp_path, _files(small_study, "ct"), uid) as (node, row):
        node.tracker.scan(now=row["first_received"] + MAX_WAIT + 1)
        assert study_row(node, uid)["state"] == INCOMPLETE
        assert storescu(_files(small_study, "pet"), node.port).returncode == 0
        row = study_row(node, uid)
        assert (row["state"], row["version"]) == (RECEIVING, 2)
        assert row["reason"] is None
        assert node.tracker.scan(now=row["last_received"] + GUARD + 0.1) == [row["id"]]
        job = node.storage.query_one("SELECT * FROM jobs WHERE study_id = ?", (row["id"],))
        assert job["version"] == 2


@pytest.mark.parametrize("on_resend, expect_version", [("ignore", 1), ("new_version", 2)])
def test_resent_study_after_processing(tmp_path, small_study, on_resend, expect_version):
    """An unchanged resend is ignored (or versioned, as configured); a new instance always re-opens."""
    timings = {**TIMINGS, "studies": {**TIMINGS["studies"], "on_resend": on_resend}}
    uid = _uid(small_study)
    with _node_after_sending(tmp_path, small_study.out_dir / "dicom", uid, timings) as (node, row):
        node.tracker.scan(now=row["last_received"] + GUARD + 0.1)
        job = node.tracker.claim_next_job()
        node.tracker.finish_job(job, "DONE", None, None)
        assert study_row(node, uid)["state"] == "DONE"

        assert storescu(small_study.out_dir / "dicom", node.port).returncode == 0
        row = study_row(node, uid)
        assert row["version"] == expect_version
        assert row["state"] == ("DONE" if on_resend == "ignore" else RECEIVING)

        extra = pydicom.dcmread(_files(small_study, "ct")[0])
        extra.SOPInstanceUID = extra.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        extra_path = tmp_path / "late.dcm"
        extra.save_as(extra_path)
        if on_resend == "ignore":
            assert storescu([extra_path], node.port).returncode == 0
            row = study_row(node, uid)
            assert (row["state"], row["version"]) == (RECEIVING, 2)
            assert node.storage.query_one("SELECT COUNT(*) FROM instances WHERE kept = 1")[0] == 179


def test_completeness_reads_the_index_not_the_files(tmp_path, small_study, monkeypatch):
    """Each header is parsed once, at receive time (issue 13): the stability scan judges the series
    from the index's scan_info, so no file is read again, and a PET-less study is still refused."""
    import json

    import pipeline.series

    uid = _uid(small_study)
    with _node_after_sending(tmp_path, small_study.out_dir / "dicom", uid) as (node, row):
        stored = node.storage.query("SELECT scan_info FROM instances WHERE study_id = ?", (row["id"],))
        assert len(stored) == len(_files(small_study, "ct")) + len(_files(small_study, "pet"))
        assert all(json.loads(r["scan_info"])["position"] for r in stored)

        def no_file_reads(path):
            raise AssertionError(f"completeness read {path} again")

        monkeypatch.setattr(pipeline.series, "read_header", no_file_reads)
        assert node.tracker.scan(now=row["last_received"] + GUARD + 0.1) == [row["id"]]
        assert study_row(node, uid)["state"] == READY


def test_completeness_from_the_index_refuses_a_study_without_pet(tmp_path, small_study):
    uid = _uid(small_study)
    with _node_after_sending(tmp_path, _files(small_study, "ct"), uid) as (node, row):
        assert node.tracker.scan(now=row["last_received"] + STABILITY + 1) == []
        assert "no PET" in study_row(node, uid)["check_reason"]
