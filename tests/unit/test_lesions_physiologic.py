"""Each class of physiologic or non-nodal uptake is named, and a real node beside it is not."""

import numpy as np
import pytest

from scipy import ndimage

from pipeline.lesions.physiologic import (Physiology, node_against_heart, node_into_heart, physiologic_site,
                                          symmetric_site, symmetric_uptake)
from pipeline.study_result import PhysiologicSite
from tests.lesion_arrays import anatomy, ball, gaussian, grid

SHAPE = (40, 50, 50)  # z 0..78 mm (index up = superior), y/x 0..98 mm
FAT, SOFT = -100.0, 40.0


def _site(ct, suv, labels, centre_mm, radius_mm=6.0, landmarks=None, soft_mm=10.0):
    ctx = Physiology.build(anatomy(labels, SHAPE, landmarks), ct, suv, 7.0)
    focus = ball(SHAPE, centre_mm, radius_mm) & (suv > 2.5)
    peak = np.unravel_index(int(np.argmax(np.where(focus, suv, -1))), SHAPE)
    sl = tuple(slice(0, n) for n in SHAPE)
    out = physiologic_site(ctx, sl, focus, peak, float(suv[peak]), soft_mm)
    return None if out is None else out[0]


def _soft_ct():
    return np.full(SHAPE, SOFT, np.float32)


def test_marrow_in_a_labelled_bone():
    bone = ball(SHAPE, (40, 50, 50), 15.0)
    ct = _soft_ct()
    ct[bone] = 180.0
    suv = gaussian(SHAPE, (40, 50, 50), 4.0, 5.0) + 1.0
    assert _site(ct, suv, {"spine": bone}, (40, 50, 50)) == PhysiologicSite.BONE_MARROW


def test_dense_bone_at_the_peak_without_a_label():
    ct = _soft_ct()
    ct[ball(SHAPE, (40, 50, 50), 8.0)] = 600.0
    suv = gaussian(SHAPE, (40, 50, 50), 4.0, 5.0) + 1.0
    assert _site(ct, suv, {}, (40, 50, 50)) == PhysiologicSite.BONE_MARROW


def test_brown_fat_is_uptake_in_fat_without_a_soft_tissue_nodule():
    ct = np.full(SHAPE, FAT, np.float32)
    suv = gaussian(SHAPE, (40, 50, 50), 5.0, 5.0) + 0.5
    assert _site(ct, suv, {}, (40, 50, 50), soft_mm=0.0) == PhysiologicSite.BROWN_FAT
    ct[ball(SHAPE, (40, 50, 50), 7.0)] = SOFT  # a 14 mm node in the same fat: not brown fat
    assert _site(ct, suv, {}, (40, 50, 50), soft_mm=14.0) is None



def test_brown_fat_beside_an_enhanced_aorta_and_a_node_in_the_same_place():
    """The LIDC 4L case's paravertebral brown fat at full size: fat at the peak (-107 HU), but the
    enhanced aorta and the vertebra beside it lifted the plain smoothed CT to +7 HU, and it was read
    as an equivocal 5 mm "9L node". The labelled structures are left out of the smoothing."""
    ct = np.full(SHAPE, FAT, np.float32)
    aorta = ball(SHAPE, (40, 50, 38), 13.0)
    ct[aorta] = 300.0  # contrast-enhanced blood; plain smoothing at the peak 3 mm away: -49 HU
    suv = (gaussian(SHAPE, (40, 50, 54), 3.0, 3.0) + 0.5).astype(np.float32)
    assert _site(ct, suv, {"aorta": aorta}, (40, 50, 54), radius_mm=5, soft_mm=5.2) == PhysiologicSite.BROWN_FAT
    node_ct = ct.copy()
    node_ct[ball(SHAPE, (40, 50, 56), 6.0)] = SOFT  # a 12 mm node in the same place: a node
    assert _site(node_ct, suv, {"aorta": aorta}, (40, 50, 54), radius_mm=5, soft_mm=12.0) is None


def _esophagus():
    z, y, x = grid(SHAPE)
    return (y - 60) ** 2 + (x - 50) ** 2 <= 8.0 ** 2


def test_esophageal_uptake_and_a_focal_node_on_the_esophagus():
    eso = _esophagus()
    z, y, x = grid(SHAPE)
    band = 4.0 * np.exp(-((y - 60) ** 2 + (x - 50) ** 2) / (2 * 5.0 ** 2))
    ct = np.full(SHAPE, FAT, np.float32)
    ct[eso] = SOFT
    suv = (band + 0.5 + gaussian(SHAPE, (40, 60, 50), 3.0, 0.5)).astype(np.float32)  # a gentle bump
    assert _site(ct, suv, {"esophagus": eso}, (40, 60, 50), radius_mm=30) == PhysiologicSite.ESOPHAGEAL
    focal = np.maximum(suv, gaussian(SHAPE, (40, 60, 56), 4.0, 9.0))  # a node 9 on the wall: focal
    assert _site(ct, focal, {"esophagus": eso}, (40, 60, 56), radius_mm=8, soft_mm=12.0) is None
    # The same focal spot with no soft-tissue nodule outside the esophagus: focal esophageal uptake.
    assert _site(ct, focal, {"esophagus": eso}, (40, 60, 56), radius_mm=8, soft_mm=2.0) == PhysiologicSite.ESOPHAGEAL


def test_a_focal_spot_inside_the_esophagus_needs_a_real_nodule_beside_it():
    """The LIDC N3 phantom's distal-esophageal spot: peak inside the esophagus, 6 mm of tissue beside the
    wall. PET cannot tell 6 mm of tissue from the wall: esophageal. The same 6 mm at the wall is a node."""
    eso = _esophagus()
    z, y, x = grid(SHAPE)
    ct = np.full(SHAPE, FAT, np.float32)
    ct[eso] = SOFT
    base = (0.5 + 1.5 * np.exp(-((y - 60) ** 2 + (x - 50) ** 2) / (2 * 5.0 ** 2))).astype(np.float32)
    inside = np.maximum(base, gaussian(SHAPE, (40, 60, 50), 4.0, 6.0))
    assert _site(ct, inside, {"esophagus": eso}, (40, 60, 50), radius_mm=8, soft_mm=6.0) == \
        PhysiologicSite.ESOPHAGEAL
    assert _site(ct, inside, {"esophagus": eso}, (40, 60, 50), radius_mm=8, soft_mm=9.0) is None
    at_wall = np.maximum(base, gaussian(SHAPE, (40, 60, 60), 4.0, 6.0))  # peak 2 mm outside the label
    ct[ball(SHAPE, (40, 60, 62), 3.0)] = SOFT  # the 6 mm node's body against the wall
    assert _site(ct, at_wall, {"esophagus": eso}, (40, 60, 60), radius_mm=8, soft_mm=6.0) is None


def test_esophageal_gas_names_the_lumen_without_a_label():
    ct = _soft_ct()
    ct[ball(SHAPE, (40, 60, 50), 3.0)] = -800.0  # gas in the lumen, no esophagus label
    suv = gaussian(SHAPE, (40, 60, 52), 4.0, 4.0) + 1.0
    assert _site(ct, suv, {}, (40, 60, 52)) == PhysiologicSite.ESOPHAGEAL


def _heart():
    return ball(SHAPE, (30, 50, 30), 20.0)


def test_myocardium_spilling_beyond_the_heart_label_and_a_node_against_a_quiet_heart():
    heart = _heart()
    ct = _soft_ct()
    wall = heart & ~ball(SHAPE, (30, 50, 30), 14.0)
    suv = np.where(wall, 9.0, 1.5).astype(np.float32)
    # Hot myocardium the label missed: a rim just outside, as hot as the wall.
    rim = ball(SHAPE, (30, 50, 30), 24.0) & ~heart & (grid(SHAPE)[2] > 40)
    suv[rim] = 8.5
    assert _site(ct, suv, {"heart": heart}, (30, 50, 52), radius_mm=8) == PhysiologicSite.MYOCARDIAL
    # A node beside the same hot myocardium but with a valley between: a node (the 8L trap of issue 11).
    hot_heart = np.where(wall, 9.0, 1.5).astype(np.float32)
    beside = np.maximum(hot_heart, gaussian(SHAPE, (30, 50, 64), 3.0, 8.0))
    assert _site(ct, beside, {"heart": heart}, (30, 50, 64), radius_mm=6) is None
    quiet = np.where(heart, 1.8, 1.0).astype(np.float32)
    node = np.maximum(quiet, gaussian(SHAPE, (30, 50, 58), 4.0, 10.0))
    assert _site(ct, node, {"heart": heart}, (30, 50, 58), radius_mm=8) is None



def test_on_contrast_ct_a_node_against_a_hot_heart_is_not_spill_over():
    """lidc_n3_left_4r_8l at full size: an 11 mm 8L node against SUV-9 myocardium, its peak pulled to
    1 mm from the heart label by spill-in, was named myocardial spill-over. On contrast CT its own
    soft-tissue body outside the label says node; spill-over into fat has none; unenhanced CT cannot tell."""
    heart = _heart()
    aorta = ball(SHAPE, (60, 80, 80), 8.0)
    ct = _soft_ct()
    ct[heart | aorta] = 300.0  # blood-bright chambers and aorta: a contrast CT
    wall = heart & ~ball(SHAPE, (30, 50, 30), 14.0)
    suv = np.maximum(np.where(wall, 9.0, 1.5), gaussian(SHAPE, (30, 50, 54), 3.0, 11.0)).astype(np.float32)
    labels = {"heart": heart, "aorta": aorta}
    assert _site(ct, suv, labels, (30, 50, 54), radius_mm=6, soft_mm=11.0) is None
    assert _site(ct, suv, labels, (30, 50, 54), radius_mm=6, soft_mm=4.0) == PhysiologicSite.MYOCARDIAL
    unenhanced = _soft_ct()
    assert _site(unenhanced, suv, labels, (30, 50, 54), radius_mm=6, soft_mm=11.0) == PhysiologicSite.MYOCARDIAL


def test_a_node_the_heart_label_took_in_is_measured_whole_but_not_the_myocardium():
    """lidc_n3_left_4r_8l at full size: the classical heart label took in the upper half of an 11 mm
    8L node; candidates are cut at the heart, so the lesion was a crescent under the node with its
    peak at the label's edge, 1 mm outside 8L. On contrast CT the node's non-enhancing part inside
    the label, in the basin of its own peak, is taken back; hot myocardium beside it is not."""
    heart = _heart()  # x 10..50 mm
    aorta = ball(SHAPE, (60, 80, 80), 8.0)
    ct = _soft_ct()
    ct[heart | aorta] = 300.0
    node = ball(SHAPE, (30, 50, 50), 6.0)
    ct[node] = SOFT  # the node, half inside the label
    suv = np.maximum(np.where(heart, 1.5, 1.0), gaussian(SHAPE, (30, 50, 50), 3.0, 9.0)).astype(np.float32)
    ctx = Physiology.build(anatomy({"heart": heart, "aorta": aorta}, SHAPE), ct, suv, 7.0)
    sl = tuple(slice(0, n) for n in SHAPE)
    focus = (suv >= 3.0) & ~heart
    peak = np.unravel_index(int(np.argmax(np.where(focus, suv, -1))), SHAPE)
    assert heart[peak[0], peak[1], peak[2] - 1]  # the crescent peaks at the label's edge
    assert node_against_heart(ctx, sl, focus, peak, 11.0) and not node_against_heart(ctx, sl, focus, peak, 6.0)
    whole = node_into_heart(ctx, sl, focus, peak, 3.0)
    assert whole is not None and whole[15, 25, 25] and (whole & heart).sum() >= 0.4 * focus.sum()  # its centre back
    assert not (whole & heart & (ct > 150)).any()  # never the blood
    # Hot myocardium of soft-tissue density joined to the same uptake: its basin is no node, nothing taken.
    wall = heart & ~ball(SHAPE, (30, 50, 30), 14.0)
    myo_ct = ct.copy()
    myo_ct[wall] = SOFT
    hot = np.maximum(suv, np.where(wall, 12.0, 0.0)).astype(np.float32)
    ctx_hot = Physiology.build(anatomy({"heart": heart, "aorta": aorta}, SHAPE), myo_ct, hot, 7.0)
    focus_hot = (hot >= 3.0) & ~heart
    focus_hot = ndimage.label(focus_hot)[0] == ndimage.label(focus_hot)[0][peak]
    assert node_into_heart(ctx_hot, sl, focus_hot, peak, 3.0) is None
    # Unenhanced CT: not judged here at all.
    plain = Physiology.build(anatomy({"heart": heart, "aorta": aorta}, SHAPE), _soft_ct(), suv, 7.0)
    assert not node_against_heart(plain, sl, focus, peak, 11.0)


def test_above_the_cricoid_larynx_and_neck_muscle():
    air = ball(SHAPE, (70, 50, 50), 6.0)
    ct = _soft_ct()
    ct[air] = -900.0
    landmarks = {"cricoid": (100.0, 100.0, 60.0)}  # LPS mm; z 60 mm = index 30
    suv = gaussian(SHAPE, (70, 50, 62), 3.0, 6.0) + 1.0
    labels = {"larynx_pharynx_air": air}
    assert _site(ct, suv, labels, (70, 50, 62), landmarks=landmarks) == PhysiologicSite.LARYNGEAL_PHARYNGEAL
    far = gaussian(SHAPE, (70, 10, 95), 3.0, 6.0) + 1.0
    assert _site(ct, far, labels, (70, 10, 95), landmarks=landmarks) == PhysiologicSite.MUSCLE
    below = gaussian(SHAPE, (40, 50, 64), 3.0, 6.0) + 1.0  # below the cricoid: not named here
    assert _site(ct, below, labels, (40, 50, 64), landmarks=landmarks) is None


def test_an_oblique_neck_muscle_peaking_just_below_the_cricoid_is_muscle_a_node_there_is_not():
    """ACRIN-042's scalene muscle: a thin oblique strip, 81 % of it above the cricoid, its peak 2 mm
    below it (read as an equivocal 1R node when only the peak decided). A node with its peak at
    the same place has its body below the cricoid, in station 1."""
    ct = _soft_ct()
    landmarks = {"cricoid": (100.0, 100.0, 60.0)}  # z 60 mm = index 30
    strip = np.zeros(SHAPE, np.float32)
    for t in np.linspace(0.0, 1.0, 12):  # from (z 78, y 20, x 84) down and medially to the peak at z 58
        centre = (78 - 20 * t, 20 + 8 * t, 84 - 10 * t)
        strip = np.maximum(strip, gaussian(SHAPE, centre, 2.0, 3.0 + 1.0 * t))
    suv = strip + 1.0
    assert _site(ct, suv, {}, (68, 24, 79), radius_mm=16, landmarks=landmarks) == PhysiologicSite.MUSCLE
    node = gaussian(SHAPE, (54, 28, 74), 3.0, 6.0) + 1.0  # peak 6 mm below the cricoid, body below it
    assert _site(ct, node, {}, (54, 28, 74), radius_mm=8, landmarks=landmarks) is None
    high_node = gaussian(SHAPE, (58, 28, 74), 3.0, 6.0) + 1.0  # peak 2 mm below: half its body above, still a node
    assert _site(ct, high_node, {}, (58, 28, 74), radius_mm=8, landmarks=landmarks) is None


def _mirror(suv, ct=None, centre_mm=(40, 50, 86)):
    trachea = ball(SHAPE, (40, 50, 50), 8.0) | ball(SHAPE, (60, 50, 50), 8.0) | ball(SHAPE, (20, 50, 50), 8.0)
    ctx = Physiology.build(anatomy({"trachea": trachea}, SHAPE), _soft_ct() if ct is None else ct, suv, 7.0)
    focus = ball(SHAPE, centre_mm, 8.0)
    peak = np.unravel_index(int(np.argmax(np.where(focus, suv, -1))), SHAPE)
    return ctx, peak, symmetric_uptake(ctx, peak, float(suv[peak]))


def test_symmetric_low_grade_uptake_across_the_midline():
    """The phantom's neck-muscle slab in a scan starting below the cricoid: a focus 36 mm lateral
    to the trachea with its twin across the midline (not exactly mirrored: bodies are not
    symmetric) is bilateral tissue; alone, or against a far hotter lesion opposite, it is not."""
    left = gaussian(SHAPE, (40, 50, 86), 3.0, 3.0)
    twin = gaussian(SHAPE, (44, 56, 18), 3.0, 2.8)  # 8 mm off the mirrored point, 0.93 x as hot
    _, _, mirror = _mirror(left + twin + 1.0)
    assert mirror is not None and 0.85 < mirror.ratio < 1.0 and abs(mirror.lateral_mm - 36.0) < 2.5
    assert _mirror(left + 1.0)[2] is None  # one-sided
    assert _mirror(left + gaussian(SHAPE, (40, 50, 14), 3.0, 9.0) + 1.0)[2] is None  # a hot lesion opposite
    far_twin = gaussian(SHAPE, (40, 80, 14), 3.0, 3.0)  # 30 mm from the mirrored point: not the same tissue
    assert _mirror(left + far_twin + 1.0)[2] is None
    near = gaussian(SHAPE, (40, 50, 66), 3.0, 3.0) + gaussian(SHAPE, (40, 50, 34), 3.0, 3.0)
    assert _mirror(near + 1.0, centre_mm=(40, 50, 66))[2] is None  # 16 mm from the midline: trachea, thyroid
    ctx, peak, _ = _mirror(left + twin + 1.0)
    assert symmetric_site(ctx, peak) == PhysiologicSite.MUSCLE
    fat = np.full(SHAPE, FAT, np.float32)
    ctx, peak, _ = _mirror(left + twin + 1.0, ct=fat)
    assert symmetric_site(ctx, peak) == PhysiologicSite.BROWN_FAT


def test_only_an_equivocal_station_1_focus_is_named_for_its_mirror():
    """Positive grade is staged whatever lies opposite; outside station 1, symmetry is not read."""
    from pipeline.lesions import classify
    from pipeline.lesions.detect import name_symmetric_uptake
    from pipeline.lesions.reading import References
    from pipeline.lesions.references import ReferenceRegion
    from pipeline.settings import PipelineSettings

    refs = References(ReferenceRegion("blood_pool", 1.8, 0.2, 1000, "test"),
                      ReferenceRegion("liver", 2.2, 0.25, 1000, "test"), 60.0)  # PERCIST threshold 3.8

    def named(height, station):
        suv = gaussian(SHAPE, (40, 50, 86), 3.0, height) + gaussian(SHAPE, (42, 54, 16), 3.0, height) + 1.0
        ctx, peak, _ = _mirror(suv)
        top = float(suv[peak])
        c = classify.Candidate(label=1, sl=(slice(0, 1),) * 3, local=np.ones((1, 1, 1), bool), peak=peak,
                               centroid_mm=(0.0, 0.0, 0.0), peak_mm=(0.0, 0.0, 0.0), suvmax=top,
                               suvpeak=0.7 * top, suvmean=0.5 * top, mtv_ml=2.0, short_axis=14.0, station=station,
                               station_distance_mm=0.0, lung_fraction=0.0, side_by_position=None, lobe=None,
                               below_diaphragm=False, in_thorax=True)
        name_symmetric_uptake(c, ctx, refs, PipelineSettings())
        return None if c.physiologic is None else c.physiologic[0]

    assert named(2.5, "1L") == PhysiologicSite.MUSCLE  # SUVmax 3.5, SUVpeak 2.5: equivocal
    assert named(7.0, "1L") is None  # SUVpeak 5.6 > 3.8: positive, kept
    assert named(2.5, "4L") is None


def test_thyroid_and_vessel():
    thyroid = ball(SHAPE, (40, 30, 30), 10.0)
    aorta = ball(SHAPE, (40, 70, 70), 14.0)
    ct = _soft_ct()
    suv = np.maximum(gaussian(SHAPE, (40, 30, 30), 4.0, 6.0), gaussian(SHAPE, (40, 70, 70), 5.0, 4.0)) + 1.0
    labels = {"thyroid_gland": thyroid, "aorta": aorta}
    assert _site(ct, suv, labels, (40, 30, 30)) == PhysiologicSite.THYROID
    assert _site(ct, suv, labels, (40, 70, 70), radius_mm=8) == PhysiologicSite.VASCULAR


@pytest.mark.parametrize("ct_value", [SOFT, 60.0])
def test_a_node_in_soft_tissue_is_not_physiologic(ct_value):
    ct = np.full(SHAPE, FAT, np.float32)
    ct[ball(SHAPE, (40, 50, 50), 7.0)] = ct_value
    suv = gaussian(SHAPE, (40, 50, 50), 4.0, 8.0) + 0.8
    assert _site(ct, suv, {}, (40, 50, 50), soft_mm=14.0) is None


def _contrast_ring(ct, centre_yx, offset_mm, radius_mm, hu=400.0):
    """Contrast-filled vessels (tubes along z) on all four in-plane sides of a point."""
    z, y, x = grid(SHAPE)
    cy, cx = centre_yx
    tubes = np.zeros(SHAPE, bool)
    for dy, dx in ((offset_mm, 0), (-offset_mm, 0), (0, offset_mm), (0, -offset_mm)):
        tubes |= (y - cy - dy) ** 2 + (x - cx - dx) ** 2 <= radius_mm ** 2
    ct[tubes] = hu
    return tubes


def test_a_node_among_contrast_filled_vessels_is_not_marrow():
    """The 10L trap of issue 11: contrast as dense as cortex on every side of a hilar node."""
    ct = _soft_ct()
    _contrast_ring(ct, (50, 50), 16.0, 5.0)
    spine = ball(SHAPE, (40, 90, 90), 8.0)  # bone labelled elsewhere
    ct[spine] = 300.0
    aorta = ball(SHAPE, (40, 15, 85), 6.0)  # a labelled, contrast-filled aorta: this is a contrast CT
    ct[aorta] = 400.0
    suv = gaussian(SHAPE, (40, 50, 50), 4.0, 10.0) + 1.0
    assert _site(ct, suv, {"spine": spine, "aorta": aorta}, (40, 50, 50), soft_mm=12.0) is None
    # Without contrast in the aorta, dense CT all round the peak is read as the cortex of a marrow space.
    ct[aorta] = 40.0
    assert _site(ct, suv, {"spine": spine, "aorta": aorta}, (40, 50, 50), soft_mm=12.0) == PhysiologicSite.BONE_MARROW
    # The same ring of dense cortex, labelled as bone (its marrow not): the marrow space.
    ring = np.zeros(SHAPE, bool)
    z, y, x = grid(SHAPE)
    ring |= ((y - 50) ** 2 + (x - 50) ** 2 <= 14.0 ** 2) & ((y - 50) ** 2 + (x - 50) ** 2 >= 11.0 ** 2)
    ct2 = _soft_ct()
    ct2[ring] = 500.0
    assert _site(ct2, suv, {"spine": ring}, (40, 50, 50), soft_mm=12.0) == PhysiologicSite.BONE_MARROW


def test_a_hot_node_peaking_at_the_heart_labels_edge_is_not_myocardium():
    """A node against a heart label that also holds the PA (TotalSegmentator): mostly outside it, far hotter."""
    heart = _heart()
    ct = _soft_ct()
    quiet = np.where(heart, 3.0, 1.0).astype(np.float32)
    node = np.maximum(quiet, gaussian(SHAPE, (30, 50, 52), 3.5, 11.0))  # centre 2 mm outside the label
    node[tuple(int(v / 2) for v in (30, 50, 48))] = 12.0  # its hottest voxel just inside the label's edge
    assert _site(ct, node, {"heart": heart}, (30, 50, 52), radius_mm=8) is None
    # Myocardium as hot as the focus: the same focus is myocardial.
    hot = np.maximum(np.where(heart, 10.0, 1.0).astype(np.float32), node)
    assert _site(ct, hot, {"heart": heart}, (30, 50, 52), radius_mm=8) == PhysiologicSite.MYOCARDIAL


def test_a_hot_crescent_on_the_hearts_surface_is_myocardium_however_hot():
    """ACRIN-042's "9L" focus: the inferior ventricular wall outside the heart label, hotter than the labelled heart."""
    heart = _heart()
    ct = _soft_ct()
    quiet = np.where(heart, 2.0, 1.0).astype(np.float32)
    shell = ball(SHAPE, (30, 50, 30), 24.0) & ~heart & (grid(SHAPE)[0] < 24)  # a 4 mm crescent below the label
    crescent = quiet.copy()
    crescent[shell] = 6.0
    assert _site(ct, crescent, {"heart": heart}, (8, 50, 30), radius_mm=30) == PhysiologicSite.MYOCARDIAL
    # A round node of the same SUV against the same heart is not a sheet: it stays a node.
    node = np.maximum(quiet, gaussian(SHAPE, (30, 50, 58), 4.0, 6.0))
    assert _site(ct, node, {"heart": heart}, (30, 50, 58), radius_mm=8) is None


def test_uptake_in_a_joint_between_two_bones():
    """ACRIN-042's "3a" focus: the left sternoclavicular joint, between labels that miss the joint space."""
    ct = _soft_ct()
    sternum = ball(SHAPE, (40, 50, 38), 8.0)
    clavicle = ball(SHAPE, (40, 50, 62), 8.0)  # the joint space: 8 mm between them, around x = 50
    suv = gaussian(SHAPE, (40, 50, 50), 3.0, 4.0) + 1.0
    labels = {"sternum": sternum, "clavicula_left": clavicle}
    assert _site(ct, suv, labels, (40, 50, 50), radius_mm=5) == PhysiologicSite.JOINT
    # A node 10 mm behind the sternum, far from the clavicle: not a joint.
    node = gaussian(SHAPE, (40, 70, 40), 4.0, 6.0) + 1.0
    assert _site(ct, node, labels, (40, 70, 40), radius_mm=6) is None


def test_a_node_on_the_esophagus_is_cut_from_the_esophageal_column():
    """ACRIN-042's subcarinal node: split at its peak, it took the whole esophageal column (75 mm) with it."""
    from pipeline.lesions.physiologic import node_apart_from_esophagus

    eso = _esophagus()
    z, y, x = grid(SHAPE)
    band = 4.0 * np.exp(-((y - 60) ** 2 + (x - 50) ** 2) / (2 * 5.0 ** 2))
    ct = np.full(SHAPE, FAT, np.float32)
    ct[eso] = SOFT
    suv = np.maximum(band + 0.5, gaussian(SHAPE, (40, 60, 56), 4.0, 9.0)).astype(np.float32)
    ctx = Physiology.build(anatomy({"esophagus": eso}, SHAPE), ct, suv, 7.0)
    focus = suv > 2.5  # the node and the whole column, as one split region
    peak = np.unravel_index(int(np.argmax(np.where(focus, suv, -1))), SHAPE)
    sl = tuple(slice(0, n) for n in SHAPE)
    core = node_apart_from_esophagus(ctx, sl, focus, peak, float(suv[peak]))
    assert core is not None and core[peak]
    ks = np.flatnonzero(core.any(axis=(1, 2)))
    assert (ks.max() - ks.min() + 1) * 2.0 <= 24.0 < np.flatnonzero(focus.any(axis=(1, 2))).size * 2.0
    # Esophageal uptake with only a gentle bump on it: nothing focal to cut out.
    gentle = (band + 0.5 + gaussian(SHAPE, (40, 60, 50), 3.0, 0.5)).astype(np.float32)
    ctx = Physiology.build(anatomy({"esophagus": eso}, SHAPE), ct, gentle, 7.0)
    focus = gentle > 2.5
    peak = np.unravel_index(int(np.argmax(np.where(focus, gentle, -1))), SHAPE)
    assert node_apart_from_esophagus(ctx, sl, focus, peak, float(gentle[peak])) is None
