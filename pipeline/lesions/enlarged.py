"""Enlarged nodes that are not avid: soft tissue in a station region, found on CT.

A threshold on SUV cannot find a node that does not take up FDG, yet a radiologist
reports a 12 mm node that is cold (`enlarged_non_avid`, never counted for N).
Only where the anatomy names the vessels, airways, esophagus and heart: without
them, soft tissue in the station regions is mostly those structures. Not in
station 1: no backend here labels the neck muscles, and without them a muscle
belly or the thyroid in the low neck reads as a 15-40 mm "node" (seen on every
real-anatomy study).
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from pipeline.anatomy import Anatomy
from pipeline.lesions.classify import NODAL_STATIONS
from pipeline.lesions.geometry import an, ball, spacing_zyx, voxel_ml
from pipeline.lesions.measure import principal_extents_mm, short_axis_mm
from pipeline.settings import PositivitySettings

ENLARGED_NODE_HU = (-20.0, 120.0)
ENLARGED_NODE_MIN_ML = 0.3
ENLARGED_NODE_MAX_ML = 40.0
ENLARGED_NODE_MAX_ELONGATION = 2.5  # long/short axis: tubes (vessels, esophagus) are not nodes
CT_NODE_SEARCH_NEEDS = ("aorta", "esophagus", "heart", "superior_vena_cava")
CT_NODE_SEARCH_SKIPS = ("1R", "1L")  # low neck: muscles and thyroid are unlabelled soft tissue


def enlarged_ct_candidates(volumes, anatomy: Anatomy, station_map, avid: np.ndarray,
                           positivity: PositivitySettings) -> list[np.ndarray]:
    """Soft-tissue nodes in station regions with a short axis over the enlargement limit, not avid."""
    if station_map is None or not all(anatomy.has(name) for name in CT_NODE_SEARCH_NEEDS):
        return []
    ct_img: sitk.Image = volumes.ct
    ct = sitk.GetArrayViewFromImage(ct_img)
    sp = spacing_zyx(ct_img)
    stations = sitk.GetArrayViewFromImage(station_map.labels)
    nodal_values = [station_map.station_values[s] for s in NODAL_STATIONS
                    if s in station_map.station_values and s not in CT_NODE_SEARCH_SKIPS]
    region = np.isin(stations, nodal_values)
    soft = region & (ct >= ENLARGED_NODE_HU[0]) & (ct <= ENLARGED_NODE_HU[1]) & ~avid
    arr = anatomy.array()
    named = arr > 0
    if an.BODY in anatomy.names:
        named &= arr != anatomy.names[an.BODY]
    soft &= ~named
    soft = ndimage.binary_opening(soft, structure=ball(2.0, sp))
    lab, m = ndimage.label(soft)
    out = []
    vml = voxel_ml(ct_img)
    for j, sl in enumerate(ndimage.find_objects(lab), start=1):
        if sl is None:
            continue
        comp_local = lab[sl] == j
        vol = comp_local.sum() * vml
        if vol > ENLARGED_NODE_MAX_ML or vol < ENLARGED_NODE_MIN_ML:
            continue
        short = short_axis_mm(comp_local, sp)
        ext, _ = principal_extents_mm(comp_local, sp)
        if short >= positivity.enlarged_short_axis_mm and ext[-1] <= ENLARGED_NODE_MAX_ELONGATION * short:
            comp = np.zeros(lab.shape, bool)
            comp[sl] = comp_local
            out.append(comp)
    return out
