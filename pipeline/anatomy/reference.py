"""How close an anatomy comes to a reference label map with TotalSegmentator-v2 names.

Used to measure the classical backend against the LIDC-IDRI-0001 label map (bench
and tests): Dice per structure group, and the distance along z of the landmarks
that the station builder hangs levels on. Structures are compared as groups, since
the backends cut them differently:

- ``lungs``: all lobes against both lungs;
- ``trachea``: TotalSegmentator's trachea runs ~2 cm into the main bronchi, so it
  is compared with our trachea plus main bronchi, down to the reference's lowest slice;
- ``bone``: vertebrae, ribs, sternum and clavicles (no costal cartilage, scapulae or humeri).

Landmarks (z only, since they are levels): the carina, where the reference trachea
first shows two lumens from the top; each lung's apex, its highest slice; the top
of the aortic arch, the aorta's highest slice.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi

from pipeline.anatomy import names as an
from pipeline.anatomy.model import Anatomy, AnatomyError

# Goals of issue 11 for the classical backend on real CT.
DICE_GOALS: dict[str, float] = {
    "lungs": 0.95,
    "trachea": 0.80,
    "esophagus": 0.60,
    "heart": 0.85,
    "aorta": 0.80,
    "liver": 0.85,
    "bone": 0.80,
}
LANDMARK_GOAL_MM = 10.0
LANDMARKS = ("carina", "lung_apex_left", "lung_apex_right", "arch_top")
BIFURCATION_MIN_LUMEN_MM2 = 15.0  # each of the two lumens where the reference trachea splits

_REF_BONE_PREFIXES = ("vertebrae_", "rib_")
_REF_BONE_NAMES = ("sternum", "clavicula_left", "clavicula_right")
_OUR_GROUPS: dict[str, tuple[str, ...]] = {
    "lungs": (an.LUNG_LEFT, an.LUNG_RIGHT),
    "trachea": (an.TRACHEA, an.MAIN_BRONCHUS_LEFT, an.MAIN_BRONCHUS_RIGHT),
    "esophagus": (an.ESOPHAGUS,),
    "heart": (an.HEART,),
    "aorta": (an.AORTA,),
    "liver": (an.LIVER,),
    "bone": (an.BONE,),
}


@dataclass(frozen=True)
class Comparison:
    """Dice per structure group and landmark z error (mm, ours minus reference); None where one side lacks it."""

    dice: dict[str, float | None]
    landmark_dz_mm: dict[str, float | None]
    reference_z_mm: dict[str, float | None] = field(default_factory=dict)

    def misses(self) -> list[str]:
        """Each goal not reached, in words (empty when all are)."""
        out = []
        for k, goal in DICE_GOALS.items():
            v = self.dice.get(k)
            if v is None or v < goal:
                out.append(f"{k}: Dice {v if v is None else round(v, 3)} < {goal}")
        for k in LANDMARKS:
            v = self.landmark_dz_mm.get(k)
            if v is None or abs(v) > LANDMARK_GOAL_MM:
                out.append(f"{k}: |dz| {v if v is None else round(v, 1)} mm > {LANDMARK_GOAL_MM}")
        return out


def dice(a: np.ndarray, b: np.ndarray) -> float:
    s = int(a.sum()) + int(b.sum())
    return 2.0 * float((a & b).sum()) / s if s else 1.0


def _z_mm(img: sitk.Image, k: float) -> float:
    return float(img.TransformContinuousIndexToPhysicalPoint((0.0, 0.0, float(k)))[2])


def _slices_with(mask: np.ndarray) -> np.ndarray:
    return np.nonzero(mask.any(axis=(1, 2)))[0]


def _top_z(mask: np.ndarray, img: sitk.Image) -> float | None:
    ks = _slices_with(mask)
    if ks.size == 0:
        return None
    return max(_z_mm(img, ks[0]), _z_mm(img, ks[-1]))


def bifurcation_z(trachea: np.ndarray, img: sitk.Image) -> float | None:
    """z (mm) where the trachea label first shows two lumens going down from its top."""
    px = img.GetSpacing()[0] * img.GetSpacing()[1]
    ks = _slices_with(trachea)
    order = ks[::-1] if img.GetDirection()[8] > 0 else ks
    for k in order:
        lab, _ = ndi.label(trachea[k])
        sizes = np.bincount(lab.ravel())[1:] * px
        if (sizes >= BIFURCATION_MIN_LUMEN_MM2).sum() >= 2:
            step = 0.5 if img.GetDirection()[8] > 0 else -0.5
            return _z_mm(img, k + step)  # between this slice and the one above
    return None


def compare(anatomy: Anatomy, ref: np.ndarray, ref_names: dict[str, int]) -> Comparison:
    """Compare `anatomy` with a reference label array `ref` (z, y, x) on the same grid as its labels."""
    img = anatomy.labels
    if ref.shape != anatomy.array().shape:
        raise AnatomyError(f"reference shape {ref.shape} differs from the anatomy's {anatomy.array().shape}")

    def ref_mask(*names: str, prefixes: tuple[str, ...] = ()) -> np.ndarray:
        vals = [v for n, v in ref_names.items() if n in names or n.startswith(prefixes or ("\0",))]
        return np.isin(ref, vals)

    ref_groups = {
        "lungs": ref_mask(*an.LUNG_LOBES),
        "trachea": ref_mask(an.TRACHEA),
        "esophagus": ref_mask(an.ESOPHAGUS),
        "heart": ref_mask(an.HEART),
        "aorta": ref_mask(an.AORTA),
        "liver": ref_mask(an.LIVER),
        "bone": ref_mask(*_REF_BONE_NAMES, prefixes=_REF_BONE_PREFIXES),
    }
    out: dict[str, float | None] = {}
    for group, ours_names in _OUR_GROUPS.items():
        masks = [m for m in (anatomy.mask(n) for n in ours_names) if m is not None]
        r = ref_groups[group]
        if not masks or not r.any():
            out[group] = None
            continue
        ours = np.logical_or.reduce(masks)
        if group == "trachea":
            ours = ours.copy()
            ks = _slices_with(r)
            keep = np.zeros(ours.shape[0], bool)
            keep[ks[0] : ks[-1] + 1] = True
            ours &= keep[:, None, None]
        out[group] = dice(ours, r)

    ref_z = {
        "carina": bifurcation_z(ref_groups["trachea"], img),
        "lung_apex_left": _top_z(ref_mask(*an.LEFT_LUNG_LOBES), img),
        "lung_apex_right": _top_z(ref_mask(*an.RIGHT_LUNG_LOBES), img),
        "arch_top": _top_z(ref_groups["aorta"], img),
    }
    aorta = anatomy.mask(an.AORTA)
    our_z = {
        "carina": anatomy.landmarks.get(an.CARINA, (None, None, None))[2],
        "lung_apex_left": anatomy.landmarks.get(an.LUNG_APEX_LEFT, (None, None, None))[2],
        "lung_apex_right": anatomy.landmarks.get(an.LUNG_APEX_RIGHT, (None, None, None))[2],
        "arch_top": _top_z(aorta, img) if aorta is not None else None,
    }
    dz = {k: (None if our_z[k] is None or ref_z[k] is None else float(our_z[k] - ref_z[k])) for k in LANDMARKS}
    return Comparison(dice=out, landmark_dz_mm=dz, reference_z_mm=ref_z)
