"""Realistic `StudyResult`s for the output-writer tests, without the lesion pipeline.

`result_from_phantom` loads a phantom study with the real loader (`load_study`),
paints the truth lesions (ellipsoids at `center_mm` / `semi_axes_mm`, in physical
space, so any slice order or orientation works) as a label map on the CT grid,
measures each lesion on the SUV volume, and stages N with `pipeline.staging`.
`result_from_real_study` does the same for the real ACRIN PET/CT: its primary is the
connected SUV ≥ 40 % SUVmax region around the known right hilar mass, and one
*synthetic* node sphere is added so that node segments are exercised too.

`result_from_phantom(..., equivocal=("7",), physiologic=True)` reads the named truth
nodes as equivocal (three-tier reading: N from the positive ones, and the N category
if the equivocal ones were positive) and adds a physiologic focus (bone marrow, in
the spine) and a distant focus, so the writers' selection rules are exercised.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from pydicom.uid import generate_uid
from scipy import ndimage

from pipeline.staging import stage, station_side
from pipeline.study import Volumes, load_study
from pipeline.study_result import BackendInfo, Lesion, LesionKind, NodeStatus, PhysiologicSite, StudyResult

EQUIVOCAL_BECAUSE = "SUVpeak <= PERCIST liver threshold 3.80"
POSITIVITY_RULE = ("positive: SUVmax > blood pool and SUVpeak > 1.5 x liver SUVmean + 2 SD; equivocal: above "
                   "blood pool otherwise; enlarged: short axis ≥ 10 mm (test factory)")
STATUS_BY_ROLE = {"positive": NodeStatus.POSITIVE, "enlarged_nonavid": NodeStatus.ENLARGED_NON_AVID,
                  "small_subthreshold": NodeStatus.NEGATIVE}
PEAK_RADIUS_MM = 6.2  # a 1 cm³ sphere
# Extra findings painted by `physiologic=True`: (kind, site, centre LPS mm, radius mm).
PHANTOM_SPINE_FOCUS = (LesionKind.PHYSIOLOGIC, PhysiologicSite.BONE_MARROW, (0.0, 60.0, -40.0), 7.0)
PHANTOM_DISTANT_FOCUS = (LesionKind.DISTANT, None, (40.0, 20.0, -140.0), 8.0)


def _ellipsoid_box(image: sitk.Image, center, semi) -> tuple[tuple[slice, ...], np.ndarray]:
    """Index box (z, y, x slices) covering an LPS ellipsoid, and the mask inside it."""
    c = np.asarray(center, float)
    s = np.asarray(semi, float)
    corners = [c + s * np.array([i, j, k]) for i in (-1, 1) for j in (-1, 1) for k in (-1, 1)]
    idx = np.array([image.TransformPhysicalPointToContinuousIndex(tuple(map(float, p))) for p in corners])
    size = np.array(image.GetSize())
    lo = np.clip(np.floor(idx.min(axis=0)).astype(int) - 1, 0, size - 1)
    hi = np.clip(np.ceil(idx.max(axis=0)).astype(int) + 1, 0, size - 1)
    ii, jj, kk = np.meshgrid(*(np.arange(lo[a], hi[a] + 1) for a in range(3)), indexing="ij")
    grid = np.stack([ii, jj, kk], axis=-1).reshape(-1, 3).astype(float)
    direction = np.array(image.GetDirection()).reshape(3, 3)
    phys = np.array(image.GetOrigin()) + (grid * np.array(image.GetSpacing())) @ direction.T
    inside = (((phys - c) / s) ** 2).sum(axis=1) <= 1.0
    inside = inside.reshape(ii.shape).transpose(2, 1, 0)  # (x,y,z) -> (z,y,x)
    box = (slice(lo[2], hi[2] + 1), slice(lo[1], hi[1] + 1), slice(lo[0], hi[0] + 1))
    return box, inside


def _measure(mask: np.ndarray, suv: np.ndarray, image: sitk.Image) -> dict:
    """SUVmax/peak/mean, MTV, TLG and centroid of one lesion mask (z, y, x) on `image`'s grid."""
    values = suv[mask]
    spacing = np.array(image.GetSpacing())
    voxel_ml = float(np.prod(spacing)) / 1000.0
    zyx = np.argwhere(mask)
    k = zyx[np.argmax(values)]
    # SUVpeak: mean SUV in a 1 cm³ sphere around the hottest voxel (a simple stand-in).
    r = np.ceil(PEAK_RADIUS_MM / spacing[::-1]).astype(int)
    sl = tuple(slice(max(k[a] - r[a], 0), k[a] + r[a] + 1) for a in range(3))
    grids = np.meshgrid(*(np.arange(s.start, min(s.stop, suv.shape[a])) for a, s in enumerate(sl)), indexing="ij")
    d2 = sum(((g - k[a]) * spacing[::-1][a]) ** 2 for a, g in enumerate(grids))
    peak = float(suv[sl][d2 <= PEAK_RADIUS_MM ** 2].mean())
    centre_idx = zyx.mean(axis=0)[::-1]
    centroid = image.TransformContinuousIndexToPhysicalPoint(tuple(float(v) for v in centre_idx))
    suvmean = float(values.mean())
    mtv = float(mask.sum()) * voxel_ml
    peak_mm = image.TransformIndexToPhysicalPoint(tuple(int(v) for v in k[::-1]))
    return dict(suvmax=float(values.max()), suvpeak=peak, suvmean=suvmean, mtv_ml=mtv, tlg=suvmean * mtv,
                voxel_count=int(mask.sum()), centroid_mm=tuple(float(v) for v in centroid),
                peak_mm=tuple(float(v) for v in peak_mm))


def _uid(*parts) -> str:
    return generate_uid(entropy_srcs=[str(p) for p in parts])


def _label_image(ct: sitk.Image, labels: np.ndarray) -> sitk.Image:
    img = sitk.GetImageFromArray(labels.astype(np.uint16))
    img.CopyInformation(ct)
    return img


def _station_map(ct: sitk.Image, sites: dict[str, tuple[float, float, float]], radius_mm: float = 10.0):
    """A crude station map: a sphere at each station's site (enough for the station-SEG writer)."""
    labels = np.zeros(sitk.GetArrayViewFromImage(ct).shape, np.uint16)
    values = {}
    for value, (station, site) in enumerate(sites.items(), start=1):
        box, inside = _ellipsoid_box(ct, site, (radius_mm,) * 3)
        labels[box][inside] = value
        values[station] = value
    return _label_image(ct, labels), values


def _station_status(lesions: list[Lesion]) -> dict[str, str]:
    """Station -> status of its most avid node (the rule of StudyResult.station_status)."""
    best: dict[str, Lesion] = {}
    for l in lesions:
        if l.kind == LesionKind.NODE and l.station and (l.station not in best or l.suvmax > best[l.station].suvmax):
            best[l.station] = l
    return {s: str(l.status) for s, l in best.items()}


def _result(volumes: Volumes, lesions: list[Lesion], labels: np.ndarray, primary_side: str | None,
            landmarks: list[dict], station_img=None, station_values=None, blood_pool: float = 1.8) -> StudyResult:
    nodes = [l for l in lesions if l.kind == LesionKind.NODE and l.station]
    positive = [l.station for l in nodes if l.positive]
    equivocal = sorted({l.station for l in nodes if l.equivocal} - set(positive))
    staging = stage(primary_side, positive)
    if_equivocal = stage(primary_side, positive + equivocal) if equivocal else None
    sel = volumes.selection
    liver_mean, liver_sd = 2.2, 0.3
    return StudyResult(
        study_instance_uid=_study_uid(volumes),
        ct_series_uid=sel.ct.series_instance_uid,
        pet_series_uid=sel.pet.series_instance_uid,
        n_tnm8=staging.n_tnm8,
        n_tnm9=staging.n_tnm9,
        involved_stations=list(staging.stations),
        staging=staging.to_dict(),
        primary_side=primary_side,
        lesions=lesions,
        landmarks=landmarks,
        not_assessable={"14R": "subsegmental stations are not mapped (test factory)"},
        reference_regions={
            "blood_pool": {"name": "blood_pool", "suvmean": blood_pool, "suvsd": 0.2, "voxels": 900,
                           "source": "descending aorta (test factory)"},
            "liver": {"name": "liver", "suvmean": liver_mean, "suvsd": liver_sd, "cv": liver_sd / liver_mean,
                      "voxels": 1200, "source": "3 cm sphere, right lobe (test factory)"}},
        equivocal_stations=equivocal,
        n_tnm8_if_equivocal_positive=if_equivocal.n_tnm8 if if_equivocal else None,
        n_tnm9_if_equivocal_positive=if_equivocal.n_tnm9 if if_equivocal else None,
        station_status=_station_status(lesions),
        positivity_rule=POSITIVITY_RULE,
        backends={"anatomy": BackendInfo("test-factory-truth", "0", {"source": "phantom truth"}),
                  "lesions": BackendInfo("test-factory-truth", "0", {"paint": "ellipsoids"})},
        timings_s={"factory": 0.0},
        warnings=list(volumes.warnings),
        suv=volumes.suv_factor.to_dict(),
        accession_number="",
        lesion_labels=_label_image(volumes.ct, labels),
        station_labels=station_img,
        station_values=station_values or {},
        volumes=volumes,
    )


def _study_uid(volumes: Volumes) -> str:
    import pydicom
    return str(pydicom.dcmread(volumes.ct_files[0], stop_before_pixels=True, specific_tags=["StudyInstanceUID"])
               .StudyInstanceUID)


def result_from_phantom(study_dir: str | Path, volumes: Volumes | None = None, with_station_map: bool = True,
                        equivocal: tuple[str, ...] = (), physiologic: bool = False) -> StudyResult:
    """A StudyResult for a phantom study folder (with truth.json), as run_study would give.

    Truth nodes in the `equivocal` stations are read as equivocal; `physiologic` adds a
    bone-marrow focus and a distant focus.
    """
    from pipeline.phantom import STATION_SITES

    study_dir = Path(study_dir)
    truth = json.loads((study_dir / "truth.json").read_text())
    volumes = volumes or load_study(study_dir / "dicom")
    ct = volumes.ct
    suv = sitk.GetArrayFromImage(volumes.suv)
    labels = np.zeros(suv.shape, np.uint16)
    lesions: list[Lesion] = []
    node_number = 0
    for t in truth["lesions"]:
        value = t["index"] + 1
        box, inside = _ellipsoid_box(ct, t["center_mm"], t["semi_axes_mm"])
        region = labels[box]
        region[inside & (region == 0)] = value
        mask = labels == value
        m = _measure(mask, suv, ct)
        if t["kind"] == "primary":
            kind, tracking, status, positive, station = LesionKind.PRIMARY, "Primary tumour", NodeStatus.NOT_A_NODE, \
                True, None
            rule = "intrapulmonary FDG-avid mass (phantom truth)"
        else:
            node_number += 1
            kind, station = LesionKind.NODE, t["station"]
            tracking = f"Node {node_number} ({station})"
            status = NodeStatus.EQUIVOCAL if station in equivocal else STATUS_BY_ROLE[t["role"]]
            positive = status == NodeStatus.POSITIVE
            rule = (f"SUVmax {m['suvmax']:.2f} {'≥' if m['suvmax'] >= 2.5 else '<'} 2.5; "
                    f"short axis {t['short_axis_mm']:.1f} mm → {status}")
        lesions.append(Lesion(
            index=t["index"], label_value=value, kind=kind, tracking_id=tracking,
            tracking_uid=_uid(truth["dicom"]["study_instance_uid"], "lesion", t["index"]),
            centroid_mm=m["centroid_mm"], suvmax=m["suvmax"], suvpeak=m["suvpeak"], suvmean=m["suvmean"],
            mtv_ml=m["mtv_ml"], tlg=m["tlg"], short_axis_mm=float(t["short_axis_mm"]),
            voxel_count=m["voxel_count"], station=station,
            side=t["side"] if kind == "primary" else (station_side(station) if station else None),
            lobe=truth["primary"]["lobe"] if kind == "primary" else None,
            status=status, positive=positive, rule=rule, peak_mm=m["peak_mm"],
            equivocal_because=EQUIVOCAL_BECAUSE if status == NodeStatus.EQUIVOCAL else None))
    if physiologic:
        for kind, site, centre, radius in (PHANTOM_SPINE_FOCUS, PHANTOM_DISTANT_FOCUS):
            value = int(labels.max()) + 1
            box, inside = _ellipsoid_box(ct, centre, (radius,) * 3)
            region = labels[box]
            region[inside & (region == 0)] = value
            m = _measure(labels == value, suv, ct)
            lesions.append(Lesion(
                index=value - 1, label_value=value, kind=kind, tracking_id=f"{str(kind).capitalize()} {value}",
                tracking_uid=_uid(truth["dicom"]["study_instance_uid"], "lesion", value - 1),
                centroid_mm=m["centroid_mm"], suvmax=m["suvmax"], suvpeak=m["suvpeak"], suvmean=m["suvmean"],
                mtv_ml=m["mtv_ml"], tlg=m["tlg"], short_axis_mm=2 * radius, voxel_count=m["voxel_count"],
                physiologic_site=site, rule="painted by the test factory", peak_mm=m["peak_mm"]))
    landmarks = [{"name": name, "z_mm": z, "proxy": "phantom analytic landmark"}
                 for name, z in truth["landmarks_mm"].items()][:4]
    station_img, station_values = (_station_map(ct, STATION_SITES) if with_station_map else (None, None))
    result = _result(volumes, lesions, labels, truth["primary"]["side"], landmarks, station_img, station_values,
                     blood_pool=truth["suv"]["blood_pool_suv"])
    result.accession_number = _accession(volumes)
    return result


def _accession(volumes: Volumes) -> str:
    import pydicom
    ds = pydicom.dcmread(volumes.ct_files[0], stop_before_pixels=True, specific_tags=["AccessionNumber"])
    return str(ds.get("AccessionNumber", "") or "")


REAL_PRIMARY_MM = (-40.0, -26.0, -99.0)  # the right hilar/mediastinal mass of ACRIN-NSCLC-FDG-PET-042
REAL_SYNTHETIC_NODE_MM = (5.0, -10.0, -20.0)  # a made-up 6 mm node, for the writers only


def result_from_real_study(study_dir: str | Path) -> StudyResult:
    """A StudyResult for the real ACRIN PET/CT: the real primary plus one synthetic node."""
    volumes = load_study(study_dir)
    ct = volumes.ct
    suv = sitk.GetArrayFromImage(volumes.suv)
    labels = np.zeros(suv.shape, np.uint16)
    # Primary: the connected SUV >= 40 % of local max region around the known mass.
    box, _ = _ellipsoid_box(ct, REAL_PRIMARY_MM, (45.0, 45.0, 45.0))
    local = suv[box]
    comp, _n = ndimage.label(local >= 0.4 * local.max())
    k = np.unravel_index(np.argmax(local), local.shape)
    labels[box][comp == comp[k]] = 1
    box, inside = _ellipsoid_box(ct, REAL_SYNTHETIC_NODE_MM, (6.0, 6.0, 6.0))
    region = labels[box]
    region[inside & (region == 0)] = 2
    study_uid = _study_uid(volumes)
    lesions = []
    for value, kind in ((1, LesionKind.PRIMARY), (2, LesionKind.NODE)):
        m = _measure(labels == value, suv, ct)
        node = kind == LesionKind.NODE
        lesions.append(Lesion(
            index=value - 1, label_value=value, kind=kind,
            tracking_id="Node 1 (7)" if node else "Primary tumour",
            tracking_uid=_uid(study_uid, "lesion", value), centroid_mm=m["centroid_mm"], suvmax=m["suvmax"],
            suvpeak=m["suvpeak"], suvmean=m["suvmean"], mtv_ml=m["mtv_ml"], tlg=m["tlg"],
            short_axis_mm=12.0 if node else 40.0, voxel_count=m["voxel_count"], station="7" if node else None,
            side=None if node else "right", lobe=None if node else "lung_upper_lobe_right",
            status=NodeStatus.EQUIVOCAL if node else NodeStatus.NOT_A_NODE, positive=not node,
            peak_mm=m["peak_mm"],
            rule="synthetic node painted by the test factory" if node else "SUV >= 40 % SUVmax region"))
    landmarks = [{"name": "carina", "z_mm": -150.0, "proxy": "test factory"}]
    result = _result(volumes, lesions, labels, "right", landmarks)
    result.accession_number = _accession(volumes)
    return result


# --- shared by the output tests: one set of outputs per phantom case, and the validators ---

_OUTPUTS: dict[str, tuple[StudyResult, dict[str, Path]]] = {}


def outputs_for(study_dir: str | Path, station_seg: bool = True) -> tuple[StudyResult, dict[str, Path]]:
    """Write (once per test session) every output of a phantom study next to its folder."""
    from pipeline.outputs import write_outputs
    from pipeline.settings import OutputSettings

    study_dir = Path(study_dir)
    key = f"{study_dir}|{station_seg}"
    if key not in _OUTPUTS:
        result = result_from_phantom(study_dir, physiologic=True)  # hidden findings exercise the selection
        out_dir = study_dir.parent / f"{study_dir.name}-outputs{'-st' if station_seg else ''}"
        paths = write_outputs(result, out_dir, OutputSettings(station_seg=station_seg))
        _OUTPUTS[key] = (result, paths)
    return _OUTPUTS[key]


def dciodvfy(path: str | Path) -> tuple[str, list[str], list[str]]:
    """Run dicom3tools' dciodvfy: (IOD name line, error lines, warning lines)."""
    import shutil
    import subprocess

    exe = shutil.which("dciodvfy")
    if exe is None:
        raise RuntimeError("dciodvfy not found (apt-get install dicom3tools; see ENVIRONMENT.md)")
    proc = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=120)
    lines = [l.strip() for l in (proc.stdout + proc.stderr).splitlines() if l.strip()]
    errors = [l for l in lines if l.startswith("Error")]
    warnings = [l for l in lines if l.startswith("Warning")]
    others = [l for l in lines if l not in errors and l not in warnings]
    return (others[0] if others else ""), errors, warnings
