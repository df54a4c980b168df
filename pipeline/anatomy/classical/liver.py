"""The liver, and the tissue under each hemidiaphragm that keeps the heart out of the abdomen.

Under the dome of the right lung lies the liver; under the left, the stomach and the
spleen. A band of tissue 10-40 mm under the top of each dome (`subphrenic_marker`) is
sure to be that organ, not heart. The heart and the liver touch through the
diaphragm with no fat between them in places, and on a CT without contrast they have
much the same density, so the boundary between them is decided by a watershed of the
depth inside the tissue (where it is narrowest) from these markers and the heart's upper part (`split_by_watershed`).

The liver (`find_liver`) is then the soft tissue of the liver's own density (the
marker's median HU +- LIVER_HU_HALF_WIDTH on a lightly smoothed CT) that hangs
together with the right marker after an opening (which detaches the abdominal wall,
the kidney, the bowel and thin bridges), split from the heart and from the organs
under the left dome by the same watershed, holes (vessels) filled slice by slice.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from skimage.segmentation import watershed

from pipeline.anatomy.classical.grid import Work, bbox, edt_open, fill_slices, hull_fill

SUBPHRENIC_BAND_MM = (10.0, 40.0)  # the marker: this far under the lung base
BASE_FOOTPRINT_MM = 50.0  # the dome lies within the hull of the lung's lowest 50 mm
DOME_TOP_PERCENTILE = 95.0  # the dome's top: this percentile of the lung bases (robust to stray columns)
DOME_TOP_BAND_MM = 25.0  # ... in the columns where the lung base lies within this of the dome's top
MARKER_MIN_DEPTH_MM = 25.0  # ... and this deep under the skin (not the body wall)
LIVER_HU_HALF_WIDTH = 45.0
LIVER_SMOOTH_MM = 1.5
LIVER_OPEN_MM = 6.0
LIVER_ABOVE_MARKER_MM = 30.0  # the liver's dome lies at most this far above the marker's top
LIVER_MIN_ML, LIVER_MAX_ML = 400.0, 4000.0


def subphrenic_marker(w: Work, lung: np.ndarray, body: np.ndarray, exclude: np.ndarray,
                      midline: float | None = None) -> tuple[np.ndarray, int] | None:
    """Soft tissue SUBPHRENIC_BAND_MM under the top of a lung's dome (the organ under that hemidiaphragm),
    and the dome's top (working-grid z).

    Only the lateral half of the lung's footprint counts (farther from `midline`, an x
    index, than the lung's centre): the lung also ends on the heart, medially.
    """
    lz = np.nonzero(lung.any(axis=(1, 2)))[0]
    if lz.size < 4:
        return None
    z_mid = (int(lz[0]) + int(lz[-1])) // 2
    low = lung[: z_mid + 1]
    has = low.any(axis=0)
    if not has.any():
        return None
    # the lateral half of the lung's base: the heart, on which the lung also ends, lies medially
    xs = np.nonzero(lung.any(axis=(0, 1)))[0]
    cx = float(np.argwhere(lung)[:, 2].mean())
    mid = midline if midline is not None else (0.5 * (xs[0] + xs[-1]))
    xx = np.arange(lung.shape[2])[None, :]
    base = hull_fill(lung[lz[0] : lz[0] + int(round(BASE_FOOTPRINT_MM / w.sp[0]))].any(axis=0))
    has &= base & (np.abs(xx - mid) >= abs(cx - mid))
    if not has.any():
        return None
    z_base = np.where(has, np.argmax(low, axis=0), -1)  # the lowest lung voxel of each column
    dome_top = int(round(np.percentile(z_base[has], DOME_TOP_PERCENTILE)))
    cols = has & (z_base >= dome_top - int(round(DOME_TOP_BAND_MM / w.sp[0])))
    lo, hi = (int(round(v / w.sp[0])) for v in SUBPHRENIC_BAND_MM)
    marker = np.zeros(lung.shape, bool)
    for z in range(max(0, int(z_base[cols].min()) - hi), max(0, dome_top - lo + 1)):
        below = z_base - z
        band = cols & (below >= lo) & (below <= hi)
        if band.any():  # not the body wall: MARKER_MIN_DEPTH_MM under the skin
            marker[z] = band & (ndi.distance_transform_edt(body[z], sampling=w.sp[1:]) >= MARKER_MIN_DEPTH_MM)
    soft = (w.hu > -30.0) & (w.hu < 250.0)
    marker &= soft & body & ~exclude & ~lung
    return (marker, dome_top) if marker.sum() * float(np.prod(w.sp)) / 1000.0 >= 5.0 else None


def split_by_watershed(w: Work, domain: np.ndarray, markers: list[np.ndarray | None]) -> list[np.ndarray]:
    """Split `domain` between the markers (in order) where it is narrowest; one mask per marker.

    A watershed of the depth inside the domain (its distance transform): two organs that
    touch meet at a neck, the saddle of the depth, whatever their densities.
    """
    box = bbox(domain, pad=1)
    out = [np.zeros(domain.shape, bool) for _ in markers]
    if box is None:
        return out
    seeds = np.zeros(domain[box].shape, np.int32)
    for i, m in enumerate(markers, start=1):
        if m is not None:
            seeds[m[box] & domain[box] & (seeds == 0)] = i
    if not seeds.any():
        return out
    depth = ndi.distance_transform_edt(domain[box], sampling=w.sp)
    ws = watershed(-depth, seeds, mask=domain[box])
    for i, o in enumerate(out, start=1):
        o[box] = ws == i
    return out


def find_liver(w: Work, body, exclude, marker: np.ndarray | None, others: list[np.ndarray | None],
               canal: np.ndarray | None = None) -> np.ndarray | None:
    """The liver: see the module docstring. `others`: markers of what is not liver (heart, left subphrenic organs)."""
    if marker is None:
        w.notes.append("liver: no lung base on the right to find it under; not searched")
        return None
    sigma = tuple(max(0.5, LIVER_SMOOTH_MM / s) for s in w.sp)
    mz = np.nonzero(marker.any(axis=(1, 2)))[0]
    z_hi = min(w.hu.shape[0], int(mz[-1]) + int(round(LIVER_ABOVE_MARKER_MM / w.sp[0])) + 1)
    hu = ndi.gaussian_filter(w.hu[:z_hi], sigma=sigma)
    level = float(np.median(hu[marker[:z_hi]]))
    cand = np.zeros(w.hu.shape, bool)
    cand[:z_hi] = (np.abs(hu - level) <= LIVER_HU_HALF_WIDTH) & body[:z_hi] & ~exclude[:z_hi]
    if canal is not None:  # the liver lies in front of the spinal canal (behind it: the back muscles)
        yy = np.arange(w.hu.shape[1])[None, :, None]
        cand &= yy < canal[:, 0][:, None, None]
    box = bbox(cand, pad=2)
    if box is None:
        return None
    opened = np.zeros(cand.shape, bool)
    opened[box] = edt_open(cand[box], w.sp, LIVER_OPEN_MM)
    lab, _ = ndi.label(opened)
    ids = np.unique(lab[marker & opened])
    region = np.isin(lab, ids[ids > 0])
    if not region.any():
        w.notes.append("liver: no tissue of the liver's density under the right lung base")
        return None
    parts = split_by_watershed(w, region, [marker, *others])
    liver = parts[0]
    lab, _ = ndi.label(liver)
    ids = np.unique(lab[marker & liver])
    liver = fill_slices(np.isin(lab, ids[ids > 0])) & ~exclude
    ml = w.ml(liver.sum())
    if not LIVER_MIN_ML <= ml <= LIVER_MAX_ML:
        w.notes.append(f"liver: the tissue under the right lung base is {ml:.0f} ml; left out")
        return None
    w.notes.append(f"liver: {ml:.0f} ml at {level:.0f} HU under the right hemidiaphragm")
    return liver
