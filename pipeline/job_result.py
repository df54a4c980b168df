"""The typed contract between the pipeline and the node: what result.json must hold.

The pipeline writes result.json (the whole `StudyResult`); the node's worker, outbox, ledger
and demo read back only this typed part of it. The pipeline validates its own result.json
against it before writing, so a change that breaks the node fails in the pipeline, with the
field named, instead of as a missing key in the worker. Output files are named here, never
found by globbing a folder.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field


class _Contract(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class BackendRef(_Contract):
    name: str
    version: str = ""


class OutputPaths(_Contract):
    """The files one run wrote (absolute paths); absent ones are None."""

    seg: str | None = None
    sr: str | None = None
    summary: str | None = None
    summary_png: str | None = None
    stations_seg: str | None = None
    result: str | None = None

    def dicom_files(self) -> list[Path]:
        """The DICOM objects to send, in a stable order: SEG, SR, summary SC, station SEG."""
        return [Path(p) for p in (self.seg, self.sr, self.summary, self.stations_seg) if p]


class JobResult(_Contract):
    """The node-facing part of result.json."""

    study_instance_uid: str
    accession_number: str = ""
    n_tnm8: str | None = None
    n_tnm9: str | None = None
    involved_stations: list[str] = Field(default_factory=list)
    equivocal_stations: list[str] = Field(default_factory=list)
    n_tnm8_if_equivocal_positive: str | None = None
    n_tnm9_if_equivocal_positive: str | None = None
    primary_side: str | None = None
    backends: dict[str, BackendRef] = Field(default_factory=dict)
    timings_s: dict[str, float] = Field(default_factory=dict)
    warnings: list[str] = Field(default_factory=list)
    outputs: OutputPaths = Field(default_factory=OutputPaths)

    @classmethod
    def read(cls, path: str | Path) -> JobResult:
        """Parse and validate a result.json (raises OSError, ValueError or pydantic's ValidationError)."""
        return cls.model_validate(json.loads(Path(path).read_text(encoding="utf-8")))
