"""End to end: Orthanc (the PACS) routes a study to the node, the pipeline runs, results go back to Orthanc.

These need `pipeline.run.run_study` to stage the study; they are slow (the whole pipeline runs).
"""

from __future__ import annotations

import io
import json
import logging
import time
import urllib.request
from pathlib import Path

import pydicom
import pytest

from dicomnode.index.studies import DONE
from dicomnode.send.ledger import read_ledger
from tests.peers import free_port, start_orthanc, stop_orthanc, storescu as storescu_to
from tests.node_fixtures import make_config, running_node, study_row, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.network]

SEG, SR, SC = "1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.88.34", "1.2.840.10008.5.1.4.1.1.7"
FAST = {"studies": {"stability_seconds": 3, "guard_seconds": 0.5, "scan_interval_seconds": 0.3},
        "worker": {"concurrency": 1, "timeout_seconds": 900},
        "retry": {"initial_delay_seconds": 1, "scan_interval_seconds": 0.5}}


def _node_and_pacs(tmp_path: Path, mode: str, extra: dict | None = None):
    node_port = free_port()
    pacs = start_orthanc(tmp_path / "orthanc", modalities={"nodestage": ["NODESTAGE", "127.0.0.1", node_port]})
    cfg = make_config(tmp_path / "node", {
        **FAST, **(extra or {}), "node": {"port": node_port}, "mode": mode,
        "destinations": [{"name": "pacs", "ae_title": pacs.aet, "host": "127.0.0.1", "port": pacs.dicom_port}]})
    return pacs, cfg


def _route(pacs, folder: Path, extra: list[str] | None = None) -> str:
    """Upload a folder to Orthanc, then have Orthanc send the study to the node; returns Orthanc's study id."""
    r = storescu_to(folder, pacs.dicom_port, pacs.aet, extra=extra)
    assert r.returncode == 0, r.stderr[-2000:]
    (study_id,) = pacs.get("/studies")
    reply = pacs.post("/modalities/nodestage/store", {"Resources": [study_id], "Synchronous": True})
    assert reply is None or "FailedInstancesCount" not in reply or reply["FailedInstancesCount"] == 0, reply
    return study_id


def _sr_strings(ds) -> set[str]:
    found = set()

    def walk(items):
        for item in items:
            for kw in ("TextValue", "CodeMeaning", "CodeValue"):
                if kw in item:
                    found.add(str(item.get(kw)))
            for seq in ("ConceptCodeSequence", "ConceptNameCodeSequence", "ContentSequence"):
                if seq in item:
                    walk(item[seq])

    walk([ds])
    return found


def _outputs_in(pacs, study_uid: str) -> dict[str, list]:
    by_class: dict[str, list] = {}
    for iid in pacs.get("/instances"):
        tags = pacs.get(f"/instances/{iid}/simplified-tags")
        if tags["StudyInstanceUID"] == study_uid and tags["SOPClassUID"] in (SEG, SR, SC):
            by_class.setdefault(tags["SOPClassUID"], []).append(iid)
    return by_class


def test_orthanc_round_trip_phantom(tmp_path):
    from pipeline import phantom

    study = phantom.generate(tmp_path / "study", "n2b_right_4r_7", "small", 0)
    truth = study.truth
    uid = truth["dicom"]["study_instance_uid"]
    pacs, cfg = _node_and_pacs(tmp_path, "clinical")
    try:
        with running_node(cfg) as node:
            started = time.monotonic()
            _route(pacs, study.out_dir / "dicom")
            row = wait_for(lambda: (r := study_row(node, uid)) and r["state"] in (DONE, "FAILED", "INCOMPLETE")
                           and r, 600, interval=0.5, what="the study to finish")
            assert row["state"] == DONE, row["reason"]
            outputs = wait_for(lambda: (o := _outputs_in(pacs, uid)) and len(o) == 3 and o, 120, interval=0.5,
                               what="SEG, SR and SC in Orthanc")
            elapsed = time.monotonic() - started
            result = json.loads((cfg.storage.archive_dir / uid / "v1" / "result.json").read_text())
        assert result["n_tnm8"] == truth["expected"]["n_tnm8"]
        assert result["n_tnm9"] == truth["expected"]["n_tnm9"]
        with urllib.request.urlopen(f"{pacs.url}/instances/{outputs[SR][0]}/file", timeout=30) as r:
            sr = pydicom.dcmread(io.BytesIO(r.read()))
        strings = _sr_strings(sr)
        assert truth["expected"]["n_tnm8"] in strings and truth["expected"]["n_tnm9"] in strings
        print(f"round trip {elapsed:.1f} s")
    finally:
        stop_orthanc(pacs)


def test_silent_mode_sends_nothing_and_writes_the_ledger(tmp_path):
    from pipeline import phantom

    study = phantom.generate(tmp_path / "study", "n0_right_upper", "small", 0)
    truth = study.truth
    uid = truth["dicom"]["study_instance_uid"]
    pacs, cfg = _node_and_pacs(tmp_path, "silent")
    try:
        with running_node(cfg) as node:
            _route(pacs, study.out_dir / "dicom")
            row = wait_for(lambda: (r := study_row(node, uid)) and r["state"] in (DONE, "FAILED", "INCOMPLETE")
                           and r, 600, interval=0.5, what="the study to finish")
            assert row["state"] == DONE, row["reason"]
            time.sleep(2)  # the outbox would have sent by now
            assert node.storage.query_one("SELECT COUNT(*) FROM sends")[0] == 0
        assert _outputs_in(pacs, uid) == {}
        assert len(pacs.get("/instances")) == truth["dicom"]["ct_instances"] + truth["dicom"]["pet_instances"]
        (row,) = read_ledger(cfg.storage.ledger)
        assert row["study_instance_uid"] == uid and row["version"] == "1"
        assert (row["n_tnm8"], row["n_tnm9"]) == (truth["expected"]["n_tnm8"], truth["expected"]["n_tnm9"])
        assert json.loads(row["backends"]) and json.loads(row["timings_s"])
        assert all(Path(p).is_file() for p in json.loads(row["outputs"]).values())
    finally:
        stop_orthanc(pacs)


def test_real_study_routed_whole(tmp_path, shared_data, caplog):
    """ACRIN-NSCLC-FDG-PET 042: 412 instances (scout, CT, AC and NAC PET, SEG, RWV) routed by Orthanc.

    Privacy: every log line the node and its pipeline wrote above DEBUG is free of the patient's
    name, ID and birth date and of the study's, series' and instances' UIDs."""
    from pipeline.series import scan_study, select_series

    caplog.set_level(logging.INFO)

    folder = shared_data / "petct" / "acrin-nsclc-fdg-pet-042"
    n_files = sum(1 for p in folder.rglob("*") if p.is_file())
    expected = select_series(scan_study(folder))
    pacs, cfg = _node_and_pacs(tmp_path, "clinical", {"logging": {"level": "INFO"}})
    try:
        with running_node(cfg) as node:
            _route(pacs, folder, extra=["-R"])
            uid = str(pydicom.dcmread(expected.ct.files[0], stop_before_pixels=True).StudyInstanceUID)
            accepted = node.storage.query_one("SELECT COUNT(*) FROM instances")[0]
            assert accepted == n_files  # every instance accepted (CT/PET kept, the rest ignored)
            row = wait_for(lambda: (r := study_row(node, uid)) and r["state"] in (DONE, "FAILED", "INCOMPLETE")
                           and r, 900, interval=1, what="the study to finish")
            assert row["state"] == DONE, row["reason"]
            result = json.loads((cfg.storage.archive_dir / uid / "v1" / "result.json").read_text())
            assert result["ct_series_uid"] == expected.ct.series_instance_uid
            assert result["pet_series_uid"] == expected.pet.series_instance_uid
            wait_for(lambda: len(_outputs_in(pacs, uid)) == 3, 120, interval=1, what="results in Orthanc")
    finally:
        stop_orthanc(pacs)
    pipeline_log = (cfg.storage.archive_dir / uid / "v1" / "pipeline.log").read_text(errors="replace")
    lines = [r.getMessage() for r in caplog.records if r.levelno > logging.DEBUG]
    lines += [line for line in pipeline_log.splitlines() if " DEBUG " not in line]
    assert len(lines) > 5 and any("study staged" in line for line in lines)
    for leak in _identifiers(folder):
        leaked = [line.replace(leak, "<identifier>") for line in lines if leak in line]
        assert not leaked, f"an identifier reached the INFO logs: {leaked[:3]}"


def _identifiers(folder: Path) -> set[str]:
    """The patient's name, ID and birth date, and every study, series and instance UID of the study."""
    found: set[str] = set()
    for path in (p for p in folder.rglob("*") if p.is_file()):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        for kw in ("PatientName", "PatientID", "PatientBirthDate", "StudyInstanceUID", "SeriesInstanceUID",
                   "SOPInstanceUID", "AccessionNumber"):
            value = str(ds.get(kw, "") or "").strip()
            if len(value) >= 4:
                found.add(value)
    return found


@pytest.mark.parametrize("use_orthanc", [True, False], ids=["orthanc", "pynetdicom-pacs"])
def test_demo_runs_the_whole_flow(tmp_path, use_orthanc):
    from dicomnode.app.commands import demo
    from dicomnode.app.demo import run_demo

    lines: list[str] = []
    if use_orthanc:
        result = demo(out_dir=tmp_path / "demo", progress=lines.append)
    else:
        result = run_demo(out_dir=tmp_path / "demo", progress=lines.append, use_orthanc=False)
    assert result["state"] == "DONE", result["reason"]
    assert result["returned"] == ["SC", "SEG", "SR"]
    assert result["n_tnm8"] and result["n_tnm9"]
    assert Path(result["output_dir"], "result.json").is_file()
    text = "\n".join(lines)
    assert "N stage:" in text and "stopped the node and the PACS" in text
    if use_orthanc:
        assert "POST /modalities/nodestage/store" in text
