"""The typed contract between the pipeline and the node (result.json -> JobResult)."""

import json

import pytest
from pydantic import ValidationError

from pipeline.job_result import JobResult
from pipeline.outputs import write_outputs
from tests.result_factory import result_from_phantom


def test_the_pipeline_writes_a_result_the_node_reads_typed(phantom_studies, tmp_path):
    result = result_from_phantom(phantom_studies["n2b_right_4r_7"].out_dir)
    paths = write_outputs(result, tmp_path / "out")
    typed = JobResult.read(paths["result"])
    assert (typed.study_instance_uid, typed.n_tnm8, typed.n_tnm9) == (result.study_instance_uid, result.n_tnm8,
                                                                        result.n_tnm9)
    # the files to send are named in result.json (SEG, SR, SC), not found by globbing a folder
    assert [p.name for p in typed.outputs.dicom_files()] == ["seg.dcm", "sr.dcm", "summary.dcm"]
    assert all(p.is_file() for p in typed.outputs.dicom_files())


def test_a_result_json_without_the_contract_names_the_missing_field(tmp_path):
    path = tmp_path / "result.json"
    path.write_text(json.dumps({"n_tnm8": "N1", "outputs": {"sr": "/x/sr.dcm"}}))
    with pytest.raises(ValidationError, match="study_instance_uid"):
        JobResult.read(path)
    path.write_text(json.dumps({"study_instance_uid": "1.2.3", "involved_stations": "4R"}))
    with pytest.raises(ValidationError, match="involved_stations"):
        JobResult.read(path)
