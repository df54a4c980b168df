"""Where a pipeline run executes: the seam between the worker's job bookkeeping and a process.

The worker decides *which* job runs and what its outcome means for the study; an `Executor`
only runs ``python -m dicomnode.run.pipeline_job STUDY OUT SETTINGS`` somewhere and reports how it
ended. `LocalSubprocessExecutor` runs it as a child process group on this machine; the
scale-out work adds executors that run it elsewhere, behind the same interface.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

from dicomnode.run import pipeline_job

logger = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[2]  # the folder that holds dicomnode/ and pipeline/


@dataclass(frozen=True)
class PipelineRun:
    """One run of the pipeline on a study snapshot."""

    run_id: int
    study_dir: Path
    out_dir: Path
    settings_path: Path
    log_path: Path
    timeout_s: float
    log_level: str = "INFO"
    python: str | None = None


@dataclass(frozen=True)
class RunOutcome:
    """How a run ended: its exit code, or the signal that killed it, or the timeout."""

    returncode: int | None
    timed_out: bool
    seconds: float
    cancelled: bool = False

    @property
    def killed_by(self) -> str | None:
        """The signal's name when the process was killed by one (not by our timeout or cancel)."""
        if self.returncode is None or self.returncode >= 0 or self.timed_out or self.cancelled:
            return None
        try:
            return signal.Signals(-self.returncode).name
        except ValueError:
            return f"signal {-self.returncode}"


class Executor(Protocol):
    def execute(self, run: PipelineRun, on_started: Callable[[int], None] | None = None) -> RunOutcome:
        """Run to the end (or the timeout, or `cancel`); `on_started` gets the process id."""

    def cancel(self, run_id: int) -> None:
        """Stop a run now; its `execute` returns with `cancelled` set."""

    def cancel_all(self) -> None:
        """Stop every run (node shutdown)."""


class AsynchronousExecutor(Executor, Protocol):
    """An executor whose runs end elsewhere: `submit` returns at once, `collect` gives the ended runs."""

    asynchronous: bool

    def has_room(self) -> bool:
        """Another run may be submitted now."""

    def submit(self, run: PipelineRun) -> None:
        """Start the run; its outcome comes from a later `collect`."""

    def collect(self) -> list[tuple[PipelineRun, RunOutcome]]:
        """The runs that have ended since the last call, with their outcomes (never blocks on a run)."""

    def abandon_all(self) -> list[PipelineRun]:
        """Stop every run in flight and forget it (node shutdown); returns them."""


def is_asynchronous(executor: object) -> bool:
    return bool(getattr(executor, "asynchronous", False))


class LocalSubprocessExecutor:
    """A child process group per run, on this machine, with a hard timeout."""

    def __init__(self) -> None:
        self._procs: dict[int, subprocess.Popen] = {}
        self._cancelled: set[int] = set()
        self._lock = threading.Lock()

    def execute(self, run: PipelineRun, on_started: Callable[[int], None] | None = None) -> RunOutcome:
        cmd = [run.python or sys.executable, "-m", "dicomnode.run.pipeline_job", str(run.study_dir), str(run.out_dir),
               str(run.settings_path)]
        env = dict(os.environ, PYTHONUNBUFFERED="1",
                   **{pipeline_job.LOG_LEVEL_ENV: run.log_level, pipeline_job.PARENT_PID_ENV: str(os.getpid())})
        env["PYTHONPATH"] = os.pathsep.join([str(PROJECT_ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH")
                                                                    else []))
        start = time.monotonic()
        with open(run.log_path, "wb") as log:
            # No preexec_fn (unsafe in a threaded parent): the child arms its parent-death signal itself.
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                    start_new_session=True, cwd=run.study_dir.parent)
            with self._lock:
                self._procs[run.run_id] = proc
            if on_started is not None:
                on_started(proc.pid)
            timed_out = False
            try:
                proc.wait(timeout=run.timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
                kill_group(proc)
                proc.wait()
            finally:
                with self._lock:
                    self._procs.pop(run.run_id, None)
                    cancelled = run.run_id in self._cancelled
                    self._cancelled.discard(run.run_id)
        return RunOutcome(proc.returncode, timed_out, time.monotonic() - start, cancelled)

    def cancel(self, run_id: int) -> None:
        with self._lock:
            proc = self._procs.get(run_id)
            if proc is not None:
                self._cancelled.add(run_id)
        if proc is not None:
            kill_group(proc)

    def cancel_all(self) -> None:
        with self._lock:
            ids = list(self._procs)
        for run_id in ids:
            self.cancel(run_id)


def kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def kill_orphan(pid: int) -> bool:
    """Kill the process group of a pipeline job left by a crashed node (checked by its command line)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return False
    if b"dicomnode.run.pipeline_job" not in cmdline:
        return False
    try:
        os.killpg(pid, signal.SIGKILL)
    except OSError:
        return False
    logger.warning("killed pipeline process %d left running by a previous node", pid)
    return True
