"""The classical anatomy on real CT, against its goals (issue 11).

- LIDC-IDRI-0001 (contrast chest CT, C7/T1 to L3) against its TotalSegmentator-v2
  label map: the Dice and landmark table of `pipeline.anatomy.reference`, each goal
  asserted. Goals the backend does not reach yet are strict xfails that name the
  shortfall (they fail as soon as the goal is reached, so the table gets updated),
  and every measure also has a floor just under today's value, so no regression
  passes unnoticed. bench/RESULTS.md has the table and the reasons.
- ACRIN-NSCLC-FDG-PET-042 (non-contrast PET/CT CT reaching into the neck): the air of
  larynx and pharynx is not lung, the cricoid and the apices are found, the heart
  reaches the diaphragm without entering the liver or the right hilar mass, the esophagus runs from
  the inlet through the hiatus, and the bone mask holds the skeleton's parts.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from pipeline.anatomy import (
    BONE,
    CARINA,
    CRICOID,
    LARYNX_PHARYNX_AIR,
    LUNG_APEX_LEFT,
    LUNG_APEX_RIGHT,
    RIBS,
    SPINE,
    AnatomySettings,
    segment,
)
from pipeline.anatomy import names as an
from pipeline.anatomy.reference import DICE_GOALS, LANDMARK_GOAL_MM, LANDMARKS, compare

LIDC = Path("ct/lidc-idri-0001")
ACRIN = Path("petct/acrin-nsclc-fdg-pet-042")

# Measured on 2026-12-06 (bench/RESULTS.md). Goals not reached: the shortfall and why.
NOT_REACHED = {
    "heart": "Dice 0.81 < 0.85: our heart starts 25 mm below the carina (a hilar mass must not become heart); "
             "TotalSegmentator's reaches above the carina and holds the pulmonary trunk and arteries",
}
# Floors: today's values less a small margin; a regression below them fails.
DICE_FLOORS = {"lungs": 0.97, "trachea": 0.85, "esophagus": 0.60, "heart": 0.78, "aorta": 0.84,
               "liver": 0.87, "bone": 0.79}


def _z(img: sitk.Image, k: int) -> float:
    return float(img.TransformIndexToPhysicalPoint((0, 0, int(k)))[2])


def _z_range(mask: np.ndarray, img: sitk.Image) -> tuple[float, float]:
    ks = np.nonzero(mask.any(axis=(1, 2)))[0]
    a, b = _z(img, ks[0]), _z(img, ks[-1])
    return min(a, b), max(a, b)


@pytest.fixture(scope="module")
def lidc(shared_data):
    ct = sitk.ReadImage(str(shared_data / LIDC / "cxr.nii.gz"))
    ref = sitk.GetArrayFromImage(sitk.ReadImage(str(shared_data / LIDC / "mask.nii.gz")))
    with (shared_data / LIDC / "structures.csv").open(newline="") as f:
        names = {r["structure"]: int(r["id"]) for r in csv.DictReader(f)}
    anatomy = segment(ct, AnatomySettings(backend="classical"))
    return anatomy, compare(anatomy, ref, names)


@pytest.fixture(scope="module")
def acrin(shared_data):
    from pipeline.study import load_study

    ct = load_study(shared_data / ACRIN).ct
    return ct, segment(ct, AnatomySettings(backend="classical"))


# ----------------------------------------------------------------------------- LIDC: the table against its goals
@pytest.mark.parametrize("structure", list(DICE_GOALS))
def test_lidc_dice_goal(lidc, structure, request):
    if structure in NOT_REACHED:
        request.applymarker(pytest.mark.xfail(strict=True, reason=NOT_REACHED[structure]))
    value = lidc[1].dice[structure]
    assert value is not None and value >= DICE_GOALS[structure], (structure, value)


@pytest.mark.parametrize("structure", list(DICE_FLOORS))
def test_lidc_dice_no_regression(lidc, structure):
    value = lidc[1].dice[structure]
    assert value is not None and value >= DICE_FLOORS[structure], (structure, value)


@pytest.mark.parametrize("landmark", LANDMARKS)
def test_lidc_landmark_goal(lidc, landmark):
    dz = lidc[1].landmark_dz_mm[landmark]
    assert dz is not None and abs(dz) <= LANDMARK_GOAL_MM, (landmark, dz, lidc[1].reference_z_mm[landmark])


def test_lidc_scan_starts_below_the_cricoid(lidc):
    """LIDC starts at C7/T1: the airway keeps the trachea's calibre to the top, so there is no cricoid
    and no laryngeal air, and the trachea is not cut short."""
    anatomy = lidc[0]
    assert CRICOID not in anatomy.landmarks
    assert LARYNX_PHARYNX_AIR not in anatomy.names
    lo, hi = _z_range(anatomy.mask("trachea"), anatomy.labels)
    assert hi >= _z(anatomy.labels, anatomy.labels.GetSize()[2] - 1) - 5.0


def test_lidc_bone_is_the_union_of_the_skeleton(lidc):
    anatomy = lidc[0]
    bone = anatomy.mask(BONE)
    parts = [anatomy.mask(n) for n in (SPINE, RIBS, an.STERNUM, an.CLAVICULA_LEFT, an.CLAVICULA_RIGHT)]
    assert all(p is not None and p.any() for p in parts)
    assert np.array_equal(bone, np.logical_or.reduce(parts))


# ----------------------------------------------------------------------------- ACRIN: the neck, the diaphragm, the esophagus
def test_acrin_larynx_and_pharynx_are_not_lung(acrin):
    ct, anatomy = acrin
    lm = anatomy.landmarks
    assert {CARINA, CRICOID, LUNG_APEX_LEFT, LUNG_APEX_RIGHT} <= set(lm)
    cricoid_z = lm[CRICOID][2]
    # an adult trachea: 80-160 mm from the cricoid to the carina
    assert 80.0 <= cricoid_z - lm[CARINA][2] <= 160.0, (cricoid_z, lm[CARINA])
    # the air above the cricoid is its own label, and lies above it
    air = anatomy.mask(LARYNX_PHARYNX_AIR)
    assert air is not None and air.sum() * np.prod(ct.GetSpacing()) / 1000.0 > 5.0
    assert _z_range(air, ct)[0] >= cricoid_z - 5.0
    # the lungs end at their apices, below the scan's top (which is in the neck)
    for side, apex in ((an.LUNG_LEFT, LUNG_APEX_LEFT), (an.LUNG_RIGHT, LUNG_APEX_RIGHT)):
        top = _z_range(anatomy.mask(side), ct)[1]
        assert abs(top - lm[apex][2]) <= 5.0, (side, top, lm[apex])
        assert top < _z(ct, ct.GetSize()[2] - 1) - 40.0
    # the trachea ends at the cricoid
    assert _z_range(anatomy.mask("trachea"), ct)[1] <= cricoid_z + 5.0


def test_acrin_heart_reaches_the_diaphragm_and_not_the_liver(acrin):
    ct, anatomy = acrin
    heart, liver = anatomy.mask(an.HEART), anatomy.mask(an.LIVER)
    assert heart is not None and liver is not None
    ml = np.prod(ct.GetSpacing()) / 1000.0
    assert 300.0 <= heart.sum() * ml <= 1200.0
    assert 1000.0 <= liver.sum() * ml <= 3000.0
    heart_low = _z_range(heart, ct)[0]
    liver_top = _z_range(liver, ct)[1]
    # the heart reaches down past the liver's dome (it sits on the diaphragm) ...
    assert heart_low <= liver_top, (heart_low, liver_top)
    # ... but not into the abdomen: no heart voxel lies more than 60 mm below the dome
    assert heart_low >= liver_top - 60.0, (heart_low, liver_top)
    # and the two touch at most along a surface (they do not overlap on the label map by construction)
    assert not (heart & liver).any()


# The right hilar mass (tests/test_run_real.py): its body and its inferior lobe, which abuts the right heart border.
ACRIN_HILAR_MASS_LPS = ((-40.0, -26.0, -120.0), (-40.0, -26.0, -130.0), (-35.0, -12.0, -141.0))


def test_acrin_right_hilar_mass_is_not_heart(acrin):
    """The heart's candidates reach the right hilum through its vessels; the mass there must stay out."""
    ct, anatomy = acrin
    heart = anatomy.mask(an.HEART)
    idx = np.argwhere(heart)[:, ::-1] * np.array(ct.GetSpacing())  # (x, y, z) index, scaled
    pts = np.array(ct.GetOrigin()) + idx @ np.array(ct.GetDirection()).reshape(3, 3).T
    for p in ACRIN_HILAR_MASS_LPS:
        assert np.linalg.norm(pts - np.array(p), axis=1).min() >= 10.0, p


def test_acrin_esophagus_from_the_inlet_through_the_hiatus(acrin):
    ct, anatomy = acrin
    eso = anatomy.mask(an.ESOPHAGUS)
    lo, hi = _z_range(eso, ct)
    lm = anatomy.landmarks
    assert hi >= lm[CRICOID][2] - 15.0, (hi, lm[CRICOID])  # from the thoracic inlet ...
    lung_low = min(_z_range(anatomy.mask(an.LUNG_LEFT), ct)[0], _z_range(anatomy.mask(an.LUNG_RIGHT), ct)[0])
    heart_low = _z_range(anatomy.mask(an.HEART), ct)[0]
    assert lo <= heart_low, (lo, heart_low)  # ... past the heart, through the hiatus
    assert lo >= lung_low - 30.0, (lo, lung_low)  # ... to the junction, not down the abdomen


def test_acrin_bone_holds_spine_ribs_sternum_and_clavicles(acrin):
    ct, anatomy = acrin
    ml = np.prod(ct.GetSpacing()) / 1000.0
    for name, lo in ((SPINE, 300.0), (RIBS, 150.0), (an.STERNUM, 30.0),
                     (an.CLAVICULA_LEFT, 5.0), (an.CLAVICULA_RIGHT, 5.0)):
        m = anatomy.mask(name)
        assert m is not None and m.sum() * ml >= lo, name
    # ribs surround the lungs: on both sides of the midline
    xs = np.nonzero(anatomy.mask(RIBS))[2]
    mid = ct.TransformPhysicalPointToIndex((anatomy.landmarks[CARINA][0], 0.0, anatomy.landmarks[CARINA][2]))[0]
    assert (xs < mid - 50).sum() > 1000 and (xs > mid + 50).sum() > 1000
