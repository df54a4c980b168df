"""SEG, SR and summary for the real FDG-PET/CT (ACRIN-NSCLC-FDG-PET-042): valid for dciodvfy,
referencing the real CT and PET series, carrying the real patient and study attributes."""

import highdicom as hd
import numpy as np
import pydicom
import pytest

from pipeline.outputs import common, write_outputs
from pipeline.settings import OutputSettings
from tests.result_factory import dciodvfy, result_from_real_study
from tests.dcmqi_tools import dcmqi_masks_match, read_tid1500

REAL = "petct/acrin-nsclc-fdg-pet-042"
PATIENT_STUDY = ("PatientID", "PatientName", "PatientSex", "PatientBirthDate", "StudyInstanceUID", "StudyDate",
                 "StudyTime", "AccessionNumber", "StudyDescription")


@pytest.fixture(scope="module")
def real(shared_data, tmp_path_factory):
    result = result_from_real_study(shared_data / REAL)
    paths = write_outputs(result, tmp_path_factory.mktemp("real-outputs"), OutputSettings())
    return result, paths


@pytest.mark.parametrize("name, iod", [("seg", "Segmentation"), ("sr", "Comprehensive3DSR"), ("summary", "SCImage")])
def test_real_study_outputs_pass_dciodvfy(real, name, iod):
    _result, paths = real
    found, errors, warnings = dciodvfy(paths[name])
    for line in sorted(set(warnings)):
        print(f"dciodvfy {name}: {line}")
    assert found == iod
    assert errors == []


def test_real_study_outputs_carry_the_real_patient_and_study(real):
    result, paths = real
    ct = pydicom.dcmread(result.volumes.ct_files[0], stop_before_pixels=True)
    assert ct.PatientID == "ACRIN-NSCLC-FDG-PET-042"
    for name in ("seg", "sr", "summary"):
        ds = pydicom.dcmread(paths[name], stop_before_pixels=True)
        for key in PATIENT_STUDY:
            if key in ("StudyDescription",) and key not in ds:
                continue
            assert ds.get(key) == ct.get(key), (name, key)
        assert ds.SeriesInstanceUID not in (result.ct_series_uid, result.pet_series_uid)
        # TCIA's incomplete Clinical Trial Subject module is not copied (it would be invalid).
        assert "ClinicalTrialSponsorName" not in ds


def test_real_study_references_resolve_to_the_real_series(real, tmp_path):
    result, paths = real
    ct_uids = [pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in result.volumes.ct_files]
    pet_uids = {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in result.volumes.pet_files}
    seg = hd.seg.segread(paths["seg"])
    (series,) = seg.ReferencedSeriesSequence
    assert series.SeriesInstanceUID == result.ct_series_uid
    assert {i.ReferencedSOPInstanceUID for i in series.ReferencedInstanceSequence} <= set(ct_uids)
    planned = common.lesion_segments(result)
    assert dcmqi_masks_match(paths["seg"], result.lesion_labels, planned, tmp_path / "dcmqi") == {
        p.number: 1.0 for p in planned}
    sr = pydicom.dcmread(paths["sr"])
    evidence = {s.SeriesInstanceUID for st in sr.CurrentRequestedProcedureEvidenceSequence
                for s in st.ReferencedSeriesSequence}
    assert {result.ct_series_uid, result.pet_series_uid, seg.SeriesInstanceUID} == evidence
    data = read_tid1500(paths["sr"], tmp_path)
    primary = next(g for g in data["Measurements"] if g["TrackingIdentifier"] == "Primary tumour")
    suvmax = next(float(m["value"]) for m in primary["measurementItems"]
                  if m.get("derivationModifier", {}).get("CodeMeaning") == "Maximum")
    assert suvmax == pytest.approx(41.4, abs=0.5)  # the known right hilar mass
    assert set(data["imageLibrary"]) <= set(ct_uids) | pet_uids | {seg.SOPInstanceUID}
    sc = pydicom.dcmread(paths["summary"])
    assert np.asarray(sc.pixel_array).std() > 20


def test_real_study_lesion_seg_is_small(real):
    """Issue #12: the ACRIN lesion SEG ≤ 2 MB. Every frame is a full 512 × 512 CT slice, 32 KB
    as uncompressed BINARY; the default encoding (FRACTIONAL 0/255, RLE Lossless) is a fraction."""
    _result, paths = real
    seg = pydicom.dcmread(paths["seg"], stop_before_pixels=True)
    size = paths["seg"].stat().st_size
    frames = int(seg.NumberOfFrames)
    binary_frame_bytes = int(seg.Rows) * int(seg.Columns) / 8
    print(f"ACRIN lesion SEG: {size} bytes, {frames} frames, {size / frames:.0f} bytes per frame")
    assert (int(seg.Rows), int(seg.Columns)) == (512, 512)
    assert size <= 2 * 1024 * 1024
    assert size < 0.25 * binary_frame_bytes * frames
