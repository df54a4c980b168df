"""What every nodestage DICOM output shares: equipment, notes, source headers, lesion order.

The SEG, the SR and the summary must agree on which lesion is which segment, and
on how the research-use note and the algorithm are recorded, so those rules live
here once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from highdicom import AlgorithmIdentificationSequence
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

import pipeline
from pipeline.settings import OutputSettings
from pipeline.study_result import Lesion, StudyResult

MANUFACTURER = "nodestage"
MODEL_NAME = "nodestage"
DEVICE_SERIAL_NUMBER = "1"
ALGORITHM_NAME = "nodestage"
RESEARCH_NOTE = "research use, not for diagnosis"

# Display colours by category (RGB), shared by the SEG and the summary image.
COLOURS = {
    "primary": (230, 40, 40),
    "positive": (255, 140, 0),
    "enlarged, not FDG-avid": (30, 110, 255),
    "negative": (20, 160, 60),
    "other": (160, 60, 200),
}
CATEGORY_LABELS = {
    "primary": "primary tumour",
    "positive": "positive node",
    "enlarged, not FDG-avid": "enlarged, not FDG-avid",
    "negative": "negative node",
    "other": "other lesion",
}


def software_version() -> str:
    return pipeline.__version__


def series_description(what: str, settings: OutputSettings) -> str:
    """'nodestage lesions (research use, not for diagnosis)', within the 64 characters of LO."""
    text = f"nodestage {what}"
    if settings.research_note:
        text = f"{text} ({RESEARCH_NOTE})"
    return text[:64]


def backend_parameters(result: StudyResult) -> dict[str, str]:
    """One line per backend: name, version and settings (what produced the output)."""
    out = {}
    for key, info in sorted(result.backends.items()):
        extra = ", ".join(f"{k}={v}" for k, v in sorted(info.settings.items()))
        out[key] = f"{info.name} {info.version}" + (f" ({extra})" if extra else "")
    return out


def algorithm_family(result: StudyResult):
    backend = result.backends.get("lesions")
    if backend is not None and "nnunet" in backend.name.lower():
        return codes.cid7162.ArtificialIntelligence
    return codes.cid7162.HistogramAnalysis


def algorithm_identification(result: StudyResult) -> AlgorithmIdentificationSequence:
    return AlgorithmIdentificationSequence(
        name=ALGORITHM_NAME,
        family=algorithm_family(result),
        version=software_version(),
        source=MANUFACTURER,
        parameters=backend_parameters(result) or None,
    )


def read_headers(sources: Sequence[Dataset | str | Path]) -> list[Dataset]:
    """Datasets as given, or headers (no pixels) read from file paths, in the same order."""
    out = []
    for item in sources:
        if isinstance(item, Dataset):
            out.append(item)
        else:
            out.append(pydicom.dcmread(item, stop_before_pixels=True))
    return out


def source_ct(result: StudyResult, given: Sequence[Dataset | str | Path] | None = None) -> list[Dataset]:
    if given is None:
        if result.volumes is None:
            raise ValueError("no CT source instances: pass them, or a StudyResult with volumes")
        given = result.volumes.ct_files
    return read_headers(given)


def source_pet(result: StudyResult, given: Sequence[Dataset | str | Path] | None = None) -> list[Dataset]:
    if given is None:
        if result.volumes is None:
            raise ValueError("no PET source instances: pass them, or a StudyResult with volumes")
        given = result.volumes.pet_files
    return read_headers(given)


def check_slice_order(image: sitk.Image, datasets: Sequence[Dataset], tolerance_mm: float = 0.05) -> None:
    """Raise unless datasets[k] is slice k of `image` (position and orientation).

    The SEG's frame k is written against source instance k, so a mismatch would
    shift masks by slices: refuse rather than write a misaligned SEG.
    """
    size = image.GetSize()
    if len(datasets) != size[2]:
        raise ValueError(f"{len(datasets)} CT instances for an image of {size[2]} slices")
    direction = np.array(image.GetDirection()).reshape(3, 3)
    for k, ds in enumerate(datasets):
        expected = np.array(image.TransformIndexToPhysicalPoint((0, 0, k)))
        position = np.array([float(v) for v in ds.ImagePositionPatient])
        if np.abs(position - expected).max() > tolerance_mm:
            raise ValueError(f"CT instance {k + 1} (position {position.round(2).tolist()}) is not slice {k} "
                             f"of the label map (expected {expected.round(2).tolist()})")
        iop = np.array([float(v) for v in ds.ImageOrientationPatient])
        if np.abs(iop - np.concatenate([direction[:, 0], direction[:, 1]])).max() > 1e-3:
            raise ValueError(f"CT instance {k + 1} orientation {iop.tolist()} differs from the label map's")


def lesion_category(lesion: Lesion) -> str:
    """'primary', 'positive', 'enlarged, not FDG-avid', 'negative' or 'other' (colour and legend key)."""
    if lesion.kind == "primary":
        return "primary"
    if lesion.kind == "node":
        if lesion.positive or lesion.status == "positive":
            return "positive"
        if lesion.status == "enlarged, not FDG-avid":
            return "enlarged, not FDG-avid"
        return "negative"
    return "other"


@dataclass(frozen=True)
class PlannedSegment:
    number: int
    lesion: Lesion


def lesion_segments(result: StudyResult) -> list[PlannedSegment]:
    """Segment numbers for the lesion SEG: the primary first, then nodes, then other lesions.

    The SR refers to these numbers, so both writers call this one function.
    """
    order = {"primary": 0, "node": 1}
    lesions = sorted(result.lesions, key=lambda l: (order.get(l.kind, 2), l.index))
    return [PlannedSegment(n, lesion) for n, lesion in enumerate(lesions, start=1)]


# Clinical Trial Subject module (PS3.3 C.7.1.3): Type 1 sponsor and protocol ID, and a
# subject ID or a subject reading ID (1C).
_CLINICAL_TRIAL_SUBJECT_TAGS = (0x00120010, 0x00120020, 0x00120021, 0x00120030, 0x00120031, 0x00120040,
                                0x00120042, 0x00120081, 0x00120082)


def drop_incomplete_clinical_trial_subject(ds: Dataset) -> bool:
    """Remove a Clinical Trial Subject module copied incomplete from the source; True if removed.

    De-identified archives (TCIA) often carry an empty sponsor name and no subject
    ID; copying that verbatim makes our objects invalid (dciodvfy errors). The
    module is optional, so an incomplete one is dropped rather than invented; a
    complete one is kept.
    """
    present = [t for t in _CLINICAL_TRIAL_SUBJECT_TAGS if t in ds]
    if not present:
        return False
    complete = (bool(ds.get("ClinicalTrialSponsorName")) and bool(ds.get("ClinicalTrialProtocolID"))
                and (bool(ds.get("ClinicalTrialSubjectID")) or bool(ds.get("ClinicalTrialSubjectReadingID"))))
    if complete:
        return False
    for tag in present:
        del ds[tag]
    return True


def study_datasets_for_notes(settings: OutputSettings) -> dict:
    """Attributes that mark research use (ContentQualification) when the note is on."""
    return {"content_qualification": "RESEARCH"} if settings.research_note else {}


def save_dataset(ds, out_path) -> Path:
    """Write a DICOM object to `out_path`, creating its folder; return the path."""
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(out)
    return out
