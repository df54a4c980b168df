"""Shared helpers for the node tests (test_node_*.py): configs, a running node, senders, waiting.

Everything here talks to real peers over loopback: dcmtk storescu (tests.peers),
pynetdicom as a second sender, Orthanc (the conftest `orthanc` fixture). No mocks.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import yaml

from dicomnode.app.config import NodeConfig, load_config
from dicomnode.app.node import Node
from tests.peers import OrthancPeer, free_port

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CALLING_AETS = ["STORESCU", "PYNETDICOM", "ORTHANC", "SENDER2", "SENDER3"]


def deep_merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def write_config(tmp_path: Path, overrides: dict | None = None, name: str = "config.yaml") -> Path:
    """A test config in tmp_path: any free port, small timings, manual stability scans, no worker."""
    data: dict[str, Any] = {
        "node": {"port": 0, "ae_title": "NODESTAGE"},
        "security": {"allowed_calling_aets": CALLING_AETS},
        "storage": {"spool_dir": "var/spool", "archive_dir": "var/archive", "work_dir": "var/work",
                    "database": "var/index.sqlite", "ledger": "var/ledger.csv", "min_free_mb": 1},
        "studies": {"stability_seconds": 1.0, "guard_seconds": 0.2, "max_wait_seconds": 600,
                    "scan_interval_seconds": 1000},
        "worker": {"concurrency": 0, "timeout_seconds": 300},
        "mode": "silent",
        "retry": {"max_attempts": 3, "initial_delay_seconds": 0.2, "backoff_factor": 1.5,
                  "max_delay_seconds": 1, "scan_interval_seconds": 0.2},
        "send": {"echo_at_startup": False, "connection_timeout_s": 2, "acse_timeout_s": 5, "dimse_timeout_s": 30},
        "logging": {"level": "DEBUG"},
    }
    data = deep_merge(data, overrides or {})
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def make_config(tmp_path: Path, overrides: dict | None = None) -> NodeConfig:
    return load_config(write_config(tmp_path, overrides), environ={})


@contextlib.contextmanager
def running_node(config: NodeConfig) -> Iterator[Node]:
    node = Node(config).start()
    try:
        yield node
    finally:
        node.stop()


def wait_for(predicate: Callable[[], Any], timeout: float = 30, interval: float = 0.1, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def storescu(files: Path | list[Path], port: int, calling_aet: str = "STORESCU", called_aet: str = "NODESTAGE",
             extra: list[str] | None = None) -> subprocess.CompletedProcess:
    """dcmtk storescu with TCP_NODELAY, a folder (recursive) or a list of files, on one association."""
    env = dict(os.environ, TCP_NODELAY="1")
    targets = [str(files)] if isinstance(files, Path) else [str(f) for f in files]
    cmd = ["storescu", "-aet", calling_aet, "-aec", called_aet, "+sd", "+r", *(extra or []), "127.0.0.1", str(port),
           *targets]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)


def pynetdicom_store(port: int, items: list, calling_aet: str = "PYNETDICOM", raw_files: bool = False) -> list[int]:
    """Send datasets or files on one association with pynetdicom; returns each C-STORE status (-1: none).

    raw_files=True sends file bytes as they are (pynetdicom's chunked mode), so a
    truncated or corrupt file reaches the node undecoded."""
    import pydicom
    from pynetdicom import AE, _config

    ae = AE(ae_title=calling_aet)
    syntaxes: dict[str, set] = {}
    for item in items:
        if isinstance(item, (str, Path)):
            from pynetdicom.dsutils import split_dataset

            meta, _ = split_dataset(Path(item))
            sop_class, ts = str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID)
        else:
            sop_class, ts = str(item.SOPClassUID), str(item.file_meta.TransferSyntaxUID)
        syntaxes.setdefault(sop_class, set()).add(ts)
    for sop_class, ts in syntaxes.items():
        ae.add_requested_context(sop_class, sorted(ts))
    previous = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = raw_files
    try:
        assoc = ae.associate("127.0.0.1", port, ae_title="NODESTAGE")
        if not assoc.is_established:
            return []
        statuses = []
        for item in items:
            status = assoc.send_c_store(item if not isinstance(item, (str, Path)) or raw_files
                                        else pydicom.dcmread(item))
            statuses.append(int(status.Status) if status and "Status" in status else -1)
        assoc.release()
        return statuses
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = previous


def counts(node: Node) -> dict[str, int]:
    q = node.storage.query
    return {
        "instances": q("SELECT COUNT(*) AS n FROM instances WHERE kept = 1")[0]["n"],
        "ignored": q("SELECT COUNT(*) AS n FROM instances WHERE kept = 0")[0]["n"],
        "studies": q("SELECT COUNT(*) AS n FROM studies")[0]["n"],
    }


def study_row(node: Node, study_uid: str):
    return node.storage.query_one("SELECT * FROM studies WHERE study_uid = ?", (study_uid,))


def start_orthanc_on(workdir: Path, dicom_port: int, modalities: dict | None = None) -> OrthancPeer:
    """Orthanc on a chosen DICOM port, e.g. a PACS that comes back where the node expects it."""
    from tests.peers import start_orthanc

    return start_orthanc(workdir, modalities, dicom_port=dicom_port)


def orthanc_instances(peer: OrthancPeer) -> list[dict]:
    """Every instance in Orthanc with its main tags (SOPClassUID, StudyInstanceUID, ...)."""
    out = []
    for iid in peer.get("/instances"):
        tags = peer.get(f"/instances/{iid}/simplified-tags")
        out.append(tags)
    return out


def serve_process(config_path: Path, log_path: Path) -> subprocess.Popen:
    """`serve` in a separate process (for SIGTERM and kill -9 tests)."""
    log = open(log_path, "ab")
    env = dict(os.environ, PYTHONPATH=str(PROJECT_ROOT))
    return subprocess.Popen([sys.executable, "-m", "dicomnode.cli", "serve", "--config", str(config_path)], stdout=log,
                            stderr=subprocess.STDOUT, cwd=PROJECT_ROOT, env=env)


@pytest.fixture(scope="session")
def small_study(tmp_path_factory):
    """One small phantom study (case n2b_right_4r_7, seed 0): 89 CT + 89 PET instances."""
    from pipeline import phantom

    return phantom.generate(tmp_path_factory.mktemp("node-phantom") / "n2b", "n2b_right_4r_7", "small", 0)


