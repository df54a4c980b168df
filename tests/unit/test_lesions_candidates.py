"""Candidates: a focus is split from its neighbour at a valley, not at noise; the minimum size is in PET voxels."""

import numpy as np

from pipeline.lesions import candidates as cand
from pipeline.settings import LesionSettings
from tests.lesion_arrays import SPACING, gaussian

RULE = cand.SplitRule(min_prominence_suv=1.0, min_prominence_fraction=0.4, peak_separation_mm=7.0)
SHAPE = (30, 40, 60)


def _split(suv, threshold=2.5, min_voxels=3):
    labels, n = cand.components(suv >= threshold, min_voxels)
    return cand.split_at_peaks(labels, n, suv, SPACING, RULE, min_voxels)


def test_node_touching_esophageal_uptake_is_its_own_focus():
    # A node (SUV 8) beside a long, fainter band (SUV 5, the esophagus); one component at SUV 2.5.
    node = gaussian(SHAPE, (30, 40, 50), 4.0, 8.0)
    band = np.zeros(SHAPE, np.float32)
    z, y, x = np.meshgrid(*(np.arange(n) * 2.0 for n in SHAPE), indexing="ij")
    band += 5.0 * np.exp(-((y - 40) ** 2 + (x - 61) ** 2) / (2 * 4.0 ** 2))
    suv = np.maximum(node, band)
    labels0, n0 = cand.components(suv >= 2.5, 3)
    assert n0 == 1  # the threshold joins them
    labels, n, parent = _split(suv)
    assert n == 2 and set(parent.values()) == {1}
    node_label = labels[15, 20, 25]
    band_label = labels[5, 20, 30]
    assert node_label and band_label and node_label != band_label


def test_two_equal_peaks_with_a_deep_valley_split_but_a_shallow_dip_does_not():
    apart = gaussian(SHAPE, (30, 40, 40), 4.0, 10.0) + gaussian(SHAPE, (30, 40, 70), 4.0, 10.0)
    assert _split(apart)[1] == 2
    close = gaussian(SHAPE, (30, 40, 50), 4.0, 10.0) + gaussian(SHAPE, (30, 40, 60), 4.0, 10.0)
    assert _split(close)[1] == 1  # the saddle is above 60 % of the peaks: one lobulated focus


def test_noise_on_a_hot_plateau_does_not_split():
    rng = np.random.default_rng(0)
    suv = gaussian(SHAPE, (30, 40, 60), 8.0, 20.0)
    suv *= 1 + 0.05 * rng.standard_normal(SHAPE).astype(np.float32)
    assert _split(suv)[1] == 1


def test_minimum_size_is_three_pet_voxels():
    settings = LesionSettings()
    ct_voxel_ml = 0.008  # 2 mm cubes
    pet_voxel_ml = 4.0 * 4.0 * 3.0 / 1000
    min_vox = cand.min_voxels_on_ct(ct_voxel_ml, pet_voxel_ml, settings)
    assert min_vox == int(np.ceil(3 * pet_voxel_ml / ct_voxel_ml))
    mask = np.zeros(SHAPE, bool)
    mask[5:7, 5:7, 5:7] = True  # 8 CT voxels: less than 3 PET voxels
    mask[15:20, 15:20, 15:20] = True  # 125 CT voxels
    _, n = cand.components(mask, min_vox)
    assert n == 1
