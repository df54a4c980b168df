"""Cases of the real-anatomy phantom, and where its nodes, primaries and traps go.

Every placement is a rule on the label map (IASLC station boundaries as a thoracic
radiologist reads them: trachea, carina, aortic arch, brachiocephalic vein,
manubrium, esophagus), then a search for the fat in that region with the most
room: a node never sits in a labelled structure, an enhancing vessel (HU > 150)
or air. The rules use the patient's own landmarks, so they hold on any CT with a
TotalSegmentator-named map, not only on LIDC-IDRI-0001.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from scipy import ndimage

logger = logging.getLogger(__name__)

Role = Literal["positive", "enlarged_nonavid", "small_subthreshold"]
Esophagus = Literal["normal", "linear", "focal", "linear_focal"]

FREE_HU = (-200.0, 150.0)  # fat or soft tissue: where a node may grow
FAT_HU = (-150.0, -50.0)  # brown fat must sit in true fat density
FAT_CORE_HU = (-135.0, -65.0)  # brown-fat foci are placed well inside that range (smoothed HU)
MIN_CLEARANCE_MM = 2.5
HU_SMOOTHING_MM = 1.4  # in-plane Gaussian sigma before density tests: the same at either CT size
TARGET_WEIGHT = 0.08  # mm of clearance traded per mm from the rule's preferred point
NODE_SEPARATION_MM = 3.0
SPLIT_MIN_AREA_MM2 = 20.0
SPLIT_MIN_DX_MM = 8.0
# the label's centre lies in the canal; the body and the costovertebral fat are in front of it
PARAVERTEBRAL_DX_MM = (15.0, 45.0)
PARAVERTEBRAL_DY_MM = (-35.0, 0.0)


@dataclass(frozen=True)
class RealNode:
    station: str
    role: Role
    radius_mm: float | None = None


@dataclass(frozen=True)
class Traps:
    """The physiologic uptake a case carries (see phantom_real_pet for levels)."""

    myocardium_suv: float = 2.5
    esophagus: Esophagus = "normal"
    brown_fat: bool = False
    neck_muscle: bool = False
    marrow_suv: float = 1.7
    liver_cv: float = 0.12
    delayed: bool = False
    blood_pool_suv: float = 1.8
    liver_suv: float = 2.4


@dataclass(frozen=True)
class RealCase:
    name: str
    description: str
    primary: str  # key of PRIMARY_LOBES
    nodes: tuple[RealNode, ...]
    traps: Traps = field(default_factory=Traps)


def _p(*stations: str) -> tuple[RealNode, ...]:
    return tuple(RealNode(s, "positive") for s in stations)


def _big(station: str) -> RealNode:
    return RealNode(station, "enlarged_nonavid", 6.5)


def _small(station: str) -> RealNode:
    return RealNode(station, "small_subthreshold", 3.5)


# primary key -> (side, lobe); the centre is drawn by seed among points deep enough in the lobe
PRIMARY_LOBES: dict[str, tuple[str, str]] = {
    "right_upper": ("right", "lung_upper_lobe_right"),
    "right_lower": ("right", "lung_lower_lobe_right"),
    "left_upper": ("left", "lung_upper_lobe_left"),
    "left_lower": ("left", "lung_lower_lobe_left"),
}

REAL_CASES: dict[str, RealCase] = {c.name: c for c in [
    RealCase("lidc_n0_right_upper", "right upper lobe primary, enlarged non-avid 4R and a small 7; faint "
             "myocardium, quiet liver", "right_upper", (_big("4R"), _small("7")),
             Traps(myocardium_suv=1.5, liver_cv=0.10)),
    RealCase("lidc_n1_left_10l", "left lower lobe primary, hilar 10L; linear esophageal uptake",
             "left_lower", _p("10L") + (_small("2R"),), Traps(myocardium_suv=4.0, esophagus="linear")),
    RealCase("lidc_n2a_left_4l", "left upper lobe primary, single N2 station 4L; brown fat (supraclavicular and "
             "paravertebral)", "left_upper", _p("4L") + (_big("7"),), Traps(myocardium_suv=6.0, brown_fat=True)),
    RealCase("lidc_n2a_left_5", "left upper lobe primary, subaortic 5; marrow brighter than blood pool",
             "left_upper", _p("5") + (_small("4R"),), Traps(myocardium_suv=3.0, marrow_suv=2.7)),
    RealCase("lidc_n2b_right_4r_7", "right lower lobe primary, 4R and 7, a small 10R; linear esophagus with a "
             "distal focal spot, myocardium SUV 9", "right_lower", _p("4R", "7") + (_small("10R"), _small("2L")),
             Traps(myocardium_suv=9.0, esophagus="linear_focal")),
    RealCase("lidc_n2b_left_6_7", "left upper lobe primary, para-aortic 6 and subcarinal 7; neck and shoulder "
             "muscle uptake at the top of the scan, liver CV 20 %", "left_upper", _p("6", "7") + (_big("4R"),),
             Traps(myocardium_suv=2.0, neck_muscle=True, liver_cv=0.20)),
    RealCase("lidc_n3_right_4r_4l", "right upper lobe primary, 4R and contralateral 4L; delayed scan (160 min)",
             "right_upper", _p("4R", "4L") + (_small("8R"),),
             Traps(myocardium_suv=2.0, delayed=True, blood_pool_suv=1.5, liver_suv=2.1)),
    RealCase("lidc_n3_left_1l_10l", "left lower lobe primary, supraclavicular 1L and hilar 10L; liver CV 35 %",
             "left_lower", _p("1L", "10L"), Traps(myocardium_suv=3.0, liver_cv=0.35)),
    RealCase("lidc_n3_left_4r_8l", "left lower lobe primary, contralateral 4R and paraesophageal 8L; bright marrow "
             "and myocardium SUV 9", "left_lower", _p("4R", "8L") + (_big("7"),),
             Traps(myocardium_suv=9.0, marrow_suv=2.8)),
    RealCase("lidc_n3_right_1r_2r", "right upper lobe primary, 1R and 2R; distal esophageal spot, brown fat, "
             "delayed scan", "right_upper", _p("1R", "2R") + (_small("4L"),),
             Traps(myocardium_suv=5.0, esophagus="focal", brown_fat=True, delayed=True, blood_pool_suv=1.6,
                   liver_suv=2.2)),
    RealCase("lidc_n2a_right_7", "right lower lobe primary, single subcarinal 7; neck muscles, liver CV 25 %",
             "right_lower", _p("7") + (_big("4L"), _small("2R")),
             Traps(myocardium_suv=7.0, neck_muscle=True, liver_cv=0.25)),
]}


@dataclass
class Landmarks:
    """Patient landmarks (LPS mm) from the label map."""

    carina_z: float
    carina_xy: tuple[float, float]  # trachea centre just above the split
    arch_top_z: float
    manubrium_top_z: float
    lung_apex_z: float
    bcv_crossing_z: float  # caudal margin of the left brachiocephalic vein where it crosses the midline
    pulmonary_artery_top_z: float  # the heart label's top: TotalSegmentator's heart here includes the trunk
    ge_junction_z: float
    scan_top_z: float
    trachea_xy: dict[int, tuple[float, float]]  # slice -> centre, above the carina
    esophagus_xy: dict[int, tuple[float, float]]
    bronchus_xy: dict[tuple[str, int], tuple[float, float]]  # (side, slice) -> main bronchus centre

    def as_dict(self) -> dict[str, float]:
        return {"carina": self.carina_z, "aortic_arch_upper_border": self.arch_top_z,
                "manubrium_upper_border": self.manubrium_top_z, "lung_apex": self.lung_apex_z,
                "left_brachiocephalic_vein_crossing_caudal_margin": self.bcv_crossing_z,
                "pulmonary_artery_upper_rim": self.pulmonary_artery_top_z,
                "gastroesophageal_junction": self.ge_junction_z, "scan_top": self.scan_top_z}


class Space:
    """The CT grid (identity direction) with its HU and labels, for placement rules."""

    def __init__(self, hu: np.ndarray, labels: np.ndarray, names: dict[str, int], origin, spacing):
        self.hu, self.labels, self.names = hu, labels, names
        self.origin, self.spacing = np.asarray(origin, float), np.asarray(spacing, float)
        self.sampling = (self.spacing[2], self.spacing[1], self.spacing[0])

    def z(self, k) -> float:
        return float(self.origin[2] + k * self.spacing[2])

    def k(self, z: float) -> int:
        return int(round((z - self.origin[2]) / self.spacing[2]))

    def xy(self, j, i) -> tuple[float, float]:
        return float(self.origin[0] + i * self.spacing[0]), float(self.origin[1] + j * self.spacing[1])

    def mask(self, *names: str) -> np.ndarray:
        values = [self.names[n] for n in names if n in self.names]
        return np.isin(self.labels, values)

    def z_extent(self, *names: str) -> tuple[float, float]:
        ks = np.flatnonzero(self.mask(*names).any(axis=(1, 2)))
        if ks.size == 0:
            raise ValueError(f"label map lacks {names}")
        return self.z(ks.min()), self.z(ks.max())


def _centres(space: Space, name: str) -> dict[int, tuple[float, float]]:
    m = space.mask(name)
    out = {}
    for k in np.flatnonzero(m.any(axis=(1, 2))):
        lab, n = ndimage.label(m[k])
        sizes = ndimage.sum(m[k], lab, range(1, n + 1))
        j, i = ndimage.center_of_mass(lab == (int(np.argmax(sizes)) + 1))
        out[int(k)] = space.xy(j, i)
    return out


def find_landmarks(space: Space) -> Landmarks:
    trachea = space.mask("trachea")
    px_area = space.spacing[0] * space.spacing[1]
    carina_k = None
    for k in sorted(np.flatnonzero(trachea.any(axis=(1, 2))), reverse=True):
        lab, n = ndimage.label(trachea[k])
        sizes = ndimage.sum(trachea[k], lab, range(1, n + 1)) * px_area
        big = [i + 1 for i, s in enumerate(sizes) if s >= SPLIT_MIN_AREA_MM2]
        if len(big) >= 2:
            xs = [ndimage.center_of_mass(lab == b)[1] * space.spacing[0] for b in big]
            if max(xs) - min(xs) >= SPLIT_MIN_DX_MM:
                carina_k = int(k)
                break
    if carina_k is None:
        raise ValueError("no tracheal bifurcation in the label map")
    tr = _centres(space, "trachea")
    above = {k: v for k, v in tr.items() if k > carina_k}
    carina_xy = above[min(above)]
    aorta_lo, arch_top = space.z_extent("aorta")
    bcv = space.mask("brachiocephalic_vein_left")
    crossing = [k for k in np.flatnonzero(bcv.any(axis=(1, 2)))
                if k in above and (np.flatnonzero(bcv[k].any(axis=0)) * space.spacing[0] + space.origin[0]).min()
                < above[k][0]]
    bcv_z = space.z(min(crossing)) if crossing else space.z_extent("brachiocephalic_vein_left")[0]
    lungs = [n for n in space.names if n.startswith("lung_")]
    return Landmarks(
        carina_z=space.z(carina_k) + space.spacing[2] / 2, carina_xy=carina_xy, arch_top_z=arch_top,
        manubrium_top_z=space.z_extent("sternum")[1], lung_apex_z=space.z_extent(*lungs)[1],
        bcv_crossing_z=bcv_z, pulmonary_artery_top_z=space.z_extent("heart")[1], ge_junction_z=space.z_extent("esophagus")[0],
        scan_top_z=space.z(space.labels.shape[0] - 1), trachea_xy=above, esophagus_xy=_centres(space, "esophagus"),
        bronchus_xy=_bronchi(space, trachea, carina_k, carina_xy[0]))


def _bronchi(space: Space, airway: np.ndarray, carina_k: int, midline_x: float) -> dict:
    """Main bronchus centres below the split: the airway label's parts right and left of the carina."""
    out = {}
    xs = space.origin[0] + np.arange(airway.shape[2]) * space.spacing[0]
    for k in range(carina_k, -1, -1):
        if not airway[k].any():
            break
        for side, part in (("right", xs < midline_x), ("left", xs >= midline_x)):
            m = airway[k] & part[None, :]
            if m.sum() * space.spacing[0] * space.spacing[1] >= SPLIT_MIN_AREA_MM2:
                j, i = ndimage.center_of_mass(m)
                out[(side, int(k))] = space.xy(j, i)
    return out


@dataclass(frozen=True)
class Rule:
    """A station's region: z range, an in-plane box relative to a reference centre, a preferred point."""

    z: tuple[float, float]
    ref: Literal["trachea", "carina", "esophagus", "bronchus_right", "bronchus_left"]
    dx: tuple[float, float]
    dy: tuple[float, float]
    target: tuple[float, float, float]  # dx, dy, z


def station_rule(station: str, lm: Landmarks) -> Rule:
    """IASLC boundaries (Rusch 2009) read on this patient's landmarks."""
    c, at, mt, bcv, top = lm.carina_z, lm.arch_top_z, lm.manubrium_top_z, lm.bcv_crossing_z, lm.scan_top_z
    rules = {
        # 1: below the cricoid (above the scan here) down to the clavicles and the manubrium's upper border
        "1R": Rule((mt + 3, top - 8), "trachea", (-65, -22), (-25, 25), (-40, 0, mt + 15)),
        "1L": Rule((mt + 3, top - 8), "trachea", (22, 65), (-25, 25), (40, 0, mt + 15)),
        # 2: manubrium to the left brachiocephalic vein crossing (2R) / arch top (2L)
        "2R": Rule((bcv + 3, mt), "trachea", (-30, -8), (-12, 12), (-16, 0, (bcv + mt) / 2)),
        "2L": Rule((at + 3, mt), "trachea", (8, 30), (-12, 12), (16, 0, (at + mt) / 2)),
        # 4R: vein crossing to the azygos arch (just above the carina), right of the trachea's left wall
        "4R": Rule((c + 3, bcv), "trachea", (-35, -4), (-30, 8), (-16, -6, (c + bcv) / 2)),
        # 4L: below the arch top, down to the upper rim of the left main pulmonary artery
        "4L": Rule((lm.pulmonary_artery_top_z + 2, at - 6), "trachea", (10, 30), (-12, 20),
                   (15, 5, lm.pulmonary_artery_top_z + 4)),
        # 5: below the arch, lateral to the ligamentum (proxy: 28 mm left of the airway); 6: left of the arch
        "5": Rule((at - 28, at - 18), "trachea", (20, 50), (-15, 20), (30, 5, at - 23)),
        "6": Rule((at - 20, at - 2), "trachea", (25, 55), (-35, 5), (33, -15, at - 10)),
        "3a": Rule((c, mt - 10), "trachea", (-30, 15), (-70, -30), (-5, -50, (c + mt) / 2)),
        "3p": Rule((c + 5, mt - 10), "trachea", (-25, 8), (10, 35), (-10, 20, (c + mt) / 2)),
        "7": Rule((c - 30, c - 6), "carina", (-15, 22), (-5, 35), (3, 15, c - 16)),
        "8R": Rule((c - 90, c - 35), "esophagus", (-30, -6), (-15, 20), (-14, 0, c - 60)),
        "8L": Rule((c - 90, c - 35), "esophagus", (6, 30), (-15, 20), (14, 0, c - 60)),
        # 10: beside the main bronchus, from the carina to the lobar bronchi
        "10R": Rule((c - 30, c - 3), "carina", (-50, -15), (-25, 15), (-28, -3, c - 12)),
        "10L": Rule((c - 20, c - 5), "carina", (24, 50), (-15, 5), (30, -2, c - 12)),
    }
    if station not in rules:
        raise ValueError(f"no placement rule for station {station}")
    return rules[station]


def _ref_xy(lm: Landmarks, ref: str, k: int) -> tuple[float, float] | None:
    if ref == "carina":
        return lm.carina_xy
    if ref.startswith("bronchus"):
        return lm.bronchus_xy.get((ref.removeprefix("bronchus_"), k))
    table = lm.trachea_xy if ref == "trachea" else lm.esophagus_xy
    if not table:
        return None
    if k in table:
        return table[k]
    nearest = min(table, key=lambda q: abs(q - k))  # above the labelled trachea: its top slice's centre
    return table[nearest] if ref == "trachea" else None


def smoothed_hu(space: Space, zs: slice) -> np.ndarray:
    sigma = HU_SMOOTHING_MM / space.spacing[0]
    return ndimage.gaussian_filter(space.hu[zs], (0, sigma, sigma))


def free_space(space: Space, zs: slice) -> np.ndarray:
    hu = smoothed_hu(space, zs)
    return (space.labels[zs] == 0) & (hu > FREE_HU[0]) & (hu < FREE_HU[1])


def place(space: Space, lm: Landmarks, rule: Rule, radius_mm: float, occupied: np.ndarray,
          fat_only: bool = False, lung_allowance_mm: float = 0.0,
          min_room_mm: float = MIN_CLEARANCE_MM) -> tuple[tuple[float, float, float], float]:
    """The point of the rule's region with the most room (capped at the radius), near its preferred point.

    A node may push up to `lung_allowance_mm` into the lung (hilar and mediastinal nodes
    indent the lung; they never enter a vessel, airway or organ). Only points with at
    least `min_room_mm` of room count: on the 0.7 mm full-size grid a point nearer the
    preferred one with too little room would otherwise win (a node that must stay
    >= 10 mm wide). Returns the centre (LPS mm) and the room there: how far a node
    centred there may reach.
    """
    k_lo = max(space.k(min(rule.z)), 0)
    k_hi = min(space.k(max(rule.z)), space.labels.shape[0] - 1)
    if k_hi < k_lo:
        raise ValueError(f"empty z range {rule.z}")
    pad = int(np.ceil(20.0 / space.spacing[2]))
    zs = slice(max(k_lo - pad, 0), min(k_hi + pad + 1, space.labels.shape[0]))
    free = free_space(space, zs) & ~occupied[zs]
    if fat_only:
        hu = smoothed_hu(space, zs)
        free &= (hu > FAT_CORE_HU[0]) & (hu < FAT_CORE_HU[1])
    clearance = ndimage.distance_transform_edt(free, sampling=space.sampling)
    if lung_allowance_mm > 0:
        lung = space.mask(*[n for n in space.names if n.startswith("lung_")])[zs] & ~occupied[zs]
        beyond = ndimage.distance_transform_edt(free | lung, sampling=space.sampling)
        clearance = np.where(free, np.minimum(clearance + lung_allowance_mm, beyond), 0.0)
    ny, nx = space.labels.shape[1:]
    xs = space.origin[0] + np.arange(nx) * space.spacing[0]
    ys = space.origin[1] + np.arange(ny) * space.spacing[1]
    best, best_score = None, -np.inf
    for k in range(k_lo, k_hi + 1):
        ref = _ref_xy(lm, rule.ref, k)
        if ref is None:
            continue
        dx, dy = xs[None, :] - ref[0], ys[:, None] - ref[1]
        region = (dx >= rule.dx[0]) & (dx <= rule.dx[1]) & (dy >= rule.dy[0]) & (dy <= rule.dy[1])
        c = clearance[k - zs.start]
        ok = region & (c >= max(MIN_CLEARANCE_MM, min_room_mm))
        if not ok.any():
            continue
        dist = np.sqrt((dx - rule.target[0]) ** 2 + (dy - rule.target[1]) ** 2 + (space.z(k) - rule.target[2]) ** 2)
        score = np.where(ok, np.minimum(c, radius_mm) - TARGET_WEIGHT * dist, -np.inf)
        j, i = np.unravel_index(int(np.argmax(score)), score.shape)
        if score[j, i] > best_score:
            best_score, best = score[j, i], (float(xs[i]), float(ys[j]), space.z(k), float(c[j, i]))
    if best is None:
        raise ValueError(f"no point with {max(MIN_CLEARANCE_MM, min_room_mm):g} mm of room for rule {rule}")
    return best[:3], best[3]


def ellipsoid_mask(space: Space, centre, semi) -> tuple[tuple[slice, ...], np.ndarray]:
    """Index box and inside-mask of an axis-aligned ellipsoid on the CT grid."""
    lo = [(centre[d] - semi[d] - space.origin[d]) / space.spacing[d] for d in range(3)]
    hi = [(centre[d] + semi[d] - space.origin[d]) / space.spacing[d] for d in range(3)]
    shape = space.labels.shape[::-1]
    sl = [slice(max(int(np.floor(lo[d])), 0), min(int(np.ceil(hi[d])) + 1, shape[d])) for d in range(3)]
    ax = [space.origin[d] + np.arange(sl[d].start, sl[d].stop) * space.spacing[d] for d in range(3)]
    x, y, z = ax[0][None, None, :], ax[1][None, :, None], ax[2][:, None, None]
    inside = ((x - centre[0]) / semi[0]) ** 2 + ((y - centre[1]) / semi[1]) ** 2 + ((z - centre[2]) / semi[2]) ** 2 <= 1
    return (sl[2], sl[1], sl[0]), inside


def place_primary(space: Space, primary: str, semi_mm: tuple[float, float, float],
                  rng: np.random.Generator) -> tuple[tuple[float, float, float], str, str]:
    """A point deep in the lobe (far enough from every lobe border for the whole mass), chosen by seed."""
    side, lobe = PRIMARY_LOBES[primary]
    m = space.mask(lobe)
    step = 2
    sub = m[:, ::step, ::step]
    depth = ndimage.distance_transform_edt(sub, sampling=(space.sampling[0], space.sampling[1] * step,
                                                          space.sampling[2] * step))
    need = max(semi_mm) + 8.0
    cand = np.argwhere(depth >= need)
    if cand.size == 0:
        cand = np.argwhere(depth >= depth.max() * 0.8)
    k, j, i = cand[int(rng.integers(len(cand)))]
    return (float(space.origin[0] + i * step * space.spacing[0]), float(space.origin[1] + j * step * space.spacing[1]),
            space.z(k)), side, lobe


def brown_fat_foci(space: Space, lm: Landmarks, rng: np.random.Generator, per_region: int = 3
                   ) -> list[tuple[str, tuple[float, float, float]]]:
    """Foci in true fat: supraclavicular (each side) and paravertebral (each side)."""
    spine = [n for n in space.names if n.startswith("vertebrae_T")]
    spine_xy = _centres_multi(space, spine)
    regions = [
        ("supraclavicular_right", Rule((lm.manubrium_top_z + 3, lm.scan_top_z - 5), "trachea", (-95, -40), (-30, 40),
                                       (-60, 10, lm.manubrium_top_z + 15))),
        ("supraclavicular_left", Rule((lm.manubrium_top_z + 3, lm.scan_top_z - 5), "trachea", (40, 95), (-30, 40),
                                      (60, 10, lm.manubrium_top_z + 15))),
    ]
    foci = []
    occupied = np.zeros(space.labels.shape, bool)
    for name, rule in regions:
        for _ in range(per_region):
            centre, _c = place(space, lm, rule, 4.0, occupied, fat_only=True)
            foci.append((name, centre))
            sl, inside = ellipsoid_mask(space, centre, (12.0, 12.0, 12.0))
            occupied[sl] |= inside
    for side, sign in (("right", -1), ("left", 1)):
        zs = [k for k in spine_xy if lm.carina_z - 80 <= space.z(k) <= lm.carina_z + 10]
        for _ in range(per_region):
            best = None
            for k in rng.permutation(zs)[:12]:
                sx, sy = spine_xy[int(k)]
                try:
                    centre, c = _place_abs(space, int(k), sx, sy, sign, occupied)
                except ValueError:
                    continue
                if best is None or c > best[1]:
                    best = (centre, c)
            if best is not None:
                foci.append((f"paravertebral_{side}", best[0]))
                sl, inside = ellipsoid_mask(space, best[0], (12.0, 12.0, 12.0))
                occupied[sl] |= inside
    return foci


def _place_abs(space: Space, k: int, sx: float, sy: float, sign: int, occupied: np.ndarray):
    """Paravertebral fat on one slice: 15-45 mm lateral to the vertebra's centre, beside its body (in front)."""
    zs = slice(max(k - 3, 0), k + 4)
    hu = smoothed_hu(space, zs)
    fat = (space.labels[zs] == 0) & (hu > FAT_CORE_HU[0]) & (hu < FAT_CORE_HU[1]) & ~occupied[zs]
    c = ndimage.distance_transform_edt(fat, sampling=space.sampling)[k - zs.start]
    ny, nx = c.shape
    xs = space.origin[0] + np.arange(nx) * space.spacing[0]
    ys = space.origin[1] + np.arange(ny) * space.spacing[1]
    dx = (xs[None, :] - sx) * sign
    dy = ys[:, None] - sy
    region = (dx >= PARAVERTEBRAL_DX_MM[0]) & (dx <= PARAVERTEBRAL_DX_MM[1]) & (dy >= PARAVERTEBRAL_DY_MM[0]) & (
        dy <= PARAVERTEBRAL_DY_MM[1])
    score = np.where(region & (c >= 2.5), c, -np.inf)
    j, i = np.unravel_index(int(np.argmax(score)), score.shape)
    if not np.isfinite(score[j, i]):
        raise ValueError("no paravertebral fat")
    return (float(xs[i]), float(ys[j]), space.z(k)), float(c[j, i])


def _centres_multi(space: Space, names: list[str]) -> dict[int, tuple[float, float]]:
    m = space.mask(*names)
    out = {}
    for k in np.flatnonzero(m.any(axis=(1, 2))):
        j, i = ndimage.center_of_mass(m[k])
        out[int(k)] = space.xy(j, i)
    return out
