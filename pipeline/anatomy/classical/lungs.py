"""The lungs: the large air-filled components inside the body, split into left and right."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from pipeline.anatomy.classical.grid import LUNG_HU, Work, ball, bbox, components_by_size, disk, fill_slices
from pipeline.anatomy.model import AnatomyError

def find_lung_air(w: Work, body: np.ndarray) -> np.ndarray:
    """The large air component(s) inside the body: both lungs (and the airways when connected)."""
    air = (w.hu < LUNG_HU) & body
    lab, n, sizes, order = components_by_size(air)
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
        roi = bbox(comp, pad=tuple(2 * v for v in r))
        near = ndi.binary_dilation(comp[roi], structure=ball(r))
        touching = np.unique(lab[roi][near])
        add = [i for i in big if i in set(touching.tolist())]
        if add:
            comp |= np.isin(lab, add)
    if w.ml(comp.sum()) < 200:
        raise AnatomyError(
            f"the air inside the body is only {w.ml(comp.sum()):.0f} ml: no lungs in this CT (is this a chest CT?)"
        )
    return comp


# ----------------------------------------------------------------------------- lungs
def find_lungs(w: Work, air: np.ndarray, airway_named: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    cand = air & ~ndi.binary_dilation(airway_named)
    lab, n, sizes, order = components_by_size(cand)
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
        roi = bbox(cand, pad=1)
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
    return fill_slices(left), fill_slices(right)


def _split_by_erosion(w: Work, whole: np.ndarray) -> list[np.ndarray]:
    """Erode a joined lung pair until it falls apart into two large parts."""
    roi = bbox(whole, pad=1)
    cur = whole[roi]
    st = disk(1)
    for _ in range(12):
        cur = ndi.binary_erosion(cur, structure=st)
        lab, n, sizes, o = components_by_size(cur)
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




APEX_MIN_AREA_MM2 = 20.0  # a lung's top slice has at least this much lung (not a stray voxel)


def lung_apex(w: Work, lung: np.ndarray) -> tuple[float, float, float] | None:
    """Working-grid (z, y, x) of a lung's apex: the centre of its highest slice with APEX_MIN_AREA_MM2 of lung."""
    areas = lung.sum(axis=(1, 2)) * w.sp[1] * w.sp[2]
    zs = np.nonzero(areas >= APEX_MIN_AREA_MM2)[0]
    if zs.size == 0:
        return None
    z = int(zs[-1])
    y, x = np.argwhere(lung[z]).mean(axis=0)
    return float(z), float(y), float(x)
