"""A study folder in, CT (HU) and PET (SUVbw on the CT grid) out, or one line saying why not.

This is the first stage of `run_study` and the whole of `nodestage inspect`.
`inspect_study` reads headers only, so it answers in about a second and reports
the same refusals that `load_study` would hit (selection, geometry, SUV inputs).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
import SimpleITK as sitk
from pydicom.dataset import Dataset

from pipeline.errors import PipelineError, StudyInputError, SUVInputError
from pipeline.series import SeriesSelection, scan_study, select_series
from pipeline.suv import SUVFactor, compute_suv_factor
from pipeline.volumes import (
    VolumeGeometry,
    describe_geometry,
    load_pet_suv,
    read_volume,
    resample_to,
)

logger = logging.getLogger(__name__)


@dataclass
class Volumes:
    """The images every later stage works on, with where they came from.

    `suv` is on the CT grid (linear interpolation, 0 outside the PET); `suv_pet_grid`
    keeps the PET's own voxels for SUVmax/SUVpeak, which interpolation smooths.
    """

    ct: sitk.Image
    suv: sitk.Image
    suv_factor: SUVFactor
    selection: SeriesSelection
    ct_files: list[Path]
    pet_files: list[Path]
    warnings: list[str] = field(default_factory=list)
    suv_pet_grid: sitk.Image | None = None
    ct_geometry: VolumeGeometry | None = None
    pet_geometry: VolumeGeometry | None = None


def _unique(messages: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(messages))


def read_pet_headers(files: Sequence[Path]) -> list[Dataset]:
    """Full headers (private tags included, no pixels) of the PET slices, for the SUV rules."""
    headers = []
    for path in files:
        try:
            headers.append(pydicom.dcmread(path, stop_before_pixels=True))
        except Exception as exc:
            logger.debug("cannot read PET header of %s", path)
            raise StudyInputError(f"cannot read the header of PET file {len(headers) + 1} of {len(files)} "
                                  f"({type(exc).__name__})") from exc
    return headers


def suv_factor_for(files: Sequence[Path]) -> SUVFactor:
    """SUVbw factor of a PET series, from all of its slice headers.

    All slices, not one: the QIBA scan time is the earliest AcquisitionTime when it
    precedes SeriesTime, and series-level inputs must agree across slices.
    """
    headers = read_pet_headers(files)
    try:
        return compute_suv_factor(headers)
    except PipelineError:
        raise
    except Exception as exc:  # a header shape the SUV rules did not foresee
        raise SUVInputError("Header", f"cannot compute SUV ({type(exc).__name__}: {exc})".splitlines()[0]) from exc


def load_study(study_dir: str | Path) -> Volumes:
    """Select the series, load CT in HU and PET in SUVbw, and put the SUV on the CT grid.

    SUV per slice: each PET slice's RescaleSlope/Intercept, then the series' SUV
    factor, applied while the PET volume is filled (no extra copy).
    """
    started = time.perf_counter()
    selection = select_series(scan_study(study_dir))
    suv_factor = suv_factor_for(selection.pet.files)
    pet = load_pet_suv(selection.pet.files, suv_factor.factor)
    ct = read_volume(selection.ct.files, modality="CT")
    suv = resample_to(ct.image, pet.image, default=0.0)
    warnings = _unique([*selection.warnings, *suv_factor.warnings, *ct.warnings, *pet.warnings])
    logger.info("loaded study: CT %s, PET %s, SUV factor %.5g, in %.1f s", ct.geometry.size,
                pet.geometry.size, suv_factor.factor, time.perf_counter() - started)
    return Volumes(
        ct=ct.image,
        suv=suv,
        suv_factor=suv_factor,
        selection=selection,
        ct_files=ct.geometry.files,
        pet_files=pet.geometry.files,
        warnings=warnings,
        suv_pet_grid=pet.image,
        ct_geometry=ct.geometry,
        pet_geometry=pet.geometry,
    )


def inspect_study(study_dir: str | Path) -> dict[str, Any]:
    """What the pipeline would use, and why, from headers only; JSON-able.

    Raises the PipelineError that `load_study` would raise (no PET, no CT in the
    PET's frame of reference, irregular geometry, missing SUV inputs).
    """
    scan = scan_study(study_dir)
    selection = select_series(scan)
    ct_geometry = describe_geometry(selection.ct.files)
    pet_geometry = describe_geometry(selection.pet.files)
    suv_factor = suv_factor_for(selection.pet.files)
    slopes = [s.slope for s in pet_geometry.slices]
    return {
        "study_dir": str(Path(study_dir)),
        "scan": scan.to_dict(),
        "series": [d.to_dict() for d in selection.decisions],
        "ct": {"series": selection.ct.to_dict(), "geometry": ct_geometry.to_dict()},
        "pet": {
            "series": selection.pet.to_dict(),
            "geometry": pet_geometry.to_dict(),
            "rescale_slope_range": [min(slopes), max(slopes)],
        },
        "suv": suv_factor.to_dict(),
        "warnings": _unique([*selection.warnings, *suv_factor.warnings, *ct_geometry.warnings,
                             *pet_geometry.warnings]),
    }
