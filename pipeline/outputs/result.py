"""result.json: the JSON-able part of a StudyResult (`StudyResult.to_dict()`)."""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.job_result import JobResult
from pipeline.study_result import StudyResult


def write_result_json(result: StudyResult, path: str | Path) -> Path:
    """Write `result.to_dict()` as indented UTF-8 JSON, atomically (temp file, then rename)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    data = result.to_dict()
    JobResult.model_validate(data)  # the node's contract: fail here, with the field named, not in the node
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False), encoding="utf-8")
    tmp.replace(out)
    return out
