"""Turn a CT or PET series into a float32 SimpleITK volume, or refuse with the reason.

Slices are ordered by their position along the slice normal (ImagePositionPatient
projected onto row x column of ImageOrientationPatient), never by file name or
InstanceNumber. The image is in LPS with its direction taken from
ImageOrientationPatient, so physical points match DICOM patient coordinates.

Refusals (GeometryError), with the tolerances they use:
- missing slices or uneven spacing: a slice further than
  max(SPACING_TOLERANCE_MM, SPACING_TOLERANCE_FRACTION x spacing), i.e. 0.05 mm
  or 1 % of the spacing, whichever is larger, from the evenly spaced grid
  between the first and last slice;
- gantry tilt: GantryDetectorTilt beyond TILT_TOLERANCE_DEG, or slice positions
  that drift across the slice plane (progression not parallel to the normal)
  by more than 0.05 mm plus tan(TILT_TOLERANCE_DEG) per mm along the normal;
- row and column directions that are not orthogonal;
- slices differing in orientation, matrix size or pixel spacing.
We refuse rather than resample: silently reshaping a tilted or gapped series
moves nodes by millimetres, and the site can send a regular reconstruction.

Enhanced (multi-frame) CT/PET and dynamic or gated PET are refused with
UnsupportedImageError. Compressed transfer syntaxes (JPEG 2000, JPEG lossless,
JPEG-LS, RLE) decode through pydicom's pixel handlers (pylibjpeg, gdcm).

Memory: the volume is allocated once as a float32 SimpleITK image and filled
slice by slice (in-place paste), so one float32 copy exists at a time.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import Dataset

from pipeline.errors import GeometryError, PipelineError, StudyInputError

logger = logging.getLogger(__name__)

SPACING_TOLERANCE_MM = 0.05
SPACING_TOLERANCE_FRACTION = 0.01
TILT_TOLERANCE_DEG = 0.1
ORIENTATION_TOLERANCE = 1e-4  # per direction cosine, between slices
ORTHOGONALITY_TOLERANCE = 1e-3  # |row . column|
DUPLICATE_TOLERANCE_MM = SPACING_TOLERANCE_MM

GEOMETRY_TAGS = [
    "SOPInstanceUID", "Modality", "InstanceNumber", "ImagePositionPatient",
    "ImageOrientationPatient", "PixelSpacing", "Rows", "Columns", "SamplesPerPixel",
    "NumberOfFrames", "RescaleSlope", "RescaleIntercept", "GantryDetectorTilt",
    "SliceThickness", "SpacingBetweenSlices", "SeriesType", "NumberOfSlices",
    "AcquisitionDate", "AcquisitionTime", "FrameReferenceTime", "TriggerTime",
    "TemporalPositionIdentifier", "TemporalPositionIndex",
]


class UnsupportedImageError(StudyInputError):
    """Images we deliberately do not read (multi-frame, dynamic/gated, colour)."""


@dataclass(frozen=True)
class SliceHeader:
    """What one file contributes to the volume, read without its pixels."""

    path: Path
    modality: str
    instance_number: int | None
    position: tuple[float, float, float]
    orientation: tuple[float, ...]
    rows: int
    columns: int
    pixel_spacing: tuple[float, float]  # (row spacing, column spacing) as in DICOM
    slope: float
    intercept: float
    gantry_tilt: float
    time_key: tuple[str, ...]  # differs between time frames at one position
    slice_thickness: float | None
    spacing_between_slices: float | None
    series_type: tuple[str, ...]
    number_of_slices: int | None


@dataclass(frozen=True)
class VolumeGeometry:
    """The regular grid that a series forms, checked, with its slices in order."""

    size: tuple[int, int, int]  # (columns, rows, slices), SimpleITK order
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]  # row-major 3x3, columns = row dir, column dir, normal
    slices: tuple[SliceHeader, ...]
    warnings: tuple[str, ...] = ()

    @property
    def files(self) -> list[Path]:
        return [s.path for s in self.slices]

    def corner_points(self) -> np.ndarray:
        """Physical LPS positions (mm) of the 8 corner voxel centres."""
        d = np.array(self.direction).reshape(3, 3)
        idx = np.array([[i, j, k] for i in (0, self.size[0] - 1) for j in (0, self.size[1] - 1)
                        for k in (0, self.size[2] - 1)], dtype=float)
        return np.array(self.origin) + (idx * np.array(self.spacing)) @ d.T

    def to_dict(self) -> dict[str, Any]:
        corners = self.corner_points()
        return {
            "size": list(self.size),
            "spacing_mm": [round(v, 4) for v in self.spacing],
            "origin_mm": [round(v, 3) for v in self.origin],
            "direction": [round(v, 6) for v in self.direction],
            "image_orientation_patient": [round(v, 6) for v in self.slices[0].orientation],
            "extent_mm": [round(n * s, 2) for n, s in zip(self.size, self.spacing)],
            "bounds_mm": {axis: [round(float(corners[:, a].min()), 2), round(float(corners[:, a].max()), 2)]
                          for a, axis in enumerate("xyz")},
            "warnings": list(self.warnings),
        }


@dataclass(frozen=True)
class LoadedVolume:
    """A float32 volume and the geometry (with warnings) it was built from."""

    image: sitk.Image
    geometry: VolumeGeometry

    @property
    def warnings(self) -> tuple[str, ...]:
        return self.geometry.warnings


# ---------------------------------------------------------------- headers


def _float_or(value: Any, default: float | None) -> float | None:
    try:
        return default if value is None or value == "" else float(value)
    except (TypeError, ValueError):
        return default


def _instance_number(value: Any) -> int | None:
    number = _float_or(value, None)
    return int(number) if number is not None and math.isfinite(number) else None


def _which(instance_number: Any) -> str:
    """Names a slice in messages by InstanceNumber: file names in a spool are UIDs."""
    number = _instance_number(instance_number)
    return f"the slice with InstanceNumber {number}" if number is not None else "a slice without InstanceNumber"


def _floats(ds: Dataset, keyword: str, count: int, what: str) -> tuple[float, ...]:
    try:
        value = ds.get(keyword)
        numbers = tuple(float(v) for v in value) if value is not None else ()
    except (TypeError, ValueError):
        numbers = ()
    if len(numbers) != count or not all(math.isfinite(v) for v in numbers):
        raise GeometryError(f"{what} has no valid {keyword}")
    return numbers


def _slice_header(path: Path, ds: Dataset) -> SliceHeader:
    what = _which(ds.get("InstanceNumber"))
    frames = int(_float_or(ds.get("NumberOfFrames"), 1) or 1)
    if frames > 1:
        raise UnsupportedImageError(
            f"multi-frame (Enhanced) images are not supported ({frames} frames in one file); "
            "send classic single-frame CT/PET")
    samples = ds.get("SamplesPerPixel", 1)
    if samples not in (None, 1):
        raise UnsupportedImageError(f"{samples} samples per pixel: colour images are not CT or PET")
    rows, columns = ds.get("Rows"), ds.get("Columns")
    if not rows or not columns:
        raise GeometryError(f"{what} has no Rows/Columns")
    slope = _float_or(ds.get("RescaleSlope"), 1.0)
    intercept = _float_or(ds.get("RescaleIntercept"), 0.0)
    series_type = ds.get("SeriesType")
    series_type = (tuple(str(v).upper() for v in series_type) if isinstance(series_type, Sequence)
                   and not isinstance(series_type, str) else ((str(series_type).upper(),) if series_type else ()))
    n_slices = ds.get("NumberOfSlices")
    return SliceHeader(
        path=path,
        modality=str(ds.get("Modality", "") or "").upper(),
        instance_number=_instance_number(ds.get("InstanceNumber")),
        position=_floats(ds, "ImagePositionPatient", 3, what),  # type: ignore[arg-type]
        orientation=_floats(ds, "ImageOrientationPatient", 6, what),
        rows=int(rows),
        columns=int(columns),
        pixel_spacing=_floats(ds, "PixelSpacing", 2, what),  # type: ignore[arg-type]
        slope=slope if slope else 1.0,  # type: ignore[arg-type]
        intercept=intercept or 0.0,
        gantry_tilt=_float_or(ds.get("GantryDetectorTilt"), 0.0) or 0.0,
        time_key=tuple(str(ds.get(k, "") or "").strip() for k in (
            "AcquisitionDate", "AcquisitionTime", "FrameReferenceTime", "TriggerTime",
            "TemporalPositionIdentifier", "TemporalPositionIndex")),
        slice_thickness=_float_or(ds.get("SliceThickness"), None),
        spacing_between_slices=_float_or(ds.get("SpacingBetweenSlices"), None),
        series_type=series_type,
        number_of_slices=int(n_slices) if isinstance(n_slices, int) else None,
    )


def read_slice_headers(files: Sequence[str | Path]) -> list[SliceHeader]:
    """Geometry and rescale of each file, read without pixel data."""
    if not files:
        raise StudyInputError("no files given for the series")
    headers = []
    for f in files:
        path = Path(f)
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=GEOMETRY_TAGS)
        except Exception as exc:
            logger.debug("cannot read header of %s", path)
            raise StudyInputError(f"cannot read the DICOM header of file {len(headers) + 1} of {len(files)} "
                                  f"({type(exc).__name__})") from exc
        try:
            headers.append(_slice_header(path, ds))
        except PipelineError:
            logger.debug("refused slice file %s", path)
            raise
    return headers


# ---------------------------------------------------------------- geometry


def _unit(v: np.ndarray, what: str) -> np.ndarray:
    norm = float(np.linalg.norm(v))
    if norm < 1e-6:
        raise GeometryError(f"ImageOrientationPatient has a zero {what} direction")
    return v / norm


def plan_volume(headers: Sequence[SliceHeader]) -> VolumeGeometry:
    """Sort, de-duplicate and check slices; the grid they form, or GeometryError."""
    if not headers:
        raise StudyInputError("no slices in the series")
    first = headers[0]
    warnings: list[str] = []

    if first.modality == "PT" and first.series_type[:1] in (("DYNAMIC",), ("GATED",)):
        raise UnsupportedImageError(
            f"{first.series_type[0].lower()} PET (SeriesType {'/'.join(first.series_type)}) is not supported; "
            "send a static PET")
    for h in headers:
        if any(abs(a - b) > ORIENTATION_TOLERANCE for a, b in zip(h.orientation, first.orientation)):
            raise GeometryError("slices have different ImageOrientationPatient")
        if (h.rows, h.columns) != (first.rows, first.columns):
            raise GeometryError(f"slices differ in matrix size ({first.rows}x{first.columns} "
                                f"and {h.rows}x{h.columns})")
        if any(abs(a - b) > 1e-4 * max(1.0, b) for a, b in zip(h.pixel_spacing, first.pixel_spacing)):
            raise GeometryError(f"slices differ in PixelSpacing ({list(first.pixel_spacing)} "
                                f"and {list(h.pixel_spacing)})")
    tilts = [h.gantry_tilt for h in headers if abs(h.gantry_tilt) > 0.01]
    if tilts:
        raise GeometryError(f"gantry tilt of {tilts[0]:g} degrees (GantryDetectorTilt): tilted series are "
                            "refused, not resampled")

    row = _unit(np.array(first.orientation[:3]), "row")
    col = _unit(np.array(first.orientation[3:]), "column")
    dot = float(np.dot(row, col))
    if abs(dot) > ORTHOGONALITY_TOLERANCE:
        raise GeometryError(f"row and column directions are not orthogonal (ImageOrientationPatient, "
                            f"angle {math.degrees(math.acos(max(-1.0, min(1.0, dot)))):.2f} degrees)")
    normal = np.cross(row, col)

    positions = np.array([h.position for h in headers], dtype=float)
    along = positions @ normal
    order = sorted(range(len(headers)), key=lambda i: (along[i], headers[i].instance_number or 0,
                                                       str(headers[i].path)))
    kept: list[int] = []
    n_duplicates = 0
    for i in order:
        if kept and abs(along[i] - along[kept[-1]]) < DUPLICATE_TOLERANCE_MM:
            if headers[i].time_key != headers[kept[-1]].time_key:
                raise UnsupportedImageError(
                    f"several time points at position {along[i]:.2f} mm along the slice normal "
                    "(dynamic, gated or repeated acquisition in one series); send one static series")
            n_duplicates += 1
            continue
        kept.append(i)
    if n_duplicates:
        warnings.append(f"{n_duplicates} duplicate slice position(s) in the {first.modality or 'image'} series; "
                        "kept one slice at each position")

    slices = [headers[i] for i in kept]
    d = along[kept]
    p = positions[kept]
    if len(slices) > 1:
        _check_progression(p, d, normal)
        spacing_z = _check_spacing(d)
    else:
        spacing_z = first.spacing_between_slices or first.slice_thickness or 1.0
        warnings.append(f"a single slice: slice spacing taken as {spacing_z:g} mm from the header")

    expected = first.number_of_slices
    if first.modality == "PT" and expected and expected != len(slices):
        warnings.append(f"the PET header announces {expected} slices (NumberOfSlices); {len(slices)} found")

    direction = np.column_stack([row, col, normal])
    for w in warnings:
        logger.warning("%s", w)
    return VolumeGeometry(
        size=(first.columns, first.rows, len(slices)),
        spacing=(first.pixel_spacing[1], first.pixel_spacing[0], float(spacing_z)),
        origin=tuple(float(v) for v in p[0]),  # type: ignore[arg-type]
        direction=tuple(float(v) for v in direction.ravel()),
        slices=tuple(slices),
        warnings=tuple(warnings),
    )


def _check_progression(positions: np.ndarray, along: np.ndarray, normal: np.ndarray) -> None:
    """Refuse slices whose positions drift across the slice plane (tilt or shear)."""
    delta = positions - positions[0]
    distance = along - along[0]
    in_plane = np.linalg.norm(delta - np.outer(distance, normal), axis=1)
    allowed = SPACING_TOLERANCE_MM + math.tan(math.radians(TILT_TOLERANCE_DEG)) * np.abs(distance)
    worst = int(np.argmax(in_plane - allowed))
    if in_plane[worst] > allowed[worst]:
        angle = math.degrees(math.atan2(in_plane[worst], abs(distance[worst])))
        raise GeometryError(
            f"slice positions drift {in_plane[worst]:.2f} mm across the slice plane over "
            f"{abs(distance[worst]):.2f} mm (about {angle:.1f} degrees): the slice normal is not parallel to "
            "the slice progression (gantry tilt or sheared series); refused, not resampled")


def _check_spacing(along: np.ndarray) -> float:
    """Mean slice spacing, or GeometryError naming the first irregular gap.

    Regular means every slice lies within the tolerance of the evenly spaced grid
    from the first to the last slice, so small jitter does not add up to a refusal.
    """
    spacing = float((along[-1] - along[0]) / (len(along) - 1))
    tolerance = max(SPACING_TOLERANCE_MM, SPACING_TOLERANCE_FRACTION * spacing)
    deviation = np.abs(along - (along[0] + spacing * np.arange(len(along))))
    if deviation.max() <= tolerance:
        return spacing
    gaps = np.diff(along)
    nominal = float(np.median(gaps)) if len(gaps) >= 3 else float(gaps.min())
    off = np.abs(gaps - nominal)
    irregular = np.flatnonzero(off > tolerance)
    i = int(irregular[0]) if len(irregular) else int(np.argmax(off))
    gap = float(gaps[i])
    where = f"between slices at {along[i]:.2f} and {along[i + 1]:.2f} mm along the slice normal"
    missing = round(gap / nominal) - 1
    if missing >= 1 and abs(gap - (missing + 1) * nominal) <= tolerance * (missing + 1):
        raise GeometryError(f"{missing} missing slice(s): a gap of {gap:.2f} mm {where} "
                            f"(spacing {nominal:.2f} mm, tolerance {tolerance:.2f} mm)")
    raise GeometryError(f"uneven slice spacing: {gap:.2f} mm {where} where the spacing is "
                        f"{nominal:.2f} mm (tolerance {tolerance:.2f} mm)")


def describe_geometry(files: Sequence[str | Path]) -> VolumeGeometry:
    """The checked grid of a series from its headers only (no pixel decoding)."""
    return plan_volume(read_slice_headers(files))


# ---------------------------------------------------------------- pixels


def _decode(path: Path, what: str) -> np.ndarray:
    try:
        ds = pydicom.dcmread(path)
        syntax = ds.file_meta.TransferSyntaxUID
        pixels = ds.pixel_array
    except PipelineError:
        raise
    except Exception as exc:
        try:
            syntax_name = pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID.name
        except Exception:
            syntax_name = "unknown transfer syntax"
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        logger.debug("cannot decode %s", path)
        raise StudyInputError(f"cannot decode the pixel data of {what} ({syntax_name}): {message}") from exc
    logger.debug("decoded %s (%s)", path.name, syntax.name)
    return pixels


def read_volume(files: Sequence[str | Path], value_scale: float = 1.0,
                modality: str | None = None) -> LoadedVolume:
    """Build the float32 volume: per-slice rescale, then `value_scale` (e.g. an SUV factor).

    `modality` ('CT' or 'PT') refuses files of another modality.
    """
    headers = read_slice_headers(files)
    if modality:
        others = sorted({h.modality for h in headers if h.modality != modality})
        if others:
            raise StudyInputError(f"expected {modality} images, found {'/'.join(o or 'no modality' for o in others)}")
    geometry = plan_volume(headers)
    image = sitk.Image([int(v) for v in geometry.size], sitk.sitkFloat32)
    for k, h in enumerate(geometry.slices):
        pixels = _decode(h.path, _which(h.instance_number))
        if pixels.shape != (h.rows, h.columns):
            logger.debug("pixel shape mismatch in %s", h.path)
            raise StudyInputError(f"pixel data of {_which(h.instance_number)} has shape {pixels.shape}, "
                                  f"header says {h.rows}x{h.columns}")
        values = pixels.astype(np.float64)
        values *= h.slope * value_scale
        values += h.intercept * value_scale
        image[:, :, k] = sitk.GetImageFromArray(values.astype(np.float32))  # in-place paste
    image.SetSpacing(geometry.spacing)
    image.SetOrigin(geometry.origin)
    image.SetDirection(geometry.direction)
    logger.info("loaded %s volume %s at %s mm", modality or headers[0].modality, geometry.size,
                tuple(round(s, 3) for s in geometry.spacing))
    return LoadedVolume(image=image, geometry=geometry)


def load_pet_suv(files: Sequence[str | Path], suv_factor: float) -> LoadedVolume:
    """PET in SUV: each slice's rescaled value times `suv_factor`, on the PET's own grid."""
    if not (suv_factor > 0 and math.isfinite(suv_factor)):
        raise StudyInputError(f"SUV factor {suv_factor!r} is not a positive number")
    return read_volume(files, value_scale=suv_factor, modality="PT")


def resample_to(reference: sitk.Image, image: sitk.Image, default: float = 0.0) -> sitk.Image:
    """`image` on `reference`'s grid by linear interpolation (identity transform: same frame of reference)."""
    return sitk.Resample(image, reference, sitk.Transform(), sitk.sitkLinear, float(default), sitk.sitkFloat32)
