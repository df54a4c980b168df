"""Bones: the spinal canal, the spine, the sternum, the clavicles and the ribs."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from pipeline.anatomy.classical.grid import (
    BONE_HU,
    Work,
    ball,
    bbox,
    disk,
    fill_slices,
    fill_small_holes,
    hull_fill,
    largest,
)

# the clavicles are searched from this far below the lung apices up; where one joins the first rib or the
# scapula in that box, again in a smaller one
CLAVICLE_BELOW_APEX_MM = (70.0, 45.0, 30.0)


# ----------------------------------------------------------------------------- spinal canal
def midline_x(lungs: np.ndarray) -> float:
    lx = np.nonzero(lungs.any(axis=(0, 1)))[0]
    return 0.5 * (lx[0] + lx[-1])


CANAL_SLAB_MM = 5.0  # the canal's bony ring is looked for in the densest voxel within this of each slice


def find_canal(w: Work, body: np.ndarray, lungs: np.ndarray) -> np.ndarray | None:
    """Centre (y, x) of the spinal canal for every slice (interpolated), or None.

    The canal is the most posterior hole, 40-600 mm2, near the midline, in the
    bone mask of a slab (the maximum over +-CANAL_SLAB_MM along z: the pedicles and
    laminae that ring the canal seldom lie in one thin slice, and on a single slice
    the marrow's hole was taken for the canal, 15 mm off on LIDC-IDRI-0001); outliers
    are dropped against a running median and the gaps interpolated (constant beyond
    the first and last slice found).
    """
    nz, ny, nx = w.hu.shape
    mid_x = midline_x(lungs)
    ly = np.nonzero(lungs.any(axis=(0, 2)))[0]
    y0 = int(0.5 * (ly[0] + ly[-1]))
    hx = int(45.0 / w.sp[2])
    x0, x1 = max(0, int(mid_x) - hx), min(nx, int(mid_x) + hx + 1)
    px = w.sp[1] * w.sp[2]
    st = disk(1)[0]
    zs_found, ys, xs = [], [], []
    vb_z, vb_y, vb_x = [], [], []  # fallback: the vertebra's centre, where no canal shows
    half = w.vox(CANAL_SLAB_MM, 0)
    slab = ndi.maximum_filter(w.hu[:, y0:, x0:x1], size=(2 * half + 1, 1, 1), mode="nearest")
    for z in np.nonzero(body.any(axis=(1, 2)))[0]:
        b = ndi.binary_closing(slab[z] > BONE_HU, structure=st)
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


# ----------------------------------------------------------------------------- bones
def find_spine(w: Work, body, canal, aorta) -> np.ndarray | None:
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
        bone &= ~ndi.binary_dilation(aorta, structure=ball((0, 1, 1)))
    if not bone.any():
        return None
    spine = largest(ndi.binary_closing(bone, structure=ball((1, 1, 1))) & region)
    if w.ml(spine.sum()) < 20:
        return None
    # fill the marrow but not the canal
    filled = fill_small_holes(spine, w, max_mm2=2000.0)
    canal_mask = np.zeros_like(spine)
    zz = np.arange(nz)
    iy = np.clip(np.round(canal[:, 0]).astype(int), 0, ny - 1)
    ix = np.clip(np.round(canal[:, 1]).astype(int), 0, nx - 1)
    canal_mask[zz, iy, ix] = True
    holes = filled & ~spine
    inplane = np.zeros((3, 3, 3), bool)
    inplane[1] = disk(1)[0]
    lab, _ = ndi.label(holes, structure=inplane)
    canal_ids = np.unique(lab[canal_mask & holes])
    filled &= ~np.isin(lab, canal_ids[canal_ids > 0])
    return _vertebral_bodies(w, filled, canal)


VERTEBRA_AHEAD_OF_CANAL_MM = 4.0  # the vertebral body: bone this far and more in front of the canal's centre
VERTEBRA_MIN_MEAN_HU = 130.0  # a slice through a vertebral body (cortex and marrow); a disc is less dense
DISC_MAX_HU = 180.0  # in a disc's slice, what is less dense than this is disc, not bone
VERTEBRA_HALF_WIDTH_MM = 25.0  # the body's bone this close to the canal's midline (not the rib heads beside it)


def _vertebral_bodies(w: Work, spine: np.ndarray, canal: np.ndarray) -> np.ndarray:
    """Fill each vertebral body's marrow, and take the intervertebral discs out, slice by slice.

    A closing joins the bodies across the discs, and a body's rim is not always closed
    on a slice, so hole filling alone leaves marrow out and discs in. Per slice, the
    body (the spine in front of the canal and within VERTEBRA_HALF_WIDTH_MM of its
    midline, all its pieces: where the rim is open, the largest piece was only part of
    it) is filled to its convex hull when that hull is as dense as bone on average,
    and otherwise (a disc) keeps only its dense voxels (the end plates, in partial volume).
    """
    out = spine.copy()
    yy = np.arange(spine.shape[1])[:, None]
    xx = np.arange(spine.shape[2])[None, :]
    for z in np.nonzero(spine.any(axis=(1, 2)))[0]:
        front = spine[z] & (yy < canal[z, 0] - VERTEBRA_AHEAD_OF_CANAL_MM / w.sp[1])
        front &= np.abs(xx - canal[z, 1]) * w.sp[2] < VERTEBRA_HALF_WIDTH_MM
        if not front.any():
            continue
        vb = hull_fill(front)
        if float(w.hu[z][vb].mean()) >= VERTEBRA_MIN_MEAN_HU:
            out[z] |= vb
        else:
            out[z] &= ~(vb & (w.hu[z] < DISC_MAX_HU))
    return out


STERNUM_CORTEX_HU = 250.0  # a part of the sternum has a tenth of its voxels at least this dense (cartilage has not)


def find_sternum(w: Work, body, lungs, canal, aorta, z_max: int | None) -> np.ndarray | None:
    """First bone met going back from the skin in a midline corridor, at a steady depth, in parts >= 30 mm long
    with cortex (STERNUM_CORTEX_HU; not the costal and xiphoid cartilage below the sternum), up to z_max."""
    nz, ny, nx = w.hu.shape
    lz = np.nonzero(lungs.any(axis=(1, 2)))[0]
    z0 = int(lz[0])
    z1 = int(lz[-1]) - int(20.0 / w.sp[0]) if z_max is None else z_max
    z1 = min(nz, z1 + 1)
    mid = canal[:, 1] if canal is not None else np.full(nz, midline_x(lungs))
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
        if sl is None or (sl[0].stop - sl[0].start) * w.sp[0] < 30.0:
            continue
        part = lab[sl] == i
        # costal cartilage and the xiphoid's cartilage below the sternum: no cortex-dense voxels
        if w.ml(part.sum()) > 3.0 and np.percentile(w.hu[sl][part], 90) >= STERNUM_CORTEX_HU:
            keep.append(i)
    if not keep:
        return None
    return np.isin(lab, keep)


def find_clavicles(w: Work, body, lungs, canal, taken) -> tuple[dict[str, np.ndarray], list[int]]:
    """Per side, the elongated bone with the highest medial end that starts within 40 mm of the midline
    and runs >= 40 mm laterally; also returns the level (working-grid z) of the medial ends."""
    lz = np.nonzero(lungs.any(axis=(1, 2)))[0]
    found: dict[str, tuple] = {}
    for below in CLAVICLE_BELOW_APEX_MM:
        z0 = max(0, int(lz[-1]) - int(below / w.sp[0]))
        for side, c in _clavicle_candidates(w, body, lungs, canal, taken, z0).items():
            found.setdefault(side, c)
        if len(found) == 2:
            break
    out = {}
    heads = []
    for side in ("left", "right"):
        if side in found:
            sl, m, head_z = found[side]
            full = np.zeros(w.hu.shape, bool)
            full[sl] = m
            out[f"clavicula_{side}"] = _with_marrow(w, full, body & ~taken)
            heads.append(head_z)
        else:
            w.notes.append(f"clavicula_{side}: not found")
    return out, heads


CONTRAST_VEIN_HU = 1300.0  # contrast in veins is denser than cortical bone on the working grid
CLAVICLE_MARROW_HU = 150.0  # the clavicle's marrow and thin cortex, less dense than the 250 HU of its search
CLAVICLE_GROW_VOX = 2


def _with_marrow(w: Work, clavicle: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """The clavicle grown by CLAVICLE_GROW_VOX voxels into bone denser than CLAVICLE_MARROW_HU, holes filled.

    Its search takes only cortex-dense voxels (so it does not merge with the first rib
    or the scapula); that leaves the marrow and the thin ends out (about half of it on
    LIDC-IDRI-0001).
    """
    box = bbox(clavicle, pad=CLAVICLE_GROW_VOX + 1)
    if box is None:
        return clavicle
    allow = allowed[box] & (w.hu[box] > CLAVICLE_MARROW_HU)
    out = clavicle.copy()
    out[box] |= ndi.binary_dilation(clavicle[box], structure=np.ones((3, 3, 3), bool),
                                    iterations=CLAVICLE_GROW_VOX, mask=allow)
    return fill_slices(out)


def _clavicle_candidates(w: Work, body, lungs, canal, taken, z0: int) -> dict[str, tuple]:
    """side -> (box, mask in the box, medial-end z) of the best clavicle candidate above z0."""
    nz, ny, nx = w.hu.shape
    if canal is not None:
        mid = canal[:, 1]
        y_back = canal[:, 0] - 15.0 / w.sp[1]
    else:
        mid = np.full(nz, midline_x(lungs))
        ly = np.nonzero(lungs.any(axis=(0, 2)))[0]
        y_back = np.full(nz, 0.5 * (ly[0] + ly[-1]))
    zz = np.arange(nz)[:, None, None]
    yy = np.arange(ny)[None, :, None]
    xx = np.arange(nx)[None, None, :]
    xrel = (xx - mid[:, None, None]) * w.sp[2]
    region = (zz >= z0) & (np.abs(xrel) <= 130.0) & (yy < y_back[:, None, None])
    dense = w.hu > CONTRAST_VEIN_HU
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
        # the clavicle's medial end is the highest of these (the first rib's front end lies below it)
        head_z = int((cz[ax <= ax.min() + 15.0]).max() + sl[0].start)  # top of the medial end
        if -head_z < best[side][0]:
            best[side] = (-head_z, (sl, m, head_z))
    return {side: c for side, (_, c) in best.items() if c is not None}




# ----------------------------------------------------------------------------- ribs
RIB_HU = 180.0  # cortex and marrow of a rib on the working grid (partial volume lowers thin bone)
# beside the lungs: bone within this distance outside their hull is rib (a rib is ~10 mm thick; at 18 mm the
# scapulae's inner edges came in: 17 000 of the 75 000 false rib voxels on LIDC-IDRI-0001)
RIB_SHELL_MM = 12.0
RIB_DEPTH_MM = 35.0  # below the lungs: bone within this depth under the skin is rib
RIB_MIN_ML = 0.2
RIB_CORTEX_HU = 250.0  # a rib has a tenth of its voxels at least this dense (enhancing organs have not)
RIB_MARROW_MAX_MM2 = 100.0  # a hole in a rib's cross-section up to this is marrow


def find_ribs(w: Work, body, lungs, exclude) -> np.ndarray | None:
    """The ribs as one structure: bone in a shell around the lungs, and under the skin below them.

    Beside the lungs, rib is bone within RIB_SHELL_MM outside the lungs' convex hull,
    slice by slice (inside the hull lie the mediastinum and its contrast-filled vessels;
    further out the scapulae and arms). Below the lung bases the lower ribs wrap the
    liver and spleen just under the body wall: bone within RIB_DEPTH_MM of the skin.
    Parts without cortex (RIB_CORTEX_HU: a contrast-enhanced spleen or heart) are
    dropped, and each rib's marrow is filled. `exclude`: spine, sternum, clavicles and aorta.
    """
    lz = np.nonzero(lungs.any(axis=(1, 2)))[0]
    if lz.size == 0:
        return None
    bone = (w.hu > RIB_HU) & body & ~exclude
    ribs = np.zeros(bone.shape, bool)
    for z in np.nonzero(bone[: lz[-1] + 1].any(axis=(1, 2)))[0]:
        if lungs[z].any():
            hull = hull_fill(lungs[z])
            pad = tuple(int(np.ceil(RIB_SHELL_MM / s)) + 1 for s in w.sp[1:])
            box = bbox(hull, pad=pad)
            near = ~hull[box] & (ndi.distance_transform_edt(~hull[box], sampling=w.sp[1:]) <= RIB_SHELL_MM)
            ribs[z][box] = bone[z][box] & near
        else:
            box = bbox(body[z], pad=1)
            ribs[z][box] = bone[z][box] & (ndi.distance_transform_edt(body[z][box], sampling=w.sp[1:]) <= RIB_DEPTH_MM)
    lab, n = ndi.label(ribs, structure=np.ones((3, 3, 3), bool))
    if n == 0:
        return None
    sizes = np.bincount(lab.ravel()) * float(np.prod(w.sp)) / 1000.0
    keep = np.nonzero(sizes[1:] >= RIB_MIN_ML)[0] + 1
    # contrast-enhanced spleen or heart beside the lungs is as dense as marrow, but has no cortex
    objs = ndi.find_objects(lab)
    keep = np.array([i for i in keep if np.percentile(w.hu[objs[i - 1]][lab[objs[i - 1]] == i], 90) >= RIB_CORTEX_HU],
                    dtype=int)
    if keep.size == 0:
        return None
    ribs = np.isin(lab, keep)
    # a rib's marrow is less dense than RIB_HU and its thin cortex breaks on the working grid: close the
    # ring in-plane, then fill it
    inplane = np.zeros((3, 3, 3), bool)
    inplane[1] = disk(1)[0]
    return fill_small_holes(ribs | ndi.binary_closing(ribs, structure=inplane), w, max_mm2=RIB_MARROW_MAX_MM2)


# ----------------------------------------------------------------------------- edges at full resolution
BONE_EDGE_HU = 150.0  # at full resolution, a voxel on a bone's edge is bone when denser than this


def refine_bone_edges(labels: np.ndarray, hu: np.ndarray, bone_values: list[int], body_value: int,
                      rim_vox: int) -> np.ndarray:
    """Re-decide the rim in and around each bone at full resolution (in place; returned).

    Bones are found on the coarser working grid, where a thin rib or cortex is half in
    and half out of a voxel; upsampled, their edges are off by up to a working voxel.
    In the rim `rim_vox` full-resolution voxels wide (a working voxel) just inside a
    bone, voxels less dense than BONE_EDGE_HU become body; in the rim just outside it
    (body voxels only, so no organ, vessel or airway is taken), voxels denser than it
    join the neighbouring bone. In-plane only: the slices are thicker than the
    in-plane voxels. Measured on LIDC-IDRI-0001: bone Dice about +0.02 (bench/RESULTS.md).
    """
    is_bone = np.isin(labels, bone_values)
    box = bbox(is_bone, pad=(0, rim_vox + 1, rim_vox + 1))
    if box is None:
        return labels
    sub, h, b = labels[box], hu[box], is_bone[box]
    cross = np.zeros((3, 3, 3), bool)
    cross[1] = ndi.generate_binary_structure(2, 1)
    inner = b & ~ndi.binary_erosion(b, structure=cross, iterations=rim_vox)
    outer = ndi.binary_dilation(b, structure=cross, iterations=rim_vox) & ~b & (sub == body_value)
    outer &= h > BONE_EDGE_HU
    if outer.any():
        neighbour = ndi.maximum_filter(np.where(b, sub, 0).astype(sub.dtype), size=(1, 2 * rim_vox + 1,
                                                                                    2 * rim_vox + 1))
        sub[outer] = neighbour[outer]
    sub[inner & (h < BONE_EDGE_HU)] = body_value
    return labels
