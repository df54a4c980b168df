"""Real-anatomy FDG-PET/CT test studies whose correct answer is known.

`generate(out_dir, case, anatomy_dir, size, seed)` takes a real CT and its
TotalSegmentator-named label map (e.g. ../shared/data/ct/lidc-idri-0001), and writes:
- the real HU as a DICOM CT series, with node soft tissue (HU ~40) inserted into
  mediastinal fat where a node is placed and a primary tumour in a lobe;
- a PET synthesised from the label map (phantom_real_pet): physiologic uptake by
  organ, the case's traps, 6.5 mm FWHM PSF, count-like noise, BQML on a 4 mm grid
  sharing the CT's frame of reference;
- `anatomy_labels.nii.gz` (+ `anatomy_labels.json` names) on the CT grid, and
  `truth.json` in the synthetic phantom's schema plus a `traps` list.

Why: the geometric phantom has none of the anatomy and physiology that fooled the
pipeline on the real ACRIN study (issue 11); these cases do, and their N is known.
The LIDC CT starts at C7/T1, below the larynx: the "neck" trap is therefore uptake
in the neck and shoulder muscles of the top slices (tense paraspinal, scalene and
trapezius muscles), the honest analogue on this field of view.
"""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Literal

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from pipeline import phantom_dicom, phantom_real_pet as pet
from pipeline.phantom import sample_trilinear
from pipeline.phantom_real_cases import (REAL_CASES, FREE_HU, FAT_HU, NODE_SEPARATION_MM, Landmarks, RealCase, Space,
                                         brown_fat_foci, ellipsoid_mask, find_landmarks, place, place_primary, smoothed_hu,
                                         station_rule)
from pipeline.phantom_scene import Grid
from pipeline.staging import stage, station_side

logger = logging.getLogger(__name__)

Size = Literal["small", "full"]
SMALL_SHRINK = 2  # "small": in-plane 2x2 averaging (512 -> 256)
F18_HALF_LIFE_S = 6586.2
POSITIVITY_SUV = 2.5
PET_PIXEL_MM, PET_MATRIX, PET_SLICE_MM = 4.0, 128, 4.0
NODE_HU, LESION_HU_SD, PRIMARY_HU = 40.0, 10.0, 35.0
PRIMARY_SEMI_MM = (14.0, 13.0, 16.0)
PRIMARY_SUV = (10.0, 14.0)
POSITIVE_NODE_SUV = (11.0, 15.0)
POSITIVE_REFERENCE_RADIUS_MM = 6.5  # smaller positive nodes get a proportionally higher uptake (partial volume)
POSITIVE_RADIUS_MM = (6.5, 9.0)
MIN_ENLARGED_RADIUS_MM = 5.0  # positive and enlarged nodes keep a short axis of at least 10 mm
LUNG_ALLOWANCE_MM = 3.0
NODE_ABUT_MM = 1.0
ROLE_SUV = {"enlarged_nonavid": 1.0, "small_subthreshold": 2.0}
NODE_Z_ELONGATION = 1.25
DELAYED_LESION_SCALE = 1.25
UPTAKE_MIN = {"standard": (62, 75), "delayed": (155, 165)}
ESOPHAGUS_LINEAR_SUV = 2.8
ESOPHAGUS_FOCAL_SUV, ESOPHAGUS_FOCAL_RADIUS_MM, ESOPHAGUS_FOCAL_ABOVE_GEJ_MM = 6.0, 6.0, 20.0
BROWN_FAT_SUV, BROWN_FAT_RADIUS_MM = 12.0, 4.5
NECK_MUSCLE_SUV, NECK_MUSCLE_DEPTH_MM = 3.5, 30.0
NECK_MUSCLE_HU = (10.0, 90.0)
NECK_MUSCLE_LATERAL_MM = 45.0
DISTRACTOR_MAX_SUV = 2.4  # a distractor's noisy SUVmax must stay below the fixed threshold


def list_cases() -> list[dict]:
    return [{"name": c.name, "description": c.description, "anatomy": True} for c in REAL_CASES.values()]


@dataclass(frozen=True)
class RealAnatomy:
    ct: sitk.Image  # LPS, identity direction, float32 HU
    labels: sitk.Image  # uint8, same grid
    names: dict[str, int]  # present structures only
    source: str


def read_structures(path: Path) -> dict[str, int]:
    """Structure name -> label value from a structures.csv (columns `structure`, `id`)."""
    with Path(path).open(newline="") as f:
        return {r["structure"]: int(r["id"]) for r in csv.DictReader(f)}


def load_anatomy(anatomy_dir: str | Path, size: Size = "full") -> RealAnatomy:
    """The CT (cxr.nii.gz) and label map (mask.nii.gz + structures.csv), reoriented to LPS."""
    d = Path(anatomy_dir)
    ct = sitk.DICOMOrient(sitk.Cast(sitk.ReadImage(str(d / "cxr.nii.gz")), sitk.sitkFloat32), "LPS")
    labels = sitk.DICOMOrient(sitk.ReadImage(str(d / "mask.nii.gz")), "LPS")
    if size == "small":
        ct = sitk.BinShrink(ct, [SMALL_SHRINK, SMALL_SHRINK, 1])
        labels = pet.resample(labels, ct, nearest=True)
    labels = sitk.Cast(labels, sitk.sitkUInt8)
    present = set(np.unique(sitk.GetArrayViewFromImage(labels)).tolist())
    names = {n: v for n, v in read_structures(d / "structures.csv").items() if v in present}
    return RealAnatomy(ct, labels, names, d.name)


def _grid_of(img: sitk.Image) -> Grid:
    nx, ny, nz = img.GetSize()
    return Grid(tuple(img.GetOrigin()), tuple(img.GetSpacing()), (nz, ny, nx))


def _pet_grid(ct: sitk.Image) -> sitk.Image:
    size, sp, o = np.array(ct.GetSize()), np.array(ct.GetSpacing()), np.array(ct.GetOrigin())
    centre = o + (size - 1) * sp / 2
    z_extent = (size[2] - 1) * sp[2]
    nz = int(np.floor(z_extent / PET_SLICE_MM)) + 1
    img = sitk.Image([PET_MATRIX, PET_MATRIX, nz], sitk.sitkFloat32)
    img.SetSpacing((PET_PIXEL_MM, PET_PIXEL_MM, PET_SLICE_MM))
    half = (PET_MATRIX - 1) * PET_PIXEL_MM / 2
    img.SetOrigin((centre[0] - half, centre[1] - half, centre[2] - (nz - 1) * PET_SLICE_MM / 2))
    return img


@dataclass
class PlacedLesion:
    kind: str
    station: str | None
    role: str
    center: tuple[float, float, float]
    semi: tuple[float, float, float]
    suv: float
    clearance_mm: float | None = None
    lobe: str | None = None
    side: str | None = None


def _place_lesions(space: Space, lm: Landmarks, case: RealCase, rng) -> list[PlacedLesion]:
    centre, side, lobe = place_primary(space, case.primary, PRIMARY_SEMI_MM, rng)
    lesions = [PlacedLesion("primary", None, "primary", centre, PRIMARY_SEMI_MM, float(rng.uniform(*PRIMARY_SUV)),
                            lobe=lobe, side=side)]
    occupied = np.zeros(space.labels.shape, bool)
    for node in case.nodes:
        r_nominal = node.radius_mm or float(rng.uniform(*POSITIVE_RADIUS_MM))
        needs = 0.0 if node.role == "small_subthreshold" else MIN_ENLARGED_RADIUS_MM - NODE_ABUT_MM
        c, room = place(space, lm, station_rule(node.station, lm), r_nominal, occupied,
                        lung_allowance_mm=LUNG_ALLOWANCE_MM, min_room_mm=needs)
        r = min(r_nominal, room + NODE_ABUT_MM)
        if node.role != "small_subthreshold" and r < MIN_ENLARGED_RADIUS_MM:
            raise ValueError(f"{case.name}: only {2 * r:.1f} mm of room for the {node.role} {node.station} node")
        semi = (r, r, r * NODE_Z_ELONGATION)
        if node.role == "positive":
            suv = float(rng.uniform(*POSITIVE_NODE_SUV)) * max(1.0, POSITIVE_REFERENCE_RADIUS_MM / r)
        else:
            suv = ROLE_SUV[node.role]
        lesions.append(PlacedLesion("node", node.station, node.role, c, semi, suv, clearance_mm=room,
                                    side=station_side(node.station)))
        sl, inside = ellipsoid_mask(space, c, tuple(s + NODE_SEPARATION_MM for s in semi))
        occupied[sl] |= inside
    return lesions


def _placement_space(anatomy_dir: str | Path, size: Size, space: Space) -> Space:
    """Where the lesions are placed (with that grid's landmarks): always the small grid, so a case
    has the same nodes (centres, sizes) at either size. On the 0.7 mm full grid the labels' own edges leave some station windows
    (4L beside the arch) under 10 mm of free space, where the small grid's 1.4 mm labels leave just
    enough; the node then abuts its neighbours by a fraction of a millimetre, as real nodes do."""
    if size == "small":
        return space
    small = load_anatomy(anatomy_dir, "small")
    return Space(sitk.GetArrayFromImage(small.ct), sitk.GetArrayFromImage(small.labels), small.names,
                 small.ct.GetOrigin(), small.ct.GetSpacing())


def _paint_ct(space: Space, lesions: list[PlacedLesion], rng) -> tuple[np.ndarray, np.ndarray]:
    """CT with the lesions' soft tissue, and a lesion-index map (k + 1) on the CT grid.

    Nodes fill fat and soft tissue, and the lung they indent; lung voxels a node takes
    lose their lobe label in `space.labels`, as a segmenter would leave them.
    """
    hu = space.hu.copy()
    lung_values = [v for n, v in space.names.items() if n.startswith("lung_")]
    index = np.zeros(hu.shape, np.uint8)
    hu_s = smoothed_hu(space, slice(None))
    for k, les in enumerate(lesions):
        sl, inside = ellipsoid_mask(space, les.center, les.semi)
        if les.kind == "primary":
            where = inside & (space.labels[sl] == space.names[les.lobe])
            base = PRIMARY_HU
        else:
            lung = np.isin(space.labels[sl], lung_values)
            where = inside & (((space.labels[sl] == 0) & (hu_s[sl] > FREE_HU[0]) & (hu_s[sl] < FREE_HU[1])) | lung)
            where &= index[sl] == 0
            space.labels[sl][where & lung] = 0
            base = NODE_HU
        block = hu[sl]
        block[where] = base + rng.normal(0.0, LESION_HU_SD, int(where.sum()))
        index[sl][where] = k + 1
    return hu, index


def _image_like(arr: np.ndarray, ref: sitk.Image) -> sitk.Image:
    img = sitk.GetImageFromArray(arr)
    img.CopyInformation(ref)
    return img


def _trap_activity(act_labels, act_hu, names, lm: Landmarks, case: RealCase, act: sitk.Image,
                   space: Space, rng) -> tuple[np.ndarray, list[dict]]:
    """Extra intrinsic SUV (added, pre-PSF) of the case's traps, and their description."""
    extra = np.zeros(act_labels.shape, np.float32)
    traps: list[dict] = []
    o, s = np.array(act.GetOrigin()), np.array(act.GetSpacing())
    zs = o[2] + np.arange(act_labels.shape[0]) * s[2]
    t = case.traps
    traps.append({"kind": "myocardium", "location": "heart wall", "suv": t.myocardium_suv, "structure": "heart"})
    traps.append({"kind": "marrow", "location": "vertebral bodies", "suv": t.marrow_suv, "structure": "vertebrae",
                  "brighter_than_blood_pool": t.marrow_suv > t.blood_pool_suv})
    traps.append({"kind": "liver_noise", "location": "liver", "suv": t.liver_suv, "target_cv": t.liver_cv})
    eso = act_labels == names.get("esophagus", -1)
    if t.esophagus in ("linear", "linear_focal"):
        extra[eso] += ESOPHAGUS_LINEAR_SUV - pet.ORGAN_SUV["esophagus"]
        traps.append({"kind": "esophagus_linear", "location": "thoracic esophagus", "suv": ESOPHAGUS_LINEAR_SUV,
                      "structure": "esophagus", "z_range_mm": [lm.ge_junction_z, float(lm.scan_top_z)]})
    if t.esophagus in ("focal", "linear_focal"):
        z = lm.ge_junction_z + ESOPHAGUS_FOCAL_ABOVE_GEJ_MM
        k = space.k(z)
        ex, ey = lm.esophagus_xy.get(k) or lm.esophagus_xy[min(lm.esophagus_xy, key=lambda q: abs(q - k))]
        c = (ex, ey, z)
        extra += _sphere(act, c, ESOPHAGUS_FOCAL_RADIUS_MM) * ESOPHAGUS_FOCAL_SUV
        traps.append({"kind": "esophagus_focal", "location": "distal esophagus", "suv": ESOPHAGUS_FOCAL_SUV,
                      "center_mm": list(c), "radius_mm": ESOPHAGUS_FOCAL_RADIUS_MM})
    if t.brown_fat:
        fat = (act_hu > FAT_HU[0]) & (act_hu < FAT_HU[1]) & (act_labels == 0)
        for where, c in brown_fat_foci(space, lm, rng):
            extra += _sphere(act, c, BROWN_FAT_RADIUS_MM) * fat * BROWN_FAT_SUV
            traps.append({"kind": "brown_fat", "location": where, "suv": BROWN_FAT_SUV, "center_mm": list(c),
                          "radius_mm": BROWN_FAT_RADIUS_MM})
    if t.neck_muscle:
        top = zs >= lm.scan_top_z - NECK_MUSCLE_DEPTH_MM
        auto = np.isin(act_labels, [v for n, v in names.items() if n.startswith("autochthon")])
        xs = o[0] + np.arange(act_labels.shape[2]) * s[0]
        lateral = np.abs(xs - lm.carina_xy[0]) > NECK_MUSCLE_LATERAL_MM
        soft = (act_labels == 0) & (act_hu > NECK_MUSCLE_HU[0]) & (act_hu < NECK_MUSCLE_HU[1]) & lateral[None, None, :]
        muscle = (auto | soft) & top[:, None, None]
        extra[muscle] += NECK_MUSCLE_SUV - pet.SOFT_TISSUE_SUV
        traps.append({"kind": "neck_muscle", "location": "neck and shoulder muscles (paraspinal, scalene, trapezius) "
                      "in the top slices; the scan starts at C7/T1, below the larynx", "suv": NECK_MUSCLE_SUV,
                      "z_range_mm": [float(lm.scan_top_z - NECK_MUSCLE_DEPTH_MM), float(lm.scan_top_z)]})
    if t.delayed:
        traps.append({"kind": "delayed_scan", "location": "whole study", "suv": t.blood_pool_suv,
                      "uptake_min": UPTAKE_MIN["delayed"]})
    return extra, traps


def _sphere(img: sitk.Image, c, r: float) -> np.ndarray:
    o, s = np.array(img.GetOrigin()), np.array(img.GetSpacing())
    nx, ny, nz = img.GetSize()
    x = o[0] + np.arange(nx) * s[0]
    y = o[1] + np.arange(ny) * s[1]
    z = o[2] + np.arange(nz) * s[2]
    return (((x[None, None, :] - c[0]) ** 2 + (y[None, :, None] - c[1]) ** 2 + (z[:, None, None] - c[2]) ** 2)
            <= r * r).astype(np.float32)


def _clean_pet(anat_ct: sitk.Image, anat_labels: sitk.Image, lesion_index: sitk.Image, names, lm, case: RealCase,
               lesions, space: Space, rng) -> tuple[sitk.Image, list[dict]]:
    t = case.traps
    uptake = pet.Uptake(t.blood_pool_suv, t.liver_suv, t.myocardium_suv, t.marrow_suv,
                        DELAYED_LESION_SCALE if t.delayed else 1.0)
    act = pet.grid_like(anat_ct, pet.ACTIVITY_MM, margin_mm=8.0)
    a_lab = sitk.GetArrayFromImage(pet.resample(anat_labels, act, nearest=True))
    a_hu = sitk.GetArrayFromImage(pet.resample(anat_ct, act, default=-1000.0))
    a_idx = sitk.GetArrayFromImage(pet.resample(lesion_index, act, nearest=True))
    suv = pet.base_suv(a_lab, a_hu, names, uptake, (pet.ACTIVITY_MM,) * 3, rng)
    extra, traps = _trap_activity(a_lab, ndimage.gaussian_filter(a_hu, 0.7), names, lm, case, act, space, rng)
    suv += extra
    for k, les in enumerate(lesions):
        suv[a_idx == k + 1] = les.suv * uptake.lesion_scale
    img = _image_like(pet.blur(suv, pet.ACTIVITY_MM), act)
    return pet.resample(img, _pet_grid(anat_ct)), traps


@dataclass(frozen=True)
class RealPhantomStudy:
    out_dir: Path
    truth: dict


def generate(out_dir: str | Path, case: str, anatomy_dir: str | Path, size: Size = "full",
             seed: int = 0, variant: RealCase | None = None) -> RealPhantomStudy:
    """Write one real-anatomy study into `out_dir` and return its ground truth.

    `variant`: a modified copy of REAL_CASES[case] (dataclasses.replace), e.g. a synthetic cohort's study."""
    if case not in REAL_CASES:
        raise ValueError(f"unknown real-anatomy case {case!r}; known: {', '.join(REAL_CASES)}")
    if size not in ("small", "full"):
        raise ValueError(f"unknown size {size!r}; use small or full")
    c = variant or REAL_CASES[case]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, list(REAL_CASES).index(case)])
    anat = load_anatomy(anatomy_dir, size)
    space = Space(sitk.GetArrayFromImage(anat.ct), sitk.GetArrayFromImage(anat.labels), anat.names,
                  anat.ct.GetOrigin(), anat.ct.GetSpacing())
    lm = find_landmarks(space)
    at = _placement_space(anatomy_dir, size, space)
    lesions = _place_lesions(at, lm if at is space else find_landmarks(at), c, rng)
    hu, index = _paint_ct(space, lesions, rng)
    ct_img = _image_like(hu.astype(np.float32), anat.ct)
    labels_img = _image_like(space.labels, anat.labels)
    clean, traps = _clean_pet(ct_img, labels_img, _image_like(index, anat.ct), anat.names, lm, c, lesions, space, rng)

    pet_arr = sitk.GetArrayFromImage(clean)
    liver_pet = sitk.GetArrayFromImage(pet.resample(labels_img, clean, nearest=True)) == anat.names["liver"]
    liver_pet = ndimage.binary_erosion(liver_pet, iterations=2)
    cv_clean = pet.liver_cv(pet_arr, liver_pet)
    sd = float(np.sqrt(max(c.traps.liver_cv ** 2 - cv_clean ** 2, 0.0))) * c.traps.liver_suv
    noisy = pet.add_noise(pet_arr, sd, c.traps.liver_suv, rng)
    cv_measured = pet.liver_cv(noisy, liver_pet)
    for tr in traps:
        if tr["kind"] == "liver_noise":
            tr["measured_cv"] = round(cv_measured, 4)

    timing = _timing(rng, c.traps.delayed)
    weight = float(np.round(rng.uniform(60, 95), 1))
    dose_bq = float(np.round(rng.uniform(250e6, 400e6), -5))
    uptake_s = (timing["series"] - timing["injection"]).total_seconds()
    decay = float(np.exp(-np.log(2) * uptake_s / F18_HALF_LIFE_S))
    suv_factor = weight * 1000.0 / (dose_bq * decay)

    pet_grid, ct_grid = _grid_of(clean), _grid_of(anat.ct)
    truth_lesions = _lesion_truth(lesions, clean, pet_arr, noisy, c)
    expected = stage(lesions[0].side, [l["station"] for l in truth_lesions if l["positive"] and l["kind"] == "node"])
    uids = phantom_dicom.StudyUIDs.derive(f"{case}:{anat.source}:{size}", seed)
    meta = phantom_dicom.StudyMeta(
        uids=uids, case=case, patient_weight_kg=weight, patient_height_m=1.72, patient_sex="M",
        study_datetime=timing["ct"], injection_datetime=timing["injection"], pet_series_datetime=timing["series"],
        dose_bq=dose_bq, half_life_s=F18_HALF_LIFE_S)
    ct_files = phantom_dicom.write_ct_series(out / "dicom" / "ct", hu, ct_grid, meta)
    pet_files = phantom_dicom.write_pet_series(out / "dicom" / "pet", noisy / suv_factor, pet_grid, meta)
    sitk.WriteImage(labels_img, str(out / "anatomy_labels.nii.gz"), useCompression=True)
    (out / "anatomy_labels.json").write_text(json.dumps(anat.names, indent=1))

    for tr in traps:
        tr["suvmax_noisy"] = _trap_suvmax(tr, clean, noisy)
    truth = {
        "case": case,
        "description": c.description,
        "size": size,
        "seed": seed,
        "anatomy_source": anat.source,
        "coordinates": "DICOM patient coordinates (LPS), mm, of the source CT (carina at landmarks_mm.carina)",
        "primary": {"side": lesions[0].side, "lobe": lesions[0].lobe, "center_mm": list(lesions[0].center)},
        "lesions": truth_lesions,
        "expected": {"n_tnm8": expected.n_tnm8, "n_tnm9": expected.n_tnm9,
                     "positive_stations": list(expected.stations), "reasons": list(expected.reasons)},
        "suv": {"factor_suvbw_per_bqml": suv_factor, "weight_kg": weight, "dose_bq": dose_bq,
                "half_life_s": F18_HALF_LIFE_S, "uptake_s": uptake_s, "blood_pool_suv": c.traps.blood_pool_suv,
                "liver_suv": c.traps.liver_suv, "lung_suv": pet.LUNG_SUV, "myocardium_suv": c.traps.myocardium_suv,
                "marrow_suv": c.traps.marrow_suv, "liver_cv": round(cv_measured, 4), "pet_fwhm_mm": pet.PET_FWHM_MM},
        "hu_checks": _hu_checks(space, hu, lesions),
        "traps": traps,
        "landmarks_mm": lm.as_dict(),
        "anatomy": {"label_map": "anatomy_labels.nii.gz", "names": "anatomy_labels.json", "labels": anat.names},
        "geometry": {"ct": _grid_dict(ct_grid), "pet": _grid_dict(pet_grid)},
        "dicom": {"ct_dir": "dicom/ct", "pet_dir": "dicom/pet", "ct_instances": len(ct_files),
                  "pet_instances": len(pet_files), "study_instance_uid": uids.study,
                  "frame_of_reference_uid": uids.frame_of_reference},
    }
    (out / "truth.json").write_text(json.dumps(truth, indent=2))
    logger.info("real-anatomy phantom %s (%s) written: %d CT and %d PET instances", case, size,
                len(ct_files), len(pet_files))
    return RealPhantomStudy(out, truth)


def _timing(rng, delayed: bool) -> dict[str, datetime]:
    injection = datetime(2026, 2, 10, 8, 0, 0) + timedelta(minutes=int(rng.integers(0, 120)))
    lo, hi = UPTAKE_MIN["delayed" if delayed else "standard"]
    series = injection + timedelta(minutes=int(rng.integers(lo, hi + 1)))
    return {"injection": injection, "ct": series - timedelta(minutes=2), "series": series}


def _pet_box(img: sitk.Image, centre, semi, grow: float):
    o, s = np.array(img.GetOrigin()), np.array(img.GetSpacing())
    nx, ny, nz = img.GetSize()
    ax = [o[d] + np.arange(n) * s[d] for d, n in enumerate((nx, ny, nz))]
    e = [(ax[d][None, None, :] if d == 0 else ax[d][None, :, None] if d == 1 else ax[d][:, None, None])
         for d in range(3)]
    return sum(((e[d] - centre[d]) / (semi[d] + grow)) ** 2 for d in range(3)) <= 1


def _lesion_truth(lesions, pet_img, clean, noisy, case: RealCase) -> list[dict]:
    out = []
    bp = case.traps.blood_pool_suv
    for k, les in enumerate(lesions):
        inside = _pet_box(pet_img, les.center, les.semi, PET_PIXEL_MM / 2)
        suvmax, suvmax_noisy = float(clean[inside].max()), float(noisy[inside].max())
        core = _pet_box(pet_img, les.center, les.semi, 0.0)  # the node's own voxels, without its neighbours
        core_noisy = float(noisy[core].max()) if core.any() else suvmax_noisy
        positive = les.role in ("positive", "primary")
        if les.role == "positive" and not (suvmax >= POSITIVITY_SUV and suvmax > 1.5 * bp):
            raise AssertionError(f"{case.name}: node {les.station} meant positive has SUVmax {suvmax:.2f}")
        if les.kind == "node" and not positive and core_noisy >= DISTRACTOR_MAX_SUV:
            raise AssertionError(f"{case.name}: distractor {les.station} too avid ({core_noisy:.2f})")
        out.append({"index": k, "kind": les.kind, "station": les.station, "side": les.side, "role": les.role,
                    "center_mm": [round(v, 2) for v in les.center], "semi_axes_mm": [round(v, 2) for v in les.semi],
                    "short_axis_mm": round(2 * min(les.semi[:2]), 2), "intrinsic_suv": round(les.suv, 3),
                    "suv_center": round(sample_trilinear(clean, _grid_of(pet_img), les.center), 3),
                    "suvmax": round(suvmax, 3), "suvmax_noisy": round(suvmax_noisy, 3), "positive": positive,
                    "clearance_mm": None if les.clearance_mm is None else round(les.clearance_mm, 2)})
    return out


def _trap_suvmax(trap: dict, clean_img: sitk.Image, noisy: np.ndarray) -> float | None:
    """The stored PET's maximum over a focal trap (None for regional traps)."""
    if "center_mm" in trap:
        m = _pet_box(clean_img, trap["center_mm"], (trap["radius_mm"],) * 3, PET_PIXEL_MM / 2)
        return round(float(noisy[m].max()), 3)
    return None


HU_CHECK_TISSUES = {  # name: (structure, plausible HU range on this contrast CT)
    "lung": (None, (-1000.0, -500.0)), "blood": ("aorta", (120.0, 700.0)), "bone": ("vertebrae_T6", (50.0, 1500.0)),
    "liver": ("liver", (20.0, 150.0)),
}


def _deepest(space: Space, name: str) -> tuple[float, float, float]:
    m = space.mask(name)[:, ::2, ::2]
    depth = ndimage.distance_transform_edt(m, sampling=(space.sampling[0], space.sampling[1] * 2, space.sampling[2] * 2))
    k, j, i = np.unravel_index(int(np.argmax(depth)), depth.shape)
    return (float(space.origin[0] + 2 * i * space.spacing[0]), float(space.origin[1] + 2 * j * space.spacing[1]),
            space.z(k))


def _hu_checks(space: Space, hu: np.ndarray, lesions: list[PlacedLesion]) -> list[dict]:
    """Points where the written CT must show a known tissue (checked by tests): real HU, and the node inserts."""
    other_lung = "lung_upper_lobe_left" if lesions[0].side == "right" else "lung_upper_lobe_right"
    points = [(n, s or other_lung, _deepest(space, s or other_lung), rng_) for n, (s, rng_) in HU_CHECK_TISSUES.items()]
    points += [(f"node_{l.station}", "node", l.center, (NODE_HU - 4 * LESION_HU_SD, NODE_HU + 4 * LESION_HU_SD))
               for l in lesions if l.kind == "node"]
    out = []
    for name, tissue, p, (lo, hi) in points:
        k, j, i = space.k(p[2]), *(int(round((p[d] - space.origin[d]) / space.spacing[d])) for d in (1, 0))
        out.append({"name": name, "point_mm": [round(v, 2) for v in p], "tissue": tissue,
                    "expected_hu": round(float(np.median(hu[k, j - 1:j + 2, i - 1:i + 2])), 1),
                    "plausible_hu": [lo, hi]})
    return out


def _grid_dict(g: Grid) -> dict:
    nz, ny, nx = g.shape_zyx
    return {"size_xyz": [nx, ny, nz], "spacing_mm": list(g.spacing), "origin_mm": list(g.origin),
            "direction": [1, 0, 0, 0, 1, 0, 0, 0, 1]}
