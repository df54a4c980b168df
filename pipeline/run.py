"""`run_study`: one study folder in, a staged `StudyResult` (and its output files) out.

It chains the stages of DESIGN.md §1 — series, volumes and SUV, anatomy, stations,
lesions, staging, outputs — and times each. It takes only a folder and settings and
writes only under `out_dir`, so the node can run it in a subprocess today and on a
distributed executor later.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk

from pipeline import __version__
from pipeline.anatomy import segment
from pipeline.lesions import detect_lesions
from pipeline.lesions.reading import station_status
from pipeline.settings import PipelineSettings
from pipeline.staging import boundary_readings, stage
from pipeline.stations import build_station_map
from pipeline.study import load_study
from pipeline.study_result import BackendInfo, LesionKind, NodeStatus, StudyResult

logger = logging.getLogger(__name__)

UPTAKE_WARNING_PREFIX = "uptake time"  # how pipeline.suv and the lesion reading both start their uptake warning
ProgressCallback = Callable[[str, str], None]  # (stage, "start" | "done in 1.2 s")


@contextmanager
def _timed(timings: dict[str, float], name: str, progress: ProgressCallback | None):
    if progress:
        progress(name, "start")
    t0 = time.perf_counter()
    yield
    timings[name] = time.perf_counter() - t0
    if progress:
        progress(name, f"done in {timings[name]:.1f} s")


def _carina_index(station_map, anatomy, ct: sitk.Image) -> float | None:
    """Carina level as a slice index on the CT grid, for the blood-pool region."""
    z_mm = None
    for lm in getattr(station_map, "landmarks", []) or []:
        if lm.name == "carina" and lm.z_mm is not None:
            z_mm = lm.z_mm
    if z_mm is None and "carina" in anatomy.landmarks:
        z_mm = anatomy.landmarks["carina"][2]
    if z_mm is None:
        return None
    origin = np.array(ct.GetOrigin())
    point = origin.copy()
    point[2] = z_mm
    return ct.TransformPhysicalPointToContinuousIndex(point.tolist())[2]


def run_study(study_dir: str | Path, settings: PipelineSettings | None = None, out_dir: str | Path | None = None,
              progress: ProgressCallback | None = None) -> StudyResult:
    """Stage one study. Raises PipelineError subclasses, with a one-line reason, for unusable input."""
    settings = settings or PipelineSettings()
    timings: dict[str, float] = {}
    warnings: list[str] = []

    with _timed(timings, "volumes", progress):
        volumes = load_study(study_dir)
    warnings += volumes.warnings
    first_ct = pydicom.dcmread(volumes.ct_files[0], stop_before_pixels=True)
    study_uid = str(first_ct.get("StudyInstanceUID", ""))
    logger.debug("study %s: volumes loaded", study_uid)

    with _timed(timings, "anatomy", progress):
        anatomy = segment(volumes.ct, settings.anatomy)

    with _timed(timings, "stations", progress):
        station_map = build_station_map(anatomy.labels, anatomy.names, landmarks=anatomy.landmarks, ct=volumes.ct)

    with _timed(timings, "lesions", progress):
        findings = detect_lesions(volumes, anatomy, station_map, settings, study_uid,
                                  _carina_index(station_map, anatomy, volumes.ct),
                                  progress=(lambda line: progress("lesions", line)) if progress else None)
    if any(w.startswith(UPTAKE_WARNING_PREFIX) for w in findings.warnings):
        # the reading's uptake warning says what the decision rests on; one uptake warning, not two
        warnings = [w for w in warnings if not w.startswith(UPTAKE_WARNING_PREFIX)]
    warnings += findings.warnings

    with _timed(timings, "staging", progress):
        primary = next((l for l in findings.lesions if l.kind == LesionKind.PRIMARY), None)
        nodes = [l for l in findings.lesions if l.kind == LesionKind.NODE and l.station]
        positive = sorted({l.station for l in nodes if l.status == NodeStatus.POSITIVE})
        equivocal = sorted({l.station for l in nodes if l.status == NodeStatus.EQUIVOCAL} - set(positive))
        side = primary.side if primary else None
        staging = stage(side, positive)
        borders = boundary_readings(side, [(l.tracking_id, l.station, l.nearby_stations) for l in nodes
                                           if l.status == NodeStatus.POSITIVE])
        if_equivocal = stage(side, sorted(set(positive) | set(equivocal))) if equivocal else staging
        if primary is None:
            warnings.append("primary tumour not found: the side is unknown")
        if not any(l.status != NodeStatus.ENLARGED_NON_AVID for l in findings.lesions):
            warnings.append("no FDG-avid lesion above the threshold")

    result = StudyResult(
        study_instance_uid=study_uid,
        accession_number=str(first_ct.get("AccessionNumber", "")),
        ct_series_uid=volumes.selection.ct.series_instance_uid,
        pet_series_uid=volumes.selection.pet.series_instance_uid,
        n_tnm8=staging.n_tnm8, n_tnm9=staging.n_tnm9, involved_stations=list(staging.stations),
        staging=staging.to_dict(), primary_side=primary.side if primary else None,
        lesions=findings.lesions, landmarks=[_landmark_dict(l) for l in station_map.landmarks],
        not_assessable=dict(station_map.not_assessable),
        reference_regions={"blood_pool": findings.blood_pool.to_dict(), "liver": findings.liver.to_dict(),
                           "liver_percist_threshold": _round(findings.liver.percist_threshold),
                           "uptake_min": _round(findings.uptake_min),
                           "lesion_threshold": {"suv": round(findings.threshold_suv, 4),
                                                "rule": findings.threshold_rule}},
        positivity_rule=findings.positivity_rule,
        backends={
            "pipeline": BackendInfo("nodestage", __version__),
            "anatomy": BackendInfo(anatomy.backend, anatomy.version, anatomy.settings),
            "stations": BackendInfo("iaslc_rules", __version__, {"proxies": list(station_map.proxies)}),
            "lesions": BackendInfo(settings.lesions.backend, findings_version(settings),
                                   settings.lesions.model_dump(mode="json")),
        },
        timings_s=timings, warnings=_unique(warnings), suv=volumes.suv_factor.to_dict(),
        lesion_labels=findings.labels, station_labels=station_map.labels,
        station_values=dict(station_map.station_values), volumes=volumes,
        equivocal_stations=equivocal, n_tnm8_if_equivocal_positive=if_equivocal.n_tnm8,
        n_tnm9_if_equivocal_positive=if_equivocal.n_tnm9,
        station_status=station_status([(l.station, l.status) for l in nodes]),
        boundary_readings=[b.to_dict() for b in borders],
    )
    if out_dir is not None:
        with _timed(timings, "outputs", progress):
            from pipeline.outputs import write_outputs

            write_outputs(result, Path(out_dir), settings.outputs,
                          progress=(lambda line: progress("outputs", line)) if progress else None)
    logger.info("study staged: %s (TNM 8) / %s (TNM 9), %d lesions", result.n_tnm8, result.n_tnm9, len(result.lesions))
    return result


def findings_version(settings: PipelineSettings) -> str:
    if settings.lesions.backend == "nnunet":
        import nnunetv2

        return f"nnunetv2 {getattr(nnunetv2, '__version__', 'unknown')}"
    return __version__


def _landmark_dict(lm) -> dict:
    return lm.to_dict() if hasattr(lm, "to_dict") else dict(lm.__dict__)


def _round(v: float | None, nd: int = 4) -> float | None:
    return None if v is None else round(float(v), nd)


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))
