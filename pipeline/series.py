"""Find the CT and the attenuation-corrected PET in a study folder, by stated rules.

A study folder from a PACS holds more than the two series the pipeline needs:
scouts, non-attenuation-corrected PET, segmentations, RWV and SR objects. Every
rule records its reason, so `nodestage inspect` can show why each series was
chosen or left out, and a refusal names what is missing.

Files are found by content, not by name: any file under the folder that parses
as DICOM counts. Headers are read without pixel data, which keeps a scan of a
few hundred instances well under a second.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import (
    CTImageStorage,
    EnhancedCTImageStorage,
    EnhancedPETImageStorage,
    LegacyConvertedEnhancedCTImageStorage,
    LegacyConvertedEnhancedPETImageStorage,
    MediaStorageDirectoryStorage,
    PositronEmissionTomographyImageStorage,
    UID,
)

from pipeline.errors import StudyInputError

logger = logging.getLogger(__name__)

CLASSIC_IMAGE_CLASSES = {CTImageStorage: "CT", PositronEmissionTomographyImageStorage: "PT"}
ENHANCED_IMAGE_CLASSES = {
    EnhancedCTImageStorage: "CT",
    LegacyConvertedEnhancedCTImageStorage: "CT",
    EnhancedPETImageStorage: "PT",
    LegacyConvertedEnhancedPETImageStorage: "PT",
}
NON_IMAGE_MODALITIES = {"SEG", "RWV", "SR", "PR", "KO", "REG", "DOC", "RTSTRUCT", "RTPLAN", "RTDOSE"}

# A slice normal further than this from the patient's z axis is not an axial
# series (coronal/sagittal reformats, localizers without the LOCALIZER flag).
MIN_AXIAL_NORMAL_Z = 0.866  # cos 30 degrees

# Descriptions that say "not attenuation-corrected". Needed because GE writes
# ATTN into CorrectedImage of its NAC series too (seen in ACRIN-NSCLC-FDG-PET).
NAC_DESCRIPTION = re.compile(
    r"(?<![A-Z])(NAC|NON[ _-]?AC|NO[ _-]?AC|W/?O[ _-]?AC|NON[ _-]?ATTN|NO[ _-]?ATTN|UNCORR\w*)(?![A-Z])",
    re.IGNORECASE,
)
MIP_DESCRIPTION = re.compile(r"(?<![A-Z])MIP(?![A-Z])", re.IGNORECASE)

HEADER_TAGS = [
    "SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID",
    "FrameOfReferenceUID", "Modality", "ImageType", "CorrectedImage", "Units",
    "SeriesType", "SeriesDescription", "SeriesNumber", "SeriesDate", "SeriesTime",
    "StudyDate", "StudyTime", "StudyID", "AccessionNumber", "PatientID",
    "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows",
    "Columns", "NumberOfFrames", "InstanceNumber",
]


class SeriesSelectionError(StudyInputError):
    """The study lacks a usable series; `decisions` says what was found and why it was left out."""

    def __init__(self, message: str, decisions: list[SeriesDecision] | None = None):
        super().__init__(message)
        self.decisions = list(decisions or [])


class EmptyStudyError(SeriesSelectionError):
    """No DICOM file under the folder."""


class NoPETError(SeriesSelectionError):
    """No PET series at all."""


class NoAttenuationCorrectedPETError(SeriesSelectionError):
    """PET series exist, but none is a usable attenuation-corrected static PET."""


class NoCTError(SeriesSelectionError):
    """No usable CT (in the PET's frame of reference, when there is a PET)."""


class AmbiguousSeriesError(SeriesSelectionError):
    """Several candidates that the rules cannot tell apart."""


@dataclass(frozen=True)
class InstanceInfo:
    """One file's identity and plane geometry, read from its header only."""

    path: Path
    sop_instance_uid: str
    instance_number: int | None
    position: tuple[float, float, float] | None
    orientation: tuple[float, ...] | None
    number_of_frames: int


@dataclass(frozen=True)
class SeriesInfo:
    """A series as grouped from the folder; attributes come from its first instance."""

    key: str
    study_key: str
    series_instance_uid: str
    modality: str
    sop_class_uid: str
    description: str
    series_number: int | None
    frame_of_reference_uid: str
    image_type: tuple[str, ...]
    corrected_image: tuple[str, ...]
    units: str
    series_type: tuple[str, ...]
    rows: int | None
    columns: int | None
    pixel_spacing: tuple[float, float] | None
    instances: tuple[InstanceInfo, ...]
    synthetic_key: bool = False

    @property
    def files(self) -> list[Path]:
        return [i.path for i in self.instances]

    @property
    def n_instances(self) -> int:
        return len(self.instances)

    @property
    def sop_class_name(self) -> str:
        return UID(self.sop_class_uid).name if self.sop_class_uid else "unknown SOP class"

    @property
    def label(self) -> str:
        """Short human label for logs and messages (no UIDs)."""
        number = f"#{self.series_number} " if self.series_number is not None else ""
        return f"{self.modality or '?'} {number}'{self.description}' ({self.n_instances} instances)"

    def normal(self) -> np.ndarray | None:
        """Slice normal of the first instance, or None without a valid orientation."""
        for inst in self.instances:
            if inst.orientation is not None and len(inst.orientation) == 6:
                row, col = np.array(inst.orientation[:3]), np.array(inst.orientation[3:])
                n = np.cross(row, col)
                norm = np.linalg.norm(n)
                return n / norm if norm > 1e-6 else None
        return None

    def positions_along(self, normal: np.ndarray) -> np.ndarray:
        """Distinct instance positions projected onto `normal`, sorted (mm)."""
        d = [float(np.dot(i.position, normal)) for i in self.instances if i.position is not None]
        return np.unique(np.round(np.array(d, dtype=float), 3))

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "synthetic_key": self.synthetic_key,
            "modality": self.modality,
            "series_number": self.series_number,
            "description": self.description,
            "sop_class": self.sop_class_name,
            "instances": self.n_instances,
            "frame_of_reference_uid": self.frame_of_reference_uid,
            "image_type": list(self.image_type),
            "corrected_image": list(self.corrected_image),
            "units": self.units,
            "series_type": list(self.series_type),
            "rows": self.rows,
            "columns": self.columns,
        }


@dataclass(frozen=True)
class SeriesDecision:
    """Why one series was chosen (with its role) or left out."""

    series: SeriesInfo
    chosen: bool
    role: str | None  # "ct", "pet", or None when left out
    reason: str

    def to_dict(self) -> dict[str, Any]:
        s = self.series
        return {
            "key": s.key,
            "modality": s.modality,
            "series_number": s.series_number,
            "description": s.description,
            "instances": s.n_instances,
            "chosen": self.chosen,
            "role": self.role,
            "reason": self.reason,
        }


@dataclass
class StudyScan:
    """Everything DICOM found under a folder, grouped into series."""

    folder: Path
    series: list[SeriesInfo]
    study_keys: list[str]
    n_files: int
    n_dicom: int
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "folder": str(self.folder),
            "files": self.n_files,
            "dicom_instances": self.n_dicom,
            "studies": len(self.study_keys),
            "series": len(self.series),
            "warnings": list(self.warnings),
        }


@dataclass
class SeriesSelection:
    """The CT and PET chosen for processing, with a decision for every series."""

    ct: SeriesInfo
    pet: SeriesInfo
    decisions: list[SeriesDecision]
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ct": self.ct.to_dict(),
            "pet": self.pet.to_dict(),
            "decisions": [d.to_dict() for d in self.decisions],
            "warnings": list(self.warnings),
        }


# ---------------------------------------------------------------- reading


def _text(ds: Dataset, keyword: str) -> str:
    try:
        value = ds.get(keyword)
    except Exception:  # malformed value: treat as absent
        return ""
    return "" if value is None else str(value).strip()


def _strings(ds: Dataset, keyword: str) -> tuple[str, ...]:
    try:
        value = ds.get(keyword)
    except Exception:
        return ()
    if value is None or value == "":
        return ()
    if isinstance(value, (str, bytes)):
        return (str(value).strip().upper(),)
    return tuple(str(v).strip().upper() for v in value)


def _floats(ds: Dataset, keyword: str, count: int) -> tuple[float, ...] | None:
    try:
        value = ds.get(keyword)
        if value is None:
            return None
        numbers = tuple(float(v) for v in value)
    except Exception:
        return None
    return numbers if len(numbers) == count and all(np.isfinite(numbers)) else None


def _int(ds: Dataset, keyword: str) -> int | None:
    try:
        value = ds.get(keyword)
        return None if value is None or value == "" else int(value)
    except Exception:
        return None


def read_header(path: Path) -> Dataset | None:
    """The header of a DICOM file without pixel data, or None when it is not DICOM."""
    try:
        return pydicom.dcmread(path, stop_before_pixels=True, specific_tags=HEADER_TAGS)
    except InvalidDicomError:
        logger.debug("skipping non-DICOM file %s", path.name)
    except Exception as exc:  # truncated or corrupt: skip, but say so at debug level
        logger.debug("skipping unreadable file %s: %s", path.name, type(exc).__name__)
    return None


def _synthetic_key(prefix: str, parts: list[object]) -> str:
    digest = hashlib.sha1("|".join(str(p) for p in parts).encode()).hexdigest()[:16]
    return f"{prefix}-{digest}"


def _study_key(ds: Dataset) -> tuple[str, bool]:
    uid = _text(ds, "StudyInstanceUID")
    if uid:
        return uid, False
    parts = [_text(ds, k) for k in ("PatientID", "StudyDate", "StudyTime", "AccessionNumber", "StudyID")]
    return _synthetic_key("no-study-uid", parts), True


def _series_key(ds: Dataset, study_key: str) -> tuple[str, bool]:
    uid = _text(ds, "SeriesInstanceUID")
    if uid:
        return uid, False
    orientation = _floats(ds, "ImageOrientationPatient", 6)
    parts = [
        study_key,
        *(_text(ds, k) for k in ("Modality", "SeriesNumber", "SeriesDescription", "SeriesDate",
                                  "SeriesTime", "FrameOfReferenceUID", "Rows", "Columns")),
        _strings(ds, "ImageType"),
        tuple(round(v, 3) for v in orientation) if orientation else None,
    ]
    return _synthetic_key("no-series-uid", parts), True


def _sop_class(ds: Dataset) -> tuple[str, bool]:
    """SOP class from the dataset, else File Meta, else inferred from Modality (flagged)."""
    uid = _text(ds, "SOPClassUID")
    if not uid:
        uid = str(getattr(ds, "file_meta", Dataset()).get("MediaStorageSOPClassUID", "") or "").strip()
    if uid:
        return uid, False
    modality = _text(ds, "Modality").upper()
    if _int(ds, "Rows") and modality in ("CT", "PT"):
        return (CTImageStorage if modality == "CT" else PositronEmissionTomographyImageStorage), True
    return "", False


def scan_study(folder: str | Path) -> StudyScan:
    """Read every DICOM header under `folder` (recursively) and group into series.

    Instances with an empty SOPInstanceUID are identified by File Meta's
    MediaStorageSOPInstanceUID. Empty Study/Series UIDs get a synthetic key
    built from attributes that stay constant within a series, with a warning.
    The same SOP instance in two files is counted once.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise EmptyStudyError(f"study folder not found: {folder}")
    paths = sorted(p for p in folder.rglob("*") if p.is_file())
    groups: dict[str, dict[str, Any]] = {}
    warnings: list[str] = []
    counts: dict[str, int] = defaultdict(int)
    study_keys: list[str] = []
    n_dicom = 0

    for path in paths:
        ds = read_header(path)
        if ds is None:
            continue
        meta = getattr(ds, "file_meta", Dataset())
        if str(meta.get("MediaStorageSOPClassUID", "")) == MediaStorageDirectoryStorage:
            logger.debug("skipping DICOMDIR %s", path.name)
            continue
        n_dicom += 1
        study_key, synthetic_study = _study_key(ds)
        series_key, synthetic_series = _series_key(ds, study_key)
        sop_class, inferred_class = _sop_class(ds)
        counts["no_study_uid"] += synthetic_study
        counts["no_series_uid"] += synthetic_series
        counts["inferred_sop_class"] += inferred_class
        sop_uid = _text(ds, "SOPInstanceUID")
        if not sop_uid:
            sop_uid = str(meta.get("MediaStorageSOPInstanceUID", "") or "").strip()
            counts["sop_uid_from_meta" if sop_uid else "no_sop_uid"] += 1
        if not sop_uid:
            sop_uid = f"file:{path}"
        if study_key not in study_keys:
            study_keys.append(study_key)

        group = groups.get(series_key)
        if group is None:
            group = groups[series_key] = {
                "fields": _series_fields(ds), "study_key": study_key, "sop_class": sop_class,
                "synthetic": synthetic_series, "instances": {},
            }
        if sop_uid in group["instances"]:
            counts["duplicate_sop"] += 1
            logger.debug("duplicate SOP instance %s in %s; keeping the first file", sop_uid, path.name)
            continue
        group["instances"][sop_uid] = InstanceInfo(path=path, sop_instance_uid=sop_uid, **_instance_fields(ds))

    if counts["no_study_uid"]:
        warnings.append(f"{counts['no_study_uid']} instances have no StudyInstanceUID; "
                        "grouped by patient, date, time and accession instead")
    if counts["no_series_uid"]:
        warnings.append(f"{counts['no_series_uid']} instances have no SeriesInstanceUID; grouped by "
                        "modality, series number, description, frame of reference and orientation instead")
    if counts["sop_uid_from_meta"]:
        warnings.append(f"{counts['sop_uid_from_meta']} instances have no SOPInstanceUID; "
                        "used File Meta MediaStorageSOPInstanceUID")
    if counts["no_sop_uid"]:
        warnings.append(f"{counts['no_sop_uid']} instances have no SOP instance UID at all; identified by file")
    if counts["inferred_sop_class"]:
        warnings.append(f"{counts['inferred_sop_class']} instances have no SOPClassUID; "
                        "treated as CT/PET images by their Modality")
    if counts["duplicate_sop"]:
        warnings.append(f"{counts['duplicate_sop']} files repeat an SOP instance already found; counted once")
    if len(study_keys) > 1:
        warnings.append(f"the folder holds {len(study_keys)} studies; series are chosen across all of them "
                        "by frame of reference")

    series = [_series_info(key, g) for key, g in groups.items()]
    series.sort(key=lambda s: (s.study_key, s.series_number if s.series_number is not None else 1 << 30,
                               s.modality, s.description, s.key))
    for w in warnings:
        logger.warning("%s", w)
    logger.info("scanned %d files: %d DICOM instances in %d series", len(paths), n_dicom, len(series))
    return StudyScan(folder=folder, series=series, study_keys=study_keys, n_files=len(paths),
                     n_dicom=n_dicom, warnings=warnings)


def _series_fields(ds: Dataset) -> dict[str, Any]:
    """The series-level attributes that the selection rules read, from one header."""
    return {
        "series_instance_uid": _text(ds, "SeriesInstanceUID"),
        "modality": _text(ds, "Modality").upper(),
        "description": " ".join(_text(ds, "SeriesDescription").split()),  # one line
        "series_number": _int(ds, "SeriesNumber"),
        "frame_of_reference_uid": _text(ds, "FrameOfReferenceUID"),
        "image_type": _strings(ds, "ImageType"),
        "corrected_image": _strings(ds, "CorrectedImage"),
        "units": _text(ds, "Units").upper(),
        "series_type": _strings(ds, "SeriesType"),
        "rows": _int(ds, "Rows"),
        "columns": _int(ds, "Columns"),
        "pixel_spacing": _floats(ds, "PixelSpacing", 2),
    }


def _instance_fields(ds: Dataset) -> dict[str, Any]:
    return {
        "instance_number": _int(ds, "InstanceNumber"),
        "position": _floats(ds, "ImagePositionPatient", 3),
        "orientation": _floats(ds, "ImageOrientationPatient", 6),
        "number_of_frames": _int(ds, "NumberOfFrames") or 1,
    }


def _series_info(key: str, group: dict[str, Any]) -> SeriesInfo:
    return SeriesInfo(
        key=key,
        study_key=group["study_key"],
        sop_class_uid=group["sop_class"],
        instances=tuple(sorted(group["instances"].values(), key=lambda i: str(i.path))),
        synthetic_key=group["synthetic"],
        **group["fields"],
    )


# ---------------------------------------------------------------- the same scan from a receiver's index

SCAN_INFO_VERSION = 1
_TUPLE_FIELDS = ("image_type", "corrected_image", "series_type", "pixel_spacing", "position", "orientation")


def scan_info(ds: Dataset) -> dict[str, Any]:
    """What `scan_study` reads from one header, JSON-able. A receiver keeps it per instance, so
    that completeness is judged from its index (`scan_from_index`) without parsing files again."""
    return {"version": SCAN_INFO_VERSION, **_instance_fields(ds), "series": _series_fields(ds)}


def _tuples(fields: dict[str, Any]) -> dict[str, Any]:
    return {k: (tuple(v) if k in _TUPLE_FIELDS and v is not None else v) for k, v in fields.items()}


@dataclass(frozen=True)
class IndexedInstance:
    """One received instance as a receiver's index holds it: the file, its UIDs and its `scan_info`."""

    path: Path
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    sop_class_uid: str
    info: dict[str, Any]


def scan_from_index(folder: str | Path, instances: list[IndexedInstance]) -> StudyScan:
    """The `StudyScan` that `scan_study(folder)` would give, from the receiver's index instead of the
    files. A receiver refuses instances without UIDs, so no synthetic key or UID warning arises;
    each series takes its attributes from its first file in path order, as `scan_study` does."""
    groups: dict[str, dict[str, Any]] = {}
    study_keys: list[str] = []
    for inst in sorted(instances, key=lambda i: str(i.path)):
        if inst.info.get("version") != SCAN_INFO_VERSION:
            raise ValueError(f"scan_info version {inst.info.get('version')!r}, expected {SCAN_INFO_VERSION}")
        if inst.study_instance_uid not in study_keys:
            study_keys.append(inst.study_instance_uid)
        group = groups.setdefault(inst.series_instance_uid, {
            "study_key": inst.study_instance_uid, "sop_class": inst.sop_class_uid, "synthetic": False,
            "fields": _tuples(inst.info["series"]), "instances": {}})
        fields = _tuples({k: inst.info[k] for k in ("instance_number", "position", "orientation",
                                                     "number_of_frames")})
        group["instances"][inst.sop_instance_uid] = InstanceInfo(
            path=Path(inst.path), sop_instance_uid=inst.sop_instance_uid, **fields)
    series = [_series_info(key, g) for key, g in groups.items()]
    series.sort(key=lambda s: (s.study_key, s.series_number if s.series_number is not None else 1 << 30,
                               s.modality, s.description, s.key))
    warnings = []
    if len(study_keys) > 1:
        warnings.append(f"the folder holds {len(study_keys)} studies; series are chosen across all of them "
                        "by frame of reference")
    return StudyScan(folder=Path(folder), series=series, study_keys=study_keys, n_files=len(instances),
                     n_dicom=len(instances), warnings=warnings)


# ---------------------------------------------------------------- rules


def image_modality(series: SeriesInfo) -> str | None:
    """'CT' or 'PT' for CT/PET image storage classes (classic or enhanced), else None."""
    return CLASSIC_IMAGE_CLASSES.get(series.sop_class_uid) or ENHANCED_IMAGE_CLASSES.get(series.sop_class_uid)


def exclusion_reasons(series: SeriesInfo) -> list[str]:
    """Why a series cannot serve as the CT or the PET volume; empty when it can."""
    modality = image_modality(series)
    if modality is None:
        if series.modality in NON_IMAGE_MODALITIES or not series.rows:
            return [f"non-image object ({series.sop_class_name})"]
        return [f"not a CT or PET image storage class ({series.sop_class_name})"]
    reasons: list[str] = []
    if series.sop_class_uid in ENHANCED_IMAGE_CLASSES:
        reasons.append(f"multi-frame {series.sop_class_name} is not supported; "
                       "send classic single-frame images")
    elif any(i.number_of_frames > 1 for i in series.instances):
        reasons.append("multi-frame images are not supported; send classic single-frame images")
    image_type = series.image_type
    if "LOCALIZER" in image_type:
        reasons.append("localizer (ImageType LOCALIZER)")
    if image_type[:1] == ("DERIVED",) or image_type[1:2] == ("SECONDARY",):
        reasons.append(f"derived or secondary image (ImageType {'/'.join(image_type[:2])})")
    if any("MIP" in v or "PROJECTION" in v for v in image_type) or MIP_DESCRIPTION.search(series.description):
        reasons.append("maximum intensity projection")
    orientations = {tuple(round(v, 4) for v in i.orientation) for i in series.instances if i.orientation}
    positions = [i.position for i in series.instances if i.position is not None]
    if not orientations or len(positions) < series.n_instances:
        reasons.append("no plane geometry (ImageOrientationPatient/ImagePositionPatient missing)")
    elif len(orientations) > 1:
        reasons.append(f"mixed orientations ({len(orientations)} different planes)")
    else:
        normal = series.normal()
        if normal is None:
            reasons.append("invalid ImageOrientationPatient")
        elif abs(normal[2]) < MIN_AXIAL_NORMAL_Z:
            reasons.append(f"not an axial series (slice normal {(np.round(normal, 2) + 0.0).tolist()})")
        elif len(series.positions_along(normal)) < 2 and not any(i.number_of_frames > 1 for i in series.instances):
            reasons.append("single slice")
    if modality == "PT":
        reasons.extend(_pet_reasons(series))
    return reasons


def _pet_reasons(series: SeriesInfo) -> list[str]:
    reasons = []
    nac = NAC_DESCRIPTION.search(series.description)
    if nac:
        reasons.append(f"not attenuation-corrected (SeriesDescription '{series.description}')")
    elif not series.corrected_image:
        reasons.append("not known to be attenuation-corrected (CorrectedImage missing)")
    elif "ATTN" not in series.corrected_image:
        reasons.append(f"not attenuation-corrected (CorrectedImage {'/'.join(series.corrected_image)} lacks ATTN)")
    if series.series_type[:1] in (("DYNAMIC",), ("GATED",)):
        reasons.append(f"{series.series_type[0].lower()} PET (SeriesType {'/'.join(series.series_type)}); "
                       "staging needs a static image")
    return reasons


def _summary(series: list[SeriesInfo], limit: int = 6) -> str:
    labels = [s.label for s in series[:limit]]
    if len(series) > limit:
        labels.append(f"and {len(series) - limit} more")
    return ", ".join(labels) if labels else "nothing"


def _left_out(series: SeriesInfo, reason: str) -> SeriesDecision:
    logger.info("left out %s: %s", series.label, reason)
    return SeriesDecision(series=series, chosen=False, role=None, reason=reason)


def _chosen(series: SeriesInfo, role: str, reason: str) -> SeriesDecision:
    logger.info("chose %s as the %s: %s", series.label, role.upper(), reason)
    logger.debug("chosen %s series UID %s", role, series.series_instance_uid)
    return SeriesDecision(series=series, chosen=True, role=role, reason=reason)


def _ordered(decisions: dict[str, SeriesDecision], series: list[SeriesInfo]) -> list[SeriesDecision]:
    return [decisions[s.key] for s in series if s.key in decisions]


def _slice_spacing(positions: np.ndarray) -> float:
    diffs = np.diff(positions)
    return float(np.median(diffs)) if len(diffs) else 1.0


@dataclass(frozen=True)
class _Coverage:
    fraction: float  # of the PET's z-extent that the CT overlaps
    covers: bool  # within one PET slice at each end


def _coverage(ct: SeriesInfo, pet: SeriesInfo) -> _Coverage:
    normal = pet.normal()
    assert normal is not None  # screened before
    pet_z = pet.positions_along(normal)
    ct_z = ct.positions_along(normal)
    tolerance = _slice_spacing(pet_z)
    lo, hi = float(pet_z[0]), float(pet_z[-1])
    overlap = max(0.0, min(hi, ct_z[-1]) - max(lo, ct_z[0]))
    fraction = overlap / (hi - lo) if hi > lo else float(ct_z[0] <= lo <= ct_z[-1])
    covers = ct_z[0] <= lo + tolerance and ct_z[-1] >= hi - tolerance
    return _Coverage(fraction=min(1.0, fraction), covers=bool(covers))


def select_series(scan: StudyScan) -> SeriesSelection:
    """Choose the attenuation-corrected PET and the CT in its frame of reference.

    Rules, in order: leave out non-image objects, enhanced multi-frame images,
    localizers, derived/secondary images, MIPs, non-axial and single-slice
    series; of the PET, leave out non-attenuation-corrected (no ATTN in
    CorrectedImage, or a description saying NAC) and dynamic/gated series. The
    PET must share its FrameOfReferenceUID with a CT. Among those CTs, prefer one
    covering the PET's z-extent, then the one with most slices. Two candidates
    left equal are refused, not guessed between.
    """
    series = scan.series
    if not series:
        raise EmptyStudyError(f"no DICOM files under {scan.folder}")
    decisions: dict[str, SeriesDecision] = {}
    usable: list[SeriesInfo] = []
    for s in series:
        reasons = exclusion_reasons(s)
        if reasons:
            decisions[s.key] = _left_out(s, "; ".join(reasons))
        else:
            usable.append(s)

    pets_all = [s for s in series if image_modality(s) == "PT" or s.modality == "PT"]
    if not pets_all:
        raise NoPETError(f"no PET series in the study (found {_summary(series)})", _ordered(decisions, series))
    pets = [s for s in usable if image_modality(s) == "PT"]
    if not pets:
        why = "; ".join(f"{s.label}: {decisions[s.key].reason}" for s in pets_all)
        raise NoAttenuationCorrectedPETError(f"no usable attenuation-corrected PET: {why}",
                                             _ordered(decisions, series))
    cts = [s for s in usable if image_modality(s) == "CT"]

    def cts_for(pet: SeriesInfo) -> list[SeriesInfo]:
        if not pet.frame_of_reference_uid:
            return []
        return [c for c in cts if c.frame_of_reference_uid == pet.frame_of_reference_uid
                and _coverage(c, pet).fraction > 0]

    pets_with_ct = [p for p in pets if cts_for(p)]
    if not pets_with_ct:
        if not cts:
            detail = "no usable CT series"
            ct_all = [s for s in series if s.modality == "CT"]
            if ct_all:
                detail += " (" + "; ".join(f"{s.label}: {decisions[s.key].reason}" for s in ct_all) + ")"
        elif len(pets) == 1 and not pets[0].frame_of_reference_uid:
            detail = f"{pets[0].label} has no FrameOfReferenceUID"
        else:
            detail = "; ".join(
                f"{c.label} " + ("has another frame of reference" if all(
                    c.frame_of_reference_uid != p.frame_of_reference_uid for p in pets)
                    else "does not overlap the PET's z-extent")
                for c in cts)
        for p in pets:
            decisions[p.key] = _left_out(p, "attenuation-corrected, but no CT shares its frame of reference")
        raise NoCTError(f"no CT in the PET's frame of reference: {detail}", _ordered(decisions, series))
    if len(pets_with_ct) > 1:
        raise AmbiguousSeriesError(
            f"{len(pets_with_ct)} attenuation-corrected PET series cannot be told apart: "
            f"{_summary(pets_with_ct)}; send one", _ordered(decisions, series))
    pet = pets_with_ct[0]
    warnings: list[str] = []
    for p in pets:
        if p is not pet:
            decisions[p.key] = _left_out(p, "attenuation-corrected, but no CT shares its frame of reference")

    candidates = cts_for(pet)
    coverage = {c.key: _coverage(c, pet) for c in candidates}
    ranked = sorted(candidates, key=lambda c: (coverage[c.key].covers, round(coverage[c.key].fraction, 2),
                                               c.n_instances), reverse=True)
    best = ranked[0]
    best_rank = (coverage[best.key].covers, round(coverage[best.key].fraction, 2), best.n_instances)
    ties = [c for c in ranked if (coverage[c.key].covers, round(coverage[c.key].fraction, 2), c.n_instances)
            == best_rank]
    if len(ties) > 1:
        raise AmbiguousSeriesError(
            f"{len(ties)} CT series in the PET's frame of reference cannot be told apart: "
            f"{_summary(ties)}; send one", _ordered(decisions, series))
    for c in cts:
        if c.key in coverage and c is not best:
            cov = coverage[c.key]
            decisions[c.key] = _left_out(
                c, f"another CT is preferred ({cov.fraction:.0%} of the PET's z-extent, "
                   f"{c.n_instances} slices vs {coverage[best.key].fraction:.0%}, {best.n_instances})")
        elif c.key not in coverage:
            reason = ("frame of reference differs from the PET's" if c.frame_of_reference_uid
                      != pet.frame_of_reference_uid else "does not overlap the PET's z-extent")
            decisions[c.key] = _left_out(c, reason)
    best_cov = coverage[best.key]
    if not best_cov.covers:
        warnings.append(f"the CT covers {best_cov.fraction:.0%} of the PET's z-extent; "
                        "SUV outside the CT is not used")
    decisions[pet.key] = _chosen(
        pet, "pet", f"attenuation-corrected static PET (CorrectedImage {'/'.join(pet.corrected_image)}, "
                    f"Units {pet.units or 'missing'}) with a CT in its frame of reference")
    decisions[best.key] = _chosen(
        best, "ct", f"same frame of reference as the PET; covers {best_cov.fraction:.0%} of its z-extent "
                    f"with {best.n_instances} slices")
    for w in warnings:
        logger.warning("%s", w)
    return SeriesSelection(ct=best, pet=pet, decisions=_ordered(decisions, series),
                           warnings=list(scan.warnings) + warnings)
