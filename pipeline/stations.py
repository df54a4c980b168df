"""IASLC 2009 lymph-node station map from an anatomy label map (DESIGN.md §4).

Pure: a label image and its name table in, a station label image on the same
grid plus a table of landmark levels out. No I/O.

How it works
============
The label map is resampled (nearest neighbour) onto an internal working grid:
axis-aligned in patient LPS space (x towards the patient's left, y posterior,
z superior), 2 mm voxels, on a lattice fixed in physical space. Every rule
below is written in those physical coordinates, so the result does not depend
on the input's orientation, slice order or feet-first/head-first positioning;
the station map is then resampled back onto the input grid (nearest
neighbour), and voxels the input labels as a structure other than lung or a
container ("body", "mediastinum", "thoracic_cavity") are cleared: stations are
the fat around the structures, never the lumen of a vessel or airway.

Working regions
---------------
* **Lungs**: the five lobes (or lung_right / lung_left where a source has no
  lobes). Without lungs nothing is assessable.
* **Free space**: voxels no structure claims (unlabelled fat and soft tissue, or
  a container label such as "body"); inside "body" when the source has one.
* **Mediastinal space**: free space, per axial slice, lying between the two
  lungs row by row (left of the right lung's medial edge and right of the left
  lung's medial edge), plus the space behind the sternum within the sternum's
  left-right extent (inside the convex hull of lungs and sternum); never in
  front of the posterior surface of the sternum, never behind the anterior
  surface of the vertebral bodies / spinal cord.
* **Airway**: trachea plus main bronchi and bronchus intermedius. Below the
  carina, airway components right of the carina are the right bronchi, left of
  it the left bronchi (so a TotalSegmentator trachea label that runs into the
  main bronchi is used as bronchi).

Landmark levels (each recorded in `StationMap.landmarks` with its source)
--------------------------------------------------------------------------
* **Carina**: the lowest axial level at which the airway is still one lumen;
  just below it the airway label splits into two lumens side by side (right and
  left main bronchus). If it never splits, the lower end of the trachea label.
  Its x/y are the airway centroid there.
* **Aortic arch, upper border**: the top of the aorta label. **Lower border**:
  going down from the top, the level where the aorta label first separates into
  two parts (ascending in front, descending behind; each part at least 100 mm²
  in the slice, so a speck at the edge of the arch's cap does not count); above
  it the arch is one component bridging both. Where no separate ascending aorta
  is labelled: the lowest level (continuous from the top) at which the aorta
  still reaches the tracheal midline. If the aorta runs out of the top of the
  field of view, or neither holds, the arch is not identified.
* **Left brachiocephalic vein crossing (caudal margin)**: the lowest voxel of the
  brachiocephalic_vein_left label lying within the trachea's left-right extent
  (i.e. where it crosses in front of the trachea).
  Proxy without it: the upper border of the aortic arch.
* **Azygos arch, lower border**: the lowest voxel of the azygos_vein label lying
  in front of the posterior tracheal wall (the arch that runs forward over the
  right main bronchus to the superior vena cava).
  Proxy without it: the carina level (the azygos arch lies at the right
  tracheobronchial angle).
* **Left pulmonary artery, upper rim**: the top of the pulmonary_artery label
  left of the carina (or its top).
  Proxies in order: the top of the heart label (TotalSegmentator's heart label
  includes the pulmonary trunk and left pulmonary artery), only when it reaches
  to within 10 mm below the carina (a heart label ending lower shows no
  pulmonary trunk); 10 mm above the top of the pulmonary_vein label; 10 mm
  above the carina. A proxy is kept no lower
  than 10 mm below the carina, and any value below the lower border of the arch
  (clamped, and noted in the source).
* **Lower border of station 7, right**: the lower end of the
  bronchus_intermedius label. Proxies: the top of the right middle lobe (the
  middle-lobe bronchus leaves the bronchus intermedius at its lower end); else
  40 mm below the carina. Kept 15 to 60 mm below the carina.
* **Lower border of station 7, left** (upper border of the left lower lobe
  bronchus): the lower end of the main_bronchus_left label. Proxy: 35 mm below
  the carina.
* **Inferior pulmonary vein** (upper border of station 9), per side: the lowest
  voxel of the pulmonary_vein label on that side. Proxy: the lower border of
  station 7 on that side.
* **Lung bases** (lower border of stations 8 and 9): the lowest lung voxel on
  each side (the diaphragm dome from the diaphragm or liver label is recorded
  for reference). If the lung runs out of the field of view, the field of view
  bottom.
* **Manubrium upper border**: the top of the sternum label. Proxy: the sternal
  ends of the clavicles; else the lung apex.
* **Lung apex** per side: the top of the lung.
* **Cricoid lower margin** (upper border of station 1): proxy only, the top of
  the C7 vertebra label; else the top of the field of view.
* **Clavicles**: level of each clavicle's sternal end (recorded for reference).

Station rules (first matching rule wins, in this order)
--------------------------------------------------------
"Right"/"left" above the carina is split at the **left** lateral border of the
trachea (IASLC): pretracheal nodes up to the left tracheal wall are right-sided.
(Near the carina the split uses the trachea's own width, measured 10-40 mm
above the carina, so the flaring main bronchi do not move it.) Distances are in
the axial plane unless said otherwise.

1. **1R/1L** (low cervical, supraclavicular, sternal notch): above the upper
   border of the manubrium within the trachea's left-right extent, and above
   the higher of the manubrium and the lung apex lateral to it; below the
   cricoid; free space within 70 mm of the trachea's axis, from 30 mm in front of
   to 30 mm behind the trachea. Split R/L at the tracheal midline.
2. **3p** (retrotracheal): mediastinal space from the station-1 border down to
   the carina, behind the posterior tracheal wall and within the trachea's
   left-right extent.
3. **3a / 6** (prevascular): mediastinal space from the station-1 border to the
   carina, in front of the great vessels (SVC, brachiocephalic veins and trunk,
   carotid and subclavian arteries, aorta, pulmonary artery, heart; only vessel
   voxels in front of the trachea's centre count; columns without a vessel are
   interpolated). Where no vessel is labelled on a slice the vessel front is
   taken 15 mm in front of the trachea (proxy). At arch levels, prevascular
   space within 15 mm of the aorta and not to the right of the anterior aortic
   segment's centre is **6** (para-aortic, anterior and lateral to the
   ascending aorta/arch); all other prevascular space is **3a**.
4. **8R/8L, first pass**: below the lower border of station 7, mediastinal
   space within 15 mm of the esophageal wall (before any hilar rule).
5. **7** (subcarinal): mediastinal space below the carina, between the medial
   walls of the right and left bronchi (carried down from the lowest slice where
   they are labelled; at least 4 mm either side of the carina; proxy without
   any bronchus below the carina: 15 mm either side of it), from 15 mm in
   front of to 40 mm behind the carina, down to the lower border of station 7
   (the right border for the right half, the left border for the left half).
6. **Right side** (right of the left tracheal wall above the carina, right of
   the station-7 column below it; not more than 20 mm behind the posterior
   tracheal wall): above the left brachiocephalic vein crossing **2R**; from
   there down to the lower border of the azygos arch **4R** (below the carina
   only within 20 mm of the airway); below it, down to the inferior pulmonary
   vein, **10R**.
7. **Left side** (left of the left tracheal wall above the carina, left of the
   station-7 column below it; not more than 30 mm behind the posterior tracheal
   wall): above the arch **2L**; at arch levels **4L** within 15 mm of the
   airway, else **6**; between the lower border of the arch and the upper rim
   of the left pulmonary artery **4L** within 15 mm of the airway (medial to
   the ligamentum arteriosum, which CT does not show: proxy), else **5**; below
   the pulmonary artery, down to the inferior pulmonary vein, **10L**.
   Below the carina, **10R/10L** (hilar) is limited to free space within 20 mm
   (3D) of that side's bronchi or of a pulmonary artery / pulmonary vein label
   on that side, in the mediastinal space or in the lung root (free space in
   the concavity of that lung's axial convex hull), plus lung within 10 mm of
   the bronchi. On slices with none of these labelled on that side (proxy):
   mediastinal space within 15 mm of that lung, from 40 mm in front of to 30 mm
   behind the carina. The hilar zone ends at the inferior pulmonary vein (the
   IASLC "interlobar region" is not visible on CT).
8. **9R/9L** (pulmonary ligament): from the inferior pulmonary vein down to the
   lung base, mediastinal space within 20 mm of that lung and nearer to it than
   to the esophageal wall, from 20 mm in front of to 30 mm behind the
   esophagus's centre and within 60 mm of it to the side.
9. **8R/8L** (paraesophageal): from the lower border of station 7 down to the
   lung base, mediastinal space within 25 mm of the esophageal wall, split R/L
   at the esophagus's centre.
   Without an esophagus label (proxy), rules 4, 8 and 9 use a stand-in
   esophagus below the carina: per slice a disc of 8 mm radius, 15 mm in front
   of the descending aorta's centre (the aorta component nearest the vertebral
   body, within 40 mm in front of it) and midway in x between it and the
   vertebral body's centre (slices without an aorta: the median offsets of the
   others), smoothed along z. Without a spine label either: station 8 is the
   mediastinal space behind a line 10 mm in front of the carina, within 30 mm of
   the carina's x, split at the carina's x.
10. **11-14** (intrapulmonary): the rest of each lung, with free pockets that
    the lung encloses in an axial slice (a node inside the lung). CT shows no
    bronchial generations, so the split is a proxy by 3D distance from the
    hilum (station 10 and the bronchi): **11** (interlobar) lung within 5 mm of
    another lobe and within 30 mm of the hilum; **12** (lobar) within 20 mm;
    **13** (segmental) 20–40 mm; **14** (subsegmental) beyond. Without a hilum
    in the field of view all of it is 14 and 11-13 are not assessable. All four
    are ipsilateral N1, so the split never changes the N category.

A station whose defining landmark is missing (outside the field of view, or not
labelled and without a proxy) is listed in `not_assessable` with the reason; it
is neither guessed nor built. A station whose borders exist but which holds no
voxel in the field of view is also listed there.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import SimpleITK as sitk
from PIL import Image, ImageDraw
from scipy import ndimage as ndi
from scipy.spatial import ConvexHull

from pipeline import anatomy_names as an

logger = logging.getLogger(__name__)

# IASLC 2009 stations, map order (the same names pipeline.staging accepts).
STATIONS: tuple[str, ...] = (
    "1R", "1L", "2R", "2L", "3a", "3p", "4R", "4L", "5", "6", "7",
    "8R", "8L", "9R", "9L", "10R", "10L", "11R", "11L",
    "12R", "12L", "13R", "13L", "14R", "14L",
)
STATION_VALUES: dict[str, int] = {s: i + 1 for i, s in enumerate(STATIONS)}

# --- Tunable constants (every number a rule uses; each is named in the docstring). ---
WORK_SPACING_MM = 2.0
MIN_COMPONENT_MM2 = 20.0        # ignore label specks smaller than this in a slice
MIN_LUMEN_SEPARATION_MM = 8.0   # two airway lumens must lie this far apart (x) to count as a split
ARCH_PART_MIN_MM2 = 100.0       # ascending/descending aorta parts below the arch: at least this big in a slice
STATION1_LATERAL_MM = 70.0
STATION1_ANTERIOR_MM = 30.0     # in front of the anterior tracheal wall
STATION1_POSTERIOR_MM = 30.0    # behind the posterior tracheal wall
PREVASCULAR_PROXY_MM = 15.0     # vessel front proxy: this far in front of the trachea
PARA_AORTIC_MM = 15.0           # prevascular space this close to the aorta is station 6
PARATRACHEAL_LEFT_MM = 15.0     # 4L vs 5/6: distance from the airway (ligamentum proxy)
RIGHT_POSTERIOR_MM = 20.0       # paratracheal zones end this far behind the posterior tracheal wall
LEFT_POSTERIOR_MM = 30.0
SUBCARINAL_ANTERIOR_MM = 15.0
SUBCARINAL_POSTERIOR_MM = 40.0
SUBCARINAL_MIN_HALF_WIDTH_MM = 4.0
SUBCARINAL_PROXY_HALF_WIDTH_MM = 15.0  # station-7 column when no bronchus is labelled
HILAR_CORE_MM = 20.0
HILAR_LUNG_MM = 10.0
HILAR_PROXY_LUNG_MM = 15.0
HILAR_PROXY_ANTERIOR_MM = 40.0
HILAR_PROXY_POSTERIOR_MM = 30.0
LIGAMENT_MM = 20.0
LIGAMENT_ANTERIOR_MM = 20.0     # station 9 lies from 20 mm in front of to 30 mm behind the esophagus's centre
LIGAMENT_POSTERIOR_MM = 30.0
LIGAMENT_LATERAL_MM = 60.0      # ... and not more than 60 mm to either side of it
PARAESOPHAGEAL_NEAR_MM = 15.0   # below station 7, this close to the esophageal wall is 8 before anything else
PARAESOPHAGEAL_MM = 25.0
PARAESOPHAGEAL_PROXY_MM = 30.0
ESOPHAGUS_PROXY_RADIUS_MM = 8.0      # stand-in esophagus (no label): a disc this size ...
ESOPHAGUS_PROXY_ANTERIOR_MM = 15.0   # ... centred this far in front of the descending aorta's centre
VERTEBRAL_BODY_DEPTH_MM = 25.0       # the vertebral body: spine voxels this close behind its anterior surface
DESCENDING_AORTA_SEARCH_MM = 40.0    # the descending aorta: aorta voxels at most this far in front of the spine
PA_ABOVE_VEINS_MM = 10.0
PA_ABOVE_CARINA_MM = 10.0
PA_PROXY_BELOW_CARINA_MM = 10.0  # a proxy pulmonary-artery rim is never placed lower than this below the carina
BI_BELOW_CARINA_MM = 40.0
LLB_BELOW_CARINA_MM = 35.0
STATION7_MIN_MM = 15.0
STATION7_MAX_MM = 60.0
INTERLOBAR_MM = 5.0
INTERLOBAR_HILUM_MM = 30.0
LOBAR_MM = 20.0
SEGMENTAL_MM = 40.0

CONTAINERS = (an.BODY, "mediastinum", "thoracic_cavity")
RIGHT_LUNG_NAMES = an.RIGHT_LUNG_LOBES + (an.LUNG_RIGHT,)
LEFT_LUNG_NAMES = an.LEFT_LUNG_LOBES + (an.LUNG_LEFT,)
AIRWAY_NAMES = ("trachea", an.MAIN_BRONCHUS_RIGHT, an.MAIN_BRONCHUS_LEFT, an.BRONCHUS_INTERMEDIUS)
GREAT_VESSELS = (
    "superior_vena_cava", "brachiocephalic_vein_left", "brachiocephalic_vein_right",
    "brachiocephalic_trunk", "common_carotid_artery_left", "common_carotid_artery_right",
    "subclavian_artery_left", "subclavian_artery_right", "aorta", an.PULMONARY_ARTERY, "heart",
)
DIAPHRAGM = getattr(an, "DIAPHRAGM", "diaphragm")


# ----------------------------------------------------------------------------------------
# Public types
# ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Landmark:
    """A level a radiologist can check: z in patient LPS mm (superior positive).

    `source` is "label:<structure> (...)" when read from a label, "proxy: <what>"
    when derived from another structure, or "field of view: ..." when the scan
    edge bounds it.
    """

    name: str
    z_mm: float
    source: str
    x_mm: float | None = None
    y_mm: float | None = None

    @property
    def is_proxy(self) -> bool:
        return self.source.startswith("proxy")

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "z_mm": round(self.z_mm, 2), "source": self.source}
        if self.x_mm is not None:
            d["x_mm"] = round(self.x_mm, 2)
        if self.y_mm is not None:
            d["y_mm"] = round(self.y_mm, 2)
        return d


@dataclass
class StationMap:
    """IASLC station label map on the input grid, with its landmarks.

    labels: uint8 image on the input's grid; 0 = no station, else a value of
    `station_values`. not_assessable: station -> why it is not built.
    """

    labels: sitk.Image
    station_values: dict[str, int]
    landmarks: list[Landmark]
    not_assessable: dict[str, str]
    volumes_ml: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def value_to_station(self) -> dict[int, str]:
        return {v: k for k, v in self.station_values.items()}

    def landmark(self, name: str) -> Landmark | None:
        for lm in self.landmarks:
            if lm.name == name:
                return lm
        return None

    @property
    def proxies(self) -> list[str]:
        """Plain-words list of the proxies this map used (quoted by the SR)."""
        out = [f"{lm.name}: {lm.source}" for lm in self.landmarks if lm.is_proxy]
        return out + [n for n in self.notes if n.startswith("proxy")]

    def to_dict(self) -> dict[str, Any]:
        return {
            "station_values": dict(self.station_values),
            "landmarks": [lm.to_dict() for lm in self.landmarks],
            "not_assessable": dict(self.not_assessable),
            "volumes_ml": {k: round(v, 3) for k, v in self.volumes_ml.items()},
            "proxies": self.proxies,
            "notes": list(self.notes),
        }

    def station_at(self, point_lps: tuple[float, float, float]) -> str | None:
        """Station at a physical LPS point (mm), or None (outside the map or no station)."""
        img = self.labels
        idx = img.TransformPhysicalPointToContinuousIndex(tuple(float(v) for v in point_lps))
        ijk = [int(math.floor(v + 0.5)) for v in idx]
        size = img.GetSize()
        if any(i < 0 or i >= n for i, n in zip(ijk, size)):
            return None
        value = int(img.GetPixel(ijk))
        return self.value_to_station.get(value)

    def station_of_mask(self, mask: sitk.Image, max_distance_mm: float = 10.0) -> str | None:
        """Station holding most of `mask` (nonzero voxels).

        A mask on another grid is resampled onto the station grid (nearest
        neighbour). If the mask overlaps no station, the nearest station within
        `max_distance_mm` of it is returned; else None.
        """
        m = _mask_on_grid(mask, self.labels)
        if not m.any():
            return None
        st = sitk.GetArrayViewFromImage(self.labels)
        vals = st[m]
        vals = vals[vals > 0]
        inv = self.value_to_station
        if vals.size:
            counts = np.bincount(vals.astype(np.int64))
            return inv.get(int(np.argmax(counts)))
        if max_distance_mm <= 0:
            return None
        sp = np.array(self.labels.GetSpacing())[::-1]
        pad = np.ceil(max_distance_mm / sp).astype(int) + 1
        idx = np.argwhere(m)
        lo = np.maximum(idx.min(0) - pad, 0)
        hi = np.minimum(idx.max(0) + pad + 1, m.shape)
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        sub_m, sub_s = m[box], np.asarray(st[box])
        if not (sub_s > 0).any():
            return None
        d = ndi.distance_transform_edt(~sub_m, sampling=sp)
        cand = (sub_s > 0) & (d <= max_distance_mm)
        if not cand.any():
            return None
        dd = np.where(cand, d, np.inf)
        return inv.get(int(sub_s.flat[int(np.argmin(dd))]))


# ----------------------------------------------------------------------------------------
# Working grid
# ----------------------------------------------------------------------------------------

@dataclass
class _Work:
    arr: np.ndarray          # [z, y, x] labels on the working grid (cropped)
    x: np.ndarray            # mm, per column
    y: np.ndarray            # mm, per row
    z: np.ndarray            # mm, per slice
    sp: float
    values: dict[str, int]   # present names only
    fov_top: float           # mm, top edge of the input field of view
    fov_bottom: float

    def has(self, name: str) -> bool:
        return name in self.values

    def mask(self, *names: str) -> np.ndarray:
        vals = [self.values[n] for n in names if n in self.values]
        if not vals:
            return np.zeros(self.arr.shape, dtype=bool)
        if len(vals) == 1:
            return self.arr == vals[0]
        return np.isin(self.arr, vals)

    def at_top(self, z_mm: float) -> bool:
        """True when a structure edge at z_mm touches the top of the field of view."""
        return z_mm >= self.fov_top - 1.5 * self.sp

    def at_bottom(self, z_mm: float) -> bool:
        return z_mm <= self.fov_bottom + 1.5 * self.sp

    def k_of(self, z_mm: float) -> int:
        """Index of the first slice at or above z_mm (clipped)."""
        return int(np.clip(math.ceil((z_mm - self.z[0]) / self.sp - 1e-6), 0, len(self.z)))

    @property
    def Z(self) -> np.ndarray:
        return self.z[:, None, None]

    @property
    def Y(self) -> np.ndarray:
        return self.y[None, :, None]

    @property
    def X(self) -> np.ndarray:
        return self.x[None, None, :]


def _physical_bounds(img: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    size = img.GetSize()
    corners = []
    for i in (-0.5, size[0] - 0.5):
        for j in (-0.5, size[1] - 0.5):
            for k in (-0.5, size[2] - 0.5):
                corners.append(img.TransformContinuousIndexToPhysicalPoint((i, j, k)))
    c = np.array(corners)
    return c.min(0), c.max(0)


def _to_working_grid(labels: sitk.Image, sp: float) -> tuple[sitk.Image, float, float]:
    lo, hi = _physical_bounds(labels)
    origin = np.ceil(lo / sp - 1e-6) * sp
    size = np.floor((hi - origin) / sp + 1e-6).astype(int)
    size = np.maximum(size, 1)
    ref = sitk.Image([int(v) for v in size], labels.GetPixelID())
    ref.SetOrigin(tuple(float(v) for v in origin))
    ref.SetSpacing((sp, sp, sp))
    ref.SetDirection((1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    work = sitk.Resample(labels, ref, sitk.Transform(), sitk.sitkNearestNeighbor, 0, labels.GetPixelID())
    return work, float(hi[2]), float(lo[2])


def _mask_on_grid(mask: sitk.Image, ref: sitk.Image) -> np.ndarray:
    same = (mask.GetSize() == ref.GetSize()
            and np.allclose(mask.GetOrigin(), ref.GetOrigin(), atol=1e-3)
            and np.allclose(mask.GetSpacing(), ref.GetSpacing(), atol=1e-6)
            and np.allclose(mask.GetDirection(), ref.GetDirection(), atol=1e-6))
    if not same:
        mask = sitk.Resample(mask, ref, sitk.Transform(), sitk.sitkNearestNeighbor, 0, mask.GetPixelID())
    return sitk.GetArrayViewFromImage(mask) != 0


# ----------------------------------------------------------------------------------------
# Small geometry helpers
# ----------------------------------------------------------------------------------------

_EIGHT = np.ones((3, 3), dtype=bool)


def _components(sl: np.ndarray, min_vox: int) -> list[np.ndarray]:
    """Boolean masks of the 8-connected components of a 2D mask, largest first."""
    lab, n = ndi.label(sl, structure=_EIGHT)
    if n == 0:
        return []
    sizes = np.bincount(lab.ravel())[1:]
    order = np.argsort(sizes)[::-1]
    return [lab == (i + 1) for i in order if sizes[i] >= min_vox]


def _dist_inplane(w: _Work, mask: np.ndarray, k0: int = 0, k1: int | None = None,
                  max_mm: float = 50.0) -> np.ndarray:
    """In-plane distance (mm) to `mask` per slice, for slices k0..k1-1.

    inf on other slices, on slices without mask voxels, and (to save time) beyond
    about `max_mm` from the mask's bounding box.
    """
    k1 = len(w.z) if k1 is None else k1
    out = np.full(mask.shape, np.inf, dtype=np.float32)
    k0, k1 = max(k0, 0), min(k1, len(w.z))
    if k1 <= k0:
        return out
    sub = mask[k0:k1]
    if not sub.any():
        return out
    pad = int(math.ceil(max_mm / w.sp)) + 1
    _, jj, ii = np.nonzero(sub)
    j0, j1 = max(jj.min() - pad, 0), min(jj.max() + pad + 1, mask.shape[1])
    i0, i1 = max(ii.min() - pad, 0), min(ii.max() + pad + 1, mask.shape[2])
    box = sub[:, j0:j1, i0:i1]
    d = ndi.distance_transform_edt(~box, sampling=(1e5, w.sp, w.sp)).astype(np.float32)
    d[d > 1e4] = np.inf
    out[k0:k1, j0:j1, i0:i1] = d
    return out


def _dist_3d(w: _Work, mask: np.ndarray, k0: int = 0, k1: int | None = None,
             max_mm: float = 30.0) -> np.ndarray:
    """3D distance (mm) to `mask` for slices k0..k1-1; inf elsewhere and beyond ~max_mm of the mask."""
    k1 = len(w.z) if k1 is None else k1
    out = np.full(mask.shape, np.inf, dtype=np.float32)
    pad = int(math.ceil(max_mm / w.sp)) + 1
    a0, a1 = max(k0 - pad, 0), min(k1 + pad, len(w.z))
    sub = mask[a0:a1]
    if k1 <= k0 or not sub.any():
        return out
    kk, jj, ii = np.nonzero(sub)
    box = (slice(max(kk.min() - pad, 0), min(kk.max() + pad + 1, sub.shape[0])),
           slice(max(jj.min() - pad, 0), min(jj.max() + pad + 1, mask.shape[1])),
           slice(max(ii.min() - pad, 0), min(ii.max() + pad + 1, mask.shape[2])))
    d = np.full(sub.shape, np.inf, dtype=np.float32)
    d[box] = ndi.distance_transform_edt(~sub[box], sampling=(w.sp, w.sp, w.sp))
    out[a0:a1] = d
    out[:k0] = np.inf
    out[k1:] = np.inf
    return out


def _hull_fill(sl: np.ndarray) -> np.ndarray:
    """Filled 2D convex hull of a mask (the mask itself if too small for a hull)."""
    pts = np.argwhere(sl)
    if len(pts) < 3:
        return sl.copy()
    # Only boundary pixels matter for the hull.
    edge = sl & ~ndi.binary_erosion(sl)
    pts = np.argwhere(edge)
    if len(pts) < 3:
        return sl.copy()
    try:
        hull = ConvexHull(pts)
    except Exception:  # degenerate (collinear) point sets
        return sl.copy()
    poly = [(float(pts[v, 1]), float(pts[v, 0])) for v in hull.vertices]
    img = Image.new("L", (sl.shape[1], sl.shape[0]), 0)
    ImageDraw.Draw(img).polygon(poly, fill=1, outline=1)
    return (np.asarray(img) > 0) | sl


def _fill_nan(values: np.ndarray) -> np.ndarray:
    """Fill NaNs by nearest valid neighbour along the array (constant extrapolation)."""
    v = values.copy()
    ok = ~np.isnan(v)
    if not ok.any():
        return v
    idx = np.arange(len(v))
    valid = idx[ok]
    pos = np.searchsorted(valid, idx)
    lo = valid[np.clip(pos - 1, 0, len(valid) - 1)]
    hi = valid[np.clip(pos, 0, len(valid) - 1)]
    pick = np.where(np.abs(idx - lo) <= np.abs(hi - idx), lo, hi)
    return v[pick]


# ----------------------------------------------------------------------------------------
# Landmarks
# ----------------------------------------------------------------------------------------

class _Levels:
    def __init__(self) -> None:
        self.z: dict[str, float] = {}
        self.missing: dict[str, str] = {}
        self.landmarks: list[Landmark] = []

    def set(self, key: str, z: float, source: str, x: float | None = None, y: float | None = None) -> None:
        self.z[key] = float(z)
        self.landmarks.append(Landmark(key, float(z), source,
                                       None if x is None else float(x), None if y is None else float(y)))
        logger.debug("landmark %s z=%.1f (%s)", key, z, source)

    def record(self, key: str, z: float, source: str, x: float | None = None, y: float | None = None) -> None:
        """A reference landmark that no rule uses."""
        self.landmarks.append(Landmark(key, float(z), source,
                                       None if x is None else float(x), None if y is None else float(y)))

    def miss(self, key: str, reason: str) -> None:
        self.missing[key] = reason
        logger.debug("landmark %s missing: %s", key, reason)

    def get(self, key: str) -> float | None:
        return self.z.get(key)


@dataclass
class _Airway:
    k_carina: int | None = None          # lowest single-lumen slice (carina reference slice)
    x_c: float = 0.0
    y_c: float = 0.0
    cx: np.ndarray | None = None         # per slice, above the carina (extrapolated)
    cy: np.ndarray | None = None
    xl: np.ndarray | None = None
    xr: np.ndarray | None = None
    ya: np.ndarray | None = None
    yp: np.ndarray | None = None
    right: np.ndarray | None = None      # bronchi masks below the carina
    left: np.ndarray | None = None
    mask: np.ndarray | None = None


def _find_carina(w: _Work, lv: _Levels) -> _Airway:
    aw = _Airway()
    airway = w.mask(*AIRWAY_NAMES)
    aw.mask = airway
    if not airway.any():
        lv.miss("carina", "no trachea or bronchus label in the field of view")
        return aw
    min_vox = max(1, int(MIN_COMPONENT_MM2 / w.sp**2))
    ks = np.nonzero(airway.any(axis=(1, 2)))[0]
    k_top, k_bot = int(ks.max()), int(ks.min())
    comps_by_k: dict[int, list[np.ndarray]] = {}

    def comps(k: int) -> list[np.ndarray]:
        if k not in comps_by_k:
            comps_by_k[k] = _components(airway[k], min_vox)
        return comps_by_k[k]

    def split(k: int) -> bool:
        c = comps(k)
        if len(c) < 2:
            return False
        xa = w.x[np.nonzero(c[0])[1]].mean()
        xb = w.x[np.nonzero(c[1])[1]].mean()
        return abs(xa - xb) >= MIN_LUMEN_SEPARATION_MM

    k_split = None
    for k in range(k_top, k_bot - 1, -1):
        if split(k) and (k == k_bot or split(k - 1) or not airway[k - 1].any()):
            k_split = k
            break
    if k_split is not None and k_split == k_top:
        lv.miss("carina", "the airway is already divided at the top of the field of view (carina above it)")
        return aw
    if k_split is not None:
        k_ref = k_split + 1
        z_car = w.z[k_ref] - w.sp / 2
        src = "label:trachea/bronchi (airway bifurcation: lowest level with a single lumen)"
    else:
        if w.at_bottom(w.z[k_bot] - w.sp / 2):
            lv.miss("carina", "the trachea runs out of the bottom of the field of view")
            return aw
        k_ref = k_bot
        z_car = w.z[k_bot] - w.sp / 2
        src = "label:trachea (lower end of the trachea label; no bifurcation seen)"
    c = comps(k_ref)
    ref = c[0] if c else airway[k_ref]
    jj, ii = np.nonzero(ref)
    aw.k_carina = k_ref
    aw.x_c, aw.y_c = float(w.x[ii].mean()), float(w.y[jj].mean())
    lv.set("carina", z_car, src, aw.x_c, aw.y_c)

    # Per-slice tracheal geometry above the carina (largest component).
    nz = len(w.z)
    cx, cy, xl, xr, ya, yp = (np.full(nz, np.nan) for _ in range(6))
    h = w.sp / 2
    for k in range(k_ref, k_top + 1):
        c = comps(k)
        if not c:
            continue
        jj, ii = np.nonzero(c[0])
        cx[k], cy[k] = w.x[ii].mean(), w.y[jj].mean()
        xl[k], xr[k] = w.x[ii].max() + h, w.x[ii].min() - h
        ya[k], yp[k] = w.y[jj].min() - h, w.y[jj].max() + h
    # Near the carina the airway flares into the bronchi: keep the trachea's own width.
    k_lo, k_hi = w.k_of(z_car + 10.0), w.k_of(z_car + 40.0)
    ref_l = np.nanmedian(xl[k_lo:k_hi + 1]) if np.isfinite(xl[k_lo:k_hi + 1]).any() else np.nan
    ref_r = np.nanmedian(xr[k_lo:k_hi + 1]) if np.isfinite(xr[k_lo:k_hi + 1]).any() else np.nan
    if np.isfinite(ref_l):
        xl[:k_lo] = np.minimum(xl[:k_lo], ref_l)
        xr[:k_lo] = np.maximum(xr[:k_lo], ref_r)
    aw.cx, aw.cy, aw.xl, aw.xr, aw.ya, aw.yp = (_fill_nan(a) for a in (cx, cy, xl, xr, ya, yp))

    # Bronchi below the carina: airway components right / left of the carina.
    right = np.zeros_like(airway)
    left = np.zeros_like(airway)
    right_names = w.mask(an.MAIN_BRONCHUS_RIGHT, an.BRONCHUS_INTERMEDIUS)
    left_names = w.mask(an.MAIN_BRONCHUS_LEFT)
    for k in range(0, k_ref):
        if not airway[k].any():
            continue
        lab, n = ndi.label(airway[k], structure=_EIGHT)
        for i in range(1, n + 1):
            comp = lab == i
            if (comp & right_names[k]).sum() > (comp & left_names[k]).sum():
                right[k] |= comp
            elif (comp & left_names[k]).sum() > 0:
                left[k] |= comp
            elif w.x[np.nonzero(comp)[1]].mean() < aw.x_c:
                right[k] |= comp
            else:
                left[k] |= comp
    aw.right, aw.left = right, left
    return aw


def _find_arch(w: _Work, lv: _Levels, aw: _Airway) -> None:
    aorta = w.mask("aorta")
    if not aorta.any():
        for key in ("arch_top", "arch_bottom"):
            lv.miss(key, "no aorta label")
        return
    ks = np.nonzero(aorta.any(axis=(1, 2)))[0]
    k_top = int(ks.max())
    if w.at_top(w.z[k_top] + w.sp / 2):
        for key in ("arch_top", "arch_bottom"):
            lv.miss(key, "the aorta runs out of the top of the field of view (aortic arch not imaged)")
        return
    # Each part must be a vessel's cross-section, not a speck at the edge of a partial-volume cap.
    min_vox = max(1, int(ARCH_PART_MIN_MM2 / w.sp**2))
    k_split = None
    for k in range(k_top, int(ks.min()) - 1, -1):
        c = _components(aorta[k], min_vox)
        if len(c) >= 2:
            ya = w.y[np.nonzero(c[0])[0]].mean()
            yb = w.y[np.nonzero(c[1])[0]].mean()
            if abs(ya - yb) >= 15.0:
                k_split = k
                break
    src_bottom = "label:aorta (lowest level where the arch is one component bridging ascending and descending aorta)"
    if k_split is None and aw.k_carina is not None:
        # No separate ascending aorta: the arch is where the aorta reaches the tracheal midline.
        k = k_top
        while k >= 0 and aorta[k].any() and w.x[np.nonzero(aorta[k])[1]].min() <= aw.cx[k]:
            k -= 1
        if k < k_top:
            k_split = k
            src_bottom = ("label:aorta (lowest level where the aorta still crosses the tracheal midline; "
                          "no separate ascending aorta labelled)")
    if k_split is None:
        for key in ("arch_top", "arch_bottom"):
            lv.miss(key, "the aorta label neither separates into ascending and descending parts nor crosses "
                         "the midline (aortic arch not identified)")
        return
    jj, ii = np.nonzero(aorta[k_top])
    lv.set("arch_top", w.z[k_top] + w.sp / 2, "label:aorta (top of the aorta label)",
           w.x[ii].mean(), w.y[jj].mean())
    jj, ii = np.nonzero(aorta[k_split + 1])
    lv.set("arch_bottom", w.z[k_split] + w.sp / 2, src_bottom, w.x[ii].mean(), w.y[jj].mean())


def _find_bcv_crossing(w: _Work, lv: _Levels, aw: _Airway) -> None:
    if aw.k_carina is None:
        lv.miss("bcv_crossing", "needs the trachea (carina not found)")
        return
    bcv = w.mask("brachiocephalic_vein_left")
    if bcv.any():
        within = bcv & (w.X >= aw.xr[:, None, None]) & (w.X <= aw.xl[:, None, None])
        if within.any():
            _set_at_caudal_margin(w, lv, "bcv_crossing", within,
                                  "label:brachiocephalic_vein_left (caudal margin where it crosses in front of the trachea)")
            return
    z_arch = lv.get("arch_top")
    if z_arch is not None:
        why = ("the left brachiocephalic vein label does not cross the trachea" if bcv.any()
               else "no left brachiocephalic vein label")
        lv.set("bcv_crossing", z_arch, f"proxy: upper border of the aortic arch ({why})")
        return
    lv.miss("bcv_crossing", "no left brachiocephalic vein crossing the trachea and no aortic arch to stand in for it")


def _set_at_caudal_margin(w: _Work, lv: _Levels, name: str, mask: np.ndarray, source: str) -> None:
    """Level `name` at the caudal margin of `mask` (below its lowest slice), centred on that slice's voxels."""
    kk, jj, ii = np.nonzero(mask)
    k = int(kk.min())
    sel = kk == k
    lv.set(name, w.z[k] - w.sp / 2, source, w.x[ii[sel]].mean(), w.y[jj[sel]].mean())


def _find_azygos(w: _Work, lv: _Levels, aw: _Airway) -> None:
    z_car = lv.get("carina")
    if z_car is None:
        lv.miss("azygos_lower", "needs the carina")
        return
    az = w.mask(an.AZYGOS_VEIN)
    if az.any():
        yp_c = float(aw.yp[aw.k_carina])
        arch = az & (w.Y < yp_c)
        if arch.any():
            _set_at_caudal_margin(w, lv, "azygos_lower", arch, "label:azygos_vein (lower border of the azygos arch, "
                                  "the part in front of the posterior tracheal wall)")
            return
    lv.set("azygos_lower", z_car,
           "proxy: carina level (no azygos arch labelled; the arch lies at the right tracheobronchial angle)")


def _find_pa(w: _Work, lv: _Levels, aw: _Airway) -> None:
    z_car = lv.get("carina")
    pa = w.mask(an.PULMONARY_ARTERY)
    z = None
    if pa.any():
        left = pa & (w.X > aw.x_c) if z_car is not None else pa
        use = left if left.any() else pa
        kk, jj, ii = np.nonzero(use)
        k = int(kk.max())
        sel = kk == k
        z, src = w.z[k] + w.sp / 2, "label:pulmonary_artery (upper rim, left of the carina)"
        x, y = w.x[ii[sel]].mean(), w.y[jj[sel]].mean()
    heart_note = ""
    if z is None and w.has("heart"):
        heart = w.mask("heart")
        kk, jj, ii = np.nonzero(heart)
        k = int(kk.max())
        sel = kk == k
        z_h = w.z[k] + w.sp / 2
        if z_car is not None and z_h < z_car - PA_PROXY_BELOW_CARINA_MM:
            # A heart label ending this far below the carina does not hold the pulmonary trunk.
            heart_note = (f"; the heart label ends {z_car - z_h:.0f} mm below the carina, so it does not show "
                          "the pulmonary trunk")
        else:
            z = z_h
            src = ("proxy: top of the heart label (TotalSegmentator's heart includes the pulmonary trunk "
                   "and left pulmonary artery; no pulmonary artery label)")
            x, y = w.x[ii[sel]].mean(), w.y[jj[sel]].mean()
    if z is None and w.has("pulmonary_vein"):
        kk = np.nonzero(w.mask("pulmonary_vein").any(axis=(1, 2)))[0]
        z = w.z[int(kk.max())] + w.sp / 2 + PA_ABOVE_VEINS_MM
        src = (f"proxy: {PA_ABOVE_VEINS_MM:g} mm above the top of the pulmonary veins (no pulmonary artery or heart "
               f"label{heart_note})")
        x = y = None
    elif z is None and z_car is not None:
        z = z_car + PA_ABOVE_CARINA_MM
        src = (f"proxy: {PA_ABOVE_CARINA_MM:g} mm above the carina (no pulmonary artery, heart or pulmonary vein "
               f"label{heart_note})")
        x = y = None
    if z is None:
        lv.miss("pa_top", "no pulmonary artery, heart or pulmonary vein label and no carina")
        return
    if src.startswith("proxy") and z_car is not None and z < z_car - PA_PROXY_BELOW_CARINA_MM:
        src += f"; kept at most {PA_PROXY_BELOW_CARINA_MM:g} mm below the carina (was {z:.1f} mm)"
        z = z_car - PA_PROXY_BELOW_CARINA_MM
    z_ab = lv.get("arch_bottom")
    if z_ab is not None and z > z_ab - w.sp:
        src += f"; clamped below the lower border of the arch (was {z:.1f} mm)"
        z = z_ab - w.sp
    if z >= w.fov_top:
        lv.miss("pa_top", "upper rim of the pulmonary artery lies above the field of view")
        return
    lv.set("pa_top", z, src, x, y)


def _label_bottom(w: _Work, name: str) -> tuple[float, float, float] | None:
    m = w.mask(name)
    if not m.any():
        return None
    kk, jj, ii = np.nonzero(m)
    k = int(kk.min())
    sel = kk == k
    return w.z[k] - w.sp / 2, w.x[ii[sel]].mean(), w.y[jj[sel]].mean()


def _find_station7_lower(w: _Work, lv: _Levels) -> None:
    z_car = lv.get("carina")
    # Right: lower border of the bronchus intermedius.
    bi = _label_bottom(w, an.BRONCHUS_INTERMEDIUS)
    if bi is not None and not w.at_bottom(bi[0]):
        lv.set("station7_lower_right", bi[0], "label:bronchus_intermedius (lower end)", bi[1], bi[2])
    elif z_car is None:
        lv.miss("station7_lower_right", "no bronchus intermedius label and no carina")
    else:
        ml = w.mask("lung_middle_lobe_right")
        if ml.any():
            k = int(np.nonzero(ml.any(axis=(1, 2)))[0].max())
            z = w.z[k] + w.sp / 2
            src = ("proxy: top of the right middle lobe (the middle-lobe bronchus leaves the bronchus "
                   "intermedius at its lower end)")
        else:
            z = z_car - BI_BELOW_CARINA_MM
            src = f"proxy: {BI_BELOW_CARINA_MM:g} mm below the carina (no bronchus intermedius or middle lobe label)"
        lo, hi = z_car - STATION7_MAX_MM, z_car - STATION7_MIN_MM
        if not lo <= z <= hi:
            src += f"; kept {STATION7_MIN_MM:g}-{STATION7_MAX_MM:g} mm below the carina (was {z:.1f} mm)"
            z = float(np.clip(z, lo, hi))
        lv.set("station7_lower_right", z, src)
    lmb = _label_bottom(w, an.MAIN_BRONCHUS_LEFT)
    if lmb is not None and not w.at_bottom(lmb[0]):
        lv.set("station7_lower_left", lmb[0],
               "label:main_bronchus_left (lower end = upper border of the left lower lobe bronchus)", lmb[1], lmb[2])
    elif z_car is None:
        lv.miss("station7_lower_left", "no left main bronchus label and no carina")
    else:
        lv.set("station7_lower_left", z_car - LLB_BELOW_CARINA_MM,
               f"proxy: {LLB_BELOW_CARINA_MM:g} mm below the carina (upper border of the left lower lobe "
               "bronchus; no left main bronchus label)")


def _find_lower_levels(w: _Work, lv: _Levels, aw: _Airway, lung_r: np.ndarray, lung_l: np.ndarray) -> None:
    pv = w.mask("pulmonary_vein")
    x_mid = aw.x_c if aw.k_carina is not None else None
    for side, lung in (("right", lung_r), ("left", lung_l)):
        key = f"ipv_{side}"
        part = None
        if pv.any():
            if x_mid is None:
                ii = np.nonzero(pv.any(axis=(0, 1)))[0]
                x_mid = float(np.median(w.x[ii]))
            part = pv & ((w.X < x_mid) if side == "right" else (w.X >= x_mid))
        if part is not None and part.any():
            kk, jj, ii = np.nonzero(part)
            k = int(kk.min())
            sel = kk == k
            lv.set(key, w.z[k] - w.sp / 2, f"label:pulmonary_vein (lowest {side} pulmonary vein, lower margin)",
                   w.x[ii[sel]].mean(), w.y[jj[sel]].mean())
        elif lv.get(f"station7_lower_{side}") is not None:
            lv.set(key, lv.get(f"station7_lower_{side}"),
                   f"proxy: lower border of station 7 on the {side} (no {side} pulmonary vein label)")
        else:
            lv.miss(key, f"no {side} pulmonary vein label and no station-7 lower border to stand in for it")
        # Lung base.
        if lung.any():
            kk = np.nonzero(lung.any(axis=(1, 2)))[0]
            zb = w.z[int(kk.min())] - w.sp / 2
            if w.at_bottom(zb):
                lv.set(f"lung_base_{side}", w.fov_bottom,
                       f"field of view: the {side} lung runs out of the bottom of the scan")
            else:
                lv.set(f"lung_base_{side}", zb, f"label:lung ({side} lung base, lowest lung voxel)")
            zt = w.z[int(kk.max())] + w.sp / 2
            if w.at_top(zt):
                lv.miss(f"lung_apex_{side}", f"the {side} lung runs out of the top of the field of view")
            else:
                lv.set(f"lung_apex_{side}", zt, f"label:lung ({side} lung apex)")
        else:
            lv.miss(f"lung_base_{side}", f"no {side} lung label")
            lv.miss(f"lung_apex_{side}", f"no {side} lung label")
    # Reference: diaphragm domes.
    if w.has(DIAPHRAGM):
        d = w.mask(DIAPHRAGM)
        for side, sel in (("right", w.X < (x_mid or 0.0)), ("left", w.X >= (x_mid or 0.0))):
            part = d & sel
            if part.any():
                k = int(np.nonzero(part.any(axis=(1, 2)))[0].max())
                lv.record(f"diaphragm_dome_{side}", w.z[k] + w.sp / 2, "label:diaphragm (top)")
    if w.has("liver"):
        k = int(np.nonzero(w.mask("liver").any(axis=(1, 2)))[0].max())
        if not w.at_top(w.z[k] + w.sp / 2):
            lv.record("diaphragm_dome_right_liver", w.z[k] + w.sp / 2, "label:liver (dome, top of the liver)")


def _find_upper_levels(w: _Work, lv: _Levels) -> None:
    # Clavicles (reference + proxy for the manubrium).
    clav_z = []
    for side, name in (("right", "clavicula_right"), ("left", "clavicula_left")):
        m = w.mask(name)
        if not m.any():
            continue
        kk, jj, ii = np.nonzero(m)
        xs = w.x[ii]
        medial = (xs >= xs.max() - 15.0) if side == "right" else (xs <= xs.min() + 15.0)
        zc = float(w.z[kk[medial]].mean())
        lv.record(f"clavicle_{side}", zc, f"label:{name} (sternal end, mean level)",
                  float(xs[medial].mean()), float(w.y[jj[medial]].mean()))
        clav_z.append((float(w.z[kk[medial]].max()) + w.sp / 2, name))
    st = w.mask("sternum")
    if st.any():
        k = int(np.nonzero(st.any(axis=(1, 2)))[0].max())
        z = w.z[k] + w.sp / 2
        if not w.at_top(z):
            jj, ii = np.nonzero(st[k])
            lv.set("manubrium_top", z, "label:sternum (upper border of the manubrium)", w.x[ii].mean(), w.y[jj].mean())
        else:
            lv.miss("manubrium_top", "the sternum runs out of the top of the field of view")
    if lv.get("manubrium_top") is None and "manubrium_top" not in lv.missing:
        if clav_z:
            z = max(v for v, _ in clav_z)
            if not w.at_top(z):
                lv.set("manubrium_top", z, "proxy: top of the sternal ends of the clavicles (no sternum label)")
        if lv.get("manubrium_top") is None:
            apex = [lv.get("lung_apex_right"), lv.get("lung_apex_left")]
            apex = [a for a in apex if a is not None]
            if apex:
                lv.set("manubrium_top", max(apex), "proxy: lung apex (no sternum or clavicle label)")
            else:
                lv.miss("manubrium_top", "no sternum, clavicle or lung apex in the field of view")
    c7 = w.mask("vertebrae_C7")
    z = None
    if c7.any():
        k = int(np.nonzero(c7.any(axis=(1, 2)))[0].max())
        z = w.z[k] + w.sp / 2
        if not w.at_top(z):
            lv.set("cricoid_lower", z, "proxy: top of the C7 vertebra (the cricoid's lower margin lies at about C6-C7)")
            return
    lv.set("cricoid_lower", w.fov_top, "field of view: top of the scan (cricoid not identified)")


# ----------------------------------------------------------------------------------------
# Station regions
# ----------------------------------------------------------------------------------------

REQUIRES: dict[str, tuple[str, ...]] = {
    "1R": ("manubrium_top", "carina"), "1L": ("manubrium_top", "carina"),
    "2R": ("manubrium_top", "bcv_crossing", "carina"), "2L": ("manubrium_top", "arch_top", "carina"),
    "3a": ("manubrium_top", "carina"), "3p": ("manubrium_top", "carina"),
    "4R": ("bcv_crossing", "azygos_lower", "carina"), "4L": ("arch_top", "arch_bottom", "pa_top", "carina"),
    "5": ("arch_bottom", "pa_top", "carina"), "6": ("arch_top", "arch_bottom", "carina"),
    "7": ("carina", "station7_lower_right", "station7_lower_left"),
    "8R": ("station7_lower_right", "lung_base_right"), "8L": ("station7_lower_left", "lung_base_left"),
    "9R": ("ipv_right", "lung_base_right"), "9L": ("ipv_left", "lung_base_left"),
    "10R": ("azygos_lower", "ipv_right", "carina"), "10L": ("pa_top", "ipv_left", "carina"),
}
LANDMARK_WORDS = {
    "carina": "carina", "arch_top": "upper border of the aortic arch", "arch_bottom": "lower border of the aortic arch",
    "bcv_crossing": "left brachiocephalic vein crossing", "azygos_lower": "lower border of the azygos arch",
    "pa_top": "upper rim of the left pulmonary artery", "manubrium_top": "upper border of the manubrium",
    "station7_lower_right": "lower border of the bronchus intermedius",
    "station7_lower_left": "upper border of the left lower lobe bronchus",
    "ipv_right": "right inferior pulmonary vein", "ipv_left": "left inferior pulmonary vein",
    "lung_base_right": "right lung base", "lung_base_left": "left lung base",
}


def _vessel_front(w: _Work, aw: _Airway, k0: int, k1: int) -> np.ndarray:
    """Per slice and column: y (mm) of the front of the great vessels lying in front of the trachea."""
    nz, ny, nx = w.arr.shape
    front = np.full((nz, nx), np.nan)
    vessels = w.mask(*GREAT_VESSELS)
    for k in range(k0, k1):
        ant = vessels[k] & (w.y[:, None] < aw.cy[k])
        cols = ant.any(axis=0)
        if cols.sum() == 0:
            front[k] = aw.ya[k] - PREVASCULAR_PROXY_MM
            continue
        first = np.argmax(ant, axis=0)
        yy = w.y[first]
        xs = np.nonzero(cols)[0]
        front[k] = np.interp(np.arange(nx), xs, yy[xs])
    return front


def _mediastinal_space(w: _Work, lung_r: np.ndarray, lung_l: np.ndarray, free: np.ndarray) -> np.ndarray:
    """Free space between the lungs, behind the sternum, in front of the spine (see module docstring)."""
    nz, ny, nx = w.arr.shape
    lung = lung_r | lung_l
    ii = np.arange(nx)[None, None, :]
    has_r, has_l = lung_r.any(axis=2), lung_l.any(axis=2)
    r_med = nx - 1 - np.argmax(lung_r[:, :, ::-1], axis=2)   # medial (left-most) right-lung voxel per row
    l_med = np.argmax(lung_l, axis=2)                        # medial (right-most) left-lung voxel per row
    between = (has_r & has_l)[:, :, None] & (ii > r_med[:, :, None]) & (ii < l_med[:, :, None])
    sternum = w.mask("sternum")
    spine = w.mask(*[n for n in w.values if n.startswith("vertebrae_")], "spine", "spinal_cord")
    space = np.zeros_like(lung)
    for k in range(nz):
        if not (lung_r[k].any() and lung_l[k].any()):
            continue
        region = between[k].copy()
        if sternum[k].any():
            jj, si = np.nonzero(sternum[k])
            back = np.full(nx, -np.inf)
            np.maximum.at(back, si, w.y[jj])
            cols = np.nonzero(np.isfinite(back))[0]
            back_all = np.interp(np.arange(nx), cols, back[cols])  # constant beyond the sternum
            behind = w.y[:, None] > back_all[None, :]
            lo, hi = cols.min(), cols.max()
            box = np.zeros((ny, nx), dtype=bool)
            box[:, lo:hi + 1] = True
            region = (region | (box & _hull_fill(lung[k] | sternum[k]))) & behind
        if spine[k].any():
            jj, si = np.nonzero(spine[k])
            front = np.full(nx, np.inf)
            np.minimum.at(front, si, w.y[jj])
            cols = np.nonzero(np.isfinite(front))[0]
            front_all = np.interp(np.arange(nx), cols, front[cols])
            region &= w.y[:, None] < front_all[None, :]
        space[k] = region
    return space & free


def _esophagus_proxy(w: _Work, k_end: int) -> np.ndarray | None:
    """A stand-in esophagus below the carina (slices 0..k_end-1) when no esophagus is labelled.

    Below the carina the esophagus runs in the posterior mediastinum in front of the
    vertebral bodies, immediately in front of and to the right of the descending aorta.
    Per slice, the proxy is a disc of ESOPHAGUS_PROXY_RADIUS_MM centred midway in x
    between the vertebral body's centre and the descending aorta's centre, and
    ESOPHAGUS_PROXY_ANTERIOR_MM in front of the aorta's centre (the descending aorta: the
    aorta component nearest the vertebral body, within DESCENDING_AORTA_SEARCH_MM in front
    of it). Slices without an aorta take the median offsets from the vertebral body of the
    others (none at all: the vertebral body's centre, ESOPHAGUS_PROXY_ANTERIOR_MM in front
    of it). Centres are smoothed along z. None without a spine label below the carina.
    """
    spine = w.mask(*[n for n in w.values if n.startswith("vertebrae_")], "spine")
    aorta = w.mask("aorta")
    nz = len(w.z)
    k_end = min(k_end, nz)
    xs, yf = np.full(nz, np.nan), np.full(nz, np.nan)  # vertebral body centre x, anterior surface y
    dx, dy = np.full(nz, np.nan), np.full(nz, np.nan)  # proxy centre relative to (xs, yf), where an aorta is seen
    for k in range(k_end):
        if not spine[k].any():
            continue
        jj, ii = np.nonzero(spine[k])
        y_front = float(w.y[jj].min())
        x_sp = float(w.x[ii[w.y[jj] <= y_front + VERTEBRAL_BODY_DEPTH_MM]].mean())
        xs[k], yf[k] = x_sp, y_front
        ao = aorta[k] & (w.y[:, None] >= y_front - DESCENDING_AORTA_SEARCH_MM)
        best = None
        for comp in _components(ao, max(1, int(MIN_COMPONENT_MM2 / w.sp**2))):
            aj, ai = np.nonzero(comp)
            xa, ya = float(w.x[ai].mean()), float(w.y[aj].mean())
            d = math.hypot(xa - x_sp, ya - y_front)
            if best is None or d < best[0]:
                best = (d, xa, ya)
        if best is not None:
            dx[k] = 0.5 * (best[1] - x_sp)
            dy[k] = best[2] - ESOPHAGUS_PROXY_ANTERIOR_MM - y_front
    ks = np.nonzero(np.isfinite(xs))[0]
    if ks.size == 0:
        return None
    if np.isfinite(dx).any():
        dx = np.where(np.isfinite(dx), dx, np.nanmedian(dx))
        dy = np.where(np.isfinite(dy), dy, np.nanmedian(dy))
    else:
        dx = np.zeros(nz)
        dy = np.full(nz, -ESOPHAGUS_PROXY_ANTERIOR_MM)
    size = max(1, int(round(20.0 / w.sp)) | 1)
    cx = ndi.median_filter(xs[ks] + dx[ks], size=size, mode="nearest")
    cy = ndi.median_filter(yf[ks] + dy[ks], size=size, mode="nearest")
    out = np.zeros(w.arr.shape, dtype=bool)
    r2 = ESOPHAGUS_PROXY_RADIUS_MM ** 2
    for k, x0, y0 in zip(ks, cx, cy):
        out[k] = ((w.x[None, :] - x0) ** 2 + (w.y[:, None] - y0) ** 2) <= r2
    return out


def _build_regions(w: _Work, lv: _Levels, aw: _Airway, lung_r: np.ndarray, lung_l: np.ndarray,
                   notes: list[str]) -> np.ndarray:
    S = np.zeros(w.arr.shape, dtype=np.uint8)
    V = STATION_VALUES
    nz = len(w.z)
    Z, Y, X = w.Z, w.Y, w.X
    lung = lung_r | lung_l
    containers = [w.values[n] for n in CONTAINERS if n in w.values]
    labelled = (w.arr > 0) & ~np.isin(w.arr, containers) & ~lung
    free = ~labelled & ~lung
    if w.has(an.BODY):
        free &= w.mask(an.BODY)
    med = _mediastinal_space(w, lung_r, lung_l, free)

    def put(cond: np.ndarray, station: str) -> None:
        c = cond & (S == 0)
        S[c] = V[station]

    z = lv.z
    have = lambda *keys: all(k in z for k in keys)  # noqa: E731
    k_car = aw.k_carina
    z_car = z.get("carina")
    side_x = aw.x_c if k_car is not None else 0.0

    # --- Station 1 ---------------------------------------------------------------------
    s1_border = None
    if k_car is not None:
        cx, xl, xr = aw.cx[:, None, None], aw.xl[:, None, None], aw.xr[:, None, None]
        ya, yp = aw.ya[:, None, None], aw.yp[:, None, None]
    if have("manubrium_top", "carina"):
        z_man = z["manubrium_top"]
        ap_r = max(z_man, z.get("lung_apex_right", z_man))
        ap_l = max(z_man, z.get("lung_apex_left", z_man))
        midline = (X >= xr) & (X <= xl)
        s1_border = np.where(midline, z_man, np.where(X < cx, ap_r, ap_l))
        k_man = w.k_of(z_man)
        if w.has(an.BODY):
            body = w.mask(an.BODY)
        else:
            body = np.zeros_like(lung)
            anything = w.arr > 0
            for k in range(k_man, nz):
                if anything[k].any():
                    body[k] = _hull_fill(anything[k])
            notes.append("proxy: body outline for station 1 = convex hull of all labelled structures per slice")
        box = ((Z > s1_border) & (Z <= z["cricoid_lower"]) & body & ~labelled & ~lung
               & (np.abs(X - cx) <= STATION1_LATERAL_MM)
               & (Y >= ya - STATION1_ANTERIOR_MM) & (Y <= yp + STATION1_POSTERIOR_MM))
        put(box & (X < cx), "1R")
        put(box & (X >= cx), "1L")

    if k_car is None:
        # Without a carina only the lower stations with labelled borders and the lungs remain.
        above = np.zeros((nz, 1, 1), dtype=bool)
        below = np.zeros((nz, 1, 1), dtype=bool)
    else:
        above = Z >= z_car
        above = above & (Z <= s1_border) if s1_border is not None else np.zeros_like(above)
        below = Z < z_car

    # --- 3p retrotracheal, 3a/6 prevascular ----------------------------------------------
    if k_car is not None and s1_border is not None:
        put(med & above & (Y > yp) & (X >= xr) & (X <= xl), "3p")
        front = _vessel_front(w, aw, w.k_of(z_car), nz)
        prevasc = med & above & (Y < front[:, None, :])
        if have("arch_top", "arch_bottom"):
            arch_lv = (Z >= z["arch_bottom"]) & (Z <= z["arch_top"])
            ka, kb = w.k_of(z["arch_bottom"] - w.sp), w.k_of(z["arch_top"] + w.sp)
            aorta = w.mask("aorta")
            d_ao = _dist_inplane(w, aorta, ka, kb + 1)
            ax = np.full(nz, np.nan)
            for k in range(ka, min(kb + 1, nz)):
                ant = aorta[k] & (w.y[:, None] < aw.cy[k])
                if ant.any():
                    ax[k] = w.x[np.nonzero(ant)[1]].mean()
            ax = _fill_nan(ax) if np.isfinite(ax).any() else np.full(nz, np.inf)
            put(prevasc & arch_lv & (d_ao <= PARA_AORTIC_MM) & (X >= ax[:, None, None]), "6")
        put(prevasc, "3a")

    # --- Lower mediastinum helpers (esophagus, lungs) ------------------------------------
    eso = w.mask("esophagus")
    lows = [z[k] for k in ("station7_lower_right", "station7_lower_left") if k in z]
    k_low = w.k_of(max(lows) + w.sp) if lows else 0
    has_eso = bool(eso[:k_low].any())
    if lows and not has_eso:
        proxy = _esophagus_proxy(w, k_low)
        if proxy is not None:
            eso, has_eso = proxy, True
            notes.append(f"proxy: no esophagus label; below the carina the esophagus is taken as a "
                         f"{ESOPHAGUS_PROXY_RADIUS_MM:g} mm disc {ESOPHAGUS_PROXY_ANTERIOR_MM:g} mm in front of the "
                         "descending aorta's centre, midway between it and the vertebral body's centre in x")
    if lows:
        d_eso = _dist_inplane(w, eso, 0, k_low)
        ex = np.full(nz, np.nan)
        ey = np.full(nz, np.nan)
        for k in range(0, k_low):
            if eso[k].any():
                jj, ii = np.nonzero(eso[k])
                ex[k], ey[k] = w.x[ii].mean(), w.y[jj].mean()
        if has_eso:
            ex, ey = _fill_nan(ex)[:, None, None], _fill_nan(ey)[:, None, None]
        else:
            ex = np.full((nz, 1, 1), side_x)
            ey = np.full((nz, 1, 1), aw.y_c + 15.0 if k_car is not None else 0.0)
            notes.append(f"proxy: no esophagus label; station 8 = mediastinal space behind a line 10 mm in front "
                         f"of the carina, within {PARAESOPHAGEAL_PROXY_MM:g} mm of the carina's x, split there")
        d_lr = _dist_inplane(w, lung_r, 0, k_low)
        d_ll = _dist_inplane(w, lung_l, 0, k_low)

    def zone8(side: str) -> np.ndarray | None:
        if not (lows and have(f"station7_lower_{side}", f"lung_base_{side}")):
            return None
        this_side = (X < ex) if side == "right" else (X >= ex)
        return med & this_side & (Z < z[f"station7_lower_{side}"]) & (Z >= z[f"lung_base_{side}"])

    # Paraesophageal space hugging the esophagus comes before hilar space at the same level.
    if has_eso:
        for side, st in (("right", "8R"), ("left", "8L")):
            zn = zone8(side)
            if zn is not None:
                put(zn & (d_eso <= PARAESOPHAGEAL_NEAR_MM), st)

    # --- 7, paratracheal, aortic and hilar stations ----------------------------------------
    if k_car is not None:
        x_rmed = np.full(nz, np.nan)
        x_lmed = np.full(nz, np.nan)
        h = w.sp / 2
        for k in range(0, k_car):
            if aw.right[k].any():
                x_rmed[k] = w.x[np.nonzero(aw.right[k])[1]].max() + h
            if aw.left[k].any():
                x_lmed[k] = w.x[np.nonzero(aw.left[k])[1]].min() - h
        if np.isfinite(x_rmed).any() and np.isfinite(x_lmed).any():
            x_rmed[k_car:] = aw.x_c
            x_lmed[k_car:] = aw.x_c
            x_rmed = np.minimum(_fill_nan(x_rmed), aw.x_c - SUBCARINAL_MIN_HALF_WIDTH_MM)[:, None, None]
            x_lmed = np.maximum(_fill_nan(x_lmed), aw.x_c + SUBCARINAL_MIN_HALF_WIDTH_MM)[:, None, None]
        else:
            x_rmed = np.full((nz, 1, 1), aw.x_c - SUBCARINAL_PROXY_HALF_WIDTH_MM)
            x_lmed = np.full((nz, 1, 1), aw.x_c + SUBCARINAL_PROXY_HALF_WIDTH_MM)
            notes.append(f"proxy: main bronchi not labelled below the carina; station 7 column = "
                         f"{SUBCARINAL_PROXY_HALF_WIDTH_MM:g} mm either side of the carina")
        if have("station7_lower_right", "station7_lower_left"):
            z7 = np.where(X < aw.x_c, z["station7_lower_right"], z["station7_lower_left"])
            put(med & below & (X >= x_rmed) & (X <= x_lmed) & (Z >= z7)
                & (Y >= aw.y_c - SUBCARINAL_ANTERIOR_MM) & (Y <= aw.y_c + SUBCARINAL_POSTERIOR_MM), "7")
        right_lat = below & (X < x_rmed)
        left_lat = below & (X > x_lmed)
        right_zone = ((above & (X <= xl)) | right_lat) & (Y <= yp + RIGHT_POSTERIOR_MM)
        left_zone = ((above & (X > xl)) | left_lat) & (Y <= yp + LEFT_POSTERIOR_MM)
        k_air0 = w.k_of(min(z_car, z.get("pa_top", z_car)) - 10.0)
        d_air = _dist_inplane(w, aw.mask, k_air0)

        # Hilar zones below the carina.
        ipvs = [z[k] for k in ("ipv_right", "ipv_left") if k in z]
        k_ipv = w.k_of(min(ipvs) - w.sp) if ipvs else k_car
        hilar_vessels = w.mask(an.PULMONARY_ARTERY, "pulmonary_vein")
        hil = {}
        for side, bron, lungs in (("right", aw.right, lung_r), ("left", aw.left, lung_l)):
            half = (X < aw.x_c) if side == "right" else (X >= aw.x_c)
            core = bron | (hilar_vessels & half)
            d_core = _dist_3d(w, core, k_ipv, k_car)
            d_bron = _dist_3d(w, bron, k_ipv, k_car)
            d_lung = _dist_inplane(w, lungs, k_ipv, k_car)
            # The lung root: free space in the concavity of this lung (its axial convex hull).
            root = np.zeros_like(lungs)
            for k in range(k_ipv, k_car):
                if lungs[k].any():
                    root[k] = _hull_fill(lungs[k]) & free[k]
            no_core = ~core.any(axis=(1, 2))[:, None, None]
            proxy = (no_core & med & (d_lung <= HILAR_PROXY_LUNG_MM)
                     & (Y >= aw.y_c - HILAR_PROXY_ANTERIOR_MM) & (Y <= aw.y_c + HILAR_PROXY_POSTERIOR_MM))
            if (proxy & below).any():
                notes.append(f"proxy: {side} hilum on slices without a labelled bronchus or hilar vessel = "
                             f"mediastinal space within {HILAR_PROXY_LUNG_MM:g} mm of the {side} lung, from "
                             f"{HILAR_PROXY_ANTERIOR_MM:g} mm in front of to {HILAR_PROXY_POSTERIOR_MM:g} mm "
                             "behind the carina")
            hil[side] = (((med | root) & (d_core <= HILAR_CORE_MM)) | (lungs & (d_bron <= HILAR_LUNG_MM))
                         | proxy) & below

        # Right side.
        if have("bcv_crossing") and s1_border is not None:
            put(med & right_zone & above & (Z > z["bcv_crossing"]), "2R")
        if have("bcv_crossing", "azygos_lower"):
            upper = (Z <= z["bcv_crossing"]) & (Z >= z["azygos_lower"])
            put(med & right_zone & above & upper, "4R")
            put(med & right_lat & upper & (d_air <= HILAR_CORE_MM), "4R")
        if have("azygos_lower", "ipv_right"):
            zone10 = (Z < z["azygos_lower"]) & (Z >= z["ipv_right"])
            put(med & right_zone & above & zone10, "10R")
            put(hil["right"] & (X < x_rmed) & below & zone10, "10R")
        # Left side.
        if have("arch_top") and s1_border is not None:
            put(med & left_zone & above & (Z > z["arch_top"]), "2L")
        if have("arch_top", "arch_bottom"):
            lv_arch = (Z <= z["arch_top"]) & (Z >= z["arch_bottom"])
            put(med & left_zone & lv_arch & (d_air <= PARATRACHEAL_LEFT_MM), "4L")
            put(med & left_zone & lv_arch, "6")
        if have("arch_bottom", "pa_top"):
            ap = (Z < z["arch_bottom"]) & (Z >= z["pa_top"])
            put(med & left_zone & ap & (d_air <= PARATRACHEAL_LEFT_MM), "4L")
            put(med & left_zone & ap, "5")
        if have("pa_top", "ipv_left"):
            zone10 = (Z < z["pa_top"]) & (Z >= z["ipv_left"])
            put(med & left_zone & above & zone10, "10L")
            put(hil["left"] & (X > x_lmed) & below & zone10, "10L")

    # --- 9 pulmonary ligament, 8 paraesophageal --------------------------------------------
    if lows:
        band = ((Y >= ey - LIGAMENT_ANTERIOR_MM) & (Y <= ey + LIGAMENT_POSTERIOR_MM)
                & (np.abs(X - ex) <= LIGAMENT_LATERAL_MM))
        for side in ("right", "left"):
            st8, st9 = ("8R", "9R") if side == "right" else ("8L", "9L")
            this_side = (X < ex) if side == "right" else (X >= ex)
            d_lung = d_lr if side == "right" else d_ll
            if have(f"ipv_{side}", f"lung_base_{side}"):
                zone9 = (Z <= z[f"ipv_{side}"]) & (Z >= z[f"lung_base_{side}"])
                nearer = (d_lung < d_eso) if has_eso else True
                put(med & this_side & zone9 & band & (d_lung <= LIGAMENT_MM) & nearer, st9)
            zn = zone8(side)
            if zn is not None:
                if has_eso:
                    near = d_eso <= PARAESOPHAGEAL_MM
                else:
                    near = ((Y >= aw.y_c - 10.0) & (np.abs(X - side_x) <= PARAESOPHAGEAL_PROXY_MM)
                            if k_car is not None else np.zeros_like(lung))
                put(zn & near, st8)

    # --- 11-14 intrapulmonary (distance from the hilum: proxy) ---------------------------------
    hilum = (S == V["10R"]) | (S == V["10L"])
    if k_car is not None:
        hilum |= aw.right | aw.left
    d_hil = np.full(w.arr.shape, np.inf, dtype=np.float32)
    if hilum.any():
        pad = int(math.ceil(SEGMENTAL_MM / w.sp)) + 1
        kk, jj, ii = np.nonzero(hilum)
        box = tuple(slice(max(a.min() - pad, 0), min(a.max() + pad + 1, n))
                    for a, n in zip((kk, jj, ii), hilum.shape))
        d_hil[box] = ndi.distance_transform_edt(~hilum[box], sampling=(w.sp, w.sp, w.sp))
        notes.append("proxy: intrapulmonary stations 11-14 by distance from the hilum (station 10 and the "
                     f"bronchi): 11 within {INTERLOBAR_MM:g} mm of another lobe and {INTERLOBAR_HILUM_MM:g} mm of "
                     f"the hilum, 12 within {LOBAR_MM:g} mm, 13 within {SEGMENTAL_MM:g} mm, 14 beyond")
    else:
        notes.append("proxy: no hilum in the field of view; all intrapulmonary space is reported as station 14 "
                     "(11-14 cannot be told apart without the hilum; all are ipsilateral N1)")
    r = max(1, int(round(INTERLOBAR_MM / w.sp)))
    for side, lungs, names in (("R", lung_r, an.RIGHT_LUNG_LOBES), ("L", lung_l, an.LEFT_LUNG_LOBES)):
        if not lungs.any():
            continue
        # Free pockets enclosed by the lung in an axial slice (e.g. a node inside the lung) count as lung.
        pockets = np.zeros_like(lungs)
        for k in np.nonzero(lungs.any(axis=(1, 2)))[0]:
            pockets[k] = ndi.binary_fill_holes(lungs[k]) & ~lungs[k]
        inside = lungs | (pockets & free)
        lobe_vals = [w.values[n] for n in names if n in w.values]
        if len(lobe_vals) >= 2 and hilum.any():
            lobe_id = np.zeros(w.arr.shape, dtype=np.int16)
            for i, v in enumerate(lobe_vals, start=1):
                lobe_id[w.arr == v] = i
            size = 2 * r + 1
            hi = ndi.maximum_filter(lobe_id, size=size)
            lo = ndi.minimum_filter(np.where(lobe_id > 0, lobe_id, 99).astype(np.int16), size=size)
            near_other = (lobe_id > 0) & ((hi != lobe_id) | ((lo != lobe_id) & (lo != 99)))
            put(lungs & near_other & (d_hil <= INTERLOBAR_HILUM_MM), f"11{side}")
        put(inside & (d_hil <= LOBAR_MM), f"12{side}")
        put(inside & (d_hil <= SEGMENTAL_MM), f"13{side}")
        put(inside, f"14{side}")
    return S


# ----------------------------------------------------------------------------------------
# Entry point
# ----------------------------------------------------------------------------------------

def build_station_map(labels: sitk.Image, names: Mapping[str, int], *,
                      work_spacing_mm: float = WORK_SPACING_MM) -> StationMap:
    """IASLC station map for a label image (any orientation/spacing, LPS physical space).

    names: canonical structure name -> label value (see pipeline.anatomy_names);
    names whose value does not occur in the image are treated as absent.
    """
    if labels.GetDimension() != 3 or labels.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError("build_station_map needs a 3D scalar label image")
    if labels.GetPixelID() in (sitk.sitkFloat32, sitk.sitkFloat64):
        labels = sitk.Cast(labels, sitk.sitkInt32)
    work_img, fov_top, fov_bottom = _to_working_grid(labels, work_spacing_mm)
    arr_full = sitk.GetArrayFromImage(work_img)
    present_vals = set(np.flatnonzero(np.bincount(arr_full.ravel().astype(np.int64))).tolist()) \
        if arr_full.min() >= 0 else set(np.unique(arr_full).tolist())
    values = {n: int(v) for n, v in names.items() if int(v) != 0 and int(v) in present_vals}
    ox, oy, oz = work_img.GetOrigin()
    sp = work_spacing_mm
    nz, ny, nx = arr_full.shape

    lung_vals = [values[n] for n in RIGHT_LUNG_NAMES + LEFT_LUNG_NAMES if n in values]
    not_assessable: dict[str, str] = {}
    lv = _Levels()
    notes: list[str] = []
    S_full = np.zeros(arr_full.shape, dtype=np.uint8)
    if not lung_vals:
        for s in STATIONS:
            not_assessable[s] = "no lung label: the mediastinum cannot be delimited"
        logger.warning("station map: no lung labels; nothing is assessable")
    else:
        # Crop x/y to the thorax (lungs, airway, neck structures) with a margin.
        roi_vals = lung_vals + [values[n] for n in AIRWAY_NAMES + ("esophagus", "thyroid_gland") if n in values]
        roi = np.isin(arr_full, roi_vals).any(axis=0)
        jj, ii = np.nonzero(roi)
        m = int(math.ceil((STATION1_LATERAL_MM + 10.0) / sp))
        j0, j1 = max(jj.min() - m, 0), min(jj.max() + m + 1, ny)
        i0, i1 = max(ii.min() - m, 0), min(ii.max() + m + 1, nx)
        w = _Work(arr=arr_full[:, j0:j1, i0:i1], x=ox + sp * np.arange(i0, i1), y=oy + sp * np.arange(j0, j1),
                  z=oz + sp * np.arange(nz), sp=sp, values=values, fov_top=fov_top, fov_bottom=fov_bottom)
        lung_r = w.mask(*RIGHT_LUNG_NAMES)
        lung_l = w.mask(*LEFT_LUNG_NAMES)
        aw = _find_carina(w, lv)
        _find_arch(w, lv, aw)
        _find_bcv_crossing(w, lv, aw)
        _find_azygos(w, lv, aw)
        _find_pa(w, lv, aw)
        _find_station7_lower(w, lv)
        _find_lower_levels(w, lv, aw, lung_r, lung_l)
        _find_upper_levels(w, lv)
        S = _build_regions(w, lv, aw, lung_r, lung_l, notes)
        S_full[:, j0:j1, i0:i1] = S
        for st, keys in REQUIRES.items():
            miss = [k for k in keys if k not in lv.z]
            if miss:
                not_assessable[st] = "; ".join(
                    f"{LANDMARK_WORDS.get(k, k)} not available: {lv.missing.get(k, 'not found')}" for k in miss)
        no_hilum = lv.get("carina") is None and not ((S == STATION_VALUES["10R"]) | (S == STATION_VALUES["10L"])).any()
        for side, lungs in (("R", lung_r), ("L", lung_l)):
            word = "right" if side == "R" else "left"
            if not lungs.any():
                for n in ("11", "12", "13", "14"):
                    not_assessable[f"{n}{side}"] = f"no {word} lung label"
            elif no_hilum:
                for n in ("11", "12", "13"):
                    not_assessable[f"{n}{side}"] = (f"no hilum in the field of view: intrapulmonary space of the {word} "
                                                    "lung is reported as 14 (11-14 are all ipsilateral N1)")

    # Back onto the input grid; clear voxels the input labels as a (non-lung, non-container) structure.
    st_img = sitk.GetImageFromArray(S_full)
    st_img.SetOrigin(work_img.GetOrigin())
    st_img.SetSpacing(work_img.GetSpacing())
    st_img.SetDirection(work_img.GetDirection())
    out = sitk.Resample(st_img, labels, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    out_arr = sitk.GetArrayFromImage(out)
    in_arr = sitk.GetArrayViewFromImage(labels)
    keep_vals = [0] + lung_vals + [values[n] for n in CONTAINERS if n in values]
    # Every other input value is a structure (values missing from `names` too).
    out_arr[~np.isin(in_arr, keep_vals)] = 0
    result = sitk.GetImageFromArray(out_arr)
    result.CopyInformation(labels)

    voxel_ml = float(np.prod(labels.GetSpacing())) / 1000.0
    counts = np.bincount(out_arr.ravel(), minlength=len(STATIONS) + 1)
    volumes = {s: float(counts[v]) * voxel_ml for s, v in STATION_VALUES.items() if counts[v] > 0}
    for s in STATIONS:
        if s not in volumes and s not in not_assessable:
            not_assessable[s] = "no space for this station between its borders in the field of view"
    for s, why in not_assessable.items():
        logger.info("station %s not assessable: %s", s, why)
    sm = StationMap(labels=result, station_values=dict(STATION_VALUES), landmarks=lv.landmarks,
                    not_assessable=not_assessable, volumes_ml=volumes, notes=notes)
    logger.info("station map: %d stations built, %d not assessable, proxies: %d",
                len(volumes), len(not_assessable), len(sm.proxies))
    return sm
