"""`build_station_map`: label map in, station map on the same grid out."""

from __future__ import annotations

import logging
import math
from typing import Mapping

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi

from pipeline.anatomy.names import SPINE
from pipeline.stations.constants import (
    AIRWAY_NAMES, CONTAINERS, CRICOID, ENHANCED_BLOOD_HU, ENHANCED_VESSEL_MIN_ML, LEFT_LUNG_NAMES, LUMEN_VESSELS,
    RIGHT_LUNG_NAMES, STATION1_LATERAL_MM, STATION_VALUES, STATIONS, WORK_SPACING_MM,
)
from pipeline.stations.grid import Work, to_working_grid
from pipeline.stations.landmarks import (
    LANDMARK_WORDS, REQUIRES, Airway, Levels, find_arch, find_azygos, find_bcv_crossing, find_carina, find_cricoid,
    find_inferior_pulmonary_veins, find_lung_extent, find_manubrium, find_pa, find_station7_lower,
    record_diaphragm_domes,
)
from pipeline.stations.model import StationMap
from pipeline.stations.regions import build_regions

logger = logging.getLogger(__name__)


def _retrotracheal_in_front_of_spine(stations: sitk.Image, labels: sitk.Image, spine_vals: list[int]) -> sitk.Image:
    """3p at the input's own resolution: clear any 3p voxel at or behind the first vertebra voxel of its
    axial column (thin anterior bone edges vanish on the 2 mm working grid). Axis-aligned inputs only."""
    if not spine_vals:
        return stations
    if not np.allclose(np.abs(labels.GetDirection()), np.round(np.abs(labels.GetDirection())), atol=1e-4):
        return stations  # oblique input: the working-grid rule stands alone
    orient = sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(labels.GetDirection())
    st = sitk.GetArrayFromImage(sitk.DICOMOrient(stations, "LPS"))
    spine = np.isin(sitk.GetArrayFromImage(sitk.DICOMOrient(labels, "LPS")), spine_vals)
    first = np.where(spine.any(axis=1), np.argmax(spine, axis=1), spine.shape[1])[:, None, :]
    behind = (st == STATION_VALUES["3p"]) & (np.arange(st.shape[1])[None, :, None] >= first)
    if not behind.any():
        return stations
    st[behind] = 0
    out = sitk.GetImageFromArray(st)
    out.CopyInformation(sitk.DICOMOrient(stations, "LPS"))
    return sitk.DICOMOrient(out, orient)


def _find_landmarks(w: Work, lv: Levels, lung_r: np.ndarray, lung_l: np.ndarray,
                    points: Mapping[str, tuple[float, float, float]]) -> Airway:
    """Every landmark level, in dependency order (later ones use earlier ones as proxies)."""
    aw = find_carina(w, lv)
    find_arch(w, lv, aw)
    find_bcv_crossing(w, lv, aw)
    find_azygos(w, lv, aw)
    find_pa(w, lv, aw)
    find_station7_lower(w, lv)
    find_inferior_pulmonary_veins(w, lv, aw)
    find_lung_extent(w, lv, lung_r, lung_l)
    record_diaphragm_domes(w, lv, aw)
    find_manubrium(w, lv)
    find_cricoid(w, lv, points.get(CRICOID))
    return aw


def build_station_map(labels: sitk.Image, names: Mapping[str, int], *,
                      landmarks: Mapping[str, tuple[float, float, float]] | None = None,
                      ct: sitk.Image | None = None,
                      work_spacing_mm: float = WORK_SPACING_MM) -> StationMap:
    """IASLC station map for a label image (any orientation/spacing, LPS physical space).

    names: canonical structure name -> label value (see pipeline.anatomy.names);
    names whose value does not occur in the image are treated as absent.
    landmarks: the anatomy's landmark points (LPS mm); ``cricoid`` sets station 1's upper border.
    ct: the CT in HU (optional). On a contrast-enhanced CT, vessel lumens no label names (the
    pulmonary artery, azygos and jugular veins with TotalSegmentator labels) are cut out of the
    stations: enhanced blood connected to a labelled vessel.
    """
    if labels.GetDimension() != 3 or labels.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError("build_station_map needs a 3D scalar label image")
    if labels.GetPixelID() in (sitk.sitkFloat32, sitk.sitkFloat64):
        labels = sitk.Cast(labels, sitk.sitkInt32)
    work_img, fov_top, fov_bottom = to_working_grid(labels, work_spacing_mm)
    arr_full = sitk.GetArrayFromImage(work_img)
    present_vals = set(np.flatnonzero(np.bincount(arr_full.ravel().astype(np.int64))).tolist()) \
        if arr_full.min() >= 0 else set(np.unique(arr_full).tolist())
    values = {n: int(v) for n, v in names.items() if int(v) != 0 and int(v) in present_vals}
    lung_vals = [values[n] for n in RIGHT_LUNG_NAMES + LEFT_LUNG_NAMES if n in values]
    lv = Levels()
    notes: list[str] = []
    if lung_vals:
        S_full, not_assessable = _build_on_working_grid(work_img, arr_full, values, lung_vals, lv, notes,
                                                        landmarks or {}, fov_top, fov_bottom)
    else:
        S_full = np.zeros(arr_full.shape, dtype=np.uint8)
        not_assessable = {s: "no lung label: the mediastinum cannot be delimited" for s in STATIONS}
        logger.warning("station map: no lung labels; nothing is assessable")
    result = _on_input_grid(S_full, work_img, labels, values, lung_vals)
    if ct is not None:
        result = _without_enhanced_lumen(result, labels, values, ct, notes)
    out_arr = sitk.GetArrayViewFromImage(result)
    voxel_ml = float(np.prod(labels.GetSpacing())) / 1000.0
    counts = np.bincount(out_arr.ravel(), minlength=len(STATIONS) + 1)
    volumes = {s: float(counts[v]) * voxel_ml for s, v in STATION_VALUES.items() if counts[v] > 0}
    for s in STATIONS:
        if s not in volumes and s not in not_assessable:
            not_assessable[s] = "no space for this station between its borders in the field of view"
    for s, why in not_assessable.items():
        logger.info("station %s not assessable: %s", s, why)
    sm = StationMap(labels=result, station_values=dict(STATION_VALUES), landmarks=lv.landmarks,
                    not_assessable=not_assessable, volumes_ml=volumes, notes=notes)
    logger.info("station map: %d stations built, %d not assessable, proxies: %d",
                len(volumes), len(not_assessable), len(sm.proxies))
    return sm


def _build_on_working_grid(work_img: sitk.Image, arr_full: np.ndarray, values: dict[str, int], lung_vals: list[int],
                           lv: Levels, notes: list[str], points: Mapping[str, tuple[float, float, float]],
                           fov_top: float, fov_bottom: float) -> tuple[np.ndarray, dict[str, str]]:
    """Landmarks and regions on the working grid, cropped in x/y to the thorax (lungs, airway, neck)."""
    ox, oy, oz = work_img.GetOrigin()
    sp = work_img.GetSpacing()[0]
    nz, ny, nx = arr_full.shape
    roi_vals = lung_vals + [values[n] for n in AIRWAY_NAMES + ("esophagus", "thyroid_gland") if n in values]
    jj, ii = np.nonzero(np.isin(arr_full, roi_vals).any(axis=0))
    m = int(math.ceil((STATION1_LATERAL_MM + 10.0) / sp))
    j0, j1 = max(jj.min() - m, 0), min(jj.max() + m + 1, ny)
    i0, i1 = max(ii.min() - m, 0), min(ii.max() + m + 1, nx)
    w = Work(arr=arr_full[:, j0:j1, i0:i1], x=ox + sp * np.arange(i0, i1), y=oy + sp * np.arange(j0, j1),
             z=oz + sp * np.arange(nz), sp=sp, values=values, fov_top=fov_top, fov_bottom=fov_bottom)
    lung_r = w.mask(*RIGHT_LUNG_NAMES)
    lung_l = w.mask(*LEFT_LUNG_NAMES)
    aw = _find_landmarks(w, lv, lung_r, lung_l, points)
    S = build_regions(w, lv, aw, lung_r, lung_l, notes)
    S_full = np.zeros(arr_full.shape, dtype=np.uint8)
    S_full[:, j0:j1, i0:i1] = S
    return S_full, _not_assessable(lv, S, lung_r, lung_l)


def _not_assessable(lv: Levels, S: np.ndarray, lung_r: np.ndarray, lung_l: np.ndarray) -> dict[str, str]:
    """Stations whose defining landmark is missing, and intrapulmonary stations without a hilum."""
    out: dict[str, str] = {}
    for st, keys in REQUIRES.items():
        miss = [k for k in keys if k not in lv.z]
        if miss:
            out[st] = "; ".join(f"{LANDMARK_WORDS.get(k, k)} not available: {lv.missing.get(k, 'not found')}"
                                for k in miss)
    no_hilum = lv.get("carina") is None and not ((S == STATION_VALUES["10R"]) | (S == STATION_VALUES["10L"])).any()
    for side, lungs in (("R", lung_r), ("L", lung_l)):
        word = "right" if side == "R" else "left"
        if not lungs.any():
            for n in ("11", "12", "13", "14"):
                out[f"{n}{side}"] = f"no {word} lung label"
        elif no_hilum:
            for n in ("11", "12", "13"):
                out[f"{n}{side}"] = (f"no hilum in the field of view: intrapulmonary space of the {word} "
                                     "lung is reported as 14 (11-14 are all ipsilateral N1)")
    return out


def _on_input_grid(S_full: np.ndarray, work_img: sitk.Image, labels: sitk.Image, values: dict[str, int],
                   lung_vals: list[int]) -> sitk.Image:
    """The map on the input grid; voxels the input labels as a structure (not lung or a container) cleared."""
    st_img = sitk.GetImageFromArray(S_full)
    st_img.CopyInformation(work_img)
    out = sitk.Resample(st_img, labels, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    out_arr = sitk.GetArrayFromImage(out)
    keep_vals = [0] + lung_vals + [values[n] for n in CONTAINERS if n in values]
    # Every other input value is a structure (values missing from `names` too).
    out_arr[~np.isin(sitk.GetArrayViewFromImage(labels), keep_vals)] = 0
    result = sitk.GetImageFromArray(out_arr)
    result.CopyInformation(labels)
    spine_vals = [v for n, v in values.items() if n.startswith("vertebrae_") or n == SPINE]
    return _retrotracheal_in_front_of_spine(result, labels, spine_vals)


def _without_enhanced_lumen(stations: sitk.Image, labels: sitk.Image, values: dict[str, int], ct: sitk.Image,
                            notes: list[str]) -> sitk.Image:
    """Cut contrast-filled vessel lumen out of the stations (proxy for unlabelled vessels, e.g. the
    pulmonary artery): voxels of at least ENHANCED_BLOOD_HU, not labelled as another structure,
    3D-connected to a labelled vessel or forming a run of at least ENHANCED_VESSEL_MIN_ML (a vessel
    segment; a calcified node is smaller). Only on a contrast CT (the aorta's median at least
    ENHANCED_BLOOD_HU); a node's soft tissue stays well below it."""
    lab = sitk.GetArrayViewFromImage(labels)
    vessel_vals = [values[n] for n in LUMEN_VESSELS if n in values]
    if "aorta" not in values or not vessel_vals:
        return stations
    hu = sitk.GetArrayFromImage(sitk.Resample(ct, labels, sitk.Transform(), sitk.sitkLinear, -1000.0,
                                              sitk.sitkFloat32))
    aorta_hu = float(np.median(hu[lab == values["aorta"]]))
    if aorta_hu < ENHANCED_BLOOD_HU:
        return stations
    st = sitk.GetArrayFromImage(stations)
    vessels = np.isin(lab, vessel_vals)
    candidate = (hu >= ENHANCED_BLOOD_HU) & ((st > 0) | vessels)
    comp, n = ndi.label(candidate)
    touching = np.unique(comp[vessels & candidate])
    voxel_ml = float(np.prod(labels.GetSpacing())) / 1000.0
    sizes = np.bincount(comp.ravel(), minlength=n + 1)
    big = np.nonzero(sizes * voxel_ml >= ENHANCED_VESSEL_MIN_ML)[0]
    lumen = np.isin(comp, np.setdiff1d(np.union1d(touching, big), [0])) & (st > 0)
    if not lumen.any():
        return stations
    notes.append(f"proxy: contrast CT (aorta median {aorta_hu:.0f} HU): {lumen.sum() * voxel_ml:.1f} ml of enhanced "
                 f"blood (at least {ENHANCED_BLOOD_HU:g} HU, connected to a labelled vessel, or a connected run of "
                 f"at least {ENHANCED_VESSEL_MIN_ML:g} ml: pulmonary artery, azygos, jugular and other unlabelled "
                 "vessels) removed from the stations")
    st[lumen] = 0
    out = sitk.GetImageFromArray(st)
    out.CopyInformation(stations)
    return out
