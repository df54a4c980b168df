"""`nodestage run` on a real lung-cancer FDG-PET/CT (ACRIN-NSCLC-FDG-PET-042, GE Discovery ST).

The true N stage is not known, so only what is certain is asserted. The result is kept as a test
artefact (NODESTAGE_TEST_ARTIFACTS, else the test's tmp dir) for a radiologist to read.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def acrin_result(shared_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("acrin")
    proc = subprocess.run([sys.executable, "-m", "dicomnode.cli", "run",
                           str(shared_data / "petct/acrin-nsclc-fdg-pet-042"), "--out", str(out)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    artefacts = Path(os.environ.get("NODESTAGE_TEST_ARTIFACTS", out)) / "acrin-run"
    if artefacts != out / "acrin-run":
        artefacts.mkdir(parents=True, exist_ok=True)
        for name in ("result.json", "summary.png"):
            shutil.copy(out / name, artefacts / name)
    return json.loads((out / "result.json").read_text()), out


@pytest.mark.slow
def test_right_hilar_mass_is_the_primary(acrin_result):
    result, _ = acrin_result
    primary = [l for l in result["lesions"] if l["kind"] == "primary"]
    assert len(primary) == 1
    p = primary[0]
    assert p["side"] == "right"
    assert p["suvmax"] == pytest.approx(42, abs=4)
    x, y, z = p["centroid_mm"]
    assert x < -15 and -140 < z < -85  # right hilum, around the documented x -40, z -99
    assert result["primary_side"] == "right"


@pytest.mark.slow
def test_renal_uptake_is_not_a_thoracic_lesion(acrin_result):
    result, _ = acrin_result
    hot = [l for l in result["lesions"] if l["suvmax"] > 45]
    assert hot, "the kidneys (SUV up to 51) should appear as lesions"
    assert all(l["kind"] == "distant" and not l["positive"] for l in hot)
    assert all(l["kind"] != "node" for l in result["lesions"] if l["centroid_mm"][2] < -300)


@pytest.mark.slow
def test_every_involved_station_has_its_evidence(acrin_result):
    result, out = acrin_result
    nodes = [l for l in result["lesions"] if l["kind"] == "node" and l["positive"]]
    assert sorted({n["station"] for n in nodes}) == sorted(result["involved_stations"])
    findings = {f["station"]: f for f in result["staging"]["station_findings"]}
    for station in result["involved_stations"]:
        assert station in findings and findings[station]["reason"]
    for node in nodes:
        assert node["rule"] and node["suvmax"] >= 2.5
    assert result["n_tnm8"] in ("N0", "N1", "N2", "N3")
    assert (out / "dicom" / "sr.dcm").is_file() and (out / "summary.png").is_file()
