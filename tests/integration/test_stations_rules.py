"""The IASLC station rules of issue 11, checked geometrically on real anatomy.

The station map is built from LIDC-IDRI-0001 with its reference label map (read
through the ``labelmap`` backend) and with the classical backend on the same CT,
and from the ACRIN FDG-PET/CT with the classical backend. Each rule is measured
on the map's own grid, in patient coordinates, with the anatomy labels as the
judge:

* no station-1 voxel above the cricoid, or inside the larynx/pharynx air or the thyroid;
* station 7 touches the esophagus;
* no 3p voxel behind the anterior surface of the spine in its column;
* no 10L voxel in the pulmonary artery (when it is labelled);
* no 8/9 voxel in the liver, or at or below the top of an abdominal organ in its column;
* no station voxel in a vessel lumen, an airway, the esophagus or bone.

On the reference map every rule holds exactly, and on this contrast CT the
stations around the (unlabelled) pulmonary artery hold no contrast-filled lumen.
With the classical backend every rule held on LIDC and ACRIN when measured, so
all are asserted there too; the counts are logged.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage as ndi

from pipeline.anatomy import Anatomy, AnatomySettings, segment
from pipeline.stations import STATION_VALUES, StationMap, build_station_map

logger = logging.getLogger(__name__)

LUMENS = (
    "aorta", "superior_vena_cava", "brachiocephalic_vein_left", "brachiocephalic_vein_right", "brachiocephalic_trunk",
    "subclavian_artery_left", "subclavian_artery_right", "common_carotid_artery_left", "common_carotid_artery_right",
    "pulmonary_vein", "pulmonary_artery", "heart", "trachea", "main_bronchus_left", "main_bronchus_right",
    "bronchus_intermedius", "esophagus", "larynx_pharynx_air", "inferior_vena_cava",
)
ABDOMINAL = ("liver", "stomach", "spleen", "gallbladder", "pancreas", "kidney_right", "kidney_left",
             "duodenum", "colon", "small_bowel")
RULES = ("s1_above_cricoid", "s1_in_larynx_or_thyroid", "s7_apart_from_esophagus", "s3p_behind_spine",
         "s10L_in_pulmonary_artery", "s8_9_below_diaphragm", "in_lumen_or_bone")


# ----------------------------------------------------------------------------------------
# Measuring the rules
# ----------------------------------------------------------------------------------------

def _lps(img: sitk.Image) -> np.ndarray:
    """Array [z, y, x] with x to the patient's left, y posterior, z superior (index grows with each)."""
    return sitk.GetArrayFromImage(sitk.DICOMOrient(img, "LPS"))


def _mask(anatomy: Anatomy, labels_lps: np.ndarray, *names: str) -> np.ndarray:
    vals = [anatomy.names[n] for n in names if n in anatomy.names]
    return np.isin(labels_lps, vals) if vals else np.zeros(labels_lps.shape, dtype=bool)


def _slice_z(img: sitk.Image) -> np.ndarray:
    """Physical z (mm) of each slice of the LPS-oriented image."""
    o = sitk.DICOMOrient(img, "LPS")
    return o.GetOrigin()[2] + o.GetSpacing()[2] * np.arange(o.GetSize()[2])


def cricoid_z(anatomy: Anatomy) -> float:
    """The cricoid's lower margin: the anatomy's landmark, else the top of the trachea label, else the scan top."""
    if "cricoid" in anatomy.landmarks:
        return float(anatomy.landmarks["cricoid"][2])
    zs = _slice_z(anatomy.labels)
    trachea = _mask(anatomy, _lps(anatomy.labels), "trachea").any(axis=(1, 2))
    return float(zs[trachea].max()) if trachea.any() else float(zs.max())


def rule_violations(anatomy: Anatomy, sm: StationMap) -> dict[str, int]:
    """Voxel counts breaking each rule (0 = holds); s7_apart_from_esophagus is 1 when 7 does not touch it."""
    lab = _lps(anatomy.labels)
    st = _lps(sm.labels)
    zs = _slice_z(anatomy.labels)
    V = STATION_VALUES
    s1 = (st == V["1R"]) | (st == V["1L"])
    out: dict[str, int] = {}
    out["s1_above_cricoid"] = int(s1[zs > cricoid_z(anatomy) + 1e-3].sum())
    out["s1_in_larynx_or_thyroid"] = int((s1 & _mask(anatomy, lab, "larynx_pharynx_air", "thyroid_gland")).sum())
    eso = _mask(anatomy, lab, "esophagus")
    touch = ndi.binary_dilation(eso, structure=ndi.generate_binary_structure(3, 3)) & (st == V["7"])
    out["s7_apart_from_esophagus"] = int(not touch.any())
    spine = anatomy.mask("spine")
    spine = _lps_mask(anatomy, spine) if spine is not None else np.zeros(lab.shape, dtype=bool)
    rows = np.arange(lab.shape[1])[None, :, None]
    first = np.where(spine.any(axis=1), np.argmax(spine, axis=1), lab.shape[1])[:, None, :]
    out["s3p_behind_spine"] = int(((st == V["3p"]) & (rows >= first)).sum())
    out["s10L_in_pulmonary_artery"] = int(((st == V["10L"]) & _mask(anatomy, lab, "pulmonary_artery")).sum())
    organs = _mask(anatomy, lab, *ABDOMINAL)
    top = np.where(organs.any(axis=0), lab.shape[0] - 1 - np.argmax(organs[::-1], axis=0), -1)
    s89 = np.isin(st, [V["8R"], V["8L"], V["9R"], V["9L"]])
    below = np.arange(lab.shape[0])[:, None, None] <= top[None]
    out["s8_9_below_diaphragm"] = int((s89 & (below | _mask(anatomy, lab, "liver"))).sum())
    bone = anatomy.mask("bone")
    hard = _mask(anatomy, lab, *LUMENS) | (_lps_mask(anatomy, bone) if bone is not None else False)
    out["in_lumen_or_bone"] = int(((st > 0) & hard).sum())
    return out


def _lps_mask(anatomy: Anatomy, mask: np.ndarray) -> np.ndarray:
    img = sitk.GetImageFromArray(mask.astype(np.uint8))
    img.CopyInformation(anatomy.labels)
    return _lps(img) > 0


def _report(source: str, v: dict[str, int], sm: StationMap) -> None:
    logger.info("station rules, %s: %s; stations %s", source, v, sorted(sm.volumes_ml))


# ----------------------------------------------------------------------------------------
# Fixtures
# ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def lidc_ct(shared_data) -> sitk.Image:
    return sitk.ReadImage(str(shared_data / "ct" / "lidc-idri-0001" / "cxr.nii.gz"))


@pytest.fixture(scope="module")
def reference(shared_data, lidc_ct) -> tuple[Anatomy, StationMap]:
    folder = shared_data / "ct" / "lidc-idri-0001"
    anatomy = segment(lidc_ct, AnatomySettings(backend="labelmap", labelmap={
        "path": str(folder / "mask.nii.gz"), "names": str(folder / "structures.csv")}))
    return anatomy, build_station_map(anatomy.labels, anatomy.names, landmarks=anatomy.landmarks, ct=lidc_ct)


@pytest.fixture(scope="module")
def lidc_classical(lidc_ct) -> tuple[Anatomy, StationMap]:
    anatomy = segment(lidc_ct)
    return anatomy, build_station_map(anatomy.labels, anatomy.names, landmarks=anatomy.landmarks, ct=lidc_ct)


@pytest.fixture(scope="module")
def acrin_classical(shared_data) -> tuple[Anatomy, StationMap]:
    from pipeline.study import load_study

    ct = load_study(shared_data / "petct" / "acrin-nsclc-fdg-pet-042").ct
    anatomy = segment(ct)
    return anatomy, build_station_map(anatomy.labels, anatomy.names, landmarks=anatomy.landmarks, ct=ct)


# ----------------------------------------------------------------------------------------
# The reference label map: every rule holds exactly
# ----------------------------------------------------------------------------------------

def test_reference_map_meets_every_rule(reference):
    anatomy, sm = reference
    v = rule_violations(anatomy, sm)
    _report("LIDC reference", v, sm)
    assert v == {r: 0 for r in RULES}


def test_reference_map_builds_the_upper_and_lower_stations(reference):
    anatomy, sm = reference
    for st in ("1R", "1L", "3p", "7", "8R", "8L", "9R", "9L", "10L"):
        assert sm.volumes_ml.get(st, 0.0) > 1.0, f"station {st} is empty"
    # The scan starts below the cricoid's landmark here: the trachea's top stands in for it.
    assert sm.landmark("cricoid_lower").source.startswith("proxy: top of the trachea")
    assert any(p.startswith("proxy: station 1 = fat within") for p in sm.proxies)


def test_reference_station1_reaches_from_cricoid_to_manubrium(reference):
    anatomy, sm = reference
    st = _lps(sm.labels)
    zs = _slice_z(sm.labels)
    s1_z = zs[((st == STATION_VALUES["1R"]) | (st == STATION_VALUES["1L"])).any(axis=(1, 2))]
    assert s1_z.max() >= cricoid_z(anatomy) - 6.0
    manubrium = sm.landmark("manubrium_top").z_mm
    assert s1_z.min() <= manubrium + 3.0
    assert s1_z.min() >= min(sm.landmark("clavicle_right").z_mm, sm.landmark("clavicle_left").z_mm) - 3.0


@pytest.mark.parametrize("station", ("4R", "4L", "5", "7", "10R", "10L"))
def test_reference_hilar_and_paratracheal_stations_hold_no_contrast_filled_lumen(reference, lidc_ct, station):
    """The pulmonary artery is not labelled (TotalSegmentator): on this contrast CT its lumen, and any
    other unlabelled vessel's, is cut out of the stations around it (at most 0.25 ml of blood at 150 HU
    or more remains, partial volume at the wall)."""
    anatomy, sm = reference
    assert "pulmonary_artery" not in anatomy.names
    hu = sitk.GetArrayViewFromImage(lidc_ct)
    st = sitk.GetArrayViewFromImage(sm.labels) == STATION_VALUES[station]
    voxel_ml = float(np.prod(lidc_ct.GetSpacing())) / 1000.0
    assert st.sum() * voxel_ml > 1.0
    assert (st & (hu >= 150)).sum() * voxel_ml <= 0.25
    assert any("enhanced blood" in p for p in sm.proxies)


def test_rules_catch_a_broken_map(reference):
    """The measure is not vacuous: a map that paints 3p and 8 into the spine and the liver fails."""
    anatomy, sm = reference
    arr = sitk.GetArrayFromImage(sm.labels)
    lab = sitk.GetArrayViewFromImage(anatomy.labels)
    arr[lab == anatomy.names["vertebrae_T4"]] = STATION_VALUES["3p"]
    arr[lab == anatomy.names["liver"]] = STATION_VALUES["8R"]
    broken = sitk.GetImageFromArray(arr)
    broken.CopyInformation(sm.labels)
    bad = StationMap(labels=broken, station_values=sm.station_values, landmarks=sm.landmarks,
                     not_assessable=sm.not_assessable)
    v = rule_violations(anatomy, bad)
    assert v["s3p_behind_spine"] > 0 and v["s8_9_below_diaphragm"] > 0 and v["in_lumen_or_bone"] > 0


# ----------------------------------------------------------------------------------------
# The classical backend (LIDC and ACRIN)
# ----------------------------------------------------------------------------------------

CLASSICAL_HOLDS = RULES  # every rule holds with the classical backend too (LIDC and ACRIN, measured)


def test_classical_lidc_meets_the_rules_it_can(lidc_classical):
    anatomy, sm = lidc_classical
    v = rule_violations(anatomy, sm)
    _report("LIDC classical", v, sm)
    assert {r: v[r] for r in CLASSICAL_HOLDS} == {r: 0 for r in CLASSICAL_HOLDS}
    assert sm.volumes_ml.get("7", 0.0) > 1.0


def test_classical_acrin_meets_the_rules_it_can(acrin_classical):
    anatomy, sm = acrin_classical
    v = rule_violations(anatomy, sm)
    _report("ACRIN classical", v, sm)
    assert {r: v[r] for r in CLASSICAL_HOLDS} == {r: 0 for r in CLASSICAL_HOLDS}
    assert sm.volumes_ml.get("7", 0.0) > 1.0
