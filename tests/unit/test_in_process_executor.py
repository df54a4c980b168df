"""The in-process runner of the scale-out workers: the same exit codes and reason lines as the child."""

from __future__ import annotations

import logging

import pytest

from dicomnode.run import pipeline_job
from dicomnode.run.celery_app import RUNNER_IN_PROCESS, RUNNER_SUBPROCESS, runner_from_env
from dicomnode.run.executor import PipelineRun
from dicomnode.run.in_process import InProcessExecutor


def _run(tmp_path, settings_text: str) -> PipelineRun:
    settings = tmp_path / "settings.json"
    settings.write_text(settings_text)
    (tmp_path / "study").mkdir()
    return PipelineRun(7, tmp_path / "study", tmp_path / "out", settings, tmp_path / "out" / "pipeline.log", 60)


def test_bad_settings_fail_with_the_childs_reason_line(tmp_path):
    run = _run(tmp_path, "{not json")
    handlers = list(logging.getLogger().handlers)
    pids = []
    outcome = InProcessExecutor().execute(run, on_started=pids.append)
    assert outcome.returncode == pipeline_job.EXIT_UNPROCESSABLE and not outcome.timed_out
    last = run.log_path.read_text().splitlines()[-1]
    assert last.startswith(pipeline_job.REASON_PREFIX + "bad pipeline settings in settings.json")
    assert logging.getLogger().handlers == handlers, "the run's log handler is removed afterwards"
    assert pids and pids[0] > 0


def test_an_empty_study_is_refused_with_its_reason_and_the_log_holds_the_run(tmp_path):
    run = _run(tmp_path, "{}")
    outcome = InProcessExecutor().execute(run)
    assert outcome.returncode == pipeline_job.EXIT_UNPROCESSABLE
    text = run.log_path.read_text()
    reason = text.splitlines()[-1]
    assert reason.startswith(pipeline_job.REASON_PREFIX) and len(reason) > len(pipeline_job.REASON_PREFIX)
    assert len(text.splitlines()) >= 2, "the pipeline's own log lines are captured before the reason"


def test_runner_comes_from_the_environment():
    assert runner_from_env({}) == RUNNER_IN_PROCESS
    assert runner_from_env({"NODESTAGE_CELERY_RUNNER": "subprocess"}) == RUNNER_SUBPROCESS
    with pytest.raises(ValueError, match="expected one of in-process, subprocess"):
        runner_from_env({"NODESTAGE_CELERY_RUNNER": "thread"})
