"""The aorta: descending and ascending tracks, joined over the arch by a path through the vessel's core.

Steps (each a function below): find the descending aorta next to the spine and track
it slice by slice (`_descending_track`); find the ascending aorta in front of the
carina, the candidate whose track rises to the arch (`_ascending_track`); join the
two track tops through the vessel's core (`arch_path`). On contrast CT the lumen is
bright (CONTRAST_HU); on non-contrast CT it is soft tissue bounded by fat and lung
(PLAIN_HU), and both modes are tried.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from skimage.graph import MCP_Geometric

from pipeline.anatomy.classical.grid import Work, disk, edt_open

log = logging.getLogger(__name__)

Track = dict[int, tuple[float, float, float]]  # working-grid z -> (y, x, radius mm)

CONTRAST_HU = (120.0, 700.0)  # opacified lumen
PLAIN_HU = (-20.0, 110.0)  # blood without contrast
VEIN_HU = (-20.0, 4000.0)  # veins: plain blood, or dense contrast on the injected side
TRACK_R_MIN_MM, TRACK_R_MAX_MM = 7.0, 20.0  # radius bounds while tracking
VERTEBRA_AHEAD_OF_CANAL_MM = 25.0  # the vertebral body's centre lies this far in front of the canal
VERTEBRA_CLEARANCE_MM = 22.0  # a circle centre is not within this distance of the vertebral body's centre
# descending aorta: searched 0-60 mm below the carina, 40 mm in front of and 25 mm left of the canal
DESC_SEARCH_BELOW_CARINA_MM = 60.0
DESC_AHEAD_OF_CANAL_MM, DESC_LEFT_OF_CANAL_MM = 40.0, 25.0
DESC_SEARCH_MM, DESC_R_MM = 35.0, (9.0, 16.0)
DESC_MIN_LENGTH_MM = 60.0  # shorter tracks are not convincing: no aorta
# ascending aorta: a round object 40 mm in front of the carina, within 30 mm below it
ASC_AHEAD_OF_CARINA_MM, ASC_RIGHT_OF_CARINA_MM = 40.0, 3.0
ASC_SEARCH_BELOW_CARINA_MM = 30.0
ASC_SEARCH_MM, ASC_R_MM, ASC_R_TRACK_MAX_MM = 22.0, (11.0, 22.0), 24.0
ASC_ROOT_BELOW_CARINA_MM = 50.0  # the aortic root lies at most this far below the carina
ASC_WIDENING = 1.25  # wider than this times the radius above the start: the track has left the root for the heart
ASC_MIN_LENGTH_MM = 30.0
ASC_TOP_NEAR_ARCH_MM = 40.0  # the ascending track rises to within this of the descending track's top
ASC_MAX_TRIES = 4
ARCH_CORE_FRACTION = 0.45  # the arch's core: vessel voxels deeper than this share of the tracked radius
ARCH_MAX_PATH_MM = 220.0


@dataclass
class VesselTracker:
    """Finds round vessel cross-sections slice by slice (a circle: centre where the lumen is deepest)."""

    w: Work
    body: np.ndarray
    exclude: np.ndarray  # lungs and airways
    canal: np.ndarray  # (z, 2) spinal canal centre per slice
    mode: str = "contrast"  # "contrast", "plain" or "vein"
    r_min: float = TRACK_R_MIN_MM

    def vessel(self, z: int, win) -> np.ndarray:
        h = self.w.hu[z][win]
        lo, hi = {"contrast": CONTRAST_HU, "plain": PLAIN_HU, "vein": VEIN_HU}[self.mode]
        m = (h > lo) & (h < hi) & self.body[z][win] & ~self.exclude[z][win]
        return ndi.binary_opening(m, structure=disk(1)[0])

    def circle(self, z, cy, cx, search, rmin, rmax, weight=0.5, extra=None):
        """(y, x, radius) of the deepest lumen point within `search` mm of (cy, cx), or None."""
        w = self.w
        ny, nx = w.hu.shape[1:]
        ry = int((search + rmax) / w.sp[1]) + 3
        rx = int((search + rmax) / w.sp[2]) + 3
        y0, y1 = max(0, int(cy) - ry), min(ny, int(cy) + ry + 1)
        x0, x1 = max(0, int(cx) - rx), min(nx, int(cx) + rx + 1)
        win = (slice(y0, y1), slice(x0, x1))
        m = self.vessel(z, win)
        if extra is not None:
            m &= ~extra[win]
        if not m.any():
            return None
        dt = ndi.distance_transform_edt(m, sampling=w.sp[1:])
        yy, xx = np.mgrid[y0:y1, x0:x1]
        d = np.hypot((yy - cy) * w.sp[1], (xx - cx) * w.sp[2])
        vb_y = self.canal[z, 0] - VERTEBRA_AHEAD_OF_CANAL_MM / w.sp[1]
        vb = np.hypot((yy - vb_y) * w.sp[1], (xx - self.canal[z, 1]) * w.sp[2])
        ok = (d <= search) & (dt >= rmin) & (dt <= rmax) & (vb >= VERTEBRA_CLEARANCE_MM)
        if not ok.any():
            return None
        score = np.where(ok, dt - weight * d, -np.inf)
        k = np.unravel_index(int(np.argmax(score)), score.shape)
        return float(yy[k]), float(xx[k]), float(dt[k])

    def follow(self, z_s: int, c_s, r_hi: float) -> Track:
        """Track a circle up and down from (z_s, c_s); a track ends after two misses in a row."""
        w = self.w
        step_mm = max(5.0, 1.5 * w.sp[0])
        track = {z_s: c_s}
        for direction in (-1, 1):
            y, x, r = c_s
            z = z_s + direction
            misses = 0
            while 0 <= z < w.hu.shape[0] and misses <= 1:
                c = self.circle(z, y, x, step_mm, max(self.r_min, 0.7 * r), min(r_hi, 1.35 * r), weight=0.3)
                if c is None:
                    misses += 1
                else:
                    misses = 0
                    y, x, r = c
                    track[z] = c
                z += direction
        return track


def _length_mm(w: Work, track: Track) -> float:
    return (max(track) - min(track) + 1) * w.sp[0] if track else 0.0


def _descending_track(tr: VesselTracker, carina_idx) -> Track:
    """The roundest candidate 0-60 mm below the carina, left of and in front of the canal, tracked."""
    w = tr.w
    zc = int(round(carina_idx[0]))
    cands = []
    n_slices = int(DESC_SEARCH_BELOW_CARINA_MM / w.sp[0]) + 1
    for z in range(zc, max(-1, zc - n_slices), -1):
        cy = tr.canal[z, 0] - DESC_AHEAD_OF_CANAL_MM / w.sp[1]
        cx = tr.canal[z, 1] + DESC_LEFT_OF_CANAL_MM / w.sp[2]
        c = tr.circle(z, cy, cx, DESC_SEARCH_MM, *DESC_R_MM, weight=0.5)
        if c is not None:
            d = np.hypot((c[0] - cy) * w.sp[1], (c[1] - cx) * w.sp[2])
            cands.append((c[2] - 0.5 * d, z, c))
    if len(cands) < max(2, n_slices // 3):
        return {}
    _, z_s, c_s = max(cands)
    return tr.follow(z_s, c_s, TRACK_R_MAX_MM)


def _ascending_candidates(tr: VesselTracker, carina_idx, taken: np.ndarray) -> list[tuple[float, int, tuple]]:
    """Round objects (radius 11-22 mm) about 40 mm in front of the carina, within 30 mm below it, best first."""
    w = tr.w
    zc = int(round(carina_idx[0]))
    cy, cx = carina_idx[1] - ASC_AHEAD_OF_CARINA_MM / w.sp[1], carina_idx[2] - ASC_RIGHT_OF_CARINA_MM / w.sp[2]
    cands = []
    for z in range(zc, max(-1, zc - int(ASC_SEARCH_BELOW_CARINA_MM / w.sp[0]) - 1), -1):
        c = tr.circle(z, cy, cx, ASC_SEARCH_MM, *ASC_R_MM, weight=0.5, extra=taken[z])
        if c is not None:
            d = np.hypot((c[0] - cy) * w.sp[1], (c[1] - cx) * w.sp[2])
            cands.append((c[2] - 0.5 * d, z, c))
    return sorted(cands, key=lambda t: -t[0])


def _ascending_from(tr: VesselTracker, z_s: int, c_s, z_root: int, z_top: int) -> Track:
    """The track from one candidate, cut at the aortic root (or where it widens into the heart)."""
    t = tr.follow(z_s, c_s, ASC_R_TRACK_MAX_MM)
    t = {z: c for z, c in t.items() if z_root <= z <= z_top}
    r_up = float(np.median([c[2] for z, c in t.items() if z >= z_s] or [c_s[2]]))
    for z in sorted((z for z in t if z < z_s), reverse=True):
        if t[z][2] > ASC_WIDENING * r_up:
            return {k: c for k, c in t.items() if k > z}
    return t


def _rises_to_arch(w: Work, t: Track, z_top: int) -> bool:
    """The ascending aorta rises to the arch (the pulmonary trunk, also round in front of the carina, does not)."""
    return (bool(t) and _length_mm(w, t) >= ASC_MIN_LENGTH_MM
            and max(t) >= z_top - int(ASC_TOP_NEAR_ARCH_MM / w.sp[0]))


def _ascending_track(tr: VesselTracker, carina_idx, desc: Track, taken: np.ndarray) -> Track:
    """The first candidate (best first, at most ASC_MAX_TRIES distinct ones) whose track rises to the arch;
    else the best candidate's track (for the note)."""
    w = tr.w
    cands = _ascending_candidates(tr, carina_idx, taken)
    if len(cands) < 2:
        return {}
    z_top = max(desc)
    z_root = int(round(carina_idx[0])) - int(ASC_ROOT_BELOW_CARINA_MM / w.sp[0])
    first: Track = {}
    tried: list[tuple[int, float, float]] = []
    for _, z_s, c_s in cands:
        if any(abs(z_s - z) <= 2 and np.hypot((c_s[0] - y) * w.sp[1], (c_s[1] - x) * w.sp[2]) < 10.0
               for z, y, x in tried):
            continue
        tried.append((z_s, c_s[0], c_s[1]))
        t = _ascending_from(tr, z_s, c_s, z_root, z_top)
        if _rises_to_arch(w, t, z_top):
            return t
        first = first or t
        if len(tried) >= ASC_MAX_TRIES:
            break
    return first


def find_aorta(w: Work, body, lungs, airway, canal, carina_idx) -> np.ndarray | None:
    """Descending aorta, and where found the ascending aorta and the arch; None when not convincing."""
    if canal is None or carina_idx is None:
        w.notes.append("aorta: not searched (needs the spinal canal and the carina)")
        return None
    exclude = lungs | airway
    best: tuple[float, Track, str] = (0.0, {}, "plain")
    for mode in ("contrast", "plain"):
        tr = VesselTracker(w, body, exclude, canal, mode)
        t = _descending_track(tr, carina_idx)
        log.debug("aorta %s track: %s", mode, {z: tuple(round(v, 1) for v in c) for z, c in sorted(t.items())})
        if _length_mm(w, t) > best[0]:
            best = (_length_mm(w, t), t, mode)
    length, desc, mode = best
    if length < DESC_MIN_LENGTH_MM:
        w.notes.append(f"aorta: no descending aorta found next to the spine (best track {length:.0f} mm); left out")
        return None
    tr = VesselTracker(w, body, exclude, canal, mode)
    kind = "contrast" if mode == "contrast" else "non-contrast"
    out = np.zeros(w.hu.shape, bool)
    paint_discs(w, out, desc, exclude)
    asc = _ascending_track(tr, carina_idx, desc, out)
    log.debug("aorta ascending track: %s", {z: tuple(round(v, 1) for v in c) for z, c in sorted(asc.items())})
    if not _rises_to_arch(w, asc, max(desc)):
        w.notes.append(f"aorta: descending aorta tracked over {length:.0f} mm ({kind} CT); its top is the back "
                       "of the arch; the ascending aorta was not found")
        return out
    paint_discs(w, out, asc, exclude)
    arch = arch_path(w, exclude, asc, desc, tr)
    if arch is not None:
        out |= arch[0]
        arch_how = f"arch followed as a vessel path over {arch[1]:.0f} mm"
    else:
        arch_how = "arch not joined"
    w.notes.append(f"aorta: descending aorta tracked over {length:.0f} mm and ascending aorta over "
                   f"{_length_mm(w, asc):.0f} mm ({kind} CT); {arch_how}")
    return out


def _arch_box(w: Work, asc: Track, desc: Track) -> tuple[slice, slice, slice]:
    """From 10 mm below the lower track top to 60 mm above the higher one, 60 mm around both in-plane."""
    nz, ny, nx = w.hu.shape
    za, zd = max(asc), max(desc)
    (ya, xa, _), (yd, xd, _) = asc[za], desc[zd]
    z0 = max(0, min(za, zd) - int(round(10.0 / w.sp[0])))
    z1 = min(nz, max(za, zd) + int(round(60.0 / w.sp[0])) + 1)
    pad_y, pad_x = int(60.0 / w.sp[1]), int(60.0 / w.sp[2])
    y0, y1 = max(0, int(min(ya, yd)) - pad_y), min(ny, int(max(ya, yd)) + pad_y + 1)
    x0, x1 = max(0, int(min(xa, xd)) - pad_x), min(nx, int(max(xa, xd)) + pad_x + 1)
    return slice(z0, z1), slice(y0, y1), slice(x0, x1)


def _snap_to_core(w: Work, core: np.ndarray, z: int, y: float, x: float):
    """The core voxel (box coordinates) nearest to a track centre, within its slice +-1 and 10 mm."""
    lo = max(0, z - 1)
    zz, yy, xx = np.nonzero(core[lo : z + 2])
    if zz.size == 0:
        return None
    zz = zz + lo
    d = np.sqrt(((zz - z) * w.sp[0]) ** 2 + ((yy - y) * w.sp[1]) ** 2 + ((xx - x) * w.sp[2]) ** 2)
    k = int(np.argmin(d))
    return (int(zz[k]), int(yy[k]), int(xx[k])) if d[k] <= 10.0 else None


def arch_path(w: Work, exclude, asc: Track, desc: Track, tr: VesselTracker) -> tuple[np.ndarray, float] | None:
    """The aortic arch as the centre path between the tops of the ascending and descending tracks.

    In a box around the track tops (`_arch_box`), the vessel-like voxels (as for the
    tracks) are reduced to their core (3-D depth >= ARCH_CORE_FRACTION of the smaller
    tracked radius, so side branches, touching nodes and thin bridges drop out); the
    cheapest path through the core (cost rising towards its edge, skimage's
    MCP_Geometric) joins the two track tops. The arch is then the vessel voxels within
    the local depth (+1.5 mm) of that path, opened by a ball of the core radius (so a
    node that touches the arch drops out), that hang together with the path. None when
    no such path exists or it is implausibly long.
    """
    box = _arch_box(w, asc, desc)
    z0, y0, x0 = (s.start for s in box)
    ves = np.zeros(tuple(s.stop - s.start for s in box), bool)
    for z in range(box[0].start, box[0].stop):
        ves[z - z0] = tr.vessel(z, box[1:])
    if not ves.any():
        return None
    dt = ndi.distance_transform_edt(ves, sampling=w.sp)
    (ya, xa, ra), (yd, xd, rd) = asc[max(asc)], desc[max(desc)]
    r_core = max(5.0, ARCH_CORE_FRACTION * min(ra, rd))
    core = dt >= r_core
    a = _snap_to_core(w, core, max(asc) - z0, ya - y0, xa - x0)
    d = _snap_to_core(w, core, max(desc) - z0, yd - y0, xd - x0)
    if a is None or d is None:
        return None
    lab, _ = ndi.label(core, structure=np.ones((3, 3, 3), bool))
    if lab[a] == 0 or lab[a] != lab[d]:
        return None
    r_ref = max(ra, rd)
    costs = np.where(lab == lab[a], (r_ref / np.maximum(dt, 1e-3)) ** 2, np.inf)
    mcp = MCP_Geometric(costs, fully_connected=True, sampling=tuple(float(s) for s in w.sp))
    mcp.find_costs([d], [a])
    pts = np.array(mcp.traceback(a))
    length = float(np.sqrt(((np.diff(pts, axis=0) * w.sp) ** 2).sum(axis=1)).sum())
    if length > ARCH_MAX_PATH_MM:
        w.notes.append(f"aorta: the path between the track tops runs {length:.0f} mm; arch not joined")
        return None
    on_path = np.zeros(ves.shape, bool)
    on_path[tuple(pts.T)] = True
    dist, near = ndi.distance_transform_edt(~on_path, sampling=w.sp, return_indices=True)
    radius = np.minimum(dt[tuple(near)], 1.2 * r_ref) + 1.5
    # opened by the core radius: a node touching the arch (or joined to it by partial volume
    # across a thin fat plane) is narrower than that and drops out; then only what hangs
    # together with the path
    arch = edt_open(ves & (dist <= radius), w.sp, r_core) | on_path
    lab, _ = ndi.label(arch)
    ids = np.unique(lab[on_path])
    out = np.zeros(w.hu.shape, bool)
    out[box] = np.isin(lab, ids[ids > 0])
    return out & ~exclude, length


def paint_discs(w: Work, out: np.ndarray, track: Track, exclude: np.ndarray, within: np.ndarray | None = None):
    """Paint each tracked circle (radius + 1.5 mm) into `out`, outside `exclude` (and inside `within`)."""
    ny, nx = out.shape[1:]
    for z, (y, x, r) in track.items():
        ry, rx = int((r + 3) / w.sp[1]) + 1, int((r + 3) / w.sp[2]) + 1
        y0, y1 = max(0, int(y) - ry), min(ny, int(y) + ry + 1)
        x0, x1 = max(0, int(x) - rx), min(nx, int(x) + rx + 1)
        yy, xx = np.mgrid[y0:y1, x0:x1]
        disc = np.hypot((yy - y) * w.sp[1], (xx - x) * w.sp[2]) <= r + 1.5
        disc &= ~exclude[z, y0:y1, x0:x1]
        if within is not None:
            disc &= within[y0:y1, x0:x1]
        out[z, y0:y1, x0:x1] |= disc
