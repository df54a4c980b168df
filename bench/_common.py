"""What the receive benchmarks (bench_node.py, bench_receive.py) share: fresh receivers, started alike.

Both scripts put the project root on sys.path before importing this module, so that each
compares the node with storescp and Orthanc started the same way.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Iterator

from dicomnode.app.config import load_config
from dicomnode.app.node import Node
from tests.peers import OrthancPeer, free_port, start_orthanc, stop_orthanc

PROJECT_ROOT = Path(__file__).resolve().parents[1]
PORT_WAIT_S = 20.0
STOP_WAIT_S = 10
NODELAY_ENV = {"TCP_NODELAY": "1"}  # dcmtk reads it: without it Nagle holds each C-STORE response ~40 ms


def wait_port(port: int, timeout: float = PORT_WAIT_S) -> None:
    """Returns once something accepts connections on the loopback `port` (a receiver started as a process)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            s.settimeout(0.5)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on port {port} after {timeout} s")


def node_environ(root: Path, engine: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    """`config.yaml` overrides for a node whose files all lie under `root`: a free port, no worker, no echo."""
    return {
        "NODESTAGE__NODE__PORT": str(free_port()),
        "NODESTAGE__NODE__ENGINE": engine,
        "NODESTAGE__STORAGE__SPOOL_DIR": str(root / "spool"),
        "NODESTAGE__STORAGE__ARCHIVE_DIR": str(root / "archive"),
        "NODESTAGE__STORAGE__WORK_DIR": str(root / "work"),
        "NODESTAGE__STORAGE__DATABASE": str(root / "nodestage.sqlite"),
        "NODESTAGE__STORAGE__LEDGER": str(root / "ledger.csv"),
        "NODESTAGE__WORKER__CONCURRENCY": "0",
        "NODESTAGE__SEND__ECHO_AT_STARTUP": "false",
        "NODESTAGE__LOGGING__LEVEL": "WARNING",
        **(extra or {}),
    }


@contextlib.contextmanager
def fresh_node(root: Path, engine: str, extra: dict[str, str] | None = None) -> Iterator[Node]:
    """The node in process, `config.yaml` defaults but for `node_environ`; `root` is emptied before and after."""
    shutil.rmtree(root, ignore_errors=True)
    config = load_config(PROJECT_ROOT / "config.yaml", environ=node_environ(root, engine, extra))
    node = Node(config).start()
    try:
        yield node
    finally:
        node.stop()
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def fresh_storescp(out: Path, log: Path, fork: bool = False) -> Iterator[int]:
    """dcmtk `storescp [--fork] -od OUT PORT` (TCP_NODELAY=1) in an emptied `out`; yields its port.

    It runs in a session of its own so that the children of --fork stop with it.
    """
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    port = free_port()
    cmd = ["storescp", *(["--fork"] if fork else []), "-od", str(out), str(port)]
    with open(log, "wb") as log_file:
        proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, env=dict(os.environ, **NODELAY_ENV),
                                start_new_session=True)
        try:
            wait_port(port)
            yield port
        finally:
            try:
                os.killpg(proc.pid, 15)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=STOP_WAIT_S)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                proc.wait(timeout=STOP_WAIT_S)
            shutil.rmtree(out, ignore_errors=True)


@contextlib.contextmanager
def fresh_orthanc(root: Path, nodelay: bool) -> Iterator[OrthancPeer]:
    """Orthanc as tests.peers starts it, in an emptied `root`, with or without TCP_NODELAY=1 in its environment.

    The variable is set only while Orthanc starts: this process's environment is left as it was.
    """
    shutil.rmtree(root, ignore_errors=True)
    previous = os.environ.get("TCP_NODELAY")
    if nodelay:
        os.environ.update(NODELAY_ENV)
    else:
        os.environ.pop("TCP_NODELAY", None)
    try:
        peer = start_orthanc(root)
    finally:
        if previous is None:
            os.environ.pop("TCP_NODELAY", None)
        else:
            os.environ["TCP_NODELAY"] = previous
    try:
        yield peer
    finally:
        stop_orthanc(peer)
        shutil.rmtree(root, ignore_errors=True)
