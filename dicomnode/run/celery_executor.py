"""`CeleryExecutor`: the node's pipeline runs on Celery workers (queue ``live``), behind the `Executor` seam.

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


class CeleryExecutor:
    """Submit each run to Celery and wait for its manifest, within the run's timeout plus the queue wait."""

    def __init__(self, settings: CelerySettings, max_deliveries: int = 3, queue_wait_s: float = 3600,
                 queue: str = QUEUE_LIVE):
        self.settings = settings
        self.app = make_app(settings)
        self.max_deliveries = max_deliveries
        self.queue_wait_s = queue_wait_s
        self.queue = queue
        self._pending: dict[int, str] = {}
        self._cancelled: set[int] = set()
        self._lock = threading.Lock()

    def request_for(self, run: PipelineRun) -> RunRequest:
        return RunRequest(str(run.run_id), to_uri(run.study_dir), to_uri(run.out_dir), to_uri(run.settings_path),
                          run.timeout_s, run.log_level, run.python, self.max_deliveries)

    def execute(self, run: PipelineRun, on_started: Callable[[int], None] | None = None) -> RunOutcome:
        # on_started is not called: no process of this machine to record (the worker's pid is remote)
        start = time.monotonic()
        request = self.request_for(run)
        task_id = job_task_id(run.run_id)
        for attempt in range(MAX_RESUBMITS + 1):
            result = self._submit(request, task_id, run)
            try:
                return self._outcome(run, result, start)
            except TaskRevokedError:
                if self._forget(run.run_id):
                    return RunOutcome(None, False, time.monotonic() - start, True)
                task_id = f"{job_task_id(run.run_id)}-r{attempt + 1}"  # revoked by an earlier cancel
                logger.info("job %s: its task id was revoked earlier; sending it again as %s", run.run_id, task_id)
            finally:
                release_result(self.app, result)
        self._write_reason(run, f"the task id of job {run.run_id} stayed revoked after {MAX_RESUBMITS} resubmits")
        return RunOutcome(pipeline_job.EXIT_UNAVAILABLE, False, time.monotonic() - start, self._forget(run.run_id))

    def _outcome(self, run: PipelineRun, result, start: float) -> RunOutcome:
        """The run's outcome from its task's result (TaskRevokedError goes to the caller)."""
        wait_s = run.timeout_s + self.queue_wait_s
        try:
            manifest = Manifest.from_dict(result.get(timeout=wait_s, interval=RESULT_POLL_S, propagate=True))
        except ResultTimeout:
            self.app.control.revoke(result.id, terminate=True, signal="SIGKILL")
            self._write_reason(run, f"timeout: no result from the Celery workers within {wait_s:g} s "
                                    "(queue wait included)")
            return RunOutcome(None, True, time.monotonic() - start, self._forget(run.run_id))
        except TimeLimitExceeded:
            return RunOutcome(None, True, time.monotonic() - start, self._forget(run.run_id))
        except TaskRevokedError:
            raise
        except Exception as err:  # the task raised (a bad reference, the broker): one line for the log
            self._write_reason(run, f"Celery task failed: {type(err).__name__}: {err}")
            return RunOutcome(pipeline_job.EXIT_UNAVAILABLE, False, time.monotonic() - start,
                              self._forget(run.run_id))
        self._forget(run.run_id)
        self._copy_log(run, manifest)
        return RunOutcome(manifest.returncode, manifest.timed_out, time.monotonic() - start)

    def _submit(self, request: RunRequest, task_id: str, run: PipelineRun):
        old = self.app.AsyncResult(task_id)
        old.forget()  # an old state (REVOKED, a crashed node's run) must not answer
        release_result(self.app, old)
        with self._lock:
            self._pending[run.run_id] = task_id
        return self.app.send_task(TASK_NAME, args=[request.to_message()], task_id=task_id, queue=self.queue,
                                  time_limit=self.settings.task_time_limit_s)

    def _forget(self, run_id: int) -> bool:
        """Drop the run from the pending set; True when it had been cancelled."""
        with self._lock:
            self._pending.pop(run_id, None)
            cancelled = run_id in self._cancelled
            self._cancelled.discard(run_id)
        return cancelled

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
            task_id = self._pending.get(run_id)
            if task_id is not None:
                self._cancelled.add(run_id)
        if task_id is not None:
            self.app.control.revoke(task_id, terminate=True, signal="SIGKILL")

    def cancel_all(self) -> None:
        with self._lock:
            ids = list(self._pending)
        for run_id in ids:
            self.cancel(run_id)
