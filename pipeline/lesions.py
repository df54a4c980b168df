"""FDG-avid lesions: detection, measurement and classification into primary, nodes and the rest.

Two detection backends, chosen in config (`pipeline.settings.LesionSettings`):

- ``suv_threshold`` (default): voxels with SUV above a threshold (fixed, default
  2.5, or PERCIST-like 1.5 × liver SUVmean + 2 SD), inside the body, outside organs
  with physiologic uptake (heart, kidneys, bladder, brain — where the anatomy has
  them), then 26-connected components above a minimum volume.
- ``nnunet``: a user-supplied nnU-Net v2 model (CT + SUV channels), run in memory
  (`pipeline.lesions_nnunet`).

Every lesion is then measured the same way (SUVmax on the PET's own voxels,
SUVpeak as the highest 1 cm³ sphere mean, SUVmean, MTV, TLG, CT short axis) and
classified:

- primary: an intrapulmonary lesion (most of its surroundings are lung); with
  several, config chooses (largest TLG by default) and the others are reported as
  additional lung lesions, not staged as nodes;
- node: a lesion whose voxels lie mostly in an IASLC station region (1–10);
  intrapulmonary station lesions other than the primary are reported separately;
- distant: outside the thorax (below the lung bases, or above the apices outside
  station 1) — listed, not staged here;
- other: inside the thorax but neither lung nor a station (e.g. bone, chest wall).

Node positivity is DESIGN.md §4's default rule, configurable: SUVmax ≥ 2.5 and
SUVmax > blood-pool SUVmean (descending aorta). A node with a CT short axis ≥ 10 mm
that is not avid is "enlarged, not FDG-avid" and does not count. Enlarged nodes
are looked for on the CT too (soft tissue in a station region), since a threshold
on SUV cannot find a node that is not avid.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import SimpleITK as sitk
from pydicom.uid import generate_uid
from scipy import ndimage

from pipeline import anatomy_names as an
from pipeline.anatomy import Anatomy
from pipeline.errors import PipelineError
from pipeline.settings import LesionSettings, PositivitySettings
from pipeline.study_result import Lesion

logger = logging.getLogger(__name__)

SUVPEAK_SPHERE_ML = 1.0
INTRAPULMONARY_SHELL_FRACTION = 0.5  # share of a lesion's 2–6 mm shell that is lung
PRIMARY_MIN_SHELL_FRACTION = 0.15  # a central mass must at least abut the lung
CENTRAL_PRIMARY_MIN_ML = 10.0
SPLIT_SADDLE_RATIO = 0.7
TUBULAR_RATIO = 2.5  # craniocaudal extent / axial diameter above which uptake is linear, not nodal
ENLARGED_NODE_HU = (-20.0, 120.0)
ENLARGED_NODE_MAX_ML = 40.0
ENLARGED_NODE_MAX_ELONGATION = 2.5  # long/short axis: tubes (vessels, esophagus) are not nodes
SPILL_OVER_MM = 6.0  # about one PET FWHM
CT_NODE_SEARCH_NEEDS = ("aorta", "esophagus", "heart", "superior_vena_cava")
NODAL_STATIONS = ("1R", "1L", "2R", "2L", "3a", "3p", "4R", "4L", "5", "6", "7",
                  "8R", "8L", "9R", "9L", "10R", "10L")


class LesionError(PipelineError):
    """Lesion detection could not run (e.g. a PERCIST threshold without a liver)."""


@dataclass(frozen=True)
class ReferenceRegion:
    name: str
    suvmean: float | None
    suvsd: float | None
    voxels: int
    source: str  # which mask or proxy it was measured in

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "suvmean": _r(self.suvmean), "suvsd": _r(self.suvsd),
                "voxels": self.voxels, "source": self.source}


@dataclass(frozen=True)
class LesionFindings:
    lesions: list[Lesion]
    labels: sitk.Image  # lesion label map on the CT grid (value = Lesion.label_value)
    blood_pool: ReferenceRegion
    liver: ReferenceRegion
    threshold_suv: float
    threshold_rule: str
    positivity_rule: str
    warnings: list[str]


def _r(v: float | None, nd: int = 4) -> float | None:
    return None if v is None else round(float(v), nd)


# --- geometry helpers --------------------------------------------------------------------

def _spacing_zyx(img: sitk.Image) -> np.ndarray:
    return np.array(img.GetSpacing()[::-1], dtype=float)


def _voxel_ml(img: sitk.Image) -> float:
    return float(np.prod(img.GetSpacing())) / 1000.0


def _physical(img: sitk.Image, index_zyx) -> tuple[float, float, float]:
    return tuple(img.TransformContinuousIndexToPhysicalPoint([float(index_zyx[2]), float(index_zyx[1]),
                                                              float(index_zyx[0])]))


def _ball(radius_mm: float, spacing_zyx: np.ndarray) -> np.ndarray:
    r = np.ceil(radius_mm / spacing_zyx).astype(int)
    zz, yy, xx = np.ogrid[-r[0]:r[0] + 1, -r[1]:r[1] + 1, -r[2]:r[2] + 1]
    return (zz * spacing_zyx[0]) ** 2 + (yy * spacing_zyx[1]) ** 2 + (xx * spacing_zyx[2]) ** 2 <= radius_mm ** 2


def _shell(mask: np.ndarray, spacing_zyx: np.ndarray, inner_mm: float, outer_mm: float) -> np.ndarray:
    """Voxels between inner_mm and outer_mm outside `mask` (distance-transform based)."""
    dist = ndimage.distance_transform_edt(~mask, sampling=spacing_zyx)
    return (dist > inner_mm) & (dist <= outer_mm)


def _bbox(mask: np.ndarray, margin: np.ndarray, shape) -> tuple[slice, ...]:
    idx = np.nonzero(mask)
    return tuple(slice(max(int(i.min()) - int(m), 0), min(int(i.max()) + int(m) + 1, n))
                 for i, m, n in zip(idx, margin, shape))


# --- reference regions -------------------------------------------------------------------

def _erode(mask: np.ndarray, spacing_zyx: np.ndarray, mm: float) -> np.ndarray:
    """Erosion by `mm`, computed on the mask's bounding box only (full-size EDTs are slow)."""
    if not mask.any():
        return mask
    sl = _bbox(mask, np.ones(3, int), mask.shape)
    out = np.zeros_like(mask)
    out[sl] = ndimage.distance_transform_edt(mask[sl], sampling=spacing_zyx) > mm
    return out


def blood_pool_region(anatomy: Anatomy, suv: np.ndarray, carina_z_index: float | None) -> ReferenceRegion:
    """Mediastinal blood pool: the descending aorta below the arch, eroded 3 mm against spill-in."""
    aorta = anatomy.mask("aorta")
    if aorta is None or not aorta.any():
        return ReferenceRegion("blood_pool", None, None, 0, "not available: the anatomy has no aorta")
    sp = _spacing_zyx(anatomy.labels)
    region = aorta.copy()
    trachea = anatomy.mask("trachea")
    source = "descending aorta (aorta label"
    if trachea is not None and trachea.any():
        # Posterior to the trachea's centre and below the carina: the descending part.
        y_trachea = np.nonzero(trachea)[1].mean()
        region[:, : int(y_trachea), :] = False
        source += ", posterior to the trachea"
    if carina_z_index is not None:
        z = np.arange(region.shape[0])[:, None, None]
        below = _below_in_patient(anatomy.labels, z, carina_z_index)
        region &= below
        source += ", below the carina"
    core = _erode(region, sp, 3.0)
    if core.sum() < 10:
        core = region
    source += ", eroded 3 mm)"
    if core.sum() < 10:
        return ReferenceRegion("blood_pool", None, None, int(core.sum()), "not available: descending aorta too small")
    values = suv[core]
    return ReferenceRegion("blood_pool", float(values.mean()), float(values.std()), int(core.sum()), source)


def _below_in_patient(img: sitk.Image, z_index: np.ndarray, ref_index: float) -> np.ndarray:
    """Slices inferior to `ref_index`, whatever the slice direction (feet-first, flipped)."""
    superior_per_index = img.GetDirection()[8] * img.GetSpacing()[2]
    return (z_index - ref_index) * superior_per_index < 0


def liver_region(anatomy: Anatomy, suv: np.ndarray, ct: np.ndarray) -> ReferenceRegion:
    """Liver reference: the liver label eroded 10 mm, else PERCIST's 3 cm sphere under the right lung base."""
    sp = _spacing_zyx(anatomy.labels)
    liver = anatomy.mask("liver")
    if liver is not None and liver.sum() > 100:
        core = _erode(liver, sp, 10.0)
        if core.sum() < 50:
            core = liver
        return ReferenceRegion("liver", float(suv[core].mean()), float(suv[core].std()), int(core.sum()),
                               "liver label, eroded 10 mm")
    lung = anatomy.mask(an.LUNG_RIGHT)
    if lung is None or not lung.any():
        return ReferenceRegion("liver", None, None, 0, "not available: no liver label and no right lung")
    img = anatomy.labels
    zi = np.nonzero(lung)[0]
    superior_sign = np.sign(img.GetDirection()[8] * img.GetSpacing()[2])
    base = zi.min() if superior_sign > 0 else zi.max()  # most inferior lung slice
    _, yi, xi = np.nonzero(lung)
    centre = np.array([base - superior_sign * (45.0 / sp[0]), yi.mean(), xi.mean()])
    if not (0 <= centre[0] < suv.shape[0]):
        return ReferenceRegion("liver", None, None, 0, "not available: the field of view ends at the lung bases")
    ball = _ball(15.0, sp)
    lo = np.round(centre).astype(int) - np.array(ball.shape) // 2
    sl = tuple(slice(max(l, 0), min(l + s, n)) for l, s, n in zip(lo, ball.shape, suv.shape))
    bsl = tuple(slice(s.start - l, s.stop - l) for s, l in zip(sl, lo))
    m = ball[bsl] & (ct[sl] > 0) & (ct[sl] < 100)
    if m.sum() < 50:
        return ReferenceRegion("liver", None, None, int(m.sum()), "not available: no soft tissue under the right lung base")
    values = suv[sl][m]
    return ReferenceRegion("liver", float(values.mean()), float(values.std()), int(m.sum()),
                           "proxy: 3 cm sphere 45 mm below the right lung base (no liver label)")


# --- detection ---------------------------------------------------------------------------

def threshold_for(settings: LesionSettings, liver: ReferenceRegion) -> tuple[float, str]:
    if settings.threshold == "fixed":
        return settings.fixed_suv, f"SUV >= {settings.fixed_suv:g} (fixed)"
    if liver.suvmean is None:
        raise LesionError(f"PERCIST threshold needs a liver reference: {liver.source}")
    t = 1.5 * liver.suvmean + 2 * (liver.suvsd or 0.0)
    return t, f"SUV >= {t:.2f} (PERCIST-like: 1.5 x liver SUVmean {liver.suvmean:.2f} + 2 x SD {liver.suvsd:.2f})"


def physiologic_mask(anatomy: Anatomy, settings: LesionSettings) -> tuple[np.ndarray | None, list[str]]:
    """Union of the organs whose uptake is physiologic, as far as the anatomy has them."""
    union, names = None, []
    for organ in settings.exclude_physiologic:
        m = anatomy.mask(organ)
        if m is not None and m.any():
            union = m.copy() if union is None else union | m
            names.append(organ)
    return union, names


def candidate_mask(suv: np.ndarray, ct: np.ndarray, anatomy: Anatomy, threshold: float,
                   settings: LesionSettings) -> tuple[np.ndarray, list[str]]:
    """Above threshold, inside the body, outside organs with physiologic uptake."""
    mask = suv >= threshold
    body = anatomy.mask(an.BODY)
    if body is None or not body.any():
        body = ct > -500
    mask &= body
    organs, excluded = physiologic_mask(anatomy, settings)
    if organs is not None:
        mask &= ~organs
    return mask, excluded


def drop_spill_over(labels: np.ndarray, n: int, suv: np.ndarray, organs: np.ndarray | None,
                    spacing_zyx: np.ndarray) -> tuple[np.ndarray, int, int]:
    """Remove components that are only the blurred edge of an organ's physiologic uptake.

    PET resolution (about 6 mm FWHM) spreads myocardial or renal uptake a few mm
    beyond the organ's CT outline. Such a rim peaks at the organ's border and is
    no hotter than the organ; a real lesion next to the organ peaks inside itself.
    So a component is dropped when its SUV maximum lies within SPILL_OVER_MM of the
    organ and the organ there is at least 90% as hot as that maximum.
    """
    if organs is None or n == 0:
        return labels, n, 0
    margin = np.ceil((SPILL_OVER_MM + 2) / spacing_zyx).astype(int)
    sl = _bbox(organs, margin, organs.shape)
    near = np.zeros(organs.shape, bool)
    near[sl] = ndimage.distance_transform_edt(~organs[sl], sampling=spacing_zyx) <= SPILL_OVER_MM
    maxima = ndimage.maximum_position(suv, labels, index=np.arange(1, n + 1))
    reach = np.ceil(SPILL_OVER_MM / spacing_zyx).astype(int)
    drop = []
    for lab, pos in zip(range(1, n + 1), maxima):
        if not near[pos]:
            continue
        # Spill-over only if the organ beside the peak is at least about as hot as the peak:
        # a node pressed against a quiet organ keeps its own, higher maximum.
        box = tuple(slice(max(0, p - k), p + k + 1) for p, k in zip(pos, reach))
        organ_here = organs[box]
        if organ_here.any() and suv[box][organ_here].max() >= 0.9 * suv[pos]:
            drop.append(lab)
    if not drop:
        return labels, n, 0
    lut = np.zeros(n + 1, dtype=labels.dtype)
    keep = [lab for lab in range(1, n + 1) if lab not in set(drop)]
    lut[keep] = np.arange(1, len(keep) + 1)
    return lut[labels], len(keep), len(drop)


def components(mask: np.ndarray, voxel_ml: float, min_volume_ml: float) -> tuple[np.ndarray, int]:
    labels, n = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
    if n == 0:
        return labels.astype(np.uint16), 0
    sizes = np.bincount(labels.ravel())
    keep = np.nonzero(sizes * voxel_ml >= min_volume_ml)[0]
    keep = keep[keep > 0]
    lut = np.zeros(n + 1, dtype=np.uint16)
    lut[keep] = np.arange(1, len(keep) + 1)
    return lut[labels], len(keep)


def split_at_lung_border(labels: np.ndarray, n: int, lung: np.ndarray | None, suv: np.ndarray,
                         spacing_zyx: np.ndarray, voxel_ml: float, min_volume_ml: float) -> tuple[np.ndarray, int]:
    """Separate a node from an abutting primary, only where the uptake shows two lesions.

    A component that straddles the (hole-filled) lung border is cut there only when
    both sides hold a real volume AND each side has its own peak: the hottest voxel on
    the border must be below SPLIT_SADDLE_RATIO of the smaller of the two peaks. A
    single mass that crosses the border (a central tumour) has no such valley and
    stays whole.
    """
    if lung is None or not lung.any() or n == 0:
        return labels, n
    out = labels.copy()
    next_label = n + 1
    min_part = max(min_volume_ml, 0.5)
    for lab, sl in enumerate(ndimage.find_objects(labels), start=1):
        if sl is None:
            continue
        comp = labels[sl] == lab
        lung_local = lung[sl]
        filled = np.zeros_like(lung_local)
        for k in range(lung_local.shape[0]):
            if lung_local[k].any():
                filled[k] = ndimage.binary_fill_holes(lung_local[k])
        inside, outside = comp & filled, comp & ~filled
        if inside.sum() * voxel_ml < min_part or outside.sum() * voxel_ml < min_part:
            continue
        s = suv[sl]
        border = inside & ndimage.binary_dilation(outside, structure=np.ones((3, 3, 3), bool))
        saddle = float(s[border].max()) if border.any() else 0.0
        peak_in, peak_out = float(s[inside].max()), float(s[outside].max())
        if saddle >= SPLIT_SADDLE_RATIO * min(peak_in, peak_out):
            continue
        sub, m = ndimage.label(outside, structure=np.ones((3, 3, 3), bool))
        for j in range(1, m + 1):
            part = sub == j
            if part.sum() * voxel_ml >= min_part:
                out[sl][part] = next_label
                next_label += 1
        logger.info("split a lesion at the lung border (peaks %.1f / %.1f, saddle %.1f)", peak_in, peak_out, saddle)
    return out, next_label - 1


# --- measurement -------------------------------------------------------------------------

def suv_peak(suv: np.ndarray, mask: np.ndarray, spacing_zyx: np.ndarray) -> float:
    """Highest mean SUV in a 1 cm³ sphere centred on a lesion voxel."""
    radius = (3 * SUVPEAK_SPHERE_ML * 1000 / (4 * np.pi)) ** (1 / 3)
    ball = _ball(radius, spacing_zyx).astype(np.float32)
    ball /= ball.sum()
    margin = np.array(ball.shape) // 2 + 1
    sl = _bbox(mask, margin, suv.shape)
    local = ndimage.convolve(suv[sl].astype(np.float32), ball, mode="nearest")
    return float(local[mask[sl]].max())


def short_axis_mm(mask: np.ndarray, spacing_zyx: np.ndarray) -> float:
    """Short axis on the axial slice where the lesion is largest: width across the long axis."""
    areas = mask.reshape(mask.shape[0], -1).sum(axis=1)
    k = int(np.argmax(areas))
    yi, xi = np.nonzero(mask[k])
    if len(yi) < 3:
        return float(min(spacing_zyx[1], spacing_zyx[2]) * max(len(yi), 1))
    pts = np.stack([yi * spacing_zyx[1], xi * spacing_zyx[2]], axis=1)
    pts -= pts.mean(axis=0)
    _, vecs = np.linalg.eigh(np.cov(pts.T))
    minor = vecs[:, 0]  # eigh sorts ascending: the short axis
    # Widest extent across the long axis, over lines parallel to it.
    proj_minor = pts @ minor
    pixel = float(np.sqrt(spacing_zyx[1] * spacing_zyx[2]))
    return float(proj_minor.max() - proj_minor.min() + pixel)


def long_axis_mm(mask: np.ndarray, spacing_zyx: np.ndarray) -> float:
    """Largest extent along a principal axis in 3D (for the elongation check)."""
    pts = np.argwhere(mask) * spacing_zyx
    if len(pts) < 3:
        return float(spacing_zyx.max())
    pts = pts - pts.mean(axis=0)
    _, vecs = np.linalg.eigh(np.cov(pts.T))
    proj = pts @ vecs[:, -1]
    return float(proj.max() - proj.min() + spacing_zyx.min())


def ct_node_mask(ct: np.ndarray, lesion: np.ndarray, spacing_zyx: np.ndarray) -> np.ndarray:
    """The soft-tissue body of a node on CT: soft tissue within 5 mm of the avid region, connected to it."""
    sl = _bbox(lesion, np.ceil(6.0 / spacing_zyx).astype(int) + 1, ct.shape)
    les = lesion[sl]
    near = ndimage.distance_transform_edt(~les, sampling=spacing_zyx) <= 5.0
    soft = near & (ct[sl] >= ENLARGED_NODE_HU[0]) & (ct[sl] <= ENLARGED_NODE_HU[1])
    lab, _ = ndimage.label(soft | les)
    keep = np.unique(lab[les])
    keep = keep[keep > 0]
    out = np.zeros_like(lesion)
    out[sl] = np.isin(lab, keep) & (soft | les)
    return out


# --- classification ----------------------------------------------------------------------

@dataclass
class _Candidate:
    label: int
    sl: tuple[slice, ...]  # crop of the CT grid holding the lesion plus a margin
    local: np.ndarray  # lesion mask inside the crop
    centroid_mm: tuple[float, float, float]
    suvmax: float
    suvpeak: float
    suvmean: float
    mtv_ml: float
    short_axis: float
    station: str | None
    lung_fraction: float
    side_by_position: str | None
    lobe: str | None
    subdiaphragmatic: bool
    tubular: bool = False
    ct_only: bool = False

    @property
    def tlg(self) -> float:
        return self.suvmean * self.mtv_ml


def _crop(mask_slices: tuple[slice, ...], margin: np.ndarray, shape) -> tuple[slice, ...]:
    return tuple(slice(max(s.start - int(m), 0), min(s.stop + int(m), n)) for s, m, n in zip(mask_slices, margin, shape))


def _station_of(local: np.ndarray, stations: np.ndarray | None, value_to_station: dict[int, str],
                spacing_zyx: np.ndarray, max_distance_mm: float = 10.0) -> str | None:
    """Station holding most of the lesion; else the nearest within 10 mm; else None."""
    if stations is None:
        return None
    vals = stations[local]
    vals = vals[vals > 0]
    if vals.size:
        return value_to_station.get(int(np.argmax(np.bincount(vals.astype(np.int64)))))
    if not (stations > 0).any():
        return None
    d = ndimage.distance_transform_edt(~local, sampling=spacing_zyx)
    cand = (stations > 0) & (d <= max_distance_mm)
    if not cand.any():
        return None
    return value_to_station.get(int(stations.flat[int(np.argmin(np.where(cand, d, np.inf)))]))


def _lung_side(anatomy_arr: np.ndarray, names: dict[str, int], lungs: dict[str, np.ndarray | None],
               local: np.ndarray, spacing_zyx: np.ndarray) -> tuple[str | None, str | None]:
    """Side and lobe of a lesion from the lung labels within 6 mm of it."""
    region = ndimage.distance_transform_edt(~local, sampling=spacing_zyx) <= 6.0
    best_lobe, best = None, 0
    for lobe in an.LUNG_LOBES:
        if lobe in names:
            c = int((anatomy_arr[region] == names[lobe]).sum())
            if c > best:
                best_lobe, best = lobe, c
    if best_lobe:
        return ("left" if best_lobe in an.LEFT_LUNG_LOBES else "right"), best_lobe
    counts = {side: int(m[region].sum()) if m is not None else 0 for side, m in lungs.items()}
    if max(counts.values(), default=0) == 0:
        return None, None
    return max(counts, key=counts.get), None


def lung_base_height(lung: np.ndarray | None, img: sitk.Image, reach_mm: float = 80.0) -> np.ndarray | None:
    """Per (y, x) column, the patient z (mm) of the lowest lung voxel within `reach_mm` of it (a square window).

    This stands in for the diaphragm: whatever lies lower than every lung voxel
    around it is abdominal. Taking the lowest lung within 80 mm makes the surface
    dip to the posterior costophrenic recesses, so the test errs towards calling a
    lesion thoracic; columns with no lung within reach get +inf (no verdict).
    """
    if lung is None or not lung.any():
        return None
    has = lung.any(axis=0)
    index_of_lowest = np.where(has, _lowest_index(lung, img), 0)
    z0 = img.GetOrigin()[2]
    dz = img.GetDirection()[8] * img.GetSpacing()[2]
    z_base = np.where(has, z0 + index_of_lowest * dz, np.inf)
    sy, sx = img.GetSpacing()[1], img.GetSpacing()[0]
    size = (2 * int(reach_mm / sy) + 1, 2 * int(reach_mm / sx) + 1)  # a square: separable, so fast
    return ndimage.minimum_filter(z_base, size=size, mode="constant", cval=np.inf)


def _lowest_index(lung: np.ndarray, img: sitk.Image) -> np.ndarray:
    if img.GetDirection()[8] * img.GetSpacing()[2] > 0:  # index 0 is the most inferior slice
        return np.argmax(lung, axis=0)
    return lung.shape[0] - 1 - np.argmax(lung[::-1], axis=0)


def _is_subdiaphragmatic(c_index: np.ndarray, c_mm, base_mm: np.ndarray | None, margin_mm: float = 10.0) -> bool:
    if base_mm is None:
        return False
    j = min(max(int(round(c_index[1])), 0), base_mm.shape[0] - 1)
    i = min(max(int(round(c_index[2])), 0), base_mm.shape[1] - 1)
    return bool(c_mm[2] < base_mm[j, i] - margin_mm)


def _is_tubular(local: np.ndarray, spacing_zyx: np.ndarray) -> bool:
    """Uptake much longer craniocaudally than wide: the esophagus or a vessel, not a node.

    Uses the avid region itself; nodes are ovoid (the phantom's are 1.25:1).
    """
    ks = np.nonzero(local.any(axis=(1, 2)))[0]
    z_extent = (ks.max() - ks.min() + 1) * spacing_zyx[0]
    widest = 0.0
    for k in ks:
        yi, xi = np.nonzero(local[k])
        widest = max(widest, (yi.max() - yi.min() + 1) * spacing_zyx[1], (xi.max() - xi.min() + 1) * spacing_zyx[2])
    return z_extent >= TUBULAR_RATIO * max(widest, 1e-6) and z_extent >= 30.0


def _in_thorax(anatomy: Anatomy, centroid_mm) -> bool:
    """Between the lung bases and apices (with 10 mm margins)."""
    lungs = [anatomy.mask(n) for n in (an.LUNG_LEFT, an.LUNG_RIGHT)]
    lungs = [m for m in lungs if m is not None and m.any()]
    if not lungs:
        return True
    img = anatomy.labels
    ks = np.nonzero(np.any(np.stack([m.any(axis=(1, 2)) for m in lungs]), axis=0))[0]
    zs = [img.TransformContinuousIndexToPhysicalPoint([0.0, 0.0, float(k)])[2] for k in (ks.min(), ks.max())]
    return min(zs) - 10.0 <= centroid_mm[2] <= max(zs) + 10.0


def measure_and_classify(
    volumes, anatomy: Anatomy, station_map, lesion_labels: np.ndarray, n: int,
    lesion_settings: LesionSettings, positivity: PositivitySettings, blood_pool: ReferenceRegion,
    study_uid: str, enlarged_candidates: list[np.ndarray] | None = None,
) -> tuple[list[Lesion], np.ndarray, list[str]]:
    """Measure each component on a crop, then decide primary / node / other and node positivity."""
    ct_img: sitk.Image = volumes.ct
    ct = sitk.GetArrayViewFromImage(ct_img)
    suv = sitk.GetArrayViewFromImage(volumes.suv)
    anatomy_arr = anatomy.array()
    sp = _spacing_zyx(ct_img)
    vml = _voxel_ml(ct_img)
    lungs = {"left": anatomy.mask(an.LUNG_LEFT), "right": anatomy.mask(an.LUNG_RIGHT)}
    lung = None
    for m in lungs.values():
        if m is not None:
            lung = m.copy() if lung is None else lung | m
    base = lung_base_height(lung, ct_img)
    stations = sitk.GetArrayViewFromImage(station_map.labels) if station_map is not None else None
    value_to_station = {v: k for k, v in station_map.station_values.items()} if station_map is not None else {}
    pet_max = _pet_grid_max(volumes, lesion_labels, n)
    margin = np.ceil(12.0 / sp).astype(int) + 1

    regions: list[tuple[int, tuple[slice, ...], np.ndarray, bool]] = []
    for lab, bb in enumerate(ndimage.find_objects(lesion_labels), start=1):
        if bb is not None:
            sl = _crop(bb, margin, ct.shape)
            regions.append((lab, sl, lesion_labels[sl] == lab, False))
    for k, extra in enumerate(enlarged_candidates or []):
        bb = ndimage.find_objects(extra.astype(np.uint8))[0]
        sl = _crop(bb, margin, ct.shape)
        regions.append((n + 1 + k, sl, extra[sl].copy(), True))

    warnings: list[str] = []
    cands: list[_Candidate] = []
    for lab, sl, local, ct_only in regions:
        offset = np.array([s.start for s in sl])
        c_index = np.argwhere(local).mean(axis=0) + offset
        values = suv[sl][local]
        shell = _shell(local, sp, 2.0, 6.0)
        lung_fraction = float(lung[sl][shell].mean()) if lung is not None and shell.any() else 0.0
        side, lobe = None, None
        if lung_fraction >= PRIMARY_MIN_SHELL_FRACTION:
            side, lobe = _lung_side(anatomy_arr[sl], anatomy.names,
                                    {k: (m[sl] if m is not None else None) for k, m in lungs.items()}, local, sp)
        node_body = local if ct_only else ct_node_mask(np.asarray(ct[sl]), local, sp)
        cands.append(_Candidate(
            label=lab, sl=sl, local=local, centroid_mm=_physical(ct_img, c_index),
            suvmax=float(values.max()) if ct_only else float(max(pet_max.get(lab, 0.0), values.max())),
            suvpeak=suv_peak(np.asarray(suv[sl]), local, sp), suvmean=float(values.mean()),
            mtv_ml=float(local.sum() * vml), short_axis=short_axis_mm(node_body, sp),
            station=_station_of(local, None if stations is None else np.asarray(stations[sl]), value_to_station, sp),
            lung_fraction=lung_fraction, side_by_position=side, lobe=lobe,
            subdiaphragmatic=_is_subdiaphragmatic(c_index, _physical(ct_img, c_index), base),
            tubular=not ct_only and _is_tubular(local, sp), ct_only=ct_only))

    primary, primary_how = _choose_primary(cands, lesion_settings.primary_choice)
    bp = blood_pool.suvmean
    lesions: list[Lesion] = []
    out_labels = np.zeros(ct.shape, dtype=np.uint16)
    node_no = 0
    for c in sorted(cands, key=lambda c: (c is not primary, -c.centroid_mm[2])):
        kind, status, positive, rule, station, side = _classify(c, primary, primary_how, anatomy, positivity, bp)
        if kind == "node":
            node_no += 1
            tracking = f"Node {node_no} ({station})"
        elif kind == "primary":
            tracking = "Primary tumour"
        else:
            tracking = f"Lesion {len(lesions) + 1} ({kind.replace('_', ' ')})"
        value = len(lesions) + 1
        out_labels[c.sl][c.local] = value
        lesions.append(Lesion(
            index=value - 1, label_value=value, kind=kind, tracking_id=tracking,
            tracking_uid=generate_uid(entropy_srcs=[study_uid, tracking, str(c.centroid_mm)]),
            centroid_mm=c.centroid_mm, suvmax=c.suvmax, suvpeak=c.suvpeak, suvmean=c.suvmean,
            mtv_ml=c.mtv_ml, tlg=c.tlg, short_axis_mm=c.short_axis, voxel_count=int(c.local.sum()),
            station=station, side=side, lobe=c.lobe if kind == "primary" else None,
            status=status, positive=positive, rule=rule))
    if primary is None:
        warnings.append("no FDG-avid lesion in or against the lung: primary tumour not found")
    return lesions, out_labels, warnings


def _choose_primary(cands: list[_Candidate], how: str) -> tuple[_Candidate | None, str]:
    """The primary: an intrapulmonary lesion, else a large central mass against the lung.

    Tier 1: lesions mostly surrounded by lung (peripheral tumours), outside the
    nodal stations. Tier 2, only when tier 1 is empty: a mass of at least
    CENTRAL_PRIMARY_MIN_ML that abuts the lung (central or hilar tumours, which the
    station map alone would call a node).
    """
    key = {"largest_tlg": lambda c: c.tlg, "highest_suvmax": lambda c: c.suvmax,
           "largest_volume": lambda c: c.mtv_ml}[how]
    avid = [c for c in cands if not c.ct_only and not c.subdiaphragmatic]
    tier1 = [c for c in avid if c.lung_fraction >= INTRAPULMONARY_SHELL_FRACTION
             and (c.station is None or c.station not in NODAL_STATIONS)]
    if tier1:
        return max(tier1, key=key), f"intrapulmonary, chosen by {how.replace('_', ' ')}"
    tier2 = [c for c in avid if c.lung_fraction >= PRIMARY_MIN_SHELL_FRACTION and c.mtv_ml >= CENTRAL_PRIMARY_MIN_ML]
    if tier2:
        return max(tier2, key=key), (f"central mass against the lung (no intrapulmonary lesion; "
                                     f">= {CENTRAL_PRIMARY_MIN_ML:g} ml), chosen by {how.replace('_', ' ')}")
    return None, ""


def _classify(c: _Candidate, primary: _Candidate | None, primary_how: str, anatomy: Anatomy,
              positivity: PositivitySettings, blood_pool: float | None):
    numbers = f"SUVmax {c.suvmax:.2f}, short axis {c.short_axis:.1f} mm"
    if c is primary:
        return ("primary", "not a node", True, f"primary tumour ({primary_how}): {c.lung_fraction:.0%} of its "
                f"surroundings is lung; {numbers}, MTV {c.mtv_ml:.1f} ml", None, c.side_by_position)
    if c.subdiaphragmatic:
        return ("distant", "not a node", False, f"below the diaphragm ({numbers}): distant or physiologic, "
                "not staged here", None, None)
    if c.station in NODAL_STATIONS and c.tubular:
        return ("other", "not a node", False, f"linear uptake in station {c.station} region ({numbers}): longer "
                f"craniocaudally than {TUBULAR_RATIO:g}x its width, as along the esophagus or a vessel; "
                "physiologic or non-nodal, not counted as a node", None, None)
    if c.station in NODAL_STATIONS:
        side = "right" if c.station.endswith("R") else "left" if c.station.endswith("L") else None
        if c.station in ("5", "6"):
            side = "left"
        avid = c.suvmax >= positivity.min_suvmax
        above_bp = (not positivity.above_blood_pool) or (blood_pool is not None and c.suvmax > blood_pool)
        bp_text = (f"blood-pool SUVmean {blood_pool:.2f}" if blood_pool is not None else "blood pool not available")
        if positivity.above_blood_pool and blood_pool is None:
            above_bp = True
            bp_text += " (rule applied on SUVmax alone)"
        if not c.ct_only and avid and above_bp:
            return ("node", "positive", True, f"station {c.station}: positive, {numbers} "
                    f">= {positivity.min_suvmax:g} and > {bp_text}", c.station, side)
        if c.short_axis >= positivity.enlarged_short_axis_mm:
            return ("node", "enlarged, not FDG-avid", False, f"station {c.station}: enlarged, not FDG-avid: {numbers} "
                    f"(short axis >= {positivity.enlarged_short_axis_mm:g} mm; SUVmax below {positivity.min_suvmax:g} "
                    f"or not above {bp_text})", c.station, side)
        return ("node", "negative", False, f"station {c.station}: negative: {numbers} (needs SUVmax >= "
                f"{positivity.min_suvmax:g} and > {bp_text})", c.station, side)
    if c.lung_fraction >= INTRAPULMONARY_SHELL_FRACTION:
        return ("lung_other", "not a node", False, f"additional intrapulmonary lesion ({numbers}); "
                "not staged as a node (a separate nodule or an intrapulmonary node cannot be told apart here)",
                c.station, c.side_by_position)
    if not _in_thorax(anatomy, c.centroid_mm):
        return ("distant", "not a node", False, f"outside the thorax ({numbers}): distant, not staged here",
                None, None)
    return ("other", "not a node", False, f"thoracic but outside the lungs and the station regions ({numbers}); "
            "not staged here", None, None)


def _pet_grid_max(volumes, lesion_labels: np.ndarray, n: int) -> dict[int, float]:
    """SUVmax on the PET's own voxels (QIBA: a voxel value, not an interpolated one)."""
    pet = getattr(volumes, "suv_pet_grid", None)
    if pet is None or n == 0:
        return {}
    lab_img = sitk.GetImageFromArray(lesion_labels.astype(np.uint16))
    lab_img.CopyInformation(volumes.ct)
    on_pet = sitk.Resample(lab_img, pet, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt16)
    lab = sitk.GetArrayViewFromImage(on_pet)
    vals = sitk.GetArrayViewFromImage(pet)
    out = {}
    present = np.unique(lab)
    for v in present[present > 0]:
        out[int(v)] = float(vals[lab == v].max())
    return out


def enlarged_ct_candidates(volumes, anatomy: Anatomy, station_map, avid: np.ndarray,
                           positivity: PositivitySettings) -> list[np.ndarray]:
    """Soft-tissue nodes in station regions with a short axis over the enlargement limit, not avid.

    Only where the station map exists; structures the anatomy names (vessels,
    airways, esophagus, heart) are excluded, so on a sparse anatomy (classical
    backend) unlabelled vessels can appear here: they are reported, never staged.
    """
    if station_map is None:
        return []
    if not all(anatomy.has(name) for name in CT_NODE_SEARCH_NEEDS):
        # Without vessels and the esophagus labelled, soft tissue in the station regions
        # is mostly those structures: the search would report them as nodes.
        return []
    ct_img = volumes.ct
    ct = sitk.GetArrayViewFromImage(ct_img)
    sp = _spacing_zyx(ct_img)
    stations = sitk.GetArrayViewFromImage(station_map.labels)
    nodal_values = [station_map.station_values[s] for s in NODAL_STATIONS if s in station_map.station_values]
    region = np.isin(stations, nodal_values)
    soft = region & (ct >= ENLARGED_NODE_HU[0]) & (ct <= ENLARGED_NODE_HU[1]) & ~avid
    named = anatomy.array() > 0
    if an.BODY in anatomy.names:
        named &= anatomy.array() != anatomy.names[an.BODY]
    soft &= ~named
    soft = ndimage.binary_opening(soft, structure=_ball(2.0, sp))
    lab, m = ndimage.label(soft)
    out = []
    vml = _voxel_ml(ct_img)
    for j in range(1, m + 1):
        comp = lab == j
        vol = comp.sum() * vml
        if vol > ENLARGED_NODE_MAX_ML or vol < 0.3:
            continue
        short = short_axis_mm(comp, sp)
        if short >= positivity.enlarged_short_axis_mm and long_axis_mm(comp, sp) <= ENLARGED_NODE_MAX_ELONGATION * short:
            out.append(comp)
    return out
