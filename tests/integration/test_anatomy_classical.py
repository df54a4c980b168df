"""The classical anatomy backend on two real chest CTs.

- LIDC-IDRI-0001 (contrast CT) against its TotalSegmentator-v2 label map
  (../shared/data/ct/lidc-idri-0001): lungs, trachea and carina.
- ACRIN-NSCLC-FDG-PET-042 (the non-contrast CT of a PET/CT): lungs, trachea, carina.

About the carina: TotalSegmentator's ``trachea`` label on LIDC-IDRI-0001 does
not stop at the bifurcation. It runs on into the proximal main bronchi and ends
about 20 mm lower (slice 82 of the mask, while the two bronchial lumens separate
at slice ~89). So the reference carina here is where the mask's trachea label
splits into two lumens, not where the label ends.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage as ndi

from pipeline.anatomy import names as an
from pipeline.anatomy import CARINA, SPINE, AnatomySettings, segment

LIDC = Path("ct/lidc-idri-0001")
PETCT = Path("petct/acrin-nsclc-fdg-pet-042/CT_0002_CT_IMAGES")


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2.0 * (a & b).sum() / (a.sum() + b.sum()))


def load_series(folder: Path) -> sitk.Image:
    files = sorted(str(p) for p in folder.glob("*.dcm"))
    try:
        from pipeline.volumes import load_ct_hu
    except ImportError:  # pragma: no cover - before pipeline.volumes existed
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
        return reader.Execute()
    return load_ct_hu(files)


def z_of_slice(img: sitk.Image, k: float) -> float:
    return float(img.TransformContinuousIndexToPhysicalPoint((0.0, 0.0, float(k)))[2])


def mask_bifurcation_slice(trachea: np.ndarray, img: sitk.Image) -> float:
    """First slice from the top where the reference trachea label shows two lumens (>= 15 mm2 each)."""
    px = img.GetSpacing()[0] * img.GetSpacing()[1]
    zs = np.nonzero(trachea.any(axis=(1, 2)))[0]
    # the image's z axis points up here (direction[8] > 0), so go down from the highest slice
    assert img.GetDirection()[8] > 0
    for k in zs[::-1]:
        lab, n = ndi.label(trachea[k])
        sizes = np.bincount(lab.ravel())[1:] * px
        if (sizes >= 15.0).sum() >= 2:
            return k + 0.5  # between this slice and the one above
    raise AssertionError("the reference trachea never splits")


@pytest.fixture(scope="module")
def lidc(shared_data):
    ct = sitk.ReadImage(str(shared_data / LIDC / "cxr.nii.gz"))
    ref = sitk.GetArrayFromImage(sitk.ReadImage(str(shared_data / LIDC / "mask.nii.gz")))
    t0 = time.perf_counter()
    anatomy = segment(ct, AnatomySettings(backend="classical"))
    return ct, ref, anatomy, time.perf_counter() - t0


@pytest.fixture(scope="module")
def petct(shared_data):
    ct = load_series(shared_data / PETCT)
    t0 = time.perf_counter()
    anatomy = segment(ct, AnatomySettings())
    return ct, anatomy, time.perf_counter() - t0


# ----------------------------------------------------------------------------- LIDC-IDRI-0001
def test_lidc_labels_on_the_ct_grid(lidc):
    ct, _, anatomy, seconds = lidc
    lab = anatomy.labels
    assert lab.GetSize() == ct.GetSize()
    assert lab.GetSpacing() == ct.GetSpacing()
    assert lab.GetOrigin() == ct.GetOrigin()
    assert lab.GetDirection() == ct.GetDirection()
    assert lab.GetPixelID() == sitk.sitkUInt8
    assert anatomy.backend == "classical"
    assert set(np.unique(anatomy.array())) <= set(anatomy.names.values()) | {0}
    json.dumps(anatomy.to_dict())  # JSON-ready, without the image
    assert seconds < 60, f"classical anatomy took {seconds:.1f} s"


def test_lidc_lungs(lidc):
    _, ref, anatomy, _ = lidc
    left = np.isin(ref, [10, 11])  # TotalSegmentator v2 lobes
    right = np.isin(ref, [12, 13, 14])
    d_left = dice(anatomy.mask(an.LUNG_LEFT), left)
    d_right = dice(anatomy.mask(an.LUNG_RIGHT), right)
    assert d_left >= 0.90, d_left
    assert d_right >= 0.90, d_right


def test_lidc_laterality_in_patient_coordinates(lidc):
    """The CT's y axis is flipped (direction -1): left must still be the patient's left (+x in LPS)."""
    ct, _, anatomy, _ = lidc
    xs = {}
    for name in (an.LUNG_LEFT, an.LUNG_RIGHT):
        k, j, i = (float(c.mean()) for c in np.nonzero(anatomy.mask(name)))
        xs[name] = ct.TransformContinuousIndexToPhysicalPoint((i, j, k))[0]
    assert xs[an.LUNG_LEFT] > xs[an.LUNG_RIGHT] + 100


def test_lidc_trachea(lidc):
    _, ref, anatomy, _ = lidc
    d = dice(anatomy.mask("trachea"), ref == 16)
    assert d >= 0.70, d


def test_lidc_carina_level(lidc):
    ct, ref, anatomy, _ = lidc
    ref_z = z_of_slice(ct, mask_bifurcation_slice(ref == 16, ct))
    assert CARINA in anatomy.landmarks
    assert abs(anatomy.landmarks[CARINA][2] - ref_z) <= 10.0, (anatomy.landmarks[CARINA], ref_z)
    # our trachea ends at the carina
    ks = np.nonzero(anatomy.mask("trachea").any(axis=(1, 2)))[0]
    assert abs(z_of_slice(ct, ks.min()) - ref_z) <= 10.0


def test_lidc_airway_tree_and_other_structures(lidc):
    ct, _, anatomy, _ = lidc
    for name in (an.MAIN_BRONCHUS_LEFT, an.MAIN_BRONCHUS_RIGHT, an.BRONCHUS_INTERMEDIUS, SPINE, "sternum",
                 "aorta", an.BODY):
        assert anatomy.has(name), name
    carina_z = anatomy.landmarks[CARINA][2]
    for name in (an.MAIN_BRONCHUS_LEFT, an.MAIN_BRONCHUS_RIGHT, an.BRONCHUS_INTERMEDIUS):
        k = np.nonzero(anatomy.mask(name).any(axis=(1, 2)))[0]
        assert z_of_slice(ct, k.max()) <= carina_z + 10.0, name  # bronchi start at the carina
    # the body contains every structure
    assert anatomy.mask(an.BODY).sum() == (anatomy.array() > 0).sum()


def test_lidc_aorta_on_contrast_ct(lidc):
    """Contrast CT: ascending aorta, arch and descending aorta; the arch top near TotalSegmentator's."""
    ct, ref, anatomy, _ = lidc
    ours, theirs = anatomy.mask("aorta"), ref == 52
    assert dice(ours, theirs) >= 0.75
    top = [z_of_slice(ct, np.nonzero(m.any(axis=(1, 2)))[0].max()) for m in (ours, theirs)]
    assert abs(top[0] - top[1]) <= 10.0, top


def test_reoriented_ct_gives_the_same_lungs(lidc):
    """Any axis-aligned orientation: a flipped and permuted copy yields the same lungs in space."""
    ct, _, anatomy, _ = lidc
    other = sitk.PermuteAxes(sitk.Flip(ct, [True, False, False]), [1, 0, 2])
    assert other.GetDirection() != ct.GetDirection()
    a2 = segment(other)
    back = sitk.Resample(a2.labels, ct, sitk.Transform(), sitk.sitkNearestNeighbor, 0, a2.labels.GetPixelID())
    arr = sitk.GetArrayViewFromImage(back)
    for name in (an.LUNG_LEFT, an.LUNG_RIGHT):
        assert dice(arr == a2.names[name], anatomy.mask(name)) >= 0.97, name
    assert abs(a2.landmarks[CARINA][2] - anatomy.landmarks[CARINA][2]) <= 5.0


# ----------------------------------------------------------------------------- ACRIN PET/CT (non-contrast)
def test_petct_finds_lungs_trachea_and_carina(petct):
    ct, anatomy, seconds = petct
    assert anatomy.labels.GetSize() == ct.GetSize()
    assert anatomy.labels.GetDirection() == ct.GetDirection()
    vols = anatomy.volumes_ml()
    assert vols[an.LUNG_LEFT] > 1000 and vols[an.LUNG_RIGHT] > 1000, vols
    assert 10 < vols["trachea"] < 100, vols
    assert CARINA in anatomy.landmarks
    x, y, z = anatomy.landmarks[CARINA]
    # the carina lies below the trachea, near the midline, inside the chest (z -360 ... +78 mm)
    ks = np.nonzero(anatomy.mask("trachea").any(axis=(1, 2)))[0]
    z_tr_low = min(z_of_slice(ct, ks.min()), z_of_slice(ct, ks.max()))
    assert abs(z - z_tr_low) <= 10.0
    assert -200 < z < 0 and abs(x) < 40
    # both lungs beside the carina: the right one at lower x (LPS)
    for name, sign in ((an.LUNG_LEFT, 1), (an.LUNG_RIGHT, -1)):
        k, j, i = (float(c.mean()) for c in np.nonzero(anatomy.mask(name)))
        assert sign * (ct.TransformContinuousIndexToPhysicalPoint((i, j, k))[0] - x) > 50, name
    assert seconds < 60, f"classical anatomy took {seconds:.1f} s"


# ----------------------------------------------------------------------------- the synthetic phantom
def test_phantom_small_lungs_trachea_carina(tmp_path):
    """The pipeline's own phantom (3.5 mm pixels, a chest wall thinner than a voxel in places)."""
    phantom = pytest.importorskip("pipeline.phantom")
    phantom.generate(tmp_path, "n0_right_upper", "small")
    ct = load_series(tmp_path / "dicom" / "ct")
    anatomy = segment(ct)
    gt = sitk.Resample(sitk.ReadImage(str(tmp_path / "anatomy_labels.nii.gz")), ct, sitk.Transform(),
                       sitk.sitkNearestNeighbor, 0)
    ref = sitk.GetArrayFromImage(gt)
    from pipeline import phantom_scene

    names: list[str] = []
    for t in phantom_scene.TISSUES:
        if t.structure and t.structure not in names:
            names.append(t.structure)
    table = {n: i + 1 for i, n in enumerate(names)}  # as phantom_scene.anatomy_labels numbers them
    for side, lobes in ((an.LUNG_LEFT, an.LEFT_LUNG_LOBES), (an.LUNG_RIGHT, an.RIGHT_LUNG_LOBES)):
        d = dice(anatomy.mask(side), np.isin(ref, [table[n] for n in lobes if n in table]))
        assert d >= 0.90, (side, d)
    assert dice(anatomy.mask("trachea"), ref == table["trachea"]) >= 0.6
    assert abs(anatomy.landmarks[CARINA][2] - 0.0) <= 15.0  # the phantom's carina is at z = 0
