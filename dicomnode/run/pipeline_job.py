"""One pipeline job, run by the worker in a subprocess (the executor seam of DESIGN.md §2).

    python -m dicomnode.run.pipeline_job STUDY_DIR OUT_DIR SETTINGS

SETTINGS is a JSON file of `PipelineSettings` (what the worker writes), or a
config.yaml whose ``pipeline:`` section is used. The job reads only STUDY_DIR and
writes only under OUT_DIR (``result.json``, ``dicom/...``).

Exit status: 0 when OUT_DIR/result.json is written; 2 when the study cannot be
processed (a `PipelineError`); 3 when the pipeline cannot be imported; anything
else is a crash. For 2 and 3 the last line on stderr is ``nodestage-reason: <one
line>``; the worker records that line as the study's reason.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
from pathlib import Path

from dicomnode.app.logs import quiet_libraries

REASON_PREFIX = "nodestage-reason: "
EXIT_UNPROCESSABLE = 2
EXIT_UNAVAILABLE = 3
LOG_LEVEL_ENV = "NODESTAGE_JOB_LOG_LEVEL"
PARENT_PID_ENV = "NODESTAGE_PARENT_PID"  # the node's pid: the child arms its own parent-death signal
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _reason(message: str) -> None:
    sys.stderr.write(REASON_PREFIX + " ".join(str(message).split()) + "\n")
    sys.stderr.flush()


def load_settings(path: Path):
    from pipeline.settings import PipelineSettings, load_pipeline_settings

    if path.suffix.lower() == ".json":
        return PipelineSettings.model_validate_json(path.read_text())
    return load_pipeline_settings(path)


def die_with_parent() -> None:
    """Get SIGKILL when the node dies (Linux PR_SET_PDEATHSIG), armed here in the child itself.

    The node used to arm it through Popen's preexec_fn, which Python warns can deadlock in a
    threaded parent. If the node died before this line, the child was re-parented: it exits."""
    parent = os.environ.get(PARENT_PID_ENV)
    if not parent:
        return
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the node's start-up orphan check still applies
        return
    if os.getppid() != int(parent):
        os._exit(EXIT_UNAVAILABLE)


def run_job(study_dir: Path, out_dir: Path, settings_path: Path) -> tuple[int, str | None]:
    """Run the pipeline on one study in this process: (exit status, one-line reason or None).

    The subprocess entry point (`main`) and the scale-out workers' in-process runner
    (`dicomnode.run.in_process`) share it, so a study means the same in both."""
    try:
        from pipeline.errors import PipelineError
    except ImportError as err:
        return EXIT_UNAVAILABLE, f"the pipeline package cannot be imported: {err}"
    try:
        settings = load_settings(settings_path)
    except Exception as err:
        return EXIT_UNPROCESSABLE, f"bad pipeline settings in {settings_path.name}: {err}"
    try:
        from pipeline.run import run_study
    except ImportError as err:
        return EXIT_UNAVAILABLE, f"pipeline.run.run_study is not available: {err}"
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        result = run_study(study_dir, settings, out_dir)
    except PipelineError as err:
        return EXIT_UNPROCESSABLE, str(err) or type(err).__name__
    result_json = out_dir / "result.json"
    if not result_json.is_file():  # the contract says run_study writes it; be safe
        result_json.write_text(json.dumps(result.to_dict(), indent=2, default=str))
    return 0, None


def main(argv: list[str] | None = None) -> int:
    die_with_parent()
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 3:
        _reason("usage: python -m dicomnode.run.pipeline_job STUDY_DIR OUT_DIR SETTINGS")
        return EXIT_UNPROCESSABLE
    study_dir, out_dir, settings_path = (Path(a) for a in args)
    level = os.environ.get(LOG_LEVEL_ENV, "INFO").upper()
    logging.basicConfig(level=level, stream=sys.stderr, format=LOG_FORMAT)
    quiet_libraries(level)
    code, reason = run_job(study_dir, out_dir, settings_path)
    if reason is not None:
        _reason(reason)
    return code


if __name__ == "__main__":
    sys.exit(main())
