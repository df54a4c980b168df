"""The node's ``ledger.csv`` (dicomnode.send.ledger.LEDGER_COLUMNS), one row per study version.

Older ledgers have no ``status`` column (every row was a success) and no
equivocal columns (the equivocal-as-positive reading is then not available);
both are read without complaint. A study processed more than once counts once.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from pipeline.evaluate.categories import parse_stations
from pipeline.evaluate.csvfile import EvaluationError, normalise_header, read_rows

REQUIRED = ("studyinstanceuid", "version", "ntnm8", "ntnm9")
EQUIVOCAL_COLUMNS = ("ntnm8ifequivocalpositive", "ntnm9ifequivocalpositive")
FAILED = "failed"


class VersionChoice(StrEnum):
    LATEST = "latest"  # the default: what the node says now
    FIRST = "first"  # what it said the first time


@dataclass(frozen=True)
class LedgerEntry:
    study_uid: str
    accession: str
    version: int
    order: int  # row index: breaks ties between equal versions (later row wins)
    failed: bool
    failure_reason: str
    n_tnm8: str
    n_tnm9: str
    n_tnm8_if_equivocal_positive: str | None  # None when the ledger predates the equivocal tier
    n_tnm9_if_equivocal_positive: str | None
    stations: frozenset[str]
    equivocal_stations: frozenset[str] | None

    def n(self, edition: int, equivocal_positive: bool = False) -> str | None:
        if equivocal_positive:
            alt = self.n_tnm8_if_equivocal_positive if edition == 8 else self.n_tnm9_if_equivocal_positive
            if alt is None:
                return None
            return alt or self.n(edition)  # empty: no equivocal station, same as the positive-only reading
        return self.n_tnm8 if edition == 8 else self.n_tnm9

    def stations_read(self, equivocal_positive: bool) -> frozenset[str] | None:
        if not equivocal_positive:
            return self.stations
        return None if self.equivocal_stations is None else self.stations | self.equivocal_stations


@dataclass(frozen=True)
class Ledger:
    entries: list[LedgerEntry]  # one per study, after the version choice
    rows_read: int
    duplicates: dict[str, list[int]]  # study UID -> versions seen, for studies recorded more than once
    has_equivocal: bool
    unreadable_lines: list[int]  # rows without a study UID or with a non-numeric version


def read_ledger(path: Path, choice: VersionChoice = VersionChoice.LATEST) -> Ledger:
    header, rows = read_rows(path, "ledger")
    keys = [normalise_header(h) for h in header]
    missing = [c for c in REQUIRED if c not in keys]
    if missing:
        names = {"studyinstanceuid": "study_instance_uid", "version": "version", "ntnm8": "n_tnm8",
                 "ntnm9": "n_tnm9"}
        raise EvaluationError(f"ledger {path}: missing column(s) {', '.join(names[c] for c in missing)} "
                              "(is this the node's ledger.csv?)")
    if not rows:
        raise EvaluationError(f"ledger {path}: no study recorded yet (header only)")
    has_equivocal = all(c in keys for c in EQUIVOCAL_COLUMNS)
    by_study: dict[str, list[LedgerEntry]] = {}
    unreadable = []
    for i, r in enumerate(rows):
        uid, version = r.get("studyinstanceuid", ""), r.get("version", "")
        if not uid or not version.isdigit():
            unreadable.append(i + 2)
            continue
        stations, _ = parse_stations(r.get("involvedstations", ""))
        equivocal, _ = parse_stations(r.get("equivocalstations", "")) if has_equivocal else (None, [])
        entry = LedgerEntry(
            study_uid=uid, accession=r.get("accessionnumber", ""), version=int(version), order=i,
            failed=r.get("status", "").lower() == FAILED, failure_reason=r.get("failurereason", ""),
            n_tnm8=r.get("ntnm8", ""), n_tnm9=r.get("ntnm9", ""),
            n_tnm8_if_equivocal_positive=r.get("ntnm8ifequivocalpositive", "") if has_equivocal else None,
            n_tnm9_if_equivocal_positive=r.get("ntnm9ifequivocalpositive", "") if has_equivocal else None,
            stations=stations or frozenset(),
            equivocal_stations=(equivocal or frozenset()) if has_equivocal else None)
        by_study.setdefault(uid, []).append(entry)
    pick = max if choice == VersionChoice.LATEST else min
    entries = [pick(group, key=lambda e: (e.version, e.order))
               for group in by_study.values()]
    duplicates = {uid: sorted(e.version for e in group) for uid, group in by_study.items() if len(group) > 1}
    return Ledger(entries, len(rows), duplicates, has_equivocal, unreadable)
