"""SEG, SR and Secondary Capture of every phantom case: dciodvfy finds no error, and
highdicom / pydicom read each object back with the content we meant.

Outputs are written once per case (`result_factory.outputs_for`) on the session's
small phantoms; every test here reads files back rather than trusting the writer.
"""

import json
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from PIL import Image

from pipeline import codes, phantom
from pipeline.outputs import common
from pipeline.settings import OutputSettings
from tests.result_factory import dciodvfy, outputs_for

CASES = list(phantom.CASES)
PATIENT_STUDY = ("PatientID", "PatientName", "PatientSex", "StudyInstanceUID", "StudyDate", "StudyTime",
                 "AccessionNumber", "StudyID")


@pytest.fixture
def case_outputs(request, phantom_studies):
    study = phantom_studies[request.param]
    result, paths = outputs_for(study.out_dir)
    return study, result, paths


def _ct0(result):
    return pydicom.dcmread(result.volumes.ct_files[0], stop_before_pixels=True)


@pytest.mark.parametrize("case_outputs", CASES, indirect=True)
@pytest.mark.parametrize("name, iod", [("seg", "Segmentation"), ("sr", "Comprehensive3DSR"),
                                       ("summary", "SCImage"), ("stations_seg", "Segmentation")])
def test_dciodvfy_reports_no_error(case_outputs, name, iod):
    _study, _result, paths = case_outputs
    found, errors, warnings = dciodvfy(paths[name])
    for line in sorted(set(warnings)):
        print(f"dciodvfy {name}: {line} (x{warnings.count(line)})")
    assert found == iod
    assert errors == []
    # The only warnings we accept: our private coding scheme (designator and UID) is not a
    # DICOM defined term.
    private = (codes.PRIVATE_SCHEME, codes.PRIVATE_SCHEME_UID)
    assert {w for w in warnings if not any(p in w for p in private)} == set()


@pytest.mark.parametrize("case_outputs", CASES, indirect=True)
def test_seg_reads_back_voxel_for_voxel(case_outputs):
    study, result, paths = case_outputs
    seg = hd.seg.segread(paths["seg"])
    ct0 = _ct0(result)
    assert seg.SegmentationType == "FRACTIONAL"  # outputs.seg_encoding default: fractional_rle
    assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"
    for key in PATIENT_STUDY:
        assert seg.get(key) == ct0.get(key), key
    assert seg.SeriesInstanceUID not in (result.ct_series_uid, result.pet_series_uid)
    assert int(seg.SeriesNumber) == OutputSettings().series_number_base
    assert "research use, not for diagnosis" in seg.SeriesDescription
    assert seg.FrameOfReferenceUID == ct0.FrameOfReferenceUID
    ref_series = {s.SeriesInstanceUID for s in seg.ReferencedSeriesSequence}
    assert ref_series == {result.ct_series_uid}

    planned = common.lesion_segments(result)
    key = [l for l in result.lesions if common.is_key_finding(l)]
    assert len(key) < len(result.lesions)  # the factory adds physiologic and distant foci: not in the SEG
    assert seg.number_of_segments == len(planned) == len(key)
    assert {p.lesion.label_value for p in planned} == {l.label_value for l in key}
    for p in planned:
        desc = seg.get_segment_description(p.number)
        assert desc.tracking_uid == p.lesion.tracking_uid
        assert desc.tracking_id == p.lesion.tracking_id
        assert desc.segment_label == common.segment_label(p.lesion)
        prop = desc.segmented_property_type
        if p.lesion.kind == "primary":
            assert p.number == 1 and prop.value == codes.NEOPLASM_PRIMARY.value
            assert desc.segmented_property_category.value == codes.MORPHOLOGICALLY_ABNORMAL_STRUCTURE.value
        elif p.lesion.positive:
            assert prop.value == codes.NEOPLASM_SECONDARY.value
        else:
            assert prop.value == codes.LYMPH_NODE.value
        if p.lesion.kind == "node":
            assert p.lesion.tracking_id.startswith("Node ") and f"({p.lesion.station})" in p.lesion.tracking_id
            region = desc.AnatomicRegionSequence[0]
            assert region.CodeValue == codes.station_anatomy(p.lesion.station).value
            lat = codes.station_laterality(p.lesion.station)
            if lat is not None:
                assert region.AnatomicRegionModifierSequence[0].CodeValue == lat.value
            else:
                assert "AnatomicRegionModifierSequence" not in region

    # Only non-empty frames, and every voxel equal to our label map (via the source instances):
    # the SEG references the run of CT slices from the first to the last that holds a segment.
    assert int(seg.NumberOfFrames) < len(result.volumes.ct_files) * len(planned)
    sop_uids = [pydicom.dcmread(f, stop_before_pixels=True, specific_tags=["SOPInstanceUID"]).SOPInstanceUID
                for f in result.volumes.ct_files]
    ours = sitk.GetArrayFromImage(result.lesion_labels)
    lut = np.zeros(int(ours.max()) + 1, np.int64)
    for p in planned:
        lut[p.lesion.label_value] = p.number
    expected = lut[ours]
    referenced = {i.ReferencedSOPInstanceUID for s in seg.ReferencedSeriesSequence
                  for i in s.ReferencedInstanceSequence}
    held = [k for k in range(len(sop_uids)) if expected[k].any()]
    occupied = list(range(held[0], held[-1] + 1))
    assert referenced == {sop_uids[k] for k in occupied}
    read = seg.get_pixels_by_source_instance([sop_uids[k] for k in occupied], combine_segments=True,
                                             skip_overlap_checks=True)
    assert np.array_equal(read, expected[occupied])


@pytest.mark.parametrize("case_outputs", CASES, indirect=True)
def test_sr_reads_back_with_references_that_resolve(case_outputs):
    study, result, paths = case_outputs
    sr = hd.sr.srread(paths["sr"])
    seg = pydicom.dcmread(paths["seg"], stop_before_pixels=True)
    ct0 = _ct0(result)
    for key in PATIENT_STUDY:
        assert sr.get(key) == ct0.get(key), key
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
    assert int(sr.SeriesNumber) == OutputSettings().series_number_base + 1
    assert [s.CodingSchemeDesignator for s in sr.CodingSchemeIdentificationSequence] == ["99NODESTAGE"]
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"

    # Evidence: the CT and PET series and the SEG.
    evidence = {s.SeriesInstanceUID: {i.ReferencedSOPInstanceUID for i in s.ReferencedSOPSequence}
                for st in sr.CurrentRequestedProcedureEvidenceSequence for s in st.ReferencedSeriesSequence}
    pet_uids = {pydicom.dcmread(f, stop_before_pixels=True, specific_tags=["SOPInstanceUID"]).SOPInstanceUID
                for f in result.volumes.pet_files}
    assert evidence[seg.SeriesInstanceUID] == {seg.SOPInstanceUID}
    assert len(evidence[result.ct_series_uid]) == len(result.volumes.ct_files)
    assert evidence[result.pet_series_uid] == pet_uids

    segments = {int(s.SegmentNumber): s.TrackingUID for s in seg.SegmentSequence}
    groups = sr.content.get_volumetric_roi_measurement_groups()
    by_uid = {l.tracking_uid: l for l in result.lesions}
    assert len(groups) == len(common.lesion_segments(result)) < len(result.lesions)
    for g in groups:
        lesion = by_uid[g.tracking_uid]
        assert g.tracking_identifier == lesion.tracking_id
        ref = g.referenced_segment
        assert ref.referenced_sop_instance_uid == seg.SOPInstanceUID
        (number,) = ref.referenced_segment_numbers
        assert segments[number] == lesion.tracking_uid
        assert ref.source_series_for_segmentation.value == result.ct_series_uid
        values = {}
        for m in g.get_measurements():
            key = m.name.value if m.derivation is None else (m.name.value, m.derivation.value)
            values[key] = (m.value, m.unit.value)
            if m.name == codes.SUVBW:  # SUVs cite the PET slices the lesion spans
                refs = m.referenced_images
                assert refs and {r.referenced_sop_instance_uid for r in refs} <= pet_uids
        assert values[("126401", "56851009")] == (pytest.approx(lesion.suvmax, rel=1e-5), "{SUVbw}g/ml")
        assert values[("126401", "126031")] == (pytest.approx(lesion.suvpeak, rel=1e-5), "{SUVbw}g/ml")
        assert values[("126401", "373098007")] == (pytest.approx(lesion.suvmean, rel=1e-5), "{SUVbw}g/ml")
        assert values["126032"] == (pytest.approx(lesion.mtv_ml, rel=1e-5), "ml")
        assert values["126033"] == (pytest.approx(lesion.tlg, rel=1e-5), "g")
        assert values["103340004"] == (pytest.approx(lesion.short_axis_mm, rel=1e-5), "mm")
        sites = {s.value.value for s in g.finding_sites}
        if lesion.kind == "node":
            assert g.finding_type.value in (codes.NEOPLASM_SECONDARY.value if lesion.positive
                                            else codes.LYMPH_NODE.value,)
            assert lesion.station in sites and codes.station_anatomy(lesion.station).value in sites
            (status,) = g.get_qualitative_evaluations()
            assert status.value == codes.NODE_STATUSES[lesion.status]
            assert lesion.status in ("positive", "equivocal", "enlarged_non_avid")
        else:
            assert g.finding_type == codes.NEOPLASM_PRIMARY

    # The N stage: in the staging group and in the document-level Qualitative Evaluations.
    (staging,) = [g for g in sr.content.get_image_measurement_groups() if g.tracking_identifier == "N staging"]
    evaluations = [(e.name.value, e.value.value) for e in staging.get_qualitative_evaluations()]
    assert ("NCAT-TNM8", study.truth["expected"]["n_tnm8"]) in evaluations
    assert ("NCAT-TNM9", study.truth["expected"]["n_tnm9"]) in evaluations
    assert [v for n, v in evaluations if n == "INV-STATION"] == study.truth["expected"]["positive_stations"]
    (container,) = [i for i in sr.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "C0034375"]
    doc = {}
    for item in container.ContentSequence:
        value = item.ConceptCodeSequence[0].CodeValue if item.ValueType == "CODE" else item.TextValue
        doc.setdefault(item.ConceptNameCodeSequence[0].CodeValue, []).append(value)
    assert doc["NCAT-TNM8"] == [result.n_tnm8] and doc["NCAT-TNM9"] == [result.n_tnm9]
    assert doc.get("INV-STATION", []) == result.involved_stations
    assert doc["POS-RULE"] == [result.positivity_rule]
    assert len(doc["NODE-DECISION"]) == len(result.nodes)
    assert doc["INTENDED-USE"] == ["research use, not for diagnosis"]


@pytest.mark.parametrize("case_outputs", CASES, indirect=True)
def test_summary_reads_back_and_matches_the_png(case_outputs):
    _study, result, paths = case_outputs
    sc = pydicom.dcmread(paths["summary"])
    ct0 = _ct0(result)
    for key in PATIENT_STUDY:
        assert sc.get(key) == ct0.get(key), key
    assert sc.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"
    assert sc.PhotometricInterpretation == "RGB" and sc.SamplesPerPixel == 3
    assert int(sc.SeriesNumber) == OutputSettings().series_number_base + 2
    assert sc.BurnedInAnnotation == "YES"
    pixels = sc.pixel_array
    png = np.asarray(Image.open(paths["summary_png"]).convert("RGB"))
    assert np.array_equal(pixels, png)
    assert pixels.std() > 20  # not blank
    flat = pixels.reshape(-1, 3).astype(np.int64)
    colours = set(np.unique((flat[:, 0] << 16) | (flat[:, 1] << 8) | flat[:, 2]).tolist())
    for lesion in result.lesions:  # each key finding's category colour is drawn
        if common.is_key_finding(lesion):
            r, g, b = common.COLOURS[common.lesion_category(lesion)]
            assert (r << 16 | g << 8 | b) in colours, lesion.tracking_id


@pytest.mark.parametrize("case_outputs", CASES[:3], indirect=True)
def test_result_json_lists_the_outputs(case_outputs):
    _study, result, paths = case_outputs
    data = json.loads(paths["result"].read_text())
    assert data["n_tnm8"] == result.n_tnm8 and data["n_tnm9"] == result.n_tnm9
    assert set(data["outputs"]) == {"seg", "sr", "summary", "summary_png", "stations_seg", "result"}
    for name, path in data["outputs"].items():
        assert (paths["result"].parent / "dicom").is_dir()
        assert Path(path).is_file() or name == "result"
    assert "outputs" in data["timings_s"]


@pytest.mark.parametrize("case_outputs", ["n2b_right_4r_7"], indirect=True)
def test_station_seg_uses_private_station_codes(case_outputs):
    _study, result, paths = case_outputs
    seg = hd.seg.segread(paths["stations_seg"])
    assert int(seg.SeriesNumber) == OutputSettings().series_number_base + 3
    assert [s.CodingSchemeDesignator for s in seg.CodingSchemeIdentificationSequence] == ["99NODESTAGE"]
    labels = [seg.get_segment_description(n).segment_label for n in seg.segment_numbers]
    assert labels == [f"Station {s}" for s in result.station_values]
    desc = seg.get_segment_description(labels.index("Station 4R") + 1)
    assert desc.segmented_property_type.value == "4R"
    assert desc.AnatomicRegionSequence[0].CodeValue == codes.station_anatomy("4R").value
    assert desc.AnatomicRegionSequence[0].AnatomicRegionModifierSequence[0].CodeValue == codes.RIGHT.value


def test_settings_turn_the_note_off_and_move_series_numbers(phantom_studies, tmp_path):
    from pipeline.outputs import write_outputs
    from tests.result_factory import result_from_phantom

    result = result_from_phantom(phantom_studies["n1_right_hilar"].out_dir, with_station_map=False)
    settings = OutputSettings(research_note=False, series_number_base=500)
    paths = write_outputs(result, tmp_path / "out", settings)
    assert "stations_seg" not in paths
    for name, number in (("seg", 500), ("sr", 501), ("summary", 502)):
        ds = pydicom.dcmread(paths[name], stop_before_pixels=True)
        assert int(ds.SeriesNumber) == number
        assert "research" not in ds.SeriesDescription.lower()
        assert "ContentQualification" not in ds
        assert dciodvfy(paths[name])[1] == []
    sr = pydicom.dcmread(paths["sr"])
    assert "INTENDED-USE" not in str(sr.ContentSequence[-1])


def test_writers_refuse_inconsistent_inputs(phantom_studies):
    """A SEG written against shuffled CT instances, an SR against the wrong SEG, empty segments."""
    import dataclasses

    from pipeline.outputs.seg import build_lesion_seg
    from pipeline.outputs.sr import build_sr

    result, paths = outputs_for(phantom_studies["n0_right_upper"].out_dir)
    files = list(result.volumes.ct_files)
    with pytest.raises(ValueError, match="is not slice"):
        build_lesion_seg(result, files[::-1])
    other, other_paths = outputs_for(phantom_studies["n1_right_hilar"].out_dir)
    with pytest.raises(ValueError, match="SEG and result disagree"):
        build_sr(result, other_paths["seg"])
    key = [l for l in result.lesions if common.is_key_finding(l)]
    ghost = dataclasses.replace(key[-1], index=99, label_value=99, tracking_id="Node 9 (7)",
                                tracking_uid="1.2.3.4")
    broken = dataclasses.replace(result, lesions=[*result.lesions, ghost])
    with pytest.raises(ValueError, match="without any voxel"):
        build_lesion_seg(broken)


def test_a_study_without_lesions_gets_an_sr_and_a_summary_but_no_seg(phantom_studies, tmp_path):
    import dataclasses

    import numpy as np

    from pipeline.outputs import write_outputs
    from pipeline.staging import stage
    from tests.result_factory import result_from_phantom

    full = result_from_phantom(phantom_studies["n0_right_upper"].out_dir, with_station_map=False)
    empty = sitk.Image(full.lesion_labels.GetSize(), sitk.sitkUInt16)
    empty.CopyInformation(full.lesion_labels)
    staging = stage(None, [])
    result = dataclasses.replace(full, lesions=[], lesion_labels=empty, n_tnm8=staging.n_tnm8,
                                 n_tnm9=staging.n_tnm9, involved_stations=[], staging=staging.to_dict(),
                                 primary_side=None, warnings=[], outputs={}, station_status={},
                                 equivocal_stations=[], n_tnm8_if_equivocal_positive=None,
                                 n_tnm9_if_equivocal_positive=None)
    paths = write_outputs(result, tmp_path / "out", OutputSettings())
    assert "seg" not in paths and any("no lesion SEG" in w for w in result.warnings)
    for name in ("sr", "summary"):
        assert dciodvfy(paths[name])[1] == []
    sr = hd.sr.srread(paths["sr"])
    assert sr.content.get_volumetric_roi_measurement_groups() == []
    (staging_group,) = sr.content.get_image_measurement_groups()  # no node: no station group either
    assert [e.value.value for e in staging_group.get_qualitative_evaluations()] == ["N0", "N0"]
    assert np.asarray(pydicom.dcmread(paths["summary"]).pixel_array).std() > 20
