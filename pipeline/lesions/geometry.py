"""Small array helpers shared by the lesion modules: spacing, balls, crops, erosions, patient z."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

try:  # the anatomy package (new layout) or the flat module (old layout)
    from pipeline.anatomy import names as an
except ImportError:  # pragma: no cover - depends on the anatomy layout in this checkout
    from pipeline import anatomy_names as an  # type: ignore[no-redef]

__all__ = ["an", "union_mask", "spacing_zyx", "voxel_ml", "physical", "ball", "bbox", "crop", "erode", "below_in_patient",
           "superior_sign"]


def spacing_zyx(img: sitk.Image) -> np.ndarray:
    return np.array(img.GetSpacing()[::-1], dtype=float)


def voxel_ml(img: sitk.Image) -> float:
    return float(np.prod(img.GetSpacing())) / 1000.0


def physical(img: sitk.Image, index_zyx) -> tuple[float, float, float]:
    return tuple(img.TransformContinuousIndexToPhysicalPoint([float(index_zyx[2]), float(index_zyx[1]),
                                                              float(index_zyx[0])]))


def ball(radius_mm: float, spacing: np.ndarray) -> np.ndarray:
    r = np.ceil(radius_mm / spacing).astype(int)
    zz, yy, xx = np.ogrid[-r[0]:r[0] + 1, -r[1]:r[1] + 1, -r[2]:r[2] + 1]
    return (zz * spacing[0]) ** 2 + (yy * spacing[1]) ** 2 + (xx * spacing[2]) ** 2 <= radius_mm ** 2


def bbox(mask: np.ndarray, margin, shape) -> tuple[slice, ...]:
    idx = np.nonzero(mask)
    margin = np.broadcast_to(np.asarray(margin, int), (3,))
    return tuple(slice(max(int(i.min()) - int(m), 0), min(int(i.max()) + int(m) + 1, n))
                 for i, m, n in zip(idx, margin, shape))


def crop(slices: tuple[slice, ...], margin, shape) -> tuple[slice, ...]:
    margin = np.broadcast_to(np.asarray(margin, int), (3,))
    return tuple(slice(max(s.start - int(m), 0), min(s.stop + int(m), n)) for s, m, n in zip(slices, margin, shape))


def erode(mask: np.ndarray, spacing: np.ndarray, mm: float) -> np.ndarray:
    """Erosion by `mm`, computed on the mask's bounding box only (full-size EDTs are slow)."""
    if not mask.any():
        return mask
    sl = bbox(mask, 1, mask.shape)
    out = np.zeros_like(mask)
    out[sl] = ndimage.distance_transform_edt(mask[sl], sampling=spacing) > mm
    return out


def superior_sign(img: sitk.Image) -> float:
    """+1 when a higher slice index is more superior (head-wards), -1 otherwise."""
    return float(np.sign(img.GetDirection()[8] * img.GetSpacing()[2]) or 1.0)


def below_in_patient(img: sitk.Image, z_index: np.ndarray, ref_index: float) -> np.ndarray:
    """Slices inferior to `ref_index`, whatever the slice direction (feet-first, flipped)."""
    superior_per_index = img.GetDirection()[8] * img.GetSpacing()[2]
    return (z_index - ref_index) * superior_per_index < 0


def union_mask(anatomy, names) -> np.ndarray | None:
    """One boolean mask of several structures, in one pass over the label array where possible."""
    values, extra = [], None
    for name in names:
        if name in anatomy.names:
            values.append(anatomy.names[name])
        elif anatomy.has(name):
            m = anatomy.mask(name)
            if m is not None:
                extra = m if extra is None else extra | m
    out = np.isin(anatomy.array(), values) if values else None
    if extra is not None:
        out = extra if out is None else out | extra
    return out if out is not None and out.any() else None
