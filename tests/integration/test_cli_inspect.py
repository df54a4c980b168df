"""`nodestage inspect`: JSON for a usable study, one line and a non-zero exit for an unusable one."""

import json
import pickle
import subprocess
import sys

from pipeline.errors import SUVInputError


def _inspect(path):
    return subprocess.run([sys.executable, "-m", "dicomnode.cli", "inspect", str(path)], capture_output=True, text=True)


def test_inspect_stripped_ct_says_no_pet(shared_data):
    out = _inspect(shared_data / "totalsegmentator/example_ct_dicom")
    assert out.returncode != 0
    assert "PET" in out.stderr and "Traceback" not in out.stderr
    reason = out.stderr.strip().splitlines()[-1]  # log warnings may precede the one-line reason
    assert reason.startswith("nodestage inspect: no PET")


def test_inspect_real_petct_prints_choice(shared_data):
    out = _inspect(shared_data / "petct/acrin-nsclc-fdg-pet-042")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    text = json.dumps(report)
    assert "CT_IMAGES" in text or "135" in text
    assert report["suv"]["factor"] == __import__("pytest").approx(4.2111e-4, rel=1e-4)


def test_inspect_phantom(phantom_studies):
    out = _inspect(phantom_studies["n0_right_upper"].out_dir / "dicom")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["suv"]["factor"] > 0


def test_suv_error_survives_a_process_boundary():
    err = pickle.loads(pickle.dumps(SUVInputError("PatientWeight", "missing")))
    assert err.attribute == "PatientWeight" and "missing" in str(err)
