"""The container image, built and run for real with podman: healthy, receives a study, stages it, stops cleanly.

The image is the Dockerfile's, built by `scripts/build-image.sh` (what `make image` runs; cached
layers make a second build a few seconds). The container runs its default (silent-mode) config,
with the DICOM port published on 127.0.0.1 only and its data volume in a temp folder; dcmtk's
storescu sends a phantom PET/CT into it, and the test reads the ledger and the outputs the node
wrote in that volume. podman missing is a failure, not a skip: `.ci/run` installs it
(../shared/ENVIRONMENT.md, "Containers").
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from dicomnode.app.orthanc import ORTHANC_BIN, free_port
from dicomnode.app.orthanc import Orthanc as OrthancPeer
from tests.peers import storescu

pytestmark = [pytest.mark.container, pytest.mark.slow, pytest.mark.network]

ROOT = Path(__file__).resolve().parents[2]
IMAGE = os.environ.get("NODESTAGE_IMAGE", "localhost/nodestage:latest")
CONTAINERS_CONF = ROOT / "scripts" / "containers.conf"
DEPLOY = ROOT / "deploy"
ORTHANC_STABLE_AGE_S = 3  # deploy/orthanc/orthanc.json says 60; a test waits less
CASE = "n2b_right_4r_7"  # the demo's case: a right primary with 4R, 7 and 10R
DICOM_PORT = 11112  # node.port of deploy/config.silent.yaml, EXPOSEd by the Dockerfile
BUILD_TIMEOUT_S = 1800
HEALTHY_TIMEOUT_S = 90
STAGED_TIMEOUT_S = 300
STOP_WITHIN_S = 15  # SIGTERM to exit; `podman stop` escalates to SIGKILL after 30 s


def _env() -> dict[str, str]:
    return dict(os.environ, CONTAINERS_CONF=os.environ.get("CONTAINERS_CONF", str(CONTAINERS_CONF)))


def _podman(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(["podman", *args], capture_output=True, text=True, env=_env(), timeout=timeout)
    if check and result.returncode != 0:
        pytest.fail(f"podman {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()[-2000:]}")
    return result


@pytest.fixture(scope="module")
def image() -> str:
    """The image of this tree: built (or confirmed up to date from podman's layer cache) by build-image.sh."""
    missing = [t for t in ("podman", "mmdebstrap", "storescu") if shutil.which(t) is None]
    if missing:
        pytest.fail(f"{', '.join(missing)} not found: the container test needs podman, mmdebstrap (apt-get install "
                    "-y podman buildah mmdebstrap runc) and dcmtk; `make test` installs them "
                    "(scripts/ensure-container-packages.sh, scripts/ensure-system-packages.sh)")
    start = time.monotonic()
    result = subprocess.run(["bash", str(ROOT / "scripts" / "build-image.sh")], capture_output=True, text=True,
                            env=dict(_env(), NODESTAGE_IMAGE=IMAGE), timeout=BUILD_TIMEOUT_S)
    if result.returncode != 0:
        pytest.fail(f"scripts/build-image.sh failed ({result.returncode}):\n{(result.stdout + result.stderr)[-4000:]}")
    print(f"image {IMAGE} ready in {time.monotonic() - start:.1f} s")
    return IMAGE


@pytest.fixture(scope="module")
def phantom_study(tmp_path_factory) -> Path:
    """A small geometric phantom, written by the CLI as the README shows."""
    out = tmp_path_factory.mktemp("container-phantom") / CASE
    cli = ROOT / ".venv" / "bin" / "nodestage"
    result = subprocess.run([str(cli), "phantom", str(out), "--case", CASE, "--size", "small"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return out


def _start_node(image: str, name: str, data: Path, port: int, *options: str) -> None:
    """`podman run -d` the image: DICOM port published on 127.0.0.1 only, data volume in `data`."""
    _podman("run", "-d", "--name", name,
            "-p", f"127.0.0.1:{port}:{DICOM_PORT}",
            # :U chowns the folder to the image's non-root user (podman)
            "-v", f"{data}:/var/lib/nodestage:U",
            # a short quiet period: a phantom is all sent within seconds
            "-e", "NODESTAGE__STUDIES__STABILITY_SECONDS=5",
            "-e", "NODESTAGE__STUDIES__GUARD_SECONDS=2",
            *options, image)


@pytest.fixture
def node_container(image, tmp_path):
    """Starts containers of the image on demand; each is logged to tmp_path and removed after the test."""
    started = []

    def start(*options: str, port: int | None = None) -> dict:
        data = tmp_path / f"data{len(started)}"
        data.mkdir()
        name = f"nodestage-test-{uuid.uuid4().hex[:8]}"
        port = port or free_port()
        started.append(name)
        _start_node(image, name, data, port, *options)
        return {"name": name, "port": port, "data": data}

    yield start
    for name in started:
        logs = _podman("logs", name, check=False, timeout=30)
        (tmp_path / f"{name}.log").write_text(logs.stdout + logs.stderr)
        _podman("rm", "-f", "-t", "5", name, check=False, timeout=60)


@pytest.fixture
def container(node_container):
    """The node with the image's default config (silent mode); the test sends as STORESCU."""
    return node_container("-e", "NODESTAGE__SECURITY__ALLOWED_CALLING_AETS=[STORESCU, HEALTHCHECK]")


def _wait_healthy(name: str) -> tuple[float, str]:
    """Run the image's HEALTHCHECK until it passes; its output is the check's last log entry.

    Without systemd podman runs no health-check timer (it logs "unable to get systemd
    connection", harmless): `podman healthcheck run` runs the check once."""
    start = time.monotonic()
    last = ""
    while time.monotonic() - start < HEALTHY_TIMEOUT_S:
        result = _podman("healthcheck", "run", name, check=False, timeout=60)
        health = json.loads(_podman("inspect", "--format", "{{json .State.Health}}", name).stdout)
        last = (health.get("Log") or [{}])[-1].get("Output", "").strip() or result.stderr.strip()
        if result.returncode == 0:
            return time.monotonic() - start, last
        running = _podman("inspect", "--format", "{{.State.Running}}", name, check=False).stdout.strip()
        if running != "true":
            logs = _podman("logs", name, check=False)
            pytest.fail(f"the container stopped before it was healthy:\n{(logs.stdout + logs.stderr)[-3000:]}")
        time.sleep(1)
    pytest.fail(f"not healthy after {HEALTHY_TIMEOUT_S} s: {last}")


def _wait_ledger(ledger: Path, timeout: float) -> list[dict[str, str]]:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if ledger.is_file():
            with open(ledger, newline="") as f:
                rows = list(csv.DictReader(f))
            if rows:
                return rows
        time.sleep(2)
    return []


def test_image_runs_the_node_healthy_stages_a_study_and_stops_cleanly(container, phantom_study):
    name, port, data = container["name"], container["port"], container["data"]

    # the image's own configuration
    config = json.loads(_podman("image", "inspect", IMAGE).stdout)[0]["Config"]
    assert config["User"] == "nodestage"
    assert config["Cmd"] == ["nodestage", "serve", "--config", "/etc/nodestage/config.yaml"]
    assert f"{DICOM_PORT}/tcp" in config["ExposedPorts"]
    assert {"/etc/nodestage", "/var/lib/nodestage", "/opt/nodestage/weights"} <= set(config["Volumes"])
    health = json.loads(_podman("image", "inspect", "--format", "{{json .HealthCheck}}", IMAGE).stdout)
    assert health and health["Test"][-1] == "nodestage-healthcheck", "HEALTHCHECK lost (build without --format docker?)"

    # healthy: the node answers a C-ECHO from inside the container
    waited, detail = _wait_healthy(name)
    assert "C-ECHO success" in detail, detail
    status = _podman("inspect", "--format", "{{.State.Health.Status}}", name).stdout.strip()
    assert status == "healthy", status

    # a node on the published port refuses an AE it does not know (the allow-list applies)
    refused = subprocess.run(["echoscu", "-aet", "INTRUDER", "-aec", "NODESTAGE", "127.0.0.1", str(port)],
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0

    # send the phantom with dcmtk storescu, as a PACS would
    start = time.monotonic()
    sent = storescu(phantom_study / "dicom", port, "NODESTAGE", "STORESCU")
    assert sent.returncode == 0, sent.stderr[-2000:]

    # silent mode: a ledger row and the outputs in the volume, nothing sent anywhere
    rows = _wait_ledger(data / "ledger.csv", STAGED_TIMEOUT_S)
    staged_s = time.monotonic() - start
    logs = _podman("logs", name).stderr
    assert rows, f"no ledger row after {STAGED_TIMEOUT_S} s; node log:\n{logs[-3000:]}"
    assert len(rows) == 1
    row = rows[0]
    truth = json.loads((phantom_study / "truth.json").read_text())
    assert row["status"] == "done", row
    assert (row["n_tnm8"], row["n_tnm9"]) == (truth["expected"]["n_tnm8"], truth["expected"]["n_tnm9"])
    assert set(row["involved_stations"].split(";")) == set(truth["expected"]["positive_stations"])

    # result.json named by the ledger, as a path inside the container, lies in the volume
    result_in_container = Path(row["result_json"])
    assert result_in_container.is_relative_to("/var/lib/nodestage/archive")
    result_path = data / result_in_container.relative_to("/var/lib/nodestage")
    result = json.loads(result_path.read_text())
    assert result["n_tnm8"] == truth["expected"]["n_tnm8"]
    outputs = list((result_path.parent / "dicom").rglob("*.dcm"))
    assert len(outputs) >= 3, "SEG, SR and the summary capture"
    assert (data / "nodestage.sqlite").is_file()
    assert not (data / "work").exists() or not any((data / "work").iterdir()), "job snapshots are removed"
    assert "Traceback" not in logs

    # SIGTERM (podman stop) is handled: the node shuts down cleanly within seconds
    start = time.monotonic()
    _podman("stop", "-t", "30", name, timeout=60)
    stop_s = time.monotonic() - start
    state = json.loads(_podman("inspect", "--format", "{{json .State}}", name).stdout)
    assert state["ExitCode"] == 0, state
    assert stop_s < STOP_WITHIN_S, f"stop took {stop_s:.1f} s (SIGKILL after the timeout?)"
    assert "shutting down" in _podman("logs", name).stderr
    print(f"healthy after {waited:.1f} s, staged {CASE} {staged_s:.1f} s after the send began, stopped in {stop_s:.1f} s")


# ------------------------------------------------------------------ the compose wiring, with a real Orthanc

def _start_deploy_orthanc(workdir: Path, node_port: int) -> OrthancPeer:
    """Orthanc with deploy/orthanc/orthanc.json and its Lua rule; only ports, folders and the node's
    address differ (the compose network's `nodestage` is 127.0.0.1:node_port here)."""
    config = json.loads((DEPLOY / "orthanc" / "orthanc.json").read_text())
    dicom_port, http_port = free_port(), free_port()
    workdir.mkdir(parents=True)
    config.update({"StorageDirectory": str(workdir / "storage"), "IndexDirectory": str(workdir / "index"),
                   "HttpPort": http_port, "DicomPort": dicom_port, "RemoteAccessAllowed": False,
                   "Plugins": [], "StableAge": ORTHANC_STABLE_AGE_S,
                   "LuaScripts": [str(DEPLOY / "orthanc" / "route-petct.lua")]})
    config["DicomModalities"]["nodestage"].update({"Host": "127.0.0.1", "Port": node_port})
    (workdir / "orthanc.json").write_text(json.dumps(config))
    log = open(workdir / "orthanc.log", "ab")
    proc = subprocess.Popen([ORTHANC_BIN, str(workdir / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT,
                            cwd=workdir)
    peer = OrthancPeer(config["DicomAet"], dicom_port, http_port, proc, workdir, log)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert proc.poll() is None, (workdir / "orthanc.log").read_text()[-2000:]
        try:
            peer.get("/system")
            return peer
        except OSError:
            time.sleep(0.2)
    peer.stop()
    pytest.fail("Orthanc did not start")


def test_orthanc_routes_petct_to_the_container_and_gets_the_results_back(node_container, phantom_study, tmp_path):
    """deploy/: Orthanc's Lua rule routes the PET/CT to the node (clinical config), the node sends
    SEG/SR/summary back into the same study, and the returning results are not routed again."""
    node_port = free_port()
    orthanc = _start_deploy_orthanc(tmp_path / "orthanc", node_port)
    try:
        node = node_container(
            "-v", f"{DEPLOY / 'config.clinical.yaml'}:/etc/nodestage/config.yaml:ro",
            # the compose network's `orthanc` is this host's Orthanc here
            "-e", "NODESTAGE__DESTINATIONS__0__HOST=host.containers.internal",
            "-e", f"NODESTAGE__DESTINATIONS__0__PORT={orthanc.dicom_port}",
            "-e", "NODESTAGE__PIPELINE__ANATOMY__BACKEND=classical",  # no TotalSegmentator weights in a test
            port=node_port)  # the port Orthanc's modality entry names
        _wait_healthy(node["name"])

        sent = storescu(phantom_study / "dicom", orthanc.dicom_port, "ORTHANC", "MODALITY")
        assert sent.returncode == 0, sent.stderr[-2000:]
        study_uid = json.loads((phantom_study / "truth.json").read_text()).get("study_instance_uid")

        deadline = time.monotonic() + STAGED_TIMEOUT_S
        modalities: list[str] = []
        while time.monotonic() < deadline:
            studies = orthanc.get("/studies")
            if len(studies) == 1:
                modalities = sorted(s["MainDicomTags"].get("Modality", "") for s in
                                    orthanc.get(f"/studies/{studies[0]}/series"))
                if {"SEG", "SR"} <= set(modalities):
                    break
            time.sleep(2)
        logs = _podman("logs", node["name"]).stderr
        assert {"SEG", "SR"} <= set(modalities), f"results not back in Orthanc: {modalities}\n{logs[-3000:]}"
        assert modalities.count("CT") == 1 and modalities.count("PT") == 1, "results went into the same study"

        # the study turns stable again once the results are in: the rule must not route it a second time
        time.sleep(ORTHANC_STABLE_AGE_S + 8)
        orthanc_log = (tmp_path / "orthanc" / "orthanc.log").read_text(errors="replace")
        assert orthanc_log.count("nodestage routing: study") == 1, orthanc_log[-3000:]
        assert "Error in RestApi" not in orthanc_log
        rows = _wait_ledger(node["data"] / "ledger.csv", 5)  # ledger_in_clinical_mode: true
        truth = json.loads((phantom_study / "truth.json").read_text())["expected"]
        assert [(r["version"], r["n_tnm8"], r["n_tnm9"]) for r in rows] == [("1", truth["n_tnm8"], truth["n_tnm9"])]
        assert study_uid is None or rows[0]["study_instance_uid"] == study_uid
    finally:
        orthanc.stop()
