"""result.json: the JSON-able part of a StudyResult (`StudyResult.to_dict()`)."""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.study_result import StudyResult


def write_result_json(result: StudyResult, path: str | Path) -> Path:
    """Write `result.to_dict()` as indented UTF-8 JSON, atomically (temp file, then rename)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(result.to_dict(), indent=2, ensure_ascii=False), encoding="utf-8")
    tmp.replace(out)
    return out
