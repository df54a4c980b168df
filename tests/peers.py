"""Real DICOM peers for tests: Orthanc as the PACS (dicomnode.app.orthanc, the demo's own), dcmtk storescu as a sender.

Orthanc runs in the foreground on free loopback ports with its storage in a temp
dir; `OrthancPeer` wraps its REST API. Later tests (the node sending results back,
OHIF) reuse the `orthanc` fixture from conftest.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from dicomnode.app.orthanc import Orthanc as OrthancPeer
from dicomnode.app.orthanc import free_port, start_orthanc  # noqa: F401  (re-exported for the tests)


def stop_orthanc(peer: OrthancPeer) -> None:
    peer.stop()


def storescu(files_dir: Path, port: int, called_aet: str, calling_aet: str = "STORESCU",
             extra: list[str] | None = None) -> subprocess.CompletedProcess:
    """Send a folder with dcmtk's storescu (TCP_NODELAY on: see ENVIRONMENT.md)."""
    env = dict(os.environ, TCP_NODELAY="1")
    cmd = ["storescu", "-aet", calling_aet, "-aec", called_aet, "+sd", "+r", *(extra or []),
           "127.0.0.1", str(port), str(files_dir)]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
