"""SUVbw / SUL factors against real vendor headers, a real FDG header, the QIBA DRO numbers
and real PET DICOM slices; plus every refusal naming its DICOM attribute."""

from __future__ import annotations

import copy
import json
import logging
import math
from datetime import datetime
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from pipeline.errors import StudyInputError, SUVInputError
from pipeline.suv import (
    SULFactor,
    SUVFactor,
    compute_sul_factor,
    compute_suv_factor,
    lean_body_mass_kg,
)

VENDOR_CASES = [
    "SIEMENS",
    "GE_MEDICAL_AND_BQML",
    "PHILIPS_BQML",
    "PHILIPS_CNTS_AND_BQML_SUV",
    "PHILIPS_CNTS_AND_SUV",
    "BQML_AC_DT_lessThan_S_DT_SIEMENS",
    "CPS_AND_BQML_AC_DT_-_S_DT",
    "RADIOPHARM_DATETIME_UNDEFINED",
]


# --------------------------------------------------------------------------- fixtures / helpers


@pytest.fixture(scope="module")
def expected(shared_data: Path) -> dict:
    return json.loads((shared_data / "suv" / "expected.json").read_text())


def _vendor(shared_data: Path, name: str) -> list[dict]:
    return json.loads((shared_data / "suv" / "vendor-headers" / f"{name}-instances.json").read_text())


def _basic_header(**overrides) -> dict:
    """A plain, valid BQML header: 60 min uptake, 70 kg, 370 MBq."""
    header = {
        "Units": "BQML",
        "DecayCorrection": "START",
        "CorrectedImage": ["ATTN", "DECY", "SCAT"],
        "PatientWeight": 70.0,
        "PatientSex": "M",
        "PatientSize": 1.75,
        "SeriesDate": "20240102",
        "SeriesTime": "100000",
        "AcquisitionDate": "20240102",
        "AcquisitionTime": "100000",
        "RadiopharmaceuticalStartDateTime": "20240102090000",
        "RadionuclideTotalDose": 370e6,
        "RadionuclideHalfLife": 6586.2,
    }
    header.update(overrides)
    return {k: v for k, v in header.items() if v is not None}


def _bqml_factor(weight_kg: float, dose_bq: float, half_life_s: float, uptake_s: float) -> float:
    return weight_kg * 1000.0 / (dose_bq * 2.0 ** (-uptake_s / half_life_s))


def _pet_dataset(**overrides) -> Dataset:
    """A minimal PET pydicom Dataset with the radiopharmaceutical values in their sequence."""
    ds = Dataset()
    ds.Modality = "PT"
    ds.Units = "BQML"
    ds.DecayCorrection = "START"
    ds.CorrectedImage = ["ATTN", "DECY"]
    ds.PatientWeight = "70"
    ds.PatientSex = "F"
    ds.PatientSize = "1.60"
    ds.SeriesDate = "20240102"
    ds.SeriesTime = "100000"
    ds.AcquisitionDate = "20240102"
    ds.AcquisitionTime = "100000"
    item = Dataset()
    item.RadiopharmaceuticalStartTime = "090000"
    item.RadionuclideTotalDose = "370000000"
    item.RadionuclideHalfLife = "6586.2"
    ds.RadiopharmaceuticalInformationSequence = Sequence([item])
    for key, value in overrides.items():
        setattr(ds, key, value)
    return ds


# --------------------------------------------------------------------------- real vendor headers


@pytest.mark.parametrize("name", VENDOR_CASES)
def test_vendor_header_factor_matches_expected(shared_data: Path, expected: dict, name: str) -> None:
    instances = _vendor(shared_data, name)
    assert len(instances) == 3
    result = compute_suv_factor(instances)
    assert isinstance(result, SUVFactor)
    assert result.factor == pytest.approx(expected["vendor_headers"][name], rel=1e-6)
    json.dumps(result.to_dict())


@pytest.mark.parametrize("name", VENDOR_CASES)
def test_vendor_header_each_instance_alone_gives_same_factor(shared_data: Path, expected: dict, name: str) -> None:
    # calculate-suv returns one factor per instance and checks the first; here every
    # instance alone agrees too (their acquisition times are equal within each set).
    for instance in _vendor(shared_data, name):
        assert compute_suv_factor(instance).factor == pytest.approx(expected["vendor_headers"][name], rel=1e-6)


def test_acquisition_before_series_time_uses_earliest_acquisition(shared_data: Path) -> None:
    result = compute_suv_factor(_vendor(shared_data, "CPS_AND_BQML_AC_DT_-_S_DT"))
    assert result.scan_time_source.startswith("AcquisitionDateTime")
    assert result.scan_datetime == datetime(2020, 12, 17, 13, 3, 48, 234000)
    assert result.uptake_seconds == pytest.approx(3791.234)
    # Using SeriesTime instead would be 45 min later: the factor must differ clearly.
    series_based = _bqml_factor(69, 388e6, 6586.2, 3791.234 + (13 * 3600 + 49 * 60 + 18 - (13 * 3600 + 3 * 60 + 48.234)))
    assert not math.isclose(result.factor, series_based, rel_tol=1e-3)


def test_series_time_used_when_not_after_acquisition(shared_data: Path) -> None:
    result = compute_suv_factor(_vendor(shared_data, "RADIOPHARM_DATETIME_UNDEFINED"))
    assert result.scan_time_source == "SeriesDateTime"
    assert result.injection_time_source == "RadiopharmaceuticalStartTime+scan date"
    assert result.uptake_seconds == pytest.approx(3871.843)


def test_earliest_acquisition_over_instances(shared_data: Path) -> None:
    instances = _vendor(shared_data, "CPS_AND_BQML_AC_DT_-_S_DT")
    instances[1]["AcquisitionTime"] = "125948.234000"  # 4 min earlier than the others
    result = compute_suv_factor(instances)
    assert result.scan_datetime == datetime(2020, 12, 17, 12, 59, 48, 234000)


def test_philips_private_factors_are_ignored_for_bqml(shared_data: Path) -> None:
    instances = _vendor(shared_data, "PHILIPS_BQML")
    assert instances[0]["PhilipsPETPrivateGroup"]["SUVScaleFactor"]
    result = compute_suv_factor(instances)
    assert result.method == "BQML"
    assert result.factor == pytest.approx(_bqml_factor(64, 126e6, 6586.199707, 3657), rel=1e-9)


def test_philips_cnts_prefers_suv_scale_factor(shared_data: Path) -> None:
    result = compute_suv_factor(_vendor(shared_data, "PHILIPS_CNTS_AND_BQML_SUV"))
    assert result.method == "CNTS-PhilipsSUVScaleFactor"
    assert result.factor == 0.000551


def test_philips_cnts_activity_concentration_factor_path(shared_data: Path) -> None:
    # Without (7053,1000), (7053,1009) turns CNTS into Bq/ml and the BQML rule follows.
    # For this real header the result must agree with the scanner's own SUV factor,
    # which is given to only 3 significant digits.
    instances = _vendor(shared_data, "PHILIPS_CNTS_AND_BQML_SUV")
    for instance in instances:
        del instance["PhilipsPETPrivateGroup"]["SUVScaleFactor"]
    result = compute_suv_factor(instances)
    assert result.method == "CNTS-PhilipsActivityConcentrationScaleFactor"
    assert result.factor == pytest.approx(1.602563 * _bqml_factor(54, 238e6, 6588, 3956), rel=1e-9)
    assert result.factor == pytest.approx(0.000551, rel=1e-3)


def test_philips_cnts_without_private_factors_fails(shared_data: Path) -> None:
    instances = _vendor(shared_data, "PHILIPS_CNTS_AND_SUV")
    for instance in instances:
        instance["PhilipsPETPrivateGroup"] = {}
    with pytest.raises(SUVInputError) as err:
        compute_suv_factor(instances)
    assert err.value.attribute.startswith("SUVScaleFactor")


def test_instances_from_different_series_fail(shared_data: Path) -> None:
    instances = _vendor(shared_data, "SIEMENS")
    instances[2]["PatientWeight"] = 68
    with pytest.raises(SUVInputError) as err:
        compute_suv_factor(instances)
    assert err.value.attribute == "PatientWeight"


# --------------------------------------------------------------------------- QIN and QIBA DRO


def test_qin_headneck_header(expected: dict) -> None:
    case = expected["QIN-HEADNECK-01-0139_PET"]
    header = {k: v for k, v in case.items() if not k.startswith("_") and k not in ("expected_SUVbw_factor", "tolerance_relative")}
    result = compute_suv_factor(header)
    assert result.factor == pytest.approx(case["expected_SUVbw_factor"], rel=case["tolerance_relative"])
    assert result.scan_time_source == "SeriesDateTime"
    # No AcquisitionDate in this header: the time is taken on the series date, and said so.
    assert any("AcquisitionDate absent" in w for w in result.warnings)


def _dro_header(expected: dict, sex: str) -> tuple[dict, float]:
    dro = expected["QIBA_FDG_PET_CT_DRO_2013"]
    patient = dro[sex]
    header = dict(dro["common"])
    header.update(PatientWeight=patient["PatientWeight"], PatientSize=patient["PatientSize"])
    header["PatientSex"] = "F" if sex == "female" else "M"
    header["CorrectedImage"] = ["ATTN", "DECY"]
    return header, patient["RescaleSlope"]


@pytest.mark.parametrize("sex", ["female", "male"])
def test_qiba_dro_suvbw(expected: dict, sex: str) -> None:
    header, slope = _dro_header(expected, sex)
    want = expected["QIBA_FDG_PET_CT_DRO_2013"]["expected"]
    result = compute_suv_factor(header)
    assert result.uptake_seconds == 3600
    intercept = header["RescaleIntercept"]
    high = (32767 * slope + intercept) * result.factor
    low = (-877 * slope + intercept) * result.factor
    assert high == pytest.approx(want["stored_value_32767_SUVbw"], abs=want["tolerance_absolute"])
    assert low == pytest.approx(want["stored_value_-877_SUVbw"], abs=want["tolerance_absolute"])


@pytest.mark.parametrize("sex", ["female", "male"])
@pytest.mark.parametrize(
    ("formula", "key"),
    [("james", "SUVlbm_James_over_SUVbw"), ("janmahasatian", "SUVlbm_Janmahasatian_over_SUVbw")],
)
def test_qiba_dro_sul_ratios(expected: dict, sex: str, formula: str, key: str) -> None:
    header, _ = _dro_header(expected, sex)
    want = expected["QIBA_FDG_PET_CT_DRO_2013"]["expected"]
    sul = compute_sul_factor(header, formula=formula)
    assert isinstance(sul, SULFactor)
    assert sul.factor / sul.suv.factor == pytest.approx(want[key][sex], abs=want["tolerance_ratio_absolute"])
    json.dumps(sul.to_dict())


def test_lean_body_mass_formulas() -> None:
    # James: male 1.10 W - 128 (W/H_cm)^2; female 1.07 W - 148 (W/H_cm)^2
    assert lean_body_mass_kg(70, 1.65, "M", "james") == pytest.approx(1.10 * 70 - 128 * (70 / 165) ** 2)
    assert lean_body_mass_kg(60, 1.60, "F", "james") == pytest.approx(1.07 * 60 - 148 * (60 / 160) ** 2)
    # Janmahasatian: 9270 W / (6680 + 216 BMI) male, 9270 W / (8780 + 244 BMI) female
    assert lean_body_mass_kg(70, 1.65, "M") == pytest.approx(9270 * 70 / (6680 + 216 * 70 / 1.65**2))
    assert lean_body_mass_kg(60, 1.60, "F") == pytest.approx(9270 * 60 / (8780 + 244 * 60 / 1.60**2))
    with pytest.raises(SUVInputError) as err:
        lean_body_mass_kg(70, 165, "M")  # centimetres
    assert err.value.attribute == "PatientSize"
    with pytest.raises(SUVInputError) as err:
        lean_body_mass_kg(70, 1.65, "O")
    assert err.value.attribute == "PatientSex"
    with pytest.raises(ValueError):
        lean_body_mass_kg(70, 1.65, "M", "boer")  # type: ignore[arg-type]


def test_james_lbm_for_severe_obesity_warns_or_refuses() -> None:
    sul = compute_sul_factor(_basic_header(PatientWeight=140, PatientSize=1.70), formula="james")
    assert any("James" in w for w in sul.warnings)
    with pytest.raises(SUVInputError) as err:
        compute_sul_factor(_basic_header(PatientWeight=300, PatientSize=1.50, PatientSex="F"), formula="james")
    assert err.value.attribute == "PatientWeight"
    # Janmahasatian stays positive and does not warn there.
    sul = compute_sul_factor(_basic_header(PatientWeight=300, PatientSize=1.50, PatientSex="F"))
    assert 0 < sul.factor < sul.suv.factor


@pytest.mark.parametrize("missing", ["PatientSex", "PatientSize"])
def test_sul_needs_sex_and_height(missing: str) -> None:
    with pytest.raises(SUVInputError) as err:
        compute_sul_factor(_basic_header(**{missing: None}))
    assert err.value.attribute == missing


# --------------------------------------------------------------------------- real DICOM


@pytest.mark.parametrize("index", [1, 2])
def test_real_pet_slice_from_pydicom(shared_data: Path, index: int) -> None:
    ds = pydicom.dcmread(shared_data / "pet" / f"acrin-flt-breast-slice-{index}.dcm")
    result = compute_suv_factor(ds)
    assert result.method == "BQML"
    assert result.weight_kg == pytest.approx(float(ds.PatientWeight))
    assert result.dose_bq == pytest.approx(float(ds.RadiopharmaceuticalInformationSequence[0].RadionuclideTotalDose))
    assert result.uptake_seconds > 0
    rescaled = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    suv_max = float(rescaled.max()) * result.factor
    assert 0.5 < suv_max < 50


def test_real_pet_slice_1_numbers(shared_data: Path) -> None:
    ds = pydicom.dcmread(shared_data / "pet" / "acrin-flt-breast-slice-1.dcm")
    result = compute_suv_factor(ds)
    # series 15:23:16.921, injection 14:17:00 on the same day
    assert result.uptake_seconds == pytest.approx(3976.921)
    assert result.factor == pytest.approx(_bqml_factor(69.7344, 178340011.59668, 6586.2, 3976.921), rel=1e-12)
    assert result.warnings == ()


def test_dynamic_slice_starting_at_injection_warns(shared_data: Path) -> None:
    # Slice 2 is from a dynamic series that starts 0.109 s after the injection.
    result = compute_suv_factor(pydicom.dcmread(shared_data / "pet" / "acrin-flt-breast-slice-2.dcm"))
    assert result.uptake_seconds == pytest.approx(0.109)
    assert any("outside the 55-75 min window" in w for w in result.warnings)


def test_real_fdg_study_delayed_scan(shared_data: Path) -> None:
    folder = shared_data / "petct" / "acrin-nsclc-fdg-pet-042" / "PT_0001_PET_AC"
    ds = pydicom.dcmread(sorted(folder.glob("*.dcm"))[0], stop_before_pixels=True)
    result = compute_suv_factor(ds)
    assert result.uptake_seconds == pytest.approx(9527)
    assert result.factor == pytest.approx(4.21110e-4, rel=2e-6)  # the study's own RWV mapping
    assert any("9527" in w for w in result.warnings)
    # Series and acquisition times agree, so the GE private scan time (whose de-identified
    # date differs from SeriesDate in this study) must not be used.
    assert result.scan_time_source == "SeriesDateTime"
    sul = compute_sul_factor(ds)
    assert 0 < sul.factor < result.factor


def test_dicom_json_model_gives_same_factor(shared_data: Path) -> None:
    ds = pydicom.dcmread(shared_data / "pet" / "acrin-flt-breast-slice-1.dcm", stop_before_pixels=True)
    from_json = compute_suv_factor(ds.to_json_dict())
    assert from_json.factor == pytest.approx(compute_suv_factor(ds).factor, rel=1e-12)


def test_philips_private_tags_in_pydicom_dataset() -> None:
    ds = _pet_dataset(Units="CNTS")
    block = ds.private_block(0x7053, "Philips PET Private Group", create=True)
    block.add_new(0x09, "DS", "2.0")
    acsf = compute_suv_factor(ds)
    assert acsf.method == "CNTS-PhilipsActivityConcentrationScaleFactor"
    assert acsf.factor == pytest.approx(2.0 * _bqml_factor(70, 370e6, 6586.2, 3600), rel=1e-12)
    block.add_new(0x00, "DS", "0.000612")
    suv = compute_suv_factor(ds)
    assert suv.method == "CNTS-PhilipsSUVScaleFactor"
    assert suv.factor == pytest.approx(0.000612)


def test_ge_private_scan_datetime_when_series_after_acquisition() -> None:
    ds = _pet_dataset(SeriesTime="103000", AcquisitionTime="100000")
    without_ge = compute_suv_factor(ds)
    assert without_ge.scan_time_source.startswith("AcquisitionDateTime")
    assert without_ge.uptake_seconds == 3600
    block = ds.private_block(0x0009, "GEMS_PETD_01", create=True)
    block.add_new(0x0D, "DT", "20240102100500.00")
    with_ge = compute_suv_factor(ds)
    assert with_ge.scan_time_source.startswith("GEPrivateScanDateTime")
    assert with_ge.uptake_seconds == 3900
    # Not used when the series time is not after the acquisition time.
    ds.SeriesTime = "100000"
    assert compute_suv_factor(ds).scan_time_source == "SeriesDateTime"


def test_ge_private_scan_datetime_in_plain_mapping() -> None:
    header = _basic_header(SeriesTime="103000", GEPrivatePostInjectionDateTime="20240102101000")
    result = compute_suv_factor(header)
    assert result.scan_time_source.startswith("GEPrivateScanDateTime")
    assert result.uptake_seconds == 4200


def test_no_patient_identifiers_in_logs(caplog: pytest.LogCaptureFixture) -> None:
    ds = _pet_dataset(
        PatientName="Doe^Jane", PatientID="MRN-774411", PatientBirthDate="19510317", SeriesTime="120000",
        AcquisitionTime="120000",
    )
    with caplog.at_level(logging.DEBUG, logger="pipeline.suv"):
        result = compute_suv_factor(ds)
        compute_sul_factor(ds, formula="james")
    assert result.warnings  # 3 h uptake: there is something to log
    assert caplog.records
    text = caplog.text
    for secret in ("Doe", "Jane", "MRN-774411", "19510317", "1951", "20240102", "2024-01-02"):
        assert secret not in text


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("missing", "attribute"),
    [
        ("PatientWeight", "PatientWeight"),
        ("RadionuclideTotalDose", "RadionuclideTotalDose"),
        ("RadionuclideHalfLife", "RadionuclideHalfLife"),
        ("Units", "Units"),
        ("DecayCorrection", "DecayCorrection"),
        ("SeriesTime", "SeriesTime"),
        ("SeriesDate", "SeriesDate"),
    ],
)
def test_missing_input_names_attribute(missing: str, attribute: str) -> None:
    with pytest.raises(SUVInputError) as err:
        compute_suv_factor(_basic_header(**{missing: None}))
    assert err.value.attribute == attribute
    assert isinstance(err.value, StudyInputError)
    assert attribute in str(err.value)


def test_missing_input_in_pydicom_sequence_names_attribute() -> None:
    ds = _pet_dataset()
    del ds.RadiopharmaceuticalInformationSequence[0].RadionuclideTotalDose
    with pytest.raises(SUVInputError) as err:
        compute_suv_factor(ds)
    assert err.value.attribute == "RadionuclideTotalDose"
    ds = _pet_dataset(PatientWeight="")  # present but empty counts as missing
    with pytest.raises(SUVInputError) as err:
        compute_suv_factor(ds)
    assert err.value.attribute == "PatientWeight"


def test_missing_injection_time() -> None:
    header = _basic_header(RadiopharmaceuticalStartDateTime=None)
    with pytest.raises(SUVInputError) as err:
        compute_suv_factor(header)
    assert err.value.attribute == "RadiopharmaceuticalStartDateTime"
    assert "RadiopharmaceuticalStartTime" in str(err.value)


@pytest.mark.parametrize(
    ("attribute", "value"),
    [
        ("PatientWeight", 0),
        ("PatientWeight", -70),
        ("PatientWeight", 70000),  # grams
        ("RadionuclideTotalDose", 0),
        ("RadionuclideTotalDose", -1e8),
        ("RadionuclideHalfLife", 0),
        ("RadionuclideHalfLife", -6586.2),
        ("RadionuclideHalfLife", "abc"),
    ],
)
def test_impossible_values_name_attribute(attribute: str, value: object) -> None:
    with pytest.raises(SUVInputError) as err:
        compute_suv_factor(_basic_header(**{attribute: value}))
    assert err.value.attribute == attribute


@pytest.mark.parametrize("start", ["20240102100000", "20240102103000"])
def test_zero_or_negative_decay_interval(start: str) -> None:
    with pytest.raises(SUVInputError) as err:
        compute_suv_factor(_basic_header(RadiopharmaceuticalStartDateTime=start))
    assert err.value.attribute == "RadiopharmaceuticalStartDateTime"


def test_zero_decay_interval_with_start_time_only() -> None:
    header = _basic_header(RadiopharmaceuticalStartDateTime=None, RadiopharmaceuticalStartTime="100000")
    with pytest.raises(SUVInputError) as err:
        compute_suv_factor(header)
    assert err.value.attribute == "RadiopharmaceuticalStartTime"


def test_implausibly_long_decay_interval() -> None:
    with pytest.raises(SUVInputError) as err:
        compute_suv_factor(_basic_header(RadiopharmaceuticalStartDateTime="20231225090000"))
    assert err.value.attribute == "RadiopharmaceuticalStartDateTime"


@pytest.mark.parametrize("units", ["PROPCNTS", "CPS", "NONE", "MLMGM"])
def test_unknown_units(units: str) -> None:
    with pytest.raises(SUVInputError) as err:
        compute_suv_factor(_basic_header(Units=units))
    assert err.value.attribute == "Units"


@pytest.mark.parametrize("decay", ["NONE", "XYZ"])
def test_unsupported_decay_correction(decay: str) -> None:
    with pytest.raises(SUVInputError) as err:
        compute_suv_factor(_basic_header(DecayCorrection=decay))
    assert err.value.attribute == "DecayCorrection"


def test_not_attenuation_corrected() -> None:
    with pytest.raises(SUVInputError) as err:
        compute_suv_factor(_basic_header(CorrectedImage=["DECY", "SCAT"]))
    assert err.value.attribute == "CorrectedImage"


def test_bad_time_value() -> None:
    with pytest.raises(SUVInputError) as err:
        compute_suv_factor(_basic_header(SeriesTime="25xx"))
    assert err.value.attribute == "SeriesTime"


# --------------------------------------------------------------------------- time rules


def test_midnight_crossing_gives_positive_uptake() -> None:
    header = _basic_header(
        SeriesDate="20240103",
        SeriesTime="001500",
        AcquisitionDate="20240103",
        AcquisitionTime="001500",
        RadiopharmaceuticalStartDateTime=None,
        RadiopharmaceuticalStartTime="231500",
    )
    result = compute_suv_factor(header)
    assert result.uptake_seconds == 3600
    assert result.injection_datetime == datetime(2024, 1, 2, 23, 15)
    assert "previous day" in result.injection_time_source
    assert result.factor == pytest.approx(_bqml_factor(70, 370e6, 6586.2, 3600), rel=1e-12)


def test_start_time_just_after_scan_time_is_not_a_midnight_crossing() -> None:
    header = _basic_header(RadiopharmaceuticalStartDateTime=None, RadiopharmaceuticalStartTime="100100")
    with pytest.raises(SUVInputError) as err:
        compute_suv_factor(header)
    assert err.value.attribute == "RadiopharmaceuticalStartTime"


def test_start_datetime_preferred_over_start_time() -> None:
    header = _basic_header(RadiopharmaceuticalStartTime="093000")  # contradicts the DT; DT wins
    result = compute_suv_factor(header)
    assert result.injection_time_source == "RadiopharmaceuticalStartDateTime"
    assert result.uptake_seconds == 3600


def test_datetime_with_utc_offset_and_fraction() -> None:
    result = compute_suv_factor(_basic_header(RadiopharmaceuticalStartDateTime="20240102085959.5+0100 "))
    assert result.uptake_seconds == pytest.approx(3600.5)
    assert any("UTC offset" in w for w in result.warnings)


def test_uptake_window_warning_only_outside(caplog: pytest.LogCaptureFixture) -> None:
    assert compute_suv_factor(_basic_header()).warnings == ()
    with caplog.at_level(logging.WARNING, logger="pipeline.suv"):
        late = compute_suv_factor(_basic_header(SeriesTime="111000", AcquisitionTime="111000"))
    assert late.uptake_seconds == 7800
    assert any("outside the 55-75 min window of the QIBA FDG profile" in w for w in late.warnings)
    assert "outside the 55-75 min window of the QIBA FDG profile" in caplog.text


# --------------------------------------------------------------------------- ADMIN, GML


def test_admin_decay_correction_has_no_decay_factor() -> None:
    result = compute_suv_factor(_basic_header(DecayCorrection="ADMIN"))
    assert result.decay_correction == "ADMIN"
    assert result.decay_factor == 1.0
    assert result.factor == pytest.approx(70 * 1000 / 370e6, rel=1e-12)
    assert result.uptake_seconds == 3600  # still reported
    start = compute_suv_factor(_basic_header())
    assert start.factor > result.factor  # START divides by the decayed, smaller dose


def test_admin_without_injection_time_still_computes() -> None:
    result = compute_suv_factor(_basic_header(DecayCorrection="ADMIN", RadiopharmaceuticalStartDateTime=None))
    assert result.factor == pytest.approx(70 * 1000 / 370e6, rel=1e-12)
    assert result.uptake_seconds is None
    assert any("uptake time unknown" in w for w in result.warnings)


def test_gml_factor_is_one() -> None:
    result = compute_suv_factor({"Units": "GML", "DecayCorrection": "START", "CorrectedImage": ["ATTN", "DECY"]})
    assert result.factor == 1.0
    assert result.method == "GML"


def test_result_is_frozen_and_json_able() -> None:
    result = compute_suv_factor(_basic_header())
    with pytest.raises(AttributeError):
        result.factor = 2.0  # type: ignore[misc]
    data = json.loads(json.dumps(result.to_dict()))
    assert data["injection_datetime"] == "2024-01-02T09:00:00"
    assert data["factor"] == pytest.approx(result.factor)
    assert data["warnings"] == []


def test_input_is_not_modified(shared_data: Path) -> None:
    instances = _vendor(shared_data, "GE_MEDICAL_AND_BQML")
    before = copy.deepcopy(instances)
    compute_suv_factor(instances)
    compute_sul_factor(instances)
    assert instances == before
