"""Physiologic and non-nodal uptake, named as a radiologist names it. Such a focus never counts for N.

Each test looks at where the focus's SUV *peak* lies (and, for shape, at the focus
itself), in the order a reader rules things out:

- bone / marrow: the peak in a labelled bone (dilated 2 mm), most of the focus in
  bone, dense bone at the peak (CT > 200 HU averaged over ~3 mm), or cortical bone
  (> 250 HU, on or beside labelled bone: contrast-filled vessels are as dense) within
  25 mm in all four in-plane directions (the marrow space of a vertebra or the
  sternum, even where the bone label misses it);
- joint: the peak within 4 mm of two different labelled bones (the sternoclavicular,
  costovertebral or shoulder joints): degenerative joint uptake;
- larynx / pharynx / neck muscle: the peak above the cricoid (the anatomy's
  ``cricoid`` landmark, else the bottom of ``larynx_pharynx_air``, else the top
  of the trachea), or ≥ 2/3 of the focus above it with the peak within one PET
  FWHM below it (an oblique scalene muscle behind the clavicle) — near the airway
  it is laryngeal/pharyngeal, elsewhere neck muscle; no IASLC station lies above
  the cricoid;
- thyroid: the peak in ``thyroid_gland``;
- myocardial: the peak in the heart (unless it peaks at the label's edge, ≤ 4 mm
  deep, with most of the focus outside and 1.5 × hotter than the heart's 95th
  percentile: a node against the heart, or against a pulmonary artery the label
  counts as heart), or hot myocardium (≥ 75 % of the focus's peak) within 6 mm of
  the focus, the focus peaking at the heart's edge (≤ 4 mm)
  or joined to that myocardium without a valley (never below 85 %) — spill-over
  from the myocardium, or myocardium the heart label missed — unless the focus is 1.5 ×
  hotter than the heart's 95th-percentile SUV (then the focus lights the heart), or, on
  contrast CT, has its own ≥ 10 mm soft-tissue body outside the label (a node); and, however
  hot, a thin sheet of uptake lying on the heart's surface (≥ 80 % within 5 mm of it, at most
  ~1 FWHM thick, ≥ 4 × the volume of its thickest inscribed sphere): the crescent of a
  ventricular wall the label missed, never the round focus of a node;
- esophageal: the peak in the esophageal wall or lumen, or uptake running along
  the esophagus — unless the peak is *focal*, at least 1.3 × the esophageal uptake
  15–30 mm above and below it, with a soft-tissue nodule outside the esophagus
  under it: ≥ 5 mm when the peak is at the wall, ≥ 8 mm when the peak lies inside
  the esophagus itself (a node on the esophagus keeps its own peak and body; a
  focal spot in the esophagus, e.g. distal esophagitis, with only a sliver of
  tissue beside the wall — which PET cannot tell from the wall — stays esophageal);
- vascular: the peak inside a labelled great vessel (eroded 2 mm) with most of the
  focus in vessels;
- brown fat: the peak in fat density (−150 to −50 HU on CT smoothed to PET
  resolution over the tissue no structure label claims: an enhanced aorta or a
  vertebra beside paravertebral brown fat would otherwise lift it into soft-tissue
  range) with no soft-tissue nodule under it (none ≥ 5 mm, or fat at the peak voxel
  itself);
- linear: uptake much longer craniocaudally than wide, away from the esophagus:
  along a vessel or a muscle, not nodal.

Afterwards, once the grade is known (`detect`): a station-1 focus of equivocal grade,
≥ 30 mm from the midline, with uptake as hot (0.75–1.33 ×) within 15 mm of its mirror
point across the trachea, is bilateral muscle or brown fat (`symmetric_uptake`): the
neck rule has no level to go by when the scan starts below the cricoid.

Below the diaphragm (`classify`) a focus in liver, spleen, kidney, stomach or bowel
is physiologic too; elsewhere there it is distant and not staged here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from pipeline.anatomy import Anatomy
from pipeline.anatomy.model import is_bone_label
from pipeline.lesions.geometry import an, spacing_zyx, superior_sign, union_mask
from pipeline.study_result import PhysiologicSite

BONE = "bone"
HEART = "heart"
ESOPHAGUS = "esophagus"
THYROID = "thyroid_gland"
LARYNX_AIR = "larynx_pharynx_air"
CRICOID = "cricoid"
VESSELS = ("aorta", "superior_vena_cava", "brachiocephalic_vein_left", "brachiocephalic_vein_right",
           "pulmonary_artery", "brachiocephalic_trunk", "common_carotid_artery_left",
           "common_carotid_artery_right", "subclavian_artery_left", "subclavian_artery_right")
AIR_NAMED = ("trachea", "main_bronchus_left", "main_bronchus_right", "bronchus_intermedius", "lung_left",
             "lung_right", "lung_airways", "larynx_pharynx_air", *an.LUNG_LOBES)
ABDOMINAL_ORGANS = ("liver", "spleen", "kidney_left", "kidney_right", "stomach", "small_bowel", "colon",
                    "duodenum", "pancreas", "adrenal_gland_left", "adrenal_gland_right", "gallbladder")

DENSE_BONE_HU = 200.0
BONE_REACH_MM = 2.0
CORTEX_HU = 250.0
MARROW_REACH_MM = 25.0
MARROW_ENCLOSED_SIDES = 4  # bone on every side in-plane: the marrow space (a node beside bone has it on one)
CORTEX_LABEL_REACH_MM = 3.0  # dense CT this close to labelled bone is cortex; farther off it is contrast
CONTRAST_BLOOD_HU = 150.0  # aortic blood denser than this: an IV-contrast CT
FAT_HU = (-150.0, -50.0)
BROWN_FAT_MAX_SOFT_TISSUE_MM = 5.0
FAT_AT_PEAK_HU = -30.0  # mean CT within 2 mm of the peak below this: the peak sits in fat
FAT_AT_PEAK_RADIUS_MM = 2.0  # a soft-tissue body at least this wide under the focus is a node, not fat
MYOCARDIUM_REACH_MM = 6.0  # about one PET FWHM
MYOCARDIUM_HOT_FRACTION = 0.75
MYOCARDIUM_PEAK_REACH_MM = 4.0  # a focus peaking this close to the heart peaks at its edge: spill-over
MYOCARDIUM_NO_VALLEY = 0.85  # SUV on the way to the myocardium never below this share of the lower end: contiguous
MYOCARDIUM_HOTTER_THAN_HEART = 1.5  # a focus this much hotter than the rest of the myocardium is not myocardium
MYOCARDIUM_FOCUS_IN_HEART = 0.5  # a focus mostly outside the heart label, peaking at its edge, may be a node
MYOCARDIUM_SHEET_REACH_MM = 5.0  # a sheet of uptake this close to the heart lies on its surface
MYOCARDIUM_SHEET_FRACTION = 0.8  # ... with at least this share of its voxels there
MYOCARDIUM_SHEET_MAX_HALF_MM = 5.0  # thinner than about one PET FWHM (a node's focus is as thick as it is wide)
MYOCARDIUM_NODE_MIN_MM = 10.0  # on contrast CT, a soft-tissue body this wide outside the heart label is a node
THROUGH_HEART_MAX_MM = 12.0  # a node the heart label took in lies at most this deep in it ...
THROUGH_HEART_MAX_SHARE = 2.0  # ... and the part taken back is at most this many times the part outside
MYOCARDIUM_SHEET_RATIO = 4.0  # and at least this many times the volume of the thickest sphere it holds
JOINT_REACH_MM = 4.0  # a peak this close to two different bones lies in the joint between them
ESOPHAGUS_WALL_MM = 2.0
ESOPHAGUS_NEAR_MM = 5.0
ESOPHAGUS_FOCAL_RATIO = 1.3
ESOPHAGUS_BACKGROUND_MM = (15.0, 30.0)
ESOPHAGUS_NODULE_MIN_MM = 5.0  # a focal spot is a node only with a soft-tissue nodule this wide outside the esophagus
ESOPHAGUS_NODULE_MIN_MM_PEAK_INSIDE = 8.0  # ... this wide when the peak lies inside the esophagus label
ESOPHAGUS_TAIL_FRACTION = 0.3  # a focus with this share near the esophagus may carry esophageal tails
ESOPHAGUS_GAS_REACH_MM = 6.0
ESOPHAGUS_GAS_MIN_VOXELS = 3
GAS_HU = -400.0
AIR_RIM_MM = 3.0
VESSEL_EROSION_MM = 2.0
VESSEL_MIN_FRACTION = 0.6
AIRWAY_NEAR_MM = 20.0
LINEAR_RATIO = 2.5
LINEAR_MIN_LENGTH_MM = 30.0
NECK_BODY_FRACTION = 2.0 / 3.0  # a focus with this share of its body above the cricoid ...
NECK_BODY_PEAK_REACH_FWHM = 1.0  # ... and its peak at most this many PET FWHM below it is a neck focus
SYMMETRY_REACH_MM = 15.0  # the mirror focus lies within this of the peak mirrored across the midline (~2 FWHM)
SYMMETRY_MIN_RATIO = 0.75  # ... with an SUVmax between this and its inverse times the focus's peak
SYMMETRY_MIN_LATERAL_MM = 30.0  # ... for a focus this far from the midline (beyond the trachea and thyroid)
SYMMETRY_MIDLINE_REACH_MM = 20.0  # the trachea's slice nearest the peak, within this, gives the midline


@dataclass
class Physiology:
    """Full-volume masks and landmarks the tests need, computed once per study."""

    anatomy: Anatomy
    ct: np.ndarray
    suv: np.ndarray
    spacing: np.ndarray
    pet_fwhm_mm: float
    masks: dict[str, np.ndarray | None] = field(default_factory=dict)
    cricoid_index: float | None = None
    cricoid_source: str = ""
    bone_labels: dict[int, str] = field(default_factory=dict)  # label value -> name, per bone (joint test)
    heart_p95: float | None = None  # the myocardium's own uptake, for telling it from a focus that lights the heart
    contrast_ct: bool = False  # blood is as dense as cortex (IV contrast): dense CT alone does not mean bone

    @classmethod
    def build(cls, anatomy: Anatomy, ct: np.ndarray, suv: np.ndarray, pet_fwhm_mm: float) -> "Physiology":
        ctx = cls(anatomy, ct, suv, spacing_zyx(anatomy.labels), pet_fwhm_mm)
        for name in (BONE, HEART, ESOPHAGUS, THYROID, LARYNX_AIR):
            m = anatomy.mask(name)
            ctx.masks[name] = m if m is not None and m.any() else None
        ctx.masks["vessels"] = union_mask(anatomy, VESSELS)
        ctx.masks["air_named"] = union_mask(anatomy, AIR_NAMED)  # lung and airways: their gas is not esophageal
        ctx.cricoid_index, ctx.cricoid_source = _cricoid_index(anatomy, ctx.masks[LARYNX_AIR])
        ctx.bone_labels = {int(v): n for n, v in anatomy.names.items() if is_bone_label(n)}
        trachea = anatomy.mask(an.TRACHEA)
        ctx.masks["trachea"] = trachea if trachea is not None and trachea.any() else None
        heart = ctx.masks[HEART]
        ctx.heart_p95 = float(np.percentile(np.asarray(suv)[heart], 95)) if heart is not None else None
        aorta = anatomy.mask(an.AORTA)
        if aorta is not None and aorta.any():
            ctx.contrast_ct = float(np.median(np.asarray(ct)[aorta])) > CONTRAST_BLOOD_HU
        return ctx

    def mask(self, name: str) -> np.ndarray | None:
        return self.masks.get(name)


def _cricoid_index(anatomy: Anatomy, larynx_air: np.ndarray | None) -> tuple[float | None, str]:
    img = anatomy.labels
    if CRICOID in anatomy.landmarks:
        idx = img.TransformPhysicalPointToContinuousIndex([float(c) for c in anatomy.landmarks[CRICOID]])
        return float(idx[2]), "the cricoid landmark"
    sign = superior_sign(img)
    if larynx_air is not None:
        ks = np.nonzero(larynx_air.any(axis=(1, 2)))[0]
        return float(ks.min() if sign > 0 else ks.max()), "the bottom of the laryngeal air column"
    trachea = anatomy.mask(an.TRACHEA)
    if trachea is not None and trachea.any():
        ks = np.nonzero(trachea.any(axis=(1, 2)))[0]
        return float(ks.max() if sign > 0 else ks.min()), "the top of the trachea (no cricoid landmark)"
    return None, ""


def _local(mask: np.ndarray | None, sl) -> np.ndarray | None:
    return None if mask is None else mask[sl]


def physiologic_site(ctx: Physiology, sl: tuple[slice, ...], focus: np.ndarray, peak: tuple[int, int, int],
                     peak_suv: float, soft_tissue_mm: float, central_mass: bool = False
                     ) -> tuple[PhysiologicSite, str] | None:
    """The physiologic site of a focus (crop `sl`, local mask `focus`, global peak index), or None."""
    sp = ctx.spacing
    lp = tuple(int(p - s.start) for p, s in zip(peak, sl))
    ct = ctx.ct[sl]
    suv = ctx.suv[sl]
    hu_at_peak = _mean_around(ct, lp, 1)

    bone = _local(ctx.mask(BONE), sl)
    if bone is not None and bone.any():
        d_bone = ndimage.distance_transform_edt(~bone, sampling=sp)[lp]
        frac = float(bone[focus].mean())
        if d_bone <= BONE_REACH_MM or frac >= 0.5:
            return PhysiologicSite.BONE_MARROW, (f"bone/marrow: the peak is {'in' if d_bone == 0 else 'at'} "
                                                 f"a labelled bone ({frac:.0%} of the focus in bone)")
    if hu_at_peak > DENSE_BONE_HU:
        return PhysiologicSite.BONE_MARROW, f"bone/marrow: dense bone at the peak ({hu_at_peak:.0f} HU)"
    sides = _cortex_around(ctx, peak)
    if sides >= MARROW_ENCLOSED_SIDES:
        return PhysiologicSite.BONE_MARROW, (f"bone/marrow: the peak is enclosed by cortical bone ({sides} of 4 "
                                             "in-plane directions), i.e. in the marrow space")

    joint = _joint_between(ctx, peak)
    if joint:
        return PhysiologicSite.JOINT, (f"joint: the peak lies between the {joint[0]} and the {joint[1]} (within "
                                       f"{JOINT_REACH_MM:g} mm of both): degenerative joint uptake, not nodal")

    above = _above_cricoid(ctx, sl, focus, peak)
    if above:
        air = _local(ctx.mask(LARYNX_AIR), sl)
        near_air = air is not None and air.any() and \
            ndimage.distance_transform_edt(~air, sampling=sp)[lp] <= AIRWAY_NEAR_MM
        if near_air or (air is None and _near_midline_airway(ctx, peak)):
            return PhysiologicSite.LARYNGEAL_PHARYNGEAL, (f"laryngeal/pharyngeal: {above}, beside the airway; "
                                                          "no nodal station lies there")
        return PhysiologicSite.MUSCLE, (f"neck {above}, away from the airway: muscle or other cervical "
                                        "tissue; no nodal (N) station lies there")

    thyroid = _local(ctx.mask(THYROID), sl)
    if thyroid is not None and thyroid[lp]:
        return PhysiologicSite.THYROID, "thyroid: the peak is in the thyroid gland"

    myo = _myocardial(ctx, sl, focus, lp, peak_suv, soft_tissue_mm)
    if myo:
        return PhysiologicSite.MYOCARDIAL, myo

    linear = _is_linear(focus, sp)
    focal_on_esophagus = False
    if not central_mass:
        eso = _local(ctx.mask(ESOPHAGUS), sl)
        in_wall = along = False
        if eso is not None and eso.any():
            d_eso = ndimage.distance_transform_edt(~eso, sampling=sp)
            in_wall = d_eso[lp] <= ESOPHAGUS_WALL_MM
            along = linear and float((d_eso[focus] <= ESOPHAGUS_NEAR_MM).mean()) >= 0.5
        gas = _esophageal_gas_near(ctx, sl, lp)
        if in_wall or along or gas:
            background = _esophageal_background(ctx, peak)
            if background is None or peak_suv < ESOPHAGUS_FOCAL_RATIO * background:
                where = ("in the esophageal wall or lumen" if in_wall else "running along the esophagus" if along
                         else "beside gas in the esophageal lumen")
                bg = "" if background is None else f", not focal (esophagus 15-30 mm away: SUV {background:.1f})"
                return PhysiologicSite.ESOPHAGEAL, f"esophageal: the peak is {where}{bg}"
            peak_inside = eso is not None and bool(eso[lp])
            nodule_min = ESOPHAGUS_NODULE_MIN_MM_PEAK_INSIDE if peak_inside else ESOPHAGUS_NODULE_MIN_MM
            if soft_tissue_mm < nodule_min:
                inside = "inside the esophagus " if peak_inside else ""
                return PhysiologicSite.ESOPHAGEAL, (f"esophageal: focal uptake {inside}(SUV {peak_suv:.1f}, "
                                                    f"{peak_suv / background:.1f}x the esophagus 15-30 mm away) "
                                                    f"with no soft-tissue nodule of {nodule_min:g} mm beside it "
                                                    f"({soft_tissue_mm:.0f} mm)")
            focal_on_esophagus = True

    vessels = _local(ctx.mask("vessels"), sl)
    if vessels is not None and vessels.any() and not central_mass:
        core = ndimage.distance_transform_edt(vessels, sampling=sp)
        if core[lp] > VESSEL_EROSION_MM and float(vessels[focus].mean()) >= VESSEL_MIN_FRACTION:
            return PhysiologicSite.VASCULAR, "vascular: the peak and most of the focus lie inside a great vessel"

    # The peak's own neighbourhood is fat (not a nodule, and not lung: a tumour's lung edge also smooths to -100).
    hu_here = _mean_within(ct, lp, sp, FAT_AT_PEAK_RADIUS_MM)
    peak_in_fat = FAT_HU[0] <= hu_here < FAT_AT_PEAK_HU
    tissue_hu = _smoothed_hu(ctx, peak)
    if not central_mass and FAT_HU[0] <= tissue_hu <= FAT_HU[1] and (
            soft_tissue_mm < BROWN_FAT_MAX_SOFT_TISSUE_MM or peak_in_fat):
        return PhysiologicSite.BROWN_FAT, (f"brown fat: the peak is in fat density ({tissue_hu:.0f} HU "
                                           "at PET resolution) with no soft-tissue nodule under it")
    if linear and not central_mass and not focal_on_esophagus:
        return PhysiologicSite.VASCULAR, (f"linear uptake, longer craniocaudally than {LINEAR_RATIO:g}x its width: "
                                          "along a vessel or muscle, not nodal")
    return None


def _above_cricoid(ctx: Physiology, sl, focus: np.ndarray, peak: tuple[int, int, int]) -> str | None:
    """Where the focus lies above the cricoid (a phrase for the reason), or None.

    The peak decides, except just below the cricoid: a focus whose body lies mostly above it
    and whose peak is within one PET FWHM below it (partial volume, or an oblique muscle
    such as the scalenes running down behind the clavicle) is a neck focus. A station-1
    node lies below the cricoid with its body; one mostly above it is a cervical node.
    """
    if ctx.cricoid_index is None:
        return None
    sign = superior_sign(ctx.anatomy.labels)
    if (peak[0] - ctx.cricoid_index) * sign > 0:
        return f"above {ctx.cricoid_source}"
    below_mm = abs(peak[0] - ctx.cricoid_index) * ctx.spacing[0]
    if below_mm > ctx.pet_fwhm_mm * NECK_BODY_PEAK_REACH_FWHM:
        return None
    ks = np.nonzero(focus)[0] + sl[0].start
    share = float(((ks - ctx.cricoid_index) * sign > 0).mean())
    if share < NECK_BODY_FRACTION:
        return None
    return (f"{share:.0%} of the focus above {ctx.cricoid_source} (its peak {below_mm:.0f} mm below it, "
            "within the PET's resolution)")


def _cortex_around(ctx: Physiology, peak: tuple[int, int, int]) -> int:
    """In how many of the 4 in-plane directions cortical bone lies within reach of the peak.

    Contrast-filled blood (aorta, pulmonary arteries, heart) is as dense as cortex, and a
    hilar node sits among such vessels on every side; so where the anatomy labels bone,
    only dense voxels within `CORTEX_LABEL_REACH_MM` of that bone count as cortex (the
    label may miss a marrow space, not the cortex around it). Without a bone label, CT alone.
    Judged on the whole slice: a focus's crop may end before the reach.
    """
    spacing, bone = ctx.spacing, ctx.mask(BONE)
    k, j, i = peak
    dense = np.asarray(ctx.ct[k]) > CORTEX_HU
    if ctx.contrast_ct and bone is not None and bone.any():
        near_bone = ndimage.binary_dilation(bone[k], iterations=max(int(round(CORTEX_LABEL_REACH_MM / spacing[1])), 1))
        dense &= near_bone
    reach = int(np.ceil(MARROW_REACH_MM / spacing[1]))
    rays = (dense[j + 1: j + 1 + reach, i], dense[max(j - reach, 0): j, i],
            dense[j, i + 1: i + 1 + reach], dense[j, max(i - reach, 0): i])
    return sum(bool(r.any()) for r in rays)


def _mean_within(arr: np.ndarray, p, spacing: np.ndarray, radius_mm: float) -> float:
    """Mean within radius_mm of a voxel (at least the voxel itself), whatever the grid."""
    r = np.floor(radius_mm / spacing).astype(int)
    sl = tuple(slice(max(c - k, 0), c + k + 1) for c, k in zip(p, r))
    return float(np.mean(arr[sl]))


def _mean_around(arr: np.ndarray, p: tuple[int, int, int], r: int) -> float:
    sl = tuple(slice(max(c - r, 0), c + r + 1) for c in p)
    return float(np.mean(arr[sl]))


CLAIMED_MASKS = (BONE, HEART, ESOPHAGUS, THYROID, "vessels", "air_named", "trachea")


def _smoothed_hu(ctx: Physiology, peak: tuple[int, int, int]) -> float:
    """CT at the peak smoothed to the PET's resolution (a Gaussian of its FWHM), over the tissue
    that no structure label claims (a normalised convolution); the plain smoothed CT where labels
    claim the whole neighbourhood. The question is what tissue the focus sits in, not what lies beside it."""
    sigma = ctx.pet_fwhm_mm / 2.3548 / ctx.spacing
    r = np.ceil(3 * sigma).astype(int)
    sl = tuple(slice(max(c - k, 0), c + k + 1) for c, k in zip(peak, r))
    at = tuple(int(c - s.start) for c, s in zip(peak, sl))
    ct = np.asarray(ctx.ct[sl], np.float32)
    free = np.ones(ct.shape, np.float32)
    for name in CLAIMED_MASKS:
        m = ctx.mask(name)
        if m is not None:
            free[np.asarray(m[sl])] = 0.0
    weight = ndimage.gaussian_filter(free, sigma, mode="nearest")[at]
    if weight < 0.05:
        return float(ndimage.gaussian_filter(ct, sigma, mode="nearest")[at])
    return float(ndimage.gaussian_filter(ct * free, sigma, mode="nearest")[at] / weight)


def _near_midline_airway(ctx: Physiology, peak: tuple[int, int, int]) -> bool:
    """Without a laryngeal label: within reach of the trachea's top (in-plane), i.e. around the larynx."""
    trachea = ctx.mask("trachea")
    if trachea is None:
        return False
    ks = np.nonzero(trachea.any(axis=(1, 2)))[0]
    top = ks.max() if superior_sign(ctx.anatomy.labels) > 0 else ks.min()
    yx = np.argwhere(trachea[top]).mean(axis=0)
    d = np.hypot((peak[1] - yx[0]) * ctx.spacing[1], (peak[2] - yx[1]) * ctx.spacing[2])
    return bool(d <= AIRWAY_NEAR_MM + 10.0)


def _myocardial(ctx: Physiology, sl, focus: np.ndarray, lp, peak_suv: float, soft_tissue_mm: float) -> str | None:
    heart = _local(ctx.mask(HEART), sl)
    if heart is None or not heart.any():
        return None
    sp = ctx.spacing
    own = _heart_uptake_away_from(ctx, tuple(int(p + s.start) for p, s in zip(lp, sl)))
    much_hotter = own is not None and peak_suv > MYOCARDIUM_HOTTER_THAN_HEART * own
    if heart[lp]:
        depth = ndimage.distance_transform_edt(heart, sampling=sp)[lp]
        frac = float(heart[focus].mean())
        if not (much_hotter and depth <= MYOCARDIUM_PEAK_REACH_MM and frac < MYOCARDIUM_FOCUS_IN_HEART):
            return "myocardial: the peak is in the heart"
        # A node against the heart (or a PA the label counts as heart): it peaks at the label's
        # edge, lies mostly outside it and is far hotter than any myocardium; judged as beside it.
    d_heart = ndimage.distance_transform_edt(~heart, sampling=sp)
    if d_heart[lp] <= MYOCARDIUM_PEAK_REACH_MM and _sheet_on_surface(focus, d_heart, sp):
        return ("myocardial: a thin sheet of uptake lying along the heart's surface (the crescent of a "
                "ventricular wall outside the heart label), not the round focus of a node")
    near_focus = ndimage.distance_transform_edt(~focus, sampling=sp) <= MYOCARDIUM_REACH_MM
    hot_heart = heart & near_focus
    if not hot_heart.any():
        return None
    suv = np.asarray(ctx.suv[sl])
    hot_at = np.unravel_index(int(np.argmax(np.where(hot_heart, suv, -np.inf))), suv.shape)
    hot = float(suv[hot_at])
    if much_hotter:
        return None  # hotter than the myocardium anywhere else: the heart beside it is lit by the focus itself
    if hot < MYOCARDIUM_HOT_FRACTION * peak_suv:
        return None
    if ctx.contrast_ct and not heart[lp] and soft_tissue_mm >= MYOCARDIUM_NODE_MIN_MM:
        # On contrast CT a node against the heart is its own round soft-tissue body outside the label
        # (the chambers are blood-bright): PSF spill-in from hot myocardium pulls its peak toward the
        # heart, but spill-over into fat, or a wall strip, has no such body. Unenhanced CT cannot tell.
        return None
    if d_heart[lp] <= MYOCARDIUM_PEAK_REACH_MM:
        return (f"myocardial: the peak is at the heart's edge ({d_heart[lp]:.0f} mm) beside myocardium of SUV "
                f"{hot:.1f}: spill-over or myocardium outside the heart label")
    valley = _path_minimum(suv, lp, hot_at, sp)
    if valley >= MYOCARDIUM_NO_VALLEY * min(peak_suv, hot):
        return (f"myocardial: contiguous with hot myocardium (SUV {hot:.1f}) with no valley between "
                f"(lowest {valley:.1f} on the way)")
    return None


def _sheet_on_surface(focus: np.ndarray, d_heart: np.ndarray, sp: np.ndarray) -> bool:
    """Mostly within reach of the heart, thin, and spread along it: myocardium, whatever its SUV."""
    if float((d_heart[focus] <= MYOCARDIUM_SHEET_REACH_MM).mean()) < MYOCARDIUM_SHEET_FRACTION:
        return False
    half = float(ndimage.distance_transform_edt(focus, sampling=sp).max())
    if half > MYOCARDIUM_SHEET_MAX_HALF_MM:
        return False
    sphere_mm3 = 4.0 / 3.0 * np.pi * half ** 3
    return float(focus.sum() * np.prod(sp)) >= MYOCARDIUM_SHEET_RATIO * sphere_mm3


def _joint_between(ctx: Physiology, peak: tuple[int, int, int]) -> tuple[str, str] | None:
    """The two nearest different bones, when the peak lies within reach of both: a joint."""
    if len(ctx.bone_labels) < 2:
        return None
    sp = ctx.spacing
    r = np.ceil(JOINT_REACH_MM / sp).astype(int)
    sl = tuple(slice(max(c - k, 0), c + k + 1) for c, k in zip(peak, r))
    labels = np.asarray(ctx.anatomy.array()[sl])
    offsets = (np.argwhere(np.ones(labels.shape, bool)) + [s.start for s in sl] - np.asarray(peak)) * sp
    dist = np.sqrt((offsets ** 2).sum(axis=1)).reshape(labels.shape)
    near = {ctx.bone_labels[int(v)]: float(dist[labels == v].min())
            for v in np.unique(labels) if int(v) in ctx.bone_labels}
    within = sorted((d, n) for n, d in near.items() if d <= JOINT_REACH_MM)
    return (within[0][1], within[1][1]) if len(within) >= 2 else None


def _path_minimum(suv: np.ndarray, a, b, spacing: np.ndarray) -> float:
    """The lowest SUV on the straight line between two voxels (1 mm steps, linear interpolation)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    n = max(int(np.ceil(np.linalg.norm((b - a) * spacing))), 2)
    pts = a[:, None] + (b - a)[:, None] * np.linspace(0.0, 1.0, n + 1)[None, :]
    return float(ndimage.map_coordinates(suv, pts, order=1, mode="nearest").min())


def _heart_uptake_away_from(ctx: Physiology, peak: tuple[int, int, int]) -> float | None:
    """The myocardium's own uptake: the heart's 95th percentile SUV (a focus beside it lights only a corner)."""
    return ctx.heart_p95


def _esophageal_gas_near(ctx: Physiology, sl, lp) -> bool:
    """Gas within a few mm of the peak that is no airway or lung: the esophageal lumen (no label needed)."""
    r = np.ceil(ESOPHAGUS_GAS_REACH_MM / ctx.spacing).astype(int)
    box = tuple(slice(max(c - k, 0), c + k + 1) for c, k in zip(lp, r))
    gas = np.asarray(ctx.ct[sl][box]) < GAS_HU
    if not gas.any():
        return False
    air = _local(ctx.mask("air_named"), sl)
    if air is not None:  # gas of the lung or airways, and the partial-volume rim within 3 mm of it, is not the lumen
        near_air = ndimage.binary_dilation(air[box], iterations=int(np.ceil(AIR_RIM_MM / ctx.spacing.min())))
        gas &= ~near_air
    return int(gas.sum()) >= ESOPHAGUS_GAS_MIN_VOXELS


def _esophageal_background(ctx: Physiology, peak: tuple[int, int, int]) -> float | None:
    """The esophagus's own uptake 15–30 mm above and below the peak (the higher side)."""
    eso = ctx.mask(ESOPHAGUS)
    if eso is None:
        return None
    dz = ctx.spacing[0]
    lo, hi = (int(round(v / dz)) for v in ESOPHAGUS_BACKGROUND_MM)
    sides = []
    for sign in (-1, 1):
        ks = [peak[0] + sign * k for k in range(lo, hi + 1) if 0 <= peak[0] + sign * k < eso.shape[0]]
        vals = [float(ctx.suv[k][eso[k]].max()) for k in ks if eso[k].any()]
        if vals:
            sides.append(max(vals))
    return max(sides) if sides else None


def node_apart_from_esophagus(ctx: Physiology, sl, focus: np.ndarray, peak: tuple[int, int, int],
                              peak_suv: float) -> np.ndarray | None:
    """A node's own focus, cut from the esophageal uptake its region runs into (or None: nothing to cut).

    Splitting at peaks hands a node on the esophagus the whole esophageal column above and below
    it (ACRIN-042's subcarinal node: a 75 mm "node"). The node is the part hotter than the
    esophagus's own uptake 15–30 mm away, connected to its peak; the tails are esophagus.
    """
    eso = _local(ctx.mask(ESOPHAGUS), sl)
    if eso is None or not eso.any():
        return None
    near = ndimage.distance_transform_edt(~eso, sampling=ctx.spacing) <= ESOPHAGUS_NEAR_MM
    if float(near[focus].mean()) < ESOPHAGUS_TAIL_FRACTION:
        return None
    background = _esophageal_background(ctx, peak)
    if background is None or peak_suv < ESOPHAGUS_FOCAL_RATIO * background:
        return None
    own = focus & (np.asarray(ctx.suv[sl]) > background)
    lab, _ = ndimage.label(own)
    lp = tuple(int(p - s.start) for p, s in zip(peak, sl))
    if lab[lp] == 0:
        return None
    core = lab == lab[lp]
    return core if core.sum() < focus.sum() else None


def node_against_heart(ctx: Physiology, sl, focus: np.ndarray, peak: tuple[int, int, int],
                       soft_tissue_mm: float) -> bool:
    """A focus judged a node (not myocardium) that peaks at the heart label's edge, with its own
    soft-tissue body there, on contrast CT: the label may have taken in the rest of the node."""
    heart = ctx.mask(HEART)
    if not ctx.contrast_ct or heart is None or soft_tissue_mm < MYOCARDIUM_NODE_MIN_MM:
        return False
    lp = tuple(int(p - s.start) for p, s in zip(peak, sl))
    d = ndimage.distance_transform_edt(~heart[sl], sampling=ctx.spacing)
    return bool(d[lp] <= MYOCARDIUM_PEAK_REACH_MM)


def node_into_heart(ctx: Physiology, sl, focus: np.ndarray, peak: tuple[int, int, int],
                    threshold: float) -> np.ndarray | None:
    """The node's focus with the part of it the heart label took in (or None: nothing taken in).

    Candidates are cut at the heart label (its uptake is physiologic), so a node pressed
    against the heart that the classical label swallowed (it holds all soft tissue joined to
    the heart) keeps only a crescent outside it, peaking at the label's edge: a wrong outline,
    and a peak that misses the node's station. On contrast CT the node is told from the heart
    by its density: the part taken back is the heart-label uptake above the threshold that is
    not blood (under CONTRAST_BLOOD_HU) and belongs to the node's own SUV peak (the watershed
    basin the focus's peak climbs into), within THROUGH_HEART_MAX_MM of the label's edge.
    Nothing is taken back when that basin is bigger than the node outside (hot myocardium).
    """
    heart = _local(ctx.mask(HEART), sl)
    if heart is None or not heart.any() or not np.isfinite(threshold):
        return None
    sp = ctx.spacing
    suv = np.asarray(ctx.suv[sl], np.float32)
    ct = np.asarray(ctx.ct[sl])
    depth = ndimage.distance_transform_edt(heart, sampling=sp)
    takeable = heart & (suv >= threshold) & (ct > FAT_HU[1]) & (ct < CONTRAST_BLOOD_HU) \
        & (depth <= THROUGH_HEART_MAX_MM)
    region = focus | takeable
    lab, _ = ndimage.label(region)
    lp = tuple(int(p - s.start) for p, s in zip(peak, sl))
    region = lab == lab[lp]
    if not (region & heart).any():
        return None
    from skimage.segmentation import watershed

    footprint = ndimage.generate_binary_structure(3, 1)
    local_max = (suv == ndimage.maximum_filter(np.where(region, suv, -np.inf), footprint=footprint)) & region
    markers, _ = ndimage.label(local_max)
    basins = watershed(-suv, markers, mask=region, connectivity=1)
    taken = (basins == basins[lp]) & heart & region
    if not taken.any() or taken.sum() > focus.sum() * THROUGH_HEART_MAX_SHARE:
        return None
    return focus | taken


@dataclass(frozen=True)
class MirrorUptake:
    """Uptake across the midline from a focus: where it was looked for, and how hot it is."""

    lateral_mm: float  # the focus's peak from the midline (the trachea's centre)
    mirror_suvmax: float  # the hottest voxel within SYMMETRY_REACH_MM of the mirrored peak
    ratio: float  # mirror_suvmax / the focus's peak SUV


def symmetric_uptake(ctx: Physiology, peak: tuple[int, int, int], peak_suv: float) -> MirrorUptake | None:
    """The matching uptake on the other side of the neck or thoracic inlet, or None.

    Bilateral, symmetric, low-grade uptake in the lower neck and supraclavicular fossae
    is muscle (scalenes, trapezius, tense or shivering patients) or brown fat; a node is
    one-sided. The midline is the trachea's centre in the peak's slice; the mirror is
    looked for within ~2 PET FWHM (bodies are not exactly symmetric) and must be as hot
    as the focus to within SYMMETRY_MIN_RATIO either way (a far hotter mirror is a lesion
    of its own, not the same tissue). The caller decides where and for which grade this
    applies: it does not tell muscle from a node bilaterally involved.
    """
    trachea = ctx.mask("trachea")
    if trachea is None or peak_suv <= 0:
        return None
    sp = ctx.spacing
    ks = np.nonzero(trachea.any(axis=(1, 2)))[0]
    k = int(ks[np.argmin(np.abs(ks - peak[0]))])
    if abs(k - peak[0]) * sp[0] > SYMMETRY_MIDLINE_REACH_MM:
        return None
    mid_x = float(np.nonzero(trachea[k])[1].mean())
    lateral_mm = abs(peak[2] - mid_x) * sp[2]
    if lateral_mm < SYMMETRY_MIN_LATERAL_MM:
        return None
    mirror = (peak[0], peak[1], int(round(2 * mid_x - peak[2])))
    r = np.ceil(SYMMETRY_REACH_MM / sp).astype(int)
    sl = tuple(slice(max(c - k_, 0), min(c + k_ + 1, n)) for c, k_, n in zip(mirror, r, ctx.suv.shape))
    if any(s.start >= s.stop for s in sl):
        return None
    grid = np.ogrid[sl]
    ball = sum(((g - c) * d) ** 2 for g, c, d in zip(grid, mirror, sp)) <= SYMMETRY_REACH_MM ** 2
    values = np.asarray(ctx.suv[sl])[ball]
    if values.size == 0:
        return None
    m = float(values.max())
    ratio = m / peak_suv
    if not SYMMETRY_MIN_RATIO <= ratio <= 1.0 / SYMMETRY_MIN_RATIO:
        return None
    return MirrorUptake(lateral_mm, m, ratio)


def symmetric_site(ctx: Physiology, peak: tuple[int, int, int]) -> PhysiologicSite:
    """Brown fat where the peak sits in fat density at PET resolution, otherwise muscle."""
    return PhysiologicSite.BROWN_FAT if FAT_HU[0] <= _smoothed_hu(ctx, peak) <= FAT_HU[1] else PhysiologicSite.MUSCLE


def _is_linear(focus: np.ndarray, spacing: np.ndarray) -> bool:
    """Much longer craniocaudally than wide (and at least 3 cm long): a tube, not an ovoid node."""
    ks = np.nonzero(focus.any(axis=(1, 2)))[0]
    z_extent = (ks.max() - ks.min() + 1) * spacing[0]
    widest = 0.0
    for k in ks:
        yi, xi = np.nonzero(focus[k])
        widest = max(widest, (yi.max() - yi.min() + 1) * spacing[1], (xi.max() - xi.min() + 1) * spacing[2])
    return bool(z_extent >= LINEAR_RATIO * max(widest, 1e-6) and z_extent >= LINEAR_MIN_LENGTH_MM)


def abdominal_organ_at(anatomy: Anatomy, peak: tuple[int, int, int]) -> str | None:
    """The labelled abdominal organ holding the peak, if any."""
    value = int(anatomy.array()[peak])
    for organ in ABDOMINAL_ORGANS:
        if anatomy.names.get(organ) == value and value > 0:
            return organ
    return None
