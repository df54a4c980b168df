"""SUVbw and SUL scale factors from PET headers, per the QIBA vendor-neutral pseudo-code.

Why this exists: a PET voxel is stored as an integer that, after RescaleSlope and
RescaleIntercept, is an activity concentration (BQML), vendor counts (CNTS) or an
already-normalised SUV (GML). Staging thresholds (SUVmax >= 2.5, blood pool) need
SUVbw, so every rule here follows the QIBA "SUV vendor-neutral pseudo-code"
(https://qibawiki.rsna.org/index.php/Standardized_Uptake_Value_(SUV)) with the
semantics of cornerstonejs/calculate-suv, whose real vendor headers are our tests:

* BQML: SUVbw = value * weight[g] / (dose[Bq] * 2^(-t / T_half)); t runs from the
  injection to the scan time. DecayCorrection ADMIN means the images are already
  decay-corrected to the injection, so no decay factor is applied.
* CNTS (Philips): the private SUV Scale Factor (7053,1000) when present, else the
  Activity Concentration Scale Factor (7053,1009), which turns the value into Bq/ml
  and then proceeds as BQML.
* GML: the values already are SUVbw (factor 1).
* Scan time: SeriesDate/Time, unless it is later than the earliest
  AcquisitionDate/Time of the instances (a re-reconstructed series keeps the
  acquisition time but gets a new series time); then the GE private scan
  date/time (0009,100D) when present, else the earliest acquisition date/time.
* Injection time: RadiopharmaceuticalStartDateTime, else RadiopharmaceuticalStartTime
  on the scan date, moved to the day before when it lies after the scan time.

Every missing or impossible input raises `SUVInputError` naming the DICOM
attribute; nothing is silently defaulted. The functions are pure: no I/O. Log lines
carry numbers and attribute names only, never patient names, IDs or dates.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import date, datetime, time, timedelta
from typing import Any, Literal

from pipeline.errors import SUVInputError

logger = logging.getLogger(__name__)

__all__ = [
    "SUVFactor",
    "SULFactor",
    "compute_suv_factor",
    "compute_sul_factor",
    "lean_body_mass_kg",
    "UPTAKE_WINDOW_S",
]

#: QIBA FDG profile: the scan should start 55 to 75 min after the injection.
UPTAKE_WINDOW_S: tuple[float, float] = (55 * 60.0, 75 * 60.0)
#: More than this many half-lives between injection and scan is a wrong date, not a scan.
_MAX_HALF_LIVES = 10.0
#: A time-only injection later than the scan is read as "the day before" only if the
#: resulting uptake stays below this; beyond it the header is contradictory.
_MAX_MIDNIGHT_UPTAKE_S = 12 * 3600.0

_PHILIPS_CREATOR = "Philips PET Private Group"
_GE_PET_CREATOR = "GEMS_PETD_01"

# Keys of the plain-mapping form (calculate-suv's instance metadata).
_PHILIPS_GROUP_KEY = "PhilipsPETPrivateGroup"
_GE_SCAN_DT_KEYS = ("GEPrivatePostInjectionDateTime", "GEPrivateScanDateTime")

_RADIOPHARM_KEYS = (
    "RadiopharmaceuticalStartDateTime",
    "RadiopharmaceuticalStartTime",
    "RadionuclideTotalDose",
    "RadionuclideHalfLife",
)

# Attributes that must agree across the instances of one series.
_SERIES_LEVEL_KEYS = (
    "Units",
    "DecayCorrection",
    "CorrectedImage",
    "PatientWeight",
    "PatientSex",
    "PatientSize",
    "SeriesDate",
    "SeriesTime",
    *_RADIOPHARM_KEYS,
)

_SUV_SCALE_FACTOR = "SUVScaleFactor(7053,1000)"
_ACTIVITY_SCALE_FACTOR = "ActivityConcentrationScaleFactor(7053,1009)"
_GE_SCAN_DATETIME = "GEPrivateScanDateTime(0009,100D)"

LBMFormula = Literal["james", "janmahasatian"]


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class SUVFactor:
    """SUVbw per unit of rescaled pixel value, with the inputs and rule that produced it.

    SUVbw = (stored * RescaleSlope + RescaleIntercept) * factor. Fields other than
    `factor`, `units`, `decay_correction` and `method` are None where the rule did not
    need them and the header did not give them.
    """

    factor: float
    units: str
    decay_correction: str
    method: str
    weight_kg: float | None
    dose_bq: float | None
    half_life_s: float | None
    injection_datetime: datetime | None
    scan_datetime: datetime | None
    uptake_seconds: float | None
    decay_factor: float | None = None
    scan_time_source: str | None = None
    injection_time_source: str | None = None
    warnings: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form for result.json (datetimes as ISO 8601 strings)."""
        return _plain(self)


@dataclass(frozen=True)
class SULFactor:
    """SUL (SUV normalised by lean body mass) per unit of rescaled pixel value.

    SUL = (stored * RescaleSlope + RescaleIntercept) * factor, and
    factor = suv.factor * lbm_kg / weight_kg.
    """

    factor: float
    formula: str
    lbm_kg: float
    weight_kg: float
    height_m: float
    sex: str
    suv: SUVFactor
    warnings: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form, with the SUVbw factor it was derived from."""
        return _plain(self)


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _plain(obj) -> dict[str, Any]:
    """A factor dataclass as JSON-able values: datetimes in ISO 8601, tuples as lists, nested factors as dicts."""
    out: dict[str, Any] = {}
    for f in fields(obj):
        value = getattr(obj, f.name)
        if isinstance(value, datetime):
            value = _iso(value)
        elif isinstance(value, tuple):
            value = list(value)
        elif hasattr(value, "to_dict"):
            value = value.to_dict()
        out[f.name] = value
    return out


# --------------------------------------------------------------------------- header access


class _Header:
    """One accessor over a pydicom Dataset, a DICOM-JSON dict or a plain-name mapping.

    Why: the pipeline hands us pydicom Datasets, while the public vendor test headers
    (and calculate-suv's API) use flat attribute names with the radiopharmaceutical
    values lifted to the top level and Philips private values under
    `PhilipsPETPrivateGroup`. One adapter keeps a single code path for both.
    """

    def __init__(self, source: Any):
        self._ds: Any = None
        self._map: Mapping | None = None
        if _is_dataset(source):
            self._ds = source
        elif isinstance(source, Mapping):
            if source and all(_is_dicom_json_tag(k) for k in source):
                self._ds = _dataset_from_json(source)
            else:
                self._map = source
        else:
            raise SUVInputError(
                "Header",
                f"expected a pydicom Dataset or a mapping of attributes, got {type(source).__name__}",
            )

    def get(self, keyword: str) -> Any:
        """The attribute's value, or None when absent or empty.

        Radiopharmaceutical values are read at the top level first (the flat form),
        then from the first RadiopharmaceuticalInformationSequence item.
        """
        container = self._ds if self._ds is not None else self._map
        value = _empty_to_none(container.get(keyword))
        if value is None and keyword in _RADIOPHARM_KEYS:
            item = _first_item(container.get("RadiopharmaceuticalInformationSequence"))
            if item is not None and hasattr(item, "get"):
                value = _empty_to_none(item.get(keyword))
        return value

    def radiopharm_item_count(self) -> int:
        container = self._ds if self._ds is not None else self._map
        seq = container.get("RadiopharmaceuticalInformationSequence")
        if seq is None:
            return 0
        if isinstance(seq, Mapping):
            return 1
        try:
            return len(seq)
        except TypeError:
            return 0

    def philips_suv_scale_factor(self) -> Any:
        return self._philips(0x00, "SUVScaleFactor")

    def philips_activity_concentration_scale_factor(self) -> Any:
        return self._philips(0x09, "ActivityConcentrationScaleFactor")

    def _philips(self, element_offset: int, key: str) -> Any:
        if self._map is not None:
            group = self._map.get(_PHILIPS_GROUP_KEY)
            return _empty_to_none(group.get(key)) if isinstance(group, Mapping) else None
        return _private_value(self._ds, 0x7053, element_offset, _PHILIPS_CREATOR)

    def ge_scan_datetime(self) -> Any:
        if self._map is not None:
            for key in _GE_SCAN_DT_KEYS:
                value = _empty_to_none(self._map.get(key))
                if value is not None:
                    return value
            return None
        return _private_value(self._ds, 0x0009, 0x0D, _GE_PET_CREATOR)


def _is_dataset(obj: Any) -> bool:
    from pydicom.dataset import Dataset

    return isinstance(obj, Dataset)


def _is_dicom_json_tag(key: Any) -> bool:
    return isinstance(key, str) and len(key) == 8 and all(c in "0123456789abcdefABCDEF" for c in key)


def _dataset_from_json(source: Mapping) -> Any:
    from pydicom.dataset import Dataset

    try:
        return Dataset.from_json(dict(source))
    except Exception as err:  # malformed DICOM JSON of any kind
        raise SUVInputError("Header", f"not a valid DICOM JSON object ({type(err).__name__})") from err


def _first_item(seq: Any) -> Any:
    if seq is None:
        return None
    if isinstance(seq, Mapping):
        return seq
    try:
        return seq[0] if len(seq) else None
    except (TypeError, IndexError, KeyError):
        return None


def _private_value(ds: Any, group: int, element_offset: int, creator: str) -> Any:
    """A private element by its creator; else the literal tag QIBA names (block 0x10)."""
    try:
        return _empty_to_none(ds.get_private_item(group, element_offset, creator).value)
    except KeyError:
        pass
    literal = (group << 16) | 0x1000 | element_offset
    if literal in ds:
        owner = ds.get((group << 16) | 0x0010)
        owner_name = str(owner.value).strip() if owner is not None else ""
        if not owner_name or owner_name.lower() == creator.lower():
            return _empty_to_none(ds[literal].value)
    return None


def _empty_to_none(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("ascii", errors="replace")
    if isinstance(value, str):
        return value if value.strip() else None
    if isinstance(value, (list, tuple)) or type(value).__name__ in ("MultiValue", "Sequence"):
        return value if len(value) else None
    return value


# --------------------------------------------------------------------------- parsing


def _number(header: _Header, keyword: str, *, required: bool) -> float | None:
    value = header.get(keyword)
    if value is None:
        if required:
            raise SUVInputError(keyword, "is missing; it is needed to compute SUV")
        return None
    return _to_float(value, keyword)


def _to_float(value: Any, keyword: str) -> float:
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        values = list(value)
        if len(values) != 1:
            raise SUVInputError(keyword, f"expected one value, got {len(values)}")
        value = values[0]
    try:
        number = float(value.strip()) if isinstance(value, str) else float(value)
    except (TypeError, ValueError):
        raise SUVInputError(keyword, f"is not a number: {value!r}") from None
    if not math.isfinite(number):
        raise SUVInputError(keyword, f"is not finite: {number!r}")
    return number


def _text(header: _Header, keyword: str) -> str | None:
    value = header.get(keyword)
    return None if value is None else str(value).strip().upper()


_TM_RE = re.compile(r"^(\d{2})(?:(\d{2})(?:(\d{2})(?:\.(\d{1,6}))?)?)?$")
_DA_RE = re.compile(r"^(\d{4})(\d{2})(\d{2})$")
_DT_RE = re.compile(r"^(\d{8})(\d{2}(?:\d{2}(?:\d{2}(?:\.\d{1,6})?)?)?)([+-]\d{4})?$")


def _parse_tm(value: Any, keyword: str) -> time:
    if isinstance(value, time):
        return value
    text = str(value).strip().replace(":", "")  # ACR-NEMA HH:MM:SS still seen in old exports
    match = _TM_RE.match(text)
    if not match:
        raise SUVInputError(keyword, f"is not a valid DICOM TM value: {text!r}")
    hh, mm, ss, frac = match.groups()
    try:
        return time(int(hh), int(mm or 0), int(ss or 0), int((frac or "0").ljust(6, "0")))
    except ValueError:
        raise SUVInputError(keyword, f"is not a valid time of day: {text!r}") from None


def _parse_da(value: Any, keyword: str) -> date:
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    text = str(value).strip().replace(".", "").replace("-", "")
    match = _DA_RE.match(text)
    if not match:
        raise SUVInputError(keyword, "is not a valid DICOM DA value (YYYYMMDD)")
    try:
        return date(int(match[1]), int(match[2]), int(match[3]))
    except ValueError:
        raise SUVInputError(keyword, "is not a valid calendar date") from None


def _parse_dt(value: Any, keyword: str, warnings: list[str]) -> datetime:
    """DICOM DT to a naive local datetime; a UTC offset suffix is dropped with a warning.

    Why naive: the series and acquisition times it is compared with are naive local
    clock times; an offset, when present, describes that same clock.
    """
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            warnings.append(f"{keyword}: UTC offset ignored; times compared as local clock times")
            value = value.replace(tzinfo=None)
        return value
    text = str(value).strip()
    match = _DT_RE.match(text)
    if not match:
        raise SUVInputError(keyword, "is not a valid DICOM DT value (YYYYMMDDHH[MM[SS[.F]]][&ZZXX])")
    day = _parse_da(match[1], keyword)
    clock = _parse_tm(match[2], keyword)
    if match[3]:
        warnings.append(f"{keyword}: UTC offset ignored; times compared as local clock times")
    return datetime.combine(day, clock)


# --------------------------------------------------------------------------- timing


@dataclass(frozen=True)
class _Timing:
    injection: datetime
    scan: datetime
    uptake_s: float
    scan_source: str
    injection_source: str


def _scan_datetime(headers: Sequence[_Header], warnings: list[str]) -> tuple[datetime, str]:
    """QIBA scan time: series date/time unless the earliest acquisition is earlier.

    Why: some scanners rewrite SeriesTime when a series is re-reconstructed or
    post-processed, while AcquisitionTime keeps the start of the bed positions.
    """
    first = headers[0]
    series_date_value = first.get("SeriesDate")
    if series_date_value is None:
        raise SUVInputError("SeriesDate", "is missing; it is needed for the decay interval")
    series_time_value = first.get("SeriesTime")
    if series_time_value is None:
        raise SUVInputError("SeriesTime", "is missing; it is needed for the decay interval")
    series_dt = datetime.combine(
        _parse_da(series_date_value, "SeriesDate"), _parse_tm(series_time_value, "SeriesTime")
    )

    acquisitions: list[datetime] = []
    date_borrowed = False
    for header in headers:
        acq_time = header.get("AcquisitionTime")
        if acq_time is None:
            continue
        acq_date = header.get("AcquisitionDate")
        if acq_date is None:
            acq_date, date_borrowed = series_date_value, True
        acquisitions.append(
            datetime.combine(_parse_da(acq_date, "AcquisitionDate"), _parse_tm(acq_time, "AcquisitionTime"))
        )
    if not acquisitions:
        warnings.append("AcquisitionTime absent: QIBA series/acquisition check not possible; SeriesTime used")
        return series_dt, "SeriesDateTime"
    if date_borrowed:
        warnings.append("AcquisitionDate absent: AcquisitionTime taken on the SeriesDate")
    if len(acquisitions) < len(headers):
        warnings.append("AcquisitionTime absent in some instances: the earliest of the others used")

    earliest = min(acquisitions)
    if series_dt <= earliest:
        return series_dt, "SeriesDateTime"

    ge_scan = first.ge_scan_datetime()
    if ge_scan is not None:
        return _parse_dt(ge_scan, _GE_SCAN_DATETIME, warnings), _GE_SCAN_DATETIME
    logger.debug(
        "SeriesTime is %.6f s after the earliest AcquisitionTime: acquisition time used",
        (series_dt - earliest).total_seconds(),
    )
    return earliest, "AcquisitionDateTime(earliest)"


def _has_timing_inputs(header: _Header) -> bool:
    has_start = (
        header.get("RadiopharmaceuticalStartDateTime") is not None
        or header.get("RadiopharmaceuticalStartTime") is not None
    )
    return has_start and header.get("SeriesDate") is not None and header.get("SeriesTime") is not None


def _timing(headers: Sequence[_Header], half_life_s: float | None, warnings: list[str]) -> _Timing:
    """Injection and scan date/times, and the decay interval between them (> 0)."""
    scan, scan_source = _scan_datetime(headers, warnings)
    first = headers[0]

    start_dt_value = first.get("RadiopharmaceuticalStartDateTime")
    start_tm_value = first.get("RadiopharmaceuticalStartTime")
    if start_dt_value is not None:
        attribute = "RadiopharmaceuticalStartDateTime"
        injection = _parse_dt(start_dt_value, attribute, warnings)
        injection_source = attribute
    elif start_tm_value is not None:
        attribute = "RadiopharmaceuticalStartTime"
        injection = datetime.combine(scan.date(), _parse_tm(start_tm_value, attribute))
        injection_source = "RadiopharmaceuticalStartTime+scan date"
        if injection > scan:
            previous_day = injection - timedelta(days=1)
            uptake = (scan - previous_day).total_seconds()
            if uptake > _MAX_MIDNIGHT_UPTAKE_S:
                raise SUVInputError(
                    attribute,
                    f"the injection time is {(injection - scan).total_seconds():.0f} s after the scan time "
                    f"({scan_source}); as the previous day it would give {uptake:.0f} s of uptake, "
                    "which is not a plausible scan across midnight",
                )
            injection = previous_day
            injection_source = "RadiopharmaceuticalStartTime+previous day"
            warnings.append("injection time is later than the scan time of day: injection taken on the previous day")
    else:
        raise SUVInputError(
            "RadiopharmaceuticalStartDateTime",
            "is missing, and so is RadiopharmaceuticalStartTime; the injection time is needed for decay correction",
        )

    uptake_s = (scan - injection).total_seconds()
    if uptake_s <= 0:
        raise SUVInputError(
            attribute, f"the injection is not before the scan ({scan_source}): decay interval {uptake_s:.3f} s"
        )
    if half_life_s is not None and uptake_s > _MAX_HALF_LIVES * half_life_s:
        raise SUVInputError(
            attribute,
            f"decay interval {uptake_s:.0f} s exceeds {_MAX_HALF_LIVES:g} half-lives; the injection or scan date is wrong",
        )
    return _Timing(injection, scan, uptake_s, scan_source, injection_source)


# --------------------------------------------------------------------------- validation


def _positive(value: float | None, keyword: str, unit: str) -> float | None:
    if value is not None and value <= 0:
        raise SUVInputError(keyword, f"must be positive, got {value:g} {unit}")
    return value


def _weight_kg(header: _Header, *, required: bool) -> float | None:
    weight = _positive(_number(header, "PatientWeight", required=required), "PatientWeight", "kg")
    if weight is not None and weight > 500:
        raise SUVInputError("PatientWeight", f"{weight:g} is not a plausible weight in kg (grams given?)")
    return weight


def _check_corrected_image(header: _Header, warnings: list[str]) -> None:
    """QIBA: SUV only from attenuation- and decay-corrected images."""
    value = header.get("CorrectedImage")
    if value is None:
        warnings.append("CorrectedImage absent: attenuation and decay correction (ATTN, DECY) not confirmed")
        return
    flags = {str(v).strip().upper() for v in ([value] if isinstance(value, str) else list(value))}
    missing = [flag for flag in ("ATTN", "DECY") if flag not in flags]
    if missing:
        raise SUVInputError(
            "CorrectedImage", f"lacks {' and '.join(missing)}; SUV needs attenuation- and decay-corrected images"
        )


def _normalise(value: Any) -> Any:
    """Comparable form of a series-level value (numbers as floats, strings stripped)."""
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip()
        try:
            return float(text)
        except ValueError:
            return text.upper()
    if isinstance(value, (int, float)):
        return float(value)
    try:
        return tuple(_normalise(v) for v in value)
    except TypeError:
        return str(value)


def _check_single_series(headers: Sequence[_Header]) -> None:
    first = headers[0]
    for keyword in _SERIES_LEVEL_KEYS:
        reference = _normalise(first.get(keyword))
        for header in headers[1:]:
            if _normalise(header.get(keyword)) != reference:
                raise SUVInputError(keyword, "differs between the instances; they are not one PET series")


def _as_headers(header: Any) -> list[_Header]:
    if _is_dataset(header) or isinstance(header, Mapping):
        return [_Header(header)]
    if isinstance(header, (str, bytes)):
        raise SUVInputError("Header", "expected a Dataset, a mapping or a sequence of them, got a string")
    try:
        items = list(header)
    except TypeError:
        raise SUVInputError(
            "Header", f"expected a Dataset, a mapping or a sequence of them, got {type(header).__name__}"
        ) from None
    if not items:
        raise SUVInputError("Header", "no instances given")
    return [_Header(item) for item in items]


# --------------------------------------------------------------------------- SUVbw


def compute_suv_factor(header: Any) -> SUVFactor:
    """SUVbw factor for one PET series, from one instance or several of the same series.

    `header` is a pydicom Dataset, a mapping (plain attribute names, or DICOM JSON),
    or a sequence of them. With several instances the scan time is the QIBA choice
    between SeriesTime and the *earliest* AcquisitionTime over all of them, as
    calculate-suv does, so the factor is the same for every instance.
    """
    headers = _as_headers(header)
    _check_single_series(headers)
    first = headers[0]
    warnings: list[str] = []

    if first.radiopharm_item_count() > 1:
        warnings.append("RadiopharmaceuticalInformationSequence has several items: the first is used")

    units = _text(first, "Units")
    if units is None:
        raise SUVInputError("Units", "is missing; the pixel unit decides the SUV rule")
    if units not in ("BQML", "CNTS", "GML"):
        raise SUVInputError("Units", f"{units!r} is not supported for SUV (expected BQML, CNTS or GML)")

    decay_correction = _text(first, "DecayCorrection")
    if decay_correction is None:
        raise SUVInputError("DecayCorrection", "is missing; it decides how the dose is decay-corrected")
    if decay_correction not in ("START", "ADMIN"):
        raise SUVInputError(
            "DecayCorrection", f"{decay_correction!r} is not supported for SUV (expected START or ADMIN)"
        )
    _check_corrected_image(first, warnings)

    method, vendor_factor = _select_method(headers, units)
    needs_dose = method in ("BQML", "CNTS-PhilipsActivityConcentrationScaleFactor")

    weight = _weight_kg(first, required=needs_dose)
    dose = _positive(_number(first, "RadionuclideTotalDose", required=needs_dose), "RadionuclideTotalDose", "Bq")
    half_life = _positive(_number(first, "RadionuclideHalfLife", required=needs_dose), "RadionuclideHalfLife", "s")

    timing: _Timing | None = None
    if (needs_dose and decay_correction == "START") or _has_timing_inputs(first):
        timing = _timing(headers, half_life, warnings)
    else:
        # Not an input of the factor here (ADMIN, GML, Philips SUV factor): reported only.
        warnings.append("uptake time unknown: the series or injection time is missing")

    decay_factor: float | None = None
    if needs_dose:
        assert weight is not None and dose is not None and half_life is not None
        if decay_correction == "ADMIN":
            decay_factor = 1.0  # images already decay-corrected to the administration time
        else:
            assert timing is not None
            decay_factor = 2.0 ** (-timing.uptake_s / half_life)
        factor = weight * 1000.0 / (dose * decay_factor)
        if vendor_factor is not None:
            factor *= vendor_factor  # (7053,1009) turns Philips CNTS into Bq/ml first
    elif method == "GML":
        factor = 1.0
    else:
        assert vendor_factor is not None
        factor = vendor_factor

    if timing is not None:
        low, high = UPTAKE_WINDOW_S
        if not low <= timing.uptake_s <= high:
            warnings.append(
                f"uptake time {timing.uptake_s:.1f} s ({timing.uptake_s / 60:.1f} min) is outside the "
                f"{low / 60:.0f}-{high / 60:.0f} min window of the QIBA FDG profile; SUVs are not comparable with "
                "standard-protocol scans (the reading's own window is positivity.uptake_window_min)"
            )

    result = SUVFactor(
        factor=factor,
        units=units,
        decay_correction=decay_correction,
        method=method,
        weight_kg=weight,
        dose_bq=dose,
        half_life_s=half_life,
        injection_datetime=timing.injection if timing else None,
        scan_datetime=timing.scan if timing else None,
        uptake_seconds=timing.uptake_s if timing else None,
        decay_factor=decay_factor,
        scan_time_source=timing.scan_source if timing else None,
        injection_time_source=timing.injection_source if timing else None,
        warnings=tuple(warnings),
    )
    logger.debug(
        "SUVbw factor %.6g (method %s, decay %s, scan time from %s, uptake %s s)",
        result.factor,
        result.method,
        result.decay_correction,
        result.scan_time_source,
        "unknown" if result.uptake_seconds is None else f"{result.uptake_seconds:.0f}",
    )
    for message in warnings:
        logger.warning("SUV: %s", message)
    return result


def _select_method(headers: Sequence[_Header], units: str) -> tuple[str, float | None]:
    """The QIBA rule for the pixel unit, with the Philips private factor where it applies."""
    if units == "BQML":
        return "BQML", None  # Philips private factors are ignored for BQML, as in QIBA
    if units == "GML":
        return "GML", None

    suv_values = [_optional_float(h.philips_suv_scale_factor(), _SUV_SCALE_FACTOR) for h in headers]
    if all(v is not None and v != 0 for v in suv_values):
        return "CNTS-PhilipsSUVScaleFactor", _one_positive(suv_values, _SUV_SCALE_FACTOR)

    acsf_values = [
        _optional_float(h.philips_activity_concentration_scale_factor(), _ACTIVITY_SCALE_FACTOR) for h in headers
    ]
    if all(not v for v in suv_values) and all(v is not None and v != 0 for v in acsf_values):
        return "CNTS-PhilipsActivityConcentrationScaleFactor", _one_positive(acsf_values, _ACTIVITY_SCALE_FACTOR)

    raise SUVInputError(
        _SUV_SCALE_FACTOR,
        "Units is CNTS but neither the Philips SUV Scale Factor (7053,1000) nor the Activity "
        "Concentration Scale Factor (7053,1009) is usable in every instance",
    )


def _optional_float(value: Any, keyword: str) -> float | None:
    return None if value is None else _to_float(value, keyword)


def _one_positive(values: Sequence[float | None], keyword: str) -> float:
    if len(set(values)) != 1:
        raise SUVInputError(keyword, "differs between the instances of the series")
    value = values[0]
    assert value is not None
    if value <= 0:
        raise SUVInputError(keyword, f"must be positive, got {value:g}")
    return value


# --------------------------------------------------------------------------- SUL


def lean_body_mass_kg(
    weight_kg: float, height_m: float, sex: str, formula: LBMFormula = "janmahasatian"
) -> float:
    """Lean body mass in kg by James (1976) or Janmahasatian (2005).

    Why two: James is the historic PERCIST formula but falls for obese patients (it
    peaks near BMI 43 for men and 36 for women, and turns negative beyond);
    Janmahasatian stays monotonic and is what recent guidance prefers.
    """
    weight = _positive(_to_float(weight_kg, "PatientWeight"), "PatientWeight", "kg")
    height = _positive(_to_float(height_m, "PatientSize"), "PatientSize", "m")
    assert weight is not None and height is not None
    if height > 3.0:
        raise SUVInputError("PatientSize", f"{height:g} is not a plausible height in m (cm given?)")
    sex_code = sex.strip().upper() if isinstance(sex, str) else ""
    if sex_code not in ("M", "F"):
        raise SUVInputError("PatientSex", f"{sex!r} is not M or F; lean body mass formulas need one of them")

    if formula == "james":
        ratio_sq = (weight / (height * 100.0)) ** 2
        lbm = 1.10 * weight - 128.0 * ratio_sq if sex_code == "M" else 1.07 * weight - 148.0 * ratio_sq
    elif formula == "janmahasatian":
        bmi = weight / height**2
        lbm = 9270.0 * weight / ((6680.0 + 216.0 * bmi) if sex_code == "M" else (8780.0 + 244.0 * bmi))
    else:
        raise ValueError(f"unknown lean body mass formula {formula!r}; use 'james' or 'janmahasatian'")

    if lbm <= 0:
        raise SUVInputError(
            "PatientWeight",
            f"the {formula} formula gives a non-positive lean body mass for this weight and height; use janmahasatian",
        )
    return lbm


def compute_sul_factor(header: Any, formula: LBMFormula = "janmahasatian") -> SULFactor:
    """SUL factor = SUVbw factor * LBM / weight, for the same inputs as `compute_suv_factor`."""
    suv = compute_suv_factor(header)
    first = _as_headers(header)[0]
    warnings = list(suv.warnings)

    weight = suv.weight_kg if suv.weight_kg is not None else _weight_kg(first, required=True)
    assert weight is not None
    sex = first.get("PatientSex")
    if sex is None:
        raise SUVInputError("PatientSex", "is missing; lean body mass needs M or F")
    height_value = first.get("PatientSize")
    if height_value is None:
        raise SUVInputError("PatientSize", "is missing; lean body mass needs the height in m")
    height = _to_float(height_value, "PatientSize")
    sex_code = str(sex).strip().upper()

    lbm = lean_body_mass_kg(weight, height, sex_code, formula)
    if formula == "james":
        bmi = weight / height**2
        peak_bmi = 1.10 / 256.0 * 1e4 if sex_code == "M" else 1.07 / 296.0 * 1e4
        if bmi > peak_bmi:
            message = (
                f"BMI {bmi:.1f} is above {peak_bmi:.1f}, where the James lean body mass falls as weight rises; "
                "prefer janmahasatian"
            )
            warnings.append(message)
            logger.warning("SUL: %s", message)

    factor = suv.factor * lbm / weight
    logger.debug("SUL factor %.6g (%s, LBM/weight %.4f)", factor, formula, lbm / weight)
    return SULFactor(
        factor=factor,
        formula=formula,
        lbm_kg=lbm,
        weight_kg=weight,
        height_m=height,
        sex=sex_code,
        suv=suv,
        warnings=tuple(warnings),
    )
