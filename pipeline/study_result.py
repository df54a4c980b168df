"""The typed objects that leave the pipeline: one `Lesion` per finding, one `StudyResult` per study.

They are what the DICOM writers (SEG, SR, summary), `result.json` and the node's
ledger read, so every number a radiologist sees is carried here, with the rule
that decided it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import SimpleITK as sitk

LesionKind = Literal["primary", "node", "lung_other", "distant", "other"]
NodeStatus = Literal["positive", "enlarged, not FDG-avid", "negative", "not a node"]


@dataclass(frozen=True)
class Lesion:
    """One FDG-avid finding, measured on the CT grid.

    `label_value` is its value in `StudyResult.lesion_labels`. Measurements follow
    PERCIST/QIBA habits: SUVpeak is the highest mean in a 1 cm³ sphere, MTV in ml,
    TLG = SUVmean × MTV, short axis on the axial slice with the largest extent.
    """

    index: int
    label_value: int
    kind: LesionKind
    tracking_id: str  # "Primary tumour", "Node 2 (4R)"
    tracking_uid: str
    centroid_mm: tuple[float, float, float]  # LPS
    suvmax: float
    suvpeak: float
    suvmean: float
    mtv_ml: float
    tlg: float
    short_axis_mm: float
    voxel_count: int
    station: str | None = None
    side: Literal["left", "right"] | None = None
    lobe: str | None = None
    status: NodeStatus = "not a node"
    positive: bool = False
    rule: str = ""  # the rule (and numbers) that decided kind and status

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["centroid_mm"] = [round(v, 2) for v in self.centroid_mm]
        for key in ("suvmax", "suvpeak", "suvmean", "mtv_ml", "tlg", "short_axis_mm"):
            d[key] = round(float(d[key]), 4)
        return d


@dataclass(frozen=True)
class BackendInfo:
    name: str
    version: str
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "settings": self.settings}


@dataclass
class StudyResult:
    """Everything `run_study` learned about one study.

    Images (`lesion_labels`, `station_labels`, and the `volumes` they sit on) are
    for the writers; `to_dict()` is the JSON-able part written to result.json.
    """

    study_instance_uid: str
    ct_series_uid: str
    pet_series_uid: str
    n_tnm8: str
    n_tnm9: str
    involved_stations: list[str]
    staging: dict[str, Any]  # StagingResult.to_dict()
    primary_side: str | None
    lesions: list[Lesion]
    landmarks: list[dict[str, Any]]
    not_assessable: dict[str, str]
    reference_regions: dict[str, Any]  # blood pool and liver: SUVmean, SD, voxels, where
    positivity_rule: str
    backends: dict[str, BackendInfo]
    timings_s: dict[str, float]
    warnings: list[str]
    suv: dict[str, Any]  # SUVFactor.to_dict()
    accession_number: str = ""
    lesion_labels: sitk.Image | None = None
    station_labels: sitk.Image | None = None
    station_values: dict[str, int] = field(default_factory=dict)
    volumes: Any = None  # pipeline.study.Volumes
    outputs: dict[str, str] = field(default_factory=dict)  # name -> path, filled by the writers

    def to_dict(self) -> dict[str, Any]:
        return {
            "study_instance_uid": self.study_instance_uid,
            "accession_number": self.accession_number,
            "ct_series_uid": self.ct_series_uid,
            "pet_series_uid": self.pet_series_uid,
            "n_tnm8": self.n_tnm8,
            "n_tnm9": self.n_tnm9,
            "involved_stations": self.involved_stations,
            "primary_side": self.primary_side,
            "staging": self.staging,
            "positivity_rule": self.positivity_rule,
            "lesions": [l.to_dict() for l in self.lesions],
            "landmarks": self.landmarks,
            "not_assessable": self.not_assessable,
            "reference_regions": self.reference_regions,
            "suv": self.suv,
            "backends": {k: v.to_dict() for k, v in self.backends.items()},
            "timings_s": {k: round(v, 3) for k, v in self.timings_s.items()},
            "warnings": self.warnings,
            "outputs": {k: str(v) for k, v in self.outputs.items()},
        }

    @property
    def primary(self) -> Lesion | None:
        return next((l for l in self.lesions if l.kind == "primary"), None)

    @property
    def nodes(self) -> list[Lesion]:
        return [l for l in self.lesions if l.kind == "node"]

