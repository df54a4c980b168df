"""Messy input to `nodestage evaluate`: a clear report or a clear one-line error, never a traceback."""

from __future__ import annotations

import json

import pytest

from dicomnode.app.cli import EXIT_UNPROCESSABLE, main
from dicomnode.send.ledger import LEDGER_COLUMNS, append_ledger, ledger_failure_row, ledger_row, read_ledger
from pipeline.evaluate import compute_metrics
from pipeline.evaluate.categories import Reading, parse_n, parse_stations

OLD_LEDGER_HEADER = ("recorded_at,study_instance_uid,accession_number,version,n_tnm8,n_tnm9,involved_stations,"
                     "primary_side,backends,timings_s,outputs,result_json\n")
OLD_LEDGER = OLD_LEDGER_HEADER + "".join(
    f"2026-01-0{i}T10:00:00+0000,1.9.{i},B{i},1,{n8},{n9},,right,{{}},{{}},{{}},/x/result.json\n"
    for i, (n8, n9) in enumerate([("N0", "N0"), ("N2", "N2a"), ("N3", "N3"), ("N1", "N1")], start=1))


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    rc = main(["evaluate", *argv])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def assert_one_line_error(rc: int, err: str, *words: str) -> None:
    assert rc == EXIT_UNPROCESSABLE
    assert "Traceback" not in err and err.count("\n") == 1 and err.startswith("nodestage evaluate: ")
    for w in words:
        assert w in err, err


@pytest.fixture
def old_ledger(tmp_path):
    path = tmp_path / "ledger.csv"
    path.write_text(OLD_LEDGER, encoding="utf-8")
    return path


@pytest.mark.parametrize("text, edition, reading, category", [
    ("cN2", 8, Reading.CATEGORY, "N2"), ("pN2a", 8, Reading.CATEGORY, "N2"), ("N2b", 9, Reading.CATEGORY, "N2b"),
    ("pn2A", 9, Reading.CATEGORY, "N2a"), ("ypN1", 8, Reading.CATEGORY, "N1"), ("2", 8, Reading.CATEGORY, "N2"),
    (" n0 ", 9, Reading.CATEGORY, "N0"), ("N0 (i+)", 8, Reading.CATEGORY, "N0"), ("cN3", 9, Reading.CATEGORY, "N3"),
    ("x", 8, Reading.NX, None), ("pNX", 9, Reading.NX, None), ("Nx", 8, Reading.NX, None),
    ("", 8, Reading.MISSING, None), ("N2", 9, Reading.UNSUBDIVIDED_N2, None),
    ("N4", 8, Reading.UNREADABLE, None), ("N1b", 8, Reading.UNREADABLE, None), ("positive", 8, Reading.UNREADABLE, None),
])
def test_n_spellings(text, edition, reading, category):
    value = parse_n(text, edition)
    assert (value.reading, value.category) == (reading, category)


def test_station_spellings():
    assert parse_stations("4r; 7, station 10L 3A") == (frozenset({"4R", "7", "10L", "3a"}), [])
    assert parse_stations("none") == (frozenset(), [])
    assert parse_stations("") == (None, [])
    assert parse_stations("4R;hilum") == (frozenset({"4R"}), ["HILUM"])


def test_old_ledger_and_semicolon_bom_reference(tmp_path, old_ledger, capsys):
    """An old ledger (no status, no equivocal columns) and a UTF-8-with-BOM, semicolon, mixed-case reference."""
    reference = tmp_path / "reference.csv"
    reference.write_bytes("\ufeffStudy Instance UID;CN;PN\n1.9.1;cn0;PN0\n1.9.2;N2;pn2b\n1.9.3;Cn2;pNx\n"
                          "1.9.4;X;pN1\n1.9.99;N1;N1\n".encode("utf-8"))
    rc, out, err = run_cli(capsys, "--ledger", str(old_ledger), "--reference", str(reference),
                           "--out", str(tmp_path / "r"), "--bootstrap", "20")
    assert rc == 0, err
    m = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert not m["equivocal_available"] and "node_equivocal_positive_vs_pn" not in m["comparisons"]
    assert "equivocal stations cannot be scored" in (tmp_path / "r" / "report.md").read_text()
    assert m["cohort"]["matched"] == 4 and len(m["cohort"]["unmatched_reference"]) == 1
    pn = m["comparisons"]["node_vs_pn"]
    assert pn["exclusions"] == {"pN NX": 1} and pn["n"] == 3 and pn["accuracy"]["x"] == 3
    assert m["comparisons"]["node_vs_cn"]["exclusions"] == {"cN NX": 1}


def test_latin1_reference(tmp_path, old_ledger, capsys):
    reference = tmp_path / "reference.csv"
    reference.write_bytes("accession_number,cN,pN,Bemerkung\nB1,cN0,pN0,Lobektomie rechts ÄÖÜ é\n"
                          "B2,cN2,pN2a,Résection\n".encode("latin-1"))
    rc, out, err = run_cli(capsys, "--ledger", str(old_ledger), "--reference", str(reference),
                           "--out", str(tmp_path / "r"), "--bootstrap", "20")
    assert rc == 0, err
    m = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert m["cohort"]["joined_on"] == {"study_instance_uid": 0, "accession_number": 2}
    assert m["comparisons"]["node_vs_pn"]["accuracy"]["value"] == 1.0
    assert len(m["cohort"]["unmatched_ledger"]) == 2


@pytest.mark.parametrize("ledger_text, words", [
    ("", ["ledger", "empty"]),
    (OLD_LEDGER_HEADER, ["ledger", "no study recorded"]),
    ("study_instance_uid,version,n_tnm8\n1.9.1,1,N0\n", ["missing column", "n_tnm9"]),
])
def test_bad_ledger_is_a_one_line_error(tmp_path, capsys, ledger_text, words):
    ledger, reference = tmp_path / "ledger.csv", tmp_path / "reference.csv"
    ledger.write_text(ledger_text)
    reference.write_text("study_instance_uid,cN,pN\n1.9.1,N0,N0\n")
    rc, _, err = run_cli(capsys, "--ledger", str(ledger), "--reference", str(reference), "--out", str(tmp_path / "r"))
    assert_one_line_error(rc, err, *words)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("reference_text, words", [
    ("patient,cN,pN\nP1,N0,N0\n", ["no study_instance_uid or accession_number column", "patient"]),
    ("study_instance_uid,stage\n1.9.1,N0\n", ["no cN or pN column"]),
    ("study_instance_uid,cN,pN\n", ["no rows"]),
    ("study_instance_uid,cN,pN\n1.0.0,N0,N0\n", ["no reference row matches"]),
])
def test_bad_reference_is_a_one_line_error(tmp_path, old_ledger, capsys, reference_text, words):
    reference = tmp_path / "reference.csv"
    reference.write_text(reference_text)
    rc, _, err = run_cli(capsys, "--ledger", str(old_ledger), "--reference", str(reference),
                         "--out", str(tmp_path / "r"))
    assert_one_line_error(rc, err, *words)


def test_a_spreadsheet_instead_of_a_csv_is_a_one_line_error(tmp_path, old_ledger, capsys):
    reference = tmp_path / "reference.xlsx"
    reference.write_bytes(b"PK\x03\x04\x14\x00\x06\x00\x08\x00\x00\x00!\x00\xe2\x9d\r\n\x00\x1b\x8f\x81" * 40)
    rc, _, err = run_cli(capsys, "--ledger", str(old_ledger), "--reference", str(reference),
                         "--out", str(tmp_path / "r"))
    assert_one_line_error(rc, err, "no study_instance_uid or accession_number column")


def test_missing_file_and_unwritable_out(tmp_path, old_ledger, capsys):
    rc, _, err = run_cli(capsys, "--ledger", str(tmp_path / "nope.csv"), "--reference", str(old_ledger),
                         "--out", str(tmp_path / "r"))
    assert_one_line_error(rc, err, "no such file")
    reference = tmp_path / "reference.csv"
    reference.write_text("study_instance_uid,cN,pN\n1.9.1,N0,N0\n")
    blocker = tmp_path / "file"
    blocker.write_text("")
    rc, _, err = run_cli(capsys, "--ledger", str(old_ledger), "--reference", str(reference),
                         "--out", str(blocker / "r"), "--bootstrap", "5")
    assert_one_line_error(rc, err, "cannot write")


def test_unreadable_values_are_excluded_and_listed(tmp_path, old_ledger):
    reference = tmp_path / "reference.csv"
    reference.write_text("study_instance_uid,cN,pN\n1.9.1,N0,N0\n1.9.2,?,stage two\n,N1,N1\n")
    m = compute_metrics(old_ledger, reference, 8, n_bootstrap=5)
    assert m["comparisons"]["cn_vs_pn"]["exclusions"] == {"pN unreadable": 1}  # the reference side is named first
    assert m["comparisons"]["node_vs_cn"]["exclusions"] == {"cN unreadable": 1}
    assert m["comparisons"]["node_vs_pn"]["excluded"] == [{"line": 3, "study": "1.9.2", "why": "pN unreadable"}]
    assert m["cohort"]["reference_rows_without_id"] == [4]


def test_ledger_writer_keeps_an_old_header_and_records_failures(tmp_path, old_ledger):
    append_ledger(old_ledger, ledger_failure_row("1.9.5", "B5", 1, "refused:\nno PET series"))
    append_ledger(old_ledger, ledger_row({"study_instance_uid": "1.9.6", "n_tnm8": "N1", "n_tnm9": "N1"}, 1,
                                         tmp_path / "result.json"))
    rows = read_ledger(old_ledger)
    assert len(rows) == 6 and all(len(r) == 12 and None not in r for r in rows)  # aligned with the old header
    new = tmp_path / "new.csv"
    append_ledger(new, ledger_failure_row("1.9.5", "B5", 2, "refused:\nno PET series"))
    (row,) = read_ledger(new)
    assert list(row) == LEDGER_COLUMNS
    assert (row["status"], row["failure_reason"], row["n_tnm8"]) == ("failed", "refused: no PET series", "")
    m = compute_metrics(new, _ref(tmp_path, "1.9.5"), 8, n_bootstrap=5)
    assert m["comparisons"]["node_vs_pn"]["exclusions"] == {"node failure": 1}
    assert m["comparisons"]["node_vs_pn"]["accuracy_intention_to_diagnose"]["n"] == 1


def _ref(tmp_path, uid):
    path = tmp_path / "ref1.csv"
    path.write_text(f"study_instance_uid,cN,pN\n{uid},N0,N0\n")
    return path
