"""SEG masks stay on the CT when the CT is stored feet-first or with another in-plane orientation.

The CT of one phantom case is rewritten (same voxels in space, different storage):
- "feet_first": ImageOrientationPatient (-1,0,0, 0,1,0), so the slice normal points to
  the feet, columns run to the patient's right, PatientPosition FFS, instances numbered
  from the feet;
- "rotated": (0,1,0, -1,0,0), the image turned by 90° in plane.
The lesions are painted in physical space, the SEG written, read back by dcmqi, and its
masks checked against the label map and against the *original* CT's pixels.
"""

import json
import shutil

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from pipeline.outputs import common
from pipeline.outputs.seg import write_lesion_seg
from pipeline.study import load_study
from tests.result_factory import dciodvfy, result_from_phantom
from tests.dcmqi_tools import _run, _tool, dcmqi_masks_match

CASE = "n2b_right_4r_7"


def _rewrite_ct(src_dir, dst_dir, variant: str) -> None:
    shutil.copytree(src_dir, dst_dir)
    files = sorted((dst_dir / "dicom" / "ct").glob("*.dcm"))
    n_files = len(files)
    for path in files:
        ds = pydicom.dcmread(path)
        orig = ds.pixel_array
        n = orig.shape[0]
        step = float(ds.PixelSpacing[0])
        x0, y0, z = (float(v) for v in ds.ImagePositionPatient)
        x_last = x0 + (n - 1) * step
        if variant == "feet_first":
            new = orig[:, ::-1]
            ds.ImageOrientationPatient = [-1, 0, 0, 0, 1, 0]
            ds.ImagePositionPatient = [x_last, y0, z]
            ds.PatientPosition = "FFS"
            ds.InstanceNumber = n_files + 1 - int(ds.InstanceNumber)
        elif variant == "rotated":
            new = orig.T[::-1, :]
            ds.ImageOrientationPatient = [0, 1, 0, -1, 0, 0]
            ds.ImagePositionPatient = [x_last, y0, z]
        else:
            raise ValueError(variant)
        ds.PixelData = np.ascontiguousarray(new).astype(orig.dtype).tobytes()
        ds.save_as(path)


@pytest.fixture(scope="module", params=["feet_first", "rotated"])
def variant(request, phantom_studies, tmp_path_factory):
    study = phantom_studies[CASE]
    root = tmp_path_factory.mktemp(request.param)
    _rewrite_ct(study.out_dir, root / "study", request.param)
    result = result_from_phantom(root / "study", with_station_map=False)
    seg = write_lesion_seg(result, None, None, root / "seg.dcm")
    return request.param, study, result, seg, root


def test_variant_really_changes_the_stored_geometry(variant):
    name, _study, result, _seg, _root = variant
    direction = np.array(result.volumes.ct.GetDirection()).reshape(3, 3)
    assert not np.allclose(direction, np.eye(3))
    if name == "feet_first":
        assert direction[2, 2] == pytest.approx(-1.0)  # slices run towards the feet
    else:
        assert direction[0, 1] == pytest.approx(-1.0) and direction[1, 0] == pytest.approx(1.0)


def test_seg_is_valid_and_dcmqi_masks_match(variant, tmp_path):
    _name, _study, result, seg, _root = variant
    _iod, errors, warnings = dciodvfy(seg)
    print("\n".join(sorted(set(warnings))))
    assert errors == []
    planned = common.lesion_segments(result)
    dice = dcmqi_masks_match(seg, result.lesion_labels, planned, tmp_path / "dcmqi")
    assert dice == {p.number: 1.0 for p in planned}


def test_seg_masks_sit_on_the_lesions_of_the_original_ct(variant, tmp_path):
    """Independent of our loader: the SEG's voxels, in physical space, land on lesion tissue of the
    untouched CT and centre on the truth centres."""
    _name, study, result, seg, _root = variant
    original = load_study(study.out_dir / "dicom").ct
    out = tmp_path / "dcmqi"
    out.mkdir()
    _run([_tool("segimage2itkimage"), "--inputDICOM", str(seg), "--outputDirectory", str(out),
          "--outputType", "nrrd"])
    truth = {l["index"]: l for l in json.loads((study.out_dir / "truth.json").read_text())["lesions"]}
    for p in common.lesion_segments(result):
        mask = sitk.ReadImage(str(out / f"{p.number}.nrrd"))
        ijk = np.argwhere(sitk.GetArrayViewFromImage(mask) > 0)[:, ::-1]
        points = [mask.TransformIndexToPhysicalPoint(tuple(int(v) for v in row)) for row in ijk]
        centre = np.mean(points, axis=0)
        t = truth[p.lesion.index]
        assert np.linalg.norm(centre - np.array(t["center_mm"])) < 2.0, p.lesion.tracking_id
        hu = np.array([original.GetPixel(original.TransformPhysicalPointToIndex(pt)) for pt in points])
        # Lesions are soft tissue (35 HU) in the phantom, in lung or fat; noise SD 10 HU.
        assert abs(float(np.median(hu)) - 35.0) < 15.0, p.lesion.tracking_id


def test_summary_projection_does_not_depend_on_the_stored_orientation(variant):
    from pipeline.outputs.summary import render_summary

    _name, study, result, _seg, _root = variant
    reference = render_summary(result_from_phantom(study.out_dir, with_station_map=False))
    image = render_summary(result)
    assert image.shape == reference.shape
    assert np.abs(image.astype(int) - reference.astype(int)).mean() < 0.5
