"""Body, the air inside it, and the airway tree (trachea, main bronchi, bronchus intermedius).

See `pipeline.anatomy.classical` for what each finds and where it is weak.
"""

from __future__ import annotations

import logging

import numpy as np
from scipy import ndimage as ndi

from pipeline.anatomy import names as an
from pipeline.anatomy.classical.grid import (
    BODY_HU,
    TRACHEA_MAX_LENGTH_MM,
    Work,
    bbox,
    disk,
    fill_slices,
    graph_distances,
    hull_fill,
    largest,
)
from pipeline.anatomy.model import AnatomyError

log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------- body and air
def find_body(w: Work) -> np.ndarray:
    tissue = w.hu > BODY_HU
    r = w.vox(3.0, 2)
    st = disk(r)
    opened = ndi.binary_opening(tissue, structure=st)
    body = largest(opened)
    if not body.any():
        raise AnatomyError("no body found in the CT (is it in Hounsfield units?)")
    # give back what the opening took at the edges
    body = ndi.binary_dilation(body, structure=st) & tissue
    return fill_slices(body)


def find_interior(w: Work, body: np.ndarray) -> np.ndarray:
    """Where air counts as inside the patient: the body and, slice by slice, its convex hull.
    So the lungs count as inside even where the chest wall is thinner than a voxel or broken
    (phantoms, very thin patients, artefacts). Outside air caught by the hull (beside the
    arms) is not lung-like, and is dropped by `find_lung_air`."""
    out = body.copy()
    for z in np.nonzero(body.any(axis=(1, 2)))[0]:
        out[z] = hull_fill(body[z])
    return out


# ----------------------------------------------------------------------------- airways
def find_trachea_seed(w: Work, air: np.ndarray, body: np.ndarray, lung_air: np.ndarray) -> tuple[int, np.ndarray]:
    """(z, 2-D mask) of the trachea: an air tube near the midline, from 100 mm above to 100 mm below the lung top."""
    z_top = int(np.nonzero(lung_air.any(axis=(1, 2)))[0].max())
    z_hi = min(air.shape[0] - 1, z_top + int(100.0 / w.sp[0]))
    z_lo = max(0, z_top - int(100.0 / w.sp[0]))
    px_mm2 = w.sp[1] * w.sp[2]
    tol = 30.0 / w.sp[2]
    cands: dict[int, tuple[np.ndarray, float, float]] = {}
    for z in range(z_hi, z_lo - 1, -1):
        bx = np.nonzero(body[z].any(axis=0))[0]
        if bx.size == 0:
            continue
        mid = 0.5 * (bx[0] + bx[-1])
        lab, n = ndi.label(air[z])
        if n == 0:
            continue
        idx = np.arange(1, n + 1)
        areas = ndi.sum_labels(np.ones_like(lab), lab, idx) * px_mm2
        cents = ndi.center_of_mass(np.ones_like(lab), lab, idx)
        best = None
        for i, a, (cy, cx) in zip(idx, areas, cents):
            if not 40.0 <= a <= 900.0 or abs(cx - mid) > tol:
                continue
            m = lab == i
            ys, xs = np.nonzero(m)
            ext_y = (ys.max() - ys.min() + 1) * w.sp[1]
            ext_x = (xs.max() - xs.min() + 1) * w.sp[2]
            if max(ext_y, ext_x) > 40.0 or max(ext_y, ext_x) > 2.5 * min(ext_y, ext_x):
                continue
            if best is None or abs(cx - mid) < abs(best[2] - mid):
                best = (m, cy, cx)
        if best is not None:
            cands[int(z)] = best
    # the first candidate from the top that continues as a tube for >= 20 mm below
    need = max(2, int(np.ceil(20.0 / w.sp[0])))
    for z in sorted(cands, reverse=True):
        ok = True
        for k in range(1, need + 1):
            c = cands.get(z - k)
            if c is None or np.hypot((c[1] - cands[z][1]) * w.sp[1], (c[2] - cands[z][2]) * w.sp[2]) > 15.0:
                ok = False
                break
        if ok:
            return z, cands[z][0]
    raise AnatomyError("no trachea found: no air-filled tube near the midline above the lungs")


def grow_airway(
    w: Work, air: np.ndarray, lung_air: np.ndarray, seed_z: int, seed: np.ndarray
) -> tuple[np.ndarray, float]:
    """Airway lumen grown from the seed with the highest threshold that does not leak.

    air: all air inside the body; lung_air: the lungs' component(s), which bound
    the search box (extended up to 150 mm above the seed for the trachea).
    """
    roi = list(bbox(lung_air, pad=1))
    roi[0] = slice(roi[0].start, min(air.shape[0], max(roi[0].stop, seed_z + int(150.0 / w.sp[0]) + 1)))
    roi = tuple(roi)
    sub_hu = w.hu[roi]
    sub_air = air[roi]
    seed3 = np.zeros(sub_air.shape, bool)
    seed3[seed_z - roi[0].start] = seed[roi[1], roi[2]]
    seed3 &= sub_air
    lung_ml = w.ml(lung_air.sum())

    def grow(t: float) -> np.ndarray:
        lab, _ = ndi.label((sub_hu < t) & sub_air)
        ids = np.unique(lab[seed3 & (lab > 0)])
        return np.isin(lab, ids[ids > 0]) if ids.size else np.zeros_like(sub_air)

    limit = min(350.0, 0.12 * lung_ml)
    history: list[tuple[float, float]] = []
    best: tuple[np.ndarray, float] | None = None
    prev_ml = None
    for t in np.arange(-950.0, -779.0, 10.0):
        region = grow(t)
        v = w.ml(region.sum())
        history.append((float(t), round(v, 1)))
        if v > limit or (prev_ml is not None and prev_ml > 5.0 and v > 1.6 * prev_ml + 5.0):
            break
        if v > 0:
            best = (region, float(t))
        prev_ml = v
    if best is None:
        # a leak at the lowest threshold already: try lower ones
        for t in (-965.0, -980.0, -995.0):
            region = grow(t)
            v = w.ml(region.sum())
            history.append((t, round(v, 1)))
            if 0 < v <= limit:
                best = (region, t)
                break
    log.debug("airway growing (threshold, ml): %s", history)
    if best is None:
        raise AnatomyError("airway region growing failed: the trachea leaks into the lungs at every threshold")
    out = np.zeros(air.shape, bool)
    out[roi] = best[0]
    return out, best[1]


def _branches(sub: np.ndarray, dist: np.ndarray, d: float, sp: np.ndarray, min_ml: float, min_len: float):
    """Subtrees of `sub` beyond geodesic distance d: list of (mask, volume ml) that are large enough."""
    beyond = sub & (dist >= d)
    lab, n = ndi.label(beyond, structure=np.ones((3, 3, 3), bool))
    if n == 0:
        return []
    vox_ml = float(np.prod(sp)) / 1000.0
    sizes = np.bincount(lab.ravel())
    out = []
    for i in np.nonzero(sizes[1:] * vox_ml >= min_ml)[0] + 1:
        m = lab == i
        if float(dist[m].max()) - d >= min_len:
            out.append((m, float(sizes[i] * vox_ml)))
    out.sort(key=lambda t: -t[1])
    return out


def _first_split(sub, dist, d_start, d_end, sp, min_ml, min_len, step):
    """Smallest distance in [d_start, d_end) where `sub` splits into >= 2 large subtrees."""
    for d in np.arange(d_start, d_end, step):
        br = _branches(sub, dist, float(d), sp, min_ml, min_len)
        if len(br) >= 2:
            return float(d), br
    return None, []


def split_airway_tree(w: Work, airway: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """Split the airway lumen into trachea, main bronchi and bronchus intermedius."""
    roi = bbox(airway, pad=1)
    sub = airway[roi]
    sp = w.sp
    ztop = np.nonzero(sub.any(axis=(1, 2)))[0].max()
    src = np.zeros_like(sub)
    src[ztop] = sub[ztop]
    dist = graph_distances(sub, sp, src)
    finite = np.isfinite(dist)
    sub = sub & finite
    dmax = float(dist[sub].max())
    step = float(min(sp)) * 0.75

    parts: dict[str, np.ndarray] = {}
    carina_idx = None
    d_c, br = _first_split(sub, dist, 10.0, dmax, sp, min_ml=0.3, min_len=12.0, step=step)
    if d_c is None:
        w.notes.append("airway: no carina found (the airway tree does not split into two main bronchi)")
        trachea = sub
    else:
        trachea = sub & (dist < d_c)
        shell = sub & (dist >= d_c) & (dist < d_c + 2 * step)
        zz, yy, xx = np.nonzero(shell)
        carina_idx = np.array([zz.mean(), yy.mean(), xx.mean()]) + [s.start for s in roi]
        # the two main subtrees; left = larger x (LPS: +x is the patient's left)
        (m1, _), (m2, _) = br[0], br[1]
        x1 = np.nonzero(m1)[2].mean()
        x2 = np.nonzero(m2)[2].mean()
        left, right = (m1, m2) if x1 > x2 else (m2, m1)
        for side, tree in (("left", left), ("right", right)):
            d1, br1 = _first_split(tree, dist, d_c + step, float(dist[tree].max()), sp, 0.05, 5.0, step)
            name = an.MAIN_BRONCHUS_LEFT if side == "left" else an.MAIN_BRONCHUS_RIGHT
            if d1 is None:
                w.notes.append(f"airway: the {side} main bronchus does not branch on this CT; kept whole")
                parts[name] = tree
                continue
            parts[name] = tree & (dist < d1)
            if side == "right":
                # bronchus intermedius: the branch that heads caudally (lowest mean z)
                bi = min(br1, key=lambda t: np.nonzero(t[0])[0].mean())[0]
                d2, _ = _first_split(bi, dist, d1 + step, float(dist[bi].max()), sp, 0.05, 5.0, step)
                if d2 is None:
                    w.notes.append("airway: no split below the bronchus intermedius; it is cut at 30 mm")
                    d2 = d1 + 30.0
                parts[an.BRONCHUS_INTERMEDIUS] = bi & (dist < d2)
        # trachea: at most TRACHEA_MAX_LENGTH_MM above the carina (not the larynx)
        z_c = carina_idx[0] - roi[0].start
        zmax = int(np.floor(z_c + TRACHEA_MAX_LENGTH_MM / sp[0]))
        trachea[zmax + 1 :] = False
    parts["trachea"] = trachea
    out = {}
    for k, m in parts.items():
        full = np.zeros(airway.shape, bool)
        full[roi] = m
        out[k] = full
    return out, carina_idx


def refine_lumen(w: Work, parts: dict[str, np.ndarray], air: np.ndarray) -> dict[str, np.ndarray]:
    """Grow each named airway by up to 2 voxels into air below -500 HU (the lumen's edge)."""
    taken = np.zeros(air.shape, bool)
    for m in parts.values():
        taken |= m
    lumen = (w.hu < -500) & air
    out = {}
    for name, m in parts.items():
        grown = m
        for _ in range(2):
            grown = grown | (ndi.binary_dilation(grown) & lumen & ~taken)
        out[name] = grown
    return out


AIRWAY_LUMEN_HU = -500.0
AIRWAY_NAMES = ("trachea", an.MAIN_BRONCHUS_LEFT, an.MAIN_BRONCHUS_RIGHT, an.BRONCHUS_INTERMEDIUS)


# ----------------------------------------------------------------------------- cricoid, larynx and pharynx
TRACHEA_CALIBRE_FROM_MM = (20.0, 60.0)  # above the carina: where the trachea's own calibre is measured
TRACHEA_MIN_LENGTH_MM = 60.0  # the trachea's top (the cricoid) lies at least this far above the carina
CALIBRE_NARROW = 0.7  # the lumen leaves the trachea: narrower than this share of the tracheal area (subglottis) ...
CALIBRE_WIDE = 1.5  # ... or wider than this share of its width (larynx, piriform sinuses, pharynx)
CALIBRE_RUN_MM = 6.0  # ... over at least this height
LUMEN_TRACK_MM = 15.0  # the lumen's centre moves at most this far from one slice to the next


def _lumen_profile(w: Work, lumen: np.ndarray, z0: int, cy: float, cx: float) -> dict[int, tuple[float, float]]:
    """Going up from slice z0, the airway lumen nearest to the previous centre: z -> (area mm2, width mm)."""
    px = w.sp[1] * w.sp[2]
    out: dict[int, tuple[float, float]] = {}
    for z in range(z0, lumen.shape[0]):
        lab, n = ndi.label(lumen[z])
        if n == 0:
            break
        idx = np.arange(1, n + 1)
        cents = np.array(ndi.center_of_mass(lumen[z], lab, idx)).reshape(-1, 2)
        d = np.hypot((cents[:, 0] - cy) * w.sp[1], (cents[:, 1] - cx) * w.sp[2])
        k = int(np.argmin(d))
        if d[k] > LUMEN_TRACK_MM:
            break
        xs = np.nonzero((lab == k + 1).any(axis=0))[0]
        out[z] = (float((lab == k + 1).sum() * px), float((xs[-1] - xs[0] + 1) * w.sp[2]))
        cy, cx = cents[k]
    return out


def find_cricoid(w: Work, trachea: np.ndarray, carina_idx) -> int | None:
    """Working-grid z of the trachea's top, the cricoid level; None when the scan starts below it.

    Going up from the carina the lumen keeps the trachea's calibre (its area and width
    20-60 mm above the carina). Where it leaves it for CALIBRE_RUN_MM or more, at least
    TRACHEA_MIN_LENGTH_MM above the carina, the airway is in the larynx: narrower in the
    subglottis inside the cricoid ring and at the glottis, wider in the vestibule, the
    piriform sinuses and the pharynx. The last slice of tracheal calibre is the cricoid's
    lower edge, the top of the trachea.
    """
    zc = int(round(carina_idx[0]))
    tz = np.nonzero(trachea.any(axis=(1, 2)))[0]
    z_start = zc + int(round(TRACHEA_CALIBRE_FROM_MM[0] / w.sp[0]))
    if tz.size == 0 or z_start >= w.hu.shape[0] or not trachea[z_start].any():
        return None
    cy, cx = (float(v) for v in np.argwhere(trachea[z_start]).mean(axis=0))
    prof = _lumen_profile(w, w.hu < AIRWAY_LUMEN_HU, z_start, cy, cx)
    z_ref_hi = zc + int(round(TRACHEA_CALIBRE_FROM_MM[1] / w.sp[0]))
    ref = [v for z, v in prof.items() if z <= z_ref_hi]
    if len(ref) < 3:
        return None
    area = float(np.median([a for a, _ in ref]))
    width = float(np.median([b for _, b in ref]))
    run = max(2, int(np.ceil(CALIBRE_RUN_MM / w.sp[0])))
    z_min = zc + int(round(TRACHEA_MIN_LENGTH_MM / w.sp[0]))
    zs = sorted(prof)
    off = [prof[z][0] < CALIBRE_NARROW * area or prof[z][1] > CALIBRE_WIDE * width for z in zs]
    for i, z in enumerate(zs):
        if z > z_min and all(off[i : i + run]) and len(off[i : i + run]) == run:
            return z - 1
    return None


def larynx_pharynx_air(air: np.ndarray, airway: np.ndarray, z_cricoid: int) -> np.ndarray:
    """The air above the cricoid that hangs together with the airway lumen there: larynx and pharynx."""
    above = air.copy()
    above[: z_cricoid + 1] = False
    lab, _ = ndi.label(above)
    ids = np.unique(lab[airway & above])
    return np.isin(lab, ids[ids > 0])
