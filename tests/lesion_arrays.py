"""Small synthetic volumes for the lesion unit tests: blobs of SUV and HU on a 2 mm grid."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from pipeline.anatomy import Anatomy

SPACING = np.array([2.0, 2.0, 2.0])  # z, y, x (mm)


def grid(shape=(40, 60, 60)) -> tuple[np.ndarray, np.ndarray]:
    """Z, Y, X coordinates in mm (index × 2 mm)."""
    return np.meshgrid(*(np.arange(n) * s for n, s in zip(shape, SPACING)), indexing="ij")


def gaussian(shape, centre_mm, sigma_mm, height) -> np.ndarray:
    z, y, x = grid(shape)
    d2 = (z - centre_mm[0]) ** 2 + (y - centre_mm[1]) ** 2 + (x - centre_mm[2]) ** 2
    return (height * np.exp(-d2 / (2 * sigma_mm ** 2))).astype(np.float32)


def ball(shape, centre_mm, radius_mm) -> np.ndarray:
    z, y, x = grid(shape)
    return (z - centre_mm[0]) ** 2 + (y - centre_mm[1]) ** 2 + (x - centre_mm[2]) ** 2 <= radius_mm ** 2


def image(arr: np.ndarray) -> sitk.Image:
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(tuple(float(s) for s in SPACING[::-1]))
    return img


def anatomy(labels: dict[str, np.ndarray], shape, landmarks=None) -> Anatomy:
    """An Anatomy from named boolean masks (later names win where they overlap)."""
    arr = np.zeros(shape, np.uint8)
    names = {}
    for value, (name, mask) in enumerate(labels.items(), start=1):
        arr[mask] = value
        names[name] = value
    return Anatomy(labels=image(arr), names=names, backend="test", version="0", settings={},
                   landmarks=dict(landmarks or {}))
