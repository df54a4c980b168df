"""Measurements of one focus: SUVmax/peak/mean, MTV, TLG, its peak position and the CT short axis.

PERCIST/QIBA habits: SUVmax is a PET voxel value (not an interpolated one), SUVpeak
the highest mean in a 1 cm³ sphere, MTV the thresholded volume, TLG = SUVmean × MTV.
The short axis is measured on the node itself on CT: the soft tissue (−20 to
120 HU) under the focus, connected to its SUV peak, excluding structures the
anatomy names (vessels, esophagus, heart, airways), so neighbouring soft tissue
within a few mm does not widen it.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from scipy import ndimage
from scipy.signal import fftconvolve

from pipeline.lesions.geometry import ball, bbox

SUVPEAK_SPHERE_ML = 1.0
SUVPEAK_SEARCH_FRACTION = 0.6
SOFT_TISSUE_HU = (-20.0, 120.0)
NODE_REACH_MM = 3.0  # CT soft tissue this far outside the avid region can still be the node (PET blur)


def suv_peak(suv: np.ndarray, mask: np.ndarray, spacing: np.ndarray) -> float:
    """Highest mean SUV in a 1 cm³ sphere centred on a voxel of the focus."""
    radius = (3 * SUVPEAK_SPHERE_ML * 1000 / (4 * np.pi)) ** (1 / 3)
    b = ball(radius, spacing).astype(np.float32)
    b /= b.sum()
    # The best sphere sits on the hottest voxels: search only where SUV >= 60 % of the focus's maximum.
    hot = mask & (suv >= SUVPEAK_SEARCH_FRACTION * float(suv[mask].max()))
    margin = np.array(b.shape) // 2 + 1
    sl = bbox(hot, margin, suv.shape)
    local = fftconvolve(np.pad(np.asarray(suv[sl], np.float32), [(m, m) for m in margin], mode="edge"), b,
                        mode="same")[tuple(slice(m, -m) for m in margin)]
    return float(local[hot[sl]].max())


def short_axis_mm(mask: np.ndarray, spacing: np.ndarray) -> float:
    """Short axis on the axial slice where the object is largest: its width across the long axis."""
    if not mask.any():
        return 0.0
    areas = mask.reshape(mask.shape[0], -1).sum(axis=1)
    k = int(np.argmax(areas))
    yi, xi = np.nonzero(mask[k])
    pixel = float(np.sqrt(spacing[1] * spacing[2]))
    if len(yi) < 3:
        return pixel * max(len(yi), 1) ** 0.5
    pts = np.stack([yi * spacing[1], xi * spacing[2]], axis=1)
    pts -= pts.mean(axis=0)
    _, vecs = np.linalg.eigh(np.cov(pts.T))
    proj = pts @ vecs[:, 0]  # eigh sorts ascending: the short axis
    return float(proj.max() - proj.min() + pixel)


def principal_extents_mm(mask: np.ndarray, spacing: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Extents (mm) along the 3 principal axes, ascending, and the unit vector (z, y, x) of the longest."""
    pts = np.argwhere(mask) * spacing
    if len(pts) < 4:
        return np.full(3, float(spacing.max())), np.array([1.0, 0.0, 0.0])
    pts = pts - pts.mean(axis=0)
    _, vecs = np.linalg.eigh(np.cov(pts.T))
    proj = pts @ vecs
    ext = proj.max(axis=0) - proj.min(axis=0) + float(spacing.min())
    return ext, vecs[:, -1]


def node_soft_tissue(ct: np.ndarray, focus: np.ndarray, peak: tuple[int, int, int], spacing: np.ndarray,
                     named: np.ndarray | None) -> np.ndarray:
    """The node's own CT body: soft tissue under (or just beside) the focus, connected to its peak."""
    near = ndimage.distance_transform_edt(~focus, sampling=spacing) <= NODE_REACH_MM
    soft = near & (ct >= SOFT_TISSUE_HU[0]) & (ct <= SOFT_TISSUE_HU[1])
    if named is not None:
        soft &= ~named
    lab, n = ndimage.label(soft)
    if n == 0:
        return soft
    at_peak = lab[peak]
    if at_peak == 0:  # the peak voxel itself is not soft tissue: take the piece with most of the focus in it
        counts = np.bincount(lab[focus], minlength=n + 1)
        counts[0] = 0
        at_peak = int(np.argmax(counts))
        if counts[at_peak] == 0:
            return np.zeros_like(soft)
    return lab == at_peak


def pet_grid_max(volumes, lesion_labels: np.ndarray, n: int) -> dict[int, float]:
    """SUVmax on the PET's own voxels (QIBA: a voxel value, not an interpolated one)."""
    pet = getattr(volumes, "suv_pet_grid", None)
    if pet is None or n == 0:
        return {}
    lab_img = sitk.GetImageFromArray(lesion_labels.astype(np.uint16 if n < 65535 else np.uint32))
    lab_img.CopyInformation(volumes.ct)
    on_pet = sitk.Resample(lab_img, pet, sitk.Transform(), sitk.sitkNearestNeighbor, 0, lab_img.GetPixelID())
    lab = sitk.GetArrayViewFromImage(on_pet).ravel()
    vals = sitk.GetArrayViewFromImage(pet).ravel().astype(np.float64)
    out = np.full(n + 1, -np.inf)
    np.maximum.at(out, lab, vals)
    return {int(v): float(out[v]) for v in range(1, n + 1) if np.isfinite(out[v])}
