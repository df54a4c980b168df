"""DICOM Segmentation of the lesions, and optionally of the IASLC station map.

One segment per key finding (the primary and the positive, equivocal and enlarged
non-avid nodes; every finding when `outputs.seg_all_findings`), numbered by
`common.lesion_segments` (primary first, then nodes), with DESIGN §5 codes:

- primary: category Morphologically Abnormal Structure, type Neoplasm, Primary,
  anatomic region = its lobe (or Lung) with a laterality modifier;
- positive node: type Neoplasm, Secondary; a node that is not positive (equivocal,
  enlarged but not avid, or negative) is typed as an anatomical structure, Lymph
  node, so that no reader mistakes it for a metastasis;
- every node: tracking ID "Node <n> (<station>)" and the lesion's tracking UID,
  anatomic region = the station's CID 7600 concept with a laterality modifier;
- segment label for a viewer's list: "Node 2: 4R, SUVmax 6.1, positive" (LO, 64).

BINARY or FRACTIONAL, not LABELMAP: dcmtk 3.6.7 and dciodvfy do not know the LABELMAP
SOP class (ENVIRONMENT.md). By default (`outputs.seg_encoding: fractional_rle`) the binary
masks are stored as FRACTIONAL, OCCUPANCY, with only the values 0 and 255, in RLE Lossless:
an uncompressed BINARY frame costs 32 KB per 512 x 512 slice whatever it holds (ACRIN: 2.6 MB),
highdicom compresses BINARY only as JPEG 2000, which dcmqi's DCMTK cannot read, while RLE of
mostly-zero bytes is about 6x smaller (ACRIN: 0.4 MB). Readers lose nothing: dcmqi reads the
same masks, and OHIF/cornerstone draws a FRACTIONAL SEG holding only 0 and its maximum as a
binary one. `binary` keeps uncompressed BINARY for a reader that cannot take FRACTIONAL.
Frames stay the full size of the CT: cornerstone refuses SEG frames of another size.

Frames are written against the source CT instances in slice order (checked); only the
run of slices that holds the segments is passed to highdicom (it handles every frame it
is given, and a full CT is hundreds), and empty frames are omitted.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from highdicom import UID
from highdicom.color import CIELabColor
from highdicom.seg import (Segmentation, SegmentAlgorithmTypeValues, SegmentationFractionalTypeValues,
                           SegmentationTypeValues, SegmentDescription)
from highdicom.sr import CodedConcept
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, RLELossless

from pipeline import codes
from pipeline.outputs import common
from pipeline.settings import OutputSettings
from pipeline.staging import STATIONS
from pipeline.study_result import Lesion, LesionKind, StudyResult

logger = logging.getLogger(__name__)

Sources = Sequence[Dataset | str | Path] | None

# FRACTIONAL pixels are 8-bit: a voxel inside a segment is stored as this value, outside as 0.
MAX_FRACTIONAL_VALUE = 255


def _encoding(settings: OutputSettings) -> dict:
    """highdicom keyword arguments for `outputs.seg_encoding` (module docstring: why)."""
    if settings.seg_encoding == "binary":
        return {"segmentation_type": SegmentationTypeValues.BINARY,
                "transfer_syntax_uid": ExplicitVRLittleEndian}
    # A label map of segment numbers: highdicom turns each segment into a 0/1 mask and scales it
    # by max_fractional_value, so the stored values are exactly 0 and 255.
    return {"segmentation_type": SegmentationTypeValues.FRACTIONAL,
            "fractional_type": SegmentationFractionalTypeValues.OCCUPANCY,
            "max_fractional_value": MAX_FRACTIONAL_VALUE,
            "transfer_syntax_uid": RLELossless}


def _with_laterality(region: CodedConcept, laterality: CodedConcept | None) -> CodedConcept:
    """A copy of `region` carrying an Anatomic Region Modifier Sequence with the laterality."""
    item = CodedConcept(region.value, region.scheme_designator, region.meaning)
    if laterality is not None:
        item.AnatomicRegionModifierSequence = [
            CodedConcept(laterality.value, laterality.scheme_designator, laterality.meaning)]
    return item


def lesion_anatomy(lesion: Lesion) -> CodedConcept | None:
    """Anatomic region (with laterality modifier where known) of one lesion; None if unknown."""
    laterality = codes.LATERALITY.get(lesion.side or "")
    if lesion.kind == LesionKind.NODE:
        return _with_laterality(codes.station_anatomy(lesion.station),
                                codes.station_laterality(lesion.station, lesion.side))
    if lesion.lobe:
        return _with_laterality(codes.LOBES.get(lesion.lobe, codes.LUNG), laterality)
    if lesion.kind in (LesionKind.PRIMARY, LesionKind.LUNG_OTHER):
        return _with_laterality(codes.LUNG, laterality)
    return None


def lesion_property(lesion: Lesion) -> tuple[CodedConcept, CodedConcept]:
    """(category, type) of a lesion's segment and SR finding."""
    category = common.lesion_category(lesion)
    if category == common.Category.PRIMARY:
        return codes.MORPHOLOGICALLY_ABNORMAL_STRUCTURE, codes.NEOPLASM_PRIMARY
    if category == common.Category.POSITIVE:
        return codes.MORPHOLOGICALLY_ABNORMAL_STRUCTURE, codes.NEOPLASM_SECONDARY
    if lesion.kind == LesionKind.NODE:
        return codes.ANATOMICAL_STRUCTURE, codes.LYMPH_NODE
    return codes.MORPHOLOGICALLY_ABNORMAL_STRUCTURE, codes.LESION


def _colour(category: common.Category) -> CIELabColor:
    return CIELabColor.from_rgb(*common.COLOURS[category])


def _segment_description(number: int, lesion: Lesion, result: StudyResult) -> SegmentDescription:
    category, prop = lesion_property(lesion)
    return SegmentDescription(
        segment_number=number,
        segment_label=common.segment_label(lesion),
        segmented_property_category=category,
        segmented_property_type=prop,
        algorithm_type=SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=common.algorithm_identification(result),
        tracking_uid=lesion.tracking_uid,
        tracking_id=lesion.tracking_id[:64],
        anatomic_regions=[region] if (region := lesion_anatomy(lesion)) is not None else None,
        display_color=_colour(common.lesion_category(lesion)),
    )


def _label_array(labels: sitk.Image, mapping: dict[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(slice indices, their (slices, rows, columns) array of segment numbers) for the run of
    slices from the first to the last that holds a mapped label. Slices outside it would only
    become omitted empty frames; inside it they are kept, so that the referenced source images
    stay a regular volume (readers such as dcmqi derive the slice spacing from it)."""
    array = sitk.GetArrayViewFromImage(labels)
    boxes = common.label_boxes(labels)
    occupied = np.zeros(array.shape[0], bool)
    for value in mapping:
        box = boxes.get(value)
        if box is not None:
            occupied[box[0]] = True
    held = np.flatnonzero(occupied)
    slices = np.arange(held.min(), held.max() + 1) if len(held) else held
    top = max(mapping.values(), default=0)
    dtype = np.uint8 if top < 256 else np.uint16
    lut = np.zeros(max(mapping, default=0) + 1, dtype=dtype)
    for value, number in mapping.items():
        lut[value] = number
    sub = array[slices]
    sub = np.where(sub < lut.size, sub, 0)
    return slices, lut[sub.astype(np.intp, copy=False)]


def _build(sources: list[Dataset], labels: sitk.Image, mapping: dict[int, int],
           descriptions: list[SegmentDescription], settings: OutputSettings, series_number: int,
           what: str, content_label: str, coding_schemes=None) -> Segmentation:
    common.check_slice_order(labels, sources)
    slices, array = _label_array(labels, mapping)
    present = set(np.unique(array).tolist()) - {0}
    missing = [d.SegmentLabel for d in descriptions if int(d.SegmentNumber) not in present]
    if missing:
        raise ValueError(f"segments without any voxel in the label map: {', '.join(missing)}")
    with common.no_phi_warnings():
        seg = Segmentation(
            source_images=[sources[int(k)] for k in slices],
            pixel_array=array,
            **_encoding(settings),
            segment_descriptions=descriptions,
            series_instance_uid=UID(),
            series_number=series_number,
            sop_instance_uid=UID(),
            instance_number=1,
            manufacturer=common.MANUFACTURER,
            manufacturer_model_name=common.MODEL_NAME,
            software_versions=common.software_version(),
            device_serial_number=common.DEVICE_SERIAL_NUMBER,
            content_description=f"nodestage {what}"[:64],
            content_label=content_label,
            omit_empty_frames=True,
            series_description=common.series_description(what, settings),
            coding_schemes=coding_schemes,
            **common.study_datasets_for_notes(settings),
        )
    common.drop_incomplete_clinical_trial_subject(seg)
    return seg


def build_lesion_seg(result: StudyResult, source_ct: Sources = None,
                     settings: OutputSettings | None = None) -> Segmentation:
    """The lesion SEG as a highdicom dataset (not written)."""
    settings = settings or OutputSettings()
    if result.lesion_labels is None:
        raise ValueError("the StudyResult has no lesion label map")
    planned = common.lesion_segments(result, settings)
    if not planned:
        raise ValueError("no finding to segment: a SEG needs at least one segment")
    sources = common.source_ct(result, source_ct)
    mapping = {p.lesion.label_value: p.number for p in planned}
    descriptions = [_segment_description(p.number, p.lesion, result) for p in planned]
    seg = _build(sources, result.lesion_labels, mapping, descriptions, settings,
                 settings.series_number_base, "lesions", "LESIONS")
    common.add_warnings(seg, result)
    logger.info("lesion SEG: %d segments, %d frames", len(descriptions), int(seg.NumberOfFrames))
    return seg


def write_lesion_seg(result: StudyResult, source_ct: Sources = None, settings: OutputSettings | None = None,
                     out_path: str | Path = "seg.dcm") -> Path:
    """Write the lesion SEG to `out_path` and return the path."""
    seg = build_lesion_seg(result, source_ct, settings)
    return common.save_dataset(seg, out_path)


def build_station_seg(result: StudyResult, source_ct: Sources = None,
                      settings: OutputSettings | None = None) -> Segmentation:
    """A SEG of the IASLC station map, one segment per station present, for checking boundaries."""
    settings = settings or OutputSettings()
    if result.station_labels is None or not result.station_values:
        raise ValueError("the StudyResult has no station map")
    sources = common.source_ct(result, source_ct)
    present = set(np.unique(sitk.GetArrayViewFromImage(result.station_labels)).tolist())
    order = {s: i for i, s in enumerate(STATIONS)}
    stations = sorted((s for s, v in result.station_values.items() if v in present), key=lambda s: order.get(s, 99))
    if not stations:
        raise ValueError("the station map has no station voxels")
    algorithm = common.algorithm_identification(result)
    mapping, descriptions = {}, []
    for number, station in enumerate(stations, start=1):
        mapping[result.station_values[station]] = number
        descriptions.append(SegmentDescription(
            segment_number=number,
            segment_label=f"Station {station}",
            segmented_property_category=codes.ANATOMICAL_STRUCTURE,
            segmented_property_type=codes.station_code(station),
            algorithm_type=SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            tracking_uid=UID(),
            tracking_id=f"Station {station}",
            anatomic_regions=[_with_laterality(codes.station_anatomy(station), codes.station_laterality(station))],
        ))
    return _build(sources, result.station_labels, mapping, descriptions, settings,
                  settings.series_number_base + 3, "IASLC stations", "STATIONS",
                  coding_schemes=[codes.coding_scheme_identification()])


def write_station_seg(result: StudyResult, source_ct: Sources = None, settings: OutputSettings | None = None,
                      out_path: str | Path = "stations_seg.dcm") -> Path:
    seg = build_station_seg(result, source_ct, settings)
    return common.save_dataset(seg, out_path)
