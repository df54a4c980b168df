"""Orthanc as a PACS on loopback: the demo's PACS, and the tests' and benchmarks' real peer.

Orthanc runs in the foreground with its storage and index under a work folder,
on free loopback ports unless a DICOM port is given (a PACS that comes back where
the node expects it), with our AE titles as its modalities. `Orthanc` wraps the
few REST calls we use. The Debian package starts no service; see ENVIRONMENT.md.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

ORTHANC_BIN = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
START_TIMEOUT_S = 30
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"


class OrthancError(RuntimeError):
    """Orthanc did not start; the message says why and where its log is."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Orthanc:
    aet: str
    dicom_port: int
    http_port: int
    process: subprocess.Popen
    workdir: Path
    log: IO[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=30) as r:
            return json.loads(r.read())

    def post(self, path: str, body: bytes | dict, timeout: float = 600) -> Any:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        with urllib.request.urlopen(urllib.request.Request(self.url + path, data=data, method="POST"),
                                    timeout=timeout) as r:
            raw = r.read()
        return json.loads(raw) if raw else None

    def delete_all(self) -> None:
        for study in self.get("/studies"):
            urllib.request.urlopen(urllib.request.Request(f"{self.url}/studies/{study}", method="DELETE"), timeout=30)

    def stop(self) -> None:
        """Terminate Orthanc and wait for it (a restart on the same index needs the old process gone)."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        if self.log is not None:
            self.log.close()
            self.log = None


def start_orthanc(workdir: Path, modalities: dict[str, list] | None = None, aet: str = "ORTHANC",
                  dicom_port: int | None = None, dicomweb: bool = False) -> Orthanc:
    """Start Orthanc on loopback and wait for its REST API; `modalities` maps names to [AE, host, port].

    `dicomweb` loads the DICOMweb plugin (Debian `orthanc-dicomweb`) that OHIF reads from."""
    dicom_port, http_port = dicom_port or free_port(), free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    config = {
        "Name": "nodestage-pacs",
        "StorageDirectory": str(workdir / "storage"),
        "IndexDirectory": str(workdir / "index"),
        "Plugins": [DICOMWEB_PLUGIN] if dicomweb else [],
        "DicomWeb": {"Enable": dicomweb, "Root": "/dicom-web/", "EnableWado": dicomweb, "WadoRoot": "/wado"},
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomAet": aet,
        "DicomPort": dicom_port,
        "DicomCheckCalledAet": False,
        "DicomAlwaysAllowStore": True,
        "DicomModalities": modalities or {},
        "HttpsCACertificates": "",
        "ConcurrentJobs": 1,
    }
    cfg = workdir / "orthanc.json"
    cfg.write_text(json.dumps(config))
    log = open(workdir / "orthanc.log", "ab")  # appended: a restarted PACS keeps its earlier log
    proc = subprocess.Popen([ORTHANC_BIN, str(cfg)], stdout=log, stderr=subprocess.STDOUT, cwd=workdir)
    peer = Orthanc(aet, dicom_port, http_port, proc, workdir, log)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            peer.stop()
            tail = (workdir / "orthanc.log").read_text(errors="replace")[-2000:]
            raise OrthancError(f"Orthanc exited at start-up ({proc.returncode}); {workdir / 'orthanc.log'}: {tail}")
        try:
            peer.get("/system")
            return peer
        except OSError:
            time.sleep(0.2)
    peer.stop()
    raise OrthancError(f"Orthanc did not answer within {START_TIMEOUT_S} s; see {workdir / 'orthanc.log'}")
