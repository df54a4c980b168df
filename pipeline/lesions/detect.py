"""The lesion stage: references, candidates, measurement, naming and reading, as `run_study` calls it."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from pydicom.uid import generate_uid
from scipy import ndimage

from pipeline.anatomy import Anatomy
from pipeline.lesions import candidates as cand
from pipeline.lesions import classify, physiologic, reading
from pipeline.lesions.enlarged import enlarged_ct_candidates
from pipeline.lesions.geometry import an, crop, physical, spacing_zyx, union_mask, voxel_ml
from pipeline.lesions.measure import node_soft_tissue, pet_grid_max, short_axis_mm, suv_peak
from pipeline.lesions.references import (ReferenceRegion, blood_pool_region, liver_region, pet_voxel_ml,
                                         reference_warnings)
from pipeline.settings import PipelineSettings
from pipeline.study_result import Lesion, LesionKind, NodeStatus

logger = logging.getLogger(__name__)

CROP_MARGIN_MM = 12.0
SHELL_MM = (2.0, 6.0)
SYMMETRY_STATIONS = ("1R", "1L")  # lower cervical / supraclavicular: where bilateral muscle and brown fat lie
NAMED_NOT_NODE = ("aorta", "esophagus", "heart", "trachea", "superior_vena_cava", "pulmonary_artery",
                  "brachiocephalic_vein_left", "brachiocephalic_vein_right", "main_bronchus_left",
                  "main_bronchus_right", "bronchus_intermedius", "thyroid_gland")


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
    uptake_min: float | None = None


def uptake_minutes(volumes) -> float | None:
    f = getattr(volumes, "suv_factor", None)
    s = getattr(f, "uptake_seconds", None)
    return None if s is None else float(s) / 60.0


def detect_lesions(volumes, anatomy: Anatomy, station_map, settings: PipelineSettings, study_uid: str,
                   carina_index: float | None = None, progress: Callable[[str], None] | None = None
                   ) -> LesionFindings:
    """Detection (by backend), splitting at peaks, measurement, naming, and the node reading.

    `progress` gets a short line at each step (a real study has a few hundred foci to read)."""
    say = progress or (lambda _line: None)
    ct = sitk.GetArrayViewFromImage(volumes.ct)
    suv = sitk.GetArrayViewFromImage(volumes.suv)
    ls, pos = settings.lesions, settings.positivity
    sp = spacing_zyx(volumes.ct)
    blood_pool = blood_pool_region(anatomy, suv, carina_index)
    liver = liver_region(anatomy, suv, ct)
    warnings = reference_warnings(liver, blood_pool, pos.liver_cv_warning)
    uptake = uptake_minutes(volumes)
    refs = reading.References(blood_pool, liver, uptake)
    if not refs.uptake_standard(pos.uptake_window_min):
        warnings.append(f"uptake time {uptake:.0f} min is outside {pos.uptake_window_min[0]:g}-"
                        f"{pos.uptake_window_min[1]:g} min: SUVs are not comparable with standard scans; "
                        "nodes are read on ratios to the blood pool and liver only")

    min_vox = cand.min_voxels_on_ct(voxel_ml(volumes.ct), pet_voxel_ml(volumes), ls)
    organs, excluded = cand.excluded_organs(anatomy, ls)
    if ls.backend == "nnunet":
        from pipeline.lesions.nnunet import predict_lesion_mask

        mask = predict_lesion_mask(volumes, ls.nnunet)
        threshold, rule = float("nan"), f"nnU-Net model {ls.nnunet.model_dir}"
    else:
        threshold, rule = cand.threshold_for(ls, liver)
        mask = cand.candidate_mask(suv, ct, anatomy, threshold, organs)
        rule += f"; inside the body; excluding {', '.join(excluded) or 'no organ (none in the anatomy)'}"
    labels, n = cand.components(mask, min_vox)
    say(f"{n} candidate foci above the threshold")
    component_of = {k: k for k in range(1, n + 1)}
    if ls.split_peaks and n:
        split = cand.SplitRule(ls.peak_min_prominence_suv, ls.peak_min_prominence_fraction, ls.pet_fwhm_mm)
        labels, n, component_of = cand.split_at_peaks(labels, n, suv, sp, split, min_vox)
    rule += f"; at least {ls.min_pet_voxels} PET voxels; split at separate SUV peaks" if ls.split_peaks else ""
    enlarged: list[np.ndarray] = []
    if ls.ct_enlarged_nodes:
        say(f"{n} foci after splitting at peaks; searching CT for enlarged nodes")
        enlarged = enlarged_ct_candidates(volumes, anatomy, station_map, labels > 0, pos)
    else:
        say(f"{n} foci after splitting at peaks")
        rule += "; no CT search for enlarged non-avid nodes (lesions.ct_enlarged_nodes)"
    lesions, out_labels = measure_and_name(volumes, anatomy, station_map, labels, n, settings, refs, study_uid,
                                           enlarged, component_of, say, threshold)
    if not any(l.kind == LesionKind.PRIMARY for l in lesions):
        warnings.append("no FDG-avid lesion in or against the lung: primary tumour not found")
    label_img = sitk.GetImageFromArray(out_labels)
    label_img.CopyInformation(volumes.ct)
    return LesionFindings(lesions, label_img, blood_pool, liver, threshold, rule, reading.describe_rule(pos),
                          warnings, uptake)


def measure_and_name(volumes, anatomy: Anatomy, station_map, lesion_labels: np.ndarray, n: int,
                     settings: PipelineSettings, refs: reading.References, study_uid: str,
                     enlarged: list[np.ndarray], component_of: dict[int, int] | None = None,
                     say: Callable[[str], None] = lambda _line: None, threshold: float = float("nan")
                     ) -> tuple[list[Lesion], np.ndarray]:
    ct_img: sitk.Image = volumes.ct
    ct = sitk.GetArrayViewFromImage(ct_img)
    suv = sitk.GetArrayViewFromImage(volumes.suv)
    sp = spacing_zyx(ct_img)
    vml = voxel_ml(ct_img)
    anatomy_arr = anatomy.array()
    lungs = {"left": anatomy.mask(an.LUNG_LEFT), "right": anatomy.mask(an.LUNG_RIGHT)}
    lung = union_mask(anatomy, (an.LUNG_LEFT, an.LUNG_RIGHT, *an.LUNG_LOBES))
    diaphragm = classify.Diaphragm(lung, ct_img)
    named = union_mask(anatomy, NAMED_NOT_NODE)
    stations = sitk.GetArrayViewFromImage(station_map.labels) if station_map is not None else None
    value_to_station = {v: k for k, v in station_map.station_values.items()} if station_map is not None else {}
    pet_max = pet_grid_max(volumes, lesion_labels, n)
    ctx = physiologic.Physiology.build(anatomy, ct, suv, settings.lesions.pet_fwhm_mm)
    margin = np.ceil(CROP_MARGIN_MM / sp).astype(int) + 1

    regions: list[tuple[int, tuple[slice, ...], np.ndarray, bool]] = []
    for lab, bb in enumerate(ndimage.find_objects(lesion_labels), start=1):
        if bb is not None:
            sl = crop(bb, margin, ct.shape)
            regions.append((lab, sl, lesion_labels[sl] == lab, False))
    for k, extra in enumerate(enlarged):
        bb = ndimage.find_objects(extra.astype(np.uint8))[0]
        sl = crop(bb, margin, ct.shape)
        regions.append((n + 1 + k, sl, extra[sl].copy(), True))

    def measure(lab, sl, local, ct_only):
        c = _measure(lab, sl, local, ct_only, ct, suv, sp, vml, lung, lungs, anatomy, anatomy_arr, named,
                     stations, value_to_station, pet_max, diaphragm, ctx, ct_img)
        if (ct_only or c.physiologic is not None or c.below_diaphragm or c.central_mass
                or c.lung_fraction >= classify.INTRAPULMONARY_SHELL_FRACTION):
            return c
        core = physiologic.node_apart_from_esophagus(ctx, sl, local, c.peak, float(suv[c.peak]))
        if core is not None:
            return _measure(lab, sl, core, ct_only, ct, suv, sp, vml, lung, lungs, anatomy, anatomy_arr, named,
                            stations, value_to_station, pet_max, diaphragm, ctx, ct_img)
        if physiologic.node_against_heart(ctx, sl, local, c.peak, c.short_axis):
            whole = physiologic.node_into_heart(ctx, sl, local, c.peak, threshold)
            if whole is not None:  # judged a node on its part outside the label; measured whole
                return _measure(lab, sl, whole, ct_only, ct, suv, sp, vml, lung, lungs, anatomy, anatomy_arr,
                                named, stations, value_to_station, pet_max, diaphragm, ctx, ct_img, into_heart=True)
        return c

    cands = []
    step = max(len(regions) // 4, 25)
    for k, r in enumerate(regions, start=1):
        cands.append(measure(*r))
        if k % step == 0 and k < len(regions):
            say(f"read {k} of {len(regions)} foci")
    for c in cands:
        c.component = (component_of or {}).get(c.label, -c.label)
    primary, how = classify.choose_primary(cands, settings.lesions.primary_choice)
    lobes = classify.primary_lobes(cands, primary)
    if lobes:
        # A lobulated tumour split at its peaks: its other lobes (peaks in no station, not physiologic) rejoin it.
        union = np.zeros(ct.shape, bool)
        for c in [primary, *lobes]:
            union[c.sl] |= c.local
        bb = ndimage.find_objects(union.astype(np.uint8))[0]
        sl = crop(bb, margin, ct.shape)
        merged = measure(primary.label, sl, union[sl], False)
        merged.component = primary.component
        cands = [c for c in cands if c is not primary and c not in lobes] + [merged]
        primary = merged
        how += f"; {len(lobes)} more lobe(s) of the same mass joined (their peaks lie in no nodal station)"
    for c in cands:
        if c is not primary:
            name_symmetric_uptake(c, ctx, refs, settings)
    lesions: list[Lesion] = []
    out_labels = np.zeros(ct.shape, dtype=np.uint16)
    node_no = 0
    for c in sorted(cands, key=lambda c: (c is not primary, -c.centroid_mm[2])):
        naming = classify.name_focus(c, primary, how)
        status, rule, positive = NodeStatus.NOT_A_NODE, naming.rule, naming.kind == LesionKind.PRIMARY
        because = None
        if naming.kind == LesionKind.NODE:
            measures = reading.NodeMeasures(c.suvmax, c.suvpeak, c.short_axis, not c.ct_only)
            status, why = reading.read_node(measures, refs, settings.positivity)
            because = reading.equivocal_reason(measures, refs, settings.positivity) \
                if status == NodeStatus.EQUIVOCAL else None
            if status == NodeStatus.POSITIVE and c.outside_station_mm > 0:
                because = (f"peak inside the {c.peak_in_label}, {c.outside_station_mm:.0f} mm from {naming.station}: "
                           f"a node against the {c.peak_in_label}, or uptake in it" if c.peak_in_label else
                           f"peak {c.outside_station_mm:.0f} mm outside {naming.station}")
            status, why = reading.cap_outside_station(status, why, c.outside_station_mm)
            rule = f"{naming.rule}: {why}"
            positive = status == NodeStatus.POSITIVE
            node_no += 1
            tracking = f"Node {node_no} ({naming.station})"
        elif naming.kind == LesionKind.PRIMARY:
            tracking = "Primary tumour"
        else:
            tracking = f"Lesion {len(lesions) + 1} ({naming.kind.value.replace('_', ' ')})"
        value = len(lesions) + 1
        out_labels[c.sl][c.local] = value
        lesions.append(Lesion(
            index=value - 1, label_value=value, kind=naming.kind, tracking_id=tracking,
            tracking_uid=generate_uid(entropy_srcs=[study_uid, tracking, str(c.centroid_mm)]),
            centroid_mm=c.centroid_mm, suvmax=c.suvmax, suvpeak=c.suvpeak, suvmean=c.suvmean,
            mtv_ml=c.mtv_ml, tlg=c.tlg, short_axis_mm=c.short_axis, voxel_count=int(c.local.sum()),
            station=naming.station, side=naming.side, lobe=c.lobe if naming.kind == LesionKind.PRIMARY else None,
            status=status, positive=positive, rule=rule, physiologic_site=naming.physiologic_site,
            peak_mm=c.peak_mm, equivocal_because=because,
            nearby_stations=dict(c.nearby_stations) if naming.kind == LesionKind.NODE else {}))
    return lesions, out_labels


def name_symmetric_uptake(c: classify.Candidate, ctx: physiologic.Physiology, refs: reading.References,
                           settings: PipelineSettings) -> None:
    """A station-1 focus of equivocal grade mirrored by uptake as hot across the midline is
    bilateral muscle or brown fat (`physiologic.symmetric_uptake`), named so on `c`.

    Only equivocal grade: a focus that reads positive is staged whatever lies opposite (a
    reader would not call a node muscle because the other side is also hot), and only in
    station 1, where the scalenes, trapezius and supraclavicular fat lie beside the nodes.
    The scan may start below the cricoid, leaving the neck rule no level to go by."""
    if (c.physiologic is not None or c.ct_only or c.below_diaphragm or c.station not in SYMMETRY_STATIONS
            or c.lung_fraction >= classify.INTRAPULMONARY_SHELL_FRACTION):
        return
    status, _ = reading.read_node(reading.NodeMeasures(c.suvmax, c.suvpeak, c.short_axis), refs, settings.positivity)
    if status != NodeStatus.EQUIVOCAL:
        return
    peak_suv = float(ctx.suv[c.peak])
    mirror = physiologic.symmetric_uptake(ctx, c.peak, peak_suv)
    if mirror is None:
        return
    site = physiologic.symmetric_site(ctx, c.peak)
    c.physiologic = (site, f"{site.value.replace('_', ' ')}: bilateral symmetric low-grade uptake (equivocal grade, "
                           f"{mirror.lateral_mm:.0f} mm from the midline; across it, SUV {mirror.mirror_suvmax:.1f}, "
                           f"{mirror.ratio:.2f}x this focus), not a one-sided node")


def _measure(lab, sl, local, ct_only, ct, suv, sp, vml, lung, lungs, anatomy, anatomy_arr, named, stations,
             value_to_station, pet_max, diaphragm, ctx, ct_img, into_heart: bool = False) -> classify.Candidate:
    """One focus measured and placed. `into_heart`: a node against the heart with the part the heart
    label took in (`physiologic.node_into_heart`), already judged a node; its station is reached
    through the label when its peak lies in it."""
    offset = np.array([s.start for s in sl])
    s_local = np.asarray(suv[sl])
    if ct_only:  # no uptake: the deepest point of the soft tissue stands for the peak
        depth = ndimage.distance_transform_edt(local, sampling=sp)
        lp = np.unravel_index(int(np.argmax(depth)), local.shape)
    else:
        lp = np.unravel_index(int(np.argmax(np.where(local, s_local, -np.inf))), local.shape)
    peak = tuple(int(v) for v in np.array(lp) + offset)
    c_index = np.argwhere(local).mean(axis=0) + offset
    values = s_local[local]
    peak_mm = physical(ct_img, peak)
    organ = None if ct_only else physiologic.abdominal_organ_at(anatomy, peak)
    below = not ct_only and (organ is not None or diaphragm.below(peak, peak_mm))  # in the liver is below it
    lung_fraction, side, lobe = 0.0, None, None
    if not below:  # below the diaphragm nothing is staged: skip the thoracic measurements
        shell_d = ndimage.distance_transform_edt(~local, sampling=sp)
        shell = (shell_d > SHELL_MM[0]) & (shell_d <= SHELL_MM[1])
        lung_fraction = float(lung[sl][shell].mean()) if lung is not None and shell.any() else 0.0
        if lung_fraction >= classify.PRIMARY_MIN_SHELL_FRACTION:
            side, lobe = classify.lung_side(anatomy_arr[sl], anatomy.names,
                                            {k: (m[sl] if m is not None else None) for k, m in lungs.items()},
                                            local, sp)
    body = local if (ct_only or below) else node_soft_tissue(np.asarray(ct[sl]), local, tuple(int(v) for v in lp),
                                                             sp, None if named is None else named[sl])
    soft_mm = short_axis_mm(body, sp)
    short = soft_mm if body.any() else short_axis_mm(local, sp)
    suvmax = float(values.max()) if ct_only else float(max(pet_max.get(lab, 0.0), values.max()))
    station, station_mm = classify.station_at(stations, value_to_station, peak, sp)
    through = None
    esophagus = ctx.mask(physiologic.ESOPHAGUS)
    if station_mm > 0 and not ct_only and esophagus is not None and esophagus[peak]:
        inside, inside_mm = classify.station_through_label(stations, value_to_station, peak, sp, esophagus[sl], lp,
                                                           only=classify.THROUGH_ESOPHAGUS_STATIONS)
        if inside is not None:
            station, station_mm, through = inside, inside_mm, physiologic.ESOPHAGUS
    heart = ctx.mask(physiologic.HEART) if into_heart else None
    if station_mm > 0 and heart is not None and heart[peak]:
        inside, inside_mm = classify.station_through_label(stations, value_to_station, peak, sp, heart[sl], lp)
        if inside is not None:
            station, station_mm, through = inside, inside_mm, physiologic.HEART
    in_label = (physiologic.ESOPHAGUS if station_mm > 0 and through is None and not ct_only and esophagus is not None
                and esophagus[peak] else None)
    nearby = (classify.stations_near(stations, value_to_station, peak, sp, own=station)
              if station_mm == 0.0 or through else {})
    c = classify.Candidate(
        label=lab, sl=sl, local=local, peak=peak, centroid_mm=physical(ct_img, c_index), peak_mm=peak_mm,
        suvmax=suvmax, suvpeak=suv_peak(s_local, local, sp), suvmean=float(values.mean()),
        mtv_ml=float(local.sum() * vml), short_axis=short,
        station=station, station_distance_mm=station_mm,
        lung_fraction=lung_fraction, side_by_position=side, lobe=lobe, below_diaphragm=below,
        in_thorax=diaphragm.in_thorax(peak_mm[2]), ct_only=ct_only, nearby_stations=nearby, station_through=through,
        peak_in_label=in_label)
    if below:
        c.abdominal_organ = organ
    elif not ct_only and not into_heart and lung_fraction < classify.INTRAPULMONARY_SHELL_FRACTION:
        c.physiologic = physiologic.physiologic_site(ctx, sl, local, peak, float(s_local[lp]),
                                                     soft_mm, central_mass=c.central_mass)
    return c
