"""A full-size phantom study travels to a real PACS (Orthanc) through a real sender (dcmtk storescu)."""

import pytest

from pipeline import phantom
from tests.peers import storescu


@pytest.mark.slow
@pytest.mark.network
def test_full_size_phantom_is_accepted_by_orthanc(tmp_path, orthanc):
    study = phantom.generate(tmp_path / "study", "n3_supraclavicular_1l", "full", seed=1)
    truth = study.truth
    assert truth["geometry"]["ct"]["size_xyz"][:2] == [512, 512]
    result = storescu(study.out_dir / "dicom", orthanc.dicom_port, orthanc.aet)
    assert result.returncode == 0, result.stderr[-3000:]
    studies = orthanc.get("/studies")
    assert len(studies) == 1
    info = orthanc.get(f"/studies/{studies[0]}")
    assert info["MainDicomTags"]["StudyInstanceUID"] == truth["dicom"]["study_instance_uid"]
    counts = sorted(len(orthanc.get(f"/series/{s}")["Instances"]) for s in info["Series"])
    assert counts == sorted([truth["dicom"]["ct_instances"], truth["dicom"]["pet_instances"]])
    modalities = {orthanc.get(f"/series/{s}")["MainDicomTags"]["Modality"] for s in info["Series"]}
    assert modalities == {"CT", "PT"}
