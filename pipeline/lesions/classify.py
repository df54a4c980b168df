"""What each focus is: primary, node (in a station by its peak), physiologic, lung, outside stations, distant.

- primary: an intrapulmonary focus (most of its 2–6 mm shell is lung) outside the
  nodal stations; without one, a ≥ 10 ml mass against the lung (central tumour);
  several: config chooses (largest TLG by default), the others are `lung_other`;
- physiologic: see `pipeline.lesions.physiologic`; never counts for N;
- below the diaphragm: physiologic when the peak is in a labelled abdominal organ,
  else distant; not staged here;
- node: the SUV *peak* lies in a nodal station's region (station hygiene: no
  nearest-station fallback); read by `pipeline.lesions.reading`. One exception
  is read in full: a node whose peak lies inside the esophagus label (it passed the
  physiologic test as focal and nodular, so the label took in a node pressed against
  the esophagus) belongs to the station-7 region the label hides it from; and, on
  contrast CT, a node against the heart measured with the part of it the heart label
  took in (`physiologic.node_into_heart`) belongs to the region nearest its peak;
- outside_stations: thoracic, not physiologic, its peak in no station region;
- distant: outside the thorax (above the lung apices outside station 1, below the bases).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from pipeline.lesions.geometry import an
from pipeline.study_result import LesionKind, PhysiologicSite

INTRAPULMONARY_SHELL_FRACTION = 0.5  # share of a focus's 2–6 mm shell that is lung
PRIMARY_MIN_SHELL_FRACTION = 0.15  # a central mass must at least abut the lung
CENTRAL_PRIMARY_MIN_ML = 10.0
DIAPHRAGM_MARGIN_MM = 10.0
NEAR_STATION_MM = 5.0
# A node inside the esophagus label is reached through it: the station region within its depth
# in the label plus NEAR_STATION_MM, and never further than this ...
THROUGH_LABEL_MAX_MM = 12.0
# ... and only into station 7: at its levels the esophagus runs through the subcarinal space, and
# the node pressed against it is the one a label swallows. Lower down a focal spot inside the
# esophagus is more often esophagitis or the GE junction (the LIDC N2b case at full size: its
# distal-esophageal trap read as a positive 8L node through the label), so it stays capped.
THROUGH_ESOPHAGUS_STATIONS = ("7",)
# A node whose peak lies this close to another station's region could be in either: station
# borders drawn on CT are uncertain by a few mm, and the PET peak by about one PET voxel.
BOUNDARY_MM = 5.0
DOME_REACH_MM = 60.0  # lung this close above the peak, in its own column: the peak is under the diaphragm dome ...
DOME_HEIGHT_MM = 80.0  # the dome rises at most this far above the lowest lung (the costophrenic recesses)
DOME_MIN_DEPTH_MM = 15.0  # ... and at least this far below it (a 9R/9L node touches the lung base)
NODAL_STATIONS = ("1R", "1L", "2R", "2L", "3a", "3p", "4R", "4L", "5", "6", "7",
                  "8R", "8L", "9R", "9L", "10R", "10L")


@dataclass
class Candidate:
    """One focus with its measurements, before it is named."""

    label: int
    sl: tuple[slice, ...]  # crop of the CT grid holding the focus plus a margin
    local: np.ndarray  # focus mask inside the crop
    peak: tuple[int, int, int]  # global (z, y, x) index of the SUV maximum on the CT grid
    centroid_mm: tuple[float, float, float]
    peak_mm: tuple[float, float, float]
    suvmax: float
    suvpeak: float
    suvmean: float
    mtv_ml: float
    short_axis: float
    station: str | None  # the station region holding the peak (or, at most equivocal, within NEAR_STATION_MM)
    station_distance_mm: float
    lung_fraction: float
    side_by_position: str | None
    lobe: str | None
    below_diaphragm: bool
    in_thorax: bool
    ct_only: bool = False
    nearby_stations: dict[str, float] = field(default_factory=dict)  # other stations within BOUNDARY_MM of the peak
    physiologic: tuple[PhysiologicSite, str] | None = None
    abdominal_organ: str | None = None
    component: int = 0  # the connected component it was split from
    station_through: str | None = None  # the structure label holding the peak, when the station is reached through it
    peak_in_label: str | None = None  # the structure label holding the peak, when the station is not reached through it

    @property
    def tlg(self) -> float:
        return self.suvmean * self.mtv_ml

    @property
    def in_station(self) -> bool:
        """Its peak is in the station's region, or in a label that hides that region (read in full)."""
        return self.station is not None and (self.station_distance_mm == 0 or self.station_through is not None)

    @property
    def outside_station_mm(self) -> float:
        """How far outside its station's region the peak lies, for the hygiene cap (0: read in full)."""
        return 0.0 if self.in_station else self.station_distance_mm

    @property
    def central_mass(self) -> bool:
        return self.lung_fraction >= PRIMARY_MIN_SHELL_FRACTION and self.mtv_ml >= CENTRAL_PRIMARY_MIN_ML


def station_at(stations: np.ndarray | None, value_to_station: dict[int, str], peak,
               spacing: np.ndarray, reach_mm: float = NEAR_STATION_MM) -> tuple[str | None, float]:
    """Station hygiene: the station whose region holds the peak voxel (distance 0).

    When none does, the nearest station region within `reach_mm` (by default
    NEAR_STATION_MM, about one PET voxel: the peak's own uncertainty) and its distance;
    such a node can be at most equivocal. Beyond that: (None, inf).
    """
    if stations is None:
        return None, float("inf")
    here = value_to_station.get(int(stations[tuple(peak)]))
    if here is not None:
        return here, 0.0
    spacing = np.asarray(spacing, float)
    r = np.ceil(reach_mm / spacing).astype(int)
    box = tuple(slice(max(int(c) - k, 0), int(c) + k + 1) for c, k in zip(peak, r))
    local = np.asarray(stations[box])
    known = np.isin(local, list(value_to_station))
    if not known.any():
        return None, float("inf")
    offs = (np.argwhere(known) + [b.start for b in box] - np.array(peak)) * spacing
    d = np.sqrt((offs ** 2).sum(axis=1))
    j = int(np.argmin(d))
    if d[j] > reach_mm:
        return None, float("inf")
    return value_to_station[int(local[tuple(np.argwhere(known)[j])])], float(d[j])


def station_through_label(stations: np.ndarray | None, value_to_station: dict[int, str], peak,
                          spacing: np.ndarray, label: np.ndarray, label_peak,
                          only: tuple[str, ...] | None = None) -> tuple[str | None, float]:
    """The station of a node whose peak lies inside a structure label that took it in.

    Station regions are the fat around the labelled structures, so a node that a
    label swallowed (the esophagus label takes in a node of the same density pressed
    against it) has its peak outside every region, by up to its depth in the label.
    Its station is the region nearest the peak within that depth plus NEAR_STATION_MM
    (at most THROUGH_LABEL_MAX_MM). `label` is the structure's mask on a crop holding
    the peak at `label_peak`. (None, inf) when the peak is not in the label, or when that
    region is not one of `only`.
    """
    label_peak = tuple(int(v) for v in label_peak)
    if stations is None or not label[label_peak]:
        return None, float("inf")
    depth = float(ndimage.distance_transform_edt(label, sampling=spacing)[label_peak])
    station, d = station_at(stations, value_to_station, peak, spacing,
                            reach_mm=min(depth + NEAR_STATION_MM, THROUGH_LABEL_MAX_MM))
    if only is not None and station not in only:
        return None, float("inf")
    return station, d


def stations_near(stations: np.ndarray | None, value_to_station: dict[int, str], peak, spacing: np.ndarray,
                  radius_mm: float = BOUNDARY_MM, own: str | None = None) -> dict[str, float]:
    """Each station region within `radius_mm` of the peak voxel, with its distance (mm), the
    node's own station (by default the one holding the peak) excluded: the stations a
    boundary call could have gone to instead."""
    if stations is None:
        return {}
    own = own or value_to_station.get(int(stations[tuple(peak)]))
    r = np.ceil(radius_mm / np.asarray(spacing, float)).astype(int)
    box = tuple(slice(max(int(c) - k, 0), int(c) + k + 1) for c, k in zip(peak, r))
    local = np.asarray(stations[box])
    others = [v for v, name in value_to_station.items() if name != own]
    known = np.isin(local, others)
    if not known.any():
        return {}
    where = np.argwhere(known)
    d = np.sqrt((((where + [b.start for b in box] - np.array(peak)) * spacing) ** 2).sum(axis=1))
    out: dict[str, float] = {}
    for (idx, dist) in zip(where, d):
        if dist <= radius_mm:
            name = value_to_station[int(local[tuple(idx)])]
            out[name] = min(out.get(name, np.inf), float(dist))
    return {k: round(v, 1) for k, v in sorted(out.items(), key=lambda kv: kv[1])}


def lung_side(anatomy_arr: np.ndarray, names: dict[str, int], lungs: dict[str, np.ndarray | None],
              local: np.ndarray, spacing: np.ndarray) -> tuple[str | None, str | None]:
    """Side and lobe of a focus from the lung labels within 6 mm of it."""
    region = ndimage.distance_transform_edt(~local, sampling=spacing) <= 6.0
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


class Diaphragm:
    """Where the thorax ends: the lung bases (a lowest-lung surface) and the dome over the liver and spleen."""

    def __init__(self, lung: np.ndarray | None, img: sitk.Image, reach_mm: float = 80.0):
        self.img = img
        self.lung = lung
        self.base_mm = None
        self.z_range_mm = None
        if lung is None or not lung.any():
            return
        has = lung.any(axis=0)
        dz = img.GetDirection()[8] * img.GetSpacing()[2]
        lowest = np.argmax(lung, axis=0) if dz > 0 else lung.shape[0] - 1 - np.argmax(lung[::-1], axis=0)
        z0 = img.GetOrigin()[2]
        z_base = np.where(has, z0 + lowest * dz, np.inf)
        sy, sx = img.GetSpacing()[1], img.GetSpacing()[0]
        size = (2 * int(reach_mm / sy) + 1, 2 * int(reach_mm / sx) + 1)
        self.base_mm = ndimage.minimum_filter(z_base, size=size, mode="constant", cval=np.inf)
        self.lowest_index = np.where(has, lowest, -1)
        ks = np.nonzero(lung.any(axis=(1, 2)))[0]
        zs = [z0 + k * dz for k in (ks.min(), ks.max())]
        self.z_range_mm = (min(zs), max(zs))

    def below(self, peak, peak_mm) -> bool:
        """Below the lung-base surface, or under the dome: lung straight above the peak in its own column."""
        if self.base_mm is None:
            return False
        j = min(max(int(peak[1]), 0), self.base_mm.shape[0] - 1)
        i = min(max(int(peak[2]), 0), self.base_mm.shape[1] - 1)
        if peak_mm[2] < self.base_mm[j, i] - DIAPHRAGM_MARGIN_MM:
            return True
        if self.lung[tuple(peak)]:
            return False
        column = self.lung[:, j, i]
        sign = 1 if self.img.GetDirection()[8] * self.img.GetSpacing()[2] > 0 else -1
        dz = self.img.GetSpacing()[2]
        reach, depth = int(DOME_REACH_MM / dz), int(np.ceil(DOME_MIN_DEPTH_MM / dz))
        k = int(peak[0])
        above = column[k + 1: k + 1 + reach] if sign > 0 else column[max(k - reach, 0): k][::-1]
        below = column[max(k - reach, 0): k] if sign > 0 else column[k + 1: k + 1 + reach]
        # Lung above in this column, but not right above (a node at the lung base touches it), and none below:
        # the focus lies under the dome, with the diaphragm and an organ between it and the lung.
        near_base = peak_mm[2] < self.z_range_mm[0] + DOME_HEIGHT_MM
        return bool(near_base and above.any() and not above[:depth].any() and not below.any())

    def in_thorax(self, z_mm: float) -> bool:
        if self.z_range_mm is None:
            return True
        return self.z_range_mm[0] - 10.0 <= z_mm <= self.z_range_mm[1] + 10.0


def _lobes_of(c: Candidate, cands: list[Candidate]) -> list[Candidate]:
    """The other foci of c's component that belong to the same mass: peak in no station, not physiologic."""
    return [o for o in cands if o is not c and o.component == c.component and not o.ct_only
            and not o.below_diaphragm and o.physiologic is None
            and not o.in_station]


def primary_lobes(cands: list[Candidate], primary: Candidate | None) -> list[Candidate]:
    return [] if primary is None else _lobes_of(primary, cands)


def choose_primary(cands: list[Candidate], how: str) -> tuple[Candidate | None, str]:
    """The primary: an intrapulmonary focus, else a large central mass against the lung.

    Foci split from one component are weighed together with their lobes (a
    lobulated tumour is one mass); the hottest focus of the winning mass is the seed.
    """
    def mass(c: Candidate) -> list[Candidate]:
        return [c, *_lobes_of(c, cands)]

    key = {"largest_tlg": lambda c: sum(o.tlg for o in mass(c)), "highest_suvmax": lambda c: c.suvmax,
           "largest_volume": lambda c: sum(o.mtv_ml for o in mass(c))}[how]
    avid = [c for c in cands if not c.ct_only and not c.below_diaphragm]
    tier1 = [c for c in avid if c.lung_fraction >= INTRAPULMONARY_SHELL_FRACTION
             and (c.station is None or c.station not in NODAL_STATIONS)]
    if tier1:
        return max(tier1, key=key), f"intrapulmonary, chosen by {how.replace('_', ' ')}"
    tier2 = [c for c in avid if (c.central_mass or (sum(o.mtv_ml for o in mass(c)) >= CENTRAL_PRIMARY_MIN_ML
                                                    and c.lung_fraction >= PRIMARY_MIN_SHELL_FRACTION))
             and (c.physiologic is None or c.physiologic[0] == PhysiologicSite.VASCULAR)]
    if tier2:
        best = max(tier2, key=key)
        best = max([best, *_lobes_of(best, cands)], key=lambda c: c.suvmax)
        return best, (f"central mass against the lung (no intrapulmonary lesion; "
                                     f">= {CENTRAL_PRIMARY_MIN_ML:g} ml), chosen by {how.replace('_', ' ')}")
    return None, ""


@dataclass(frozen=True)
class Naming:
    kind: LesionKind
    rule: str
    station: str | None = None
    side: str | None = None
    physiologic_site: PhysiologicSite | None = None


def name_focus(c: Candidate, primary: Candidate | None, primary_how: str) -> Naming:
    """Everything but the node reading: what the focus is, and why."""
    numbers = f"SUVmax {c.suvmax:.2f}, SUVpeak {c.suvpeak:.2f}, short axis {c.short_axis:.1f} mm"
    if c is primary:
        return Naming(LesionKind.PRIMARY, f"primary tumour ({primary_how}): {c.lung_fraction:.0%} of its "
                      f"surroundings is lung; {numbers}, MTV {c.mtv_ml:.1f} ml", side=c.side_by_position)
    if c.below_diaphragm:
        if c.abdominal_organ:
            return Naming(LesionKind.PHYSIOLOGIC, f"below the diaphragm, in the {c.abdominal_organ.replace('_', ' ')}"
                          f" ({numbers}): physiologic, not staged", physiologic_site=PhysiologicSite.SUBDIAPHRAGMATIC)
        return Naming(LesionKind.DISTANT, f"below the diaphragm ({numbers}): distant or physiologic, not staged here")
    if c.physiologic is not None and c.lung_fraction < INTRAPULMONARY_SHELL_FRACTION:
        site, why = c.physiologic
        return Naming(LesionKind.PHYSIOLOGIC, f"{why} ({numbers}); physiologic or non-nodal, never counted for N",
                      physiologic_site=site)
    if c.station in NODAL_STATIONS:
        if c.station_distance_mm == 0:
            where = "its peak lies in the station's region"
        elif c.station_through:
            where = (f"its peak lies inside the {c.station_through} label, {c.station_distance_mm:.0f} mm from the "
                     f"station's region: a node pressed against the {c.station_through}, which the label took in")
        elif c.peak_in_label:
            where = (f"its peak lies inside the {c.peak_in_label} label, {c.station_distance_mm:.0f} mm from the "
                     f"station's region: a node pressed against the {c.peak_in_label}, or focal uptake in it; "
                     "equivocal at most")
        else:
            where = f"its peak lies {c.station_distance_mm:.0f} mm outside the station's region: equivocal at most"
        return Naming(LesionKind.NODE, f"station {c.station} ({where})", station=c.station,
                      side=station_side(c.station))
    if c.lung_fraction >= INTRAPULMONARY_SHELL_FRACTION:
        return Naming(LesionKind.LUNG_OTHER, f"additional intrapulmonary lesion ({numbers}); not staged as a node",
                      station=c.station, side=c.side_by_position)
    if not c.in_thorax:
        return Naming(LesionKind.DISTANT, f"outside the thorax ({numbers}): distant, not staged here")
    return Naming(LesionKind.OUTSIDE_STATIONS, f"thoracic, its peak in no nodal station region ({numbers}); "
                  "not counted for N")


def station_side(station: str) -> str | None:
    if station.endswith("R"):
        return "right"
    if station.endswith("L") or station in ("5", "6"):
        return "left"
    return None

