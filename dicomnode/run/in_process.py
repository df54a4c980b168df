"""`InProcessExecutor`: the pipeline runs in the calling process, so its loaded models stay for the next study.

The node runs each study in a child process (`LocalSubprocessExecutor`): a crash or a leak
stays in that child, and every study starts clean. A GPU worker of the scale-out
(`dicomnode.run.celery_app`, runner ``in-process``) trades that for speed: TotalSegmentator
and nnU-Net models stay loaded in `pipeline.model_cache` across the studies its Celery pool
process runs. Isolation then comes from Celery: a pool process that crashes or is killed
gives its message back (``task_reject_on_worker_lost``, with the delivery counter against a
poison study), and the task's hard time limit kills a study that runs too long, so this
executor has no timeout of its own and cannot cancel a run.

The run's log goes to `PipelineRun.log_path` as the child's would, with the same
``nodestage-reason:`` line when the study cannot be processed.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import traceback
from typing import Callable

from dicomnode.app.logs import quiet_libraries
from dicomnode.run import pipeline_job
from dicomnode.run.executor import PipelineRun, RunOutcome

logger = logging.getLogger(__name__)

EXIT_CRASHED = 1  # what a child process that raised would have exited with


class InProcessExecutor:
    """Run one study at a time in this process, its log captured to the run's log file."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # one study at a time: the model cache and the root logger are shared

    def execute(self, run: PipelineRun, on_started: Callable[[int], None] | None = None) -> RunOutcome:
        with self._lock:
            if on_started is not None:
                on_started(os.getpid())
            start = time.monotonic()
            run.log_path.parent.mkdir(parents=True, exist_ok=True)
            handler = logging.FileHandler(run.log_path, mode="w", encoding="utf-8")
            handler.setFormatter(logging.Formatter(pipeline_job.LOG_FORMAT))
            level = logging.getLevelName(run.log_level.upper())
            handler.setLevel(level)
            root = logging.getLogger()
            saved_level = root.level
            root.addHandler(handler)
            root.setLevel(min(level, saved_level) if saved_level else level)
            quiet_libraries(run.log_level.upper())
            try:
                code, reason = pipeline_job.run_job(run.study_dir, run.out_dir, run.settings_path)
            except Exception as err:  # a bug in the pipeline: this study fails, the worker process goes on
                logger.error("pipeline crashed in process:\n%s", traceback.format_exc())
                code, reason = EXIT_CRASHED, f"pipeline crashed: {type(err).__name__}: {err}"
            finally:
                root.removeHandler(handler)
                root.setLevel(saved_level)
                handler.close()
            if reason is not None:
                with open(run.log_path, "a", encoding="utf-8") as log:
                    log.write(pipeline_job.REASON_PREFIX + " ".join(reason.split()) + "\n")
            return RunOutcome(code, False, time.monotonic() - start)

    def cancel(self, run_id: int) -> None:
        """Not possible in process: the Celery task is revoked with terminate, which kills this process."""
        logger.debug("run %s runs in process; it stops when its worker process is terminated", run_id)

    def cancel_all(self) -> None:
        pass
