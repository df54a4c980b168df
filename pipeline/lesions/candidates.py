"""Candidate foci: threshold, connected components, then a split at the SUV peaks.

A radiologist sees two foci where the uptake has two peaks with a valley between
them, whatever the threshold joined. So every component is cut by a watershed on
−SUV seeded at its local maxima, and neighbouring basins are merged again unless
both peaks rise clearly above the saddle between them (by at least
`peak_min_prominence_suv` and `peak_min_prominence_fraction` of the lower peak,
which keeps noise on a hot plateau, or a lobulated tumour, in one piece). This
runs before any shape test, so a node pressed against the esophagus or the
primary keeps its own outline and measurements.

The smallest focus kept covers `min_pet_voxels` PET voxels (3 by default): below
that a "focus" is one noisy voxel smeared by interpolation onto the CT grid.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from skimage.segmentation import watershed

from pipeline.anatomy import Anatomy
from pipeline.errors import PipelineError
from pipeline.lesions.geometry import an, ball
from pipeline.lesions.references import ReferenceRegion
from pipeline.settings import LesionSettings

logger = logging.getLogger(__name__)

CONNECTIVITY_26 = np.ones((3, 3, 3), bool)


class LesionError(PipelineError):
    """Lesion detection could not run (e.g. a PERCIST threshold without a liver)."""


@dataclass(frozen=True)
class SplitRule:
    """When two touching peaks are two foci (see the module docstring)."""

    min_prominence_suv: float
    min_prominence_fraction: float
    peak_separation_mm: float

    def separate(self, lower_peak: float, saddle: float) -> bool:
        rise = lower_peak - saddle
        return rise >= self.min_prominence_suv and rise >= self.min_prominence_fraction * lower_peak


def threshold_for(settings: LesionSettings, liver: ReferenceRegion) -> tuple[float, str]:
    if settings.threshold == "fixed":
        return settings.fixed_suv, f"SUV >= {settings.fixed_suv:g} (fixed)"
    if liver.suvmean is None:
        raise LesionError(f"PERCIST threshold needs a liver reference: {liver.source}")
    t = liver.percist_threshold
    return t, f"SUV >= {t:.2f} (PERCIST-like: 1.5 x liver SUVmean {liver.suvmean:.2f} + 2 x SD {liver.suvsd:.2f})"


def excluded_organs(anatomy: Anatomy, settings: LesionSettings) -> tuple[np.ndarray | None, list[str]]:
    """Union of the organs whose own uptake is physiologic, as far as the anatomy has them."""
    union, names = None, []
    for organ in settings.exclude_physiologic:
        m = anatomy.mask(organ)
        if m is not None and m.any():
            union = m.copy() if union is None else union | m
            names.append(organ)
    return union, names


def candidate_mask(suv: np.ndarray, ct: np.ndarray, anatomy: Anatomy, threshold: float,
                   organs: np.ndarray | None) -> np.ndarray:
    """Above threshold, inside the body, outside organs with physiologic uptake."""
    mask = suv >= threshold
    body = anatomy.mask(an.BODY)
    if body is None or not body.any():
        body = ct > -500
    mask &= body
    if organs is not None:
        mask &= ~organs
    return mask


def min_voxels_on_ct(ct_voxel_ml: float, pet_voxel_ml: float, settings: LesionSettings) -> int:
    """Smallest focus in CT voxels: `min_pet_voxels` PET voxels (and the optional ml floor)."""
    ml = max(settings.min_pet_voxels * pet_voxel_ml, settings.min_volume_ml)
    return max(int(np.ceil(ml / ct_voxel_ml)), 1)


def components(mask: np.ndarray, min_voxels: int) -> tuple[np.ndarray, int]:
    labels, n = ndimage.label(mask, structure=CONNECTIVITY_26)
    return _relabel_by_size(labels, n, min_voxels)


def _relabel_by_size(labels: np.ndarray, n: int, min_voxels: int) -> tuple[np.ndarray, int]:
    if n == 0:
        return labels.astype(np.int32), 0
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    keep = np.nonzero(sizes >= min_voxels)[0]
    keep = keep[keep > 0]
    lut = np.zeros(int(labels.max()) + 1, dtype=np.int32)
    lut[keep] = np.arange(1, len(keep) + 1)
    return lut[labels], len(keep)


def split_at_peaks(labels: np.ndarray, n: int, suv: np.ndarray, spacing: np.ndarray, rule: SplitRule,
                   min_voxels: int) -> tuple[np.ndarray, int, dict[int, int]]:
    """Cut every component at its separate SUV peaks (watershed on −SUV, basins merged across low saddles).

    Returns the new labels, their number, and each focus's original component (a
    lobulated tumour's lobes are put back together once the primary is known).
    """
    out = np.zeros(labels.shape, np.int32)
    parent: dict[int, int] = {}
    next_label = 1
    footprint = ball(rule.peak_separation_mm / 2.0, spacing)
    for lab, sl in enumerate(ndimage.find_objects(labels), start=1):
        if sl is None:
            continue
        comp = labels[sl] == lab
        parts = split_component(np.asarray(suv[sl], np.float32), comp, rule, footprint, min_voxels)
        m = int(parts.max())
        region = out[sl]
        region[parts > 0] = parts[parts > 0] + next_label - 1
        if m > 1:
            logger.debug("component %d split into %d foci at its SUV peaks", lab, m)
        for k in range(m):
            parent[next_label + k] = lab
        next_label += m
    return out, next_label - 1, parent


def split_component(suv: np.ndarray, comp: np.ndarray, rule: SplitRule, footprint: np.ndarray,
                    min_voxels: int) -> np.ndarray:
    """Labels 1..m of the separate foci of one component (1 when it has a single peak)."""
    local_max = (suv == ndimage.maximum_filter(np.where(comp, suv, -np.inf), footprint=footprint)) & comp
    markers, m = ndimage.label(local_max, structure=CONNECTIVITY_26)
    if m <= 1:
        return comp.astype(np.int32)
    basins = watershed(-suv, markers, mask=comp, connectivity=1).astype(np.int32)
    return _merge_basins(basins, m, suv, rule, min_voxels)


def _merge_basins(basins: np.ndarray, m: int, suv: np.ndarray, rule: SplitRule, min_voxels: int) -> np.ndarray:
    """Merge neighbouring basins whose lower peak does not rise enough above their saddle, or that are too small."""
    parent = list(range(m + 1))

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    peaks = np.zeros(m + 1)
    np.maximum.at(peaks, basins.ravel(), suv.ravel())
    sizes = np.bincount(basins.ravel(), minlength=m + 1).astype(float)
    saddles: dict[tuple[int, int], float] = {}
    for axis in range(3):
        a = np.moveaxis(basins, axis, 0)
        s = np.moveaxis(suv, axis, 0)
        la, lb = a[:-1], a[1:]
        touch = (la != lb) & (la > 0) & (lb > 0)
        if not touch.any():
            continue
        pa, pb = la[touch], lb[touch]
        level = np.minimum(s[:-1][touch], s[1:][touch])
        lo, hi = np.minimum(pa, pb), np.maximum(pa, pb)
        key = lo.astype(np.int64) * (m + 1) + hi
        order = np.argsort(key)
        key, level = key[order], level[order]
        uniq, start = np.unique(key, return_index=True)
        best = np.maximum.reduceat(level, start)
        for k, v in zip(uniq, best):
            saddles[(int(k // (m + 1)), int(k % (m + 1)))] = float(v)
    # Highest saddles first: the merge tree of the uptake, as a watershed by flooding builds it.
    for (a, b), saddle in sorted(saddles.items(), key=lambda kv: -kv[1]):
        ra, rb = find(a), find(b)
        if ra == rb:
            continue
        lower = min(peaks[ra], peaks[rb])
        if not rule.separate(lower, saddle) or min(sizes[ra], sizes[rb]) < min_voxels:
            keep, gone = (ra, rb) if peaks[ra] >= peaks[rb] else (rb, ra)
            parent[gone] = keep
            sizes[keep] += sizes[gone]
    roots = np.array([find(i) for i in range(m + 1)])
    roots[0] = 0
    uniq = np.unique(roots[1:])
    lut = np.zeros(m + 1, np.int32)
    for new, r in enumerate(uniq, start=1):
        lut[roots == r] = new
    lut[0] = 0
    return lut[basins]
