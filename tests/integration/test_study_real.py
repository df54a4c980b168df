"""The whole first stage on the real ACRIN FDG-PET/CT, and the refusals of bad studies.

Numbers checked here are the ones documented in ../shared/data/README.md.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from pipeline.errors import PipelineError, SUVInputError
from pipeline.study import Volumes, inspect_study, load_study

ACRIN = "petct/acrin-nsclc-fdg-pet-042"
MASS_LPS = (-40.0, -26.0, -99.0)  # the right hilar/mediastinal mass, SUVmax about 42


@pytest.fixture(scope="module")
def acrin_dir(shared_data: Path) -> Path:
    return shared_data / ACRIN


@pytest.fixture(scope="module")
def report(acrin_dir: Path) -> dict[str, Any]:
    return inspect_study(acrin_dir)


@pytest.fixture(scope="module")
def volumes(acrin_dir: Path) -> Volumes:
    started = time.perf_counter()
    loaded = load_study(acrin_dir)
    loaded.load_seconds = time.perf_counter() - started  # type: ignore[attr-defined]
    return loaded


def rwv_suvbw_slope(acrin_dir: Path, pet_sop_uids: set[str]) -> float:
    """The {SUVbw}g/ml slope of the RWV object that maps the AC PET's instances."""
    for path in (acrin_dir / "RWV_1000_PET_SUV_Factors").iterdir():
        ds = pydicom.dcmread(path)
        for item in ds.ReferencedImageRealWorldValueMappingSequence:
            referenced = {r.ReferencedSOPInstanceUID for r in item.ReferencedImageSequence}
            if not referenced <= pet_sop_uids:
                continue
            for mapping in item.RealWorldValueMappingSequence:
                if mapping.MeasurementUnitsCodeSequence[0].CodeValue == "{SUVbw}g/ml":
                    return float(mapping.RealWorldValueSlope)
    raise AssertionError("no RWV object maps the AC PET")


# ---------------------------------------------------------------- inspect


def test_inspect_is_json_and_lists_every_series(report: dict[str, Any]) -> None:
    assert json.loads(json.dumps(report)) == report
    reasons = {(s["modality"], s["description"]): s["reason"] for s in report["series"]}
    assert len(report["series"]) == 10
    assert [s["description"] for s in report["series"] if s["chosen"]] == ["PET AC", "CT IMAGES"]
    assert "not attenuation-corrected" in reasons[("PT", "PET NAC")]
    assert "localizer" in reasons[("CT", "SCOUT")]


def test_inspect_ct_geometry_as_documented(report: dict[str, Any]) -> None:
    geometry = report["ct"]["geometry"]
    assert geometry["size"] == [512, 512, 135]
    assert geometry["spacing_mm"][:2] == pytest.approx([0.977, 0.977], abs=1e-3)
    assert geometry["spacing_mm"][2] == pytest.approx(3.27, abs=0.01)
    assert geometry["bounds_mm"]["z"] == pytest.approx([-360.2, 78.0], abs=0.05)
    assert geometry["image_orientation_patient"] == [1, 0, 0, 0, 1, 0]


def test_inspect_pet_geometry_as_documented(report: dict[str, Any]) -> None:
    geometry = report["pet"]["geometry"]
    assert geometry["size"] == [128, 128, 135]
    assert geometry["spacing_mm"][:2] == [4.6875, 4.6875]
    low, high = report["pet"]["rescale_slope_range"]
    assert low < high  # a RescaleSlope per slice


def test_suv_factor_matches_documented_value_and_rwv(report: dict[str, Any], acrin_dir: Path) -> None:
    factor = report["suv"]["factor"]
    assert factor == pytest.approx(4.2111e-4, rel=1e-4)
    pet_sops = {
        str(pydicom.dcmread(p, stop_before_pixels=True, specific_tags=["SOPInstanceUID"]).SOPInstanceUID)
        for p in (acrin_dir / "PT_0001_PET_AC").iterdir()
    }
    assert factor == pytest.approx(rwv_suvbw_slope(acrin_dir, pet_sops), rel=1e-4)


def test_delayed_uptake_is_flagged(report: dict[str, Any]) -> None:
    assert report["suv"]["uptake_seconds"] == pytest.approx(9527, abs=1)
    assert report["suv"]["weight_kg"] == pytest.approx(91)
    assert any("9527" in w and "uptake" in w for w in report["warnings"])


def test_inspect_stripped_ct_only_study_says_no_pet(shared_data: Path) -> None:
    with pytest.raises(PipelineError, match="no PET") as caught:
        inspect_study(shared_data / "totalsegmentator" / "example_ct_dicom")
    assert "\n" not in str(caught.value)


# ---------------------------------------------------------------- load


def test_load_study_gives_ct_in_hu(volumes: Volumes) -> None:
    ct = volumes.ct
    assert ct.GetSize() == (512, 512, 135) and ct.GetPixelID() == sitk.sitkFloat32
    assert ct.GetOrigin()[2] == pytest.approx(-360.2, abs=0.05)
    hu = sitk.GetArrayViewFromImage(ct)
    centre = hu[67, 236:276, 236:276]  # mid-thorax, soft tissue in the mediastinum
    assert -200 < float(np.median(centre)) < 200
    assert len(volumes.ct_files) == 135 and len(volumes.pet_files) == 135


def test_suv_is_on_the_ct_grid(volumes: Volumes) -> None:
    suv, ct = volumes.suv, volumes.ct
    assert suv.GetSize() == ct.GetSize() and suv.GetPixelID() == sitk.sitkFloat32
    assert suv.GetOrigin() == ct.GetOrigin() and suv.GetSpacing() == ct.GetSpacing()
    assert suv.GetDirection() == ct.GetDirection()


def _max_near(image: sitk.Image, point: tuple[float, float, float], radius_mm: float) -> float:
    values = sitk.GetArrayViewFromImage(image)
    centre = np.array(image.TransformPhysicalPointToIndex(point))
    reach = np.ceil(radius_mm / np.array(image.GetSpacing())).astype(int)
    lo, hi = centre - reach, centre + reach + 1
    return float(values[lo[2]:hi[2], lo[1]:hi[1], lo[0]:hi[0]].max())


def test_suv_is_high_at_the_documented_mass(volumes: Volumes) -> None:
    assert _max_near(volumes.suv, MASS_LPS, 6.0) > 20
    assert _max_near(volumes.suv_pet_grid, MASS_LPS, 6.0) == pytest.approx(42, abs=3)
    assert float(sitk.GetArrayViewFromImage(volumes.suv).max()) == pytest.approx(51, abs=3)  # kidneys


def test_suv_is_low_in_the_lung(volumes: Volumes) -> None:
    lung_left = (90.0, 0.0, -60.0)  # patient's left lung, LPS
    assert volumes.ct[volumes.ct.TransformPhysicalPointToIndex(lung_left)] < -500  # really lung
    assert _max_near(volumes.suv, lung_left, 5.0) < 2.0


def test_load_warnings_and_timing(volumes: Volumes) -> None:
    assert any("uptake" in w for w in volumes.warnings)
    assert volumes.load_seconds < 30  # type: ignore[attr-defined]


# ---------------------------------------------------------------- bad SUV inputs


def _files_by_height(folder: Path) -> list[Path]:
    def z(path: Path) -> float:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["ImagePositionPatient"])
        return float(ds.ImagePositionPatient[2])
    return sorted(folder.iterdir(), key=z, reverse=True)


@pytest.fixture(scope="module")
def top_slices(acrin_dir: Path) -> dict[str, list[Path]]:
    return {"ct": _files_by_height(acrin_dir / "CT_0002_CT_IMAGES")[:4],
            "pet": _files_by_height(acrin_dir / "PT_0001_PET_AC")[:4]}


def _small_study(dest: Path, slices: dict[str, list[Path]],
                 edit_pet: Callable[[pydicom.Dataset], None] | None = None) -> Path:
    for kind, files in slices.items():
        (dest / kind).mkdir(parents=True)
        for i, f in enumerate(files):
            ds = pydicom.dcmread(f)
            if kind == "pet" and edit_pet:
                edit_pet(ds)
            ds.save_as(dest / kind / f"{i}.dcm")
    return dest


def test_small_real_study_loads(tmp_path: Path, top_slices: dict[str, list[Path]]) -> None:
    volumes = load_study(_small_study(tmp_path, top_slices))
    assert volumes.ct.GetSize() == (512, 512, 4)
    assert volumes.suv_factor.factor == pytest.approx(4.2111e-4, rel=1e-4)


def _drop_weight(ds: pydicom.Dataset) -> None:
    del ds.PatientWeight


def _drop_dose(ds: pydicom.Dataset) -> None:
    del ds.RadiopharmaceuticalInformationSequence[0].RadionuclideTotalDose


@pytest.mark.parametrize(("edit", "attribute"), [(_drop_weight, "PatientWeight"),
                                                  (_drop_dose, "RadionuclideTotalDose")])
@pytest.mark.parametrize("entry", [inspect_study, load_study])
def test_missing_suv_input_is_named(tmp_path: Path, top_slices: dict[str, list[Path]], edit, attribute: str,
                                    entry) -> None:
    study = _small_study(tmp_path, top_slices, edit)
    with pytest.raises(SUVInputError) as caught:
        entry(study)
    assert caught.value.attribute == attribute
    assert attribute in str(caught.value) and "\n" not in str(caught.value)
