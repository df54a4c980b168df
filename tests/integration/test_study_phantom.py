"""Every phantom case round-trips through the study reader: geometry and SUV as generated."""

import numpy as np
import pytest
import SimpleITK as sitk

from pipeline import phantom
from pipeline.study import load_study


@pytest.mark.parametrize("case", sorted(phantom.CASES))
def test_phantom_round_trip(phantom_studies, case):
    study = phantom_studies[case]
    truth = study.truth
    volumes = load_study(study.out_dir / "dicom")
    for image, key in ((volumes.ct, "ct"), (volumes.suv_pet_grid, "pet")):
        g = truth["geometry"][key]
        assert list(image.GetSize()) == g["size_xyz"]
        np.testing.assert_allclose(image.GetSpacing(), g["spacing_mm"], rtol=1e-5)
        np.testing.assert_allclose(image.GetOrigin(), g["origin_mm"], atol=1e-3)
        np.testing.assert_allclose(image.GetDirection(), g["direction"], atol=1e-6)
    assert volumes.suv.GetSize() == volumes.ct.GetSize()
    assert volumes.suv_factor.factor == pytest.approx(truth["suv"]["factor_suvbw_per_bqml"], rel=1e-6)
    pet = volumes.suv_pet_grid
    arr = sitk.GetArrayViewFromImage(pet)
    from scipy import ndimage
    for lesion in truth["lesions"]:
        idx = pet.TransformPhysicalPointToContinuousIndex(lesion["center_mm"])
        value = ndimage.map_coordinates(arr, [[idx[2]], [idx[1]], [idx[0]]], order=1)[0]
        assert value == pytest.approx(lesion["suv_center"], rel=0.10), lesion["station"]
    # HU survive the reader too.
    ct = volumes.ct
    for check in truth["hu_checks"]:
        i = ct.TransformPhysicalPointToIndex(check["point_mm"])
        assert ct[i] == pytest.approx(check["expected_hu"], abs=45), check["name"]
