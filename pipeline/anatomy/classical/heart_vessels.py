"""The heart, and proxies of the great veins and the pulmonary artery.

The heart (`find_heart`) is the large soft-tissue mass between the lungs, from 25 mm
below the carina (above it lie the hila, the left atrium and the pulmonary arteries,
where a central tumour must not be taken for heart) down to the diaphragm. The liver
and the organs under the left dome touch it through the diaphragm, so it is split
from them by a watershed (see `pipeline.anatomy.classical.liver`); tissue that reaches
it beside the right bronchus (the hilum) is cut off. The SVC, the right
brachiocephalic vein and the pulmonary artery are proxies, so that their lumens are
not read as nodes (`find_great_veins_and_pa`).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from skimage.graph import MCP_Geometric

from pipeline.anatomy.classical.aorta import VEIN_HU, VesselTracker, paint_discs
from pipeline.anatomy.classical.grid import Work, bbox, disk, edt_open, fill_slices, hull_fill, largest
from pipeline.anatomy.classical.liver import split_by_watershed
from pipeline.anatomy.names import BRONCHUS_INTERMEDIUS, MAIN_BRONCHUS_RIGHT

# ----------------------------------------------------------------------------- heart
HEART_HU = (-10.0, 1000.0)  # myocardium and blood, with or without contrast; pericardial fat is darker
HEART_OPEN_MM = 8.0  # opening radius: detaches vessels, the esophagus, nodes and thin bridges
HEART_RAW_MIN_HU = -60.0  # and not fat before smoothing (keeps the fat planes of contrast CT sharp)
HEART_MIN_ML, HEART_MAX_ML = 150.0, 1800.0



def diaphragm_height(w: Work, lungs: np.ndarray, z_mid: int, skip: np.ndarray) -> np.ndarray | None:
    """Per (y, x) column, the z index (float) of the diaphragm as the lungs show it.

    The lowest lung voxel of a column, below z_mid, is a point of the diaphragm, except
    in the columns `skip` (the heart's footprint, where the lung that overlies the heart
    ends on the heart, not on the diaphragm). Columns without such a point are
    interpolated linearly along x between the bases either side, then along y; the map
    is lightly smoothed.
    """
    low = lungs[: z_mid + 1]
    has = low.any(axis=0) & ~skip
    if has.sum() < 20:
        return None
    zlow = np.where(has, np.argmax(low, axis=0).astype(float), np.nan)
    ny, nx = zlow.shape
    rows = np.full((ny, nx), np.nan)
    xs = np.arange(nx)
    for j in range(ny):
        ok = np.isfinite(zlow[j])
        if ok.sum() >= 2:
            rows[j] = np.interp(xs, xs[ok], zlow[j, ok])
    ys = np.arange(ny)
    for i in range(nx):
        ok = np.isfinite(rows[:, i])
        if ok.any():
            rows[:, i] = np.interp(ys, ys[ok], rows[ok, i])
    if not np.isfinite(rows).all():
        return None
    return ndi.uniform_filter(rows, size=max(3, w.vox(10.0, 1)), mode="nearest")


def largest_opened(cand: np.ndarray, w: Work) -> tuple[np.ndarray, float]:
    """The largest component of `cand` after an opening with a HEART_OPEN_MM ball, and its volume (ml)."""
    out = np.zeros(cand.shape, bool)
    box = bbox(cand, pad=2)
    if box is None:
        return out, 0.0
    lab, n = ndi.label(edt_open(cand[box], w.sp, HEART_OPEN_MM))
    if n == 0:
        return out, 0.0
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    k = int(sizes.argmax())
    out[box] = lab == k
    return out, w.ml(sizes[k])


HEART_TOP_BELOW_CARINA_MM = 25.0


def find_heart(w: Work, body, lung_l, lung_r, taken, carina_idx, sternum=None,
               subphrenic: list[tuple[np.ndarray, int]] | None = None,
               airways: dict[str, np.ndarray] | None = None) -> np.ndarray | None:
    """The heart (non-contrast or contrast CT).

    Candidates: soft tissue or contrast blood (HEART_HU, on a CT smoothed by ~1.5 mm
    against low-dose noise) inside the convex hull of the lungs (and sternum), slice by
    slice, from the lung bases up to the carina, not lung, airway, aorta or bone. The
    liver touches the heart through the diaphragm. Given the tissue under each
    hemidiaphragm (`subphrenic`: marker and the dome's top, from
    `pipeline.anatomy.classical.liver.subphrenic_marker`), the candidates are split
    between the heart (seeded by its part above both domes) and the organs under the
    diaphragm by a watershed of the CT gradient, so the heart reaches down to the
    diaphragm wherever it lies. Without them, only candidates above a diaphragm
    interpolated from the lung bases count (outside the footprint of the upper heart,
    where the lung lies on the heart). The heart is
    the largest mass that survives an opening with an 8 mm ball (which detaches the
    vessels, the esophagus, nodes and thin bridges), holes filled slice by slice,
    less the right hilum's tissue (`airways`: see `_without_right_hilum`).
    """
    if carina_idx is None:
        w.notes.append("heart: not searched (needs the carina)")
        return None
    lungs = lung_l | lung_r
    lz = np.nonzero(lungs.any(axis=(1, 2)))[0]
    # The ventricles, whose myocardium takes up FDG, start well below the carina; the
    # band just below it holds the hila, the left atrium and the pulmonary arteries,
    # where a central tumour must not be mistaken for heart.
    z_car = min(int(round(carina_idx[0])), w.hu.shape[0] - 1) - int(round(HEART_TOP_BELOW_CARINA_MM / w.sp[0]))
    z_base = int(lz[0])
    if z_car - z_base < int(35.0 / w.sp[0]):
        w.notes.append("heart: the lungs end less than 60 mm below the carina; not searched")
        return None
    z_mid = (z_car + z_base) // 2
    roi_z = slice(z_base, z_car + 1)
    cand = np.zeros(w.hu[roi_z].shape, bool)
    for k, z in enumerate(range(z_base, z_car + 1)):
        if not (lung_l[z].any() and lung_r[z].any()):
            continue
        # the sternum closes the mediastinum in front where the lungs do not reach round the heart
        front = lungs[z] | sternum[z] if sternum is not None else lungs[z]
        cand[k] = hull_fill(front) & ~lungs[z] & body[z]
    sigma = tuple(max(0.5, 1.5 / s) for s in w.sp)
    hu = ndi.gaussian_filter(w.hu[roi_z], sigma=sigma)
    cand &= (hu > HEART_HU[0]) & (hu < HEART_HU[1]) & (w.hu[roi_z] > HEART_RAW_MIN_HU) & ~taken[roi_z]
    # the footprint of the upper half (above the liver): no diaphragm point under it
    upper = cand.copy()
    upper[: z_mid - z_base] = False
    top, _ = largest_opened(upper, w)
    if not top.any():
        w.notes.append("heart: no soft-tissue mass between the lungs below the carina")
        return None
    if subphrenic:
        cand, how = _above_diaphragm_by_watershed(w, cand, top, z_base, subphrenic)
    else:
        cand, how = _above_diaphragm_from_lung_bases(w, cand, top, lungs, z_base, z_mid)
    if cand is None:
        w.notes.append("heart: no lung bases to place the diaphragm; not searched")
        return None
    heart, ml = largest_opened(cand, w)
    if not HEART_MIN_ML <= ml <= HEART_MAX_ML:
        w.notes.append(f"heart: the largest soft-tissue mass between the lungs is {ml:.0f} ml; left out")
        return None
    out = np.zeros(w.hu.shape, bool)
    out[roi_z] = fill_slices(heart) & ~taken[roi_z]
    if airways:
        out = _without_right_hilum(w, out, airways)
        ml = w.ml(out.sum())
    w.notes.append(f"heart: {ml:.0f} ml of soft tissue between the lungs, below the carina and above the "
                   f"diaphragm ({how})")
    return out


HILUM_FRONT_MM = 15.0  # the right hilum's tissue reaches this far in front of the right bronchus


def _without_right_hilum(w: Work, heart: np.ndarray, airways: dict[str, np.ndarray]) -> np.ndarray:
    """The heart less the right hilum's tissue, and its largest part after that.

    Around the right main bronchus and the bronchus intermedius the heart's candidates
    can reach the hilum through the vessels (on ACRIN-NSCLC-FDG-PET-042, 30 ml around
    the right hilar mass, 25-45 mm below the carina). On a slice with such a bronchus, a
    separate piece of the heart whose centre lies to the right of the bronchus's centre
    and no more than HILUM_FRONT_MM in front of it is hilar (vessels, nodes, a mass):
    the atria and ventricles lie medial to it or further forward.
    """
    right = np.zeros(heart.shape, bool)
    for name in (MAIN_BRONCHUS_RIGHT, BRONCHUS_INTERMEDIUS):
        if airways.get(name) is not None:
            right |= airways[name]
    out = heart.copy()
    removed = 0
    for z in np.nonzero(right.any(axis=(1, 2)) & heart.any(axis=(1, 2)))[0]:
        by, bx = np.nonzero(right[z])
        lab, n = ndi.label(heart[z])
        if n < 2:
            continue
        for i, (cy, cx) in enumerate(ndi.center_of_mass(heart[z], lab, range(1, n + 1)), start=1):
            if cx < bx.mean() and cy > by.min() - HILUM_FRONT_MM / w.sp[1]:
                piece = lab == i
                out[z][piece] = False
                removed += int(piece.sum())
    if removed:
        out = largest(out)
        w.notes.append(f"heart: {w.ml(removed):.0f} ml beside the right bronchus left out (hilum)")
    return out


HEART_SEED_ABOVE_DOME_MM = 25.0  # the heart's seed: its upper part, this far above both domes
HEART_BELOW_DOME_MM = 15.0  # the heart reaches at most this far below the lower dome's top


def _above_diaphragm_by_watershed(w: Work, cand, top, z_base: int, subphrenic) -> tuple[np.ndarray | None, str]:
    """The candidates on the heart's side of a watershed from the heart's upper part and the subphrenic markers."""
    z_seed = max(z for _, z in subphrenic) + int(round(HEART_SEED_ABOVE_DOME_MM / w.sp[0])) - z_base
    seed = top.copy()
    seed[: max(0, z_seed)] = False
    if not seed.any():
        return None, ""
    roi = slice(z_base, z_base + cand.shape[0])
    below = np.zeros(cand.shape, bool)
    for m, _ in subphrenic:
        below |= m[roi]
    heart_side, _ = split_by_watershed(w, cand, [seed, below])
    # the heart sits on the central tendon, at most a little below the lower dome
    floor = min(z for _, z in subphrenic) - int(round(HEART_BELOW_DOME_MM / w.sp[0])) - z_base
    heart_side[: max(0, floor)] = False
    return cand & heart_side, "split from the liver and the organs under the left dome by a watershed"


def _above_diaphragm_from_lung_bases(w: Work, cand, top, lungs, z_base: int, z_mid: int):
    """The candidates above a diaphragm interpolated from the lung bases (outside the upper heart's footprint)."""
    skip = ndi.binary_dilation(top.any(axis=0), structure=disk(w.vox(10.0, 1))[0])
    dia = diaphragm_height(w, lungs, z_mid, skip)
    if dia is None:
        return None, ""
    zz = np.arange(z_base, z_base + cand.shape[0])[:, None, None]
    return cand & (zz > dia[None]), "interpolated from the lung bases"




# ----------------------------------------------------------------------------- great veins and pulmonary artery
# Proxies, so that the lumens of these vessels are not read as nodes (4R, 7, 10L). Positions
# relative to the carina (LPS mm: -x right, -y anterior) as in adults; radii in mm.
VEIN_R_MM = (5.0, 14.0)
SVC_FROM_CARINA_MM = (-12.0, -25.0)  # x, y of the SVC's centre at the carina level
SVC_SEARCH_MM = 18.0
SVC_SEARCH_Z_MM = 10.0  # the start is searched within this of the carina's level
SVC_BELOW_CARINA_MM = 50.0  # the SVC enters the right atrium at most this far below the carina
BCV_JUNCTION_BELOW_ARCH_MM = 10.0  # the brachiocephalic veins join this far below the arch's top
BCV_JUNCTION_ABOVE_CARINA_MM = 25.0  # ... or this far above the carina when there is no arch
SVC_MIN_LENGTH_MM = 30.0  # a shorter track is not convincing
PA_FROM_CARINA_MM = (20.0, -45.0)  # x, y of the pulmonary trunk's centre below the carina
PA_SEARCH_Z_MM = (15.0, 40.0)  # the trunk is searched this far below the carina
PA_SEARCH_MM = 20.0
PA_R_MM = (9.0, 17.0)
PA_BELOW_CARINA_MM = 60.0  # the trunk leaves the right ventricle at most this far below the carina
PA_BRANCH_HILUM_ABOVE_BRONCHUS_MM = 12.0  # the left PA arches over the left main bronchus's end
PA_BRANCH_FRONT_OF_BRONCHUS_MM = 15.0  # the right PA runs in front of the right main bronchus's end
PATH_LABEL_MM = 6.0  # a vessel followed as a path: the vessel-like tissue within this of it
PATH_OFF_VESSEL_COST = 30.0  # the path's cost per mm through tissue that is not vessel-like
PATH_END_SNAP_MM = 12.0  # a path's end may move this far to leave bone, lung or another organ


def _disc_mask(w: Work, track: dict, shape) -> np.ndarray:
    out = np.zeros(shape, bool)
    paint_discs(w, out, track, np.zeros(shape, bool))
    return out


def _best_circle(tr: VesselTracker, zs, cy: float, cx: float, search: float, r: tuple, extra) -> tuple | None:
    """(score, z, circle) of the best circle near (cy, cx) over the slices zs."""
    w = tr.w
    best = None
    for z in zs:
        if not 0 <= z < w.hu.shape[0]:
            continue
        c = tr.circle(z, cy, cx, search, *r, weight=0.5, extra=extra[z])
        if c is not None:
            s = c[2] - 0.5 * np.hypot((c[0] - cy) * w.sp[1], (c[1] - cx) * w.sp[2])
            if best is None or s > best[0]:
                best = (s, z, c)
    return best


def _vessel_path(w: Work, vessel_like: np.ndarray, passable: np.ndarray, a, b) -> np.ndarray | None:
    """Voxels (n, 3) of the cheapest path from a to b: cheap through vessel-like tissue, dear elsewhere."""
    lo = [max(0, min(a[i], b[i]) - 15) for i in range(3)]
    hi = [min(vessel_like.shape[i], max(a[i], b[i]) + 16) for i in range(3)]
    box = tuple(slice(lo[i], hi[i]) for i in range(3))
    cost = np.where(vessel_like[box], 1.0, PATH_OFF_VESSEL_COST)
    cost[~passable[box]] = np.inf
    ok = np.isfinite(cost)
    if not ok.any():
        return None
    dist, near = ndi.distance_transform_edt(~ok, sampling=w.sp, return_indices=True)
    ends = []
    for p in (a, b):  # an end inside bone, lung or another organ moves to the nearest passable voxel
        q = tuple(int(np.clip(p[i] - lo[i], 0, cost.shape[i] - 1)) for i in range(3))
        if dist[q] > PATH_END_SNAP_MM:
            return None
        ends.append(tuple(int(near[i][q]) for i in range(3)))
    a_l, b_l = ends
    mcp = MCP_Geometric(cost, fully_connected=True, sampling=tuple(float(s) for s in w.sp))
    costs, _ = mcp.find_costs([a_l], [b_l])
    if not np.isfinite(costs[b_l]):
        return None
    return np.array(mcp.traceback(b_l)) + np.array(lo)


def _around_path(w: Work, pts: np.ndarray, vessel_like: np.ndarray, radius: float) -> np.ndarray:
    on = np.zeros(vessel_like.shape, bool)
    on[tuple(pts.T)] = True
    box = bbox(on, pad=tuple(int(np.ceil(radius / s)) + 1 for s in w.sp))
    out = np.zeros(on.shape, bool)
    out[box] = (ndi.distance_transform_edt(~on[box], sampling=w.sp) <= radius) & vessel_like[box]
    return out


def _bronchus_end(mask: np.ndarray | None) -> np.ndarray | None:
    """(z, y, x) of the centre of a bronchus's lowest tenth (its distal end)."""
    if mask is None or not mask.any():
        return None
    pts = np.argwhere(mask)
    return pts[pts[:, 0] <= np.percentile(pts[:, 0], 10)].mean(axis=0)


def find_great_veins_and_pa(w: Work, body, exclude, canal, carina_idx, aorta, airways: dict) -> dict[str, np.ndarray]:
    """Proxies of the superior vena cava, the right brachiocephalic vein and the pulmonary artery.

    - SVC: a round vessel (radius 5-14 mm) right of and in front of the carina, tracked
      up and down (down to at most 50 mm below the carina); above the brachiocephalic
      junction (10 mm below the arch's top) the same track is the right brachiocephalic vein.
      Left out when tracked over less than 30 mm. The left brachiocephalic vein runs
      across, not along z, between the arch's branches and the manubrium; it is not
      found here (a path through soft tissue followed the arteries and the thyroid).
    - Pulmonary artery: the trunk, a round vessel (radius 9-17 mm) in front of and left of
      the carina 15-40 mm below it, tracked; on contrast CT its branches as paths to the
      hila (left: over the left main bronchus; right: in front of the right main bronchus).
      On CT without contrast a hilar mass looks like the right pulmonary artery, so the
      right branch is left out there.
    `exclude`: lungs, airways, bones (and the aorta). Each vessel is left out when not found.
    """
    out: dict[str, np.ndarray] = {}
    if carina_idx is None or canal is None:
        w.notes.append("great veins, pulmonary artery: not searched (need the carina and the spinal canal)")
        return out
    contrast = aorta is not None and float(np.median(w.hu[aorta])) > 150.0
    aorta_m = aorta if aorta is not None else np.zeros(body.shape, bool)
    taken = exclude | aorta_m
    vein = VesselTracker(w, body, taken, canal, "vein", r_min=VEIN_R_MM[0])
    zc, yc, xc = (float(v) for v in carina_idx)
    dz = int(round(SVC_SEARCH_Z_MM / w.sp[0]))
    start = _best_circle(vein, range(int(zc) - dz, int(zc) + dz + 1), yc + SVC_FROM_CARINA_MM[1] / w.sp[1],
                         xc + SVC_FROM_CARINA_MM[0] / w.sp[2], SVC_SEARCH_MM, VEIN_R_MM, aorta_m)
    sigma = tuple(max(0.5, 1.0 / s) for s in w.sp)
    hu = ndi.gaussian_filter(w.hu, sigma=sigma)
    vessel_like = (hu > VEIN_HU[0]) & body & ~taken
    if start is not None:
        track = vein.follow(start[1], start[2], VEIN_R_MM[1] + 2.0)
        z_low = int(zc - SVC_BELOW_CARINA_MM / w.sp[0])
        track = {z: c for z, c in track.items() if z >= z_low}
        arch_top = int(np.nonzero(aorta_m.any(axis=(1, 2)))[0].max()) if aorta is not None else None
        z_j = (arch_top - int(round(BCV_JUNCTION_BELOW_ARCH_MM / w.sp[0])) if arch_top is not None
               else int(zc + BCV_JUNCTION_ABOVE_CARINA_MM / w.sp[0]))
        svc = {z: c for z, c in track.items() if z <= z_j}
        bcv_r = {z: c for z, c in track.items() if z > z_j}
        if len(track) * w.sp[0] < SVC_MIN_LENGTH_MM:  # a short round thing there may be a node: leave it
            svc, bcv_r = {}, {}
        if svc:
            out["superior_vena_cava"] = _disc_mask(w, svc, body.shape) & ~taken
        if bcv_r:
            out["brachiocephalic_vein_right"] = _disc_mask(w, bcv_r, body.shape) & ~taken
        w.notes.append(f"superior vena cava and right brachiocephalic vein: tracked over {len(track) * w.sp[0]:.0f} mm"
                       + ("" if svc else f" (< {SVC_MIN_LENGTH_MM:g} mm: left out)"))
    else:
        w.notes.append("superior vena cava: no round vessel right of and in front of the carina")
    # the pulmonary trunk and its branches
    pa = VesselTracker(w, body, taken, canal, "vein", r_min=PA_R_MM[0] * 0.7)
    z_lo, z_hi = (int(zc - v / w.sp[0]) for v in PA_SEARCH_Z_MM[::-1])
    not_veins = taken.copy()
    for m in out.values():
        not_veins |= m
    start = _best_circle(pa, range(z_lo, z_hi + 1), yc + PA_FROM_CARINA_MM[1] / w.sp[1],
                         xc + PA_FROM_CARINA_MM[0] / w.sp[2], PA_SEARCH_MM, PA_R_MM, not_veins)
    if start is None:
        w.notes.append("pulmonary artery: no round trunk in front of and left of the carina")
        return out
    trunk = pa.follow(start[1], start[2], PA_R_MM[1] + 2.0)
    trunk = {z: c for z, c in trunk.items() if zc - PA_BELOW_CARINA_MM / w.sp[0] <= z <= zc}
    pa_mask = _disc_mask(w, trunk, body.shape) & ~not_veins
    z_t = max(trunk)
    top = (z_t, int(round(trunk[z_t][0])), int(round(trunk[z_t][1])))
    branches = []
    ends = {"left": _bronchus_end(airways.get("main_bronchus_left"))}
    if contrast:
        ends["right"] = _bronchus_end(airways.get("main_bronchus_right"))
    for side, end in ends.items():
        if end is None:
            continue
        if side == "left":
            b = (int(round(end[0] + PA_BRANCH_HILUM_ABOVE_BRONCHUS_MM / w.sp[0])), int(round(end[1])), int(round(end[2])))
        else:
            b = (int(round(end[0])), int(round(end[1] - PA_BRANCH_FRONT_OF_BRONCHUS_MM / w.sp[1])), int(round(end[2])))
        path = _vessel_path(w, vessel_like & ~not_veins, body & ~not_veins, top, b)
        if path is not None:
            pa_mask |= _around_path(w, path, vessel_like & ~not_veins, PATH_LABEL_MM)
            branches.append(side)
    out["pulmonary_artery"] = pa_mask
    w.notes.append(f"pulmonary artery: trunk tracked over {len(trunk) * w.sp[0]:.0f} mm; branches followed: "
                   f"{', '.join(branches) or 'none'} ({'contrast' if contrast else 'non-contrast'} CT)")
    return out
