"""The reference CSV: one row per patient with clinical N (cN), pathological N (pN) and optionally stations.

Format (README, "nodestage evaluate"): a header row, then one row per study;
columns are matched by name without regard to case, spaces or underscores:

- ``study_instance_uid`` and/or ``accession_number`` (at least one column);
- ``cN`` and/or ``pN`` (at least one column): cN2, N2, pN2a, ypN1, 2, x ...;
- ``pathological_stations`` (optional): involved stations, e.g. ``4R;7``;
  ``none`` for no involved station, empty for not given;
- ``surgery_date`` (optional, kept as written).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline.evaluate.categories import parse_stations
from pipeline.evaluate.csvfile import EvaluationError, describe_header, find_column, normalise_header, read_rows

UID_COLUMNS = ("studyinstanceuid", "studyuid", "uid")
ACCESSION_COLUMNS = ("accessionnumber", "accession", "accessionno", "accno")
CN_COLUMNS = ("cn", "clinicaln", "cnstage", "cncategory")
PN_COLUMNS = ("pn", "pathologicaln", "pnstage", "pncategory")
STATION_COLUMNS = ("pathologicalstations", "pathologystations", "pstations", "involvedstations", "stations")
SURGERY_COLUMNS = ("surgerydate", "dateofsurgery", "surgery")


@dataclass(frozen=True)
class ReferenceRow:
    line: int  # line in the file (header is line 1), for the report's lists
    study_uid: str
    accession: str
    cn: str  # as written; parsed per edition when scoring
    pn: str
    stations: frozenset[str] | None  # None: not given
    unreadable_stations: tuple[str, ...]
    surgery_date: str

    @property
    def key(self) -> str:
        return self.study_uid or f"accession {self.accession}"


@dataclass(frozen=True)
class Reference:
    rows: list[ReferenceRow]
    has_cn: bool
    has_pn: bool
    has_stations: bool
    blank_id_lines: list[int]  # rows with neither UID nor accession: listed, not scored


def read_reference(path: Path) -> Reference:
    header, raw_rows = read_rows(path, "reference")
    keys = [normalise_header(h) for h in header]
    uid_col, acc_col = find_column(keys, UID_COLUMNS), find_column(keys, ACCESSION_COLUMNS)
    cn_col, pn_col = find_column(keys, CN_COLUMNS), find_column(keys, PN_COLUMNS)
    st_col, surgery_col = find_column(keys, STATION_COLUMNS), find_column(keys, SURGERY_COLUMNS)
    found = describe_header(header)
    if not uid_col and not acc_col:
        raise EvaluationError(f"reference {path}: no study_instance_uid or accession_number column "
                              f"(columns found: {found})")
    if not cn_col and not pn_col:
        raise EvaluationError(f"reference {path}: no cN or pN column (columns found: {found})")
    if not raw_rows:
        raise EvaluationError(f"reference {path}: a header but no rows")
    rows, blank = [], []
    for i, r in enumerate(raw_rows):
        line = i + 2
        uid, acc = r.get(uid_col, "") if uid_col else "", r.get(acc_col, "") if acc_col else ""
        if not uid and not acc:
            blank.append(line)
            continue
        stations, bad = parse_stations(r.get(st_col, "")) if st_col else (None, [])
        rows.append(ReferenceRow(line, uid, acc, r.get(cn_col, "") if cn_col else "",
                                 r.get(pn_col, "") if pn_col else "", stations, tuple(bad),
                                 r.get(surgery_col, "") if surgery_col else ""))
    return Reference(rows, bool(cn_col), bool(pn_col), bool(st_col), blank)
