"""Through the real node: a study that fails in silent mode is a failure row in ledger.csv, and evaluation counts it."""

from __future__ import annotations

import pytest

from dicomnode.index.studies import FAILED
from dicomnode.send.ledger import read_ledger
from pipeline.evaluate import compute_metrics
from tests.node_fixtures import make_config, running_node, small_study, storescu, study_row, wait_for  # noqa: F401

pytestmark = pytest.mark.network

FAST_TIMEOUT = {"studies": {"stability_seconds": 1.0, "guard_seconds": 0.2, "scan_interval_seconds": 0.2},
                "worker": {"concurrency": 1, "timeout_seconds": 0.05}, "mode": "silent"}


def test_a_failed_study_is_a_failure_in_the_ledger_and_the_evaluation(tmp_path, small_study):
    cfg = make_config(tmp_path, FAST_TIMEOUT)
    uid = small_study.truth["dicom"]["study_instance_uid"]
    with running_node(cfg) as node:
        assert storescu(small_study.out_dir / "dicom", node.port).returncode == 0
        wait_for(lambda: (r := study_row(node, uid)) and r["state"] == FAILED and r, 30, what="FAILED")
    (row,) = read_ledger(cfg.storage.ledger)
    assert (row["study_instance_uid"], row["version"], row["status"]) == (uid, "1", "failed")
    assert row["failure_reason"].startswith("timeout") and row["n_tnm8"] == ""
    reference = tmp_path / "reference.csv"
    reference.write_text(f"study_instance_uid,cN,pN\n{uid},cN0,pN0\n")
    m = compute_metrics(cfg.storage.ledger, reference, 8, n_bootstrap=5)
    assert [f["study_instance_uid"] for f in m["cohort"]["node_failures"]] == [uid]
    assert m["cohort"]["unmatched_reference"] == []  # a failure, not missing
    assert m["comparisons"]["node_vs_pn"]["exclusions"] == {"node failure": 1}
