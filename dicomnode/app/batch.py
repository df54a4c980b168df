"""`nodestage batch ARCHIVE_DIR --out DIR`: a retrospective run over an archive, each study once, resumable.

The archive is a folder tree as an export or a PACS query leaves it; studies are found by
their StudyInstanceUID (each study's folder is the deepest one holding all its files; where
a folder mixes studies, the study's files are hard-linked into OUT/inputs/<study>/). Each
study runs through the same `RunRequest` as the Celery workers (queue ``retro``) or, with
``--executor local``, as local pipeline processes. Results go to OUT/results/<study>/
(written as ``.partial`` and renamed when complete), and one row per study to
OUT/ledger.csv with the node's ledger columns, so `nodestage evaluate` reads it.

The ledger is the batch's state: a rerun skips every study it already holds (done or
failed), and a study whose result folder is complete but whose row was not written (the
batch was killed in between) is recorded without running again.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from dicomnode.index.storage import safe_name
from dicomnode.run.run_request import Manifest, RunRequest, read_manifest, run_request, to_uri
from dicomnode.send.ledger import append_ledger, ledger_failure_row, ledger_row, read_ledger

logger = logging.getLogger(__name__)

LEDGER_NAME = "ledger.csv"
RESULTS_DIR = "results"
INPUTS_DIR = "inputs"
SETTINGS_NAME = "pipeline-settings.json"
LOCK_NAME = ".batch.lock"
BATCH_VERSION = 1  # the ledger's version column: one run per study in a batch
DEFAULT_TIMEOUT_S = 3600.0
DEFAULT_CELERY_IN_FLIGHT = 64
POLL_S = 0.5


class BatchError(ValueError):
    """The batch cannot start (no such archive, another batch holds OUT)."""


@dataclass(frozen=True)
class ArchiveStudy:
    study_uid: str
    accession: str
    folder: Path  # the deepest folder holding every file of the study
    files: tuple[Path, ...]
    mixed: bool = False  # the folder also holds other studies' files

    @property
    def key(self) -> str:
        return safe_name(self.study_uid)


def _header(path: Path) -> tuple[str, str] | None:
    """(StudyInstanceUID, AccessionNumber) of a DICOM file; None for anything else."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["StudyInstanceUID", "AccessionNumber"])
    except (InvalidDicomError, OSError, ValueError, EOFError, AttributeError, KeyError, TypeError):
        return None
    uid = str(ds.get("StudyInstanceUID", "") or "")
    return (uid, str(ds.get("AccessionNumber", "") or "")) if uid else None


def group_studies(headers: Iterable[tuple[Path, str, str]]) -> list[ArchiveStudy]:
    """(file, study UID, accession) -> one ArchiveStudy per UID, sorted by UID (a stable order to resume in)."""
    files: dict[str, list[Path]] = {}
    accession: dict[str, str] = {}
    for path, uid, acc in headers:
        files.setdefault(uid, []).append(path)
        accession.setdefault(uid, acc)
    folders = {uid: Path(os.path.commonpath([str(p.parent) for p in paths])) for uid, paths in files.items()}
    studies = []
    for uid in sorted(files):
        folder = folders[uid]
        mixed = any(other != uid and any(_inside(p, folder) for p in files[other]) for other in files)
        studies.append(ArchiveStudy(uid, accession[uid], folder, tuple(sorted(files[uid])), mixed))
    return studies


def _inside(path: Path, folder: Path) -> bool:
    return path.parent == folder or folder in path.parents


def find_studies(archive: Path, exclude: Path | None = None) -> list[ArchiveStudy]:
    """Every study under `archive` (files read up to their headers; non-DICOM files ignored)."""
    exclude = exclude.resolve() if exclude is not None else None
    headers = []
    for root, dirs, names in os.walk(archive):
        here = Path(root)
        if exclude is not None and (here.resolve() == exclude or exclude in here.resolve().parents):
            dirs[:] = []
            continue
        dirs.sort()
        for name in sorted(names):
            found = _header(here / name)
            if found is not None:
                headers.append((here / name, *found))
    return group_studies(headers)


def finished_studies(ledger: Path) -> set[str]:
    """StudyInstanceUIDs the batch's ledger already records (done or failed): a rerun skips them."""
    if not ledger.is_file():
        return set()
    return {row["study_instance_uid"] for row in read_ledger(ledger) if row.get("study_instance_uid")}


def study_input(study: ArchiveStudy, out: Path) -> Path:
    """The folder the pipeline reads: the study's own, or its files linked apart when the folder mixes studies."""
    if not study.mixed:
        return study.folder
    dest = out / INPUTS_DIR / study.key
    for i, src in enumerate(study.files):
        target = dest / f"{i:06d}.dcm"
        if target.exists():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(src, target)
        except OSError:
            import shutil

            shutil.copy2(src, target)
    return dest


def ledger_row_for(study: ArchiveStudy, manifest: Manifest) -> dict[str, str]:
    """The node's ledger row for one study's manifest: its result when it succeeded, else the reason."""
    from pipeline.job_result import JobResult

    if manifest.ok:
        result_path = Path(manifest.out_dir) / "result.json"
        try:
            return ledger_row(JobResult.read(result_path), BATCH_VERSION, result_path)
        except (OSError, ValueError) as err:
            return ledger_failure_row(study.study_uid, study.accession, BATCH_VERSION,
                                      f"the pipeline wrote no readable result.json ({type(err).__name__})")
    return ledger_failure_row(study.study_uid, study.accession, BATCH_VERSION,
                              manifest.reason or f"pipeline ended with {manifest.returncode}")


@dataclass
class BatchProgress:
    """Counts for the progress line: done, failed, remaining, rate."""

    total: int
    skipped: int = 0
    done: int = 0
    failed: int = 0
    started: float = field(default_factory=time.monotonic)

    @property
    def remaining(self) -> int:
        return self.total - self.skipped - self.done - self.failed

    def rate_per_hour(self, now: float | None = None) -> float:
        elapsed = (now if now is not None else time.monotonic()) - self.started
        finished = self.done + self.failed
        return 3600.0 * finished / elapsed if elapsed > 0 and finished else 0.0

    def line(self, now: float | None = None) -> str:
        return (f"{self.done} done, {self.failed} failed, {self.remaining} remaining"
                f"{f', {self.skipped} skipped (already in the ledger)' if self.skipped else ''}, "
                f"{self.rate_per_hour(now):.1f} studies/h")

    def to_dict(self) -> dict:
        return {"total": self.total, "skipped": self.skipped, "done": self.done, "failed": self.failed,
                "remaining": self.remaining, "studies_per_hour": round(self.rate_per_hour(), 1),
                "seconds": round(time.monotonic() - self.started, 1)}


def batch_task_id(out: Path, study: ArchiveStudy) -> str:
    """Stable across reruns of the same OUT: a resubmitted study is the same task (its result is reused)."""
    tag = hashlib.sha1(str(out.resolve()).encode()).hexdigest()[:10]
    return f"nodestage-batch-{tag}-{study.key}"


@dataclass(frozen=True)
class BatchOptions:
    executor: str = "local"  # local | celery
    workers: int | None = None  # local: pipeline processes at once; celery: studies queued or running at once
    timeout_s: float = DEFAULT_TIMEOUT_S
    settings_json: str | None = None  # PipelineSettings JSON; None = the defaults
    celery: object | None = None  # dicomnode.run.celery_app.CelerySettings
    max_deliveries: int = 3
    log_level: str = "INFO"


class _Recorder:
    """Writes each finished study's ledger row once, and the progress line."""

    def __init__(self, ledger: Path, progress: BatchProgress, on_progress: Callable[[str], None] | None):
        self.ledger, self.progress, self.on_progress = ledger, progress, on_progress
        self._lock = threading.Lock()

    def record(self, study: ArchiveStudy, manifest: Manifest) -> None:
        row = ledger_row_for(study, manifest)
        with self._lock:
            append_ledger(self.ledger, row)
            if row["status"] == "done":
                self.progress.done += 1
            else:
                self.progress.failed += 1
                logger.warning("batch: a study FAILED: %s", row["failure_reason"])
            self.report()

    def report(self) -> None:
        line = self.progress.line()
        logger.info("batch: %s", line)
        if self.on_progress is not None:
            self.on_progress(line)


def _request(study: ArchiveStudy, out: Path, settings: Path, options: BatchOptions) -> RunRequest:
    return RunRequest(study.key, to_uri(study_input(study, out)), to_uri(out / RESULTS_DIR / study.key),
                      to_uri(settings), options.timeout_s, options.log_level, None, options.max_deliveries)


def run_batch(archive: Path, out: Path, options: BatchOptions = BatchOptions(),
              on_progress: Callable[[str], None] | None = None) -> BatchProgress:
    """Run every study of `archive` not yet in OUT/ledger.csv; returns the final counts."""
    archive, out = Path(archive), Path(out)
    if not archive.is_dir():
        raise BatchError(f"{archive}: no such archive folder")
    out.mkdir(parents=True, exist_ok=True)
    lock = open(out / LOCK_NAME, "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise BatchError(f"{out}: another `nodestage batch` is writing here") from None
    try:
        return _run_locked(archive, out, options, on_progress)
    finally:
        lock.close()


def _run_locked(archive: Path, out: Path, options: BatchOptions,
                on_progress: Callable[[str], None] | None) -> BatchProgress:
    from pipeline.settings import PipelineSettings

    settings = out / SETTINGS_NAME
    settings.write_text(options.settings_json or PipelineSettings().model_dump_json())
    studies = find_studies(archive, exclude=out)
    ledger = out / LEDGER_NAME
    finished = finished_studies(ledger)
    todo = [s for s in studies if s.study_uid not in finished]
    progress = BatchProgress(total=len(studies), skipped=len(studies) - len(todo))
    recorder = _Recorder(ledger, progress, on_progress)
    logger.info("batch: %d studies in the archive, %d already in the ledger", len(studies), progress.skipped)
    recorder.report()
    runnable = []
    for study in todo:  # complete results whose ledger row was not written: recorded, not run again
        existing = read_manifest(out / RESULTS_DIR / study.key)
        if existing is not None:
            recorder.record(study, existing)
        else:
            runnable.append(study)
    if options.executor == "celery":
        _run_celery(runnable, out, settings, options, recorder)
    else:
        _run_local(runnable, out, settings, options, recorder)
    return progress


def _run_local(studies: list[ArchiveStudy], out: Path, settings: Path, options: BatchOptions,
               recorder: _Recorder) -> None:
    from dicomnode.run.executor import LocalSubprocessExecutor

    executor = LocalSubprocessExecutor()

    def one(study: ArchiveStudy) -> None:
        manifest, outcome = run_request(_request(study, out, settings, options), executor)
        if manifest is None:
            if outcome.cancelled:
                return
            manifest = Manifest(study.key, outcome.returncode, outcome.seconds, str(out / RESULTS_DIR / study.key),
                                reason=f"pipeline killed by {outcome.killed_by}")
        recorder.record(study, manifest)

    pool = ThreadPoolExecutor(max_workers=max(1, options.workers or 1), thread_name_prefix="nodestage-batch")
    futures = []
    try:
        futures = [pool.submit(one, s) for s in studies]
        for f in futures:
            f.result()
    except BaseException:  # Ctrl-C: stop the pipeline children; their studies are not recorded
        for f in futures:
            f.cancel()
        executor.cancel_all()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _run_celery(studies: list[ArchiveStudy], out: Path, settings: Path, options: BatchOptions,
                recorder: _Recorder) -> None:
    from dicomnode.run.celery_app import QUEUE_RETRO, TASK_NAME, CelerySettings, make_app, release_result

    celery_settings = options.celery if isinstance(options.celery, CelerySettings) else CelerySettings.from_env()
    app = make_app(celery_settings)
    in_flight_max = max(1, options.workers or DEFAULT_CELERY_IN_FLIGHT)
    queue = list(studies)
    in_flight: dict[str, tuple[ArchiveStudy, object]] = {}
    while queue or in_flight:
        while queue and len(in_flight) < in_flight_max:
            study = queue.pop(0)
            task_id = batch_task_id(out, study)
            result = app.send_task(TASK_NAME, args=[_request(study, out, settings, options).to_message()],
                                   task_id=task_id, queue=QUEUE_RETRO, time_limit=celery_settings.task_time_limit_s)
            in_flight[task_id] = (study, result)
        ready = [tid for tid, (_, r) in in_flight.items() if r.ready()]
        for tid in ready:
            study, result = in_flight.pop(tid)
            value = result.get(propagate=False)
            if isinstance(value, dict):
                manifest = Manifest.from_dict(value)
            else:  # the task raised (a reference the worker cannot open, a hard time limit)
                manifest = Manifest(study.key, None, 0.0, str(out / RESULTS_DIR / study.key),
                                    reason=f"Celery task failed: {type(value).__name__}: {value}")
            recorder.record(study, manifest)
            result.forget()
            release_result(app, result)
        if not ready:
            time.sleep(POLL_S)
