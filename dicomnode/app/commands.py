"""What `nodestage serve / status / echo / reprocess` do; `dicomnode.app.cli` parses arguments and prints.

- `serve(config_path)`: run the node in the foreground until SIGTERM or SIGINT,
  then shut down cleanly; returns the exit status.
- `status(config_path) -> dict`: studies by state, the queue, the outbox, failed
  sends and the last errors, read from the index (works while the node runs).
- `echo(target, calling_aet) -> dict`: C-ECHO ``AE@HOST:PORT``; ``ok`` says if it worked.
- `reprocess(config_path, study) -> dict`: queue a study again (a new version).

These functions print nothing; errors are raised as `ConfigError` / `ValueError`
with a one-line message.
"""

from __future__ import annotations

import errno
import json
import logging
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from dicomnode.app.config import ConfigError, NodeConfig, load_config
from dicomnode.app.logs import formatter, quiet_libraries
from dicomnode.app.runtime import read_runtime
from dicomnode.index.db import Index, JobState, SendState, StudyState

logger = logging.getLogger(__name__)

RECENT_STUDIES = 10  # finished studies listed by `status`
FAILED_SENDS_LISTED = 50
ERRORS_LISTED = 10


def configure_logging(level: str, fmt: str = "text") -> None:
    """Root logger at `level`, with one stderr handler in the configured format."""
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(logging.StreamHandler(sys.stderr))
    for handler in root.handlers:
        handler.setFormatter(formatter(fmt))
    root.setLevel(level)
    quiet_libraries(level)


def serve(config_path: str | Path | None = None, stop_event: threading.Event | None = None) -> int:
    """Run the node until SIGTERM/SIGINT (or `stop_event`); 0 after a clean shutdown."""
    from dicomnode.app.node import Node

    config = load_config(config_path)
    configure_logging(config.logging.level, config.logging.format)
    stop = stop_event or threading.Event()
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, lambda signum, frame: stop.set())
    from dicomnode.index.storage import NodeLockedError

    node = Node(config)
    try:
        try:
            node.start()
        except NodeLockedError as err:
            raise ConfigError(f"storage.database: {err}") from None
        except OSError as err:
            if err.errno in (errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES) and not err.filename:
                raise ConfigError(f"node.port: cannot listen on {config.node.host}:{config.node.port}: "
                                  f"{err.strerror or err}") from None
            raise ConfigError(f"cannot start the node: {err}") from None
        logger.info("ready: %s listening on port %d", config.node.ae_title, node.port)
        while not stop.wait(timeout=1.0):
            pass
        logger.info("shutting down")
    finally:
        node.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def _config_for_status(config_path: str | Path | None) -> NodeConfig:
    return load_config(config_path, serving=False)


def status(config_path: str | Path | None = None, now: float | None = None) -> dict[str, Any]:
    """A snapshot of the node from its index; no network, safe while the node runs."""
    config = _config_for_status(config_path)
    db = config.storage.database
    out: dict[str, Any] = {"node": {"ae_title": config.node.ae_title, "port": config.node.port, "mode": config.mode,
                                    "database": str(db)}}
    running = read_runtime(db, now)
    if running is None:
        out["node"].update(running=False, note="the node is not running (no live node process for this index)")
    else:  # what the running node uses, which an environment override may have changed
        out["node"].update(running=True, pid=running["pid"], port=running["port"], ae_title=running["ae_title"],
                           mode=running["mode"], uptime_s=running["uptime_s"], version=running.get("version"))
    if not db.is_file():
        out["error"] = f"no index at {db} (the node has not run with this config)"
        return out
    now = time.time() if now is None else now
    index = Index(db, readonly=True)
    try:
        with index.read() as q:
            by_state = q.study_counts()
            active = q.active_studies()
            recent = q.recent_studies(RECENT_STUDIES)
            queued = q.count_jobs(JobState.QUEUED)
            running = q.jobs_in_state(JobState.RUNNING)
            sends = q.send_counts()
            pending = q.sends_in_states((SendState.PENDING, SendState.SENDING))
            failed = q.sends_in_states((SendState.FAILED_SEND,), newest_first=True, limit=FAILED_SENDS_LISTED)
            errors = q.last_errors(ERRORS_LISTED)
            counters = q.counters()
    finally:
        index.close()
    out["studies"] = {s.value: by_state.get(s, 0) for s in StudyState}
    out["active"] = [{
        "study": r["id"], "study_uid": r["study_uid"], "state": r["state"], "version": r["version"],
        "instances": r["instances"], "series": r["series"],
        "age_s": round(now - r["first_received"], 1), "quiet_s": round(now - r["last_received"], 1),
        **({"waiting_for": r["check_reason"]} if r["check_reason"] else {}),
    } for r in active]
    out["recent"] = []
    for r in recent:
        item = {"study": r["id"], "study_uid": r["study_uid"], "state": r["state"], "version": r["version"],
                "finished_ago_s": round(now - r["updated"], 1)}
        if r["reason"]:
            item["reason"] = r["reason"]
        if r["summary"]:
            s = json.loads(r["summary"])
            item.update({k: s.get(k) for k in ("n_tnm8", "n_tnm9", "involved_stations", "seconds")})
        out["recent"].append(item)
    out["queue"] = {"queued": queued, "running": [
        {"job": r["id"], "study": r["study_id"], "version": r["version"], "attempt": r["attempts"],
         "running_s": round(now - (r["started"] or now), 1)} for r in running]}
    out["sends"] = {s.value: sends.get(s, 0) for s in SendState}
    out["pending_sends"] = [
        {"send": r["id"], "study": r["study_id"], "version": r["version"], "destination": r["destination"],
         "attempts": r["attempts"], "next_attempt_in_s": round(max(0.0, r["next_attempt"] - now), 1),
         "last_error": r["last_error"]}
        for r in pending]
    out["failed_sends"] = [
        {"send": r["id"], "study": r["study_id"], "version": r["version"], "destination": r["destination"],
         "role": r["role"], "attempts": r["attempts"], "last_error": r["last_error"],
         "failed_ago_s": round(now - r["updated"], 1)}
        for r in failed]
    out["last_errors"] = [
        {"ago_s": round(now - r["time"], 1), "study": r["study_id"], "kind": r["kind"], "message": r["message"]}
        for r in errors]
    out["counters"] = counters
    return out


def echo(target: str, calling_aet: str | None = None, config_path: str | Path | None = None) -> dict[str, Any]:
    """C-ECHO ``AE@HOST:PORT``. The calling AE is `calling_aet`, else the config's, else NODESTAGE."""
    from dicomnode.send.scu import echo as c_echo, parse_target

    ae, host, port = parse_target(target)
    settings = None
    if calling_aet is None and config_path is not None:
        config = load_config(config_path, serving=False)
        calling_aet, settings = config.calling_ae_title, config.send
        if ae == config.node.ae_title and config.security.allowed_calling_aets:
            # the node itself: its own AE title is (rightly) not on its allow-list; use one that is
            calling_aet = config.security.allowed_calling_aets[0]
    calling_aet = calling_aet or "NODESTAGE"
    result = c_echo(ae, host, port, calling_aet, settings)
    out = {"target": f"{ae}@{host}:{port}", "calling_aet": calling_aet, **result.to_dict()}
    if not result.ok and "reject" in result.detail.lower():
        out["hint"] = (f"{ae} rejected the calling AE {calling_aet}: pass --aet with an AE title on its "
                       "allow-list (for this node: security.allowed_calling_aets)")
    return out


def reprocess(config_path: str | Path | None, study: str) -> dict[str, Any]:
    """Queue a study again by its index number or StudyInstanceUID; a running node picks it up."""
    from dicomnode.index.storage import Storage
    from dicomnode.index.studies import StudyTracker

    config = load_config(config_path)
    storage = Storage(config.storage.database, config.storage.spool_dir, fsync=config.storage.fsync, lock=False)
    try:
        tracker = StudyTracker(storage, config.studies)
        row = tracker.study(int(study)) if study.isdigit() else tracker.study_by_uid(study)
        if row is None:
            raise ValueError(f"no study {study!r} in {config.storage.database}")
        queued = tracker.reprocess(row["id"])
        row = tracker.study(row["id"])
        return {"study": row["id"], "queued": queued, "state": row["state"], "version": row["version"]}
    finally:
        storage.close()


def demo(study_dir: str | Path | None = None, case: str = "n2b_right_4r_7", out_dir: str | Path | None = None,
         progress=None, viewer: bool = False) -> dict[str, Any]:
    """The main job: Orthanc routes a study (a phantom by default) to the node and gets the results back.

    `progress(line)` is called with one human line per step (the CLI prints them)."""
    from dicomnode.app.demo import run_demo

    return run_demo(study_dir, case, out_dir, progress or (lambda line: None), viewer=viewer)
