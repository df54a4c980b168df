"""What every nodestage DICOM output shares: equipment, notes, source headers, lesion order.

The SEG, the SR and the summary must agree on which lesion is which segment, and
on how the research-use note and the algorithm are recorded, so those rules live
here once.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from scipy import ndimage
from highdicom import AlgorithmIdentificationSequence
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

import pipeline
from pipeline.settings import OutputSettings
from pipeline.study_result import Lesion, LesionKind, NodeStatus, StudyResult

logger = logging.getLogger(__name__)

# highdicom warns, with the patient's name in the message, when a name has a single component.
_PERSON_NAME_WARNING = r".*unlikely to represent the intended person name.*"


@contextmanager
def no_phi_warnings() -> Iterator[None]:
    """Build a highdicom object without its warnings that quote the patient's name (stderr and logs)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.filterwarnings("always", message=_PERSON_NAME_WARNING, category=UserWarning)
        yield
    for w in caught:
        if "person name" in str(w.message):
            logger.debug("the patient name has a single component; copied unchanged")
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)

MANUFACTURER = "nodestage"
MODEL_NAME = "nodestage"
DEVICE_SERIAL_NUMBER = "1"
ALGORITHM_NAME = "nodestage"
RESEARCH_NOTE = "research use, not for diagnosis"

class Category(StrEnum):
    """How a finding is shown and coloured: its kind, and for nodes their status."""

    PRIMARY = "primary"
    POSITIVE = "positive"
    EQUIVOCAL = "equivocal"
    ENLARGED_NON_AVID = "enlarged_non_avid"
    NEGATIVE = "negative"
    PHYSIOLOGIC = "physiologic"
    OTHER = "other"  # lung_other, outside_stations, distant, other


# Display colours by category (RGB), shared by the SEG and the summary image. Chosen to stay
# apart on the white MIP and on the fused PET/CT (no yellow: it vanishes in both).
COLOURS = {
    Category.PRIMARY: (220, 30, 30),
    Category.POSITIVE: (255, 120, 0),
    Category.EQUIVOCAL: (180, 50, 220),
    Category.ENLARGED_NON_AVID: (30, 110, 255),
    Category.NEGATIVE: (20, 160, 60),
    Category.PHYSIOLOGIC: (120, 120, 120),
    Category.OTHER: (0, 150, 160),
}
CATEGORY_LABELS = {
    Category.PRIMARY: "primary tumour",
    Category.POSITIVE: "positive node",
    Category.EQUIVOCAL: "equivocal node",
    Category.ENLARGED_NON_AVID: "enlarged, not FDG-avid",
    Category.NEGATIVE: "negative node",
    Category.PHYSIOLOGIC: "physiologic uptake",
    Category.OTHER: "other uptake",
}
# What a radiologist needs by default: the primary and every node that is not plainly negative.
KEY_CATEGORIES = (Category.PRIMARY, Category.POSITIVE, Category.EQUIVOCAL, Category.ENLARGED_NON_AVID)
CATEGORY_ORDER = {c: i for i, c in enumerate(Category)}
_LEGACY_STATUS = {"enlarged, not FDG-avid": NodeStatus.ENLARGED_NON_AVID, "not a node": NodeStatus.NOT_A_NODE}


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


def node_status(lesion: Lesion) -> NodeStatus:
    """The lesion's status as a NodeStatus (older results carried free-text strings)."""
    value = lesion.status
    if isinstance(value, NodeStatus):
        return value
    try:
        return NodeStatus(value)
    except ValueError:
        return _LEGACY_STATUS.get(str(value), NodeStatus.NOT_A_NODE)


def lesion_category(lesion: Lesion) -> Category:
    """The display and selection category of a finding (colour, legend key, SEG and summary choice)."""
    if lesion.kind == LesionKind.PRIMARY:
        return Category.PRIMARY
    if lesion.kind == LesionKind.PHYSIOLOGIC:
        return Category.PHYSIOLOGIC
    if lesion.kind != LesionKind.NODE:
        return Category.OTHER
    status = node_status(lesion)
    if lesion.positive or status == NodeStatus.POSITIVE:
        return Category.POSITIVE
    if status == NodeStatus.EQUIVOCAL:
        return Category.EQUIVOCAL
    if status == NodeStatus.ENLARGED_NON_AVID:
        return Category.ENLARGED_NON_AVID
    return Category.NEGATIVE


def is_key_finding(lesion: Lesion) -> bool:
    """The primary, and positive, equivocal or enlarged non-avid nodes: what every output shows."""
    return lesion_category(lesion) in KEY_CATEGORIES


def lesion_name(lesion: Lesion) -> str:
    """'Node 2' from the tracking ID 'Node 2 (4R)'; 'Primary tumour' stays as it is."""
    return lesion.tracking_id.split(" (", 1)[0].strip() or lesion.tracking_id


def lesion_site(lesion: Lesion) -> str:
    """Where a finding is, in a few words: '4R', 'right upper lobe', 'bone marrow'."""
    if lesion.kind == LesionKind.NODE and lesion.station:
        return lesion.station
    if lesion.lobe:
        parts = lesion.lobe.removeprefix("lung_").split("_")  # lung_upper_lobe_right -> right upper lobe
        return " ".join(parts[-1:] + parts[:-1]) if parts[-1] in ("right", "left") else " ".join(parts)
    if lesion.physiologic_site is not None:
        return str(lesion.physiologic_site).replace("_", " ")
    if lesion.side:
        return f"{lesion.side} lung" if lesion.kind in (LesionKind.PRIMARY, LesionKind.LUNG_OTHER) else lesion.side
    return str(lesion.kind).replace("_", " ")


SEGMENT_LABEL_MAX = 64  # SegmentLabel is LO


def segment_label(lesion: Lesion) -> str:
    """A label that reads well in a viewer's segment list: 'Node 2: 4R, SUVmax 6.1, positive'."""
    category = lesion_category(lesion)
    parts = [lesion_site(lesion), f"SUVmax {lesion.suvmax:.1f}"]
    if category != Category.PRIMARY:
        parts.append(CATEGORY_LABELS[category].removesuffix(" node").removesuffix(" uptake"))
    text = f"{lesion_name(lesion)}: {', '.join(parts)}"
    return text if len(text) <= SEGMENT_LABEL_MAX else text[:SEGMENT_LABEL_MAX - 3] + "..."


@dataclass(frozen=True)
class PlannedSegment:
    number: int
    lesion: Lesion


def lesion_segments(result: StudyResult, settings: OutputSettings | None = None) -> list[PlannedSegment]:
    """Segment numbers for the lesion SEG: the primary first, then nodes, then other findings.

    Only key findings (`is_key_finding`) unless `settings.seg_all_findings`: a viewer's
    segment list of a hundred physiologic foci hides the three that matter. The SR refers
    to these numbers, so both writers call this one function.
    """
    settings = settings or OutputSettings()
    order = {LesionKind.PRIMARY: 0, LesionKind.NODE: 1}
    chosen = [l for l in result.lesions if settings.seg_all_findings or is_key_finding(l)]
    lesions = sorted(chosen, key=lambda l: (order.get(l.kind, 2), l.index))
    return [PlannedSegment(n, lesion) for n, lesion in enumerate(lesions, start=1)]


_BOXES_CACHE: list = []  # [(image, boxes)]: the last label map's boxes; the image is held so its id stays unique


def label_boxes(labels: sitk.Image) -> dict[int, tuple[slice, slice, slice]]:
    """Label value -> (z, y, x) bounding box of a label map, computed once per map.

    The SEG, the SR and the summary each need the boxes of the same lesion map; one
    pass over a 512 × 512 × N map is worth sharing.
    """
    for image, boxes in _BOXES_CACHE:
        if image is labels:
            return boxes
    array = sitk.GetArrayViewFromImage(labels)
    boxes = {v: box for v, box in enumerate(ndimage.find_objects(array), start=1) if box is not None}
    _BOXES_CACHE[:] = [(labels, boxes)]
    return boxes


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


IMAGE_COMMENTS_MAX = 10240  # ImageComments is LT


def add_warnings(ds: Dataset, result: StudyResult) -> None:
    """Put the study's warnings (uptake time, noise, ...) in ImageComments (General Image module).

    Every output carries them (issue 12): the SR as text items, the summary burned in, and
    the SEG and the summary here, where a viewer's header panel shows them.
    """
    if result.warnings:
        ds.ImageComments = "; ".join(result.warnings)[:IMAGE_COMMENTS_MAX]


def study_datasets_for_notes(settings: OutputSettings) -> dict:
    """Attributes that mark research use (ContentQualification) when the note is on."""
    return {"content_qualification": "RESEARCH"} if settings.research_note else {}


def save_dataset(ds, out_path) -> Path:
    """Write a DICOM object to `out_path`, creating its folder; return the path."""
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(out)
    return out
