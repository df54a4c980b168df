"""Synthetic thorax FDG-PET/CT studies whose correct answer is known.

`generate(out_dir, case, size, seed)` writes a CT series, an attenuation-corrected
FDG PET series (BQML, decay-corrected to the series start, 60-90 min uptake), the
anatomy ground truth (`anatomy_labels.nii.gz` on the CT grid) and `truth.json`
(primary lobe and side, every lesion's centre, size, station, SUV, expected
positivity, and the expected N category under TNM 8 and 9).

The scene is analytic (see `phantom_scene`), so CT, PET and labels agree by
construction. Nodes sit where DESIGN.md §4 puts each IASLC station. Every case
also carries the distractors a reader must not call positive: an enlarged node
that is not FDG-avid, a small node below the positivity threshold, and
physiologic myocardial uptake.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Literal

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from pipeline import phantom_dicom, phantom_scene as ps
from pipeline.staging import stage

logger = logging.getLogger(__name__)

Size = Literal["small", "full"]
Role = Literal["positive", "enlarged_nonavid", "small_subthreshold"]

F18_HALF_LIFE_S = 6586.2
BLOOD_POOL_SUV = 1.8
POSITIVITY_SUV = 2.5
PET_FWHM_MM = 6.0

# Where each IASLC station's node sits (LPS mm; carina at z = 0, trachea on x = y = 0).
STATION_SITES: dict[str, tuple[float, float, float]] = {
    "1R": (-40.0, 10.0, 110.0), "1L": (40.0, 10.0, 110.0),
    "2R": (-20.0, -5.0, 60.0), "2L": (20.0, 0.0, 57.0),
    "3a": (5.0, -72.0, 25.0), "3p": (-8.0, 21.0, 30.0),
    "4R": (-20.0, -5.0, 25.0), "4L": (18.0, -2.0, 8.0),
    "5": (40.0, -10.0, 8.0), "6": (32.0, -44.0, 30.0),
    "7": (-4.0, 10.0, -22.0),
    "8R": (-10.0, 22.0, -70.0), "8L": (26.0, 8.0, -75.0),
    "9R": (-35.0, 20.0, -90.0), "9L": (45.0, 12.0, -95.0),
    "10R": (-42.0, -8.0, -16.0), "10L": (48.0, -10.0, -35.0),
}
# A pretracheal 4R node just left of the midline but right of the left tracheal
# border (x = +11 mm): right-sided by the IASLC split, so N3 for a left primary.
PRETRACHEAL_4R_LEFT_OF_MIDLINE = (3.0, -16.0, 38.0)

PRIMARY_SITES: dict[str, tuple[str, str, tuple[float, float, float]]] = {
    # name: (side, lobe label, centre)
    "right_upper": ("right", "lung_upper_lobe_right", (-90.0, -10.0, 30.0)),
    "right_lower": ("right", "lung_lower_lobe_right", (-95.0, 45.0, -55.0)),
    "left_upper": ("left", "lung_upper_lobe_left", (90.0, -25.0, 15.0)),
    "left_lower": ("left", "lung_lower_lobe_left", (95.0, 45.0, -65.0)),
}


@dataclass(frozen=True)
class NodeSpec:
    station: str
    role: Role
    site: tuple[float, float, float] | None = None  # default: STATION_SITES[station]
    radius_mm: float | None = None


@dataclass(frozen=True)
class Case:
    name: str
    description: str
    primary: str
    nodes: tuple[NodeSpec, ...]
    myocardium_suv: float


def _pos(*stations: str) -> tuple[NodeSpec, ...]:
    return tuple(NodeSpec(s, "positive") for s in stations)


def _distractors(enlarged: str, small: str) -> tuple[NodeSpec, ...]:
    return (NodeSpec(enlarged, "enlarged_nonavid"), NodeSpec(small, "small_subthreshold"))


CASES: dict[str, Case] = {c.name: c for c in [
    Case("n0_right_upper", "right upper lobe primary, no involved node", "right_upper",
         _distractors("4R", "7"), 2.5),
    Case("n1_right_hilar", "right upper lobe primary, ipsilateral hilar node (10R)", "right_upper",
         _pos("10R") + _distractors("2L", "8L"), 4.0),
    Case("n2a_left_4l", "left upper lobe primary, one ipsilateral mediastinal station (4L)", "left_upper",
         _pos("4L") + _distractors("7", "10R"), 6.0),
    Case("n2b_right_4r_7", "right lower lobe primary, 4R and 7 plus hilar 10R", "right_lower",
         _pos("4R", "7", "10R") + _distractors("2L", "3p"), 3.0),
    Case("n2b_right_2r_3a_8r_9r", "right lower lobe primary, 2R, 3a, 8R and 9R", "right_lower",
         _pos("2R", "3a", "8R", "9R") + _distractors("4L", "10L"), 8.0),
    Case("n2b_left_5_6", "left upper lobe primary, subaortic (5) and para-aortic (6)", "left_upper",
         _pos("5", "6") + _distractors("7", "2R"), 5.0),
    Case("n3_right_contralateral_4l", "right upper lobe primary, 4R and contralateral 4L", "right_upper",
         _pos("4R", "4L") + _distractors("7", "8R"), 3.5),
    Case("n3_supraclavicular_1l", "left lower lobe primary, supraclavicular 1L and hilar 10L", "left_lower",
         _pos("1L", "10L") + _distractors("4R", "9L"), 2.5),
    Case("n3_left_primary_4r", "left upper lobe primary, pretracheal 4R just left of the midline "
         "(right of the left tracheal border, so contralateral)", "left_upper",
         (NodeSpec("4R", "positive", PRETRACHEAL_4R_LEFT_OF_MIDLINE, 5.0),) + _distractors("8R", "6"), 7.0),
    Case("n3_left_1r_8l_9l", "left lower lobe primary, 1R with ipsilateral 8L and 9L", "left_lower",
         _pos("1R", "8L", "9L", "2L") + _distractors("3p", "10R"), 4.5),
]}

# Intrinsic (pre-blur) uptake and size by role.
ROLE_SUV = {"positive": 10.0, "enlarged_nonavid": 1.2, "small_subthreshold": 2.0}
ROLE_RADIUS_MM = {"positive": 6.5, "enlarged_nonavid": 7.5, "small_subthreshold": 4.0}
PRIMARY_SEMI_MM = (15.0, 14.0, 17.0)
PRIMARY_SUV = 12.0


@dataclass(frozen=True)
class GridSpec:
    ct_xy: int
    ct_pixel_mm: float
    ct_slice_mm: float
    pet_xy: int
    pet_pixel_mm: float
    pet_slice_mm: float
    activity_mm: float


SIZES: dict[str, GridSpec] = {
    "small": GridSpec(128, 3.5, 4.0, 112, 4.0, 4.0, 2.0),
    "full": GridSpec(512, 500.0 / 512, 2.5, 128, 4.0, 4.0, 2.0),
}
Z_RANGE_MM = (-200.0, 150.0)  # upper abdomen to the cricoid
FOV_CENTER_Y = 5.0


def _grid(n_xy: int, pixel: float, slice_mm: float) -> ps.Grid:
    half = (n_xy - 1) * pixel / 2
    nz = int(round((Z_RANGE_MM[1] - Z_RANGE_MM[0]) / slice_mm)) + 1
    return ps.Grid((-half, FOV_CENTER_Y - half, Z_RANGE_MM[0]), (pixel, pixel, slice_mm), (nz, n_xy, n_xy))


@dataclass(frozen=True)
class LesionTruth:
    index: int
    kind: Literal["primary", "node"]
    station: str | None
    side: str | None
    role: str
    center_mm: tuple[float, float, float]
    semi_axes_mm: tuple[float, float, float]
    short_axis_mm: float
    intrinsic_suv: float
    suv_center: float  # noise-free PET at the centre (trilinear on the PET grid)
    suvmax: float  # noise-free maximum over the PET voxels of the lesion
    suvmax_noisy: float  # maximum of the stored (noisy) PET over the same voxels
    positive: bool


def list_cases() -> list[dict]:
    return [{"name": c.name, "description": c.description} for c in CASES.values()]


def _lesion_shapes(case: Case) -> tuple[list[ps.Shape], list[dict]]:
    side, lobe, centre = PRIMARY_SITES[case.primary]
    shapes: list[ps.Shape] = [ps.Ellipsoid(centre, PRIMARY_SEMI_MM)]
    meta = [dict(kind="primary", station=None, side=side, role="primary", center=centre,
                 semi=PRIMARY_SEMI_MM, suv=PRIMARY_SUV, lobe=lobe)]
    for node in case.nodes:
        r = node.radius_mm or ROLE_RADIUS_MM[node.role]
        semi = (r, r, 1.25 * r)
        c = node.site or STATION_SITES[node.station]
        shapes.append(ps.Ellipsoid(c, semi))
        meta.append(dict(kind="node", station=node.station, side=None, role=node.role, center=c,
                         semi=semi, suv=ROLE_SUV[node.role]))
    return shapes, meta


def _suv_lut(case: Case, meta: list[dict]) -> np.ndarray:
    lut = np.zeros(256, dtype=np.float32)
    for i, t in enumerate(ps.TISSUES):
        lut[i] = t.suv
    lut[ps.TISSUE_INDEX["myocardium"]] = case.myocardium_suv
    for k, m in enumerate(meta):
        lut[ps.LESION_TISSUE_BASE + k] = m["suv"]
    return lut


def _hu_lut(meta: list[dict]) -> np.ndarray:
    lut = np.full(256, 40.0, dtype=np.float32)
    for i, t in enumerate(ps.TISSUES):
        lut[i] = t.hu
    lut[ps.LESION_TISSUE_BASE:ps.LESION_TISSUE_BASE + len(meta)] = 35.0
    return lut


def _pet_suv(scene: ps.Scene, lut: np.ndarray, pet_grid: ps.Grid, activity_mm: float) -> np.ndarray:
    """Noise-free SUV on the PET grid: fine activity map, 6 mm FWHM blur, point sampling."""
    (x0, y0, z0), (dx, dy, dz), (nz, ny, nx) = pet_grid.origin, pet_grid.spacing, pet_grid.shape_zyx
    lo = np.array([x0, y0, z0]) - 8.0
    hi = np.array([x0 + dx * (nx - 1), y0 + dy * (ny - 1), z0 + dz * (nz - 1)]) + 8.0
    n = np.ceil((hi - lo) / activity_mm).astype(int) + 1
    fine = ps.Grid(tuple(lo), (activity_mm,) * 3, (n[2], n[1], n[0]))
    activity = lut[ps.paint(scene, fine)]
    sigma = PET_FWHM_MM / (2 * np.sqrt(2 * np.log(2))) / activity_mm
    activity = ndimage.gaussian_filter(activity, sigma, mode="nearest")
    zz, yy, xx = np.meshgrid(pet_grid.axis(2), pet_grid.axis(1), pet_grid.axis(0), indexing="ij")
    coords = [(zz - lo[2]) / activity_mm, (yy - lo[1]) / activity_mm, (xx - lo[0]) / activity_mm]
    return ndimage.map_coordinates(activity, coords, order=1, mode="nearest").astype(np.float32)


def sample_trilinear(volume_zyx: np.ndarray, grid: ps.Grid, point_mm) -> float:
    idx = [(point_mm[d] - grid.origin[d]) / grid.spacing[d] for d in (2, 1, 0)]
    return float(ndimage.map_coordinates(volume_zyx, [[i] for i in idx], order=1, mode="nearest")[0])


def _lesion_voxels(grid: ps.Grid, centre, semi, grow_mm: float) -> tuple[tuple[slice, ...], np.ndarray]:
    shape = ps.Ellipsoid(tuple(centre), tuple(s + grow_mm for s in semi))
    lo, hi = shape.bounds()
    idx, x, y, z = grid.box(lo, hi)
    return idx, shape.inside(x, y, z)


@dataclass(frozen=True)
class PhantomStudy:
    out_dir: Path
    truth: dict


def generate(out_dir: str | Path, case: str, size: Size = "small", seed: int = 0,
             variant: Case | None = None) -> PhantomStudy:
    """Write one complete phantom study into `out_dir` and return its ground truth.

    `variant`: a modified copy of CASES[case] (dataclasses.replace), e.g. a synthetic cohort's study."""
    if case not in CASES:
        raise ValueError(f"unknown phantom case {case!r}; known: {', '.join(CASES)}")
    if size not in SIZES:
        raise ValueError(f"unknown phantom size {size!r}; use small or full")
    spec, c = SIZES[size], variant or CASES[case]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, list(CASES).index(case)])

    shapes, meta = _lesion_shapes(c)
    scene = ps.build_scene(shapes)

    ct_grid = _grid(spec.ct_xy, spec.ct_pixel_mm, spec.ct_slice_mm)
    codes = ps.paint(scene, ct_grid)
    hu = _hu_lut(meta)[codes]
    hu += rng.normal(0.0, 10.0, hu.shape).astype(np.float32)
    labels, label_table = ps.anatomy_labels(codes, ct_grid)
    del codes

    pet_grid = _grid(spec.pet_xy, spec.pet_pixel_mm, spec.pet_slice_mm)
    suv_clean = _pet_suv(scene, _suv_lut(c, meta), pet_grid, spec.activity_mm)
    noise = rng.normal(0.0, 1.0, suv_clean.shape).astype(np.float32)
    suv = np.clip(suv_clean * (1.0 + 0.03 * noise) + 0.02 * noise, 0.0, None)

    timing = _timing(rng)
    patient = dict(weight_kg=float(np.round(rng.uniform(60, 95), 1)), height_m=1.75, sex="M")
    dose_bq = float(np.round(rng.uniform(250e6, 400e6), -5))
    uptake_s = (timing["series"] - timing["injection"]).total_seconds()
    decay = float(np.exp(-np.log(2) * uptake_s / F18_HALF_LIFE_S))
    suv_factor = patient["weight_kg"] * 1000.0 / (dose_bq * decay)  # SUVbw per Bq/ml
    activity_bqml = suv / suv_factor

    lesions = _lesion_truth(meta, pet_grid, suv_clean, suv)
    primary_side = meta[0]["side"]
    expected = stage(primary_side, [l.station for l in lesions if l.positive and l.kind == "node"])
    uids = phantom_dicom.StudyUIDs.derive(case, seed)

    study_meta = phantom_dicom.StudyMeta(
        uids=uids, case=case, patient_weight_kg=patient["weight_kg"], patient_height_m=patient["height_m"],
        patient_sex=patient["sex"], study_datetime=timing["ct"], injection_datetime=timing["injection"],
        pet_series_datetime=timing["series"], dose_bq=dose_bq, half_life_s=F18_HALF_LIFE_S)
    dicom_dir = out / "dicom"
    ct_files = phantom_dicom.write_ct_series(dicom_dir / "ct", hu, ct_grid, study_meta)
    pet_files = phantom_dicom.write_pet_series(dicom_dir / "pet", activity_bqml, pet_grid, study_meta)

    label_img = sitk.GetImageFromArray(labels)
    label_img.SetOrigin(ct_grid.origin)
    label_img.SetSpacing(ct_grid.spacing)
    sitk.WriteImage(label_img, str(out / "anatomy_labels.nii.gz"), useCompression=True)

    truth = {
        "case": case,
        "description": c.description,
        "size": size,
        "seed": seed,
        "coordinates": "DICOM patient coordinates (LPS), mm; carina at z = 0",
        "primary": {"side": primary_side, "lobe": meta[0]["lobe"], "center_mm": list(meta[0]["center"])},
        "lesions": [asdict(l) for l in lesions],
        "expected": {"n_tnm8": expected.n_tnm8, "n_tnm9": expected.n_tnm9,
                     "positive_stations": list(expected.stations), "reasons": list(expected.reasons)},
        "suv": {"factor_suvbw_per_bqml": suv_factor, "weight_kg": patient["weight_kg"], "dose_bq": dose_bq,
                "half_life_s": F18_HALF_LIFE_S, "uptake_s": uptake_s, "blood_pool_suv": BLOOD_POOL_SUV,
                "liver_suv": ps.TISSUES[ps.TISSUE_INDEX["liver"]].suv,
                "lung_suv": ps.TISSUES[ps.TISSUE_INDEX["lung_upper_lobe_right"]].suv,
                "myocardium_suv": c.myocardium_suv, "pet_fwhm_mm": PET_FWHM_MM},
        "hu_checks": _hu_checks(),
        "landmarks_mm": ps.LANDMARKS_MM,
        "anatomy": {"label_map": "anatomy_labels.nii.gz", "labels": label_table},
        "geometry": {"ct": _grid_dict(ct_grid), "pet": _grid_dict(pet_grid)},
        "dicom": {"ct_dir": "dicom/ct", "pet_dir": "dicom/pet", "ct_instances": len(ct_files),
                  "pet_instances": len(pet_files), "study_instance_uid": uids.study,
                  "frame_of_reference_uid": uids.frame_of_reference},
    }
    (out / "truth.json").write_text(json.dumps(truth, indent=2))
    logger.info("phantom %s (%s) written: %d CT and %d PET instances", case, size, len(ct_files), len(pet_files))
    return PhantomStudy(out, truth)


def _timing(rng: np.random.Generator) -> dict[str, datetime]:
    injection = datetime(2026, 1, 15, 8, 0, 0) + timedelta(minutes=int(rng.integers(0, 120)))
    series = injection + timedelta(minutes=int(rng.integers(62, 75)))
    return {"injection": injection, "ct": series - timedelta(minutes=2), "series": series}


def _lesion_truth(meta, pet_grid, suv_clean, suv) -> list[LesionTruth]:
    result = []
    for k, m in enumerate(meta):
        grow = pet_grid.spacing[0] / 2
        idx, inside = _lesion_voxels(pet_grid, m["center"], m["semi"], grow)
        suvmax = float(suv_clean[idx][inside].max())
        suvmax_noisy = float(suv[idx][inside].max())
        positive = m["role"] == "positive"
        if positive and not (suvmax >= POSITIVITY_SUV and suvmax > BLOOD_POOL_SUV * 1.5):
            raise AssertionError(f"phantom lesion {k} ({m['station']}) meant positive has SUVmax {suvmax:.2f}")
        if m["role"] in ("enlarged_nonavid", "small_subthreshold") and suvmax_noisy >= min(POSITIVITY_SUV, 2.2):
            raise AssertionError(f"phantom distractor {k} ({m['station']}) too avid: {suvmax_noisy:.2f}")
        semi = m["semi"]
        result.append(LesionTruth(
            index=k, kind=m["kind"], station=m["station"], side=m["side"] or _station_side(m["station"]),
            role=m["role"], center_mm=tuple(m["center"]), semi_axes_mm=tuple(semi),
            short_axis_mm=2 * min(semi[0], semi[1]), intrinsic_suv=m["suv"],
            suv_center=sample_trilinear(suv_clean, pet_grid, m["center"]), suvmax=suvmax,
            suvmax_noisy=suvmax_noisy, positive=positive or m["kind"] == "primary"))
    return result


def _station_side(station: str | None) -> str | None:
    if station is None:
        return None
    from pipeline.staging import station_side
    return station_side(station)


def _hu_checks() -> list[dict]:
    """Points where the CT must show a known tissue (checked by tests)."""
    checks = [("lung", (-110.0, 20.0, -10.0), "lung_upper_lobe_right"),
              ("blood", (30.0, 32.0, -60.0), "aorta"),
              ("bone", (0.0, 45.0, -50.0), "vertebral_body"),
              ("liver", (-60.0, 0.0, -170.0), "liver"),
              ("mediastinal_fat", (-8.0, -60.0, 40.0), "mediastinal_fat")]
    out = []
    for name, point, tissue in checks:
        out.append({"name": name, "point_mm": list(point), "tissue": tissue,
                    "expected_hu": ps.TISSUES[ps.TISSUE_INDEX[tissue]].hu})
    return out


def _grid_dict(g: ps.Grid) -> dict:
    nz, ny, nx = g.shape_zyx
    return {"size_xyz": [nx, ny, nz], "spacing_mm": list(g.spacing), "origin_mm": list(g.origin),
            "direction": [1, 0, 0, 0, 1, 0, 0, 0, 1]}
