"""A small hand-made silent-mode cohort (ledger + reference) whose metrics the evaluate tests work out by hand."""

from __future__ import annotations

from pathlib import Path

from dicomnode.send.ledger import append_ledger, ledger_failure_row, ledger_row

REFERENCE = """study_instance_uid,accession_number,cN,pN,pathological_stations,surgery_date
1.2.1,A1,cN0,pN0,,2026-01-05
1.2.2,A2,n1,N0,,2026-01-06
1.2.3,A3,cN1,pn1,10r,2026-01-07
1.2.4,A4,N2,pN2a,"4R, 7",2026-01-08
,A5,cn2,PN1,10R,2026-01-09
1.2.6,A6,0,pN2b,7,2026-01-10
1.2.7,A7,cN2,pN3,4L,2026-01-11
1.2.8,A8,N1,N2,,2026-01-12
1.2.9,A9,cN2,2a,,2026-01-13
1.2.10,A10,x,N1,,2026-01-14
1.2.12,A12,N0,N0,,2026-01-15
1.2.4,A4,N2,pN2a,"4R, 7",2026-01-08
"""


def _result(uid, acc, n8, n9, stations=(), eq8=None, eq9=None, equivocal=()):
    return {"study_instance_uid": uid, "accession_number": acc, "n_tnm8": n8, "n_tnm9": n9,
            "involved_stations": list(stations), "equivocal_stations": list(equivocal),
            "n_tnm8_if_equivocal_positive": eq8, "n_tnm9_if_equivocal_positive": eq9, "primary_side": "right"}


LEDGER_RESULTS = [
    (_result("1.2.1", "A1", "N0", "N0"), 1),
    (_result("1.2.2", "A2", "N0", "N0"), 1),
    (_result("1.2.3", "A3", "N1", "N1", ["10R"], "N2", "N2a", ["4R"]), 1),
    (_result("1.2.4", "A4", "N2", "N2a", ["4R"]), 1),
    (_result("1.2.5", "A5", "N2", "N2a", ["4R"]), 1),
    (_result("1.2.6", "A6", "N0", "N0", [], "N2", "N2a", ["7"]), 1),
    (_result("1.2.7", "A7", "N3", "N3", ["4L", "7"]), 1),
    (_result("1.2.8", "A8", "N2", "N2a", ["4R"]), 1),
    (_result("1.2.8", "A8", "N1", "N1", ["10R"]), 2),
    (_result("1.2.10", "A10", "N1", "N1", ["10R"]), 1),
    (_result("1.2.11", "A11", "N0", "N0"), 1),
]


def write_cohort(root: Path) -> tuple[Path, Path]:
    ledger, reference = root / "ledger.csv", root / "reference.csv"
    for result, version in LEDGER_RESULTS[:9]:
        append_ledger(ledger, ledger_row(result, version, root / "result.json"))
    append_ledger(ledger, ledger_failure_row("1.2.9", "A9", 1, "timeout: the pipeline ran longer than 900 s"))
    for result, version in LEDGER_RESULTS[9:]:
        append_ledger(ledger, ledger_row(result, version, root / "result.json"))
    reference.write_text(REFERENCE, encoding="utf-8")
    return ledger, reference
