"""The working grid of the classical backend, and the voxel tools every organ module uses.

All heavy steps run on a grid of about 1.5 mm in-plane and 2 mm along z (integer
block means of the CT, reoriented to LPS: z up, y posterior, x left), so a 512 x 512
x 300 CT costs what a 340 x 340 x 150 one does. Labels go back to the exact CT grid
by nearest neighbour (`to_ct_grid`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi
from scipy.spatial import ConvexHull, QhullError
from skimage.graph import MCP_Geometric
from skimage.morphology import disk as sk_disk

from pipeline.anatomy import names as an
from pipeline.anatomy.model import AnatomyError, check_ct
from pipeline.anatomy.names import OWN_LABELS

BODY_LABEL = OWN_LABELS[an.BODY]

BODY_HU = -500.0
LUNG_HU = -400.0
BONE_HU = 200.0
WORK_SPACING_MM = 1.5  # in-plane target of the working grid (integer block factors)
WORK_SPACING_Z_MM = 2.0
TRACHEA_MAX_LENGTH_MM = 130.0
# ----------------------------------------------------------------------------- grid helpers
@dataclass
class Work:
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


def block_factors(sp_full: np.ndarray) -> tuple[int, int, int]:
    fz = max(1, int(round(WORK_SPACING_Z_MM / sp_full[0]))) if sp_full[0] < WORK_SPACING_Z_MM * 0.75 else 1
    fy = max(1, int(round(WORK_SPACING_MM / sp_full[1])))
    fx = max(1, int(round(WORK_SPACING_MM / sp_full[2])))
    return fz, fy, fx


def downsample(hu: np.ndarray, f: tuple[int, int, int]) -> np.ndarray:
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


def upsample(lab: np.ndarray, f: tuple[int, int, int], full_shape: tuple[int, int, int]) -> np.ndarray:
    out = lab
    for ax, k in enumerate(f):
        if k > 1:
            out = np.repeat(out, k, axis=ax)
    pad = [(0, fs - s) for fs, s in zip(full_shape, out.shape)]
    if any(p[1] for p in pad):
        out = np.pad(out, pad, mode="edge")
    return out


def ball(radius_vox: tuple[int, int, int]) -> np.ndarray:
    """An ellipsoid with radii in voxels per axis (z, y, x): a ball in mm on an anisotropic grid
    (skimage's `ball` is isotropic in voxels)."""
    rz, ry, rx = radius_vox
    z, y, x = np.ogrid[-rz : rz + 1, -ry : ry + 1, -rx : rx + 1]
    return (z / max(rz, 0.5)) ** 2 + (y / max(ry, 0.5)) ** 2 + (x / max(rx, 0.5)) ** 2 <= 1.0


def disk(r: int) -> np.ndarray:
    """A 2-D disk of radius r voxels as a (1, 2r+1, 2r+1) structuring element for 3-D masks."""
    return sk_disk(r).astype(bool)[None]


def largest(mask: np.ndarray, structure: np.ndarray | None = None) -> np.ndarray:
    """The largest connected component of `mask` (the mask itself when it is empty)."""
    lab, n = ndi.label(mask, structure=structure)
    if n == 0:
        return mask.copy()
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    return lab == int(sizes.argmax())


def fill_slices(mask: np.ndarray) -> np.ndarray:
    """Holes filled slice by slice (within the mask's bounding box, which is what costs)."""
    out = mask.copy()
    box = bbox(mask, pad=1)
    if box is None:
        return out
    sub = out[box]
    for z in np.nonzero(sub.any(axis=(1, 2)))[0]:
        sub[z] = ndi.binary_fill_holes(sub[z])
    return out

def bbox(mask: np.ndarray, pad: int | tuple[int, ...] = 0) -> tuple[slice, ...] | None:
    """The mask's bounding box as slices, padded (clipped to the array); None when empty."""
    if not mask.any():
        return None
    pads = (pad,) * mask.ndim if isinstance(pad, int) else pad
    sl = []
    for ax in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != ax)
        idx = np.nonzero(mask.any(axis=other))[0]
        sl.append(slice(max(0, idx[0] - pads[ax]), min(mask.shape[ax], idx[-1] + 1 + pads[ax])))
    return tuple(sl)


def hull_fill(sl: np.ndarray) -> np.ndarray:
    """The convex hull of a 2-D mask, filled: scan lines over the hull polygon, vectorised.

    (skimage's `polygon` and `convex_hull_image` test every pixel of the box against the
    polygon; with them the anatomy took 4 s longer on a 512 x 512 x 133 CT.)
    """
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


def components_by_size(mask: np.ndarray) -> tuple[np.ndarray, int, np.ndarray, np.ndarray]:
    """Connected components: labels, count, voxel count per label (background 0), labels largest first."""
    lab, n = ndi.label(mask)
    sizes = np.bincount(lab.ravel(), minlength=n + 1)
    sizes[0] = 0
    return lab, n, sizes, np.argsort(sizes)[::-1]

def graph_distances(mask: np.ndarray, sp: np.ndarray, sources: np.ndarray) -> np.ndarray:
    """Geodesic distance (mm) inside `mask` (26-connected) from the `sources` voxels; inf if unreachable."""
    costs = np.where(mask, 1.0, np.inf)
    mcp = MCP_Geometric(costs, fully_connected=True, sampling=tuple(float(s) for s in sp))
    dist, _ = mcp.find_costs(np.argwhere(sources & mask))
    dist[~mask] = np.inf
    return dist


def edt_open(mask: np.ndarray, sp: np.ndarray, r_mm: float) -> np.ndarray:
    """Morphological opening with a ball of radius r_mm (mm), by two distance transforms."""
    core = ndi.distance_transform_edt(mask, sampling=sp) > r_mm
    if not core.any():
        return core
    return (ndi.distance_transform_edt(~core, sampling=sp) <= r_mm) & mask

def fill_small_holes(mask: np.ndarray, w: Work, max_mm2: float) -> np.ndarray:
    """Holes of at most max_mm2 filled slice by slice (each slice within its mask's bounding box)."""
    out = mask.copy()
    px = w.sp[1] * w.sp[2]
    for z in np.nonzero(mask.any(axis=(1, 2)))[0]:
        box = bbox(mask[z], pad=1)
        m = mask[z][box]
        holes = ndi.binary_fill_holes(m) & ~m
        if holes.any():
            lab, n = ndi.label(holes)
            sizes = np.bincount(lab.ravel()) * px
            small = np.nonzero(sizes[1:] <= max_mm2)[0] + 1
            out[z][box] |= np.isin(lab, small)
    return out


# ----------------------------------------------------------------------------- main
@dataclass
class Prepared:
    can: sitk.Image  # the CT reoriented to LPS
    code: str  # the CT's own orientation code
    w: Work


def prepare(ct: sitk.Image) -> Prepared:
    check_ct(ct)
    code = sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(ct.GetDirection())
    can = sitk.DICOMOrient(ct, "LPS") if code != "LPS" else ct
    hu_full = sitk.GetArrayViewFromImage(can)
    sp_full = np.array(can.GetSpacing()[::-1], float)
    f = block_factors(sp_full)
    w = Work(hu=downsample(hu_full, f), sp=sp_full * f, factors=f, full_shape=hu_full.shape)
    return Prepared(can, code, w)


def to_canonical_mask(p: Prepared, mask_ct: np.ndarray, ct: sitk.Image) -> np.ndarray:
    """A (z, y, x) mask on the CT grid, reoriented to LPS and reduced to the working grid (any voxel)."""
    img = sitk.GetImageFromArray(mask_ct.astype(np.uint8))
    img.CopyInformation(ct)
    if p.code != "LPS":
        img = sitk.DICOMOrient(img, "LPS")
    m = sitk.GetArrayViewFromImage(img)
    fz, fy, fx = p.w.factors
    nz, ny, nx = p.w.hu.shape
    return m[: nz * fz, : ny * fy, : nx * fx].reshape(nz, fz, ny, fy, nx, fx).max(axis=(1, 3, 5)) > 0


def to_ct_grid(p: Prepared, lab: np.ndarray, ct: sitk.Image, refine: dict[int, float] | None = None) -> np.ndarray:
    """Working-grid labels -> (z, y, x) labels on the CT grid (nearest neighbour).

    refine: label -> HU threshold; voxels of that label (and of the body label
    beside it) are re-decided at full resolution: label where HU < threshold,
    body otherwise (the lumen of airways).
    """
    full = upsample(lab, p.w.factors, p.w.full_shape)
    if refine:
        hu = sitk.GetArrayViewFromImage(p.can)
        for value, thr in refine.items():
            m = full == value
            if not m.any():
                continue
            roi = bbox(m, pad=max(p.w.factors))
            sub = full[roi]
            near = ndi.binary_dilation(sub == value, iterations=max(1, max(p.w.factors[1:]) // 2))
            lumen = hu[roi] < thr
            grow = near & lumen & (sub == BODY_LABEL)
            shrink = (sub == value) & ~lumen
            sub[grow] = value
            sub[shrink] = BODY_LABEL
    img = sitk.GetImageFromArray(full)
    img.CopyInformation(p.can)
    if p.code != "LPS":
        img = sitk.DICOMOrient(img, p.code)
    out = sitk.GetArrayFromImage(img)
    if out.shape != tuple(reversed(ct.GetSize())):
        raise AnatomyError("internal: the label map does not come back onto the CT grid")
    return out


def index_to_lps(p: Prepared, idx) -> tuple[float, float, float]:
    """A working-grid (z, y, x) index (may be fractional) as a point in patient coordinates (LPS, mm)."""
    full_idx = (np.asarray(idx) + 0.5) * np.array(p.w.factors) - 0.5  # (z, y, x), canonical CT grid
    pt = p.can.TransformContinuousIndexToPhysicalPoint([float(full_idx[2]), float(full_idx[1]), float(full_idx[0])])
    return tuple(float(c) for c in pt)

