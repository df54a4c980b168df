"""The synthetic PET/CT phantom: valid DICOM, consistent geometry, and ground truth that the images honour."""

import json
import subprocess
import sys

import numpy as np
import pydicom
import pytest
from scipy import ndimage

from pipeline import phantom
from pipeline.suv import compute_suv_factor


def _series(folder):
    datasets = [pydicom.dcmread(f) for f in sorted(folder.glob("*.dcm"))]
    return sorted(datasets, key=lambda d: float(d.ImagePositionPatient[2]))


def _volume(datasets, rescale=True):
    """Stack slices (sorted by z) into [z, y, x] float array of rescaled values."""
    return np.stack([d.pixel_array * float(d.RescaleSlope) + float(d.RescaleIntercept) for d in datasets])


def _index(datasets, point):
    d0 = datasets[0]
    x0, y0, z0 = (float(v) for v in d0.ImagePositionPatient)
    dy, dx = (float(v) for v in d0.PixelSpacing)
    dz = float(datasets[1].ImagePositionPatient[2]) - z0
    return [(point[2] - z0) / dz, (point[1] - y0) / dy, (point[0] - x0) / dx]


def test_every_case_is_listed_and_generates(phantom_studies):
    assert set(phantom_studies) == set(phantom.CASES)
    assert len(phantom.CASES) >= 8
    for name, study in phantom_studies.items():
        truth = json.loads((study.out_dir / "truth.json").read_text())
        assert truth["case"] == name
        assert len(list((study.out_dir / "dicom/ct").glob("*.dcm"))) == truth["dicom"]["ct_instances"] > 50
        assert len(list((study.out_dir / "dicom/pet").glob("*.dcm"))) == truth["dicom"]["pet_instances"] > 50
        assert (study.out_dir / "anatomy_labels.nii.gz").is_file()


def test_cases_cover_the_required_n_categories(phantom_studies):
    truths = {n: s.truth for n, s in phantom_studies.items()}
    n9 = {t["expected"]["n_tnm9"] for t in truths.values()}
    assert {"N0", "N1", "N2a", "N2b", "N3"} <= n9
    sides = {t["primary"]["side"] for t in truths.values()}
    assert sides == {"left", "right"}
    left_4r = truths["n3_left_primary_4r"]
    node = [l for l in left_4r["lesions"] if l["kind"] == "node" and l["positive"]][0]
    assert node["station"] == "4R" and 0 < node["center_mm"][0] < 11  # left of midline, right of the left tracheal border
    assert left_4r["expected"]["n_tnm8"] == "N3"
    supra = truths["n3_supraclavicular_1l"]
    assert "1L" in supra["expected"]["positive_stations"] and supra["expected"]["n_tnm8"] == "N3"
    for t in truths.values():
        roles = {l["role"] for l in t["lesions"]}
        assert {"primary", "enlarged_nonavid", "small_subthreshold"} <= roles
        for lesion in t["lesions"]:
            if lesion["kind"] == "node" and lesion["role"] == "positive":
                assert 8 <= lesion["short_axis_mm"] <= 25
        assert t["suv"]["myocardium_suv"] > 0


@pytest.mark.parametrize("case", sorted(phantom.CASES))
def test_dciodvfy_reports_no_errors(phantom_studies, case):
    study = phantom_studies[case]
    for f in (study.out_dir / "dicom/ct/CT0010.dcm", study.out_dir / "dicom/pet/PT0010.dcm"):
        out = subprocess.run(["dciodvfy", str(f)], capture_output=True, text=True)
        report = out.stdout + out.stderr
        warnings = [l for l in report.splitlines() if l.startswith("Warning")]
        if warnings:
            print(f"dciodvfy warnings for {f.name}:", *warnings, sep="\n  ")
        assert not [l for l in report.splitlines() if l.startswith("Error")], report


@pytest.mark.parametrize("case", sorted(phantom.CASES))
def test_ct_and_pet_share_frame_and_have_consistent_positions(phantom_studies, case):
    study = phantom_studies[case]
    ct, pet = _series(study.out_dir / "dicom/ct"), _series(study.out_dir / "dicom/pet")
    for a, b in ((ct[0], pet[0]),):
        for attr in ("StudyInstanceUID", "FrameOfReferenceUID", "PatientID", "PatientName"):
            assert getattr(a, attr) == getattr(b, attr), attr
    assert ct[0].SeriesInstanceUID != pet[0].SeriesInstanceUID
    for series in (ct, pet):
        z = np.array([float(d.ImagePositionPatient[2]) for d in series])
        spacing = float(series[0].SliceThickness)
        np.testing.assert_allclose(np.diff(z), spacing, atol=1e-3)
        assert len({tuple(d.ImagePositionPatient[:2]) for d in series}) == 1
        assert all(list(map(float, d.ImageOrientationPatient)) == [1, 0, 0, 0, 1, 0] for d in series)
        assert len({d.SOPInstanceUID for d in series}) == len(series)
    geometry = study.truth["geometry"]
    assert [ct[0].Columns, ct[0].Rows, len(ct)] == geometry["ct"]["size_xyz"]
    assert [pet[0].Columns, pet[0].Rows, len(pet)] == geometry["pet"]["size_xyz"]


def test_pet_header_is_what_suv_needs(phantom_studies):
    pet = _series(phantom_studies["n0_right_upper"].out_dir / "dicom/pet")
    d = pet[0]
    assert d.Units == "BQML" and d.DecayCorrection == "START"
    assert {"ATTN", "DECY"} <= set(d.CorrectedImage)
    rp = d.RadiopharmaceuticalInformationSequence[0]
    assert float(rp.RadionuclideHalfLife) == pytest.approx(6586.2)
    assert rp.RadionuclideCodeSequence[0].CodeValue == "77004003"
    assert float(rp.RadionuclideTotalDose) > 0 and rp.RadiopharmaceuticalStartDateTime
    assert float(d.PatientWeight) > 0
    assert d.pixel_array.dtype == np.int16
    assert len({d.RescaleSlope for d in pet}) > 10  # a slope per slice
    factor = compute_suv_factor(d)
    assert 3600 <= factor.uptake_seconds <= 5400  # 60-90 min: decay correction matters


@pytest.mark.parametrize("case", sorted(phantom.CASES))
def test_suv_at_lesion_centres_matches_truth(phantom_studies, case):
    study = phantom_studies[case]
    pet = _series(study.out_dir / "dicom/pet")
    factor = compute_suv_factor(pet[0]).factor
    assert factor == pytest.approx(study.truth["suv"]["factor_suvbw_per_bqml"], rel=1e-6)
    suv = _volume(pet) * factor
    for lesion in study.truth["lesions"]:
        value = ndimage.map_coordinates(suv, [[i] for i in _index(pet, lesion["center_mm"])], order=1)[0]
        assert value == pytest.approx(lesion["suv_center"], rel=0.10), lesion


@pytest.mark.parametrize("case", ["n0_right_upper", "n3_left_1r_8l_9l"])
def test_ct_numbers_at_known_tissues(phantom_studies, case):
    study = phantom_studies[case]
    ct = _series(study.out_dir / "dicom/ct")
    hu = _volume(ct)
    for check in study.truth["hu_checks"]:
        k, j, i = (int(round(v)) for v in _index(ct, check["point_mm"]))
        mean = hu[k - 1:k + 2, j - 1:j + 2, i - 1:i + 2].mean()
        assert mean == pytest.approx(check["expected_hu"], abs=25), check
    claimed = {c["name"]: c["expected_hu"] for c in study.truth["hu_checks"]}
    assert claimed["lung"] < -700 and 20 < claimed["blood"] < 60 and claimed["bone"] > 150


def test_same_seed_same_study_and_other_seed_differs(tmp_path):
    a = phantom.generate(tmp_path / "a", "n1_right_hilar", "small", seed=7)
    b = phantom.generate(tmp_path / "b", "n1_right_hilar", "small", seed=7)
    c = phantom.generate(tmp_path / "c", "n1_right_hilar", "small", seed=8)
    for rel in ("dicom/ct/CT0030.dcm", "dicom/pet/PT0030.dcm"):
        assert (a.out_dir / rel).read_bytes() == (b.out_dir / rel).read_bytes()
        assert (a.out_dir / rel).read_bytes() != (c.out_dir / rel).read_bytes()
    assert a.truth["lesions"] == b.truth["lesions"]


def test_cli_lists_and_writes(tmp_path):
    listed = subprocess.run([sys.executable, "-m", "dicomnode.cli", "phantom", "--list"],
                            capture_output=True, text=True, check=True)
    from pipeline import phantom_real

    assert {c["name"] for c in json.loads(listed.stdout)} == set(phantom.CASES) | set(phantom_real.REAL_CASES)
    out = subprocess.run([sys.executable, "-m", "dicomnode.cli", "phantom", str(tmp_path / "s"),
                          "--case", "n2a_left_4l", "--seed", "3"], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout)["expected"]["n_tnm9"] == "N2a"
    bad = subprocess.run([sys.executable, "-m", "dicomnode.cli", "phantom", str(tmp_path / "x"), "--case", "nope"],
                         capture_output=True, text=True)
    assert bad.returncode != 0 and "unknown phantom case" in bad.stderr and "Traceback" not in bad.stderr
