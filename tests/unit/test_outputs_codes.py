"""The coded concepts of DESIGN §5: every standard code exists in DICOM PS3.16 (as shipped
with pydicom) with the meaning we write, and the private scheme is well formed."""

import pytest
from pydicom.sr import _concepts_dict

from pipeline import codes
from pipeline.staging import STATIONS


def _standard_meanings(scheme: str, value: str) -> set[str]:
    """Meanings of a code in PS3.16, also without a SNOMED semantic tag ("… (finding)")."""
    out = set()
    for entry in _concepts_dict.concepts.get(scheme, {}).values():
        if value in entry:
            meaning = entry[value][0].lower()
            out.add(meaning)
            if meaning.endswith(")") and " (" in meaning:
                out.add(meaning.rsplit(" (", 1)[0])
    return out


@pytest.mark.parametrize("name, concept", sorted(codes.standard_concepts().items()))
def test_standard_code_exists_in_dicom_part16(name, concept):
    if concept.scheme_designator == "UCUM":
        assert concept.value in {"{SUVbw}g/ml", "ml", "g", "mm"}
        return
    if concept.scheme_designator == "UMLS":  # TID 1500 "Qualitative Evaluations" container
        assert (concept.value, concept.meaning) == ("C0034375", "Qualitative Evaluations")
        return
    meanings = _standard_meanings(concept.scheme_designator, concept.value)
    assert meanings, f"{name}: {concept.scheme_designator} {concept.value} is not in DICOM PS3.16"
    assert concept.meaning.lower() in meanings, f"{name}: {concept.meaning!r} not among {meanings}"


def test_design_table_codes():
    """DESIGN §5's table, code for code."""
    expected = {
        "LYMPH_NODE": ("SCT", "59441001"), "MEDIASTINAL_LYMPH_NODE": ("SCT", "62683002"),
        "NEOPLASM_PRIMARY": ("SCT", "372087000"), "NEOPLASM_SECONDARY": ("SCT", "14799000"),
        "MORPHOLOGICALLY_ABNORMAL_STRUCTURE": ("SCT", "49755003"), "RIGHT": ("SCT", "24028007"),
        "LEFT": ("SCT", "7771000"), "SUVBW": ("DCM", "126401"), "MAXIMUM": ("SCT", "56851009"),
        "MEAN": ("SCT", "373098007"), "PEAK": ("DCM", "126031"), "METABOLIC_VOLUME": ("DCM", "126032"),
        "TOTAL_LESION_GLYCOLYSIS": ("DCM", "126033"), "UNIT_SUVBW": ("UCUM", "{SUVbw}g/ml"),
    }
    for name, (scheme, value) in expected.items():
        c = getattr(codes, name)
        assert (c.scheme_designator, c.value) == (scheme, value), name


@pytest.mark.parametrize("station", STATIONS)
def test_every_station_has_a_private_code_and_a_standard_site(station):
    code = codes.station_code(station)
    assert code.scheme_designator == codes.PRIVATE_SCHEME
    assert code.value == station
    assert station in code.meaning
    site = codes.station_anatomy(station)
    assert site.scheme_designator == "SCT" and _standard_meanings("SCT", site.value)
    lat = codes.station_laterality(station)
    if station.endswith("R"):
        assert lat == codes.RIGHT
    elif station.endswith("L") or station in ("5", "6"):
        assert lat == codes.LEFT
    else:
        assert lat is None


def test_private_codes_fit_their_value_representations():
    concepts = codes.private_concepts()
    assert len(concepts) > 40
    for name, c in concepts.items():
        assert c.scheme_designator == "99NODESTAGE"
        assert 0 < len(c.value) <= 16, name
        assert 0 < len(c.meaning) <= 64, name
    item = codes.coding_scheme_identification()
    assert item.CodingSchemeDesignator == "99NODESTAGE"
    assert item.CodingSchemeUID.startswith("2.25.") and int(item.CodingSchemeUID[5:]) < 2 ** 128


def test_n_category_is_checked_against_the_edition():
    assert codes.n_category(9, "N2b").value == "N2b"
    assert codes.n_category(8, "NX").value == "NX"
    with pytest.raises(ValueError, match="TNM 8"):
        codes.n_category(8, "N2a")
    with pytest.raises(ValueError):
        codes.n_category(9, "N4")
    with pytest.raises(ValueError):
        codes.station_code("4X")
