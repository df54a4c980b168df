"""The node's periodic jobs (APScheduler): the stability scan, the outbox, clean-up, and (with
Celery) the collection of finished remote runs.

Each job runs at most one instance at a time and coalesces missed runs; an
exception is logged and the job runs again at its next interval. `wake_outbox()`
runs the outbox now (after a job has queued outputs) instead of at the next tick.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import Callable

from apscheduler.schedulers.background import BackgroundScheduler

from dicomnode.app.config import NodeConfig
from dicomnode.index.storage import Storage
from dicomnode.index.studies import StudyTracker
from dicomnode.send.outbox import Outbox

logger = logging.getLogger(__name__)

SCAN, OUTBOX, CLEANUP, COLLECT = "stability-scan", "outbox", "cleanup", "collect-results"


def _guarded(name: str, func: Callable[[], object]) -> Callable[[], None]:
    def run() -> None:
        try:
            func()
        except Exception:
            logger.exception("scheduled job %s failed; it runs again at its next interval", name)
    run.__name__ = f"nodestage_{name.replace('-', '_')}"
    return run


class NodeScheduler:
    def __init__(self, config: NodeConfig, storage: Storage, tracker: StudyTracker, outbox: Outbox,
                 collect: Callable[[], object] | None = None, collect_interval_s: float = 1.0):
        self.collect = collect  # an asynchronous executor's results (Celery): concluded at each tick
        self.collect_interval_s = collect_interval_s
        self.config = config
        self.storage = storage
        self.tracker = tracker
        self.outbox = outbox
        self.scheduler = BackgroundScheduler(timezone=timezone.utc,
                                             job_defaults={"coalesce": True, "max_instances": 1,
                                                           "misfire_grace_time": None})

    def cleanup(self) -> None:
        r = self.config.storage.retention
        done = self.storage.apply_retention(self.config.storage.archive_dir, r.spool_days, r.archive_days)
        if any(done.values()):
            logger.info("retention: %d spool folders and %d output folders removed", done["spool"], done["archive"])

    def start(self) -> None:
        now = datetime.now(timezone.utc)
        s = self.scheduler
        s.add_job(_guarded(SCAN, self.tracker.scan), "interval", id=SCAN,
                  seconds=self.config.studies.scan_interval_seconds, next_run_time=now)
        s.add_job(_guarded(OUTBOX, self.outbox.process_due), "interval", id=OUTBOX,
                  seconds=self.config.retry.scan_interval_seconds, next_run_time=now)
        s.add_job(_guarded(CLEANUP, self.cleanup), "interval", id=CLEANUP,
                  seconds=self.config.storage.retention.cleanup_interval_s, next_run_time=now)
        if self.collect is not None:
            s.add_job(_guarded(COLLECT, self.collect), "interval", id=COLLECT, seconds=self.collect_interval_s,
                      next_run_time=now)
        s.start()

    def wake_outbox(self) -> None:
        self._wake(OUTBOX)

    def wake_scan(self) -> None:
        self._wake(SCAN)

    def _wake(self, job_id: str) -> None:
        try:
            self.scheduler.modify_job(job_id, next_run_time=datetime.now(timezone.utc))
        except Exception:  # not running (stopping): the next start does it
            logger.debug("cannot wake %s", job_id)

    def stop(self) -> None:
        if self.scheduler.running:
            self.scheduler.shutdown(wait=True)
