"""Operations: no PHI at INFO, status, metrics, retention, reprocess."""

from __future__ import annotations

import logging
import time
import urllib.error
import urllib.request

import pydicom
import pytest

from dicomnode.app.commands import reprocess, status
from dicomnode.index.studies import READY, RECEIVING
from tests.peers import free_port
from tests.node_fixtures import (make_config, running_node, small_study, storescu, study_row,  # noqa: F401
                                      wait_for, write_config)

pytestmark = pytest.mark.network


def test_no_phi_and_no_uids_in_logs_at_info(tmp_path, small_study, caplog):
    """INFO and above name studies by index number; UIDs and accession appear at DEBUG only."""
    src = tmp_path / "phi"
    src.mkdir()
    for i, p in enumerate(sorted((small_study.out_dir / "dicom").rglob("*.dcm"))):
        ds = pydicom.dcmread(p)
        ds.PatientName = "Doe^Jane"
        ds.PatientID = "MRN-445566"
        ds.PatientBirthDate = "19510203"
        ds.AccessionNumber = "ACC778899"
        ds.save_as(src / f"{i:04d}.dcm")
    study_uid = small_study.truth["dicom"]["study_instance_uid"]
    cfg = make_config(tmp_path, {"logging": {"level": "INFO"}, "studies": {"scan_interval_seconds": 0.2}})
    caplog.set_level(logging.DEBUG)
    with running_node(cfg) as node:
        assert storescu(src, node.port).returncode == 0
        wait_for(lambda: (r := study_row(node, study_uid)) and r["state"] == READY, 20, what="READY")
        assert storescu(src, node.port, calling_aet="INTRUDER").returncode != 0
    info = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    debug = [r.getMessage() for r in caplog.records if r.levelno < logging.INFO]
    assert any("study #1" in m for m in info)
    for secret in ("Doe", "Jane", "MRN-445566", "19510203", "ACC778899", study_uid):
        assert not [m for m in info if secret in m], secret
    assert any(study_uid in m for m in debug) and any("ACC778899" in m for m in debug)


def test_status_reports_states_queue_and_errors(tmp_path, small_study):
    path = write_config(tmp_path)
    from dicomnode.app.config import load_config

    cfg = load_config(path, environ={})
    assert "no index" in status(path)["error"]
    uid = small_study.truth["dicom"]["study_instance_uid"]
    with running_node(cfg) as node:
        assert storescu(small_study.out_dir / "dicom" / "ct", node.port).returncode == 0
        report = status(path)  # from another connection, while the node runs
        assert report["node"]["running"] is True and report["node"]["port"] == node.port  # the port in use
        assert report["node"]["port"] != cfg.node.port and report["node"]["uptime_s"] >= 0
        assert report["studies"][RECEIVING] == 1
        (active,) = report["active"]
        assert active["study_uid"] == uid and active["instances"] == 89 and active["series"] == 1
        row = study_row(node, uid)
        node.tracker.scan(now=row["first_received"] + cfg.studies.max_wait_seconds + 1)
    report = status(path)
    assert report["node"]["running"] is False and "not running" in report["node"]["note"]
    assert report["studies"]["INCOMPLETE"] == 1 and report["active"] == []
    assert "no PET" in report["recent"][0]["reason"]
    assert report["last_errors"][0]["kind"] == "incomplete"
    assert report["counters"]["instances_received"] == 89
    assert report["queue"] == {"queued": 0, "running": []}

    result = reprocess(path, uid)  # the operator asks for it anyway: a new version, queued
    assert result == {"study": 1, "queued": True, "state": READY, "version": 2}
    assert status(path)["queue"]["queued"] == 1


def test_metrics_endpoint(tmp_path, small_study):
    port = free_port()
    cfg = make_config(tmp_path, {"metrics": {"port": port}})
    with running_node(cfg) as node:
        assert storescu(small_study.out_dir / "dicom" / "pet", node.port).returncode == 0
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            text = r.read().decode()
    assert "nodestage_instances_received_total 89.0" in text
    assert 'nodestage_studies{state="RECEIVING"} 1.0' in text
    assert "nodestage_send_failures_total 0.0" in text
    assert "# TYPE nodestage_jobs_done_total counter" in text


def _get(url: str) -> tuple[int, dict]:
    import json

    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_health_and_readiness(tmp_path):
    port = free_port()
    cfg = make_config(tmp_path, {"metrics": {"port": port}, "worker": {"concurrency": 1}})
    with running_node(cfg):
        assert _get(f"http://127.0.0.1:{port}/healthz") == (200, {"alive": True})
        code, ready = _get(f"http://127.0.0.1:{port}/readyz")
        assert code == 200 and ready["ready"], ready
        assert {c["name"] for c in ready["checks"]} >= {"database", "disk", "worker", "anatomy: classical"}


def test_readiness_turns_unready_below_the_disk_watermark_and_without_weights(tmp_path):
    """Free disk under storage.min_free_mb (the node would refuse instances) and missing nnU-Net weights."""
    port = free_port()
    cfg = make_config(tmp_path, {"metrics": {"port": port}, "storage": {"min_free_mb": 1e12},
                                 "pipeline": {"lesions": {"backend": "nnunet",
                                                          "nnunet": {"model_dir": str(tmp_path / "none")}}}})
    with running_node(cfg):
        code, ready = _get(f"http://127.0.0.1:{port}/readyz")
    assert code == 503 and not ready["ready"]
    failed = {c["name"]: c["detail"] for c in ready["checks"] if not c["ok"]}
    assert "watermark" in failed["disk"] and "nnU-Net model folder" in failed["lesions: nnunet"]


def test_retention_removes_only_finished_studies(tmp_path, small_study):
    cfg = make_config(tmp_path, {"storage": {"retention": {"spool_days": 1, "archive_days": 2}}})
    uid = small_study.truth["dicom"]["study_instance_uid"]
    with running_node(cfg) as node:
        assert storescu(small_study.out_dir / "dicom" / "ct", node.port).returncode == 0
        later = time.time() + 10 * 86400
        assert node.storage.apply_retention(cfg.storage.archive_dir, 1, 2, now=later) == {"spool": 0, "archive": 0}
        assert len(list(cfg.storage.spool_dir.rglob("*.dcm"))) == 89  # still RECEIVING: untouched
        row = study_row(node, uid)
        node.tracker.scan(now=row["first_received"] + cfg.studies.max_wait_seconds + 1)
        (cfg.storage.archive_dir / uid / "v1").mkdir(parents=True)
        done = node.storage.apply_retention(cfg.storage.archive_dir, 1, 2, now=later)
        assert done == {"spool": 1, "archive": 1}
        assert not list(cfg.storage.spool_dir.rglob("*.dcm"))
        assert not (cfg.storage.archive_dir / uid).exists()
        assert study_row(node, uid)["purged"] == 1
        assert node.storage.query_one("SELECT COUNT(*) FROM instances")[0] == 0


def test_status_needs_no_allow_list(tmp_path):
    """Issue 15: `status` with no config stopped on "allowed_calling_aets is empty", a setting it does not use."""
    import os

    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        report = status(None)
    finally:
        os.chdir(cwd)
    assert report["node"]["running"] is False and "no index" in report["error"]


def test_everything_the_node_writes_is_0640_or_0750_whatever_the_umask(tmp_path, small_study):
    """Issue 13: patient data must not be world-readable because the service started with umask 0."""
    import os
    import stat

    cfg = make_config(tmp_path, {"worker": {"concurrency": 1},
                                 "studies": {"stability_seconds": 1.0, "guard_seconds": 0.2,
                                             "scan_interval_seconds": 0.2}})
    uid = small_study.truth["dicom"]["study_instance_uid"]
    before = os.umask(0)
    try:
        with running_node(cfg) as node:
            assert storescu(small_study.out_dir / "dicom", node.port).returncode == 0
            wait_for(lambda: (r := study_row(node, uid)) and r["state"] in ("DONE", "FAILED") and r, 120,
                     what="the study to finish")
    finally:
        os.umask(before)
    written = [p for p in (tmp_path / "var").rglob("*")]
    assert len(written) > 100 and any(p.name == "result.json" for p in written)
    for p in written:
        mode = stat.S_IMODE(p.stat().st_mode)
        assert mode & 0o027 == 0, f"{p.relative_to(tmp_path)}: {oct(mode)}"
