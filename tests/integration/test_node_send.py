"""Sending results to a real PACS (Orthanc): one association, statuses, outbox retries, silent mode."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from dicomnode.app.commands import status
from dicomnode.index.studies import DONE
from dicomnode.send.ledger import LEDGER_COLUMNS, append_ledger, ledger_row, read_ledger
from dicomnode.send.outbox import Outbox
from dicomnode.send.scu import SendError, echo, send_files
from tests.peers import free_port, stop_orthanc
from tests.node_fixtures import (make_config, orthanc_instances, running_node, small_study,  # noqa: F401
                                      start_orthanc_on, wait_for, write_config)

pytestmark = pytest.mark.network

SEG, SR, SC = "1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.88.34", "1.2.840.10008.5.1.4.1.1.7"


def make_outputs(study, out: Path) -> list[Path]:
    """Small real SEG (BINARY), Comprehensive 3D SR (TID 1500) and Secondary Capture on the phantom's CT."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    out.mkdir(parents=True, exist_ok=True)
    ct = [pydicom.dcmread(p) for p in sorted((study.out_dir / "dicom" / "ct").glob("*.dcm"))[40:43]]
    ct.sort(key=lambda d: float(d.ImagePositionPatient[2]))
    mask = np.zeros((3, ct[0].Rows, ct[0].Columns), bool)
    mask[1, 50:60, 50:60] = True
    common = dict(manufacturer="nodestage-test")
    seg = hd.seg.Segmentation(
        source_images=ct, pixel_array=mask, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[hd.seg.SegmentDescription(
            segment_number=1, segment_label="Node 1 (4R)",
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=codes.SCT.Tumor, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL)],
        series_instance_uid=generate_uid(), series_number=9000, sop_instance_uid=generate_uid(), instance_number=1,
        manufacturer_model_name="test", software_versions="0", device_serial_number="0", **common)
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier="Node 1 (4R)"),
        measurements=[hd.sr.Measurement(name=codes.SCT.Diameter, value=12.0, unit=codes.UCUM.Millimeter)])
    observer = hd.sr.ObservationContext(observer_person_context=hd.sr.ObserverContext(
        observer_type=codes.DCM.Person,
        observer_identifying_attributes=hd.sr.PersonObserverIdentifyingAttributes(name="Test^Observer")))
    report = hd.sr.MeasurementReport(observation_context=observer,
                                     procedure_reported=hd.sr.CodedConcept("44139-4", "LN", "PET CT"),
                                     imaging_measurements=[group])
    sr = hd.sr.Comprehensive3DSR(evidence=ct, content=report, series_instance_uid=generate_uid(), series_number=9001,
                                 sop_instance_uid=generate_uid(), instance_number=1, **common)
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=ct[0], pixel_array=np.zeros((64, 64, 3), np.uint8), photometric_interpretation="RGB",
        bits_allocated=8, coordinate_system="PATIENT", series_instance_uid=generate_uid(),
        sop_instance_uid=generate_uid(), series_number=9002, instance_number=1, patient_orientation=("L", "P"),
        **common)
    paths = []
    for name, ds in (("seg", seg), ("sr", sr), ("summary", sc)):
        ds.save_as(out / f"{name}.dcm")
        paths.append(out / f"{name}.dcm")
    return paths


@pytest.fixture(scope="module")
def outputs(small_study, tmp_path_factory):
    return make_outputs(small_study, tmp_path_factory.mktemp("outputs"))


def _classes_in(orthanc) -> list[str]:
    return sorted(t["SOPClassUID"] for t in orthanc_instances(orthanc))


def test_send_seg_sr_sc_on_one_association_to_orthanc(outputs, orthanc, small_study):
    statuses = send_files(outputs, orthanc.aet, "127.0.0.1", orthanc.dicom_port, "NODESTAGE")
    assert statuses == [0, 0, 0]
    tags = orthanc_instances(orthanc)
    assert sorted(t["SOPClassUID"] for t in tags) == sorted([SEG, SR, SC])
    assert {t["StudyInstanceUID"] for t in tags} == {small_study.truth["dicom"]["study_instance_uid"]}
    assert len(orthanc.get("/studies")) == 1  # in the same study as the source


def test_send_errors_are_one_line_reasons(outputs, tmp_path):
    with pytest.raises(SendError, match="cannot connect"):
        send_files(outputs, "NOBODY", "127.0.0.1", free_port(), "NODESTAGE")
    broken = tmp_path / "broken.dcm"
    broken.write_bytes(b"not dicom")
    with pytest.raises(SendError, match="cannot read output"):
        send_files([broken], "NOBODY", "127.0.0.1", free_port(), "NODESTAGE")


def test_outbox_delivers_in_clinical_mode(outputs, orthanc, tmp_path):
    cfg = make_config(tmp_path, {"mode": "clinical", "destinations": [
        {"name": "pacs", "ae_title": orthanc.aet, "host": "127.0.0.1", "port": orthanc.dicom_port}]})
    with running_node(cfg) as node:
        ids = node.outbox.enqueue(None, _fake_study(node), 1, outputs)
        assert len(ids) == 1
        wait_for(lambda: node.storage.query_one("SELECT state FROM sends WHERE id = ?", (ids[0],))["state"] == "DONE",
                 20, what="send DONE")
    assert _classes_in(orthanc) == sorted([SEG, SR, SC])


def _fake_study(node) -> int:
    """A study row for sends to point at (the outbox needs no received instances)."""
    import time

    now = time.time()
    with node.storage.tx() as c:
        cur = c.execute("INSERT INTO studies(study_uid, state, version, first_received, last_received, created, "
                        "updated) VALUES (?, ?, 1, ?, ?, ?, ?)", (generate_uid(), DONE, now, now, now, now))
        return cur.lastrowid


def test_destination_down_retries_then_failed_send_visible_in_status(outputs, tmp_path):
    dead = free_port()
    path = write_config(tmp_path, {"mode": "clinical", "destinations": [
        {"name": "pacs", "ae_title": "ORTHANC", "host": "127.0.0.1", "port": dead}],
        "retry": {"max_attempts": 3, "initial_delay_seconds": 0.1, "scan_interval_seconds": 0.1}})
    from dicomnode.app.config import load_config

    cfg = load_config(path, environ={})
    with running_node(cfg) as node:
        (send_id,) = node.outbox.enqueue(None, _fake_study(node), 1, outputs)
        row = wait_for(lambda: (r := node.storage.query_one("SELECT * FROM sends WHERE id = ?", (send_id,)))
                       and r["state"] == "FAILED_SEND" and r, 30, what="FAILED_SEND")
        assert row["attempts"] == 3
        assert "cannot connect" in row["last_error"]
    report = status(path)
    assert report["sends"]["FAILED_SEND"] == 1
    assert report["failed_sends"][0]["destination"] == "pacs"
    assert "cannot connect" in report["failed_sends"][0]["last_error"]
    assert any("FAILED_SEND" in e["message"] for e in report["last_errors"])


def test_backoff_grows_to_the_maximum(tmp_path):
    cfg = make_config(tmp_path, {"retry": {"initial_delay_seconds": 10, "backoff_factor": 2,
                                           "max_delay_seconds": 50}})
    outbox = Outbox(cfg, storage=None)  # delay() needs no index
    assert [outbox.delay(a) for a in (1, 2, 3, 4, 5)] == [10, 20, 40, 50, 50]


def test_pacs_down_then_up_across_a_restart_the_outbox_delivers(outputs, tmp_path):
    port = free_port()
    overrides = {"mode": "clinical", "destinations": [
        {"name": "pacs", "ae_title": "ORTHANC", "host": "127.0.0.1", "port": port}],
        "retry": {"max_attempts": 50, "initial_delay_seconds": 0.2, "backoff_factor": 1, "scan_interval_seconds": 0.1}}
    cfg = make_config(tmp_path, overrides)
    with running_node(cfg) as node:
        (send_id,) = node.outbox.enqueue(None, _fake_study(node), 1, outputs)
        wait_for(lambda: node.storage.query_one("SELECT attempts FROM sends WHERE id = ?", (send_id,))[0] >= 2, 20,
                 what="two failed attempts")
    peer = start_orthanc_on(tmp_path / "orthanc", port)  # the PACS comes back; the node restarts
    try:
        with running_node(cfg) as node:
            wait_for(lambda: node.storage.query_one("SELECT state FROM sends WHERE id = ?", (send_id,))[0] == "DONE",
                     30, what="the outbox to deliver")
        assert _classes_in(peer) == sorted([SEG, SR, SC])
    finally:
        stop_orthanc(peer)


def test_silent_mode_sends_nothing_clinical_but_the_research_destination_receives(outputs, orthanc, tmp_path):
    research_port = free_port()
    research = start_orthanc_on(tmp_path / "research", research_port)
    try:
        cfg = make_config(tmp_path, {
            "mode": "silent",
            "destinations": [{"name": "pacs", "ae_title": orthanc.aet, "host": "127.0.0.1",
                              "port": orthanc.dicom_port}],
            "research_destination": {"name": "research", "ae_title": "ORTHANC", "host": "127.0.0.1",
                                     "port": research_port}})
        with running_node(cfg) as node:
            assert [(d.name, role) for d, role in node.outbox.targets()] == [("research", "research")]
            ids = node.outbox.enqueue(None, _fake_study(node), 1, outputs)
            assert len(ids) == 1
            wait_for(lambda: node.storage.query_one("SELECT state FROM sends WHERE id = ?", (ids[0],))[0] == "DONE",
                     20, what="research send")
        assert _classes_in(research) == sorted([SEG, SR, SC])
        assert orthanc.get("/instances") == []
    finally:
        stop_orthanc(research)


def test_ledger_rows(tmp_path):
    result = {"study_instance_uid": "1.2.3", "accession_number": "A1", "n_tnm8": "N2", "n_tnm9": "N2b",
              "involved_stations": ["4R", "7"], "primary_side": "right",
              "backends": {"anatomy": {"name": "classical", "version": "1"}, "lesions": {"name": "suv", "version": "2"}},
              "timings_s": {"total": 12.5}, "outputs": {"seg": "/x/seg.dcm"}}
    ledger = tmp_path / "ledger.csv"
    append_ledger(ledger, ledger_row(result, 1, tmp_path / "result.json"))
    append_ledger(ledger, ledger_row({**result, "n_tnm8": "N0", "n_tnm9": "N0", "involved_stations": []}, 2,
                                     tmp_path / "result.json"))
    rows = read_ledger(ledger)
    assert list(rows[0]) == LEDGER_COLUMNS
    assert [(r["version"], r["n_tnm8"], r["n_tnm9"], r["involved_stations"]) for r in rows] == [
        ("1", "N2", "N2b", "4R;7"), ("2", "N0", "N0", "")]
    assert json.loads(rows[0]["backends"]) == {"anatomy": "classical 1", "lesions": "suv 2"}
    assert json.loads(rows[0]["timings_s"]) == {"total": 12.5}
    assert ledger.read_text().count("study_instance_uid") == 1


def test_every_c_store_status_is_checked(outputs, tmp_path):
    """A peer answering 0xA700 (our own node, below its disk watermark) or rejecting us fails the send."""
    import shutil

    free_mb = shutil.disk_usage(tmp_path).free / 2**20
    cfg = make_config(tmp_path, {"storage": {"min_free_mb": free_mb * 4},
                                 "security": {"allow_any_calling_aet": False}})
    with running_node(cfg) as node:
        with pytest.raises(SendError, match="status 0xA700"):
            send_files(outputs, "NODESTAGE", "127.0.0.1", node.port, "PYNETDICOM")
        with pytest.raises(SendError, match="association rejected"):
            send_files(outputs, "NODESTAGE", "127.0.0.1", node.port, "UNKNOWNAE")


def test_destinations_are_echoed_at_start_up_and_logged(orthanc, tmp_path, caplog):
    import logging

    caplog.set_level(logging.INFO, logger="dicomnode")
    cfg = make_config(tmp_path, {"mode": "clinical", "send": {"echo_at_startup": True}, "destinations": [
        {"name": "pacs", "ae_title": orthanc.aet, "host": "127.0.0.1", "port": orthanc.dicom_port},
        {"name": "backup", "ae_title": "BACKUP", "host": "127.0.0.1", "port": free_port()}]})
    with running_node(cfg):
        wait_for(lambda: sum("C-ECHO" in r.getMessage() for r in caplog.records) >= 2, 20, what="two echo lines")
    lines = [r.getMessage() for r in caplog.records if "C-ECHO" in r.getMessage()]
    assert any(line.startswith("destination pacs") and "C-ECHO ok" in line for line in lines)
    assert any(line.startswith("destination backup") and "C-ECHO failed: cannot connect" in line for line in lines)


def test_silent_mode_start_up_contacts_no_clinical_destination_and_logs_no_error(tmp_path, caplog):
    """Issue 15: every silent start logged pynetdicom's ERROR "TCP Initialisation Error" for the example PACS."""
    import logging

    caplog.set_level(logging.INFO)
    cfg = make_config(tmp_path, {"mode": "silent", "logging": {"level": "INFO"}, "send": {"echo_at_startup": True},
                                 "destinations": [{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1",
                                                   "port": free_port()}]})
    with running_node(cfg):
        wait_for(lambda: any("not contacted" in r.getMessage() for r in caplog.records), 20, what="the echo line")
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert not any("C-ECHO" in r.getMessage() for r in caplog.records)


def test_a_rejection_is_reported_as_a_rejection_under_contention(tmp_path):
    """pynetdicom's reactor closes the socket on A-ASSOCIATE-RJ; when it wins the race with
    associate()'s own check, pynetdicom says 'aborted'. Busy threads make that race likely."""
    import threading

    cfg = make_config(tmp_path, {"security": {"allow_any_calling_aet": False}})
    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():
            sum(range(2000))

    spinners = [threading.Thread(target=spin, daemon=True) for _ in range(4)]
    for t in spinners:
        t.start()
    messages = []
    try:
        with running_node(cfg) as node:
            for _ in range(60):  # the old code failed about 3 in 60 here
                result = echo("NODESTAGE", "127.0.0.1", node.port, "UNKNOWNAE")
                assert not result.ok
                messages.append(result.detail)
    finally:
        stop.set()
    assert all("association rejected" in m and "alling AE" in m for m in messages), messages
