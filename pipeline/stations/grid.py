"""The working grid (axis-aligned LPS, 2 mm) and small geometry helpers on it."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from PIL import Image, ImageDraw
from scipy import ndimage as ndi
from scipy.spatial import ConvexHull


@dataclass
class Work:
    arr: np.ndarray          # [z, y, x] labels on the working grid (cropped)
    x: np.ndarray            # mm, per column
    y: np.ndarray            # mm, per row
    z: np.ndarray            # mm, per slice
    sp: float
    values: dict[str, int]   # present names only
    fov_top: float           # mm, top edge of the input field of view
    fov_bottom: float

    def has(self, name: str) -> bool:
        return name in self.values

    def mask(self, *names: str) -> np.ndarray:
        vals = [self.values[n] for n in names if n in self.values]
        if not vals:
            return np.zeros(self.arr.shape, dtype=bool)
        if len(vals) == 1:
            return self.arr == vals[0]
        return np.isin(self.arr, vals)

    def at_top(self, z_mm: float) -> bool:
        """True when a structure edge at z_mm touches the top of the field of view."""
        return z_mm >= self.fov_top - 1.5 * self.sp

    def at_bottom(self, z_mm: float) -> bool:
        return z_mm <= self.fov_bottom + 1.5 * self.sp

    def k_of(self, z_mm: float) -> int:
        """Index of the first slice at or above z_mm (clipped)."""
        return int(np.clip(math.ceil((z_mm - self.z[0]) / self.sp - 1e-6), 0, len(self.z)))

    @property
    def Z(self) -> np.ndarray:
        return self.z[:, None, None]

    @property
    def Y(self) -> np.ndarray:
        return self.y[None, :, None]

    @property
    def X(self) -> np.ndarray:
        return self.x[None, None, :]


def physical_bounds(img: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    size = img.GetSize()
    corners = []
    for i in (-0.5, size[0] - 0.5):
        for j in (-0.5, size[1] - 0.5):
            for k in (-0.5, size[2] - 0.5):
                corners.append(img.TransformContinuousIndexToPhysicalPoint((i, j, k)))
    c = np.array(corners)
    return c.min(0), c.max(0)


def to_working_grid(labels: sitk.Image, sp: float) -> tuple[sitk.Image, float, float]:
    lo, hi = physical_bounds(labels)
    origin = np.ceil(lo / sp - 1e-6) * sp
    size = np.floor((hi - origin) / sp + 1e-6).astype(int)
    size = np.maximum(size, 1)
    ref = sitk.Image([int(v) for v in size], labels.GetPixelID())
    ref.SetOrigin(tuple(float(v) for v in origin))
    ref.SetSpacing((sp, sp, sp))
    ref.SetDirection((1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    work = sitk.Resample(labels, ref, sitk.Transform(), sitk.sitkNearestNeighbor, 0, labels.GetPixelID())
    return work, float(hi[2]), float(lo[2])


EIGHT = np.ones((3, 3), dtype=bool)


def components(sl: np.ndarray, min_vox: int) -> list[np.ndarray]:
    """Boolean masks of the 8-connected components of a 2D mask, largest first."""
    lab, n = ndi.label(sl, structure=EIGHT)
    if n == 0:
        return []
    sizes = np.bincount(lab.ravel())[1:]
    order = np.argsort(sizes)[::-1]
    return [lab == (i + 1) for i in order if sizes[i] >= min_vox]


def dist_inplane(w: Work, mask: np.ndarray, k0: int = 0, k1: int | None = None,
                  max_mm: float = 50.0) -> np.ndarray:
    """In-plane distance (mm) to `mask` per slice, for slices k0..k1-1.

    inf on other slices, on slices without mask voxels, and (to save time) beyond
    about `max_mm` from the mask's bounding box.
    """
    k1 = len(w.z) if k1 is None else k1
    out = np.full(mask.shape, np.inf, dtype=np.float32)
    k0, k1 = max(k0, 0), min(k1, len(w.z))
    if k1 <= k0:
        return out
    sub = mask[k0:k1]
    if not sub.any():
        return out
    pad = int(math.ceil(max_mm / w.sp)) + 1
    _, jj, ii = np.nonzero(sub)
    j0, j1 = max(jj.min() - pad, 0), min(jj.max() + pad + 1, mask.shape[1])
    i0, i1 = max(ii.min() - pad, 0), min(ii.max() + pad + 1, mask.shape[2])
    box = sub[:, j0:j1, i0:i1]
    d = ndi.distance_transform_edt(~box, sampling=(1e5, w.sp, w.sp)).astype(np.float32)
    d[d > 1e4] = np.inf
    out[k0:k1, j0:j1, i0:i1] = d
    return out


def dist_3d(w: Work, mask: np.ndarray, k0: int = 0, k1: int | None = None,
             max_mm: float = 30.0) -> np.ndarray:
    """3D distance (mm) to `mask` for slices k0..k1-1; inf elsewhere and beyond ~max_mm of the mask."""
    k1 = len(w.z) if k1 is None else k1
    out = np.full(mask.shape, np.inf, dtype=np.float32)
    pad = int(math.ceil(max_mm / w.sp)) + 1
    a0, a1 = max(k0 - pad, 0), min(k1 + pad, len(w.z))
    sub = mask[a0:a1]
    if k1 <= k0 or not sub.any():
        return out
    kk, jj, ii = np.nonzero(sub)
    box = (slice(max(kk.min() - pad, 0), min(kk.max() + pad + 1, sub.shape[0])),
           slice(max(jj.min() - pad, 0), min(jj.max() + pad + 1, mask.shape[1])),
           slice(max(ii.min() - pad, 0), min(ii.max() + pad + 1, mask.shape[2])))
    d = np.full(sub.shape, np.inf, dtype=np.float32)
    d[box] = ndi.distance_transform_edt(~sub[box], sampling=(w.sp, w.sp, w.sp))
    out[a0:a1] = d
    out[:k0] = np.inf
    out[k1:] = np.inf
    return out


def hull_fill(sl: np.ndarray) -> np.ndarray:
    """Filled 2D convex hull of a mask (the mask itself if too small for a hull)."""
    pts = np.argwhere(sl)
    if len(pts) < 3:
        return sl.copy()
    # Only boundary pixels matter for the hull.
    edge = sl & ~ndi.binary_erosion(sl)
    pts = np.argwhere(edge)
    if len(pts) < 3:
        return sl.copy()
    try:
        hull = ConvexHull(pts)
    except Exception:  # degenerate (collinear) point sets
        return sl.copy()
    poly = [(float(pts[v, 1]), float(pts[v, 0])) for v in hull.vertices]
    img = Image.new("L", (sl.shape[1], sl.shape[0]), 0)
    ImageDraw.Draw(img).polygon(poly, fill=1, outline=1)
    return (np.asarray(img) > 0) | sl


def fill_nan(values: np.ndarray) -> np.ndarray:
    """Fill NaNs by nearest valid neighbour along the array (constant extrapolation)."""
    v = values.copy()
    ok = ~np.isnan(v)
    if not ok.any():
        return v
    idx = np.arange(len(v))
    valid = idx[ok]
    pos = np.searchsorted(valid, idx)
    lo = valid[np.clip(pos - 1, 0, len(valid) - 1)]
    hi = valid[np.clip(pos, 0, len(valid) - 1)]
    pick = np.where(np.abs(idx - lo) <= np.abs(hi - idx), lo, hi)
    return v[pick]

