"""`CeleryExecutor`: the node's pipeline runs on Celery workers (queue ``live``), collected by a scheduler tick.

The node keeps its job bookkeeping, sending and AE title; only the pipeline process runs
elsewhere. The message carries references (``file://`` on storage every worker mounts at the
same path), the task id is the job id (``nodestage-job-<id>``), and the manifest the task
returns becomes the `RunOutcome` the worker already understands. Needs ``pip install
nodestage[celery]``.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from celery.exceptions import TaskRevokedError, TimeLimitExceeded
from celery.exceptions import TimeoutError as ResultTimeout

from dicomnode.run import pipeline_job
from dicomnode.run.celery_app import QUEUE_LIVE, TASK_NAME, CelerySettings, job_task_id, make_app, release_result
from dicomnode.run.executor import PipelineRun, RunOutcome
from dicomnode.run.run_request import LOG_NAME, Manifest, RunRequest, to_uri

logger = logging.getLogger(__name__)

RESULT_POLL_S = 0.5
MAX_RESUBMITS = 3  # a task id revoked by an earlier cancel (a node shutdown) is sent again under a new id


@dataclass
class InFlight:
    """A run sent to the workers whose result has not been collected yet."""

    run: PipelineRun
    request: RunRequest
    task_id: str
    result: object  # celery.result.AsyncResult
    submitted: float
    resubmits: int = 0


class CeleryExecutor:
    """Send each run to Celery; a scheduler tick (`collect`) turns finished tasks into outcomes.

    `submit` returns at once, so the node's worker threads do not wait on remote studies and
    ``worker.concurrency`` does not cap how many run on the workers (``max_in_flight`` does).
    `execute` (submit, then collect until this run ends) remains for callers that want one
    run's outcome synchronously."""

    asynchronous = True

    def __init__(self, settings: CelerySettings, max_deliveries: int = 3, queue_wait_s: float = 3600,
                 queue: str = QUEUE_LIVE, max_in_flight: int = 16):
        self.settings = settings
        self.app = make_app(settings)
        self.max_deliveries = max_deliveries
        self.queue_wait_s = queue_wait_s
        self.queue = queue
        self.max_in_flight = max_in_flight
        self._in_flight: dict[int, InFlight] = {}
        self._done: dict[int, RunOutcome] = {}  # collected by `execute`'s own polling, for its caller
        self._cancelled: set[int] = set()
        self._lock = threading.Lock()
        self._collecting = threading.Lock()

    def request_for(self, run: PipelineRun) -> RunRequest:
        return RunRequest(str(run.run_id), to_uri(run.study_dir), to_uri(run.out_dir), to_uri(run.settings_path),
                          run.timeout_s, run.log_level, run.python, self.max_deliveries)

    def has_room(self) -> bool:
        with self._lock:
            return len(self._in_flight) < self.max_in_flight

    def in_flight(self) -> int:
        with self._lock:
            return len(self._in_flight)

    def submit(self, run: PipelineRun) -> None:
        """Send the run (task id = the job's) and return; its outcome comes from `collect`."""
        request = self.request_for(run)
        task_id = job_task_id(run.run_id)
        result = self._submit(request, task_id, run)
        with self._lock:
            self._in_flight[run.run_id] = InFlight(run, request, task_id, result, time.monotonic())

    def collect(self) -> list[tuple[PipelineRun, RunOutcome]]:
        """The runs whose tasks have ended since the last call (never blocks on a running task)."""
        with self._collecting:
            with self._lock:
                pending = list(self._in_flight.values())
            ended = []
            for item in pending:
                outcome = self._poll(item)
                if outcome is not None:
                    with self._lock:
                        self._in_flight.pop(item.run.run_id, None)
                        self._cancelled.discard(item.run.run_id)
                    release_result(self.app, item.result)
                    ended.append((item.run, outcome))
            return ended

    def execute(self, run: PipelineRun, on_started: Callable[[int], None] | None = None) -> RunOutcome:
        # on_started is not called: no process of this machine to record (the worker's pid is remote)
        self.submit(run)
        while True:
            for ended, outcome in self.collect():
                if ended.run_id == run.run_id:
                    return outcome
                with self._lock:
                    self._done[ended.run_id] = outcome
            with self._lock:
                if run.run_id in self._done:
                    return self._done.pop(run.run_id)
            time.sleep(RESULT_POLL_S)

    def _poll(self, item: InFlight) -> RunOutcome | None:
        """The outcome of a task that has ended; None while it waits or runs (a revoked id is sent again)."""
        run, elapsed = item.run, time.monotonic() - item.submitted
        wait_s = run.timeout_s + self.queue_wait_s
        if not item.result.ready():
            if elapsed <= wait_s:
                return None
            self.app.control.revoke(item.task_id, terminate=True, signal="SIGKILL")
            self._write_reason(run, f"timeout: no result from the Celery workers within {wait_s:g} s "
                                    "(queue wait included)")
            return RunOutcome(None, True, elapsed, self._was_cancelled(run.run_id))
        try:
            manifest = Manifest.from_dict(item.result.get(timeout=1, propagate=True))
        except TaskRevokedError:
            if self._was_cancelled(run.run_id):
                return RunOutcome(None, False, elapsed, True)
            if item.resubmits >= MAX_RESUBMITS:
                self._write_reason(run, f"the task id of job {run.run_id} stayed revoked after {MAX_RESUBMITS} "
                                        "resubmits")
                return RunOutcome(pipeline_job.EXIT_UNAVAILABLE, False, elapsed)
            release_result(self.app, item.result)
            item.resubmits += 1
            item.task_id = f"{job_task_id(run.run_id)}-r{item.resubmits}"  # revoked by an earlier cancel
            logger.info("job %s: its task id was revoked earlier; sending it again as %s", run.run_id, item.task_id)
            item.result = self._submit(item.request, item.task_id, run)
            return None
        except TimeLimitExceeded:
            return RunOutcome(None, True, elapsed, self._was_cancelled(run.run_id))
        except ResultTimeout:  # ready, yet not readable this second: the next tick reads it
            return None
        except Exception as err:  # the task raised (a bad reference, the broker): one line for the log
            self._write_reason(run, f"Celery task failed: {type(err).__name__}: {err}")
            return RunOutcome(pipeline_job.EXIT_UNAVAILABLE, False, elapsed, self._was_cancelled(run.run_id))
        self._copy_log(run, manifest)
        return RunOutcome(manifest.returncode, manifest.timed_out, elapsed)

    def _was_cancelled(self, run_id: int) -> bool:
        with self._lock:
            return run_id in self._cancelled

    def _submit(self, request: RunRequest, task_id: str, run: PipelineRun):
        old = self.app.AsyncResult(task_id)
        old.forget()  # an old state (REVOKED, a crashed node's run) must not answer
        release_result(self.app, old)
        return self.app.send_task(TASK_NAME, args=[request.to_message()], task_id=task_id, queue=self.queue,
                                  time_limit=self.settings.task_time_limit_s)

    @staticmethod
    def _write_reason(run: PipelineRun, reason: str) -> None:
        run.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(run.log_path, "a") as log:
            log.write(pipeline_job.REASON_PREFIX + " ".join(reason.split()) + "\n")

    @staticmethod
    def _copy_log(run: PipelineRun, manifest: Manifest) -> None:
        """The worker reads the log at run.log_path; the task left it in <out>/pipeline.log."""
        written = Path(manifest.out_dir) / LOG_NAME
        if written.is_file() and written.resolve() != Path(run.log_path).resolve():
            shutil.copyfile(written, run.log_path)

    def cancel(self, run_id: int) -> None:
        with self._lock:
            item = self._in_flight.get(run_id)
            if item is not None:
                self._cancelled.add(run_id)
        if item is not None:
            self.app.control.revoke(item.task_id, terminate=True, signal="SIGKILL")

    def cancel_all(self) -> None:
        with self._lock:
            ids = list(self._in_flight)
        for run_id in ids:
            self.cancel(run_id)

    def abandon_all(self) -> list[PipelineRun]:
        """Revoke every run still in flight and forget it (node shutdown); returns those runs."""
        self.cancel_all()
        with self._lock:
            items = list(self._in_flight.values())
            self._in_flight.clear()
            self._cancelled.clear()
        for item in items:
            release_result(self.app, item.result)
        return [item.run for item in items]
