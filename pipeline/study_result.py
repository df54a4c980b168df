"""The typed objects that leave the pipeline: one `Lesion` per finding, one `StudyResult` per study.

They are what the DICOM writers (SEG, SR, summary), `result.json` and the node's
ledger read, so every number a radiologist sees is carried here, with the rule
that decided it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal

import SimpleITK as sitk


class LesionKind(StrEnum):
    """What a finding is. A str enum, so it compares equal to (and serialises as) its value."""

    PRIMARY = "primary"  # the primary tumour
    NODE = "node"  # a focus (or enlarged soft-tissue nodule) in a nodal station
    LUNG_OTHER = "lung_other"  # another intrapulmonary focus (not the primary)
    PHYSIOLOGIC = "physiologic"  # physiologic or non-nodal uptake; `physiologic_site` says where
    OUTSIDE_STATIONS = "outside_stations"  # thoracic, not physiologic, but in no nodal station
    DISTANT = "distant"  # outside the thorax (below the diaphragm, in the neck above station 1)
    OTHER = "other"  # kept for backends that cannot tell


class NodeStatus(StrEnum):
    """The three-tier reading of a node (DESIGN.md §4), plus the non-avid CT finding."""

    POSITIVE = "positive"
    EQUIVOCAL = "equivocal"
    NEGATIVE = "negative"
    ENLARGED_NON_AVID = "enlarged_non_avid"  # short axis >= 10 mm, not FDG-avid: reported, never counted
    NOT_A_NODE = "not_a_node"


class PhysiologicSite(StrEnum):
    """Why a focus is physiologic or non-nodal uptake; it never counts for N."""

    BONE_MARROW = "bone_marrow"
    JOINT = "joint"  # sternoclavicular, costovertebral, shoulder: degenerative joint uptake
    BROWN_FAT = "brown_fat"
    ESOPHAGEAL = "esophageal"
    MYOCARDIAL = "myocardial"
    LARYNGEAL_PHARYNGEAL = "laryngeal_pharyngeal"
    MUSCLE = "muscle"
    THYROID = "thyroid"
    VASCULAR = "vascular"
    SUBDIAPHRAGMATIC = "subdiaphragmatic"  # liver, spleen, stomach, bowel, kidneys ...


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
    status: NodeStatus = NodeStatus.NOT_A_NODE
    positive: bool = False  # status is POSITIVE (kept as a field: the ledger and writers read it)
    rule: str = ""  # the rule (and numbers) that decided kind and status
    physiologic_site: PhysiologicSite | None = None  # set when kind is PHYSIOLOGIC
    peak_mm: tuple[float, float, float] | None = None  # LPS position of SUVmax (station hygiene uses it)
    nearby_stations: dict[str, float] = field(default_factory=dict)  # other stations within a few mm of the peak
    equivocal_because: str | None = None  # why an equivocal node is not positive, in a phrase the report shows

    @property
    def equivocal(self) -> bool:
        return self.status == NodeStatus.EQUIVOCAL

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["nearby_stations"] = dict(self.nearby_stations)
        d["centroid_mm"] = [round(v, 2) for v in self.centroid_mm]
        if self.peak_mm is not None:
            d["peak_mm"] = [round(v, 2) for v in self.peak_mm]
        for key in ("kind", "status", "physiologic_site"):
            d[key] = None if d[key] is None else str(d[key])
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
    # the three-tier reading: stations whose best node is equivocal, and the N category if they were positive
    equivocal_stations: list[str] = field(default_factory=list)
    n_tnm8_if_equivocal_positive: str | None = None
    n_tnm9_if_equivocal_positive: str | None = None
    station_status: dict[str, str] = field(default_factory=dict)  # station -> NodeStatus value of its most avid node
    # the N category again with one positive node moved across a station border it lies within a few mm of
    boundary_readings: list[dict[str, Any]] = field(default_factory=list)  # staging.BoundaryReading.to_dict()
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
            "equivocal_stations": self.equivocal_stations,
            "n_tnm8_if_equivocal_positive": self.n_tnm8_if_equivocal_positive,
            "n_tnm9_if_equivocal_positive": self.n_tnm9_if_equivocal_positive,
            "station_status": self.station_status,
            "boundary_readings": self.boundary_readings,
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

