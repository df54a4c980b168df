"""The worker: real pipeline subprocesses, timeouts, failures with reasons, restarts and shutdown."""

from __future__ import annotations

import json
import os
import signal

import pytest

from dicomnode.index.studies import DONE, FAILED, READY
from dicomnode.send.ledger import read_ledger
from tests.peers import free_port
from tests.node_fixtures import (make_config, running_node, serve_process,  # noqa: F401
                                      small_study, storescu, study_row, wait_for, write_config)

pytestmark = pytest.mark.network

FAST = {"studies": {"stability_seconds": 1.0, "guard_seconds": 0.2, "scan_interval_seconds": 0.2},
        "worker": {"concurrency": 1}}


def _with(extra: dict) -> dict:
    out = json.loads(json.dumps(FAST))
    for k, v in extra.items():
        out[k] = {**out.get(k, {}), **v} if isinstance(v, dict) else v
    return out


def _job(node, study_id):
    return node.storage.query_one("SELECT * FROM jobs WHERE study_id = ? ORDER BY id DESC LIMIT 1", (study_id,))


def test_a_job_running_past_its_timeout_is_killed_and_failed(tmp_path, small_study):
    cfg = make_config(tmp_path, _with({"worker": {"timeout_seconds": 0.05}}))
    uid = small_study.truth["dicom"]["study_instance_uid"]
    with running_node(cfg) as node:
        assert storescu(small_study.out_dir / "dicom", node.port).returncode == 0
        row = wait_for(lambda: (r := study_row(node, uid)) and r["state"] == FAILED and r, 30, what="FAILED")
        assert row["reason"].startswith("timeout")
        job = _job(node, row["id"])
        assert job["state"] == FAILED and job["reason"].startswith("timeout")
        out = cfg.storage.archive_dir / uid / "v1"
        assert (out / "pipeline.log").is_file()
        # The snapshot is removed before the FAILED state is written.
        assert not list(cfg.storage.work_dir.iterdir())
        assert not os.path.exists(f"/proc/{job['pid']}") or b"pipeline_job" not in open(
            f"/proc/{job['pid']}/cmdline", "rb").read()


def test_an_unprocessable_study_fails_with_the_reason_and_others_go_on(tmp_path, small_study):
    """A CT-only study forced to run fails with the pipeline's one-line reason; the next study still runs."""
    from pipeline import phantom

    cfg = make_config(tmp_path, _with({"studies": {"max_wait_seconds": 600}}))
    other = phantom.generate(tmp_path / "other", "n0_right_upper", "small", 3)
    uid = small_study.truth["dicom"]["study_instance_uid"]
    other_uid = other.truth["dicom"]["study_instance_uid"]
    with running_node(cfg) as node:
        assert storescu(small_study.out_dir / "dicom" / "ct", node.port).returncode == 0
        row = wait_for(lambda: study_row(node, uid), 10, what="study row")
        assert node.tracker.reprocess(row["id"])  # operator: "process it anyway"
        assert storescu(other.out_dir / "dicom", node.port).returncode == 0
        row = wait_for(lambda: (r := study_row(node, uid)) and r["state"] == FAILED and r, 60, what="FAILED")
        assert "no PET" in row["reason"]
        assert "\n" not in row["reason"]
        done = wait_for(lambda: (r := study_row(node, other_uid)) and r["state"] in (DONE, FAILED) and r, 120,
                        what="the other study to finish")
        assert _job(node, done["id"])["attempts"] == 1
        if done["state"] == FAILED:
            assert "timeout" not in done["reason"] and "crashed" not in done["reason"]


def test_a_job_left_running_is_requeued_at_start_up(tmp_path, small_study):
    """A node that died mid-job: the next start re-queues the job (here it then times out)."""
    uid = small_study.truth["dicom"]["study_instance_uid"]
    path = write_config(tmp_path, _with({"worker": {"concurrency": 0}}))
    from dicomnode.app.config import load_config

    cfg = load_config(path, environ={})
    with running_node(cfg) as node:
        assert storescu(small_study.out_dir / "dicom", node.port).returncode == 0
        wait_for(lambda: (r := study_row(node, uid)) and r["state"] == READY, 20, what="READY")
        job = node.tracker.claim_next_job()  # as a worker would; then the node "dies"
        assert study_row(node, uid)["state"] == "RUNNING"
    cfg2 = make_config(tmp_path, _with({"worker": {"concurrency": 1, "timeout_seconds": 0.05}}))
    with running_node(cfg2) as node:
        row = wait_for(lambda: (r := study_row(node, uid)) and r["state"] == FAILED and r, 30, what="FAILED")
        again = _job(node, row["id"])
        assert again["id"] == job.id and again["attempts"] == 2
        assert again["reason"].startswith("timeout")


def test_a_job_interrupted_too_often_is_failed_not_rerun(tmp_path, small_study):
    uid = small_study.truth["dicom"]["study_instance_uid"]
    cfg = make_config(tmp_path, _with({"worker": {"concurrency": 0, "max_restarts": 0}}))
    with running_node(cfg) as node:
        assert storescu(small_study.out_dir / "dicom", node.port).returncode == 0
        wait_for(lambda: (r := study_row(node, uid)) and r["state"] == READY, 20, what="READY")
        node.tracker.claim_next_job()
    with running_node(cfg) as node:
        row = study_row(node, uid)
        assert row["state"] == FAILED and "not retried" in row["reason"]
    (ledger_row,) = read_ledger(cfg.storage.ledger)  # silent mode: a failure row, as for a failed run
    assert (ledger_row["study_instance_uid"], ledger_row["status"]) == (uid, "failed")
    assert "not retried" in ledger_row["failure_reason"]


def test_shutdown_during_a_job_puts_it_back_in_the_queue(tmp_path, small_study):
    uid = small_study.truth["dicom"]["study_instance_uid"]
    cfg = make_config(tmp_path, FAST)
    node_cm = running_node(cfg)
    node = node_cm.__enter__()
    try:
        assert storescu(small_study.out_dir / "dicom", node.port).returncode == 0
        wait_for(lambda: (r := study_row(node, uid)) and r["state"] == "RUNNING", 20, interval=0.02,
                 what="RUNNING")
        pid = wait_for(lambda: _job(node, study_row(node, uid)["id"])["pid"], 5, interval=0.02, what="pid")
    finally:
        node_cm.__exit__(None, None, None)
    from dicomnode.index.storage import connect

    conn = connect(cfg.storage.database, readonly=True)
    study = conn.execute("SELECT * FROM studies WHERE study_uid = ?", (uid,)).fetchone()
    job = conn.execute("SELECT * FROM jobs WHERE study_id = ?", (study["id"],)).fetchone()
    conn.close()
    assert study["state"] == READY and job["state"] == "QUEUED"
    assert not os.path.exists(f"/proc/{pid}/cmdline") or b"pipeline_job" not in open(
        f"/proc/{pid}/cmdline", "rb").read()


def test_serve_stops_cleanly_on_sigterm(tmp_path):
    port = free_port()
    path = write_config(tmp_path, {"node": {"port": port}})
    proc = serve_process(path, tmp_path / "serve.log")
    try:
        from dicomnode.app.commands import echo

        wait_for(lambda: echo(f"NODESTAGE@127.0.0.1:{port}", calling_aet="STORESCU")["ok"], 30, interval=0.3,
                 what="the node to answer C-ECHO")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    log = (tmp_path / "serve.log").read_text()
    assert "node stopped" in log
    assert "Traceback" not in log


@pytest.mark.slow
def test_kill_9_during_a_job_then_restart_loses_nothing(tmp_path, small_study):
    """kill -9 of the node while the pipeline runs: after a restart every instance is there
    and the study reaches a final state (DONE once the pipeline handles the phantom)."""
    from dicomnode.app.commands import echo
    from dicomnode.index.storage import connect

    uid = small_study.truth["dicom"]["study_instance_uid"]
    port = free_port()
    path = write_config(tmp_path, _with({"node": {"port": port}, "logging": {"level": "INFO"}}))
    db = tmp_path / "var" / "index.sqlite"

    def query(sql, args=()):
        conn = connect(db, readonly=True)
        try:
            return conn.execute(sql, args).fetchall()
        finally:
            conn.close()

    proc = serve_process(path, tmp_path / "serve1.log")
    try:
        wait_for(lambda: echo(f"NODESTAGE@127.0.0.1:{port}", calling_aet="STORESCU")["ok"], 30, interval=0.3,
                 what="node up")
        assert storescu(small_study.out_dir / "dicom", port).returncode == 0
        wait_for(lambda: query("SELECT 1 FROM jobs WHERE state = 'RUNNING' AND pid IS NOT NULL"), 30,
                 interval=0.05, what="a RUNNING job")
        pipeline_pid = query("SELECT pid FROM jobs WHERE state = 'RUNNING'")[0]["pid"]
        proc.kill()  # SIGKILL: no clean-up at all
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    wait_for(lambda: not os.path.exists(f"/proc/{pipeline_pid}"), 10, what="the orphan pipeline to die")
    assert query("SELECT COUNT(*) AS n FROM instances WHERE kept = 1")[0]["n"] == 178
    proc = serve_process(path, tmp_path / "serve2.log")
    try:
        row = wait_for(lambda: (r := query("SELECT * FROM studies WHERE study_uid = ?", (uid,))) and
                       r[0]["state"] in (DONE, FAILED) and r[0], 180, interval=0.3, what="a final state")
        job = query("SELECT * FROM jobs WHERE study_id = ?", (row["id"],))[0]
        assert job["attempts"] == 2
        if row["state"] == FAILED:
            assert "timeout" not in row["reason"] and "crashed" not in row["reason"], row["reason"]
        files = list((tmp_path / "var" / "spool").rglob("*.dcm"))
        assert len(files) == 178
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_serve_refuses_a_busy_port_or_a_second_node_with_one_line(tmp_path):
    import socket

    from dicomnode.app.commands import serve
    from dicomnode.app.config import ConfigError

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        path = write_config(tmp_path, {"node": {"port": s.getsockname()[1]}})
        with pytest.raises(ConfigError, match=r"node\.port: cannot listen on 127\.0\.0\.1:\d+"):
            serve(path)
    cfg = make_config(tmp_path / "b")
    with running_node(cfg):
        with pytest.raises(ConfigError, match=r"storage\.database: another node is running"):
            serve(tmp_path / "b" / "config.yaml")


@pytest.mark.parametrize("max_restarts", [1, 0])
def test_a_pipeline_killed_by_a_signal_is_retried_then_failed(tmp_path, small_study, max_restarts):
    """The OOM killer or an operator kills the pipeline: retried up to worker.max_restarts, then FAILED."""
    uid = small_study.truth["dicom"]["study_instance_uid"]
    cfg = make_config(tmp_path, _with({"worker": {"max_restarts": max_restarts}}))
    with running_node(cfg) as node:
        assert storescu(small_study.out_dir / "dicom", node.port).returncode == 0
        wait_for(lambda: (r := study_row(node, uid)) and r["state"] == "RUNNING", 30, interval=0.02, what="RUNNING")
        pid = wait_for(lambda: _job(node, study_row(node, uid)["id"])["pid"], 10, interval=0.02, what="pid")
        os.kill(pid, signal.SIGKILL)
        row = wait_for(lambda: (r := study_row(node, uid)) and r["state"] in (DONE, FAILED) and r, 180,
                       what="the study to end")
        job = _job(node, row["id"])
    if max_restarts:
        assert row["state"] == DONE and job["attempts"] == 2
    else:
        assert row["state"] == FAILED and "killed by SIGKILL on attempt 1; not retried" in row["reason"]
