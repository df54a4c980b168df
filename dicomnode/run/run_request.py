"""One pipeline run described by references only, and its result committed once: ``<out>.partial`` -> ``<out>``.

The scale-out executors (`dicomnode.run.celery_app`, `nodestage batch`) send a `RunRequest`
between machines: paths on shared storage (``file://`` URIs or plain absolute paths), never
DICOM bytes. A run writes into ``<out>.partial`` and renames it to ``<out>`` only when it
has ended, with ``manifest.json`` inside; an ``<out>`` holding a manifest is complete, so a
redelivered request returns that manifest instead of running again. No Celery here: the
local batch uses the same code without the extra installed.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlparse

from dicomnode.run import pipeline_job
from dicomnode.run.executor import Executor, LocalSubprocessExecutor, PipelineRun, RunOutcome

logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
LOG_NAME = "pipeline.log"
PARTIAL_SUFFIX = ".partial"


class ReferenceError_(ValueError):
    """A reference this worker cannot open (an object-store URI, a relative path)."""


def to_path(ref: str | Path) -> Path:
    """A ``file://`` URI or an absolute path -> Path; other schemes are refused with their name."""
    text = str(ref)
    parsed = urlparse(text)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise ReferenceError_(f"{text}: a file:// URI on another host ({parsed.netloc}); mount it at the same path")
        path = Path(unquote(parsed.path))
    elif parsed.scheme and len(parsed.scheme) > 1:  # (a one-letter scheme would be a Windows drive)
        raise ReferenceError_(f"{text}: {parsed.scheme}:// references are not supported by this worker "
                              "(only file:// on shared storage)")
    else:
        path = Path(text)
    if not path.is_absolute():
        raise ReferenceError_(f"{text}: a reference must be absolute (shared storage, the same path on every host)")
    return path


def to_uri(path: Path) -> str:
    return Path(path).resolve().as_uri()


@dataclass(frozen=True)
class RunRequest:
    """What a worker needs to run one study: references and limits, JSON-serialisable for the broker."""

    run_id: str
    study: str  # file:// URI of the study folder
    out: str  # file:// URI of the result folder; the run writes <out>.partial first
    settings: str  # file:// URI of a PipelineSettings JSON or a config.yaml
    timeout_s: float
    log_level: str = "INFO"
    python: str | None = None
    max_deliveries: int = 3

    def to_message(self) -> dict:
        return asdict(self)

    @classmethod
    def from_message(cls, message: dict) -> RunRequest:
        known = {k: message[k] for k in cls.__dataclass_fields__ if k in message}
        return cls(**known)

    @property
    def out_dir(self) -> Path:
        return to_path(self.out)


@dataclass(frozen=True)
class Manifest:
    """What a finished run left in ``<out>``: how it ended and which files it wrote (relative to out_dir)."""

    run_id: str
    returncode: int | None
    seconds: float
    out_dir: str
    files: list[str] = field(default_factory=list)
    timed_out: bool = False
    reason: str | None = None
    deliveries: int | None = None
    hostname: str = ""
    pid: int | None = None  # the process that ran the pipeline: the worker's own when in process
    runner: str = ""

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Manifest:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})

    def outcome(self) -> RunOutcome:
        return RunOutcome(self.returncode, self.timed_out, self.seconds)


def partial_dir(out_dir: Path) -> Path:
    return out_dir.with_name(out_dir.name + PARTIAL_SUFFIX)


def read_manifest(out_dir: Path) -> Manifest | None:
    """The manifest of a complete ``<out>``; None while it is absent or unreadable (not complete)."""
    try:
        return Manifest.from_dict(json.loads((out_dir / MANIFEST_NAME).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def failure_reason(log_path: Path, outcome: RunOutcome, timeout_s: float) -> str | None:
    """The one-line reason of a run that did not succeed (the job's own reason line first)."""
    if outcome.returncode == 0 and not outcome.timed_out:
        return None
    if outcome.timed_out:
        return f"timeout: the pipeline ran longer than {timeout_s:g} s"
    from dicomnode.run.worker import _tail_reason  # the node's own wording, one place

    return _tail_reason(log_path, outcome.returncode if outcome.returncode is not None else -9)


def commit(partial: Path, out_dir: Path, manifest: Manifest) -> Manifest:
    """manifest.json into ``<out>.partial``, then the rename: ``<out>`` appears complete or not at all."""
    (partial / MANIFEST_NAME).write_text(json.dumps(manifest.to_dict(), indent=2))
    if out_dir.exists():  # an empty or interrupted <out> (no manifest): replaced
        shutil.rmtree(out_dir)
    os.replace(partial, out_dir)
    return manifest


def _relocate(value, old: str, new: str):
    if isinstance(value, str):
        return new + value[len(old):] if value == old or value.startswith(old + os.sep) else value
    if isinstance(value, list):
        return [_relocate(v, old, new) for v in value]
    if isinstance(value, dict):
        return {k: _relocate(v, old, new) for k, v in value.items()}
    return value


def relocate_result_json(partial: Path, out_dir: Path) -> None:
    """result.json names its outputs by absolute path: point them at ``<out>``, where they will be."""
    path = partial / "result.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return  # no result (a failed run): nothing to point
    path.write_text(json.dumps(_relocate(data, str(partial), str(out_dir)), indent=2, default=str),
                    encoding="utf-8")


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def write_failure(request: RunRequest, reason: str, deliveries: int | None = None) -> Manifest:
    """A complete ``<out>`` for a run refused without running (poison): its reason in the log and manifest."""
    out_dir = request.out_dir
    partial = partial_dir(out_dir)
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    (partial / LOG_NAME).write_text(pipeline_job.REASON_PREFIX + " ".join(reason.split()) + "\n")
    manifest = Manifest(request.run_id, pipeline_job.EXIT_UNPROCESSABLE, 0.0, str(out_dir), [LOG_NAME],
                        reason=reason, deliveries=deliveries, hostname=os.uname().nodename)
    return commit(partial, out_dir, manifest)


def run_request(request: RunRequest, executor: Executor | None = None,
                deliveries: int | None = None) -> tuple[Manifest | None, RunOutcome]:
    """Run the pipeline child into ``<out>.partial`` and commit it; returns (manifest, outcome).

    A child killed by a signal from outside (the OOM killer, an operator) commits nothing and
    returns (None, outcome): the caller decides whether that delivery is retried."""
    study, out_dir, settings = to_path(request.study), request.out_dir, to_path(request.settings)
    if not study.is_dir():
        raise ReferenceError_(f"{request.study}: no such study folder on this worker")
    partial = partial_dir(out_dir)
    shutil.rmtree(partial, ignore_errors=True)  # an earlier delivery's leftovers
    partial.mkdir(parents=True)
    executor = executor or LocalSubprocessExecutor()
    run = PipelineRun(0, study, partial, settings, partial / LOG_NAME, request.timeout_s, request.log_level,
                      request.python)
    start = time.monotonic()
    pids: list[int] = []
    outcome = executor.execute(run, on_started=pids.append)
    if outcome.killed_by or outcome.cancelled:
        return None, outcome
    reason = failure_reason(partial / LOG_NAME, outcome, request.timeout_s)
    relocate_result_json(partial, out_dir)
    manifest = Manifest(request.run_id, outcome.returncode, round(time.monotonic() - start, 3), str(out_dir),
                        _files(partial), outcome.timed_out, reason, deliveries, os.uname().nodename,
                        pids[0] if pids else None, type(executor).__name__)
    return commit(partial, out_dir, manifest), outcome
