"""Reference regions for reading uptake: mediastinal blood pool and the PERCIST liver.

- Blood pool: the descending aorta below the carina, eroded 3 mm against spill-in
  (PERCIST 1.0, Wahl et al., J Nucl Med 2009;50:122S; the Deauville/Lugano
  mediastinal reference is the same structure).
- Liver: PERCIST's 3 cm diameter sphere in the right lobe (Wahl 2009; O JH et al.,
  Radiology 2016;280:576 "Practical PERCIST"). With a liver label the sphere is
  put where it fits deepest inside the right half of the liver; without one, 45 mm
  below the right lung base (a proxy, said so in `source`).

Each region gives mean and SD; the liver's coefficient of variation (SD / mean) is
the usual image-quality check (EANM guideline, Boellaard et al., EJNMMI 2015;42:328:
liver CV under about 10–15 % for a good image); a very noisy image gets a warning.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from pipeline.anatomy import Anatomy
from pipeline.lesions.geometry import an, ball, bbox, below_in_patient, erode, spacing_zyx, superior_sign

BLOOD_POOL_EROSION_MM = 3.0
LIVER_SPHERE_RADIUS_MM = 15.0  # PERCIST: a 3 cm diameter sphere
LIVER_PROXY_BELOW_LUNG_BASE_MM = 45.0
MIN_REFERENCE_VOXELS = 10


@dataclass(frozen=True)
class ReferenceRegion:
    name: str
    suvmean: float | None
    suvsd: float | None
    voxels: int
    source: str  # which mask or proxy it was measured in

    @property
    def cv(self) -> float | None:
        """Coefficient of variation (SD / mean): the image-noise check."""
        if self.suvmean is None or self.suvsd is None or self.suvmean <= 0:
            return None
        return self.suvsd / self.suvmean

    @property
    def percist_threshold(self) -> float | None:
        """PERCIST's measurability threshold: 1.5 x mean + 2 SD (meaningful for the liver)."""
        if self.suvmean is None:
            return None
        return 1.5 * self.suvmean + 2.0 * (self.suvsd or 0.0)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "suvmean": _r(self.suvmean), "suvsd": _r(self.suvsd), "cv": _r(self.cv),
                "voxels": self.voxels, "source": self.source}


def _r(v: float | None, nd: int = 4) -> float | None:
    return None if v is None else round(float(v), nd)


def blood_pool_region(anatomy: Anatomy, suv: np.ndarray, carina_z_index: float | None) -> ReferenceRegion:
    """Mediastinal blood pool: the descending aorta below the carina, eroded 3 mm against spill-in."""
    aorta = anatomy.mask(an.AORTA)
    if aorta is None or not aorta.any():
        return ReferenceRegion("blood_pool", None, None, 0, "not available: the anatomy has no aorta")
    sp = spacing_zyx(anatomy.labels)
    region = aorta.copy()
    trachea = anatomy.mask(an.TRACHEA)
    source = "descending aorta (aorta label"
    if trachea is not None and trachea.any():
        # Posterior to the trachea's centre: the descending part.
        y_trachea = np.nonzero(trachea)[1].mean()
        region[:, : int(y_trachea), :] = False
        source += ", posterior to the trachea"
    if carina_z_index is not None:
        z = np.arange(region.shape[0])[:, None, None]
        region &= below_in_patient(anatomy.labels, z, carina_z_index)
        source += ", below the carina"
    core = erode(region, sp, BLOOD_POOL_EROSION_MM)
    if core.sum() < MIN_REFERENCE_VOXELS:
        core = region
    source += f", eroded {BLOOD_POOL_EROSION_MM:g} mm)"
    if core.sum() < MIN_REFERENCE_VOXELS:
        return ReferenceRegion("blood_pool", None, None, int(core.sum()), "not available: descending aorta too small")
    values = suv[core]
    return ReferenceRegion("blood_pool", float(values.mean()), float(values.std()), int(core.sum()), source)


def _sphere_values(suv: np.ndarray, centre: np.ndarray, sp: np.ndarray, keep: np.ndarray | None) -> np.ndarray:
    b = ball(LIVER_SPHERE_RADIUS_MM, sp)
    lo = np.round(centre).astype(int) - np.array(b.shape) // 2
    sl = tuple(slice(max(l, 0), min(l + s, n)) for l, s, n in zip(lo, b.shape, suv.shape))
    bsl = tuple(slice(s.start - l, s.stop - l) for s, l in zip(sl, lo))
    m = b[bsl] if keep is None else b[bsl] & keep[sl]
    return suv[sl][m]


def liver_region(anatomy: Anatomy, suv: np.ndarray, ct: np.ndarray) -> ReferenceRegion:
    """PERCIST liver reference: a 3 cm sphere in the right lobe (label), else under the right lung base."""
    sp = spacing_zyx(anatomy.labels)
    liver = anatomy.mask(an.LIVER)
    if liver is not None and liver.sum() > 100:
        sl = bbox(liver, 1, liver.shape)
        local = liver[sl]
        # Right lobe: the patient-right half of the liver (LPS x grows to the left, i.e. with the column index
        # when the direction's x is +1).
        xs = np.nonzero(local.any(axis=(0, 1)))[0]
        mid = (xs.min() + xs.max()) / 2.0
        right = local.copy()
        if anatomy.labels.GetDirection()[0] > 0:
            right[:, :, int(mid):] = False
        else:
            right[:, :, : int(mid) + 1] = False
        if right.sum() < 100:
            right = local
        depth = ndimage.distance_transform_edt(right, sampling=sp)
        centre = np.array(np.unravel_index(int(np.argmax(depth)), depth.shape)) + np.array([s.start for s in sl])
        values = _sphere_values(suv, centre, sp, liver)
        if values.size >= 50:
            fits = "" if depth.max() >= LIVER_SPHERE_RADIUS_MM else " (clipped to the liver: it is thinner than 3 cm)"
            return ReferenceRegion("liver", float(values.mean()), float(values.std()), int(values.size),
                                   f"PERCIST 3 cm sphere in the right lobe (liver label){fits}")
    lung = anatomy.mask(an.LUNG_RIGHT)
    if lung is None or not lung.any():
        return ReferenceRegion("liver", None, None, 0, "not available: no liver label and no right lung")
    img = anatomy.labels
    zi, yi, xi = np.nonzero(lung)
    sign = superior_sign(img)
    base = zi.min() if sign > 0 else zi.max()  # most inferior lung slice
    centre = np.array([base - sign * (LIVER_PROXY_BELOW_LUNG_BASE_MM / sp[0]), yi.mean(), xi.mean()])
    if not (0 <= centre[0] < suv.shape[0]):
        return ReferenceRegion("liver", None, None, 0, "not available: the field of view ends at the lung bases")
    values = _sphere_values(suv, centre, sp, (ct > 0) & (ct < 100))
    if values.size < 50:
        return ReferenceRegion("liver", None, None, int(values.size), "not available: no soft tissue under the right lung base")
    return ReferenceRegion("liver", float(values.mean()), float(values.std()), int(values.size),
                           "proxy: 3 cm sphere 45 mm below the right lung base (no liver label)")


def reference_warnings(liver: ReferenceRegion, blood_pool: ReferenceRegion, cv_limit: float) -> list[str]:
    out = []
    if blood_pool.suvmean is None:
        out.append(f"blood pool {blood_pool.source}: node reading falls back to absolute SUV")
    if liver.suvmean is None:
        out.append(f"liver reference {liver.source}")
    elif liver.cv is not None and liver.cv > cv_limit:
        out.append(f"noisy PET: liver reference CV {liver.cv:.0%} (> {cv_limit:.0%}); small or faint foci are "
                   "unreliable")
    return out


def pet_voxel_ml(volumes) -> float:
    pet = getattr(volumes, "suv_pet_grid", None)
    img: sitk.Image = pet if pet is not None else volumes.suv
    return float(np.prod(img.GetSpacing())) / 1000.0
