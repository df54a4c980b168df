"""The worker: runs queued pipeline jobs, one at a time by default, each in a subprocess with a timeout.

For a job the worker
1. snapshots the study's CT/PET instances into ``<work>/job-<id>/study/`` (hard
   links: instances that arrive meanwhile do not change what this version sees);
2. runs ``python -m dicomnode.run.pipeline_job STUDY OUT SETTINGS`` in its own
   process group, with OUT = ``<archive>/<study>/v<version>/`` and its log in
   OUT/pipeline.log;
3. on success reads OUT/result.json, queues the DICOM outputs in the outbox (and
   writes the ledger row in silent mode), and marks the study DONE;
4. on a refusal, crash or timeout marks it FAILED with a one-line reason; other
   studies go on.

A job stopped by a node shutdown goes back to the queue; a pipeline killed by a signal
from outside (the OOM killer, an operator) is retried up to ``worker.max_restarts``
times; jobs found RUNNING at start-up (a crash) are re-queued by
`StudyTracker.requeue_interrupted`. Where the pipeline process runs is the
`Executor`'s business (`dicomnode.run.executor`). With an asynchronous executor (Celery)
one thread submits jobs while the executor has room, and the scheduler's collect tick
concludes them (`collect`), so no thread waits on a remote study.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable

from dicomnode.app.config import NodeConfig
from dicomnode.index.db import JobState
from dicomnode.index.storage import Storage, safe_name
from dicomnode.index.studies import DONE, FAILED, Job, StudyTracker
from dicomnode.run import pipeline_job
from dicomnode.run.executor import Executor, LocalSubprocessExecutor, PipelineRun, RunOutcome, is_asynchronous
from dicomnode.send.ledger import append_ledger, ledger_failure_row, ledger_row
from dicomnode.send.outbox import Outbox
from pipeline.job_result import JobResult

logger = logging.getLogger(__name__)

def _tail_reason(log_path: Path, returncode: int) -> str:
    """The one-line reason of a failed job, from the end of its log."""
    try:
        lines = [l.strip() for l in log_path.read_text(errors="replace").splitlines() if l.strip()]
    except OSError:
        lines = []
    for line in reversed(lines):
        if line.startswith(pipeline_job.REASON_PREFIX):
            return line[len(pipeline_job.REASON_PREFIX):]
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = str(-returncode)
        return f"pipeline crashed (killed by {name})"
    last = lines[-1] if lines else "no output"
    return f"pipeline crashed (exit {returncode}): {last[:300]}"


class Worker:
    """Threads that take jobs from the queue and run them."""

    def __init__(self, config: NodeConfig, storage: Storage, tracker: StudyTracker, outbox: Outbox,
                 clock: Callable[[], float] = time.time, on_outputs_queued: Callable[[], None] | None = None,
                 executor: Executor | None = None):
        self.on_outputs_queued = on_outputs_queued
        self.config = config
        self.storage = storage
        self.tracker = tracker
        self.outbox = outbox
        self.clock = clock
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self.executor: Executor = executor or LocalSubprocessExecutor()
        self._in_flight: dict[int, tuple[Job, float]] = {}  # job id -> (job, submitted): asynchronous runs
        self._in_flight_lock = threading.Lock()

    def start(self) -> None:
        # an asynchronous executor needs one thread to submit; its runs are concluded by `collect`
        threads = 1 if is_asynchronous(self.executor) else self.config.worker.concurrency
        for i in range(threads):
            t = threading.Thread(target=self._loop, name=f"nodestage-worker-{i}", daemon=True)
            t.start()
            self._threads.append(t)

    def wake(self) -> None:
        self._wake.set()

    def alive(self) -> bool:
        """Every worker thread is running (readiness)."""
        return bool(self._threads) and all(t.is_alive() for t in self._threads)

    def stop(self, timeout: float = 30) -> None:
        """Stop taking jobs; kill running pipeline processes (their jobs go back to the queue)."""
        self._stopping.set()
        self._wake.set()
        if is_asynchronous(self.executor):
            for run in self.executor.abandon_all():  # revoked on the workers; run again at the next start
                with self._in_flight_lock:
                    job, _ = self._in_flight.pop(run.run_id, (None, None))
                if job is not None:
                    shutil.rmtree(run.study_dir.parent, ignore_errors=True)
                    self.tracker.requeue(job, "node stopped while the job ran")
        else:
            self.executor.cancel_all()
        for t in self._threads:
            t.join(timeout=timeout)
        self._threads = []

    def _loop(self) -> None:
        asynchronous = is_asynchronous(self.executor)
        while not self._stopping.is_set():
            if asynchronous and not self.executor.has_room():
                self._wake.wait(timeout=1.0)
                self._wake.clear()
                continue
            try:
                job = self.tracker.claim_next_job()
            except Exception:
                logger.exception("cannot read the job queue")
                job = None
            if job is None:
                self._wake.wait(timeout=1.0)
                self._wake.clear()
                continue
            try:
                if asynchronous:
                    self._submit(job)
                else:
                    self.run(job)
            except Exception as err:  # a bug here must not stop the worker
                logger.exception("study #%d v%d: worker error", job.study_id, job.version)
                self.tracker.finish_job(job, FAILED, f"worker error: {type(err).__name__}: {err}", None)

    # ---------------------------------------------------------------- one job

    def out_dir(self, job: Job) -> Path:
        return self.config.storage.archive_dir / safe_name(job.study_uid) / f"v{job.version}"

    def _snapshot(self, job: Job, dest: Path) -> int:
        n = 0
        for series_uid, sop_uid, src in self.tracker.kept_files(job.study_id):
            target = dest / safe_name(series_uid) / (safe_name(sop_uid) + ".dcm")
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(src, target)
            except FileNotFoundError:
                logger.warning("study #%d: an indexed instance is missing from the spool", job.study_id)
                continue
            except OSError:
                shutil.copy2(src, target)  # another filesystem
            n += 1
        return n

    def run(self, job: Job) -> str:
        """Run one claimed job to its end; returns the job's final state (or QUEUED when stopped)."""
        start = time.monotonic()
        run = self._prepare(job)
        outcome = self.executor.execute(run, on_started=lambda pid: self.tracker.set_job_pid(job, pid))
        return self._conclude(job, run, outcome, time.monotonic() - start)

    def _prepare(self, job: Job) -> PipelineRun:
        """The job's study snapshot, settings and output folder, ready to run."""
        work = self.config.storage.work_dir / f"job-{job.id}"
        out_dir = self.out_dir(job)
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(out_dir, ignore_errors=True)  # partial outputs of an interrupted run
        study_dir = work / "study"
        study_dir.mkdir(parents=True)
        out_dir.mkdir(parents=True)
        n = self._snapshot(job, study_dir)
        settings_path = work / "pipeline-settings.json"
        settings_path.write_text(self.config.pipeline.model_dump_json())
        logger.info("study #%d v%d: RUNNING (job %d, attempt %d, %d instances)", job.study_id, job.version, job.id,
                    job.attempts, n)
        return PipelineRun(job.id, study_dir, out_dir, settings_path, out_dir / "pipeline.log",
                           self.config.worker.timeout_seconds,
                           "DEBUG" if self.config.logging.level == "DEBUG" else "INFO",
                           str(self.config.worker.python) if self.config.worker.python else None)

    def _conclude(self, job: Job, run: PipelineRun, outcome: RunOutcome, elapsed: float) -> str:
        """What the outcome means for the study: DONE (outputs queued), FAILED, or QUEUED again."""
        out_dir, log_path, timeout = run.out_dir, run.log_path, run.timeout_s
        self.storage.bump("job_seconds_total", elapsed)
        shutil.rmtree(run.study_dir.parent, ignore_errors=True)  # the snapshot goes before any state says it ended
        if self._stopping.is_set() and not outcome.timed_out and outcome.returncode != 0:
            self.tracker.requeue(job, "node stopped while the job ran")
            logger.info("study #%d v%d: job stopped by shutdown; re-queued", job.study_id, job.version)
            return JobState.QUEUED
        if outcome.timed_out:
            return self._fail(job, f"timeout: the pipeline ran longer than {timeout:g} s", out_dir)
        if outcome.killed_by:  # killed from outside (OOM killer, an operator): worth another try
            max_restarts = self.config.worker.max_restarts
            if job.attempts <= max_restarts:
                self.tracker.requeue(job, f"killed by {outcome.killed_by} on attempt {job.attempts}; retried")
                logger.warning("study #%d v%d: the pipeline was killed by %s (attempt %d of %d); re-queued",
                               job.study_id, job.version, outcome.killed_by, job.attempts, max_restarts + 1)
                self.wake()
                return JobState.QUEUED
            return self._fail(job, f"killed by {outcome.killed_by} on attempt {job.attempts}; not retried "
                                   f"(worker.max_restarts is {max_restarts})", out_dir)
        if outcome.returncode != 0:
            return self._fail(job, _tail_reason(log_path, outcome.returncode), out_dir)
        return self._succeed(job, out_dir, elapsed)

    # ---------------------------------------------------------------- an asynchronous executor (Celery)

    def _submit(self, job: Job) -> None:
        """Send the job to an asynchronous executor; `collect` (a scheduler tick) concludes it."""
        run = self._prepare(job)
        with self._in_flight_lock:
            self._in_flight[job.id] = (job, time.monotonic())
        try:
            self.executor.submit(run)
        except BaseException:
            with self._in_flight_lock:
                self._in_flight.pop(job.id, None)
            raise

    def collect(self) -> int:
        """Conclude every submitted job whose run has ended; returns how many (the scheduler's tick)."""
        if not is_asynchronous(self.executor):
            return 0
        ended = self.executor.collect()
        for run, outcome in ended:
            with self._in_flight_lock:
                job, started = self._in_flight.pop(run.run_id, (None, None))
            if job is None:
                logger.warning("run %s ended, but no job of this node waits for it", run.run_id)
                continue
            try:
                self._conclude(job, run, outcome, time.monotonic() - started)
            except Exception as err:  # a bug here must not stop the collection of the others
                logger.exception("study #%d v%d: worker error", job.study_id, job.version)
                self.tracker.finish_job(job, FAILED, f"worker error: {type(err).__name__}: {err}", None)
        if ended:
            self.wake()  # room for the next queued job
        return len(ended)

    def in_flight(self) -> int:
        with self._in_flight_lock:
            return len(self._in_flight)

    def _fail(self, job: Job, reason: str, out_dir: Path) -> str:
        self.tracker.finish_job(job, FAILED, reason, out_dir)
        if self.config.mode == "silent" or self.config.ledger_in_clinical_mode:
            append_ledger(self.config.storage.ledger, ledger_failure_row(job.study_uid, job.accession, job.version,
                                                                         reason))
        self.storage.bump("jobs_failed")
        logger.warning("study #%d v%d: FAILED: %s", job.study_id, job.version, reason)
        return FAILED

    def _succeed(self, job: Job, out_dir: Path, elapsed: float) -> str:
        result_path = out_dir / "result.json"
        try:
            result = JobResult.read(result_path)
        except OSError as err:
            return self._fail(job, f"the pipeline wrote no readable result.json ({type(err).__name__})", out_dir)
        except ValueError as err:  # not JSON, or not the JobResult contract (pydantic names the field)
            first = err.errors()[0] if hasattr(err, "errors") else None
            what = f"{'.'.join(map(str, first['loc']))}: {first['msg']}" if first else type(err).__name__
            return self._fail(job, f"result.json does not hold a JobResult ({what})", out_dir)
        files = result.outputs.dicom_files()
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            return self._fail(job, f"outputs listed in result.json are missing: {', '.join(missing)}", out_dir)
        summary = {
            "n_tnm8": result.n_tnm8, "n_tnm9": result.n_tnm9,
            "involved_stations": result.involved_stations, "seconds": round(elapsed, 2),
            "outputs": [str(f) for f in files],
        }
        study = self.tracker.study(job.study_id)
        superseded = study is not None and study["version"] != job.version
        if superseded:
            note = f"superseded by version {study['version']} while running; outputs kept, not sent"
            summary["note"] = note
            logger.info("study #%d v%d: %s", job.study_id, job.version, note)
        else:
            silent = self.config.mode == "silent"
            if silent or self.config.ledger_in_clinical_mode:
                append_ledger(self.config.storage.ledger, ledger_row(result, job.version, result_path))
            if files and self.outbox.targets():
                self.outbox.enqueue(job.id, job.study_id, job.version, files)
        self.tracker.finish_job(job, DONE, None, out_dir, json.dumps(summary))
        self.storage.bump("jobs_done")
        logger.info("study #%d v%d: DONE in %.1f s: N %s (TNM8) / %s (TNM9), %d outputs", job.study_id,
                    job.version, elapsed, result.n_tnm8, result.n_tnm9, len(files))
        logger.debug("study #%d is StudyInstanceUID=%s; outputs in %s", job.study_id, job.study_uid, out_dir)
        if not superseded and files and self.outbox.targets():
            if self.on_outputs_queued is not None:
                self.on_outputs_queued()  # the scheduler sends them now
            else:
                self.outbox.process_due()
        return DONE
