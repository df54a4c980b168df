"""run_study on awkward input: no lesion, no primary, no PET, and the nnU-Net backend's real code path."""

import shutil
import subprocess
import sys

import pytest
import SimpleITK as sitk

from pipeline.run import run_study
from pipeline.settings import LesionSettings, NnUnetLesionSettings, PipelineSettings
from pipeline.lesions.nnunet import LesionModelError
from tests.nnunet_fake import write_fake_model


def test_no_lesion_gives_n0_with_a_reason(phantom_studies):
    settings = PipelineSettings(lesions=LesionSettings(fixed_suv=1000.0, ct_enlarged_nodes=True))
    result = run_study(phantom_studies["n2b_right_4r_7"].out_dir / "dicom", settings)
    # Only CT findings remain (the CT search is asked for): enlarged soft tissue in station regions, found
    # without any uptake, never counted.
    assert result.lesions and all(l.status == "enlarged_non_avid" and not l.positive for l in result.lesions)
    assert result.n_tnm8 == "N0" and result.n_tnm9 == "N0"
    assert any("no positive regional node" in r for r in result.staging["reasons"])
    assert any("no FDG-avid lesion" in w for w in result.warnings)


def _erase_pet_uptake(study_dir, centre_mm, radius_mm, out_dir):
    """Copy a study and zero the PET around a point: the tumour there is no longer FDG-avid."""
    import numpy as np
    import pydicom

    shutil.copytree(study_dir, out_dir)
    for path in (out_dir / "pet").glob("*.dcm"):
        ds = pydicom.dcmread(path)
        x0, y0, z = (float(v) for v in ds.ImagePositionPatient)
        dy, dx = (float(v) for v in ds.PixelSpacing)
        if abs(z - centre_mm[2]) > radius_mm:
            continue
        yy, xx = np.mgrid[0:ds.Rows, 0:ds.Columns]
        inside = (x0 + xx * dx - centre_mm[0]) ** 2 + (y0 + yy * dy - centre_mm[1]) ** 2 + (z - centre_mm[2]) ** 2
        pixels = ds.pixel_array.copy()
        pixels[inside <= radius_mm ** 2] = 0
        ds.PixelData = pixels.tobytes()
        ds.save_as(path)


def test_no_primary_gives_nx(phantom_studies, tmp_path):
    study = phantom_studies["n3_left_primary_4r"]
    erased = tmp_path / "no_primary"
    _erase_pet_uptake(study.out_dir / "dicom", study.truth["primary"]["center_mm"], 30.0, erased)
    result = run_study(erased)
    assert result.primary is None
    assert result.involved_stations == ["4R"]
    assert result.n_tnm8 == "NX" and result.n_tnm9 == "NX"
    assert any("unknown" in r for r in result.staging["reasons"])
    assert any("no FDG-avid lesion" in w for w in result.warnings)


def test_study_without_pet_is_a_clear_error(phantom_studies, tmp_path):
    only_ct = tmp_path / "ct_only"
    shutil.copytree(phantom_studies["n0_right_upper"].out_dir / "dicom" / "ct", only_ct)
    proc = subprocess.run([sys.executable, "-m", "dicomnode.cli", "run", str(only_ct), "--out", str(tmp_path / "o")],
                          capture_output=True, text=True)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("nodestage run:") and "PET" in last and "Traceback" not in proc.stderr


def test_nnunet_backend_missing_model_is_clear(phantom_studies, tmp_path):
    settings = PipelineSettings(lesions=LesionSettings(backend="nnunet",
                                                       nnunet=NnUnetLesionSettings(model_dir=tmp_path / "none")))
    with pytest.raises(LesionModelError, match="dataset.json"):
        run_study(phantom_studies["n0_right_upper"].out_dir / "dicom", settings)


def test_nnunet_backend_runs_a_real_model(phantom_studies, tmp_path):
    model = write_fake_model(tmp_path, 901, "FakeLesions", {"background": 0, "lesion": 1},
                             {"0": "CT", "1": "PET"}, constant_label=1)
    settings = PipelineSettings(lesions=LesionSettings(backend="nnunet",
                                                       nnunet=NnUnetLesionSettings(model_dir=model)))
    result = run_study(phantom_studies["n0_right_upper"].out_dir / "dicom", settings)
    labels = result.lesion_labels
    ct = result.volumes.ct
    assert labels.GetSize() == ct.GetSize() and labels.GetSpacing() == ct.GetSpacing()
    arr = sitk.GetArrayViewFromImage(labels)
    assert sorted(set(arr.ravel()) - {0}) == [l.label_value for l in result.lesions]
    assert sum(l.voxel_count for l in result.lesions) == int((arr > 0).sum())
    assert result.backends["lesions"].name == "nnunet"
