"""Comprehensive 3D SR with a TID 1500 Measurement Report of every lesion and the N stage.

Structure (mirrors the real lymph-node SR in ../shared/data/seg-sr/tid1500-lymph-nodes,
with today's SCT codes where that one has the retired SRT ones):

- Observation context: the device "nodestage" (name, version, model).
- Procedure reported: PET/CT FDG imaging of whole body (SCT 443271005).
- Image Library: the source CT and PET instances.
- Imaging Measurements: one TID 1411 volumetric group per SEG segment (the key
  findings: primary, positive, equivocal and enlarged non-avid nodes; physiologic and
  other foci only with `outputs.seg_all_findings`), in SEG segment order, with tracking identifier and UID, Referenced Segment (+ source series =
  the CT), finding (Neoplasm, Primary / Neoplasm, Secondary / Lymph node), finding
  sites (the station's CID 7600 concept with laterality, and the private IASLC
  station code), measurement method "SUV body weight calculation method", the
  algorithm (name, version, backends), and the measurements:
  SUVbw (DCM 126401, `{SUVbw}g/ml`) with derivation Maximum / Peak Value Within ROI
  / Mean, Metabolic Volume (ml, sum of segmented voxel volumes), Total Lesion
  Glycolysis (g), Short axis (mm). The SUVbw items cite the PET instances that the
  lesion spans as their source images. Nodes carry a qualitative evaluation
  "Lymph node status" (positive / equivocal / negative / enlarged, not FDG-avid).
- One TID 1501 group "N staging": N category (TNM 8, TNM 9), the category if the
  equivocal stations were positive, the involved and the equivocal stations.
- One TID 1501 group per station with a node ("Station 4R"): finding site = the
  station, qualitative evaluation "Lymph node station status" = positive /
  equivocal / negative (/ enlarged, not FDG-avid).
- Qualitative Evaluations (document level): N category under TNM 8 and TNM 9 (and
  if equivocal stations were positive), each station's status, the involved
  stations, the positivity rule, the staging reasons, each node's
  decision with its numbers, stations not assessable, the landmark proxies, the
  backends, the warnings (uptake time, noise) and the intended-use note.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
from highdicom import UID
from highdicom.sr import (
    AlgorithmIdentification,
    CodeContentItem,
    CodedConcept,
    Comprehensive3DSR,
    ContainerContentItem,
    DeviceObserverIdentifyingAttributes,
    FindingSite,
    Measurement,
    MeasurementReport,
    MeasurementsAndQualitativeEvaluations,
    ObservationContext,
    ObserverContext,
    QualitativeEvaluation,
    ReferencedSegment,
    RelationshipTypeValues,
    SourceImageForMeasurement,
    SourceSeriesForSegmentation,
    TextContentItem,
    TrackingIdentifier,
    VolumetricROIMeasurementsAndQualitativeEvaluations,
)
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes as dcm_codes
from pydicom.uid import generate_uid

from pipeline import codes
from pipeline.outputs import common
from pipeline.outputs.seg import lesion_anatomy, lesion_property
from pipeline.settings import OutputSettings
from pipeline.staging import STATIONS
from pipeline.study_result import Lesion, LesionKind, StudyResult

logger = logging.getLogger(__name__)

Sources = Sequence[Dataset | str | Path] | None
DEVICE_UID = generate_uid(entropy_srcs=["nodestage device observer"])


def _num(value: float) -> float:
    """A value that fits DS (16 characters): 6 significant digits are plenty here."""
    return float(f"{float(value):.6g}")


def _finding_sites(lesion: Lesion) -> list[FindingSite]:
    anatomy = lesion_anatomy(lesion)
    sites = []
    if anatomy is not None:
        laterality = None
        if "AnatomicRegionModifierSequence" in anatomy:
            m = anatomy.AnatomicRegionModifierSequence[0]
            laterality = CodedConcept(m.CodeValue, m.CodingSchemeDesignator, m.CodeMeaning)
        sites.append(FindingSite(CodedConcept(anatomy.value, anatomy.scheme_designator, anatomy.meaning),
                                 laterality=laterality))
    if lesion.kind == LesionKind.NODE and lesion.station:
        sites.append(FindingSite(codes.station_code(lesion.station)))
    return sites


def _pet_slices_spanned(result: StudyResult, lesion: Lesion, pet: list[Dataset],
                        boxes: dict[int, tuple[slice, ...]]) -> list[Dataset]:
    """The PET instances whose slab overlaps the lesion's bounding box (SUV's source images)."""
    box = boxes.get(lesion.label_value)
    if box is None or not pet or result.lesion_labels is None:
        return []
    image = result.lesion_labels
    corners = [(i, j, k) for i in (box[2].start, box[2].stop - 1) for j in (box[1].start, box[1].stop - 1)
               for k in (box[0].start, box[0].stop - 1)]
    phys = np.array([image.TransformIndexToPhysicalPoint(tuple(int(v) for v in c)) for c in corners])
    iop = np.array([float(v) for v in pet[0].ImageOrientationPatient])
    normal = np.cross(iop[:3], iop[3:])
    positions = np.array([np.dot(normal, [float(v) for v in ds.ImagePositionPatient]) for ds in pet])
    spacing = float(np.median(np.abs(np.diff(np.sort(positions))))) if len(pet) > 1 else 0.0
    lo, hi = (phys @ normal).min() - spacing / 2, (phys @ normal).max() + spacing / 2
    chosen = [ds for ds, p in zip(pet, positions) if lo <= p <= hi]
    return sorted(chosen, key=lambda ds: np.dot(normal, [float(v) for v in ds.ImagePositionPatient]))


# What an Image Library entry (TID 1601/1602) reads from a cross-sectional image.
_LIBRARY_KEYWORDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPClassUID", "SOPInstanceUID", "Modality",
                     "FrameOfReferenceUID", "Rows", "Columns", "PixelSpacing", "ImageOrientationPatient",
                     "ImagePositionPatient", "SliceThickness", "SpacingBetweenSlices")


def _slim(ds: Dataset) -> Dataset:
    """Only the attributes an Image Library entry reads: cheap to copy (a PET header has hundreds)."""
    out = Dataset()
    for keyword in _LIBRARY_KEYWORDS:
        if keyword in ds:
            out.add(ds[keyword])
    return out


def _uids_only(ds: Dataset) -> Dataset:
    """What an evidence entry needs (study, series, SOP class and instance UIDs), cheap to copy."""
    out = Dataset()
    for key in ("StudyInstanceUID", "SeriesInstanceUID", "SOPClassUID", "SOPInstanceUID"):
        setattr(out, key, ds[key].value)
    return out


PEAK_SPHERE_RADIUS_MM = 6.2  # SUVpeak's 1 cm³ sphere


def _slices_near(pet_refs: list[Dataset], point_mm, within_mm: float) -> list[Dataset]:
    """The PET slices whose plane lies within `within_mm` of a point (at least the nearest one)."""
    if not pet_refs or point_mm is None:
        return pet_refs
    iop = np.array([float(v) for v in pet_refs[0].ImageOrientationPatient])
    normal = np.cross(iop[:3], iop[3:])
    distance = np.array([abs(np.dot(normal, np.array([float(v) for v in ds.ImagePositionPatient]) - point_mm))
                         for ds in pet_refs])
    chosen = [ds for ds, d in zip(pet_refs, distance) if d <= within_mm]
    return chosen or [pet_refs[int(np.argmin(distance))]]


def _measurements(lesion: Lesion, pet_refs: list[Dataset]) -> list[Measurement]:
    """SUVs cite their source PET slices: SUVmax the slice of the hottest voxel, SUVpeak those
    of its sphere, SUVmean every slice the lesion spans (fewer items than citing all three times)."""
    peak = np.array(lesion.peak_mm, float) if lesion.peak_mm is not None else None
    sources = {codes.MAXIMUM.value: _slices_near(pet_refs, peak, 0.0),
               codes.PEAK.value: _slices_near(pet_refs, peak, PEAK_SPHERE_RADIUS_MM),
               codes.MEAN.value: pet_refs}
    suv = [(lesion.suvmax, codes.MAXIMUM), (lesion.suvpeak, codes.PEAK), (lesion.suvmean, codes.MEAN)]
    items = [Measurement(name=codes.SUVBW, value=_num(v), unit=codes.UNIT_SUVBW, derivation=d,
                         referenced_images=[SourceImageForMeasurement.from_source_image(ds)
                                            for ds in sources[d.value]] or None) for v, d in suv]
    items.append(Measurement(name=codes.METABOLIC_VOLUME, value=_num(lesion.mtv_ml), unit=codes.UNIT_ML,
                             method=codes.SUM_OF_SEGMENTED_VOXEL_VOLUMES))
    items.append(Measurement(name=codes.TOTAL_LESION_GLYCOLYSIS, value=_num(lesion.tlg), unit=codes.UNIT_G))
    items.append(Measurement(name=codes.SHORT_AXIS, value=_num(lesion.short_axis_mm), unit=codes.UNIT_MM))
    return items


def _group(result: StudyResult, number: int, lesion: Lesion, seg: Dataset, pet_refs: list[Dataset],
           algorithm: AlgorithmIdentification) -> VolumetricROIMeasurementsAndQualitativeEvaluations:
    _category, finding = lesion_property(lesion)
    evaluations = None
    status = codes.NODE_STATUSES.get(common.node_status(lesion))
    if lesion.kind == LesionKind.NODE and status is not None:
        evaluations = [QualitativeEvaluation(codes.NODE_STATUS, status)]
    return VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(uid=lesion.tracking_uid, identifier=lesion.tracking_id),
        referenced_segment=ReferencedSegment(
            sop_class_uid=seg.SOPClassUID, sop_instance_uid=seg.SOPInstanceUID, segment_number=number,
            source_series=SourceSeriesForSegmentation(result.ct_series_uid)),
        finding_type=finding,
        method=codes.SUV_BODY_WEIGHT_METHOD,
        algorithm_id=algorithm,
        finding_sites=_finding_sites(lesion) or None,
        measurements=_measurements(lesion, pet_refs),
        qualitative_evaluations=evaluations,
    )


def staging_group(result: StudyResult, algorithm: AlgorithmIdentification) -> MeasurementsAndQualitativeEvaluations:
    """TID 1501 group "N staging": the N categories and involved stations as qualitative evaluations.

    The same facts are in the document-level Qualitative Evaluations container (their
    TID 1500 home); this group makes them visible to readers that only read
    measurement groups (dcmqi's tid1500reader, IDC's quantitative views).
    """
    evaluations = [QualitativeEvaluation(codes.N_CATEGORY_TNM8, codes.n_category(8, result.n_tnm8)),
                   QualitativeEvaluation(codes.N_CATEGORY_TNM9, codes.n_category(9, result.n_tnm9))]
    evaluations += _if_equivocal_evaluations(result, QualitativeEvaluation)
    evaluations += [QualitativeEvaluation(codes.INVOLVED_STATION, codes.station_code(s))
                    for s in result.involved_stations]
    evaluations += [QualitativeEvaluation(codes.EQUIVOCAL_STATION, codes.station_code(s))
                    for s in result.equivocal_stations]
    uid = generate_uid(entropy_srcs=[result.study_instance_uid, "N staging"])
    return MeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(uid=uid, identifier="N staging"),
        finding_type=codes.NODE_CATEGORY_FINDING,
        algorithm_id=algorithm,
        qualitative_evaluations=evaluations,
    )


def _if_equivocal_evaluations(result: StudyResult, make) -> list:
    """The N categories if the equivocal stations were positive (only when there are any)."""
    if not result.equivocal_stations:
        return []
    out = []
    for name, edition, value in ((codes.N_CATEGORY_TNM8_IF_EQUIVOCAL, 8, result.n_tnm8_if_equivocal_positive),
                                 (codes.N_CATEGORY_TNM9_IF_EQUIVOCAL, 9, result.n_tnm9_if_equivocal_positive)):
        if value:
            out.append(make(name, codes.n_category(edition, value)))
    return out


def station_statuses(result: StudyResult) -> list[tuple[str, CodedConcept]]:
    """(station, status code) for each station with a node, in IASLC order; unknown statuses skipped."""
    order = {s: i for i, s in enumerate(STATIONS)}
    out = []
    for station in sorted(result.station_status, key=lambda s: order.get(s, len(order))):
        status = codes.NODE_STATUSES.get(str(result.station_status[station]))
        if status is None:
            logger.warning("station %s: status %r has no code; not written", station, result.station_status[station])
            continue
        out.append((station, status))
    return out


def station_groups(result: StudyResult, algorithm: AlgorithmIdentification) -> list[MeasurementsAndQualitativeEvaluations]:
    """TID 1501 groups "Station <s>": the station as finding site and its status, one per station."""
    groups = []
    for station, status in station_statuses(result):
        laterality = codes.station_laterality(station)
        groups.append(MeasurementsAndQualitativeEvaluations(
            tracking_identifier=TrackingIdentifier(
                uid=generate_uid(entropy_srcs=[result.study_instance_uid, "station", station]),
                identifier=f"Station {station}"),
            finding_type=codes.LYMPH_NODE,
            algorithm_id=algorithm,
            finding_sites=[FindingSite(codes.station_code(station)),
                           FindingSite(codes.station_anatomy(station), laterality=laterality)],
            qualitative_evaluations=[QualitativeEvaluation(codes.STATION_STATUS, status)],
        ))
    return groups


def _text(name: CodedConcept, value: str) -> TextContentItem:
    return TextContentItem(name=name, value=value, relationship_type=RelationshipTypeValues.CONTAINS)


def _code(name: CodedConcept, value: CodedConcept) -> CodeContentItem:
    return CodeContentItem(name=name, value=value, relationship_type=RelationshipTypeValues.CONTAINS)


def _describe(value) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}: {v}" for k, v in value.items())
    return str(value)


def document_evaluations(result: StudyResult, settings: OutputSettings) -> ContainerContentItem:
    """TID 1500 'Qualitative Evaluations': the N stage and everything it rests on."""
    items: list = [
        _code(codes.N_CATEGORY_TNM8, codes.n_category(8, result.n_tnm8)),
        _code(codes.N_CATEGORY_TNM9, codes.n_category(9, result.n_tnm9)),
    ]
    items += _if_equivocal_evaluations(result, _code)
    items += [_code(codes.station_code(s), status) for s, status in station_statuses(result)]
    items += [_code(codes.INVOLVED_STATION, codes.station_code(s)) for s in result.involved_stations]
    items += [_code(codes.EQUIVOCAL_STATION, codes.station_code(s)) for s in result.equivocal_stations]
    if result.positivity_rule:
        items.append(_text(codes.POSITIVITY_RULE, result.positivity_rule))
    items += [_text(codes.STAGING_REASON, str(r)) for r in result.staging.get("reasons", [])]
    items += [_text(codes.STAGING_REASON, f"at a station border: {b['text']}") for b in result.boundary_readings]
    for lesion in result.nodes:
        numbers = (f"SUVmax {lesion.suvmax:.2f}, SUVpeak {lesion.suvpeak:.2f}, SUVmean {lesion.suvmean:.2f}, "
                   f"MTV {lesion.mtv_ml:.2f} ml, short axis {lesion.short_axis_mm:.1f} mm")
        status = str(common.node_status(lesion)).replace("_", " ")
        items.append(_text(codes.NODE_DECISION, f"{lesion.tracking_id}: {status} ({numbers}). {lesion.rule}"))
    items += [_text(codes.WARNING, w) for w in result.warnings]
    items += [_text(codes.STATION_NOT_ASSESSABLE, f"{s}: {why}") for s, why in result.not_assessable.items()]
    items += [_text(codes.STATION_LANDMARK, _describe(l)) for l in result.landmarks]
    items += [_text(codes.PROCESSING_BACKEND, f"{k}: {v}") for k, v in common.backend_parameters(result).items()]
    if settings.research_note:
        items.append(_text(codes.INTENDED_USE, common.RESEARCH_NOTE))
    container = ContainerContentItem(name=codes.QUALITATIVE_EVALUATIONS,
                                     relationship_type=RelationshipTypeValues.CONTAINS)
    container.ContentSequence = items
    return container


def _seg_dataset(seg: Dataset | str | Path) -> Dataset:
    return seg if isinstance(seg, Dataset) else pydicom.dcmread(seg)


def build_sr(result: StudyResult, seg: Dataset | str | Path | None, settings: OutputSettings | None = None,
             source_ct: Sources = None, source_pet: Sources = None) -> Comprehensive3DSR:
    """The SR as a highdicom dataset; `seg` is the lesion SEG it refers to (dataset or file).

    `seg` may be None only when the result has no lesion: the SR then holds the N
    staging group alone.
    """
    settings = settings or OutputSettings()
    planned = common.lesion_segments(result, settings)
    if seg is None and planned:
        raise ValueError("the SR of a result with lesions needs the lesion SEG")
    seg_ds = _seg_dataset(seg) if seg is not None else None
    ct = common.source_ct(result, source_ct)
    pet = common.source_pet(result, source_pet)
    segment_labels = {int(s.SegmentNumber): s.TrackingUID for s in seg_ds.SegmentSequence} if seg_ds is not None else {}
    for p in planned:
        if segment_labels.get(p.number) != p.lesion.tracking_uid:
            raise ValueError(f"SEG segment {p.number} is not {p.lesion.tracking_id}: SEG and result disagree")
    boxes = common.label_boxes(result.lesion_labels) if result.lesion_labels is not None else {}
    algorithm = AlgorithmIdentification(name=common.ALGORITHM_NAME, version=common.software_version(),
                                        parameters=[f"{k}: {v}" for k, v in common.backend_parameters(result).items()]
                                        or None)
    spanned = {p.number: _pet_slices_spanned(result, p.lesion, pet, boxes) for p in planned}
    groups = [_group(result, p.number, p.lesion, seg_ds, spanned[p.number], algorithm) for p in planned]
    groups.append(staging_group(result, algorithm))
    groups += station_groups(result, algorithm)
    # Image Library: the PET slice of each lesion's SUVmax (as in the real lymph-node SR; every
    # spanned slice would be ~16 content items each, most of the SR's size and time). The CT is
    # referenced as a whole series by every group's "source series for segmentation".
    library_slices = {ds.SOPInstanceUID: ds for p in planned for ds in _slices_near(
        spanned[p.number], None if p.lesion.peak_mm is None else np.array(p.lesion.peak_mm, float), 0.0)}
    library = [_slim(ds) for ds in library_slices.values()]
    observer = ObserverContext(
        observer_type=dcm_codes.DCM.Device,
        observer_identifying_attributes=DeviceObserverIdentifyingAttributes(
            uid=DEVICE_UID, name=common.ALGORITHM_NAME, manufacturer_name=common.MANUFACTURER,
            model_name=f"{common.MODEL_NAME} {common.software_version()}"))
    report = MeasurementReport(
        observation_context=ObservationContext(observer_device_context=observer),
        procedure_reported=codes.PET_CT_FDG_WHOLE_BODY,
        imaging_measurements=groups,
        referenced_images=library or None,
    )
    report[0].ContentSequence.append(document_evaluations(result, settings))
    ref = ct[0]
    with common.no_phi_warnings():
        sr = Comprehensive3DSR(
            # Patient and study come from the first CT header; the rest only need their UIDs.
            evidence=[ct[0], *(_uids_only(ds)
                               for ds in [*ct[1:], *pet, *([seg_ds] if seg_ds is not None else [])])],
            content=report[0],
            series_instance_uid=UID(),
            series_number=settings.series_number_base + 1,
            sop_instance_uid=UID(),
            instance_number=1,
            manufacturer=common.MANUFACTURER,
            is_complete=True,
            is_final=False,
            is_verified=False,
            institution_name=ref.get("InstitutionName") or None,
            series_description=common.series_description("N staging report", settings),
            coding_schemes=[codes.coding_scheme_identification()],
            manufacturer_model_name=common.MODEL_NAME,
            software_versions=common.software_version(),
            device_serial_number=common.DEVICE_SERIAL_NUMBER,
            specific_character_set="ISO_IR 192",  # UTF-8: reasons use '≥' and '→'
            **common.study_datasets_for_notes(settings),
        )
    common.drop_incomplete_clinical_trial_subject(sr)
    logger.info("SR: %d measurement groups, N %s (TNM 8) / %s (TNM 9)", len(groups), result.n_tnm8, result.n_tnm9)
    return sr


def write_sr(result: StudyResult, seg: Dataset | str | Path | None, settings: OutputSettings | None = None,
             out_path: str | Path = "sr.dcm", source_ct: Sources = None, source_pet: Sources = None) -> Path:
    """Write the SR to `out_path` and return the path."""
    sr = build_sr(result, seg, settings, source_ct, source_pet)
    return common.save_dataset(sr, out_path)
