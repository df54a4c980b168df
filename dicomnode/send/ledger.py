"""The silent-mode ledger, ``ledger.csv``: one row per study version, done or failed.

Silent mode sends nothing to clinical destinations and appends a row here instead,
so a study's result can be compared with the clinical read later
(`pipeline/evaluate` reads these rows). Rows are appended under a lock, flushed and
fsynced; an older ledger keeps its own header.
"""

from __future__ import annotations

import csv
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

from pipeline.job_result import JobResult

LEDGER_COLUMNS = [
    "recorded_at", "study_instance_uid", "accession_number", "version", "n_tnm8", "n_tnm9",
    "involved_stations", "primary_side", "backends", "timings_s", "outputs", "result_json",
    "status", "failure_reason", "equivocal_stations", "n_tnm8_if_equivocal_positive", "n_tnm9_if_equivocal_positive",
]
LEDGER_DONE, LEDGER_FAILED = "done", "failed"

_ledger_lock = threading.Lock()


def ledger_row(result: JobResult | dict[str, Any], version: int, result_path: Path,
               recorded_at: float | None = None) -> dict[str, str]:
    """One ledger row from a typed JobResult (a result.json dict is validated into one first)."""
    if not isinstance(result, JobResult):
        result = JobResult.model_validate(result)
    return {
        "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(recorded_at or time.time())),
        "study_instance_uid": result.study_instance_uid,
        "accession_number": result.accession_number,
        "version": str(version),
        "n_tnm8": result.n_tnm8 or "",
        "n_tnm9": result.n_tnm9 or "",
        "involved_stations": ";".join(result.involved_stations),
        "primary_side": result.primary_side or "",
        "backends": json.dumps({k: f"{v.name} {v.version}".strip() for k, v in result.backends.items()},
                               sort_keys=True),
        "timings_s": json.dumps(result.timings_s, sort_keys=True),
        "outputs": json.dumps(result.outputs.model_dump(exclude_none=True), sort_keys=True),
        "result_json": str(result_path),
        "status": LEDGER_DONE,
        "failure_reason": "",
        "equivocal_stations": ";".join(result.equivocal_stations),
        "n_tnm8_if_equivocal_positive": result.n_tnm8_if_equivocal_positive or "",
        "n_tnm9_if_equivocal_positive": result.n_tnm9_if_equivocal_positive or "",
    }


def ledger_failure_row(study_uid: str, accession: str, version: int, reason: str,
                       recorded_at: float | None = None) -> dict[str, str]:
    """A ledger row for a study version the pipeline failed: evaluation counts it as a failure, not missing."""
    return {"recorded_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(recorded_at or time.time())),
            "study_instance_uid": study_uid, "accession_number": accession, "version": str(version),
            "status": LEDGER_FAILED, "failure_reason": " ".join(reason.split())}


def append_ledger(path: Path, row: dict[str, str]) -> None:
    """Append one row (header first when the file is new), flushed and fsynced."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _ledger_lock:
        new = not path.exists() or path.stat().st_size == 0
        # an older ledger keeps its own header: rows stay aligned with it (new columns are left out)
        columns = LEDGER_COLUMNS if new else (_header(path) or LEDGER_COLUMNS)
        with open(path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow({k: row.get(k, "") for k in columns})
            f.flush()
            os.fsync(f.fileno())


def _header(path: Path) -> list[str]:
    with open(path, newline="") as f:
        return next(csv.reader(f), [])


def read_ledger(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))
