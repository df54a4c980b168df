"""Real DICOM peers for tests: Orthanc as the PACS, dcmtk storescu as a sender.

Orthanc runs in the foreground on free loopback ports with its storage in a temp
dir; `OrthancPeer` wraps its REST API. Later tests (the node sending results back,
OHIF) reuse the `orthanc` fixture from conftest.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ORTHANC_BIN = shutil.which("Orthanc") or "/usr/sbin/Orthanc"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class OrthancPeer:
    aet: str
    dicom_port: int
    http_port: int
    process: subprocess.Popen
    workdir: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def get(self, path: str):
        with urllib.request.urlopen(self.url + path, timeout=30) as r:
            return json.loads(r.read())

    def post(self, path: str, body) -> object:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method="POST")
        with urllib.request.urlopen(req, timeout=120) as r:
            raw = r.read()
        return json.loads(raw) if raw else None

    def delete_all(self) -> None:
        for study in self.get("/studies"):
            urllib.request.urlopen(urllib.request.Request(f"{self.url}/studies/{study}", method="DELETE"), timeout=30)


def start_orthanc(workdir: Path, modalities: dict[str, list] | None = None, aet: str = "ORTHANC",
                  dicom_port: int | None = None) -> OrthancPeer:
    """Start Orthanc on loopback (free ports unless `dicom_port` is given) and wait for its REST API."""
    dicom_port, http_port = dicom_port or free_port(), free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    config = {
        "Name": "nodestage-test-pacs",
        "StorageDirectory": str(workdir / "storage"),
        "IndexDirectory": str(workdir / "index"),
        "Plugins": [],
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
    peer = OrthancPeer(aet, dicom_port, http_port, proc, workdir)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"Orthanc exited ({proc.returncode}): {(workdir / 'orthanc.log').read_text()[-2000:]}")
        try:
            peer.get("/system")
            return peer
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("Orthanc did not answer within 30 s")


def stop_orthanc(peer: OrthancPeer) -> None:
    peer.process.terminate()
    try:
        peer.process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        peer.process.kill()
        peer.process.wait(timeout=10)


def storescu(files_dir: Path, port: int, called_aet: str, calling_aet: str = "STORESCU",
             extra: list[str] | None = None) -> subprocess.CompletedProcess:
    """Send a folder with dcmtk's storescu (TCP_NODELAY on: see ENVIRONMENT.md)."""
    env = dict(os.environ, TCP_NODELAY="1")
    cmd = ["storescu", "-aet", calling_aet, "-aec", called_aet, "+sd", "+r", *(extra or []),
           "127.0.0.1", str(port), str(files_dir)]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
