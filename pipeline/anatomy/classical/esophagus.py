"""The esophagus, tracked slice by slice from the thoracic inlet to the gastro-esophageal junction.

Start (`_start`): 10-30 mm above the carina, the soft tissue and gas between the
posterior tracheal wall and the vertebral body, within 25 mm of the trachea's axis.
From there the centre is tracked slice by slice (`_track`), down and up: a mean shift
(radius ESO_WINDOW_MM) over soft tissue or gas that is not lung, airway, aorta,
heart, liver or bone moves it, at most ESO_STEP_MM per slice; a slice with too
little tissue keeps the centre (at most ESO_MAX_MISSES in a row).

- Down: through the thorax while lung lies within ESO_LUNG_REACH_MM on both sides;
  then through the hiatus, with the centre kept in front of the spine, for
  ESO_BELOW_HIATUS_MM more: the abdominal segment to the gastro-esophageal junction.
- Up: behind the trachea (the centre stays behind its posterior wall and in front of
  the spine) to the cricoid, or to the top of the scan.

The label is the tissue within ESO_LABEL_MM of each centre: a proxy of the wall's
shape, so a node pressed against the esophagus keeps its centre.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from pipeline.anatomy.classical.grid import Work

log = logging.getLogger(__name__)

ESO_SOFT_HU = (-30.0, 150.0)  # the wall (smoothed CT); gas in the lumen is < ESO_AIR_HU
ESO_AIR_HU = -400.0
ESO_WINDOW_MM = 10.0  # mean-shift radius
ESO_LABEL_MM = 8.0  # the label: tissue within this distance of the track (a typical esophageal radius)
ESO_STEP_MM = 4.0  # the centre moves at most this far per slice (in-plane, after the mean shift)
ESO_MIN_AREA_MM2 = 50.0
ESO_MAX_MISSES = 2
ESO_LUNG_REACH_MM = 80.0  # in the thorax, lung lies within this distance on either side of the esophagus
ESO_BELOW_HIATUS_MM = 25.0  # the abdominal esophagus: from the hiatus to the gastro-esophageal junction
ESO_START_ABOVE_CARINA_MM = (10.0, 30.0)
ESO_START_HALF_WIDTH_MM = 25.0
ESO_MIN_GAP_MM = 8.0  # between the trachea's back wall and the vertebral body, at the start
ESO_MIN_LENGTH_MM = 40.0


@dataclass
class _Field:
    """Where the esophagus may lie, slice by slice, and the grid's coordinates."""

    w: Work
    tissue: np.ndarray  # soft tissue or gas, not taken by other organs (full z range)
    yy: np.ndarray
    xx: np.ndarray

    def mean_shift(self, z: int, cy: float, cx: float, allowed: np.ndarray | None = None):
        """(y, x, area) after up to 4 mean-shift steps over the tissue of slice z; area 0 if too little."""
        w = self.w
        rw_y, rw_x = ESO_WINDOW_MM / w.sp[1], ESO_WINDOW_MM / w.sp[2]
        t = self.tissue[z] if allowed is None else self.tissue[z] & allowed
        for _ in range(4):
            win = (((self.yy - cy) / rw_y) ** 2 + ((self.xx - cx) / rw_x) ** 2 <= 1.0) & t
            area = win.sum() * w.sp[1] * w.sp[2]
            if area < ESO_MIN_AREA_MM2:
                return cy, cx, 0.0
            ny_, nx_ = float(self.yy[win].mean()), float(self.xx[win].mean())
            done = abs(ny_ - cy) < 0.2 and abs(nx_ - cx) < 0.2
            cy, cx = ny_, nx_
            if done:
                break
        return cy, cx, area


def _between_lungs(w: Work, lungs: np.ndarray, z: int, cy: float, cx: float) -> bool:
    iy, ix = int(round(cy)), int(round(cx))
    row = lungs[z, max(0, iy - 2) : iy + 3].any(axis=0)
    reach = int(ESO_LUNG_REACH_MM / w.sp[2])
    return bool(row[max(0, ix - reach) : ix].any() and row[ix + 1 : ix + reach + 1].any())


def _start(w: Work, fld: _Field, trachea, spine, zc: int) -> tuple[int, float, float] | None:
    """The lowest level 10-30 mm above the carina with tissue between the trachea and the spine."""
    lo, hi = (zc + int(round(v / w.sp[0])) for v in ESO_START_ABOVE_CARINA_MM)
    for z in range(lo, min(w.hu.shape[0], hi + 1)):
        if not trachea[z].any() or not spine[z].any():
            continue
        tj, ti = np.nonzero(trachea[z])
        sj, _ = np.nonzero(spine[z])
        y_back, y_front = tj.max(), sj.min()
        if (y_front - y_back) * w.sp[1] < ESO_MIN_GAP_MM:
            continue
        box = ((fld.yy > y_back) & (fld.yy < y_front)
               & (np.abs(fld.xx - ti.mean()) * w.sp[2] <= ESO_START_HALF_WIDTH_MM) & fld.tissue[z])
        if box.sum() * w.sp[1] * w.sp[2] >= ESO_MIN_AREA_MM2:
            return z, float(fld.yy[box].mean()), float(fld.xx[box].mean())
    return None


def _track(w: Work, fld: _Field, z0: int, cy: float, cx: float, step: int, keep_going) -> dict[int, tuple]:
    """Centres from slice z0 (excluded) in direction `step` while `keep_going(z, y, x)` holds.

    keep_going returns False to stop, or a 2-D mask where the centre may lie (True: anywhere).
    """
    track: dict[int, tuple[float, float]] = {}
    misses = 0
    z = z0 + step
    while 0 <= z < w.hu.shape[0]:
        allowed = keep_going(z, cy, cx)
        if allowed is False:
            break
        py, px = cy, cx
        cy, cx, area = fld.mean_shift(z, cy, cx, None if allowed is True else allowed)
        if area == 0.0:
            misses += 1
            cy, cx = py, px
            if misses > ESO_MAX_MISSES:
                break
            track[z] = (cy, cx)  # keep the centre through a slice with too little tissue
            z += step
            continue
        misses = 0
        d = np.hypot((cy - py) * w.sp[1], (cx - px) * w.sp[2])
        if d > ESO_STEP_MM:
            f = ESO_STEP_MM / d
            cy, cx = py + f * (cy - py), px + f * (cx - px)
        track[z] = (cy, cx)
        z += step
    # trailing misses are not esophagus
    while track and misses and (z - step) in track:
        track.pop(z - step)
        z -= step
        misses -= 1
    return track


def find_esophagus(w: Work, lungs, airway_parts: dict, taken, carina_idx, z_top: int | None = None,
                   canal: np.ndarray | None = None) -> np.ndarray | None:
    """The esophagus from the thoracic inlet (the cricoid, `z_top`, else the scan's top) to the
    gastro-esophageal junction. See the module docstring."""
    trachea = airway_parts.get("trachea")
    spine_m = taken["spine"]
    if carina_idx is None or trachea is None or spine_m is None:
        w.notes.append("esophagus: not searched (needs the trachea, carina and spine)")
        return None
    nz, ny, nx = w.hu.shape
    sigma = (0.0,) + tuple(max(0.5, 1.0 / s) for s in w.sp[1:])
    hu = ndi.gaussian_filter(w.hu, sigma=sigma)
    tissue = (((hu > ESO_SOFT_HU[0]) & (hu < ESO_SOFT_HU[1])) | (w.hu < ESO_AIR_HU)) & ~taken["all"]
    yy, xx = np.mgrid[0:ny, 0:nx]
    fld = _Field(w, tissue, yy, xx)
    start = _start(w, fld, trachea, spine_m, int(round(carina_idx[0])))
    if start is None:
        w.notes.append("esophagus: nothing between the trachea and the spine above the carina; not found")
        return None
    z0, cy, cx = start
    lz = np.nonzero(lungs.any(axis=(1, 2)))[0]
    hiatus: list[int] = []
    n_below = int(round(ESO_BELOW_HIATUS_MM / w.sp[0]))

    def down(z, y, x):
        if z < lz[0] and not hiatus:
            hiatus.append(z + 1)
        if not hiatus and not _between_lungs(w, lungs, z, y, x):
            hiatus.append(z + 1)
        if hiatus and z < hiatus[0] - n_below:
            return False
        if hiatus and canal is not None:  # below the hiatus: in front of the spine, not beside it
            return yy < canal[z, 0] - 20.0 / w.sp[1]
        return True

    z_stop = nz - 1 if z_top is None else min(nz - 1, z_top)

    def up(z, y, x):
        if z > z_stop:
            return False
        if trachea[z].any():  # behind the trachea's back wall
            return yy > np.nonzero(trachea[z])[0].max()
        return True

    track = {z0: (cy, cx), **_track(w, fld, z0, cy, cx, -1, down), **_track(w, fld, z0, cy, cx, +1, up)}
    length = len(track) * w.sp[0]
    if length < ESO_MIN_LENGTH_MM:
        w.notes.append(f"esophagus: tracked over {length:.0f} mm only; left out")
        return None
    rl_y, rl_x = ESO_LABEL_MM / w.sp[1], ESO_LABEL_MM / w.sp[2]
    out = np.zeros(w.hu.shape, bool)
    for z, (cy, cx) in track.items():
        out[z] = (((yy - cy) / rl_y) ** 2 + ((xx - cx) / rl_x) ** 2 <= 1.0) & tissue[z]
    zs = sorted(track)
    above = (zs[-1] - carina_idx[0]) * w.sp[0]
    below = (carina_idx[0] - zs[0]) * w.sp[0]
    w.notes.append(f"esophagus: tracked over {length:.0f} mm, from {above:.0f} mm above to {below:.0f} mm below "
                   f"the carina (proxy shape: the tissue within {ESO_LABEL_MM:g} mm of the track)")
    log.debug("esophagus track: %s", {z: (round(a, 1), round(b, 1)) for z, (a, b) in sorted(track.items())})
    return out
