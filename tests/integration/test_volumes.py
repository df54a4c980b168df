"""Series -> volume: real data, and real slices edited into the failures sites send us.

Edited copies are written under tmp_path only; the shared data stays read-only.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, RLELossless, generate_uid

from pipeline.errors import GeometryError, PipelineError, StudyInputError
from pipeline.suv import compute_suv_factor
from pipeline.volumes import (
    UnsupportedImageError,
    describe_geometry,
    load_pet_suv,
    read_volume,
    resample_to,
)

from tests.dicom_files import files_by_height

ACRIN = "petct/acrin-nsclc-fdg-pet-042"


def ct_hu(files):
    """CT in Hounsfield units, as the pipeline reads it."""
    return read_volume(files, modality="CT").image


def pet_activity(files):
    """PET in rescaled units (Bq/ml for BQML), as the pipeline reads it."""
    return read_volume(files, modality="PT").image



def copy_slices(files: list[Path], dest: Path, edit: Callable[[int, pydicom.Dataset], None] | None = None,
                names: list[str] | None = None) -> list[Path]:
    """Copy slices into dest (optionally edited and renamed); return the new paths."""
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    for i, f in enumerate(files):
        ds = pydicom.dcmread(f)
        if edit:
            edit(i, ds)
        path = dest / (names[i] if names else f"slice{i:03d}.dcm")
        ds.save_as(path)
        out.append(path)
    return out


@pytest.fixture(scope="module")
def ct_top(shared_data: Path) -> list[Path]:
    """The top 6 slices of the real ACRIN CT (3.27 mm apart)."""
    return files_by_height(shared_data / ACRIN / "CT_0002_CT_IMAGES")[:6]


@pytest.fixture(scope="module")
def pet_top(shared_data: Path) -> list[Path]:
    return files_by_height(shared_data / ACRIN / "PT_0001_PET_AC")[:6]


def array(image: sitk.Image) -> np.ndarray:
    return sitk.GetArrayFromImage(image)


# ---------------------------------------------------------------- real data


def test_stripped_jpeg2000_ct_loads_as_one_volume(shared_data: Path) -> None:
    folder = shared_data / "totalsegmentator" / "example_ct_dicom"
    image = ct_hu(sorted(folder.iterdir()))
    assert image.GetSize() == (512, 512, 20)
    assert image.GetSpacing()[0] == pytest.approx(0.977, abs=1e-3)
    assert image.GetSpacing()[1] == pytest.approx(0.977, abs=1e-3)
    assert image.GetSpacing()[2] == pytest.approx(2.0, abs=1e-6)
    assert image.GetOrigin()[2] == pytest.approx(-804.5)  # lowest slice first, whatever the file order
    assert image.GetPixelID() == sitk.sitkFloat32
    hu = array(image)
    assert hu.min() >= -1024 - 1e-3  # RescaleIntercept -1024 applied
    assert np.percentile(hu, 99) > 0  # soft tissue and bone present


def test_ct_orientation_and_lps_origin(ct_top: list[Path]) -> None:
    image = ct_hu(ct_top)
    assert image.GetDirection() == pytest.approx((1, 0, 0, 0, 1, 0, 0, 0, 1))
    assert image.GetOrigin() == pytest.approx((-250.0, -250.0, 78.0 - 5 * 3.27), abs=0.02)
    assert image.GetSpacing() == pytest.approx((0.976562, 0.976562, 3.27), abs=1e-3)


def test_pet_per_slice_rescale(pet_top: list[Path]) -> None:
    slopes = {float(pydicom.dcmread(f, stop_before_pixels=True).RescaleSlope) for f in pet_top}
    assert len(slopes) > 1, "test needs slices with different slopes"
    loaded = read_volume(pet_top, modality="PT")
    values = array(loaded.image)
    for k, header in enumerate(loaded.geometry.slices):
        ds = pydicom.dcmread(header.path)
        expected = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        np.testing.assert_allclose(values[k], expected, rtol=1e-6, atol=1e-3)


def test_pet_suv_scale_applied_per_slice(pet_top: list[Path]) -> None:
    activity = array(pet_activity(pet_top))
    suv = array(load_pet_suv(pet_top, 4.2111e-4).image)
    np.testing.assert_allclose(suv, activity * 4.2111e-4, rtol=1e-5, atol=1e-6)


def test_flt_static_slice_loads_with_plausible_suv(shared_data: Path) -> None:
    path = shared_data / "pet" / "acrin-flt-breast-slice-1.dcm"
    loaded = read_volume([path], modality="PT")
    assert loaded.image.GetSize() == (168, 168, 1)
    assert loaded.image.GetSpacing() == pytest.approx((4.07283, 4.07283, 5.0))
    assert any("single slice" in w for w in loaded.warnings)
    assert any("324 slices" in w for w in loaded.warnings)  # NumberOfSlices says the series is bigger
    factor = compute_suv_factor(pydicom.dcmread(path, stop_before_pixels=True)).factor
    suv = array(loaded.image) * factor
    body = suv[suv > 0.1]
    assert 0.2 < float(np.median(body)) < 3.0  # soft-tissue background
    assert 2.0 < float(suv.max()) < 30.0  # FLT marrow/tumour, not a unit error


def test_flt_dynamic_slice_is_refused_clearly(shared_data: Path) -> None:
    """Slice 2 belongs to a dynamic series: we refuse it (no per-frame SUV), with the reason."""
    path = shared_data / "pet" / "acrin-flt-breast-slice-2.dcm"
    with pytest.raises(UnsupportedImageError, match="dynamic PET"):
        pet_activity([path])


# ---------------------------------------------------------------- order, duplicates, gaps


def test_shuffled_file_order_gives_the_same_volume(ct_top: list[Path], tmp_path: Path) -> None:
    reference = ct_hu(ct_top)
    order = list(range(len(ct_top)))
    random.Random(7).shuffle(order)
    shuffled = [ct_top[i] for i in order]
    names = [f"{random.Random(i).randrange(10**6):06d}.dcm" for i in range(len(shuffled))]

    def scramble(i: int, ds: pydicom.Dataset) -> None:
        ds.InstanceNumber = len(shuffled) - order[i] if i % 2 else order[i] + 100

    copies = copy_slices(shuffled, tmp_path, scramble, names)
    image = ct_hu(copies)
    assert image.GetOrigin() == reference.GetOrigin()
    assert image.GetSpacing() == reference.GetSpacing()
    np.testing.assert_array_equal(array(image), array(reference))


def test_removed_middle_slice_is_a_geometry_error(ct_top: list[Path], tmp_path: Path) -> None:
    copies = copy_slices(ct_top[:2] + ct_top[3:], tmp_path)
    with pytest.raises(GeometryError, match=r"1 missing slice\(s\): a gap of 6\.54 mm"):
        ct_hu(copies)


def test_uneven_spacing_is_a_geometry_error(ct_top: list[Path], tmp_path: Path) -> None:
    def nudge(i: int, ds: pydicom.Dataset) -> None:
        if i == 2:
            x, y, z = (float(v) for v in ds.ImagePositionPatient)
            ds.ImagePositionPatient = [x, y, z + 0.8]

    with pytest.raises(GeometryError, match="uneven slice spacing"):
        describe_geometry(copy_slices(ct_top, tmp_path, nudge))


def test_spacing_within_tolerance_is_accepted(ct_top: list[Path], tmp_path: Path) -> None:
    def jitter(i: int, ds: pydicom.Dataset) -> None:
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y, z + (0.02 if i % 2 else -0.02)]

    geometry = describe_geometry(copy_slices(ct_top, tmp_path, jitter))
    assert geometry.size[2] == 6


def test_duplicate_slice_is_kept_once_with_a_warning(ct_top: list[Path], tmp_path: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    copies = copy_slices(ct_top, tmp_path / "a")

    def resend(_: int, ds: pydicom.Dataset) -> None:
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID

    copies += copy_slices([ct_top[2]], tmp_path / "b", resend)
    with caplog.at_level(logging.WARNING, logger="pipeline.volumes"):
        loaded = read_volume(copies, modality="CT")
    assert loaded.image.GetSize()[2] == 6
    assert any("duplicate" in w for w in loaded.warnings)
    assert "duplicate" in caplog.text
    np.testing.assert_array_equal(array(loaded.image), array(ct_hu(ct_top)))


def test_same_position_at_different_times_is_refused(pet_top: list[Path], tmp_path: Path) -> None:
    copies = copy_slices(pet_top[:3], tmp_path / "a")

    def later_frame(_: int, ds: pydicom.Dataset) -> None:
        ds.SOPInstanceUID = generate_uid()
        ds.FrameReferenceTime = "900000.0"

    copies += copy_slices(pet_top[:3], tmp_path / "b", later_frame)
    with pytest.raises(UnsupportedImageError, match="several time points"):
        pet_activity(copies)


# ---------------------------------------------------------------- tilt and orientation


def test_gantry_tilt_is_refused(ct_top: list[Path], tmp_path: Path) -> None:
    def tilt(i: int, ds: pydicom.Dataset) -> None:
        ds.GantryDetectorTilt = 15.0
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y + i * 3.27 * math.tan(math.radians(15)), z]

    with pytest.raises(GeometryError, match="gantry tilt of 15 degrees"):
        ct_hu(copy_slices(ct_top, tmp_path, tilt))


def test_positions_not_along_the_normal_are_refused(ct_top: list[Path], tmp_path: Path) -> None:
    """A tilted series whose GantryDetectorTilt was lost: the positions still give it away."""
    def shear(i: int, ds: pydicom.Dataset) -> None:
        del ds.GantryDetectorTilt
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y + i * 0.5, z]

    with pytest.raises(GeometryError, match="not parallel to the slice progression"):
        ct_hu(copy_slices(ct_top, tmp_path, shear))


def test_non_orthogonal_orientation_is_refused(ct_top: list[Path], tmp_path: Path) -> None:
    def skew(_: int, ds: pydicom.Dataset) -> None:
        ds.ImageOrientationPatient = [1, 0, 0, 0.1, 0.995, 0]

    with pytest.raises(GeometryError, match="not orthogonal"):
        ct_hu(copy_slices(ct_top, tmp_path, skew))


def test_oblique_but_regular_series_keeps_its_direction(ct_top: list[Path], tmp_path: Path) -> None:
    """Orientation from ImageOrientationPatient; positions follow the (rotated) normal."""
    angle = math.radians(20)
    row = np.array([math.cos(angle), math.sin(angle), 0.0])
    col = np.array([-math.sin(angle), math.cos(angle), 0.0])

    def rotate(i: int, ds: pydicom.Dataset) -> None:
        ds.ImageOrientationPatient = [*row, *col]
        ds.ImagePositionPatient = [10.0, 20.0, -i * 3.0]

    image = ct_hu(copy_slices(ct_top, tmp_path, rotate))
    direction = np.array(image.GetDirection()).reshape(3, 3)
    np.testing.assert_allclose(direction[:, 0], row, atol=1e-9)
    np.testing.assert_allclose(direction[:, 1], col, atol=1e-9)
    np.testing.assert_allclose(direction[:, 2], [0, 0, 1], atol=1e-9)
    assert image.GetOrigin() == pytest.approx((10.0, 20.0, -15.0))


# ---------------------------------------------------------------- formats and refusals


def _gdcm_jpeg_lossless(src: Path, dest: Path) -> None:
    import gdcm

    reader = gdcm.ImageReader()
    reader.SetFileName(str(src))
    assert reader.Read()
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.JPEGLosslessProcess14_1))
    change.SetInput(reader.GetImage())
    assert change.Change()
    writer = gdcm.ImageWriter()
    writer.SetFile(reader.GetFile())
    writer.SetImage(change.GetOutput())
    writer.SetFileName(str(dest))
    assert writer.Write()


@pytest.mark.parametrize("syntax", [RLELossless, JPEGLSLossless, JPEG2000Lossless, "JPEG lossless SV1"])
def test_compressed_transfer_syntaxes_decode_identically(ct_top: list[Path], tmp_path: Path, syntax) -> None:
    files = ct_top[:3]
    if syntax == "JPEG lossless SV1":  # pydicom has no encoder for it; gdcm does
        copies = []
        for i, f in enumerate(files):
            _gdcm_jpeg_lossless(f, tmp_path / f"{i}.dcm")
            copies.append(tmp_path / f"{i}.dcm")
        expected_uid = "1.2.840.10008.1.2.4.70"
    else:
        copies = copy_slices(files, tmp_path, lambda _, ds: ds.compress(syntax))
        expected_uid = syntax
    assert pydicom.dcmread(copies[0], stop_before_pixels=True).file_meta.TransferSyntaxUID == expected_uid
    np.testing.assert_array_equal(array(ct_hu(copies)), array(ct_hu(files)))


def test_multiframe_is_refused(ct_top: list[Path], tmp_path: Path) -> None:
    copies = copy_slices(ct_top[:2], tmp_path, lambda _, ds: setattr(ds, "NumberOfFrames", 2))
    with pytest.raises(UnsupportedImageError, match="multi-frame"):
        ct_hu(copies)


def test_wrong_modality_is_refused(pet_top: list[Path]) -> None:
    with pytest.raises(StudyInputError, match="expected CT images, found PT"):
        ct_hu(pet_top)


@pytest.mark.filterwarnings("ignore:End of file reached")
@pytest.mark.parametrize("content", [b"not dicom at all", b"", b"\0" * 128 + b"DICM" + b"\xff" * 20])
def test_unreadable_file_is_a_pipeline_error(ct_top: list[Path], tmp_path: Path, content: bytes) -> None:
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(content)
    with pytest.raises(PipelineError):
        ct_hu([*ct_top[:2], bad])


def test_missing_position_is_a_geometry_error(ct_top: list[Path], tmp_path: Path) -> None:
    copies = copy_slices(ct_top[:3], tmp_path, lambda i, ds: i == 1 and delattr(ds, "ImagePositionPatient"))
    with pytest.raises(GeometryError, match="ImagePositionPatient"):
        ct_hu(copies)


def test_no_files_is_a_pipeline_error() -> None:
    with pytest.raises(PipelineError):
        ct_hu([])


# ---------------------------------------------------------------- resampling


def test_resample_to_is_linear_and_fills_outside_with_default() -> None:
    ramp = np.tile(np.arange(10, dtype=np.float32), (4, 6, 1))  # value = x index, z/y/x = 4/6/10
    source = sitk.GetImageFromArray(ramp)
    source.SetSpacing((2.0, 2.0, 2.0))
    reference = sitk.Image([40, 12, 8], sitk.sitkFloat32)
    reference.SetSpacing((0.5, 1.0, 1.0))
    reference.SetOrigin((-4.0, 0.0, 0.0))
    out = resample_to(reference, source, default=-5.0)
    assert out.GetSize() == reference.GetSize() and out.GetPixelID() == sitk.sitkFloat32
    values = array(out)
    x = -4.0 + 0.5 * np.arange(40)
    inside = x >= 0
    np.testing.assert_allclose(values[2, 3, inside], x[inside] / 2.0, atol=1e-5)
    # ITK treats half a source voxel (1 mm) beyond the edge as inside
    assert np.all(values[2, 3, x < -1.0] == -5.0)


def test_resample_real_pet_onto_ct_grid(ct_top: list[Path], pet_top: list[Path]) -> None:
    ct = ct_hu(ct_top)
    pet = pet_activity(pet_top)
    on_ct = resample_to(ct, pet)
    assert on_ct.GetSize() == ct.GetSize()
    assert on_ct.GetOrigin() == ct.GetOrigin() and on_ct.GetSpacing() == ct.GetSpacing()
    # the PET voxel nearest the CT volume's centre keeps (about) its value
    centre = ct.TransformContinuousIndexToPhysicalPoint([255.5, 255.5, 2.5])
    pet_index = pet.TransformPhysicalPointToIndex(centre)
    pet_point = pet.TransformIndexToPhysicalPoint(pet_index)
    ct_index = ct.TransformPhysicalPointToIndex(pet_point)
    assert on_ct[ct_index] == pytest.approx(pet[pet_index], rel=0.1, abs=50)
