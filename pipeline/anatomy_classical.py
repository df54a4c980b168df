"""The classical anatomy backend: chest structures from CT Hounsfield units alone.

It needs no weights, no GPU and no network, and runs in seconds on a CPU (about
5-10 s for 512 x 512 x 130-300 slices on 2 cores). It is the default backend, and
the one to configure where TotalSegmentator's weights are not installed.

What it finds (canonical names; label values as in `pipeline.anatomy`):

- ``body``: tissue above -500 HU, the largest object after a small in-plane
  opening (which detaches the table and thin blankets), holes filled slice by
  slice. Arms that touch the trunk are included; separate arms are not.
- ``lung_left``, ``lung_right``: the large air-filled (< -400 HU) component(s)
  inside the body (slice by slice, inside the body's convex hull, so a chest wall
  thinner than a voxel does not matter), plus lung-like parts cut off by a thin
  septum; without the named airways; split into left and right where they touch
  (erosion, then nearest seed); vessels inside the lung filled in slice by slice.
- ``trachea``, ``main_bronchus_left``, ``main_bronchus_right``,
  ``bronchus_intermedius`` (the lumen): region growing from an air-filled tube
  near the midline around the lung apices, with a threshold raised step by step
  (-950 ... -780 HU) until the grown volume jumps (a leak into the lung). The tree
  is then split by geodesic distance from its top: the trachea ends where the
  tree first splits into two large branches (the carina); each main bronchus
  ends at its own first large split (right: the upper-lobe take-off; left: the
  upper/lower division); the bronchus intermedius is the right branch that heads
  caudally from the upper-lobe take-off to the next split. The trachea is cut
  130 mm above the carina, so larynx and pharynx stay out. The lumen edges are
  re-decided at full resolution (-500 HU).
- landmark ``carina``: the centre of the airway where the trachea splits (LPS mm).
- ``spine`` (our own name: all vertebrae as one object, without levels): bone
  above 200 HU around the spinal canal (found as the most posterior hole in the
  bone near the midline, slice by slice), marrow filled, the canal left out.
  Where no canal shows (a solid phantom spine), it is put 25 mm behind the
  centre of the vertebral bodies.
- ``aorta``: the descending aorta, found 0-60 mm below the carina as a round
  object (radius 9-16 mm) left of and in front of the spinal canal, then tracked
  slice by slice up over the back of the arch and down through the hiatus; the
  ascending aorta, the first of the round objects (radius 11-22 mm) about 40 mm
  in front of the carina, best first, whose track rises to within 40 mm of the
  top of the descending track (the pulmonary trunk, also round there, does not),
  tracked up to the arch and down to at most 50 mm below the carina, and cut
  where it widens by a quarter over its radius higher up (it has left the aortic
  root for the heart); and the arch, followed as the cheapest path through the
  vessel's core (3-D depth >= 45% of the smaller tracked radius, so side
  branches and touching nodes drop out) from the top of one track to the other
  (it bulges to the left of the straight line between them), with the vessel
  voxels within the local depth of that path, opened by a ball of the core
  radius. Contrast and non-contrast CT are both tried (lumen 120-700 HU, or
  -20-110 HU bounded by fat and lung). On contrast CT this works well (Dice 0.87
  against TotalSegmentator on LIDC-IDRI-0001, arch top within 3 mm). On
  non-contrast CT the great vessels touch each other without a fat plane, so the
  ascending aorta and the arch are found less reliably (they are on
  ACRIN-NSCLC-FDG-PET-042); without them the descending aorta's top still marks
  the top of the arch. When the descending aorta is not convincing (< 60 mm
  tracked), ``aorta`` is left out rather than guessed; the notes say which.
- ``heart``: the large soft-tissue mass between the lungs, below the carina and
  above the diaphragm. Candidates are soft tissue or contrast blood (-10 to 1000
  HU on the CT smoothed by ~1.5 mm, and not fat before smoothing) inside the
  convex hull of the lungs and sternum, slice by slice, that is not lung, airway,
  aorta or bone. The liver touches the heart through the diaphragm, so only
  candidates above the diaphragm count; its height per column is the lowest lung
  voxel (lower half of the chest), leaving out the columns under the upper heart
  (where the lung lies on the heart), interpolated across. The heart is the
  largest mass that survives an opening with an 8 mm ball (which detaches
  vessels, the esophagus, nodes and thin bridges), holes filled. Dice 0.82
  against TotalSegmentator on LIDC-IDRI-0001. It stops at the carina, so unlike
  TotalSegmentator's it holds no pulmonary trunk above that level.
- ``esophagus`` (from just above the carina down): tracked from the soft tissue
  and gas between the posterior tracheal wall and the vertebral body, 10-30 mm
  above the carina, down slice by slice by a mean shift (10 mm radius) over soft
  tissue or gas that is not lung, airway, aorta, heart or bone, moving at most 4
  mm per slice, until lung no longer lies within 80 mm on both sides (the
  hiatus). The label is the tissue within 8 mm of the track, a proxy of the
  wall's shape (a node pressed against the esophagus keeps its centre); its centre lies
  within 2 mm (median; 4 mm at most) of TotalSegmentator's on LIDC-IDRI-0001.
  Left out when tracked over less than 40 mm.
- ``clavicula_left``, ``clavicula_right``: per side, the most anterior elongated
  bone above 250 HU near the top of the lungs that starts within 40 mm of the
  midline and runs >= 40 mm laterally (dense venous contrast excluded).
- ``sternum``: the first bone (> 100 HU) met going back from the skin in a
  +-25 mm midline corridor, at a steady depth, from the clavicles' medial ends
  down; parts >= 30 mm long.

Where it is weaker than TotalSegmentator:

- no lung lobes, pulmonary veins or artery, superior vena cava, brachiocephalic
  veins or arteries, or thyroid: stations that need them must use proxies; no
  vertebral levels;
- the heart ends 25 mm below the carina (so a hilar mass is not taken for heart) and at a diaphragm interpolated from the lung
  bases: where the lungs do not reach down beside the heart, its lowest part is
  missed; a node that touches the heart with no fat between may be taken into it;
- the esophagus is a track with a fixed-radius shape, not above the carina; a
  mass or node pressed against it can pull the track aside;
- the aorta is partial on non-contrast CT (above), and may be absent;
- sternum and clavicles rely on bone thresholds and simple geometry; osteopenia,
  fractures, wires or unusual positions can defeat them;
- the airway split relies on the tree's shape: a tumour that obstructs or
  compresses a bronchus, a tracheal bronchus, or a leak at a thin wall change
  where bronchi are cut ("kept whole" notes); the split runs on a ~1.5-2 mm grid;
- consolidation, effusion, atelectasis and tumour are not air, so they are not
  lung here, whereas TotalSegmentator's lobes usually include them;
- TotalSegmentator's ``trachea`` runs ~2 cm into the main bronchi; ours stops at
  the carina (and the main bronchi carry their own labels).

All heavy steps run on a working grid of about 1.5-2 mm (integer block means);
the labels are put back on the exact CT grid by nearest neighbour. The CT may
come in any axis-aligned orientation: it is reoriented to LPS internally.
Everything found or not found is listed in `Anatomy.settings["notes"]`. Only a CT
without a body or without air-filled lungs is refused (`AnatomyError`); a scan
without the trachea (starting below the carina) still gives lungs and bones.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import dijkstra

from pipeline import anatomy_names as an
from pipeline.anatomy import (
    CARINA,
    OWN_LABELS,
    SPINE,
    TS_TOTAL_LABELS,
    Anatomy,
    AnatomyError,
    check_ct,
    labels_image,
)

log = logging.getLogger(__name__)

VERSION = "classical-1.0"

# Label values (shared numbering, see pipeline.anatomy).
LABELS: dict[str, int] = {
    an.BODY: OWN_LABELS[an.BODY],
    an.LUNG_LEFT: OWN_LABELS[an.LUNG_LEFT],
    an.LUNG_RIGHT: OWN_LABELS[an.LUNG_RIGHT],
    "trachea": TS_TOTAL_LABELS["trachea"],
    an.MAIN_BRONCHUS_LEFT: OWN_LABELS[an.MAIN_BRONCHUS_LEFT],
    an.MAIN_BRONCHUS_RIGHT: OWN_LABELS[an.MAIN_BRONCHUS_RIGHT],
    an.BRONCHUS_INTERMEDIUS: OWN_LABELS[an.BRONCHUS_INTERMEDIUS],
    SPINE: OWN_LABELS[SPINE],
    "sternum": TS_TOTAL_LABELS["sternum"],
    "clavicula_left": TS_TOTAL_LABELS["clavicula_left"],
    "clavicula_right": TS_TOTAL_LABELS["clavicula_right"],
    "aorta": TS_TOTAL_LABELS["aorta"],
    "heart": 51,  # TotalSegmentator v2 `total` value of "heart"
    "esophagus": TS_TOTAL_LABELS["esophagus"],
}

# Thresholds (HU) and sizes (mm, ml).
BODY_HU = -500.0
LUNG_HU = -400.0
BONE_HU = 200.0
WORK_SPACING_MM = 1.5  # in-plane target of the working grid (integer block factors)
WORK_SPACING_Z_MM = 2.0
TRACHEA_MAX_LENGTH_MM = 130.0


# ----------------------------------------------------------------------------- grid helpers
@dataclass
class _Work:
    """The CT on the working grid, canonical LPS order (z up, y posterior, x left)."""

    hu: np.ndarray  # float32 (z, y, x)
    sp: np.ndarray  # spacing (z, y, x) mm
    factors: tuple[int, int, int]
    full_shape: tuple[int, int, int]
    notes: list[str] = field(default_factory=list)

    def ml(self, n_voxels: float) -> float:
        return float(n_voxels) * float(np.prod(self.sp)) / 1000.0

    def vox(self, mm: float, axis: int) -> int:
        return max(1, int(round(mm / self.sp[axis])))


def _block_factors(sp_full: np.ndarray) -> tuple[int, int, int]:
    fz = max(1, int(round(WORK_SPACING_Z_MM / sp_full[0]))) if sp_full[0] < WORK_SPACING_Z_MM * 0.75 else 1
    fy = max(1, int(round(WORK_SPACING_MM / sp_full[1])))
    fx = max(1, int(round(WORK_SPACING_MM / sp_full[2])))
    return fz, fy, fx


def _downsample(hu: np.ndarray, f: tuple[int, int, int]) -> np.ndarray:
    if f == (1, 1, 1):
        return hu.astype(np.float32)
    nz, ny, nx = (s // k for s, k in zip(hu.shape, f))
    out = np.empty((nz, ny, nx), np.float32)
    fz, fy, fx = f
    step = max(1, 64 // fz)  # chunks of slices keep the float temporaries small
    for z0 in range(0, nz, step):
        z1 = min(nz, z0 + step)
        blk = hu[z0 * fz : z1 * fz, : ny * fy, : nx * fx].astype(np.float32)
        out[z0:z1] = blk.reshape(z1 - z0, fz, ny, fy, nx, fx).mean(axis=(1, 3, 5))
    return out


def _upsample(lab: np.ndarray, f: tuple[int, int, int], full_shape: tuple[int, int, int]) -> np.ndarray:
    out = lab
    for ax, k in enumerate(f):
        if k > 1:
            out = np.repeat(out, k, axis=ax)
    pad = [(0, fs - s) for fs, s in zip(full_shape, out.shape)]
    if any(p[1] for p in pad):
        out = np.pad(out, pad, mode="edge")
    return out


def _ball(radius_vox: tuple[int, int, int]) -> np.ndarray:
    rz, ry, rx = radius_vox
    z, y, x = np.ogrid[-rz : rz + 1, -ry : ry + 1, -rx : rx + 1]
    return (z / max(rz, 0.5)) ** 2 + (y / max(ry, 0.5)) ** 2 + (x / max(rx, 0.5)) ** 2 <= 1.0


def _disk(r: int) -> np.ndarray:
    y, x = np.ogrid[-r : r + 1, -r : r + 1]
    return (y * y + x * x <= r * r)[None]


def _largest(mask: np.ndarray, structure: np.ndarray | None = None) -> np.ndarray:
    lab, n = ndi.label(mask, structure=structure)
    if n == 0:
        return mask.copy()
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    return lab == int(sizes.argmax())


def _fill_slices(mask: np.ndarray) -> np.ndarray:
    out = mask.copy()
    for z in np.nonzero(mask.any(axis=(1, 2)))[0]:
        out[z] = ndi.binary_fill_holes(mask[z])
    return out


def _bbox(mask: np.ndarray, pad: int | tuple[int, int, int] = 0) -> tuple[slice, ...] | None:
    if not mask.any():
        return None
    pads = (pad,) * mask.ndim if isinstance(pad, int) else pad
    sl = []
    for ax in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != ax)
        idx = np.nonzero(mask.any(axis=other))[0]
        sl.append(slice(max(0, idx[0] - pads[ax]), min(mask.shape[ax], idx[-1] + 1 + pads[ax])))
    return tuple(sl)


# ----------------------------------------------------------------------------- body and air
def _body(w: _Work) -> np.ndarray:
    tissue = w.hu > BODY_HU
    r = w.vox(3.0, 2)
    st = _disk(r)
    opened = ndi.binary_opening(tissue, structure=st)
    body = _largest(opened)
    if not body.any():
        raise AnatomyError("no body found in the CT (is it in Hounsfield units?)")
    # give back what the opening took at the edges
    body = ndi.binary_dilation(body, structure=st) & tissue
    return _fill_slices(body)


def _hull_fill(sl: np.ndarray) -> np.ndarray:
    """The convex hull of a 2-D mask, filled (scan lines over the hull polygon)."""
    from scipy.spatial import ConvexHull, QhullError

    pts = np.argwhere(sl & ~ndi.binary_erosion(sl)).astype(float)
    if len(pts) < 3:
        return sl.copy()
    try:
        hull = ConvexHull(pts)
    except QhullError:
        return sl.copy()
    v = pts[hull.vertices]  # (y, x), in order around the hull
    a, b = v, np.roll(v, -1, axis=0)
    y0, y1 = int(v[:, 0].min()), int(v[:, 0].max())
    ys = np.arange(y0, y1 + 1, dtype=float)[:, None]
    lo, hi = np.minimum(a[:, 0], b[:, 0])[None, :], np.maximum(a[:, 0], b[:, 0])[None, :]
    cross = (ys >= lo) & (ys <= hi)
    dy = b[:, 0] - a[:, 0]
    t = np.where(dy != 0, (ys - a[:, 0]) / np.where(dy != 0, dy, 1.0), 0.0)
    xs = a[:, 1] + t * (b[:, 1] - a[:, 1])
    xmin = np.where(cross, np.minimum(xs, np.where(dy == 0, np.minimum(a[:, 1], b[:, 1]), xs)), np.inf).min(axis=1)
    xmax = np.where(cross, np.maximum(xs, np.where(dy == 0, np.maximum(a[:, 1], b[:, 1]), xs)), -np.inf).max(axis=1)
    xx = np.arange(sl.shape[1])[None, :]
    out = sl.copy()
    out[y0 : y1 + 1] |= (xx >= np.floor(xmin)[:, None]) & (xx <= np.ceil(xmax)[:, None])
    return out


def _interior(w: _Work, body: np.ndarray) -> np.ndarray:
    """Where air counts as inside the patient: the body and, slice by slice, its convex hull.
    So the lungs count as inside even where the chest wall is thinner than a voxel or broken
    (phantoms, very thin patients, artefacts). Outside air caught by the hull (beside the
    arms) is not lung-like, and is dropped by `_lung_air`."""
    out = body.copy()
    for z in np.nonzero(body.any(axis=(1, 2)))[0]:
        out[z] = _hull_fill(body[z])
    return out


def _components_by_size(mask: np.ndarray) -> tuple[np.ndarray, int, np.ndarray, np.ndarray]:
    """Connected components: labels, count, voxel count per label (background 0), labels largest first."""
    lab, n = ndi.label(mask)
    sizes = np.bincount(lab.ravel(), minlength=n + 1)
    sizes[0] = 0
    return lab, n, sizes, np.argsort(sizes)[::-1]


def _lung_air(w: _Work, body: np.ndarray) -> np.ndarray:
    """The large air component(s) inside the body: both lungs (and the airways when connected)."""
    air = (w.hu < LUNG_HU) & body
    lab, n, sizes, order = _components_by_size(air)
    if n == 0:
        raise AnatomyError("no air-filled lungs found inside the body (is this a chest CT?)")
    keep = [order[0]]
    # lungs that are not connected through the airways at this resolution
    if n > 1 and sizes[order[1]] > 0.25 * sizes[order[0]]:
        keep.append(order[1])
    comp = np.isin(lab, keep)
    # parts cut off by a thin septum (a complete fissure, a band of atelectasis) lie within
    # two voxels of the lungs and look like lung (-950 to -600 HU on average); gas in the
    # bowel is further away, below the diaphragm, and darker
    big = [i for i in order[: min(n, 30)] if i not in keep and w.ml(sizes[i]) >= 5.0]
    if big:
        means = ndi.mean(w.hu, lab, big)
        big = [i for i, m in zip(big, means) if -950.0 <= m <= -600.0]
    if big:
        r = (2, max(2, w.vox(3.0, 1)), max(2, w.vox(3.0, 2)))
        roi = _bbox(comp, pad=tuple(2 * v for v in r))
        near = ndi.binary_dilation(comp[roi], structure=_ball(r))
        touching = np.unique(lab[roi][near])
        add = [i for i in big if i in set(touching.tolist())]
        if add:
            comp |= np.isin(lab, add)
    if w.ml(comp.sum()) < 200:
        raise AnatomyError(
            f"the air inside the body is only {w.ml(comp.sum()):.0f} ml: no lungs in this CT (is this a chest CT?)"
        )
    return comp


# ----------------------------------------------------------------------------- airways
def _trachea_seed(w: _Work, air: np.ndarray, body: np.ndarray, lung_air: np.ndarray) -> tuple[int, np.ndarray]:
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


def _grow_airway(
    w: _Work, air: np.ndarray, lung_air: np.ndarray, seed_z: int, seed: np.ndarray
) -> tuple[np.ndarray, float]:
    """Airway lumen grown from the seed with the highest threshold that does not leak.

    air: all air inside the body; lung_air: the lungs' component(s), which bound
    the search box (extended up to 150 mm above the seed for the trachea).
    """
    roi = list(_bbox(lung_air, pad=1))
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


def _voxel_index(mask: np.ndarray) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
    """Graph node number of each voxel of `mask` (-1 outside), and the voxels' coordinates in that order."""
    idx = -np.ones(mask.shape, np.int64)
    coords = np.nonzero(mask)
    idx[coords] = np.arange(coords[0].size)
    return idx, coords


def _neighbour_pairs(idx: np.ndarray, sp: np.ndarray):
    """Each 26-connected pair of graph voxels once: (node a, node b, step in mm, slice a, slice b, kept).

    The slices and the `kept` mask let a caller weight an edge by what lies under its ends.
    """
    for dz in (0, 1):
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                if (dz, dy, dx) <= (0, 0, 0):
                    continue
                sa = tuple(slice(max(0, -o), s - max(0, o)) for o, s in zip((dz, dy, dx), idx.shape))
                sb = tuple(slice(max(0, o), s - max(0, -o)) for o, s in zip((dz, dy, dx), idx.shape))
                ia, ib = idx[sa], idx[sb]
                ok = (ia >= 0) & (ib >= 0)
                step = float(np.sqrt((dz * sp[0]) ** 2 + (dy * sp[1]) ** 2 + (dx * sp[2]) ** 2))
                yield ia[ok], ib[ok], step, sa, sb, ok


def _graph_distances(mask: np.ndarray, sp: np.ndarray, sources: np.ndarray) -> np.ndarray:
    """Geodesic distance (mm) inside `mask` (26-connected) from the `sources` voxels; inf if unreachable."""
    idx, coords = _voxel_index(mask)
    rows, cols, wts = [], [], []
    for ia, ib, step, _, _, _ in _neighbour_pairs(idx, sp):
        rows.append(ia)
        cols.append(ib)
        wts.append(np.full(ia.size, step))
    g = coo_matrix((np.concatenate(wts), (np.concatenate(rows), np.concatenate(cols))),
                   shape=(coords[0].size,) * 2).tocsr()
    src = idx[sources & mask]
    dist = dijkstra(g, directed=False, indices=src, min_only=True)
    out = np.full(mask.shape, np.inf)
    out[coords] = dist
    return out


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


def _airway_tree(w: _Work, airway: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """Split the airway lumen into trachea, main bronchi and bronchus intermedius."""
    roi = _bbox(airway, pad=1)
    sub = airway[roi]
    sp = w.sp
    ztop = np.nonzero(sub.any(axis=(1, 2)))[0].max()
    src = np.zeros_like(sub)
    src[ztop] = sub[ztop]
    dist = _graph_distances(sub, sp, src)
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


def _refine_lumen(w: _Work, parts: dict[str, np.ndarray], air: np.ndarray) -> dict[str, np.ndarray]:
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


# ----------------------------------------------------------------------------- lungs
def _lungs(w: _Work, air: np.ndarray, airway_named: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    cand = air & ~ndi.binary_dilation(airway_named)
    lab, n, sizes, order = _components_by_size(cand)
    if n == 0:
        raise AnatomyError("no lungs left after removing the airways")
    big = [i for i in order[:2] if sizes[i] > 0.1 * sizes[order[0]] and sizes[i] > 0]
    if len(big) == 2:
        seeds = [lab == big[0], lab == big[1]]
        rest = np.zeros_like(cand)
    else:
        whole = lab == order[0]
        seeds = _split_by_erosion(w, whole)
        rest = whole & ~(seeds[0] | seeds[1]) if seeds else whole
        if not seeds:
            raise AnatomyError("the lungs could not be split into left and right")
    # assign the rest (and small components) to the nearest seed
    keep_small = np.isin(lab, [i for i in order[: min(n, 20)] if sizes[i] * np.prod(w.sp) / 1000 > 5.0])
    rest = (rest | keep_small) & ~(seeds[0] | seeds[1])
    a, b = seeds
    if rest.any():
        roi = _bbox(cand, pad=1)
        seedlab = np.zeros(cand[roi].shape, np.uint8)
        seedlab[a[roi]] = 1
        seedlab[b[roi]] = 2
        _, ind = ndi.distance_transform_edt(seedlab == 0, sampling=w.sp, return_indices=True)
        near = seedlab[tuple(ind)]
        r = rest[roi]
        a[roi] |= r & (near == 1)
        b[roi] |= r & (near == 2)
    xa = np.nonzero(a)[2].mean()
    xb = np.nonzero(b)[2].mean()
    left, right = (a, b) if xa > xb else (b, a)
    return _fill_slices(left), _fill_slices(right)


def _split_by_erosion(w: _Work, whole: np.ndarray) -> list[np.ndarray]:
    """Erode a joined lung pair until it falls apart into two large parts."""
    roi = _bbox(whole, pad=1)
    cur = whole[roi]
    st = _disk(1)
    for _ in range(12):
        cur = ndi.binary_erosion(cur, structure=st)
        lab, n, sizes, o = _components_by_size(cur)
        if n < 2:
            continue
        if sizes[o[1]] > 0.15 * sizes[o[0]]:
            out = []
            for i in o[:2]:
                m = np.zeros(whole.shape, bool)
                m[roi] = lab == i
                out.append(m)
            return out
    return []


# ----------------------------------------------------------------------------- spinal canal
def _midline_x(lungs: np.ndarray) -> float:
    lx = np.nonzero(lungs.any(axis=(0, 1)))[0]
    return 0.5 * (lx[0] + lx[-1])


def _canal(w: _Work, body: np.ndarray, lungs: np.ndarray) -> np.ndarray | None:
    """Centre (y, x) of the spinal canal for every slice (interpolated), or None.

    The canal is the most posterior hole, 40-600 mm2, near the midline, in the
    bone mask of a slice; outliers are dropped against a running median and the
    gaps interpolated (constant beyond the first and last slice found).
    """
    nz, ny, nx = w.hu.shape
    mid_x = _midline_x(lungs)
    ly = np.nonzero(lungs.any(axis=(0, 2)))[0]
    y0 = int(0.5 * (ly[0] + ly[-1]))
    hx = int(45.0 / w.sp[2])
    x0, x1 = max(0, int(mid_x) - hx), min(nx, int(mid_x) + hx + 1)
    px = w.sp[1] * w.sp[2]
    st = _disk(1)[0]
    zs_found, ys, xs = [], [], []
    vb_z, vb_y, vb_x = [], [], []  # fallback: the vertebra's centre, where no canal shows
    for z in np.nonzero(body.any(axis=(1, 2)))[0]:
        b = ndi.binary_closing(w.hu[z, y0:, x0:x1] > BONE_HU, structure=st)
        filled = ndi.binary_fill_holes(b)
        holes = filled & ~b
        blab, bn = ndi.label(filled)
        if bn:
            bs = np.bincount(blab.ravel())
            bs[0] = 0
            k = int(bs.argmax())
            if bs[k] * px >= 300.0:
                cy, cx = ndi.center_of_mass(blab == k)
                if abs(cx + x0 - mid_x) * w.sp[2] < 25.0:
                    vb_z.append(z)
                    vb_y.append(cy + y0)
                    vb_x.append(cx + x0)
        lab, n = ndi.label(holes)
        if n == 0:
            continue
        idx = np.arange(1, n + 1)
        areas = ndi.sum_labels(holes, lab, idx) * px
        cents = ndi.center_of_mass(holes, lab, idx)
        best = None
        for a, (cy, cx) in zip(areas, cents):
            if 40.0 <= a <= 600.0 and abs(cx + x0 - mid_x) * w.sp[2] < 25.0:
                if best is None or cy > best[0]:
                    best = (cy, cx)
        if best is not None:
            zs_found.append(z)
            ys.append(best[0] + y0)
            xs.append(best[1] + x0)
    if len(zs_found) < 5:
        if len(vb_z) < 5:
            return None
        # no canal seen (a solid phantom spine, heavy artefacts): put it 25 mm behind the
        # centre of the largest bone object on the posterior midline
        w.notes.append("spinal canal: not seen; estimated 25 mm behind the vertebral bodies")
        zs_found, ys, xs = vb_z, [y + 25.0 / w.sp[1] for y in vb_y], vb_x
    zs_a, ys_a, xs_a = np.array(zs_found), np.array(ys), np.array(xs)
    my = ndi.median_filter(ys_a, size=7, mode="nearest")
    mx = ndi.median_filter(xs_a, size=7, mode="nearest")
    good = np.hypot((ys_a - my) * w.sp[1], (xs_a - mx) * w.sp[2]) < 8.0
    if good.sum() < 5:
        return None
    zs_a, ys_a, xs_a = zs_a[good], ys_a[good], xs_a[good]
    allz = np.arange(nz)
    return np.stack([np.interp(allz, zs_a, ys_a), np.interp(allz, zs_a, xs_a)], axis=1)


# ----------------------------------------------------------------------------- aorta
def _aorta(w: _Work, body, lungs, airway, canal, carina_idx) -> np.ndarray | None:
    """Descending aorta, and where found the ascending aorta and the arch, by circle tracking;
    None when not convincing."""
    if canal is None or carina_idx is None:
        w.notes.append("aorta: not searched (needs the spinal canal and the carina)")
        return None
    hu = w.hu
    nz, ny, nx = hu.shape
    exclude = lungs | airway
    r_min, r_max = 7.0, 20.0
    st = _disk(1)[0]

    def vessel(z: int, mode: str, win) -> np.ndarray:
        h = hu[z][win]
        m = (h > 120) & (h < 700) if mode == "contrast" else (h > -20) & (h < 110)
        m &= body[z][win] & ~exclude[z][win]
        return ndi.binary_opening(m, structure=st)

    def circle(z, cy, cx, search, rmin, rmax, mode, weight=0.5, extra=None):
        ry = int((search + rmax) / w.sp[1]) + 3
        rx = int((search + rmax) / w.sp[2]) + 3
        y0, y1 = max(0, int(cy) - ry), min(ny, int(cy) + ry + 1)
        x0, x1 = max(0, int(cx) - rx), min(nx, int(cx) + rx + 1)
        win = (slice(y0, y1), slice(x0, x1))
        m = vessel(z, mode, win)
        if extra is not None:
            m &= ~extra[win]
        if not m.any():
            return None
        dt = ndi.distance_transform_edt(m, sampling=w.sp[1:])
        yy, xx = np.mgrid[y0:y1, x0:x1]
        d = np.hypot((yy - cy) * w.sp[1], (xx - cx) * w.sp[2])
        # not the vertebral body: its centre lies about 25 mm in front of the canal
        vb = np.hypot((yy - (canal[z, 0] - 25.0 / w.sp[1])) * w.sp[1], (xx - canal[z, 1]) * w.sp[2])
        ok = (d <= search) & (dt >= rmin) & (dt <= rmax) & (vb >= 22.0)
        if not ok.any():
            return None
        score = np.where(ok, dt - weight * d, -np.inf)
        k = np.unravel_index(int(np.argmax(score)), score.shape)
        return float(yy[k]), float(xx[k]), float(dt[k])

    step_mm = max(5.0, 1.5 * w.sp[0])

    def follow(z_s: int, c_s, mode: str, r_hi: float, directions=(-1, 1)) -> dict[int, tuple[float, float, float]]:
        track = {z_s: c_s}
        for direction in directions:
            y, x, r = c_s
            z = z_s + direction
            misses = 0
            while 0 <= z < nz and misses <= 1:
                c = circle(z, y, x, step_mm, max(r_min, 0.7 * r), min(r_hi, 1.35 * r), mode, weight=0.3)
                if c is None:
                    misses += 1
                else:
                    misses = 0
                    y, x, r = c
                    track[z] = c
                z += direction
        return track

    def descending(mode: str):
        # start: the roundest candidate 0-60 mm below the carina, left of and in front of the spinal canal
        zc = int(round(carina_idx[0]))
        cands = []
        n_slices = int(60.0 / w.sp[0]) + 1
        for dz in range(n_slices):
            z = zc - dz
            if z < 0:
                break
            cy = canal[z, 0] - 40.0 / w.sp[1]
            cx = canal[z, 1] + 25.0 / w.sp[2]
            c = circle(z, cy, cx, 35.0, 9.0, 16.0, mode, weight=0.5)
            if c is not None:
                d = np.hypot((c[0] - cy) * w.sp[1], (c[1] - cx) * w.sp[2])
                cands.append((c[2] - 0.5 * d, z, c))
        if len(cands) < max(2, n_slices // 3):
            return {}
        _, z_s, c_s = max(cands)
        return follow(z_s, c_s, mode, r_max)

    best_len, track, mode = 0.0, {}, "plain"
    for m in ("contrast", "plain"):
        t = descending(m)
        log.debug("aorta %s track: %s", m, {z: tuple(round(v, 1) for v in c) for z, c in sorted(t.items())})
        if t:
            zs = sorted(t)
            length = (zs[-1] - zs[0] + 1) * w.sp[0]
            if length > best_len:
                best_len, track, mode = length, t, m
    length = best_len
    if length < 60.0:
        w.notes.append(f"aorta: no descending aorta found next to the spine (best track {length:.0f} mm); left out")
        return None
    kind = "contrast" if mode == "contrast" else "non-contrast"
    out = np.zeros(hu.shape, bool)
    _paint_discs(w, out, track, exclude)
    z_top = max(track)

    # ascending aorta: a round object (radius 11-22 mm) ~40 mm in front of the carina, near the
    # midline, between the carina and 30 mm below it, tracked up to the arch and down to the root
    zc = int(round(carina_idx[0]))
    cy, cx = carina_idx[1] - 40.0 / w.sp[1], carina_idx[2] - 3.0 / w.sp[2]
    cands = []
    for dz in range(0, int(30.0 / w.sp[0]) + 1):
        z = zc - dz
        if z < 0:
            break
        excl = out[z]
        c = circle(z, cy, cx, 22.0, 11.0, 22.0, mode, weight=0.5, extra=excl)
        if c is not None:
            d = np.hypot((c[0] - cy) * w.sp[1], (c[1] - cx) * w.sp[2])
            cands.append((c[2] - 0.5 * d, z, c))
    z_root = zc - int(50.0 / w.sp[0])

    def ascending(z_s, c_s):
        t = follow(z_s, c_s, mode, 24.0)
        # the aortic root lies at most ~50 mm below the carina; below, the track runs into the heart
        t = {z: c for z, c in t.items() if z_root <= z <= z_top}
        # ... and where the track widens by a quarter over its radius above the start, it has
        # left the aortic root for the heart
        r_up = float(np.median([c[2] for z, c in t.items() if z >= z_s] or [c_s[2]]))
        for z in sorted((z for z in t if z < z_s), reverse=True):
            if t[z][2] > 1.25 * r_up:
                t = {k: c for k, c in t.items() if k > z}
                break
        return t

    def rises_to_arch(t) -> bool:
        # the ascending aorta rises to the arch, within 40 mm of the top of the descending track
        # (the pulmonary trunk, also round and in front of the carina, does not)
        return bool(t) and (max(t) - min(t) + 1) * w.sp[0] >= 30.0 and max(t) >= z_top - int(40.0 / w.sp[0])

    asc: dict[int, tuple[float, float, float]] = {}
    if len(cands) >= 2:
        tried: list[tuple[int, float, float]] = []
        for _, z_s, c_s in sorted(cands, key=lambda t: -t[0]):
            if any(abs(z_s - z) <= 2 and np.hypot((c_s[0] - y) * w.sp[1], (c_s[1] - x) * w.sp[2]) < 10.0
                   for z, y, x in tried):
                continue
            tried.append((z_s, c_s[0], c_s[1]))
            t = ascending(z_s, c_s)
            if not asc:
                asc = t  # the best candidate, kept for the note if none rises to the arch
            if rises_to_arch(t):
                asc = t
                break
            if len(tried) >= 4:
                break
    log.debug("aorta ascending track: %s", {z: tuple(round(v, 1) for v in c) for z, c in sorted(asc.items())})
    asc_len = (max(asc) - min(asc) + 1) * w.sp[0] if asc else 0.0
    if rises_to_arch(asc):
        _paint_discs(w, out, asc, exclude)
        # the arch bulges to the left of the straight line between the track tops: follow it as
        # a path through the vessel's core from the top of one track to the other
        arch = _arch_path(w, exclude, asc, track, mode, vessel)
        if arch is not None:
            out |= arch[0]
            arch_how = f"arch followed as a vessel path over {arch[1]:.0f} mm"
        else:
            arch_how = "arch not joined"
        w.notes.append(
            f"aorta: descending aorta tracked over {length:.0f} mm and ascending aorta over {asc_len:.0f} mm "
            f"({kind} CT); {arch_how}"
        )
    else:
        w.notes.append(
            f"aorta: descending aorta tracked over {length:.0f} mm ({kind} CT); its top is the back of the arch; "
            "the ascending aorta was not found"
        )
    return out


ARCH_CORE_FRACTION = 0.45  # the arch's core: vessel voxels deeper than this share of the tracked radius
ARCH_MAX_PATH_MM = 220.0


def _arch_path(w: _Work, exclude, asc: dict, desc: dict, mode: str, vessel) -> tuple[np.ndarray, float] | None:
    """The aortic arch as the centre path between the tops of the ascending and descending tracks.

    In a box from 10 mm below the lower track top to 60 mm above the higher one, the
    vessel-like voxels (as for the tracks) are reduced to their core (3-D depth >=
    ARCH_CORE_FRACTION of the smaller tracked radius, so side branches, touching nodes and
    thin bridges drop out); the cheapest path through the core (cost rising towards its
    edge) joins the two track tops. The arch is then the vessel voxels within the local
    depth (+1.5 mm) of that path, opened by a ball of the core radius (so a node that
    touches the arch drops out), that hang together with the path. None when no such
    path exists or it is implausibly long.
    """
    nz, ny, nx = w.hu.shape
    za, zd = max(asc), max(desc)
    (ya, xa, ra), (yd, xd, rd) = asc[za], desc[zd]
    z0 = max(0, min(za, zd) - int(round(10.0 / w.sp[0])))
    z1 = min(nz, max(za, zd) + int(round(60.0 / w.sp[0])) + 1)
    pad_y, pad_x = int(60.0 / w.sp[1]), int(60.0 / w.sp[2])
    y0, y1 = max(0, int(min(ya, yd)) - pad_y), min(ny, int(max(ya, yd)) + pad_y + 1)
    x0, x1 = max(0, int(min(xa, xd)) - pad_x), min(nx, int(max(xa, xd)) + pad_x + 1)
    win = (slice(y0, y1), slice(x0, x1))
    ves = np.zeros((z1 - z0, y1 - y0, x1 - x0), bool)
    for z in range(z0, z1):
        ves[z - z0] = vessel(z, mode, win)
    if not ves.any():
        return None
    dt = ndi.distance_transform_edt(ves, sampling=w.sp)
    r_core = max(5.0, ARCH_CORE_FRACTION * min(ra, rd))
    core = dt >= r_core

    def snap(z, y, x):
        """The core voxel nearest to a track centre, within its slice +-1."""
        zz, yy, xx = np.nonzero(core[max(0, z - z0 - 1) : z - z0 + 2])
        if zz.size == 0:
            return None
        zz = zz + max(0, z - z0 - 1)
        dz, dy, dx = (zz - (z - z0)) * w.sp[0], (yy - (y - y0)) * w.sp[1], (xx - (x - x0)) * w.sp[2]
        d = np.sqrt(dz**2 + dy**2 + dx**2)
        k = int(np.argmin(d))
        return (zz[k], yy[k], xx[k]) if d[k] <= 10.0 else None

    a = snap(za, ya, xa)
    d = snap(zd, yd, xd)
    if a is None or d is None:
        return None
    lab, _ = ndi.label(core, structure=np.ones((3, 3, 3), bool))
    if lab[a] == 0 or lab[a] != lab[d]:
        return None
    comp = lab == lab[a]
    idx, coords = _voxel_index(comp)
    r_ref = max(ra, rd)
    rows, cols, wts = [], [], []
    for ia, ib, step, sa, sb, ok in _neighbour_pairs(idx, w.sp):
        depth = np.minimum(dt[sa][ok], dt[sb][ok])
        rows.append(ia)
        cols.append(ib)
        wts.append(step * (r_ref / np.maximum(depth, 1e-3)) ** 2)
    g = coo_matrix((np.concatenate(wts), (np.concatenate(rows), np.concatenate(cols))),
                   shape=(coords[0].size,) * 2).tocsr()
    _, pred = dijkstra(g, directed=False, indices=int(idx[d]), return_predecessors=True)
    path = [int(idx[a])]
    while path[-1] != int(idx[d]):
        nxt = int(pred[path[-1]])
        if nxt < 0:
            return None
        path.append(nxt)
    pts = np.stack([c[path] for c in coords], axis=1)
    length = float(np.sqrt(((np.diff(pts, axis=0) * w.sp) ** 2).sum(axis=1)).sum())
    if length > ARCH_MAX_PATH_MM:
        w.notes.append(f"aorta: the path between the track tops runs {length:.0f} mm; arch not joined")
        return None
    on_path = np.zeros(comp.shape, bool)
    on_path[tuple(pts.T)] = True
    dist, near = ndi.distance_transform_edt(~on_path, sampling=w.sp, return_indices=True)
    radius = np.minimum(dt[tuple(near)], 1.2 * r_ref) + 1.5
    # opened by the core radius: a node touching the arch (or joined to it by partial volume
    # across a thin fat plane) is narrower than that and drops out; then only what hangs
    # together with the path
    arch = _edt_open(ves & (dist <= radius), w.sp, r_core) | on_path
    lab, _ = ndi.label(arch)
    ids = np.unique(lab[on_path])
    arch = np.isin(lab, ids[ids > 0])
    out = np.zeros(w.hu.shape, bool)
    out[z0:z1, y0:y1, x0:x1] = arch
    return out & ~exclude, length


def _paint_discs(w: _Work, out: np.ndarray, track: dict, exclude: np.ndarray, within: np.ndarray | None = None):
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


# ----------------------------------------------------------------------------- heart
HEART_HU = (-10.0, 1000.0)  # myocardium and blood, with or without contrast; pericardial fat is darker
HEART_OPEN_MM = 8.0  # opening radius: detaches vessels, the esophagus, nodes and thin bridges
HEART_RAW_MIN_HU = -60.0  # and not fat before smoothing (keeps the fat planes of contrast CT sharp)
HEART_MIN_ML, HEART_MAX_ML = 150.0, 1800.0


def _edt_open(mask: np.ndarray, sp: np.ndarray, r_mm: float) -> np.ndarray:
    """Morphological opening with a ball of radius r_mm (mm), by two distance transforms."""
    core = ndi.distance_transform_edt(mask, sampling=sp) > r_mm
    if not core.any():
        return core
    return (ndi.distance_transform_edt(~core, sampling=sp) <= r_mm) & mask


def _diaphragm_height(w: _Work, lungs: np.ndarray, z_mid: int, skip: np.ndarray) -> np.ndarray | None:
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


def _largest_opened(cand: np.ndarray, w: _Work) -> tuple[np.ndarray, float]:
    """The largest component of `cand` after an opening with a HEART_OPEN_MM ball, and its volume (ml)."""
    out = np.zeros(cand.shape, bool)
    box = _bbox(cand, pad=2)
    if box is None:
        return out, 0.0
    lab, n = ndi.label(_edt_open(cand[box], w.sp, HEART_OPEN_MM))
    if n == 0:
        return out, 0.0
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    k = int(sizes.argmax())
    out[box] = lab == k
    return out, w.ml(sizes[k])


HEART_TOP_BELOW_CARINA_MM = 25.0


def _heart(w: _Work, body, lung_l, lung_r, taken, carina_idx, sternum=None) -> np.ndarray | None:
    """The heart (non-contrast or contrast CT). See the module docstring.

    Candidates: soft tissue or contrast blood (HEART_HU, on a CT smoothed by ~1.5 mm
    against low-dose noise) inside the convex hull of the lungs (and sternum), slice by
    slice, from the lung bases up to the carina, not lung, airway, aorta or bone. The
    liver touches the heart through the diaphragm, so only candidates above the
    diaphragm count: its height comes from the lung bases around the heart (outside
    the footprint of the upper heart, where the lung lies on the heart). The heart is
    the largest mass that survives an opening with an 8 mm ball (which detaches the
    vessels, the esophagus, nodes and thin bridges), holes filled slice by slice.
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
        cand[k] = _hull_fill(front) & ~lungs[z] & body[z]
    sigma = tuple(max(0.5, 1.5 / s) for s in w.sp)
    hu = ndi.gaussian_filter(w.hu[roi_z], sigma=sigma)
    cand &= (hu > HEART_HU[0]) & (hu < HEART_HU[1]) & (w.hu[roi_z] > HEART_RAW_MIN_HU) & ~taken[roi_z]
    # the footprint of the upper half (above the liver): no diaphragm point under it
    upper = cand.copy()
    upper[: z_mid - z_base] = False
    top, _ = _largest_opened(upper, w)
    if not top.any():
        w.notes.append("heart: no soft-tissue mass between the lungs below the carina")
        return None
    skip = ndi.binary_dilation(top.any(axis=0), structure=_disk(w.vox(10.0, 1))[0])
    dia = _diaphragm_height(w, lungs, z_mid, skip)
    if dia is None:
        w.notes.append("heart: no lung bases to place the diaphragm; not searched")
        return None
    zz = np.arange(z_base, z_car + 1)[:, None, None]
    cand &= zz > dia[None]  # above the diaphragm
    heart, ml = _largest_opened(cand, w)
    if not HEART_MIN_ML <= ml <= HEART_MAX_ML:
        w.notes.append(f"heart: the largest soft-tissue mass between the lungs is {ml:.0f} ml; left out")
        return None
    out = np.zeros(w.hu.shape, bool)
    out[roi_z] = _fill_slices(heart) & ~taken[roi_z]
    w.notes.append(f"heart: {ml:.0f} ml of soft tissue between the lungs, below the carina and above the "
                   "diaphragm (interpolated from the lung bases)")
    return out


# ----------------------------------------------------------------------------- esophagus
ESO_SOFT_HU = (-30.0, 150.0)  # the wall (smoothed CT); gas in the lumen is < ESO_AIR_HU
ESO_AIR_HU = -400.0
ESO_WINDOW_MM = 10.0  # mean-shift radius
ESO_LABEL_MM = 8.0  # the label: tissue within this distance of the track (a typical esophageal radius)
ESO_STEP_MM = 4.0  # the centre moves at most this far per slice (in-plane, after the mean shift)
ESO_MIN_AREA_MM2 = 50.0
ESO_LUNG_REACH_MM = 80.0  # in the thorax, lung lies within this distance on either side of the esophagus


def _esophagus(w: _Work, lungs, airway_parts: dict, taken, carina_idx) -> np.ndarray | None:
    """The esophagus from just above the carina down, by tracking. See the module docstring.

    Start: 10-30 mm above the carina, the soft tissue and gas between the posterior
    tracheal wall and the vertebral body, within 25 mm of the trachea's axis. Then
    slice by slice down to the lung bases: a mean shift (radius ESO_WINDOW_MM) over
    soft tissue or gas that is not lung, airway, aorta, heart or bone moves the centre,
    at most ESO_STEP_MM per slice; a slice with too little tissue keeps the centre (at
    most 2 in a row). The track ends where lung no longer lies within ESO_LUNG_REACH_MM
    on both sides of it (the hiatus). The label is the tissue within ESO_LABEL_MM of
    each centre.
    """
    trachea = airway_parts.get("trachea")
    spine_m = taken["spine"]
    if carina_idx is None or trachea is None or spine_m is None:
        w.notes.append("esophagus: not searched (needs the trachea, carina and spine)")
        return None
    nz, ny, nx = w.hu.shape
    zc = int(round(carina_idx[0]))
    lz = np.nonzero(lungs.any(axis=(1, 2)))[0]
    z_lo = int(lz[0])
    block = taken["all"]
    sigma = (0.0,) + tuple(max(0.5, 1.0 / s) for s in w.sp[1:])
    z_hi = min(nz, zc + int(round(30.0 / w.sp[0])) + 1)
    hu = ndi.gaussian_filter(w.hu[z_lo:z_hi], sigma=sigma)
    tissue = (((hu > ESO_SOFT_HU[0]) & (hu < ESO_SOFT_HU[1])) | (w.hu[z_lo:z_hi] < ESO_AIR_HU)) & ~block[z_lo:z_hi]
    yy, xx = np.mgrid[0:ny, 0:nx]
    # start
    starts = []
    for z in range(zc + int(round(10.0 / w.sp[0])), z_hi):
        if not trachea[z].any() or not spine_m[z].any():
            continue
        tj, ti = np.nonzero(trachea[z])
        sj, si = np.nonzero(spine_m[z])
        tcx = ti.mean()
        y_back, y_front = tj.max(), sj.min()
        if (y_front - y_back) * w.sp[1] < 8.0:
            continue
        box = (yy > y_back) & (yy < y_front) & (np.abs(xx - tcx) * w.sp[2] <= 25.0) & tissue[z - z_lo]
        if box.sum() * w.sp[1] * w.sp[2] >= ESO_MIN_AREA_MM2:
            starts.append((z, float(yy[box].mean()), float(xx[box].mean())))
    if not starts:
        w.notes.append("esophagus: nothing between the trachea and the spine above the carina; not found")
        return None
    z0, cy, cx = starts[0]  # the lowest start level
    rw_y, rw_x = ESO_WINDOW_MM / w.sp[1], ESO_WINDOW_MM / w.sp[2]
    rl_y, rl_x = ESO_LABEL_MM / w.sp[1], ESO_LABEL_MM / w.sp[2]
    out = np.zeros(w.hu.shape, bool)
    track = {}
    misses = 0
    for z in range(z0, z_lo - 1, -1):
        iy, ix = int(round(cy)), int(round(cx))
        row = lungs[z, max(0, iy - 2) : iy + 3].any(axis=0)
        reach = int(ESO_LUNG_REACH_MM / w.sp[2])
        if not (row[max(0, ix - reach) : ix].any() and row[ix + 1 : ix + reach + 1].any()):
            break  # no longer between the lungs: through the hiatus
        t = tissue[z - z_lo]
        py, px = cy, cx
        area = 0.0
        for _ in range(4):
            win = (((yy - cy) / rw_y) ** 2 + ((xx - cx) / rw_x) ** 2 <= 1.0) & t
            area = win.sum() * w.sp[1] * w.sp[2]
            if area < ESO_MIN_AREA_MM2:
                break
            ny_, nx_ = float(yy[win].mean()), float(xx[win].mean())
            if abs(ny_ - cy) < 0.2 and abs(nx_ - cx) < 0.2:
                cy, cx = ny_, nx_
                break
            cy, cx = ny_, nx_
        if area < ESO_MIN_AREA_MM2:
            misses += 1
            cy, cx = py, px
            if misses > 2:
                break
            continue
        misses = 0
        d = np.hypot((cy - py) * w.sp[1], (cx - px) * w.sp[2])
        if d > ESO_STEP_MM:
            f = ESO_STEP_MM / d
            cy, cx = py + f * (cy - py), px + f * (cx - px)
        track[z] = (cy, cx)
        out[z] = (((yy - cy) / rl_y) ** 2 + ((xx - cx) / rl_x) ** 2 <= 1.0) & t
    length = len(track) * w.sp[0]
    if length < 40.0:
        w.notes.append(f"esophagus: tracked over {length:.0f} mm only; left out")
        return None
    w.notes.append(f"esophagus: tracked over {length:.0f} mm from just above the carina (proxy shape: the tissue "
                   f"within {ESO_LABEL_MM:g} mm of the track)")
    log.debug("esophagus track: %s", {z: (round(a, 1), round(b, 1)) for z, (a, b) in sorted(track.items())})
    return out


# ----------------------------------------------------------------------------- bones
def _spine(w: _Work, body, canal, aorta) -> np.ndarray | None:
    if canal is None:
        w.notes.append("spine: no spinal canal found")
        return None
    nz, ny, nx = w.hu.shape
    yy = np.arange(ny)[None, :, None]
    xx = np.arange(nx)[None, None, :]
    cy = canal[:, 0][:, None, None]
    cx = canal[:, 1][:, None, None]
    region = ((yy - cy) * w.sp[1] > -55.0) & ((yy - cy) * w.sp[1] < 50.0) & (np.abs(xx - cx) * w.sp[2] < 45.0)
    bone = (w.hu > BONE_HU) & body & region
    if aorta is not None:
        bone &= ~ndi.binary_dilation(aorta, structure=_ball((0, 1, 1)))
    if not bone.any():
        return None
    spine = _largest(ndi.binary_closing(bone, structure=_ball((1, 1, 1))) & region)
    if w.ml(spine.sum()) < 20:
        return None
    # fill the marrow but not the canal
    filled = _fill_small_holes(spine, w, max_mm2=2000.0)
    canal_mask = np.zeros_like(spine)
    zz = np.arange(nz)
    iy = np.clip(np.round(canal[:, 0]).astype(int), 0, ny - 1)
    ix = np.clip(np.round(canal[:, 1]).astype(int), 0, nx - 1)
    canal_mask[zz, iy, ix] = True
    holes = filled & ~spine
    inplane = np.zeros((3, 3, 3), bool)
    inplane[1] = _disk(1)[0]
    lab, _ = ndi.label(holes, structure=inplane)
    canal_ids = np.unique(lab[canal_mask & holes])
    filled &= ~np.isin(lab, canal_ids[canal_ids > 0])
    return filled


def _sternum(w: _Work, body, lungs, canal, aorta, z_max: int | None) -> np.ndarray | None:
    """First bone met going back from the skin in a midline corridor, at a steady depth, in parts >= 30 mm long."""
    nz, ny, nx = w.hu.shape
    lz = np.nonzero(lungs.any(axis=(1, 2)))[0]
    z0 = int(lz[0])
    z1 = int(lz[-1]) - int(20.0 / w.sp[0]) if z_max is None else z_max
    z1 = min(nz, z1 + 1)
    mid = canal[:, 1] if canal is not None else np.full(nz, _midline_x(lungs))
    hx = int(25.0 / w.sp[2])
    depth = int(60.0 / w.sp[1])
    gap = max(1, int(round(4.0 / w.sp[1])))
    runs = np.zeros(w.hu.shape, bool)
    first_depth = np.full((nz, nx), np.nan)
    yy = np.arange(ny)[:, None]
    for z in range(z0, z1):
        xa, xb = max(0, int(mid[z]) - hx), min(nx, int(mid[z]) + hx + 1)
        b = body[z, :, xa:xb]
        has = b.any(axis=0)
        if not has.any():
            continue
        skin = np.argmax(b, axis=0)
        hi = w.hu[z, :, xa:xb] > 100.0
        if aorta is not None:
            hi &= ~aorta[z, :, xa:xb]
        hi = ndi.binary_closing(hi, structure=np.ones((2 * gap + 1, 1), bool))  # marrow gaps along y
        cand = hi & (yy >= skin[None, :]) & (yy < skin[None, :] + depth) & has[None, :]
        hit = cand.any(axis=0)
        first = np.where(hit, np.argmax(cand, axis=0), ny)
        after = yy >= first[None, :]
        run = cand & after & (np.cumsum(after & ~cand, axis=0) == 0)
        runs[z, :, xa:xb] = run
        first_depth[z, xa:xb] = np.where(hit, (first - skin) * w.sp[1], np.nan)
    # keep hits at the sternum's depth (the median over the corridor, smoothed along z)
    zs = np.nonzero(np.isfinite(first_depth).any(axis=1))[0]
    if zs.size == 0:
        return None
    med = np.array([np.nanmedian(first_depth[z]) for z in zs])
    smooth = ndi.median_filter(med, size=9, mode="nearest")
    ref = np.full(nz, np.nan)
    ref[zs] = smooth
    bad = np.abs(first_depth - ref[:, None]) > 10.0
    bad |= ~np.isfinite(first_depth)
    runs &= ~bad[:, None, :]
    lab, n = ndi.label(runs, structure=np.ones((3, 3, 3), bool))
    keep = []
    for i, sl in enumerate(ndi.find_objects(lab), start=1):
        if sl is not None and (sl[0].stop - sl[0].start) * w.sp[0] >= 30.0 and w.ml((lab[sl] == i).sum()) > 3.0:
            keep.append(i)
    if not keep:
        return None
    return np.isin(lab, keep)


def _clavicles(w: _Work, body, lungs, canal, taken) -> tuple[dict[str, np.ndarray], list[int]]:
    """Per side, the most anterior elongated bone that starts within 40 mm of the midline and runs
    >= 40 mm laterally; also returns the level (working-grid z) of the medial ends."""
    nz, ny, nx = w.hu.shape
    lz = np.nonzero(lungs.any(axis=(1, 2)))[0]
    z0 = max(0, int(lz[-1]) - int(70.0 / w.sp[0]))
    if canal is not None:
        mid = canal[:, 1]
        y_back = canal[:, 0] - 15.0 / w.sp[1]
    else:
        mid = np.full(nz, _midline_x(lungs))
        ly = np.nonzero(lungs.any(axis=(0, 2)))[0]
        y_back = np.full(nz, 0.5 * (ly[0] + ly[-1]))
    zz = np.arange(nz)[:, None, None]
    yy = np.arange(ny)[None, :, None]
    xx = np.arange(nx)[None, None, :]
    xrel = (xx - mid[:, None, None]) * w.sp[2]
    region = (zz >= z0) & (np.abs(xrel) <= 130.0) & (yy < y_back[:, None, None])
    dense = w.hu > 1300.0  # contrast in veins is denser than cortical bone on the working grid
    bone = (w.hu > 250.0) & body & region & ~taken & ~ndi.binary_dilation(dense)
    lab, n = ndi.label(bone)
    best: dict[str, tuple[float, tuple | None]] = {"left": (np.inf, None), "right": (np.inf, None)}
    for i, sl in enumerate(ndi.find_objects(lab), start=1):
        if sl is None:
            continue
        m = lab[sl] == i
        if w.ml(m.sum()) < 1.5:
            continue
        cz, cy, cx = np.nonzero(m)
        xr = (cx + sl[2].start - mid[cz + sl[0].start]) * w.sp[2]
        ax = np.abs(xr)
        if ax.min() > 40.0 or ax.max() - ax.min() < 40.0:
            continue
        side = "left" if xr.mean() > 0 else "right"
        if (xr * np.sign(xr.mean())).min() < -10.0 or w.ml(m.sum()) > 40.0:
            continue  # crosses the midline (manubrium, cartilage) or too big
        pts = np.stack([cz * w.sp[0], cy * w.sp[1], cx * w.sp[2]], axis=1)
        ev = np.sort(np.linalg.eigvalsh(np.cov(pts.T)))[::-1]
        if ev[0] < 6.25 * max(ev[1], 1e-6):
            continue  # not elongated
        front = float((cy.min() + sl[1].start) * w.sp[1])
        if front < best[side][0]:
            head_z = int((cz[ax <= ax.min() + 15.0]).max() + sl[0].start)  # top of the medial end
            best[side] = (front, (sl, m, head_z))
    out = {}
    heads = []
    for side in ("left", "right"):
        found = best[side][1]
        if found is not None:
            sl, m, head_z = found
            full = np.zeros(w.hu.shape, bool)
            full[sl] = m
            out[f"clavicula_{side}"] = full
            heads.append(head_z)
        else:
            w.notes.append(f"clavicula_{side}: not found")
    return out, heads


def _fill_small_holes(mask: np.ndarray, w: _Work, max_mm2: float) -> np.ndarray:
    out = mask.copy()
    px = w.sp[1] * w.sp[2]
    for z in np.nonzero(mask.any(axis=(1, 2)))[0]:
        filled = ndi.binary_fill_holes(mask[z])
        holes = filled & ~mask[z]
        if holes.any():
            lab, n = ndi.label(holes)
            sizes = np.bincount(lab.ravel()) * px
            small = np.nonzero(sizes[1:] <= max_mm2)[0] + 1
            out[z] |= np.isin(lab, small)
    return out


# ----------------------------------------------------------------------------- main
@dataclass
class _Prepared:
    can: sitk.Image  # the CT reoriented to LPS
    code: str  # the CT's own orientation code
    w: _Work


def _prepare(ct: sitk.Image) -> _Prepared:
    check_ct(ct)
    code = sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(ct.GetDirection())
    can = sitk.DICOMOrient(ct, "LPS") if code != "LPS" else ct
    hu_full = sitk.GetArrayViewFromImage(can)
    sp_full = np.array(can.GetSpacing()[::-1], float)
    f = _block_factors(sp_full)
    w = _Work(hu=_downsample(hu_full, f), sp=sp_full * f, factors=f, full_shape=hu_full.shape)
    return _Prepared(can, code, w)


def _to_canonical_mask(p: _Prepared, mask_ct: np.ndarray, ct: sitk.Image) -> np.ndarray:
    """A (z, y, x) mask on the CT grid, reoriented to LPS and reduced to the working grid (any voxel)."""
    img = sitk.GetImageFromArray(mask_ct.astype(np.uint8))
    img.CopyInformation(ct)
    if p.code != "LPS":
        img = sitk.DICOMOrient(img, "LPS")
    m = sitk.GetArrayViewFromImage(img)
    fz, fy, fx = p.w.factors
    nz, ny, nx = p.w.hu.shape
    return m[: nz * fz, : ny * fy, : nx * fx].reshape(nz, fz, ny, fy, nx, fx).max(axis=(1, 3, 5)) > 0


def _to_ct_grid(p: _Prepared, lab: np.ndarray, ct: sitk.Image, refine: dict[int, float] | None = None) -> np.ndarray:
    """Working-grid labels -> (z, y, x) labels on the CT grid (nearest neighbour).

    refine: label -> HU threshold; voxels of that label (and of the body label
    beside it) are re-decided at full resolution: label where HU < threshold,
    body otherwise (the lumen of airways).
    """
    full = _upsample(lab, p.w.factors, p.w.full_shape)
    if refine:
        hu = sitk.GetArrayViewFromImage(p.can)
        for value, thr in refine.items():
            m = full == value
            if not m.any():
                continue
            roi = _bbox(m, pad=max(p.w.factors))
            sub = full[roi]
            near = ndi.binary_dilation(sub == value, iterations=max(1, max(p.w.factors[1:]) // 2))
            lumen = hu[roi] < thr
            grow = near & lumen & (sub == LABELS[an.BODY])
            shrink = (sub == value) & ~lumen
            sub[grow] = value
            sub[shrink] = LABELS[an.BODY]
    img = sitk.GetImageFromArray(full)
    img.CopyInformation(p.can)
    if p.code != "LPS":
        img = sitk.DICOMOrient(img, p.code)
    out = sitk.GetArrayFromImage(img)
    if out.shape != tuple(reversed(ct.GetSize())):
        raise AnatomyError("internal: the label map does not come back onto the CT grid")
    return out


def _carina_point(p: _Prepared, carina_idx) -> tuple[float, float, float]:
    full_idx = (np.asarray(carina_idx) + 0.5) * np.array(p.w.factors) - 0.5  # (z, y, x), canonical CT grid
    pt = p.can.TransformContinuousIndexToPhysicalPoint([float(full_idx[2]), float(full_idx[1]), float(full_idx[0])])
    return tuple(float(c) for c in pt)


AIRWAY_LUMEN_HU = -500.0
_AIRWAY_NAMES = ("trachea", an.MAIN_BRONCHUS_LEFT, an.MAIN_BRONCHUS_RIGHT, an.BRONCHUS_INTERMEDIUS)


def classical_airways_and_body(
    ct: sitk.Image, airway_hint: np.ndarray | None = None, trachea_hint: np.ndarray | None = None
) -> tuple[dict[str, np.ndarray], dict[str, tuple[float, float, float]], list[str]]:
    """Body, trachea, main bronchi, bronchus intermedius (masks on the CT grid) and the carina.

    For other backends (TotalSegmentator has no body, bronchi or carina).
    airway_hint: an airway lumen mask on the CT grid (e.g. TotalSegmentator's
    lung_vessels airways), used instead of region growing; trachea_hint (e.g.
    TotalSegmentator's trachea) is added to it.
    """
    p = _prepare(ct)
    w = p.w
    body = _body(w)
    lab = np.zeros(w.hu.shape, np.uint8)
    lab[body] = LABELS[an.BODY]
    carina_idx = None
    try:
        if airway_hint is not None and airway_hint.any():
            hint = airway_hint | trachea_hint if trachea_hint is not None else airway_hint
            airway = _largest(_to_canonical_mask(p, hint, ct), structure=np.ones((3, 3, 3), bool))
            air = airway | ((w.hu < LUNG_HU) & body)
        else:
            inside = _interior(w, body)
            lung_air = _lung_air(w, inside)
            air = (w.hu < LUNG_HU) & inside
            seed_z, seed = _trachea_seed(w, air, body, lung_air)
            airway, _ = _grow_airway(w, air, lung_air, seed_z, seed)
        parts, carina_idx = _airway_tree(w, airway)
        parts = _refine_lumen(w, parts, air)
        for name in _AIRWAY_NAMES:
            if name in parts:
                lab[parts[name]] = LABELS[name]
    except AnatomyError as e:
        w.notes.append(f"airways not found: {e}")
    full = _to_ct_grid(p, lab, ct, refine={LABELS[n]: AIRWAY_LUMEN_HU for n in _AIRWAY_NAMES})
    masks = {n: full == LABELS[n] for n in _AIRWAY_NAMES if (lab == LABELS[n]).any()}
    masks[an.BODY] = full > 0
    lms = {CARINA: _carina_point(p, carina_idx)} if carina_idx is not None else {}
    return masks, lms, list(w.notes)


def segment_classical(ct: sitk.Image) -> Anatomy:
    """Segment the chest CT `ct` (HU) with the classical backend."""
    t0 = time.perf_counter()
    p = _prepare(ct)
    w = p.w
    timings: dict[str, float] = {}

    def tick(name):
        timings[name] = round(time.perf_counter() - t0, 2)

    tick("prepare")
    body = _body(w)
    tick("body")
    inside = _interior(w, body)
    lung_air = _lung_air(w, inside)
    air = (w.hu < LUNG_HU) & inside
    tick("air")
    parts: dict[str, np.ndarray] = {}
    carina_idx = None
    thr = None
    try:
        seed_z, seed = _trachea_seed(w, air, body, lung_air)
        airway, thr = _grow_airway(w, air, lung_air, seed_z, seed)
        tick("airway")
        parts, carina_idx = _airway_tree(w, airway)
        parts = _refine_lumen(w, parts, air)
    except AnatomyError as e:  # e.g. a scan that starts below the carina
        w.notes.append(f"airways not found: {e}")
    tick("tree")
    named = np.zeros(air.shape, bool)
    for m in parts.values():
        named |= m
    lung_l, lung_r = _lungs(w, lung_air, named)
    tick("lungs")
    lungs = lung_l | lung_r
    canal = _canal(w, body, lungs)
    tick("canal")
    aorta = _aorta(w, body, lungs, named, canal, carina_idx)
    tick("aorta")
    bones: dict[str, np.ndarray] = {}
    spine = _spine(w, body, canal, aorta)
    if spine is not None:
        bones[SPINE] = spine
    else:
        w.notes.append("spine: not found")
    taken = spine.copy() if spine is not None else np.zeros(body.shape, bool)
    clav, heads = _clavicles(w, body, lungs, canal, taken)
    bones.update(clav)
    # the manubrium's top is at the level of the clavicles' medial ends
    z_max = max(heads) + int(round(5.0 / w.sp[0])) if heads else None
    sternum = _sternum(w, body, lungs, canal, aorta, z_max)
    if sternum is not None:
        bones["sternum"] = sternum
    else:
        w.notes.append("sternum: not found")
    tick("bones")
    taken = lungs | named
    for m in (aorta, bones.get(SPINE), bones.get("sternum")):
        if m is not None:
            taken |= m
    heart = _heart(w, body, lung_l, lung_r, taken, carina_idx, bones.get("sternum"))
    tick("heart")
    if heart is not None:
        taken |= heart
    eso = _esophagus(w, lungs, parts, {"spine": bones.get(SPINE), "all": taken}, carina_idx)
    tick("esophagus")

    lab = np.zeros(w.hu.shape, np.uint8)
    lab[body] = LABELS[an.BODY]
    order: list[tuple[str, np.ndarray | None]] = [
        (an.LUNG_LEFT, lung_l),
        (an.LUNG_RIGHT, lung_r),
        ("heart", heart),
        ("esophagus", eso),
        ("aorta", aorta),
        (SPINE, bones.get(SPINE)),
        ("sternum", bones.get("sternum")),
        ("clavicula_left", bones.get("clavicula_left")),
        ("clavicula_right", bones.get("clavicula_right")),
        *[(n, parts.get(n)) for n in _AIRWAY_NAMES],
    ]
    names = {an.BODY: LABELS[an.BODY]}
    for name, m in order:
        if m is not None and m.any():
            lab[m] = LABELS[name]
            names[name] = LABELS[name]
    full = _to_ct_grid(p, lab, ct, refine={LABELS[n]: AIRWAY_LUMEN_HU for n in _AIRWAY_NAMES if n in names})
    labels = labels_image(full, ct)
    tick("total")

    landmarks = {CARINA: _carina_point(p, carina_idx)} if carina_idx is not None else {}
    settings = {
        "working_spacing_mm": [float(s) for s in w.sp[::-1]],
        "airway_threshold_hu": thr,
        "notes": list(w.notes),
        "timings_s": timings,
    }
    log.info("classical anatomy in %.1f s: %s", timings["total"], ", ".join(sorted(names)))
    return Anatomy(
        labels=labels, names=names, backend="classical", version=VERSION, settings=settings, landmarks=landmarks
    )
