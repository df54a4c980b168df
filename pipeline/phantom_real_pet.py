"""FDG uptake for the real-anatomy phantom: an SUV map from a TotalSegmentator-named
label map and its CT, blurred by the scanner's PSF, sampled on a PET grid, with noise.

Why a label map: every organ then carries its own physiologic level (literature
ranges, DESIGN.md §4 and the issue-11 table), and the traps a reader must not call
positive (myocardium, esophagus, brown fat, neck muscles, bright marrow, noisy
liver) sit where they sit in a real patient. Also here: the small fused PET/CT
renderer used to check node placements by eye.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

logger = logging.getLogger(__name__)

ACTIVITY_MM = 2.0  # isotropic grid on which activity is painted and blurred
PET_FWHM_MM = 6.5
NOISE_CORRELATION_VOXELS = 0.8  # reconstructed PET noise is correlated over about a voxel
LIVER_TEXTURE_CV = 0.06
LIVER_TEXTURE_SIGMA_MM = 8.0

# Unlabelled voxels take a level by CT density (smoothed HU).
AIR_HU, LUNGLIKE_HU, FAT_HU, SOFT_HU, CONTRAST_HU = -900.0, -200.0, -30.0, 150.0, 600.0
FAT_SUV = 0.3
SOFT_TISSUE_SUV = 0.8
UNLABELLED_LUNGLIKE_SUV = 0.1
BONE_SUV = 0.8

# Organ levels (SUVbw) at a standard 60-75 min uptake; blood pool and liver come per case.
ORGAN_SUV: dict[str, float] = {
    "spleen": 2.0, "kidney_left": 7.0, "kidney_right": 7.0, "kidney_cyst_left": 0.3, "kidney_cyst_right": 0.3,
    "gallbladder": 0.5, "stomach": 1.6, "pancreas": 1.4, "adrenal_gland_left": 1.3, "adrenal_gland_right": 1.3,
    "small_bowel": 1.5, "duodenum": 1.5, "colon": 1.4, "thyroid_gland": 1.5, "trachea": 0.0,
    "esophagus": 1.3, "spinal_cord": 1.1, "autochthon_left": 0.8, "autochthon_right": 0.8,
    "iliopsoas_left": 0.8, "iliopsoas_right": 0.8, "costal_cartilages": 0.6,
}
LUNG_SUV = 0.45
BLOOD_STRUCTURES = ("aorta", "pulmonary_vein", "brachiocephalic_trunk", "subclavian_artery_right",
                    "subclavian_artery_left", "common_carotid_artery_right", "common_carotid_artery_left",
                    "brachiocephalic_vein_left", "brachiocephalic_vein_right", "atrial_appendage_left",
                    "superior_vena_cava", "inferior_vena_cava", "portal_vein_and_splenic_vein")
MARROW_STRUCTURES_PREFIX = "vertebrae_"
OTHER_BONES_PREFIX = ("rib_", "clavicula_", "scapula_", "humerus_")
STERNUM_MARROW_FRACTION = 0.8
MYOCARDIUM_MAX_HU = 170.0  # contrast-filled chambers are brighter; the wall is below this
MYOCARDIUM_SHELL_MM = 12.0


@dataclass(frozen=True)
class Uptake:
    """Per-case physiologic levels."""

    blood_pool: float
    liver: float
    myocardium: float
    marrow: float
    lesion_scale: float = 1.0  # delayed scans: tumour and nodes keep rising


def grid_like(ref: sitk.Image, spacing_mm: float, margin_mm: float = 0.0) -> sitk.Image:
    """An empty image with isotropic spacing covering `ref` (identity direction), plus a margin."""
    size = np.array(ref.GetSize())
    lo = np.array(ref.GetOrigin()) - np.array(ref.GetSpacing()) / 2 - margin_mm
    extent = size * np.array(ref.GetSpacing()) + 2 * margin_mm
    n = np.ceil(extent / spacing_mm).astype(int)
    img = sitk.Image([int(v) for v in n], sitk.sitkFloat32)
    img.SetSpacing((spacing_mm,) * 3)
    img.SetOrigin(tuple(float(v) for v in lo + spacing_mm / 2))
    return img


def resample(img: sitk.Image, ref: sitk.Image, nearest: bool = False, default: float = 0.0) -> sitk.Image:
    interp = sitk.sitkNearestNeighbor if nearest else sitk.sitkLinear
    return sitk.Resample(img, ref, sitk.Transform(), interp, default, img.GetPixelID())


def myocardium_mask(labels: np.ndarray, hu_smooth: np.ndarray, heart_value: int, spacing_zyx) -> np.ndarray:
    """The heart wall: the heart label's outer shell, less the contrast-filled chambers."""
    heart = labels == heart_value
    depth = ndimage.distance_transform_edt(heart, sampling=spacing_zyx)
    return heart & (depth <= MYOCARDIUM_SHELL_MM) & (hu_smooth < MYOCARDIUM_MAX_HU) & (hu_smooth > 0)


def base_suv(labels: np.ndarray, hu: np.ndarray, names: dict[str, int], uptake: Uptake,
             spacing_zyx, rng: np.random.Generator) -> np.ndarray:
    """Intrinsic (pre-PSF) SUV of every voxel from its label or, unlabelled, its density."""
    hu_s = ndimage.gaussian_filter(hu, 1.0)
    suv = np.full(labels.shape, SOFT_TISSUE_SUV, dtype=np.float32)
    suv[hu_s < SOFT_HU] = SOFT_TISSUE_SUV
    suv[hu_s < FAT_HU] = FAT_SUV
    suv[hu_s < LUNGLIKE_HU] = UNLABELLED_LUNGLIKE_SUV
    suv[hu_s < AIR_HU] = 0.0
    suv[(hu_s >= SOFT_HU) & (hu_s < CONTRAST_HU)] = uptake.blood_pool  # unlabelled enhancing vessels
    suv[hu_s >= CONTRAST_HU] = BONE_SUV
    lut = np.full(int(labels.max()) + 1, np.nan, dtype=np.float32)
    for name, value in names.items():
        if value >= lut.size:
            continue
        if name.startswith("lung_"):
            lut[value] = LUNG_SUV
        elif name in BLOOD_STRUCTURES or name == "heart":
            lut[value] = uptake.blood_pool
        elif name.startswith(MARROW_STRUCTURES_PREFIX):
            lut[value] = uptake.marrow
        elif name == "sternum":
            lut[value] = uptake.marrow * STERNUM_MARROW_FRACTION
        elif name.startswith(OTHER_BONES_PREFIX):
            lut[value] = BONE_SUV
        elif name == "liver":
            lut[value] = uptake.liver
        elif name in ORGAN_SUV:
            lut[value] = ORGAN_SUV[name]
    labelled = labels > 0
    values = lut[labels[labelled]]
    keep = ~np.isnan(values)
    idx = np.flatnonzero(labelled)[keep]
    suv.flat[idx] = values[keep]
    if "heart" in names:
        suv[myocardium_mask(labels, hu_s, names["heart"], spacing_zyx)] = uptake.myocardium
    if "liver" in names:
        liver = labels == names["liver"]
        field = ndimage.gaussian_filter(rng.standard_normal(labels.shape).astype(np.float32),
                                        LIVER_TEXTURE_SIGMA_MM / spacing_zyx[0])
        field /= max(float(field[liver].std()), 1e-6)
        suv[liver] *= 1.0 + LIVER_TEXTURE_CV * field[liver]
    return suv


def blur(suv: np.ndarray, spacing_mm: float) -> np.ndarray:
    sigma = PET_FWHM_MM / (2 * np.sqrt(2 * np.log(2))) / spacing_mm
    return ndimage.gaussian_filter(suv, sigma, mode="constant").astype(np.float32)


def correlated_noise(shape, rng: np.random.Generator) -> np.ndarray:
    """Unit-variance Gaussian noise correlated over about a PET voxel."""
    n = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), NOISE_CORRELATION_VOXELS)
    return n / max(float(n.std()), 1e-6)


def add_noise(clean: np.ndarray, noise_sd_at_liver: float, liver_suv: float,
              rng: np.random.Generator) -> np.ndarray:
    """Count-like noise: its SD grows as the square root of the signal (set at the liver level)."""
    sd = noise_sd_at_liver * np.sqrt(np.clip(clean, 0, None) / liver_suv)
    return np.clip(clean + sd * correlated_noise(clean.shape, rng), 0.0, None).astype(np.float32)


def liver_cv(suv: np.ndarray, liver_mask: np.ndarray) -> float:
    v = suv[liver_mask]
    return float(v.std() / v.mean()) if v.size else float("nan")


# --- the fused PET/CT renderer ---------------------------------------------------------

CT_WINDOW = (-160.0, 240.0)
RENDER_SUV_MAX = 8.0


def _hot(x: np.ndarray) -> np.ndarray:
    """A black-red-yellow-white colour map on [0, 1]."""
    r = np.clip(3 * x, 0, 1)
    g = np.clip(3 * x - 1, 0, 1)
    b = np.clip(3 * x - 2, 0, 1)
    return np.stack([r, g, b], -1)


def render_fused_axial(ct: sitk.Image, suv: sitk.Image, point_mm, path: str | Path, title: str = "",
                       half_fov_mm: float = 90.0, radius_mm: float = 8.0, suv_max: float = RENDER_SUV_MAX) -> Path:
    """CT and fused PET/CT side by side on the CT slice through `point_mm`, a circle on the point.

    Images are shown as radiologists read them (patient's left on the image's right,
    anterior up), cropped around the point so a station can be judged by eye.
    """
    from PIL import Image, ImageDraw

    ct_arr = sitk.GetArrayViewFromImage(ct)
    idx = ct.TransformPhysicalPointToContinuousIndex([float(v) for v in point_mm])
    k = int(round(idx[2]))
    k = min(max(k, 0), ct_arr.shape[0] - 1)
    sx, sy = ct.GetSpacing()[:2]
    hx, hy = int(half_fov_mm / sx), int(half_fov_mm / sy)
    ci, cj = int(round(idx[0])), int(round(idx[1]))
    j0, j1 = max(cj - hy, 0), min(cj + hy, ct_arr.shape[1])
    i0, i1 = max(ci - hx, 0), min(ci + hx, ct_arr.shape[2])
    hu = ct_arr[k, j0:j1, i0:i1].astype(np.float32)
    grey = np.clip((hu - CT_WINDOW[0]) / (CT_WINDOW[1] - CT_WINDOW[0]), 0, 1)
    jj, ii = np.mgrid[j0:j1, i0:i1]
    o, s = np.array(ct.GetOrigin()), np.array(ct.GetSpacing())
    z = o[2] + k * s[2]
    pts = np.stack([o[0] + ii * s[0], o[1] + jj * s[1], np.full(ii.shape, z)], -1)
    po, ps_ = np.array(suv.GetOrigin()), np.array(suv.GetSpacing())
    pidx = (pts - po) / ps_
    pet = ndimage.map_coordinates(sitk.GetArrayViewFromImage(suv), [pidx[..., 2], pidx[..., 1], pidx[..., 0]],
                                  order=1, mode="constant", cval=0.0)
    frac = np.clip(pet / suv_max, 0, 1)
    alpha = np.clip(frac * 1.5, 0, 0.75)[..., None]
    fused = (1 - alpha) * grey[..., None] + alpha * _hot(frac)
    left = Image.fromarray((np.repeat(grey[..., None], 3, -1) * 255).astype(np.uint8))
    right = Image.fromarray((fused * 255).astype(np.uint8))
    scale = 2
    w, h = left.size
    canvas = Image.new("RGB", (2 * w * scale + 4, h * scale + 16))
    canvas.paste(left.resize((w * scale, h * scale)), (0, 16))
    canvas.paste(right.resize((w * scale, h * scale)), (w * scale + 4, 16))
    d = ImageDraw.Draw(canvas)
    cx, cy = (idx[0] - i0) * scale, (idx[1] - j0) * scale + 16
    r = radius_mm / sx * scale + 4
    for off in (0, w * scale + 4):
        d.ellipse([cx + off - r, cy - r, cx + off + r, cy + r], outline=(0, 255, 0))
    d.text((4, 2), f"{title}  z={z:.1f} mm  PET 0-{suv_max:g} SUV  (R on left)", fill=(255, 255, 0))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path
