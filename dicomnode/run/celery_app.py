"""The Celery app of the scale-out workers: one task that runs a `RunRequest`, each study exactly once.

A worker, one per GPU::

    NODESTAGE_CELERY_BROKER=redis://HOST:6379/0 CUDA_VISIBLE_DEVICES=0 \\
        celery -A dicomnode.run.celery_app worker -Q live,retro -c 1 --prefetch-multiplier 1 -n gpu0@%h

Why these settings: a study runs for minutes, so a worker takes one message at a time
(``worker_prefetch_multiplier=1``) and acknowledges it only when the study has ended
(``acks_late``); a worker that dies mid-study gives its message back
(``task_reject_on_worker_lost``), and Redis hands an unacknowledged message to another
worker only after ``visibility_timeout``, which must therefore be longer than the task's
hard time limit (checked here). Two queues: ``live`` (studies from the PACS) and ``retro``
(``nodestage batch``); a worker consuming both takes them round-robin, so a backfill never
starves live work.

Exactly once: the task id is the job's (``nodestage-job-<run id>``, or the batch's own); an
``<out>`` already complete makes a redelivery return its manifest without running; a lock per
task id (refreshed while the run lives) keeps a second delivery from running while the first
still does; and a delivery
counter in the broker's Redis fails a study delivered more than ``max_deliveries`` times
(a poison study that kills its worker) with that reason instead of running it again.

Where a study runs (``NODESTAGE_CELERY_RUNNER``):

- ``in-process`` (the default): in the Celery pool process itself, so the TotalSegmentator and
  nnU-Net models stay loaded (`pipeline.model_cache`) for every study that process runs; with
  ``NODESTAGE_WORKER_PRELOAD`` (a config.yaml or PipelineSettings JSON) they are loaded at
  ``worker_process_init``, before the first study. A study that crashes the process or runs
  past the task's hard time limit loses the pool process, which Celery replaces.
- ``subprocess``: a child process per study, as the node's local executor runs it (every
  study starts clean; each loads its models again).

Settings come from the environment (the workers do not read the node's config.yaml):
``NODESTAGE_CELERY_BROKER`` (default ``redis://127.0.0.1:6379/0``), ``NODESTAGE_CELERY_BACKEND``
(default: the broker), ``NODESTAGE_CELERY_TASK_TIME_LIMIT_S``, ``NODESTAGE_CELERY_VISIBILITY_TIMEOUT_S``.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from celery import Celery
from celery.exceptions import Reject
from celery.signals import worker_process_init
from kombu import Queue

from dicomnode.run.run_request import Manifest, RunRequest, read_manifest, run_request, write_failure

logger = logging.getLogger(__name__)

ENV_BROKER = "NODESTAGE_CELERY_BROKER"
ENV_BACKEND = "NODESTAGE_CELERY_BACKEND"
ENV_TASK_TIME_LIMIT = "NODESTAGE_CELERY_TASK_TIME_LIMIT_S"
ENV_VISIBILITY_TIMEOUT = "NODESTAGE_CELERY_VISIBILITY_TIMEOUT_S"
ENV_RUNNER = "NODESTAGE_CELERY_RUNNER"
ENV_PRELOAD = "NODESTAGE_WORKER_PRELOAD"
RUNNER_IN_PROCESS, RUNNER_SUBPROCESS = "in-process", "subprocess"
RUNNERS = (RUNNER_IN_PROCESS, RUNNER_SUBPROCESS)
DEFAULT_BROKER = "redis://127.0.0.1:6379/0"
DEFAULT_TASK_TIME_LIMIT_S = 3600.0
DEFAULT_VISIBILITY_TIMEOUT_S = 7200.0
QUEUE_LIVE, QUEUE_RETRO = "live", "retro"
TASK_NAME = "nodestage.run_study"
JOB_TASK_PREFIX = "nodestage-job-"
DELIVERY_KEY = "nodestage:deliveries:{task_id}"
LOCK_KEY = "nodestage:running:{task_id}"
DELIVERY_KEY_TTL_S = 7 * 24 * 3600  # long after any redelivery; then Redis forgets the count
LOCK_MARGIN_S = 10.0  # visibility_timeout exceeds the hard time limit by more than this
LOCK_TTL_S = 15  # the running delivery refreshes its lock; a killed one's lock is gone this long after
LOCK_REFRESH_S = 5.0
LOCK_POLL_S = 1.0
PROC_ALIVE_TIMEOUT_S = 600.0  # the preload of TotalSegmentator's models from slow storage takes minutes
CHILD_TIMEOUT_MARGIN_S = 10.0  # the child's own timeout ends before Celery's hard limit kills the worker process


def job_task_id(run_id: int | str) -> str:
    """The task id of a node job: the job id, so a resubmission is the same task."""
    return f"{JOB_TASK_PREFIX}{run_id}"


@dataclass(frozen=True)
class CelerySettings:
    broker_url: str
    backend_url: str
    task_time_limit_s: float
    visibility_timeout_s: float

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> CelerySettings:
        env = os.environ if environ is None else environ
        broker = env.get(ENV_BROKER) or DEFAULT_BROKER
        return cls(broker, env.get(ENV_BACKEND) or broker,
                   float(env.get(ENV_TASK_TIME_LIMIT) or DEFAULT_TASK_TIME_LIMIT_S),
                   float(env.get(ENV_VISIBILITY_TIMEOUT) or DEFAULT_VISIBILITY_TIMEOUT_S))

    def __post_init__(self) -> None:
        if self.visibility_timeout_s <= self.task_time_limit_s + LOCK_MARGIN_S:
            raise ValueError(f"visibility_timeout ({self.visibility_timeout_s:g} s) must exceed the task time limit "
                             f"({self.task_time_limit_s:g} s) by more than {LOCK_MARGIN_S:g} s: Redis would hand "
                             "a running study to a second worker")


def make_app(settings: CelerySettings | None = None) -> Celery:
    settings = settings or CelerySettings.from_env()
    app = Celery("nodestage", broker=settings.broker_url, backend=settings.backend_url)
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_time_limit=settings.task_time_limit_s,
        broker_transport_options={"visibility_timeout": settings.visibility_timeout_s},
        result_backend_transport_options={"visibility_timeout": settings.visibility_timeout_s},
        task_queues=[Queue(QUEUE_LIVE), Queue(QUEUE_RETRO)],
        task_default_queue=QUEUE_RETRO,
        task_routes={TASK_NAME: {"queue": QUEUE_RETRO}},  # live work names its queue when it is sent
        task_serializer="json", result_serializer="json", accept_content=["json"],
        task_track_started=True,
        result_extended=True,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
        # a pool process loads its models before it reports up (Celery's default wait is 4 s)
        worker_proc_alive_timeout=PROC_ALIVE_TIMEOUT_S,
    )
    app.nodestage_settings = settings
    return app


app = make_app()


def runner_from_env(environ: dict[str, str] | None = None) -> str:
    env = os.environ if environ is None else environ
    runner = (env.get(ENV_RUNNER) or RUNNER_IN_PROCESS).strip().lower()
    if runner not in RUNNERS:
        raise ValueError(f"{ENV_RUNNER}={runner!r}: expected one of {', '.join(RUNNERS)}")
    return runner


_EXECUTOR = None  # this worker process's executor, made once (its models stay loaded with it)


def worker_executor():
    """The executor of this worker process: in process (models kept) or a child per study."""
    global _EXECUTOR
    if _EXECUTOR is None:
        if runner_from_env() == RUNNER_IN_PROCESS:
            from dicomnode.run.in_process import InProcessExecutor

            _EXECUTOR = InProcessExecutor()
        else:
            from dicomnode.run.executor import LocalSubprocessExecutor

            _EXECUTOR = LocalSubprocessExecutor()
    return _EXECUTOR


@worker_process_init.connect
def _warm_worker_process(**_kwargs) -> None:
    """Once per worker process, not once per study: import the pipeline and, in process, load its models."""
    import dicomnode.run.pipeline_job  # noqa: F401
    import pipeline.settings  # noqa: F401

    if runner_from_env() != RUNNER_IN_PROCESS:
        return
    import pipeline.run  # noqa: F401  (what every study imports; seconds, paid here once)

    preload = os.environ.get(ENV_PRELOAD)
    if not preload:
        return
    from dicomnode.run.pipeline_job import load_settings
    from pipeline.model_cache import preload as preload_models

    try:
        started = time.monotonic()
        folders = preload_models(load_settings(Path(preload)))
        logger.info("worker process %d: %d models loaded in %.1f s from %s", os.getpid(), len(folders),
                    time.monotonic() - started, preload)
    except Exception as err:  # missing weights: each study then fails with the same clear reason
        logger.error("worker process %d: cannot preload the models of %s: %s", os.getpid(), preload, err)


def release_result(celery_app: Celery, result) -> None:
    """Stop listening for a result that has been read, while the broker is up.

    The Redis result backend keeps every sent task's result object; left there, each one
    unsubscribes when the app is collected, after Redis may be gone, and logs a traceback."""
    try:
        celery_app.backend.remove_pending_result(result)
    except Exception:  # the broker already away: nothing left to release
        logger.debug("cannot release result %s", getattr(result, "id", "?"), exc_info=True)


def _redis(celery_app: Celery):
    """The broker's Redis (the counter and lock live beside the queues they guard)."""
    import redis

    return redis.Redis.from_url(celery_app.conf.broker_url)


def poison_reason(deliveries: int, max_deliveries: int) -> str | None:
    """Why a delivery must not run: the study has already been handed out more often than allowed."""
    if deliveries <= max_deliveries:
        return None
    return (f"poison study: delivered {deliveries} times, more than max_deliveries {max_deliveries}; the worker "
            f"running it was lost on each earlier delivery (killed, out of memory), so it is not run again")


class DeliveryLock:
    """One running delivery per task id: a Redis key refreshed while the run lives.

    A delivery whose worker process is SIGKILLed stops refreshing, so the redelivery that
    `task_reject_on_worker_lost` sends at once waits at most LOCK_TTL_S, not a whole time limit."""

    def __init__(self, client, task_id: str):
        self.client, self.key = client, LOCK_KEY.format(task_id=task_id)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> bool:
        if not self.client.set(self.key, f"{os.uname().nodename}:{os.getpid()}", nx=True, ex=LOCK_TTL_S):
            return False
        self._thread = threading.Thread(target=self._refresh, name="nodestage-delivery-lock", daemon=True)
        self._thread.start()
        return True

    def _refresh(self) -> None:
        while not self._stop.wait(LOCK_REFRESH_S):
            try:
                self.client.expire(self.key, LOCK_TTL_S)
            except Exception:  # the broker away for a moment: the next refresh tries again
                logger.warning("cannot refresh the delivery lock", exc_info=True)

    def wait_released(self) -> None:
        while self.client.exists(self.key):
            time.sleep(LOCK_POLL_S)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.client.delete(self.key)


def execute_delivery(client, task_id: str, request: RunRequest, time_limit_s: float) -> Manifest:
    """One delivery of a task: the existing result, a poison refusal, or one run (never two at once)."""
    lock = DeliveryLock(client, task_id)
    while True:
        existing = read_manifest(request.out_dir)
        if existing is not None:
            logger.info("task %s: already complete; returning its manifest without running", task_id)
            return existing
        if lock.acquire():
            break
        logger.info("task %s: another delivery is running it; waiting", task_id)
        lock.wait_released()
    try:
        key = DELIVERY_KEY.format(task_id=task_id)
        deliveries = int(client.incr(key))
        client.expire(key, DELIVERY_KEY_TTL_S)
        reason = poison_reason(deliveries, request.max_deliveries)
        if reason is not None:
            logger.warning("task %s: %s", task_id, reason)
            return write_failure(request, reason, deliveries)
        timeout = min(request.timeout_s, max(1.0, time_limit_s - CHILD_TIMEOUT_MARGIN_S))
        if timeout != request.timeout_s:
            request = RunRequest(**{**request.to_message(), "timeout_s": timeout})
        manifest, outcome = run_request(request, worker_executor(), deliveries=deliveries)
        if manifest is None:  # the child was killed from outside: give the message back, the counter decides
            raise Reject(f"pipeline killed by {outcome.killed_by or 'a signal'} on delivery {deliveries}",
                         requeue=True)
        logger.info("task %s: ended with %s in %.1f s", task_id, manifest.returncode, manifest.seconds)
        return manifest
    finally:
        lock.release()


@app.task(bind=True, name=TASK_NAME)
def run_study_task(self, message: dict) -> dict:
    """Run one study given by references (`RunRequest.to_message`); returns its manifest as a dict."""
    request = RunRequest.from_message(message)
    hard_limit = (self.request.timelimit or (None, None))[0] or self.app.conf.task_time_limit
    limit = float(hard_limit or DEFAULT_TASK_TIME_LIMIT_S)
    return execute_delivery(_redis(self.app), self.request.id, request, limit).to_dict()
