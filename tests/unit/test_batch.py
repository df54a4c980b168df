"""The pure parts of the scale-out work: archive walking, resume bookkeeping, references, commit, poison."""

from __future__ import annotations

import json
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from dicomnode.app.batch import (BatchProgress, finished_studies, find_studies, group_studies, ledger_row_for,
                                 study_input)
from dicomnode.run.run_request import (Manifest, ReferenceError_, RunRequest, commit, partial_dir, read_manifest,
                                       relocate_result_json, to_path, write_failure)
from dicomnode.send.ledger import append_ledger, ledger_failure_row

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


def write_dicom(path: Path, study_uid: str, accession: str = "ACC1") -> Path:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CT_IMAGE_STORAGE, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.AccessionNumber, ds.Modality = study_uid, accession, "CT"
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def test_find_studies_groups_by_study_uid_and_ignores_other_files(tmp_path):
    a, b = "1.2.3.1", "1.2.3.2"
    write_dicom(tmp_path / "p1" / "ct" / "1.dcm", a)
    write_dicom(tmp_path / "p1" / "pet" / "1.dcm", a)
    write_dicom(tmp_path / "p2" / "x" / "IM0001", b, "ACC2")  # no extension: still DICOM
    (tmp_path / "p2" / "notes.txt").write_text("not DICOM")
    (tmp_path / "out").mkdir()
    write_dicom(tmp_path / "out" / "results" / "seg.dcm", "9.9.9")  # the batch's own outputs are skipped
    studies = find_studies(tmp_path, exclude=tmp_path / "out")
    assert [(s.study_uid, s.accession, s.folder, len(s.files), s.mixed) for s in studies] == [
        (a, "ACC1", tmp_path / "p1", 2, False), (b, "ACC2", tmp_path / "p2" / "x", 1, False)]


def test_a_folder_that_mixes_studies_is_linked_apart(tmp_path):
    f1 = write_dicom(tmp_path / "dump" / "a.dcm", "1.2.3.1")
    f2 = write_dicom(tmp_path / "dump" / "b.dcm", "1.2.3.2")
    studies = group_studies([(f1, "1.2.3.1", ""), (f2, "1.2.3.2", "")])
    assert all(s.mixed for s in studies)
    linked = study_input(studies[0], tmp_path / "out")
    assert linked != tmp_path / "dump" and [p.stat().st_ino for p in linked.iterdir()] == [f1.stat().st_ino]


def test_finished_studies_are_the_ledger_rows_done_or_failed(tmp_path):
    ledger = tmp_path / "ledger.csv"
    assert finished_studies(ledger) == set()
    append_ledger(ledger, ledger_failure_row("1.2.3.1", "A", 1, "no PET series"))
    append_ledger(ledger, {"study_instance_uid": "1.2.3.2", "version": "1", "status": "done", "n_tnm8": "N0"})
    assert finished_studies(ledger) == {"1.2.3.1", "1.2.3.2"}


def test_progress_line_counts_and_rate():
    p = BatchProgress(total=10, skipped=2, started=100.0)
    p.done, p.failed = 3, 1
    assert p.remaining == 4
    assert p.line(now=100.0 + 3600) == "3 done, 1 failed, 4 remaining, 2 skipped (already in the ledger), 4.0 studies/h"


@pytest.mark.parametrize("ref", ["file:///srv/studies/a%20b", "/srv/studies/a b", "file://localhost/srv/studies/a b"])
def test_references_are_file_uris_or_absolute_paths(ref):
    assert to_path(ref) == Path("/srv/studies/a b")


@pytest.mark.parametrize("ref, why", [("s3://bucket/study", "s3:// references are not supported"),
                                      ("studies/a", "must be absolute"),
                                      ("file://pacs-host/srv/a", "on another host")])
def test_references_a_worker_cannot_open_are_refused_by_name(ref, why):
    with pytest.raises(ReferenceError_, match=why):
        to_path(ref)


def test_commit_makes_out_appear_complete_and_a_redelivery_reads_it(tmp_path):
    out = tmp_path / "results" / "study"
    out.mkdir(parents=True)  # an empty or interrupted <out> (no manifest) is replaced
    (out / "stale.txt").write_text("from an interrupted run")
    partial = partial_dir(out)
    (partial / "dicom").mkdir(parents=True)
    (partial / "dicom" / "seg.dcm").write_bytes(b"x")
    (partial / "result.json").write_text(json.dumps({"outputs": {"seg": str(partial / "dicom" / "seg.dcm")},
                                                     "note": str(partial) + "-not-a-child"}))
    assert read_manifest(out) is None
    relocate_result_json(partial, out)
    commit(partial, out, Manifest("s", 0, 1.5, str(out), ["dicom/seg.dcm", "result.json"]))
    assert not partial.exists() and not (out / "stale.txt").exists()
    manifest = read_manifest(out)
    assert manifest is not None and manifest.ok and manifest.files == ["dicom/seg.dcm", "result.json"]
    result = json.loads((out / "result.json").read_text())
    assert result["outputs"]["seg"] == str(out / "dicom" / "seg.dcm")
    assert result["note"] == str(partial) + "-not-a-child"  # only paths inside the partial folder move


def test_a_poison_refusal_is_a_complete_failed_result_with_its_reason(tmp_path):
    request = RunRequest("s", "file:///nowhere", (tmp_path / "out").as_uri(), "file:///nowhere.json", 60)
    write_failure(request, "poison study: delivered 4 times", deliveries=4)
    manifest = read_manifest(tmp_path / "out")
    assert manifest is not None and not manifest.ok and manifest.deliveries == 4
    assert (tmp_path / "out" / "pipeline.log").read_text() == "nodestage-reason: poison study: delivered 4 times\n"
    from dicomnode.app.batch import ArchiveStudy

    row = ledger_row_for(ArchiveStudy("1.2.3", "ACC", tmp_path, ()), manifest)
    assert (row["status"], row["failure_reason"]) == ("failed", "poison study: delivered 4 times")


def test_a_request_survives_the_broker_as_json():
    request = RunRequest("7", "file:///a", "file:///b", "file:///c.json", 60.0, "DEBUG", None, 2)
    assert RunRequest.from_message(json.loads(json.dumps(request.to_message()))) == request


def test_poison_reason_and_visibility_check():
    from dicomnode.run import celery_app  # the optional extra, installed by the Makefile's venv
    assert celery_app.poison_reason(3, 3) is None
    assert "delivered 4 times, more than max_deliveries 3" in celery_app.poison_reason(4, 3)
    with pytest.raises(ValueError, match="visibility_timeout"):
        celery_app.CelerySettings("redis://x", "redis://x", task_time_limit_s=3600, visibility_timeout_s=3600)
    assert celery_app.job_task_id(12) == "nodestage-job-12"

