"""The coded concepts that nodestage writes into SEG and SR (DESIGN.md §5).

Standard codes (SNOMED CT "SCT", DICOM "DCM", UCUM units) are only those listed in
DICOM PS3.16 as shipped with pydicom (`pydicom.sr._concepts_dict`); a test checks
each one against that dictionary, so a mistyped or invented SNOMED code fails.

Anything without a standard code uses our private coding scheme `99NODESTAGE`,
which every object that uses it declares in its Coding Scheme Identification
Sequence (`coding_scheme_identification()`):

- IASLC 2009 station codes: the code value is the station name ("4R", "3a", "7").
  No DICOM context group lists the IASLC stations with R/L numbering, so the
  standard equivalent is given *beside* the private code, as a finding site or
  anatomic region made of a CID 7600 "Lymph Node Anatomic Sites" concept plus a
  laterality modifier (`station_anatomy`): e.g. 4R = (127932007, SCT, "lower
  paratracheal (including azygous) lymph node") with laterality Right.
- N categories: "N0" … "N3", "N2a", "N2b", "NX"; the edition is carried by the
  concept name ("N category (TNM 8)" or "(TNM 9)"). No verified SNOMED code
  exists for the lung N categories, so none is given.
- The names of our qualitative evaluations (node status, positivity rule, …).
"""

from __future__ import annotations

from highdicom.coding_schemes import CodingSchemeIdentificationItem
from highdicom.sr import CodedConcept

from pipeline.staging import STATIONS, normalize_station, station_side
from pipeline.staging import STATION_NAMES

PRIVATE_SCHEME = "99NODESTAGE"
PRIVATE_SCHEME_NAME = "nodestage private codes (IASLC stations, TNM N categories, node evidence)"
# A fixed UID for the scheme, derived once from a UUID (ISO/IEC 9834-8, "2.25." form).
PRIVATE_SCHEME_UID = "2.25.147027461850965153743844909852344219493"
PRIVATE_SCHEME_VERSION = "1"


def _sct(value: str, meaning: str) -> CodedConcept:
    return CodedConcept(value, "SCT", meaning)


def _dcm(value: str, meaning: str) -> CodedConcept:
    return CodedConcept(value, "DCM", meaning)


def _ucum(value: str, meaning: str) -> CodedConcept:
    return CodedConcept(value, "UCUM", meaning)


def private(value: str, meaning: str) -> CodedConcept:
    """A concept of our private scheme (code value at most 16 characters)."""
    if len(value) > 16 or len(meaning) > 64:
        raise ValueError(f"private code {value!r} too long for SH/LO")
    return CodedConcept(value, PRIVATE_SCHEME, meaning)


def coding_scheme_identification() -> CodingSchemeIdentificationItem:
    """The Coding Scheme Identification Sequence item that declares `99NODESTAGE`."""
    item = CodingSchemeIdentificationItem(
        designator=PRIVATE_SCHEME,
        name=PRIVATE_SCHEME_NAME,
        version=PRIVATE_SCHEME_VERSION,
        responsible_organization="nodestage project",
    )
    # highdicom sets the UID only with a registry; a 2.25 UUID-derived OID needs none.
    item.CodingSchemeUID = PRIVATE_SCHEME_UID
    return item


# --- findings, segment categories and types (DESIGN §5 table) ------------------
LYMPH_NODE = _sct("59441001", "Lymph node")
MEDIASTINAL_LYMPH_NODE = _sct("62683002", "Mediastinal lymph node")
NEOPLASM_PRIMARY = _sct("372087000", "Neoplasm, Primary")
NEOPLASM_SECONDARY = _sct("14799000", "Neoplasm, Secondary")
LESION = _sct("52988006", "Lesion")
MORPHOLOGICALLY_ABNORMAL_STRUCTURE = _sct("49755003", "Morphologically Abnormal Structure")
ANATOMICAL_STRUCTURE = _sct("91723000", "Anatomical Structure")
NODE_CATEGORY_FINDING = _sct("385382003", "Node category finding")
RIGHT = _sct("24028007", "Right")
LEFT = _sct("7771000", "Left")
LATERALITY = {"right": RIGHT, "left": LEFT}

# Anatomy of the primary tumour (CIDs 6170 / 4: lobes carry a laterality modifier).
LUNG = _sct("39607008", "Lung")
UPPER_LOBE_OF_LUNG = _sct("45653009", "Upper lobe of lung")
MIDDLE_LOBE_OF_RIGHT_LUNG = _sct("72481006", "Middle lobe of right lung")
LOWER_LOBE_OF_LUNG = _sct("90572001", "Lower lobe of lung")
LOBES = {
    "lung_upper_lobe_right": UPPER_LOBE_OF_LUNG,
    "lung_upper_lobe_left": UPPER_LOBE_OF_LUNG,
    "lung_middle_lobe_right": MIDDLE_LOBE_OF_RIGHT_LUNG,
    "lung_lower_lobe_right": LOWER_LOBE_OF_LUNG,
    "lung_lower_lobe_left": LOWER_LOBE_OF_LUNG,
}

# --- measurements (TID 1411 / TID 300) ----------------------------------------------
SUVBW = _dcm("126401", "SUVbw")
MAXIMUM = _sct("56851009", "Maximum")
MEAN = _sct("373098007", "Mean")
PEAK = _dcm("126031", "Peak Value Within ROI")
METABOLIC_VOLUME = _dcm("126032", "Metabolic Volume")
TOTAL_LESION_GLYCOLYSIS = _dcm("126033", "Total Lesion Glycolysis")
SHORT_AXIS = _sct("103340004", "Short axis")
SUM_OF_SEGMENTED_VOXEL_VOLUMES = _dcm("126030", "Sum of segmented voxel method for volume")
SUV_BODY_WEIGHT_METHOD = _dcm("126410", "SUV body weight calculation method")
PET_CT_FDG_WHOLE_BODY = _sct("443271005", "PET/CT FDG imaging of whole body")

UNIT_SUVBW = _ucum("{SUVbw}g/ml", "Standardized Uptake Value body weight")
UNIT_ML = _ucum("ml", "Milliliter")
UNIT_G = _ucum("g", "Gram")
UNIT_MM = _ucum("mm", "Millimeter")

# TID 1500 row "Qualitative Evaluations" container.
QUALITATIVE_EVALUATIONS = CodedConcept("C0034375", "UMLS", "Qualitative Evaluations")

# --- IASLC stations: private code + standard anatomy (CID 7600) ---------------------

# CID 7600 "Lymph Node Anatomic Sites" concept for each IASLC station number. It is
# laterality-free: the side comes from a laterality modifier. 3a has no own concept;
# the combined "prevascular/retrotracheal" one (old station 3) contains it.
_STATION_SCT = {
    "1": _sct("76838003", "supraclavicular lymph node"),
    "2": _sct("127927006", "upper paratracheal lymph node (mediastinal)"),
    "3a": _sct("127930004", "prevascular/retrotracheal lymph node"),
    "3p": _sct("127931000", "retrotracheal lymph node (mediastinal)"),
    "4": _sct("127932007", "lower paratracheal (including azygous) lymph node"),
    "5": _sct("127938006", "lymph node of aortopulmonary window"),
    "6": _sct("127939003", "para-aortic lymph node of the anterior mediastinum"),
    "7": _sct("28330007", "subcarinal lymph node"),
    "8": _sct("127940001", "paraesophageal lymph node below carina"),
    "9": _sct("127941002", "lymph node of the pulmonary ligament"),
    "10": _sct("53074004", "hilar lymph node"),
    "11": _sct("127919002", "interlobar lymph node of the lung"),
    "12": _sct("127920008", "lobar lymph node of the lung"),
    "13": _sct("127921007", "segmental lymph node of the lung"),
    "14": _sct("127922000", "subsegmental lymph node of the lung"),
}
MEDIASTINAL_STATION_NUMBERS = ("2", "3a", "3p", "4", "5", "6", "7", "8", "9")


def _station_number(station: str) -> str:
    s = normalize_station(station)
    return s if s in ("3a", "3p") else s.rstrip("RL")


def station_meaning(station: str) -> str:
    """'4R' -> 'IASLC 4R: right lower paratracheal'."""
    s = normalize_station(station)
    side = station_side(s)
    name = STATION_NAMES[_station_number(s)]
    if s.endswith(("R", "L")):
        name = f"{side} {name}"
    return f"IASLC {s}: {name}"


def station_code(station: str) -> CodedConcept:
    """The private code of an IASLC 2009 station (code value = the station name)."""
    s = normalize_station(station)
    return private(s, station_meaning(s))


def station_laterality(station: str | None, fallback: str | None = None) -> CodedConcept | None:
    """Right/Left of a station (5 and 6 count as left; midline 3a, 3p and 7 have none).

    `fallback` (the node's own side) is used only when the station is unknown.
    """
    side = station_side(station) if station else fallback
    return LATERALITY.get(side) if side else None


def station_anatomy(station: str | None) -> CodedConcept:
    """The standard (CID 7600) concept for a station; plain 'Lymph node' when unknown."""
    if not station:
        return LYMPH_NODE
    return _STATION_SCT[_station_number(station)]


def is_mediastinal(station: str | None) -> bool:
    return bool(station) and _station_number(station) in MEDIASTINAL_STATION_NUMBERS


STATION_CODES = {s: station_code(s) for s in STATIONS}

# --- N categories and document-level evaluations (private) ---------------------------
N_CATEGORY_TNM8 = private("NCAT-TNM8", "N category (TNM 8th edition)")
N_CATEGORY_TNM9 = private("NCAT-TNM9", "N category (TNM 9th edition)")
N_CATEGORIES = {
    "N0": private("N0", "N0: no regional lymph node metastasis"),
    "N1": private("N1", "N1: ipsilateral hilar or intrapulmonary nodes"),
    "N2": private("N2", "N2: ipsilateral mediastinal or subcarinal nodes"),
    "N2a": private("N2a", "N2a: single N2 station"),
    "N2b": private("N2b", "N2b: multiple N2 stations"),
    "N3": private("N3", "N3: contralateral or supraclavicular nodes"),
    "NX": private("NX", "NX: regional nodes cannot be assessed"),
}
TNM8_VALUES = ("N0", "N1", "N2", "N3", "NX")
TNM9_VALUES = ("N0", "N1", "N2a", "N2b", "N3", "NX")

INVOLVED_STATION = private("INV-STATION", "Involved lymph node station")
POSITIVITY_RULE = private("POS-RULE", "Node positivity rule")
STAGING_REASON = private("STAGE-REASON", "N staging reason")
NODE_DECISION = private("NODE-DECISION", "Node decision and evidence")
STATION_NOT_ASSESSABLE = private("NOT-ASSESSABLE", "Station not assessable")
STATION_LANDMARK = private("LANDMARK", "Station landmark (with proxy)")
PROCESSING_BACKEND = private("BACKEND", "Processing backend")
INTENDED_USE = private("INTENDED-USE", "Intended use")
WARNING = private("WARNING", "Processing warning")
NODE_STATUS = private("NODE-STATUS", "Lymph node status")
STATION_STATUS = private("STATION-STATUS", "Lymph node station status")
EQUIVOCAL_STATION = private("EQV-STATION", "Equivocal lymph node station")
N_CATEGORY_TNM8_IF_EQUIVOCAL = private("NCAT-TNM8-EQV", "N category (TNM 8) if equivocal stations positive")
N_CATEGORY_TNM9_IF_EQUIVOCAL = private("NCAT-TNM9-EQV", "N category (TNM 9) if equivocal stations positive")

# Verified SNOMED equivalents of the status codes (PS3.16: CID 250 "Positive/Negative",
# CID 3120 for Equivocal). They are not used alone, because "Positive" says nothing of
# what is positive; they go into each private code's Equivalent Code Sequence.
POSITIVE = _sct("10828004", "Positive")
NEGATIVE = _sct("260385009", "Negative")
EQUIVOCAL = _sct("42425007", "Equivocal")


def _with_equivalent(concept: CodedConcept, equivalent: CodedConcept) -> CodedConcept:
    concept.EquivalentCodeSequence = [CodedConcept(equivalent.value, equivalent.scheme_designator,
                                                   equivalent.meaning)]
    return concept


# Keyed by NodeStatus value (a StrEnum, so NodeStatus members look up the same entries).
NODE_STATUSES = {
    "positive": _with_equivalent(private("POSITIVE", "Positive (FDG-avid) node"), POSITIVE),
    "equivocal": _with_equivalent(private("EQUIVOCAL", "Equivocal node"), EQUIVOCAL),
    "negative": _with_equivalent(private("NEGATIVE", "Negative node"), NEGATIVE),
    "enlarged_non_avid": private("ENLARGED-NONAVID", "Enlarged, not FDG-avid node"),
}


def n_category(edition: int, value: str) -> CodedConcept:
    """The private code of an N category, checked against the edition's values."""
    allowed = TNM8_VALUES if edition == 8 else TNM9_VALUES if edition == 9 else ()
    if value not in allowed:
        raise ValueError(f"{value!r} is not a TNM {edition} N category ({', '.join(allowed)})")
    return N_CATEGORIES[value]


def standard_concepts() -> dict[str, CodedConcept]:
    """Every non-private concept defined here, by name (for the code-check test)."""
    out = {k: v for k, v in globals().items() if isinstance(v, CodedConcept) and v.scheme_designator != PRIVATE_SCHEME}
    out.update({f"station {k}": v for k, v in _STATION_SCT.items()})
    return out


def private_concepts() -> dict[str, CodedConcept]:
    out = {k: v for k, v in globals().items() if isinstance(v, CodedConcept) and v.scheme_designator == PRIVATE_SCHEME}
    out.update({f"N {k}": v for k, v in N_CATEGORIES.items()})
    out.update({f"status {k}": v for k, v in NODE_STATUSES.items()})
    out.update({f"station {k}": v for k, v in STATION_CODES.items()})
    return out
