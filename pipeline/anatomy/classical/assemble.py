"""The classical backend's entry points: the whole anatomy, or only body and airways for other backends."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

from pipeline.anatomy import names as an
from pipeline.anatomy.classical.aorta import find_aorta
from pipeline.anatomy.classical.body_airways import (
    AIRWAY_LUMEN_HU,
    AIRWAY_NAMES,
    find_body,
    find_cricoid,
    find_interior,
    find_trachea_seed,
    grow_airway,
    larynx_pharynx_air,
    refine_lumen,
    split_airway_tree,
)
from pipeline.anatomy.classical.bones import (
    find_canal,
    find_clavicles,
    find_ribs,
    find_spine,
    find_sternum,
    refine_bone_edges,
)
from pipeline.anatomy.classical.esophagus import find_esophagus
from pipeline.anatomy.classical.grid import (
    LUNG_HU,
    Prepared,
    Work,
    index_to_lps,
    largest,
    prepare,
    to_canonical_mask,
    to_ct_grid,
)
from pipeline.anatomy.classical.heart_vessels import find_great_veins_and_pa, find_heart
from pipeline.anatomy.classical.liver import find_liver, subphrenic_marker
from pipeline.anatomy.classical.lungs import find_lung_air, find_lungs, lung_apex
from pipeline.anatomy.model import Anatomy, AnatomyError, labels_image
from pipeline.anatomy.names import (
    CARINA,
    CRICOID,
    LUNG_APEX_LEFT,
    LUNG_APEX_RIGHT,
    OWN_LABELS,
    SPINE,
    TS_TOTAL_LABELS,
)

log = logging.getLogger(__name__)

VERSION = "classical-2.0"

# Label values (shared numbering, see pipeline.anatomy).
LABELS: dict[str, int] = {**TS_TOTAL_LABELS, **OWN_LABELS}

# Thresholds (HU) and sizes (mm, ml).


def classical_airways_and_body(
    ct: sitk.Image, airway_hint: np.ndarray | None = None, trachea_hint: np.ndarray | None = None
) -> tuple[dict[str, np.ndarray], dict[str, tuple[float, float, float]], list[str]]:
    """Body, trachea, main bronchi, bronchus intermedius, the air of larynx and pharynx (masks on
    the CT grid), and the carina and cricoid landmarks.

    For other backends (TotalSegmentator has no body, bronchi, carina or cricoid).
    airway_hint: an airway lumen mask on the CT grid (e.g. TotalSegmentator's
    lung_vessels airways), used instead of region growing; trachea_hint (e.g.
    TotalSegmentator's trachea) is added to it.
    """
    p = prepare(ct)
    w = p.w
    body = find_body(w)
    f = _Found(body=body, air=(w.hu < LUNG_HU) & body, lung_air=np.zeros(body.shape, bool))
    try:
        if airway_hint is not None and airway_hint.any():
            hint = airway_hint | trachea_hint if trachea_hint is not None else airway_hint
            airway = largest(to_canonical_mask(p, hint, ct), structure=np.ones((3, 3, 3), bool))
            f.air |= airway
            _split_airways(w, f, airway)
        else:
            inside = find_interior(w, body)
            f.air = (w.hu < LUNG_HU) & inside
            f.lung_air = find_lung_air(w, inside)
            _find_airways(w, f)
    except AnatomyError as e:
        w.notes.append(f"airways not found: {e}")
    lab = np.zeros(w.hu.shape, np.uint8)
    lab[body] = LABELS[an.BODY]
    names = [n for n in (an.LARYNX_PHARYNX_AIR, *AIRWAY_NAMES) if n in f.airways]
    for name in names:
        lab[f.airways[name]] = LABELS[name]
    full = to_ct_grid(p, lab, ct, refine={LABELS[n]: AIRWAY_LUMEN_HU for n in AIRWAY_NAMES})
    masks = {n: full == LABELS[n] for n in names}
    masks[an.BODY] = full > 0
    return masks, _airway_landmarks(p, f), list(w.notes)


@dataclass
class _Found:
    """What the steps of `segment_classical` have found so far (working-grid masks)."""

    body: np.ndarray
    air: np.ndarray
    lung_air: np.ndarray
    airways: dict[str, np.ndarray] = field(default_factory=dict)
    carina_idx: np.ndarray | None = None
    cricoid_z: int | None = None
    airway_threshold: float | None = None
    lung_l: np.ndarray | None = None
    lung_r: np.ndarray | None = None
    canal: np.ndarray | None = None
    organs: dict[str, np.ndarray] = field(default_factory=dict)  # name -> mask

    @property
    def lungs(self) -> np.ndarray:
        return self.lung_l | self.lung_r

    def taken(self, *names: str) -> np.ndarray:
        """Lungs, named airways and the named organs, as one mask."""
        out = self.lungs.copy()
        for m in self.airways.values():
            out |= m
        for n in names:
            if self.organs.get(n) is not None:
                out |= self.organs[n]
        return out


def _find_airways(w: Work, f: _Found) -> None:
    """Trachea, main bronchi, bronchus intermedius, carina, cricoid and the air of larynx and pharynx."""
    try:
        seed_z, seed = find_trachea_seed(w, f.air, f.body, f.lung_air)
        airway, f.airway_threshold = grow_airway(w, f.air, f.lung_air, seed_z, seed)
        _split_airways(w, f, airway)
    except AnatomyError as e:  # e.g. a scan that starts below the carina
        w.notes.append(f"airways not found: {e}")


def _split_airways(w: Work, f: _Found, airway: np.ndarray) -> None:
    """The airway lumen split into its named parts; the trachea cut at the cricoid, the air above it apart."""
    parts, f.carina_idx = split_airway_tree(w, airway)
    parts = refine_lumen(w, parts, f.air)
    trachea = parts.get(an.TRACHEA)
    if f.carina_idx is not None and trachea is not None and trachea.any():
        f.cricoid_z = find_cricoid(w, trachea, f.carina_idx)
        if f.cricoid_z is None:
            w.notes.append("cricoid: not found (the scan starts below it, or the airway keeps the trachea's calibre)")
            top = int(np.nonzero(trachea.any(axis=(1, 2)))[0].max())
        else:
            top = f.cricoid_z
            trachea[top + 1 :] = False
            # a trachea longer than the tree split's cut reaches up to the cricoid
            t_top = int(np.nonzero(trachea.any(axis=(1, 2)))[0].max())
            trachea[t_top + 1 : top + 1] |= airway[t_top + 1 : top + 1]
        upper = larynx_pharynx_air(f.air, airway, top)
        if upper.any():
            parts[an.LARYNX_PHARYNX_AIR] = upper
            w.notes.append(f"larynx and pharynx: {w.ml(upper.sum()):.0f} ml of air above the trachea")
    f.airways = parts


def _find_lungs(w: Work, f: _Found) -> None:
    named = np.zeros(f.air.shape, bool)
    for m in f.airways.values():
        named |= m
    f.lung_l, f.lung_r = find_lungs(w, f.lung_air, named)


def _find_bones(w: Work, f: _Found) -> None:
    """Spine, clavicles, sternum and ribs (the aorta first, since contrast in it is as dense as bone)."""
    spine = find_spine(w, f.body, f.canal, f.organs.get(an.AORTA))
    if spine is None:
        w.notes.append("spine: not found")
        spine = np.zeros(f.body.shape, bool)
    f.organs[SPINE] = spine
    clav, heads = find_clavicles(w, f.body, f.lungs, f.canal, spine)
    f.organs.update(clav)
    # the manubrium's top (the jugular notch) lies a little below the top of the clavicles' medial ends
    z_max = max(heads) - int(round(MANUBRIUM_BELOW_CLAVICLE_HEADS_MM / w.sp[0])) if heads else None
    sternum = find_sternum(w, f.body, f.lungs, f.canal, f.organs.get(an.AORTA), z_max)
    if sternum is None:
        w.notes.append("sternum: not found")
    else:
        f.organs[an.STERNUM] = sternum
    exclude = np.zeros(f.body.shape, bool)
    for n in (SPINE, an.STERNUM, an.CLAVICULA_LEFT, an.CLAVICULA_RIGHT, an.AORTA):
        if f.organs.get(n) is not None:
            exclude |= f.organs[n]
    ribs = find_ribs(w, f.body, f.lungs, exclude)
    if ribs is None:
        w.notes.append("ribs: not found")
    else:
        f.organs[an.RIBS] = ribs


def _find_soft_tissue(w: Work, f: _Found, tick) -> None:
    """Heart and liver (split from each other at the diaphragm), then the esophagus."""
    taken = f.taken(an.AORTA, SPINE, an.STERNUM)
    bones = f.taken(an.AORTA, SPINE, an.STERNUM, an.RIBS, an.CLAVICULA_LEFT, an.CLAVICULA_RIGHT)
    mid = float(np.median(f.canal[:, 1])) if f.canal is not None else None
    right = subphrenic_marker(w, f.lung_r, f.body, bones, mid)
    left = subphrenic_marker(w, f.lung_l, f.body, bones, mid)
    subphrenic = [m for m in (right, left) if m is not None]
    heart = find_heart(w, f.body, f.lung_l, f.lung_r, taken, f.carina_idx, f.organs.get(an.STERNUM),
                       subphrenic=subphrenic, airways=f.airways)
    tick("heart")
    if heart is not None:
        f.organs[an.HEART] = heart
    liver = find_liver(w, f.body, bones, right[0] if right else None, [heart, left[0] if left else None], f.canal)
    tick("liver")
    if liver is not None:
        f.organs[an.LIVER] = liver
    vessels = find_great_veins_and_pa(w, f.body, f.taken(SPINE, an.STERNUM, an.RIBS, an.CLAVICULA_LEFT,
                                                          an.CLAVICULA_RIGHT, an.HEART),
                                      f.canal, f.carina_idx, f.organs.get(an.AORTA), f.airways)
    f.organs.update(vessels)
    tick("vessels")
    eso = find_esophagus(w, f.lungs, f.airways, {"spine": f.organs.get(SPINE), "all": f.taken(
        an.AORTA, SPINE, an.STERNUM, an.HEART, an.LIVER, an.RIBS)}, f.carina_idx, z_top=f.cricoid_z, canal=f.canal)
    if eso is not None:
        f.organs[an.ESOPHAGUS] = eso
    tick("esophagus")


# label order: a later label overwrites an earlier one where masks overlap
_PAINT_ORDER = (an.LUNG_LEFT, an.LUNG_RIGHT, an.LIVER, an.HEART, an.SUPERIOR_VENA_CAVA,
                an.BRACHIOCEPHALIC_VEIN_RIGHT, an.PULMONARY_ARTERY, an.ESOPHAGUS, an.AORTA, SPINE, an.RIBS,
                an.STERNUM, an.CLAVICULA_LEFT, an.CLAVICULA_RIGHT, an.LARYNX_PHARYNX_AIR, *AIRWAY_NAMES)


MANUBRIUM_BELOW_CLAVICLE_HEADS_MM = 5.0
_BONE_NAMES = (SPINE, an.RIBS, an.STERNUM, an.CLAVICULA_LEFT, an.CLAVICULA_RIGHT)


def _airway_landmarks(p: Prepared, f: _Found) -> dict[str, tuple[float, float, float]]:
    out = {}
    if f.carina_idx is not None:
        out[CARINA] = index_to_lps(p, f.carina_idx)
    if f.cricoid_z is not None:
        y, x = np.argwhere(f.airways[an.TRACHEA][f.cricoid_z]).mean(axis=0)
        out[CRICOID] = index_to_lps(p, np.array([f.cricoid_z + 0.5, y, x]))  # the slice's upper edge
    return out


def _landmarks(p: Prepared, w: Work, f: _Found) -> dict[str, tuple[float, float, float]]:
    out = _airway_landmarks(p, f)
    for name, lung in ((LUNG_APEX_LEFT, f.lung_l), (LUNG_APEX_RIGHT, f.lung_r)):
        apex = lung_apex(w, lung)
        if apex is not None:
            out[name] = index_to_lps(p, np.array([apex[0] + 0.5, apex[1], apex[2]]))
    return out


def segment_classical(ct: sitk.Image) -> Anatomy:
    """Segment the chest CT `ct` (HU) with the classical backend."""
    t0 = time.perf_counter()
    p = prepare(ct)
    w = p.w
    timings: dict[str, float] = {}

    def tick(name):
        timings[name] = round(time.perf_counter() - t0, 2)

    tick("prepare")
    body = find_body(w)
    inside = find_interior(w, body)
    f = _Found(body=body, air=(w.hu < LUNG_HU) & inside, lung_air=find_lung_air(w, inside))
    tick("body_air")
    _find_airways(w, f)
    tick("airways")
    _find_lungs(w, f)
    tick("lungs")
    f.canal = find_canal(w, body, f.lungs)
    aorta = find_aorta(w, body, f.lungs, f.taken(), f.canal, f.carina_idx)
    if aorta is not None:
        f.organs[an.AORTA] = aorta
    tick("aorta")
    _find_bones(w, f)
    tick("bones")
    _find_soft_tissue(w, f, tick)

    lab = np.zeros(w.hu.shape, np.uint8)
    lab[body] = LABELS[an.BODY]
    names = {an.BODY: LABELS[an.BODY]}
    masks = {an.LUNG_LEFT: f.lung_l, an.LUNG_RIGHT: f.lung_r, **f.organs, **f.airways}
    for name in _PAINT_ORDER:
        m = masks.get(name)
        if m is not None and m.any():
            lab[m] = LABELS[name]
            names[name] = LABELS[name]
    full = to_ct_grid(p, lab, ct, refine={LABELS[n]: AIRWAY_LUMEN_HU for n in AIRWAY_NAMES if n in names})
    bone_values = [LABELS[n] for n in _BONE_NAMES if n in names]
    if bone_values:
        refine_bone_edges(full, sitk.GetArrayViewFromImage(ct), bone_values, LABELS[an.BODY],
                          rim_vox=max(w.factors[1:]))
    tick("bone_edges")
    names = {n: v for n, v in names.items() if n == an.BODY or (full == v).any()}
    labels = labels_image(full, ct)
    tick("total")

    settings = {
        "working_spacing_mm": [float(s) for s in w.sp[::-1]],
        "airway_threshold_hu": f.airway_threshold,
        "notes": list(w.notes),
        "timings_s": timings,
    }
    log.info("classical anatomy in %.1f s: %s", timings["total"], ", ".join(sorted(names)))
    return Anatomy(labels=labels, names=names, backend="classical", version=VERSION, settings=settings,
                   landmarks=_landmarks(p, w, f))
