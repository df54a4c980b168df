"""Working spaces the station rules carve up: mediastinal space, the great vessels' front, the
spine's front, the space below the diaphragm, and a stand-in esophagus."""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage as ndi

from pipeline.stations.constants import (
    ABDOMINAL_ORGANS, DESCENDING_AORTA_SEARCH_MM, DIAPHRAGM, DIAPHRAGM_BELOW_HEART_MM, DIAPHRAGM_INPLANE_MM,
    DIAPHRAGM_THICKNESS_MM, ESOPHAGUS_PROXY_ANTERIOR_MM, ESOPHAGUS_PROXY_RADIUS_MM, GREAT_VESSELS, HEART_AND_PA,
    MIN_COMPONENT_MM2, PREVASCULAR_PROXY_MM, SPINE_FRONT_WINDOW_MM, VERTEBRAL_BODY_DEPTH_MM,
)
from pipeline.stations.grid import Work, components, hull_fill
from pipeline.stations.landmarks import Airway


def spine_mask(w: Work) -> np.ndarray:
    """Vertebrae (any source's names) and the spinal cord."""
    return w.mask(*[n for n in w.values if n.startswith("vertebrae_")], "spine", "spinal_cord")


def spine_front_columns(w: Work, spine_slice: np.ndarray) -> np.ndarray:
    """Per column of one axial slice: y (mm) of the spine's anterior surface (constant beyond the spine)."""
    nx = spine_slice.shape[1]
    jj, si = np.nonzero(spine_slice)
    front = np.full(nx, np.inf)
    np.minimum.at(front, si, w.y[jj])
    cols = np.nonzero(np.isfinite(front))[0]
    return np.interp(np.arange(nx), cols, front[cols])


def spine_front_rows(w: Work) -> np.ndarray:
    """[slice, column] y (mm) of the spine's anterior surface, the most anterior within
    SPINE_FRONT_WINDOW_MM above or below (so disc spaces and endplate slopes do not open a gap
    behind it); inf where no vertebra lies near."""
    spine = spine_mask(w)
    nz, _, nx = spine.shape
    front = np.full((nz, nx), np.inf)
    for k in np.nonzero(spine.any(axis=(1, 2)))[0]:
        front[k] = spine_front_columns(w, spine[k])
    size = 2 * int(round(SPINE_FRONT_WINDOW_MM / w.sp)) + 1
    return ndi.minimum_filter1d(front, size=size, axis=0, mode="nearest")


def below_diaphragm(w: Work) -> np.ndarray | None:
    """Voxels at or below the diaphragm: per (y, x) column, below the top of the abdominal organs
    (liver, stomach, spleen ...) plus the diaphragm's thickness; each column's top is carried
    DIAPHRAGM_INPLANE_MM sideways so the fat beside the dome and the crura is cut too.
    None when no abdominal organ (or diaphragm) is labelled."""
    organs = w.mask(*ABDOMINAL_ORGANS, DIAPHRAGM)
    if not organs.any():
        return None
    nz = organs.shape[0]
    top = np.where(organs.any(axis=0), nz - 1 - np.argmax(organs[::-1], axis=0), -1)
    r = int(round(DIAPHRAGM_INPLANE_MM / w.sp))
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    top = ndi.maximum_filter(top, footprint=(yy**2 + xx**2) <= r * r, mode="constant", cval=-1)
    k_top = np.where(top >= 0, top + int(math.ceil(DIAPHRAGM_THICKNESS_MM / w.sp)), -1)
    return np.arange(nz)[:, None, None] <= k_top[None, :, :]


def below_heart_floor(w: Work) -> np.ndarray | None:
    """Slices more than DIAPHRAGM_BELOW_HEART_MM below the heart label's lowest voxel (the heart rests on
    the diaphragm's central tendon; this bounds the left side, where the stomach and spleen often have no
    label). None without a heart label, or when the heart ends above the liver dome (a truncated label)."""
    heart = w.mask("heart")
    if not heart.any():
        return None
    k_low = int(np.nonzero(heart.any(axis=(1, 2)))[0].min())
    liver = w.mask("liver")
    if liver.any() and k_low > int(np.nonzero(liver.any(axis=(1, 2)))[0].max()):
        return None
    return (w.z < w.z[k_low] - DIAPHRAGM_BELOW_HEART_MM)[:, None, None]


def vessel_front(w: Work, aw: Airway, k0: int, k1: int) -> np.ndarray:
    """Per slice and column: y (mm) of the front of the great vessels lying in front of the trachea.

    The systemic vessels count in front of the trachea's centre; the heart and pulmonary
    arteries only in front of its anterior wall, so that the left PA rising behind the
    aortopulmonary window (labelled "heart" in some maps) does not put the window (5) in front
    of the vessels (3a).
    """
    nz, ny, nx = w.arr.shape
    front = np.full((nz, nx), np.nan)
    systemic = w.mask(*[n for n in GREAT_VESSELS if n not in HEART_AND_PA])
    heart_pa = w.mask(*HEART_AND_PA)
    for k in range(k0, k1):
        ant = (systemic[k] & (w.y[:, None] < aw.cy[k])) | (heart_pa[k] & (w.y[:, None] < aw.ya[k]))
        cols = ant.any(axis=0)
        if cols.sum() == 0:
            front[k] = aw.ya[k] - PREVASCULAR_PROXY_MM
            continue
        first = np.argmax(ant, axis=0)
        yy = w.y[first]
        xs = np.nonzero(cols)[0]
        front[k] = np.interp(np.arange(nx), xs, yy[xs])
    return front


def mediastinal_space(w: Work, lung_r: np.ndarray, lung_l: np.ndarray, free: np.ndarray) -> np.ndarray:
    """Free space between the lungs, behind the sternum, in front of the spine (see module docstring)."""
    nz, ny, nx = w.arr.shape
    lung = lung_r | lung_l
    ii = np.arange(nx)[None, None, :]
    has_r, has_l = lung_r.any(axis=2), lung_l.any(axis=2)
    r_med = nx - 1 - np.argmax(lung_r[:, :, ::-1], axis=2)   # medial (left-most) right-lung voxel per row
    l_med = np.argmax(lung_l, axis=2)                        # medial (right-most) left-lung voxel per row
    between = (has_r & has_l)[:, :, None] & (ii > r_med[:, :, None]) & (ii < l_med[:, :, None])
    sternum = w.mask("sternum")
    spine_front = spine_front_rows(w)
    space = np.zeros_like(lung)
    for k in range(nz):
        if not (lung_r[k].any() and lung_l[k].any()):
            continue
        region = between[k].copy()
        if sternum[k].any():
            jj, si = np.nonzero(sternum[k])
            back = np.full(nx, -np.inf)
            np.maximum.at(back, si, w.y[jj])
            cols = np.nonzero(np.isfinite(back))[0]
            back_all = np.interp(np.arange(nx), cols, back[cols])  # constant beyond the sternum
            behind = w.y[:, None] > back_all[None, :]
            lo, hi = cols.min(), cols.max()
            box = np.zeros((ny, nx), dtype=bool)
            box[:, lo:hi + 1] = True
            region = (region | (box & hull_fill(lung[k] | sternum[k]))) & behind
        region &= w.y[:, None] < spine_front[k][None, :]
        space[k] = region
    return space & free


def esophagus_proxy(w: Work, k_end: int) -> np.ndarray | None:
    """A stand-in esophagus below the carina (slices 0..k_end-1) when no esophagus is labelled.

    Below the carina the esophagus runs in the posterior mediastinum in front of the
    vertebral bodies, immediately in front of and to the right of the descending aorta.
    Per slice, the proxy is a disc of ESOPHAGUS_PROXY_RADIUS_MM centred midway in x
    between the vertebral body's centre and the descending aorta's centre, and
    ESOPHAGUS_PROXY_ANTERIOR_MM in front of the aorta's centre (the descending aorta: the
    aorta component nearest the vertebral body, within DESCENDING_AORTA_SEARCH_MM in front
    of it). Slices without an aorta take the median offsets from the vertebral body of the
    others (none at all: the vertebral body's centre, ESOPHAGUS_PROXY_ANTERIOR_MM in front
    of it). Centres are smoothed along z. None without a spine label below the carina.
    """
    spine = w.mask(*[n for n in w.values if n.startswith("vertebrae_")], "spine")
    aorta = w.mask("aorta")
    nz = len(w.z)
    k_end = min(k_end, nz)
    xs, yf = np.full(nz, np.nan), np.full(nz, np.nan)  # vertebral body centre x, anterior surface y
    dx, dy = np.full(nz, np.nan), np.full(nz, np.nan)  # proxy centre relative to (xs, yf), where an aorta is seen
    for k in range(k_end):
        if not spine[k].any():
            continue
        jj, ii = np.nonzero(spine[k])
        y_front = float(w.y[jj].min())
        x_sp = float(w.x[ii[w.y[jj] <= y_front + VERTEBRAL_BODY_DEPTH_MM]].mean())
        xs[k], yf[k] = x_sp, y_front
        ao = aorta[k] & (w.y[:, None] >= y_front - DESCENDING_AORTA_SEARCH_MM)
        best = None
        for comp in components(ao, max(1, int(MIN_COMPONENT_MM2 / w.sp**2))):
            aj, ai = np.nonzero(comp)
            xa, ya = float(w.x[ai].mean()), float(w.y[aj].mean())
            d = math.hypot(xa - x_sp, ya - y_front)
            if best is None or d < best[0]:
                best = (d, xa, ya)
        if best is not None:
            dx[k] = 0.5 * (best[1] - x_sp)
            dy[k] = best[2] - ESOPHAGUS_PROXY_ANTERIOR_MM - y_front
    ks = np.nonzero(np.isfinite(xs))[0]
    if ks.size == 0:
        return None
    if np.isfinite(dx).any():
        dx = np.where(np.isfinite(dx), dx, np.nanmedian(dx))
        dy = np.where(np.isfinite(dy), dy, np.nanmedian(dy))
    else:
        dx = np.zeros(nz)
        dy = np.full(nz, -ESOPHAGUS_PROXY_ANTERIOR_MM)
    size = max(1, int(round(20.0 / w.sp)) | 1)
    cx = ndi.median_filter(xs[ks] + dx[ks], size=size, mode="nearest")
    cy = ndi.median_filter(yf[ks] + dy[ks], size=size, mode="nearest")
    out = np.zeros(w.arr.shape, dtype=bool)
    r2 = ESOPHAGUS_PROXY_RADIUS_MM ** 2
    for k, x0, y0 in zip(ks, cx, cy):
        out[k] = ((w.x[None, :] - x0) ** 2 + (w.y[:, None] - y0) ** 2) <= r2
    return out
