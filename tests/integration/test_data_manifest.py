"""The committed manifest of the public test data matches the data the tests read, file by file."""

import csv
import json
import subprocess
import sys

from tests.conftest import PROJECT_ROOT

MANIFEST = PROJECT_ROOT / "tests" / "data" / "manifest.csv"
SOURCES = PROJECT_ROOT / "scripts" / "test_data_sources.json"
FETCH = PROJECT_ROOT / "scripts" / "fetch-test-data"


def test_every_file_in_the_manifest_is_present_with_its_checksum(shared_data):
    proc = subprocess.run([sys.executable, str(FETCH), "--verify-only", str(shared_data)], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = list(csv.DictReader(MANIFEST.open()))
    assert f"{len(rows)} of {len(rows)} files verified" in proc.stdout


def test_every_data_file_is_in_the_manifest_and_every_folder_has_a_source(shared_data):
    listed = {r["path"] for r in csv.DictReader(MANIFEST.open())}
    on_disk = {p.relative_to(shared_data).as_posix() for p in shared_data.rglob("*") if p.is_file()}
    assert on_disk - listed <= {"README.md"}, "data files missing from tests/data/manifest.csv"
    sources = json.loads(SOURCES.read_text())
    for row in csv.DictReader(MANIFEST.open()):
        src = sources[row["source"]]
        assert "raw" in src or "how" in src
        assert row["path"] == row["source"] or row["path"].startswith(row["source"])


def test_a_changed_or_missing_file_fails_verification(shared_data, tmp_path):
    """A copy with one file altered and one removed: named, and a non-zero exit."""
    rows = list(csv.DictReader(MANIFEST.open()))
    small = [r for r in rows if int(r["bytes"]) < 100_000][:3]
    for r in small:
        (tmp_path / r["path"]).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / r["path"]).write_bytes((shared_data / r["path"]).read_bytes())
    (tmp_path / small[0]["path"]).write_bytes(b"not the data")
    proc = subprocess.run([sys.executable, str(FETCH), "--verify-only", str(tmp_path)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 1
    assert f"checksum differs: {small[0]['path']}" in proc.stderr
    assert "missing: " in proc.stderr and f"2 of {len(rows)} files verified" in proc.stdout
