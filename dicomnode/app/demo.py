"""The demo: a PACS routes a PET/CT study to the node, and the results come back to the PACS.

`run_demo()` generates a phantom study (or takes any study folder), starts an
Orthanc PACS on loopback when Orthanc is installed (otherwise a pynetdicom
storage SCP stands in for it and the study is sent to the node directly), starts
the node, uploads the study to Orthanc and has Orthanc route it to the node with
``POST /modalities/nodestage/store``, waits until the SEG, SR and SC are back in
the PACS, and stops everything. `progress` receives one human line per step.
With `viewer=True` Orthanc runs with DICOMweb and, once the results are back, OHIF
(dicomnode.app.viewer) serves the study until Ctrl-C (SIGINT) or SIGTERM.
"""

from __future__ import annotations

import signal
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable

import pydicom

from dicomnode.app.config import NodeConfig
from dicomnode.app.orthanc import ORTHANC_BIN, Orthanc, OrthancError, free_port, start_orthanc
from dicomnode.index.db import FINISHED_STUDY_STATES, JobState, StudyState
from pipeline.job_result import JobResult

SEG, SR, SC = "1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.88.34", "1.2.840.10008.5.1.4.1.1.7"
OUTPUT_CLASSES = {SEG: "SEG", SR: "SR", SC: "SC"}


class DemoError(RuntimeError):
    """A step of the demo failed; the message says which."""


def start_pacs(workdir: Path, node_port: int, dicomweb: bool = False) -> Orthanc:
    """Orthanc as the demo's PACS, with the node as its modality `nodestage`."""
    try:
        return start_orthanc(workdir, {"nodestage": ["NODESTAGE", "127.0.0.1", node_port]}, dicomweb=dicomweb)
    except OrthancError as err:
        raise DemoError(str(err)) from None


class StoragePeer:
    """A pynetdicom storage SCP standing in for the PACS when Orthanc is not installed."""

    def __init__(self, folder: Path):
        from pynetdicom import AE, AllStoragePresentationContexts, evt

        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.received: list[tuple[str, str]] = []  # (study UID, SOP class)
        self.port = free_port()
        ae = AE(ae_title="DEMOPACS")
        for cx in AllStoragePresentationContexts:
            ae.add_supported_context(cx.abstract_syntax)

        def on_store(event):
            ds = event.dataset
            ds.file_meta = event.file_meta
            ds.save_as(folder / f"{ds.SOPInstanceUID}.dcm", enforce_file_format=True)
            self.received.append((str(ds.StudyInstanceUID), str(ds.SOPClassUID)))
            return 0x0000

        self.server = ae.start_server(("127.0.0.1", self.port), block=False,
                                      evt_handlers=[(evt.EVT_C_STORE, on_store)])

    def stop(self) -> None:
        self.server.shutdown()


def _node_config(root: Path, node_port: int, dest_ae: str, dest_port: int) -> NodeConfig:
    return NodeConfig.model_validate({
        "node": {"port": node_port, "ae_title": "NODESTAGE"},
        "security": {"allowed_calling_aets": ["ORTHANC", "DEMO"]},
        "storage": {"spool_dir": root / "spool", "archive_dir": root / "archive", "work_dir": root / "work",
                    "database": root / "nodestage.sqlite", "ledger": root / "ledger.csv", "min_free_mb": 50},
        "studies": {"stability_seconds": 5, "guard_seconds": 1, "scan_interval_seconds": 0.5},
        "worker": {"concurrency": 1, "timeout_seconds": 3600},
        "mode": "clinical",
        "destinations": [{"name": "pacs", "ae_title": dest_ae, "host": "127.0.0.1", "port": dest_port}],
        "retry": {"initial_delay_seconds": 2, "max_attempts": 5, "scan_interval_seconds": 0.5},
        "send": {"echo_at_startup": True},
        "logging": {"level": "WARNING"},
    })


def _send_to_node(files: list[Path], port: int) -> int:
    from pynetdicom import AE

    ae = AE(ae_title="DEMO")
    classes = {}
    for f in files:
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        classes.setdefault(str(ds.SOPClassUID), set()).add(str(ds.file_meta.TransferSyntaxUID))
    for sop_class, ts in list(classes.items())[:120]:
        ae.add_requested_context(sop_class, sorted(ts | {"1.2.840.10008.1.2.1"}))
    assoc = ae.associate("127.0.0.1", port, ae_title="NODESTAGE")
    if not assoc.is_established:
        raise DemoError("the node refused the demo sender's association")
    sent = 0
    try:
        for f in files:
            status = assoc.send_c_store(pydicom.dcmread(f))
            sent += bool(status and status.Status == 0)
    finally:
        assoc.release()
    return sent


def run_demo(study_dir: str | Path | None = None, case: str = "n2b_right_4r_7", out_dir: str | Path | None = None,
             progress: Callable[[str], None] = lambda line: None, timeout_s: float = 3600,
             use_orthanc: bool | None = None, viewer: bool = False) -> dict[str, Any]:
    """Run the whole flow once and return what happened (N stage, stations, where the outputs are).

    `viewer`: keep Orthanc up after the run and serve the study in OHIF until interrupted."""
    from dicomnode.app.node import Node

    if viewer:
        _check_viewer_tools()

    out = Path(out_dir or tempfile.mkdtemp(prefix="nodestage-demo-")).resolve()
    out.mkdir(parents=True, exist_ok=True)
    truth = None
    if study_dir is None:
        from pipeline import phantom

        progress(f"generating phantom study '{case}' ...")
        study = phantom.generate(out / "study", case, "small", 0)
        truth = study.truth
        study_dir = study.out_dir / "dicom"
    study_dir = Path(study_dir)
    files = sorted(p for p in study_dir.rglob("*") if p.is_file())
    if not files:
        raise DemoError(f"no files under {study_dir}")
    node_port = free_port()
    if use_orthanc is None:
        use_orthanc = Path(ORTHANC_BIN).exists()
    if viewer and not use_orthanc:
        raise DemoError("--viewer needs Orthanc (apt-get install orthanc orthanc-dicomweb)")
    pacs: Orthanc | StoragePeer
    if use_orthanc:
        progress("starting Orthanc (the PACS) on loopback ...")
        pacs = start_pacs(out / "orthanc", node_port, dicomweb=viewer)
        dest_ae, dest_port = "ORTHANC", pacs.dicom_port
        progress(f"  Orthanc: {pacs.url} (DICOM port {pacs.dicom_port})")
    else:
        progress("Orthanc is not installed: a pynetdicom storage SCP stands in for the PACS")
        pacs = StoragePeer(out / "pacs")
        dest_ae, dest_port = "DEMOPACS", pacs.port
    node = None
    try:
        progress(f"starting the node (NODESTAGE on port {node_port}) ...")
        node = Node(_node_config(out / "node", node_port, dest_ae, dest_port)).start()
        if isinstance(pacs, Orthanc):
            progress(f"uploading {len(files)} files to Orthanc ...")
            uploaded = 0
            for f in files:
                try:
                    pacs.post("/instances", f.read_bytes())
                    uploaded += 1
                except urllib.error.HTTPError:
                    pass  # not DICOM
            studies = pacs.get("/studies")
            if len(studies) != 1:
                raise DemoError(f"expected one study in Orthanc after the upload, found {len(studies)}")
            study_uid = pacs.get(f"/studies/{studies[0]}")["MainDicomTags"]["StudyInstanceUID"]
            progress(f"Orthanc routes the study ({uploaded} instances) to the node: "
                     "POST /modalities/nodestage/store ...")
            pacs.post("/modalities/nodestage/store", {"Resources": studies, "Synchronous": True})
        else:
            study_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
            progress(f"sending {len(files)} files to the node ...")
            _send_to_node(files, node_port)
        started = time.monotonic()
        last = None
        row = None
        while time.monotonic() - started < timeout_s:
            row = node.tracker.study_by_uid(study_uid)
            state = row["state"] if row else "waiting"
            if state != last:
                progress(f"  study: {state}" + (" (pipeline running)" if state == StudyState.RUNNING else ""))
                last = state
            if state in FINISHED_STUDY_STATES:
                break
            time.sleep(0.5)
        if row is None or row["state"] not in FINISHED_STUDY_STATES:
            raise DemoError(f"the study did not finish within {timeout_s:.0f} s")
        result: dict[str, Any] = {"state": row["state"], "study_instance_uid": study_uid, "output_dir": None,
                                  "reason": row["reason"], "pacs": pacs.url if isinstance(pacs, Orthanc) else
                                  str(pacs.folder), "truth": truth["expected"] if truth else None}
        if row["state"] != StudyState.DONE:
            progress(f"the study ended {row['state']}: {row['reason']}")
            return result
        job = node.storage.index.latest_job(row["id"], JobState.DONE)
        out_dir_v = Path(job["out_dir"])
        staged = JobResult.read(out_dir_v / "result.json")
        result.update({"output_dir": str(out_dir_v), "n_tnm8": staged.n_tnm8, "n_tnm9": staged.n_tnm9,
                       "involved_stations": staged.involved_stations})
        progress("waiting for SEG, SR and SC in the PACS ...")
        arrived: set[str] = set()
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and arrived != set(OUTPUT_CLASSES.values()):
            arrived = _arrived(pacs, study_uid)
            time.sleep(0.5)
        result["returned"] = sorted(arrived)
        stations = ", ".join(result["involved_stations"] or []) or "none"
        progress(f"N stage: {result['n_tnm8']} (TNM 8) / {result['n_tnm9']} (TNM 9); involved stations: {stations}")
        if truth:
            progress(f"  expected: {truth['expected']['n_tnm8']} / {truth['expected']['n_tnm9']}, stations: "
                     f"{', '.join(truth['expected']['positive_stations']) or 'none'}")
        progress(f"returned to the PACS: {', '.join(result['returned']) or 'nothing'}")
        progress(f"outputs: {out_dir_v}")
        if viewer and isinstance(pacs, Orthanc):
            node.stop()
            node = None
            _serve_viewer(pacs, study_uid, progress)
        return result
    finally:
        if node is not None:
            node.stop()
        pacs.stop()
        progress("stopped the node and the PACS")


def _arrived(pacs: Orthanc | StoragePeer, study_uid: str) -> set[str]:
    if isinstance(pacs, StoragePeer):
        return {OUTPUT_CLASSES[c] for s, c in pacs.received if s == study_uid and c in OUTPUT_CLASSES}
    found = set()
    for orthanc_id in pacs.get("/studies"):
        study = pacs.get(f"/studies/{orthanc_id}")
        if study["MainDicomTags"].get("StudyInstanceUID") != study_uid:
            continue
        for series in pacs.get(f"/studies/{orthanc_id}/series"):
            if series["MainDicomTags"].get("Modality") in ("CT", "PT") or not series["Instances"]:
                continue
            tags = pacs.get(f"/instances/{series['Instances'][0]}/simplified-tags")
            if tags.get("SOPClassUID") in OUTPUT_CLASSES:
                found.add(OUTPUT_CLASSES[tags["SOPClassUID"]])
    return found


def _check_viewer_tools() -> None:
    from dicomnode.app.orthanc import DICOMWEB_PLUGIN
    from dicomnode.app.viewer import INSTALL_HINT, ViewerError, ohif_dist

    try:
        ohif_dist()
    except ViewerError as err:
        raise DemoError(str(err)) from None
    if not Path(DICOMWEB_PLUGIN).exists():
        raise DemoError(f"Orthanc's DICOMweb plugin is missing ({DICOMWEB_PLUGIN}): {INSTALL_HINT}")


def _seg_series_uid(pacs: Orthanc, study_uid: str) -> str | None:
    """The lesion SEG's series (OHIF opens it over its CT); any SEG if none is named as ours."""
    segs = [s["MainDicomTags"] for s in pacs.post("/tools/find", {
        "Level": "Series", "Expand": True, "Query": {"StudyInstanceUID": study_uid, "Modality": "SEG"}})]
    segs.sort(key=lambda tags: not tags.get("SeriesDescription", "").startswith("nodestage lesions"))
    return segs[0]["SeriesInstanceUID"] if segs else None


def _serve_viewer(pacs: Orthanc, study_uid: str, progress: Callable[[str], None]) -> None:
    """Serve OHIF over the PACS until SIGINT (Ctrl-C) or SIGTERM; the caller then stops the PACS."""
    from dicomnode.app.viewer import ViewerServer, viewer_url

    server = ViewerServer(pacs.url).start()
    stop = threading.Event()
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, lambda *_: stop.set())
    try:
        progress(f"OHIF viewer: {viewer_url(server.url, study_uid, _seg_series_uid(pacs, study_uid))}")
        progress("  open it in a browser on this machine; Ctrl-C stops the viewer and the PACS")
        while not stop.wait(0.5):
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        server.stop()
        progress("stopped the viewer")
