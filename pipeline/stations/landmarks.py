"""Landmark levels of the IASLC map, read from the labels or from named proxies."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from pipeline.anatomy import names as an
from pipeline.stations.constants import (
    AIRWAY_NAMES, ARCH_PART_MIN_MM2, BI_BELOW_CARINA_MM, DIAPHRAGM, LLB_BELOW_CARINA_MM, MIN_COMPONENT_MM2,
    MIN_LUMEN_SEPARATION_MM, PA_ABOVE_CARINA_MM, PA_ABOVE_VEINS_MM, PA_PROXY_BELOW_CARINA_MM, STATION7_MAX_MM,
    STATION7_MIN_MM,
)
from pipeline.stations.grid import EIGHT, Work, components, fill_nan
from pipeline.stations.model import Landmark

logger = logging.getLogger(__name__)


class Levels:
    """Landmark levels (z mm) found so far, the reasons for those missing, and their records."""

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
class Airway:
    """The airway geometry the rules use: carina, per-slice tracheal walls above it, bronchi below it."""

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


def find_carina(w: Work, lv: Levels) -> Airway:
    """The carina (lowest single-lumen level), the trachea's walls above it and the bronchi below it."""
    aw = Airway()
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
            comps_by_k[k] = components(airway[k], min_vox)
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

    _trace_trachea(w, aw, comps, k_ref, k_top, z_car)
    _split_bronchi(w, aw, k_ref)
    return aw


def _trace_trachea(w: Work, aw: Airway, comps, k_ref: int, k_top: int, z_car: float) -> None:
    """Per-slice tracheal centre and walls above the carina (largest component), extrapolated along z."""
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
    aw.cx, aw.cy, aw.xl, aw.xr, aw.ya, aw.yp = (fill_nan(a) for a in (cx, cy, xl, xr, ya, yp))


def _split_bronchi(w: Work, aw: Airway, k_ref: int) -> None:
    """Bronchi below the carina: airway components by their label, else right / left of the carina."""
    airway = aw.mask
    right = np.zeros_like(airway)
    left = np.zeros_like(airway)
    right_names = w.mask(an.MAIN_BRONCHUS_RIGHT, an.BRONCHUS_INTERMEDIUS)
    left_names = w.mask(an.MAIN_BRONCHUS_LEFT)
    for k in range(0, k_ref):
        if not airway[k].any():
            continue
        lab, n = ndi.label(airway[k], structure=EIGHT)
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


def find_arch(w: Work, lv: Levels, aw: Airway) -> None:
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
        c = components(aorta[k], min_vox)
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


def find_bcv_crossing(w: Work, lv: Levels, aw: Airway) -> None:
    if aw.k_carina is None:
        lv.miss("bcv_crossing", "needs the trachea (carina not found)")
        return
    bcv = w.mask("brachiocephalic_vein_left")
    if bcv.any():
        within = bcv & (w.X >= aw.xr[:, None, None]) & (w.X <= aw.xl[:, None, None])
        if within.any():
            set_at_caudal_margin(w, lv, "bcv_crossing", within,
                                  "label:brachiocephalic_vein_left (caudal margin where it crosses in front of "
                                  "the trachea)")
            return
    z_arch = lv.get("arch_top")
    if z_arch is not None:
        why = ("the left brachiocephalic vein label does not cross the trachea" if bcv.any()
               else "no left brachiocephalic vein label")
        lv.set("bcv_crossing", z_arch, f"proxy: upper border of the aortic arch ({why})")
        return
    lv.miss("bcv_crossing", "no left brachiocephalic vein crossing the trachea and no aortic arch to stand in for it")


def set_at_caudal_margin(w: Work, lv: Levels, name: str, mask: np.ndarray, source: str) -> None:
    """Level `name` at the caudal margin of `mask` (below its lowest slice), centred on that slice's voxels."""
    kk, jj, ii = np.nonzero(mask)
    k = int(kk.min())
    sel = kk == k
    lv.set(name, w.z[k] - w.sp / 2, source, w.x[ii[sel]].mean(), w.y[jj[sel]].mean())


def find_azygos(w: Work, lv: Levels, aw: Airway) -> None:
    z_car = lv.get("carina")
    if z_car is None:
        lv.miss("azygos_lower", "needs the carina")
        return
    az = w.mask(an.AZYGOS_VEIN)
    if az.any():
        yp_c = float(aw.yp[aw.k_carina])
        arch = az & (w.Y < yp_c)
        if arch.any():
            set_at_caudal_margin(w, lv, "azygos_lower", arch, "label:azygos_vein (lower border of the azygos arch, "
                                  "the part in front of the posterior tracheal wall)")
            return
    lv.set("azygos_lower", z_car,
           "proxy: carina level (no azygos arch labelled; the arch lies at the right tracheobronchial angle)")


_Level = tuple[float, str, float | None, float | None]  # z, source, x, y


def _top_of(w: Work, mask: np.ndarray) -> tuple[float, float, float]:
    """Upper edge z of a mask and the x/y centre of its top slice."""
    kk, jj, ii = np.nonzero(mask)
    k = int(kk.max())
    sel = kk == k
    return w.z[k] + w.sp / 2, w.x[ii[sel]].mean(), w.y[jj[sel]].mean()


def _pa_from_label(w: Work, aw: Airway, z_car: float | None) -> _Level | None:
    pa = w.mask(an.PULMONARY_ARTERY)
    if not pa.any():
        return None
    left = pa & (w.X > aw.x_c) if z_car is not None else pa
    z, x, y = _top_of(w, left if left.any() else pa)
    return z, "label:pulmonary_artery (upper rim, left of the carina)", x, y


def _pa_from_heart(w: Work, z_car: float | None) -> tuple[_Level | None, str]:
    """The heart's top as the pulmonary trunk (TotalSegmentator), unless it ends well below the carina."""
    if not w.has("heart"):
        return None, ""
    z, x, y = _top_of(w, w.mask("heart"))
    if z_car is not None and z < z_car - PA_PROXY_BELOW_CARINA_MM:
        return None, (f"; the heart label ends {z_car - z:.0f} mm below the carina, so it does not show "
                      "the pulmonary trunk")
    return (z, "proxy: top of the heart label (TotalSegmentator's heart includes the pulmonary trunk and left "
               "pulmonary artery; no pulmonary artery label)", x, y), ""


def _pa_from_veins_or_carina(w: Work, z_car: float | None, heart_note: str) -> _Level | None:
    if w.has("pulmonary_vein"):
        kk = np.nonzero(w.mask("pulmonary_vein").any(axis=(1, 2)))[0]
        return (w.z[int(kk.max())] + w.sp / 2 + PA_ABOVE_VEINS_MM,
                f"proxy: {PA_ABOVE_VEINS_MM:g} mm above the top of the pulmonary veins (no pulmonary artery or "
                f"heart label{heart_note})", None, None)
    if z_car is not None:
        return (z_car + PA_ABOVE_CARINA_MM, f"proxy: {PA_ABOVE_CARINA_MM:g} mm above the carina (no pulmonary "
                f"artery, heart or pulmonary vein label{heart_note})", None, None)
    return None


def find_pa(w: Work, lv: Levels, aw: Airway) -> None:
    """Upper rim of the left pulmonary artery (4L/5 lower border, 10L upper border): label, else proxies."""
    z_car = lv.get("carina")
    found = _pa_from_label(w, aw, z_car)
    heart_note = ""
    if found is None:
        found, heart_note = _pa_from_heart(w, z_car)
    if found is None:
        found = _pa_from_veins_or_carina(w, z_car, heart_note)
    if found is None:
        lv.miss("pa_top", "no pulmonary artery, heart or pulmonary vein label and no carina")
        return
    z, src, x, y = found
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


def label_bottom(w: Work, name: str) -> tuple[float, float, float] | None:
    m = w.mask(name)
    if not m.any():
        return None
    kk, jj, ii = np.nonzero(m)
    k = int(kk.min())
    sel = kk == k
    return w.z[k] - w.sp / 2, w.x[ii[sel]].mean(), w.y[jj[sel]].mean()


def find_station7_lower(w: Work, lv: Levels) -> None:
    z_car = lv.get("carina")
    # Right: lower border of the bronchus intermedius.
    bi = label_bottom(w, an.BRONCHUS_INTERMEDIUS)
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
    lmb = label_bottom(w, an.MAIN_BRONCHUS_LEFT)
    if lmb is not None and not w.at_bottom(lmb[0]):
        lv.set("station7_lower_left", lmb[0],
               "label:main_bronchus_left (lower end = upper border of the left lower lobe bronchus)", lmb[1], lmb[2])
    elif z_car is None:
        lv.miss("station7_lower_left", "no left main bronchus label and no carina")
    else:
        lv.set("station7_lower_left", z_car - LLB_BELOW_CARINA_MM,
               f"proxy: {LLB_BELOW_CARINA_MM:g} mm below the carina (upper border of the left lower lobe "
               "bronchus; no left main bronchus label)")


def find_inferior_pulmonary_veins(w: Work, lv: Levels, aw: Airway) -> None:
    """Lowest pulmonary vein per side (upper border of station 9); proxy: station 7's lower border."""
    pv = w.mask("pulmonary_vein")
    x_mid = aw.x_c if aw.k_carina is not None else None
    if pv.any() and x_mid is None:
        x_mid = float(np.median(w.x[np.nonzero(pv.any(axis=(0, 1)))[0]]))
    for side in ("right", "left"):
        key = f"ipv_{side}"
        part = (pv & ((w.X < x_mid) if side == "right" else (w.X >= x_mid))) if pv.any() else None
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


def find_lung_extent(w: Work, lv: Levels, lung_r: np.ndarray, lung_l: np.ndarray) -> None:
    """Apex and base of each lung (the bases bound 8 and 9 where no abdominal organ marks the diaphragm)."""
    for side, lung in (("right", lung_r), ("left", lung_l)):
        if not lung.any():
            lv.miss(f"lung_base_{side}", f"no {side} lung label")
            lv.miss(f"lung_apex_{side}", f"no {side} lung label")
            continue
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


def record_diaphragm_domes(w: Work, lv: Levels, aw: Airway) -> None:
    """Reference levels of the diaphragm domes (the rule itself uses the organs' surface, see regions)."""
    x_mid = aw.x_c if aw.k_carina is not None else 0.0
    if w.has(DIAPHRAGM):
        d = w.mask(DIAPHRAGM)
        for side, sel in (("right", w.X < x_mid), ("left", w.X >= x_mid)):
            part = d & sel
            if part.any():
                k = int(np.nonzero(part.any(axis=(1, 2)))[0].max())
                lv.record(f"diaphragm_dome_{side}", w.z[k] + w.sp / 2, "label:diaphragm (top)")
    if w.has("liver"):
        k = int(np.nonzero(w.mask("liver").any(axis=(1, 2)))[0].max())
        if not w.at_top(w.z[k] + w.sp / 2):
            lv.record("diaphragm_dome_right_liver", w.z[k] + w.sp / 2, "label:liver (dome, top of the liver)")


def find_manubrium(w: Work, lv: Levels) -> None:
    """Upper border of the manubrium (station 1/2 border in the midline); clavicles recorded for reference."""
    clav_z = []
    for side, name in (("right", "clavicula_right"), ("left", "clavicula_left")):
        m = w.mask(name)
        if not m.any():
            continue
        kk, jj, ii = np.nonzero(m)
        xs = w.x[ii]
        medial = (xs >= xs.max() - 15.0) if side == "right" else (xs <= xs.min() + 15.0)
        zc = float(w.z[kk[medial]].mean())
        lv.set(f"clavicle_{side}", zc, f"label:{name} (sternal end, mean level)",
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


def find_cricoid(w: Work, lv: Levels, cricoid_point: tuple[float, float, float] | None) -> None:
    """Lower margin of the cricoid (upper border of station 1).

    From the anatomy's ``cricoid`` landmark when it has one; else the top of the
    trachea label (the trachea begins at the cricoid); where either lies at or
    above the top of the scan, the scan starts below the cricoid and station 1
    starts at the top of the field of view.
    """
    if cricoid_point is not None:
        z = float(cricoid_point[2])
        if z < w.fov_top:
            lv.set("cricoid_lower", z, "label:cricoid (anatomy landmark, lower margin of the cricoid)",
                   cricoid_point[0], cricoid_point[1])
            return
    trachea = w.mask("trachea")
    if trachea.any():
        k = int(np.nonzero(trachea.any(axis=(1, 2)))[0].max())
        z = float(w.z[k] + w.sp / 2)
        if not w.at_top(z):
            lv.set("cricoid_lower", z, "proxy: top of the trachea label (the trachea begins at the cricoid; "
                   "no cricoid landmark)")
            return
    lv.set("cricoid_lower", w.fov_top, "field of view: top of the scan (the scan starts below the cricoid)")


# Landmarks each station needs; a station missing one is not assessable.
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
