"""Measurements: SUVpeak is a 1 cm³ mean (not the hottest voxel), the short axis is the node's own CT width."""

import numpy as np
import pytest

from pipeline.lesions.measure import node_soft_tissue, short_axis_mm, suv_peak
from tests.lesion_arrays import SPACING, ball, gaussian

SHAPE = (30, 40, 40)


def test_suvpeak_of_a_uniform_sphere_is_its_value_and_ignores_one_hot_voxel():
    suv = np.where(ball(SHAPE, (30, 40, 40), 12.0), 6.0, 1.0).astype(np.float32)
    mask = suv > 3
    assert suv_peak(suv, mask, SPACING) == pytest.approx(6.0, abs=0.05)
    suv[15, 20, 20] = 30.0  # one noisy voxel: SUVmax 30, SUVpeak barely moves
    peak = suv_peak(suv, mask, SPACING)
    assert suv.max() == 30.0 and peak < 6.0 + 24.0 / 100


def test_suvpeak_of_a_small_focus_is_diluted_by_partial_volume():
    suv = gaussian(SHAPE, (30, 40, 40), 2.5, 10.0) + 1.0
    mask = suv > 3.0
    assert suv_peak(suv, mask, SPACING) < 0.8 * float(suv.max())


def test_short_axis_of_an_ellipse_is_its_minor_diameter():
    z, y, x = np.meshgrid(*(np.arange(n) * 2.0 for n in SHAPE), indexing="ij")
    ellipse = ((y - 40) / 15.0) ** 2 + ((x - 40) / 6.0) ** 2 <= 1
    ellipse &= np.abs(z - 30) <= 6
    assert short_axis_mm(ellipse, SPACING) == pytest.approx(12.0, abs=2.5)


def test_short_axis_is_measured_on_the_nodes_own_soft_tissue_not_the_neighbouring_vessel():
    ct = np.full(SHAPE, -100.0, np.float32)  # mediastinal fat
    node = ball(SHAPE, (30, 40, 30), 6.0)  # 12 mm node
    vessel = ball(SHAPE, (30, 40, 46), 9.0)  # an 18 mm vessel touching it
    ct[node | vessel] = 40.0
    focus = ball(SHAPE, (30, 40, 30), 7.0)  # the avid region, a little larger than the node (PET blur)
    body = node_soft_tissue(ct, focus, (15, 20, 15), SPACING, named=vessel)
    assert short_axis_mm(body, SPACING) == pytest.approx(12.0, abs=2.5)
    # Without the vessel named, the soft tissue runs into it, but only within reach of the focus.
    merged = node_soft_tissue(ct, focus, (15, 20, 15), SPACING, named=None)
    assert merged.sum() > body.sum()
