"""The station regions, built step by step on the working grid (rules: package docstring).

Each step claims free space for its stations; the first step to claim a voxel
wins, so the order of `build_regions` is part of the rules.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi

from pipeline.anatomy import names as an
from pipeline.stations.constants import (
    CONTAINERS, DIAPHRAGM_BELOW_HEART_MM, ESOPHAGUS_PROXY_ANTERIOR_MM, ESOPHAGUS_PROXY_RADIUS_MM, HILAR_CORE_MM,
    HILAR_LUNG_MM, HILAR_PROXY_ANTERIOR_MM, HILAR_PROXY_LUNG_MM, HILAR_PROXY_POSTERIOR_MM, INTERLOBAR_HILUM_MM,
    INTERLOBAR_MM, LEFT_POSTERIOR_MM, LIGAMENT_ANTERIOR_MM, LIGAMENT_LATERAL_MM, LIGAMENT_MM, LIGAMENT_POSTERIOR_MM,
    LOBAR_MM, NECK_VESSELS, PARAESOPHAGEAL_MM, PARAESOPHAGEAL_NEAR_MM, PARAESOPHAGEAL_PROXY_MM,
    PARATRACHEAL_LEFT_MM, PARA_AORTIC_MM, RIGHT_POSTERIOR_MM, SEGMENTAL_MM, STATION1_ANTERIOR_MM,
    STATION1_LATERAL_ANTERIOR_MM, STATION1_LATERAL_MM, STATION1_POSTERIOR_MM, STATION1_SKIN_DEPTH_MM,
    STATION1_VESSEL_MM, STATION_VALUES, SUBCARINAL_ANTERIOR_MM, SUBCARINAL_MIN_HALF_WIDTH_MM,
    SUBCARINAL_POSTERIOR_MM, SUBCARINAL_PROXY_HALF_WIDTH_MM,
)
from pipeline.stations.grid import Work, dist_3d, dist_inplane, fill_nan, hull_fill
from pipeline.stations.landmarks import Airway, Levels
from pipeline.stations.spaces import (
    below_diaphragm, below_heart_floor, esophagus_proxy, mediastinal_space, spine_front_columns, spine_mask,
    vessel_front,
)

@dataclass
class _Ctx:
    """What every step reads (the grid, landmarks, working spaces) and the map it writes."""

    w: Work
    lv: Levels
    aw: Airway
    lung_r: np.ndarray
    lung_l: np.ndarray
    labelled: np.ndarray       # voxels some structure claims (not lung, not a container)
    free: np.ndarray           # unclaimed space inside the body, above the diaphragm
    med: np.ndarray            # mediastinal part of the free space
    S: np.ndarray              # the station map being built
    notes: list[str]
    above: np.ndarray = field(default_factory=lambda: np.zeros((1, 1, 1), dtype=bool))  # carina .. station-1 floor
    below: np.ndarray = field(default_factory=lambda: np.zeros((1, 1, 1), dtype=bool))  # below the carina
    s1_floor: np.ndarray | None = None

    @property
    def z(self) -> dict[str, float]:
        return self.lv.z

    @property
    def has_carina(self) -> bool:
        return self.aw.k_carina is not None

    def have(self, *keys: str) -> bool:
        return all(k in self.lv.z for k in keys)

    def put(self, cond: np.ndarray, station: str) -> None:
        """Claim `cond` for `station` where no earlier step has claimed it."""
        c = cond & (self.S == 0)
        self.S[c] = STATION_VALUES[station]

    def trachea(self) -> tuple[np.ndarray, ...]:
        """Per-slice tracheal centre x, left/right walls x, anterior/posterior walls y (broadcastable)."""
        aw = self.aw
        return tuple(a[:, None, None] for a in (aw.cx, aw.xl, aw.xr, aw.ya, aw.yp))


@dataclass
class _Esophagus:
    """The esophagus below the carina as the lower stations use it (label or stand-in)."""

    mask: np.ndarray
    present: bool
    d_wall: np.ndarray          # in-plane distance to its wall (mm), from the carina down
    cx: np.ndarray              # per-slice centre x, y (mm; broadcastable)
    cy: np.ndarray
    k_low: int                  # slices below this index lie below station 7
    d_lung_r: np.ndarray
    d_lung_l: np.ndarray


# ----------------------------------------------------------------------------------------
# Working spaces
# ----------------------------------------------------------------------------------------

def _context(w: Work, lv: Levels, aw: Airway, lung_r: np.ndarray, lung_l: np.ndarray, notes: list[str]) -> _Ctx:
    lung = lung_r | lung_l
    containers = [w.values[n] for n in CONTAINERS if n in w.values]
    labelled = (w.arr > 0) & ~np.isin(w.arr, containers) & ~lung
    free = ~labelled & ~lung
    if w.has(an.BODY):
        free &= w.mask(an.BODY)
    abdomen = below_diaphragm(w)
    if abdomen is not None:
        free &= ~abdomen
    floor = below_heart_floor(w)
    if floor is not None:
        free &= ~floor
        notes.append(f"proxy: nothing more than {DIAPHRAGM_BELOW_HEART_MM:g} mm below the heart's lowest voxel (the "
                     "heart rests on the diaphragm; this bounds the left side where the stomach and spleen often "
                     "have no label)")
    if abdomen is None and floor is None:
        notes.append("proxy: no abdominal organ or heart labelled; stations 8 and 9 end at the lung bases")
    ctx = _Ctx(w=w, lv=lv, aw=aw, lung_r=lung_r, lung_l=lung_l, labelled=labelled, free=free,
               med=mediastinal_space(w, lung_r, lung_l, free), S=np.zeros(w.arr.shape, dtype=np.uint8), notes=notes)
    return ctx


def _body(ctx: _Ctx, k0: int) -> np.ndarray:
    """The whole body (every labelled voxel lies inside it), for the skin-depth rule."""
    w = ctx.w
    if w.has(an.BODY):
        return w.arr > 0
    body = np.zeros(w.arr.shape, dtype=bool)
    anything = w.arr > 0
    for k in range(k0, len(w.z)):
        if anything[k].any():
            body[k] = hull_fill(anything[k])
    ctx.notes.append("proxy: body outline for station 1 = convex hull of all labelled structures per slice")
    return body


# ----------------------------------------------------------------------------------------
# Station 1 and the upper mediastinum
# ----------------------------------------------------------------------------------------

def _station1(ctx: _Ctx) -> None:
    """1R/1L: cricoid down to the manubrium (midline), the lung apex (beside the trachea) and the
    clavicles (outside the mediastinum); fat only: no structure, not within STATION1_SKIN_DEPTH_MM
    of the skin, never behind the vertebral bodies' front."""
    if not ctx.have("manubrium_top", "carina"):
        return
    w, z = ctx.w, ctx.z
    Z, Y, X = w.Z, w.Y, w.X
    cx, xl, xr, ya, yp = ctx.trachea()
    z_man = z["manubrium_top"]
    ap_r = max(z_man, z.get("lung_apex_right", z_man))
    ap_l = max(z_man, z.get("lung_apex_left", z_man))
    midline = (X >= xr) & (X <= xl)
    ctx.s1_floor = np.where(midline, z_man, np.where(X < cx, ap_r, ap_l))
    # Outside the mediastinal space (lateral to the lung apices) station 1 reaches down to the clavicles.
    clav = np.where(X < cx, z.get("clavicle_right", ap_r), z.get("clavicle_left", ap_l))
    k0 = w.k_of(min(z_man, float(np.min(clav))))
    deep, in_front = _station1_fat(ctx, k0, _body(ctx, k0), yp)
    box = ((Z <= z["cricoid_lower"]) & ctx.free & deep & in_front & _near_neck_vessels(ctx, k0)
           & (np.abs(X - cx) <= STATION1_LATERAL_MM)
           & (Y >= np.where(midline, ya - STATION1_ANTERIOR_MM, ya - STATION1_LATERAL_ANTERIOR_MM)))
    s1 = box & ((Z > ctx.s1_floor) | (~ctx.med & ~midline & (Z > clav)))
    ctx.put(s1 & (X < cx), "1R")
    ctx.put(s1 & (X >= cx), "1L")
    ctx.notes.append(f"proxy: station-1 muscles excluded by depth: fat at least {STATION1_SKIN_DEPTH_MM:g} mm deep "
                     "to the skin, in front of the vertebral bodies' anterior surface, and never a labelled "
                     "structure (thyroid, larynx, vessels, autochthon muscles ...)")


def _station1_fat(ctx: _Ctx, k0: int, body: np.ndarray, yp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Slices k0 up: far enough from the skin, and in front of the spine (or the tracheal wall + margin)."""
    w = ctx.w
    deep = np.zeros(w.arr.shape, dtype=bool)
    front_ok = np.zeros(w.arr.shape, dtype=bool)
    spine = spine_mask(w)
    back = (yp + STATION1_POSTERIOR_MM).reshape(-1)
    for k in range(k0, len(w.z)):
        if body[k].any():
            deep[k] = ndi.distance_transform_edt(body[k], sampling=(w.sp, w.sp)) >= STATION1_SKIN_DEPTH_MM
        limit = np.full(w.arr.shape[2], back[k])
        if spine[k].any():
            limit = np.minimum(limit, spine_front_columns(w, spine[k]))
        front_ok[k] = w.y[:, None] <= limit[None, :]
    return deep, front_ok


def _near_neck_vessels(ctx: _Ctx, k0: int) -> np.ndarray:
    """Muscle proxy: on slices where neck vessels are labelled, only the fat within STATION1_VESSEL_MM
    of them (the carotid sheath chain, the supraclavicular fossa around the subclavian vessels);
    on other slices no restriction."""
    w = ctx.w
    vessels = w.mask(*NECK_VESSELS)
    near = np.ones(w.arr.shape, dtype=bool)
    if not vessels[k0:].any():
        ctx.notes.append("proxy: no neck vessel labelled; station 1 is the fat between the skin-depth and "
                         "vertebral limits only")
        return near
    d = dist_inplane(w, vessels, k0, len(w.z), max_mm=STATION1_VESSEL_MM + w.sp)
    with_vessels = vessels.any(axis=(1, 2))
    near[with_vessels] = d[with_vessels] <= STATION1_VESSEL_MM
    ctx.notes.append(f"proxy: station 1 = fat within {STATION1_VESSEL_MM:g} mm of the labelled neck vessels "
                     "(carotid, subclavian, brachiocephalic) where they are labelled")
    return near


def _vertical_zones(ctx: _Ctx) -> None:
    """Above the carina (up to the station-1 floor) and below it."""
    if not ctx.has_carina:
        return
    Z = ctx.w.Z
    z_car = ctx.z["carina"]
    above = Z >= z_car
    ctx.above = above & (Z <= ctx.s1_floor) if ctx.s1_floor is not None else np.zeros_like(above)
    ctx.below = Z < z_car


def _retrotracheal_and_prevascular(ctx: _Ctx) -> None:
    """3p behind the trachea (in front of the spine: mediastinal space ends there); 3a/6 in front of
    the great vessels, 6 next to the arch."""
    if not (ctx.has_carina and ctx.s1_floor is not None):
        return
    w, aw, z = ctx.w, ctx.aw, ctx.z
    Z, Y, X = w.Z, w.Y, w.X
    _, xl, xr, _, yp = ctx.trachea()
    ctx.put(ctx.med & ctx.above & (Y > yp) & (X >= xr) & (X <= xl), "3p")
    front = vessel_front(w, aw, w.k_of(z["carina"]), len(w.z))
    prevasc = ctx.med & ctx.above & (Y < front[:, None, :])
    if ctx.have("arch_top", "arch_bottom"):
        arch_lv = (Z >= z["arch_bottom"]) & (Z <= z["arch_top"])
        ka, kb = w.k_of(z["arch_bottom"] - w.sp), w.k_of(z["arch_top"] + w.sp)
        aorta = w.mask("aorta")
        d_ao = dist_inplane(w, aorta, ka, kb + 1)
        ax = np.full(len(w.z), np.nan)
        for k in range(ka, min(kb + 1, len(w.z))):
            ant = aorta[k] & (w.y[:, None] < aw.cy[k])
            if ant.any():
                ax[k] = w.x[np.nonzero(ant)[1]].mean()
        ax = fill_nan(ax) if np.isfinite(ax).any() else np.full(len(w.z), np.inf)
        ctx.put(prevasc & arch_lv & (d_ao <= PARA_AORTIC_MM) & (X >= ax[:, None, None]), "6")
    ctx.put(prevasc, "3a")


# ----------------------------------------------------------------------------------------
# The esophagus, station 7, the paratracheal and hilar stations
# ----------------------------------------------------------------------------------------

def _esophagus(ctx: _Ctx) -> _Esophagus | None:
    """The esophagus below the carina (label, else stand-in) and distances the lower stations use."""
    w, aw, z = ctx.w, ctx.aw, ctx.z
    lows = [z[k] for k in ("station7_lower_right", "station7_lower_left") if k in z]
    if not lows:
        return None
    nz = len(w.z)
    k_low = w.k_of(max(lows) + w.sp)
    eso = w.mask("esophagus")
    present = bool(eso[:k_low].any())
    if not present:
        proxy = esophagus_proxy(w, k_low)
        if proxy is not None:
            eso, present = proxy, True
            ctx.notes.append(f"proxy: no esophagus label; below the carina the esophagus is taken as a "
                             f"{ESOPHAGUS_PROXY_RADIUS_MM:g} mm disc {ESOPHAGUS_PROXY_ANTERIOR_MM:g} mm in front of "
                             "the descending aorta's centre, midway between it and the vertebral body's centre in x")
    ex, ey = np.full(nz, np.nan), np.full(nz, np.nan)
    for k in range(0, min(k_low, nz)):
        if eso[k].any():
            jj, ii = np.nonzero(eso[k])
            ex[k], ey[k] = w.x[ii].mean(), w.y[jj].mean()
    if present:
        cx, cy = fill_nan(ex)[:, None, None], fill_nan(ey)[:, None, None]
    else:
        cx = np.full((nz, 1, 1), aw.x_c if ctx.has_carina else 0.0)
        cy = np.full((nz, 1, 1), aw.y_c + 15.0 if ctx.has_carina else 0.0)
        ctx.notes.append(f"proxy: no esophagus label; station 8 = mediastinal space behind a line 10 mm in front "
                         f"of the carina, within {PARAESOPHAGEAL_PROXY_MM:g} mm of the carina's x, split there")
    k_wall = max(k_low, w.k_of(z["carina"]) + 1) if ctx.has_carina else k_low
    return _Esophagus(mask=eso, present=present, d_wall=dist_inplane(w, eso, 0, k_wall), cx=cx, cy=cy, k_low=k_low,
                      d_lung_r=dist_inplane(w, ctx.lung_r, 0, k_low), d_lung_l=dist_inplane(w, ctx.lung_l, 0, k_low))


def _zone8(ctx: _Ctx, eso: _Esophagus | None, side: str) -> np.ndarray | None:
    """Station 8's levels on one side: below station 7, above the lung base (and the diaphragm)."""
    if eso is None or not ctx.have(f"station7_lower_{side}", f"lung_base_{side}"):
        return None
    w, z = ctx.w, ctx.z
    this_side = (w.X < eso.cx) if side == "right" else (w.X >= eso.cx)
    return ctx.med & this_side & (w.Z < z[f"station7_lower_{side}"]) & (w.Z >= z[f"lung_base_{side}"])


def _paraesophageal_near(ctx: _Ctx, eso: _Esophagus | None) -> None:
    """Below station 7, the space hugging the esophagus is 8 before any hilar rule."""
    if eso is None or not eso.present:
        return
    for side, st in (("right", "8R"), ("left", "8L")):
        zn = _zone8(ctx, eso, side)
        if zn is not None:
            ctx.put(zn & (eso.d_wall <= PARAESOPHAGEAL_NEAR_MM), st)


def _subcarinal_column(ctx: _Ctx) -> tuple[np.ndarray, np.ndarray]:
    """x of the medial walls of the right and left bronchi per slice (station 7 lies between them)."""
    w, aw = ctx.w, ctx.aw
    nz, k_car, h = len(w.z), aw.k_carina, w.sp / 2
    x_rmed, x_lmed = np.full(nz, np.nan), np.full(nz, np.nan)
    for k in range(0, k_car):
        if aw.right[k].any():
            x_rmed[k] = w.x[np.nonzero(aw.right[k])[1]].max() + h
        if aw.left[k].any():
            x_lmed[k] = w.x[np.nonzero(aw.left[k])[1]].min() - h
    if np.isfinite(x_rmed).any() and np.isfinite(x_lmed).any():
        x_rmed[k_car:] = aw.x_c
        x_lmed[k_car:] = aw.x_c
        x_rmed = np.minimum(fill_nan(x_rmed), aw.x_c - SUBCARINAL_MIN_HALF_WIDTH_MM)[:, None, None]
        x_lmed = np.maximum(fill_nan(x_lmed), aw.x_c + SUBCARINAL_MIN_HALF_WIDTH_MM)[:, None, None]
        return x_rmed, x_lmed
    ctx.notes.append(f"proxy: main bronchi not labelled below the carina; station 7 column = "
                     f"{SUBCARINAL_PROXY_HALF_WIDTH_MM:g} mm either side of the carina")
    return (np.full((nz, 1, 1), aw.x_c - SUBCARINAL_PROXY_HALF_WIDTH_MM),
            np.full((nz, 1, 1), aw.x_c + SUBCARINAL_PROXY_HALF_WIDTH_MM))


def _station7(ctx: _Ctx, eso: _Esophagus | None, x_rmed: np.ndarray, x_lmed: np.ndarray) -> None:
    """7: between the bronchi, from in front of the carina back to the esophagus's posterior wall
    (SUBCARINAL_POSTERIOR_MM behind the carina where no esophagus is seen), plus the fat within
    PARAESOPHAGEAL_NEAR_MM of the esophagus, down to the bronchus intermedius (right half) and the
    left lower lobe bronchus (left half)."""
    if not ctx.have("station7_lower_right", "station7_lower_left"):
        return
    w, aw, z = ctx.w, ctx.aw, ctx.z
    Z, Y, X = w.Z, w.Y, w.X
    back = np.full(len(w.z), aw.y_c + SUBCARINAL_POSTERIOR_MM)
    if eso is not None and eso.present:
        for k in range(0, min(aw.k_carina, eso.k_low)):
            col = eso.mask[k] & (X[0] >= x_rmed[k]) & (X[0] <= x_lmed[k])
            if col.any():
                back[k] = max(back[k], float(w.y[np.nonzero(col)[0]].max()) + w.sp / 2)
    z7 = np.where(X < aw.x_c, z["station7_lower_right"], z["station7_lower_left"])
    subcarinal = ctx.med & ctx.below & (Z >= z7) & (Y >= aw.y_c - SUBCARINAL_ANTERIOR_MM)
    ctx.put(subcarinal & (X >= x_rmed) & (X <= x_lmed) & (Y <= back[:, None, None]), "7")
    if eso is not None and eso.present:
        # Down to its lower border, the fat hugging the esophagus (the azygo-esophageal recess) is 7 too:
        # station 8 only begins below it.
        ctx.put(subcarinal & (eso.d_wall <= PARAESOPHAGEAL_NEAR_MM), "7")


def _hilar_zones(ctx: _Ctx) -> dict[str, np.ndarray]:
    """Below the carina: free space near each side's bronchi / hilar vessels (station 10 candidates)."""
    w, aw, z = ctx.w, ctx.aw, ctx.z
    Y, X = w.Y, w.X
    k_car = aw.k_carina
    ipvs = [z[k] for k in ("ipv_right", "ipv_left") if k in z]
    k_ipv = w.k_of(min(ipvs) - w.sp) if ipvs else k_car
    hilar_vessels = w.mask(an.PULMONARY_ARTERY, "pulmonary_vein")
    hil = {}
    for side, bron, lungs in (("right", aw.right, ctx.lung_r), ("left", aw.left, ctx.lung_l)):
        half = (X < aw.x_c) if side == "right" else (X >= aw.x_c)
        core = bron | (hilar_vessels & half)
        d_core = dist_3d(w, core, k_ipv, k_car)
        d_bron = dist_3d(w, bron, k_ipv, k_car)
        d_lung = dist_inplane(w, lungs, k_ipv, k_car)
        # The lung root: free space in the concavity of this lung (its axial convex hull).
        root = np.zeros_like(lungs)
        for k in range(k_ipv, k_car):
            if lungs[k].any():
                root[k] = hull_fill(lungs[k]) & ctx.free[k]
        no_core = ~core.any(axis=(1, 2))[:, None, None]
        proxy = (no_core & ctx.med & (d_lung <= HILAR_PROXY_LUNG_MM)
                 & (Y >= aw.y_c - HILAR_PROXY_ANTERIOR_MM) & (Y <= aw.y_c + HILAR_PROXY_POSTERIOR_MM))
        if (proxy & ctx.below).any():
            ctx.notes.append(f"proxy: {side} hilum on slices without a labelled bronchus or hilar vessel = "
                             f"mediastinal space within {HILAR_PROXY_LUNG_MM:g} mm of the {side} lung, from "
                             f"{HILAR_PROXY_ANTERIOR_MM:g} mm in front of to {HILAR_PROXY_POSTERIOR_MM:g} mm "
                             "behind the carina")
        hil[side] = (((ctx.med | root) & (d_core <= HILAR_CORE_MM)) | (lungs & (d_bron <= HILAR_LUNG_MM))
                     | proxy) & ctx.below
    return hil


def _right_paratracheal_and_hilar(ctx: _Ctx, zone: np.ndarray, lateral: np.ndarray, x_rmed: np.ndarray,
                                  d_air: np.ndarray, hil: np.ndarray) -> None:
    """2R above the left brachiocephalic vein crossing, 4R down to the azygos arch, 10R below."""
    w, z = ctx.w, ctx.z
    Z, X = w.Z, w.X
    med, above = ctx.med, ctx.above
    if ctx.have("bcv_crossing") and ctx.s1_floor is not None:
        ctx.put(med & zone & above & (Z > z["bcv_crossing"]), "2R")
    if ctx.have("bcv_crossing", "azygos_lower"):
        upper = (Z <= z["bcv_crossing"]) & (Z >= z["azygos_lower"])
        ctx.put(med & zone & above & upper, "4R")
        ctx.put(med & lateral & upper & (d_air <= HILAR_CORE_MM), "4R")
    if ctx.have("azygos_lower", "ipv_right"):
        zone10 = (Z < z["azygos_lower"]) & (Z >= z["ipv_right"])
        ctx.put(med & zone & above & zone10, "10R")
        ctx.put(hil & (X < x_rmed) & ctx.below & zone10, "10R")


def _left_paratracheal_aortic_and_hilar(ctx: _Ctx, zone: np.ndarray, x_lmed: np.ndarray, d_air: np.ndarray,
                                        hil: np.ndarray) -> None:
    """2L above the arch; 4L next to the airway, 6 / 5 beside it (ligamentum proxy); 10L below the PA."""
    w, z = ctx.w, ctx.z
    Z, X = w.Z, w.X
    med, above = ctx.med, ctx.above
    if ctx.have("arch_top") and ctx.s1_floor is not None:
        ctx.put(med & zone & above & (Z > z["arch_top"]), "2L")
    if ctx.have("arch_top", "arch_bottom"):
        lv_arch = (Z <= z["arch_top"]) & (Z >= z["arch_bottom"])
        ctx.put(med & zone & lv_arch & (d_air <= PARATRACHEAL_LEFT_MM), "4L")
        ctx.put(med & zone & lv_arch, "6")
    if ctx.have("arch_bottom", "pa_top"):
        ap = (Z < z["arch_bottom"]) & ((Z >= z["pa_top"]) | (above & (Z >= _left_pa_surface(ctx)[None])))
        ctx.put(med & zone & ap & (d_air <= PARATRACHEAL_LEFT_MM), "4L")
        ctx.put(med & zone & ap, "5")
    if ctx.have("pa_top", "ipv_left"):
        zone10 = (Z < z["pa_top"]) & (Z >= z["ipv_left"])
        ctx.put(med & zone & above & zone10, "10L")
        ctx.put(hil & (X > x_lmed) & ctx.below & zone10, "10L")


def _left_pa_surface(ctx: _Ctx) -> np.ndarray:
    """Per (y, x) column left of the carina: z (mm) of the upper surface of the left pulmonary artery
    (label, else the heart label that carries it); +inf (no extension) where no PA lies under the column
    in front of the PA's highest point.

    The AP window (5, and 4L medially) lies above the left PA; `pa_top` is the PA's highest point,
    but the PA arches, so in front of that point the window reaches down to the PA's own
    surface. Behind it the PA runs back over the left main bronchus: hilar (10L), not the
    window. The carina stays the window's floor (``above``).
    """
    w, aw = ctx.w, ctx.aw
    pa = w.mask(an.PULMONARY_ARTERY)
    if not pa.any():
        pa = w.mask("heart")
    pa = pa & (w.X > aw.x_c)
    if not pa.any():
        return np.full(pa.shape[1:], np.inf)
    has = pa.any(axis=0)
    top_k = len(w.z) - 1 - np.argmax(pa[::-1], axis=0)  # the highest PA slice of each column
    edge = w.z[top_k] + w.sp / 2
    k_top = int(top_k[has].max())
    y_top = float(w.y[np.nonzero(pa[k_top])[0]].mean())  # the front/back split at the PA's highest point
    in_front = (w.y <= y_top)[:, None]
    return np.where(has & in_front, edge, np.inf)


def _central_stations(ctx: _Ctx, eso: _Esophagus | None) -> None:
    """7, then the right (2R, 4R, 10R) and left (2L, 4L, 5, 6, 10L) paratracheal, aortic and hilar stations."""
    if not ctx.has_carina:
        return
    w, aw, z = ctx.w, ctx.aw, ctx.z
    Y, X = w.Y, w.X
    _, xl, _, _, yp = ctx.trachea()
    x_rmed, x_lmed = _subcarinal_column(ctx)
    _station7(ctx, eso, x_rmed, x_lmed)
    right_lat = ctx.below & (X < x_rmed)
    left_lat = ctx.below & (X > x_lmed)
    right_zone = ((ctx.above & (X <= xl)) | right_lat) & (Y <= yp + RIGHT_POSTERIOR_MM)
    left_zone = ((ctx.above & (X > xl)) | left_lat) & (Y <= yp + LEFT_POSTERIOR_MM)
    d_air = dist_inplane(w, aw.mask, w.k_of(min(z["carina"], z.get("pa_top", z["carina"])) - 10.0))
    hil = _hilar_zones(ctx)
    _right_paratracheal_and_hilar(ctx, right_zone, right_lat, x_rmed, d_air, hil["right"])
    _left_paratracheal_aortic_and_hilar(ctx, left_zone, x_lmed, d_air, hil["left"])


# ----------------------------------------------------------------------------------------
# Lower mediastinum and lungs
# ----------------------------------------------------------------------------------------

def _ligament_and_paraesophageal(ctx: _Ctx, eso: _Esophagus | None) -> None:
    """9 next to the lung from the inferior pulmonary vein down; then 8 around the esophagus."""
    if eso is None:
        return
    w, aw, z = ctx.w, ctx.aw, ctx.z
    Z, Y, X = w.Z, w.Y, w.X
    band = ((Y >= eso.cy - LIGAMENT_ANTERIOR_MM) & (Y <= eso.cy + LIGAMENT_POSTERIOR_MM)
            & (np.abs(X - eso.cx) <= LIGAMENT_LATERAL_MM))
    for side in ("right", "left"):
        st8, st9 = ("8R", "9R") if side == "right" else ("8L", "9L")
        this_side = (X < eso.cx) if side == "right" else (X >= eso.cx)
        d_lung = eso.d_lung_r if side == "right" else eso.d_lung_l
        if ctx.have(f"ipv_{side}", f"lung_base_{side}"):
            zone9 = (Z <= z[f"ipv_{side}"]) & (Z >= z[f"lung_base_{side}"])
            nearer = (d_lung < eso.d_wall) if eso.present else True
            ctx.put(ctx.med & this_side & zone9 & band & (d_lung <= LIGAMENT_MM) & nearer, st9)
        zn = _zone8(ctx, eso, side)
        if zn is None:
            continue
        if eso.present:
            near = eso.d_wall <= PARAESOPHAGEAL_MM
        elif ctx.has_carina:
            side_x = aw.x_c
            near = (Y >= aw.y_c - 10.0) & (np.abs(X - side_x) <= PARAESOPHAGEAL_PROXY_MM)
        else:
            near = np.zeros(w.arr.shape, dtype=bool)
        ctx.put(zn & near, st8)


def _hilum_distance(ctx: _Ctx) -> np.ndarray:
    """3D distance (mm) from the hilum (station 10 and the bronchi), up to SEGMENTAL_MM; inf beyond."""
    w, S = ctx.w, ctx.S
    hilum = (S == STATION_VALUES["10R"]) | (S == STATION_VALUES["10L"])
    if ctx.has_carina:
        hilum |= ctx.aw.right | ctx.aw.left
    d_hil = np.full(w.arr.shape, np.inf, dtype=np.float32)
    if not hilum.any():
        ctx.notes.append("proxy: no hilum in the field of view; all intrapulmonary space is reported as station 14 "
                         "(11-14 cannot be told apart without the hilum; all are ipsilateral N1)")
        return d_hil
    pad = int(math.ceil(SEGMENTAL_MM / w.sp)) + 1
    kk, jj, ii = np.nonzero(hilum)
    box = tuple(slice(max(a.min() - pad, 0), min(a.max() + pad + 1, n)) for a, n in zip((kk, jj, ii), hilum.shape))
    d_hil[box] = ndi.distance_transform_edt(~hilum[box], sampling=(w.sp, w.sp, w.sp))
    ctx.notes.append("proxy: intrapulmonary stations 11-14 by distance from the hilum (station 10 and the "
                     f"bronchi): 11 within {INTERLOBAR_MM:g} mm of another lobe and {INTERLOBAR_HILUM_MM:g} mm of "
                     f"the hilum, 12 within {LOBAR_MM:g} mm, 13 within {SEGMENTAL_MM:g} mm, 14 beyond")
    return d_hil


def _near_other_lobe(w: Work, names: tuple[str, ...]) -> np.ndarray | None:
    """Lung voxels within INTERLOBAR_MM of another lobe (None with fewer than two lobes)."""
    lobe_vals = [w.values[n] for n in names if n in w.values]
    if len(lobe_vals) < 2:
        return None
    lobe_id = np.zeros(w.arr.shape, dtype=np.int16)
    for i, v in enumerate(lobe_vals, start=1):
        lobe_id[w.arr == v] = i
    size = 2 * max(1, int(round(INTERLOBAR_MM / w.sp))) + 1
    hi = ndi.maximum_filter(lobe_id, size=size)
    lo = ndi.minimum_filter(np.where(lobe_id > 0, lobe_id, 99).astype(np.int16), size=size)
    return (lobe_id > 0) & ((hi != lobe_id) | ((lo != lobe_id) & (lo != 99)))


def _intrapulmonary(ctx: _Ctx) -> None:
    """11-14: the rest of each lung (and free pockets it encloses), by distance from the hilum."""
    w = ctx.w
    d_hil = _hilum_distance(ctx)
    has_hilum = bool(np.isfinite(d_hil).any())
    for side, lungs, names in (("R", ctx.lung_r, an.RIGHT_LUNG_LOBES), ("L", ctx.lung_l, an.LEFT_LUNG_LOBES)):
        if not lungs.any():
            continue
        pockets = np.zeros_like(lungs)
        for k in np.nonzero(lungs.any(axis=(1, 2)))[0]:
            pockets[k] = ndi.binary_fill_holes(lungs[k]) & ~lungs[k]
        inside = lungs | (pockets & ctx.free)
        near_other = _near_other_lobe(w, names) if has_hilum else None
        if near_other is not None:
            ctx.put(lungs & near_other & (d_hil <= INTERLOBAR_HILUM_MM), f"11{side}")
        ctx.put(inside & (d_hil <= LOBAR_MM), f"12{side}")
        ctx.put(inside & (d_hil <= SEGMENTAL_MM), f"13{side}")
        ctx.put(inside, f"14{side}")


# ----------------------------------------------------------------------------------------
# The builder
# ----------------------------------------------------------------------------------------

def build_regions(w: Work, lv: Levels, aw: Airway, lung_r: np.ndarray, lung_l: np.ndarray,
                  notes: list[str]) -> np.ndarray:
    """The station label array on the working grid (0 = no station)."""
    ctx = _context(w, lv, aw, lung_r, lung_l, notes)
    _station1(ctx)
    _vertical_zones(ctx)
    _retrotracheal_and_prevascular(ctx)
    eso = _esophagus(ctx)
    _paraesophageal_near(ctx, eso)
    _central_stations(ctx, eso)
    _ligament_and_paraesophageal(ctx, eso)
    _intrapulmonary(ctx)
    return ctx.S
